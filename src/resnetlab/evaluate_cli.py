"""``resnetlab eval`` and ``resnetlab predict``: the command line and a checkpoint's record, resolved into
:func:`resnetlab.evaluate.evaluate` and :func:`resnetlab.evaluate.predict` calls. Our checkpoints record
their dataset (and folder), preprocessing, classes and architecture; other projects' weights need
``--model NAME [--shortcut ...]`` and ``--mean R,G,B --std R,G,B`` (or ``--pixel-mean``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Annotated, Literal, Optional

import tyro

from . import config as configlib
from .config import Floats, Positional, given_model, name_given
from .datasets import DATA_DIR_HINT, DATASETS, SYNTHETIC_CLASSES, load_dataset
from .evaluate import (SPLITS, LoadedModel, check_same_classes, evaluate, load_for_eval, predict, raw_image_batches,
                       use_bf16)
from .images import IMAGE_EXTENSIONS, ImageFolder, find_images, folder_classes, resize_side
from .io import PRECISIONS, resolve_device, write_json
from .models import ModelConfig
from .sources import resolve_data
from .stream import Normalization
from .weights import checkpoint_file, peek_checkpoint, read_weights


@dataclass(frozen=True)
class ForeignWeights:
    """Options for weights that are not resnetlab checkpoints (and overrides for ours)."""

    model: ModelConfig = ModelConfig()
    """the architecture for other projects' weights; our checkpoints: must fit (default: as recorded)"""
    mean: Optional[Floats] = None
    """per-channel input mean R,G,B on the 0..1 scale (replaces a checkpoint's own normalization, with a warning)"""
    std: Optional[Floats] = None
    """per-channel input std R,G,B on the 0..1 scale (with --mean)"""


@dataclass(frozen=True)
class EvalConfig(ForeignWeights):
    """Evaluate checkpoints: top-1/top-5, loss, per-class accuracy, confusion matrix; several checkpoints
    are evaluated as an ensemble (their softmax probabilities averaged)."""

    weights: tuple[str, ...] = ()
    """checkpoint file(s); several form an ensemble (probabilities averaged)"""
    data: Optional[Literal[DATASETS]] = None
    """dataset (default: the one the first checkpoint was trained on)"""
    data_dir: Optional[str] = None
    """dataset folder (or its .tar.gz); default: the training run's, else the cache folder"""
    split: Literal[SPLITS] = "test"
    """split to evaluate: test | val | train"""
    val_split: Optional[int] = None
    """training images held out as the val split (default: as recorded in the checkpoint's training config)"""
    split_seed: Optional[int] = None
    """seed of the train/val split (default: as recorded, else 0)"""
    batch_size: int = 1000
    """images per forward pass"""
    limit: Optional[int] = None
    """evaluate only the first N images of the split"""
    tta: Literal[("none", "flip")] = "none"
    """test-time augmentation: flip averages each image's and its mirror's probabilities (none | flip)"""
    workers: int = 2
    """DataLoader workers decoding image folders (--data folder)"""
    pixel_mean: bool = False
    """subtract the training split's per-pixel mean (the paper's CIFAR preprocessing; replaces a checkpoint's)"""
    device: str = "auto"
    """auto (CUDA when available) | cpu | cuda | cuda:N"""
    precision: Literal[PRECISIONS] = "auto"
    """auto (bf16 autocast on CUDA, fp32 on the CPU) | fp32 | bf16 (on the CPU too)"""
    json: Optional[str] = None
    """write all results (confusion matrix included) to this JSON file"""
    quiet: bool = False
    """no progress line"""


@dataclass(frozen=True)
class PredictConfig(ForeignWeights):
    """Print the top-k classes of image files and folders of them (decoded with Pillow, resized as the model
    expects). Unreadable files (broken, truncated, decompression bombs) are listed on stderr and the others
    predicted; the exit code is then 1."""

    images: Positional[tuple[str, ...]] = ()
    """image files (PNG, JPEG, ... any mode)"""
    weights: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()
    """checkpoint file; repeat the flag for an ensemble (probabilities averaged), so images may follow"""
    top_k: int = 5
    """classes to show per image"""
    device: str = "auto"
    """auto (CUDA when available) | cpu | cuda | cuda:N"""
    json: Optional[str] = None
    """also write the predictions to this JSON file"""


