"""The evaluator (training's val/test evaluations use it too) and prediction on image files.

:func:`load_for_eval` loads a checkpoint with what is known about its inputs, :func:`evaluate` gives top-1/
top-5, loss, per-class accuracy and the confusion matrix of a model or an ensemble (softmax probabilities
averaged, optionally with flip test-time augmentation), :func:`predict` the top-k classes of image files.
The commands are in :mod:`resnetlab.evaluate_cli`; docs/evaluate.md describes them.
"""
from __future__ import annotations

import contextlib
import math
import os
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .images import ImageFolder, center_crop, folder_batches, open_rgb, resize_side, to_tensor
from .io import PRECISIONS, progress as progress_bar, resolve_device
from .stream import Normalization, eval_input, raw_batches
from .models import describe, device_of, in_mode
from .weights import model_from_checkpoint, unwrap

SPLITS = ("test", "val", "train")


@dataclass
class LoadedModel:
    """A model ready for evaluation and what is known about its inputs and outputs."""

    model: nn.Module
    normalization: Normalization | None  # None: unknown (foreign weights)
    classes: list[str] | None  # class names in output order, when the checkpoint records them
    image_size: int  # the side the model was trained on (32 for CIFAR, 224 for ImageNet)
    family: str  # "cifar" | "imagenet": how predict resizes images
    path: str
    description: str  # e.g. "resnet20 (shortcut=A)"
    checkpoint: dict | None  # our checkpoint's entries without the weights; None for foreign files

    @property
    def num_classes(self) -> int | None:
        return _num_outputs(self.model)


def load_for_eval(path, model=None, *, num_classes: int | None = None, normalization=None) -> LoadedModel:
    """Load a checkpoint (or, given ``model``, another project's weights) for evaluation or prediction, on
    the CPU in eval mode. ``model`` is as for :func:`resnetlab.weights.model_from_checkpoint` (built with
    ``num_classes`` when given); ``normalization`` replaces the checkpoint's own, with a warning."""
    path = os.fspath(path)
    options = {"num_classes": num_classes} if num_classes is not None and model is not None else {}
    net, ckpt = model_from_checkpoint(path, model, **options)
    recorded = ckpt or {}  # foreign weights record nothing
    norm = recorded.get("normalization")
    norm = Normalization.from_state_dict(norm) if norm is not None else None
    if normalization is not None:
        if norm is not None:
            warnings.warn(f"{path}: replacing the normalization recorded in the checkpoint by the one "
                          f"given; the model was trained with the recorded one", stacklevel=2)
        norm = normalization
    classes = recorded.get("classes")
    spec = getattr(unwrap(net), "spec", None)
    image_size = int((recorded.get("data") or {}).get("image_size") or (spec.image_size if spec is not None else 32))
    family = spec.family if spec is not None else ("cifar" if image_size <= 64 else "imagenet")
    meta = None if ckpt is None else {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "scaler", "rng")}
    net.eval()
    return LoadedModel(model=net, normalization=norm, classes=list(classes) if classes is not None else None,
                       image_size=image_size, family=family, path=path, description=describe(unwrap(net)),
                       checkpoint=meta)


# -------------------------------------------------------------------------------------------- evaluation

def _num_outputs(model: nn.Module) -> int | None:
    m = unwrap(model)
    if isinstance(getattr(m, "num_classes", None), int):
        return m.num_classes
    fc = getattr(m, "fc", None)
    return fc.out_features if isinstance(fc, nn.Linear) else None


def use_bf16(device: torch.device, precision: str) -> bool:
    """bf16 autocast? "auto": on CUDA only (exact fp32 on the CPU); "bf16": on any device; "fp32": never."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def _log_probs(model: nn.Module, x: torch.Tensor, tta_flip: bool, autocast: bool) -> torch.Tensor:
    """Log of the softmax probabilities (B, K) in float32, averaged over x and its mirror with ``tta_flip``."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        logp = F.log_softmax(model(x).float(), dim=1)
        if tta_flip:
            # average the probabilities (not the logits) of the image and its left-right mirror
            mirror = F.log_softmax(model(x.flip(3)).float(), dim=1)
            logp = torch.logsumexp(torch.stack([logp, mirror]), dim=0) - math.log(2)
    return logp


