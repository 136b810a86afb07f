"""The shortcut study and its report: matched twins, real tiny training runs, resuming, the report's files."""
import base64
import csv
import dataclasses
import json
import os
import re

import numpy as np
import pytest
import torch

from resnetlab import cli, report, study
from resnetlab.io import FolderLock
from resnetlab.models import ModelConfig
from resnetlab.runtime import resolve_precision
from resnetlab.study import StudyConfig

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Tiny but real: 2 depths x (option B, plain), width 4, 12 iterations on the synthetic set.
TINY = dict(depths=(8, 14), options=("B", "none"), data="synthetic", iterations=12, batch_size=16, val_split=100,
            eval_every=6, log_every=3, checkpoint_every=6, model=ModelConfig(width=4), grad_steps=(0, 6, 12), analysis_images=32,
            landscape=True, landscape_steps=3, device="cpu", precision="fp32", threads=1, quiet=True)


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "report"
    cfg = StudyConfig(out=str(out), **TINY)
    paths = study.run_study(cfg)
    return cfg, paths


def _runs(cfg):
    return {r.name: r for r in study.grid(cfg)}


def test_grid_names_seeds_and_twin_configs(tmp_path):
    cfg = StudyConfig(out=str(tmp_path), depths=(8, 20), options=("A", "B", "C", "none"), repeats=2, seed=5)
    runs = study.grid(cfg)
    assert len(runs) == 2 * 4 * 2
    assert {r.name for r in runs} >= {"resnet8-A-r0", "resnet20-none-r1", "resnet20-C-r1"}
    assert all(r.seed == 5 + r.repeat for r in runs)
    # Twins: the same depth and repeat give configs that differ only in the shortcut and the folder.
    a, b = (study.train_config(cfg, r) for r in runs if r.depth == 20 and r.repeat == 1 and r.option in "AB")
    da, db = study.to_dict(a), study.to_dict(b)
    assert {k for k in da if da[k] != db[k]} == {"model", "out"}
    assert {k for k in da["model"] if da["model"][k] != db["model"][k]} == {"shortcut"}
    assert a.seed == b.seed == 6


def test_twins_share_initial_weights(tiny_study):
    cfg, _ = tiny_study
    for depth in (8, 14):
        plain = study.init_model(_runs(cfg)[f"resnet{depth}-none-r0"].dir).state_dict()
        resid = study.init_model(_runs(cfg)[f"resnet{depth}-B-r0"].dir).state_dict()
        shared = set(plain) & set(resid)
        extra = set(resid) - set(plain)
        assert extra and all(".downsample." in k for k in extra)  # B adds only its projections
        assert len(shared) == len(plain)
        for k in shared:
            assert torch.equal(plain[k], resid[k]), k
    # ... and not trivially: another seed gives other weights
    other = study.init_model(_runs(cfg)["resnet8-none-r0"].dir)
    from resnetlab import create_model
    assert not torch.equal(other.conv1.weight, create_model("resnet8", width=4, shortcut="none", seed=1).conv1.weight)


