"""Loss landscapes: filter normalisation, the origin, restored weights, twin directions, Hessian, CLI."""
import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnetlab import create_model
from resnetlab import landscape as L
from resnetlab.io import atomic_save
from resnetlab.weights import make_checkpoint
from resnetlab.cli import main as cli_main


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(shortcut="A", seed=0):
    return create_model("resnet8", shortcut=shortcut, width=2, seed=seed)


def _xy(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 12, 12, generator=g), torch.randint(0, 10, (n,), generator=g)


def _trained_bn(model, seed=1):
    """Non-trivial BN statistics so that eval mode differs from train mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
    return model


def test_filter_normalisation_gives_each_filter_its_weight_norm_and_zeros_bn_and_biases():
    model = _tiny("B")
    (d,) = L.random_directions(model, seed=3, n=1)
    params = dict(model.named_parameters())
    assert set(d) == set(params)
    for name, p in params.items():
        if p.dim() > 1:  # conv (Cout, Cin, k, k) and linear (out, in): one filter per output unit
            assert torch.allclose(d[name].flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1),
                                  rtol=1e-5, atol=0)
            assert not torch.allclose(d[name], p.detach())  # a random direction, not the weight itself
        else:  # BN weight/bias and fc.bias
            assert torch.count_nonzero(d[name]) == 0
    assert "layer1.0.bn1.weight" in d and "fc.bias" in d


def test_landscape_origin_equals_the_model_loss_and_weights_are_restored_bit_for_bit():
    model = _trained_bn(_tiny("B"))
    x, y = _xy()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    model.layer1[0].bn1.eval()  # one BN layer frozen by its user: every module's own mode comes back
    dirs = L.random_directions(model, seed=0)
    r2 = L.landscape_2d(model, x, y, dirs, span=0.5, steps=3, batch_size=10, bn="eval")
    r1 = L.landscape_1d(model, x, y, dirs[0], span=0.5, steps=3, batch_size=7, bn="eval")
    L.landscape_1d(model, x, y, dirs[0], span=0.5, steps=3, batch_size=7, bn="recompute")
    L.hessian_top_eigs(model, x, y, k=1, iters=3)
    assert model.training and not model.layer1[0].bn1.training and model.layer1[0].bn2.training  # modes restored
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        logits = model(x)
    loss = F.cross_entropy(logits, y).item()
    acc = (logits.argmax(1) == y).float().mean().item()
    assert r2["loss"].shape == (3, 3) and r2["alphas"][1] == 0 and r2["betas"][1] == 0
    assert r2["loss"][1, 1] == pytest.approx(loss, abs=1e-5)
    assert r1["loss"][1] == pytest.approx(loss, abs=1e-5)
    assert r2["loss0"] == pytest.approx(loss, abs=1e-5) and r2["acc"][1, 1] == pytest.approx(acc)
    assert r2["loss"][0, 0] != r2["loss"][1, 1]  # the corners really moved the weights
    # A point off the origin equals the loss of a model whose weights were moved by hand.
    moved = _trained_bn(_tiny("B"))
    moved.load_state_dict(before)
    with torch.no_grad():
        for k, p in moved.named_parameters():
            p.add_(-0.5 * dirs[0][k] + 0.5 * dirs[1][k])
    moved.eval()
    with torch.no_grad():
        assert r2["loss"][0, 2] == pytest.approx(F.cross_entropy(moved(x), y).item(), abs=1e-5)


def test_twins_share_directions_on_shared_parameters(tmp_path):
    a, b = _tiny("A", seed=5), _tiny("B", seed=5)  # twins: shared parameters are bit-identical
    da, db = L.random_directions(a, seed=1), L.random_directions(b, seed=1)
    shared = set(dict(a.named_parameters())) & set(dict(b.named_parameters()))
    extra = set(dict(b.named_parameters())) - shared
    assert extra == {"layer2.0.downsample.0.weight", "layer2.0.downsample.1.weight",
                     "layer2.0.downsample.1.bias", "layer3.0.downsample.0.weight",
                     "layer3.0.downsample.1.weight", "layer3.0.downsample.1.bias"}
    for i in range(2):
        assert all(torch.equal(da[i][k], db[i][k]) for k in shared)

    # Through a file, with the twin trained apart: the stored raw tensors are used as they are.
    path = str(tmp_path / "dirs.pt")
    L.save_directions(L.raw_directions(a, seed=7), path, seed=7)
    base, seed = L.load_directions(path)
    assert seed == 7
    with torch.no_grad():
        for p in b.parameters():
            p.mul_(1.5)
    from_file = L.random_directions(b, seed=0, base=base, base_seed=seed)
    fresh = L.random_directions(b, seed=7)  # the seeded draws by name are what the file holds
    raw_b = L.raw_directions(b, seed=7)
    for i in range(2):
        assert all(torch.equal(base[i][k], raw_b[i][k]) for k in shared)
        assert all(torch.equal(from_file[i][k], fresh[i][k]) for k in shared | extra)
        w = dict(b.named_parameters())["layer2.0.downsample.0.weight"]
        assert torch.allclose(from_file[i]["layer2.0.downsample.0.weight"].flatten(1).norm(dim=1),
                              w.detach().flatten(1).norm(dim=1), rtol=1e-5)
    other = create_model("resnet14", width=2, seed=0)
    other_base = L.raw_directions(create_model("resnet8", width=3, seed=0), seed=0)
    with pytest.raises(ValueError, match="shape"):
        L.random_directions(other, seed=0, base=other_base)


def test_top_hessian_eigenvalue_matches_an_explicit_hessian():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 3)).double()
    x = torch.randn(20, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (20,))
    params = list(model.parameters())
    n = sum(p.numel() for p in params)
    # The explicit Hessian, column by column (Hessian-vector products against the basis).
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    flat = torch.cat([g.reshape(-1) for g in grads])
    hessian = torch.stack([torch.cat([h.reshape(-1) for h in torch.autograd.grad(flat[i], params, retain_graph=True)])
                           for i in range(n)])
    eigs = torch.linalg.eigvalsh((hessian + hessian.T) / 2)
    top2 = sorted(eigs.tolist(), reverse=True)[:2]
    lanczos = L.hessian_top_eigs(model, x, y, k=2, iters=n, weights_only=False)
    assert lanczos == pytest.approx(top2, rel=1e-6)
    assert L.hessian_eigs(model, x, y, iters=n, weights_only=False)[0] == pytest.approx(eigs[0].item(), abs=1e-6)
    biggest = max(eigs.tolist(), key=abs)
    power = L.hessian_top_eigs(model, x, y, k=1, iters=300, method="power", weights_only=False)
    assert power[0] == pytest.approx(biggest, rel=1e-4)
    few = L.hessian_top_eigs(model, x, y, k=1, iters=8, batch_size=7, weights_only=False)  # batched HVPs
    assert few[0] == pytest.approx(top2[0], rel=1e-3)
    # The default: the weights of dimension > 1 only (Li et al.), the sub-Hessian on those entries.
    is_weight = torch.cat([torch.full((p.numel(),), p.ndim > 1) for p in params])
    sub = torch.linalg.eigvalsh(((hessian + hessian.T) / 2)[is_weight][:, is_weight])
    assert L.hessian_top_eigs(model, x, y, k=1, iters=n) == pytest.approx([sub[-1].item()], rel=1e-6)
    ext = L.hessian_extremes(model, x, y, iters=2)
    assert ext["converged"] and ext["min"] == pytest.approx(sub[0].item(), rel=0.02)
    assert ext["max"] == pytest.approx(sub[-1].item(), rel=1e-3)
    assert ext["ratio"] == pytest.approx(abs(ext["min"] / ext["max"]))


def test_flatness_summaries_on_known_landscapes():
    alphas = np.linspace(-1, 1, 21)
    r1 = {"kind": "1d", "alphas": alphas, "loss": 2.0 + alphas ** 2, "acc": np.zeros(21), "loss0": 2.0,
          "acc0": 0.5, "span": 1.0, "steps": 21}
    f = L.flatness(r1, radius=0.5)["1d"]
    assert f["rise_at_r"] == pytest.approx(0.25)
    assert f["mean_rise_within_r"] == pytest.approx(np.mean(alphas[np.abs(alphas) <= 0.5] ** 2))
    assert f["max_rise"] == pytest.approx(1.0)
    a, b = np.meshgrid(alphas, alphas, indexing="ij")
    r2 = {"kind": "2d", "alphas": alphas, "betas": alphas, "loss": 1.0 + 3 * a - b + np.abs(0 * a),
          "acc": np.zeros((21, 21)), "loss0": 1.0, "acc0": 0.5, "span": 1.0, "steps": 21}
    f2 = L.flatness({"2d": r2, "hessian": {"max": 4.0, "min": -1.0}})
    assert f2["2d"]["rise_at_r"] == pytest.approx(0.0, abs=1e-12)  # a plane averages to 0 on a circle
    assert f2["2d"]["radius"] == 0.5 and f2["hessian_min_max_ratio"] == 0.25


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "resnet8.pt"
    atomic_save(make_checkpoint(_trained_bn(_tiny("B"))), path)
    return str(path)


def test_cli_landscape_writes_grids_settings_and_plots(checkpoint, tmp_path, capsys):
    out = tmp_path / "run"
    dirs = tmp_path / "shared-directions.pt"
    argv = ["landscape", checkpoint, "--data", "synthetic", "--subset", "24", "--steps", "3", "--span", "0.5", "--seed", "2",
            "--hessian-iters", "3", "--hessian-samples", "8", "--directions", str(dirs), "--out", str(out),
            "--quiet", "--device", "cpu"]
    assert cli_main(argv) == 0
    z = np.load(out / "landscape.npz")
    assert z["loss_2d"].shape == (3, 3) and z["loss_1d"].shape == (3,)
    assert z["loss_2d"][1, 1] == pytest.approx(float(z["loss0"]), abs=1e-5)
    assert z["loss_1d"][1] == pytest.approx(float(z["loss0"]), abs=1e-5)
    settings = json.loads(str(z["settings"]))
    assert (settings["seed"], settings["span"], settings["steps"], settings["subset"]) == (2, 0.5, 3, 24)
    assert settings["model_config"]["name"] == "resnet8" and settings["model_config"]["shortcut"] == "B"
    summary = json.loads((out / "flatness.json").read_text())
    assert {"1d", "2d", "hessian_max", "hessian_min"} <= set(summary["flatness"])
    for png in ("landscape_1d.png", "landscape_2d_contour.png", "landscape_2d_surface.png"):
        assert (out / png).stat().st_size > 1000
    assert dirs.exists() and "loss(0)" in capsys.readouterr().out
    # The twin (option A, same seed) reuses the file: 1-D only, so this stays quick.
    assert cli_main(["landscape", "resnet8", "--shortcut", "A", "--width", "2", "--seed", "2", "--subset", "24",
                     "--steps", "3", "--dims", "1", "--hessian-iters", "0", "--directions", str(dirs),
                     "--out", str(tmp_path / "twin"), "--quiet"]) == 0
    twin = json.loads(str(np.load(tmp_path / "twin" / "landscape.npz")["settings"]))
    assert twin["directions_file"] == str(dirs)
    stored, _ = L.load_directions(str(dirs))
    written, _ = L.load_directions(str(tmp_path / "twin" / "directions.pt"))
    assert all(torch.equal(written[0][k], stored[0][k]) for k in written[0])


@pytest.mark.parametrize("extra,message", [
    (["--span", "0"], "span must be a positive"),
    (["--span", "-1"], "span must be a positive"),
    (["--steps", "1"], "steps must be an integer >= 2"),
    (["--model", "resnet20"], "not the resnet20"),
    (["--subset", "0"], "--subset must be >= 1"),
    (["--dims", "3"], "--dims must be 1 or 2"),
])
def test_cli_landscape_bad_input(checkpoint, extra, message, tmp_path, capsys):
    assert cli_main(["landscape", checkpoint, "--out", str(tmp_path / "x"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # nothing half-written


def test_cli_landscape_directions_of_another_architecture(tmp_path, capsys):
    path = str(tmp_path / "dirs.pt")
    L.save_directions(L.raw_directions(create_model("resnet8", width=4, seed=0), seed=0), path, seed=0)
    assert cli_main(["landscape", "resnet8", "--width", "2", "--directions", path, "--subset", "8",
                     "--out", str(tmp_path / "x")]) == 2
    assert "not a twin" in capsys.readouterr().err


def test_batch_and_recompute_modes_are_scale_invariant_and_eval_mode_is_not():
    """Filter normalisation assumes scaling a filter leaves the loss alone. Doubling every conv weight of a
    (briefly) trained BN net: the batch- and recompute-mode losses change by under 1%, the eval-mode loss
    (stored running statistics) moves. The model's own buffers are never touched."""
    from resnetlab.datasets import load_dataset
    from resnetlab.stream import Normalization, TrainStream
    from resnetlab.train import train_step
    torch.manual_seed(0)
    data = load_dataset("synthetic", synthetic_train=512, synthetic_test=10)["train"]
    norm = Normalization.fit(data.x, "channel")
    stream = TrainStream(data, 64, seed=0, normalization=norm)
    model = create_model("resnet8", width=8, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    for step in range(30):
        train_step(model, opt, *stream.batch(step))
    x, y = norm(data.x[:256]), data.y[:256]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = {bn: L.evaluate_loss(model, x, y, 128, bn)[0] for bn in L.BN_MODES}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    doubled = copy.deepcopy(model)
    with torch.no_grad():
        for m in doubled.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(2)
    again = {bn: L.evaluate_loss(doubled, x, y, 128, bn)[0] for bn in L.BN_MODES}
    assert abs(again["batch"] / loss["batch"] - 1) < 0.01
    assert abs(again["recompute"] / loss["recompute"] - 1) < 0.01
    assert abs(again["eval"] / loss["eval"] - 1) > 0.5
    # recompute ignores the stored statistics: a copy with reset running statistics gives the same loss
    reset = copy.deepcopy(model)
    for m in reset.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
    assert L.evaluate_loss(reset, x, y, 128, "recompute")[0] == pytest.approx(loss["recompute"], rel=1e-6)
    assert L.evaluate_loss(reset, x, y, 128, "eval")[0] != pytest.approx(loss["eval"], rel=1e-2)


def test_direction_seeds_give_flatness_mean_and_spread(tmp_path, checkpoint, capsys):
    out = tmp_path / "land"
    assert cli_main(["landscape", checkpoint, "--data", "synthetic", "--subset", "16", "--steps", "3",
                     "--dims", "1", "--hessian-iters", "0", "--direction-seeds", "3", "--out", str(out),
                     "--quiet"]) == 0
    summary = json.loads((out / "flatness.json").read_text())
    per_seed = [f["1d"]["rise_at_r"] for f in summary["flatness_per_direction_seed"]]
    spread = summary["flatness_over_direction_seeds"]["1d"]["rise_at_r"]
    assert len(per_seed) == 3 and len(set(per_seed)) == 3  # three different direction draws
    assert spread["mean"] == pytest.approx(np.mean(per_seed))
    assert spread["std"] == pytest.approx(np.std(per_seed, ddof=1))
    assert per_seed[0] == summary["flatness"]["1d"]["rise_at_r"]  # the first seed is the plotted one
    assert "over 3 direction seeds" in capsys.readouterr().out
    assert cli_main(["landscape", checkpoint, "--direction-seeds", "0", "--out", str(tmp_path / "x")]) == 2


def test_the_direction_seeds_are_recorded_and_follow_a_direction_file(tmp_path, checkpoint):
    """flatness.json names the seeds of its direction pairs. With a direction file drawn at seed 0 and --seed 5,
    the pairs were seed 0 (the file's), then 6 and 7, and nothing recorded it; now 0, 1, 2, as the file's twin."""
    common = [checkpoint, "--data", "synthetic", "--subset", "16", "--steps", "3", "--dims", "1",
              "--hessian-iters", "0", "--direction-seeds", "3", "--quiet"]
    dirs = str(tmp_path / "dirs.pt")
    assert cli_main(["landscape", *common, "--out", str(tmp_path / "a"), "--directions", dirs]) == 0
    assert cli_main(["landscape", *common, "--out", str(tmp_path / "b"), "--directions", dirs, "--seed", "5"]) == 0
    assert cli_main(["landscape", *common, "--out", str(tmp_path / "c"), "--seed", "5"]) == 0
    read = {k: json.loads((tmp_path / k / "flatness.json").read_text()) for k in "abc"}
    assert [read[k]["settings"]["direction_seeds"] for k in "abc"] == [[0, 1, 2], [0, 1, 2], [5, 6, 7]]
    # b's second pair is seed 1's on seed 5's subset: what a run on that subset gets from a file drawn at seed 1
    dirs1 = str(tmp_path / "dirs1.pt")
    one = [*common[:-3], "--direction-seeds", "1", "--quiet"]
    assert cli_main(["landscape", *one, "--out", str(tmp_path / "e"), "--directions", dirs1, "--seed", "1"]) == 0
    assert cli_main(["landscape", *one, "--out", str(tmp_path / "f"), "--directions", dirs1, "--seed", "5"]) == 0
    f = json.loads((tmp_path / "f" / "flatness.json").read_text())
    assert f["settings"]["direction_seeds"] == [1]
    assert read["b"]["flatness_per_direction_seed"][1]["1d"]["rise_at_r"] == \
        pytest.approx(f["flatness"]["1d"]["rise_at_r"], rel=1e-6)


def test_radius_beyond_the_grid_is_refused(checkpoint, tmp_path, capsys):
    assert cli_main(["landscape", checkpoint, "--radius", "5", "--span", "1", "--out", str(tmp_path / "x")]) == 2
    assert "--radius must be in (0, span]" in capsys.readouterr().err
