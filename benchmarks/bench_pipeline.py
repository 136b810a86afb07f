"""Benchmark the CIFAR input pipeline.

(1) Images/s of :class:`resnetlab.stream.TrainStream` (pad 4, random 32x32 crop, flip, normalise as batch
    tensor ops) against the usual per-image pipeline: a torch DataLoader whose workers do the same
    pad/crop/flip with Pillow, ToTensor and Normalize for each image.
(2) A ResNet-20 training step (forward, backward, SGD) fed by TrainStream against the same step on
    batches made beforehand: the pipeline's cost inside training.

Both sides of each comparison run in the same process, interleaved (A B A B ...), and the medians and their
ratio are printed, so that load from other processes on a shared machine hits both alike.

    python benchmarks/bench_pipeline.py                       # real CIFAR-10 from ../shared, else synthetic
    python benchmarks/bench_pipeline.py --data synthetic --repeats 5
    python benchmarks/bench_pipeline.py --data cifar10 --data-dir ~/.cache/resnetlab --device cuda
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from resnetlab.datasets import load_dataset
from resnetlab.models import create_model
from resnetlab.stream import Normalization, TrainStream
from resnetlab.train import train_step

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


class PillowCifar(torch.utils.data.Dataset):
    """The per-image baseline: what ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip()``,
    ``ToTensor()`` and ``Normalize(mean, std)`` do, one image at a time, with Pillow."""

    def __init__(self, x_uint8: torch.Tensor, y: torch.Tensor, mean, std):
        self.x = x_uint8.permute(0, 2, 3, 1).contiguous().numpy()   # (N, H, W, C) as Pillow wants
        self.y = y.numpy()
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        import random

        from PIL import Image, ImageOps
        img = Image.fromarray(self.x[i])
        img = ImageOps.expand(img, border=4, fill=0)
        dx, dy = random.randint(0, 8), random.randint(0, 8)
        img = img.crop((dx, dy, dx + 32, dy + 32))
        if random.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        t = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
        return (t - self.mean) / self.std, int(self.y[i])


def _cpu_seconds(pids) -> float:
    """User + system CPU time of processes ``pids`` (Linux /proc), in seconds."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])          # utime, stime
        except OSError:
            pass
    return total / os.sysconf("SC_CLK_TCK")


def get_data(args):
    if args.data == "synthetic":
        return load_dataset("synthetic", synthetic_train=args.synthetic_train, synthetic_test=100), "synthetic"
    if args.data_dir:
        return load_dataset("cifar10", args.data_dir), f"cifar10 ({args.data_dir})"
    tool = SHARED / "tools" / "cifar10_fixture.py"
    if not tool.is_file():
        raise SystemExit(f"no CIFAR-10 at {tool}: pass --data-dir or --data synthetic")
    with tempfile.TemporaryDirectory(prefix="bench-cifar-") as tmp:
        print(f"writing CIFAR-10 batches from {SHARED / 'data'} into {tmp} ...", file=sys.stderr)
        subprocess.run([sys.executable, str(tool), "batches", tmp], check=True, stdout=subprocess.DEVNULL)
        sets = load_dataset("cifar10", tmp)
    return sets, "cifar10 (../shared/data/cifar10-jpeg.npz, written in the official batches format)"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_throughput(data, args, device, norm):
    """Images/s: Pillow + DataLoader workers vs TrainStream (both padding modes), interleaved."""
    bs, k = args.batch_size, args.batches
    mean, std = norm.mean.tolist(), norm.std.tolist()
    base_ds = PillowCifar(data.x, data.y, mean, std)
    streams = {"TrainStream": TrainStream(data, bs, device=device, seed=0, normalization=norm),
               "TrainStream padding=mean": TrainStream(data, bs, device=device, seed=0, normalization=norm,
                                                       padding="mean")}
    results = {"Pillow+DataLoader": [], **{name: [] for name in streams}}
    cpu = {name: [] for name in results}      # images per CPU-second (all processes involved)
    step = 0
    for r in range(args.repeats):
        loader = torch.utils.data.DataLoader(base_ds, batch_size=bs, shuffle=True, drop_last=True,
                                             num_workers=args.workers, pin_memory=device.type == "cuda",
                                             persistent_workers=False)
        it = iter(loader)
        for _ in range(max(1, args.workers)):                 # start-up of the workers is not counted
            next(it)
        pids = [w.pid for w in getattr(it, "_workers", [])]
        c0, t0 = time.process_time() + _cpu_seconds(pids), time.perf_counter()
        for _ in range(k):
            x, y = next(it)
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
        sync(device)
        results["Pillow+DataLoader"].append(k * bs / (time.perf_counter() - t0))
        cpu["Pillow+DataLoader"].append(k * bs / max(time.process_time() + _cpu_seconds(pids) - c0, 1e-9))
        del it, loader
        for name, s in streams.items():
            s.batch(step)                                     # warm
            sync(device)
            c0, t0 = time.process_time(), time.perf_counter()
            for i in range(k):
                x, y = s.batch(step + i)
            sync(device)
            results[name].append(k * bs / (time.perf_counter() - t0))
            cpu[name].append(k * bs / max(time.process_time() - c0, 1e-9))
        step += k + 1
        print(f"  repeat {r + 1}/{args.repeats}: " + ", ".join(f"{n} {v[-1]:,.0f} img/s" for n, v in results.items()),
              file=sys.stderr)
    return {n: statistics.median(v) for n, v in results.items()}, {n: statistics.median(v) for n, v in cpu.items()}