def test_init_model_is_where_training_started(tmp_path):
    # With log_every=1 the first logged training loss is the loss of batch 0 under the initial weights
    # (train mode): the study's init model must reproduce it.
    from resnetlab.datasets import load_dataset
    from resnetlab.stream import Normalization, TrainStream
    from resnetlab.weights import load_checkpoint
    from resnetlab.train import TrainConfig, train
    run_dir = str(tmp_path / "run")
    train(TrainConfig(model=ModelConfig("resnet8", shortcut="A", width=4), seed=3, data="synthetic", out=run_dir, iterations=1,
                      batch_size=16, log_every=1, eval_every=1, device="cpu", precision="fp32", threads=1,
                      quiet=True))
    model = study.init_model(run_dir)
    ckpt = load_checkpoint(os.path.join(run_dir, "last.pt"))
    resolved = json.load(open(os.path.join(run_dir, "config.json")))["config"]
    train_set = load_dataset("synthetic")["train"]
    stream = TrainStream(train_set, 16, device="cpu", seed=3, padding=resolved["padding"],
                         normalization=Normalization.from_state_dict(ckpt["normalization"]))
    x, y = stream.batch(0)
    model.train()
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(x), y).item()
    logged = next(json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl")) if '"train"' in l)
    assert logged["step"] == 1 and loss == pytest.approx(logged["loss"], rel=1e-5, abs=1e-6)
    # and the trained weights are not the initial ones
    assert not torch.equal(model.conv1.weight, ckpt["model"]["conv1.weight"])


def test_report_files_and_links(tiny_study):
    cfg, paths = tiny_study
    out = cfg.out
    md = open(paths["md"], encoding="utf-8").read()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    names = {os.path.basename(i) for i in images}
    assert {"training_curves.png", "layer_responses.png", "signal_flow.png", "gradient_flow.png",
            "first_layer_gradient.png", "path_ratios.png", "landscape.png"} <= names
    # the signal curves come first in the gradient section, and hold the input plus one value per block
    assert md.index("signal_flow.png") < md.index("gradient_flow.png")
    record = next(r for r in json.load(open(os.path.join(out, "runs", "resnet8-B-r0", "analysis.json")))["analysis"]
                  ["signal"].items())
    assert [name for name, _ in record[1]][:2] == ["input", "layer1.0"] and len(record[1]) == 1 + 3
    for rel in images:
        with open(os.path.join(out, rel), "rb") as fh:
            assert fh.read(8) == PNG_MAGIC, rel
    # every relative link resolves: results, run folders, configs, metrics
    links = [l for l in re.findall(r"(?<!!)\[[^\]]*\]\(([^)]+)\)", md) if not l.startswith("http")]
    assert any(l.endswith("config.json") for l in links) and "results.csv" in links
    for l in links:
        assert os.path.exists(os.path.join(out, l)), l
    html = open(paths["html"], encoding="utf-8").read()
    assert html.count("data:image/png;base64,") == len(images)
    assert "<img" in html and 'src="figures/' not in html  # self-contained
    assert "Degradation" in md or "No degradation" in md


def test_table_numbers_equal_final_json(tiny_study):
    cfg, paths = tiny_study
    runs = _runs(cfg)
    with open(os.path.join(cfg.out, "results.csv")) as fh:
        rows = list(csv.DictReader(fh))
    assert {r["run"] for r in rows} == set(runs)
    md = open(paths["md"], encoding="utf-8").read()
    table = [l for l in md.splitlines() if l.startswith("| ") and "[resnet" in l]
    assert len(table) == len(runs)  # one repeat: one row per run
    for row in rows:
        final = json.load(open(os.path.join(runs[row["run"]].dir, "final.json")))
        for key in ("train_error", "val_error", "test_error", "wall_time_s"):
            assert float(row[key]) == pytest.approx(final[key], rel=1e-12)
        assert int(row["params"]) == final["params"]
        line = next(l for l in table if f"[{row['run']}]" in l)
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[2] == f"{final['params']:,}"
        assert cells[3] == f"{100 * final['train_error']:.2f}"
        assert cells[4] == f"{100 * final['val_error']:.2f}"
        assert cells[5] == f"{100 * final['test_error']:.2f}"
    # results.json agrees, and the measurements are there for every run
    res = json.load(open(os.path.join(cfg.out, "results.json")))
    assert len(res["runs"]) == len(runs) and res["first_layer_grad_norm"]["0"]


def test_measurements(tiny_study):
    cfg, _ = tiny_study
    for name, run in _runs(cfg).items():
        a = json.load(open(os.path.join(run.dir, "analysis.json")))["analysis"]
        assert set(a["grad_norms"]) == {"0", "6", "12"}
        n_blocks = 3 * (run.depth - 2) // 6
        assert [k for k, _ in a["grad_norms"]["0"]][:1] == ["stem"] and len(a["grad_norms"]["0"]) == n_blocks + 2
        assert len(a["layer_responses"]) == 2 * n_blocks + 1  # the stem is a 3x3 layer too
        assert all(v > 0 for _, v in a["layer_responses"])
        if run.option == "none":
            assert a["path_stats"] == [] and a["projection_stats"] == []
        else:
            assert len(a["path_stats"]) == n_blocks and len(a["projection_stats"]) == 2  # two stage changes
        # training moved the weights: gradients after 12 steps differ from those at initialisation
        assert a["grad_norms"]["0"] != a["grad_norms"]["12"]
    land = json.load(open(os.path.join(cfg.out, "landscape.json")))["landscape"]
    assert [n["run"] for n in land["nets"]] == ["resnet14-none-r0", "resnet14-B-r0"]
    # the report states the flatness figure of both nets (the numbers of landscape.json, not an empty table)
    report = open(os.path.join(cfg.out, "report.md")).read()
    section = report[report.index("## Loss landscape"):]
    header = next(line for line in section.splitlines() if line.startswith("| network"))
    def cells(line):
        return [c.strip() for c in line.strip("|").split("|")]

    col, count = cells(header).index("loss rise at r"), cells(header).index("landscapes")
    for net in land["nets"]:
        # every repeat x direction seed (3 by default), BN with the batch's statistics
        assert [p["direction_seed"] for p in net["per"]] == [0, 1, 2]
        row = next(cells(line) for line in section.splitlines() if line.startswith("|")
                   and cells(line)[0] == net["label"])
        mean, std = (float(v) for v in row[col].split(" ± "))
        rises = [p["flatness"]["2d"]["rise_at_r"] for p in net["per"]]
        assert mean == pytest.approx(np.mean(rises), abs=1e-4) and std == pytest.approx(np.std(rises, ddof=1), abs=1e-4)
        assert row[count] == "3"
    assert land["bn"] == "batch" and "batch's statistics" in land["note"]


def test_resume_skips_finished_and_continues_interrupted(tiny_study, capsys):
    cfg, _ = tiny_study
    runs = _runs(cfg)
    mtimes = {n: os.stat(os.path.join(r.dir, "final.json")).st_mtime_ns for n, r in runs.items()}
    # "Interrupt" one run: without final.json it is resumed from last.pt, not retrained.
    victim = runs["resnet8-none-r0"]
    os.remove(os.path.join(victim.dir, "final.json"))
    lines_before = open(os.path.join(victim.dir, "metrics.jsonl")).read().count("\n")
    study.run_study(cfg)
    err = capsys.readouterr().err
    assert err.count("finished earlier, skipped") == len(runs) - 1
    assert "resnet8-none-r0: resuming" in err
    for n, r in runs.items():
        if n != victim.name:
            assert os.stat(os.path.join(r.dir, "final.json")).st_mtime_ns == mtimes[n], n
    assert os.path.isfile(os.path.join(victim.dir, "final.json"))
    assert open(os.path.join(victim.dir, "metrics.jsonl")).read().count("\n") == lines_before  # no retraining
    # Other settings in the same folder: a clear error, nothing retrained.
    with pytest.raises(ValueError, match="other settings"):
        study.run_study(StudyConfig(out=cfg.out, **{**TINY, "iterations": 13}))


def test_a_grid_keeps_the_arithmetic_its_runs_were_trained_in(tmp_path, capsys):
    """``auto`` resolves per machine (bf16 on AMX CPUs, else fp32) and grids are trained over several
    sessions: once a folder holds runs, later runs train in the precision those record, so twins share it;
    an explicit other precision is refused, and so is reporting a folder that mixes them."""
    auto_bf16, _ = resolve_precision("auto", torch.device("cpu"), None)
    other = "fp32" if auto_bf16 else "bf16"  # what this machine's auto would NOT choose
    small = {**TINY, "depths": (8,), "iterations": 4, "eval_every": 4, "log_every": 2, "checkpoint_every": 4,
             "grad_steps": (0,), "landscape": False}
    runtime = lambda name: json.load(open(tmp_path / "runs" / name / "config.json"))["runtime"]  # noqa: E731
    study.train_grid(StudyConfig(out=str(tmp_path), **{**small, "options": ("none",), "precision": other}))
    assert runtime("resnet8-none-r0")["bf16_autocast"] is (other == "bf16")
    both = {**small, "options": ("none", "A")}
    with pytest.raises(ValueError, match=f"trained in {other}"):
        study.train_grid(StudyConfig(out=str(tmp_path), **{**both, "precision": "bf16" if auto_bf16 else "fp32"}))
    assert not (tmp_path / "runs" / "resnet8-A-r0").exists()
    study.train_grid(StudyConfig(out=str(tmp_path), **{**both, "precision": "auto"}))
    assert f"precision {other}, as the runs already in" in capsys.readouterr().err
    assert runtime("resnet8-A-r0")["bf16_autocast"] is (other == "bf16")
    # A folder whose runs disagree (trained before this rule) cannot be reported as twins.
    a = tmp_path / "runs" / "resnet8-A-r0" / "config.json"
    rec = json.load(open(a))
    rec["runtime"]["bf16_autocast"] = not rec["runtime"]["bf16_autocast"]
    a.write_text(json.dumps(rec))
    with pytest.raises(ValueError, match="mix bf16"):
        study.train_grid(StudyConfig(out=str(tmp_path), **{**both, "report_only": True}))


def test_processes_share_a_grid_a_run_in_use_is_skipped(tiny_study, capsys):
    """Two processes running the same study: a run another process holds is skipped and named in the report,
    then the next rerun finishes it."""
    cfg, _ = tiny_study
    victim = _runs(cfg)["resnet14-B-r0"]
    os.remove(os.path.join(victim.dir, "final.json"))
    metrics_before = open(os.path.join(victim.dir, "metrics.jsonl")).read()
    held = FolderLock(victim.dir)  # what the other process's train() holds
    try:
        paths = study.run_study(cfg)
    finally:
        held.release()
    err = capsys.readouterr().err
    assert "resnet14-B-r0: in use by another process, skipped" in err
    assert not os.path.exists(os.path.join(victim.dir, "final.json"))
    assert open(os.path.join(victim.dir, "metrics.jsonl")).read() == metrics_before  # nothing written
    md = open(paths["md"]).read()
    assert "**Not finished**" in md and "resnet14-B-r0" in md
    runs = json.load(open(os.path.join(cfg.out, "results.json")))["runs"]
    assert victim.name not in {row["run"] for row in runs} and len(runs) == len(_runs(cfg)) - 1
    paths = study.run_study(dataclasses.replace(cfg, report_only=True))  # no lock now, but it trains nothing
    assert "resuming" not in capsys.readouterr().err
    assert open(os.path.join(victim.dir, "metrics.jsonl")).read() == metrics_before
    assert "not trained by this report-only run" in open(paths["md"]).read()
    claimed = FolderLock(victim.dir, ".claim")  # another study process has claimed the run
    try:
        study.run_study(cfg)
    finally:
        claimed.release()
    assert "resnet14-B-r0: in use by another process, skipped" in capsys.readouterr().err
    assert open(os.path.join(victim.dir, "metrics.jsonl")).read() == metrics_before
    paths = study.run_study(cfg)  # the locks are gone: resumed and finished
    assert "resnet14-B-r0: resuming" in capsys.readouterr().err
    assert os.path.isfile(os.path.join(victim.dir, "final.json"))
    assert "Not finished" not in open(paths["md"]).read()


def test_repeats_mean_std_and_best():
    recs = []
    for k, (tr, te) in enumerate([(0.10, 0.20), (0.14, 0.26), (0.12, 0.23)]):
        recs.append({"name": f"resnet8-A-r{k}", "model": "resnet8", "depth": 8, "option": "A", "repeat": k,
                     "seed": k, "dir": f"runs/resnet8-A-r{k}", "events": [],
                     "final": {"params": 100, "train_error": tr, "val_error": None, "test_error": te,
                               "wall_time_s": 10.0 + k}})
    head, rows = report.results_table(recs)
    row = dict(zip(head, rows[0]))
    assert row["train error (%)"] == "12.00 ± 2.00"  # sample std of 10, 14, 12
    assert row["test error (%)"] == "20.00 (23.00±3.00)"  # best (mean±std)
    assert row["val error (%)"] == "n/a"
    assert row["wall time (s)"] == "11.0 ± 1.0"


def test_report_html_is_its_markdown_rendered(tmp_path):
    # Records without training: a report of two depths, plain and option A, with curves but no measurements.
    recs = []
    for depth in (8, 14):
        for option, err in (("none", 0.3), ("A", 0.2)):
            events = [{"kind": "train", "step": s, "error": err + 0.1 / s} for s in (1, 2, 3)]
            events += [{"kind": "eval", "split": "test", "step": 3, "error": err + 0.05}]
            recs.append({"name": f"resnet{depth}-{option}-r0", "model": f"resnet{depth}", "depth": depth,
                         "option": option, "repeat": 0, "seed": 0, "dir": f"runs/resnet{depth}-{option}-r0",
                         "events": events, "final": {"params": 1000 + depth, "train_error": err,
                                                     "test_error": err + 0.05, "wall_time_s": 1.0}})
    paths = report.write_report(str(tmp_path), recs, title="Tiny | study", settings={"iterations": 3})
    md = open(paths["md"], encoding="utf-8").read()
    page = open(paths["html"], encoding="utf-8").read()
    assert [os.path.basename(f) for f in paths["figures"]] == ["training_curves.png"]
    assert "<title>Tiny | study</title>" in page and "<h2>Results</h2>" in page
    assert "<code>3</code>" in page  # the settings line's code span
    assert '<a href="runs/resnet14-A-r0/">resnet14-A-r0</a>' in page and "<td>ResNet-14 (A)</td>" in page
    assert "<td>1,014</td>" in page and "<td>20.00</td>" in page
    # every Markdown table row (not the separator lines) is one HTML row
    md_rows = [l for l in md.splitlines() if l.startswith("|") and not set(l) <= set("|-: ")]
    assert page.count("<tr>") == len(md_rows) and page.count("<table>") == md.count("\n|--")
    # the figure is embedded byte for byte, and not linked
    data = re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1)
    assert base64.b64decode(data) == open(os.path.join(tmp_path, "figures", "training_curves.png"), "rb").read()
    assert 'src="figures/' not in page and "](figures/training_curves.png)" in md
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]  # atomic writes left nothing behind


