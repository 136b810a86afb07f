"""Why do shortcuts work? Measurements on any model, fresh or trained (``resnetlab analyze``): how much goes
through the shortcut, how identity-like projections stay, gradient flow, lesions and the paper's Figure 7.
docs/analysis.md defines every number precisely.
"""
from __future__ import annotations

import contextlib
import functools
import math
import sys
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import BLOCKS, ProjectionShortcut
from .config import Positional, given_model, name_given, parse
from .io import format_table as io_format_table
from .io import progress, resolve_device, write_json
from .models import device_of, in_mode, model_config
from .plots import plot_results
from .sources import SourceOptions, labelled_batches, load_data, load_model, resolve_data, seeded_subset

ANALYSES = ("paths", "gradients", "responses")


def model_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``[(name, block), ...]`` in forward order: ``model.blocks()`` for a ResNet, else every block module
    found in ``model`` (a bare block is named ``"block"``)."""
    if hasattr(model, "blocks") and callable(model.blocks):
        return list(model.blocks())
    return [(name or "block", m) for name, m in model.named_modules() if isinstance(m, BLOCKS)]


def _batches(x) -> Iterator[torch.Tensor]:
    """A tensor, or an iterable of tensors or of ``(x, y)`` pairs, as a stream of input tensors."""
    for item in [x] if isinstance(x, torch.Tensor) else x:
        yield item[0] if isinstance(item, (tuple, list)) else item


@torch.no_grad()
def path_stats(model: nn.Module, x) -> list[dict]:
    """Per block, the residual branch ``F(x)`` against the (scaled) shortcut in eval mode on ``x`` (a batch, or
    an iterable of batches / ``(x, y)`` pairs): ``{"block", "kind", "ratio", "cosine", "ratio_batch",
    "branch_rms", "shortcut_rms", "samples"}`` (docs/analysis.md); plain blocks get ``None`` numbers."""
    blocks = model_blocks(model)
    acc = {name: {"ratio": 0.0, "cosine": 0.0, "f2": 0.0, "s2": 0.0, "n": 0, "numel": 0} for name, _ in blocks}

    def hook(name, module, inputs, output):
        branch, shortcut = inputs
        f = branch.flatten(1).double()
        s = (shortcut * module.scale).flatten(1).double()  # the add scales inside forward: report what is added
        fn_, sn_ = f.norm(dim=1), s.norm(dim=1)
        a = acc[name]
        a["ratio"] += (fn_ / sn_.clamp_min(1e-300)).sum().item()
        dot = (f * s).sum(dim=1)
        denom = fn_ * sn_
        a["cosine"] += torch.where(denom > 0, dot / denom.clamp_min(1e-300), torch.zeros_like(dot)).sum().item()
        a["f2"] += (fn_ ** 2).sum().item()
        a["s2"] += (sn_ ** 2).sum().item()
        a["n"] += f.shape[0]
        a["numel"] += f.numel()

    device = device_of(model)
    with contextlib.ExitStack() as hooks, in_mode(model):
        for name, block in blocks:
            if block.shortcut_kind != "none":
                hooks.enter_context(block.add.register_forward_hook(functools.partial(hook, name)))
        for xb in _batches(x):
            model(xb.to(device))
    rows = []
    for name, block in blocks:
        a = acc[name]
        row = {"block": name, "kind": block.shortcut_kind, "samples": a["n"]}
        if block.shortcut_kind == "none" or a["n"] == 0:
            row.update(ratio=None, cosine=None, ratio_batch=None, branch_rms=None, shortcut_rms=None)
        else:
            row.update(ratio=a["ratio"] / a["n"], cosine=a["cosine"] / a["n"],
                       ratio_batch=math.sqrt(a["f2"]) / max(math.sqrt(a["s2"]), 1e-300),
                       branch_rms=math.sqrt(a["f2"] / a["numel"]), shortcut_rms=math.sqrt(a["s2"] / a["numel"]))
        rows.append(row)
    return rows


def identity_mask(out_channels: int, in_channels: int, zero_pad: str = "split") -> torch.Tensor:
    """``(Cout, Cin)`` 0/1 mask of the entries an option-A shortcut carries: input channel ``i`` goes to
    output channel ``i + offset``, where ``offset = (Cout - Cin) // 2`` for the "split" zero-pad and 0
    for "end" (as :class:`resnetlab.blocks.ZeroPadShortcut` pads)."""
    offset = (out_channels - in_channels) // 2 if zero_pad == "split" else 0
    return (torch.arange(out_channels)[:, None] == torch.arange(in_channels) + offset).float()


@torch.no_grad()
def folded_projection(shortcut: ProjectionShortcut) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W_eff, b_eff)`` of a projection shortcut in eval mode: the 1x1 weight ``(Cout, Cin)`` with its
    BN folded in, ``W_eff = gamma / sqrt(var + eps) * W`` and ``b_eff = beta - gamma * mean / sqrt(var + eps)``
    (no BN, as in pre-activation nets: ``W`` and zero)."""
    w = shortcut[0].weight.detach().double().flatten(1)  # (Cout, Cin * 1 * 1)
    if len(shortcut) > 1:
        bn = shortcut[1]
        scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
        return scale[:, None] * w, bn.bias.detach().double() - scale * bn.running_mean.double()
    return w, torch.zeros(w.shape[0], dtype=torch.float64, device=w.device)


