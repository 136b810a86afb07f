"""Datasets: every image set the package reads (:data:`DATASETS`), as uint8 images in memory.

CIFAR-10/100 in the official python format (folder or ``.tar.gz``, read by an unpickler that refuses anything
but the format's arrays; checked downloads), the synthetic shapes, small image folders, and the seeded,
stratified train/val split: docs/data.md. What a network sees of the images is :mod:`resnetlab.stream`.
"""
from __future__ import annotations

import hashlib
import math
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass, field
from io import BytesIO

import numpy as np
import torch

from .images import ImageFolder, folder_batches
from .io import atomic_write, cache_dir as _cache_dir, progress

CIFAR_ARCHIVES = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}
CIFAR_URLS = {name: f"https://www.cs.toronto.edu/~kriz/{archive}" for name, archive in CIFAR_ARCHIVES.items()}
CIFAR_MD5 = {"cifar10": "c58f30108f718f92721af3b95e74349a", "cifar100": "eb9058c3a382ffc7106e4002c42a8d85"}
CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_CIFAR_MARKERS = {"cifar10": "data_batch_1", "cifar100": "train"}  # a file only a complete release has
DATASETS = ("cifar10", "cifar100", "synthetic", "folder")
"""Every dataset name :func:`load_dataset` reads."""
NAMED_DATASETS = tuple(d for d in DATASETS if d != "folder")
"""The datasets known by name, with fixed classes (all but an arbitrary image folder)."""


# --------------------------------------------------------------------------------------- In-memory datasets

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


def seeded_generator(*parts: int) -> torch.Generator:
    """A CPU generator seeded by mixing the integers ``parts`` (distinct tuples give unrelated streams)."""
    words = np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed((int(words[0]) << 31) ^ int(words[1]))


# Tags mixed into the seeds, so that different uses of the same seed draw independent numbers.
TAG_ORDER, TAG_AUG, TAG_SPLIT, TAG_SYNTH = 11, 12, 13, 14


