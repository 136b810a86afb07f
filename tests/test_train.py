"""The training loop: run folder contract, exact resume after SIGKILL, divergence stop, clear errors.

All runs use a tiny ResNet-8 (width 4) on the in-memory synthetic data, fp32, one thread.
"""
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from resnetlab.models import ModelConfig
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from resnetlab.weights import load_checkpoint
from resnetlab.cli import main as cli_main
from resnetlab.runtime import resolve_precision
from resnetlab.train import TrainConfig, TrainingDiverged, main_train, train

TINY = dict(model=ModelConfig("resnet8", width=4), data="synthetic", batch_size=32, precision="fp32", threads=1, quiet=True)
TINY_FLAGS = ["--model", "resnet8", "--width", "4", "--data", "synthetic", "--batch-size", "32",
              "--precision", "fp32", "--threads", "1"]


def events(run):
    with open(os.path.join(run, "metrics.jsonl")) as fh:
        return [json.loads(line) for line in fh]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A short run with a validation split, a kept step checkpoint and an lr milestone."""
    out = str(tmp_path_factory.mktemp("run") / "r")
    final = train(TrainConfig(**TINY, out=out, iterations=40, log_every=10, eval_every=20, checkpoint_every=20,
                              val_split=500, save_at=(30,)))
    return out, final


def test_run_folder_contract(finished_run):
    out, final = finished_run
    for name in ("config.json", "metrics.jsonl", "metrics.csv", "last.pt", "best.pt", "step_30.pt", "final.json"):
        assert os.path.isfile(os.path.join(out, name)), name
    with open(os.path.join(out, "config.json")) as fh:
        cfg = json.load(fh)
    assert set(cfg) == {"config", "model_config", "versions", "runtime", "resumes"} and cfg["resumes"] == []
    assert cfg["runtime"]["fused_bn"] is False and cfg["runtime"]["channels_last"] is False  # fp32 -> NCHW
    assert cfg["config"]["milestones"] == [20, 30] and cfg["config"]["lr"] == 0.1  # resolved recipe, scaled
    assert cfg["model_config"]["name"] == "resnet8" and cfg["model_config"]["width"] == 4
    with open(os.path.join(out, "final.json")) as fh:
        assert json.load(fh) == final
    assert set(final) == {"steps", "train_loss", "train_error", "val_error", "test_error", "test_top5_error",
                          "wall_time_s", "params"}
    assert final["steps"] == 40 and 0 <= final["test_error"] <= 1 and 0 <= final["val_error"] <= 1
    ev = events(out)
    train_ev = [e for e in ev if e["kind"] == "train"]
    assert [e["step"] for e in train_ev] == [10, 20, 30, 40]
    assert set(train_ev[0]) == {"step", "kind", "loss", "error", "lr", "img_per_s", "time"}
    assert [e["lr"] for e in train_ev] == pytest.approx([0.1, 0.1, 0.01, 0.001])  # lr of the step logged
    evals = [e for e in ev if e["kind"] == "eval"]
    assert [(e["step"], e["split"]) for e in evals] == [(20, "val"), (20, "test"), (40, "val"), (40, "test")]
    assert set(evals[0]) == {"step", "kind", "split", "loss", "error", "top5_error"}
    assert final["test_error"] == evals[-1]["error"] and final["train_loss"] == train_ev[-1]["loss"]
    with open(os.path.join(out, "metrics.csv")) as fh:
        assert len(fh.read().strip().splitlines()) == 1 + len(ev)
    ck = load_checkpoint(os.path.join(out, "last.pt"))  # weights_only=True
    for key in ("model_config", "model", "normalization", "classes", "data", "step", "config", "optimizer",
                "rng", "schedule", "versions"):
        assert key in ck, key
    assert ck["step"] == 40 and ck["data"] == {"name": "synthetic", "dir": None, "image_size": 32}
    assert load_checkpoint(os.path.join(out, "step_30.pt"))["step"] == 30
    assert load_checkpoint(os.path.join(out, "best.pt"))["best_val_error"] == min(
        e["error"] for e in evals if e["split"] == "val")


def test_refuses_to_overwrite_and_checks_architecture_on_resume(finished_run):
    out, _ = finished_run
    with pytest.raises(ValueError, match="already holds a run"):
        train(TrainConfig(**TINY, out=out, iterations=40))
    wrong = {**TINY, "model": ModelConfig("resnet14", width=4)}
    with pytest.raises(ValueError, match=r"different model(.|\n)*resnet8(.|\n)*resnet14"):
        train(TrainConfig(**wrong, out=out, iterations=40, resume=True))
    with pytest.raises(ValueError, match="width"):
        train(TrainConfig(**{**TINY, "model": ModelConfig("resnet8", width=8)}, out=out, iterations=40, resume=True))


def _cli(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "resnetlab", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    n, every = 90, 30
    flags = TINY_FLAGS + ["--iterations", str(n), "--log-every", "5", "--checkpoint-every", str(every),
                          "--eval-every", "1000", "--quiet"]
    ref, cut = str(tmp_path / "ref"), str(tmp_path / "cut")
    p_cut = _cli(flags + ["--out", cut])
    # Kill `cut` once a checkpoint exists and the log has moved past it: between two checkpoints.
    deadline, killed_after, seen = time.time() + 240, None, None
    while time.time() < deadline and p_cut.poll() is None:
        last = os.path.join(cut, "last.pt")
        if os.path.exists(last):
            if os.stat(last).st_mtime_ns != seen:  # read a checkpoint once, not at every poll
                seen, ck_step = os.stat(last).st_mtime_ns, load_checkpoint(last)["step"]
            logged = [e["step"] for e in events(cut) if e["kind"] == "train"]
            if logged and logged[-1] > ck_step and logged[-1] % every != 0:
                p_cut.send_signal(signal.SIGKILL)
                p_cut.wait()
                killed_after = (ck_step, logged[-1])
                break
        time.sleep(0.02)
    assert killed_after is not None, "the run ended before it could be killed between checkpoints"
    assert not os.path.exists(os.path.join(cut, "final.json"))
    resumed = _cli(["--out", cut, "--resume"])  # the config comes back from the run folder
    # Meanwhile, the uninterrupted reference run, through the Python API.
    train(TrainConfig(**TINY, out=ref, iterations=n, log_every=5, checkpoint_every=every, eval_every=1000))
    r_out, r_err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, r_err
    a = load_checkpoint(os.path.join(ref, "last.pt"))
    b = load_checkpoint(os.path.join(cut, "last.pt"))
    assert a["step"] == b["step"] == n
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:  # weights, BN running statistics and counters
        assert torch.equal(a["model"][k], b["model"][k]), k
    for i, state in a["optimizer"]["state"].items():  # momentum buffers
        assert torch.equal(state["momentum_buffer"], b["optimizer"]["state"][i]["momentum_buffer"]), i
    # The log was cut back to the checkpoint and continued: same events, same losses, no duplicates.
    ta = [(e["step"], e["loss"], e["error"]) for e in events(ref) if e["kind"] == "train"]
    tb = [(e["step"], e["loss"], e["error"]) for e in events(cut) if e["kind"] == "train"]
    assert ta == tb and [s for s, _, _ in tb] == list(range(5, n + 1, 5))
    with open(os.path.join(cut, "final.json")) as fh:
        assert json.load(fh)["test_error"] == json.loads(r_out.strip().splitlines()[-1])["test_error"]


def test_divergence_stops_with_last_good_checkpoint(tmp_path):
    out = str(tmp_path / "nan")
    # lr 0.05 until step 20, then 0.05 * 1e30: the loss blows up right after the step-20 checkpoint.
    cfg = TrainConfig(**TINY, out=out, iterations=100, log_every=5, checkpoint_every=10, eval_every=1000,
                      lr=0.05, milestones=(20,), gamma=1e30)
    with pytest.raises(TrainingDiverged, match=r"diverged at step (2[5-9]|[3-9]\d)") as info:
        train(cfg)
    assert "last.pt" in str(info.value) and ("nan" in str(info.value) or "inf" in str(info.value))
    ck = load_checkpoint(os.path.join(out, "last.pt"))
    assert ck["step"] == 20
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert not os.path.exists(os.path.join(out, "final.json"))
    assert all(e["step"] < 25 or e["kind"] != "train" or e["loss"] == e["loss"] for e in events(out))


def test_he2016_warmup_ends_on_training_error(tmp_path):
    # warmup_error 2.0: any error is "below" it, so the warm-up ends at the first check (step 10);
    # warmup_error 0.0: never, so it lasts warmup_steps (30).
    for threshold, last_warm_log in ((2.0, 10), (0.0, 30)):
        out = str(tmp_path / f"w{threshold}")
        train(TrainConfig(**TINY, out=out, iterations=50, log_every=10, eval_every=1000, warmup="he2016",
                          schedule="constant",
                          warmup_steps=30, warmup_error=threshold, checkpoint_every=1000))
        lrs = {e["step"]: e["lr"] for e in events(out) if e["kind"] == "train"}
        assert all(lr == 0.01 for s, lr in lrs.items() if s <= last_warm_log), lrs
        assert all(lr == 0.1 for s, lr in lrs.items() if s > last_warm_log), lrs
        assert load_checkpoint(os.path.join(out, "last.pt"))["schedule"]["warmup_end"] == (
            10 if threshold == 2.0 else None)


def test_clear_errors(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="not found"):
        train(TrainConfig(**{**TINY, "data": "cifar10"}, data_dir=str(tmp_path / "missing"), out=str(tmp_path / "a")))
    with pytest.raises(ValueError, match="unknown dataset"):
        train(TrainConfig(**{**TINY, "data": "mnist"}, out=str(tmp_path / "b")))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises((ValueError, FileNotFoundError)):
        train(TrainConfig(**{**TINY, "data": "cifar10"}, data_dir=str(empty), out=str(tmp_path / "c")))
    with pytest.raises(ValueError, match="he2099"):  # an invalid choice, as one line
        main_train(["--recipe", "he2099", "--out", str(tmp_path / "d")])
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(ValueError, match="tensorboard"):
            train(TrainConfig(**TINY, out=str(tmp_path / "e"), iterations=2, tensorboard=True))
    assert cli_main(["train", "--data", "nope", "--out", str(tmp_path / "f")]) == 2
    assert "error: unknown dataset" in capsys.readouterr().err


def test_config_file_and_modern_options(tmp_path):
    conf = tmp_path / "run.yaml"
    conf.write_text("model: resnet8\nwidth: 4\ndata: synthetic\nbatch_size: 32\nprecision: fp32\nthreads: 1\n"
                    "recipe: modern-cifar\niterations: 20\nlog_every: 10\neval_every: 1000\nquiet: true\n"
                    "grad_clip: 1.0\nschedule: onecycle\n")
    out = str(tmp_path / "m")
    assert main_train(["--config", str(conf), "--out", out, "--label-smoothing", "0.2"]) == 0
    with open(os.path.join(out, "config.json")) as fh:
        c = json.load(fh)["config"]
    assert (c["schedule"], c["nesterov"], c["label_smoothing"], c["grad_clip"]) == ("onecycle", True, 0.2, 1.0)
    assert c["decay_norm_and_bias"] is False
    ck = load_checkpoint(os.path.join(out, "last.pt"))
    groups = ck["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0] and groups[0]["nesterov"]


def test_fused_channels_last_path_resumes_bit_identically(tmp_path):
    """The default CPU path on AVX-512 machines (fp32, channels_last, fused batch norm): a run resumed from
    its step-10 checkpoint ends with the same weights, bit for bit, as the run that went straight on."""
    from resnetlab import fused
    if fused.extension() is None:
        pytest.skip(f"fused kernels unavailable: {fused.unavailable_reason()}")
    cfg = dict(TINY, channels_last=True, fused_bn="on", iterations=20, log_every=5, checkpoint_every=20,
               save_at=(10,), eval_every=1000)
    ref, cut = str(tmp_path / "ref"), str(tmp_path / "cut")
    train(TrainConfig(**cfg, out=ref))
    with open(os.path.join(ref, "config.json")) as fh:
        assert json.load(fh)["runtime"]["fused_bn"] is True
    os.makedirs(cut)
    for name in ("config.json", "metrics.jsonl"):
        shutil.copy(os.path.join(ref, name), cut)
    shutil.copy(os.path.join(ref, "step_10.pt"), os.path.join(cut, "last.pt"))
    train(TrainConfig(**cfg, out=cut, resume=True))
    a, b = load_checkpoint(os.path.join(ref, "last.pt")), load_checkpoint(os.path.join(cut, "last.pt"))
    assert a["step"] == b["step"] == 20
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    ta = [(e["step"], e["loss"]) for e in events(ref) if e["kind"] == "train"]
    assert ta == [(e["step"], e["loss"]) for e in events(cut) if e["kind"] == "train"]


def test_auto_precision_resumes_in_the_arithmetic_the_run_began_in(tmp_path):
    """``--precision auto`` resolves per machine (bf16 on AMX CPUs, fp32 elsewhere). A run begun with auto on a
    machine that chose the other arithmetic than this one resumes in *that* arithmetic, bit-identically."""
    auto_bf16, _ = resolve_precision("auto", torch.device("cpu"), None)
    other = "fp32" if auto_bf16 else "bf16"
    cfg = dict(TINY, precision=other, iterations=8, log_every=2, checkpoint_every=8, save_at=(4,), eval_every=1000)
    ref, cut = str(tmp_path / "ref"), str(tmp_path / "cut")
    train(TrainConfig(**cfg, out=ref))
    os.makedirs(cut)
    shutil.copy(os.path.join(ref, "metrics.jsonl"), cut)
    shutil.copy(os.path.join(ref, "step_4.pt"), os.path.join(cut, "last.pt"))
    with open(os.path.join(ref, "config.json")) as fh:
        record = json.load(fh)
    record["config"]["precision"] = "auto"  # what the other machine wrote: auto, resolved to `other` there
    with open(os.path.join(cut, "config.json"), "w") as fh:
        json.dump(record, fh)
    train(TrainConfig(**{**cfg, "precision": "auto"}, out=cut, resume=True))
    with open(os.path.join(cut, "config.json")) as fh:
        assert json.load(fh)["runtime"]["bf16_autocast"] is (other == "bf16")
    a, b = load_checkpoint(os.path.join(ref, "last.pt")), load_checkpoint(os.path.join(cut, "last.pt"))
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


# ------------------------------------------------------------------ precision: what the hardware gets


def _cpu_flags() -> set[str] | None:
    """The CPU feature flags as the Linux kernel reports them, read without asking PyTorch."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def _auto_bf16_expected() -> bool:
    flags = _cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo flags to check the CPU's features against")
    return "amx_tile" in flags


