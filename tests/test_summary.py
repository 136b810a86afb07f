"""The shape inspector: published MAC counts, per-row shapes, formats, diff, errors, the CLI."""
import json

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from resnetlab import cli, count_parameters, create_model
from resnetlab.summary import build_model, diff, human, summarize

# Multiply-adds per image at 224x224 (conv + linear). Rounded, these are torchvision's published GFLOPS
# (1.81 / 3.66 / 4.09 / 7.80 / 11.51); stride on the first 1x1 (the paper) gives the paper's bottleneck nets.
MACS_224 = {"resnet18": 1_814_073_344, "resnet34": 3_663_761_408, "resnet50": 4_089_184_256,
            "resnet101": 7_801_405_440, "resnet152": 11_513_626_624}
PUBLISHED_G = {"resnet18": 1.814, "resnet34": 3.664, "resnet50": 4.089, "resnet101": 7.801, "resnet152": 11.514}
MACS_224_STRIDE_1X1 = {"resnet50": 3_857_973_248, "resnet101": 7_570_194_432, "resnet152": 11_282_415_616}
PUBLISHED_G_1X1 = {"resnet50": 3.858, "resnet101": 7.570, "resnet152": 11.282}
RESNET20_MACS = 40_551_040


def _flop_counter_macs(model, size):
    """An independent count: PyTorch's FlopCounterMode counts 2 FLOPs per multiply-add of conv and mm."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.zeros(1, model.conv1.in_channels, size, size, device="meta"))
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("name", sorted(MACS_224))
def test_imagenet_macs_match_torchvision(name):
    model = build_model(name)
    s = summarize(model)
    assert s.input_shape == (1, 3, 224, 224)
    assert s.total_macs == MACS_224[name]
    assert round(s.total_macs / 1e9, 3) == PUBLISHED_G[name]
    assert s.total_params == count_parameters(model) == sum(r.params for r in s.rows)
    assert s.total_macs == sum(r.macs for r in s.rows)


@pytest.mark.parametrize("name", sorted(MACS_224_STRIDE_1X1))
def test_paper_bottleneck_stride_on_1x1(name):
    s = summarize(build_model(name, stride_at="1x1"))
    assert s.total_macs == MACS_224_STRIDE_1X1[name]
    assert round(s.total_macs / 1e9, 3) == PUBLISHED_G_1X1[name]


def test_resnet20_macs_and_independent_count():
    model = build_model("resnet20")
    s = summarize(model)
    assert s.total_macs == RESNET20_MACS
    assert abs(s.total_macs - 40.6e6) / 40.6e6 < 0.005  # the paper's "about 40.6M"... to 0.5%
    assert s.total_macs == _flop_counter_macs(model, 32)
    for name, kw, size in (("resnet50", dict(stride_at="1x1"), 160), ("resnet18", dict(width=32), 64),
                           ("resnet56", dict(shortcut="C"), 40)):
        m = build_model(name, **kw)
        assert summarize(m, size).total_macs == _flop_counter_macs(m, size), name


class _OutputDevices(TorchDispatchMode):
    """Records the device type of every tensor that an op returns while it is active."""

    def __init__(self):
        super().__init__()
        self.devices = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.devices |= {t.device.type for t in tree_leaves(out) if isinstance(t, torch.Tensor)}
        return out


def test_resnet152_runs_on_meta_and_counts_match_independent_ones():
    model = build_model("resnet152")
    with _OutputDevices() as seen:
        s = summarize(model)
    assert seen.devices == {"meta"} and all(p.is_meta for p in model.parameters())  # nothing materialised
    assert s.total_macs == MACS_224["resnet152"] and s.total_params == 60_192_808  # torchvision's figures
    # layer1.0 at 56x56: 1x1 64->64, 3x3 64->64, 1x1 64->256 and the 1x1 64->256 projection
    assert s.row("layer1.0").macs == 56 * 56 * (64 * 64 + 9 * 64 * 64 + 64 * 256 + 64 * 256)
    assert s.row("fc").macs == 2048 * 1000
    # a model with real weights: the pass runs on meta stand-ins too and leaves its tensors alone
    real = create_model("resnet20", seed=0)
    before = {k: v.clone() for k, v in real.state_dict().items()}
    with _OutputDevices() as seen:
        s20 = summarize(real, batch=3)
    assert seen.devices == {"meta"}
    assert all(torch.equal(v, before[k]) for k, v in real.state_dict().items())
    # ... and its count equals FlopCounterMode's over a real CPU forward pass of a random batch of two
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        real.eval()(torch.randn(2, 3, 32, 32))
    assert s20.total_macs == counter.get_total_flops() // (2 * 2) == RESNET20_MACS
    assert s20.row("conv1").input_shape == (3, 3, 32, 32)


def test_resnet20_rows():
    s = summarize(build_model("resnet20"))
    assert [r.name for r in s.rows] == ["conv1"] + [f"layer{i}.{j}" for i in (1, 2, 3) for j in range(3)] + [
        "avgpool", "fc"]
    stem = s.row("conv1")
    assert (stem.type, stem.kernels, stem.stride, stem.params) == ("Conv2d+BN+ReLU", "3x3,16", 1, 16 * 27 + 32)
    assert stem.output_shape == (1, 16, 32, 32)
    r = s.row("layer2.0")
    assert (r.input_shape, r.output_shape) == ((1, 16, 32, 32), (1, 32, 16, 16))
    assert (r.type, r.kernels, r.stride, r.shortcut) == ("BasicBlock", "3x3,32 / 3x3,32", 2, "zero-pad")
    assert r.params == 32 * 16 * 9 + 32 * 32 * 9 + 4 * 32
    assert r.macs == 16 * 16 * 32 * (16 * 9 + 32 * 9)
    assert s.row("layer2.1").shortcut == "identity"
    assert s.row("layer3.2").output_shape == (1, 64, 8, 8)
    assert s.row("avgpool").output_shape == (1, 64, 1, 1)
    fc = s.row("fc")
    assert (fc.input_shape, fc.output_shape, fc.macs, fc.params) == ((1, 64), (1, 10), 640, 650)
    assert s.total_params == 269_722


def test_imagenet_rows_and_shortcut_kinds():
    s = summarize(build_model("resnet34", shortcut="B"))
    assert [r.name for r in s.rows][:3] == ["conv1", "maxpool", "layer1.0"]
    assert len(s.rows) == 2 + 16 + 2
    assert s.row("conv1").kernels == "7x7,64" and s.row("conv1").output_shape == (1, 64, 112, 112)
    assert s.row("maxpool").output_shape == (1, 64, 56, 56) and s.row("maxpool").stride == 2
    assert s.row("layer2.0").shortcut == "projection"
    assert s.row("layer2.0").output_shape == (1, 128, 28, 28)
    assert s.row("layer2.1").shortcut == "identity"
    assert s.row("layer4.2").output_shape == (1, 512, 7, 7)
    assert summarize(build_model("resnet34", shortcut="A")).row("layer2.0").shortcut == "zero-pad"
    assert {r.shortcut for r in summarize(build_model("resnet34", shortcut="none")).rows if r.shortcut} == {"none"}
    assert {r.shortcut for r in summarize(build_model("resnet34", shortcut="C")).rows if r.shortcut} == {
        "projection"}
    b = summarize(build_model("resnet50"))
    r = b.row("layer1.0")
    assert (r.type, r.kernels, r.shortcut, r.output_shape) == (
        "Bottleneck", "1x1,64 / 3x3,64 / 1x1,256", "projection", (1, 256, 56, 56))


def test_preact_final_bn_row():
    s = summarize(build_model("preact-resnet29"))  # 9n+2 with n=3: pre-activated bottlenecks
    assert s.rows[0].type == "Conv2d"  # a pre-activated CIFAR net has no BN-ReLU in its stem
    assert [r.name for r in s.rows][-3:] == ["final_bn", "avgpool", "fc"]
    assert s.row("final_bn").type == "BN+ReLU" and s.row("final_bn").params == 2 * 256
    assert s.row("layer1.0").type == "PreActBottleneck"
    assert s.total_params == count_parameters(build_model("preact-resnet29"))


def test_real_forward_matches_shape_only_pass_and_leaves_the_model_alone():
    model = create_model("resnet20", shortcut="B", seed=0)
    model.train()
    model.layer1[0].bn1.eval()  # one BN layer frozen by its user: every module's own mode comes back
    before = {k: v.clone() for k, v in model.state_dict().items()}
    real = summarize(model, shape_only=False)
    assert model.training and not model.layer1[0].bn1.training and model.layer1[0].bn2.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # BN stats untouched
    assert real.rows == summarize(model).rows == summarize(build_model("resnet20", shortcut="B")).rows


def test_other_input_sizes():
    m = build_model("resnet18")
    s64, s160 = summarize(m, 64), summarize(m, 160, batch=4)
    assert s64.row("layer4.1").output_shape == (1, 512, 2, 2)
    assert s160.row("layer4.1").output_shape == (4, 512, 5, 5)
    assert s160.row("conv1").input_shape == (4, 3, 160, 160)
    assert s64.row("fc").macs == s160.row("fc").macs == 512 * 1000  # per image, whatever the batch
    assert s64.total_params == s160.total_params == 11_689_512
    assert summarize(m, (224, 160)).row("layer4.0").output_shape == (1, 512, 7, 5)
    tiny = summarize(m, 16)
    assert tiny.row("layer4.0").input_shape == (1, 256, 1, 1)
    assert any("layer4.0" in n for n in tiny.notes) and not s64.notes


def test_input_errors():
    m = build_model("resnet18")
    with pytest.raises(ValueError, match="at least 1x1"):
        summarize(m, 0)
    with pytest.raises(ValueError, match=r"takes 3-channel input \(its first convolution conv1.*got 1"):
        summarize(m, in_channels=1)
    assert summarize(build_model("resnet20", in_channels=1), in_channels=1).input_shape == (1, 1, 32, 32)
    # these ResNets pad every convolution, so they accept even 1x1; an unpadded net shows the check
    net = nn.Sequential(nn.Conv2d(3, 8, 5), nn.MaxPool2d(2), nn.Conv2d(8, 8, 5))
    # 9 -> 5 after the first 5x5 convolution, 2 after the pool: the second 5x5 convolution no longer fits
    for shape_only in (True, False):
        with pytest.raises(ValueError, match=r"input 9x9 is too small for Sequential: the feature map is 2x2 "
                                             r"when it reaches layer '2' \(Conv2d\), whose 5x5 kernel needs at "
                                             r"least 5x5"):
            summarize(net, 9, shape_only=shape_only)
    with pytest.raises(ValueError, match=r"input 13x14 .* is 1x2 when it reaches layer '1' \(MaxPool2d\), whose "
                                         r"2x2 window needs at least 2x2"):
        summarize(nn.Sequential(nn.Conv2d(3, 8, 13), nn.MaxPool2d(2)), (13, 14))
    assert summarize(net, 14).row("2").output_shape == (1, 8, 1, 1)
    with pytest.raises(ValueError, match="image_size is required"):
        summarize(net)


class _ReadsValues(nn.Module):
    """A forward pass that looks at tensor values, which the shape-only (meta) pass cannot do."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = self.conv(x)
        if float(y.abs().sum()) >= 0:
            y = y.mean((2, 3))
        return self.fc(y)


