"""The shortcut study (``resnetlab study shortcuts``) and the main job (``resnetlab demo``).

A study trains a grid of CIFAR ResNets, every depth x shortcut option (``A``/``B``/``C``, ``none`` for the plain
net) x ``repeats``, as **matched twins**: for one depth and repeat every option gets the same seed, so shared
parameters start bit-identical and every run sees the same batches in the same order; only the shortcut
differs. Each run is a training run (:func:`resnetlab.train.train`) in ``OUT/runs/<model>-<option>-r<k>/``;
then every run is measured (layer responses, gradient flow, residual paths, projections; optionally the loss
landscape) and the report written (:mod:`resnetlab.report`). Rerunning the same command resumes: finished runs
are skipped, interrupted ones continue from their ``last.pt``, and the report is rebuilt from the run folders.

    resnetlab study shortcuts --depths 20,56 --options A,B,C,none --budget short --out study-20-56
    resnetlab demo                       # small offline study on synthetic data, under a minute on 2 idle CPU cores
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Literal, Optional

import torch

from . import analysis, landscape, summary
from . import report as report_mod
from .blocks import SHORTCUTS
from .config import Ints, Strs, parse, to_dict
from .datasets import DATA_DIR_HINT, NAMED_DATASETS as DATASETS, find_cifar, load_dataset
from .io import (PRECISIONS, FolderInUse, FolderLock, cache_dir, format_duration, read_json, resolve_device,
                 write_json)
from .models import ModelConfig, create_model
from .schedule import RECIPES
from .stream import Normalization
from .train import (MetricsLog, TrainConfig, TrainingDiverged, TrainingInterrupted, recorded, recorded_runtime,
                    resolve_config, train)
from .weights import RESUMABLE, load_checkpoint, model_from_checkpoint

BUDGETS = ("smoke", "short", "paper")
STUDIES = ("shortcuts",)

# What each budget sets when the flags leave it open. "paper" is the he2016-cifar recipe in full: hours per run
# on a GPU. "short" keeps the recipe's schedule, shrunk. "smoke" checks the whole pipeline in minutes on a CPU.
BUDGET_SETTINGS = {
    "smoke": dict(iterations=40, batch_size=32, val_split=500, eval_every=10, log_every=5, checkpoint_every=20),
    "short": dict(iterations=3000, batch_size=128, val_split=5000, eval_every=250, log_every=50, checkpoint_every=500),
    "paper": dict(iterations=64000, batch_size=128, val_split=5000, eval_every=2000, log_every=100,
                  checkpoint_every=2000),
}


@dataclass(frozen=True)
class StudyConfig:
    """A grid of matched plain/residual twins and what to measure on them."""

    depths: Ints = (20, 56)
    """CIFAR depths 6n+2, comma-separated"""
    options: Strs = ("A", "B", "C", "none")
    """networks of the grid: shortcut options A, B, C, none (the plain net), each optionally with
    ':TRANSITION' for the shape-changing blocks (zero-pad, projection, avgpool-projection, none), e.g. A:none"""
    data: Literal[DATASETS] = "synthetic"
    """dataset"""
    data_dir: Optional[str] = None
    """folder or .tar.gz of the dataset (default: the cache folder)"""
    synthetic_size: int = 32
    """side in pixels of the synthetic images"""
    out: str = "study"
    """report folder; runs go to OUT/runs/"""
    budget: Literal[BUDGETS] = "smoke"
    """smoke (minutes, CPU), short (a few thousand iterations), paper (64k, GPU)"""
    iterations: Optional[int] = None
    """training iterations per run (default: the budget's)"""
    batch_size: Optional[int] = None
    """batch size (default: the budget's)"""
    val_split: Optional[int] = None
    """training images held out for validation (default: the budget's)"""
    eval_every: Optional[int] = None
    """evaluate every N iterations (default: the budget's)"""
    log_every: Optional[int] = None
    """log training loss/error every N iterations (default: the budget's)"""
    checkpoint_every: Optional[int] = None
    """write last.pt every N iterations (default: the budget's)"""
    repeats: int = 1
    """runs per (depth, option), with seeds SEED, SEED+1, ..."""
    seed: int = 0
    """seed of repeat 0: model init and data order, shared by the twins"""
    model: ModelConfig = ModelConfig()
    """options shared by every net of the grid (width, preact, shortcut_scale, zero_pad, ...); the grid sets
    the name (--depths) and the shortcut (--options)"""
    recipe: Literal[tuple(RECIPES)] = "he2016-cifar"
    """training recipe (resnetlab train --help)"""
    grad_steps: Optional[Ints] = None
    """steps at which to measure gradient flow (0 = at initialisation; default: 0, 10% and 100% of training)"""
    analysis_images: int = 256
    """training images used for the measurements"""
    landscape: bool = False
    """also compare the loss landscapes of the deepest plain/residual pair"""
    landscape_steps: int = 11
    """grid points per axis of the landscape"""
    landscape_span: float = 1.0
    """the landscape covers [-SPAN, SPAN] along each direction"""
    landscape_direction_seeds: int = 3
    """direction pairs per landscape (seeds 0..K-1); flatness is mean ± std over them and the repeats"""
    landscape_bn: Literal[landscape.BN_MODES] = "batch"
    """BN during the landscape: batch (the batch's statistics, the default), recompute or eval (resnetlab
    landscape --help)"""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N, mps"""
    precision: Literal[PRECISIONS] = "auto"
    """auto (train's choice for this machine, or, once the folder holds runs, the arithmetic they were trained
    in, so that twins trained on different machines share it), fp32 or bf16"""
    threads: Optional[int] = None
    """CPU threads (default: train's, the physical cores; 1 is faster for tiny models on a busy machine)"""
    quiet: bool = False
    """no per-run training progress"""
    report_only: bool = False
    """train nothing: measure the finished runs and write the report from them (e.g. while other processes,
    or other sessions, are still training the grid)"""


@dataclass(frozen=True)
class RunSpec:
    """One cell of the grid."""

    name: str
    model: str
    depth: int
    option: str
    repeat: int
    seed: int
    dir: str  # absolute


# --------------------------------------------------------------------------------------------- the grid

def check_config(cfg: StudyConfig) -> None:
    """Clear errors for grids that cannot be trained."""
    if not cfg.depths:
        raise ValueError("the grid is empty: give at least one depth (--depths 20,56)")
    if not cfg.options:
        raise ValueError(f"the grid is empty: give at least one shortcut option (--options {','.join(SHORTCUTS)})")
    for d in cfg.depths:
        if d < 8 or (d - 2) % 6:
            raise ValueError(f"depth {d} is not a CIFAR ResNet depth: it must be 6n+2 with n >= 1 "
                             f"(8, 14, 20, 26, 32, 44, 56, 110, ...)")
    for o in cfg.options:
        report_mod.option_fields(o)  # an unknown option or transition raises, naming the valid ones
    for what in ("repeats", "analysis_images", "landscape_steps", "landscape_direction_seeds", "iterations"):
        if (value := getattr(cfg, what)) is not None and value < 1:
            raise ValueError(f"{what} must be at least 1, got {value}")
    if cfg.seed < 0:
        raise ValueError(f"seed must be non-negative, got {cfg.seed}")
    if cfg.model.name != ModelConfig().name or cfg.model.shortcut is not None:
        raise ValueError("the grid sets each net's name and shortcut: give them as --depths and --options, "
                         "not as model options")
    if cfg.model.seed is not None:  # train would give every repeat that one init; init_model, the run's seed
        raise ValueError("the study seeds each repeat's twins with --seed + repeat: give --seed, not --model.seed")
    resolve_device(cfg.device)
    if cfg.grad_steps and any(s < 0 for s in cfg.grad_steps):
        raise ValueError(f"grad steps must be >= 0, got {cfg.grad_steps}")


def budget(cfg: StudyConfig) -> dict:
    """The training settings the study uses: the budget's, overridden by the flags that were given."""
    return {k: v if getattr(cfg, k) is None else getattr(cfg, k) for k, v in BUDGET_SETTINGS[cfg.budget].items()}


def check_data(cfg: StudyConfig) -> None:
    """The data before anything is written: a study that cannot read it, or whose budget would hold out all
    of its training images for validation, writes nothing."""
    n = len(load_dataset(cfg.data, cfg.data_dir, image_size=cfg.synthetic_size, hint=DATA_DIR_HINT)["train"])
    if (held_out := budget(cfg)["val_split"]) >= n:
        raise ValueError(f"the {cfg.budget} budget holds out {held_out} training images for validation, but "
                         f"this {cfg.data} has {n}: give --val-split below {n}")


def grad_steps(cfg: StudyConfig) -> tuple[int, ...]:
    """Steps of the gradient-flow measurement (within the run), always including 0 (initialisation)."""
    iters = budget(cfg)["iterations"]
    steps = cfg.grad_steps if cfg.grad_steps is not None else (0, max(1, iters // 10), iters)
    return tuple(sorted({0, *(s for s in steps if s <= iters)}))


def grid(cfg: StudyConfig) -> list[RunSpec]:
    """Every run of the study, ordered so that twins train one after the other."""
    check_config(cfg)
    runs = []
    for repeat in range(cfg.repeats):
        for depth in dict.fromkeys(cfg.depths):
            for option in dict.fromkeys(cfg.options):
                name = f"resnet{depth}-{option.replace(':', '_')}-r{repeat}"
                runs.append(RunSpec(name, f"resnet{depth}", depth, option, repeat, cfg.seed + repeat,
                                    os.path.abspath(os.path.join(cfg.out, "runs", name))))
    return runs


def train_config(cfg: StudyConfig, run: RunSpec):
    """The :class:`resnetlab.train.TrainConfig` of one run: same seed for twins, only the shortcut differs."""
    return TrainConfig(model=dataclasses.replace(cfg.model, name=run.model, **report_mod.option_fields(run.option)),
                       seed=run.seed, data=cfg.data, data_dir=cfg.data_dir, synthetic_size=cfg.synthetic_size,
                       out=run.dir, recipe=cfg.recipe, **budget(cfg), device=cfg.device, precision=cfg.precision,
                       save_at=tuple(s for s in grad_steps(cfg) if s > 0), threads=cfg.threads, quiet=cfg.quiet)


# Fields that may differ between the run that made a folder and the one resuming it.
_VOLATILE = {"out", "quiet", "device", "resume", "data_dir", "download", "precision", "compile", "compile_mode",
             "threads", "tensorboard", "eval_batch_size", "checkpoint_every", "channels_last", "deterministic",
             "save_at", "eval_every", "log_every"}  # save_at: steps missing from an older run are reported


def _check_same_run(run: RunSpec, tcfg) -> None:
    """Refuse to resume a run folder that was made with other settings (another budget, shortcut, ...)."""
    old = recorded(run.dir).get("config", {})
    new = to_dict(resolve_config(tcfg))
    diff = sorted(k for k in new if k not in _VOLATILE and k in old and old[k] != new[k]
                  and not (old[k] is None or new[k] is None))
    if diff:
        changes = ", ".join(f"{k}: {old[k]!r} -> {new[k]!r}" for k in diff)
        raise ValueError(f"{run.dir} was trained with other settings ({changes}); use another --out, "
                         f"or delete that run folder to retrain it")


def grid_precision(cfg: StudyConfig, runs: list[RunSpec]) -> str:
    """The precision every run of the grid trains in. Twins must share their arithmetic, but ``auto``
    resolves per machine (bf16 on AMX CPUs, fp32 elsewhere), and a grid is often trained over several
    sessions: so once run folders exist, ``auto`` means the precision they record, and an explicit one that
    differs is refused."""
    used = {}
    for r in runs:
        runtime = recorded_runtime(r.dir)
        if "bf16_autocast" in runtime:
            used.setdefault("bf16" if runtime["bf16_autocast"] else "fp32", []).append(r.name)
    if len(used) > 1:
        raise ValueError(f"the runs in {cfg.out} mix bf16 ({', '.join(used['bf16'])}) and fp32 "
                         f"({', '.join(used['fp32'])}); delete the runs of one kind to retrain them")
    if not used:
        return cfg.precision
    (precision, names), = used.items()
    if cfg.precision not in ("auto", precision):
        raise ValueError(f"the runs in {cfg.out} were trained in {precision} ({names[0]}, ...); --precision "
                         f"{cfg.precision} would make their twins differ in arithmetic: use --precision "
                         f"{precision} or another --out")
    return precision


def run_state(run: RunSpec) -> str:
    """``"done"`` (final.json), ``"partial"`` (last.pt, resumable) or ``"new"``."""
    if os.path.isfile(os.path.join(run.dir, "final.json")):
        return "done"
    return "partial" if os.path.isfile(os.path.join(run.dir, RESUMABLE)) else "new"


def _log(msg: str) -> None:
    print(f"[study] {msg}", file=sys.stderr, flush=True)


def train_grid(cfg: StudyConfig) -> tuple[list[RunSpec], list[str], list[str]]:
    """Train (or resume, or skip) every run of the grid; returns the grid, the runs that diverged and those
    another process is training (several processes running the same command share the grid's runs).
    With ``report_only`` it trains nothing, and every run counts as being trained elsewhere."""
    runs = grid(cfg)
    for r in runs:  # before training anything: every existing run folder must match the study's settings
        _check_same_run(r, train_config(cfg, r))
    if cfg.report_only:  # a report needs no precision, but must not pair twins of different arithmetic
        grid_precision(dataclasses.replace(cfg, precision="auto"), runs)
        return runs, [], [r.name for r in runs]
    precision = grid_precision(cfg, runs)
    if precision != cfg.precision:
        _log(f"precision {precision}, as the runs already in {cfg.out} were trained")
        cfg = dataclasses.replace(cfg, precision=precision)
    failed, busy = [], []
    b = budget(cfg)
    # Progress: seconds per unit of work, a unit being one iteration of one layer plus a fixed overhead.
    todo = [r for r in runs if run_state(r) != "done"]
    total_units = sum((r.depth + 6) * b["iterations"] for r in todo)
    done_units, spent = 0, 0.0
    _log(f"{len(runs)} runs ({len(runs) - len(todo)} already finished), {b['iterations']} iterations each, "
         f"batch {b['batch_size']}, data {cfg.data} -> {os.path.abspath(cfg.out)}")
    for i, run in enumerate(runs, 1):
        if run_state(run) == "done":
            _log(f"{i}/{len(runs)} {run.name}: finished earlier, skipped")
            continue
        try:  # a study process claims a run before it looks at it, so two never start the same one
            with FolderLock(run.dir, ".claim"):
                state = run_state(run)
                if state == "done":  # finished by another process meanwhile
                    continue
                eta = (f", about {format_duration(spent / done_units * (total_units - done_units))} left for the grid"
                       if done_units else "")
                _log(f"{i}/{len(runs)} {run.name}: {'resuming' if state == 'partial' else 'training'} "
                     f"(seed {run.seed}){eta}")
                t0 = time.perf_counter()
                # A partial run continues from last.pt (train checks that it belongs to this config).
                train(dataclasses.replace(train_config(cfg, run), resume=state == "partial"))
        except TrainingInterrupted as e:  # what continues is the grid, not this one run
            raise TrainingInterrupted(f"{run.name} {e.progress}", "the same command (finished runs are skipped, "
                                      "this one resumes from its last checkpoint)") from None
        except TrainingDiverged as e:  # one diverged run should not sink the study: report it
            _log(f"{run.name} diverged: {e}")
            failed.append(f"{run.name}: {e}")
        except FolderInUse:  # claimed by another study process, or written by a `resnetlab train`
            _log(f"{i}/{len(runs)} {run.name}: in use by another process, skipped")
            busy.append(run.name)
            continue
        spent += time.perf_counter() - t0
        done_units += (run.depth + 6) * b["iterations"]
    return runs, failed, busy


# --------------------------------------------------------------------------------------------- measurements

def analysis_batch(cfg: StudyConfig, normalization_state: dict):
    """The fixed measurement batch: the first ``analysis_images`` training images, normalised as in training."""
    ds = load_dataset(cfg.data, cfg.data_dir, val_split=budget(cfg)["val_split"], image_size=cfg.synthetic_size,
                      hint=DATA_DIR_HINT)["train"]
    n = min(cfg.analysis_images, len(ds))
    norm = Normalization.from_state_dict(normalization_state)
    return norm(ds.x[:n]), ds.y[:n].clone()


def init_model(run_dir: str):
    """The run's model as it was before its first step: its architecture (``config.json``) built with its seed.

    ``create_model`` seeds every parameter by its name, so this is bit-identical to the model ``train`` started
    from, and twins (same seed, other shortcut) share every parameter they both have.
    """
    meta = read_json(os.path.join(run_dir, "config.json"))
    return create_model(**meta["model_config"], seed=int(meta["config"]["seed"]))


def measure_run(cfg: StudyConfig, run: RunSpec, x: torch.Tensor, y: torch.Tensor, device) -> dict:
    """Layer responses, path and projection stats on the final checkpoint; the back-propagated signal
    ``||dL/dx||`` per block and the block weight-gradient norms at the initialisation (the fresh model with
    the run's seed) and at every saved step of ``grad_steps``."""
    final_model, ckpt = model_from_checkpoint(os.path.join(run.dir, RESUMABLE))
    final_steps = int(ckpt.get("step", budget(cfg)["iterations"]))
    final_model.to(device)
    xd, yd = x.to(device), y.to(device)
    out = {"layer_responses": [list(t) for t in analysis.layer_responses(final_model, xd)],
           "path_stats": [] if run.option == "none" else analysis.path_stats(final_model, xd),
           "projection_stats": [{k: v for k, v in p.items() if k != "singular_values"}
                                for p in analysis.projection_stats(final_model)],
           "grad_norms": {}, "signal": {}, "missing_steps": []}
    for step in grad_steps(cfg):
        if step == 0:
            model = init_model(run.dir)
        elif os.path.isfile(p := os.path.join(run.dir, f"step_{step}.pt")):
            model, _ = model_from_checkpoint(p)
        elif step == final_steps:
            model = final_model
        else:
            out["missing_steps"].append(step)
            continue
        model.to(device)
        out["grad_norms"][str(step)] = [list(t) for t in analysis.block_gradient_norms(model, xd, yd)]
        out["signal"][str(step)] = [list(t) for t in analysis.signal_norms(model, xd, yd)]
    return out


def _cached(path: str, key: dict, final: dict, field: str, compute):
    """``compute()``, cached in the JSON file ``path`` while the settings ``key`` and the run's ``final.json``
    stay the same."""
    cached = read_json(path) if os.path.isfile(path) else {}
    if cached.get("key") == key and cached.get("final") == final:
        return cached[field]
    value = compute()
    write_json(path, {"key": key, "final": final, field: value}, indent=None)
    return value


def collect(cfg: StudyConfig, runs: list[RunSpec], device) -> list[dict]:
    """Run records for the report, with measurements cached in each run folder (``analysis.json``)."""
    records, batch = [], None
    key = {"grad_steps": list(grad_steps(cfg)), "analysis_images": cfg.analysis_images, "version": 2}

    def measure(run):
        nonlocal batch
        if batch is None:  # loaded once, and only when a run is not cached
            batch = analysis_batch(cfg, load_checkpoint(os.path.join(run.dir, RESUMABLE)).get("normalization"))
        _log(f"measuring {run.name}")
        return measure_run(cfg, run, *batch, device)

    for run in runs:
        if run_state(run) != "done":
            continue
        final = read_json(os.path.join(run.dir, "final.json"))
        analysis = _cached(os.path.join(run.dir, "analysis.json"), key, final, "analysis", lambda: measure(run))
        events = MetricsLog(run.dir).events()
        # The report's training error: the last 10% of the iterations, not the last log interval alone.
        final = {**final, "train_error_last": final.get("train_error"),
                 "train_error": report_mod.tail_train_error(events, int(final.get("steps") or 0))}
        records.append({**dataclasses.asdict(run), "dir": os.path.relpath(run.dir, os.path.abspath(cfg.out)),
                        "final": final, "events": events, "analysis": analysis})
    return records


def measure_landscape(cfg: StudyConfig, runs: list[RunSpec], device) -> dict | None:
    """Loss landscapes of the deepest plain net and every residual twin, for every repeat and
    ``landscape_direction_seeds`` direction pairs (twins share the direction seeds). Each landscape is cached
    in its run folder (``landscape.json``), so a resumed study computes only the missing ones."""
    done = {(r.depth, r.option, r.repeat): r for r in runs if run_state(r) == "done"}
    depths = [d for d, o, _ in done if o == "none" and any(k[0] == d and k[1] != "none" for k in done)]
    if not depths:
        return None
    depth = max(depths)
    seeds = list(range(cfg.landscape_direction_seeds))
    key = {"steps": cfg.landscape_steps, "span": cfg.landscape_span, "images": cfg.analysis_images,
           "bn": cfg.landscape_bn, "direction_seeds": seeds, "version": 2}
    batch = None

    def measure(run):
        nonlocal batch
        _log(f"landscape of {run.name}: {len(seeds)} direction pair(s), "
             f"{cfg.landscape_steps}x{cfg.landscape_steps} points, BN {cfg.landscape_bn}")
        model, ckpt = model_from_checkpoint(os.path.join(run.dir, RESUMABLE))
        if batch is None:
            batch = [t.to(device) for t in analysis_batch(cfg, ckpt.get("normalization"))]
        model.to(device)
        return [_jsonable(landscape.landscape_2d(model, *batch, landscape.random_directions(model, seed=seed, n=2),
                                                 span=cfg.landscape_span, steps=cfg.landscape_steps,
                                                 bn=cfg.landscape_bn))
                for seed in seeds]

    nets = []
    for option in report_mod.family_order({o for d, o, _ in done if d == depth}):
        reps = [done[k] for k in sorted(done) if k[:2] == (depth, option)]  # by repeat
        results = []  # per repeat, a landscape per direction seed
        for run in reps:
            final = read_json(os.path.join(run.dir, "final.json"))
            cache = os.path.join(run.dir, "landscape.json")
            results.append(_cached(cache, key, final, "results", lambda: measure(run)))
        per = [{"repeat": run.repeat, "direction_seed": s, "flatness": landscape.flatness(r)}
               for run, seeded in zip(reps, results) for s, r in zip(seeds, seeded)]
        nets.append({"run": reps[0].name, "label": report_mod.net_label(depth, option), "result": results[0][0],
                     "per": per, "flatness": landscape.flatness_spread([p["flatness"] for p in per])})
    n_rep = len({p["repeat"] for p in nets[0]["per"]})
    out = {"nets": nets, "bn": cfg.landscape_bn,
           "note": f"Training loss on {cfg.analysis_images} training images around the final weights of the "
                   f"depth-{depth} nets, along two filter-normalised random directions, span ±{cfg.landscape_span}, "
                   f"BN {_BN_WORDS[cfg.landscape_bn]}; {len(seeds)} direction seed(s) x {n_rep} repeat(s) per "
                   f"network (twins share the direction seeds); figures are mean ± std over them. "
                   f"The contours show repeat 0, direction seed 0."}
    write_json(os.path.join(os.path.abspath(cfg.out), "landscape.json"), {"landscape": out}, indent=None)
    return out


_BN_WORDS = {"batch": "with the batch's statistics (scale-invariant, as filter normalisation assumes)",
             "recompute": "with running statistics re-estimated at each point",
             "eval": "in eval mode with the checkpoint's running statistics"}


def _jsonable(value):
    """``value`` as its JSON file holds it (arrays as lists): fresh and cached results are the same."""
    return json.loads(json.dumps(value, default=lambda a: a.tolist()))


def shapes_markdown(cfg: StudyConfig) -> str:
    """The layer-shape tables (``resnetlab summary``) of the studied models, in Markdown."""
    return "\n\n".join(summary.summarize(summary.build_model(cfg.model, name=f"resnet{depth}",
                                                            **report_mod.option_fields(option)))
                       .to_markdown()
                       for depth in sorted(set(cfg.depths)) for option in dict.fromkeys(cfg.options))


def run_study(cfg: StudyConfig, *, title: str | None = None, shapes: bool = False) -> dict:
    """Train the grid (resuming), measure every run and write the report. Returns report paths."""
    check_config(cfg)
    check_data(cfg)
    if cfg.report_only and not any(run_state(r) == "done" for r in grid(cfg)):  # before writing study.json
        raise ValueError(f"no finished runs of this grid to report on in {cfg.out}")
    os.makedirs(cfg.out, exist_ok=True)
    write_json(os.path.join(cfg.out, "study.json"),
               {"study": to_dict(cfg), "budget": budget(cfg), "grad_steps": list(grad_steps(cfg))}, indent=1)
    runs, failed, busy = train_grid(cfg)
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    records = collect(cfg, runs, device)
    busy = [r.name for r in runs if r.name in busy and run_state(r) != "done"]  # some may have finished since
    land = measure_landscape(cfg, runs, device) if cfg.landscape else None
    b = budget(cfg)
    settings = {"data": cfg.data, "iterations": b["iterations"], "batch": b["batch_size"],
                "recipe": cfg.recipe, "repeats": cfg.repeats, "seed": cfg.seed,
                "width": cfg.model.width or 16, "blocks": "pre-activation" if cfg.model.preact else "original",
                "shortcut scale": cfg.model.shortcut_scale,
                "threads": cfg.threads or "train's default (the physical cores)", "torch": torch.__version__}
    notes = ["Matched twins: for each depth and repeat every shortcut option starts from the same seed "
             "(shared parameters bit-identical) and sees the same batches; only the shortcut differs. "
             "The same seed, thread count, PyTorch build and CPU give the same numbers; another CPU rounds "
             "differently, which can move a single run by points (an unstable plain net by more). "
             "Study settings: [study.json](study.json)."]
    notes += [f"**Diverged** (left out of the results): {f}" for f in failed]
    if busy:
        notes.append("**Not finished** (" + ("not trained by this report-only run" if cfg.report_only else
                     "another process was training them") + " when this report was written; rerun the command "
                     "afterwards for the full report): " + ", ".join(busy))
    missing = sorted({(r["name"], s) for r in records for s in r["analysis"].get("missing_steps", [])})
    if missing:
        notes.append("Gradient norms missing (no step checkpoint in the run folder, trained before that step "
                     "was asked for): " + ", ".join(f"{n} step {s}" for n, s in missing))
    return report_mod.write_report(cfg.out, records, title=title or "Shortcut study: plain vs residual",
                                   settings=settings, landscape=land,
                                   shapes_md=shapes_markdown(cfg) if shapes else None, notes=notes)


# --------------------------------------------------------------------------------------------- commands

def main_study(argv: list[str] | None = None) -> int:
    """``resnetlab study shortcuts ...``: train a grid of plain/residual twins and write the report.
    Rerun the same command to resume; finished runs are skipped."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        argv = ["shortcuts", *argv]
    if not argv or argv[0] not in STUDIES:
        raise ValueError(f"which study? resnetlab study {{{','.join(STUDIES)}}} [options]"
                         + (f" (unknown: {argv[0]!r})" if argv else ""))
    cfg = parse(StudyConfig, argv[1:], prog=f"resnetlab study {argv[0]}",
                description=main_study.__doc__.replace("``", ""))
    paths = run_study(cfg)
    print(f"report: {os.path.abspath(paths['md'])}\n        {os.path.abspath(paths['html'])}")
    return 0


DEMO_DEPTHS = (8, 26)
DEMO_OPTIONS = ("A", "B", "none")


@dataclass(frozen=True)
class DemoConfig:
    """The main job: a small shortcut study that runs offline in a few minutes on a CPU."""

    out: str = "resnetlab-demo"
    """report folder"""
    data: Literal[("auto",) + DATASETS] = "auto"
    """auto: CIFAR-10 when --data-dir is given or it is in the cache, else synthetic"""
    data_dir: Optional[str] = None
    """CIFAR-10 folder or .tar.gz"""
    iterations: int = 200
    """training iterations per run"""
    batch_size: int = 128
    """batch size (the paper's 128, with its lr 0.1)"""
    synthetic_size: int = 16
    """side of the synthetic images (16: a quarter of the arithmetic of 32x32)"""
    recipe: Literal[tuple(RECIPES)] = "he2016-short"
    """training recipe: the paper's, with the lr divided at 75% and 90% of this short run"""
    model: ModelConfig = ModelConfig(width=8)
    """options of every net (the paper's width 16 is slower); the demo sets the depths and shortcuts"""
    seed: int = 0
    """seed shared by the twins"""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N, mps"""
    threads: int = 2
    """CPU threads; fixed, not chosen by the machine's load, because the thread count changes the last bits
    of PyTorch's CPU reductions: the same seed, thread count and CPU give the same numbers (on a busy machine,
    --threads 1 is faster for these small models)"""
    quiet: bool = True
    """no per-run training progress (the study still reports each run)"""


def demo_study_config(d: DemoConfig) -> StudyConfig:
    """The study the demo runs: plain vs options A and B at two depths."""
    data = d.data
    if data == "auto":
        try:  # find_cifar raises when CIFAR-10 is not in the cache
            data = "cifar10" if d.data_dir or find_cifar("cifar10", cache_dir()) else "synthetic"
        except FileNotFoundError:
            data = "synthetic"
    return StudyConfig(depths=DEMO_DEPTHS, options=DEMO_OPTIONS, data=data, data_dir=d.data_dir, out=d.out,
                       synthetic_size=d.synthetic_size, recipe=d.recipe, budget="smoke", iterations=d.iterations,
                       batch_size=d.batch_size, val_split=250, eval_every=max(1, d.iterations // 4),
                       log_every=max(1, d.iterations // 30), checkpoint_every=max(1, d.iterations // 2),
                       model=d.model, seed=d.seed, grad_steps=(0, d.iterations), analysis_images=128,
                       device=d.device, precision="fp32", threads=d.threads, quiet=d.quiet)


def main_demo(argv: list[str] | None = None) -> int:
    """``resnetlab demo``: plain vs residual (options A, B) at depths 8 and 26, trained offline, with the report."""
    d = parse(DemoConfig, argv, prog="resnetlab demo", description=main_demo.__doc__.replace("``", ""))
    cfg = demo_study_config(d)
    t0 = time.perf_counter()
    print(f"resnetlab demo: {len(DEMO_DEPTHS) * len(DEMO_OPTIONS)} runs (depths "
          f"{', '.join(map(str, DEMO_DEPTHS))} x shortcut {', '.join(DEMO_OPTIONS)}) on {cfg.data}, "
          f"{d.iterations} iterations each", flush=True)
    paths = run_study(cfg, title="resnetlab demo: plain vs residual", shapes=True)
    print(f"done in {format_duration(time.perf_counter() - t0)}. The report: {os.path.abspath(paths['html'])}\n"
          f"(Markdown: {os.path.abspath(paths['md'])}; figures in {os.path.abspath(os.path.join(cfg.out, 'figures'))})")
    return 0
