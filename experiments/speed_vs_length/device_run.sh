#!/usr/bin/env bash
# Reformer Fig. 5 (right) on the GPU machine, from the repository root (ends within ~5 min):
#
#   bash experiments/speed_vs_length/device_run.sh [BUDGET_S]      # default 290 s for the sweep
#   IMPLS="lsh8" bash experiments/speed_vs_length/device_run.sh 120  # finish cells a cut left out
#
# Environment (space-separated lists): IMPLS (full lsh1 lsh2 lsh4 lsh8), LENGTHS (1024 ..
# 32768), TOTAL_TOKENS (32768), SIZE (base), CELL_TIMEOUT_S (60); BENCH_GIT_COMMIT (recorded
# where the copy has no .git). Results are appended to
# experiments/speed_vs_length/results/<date>-<gpu>.jsonl (copy it back into the repository),
# mirrored into $OUT after every cell (a killed call still returns them), rendered to .md +
# .png (also copied to $OUT), and the table is printed last.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1

BUDGET_S="${1:-${BUDGET_S:-290}}"
IMPLS="${IMPLS:-full lsh1 lsh2 lsh4 lsh8}"
LENGTHS="${LENGTHS:-1024 2048 4096 8192 16384 32768}"
TOTAL_TOKENS="${TOTAL_TOKENS:-32768}"
SIZE="${SIZE:-base}"
CELL_TIMEOUT_S="${CELL_TIMEOUT_S:-60}"
OUT_DIR="${OUT:-}"
export PYTHONUNBUFFERED=1

nvidia-smi -L
python3 -c "import torch, triton; print(f'torch {torch.__version__} (cuda {torch.version.cuda}), triton {triton.__version__}')"

MIRROR=()
if [ -n "$OUT_DIR" ]; then MIRROR=(--mirror-dir "$OUT_DIR"); fi
# shellcheck disable=SC2086  # the lists are meant to split into words
PYTHONPATH=src python3 experiments/speed_vs_length/run.py sweep --device cuda \
  --budget-s "$BUDGET_S" --cell-timeout-s "$CELL_TIMEOUT_S" --size "$SIZE" \
  --impls $IMPLS --lengths $LENGTHS --total-tokens "$TOTAL_TOKENS" "${MIRROR[@]}" \
  2>&1 | tee ${OUT_DIR:+"$OUT_DIR/device_run.log"}
status=${PIPESTATUS[0]}

echo
newest="$(ls -t experiments/speed_vs_length/results/*.md 2>/dev/null | head -n 1)"
if [ -n "$newest" ]; then cat "$newest"; fi
exit "$status"
