"""The weights module: our checkpoints, safetensors, torchvision and akamaster layouts, the one loader."""
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

import resnetlab
from resnetlab import create_model
from resnetlab.io import atomic_save
from resnetlab.weights import (load_checkpoint, load_state_dict_strict, load_weights, make_checkpoint,
                               model_from_checkpoint, peek_checkpoint, read_weights, save_weights)

# torchvision's own state_dict keys and shapes, in order (read from its model code): ../shared beside the repo
GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "torchvision-resnet-keys.json"
needs_golden = pytest.mark.skipif(not GOLDEN.is_file(), reason=f"{GOLDEN} is not there")
TORCHVISION = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def _golden(name):
    """``[(key, shape), ...]`` of torchvision's ``name``, in state_dict order."""
    with open(GOLDEN) as fh:
        models = json.load(fh)["models"]
    return [(key, tuple(shape)) for key, shape in models[name]]


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


def _architecture(name):
    """``[(key, shape), ...]`` of our ``name``, built on the meta device: shapes without memory or init."""
    with torch.device("meta"):
        model = resnetlab.ResNet(resnetlab.get_spec(name), resnetlab.ModelConfig(name))
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


@needs_golden
@pytest.mark.parametrize("name", TORCHVISION)
def test_imagenet_state_dict_has_torchvision_keys_and_shapes(name):
    ours, theirs = _architecture(name), _golden(name)
    assert len(ours) == len(theirs) and dict(ours) == dict(theirs)


@needs_golden
@pytest.mark.parametrize("name", TORCHVISION)
def test_imagenet_state_dict_is_in_torchvision_order(name):
    assert [k for k, _ in _architecture(name)] == [k for k, _ in _golden(name)]


@needs_golden
@pytest.mark.parametrize("name,seed", [("resnet18", 21), ("resnet50", 22)])
def test_a_pth_with_torchvision_keys_loads_strictly(tmp_path, name, seed):
    g = torch.Generator().manual_seed(seed)
    sd = {k: torch.randint(1, 1000, shape, generator=g) if k.endswith("num_batches_tracked")
          else torch.randn(shape, generator=g) for k, shape in _golden(name)}
    torch.save(sd, tmp_path / f"{name}.pth")  # what torchvision's own files are: a plain state_dict
    model = create_model(name, seed=seed)
    assert load_weights(model, tmp_path / f"{name}.pth") == "plain state_dict"
    own = model.state_dict()
    assert own.keys() == sd.keys()
    for k, v in sd.items():
        assert own[k].dtype == v.dtype and torch.equal(own[k], v), k
    with pytest.raises(ValueError, match=r"mis-shaped keys \(2\): fc\.weight: file \(1000, "):
        load_weights(create_model(name, num_classes=10), tmp_path / f"{name}.pth")


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
        assert "missing keys (60)" in msg and "layer1.3.conv1.weight" in msg and "\n" not in msg  # one line
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


# ------------------------------------------------------------------ the one loader: model_from_checkpoint

def _checkpoint(tmp_path, model, name="ckpt.pt", **extra):
    path = tmp_path / name
    atomic_save(make_checkpoint(model, **extra), path)
    return path


def test_model_from_checkpoint_rebuilds_the_recorded_architecture(tmp_path):
    src = _randomized("resnet20", 16, shortcut="C", width=8, num_classes=7)
    path = _checkpoint(tmp_path, src, step=12, classes=list("abcdefg"))
    model, ckpt = model_from_checkpoint(path)
    assert (model.spec.name, model.shortcut, model.fc.out_features) == ("resnet20", "C", 7)
    assert model.layer1[0].conv1.out_channels == 8
    _assert_same(src, model)
    assert ckpt["step"] == 12 and ckpt["classes"] == list("abcdefg") and ckpt["model_config"]["width"] == 8
    assert peek_checkpoint(path)["step"] == 12 and load_checkpoint(path)["step"] == 12
    # options override recorded fields: a class count that does not fit is refused, naming the record
    with pytest.raises(ValueError, match=r"mis-shaped keys \(2\): fc\.weight") as err:
        model_from_checkpoint(path, num_classes=10)
    assert "trained as resnet20 with shortcut=C" in str(err.value)
    with pytest.raises(ValueError, match="mis-shaped"):  # a name is built afresh: width 16, not the recorded 8
        model_from_checkpoint(path, "resnet20", shortcut="C", num_classes=7)


