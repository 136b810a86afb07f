"""Fused batch norm + ReLU (+ residual add) for training on the CPU.

After the convolutions, most of a CPU training step of a CIFAR ResNet goes to memory-bound ops: batch
norm, ReLU and the residual add, each a separate pass over an activation tensor forward and backward.
``csrc/fused_bn.cpp`` does ``relu(bn(x))`` and ``relu(bn(x) + shortcut)`` in two passes forward and two
backward (benchmarks/RESULTS.md has the measured speed-up). It is compiled on first use with the C++
compiler PyTorch's extension builder finds (``-O3 -march=native``) into
``$RESNETLAB_CACHE/ext/`` (default ``~/.cache/resnetlab/ext``); if that fails, or the inputs are not
float32 channels_last CPU tensors, the blocks use PyTorch's own ops.

Numerics: the batch statistics and the parameter gradients are accumulated in float per chunk of rows
and in double across chunks, in a fixed order: results do not depend on the thread count and agree with
a float64 reference at least as closely as PyTorch's eager ops do (tests/test_fused.py).

The fused path is opt-in per model (:func:`enable`; ``resnetlab train`` enables it where it applies) and
steps aside by itself whenever a hook is registered on one of the modules it would replace, so forward
and backward hooks (the analyses) always see the modules run one by one.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import platform
import threading
import time

import torch
from torch import nn
from torch.autograd.function import once_differentiable

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "fused_bn.cpp")
_lock = threading.Lock()
_ext = None
_error: str | None = None


def _cflags() -> list[str]:
    # -fopenmp: at::parallel_for is an inline OpenMP loop, serial without it (the OpenMP symbols resolve
    # to the runtime PyTorch has loaded); it also turns on the `omp simd` loops.
    flags = ["-O3", "-fopenmp"]
    if platform.machine() in ("x86_64", "AMD64"):
        flags.append("-march=native")  # the build folder is named after this CPU's flags
    return flags


@functools.cache
def _build_tag() -> str:
    """Names the build after everything it depends on, so one cache folder can hold several."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "")
    except OSError:
        pass
    with open(_SOURCE, "rb") as fh:
        source = fh.read()
    key = b"|".join([source, torch.__version__.encode(), platform.python_version().encode(),
                     platform.machine().encode(), flags.encode(), " ".join(_cflags()).encode()])
    return hashlib.sha256(key).hexdigest()[:12]


@contextlib.contextmanager
def _ninja_on_path():
    """PyTorch's builder runs ``ninja`` from PATH; the pip package's binary is not there when the venv's
    python is called without activating the venv."""
    path = os.environ.get("PATH", "")
    try:
        import ninja
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + path
    except ImportError:
        pass
    try:
        yield
    finally:
        os.environ["PATH"] = path


def build_folder() -> str:
    """Where the extension for this source, PyTorch, Python and CPU is (or will be) built."""
    from .io import cache_dir
    return os.path.join(cache_dir(), "ext", f"resnetlab_fused_{_build_tag()}")


def built() -> bool:
    """Whether the extension is loaded or already compiled in :func:`build_folder` (so loading is quick)."""
    folder = build_folder()
    return _ext is not None or (os.path.isdir(folder) and any(f.endswith(".so") for f in os.listdir(folder)))


def extension():
    """The compiled extension module, building it on first call; ``None`` if it cannot be built
    (:func:`unavailable_reason` says why)."""
    global _ext, _error
    if _ext is not None or _error is not None:
        return _ext
    with _lock:
        if _ext is not None or _error is not None:
            return _ext
        try:
            from torch.utils.cpp_extension import load

            folder = build_folder()
            name = os.path.basename(folder)
            os.makedirs(folder, exist_ok=True)
            # A build killed midway leaves PyTorch's lock file behind, and the next build would wait on it
            # forever; a real build takes about a minute, so a lock older than ten is stale.
            lock = os.path.join(folder, "lock")
            if os.path.exists(lock) and time.time() - os.path.getmtime(lock) > 600:
                os.remove(lock)
            with _ninja_on_path():
                _ext = load(name, [_SOURCE], extra_cflags=_cflags(), build_directory=folder, verbose=False)
        except Exception as exc:  # no compiler, no ninja, a build error: the eager ops still work
            _error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
    return _ext


