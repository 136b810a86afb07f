"""Loss landscapes along filter-normalised random directions (Li et al. 2018), and curvature at the minimum.

``loss(theta + a * d1 + b * d2)`` on a grid of ``(a, b)`` in ``[-span, span]^2``, with directions drawn per
parameter by name (twins share the draw for every parameter they share), then filter-normalised. The model's
weights are never modified (``torch.func.functional_call``). docs/analysis.md defines every number.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .config import Positional, given_model, name_given, parse, to_dict
from .io import atomic_save, atomic_write, progress, resolve_device, write_json
from .models import device_of, in_mode, model_config, named_generator
from .plots import plot_1d, plot_2d
from .sources import SourceOptions, load_data, load_model, resolve_data, seeded_subset

DIRECTIONS_FORMAT = "resnetlab-directions"


# --------------------------------------------------------------------------------------- directions

def raw_directions(model: nn.Module, seed: int, n: int = 2,
                   base: list[dict[str, torch.Tensor]] | None = None) -> list[dict[str, torch.Tensor]]:
    """``n`` Gaussian directions (CPU float32), one tensor per trainable parameter, seeded by name; with
    ``base`` (from :func:`load_directions`), all its tensors replace or join the draws (what a direction
    file stores)."""
    raw = [{name: torch.randn(p.shape, generator=named_generator(seed, f"{name}#direction{i}"))
            for name, p in model.named_parameters() if p.requires_grad} for i in range(n)]
    if base is not None:
        if len(base) < n:
            raise ValueError(f"the direction file holds {len(base)} direction(s); {n} are needed")
        shapes = {k: p.shape for k, p in model.named_parameters()}
        for draws, stored in zip(raw, base):
            for name, t in stored.items():
                if name in shapes and tuple(t.shape) != tuple(shapes[name]):
                    raise ValueError(f"stored direction for {name!r} has shape {tuple(t.shape)}, "
                                     f"the model's parameter {tuple(shapes[name])}: not a twin of this model")
            draws.update(stored)
    return raw


@torch.no_grad()
def filter_normalize(direction: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rescale every filter ``d[o]`` of a conv/linear weight direction to ``||theta[o]||`` (Li et al. 2018);
    zeros for 1-D parameters (BN weights/biases, biases). Returns a new dict on the model's device."""
    out = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.dim() <= 1:
            out[name] = torch.zeros_like(p)
            continue
        if name not in direction:
            raise ValueError(f"direction has no tensor for parameter {name!r}")
        d = direction[name].to(device=p.device, dtype=p.dtype)
        if d.shape != p.shape:
            raise ValueError(f"direction for {name!r} has shape {tuple(d.shape)}, parameter {tuple(p.shape)}")
        scale = p.flatten(1).norm(dim=1) / d.flatten(1).norm(dim=1).clamp_min(1e-12)  # (Cout,): one per filter
        out[name] = d * scale.view(-1, *([1] * (p.dim() - 1)))
    return out


def random_directions(model: nn.Module, seed: int, n: int = 2, base: list[dict[str, torch.Tensor]] | None = None,
                      base_seed: int | None = None) -> list[dict[str, torch.Tensor]]:
    """``n`` filter-normalised random directions for ``model``; with ``base`` (from :func:`load_directions`),
    the parameters it names take its tensors, the others the draw for their name with ``base_seed``."""
    raw = raw_directions(model, seed if base_seed is None else base_seed, n, base)
    return [filter_normalize(d, model) for d in raw]


def save_directions(directions: list[dict[str, torch.Tensor]], path: str, seed: int | None = None,
                    meta: dict | None = None) -> None:
    """Save directions (a list of ``{parameter name: tensor}``) atomically, with their seed and ``meta``."""
    atomic_save({"format": DIRECTIONS_FORMAT, "seed": seed, "meta": json.dumps(meta or {}),
                 "directions": [{k: v.detach().cpu() for k, v in d.items()} for d in directions]}, path)


