"""Train-step and evaluation throughput, eager vs ``torch.compile``, for CIFAR ResNets.

    python benchmarks/bench_train_step.py [--models resnet20,resnet56,resnet110] [--device cpu|cuda]
                                          [--precision auto] [--steps 5] [--repeats 3] [--mode default]
                                          [--channels-last auto|on|off] [--eager-only]

Each model is timed in four ways: train eager, train compiled, eval eager, eval compiled (eval: batch
``--eval-batch`` under ``torch.no_grad``). The step is the one ``resnetlab.train`` runs: autocast per
``--precision`` (auto: bf16 + channels_last where bf16 is fast; ``--channels-last`` overrides the
layout as ``resnetlab train --channels-last`` does), SGD with momentum and weight decay;
eager includes the fused batch-norm kernels where ``resnetlab train`` uses them (``--fused-bn auto``:
fp32 channels_last on the CPU), compiled never does.
Eager and compiled are interleaved ``--repeats`` times; medians, the compile (warm-up) time and the
compiled/eager ratio are printed. ``--eager-only`` skips the compiled runs (a quick check of the eager
path, e.g. of the fused kernels). Without CUDA, ``--device cuda`` is skipped with a message.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from resnetlab.models import create_model
from resnetlab import fused
from resnetlab.runtime import physical_cores, resolve_precision
from resnetlab.train import train_step, use_fused_bn


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def make(model_name, device, bf16, cl, compiled, mode, batch, eval_batch, fused_bn):
    model = create_model(model_name, seed=0).to(device, memory_format=torch.channels_last if cl else
                                                torch.contiguous_format)
    if use_fused_bn(fused_bn, device, bf16, cl, compiled) and fused.extension() is not None:
        fused.enable(model)
    net = torch.compile(model, mode=None if mode == "default" else mode) if compiled else model
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    fmt = torch.channels_last if cl else torch.contiguous_format
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), device=device)
    xe = torch.randn(eval_batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)

    def step():
        net.train()
        train_step(net, opt, x, y, bf16=bf16)

    @torch.no_grad()
    def eval_step():
        net.eval()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            net(xe)
    return step, eval_step


def rate(fn, steps, n, device):
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return steps * n / (time.perf_counter() - t)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet20,resnet56,resnet110")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--eval-batch", type=int, default=1000)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--mode", default="default", help="torch.compile mode")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--fused-bn", default="auto", choices=("auto", "off"), help="as resnetlab train --fused-bn")
    p.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"),
                   help="memory format (auto: as --precision implies)")
    p.add_argument("--eager-only", action="store_true", help="skip the torch.compile runs")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA not available: skipped")
        return 0
    if device.type == "cpu":
        torch.set_num_threads(args.threads or physical_cores())
    bf16, cl = resolve_precision(args.precision, device, {"auto": None, "on": True, "off": False}[args.channels_last])
    print(f"torch {torch.__version__} on {device} ({torch.get_num_threads()} threads, load "
          f"{os.getloadavg()[0]:.1f}); {'bf16 autocast' if bf16 else 'fp32'}{' + channels_last' if cl else ''}"
          f"{' + fused BN (eager)' if use_fused_bn(args.fused_bn, device, bf16, cl, False) else ''}; "
          f"compile mode {args.mode}", flush=True)
    print(f"{'model':<10} {'what':<6} {'eager img/s':>12} {'compiled img/s':>15} {'ratio':>6} {'compile s':>10}")
    variants = (False,) if args.eager_only else (False, True)
    for name in args.models.split(","):
        fns, warm = {}, {}
        for compiled in variants:
            t = time.perf_counter()
            tr, ev = make(name, device, bf16, cl, compiled, args.mode, args.batch, args.eval_batch, args.fused_bn)
            for _ in range(2):  # compile / autotune / first-call allocation
                tr()
                ev()
            sync(device)
            fns[compiled], warm[compiled] = (tr, ev), time.perf_counter() - t
        res = {(c, w): [] for c in variants for w in ("train", "eval")}
        for _ in range(args.repeats):
            for c in variants:
                res[(c, "train")].append(rate(fns[c][0], args.steps, args.batch, device))
                res[(c, "eval")].append(rate(fns[c][1], max(1, args.steps // 2), args.eval_batch, device))
        for what in ("train", "eval"):
            e = statistics.median(res[(False, what)])
            if args.eager_only:
                print(f"{name:<10} {what:<6} {e:12.1f} {'-':>15} {'-':>6} {'-':>10}", flush=True)
                continue
            c = statistics.median(res[(True, what)])
            print(f"{name:<10} {what:<6} {e:12.1f} {c:15.1f} {c / e:5.2f}x {warm[True] - warm[False]:10.1f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
