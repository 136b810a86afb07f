"""Training: ``resnetlab train`` and :func:`train`, one readable loop that is fast and exactly resumable.

A batch is a pure function of ``(seed, step)``, the learning rate one of the step, and a checkpoint holds
everything else that evolves, so a resumed CPU run ends bit for bit where an uninterrupted one does.
docs/train.md describes the run folder, the recipes, resume and the speed options.
"""
from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import fused
from .config import Ints, parse, to_dict
from .datasets import DATA_DIR_HINT, load_dataset
from .evaluate import evaluate
from .io import (PRECISIONS, FolderLock, atomic_save, atomic_write, format_duration, naming, read_json, remove_litter,
                 write_json)
from .models import ModelConfig, count_parameters, create_model, model_config
from .runtime import (end_distributed, physical_cores, resolve_precision, rng_state, set_rng_state,
                      setup_distributed, sync_batch_norm, versions)
from .stream import Normalization, TrainStream
from .schedule import RECIPES, SCHEDULES, WARMUPS, Schedule, get_recipe, resolve_warmup, scale_milestones
from .weights import RESUMABLE, load_checkpoint, make_checkpoint, nonfinite_entries


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: the message says at which step, where the last checkpoint is (``progress``), and
    how to resume."""

    def __init__(self, progress: str, resume: str):
        super().__init__(f"{progress}; continue with: {resume}")
        self.progress = progress


class TrainingDiverged(ValueError):
    """The loss (or a weight) became NaN or infinite; the run folder keeps the last good checkpoint."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run. Fields left at ``None`` take the recipe's value."""

    # --- model
    model: ModelConfig = ModelConfig()
    """the network: name and options (its seed defaults to --seed)"""
    seed: int = 0
    """seeds model init AND data order: runs with the same seed see the same batches"""
    # --- data
    data: str = "cifar10"
    """dataset: cifar10 | cifar100 | synthetic"""
    data_dir: Optional[str] = None
    """dataset folder or .tar.gz (default: the cache folder)"""
    download: bool = False
    """download the dataset into the cache folder if it is missing"""
    val_split: int = 0
    """training images held out for validation (the paper: 5000)"""
    split_seed: int = 0
    """seed of the train/val split (kept apart from --seed so twins share it)"""
    synthetic_size: int = 32
    """side in pixels of the synthetic images (the demo trains on 16x16: a quarter of the arithmetic)"""
    augment: bool = True
    """random crop from the image padded by 1/8 of its side (4 pixels at 32x32, the paper's) + horizontal flip"""
    normalization: Optional[Literal["pixel", "channel"]] = None
    """input normalization: pixel (mean image) or channel (mean/std)"""
    padding: Optional[Literal["black", "mean"]] = None
    """crop border: black (0 before normalising) or mean (0 after)"""
    # --- run folder
    out: Optional[str] = None
    """run folder (config.json, metrics, checkpoints, final.json)"""
    resume: bool = False
    """continue the run in --out from its last.pt"""
    # --- recipe and optimiser
    recipe: Literal[tuple(RECIPES)] = "he2016-cifar"
    """preset for the fields left unset"""
    iterations: Optional[int] = None
    """optimizer steps (recipe milestones scale with it)"""
    batch_size: Optional[int] = None
    """global batch size"""
    lr: Optional[float] = None
    """peak learning rate"""
    momentum: Optional[float] = None
    """SGD momentum"""
    nesterov: Optional[bool] = None
    """Nesterov momentum"""
    weight_decay: Optional[float] = None
    """L2 weight decay"""
    decay_norm_and_bias: Optional[bool] = None
    """also decay BN weights and biases (parameters with ndim <= 1)"""
    schedule: Optional[Literal[SCHEDULES]] = None
    """lr schedule"""
    milestones: Optional[Ints] = None
    """steps where the step schedule multiplies lr by gamma"""
    gamma: Optional[float] = None
    """step schedule factor"""
    warmup: Optional[Literal[WARMUPS]] = None
    """warm-up: auto (he2016 for depth >= 110), none, he2016, linear"""
    warmup_lr: Optional[float] = None
    """lr during the he2016 warm-up / start of the linear ramp"""
    warmup_steps: Optional[int] = None
    """he2016: at most this many warm-up steps (0, the recipe's: it ends on the training error alone); linear: ramp length"""
    warmup_error: Optional[float] = None
    """he2016 warm-up ends once the training error is below this"""
    label_smoothing: Optional[float] = None
    """label smoothing of the training loss"""
    grad_clip: Optional[float] = None
    """clip the global gradient norm to this (0: off)"""
    # --- logging, evaluation, checkpoints
    log_every: int = 100
    """steps between log lines / metrics (the only host syncs of the loop)"""
    eval_every: int = 2000
    """steps between val/test evaluations (and at the end)"""
    eval_batch_size: int = 1000
    """batch size of evaluation"""
    checkpoint_every: int = 1000
    """steps between last.pt checkpoints (and at the end)"""
    save_at: Ints = ()
    """steps at which to keep step_<N>.pt"""
    tensorboard: bool = False
    """also write TensorBoard logs to OUT/tb (needs the tensorboard package)"""
    quiet: bool = False
    """no progress lines"""
    # --- speed
    device: str = "auto"
    """auto | cpu | cuda | cuda:N"""
    precision: Literal[PRECISIONS] = "auto"
    """auto (bf16 + channels_last on CUDA and AMX CPUs, fp32 + channels_last on other AVX-512 CPUs, else fp32) | fp32 | bf16"""
    channels_last: Optional[bool] = None
    """channels_last memory format (default: as --precision decides)"""
    compile: bool = False
    """torch.compile the model"""
    compile_mode: str = "default"
    """torch.compile mode (default, max-autotune-no-cudagraphs, ...)"""
    fused_bn: Literal[("auto", "on", "off")] = "auto"
    """fused batch norm + ReLU (+ residual add) kernels for fp32 channels_last CPU training: auto (use them there when the extension builds) | on | off"""
    threads: Optional[int] = None
    """CPU threads (default: the physical cores available)"""
    sync_bn: bool = False
    """batch norm with the global batch's statistics over all processes, not each slice's (fused BN off; docs/train.md)"""
    allow_world_size_change: bool = False
    """resume with another number of processes than the run had (its per-process batches and BN statistics change)"""
    deterministic: bool = False
    """deterministic algorithms (CUDA: slower; CPU runs are exact anyway)"""


