"""Fused batch norm + ReLU (+ residual add) for training on the CPU (docs/train.md#speed).

``csrc/fused_bn.cpp`` does ``relu(bn(x))`` and ``relu(bn(x) + shortcut)`` in two passes over the
activations forward and two backward, where PyTorch makes one per op; it is compiled on first use into
``$RESNETLAB_CACHE/ext/``, and where that fails the blocks use PyTorch's ops. Its sums run in float per
chunk of rows and in double across chunks, in a fixed order: the results do not depend on the thread count.

:func:`enable` turns each block (and the stem) into its fused subclass below by setting ``__class__``:
parameters, names and state_dict stay; this module is the only place that knows. A fused forward runs
the kernel only where it computes exactly what the parent's modules would (training-mode affine
``nn.BatchNorm2d``, ``nn.ReLU``, ``ResidualAdd``; float32 channels_last CPU tensors; no autocast,
compilation, tracing or hook on a module it replaces), else the parent's forward, so hooks and
evaluation always see the modules one by one. In a fresh process (a fused model unpickled) the fused
modules use the parent's forward until :func:`extension` (or :func:`enable`) has loaded the kernels.
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
from torch.nn.modules import module as _torch_module

from .blocks import BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck, ProjectionShortcut, ResidualAdd
from .io import cache_dir
from .models import ResNet

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
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        flags = next((line for line in fh if line.startswith("flags")), "")
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
    with contextlib.suppress(ImportError):
        import ninja
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + path
    try:
        yield
    finally:
        os.environ["PATH"] = path


def build_folder() -> str:
    """Where the extension for this source, PyTorch, Python and CPU is (or will be) built."""
    return os.path.join(cache_dir(), "ext", f"resnetlab_fused_{_build_tag()}")


def built() -> bool:
    """Whether the extension is loaded or already compiled in :func:`build_folder` (so loading is quick)."""
    folder = build_folder()
    return _ext is not None or (os.path.isdir(folder) and any(f.endswith(".so") for f in os.listdir(folder)))


def extension():
    """The compiled extension module, building it on first call; ``None`` if it cannot be built
    (:func:`unavailable_reason` says why)."""
    global _ext, _error
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


def _hooked(module: nn.Module) -> bool:
    # The dictionaries nn.Module.__call__ reads to decide whether to run hooks (no public query exists).
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks)


def _global_hooks() -> bool:
    m = _torch_module
    return bool(m._global_forward_hooks or m._global_forward_pre_hooks or m._global_backward_hooks
                or m._global_backward_pre_hooks)


def _fits(x: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last))


def _plain_norm(bn: nn.Module) -> bool:
    """A training-mode affine ``nn.BatchNorm2d`` with running statistics and no hook: what the kernel does."""
    return (type(bn) is nn.BatchNorm2d and bn.training and bn.affine and bn.track_running_stats
            and not _hooked(bn))


def _free() -> bool:
    """The extension is loaded and nothing (autocast, compilation, tracing, a global hook) needs the
    modules run one by one."""
    return not (_ext is None or torch.is_autocast_enabled("cpu") or torch.compiler.is_compiling()
                or torch.jit.is_tracing() or _global_hooks())


def _may_fuse(norms, relu: nn.Module, add: nn.Module | None = None, shortcut: nn.Module | None = None) -> bool:
    """Whether a fused forward may replace ``norms``, ``relu`` and ``add`` (the shortcut still runs as a
    module, but a hook on it also sends the block down the parent's forward, as it always has)."""
    if not _free() or type(relu) is not nn.ReLU or _hooked(relu) or not all(_plain_norm(bn) for bn in norms):
        return False
    if add is not None and (type(add) is not ResidualAdd or _hooked(add)):
        return False
    return shortcut is None or not _hooked(shortcut)


def applies(x: torch.Tensor, bn: nn.Module, *others: nn.Module) -> bool:
    """Whether ``relu(bn(x))`` may take the fused path here (see the module docstring), with no hook on
    ``bn`` or on any of ``others``."""
    return _fits(x) and _free() and _plain_norm(bn) and not any(_hooked(m) for m in others)


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


def batch_norm_relu(bn: nn.BatchNorm2d, x: torch.Tensor, shortcut: torch.Tensor | None = None) -> torch.Tensor:
    """``relu(bn(x) + shortcut)`` through the extension; the caller checked :func:`applies`.
    Updates ``bn``'s running statistics and batch counter as ``bn(x)`` would."""
    bn.num_batches_tracked.add_(1)
    momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
    if shortcut is not None:
        shortcut = shortcut.contiguous(memory_format=torch.channels_last)
    return _BatchNormReLU.apply(x, bn.weight, bn.bias, shortcut, bn.running_mean, bn.running_var,
                                float(momentum), float(bn.eps))


def _bn_relu(bn: nn.BatchNorm2d, relu: nn.ReLU, x: torch.Tensor) -> torch.Tensor:
    return batch_norm_relu(bn, x) if _fits(x) else relu(bn(x))


def _bn_add_relu(bn: nn.BatchNorm2d, add: ResidualAdd, relu: nn.ReLU, branch: torch.Tensor,
                 shortcut: torch.Tensor | None) -> torch.Tensor:
    if not _fits(branch):
        return relu(add(bn(branch), shortcut))
    if shortcut is not None and add.scale != 1.0:
        shortcut = shortcut * add.scale  # as ResidualAdd scales it, so the sum rounds the same
    return batch_norm_relu(bn, branch, shortcut)


class FusedBasicBlock(BasicBlock):
    """A :class:`BasicBlock` whose BN-ReLU and BN-add-ReLU steps each run as one kernel call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _may_fuse((self.bn1, self.bn2), self.relu, self.add, self.downsample):
            return super().forward(x)
        out = _bn_relu(self.bn1, self.relu, self.conv1(x))
        out = self.conv2(out)
        return _bn_add_relu(self.bn2, self.add, self.relu, out, self.downsample(x))


class FusedBottleneck(Bottleneck):
    """A :class:`Bottleneck` whose BN-ReLU and BN-add-ReLU steps each run as one kernel call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _may_fuse((self.bn1, self.bn2, self.bn3), self.relu, self.add, self.downsample):
            return super().forward(x)
        out = _bn_relu(self.bn1, self.relu, self.conv1(x))
        out = _bn_relu(self.bn2, self.relu, self.conv2(out))
        out = self.conv3(out)
        return _bn_add_relu(self.bn3, self.add, self.relu, out, self.downsample(x))


class FusedPreActBasicBlock(PreActBasicBlock):
    """A :class:`PreActBasicBlock` whose BN-ReLU steps each run as one kernel call (the add stays)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _may_fuse((self.bn1, self.bn2), self.relu):
            return super().forward(x)
        pre = _bn_relu(self.bn1, self.relu, x)
        out = self.conv1(pre)
        out = self.conv2(_bn_relu(self.bn2, self.relu, out))
        shortcut = self.downsample(pre if isinstance(self.downsample, ProjectionShortcut) else x)
        return self.add(out, shortcut)


class FusedPreActBottleneck(PreActBottleneck):
    """A :class:`PreActBottleneck` whose BN-ReLU steps each run as one kernel call (the add stays)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _may_fuse((self.bn1, self.bn2, self.bn3), self.relu):
            return super().forward(x)
        pre = _bn_relu(self.bn1, self.relu, x)
        out = self.conv1(pre)
        out = self.conv2(_bn_relu(self.bn2, self.relu, out))
        out = self.conv3(_bn_relu(self.bn3, self.relu, out))
        shortcut = self.downsample(pre if isinstance(self.downsample, ProjectionShortcut) else x)
        return self.add(out, shortcut)


class FusedResNet(ResNet):
    """A :class:`ResNet` whose stem BN-ReLU (and the pre-activated net's final BN-ReLU) run as one kernel
    call each; its blocks are fused by their own classes."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        pairs = ([(self.bn1, self.relu)] if self.stem_norm else []) \
            + ([(self.final_bn, self.final_relu)] if self.preact else [])
        if not pairs or not all(_may_fuse((bn,), relu) for bn, relu in pairs):
            return super().forward_features(x)
        x = self.conv1(x)
        if self.stem_norm:
            x = _bn_relu(self.bn1, self.relu, x)
        if self.spec.family == "imagenet":
            x = self.maxpool(x)
        for stage in self.stages:
            x = stage(x)
        if self.preact:
            x = _bn_relu(self.final_bn, self.final_relu, x)
        return x


_FUSED: dict[type, type] = {BasicBlock: FusedBasicBlock, Bottleneck: FusedBottleneck,
                            PreActBasicBlock: FusedPreActBasicBlock, PreActBottleneck: FusedPreActBottleneck,
                            ResNet: FusedResNet}
_UNFUSED: dict[type, type] = {fused: plain for plain, fused in _FUSED.items()}


def enable(model: nn.Module, on: bool = True) -> int:
    """Turn every block and stem of ``model`` into its fused subclass (``on=False``: back); returns how
    many modules are now in that state. Builds the extension first: ``RuntimeError`` if that fails."""
    if on and extension() is None:
        raise RuntimeError(f"the fused batch-norm extension could not be built ({_error})")
    swap, done = (_FUSED, _UNFUSED) if on else (_UNFUSED, _FUSED)
    for module in model.modules():
        if type(module) in swap:
            module.__class__ = swap[type(module)]
    return sum(type(m) in done for m in model.modules())


def disable(model: nn.Module) -> int:
    """``enable(model, False)``: every fused module back to its plain class."""
    return enable(model, False)


def is_enabled(model: nn.Module) -> bool:
    """Whether any module of ``model`` is fused."""
    return any(type(m) in _UNFUSED for m in model.modules())
