"""Evaluation and prediction: metrics equal a direct computation, ensembles and flip TTA average
probabilities, predict decodes image files, and bad inputs give clear errors (exit code 2 on the CLI)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from resnetlab.models import ModelConfig
import torch
import torch.nn.functional as F

from resnetlab import cli, create_model
from resnetlab.datasets import ArrayDataset, load_dataset
from resnetlab.io import atomic_save
from resnetlab.weights import make_checkpoint
from resnetlab.evaluate import evaluate, load_for_eval, load_image, predict
from resnetlab.images import ImageFolder
from resnetlab.stream import Normalization

SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared")
CLASSES = [f"c{i}" for i in range(10)]


def tiny_model(seed, num_classes=10, **kw):
    """A resnet8 of width 4 whose classifier is scaled up, so that its predictions vary between images."""
    torch.manual_seed(seed)
    model = create_model("resnet8", width=4, num_classes=num_classes, seed=seed, **kw)
    with torch.no_grad():
        model.fc.weight.mul_(40.0)
    return model.eval()


def tiny_data(n=70, seed=0, num_classes=10, size=32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    y = torch.randint(0, num_classes, (n,), generator=g)
    return ArrayDataset(x, y, [f"c{i}" for i in range(num_classes)])


def save_ckpt(model, path, norm, classes=CLASSES):
    atomic_save(make_checkpoint(model, normalization=norm.state_dict(), classes=list(classes),
                                data={"name": "synthetic", "image_size": 32}, step=0, config={}), path)
    return str(path)


@pytest.fixture(scope="module")
def data():
    return tiny_data()


@pytest.fixture(scope="module")
def norm(data):
    return Normalization.fit(data.x, "channel")


def direct_log_probs(model, norm, x, flip=False):
    with torch.no_grad():
        logp = F.log_softmax(model(norm(x)), dim=1)
        if flip:
            p = (logp.exp() + F.softmax(model(norm(x.flip(3))), dim=1)) / 2
            logp = p.log()
    return logp


def metrics(logp, y):
    top5 = logp.topk(5, dim=1).indices
    return {"top1": (logp.argmax(1) == y).float().mean().item(),
            "top5": (top5 == y[:, None]).any(1).float().mean().item(),
            "loss": F.nll_loss(logp, y).item()}


def assert_metrics(result, expected, n):
    # accuracies are counts over n images: compare the counts exactly
    assert round(result["top1"] * n) == round(expected["top1"] * n)
    assert round(result["top5"] * n) == round(expected["top5"] * n)
    assert result["loss"] == pytest.approx(expected["loss"], rel=1e-5, abs=1e-6)


def test_top1_top5_loss_equal_direct_computation(data, norm):
    model = tiny_model(0)
    expected = metrics(direct_log_probs(model, norm, data.x), data.y)
    assert 0.0 < expected["top1"] < expected["top5"] < 1.0  # the numbers below are not trivial
    result = evaluate(model, data, norm, batch_size=32, device="cpu")  # 70 = 32 + 32 + 6: a ragged batch
    assert result["n"] == len(data.y)
    assert_metrics(result, expected, len(data.y))
    # errors are the wrong counts over n, as a reader would divide them (not 1 - accuracy, off in the last bit)
    n = len(data.y)
    assert result["error"] == (n - round(expected["top1"] * n)) / n
    assert result["top5_error"] == (n - round(expected["top5"] * n)) / n
    assert result["members"][0]["top1"] == result["top1"]
    assert model.training is False


def test_training_reports_what_evaluate_measures_on_its_checkpoints(tmp_path):
    """The val/test errors train() logs are evaluate() of its checkpoints: one evaluator for both."""
    from resnetlab.train import TrainConfig, train
    out = tmp_path / "run"
    final = train(TrainConfig(model=ModelConfig("resnet8", width=4), data="synthetic", batch_size=32, precision="fp32",
                              threads=1, quiet=True, out=str(out), iterations=20, log_every=10, eval_every=10,
                              checkpoint_every=10, val_split=500))
    sets = load_dataset("synthetic", val_split=500)
    last = load_for_eval(out / "last.pt")
    test = evaluate(last.model, sets["test"], last.normalization)
    assert 0.0 < test["error"] < 0.9 and test["top5_error"] < test["error"]  # trained a little, not at all
    assert final["test_error"] == test["error"] and final["test_top5_error"] == test["top5_error"]
    with open(out / "metrics.jsonl") as fh:
        logged = [json.loads(line) for line in fh]
    logged_test = next(e for e in logged if e["kind"] == "eval" and e["split"] == "test" and e["step"] == 20)
    assert logged_test["loss"] == pytest.approx(test["loss"], rel=1e-6)
    best = load_for_eval(out / "best.pt")
    val = evaluate(best.model, sets["val"], best.normalization)
    assert best.checkpoint["best_val_error"] == val["error"] == min(
        e["error"] for e in logged if e["kind"] == "eval" and e["split"] == "val")


def test_channels_last_inputs_change_no_result(data, norm):
    """channels_last=True feeds the model channels_last inputs, as training does."""
    model = tiny_model(16)
    plain = evaluate(model, data, norm, batch_size=32, device="cpu")
    model = model.to(memory_format=torch.channels_last)
    formats = []
    model.register_forward_pre_hook(
        lambda m, args: formats.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    cl = evaluate(model, data, norm, batch_size=32, device="cpu", channels_last=True)
    assert formats == [True, True, True]  # one forward per batch, each in channels_last
    assert cl["error"] == plain["error"] and cl["top5_error"] == plain["top5_error"]
    assert cl["loss"] == pytest.approx(plain["loss"], rel=1e-5)


def test_confusion_rows_and_diagonal(data, norm):
    model = tiny_model(1)
    result = evaluate(model, data, norm, batch_size=25)
    conf = torch.tensor(result["confusion"])
    assert conf.shape == (10, 10)
    counts = torch.bincount(data.y, minlength=10)
    assert conf.sum(1).tolist() == counts.tolist()
    pred = direct_log_probs(model, norm, data.x).argmax(1)
    assert conf.sum(0).tolist() == torch.bincount(pred, minlength=10).tolist()
    for i, entry in enumerate(result["per_class"]):
        assert entry["class"] == f"c{i}"
        assert entry["n"] == counts[i].item()
        assert entry["correct"] == conf[i, i].item() == ((pred == i) & (data.y == i)).sum().item()
        if entry["n"]:
            assert entry["accuracy"] == pytest.approx(entry["correct"] / entry["n"])
    assert conf.diagonal().sum().item() == round(result["top1"] * len(data.y))


def test_training_flag_restored(data, norm):
    model = tiny_model(0).train()
    model.layer1[0].bn1.eval()  # one BN layer frozen by its user: every module's own mode comes back
    before = {k: v.clone() for k, v in model.state_dict().items()}
    evaluate(model, data, norm)
    assert model.training and not model.layer1[0].bn1.training and model.layer1[0].bn2.training
    # eval mode during evaluation: BN running statistics are untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_ensemble_of_same_checkpoint_equals_single(tmp_path, data, norm):
    path = save_ckpt(tiny_model(2), tmp_path / "a.pt", norm)
    a, b = load_for_eval(path), load_for_eval(path)
    single = evaluate(a.model, data, a.normalization)
    double = evaluate([a.model, b.model], data, [a.normalization, b.normalization])
    for key in ("top1", "top5", "confusion", "per_class"):
        assert double[key] == single[key]
    assert double["loss"] == pytest.approx(single["loss"], rel=1e-6)
    assert len(double["members"]) == 2 and double["members"][0]["top1"] == double["members"][1]["top1"]


def test_ensemble_averages_probabilities(data, norm):
    m1, m2 = tiny_model(3), tiny_model(4)
    pixel = Normalization.fit(data.x, "pixel")  # members may have their own preprocessing
    p = (direct_log_probs(m1, norm, data.x).exp() + direct_log_probs(m2, pixel, data.x).exp()) / 2
    expected = metrics(p.log(), data.y)
    result = evaluate([m1, m2], data, [norm, pixel], batch_size=40)
    assert_metrics(result, expected, len(data.y))
    assert_metrics(result["members"][0], metrics(direct_log_probs(m1, norm, data.x), data.y), len(data.y))
    assert_metrics(result["members"][1], metrics(direct_log_probs(m2, pixel, data.x), data.y), len(data.y))
    conf = torch.zeros(10, 10, dtype=torch.long)
    for t, q in zip(data.y, p.argmax(1)):
        conf[t, q] += 1
    assert result["confusion"] == conf.tolist()


def test_flip_tta_averages_image_and_mirror(data, norm):
    model = tiny_model(5)
    expected = metrics(direct_log_probs(model, norm, data.x, flip=True), data.y)
    plain = metrics(direct_log_probs(model, norm, data.x), data.y)
    assert expected["loss"] != pytest.approx(plain["loss"], rel=1e-3)  # the mirror changes the outputs
    result = evaluate(model, data, norm, batch_size=32, tta_flip=True)
    assert result["tta"] == "flip"
    assert_metrics(result, expected, len(data.y))


def test_flip_tta_on_flip_invariant_inputs_changes_nothing(norm):
    x = tiny_data(30, seed=3).x
    x = torch.cat([x[..., :16], x[..., :16].flip(3)], dim=3)  # every image is its own mirror
    sym = ArrayDataset(x, tiny_data(30, seed=3).y, CLASSES)
    model = tiny_model(6)
    a = evaluate(model, sym, norm)
    b = evaluate(model, sym, norm, tta_flip=True)
    assert a["top1"] == b["top1"] and a["confusion"] == b["confusion"]
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_load_for_eval_restores_normalization_and_classes(tmp_path, data, norm):
    model = tiny_model(7)
    path = save_ckpt(model, tmp_path / "m.pt", norm)
    loaded = load_for_eval(path)
    assert loaded.classes == CLASSES and loaded.image_size == 32 and loaded.family == "cifar"
    assert loaded.num_classes == 10 and loaded.description == "resnet8 (shortcut=A, width=4)"
    assert torch.equal(loaded.normalization(data.x[:4]), norm(data.x[:4]))
    with torch.no_grad():
        assert torch.equal(loaded.model(norm(data.x[:8])), model(norm(data.x[:8])))
    other = Normalization.from_values((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    with pytest.warns(UserWarning, match="replacing the normalization"):
        overridden = load_for_eval(path, normalization=other)
    assert overridden.normalization is other


def test_load_for_eval_errors(tmp_path, norm):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_for_eval(tmp_path / "nope.pt")
    path = save_ckpt(tiny_model(0), tmp_path / "m.pt", norm)
    with pytest.raises(ValueError, match=r"missing keys .*layer1\.1\.conv1\.weight") as e:
        load_for_eval(path, "resnet14")  # deeper than the checkpoint
    assert "trained as resnet8" in str(e.value)
    with pytest.raises(ValueError, match="mis-shaped"):
        load_for_eval(path, "resnet8")  # default width 16, the checkpoint has width 4
    foreign = tmp_path / "plain.pth"
    torch.save(tiny_model(0).state_dict(), foreign)
    with pytest.raises(ValueError, match="not a resnetlab checkpoint.*--model"):
        load_for_eval(foreign)


def test_foreign_state_dict_with_model_and_explicit_preprocessing(tmp_path, data):
    from resnetlab import weights
    if not hasattr(weights, "load_weights"):
        pytest.skip("resnetlab.weights.load_weights not available yet")
    model = create_model("resnet20", seed=0).eval()
    path = tmp_path / "torchvision_style.pth"
    torch.save(model.state_dict(), path)
    norm = Normalization.from_values((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}, "best_prec1": 91.0},
               tmp_path / "akamaster_style.th")
    with torch.no_grad():
        reference = model(norm(data.x[:4]))
    for name in ("torchvision_style.pth", "w.safetensors", "akamaster_style.th"):
        loaded = load_for_eval(tmp_path / name, ModelConfig("resnet20", shortcut="A"), normalization=norm)
        assert loaded.checkpoint is None and loaded.classes is None and loaded.normalization is norm
        with torch.no_grad():
            assert torch.equal(loaded.model(norm(data.x[:4])), reference)
    with pytest.raises(ValueError, match="mis-shaped"):
        load_for_eval(path, "resnet20", num_classes=100, normalization=norm)
    # safetensors written by resnetlab record their architecture: no --model needed
    weights.save_weights(model, tmp_path / "ours.safetensors")
    loaded = load_for_eval(tmp_path / "ours.safetensors", normalization=norm)
    assert loaded.description == "resnet20 (shortcut=A)"
    with torch.no_grad():
        assert torch.equal(loaded.model(norm(data.x[:4])), reference)


def test_class_count_mismatch(tmp_path, data, norm):
    with pytest.raises(ValueError, match="different class counts"):
        evaluate([tiny_model(0), tiny_model(1, num_classes=5)], data, norm)
    with pytest.raises(ValueError, match="5 outputs but the dataset has 10 classes"):
        evaluate(tiny_model(1, num_classes=5), data, norm)
    a = save_ckpt(tiny_model(0), tmp_path / "a.pt", norm)
    b = save_ckpt(tiny_model(1, num_classes=5), tmp_path / "b.pt", norm, classes=CLASSES[:5])
    code, err = run_cli(["eval", "--weights", a, b, "--data", "synthetic", "--quiet"])
    assert code == 2 and "different class counts" in err and "b.pt: 5" in err


def test_class_names_must_agree_across_members(tmp_path, norm):
    a = save_ckpt(tiny_model(0), tmp_path / "a.pt", norm)
    b = save_ckpt(tiny_model(1), tmp_path / "b.pt", norm, classes=CLASSES[::-1])
    code, err = run_cli(["eval", "--weights", a, b, "--data", "synthetic", "--quiet"])
    assert code == 2 and "name their classes differently" in err


def test_report_for_many_classes_lists_top_confusions():
    from resnetlab.evaluate_cli import format_report
    data = tiny_data(200, seed=5, num_classes=25)
    result = evaluate(tiny_model(17, num_classes=25), data, Normalization.fit(data.x))
    text = format_report(result, ["m.pt"], "header")
    assert "confusion matrix (rows" not in text and "most frequent confusions" in text
    conf = torch.tensor(result["confusion"])
    conf.fill_diagonal_(-1)
    i, j = divmod(int(conf.argmax()), 25)  # the largest off-diagonal count is listed first
    assert f"(true -> predicted: count): c{i} -> c{j}: {int(conf.max())}" in text


# ---------------------------------------------------------------------------------------------- predict

def write_png(path, arr, mode):
    from PIL import Image
    Image.fromarray(arr, mode=mode).save(path)
    return str(path)


def test_predict_png_modes(tmp_path, data, norm):
    model = tiny_model(8)
    ckpt = save_ckpt(model, tmp_path / "m.pt", norm)
    rgb = data.x[:3].permute(0, 2, 3, 1).numpy()  # (3, 32, 32, 3) uint8
    gray = rgb[1, :, :, 0]
    rgba = np.concatenate([rgb[2], np.full((32, 32, 1), 255, np.uint8)], axis=2)
    files = [write_png(tmp_path / "rgb.png", rgb[0], "RGB"), write_png(tmp_path / "gray.png", gray, "L"),
             write_png(tmp_path / "rgba.png", rgba, "RGBA")]
    expected_inputs = torch.stack([data.x[0], torch.from_numpy(gray).expand(3, 32, 32), data.x[2]])
    for f, x in zip(files, expected_inputs):
        assert torch.equal(load_image(f, 32, "cifar"), x)
    with torch.no_grad():
        expected = F.softmax(model(norm(expected_inputs)), dim=1)
    results = predict(load_for_eval(ckpt), files, top_k=3, device="cpu")
    for r, f, p in zip(results, files, expected):
        assert r["image"] == f
        assert sum(r["probabilities"]) == pytest.approx(1.0, abs=1e-5)
        assert r["top"][0]["index"] == int(p.argmax())
        assert r["top"][0]["class"] == CLASSES[int(p.argmax())]
        assert r["top"][0]["prob"] == pytest.approx(float(p.max()), rel=1e-5)
        assert len(r["top"]) == 3 and r["top"][0]["prob"] >= r["top"][1]["prob"] >= r["top"][2]["prob"]

    other = load_for_eval(save_ckpt(tiny_model(9), tmp_path / "other.pt", norm))
    both = predict([load_for_eval(ckpt), other], files, device="cpu")
    alone = predict(other, files, device="cpu")
    for r, a, b in zip(both, results, alone):  # an ensemble averages the members' probabilities
        avg = (torch.tensor(a["probabilities"]) + torch.tensor(b["probabilities"])) / 2
        assert torch.allclose(torch.tensor(r["probabilities"]), avg, atol=1e-6)

    out = tmp_path / "pred.json"
    code, _ = run_cli(["predict", *files, "--weights", ckpt, "--top-k", "2", "--json", str(out)])
    assert code == 0
    saved = json.loads(out.read_text())["predictions"]
    assert [s["top"][0]["index"] for s in saved] == [r["top"][0]["index"] for r in results]
    assert all(len(s["top"]) == 2 for s in saved)


def test_predict_foreign_weights_cli(tmp_path, data):
    model = create_model("resnet8", seed=3).eval()
    path = tmp_path / "foreign.pth"
    torch.save(model.state_dict(), path)
    image = write_png(tmp_path / "x.png", data.x[5].permute(1, 2, 0).numpy(), "RGB")
    code, err = run_cli(["predict", image, "--weights", str(path)])
    assert code == 2 and "--model" in err
    out = tmp_path / "p.json"
    code, err = run_cli(["predict", image, "--weights", str(path), "--model", "resnet8", "--mean", "0.5",
                         "--std", "0.2", "--top-k", "1", "--json", str(out)])
    assert code == 0, err
    with torch.no_grad():
        expected = int(model(((data.x[5:6].float() / 255) - 0.5) / 0.2).argmax())
    top = json.loads(out.read_text())["predictions"][0]["top"][0]
    assert top["index"] == expected and top["class"] == str(expected)  # no class names: indices


def test_predict_sees_the_pixels_that_eval_of_a_folder_sees(tmp_path):
    """A non-square photo for a CIFAR model: predict squashed the whole image to 32x32 while `eval --data
    folder` (and training from a folder) kept the centre square, and only predict turned it as its EXIF
    orientation says. Now both keep the centre square of the image as a viewer shows it."""
    from PIL import Image
    from resnetlab.evaluate_cli import EvalConfig, _load_folder_split
    arr = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)  # stored 48 wide, 32 high
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: shown turned 90 degrees clockwise
    os.makedirs(tmp_path / "test" / "c0")
    path = tmp_path / "test" / "c0" / "photo.png"
    Image.fromarray(arr).save(path, exif=exif)
    shown = np.rot90(arr, -1)  # 48 high, 32 wide: the shorter side is already 32, so the crop is exact
    expected = torch.from_numpy(shown[8:40].copy()).permute(2, 0, 1)
    assert torch.equal(load_image(path, 32, "cifar"), expected)
    folder, _ = _load_folder_split(EvalConfig(data="folder", data_dir=str(tmp_path)), 32, "cifar")
    assert torch.equal(folder.load(0), expected)


def test_load_image_resizing(tmp_path):
    from PIL import Image
    yy, xx = np.mgrid[0:300, 0:400]  # a smooth picture, so that resampling methods nearly agree
    arr = np.stack([xx * 255 / 400, yy * 255 / 300, 128 + 100 * np.sin(xx / 30) * np.cos(yy / 40)], axis=2)
    arr = arr.round().astype(np.uint8)
    path = write_png(tmp_path / "big.png", arr, "RGB")
    assert tuple(load_image(path, 32, "cifar").shape) == (3, 32, 32)
    crop = load_image(path, 56, "imagenet")  # shorter side -> 64, centre 56x56 crop
    assert tuple(crop.shape) == (3, 56, 56)
    # predict sees the pixels that `eval --data folder` sees
    os.makedirs(tmp_path / "folder" / "only")
    os.replace(path, tmp_path / "folder" / "only" / "big.png")
    assert torch.equal(crop, ImageFolder(tmp_path / "folder", image_size=56).load(0))
    # against the two-step reference (resize to 85x64, crop the centre): equal up to resampling details
    resized = np.asarray(Image.fromarray(arr).resize((85, 64), Image.BILINEAR)).astype(np.int16)
    assert np.abs(crop.permute(1, 2, 0).numpy() - resized[4:60, 14:70]).mean() < 2.0
    assert np.abs(crop.permute(1, 2, 0).numpy() - resized[4:60, 10:66]).mean() > 10  # an off-centre crop differs
    palette = Image.fromarray(arr[:40, :40]).convert("P")
    palette.save(tmp_path / "p.png")
    assert tuple(load_image(tmp_path / "p.png", 32).shape) == (3, 32, 32)


def test_predict_unreadable_image(tmp_path, norm):
    ckpt = save_ckpt(tiny_model(0), tmp_path / "m.pt", norm)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        load_image(bad)
    code, err = run_cli(["predict", str(bad), "--weights", ckpt])
    assert code == 2 and "broken.png" in err
    code, err = run_cli(["predict", str(tmp_path / "absent.jpg"), "--weights", ckpt])
    assert code == 2 and "absent.jpg" in err


# ---------------------------------------------------------------------------------------------- CLI

def run_cli(argv, capsys=None):
    """(exit code, stderr) of ``resnetlab.cli.main(argv)``, stderr captured by redirecting sys.stderr."""
    import contextlib
    import io
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = cli.main(argv)
    return code, err.getvalue()


def test_cli_eval_synthetic_matches_api(tmp_path):
    sets = load_dataset("synthetic")
    norm = Normalization.fit(sets["train"].x, "channel")
    a = save_ckpt(tiny_model(9), tmp_path / "a.pt", norm, classes=sets["test"].classes)
    b = save_ckpt(tiny_model(10), tmp_path / "b.pt", norm, classes=sets["test"].classes)
    out = tmp_path / "res" / "eval.json"
    code, err = run_cli(["eval", "--weights", a, b, "--data", "synthetic", "--limit", "300", "--batch-size",
                         "128", "--tta", "flip", "--json", str(out), "--quiet"])
    assert code == 0, err
    saved = json.loads(out.read_text())
    test = ArrayDataset(sets["test"].x[:300], sets["test"].y[:300], sets["test"].classes)
    expected = evaluate([load_for_eval(a).model, load_for_eval(b).model], test, norm, tta_flip=True)
    assert saved["n"] == 300 and saved["tta"] == "flip"
    for key in ("top1", "top5", "confusion", "per_class"):
        assert saved[key] == expected[key]
    assert saved["loss"] == pytest.approx(expected["loss"], rel=1e-6)
    assert [m["path"] for m in saved["members"]] == [a, b]
    assert saved["members"][0]["top1"] == expected["members"][0]["top1"]


def test_cli_eval_prints_report(tmp_path, capsys):
    sets = load_dataset("synthetic", synthetic_train=100, synthetic_test=10)
    norm = Normalization.fit(sets["train"].x)
    a = save_ckpt(tiny_model(11), tmp_path / "a.pt", norm, classes=sets["test"].classes)
    assert cli.main(["eval", "--weights", a, "--data", "synthetic", "--limit", "50", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "top-1" in text and "confusion matrix" in text and "triangle-striped" in text


def test_cli_preprocessing_override_and_val_split(tmp_path):
    sets = load_dataset("synthetic", val_split=500)
    channel = Normalization.fit(sets["train"].x, "channel")
    ckpt = tmp_path / "m.pt"
    atomic_save(make_checkpoint(tiny_model(14), normalization=channel.state_dict(), classes=sets["val"].classes,
                                data={"name": "synthetic", "image_size": 32}, step=0,
                                config={"val_split": 500}), ckpt)
    model = load_for_eval(ckpt).model

    out = tmp_path / "val.json"  # the val split is re-derived from the checkpoint's training config
    code, err = run_cli(["eval", "--weights", str(ckpt), "--data", "synthetic", "--split", "val", "--json",
                         str(out), "--quiet"])
    assert code == 0, err
    saved, expected = json.loads(out.read_text()), evaluate(model, sets["val"], channel)
    assert saved["n"] == 500 and saved["confusion"] == expected["confusion"]

    # --pixel-mean: the per-pixel mean of the whole training split (train + val above, in another order)
    pixel = Normalization.fit(torch.cat([sets["train"].x, sets["val"].x]), "pixel")
    test = ArrayDataset(sets["test"].x[:200], sets["test"].y[:200], sets["test"].classes)
    code, err = run_cli(["eval", "--weights", str(ckpt), "--data", "synthetic", "--limit", "200", "--pixel-mean",
                         "--json", str(out), "--quiet"])
    assert code == 0 and "warning" in err and "replacing the normalization" in err
    saved, expected = json.loads(out.read_text()), evaluate(model, test, pixel)
    assert saved["confusion"] == expected["confusion"]
    assert saved["loss"] == pytest.approx(expected["loss"], rel=1e-6)
    assert expected["loss"] != pytest.approx(evaluate(model, test, channel)["loss"], rel=1e-3)  # it mattered

    code, err = run_cli(["eval", "--weights", str(ckpt), "--data", "synthetic", "--limit", "200", "--mean",
                         "0.5,0.5,0.5", "--std", "0.25", "--json", str(out), "--quiet"])
    assert code == 0 and "replacing the normalization" in err
    explicit = Normalization.from_values((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert json.loads(out.read_text())["confusion"] == evaluate(model, test, explicit)["confusion"]


def test_cli_bad_inputs_exit_2(tmp_path, norm):
    ckpt = save_ckpt(tiny_model(0), tmp_path / "m.pt", norm)
    cases = [
        (["eval", "--weights", str(tmp_path / "missing.pt"), "--data", "synthetic"], "missing.pt"),
        (["eval", "--weights", ckpt, "--data", "imagenet21k"], "imagenet21k"),
        (["eval", "--weights", ckpt, "--data", "cifar10", "--data-dir", str(tmp_path)], str(tmp_path)),
        (["eval", "--weights", ckpt, "--data", "cifar10", "--data-dir", str(tmp_path / "nowhere")], "nowhere"),
        (["eval", "--weights", ckpt, "--data", "synthetic", "--model", "resnet14"], "missing keys"),
        (["eval", "--data", "synthetic"], "--weights"),
        (["eval", "--weights", ckpt, "--data", "synthetic", "--mean", "0.5,0.5,0.5"], "--std"),
        (["eval", "--weights", ckpt, "--data", "synthetic", "--split", "val"], "--val-split"),
        (["eval", "--weights", ckpt, "--data", "synthetic", "--batch-size", "0"], "batch-size"),
        (["predict", "--weights", ckpt], "image"),
        (["eval", "--weights", ckpt, "--data", "synthetic", "--shortcut", "B"], "--model"),
        (["eval", "--weights", ckpt, "--data", "synthetic", "--tta", "mirror"], "mirror"),
    ]
    for argv, needle in cases:
        code, err = run_cli(argv)
        assert code == 2, (argv, err)
        assert needle in err and "error" in err, (argv, err)


def test_cli_foreign_weights_need_preprocessing(tmp_path):
    from resnetlab import weights
    if not hasattr(weights, "load_weights"):
        pytest.skip("resnetlab.weights.load_weights not available yet")
    path = tmp_path / "foreign.pth"
    torch.save(create_model("resnet8", seed=0).state_dict(), path)
    code, err = run_cli(["eval", "--weights", str(path), "--data", "synthetic", "--quiet"])
    assert code == 2 and "--model" in err
    code, err = run_cli(["eval", "--weights", str(path), "--data", "synthetic", "--model", "resnet8",
                         "--quiet"])
    assert code == 2 and "--mean" in err


def test_cli_eval_image_folder_with_a_broken_file(tmp_path, norm):
    from PIL import Image
    data = tiny_data(40, seed=4, num_classes=3)
    for split in ("train", "test"):
        for c in data.classes:
            os.makedirs(tmp_path / "root" / split / c)
    for i, (x, y) in enumerate(zip(data.x, data.y)):
        Image.fromarray(x.permute(1, 2, 0).numpy()).save(tmp_path / "root" / "test" / f"c{y}" / f"{i:03d}.png")
    Image.fromarray(data.x[0].permute(1, 2, 0).numpy()).save(tmp_path / "root" / "train" / "c0" / "a.png")
    (tmp_path / "root" / "test" / "c1" / "999_broken.png").write_bytes(b"\x89PNG but truncated")
    model = tiny_model(15, num_classes=3)
    ckpt = save_ckpt(model, tmp_path / "m.pt", norm, classes=data.classes)
    out = tmp_path / "folder.json"
    code, err = run_cli(["eval", "--weights", ckpt, "--data", "folder", "--data-dir", str(tmp_path / "root"),
                         "--workers", "0", "--batch-size", "16", "--json", str(out), "--quiet"])
    assert code == 0, err
    assert "1 unreadable image(s) skipped" in err and "999_broken.png" in err
    saved = json.loads(out.read_text())
    order = sorted(range(40), key=lambda i: (int(data.y[i]), i))  # the folder lists classes, then files
    expected = evaluate(model, ArrayDataset(data.x[order], data.y[order], data.classes), norm)
    assert saved["n"] == 40 and saved["skipped"][0].endswith("999_broken.png")
    assert saved["confusion"] == expected["confusion"]
    assert saved["loss"] == pytest.approx(expected["loss"], rel=1e-6)
    code, err = run_cli(["eval", "--weights", ckpt, "--data", "folder", "--data-dir", str(tmp_path / "root"),
                         "--split", "val"])
    assert code == 2 and "val" in err and "not found" in err


@pytest.mark.skipif(not os.path.isfile(os.path.join(SHARED, "tools", "cifar10_fixture.py")),
                    reason="../shared (the CIFAR-10 fixture tool) is not available")
def test_cli_eval_real_cifar10_fixture(tmp_path):
    tool = os.path.join(SHARED, "tools", "cifar10_fixture.py")
    subprocess.run([sys.executable, tool, "batches", str(tmp_path / "cifar"), "--per-class", "20"], check=True,
                   capture_output=True)
    sets = load_dataset("cifar10", tmp_path / "cifar")
    norm = Normalization.fit(sets["train"].x, "pixel")
    ckpt = save_ckpt(tiny_model(12), tmp_path / "m.pt", norm, classes=sets["test"].classes)
    out = tmp_path / "eval.json"
    code, err = run_cli(["eval", "--weights", ckpt, "--data", "cifar10", "--data-dir", str(tmp_path / "cifar"),
                         "--json", str(out), "--quiet"])
    assert code == 0, err
    saved = json.loads(out.read_text())
    assert saved["n"] == 40 and saved["classes"][0] == "airplane"
    assert [sum(row) for row in saved["confusion"]] == [4] * 10
    expected = metrics(direct_log_probs(load_for_eval(ckpt).model, norm, sets["test"].x), sets["test"].y)
    assert_metrics(saved, expected, 40)
    # the same images as an image-folder tree (lossless PNG) give the same per-class results
    subprocess.run([sys.executable, tool, "folder", str(tmp_path / "tree"), "--per-class", "20"], check=True,
                   capture_output=True)
    code, err = run_cli(["eval", "--weights", ckpt, "--data", "folder", "--data-dir", str(tmp_path / "tree"),
                         "--workers", "0", "--json", str(out), "--quiet"])
    assert code == 0, err
    from_folder = json.loads(out.read_text())
    assert from_folder["classes"] == saved["classes"] and from_folder["per_class"] == saved["per_class"]
    assert from_folder["confusion"] == saved["confusion"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_close_to_cpu(data, norm):
    model = tiny_model(13)
    cpu = evaluate(model, data, norm, device="cpu")
    gpu = evaluate(model, data, norm, device="cuda", tta_flip=False)
    assert abs(gpu["top1"] - cpu["top1"]) <= 0.05
    assert gpu["loss"] == pytest.approx(cpu["loss"], rel=0.05)
    exact = evaluate(model, data, norm, device="cuda", precision="fp32")
    assert exact["loss"] == pytest.approx(cpu["loss"], rel=1e-3)


def test_repeated_weights_flag_is_an_error_not_a_silent_last_one_wins(tmp_path, capsys):
    from resnetlab.cli import main as cli_main
    assert cli_main(["eval", "--weights", "a.pt", "--weights", "b.pt"]) == 2
    assert "--weights is given more than once" in capsys.readouterr().err


def test_predict_on_a_folder_predicts_the_readable_and_names_the_rest(tmp_path, norm, monkeypatch):
    """A folder is expanded (hidden entries skipped); a broken file and a decompression bomb are each named
    on stderr, the readable images are predicted, and the exit code says something was skipped."""
    from PIL import Image
    ckpt = save_ckpt(tiny_model(0), tmp_path / "m.pt", norm)
    folder = tmp_path / "imgs"
    (folder / ".ipynb_checkpoints").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", ".ipynb_checkpoints/c.png"):
        write_png(folder / name, rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "RGB")
    write_png(folder / "huge.png", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "RGB")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64x64 = 4096 pixels: over twice the limit, a bomb
    out = tmp_path / "p.json"
    code, err = run_cli(["predict", str(folder), "--weights", ckpt, "--json", str(out)])
    assert code == 1
    assert "broken.jpg" in err and "huge.png" in err and "c.png" not in err
    predicted = [os.path.basename(p["image"]) for p in json.loads(out.read_text())["predictions"] if "top" in p]
    assert predicted == ["a.png", "b.png"]


def test_cli_eval_folder_reads_images_as_a_safetensors_file_records(tmp_path):
    """A .safetensors file written by save_weights records an ImageNet-style architecture: the folder's images
    are resized and centre-cropped to its 224x224, as for our checkpoints, not read at CIFAR's 32x32."""
    from PIL import Image
    from resnetlab import weights
    g = torch.Generator().manual_seed(7)
    for split in ("train", "test"):
        for c in range(2):
            os.makedirs(tmp_path / "root" / split / f"c{c}")
    for i in range(4):
        pixels = torch.randint(0, 256, (60, 80, 3), generator=g, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(tmp_path / "root" / "test" / f"c{i % 2}" / f"{i}.png")
    model = create_model("resnet18", num_classes=2, seed=0).eval()
    weights.save_weights(model, tmp_path / "net.safetensors")
    out = tmp_path / "eval.json"
    code, err = run_cli(["eval", "--weights", str(tmp_path / "net.safetensors"), "--data", "folder",
                         "--data-dir", str(tmp_path / "root"), "--mean", "0.5", "--std", "0.25", "--workers", "0",
                         "--json", str(out), "--quiet"])
    assert code == 0, err
    assert "images are" not in err  # no image-size mismatch warning
    folder = ImageFolder(tmp_path / "root" / "test", classes=["c0", "c1"], image_size=224)
    assert folder.image_size == 224
    expected = evaluate(model, folder, Normalization.from_values((0.5,) * 3, (0.25,) * 3), num_workers=0)
    saved = json.loads(out.read_text())
    assert saved["n"] == 4 and saved["confusion"] == expected["confusion"]
    assert saved["loss"] == pytest.approx(expected["loss"], rel=1e-5)


def test_cli_eval_folder_skips_hidden_class_folders(tmp_path, norm):
    """A notebook's ".ipynb_checkpoints" folder beside the class folders is not a class: the labels, the class
    count a foreign state_dict's classifier is sized by, and the result match the folder without it."""
    from PIL import Image
    data = tiny_data(12, seed=5, num_classes=2)
    for split in ("train", "test"):
        for c in (*data.classes, ".ipynb_checkpoints"):
            os.makedirs(tmp_path / "root" / split / c)
        Image.fromarray(data.x[0].permute(1, 2, 0).numpy()).save(tmp_path / "root" / split / ".ipynb_checkpoints"
                                                                 / "copy.png")
    for i, (x, y) in enumerate(zip(data.x, data.y)):
        Image.fromarray(x.permute(1, 2, 0).numpy()).save(tmp_path / "root" / "test" / f"c{y}" / f"{i:03d}.png")
    model = tiny_model(16, num_classes=2)
    order = sorted(range(12), key=lambda i: (int(data.y[i]), i))
    expected = evaluate(model, ArrayDataset(data.x[order], data.y[order], data.classes), norm)
    foreign = tmp_path / "foreign.pth"
    torch.save(model.state_dict(), foreign)
    out = tmp_path / "folder.json"
    mean, std = ([f"{float(v):.9g}" for v in values] for values in (norm.mean, norm.std))
    for argv in (["--weights", save_ckpt(model, tmp_path / "m.pt", norm, classes=data.classes)],
                 ["--weights", str(foreign), "--model", "resnet8", "--width", "4", "--mean", *mean, "--std", *std]):
        code, err = run_cli(["eval", *argv, "--data", "folder", "--data-dir", str(tmp_path / "root"),
                             "--workers", "0", "--json", str(out), "--quiet"])
        assert code == 0, err
        saved = json.loads(out.read_text())
        assert saved["n"] == 12 and saved["classes"] == data.classes
        assert saved["confusion"] == expected["confusion"]
        assert saved["loss"] == pytest.approx(expected["loss"], rel=1e-5)


def test_a_folder_given_for_the_synthetic_set_is_refused_not_ignored(tmp_path, norm):
    """`eval --weights CKPT --data-dir DIR` of a checkpoint trained on the synthetic set used to evaluate the
    shapes and ignore DIR; train, analyze and the demo did the same with --data synthetic --data-dir DIR."""
    (tmp_path / "pics" / "test" / "c0").mkdir(parents=True)
    ckpt = save_ckpt(tiny_model(0), tmp_path / "m.pt", norm)
    for argv in (["eval", "--weights", ckpt, "--data-dir", str(tmp_path / "pics")],
                 ["analyze", "paths", ckpt, "--data-dir", str(tmp_path / "pics")],
                 ["train", "--data", "synthetic", "--data-dir", str(tmp_path / "pics"), "--out", str(tmp_path / "t")],
                 ["demo", "--data", "synthetic", "--data-dir", str(tmp_path / "pics"), "--out", str(tmp_path / "d")]):
        code, err = run_cli(argv)
        assert code == 2 and "the synthetic set is generated, not read" in err, (argv, err)
    assert not (tmp_path / "t").exists() and not (tmp_path / "d").exists()  # nothing written


def test_an_ensemble_member_given_twice_is_refused(tmp_path, norm):
    """`eval --weights A ./A` evaluated an "ensemble of 2" that was one model counted twice."""
    ckpt = save_ckpt(tiny_model(0), tmp_path / "m.pt", norm)
    twice = os.path.join(os.path.dirname(ckpt), ".", "m.pt")
    code, err = run_cli(["eval", "--weights", ckpt, twice, "--data", "synthetic"])
    assert code == 2 and f"checkpoint {twice} is given twice (also as {ckpt})" in err, err
    code, err = run_cli(["predict", str(tmp_path / "x.png"), "--weights", ckpt, "--weights", ckpt])
    assert code == 2 and f"checkpoint {ckpt} is given twice: list each ensemble member once" in err, err


def test_eval_and_predict_take_a_run_folder_as_analyze_does(tmp_path, norm, capsys):
    """A run folder means its last.pt, as for analyze and landscape; eval and predict said "checkpoint not
    found" for a folder that exists."""
    run = tmp_path / "run"
    run.mkdir()
    ckpt = save_ckpt(tiny_model(0), run / "last.pt", norm)
    out = tmp_path / "r.json"
    code, err = run_cli(["eval", "--weights", str(run), "--data", "synthetic", "--quiet", "--json", str(out)])
    assert code == 0, err
    assert json.loads(out.read_text())["members"][0]["top1"] == \
        evaluate(load_for_eval(ckpt).model, load_dataset("synthetic")["test"], norm)["top1"]
    (tmp_path / "empty").mkdir()
    code, err = run_cli(["predict", str(tmp_path / "x.png"), "--weights", str(tmp_path / "empty")])
    assert code == 2 and "is a folder without a last.pt checkpoint" in err, err