def test_degradation_in_words():
    def rec(depth, option, err):
        return {"name": f"resnet{depth}-{option}-r0", "model": f"resnet{depth}", "depth": depth, "option": option,
                "repeat": 0, "seed": 0, "dir": ".", "events": [],
                "final": {"params": 1, "train_error": err, "test_error": err}}
    text = " ".join(report.degradation_text([rec(8, "none", 0.2), rec(20, "none", 0.3),
                                             rec(8, "A", 0.2), rec(20, "A", 0.1)]))
    assert "Degradation" in text and "plain-20" in text and "trains better" in text
    text = " ".join(report.degradation_text([rec(8, "none", 0.3), rec(20, "none", 0.2)]))
    assert "No degradation" in text


@pytest.mark.parametrize("args,message", [
    (["--depths", ""], "grid is empty"),
    (["--options", ""], "grid is empty"),
    (["--options", "A,D"], "unknown shortcut option 'D'"),
    (["--depths", "20,18"], "depth 18 is not a CIFAR ResNet depth"),
    (["--repeats", "0"], "repeats must be at least 1"),
])
def test_bad_inputs_exit_2_with_clear_message(tmp_path, capsys, args, message):
    out = tmp_path / "never"
    assert cli.main(["study", "shortcuts", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert "resnetlab study: error:" in err and message in err
    assert not out.exists()  # nothing half-written


def test_unknown_study_is_a_usage_error(capsys):
    assert cli.main(["study", "landscapes"]) == 2
    assert "unknown: 'landscapes'" in capsys.readouterr().err


def test_demo_picks_its_data(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "empty-cache"))
    cfg = study.demo_study_config(study.DemoConfig(out=str(tmp_path)))
    assert cfg.data == "synthetic" and cfg.depths == study.DEMO_DEPTHS and "none" in cfg.options
    cfg = study.demo_study_config(study.DemoConfig(out=str(tmp_path), data_dir=str(tmp_path)))
    assert cfg.data == "cifar10"


def test_demo_end_to_end(tmp_path, monkeypatch, capsys):
    # The main job through the command line, shrunk: 6 real runs of 4 iterations at width 4.
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "empty-cache"))
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--iterations", "4", "--width", "4", "--batch-size", "16",
                     "--threads", "1"]) == 0
    captured = capsys.readouterr()
    assert f"The report: {out / 'report.html'}" in captured.out
    assert "6/6 resnet26-none-r0: training" in captured.err
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["run"] for r in rows) == sorted(f"resnet{d}-{o}-r0" for d in (8, 26) for o in ("A", "B", "none"))
    md = (out / "report.md").read_text()
    assert "Layer shapes of the studied models" in md and "resnet26 (shortcut=B, width=4)" in md
    # 16x16 synthetic images, recorded in the checkpoint; the lr divided at 75% and 90% of the run
    meta = json.loads((out / "runs" / "resnet26-A-r0" / "config.json").read_text())
    assert meta["config"]["synthetic_size"] == 16 and meta["config"]["recipe"] == "he2016-short"
    assert tuple(meta["config"]["milestones"]) == (3, 4)
    assert "**Deeper residual net, option A:**" in md
    # eval on the run's checkpoint regenerates the synthetic test set at 16x16: the same error as training's
    ckpt = out / "runs" / "resnet8-A-r0" / "last.pt"
    assert cli.main(["eval", "--weights", str(ckpt), "--json", str(tmp_path / "eval.json"), "--quiet"]) == 0
    final = json.loads((out / "runs" / "resnet8-A-r0" / "final.json").read_text())
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["n"] == 1000 and "16x16" not in capsys.readouterr().err  # no size-mismatch warning
    assert result["members"][0]["error"] == pytest.approx(final["test_error"], abs=1e-9)
    assert json.loads((out / "study.json").read_text())["study"]["data"] == "synthetic"


