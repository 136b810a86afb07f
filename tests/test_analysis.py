"""Shortcut analyses: path ratios, projection energy, gradient norms, lesions, Fig. 7 responses, CLI errors."""
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnetlab import BasicBlock, create_model
from resnetlab import analysis as A
from resnetlab.io import atomic_save
from resnetlab.weights import make_checkpoint
from resnetlab.cli import main as cli_main


pytestmark = pytest.mark.usefixtures("one_thread")


def _randomise_bn(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN affine parameters and running statistics (eval mode must use them)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.2 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))


def _tiny(shortcut="A", **kw):
    model = create_model("resnet8", shortcut=shortcut, width=4, seed=0, **kw)
    _randomise_bn(model)
    return model


def _xy(n=6, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


# ------------------------------------------------------------------ paths

def test_path_ratio_is_zero_when_the_branch_is_zeroed():
    model = _tiny("A")
    blocks = dict(model.blocks())
    with torch.no_grad():
        blocks["layer2.0"].bn2.weight.zero_()
        blocks["layer2.0"].bn2.bias.zero_()
    rows = {r["block"]: r for r in A.path_stats(model, _xy()[0])}
    assert rows["layer2.0"]["ratio"] == 0.0
    assert rows["layer2.0"]["cosine"] == 0.0
    assert rows["layer2.0"]["ratio_batch"] == 0.0
    assert rows["layer2.0"]["kind"] == "zero-pad"
    assert rows["layer1.0"]["ratio"] > 0 and rows["layer3.0"]["ratio"] > 0
    assert all(r["samples"] == 6 for r in rows.values())


@pytest.mark.parametrize("in_ch,out_ch,stride", [(4, 4, 1), (4, 8, 2)])
def test_path_stats_match_a_manual_computation_on_a_hand_built_block(in_ch, out_ch, stride):
    torch.manual_seed(0)
    block = BasicBlock(in_ch, out_ch, stride=stride, shortcut="A", shortcut_scale=0.5)
    _randomise_bn(block, seed=1)
    x = torch.randn(5, in_ch, 8, 8)
    rows = A.path_stats(block, [x[:3], x[3:]])  # two batches: per-sample values pooled over both
    assert len(rows) == 1 and rows[0]["block"] == "block"
    block.eval()
    with torch.no_grad():
        branch = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x)))))
        short = x[:, :, ::stride, ::stride]
        extra = out_ch - in_ch
        short = F.pad(short, (0, 0, 0, 0, extra // 2, extra - extra // 2)) * 0.5  # the scaled shortcut
    f, s = branch.flatten(1).double(), short.flatten(1).double()
    ratio = (f.norm(dim=1) / s.norm(dim=1)).mean().item()
    cosine = F.cosine_similarity(f, s, dim=1).mean().item()
    assert rows[0]["ratio"] == pytest.approx(ratio, rel=1e-9)
    assert rows[0]["cosine"] == pytest.approx(cosine, rel=1e-9, abs=1e-12)
    assert rows[0]["ratio_batch"] == pytest.approx((f.norm() / s.norm()).item(), rel=1e-9)
    assert rows[0]["kind"] == ("identity" if stride == 1 else "zero-pad")


def test_plain_blocks_are_reported_as_such():
    rows = A.path_stats(_tiny("none"), _xy()[0])
    assert [r["kind"] for r in rows] == ["none"] * 3
    assert all(r["ratio"] is None and r["cosine"] is None for r in rows)


# ------------------------------------------------------------------ projections

@pytest.mark.parametrize("zero_pad", ["split", "end"])
def test_identity_initialised_projection_has_all_energy_on_identity_entries(zero_pad):
    model = _tiny("B", zero_pad=zero_pad)
    for _, block in model.blocks():
        if block.shortcut_kind != "projection":
            continue
        conv, bn = block.downsample
        cout, cin = conv.weight.shape[:2]
        offset = (cout - cin) // 2 if zero_pad == "split" else 0
        with torch.no_grad():
            conv.weight.zero_()
            for i in range(cin):
                conv.weight[i + offset, i, 0, 0] = 1.0
            bn.weight.fill_(1.0), bn.bias.zero_(), bn.running_mean.zero_(), bn.running_var.fill_(1.0)
    rows = A.projection_stats(model)
    assert [r["block"] for r in rows] == ["layer2.0", "layer3.0"]
    for r in rows:
        assert r["identity_energy"] == pytest.approx(1.0, abs=1e-12)
        assert r["other_energy"] == pytest.approx(0.0, abs=1e-12)
        scale = 1 / math.sqrt(1 + 1e-5)  # BN's eps: the folded map is the identity times this
        assert r["singular_values"] == pytest.approx([scale] * r["in_channels"], rel=1e-9)
        assert r["identity_mean"] == pytest.approx(scale, rel=1e-9)


def test_projection_energy_matches_manual_bn_folding():
    model = _tiny("C")
    rows = A.projection_stats(model)
    assert len(rows) == 3  # option C: a projection on every block
    block = dict(model.blocks())["layer3.0"]
    conv, bn = block.downsample
    w = conv.weight.detach().double().flatten(1)
    w_eff = (bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps))[:, None].detach() * w
    mask = torch.zeros_like(w_eff)
    for i in range(8):
        mask[i + 4, i] = 1.0  # split convention: 8 -> 16 channels, offset 4
    r = rows[2]
    assert r["identity_energy"] == pytest.approx(((w_eff * mask) ** 2).sum().item() / (w_eff ** 2).sum().item())
    assert r["sv_max"] == pytest.approx(torch.linalg.matrix_norm(w_eff, ord=2).item(), rel=1e-9)
    assert A.projection_stats(_tiny("A")) == []


# ------------------------------------------------------------------ gradients

def test_gradient_norms_equal_manual_grad_norms_in_train_mode():
    model = _tiny("B")
    x, y = _xy(8)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    model.eval()
    norms = A.gradient_norms(model, x, y)
    assert not model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())  # nothing left behind
    assert all(torch.equal(v, buffers[k]) for k, v in model.named_buffers())  # running stats restored
    keys = list(norms)
    assert keys[0] == "conv1.weight" and keys[-1] == "fc.weight"
    # Forward order: the projection runs after the branch that it is added to.
    assert keys.index("layer2.0.conv2.weight") < keys.index("layer2.0.downsample.0.weight") \
        < keys.index("layer3.0.conv1.weight")
    weights = {n for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1}
    assert set(keys) == weights

    reference = _tiny("B")
    reference.load_state_dict(model.state_dict())
    reference.train()
    F.cross_entropy(reference(x), y).backward()
    grads = {n: p.grad for n, p in reference.named_parameters()}
    for name, value in norms.items():
        assert value == pytest.approx(grads[name].norm().item(), rel=1e-5)

    groups = dict(A.block_gradient_norms(model, x, y))
    assert list(groups) == ["stem", "layer1.0", "layer2.0", "layer3.0", "fc"]
    stem = math.sqrt(sum(grads[n].double().pow(2).sum().item() for n in ("conv1.weight", "bn1.weight", "bn1.bias")))
    assert groups["stem"] == pytest.approx(stem, rel=1e-5)
    block = math.sqrt(sum(g.double().pow(2).sum().item() for n, g in grads.items() if n.startswith("layer2.0.")))
    assert groups["layer2.0"] == pytest.approx(block, rel=1e-5)


