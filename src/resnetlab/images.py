"""Image files decoded with Pillow: RGB conversion, the centre crop, and image-folder trees.

:func:`open_rgb`, :func:`resize_side` and :func:`center_crop` are the one place where a file's pixels become
a network's input pixels, for the image-folder datasets (:class:`ImageFolder`) and ``resnetlab predict`` alike.
:func:`folder_batches` decodes a folder in order, in DataLoader workers, reporting unreadable files.
"""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
_BILINEAR = getattr(Image, "Resampling", Image).BILINEAR


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow image -> 8-bit RGB: grey, palette, CMYK and 16-bit images converted, transparent pixels
    composited onto white (the same pixels for training, evaluation and ``resnetlab predict``)."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(im, dtype=np.float32)
        if im.mode.startswith("I;16") or (im.mode == "I" and arr.max() > 255):
            arr = arr / 257.0  # 16-bit range -> 8-bit range
        elif im.mode == "F" and arr.max() <= 1.0:
            arr = arr * 255.0
        im = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return im.convert("RGB")


def open_rgb(path: str) -> Image.Image:
    """An image file decoded now (a truncated file fails here, with its path known), turned as its EXIF
    orientation says (as a viewer shows it), then :func:`to_rgb`; ``ValueError`` naming an unreadable file."""
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(ImageOps.exif_transpose(im))
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        raise ValueError(f"cannot read image {path}: {type(e).__name__}: {e}") from None


def resize_side(image_size: int, family: str = "imagenet") -> int:
    """What an image's shorter side is resized to before its centre ``image_size`` square is kept: that side
    for CIFAR-style models (a CIFAR-sized file passes unchanged), 256/224 of it for ImageNet-style ones (the
    usual single-crop evaluation)."""
    return int(image_size) if family == "cifar" else int(round(image_size * 256 / 224))


def center_crop(im: Image.Image, size: int, resize: int) -> Image.Image:
    """``im`` with its shorter side resized to ``resize`` and the centre ``size x size`` kept, in one bilinear
    resampling of the box of ``im`` that maps onto that square (not a resize, then a crop)."""
    w, h = im.size
    side = size * min(w, h) / resize
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    return im.resize((size, size), _BILINEAR, box=box)


def find_images(folder: str) -> list[str]:
    """The image files below ``folder``, sorted; hidden entries (".git", macOS "._x.jpg" files) are never data."""
    found = []
    for dirpath, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # os.walk descends only into these
        found += [os.path.join(dirpath, f) for f in sorted(files)
                  if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
    return found


def folder_classes(root: str) -> list[str]:
    """The class names of an image folder: its sub-folders, sorted, hidden ones (".ipynb_checkpoints") left out."""
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def to_tensor(im: Image.Image) -> torch.Tensor:
    """An RGB Pillow image as uint8 ``(3, H, W)``."""
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


class ImageFolder(torch.utils.data.Dataset):
    """Images in ``root/<class>/<file>`` (classes: the sorted sub-folder names, or ``classes``) as items
    ``(uint8 (3, S, S), label)``: :func:`open_rgb`, then :func:`center_crop` to ``S = image_size`` from
    ``resize`` (default :func:`resize_side`: ``S * 256 / 224``). An unreadable file raises
    ``ValueError`` naming it, or with ``on_bad_image="skip"`` gives the item ``(None, path)`` that
    :func:`folder_batches` leaves out and reports."""

    def __init__(self, root: str | os.PathLike, *, classes: list[str] | None = None, image_size: int = 224,
                 resize: int | None = None, on_bad_image: str = "error"):
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"image folder {root} not found")
        if on_bad_image not in ("error", "skip"):
            raise ValueError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
        found = folder_classes(root)
        classes = found if classes is None else classes
        extra = sorted(set(found) - set(classes))
        if extra:
            raise ValueError(f"{root}: class folder(s) {', '.join(extra[:5])} are not among the "
                             f"{len(classes)} training classes")
        if not classes:
            raise ValueError(f"{root}: no class sub-folders (expected {root}/<class>/<image files>)")
        self.root, self.classes = root, list(classes)
        files = {name: find_images(os.path.join(root, name)) for name in self.classes
                 if os.path.isdir(os.path.join(root, name))}  # a class folder may be missing (not empty)
        self.samples = [(f, label) for label, name in enumerate(self.classes) for f in files.get(name, [])]
        empty = [name for name in files if not files[name]]
        if empty:  # as torchvision's ImageFolder: an empty class would shift nothing but train nothing
            raise ValueError(f"{root}: class folder(s) without image files: {', '.join(empty[:5])}")
        if not self.samples:
            raise ValueError(f"{root}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in the class folders")
        self.image_size, self.on_bad_image = int(image_size), on_bad_image
        self.resize = int(resize) if resize else resize_side(image_size)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def load(self, index: int) -> torch.Tensor:
        """Image ``index`` transformed: uint8 ``(3, S, S)`` (raises ``ValueError`` with the path if broken)."""
        return to_tensor(center_crop(open_rgb(self.samples[index][0]), self.image_size, self.resize))

    def __getitem__(self, index: int):
        try:
            return self.load(index), self.samples[index][1]
        except ValueError:
            if self.on_bad_image == "error":
                raise
            return None, self.samples[index][0]


def _collate(items):
    """(x uint8 (b, 3, S, S) or None, y int64 (b,), paths of the skipped images)."""
    xs = [x for x, _ in items if x is not None]
    ys = torch.tensor([label for x, label in items if x is not None], dtype=torch.int64)
    return (torch.stack(xs) if xs else None), ys, [path for x, path in items if x is None]


def folder_batches(folder: ImageFolder, batch_size: int, *, num_workers: int = 0,
                   pin_memory: bool = False) -> Iterator[tuple[torch.Tensor | None, torch.Tensor, list[str]]]:
    """The images of ``folder`` in order, decoded in ``num_workers`` DataLoader workers: per batch
    ``(x, y, skipped)``, ``x`` uint8 ``(b, 3, S, S)`` (``None`` if every image of the batch was skipped),
    ``y`` int64 ``(b,)`` and the paths of the unreadable images left out (``on_bad_image="skip"``)."""
    yield from torch.utils.data.DataLoader(folder, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                           collate_fn=_collate, pin_memory=pin_memory)