def test_identity_mapping_variants_reach_the_model(tmp_path):
    cfg = StudyConfig(out=str(tmp_path), depths=(8,), options=("A", "none"),
                      model=ModelConfig(preact=True, shortcut_scale=0.5))
    run = study.grid(cfg)[0]
    tcfg = study.train_config(cfg, run)
    assert tcfg.model.preact is True and tcfg.model.shortcut_scale == 0.5 and tcfg.model.shortcut == "A"
    assert tcfg.model.name == "resnet8"
    from resnetlab import create_model
    model = create_model(tcfg.model)
    assert model.preact and all(b.add.scale == 0.5 for _, b in model.blocks())


def test_config_file_reaches_the_study(tmp_path, capsys):
    conf = tmp_path / "study.yaml"
    conf.write_text("depths: [8, 18]\noptions: [A, none]\n")
    out = tmp_path / "never"
    assert cli.main(["study", "shortcuts", "--config", str(conf), "--out", str(out)]) == 2
    assert "depth 18 is not a CIFAR ResNet depth" in capsys.readouterr().err
    conf.write_text("depths: [8]\nbudgets: smoke\n")
    assert cli.main(["study", "shortcuts", "--config", str(conf), "--out", str(out)]) == 2
    assert "unknown key(s) budgets" in capsys.readouterr().err
    assert not out.exists()


