"""The shape inspector: one row per layer or residual block, with shapes, kernels, shortcuts, params, MACs.

:func:`summarize` runs one forward pass with hooks, by default on PyTorch's ``meta`` device (shapes, no
data: no arithmetic, no memory, the model's own tensors untouched), under ``FlopCounterMode``: a row's
multiply-adds are half the FLOPs the counter gives its module, which counts the convolutions and the
classifier only (torchvision's convention; docs/summary.md). :func:`diff` compares two models.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from typing import Literal, Optional

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from .config import Positional, from_strings, parse, to_dict as json_ready
from .io import format_table
from .models import (ModelConfig, ResNet, count_parameters, describe, device_of, get_spec, in_mode, list_models,
                     model_config)
from .weights import unwrap

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Identity)
_SHORT = {"BatchNorm2d": "BN", "BatchNorm1d": "BN", "GroupNorm": "GN", "LayerNorm": "LN"}
COLUMNS = ("layer", "type", "input", "output", "kernels", "stride", "shortcut", "params", "MACs")


@dataclass
class Row:
    """One layer or block of the forward pass. Shapes include the batch dimension; ``macs`` is per image."""

    name: str  # "conv1", "maxpool", "layer2.0", "final_bn", "avgpool", "fc"
    type: str  # "Conv2d+BN+ReLU", "MaxPool2d", "BasicBlock", "Bottleneck", ...
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    kernels: str = ""  # "3x3,32 / 3x3,32"; "1x1,64 / 3x3,64 / 1x1,256"; "3x3 max"; "fc,1000"
    stride: int | None = None
    shortcut: str = ""  # blocks only: identity | zero-pad | projection | avgpool-projection | none
    params: int = 0
    macs: int = 0


def human(n: int | float) -> str:
    """``11689512 -> "11.7M"``, ``1814073344 -> "1.81G"``, ``464 -> "464"`` (three significant digits)."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:g}" if isinstance(n, float) else str(n)


def _shape(shape) -> str:
    return "x".join(map(str, shape))


class _Report:
    """What :class:`Summary` and :class:`Diff` share; subclasses define ``to_text``, ``to_markdown``, ``to_dict``."""

    def to_json(self, indent: int | None = 2) -> str:
        """JSON with short lists of numbers (shapes) kept on one line."""
        text = json.dumps(self.to_dict(), indent=indent)
        return re.sub(r"\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]", lambda m: "[" + re.sub(r",\s*", ", ", m.group(1)) + "]", text)

    def format(self, fmt: str = "text") -> str:
        """``"text"``, ``"markdown"`` or ``"json"``."""
        writers = {"text": self.to_text, "markdown": self.to_markdown, "json": self.to_json}
        if fmt not in writers:
            raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(writers)}")
        return writers[fmt]()

    def __str__(self) -> str:
        return self.to_text()


@dataclass
class Summary(_Report):
    """The result of :func:`summarize`. ``str(summary)`` is the text table."""

    model: str  # a label such as "resnet20 (shortcut=A)"
    input_shape: tuple[int, ...]
    rows: list[Row]
    total_params: int  # equals count_parameters(model)
    total_macs: int  # per image, conv + linear
    notes: list[str] = field(default_factory=list)
    config: dict | None = None  # create_model(**config) rebuilds the model, when known

    def row(self, name: str) -> Row:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no row {name!r}; rows: {', '.join(r.name for r in self.rows)}")

    def _headline(self) -> str:
        return (f"{self.model}, input {_shape(self.input_shape)}: {self.total_params:,} parameters "
                f"({human(self.total_params)}), {self.total_macs:,} multiply-adds per image "
                f"({human(self.total_macs)} MACs)")

    def _table(self, markdown: bool) -> str:
        bold = "**" if markdown else ""
        cells = [[r.name, r.type, _shape(r.input_shape), _shape(r.output_shape), r.kernels,
                  "" if r.stride is None else r.stride, r.shortcut, human(r.params) if r.params else "",
                  human(r.macs) if r.macs else ""] for r in self.rows]
        cells.append([f"{bold}total{bold}", "", "", "", "", "", "", f"{bold}{human(self.total_params)}{bold}",
                      f"{bold}{human(self.total_macs)}{bold}"])
        return format_table(COLUMNS, cells, right=(5, 7, 8), markdown=markdown)

    def to_text(self) -> str:
        return "\n".join([self._headline(), "", self._table(False)] + [f"note: {n}" for n in self.notes])

    def to_markdown(self) -> str:
        return "\n".join([f"**{self._headline()}**", "", self._table(True)] + [f"\n*Note: {n}*" for n in self.notes])

    def to_dict(self) -> dict:
        return {"model": self.model, "config": self.config, "input_shape": list(self.input_shape),
                "rows": [json_ready(r) for r in self.rows], "total_params": self.total_params,
                "total_macs": self.total_macs, "macs_counted": "conv + linear multiply-adds per image",
                "notes": list(self.notes)}


