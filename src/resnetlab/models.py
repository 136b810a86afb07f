"""The ResNet model zoo: a literal registry of frozen specs and ``create_model``.

ImageNet models keep torchvision's parameter names (``conv1``, ``bn1``, ``layer1..4``, ``downsample.0/1``,
``fc``) so its checkpoints load with ``strict=True``. CIFAR models are the paper's ResNet-(6n+2): a 3x3
stem with 16 filters and three stages of 16-32-64 filters.

A variant is an option, not a name: ``create_model("resnet56", shortcut="none")`` is the plain-56 twin.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import zlib
from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import nn

from .blocks import (BLOCKS, SHORTCUTS, STRIDE_AT, TRANSITIONS, ZERO_PADS, BasicBlock, Bottleneck, PreActBasicBlock,
                     PreActBottleneck, _check_choice)


@dataclass(frozen=True)
class ModelSpec:
    """What a registered name means: the architecture and its defaults."""

    name: str
    family: str  # "imagenet": 7x7 stem + max-pool, 4 stages; "cifar": 3x3 stem, 3 stages
    block: str  # "basic" or "bottleneck"
    layers: tuple[int, ...]  # blocks per stage
    widths: tuple[int, ...]  # planes per stage (bottleneck output is 4x this)
    shortcut: str = "B"
    preact: bool = False
    stride_at: str = "3x3"
    num_classes: int = 1000
    image_size: int = 224

    @property
    def depth(self) -> int:
        per_block = 2 if self.block == "basic" else 3
        return per_block * sum(self.layers) + 2


# Sanity bounds checked before anything is allocated: a recorded config (a checkpoint's, a file's) is input.
MAX_WIDTH, MAX_CLASSES, MAX_IN_CHANNELS, MAX_DEPTH = 4096, 100_000, 64, 2000


@dataclass(frozen=True)
class ModelConfig:
    """Which network to build: a registered name and the options that vary it, declared here only (every
    command's config nests one). ``None`` means the named model's own default (e.g. option A for CIFAR)."""

    name: str = "resnet20"
    """model name: resnet18/34/50/101/152, resnet20/32/44/56/110/1202 or any resnet<6n+2>, preact-resnet110/164/1001"""
    shortcut: Optional[Literal[SHORTCUTS]] = None
    """shortcut option: A (zero-pad identity), B (projection where shapes change), C (projection everywhere), none (the plain net); default: the model's"""
    transition: Optional[Literal[TRANSITIONS]] = None
    """shortcut where the shape changes: zero-pad (A's), projection (B's), avgpool-projection (ResNet-D) or
    none; default: as the shortcut option says"""
    stride_at: Optional[Literal[STRIDE_AT]] = None
    """bottleneck stride on the 3x3 (torchvision v1.5) or on the first 1x1 (the paper); default: the model's"""
    preact: Optional[bool] = None
    """pre-activation blocks (He et al. 2016); default: the model's"""
    zero_pad: Literal[ZERO_PADS] = "split"
    """option A channel padding: split (akamaster) or end (fb.resnet.torch)"""
    zero_init_residual: bool = False
    """zero the last BN (pre-activation: the last conv) of every residual branch"""
    shortcut_scale: float = 1.0
    """constant scaling of the shortcut (Identity Mappings, Sec. 3.1)"""
    num_classes: Optional[int] = None
    """classifier outputs; default: the model's (or the dataset's, when training)"""
    width: Optional[int] = None
    """planes of the first stage, later stages double it; default: the model's"""
    in_channels: int = 3
    """input channels"""
    seed: Optional[int] = None
    """seeds every parameter by its name, so twins share initial weights bit for bit; default: random (train: the run's seed)"""

    def __post_init__(self):
        get_spec(self.name)  # an unknown name or depth fails here, before anything is built
        choices = (("shortcut option", self.shortcut, SHORTCUTS), ("transition", self.transition, TRANSITIONS),
                   ("stride_at", self.stride_at, STRIDE_AT))
        for what, value, valid in choices:
            if value is not None:
                _check_choice(what, value, valid)
        _check_choice("zero_pad", self.zero_pad, ZERO_PADS)
        for what, most in (("num_classes", MAX_CLASSES), ("width", MAX_WIDTH), ("in_channels", MAX_IN_CHANNELS)):
            value = getattr(self, what)
            if (value is not None or what == "in_channels") and (
                    not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most):
                raise ValueError(f"{what} must be an integer from 1 to {most}, got {value!r}")
        for what in ("preact", "zero_init_residual"):  # preact may be None: "the model's own"
            value = getattr(self, what)
            if (value is not None or what == "zero_init_residual") and not isinstance(value, bool):
                raise ValueError(f"{what} must be True or False, got {value!r}")
        if isinstance(self.shortcut_scale, bool) or not isinstance(self.shortcut_scale, (int, float)) \
                or not math.isfinite(self.shortcut_scale):
            raise ValueError(f"shortcut_scale must be a finite number, got {self.shortcut_scale!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0):
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")

    @property
    def spec(self) -> "ModelSpec":
        return get_spec(self.name)

    def architecture(self) -> dict:
        """Every choice that shapes the network's function (the class count, seed and initialisation aside),
        the named model's defaults filled in: equal architectures build the same network."""
        spec = self.spec
        shortcut = self.shortcut or spec.shortcut
        implied = {"A": "zero-pad", "B": "projection", "C": "projection", "none": "none"}[shortcut]
        return {"name": spec.name, "shortcut": shortcut, "transition": self.transition or implied,
                "preact": spec.preact if self.preact is None else self.preact,
                "stride_at": (self.stride_at or spec.stride_at) if spec.block == "bottleneck" else None,
                "width": self.width or spec.widths[0], "zero_pad": self.zero_pad,
                "shortcut_scale": float(self.shortcut_scale), "in_channels": self.in_channels}

    def to_dict(self) -> dict:
        """The fields that differ from "not set", with the name: what a checkpoint records."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None and k != "seed"}

    @classmethod
    def from_dict(cls, data: dict, where: str = "model config") -> "ModelConfig":
        """Build from a recorded dict; unknown keys are a ``ValueError`` listing the valid ones."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a mapping of model options, got {type(data).__name__}")
        unknown = sorted(set(data) - set(OPTION_NAMES))
        if unknown:
            raise ValueError(f"{where}: unknown model option(s) {', '.join(map(str, unknown))}; "
                             f"valid: {', '.join(OPTION_NAMES)}")
        try:
            return cls(**data)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None


OPTION_NAMES = tuple(f.name for f in dataclasses.fields(ModelConfig))


_IMAGENET = dict(family="imagenet", widths=(64, 128, 256, 512), shortcut="B", num_classes=1000, image_size=224)
_CIFAR = dict(family="cifar", widths=(16, 32, 64), num_classes=10, image_size=32)


def _cifar(depth: int) -> ModelSpec:
    n = (depth - 2) // 6
    return ModelSpec(f"resnet{depth}", block="basic", layers=(n, n, n), shortcut="A", **_CIFAR)


def _preact_cifar(depth: int, block: str) -> ModelSpec:
    n = (depth - 2) // (6 if block == "basic" else 9)
    return ModelSpec(f"preact-resnet{depth}", block=block, layers=(n, n, n), shortcut="B", preact=True, **_CIFAR)


REGISTRY: dict[str, ModelSpec] = {s.name: s for s in (
    ModelSpec("resnet18", block="basic", layers=(2, 2, 2, 2), **_IMAGENET),
    ModelSpec("resnet34", block="basic", layers=(3, 4, 6, 3), **_IMAGENET),
    ModelSpec("resnet50", block="bottleneck", layers=(3, 4, 6, 3), **_IMAGENET),
    ModelSpec("resnet101", block="bottleneck", layers=(3, 4, 23, 3), **_IMAGENET),
    ModelSpec("resnet152", block="bottleneck", layers=(3, 8, 36, 3), **_IMAGENET),
    _cifar(20), _cifar(32), _cifar(44), _cifar(56), _cifar(110), _cifar(1202),
    _preact_cifar(110, "basic"), _preact_cifar(164, "bottleneck"), _preact_cifar(1001, "bottleneck"),
)}


def list_models() -> list[str]:
    """Registered model names. Any ``resnet{6n+2}`` / ``preact-resnet{9n+2}`` is accepted as well."""
    return list(REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The spec for ``name``; CIFAR depths outside the registry are built on demand (6n+2 / 9n+2)."""
    if not isinstance(name, str):
        raise ValueError(f"model name must be a string, got {name!r}")
    key = name.strip().lower().replace("_", "-")
    if key in REGISTRY:
        return REGISTRY[key]
    m = re.fullmatch(r"(preact-)?resnet-?(\d+)", key)
    if m:
        depth = int(m.group(2))
        if depth > MAX_DEPTH:
            raise ValueError(f"{name!r}: depth {depth} is over the limit of {MAX_DEPTH}")
        if m.group(1):
            if depth >= 11 and (depth - 2) % 9 == 0:
                return _preact_cifar(depth, "bottleneck")
            raise ValueError(f"{name!r}: a pre-activation CIFAR ResNet needs depth 9n+2 (bottleneck), "
                             f"e.g. 164 or 1001, or one of {', '.join(list_models())}")
        if depth >= 8 and (depth - 2) % 6 == 0:
            return _cifar(depth)
        raise ValueError(f"{name!r}: a CIFAR ResNet needs depth 6n+2 (8, 14, 20, 26, 32, ...), and the "
                         f"ImageNet depths are 18, 34, 50, 101, 152; registered: {', '.join(list_models())}")
    raise ValueError(f"unknown model {name!r}; valid: {', '.join(list_models())} "
                     f"(or resnet<6n+2> / preact-resnet<9n+2> for other CIFAR depths)")


class ResNet(nn.Module):
    """A residual (or, with ``shortcut="none"``, plain) network; ``spec`` and ``options`` record how it was
    made, ``stages`` lists ``layer1..layerK``."""

    def __init__(self, spec: ModelSpec, options: ModelConfig):
        super().__init__()
        self.spec, self.options = spec, options
        self.preact = spec.preact if options.preact is None else options.preact
        self.shortcut = spec.shortcut if options.shortcut is None else options.shortcut
        self.stride_at = spec.stride_at if options.stride_at is None else options.stride_at
        self.num_classes = spec.num_classes if options.num_classes is None else options.num_classes
        widths = spec.widths if options.width is None else tuple(options.width * 2 ** i for i in range(len(spec.widths)))
        block = {("basic", False): BasicBlock, ("bottleneck", False): Bottleneck,
                 ("basic", True): PreActBasicBlock, ("bottleneck", True): PreActBottleneck}[(spec.block, self.preact)]
        stem_width = widths[0]

        # Stem. ImageNet: 7x7/2 conv + 3x3/2 max-pool; CIFAR: 3x3 conv. A pre-activated CIFAR net has no
        # BN-ReLU here: the first block pre-activates its input.
        kernel, stride, padding = (7, 2, 3) if spec.family == "imagenet" else (3, 1, 1)
        self.conv1 = nn.Conv2d(options.in_channels, stem_width, kernel, stride, padding, bias=False)
        self.stem_norm = not (self.preact and spec.family == "cifar")
        if self.stem_norm:
            self.bn1 = nn.BatchNorm2d(stem_width)
            self.relu = nn.ReLU()
        if spec.family == "imagenet":
            self.maxpool = nn.MaxPool2d(3, 2, 1)

        kwargs = dict(shortcut=self.shortcut, zero_pad=options.zero_pad, shortcut_scale=options.shortcut_scale,
                      transition=options.transition)
        if spec.block == "bottleneck":
            kwargs["stride_at"] = self.stride_at
        in_ch = stem_width
        self.stage_names = [f"layer{i + 1}" for i in range(len(spec.layers))]
        for i, (n, planes) in enumerate(zip(spec.layers, widths)):
            blocks = []
            for j in range(n):  # the first block of every later stage halves the resolution
                blocks.append(block(in_ch, planes, 2 if i > 0 and j == 0 else 1, **kwargs))
                in_ch = planes * block.expansion
            setattr(self, self.stage_names[i], nn.Sequential(*blocks))
        if self.preact:  # the last block's output has not been normalised yet
            self.final_bn = nn.BatchNorm2d(in_ch)
            self.final_relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, self.num_classes)

    @property
    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, n) for n in self.stage_names]

    def blocks(self) -> list[tuple[str, nn.Module]]:
        """``[("layer1.0", block), ...]`` in forward order."""
        return [(f"{s}.{j}", b) for s in self.stage_names for j, b in enumerate(getattr(self, s))]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, 3, H, W)
        x = self.conv1(x)  # ImageNet: (N, 64, H/2, W/2); CIFAR: (N, 16, H, W)
        if self.stem_norm:
            x = self.bn1(x)
            x = self.relu(x)
        if self.spec.family == "imagenet":
            x = self.maxpool(x)  # (N, 64, H/4, W/4)
        for stage in self.stages:
            x = stage(x)  # each later stage halves H and W and doubles the width
        if self.preact:  # the last block's add is not normalised yet
            x = self.final_bn(x)
            x = self.final_relu(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)  # (N, C, h, w)
        x = torch.flatten(self.avgpool(x), 1)  # (N, C)
        return self.fc(x)  # (N, num_classes)


def named_generator(seed: int, name: str) -> torch.Generator:
    """A CPU generator seeded by ``seed`` and ``name``."""
    # Seeding each tensor by its own name (not by creation order) is what makes twins match: a parameter
    # shared by two shortcut options has the same name in both, whatever extra modules either has.
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2 ** 63))
    return g


@torch.no_grad()
def init_weights(model: nn.Module, seed: int, zero_init_residual: bool = False) -> None:
    """He-normal (fan_out) convolutions, unit/zero BN, PyTorch's default uniform for the classifier."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
            m.weight.normal_(0.0, math.sqrt(2.0 / fan_out), generator=named_generator(seed, name + ".weight"))
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.fill_(1.0)
            m.bias.zero_()
            m.reset_running_stats()
        elif isinstance(m, nn.Linear):
            bound = 1.0 / math.sqrt(m.in_features)
            m.weight.uniform_(-bound, bound, generator=named_generator(seed, name + ".weight"))
            m.bias.uniform_(-bound, bound, generator=named_generator(seed, name + ".bias"))
    if zero_init_residual:
        for m in model.modules():
            if isinstance(m, BLOCKS):
                m.last_residual_layer().weight.zero_()


def create_model(config: ModelConfig | str = "resnet20", **options) -> ResNet:
    """Build a model from a :class:`ModelConfig`, or from a name and options (its fields).

    >>> create_model("resnet20", shortcut="B", seed=0)  # doctest: +SKIP
    >>> create_model(ModelConfig("resnet56", shortcut="none"))  # doctest: +SKIP
    """
    if isinstance(config, ModelConfig):
        config = dataclasses.replace(config, **options) if options else config
    elif isinstance(config, str):
        config = ModelConfig.from_dict({"name": config, **options}, where="create_model")
    else:
        raise ValueError(f"create_model takes a ModelConfig or a model name, got {config!r}")
    model = ResNet(config.spec, config)
    seed = config.seed if config.seed is not None else int(torch.randint(0, 2 ** 62, (1,)).item())
    init_weights(model, seed, config.zero_init_residual)
    return model


def model_config(model: ResNet) -> dict:
    """``{"name": ..., **options}``: what :func:`create_model` needs to build this model again."""
    return model.options.to_dict()


@contextlib.contextmanager
def in_mode(model: nn.Module, train: bool = False):
    """``model`` in eval (or train) mode; on exit every module's mode is restored and, after train mode,
    every buffer (BN's running statistics) too."""
    modes = [(m, m.training) for m in model.modules()]
    saved = {k: v.detach().clone() for k, v in model.named_buffers()} if train else {}
    model.train(train)
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode
        buffers = dict(model.named_buffers())
        with torch.no_grad():
            for k, v in saved.items():
                buffers[k].copy_(v)


def describe(model: nn.Module) -> str:
    """A short label: the registered name and the options that shape the network."""
    spec = getattr(model, "spec", None)
    if spec is None:
        return type(model).__name__
    o = model.options
    opts = [f"shortcut={model.shortcut}"] + [text for shown, text in (
        (o.transition is not None, f"transition={o.transition}"),
        (spec.block == "bottleneck", f"stride_at={model.stride_at}"),
        (model.preact != spec.preact or model.preact, "preact" if model.preact else "post-act"),
        (o.width is not None and o.width != spec.widths[0], f"width={o.width}"),
        (model.num_classes != spec.num_classes, f"num_classes={model.num_classes}"),
        (o.in_channels != 3, f"in_channels={o.in_channels}"),
        (model.shortcut == "A" and o.zero_pad != "split", f"zero_pad={o.zero_pad}"),
        (o.shortcut_scale != 1.0, f"shortcut_scale={o.shortcut_scale:g}")) if shown]
    return f"{spec.name} ({', '.join(opts)})"


def device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