def test_option_order_does_not_depend_on_input_order():
    # two transition variants of one option used to tie, so reports listed them in the order a set gave
    options = ["B", "A:none", "none", "A:avgpool-projection", "A", "C"]
    expected = ["none", "A", "A:avgpool-projection", "A:none", "B", "C"]
    assert report.family_order(options) == expected
    assert sorted(options, key=report._option_rank) == sorted(options[::-1], key=report._option_rank) == expected


def test_report_with_the_signal_measured_but_no_weight_gradients(tmp_path):
    # analysis.json files that hold the back-propagated signal only (no weight-gradient norms)
    recs = []
    for option, sig in (("none", [["input", 0.2], ["layer1.0", 1.0]]), ("A", [["input", 3.0], ["layer1.0", 1.5]])):
        recs.append({"name": f"resnet8-{option}-r0", "model": "resnet8", "depth": 8, "option": option, "repeat": 0,
                     "seed": 0, "dir": f"runs/resnet8-{option}-r0", "analysis": {"signal": {"0": sig}},
                     "events": [{"kind": "train", "step": s, "error": 0.3} for s in (1, 2)],
                     "final": {"params": 10, "train_error": 0.3, "test_error": 0.3, "wall_time_s": 1.0}})
    paths = report.write_report(str(tmp_path), recs, title="signal only")
    assert [os.path.basename(f) for f in paths["figures"]] == ["training_curves.png", "signal_flow.png"]
    md = open(paths["md"], encoding="utf-8").read()
    assert "## Gradient flow" in md and "signal_flow.png" in md
    assert "with respect to each block's parameters" not in md and "first_layer_gradient" not in md