# --------------------------------------------------------------------------------------- the forward pass

def _is_block(m: nn.Module) -> bool:
    return hasattr(m, "downsample") and hasattr(m, "shortcut_kind")


def _units(model: nn.Module) -> dict[str, nn.Module]:
    """The modules that get a row: residual blocks (whole) and leaf modules outside blocks."""
    units = {}

    def visit(prefix, module):
        children = list(module.named_children())
        if prefix and (_is_block(module) or not children):
            units[prefix] = module
            return
        for name, child in children:
            visit(f"{prefix}.{name}" if prefix else name, child)

    visit("", model)
    return units


def _kernel(conv: nn.Conv2d) -> str:
    return f"{_shape(conv.kernel_size)},{conv.out_channels}" + (f",g{conv.groups}" if conv.groups > 1 else "")


def _block_kernels(block: nn.Module) -> str:
    convs = [m for n, m in block.named_modules() if isinstance(m, nn.Conv2d) and not n.startswith("downsample")]
    return " / ".join(_kernel(c) for c in convs)


def _stride(m: nn.Conv2d | nn.MaxPool2d) -> int | None:
    s = _pair(m.stride)
    return int(s[0]) if len(set(s)) == 1 else None


def _first_tensor(x):
    """``x`` itself, or the first tensor of a (nested) tuple of a module's inputs or outputs."""
    if isinstance(x, (tuple, list)):
        return next((t for t in map(_first_tensor, x) if t is not None), None)
    return x if isinstance(x, torch.Tensor) else None


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _window(m: nn.Module) -> tuple[str, tuple[int, int]] | None:
    """A 2-D convolution's or pooling layer's sliding window, described, and the smallest input it fits:
    it spans ``dilation*(kernel-1)+1`` pixels of the input padded on both sides. (Ceil-mode pooling may run
    past the input: PyTorch's own check decides there.)"""
    if isinstance(m, nn.Conv2d) and m.padding != "same":
        kernel, dilation, what = m.kernel_size, m.dilation, "kernel"
        padding = (0, 0) if m.padding == "valid" else m.padding
    elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) and not m.ceil_mode:
        kernel, dilation, padding = (_pair(getattr(m, a, 1)) for a in ("kernel_size", "dilation", "padding"))
        what = "window"
    else:
        return None
    need = tuple(max(d * (k - 1) + 1 - 2 * p, 1) for k, d, p in zip(kernel, dilation, padding))
    extra = [f"dilation {_shape(dilation)}"] if max(dilation) > 1 else []
    extra += [f"padding {_shape(padding)}"] if max(padding) > 0 else []
    return f"{_shape(kernel)} {what}" + (f" ({', '.join(extra)})" if extra else ""), need