def test_falls_back_to_a_real_forward_pass():
    s = summarize(_ReadsValues(), 8)
    assert [(r.name, r.output_shape, r.macs) for r in s.rows] == [
        ("conv", (1, 4, 6, 6), 4 * 36 * 27), ("fc", (1, 2), 8)]


def test_formats():
    s = summarize(build_model("resnet20"))
    assert human(11_689_512) == "11.7M" and human(1_814_073_344) == "1.81G" and human(464) == "464"
    d = json.loads(s.to_json())
    assert d["total_macs"] == RESNET20_MACS and d["total_params"] == 269_722
    assert sum(r["macs"] for r in d["rows"]) == d["total_macs"]
    assert sum(r["params"] for r in d["rows"]) == d["total_params"]
    assert d["rows"][4]["name"] == "layer2.0" and d["rows"][4]["output_shape"] == [1, 32, 16, 16]
    assert d["config"]["name"] == "resnet20" and d["config"]["shortcut"] == "A"
    text = s.to_text().splitlines()
    table = text[2:]
    assert table[0].split() == ["layer", "type", "input", "output", "kernels", "stride", "shortcut", "params",
                                "MACs"]
    full = [line for line in table if not line.endswith(" ")]
    assert len({len(line) for line in full if line.split()[-1] not in ("avg",)}) == 1  # right-aligned MACs
    assert "40.6M" in table[-1] and "270K" in table[-1]
    md = s.to_markdown().splitlines()
    rows = [line for line in md if line.startswith("|")]
    assert len(rows) == 2 + len(s.rows) + 1 and all(r.count("|") == 10 for r in rows)
    with pytest.raises(ValueError, match="unknown format"):
        s.format("html")