def _explicit_normalization(cfg):
    """The normalization given by --mean/--std, or None."""
    if cfg.mean is None and cfg.std is None:
        return None
    if cfg.mean is None or cfg.std is None:
        raise ValueError("--mean and --std go together (per-channel values R,G,B on the 0..1 scale)")
    for what, values in (("--mean", cfg.mean), ("--std", cfg.std)):
        if len(values) not in (1, 3):
            raise ValueError(f"{what} needs 3 values R,G,B (or one for all channels), got {len(values)}")
    if any(s <= 0 for s in cfg.std):
        raise ValueError(f"--std values must be positive, got {cfg.std}")
    if max(cfg.mean) > 1.5 or max(cfg.std) > 1.5:
        raise ValueError("--mean/--std are on the 0..1 scale (divide 0..255 values by 255)")
    expand = (lambda v: tuple(v) * 3 if len(v) == 1 else tuple(v))
    return Normalization.from_values(expand(cfg.mean), expand(cfg.std))


def _given_model(cfg):
    """The architecture given with --model NAME (and its options), else None: our checkpoints record theirs."""
    if given_model(cfg) is not None and name_given(cfg) is False:
        raise ValueError("model options (--shortcut, --num-classes, ...) describe the architecture given by "
                         "--model NAME; our checkpoints record their own")
    return given_model(cfg)


def _check_files(paths) -> list[str]:
    if not paths:
        raise ValueError("give at least one checkpoint: --weights CKPT [CKPT ...]")
    seen, paths = {}, [checkpoint_file(p) for p in paths]  # a run folder: its last.pt
    for p in paths:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"checkpoint not found: {p}")
        if (real := os.path.realpath(p)) in seen:  # it would weigh twice in the ensemble
            also = "" if seen[real] == p else f" (also as {seen[real]})"
            raise ValueError(f"checkpoint {p} is given twice{also}: list each ensemble member once")
        seen[real] = p
    return paths


@contextlib.contextmanager
def _warnings_as_lines(command: str):
    """Print warnings as ``resnetlab CMD: warning: ...`` lines on stderr while the command runs."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *a, **k: print(f"resnetlab {command}: warning: {message}",
                                                              file=sys.stderr)
        yield


def _resolve_data(cfg: EvalConfig, first_ckpt: dict | None) -> EvalConfig:
    """Fill in the dataset (and its folder, while it exists) the first checkpoint was trained on, when not given."""
    if cfg.data is None and not ((first_ckpt or {}).get("data") or {}).get("name"):
        raise ValueError(f"give the dataset: --data {' | '.join(DATASETS)} (the checkpoint does not record it)")
    data, data_dir = resolve_data(cfg.data, cfg.data_dir, first_ckpt, missing_dir_ok=True)
    if data not in DATASETS:
        raise ValueError(f"unknown dataset {data!r}; valid: {', '.join(DATASETS)}")
    if data_dir is not None and not os.path.exists(data_dir):
        raise FileNotFoundError(f"--data-dir {data_dir} does not exist")
    if (data, data_dir) == (cfg.data, cfg.data_dir):
        return cfg  # as parsed, with what the command line gave (dataclasses.replace drops it)
    return dataclasses.replace(cfg, data=data, data_dir=data_dir)


def _class_count(cfg: EvalConfig) -> int | None:
    """The dataset's class count without loading it (the default classifier size for --model)."""
    if cfg.data == "folder" and cfg.data_dir:
        for split in ("train", cfg.split):
            folder = os.path.join(cfg.data_dir, split)
            if os.path.isdir(folder):
                return len(folder_classes(folder))
    return {"cifar10": 10, "cifar100": 100, "synthetic": len(SYNTHETIC_CLASSES)}.get(cfg.data)