class _Trace:
    """One no-grad, eval-mode forward pass on a zero input under ``FlopCounterMode``, with hooks that
    record ``(name, module, input shape, output shape, MACs per image)`` for every row's module in forward
    order, refuse a window that no longer fits the feature map, and know the module running (``failing``)."""

    def __init__(self, model: nn.Module, units: dict[str, nn.Module], label: str, shape: tuple[int, ...]):
        self.model, self.label, self.shape = model, label, shape
        self.unit_name = {m: n for n, m in units.items()}
        self.names = {m: n for n, m in model.named_modules()}

    def run(self, meta: bool) -> None:
        self.records, self.stack, self.flops_seen = [], [], {}
        self.counter = FlopCounterMode(display=False)
        with contextlib.ExitStack() as hooks, in_mode(self.model), torch.no_grad(), self.counter:
            for m in self.model.modules():
                hooks.enter_context(m.register_forward_pre_hook(self._pre_hook))
                hooks.enter_context(m.register_forward_hook(self._post_hook))
            if meta:
                # meta stand-ins for every parameter and buffer: the model's own tensors stay as they are
                tensors = {**dict(self.model.named_parameters()), **dict(self.model.named_buffers())}
                stand_ins = {k: torch.empty_like(v, device="meta") for k, v in tensors.items()}
                functional_call(self.model, stand_ins, (torch.zeros(self.shape, device="meta"),))
            else:
                self.model(torch.zeros(self.shape, device=device_of(self.model)))

    @property
    def failing(self) -> str:
        m = self.stack[-1] if self.stack else None
        return f"layer {self.names.get(m)!r} ({type(m).__name__})" if m is not None else "the forward pass"

    def _pre_hook(self, m, args):
        self.stack.append(m)
        x, window = _first_tensor(args), _window(m)
        if x is None or window is None or x.dim() < 3:
            return
        what, need = window
        size = tuple(x.shape[-2:])
        if any(s < n for s, n in zip(size, need)):
            h, w = self.shape[-2:]
            raise ValueError(f"input {h}x{w} is too small for {self.label}: the feature map is {_shape(size)} "
                             f"when it reaches {self.failing}, whose {what} needs at least {_shape(need)}")

    def _post_hook(self, m, args, out):
        if self.stack and self.stack[-1] is m:
            self.stack.pop()
        name = self.unit_name.get(m)
        x, y = _first_tensor(args), _first_tensor(out)
        if name is None or x is None or y is None:
            return
        # FlopCounterMode names a module by the class name of the model, then the module's path
        flops = sum(self.counter.flop_counts.get(f"{type(self.model).__name__}.{name}", {}).values())
        macs = (flops - self.flops_seen.get(m, 0)) // (2 * self.shape[0])  # two FLOPs per multiply-add
        self.flops_seen[m] = flops
        self.records.append((name, m, tuple(x.shape), tuple(y.shape), macs))


def _size(image_size, model) -> tuple[int, int]:
    if image_size is None:
        spec = getattr(model, "spec", None)
        if spec is None:
            raise ValueError(f"image_size is required for a {type(model).__name__} (it has no .spec)")
        image_size = spec.image_size
    hw = _pair(image_size)
    if len(hw) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in hw):
        raise ValueError(f"image_size must be an integer or a pair (H, W) of integers, got {image_size!r}")
    if min(hw) < 1:
        raise ValueError(f"image size must be at least 1x1, got {hw[0]}x{hw[1]}")
    return hw