def test_diff_option_a_vs_b():
    d = diff(build_model("resnet20", shortcut="A"), build_model("resnet20", shortcut="B"))
    assert [name for name, _, _ in d.rows] == ["layer2.0", "layer3.0"]
    assert [(a.shortcut, b.shortcut) for _, a, b in d.rows] == [("zero-pad", "projection")] * 2
    assert d.params_delta == d.numel_only_b == 2_752 and not d.only_a and not d.reshaped
    assert {n for n, _ in d.only_b} == {f"layer{i}.0.downsample.{j}.{w}" for i in (2, 3) for j, w in
                                        ((0, "weight"), (1, "weight"), (1, "bias"))}
    assert d.macs_delta == 16 * 16 * 16 * 32 + 8 * 8 * 32 * 64
    assert "layer2.0.downsample (576), layer3.0.downsample (2,176)" in d.to_text()
    assert json.loads(d.to_json())["params_delta"] == 2_752
    same = diff(build_model("resnet20"), build_model("resnet20"))
    assert not same.rows and same.params_delta == 0
    deeper = diff(build_model("resnet20"), build_model("resnet32"))
    assert [n for n, a, b in deeper.rows if a is None] == [f"layer{i}.{j}" for i in (1, 2, 3) for j in (3, 4)]
    assert deeper.params_delta == 464_154 - 269_722