def test_lesion_equals_a_zeroed_branch_and_reports_na_for_plain_shape_changes():
    model = _tiny("A")
    x, y = _xy(64, seed=3)
    batches = [(x[:32], y[:32]), (x[32:], y[32:])]
    rows = {r["block"]: r for r in A.lesion(model, batches)}
    model.eval()
    with torch.no_grad():
        baseline = (model(x).argmax(1) == y).float().mean().item()
        zeroed = _tiny("A")
        zeroed.load_state_dict(model.state_dict())
        zeroed.eval()
        bn = dict(zeroed.blocks())["layer2.0"].bn2  # F(x) = 0 exactly: what a lesion means
        bn.weight.zero_(), bn.bias.zero_()
        lesioned = (zeroed(x).argmax(1) == y).float().mean().item()
    assert rows["layer2.0"]["baseline"] == pytest.approx(baseline)
    assert rows["layer2.0"]["accuracy"] == pytest.approx(lesioned)
    assert rows["layer2.0"]["delta"] == pytest.approx(lesioned - baseline)

    plain = {r["block"]: r for r in A.lesion(_tiny("none"), batches)}
    assert plain["layer2.0"]["accuracy"] is None and plain["layer3.0"]["delta"] is None
    assert plain["layer1.0"]["accuracy"] is not None  # same shape: replaced by its input


# ------------------------------------------------------------------ responses

def test_layer_responses_equal_manual_std_of_bn_outputs():
    model = _tiny("A")
    x = _xy(6)[0]
    captured = {}
    pairs = [("conv1", model.bn1)] + [(f"{n}.conv{i}", getattr(b, f"bn{i}")) for n, b in model.blocks()
                                      for i in (1, 2)]
    hooks = [bn.register_forward_hook(lambda m, i, o, name=name: captured.__setitem__(name, o))
             for name, bn in pairs]
    model.eval()
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    rows = A.layer_response_stats(model, x)
    assert [r["layer"] for r in rows] == [name for name, _ in pairs]
    for r in rows:
        out = captured[r["layer"]].double()
        assert r["std"] == pytest.approx(out.std(unbiased=False).item(), rel=1e-6)
        assert r["channel_std"] == pytest.approx(out.std(dim=(0, 2, 3), unbiased=False).mean().item(), rel=1e-6)
    assert A.layer_responses(model, x) == [(r["layer"], r["std"]) for r in rows]