def projection_stats(model: nn.Module) -> list[dict]:
    """For every block with a 1x1 projection shortcut (options B/C): how identity-like its folded map
    ``W_eff`` is, against the entries an option-A shortcut carries (:func:`identity_mask`; docs/analysis.md)."""
    zero_pad = getattr(getattr(model, "options", None), "zero_pad", "split")
    rows = []
    for name, block in model_blocks(model):
        if block.shortcut_kind != "projection":  # the 1x1 map alone (not ResNet-D's pooled one)
            continue
        w, b = folded_projection(block.downsample)
        mask = identity_mask(w.shape[0], w.shape[1], zero_pad).to(w)
        sv = torch.linalg.svdvals(w)
        total = (w ** 2).sum().item()
        on = (w ** 2 * mask).sum().item()
        rows.append({
            "block": name, "in_channels": w.shape[1], "out_channels": w.shape[0],
            "stride": block.downsample[0].stride[0], "singular_values": [float(v) for v in sv],
            "sv_max": float(sv[0]), "sv_min": float(sv[-1]), "identity_energy": on / total if total > 0 else 0.0,
            "other_energy": (total - on) / total if total > 0 else 0.0,
            "identity_mean": float((w * mask).sum() / mask.sum()),
            "identity_distance": float(torch.linalg.norm(w - mask) / torch.linalg.norm(mask)),
            "bias_norm": float(b.norm())})
    return rows


# ---------------------------------------------------------------------------- gradients and lesions

def signal_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[tuple[str, float]]:
    """``||dL/dx_l||`` at the input images (``"input"``) and at each block's output, in forward order, for
    the mean cross-entropy in train mode: the back-propagated signal the vanishing-gradient argument is
    about. (Weight-gradient norms are not: under BN, scaling a conv's weight by c divides its gradient by c.)
    """
    return _loss_grads(model, x, y)[3]


def _loss_grads(model: nn.Module, x: torch.Tensor,
                y: torch.Tensor) -> tuple[dict, list[str], float, list[tuple[str, float]]]:
    """``({param name: grad}, conv/linear module names in forward order, loss, signal norms)`` from one
    forward and backward pass in train mode (:func:`signal_norms`), BN statistics restored, no ``.grad`` written."""
    device = device_of(model)
    x, y = x.to(device).detach().requires_grad_(True), y.to(device)
    order: list[str] = []
    named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    blocks = model_blocks(model)
    seen: dict[str, torch.Tensor] = {}

    def keep(name, module, grad_input, grad_output):
        seen[name] = grad_output[0].detach()

    with contextlib.ExitStack() as hooks, in_mode(model, train=True), torch.enable_grad():
        for mname, m in model.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                hooks.enter_context(m.register_forward_hook(
                    lambda mod, inp, out, mname=mname: order.append(mname) if mname not in order else None))
        for name, b in blocks:
            hooks.enter_context(b.register_full_backward_hook(functools.partial(keep, name)))
        loss = F.cross_entropy(model(x), y)
        gx, *grads = torch.autograd.grad(loss, [x] + [p for _, p in named], allow_unused=True)
    out = {k: (g if g is not None else torch.zeros_like(p)) for (k, p), g in zip(named, grads)}
    signal = [("input", gx.norm().item())] + [(name, seen[name].norm().item()) for name, _ in blocks]
    return out, order, loss.item(), signal


