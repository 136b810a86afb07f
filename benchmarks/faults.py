"""Fault injection: kill, starve and corrupt ``resnetlab`` runs on purpose, and check what is left.

Each fault class runs a seeded number of trials on tiny runs (ResNet-8, width 4, synthetic data, one
thread) and every trial is judged against a documented safe state: a killed run resumes to the same bits
as a run that was never interrupted; a refused write leaves the previous checkpoint and the logged
history as they were, with one error line naming the file; a damaged or non-finite checkpoint is refused
with its path; a second writer is refused naming the first; a hostile archive is refused before anything
is unpacked. The table goes to ``docs/reliability.md``.

    python benchmarks/faults.py                         # the full set (about ten minutes on 2 cores)
    python benchmarks/faults.py --sigkill 50 --seed 3   # more random kills, other draws
    python benchmarks/faults.py --quick --doc ''        # one trial per class, no doc written

Faults are injected without hooks in the package: every run is a child process (forked from this one,
which has already imported torch, or a fresh interpreter with ``--spawn``) that patches ``os.fsync``,
``os.replace``, ``open`` and friends, or sets a real resource limit or user id, before it calls
``resnetlab.cli.main``. Kills are real ``SIGKILL``s of that process.
"""
from __future__ import annotations

import argparse
import builtins
import contextlib
import csv
import datetime
import errno
import hashlib
import io
import json
import math
import os
import pickle
import platform
import random
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if os.path.join(ROOT, "src") not in sys.path and os.path.isdir(os.path.join(ROOT, "src", "resnetlab")):
    sys.path.insert(0, os.path.join(ROOT, "src"))  # run from a checkout without installing

TINY = ["--model", "resnet8", "--width", "4", "--data", "synthetic", "--batch-size", "32", "--precision", "fp32",
        "--threads", "1", "--quiet"]
WALL_CLOCK = {"metrics": ("img_per_s", "time"), "final": ("wall_time_s",), "checkpoint": ("elapsed", "checksum")}
"""Fields that measure time, not training: left out of every comparison (the checksum covers ``elapsed``)."""
RUN_PLACE = ("out", "resume")
"""Config fields that name the run folder or say it was resumed: they differ by construction."""
POINTS = ("write", "fsync", "rename", "renamed")
"""Where in a checkpoint's atomic write a kill is injected: a ``write()`` of its temporary file, the
``fsync`` of that file, just before the ``os.replace`` onto the checkpoint, just after it."""


# ----------------------------------------------------------------------------------------------------------
# The child: install one fault, then run the resnetlab command line
# ----------------------------------------------------------------------------------------------------------

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class _Proxy:
    """A file opened for writing in the watched folder: its writes go through the fault state first."""

    def __init__(self, fh, state, path):
        self._fh, self._state, self._path = fh, state, path

    def write(self, data):
        return self._state.on_write(self._fh, self._path, data)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._fh.__exit__(*exc)

    def __iter__(self):
        return iter(self._fh)

    def __getattr__(self, name):
        return getattr(self._fh, name)


class _FaultState:
    """Counts (and, as the fault says, kills at or fails) file operations on one run folder."""

    def __init__(self, fault: dict):
        self.folder = os.path.realpath(fault["folder"])
        self.kill, self.n = fault.get("kill"), fault.get("n", 0)
        self.disk = fault.get("disk")
        self.budget = fault.get("budget")      # ENOSPC: bytes the disk still takes
        self.after = fault.get("after")        # EROFS: write-opens that still succeed
        self.counts = {**dict.fromkeys(POINTS, 0), "opens": 0, "bytes": 0}
        self.readonly = False

    def under(self, path) -> bool:
        try:
            p = os.path.realpath(os.fsdecode(path))
        except (TypeError, ValueError):
            return False
        return p == self.folder or os.path.dirname(p) == self.folder

    def is_checkpoint_tmp(self, path) -> bool:
        name = os.path.basename(os.fsdecode(path))
        return self.under(path) and name.startswith(".tmp-") and name.endswith(".pt")

    def hit(self, point: str) -> None:
        self.counts[point] += 1
        if point == self.kill and self.counts[point] == self.n:
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(60)  # not reached: SIGKILL cannot be caught

    def erofs(self, path, path2=None):
        return OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path), None,
                       None if path2 is None else os.fsdecode(path2))

    def on_open(self, path) -> None:
        self.counts["opens"] += 1
        if self.disk == "EROFS" and self.counts["opens"] > self.after:
            self.readonly = True
        if self.readonly:
            raise self.erofs(path)

    def on_mutate(self, path, path2=None) -> None:
        if self.readonly and (self.under(path) or (path2 is not None and self.under(path2))):
            raise self.erofs(path, path2)

    def on_write(self, fh, path, data):
        if self.is_checkpoint_tmp(path):
            self.hit("write")
        if self.budget is not None and len(data) > self.budget:
            # A full disk takes what fits, then the next write fails; like a real failed write(),
            # the OSError names no file.
            fh.write(data[:self.budget])
            self.counts["bytes"] += self.budget
            self.budget = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if self.budget is not None:
            self.budget -= len(data)
        self.counts["bytes"] += len(data)
        return fh.write(data)


