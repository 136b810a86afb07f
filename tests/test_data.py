"""Tests of resnetlab.datasets, .images and .stream: datasets, download, image folders, normalisation and
the batch streams."""
from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import pickle
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from resnetlab import cli, create_model
from resnetlab import datasets as D
from resnetlab.datasets import ArrayDataset, download_cifar, load_dataset
from resnetlab.images import ImageFolder, folder_batches, to_rgb
from resnetlab.models import ModelConfig
from resnetlab.stream import Normalization, TrainStream, eval_batches
from resnetlab.weights import make_checkpoint

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURE = SHARED / "tools" / "cifar10_fixture.py"
needs_shared = pytest.mark.skipif(not (FIXTURE.is_file() and (SHARED / "data" / "cifar10-jpeg.npz").is_file()),
                                  reason="../shared (CIFAR-10 fixture tool and data) is not there")


def _fixture(fmt: str, out: Path, per_class: int) -> Path:
    res = subprocess.run([sys.executable, str(FIXTURE), fmt, str(out), "--per-class", str(per_class)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return Path(res.stdout.strip())


@pytest.fixture(scope="module")
def cifar_batches(tmp_path_factory):
    if not FIXTURE.is_file():
        pytest.skip("../shared is not there")
    return _fixture("batches", tmp_path_factory.mktemp("batches"), 10)


@pytest.fixture(scope="module")
def cifar_tar(tmp_path_factory):
    if not FIXTURE.is_file():
        pytest.skip("../shared is not there")
    return _fixture("tar", tmp_path_factory.mktemp("tar"), 10)


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset("synthetic", synthetic_train=600, synthetic_test=200)


def _reference_batches(folder: Path):
    """The fixture's pickles read independently (bytes keys), as (x (N,3,32,32), y) per split."""
    def read(name):
        with open(folder / name, "rb") as fh:
            return pickle.load(fh, encoding="bytes")
    xs, ys = [], []
    for i in range(1, 6):
        b = read(f"data_batch_{i}")
        xs.append(b[b"data"].reshape(-1, 3, 32, 32))
        ys += b[b"labels"]
    t = read("test_batch")
    meta = read("batches.meta")
    return (np.concatenate(xs), np.array(ys)), (t[b"data"].reshape(-1, 3, 32, 32), np.array(t[b"labels"])), \
        [c.decode() for c in meta[b"label_names"]]


# ---------------------------------------------------------------------------------------------- datasets

def test_array_dataset_checks_types():
    with pytest.raises(ValueError, match="uint8"):
        ArrayDataset(torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.long), [])
    with pytest.raises(ValueError, match=r"\(N,\)"):
        ArrayDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.long), [])


def test_synthetic_is_deterministic_balanced_and_varied(synthetic):
    tr, te = synthetic["train"], synthetic["test"]
    assert tr.x.shape == (600, 3, 32, 32) and tr.x.dtype == torch.uint8 and te.x.shape == (200, 3, 32, 32)
    assert torch.bincount(tr.y, minlength=10).tolist() == [60] * 10
    assert len(tr.classes) == 10
    again = load_dataset("synthetic", synthetic_train=600, synthetic_test=200)
    assert torch.equal(again["train"].x, tr.x) and torch.equal(again["train"].y, tr.y)
    assert not torch.equal(te.x[:50], tr.x[:50])            # test images are not the training images
    other = D.make_synthetic(600, seed=1)
    assert not torch.equal(other.x, tr.x)
    # images use the whole range and differ within a class (random position, size, colours, noise)
    assert int(tr.x.min()) == 0 and int(tr.x.max()) == 255
    same = tr.x[tr.y == 0].float()
    assert (same[0] - same[1]).abs().mean() > 20