def summarize(model: nn.Module, image_size: int | tuple[int, int] | None = None, batch: int = 1, *,
              in_channels: int | None = None, shape_only: bool = True) -> Summary:
    """Run one forward pass on a zero input of shape ``(batch, in_channels, H, W)`` and tabulate it.

    ``image_size`` defaults to ``model.spec.image_size``; ``in_channels`` to what the first convolution
    takes. An input too small for a layer's window, of the wrong channel count, or any other failure of
    the forward pass is a ``ValueError`` naming the layer.
    """
    model = unwrap(model)
    label = describe(model)
    h, w = _size(image_size, model)
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    conv_name, conv = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), (None, None))
    if in_channels is None:
        in_channels = conv.in_channels if conv is not None else 3
    elif conv is not None and in_channels != conv.in_channels:
        raise ValueError(f"{label} takes {conv.in_channels}-channel input (its first convolution {conv_name} has "
                         f"in_channels={conv.in_channels}), got {in_channels} channels")
    shape = (batch, in_channels, h, w)

    trace = _Trace(model, _units(model), label, shape)
    on_meta = any(t.is_meta for t in model.parameters())
    try:
        try:
            trace.run(meta=shape_only or on_meta)
        except (RuntimeError, NotImplementedError):
            if not shape_only or on_meta:
                raise
            # Meta tensors have no values: an op without a meta kernel, or code that reads a value
            # (``.item()``), fails there. The real forward pass decides.
            trace.run(meta=False)
    except (RuntimeError, NotImplementedError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{label} fails on an input of shape {_shape(shape)} at {trace.failing}: "
                         f"{first}") from None

    rows, seen = [], set()
    for uname, m, x_shape, y_shape, macs in trace.records:
        params = 0 if m in seen else count_parameters(m)
        seen.add(m)
        prev = rows[-1] if rows else None
        kind = type(m).__name__
        # Fold a norm after a convolution, and an activation after a conv/norm, into that row: the
        # stem is one row "Conv2d+BN+ReLU", the pre-activated net's final "BN+ReLU" another.
        foldable = prev is not None and not prev.shortcut and prev.output_shape == x_shape and (
            (isinstance(m, _NORMS) and prev.type.split("+")[-1] == "Conv2d")
            or (isinstance(m, _ACTIVATIONS) and prev.type.split("+")[-1] in ("Conv2d", "BN", "GN", "LN")))
        if foldable:
            prev.type += "+" + _SHORT.get(kind, kind)
            prev.output_shape = y_shape
            prev.params += params
            prev.macs += macs
            continue
        row = Row(uname, _SHORT.get(kind, kind), x_shape, y_shape, params=params, macs=macs)
        if _is_block(m):
            row.kernels, row.stride, row.shortcut = _block_kernels(m), int(m.stride), m.shortcut_kind
        elif isinstance(m, nn.Conv2d):
            row.kernels, row.stride = _kernel(m), _stride(m)
        elif isinstance(m, nn.MaxPool2d):
            k = _pair(m.kernel_size)[0]
            row.kernels, row.stride = f"{k}x{k} max", _stride(m)
        elif isinstance(m, (nn.AdaptiveAvgPool2d, nn.AvgPool2d)):
            row.kernels = "global avg" if y_shape[-2:] == (1, 1) else "avg"
        elif isinstance(m, nn.Linear):
            row.kernels = f"fc,{m.out_features}"
        rows.append(row)

    total_params = count_parameters(model)
    notes = []
    unused = total_params - sum(r.params for r in rows)
    if unused:
        notes.append(f"{unused:,} parameters belong to modules the forward pass did not call")
    starved = [r.name for r in rows if (r.stride or 1) > 1 and tuple(r.input_shape[-2:]) == (1, 1)]
    if starved:
        notes.append(f"the feature map is already 1x1 when it reaches {', '.join(starved)}: "
                     f"{'its' if len(starved) == 1 else 'their'} stride has nothing left to subsample "
                     f"(the input is smaller than the network's total stride)")
    config = None
    if hasattr(model, "spec") and hasattr(model, "options"):
        config = {**model_config(model), "shortcut": model.shortcut, "preact": model.preact}
        if model.spec.block == "bottleneck":
            config["stride_at"] = model.stride_at
    return Summary(label, shape, rows, total_params, sum(r.macs for r in rows), notes, config)


# --------------------------------------------------------------------------------------------------- diff