def test_model_from_checkpoint_with_a_name_or_a_module(tmp_path):
    src = _randomized("resnet20", 17, num_classes=5)
    path = _checkpoint(tmp_path, src)
    # a name builds that architecture afresh; only the class count comes from the file
    model, ckpt = model_from_checkpoint(path, "resnet20")
    assert ckpt is not None and model.fc.out_features == 5
    _assert_same(src, model)
    # resnet32 has 2 more blocks per stage, 12 tensors each (num_batches_tracked included: it is our file)
    with pytest.raises(ValueError, match=r"missing keys \(72\)") as err:
        model_from_checkpoint(path, "resnet32")
    assert "resnet32" in str(err.value) and "trained as resnet20" in str(err.value) and "\n" not in str(err.value)
    # a module is loaded into as it is, and returned
    target = create_model("resnet20", num_classes=5, seed=18)
    model, _ = model_from_checkpoint(path, target)
    assert model is target
    _assert_same(src, target)
    with pytest.raises(ValueError, match="do not apply"):
        model_from_checkpoint(path, target, shortcut="B")


def test_model_from_checkpoint_of_other_files(tmp_path):
    src = _randomized("resnet20", 19, shortcut="B")
    save_weights(src, tmp_path / "w.safetensors")  # records its architecture in the metadata
    model, ckpt = model_from_checkpoint(tmp_path / "w.safetensors")
    assert ckpt is None and model.shortcut == "B"
    _assert_same(src, model)
    torch.save(_akamaster_layout(src, option_b=True), tmp_path / "r20.th")  # records none
    with pytest.raises(ValueError, match="records no architecture.*--model NAME"):
        model_from_checkpoint(tmp_path / "r20.th")
    model, ckpt = model_from_checkpoint(tmp_path / "r20.th", "resnet20", shortcut="B")
    assert ckpt is None
    _assert_same(src, model, skip_counter=True)
    for f in ("w.safetensors", "r20.th"):
        assert peek_checkpoint(tmp_path / f) is None
        with pytest.raises(ValueError, match=f"{f} is not a resnetlab checkpoint"):
            load_checkpoint(tmp_path / f)
    assert peek_checkpoint(tmp_path / "missing.pt") is None
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        model_from_checkpoint(tmp_path / "missing.pt")


def test_model_from_checkpoint_never_unpickles_objects(tmp_path):
    marker = str(tmp_path / "code-ran")
    torch.save({"format": "resnetlab-checkpoint", "model": {}, "extra": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="evil.pt could not be read safely"):
        model_from_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="evil.pt is not a readable checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")
    assert peek_checkpoint(tmp_path / "evil.pt") is None
    assert not os.path.exists(marker)


@pytest.mark.slow  # torch.compile imports TorchDynamo
def test_make_checkpoint_unwraps_compiled_models(tmp_path):
    src = _randomized("resnet8", 20, width=4)
    compiled = torch.compile(src)  # compiles lazily, on the first call: nothing runs here
    ckpt = make_checkpoint(compiled, step=1)
    assert list(ckpt["model"]) == list(src.state_dict()) and ckpt["model_config"]["name"] == "resnet8"
    path = _checkpoint(tmp_path, compiled)
    model, _ = model_from_checkpoint(path)
    _assert_same(src, model)
    save_weights(compiled, tmp_path / "c.pth")
    assert list(torch.load(tmp_path / "c.pth", weights_only=True)) == list(src.state_dict())


def test_checkpoints_carry_a_checksum_and_corruption_or_nan_is_refused(tmp_path):
    """Bytes flipped inside a stored tensor keep the file loadable by torch but change its contents: every
    reader refuses it, naming the file; so does a checkpoint with a non-finite weight."""
    from resnetlab.weights import checksum, load_checkpoint, make_checkpoint, model_from_checkpoint
    model = create_model("resnet8", width=4, seed=0)
    ckpt = make_checkpoint(model, normalization={"mean": [0.5]}, step=3)
    assert ckpt["checksum"] == checksum(ckpt) and ckpt["checksum"].startswith("sha256:")
    path = tmp_path / "ok.pt"
    torch.save(ckpt, path)
    assert load_checkpoint(path)["step"] == 3
    # corrupt one stored weight: torch.load still works, the contents no longer match
    bad = dict(ckpt, model={**ckpt["model"], "fc.bias": ckpt["model"]["fc.bias"] + 1e-3})
    torch.save(bad, tmp_path / "bad.pt")
    for reader in (load_checkpoint, model_from_checkpoint,
                   lambda p: load_weights(create_model("resnet8", width=4), p)):
        with pytest.raises(ValueError, match=r"bad\.pt is corrupted"):
            reader(tmp_path / "bad.pt")
    # raw bytes flipped in the middle of the file, where the tensor data lies
    raw = bytearray(path.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + 64] = bytes(b ^ 0xFF for b in raw[mid:mid + 64])
    (tmp_path / "flipped.pt").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="flipped.pt"):
        load_checkpoint(tmp_path / "flipped.pt")
    nan = make_checkpoint(model)
    nan["model"]["layer1.0.bn1.running_var"][0] = float("nan")
    nan["checksum"] = checksum(nan)  # written that way: consistent, but not finite
    torch.save(nan, tmp_path / "nan.pt")
    with pytest.raises(ValueError, match=r"non-finite values in layer1\.0\.bn1\.running_var"):
        model_from_checkpoint(tmp_path / "nan.pt")