def split_train_val(data: ArrayDataset, val_split: int, split_seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
    """Hold out ``val_split`` images of ``data`` as a validation set, stratified by class: each class gives
    ``val_split * n_class / N`` images (by largest remainder, so the total is exact), drawn with ``split_seed``.
    Both parts keep the order of ``data``."""
    n = len(data)
    if not 0 < val_split < n:
        raise ValueError(f"val_split must be between 1 and {n - 1} for a training set of {n}, got {val_split}")
    order = torch.randperm(n, generator=seeded_generator(split_seed, TAG_SPLIT))
    counts = torch.bincount(data.y, minlength=len(data.classes)).double()
    share = counts * val_split / n
    quota = share.floor().long()
    rest = val_split - int(quota.sum())
    if rest > 0:  # largest remainders first; ties go to the lower class index
        quota[torch.argsort(quota - share, stable=True)[:rest]] += 1
    y_order = data.y[order]
    val = torch.cat([order[y_order == c][: int(q)] for c, q in enumerate(quota.tolist())])
    train = torch.ones(n, dtype=torch.bool).index_fill_(0, val, False)
    return data.subset(train.nonzero().flatten()), data.subset(val.sort().values)


# ------------------------------------------------------------------------------------ The synthetic dataset

SYNTHETIC_SHAPES = ("disc", "square", "ring", "cross", "triangle")
SYNTHETIC_CLASSES = [f"{s}-{p}" for p in ("solid", "striped") for s in SYNTHETIC_SHAPES]


def make_synthetic(n: int, seed: int = 0, image_size: int = 32) -> ArrayDataset:
    """``n`` images of 10 classes: 5 shapes (disc, square, ring, cross, triangle) x 2 fills (solid, or
    striped with the background colour), deterministic in ``seed``, balanced (``i % 10``, shuffled). Every
    image draws its own position, size, colours, stripes and noise, so the class is carried by the shape and
    the fill, not by colour (docs/data.md)."""
    g = seeded_generator(seed, TAG_SYNTH, n, image_size)
    y = (torch.arange(n) % 10)[torch.randperm(n, generator=g)]
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
    mask = shape_masks[torch.arange(n), y % 5]
    theta = u(n) * math.pi
    period = 0.35 + 0.2 * u(n)
    phase = u(n) * 2 * math.pi
    t = dx * torch.cos(theta)[:, None, None] + dy * torch.sin(theta)[:, None, None]
    stripes = (torch.sin(t * (2 * math.pi) / period[:, None, None] * s[:, None, None] + phase[:, None, None]) > 0)
    striped = (y >= 5)[:, None, None]
    fg = 0.5 + 0.5 * u(n, 3)                                                       # a light shape...
    bg = 0.4 * u(n, 3)                                                             # ...on a dark background
    fill = torch.where((striped & stripes)[:, None], bg[:, :, None, None], fg[:, :, None, None])  # stripes cut to bg
    img = torch.where(mask[:, None], fill, bg[:, :, None, None].expand(-1, -1, image_size, image_size))
    img = img + 0.08 * torch.randn(img.shape, generator=g)
    x = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    return ArrayDataset(x.contiguous(), y.long(), list(SYNTHETIC_CLASSES))


# ---------------------------------------------------------------------- CIFAR in the official python format

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


# The member files of each release: its metadata, and the batches of each split.
_CIFAR_LAYOUT = {
    "cifar10": ("batches.meta", {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}),
    "cifar100": ("meta", {"train": ["train"], "test": ["test"]}),
}


def _check_download(name: str, path: str) -> None:
    """An archive that :func:`download_cifar` put in the cache is checked against the official MD5 on every
    read (a copy anywhere else is the user's own, e.g. a re-encoded one, and is read as it is)."""
    cache = os.path.realpath(_cache_dir())
    if os.path.commonpath([cache, os.path.realpath(path)]) == cache and \
            os.path.basename(path) == CIFAR_ARCHIVES[name] and _md5(path) != CIFAR_MD5[name]:
        raise ValueError(f"{path}: the downloaded archive does not match the official MD5 (changed or "
                         f"truncated since the download); delete it and download again")


class _CifarSource:
    """Reads the member files of a CIFAR python release from its folder or straight from the tarball (in one
    sequential pass: a gzip stream is slow to seek backwards, and the official archive is not in order)."""

    def __init__(self, name: str, path: str):
        self.name, self.path, self.blobs = name, path, None
        if os.path.isfile(path):
            meta, parts = _CIFAR_LAYOUT[name]
            wanted = {meta, *(m for members in parts.values() for m in members)}
            _check_download(name, path)
            self.blobs, total = {}, 0
            try:
                with tarfile.open(path, "r:*") as tar:
                    for m in tar:
                        base = m.name.rstrip("/").rsplit("/", 1)[-1]
                        if m.isfile() and base in wanted:
                            if base in self.blobs:
                                raise ValueError(f"{path}: refusing an archive that holds {base!r} twice")
                            total = _check_size(m, total, path)
                            self.blobs[base] = tar.extractfile(m).read()
            except (tarfile.TarError, OSError, EOFError) as e:
                raise ValueError(f"{path}: not a readable .tar.gz archive ({e})") from None

    def read(self, member: str) -> dict:
        if self.blobs is not None:
            if member not in self.blobs:
                raise FileNotFoundError(f"{self.path}: the archive has no {CIFAR_FOLDERS[self.name]}/{member}")
            return _unpickle(BytesIO(self.blobs[member]), f"{self.path}:{member}")
        where = os.path.join(self.path, member)
        if not os.path.isfile(where):
            raise FileNotFoundError(f"{where} not found (is {self.path} an extracted {self.name} folder?)")
        with open(where, "rb") as fh:
            return _unpickle(fh, where)


def find_cifar(name: str, data_dir: str | os.PathLike) -> str:
    """The extracted folder or archive of ``name`` at ``data_dir`` (the folder, its parent, or the tarball);
    ``FileNotFoundError`` if it is not there. ``find_cifar(name, resnetlab.io.cache_dir())`` checks the cache."""
    p = os.fspath(data_dir)
    folder, archive, marker = CIFAR_FOLDERS[name], CIFAR_ARCHIVES[name], _CIFAR_MARKERS[name]
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


def load_cifar(name: str, path: str | os.PathLike, *, labels: str = "fine") -> dict[str, ArrayDataset]:
    """Read CIFAR-10/100 from the extracted official folder or the ``.tar.gz`` (read in memory); CIFAR-100
    with its 100 ``fine`` labels unless ``labels="coarse"`` (the 20 superclasses)."""
    if name not in CIFAR_FOLDERS:
        raise ValueError(f"unknown CIFAR dataset {name!r}; valid: {', '.join(CIFAR_FOLDERS)}")
    if name == "cifar100" and labels not in ("fine", "coarse"):
        raise ValueError(f"labels must be 'fine' or 'coarse', got {labels!r}")
    src = _CifarSource(name, find_cifar(name, path))
    meta, parts = _CIFAR_LAYOUT[name]
    prefix = "" if name == "cifar10" else f"{labels}_"  # CIFAR-100: fine_labels, coarse_label_names, ...
    classes = [c.decode("latin1") if isinstance(c, bytes) else str(c) for c in src.read(meta)[f"{prefix}label_names"]]
    key = f"{prefix}labels"
    out = {}
    for split, members in parts.items():
        xs, ys = [], []
        for m in members:
            batch, where = src.read(m), f"{src.path}:{m}"
            if key not in batch:
                raise ValueError(f"{where}: no {key!r} in the batch (keys: {sorted(batch)})")
            data = np.asarray(batch.get("data"))
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
                raise ValueError(f"{where}: 'data' must be uint8 (N, 3072), got {data.dtype} {data.shape}")
            # Each row holds the R, G and B planes of a 32x32 image, row-major: exactly (3, 32, 32).
            xs.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
            ys.append(torch.as_tensor(np.asarray(batch[key], dtype=np.int64)))
        x, y = torch.cat(xs), torch.cat(ys)
        if len(y) != len(x) or (len(y) and (int(y.min()) < 0 or int(y.max()) >= len(classes))):
            raise ValueError(f"{src.path}: {split} labels do not match the {len(classes)} classes")
        out[split] = ArrayDataset(x, y, classes)
    return out


DATA_DIR_HINT = "pass its folder or .tar.gz with --data-dir"  # the hint of the commands without --download


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *, download: bool = False,
                 cache_dir: str | os.PathLike | None = None, val_split: int = 0, split_seed: int = 0,
                 synthetic_train: int = 5000, synthetic_test: int = 1000, synthetic_seed: int = 0,
                 labels: str = "fine", image_size: int = 32,
                 hint: str = "pass its folder or .tar.gz as data_dir, or download=True to fetch it"
                 ) -> dict[str, ArrayDataset]:
    """Load a dataset as ``{"train", "test"}`` (+ ``"val"`` when ``val_split > 0``) of :class:`ArrayDataset`.

    Without ``data_dir`` CIFAR is looked for in the cache (``cache_dir``, else :func:`resnetlab.io.cache_dir`)
    and, with ``download=True``, fetched; the error for missing data ends with ``hint`` (a command names its
    own flags). docs/data.md describes every argument; large image folders are evaluated from disk instead
    (:class:`resnetlab.images.ImageFolder`).
    """
    if name == "synthetic":
        if data_dir is not None:  # refused, not ignored: a run would use the shapes where the user meant the folder
            raise ValueError(f"the synthetic set is generated, not read: {os.fspath(data_dir)} is not used by it; "
                             f"name the dataset in that folder instead (--data cifar10, cifar100 or folder)")
        out = {"train": make_synthetic(synthetic_train, seed=synthetic_seed, image_size=image_size),
               "test": make_synthetic(synthetic_test, seed=synthetic_seed + 1_000_003, image_size=image_size)}
    elif name in CIFAR_FOLDERS:
        where = os.fspath(data_dir if data_dir is not None else cache_dir if cache_dir is not None else _cache_dir())
        try:
            found = find_cifar(name, where)
        except FileNotFoundError:
            if download:  # into the folder given (created if needed), else the cache
                found = download_cifar(name, where)
            elif data_dir is None:
                raise FileNotFoundError(f"{name} not found in the cache {where}; {hint}") from None
            else:
                raise
        out = load_cifar(name, found, labels=labels)
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


