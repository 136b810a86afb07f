"""CPU training speed: a plain fp32 eager loop (the baseline) vs resnetlab's default training path.

    python benchmarks/bench_cpu_speed.py [--model resnet20] [--batch 128] [--steps 8] [--repeats 5]

baseline  a plain loop: fp32, NCHW, eager, SGD(momentum, weight decay), one fixed random batch.
plain fp32+channels_last / plain bf16+channels_last: the same loop in the other memory format, and with
          bf16 autocast (what a user could write by hand).
plain fp32+CL+fused BN: the channels_last loop with resnetlab's fused batch norm + ReLU (+ add) kernels.
bound     the fp32+channels_last loop with every batch norm and ReLU replaced by the identity and the
          residual add dropped: only the convolutions (and the classifier) are left. No fusion of the
          memory-bound ops can make a step faster than this, so its ratio is the ceiling of what fusing
          them could reach with PyTorch's own (oneDNN) convolutions on this CPU.
ours      ``resnetlab.train.train`` itself with ``precision="auto"`` on the synthetic data set (its real
          batches, augmentation included): img/s as logged by the run over ``--steps`` steps, after
          ``--steps`` warm-up steps.

ceiling   not a path: the fp32 multiply-add throughput of this machine (a 4096x4096 matmul, MKL) divided
          by the arithmetic of one training image (3 x the forward multiply-adds: forward, input gradient,
          weight gradient). No fp32 implementation of the step that does all of its arithmetic can beat it.

All are run in turn, ``--repeats`` times (interleaved, so that load from other processes hits all of
them alike); the medians and the ratio to the baseline are printed. On a shared machine, trust the ratio
more than the absolute numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch
from torch import nn

from resnetlab import fused as resnetlab_fused
from resnetlab.blocks import ResidualAdd
from resnetlab.models import ModelConfig, create_model
from resnetlab.summary import summarize
from resnetlab.runtime import physical_cores, resolve_precision
from resnetlab.train import TrainConfig, train, train_step


class KeepBranch(nn.Module):
    """Stands in for the residual add in the bound: returns the residual branch alone."""

    def forward(self, branch: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        return branch


def convolutions_only(model: nn.Module) -> nn.Module:
    """The model with batch norms and ReLUs replaced by the identity and residual adds dropped."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, (nn.BatchNorm2d, nn.ReLU)):
                setattr(module, child_name, nn.Identity())
            elif isinstance(child, ResidualAdd):
                setattr(module, child_name, KeepBranch())
    return model


def plain_loop(model_name: str, batch: int, bf16: bool, channels_last: bool, seed: int = 0,
               convs_only: bool = False, fused: bool = False):
    """A step function of the hand-written loop."""
    model = create_model(model_name, seed=seed)
    if convs_only:
        model = convolutions_only(model)
    if fused:
        resnetlab_fused.enable(model)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, 32, 32, generator=g).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), generator=g)

    def step():
        loss, _ = train_step(model, opt, x, y, bf16=bf16)
        return loss
    return step


def time_plain(step, steps: int, batch: int) -> float:
    step().item()
    t = time.perf_counter()
    for _ in range(steps):
        loss = step()
    loss.item()
    return steps * batch / (time.perf_counter() - t)


def matmul_gflops(threads: int, n: int = 4096, repeats: int = 5) -> float:
    """Median fp32 GFLOP/s of an n x n matmul: what this CPU's multiply-add units deliver."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def time_ours(model_name: str, batch: int, steps: int, threads: int, folder: str, precision: str) -> float:
    out = tempfile.mkdtemp(dir=folder)
    cfg = TrainConfig(model=ModelConfig(model_name), data="synthetic", out=os.path.join(out, "run"), iterations=2 * steps,
                      batch_size=batch, log_every=steps, eval_every=10 ** 9, checkpoint_every=10 ** 9,
                      threads=threads, quiet=True, precision=precision, schedule="constant")
    train(cfg)
    with open(os.path.join(out, "run", "metrics.jsonl")) as fh:
        logs = [json.loads(line) for line in fh if '"train"' in line]
    return logs[1]["img_per_s"]  # the second interval: warm-up excluded


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--precision", default="auto", help="precision of 'ours' (auto: the default path)")
    args = p.parse_args(argv)
    threads = args.threads or physical_cores()
    torch.set_num_threads(threads)
    bf16, cl = resolve_precision(args.precision, torch.device("cpu"), None)
    print(f"torch {torch.__version__}, {threads} threads, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; "
          f"ours = precision {args.precision} -> {'bf16 autocast' if bf16 else 'fp32'}"
          f"{' + channels_last' if cl else ''}", flush=True)
    plain = {"baseline fp32 eager": plain_loop(args.model, args.batch, False, False),
             "plain fp32+channels_last": plain_loop(args.model, args.batch, False, True),
             "plain bf16+channels_last": plain_loop(args.model, args.batch, True, True),
             "plain fp32+CL+fused BN": plain_loop(args.model, args.batch, False, True, fused=True),
             "bound: convolutions only": plain_loop(args.model, args.batch, False, True, convs_only=True)}
    runs = {name: [] for name in [*plain, "ours (train(), default)"]}
    with tempfile.TemporaryDirectory() as folder:
        for r in range(args.repeats):
            for name, step in plain.items():
                runs[name].append(time_plain(step, args.steps, args.batch))
            runs["ours (train(), default)"].append(time_ours(args.model, args.batch, args.steps, threads, folder,
                                                             args.precision))
            print(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in runs.items()),
                  file=sys.stderr, flush=True)
    ref = statistics.median(runs["baseline fp32 eager"])
    flops = 3 * 2 * summarize(create_model(args.model)).total_macs  # per training image
    gflops = matmul_gflops(threads)
    ceiling = gflops * 1e9 / flops
    print(f"\n{args.model}, batch {args.batch}, median of {args.repeats} interleaved repeats of {args.steps} steps "
          f"(load now {os.getloadavg()[0]:.1f})")
    print(f"{'path':<28} {'img/s':>8} {'ratio':>7}   all repeats")
    for name, values in runs.items():
        med = statistics.median(values)
        print(f"{name:<28} {med:8.1f} {med / ref:6.2f}x   {' '.join(f'{v:.0f}' for v in values)}")
    print(f"{'ceiling: fp32 arithmetic':<28} {ceiling:8.1f} {ceiling / ref:6.2f}x   "
          f"({gflops:.0f} GFLOP/s fp32 matmul / {flops / 1e6:.0f} MFLOP per training image)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