@dataclass
class Diff(_Report):
    """Rows and parameter tensors that differ between two models (:func:`diff`)."""

    a: Summary
    b: Summary
    rows: list[tuple[str, Row | None, Row | None]]  # (name, row in a or None, row in b or None)
    only_a: list[tuple[str, tuple[int, ...]]]  # parameter tensors in a only: (name, shape)
    only_b: list[tuple[str, tuple[int, ...]]]
    reshaped: list[tuple[str, tuple[int, ...], tuple[int, ...]]]
    _names_a: list[str] = field(default_factory=list, repr=False)  # all parameter names of a and b
    _names_b: list[str] = field(default_factory=list, repr=False)

    @property
    def params_delta(self) -> int:
        return self.b.total_params - self.a.total_params

    @property
    def macs_delta(self) -> int:
        return self.b.total_macs - self.a.total_macs

    @property
    def numel_only_b(self) -> int:
        """Number of parameter values in tensors that only model B has."""
        return sum(math.prod(shape) for _, shape in self.only_b)

    _FIELDS = (("type", "type", str), ("output", "output_shape", _shape), ("kernels", "kernels", str),
               ("stride", "stride", str), ("shortcut", "shortcut", str), ("params", "params", human),
               ("MACs", "macs", human))

    def _table(self, markdown=False) -> str:
        # The fields shown: those that differ in some row, and params and MACs always.
        cols = [(title, attr, fmt) for title, attr, fmt in self._FIELDS if title in ("params", "MACs") or any(
            ra is None or rb is None or getattr(ra, attr) != getattr(rb, attr) for _, ra, rb in self.rows)]
        head = ["layer"] + [f"A {t}" for t, _, _ in cols] + [f"B {t}" for t, _, _ in cols]
        cells = [[name] + [("-" if r is None else fmt(getattr(r, attr))) for r in (ra, rb)  # all A, then B
                           for _, attr, fmt in cols] for name, ra, rb in self.rows]
        right = [i + 1 for i, (t, _, _) in enumerate(cols) if t in ("stride", "params", "MACs")]
        right += [i + len(cols) for i in right]  # the same columns of B
        return format_table(head, cells, right=tuple(right), markdown=markdown)

    @staticmethod
    def _groups(items, other) -> dict[str, int]:
        """Parameter counts grouped by the largest module that the other model lacks altogether."""
        prefixes = {".".join(n.split(".")[:i]) for n in other for i in range(1, n.count(".") + 1)}
        groups = {}
        for name, shape in items:
            parts = name.split(".")
            key = next((".".join(parts[:i]) for i in range(1, len(parts))
                        if ".".join(parts[:i]) not in prefixes), name)
            groups[key] = groups.get(key, 0) + math.prod(shape)
        return groups

    def _params_lines(self) -> list[str]:
        """The parameter tensors that differ, then the totals, one line each."""
        lines = []
        for title, items, other in (("only in A", self.only_a, self._names_b),
                                    ("only in B", self.only_b, self._names_a)):
            if items:
                total = sum(math.prod(shape) for _, shape in items)
                listed = ", ".join(f"{k} ({v:,})" for k, v in self._groups(items, other).items())
                lines.append(f"parameters {title}: {total:,} in {len(items)} tensors: {listed}")
        for n, sa, sb in self.reshaped:
            lines.append(f"parameter {n}: {_shape(sa)} in A, {_shape(sb)} in B")
        if not lines:
            lines.append("parameters: same names and shapes")
        return lines + [f"totals: params {self.a.total_params:,} -> {self.b.total_params:,} ({self.params_delta:+,}); "
                        f"MACs {self.a.total_macs:,} -> {self.b.total_macs:,} ({self.macs_delta:+,})"]

    def _head(self) -> str:
        return (f"A = {self.a.model}, input {_shape(self.a.input_shape)}\n"
                f"B = {self.b.model}, input {_shape(self.b.input_shape)}\n"
                f"{len(self.rows)} of {len({r.name for r in self.a.rows + self.b.rows})} rows differ")

    def to_text(self) -> str:
        table = ["", self._table()] if self.rows else []
        return "\n".join([self._head(), *table, "", *self._params_lines()])

    def to_markdown(self) -> str:
        head = "\n\n".join(f"**{line}**" for line in self._head().splitlines())
        table = ["", self._table(markdown=True)] if self.rows else []
        return "\n".join([head, *table, ""] + [f"- {line}" for line in self._params_lines()])

    def to_dict(self) -> dict:
        return {"a": self.a.model, "b": self.b.model,
                "rows": [{"name": n, "a": json_ready(ra) if ra else None, "b": json_ready(rb) if rb else None}
                         for n, ra, rb in self.rows],
                "params_only_a": [{"name": n, "shape": list(s)} for n, s in self.only_a],
                "params_only_b": [{"name": n, "shape": list(s)} for n, s in self.only_b],
                "params_reshaped": [{"name": n, "a": list(sa), "b": list(sb)} for n, sa, sb in self.reshaped],
                "total_params": [self.a.total_params, self.b.total_params], "params_delta": self.params_delta,
                "total_macs": [self.a.total_macs, self.b.total_macs], "macs_delta": self.macs_delta}


def diff(model_a: nn.Module, model_b: nn.Module, image_size: int | tuple[int, int] | None = None) -> Diff:
    """Which rows and parameter tensors differ between two models, both run on ``image_size`` (default: A's)."""
    model_a, model_b = unwrap(model_a), unwrap(model_b)
    size = _size(image_size, model_a)
    sa, sb = summarize(model_a, size), summarize(model_b, size)
    ra, rb = {r.name: r for r in sa.rows}, {r.name: r for r in sb.rows}
    order = [r.name for r in sa.rows] + [r.name for r in sb.rows if r.name not in ra]
    rows = [(n, ra.get(n), rb.get(n)) for n in order if n not in ra or n not in rb or ra[n] != rb[n]]
    pa = {n: tuple(p.shape) for n, p in model_a.named_parameters()}
    pb = {n: tuple(p.shape) for n, p in model_b.named_parameters()}
    return Diff(sa, sb, rows,
                only_a=[(n, s) for n, s in pa.items() if n not in pb],
                only_b=[(n, s) for n, s in pb.items() if n not in pa],
                reshaped=[(n, pa[n], pb[n]) for n in pa if n in pb and pa[n] != pb[n]],
                _names_a=list(pa), _names_b=list(pb))


# ------------------------------------------------------------------------------------------- command line

# Options that change no shape, parameter count or MAC: a --diff naming one compares nothing.
_NO_EFFECT = ("seed", "zero_init_residual", "shortcut_scale")