# ------------------------------------------------------------------------ Downloading the official archives

# An official CIFAR member is at most ~160 MB (CIFAR-100's train batch), the whole release ~180 MB: anything
# far larger is a decompression bomb, not a dataset.
MAX_MEMBER_BYTES = 512 * 2 ** 20
MAX_ARCHIVE_BYTES = 2 * 2 ** 30


def _check_size(m: tarfile.TarInfo, total: int, archive: str) -> int:
    if m.size > MAX_MEMBER_BYTES:
        raise ValueError(f"{archive}: refusing {m.name!r}: {m.size:,} bytes unpacked, over the limit of "
                         f"{MAX_MEMBER_BYTES:,} for one member")
    if total + m.size > MAX_ARCHIVE_BYTES:
        raise ValueError(f"{archive}: refusing to unpack more than {MAX_ARCHIVE_BYTES:,} bytes")
    return total + m.size


def _check_members(tar: tarfile.TarFile, archive: str) -> list[tarfile.TarInfo]:
    """The archive's members if every one is a plain file or folder inside the extraction folder, named
    once, within the size limits."""
    members = tar.getmembers()
    seen, total = set(), 0
    for m in members:
        name, path = m.name, m.name.replace("\\", "/")
        key = path.strip("/")
        if key in seen and not m.isdir():
            raise ValueError(f"{archive}: refusing an archive that holds {name!r} twice")
        seen.add(key)
        total = _check_size(m, total, archive)
        if name.startswith(("/", "\\")) or os.path.isabs(name) or (len(name) > 1 and name[1] == ":"):
            raise ValueError(f"{archive}: refusing to extract {name!r}: absolute path")
        if ".." in path.split("/"):
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


