"""What ``resnetlab analyze`` and ``landscape`` run on: ``MODEL|CKPT`` (a fresh model by name, or a
checkpoint's recorded architecture and weights) and its data, normalised as the checkpoint was trained.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import os
from dataclasses import dataclass
from typing import Literal, Optional

import torch

from .datasets import DATA_DIR_HINT, NAMED_DATASETS, load_dataset
from .models import ModelConfig, create_model
from .stream import Normalization, eval_batches
from .weights import check_same_architecture, checkpoint_file, load_checkpoint, load_state_dict_strict


@dataclass(frozen=True)
class SourceOptions:
    """The options of ``analyze`` and ``landscape`` that say what they run on (with MODEL|CKPT)."""

    model: ModelConfig = ModelConfig()
    """fresh models: their options; checkpoints: the architecture they must hold (default: as recorded)"""
    data: Optional[Literal[NAMED_DATASETS]] = None
    """data set to measure on; default: a checkpoint's own (from its recorded folder), else synthetic"""
    data_dir: Optional[str] = None
    """folder (or .tar.gz) of the data set; not needed for synthetic"""


def load_model(source: str, model: ModelConfig | None = None, seed: int = 0, name_given: bool | None = None):
    """``(model, checkpoint or None)`` for MODEL|CKPT: a registered name builds a fresh model with the
    options of ``model`` (and ``seed`` unless it sets one); a checkpoint path (a run folder: its ``last.pt``)
    rebuilds the recorded architecture, or, given ``model`` with its name (``name_given``), that one, which
    the weights must fit."""
    if name_given is None:
        name_given = model is not None and model.name != ModelConfig().name
    if not (os.path.exists(source) or os.sep in source or source.endswith((".pt", ".pth"))):  # a model name
        if name_given:
            raise ValueError(f"--model names the architecture of a checkpoint; {source!r} is a model name, "
                             f"not a checkpoint path")
        config = dataclasses.replace(model or ModelConfig(), name=source)
        return create_model(config, seed=seed if config.seed is None else config.seed), None
    source = checkpoint_file(source)  # a training run folder: its latest checkpoint
    ckpt = load_checkpoint(source)
    recorded = ModelConfig.from_dict(dict(ckpt.get("model_config") or {}), where=source)
    if model is not None and not name_given:
        given = [f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(ModelConfig)
                 if getattr(model, f.name) != getattr(ModelConfig(), f.name)]
        raise ValueError(f"model options ({', '.join(given)}) apply to fresh models; {source} already records "
                         f"its architecture (add --model NAME to load it into another configuration)")
    if model is not None and recorded.spec.name != model.spec.name:
        raise ValueError(f"checkpoint {source} holds a {recorded.name}, not the {model.name} given with --model")
    net = create_model(model or recorded)  # a configuration given must fit the weights: strict loading checks it
    load_state_dict_strict(net, ckpt["model"], source=source)
    check_same_architecture(net, ckpt.get("model_config") or {}, source)
    return net, ckpt


@functools.cache
def _synthetic(size: int = 32, data_dir: str | None = None) -> dict:
    """The synthetic set at ``size`` pixels, generated once per process (it is deterministic)."""
    return load_dataset("synthetic", data_dir, image_size=size)


def resolve_data(name: str | None, data_dir: str | None, ckpt: dict | None,
                 missing_dir_ok: bool = False) -> tuple[str, str | None]:
    """``(dataset, folder)`` to measure on: the ones given, else those the checkpoint was trained on (its
    recorded folder, which must still exist unless ``missing_dir_ok``), else (a fresh model) the synthetic
    set. Measuring a checkpoint on another dataset than its own takes an explicit ``--data``."""
    recorded, config = (ckpt or {}).get("data") or {}, (ckpt or {}).get("config") or {}
    trained_on = recorded.get("name") or config.get("data")
    if name is None:
        if ckpt is None:
            return "synthetic", data_dir
        if trained_on is None:
            raise ValueError("the checkpoint does not record its dataset: give --data NAME (and --data-dir)")
        name = trained_on
    recorded_dir = recorded.get("dir") or config.get("data_dir")
    if data_dir is None and name == trained_on and name != "synthetic" and recorded_dir is not None:
        if os.path.exists(recorded_dir):
            data_dir = recorded_dir
        elif not missing_dir_ok:
            raise FileNotFoundError(f"the checkpoint was trained on {name} from {recorded_dir}, which is not there "
                                    f"any more: give --data-dir")
    return name, data_dir


def load_data(name: str, data_dir: str | None, ckpt: dict | None):
    """``(splits, normalization)``: the data set and the checkpoint's normalisation (or, for a fresh model,
    per-channel mean/std fitted on the training split)."""
    size = int(((ckpt or {}).get("data") or {}).get("image_size") or 32)  # the side it was trained on
    splits = _synthetic(size, data_dir) if name == "synthetic" else load_dataset(name, data_dir, hint=DATA_DIR_HINT)
    state = (ckpt or {}).get("normalization")
    norm = Normalization.from_state_dict(state) if state else Normalization.fit(splits["train"].x, mode="channel")
    return splits, norm


def seeded_subset(ds, n: int, seed: int):
    """The first ``n`` images of a permutation of ``ds`` seeded by ``seed`` (all when ``n >= len``)."""
    g = torch.Generator().manual_seed(seed)
    return ds.subset(torch.randperm(len(ds.y), generator=g)[: max(1, min(n, len(ds.y)))])


def labelled_batches(data, normalization, batch_size, device, max_batches=None):
    """Batches ``(x, y)`` on ``device`` from an ArrayDataset or from an iterable of ``(x, y)`` pairs."""
    if hasattr(data, "x") and hasattr(data, "y"):
        data = eval_batches(data, batch_size, device=device, normalization=normalization.to(device))
    for xb, yb in itertools.islice(data, max_batches):
        yield xb.to(device), yb.to(device)
