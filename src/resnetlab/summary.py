"""The shape inspector: one row per layer or residual block, with shapes, kernels, shortcuts, params, MACs.

:func:`summarize` runs one forward pass with hooks and records, in forward order, the stem convolution
(with its BN and ReLU), the max-pool, every residual block, the final BN of a pre-activated net, the
average pool and the classifier. :func:`diff` compares two models row by row and parameter by parameter.

By default the forward pass runs on PyTorch's ``meta`` device: tensors there have shapes but no data, so
the pass costs no arithmetic and no memory (ResNet-152 at 224x224 in about a second) and never touches
the model's own weights. ``shape_only=False`` runs a real forward pass on a zero input instead.

Multiply-adds (MACs) are counted per image for convolutions (``Cout*Hout*Wout * Cin/groups * kh*kw``)
and linear layers (``in * out``) only, the convention of torchvision's model table. BatchNorm (which
folds into the preceding convolution at inference), ReLU, the residual additions and the pooling layers
are not counted: at one operation per element they would add 0.35% (ResNet-18) to 1.2% (ResNet-20).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import re
import sys
from dataclasses import dataclass, field

import torch
from torch import nn

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
    shortcut: str = ""  # blocks only: "identity" | "zero-pad" | "projection" | "none"
    params: int = 0
    macs: int = 0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["input_shape"], d["output_shape"] = list(self.input_shape), list(self.output_shape)
        return d


def human(n: int | float) -> str:
    """``11689512 -> "11.7M"``, ``1814073344 -> "1.81G"``, ``464 -> "464"`` (three significant digits)."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:g}" if isinstance(n, float) else str(n)


def _shape(shape) -> str:
    return "x".join(map(str, shape))


def _table(headers, rows, right=(), markdown=False) -> str:
    """Aligned text table (or a Markdown table); ``right`` holds the indices of right-aligned columns."""
    cells = [list(map(str, headers))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def fmt(r):
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        return ("| " + " | ".join(parts) + " |") if markdown else "  ".join(parts).rstrip()

    lines = [fmt(cells[0])]
    if markdown:
        lines.append("|" + "|".join(("-" * (w + 1) + ":") if i in right else ("-" * (w + 2))
                                    for i, w in enumerate(widths)) + "|")
    else:
        lines.append("  ".join("-" * w for w in widths))
    lines += [fmt(r) for r in cells[1:]]
    return "\n".join(lines)


class _Report:
    """What :class:`Summary` and :class:`Diff` share: JSON, a format by name, and ``str()`` as text.
    Subclasses define ``to_text``, ``to_markdown`` and ``to_dict``."""

    def to_json(self, indent: int | None = 2) -> str:
        return _dumps(self.to_dict(), indent)

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

    def _cells(self):
        return [[r.name, r.type, _shape(r.input_shape), _shape(r.output_shape), r.kernels,
                 "" if r.stride is None else r.stride, r.shortcut, human(r.params) if r.params else "",
                 human(r.macs) if r.macs else ""] for r in self.rows]

    def _headline(self) -> str:
        return (f"{self.model}, input {_shape(self.input_shape)}: {self.total_params:,} parameters "
                f"({human(self.total_params)}), {self.total_macs:,} multiply-adds per image "
                f"({human(self.total_macs)} MACs)")

    def to_text(self) -> str:
        cells = self._cells() + [["total", "", "", "", "", "", "", human(self.total_params),
                                  human(self.total_macs)]]
        body = _table(COLUMNS, cells, right=(5, 7, 8))
        lines = [self._headline(), "", body]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_markdown(self) -> str:
        cells = self._cells() + [["**total**", "", "", "", "", "", "", f"**{human(self.total_params)}**",
                                  f"**{human(self.total_macs)}**"]]
        lines = [f"**{self._headline()}**", "", _table(COLUMNS, cells, right=(5, 7, 8), markdown=True)]
        lines += [f"\n*Note: {n}*" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"model": self.model, "config": self.config, "input_shape": list(self.input_shape),
                "rows": [r.to_dict() for r in self.rows], "total_params": self.total_params,
                "total_macs": self.total_macs, "macs_counted": "conv + linear multiply-adds per image",
                "notes": list(self.notes)}

def _dumps(d: dict, indent: int | None) -> str:
    """JSON with short lists of numbers (shapes) kept on one line."""
    text = json.dumps(d, indent=indent)
    if indent is None:
        return text
    return re.sub(r"\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]", lambda m: "[" + re.sub(r",\s*", ", ", m.group(1)) + "]", text)




# --------------------------------------------------------------------------------------------------------
# the forward pass


def describe(model: nn.Module) -> str:
    """A short label: the registered name and the options that shape the network."""
    spec = getattr(model, "spec", None)
    if spec is None:
        return type(model).__name__
    opts = [f"shortcut={model.shortcut}"]
    if spec.block == "bottleneck":
        opts.append(f"stride_at={model.stride_at}")
    if model.preact != spec.preact or model.preact:
        opts.append("preact" if model.preact else "post-act")
    o = model.options
    if o.width is not None and o.width != spec.widths[0]:
        opts.append(f"width={o.width}")
    if model.num_classes != spec.num_classes:
        opts.append(f"num_classes={model.num_classes}")
    if o.in_channels != 3:
        opts.append(f"in_channels={o.in_channels}")
    if model.shortcut == "A" and o.zero_pad != "split":
        opts.append(f"zero_pad={o.zero_pad}")
    if o.shortcut_scale != 1.0:
        opts.append(f"shortcut_scale={o.shortcut_scale:g}")
    return f"{spec.name} ({', '.join(opts)})"


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


def _first_conv(model: nn.Module):
    return next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), (None, None))