def _load_split(cfg: EvalConfig, first_ckpt: dict | None, first: LoadedModel, need_train: bool):
    """(evaluation split, training split or None): ArrayDatasets, or ImageFolders for --data folder, at the
    image size (and resizing) the first model expects."""
    if cfg.data == "folder":
        return _load_folder_split(cfg, first.image_size, first.family)
    recorded = (first_ckpt or {}).get("config") or {}
    val_split = cfg.val_split if cfg.val_split is not None else int(recorded.get("val_split") or 0)
    split_seed = cfg.split_seed if cfg.split_seed is not None else int(recorded.get("split_seed") or 0)
    if cfg.split == "val" and val_split <= 0:
        raise ValueError("--split val needs --val-split N (no val split is recorded in the checkpoint)")
    options = {}
    if cfg.split == "test":
        val_split = 0  # the test split does not depend on it
        if cfg.data == "synthetic" and not need_train:
            options["synthetic_train"] = 10  # generated independently of the test images: skip the work
    if cfg.data == "synthetic":  # at the side the model was trained on
        options["image_size"] = first.image_size
    sets = load_dataset(cfg.data, cfg.data_dir, val_split=val_split, split_seed=split_seed, hint=DATA_DIR_HINT,
                        **options)
    return sets[cfg.split], (sets.get("train") if need_train else None)


def _load_folder_split(cfg: EvalConfig, image_size: int, family: str):
    """``ROOT/<split>/<class>/<images>`` as an ImageFolder (decoded lazily, in workers), with the classes
    of ``ROOT/train`` when it exists, cropped as :func:`resnetlab.images.resize_side` says for the model."""
    if cfg.data_dir is None:
        raise ValueError("--data folder needs --data-dir ROOT (with ROOT/<split>/<class>/<image files>)")
    split_dir = os.path.join(cfg.data_dir, cfg.split)
    if not os.path.isdir(split_dir):
        raise FileNotFoundError(f"{split_dir} not found: --data folder expects the layout "
                                f"ROOT/{cfg.split}/<class>/<image files> (ROOT = --data-dir)")
    train_dir = os.path.join(cfg.data_dir, "train")
    options = dict(image_size=image_size, resize=resize_side(image_size, family), on_bad_image="skip")
    split = ImageFolder(split_dir, classes=folder_classes(train_dir) if os.path.isdir(train_dir) else None, **options)
    train = split if cfg.split == "train" else None
    if train is None and cfg.pixel_mean and os.path.isdir(train_dir):
        train = ImageFolder(train_dir, classes=split.classes, **options)
    return split, train


def _pct(v) -> str:
    return "   -  " if v is None else f"{100 * v:6.2f}%"


def format_report(result: dict, members: list[str], header: str) -> str:
    """The human-readable report printed by ``resnetlab eval``."""
    width = max([len(m) for m in members] + [14])
    lines = [header, "", f"  {'':<{width}}   top-1    top-5     loss"]
    rows = list(zip(members, result["members"])) + (
        [(f"ensemble of {len(members)}", result)] if len(members) > 1 else [])
    for name, m in rows:
        lines.append(f"  {name:<{width}} {_pct(m['top1'])}  {_pct(m['top5'])}  {m['loss']:7.4f}")
    lines += ["", f"top-1 {100 * result['top1']:.2f}% (error {100 * result['error']:.2f}%)   "
                  f"top-5 {100 * result['top5']:.2f}% (error {100 * result['top5_error']:.2f}%)   "
                  f"loss {result['loss']:.4f}   on {result['n']} images", ""]
    per_class, confusion, classes = result["per_class"], result["confusion"], result["classes"]
    if len(classes) <= 20:
        lines.append("per-class accuracy:")
        name_w = min(16, max(len(c) for c in classes))
        cells = [f"{c['class'][:name_w]:>{name_w}} {_pct(c['accuracy'])}" for c in per_class]
        lines += ["  " + "  ".join(cells[i:i + 4]) for i in range(0, len(cells), 4)]
        lines += ["", "confusion matrix (rows: true class, columns: predicted class by number; counts):"]
        cw = max(4, len(str(max(max(r) for r in confusion))) + 1)
        lines.append(f"  {'':<{name_w + 3}}" + "".join(f"{j:>{cw}}" for j in range(len(classes))))
        for i, (name, row) in enumerate(zip(classes, confusion)):
            lines.append(f"  {i:>2} {name[:name_w]:<{name_w}}" + "".join(f"{v:>{cw}}" for v in row))
    else:
        ranked = sorted((c for c in per_class if c["accuracy"] is not None), key=lambda c: c["accuracy"])
        for title, some in (("lowest per-class accuracy: ", ranked[:5]),
                            ("highest per-class accuracy:", ranked[::-1][:5])):
            lines.append(f"{title} " + ", ".join(f"{c['class']} {_pct(c['accuracy']).strip()}" for c in some))
        pairs = sorted(((v, i, j) for i, row in enumerate(confusion) for j, v in enumerate(row) if i != j and v),
                       key=lambda t: (-t[0], t[1], t[2]))[:10]  # most frequent first, ties in class order
        lines.append("most frequent confusions (true -> predicted: count): " +
                     ", ".join(f"{classes[i]} -> {classes[j]}: {v}" for v, i, j in pairs))
        lines.append("(the full confusion matrix is in the --json output)")
    return "\n".join(lines)