def load_directions(path: str) -> tuple[list[dict[str, torch.Tensor]], int | None]:
    """``(directions, seed)`` from a file written by :func:`save_directions`."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"direction file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a readable direction file ({e})") from None
    if not isinstance(obj, dict) or obj.get("format") != DIRECTIONS_FORMAT:
        raise ValueError(f"{path} is not a resnetlab direction file (no 'format: {DIRECTIONS_FORMAT}')")
    return obj["directions"], obj.get("seed")


# --------------------------------------------------------------------------------------- landscapes

def _as_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int | None):
    if batch_size is None or batch_size >= len(y):
        return [(x, y)]
    return list(zip(x.split(batch_size), y.split(batch_size)))


BN_MODES = ("batch", "recompute", "eval")
"""How BN normalises at a grid point: with each batch's statistics, with running statistics re-estimated
for the shifted weights, or with the checkpoint's. Filter normalisation assumes a filter's scale does not
change the loss: true in the first two modes, not with stored statistics."""


@torch.no_grad()
def _evaluate(model: nn.Module, params: dict | None, batches, bn: str = "batch") -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` with ``params`` substituted, BN as ``bn`` says
    (:data:`BN_MODES`). The model's own buffers are never changed."""
    if bn not in BN_MODES:
        raise ValueError(f"unknown BN mode {bn!r}; valid: {', '.join(BN_MODES)}")
    state = {k: v.detach().clone() for k, v in model.named_buffers()}  # BN writes into these, not the model's
    state.update(params if params is not None else {k: p.detach() for k, p in model.named_parameters()})
    norms = {name: m for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    momenta = [(m, m.momentum) for m in norms.values()]
    with in_mode(model):  # every module's own mode comes back (a model may hold some BN layers frozen in eval)
        try:
            if bn == "recompute":  # a cumulative average over the whole subset, as the weights are now
                for name, m in norms.items():
                    state[f"{name}.running_mean"].zero_()
                    state[f"{name}.running_var"].fill_(1.0)
                    state[f"{name}.num_batches_tracked"].zero_()
                    m.train()
                    m.momentum = None
                for xb, _ in batches:
                    functional_call(model, state, (xb,))
            for m in norms.values():
                m.train(bn == "batch")  # batch statistics, or the running ones (recomputed or the checkpoint's)
            loss_sum, correct, total = 0.0, 0, 0
            for xb, yb in batches:
                logits = functional_call(model, state, (xb,))
                loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum").item()
                correct += (logits.argmax(1) == yb).sum().item()
                total += yb.numel()
        finally:
            for m, momentum in momenta:
                m.momentum = momentum
    return loss_sum / total, correct / total


def evaluate_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int | None = 256,
                  bn: str = "batch"):
    """``(loss, accuracy)`` of the model as it is, in batches, BN as ``bn`` says (the landscape's origin)."""
    dev = device_of(model)
    return _evaluate(model, None, _as_batches(x.to(dev), y.to(dev), batch_size), bn)


def _check_grid(span: float, steps: int) -> None:
    if not (isinstance(span, (int, float)) and span > 0 and math.isfinite(span)):
        raise ValueError(f"span must be a positive number, got {span!r}")
    if not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an integer >= 2, got {steps!r}")


def _grid(model, x, y, directions, span, steps, batch_size, quiet, bn) -> dict:
    """Loss and accuracy at ``theta + sum_k a_k * d_k`` for every ``a`` of the grid of ``steps`` values in
    ``[-span, span]`` per direction (``loss[i, j]`` at ``(a_i, b_j)``), and at the origin."""
    _check_grid(span, steps)
    dev = device_of(model)
    batches = _as_batches(x.to(dev), y.to(dev), batch_size)
    base = {k: p.detach() for k, p in model.named_parameters()}
    dirs = [{k: v.to(dev) for k, v in d.items()} for d in directions]
    axis = np.linspace(-span, span, steps)
    points = []  # (loss, accuracy) per grid point
    for c in progress(list(itertools.product(axis.tolist(), repeat=len(dirs))), desc=f"landscape {len(dirs)}-D",
                      unit="point", quiet=quiet):
        params = dict(base)
        for k in dirs[0]:
            for a, d in zip(c, dirs):
                params[k] = params[k] + a * d[k]
        points.append(_evaluate(model, params, batches, bn))
    losses, accs = zip(*points)
    loss0, acc0 = _evaluate(model, None, batches, bn)
    shape = (steps,) * len(dirs)
    return {"alphas": axis, "loss": np.array(losses).reshape(shape), "acc": np.array(accs).reshape(shape),
            "loss0": loss0, "acc0": acc0, "span": float(span), "steps": steps}


