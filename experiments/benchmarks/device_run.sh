#!/usr/bin/env bash
# The benchmark matrix on the GPU machine. From the repository root, with .whl carried:
#
#   bash experiments/benchmarks/device_run.sh [BUDGET_S]          # default 480 s in all
#   IMPLS="reformer-lab full-ckpt full" bash experiments/benchmarks/device_run.sh 480
#   IMPLS="hf lucidrains" bash experiments/benchmarks/device_run.sh 480
#
# Environment (space-separated lists): IMPLS, CONFIGS, SEQS; RUN_TIMEOUT_S (60 s per run);
# BENCH_GIT_COMMIT (recorded where the copy has no .git). Results are appended to
# experiments/benchmarks/results/<date>-<gpu>.jsonl, mirrored into $OUT after every run
# (so a killed call still returns them), rendered to .md + 2 PNGs, and the table printed last.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1

BUDGET_S="${1:-${BUDGET_S:-480}}"
IMPLS="${IMPLS:-reformer-lab reformer-lab-graph reformer-lab-offload full-ckpt full hf lucidrains}"
CONFIGS="${CONFIGS:-base tiny}"
SEQS="${SEQS:-4096 16384 65536 262144 1048576}"
RUN_TIMEOUT_S="${RUN_TIMEOUT_S:-60}"
OUT_DIR="${OUT:-}"

if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { echo "installing .whl/*.whl failed"; exit 1; }
  export PYTHONPATH="/tmp/site:src${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "no .whl/ carried: hf and lucidrains run only if the image has their packages"
  export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1

nvidia-smi -L
python3 - <<'PY'
import importlib.metadata as md
import torch
names = ("triton", "transformers", "reformer-pytorch", "local-attention", "einops")
found = []
for name in names:
    try:
        found.append(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        found.append(f"{name} missing")
print(f"torch {torch.__version__} (cuda {torch.version.cuda}); " + ", ".join(found))
PY

JSONL="$(python3 experiments/benchmarks/run.py default-path --device cuda)" || exit 1
MIRROR=()
if [ -n "$OUT_DIR" ]; then MIRROR=(--mirror-dir "$OUT_DIR"); fi
# shellcheck disable=SC2086  # the lists are meant to split into words
python3 experiments/benchmarks/run.py matrix --device cuda --budget-s "$BUDGET_S" \
  --run-timeout-s "$RUN_TIMEOUT_S" --impls $IMPLS --configs $CONFIGS --seqs $SEQS \
  --out "$JSONL" "${MIRROR[@]}" 2>&1 | tee ${OUT_DIR:+"$OUT_DIR/device_run.log"}
status=${PIPESTATUS[0]}

echo
if [ -f "${JSONL%.jsonl}.md" ]; then cat "${JSONL%.jsonl}.md"; fi
exit "$status"