def test_val_split_is_stratified_disjoint_and_seeded(synthetic):
    tr = synthetic["train"]
    a_tr, a_val = D.split_train_val(tr, 100, split_seed=0)
    assert len(a_tr) == 500 and len(a_val) == 100
    assert torch.bincount(a_val.y, minlength=10).tolist() == [10] * 10
    # disjoint and complete: the images (unique by content here) are partitioned
    key = lambda ds: {hashlib.md5(im.numpy().tobytes()).hexdigest() for im in ds.x}  # noqa: E731
    assert key(a_tr).isdisjoint(key(a_val)) and len(key(a_tr) | key(a_val)) == len(key(tr)) == 600
    b_tr, b_val = D.split_train_val(tr, 100, split_seed=0)
    c_tr, c_val = D.split_train_val(tr, 100, split_seed=1)
    assert torch.equal(a_val.x, b_val.x) and not torch.equal(a_val.x, c_val.x)
    # uneven share: the quota still sums exactly
    _, v = D.split_train_val(tr, 37, split_seed=3)
    assert len(v) == 37 and torch.bincount(v.y, minlength=10).max() - torch.bincount(v.y, minlength=10).min() <= 1
    d = load_dataset("synthetic", synthetic_train=600, synthetic_test=200, val_split=100)
    assert set(d) == {"train", "val", "test"} and torch.equal(d["val"].x, a_val.x)
    with pytest.raises(ValueError, match="val_split"):
        D.split_train_val(tr, 600)


@needs_shared
def test_cifar10_from_folder_parent_and_tarball(cifar_batches, cifar_tar):
    (xtr, ytr), (xte, yte), classes = _reference_batches(cifar_batches)
    for where in (cifar_batches, cifar_batches.parent, cifar_tar, cifar_tar.parent):
        d = load_dataset("cifar10", where)
        assert d["train"].x.shape == (100, 3, 32, 32) and d["test"].x.shape == (20, 3, 32, 32)
        assert np.array_equal(d["train"].x.numpy(), xtr) and np.array_equal(d["train"].y.numpy(), ytr)
        assert np.array_equal(d["test"].x.numpy(), xte) and np.array_equal(d["test"].y.numpy(), yte)
        assert d["train"].classes == classes and classes[0] == "airplane"
    d = load_dataset("cifar10", cifar_tar, val_split=20, split_seed=5)
    assert len(d["train"]) == 80 and torch.bincount(d["val"].y).tolist() == [2] * 10


def test_cifar100_folder_fine_and_coarse(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 10)):
        with open(folder / split, "wb") as fh:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "fine_labels": [i % 100 for i in range(0, 5 * n, 5)],
                         "coarse_labels": [i % 20 for i in range(n)], "filenames": [b"x"] * n}, fh, protocol=2)
    with open(folder / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": [f"f{i}" for i in range(100)],
                     "coarse_label_names": [f"c{i}" for i in range(20)]}, fh, protocol=2)
    d = load_dataset("cifar100", tmp_path)
    assert d["train"].x.shape == (40, 3, 32, 32) and len(d["train"].classes) == 100
    assert d["train"].y.tolist() == [i % 100 for i in range(0, 200, 5)]
    c = D.load_cifar("cifar100", folder, labels="coarse")
    assert c["test"].y.tolist() == [i % 20 for i in range(10)] and c["test"].classes[3] == "c3"


def test_cifar_pickle_with_code_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))
    for name in ["batches.meta"] + [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as fh:
            pickle.dump({"label_names": Evil(), "data": Evil()}, fh, protocol=2)
    with pytest.raises(ValueError, match="refusing to load posix.mkdir|refusing to load os.mkdir"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()


def test_missing_data_hint_names_download_only_on_train(tmp_path, monkeypatch, capsys):
    # Every command that loads CIFAR names its own flags: --download exists on train alone.
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "empty-cache"))
    torch.save(make_checkpoint(create_model(ModelConfig("resnet8", width=4), num_classes=10)), tmp_path / "w.pt")
    commands = {"train": ["--data", "cifar10", "--out", str(tmp_path / "run")],
                "eval": ["--weights", str(tmp_path / "w.pt"), "--data", "cifar10", "--mean", "0.5,0.5,0.5",
                         "--std", "0.25,0.25,0.25"],
                "analyze": ["paths", "resnet8", "--data", "cifar10"],
                "landscape": ["resnet8", "--data", "cifar10", "--out", str(tmp_path / "ls")]}
    for name, args in commands.items():
        assert cli.main([name, "--help"]) == 0
        has_flag = "--download" in capsys.readouterr().out
        assert has_flag == (name == "train"), name
        assert cli.main([name, *args]) == 2
        err = capsys.readouterr().err
        assert "cifar10 not found in the cache" in err and "--data-dir" in err, (name, err)
        assert ("--download" in err) == has_flag and "download=True" not in err, (name, err)