def test_cli_summary(capsys):
    assert cli.main(["summary", "resnet20"]) == 0
    out = capsys.readouterr().out
    assert "40,551,040" in out and "zero-pad" in out and "layer3.2" in out
    assert cli.main(["summary", "resnet34", "--shortcut", "C", "--format", "json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["total_params"] == 22_716_840 and d["total_macs"] == sum(r["macs"] for r in d["rows"])
    assert cli.main(["summary", "resnet50", "--stride-at", "1x1", "--image-size", "224", "--format",
                     "markdown"]) == 0
    assert "3,857,973,248" in capsys.readouterr().out
    assert cli.main(["summary", "resnet20", "--preact", "--width", "32", "--num-classes", "100"]) == 0
    out = capsys.readouterr().out
    assert "PreActBasicBlock" in out and "1x100" in out and "final_bn" in out


def test_cli_config_file(tmp_path, capsys):
    (tmp_path / "model.yaml").write_text("shortcut: B\nwidth: 8\n")
    assert cli.main(["summary", "resnet20", "--config", str(tmp_path / "model.yaml"), "--format", "json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["config"]["shortcut"] == "B" and d["config"]["width"] == 8
    assert d["rows"][0]["output_shape"] == [1, 8, 32, 32]
    assert d["total_params"] == count_parameters(create_model("resnet20", shortcut="B", width=8))


def test_cli_diff(capsys):
    assert cli.main(["summary", "resnet20", "--shortcut", "A", "--diff", "resnet20:shortcut=B"]) == 0
    out = capsys.readouterr().out
    assert "2 of 12 rows differ" in out and "(+2,752)" in out
    # MODEL_B inherits MODEL's options: only the stride position differs here
    assert cli.main(["summary", "resnet50", "--shortcut", "C", "--diff", "resnet50:stride_at=1x1",
                     "--format", "json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["params_delta"] == 0 and d["macs_delta"] < 0 and "shortcut=C" in d["b"]
    assert cli.main(["summary", "resnet20", "--diff", "resnet20:bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err


def test_cli_errors(capsys):
    assert cli.main(["summary", "resnet19"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("resnetlab summary: error:") and "6n+2" in err
    assert cli.main(["summary", "nosuchnet"]) == 2
    assert "unknown model 'nosuchnet'" in capsys.readouterr().err
    assert cli.main(["summary", "resnet18", "--image-size", "0"]) == 2
    assert "at least 1x1" in capsys.readouterr().err
    assert cli.main(["summary", "resnet20", "--shortcut", "D"]) == 2
    assert "shortcut" in capsys.readouterr().err


def test_cli_models(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert "resnet1202" in out and "19.4M" in out and "preact-resnet1001" in out
    assert cli.main(["models", "--format", "json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["resnet20"]["params"] == 269_722 and rows["resnet20"]["shortcut"] == "A"
    assert rows["resnet50"]["params"] == 25_557_032 and rows["resnet50"]["block"] == "bottleneck"
    assert rows["resnet110"]["depth"] == 110 and rows["preact-resnet164"]["preact"]