def build_model(config: ModelConfig | str, **options) -> nn.Module:
    """The architecture of ``create_model(config, **options)`` on the meta device: shapes only, no memory
    and no initialisation, so even ResNet-1202 builds at once. For :func:`summarize`, not for training."""
    if isinstance(config, str):
        config = ModelConfig.from_dict({"name": config, **options})
    elif options:
        config = dataclasses.replace(config, **options)
    with torch.device("meta"):
        return ResNet(config.spec, config)


def _parse_model_spec(text: str, base: ModelConfig) -> ModelConfig:
    """``"resnet20:shortcut=B,preact=true"`` -> ``base`` with that name and those options."""
    name, _, rest = text.partition(":")
    values = {"name": name.strip() or base.name}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"--diff {text!r}: expected key=value after the model name, got {item!r}")
        values[key.strip().replace("-", "_")] = value
    no_effect = [k for k in values if k in _NO_EFFECT]
    if no_effect:
        raise ValueError(f"--diff {text!r}: {', '.join(no_effect)} does not change the summary")
    return from_strings(ModelConfig, values, base, where=f"--diff {text}")


@dataclass(frozen=True)
class SummaryConfig:
    """Layer-by-layer table of a model: input and output shape of every layer and residual block, kernels,
    stride, shortcut kind, parameters and multiply-adds (conv + linear, per image).

    --diff MODEL_B[:key=value,...] compares MODEL (with its options) against MODEL_B, which inherits MODEL's
    options and overrides those it names, e.g. `resnetlab summary resnet20 --diff resnet20:shortcut=B`."""

    name: Positional[str] = ""
    """registered model name (resnetlab models), or resnet<6n+2>"""
    model: ModelConfig = ModelConfig()
    """the model's options (its name is the positional argument)"""
    image_size: Optional[int] = None
    """input height and width (default: 224 ImageNet models, 32 CIFAR models)"""
    batch: int = 1
    """batch size of the input"""
    format: Literal["text", "markdown", "json"] = "text"
    """output format"""
    diff: Optional[str] = None
    """MODEL_B[:key=value,...]: compare with another model or option set"""


def main_summary(argv: list[str] | None = None) -> int:
    """``resnetlab summary MODEL [options]``: the layer-by-layer table of a model."""
    cfg = parse(SummaryConfig, argv, prog="resnetlab summary")
    if not cfg.name:
        raise ValueError("give a model name: resnetlab summary MODEL (resnetlab models lists them)")
    base = dataclasses.replace(cfg.model, name=cfg.name)
    model = build_model(base)
    if cfg.diff is not None:
        result = diff(model, build_model(_parse_model_spec(cfg.diff, base)), cfg.image_size)
    else:
        result = summarize(model, cfg.image_size, cfg.batch)
    print(result.format(cfg.format))
    return 0


def list_rows() -> list[dict]:
    """One dict per registered model: name, depth, family, block, layers, shortcut, preact, params."""
    return [{"name": spec.name, "depth": spec.depth, "family": spec.family, "block": spec.block,
             "layers": list(spec.layers), "shortcut": spec.shortcut, "preact": spec.preact,
             "image_size": spec.image_size, "num_classes": spec.num_classes,
             "params": count_parameters(build_model(spec.name))} for spec in map(get_spec, list_models())]


@dataclass(frozen=True)
class ModelsConfig:
    """The registered models with depth, family, block, default shortcut and parameters."""

    format: Literal["text", "markdown", "json"] = "text"
    """output format"""


def main_models(argv: list[str] | None = None) -> int:
    """``resnetlab models``: the registered models with depth, family, block, default shortcut, params."""
    args = parse(ModelsConfig, argv, prog="resnetlab models")
    rows = list_rows()
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    head = ("model", "depth", "family", "block", "layers", "shortcut", "preact", "input", "params")
    cells = [[r["name"], r["depth"], r["family"], r["block"], "-".join(map(str, r["layers"])), r["shortcut"],
              "yes" if r["preact"] else "no", f"{r['image_size']}x{r['image_size']}", human(r["params"])] for r in rows]
    print(format_table(head, cells, right=(1, 8), markdown=args.format == "markdown"))
    print("\nAlso accepted: resnet<6n+2> (CIFAR, e.g. resnet26) and preact-resnet<9n+2>. Options such as "
          "--shortcut or --preact change a model; see resnetlab summary --help.")
    return 0