def test_missing_and_unknown_datasets(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_dataset("cifar10", cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_dataset("cifar10", tmp_path)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("mnist")
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(ValueError, match="not a readable .tar.gz"):
        load_dataset("cifar10", tmp_path)
    with tarfile.open(tmp_path / "partial.tar.gz", "w:gz") as t:
        t.add(__file__, arcname="cifar-10-batches-py/readme.html")
    with pytest.raises(FileNotFoundError, match="the archive has no cifar-10-batches-py/batches.meta"):
        load_dataset("cifar10", tmp_path / "partial.tar.gz")


# ---------------------------------------------------------------------------------------------- download

class _Server:
    """http.server on 127.0.0.1 (random port) serving one folder, in a thread."""

    def __init__(self, folder: Path):
        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


@needs_shared
def test_download_extract_and_load(cifar_tar, cifar_batches, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    with _Server(cifar_tar.parent) as base:
        url = f"{base}/{cifar_tar.name}"
        folder = download_cifar("cifar10", cache, url=url, md5=_md5(cifar_tar))
        assert Path(folder) == cache / "cifar-10-batches-py"
        assert "downloading cifar-10-python.tar.gz" in capsys.readouterr().err
        assert sorted(os.listdir(cache)) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]
        # already there: nothing fetched (the address is unreachable); a verified archive is re-extracted
        assert download_cifar("cifar10", cache, url="http://127.0.0.1:9/none", md5=_md5(cifar_tar)) == folder
        import shutil
        shutil.rmtree(folder)
        assert download_cifar("cifar10", cache, url="http://127.0.0.1:9/none", md5=_md5(cifar_tar)) == folder
        assert sorted(os.listdir(folder)) == sorted(os.listdir(cifar_batches))
        # found in the cache from now on, no download
        d = load_dataset("cifar10", cache_dir=cache)
        (xtr, ytr), _, _ = _reference_batches(cifar_batches)
        assert np.array_equal(d["train"].x.numpy(), xtr) and np.array_equal(d["train"].y.numpy(), ytr)
        # load_dataset(download=True) with an empty cache fetches it (the official address swapped for ours)
        monkeypatch.setitem(D.CIFAR_URLS, "cifar10", url)
        monkeypatch.setitem(D.CIFAR_MD5, "cifar10", _md5(cifar_tar))
        monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "envcache"))
        d2 = load_dataset("cifar10", download=True)
        assert torch.equal(d2["test"].x, d["test"].x)
        assert (tmp_path / "envcache" / "cifar-10-batches-py" / "test_batch").is_file()
        d3 = load_dataset("cifar10", tmp_path / "given", download=True)   # into the folder given
        assert torch.equal(d3["train"].y, d["train"].y) and (tmp_path / "given" / "cifar-10-batches-py").is_dir()


@needs_shared
def test_download_with_wrong_md5_leaves_nothing(cifar_tar, tmp_path):
    cache = tmp_path / "cache"
    with _Server(cifar_tar.parent) as base:
        with pytest.raises(ValueError, match=r"MD5 mismatch.*expected 0{32}, got " + _md5(cifar_tar)):
            download_cifar("cifar10", cache, url=f"{base}/{cifar_tar.name}", md5="0" * 32, quiet=True)
        assert os.listdir(cache) == []
        with pytest.raises(ValueError, match="could not download"):
            download_cifar("cifar10", cache, url=f"{base}/missing.tar.gz", md5="0" * 32, quiet=True)
        assert os.listdir(cache) == []


