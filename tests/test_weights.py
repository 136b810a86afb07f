"""load_weights / save_weights: our checkpoints, safetensors, torchvision and akamaster layouts."""
import os
import pickle

import pytest
import torch

import resnetlab
from resnetlab import create_model
from resnetlab.checkpoint import atomic_save, make_checkpoint
from resnetlab.weights import load_state_dict_strict, load_weights, read_weights, save_weights


def _randomized(name, seed, **options):
    """A model whose every tensor holds seed-dependent non-default values (BN affine parameters and
    statistics too, which a fresh model has at 1/0), so that a load that skipped anything would show."""
    model = create_model(name, seed=seed, **options)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if k.endswith(("running_var", "bn1.weight", "bn2.weight", "bn3.weight", "downsample.1.weight")):
                v.copy_(torch.rand(v.shape, generator=g) + 0.5)  # positive, moderate: outputs stay finite
            elif k.endswith(("running_mean", "bias")):
                v.copy_(0.1 * torch.randn(v.shape, generator=g))
            elif k.endswith("num_batches_tracked"):
                v.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
    return model


def _assert_same(a, b, skip_counter=False):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        if skip_counter and k.endswith("num_batches_tracked"):
            continue
        assert sa[k].dtype == sb[k].dtype, k
        assert torch.equal(sa[k], sb[k]), k


def _akamaster_layout(model, option_b=False):
    """Rename our CIFAR keys the way akamaster/pytorch_resnet_cifar10 saves them (DataParallel)."""
    sd = {}
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue  # their checkpoints predate this buffer
        k = k.replace("fc.", "linear.") if k.startswith("fc.") else k
        if option_b:
            k = k.replace(".downsample.", ".shortcut.")
        sd["module." + k] = v.clone()
    return {"state_dict": sd, "best_prec1": 91.73}


@pytest.mark.parametrize("name,seed", [("resnet18", 3), ("resnet50", 4)])
def test_torchvision_pth_loads_bit_for_bit(tmp_path, name, seed):
    src = _randomized(name, seed)
    path = tmp_path / f"{name}-tv.pth"
    torch.save(src.state_dict(), path)  # exactly how torchvision publishes its weights
    sd, kind = read_weights(path)
    assert kind == "plain state_dict"
    assert "layer2.0.downsample.0.weight" in sd and "fc.weight" in sd
    dst = create_model(name, seed=seed + 100)
    assert not torch.equal(dst.conv1.weight, src.conv1.weight)
    assert resnetlab.load_weights(dst, path) == "plain state_dict"
    _assert_same(src, dst)
    if name != "resnet18":
        return
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = src.eval()(x)
        assert torch.isfinite(out).all()
        assert torch.equal(out, dst.eval()(x))


def test_old_torchvision_file_without_num_batches_tracked(tmp_path):
    src = _randomized("resnet18", 5)
    sd = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "old.pth")
    dst = create_model("resnet18", seed=6)
    load_weights(dst, tmp_path / "old.pth")
    _assert_same(src, dst, skip_counter=True)
    assert int(dst.bn1.num_batches_tracked) == 0


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_akamaster_checkpoint_round_trips(tmp_path, shortcut):
    src = _randomized("resnet20", 7, shortcut=shortcut)
    ckpt = _akamaster_layout(src, option_b=shortcut == "B")
    assert "module.linear.weight" in ckpt["state_dict"]
    if shortcut == "B":
        assert "module.layer2.0.shortcut.0.weight" in ckpt["state_dict"]
    # their files predate PyTorch's zip format: write the legacy one for option A
    torch.save(ckpt, tmp_path / "resnet20.th", _use_new_zipfile_serialization=shortcut == "B")
    dst = create_model("resnet20", seed=8, shortcut=shortcut)
    assert load_weights(dst, tmp_path / "resnet20.th") == "state_dict wrapper"
    _assert_same(src, dst, skip_counter=True)
    assert all(int(v) == 0 for k, v in dst.state_dict().items() if k.endswith("num_batches_tracked"))


def test_only_num_batches_tracked_may_be_missing(tmp_path):
    src = _randomized("resnet20", 9)
    ckpt = _akamaster_layout(src)
    del ckpt["state_dict"]["module.layer3.2.bn2.running_var"]
    torch.save(ckpt, tmp_path / "partial.th")
    dst = create_model("resnet20", seed=10)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(ValueError, match=r"missing keys \(1\): layer3\.2\.bn2\.running_var"):
        load_weights(dst, tmp_path / "partial.th")
    for k, v in dst.state_dict().items():  # nothing was half-loaded
        assert torch.equal(v, before[k]), k