def test_preact_responses_use_the_conv_output_where_no_bn_follows():
    model = create_model("preact-resnet11", width=2, seed=0)  # bottleneck: one 3x3 per block
    rows = A.layer_response_stats(model, _xy(4)[0])
    assert [(r["layer"], r["source"]) for r in rows][1:] == [
        ("layer1.0.conv2", "layer1.0.bn3"), ("layer2.0.conv2", "layer2.0.bn3"), ("layer3.0.conv2", "layer3.0.bn3")]


# ------------------------------------------------------------------ command line

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "resnet8.pt"
    atomic_save(make_checkpoint(create_model("resnet8", shortcut="B", width=2, seed=0)), path)
    return str(path)


def test_cli_paths_and_responses_on_a_checkpoint(checkpoint, tmp_path, capsys):
    out = tmp_path / "paths.json"
    assert cli_main(["analyze", "paths", checkpoint, "--data", "synthetic", "--batches", "1", "--batch-size", "16",
                     "--quiet",
                     "--json", str(out), "--plot", str(tmp_path / "paths.png"), "--device", "cpu"]) == 0
    result = json.loads(out.read_text())
    assert [r["block"] for r in result["paths"]] == ["layer1.0", "layer2.0", "layer3.0"]
    assert [r["block"] for r in result["projections"]] == ["layer2.0", "layer3.0"]
    assert result["paths"][0]["samples"] == 16
    assert (tmp_path / "paths.png").stat().st_size > 1000
    assert "energy on id" in capsys.readouterr().out
    # Two fresh models at once (a plain-8 and a plain-14): both tables, one JSON, one overlaid figure.
    assert cli_main(["analyze", "responses", "resnet8", "resnet14", "--width", "2", "--shortcut", "none",
                     "--batches", "1", "--batch-size", "8", "--json", str(tmp_path / "r.json"), "--quiet",
                     "--plot", str(tmp_path / "r.png")]) == 0
    both = json.loads((tmp_path / "r.json").read_text())
    assert [len(r["responses"]) for r in both["results"]] == [7, 13]
    assert (tmp_path / "r.png").stat().st_size > 1000
    result = both["results"][0]
    assert result["shortcut"] == "none" and result["analysis"] == "responses"
    assert sorted(r["std"] for r in result["responses"])[::-1] == \
        [next(r["std"] for r in result["responses"] if r["layer"] == n) for n in result["sorted"]]


def test_cli_gradients_with_lesion(tmp_path):
    assert cli_main(["analyze", "gradients", "resnet8", "--width", "2", "--batches", "1", "--batch-size", "16",
                     "--lesion", "--quiet", "--json", str(tmp_path / "g.json"),
                     "--plot", str(tmp_path / "g.png")]) == 0
    result = json.loads((tmp_path / "g.json").read_text())
    assert result["layers"][0]["param"] == "conv1.weight" and result["first_layer"] == result["layers"][0]
    assert [r["block"] for r in result["lesion"]] == ["layer1.0", "layer2.0", "layer3.0"]
    assert (tmp_path / "g.png").exists()



def test_cli_gradients_over_the_whole_training_split(tmp_path, capsys):
    """`--batches 0` is the whole split, as for paths and the lesion: the synthetic training split (5,000
    images) in batches of 2500 is 2 batches. It used to measure one batch and print "mean over 0 batch(es)"."""
    assert cli_main(["analyze", "gradients", "resnet8", "--width", "2", "--batches", "0", "--batch-size", "2500",
                     "--quiet", "--json", str(tmp_path / "g.json")]) == 0
    assert "mean over 2 batch(es)" in capsys.readouterr().out
    assert json.loads((tmp_path / "g.json").read_text())["data"]["measured_batches"] == 2

@pytest.mark.parametrize("argv,message", [
    (["analyze", "shortcuts", "resnet8"], "unknown analysis 'shortcuts'"),
    (["analyze", "paths", "resnet7"], "6n+2"),
    (["analyze", "paths", "no/such/file.pt"], "not found"),
    (["analyze", "paths", "resnet8", "--plot", "out.svg"], ".png"),
    (["analyze", "paths", "resnet8", "--lesion"], "--lesion belongs to"),
    (["analyze", "paths", "resnet8", "--model", "resnet8"], "not a checkpoint path"),
])
def test_cli_bad_input_gives_clear_errors(argv, message, capsys):
    assert cli_main(argv) == 2
    assert message in capsys.readouterr().err