def _evil_tar(path: Path, member: tarfile.TarInfo, payload: bytes = b"evil"):
    with tarfile.open(path, "w:gz") as t:
        ok = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        ok.size = 2
        t.addfile(ok, io.BytesIO(b"ok"))
        if member.isfile():
            member.size = len(payload)
            t.addfile(member, io.BytesIO(payload))
        else:
            t.addfile(member)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_path_traversal_in_archive_is_refused(tmp_path, kind):
    serve = tmp_path / "serve"
    serve.mkdir()
    if kind == "dotdot":
        m = tarfile.TarInfo("cifar-10-batches-py/../../escaped.txt")
    elif kind == "absolute":
        m = tarfile.TarInfo(str(tmp_path / "escaped.txt"))
    else:
        m = tarfile.TarInfo("cifar-10-batches-py/link")
        m.type, m.linkname = tarfile.SYMTYPE, "/etc/passwd"
    archive = serve / "cifar-10-python.tar.gz"
    _evil_tar(archive, m)
    with pytest.raises(ValueError, match="refusing to extract"):
        D.safe_extract(archive, tmp_path / "direct")
    cache = tmp_path / "cache"
    with _Server(serve) as base:
        with pytest.raises(ValueError, match="refusing to extract"):
            download_cifar("cifar10", cache, url=f"{base}/{archive.name}", md5=_md5(archive), quiet=True)
    assert not (tmp_path / "escaped.txt").exists() and not (cache / "escaped.txt").exists()
    # the verified archive stays; no folder, no half-extracted temp folder
    assert os.listdir(cache) == ["cifar-10-python.tar.gz"]


# ---------------------------------------------------------------------------------------------- normalisation

def test_normalization_pixel_and_channel(synthetic):
    x = synthetic["train"].x
    pix = Normalization.fit(x, "pixel")
    assert pix.mean.shape == (3, 32, 32)
    assert torch.allclose(pix.mean, x.double().mean(0).float() / 255, atol=1e-6)
    out = pix(x)
    assert out.abs().mean(0).max() > 0.1 and out.mean(0).abs().max() < 1e-5     # the mean image subtracted...
    assert torch.allclose(out, x.float() / 255 - pix.mean, atol=1e-6)           # ...and nothing else
    ch = Normalization.fit(x, "channel")
    out = ch(x).double()
    assert torch.allclose(out.mean((0, 2, 3)), torch.zeros(3, dtype=torch.double), atol=1e-5)
    assert torch.allclose(out.std((0, 2, 3)), torch.ones(3, dtype=torch.double), atol=1e-4)
    assert torch.allclose(ch(x[:4].float() / 255), ch(x[:4]), atol=1e-6)       # float 0..1 input too
    given = Normalization.from_values((0.5, 0.5, 0.5), (0.25, 0.5, 1.0))
    assert torch.allclose(given(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))[0, :, 0, 0],
                          torch.tensor([2.0, 1.0, 0.5]))
    with pytest.raises(ValueError, match="pixel normalization was fitted on"):
        pix(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))


def test_normalization_fitted_on_batches_equals_fitted_on_the_tensor(synthetic):
    x = synthetic["train"].x
    for mode in ("pixel", "channel"):
        whole, batched = Normalization.fit(x, mode), Normalization.fit(iter(x.split(97)), mode)
        assert torch.allclose(whole.mean, batched.mean, atol=1e-7) and torch.allclose(whole.std, batched.std)
    with pytest.raises(ValueError, match="at least one image"):
        Normalization.fit(iter([]), "pixel")
    with pytest.raises(ValueError, match="uint8"):
        Normalization.fit(x.float(), "channel")