def run_eval(cfg: EvalConfig) -> dict:
    """``resnetlab eval`` as a function: load, evaluate, print, write the JSON; returns the results."""
    paths = _check_files(cfg.weights)
    if cfg.batch_size < 1:
        raise ValueError(f"--batch-size must be positive, got {cfg.batch_size}")
    if cfg.limit is not None and cfg.limit < 1:
        raise ValueError(f"--limit must be positive, got {cfg.limit}")
    override = _explicit_normalization(cfg)
    if override is not None and cfg.pixel_mean:
        raise ValueError("give either --mean/--std or --pixel-mean, not both")
    device = resolve_device(cfg.device)
    first_ckpt = peek_checkpoint(paths[0])
    if first_ckpt is None and cfg.data is None:
        read_weights(paths[0])  # a damaged file (truncated, ...) is named as such, not asked for its --data
    cfg = _resolve_data(cfg, first_ckpt)

    # The checkpoints first (fast, and most mistakes are there), then the data.
    given = _given_model(cfg)
    num_classes = cfg.model.num_classes if cfg.model.num_classes is not None else _class_count(cfg)
    members = [load_for_eval(p, given, num_classes=num_classes if given else None, normalization=override)
               for p in paths]
    counts = [m.num_classes for m in members]
    if len(set(counts)) > 1:
        raise ValueError("the checkpoints have different class counts: " +
                         ", ".join(f"{m.path}: {m.num_classes}" for m in members))
    missing = [m.path for m in members if m.normalization is None]
    if missing and not cfg.pixel_mean:
        raise ValueError(f"no preprocessing known for {', '.join(missing)} (not a resnetlab checkpoint): "
                         f"give --mean R,G,B --std R,G,B (0..1 scale) or --pixel-mean")

    data, train = _load_split(cfg, first_ckpt, members[0], need_train=cfg.pixel_mean)
    if counts[0] is not None and counts[0] != len(data.classes):
        raise ValueError(f"{members[0].path} has {counts[0]} classes but {cfg.data} has {len(data.classes)}")
    if cfg.pixel_mean:
        if train is None:
            raise ValueError(f"--pixel-mean needs the training split of {cfg.data}")
        images = (x for x, _ in raw_image_batches(train, cfg.batch_size, cfg.workers, [], False))
        pixel = Normalization.fit(images, "pixel")  # batch by batch: its float64 sums of uint8 are exact
        for m in members:
            if m.normalization is not None:
                warnings.warn(f"{m.path}: replacing the normalization recorded in the checkpoint by the "
                              f"per-pixel mean; the model was trained with the recorded one")
            m.normalization = pixel
    if cfg.limit is not None and cfg.limit < len(data):
        if hasattr(data, "x"):
            data = dataclasses.replace(data, x=data.x[:cfg.limit], y=data.y[:cfg.limit])
        else:  # an ImageFolder: keep its first files
            data.samples = data.samples[:cfg.limit]
    check_same_classes(members)
    for m in members:
        if m.classes is not None and list(m.classes) != list(data.classes):
            warnings.warn(f"{m.path} was trained on classes {m.classes[:4]}... but {cfg.data} has "
                          f"{data.classes[:4]}...; outputs are compared by index")
        if m.image_size != data.image_size:
            warnings.warn(f"{m.path} was trained on {m.image_size}x{m.image_size} images, "
                          f"the {cfg.data} images are {data.image_size}x{data.image_size}")

    start = time.perf_counter()
    result = evaluate([m.model for m in members], data, [m.normalization for m in members],
                      batch_size=cfg.batch_size, device=device, tta_flip=cfg.tta == "flip",
                      precision=cfg.precision, progress=not cfg.quiet, num_workers=cfg.workers)
    seconds = time.perf_counter() - start
    precision = "bf16" if use_bf16(device, cfg.precision) else "fp32"
    header = (f"{cfg.data} {cfg.split}: {result['n']} images, {result['num_classes']} classes | "
              f"tta: {cfg.tta} | {device} {precision} | {seconds:.1f}s")
    names = [f"{m.path} [{m.description}]" for m in members]
    print(format_report(result, names, header))
    for entry, m in zip(result["members"], members):
        entry.update({"path": m.path, "model": m.description})
    result = {"command": "eval", "config": configlib.to_dict(cfg), "data": cfg.data, "split": cfg.split,
              "device": str(device), "precision": precision, "seconds": seconds, **result}
    if cfg.json:
        write_json(cfg.json, result)
        print(f"\nwrote {cfg.json}")
    return result