def landscape_1d(model: nn.Module, x: torch.Tensor, y: torch.Tensor, direction: dict[str, torch.Tensor],
                 span: float = 1.0, steps: int = 21, batch_size: int | None = 256, quiet: bool = True,
                 bn: str = "batch") -> dict:
    """``{"kind": "1d", "alphas", "loss", "acc" (numpy), "loss0", "acc0", "span", "steps"}``: loss and accuracy
    at ``theta + a * d`` for ``steps`` values of ``a`` in ``[-span, span]``, and at the model itself."""
    if isinstance(direction, (list, tuple)):
        direction = direction[0]
    return {"kind": "1d", **_grid(model, x, y, [direction], span, steps, batch_size, quiet, bn)}


def landscape_2d(model: nn.Module, x: torch.Tensor, y: torch.Tensor, directions: list[dict[str, torch.Tensor]],
                 span: float = 1.0, steps: int = 21, batch_size: int | None = 256, quiet: bool = True,
                 bn: str = "batch") -> dict:
    """``{"kind": "2d", "alphas", "betas", "loss", "acc", "loss0", "acc0", "span", "steps"}``: as
    :func:`landscape_1d` at ``theta + a * d1 + b * d2`` on a ``steps x steps`` grid (``[i, j]`` at
    ``(alphas[i], betas[j])``)."""
    if len(directions) < 2:
        raise ValueError(f"landscape_2d needs two directions, got {len(directions)}")
    out = _grid(model, x, y, directions[:2], span, steps, batch_size, quiet, bn)
    return {"kind": "2d", **out, "betas": out["alphas"].copy()}


# ------------------------------------------------------------------------------------------ hessian

@contextlib.contextmanager
def _hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int | None, weights_only: bool):
    """``(v -> H v, n, device)``: Hessian-vector products of the mean cross-entropy over ``(x, y)`` (flat
    vectors of ``n`` values) with the model in eval mode meanwhile; over the weights of dimension > 1 (conv
    and linear kernels, as Li et al.) unless ``weights_only`` is False."""
    params = [p for p in model.parameters() if p.requires_grad and (p.ndim > 1 or not weights_only)]
    dev = params[0].device
    batches = _as_batches(x.to(dev), y.to(dev), batch_size)

    def grads_of(xb, yb):
        loss = F.cross_entropy(model(xb), yb, reduction="sum") / len(y)
        return torch.autograd.grad(loss, params, create_graph=True)

    def hvp(v: torch.Tensor) -> torch.Tensor:
        chunks = [c.view_as(p).to(p.dtype) for c, p in zip(v.split([p.numel() for p in params]), params)]
        total = torch.zeros(v.shape, dtype=torch.float64, device=v.device)
        for xb, yb in batches:
            g = cached if cached is not None else grads_of(xb, yb)
            hv = torch.autograd.grad(g, params, grad_outputs=chunks, retain_graph=cached is not None)
            total += torch.cat([h.reshape(-1) for h in hv]).double()
        return total

    with in_mode(model):
        cached = grads_of(*batches[0]) if len(batches) == 1 else None  # one batch: reuse the graph
        yield hvp, sum(p.numel() for p in params), dev


class _Lanczos:
    """Lanczos on a symmetric operator with full re-orthogonalisation, extended step by step, so that the
    Ritz values after k and after 2k steps come from one run."""

    def __init__(self, hvp, n: int, generator: torch.Generator, device):
        q = torch.randn(n, generator=generator, dtype=torch.float64).to(device)
        self.hvp, self.n = hvp, n
        self.basis, self.alphas, self.betas, self.done = [q / q.norm()], [], [], False

    def extend(self, steps: int) -> None:
        while len(self.alphas) < min(steps, self.n) and not self.done:
            j = len(self.alphas)
            w = self.hvp(self.basis[j])
            self.alphas.append(torch.dot(w, self.basis[j]).item())
            # Re-orthogonalising (twice) against every previous vector keeps the Ritz values honest in
            # floating point at these small step counts.
            for _ in range(2):
                for b in self.basis:
                    w = w - torch.dot(w, b) * b
            beta = w.norm().item()
            if beta < 1e-10 or len(self.alphas) == self.n:
                self.done = True  # an invariant subspace: the Ritz values are exact
                break
            self.betas.append(beta)
            self.basis.append(w / beta)

    def ritz(self, steps: int | None = None) -> np.ndarray:
        """Ritz values (ascending) after the first ``steps`` steps (default: all taken)."""
        k = len(self.alphas) if steps is None else min(steps, len(self.alphas))
        t = np.diag(self.alphas[:k]) + np.diag(self.betas[: k - 1], 1) + np.diag(self.betas[: k - 1], -1)
        return np.linalg.eigvalsh(t)