def test_paired_intervals_against_hand_computed_values():
    from resnetlab.report import paired_interval, paired_rows, t975
    # differences 0.01, 0.02, 0.03: mean 0.02, sd 0.01, n 3 -> half-width t(0.975, 2) * 0.01 / sqrt(3)
    iv = paired_interval([0.11, 0.22, 0.33], [0.10, 0.20, 0.30])
    assert iv["n"] == 3 and iv["mean"] == pytest.approx(0.02)
    assert iv["high"] - iv["mean"] == pytest.approx(4.302653 * 0.01 / 3 ** 0.5, rel=1e-4)
    assert paired_interval([0.1], [0.2]) is None and paired_interval([0.1, None], [0.2, 0.3]) is None
    # the t quantiles: the table's end and the expansion beyond it, against known values
    assert t975(30) == pytest.approx(2.042272, abs=1e-4) and t975(40) == pytest.approx(2.021075, abs=2e-4)
    assert t975(120) == pytest.approx(1.979930, abs=1e-4)
    # twins are paired by repeat, and options are compared with the plain net and with each other
    def rec(option, repeat, train, test):
        return {"depth": 20, "option": option, "repeat": repeat, "final": {"train_error": train, "test_error": test}}
    records = [rec("none", 0, 0.30, 0.35), rec("none", 1, 0.32, 0.36), rec("A", 0, 0.20, 0.30), rec("A", 1, 0.24, 0.29),
               rec("B", 0, 0.19, 0.28), rec("B", 1, 0.21, 0.31)]
    rows = {(r["a"], r["b"]): r for r in paired_rows(records)}
    assert set(rows) == {("A", "none"), ("B", "none"), ("B", "A")}
    a = rows[("A", "none")]["train_error"]
    assert a["mean"] == pytest.approx(-0.09) and a["n"] == 2
    assert a["high"] - a["mean"] == pytest.approx(12.7062 * (0.02 / 2 ** 0.5) / 2 ** 0.5, rel=1e-4)