def unavailable_reason() -> str | None:
    """Why the extension could not be built, or ``None`` (also before the first build attempt)."""
    return _error


def enable(model: nn.Module, on: bool = True) -> int:
    """Turn the fused path on (or off) in every block and stem of ``model``; returns how many modules
    it applies to. Turning it on builds the extension first and raises ``RuntimeError`` if that fails."""
    if on and extension() is None:
        raise RuntimeError(f"the fused batch-norm extension could not be built ({_error})")
    count = 0
    for module in model.modules():
        if hasattr(type(module), "fused"):
            module.fused = bool(on)
            count += 1
    return count


def _hooked(module: nn.Module | None) -> bool:
    return module is not None and bool(module._forward_hooks or module._forward_pre_hooks
                                       or module._backward_hooks or module._backward_pre_hooks)


def applies(x: torch.Tensor, bn: nn.Module, *others: nn.Module | None) -> bool:
    """Whether ``relu(bn(x) [+ shortcut])`` may take the fused path here: a training-mode affine batch
    norm with running statistics, a float32 channels_last CPU input outside autocast and compilation,
    and no hook on ``bn`` or on any of ``others`` (the ReLU and the add it replaces)."""
    from torch.nn.modules import module as _m
    if not (bn.training and bn.affine and bn.track_running_stats and x.device.type == "cpu"
            and x.dtype == torch.float32 and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)):
        return False
    if torch.is_autocast_enabled("cpu") or torch.compiler.is_compiling():
        return False
    if _m._global_forward_hooks or _m._global_forward_pre_hooks or _m._global_backward_hooks \
            or _m._global_backward_pre_hooks:
        return False
    return not (_hooked(bn) or any(_hooked(m) for m in others)) and _ext is not None


class _BatchNormReLU(torch.autograd.Function):
    """``relu(batch_norm(x) + shortcut)`` (``shortcut`` may be ``None``) in training mode."""

    @staticmethod
    def forward(ctx, x, weight, bias, shortcut, running_mean, running_var, momentum, eps):
        y, mean, invstd = _ext.forward(x, weight, bias, shortcut, running_mean, running_var, momentum, eps)
        ctx.has_shortcut = shortcut is not None
        # Without a shortcut the ReLU mask is recomputed from x; with one it is read from y.
        ctx.save_for_backward(x, y if ctx.has_shortcut else None, weight, bias, mean, invstd)
        return y

    @staticmethod
    @once_differentiable  # no double backward (Hessians): an error, never a silently wrong result
    def backward(ctx, dy):
        x, y, weight, bias, mean, invstd = ctx.saved_tensors
        grads = _ext.backward(dy, x, y, weight, bias, mean, invstd)
        dshortcut = grads[3] if ctx.has_shortcut else None
        return grads[0], grads[1], grads[2], dshortcut, None, None, None, None


def relu_bn(on: bool, bn: nn.Module, relu: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``relu(bn(x))``: through the fused op when ``on`` and :func:`applies`, else the two modules."""
    if on and applies(x, bn, relu):
        return batch_norm_relu(bn, x)
    return relu(bn(x))


def batch_norm_relu(bn: nn.BatchNorm2d, x: torch.Tensor, shortcut: torch.Tensor | None = None) -> torch.Tensor:
    """``relu(bn(x) + shortcut)`` through the extension; the caller checked :func:`applies`.
    Updates ``bn``'s running statistics and batch counter as ``bn(x)`` would."""
    bn.num_batches_tracked.add_(1)
    momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
    if shortcut is not None:
        shortcut = shortcut.contiguous(memory_format=torch.channels_last)
    return _BatchNormReLU.apply(x, bn.weight, bn.bias, shortcut, bn.running_mean, bn.running_var,
                                float(momentum), float(bn.eps))
