"""Our checkpoint format, written atomically and read without unpickling arbitrary objects.

A checkpoint is a dict saved with ``torch.save`` that holds only tensors, numbers, strings, lists, dicts
and ``None``, so ``torch.load(weights_only=True)`` reads it:

    {"format": "resnetlab-checkpoint", "version": 1,
     "model_config": {"name": "resnet20", "shortcut": "A", ...},   # create_model(**model_config)
     "model": state_dict,                                          # unwrapped, uncompiled
     "normalization": {...} | None,                                # how inputs were preprocessed
     "classes": [...] | None,
     ... anything else the writer adds (optimizer, step, RNG states, config, versions, metrics)}
"""
from __future__ import annotations

import os
import tempfile

import torch

FORMAT = "resnetlab-checkpoint"
VERSION = 1


def atomic_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash (even SIGKILL) at any moment leaves either the old file or the new one, never a torn file.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def make_checkpoint(model, **extra) -> dict:
    """A checkpoint dict for ``model`` (a :class:`resnetlab.models.ResNet`, possibly wrapped)."""
    from .models import model_config
    model = unwrap(model)
    return {"format": FORMAT, "version": VERSION, "model_config": model_config(model),
            "model": {k: v.detach().clone() for k, v in model.state_dict().items()}, **extra}


def unwrap(model):
    """The plain module inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read one of our checkpoints (``weights_only=True``); clear errors for missing or foreign files."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a readable checkpoint (weights_only load failed: {e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a resnetlab checkpoint (no 'format: {FORMAT}' entry); "
                         f"use resnetlab.load_weights(model, path) for other weight files")
    return ckpt


def model_from_checkpoint(path: str | os.PathLike, map_location="cpu"):
    """``(model, checkpoint)``: rebuild the architecture recorded in the checkpoint and load its weights."""
    from .models import create_model
    from .weights import load_state_dict_strict
    ckpt = load_checkpoint(path, map_location)
    model = create_model(**ckpt["model_config"])
    load_state_dict_strict(model, ckpt["model"], source=os.fspath(path))
    return model, ckpt
