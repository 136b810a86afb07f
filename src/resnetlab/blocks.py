"""Residual blocks and the shortcut connections between them (He et al. 2015, Sec. 4.1, for the options).

Every block reads like torchvision's: its ``forward`` spells out each convolution, batch norm and ReLU,
then ``out = self.add(out, self.downsample(x))``. The shortcut is always a module (``downsample``), a
:class:`NoShortcut` in the plain network, and the add a :class:`ResidualAdd` module that receives ``F(x)``
and the shortcut's output, so one forward hook sees both (the analyses rely on it). All ops are out of
place, so backward hooks work.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


# A: identity, zero-padded where the shape changes; B: identity, 1x1 projection where it changes;
# C: projection everywhere; none: the plain network. A transition overrides it where the shape changes.
SHORTCUTS = ("A", "B", "C", "none")
TRANSITIONS = ("zero-pad", "projection", "avgpool-projection", "none")
ZERO_PADS = ("split", "end")
STRIDE_AT = ("3x3", "1x1")


def _check_choice(what: str, value, valid) -> None:
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(map(str, valid))}")


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)


class IdentityShortcut(nn.Identity):
    """Shortcut that passes its input through unchanged (options A and B where shapes match)."""

    kind = "identity"


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


class NoShortcut(nn.Module):
    """The plain network's shortcut (option ``"none"``): ``None``, which :class:`ResidualAdd` reads as
    "nothing to add", so a plain block runs the same ``add(F(x), downsample(x))`` and outputs ``F(x)``."""

    kind = "none"

    def forward(self, x: torch.Tensor) -> None:
        return None


class AvgPoolProjectionShortcut(ProjectionShortcut):
    """ResNet-D's shortcut (He et al. 2019, "Bag of Tricks"): a 2x2 average pool with the stride, then a
    stride-1 1x1 convolution + BN (``downsample.1``/``.2``, as timm's), so it sees every input position."""

    kind = "avgpool-projection"

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, norm: bool = True):
        super().__init__(in_channels, out_channels, norm=norm)  # the projection, at stride 1
        pool = nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
        self.insert(0, pool)  # in front of it, as downsample.0


class ResidualAdd(nn.Module):
    """``branch + scale * shortcut``, or ``branch`` alone when the shortcut is ``None`` (:class:`NoShortcut`);
    ``scale`` is the constant shortcut scaling of "Identity Mappings in Deep Residual Networks"."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = float(scale)

    def forward(self, branch: torch.Tensor, shortcut: torch.Tensor | None) -> torch.Tensor:
        if shortcut is None:  # the plain network: the block is its branch
            return branch
        if self.scale != 1.0:
            shortcut = shortcut * self.scale
        return branch + shortcut

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


def make_shortcut(option: str, in_channels: int, out_channels: int, stride: int,
                  zero_pad: str = "split", norm: bool = True, transition: str | None = None) -> nn.Module:
    """The shortcut module for one block; ``transition`` (one of :data:`TRANSITIONS`), when given, decides
    it for a block whose shape changes, whatever ``option`` says for the others."""
    _check_choice("shortcut option", option, SHORTCUTS)
    if transition is not None:
        _check_choice("transition", transition, TRANSITIONS)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    shape_changes = stride != 1 or in_channels != out_channels
    if shape_changes and transition == "avgpool-projection":
        return AvgPoolProjectionShortcut(in_channels, out_channels, stride, norm=norm)
    if shape_changes and transition is not None:  # the others give what option A, B or none gives there
        option = {"zero-pad": "A", "projection": "B", "none": "none"}[transition]
    if option == "none":
        return NoShortcut()
    if option == "C" or (option == "B" and shape_changes):
        return ProjectionShortcut(in_channels, out_channels, stride, norm=norm)
    if option == "A" and shape_changes:
        return ZeroPadShortcut(in_channels, out_channels, stride, zero_pad)
    return IdentityShortcut()


def shortcut_kind(block: nn.Module) -> str:
    """The ``kind`` of ``block.downsample``: identity, zero-pad, projection, avgpool-projection or none."""
    return block.downsample.kind


class _Block(nn.Module):
    """What every block shares: the constructor checks, its shortcut ``downsample`` and its ``add``."""

    expansion = 1

    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        for what, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{what} must be a positive integer, got {value!r}")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def _set_shortcut(self, shortcut, zero_pad, shortcut_scale, norm, transition=None):
        # Registered after the branch's layers, as torchvision does: state_dict keys, parameters() and so
        # the optimizer's state come in torchvision's order.
        self.downsample = make_shortcut(shortcut, self.in_channels, self.out_channels, self.stride, zero_pad,
                                        norm=norm, transition=transition)
        self.add = ResidualAdd(shortcut_scale)

    @property
    def shortcut_kind(self) -> str:
        """identity, zero-pad, projection, avgpool-projection or none (the shortcut module's ``kind``)."""
        return shortcut_kind(self)

    def last_residual_layer(self) -> nn.Module:
        """The layer that ends ``F(x)`` (the last BN, or a pre-activated block's last conv): zeroing its
        weight (``zero_init_residual``) starts the block as its shortcut."""
        raise NotImplementedError


class BasicBlock(_Block):
    """Two 3x3 convolutions (post-activation): ``relu(BN(conv(relu(BN(conv(x))))) + shortcut(x))``.

    Output channels equal ``planes``; ``stride`` is applied by the first convolution.
    """

    def __init__(self, in_channels: int, planes: int, stride: int = 1, shortcut: str = "B",
                 zero_pad: str = "split", shortcut_scale: float = 1.0, transition: str | None = None):
        super().__init__(in_channels, planes, stride)
        self.conv1 = conv3x3(in_channels, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self._set_shortcut(shortcut, zero_pad, shortcut_scale, norm=True, transition=transition)

    def last_residual_layer(self) -> nn.Module:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, in_channels, H, W); s = stride
        out = self.conv1(x)  # (N, planes, H/s, W/s)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)  # (N, planes, H/s, W/s)
        out = self.bn2(out)  # F(x)
        out = self.add(out, self.downsample(x))  # F(x) + shortcut(x): (N, planes, H/s, W/s)
        out = self.relu(out)
        return out


class Bottleneck(_Block):
    """1x1 reduce to ``planes``, 3x3, 1x1 expand to ``4 * planes`` (post-activation).

    ``stride_at="3x3"`` strides the 3x3 convolution (torchvision's "v1.5"); ``"1x1"`` strides the first
    1x1 convolution, as in the original paper.
    """

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, shortcut: str = "B",
                 zero_pad: str = "split", shortcut_scale: float = 1.0, stride_at: str = "3x3",
                 transition: str | None = None):
        _check_choice("stride_at", stride_at, STRIDE_AT)
        super().__init__(in_channels, planes * self.expansion, stride)
        self.stride_at = stride_at
        s1, s3 = (stride, 1) if stride_at == "1x1" else (1, stride)
        self.conv1 = conv1x1(in_channels, planes, s1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, s3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, self.out_channels)
        self.bn3 = nn.BatchNorm2d(self.out_channels)
        self.relu = nn.ReLU()
        self._set_shortcut(shortcut, zero_pad, shortcut_scale, norm=True, transition=transition)

    def last_residual_layer(self) -> nn.Module:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, in_channels, H, W); s = stride, taken by conv1 or conv2 (stride_at); E = expansion
        out = self.conv1(x)  # (N, planes, H, W), or (N, planes, H/s, W/s) when conv1 strides
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)  # (N, planes, H/s, W/s)
        out = self.bn2(out)
        out = self.relu(out)
        out = self.conv3(out)  # (N, E * planes, H/s, W/s)
        out = self.bn3(out)  # F(x)
        out = self.add(out, self.downsample(x))  # F(x) + shortcut(x): (N, E * planes, H/s, W/s)
        out = self.relu(out)
        return out