class _ConvolutionDtypes(TorchDispatchMode):
    """Watches the ATen calls below autocast: the dtype every convolution (forward and backward) ran in."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.convolution, torch.ops.aten.convolution_backward):
            self.seen.add(args[0].dtype)
        return func(*args, **(kwargs or {}))


def test_precision_resolution_on_this_cpu():
    flags = _cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo flags to check the CPU's features against")
    # bf16 pays only with AMX tiles; channels_last wherever oneDNN has AVX-512 (the subsets PyTorch requires)
    amx = "amx_tile" in flags
    avx512 = {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu, None) == (amx, amx or avx512)
    assert resolve_precision("auto", cpu, False) == (amx, False)
    assert resolve_precision("fp32", cpu, None) == (False, False)
    assert resolve_precision("bf16", cpu, None) == (True, True)
    assert resolve_precision("bf16", cpu, False) == (True, False)
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("fp8", cpu, None)


# bf16 convolutions without AMX run emulated: the run, with its final evaluation, takes seconds
@pytest.mark.parametrize("precision", [pytest.param("bf16", marks=pytest.mark.slow), "auto"])
def test_precision_decides_what_the_training_convolutions_run_in(tmp_path, precision):
    """bf16 means autocast really runs the convolutions of a step in bf16; ``auto`` picks bf16 exactly on
    the CPUs whose flags show AMX, and plain fp32 elsewhere (where the same watch then sees float32)."""
    bf16 = True if precision == "bf16" else _auto_bf16_expected()
    watch = _ConvolutionDtypes()
    with watch:
        train(TrainConfig(**{**TINY, "precision": precision}, out=str(tmp_path / "r"), iterations=2, log_every=1,
                          eval_every=1000, fused_bn="off"))
    assert watch.seen == {torch.bfloat16 if bf16 else torch.float32}


def test_a_run_finished_while_this_one_started_is_not_overwritten(tmp_path, monkeypatch):
    """The folder is checked again once locked: a run another process finished between this one's first check
    and its lock (the race two study processes hit) is refused, not trained over."""
    from resnetlab import train as train_mod
    out = str(tmp_path / "run")
    train(TrainConfig(**TINY, out=out, iterations=2))
    kept = {f: open(os.path.join(out, f), "rb").read() for f in ("final.json", "last.pt", "metrics.jsonl")}
    hidden = os.path.join(out, "final.json.hidden")
    os.rename(os.path.join(out, "final.json"), hidden)
    os.rename(os.path.join(out, "last.pt"), hidden + "-last")

    class OtherProcessFinishesFirst(train_mod.FolderLock):  # the other run ends just before our lock
        def __init__(self, folder, *a):
            os.rename(hidden, os.path.join(out, "final.json"))
            os.rename(hidden + "-last", os.path.join(out, "last.pt"))
            super().__init__(folder, *a)

    monkeypatch.setattr(train_mod, "FolderLock", OtherProcessFinishesFirst)
    with pytest.raises(ValueError, match="already holds a run"):
        train(TrainConfig(**TINY, out=out, iterations=2))
    assert {f: open(os.path.join(out, f), "rb").read() for f in kept} == kept
    monkeypatch.undo()
    held = train_mod.FolderLock(out)  # and the refusal released the lock
    held.release()


def test_one_writer_per_run_folder_and_no_litter(tmp_path):
    """A folder held by a running training refuses a second one, naming the holder's pid; a resume cleans
    the temporary files a kill between write and rename left; --resume with nothing to resume says so."""
    from resnetlab.io import FolderLock
    out = str(tmp_path / "run")
    held = FolderLock(out)
    try:
        with pytest.raises(ValueError, match=rf"in use by another run \(pid {os.getpid()}\)"):
            train(TrainConfig(**TINY, out=out, iterations=2))
    finally:
        held.release()
    with pytest.raises(ValueError, match="nothing to resume in"):
        train(TrainConfig(**TINY, out=out, iterations=2, resume=True))
    train(TrainConfig(**TINY, out=out, iterations=4, checkpoint_every=2, log_every=2, eval_every=100))
    litter = os.path.join(out, ".tmp-last.pt-abc.pt")
    open(litter, "wb").write(b"half a checkpoint")
    train(TrainConfig(**TINY, out=out, iterations=6, checkpoint_every=2, log_every=2, eval_every=100, resume=True))
    assert not os.path.exists(litter)
    events = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [e["step"] for e in events if e["kind"] == "train"] == [2, 4, 6]  # the history kept whole


def test_a_second_writer_names_the_holder_even_before_it_wrote_its_pid(tmp_path):
    """The holder writes its pid just after taking the lock; two runs started at once read the file in
    between and said "pid unknown" (seen in CI). The refusal waits for the pid."""
    import threading
    fcntl = pytest.importorskip("fcntl")
    from resnetlab.io import FolderInUse, FolderLock
    (tmp_path / "run").mkdir()
    fh = open(tmp_path / "run" / ".lock", "a+")
    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # locked, the pid not written yet
    timer = threading.Timer(0.2, lambda: (fh.write("4242\n"), fh.flush()))
    timer.start()
    try:
        with pytest.raises(FolderInUse, match=r"in use by another run \(pid 4242\)"):
            FolderLock(tmp_path / "run")
    finally:
        timer.join()
        fh.close()

def test_ctrl_c_names_the_step_the_checkpoint_and_the_resume_command(tmp_path, monkeypatch, capsys):
    import resnetlab.train as T
    calls = {"n": 0}
    real = T.train_step

    def interrupted_at_7(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(T, "train_step", interrupted_at_7)
    out = str(tmp_path / "run")
    argv = ["train", "--model", "resnet8", "--width", "4", "--data", "synthetic", "--batch-size", "16",
            "--iterations", "20", "--checkpoint-every", "5", "--log-every", "5", "--eval-every", "100",
            "--precision", "fp32", "--threads", "1", "--quiet", "--out", out]
    assert cli_main(argv) == 130
    err = capsys.readouterr().err
    assert "interrupted at step 7" in err and f"{out}/last.pt (step 5)" in err
    assert f"resnetlab train --out {out} --resume" in err


def test_disk_errors_are_one_line_naming_the_path(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    argv = ["train", "--model", "resnet8", "--width", "4", "--data", "synthetic", "--iterations", "2",
            "--precision", "fp32", "--threads", "1", "--quiet", "--out", str(blocker / "run")]
    assert cli_main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err and str(blocker) in err


@pytest.mark.parametrize("flags,message", [
    (dict(momentum=1.5), r"momentum must be in \[0, 1\)"),
    (dict(milestones=(10, 500), iterations=100), "milestones must lie between 0 and iterations"),
    (dict(save_at=(50, 500), iterations=100), r"save_at steps must lie between 1 and iterations \(100\)"),
    (dict(save_at=(0,), iterations=100), "save_at steps must lie between 1"),
    (dict(weight_decay=-1e-4), "weight_decay must be >= 0"),
])
def test_nonsense_values_are_refused_with_the_valid_range(flags, message):
    from resnetlab.train import resolve_config
    with pytest.raises(ValueError, match=message):
        resolve_config(TrainConfig(**{**TINY, **flags}, out="x"))


@pytest.mark.parametrize("flags,message", [
    (["--schedule", "cosine", "--milestones", "5"], "--milestones applies to --schedule step, and this run's schedule is cosine"),
    (["--recipe", "modern-cifar", "--gamma", "0.2"], "--gamma applies to --schedule step"),
    (["--warmup-error", "0.5"], r"--warmup-error applies to --warmup he2016, and this run's warmup is none \(auto"),
    (["--warmup", "none", "--warmup-lr", "0.05"], "--warmup-lr applies to --warmup he2016 or linear"),
])
def test_a_flag_this_run_would_never_read_is_refused(tmp_path, flags, message):
    """--schedule cosine --milestones 5 trained with cosine and recorded milestones no step used."""
    from resnetlab.config import parse
    from resnetlab.train import resolve_config
    argv = ["--model", "resnet8", "--iterations", "10", "--out", str(tmp_path / "run")]
    with pytest.raises(ValueError, match=message):
        resolve_config(parse(TrainConfig, argv + flags, prog="resnetlab train"))
    resolve_config(parse(TrainConfig, argv + ["--schedule", "step", "--milestones", "5", "--gamma", "0.2",
                                              "--warmup", "linear", "--warmup-lr", "0.01"], prog="resnetlab train"))
    # a recorded run's settings given back as a file hold the recipe's values, which are no mistake
    (tmp_path / "recorded.json").write_text(json.dumps({"schedule": "cosine", "milestones": [5, 8], "gamma": 0.1,
                                                         "warmup_lr": 0.01, "warmup_error": 0.8}))
    resolve_config(parse(TrainConfig, argv + ["--config", str(tmp_path / "recorded.json")], prog="resnetlab train"))
    with pytest.raises(ValueError, match="--milestones applies to --schedule step"):  # the Python API alike
        resolve_config(TrainConfig(out="x", schedule="constant", milestones=(3,)))
    assert not (tmp_path / "run").exists()


def test_resume_with_another_world_size_is_refused_unless_asked(tmp_path):
    from resnetlab.weights import checksum, load_checkpoint
    out = str(tmp_path / "run")
    train(TrainConfig(**TINY, out=out, iterations=4, checkpoint_every=2, log_every=2, eval_every=100))
    ck = load_checkpoint(os.path.join(out, "last.pt"))
    assert ck["world_size"] == 1
    ck["world_size"] = 2  # as a 2-process torchrun would have written it
    ck["checksum"] = checksum(ck)
    torch.save(ck, os.path.join(out, "last.pt"))
    with pytest.raises(ValueError, match=r"with 1 process\(es\): it was trained with 2"):
        train(TrainConfig(**TINY, out=out, iterations=6, resume=True))
    final = train(TrainConfig(**TINY, out=out, iterations=6, resume=True, allow_world_size_change=True))
    assert final["steps"] == 6


def test_durations_read_as_the_logs_show_them():
    """The training ETA and the study's progress share one format: hours and minutes, minutes and seconds, or
    seconds, rounded to the nearest second and never negative."""
    from resnetlab.io import format_duration
    assert [format_duration(s) for s in (5 * 3600 + 30 * 60 + 29, 3599.6, 125.2, 41, 0.4, -3)] == \
        ["5h30m", "1h00m", "2m05s", "41s", "0s", "0s"]


def test_progress_in_a_log_ends_with_its_last_state(capsys):
    """stderr is not a terminal here (a log file): the bar writes its start and its end, where it used to
    leave only its '0%' line, as if the work had stalled."""
    from resnetlab.io import progress
    assert sum(progress(range(1000), desc="eval", unit="img")) == 499_500
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and "0/1000" in lines[0] and "100%" in lines[1] and "1000/1000" in lines[1], lines


def test_resume_records_what_it_changes_and_refuses_changes_no_step_would_use(tmp_path, capsys):
    """config.json holds the settings in effect at the end; `resumes` says from which step each change
    applied. A complete run resumed with another --lr used to rewrite config.json with an lr no step ran with.
    A different model is one line naming the difference."""
    out = str(tmp_path / "run")
    base = ["train", *TINY_FLAGS, "--quiet", "--log-every", "2", "--checkpoint-every", "2", "--eval-every", "100"]
    assert cli_main([*base, "--iterations", "4", "--out", out]) == 0
    step4 = open(os.path.join(out, "last.pt"), "rb").read()
    assert cli_main(["train", "--out", out, "--resume", "--iterations", "6", "--lr", "0.05"]) == 0
    # as if that resume had died before its first checkpoint: resumed again from step 4, it is recorded once
    with open(os.path.join(out, "last.pt"), "wb") as fh:
        fh.write(step4)
    os.remove(os.path.join(out, "final.json"))
    assert cli_main(["train", "--out", out, "--resume"]) == 0
    assert json.loads(open(os.path.join(out, "config.json")).read())["resumes"] == \
        [{"step": 4, "changed": ["iterations 4 -> 6", "lr 0.1 -> 0.05"]}]
    assert cli_main(["train", "--out", out, "--resume", "--iterations", "8"]) == 0
    record = json.loads(open(os.path.join(out, "config.json")).read())
    assert record["resumes"] == [{"step": 4, "changed": ["iterations 4 -> 6", "lr 0.1 -> 0.05"]},
                                 {"step": 6, "changed": ["iterations 6 -> 8"]}]
    assert record["config"]["lr"] == 0.05 and record["config"]["iterations"] == 8
    before = {f: open(os.path.join(out, f), "rb").read() for f in ("config.json", "final.json", "last.pt")}
    capsys.readouterr()
    assert cli_main(["train", "--out", out, "--resume", "--lr", "0.2"]) == 2
    assert f"{out} is complete (8 of 8 iterations): no step would run with the changed settings (lr 0.05 -> 0.2)" \
        in capsys.readouterr().err
    assert cli_main(["train", "--out", out, "--resume", "--width", "8", "--iterations", "10"]) == 2
    err = capsys.readouterr().err.strip()
    assert "width: 4 in the checkpoint vs 8 now" in err and "\n" not in err, err
    assert {f: open(os.path.join(out, f), "rb").read() for f in before} == before  # nothing rewritten


def test_tensorboard_without_the_package_is_refused_before_the_run_folder_exists(tmp_path):
    """It was refused after the folder and its lock file had been created, leaving an empty run folder."""
    import importlib.util
    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed here")
    with pytest.raises(ValueError, match="--tensorboard needs the tensorboard package"):
        train(TrainConfig(**TINY, out=str(tmp_path / "run"), iterations=2, tensorboard=True))
    assert not (tmp_path / "run").exists()