def test_safetensors_round_trip(tmp_path):
    src = _randomized("resnet20", 11, shortcut="C")
    save_weights(src, tmp_path / "w.safetensors")
    dst = create_model("resnet20", seed=12, shortcut="C")
    assert load_weights(dst, tmp_path / "w.safetensors") == "safetensors"
    _assert_same(src, dst)
    from safetensors import safe_open
    with safe_open(tmp_path / "w.safetensors", "pt") as fh:
        assert '"shortcut": "C"' in fh.metadata()["model_config"]
    # content, not extension, decides: a safetensors file named .pt still loads as safetensors
    os.rename(tmp_path / "w.safetensors", tmp_path / "w.pt")
    assert load_weights(create_model("resnet20", shortcut="C"), tmp_path / "w.pt") == "safetensors"


def test_save_weights_pth_and_our_checkpoint(tmp_path):
    src = _randomized("resnet32", 13)
    save_weights(src, tmp_path / "w.pth")
    assert set(torch.load(tmp_path / "w.pth", weights_only=True)) == set(src.state_dict())
    dst = create_model("resnet32", seed=14)
    load_weights(dst, tmp_path / "w.pth")
    _assert_same(src, dst)
    atomic_save(make_checkpoint(src, step=5), tmp_path / "ckpt.pt")
    dst = create_model("resnet32", seed=15)
    assert load_weights(dst, tmp_path / "ckpt.pt") == "resnetlab checkpoint"
    _assert_same(src, dst)
    with pytest.raises(ValueError, match="unknown weights extension"):
        save_weights(src, tmp_path / "w.bin")


def test_wrong_architecture_lists_keys(tmp_path):
    save_weights(create_model("resnet20", seed=0), tmp_path / "r20.safetensors")
    torch.save(_akamaster_layout(create_model("resnet20", seed=0)), tmp_path / "r20.th")
    for f in ("r20.safetensors", "r20.th"):
        with pytest.raises(ValueError) as err:
            load_weights(create_model("resnet32"), tmp_path / f)
        msg = str(err.value)
        assert f in msg and "resnet32" in msg
        # resnet32 has 5 blocks per stage, resnet20 has 3: blocks .3 and .4 of each stage (10 tensors each
        # beside the tolerated num_batches_tracked) are missing
        assert "missing keys (60)" in msg and "layer1.3.conv1.weight" in msg
        assert "unexpected" not in msg
    with pytest.raises(ValueError) as err:  # a width mismatch shows up as mis-shaped keys
        load_weights(create_model("resnet20", width=32), tmp_path / "r20.safetensors")
    assert "mis-shaped keys" in str(err.value)
    assert "conv1.weight: file (16, 3, 3, 3) vs model (32, 3, 3, 3)" in str(err.value)


def test_unexpected_keys_are_listed(tmp_path):
    sd = create_model("resnet20", seed=0).state_dict()
    sd["extra.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): extra\.weight"):
        load_weights(create_model("resnet20"), tmp_path / "extra.pth")


def test_bad_files(tmp_path):
    model = create_model("resnet20")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_weights(model, tmp_path / "nope.pth")
    (tmp_path / "notes.txt").write_text("these are not weights\n")
    with pytest.raises(ValueError, match="notes.txt is not a readable weights file"):
        load_weights(model, tmp_path / "notes.txt")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.pth"):
        load_weights(model, tmp_path / "empty.pth")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(ValueError, match="bad.safetensors is not a readable safetensors file"):
        load_weights(model, tmp_path / "bad.safetensors")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="list.pt holds a list"):
        load_weights(model, tmp_path / "list.pt")
    torch.save({"lr": 0.1, "epoch": 3}, tmp_path / "hparams.pt")
    with pytest.raises(ValueError, match="hparams.pt .* not a state_dict"):
        load_weights(model, tmp_path / "hparams.pt")


class _Payload:
    """Unpickling this calls os.mkdir: proof that a loader ran code from the file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_arbitrary_pickled_objects_are_refused(tmp_path):
    marker = str(tmp_path / "code-ran")
    sd = create_model("resnet20", seed=0).state_dict()
    torch.save({"state_dict": sd, "extra": _Payload(marker)}, tmp_path / "evil.th")
    with open(tmp_path / "evil.pkl", "wb") as fh:
        pickle.dump(_Payload(marker), fh, protocol=2)
    for f in ("evil.th", "evil.pkl"):
        with pytest.raises(ValueError, match=f"{f} is not a readable weights file"):
            load_weights(create_model("resnet20"), tmp_path / f)
        assert not os.path.exists(marker)
    # the same file does run the payload when unpickled without weights_only: the test is meaningful
    torch.load(tmp_path / "evil.th", weights_only=False)
    assert os.path.isdir(marker)


def test_load_state_dict_strict_still_public():
    model = create_model("resnet20", seed=0)
    load_state_dict_strict(model, create_model("resnet20", seed=1).state_dict())
    with pytest.raises(ValueError, match="missing keys"):
        load_state_dict_strict(model, {})
