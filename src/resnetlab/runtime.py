"""Where and how a run executes: CPU threads and instruction sets, the numeric precision, the processes of a
``torchrun`` launch (and batch norm synchronised across them), the state of every RNG (for exact resume), and
the versions a run records.
"""
from __future__ import annotations

import ctypes
import os
import platform
import random
import signal
import sys
import threading
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.distributed.nn import functional as dist_nn

from . import __version__
from .io import PRECISIONS, resolve_device

# torch 2.13 deprecates the differentiable all_reduce in favour of a private module whose autograd support is
# recent (torch>=2.2 is supported here): keep the public one, without its warning in every process.
warnings.filterwarnings("ignore", "torch.distributed.nn.functional.all_reduce is deprecated", FutureWarning)


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads share a core's vector units)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return max(1, (os.cpu_count() or 2) // 2)
    cores = set()
    for c in cpus:
        try:
            with open(f"/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list") as fh:
                cores.add(fh.read().strip())
        except OSError:
            cores.add(str(c))
    return max(1, len(cores))


def _cpu_has(feature: str) -> bool:
    """Whether the CPU has ``"amx_tile"``, ``"avx512"``, ... (as far as this torch can tell)."""
    check = getattr(torch.cpu, f"_is_{feature}_supported", None)
    return bool(check()) if check is not None else False


def resolve_precision(precision: str, device: torch.device, channels_last: bool | None) -> tuple[bool, bool]:
    """``(bf16 autocast?, channels_last?)`` for ``precision`` on ``device``. ``auto``: bf16 + channels_last on CUDA
    and AMX CPUs; fp32 + channels_last on other AVX-512 CPUs (bf16 convolutions slower there, channels_last faster:
    docs/train.md); fp32 elsewhere. ``bf16``/``fp32`` force it; channels_last follows bf16 unless given."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type == "cuda":
            bf16 = cl = torch.cuda.is_bf16_supported()
        elif device.type == "cpu":
            bf16 = _cpu_has("amx_tile")
            cl = bf16 or _cpu_has("avx512")
        else:
            bf16 = cl = False
    else:
        bf16 = cl = precision == "bf16"
    return bf16, (cl if channels_last is None else bool(channels_last))


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def setup_distributed(device: str = "auto") -> Dist:
    """Read ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (set by ``torchrun``), start the process group when there
    is more than one process (NCCL on CUDA, gloo on CPU) and pick this process's device. A worker of
    ``torchrun`` also stops when the launcher dies (:func:`exit_with_parent`)."""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        exit_with_parent()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        # Under torchrun each process takes the GPU of its local rank; "cuda:N" pins a single process.
        dev = torch.device("cuda", local) if (world > 1 or dev.index is None) else dev
        torch.cuda.set_device(dev)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, local, dev)


def end_distributed(dist: Dist) -> None:
    """Wait until every process is done (rank 0 writes the last checkpoint and final.json while the others
    are already through the loop), then close the process group. A worker that simply exited tore its gloo
    group down under rank 0 and aborted ("terminate called without an active exception"); torchrun then
    killed rank 0 before it had written final.json.

    Call it once the DDP wrapper is gone: a group freed last by DDP's reducer is destroyed while holding the
    GIL, and gloo's destructor then joins its worker threads, one of which may be waiting for the GIL to free
    a finished collective's tensors: a deadlock now and then (``benchmarks/stress_distributed.py``). Freed
    last here, the group's own destructor releases the GIL first."""
    if dist.world_size > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def _interrupt_once(signum, frame):
    # A dying multi-threaded parent sends the death signal once per thread the child is handed to: stop once.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def exit_with_parent() -> None:
    """Have the kernel send this process SIGTERM when its parent dies, even by SIGKILL (Linux only; elsewhere
    nothing), and make SIGTERM a ``KeyboardInterrupt`` so the run stops as after Ctrl-C. A killed ``torchrun``
    otherwise leaves its workers training on, each in its own session, with no one to stop them."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt_once)
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(1, ctypes.c_ulong(signal.SIGTERM))  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect, so no signal will come
        os.kill(os.getpid(), signal.SIGTERM)


class SyncBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training-mode statistics are those of the global batch of all processes, on any
    backend (``nn.SyncBatchNorm`` takes CUDA tensors only). Same parameters, buffers and state_dict; in eval
    mode or in a single process it is plain ``nn.BatchNorm2d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        c, xf = x.shape[1], x.float()  # statistics in float, as BatchNorm2d keeps them for bf16 inputs
        count = torch.full((1,), xf.numel() // c, dtype=xf.dtype, device=xf.device)
        # One differentiable all_reduce of (sum, sum of squares, count): its backward sums every process's
        # gradient of the statistics, so autograd gives each process its share of the global batch's gradient.
        total = dist_nn.all_reduce(torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)), count]))
        n = total[-1]
        mean = total[:c] / n
        var = (total[c:2 * c] / n - mean * mean).clamp(min=0)  # cancellation may leave a tiny negative
        if self.track_running_stats:
            with torch.no_grad():  # as BatchNorm2d: momentum (None: a cumulative average), unbiased variance
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean, alpha=m)
                self.running_var.mul_(1 - m).add_(var * (n / (n - 1)), alpha=m)
        scale = torch.rsqrt(var + self.eps) * (self.weight if self.affine else 1)
        shift = (self.bias if self.affine else 0) - mean * scale
        return (xf * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)).to(x.dtype)


def sync_batch_norm(model: nn.Module) -> nn.Module:
    """Make every ``nn.BatchNorm2d`` of ``model`` normalise with the global batch's statistics: converted to
    ``nn.SyncBatchNorm`` on CUDA, else turned into :class:`SyncBatchNorm2d` by its class (as
    :func:`resnetlab.fused.enable` swaps blocks, so the blocks need not know). Parameters, buffers and
    state_dict keys stay the same."""
    if next(model.parameters()).is_cuda:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = SyncBatchNorm2d
    return model


def rng_state() -> dict:
    """Every generator's state, as tensors and numbers (loadable with ``weights_only=True``)."""
    version, words, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "python": {"version": version, "state": torch.tensor(words, dtype=torch.int64), "gauss": gauss},
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"].tolist()), p["gauss"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def versions() -> dict:
    """The versions a run records beside its results."""
    return {"resnetlab": __version__, "torch": str(torch.__version__), "numpy": str(np.__version__),
            "python": platform.python_version()}