def test_transition_variants_are_twins_of_the_grid(tmp_path):
    """`A:none` (identity shortcuts, none where the shape changes) is one more twin: same seed and batches,
    its model gets the transition, the report names it in words."""
    from resnetlab.report import describe_option, option_fields
    cfg = StudyConfig(out=str(tmp_path), depths=(8,), options=("A", "A:none", "none"), seed=4)
    runs = study.grid(cfg)
    assert [r.name for r in runs] == ["resnet8-A-r0", "resnet8-A_none-r0", "resnet8-none-r0"]
    a, t = (study.train_config(cfg, r) for r in runs[:2])
    assert t.model.shortcut == "A" and t.model.transition == "none" and a.model.transition is None
    assert a.seed == t.seed == 4 and a.data == t.data
    assert describe_option("A:none") == "identity shortcuts, none where the shape changes"
    assert describe_option("B") == "identity shortcuts, projections where the shape changes"
    assert option_fields("none:projection") == {"shortcut": "none", "transition": "projection"}
    with pytest.raises(ValueError, match="unknown transition 'sideways' in 'A:sideways'"):
        study.grid(StudyConfig(out=str(tmp_path), depths=(8,), options=("A:sideways",)))


def test_claims_are_judged_in_words_including_when_they_fail():
    from resnetlab.report import claims_text

    def rec(depth, option, train_error, responses, signal_in, repeat=0):
        return {"depth": depth, "option": option, "repeat": repeat, "name": f"{depth}-{option}",
                "final": {"train_error": train_error},
                "analysis": {"layer_responses": [["l1", responses], ["l2", responses]],
                             "signal": {"0": [["input", signal_in], ["layer1.0", 1.0], ["layer2.0", 2.0]]}}}
    records = [rec(8, "none", 0.30, 0.5, 1.0), rec(8, "A", 0.20, 0.3, 4.0),
               rec(20, "none", 0.40, 0.6, 0.1), rec(20, "A", 0.45, 0.7, 2.0)]
    text = "\n".join(claims_text(records))
    assert "Degradation" in text  # plain-20 trains worse than plain-8
    assert "ResNet-8 (A) ends with a lower training error than plain-8 (20.00% vs 30.00%): the paper's claim holds" in text
    assert "ResNet-20 (A) ends with a higher training error than plain-20 (45.00% vs 40.00%): the paper's claim does not hold" in text
    assert "respond more weakly than those of plain-8" in text and "respond more strongly than those of plain-20" in text
    # input signal over the last block's: 4.0/2.0 = 2 for ResNet-8 (A) vs 0.5 for plain-8
    assert "is 2 in ResNet-8 (A) and 0.5 in plain-8" in text
    # Figure 6 (right): ResNet-20 (A) trains worse than ResNet-8 (A), said so; and the three checks agree
    assert ("ResNet-20 (A) ends with a higher training error than ResNet-8 (A) (45.00% vs 20.00%): the paper's "
            "Figure 6 (right), where the deeper ResNet trains better, does not hold here") in text
    checks = report.figure6_checks(records)
    assert (checks["degradation"], checks["residual_beats_plain"], checks["deeper_residual"]) == (True, False, False)
    records[3]["final"]["train_error"] = 0.15  # now ResNet-20 (A) beats plain-20 and ResNet-8 (A)
    checks = report.figure6_checks(records)
    assert (checks["degradation"], checks["residual_beats_plain"], checks["deeper_residual"]) == (True, True, True)
    assert checks["errors"]["ResNet-20 (A)"] == 0.15 and checks["deeper_residual_by_option"] == {"A": True}