class _Tally:
    """Running top-1/top-5 counts and summed loss of one set of predictions, and with ``confusion`` the
    confusion matrix (rows: true class, columns: predicted class; the ensemble's only, a member needs none)."""

    def __init__(self, num_classes: int, device, confusion: bool = False):
        self.k = min(5, num_classes)
        self.num_classes = num_classes
        self.n = 0
        self.correct1 = torch.zeros((), dtype=torch.int64, device=device)
        self.correct5 = torch.zeros((), dtype=torch.int64, device=device)
        self.nll = torch.zeros((), dtype=torch.float64, device=device)
        self.confusion = (torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
                          if confusion else None)

    def add(self, logp: torch.Tensor, y: torch.Tensor) -> None:
        pred = logp.argmax(dim=1)
        self.n += len(y)
        self.correct1 += (pred == y).sum()
        self.correct5 += (logp.topk(self.k, dim=1).indices == y[:, None]).any(dim=1).sum()
        self.nll += F.nll_loss(logp, y, reduction="sum").double()
        if self.confusion is not None:
            pairs = y * self.num_classes + pred
            self.confusion += torch.bincount(pairs, minlength=self.num_classes ** 2).view(self.num_classes, -1)

    def summary(self) -> dict:
        n, c1, c5 = max(self.n, 1), self.correct1.item(), self.correct5.item()
        # errors from the counts, not 1 - accuracy: 715 wrong of 1000 is 0.715, not 1 - 0.285 = 0.7150000000000001
        return {"top1": c1 / n, "top5": c5 / n, "error": (n - c1) / n, "top5_error": (n - c5) / n,
                "loss": self.nll.item() / n}


def raw_image_batches(data, batch_size: int, num_workers: int, skipped: list, pin_memory: bool):
    """uint8 image batches and labels, in order, on the CPU: slices of an ArrayDataset, or an ImageFolder
    decoded by DataLoader workers (unreadable images skipped by the folder are collected in ``skipped``)."""
    if not isinstance(data, ImageFolder):
        yield from raw_batches(data, batch_size, pin_memory=pin_memory)
        return
    for x, y, bad in folder_batches(data, batch_size, num_workers=num_workers, pin_memory=pin_memory):
        skipped.extend(bad)
        if x is not None:
            yield x, y