# --------------------------------------------------------------------------------- Configuration resolution

def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """Fill the ``None`` fields from the recipe (scaling its milestones and warm-up length to ``iterations``)
    and validate."""
    asked_warmup = cfg.warmup
    recipe = get_recipe(cfg.recipe)
    length = recipe["iterations"]
    iterations = cfg.iterations if cfg.iterations is not None else length
    # A recipe's milestones and warm-up keep their share of the run (the warm-up at least one step).
    recipe["milestones"] = scale_milestones(recipe["milestones"], length, iterations)
    if recipe["warmup_steps"]:
        recipe["warmup_steps"] = max(1, round(recipe["warmup_steps"] * iterations / length))
    values = {key: default for key, default in recipe.items() if getattr(cfg, key) is None}
    if cfg.data_dir is not None:  # recorded absolute, so the run's checkpoints work from any folder
        values["data_dir"] = os.path.abspath(os.path.expanduser(cfg.data_dir))
    cfg = dataclasses.replace(cfg, **values)
    cfg = dataclasses.replace(cfg, warmup=resolve_warmup(cfg.warmup, cfg.model.spec.depth))
    checks = [
        (cfg.iterations >= 1, f"iterations must be >= 1, got {cfg.iterations}"),
        (cfg.batch_size >= 1, f"batch_size must be >= 1, got {cfg.batch_size}"),
        (cfg.lr > 0, f"lr must be > 0, got {cfg.lr}"),
        (0 <= cfg.momentum < 1, f"momentum must be in [0, 1), got {cfg.momentum}"),
        (cfg.weight_decay >= 0, f"weight_decay must be >= 0, got {cfg.weight_decay}"),
        (cfg.gamma > 0, f"gamma must be > 0, got {cfg.gamma}"),
        (all(0 <= m <= cfg.iterations for m in cfg.milestones),  # (the recipe's are scaled to fit)
         f"milestones must lie between 0 and iterations ({cfg.iterations}), got {tuple(cfg.milestones)}"),
        (all(1 <= s <= cfg.iterations for s in cfg.save_at),  # a step the run never reaches saves nothing
         f"save_at steps must lie between 1 and iterations ({cfg.iterations}), got {tuple(cfg.save_at)}"),
        (cfg.schedule in SCHEDULES, f"unknown schedule {cfg.schedule!r}; valid: {', '.join(SCHEDULES)}"),
        (cfg.normalization in ("pixel", "channel"), f"normalization must be pixel or channel, got {cfg.normalization!r}"),
        (cfg.padding in ("black", "mean"), f"padding must be black or mean, got {cfg.padding!r}"),
        (cfg.log_every >= 1 and cfg.eval_every >= 1 and cfg.checkpoint_every >= 1,
         "log_every, eval_every and checkpoint_every must be >= 1"),
        (0 <= cfg.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {cfg.label_smoothing}"),
        (cfg.grad_clip >= 0, f"grad_clip must be >= 0, got {cfg.grad_clip}"),
        (cfg.val_split >= 0, f"val_split must be >= 0, got {cfg.val_split}"),
        (8 <= cfg.synthetic_size <= 512, f"synthetic_size must be in [8, 512], got {cfg.synthetic_size}"),
        (cfg.threads is None or cfg.threads >= 1, f"threads must be >= 1, got {cfg.threads}"),
        (cfg.out is not None and str(cfg.out).strip() != "", "a run folder is required: --out RUN_DIR"),
        (not cfg.tensorboard or importlib.util.find_spec("tensorboard") is not None,  # before the folder exists
         "--tensorboard needs the tensorboard package (pip install tensorboard)"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    for key, (by, kinds) in _READ_ONLY_BY.items():  # a value that this run's schedule or warm-up never reads
        if getattr(cfg, by) not in kinds and getattr(cfg, key) != recipe[key]:
            raise ValueError(f"--{key.replace('_', '-')} applies to --{by} {' or '.join(kinds)}, and this run's "
                             f"{by} is {getattr(cfg, by)}" + (" (auto: he2016 from depth 110)"
                                                             if by == "warmup" and asked_warmup in (None, "auto") else ""))
    return cfg


# Settings that only some schedules or warm-ups read: set for another, they would be ignored silently (the
# recipe's own values are no mistake: a recorded config given back as --config holds them).
_READ_ONLY_BY = {"milestones": ("schedule", ("step",)), "gamma": ("schedule", ("step",)),
                 "warmup_lr": ("warmup", ("he2016", "linear")), "warmup_steps": ("warmup", ("he2016", "linear")),
                 "warmup_error": ("warmup", ("he2016",))}


def make_schedule(cfg: TrainConfig) -> Schedule:
    """The :class:`Schedule` of a resolved config."""
    return Schedule(lr=cfg.lr, iterations=cfg.iterations, schedule=cfg.schedule, milestones=tuple(cfg.milestones),
                    gamma=cfg.gamma, warmup=cfg.warmup, warmup_lr=cfg.warmup_lr, warmup_steps=cfg.warmup_steps)


def param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> list[dict]:
    """SGD parameter groups. Without ``decay_norm_and_bias``, parameters of rank <= 1 (BN scales and shifts,
    biases) get no weight decay: decaying them only shrinks the scale BN is free to choose."""
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_norm_and_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


METRIC_COLUMNS = ("step", "kind", "split", "loss", "error", "top5_error", "lr", "img_per_s", "time")


class MetricsLog:
    """``metrics.jsonl`` (one JSON object per event) and the same events as ``metrics.csv``."""

    def __init__(self, folder: str, enabled: bool = True, tensorboard: bool = False):
        self.jsonl, self.csv = os.path.join(folder, "metrics.jsonl"), os.path.join(folder, "metrics.csv")
        self.enabled, self.tb = enabled, None
        if enabled and tensorboard:  # resolve_config has checked that the package is there
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(os.path.join(folder, "tb"))

    def events(self) -> list[dict]:
        if not os.path.exists(self.jsonl):
            return []
        with open(self.jsonl) as fh:
            lines = fh.read().split("\n")
        # A last line without its newline is an append cut short (disk full): an event after the last
        # checkpoint, which a resume drops anyway.
        return [json.loads(line) for line in lines[:-1] if line.strip()]

    def keep_until(self, step: int) -> None:
        """Drop events after ``step`` (written by a run that was later interrupted) and rebuild the CSV."""
        if not self.enabled:
            return
        kept = [e for e in self.events() if e["step"] <= step]
        # Rewritten atomically: a kill here must not lose the history the resume keeps.
        with atomic_write(self.jsonl, "w") as fh:
            fh.writelines(json.dumps(e) + "\n" for e in kept)
        with atomic_write(self.csv, "w", newline="") as fh:
            writer = csv.DictWriter(fh, METRIC_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(kept)

    def write(self, event: dict) -> None:
        if not self.enabled:
            return
        with naming(self.jsonl), open(self.jsonl, "a") as fh:
            fh.write(json.dumps(event) + "\n")
        with naming(self.csv), open(self.csv, "a", newline="") as fh:  # keep_until wrote its header
            csv.DictWriter(fh, METRIC_COLUMNS, extrasaction="ignore").writerow(event)
        if self.tb is not None:
            tag = event["kind"] if event["kind"] == "train" else event["split"]
            for k in ("loss", "error", "top5_error", "lr", "img_per_s"):
                if event.get(k) is not None:
                    self.tb.add_scalar(f"{tag}/{k}", event[k], event["step"])
            self.tb.flush()


def _check_resumable(ckpt: dict, model_cfg: dict, cfg: TrainConfig, path: str) -> None:
    """A checkpoint can only continue the same architecture on the same data."""
    then = {**ckpt["model_config"], "data": ckpt.get("data", {}).get("name")}
    now = {**model_cfg, "data": cfg.data}
    diff = [f"{k}: {then.get(k)!r} in the checkpoint vs {now.get(k)!r} now"
            for k in sorted(set(then) | set(now)) if then.get(k) != now.get(k)]
    if diff:
        raise ValueError(f"cannot resume {path}: it was trained with a different model or data ({'; '.join(diff)}); "
                         f"use another --out for a new run")


# ---------------------------------------------------------------------------------------- The training loop

def use_fused_bn(setting: str, device: torch.device, bf16: bool, channels_last: bool, compiled: bool,
                 synced: bool = False) -> bool:
    """Whether to try the fused batch-norm kernels: ``auto`` where they apply (fp32 channels_last CPU
    training without torch.compile or synced BN: the kernels see one process's statistics only), ``on``
    there too (and a ``ValueError`` elsewhere), ``off`` never."""
    applies = device.type == "cpu" and not bf16 and channels_last and not compiled and not synced
    if setting == "on" and not applies:
        raise ValueError("--fused-bn on needs CPU training in fp32 with channels_last, without --compile and "
                         f"synced BN (here: device {device.type}, {'bf16' if bf16 else 'fp32'}, "
                         f"channels_last {channels_last}, compile {compiled}, synced BN {synced})")
    return setting != "off" and applies


def train_step(net: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, *,
               bf16: bool = False, label_smoothing: float = 0.0, grad_clip: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step: forward (bf16 autocast if asked), cross-entropy, backward, optional global
    gradient-norm clipping, optimizer step. Returns ``(loss, error)`` as device tensors: no host sync."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = net(x)
    loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    optimizer.step()
    error = (logits.detach().argmax(1) != y).float().mean()
    return loss.detach(), error


def _runtime_setup(cfg: TrainConfig, device: torch.device) -> None:
    """Threads, determinism and the global RNGs (the model and the batches have their own seeds)."""
    if device.type == "cpu":
        torch.set_num_threads(cfg.threads or physical_cores())
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg.deterministic
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2 ** 32)


def _enable_fused(cfg: TrainConfig, model: nn.Module, device, bf16: bool, channels_last: bool, synced: bool,
                  say) -> bool:
    """Swap in the fused batch-norm kernels where they apply; ``True`` if they are on."""
    if not use_fused_bn(cfg.fused_bn, device, bf16, channels_last, cfg.compile, synced):
        return False
    if not fused.built():
        say(f"compiling the fused batch-norm kernels into {fused.build_folder()} (once; about a minute)")
    if fused.extension() is not None:
        fused.enable(model)
        return True
    if cfg.fused_bn == "on":
        raise ValueError(f"--fused-bn on: the extension could not be built ({fused.unavailable_reason()})")
    say(f"fused batch-norm kernels unavailable ({fused.unavailable_reason()}); using PyTorch's ops")
    return False


def recorded(out: str) -> dict:
    """A run folder's ``config.json`` (config, runtime, resumes, ...); ``{}`` if it has none."""
    path = os.path.join(out, "config.json")
    return read_json(path) if os.path.isfile(path) else {}


def recorded_runtime(out: str) -> dict:
    """What a run folder's ``config.json`` records under ``runtime`` (precision, layout, ...); ``{}`` if none."""
    return recorded(out).get("runtime", {})


def _refuse_existing_run(cfg: TrainConfig, out: str) -> None:
    if not cfg.resume and any(os.path.exists(os.path.join(out, f)) for f in (RESUMABLE, "final.json")):
        raise ValueError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")


def train(config: TrainConfig) -> dict:
    """Train as ``config`` says, writing the run folder ``config.out``; returns the final metrics."""
    cfg = resolve_config(config)
    dist = setup_distributed(cfg.device)
    device, main = dist.device, dist.rank == 0
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if (main and not cfg.quiet) else (lambda *a: None)
    _runtime_setup(cfg, device)
    out = os.fspath(cfg.out)
    last_path = os.path.join(out, RESUMABLE)
    _refuse_existing_run(cfg, out)
    if cfg.data != "synthetic" and cfg.data_dir is not None and not os.path.exists(cfg.data_dir):
        raise FileNotFoundError(f"data folder not found: {cfg.data_dir}")

    # 1. Data: the (seeded) split, normalisation statistics of the training images, the batch stream.
    data = load_dataset(cfg.data, cfg.data_dir, download=cfg.download, val_split=cfg.val_split,
                        split_seed=cfg.split_seed, hint=f"{DATA_DIR_HINT}, or --download to fetch it",
                        **({"image_size": cfg.synthetic_size} if cfg.data == "synthetic" else {}))
    train_set = data["train"]
    normalization = Normalization.fit(train_set.x, cfg.normalization)
    bf16, channels_last = resolve_precision(cfg.precision, device, cfg.channels_last)
    if cfg.resume and cfg.precision == "auto":
        # auto resolves per machine (bf16 on AMX CPUs): a run resumed on another keeps the arithmetic and
        # layout it started with, or the resume would not be exact.
        began = recorded_runtime(out)
        bf16 = began.get("bf16_autocast", bf16)
        channels_last = began.get("channels_last", channels_last) if cfg.channels_last is None else channels_last
    stream = TrainStream(train_set, cfg.batch_size, device=device, seed=cfg.seed, normalization=normalization,
                         augment=cfg.augment, channels_last=channels_last, padding=cfg.padding)
    if cfg.batch_size % dist.world_size:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {dist.world_size} processes")

    # 2. Model, optimiser, schedule.
    model = create_model(cfg.model, num_classes=len(train_set.classes),
                         seed=cfg.seed if cfg.model.seed is None else cfg.model.seed)
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    synced = cfg.sync_bn and dist.world_size > 1
    if synced and cfg.compile and device.type != "cuda":  # its differentiable all_reduce refuses to be compiled
        raise ValueError("--sync-bn with several CPU processes does not work with --compile; drop one of them")
    if synced:
        model = sync_batch_norm(model)
    fused_on = _enable_fused(cfg, model, device, bf16, channels_last, synced, say)
    optimizer = torch.optim.SGD(param_groups(model, cfg.weight_decay, cfg.decay_norm_and_bias), lr=cfg.lr,
                                momentum=cfg.momentum, nesterov=cfg.nesterov)
    schedule = make_schedule(cfg)

    # 3. Resume: everything that evolves during training comes back from last.pt.
    start, warmup_end, elapsed, best_val = 0, None, 0.0, math.inf
    # Sums since the last log step, kept on the device, and (he2016 warm-up) the current check window's errors.
    loss_sum, err_sum, warm_err = (torch.zeros((), device=device) for _ in range(3))
    seen = 0  # steps in loss_sum
    if cfg.resume and not os.path.exists(last_path):
        raise ValueError(f"nothing to resume in {out}: it has no {RESUMABLE} (start a new run without --resume)")
    lock = FolderLock(out) if main else None  # one writer per run folder
    if main:
        try:  # again, now that no one else can write it: another process may have run it meanwhile
            _refuse_existing_run(cfg, out)
        except ValueError:
            lock.release()
            raise
        remove_litter(out)
    log = MetricsLog(out, enabled=main, tensorboard=cfg.tensorboard and main)
    resumes = []  # config.json's record of the resumes that changed settings: {"step", "changed"}
    if cfg.resume:
        ck = load_checkpoint(last_path, map_location="cpu")
        _check_resumable(ck, model_config(model), cfg, last_path)
        changed = _changed_settings(ck["config"], to_dict(cfg))
        if changed and ck["step"] >= cfg.iterations:  # no step would train with them, yet config.json would say so
            raise ValueError(f"{out} is complete ({ck['step']} of {cfg.iterations} iterations): no step would run "
                             f"with the changed settings ({', '.join(changed)}); give --iterations above "
                             f"{ck['step']} to train on")
        if ck.get("world_size", dist.world_size) != dist.world_size and not cfg.allow_world_size_change:
            raise ValueError(f"cannot resume {last_path} with {dist.world_size} process(es): it was trained with "
                             f"{ck['world_size']}, and each process's batch (and its BN statistics) would change; "
                             f"pass --allow-world-size-change to continue anyway")
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        set_rng_state(ck["rng"])
        start, warmup_end, elapsed = ck["step"], ck["schedule"]["warmup_end"], ck["elapsed"]
        best_val = ck["best_val_error"] if ck["best_val_error"] is not None else math.inf
        acc = ck["accumulators"]
        loss_sum.fill_(acc["loss_sum"]), err_sum.fill_(acc["err_sum"]), warm_err.fill_(acc["warm_err"])
        seen = acc["seen"]
        log.keep_until(start)
        say(f"resuming {last_path} at step {start}" + (f" with changed settings: {', '.join(changed)}"
                                                       if changed else ""))
        # config.json holds the settings in effect from here on; the steps before ran with those of the record
        # (a resume recorded at or after this step is undone: those steps are trained again from here)
        resumes = [r for r in recorded(out).get("resumes", []) if r["step"] < start]
        resumes += [{"step": start, "changed": changed}] if changed else []
        if main and os.path.exists(os.path.join(out, "final.json")):
            os.remove(os.path.join(out, "final.json"))
    elif main:
        os.makedirs(out, exist_ok=True)
        log.keep_until(-1)
    if main:
        write_json(os.path.join(out, "config.json"),
                   {"config": to_dict(cfg), "model_config": model_config(model), "versions": versions(),
                    "runtime": {"device": str(device), "bf16_autocast": bf16, "channels_last": channels_last,
                                "fused_bn": fused_on, "world_size": dist.world_size, "sync_bn": synced,
                                "threads": torch.get_num_threads() if device.type == "cpu" else None},
                    "resumes": resumes})

    # 4. Wrappers: DDP across processes, torch.compile. Checkpoints always save the plain `model`.
    net = model
    if dist.world_size > 1:
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net, mode=None if cfg.compile_mode == "default" else cfg.compile_mode)

    saved = [start if cfg.resume else None]  # the step last.pt holds

    def diverged(what: str) -> TrainingDiverged:
        where = f"the last good checkpoint is {last_path}" if os.path.exists(last_path) else \
            "no checkpoint was written"
        return TrainingDiverged(f"training diverged {what}; {where}. Lower --lr or use a warm-up.")

    def save(step: int, *paths: str) -> None:
        """Write the full training state to ``paths``, refusing non-finite weights or statistics."""
        bad = nonfinite_entries(model.state_dict())
        if bad:
            raise diverged(f"by step {step}: non-finite {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")
        state = make_checkpoint(
            model, normalization=normalization.state_dict(), classes=list(train_set.classes),
            data={"name": cfg.data, "dir": cfg.data_dir, "image_size": train_set.image_size}, step=step,
            config=to_dict(cfg), optimizer=optimizer.state_dict(), schedule={"warmup_end": warmup_end}, rng=rng_state(),
            accumulators={"loss_sum": loss_sum.item(), "err_sum": err_sum.item(), "warm_err": warm_err.item(),
                          "seen": seen},
            elapsed=elapsed + time.perf_counter() - t0, best_val_error=None if best_val == math.inf else best_val,
            world_size=dist.world_size, versions=versions())
        for path in paths:
            atomic_save(state, path)
        if last_path in paths:
            saved[0] = step

    def check_loss(step: int, value: float, what: str) -> None:
        if not math.isfinite(value):
            raise diverged(f"at step {step}: {what} = {value}")

    def mean_over_processes(t: torch.Tensor) -> torch.Tensor:
        if dist.world_size > 1:
            torch.distributed.all_reduce(t)
            t /= dist.world_size
        return t

    steps_per_epoch = stream.steps_per_epoch
    say(f"{cfg.model.name} on {cfg.data}: {len(train_set)} training images, batch {cfg.batch_size}, "
        f"{steps_per_epoch} steps/epoch; {cfg.iterations} iterations = {cfg.iterations / steps_per_epoch:.1f} epochs")
    say(f"lr {cfg.lr} {cfg.schedule}" + (f" x{cfg.gamma} at {', '.join(map(str, cfg.milestones))}"
                                         if cfg.schedule == "step" else "")
        + f", warm-up {cfg.warmup}; {'bf16 autocast' if bf16 else 'fp32'}"
        + f"{' + channels_last' if channels_last else ''}{' + fused BN' if fused_on else ''} on {device}"
        + (f" ({torch.get_num_threads()} threads)" if device.type == "cpu" else "")
        + (f", {dist.world_size} processes{' + synced BN' if synced else ''}" if dist.world_size > 1 else ""))

    # 5. The loop. Host syncs happen only at log/eval/checkpoint steps.
    t0 = time.perf_counter()
    t_log, step_log = t0, start
    local = slice(dist.rank * cfg.batch_size // dist.world_size, (dist.rank + 1) * cfg.batch_size // dist.world_size)
    net.train()
    step = start
    try:
        for step in range(start, cfg.iterations):
            lr = schedule(step, warmup_end)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = stream.batch(step)
            loss, error = train_step(net, optimizer, x[local], y[local], bf16=bf16,
                                     label_smoothing=cfg.label_smoothing, grad_clip=cfg.grad_clip)
            loss_sum += loss
            err_sum += error
            seen += 1
            done = step + 1

            # The he2016 warm-up: every 10 steps, look at the mean training error of those steps.
            if cfg.warmup == "he2016" and warmup_end is None and schedule.in_warmup(done):
                warm_err += error
                if done % 10 == 0:
                    mean_over_processes(warm_err)  # every process must end the warm-up at the same step
                    if warm_err.item() / 10 < cfg.warmup_error:
                        warmup_end = done
                        say(f"warm-up over at step {done}: training error {warm_err.item() / 10:.1%}")
                    warm_err.zero_()

            if done % cfg.log_every == 0 or done == cfg.iterations:
                train_loss, train_error = (mean_over_processes(torch.stack([loss_sum, err_sum])) / seen).tolist()
                check_loss(done, train_loss, f"mean training loss since step {done - seen}")
                now = time.perf_counter()
                rate = (done - step_log) * cfg.batch_size / max(now - t_log, 1e-9)
                log.write({"step": done, "kind": "train", "loss": train_loss, "error": train_error, "lr": lr,
                           "img_per_s": rate, "time": elapsed + now - t0})
                eta = (cfg.iterations - done) * cfg.batch_size / max(rate, 1e-9)
                say(f"step {done}/{cfg.iterations} ({done / steps_per_epoch:.1f} ep) loss {train_loss:.4f} "
                    f"err {train_error:.2%} lr {lr:.4g} | {rate:.0f} img/s | ETA {format_duration(eta)}")
                loss_sum.zero_(), err_sum.zero_()
                seen, t_log, step_log = 0, now, done

            t_pause = time.perf_counter()  # evaluation and checkpoints do not count in img/s
            if (done % cfg.eval_every == 0 or done == cfg.iterations) and main:
                results = {}
                for split in ("val", "test"):
                    if split in data:
                        r = evaluate(model if dist.world_size > 1 else net, data[split], normalization, device=device,
                                     batch_size=cfg.eval_batch_size, precision="bf16" if bf16 else "fp32",
                                     channels_last=channels_last)
                        results[split] = r = {k: r[k] for k in ("loss", "error", "top5_error")}
                        log.write({"step": done, "kind": "eval", "split": split, **r})
                say("eval " + ", ".join(f"{s} err {r['error']:.2%}" for s, r in results.items()))
                if "val" in results and results["val"]["error"] < best_val:
                    best_val = results["val"]["error"]
                    check_loss(done, results["val"]["loss"], "validation loss")
                    save(done, os.path.join(out, "best.pt"))

            paths = [os.path.join(out, f"step_{done}.pt")] if done in cfg.save_at else []
            paths += [last_path] if done % cfg.checkpoint_every == 0 or done == cfg.iterations else []
            if main and paths:
                check_loss(done, loss_sum.item() / seen if seen else 0.0, f"mean training loss since step {done - seen}")
                save(done, *paths)
            t_log += time.perf_counter() - t_pause
    except KeyboardInterrupt:
        if not main:  # rank 0 names the checkpoint; the other ranks never save
            raise
        where = f"the last checkpoint is {last_path} (step {saved[0]})" if saved[0] is not None else \
            "no checkpoint was written yet"
        raise TrainingInterrupted(f"interrupted at step {step}; {where}", f"resnetlab train --out {out} --resume") \
            from None

    # 6. Final metrics, written last: final.json means "finished".
    events = log.events() if main else []
    last_train = next((e for e in reversed(events) if e["kind"] == "train"), {})
    last_eval = {e["split"]: e for e in events if e["kind"] == "eval" and e["step"] == cfg.iterations}
    final = {"steps": cfg.iterations, "train_loss": last_train.get("loss"), "train_error": last_train.get("error"),
             "val_error": last_eval.get("val", {}).get("error"), "test_error": last_eval.get("test", {}).get("error"),
             "test_top5_error": last_eval.get("test", {}).get("top5_error"),
             "wall_time_s": elapsed + time.perf_counter() - t0, "params": count_parameters(model)}
    if main:
        write_json(os.path.join(out, "final.json"), final)
    if log.tb is not None:
        log.tb.close()
    if lock is not None:
        lock.release()
    del net  # before the process group goes: see end_distributed
    end_distributed(dist)
    return final


def _changed_settings(then: dict, now: dict, prefix: str = "") -> list[str]:
    """``["lr 0.1 -> 0.05", "model.width 16 -> 8", ...]``: what a resume changes in training (not ``resume``,
    ``quiet``, nor ``out``: a run folder may have been moved)."""
    changed = []
    for k, v in now.items():
        if k in ("resume", "quiet", "out"):
            continue
        old = then.get(k)
        if isinstance(v, dict) and isinstance(old, dict):
            changed += _changed_settings(old, v, f"{prefix}{k}.")
        elif old != v:
            changed.append(f"{prefix}{k} {old!r} -> {v!r}")
    return changed


def main_train(argv: list[str] | None = None) -> int:
    """``resnetlab train``: train a model; ``--resume`` continues the run in ``--out``."""
    options = dict(prog="resnetlab train", description=(__doc__ or "").split("\n\n")[0])
    cfg = parse(TrainConfig, argv, **options)
    if cfg.resume and cfg.out and (run := recorded(cfg.out)):
        # Resuming: the run's own resolved config is the base; the flags (and --config file) given now override it.
        cfg = parse(TrainConfig, argv, **options, base=run["config"])
    final = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(final))
    return 0