def test_tail_training_error_averages_the_last_tenth():
    events = [{"kind": "train", "step": s, "error": e} for s, e in ((10, 0.9), (80, 0.5), (91, 0.3), (100, 0.1))]
    events.append({"kind": "eval", "step": 100, "split": "test", "error": 0.7})
    assert report.tail_train_error(events, 100) == pytest.approx(0.2)  # steps 91 and 100
    assert report.tail_train_error(events[:2], 100) == pytest.approx(0.5)  # none in the tail: the last one
    assert report.tail_train_error([], 100) is None


def test_missing_data_is_refused_before_anything_is_written(tmp_path, capsys):
    empty, out = tmp_path / "empty", tmp_path / "demo"
    empty.mkdir()
    assert cli.main(["demo", "--data-dir", str(empty), "--out", str(out)]) == 2
    assert "cifar" in capsys.readouterr().err.lower()
    assert not out.exists()


def test_curves_carry_the_spread_over_repeats():
    from resnetlab.report import _mean_curve
    runs = [{"events": [{"kind": "train", "step": 10, "error": e}, {"kind": "train", "step": 20, "error": e / 2}]}
            for e in (0.4, 0.6, 0.5)]
    steps, mean, low, high = _mean_curve(runs, "train")
    assert steps.tolist() == [10, 20] and mean == pytest.approx([50.0, 25.0])
    assert low == pytest.approx([40.0, 20.0]) and high == pytest.approx([60.0, 30.0])


def test_study_refuses_a_model_seed(tmp_path, capsys):
    """A model seed would give every repeat the same initial net, while the step-0 measurements rebuild it
    from the run's seed: the study takes --seed (repeat r: seed + r) and says so, writing nothing."""
    with pytest.raises(ValueError, match="give --seed, not --model.seed"):
        study.check_config(StudyConfig(model=ModelConfig(seed=3), out=str(tmp_path / "s")))
    assert cli.main(["study", "shortcuts", "--model.seed", "3", "--out", str(tmp_path / "s")]) == 2
    assert "--model.seed" in capsys.readouterr().err and not (tmp_path / "s").exists()


def test_a_budget_holding_out_the_whole_training_set_writes_nothing(tmp_path, capsys):
    """A dataset no larger than the budget's validation split is refused before the first run starts (it was
    refused by the first run's training, after study.json and the run's folder were written)."""
    out = tmp_path / "s"
    assert cli.main(["study", "shortcuts", "--data", "synthetic", "--val-split", "5000", "--out", str(out)]) == 2
    assert "holds out 5000 training images for validation, but this synthetic has 5000" in capsys.readouterr().err
    assert not out.exists()


def test_report_only_with_nothing_finished_writes_nothing(tmp_path, capsys):
    """`--report-only` on a folder without finished runs is refused before study.json is written (it was
    written, and then the report refused)."""
    assert cli.main(["study", "shortcuts", "--report-only", "--out", str(tmp_path / "s")]) == 2
    assert "no finished runs of this grid to report on" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_ctrl_c_in_a_study_says_to_rerun_the_study(tmp_path, monkeypatch, capsys):
    """Interrupted inside one of its runs, the study named that run's `resnetlab train --resume`, which finishes
    the run but not the grid; the advice is the same command, which resumes it (as checked here)."""
    import resnetlab.train as T
    calls, real = {"n": 0}, T.train_step

    def interrupted_at_7(*args, **kwargs):  # the key press, in the first run's 7th step
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(T, "train_step", interrupted_at_7)
    argv = ["study", "shortcuts", "--depths", "8", "--options", "A", "--iterations", "12", "--batch-size", "16",
            "--checkpoint-every", "5", "--width", "2", "--threads", "1", "--precision", "fp32",
            "--analysis-images", "16", "--out", str(tmp_path / "s")]
    assert cli.main(argv) == 130
    err = capsys.readouterr().err
    assert "resnet8-A-r0 interrupted at step 7; the last checkpoint is" in err and "(step 5)" in err
    assert "continue with: the same command (finished runs are skipped, this one resumes" in err
    assert "resnetlab train --out" not in err
    monkeypatch.setattr(T, "train_step", real)
    assert cli.main(argv) == 0
    assert "1/1 resnet8-A-r0: resuming" in capsys.readouterr().err