def bench_training(data, args, device, norm):
    """Seconds per ResNet-20 step: fed by TrainStream vs on batches made in advance, interleaved."""
    model = create_model("resnet20", seed=0).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    stream = TrainStream(data, args.batch_size, device=device, seed=0, normalization=norm,
                         channels_last=args.channels_last)
    premade = [stream.batch(10_000 + i) for i in range(args.steps)]

    def step(x, y):
        return train_step(model, opt, x, y)[0]

    for i in range(3):                                        # warm-up (allocator, cudnn autotune)
        step(*premade[i % len(premade)])
    sync(device)
    results = {"premade batches": [], "TrainStream": []}
    cpu = {n: [] for n in results}
    share = []                                  # fraction of the fed steps' time spent inside stream.batch()
    step = 0
    for r in range(args.repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        for i in range(args.steps):
            step(*premade[i])
        sync(device)
        results["premade batches"].append((time.perf_counter() - t0) / args.steps)
        cpu["premade batches"].append((time.process_time() - c0) / args.steps)
        c0, t0 = time.process_time(), time.perf_counter()
        in_batch = 0.0
        for i in range(args.steps):
            tb = time.perf_counter()
            x, y = stream.batch(step + i)
            in_batch += time.perf_counter() - tb
            step(x, y)
        sync(device)
        share.append(in_batch / (time.perf_counter() - t0))
        results["TrainStream"].append((time.perf_counter() - t0) / args.steps)
        cpu["TrainStream"].append((time.process_time() - c0) / args.steps)
        step += args.steps
        print(f"  repeat {r + 1}/{args.repeats}: "
              + ", ".join(f"{n} {v[-1] * 1e3:.1f} ms/step" for n, v in results.items()),
              file=sys.stderr)
    return ({n: statistics.median(v) for n, v in results.items()}, {n: statistics.median(v) for n, v in cpu.items()},
            statistics.median(share))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=["cifar10", "synthetic"], default=None,
                   help="cifar10 (default when ../shared is there) or synthetic")
    p.add_argument("--data-dir", default=None, help="an official CIFAR-10 folder or tarball")
    p.add_argument("--synthetic-train", type=int, default=10000)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--batches", type=int, default=40, help="batches per timed repeat (throughput)")
    p.add_argument("--steps", type=int, default=5, help="training steps per timed repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the Pillow baseline")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--skip-training", action="store_true")
    args = p.parse_args(argv)
    if args.data is None:
        args.data = "cifar10" if (args.data_dir or (SHARED / "tools" / "cifar10_fixture.py").is_file()) else "synthetic"
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sets, what = get_data(args)
    data = sets["train"]
    norm = Normalization.fit(data.x, "channel")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"device: {device} ({name}), "
          f"{os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads")
    print(f"data: {what}, {len(data)} training images; batch {args.batch_size}; {args.repeats} interleaved repeats")
    print(f"command: python benchmarks/bench_pipeline.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print()
    print(f"(1) input pipeline throughput, {args.batches} batches per repeat "
          f"(baseline: {args.workers} DataLoader workers)")
    med, cpu = bench_throughput(data, args, device, norm)
    base, cbase = med["Pillow+DataLoader"], cpu["Pillow+DataLoader"]
    print(f"    {'':<26} {'wall img/s':>12} {'ratio':>7}   {'img per CPU-s':>13} {'ratio':>7}")
    for name, v in med.items():
        print(f"    {name:<26} {v:12,.0f} {v / base:6.1f}x   {cpu[name]:13,.0f} {cpu[name] / cbase:6.1f}x")
    print("    (medians; CPU-s counts the main process and the DataLoader workers)")
    if not args.skip_training:
        print()
        print(f"(2) ResNet-20 training step, {args.steps} steps per repeat")
        med, cpu, share = bench_training(data, args, device, norm)
        pre, cpre = med["premade batches"], cpu["premade batches"]
        print(f"    {'':<26} {'wall ms/step':>12} {'ratio':>7}   {'CPU ms/step':>12} {'ratio':>7}")
        for name, v in med.items():
            print(f"    {name:<26} {v * 1e3:12.2f} {v / pre:7.3f}   {cpu[name] * 1e3:12.2f} {cpu[name] / cpre:7.3f}")
        print(f"    pipeline overhead inside training: {100 * (med['TrainStream'] / pre - 1):+.1f}% wall, "
              f"{100 * (cpu['TrainStream'] / cpre - 1):+.1f}% CPU time (medians)")
        print(f"    time inside TrainStream.batch() during the fed steps: {100 * share:.2f}% (median; on a GPU "
              f"this is host time that overlaps the queued kernels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
