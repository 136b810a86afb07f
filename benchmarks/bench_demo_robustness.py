"""Does the main job show the paper's Figure 6 on every seed? (issue 9)

Runs ``resnetlab demo``'s exact configuration (``resnetlab.study.demo_study_config``: same depths, options,
data, budget and thread count; only ``--seed`` changes) for seeds 0-9, report included, and prints for each
seed the training errors the report judges (mean over the last 10% of the iterations) and whether

  (i)   degradation: the deeper plain net ends with a higher training error than the shallower one;
  (ii)  at the deeper depth every residual net (A and B) ends lower than the plain net;
  (iii) every residual option trains at least as well at the deeper depth as at the shallower one;

then how many seeds satisfy each, and the wall time per seed (training + measurements + report).

    python benchmarks/bench_demo_robustness.py                 # seeds 0-9 into /tmp/demo-robustness
    python benchmarks/bench_demo_robustness.py --seeds 0,1 --out DIR

Rerunning resumes: finished runs are skipped (so wall times are only meaningful on a fresh --out).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

from resnetlab import report
from resnetlab.io import resolve_device
from resnetlab.study import DemoConfig, collect, demo_study_config, grid, run_study

CHECKS = (("degradation", "(i) deeper plain worse"), ("residual_beats_plain", "(ii) residual < plain, deep"),
          ("deeper_residual", "(iii) deeper residual <= shallower"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2,3,4,5,6,7,8,9", help="comma-separated seeds")
    p.add_argument("--out", default="/tmp/demo-robustness", help="one demo folder per seed goes here")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    counts = {k: 0 for k, _ in CHECKS}
    per_option = {}
    walls = []
    for seed in seeds:
        cfg = demo_study_config(DemoConfig(seed=seed, data="synthetic", out=os.path.join(args.out, f"seed{seed}")))
        t0 = time.perf_counter()
        run_study(cfg, title=f"demo, seed {seed}", shapes=True)
        walls.append(time.perf_counter() - t0)
        checks = report.figure6_checks(collect(cfg, grid(cfg), resolve_device(cfg.device)))
        errors = "  ".join(f"{k} {100 * v:.1f}%" for k, v in checks["errors"].items())
        flags = "  ".join(f"{label.split(')')[0]})={'yes' if checks[k] else 'NO'}" for k, label in CHECKS)
        print(f"seed {seed}: {flags}  | {errors} | {walls[-1]:.0f} s", flush=True)
        for k, _ in CHECKS:
            counts[k] += bool(checks[k])
        for option, held in checks["deeper_residual_by_option"].items():
            per_option[option] = per_option.get(option, 0) + bool(held)
    print(f"\n{len(seeds)} seeds, demo config: depths {cfg.depths}, options {cfg.options}, "
          f"{cfg.iterations} iterations, batch {cfg.batch_size}, width {cfg.model.width}, "
          f"{cfg.synthetic_size}x{cfg.synthetic_size} synthetic images, {cfg.threads} threads")
    for k, label in CHECKS:
        print(f"  {label}: {counts[k]}/{len(seeds)} seeds")
    print("  (iii) by option: " + ", ".join(f"{o} {n}/{len(seeds)}" for o, n in per_option.items()))
    print(f"  wall time per seed: median {statistics.median(walls):.0f} s, max {max(walls):.0f} s")


if __name__ == "__main__":
    main()
