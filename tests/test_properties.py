"""Property-based tests (hypothesis), time-bounded: config parsing and the checkpoint and CIFAR readers never
crash with anything but a clear ValueError, and what they accept round-trips."""
import io
import pickle
import tarfile

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resnetlab.config import from_dict, to_dict
from resnetlab.datasets import load_cifar
from resnetlab.models import OPTION_NAMES, ModelConfig
from resnetlab.train import TrainConfig
from resnetlab.weights import checksum, load_checkpoint, make_checkpoint

# derandomize: CI runs the same examples every time, so a pass or a failure is reproducible.
FAST = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False)
                           | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3), max_leaves=5)


@FAST
@given(st.dictionaries(st.sampled_from(OPTION_NAMES + ("frob",)), json_values, max_size=4))
def test_model_config_from_any_dict_is_built_or_refused_clearly(data):
    try:
        cfg = ModelConfig.from_dict(data)
    except ValueError as e:
        assert str(e)  # a message, never a TypeError or a traceback from deep inside
        return
    assert ModelConfig.from_dict(cfg.to_dict() | {"seed": cfg.seed}) == cfg


@FAST
@given(st.fixed_dictionaries({}, optional={
    "lr": st.floats(1e-4, 1.0), "iterations": st.integers(1, 10**5), "batch_size": st.integers(1, 512),
    "milestones": st.lists(st.integers(1, 10**5), max_size=3), "nesterov": st.booleans(),
    "shortcut": st.sampled_from(["A", "B", "C", "none"]), "model": st.sampled_from(["resnet20", "resnet56"]),
    "schedule": st.sampled_from(["step", "cosine", "onecycle", "constant"])}))
def test_train_config_round_trips_through_its_json(data):
    cfg = from_dict(TrainConfig, data)
    assert from_dict(TrainConfig, to_dict(cfg)) == cfg
    if "shortcut" in data:
        assert cfg.model.shortcut == data["shortcut"]


@pytest.fixture(scope="module")
def checkpoint_bytes():
    buf = io.BytesIO()
    torch.save(make_checkpoint(__import__("resnetlab").create_model("resnet8", width=2, seed=0), step=1), buf)
    return buf.getvalue()


@FAST
@given(st.integers(0, 10**9), st.integers(1, 64), st.integers(0, 255))
def test_a_damaged_checkpoint_is_refused_or_read_intact(tmp_path_factory, checkpoint_bytes, where, length, value):
    """Overwrite a run of bytes anywhere: the reader either refuses with a ValueError or returns contents
    whose checksum still holds (the bytes hit padding or metadata torch ignores)."""
    raw = bytearray(checkpoint_bytes)
    start = where % len(raw)
    raw[start:start + length] = bytes([value]) * len(raw[start:start + length])
    path = tmp_path_factory.mktemp("ck") / "c.pt"
    path.write_bytes(bytes(raw))
    try:
        ckpt = load_checkpoint(path)
    except ValueError as e:
        assert str(path) in str(e)
        return
    assert ckpt["checksum"] == checksum(ckpt)


@FAST
@given(st.lists(st.tuples(st.sampled_from(["batches.meta", "data_batch_1", "test_batch", "x/../evil"]),
                          st.binary(max_size=64)), max_size=4))
def test_cifar_tarballs_of_junk_are_refused_clearly(tmp_path_factory, members):
    path = tmp_path_factory.mktemp("tar") / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises((ValueError, FileNotFoundError)):
        load_cifar("cifar10", str(path))


@FAST
@given(st.dictionaries(st.text(max_size=6), st.integers(), max_size=3))
def test_pickles_of_the_wrong_shape_are_not_checkpoints(tmp_path_factory, obj):
    path = tmp_path_factory.mktemp("pk") / "p.pt"
    path.write_bytes(pickle.dumps(obj))
    with pytest.raises(ValueError):
        load_checkpoint(path)