def test_normalization_state_dict_goes_through_weights_only_checkpoint(synthetic, tmp_path):
    for mode in ("pixel", "channel"):
        n = Normalization.fit(synthetic["train"].x, mode)
        torch.save({"normalization": n.state_dict()}, tmp_path / "c.pt")
        back = Normalization.from_state_dict(torch.load(tmp_path / "c.pt", weights_only=True)["normalization"])
        assert back.mode == mode and torch.equal(back(synthetic["test"].x), n(synthetic["test"].x))
    with pytest.raises(ValueError, match="not a Normalization"):
        Normalization.from_state_dict({"mode": "pixel"})


# ---------------------------------------------------------------------------------------------- TrainStream

def _manual(raw: torch.Tensor, dy: int, dx: int, flip: bool, norm: Normalization, padding: str, pad=4):
    """One augmented image done the slow, obvious way."""
    h, w = raw.shape[-2:]
    if padding == "black":
        img = F.pad(raw[None].float(), (pad,) * 4)[0][:, dy:dy + h, dx:dx + w]
        if flip:
            img = img.flip(-1)
        return norm((img / 255)[None])[0]
    img = F.pad(norm(raw[None]), (pad,) * 4)[0][:, dy:dy + h, dx:dx + w]   # normalise, pad with 0, crop
    return img.flip(-1) if flip else img


@pytest.mark.parametrize("padding,mode", [("black", "channel"), ("black", "pixel"), ("mean", "pixel"),
                                          ("mean", "channel")])
def test_crops_are_real_crops_of_the_padded_image(synthetic, padding, mode):
    data = synthetic["train"]
    norm = Normalization.fit(data.x, mode)
    s = TrainStream(data, 64, device="cpu", seed=3, normalization=norm, padding=padding)
    x, y = s.batch(11)
    idx = s.indices(11)
    dy, dx, flip = s.augmentation(11)
    assert torch.equal(y, data.y[idx])
    assert int(dy.min()) >= 0 and int(dy.max()) <= 8 and len(set(dx.tolist())) > 4
    for k in range(64):
        ref = _manual(data.x[idx[k]], int(dy[k]), int(dx[k]), bool(flip[k]), norm, padding)
        assert torch.allclose(x[k], ref, atol=1e-5), k
    # independent of the stream's own bookkeeping: each output is one of the 81 x 2 crops of its image
    for k in range(4):
        hits = [(a, b, f) for a in range(9) for b in range(9) for f in (False, True)
                if torch.allclose(x[k], _manual(data.x[idx[k]], a, b, f, norm, padding), atol=1e-5)]
        assert (int(dy[k]), int(dx[k]), bool(flip[k])) in hits


def test_the_crop_border_is_an_eighth_of_the_side():
    """4 pixels at 32x32 (the paper's), 2 at the demo's 16x16: every crop is one of the 5 x 5 x 2 of its image
    padded by 2, and the offsets reach both ends."""
    data = D.make_synthetic(256, seed=1, image_size=16)
    norm = Normalization.fit(data.x, "pixel")
    s = TrainStream(data, 256, device="cpu", seed=0, normalization=norm)
    x, _ = s.batch(0)
    dy, dx, flip = s.augmentation(0)
    assert s.pad == 2 and {int(dy.min()), int(dy.max()), int(dx.min()), int(dx.max())} == {0, 4}
    idx = s.indices(0)
    for k in range(3):
        hits = [(a, b, f) for a in range(5) for b in range(5) for f in (False, True)
                if torch.allclose(x[k], _manual(data.x[idx[k]], a, b, f, norm, "black", pad=2), atol=1e-5)]
        assert (int(dy[k]), int(dx[k]), bool(flip[k])) in hits
    assert TrainStream(D.make_synthetic(64, image_size=32), 8).pad == 4


def test_flips_are_mirrors_and_both_occur(synthetic):
    data = synthetic["train"]
    norm = Normalization.fit(data.x, "channel")
    s = TrainStream(data, 128, device="cpu", seed=0, normalization=norm)
    x, _ = s.batch(0)
    dy, dx, flip = s.augmentation(0)
    assert 20 < int(flip.sum()) < 108
    k = int(torch.nonzero(flip)[0])
    idx = s.indices(0)
    unflipped = _manual(data.x[idx[k]], int(dy[k]), int(dx[k]), False, norm, "black")
    assert torch.allclose(x[k], unflipped.flip(-1), atol=1e-5)


