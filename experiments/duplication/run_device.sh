#!/usr/bin/env bash
# Study 1 (Table 2, duplication task) on the GPU machine, in one call of about 9 minutes.
# From the repository root, the package not installed, hydra/omegaconf/antlr4/
# hydra-joblib-launcher (+ joblib) wheels carried in .whl_hydra/:
#
#   bash experiments/duplication/run_device.sh
#
# 1. trains full, LSH-1, LSH-2, LSH-4 concurrently on the one GPU (joblib, 4 processes):
#      reformer-train -m experiment=duplication_paper attention=full,lsh1,lsh2,lsh4 logger=csv
#    into outputs/multirun/train/table2-<stamp>/ (trainer.max_time is the safety net);
# 2. evaluates every trained model with full attention and LSH-8/4/2/1 on the test split
#    (grid.py) into outputs/duplication_results/<stamp>/ (never the committed results/);
# 3. reformer-report of the sweep (into the sweep folder);
# 4. copies into $OUT (7 files): results/{results.json,meta.json,results.md,results-heatmap.png},
#    sweep.tar.gz (the sweep WITHOUT checkpoints), report.md, run_device.log.
# Then, on the build machine: cp $files_at/results/* experiments/duplication/results/
#
# CPU dry run with tiny settings (README "Dry run" gives the exact command): TRAIN_EXTRA and
# EVAL_EXTRA add overrides to the training multirun and to every evaluation.
# Other knobs: N_JOBS (4), MAX_TIME (00:00:05:00), TRAIN_TIMEOUT_S (400), GRID_TIMEOUT_S (110),
# SITE (/tmp/site: where the wheels go).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1

OUT_DIR="${OUT:-outputs/duplication_out}"
STAMP="$(date +%Y-%m-%d_%H-%M-%S)"
SWEEP="outputs/multirun/train/table2-$STAMP"
RESULTS="outputs/duplication_results/$STAMP"
N_JOBS="${N_JOBS:-4}"
MAX_TIME="${MAX_TIME:-00:00:05:00}"
TRAIN_TIMEOUT_S="${TRAIN_TIMEOUT_S:-400}"
GRID_TIMEOUT_S="${GRID_TIMEOUT_S:-110}"
SITE="${SITE:-/tmp/site}"   # where the carried wheels are installed
read -r -a TRAIN_EXTRA <<< "${TRAIN_EXTRA:-}"
read -r -a EVAL_EXTRA <<< "${EVAL_EXTRA:-}"
mkdir -p "$OUT_DIR/results"
exec > >(tee "$OUT_DIR/run_device.log") 2>&1
started=$(date +%s)
elapsed() { echo "[$(($(date +%s) - started)) s] $*"; }

if compgen -G ".whl_hydra/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .whl_hydra/*.whl || { echo "installing .whl_hydra/*.whl failed"; exit 1; }
  export PYTHONPATH="$SITE:src${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "no .whl_hydra/ carried: hydra and omegaconf must already be importable"
  export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1

nvidia-smi -L 2>/dev/null || echo "no nvidia-smi (CPU dry run?)"
python3 - <<'PY' || exit 1
import importlib.util
import hydra, lightning, omegaconf, torch, torchmetrics
print(f"torch {torch.__version__} (cuda {torch.version.cuda}), lightning {lightning.__version__}, "
      f"torchmetrics {torchmetrics.__version__}, hydra {hydra.__version__}, "
      f"omegaconf {omegaconf.__version__}")
for name in ("joblib", "hydra_plugins.hydra_joblib_launcher", "matplotlib", "wandb"):
    print(f"  {name}: {'yes' if importlib.util.find_spec(name) else 'MISSING'}")
PY
# Missing matplotlib: results.json/meta.json/results.md still come back; render the heat map and
# the report on the build machine (README "After the run").
PLOT=() HAVE_MPL=1
python3 -c "import matplotlib" 2>/dev/null || { PLOT=(--no-plot); HAVE_MPL=0; }

# data.num_workers=0: DataLoader worker processes cannot start inside joblib's loky workers
# (loky replaces the default multiprocessing context); batches are built in the training
# process instead (~3-5 ms for 64 sequences). memory_budget_gb=16: 4 jobs share one GPU.
TRAIN=(experiment=duplication_paper logger=csv ++trainer.max_time="$MAX_TIME"
       trainer.enable_progress_bar=false callbacks.progress_bar=null data.num_workers=0
       callbacks.fit_check.search=false memory_budget_gb=16 "${TRAIN_EXTRA[@]}")
elapsed "training into $SWEEP"
if python3 -c "import joblib, hydra_plugins.hydra_joblib_launcher" 2>/dev/null; then
  timeout -k 20 "$TRAIN_TIMEOUT_S" python3 -m reformer_lab.cli.train -m \
    attention=full,lsh1,lsh2,lsh4 "${TRAIN[@]}" hydra.sweep.dir="$SWEEP" \
    hydra/launcher=joblib hydra.launcher.n_jobs="$N_JOBS"
else  # no joblib: the same four runs as background processes, one folder each
  echo "joblib launcher missing: starting the four runs as separate processes"
  job=0 pids=()
  for attention in full lsh1 lsh2 lsh4; do
    timeout -k 20 "$TRAIN_TIMEOUT_S" python3 -m reformer_lab.cli.train \
      attention="$attention" "${TRAIN[@]}" hydra.run.dir="$SWEEP/$job" \
      > /dev/null 2>&1 &
    pids+=($!)
    job=$((job + 1))
  done
  wait "${pids[@]}"  # these four only: a bare `wait` would also wait for the log's tee
fi
elapsed "training done (exit $?)"
for result in "$SWEEP"/*/result.json; do
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[1], r['status'], \
r.get('global_step'), r.get('wall_seconds'), 's', r.get('reason') or r.get('metrics'))" "$result"
done

elapsed "evaluating the grid into $RESULTS"
timeout -k 10 "$GRID_TIMEOUT_S" python3 experiments/duplication/grid.py "$SWEEP" \
  --out "$RESULTS" "${PLOT[@]}" trainer.enable_progress_bar=false "${EVAL_EXTRA[@]}"
elapsed "grid done (exit $?)"

if [ "$HAVE_MPL" = 1 ]; then
  python3 -m reformer_lab.cli.report "$SWEEP" || echo "reformer-report failed"
else
  echo "matplotlib missing: run reformer-report on the unpacked sweep.tar.gz instead"
fi

cp "$RESULTS"/results.json "$RESULTS"/meta.json "$RESULTS"/results.md "$OUT_DIR/results/" \
  2>/dev/null || echo "the grid wrote no results (see above)"
[ -f "$RESULTS/results-heatmap.png" ] && cp "$RESULTS/results-heatmap.png" "$OUT_DIR/results/"
[ -f "$SWEEP/report.md" ] && cp "$SWEEP/report.md" "$OUT_DIR/report.md"
tar -czf "$OUT_DIR/sweep.tar.gz" --exclude='*.ckpt' -C "$(dirname "$SWEEP")" "$(basename "$SWEEP")"
elapsed "done; in $OUT_DIR:"
ls -la "$OUT_DIR" "$OUT_DIR/results"
[ -f "$RESULTS/results.md" ] && cat "$RESULTS/results.md"
