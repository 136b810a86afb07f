"""Data-parallel training on the CPU (gloo): synced batch norm computes batch norm of the whole batch, a
2-process ``torchrun`` with ``--sync-bn`` matches a 1-process run of the same global batch, and killing the
launcher stops its workers.
"""
import contextlib
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from resnetlab import create_model
from resnetlab.models import ModelConfig
from resnetlab.runtime import Dist, SyncBatchNorm2d, end_distributed, sync_batch_norm
from resnetlab.train import TrainConfig, train
from resnetlab.weights import load_checkpoint

SIZES = (3, 5)  # per-process batch sizes, uneven: the counts are summed across processes too
FLAGS = ["--model", "resnet8", "--width", "4", "--data", "synthetic", "--batch-size", "16", "--precision", "fp32",
         "--fused-bn", "off", "--threads", "1", "--log-every", "5", "--eval-every", "1000", "--quiet"]


def _batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(sum(SIZES), 4, 3, 3, generator=g) * 2 + 1.5
    return x, torch.randn(x.shape, generator=g)  # inputs, and the gradient of the loss w.r.t. the outputs


def _norms() -> nn.Module:
    torch.manual_seed(1)
    net = nn.Sequential(nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4, momentum=None))  # None: cumulative
    for p in net.parameters():
        nn.init.normal_(p)
    return net


def _steps(net: nn.Module, x: torch.Tensor, dy: torch.Tensor):
    """Two training-mode forwards and backwards (the running statistics move twice), then one in eval mode."""
    x = x.clone().requires_grad_()
    for _ in range(2):
        y = net(x)
        torch.autograd.backward(y, dy)
    return y.detach(), x.grad, net.eval()(x).detach()


