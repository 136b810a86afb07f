"""The one I/O layer: atomic file writes, JSON, the cache folder, device resolution, text tables, progress.

Every file the package writes goes through :func:`atomic_path`: a temporary file in the same folder,
fsynced and renamed over its target, so a crash (even SIGKILL) leaves the old file or the new one, never a
torn one. New files get the permissions the umask allows, like any ``open()``.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one writer per folder is then the user's to keep
    fcntl = None
from typing import Any, Iterator

import torch
from tqdm.auto import tqdm

DEVICES = ("auto", "cpu", "cuda", "cuda:N")
"""What ``--device`` accepts: ``auto`` picks CUDA when available, else the CPU."""
PRECISIONS = ("auto", "fp32", "bf16")
"""What ``--precision`` accepts: ``auto`` decides by the hardware (see :func:`resnetlab.runtime.resolve_precision`)."""


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """``with atomic_path(path) as tmp: write(tmp)``: for writers that take a file name (matplotlib, numpy,
    safetensors). ``tmp`` is in the same folder (created if needed); it is fsynced and renamed over
    ``path`` when the block ends, and removed if the block raises."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.path.basename(path)}-", suffix=os.path.splitext(path)[1], dir=folder)
    os.close(fd)
    try:
        mask = os.umask(0)  # os.umask is the only way to read the umask: set it and put it back
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp creates 0600; honour the umask as open() would
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename in (None, tmp):
            e.filename = path  # a failed write() (disk full, file too large) names no file, or the temporary one
        raise
    with contextlib.suppress(OSError):  # make the rename durable; not every file system lets a folder be opened
        _fsync(folder)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", **open_kwargs) -> Iterator[Any]:
    """``with atomic_write(path, "w") as fh: ...``: ``path`` appears complete or not at all."""
    with atomic_path(path) as tmp, open(tmp, mode, **open_kwargs) as fh:
        yield fh


@contextlib.contextmanager
def naming(path: str | os.PathLike) -> Iterator[None]:
    """``with naming(path): write...``: an ``OSError`` raised inside names ``path`` if the OS named no file
    (a failed ``write()``, e.g. disk full, says only "No space left on device")."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            e.filename = os.fspath(path)
        raise


def atomic_save(obj, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` atomically."""
    with atomic_write(path, "wb") as fh:
        try:
            torch.save(obj, fh)
        except RuntimeError as e:  # torch's zip writer hides a failed write (disk full) behind its own error
            if isinstance(e.__context__, OSError):
                raise e.__context__ from None
            raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def write_json(path: str | os.PathLike, obj, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON (with a final newline) atomically."""
    write_text(path, json.dumps(obj, indent=indent) + "\n")


def read_json(path: str | os.PathLike):
    """The JSON value in ``path``."""
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


class FolderInUse(ValueError):
    """Raised by :class:`FolderLock` when another process holds the folder."""


class FolderLock(contextlib.AbstractContextManager):
    """One writer per run folder: an exclusive ``flock`` on ``FOLDER/.lock`` (or ``FOLDER/name``), which holds the
    owner's pid. The lock ends with the process (a kill leaves no stale one) or sooner at :meth:`release`."""

    def __init__(self, folder: str | os.PathLike, name: str = ".lock"):
        self.path = os.path.join(os.fspath(folder), name)
        os.makedirs(os.fspath(folder), exist_ok=True)
        self.fh = open(self.path, "a+")
        if fcntl is None:
            return
        try:
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            for _ in range(50):  # the holder writes its pid just after it takes the lock: wait up to 1 s for it
                self.fh.seek(0)
                if holder := self.fh.read().strip():
                    break
                time.sleep(0.02)
            self.fh.close()
            raise FolderInUse(f"{os.fspath(folder)} is in use by another run (pid {holder or 'unknown'}); wait "
                              f"for it to finish or choose another --out") from None
        with naming(self.path):
            self.fh.seek(0)
            self.fh.truncate()
            self.fh.write(f"{os.getpid()}\n")
            self.fh.flush()

    def release(self) -> None:
        self.fh.close()  # a second close is a no-op

    def __exit__(self, *exc) -> None:
        self.release()


def remove_litter(folder: str | os.PathLike) -> None:
    """Delete the temporary files an interrupted :func:`atomic_write` left in ``folder`` (a kill between the
    write and the rename); call it only while holding the folder's lock."""
    for name in os.listdir(folder):
        if name.startswith(".tmp-"):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, name))


def cache_dir() -> str:
    """``$RESNETLAB_CACHE`` or ``~/.cache/resnetlab``: downloads and compiled kernels."""
    return os.environ.get("RESNETLAB_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "resnetlab")


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/``None``: CUDA when available, else the CPU; otherwise ``torch.device(name)``, refused
    with a ``ValueError`` if that device is not usable here."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"bad device {name!r} ({e}); valid: {', '.join(DEVICES)}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r} is not supported; valid: {', '.join(DEVICES)}")
    return device


def format_duration(seconds: float) -> str:
    """``"5h30m"``, ``"2m05s"`` or ``"41s"``."""
    s = int(round(max(seconds, 0)))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def format_table(headers, rows, right=(), markdown: bool = False) -> str:
    """An aligned text table (or a Markdown table); ``right`` holds the indices of right-aligned columns."""
    cells = [list(map(str, headers))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r):
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        return ("| " + " | ".join(parts) + " |") if markdown else "  ".join(parts).rstrip()

    if markdown:
        rule = "|" + "|".join("-" * (w + 1) + ":" if i in right else "-" * (w + 2) for i, w in enumerate(widths)) + "|"
    else:
        rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *map(line, cells[1:])])


class _Lines:
    """A stderr stand-in for tqdm when stderr is not a terminal: each redraw becomes its own log line."""

    def write(self, s: str) -> None:
        s = s.replace("\r", "").strip()
        if s:
            print(s, file=sys.stderr, flush=True)

    def flush(self) -> None:
        sys.stderr.flush()


def progress(iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it",
             quiet: bool = False, **kwargs) -> tqdm:
    """A tqdm bar on stderr: redrawn in place on a terminal, otherwise a log line at the start, every 30 s and
    at the end (so that a log shows the work finished, not only its 0% line)."""
    tty = sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=quiet, file=sys.stderr if tty else _Lines(),
                mininterval=0.5 if tty else 30.0, dynamic_ncols=True, **kwargs)
