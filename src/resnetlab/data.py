"""Datasets, preprocessing and the training/evaluation batch streams.

Datasets
    ``load_dataset(name, data_dir)`` returns ``{"train", "test"[, "val"]}`` of :class:`ArrayDataset` (uint8
    images in memory) for ``"cifar10"``, ``"cifar100"`` (the official python format: the extracted folder or
    the ``.tar.gz`` itself, read without extracting) and ``"synthetic"`` (10 classes of coloured shapes made
    in memory, no files). ``download=True`` fetches the official archive into the cache folder
    (:func:`download_cifar`). ``val_split=5000`` holds out the paper's 45k/5k train/validation split
    (stratified by class, seeded by ``split_seed``).

    Image folders (``root/train/<class>/*.jpg``, ``root/val/...``, the ImageNet layout) are decoded with
    Pillow: small images once into memory (``load_dataset("folder", root)``), large ones in DataLoader
    workers at every step (:func:`load_folder`, :class:`FolderStream`, :func:`folder_eval_batches`).

Preprocessing
    :class:`Normalization`: ``"pixel"`` subtracts the per-pixel mean image of the training set (the paper's
    CIFAR preprocessing, on a 0..1 scale, no division); ``"channel"`` subtracts a per-channel mean and divides
    by a per-channel std. Its ``state_dict()`` goes into checkpoints.

Batches
    :class:`TrainStream` keeps the whole training set on the training device as uint8 and builds each batch
    with a handful of tensor ops (one ``index_select`` does pad-4 + random 32x32 crop + horizontal flip for
    the whole batch). ``batch(step)`` is a pure function of ``(seed, step)``: resuming at step ``s`` reproduces the
    exact batches, with no data-loader state to save. :func:`eval_batches` yields the evaluation batches in
    order.
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

CIFAR_URLS = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
}
CIFAR_MD5 = {
    "cifar10": "c58f30108f718f92721af3b95e74349a",
    "cifar100": "eb9058c3a382ffc7106e4002c42a8d85",
}
CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
CIFAR_ARCHIVES = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}
DATASETS = ("cifar10", "cifar100", "synthetic", "folder")

# The usual ImageNet per-channel statistics (0..1 scale), for image folders of natural photos.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------------------------------------
# In-memory datasets
# ----------------------------------------------------------------------------------------------------------

@dataclass
class ArrayDataset:
    """An in-memory image set: ``x`` uint8 ``(N, 3, H, W)`` on the CPU, ``y`` int64 ``(N,)``, class names."""
    x: torch.Tensor
    y: torch.Tensor
    classes: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.x.dtype != torch.uint8 or self.x.dim() != 4:
            raise ValueError(f"ArrayDataset.x must be uint8 (N, C, H, W), got {self.x.dtype} {tuple(self.x.shape)}")
        if self.y.dim() != 1 or len(self.y) != len(self.x):
            raise ValueError(f"ArrayDataset.y must be (N,) with N={len(self.x)}, got {tuple(self.y.shape)}")
        self.y = self.y.to(torch.int64)

    def __len__(self) -> int:
        return len(self.x)

    @property
    def image_size(self) -> int:
        return int(self.x.shape[-1])

    def subset(self, index) -> "ArrayDataset":
        """The images at ``index`` (a tensor/list of positions), same classes."""
        index = torch.as_tensor(index, dtype=torch.int64)
        return ArrayDataset(self.x[index], self.y[index], list(self.classes))


def _seed(*parts: int) -> int:
    """A 63-bit seed mixing integer ``parts`` well (distinct tuples give unrelated streams)."""
    words = np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def _generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(_seed(*parts))


# Stream tags, so that different uses of the same seed draw independent numbers.
_TAG_ORDER, _TAG_AUG, _TAG_SPLIT, _TAG_SYNTH, _TAG_FOLDER = 11, 12, 13, 14, 15


def split_train_val(data: ArrayDataset, val_split: int, split_seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
    """Hold out ``val_split`` images of ``data`` as a validation set, stratified by class.

    Each class gives ``val_split * n_class / N`` images (rounded by largest remainder, so the total is
    exact); which images is drawn with ``split_seed``. Both parts keep the original order of ``data``.
    CIFAR-10 with ``val_split=5000`` gives 500 validation images per class (the paper's 45k/5k split).
    """
    n = len(data)
    if not 0 < val_split < n:
        raise ValueError(f"val_split must be between 1 and {n - 1} for a training set of {n}, got {val_split}")
    g = _generator(split_seed, _TAG_SPLIT)
    order = torch.randperm(n, generator=g)
    counts = torch.bincount(data.y, minlength=max(len(data.classes), int(data.y.max()) + 1)).double()
    share = counts * val_split / n
    quota = share.floor().long()
    rest = val_split - int(quota.sum())
    if rest > 0:  # largest remainders first; ties go to the lower class index
        frac = share - quota.double()
        quota[torch.argsort(-frac, stable=True)[:rest]] += 1
    y_order = data.y[order]
    val = torch.cat([order[y_order == c][: int(q)] for c, q in enumerate(quota.tolist())])
    mask = torch.ones(n, dtype=torch.bool)
    mask[val] = False
    val = val.sort().values
    return data.subset(torch.nonzero(mask).flatten()), data.subset(val)


# ----------------------------------------------------------------------------------------------------------
# The synthetic dataset
# ----------------------------------------------------------------------------------------------------------

SYNTHETIC_SHAPES = ("disc", "square", "ring", "cross", "triangle")
SYNTHETIC_CLASSES = [f"{s}-{p}" for p in ("solid", "striped") for s in SYNTHETIC_SHAPES]


def make_synthetic(n: int, seed: int = 0, image_size: int = 32) -> ArrayDataset:
    """``n`` images of 10 classes: 5 shapes (disc, square, ring, cross, triangle) x 2 fills (solid, or
    striped with the background colour), deterministic in ``seed``.

    Every image draws its own position, size, colours (a light shape on a dark background), stripe
    angle/period and pixel noise, so the class is carried by the shape and the fill, not by colour. A
    ResNet-20 (SGD 0.05, batch 32, CPU) reaches about 75% test accuracy after 200 steps and keeps improving:
    quick to learn, not trivial. Labels are balanced (``i % 10`` before a seeded shuffle).
    """
    g = _generator(seed, _TAG_SYNTH, n, image_size)
    y = torch.arange(n) % 10
    y = y[torch.randperm(n, generator=g)]
    u = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    ax = torch.linspace(-1, 1, image_size)
    Y, X = torch.meshgrid(ax, ax, indexing="ij")                                  # (S, S)
    cx, cy = (u(n) - 0.5) * 0.6, (u(n) - 0.5) * 0.6                               # centre
    s = 0.4 + 0.35 * u(n)                                                          # size
    dx = (X[None] - cx[:, None, None]) / s[:, None, None]                         # shape coordinates
    dy = (Y[None] - cy[:, None, None]) / s[:, None, None]
    r = torch.sqrt(dx * dx + dy * dy)
    ax_, ay_ = dx.abs(), dy.abs()
    shape_masks = torch.stack([
        r < 1.0,                                                                   # disc
        torch.maximum(ax_, ay_) < 0.8,                                             # square
        (r > 0.55) & (r < 1.0),                                                    # ring
        (torch.minimum(ax_, ay_) < 0.3) & (torch.maximum(ax_, ay_) < 1.0),        # cross
        (dy < 0.75) & (ax_ < (dy + 1.0) * 0.55),                                   # triangle, pointing up
    ], 1)                                                                          # (n, 5, S, S)
    shape = y % 5
    mask = shape_masks[torch.arange(n), shape].float()
    theta = u(n) * math.pi
    period = 0.35 + 0.2 * u(n)
    phase = u(n) * 2 * math.pi
    t = dx * torch.cos(theta)[:, None, None] + dy * torch.sin(theta)[:, None, None]
    stripes = (torch.sin(t * (2 * math.pi) / period[:, None, None] * s[:, None, None] + phase[:, None, None]) > 0)
    striped = (y >= 5)[:, None, None]
    fg = 0.5 + 0.5 * u(n, 3)                                                       # a light shape...
    bg = 0.4 * u(n, 3)                                                             # ...on a dark background
    fg2 = bg                                                                       # stripes cut to the background
    fill = torch.where((striped & stripes)[:, None], fg2[:, :, None, None], fg[:, :, None, None])
    img = torch.where(mask[:, None] > 0, fill, bg[:, :, None, None].expand(-1, -1, image_size, image_size))
    img = img + 0.08 * torch.randn(img.shape, generator=g)
    x = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    return ArrayDataset(x.contiguous(), y.long(), list(SYNTHETIC_CLASSES))


# ----------------------------------------------------------------------------------------------------------
# CIFAR in the official python format
# ----------------------------------------------------------------------------------------------------------

class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the official CIFAR files, which hold only dicts, lists, strings and numpy arrays; refuses
    every other global, so a tampered file cannot run code."""
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of the CIFAR format")


def _unpickle(fh, where: str) -> dict:
    try:
        obj = _ArrayUnpickler(fh, encoding="latin1").load()
    except Exception as e:
        raise ValueError(f"{where}: not a CIFAR python batch ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: not a CIFAR python batch (a {type(obj).__name__}, not a dict)")
    # latin1 gives str keys for Python-2 pickles; be lenient with bytes keys from other writers.
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _as_str(v) -> str:
    return v.decode("latin1") if isinstance(v, bytes) else str(v)


_CIFAR_MEMBERS = {"cifar10": ("batches.meta", "data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                                 "data_batch_5", "test_batch"),
                   "cifar100": ("meta", "train", "test")}


class _CifarSource:
    """Reads the member files of a CIFAR python release from its folder or straight from the tarball (in one
    sequential pass: a gzip stream is slow to seek backwards, and the official archive is not in order)."""

    def __init__(self, name: str, path: str):
        self.name, self.path = name, path
        self.blobs = None
        if os.path.isfile(path):
            wanted = set(_CIFAR_MEMBERS[name])
            self.blobs = {}
            try:
                with tarfile.open(path, "r:*") as tar:
                    for m in tar:
                        base = m.name.rstrip("/").rsplit("/", 1)[-1]
                        if m.isfile() and base in wanted and base not in self.blobs:
                            self.blobs[base] = tar.extractfile(m).read()
            except (tarfile.TarError, OSError, EOFError) as e:
                raise ValueError(f"{path}: not a readable .tar.gz archive ({e})") from None

    def read(self, member: str) -> dict:
        if self.blobs is not None:
            if member not in self.blobs:
                raise FileNotFoundError(f"{self.path}: the archive has no {CIFAR_FOLDERS[self.name]}/{member}")
            return _unpickle(io.BytesIO(self.blobs[member]), f"{self.path}:{member}")
        where = os.path.join(self.path, member)
        if not os.path.isfile(where):
            raise FileNotFoundError(f"{where} not found (is {self.path} an extracted {self.name} folder?)")
        with open(where, "rb") as fh:
            return _unpickle(fh, where)

    def close(self):
        self.blobs = None


def _images(batch: dict, where: str) -> torch.Tensor:
    data = np.asarray(batch.get("data"))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{where}: 'data' must be uint8 (N, 3072), got {data.dtype} {data.shape}")
    # Each row holds the R, G and B planes of a 32x32 image, row-major: exactly (3, 32, 32).
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())


def find_cifar(name: str, data_dir: str | os.PathLike) -> str:
    """The extracted folder or archive of ``name`` at ``data_dir`` (the folder, its parent, or the tarball);
    ``FileNotFoundError`` if it is not there. ``find_cifar(name, default_cache_dir())`` checks the cache."""
    p = os.fspath(data_dir)
    folder, archive = CIFAR_FOLDERS[name], CIFAR_ARCHIVES[name]
    marker = "data_batch_1" if name == "cifar10" else "train"
    if os.path.isfile(p):
        return p
    if os.path.isdir(p):
        for cand in (p, os.path.join(p, folder)):
            if os.path.isfile(os.path.join(cand, marker)):
                return cand
        if os.path.isfile(os.path.join(p, archive)):
            return os.path.join(p, archive)
        raise FileNotFoundError(f"no {name} data in {p}: expected {folder}/ (with {marker}) or {archive}")
    raise FileNotFoundError(f"{name} data not found at {p}")


_find_cifar = find_cifar   # (older name)


def load_cifar(name: str, path: str | os.PathLike, *, labels: str = "fine") -> dict[str, ArrayDataset]:
    """Read CIFAR-10/100 from the extracted official folder or the ``.tar.gz`` (read in memory).

    CIFAR-100 uses its 100 ``fine`` labels unless ``labels="coarse"`` (the 20 superclasses).
    """
    if name not in CIFAR_FOLDERS:
        raise ValueError(f"unknown CIFAR dataset {name!r}; valid: {', '.join(CIFAR_FOLDERS)}")
    src = _CifarSource(name, _find_cifar(name, path))
    try:
        if name == "cifar10":
            meta = src.read("batches.meta")
            classes = [_as_str(c) for c in meta["label_names"]]
            parts = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
            key = "labels"
        else:
            if labels not in ("fine", "coarse"):
                raise ValueError(f"labels must be 'fine' or 'coarse', got {labels!r}")
            meta = src.read("meta")
            classes = [_as_str(c) for c in meta[f"{labels}_label_names"]]
            parts = {"train": ["train"], "test": ["test"]}
            key = f"{labels}_labels"
        out = {}
        for split, members in parts.items():
            xs, ys = [], []
            for m in members:
                batch = src.read(m)
                if key not in batch:
                    raise ValueError(f"{src.path}:{m}: no {key!r} in the batch (keys: {sorted(batch)})")
                xs.append(_images(batch, f"{src.path}:{m}"))
                ys.append(torch.as_tensor(np.asarray(batch[key], dtype=np.int64)))
            x, y = torch.cat(xs), torch.cat(ys)
            if len(y) != len(x) or (len(y) and (int(y.min()) < 0 or int(y.max()) >= len(classes))):
                raise ValueError(f"{src.path}: {split} labels do not match the {len(classes)} classes")
            out[split] = ArrayDataset(x, y, classes)
        return out
    finally:
        src.close()


def default_cache_dir() -> str:
    """``$RESNETLAB_CACHE`` or ``~/.cache/resnetlab``."""
    return os.environ.get("RESNETLAB_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "resnetlab")


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *, download: bool = False,
                 cache_dir: str | os.PathLike | None = None, val_split: int = 0, split_seed: int = 0,
                 synthetic_train: int = 5000, synthetic_test: int = 1000, synthetic_seed: int = 0,
                 labels: str = "fine", image_size: int = 32) -> dict[str, ArrayDataset]:
    """Load a dataset as ``{"train", "test"}`` (+ ``"val"`` when ``val_split > 0``) of :class:`ArrayDataset`.

    name: ``"cifar10"``, ``"cifar100"`` or ``"synthetic"``.
    data_dir: the extracted official folder, its parent, or the ``.tar.gz``; when omitted, the cache folder
        (``cache_dir``, else ``$RESNETLAB_CACHE``, else ``~/.cache/resnetlab``) is searched. With
        ``download=True`` the official archive is fetched (into ``data_dir`` if given, else the cache) when
        the data is not there.
    val_split: images held out of the training set for validation (5000: the paper's 45k/5k split),
        stratified by class and drawn with ``split_seed``; 0 trains on all of it.
    The synthetic set needs no files: ``synthetic_train``/``synthetic_test`` images, 10 classes, 32x32.
    ``"folder"``: a tree of small images (``data_dir/train/<class>/*``, ``data_dir/test`` or ``data_dir/val``)
    decoded into memory at ``image_size`` (:func:`load_folder_arrays`); ``val/`` serves as ``"test"`` when
    there is no ``test/``. Large images (ImageNet) stream from disk instead: :func:`load_folder`.
    """
    if name == "synthetic":
        out = {"train": make_synthetic(synthetic_train, seed=synthetic_seed),
               "test": make_synthetic(synthetic_test, seed=synthetic_seed + 1_000_003)}
    elif name in CIFAR_FOLDERS:
        if data_dir is None:
            cache = os.fspath(cache_dir) if cache_dir is not None else default_cache_dir()
            try:
                data_dir = _find_cifar(name, cache)
            except FileNotFoundError:
                if not download:
                    raise FileNotFoundError(
                        f"{name} not found in the cache {cache}; pass its folder or .tar.gz as data_dir "
                        f"(--data-dir), or download=True (--download) to fetch it") from None
                data_dir = download_cifar(name, cache)
        elif download and not os.path.isfile(data_dir):
            try:
                _find_cifar(name, data_dir)
            except FileNotFoundError:  # download into the folder given (created if needed)
                data_dir = download_cifar(name, data_dir)
        out = load_cifar(name, data_dir, labels=labels)
    elif name == "folder":
        if data_dir is None:
            raise ValueError("the folder dataset needs data_dir (--data-dir ROOT with ROOT/train/<class>/*)")
        out = load_folder_arrays(data_dir, image_size=image_size)
        if "test" not in out and "val" in out:
            out["test"] = out.pop("val")
        if "test" not in out:
            raise FileNotFoundError(f"{data_dir}: no test/ or val/ folder next to train/")
        if val_split and "val" in out:
            raise ValueError(f"{data_dir} has its own val/ folder; use val_split=0")
    else:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    if val_split:
        out["train"], out["val"] = split_train_val(out["train"], int(val_split), split_seed)
    return out


# ----------------------------------------------------------------------------------------------------------
# Normalisation
# ----------------------------------------------------------------------------------------------------------

class Normalization:
    """Maps images to the network's input scale: ``(x / 255 - mean) / std``.

    mode ``"pixel"``: ``mean`` is the mean training image ``(3, H, W)`` and ``std`` is 1 (the paper: "the
    per-pixel mean subtracted"). mode ``"channel"``: ``mean``/``std`` are per-channel ``(3,)``, given or
    computed on the training set. Values are on the 0..1 scale.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, mode: str):
        if mode not in ("pixel", "channel"):
            raise ValueError(f"normalization mode must be 'pixel' or 'channel', got {mode!r}")
        mean = torch.as_tensor(mean, dtype=torch.float32)
        std = torch.as_tensor(std, dtype=torch.float32)
        if mode == "channel" and (mean.dim() != 1 or std.dim() != 1):
            raise ValueError("channel normalization needs per-channel mean and std vectors")
        if mode == "pixel" and mean.dim() != 3:
            raise ValueError("pixel normalization needs a (C, H, W) mean image")
        if bool((std <= 0).any()):
            raise ValueError("normalization std must be positive")
        self.mode, self.mean, self.std = mode, mean, std
        self._cache = {}

    @classmethod
    def fit(cls, x_uint8: torch.Tensor, mode: str = "channel") -> "Normalization":
        """Statistics of a uint8 ``(N, C, H, W)`` training set (computed in float64 over chunks)."""
        if x_uint8.dtype != torch.uint8 or x_uint8.dim() != 4:
            raise ValueError(f"Normalization.fit needs uint8 (N, C, H, W) images, got {x_uint8.dtype} "
                             f"{tuple(x_uint8.shape)}")
        if mode not in ("pixel", "channel"):
            raise ValueError(f"normalization mode must be 'pixel' or 'channel', got {mode!r}")
        n, c = x_uint8.shape[:2]
        s1 = torch.zeros(x_uint8.shape[1:], dtype=torch.float64)
        s2 = torch.zeros(c, dtype=torch.float64)
        for i in range(0, n, 4096):
            chunk = x_uint8[i:i + 4096].double()
            s1 += chunk.sum(0)
            s2 += chunk.square().sum((0, 2, 3))
        mean_img = s1 / n / 255.0
        if mode == "pixel":
            return cls(mean_img.float(), torch.ones(()), "pixel")
        m = mean_img.mean((1, 2))
        count = n * x_uint8.shape[2] * x_uint8.shape[3]
        var = s2 / count / 255.0 ** 2 - m * m
        return cls(m.float(), var.clamp_min(1e-12).sqrt().float(), "channel")

    @classmethod
    def from_values(cls, mean, std) -> "Normalization":
        """Explicit per-channel values on the 0..1 scale, e.g. ``IMAGENET_MEAN, IMAGENET_STD``."""
        return cls(torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32), "channel")

    def _params(self, device, dtype=torch.float32, hw: tuple[int, int] | None = None):
        """(scale, shift) so that ``x_uint8 * scale - shift`` = ``(x / 255 - mean) / std``; with ``hw``, both
        are full contiguous ``(C, H, W)`` tensors (an elementwise op on equal shapes runs faster on the CPU
        than one that broadcasts a ``(C, 1, 1)``)."""
        key = (str(device), dtype, hw)
        if key not in self._cache:
            std = self.std.double()
            mean = self.mean.double()
            if self.mode == "channel":
                mean, std = mean[:, None, None], std[:, None, None]
            scale = (1.0 / (255.0 * std)).to(device=device, dtype=dtype)
            shift = (mean / std).to(device=device, dtype=dtype)
            if scale.dim() == 0:
                scale = scale.reshape(1, 1, 1)
            if hw is not None:
                c = len(self.mean) if self.mode == "channel" else self.mean.shape[0]
                scale = scale.expand(c, *hw).contiguous()
                shift = shift.expand(c, *hw).contiguous()
            self._cache[key] = (scale, shift)
        return self._cache[key]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, C, H, W)`` in 0..255, or float in 0..1, to normalised float32."""
        if x.dim() != 4:
            raise ValueError(f"expected images (B, C, H, W), got shape {tuple(x.shape)}")
        if self.mode == "pixel" and tuple(x.shape[1:]) != tuple(self.mean.shape):
            raise ValueError(f"pixel normalization was fitted on {tuple(self.mean.shape)} images, "
                             f"got {tuple(x.shape[1:])}")
        if self.mode == "channel" and x.shape[1] != len(self.mean):
            raise ValueError(f"normalization has {len(self.mean)} channels, images have {x.shape[1]}")
        if x.is_floating_point():
            scale, shift = self._params(x.device, x.dtype, tuple(x.shape[-2:]))
            return x.mul(scale * 255.0).sub_(shift)
        scale, shift = self._params(x.device, torch.float32, tuple(x.shape[-2:]))
        return x.float().mul_(scale).sub_(shift)

    def state_dict(self) -> dict:
        """``{"mode": str, "mean": tensor, "std": tensor}`` (fits a weights_only checkpoint)."""
        return {"mode": self.mode, "mean": self.mean.detach().cpu().clone(), "std": self.std.detach().cpu().clone()}

    @classmethod
    def from_state_dict(cls, d: dict) -> "Normalization":
        try:
            return cls(d["mean"], d["std"], d["mode"])
        except (KeyError, TypeError):
            raise ValueError(f"not a Normalization state dict: {d!r:.200}") from None

    def to(self, device) -> "Normalization":
        """A copy whose statistics live on ``device`` (the cached scale/shift are made there anyway)."""
        return Normalization(self.mean.to(device), self.std.to(device), self.mode)

    def __repr__(self) -> str:
        if self.mode == "pixel":
            return f"Normalization(pixel, mean image {tuple(self.mean.shape)})"
        return f"Normalization(channel, mean={self.mean.tolist()}, std={self.std.tolist()})"


# ----------------------------------------------------------------------------------------------------------
# Batches for training and evaluation
# ----------------------------------------------------------------------------------------------------------

def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order in which epoch ``epoch`` visits ``n`` examples: a permutation seeded by (seed, epoch)."""
    return torch.randperm(n, generator=_generator(seed, _TAG_ORDER, epoch))


class TrainStream:
    """Augmented training batches made with whole-batch tensor ops on the training device.

    ``batch(step)`` takes the ``step``-th slice of the permutation of epoch ``step // steps_per_epoch``
    (seeded by ``(seed, epoch)``); then, with numbers drawn from a generator seeded by ``(seed, step)``, it
    pads ``pad`` pixels on each side, crops a random ``H x W`` window and mirrors it with probability 1/2,
    and normalises. A pure function of ``(seed, step)``: nothing to save for resuming, and the same batches
    on every device.

    How: the training set is padded once and stored on ``device`` as uint8 together with its mirror image
    (image ``N + i`` is image ``i`` flipped), so an augmented crop is ``H`` runs of ``W`` consecutive bytes
    per channel. One ``index_select`` over a strided "every run of W bytes" view copies the whole batch;
    the flip is a choice of source image, not an extra pass. Indices are computed on the CPU and sent in
    one transfer. No per-image Python, no data-loader workers.

    ``padding``: the value of the border.
        ``"black"`` (default): pixel value 0 before normalisation, like ``RandomCrop(32, padding=4)`` on the
        raw image followed by ``ToTensor``/``Normalize`` (torchvision, akamaster's CIFAR ResNets).
        ``"mean"``: 0 after normalisation, i.e. the image is normalised first and then padded with zeros
        (the Caffe/Torch pipelines of the paper's era); with ``"pixel"`` normalisation the mean image is
        subtracted at the pixels the crop came from.
    ``augment=False`` gives the same order without pad/crop/flip. The last ``len(data) % batch_size``
    images of each epoch's order are left out (a different set each epoch).
    """

    def __init__(self, data: ArrayDataset, batch_size: int, *, device="cpu", seed: int = 0,
                 normalization: Normalization | None = None, augment: bool = True, channels_last: bool = False,
                 pad: int = 4, padding: str = "black"):
        if not 1 <= batch_size <= len(data):
            raise ValueError(f"batch_size must be between 1 and the dataset size {len(data)}, got {batch_size}")
        if padding not in ("black", "mean"):
            raise ValueError(f"padding must be 'black' or 'mean', got {padding!r}")
        if pad < 0:
            raise ValueError(f"pad must be >= 0, got {pad}")
        self.device = torch.device(device)
        self.batch_size, self.seed, self.augment, self.pad = int(batch_size), int(seed), bool(augment), int(pad)
        self.channels_last, self.padding = bool(channels_last), padding
        self.normalization = normalization if normalization is not None else Normalization.fit(data.x, "channel")
        self.n, self.classes = len(data), list(data.classes)
        self.steps_per_epoch = self.n // self.batch_size
        n, c, h, w = data.x.shape
        p = self.pad
        hp, wp = h + 2 * p, w + 2 * p
        self.shape, self._hw_pad = (c, h, w), (hp, wp)
        x = data.x.to(self.device)
        xp = torch.zeros((2 * n, c, hp, wp), dtype=torch.uint8, device=self.device)
        xp[:n, :, p:p + h, p:p + w] = x
        xp[n:, :, p:p + h, p:p + w] = x.flip(-1)
        del x
        self.x = xp                                      # (2N, C, H+2p, W+2p): padded images, then mirrors
        self.y = data.y.clone()                          # labels stay on the CPU, sent with the indices
        flat = xp.view(-1)
        # Row k of this view is the run of W bytes starting at flat position k (a view, no copy).
        self._runs = flat.as_strided((flat.numel() - w + 1, w), (1, 1))
        self._img_stride = c * hp * wp
        # Offset of the start of (channel, row) of a crop at (0, 0), relative to the image start.
        self._rel = ((torch.arange(c) * (hp * wp))[:, None] + torch.arange(h)[None, :] * wp).view(1, c, h)
        self._norm_shift = None
        if padding == "mean":
            # The normalisation shift (mean / std) laid out like a padded image and its mirror, 0 in the
            # border: out = raw * scale - shift_crop is then 0 (the mean colour) in the border.
            _, shift = self.normalization._params("cpu")
            t = torch.zeros((2, c, hp, wp))
            t[0, :, p:p + h, p:p + w] = shift.expand(c, h, w)
            t[1] = t[0].flip(-1)
            t = t.to(self.device)
            self._norm_shift = t.view(-1).as_strided((t.numel() - w + 1, w), (1, 1))
            self._shift_keep = t
        self._epoch, self._order = None, None
        self._pin = self.device.type == "cuda"

    def __len__(self) -> int:
        return self.steps_per_epoch

    def order(self, epoch: int) -> torch.Tensor:
        """The permutation of epoch ``epoch`` (CPU; the current one is cached)."""
        if self._epoch != epoch:
            self._order = epoch_order(self.n, self.seed, epoch)
            self._epoch = epoch
        return self._order

    def indices(self, step: int) -> torch.Tensor:
        """Dataset positions of the images of batch ``step`` (CPU int64)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch, i = divmod(int(step), self.steps_per_epoch)
        return self.order(epoch)[i * self.batch_size:(i + 1) * self.batch_size]

    def augmentation(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(dy, dx, flip)`` of each image of batch ``step``: the crop's top-left corner in the padded
        image (``0..2*pad``) and the mirror flag, drawn from the generator seeded by (seed, step)."""
        b = self.batch_size
        if not self.augment:
            return (torch.full((b,), self.pad), torch.full((b,), self.pad), torch.zeros(b, dtype=torch.bool))
        g = _generator(self.seed, _TAG_AUG, step)
        off = torch.randint(0, 2 * self.pad + 1, (2, b), generator=g)
        flip = torch.randint(0, 2, (b,), generator=g).bool()
        return off[0], off[1], flip

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)``: x float32 ``(B, C, H, W)`` normalised (augmented if ``augment``), y int64 ``(B,)``."""
        idx = self.indices(step)
        dy, dx, flip = self.augmentation(step)
        c, h, w = self.shape
        wp = self._hw_pad[1]
        flip = flip.long()
        # The mirror of the crop at column dx of image i is the crop at column 2p - dx of image N + i.
        col = torch.where(flip.bool(), 2 * self.pad - dx, dx)
        corner = dy * wp + col                                          # (B,)
        start = ((idx + self.n * flip) * self._img_stride + corner)[:, None, None] + self._rel   # (B, C, H)
        parts = [start.view(-1), self.y[idx]]
        if self._norm_shift is not None:
            parts.append(((flip * self._img_stride + corner)[:, None, None] + self._rel).view(-1))
        packed = torch.cat(parts)
        if self.device.type != "cpu":
            packed = (packed.pin_memory() if self._pin else packed).to(self.device, non_blocking=True)
        nr = start.numel()
        b = len(idx)
        raw = self._runs.index_select(0, packed[:nr]).view(b, c, h, w)
        y = packed[nr:nr + b]
        if self._norm_shift is None:
            x = self.normalization(raw)
        else:
            scale, _ = self.normalization._params(self.device, torch.float32, (h, w))
            shift = self._norm_shift.index_select(0, packed[nr + b:]).view(b, c, h, w)
            x = raw.float().mul_(scale).sub_(shift)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y


def eval_batches(data: ArrayDataset, batch_size: int, *, device="cpu", normalization: Normalization,
                 flip: bool = False, channels_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """All of ``data`` in order, in batches of ``batch_size`` (the last one may be smaller), normalised,
    not augmented; ``flip=True`` mirrors every image (for flip test-time averaging)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    for i in range(0, len(data), batch_size):
        raw = data.x[i:i + batch_size]
        if device.type == "cuda":
            raw = raw.pin_memory()
        yield _eval_input(raw, device, normalization, flip, channels_last), \
            data.y[i:i + batch_size].to(device, non_blocking=True)


def _eval_input(raw: torch.Tensor, device: torch.device, normalization, flip: bool,
                channels_last: bool) -> torch.Tensor:
    """uint8 (B,3,H,W) -> the normalised float batch on ``device`` (mirrored if ``flip``)."""
    raw = raw.to(device, non_blocking=True)
    if flip:
        raw = raw.flip(-1)
    x = normalization(raw)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


# ----------------------------------------------------------------------------------------------------------
# Downloading the official archives
# ----------------------------------------------------------------------------------------------------------

def _progress(done: int, total: int | None, t0: float, label: str, final: bool = False) -> None:
    rate = done / max(time.perf_counter() - t0, 1e-9)
    if total:
        eta = (total - done) / rate if rate > 0 else float("inf")
        msg = f"\r{label}: {done / 2**20:7.1f}/{total / 2**20:.1f} MiB ({100 * done / total:5.1f}%) " \
              f"{rate / 2**20:6.2f} MiB/s ETA {eta:5.0f}s"
    else:
        msg = f"\r{label}: {done / 2**20:7.1f} MiB {rate / 2**20:6.2f} MiB/s"
    sys.stderr.write(msg + ("\n" if final else ""))
    sys.stderr.flush()


def _check_members(tar: tarfile.TarFile, archive: str) -> list[tarfile.TarInfo]:
    """The archive's members if every one is a plain file or folder inside the extraction folder."""
    members = tar.getmembers()
    for m in members:
        name = m.name
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or os.path.isabs(name) or (len(name) > 1 and name[1] == ":"):
            raise ValueError(f"{archive}: refusing to extract {name!r}: absolute path")
        if ".." in parts:
            raise ValueError(f"{archive}: refusing to extract {name!r}: path leaves the extraction folder")
        if not (m.isfile() or m.isdir()):
            raise ValueError(f"{archive}: refusing to extract {name!r}: links and special files are not allowed")
    return members


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Extract a tar archive into ``dest`` after checking every member (no absolute paths, no ``..``, no
    links or devices); also uses tarfile's ``"data"`` filter where Python has it."""
    archive, dest = os.fspath(archive), os.fspath(dest)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = _check_members(tar, archive)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # pragma: no cover - Python without extraction filters
                tar.extractall(dest, members=members)
    except tarfile.TarError as e:
        raise ValueError(f"{archive}: not a readable tar archive ({e})") from None


def _md5(path: str) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_cifar(name: str, cache_dir: str | os.PathLike | None = None, *, url: str | None = None,
                   md5: str | None = None, quiet: bool = False) -> str:
    """Fetch and extract the official CIFAR-10/100 python archive; returns the extracted folder.

    The archive is downloaded to a temporary file in ``cache_dir`` (default ``$RESNETLAB_CACHE`` or
    ``~/.cache/resnetlab``) with a progress line on stderr, its MD5 checked (a mismatch deletes it and raises
    ``ValueError`` naming both sums), renamed into place, then extracted member-checked into a temporary
    folder that is renamed into place: an interrupted run leaves no half-written archive or folder.
    ``url``/``md5`` override the official ones (a mirror). Already there: nothing is fetched.
    """
    if name not in CIFAR_URLS:
        raise ValueError(f"unknown CIFAR dataset {name!r}; valid: {', '.join(CIFAR_URLS)}")
    cache = os.fspath(cache_dir) if cache_dir is not None else default_cache_dir()
    url = url or CIFAR_URLS[name]
    md5 = (md5 or CIFAR_MD5[name]).lower()
    folder = os.path.join(cache, CIFAR_FOLDERS[name])
    marker = "data_batch_1" if name == "cifar10" else "train"
    if os.path.isfile(os.path.join(folder, marker)):
        return folder
    os.makedirs(cache, exist_ok=True)
    archive = os.path.join(cache, CIFAR_ARCHIVES[name])
    if not (os.path.isfile(archive) and _md5(archive) == md5):
        fd, tmp = tempfile.mkstemp(prefix=".download-", suffix=".part", dir=cache)
        try:
            h = hashlib.md5()
            with os.fdopen(fd, "wb") as out:
                try:
                    resp = urllib.request.urlopen(url, timeout=60)
                except (OSError, ValueError) as e:
                    raise ValueError(f"could not download {name} from {url}: {e}") from None
                with resp:
                    total = int(resp.headers.get("Content-Length") or 0) or None
                    done, t0, last = 0, time.perf_counter(), 0.0
                    while True:
                        chunk = resp.read(1 << 20)
                        if not chunk:
                            break
                        out.write(chunk)
                        h.update(chunk)
                        done += len(chunk)
                        now = time.perf_counter()
                        if not quiet and now - last > 0.5:
                            _progress(done, total, t0, f"downloading {CIFAR_ARCHIVES[name]}")
                            last = now
                    if not quiet:
                        _progress(done, total, t0, f"downloading {CIFAR_ARCHIVES[name]}", final=True)
                    if total is not None and done != total:
                        raise ValueError(f"download of {url} stopped after {done} of {total} bytes")
            actual = h.hexdigest()
            if actual != md5:
                raise ValueError(f"MD5 mismatch for {url}: expected {md5}, got {actual}; the download was "
                                 f"deleted (a corrupted or different file)")
            os.replace(tmp, archive)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    work = tempfile.mkdtemp(prefix=".extract-", dir=cache)
    try:
        safe_extract(archive, work)
        extracted = os.path.join(work, CIFAR_FOLDERS[name])
        if not os.path.isfile(os.path.join(extracted, marker)):
            raise ValueError(f"{archive}: no {CIFAR_FOLDERS[name]}/{marker} inside (not the {name} archive?)")
        if os.path.isdir(folder):  # an incomplete folder from elsewhere: replace it
            shutil.rmtree(folder)
        os.replace(extracted, folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder


# ----------------------------------------------------------------------------------------------------------
# Image folders (ImageNet layout), decoded with Pillow in DataLoader workers
# ----------------------------------------------------------------------------------------------------------

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


def to_rgb(im):
    """Any Pillow image -> 8-bit RGB: grey, palette, CMYK and 16-bit images converted, transparent pixels
    composited onto white (the same pixels for training, evaluation and ``resnetlab predict``)."""
    from PIL import Image
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(im, dtype=np.float32)
        if im.mode.startswith("I;16") or (im.mode == "I" and arr.max() > 255):
            arr = arr / 257.0  # 16-bit range -> 8-bit range
        elif im.mode == "F" and arr.max() <= 1.0:
            arr = arr * 255.0
        im = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


class ImageFolder(torch.utils.data.Dataset):
    """Images in ``root/<class>/<file>``; classes are the sorted sub-folder names (or ``classes``).

    Items are ``(uint8 (3, S, S), label)``. ``train=True``: random-resized crop (area ``scale`` of the image,
    aspect ``ratio``) to ``S x S`` and a random horizontal flip, drawn from the per-item seed the sampler
    passes (``dataset[(index, seed)]``); ``train=False``: resize the shorter side to ``resize`` (default
    ``S * 256 / 224``) and take the centre ``S x S``. Grey, palette, CMYK and RGBA images become RGB (see
    :func:`to_rgb`). An unreadable or truncated file raises ``ValueError`` naming it (``on_bad_image="error"``) or
    is skipped and reported (``"skip"``).
    """

    def __init__(self, root: str | os.PathLike, *, classes: list[str] | None = None, train: bool = False,
                 image_size: int = 224, resize: int | None = None, on_bad_image: str = "error",
                 scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)):
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"image folder {root} not found")
        if on_bad_image not in ("error", "skip"):
            raise ValueError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
        found = sorted(e.name for e in os.scandir(root) if e.is_dir())
        if classes is None:
            classes = found
        else:
            extra = sorted(set(found) - set(classes))
            if extra:
                raise ValueError(f"{root}: class folder(s) {', '.join(extra[:5])} are not among the "
                                 f"{len(classes)} training classes")
        if not classes:
            raise ValueError(f"{root}: no class sub-folders (expected {root}/<class>/<image files>)")
        self.root, self.classes = root, list(classes)
        self.samples: list[tuple[str, int]] = []
        for label, name in enumerate(self.classes):
            folder = os.path.join(root, name)
            if not os.path.isdir(folder):
                continue
            for dirpath, _, files in sorted(os.walk(folder)):
                for f in sorted(files):
                    if f.lower().endswith(IMAGE_EXTENSIONS):
                        self.samples.append((os.path.join(dirpath, f), label))
        if not self.samples:
            raise ValueError(f"{root}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in the class folders")
        self.train, self.image_size, self.on_bad_image = bool(train), int(image_size), on_bad_image
        self.resize = int(resize) if resize else int(round(image_size * 256 / 224))
        self.scale, self.ratio = tuple(scale), tuple(ratio)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def _open(self, path: str):
        from PIL import Image
        try:
            with Image.open(path) as img:
                img.load()   # decode now: a truncated file fails here, with its path known
                return to_rgb(img)
        except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, ... for broken files
            raise ValueError(f"unreadable image {path}: {type(e).__name__}: {e}") from None

    def _train_box(self, w: int, h: int, rng) -> tuple[float, float, float, float]:
        """A random crop box covering ``scale`` of the area with aspect ``ratio`` (10 tries, then centre)."""
        area = w * h
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            a = area * rng.uniform(*self.scale)
            r = math.exp(rng.uniform(lo, hi))
            cw, ch = math.sqrt(a * r), math.sqrt(a / r)
            if cw <= w and ch <= h:
                left, top = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
                return left, top, left + cw, top + ch
        side = min(w, h)  # fallback: the largest centred square
        return (w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2

    def load(self, index: int, seed: int | None = None) -> torch.Tensor:
        """Image ``index`` transformed: uint8 ``(3, S, S)`` (raises ``ValueError`` with the path if broken)."""
        import random

        from PIL import Image
        path = self.samples[index][0]
        img = self._open(path)
        w, h = img.size
        s = self.image_size
        if self.train:
            rng = random.Random(seed if seed is not None else index)
            box = self._train_box(w, h, rng)
            img = img.resize((s, s), Image.BILINEAR, box=box)  # crop and resize in one resampling
            if rng.random() < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
        else:
            # Resize the shorter side to `resize`, then take the centre s x s: one resampling of the box of
            # the original image that maps onto that centre square.
            f = self.resize / min(w, h)
            cw, ch = s / f, s / f
            box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
            img = img.resize((s, s), Image.BILINEAR, box=box)
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, None)
        try:
            return self.load(index, seed), self.samples[index][1]
        except ValueError:
            if self.on_bad_image == "error":
                raise
            return None, self.samples[index][0]   # skipped: the collate function reports the path


def _collate_images(items):
    """(x uint8 (b, 3, S, S), y int64 (b,), paths of skipped images)."""
    good = [(x, y) for x, y in items if x is not None]
    bad = [p for x, p in items if x is None]
    if not good:
        return None, None, bad
    return torch.stack([x for x, _ in good]), torch.tensor([y for _, y in good], dtype=torch.int64), bad


def load_folder(root: str | os.PathLike, *, image_size: int = 224, resize: int | None = None,
                on_bad_image: str = "error") -> dict[str, ImageFolder]:
    """``root/train`` (training transforms) and ``root/val`` and/or ``root/test`` (evaluation transforms)
    as :class:`ImageFolder` datasets sharing the training classes; keys are the folder names found."""
    root = os.fspath(root)
    if not os.path.isdir(os.path.join(root, "train")):
        raise FileNotFoundError(f"{root}: no train/ folder (expected the layout root/train/<class>/*.jpg, "
                                f"root/val/<class>/*.jpg)")
    out = {"train": ImageFolder(os.path.join(root, "train"), train=True, image_size=image_size, resize=resize,
                                on_bad_image=on_bad_image)}
    for split in ("val", "test"):
        if os.path.isdir(os.path.join(root, split)):
            out[split] = ImageFolder(os.path.join(root, split), classes=out["train"].classes, train=False,
                                     image_size=image_size, resize=resize, on_bad_image=on_bad_image)
    return out


def _report_skipped(paths: list[str], where: str) -> None:
    for p in paths:
        print(f"warning: skipped unreadable image {p} ({where})", file=sys.stderr)


class _StepBatches(torch.utils.data.Sampler):
    """Yields the items of batches ``start, start + 1, ...`` of a :class:`FolderStream`."""

    def __init__(self, stream: "FolderStream", start: int):
        self.stream, self.start = stream, start

    def __iter__(self):
        step = self.start
        while True:
            yield self.stream.items(step)
            step += 1


class FolderStream:
    """Training batches from an :class:`ImageFolder` with the interface of :class:`TrainStream`.

    ``batch(step)`` is a pure function of ``(seed, step)``: the epoch order is the permutation seeded by
    ``(seed, epoch)`` and each image's crop/flip is seeded by ``(seed, step, position)``, so the result does
    not depend on the number of workers. Sequential steps come from one running DataLoader (workers decode
    ahead); asking for another step restarts it there. Skipped images (``on_bad_image="skip"``) make that
    batch smaller; their paths are in ``skipped`` and reported on stderr.
    """

    def __init__(self, data: ImageFolder, batch_size: int, *, device="cpu", seed: int = 0,
                 normalization: Normalization | None = None, num_workers: int = 2, channels_last: bool = False,
                 prefetch_factor: int = 2):
        if not 1 <= batch_size <= len(data):
            raise ValueError(f"batch_size must be between 1 and the dataset size {len(data)}, got {batch_size}")
        self.data, self.batch_size, self.seed = data, int(batch_size), int(seed)
        self.device = torch.device(device)
        self.normalization = normalization or Normalization.from_values(IMAGENET_MEAN, IMAGENET_STD)
        self.num_workers, self.channels_last, self.prefetch_factor = int(num_workers), channels_last, prefetch_factor
        self.n, self.classes = len(data), list(data.classes)
        self.steps_per_epoch = self.n // self.batch_size
        self.skipped: list[str] = []
        self._it, self._next, self._epoch, self._order = None, None, None, None

    def __len__(self) -> int:
        return self.steps_per_epoch

    def items(self, step: int) -> list[tuple[int, int]]:
        """``(index, seed)`` of each image of batch ``step``."""
        epoch, i = divmod(int(step), self.steps_per_epoch)
        if self._epoch != epoch:
            self._order, self._epoch = epoch_order(self.n, self.seed, epoch), epoch
        idx = self._order[i * self.batch_size:(i + 1) * self.batch_size].tolist()
        return [(j, _seed(self.seed, _TAG_FOLDER, step, k)) for k, j in enumerate(idx)]

    def _start(self, step: int) -> None:
        self.close()
        kw = {}
        if self.num_workers > 0:
            kw["prefetch_factor"] = self.prefetch_factor
        loader = torch.utils.data.DataLoader(self.data, batch_sampler=_StepBatches(self, step),
                                             num_workers=self.num_workers, collate_fn=_collate_images,
                                             pin_memory=self.device.type == "cuda", **kw)
        self._it, self._next = iter(loader), step

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if self._it is None or step != self._next:
            self._start(step)
        x, y, bad = next(self._it)
        self._next = step + 1
        if bad:
            self.skipped.extend(bad)
            _report_skipped(bad, f"training batch {step}")
        if x is None:
            raise ValueError(f"every image of training batch {step} was unreadable: {', '.join(bad[:3])}")
        x = self.normalization(x.to(self.device, non_blocking=True))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def close(self) -> None:
        """Stop the DataLoader workers (also done when the stream is garbage-collected)."""
        self._it = None

    def __del__(self):
        self.close()


def folder_eval_batches(data: ImageFolder, batch_size: int, *, device="cpu", normalization: Normalization,
                        num_workers: int = 2, flip: bool = False, channels_last: bool = False,
                        skipped: list | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """All images of an :class:`ImageFolder` in order, with its (evaluation) transforms, normalised;
    ``flip=True`` mirrors them. Paths of skipped images are appended to ``skipped`` and reported."""
    device = torch.device(device)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         collate_fn=_collate_images, pin_memory=device.type == "cuda")
    for x, y, bad in loader:
        if bad:
            if skipped is not None:
                skipped.extend(bad)
            _report_skipped(bad, "evaluation")
        if x is None:
            continue
        yield _eval_input(x, device, normalization, flip, channels_last), y.to(device, non_blocking=True)


def load_folder_arrays(root: str | os.PathLike, *, image_size: int = 32, resize: int | None = None,
                       on_bad_image: str = "error", num_workers: int = 0) -> dict[str, ArrayDataset]:
    """An image-folder tree (``root/train``, ``root/val`` and/or ``root/test``) decoded into memory as
    :class:`ArrayDataset` splits, for small images that fit in memory (then :class:`TrainStream` does the
    augmentation, as for CIFAR). Each image: shorter side resized to ``resize`` (default ``image_size``),
    centre ``image_size`` square; CIFAR-sized PNGs come back pixel for pixel. Skipped images are reported."""
    sets = load_folder(root, image_size=image_size, resize=resize or image_size, on_bad_image=on_bad_image)
    out = {}
    for split, ds in sets.items():
        ds.train = False   # the deterministic resize + centre crop for every split
        loader = torch.utils.data.DataLoader(ds, batch_size=256, shuffle=False, num_workers=num_workers,
                                             collate_fn=_collate_images)
        xs, ys, bad = [], [], []
        for x, y, b in loader:
            bad += b
            if x is not None:
                xs.append(x)
                ys.append(y)
        _report_skipped(bad, f"{split} split of {root}")
        if not xs:
            raise ValueError(f"{os.path.join(os.fspath(root), split)}: no readable images")
        out[split] = ArrayDataset(torch.cat(xs), torch.cat(ys), list(ds.classes))
    return out