def _power(hvp, n: int, iters: int, k: int, generator: torch.Generator, device) -> list[float]:
    """Top-``k`` eigenvalues by magnitude by power iteration with deflation."""
    found: list[tuple[float, torch.Tensor]] = []
    for _ in range(k):
        v = torch.randn(n, generator=generator, dtype=torch.float64).to(device)
        v /= v.norm()
        lam = 0.0
        for _ in range(iters):
            w = hvp(v)
            for val, u in found:  # deflate: (H - sum lam u u^T) v
                w = w - val * torch.dot(u, v) * u
            lam = torch.dot(w, v).item()
            norm = w.norm()
            if norm == 0:
                break
            v = w / norm
        found.append((lam, v))
    return sorted((val for val, _ in found), reverse=True)


def hessian_eigs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, iters: int = 20, seed: int = 0,
                 batch_size: int | None = None, weights_only: bool = True) -> np.ndarray:
    """Ritz values (ascending) of the loss Hessian after ``iters`` Lanczos steps: the extremes converge
    first, so ``[-1]`` estimates the top eigenvalue and ``[0]`` the smallest. Over the weights of
    dimension > 1 unless ``weights_only`` is False."""
    with _hessian(model, x, y, batch_size, weights_only) as (hvp, n, dev):
        run = _Lanczos(hvp, n, torch.Generator().manual_seed(seed), dev)
        run.extend(iters)
        return run.ritz()


def hessian_extremes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, iters: int = 20, seed: int = 0,
                     batch_size: int | None = None, weights_only: bool = True, tol: float = 0.01,
                     max_iters: int = 320) -> dict:
    """The Hessian's largest and smallest eigenvalues by Lanczos, with steps doubled from ``iters`` until the
    smallest (the slower to converge) changes by less than ``tol`` (relative) between k and 2k steps, or
    ``max_iters`` is reached. Returns ``{"max", "min", "ratio" = |min / max|, "iters", "min_change",
    "converged", "weights_only"}``."""
    with _hessian(model, x, y, batch_size, weights_only) as (hvp, n, dev):
        run = _Lanczos(hvp, n, torch.Generator().manual_seed(seed), dev)
        k = max(1, iters)
        while True:
            run.extend(2 * k)
            before, after = run.ritz(k), run.ritz(2 * k)
            change = abs(after[0] - before[0]) / max(abs(after[0]), 1e-12)
            if change < tol or run.done or 2 * k >= max_iters:
                break
            k *= 2
    top, low = float(after[-1]), float(after[0])
    return {"max": top, "min": low, "ratio": abs(low / top) if top else None, "iters": len(run.alphas),
            "min_change": float(change), "converged": bool(change < tol or run.done), "weights_only": weights_only}


def hessian_top_eigs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int = 1, iters: int = 20, seed: int = 0,
                     method: str = "lanczos", batch_size: int | None = None, weights_only: bool = True) -> list[float]:
    """The ``k`` largest Hessian eigenvalues (descending) of the mean cross-entropy on ``(x, y)`` with
    respect to the weights of dimension > 1 (all trainable parameters unless ``weights_only``), model in
    eval mode. ``method="lanczos"`` (largest algebraic) or ``"power"`` (power iteration with deflation:
    largest in magnitude, ``iters`` steps each)."""
    if k < 1 or iters < 1:
        raise ValueError(f"k and iters must be >= 1, got k={k}, iters={iters}")
    if method == "lanczos":
        return [float(v) for v in hessian_eigs(model, x, y, iters, seed, batch_size, weights_only)[::-1][:k]]
    if method != "power":
        raise ValueError(f"unknown method {method!r}; valid: lanczos, power")
    with _hessian(model, x, y, batch_size, weights_only) as (hvp, n, dev):
        return _power(hvp, n, iters, k, torch.Generator().manual_seed(seed), dev)


# --------------------------------------------------------------------------------- flatness summary

