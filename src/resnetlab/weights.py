"""Loading weights from our checkpoints and from other projects' files, never silently partially.

:func:`load_weights` reads four kinds of file and loads them with ``strict=True`` semantics:

* our checkpoints (``{"format": "resnetlab-checkpoint", "model": state_dict, ...}``),
* safetensors files (``.safetensors``, or any file that starts like one),
* torchvision ``.pth`` files: a plain state_dict (``conv1.weight``, ``layer1.0.downsample.0.weight``,
  ``fc.weight``, ...), the parameter names our ImageNet models use,
* akamaster/pytorch_resnet_cifar10 checkpoints: ``{"state_dict": {"module.conv1.weight", ...,
  "module.linear.weight"}, "best_prec1": ...}``, without ``num_batches_tracked`` buffers.

Pickled files are read with ``torch.load(weights_only=True)``: tensors, numbers, strings and containers
only, never arbitrary objects (a pickle can run code when it is loaded).
"""
from __future__ import annotations

import json
import os
import re
import struct
import tempfile

import torch
from torch import nn

# Key renames from other projects' layouts to ours, applied only when the model expects the new name.
_RENAMES = (
    (re.compile(r"^linear\."), "fc."),  # akamaster names the classifier ``linear``
    (re.compile(r"\.shortcut\.(\d+)\."), r".downsample.\1."),  # akamaster option B: shortcut.0/1
)
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP, torch.compile


def load_state_dict_strict(model: nn.Module, state_dict: dict, source: str = "state_dict") -> None:
    """``model.load_state_dict(strict=True)`` with an error that lists missing, unexpected and
    mis-shaped keys (PyTorch stops at the first shape mismatch with a less readable message)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    misshaped = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                 for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if missing or unexpected or misshaped:
        parts = [f"{source} does not match {type(model).__name__}"
                 f"{' ' + model.spec.name if hasattr(model, 'spec') else ''}:"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if keys:
                shown = ", ".join(keys[:12]) + (f", ... ({len(keys)} in all)" if len(keys) > 12 else "")
                parts.append(f"  {title} keys ({len(keys)}): {shown}")
        raise ValueError("\n".join(parts))
    with torch.no_grad():
        model.load_state_dict(state_dict, strict=True)


def _looks_like_safetensors(path: str) -> bool:
    # A safetensors file starts with the little-endian u64 length of a JSON header, then "{".
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= os.path.getsize(path) - 8


def read_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
    """``(state_dict, kind)`` as stored in ``path``, before any renaming.

    ``kind`` is one of ``"resnetlab checkpoint"``, ``"safetensors"``, ``"state_dict wrapper"`` (a dict
    with a ``"state_dict"`` entry, e.g. akamaster), ``"model wrapper"`` (a dict with a ``"model"`` dict)
    or ``"plain state_dict"`` (e.g. torchvision).
    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for anything that
    is not a set of named tensors.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.endswith(".safetensors") or _looks_like_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(path, device="cpu"), "safetensors"
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"{path} is not a readable safetensors file ({e})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for foreign objects, EOFError, "invalid load key", ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path} is not a readable weights file: torch.load(weights_only=True) "
                         f"failed: {first}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a dict of named tensors")
    if obj.get("format") == "resnetlab-checkpoint" and isinstance(obj.get("model"), dict):
        sd, kind = obj["model"], "resnetlab checkpoint"
    elif isinstance(obj.get("state_dict"), dict):
        sd, kind = obj["state_dict"], "state_dict wrapper"
    elif isinstance(obj.get("model"), dict):
        sd, kind = obj["model"], "model wrapper"
    else:
        sd, kind = obj, "plain state_dict"
    bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad or not sd:
        what = f"non-tensor entries {', '.join(map(str, bad[:5]))}" if bad else "no tensors"
        raise ValueError(f"{path} ({kind}) is not a state_dict: it has {what}")
    return sd, kind


def convert_state_dict(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename another layout's keys to ``model``'s and fill missing ``num_batches_tracked`` with zeros.

    Strips a ``module.`` (DataParallel) or ``_orig_mod.`` (torch.compile) prefix carried by every key,
    renames ``linear.`` -> ``fc.`` and ``shortcut.N`` -> ``downsample.N`` where the model expects it.
    Nothing else is tolerated: every other difference is left for :func:`load_state_dict_strict` to report.
    """
    own = model.state_dict()
    sd = dict(state_dict)
    for prefix in _WRAPPER_PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    renamed = {}
    for k, v in sd.items():
        new = k
        if new not in own:
            for pattern, repl in _RENAMES:
                new = pattern.sub(repl, new)
            if new not in own:
                new = k  # renaming did not help: keep the original name in the error
        renamed[k if new in renamed else new] = v
    # BatchNorm's step counter is unused in eval and by momentum-based training; old PyTorch and some
    # projects do not save it. It is the only thing allowed to be missing.
    for k, v in own.items():
        if k.endswith("num_batches_tracked") and k not in renamed:
            renamed[k] = torch.zeros_like(v, device="cpu")
    return renamed


def load_weights(model: nn.Module, path: str | os.PathLike) -> str:
    """Load ``path`` into ``model`` strictly; returns the kind of file it was.

    Accepts our checkpoints, safetensors files, torchvision ``.pth`` state_dicts and
    akamaster/pytorch_resnet_cifar10 checkpoints (see the module docstring). A file that does not match
    the model raises ``ValueError`` listing the missing, unexpected and mis-shaped keys; nothing is loaded.
    """
    from .checkpoint import unwrap
    path = os.fspath(path)
    model = unwrap(model)
    sd, kind = read_weights(path)
    load_state_dict_strict(model, convert_state_dict(sd, model), source=f"{path} ({kind})")
    return kind


def save_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Write ``model``'s state_dict: ``.safetensors`` (with the model config as metadata when known)
    or ``.pt``/``.pth`` (a plain ``torch.save(state_dict)``, as torchvision publishes). Atomic."""
    from .checkpoint import atomic_save, unwrap
    path = os.fspath(path)
    model = unwrap(model)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    ext = os.path.splitext(path)[1].lower()
    if ext in (".pt", ".pth"):
        atomic_save(sd, path)
        return
    if ext != ".safetensors":
        raise ValueError(f"{path}: unknown weights extension {ext!r} (use .safetensors, .pt or .pth)")
    from safetensors.torch import save_file
    metadata = {"format": "resnetlab-weights"}
    if hasattr(model, "spec") and hasattr(model, "options"):
        from .models import model_config
        metadata["model_config"] = json.dumps(model_config(model))
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=folder)
    os.close(fd)
    try:
        save_file(sd, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
