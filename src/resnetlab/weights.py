"""Weights: our checkpoint format, other projects' weight files, strict loading, saving, one model loader.

Our checkpoints (:func:`make_checkpoint`) hold tensors, numbers, strings and containers only, with a checksum;
:func:`load_weights` also reads safetensors, torchvision and akamaster files, strictly, and pickles are read
with ``torch.load(weights_only=True)``. :func:`model_from_checkpoint` is the one way back to a model from a
file; docs/weights.md has the details.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import struct

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .io import atomic_path, atomic_save
from .models import ModelConfig, create_model, model_config

FORMAT = "resnetlab-checkpoint"
VERSION = 1
WEIGHTS_FORMAT = "resnetlab-weights"  # the metadata tag of the safetensors files save_weights writes

# Key renames from other projects' layouts to ours, applied only when the model expects the new name.
_RENAMES = (
    (re.compile(r"^linear\."), "fc."),  # akamaster names the classifier ``linear``
    (re.compile(r"\.shortcut\.(\d+)\."), r".downsample.\1."),  # akamaster option B: shortcut.0/1
)
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP, torch.compile


# ---------------------------------------------------------------------------------- our checkpoint format

def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while hasattr(model, "_orig_mod") or isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model._orig_mod if hasattr(model, "_orig_mod") else model.module
    return model


def _digest(obj, h) -> None:
    """Feed a checkpoint's contents into the hash ``h`` in a fixed order (tensors by dtype, shape and bytes)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for k in sorted(obj, key=repr):
            h.update(repr(k).encode())
            _digest(obj[k], h)
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for v in obj:
            _digest(v, h)
    else:
        h.update(repr(obj).encode())


def checksum(ckpt: dict) -> str:
    """``"sha256:..."`` of a checkpoint's contents, its own ``checksum`` entry aside."""
    h = hashlib.sha256()
    _digest({k: v for k, v in ckpt.items() if k != "checksum"}, h)
    return "sha256:" + h.hexdigest()


def nonfinite_entries(state_dict: dict) -> list[str]:
    """Names of the floating-point tensors of ``state_dict`` that hold a NaN or an infinity."""
    return [k for k, v in state_dict.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(v.isfinite().all())]


def make_checkpoint(model: nn.Module, **extra) -> dict:
    """A checkpoint dict for a (possibly wrapped) ResNet, ``extra`` entries (optimizer state, step, ...)
    beside the weights, and a ``checksum`` of everything, which every reader verifies."""
    model = unwrap(model)
    ckpt = {"format": FORMAT, "version": VERSION, "model_config": model_config(model),
            "model": {k: v.detach().clone() for k, v in model.state_dict().items()}, **extra}
    ckpt["checksum"] = checksum(ckpt)
    return ckpt


def _is_safetensors(path: str) -> bool:
    if path.lower().endswith(".safetensors"):
        return True
    # A safetensors file starts with the little-endian u64 length of a JSON header, then "{".
    with open(path, "rb") as fh:
        head = fh.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 2 <= struct.unpack("<Q", head[:8])[0] <= os.path.getsize(path) - 8


def _load_failure(error: Exception) -> str:
    """The first line of why ``torch.load(weights_only=True)`` refused a file, without PyTorch's advice."""
    text = str(error)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else type(error).__name__


def _read_ours(path: str, map_location="cpu") -> tuple[dict | None, str | None]:
    """``(checkpoint, None)`` for one of ours; ``(None, why it is unreadable)`` or ``(None, None)`` for
    any other file (safetensors files are not unpickled at all); ``FileNotFoundError`` for none."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if _is_safetensors(path):
        return None, None
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # not a pickle, a truncated one, or one holding objects weights_only refuses
        return None, _load_failure(e)
    if not (isinstance(obj, dict) and obj.get("format") == FORMAT):
        return None, None
    _verify(obj, path)
    return obj, None


def _verify(ckpt: dict, path: str) -> None:
    """Refuse a checkpoint whose bytes changed since it was written, or whose weights are not finite."""
    if "checksum" in ckpt and ckpt["checksum"] != checksum(ckpt):
        raise ValueError(f"{path} is corrupted: its contents do not match the checksum it was written with")
    bad = nonfinite_entries(ckpt.get("model") or {})
    if bad:
        raise ValueError(f"{path} holds non-finite values in {', '.join(bad[:5])}"
                         f"{f' and {len(bad) - 5} more' if len(bad) > 5 else ''}; it cannot be used")


RESUMABLE = "last.pt"  # a training run folder's latest checkpoint, the one a resume continues from


def checkpoint_file(path: str) -> str:
    """``path`` itself, or for a training run folder its latest checkpoint (:data:`RESUMABLE`)."""
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, RESUMABLE)):
            raise FileNotFoundError(f"{path} is a folder without a {RESUMABLE} checkpoint")
        return os.path.join(path, RESUMABLE)
    return path


def peek_checkpoint(path: str | os.PathLike) -> dict | None:
    """Our checkpoint in ``path``, or ``None`` when it is another kind of file, unreadable or missing."""
    path = os.fspath(path)
    return _read_ours(path)[0] if os.path.isfile(path) else None


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read one of our checkpoints (``weights_only=True``); clear errors for missing or foreign files."""
    path = os.fspath(path)
    ckpt, unreadable = _read_ours(path, map_location)
    if unreadable is not None:
        raise ValueError(f"{path} is not a readable checkpoint (weights_only load failed: {unreadable})")
    if ckpt is None:
        raise ValueError(f"{path} is not a resnetlab checkpoint (no 'format: {FORMAT}' entry); "
                         f"use resnetlab.load_weights(model, path) for other weight files")
    return ckpt