def _kernel(conv: nn.Conv2d) -> str:
    kh, kw = conv.kernel_size
    s = f"{kh}x{kw},{conv.out_channels}"
    return s + (f",g{conv.groups}" if conv.groups > 1 else "")


def _block_kernels(block: nn.Module) -> str:
    convs = [m for n, m in block.named_modules() if isinstance(m, nn.Conv2d) and not n.startswith("downsample")]
    return " / ".join(_kernel(c) for c in convs)


def _stride(m: nn.Module) -> int | None:
    s = getattr(m, "stride", None)
    if isinstance(s, (tuple, list)):
        return int(s[0]) if len(set(s)) == 1 else None
    return int(s) if isinstance(s, int) else None


def _macs(m: nn.Module, out: torch.Tensor) -> int:
    """Multiply-adds per image of one convolution or linear layer."""
    per_image = out.numel() // max(out.shape[0], 1)
    if isinstance(m, nn.Conv2d):
        kh, kw = m.kernel_size
        return per_image * (m.in_channels // m.groups) * kh * kw
    if isinstance(m, nn.Linear):
        return per_image * m.in_features
    return 0


def _first_tensor(x):
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)):
        for v in x:
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


def _forward(model: nn.Module, shape: tuple[int, ...], shape_only: bool):
    """One no-grad eval-mode forward pass on a zero input; the model's mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            params = dict(model.named_parameters())
            device = next(iter(params.values())).device if params else torch.device("cpu")
            if shape_only or device.type == "meta":
                tensors = {**params, **dict(model.named_buffers())}
                meta = {k: torch.empty_like(v, device="meta") for k, v in tensors.items()}
                x = torch.zeros(shape, device="meta")
                return torch.func.functional_call(model, meta, (x,))
            return model(torch.zeros(shape, device=device))
    finally:
        model.train(was_training)


def _accepts(model: nn.Module, shape) -> bool:
    try:
        _forward(model, shape, shape_only=True)
        return True
    except RuntimeError:
        return False


def _smallest_input(model: nn.Module, channels: int, start: int, limit: int = 1 << 14) -> int | None:
    """The smallest square input size >= ``start`` that the model accepts (shape-only passes)."""
    lo, hi = start, start
    while not _accepts(model, (1, channels, hi, hi)):
        lo, hi = hi, hi * 2
        if hi > limit:
            return None
    while hi - lo > 1:  # lo fails (or is start), hi passes
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _accepts(model, (1, channels, mid, mid)) else (mid, hi)
    return hi if not _accepts(model, (1, channels, lo, lo)) else lo


def _size(image_size, model) -> tuple[int, int]:
    if image_size is None:
        spec = getattr(model, "spec", None)
        if spec is None:
            raise ValueError(f"image_size is required for a {type(model).__name__} (it has no .spec)")
        image_size = spec.image_size
    hw = tuple(image_size) if isinstance(image_size, (tuple, list)) else (image_size, image_size)
    if len(hw) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in hw):
        raise ValueError(f"image_size must be an integer or a pair (H, W) of integers, got {image_size!r}")
    if min(hw) < 1:
        raise ValueError(f"image size must be at least 1x1, got {hw[0]}x{hw[1]}")
    return hw


def summarize(model: nn.Module, image_size: int | tuple[int, int] | None = None, batch: int = 1, *,
              in_channels: int | None = None, shape_only: bool = True) -> Summary:
    """Run one forward pass on a zero input of shape ``(batch, in_channels, H, W)`` and tabulate it.

    ``image_size`` defaults to ``model.spec.image_size`` (224 ImageNet, 32 CIFAR); any size the model
    accepts works. ``in_channels`` defaults to what the first convolution takes; a different value is
    an error. Raises ``ValueError`` for an input that is too small (naming the layer where it fails and
    the smallest size that works) or has the wrong number of channels.
    """
    from .weights import unwrap
    model = unwrap(model)
    label = describe(model)
    h, w = _size(image_size, model)
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    conv_name, conv = _first_conv(model)
    expected = conv.in_channels if conv is not None else None
    if in_channels is None:
        in_channels = expected if expected is not None else 3
    elif expected is not None and in_channels != expected:
        raise ValueError(f"{label} takes {expected}-channel input (its first convolution {conv_name} has "
                         f"in_channels={expected}), got {in_channels} channels")
    shape = (batch, in_channels, h, w)

    units = _units(model)
    owner = {}  # every module -> the unit (row) it belongs to
    for uname, unit in units.items():
        for m in unit.modules():
            owner.setdefault(m, uname)
    names = {m: n for n, m in model.named_modules()}
    unit_name = {m: n for n, m in units.items()}
    records, pending_macs, stack, handles = [], {}, [], []

    def pre_hook(m, args):
        stack.append(m)

    def post_hook(m, args, out):
        if stack and stack[-1] is m:
            stack.pop()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m in owner and isinstance(out, torch.Tensor):
            u = owner[m]
            pending_macs[u] = pending_macs.get(u, 0) + _macs(m, out)
        uname = unit_name.get(m)
        if uname is not None:
            x, y = _first_tensor(args), _first_tensor(out)
            if x is not None and y is not None:
                records.append((uname, m, tuple(x.shape), tuple(y.shape), pending_macs.pop(uname, 0)))

    for m in model.modules():
        handles.append(m.register_forward_pre_hook(pre_hook))
        handles.append(m.register_forward_hook(post_hook))
    on_meta = any(p.is_meta for p in model.parameters())
    try:
        try:
            _forward(model, shape, shape_only)
        except (RuntimeError, NotImplementedError):
            if not shape_only or on_meta:
                raise
            # Meta tensors have no values: an op without a meta kernel, or code that reads a value
            # (``.item()``), fails there. The real forward pass decides.
            for partial in (stack, records, pending_macs):
                partial.clear()
            _forward(model, shape, shape_only=False)
    except (RuntimeError, NotImplementedError) as e:
        failing = stack[-1] if stack else None
        where = f"layer {names.get(failing)!r} ({type(failing).__name__})" if failing is not None \
            else "the forward pass"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        low = first.lower()
        if any(s in low for s in ("too small", "can't be greater", "output size", "non-positive", "zero")):
            for hd in handles:
                hd.remove()
            handles.clear()
            smallest = _smallest_input(model, in_channels, max(h, w) + 1)
            hint = f"; the smallest square input it accepts is {smallest}x{smallest}" if smallest else ""
            raise ValueError(f"input {h}x{w} is too small for {label}: the feature map runs out at "
                             f"{where} ({first}){hint}") from None
        if "channel" in low:
            raise ValueError(f"{label} cannot take a {in_channels}-channel input: {where} fails "
                             f"({first})") from None
        raise ValueError(f"{label} fails on an input of shape {_shape(shape)} at {where}: {first}") from None
    finally:
        for hd in handles:
            hd.remove()

    rows, seen = [], set()
    for uname, m, x_shape, y_shape, macs in records:
        params = 0 if m in seen else sum(p.numel() for p in m.parameters())
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
            k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
            row.kernels, row.stride = f"{k}x{k} max", _stride(m)
        elif isinstance(m, (nn.AdaptiveAvgPool2d, nn.AvgPool2d)):
            row.kernels = "global avg" if y_shape[-2:] == (1, 1) else "avg"
        elif isinstance(m, nn.Linear):
            row.kernels = f"fc,{m.out_features}"
        rows.append(row)

    total_params = sum(p.numel() for p in model.parameters())
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
        from .models import model_config
        config = {**model_config(model), "shortcut": model.shortcut, "preact": model.preact}
        if model.spec.block == "bottleneck":
            config["stride_at"] = model.stride_at
    return Summary(label, shape, rows, total_params, sum(r.macs for r in rows), notes, config)


# --------------------------------------------------------------------------------------------------------
# diff

_COMPARED = ("type", "input_shape", "output_shape", "kernels", "stride", "shortcut", "params", "macs")


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
    def numel_only_a(self) -> int:
        """Number of parameter values in tensors that only model A has."""
        return self._numel(self.only_a)

    @property
    def numel_only_b(self) -> int:
        return self._numel(self.only_b)

    @staticmethod
    def _numel(params) -> int:
        n = 0
        for _, shape in params:
            k = 1
            for s in shape:
                k *= s
            n += k
        return n

    _FIELDS = (("type", "type", str), ("output", "output_shape", _shape), ("kernels", "kernels", str),
               ("stride", "stride", str), ("shortcut", "shortcut", str), ("params", "params", human),
               ("MACs", "macs", human))

    def _columns(self):
        """The fields shown: those that differ in some row, plus params and MACs always."""
        shown = []
        for title, attr, fmt in self._FIELDS:
            if title in ("params", "MACs") or any(ra is None or rb is None or getattr(ra, attr) != getattr(rb, attr)
                                                  for _, ra, rb in self.rows):
                shown.append((title, attr, fmt))
        return shown

    def _table(self, markdown=False) -> str:
        cols = self._columns()
        head = ["layer"] + [f"A {t}" for t, _, _ in cols] + [f"B {t}" for t, _, _ in cols]
        cells = [[name] + [("-" if r is None else fmt(getattr(r, attr))) for r in (ra, rb)  # all A, then B
                           for _, attr, fmt in cols] for name, ra, rb in self.rows]
        n = len(cols)
        right = [i + 1 for i, (t, _, _) in enumerate(cols) if t in ("stride", "params", "MACs")]
        right += [i + n for i in right]
        return _table(head, cells, right=tuple(right), markdown=markdown)

    @staticmethod
    def _groups(items, other) -> dict[str, int]:
        """Parameter counts grouped by the largest module that the other model lacks altogether."""
        prefixes = {".".join(n.split(".")[:i]) for n in other for i in range(1, n.count(".") + 1)}
        groups = {}
        for name, shape in items:
            parts = name.split(".")
            key = next((".".join(parts[:i]) for i in range(1, len(parts))
                        if ".".join(parts[:i]) not in prefixes), name)
            groups[key] = groups.get(key, 0) + Diff._numel([(name, shape)])
        return groups

    def _params_lines(self) -> list[str]:
        lines = []
        for title, items, other in (("only in A", self.only_a, self._names_b), ("only in B", self.only_b,
                                                                                  self._names_a)):
            if items:
                listed = ", ".join(f"{k} ({v:,})" for k, v in self._groups(items, other).items())
                lines.append(f"parameters {title}: {self._numel(items):,} in {len(items)} tensors: {listed}")
        for n, sa, sb in self.reshaped:
            lines.append(f"parameter {n}: {_shape(sa)} in A, {_shape(sb)} in B")
        if not lines:
            lines.append("parameters: same names and shapes")
        return lines

    def _totals(self) -> str:
        return (f"totals: params {self.a.total_params:,} -> {self.b.total_params:,} ({self.params_delta:+,}); "
                f"MACs {self.a.total_macs:,} -> {self.b.total_macs:,} ({self.macs_delta:+,})")

    def _head(self) -> str:
        return (f"A = {self.a.model}, input {_shape(self.a.input_shape)}\n"
                f"B = {self.b.model}, input {_shape(self.b.input_shape)}\n"
                f"{len(self.rows)} of {len(set(r.name for r in self.a.rows) | set(r.name for r in self.b.rows))}"
                f" rows differ")

    def to_text(self) -> str:
        parts = [self._head()]
        if self.rows:
            parts += ["", self._table()]
        return "\n".join(parts + [""] + self._params_lines() + [self._totals()])

    def to_markdown(self) -> str:
        parts = ["\n\n".join(f"**{line}**" for line in self._head().splitlines())]
        if self.rows:
            parts += ["", self._table(markdown=True)]
        return "\n".join(parts + [""] + [f"- {line}" for line in self._params_lines() + [self._totals()]])

    def to_dict(self) -> dict:
        return {"a": self.a.model, "b": self.b.model,
                "rows": [{"name": n, "a": ra.to_dict() if ra else None, "b": rb.to_dict() if rb else None}
                         for n, ra, rb in self.rows],
                "params_only_a": [{"name": n, "shape": list(s)} for n, s in self.only_a],
                "params_only_b": [{"name": n, "shape": list(s)} for n, s in self.only_b],
                "params_reshaped": [{"name": n, "a": list(sa), "b": list(sb)} for n, sa, sb in self.reshaped],
                "total_params": [self.a.total_params, self.b.total_params], "params_delta": self.params_delta,
                "total_macs": [self.a.total_macs, self.b.total_macs], "macs_delta": self.macs_delta}


def diff(model_a: nn.Module, model_b: nn.Module, image_size: int | tuple[int, int] | None = None) -> Diff:
    """Which rows (blocks and layers) and which parameter tensors differ between two models.

    Both run on the same input size: ``image_size``, or model A's default.
    """
    from .weights import unwrap
    model_a, model_b = unwrap(model_a), unwrap(model_b)
    size = _size(image_size, model_a)
    sa, sb = summarize(model_a, size), summarize(model_b, size)
    ra, rb = {r.name: r for r in sa.rows}, {r.name: r for r in sb.rows}
    order = [r.name for r in sa.rows] + [r.name for r in sb.rows if r.name not in ra]
    rows = [(n, ra.get(n), rb.get(n)) for n in order
            if n not in ra or n not in rb
            or any(getattr(ra[n], f) != getattr(rb[n], f) for f in _COMPARED)]
    pa = {n: tuple(p.shape) for n, p in model_a.named_parameters()}
    pb = {n: tuple(p.shape) for n, p in model_b.named_parameters()}
    return Diff(sa, sb, rows,
                only_a=[(n, s) for n, s in pa.items() if n not in pb],
                only_b=[(n, s) for n, s in pb.items() if n not in pa],
                reshaped=[(n, pa[n], pb[n]) for n in pa if n in pb and pa[n] != pb[n]],
                _names_a=list(pa), _names_b=list(pb))


# --------------------------------------------------------------------------------------------------------
# command line

_METAVARS = {"shortcut": "A|B|C|none", "stride_at": "3x3|1x1", "zero_pad": "split|end", "num_classes": "N",
             "width": "N", "in_channels": "N"}
_SKIP = ("seed", "zero_init_residual", "shortcut_scale")  # they change no shape, parameter count or MAC


def build_model(name: str, **options) -> nn.Module:
    """The architecture of ``create_model(name, **options)`` on the meta device: shapes only, no memory
    and no initialisation, so even ResNet-1202 builds at once. For :func:`summarize`, not for training."""
    from . import models
    spec = models.get_spec(name)
    unknown = sorted(set(options) - set(models.OPTION_NAMES))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}; valid: {', '.join(models.OPTION_NAMES)}")
    opts = models.ModelOptions(**options)
    models.validate_options(opts)
    with torch.device("meta"):
        return models.ResNet(spec, opts)


def _model_parser(prog: str, description: str) -> argparse.ArgumentParser:
    from . import config
    from .models import ModelOptions
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    config.add_arguments(parser, ModelOptions, skip=_SKIP)
    for action in parser._actions:
        if action.dest in _METAVARS:
            action.help = (action.help or "").replace("(default: None)", "(default: the model's own)")
            action.metavar = _METAVARS[action.dest]
    return parser


def _parse_model_spec(text: str, base: dict) -> tuple[str, dict]:
    """``"resnet20:shortcut=B,preact=true"`` -> ``("resnet20", base updated with those options)``."""
    from . import config
    from .models import ModelOptions
    name, _, rest = text.partition(":")
    values = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"--diff {text!r}: expected key=value after the model name, got {item!r}")
        values[key.strip().replace("-", "_")] = value.strip()
    if any(k in _SKIP for k in values):
        raise ValueError(f"--diff {text!r}: {', '.join(k for k in values if k in _SKIP)} does not change the "
                         f"summary")
    opts = config.from_dict(ModelOptions, {**base, **values}, where=f"--diff {text}")
    return name.strip(), {k: v for k, v in dataclasses.asdict(opts).items() if k not in _SKIP}


def main_summary(argv: list[str] | None = None) -> int:
    """``resnetlab summary MODEL [options]``: the layer-by-layer table of a model."""
    parser = _model_parser(
        "resnetlab summary",
        "Layer-by-layer table of a model: input and output shape of every layer and residual block,\n"
        "kernels, stride, shortcut kind, parameters and multiply-adds (conv + linear, per image).",
    )
    parser.epilog = ("diff: --diff MODEL_B[:key=value,...] compares MODEL (with its options) against MODEL_B,\n"
                     "which inherits MODEL's options and overrides those it names, e.g.\n"
                     "  resnetlab summary resnet20 --diff resnet20:shortcut=B\n"
                     "  resnetlab summary resnet50 --diff resnet50:stride_at=1x1")
    parser.add_argument("model", help="registered model name (resnetlab models), or resnet<6n+2>")
    parser.add_argument("--image-size", type=int, default=None, metavar="N",
                        help="input height and width (default: 224 ImageNet models, 32 CIFAR models)")
    parser.add_argument("--batch", type=int, default=1, metavar="N", help="batch size of the input (default: 1)")
    parser.add_argument("--format", choices=("text", "markdown", "json"), default="text",
                        help="output format (default: text)")
    parser.add_argument("--diff", metavar="MODEL_B[:key=value,...]", default=None,
                        help="compare with another model or option set (see below)")
    args = parser.parse_args(argv)
    from . import config
    from .models import ModelOptions
    opts = config.parse_config(ModelOptions, args)
    base = {k: v for k, v in dataclasses.asdict(opts).items() if k not in _SKIP}
    model = build_model(args.model, **base)
    if args.diff is not None:
        name_b, options_b = _parse_model_spec(args.diff, base)
        result = diff(model, build_model(name_b or args.model, **options_b), args.image_size)
    else:
        result = summarize(model, args.image_size, args.batch)
    print(result.format(args.format))
    return 0


@functools.lru_cache(maxsize=None)
def _default_params(name: str) -> int:
    from .models import count_parameters
    return count_parameters(build_model(name))


def list_rows() -> list[dict]:
    """One dict per registered model: name, depth, family, block, layers, shortcut, preact, params."""
    from .models import get_spec, list_models
    out = []
    for name in list_models():
        spec = get_spec(name)
        out.append({"name": name, "depth": spec.depth, "family": spec.family, "block": spec.block,
                    "layers": list(spec.layers), "shortcut": spec.shortcut, "preact": spec.preact,
                    "image_size": spec.image_size, "num_classes": spec.num_classes,
                    "params": _default_params(name)})
    return out


def main_models(argv: list[str] | None = None) -> int:
    """``resnetlab models``: the registered models with depth, family, block, default shortcut, params."""
    parser = argparse.ArgumentParser(prog="resnetlab models", description=main_models.__doc__)
    parser.add_argument("--format", choices=("text", "markdown", "json"), default="text",
                        help="output format (default: text)")
    args = parser.parse_args(argv)
    rows = list_rows()
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    head = ("model", "depth", "family", "block", "layers", "shortcut", "preact", "input", "params")
    cells = [[r["name"], r["depth"], r["family"], r["block"], "-".join(map(str, r["layers"])), r["shortcut"],
              "yes" if r["preact"] else "no", f"{r['image_size']}x{r['image_size']}", human(r["params"])]
             for r in rows]
    print(_table(head, cells, right=(1, 8), markdown=args.format == "markdown"))
    print("\nAlso accepted: resnet<6n+2> (CIFAR, e.g. resnet26) and preact-resnet<9n+2>. Options such as "
          "--shortcut or --preact change a model; see resnetlab summary --help.")
    return 0


def main(argv: list[str] | None = None) -> int:
    return main_summary(argv)


if __name__ == "__main__":
    sys.exit(main_summary())
