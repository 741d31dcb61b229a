#!/usr/bin/env bash
# Issue 5, studies 2-4 at reduced scale (conf/experiment/text_small.yaml): all 14 training runs
# at once on one GPU, then one report per study. From the repository root of the GPU machine,
# with .whl_hydra/ (hydra-core, omegaconf, antlr4-python3-runtime, hydra-joblib-launcher,
# joblib) and data/vimdoc.txt (python experiments/corpus/build_corpus.py) carried:
#
#   bash experiments/text_studies_device.sh
#
#   hash_rounds           attention=full,lsh1,lsh2,lsh4,lsh8                          5 runs (Fig 4)
#   shared_qk_reversible  attention=full model.shared_qk=.. model.reversible=..      4 runs (Fig 3)
#   depth                 model.depth=1,2,4,8,12                                    5 runs (Fig 5 left)
#
# The three multiruns run at the same time, each with the joblib launcher and n_jobs = its run
# count. Each run stops at trainer.max_time (5.5 min of training), so the script ends after ~7-8 min; a hard
# cap (SWEEP_TIMEOUT_S, 510 s) stops a sweep that hangs. Into $OUT (8 files at most): per study
# <study>/sweep.tar.gz (the sweep folder without checkpoints, report included) and its figure,
# plus text_studies.log. A summary table is printed last.
#
# Environment: EXTRA (overrides added to every run; the CPU dry run shrinks everything with it),
# WHEEL_DIR (.whl_hydra), SWEEP_TIMEOUT_S (510), STUDIES ("hash_rounds shared_qk_reversible depth").
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

WHEEL_DIR="${WHEEL_DIR:-.whl_hydra}"
SWEEP_TIMEOUT_S="${SWEEP_TIMEOUT_S:-510}"
STUDIES="${STUDIES:-hash_rounds shared_qk_reversible depth}"
read -r -a EXTRA_ARGS <<< "${EXTRA:-}"
OUT_DIR="${OUT:-}"
ROOT="outputs/text_studies/$(date +%Y-%m-%d_%H-%M-%S)"
export PYTHONUNBUFFERED=1

