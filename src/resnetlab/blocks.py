"""Residual blocks and the shortcut connections between them.

Four shortcut options, after He et al. 2015 ("Deep Residual Learning for Image Recognition", Sec. 4.1):

* ``"A"``    identity; where the shape changes, subsample spatially and pad the new channels with zeros.
             No parameters.
* ``"B"``    identity where shapes match, 1x1 convolution (with stride) + BN where they change.
* ``"C"``    1x1 projection + BN on every block.
* ``"none"`` no shortcut: the plain network of the paper.

Every block ends its residual branch in a :class:`ResidualAdd` module that receives the branch output
``F(x)`` and the shortcut output, so a single forward hook sees both (the analyses rely on it). All ops
are out of place so that backward hooks work.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import fused as _fused

SHORTCUTS = ("A", "B", "C", "none")
ZERO_PADS = ("split", "end")
STRIDE_AT = ("3x3", "1x1")


def _check_choice(what: str, value, valid) -> None:
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(map(str, valid))}")


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)


class IdentityShortcut(nn.Module):
    """Shortcut that passes its input through unchanged (options A and B where shapes match)."""

    kind = "identity"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class ZeroPadShortcut(nn.Module):
    """Option A where the shape changes: ``x[:, :, ::s, ::s]`` and zero channels, no parameters.

    ``pad="split"`` puts half the new channels before and half after the old ones (the convention of the
    akamaster/pytorch_resnet_cifar10 checkpoints); ``pad="end"`` appends them all (fb.resnet.torch).
    """

    kind = "zero-pad"

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, pad: str = "split"):
        super().__init__()
        _check_choice("zero_pad", pad, ZERO_PADS)
        if out_channels < in_channels:
            raise ValueError(
                f"shortcut option A cannot reduce channels ({in_channels} -> {out_channels}); use B or C")
        self.in_channels, self.out_channels, self.stride, self.pad = in_channels, out_channels, stride, pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, Cin, H, W) -> (N, Cin, ceil(H/s), ceil(W/s))
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        extra = self.out_channels - self.in_channels
        before = extra // 2 if self.pad == "split" else 0
        # F.pad takes (W_left, W_right, H_top, H_bottom, C_front, C_back): (N, Cout, H/s, W/s)
        return F.pad(x, (0, 0, 0, 0, before, extra - before))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}, pad={self.pad!r}"


class ProjectionShortcut(nn.Sequential):
    """Options B/C: a strided 1x1 convolution, followed by BN unless the block is pre-activated.

    A Sequential so that the parameters are named ``downsample.0`` / ``downsample.1`` as in torchvision.
    """

    kind = "projection"

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, norm: bool = True):
        layers = [conv1x1(in_channels, out_channels, stride)]
        if norm:
            layers.append(nn.BatchNorm2d(out_channels))
        super().__init__(*layers)


class ResidualAdd(nn.Module):
    """``branch + scale * shortcut``. A module (not an expression) so that hooks see both inputs.

    ``scale`` is the constant shortcut scaling studied in "Identity Mappings in Deep Residual Networks".
    """

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = float(scale)

    def forward(self, branch: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        if self.scale != 1.0:
            shortcut = shortcut * self.scale
        return branch + shortcut

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


def make_shortcut(option: str, in_channels: int, out_channels: int, stride: int,
                  zero_pad: str = "split", norm: bool = True) -> nn.Module | None:
    """The shortcut module for one block, or ``None`` for the plain network (option ``"none"``)."""
    _check_choice("shortcut option", option, SHORTCUTS)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if option == "none":
        return None
    shape_changes = stride != 1 or in_channels != out_channels
    if option == "C" or (option == "B" and shape_changes):
        return ProjectionShortcut(in_channels, out_channels, stride, norm=norm)
    if option == "A" and shape_changes:
        return ZeroPadShortcut(in_channels, out_channels, stride, zero_pad)
    return IdentityShortcut()


def shortcut_kind(block: nn.Module) -> str:
    """``"identity"``, ``"zero-pad"``, ``"projection"`` or ``"none"`` for a block of this module."""
    return "none" if block.downsample is None else block.downsample.kind


class _Block(nn.Module):
    """Shared constructor checks and the shortcut/add pair of every block."""

    expansion = 1
    fused = False  # set by resnetlab.fused.enable: BN-ReLU(-add) through one fused op when it applies

    def _init_shortcut(self, in_channels, out_channels, stride, shortcut, zero_pad, shortcut_scale, norm):
        for what, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{what} must be a positive integer, got {value!r}")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.downsample = make_shortcut(shortcut, in_channels, out_channels, stride, zero_pad, norm=norm)
        self.add = None if self.downsample is None else ResidualAdd(shortcut_scale)

    @property
    def shortcut_kind(self) -> str:
        return shortcut_kind(self)

    def _merge(self, branch: torch.Tensor, shortcut_input: torch.Tensor) -> torch.Tensor:
        if self.downsample is None:  # plain network: the branch is all there is
            return branch
        return self.add(branch, self.downsample(shortcut_input))

    def _bn_relu(self, bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
        """``relu(bn(x))``; fused in training when enabled (see resnetlab.fused)."""
        return _fused.relu_bn(self.fused, bn, self.relu, x)

    def _bn_merge_relu(self, bn: nn.BatchNorm2d, branch: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``relu(bn(branch) + shortcut(x))`` (no add in a plain network); fused like :meth:`_bn_relu`."""
        if self.fused and _fused.applies(branch, bn, self.relu, self.add, self.downsample):
            if self.downsample is None:
                return _fused.batch_norm_relu(bn, branch)
            shortcut = self.downsample(x)
            if self.add.scale != 1.0:
                shortcut = shortcut * self.add.scale
            return _fused.batch_norm_relu(bn, branch, shortcut)
        return self.relu(self._merge(bn(branch), x))


