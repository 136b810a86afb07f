"""Faults injected into the package: failed writes, torn logs, damaged checkpoints.

(``benchmarks/faults.py`` runs the whole fault-injection harness; the tests below pin down what it found.)
"""
import os


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