if compgen -G "$WHEEL_DIR/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$WHEEL_DIR"/*.whl || { echo "installing $WHEEL_DIR/*.whl failed"; exit 1; }
  export PYTHONPATH="/tmp/site:src${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
fi

# Everything the runs need, checked before any GPU work starts.
python3 - "${EXTRA_ARGS[@]}" <<'PY' || exit 1
import hashlib, importlib.util, json, sys
from pathlib import Path
missing = [m for m in ("hydra", "omegaconf", "joblib", "hydra_plugins.hydra_joblib_launcher",
                       "lightning", "torchmetrics") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing Python packages {missing}: carry their wheels in .whl_hydra/ "
             f"(e.g. `pip download joblib --no-deps -d .whl_hydra`)")
if not any(a.startswith("data.path=") for a in sys.argv[1:]):
    corpus, manifest = Path("data/vimdoc.txt"), Path("experiments/corpus/vimdoc.json")
    if not corpus.is_file():
        sys.exit(f"{corpus} is missing: build it with `python experiments/corpus/build_corpus.py` "
                 f"and carry it (run(carry=['data/vimdoc.txt', ...]))")
    expected = json.loads(manifest.read_text())["sha256"]
    if hashlib.sha256(corpus.read_bytes()).hexdigest() != expected:
        sys.exit(f"{corpus} is not the corpus recorded in {manifest}: rebuild it")
import torch
name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU (CPU run)"
print(f"torch {torch.__version__}, {name}")
PY

sweep_args() {  # the overrides of one study
  case "$1" in
    hash_rounds) echo "attention=full,lsh1,lsh2,lsh4,lsh8" ;;
    shared_qk_reversible) echo "attention=full model.shared_qk=true,false model.reversible=true,false" ;;
    depth) echo "model.depth=1,2,4,8,12" ;;
    *) echo "unknown study $1" >&2; return 1 ;;
  esac
}
n_runs() {  # product of the comma-separated value counts
  local n=1 word values
  for word in $(sweep_args "$1"); do
    values="${word#*=}"; n=$((n * ($(tr -cd , <<< "$values" | wc -c) + 1)))
  done
  echo "$n"
}

mkdir -p "$ROOT"
pids=()
for study in $STUDIES; do
  read -r -a args <<< "$(sweep_args "$study")" || exit 1
  mkdir -p "$ROOT/$study"
  echo "$study: $(n_runs "$study") runs: experiment=text_small ${args[*]} ${EXTRA_ARGS[*]}"
  timeout -k 20 "$SWEEP_TIMEOUT_S" python3 -m reformer_lab.cli.train -m experiment=text_small \
    "${args[@]}" hydra/launcher=joblib hydra.launcher.n_jobs="$(n_runs "$study")" \
    hydra.sweep.dir="$ROOT/$study" "${EXTRA_ARGS[@]}" > "$ROOT/$study/multirun.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
echo "sweeps done (status $status) in $SECONDS s"

have_matplotlib=$(python3 -c "import matplotlib" 2>/dev/null && echo 1 || echo 0)
for study in $STUDIES; do
  if [ "$have_matplotlib" = 1 ]; then
    python3 -m reformer_lab.cli.report "$ROOT/$study" --metric test/bits_per_char || status=1
    if [ "$study" = depth ]; then python3 experiments/depth/plot.py "$ROOT/$study" || status=1; fi
  else
    echo "$study: no matplotlib here: run reformer-report on the extracted sweep.tar.gz"
  fi
done

# One table of every run, printed last (the call's output tail).
python3 - "$ROOT" $STUDIES <<'PY'
import json, sys
from pathlib import Path
root = Path(sys.argv[1])
print(f"\n{'study':<21} {'job':>3}  {'overrides':<42} {'status':<7} {'steps':>5} {'s':>5} "
      f"{'val bpc':>7} {'test bpc':>8}")
for study in sys.argv[2:]:
    for path in sorted((root / study).glob("*/result.json"), key=lambda p: int(p.parent.name)):
        r = json.loads(path.read_text())
        m = r.get("metrics") or {}
        shown = " ".join(o for o in r.get("overrides", []) if not o.startswith("experiment=")
                         and "=" in o and o.split("=")[0] in ("attention", "model.shared_qk",
                         "model.reversible", "model.depth"))
        val, test = m.get("val/bits_per_char"), m.get("test/bits_per_char")
        print(f"{study:<21} {path.parent.name:>3}  {shown:<42} {r.get('status', '?'):<7} "
              f"{r.get('global_step', ''):>5} {r.get('wall_seconds', ''):>5} "
              f"{'' if val is None else f'{val:.4f}':>7} {'' if test is None else f'{test:.4f}':>8}"
              + ("" if r.get("status") == "ok" else f"  {r.get('reason')}"))
PY

if [ -n "$OUT_DIR" ]; then
  for study in $STUDIES; do
    mkdir -p "$OUT_DIR/$study"
    tar -czf "$OUT_DIR/$study/sweep.tar.gz" --exclude=checkpoints -C "$ROOT" "$study" || status=1
    case "$study" in
      depth) figure=depth-val_bits_per_char.png ;;
      *) figure=curves-val_bits_per_char.png ;;
    esac
    if [ -f "$ROOT/$study/$figure" ]; then cp "$ROOT/$study/$figure" "$OUT_DIR/$study/"; fi
  done
  for study in $STUDIES; do
    echo "===== $study"; tail -n 40 "$ROOT/$study/multirun.log"
  done > "$OUT_DIR/text_studies.log" 2>&1
fi
echo "sweeps under $ROOT; $SECONDS s in all"
exit "$status"
