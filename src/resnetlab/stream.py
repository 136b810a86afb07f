"""What a network sees: :class:`Normalization`, the on-device training stream :class:`TrainStream` (each
batch a pure function of ``(seed, step)``), and the evaluation batches (:func:`eval_batches`,
:func:`eval_input`, the one function that turns uint8 images into a model's input).
"""
from __future__ import annotations

from typing import Iterable, Iterator

import torch

from .datasets import TAG_AUG, TAG_ORDER, ArrayDataset, seeded_generator

# The usual ImageNet per-channel statistics (0..1 scale), for image folders of natural photos.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalization:
    """Maps images to the network's input scale, ``(x / 255 - mean) / std`` (0..1 scale): mode ``"pixel"``
    subtracts the mean training image ``(3, H, W)`` (the paper's CIFAR preprocessing, ``std`` 1), mode
    ``"channel"`` a per-channel mean and std ``(3,)``. Its ``state_dict()`` goes into checkpoints."""

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
    def fit(cls, images: torch.Tensor | Iterable[torch.Tensor], mode: str = "channel") -> "Normalization":
        """Statistics of uint8 training images: one ``(N, C, H, W)`` tensor, or an iterable of such batches
        (an image folder read batch by batch). Sums are taken in float64, chunk by chunk."""
        if mode not in ("pixel", "channel"):
            raise ValueError(f"normalization mode must be 'pixel' or 'channel', got {mode!r}")
        chunks = images.split(4096) if isinstance(images, torch.Tensor) else images
        n, s1, s2 = 0, 0.0, 0.0
        for chunk in chunks:
            if chunk.dtype != torch.uint8 or chunk.dim() != 4:
                raise ValueError(f"Normalization.fit needs uint8 (N, C, H, W) images, got {chunk.dtype} "
                                 f"{tuple(chunk.shape)}")
            chunk = chunk.double()
            n, s1 = n + len(chunk), s1 + chunk.sum(0)
            if mode == "channel":
                s2 = s2 + chunk.square().sum((0, 2, 3))
        if n == 0:
            raise ValueError("Normalization.fit needs at least one image")
        mean_img = s1 / n / 255.0
        if mode == "pixel":
            return cls(mean_img.float(), torch.ones(()), "pixel")
        m = mean_img.mean((1, 2))
        var = s2 / (n * mean_img.shape[1] * mean_img.shape[2]) / 255.0 ** 2 - m * m
        return cls(m.float(), var.clamp_min(1e-12).sqrt().float(), "channel")

    @classmethod
    def from_values(cls, mean, std) -> "Normalization":
        """Explicit per-channel values on the 0..1 scale, e.g. ``IMAGENET_MEAN, IMAGENET_STD``."""
        return cls(torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32), "channel")

    def _params(self, device, dtype, hw: tuple[int, int]):
        """(scale, shift) so that ``x_uint8 * scale - shift`` = ``(x / 255 - mean) / std``, both full contiguous
        ``(C, H, W)`` tensors (an elementwise op on equal shapes runs faster on the CPU than one that broadcasts
        a ``(C, 1, 1)``)."""
        key = (str(device), dtype, hw)
        if key not in self._cache:
            mean, std = self.mean.double(), self.std.double()
            if self.mode == "channel":
                mean, std = mean[:, None, None], std[:, None, None]
            shape = (self.mean.shape[0], *hw)
            scale = (1.0 / (255.0 * std)).to(device=device, dtype=dtype).expand(shape).contiguous()
            shift = (mean / std).to(device=device, dtype=dtype).expand(shape).contiguous()
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
        floating = x.is_floating_point()
        scale, shift = self._params(x.device, x.dtype if floating else torch.float32, tuple(x.shape[-2:]))
        return x.mul(scale * 255.0).sub_(shift) if floating else x.float().mul_(scale).sub_(shift)

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


# ---------------------------------------------------------------------- batches for training and evaluation