def test_batches_are_a_pure_function_of_seed_and_step(synthetic):
    data = synthetic["train"]
    norm = Normalization.fit(data.x, "pixel")
    a = TrainStream(data, 50, device="cpu", seed=7, normalization=norm)
    b = TrainStream(data, 50, device="cpu", seed=7, normalization=norm)
    c = TrainStream(data, 50, device="cpu", seed=8, normalization=norm)
    seq = [a.batch(s) for s in range(30)]                     # crosses two epoch boundaries (12 steps/epoch)
    for s in (29, 3, 12, 0):                                  # jumping around gives the same batches
        xb, yb = b.batch(s)
        assert torch.equal(xb, seq[s][0]) and torch.equal(yb, seq[s][1])
    assert not torch.equal(seq[5][0], seq[6][0])
    assert not torch.equal(c.batch(5)[0], seq[5][0])
    assert not torch.equal(a.indices(0), a.indices(12))       # each epoch has its own order


def test_every_image_appears_once_per_epoch(synthetic):
    data = synthetic["train"]
    norm = Normalization.fit(data.x, "channel")
    for bs in (100, 64):                                      # 600 = 6 x 100; 600 = 9 x 64 + 24 (dropped)
        s = TrainStream(data, bs, device="cpu", seed=1, normalization=norm, augment=False)
        assert s.steps_per_epoch == 600 // bs
        for epoch in (0, 1):
            steps = range(epoch * s.steps_per_epoch, (epoch + 1) * s.steps_per_epoch)
            idx = torch.cat([s.indices(t) for t in steps])
            assert len(idx) == len(set(idx.tolist())) == s.steps_per_epoch * bs
            batches = [s.batch(t) for t in steps]
            xs, ys = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
            assert torch.allclose(xs, norm(data.x[idx]), atol=1e-6)   # the images themselves, un-augmented
            assert torch.equal(ys, data.y[idx])


def test_channels_last_and_arguments(synthetic):
    data = synthetic["train"]
    norm = Normalization.fit(data.x, "channel")
    a = TrainStream(data, 32, device="cpu", seed=0, normalization=norm, channels_last=True)
    b = TrainStream(data, 32, device="cpu", seed=0, normalization=norm)
    xa, _ = a.batch(2)
    assert xa.is_contiguous(memory_format=torch.channels_last) and torch.equal(xa, b.batch(2)[0])
    with pytest.raises(ValueError, match="batch_size"):
        TrainStream(data, 601, device="cpu", seed=0, normalization=norm)
    with pytest.raises(ValueError, match="padding"):
        TrainStream(data, 8, device="cpu", seed=0, normalization=norm, padding="reflect")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_same_batches_on_gpu_and_cpu(synthetic):
    data = synthetic["train"]
    norm = Normalization.fit(data.x, "pixel")
    for padding in ("black", "mean"):
        c = TrainStream(data, 64, device="cpu", seed=2, normalization=norm, padding=padding)
        g = TrainStream(data, 64, device="cuda", seed=2, normalization=norm, padding=padding)
        for s in (0, 9, 25):
            xc, yc = c.batch(s)
            xg, yg = g.batch(s)
            assert xg.is_cuda and torch.allclose(xg.cpu(), xc, atol=1e-5) and torch.equal(yg.cpu(), yc)


def test_eval_batches_in_order_with_flip(synthetic):
    data = synthetic["test"]
    norm = Normalization.fit(synthetic["train"].x, "channel")
    batches = list(eval_batches(data, 64, device="cpu", normalization=norm))
    assert [len(y) for _, y in batches] == [64, 64, 64, 8]
    x = torch.cat([b[0] for b in batches])
    assert torch.allclose(x, norm(data.x)) and torch.equal(torch.cat([b[1] for b in batches]), data.y)
    xf = torch.cat([b[0] for b in eval_batches(data, 64, device="cpu", normalization=norm, flip=True)])
    assert torch.allclose(xf, x.flip(-1))


