"""Faults injected into the package: the harness of ``benchmarks/faults.py`` in a reduced form (one trial
per fault class), then the failures it found, pinned down directly.

Every harness trial really kills, starves or corrupts a child process running ``resnetlab.cli.main`` and
checks what it left against the documented safe state; here each must survive with no data lost.
"""
import importlib.util
import os
import shutil
import sys
import tempfile

import pytest

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "faults.py")
_spec = importlib.util.spec_from_file_location("resnetlab_faults", _PATH)
faults = sys.modules["resnetlab_faults"] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(faults)


@pytest.fixture(scope="module")
def harness(one_thread):
    faults.prepare()
    work = tempfile.mkdtemp(prefix="resnetlab-faults-test-")  # not under pytest's 0700 folder: uid 65534 runs here
    yield faults.Harness(work, seed=0, iterations=20, archive_limit=2 ** 20)
    shutil.rmtree(work, ignore_errors=True)


def survived(trials, rows, n=1):
    assert sorted({t.row for t in trials}) == sorted(rows)
    assert len(trials) == n * len(rows)
    assert [(t.row, t.index, t.problems, t.lost) for t in trials if not t.survived] == []
    return {t.row: t for t in trials}


def test_random_sigkill_resumes_bit_identical(harness):
    (t,) = harness.run_sigkill(1, share=0.6)  # the first kill lands while the run is alive
    assert t.survived, (t.problems, t.lost)
    assert t.notes["landed"], "no kill landed while the run was alive"


def test_kills_inside_the_checkpoint_write(harness):
    """Two of the four points (the full harness runs all): inside a write(), and right after the rename."""
    by_row = survived(harness.run_kill_points(1, points=("write", "renamed")), ["kill-write", "kill-renamed"])
    # Before the rename the temporary file is there (and the resume removes it); after it, it is gone.
    assert by_row["kill-write"].notes["litter"] == 1 and by_row["kill-renamed"].notes["litter"] == 0


def test_disk_faults_refused_with_the_path(harness):
    kinds = ["enospc", "erofs", "efbig", "eacces", "out-under-file"]  # the full harness also runs out-file
    by_row = survived(harness.run_disk(1, kinds=kinds), kinds)
    assert "No space left on device" in by_row["enospc"].notes["error"]
    assert "File too large" in by_row["efbig"].notes["error"]
    assert "Permission denied" in by_row["eacces"].notes["error"]
    assert "Not a directory" in by_row["out-under-file"].notes["error"]


def test_damaged_and_nonfinite_checkpoints_refused(harness):
    trials = harness.run_corrupt(1, 1) + harness.run_nonfinite(1) + harness.run_diverge(1)
    by_row = survived(trials, ["corrupt-flip", "corrupt-truncate", "nonfinite", "diverge"])
    assert by_row["corrupt-truncate"].notes["refused"] == 2  # a truncated file can never be read
    assert by_row["nonfinite"].notes["refused"] == 2


def test_second_writer_refused(harness):
    (t,) = harness.run_writers(1)
    assert t.survived, (t.problems, t.lost)
    assert "in use by another run" in t.notes["error"]


def test_hostile_archives_refused(harness):
    survived(harness.run_archives(1), ["tar-member", "tar-total", "tar-duplicate", "tar-escape", "tar-valid"])


def test_table_counts():
    trials = [faults.Trial("sigkill", 0), faults.Trial("sigkill", 1, lost=["last.pt: tensor bits differ"]),
              faults.Trial("enospc", 0, problems=["stderr holds a traceback"])]
    rows = {r[0]: r[1:4] for r in faults.summarize(trials)}
    assert rows[faults.ROWS["sigkill"][0]] == (2, 1, 1)
    assert rows[faults.ROWS["enospc"][0]] == (1, 0, 0)
    assert "| SIGKILL at a random moment of `train` |" in faults.table(trials)


# ----------------------------------------------------------------------------------------------------------
# Regressions the harness found in the package, pinned down directly


def _raised_under_fsize_limit(limit, fn):
    """Run ``fn()`` in a forked child whose files may not grow past ``limit`` bytes (a real EFBIG, as a full
    disk gives ENOSPC); returns ``(type name, filename)`` of what it raised, or ``None``."""
    import json
    import resource
    import signal
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
            try:
                fn()
                result = None
            except BaseException as e:
                result = [type(e).__name__, getattr(e, "filename", None)]
            os.write(w, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as fh:
        result = json.loads(fh.read())
    os.waitpid(pid, 0)
    return None if result is None else tuple(result)


def test_a_failed_checkpoint_write_is_an_oserror_naming_the_checkpoint(tmp_path, one_thread):
    """torch.save's zip writer turned a failed write() into its own RuntimeError (a traceback on the command
    line), and a failed write() names no file: atomic_save raises the OSError, naming the checkpoint."""
    import torch
    from resnetlab.io import atomic_save
    path = str(tmp_path / "last.pt")
    with open(path, "wb") as fh:
        fh.write(b"the previous checkpoint")
    assert _raised_under_fsize_limit(20_000, lambda: atomic_save({"w": torch.zeros(50_000)}, path)) == \
        ("OSError", path)
    assert open(path, "rb").read() == b"the previous checkpoint" and os.listdir(tmp_path) == ["last.pt"]


def test_failed_log_and_lock_writes_name_their_file(tmp_path):
    from resnetlab.io import FolderLock
    from resnetlab.train import MetricsLog
    log = MetricsLog(str(tmp_path))
    log.write({"step": 1, "kind": "train", "loss": 1.0})
    size = os.path.getsize(log.jsonl)
    assert _raised_under_fsize_limit(size, lambda: log.write({"step": 2, "kind": "train", "loss": 0.5})) == \
        ("OSError", log.jsonl)
    assert _raised_under_fsize_limit(0, lambda: FolderLock(str(tmp_path / "run"))) == \
        ("OSError", str(tmp_path / "run" / ".lock"))


def test_a_log_line_cut_short_is_dropped_not_fatal(tmp_path):
    """A full disk can cut the last append of metrics.jsonl short; reading the log (and so resuming) used to
    fail on it with a bare JSON error."""
    from resnetlab.train import MetricsLog
    log = MetricsLog(str(tmp_path))
    for step in (5, 10):
        log.write({"step": step, "kind": "train", "loss": 1.0 / step})
    with open(log.jsonl, "a") as fh:
        fh.write('{"step": 15, "kind": "tr')
    assert [e["step"] for e in log.events()] == [5, 10]
    log.keep_until(10)
    assert open(log.jsonl).read().endswith("}\n") and [e["step"] for e in log.events()] == [5, 10]


def test_eval_names_a_truncated_checkpoint_as_unreadable(tmp_path, one_thread):
    """It used to answer "give the dataset: --data ... (the checkpoint does not record it)"."""
    import contextlib
    import io
    from resnetlab import cli
    from resnetlab.io import atomic_save
    from resnetlab.models import create_model
    from resnetlab.weights import make_checkpoint
    path = str(tmp_path / "last.pt")
    atomic_save(make_checkpoint(create_model("resnet8", width=4, seed=0), data={"name": "synthetic"}), path)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(["eval", "--weights", path, "--quiet"])
    assert code == 2 and f"{path} is not a readable" in err.getvalue(), err.getvalue()