class TrainStream:
    """Augmented training batches made with whole-batch tensor ops on the training device.

    ``batch(step)`` takes the ``step``-th slice of the permutation of epoch ``step // steps_per_epoch``
    (seeded by ``(seed, epoch)``; an epoch's last ``len(data) % batch_size`` images are left out), then pads,
    crops, mirrors (drawn with ``(seed, step)``) and normalises: a pure function of ``(seed, step)``, the same
    on every device. The border is ``pad`` pixels (default: 1/8 of the image side, the paper's 4 at 32x32).
    ``padding="black"`` pads with pixel value 0 before normalisation, ``"mean"`` with 0 after.

    How: the padded set and its mirror (image ``N + i`` is image ``i`` flipped) stay on ``device`` as uint8,
    so a crop is ``H`` runs of ``W`` bytes per channel, and one ``index_select`` over a strided "every run of
    W bytes" view copies the whole batch.
    """

    def __init__(self, data: ArrayDataset, batch_size: int, *, device="cpu", seed: int = 0,
                 normalization: Normalization | None = None, augment: bool = True, channels_last: bool = False,
                 pad: int | None = None, padding: str = "black"):
        if not 1 <= batch_size <= len(data):
            raise ValueError(f"batch_size must be between 1 and the dataset size {len(data)}, got {batch_size}")
        if padding not in ("black", "mean"):
            raise ValueError(f"padding must be 'black' or 'mean', got {padding!r}")
        if pad is None:  # the paper's 4 pixels at 32x32, scaled with the image: 4 px would cut a 16x16 image's shapes
            pad = max(1, data.image_size // 8)
        if pad < 0:
            raise ValueError(f"pad must be >= 0, got {pad}")
        self.device = torch.device(device)
        self.batch_size, self.seed, self.augment, self.pad = int(batch_size), int(seed), bool(augment), int(pad)
        self.channels_last, self.padding = bool(channels_last), padding
        self.normalization = normalization if normalization is not None else Normalization.fit(data.x, "channel")
        self.n, self.classes = len(data), list(data.classes)
        self.steps_per_epoch = self.n // self.batch_size
        _, c, h, w = data.x.shape
        p = self.pad
        hp, wp = h + 2 * p, w + 2 * p
        self.shape, self._wp = (c, h, w), wp

        def padded(images: torch.Tensor) -> torch.Tensor:  # (2N, C, H+2p, W+2p): padded images, then mirrors
            out = images.new_zeros((2 * len(images), c, hp, wp))
            out[:len(images), :, p:p + h, p:p + w] = images
            out[len(images):, :, p:p + h, p:p + w] = images.flip(-1)
            return out

        def runs(t: torch.Tensor) -> torch.Tensor:  # row k: the run of W values at flat position k (a view)
            return t.view(-1).as_strided((t.numel() - w + 1, w), (1, 1))

        self.x = padded(data.x.to(self.device))
        self.y = data.y.clone()                          # labels stay on the CPU, sent with the indices
        self._runs = runs(self.x)
        self._img_stride = c * hp * wp
        # Offset of the start of (channel, row) of a crop at (0, 0), relative to the image start.
        self._rel = ((torch.arange(c) * (hp * wp))[:, None] + torch.arange(h)[None, :] * wp).view(1, c, h)
        self._norm_shift = None
        if padding == "mean":
            # The normalisation shift (mean / std) laid out like a padded image and its mirror, 0 in the
            # border: out = raw * scale - shift_crop is then 0 (the mean colour) in the border.
            _, shift = self.normalization._params("cpu", torch.float32, (h, w))
            self._norm_shift = runs(padded(shift[None].to(self.device)))
        self._epoch, self._order = None, None

    def indices(self, step: int) -> torch.Tensor:
        """Dataset positions of the images of batch ``step`` (CPU int64)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch, i = divmod(int(step), self.steps_per_epoch)
        if self._epoch != epoch:  # the permutation of the current epoch is cached
            self._order = torch.randperm(self.n, generator=seeded_generator(self.seed, TAG_ORDER, epoch))
            self._epoch = epoch
        return self._order[i * self.batch_size:(i + 1) * self.batch_size]

    def augmentation(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(dy, dx, flip)`` of each image of batch ``step``: the crop's top-left corner in the padded
        image (``0..2*pad``) and the mirror flag, drawn from the generator seeded by (seed, step)."""
        b = self.batch_size
        if not self.augment:
            return (torch.full((b,), self.pad), torch.full((b,), self.pad), torch.zeros(b, dtype=torch.bool))
        g = seeded_generator(self.seed, TAG_AUG, step)
        off = torch.randint(0, 2 * self.pad + 1, (2, b), generator=g)
        flip = torch.randint(0, 2, (b,), generator=g).bool()
        return off[0], off[1], flip

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)``: x float32 ``(B, C, H, W)`` normalised (augmented if ``augment``), y int64 ``(B,)``."""
        idx = self.indices(step)
        dy, dx, flip = self.augmentation(step)
        c, h, w = self.shape
        # The mirror of the crop at column dx of image i is the crop at column 2p - dx of image N + i.
        corner = dy * self._wp + torch.where(flip, 2 * self.pad - dx, dx)     # (B,)
        flip = flip.long()
        start = ((idx + self.n * flip) * self._img_stride + corner)[:, None, None] + self._rel   # (B, C, H)
        parts = [start.view(-1), self.y[idx]]
        if self._norm_shift is not None:
            parts.append(((flip * self._img_stride + corner)[:, None, None] + self._rel).view(-1))
        packed = torch.cat(parts)
        if self.device.type != "cpu":
            packed = (packed.pin_memory() if self.device.type == "cuda" else packed).to(self.device, non_blocking=True)
        nr, b = start.numel(), len(idx)
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


def raw_batches(data: ArrayDataset, batch_size: int, *,
                pin_memory: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(x uint8, y int64)`` slices of ``data`` in order, on the CPU (pinned for a fast copy to a GPU with
    ``pin_memory``); the last one may be smaller."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for x, y in zip(data.x.split(batch_size), data.y.split(batch_size)):
        yield (x.pin_memory() if pin_memory else x), y


def eval_input(raw: torch.Tensor, device, normalization: Normalization, *, flip: bool = False,
               channels_last: bool = False) -> torch.Tensor:
    """uint8 ``(B, C, H, W)`` images -> the normalised float batch on ``device`` that a model evaluates
    (mirrored with ``flip``, in channels_last memory format with ``channels_last``)."""
    raw = raw.to(device, non_blocking=True)
    if flip:
        raw = raw.flip(-1)
    x = normalization(raw)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def eval_batches(data: ArrayDataset, batch_size: int, *, device="cpu", normalization: Normalization,
                 flip: bool = False, channels_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """All of ``data`` in order, in batches of ``batch_size`` (the last one may be smaller), normalised,
    not augmented; ``flip=True`` mirrors every image (for flip test-time averaging)."""
    device = torch.device(device)
    for raw, y in raw_batches(data, batch_size, pin_memory=device.type == "cuda"):
        yield eval_input(raw, device, normalization, flip=flip, channels_last=channels_last), \
            y.to(device, non_blocking=True)