# ----------------------------------------------------------------------------- weight files of any origin

def load_state_dict_strict(model: nn.Module, state_dict: dict, source: str = "state_dict") -> None:
    """``model.load_state_dict(strict=True)``, or (nothing loaded) a ``ValueError`` listing every missing,
    unexpected and mis-shaped key: PyTorch stops at the first shape mismatch."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    misshaped = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                 for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if missing or unexpected or misshaped:
        parts = []
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if keys:
                shown = ", ".join(keys[:12]) + (f", ... ({len(keys)} in all)" if len(keys) > 12 else "")
                parts.append(f"{title} keys ({len(keys)}): {shown}")
        raise ValueError(f"{source} does not match {type(model).__name__}"
                         f"{' ' + model.spec.name if hasattr(model, 'spec') else ''}: {'; '.join(parts)}")
    with torch.no_grad():
        model.load_state_dict(state_dict, strict=True)


def read_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
    """``(state_dict, kind)`` as stored in ``path``, before any renaming; ``kind``: ``"resnetlab checkpoint"``,
    ``"safetensors"``, ``"state_dict wrapper"`` (akamaster), ``"model wrapper"`` or ``"plain state_dict"``
    (torchvision). Anything that is not a set of named tensors is a ``ValueError`` naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if _is_safetensors(path):
        try:
            return load_file(path, device="cpu"), "safetensors"
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"{path} is not a readable safetensors file ({e})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for foreign objects, EOFError, "invalid load key", ...
        raise ValueError(f"{path} is not a readable weights file: torch.load(weights_only=True) "
                         f"failed: {_load_failure(e)}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a dict of named tensors")
    if obj.get("format") == FORMAT and isinstance(obj.get("model"), dict):
        _verify(obj, path)
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
    """Another layout's keys renamed to ``model``'s (a ``module.``/``_orig_mod.`` prefix on every key
    stripped, :data:`_RENAMES` where the model expects the new name) and missing ``num_batches_tracked``
    zero-filled; any other difference is left for :func:`load_state_dict_strict` to report."""
    own = model.state_dict()
    sd = dict(state_dict)
    for prefix in _WRAPPER_PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    renamed = {}
    for k, v in sd.items():
        new = k
        for pattern, repl in _RENAMES:
            new = pattern.sub(repl, new)
        if k in own or new not in own:
            new = k  # the name fits already, or renaming did not help: keep it (for the error)
        renamed[k if new in renamed else new] = v
    # BatchNorm's step counter is unused in eval and by momentum-based training; old PyTorch and some
    # projects do not save it. It is the only thing allowed to be missing.
    for k, v in own.items():
        if k.endswith("num_batches_tracked") and k not in renamed:
            renamed[k] = torch.zeros_like(v, device="cpu")
    return renamed


def load_weights(model: nn.Module, path: str | os.PathLike) -> str:
    """Load any weights file :func:`read_weights` reads into ``model``, strictly; returns its kind."""
    path = os.fspath(path)
    model = unwrap(model)
    sd, kind = read_weights(path)
    load_state_dict_strict(model, convert_state_dict(sd, model), source=f"{path} ({kind})")
    return kind