def test_cli_checkpoint_of_another_architecture(checkpoint, capsys):
    assert cli_main(["analyze", "paths", checkpoint, "--model", "resnet14"]) == 2
    err = capsys.readouterr().err
    assert "resnet8" in err and "resnet14" in err
    assert cli_main(["analyze", "paths", checkpoint, "--shortcut", "A"]) == 2
    assert "fresh models" in capsys.readouterr().err
    assert cli_main(["analyze", "paths", checkpoint, "--model", "resnet8", "--shortcut", "A"]) == 2
    assert "unexpected keys" in capsys.readouterr().err  # B's projections do not fit option A


def test_checkpoint_commands_measure_on_the_data_the_checkpoint_records(tmp_path, monkeypatch, capsys):
    """A CIFAR-10 run's checkpoint is analysed on CIFAR-10 from its recorded (absolute) folder, from any
    working directory; a missing folder is refused with what is missing; --data overrides explicitly."""
    from resnetlab.models import ModelConfig
    from resnetlab.sources import resolve_data
    from resnetlab.train import TrainConfig, train
    tool = str(pathlib.Path(__file__).resolve().parents[2] / "shared" / "tools" / "cifar10_fixture.py")
    if not os.path.exists(tool):
        pytest.skip("../shared/tools/cifar10_fixture.py is not there")
    subprocess.run([sys.executable, tool, "batches", str(tmp_path / "cifar"), "--per-class", "10"], check=True,
                   capture_output=True)
    monkeypatch.chdir(tmp_path)
    train(TrainConfig(model=ModelConfig("resnet8", width=4), data="cifar10", data_dir="cifar", out="run",
                      iterations=2, batch_size=16, eval_every=2, log_every=1, precision="fp32", threads=1,
                      quiet=True))
    ckpt_path = str(tmp_path / "run" / "last.pt")
    from resnetlab.weights import load_checkpoint
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt["data"]["dir"] == str(tmp_path / "cifar")  # recorded absolute
    assert resolve_data(None, None, ckpt) == ("cifar10", str(tmp_path / "cifar"))
    assert resolve_data("synthetic", None, ckpt) == ("synthetic", None)  # explicit: another dataset
    assert resolve_data(None, None, None) == ("synthetic", None)  # a fresh model
    monkeypatch.chdir(tmp_path / "cifar")
    assert cli_main(["analyze", "responses", ckpt_path, "--batches", "1", "--batch-size", "8",
                     "--json", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["data"]["name"] == "cifar10"
    os.rename(tmp_path / "cifar", tmp_path / "moved")
    capsys.readouterr()
    assert cli_main(["analyze", "responses", ckpt_path]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "cifar") in err and "not there" in err and "--data-dir" in err


@pytest.mark.parametrize("shortcut", ["A", "none"])
def test_signal_norms_are_the_gradients_at_the_block_outputs(shortcut):
    """The backward hooks read exactly autograd's dL/d(block output) (taken here from forward-hook outputs),
    BN statistics are left as they were, and the signal is invariant to scaling a conv under BN."""
    torch.manual_seed(0)
    model = create_model("resnet8", shortcut=shortcut, width=4, seed=3)
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = dict(A.signal_norms(model, x, y))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    outs = {}
    handles = [b.register_forward_hook(lambda m, i, o, n=n: outs.__setitem__(n, o)) for n, b in model.blocks()]
    model.train()
    xi = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(xi), y)
    names = [n for n, _ in model.blocks()]
    grads = torch.autograd.grad(loss, [xi] + [outs[n] for n in names])
    for h in handles:
        h.remove()
    model.load_state_dict(before)
    assert list(got) == ["input"] + names
    for name, g in zip(["input"] + names, grads):
        assert got[name] == pytest.approx(g.norm().item(), rel=1e-5), name
    # Scaling a conv followed by BN by 4 changes nothing the loss sees: the signal stays, its weight
    # gradient is divided by 4 (what makes raw weight-gradient norms a confounded measure).
    scaled = create_model("resnet8", shortcut=shortcut, width=4, seed=3)
    with torch.no_grad():
        scaled.layer2[0].conv1.weight.mul_(4)
    again = dict(A.signal_norms(scaled, x, y))
    assert all(again[k] == pytest.approx(got[k], rel=1e-3) for k in got)
    g1 = A.gradient_norms(model, x, y)["layer2.0.conv1.weight"]
    g4 = A.gradient_norms(scaled, x, y)["layer2.0.conv1.weight"]
    assert g4 == pytest.approx(g1 / 4, rel=1e-3)
