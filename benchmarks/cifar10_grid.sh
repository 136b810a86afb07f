#!/bin/bash
# The real-CIFAR-10 grid of issue 9 (benchmarks/RESULTS.md, "the projection question"): width 16, depths 20
# and 56, options A, B, none and A:none, 3 seeds, 2000 iterations. It needs about 14 hours of both cores of a
# 2-core machine, so it is trained over several sessions; its run folders live in the repository
# (benchmarks/study-cifar10-2000/), so each session resumes where the last one stopped.
#
#   bash benchmarks/cifar10_grid.sh train 20 2      # 2 one-thread processes share the depth-20 runs
#   bash benchmarks/cifar10_grid.sh train 20,56 2   # then the depth-56 runs
#   bash benchmarks/cifar10_grid.sh report 20,56 --landscape --landscape-steps 9   # measure, write the report
#   bash benchmarks/cifar10_grid.sh persist         # stage the run folders for a commit
#
# Training uses the code frozen at $COMMIT (a git worktree of it in $CODE), so later commits cannot change a
# resumed run; the report uses this checkout (its --report-only is newer; the measurements are the same).
# Before a session stops: `report` (it caches each finished run's measurements in analysis.json and, with
# --landscape, the depth-56 landscapes in landscape.json), then `persist`, then commit. `persist` stages the
# JSON and CSV files of every run, and the checkpoints (*.pt, ignored elsewhere) only of the runs that still
# need them: unfinished or unmeasured runs, and depth-56 runs without a landscape. A run that has no last.pt
# yet is left out whole, so the next session starts it afresh.
set -euo pipefail
COMMIT=56f68db
CODE=${CODE:-/work/study-code}
DATA=${DATA:-/work/data/cifar10}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/benchmarks/study-cifar10-2000
PY=${PY:-$ROOT/.venv/bin/python}
mode=${1:?train, report or persist}
if [ "$mode" = persist ]; then
  git -C "$ROOT" add "$OUT"
  for run in "$OUT"/runs/*/; do
    if [ ! -f "$run/final.json" ] && [ ! -f "$run/last.pt" ]; then  # started, no checkpoint yet: it restarts
      git -C "$ROOT" rm -q -r --cached --ignore-unmatch "$run"; continue
    fi
    need=0
    [ -f "$run/analysis.json" ] || need=1
    case $run in *resnet56-*) [ -f "$run/landscape.json" ] || need=1 ;; esac
    if [ $need = 1 ]; then git -C "$ROOT" add -f "$run"*.pt 2>/dev/null || true
    else git -C "$ROOT" rm -q --cached --ignore-unmatch "$run"*.pt; fi
  done
  git -C "$ROOT" status --short "$OUT" | awk '{print $1}' | sort | uniq -c
  exit 0
fi
depths=${2:?depths, e.g. 20 or 20,56}
[ -d "$DATA/cifar-10-batches-py" ] || "$PY" "$ROOT/../shared/tools/cifar10_fixture.py" batches "$DATA"
GRID=(--depths "$depths" --options A,B,none,A:none --repeats 3 --data cifar10 --data-dir "$DATA" --out "$OUT"
      --budget short --iterations 2000 --batch-size 128 --val-split 5000 --eval-every 500 --threads 1 --quiet)
export OMP_WAIT_POLICY=PASSIVE
if [ "$mode" = train ]; then
  [ -d "$CODE" ] || git -C "$ROOT" worktree add --detach "$CODE" "$COMMIT"
  for k in $(seq "${3:-2}"); do  # processes share the grid: each claims a run before training it
    PYTHONPATH=$CODE/src nohup nice -n 19 "$PY" -m resnetlab study shortcuts "${GRID[@]}" >> "$OUT/train-p$k.log" 2>&1 &
    sleep 20
  done
  echo "training in the background; logs: $OUT/train-p*.log"
else
  PYTHONPATH=$ROOT/src "$PY" -m resnetlab study shortcuts "${GRID[@]}" --report-only "${@:3}"
fi