def evaluate(models, data, normalization, *, batch_size: int = 1000, device=None, tta_flip: bool = False,
             precision: str = "auto", channels_last: bool = False, progress: bool = False,
             num_workers: int = 2) -> dict:
    """Evaluate a model, or a list of them (an ensemble: softmax probabilities averaged), on an ArrayDataset
    or an ImageFolder (decoded in ``num_workers`` DataLoader workers), each model normalised with
    ``normalization`` (one, or one per model). ``device`` None keeps the first model's; ``precision``
    "auto" is bf16 autocast on CUDA, fp32 on the CPU; ``tta_flip`` also averages each image's mirror.
    Only the final numbers are copied to the host.

    Returns plain values: ``n``, ``num_classes``, ``classes``, ``top1``, ``top5``, ``error``, ``top5_error``,
    ``loss`` (of the averaged probabilities), ``per_class``, ``confusion`` (rows: true class), ``members``
    (each model alone), ``tta`` and ``skipped`` (unreadable images of an ImageFolder).
    """
    models = [models] if isinstance(models, nn.Module) else list(models)
    if not models:
        raise ValueError("evaluate needs at least one model")
    norms = list(normalization) if isinstance(normalization, (list, tuple)) else [normalization] * len(models)
    if len(norms) != len(models):
        raise ValueError(f"{len(norms)} normalizations given for {len(models)} models")
    if any(n is None for n in norms):
        raise ValueError("every model needs a normalization (the preprocessing its training used)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    in_memory = not isinstance(data, ImageFolder)
    labels = data.y if in_memory else torch.as_tensor(data.targets, dtype=torch.int64)
    if in_memory and (data.x.dim() != 4 or data.x.shape[1] != 3 or len(data.x) != len(labels)):
        raise ValueError(f"expected images (N, 3, H, W) and N labels, got {tuple(data.x.shape)} and "
                         f"{tuple(labels.shape)}")
    if len(labels) == 0:
        raise ValueError("the dataset to evaluate is empty")
    num_classes = len(data.classes)
    outputs = [_num_outputs(m) for m in models]
    known = sorted({k for k in outputs if k is not None})
    if len(known) > 1:
        raise ValueError(f"the ensemble members have different class counts: {outputs}")
    if known and known[0] != num_classes:
        raise ValueError(f"the model has {known[0]} outputs but the dataset has {num_classes} classes")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, found {int(labels.min())}..{int(labels.max())}")

    device = device_of(models[0]) if device is None else resolve_device(device)
    autocast = use_bf16(device, precision)
    norms = [n.to(device) for n in norms]

    members = [_Tally(num_classes, device) for _ in models]
    ensemble = _Tally(num_classes, device, confusion=True)
    skipped: list[str] = []
    with contextlib.ExitStack() as restore:
        for m in models:  # moved outside inference mode: parameters made inside it could not be trained again
            restore.enter_context(in_mode(m.to(device)))
        bar = restore.enter_context(progress_bar(total=len(labels), desc="eval", unit="img", quiet=not progress))
        restore.enter_context(torch.inference_mode())
        for xb, yb in raw_image_batches(data, batch_size, num_workers, skipped, device.type == "cuda"):
            xb = xb.to(device, non_blocking=True)
            yb = yb.to(device, non_blocking=True).long()
            logps = []
            for model, norm, tally in zip(models, norms, members):
                x = eval_input(xb, device, norm, channels_last=channels_last)
                logp = _log_probs(model, x, tta_flip, autocast)
                tally.add(logp, yb)
                logps.append(logp)
            if len(logps) > 1:
                # the ensemble's probabilities are the mean of the members' probabilities
                logp = torch.logsumexp(torch.stack(logps), dim=0) - math.log(len(logps))
            ensemble.add(logp, yb)
            bar.update(len(yb))

    confusion = ensemble.confusion.cpu()
    counts, correct = confusion.sum(dim=1), confusion.diagonal()
    per_class = [{"class": name, "n": int(c), "correct": int(k), "accuracy": (int(k) / int(c) if c else None)}
                 for name, c, k in zip(data.classes, counts, correct)]
    if ensemble.n == 0:
        raise ValueError("no image could be evaluated (all were skipped as unreadable)")
    if skipped:
        warnings.warn(f"{len(skipped)} unreadable image(s) skipped, e.g. {skipped[0]}")
    return {"n": ensemble.n, "num_classes": num_classes, "classes": list(data.classes), "skipped": skipped,
            **ensemble.summary(), "per_class": per_class, "confusion": confusion.tolist(),
            "members": [t.summary() for t in members], "tta": "flip" if tta_flip else "none"}


# ----------------------------------------------------------------------------- prediction on image files

def load_image(path, image_size: int = 32, family: str = "cifar") -> torch.Tensor:
    """Decode an image file (:func:`resnetlab.images.open_rgb`) into uint8 (3, S, S), S = ``image_size``, as
    ``eval --data folder`` does: the shorter side resized to :func:`resnetlab.images.resize_side` (S for
    CIFAR-style models, S * 256 / 224 for ImageNet-style ones), the centre S x S kept."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image not found: {path}")
    return to_tensor(center_crop(open_rgb(path), image_size, resize_side(image_size, family)))


def predict(models, images, *, top_k: int = 5, device=None, precision: str = "auto",
            batch_size: int = 256, skip_unreadable: bool = False) -> list[dict]:
    """Top-k classes of image files by a :class:`LoadedModel` or an ensemble of them (probabilities averaged,
    each member's preprocessing its own): per image ``{"image", "top": [{"class", "index", "prob"}, ...],
    "probabilities"}``. An unreadable file is a ``ValueError`` naming it, or with ``skip_unreadable`` an
    ``{"image", "error"}`` entry in its place."""
    members = [models] if isinstance(models, LoadedModel) else list(models)
    if not members:
        raise ValueError("predict needs at least one model")
    if top_k < 1:
        raise ValueError(f"top_k must be positive, got {top_k}")
    missing = [m.path for m in members if m.normalization is None]
    if missing:
        raise ValueError(f"no preprocessing known for {', '.join(missing)}: give --mean R,G,B --std R,G,B")
    if len({m.num_classes for m in members}) > 1:
        raise ValueError(f"the ensemble members have different class counts: "
                         f"{[(m.path, m.num_classes) for m in members]}")
    check_same_classes(members)
    images = [os.fspath(p) for p in images]
    if not images:
        raise ValueError("no image files given")
    device = resolve_device(device)
    autocast = use_bf16(device, precision)
    first, decoded, errors = members[0], {}, {}
    for p in images:  # readability does not depend on the preprocessing: decide it once
        try:
            decoded[p] = load_image(p, first.image_size, first.family)
        except ValueError as e:
            if not skip_unreadable:
                raise
            errors[p] = str(e)
    if not decoded:
        raise ValueError(f"none of the {len(images)} image file(s) could be read: " + "; ".join(errors.values()))
    cache = {(first.image_size, first.family): torch.stack(list(decoded.values()))}
    probs = 0
    with torch.inference_mode():
        for m in members:
            key = (m.image_size, m.family)
            if key not in cache:  # decode each image once per preprocessing
                cache[key] = torch.stack([load_image(p, *key) for p in decoded])
            norm, model = m.normalization.to(device), m.model.to(device).eval()
            probs = probs + torch.cat([_log_probs(model, norm(chunk.to(device)), False, autocast).exp().cpu()
                                       for chunk in cache[key].split(batch_size)])
    probs = probs / len(members)
    classes = next((m.classes for m in members if m.classes is not None), None)
    k = min(top_k, probs.shape[1])
    rows = dict(zip(decoded, probs))
    results = []
    for path in images:
        if path in errors:
            results.append({"image": path, "error": errors[path]})
            continue
        values, indices = rows[path].topk(k)
        top = [{"class": classes[i] if classes else str(int(i)), "index": int(i), "prob": float(v)}
               for v, i in zip(values, indices)]
        results.append({"image": path, "top": top, "probabilities": rows[path].tolist()})
    return results


def check_same_classes(members: list[LoadedModel]) -> None:
    """Refuse an ensemble whose members name their classes differently."""
    named = [m for m in members if m.classes is not None]
    for m in named[1:]:
        if m.classes != named[0].classes:
            raise ValueError(f"{m.path} and {named[0].path} name their classes differently (or in another "
                             f"order); averaging their probabilities would mix classes")
