#!/bin/bash
# The real-CIFAR-10 grid of issue 9 (benchmarks/RESULTS.md, "the projection question"): width 16, depths 20
# and 56, options A, B, none and A:none, 3 seeds, 2000 iterations. It needs about 12 hours of both cores of a
# 2-core machine, so it is trained over several sessions; its finished runs are committed to the repository
# (benchmarks/study-cifar10-2000/), so each session goes on from them.
#
#   bash benchmarks/cifar10_grid.sh train 20 2      # 2 one-thread processes share the depth-20 runs
#   bash benchmarks/cifar10_grid.sh train 20,56 2   # then the depth-56 runs
#   bash benchmarks/cifar10_grid.sh report 20,56 --landscape --landscape-steps 9   # measure, write the report
#   bash benchmarks/cifar10_grid.sh persist         # stage the finished, measured runs for a commit
#
# Training uses the code frozen at $COMMIT (a git worktree of it in $CODE), so later commits cannot change a
# resumed run; the report uses this checkout (its --report-only is newer; the measurements are the same).
# Checkpoints are never committed (each ResNet-56 one is 7 MB): before a session stops, `report` (with
# --landscape once depth-56 runs exist) caches each finished run's measurements in analysis.json and
# landscape.json while its checkpoints are still there, then `persist` stages the finished and measured
# runs (their JSON and CSV files) and leaves every other run out whole, so the next session trains it
# afresh. The plain net comes first in --options, so a session's first depth-56 runs include the plain twin
# that the landscape comparison needs.
set -euo pipefail
COMMIT=56f68db
CODE=${CODE:-/work/study-code}
DATA=${DATA:-/work/data/cifar10}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/benchmarks/study-cifar10-2000
PY=${PY:-$ROOT/.venv/bin/python}
mode=${1:?train, report or persist}
if [ "$mode" = persist ]; then
  git -C "$ROOT" add "$OUT"  # *.pt, report.html and figures/ are ignored
  for run in "$OUT"/runs/*/; do
    done_=1
    [ -f "$run/final.json" ] && [ -f "$run/analysis.json" ] || done_=0
    case $run in *resnet56-*) [ -f "$run/landscape.json" ] || done_=0 ;; esac
    [ $done_ = 1 ] || git -C "$ROOT" rm -q -r --cached --ignore-unmatch "$run"
  done
  git -C "$ROOT" status --short "$OUT" | awk '{print $1}' | sort | uniq -c
  exit 0
fi
depths=${2:?depths, e.g. 20 or 20,56}
[ -d "$DATA/cifar-10-batches-py" ] || "$PY" "$ROOT/../shared/tools/cifar10_fixture.py" batches "$DATA"
GRID=(--depths "$depths" --options none,A,B,A:none --repeats 3 --data cifar10 --data-dir "$DATA" --out "$OUT"
      --budget short --iterations 2000 --batch-size 128 --val-split 5000 --eval-every 500 --threads 1 --precision fp32 --quiet)
# --precision fp32: every run so far trained in fp32; the frozen code's `auto` would pick bf16 on a CPU with
# AMX (a session's machine had it), which would make twins differ in arithmetic (the study now refuses that).
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