class PreActBasicBlock(_Block):
    """Pre-activation basic block (He et al. 2016): ``x + conv(relu(BN(conv(relu(BN(x))))))``.

    A projection shortcut reads the pre-activated input, as in the authors' code; identity and zero-pad
    shortcuts read ``x`` itself, keeping the path from block to block clean.
    """

    def __init__(self, in_channels: int, planes: int, stride: int = 1, shortcut: str = "B",
                 zero_pad: str = "split", shortcut_scale: float = 1.0, transition: str | None = None):
        super().__init__(in_channels, planes, stride)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU()
        self.conv1 = conv3x3(in_channels, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self._set_shortcut(shortcut, zero_pad, shortcut_scale, norm=False, transition=transition)

    def last_residual_layer(self) -> nn.Module:
        return self.conv2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, in_channels, H, W); s = stride
        pre = self.bn1(x)
        pre = self.relu(pre)  # the pre-activated input: (N, in_channels, H, W)
        out = self.conv1(pre)  # (N, planes, H/s, W/s)
        out = self.bn2(out)
        out = self.relu(out)
        out = self.conv2(out)  # F(x): (N, planes, H/s, W/s)
        # a projection reads the pre-activated input, identity and zero-pad shortcuts read x itself
        shortcut = self.downsample(pre if isinstance(self.downsample, ProjectionShortcut) else x)
        out = self.add(out, shortcut)  # no ReLU after the add: the next block pre-activates its input
        return out


class PreActBottleneck(_Block):
    """Pre-activation bottleneck: BN-ReLU-1x1, BN-ReLU-3x3, BN-ReLU-1x1 (expand by 4), plus shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, shortcut: str = "B",
                 zero_pad: str = "split", shortcut_scale: float = 1.0, stride_at: str = "3x3",
                 transition: str | None = None):
        _check_choice("stride_at", stride_at, STRIDE_AT)
        super().__init__(in_channels, planes * self.expansion, stride)
        self.stride_at = stride_at
        s1, s3 = (stride, 1) if stride_at == "1x1" else (1, stride)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU()
        self.conv1 = conv1x1(in_channels, planes, s1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, s3)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, self.out_channels)
        self._set_shortcut(shortcut, zero_pad, shortcut_scale, norm=False, transition=transition)

    def last_residual_layer(self) -> nn.Module:
        return self.conv3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, in_channels, H, W); s = stride, taken by conv1 or conv2 (stride_at); E = expansion
        pre = self.bn1(x)
        pre = self.relu(pre)  # the pre-activated input: (N, in_channels, H, W)
        out = self.conv1(pre)  # (N, planes, H, W), or (N, planes, H/s, W/s) when conv1 strides
        out = self.bn2(out)
        out = self.relu(out)
        out = self.conv2(out)  # (N, planes, H/s, W/s)
        out = self.bn3(out)
        out = self.relu(out)
        out = self.conv3(out)  # F(x): (N, E * planes, H/s, W/s)
        # a projection reads the pre-activated input, identity and zero-pad shortcuts read x itself
        shortcut = self.downsample(pre if isinstance(self.downsample, ProjectionShortcut) else x)
        out = self.add(out, shortcut)  # no ReLU after the add: the next block pre-activates its input
        return out


BLOCKS = (BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck)