def main_eval(argv: list[str] | None = None) -> int:
    """``resnetlab eval --weights CKPT [CKPT ...] --data cifar10 --data-dir DIR [--tta flip] [--json OUT]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if sum(a == "--weights" or a.startswith("--weights=") for a in argv) > 1:
        raise ValueError("--weights is given more than once: list every checkpoint after one --weights "
                         "(--weights A B) to evaluate them as an ensemble")
    cfg = configlib.parse(EvalConfig, argv, prog="resnetlab eval")
    with _warnings_as_lines("eval"):
        run_eval(cfg)
    return 0


def printable(text: str) -> str:
    """A file name that prints on any terminal (bytes that are not UTF-8 shown as U+FFFD)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def image_files(paths) -> list[str]:
    """Files as given, folders expanded to the image files below them (:func:`resnetlab.images.find_images`)."""
    out = []
    for p in paths:
        if os.path.isdir(p):
            found = find_images(p)
            if not found:
                raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in the folder {printable(p)}")
            out += found
        elif os.path.isfile(p):
            out.append(p)
        else:
            raise FileNotFoundError(f"image not found: {printable(p)}")
    return out


def run_predict(cfg: PredictConfig) -> list[dict]:
    """``resnetlab predict`` as a function: prints the top-k classes per image; returns the predictions."""
    paths = _check_files(cfg.weights)
    if not cfg.images:
        raise ValueError("give at least one image file: resnetlab predict IMAGE [IMAGE ...] --weights CKPT")
    images = image_files(cfg.images)
    override = _explicit_normalization(cfg)
    given = _given_model(cfg)
    members = [load_for_eval(p, given, normalization=override) for p in paths]
    results = predict(members, images, top_k=cfg.top_k, device=cfg.device, skip_unreadable=True)
    for r in [r for r in results if "error" not in r]:
        print(printable(r["image"]))
        for rank, t in enumerate(r["top"], 1):
            print(f"  {rank:>2}. {t['prob']:7.4f}  {t['class']}")
    for r in [r for r in results if "error" in r]:
        print(f"resnetlab predict: skipped {printable(r['error'])}", file=sys.stderr)
    if cfg.json:
        write_json(cfg.json, {"command": "predict", "weights": paths,
                              "predictions": [{k: v for k, v in r.items() if k != "probabilities"} for r in results]})
    return results


def main_predict(argv: list[str] | None = None) -> int:
    """``resnetlab predict IMAGE [IMAGE ...] --weights CKPT [--top-k 5] [--json OUT]``."""
    cfg = configlib.parse(PredictConfig, argv, prog="resnetlab predict")
    with _warnings_as_lines("predict"):
        results = run_predict(cfg)
    return 1 if any("error" in r for r in results) else 0  # some files could not be read: they were listed