def _install(fault: dict) -> _FaultState | None:
    """Patch the process for ``fault`` (see :meth:`Harness.launch`); returns the state that counts."""
    if fault.get("limits"):
        import resnetlab.datasets as datasets
        for name, value in fault["limits"].items():
            setattr(datasets, name, value)
    if fault.get("fsize") is not None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (fault["fsize"], fault["fsize"]))
    if fault.get("uid") is not None and os.geteuid() == 0:
        os.setgroups([])
        os.setgid(fault["uid"])
        os.setuid(fault["uid"])
    if not fault.get("folder"):
        return None
    st = _FaultState(fault)
    real_open, real_os_open, real_fsync = builtins.open, os.open, os.fsync
    real = {name: getattr(os, name) for name in ("replace", "rename", "unlink", "remove", "chmod", "mkdir")}

    def fopen(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+") and st.under(file):
            st.on_open(file)
            return _Proxy(real_open(file, mode, *args, **kwargs), st, os.fsdecode(file))
        return real_open(file, mode, *args, **kwargs)

    def osopen(path, flags, *args, **kwargs):
        if flags & _WRITE_FLAGS and st.under(path):
            st.on_open(path)
        return real_os_open(path, flags, *args, **kwargs)

    def fsync(fd):
        with contextlib.suppress(OSError, TypeError):
            if st.is_checkpoint_tmp(os.readlink(f"/proc/self/fd/{fd if isinstance(fd, int) else fd.fileno()}")):
                st.hit("fsync")
        return real_fsync(fd)

    def replace(src, dst, *args, **kwargs):
        st.on_mutate(src, dst)
        checkpoint = st.is_checkpoint_tmp(src) and os.fsdecode(dst).endswith(".pt")
        if checkpoint:
            st.hit("rename")
        result = real["replace"](src, dst, *args, **kwargs)
        if checkpoint:
            st.hit("renamed")
        return result

    def mutator(name):
        def wrapped(path, *args, **kwargs):
            st.on_mutate(path)
            return real[name](path, *args, **kwargs)
        return wrapped

    builtins.open, os.open, os.fsync, os.replace = fopen, osopen, fsync, replace
    os.rename = lambda src, dst, *a, **k: (st.on_mutate(src, dst), real["rename"](src, dst, *a, **k))[1]
    for name in ("unlink", "remove", "chmod", "mkdir"):
        setattr(os, name, mutator(name))
    st.real_open = real_open
    return st


def _extract(archive: str, cache: str, md5: str) -> int:
    """The download path's extraction of a local archive (``download_cifar`` with its MD5 given)."""
    from resnetlab.datasets import download_cifar
    try:
        print(download_cifar("cifar10", cache, md5=md5, quiet=True))
        return 0
    except (ValueError, FileNotFoundError) as e:
        print(f"extract: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"extract: error: {e.strerror or e}: {e.filename}", file=sys.stderr)
        return 1


def child_main(argv: list[str], fault: dict | None) -> int:
    """What a trial's process runs: install ``fault``, then ``resnetlab.cli.main(argv)``."""
    import resnetlab.cli
    fault = fault or {}
    st = _install(fault)
    try:
        if argv and argv[0] == "_extract":
            return _extract(*argv[1:])
        return resnetlab.cli.main(argv)
    finally:
        if st is not None and fault.get("count"):
            with st.real_open(fault["count"], "w") as fh:
                json.dump(st.counts, fh)


# ----------------------------------------------------------------------------------------------------------
# The parent: processes, comparisons
# ----------------------------------------------------------------------------------------------------------

class Proc:
    """A trial's process: ``poll``, ``wait``, ``kill``; ``rc`` is negative for a signal, as in subprocess."""

    def __init__(self, pid=None, popen=None, out="", err=""):
        self.pid = pid if popen is None else popen.pid
        self.popen, self.out_path, self.err_path, self.rc = popen, out, err, None

    def poll(self):
        if self.rc is None:
            if self.popen is not None:
                self.rc = self.popen.poll()
            else:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.rc = os.waitstatus_to_exitcode(status)
        return self.rc

    def wait(self, timeout: float = 900):
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"trial process {self.pid} ran over {timeout:.0f} s")
            time.sleep(0.01)
        return self.rc

    def kill(self) -> bool:
        """SIGKILL it if it still runs; True if it was running."""
        if self.poll() is not None:
            return False
        os.kill(self.pid, signal.SIGKILL)
        self.wait()
        return True

    @property
    def stdout(self) -> str:
        with open(self.out_path, errors="replace") as fh:
            return fh.read()

    @property
    def stderr(self) -> str:
        with open(self.err_path, errors="replace") as fh:
            return fh.read()


def _strip(d: dict, keys) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


def diff(a, b, where: str = "") -> list[str]:
    """Where ``a`` and ``b`` differ; tensors compared bit for bit (dtype, shape, bytes)."""
    import torch
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.dtype != b.dtype \
                or a.shape != b.shape:
            return [f"{where}: tensor type or shape differs"]
        ab = a.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        bb = b.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        return [] if torch.equal(ab, bb) else [f"{where}: tensor bits differ"]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{where}: keys differ ({sorted(map(str, set(a) ^ set(b)))[:5]})"]
        return [d for k in a for d in diff(a[k], b[k], f"{where}.{k}" if where else str(k))]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: length {len(a)} vs {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in diff(x, y, f"{where}[{i}]")]
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return []
    return [] if (type(a) is type(b) and a == b) else [f"{where}: {a!r} vs {b!r}"]


def _events(folder: str, torn_ok: bool = False) -> list[dict]:
    """The events of metrics.jsonl, wall-clock fields aside; with ``torn_ok`` a last line cut short (no
    newline: an append that failed) is left out, as a resume does."""
    with open(os.path.join(folder, "metrics.jsonl")) as fh:
        lines = fh.read().split("\n")
    if lines[-1] and not torn_ok:
        raise ValueError("metrics.jsonl ends in a line without its newline")
    return [_strip(json.loads(line), WALL_CLOCK["metrics"]) for line in lines[:-1] if line.strip()]


def _csv_rows(folder: str) -> list[dict]:
    with open(os.path.join(folder, "metrics.csv"), newline="") as fh:
        return [_strip(row, WALL_CLOCK["metrics"]) for row in csv.DictReader(fh)]


def _checkpoint_contents(path: str) -> dict:
    from resnetlab.weights import load_checkpoint
    ck = _strip(load_checkpoint(path), WALL_CLOCK["checkpoint"])
    ck["config"] = _strip(ck["config"], RUN_PLACE)
    return ck


def compare_runs(ref: str, got: str) -> list[str]:
    """How the run folder ``got`` differs from the reference ``ref``: the same files (no litter), every
    checkpoint's training state bit for bit, metrics.jsonl/.csv and final.json; wall-clock fields aside."""
    problems = []
    names_ref, names_got = sorted(os.listdir(ref)), sorted(os.listdir(got))
    if names_ref != names_got:
        problems.append(f"files differ: extra {sorted(set(names_got) - set(names_ref))}, "
                        f"missing {sorted(set(names_ref) - set(names_got))}")
    for name in names_ref:
        if name not in names_got:
            continue
        a, b = os.path.join(ref, name), os.path.join(got, name)
        try:
            if name.endswith(".pt"):
                problems += [f"{name}: {d}" for d in diff(_checkpoint_contents(a), _checkpoint_contents(b))]
            elif name == "metrics.jsonl":
                problems += [f"{name}: {d}" for d in diff(_events(ref), _events(got))]
            elif name == "metrics.csv":
                problems += [f"{name}: {d}" for d in diff(_csv_rows(ref), _csv_rows(got))]
            elif name == "final.json":
                with open(a) as fa, open(b) as fb:
                    problems += [f"{name}: {d}" for d in diff(_strip(json.load(fa), WALL_CLOCK["final"]),
                                                                _strip(json.load(fb), WALL_CLOCK["final"]))]
            elif name == "config.json":
                with open(a) as fa, open(b) as fb:
                    ca, cb = json.load(fa), json.load(fb)
                ca["config"], cb["config"] = _strip(ca["config"], RUN_PLACE), _strip(cb["config"], RUN_PLACE)
                problems += [f"{name}: {d}" for d in diff(ca, cb)]
        except Exception as e:  # an unreadable file in `got` is a finding, not a harness crash
            problems.append(f"{name}: unreadable ({type(e).__name__}: {e})")
    return problems


def litter(folder: str) -> list[str]:
    """Temporary files an interrupted write left in ``folder``."""
    return sorted(n for n in os.listdir(folder) if n.startswith((".tmp-", ".extract-"))) \
        if os.path.isdir(folder) else []


def sha256(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def one_line_error(err: str, *names: str) -> str | None:
    """Why ``err`` is not one error line naming each of ``names`` without a traceback (None: it is)."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if "Traceback" in err:
        return "stderr holds a traceback: " + " | ".join(lines[-3:])
    if len(lines) != 1:
        return f"stderr has {len(lines)} lines, not one: " + " | ".join(lines[:3])
    missing = [n for n in names if n not in lines[0]]
    return f"the error does not name {', '.join(missing)}: {lines[0]}" if missing else None


@dataclass
class Trial:
    row: str
    index: int
    problems: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    notes: dict = field(default_factory=dict)

    @property
    def survived(self) -> bool:
        return not self.problems and not self.lost


ROWS = {
    "sigkill": ("SIGKILL at a random moment of `train`",
                "killed after a seeded delay (resumes killed again at random), resumed to the end: every "
                "checkpoint, metrics.jsonl/.csv, final.json bit-identical to an uninterrupted run; no temporary "
                "files left"),
    "kill-write": ("SIGKILL in a checkpoint's write()",
                   "right after the kill every .pt in the folder loads (the old or the new, never torn); resumed "
                   "to the end: identical to an uninterrupted run, no temporary files"),
    "kill-fsync": ("SIGKILL at the checkpoint's fsync", "as above"),
    "kill-rename": ("SIGKILL just before the rename", "as above"),
    "kill-renamed": ("SIGKILL just after the rename", "as above"),
    "enospc": ("ENOSPC, disk full (simulated)",
               "exit 1, one stderr line naming the file, no traceback; last.pt byte-identical (or a complete "
               "newer checkpoint), logged history kept, no temporary files; then `--resume` ends identical to a "
               "fault-free run"),
    "erofs": ("EROFS, read-only remount (simulated)",
              "as ENOSPC; temporary files the remount made undeletable are removed by the next `--resume`"),
    "efbig": ("EFBIG, file size limit (real: RLIMIT_FSIZE)", "as ENOSPC"),
    "eacces": ("EACCES, folder not writable (real: run as uid 65534)", "as ENOSPC"),
    "out-file": ("`--out` is a regular file", "refused with one line naming it; the file unchanged, nothing created"),
    "out-under-file": ("`--out` inside a regular file (ENOTDIR)", "as above"),
    "corrupt-flip": ("flipped bytes in a finished last.pt",
                     "`eval --weights` and `train --resume` each refuse with one line naming the file, or read "
                     "contents identical to the original (flips in bytes no reader uses)"),
    "corrupt-truncate": ("truncated last.pt", "as above"),
    "nonfinite": ("NaN/inf in a BN buffer, valid checksum",
                  "`eval --weights` and `train --resume` refuse with one line naming the file and the tensor"),
    "diverge": ("training diverges (lr x1e30 at a milestone)",
                "exit 2, one line naming last.pt; last.pt is the finite checkpoint of the milestone step"),
    "writers": ("two `train --out F` started at once",
                "one finishes, the other is refused naming the holder's pid; the folder is identical to an "
                "uninterrupted run"),
    "tar-member": ("archive: a member over the size limit",
                   "the in-memory reader (`train --data-dir X.tar.gz`) and extraction (`download_cifar`) refuse "
                   "naming the archive; nothing unpacked, no temporary folder"),
    "tar-total": ("archive: members over the total limit", "as above"),
    "tar-duplicate": ("archive: a member twice", "as above"),
    "tar-escape": ("archive: `..`, absolute, symlink or hard-link member",
                   "extraction refuses naming the archive; nothing written outside the cache, no temporary folder"),
    "tar-valid": ("archive: valid (control)",
                  "both readers accept it and read exactly the pixels and labels written"),
}


class Harness:
    """Runs the trials in ``work``: ``harness.run_sigkill(20)`` etc. return lists of :class:`Trial`."""

    def __init__(self, work: str, seed: int = 0, iterations: int = 50, spawn: bool = False,
                 archive_limit: int | None = None, say=None):
        self.work, self.seed, self.iterations, self.spawn = work, seed, iterations, spawn
        self.archive_limit = archive_limit  # None: the package's own MAX_MEMBER_BYTES
        self.say = say or (lambda *a: None)
        self.logs = os.path.join(work, "logs")
        os.makedirs(self.logs, exist_ok=True)
        os.chmod(work, 0o755)  # the EACCES trials run as another user, who must reach the folders
        self._n = 0
        self._ref = None
        self._disk = None

    # --- processes

    def launch(self, argv: list[str], fault: dict | None = None) -> Proc:
        """Start ``resnetlab argv`` as a child with ``fault``: ``{"folder": F}`` plus ``kill``/``n`` (SIGKILL
        at the n-th occurrence of a point of :data:`POINTS`), ``count`` (write the counts there), ``disk``
        ("ENOSPC" with ``budget`` bytes, "EROFS" ``after`` so many write-opens); or ``fsize`` (RLIMIT_FSIZE),
        ``uid`` (run as that user), ``limits`` (archive limits of resnetlab.datasets)."""
        self._n += 1
        out = os.path.join(self.logs, f"{self._n:04d}.out")
        err = os.path.join(self.logs, f"{self._n:04d}.err")
        if self.spawn:
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.path.join(ROOT, "src"),
                                                                             os.environ.get("PYTHONPATH")]))}
            with open(out, "wb") as fo, open(err, "wb") as fe:
                p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", json.dumps(fault or {}),
                                      "--", *argv], stdout=fo, stderr=fe, stdin=subprocess.DEVNULL, env=env)
            return Proc(popen=p, out=out, err=err)
        fo = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        fe = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns into the harness
            rc = 1
            try:
                os.dup2(fo, 1)
                os.dup2(fe, 2)
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                sys.stdin = open(0, closefd=False)
                sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True)
                sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True,
                                              errors="backslashreplace")
                rc = child_main(argv, fault)
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:
                traceback.print_exc()
                rc = 1
            finally:
                with contextlib.suppress(BaseException):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(rc if isinstance(rc, int) else 1)
        os.close(fo)
        os.close(fe)
        return Proc(pid=pid, out=out, err=err)

    def run(self, argv, fault=None, timeout: float = 900) -> Proc:
        p = self.launch(argv, fault)
        p.wait(timeout)
        return p

    def train_flags(self, out: str, iterations: int | None = None) -> list[str]:
        n = iterations or self.iterations
        return ["train", *TINY, "--iterations", str(n), "--checkpoint-every", "5", "--log-every", "5",
                "--eval-every", str(n // 2), "--val-split", "200", "--save-at", str(n // 2 + 5), "--out", out]

    def rng(self, row: str, i: int) -> random.Random:
        return random.Random(f"{self.seed}/{row}/{i}")

    def folder(self, name: str) -> str:
        path = os.path.join(self.work, name)
        if os.path.exists(path):
            shutil.rmtree(path)
        return path

    # --- shared runs

    def reference(self) -> tuple[str, tuple[float, float]]:
        """The uninterrupted run every SIGKILL trial is compared with, and when in its process's life (s)
        training started (config.json appeared) and ended."""
        if self._ref is None:
            out = self.folder("reference")
            t, started = time.monotonic(), None
            p = self.launch(self.train_flags(out))
            while p.poll() is None:
                if started is None and os.path.exists(os.path.join(out, "config.json")):
                    started = time.monotonic() - t
                time.sleep(0.005)
            if p.rc != 0:
                raise RuntimeError(f"the reference run failed: {p.stderr}")
            end = time.monotonic() - t
            self._ref = (out, (started if started is not None else 0.0, end))
        return self._ref

    def resume_to_end(self, out: str, flags: list[str], trial: Trial, rng: random.Random | None = None,
                      window: tuple[float, float] = (0.0, 0.0), max_kills: int = 0) -> None:
        """Start or resume the run in ``out`` until it finishes, as a user would after each crash: ``--resume``
        when last.pt exists, else the original command. With ``rng``, each process may be SIGKILLed after a
        seeded delay uniform in ``window`` (the first always is, the others with probability 1/2, at most
        ``max_kills``)."""
        kills, landed = 0, trial.notes.setdefault("landed", [])
        for _ in range(max_kills + 5):
            argv = ["train", "--out", out, "--resume"] if os.path.exists(os.path.join(out, "last.pt")) else flags
            p = self.launch(argv)
            if rng is not None and kills < max_kills and (kills == 0 or rng.random() < 0.5):
                kills += 1
                trial.notes["attempts"] = trial.notes.get("attempts", 0) + 1
                deadline = time.monotonic() + rng.uniform(*window)
                while time.monotonic() < deadline and p.poll() is None:
                    time.sleep(0.005)
                if p.kill():
                    landed.append(self._kill_site(out))
                    continue
            if p.wait() != 0:
                trial.problems.append(f"`{' '.join(argv[:1] + argv[-3:])}` exited {p.rc}: {p.stderr.strip()[-300:]}")
                return
            return
        trial.problems.append("the run did not finish after repeated resumes")

    @staticmethod
    def _kill_site(out: str) -> str:
        """Where a kill landed: before any checkpoint, during a checkpoint write, or between two."""
        from resnetlab.weights import peek_checkpoint
        if litter(out):
            return "write"
        ck = peek_checkpoint(os.path.join(out, "last.pt"))
        return "start" if ck is None else "between"

    # --- 1. SIGKILL at a random moment

    def run_sigkill(self, trials: int, share: float = 1.0) -> list[Trial]:
        """``share`` < 1 draws the delays from that first part of the window only (so that kills land)."""
        ref, (started, ended) = self.reference()
        window = (started / 2, started / 2 + share * (ended - started / 2))  # late start-up (a resume's own
        # writes happen there) to the end of an uninterrupted run
        results = []
        for i in range(trials):
            t = Trial("sigkill", i)
            out = self.folder(f"sigkill-{i}")
            self.resume_to_end(out, self.train_flags(out), t, self.rng("sigkill", i), window, max_kills=3)
            if not t.problems:
                t.lost += compare_runs(ref, out)
            results.append(t)
            self.say(t)
        return results

    # --- 2. kills inside a checkpoint's atomic write

    def run_kill_points(self, trials: int, points=POINTS) -> list[Trial]:
        ref, _ = self.reference()
        count_dir, counts_file = self.folder("count"), os.path.join(self.work, "counts.json")
        p = self.run(self.train_flags(count_dir), {"folder": count_dir, "count": counts_file})
        if p.rc != 0 or compare_runs(ref, count_dir):  # the patches must change nothing when no fault fires
            raise RuntimeError(f"the counting run differs from the reference: {compare_runs(ref, count_dir)} "
                               f"{p.stderr[-500:]}")
        with open(counts_file) as fh:
            counts = json.load(fh)
        results = []
        for point in points:
            for i in range(trials):
                t = Trial(f"kill-{point}", i)
                n = self.rng(point, i).randint(1, counts[point])
                t.notes["occurrence"] = f"{n}/{counts[point]}"
                out = self.folder(f"kill-{point}-{i}")
                p = self.run(self.train_flags(out), {"folder": out, "kill": point, "n": n})
                if p.rc != -signal.SIGKILL:
                    raise RuntimeError(f"the kill at {point} #{n} did not happen (exit {p.rc}): {p.stderr[-500:]}")
                t.notes["litter"] = len(litter(out))
                for name in sorted(os.listdir(out)):
                    if name.endswith(".pt") and not name.startswith(".tmp-"):
                        try:
                            _checkpoint_contents(os.path.join(out, name))
                        except Exception as e:
                            t.lost.append(f"{name} unreadable right after the kill: {e}")
                self.resume_to_end(out, self.train_flags(out), t)
                if not t.problems:
                    t.lost += compare_runs(ref, out)
                results.append(t)
                self.say(t)
        return results

    # --- 3. disk faults

    def disk_runs(self) -> dict:
        """A run interrupted after its step-20 checkpoint (the base of every disk trial), the same run resumed
        without fault (the reference), and what that resume writes (counted)."""
        if self._disk is None:
            flags = lambda out: ["train", *TINY, "--iterations", "40", "--checkpoint-every", "10", "--log-every", "5",
                                 "--eval-every", "1000", "--out", out]  # noqa: E731
            base = self.folder("disk-base")
            p = self.run(flags(base), {"folder": base, "kill": "renamed", "n": 2})  # killed once step 20 is saved
            if p.rc != -signal.SIGKILL:
                raise RuntimeError(f"the disk base run was not stopped at its second checkpoint: {p.stderr[-500:]}")
            ref = self.folder("disk-ref")
            shutil.copytree(base, ref)
            counts_file = os.path.join(self.work, "disk-counts.json")
            p = self.run(["train", "--out", ref, "--resume"], {"folder": ref, "count": counts_file})
            if p.rc != 0:
                raise RuntimeError(f"the disk reference resume failed: {p.stderr[-500:]}")
            with open(counts_file) as fh:
                counts = json.load(fh)
            self._disk = {"base": base, "ref": ref, "counts": counts, "flags": flags,
                          "checkpoint_bytes": os.path.getsize(os.path.join(ref, "last.pt"))}
        return self._disk

    def run_disk(self, trials: int, kinds=("enospc", "erofs", "efbig", "eacces", "out-file", "out-under-file")) \
            -> list[Trial]:
        d = self.disk_runs()
        results = []
        for kind in kinds:
            for i in range(trials):
                t = Trial(kind, i)
                r = self.rng(kind, i)
                if kind.startswith("out-"):
                    self._out_is_file(t, kind, d, i)
                else:
                    self._disk_fault(t, kind, r, d, i)
                results.append(t)
                self.say(t)
        return results

    def _disk_fault(self, t: Trial, kind: str, r: random.Random, d: dict, i: int) -> None:
        out = self.folder(f"{kind}-{i}")
        shutil.copytree(d["base"], out)
        last = os.path.join(out, "last.pt")
        before, history = sha256(last), _events(out)
        if kind == "enospc":
            # Log-uniform, so that the small files (lock, logs, config) run out of space as often as checkpoints.
            budget = int(math.exp(r.uniform(0, math.log(d["counts"]["bytes"]))))
            fault = {"folder": out, "disk": "ENOSPC", "budget": budget}
            t.notes["fault"] = f"disk full after {fault['budget']:,} of {d['counts']['bytes']:,} bytes"
        elif kind == "erofs":
            fault = {"folder": out, "disk": "EROFS", "after": r.randrange(d["counts"]["opens"])}
            t.notes["fault"] = f"read-only after {fault['after']} of {d['counts']['opens']} write-opens"
        elif kind == "efbig":
            fault = {"fsize": r.randint(4096, d["checkpoint_bytes"] - 1)}
            t.notes["fault"] = f"RLIMIT_FSIZE {fault['fsize']:,} bytes"
        else:  # eacces: root ignores permission bits, so the child runs as nobody; others get a chmod
            fault = {"uid": 65534}
            if os.geteuid() != 0:
                for name in os.listdir(out):
                    os.chmod(os.path.join(out, name), 0o444)
                os.chmod(out, 0o555)
            t.notes["fault"] = "uid 65534 on a root-owned folder" if os.geteuid() == 0 else "chmod 555"
        p = self.run(["train", "--out", out, "--resume"], fault)
        if os.geteuid() != 0 and kind == "eacces":
            os.chmod(out, 0o755)
            for name in os.listdir(out):
                os.chmod(os.path.join(out, name), 0o644)
        if p.rc == 0:
            t.problems.append("the fault never fired: the run finished")
        elif p.rc < 0 or p.rc not in (1, 2):
            t.problems.append(f"exit {p.rc}: {p.stderr.strip()[-300:]}")
        else:
            t.notes["error"] = p.stderr.strip()
            why = one_line_error(p.stderr, out)
            if why:
                t.problems.append(why)
        try:  # the step-20 last.pt, byte for byte, or a complete newer one written before the fault struck
            step = _checkpoint_contents(last)["step"]
            if sha256(last) != before:
                t.notes["newer"] = step
                if step <= 20:
                    t.lost.append(f"last.pt changed but holds step {step}")
        except Exception as e:
            t.lost.append(f"last.pt unreadable after the fault: {e}")
        try:
            kept = [e for e in _events(out, torn_ok=True) if e["step"] <= 20]
            if kept != history:
                t.lost.append("the logged history up to the checkpoint changed")
        except Exception as e:
            t.problems.append(f"metrics.jsonl unreadable after the fault: {type(e).__name__}: {e}")
        left = litter(out)
        if left and kind != "erofs":
            t.problems.append(f"temporary files left: {left}")
        t.notes["litter"] = len(left)
        p = self.run(["train", "--out", out, "--resume"])  # the fault is gone: carry on
        if p.rc != 0:
            t.problems.append(f"--resume after the fault failed (exit {p.rc}): {p.stderr.strip()[-300:]}")
        else:
            t.lost += compare_runs(d["ref"], out)

    def _out_is_file(self, t: Trial, kind: str, d: dict, i: int) -> None:
        where = self.folder(f"{kind}-{i}")
        os.makedirs(where)
        target = os.path.join(where, "notes.txt")
        with open(target, "w") as fh:
            fh.write(f"a file, not a folder ({i})\n")
        before, names = sha256(target), sorted(os.listdir(where))
        out = target if kind == "out-file" else os.path.join(target, "run")
        p = self.run(d["flags"](out))
        t.notes["error"] = p.stderr.strip()
        if p.rc in (0, None) or p.rc < 0:
            t.problems.append(f"exit {p.rc}: {p.stderr.strip()[-300:]}")
        else:
            why = one_line_error(p.stderr, target)
            if why:
                t.problems.append(why)
        if sha256(target) != before or sorted(os.listdir(where)) != names:
            t.lost.append("the file or its folder changed")

    # --- 4. corruption

    def run_corrupt(self, trials: int, truncations: int) -> list[Trial]:
        ref, _ = self.reference()
        results = []
        for kind, n in (("corrupt-flip", trials), ("corrupt-truncate", truncations)):
            for i in range(n):
                t = Trial(kind, i)
                r = self.rng(kind, i)
                out = self.folder(f"{kind}-{i}")
                shutil.copytree(ref, out)
                last = os.path.join(out, "last.pt")
                with open(last, "rb") as fh:
                    data = bytearray(fh.read())
                if kind == "corrupt-flip":
                    where = sorted(r.sample(range(len(data)), r.randint(1, 4)))
                    for pos in where:
                        data[pos] ^= r.randint(1, 255)
                    t.notes["bytes"] = where
                else:
                    data = data[:r.randrange(len(data))]
                    t.notes["length"] = len(data)
                with open(last, "wb") as fh:
                    fh.write(data)
                self._refused_or_identical(t, last, os.path.join(ref, "last.pt"), out)
                results.append(t)
                self.say(t)
        return results

    def _refused_or_identical(self, t: Trial, path: str, original: str, out: str, names=()) -> None:
        """``eval --weights path`` and ``train --out out --resume`` must refuse (naming ``path`` and ``names``)
        or have read exactly the original's contents."""
        refused = t.notes.setdefault("refused", 0)
        for argv in (["eval", "--weights", path, "--limit", "100", "--quiet"], ["train", "--out", out, "--resume"]):
            p = self.run(argv)
            if p.rc == 0:
                try:
                    same = not diff(_checkpoint_contents(path), _checkpoint_contents(original))
                except Exception:
                    same = False
                if not same:
                    t.lost.append(f"`{argv[0]}` used a damaged checkpoint silently")
                t.notes["identical"] = True
            elif p.rc < 0:
                t.problems.append(f"`{argv[0]}` died from signal {-p.rc}")
            else:
                refused += 1
                why = one_line_error(p.stderr, path, *names)
                t.notes["error"] = p.stderr.strip()
                if why:
                    t.problems.append(f"`{argv[0]}`: {why}")
        t.notes["refused"] = refused

    # --- 5. non-finite state

    def run_nonfinite(self, trials: int) -> list[Trial]:
        import torch
        from resnetlab.io import atomic_save
        from resnetlab.weights import checksum
        ref, _ = self.reference()
        results = []
        for i in range(trials):
            t = Trial("nonfinite", i)
            r = self.rng("nonfinite", i)
            out = self.folder(f"nonfinite-{i}")
            shutil.copytree(ref, out)
            last = os.path.join(out, "last.pt")
            ck = torch.load(last, weights_only=True)
            key = r.choice(sorted(k for k in ck["model"] if k.endswith(("running_mean", "running_var"))))
            value = r.choice([math.nan, math.inf, -math.inf])
            ck["model"][key].view(-1)[r.randrange(ck["model"][key].numel())] = value
            ck["checksum"] = checksum(ck)  # a valid checksum: only the finiteness check can refuse it
            atomic_save(ck, last)
            t.notes["tensor"] = f"{key} = {value}"
            self._refused_or_identical(t, last, os.path.join(ref, "last.pt"), out, names=(key,))
            results.append(t)
            self.say(t)
        return results

    def run_diverge(self, trials: int) -> list[Trial]:
        from resnetlab.weights import load_checkpoint
        results = []
        for i in range(trials):
            t = Trial("diverge", i)
            milestone = self.rng("diverge", i).choice([10, 20, 30])
            out = self.folder(f"diverge-{i}")
            p = self.run(["train", *TINY, "--iterations", "40", "--checkpoint-every", "10", "--log-every", "5",
                          "--eval-every", "1000", "--lr", "0.05", "--milestones", str(milestone), "--gamma", "1e30",
                          "--out", out])
            last = os.path.join(out, "last.pt")
            t.notes["milestone"] = milestone
            if p.rc != 2:
                t.problems.append(f"exit {p.rc}, not 2: {p.stderr.strip()[-300:]}")
            why = one_line_error(p.stderr, last, "diverged")
            if why:
                t.problems.append(why)
            try:
                if load_checkpoint(last)["step"] != milestone:  # load_checkpoint refuses non-finite weights
                    t.lost.append(f"last.pt is not the step-{milestone} checkpoint")
            except Exception as e:
                t.lost.append(f"last.pt unusable: {e}")
            if os.path.exists(os.path.join(out, "final.json")) or litter(out):
                t.problems.append("final.json or temporary files left")
            results.append(t)
            self.say(t)
        return results

    # --- 6. two writers

    def run_writers(self, trials: int) -> list[Trial]:
        ref, _ = self.reference()
        results = []
        for i in range(trials):
            t = Trial("writers", i)
            out = self.folder(f"writers-{i}")
            a, b = self.launch(self.train_flags(out)), self.launch(self.train_flags(out))
            a.wait(), b.wait()
            done = [p for p in (a, b) if p.rc == 0]
            refused = [p for p in (a, b) if p.rc != 0]
            if len(done) != 1:
                t.problems.append(f"exits {a.rc} and {b.rc}: not exactly one run proceeded")
            else:
                t.notes["winner"] = "first" if done[0] is a else "second"
                why = one_line_error(refused[0].stderr, out, f"(pid {done[0].pid})")
                t.notes["error"] = refused[0].stderr.strip()
                if refused[0].rc != 2 or why:
                    t.problems.append(why or f"the refused run exited {refused[0].rc}")
                t.lost += compare_runs(ref, out)
            results.append(t)
            self.say(t)
        return results

    # --- 7. archives

    def _cifar_members(self, r: random.Random, n: int = 20) -> dict[str, bytes]:
        import numpy as np
        g = np.random.default_rng(r.randrange(2 ** 32))
        members = {"batches.meta": pickle.dumps({"label_names": [f"class{c}" for c in range(10)],
                                                 "num_cases_per_batch": n}, protocol=2)}
        for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
            members[name] = pickle.dumps({"data": g.integers(0, 256, (n, 3072), dtype=np.uint8),
                                          "labels": g.integers(0, 10, n).tolist()}, protocol=2)
        return members

    @staticmethod
    def _write_tar(path: str, entries: list) -> None:
        """``entries``: (name, bytes) files, (name, int) files of that many zero bytes, (name, "->", target)
        symlinks, (name, "=>", target) hard links."""
        class Zeros:
            def __init__(self, n):
                self.left = n

            def read(self, n=-1):
                n = self.left if n < 0 else min(n, self.left)
                self.left -= n
                return bytes(n)

        with tarfile.open(path, "w:gz", compresslevel=1) as tar:
            for entry in entries:
                info = tarfile.TarInfo(entry[0])
                if len(entry) == 3:
                    info.type = tarfile.SYMTYPE if entry[1] == "->" else tarfile.LNKTYPE
                    info.linkname = entry[2]
                    tar.addfile(info)
                elif isinstance(entry[1], int):
                    info.size = entry[1]
                    tar.addfile(info, Zeros(entry[1]))
                else:
                    info.size = len(entry[1])
                    tar.addfile(info, io.BytesIO(entry[1]))

    def run_archives(self, trials: int, kinds=("tar-member", "tar-total", "tar-duplicate", "tar-escape",
                                                   "tar-valid")) -> list[Trial]:
        import resnetlab.datasets as datasets
        results = []
        for kind in kinds:
            for i in range(trials):
                t = Trial(kind, i)
                r = self.rng(kind, i)
                place = self.folder(f"{kind}-{i}")
                os.makedirs(place)
                archive = os.path.join(place, "cifar-10-python.tar.gz")
                members = self._cifar_members(r)
                names = list(members)
                r.shuffle(names)
                entries = [(f"cifar-10-batches-py/{n}", members[n]) for n in names]
                limits, readers, outside = {}, ("load", "extract"), None
                if kind == "tar-member":
                    limit = self.archive_limit or datasets.MAX_MEMBER_BYTES
                    if self.archive_limit:
                        limits["MAX_MEMBER_BYTES"] = limit
                    at = r.randrange(len(entries))
                    entries[at] = (entries[at][0], limit + r.randint(1, 4096))
                    t.notes["member"] = f"{entries[at][0]}: {entries[at][1]:,} zero bytes, limit {limit:,}"
                elif kind == "tar-total":
                    total = sum(len(b) for b in members.values())
                    limits["MAX_ARCHIVE_BYTES"] = total - r.randint(1, min(len(b) for b in members.values()))
                    t.notes["member"] = f"{total:,} bytes in all, limit {limits['MAX_ARCHIVE_BYTES']:,}"
                elif kind == "tar-duplicate":
                    at = r.randrange(len(entries))
                    again = (entries[at][0], self._cifar_members(r)[entries[at][0].split("/")[-1]])
                    entries.insert(r.randint(at + 1, len(entries)), again)
                    t.notes["member"] = f"{entries[at][0]} twice"
                elif kind == "tar-escape":
                    readers = ("extract",)
                    outside = os.path.join(place, f"escaped-{i}")
                    how = ("dotdot", "absolute", "symlink", "hardlink")[i % 4]
                    bad = {"dotdot": ("cifar-10-batches-py/../../escaped", b"x"),
                           "absolute": (outside, b"x"),
                           "symlink": ("cifar-10-batches-py/escape", "->", outside),
                           "hardlink": ("cifar-10-batches-py/escape", "=>", outside)}[how]
                    entries.insert(r.randint(0, len(entries)), bad)
                    if how == "dotdot":
                        outside = os.path.join(place, "escaped")
                    t.notes["member"] = f"{how}: {bad[0]}"
                self._write_tar(archive, entries)
                self._check_archive(t, archive, place, readers, limits, outside, members)
                results.append(t)
                self.say(t)
        return results

    def _check_archive(self, t, archive, place, readers, limits, outside, members) -> None:
        import numpy as np
        valid = t.row == "tar-valid"
        cache = os.path.join(place, "cache")
        os.makedirs(cache)
        for reader in readers:
            fault = {"limits": limits} if limits else None
            if reader == "load":
                run = os.path.join(place, "run")
                p = self.run(["train", "--model", "resnet8", "--width", "4", "--data", "cifar10", "--data-dir", archive,
                              "--batch-size", "8", "--iterations", "1", "--precision", "fp32", "--threads", "1",
                              "--quiet", "--out", run], fault)
                created = os.path.exists(run) and not valid
            else:
                copy = os.path.join(cache, "cifar-10-python.tar.gz")
                shutil.copy(archive, copy)
                with open(copy, "rb") as fh:
                    md5 = hashlib.md5(fh.read()).hexdigest()
                p = self.run(["_extract", copy, cache, md5], fault)
                created = os.path.exists(os.path.join(cache, "cifar-10-batches-py")) and not valid
            if valid:
                if p.rc != 0:
                    t.problems.append(f"{reader}: a valid archive was refused: {p.stderr.strip()[-300:]}")
                continue
            t.notes.setdefault("errors", []).append(p.stderr.strip())
            if p.rc <= 0:
                t.problems.append(f"{reader}: exit {p.rc}, not a refusal")
            named = archive if reader == "load" else os.path.join(cache, "cifar-10-python.tar.gz")
            why = one_line_error(p.stderr, named)
            if why:
                t.problems.append(f"{reader}: {why}")
            if created:
                t.lost.append(f"{reader}: something was unpacked or a run folder created")
        if litter(cache):
            t.problems.append(f"temporary folders left: {litter(cache)}")
        if outside is not None and os.path.lexists(outside):
            t.lost.append(f"a member was written outside the cache: {outside}")
        if valid:  # what was read must be what was written
            from resnetlab.datasets import load_dataset
            want = np.concatenate([pickle.loads(members[f"data_batch_{k}"])["data"] for k in range(1, 6)])
            for src in (archive, os.path.join(cache, "cifar-10-batches-py")):
                got = load_dataset("cifar10", src)["train"].x.reshape(len(want), -1).numpy()
                if not np.array_equal(got, want):
                    t.lost.append(f"{src}: the pixels read differ from those written")


# ----------------------------------------------------------------------------------------------------------
# The table, the doc, the command line
# ----------------------------------------------------------------------------------------------------------

def summarize(results: list[Trial]) -> list[tuple]:
    rows = []
    for key, (label, checked) in ROWS.items():
        mine = [t for t in results if t.row == key]
        if mine:
            rows.append((label, len(mine), sum(t.survived for t in mine), sum(bool(t.lost) for t in mine), checked))
    return rows


def table(results: list[Trial], markdown: bool = True) -> str:
    from resnetlab.io import format_table
    return format_table(["fault class", "trials", "survived", "data lost", "what is checked"], summarize(results),
                        right=(1, 2, 3), markdown=markdown)


def details(results: list[Trial]) -> list[str]:
    """Facts about where the faults landed, for the doc."""
    lines = []
    landed = [s for t in results if t.row == "sigkill" for s in t.notes.get("landed", [])]
    attempts = sum(t.notes.get("attempts", 0) for t in results if t.row == "sigkill")
    if attempts:
        lines.append(f"SIGKILL trials: {len(landed)} of {attempts} kills landed while the process ran "
                     f"({landed.count('start')} before the first checkpoint existed, {landed.count('between')} "
                     f"with a checkpoint on disk and none being written, {landed.count('write')} while a "
                     f"checkpoint's temporary file existed); the others came after the process had finished.")
    for row in ("kill-write", "kill-fsync", "kill-rename", "kill-renamed"):
        mine = [t for t in results if t.row == row]
        if mine:
            lines.append(f"`{row}`: occurrences {', '.join(t.notes['occurrence'] for t in mine)}; temporary files "
                         f"found right after the kill in {sum(t.notes['litter'] > 0 for t in mine)} of {len(mine)}.")
    for row in ("enospc", "erofs", "efbig", "eacces"):
        mine = [t for t in results if t.row == row]
        if mine:
            lines.append(f"`{row}`: {'; '.join(dict.fromkeys(t.notes.get('fault', '') for t in mine))}. Example error: "
                         f"`{_redact(next((t.notes['error'] for t in mine if t.notes.get('error')), ''))}`")
    for row in ("out-file", "out-under-file", "nonfinite", "diverge", "writers"):
        example = next((t.notes["error"] for t in results if t.row == row and t.notes.get("error")), None)
        if example:
            lines.append(f"`{row}` example error: `{_redact(example.splitlines()[-1])}`")
    for row in ("corrupt-flip", "corrupt-truncate"):
        mine = [t for t in results if t.row == row]
        if mine:
            reads = 2 * len(mine)
            refused = sum(t.notes.get("refused", 0) for t in mine)
            lines.append(f"`{row}`: {refused} of {reads} reads refused, {reads - refused} read contents identical "
                         f"to the original, 0 loaded altered contents" if not any(t.lost for t in mine) else
                         f"`{row}`: {refused} of {reads} reads refused; ALTERED CONTENTS LOADED in "
                         f"{sum(bool(t.lost) for t in mine)} trials")
    for t in results:
        for p in t.problems + t.lost:
            lines.append(f"**{t.row} #{t.index}: {_redact(p)}**")
    return lines


_WORK = [""]


def _redact(text: str) -> str:
    """Error lines with the temporary work folder shown as WORK."""
    return text.replace(_WORK[0], "WORK") if _WORK[0] else text


def machine() -> str:
    import torch
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    vm = False
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as fh:
            vm = any(ln.startswith("flags") and " hypervisor" in ln for ln in fh)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = f", load average {os.getloadavg()[0]:.1f} at the start" if hasattr(os, "getloadavg") else ""
    return (f"{platform.system()} {platform.machine()}{' VM' if vm else ''}, {cpu or 'unknown CPU'}, {cores} cores"
            f"{load}, Python {platform.python_version()}, torch {torch.__version__}")


DOC = """# Reliability: what a crash, a full disk or a damaged file leaves behind

`benchmarks/faults.py` breaks tiny training runs on purpose (ResNet-8, width 4, synthetic data, one
thread) and checks each time that the run ends in its documented safe state. **Survived**: the trial ended
in that state (a killed run resumed to completion; a refused operation exited non-zero with one error line
naming the file and no traceback; nothing temporary left behind). **Data lost**: a checkpoint or logged
history was lost or changed, or a result was silently wrong (a resumed run that differs from the
uninterrupted one by a single bit, a damaged checkpoint that was used). Data lost must be zero.

{table}

Run of {date}, {wall} wall time, seed {seed}, `{command}`; {machine}.

## How the faults are made

Every trial runs `resnetlab` in a child process of the harness (forked from it after torch is imported,
which saves about five seconds a process; `--spawn` starts a fresh interpreter instead). The child sets up
one fault, then calls `resnetlab.cli.main` with the command line; the package has no fault hooks.

* **Random SIGKILL**: the child is killed after a delay drawn from the trial's seed, uniform between
  half the start-up time of an uninterrupted run (start-up ends when config.json is written, just before
  the first step) and its end; the harness then does what a user does, `train --out F --resume`
  (or the original command when no last.pt exists yet), and kills each resumed process too with
  probability 1/2, up to three kills a trial. The seed fixes the delays, not the exact step a kill lands
  on, which depends on the machine's load.
* **Kills inside the atomic write**: the child wraps `open` (the temporary file's `write()` calls),
  `os.fsync` and `os.replace`, and sends itself SIGKILL at the n-th occurrence on a checkpoint's
  temporary file, n drawn from the seed among the occurrences a counting run of the same config saw
  (`rename`: just before the `os.replace`; `renamed`: right after it, before the folder's fsync). The
  counting run itself must be identical to the reference, so the wrappers change nothing until they fire.
* **Disk faults**: a run stopped right after its step-20 checkpoint is resumed under the fault. ENOSPC is
  simulated: writes into the run folder succeed until a seeded byte budget (log-uniform up to what the
  resume writes, so the lock, the logs and config.json are hit, not only checkpoints) is spent; the failing write
  stores what fits and raises `OSError(ENOSPC)` without a file name, as a real failed `write()` does.
  EROFS is simulated: after a seeded number of opens for writing in the run folder, every open for
  writing, rename, unlink, chmod and mkdir there fails with `EROFS`. EFBIG is real: `RLIMIT_FSIZE` at a
  seeded size, `SIGXFSZ` ignored. EACCES is real: the harness runs as root, and root ignores permission
  bits, so the child drops to uid/gid 65534 (nobody) on the root-owned folder; run as another user, the
  harness uses `chmod 555` instead. `--out` as a regular file, and below one (ENOTDIR), are real.
  After each fault, a plain `--resume` with the fault gone must end identical to the same resume without
  any fault.
* **Corruption**: 1-4 seeded bytes of a finished last.pt XORed with seeded values, or the file cut at a
  seeded length; `eval --weights` and `train --resume` each read it. A read that succeeds counts as
  survived only if the contents it read equal the original's entry for entry.
* **Non-finite state**: a seeded BN running mean or variance element set to NaN, +inf or -inf, saved with
  the package's own `checksum` and `atomic_save`, so only the finiteness check can refuse it.
* **Two writers**: two `train --out F` processes started together.
* **Archives**: CIFAR-10 layout archives with random members (20 images each), read by the in-memory
  reader (`train --data cifar10 --data-dir X.tar.gz`) and by the extraction of the download path
  (`download_cifar` with the archive's MD5). The total limit is lowered in the child
  (`resnetlab.datasets.MAX_ARCHIVE_BYTES`, read when each archive is checked) so that the archive stays
  small; the oversized member is {member_limit}.

What "identical" compares: every `.pt` in the run folder entry by entry (weights, BN statistics,
optimizer momentum buffers, every RNG state, the step, accumulators, schedule, best validation error,
config), tensors bit for bit; metrics.jsonl and metrics.csv event by event; final.json; config.json; and
the folder's file list (so no `.tmp-*` file or stray output survives). Left out, because they measure
time rather than training: `img_per_s` and `time` of the metrics events, `wall_time_s` of final.json,
`elapsed` of a checkpoint (and so its `checksum`, which covers it), and the config's `out` and `resume`
(the folder's name, and whether it was resumed, differ by construction).

Not covered: power loss or a kernel crash (the harness kills processes; it cannot check that an `fsync`
reached the disk), network file systems, and torn writes inside a single `write()` system call.

## What it found

The first runs of the harness failed four checks. Each was fixed in the package, with a regression test in
`tests/test_faults.py`:

* A full disk or a file-size limit during a checkpoint save ended `resnetlab train` with a traceback:
  torch.save's zip writer replaced the `OSError` of the failed `write()` with its own `RuntimeError`.
  `io.atomic_save` now raises the `OSError`.
* A failed `write()` names no file (the error says only "No space left on device"), so the one error line
  did not say which file: atomic writes, the metrics appends and the lock file now add their path.
* A metrics.jsonl append cut short by a full disk left a partial last line, and every later `--resume`
  failed on it with a bare JSON error. A last line without its newline is now dropped: it is always an
  event after the last checkpoint, which the resume drops anyway.
* `eval --weights` on a truncated checkpoint asked for `--data` ("the checkpoint does not record it")
  instead of saying that the file is unreadable.

Still as it was: `--out` naming a regular file is refused with the error of `mkdir`, "File exists",
naming the file.

## Details of this run

{details}

## Rerun

```bash
python benchmarks/faults.py                          # all classes, the trial counts below; writes this file
python benchmarks/faults.py --seed 7 --sigkill 50    # other draws, more random kills
python benchmarks/faults.py --quick --doc ''         # one trial a class, print the table only
```

Options: `--sigkill N` (random kills), `--kill-points N` (per point of the atomic write),
`--disk N` (per disk fault), `--corrupt N` (byte flips; a quarter as many truncations),
`--nonfinite N`, `--diverge N`, `--writers N`, `--archives N` (per archive kind; the escaping member
cycles through `..`, absolute, symlink and hard link), `--seed S`, `--iterations N` (length
of the killed runs), `--spawn`, `--work DIR --keep` (keep the run folders), `--json FILE` (every trial).
The exit status is 1 if any trial did not survive or lost data. CI runs a reduced form:
`pytest tests/test_faults.py`. This run's counts:

    {counts}
"""


def write_doc(path: str, results: list[Trial], meta: dict) -> None:
    from resnetlab.io import write_text
    lines = details(results)
    write_text(path, DOC.format(table=table(results), details="\n".join(f"* {ln}" for ln in lines) or "* nothing",
                                **meta))


def prepare() -> None:
    """Make this process a good parent for forked trials: one thread (a child must not inherit a thread
    pool), and the imports every child needs done once here."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    torch.set_num_threads(1)
    import resnetlab.cli, resnetlab.train, resnetlab.evaluate_cli, resnetlab.datasets  # noqa: E401,F401
    torch.optim.SGD([torch.zeros(1, requires_grad=True)])  # its first use imports torch._dynamo (~3 s a child)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:  # a trial's fresh interpreter (--spawn)
        fault = json.loads(argv[1])
        return child_main(argv[3:], fault)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sigkill", type=int, default=20, help="trials of SIGKILL at a random moment")
    ap.add_argument("--kill-points", type=int, default=3, help="trials per point of a checkpoint's write")
    ap.add_argument("--disk", type=int, default=4, help="trials per disk fault")
    ap.add_argument("--corrupt", type=int, default=12, help="byte-flip trials (and a quarter as many truncations)")
    ap.add_argument("--nonfinite", type=int, default=3)
    ap.add_argument("--writers", type=int, default=3)
    ap.add_argument("--diverge", type=int, default=3, help="trials of a diverging run")
    ap.add_argument("--archives", type=int, default=4, help="trials per archive kind")
    ap.add_argument("--iterations", type=int, default=50, help="length of the runs that are killed")
    ap.add_argument("--quick", action="store_true", help="one trial a class, 30 iterations, a 1 MiB member limit")
    ap.add_argument("--spawn", action="store_true", help="a fresh interpreter per process instead of fork")
    ap.add_argument("--doc", default=os.path.join(ROOT, "docs", "reliability.md"), help="'' for none")
    ap.add_argument("--json", default="", help="write every trial here")
    ap.add_argument("--work", default="", help="folder for the runs (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args(argv)
    if args.quick:
        args.sigkill = args.kill_points = args.disk = args.corrupt = args.nonfinite = args.diverge = args.writers = 1
        args.archives, args.iterations = 1, 30
    prepare()
    work = args.work or tempfile.mkdtemp(prefix="resnetlab-faults-")
    _WORK[0] = work
    os.makedirs(work, exist_ok=True)
    tty = sys.stderr.isatty()
    from tqdm import tqdm
    total = (args.sigkill + 4 * args.kill_points + 6 * args.disk + args.corrupt + max(1, args.corrupt // 4)
             + args.nonfinite + args.diverge + args.writers + 5 * args.archives)
    bar = tqdm(total=total, desc="fault trials", unit="trial", file=sys.stderr, disable=not tty)

    def say(t: Trial):
        bar.update(1)
        state = "ok" if t.survived else ("DATA LOST" if t.lost else "FAILED")
        msg = f"{t.row} #{t.index}: {state}" + "".join(f"; {p}" for p in (t.problems + t.lost)[:3])
        (bar.write if tty else print)(msg, **({} if tty else {"file": sys.stderr, "flush": True}))

    h = Harness(work, seed=args.seed, iterations=args.iterations, spawn=args.spawn,
                archive_limit=2 ** 20 if args.quick else None, say=say)
    t0 = time.monotonic()
    results: list[Trial] = []
    try:
        results += h.run_sigkill(args.sigkill)
        results += h.run_kill_points(args.kill_points)
        results += h.run_disk(args.disk)
        results += h.run_corrupt(args.corrupt, max(1, args.corrupt // 4) if args.corrupt else 0)
        results += h.run_nonfinite(args.nonfinite)
        results += h.run_diverge(args.diverge)
        results += h.run_writers(args.writers)
        results += h.run_archives(args.archives)
    finally:
        bar.close()
    wall = time.monotonic() - t0
    print(table(results, markdown=False))
    for line in details(results):
        print("  " + line)
    print(f"{len(results)} trials in {wall:.0f} s")
    counts = (f"--seed {args.seed} --sigkill {args.sigkill} --kill-points {args.kill_points} --disk {args.disk} "
              f"--corrupt {args.corrupt} --nonfinite {args.nonfinite} --diverge {args.diverge} "
              f"--writers {args.writers} "
              f"--archives {args.archives} --iterations {args.iterations}" + (" --spawn" if args.spawn else ""))
    meta = {"date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"), "machine": machine(),
            "wall": f"{wall / 60:.0f} min {wall % 60:.0f} s", "seed": args.seed,
            "command": " ".join(["python benchmarks/faults.py", *argv]), "counts": counts,
            "member_limit": "at the package's own limit (`MAX_MEMBER_BYTES`, 512 MiB: 512 MiB of zeros "
                            "gzip to about 2 MB)" if not args.quick else "at a limit lowered to 1 MiB in the child"}
    if args.doc:
        write_doc(args.doc, results, meta)
        print(f"wrote {args.doc}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([{**t.__dict__, "survived": t.survived} for t in results], fh, indent=1, default=str)
    if not args.keep and not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(t.survived for t in results) else 1


if __name__ == "__main__":
    sys.exit(main())