def gradient_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """``{"conv1.weight": norm, ...}``: the loss gradient's norm for every conv/linear weight in forward order
    (train mode)."""
    grads, order, _, _ = _loss_grads(model, x, y)
    return dict(_weight_norms(grads, order))


def _weight_norms(grads: dict[str, torch.Tensor], order: list[str]) -> list[tuple[str, float]]:
    return [(f"{m}.weight", grads[f"{m}.weight"].norm().item()) for m in order if f"{m}.weight" in grads]


def _group_norms(model: nn.Module, grads: dict[str, torch.Tensor]) -> list[tuple[str, float]]:
    blocks = [name for name, _ in model_blocks(model)]
    squares = dict.fromkeys(["stem", *blocks], 0.0)
    for k, g in grads.items():
        group = next((b for b in blocks if k.startswith(b + ".")), None)
        if group is None:
            top = k.split(".")[0]
            group = "fc" if top == "fc" else "final_bn" if top.startswith("final_") else "stem"
        squares[group] = squares.get(group, 0.0) + float(g.double().pow(2).sum())
    return [(k, math.sqrt(squares[k])) for k in ("stem", *blocks, "final_bn", "fc") if k in squares]


def block_gradient_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[tuple[str, float]]:
    """Gradient norm of all parameters of each group, in forward order: ``"stem"`` (conv1/bn1), every block
    (all its convs, BNs and projection), ``"final_bn"`` (pre-activation nets) and ``"fc"``. Train mode."""
    grads = _loss_grads(model, x, y)[0]
    return _group_norms(model, grads)