def _worker(rank: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=len(SIZES))
    x, dy = _batch()
    part = slice(sum(SIZES[:rank]), sum(SIZES[:rank + 1]))
    net = sync_batch_norm(_norms())
    y, dx, y_eval = _steps(net, x[part], dy[part])
    grads = {}
    for name, p in net.named_parameters():  # the global batch's gradient: the sum of the processes' shares
        grads[name] = p.grad.clone()
        torch.distributed.all_reduce(grads[name])
    torch.save({"y": y, "dx": dx, "y_eval": y_eval, "grads": grads, "state": net.state_dict(),
                "types": [type(m).__name__ for m in net]}, os.path.join(out, f"{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_sync_batch_norm_is_batch_norm_of_the_whole_batch(tmp_path):
    mp.spawn(_worker, args=(f"file://{tmp_path}/store", str(tmp_path)), nprocs=len(SIZES))
    x, dy = _batch()
    ref = _norms()
    y, dx, y_eval = _steps(ref, x, dy)
    close = dict(rtol=1e-5, atol=1e-5)
    for rank in range(len(SIZES)):
        got = torch.load(tmp_path / f"{rank}.pt")
        assert got["types"] == ["SyncBatchNorm2d", "ReLU", "SyncBatchNorm2d"]
        part = slice(sum(SIZES[:rank]), sum(SIZES[:rank + 1]))
        torch.testing.assert_close(got["y"], y[part], **close)
        torch.testing.assert_close(got["dx"], dx[part], **close)
        torch.testing.assert_close(got["y_eval"], y_eval[part], **close)
        for name, p in ref.named_parameters():
            torch.testing.assert_close(got["grads"][name], p.grad, **close)
        assert got["state"].keys() == ref.state_dict().keys()  # the plain state_dict
        for key, value in ref.state_dict().items():  # running statistics and batch counters
            torch.testing.assert_close(got["state"][key], value, **close)
    # Without a process group it is BatchNorm2d itself.
    net = _norms()
    net[0].__class__ = SyncBatchNorm2d
    assert all(torch.equal(a, b) for a, b in zip(_steps(net, x, dy), _steps(_norms(), x, dy)))


def _torchrun(*args: str) -> subprocess.Popen:
    # PYTHONFAULTHANDLER: a worker sent SIGABRT prints every thread's Python stack (see _finish)
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "-m", "resnetlab", "train", *FLAGS, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"})


def _finish(launcher: subprocess.Popen, timeout: float) -> str:
    """The launcher's stderr once it has exited with 0. If it has not exited within ``timeout`` (one CI run
    hung here after rank 0 had printed its final metrics), the workers still running are made to print their
    Python stacks, and the test fails with them."""
    try:
        _, err = launcher.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        alive = {w: _state(w) for w in _children(launcher.pid)}
        launcher.send_signal(signal.SIGSTOP)  # it would stop the other workers when the first one aborts
        for w in alive:  # one at a time, so that their stacks do not interleave
            with contextlib.suppress(ProcessLookupError):
                os.kill(w, signal.SIGABRT)
            time.sleep(1)
        launcher.kill()
        out, err = launcher.communicate()
        pytest.fail(f"torchrun did not exit within {timeout:.0f} s; workers still there (pid: state): {alive}\n"
                    f"stdout: {out[-1000:]}\nstderr: {err[-8000:]}")
    assert launcher.returncode == 0, err
    return err


def _ending_worker(rank: int, init: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    busy_until = time.time() + (1.0 if rank == 0 else 0.0)
    time.sleep(max(0.0, busy_until - time.time()))  # rank 0 writing the last checkpoint and final.json
    end_distributed(Dist(rank, 2, rank, torch.device("cpu")))
    with open(os.path.join(out, f"{rank}.json"), "w") as fh:
        json.dump({"busy_until": busy_until, "ended": time.time(), "open": torch.distributed.is_initialized()}, fh)


def test_every_process_ends_training_together_and_closes_its_group(tmp_path):
    """The other ranks are through the loop while rank 0 still saves; one that exited tore its gloo group down
    under rank 0 and aborted ("terminate called without an active exception", twice in CI), and torchrun then
    killed rank 0 before final.json. end_distributed waits for rank 0, then closes the group."""
    mp.spawn(_ending_worker, args=(f"file://{tmp_path / 'rendezvous'}", str(tmp_path)), nprocs=2)
    ended = [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)]
    assert ended[1]["ended"] >= ended[0]["busy_until"]  # rank 1 waited for rank 0
    assert not ended[0]["open"] and not ended[1]["open"]

def _training_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    destroy, alive = torch.distributed.destroy_process_group, []

    def spy(*args, **kwargs):  # which DDP wrappers still exist when the group goes
        alive.append(sum(isinstance(o, nn.parallel.DistributedDataParallel) for o in gc.get_objects()))
        return destroy(*args, **kwargs)

    torch.distributed.destroy_process_group = spy
    train(TrainConfig(model=ModelConfig("resnet8", width=4), data="synthetic", batch_size=16, precision="fp32",
                      fused_bn="off", threads=1, iterations=4, log_every=2, eval_every=1000, quiet=True,
                      out=os.path.join(out, "run")))
    with open(os.path.join(out, f"{rank}.json"), "w") as fh:
        json.dump({"alive": alive}, fh)


def test_the_process_group_outlives_the_ddp_wrapper(tmp_path):
    """DDP's reducer freed last a gloo group while holding the GIL, and gloo's destructor waited for a worker
    thread that waited for the GIL: torchrun hung at the end of training (4 of 64 runs of a stress test, one CI
    run; gdb: Reducer::~Reducer -> ProcessGroupGloo::~ProcessGroupGloo -> thread join). train() now lets the
    wrapper go first, so the group's own destructor, which releases the GIL, frees it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_training_worker, args=(port, str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        assert json.loads((tmp_path / f"{rank}.json").read_text())["alive"] == [0]
    assert (tmp_path / "run" / "final.json").exists()


def test_two_processes_with_sync_bn_match_one_process_of_the_same_batch(tmp_path):
    runs = {name: _torchrun("--iterations", "10", "--out", str(tmp_path / name), *extra)
            for name, extra in (("synced", ["--sync-bn"]), ("local", []))}
    train(TrainConfig(model=ModelConfig("resnet8", width=4), data="synthetic", batch_size=16, precision="fp32",
                      fused_bn="off", threads=1, log_every=5, eval_every=1000, quiet=True, iterations=10,
                      out=str(tmp_path / "one")))
    for p in runs.values():
        _finish(p, timeout=180)
    one = load_checkpoint(str(tmp_path / "one" / "last.pt"))["model"]
    diff = {}
    for name in runs:
        ck = load_checkpoint(str(tmp_path / name / "last.pt"))
        assert ck["world_size"] == 2 and ck["model"].keys() == one.keys()
        create_model(ModelConfig("resnet8", width=4), num_classes=10).load_state_dict(ck["model"])  # strict
        with open(tmp_path / name / "config.json") as fh:
            config = json.load(fh)
        assert config["config"]["sync_bn"] == config["runtime"]["sync_bn"] == (name == "synced")
        diff[name] = max((ck["model"][k] - one[k]).abs().max().item() for k in one if one[k].is_floating_point())
    print(f"max |2 processes - 1 process| over weights and BN statistics: {diff}")
    synced = load_checkpoint(str(tmp_path / "synced" / "last.pt"))["model"]
    for k in one:  # weights, running statistics, batch counters
        torch.testing.assert_close(synced[k], one[k], rtol=1e-4, atol=1e-5)
    assert diff["local"] > 1e-3  # each process normalised with its own half of the batch


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            kids.append(int(entry))
    return kids


def _state(pid: int) -> str:
    """The process's state letter (R running, S sleeping, Z zombie, ...), "" once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def _running(pid: int) -> bool:
    """The process exists and is not a zombie waiting for its new parent to reap it."""
    return _state(pid) not in ("", "Z")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_killing_torchrun_stops_its_workers(tmp_path):
    out = tmp_path / "run"
    launcher = _torchrun("--iterations", "100000", "--checkpoint-every", "5", "--sync-bn", "--out", str(out))
    workers = []
    try:
        deadline = time.time() + 240
        while not (out / "last.pt").exists() and time.time() < deadline and launcher.poll() is None:
            time.sleep(0.1)
        assert (out / "last.pt").exists(), launcher.stderr.read() if launcher.poll() is not None else "no checkpoint"
        workers = _children(launcher.pid)
        assert len(workers) == 2
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        t0 = time.time()
        while any(_running(w) for w in workers) and time.time() < t0 + 30:
            time.sleep(0.1)
        print(f"workers gone {time.time() - t0:.1f} s after the launcher was killed")
        assert not any(_running(w) for w in workers)
        print(launcher.stderr.read()[-2000:])  # rank 0's "interrupted at step ..." when it stopped gracefully
        ck = load_checkpoint(str(out / "last.pt"))  # whole: its checksum holds
        assert ck["step"] >= 5 and ck["step"] % 5 == 0
    finally:
        for w in workers:
            if _running(w):
                os.kill(w, signal.SIGKILL)