def _bilinear(grid: np.ndarray, xs: np.ndarray, ys: np.ndarray, px: float, py: float) -> float:
    i = int(np.clip(np.searchsorted(xs, px) - 1, 0, len(xs) - 2))
    j = int(np.clip(np.searchsorted(ys, py) - 1, 0, len(ys) - 2))
    tx = (px - xs[i]) / (xs[i + 1] - xs[i])
    ty = (py - ys[j]) / (ys[j + 1] - ys[j])
    return float((1 - tx) * (1 - ty) * grid[i, j] + tx * (1 - ty) * grid[i + 1, j]
                 + (1 - tx) * ty * grid[i, j + 1] + tx * ty * grid[i + 1, j + 1])


def flatness(result: dict, radius: float | None = None) -> dict:
    """Flatness of a landscape result (``landscape_1d``/``_2d``, or ``{"1d", "2d", "hessian"}``): per grid
    ``rise_at_r``, ``mean_rise_within_r`` and ``max_rise`` (``r`` defaults to ``span / 2``; docs/analysis.md),
    and with Hessian values ``hessian_max``, ``hessian_min`` and ``hessian_min_max_ratio = |min / max|``."""
    out: dict = {}
    parts = ({result["kind"]: result} if "kind" in result
             else {k: result[k] for k in ("1d", "2d") if result.get(k) is not None})
    for key, res in parts.items():
        r = float(radius if radius is not None else res["span"] / 2)
        loss, loss0 = np.asarray(res["loss"]), res["loss0"]
        if key == "1d":
            xs = np.asarray(res["alphas"])
            at = [np.interp(s * r, xs, loss) for s in (-1, 1)]
            within = loss[np.abs(xs) <= r + 1e-12]
        else:
            xs, ys = np.asarray(res["alphas"]), np.asarray(res["betas"])
            angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)
            at = [_bilinear(loss, xs, ys, r * math.cos(t), r * math.sin(t)) for t in angles]
            dist = np.sqrt(xs[:, None] ** 2 + ys[None, :] ** 2)
            within = loss[dist <= r + 1e-12]
        out[key] = {"radius": r, "loss0": float(loss0), "acc0": float(res["acc0"]),
                    "rise_at_r": float(np.mean(at) - loss0),
                    "mean_rise_within_r": float(np.mean(within) - loss0) if within.size else None,
                    "max_rise": float(loss.max() - loss0)}
    if hess := result.get("hessian"):
        out.update(hessian_max=hess["max"], hessian_min=hess["min"],
                   hessian_min_max_ratio=abs(hess["min"] / hess["max"]) if hess["max"] else None)
    return out


# ------------------------------------------------------------------------------ resnetlab landscape