# ---------------------------------------------------------------------------------------------- image folders

@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    if not FIXTURE.is_file():
        pytest.skip("../shared is not there")
    from PIL import Image
    root = tmp_path_factory.mktemp("folder")
    _fixture("folder", root, 2)
    cls = sorted(os.listdir(root / "train"))[0]
    good = sorted((root / "train" / cls).iterdir())[0]
    Image.open(good).convert("L").save(root / "train" / cls / "zz_grey.png")
    Image.open(good).convert("CMYK").save(root / "train" / cls / "zz_cmyk.jpg")
    Image.open(good).convert("RGBA").save(root / "train" / cls / "zz_rgba.png")
    blob = (root / "train" / cls / "zz_grey.png").read_bytes()
    (root / "train" / cls / "zz_truncated.png").write_bytes(blob[: len(blob) // 2])
    return root, root / "train" / cls / "zz_truncated.png", root / "train" / cls / "zz_grey.png"


@needs_shared
def test_folder_dataset_equals_the_cifar_batches(tmp_path, cifar_batches):
    root = _fixture("folder", tmp_path, 10)
    d = load_dataset("folder", root, val_split=20)
    ref = load_dataset("cifar10", cifar_batches)
    assert d["train"].classes == ref["train"].classes and len(d["train"]) == 80 and len(d["val"]) == 20
    # same images (the folder is sorted by class and name, the batches are shuffled): compare as sets
    key = lambda ds: sorted((int(y), hashlib.md5(x.numpy().tobytes()).hexdigest()) for x, y in zip(ds.x, ds.y))  # noqa
    assert key(d["test"]) == key(ref["test"])


def test_folder_scan_and_eval_pixels(image_folder):
    from PIL import Image
    root, bad, grey = image_folder
    train = ImageFolder(root / "train", image_size=32, resize=32, on_bad_image="skip")
    test = ImageFolder(root / "test", classes=train.classes, image_size=32, resize=32)
    assert len(train) == 24 and len(test) == 10 and len(train.classes) == 10
    # resize 32 + centre 32 of a 32x32 image: the file's own pixels, in folder order
    batches = list(folder_batches(test, 4))
    assert [len(y) for _, y, _ in batches] == [4, 4, 2] and all(s == [] for _, _, s in batches)
    path0, label0 = test.samples[0]
    ref = torch.from_numpy(np.array(Image.open(path0).convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(batches[0][0][0], ref) and int(batches[0][1][0]) == label0
    assert torch.equal(torch.cat([y for _, y, _ in batches]), torch.tensor(test.targets))
    g = train.load([p for p, _ in train.samples].index(str(grey)))
    assert g.shape == (3, 32, 32) and torch.equal(g[0], g[1]) and torch.equal(g[1], g[2])
    # with on_bad_image="skip" the truncated file is left out of its batch and named
    sizes, skipped = zip(*[(len(y), s) for _, y, s in folder_batches(train, 8, num_workers=2)])
    assert sum(sizes) == 23 and [p for s in skipped for p in s] == [str(bad)]


def test_folder_bad_image_error_names_the_path(image_folder):
    root, bad, _ = image_folder
    ds = ImageFolder(root / "train", image_size=32)
    i = [p for p, _ in ds.samples].index(str(bad))
    with pytest.raises(ValueError, match="zz_truncated.png"):
        ds[i]
    with pytest.raises(ValueError, match="zz_truncated.png"):   # raised from a worker process, path intact
        list(folder_batches(ds, 8, num_workers=1))


def test_folder_arrays_match_the_cifar_pixels(image_folder, capsys):
    root, bad, _ = image_folder
    sets = D.load_folder_arrays(root, image_size=32, on_bad_image="skip")
    assert sets["train"].x.shape == (23, 3, 32, 32) and sets["test"].x.shape == (10, 3, 32, 32)
    assert str(bad) in capsys.readouterr().err
    ref = ImageFolder(root / "test", classes=sets["train"].classes, image_size=32, resize=32)
    for i in (0, 9):
        assert torch.equal(sets["test"].x[i], ref.load(i)) and int(sets["test"].y[i]) == ref.samples[i][1]
    with pytest.raises(ValueError, match="zz_truncated.png"):
        D.load_folder_arrays(root, image_size=32)
    with pytest.raises(ValueError, match="zz_truncated.png"):     # load_dataset("folder") is strict
        load_dataset("folder", root)


def test_rgba_becomes_the_same_rgb_in_folders_and_predict(tmp_path):
    """Transparent pixels are composited onto white, for training/eval folders and for predict alike."""
    from PIL import Image

    folder = tmp_path / "train" / "a"
    folder.mkdir(parents=True)
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 0] = 200  # red, but fully transparent on the left half
    rgba[:, 16:, 3] = 255
    Image.fromarray(rgba, "RGBA").save(folder / "x.png")
    x, _ = ImageFolder(tmp_path / "train", image_size=32, resize=32)[0]
    assert x.shape == (3, 32, 32)
    assert (x[:, :, :16] == 255).all()  # transparent -> white
    assert (x[0, :, 17:] == 200).all() and (x[1:, :, 17:] == 0).all()
    pixels = np.array(to_rgb(Image.open(folder / "x.png")))  # what predict uses
    assert torch.equal(torch.from_numpy(pixels).permute(2, 0, 1), x)


def test_image_folders_skip_hidden_entries_and_refuse_empty_classes(tmp_path):
    from PIL import Image
    from resnetlab.images import ImageFolder
    root = tmp_path / "train"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8), (10, 20, 30)).save(root / cls / "a.png")
    (root / ".ipynb_checkpoints").mkdir()
    Image.new("RGB", (8, 8)).save(root / ".ipynb_checkpoints" / "x.png")
    (root / "cat" / ".ipynb_checkpoints").mkdir()
    Image.new("RGB", (8, 8)).save(root / "cat" / ".ipynb_checkpoints" / "x.png")
    (root / "dog" / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    ds = ImageFolder(root, image_size=8)
    assert ds.classes == ["cat", "dog"]  # no class 0 ".ipynb_checkpoints" shifting the labels
    assert sorted((os.path.relpath(p, root), y) for p, y in ds.samples) == [("cat/a.png", 0), ("dog/a.png", 1)]
    (root / "empty").mkdir()
    with pytest.raises(ValueError, match="without image files: empty"):
        ImageFolder(root, image_size=8)


def test_archives_with_bombs_or_duplicate_members_are_refused(tmp_path, monkeypatch):
    """A member over the size limit (a decompression bomb) and a member named twice are refused, both when
    the tarball is read directly and when it is extracted; nothing is extracted."""
    import tarfile
    from resnetlab import datasets
    monkeypatch.setattr(datasets, "MAX_MEMBER_BYTES", 1000)  # the limit, scaled down to a test-sized bomb

    def tarball(path, members):
        with tarfile.open(path, "w:gz") as tar:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return str(path)

    bomb = tarball(tmp_path / "bomb.tar.gz", [("cifar-10-batches-py/data_batch_1", bytes(5000))])
    with pytest.raises(ValueError, match="over the limit"):
        datasets.load_cifar("cifar10", bomb)
    with pytest.raises(ValueError, match="over the limit"):
        datasets.safe_extract(bomb, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("data_batch_1"))
    twice = tarball(tmp_path / "twice.tar.gz", [("cifar-10-batches-py/batches.meta", b"x"),
                                                ("cifar-10-batches-py/batches.meta", b"y")])
    with pytest.raises(ValueError, match="twice"):
        datasets.load_cifar("cifar10", twice)
    with pytest.raises(ValueError, match="twice"):
        datasets.safe_extract(twice, tmp_path / "out2")