def _fetch(url: str, path: str, md5: str, label: str, quiet: bool) -> None:
    """Download ``url`` to ``path`` with a progress bar; the file appears only complete and with the MD5
    ``md5`` (:func:`resnetlab.io.atomic_write` removes the partial file on any error)."""
    try:
        resp = urllib.request.urlopen(url, timeout=60)
    except (OSError, ValueError) as e:
        raise ValueError(f"could not download {label} from {url}: {e}") from None
    h, done = hashlib.md5(), 0
    with resp, atomic_write(path, "wb") as out:
        total = int(resp.headers.get("Content-Length") or 0) or None
        with progress(total=total, desc=f"downloading {os.path.basename(path)}", unit="B", unit_scale=True,
                      unit_divisor=1024, quiet=quiet) as bar:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                out.write(chunk)
                h.update(chunk)
                done += len(chunk)
                bar.update(len(chunk))
        if total is not None and done != total:
            raise ValueError(f"download of {url} stopped after {done} of {total} bytes")
        if h.hexdigest() != md5:
            raise ValueError(f"MD5 mismatch for {url}: expected {md5}, got {h.hexdigest()}; the download was "
                             f"deleted (a corrupted or different file)")


def download_cifar(name: str, cache_dir: str | os.PathLike | None = None, *, url: str | None = None,
                   md5: str | None = None, quiet: bool = False) -> str:
    """Fetch and extract the official CIFAR-10/100 python archive into ``cache_dir`` (default
    :func:`resnetlab.io.cache_dir`); returns the extracted folder. The MD5 is checked and every member before
    extraction, and nothing half-written is left behind (docs/data.md); ``url``/``md5`` name a mirror."""
    if name not in CIFAR_URLS:
        raise ValueError(f"unknown CIFAR dataset {name!r}; valid: {', '.join(CIFAR_URLS)}")
    cache = os.fspath(cache_dir) if cache_dir is not None else _cache_dir()
    md5 = (md5 or CIFAR_MD5[name]).lower()
    folder = os.path.join(cache, CIFAR_FOLDERS[name])
    marker = _CIFAR_MARKERS[name]
    if os.path.isfile(os.path.join(folder, marker)):
        return folder
    os.makedirs(cache, exist_ok=True)
    archive = os.path.join(cache, CIFAR_ARCHIVES[name])
    if not (os.path.isfile(archive) and _md5(archive) == md5):
        _fetch(url or CIFAR_URLS[name], archive, md5, name, quiet)
    with tempfile.TemporaryDirectory(prefix=".extract-", dir=cache, ignore_cleanup_errors=True) as work:
        safe_extract(archive, work)
        extracted = os.path.join(work, CIFAR_FOLDERS[name])
        if not os.path.isfile(os.path.join(extracted, marker)):
            raise ValueError(f"{archive}: no {CIFAR_FOLDERS[name]}/{marker} inside (not the {name} archive?)")
        if os.path.isdir(folder):  # an incomplete folder from elsewhere: replace it
            shutil.rmtree(folder)
        os.replace(extracted, folder)
    return folder


# ------------------------------------------------------------------------ Image folders decoded into memory

def load_folder_arrays(root: str | os.PathLike, *, image_size: int = 32, resize: int | None = None,
                       on_bad_image: str = "error", num_workers: int = 0) -> dict[str, ArrayDataset]:
    """An image-folder tree (``root/train``, ``root/val`` and/or ``root/test``) of small images decoded into
    :class:`ArrayDataset` splits with the training classes: shorter side resized to ``resize`` (default
    ``image_size``), centre square kept. Unreadable images raise ``ValueError`` naming the file, or with
    ``on_bad_image="skip"`` are left out and reported on stderr."""
    root = os.fspath(root)
    if not os.path.isdir(os.path.join(root, "train")):
        raise FileNotFoundError(f"{root}: no train/ folder (expected the layout root/train/<class>/*.jpg, "
                                f"root/val/<class>/*.jpg)")
    options = dict(image_size=image_size, resize=resize or image_size, on_bad_image=on_bad_image)
    folders = {"train": ImageFolder(os.path.join(root, "train"), **options)}
    for split in ("val", "test"):
        if os.path.isdir(os.path.join(root, split)):
            folders[split] = ImageFolder(os.path.join(root, split), classes=folders["train"].classes, **options)
    out = {}
    for split, folder in folders.items():
        xs, ys = [], []
        for x, y, skipped in folder_batches(folder, 256, num_workers=num_workers):
            for path in skipped:
                print(f"warning: skipped unreadable image {path} ({split} split of {root})", file=sys.stderr)
            if x is not None:
                xs.append(x)
                ys.append(y)
        if not xs:
            raise ValueError(f"{os.path.join(root, split)}: no readable images")
        out[split] = ArrayDataset(torch.cat(xs), torch.cat(ys), list(folder.classes))
    return out