def flatness_spread(per_seed: list[dict]) -> dict:
    """``{"1d": {"rise_at_r": {"mean", "std", "values"}, ...}, "2d": ...}`` over direction seeds (std with
    ``ddof=1``; 0 for a single seed)."""
    out = {}
    for key in ("1d", "2d"):
        if rows := [f[key] for f in per_seed if key in f]:
            values = {m: [float(r[m]) for r in rows if r.get(m) is not None]
                      for m in ("rise_at_r", "mean_rise_within_r", "max_rise")}
            out[key] = {m: {"mean": float(np.mean(v)), "values": v,
                            "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0} for m, v in values.items() if v}
    return out


@dataclass(frozen=True)
class LandscapeConfig(SourceOptions):
    """Options of ``resnetlab landscape`` (its data: the training split)."""

    source: Positional[str] = ""
    """checkpoint path, or a registered model name (a fresh model)"""
    subset: int = 2048
    """training images in the fixed evaluation subset"""
    seed: int = 0
    """seed of the subset and of the directions (and of a fresh model)"""
    direction_seeds: int = 3
    """direction pairs for flatness mean +- std, at seeds SEED, SEED+1, ... (with a --directions file: the
    file's seed and on); grids and plots are the first's"""
    bn: Literal[BN_MODES] = "batch"
    """BN at each grid point: batch statistics, recompute (re-estimated for the shifted weights), eval (the checkpoint's)"""
    dims: int = 2
    """1: a curve along one direction; 2: also the surface over two"""
    span: float = 1.0
    """the grid covers [-span, span] along each direction"""
    steps: int = 21
    """grid points along each direction (odd puts the model itself on the grid)"""
    directions: Optional[str] = None
    """direction file: used if it exists (twins share it), else written"""
    out: str = "landscape"
    """output folder"""
    batch_size: int = 512
    """images per forward pass"""
    hessian_iters: int = 20
    """Lanczos steps for the Hessian's extreme eigenvalues, doubled until the smallest moves by under 1% (0: skip)"""
    hessian_samples: int = 512
    """subset images used for the Hessian"""
    radius: Optional[float] = None
    """distance at which flatness is measured (default span / 2)"""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N"""
    quiet: bool = False
    """no progress line on stderr"""


def _validate(cfg: LandscapeConfig) -> None:
    _check_grid(cfg.span, cfg.steps)
    if cfg.dims not in (1, 2):
        raise ValueError(f"--dims must be 1 or 2, got {cfg.dims}")
    for what, least in (("subset", 1), ("batch_size", 1), ("hessian_samples", 1), ("direction_seeds", 1),
                        ("hessian_iters", 0)):
        if getattr(cfg, what) < least:
            raise ValueError(f"--{what.replace('_', '-')} must be >= {least}, got {getattr(cfg, what)}")
    if cfg.radius is not None and not 0 < cfg.radius <= cfg.span:
        raise ValueError(f"--radius must be in (0, span] = (0, {cfg.span:g}], got {cfg.radius}")


def run_landscape(cfg: LandscapeConfig, source: str) -> dict:
    """Compute everything ``resnetlab landscape`` writes; returns the result dict (numpy grids)."""
    _validate(cfg)
    device = resolve_device(cfg.device)
    model, ckpt = load_model(source, given_model(cfg), cfg.seed, name_given(cfg))
    model.to(device).eval()
    data_name, data_dir = resolve_data(cfg.data, cfg.data_dir, ckpt)
    splits, norm = load_data(data_name, data_dir, ckpt)
    sub = seeded_subset(splits["train"], cfg.subset, cfg.seed)
    x = norm.to(device)(sub.x.to(device))
    y = sub.y.to(device)

    directions_from = cfg.directions if cfg.directions and os.path.isfile(cfg.directions) else None
    base, file_seed = load_directions(directions_from) if directions_from else (None, None)
    directions_seed = cfg.seed if file_seed is None else file_seed

    def surfaces(dirs) -> dict:
        out = {"1d": landscape_1d(model, x, y, dirs[0], cfg.span, cfg.steps, cfg.batch_size, cfg.quiet, cfg.bn)}
        if cfg.dims == 2:
            out["2d"] = landscape_2d(model, x, y, dirs, cfg.span, cfg.steps, cfg.batch_size, cfg.quiet, cfg.bn)
        return out

    # the pairs' seeds: the first pair's (the file's, when one is read), then the next ones
    seeds = [directions_seed + k for k in range(cfg.direction_seeds)]
    settings = {"source": source, "seed": cfg.seed, "span": cfg.span, "steps": cfg.steps, "subset": len(y),
                "dims": cfg.dims, "bn": cfg.bn, "data": data_name, "directions_file": directions_from,
                "direction_seeds": seeds,
                "model_config": model_config(model), "shortcut": getattr(model, "shortcut", None),
                "config": to_dict(cfg)}
    # What the direction file stores: the raw draws for this model's parameters (stored ones kept).
    raw = raw_directions(model, directions_seed, cfg.dims, base)
    result = {"settings": settings, **surfaces([filter_normalize(d, model) for d in raw])}
    if cfg.hessian_iters:
        m = min(cfg.hessian_samples, len(y))
        result["hessian"] = {**hessian_extremes(model, x[:m], y[:m], iters=cfg.hessian_iters, seed=cfg.seed,
                                                batch_size=cfg.batch_size), "samples": m}
    result["flatness"] = flatness(result, cfg.radius)
    # More direction pairs: a flatness figure from one random pair moves a lot from pair to pair. They
    # draw by parameter name, so twins get the same directions for shared filters.
    result["flatness_seeds"] = per_seed = [result["flatness"]] + [
        flatness(surfaces(random_directions(model, seed, cfg.dims)), cfg.radius) for seed in seeds[1:]]
    result["flatness_spread"] = flatness_spread(per_seed)
    result.update(raw_directions=raw, directions_seed=directions_seed)
    return result


def write_outputs(result: dict, out: str, directions_file: str | None = None) -> list[str]:
    """``landscape.npz``, ``flatness.json``, ``directions.pt`` and the PNG plots into ``out``."""
    os.makedirs(out, exist_ok=True)
    s = result["settings"]
    arrays = {"alphas_1d": result["1d"]["alphas"], "loss_1d": result["1d"]["loss"], "acc_1d": result["1d"]["acc"],
              **{k: np.array(result["1d"][k]) for k in ("loss0", "acc0")},
              **{k: np.array(s[k]) for k in ("seed", "span", "steps", "subset")},
              "settings": np.array(json.dumps(s)), "flatness": np.array(json.dumps(result["flatness"]))}
    if "2d" in result:
        arrays.update(alphas_2d=result["2d"]["alphas"], betas_2d=result["2d"]["betas"],
                      loss_2d=result["2d"]["loss"], acc_2d=result["2d"]["acc"])
    npz, summary, dpath = (os.path.join(out, f) for f in ("landscape.npz", "flatness.json", "directions.pt"))
    with atomic_write(npz, "wb") as fh:
        np.savez(fh, **arrays)
    write_json(summary, {"settings": s, "flatness": result["flatness"], "hessian": result.get("hessian"),
                         "flatness_over_direction_seeds": result.get("flatness_spread"),
                         "flatness_per_direction_seed": result.get("flatness_seeds")})
    # the first run of twins also writes the shared direction file
    targets = [dpath] + ([directions_file] if directions_file and not os.path.isfile(directions_file) else [])
    for path in targets:
        save_directions(result["raw_directions"], path, seed=result["directions_seed"], meta=s["model_config"])
    title = f"{s['model_config']['name']} (shortcut {s.get('shortcut')})"
    pngs = [os.path.join(out, f) for f in ("landscape_1d.png", "landscape_2d_contour.png", "landscape_2d_surface.png")]
    plot_1d(result["1d"], pngs[0], title)
    if "2d" in result:
        plot_2d(result["2d"], pngs[1], pngs[2], title)
    return [npz, summary, *targets, *(pngs if "2d" in result else pngs[:1])]


def format_summary(result: dict) -> str:
    s = result["settings"]
    lines = [f"landscape of {s['source']} ({s['model_config']['name']}): {s['subset']} training images of "
             f"{s['data']}, span {s['span']}, {s['steps']} steps, seed {s['seed']}"]
    fl = result["flatness"]
    for key in ("1d", "2d"):
        if key in fl:
            f = fl[key]
            lines.append(f"  {key}: loss(0) {f['loss0']:.4f}  acc(0) {f['acc0']:.4f}  rise at r={f['radius']:g} "
                         f"{f['rise_at_r']:.4f}  mean rise within r {f['mean_rise_within_r']:.4f}  "
                         f"max rise {f['max_rise']:.4f}")
    spread = result.get("flatness_spread") or {}
    seeds = len(result.get("flatness_seeds") or [])
    if seeds > 1:
        for key, metrics in spread.items():
            lines.append(f"  {key} over {seeds} direction seeds: " + "  ".join(
                f"{m.replace('_', ' ')} {v['mean']:.4f} +- {v['std']:.4f}" for m, v in metrics.items()))
    if "hessian_max" in fl:
        h, ratio = result["hessian"], fl["hessian_min_max_ratio"]
        note = "" if h.get("converged", True) else f", NOT converged: min moved {h['min_change']:.1%}"
        lines.append(f"  Hessian over the weights ({h['iters']} Lanczos steps, {h['samples']} images{note}): "
                     f"max {fl['hessian_max']:.4g}  min {fl['hessian_min']:.4g}"
                     + (f"  |min/max| {ratio:.4g}" if ratio is not None else ""))
    return "\n".join(lines)


def main_landscape(argv: list[str] | None = None) -> int:
    """``resnetlab landscape CKPT|MODEL [options]``."""
    cfg = parse(LandscapeConfig, argv, prog="resnetlab landscape", description=__doc__.split("\n\n")[0])
    if not cfg.source:
        raise ValueError("give a checkpoint or a model name: resnetlab landscape CKPT|MODEL")
    result = run_landscape(cfg, cfg.source)
    written = write_outputs(result, cfg.out, cfg.directions)
    print(format_summary(result))
    print("wrote " + ", ".join(written))
    return 0