class BasicBlock(_Block):
    """Two 3x3 convolutions (post-activation): ``relu(BN(conv(relu(BN(conv(x))))) + shortcut(x))``.

    Output channels equal ``planes``; ``stride`` is applied by the first convolution.
    """

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1, shortcut: str = "B",
                 zero_pad: str = "split", shortcut_scale: float = 1.0):
        super().__init__()
        self._init_shortcut(in_channels, planes, stride, shortcut, zero_pad, shortcut_scale, norm=True)
        self.conv1 = conv3x3(in_channels, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)

    def last_norm(self) -> nn.Module:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, Cin, H, W)
        out = self._bn_relu(self.bn1, self.conv1(x))  # (N, planes, H/s, W/s)
        # F(x) = bn2(conv2(out)): (N, planes, H/s, W/s); output relu(F(x) + shortcut(x)), the same shape
        return self._bn_merge_relu(self.bn2, self.conv2(out), x)


class Bottleneck(_Block):
    """1x1 reduce to ``planes``, 3x3, 1x1 expand to ``4 * planes`` (post-activation).

    ``stride_at="3x3"`` strides the 3x3 convolution (torchvision's "v1.5"); ``"1x1"`` strides the first
    1x1 convolution, as in the original paper.
    """

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, shortcut: str = "B",
                 zero_pad: str = "split", shortcut_scale: float = 1.0, stride_at: str = "3x3"):
        super().__init__()
        _check_choice("stride_at", stride_at, STRIDE_AT)
        out_channels = planes * self.expansion
        self._init_shortcut(in_channels, out_channels, stride, shortcut, zero_pad, shortcut_scale, norm=True)
        self.stride_at = stride_at
        s1, s3 = (stride, 1) if stride_at == "1x1" else (1, stride)
        self.conv1 = conv1x1(in_channels, planes, s1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, s3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()

    def last_norm(self) -> nn.Module:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, Cin, H, W)
        out = self._bn_relu(self.bn1, self.conv1(x))  # (N, planes, H or H/s, ...)
        out = self._bn_relu(self.bn2, self.conv2(out))  # (N, planes, H/s, W/s)
        # F(x) = bn3(conv3(out)): (N, 4*planes, H/s, W/s); output relu(F(x) + shortcut(x))
        return self._bn_merge_relu(self.bn3, self.conv3(out), x)


class PreActBasicBlock(_Block):
    """Pre-activation basic block (He et al. 2016): ``x + conv(relu(BN(conv(relu(BN(x))))))``.

    A projection shortcut reads the pre-activated input, as in the authors' code; identity and zero-pad
    shortcuts read ``x`` itself, keeping the path from block to block clean.
    """

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1, shortcut: str = "B",
                 zero_pad: str = "split", shortcut_scale: float = 1.0):
        super().__init__()
        self._init_shortcut(in_channels, planes, stride, shortcut, zero_pad, shortcut_scale, norm=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU()
        self.conv1 = conv3x3(in_channels, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)

    def last_norm(self) -> nn.Module:
        return self.conv2  # no BN ends a pre-activated branch: zero-init acts on the last conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, Cin, H, W)
        pre = self._bn_relu(self.bn1, x)  # (N, Cin, H, W)
        out = self.conv1(pre)  # (N, planes, H/s, W/s)
        out = self.conv2(self._bn_relu(self.bn2, out))  # (N, planes, H/s, W/s): F(x)
        source = pre if isinstance(self.downsample, ProjectionShortcut) else x
        return self._merge(out, source)


class PreActBottleneck(_Block):
    """Pre-activation bottleneck: BN-ReLU-1x1, BN-ReLU-3x3, BN-ReLU-1x1 (expand by 4), plus shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, shortcut: str = "B",
                 zero_pad: str = "split", shortcut_scale: float = 1.0, stride_at: str = "3x3"):
        super().__init__()
        _check_choice("stride_at", stride_at, STRIDE_AT)
        out_channels = planes * self.expansion
        self._init_shortcut(in_channels, out_channels, stride, shortcut, zero_pad, shortcut_scale, norm=False)
        self.stride_at = stride_at
        s1, s3 = (stride, 1) if stride_at == "1x1" else (1, stride)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU()
        self.conv1 = conv1x1(in_channels, planes, s1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, s3)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_channels)

    def last_norm(self) -> nn.Module:
        return self.conv3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, Cin, H, W)
        pre = self._bn_relu(self.bn1, x)
        out = self.conv1(pre)  # (N, planes, ., .)
        out = self.conv2(self._bn_relu(self.bn2, out))  # (N, planes, H/s, W/s)
        out = self.conv3(self._bn_relu(self.bn3, out))  # (N, 4*planes, H/s, W/s): F(x)
        source = pre if isinstance(self.downsample, ProjectionShortcut) else x
        return self._merge(out, source)


BLOCKS = (BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck)