def _accuracy(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    correct = total = 0
    for xb, yb in batches:
        correct += (model(xb).argmax(1) == yb).sum().item()
        total += yb.numel()
    return correct / max(total, 1)


@torch.no_grad()
def lesion(model: nn.Module, data, normalization=None, *, batch_size: int = 256,
           max_batches: int | None = None, device=None, quiet: bool = True) -> list[dict]:
    """``[{"block", "kind", "accuracy", "baseline", "delta"}, ...]``: the accuracy on ``data`` (an ArrayDataset
    normalised with ``normalization``, or ``(x, y)`` batches) with one block at a time removed at test time
    (Veit et al. 2016): it returns its shortcut (a plain block its input, or ``None`` if the shape changes)."""
    device = torch.device(device) if device is not None else device_of(model)
    batches = list(labelled_batches(data, normalization, batch_size, device, max_batches))
    rows = []
    with in_mode(model):
        baseline = _accuracy(model, batches)
        for name, block in progress(model_blocks(model), desc="lesion", unit="block", quiet=quiet):
            row = {"block": name, "kind": block.shortcut_kind, "baseline": baseline, "accuracy": None, "delta": None}
            h = None
            if block.shortcut_kind != "none":
                h = block.add.register_forward_hook(lambda m, inp, out: inp[1] * m.scale)
            elif block.stride == 1 and block.in_channels == block.out_channels:
                h = block.register_forward_hook(lambda m, inp, out: inp[0])
            if h is not None:
                with h:  # the hook is removed on leaving
                    row["accuracy"] = _accuracy(model, batches)
                row["delta"] = row["accuracy"] - baseline
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------- responses (Figure 7)

@torch.no_grad()
def layer_response_stats(model: nn.Module, x) -> list[dict]:
    """Per 3x3 conv, in forward order: ``{"layer", "source", "std", "channel_std", "mean"}`` of its response
    (the output of the BN that consumes the conv's, else its own; docs/analysis.md), in eval mode on ``x``
    (a batch or an iterable of batches)."""
    convs = {m: name for name, m in model.named_modules()
             if isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (3, 3)}
    norms = {m: name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    pending: dict[int, tuple[str, torch.Tensor]] = {}  # this batch: id(conv output) -> (conv name, output)
    chosen: dict[str, tuple[str, torch.Tensor]] = {}  # this batch: conv name -> (source, response)
    stats: dict[str, dict] = {}  # conv name -> sums over all batches, in forward order

    def conv_hook(mod, inp, out):
        pending[id(out)] = (convs[mod], out)
        chosen[convs[mod]] = (convs[mod], out)

    def bn_hook(mod, inp, out):
        hit = pending.get(id(inp[0]))
        if hit is not None and hit[1] is inp[0]:
            chosen[hit[0]] = (norms[mod], out)

    device = device_of(model)
    with contextlib.ExitStack() as hooks, in_mode(model):
        for m in [*convs, *norms]:
            hooks.enter_context(m.register_forward_hook(conv_hook if m in convs else bn_hook))
        for xb in _batches(x):
            pending.clear()
            chosen.clear()
            model(xb.to(device))
            for name, (source, t) in chosen.items():
                t = t.double()
                s = stats.setdefault(name, {"source": source, "n": 0, "sum": 0.0, "sq": 0.0,
                                            "csum": 0.0, "csq": 0.0, "cn": 0})
                s["n"] += t.numel()
                s["sum"] += t.sum().item()
                s["sq"] += (t * t).sum().item()
                s["csum"] = s["csum"] + t.sum(dim=(0, 2, 3))
                s["csq"] = s["csq"] + (t * t).sum(dim=(0, 2, 3))
                s["cn"] += t.numel() // t.shape[1]
    rows = []
    for name, s in stats.items():
        mean = s["sum"] / s["n"]
        cmean = s["csum"] / s["cn"]
        cstd = torch.sqrt((s["csq"] / s["cn"] - cmean ** 2).clamp_min(0))
        rows.append({"layer": name, "source": s["source"], "mean": mean,
                     "std": math.sqrt(max(s["sq"] / s["n"] - mean * mean, 0.0)), "channel_std": float(cstd.mean())})
    return rows


def layer_responses(model: nn.Module, x) -> list[tuple[str, float]]:
    """Figure 7 of He et al. 2015: ``[(conv name, std of its response), ...]`` for every 3x3 conv in forward
    order; the response is its BN's output before ReLU/addition (see :func:`layer_response_stats`)."""
    return [(r["layer"], r["std"]) for r in layer_response_stats(model, x)]


def format_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Fixed-width text table of dicts; ``columns`` = ``[(key, header, format spec of a float), ...]``; every
    column but the first is right-aligned, ``None`` is ``n/a``."""
    def cell(v, spec):
        return "n/a" if v is None else format(v, spec) if isinstance(v, float) else str(v)
    return io_format_table([h for _, h, _ in columns], [[cell(r.get(k), f) for k, _, f in columns] for r in rows],
                           right=range(1, len(columns)))


# -------------------------------------------------------------------------------- resnetlab analyze

@dataclass(frozen=True)
class AnalyzeConfig(SourceOptions):
    """Options of ``resnetlab analyze``."""

    sources: Positional[tuple[str, ...]] = ()
    """model names (fresh models) or checkpoint paths; several (twins) are measured and drawn together"""
    batches: int = 4
    """batches of data to measure on (0: the whole split, test or, for gradients, train)"""
    batch_size: int = 128
    """images per batch"""
    seed: int = 0
    """seed of a fresh model (MODEL given by name)"""
    lesion: bool = False
    """gradients: also drop each block at test time and report the accuracy change"""
    json: Optional[str] = None
    """write the results as JSON to this file"""
    plot: Optional[str] = None
    """draw the results into this PNG file"""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N"""
    quiet: bool = False
    """no progress line on stderr"""


def _validate(cfg: AnalyzeConfig) -> None:
    if cfg.batches < 0:
        raise ValueError(f"--batches must be >= 0, got {cfg.batches}")
    if cfg.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    if cfg.plot and not cfg.plot.lower().endswith(".png"):
        raise ValueError(f"--plot must name a .png file, got {cfg.plot!r}")


def _mean_over_batches(tables: list[list[tuple[str, float]]]) -> dict[str, float]:
    """One ``[(key, value), ...]`` per batch -> ``{key: mean value}``, keys in first-seen order."""
    sums: dict[str, float] = {}
    for table in tables:
        for k, v in table:
            sums[k] = sums.get(k, 0.0) + v
    return {k: v / len(tables) for k, v in sums.items()}


def run_analysis(name: str, cfg: AnalyzeConfig, source: str) -> dict:
    """Run one analysis as the command does and return its JSON-ready result."""
    if name not in ANALYSES:
        raise ValueError(f"unknown analysis {name!r}; valid: {', '.join(ANALYSES)}")
    _validate(cfg)
    device = resolve_device(cfg.device)
    model, ckpt = load_model(source, given_model(cfg), cfg.seed, name_given(cfg))
    model.to(device)
    data_name, data_dir = resolve_data(cfg.data, cfg.data_dir, ckpt)
    splits, norm = load_data(data_name, data_dir, ckpt)
    norm = norm.to(device)
    split = "train (seeded subset)" if name == "gradients" else "test"
    result = {"analysis": name, "source": source, "model_config": model_config(model),
              "shortcut": getattr(model, "shortcut", None),
              "data": {"name": data_name, "batches": cfg.batches, "batch_size": cfg.batch_size, "split": split}}
    nb = cfg.batches or None
    if name in ("paths", "responses"):
        batches = [xb for xb, _ in labelled_batches(splits["test"], norm, cfg.batch_size, device, nb)]
    if name == "paths":
        result["paths"] = path_stats(model, batches)
        result["projections"] = projection_stats(model)
    elif name == "responses":
        result["responses"] = rows = layer_response_stats(model, batches)
        result["sorted"] = [r["layer"] for r in sorted(rows, key=lambda r: -r["std"])]
    else:  # gradients: train split, train-mode BN, mean over batches of the per-batch norms
        train = seeded_subset(splits["train"], (cfg.batch_size * cfg.batches) or len(splits["train"].y), cfg.seed)
        losses, layers, groups, signals = [], [], [], []
        for xb, yb in labelled_batches(train, norm, cfg.batch_size, device, None):
            grads, order, loss, signal = _loss_grads(model, xb, yb)
            losses.append(loss)
            layers.append(_weight_norms(grads, order))
            groups.append(_group_norms(model, grads))
            signals.append(signal)
        weights = dict(model.named_parameters())
        result["loss"], result["data"]["measured_batches"] = sum(losses) / len(losses), len(losses)
        result["signal"] = [{"at": k, "grad_norm": v} for k, v in _mean_over_batches(signals).items()]
        result["layers"] = [{"param": k, "grad_norm": v, "relative": v / max(weights[k].detach().norm().item(), 1e-30)}
                            for k, v in _mean_over_batches(layers).items()]
        result["blocks"] = [{"group": k, "grad_norm": v} for k, v in _mean_over_batches(groups).items()]
        result["first_layer"] = result["layers"][0]
        if cfg.lesion:
            result["lesion"] = lesion(model, splits["test"], norm, batch_size=cfg.batch_size,
                                      max_batches=nb, device=device, quiet=cfg.quiet)
    return result


def format_result(result: dict) -> str:
    """The printed tables of one analysis result."""
    name = result["analysis"]
    parts = [f"{name}: {result['source']} ({result['model_config']['name']}, "
             f"data {result['data']['name']} {result['data'].get('split', '')})"]
    if name == "paths":
        parts.append(format_table(result["paths"], [
            ("block", "block", ""), ("kind", "shortcut", ""), ("ratio", "|F|/|s|", ".4f"),
            ("cosine", "cos(F,s)", ".4f"), ("ratio_batch", "ratio(batch)", ".4f"),
            ("branch_rms", "rms F", ".4f"), ("shortcut_rms", "rms s", ".4f")]))
        if result["projections"]:
            parts.append("projection shortcuts (1x1 conv with BN folded in; identity = option-A entries):")
            parts.append(format_table(result["projections"], [
                ("block", "block", ""), ("in_channels", "Cin", ""), ("out_channels", "Cout", ""),
                ("identity_energy", "energy on id", ".4f"), ("other_energy", "energy off id", ".4f"),
                ("identity_mean", "mean id entry", ".4f"), ("identity_distance", "|W-M|/|M|", ".4f"),
                ("sv_max", "sv max", ".4f"), ("sv_min", "sv min", ".4f")]))
    elif name == "responses":
        parts.append(format_table(result["responses"], [("layer", "3x3 layer", ""), ("source", "response of", ""),
                                                        ("std", "std", ".4f"), ("channel_std", "channel std", ".4f")]))
        parts.append("sorted by std: " + ", ".join(result["sorted"]))
    else:
        parts.append(f"loss {result['loss']:.4f} (train mode, mean over {result['data']['measured_batches']} batch(es))")
        parts.append("back-propagated signal ||dL/dx|| at the input and at each block's output:")
        parts.append(format_table(result["signal"], [("at", "at", ""), ("grad_norm", "||dL/dx||", ".3e")]))
        parts.append(format_table(result["layers"], [("param", "weight", ""), ("grad_norm", "grad norm", ".3e"),
                                                     ("relative", "||g||/||W||", ".3e")]))
        parts.append(format_table(result["blocks"], [("group", "group", ""), ("grad_norm", "grad norm", ".3e")]))
        if "lesion" in result:
            rows = result["lesion"]
            parts.append(f"lesion (baseline accuracy {rows[0]['baseline']:.4f}):" if rows else "lesion: no blocks")
            parts.append(format_table(rows, [("block", "dropped block", ""), ("kind", "shortcut", ""),
                                             ("accuracy", "accuracy", ".4f"), ("delta", "change", "+.4f")]))
    return "\n".join(parts)


def main_analyze(argv: list[str] | None = None) -> int:
    """``resnetlab analyze {paths,gradients,responses} MODEL|CKPT [MODEL|CKPT ...] [options]``: a table per
    source; ``--json`` holds the results, ``--plot`` draws them overlaid (twins in one figure)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = ("usage: resnetlab analyze {paths,gradients,responses} MODEL|CKPT [MODEL|CKPT ...] [options]\n\n"
             "  paths      per block: ||F(x)|| / ||shortcut(x)||, their cosine; projection shortcuts vs identity\n"
             "  gradients  the back-propagated signal ||dL/dx|| per block; per-layer and per-block weight-gradient\n"
             "             norms, absolute and relative to ||W|| (--lesion: accuracy without each block)\n"
             "  responses  std of every 3x3 layer's response (He et al. 2015, Fig. 7)\n\n"
             "resnetlab analyze NAME --help for the options")
    if argv and argv[0] in ("-h", "--help"):
        print(usage)
        return 0
    if not argv:
        print(usage, file=sys.stderr)
        return 2
    name = argv[0]
    if name not in ANALYSES:
        raise ValueError(f"unknown analysis {name!r}; valid: {', '.join(ANALYSES)}")
    cfg = parse(AnalyzeConfig, argv[1:], prog=f"resnetlab analyze {name}", description=__doc__.split("\n\n")[0])
    if cfg.lesion and name != "gradients":
        raise ValueError("--lesion belongs to 'analyze gradients'")
    if not cfg.sources:
        raise ValueError(f"give a model name or a checkpoint: resnetlab analyze {name} MODEL|CKPT")
    results = []
    for source in cfg.sources:
        results.append(run_analysis(name, cfg, source))
        print(format_result(results[-1]))
    if cfg.json:
        write_json(cfg.json, results[0] if len(results) == 1 else {"analysis": name, "results": results})
    if cfg.plot:
        plot_results(results, cfg.plot)
    return 0