def save_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Write ``model``'s state_dict: ``.safetensors`` (with the model config as metadata when known)
    or ``.pt``/``.pth`` (a plain ``torch.save(state_dict)``, as torchvision publishes). Atomic."""
    path = os.fspath(path)
    model = unwrap(model)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    ext = os.path.splitext(path)[1].lower()
    if ext in (".pt", ".pth"):
        atomic_save(sd, path)
        return
    if ext != ".safetensors":
        raise ValueError(f"{path}: unknown weights extension {ext!r} (use .safetensors, .pt or .pth)")
    metadata = {"format": WEIGHTS_FORMAT}
    if hasattr(model, "spec") and hasattr(model, "options"):
        metadata["model_config"] = json.dumps(model_config(model))
    with atomic_path(path) as tmp:
        save_file(sd, tmp, metadata=metadata)


def _safetensors_config(path: str) -> dict:
    """The ``create_model`` config in the metadata of a safetensors file written by :func:`save_weights`;
    ``{}`` for other safetensors files."""
    try:
        with safe_open(path, framework="pt") as fh:
            config = json.loads((fh.metadata() or {}).get("model_config", "{}"))
    except (SafetensorError, OSError, ValueError):  # unreadable, or metadata that is not JSON
        return {}
    return config if isinstance(config, dict) else {}


# --------------------------------------------------------------- the one loader: a model back from a file

def _config_text(config: dict) -> str:
    if not config:
        return "an unrecorded architecture"
    rest = ", ".join(f"{k}={v}" for k, v in config.items() if k != "name")
    return f"{config.get('name')}" + (f" with {rest}" if rest else "")


def _build(model, recorded: dict, options: dict) -> nn.Module:
    if model is None:
        return create_model(**{**recorded, **options})
    if isinstance(model, (str, ModelConfig)):
        # Another architecture's weights must fail to load, not be silently reshaped, so only the class
        # count (which a name does not imply) is taken from the file.
        counts = {"num_classes": recorded["num_classes"]} if "num_classes" in recorded else {}
        return create_model(model, **{**counts, **options})
    if options:
        raise ValueError(f"model options ({', '.join(sorted(options))}) build a model by name; "
                         f"they do not apply to the {type(model).__name__} given")
    return model


def check_same_architecture(model: nn.Module, recorded: dict, source: str) -> None:
    """Refuse weights recorded for another architecture that happen to fit ``model``'s keys and shapes (a
    ``transition=none`` net and option A have the same parameters, as do other shortcut scales or paddings):
    loading them would silently change the function."""
    options = getattr(model, "options", None)
    if not isinstance(options, ModelConfig) or not recorded:
        return
    saved = ModelConfig.from_dict(recorded, where=source).architecture()
    here = options.architecture()
    diff = [f"{k}: {saved[k]!r} in the file, {here[k]!r} here" for k in saved if saved[k] != here[k]]
    if diff:
        raise ValueError(f"{source} was trained as another architecture than the model it is loaded into "
                         f"({'; '.join(diff)}); rebuild it from the checkpoint (give no model options)")


def model_from_checkpoint(path: str | os.PathLike, model: str | ModelConfig | nn.Module | None = None, *,
                          map_location="cpu", **options) -> tuple[nn.Module, dict | None]:
    """``(model, checkpoint)``: the network stored in ``path``, its weights loaded strictly.

    ``model`` None rebuilds the architecture the file records (``options`` override recorded fields); a
    name or :class:`~resnetlab.models.ModelConfig` builds that (with the recorded class count unless
    ``num_classes`` is given), so another architecture's weights fail with the mismatched keys; an
    ``nn.Module`` is loaded into as it is. ``checkpoint`` is our checkpoint dict, or ``None`` for other files.
    """
    path = os.fspath(path)
    ckpt, unreadable = _read_ours(path, map_location)
    if ckpt is not None:
        recorded = dict(ckpt.get("model_config") or {})
        net = _build(model, recorded, options)
        try:
            load_state_dict_strict(unwrap(net), ckpt["model"], source=path)
        except ValueError as e:
            raise ValueError(f"{e} (the checkpoint was trained as {_config_text(recorded)})") from None
        check_same_architecture(unwrap(net), recorded, path)
        return net, ckpt
    recorded = _safetensors_config(path) if model is None and _is_safetensors(path) else {}
    if model is None and not recorded.get("name"):
        if unreadable is not None:
            raise ValueError(f"{path} could not be read safely with torch.load(weights_only=True): {unreadable}")
        raise ValueError(f"{path} is not a resnetlab checkpoint and records no architecture; for weights "
                         f"from another project (torchvision .pth, akamaster .th, .safetensors) name the "
                         f"architecture to load them into (--model NAME [--shortcut A|B|C|none])")
    net = _build(model, recorded, options)
    load_weights(net, path)
    return net, None
