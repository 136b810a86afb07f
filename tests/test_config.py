"""Config dataclasses -> CLI (tyro), files as defaults, flags override, unknown keys are errors."""
import ast
import dataclasses
import os
import pathlib
import subprocess
import sys
from dataclasses import dataclass
from typing import Literal, Optional

import pytest

from resnetlab import cli
from resnetlab.config import Ints, from_dict, from_strings, load_file, parse, to_dict
from resnetlab.models import ModelConfig

SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "resnetlab"


@dataclass(frozen=True)
class Demo:
    """A config used only by these tests."""

    model: ModelConfig = ModelConfig()
    """the network"""
    lr: float = 0.1
    """peak learning rate"""
    steps: int = 100
    """iterations"""
    nesterov: bool = False
    """Nesterov momentum"""
    milestones: Ints = (32, 48)
    """steps where lr drops"""
    out: Optional[str] = None
    """output folder"""
    schedule: Literal["step", "cosine"] = "step"
    """schedule"""


def _parse(argv):
    return parse(Demo, argv, prog="demo")


def test_no_flags_give_the_field_defaults():
    cfg = _parse([])
    assert (cfg.lr, cfg.steps, cfg.milestones, cfg.schedule, cfg.out) == (0.1, 100, (32, 48), "step", None)
    assert cfg.model == ModelConfig()


def test_flags_convert_types_and_lists_take_commas_or_spaces():
    cfg = _parse(["--lr", "0.5", "--steps", "7", "--nesterov", "--milestones", "1,2,3", "--out", "x"])
    assert cfg.lr == 0.5 and cfg.steps == 7 and cfg.nesterov is True
    assert cfg.milestones == (1, 2, 3) and cfg.out == "x"
    assert _parse(["--milestones", "4", "5"]).milestones == (4, 5)
    assert _parse(["--no-nesterov"]).nesterov is False


def test_model_options_nested_and_flat():
    a = _parse(["--model.name", "resnet56", "--model.shortcut", "none", "--model.width", "8"])
    b = _parse(["--model", "resnet56", "--shortcut", "none", "--width", "8"])
    assert a.model == b.model == ModelConfig("resnet56", shortcut="none", width=8)
    # Optional[bool] fields take a bare flag (tyro itself would want a value)
    assert _parse(["--preact"]).model.preact is True
    assert _parse(["--no-preact"]).model.preact is False
    assert _parse([]).model.preact is None


def test_bad_values_are_one_line_errors():
    """tyro's boxed messages become one ValueError line, which the CLI prints (exit 2)."""
    for argv, word in ((["--shortcut", "D"], "'D'"), (["--steps", "many"], "many"),
                       (["--learning-rate", "1"], "--learning-rate"), (["--schedule", "linear"], "linear")):
        with pytest.raises(ValueError) as e:
            _parse(argv)
        assert word in str(e.value) and "\n" not in str(e.value) and "--help" in str(e.value)
        assert not any(c in str(e.value) for c in "│╭╰"), str(e.value)


@pytest.mark.parametrize("ext,text", [
    (".yaml", "lr: 0.2\nsteps: 50\nmilestones: [5, 6]\nmodel: {width: 4}\nshortcut: B\n"),
    (".toml", "lr = 0.2\nsteps = 50\nmilestones = [5, 6]\nshortcut = 'B'\n[model]\nwidth = 4\n"),
    (".json", '{"lr": 0.2, "steps": 50, "milestones": [5, 6], "model": {"width": 4, "shortcut": "B"}}'),
])
def test_file_sets_defaults_and_flags_override(tmp_path, ext, text):
    path = tmp_path / f"c{ext}"
    path.write_text(text)
    cfg = _parse(["--config", str(path), "--steps", "9"])
    assert cfg.lr == 0.2 and cfg.steps == 9 and cfg.milestones == (5, 6)
    assert cfg.model.width == 4 and cfg.model.shortcut == "B"


def test_unknown_keys_and_bad_values_are_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 0.2\nlearning_rate: 3\n")
    with pytest.raises(ValueError, match="unknown key.*learning_rate.*valid:.*lr"):
        _parse(["--config", str(path)])
    with pytest.raises(ValueError, match="steps"):
        from_dict(Demo, {"steps": "many"})
    with pytest.raises(ValueError, match="steps"):
        from_dict(Demo, {"steps": 1.5})
    with pytest.raises(ValueError, match="schedule='linear' is not one of step, cosine"):
        from_dict(Demo, {"schedule": "linear"})
    with pytest.raises(ValueError, match="unknown key.*frob.*valid:.*shortcut"):
        from_dict(Demo, {"model": {"frob": 1}})
    with pytest.raises(ValueError, match="not found"):
        load_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.toml"
    bad.write_text("lr = = 1")
    with pytest.raises(ValueError, match="could not be parsed"):
        load_file(bad)
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 1\nsteps: [20\n")
    with pytest.raises(ValueError) as e:  # one line naming where, not PyYAML's four-line excerpt
        load_file(bad)
    assert "could not be parsed" in str(e.value) and "at line 3, column 1" in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_none_is_a_value_of_string_fields():
    """`--shortcut none` means the plain net, never "unset" (which would silently give option A)."""
    assert _parse(["--shortcut", "none"]).model.shortcut == "none"
    assert from_dict(Demo, {"shortcut": "none"}).model.shortcut == "none"
    assert from_strings(ModelConfig, {"shortcut": "none", "width": "none"}).shortcut == "none"
    assert from_strings(ModelConfig, {"width": "none"}).width is None


def test_round_trip_through_dict():
    cfg = Demo(lr=0.3, milestones=(1, 2), model=ModelConfig("resnet32", preact=True))
    assert from_dict(Demo, to_dict(cfg)) == cfg
    assert to_dict(cfg)["milestones"] == [1, 2] and to_dict(cfg)["model"]["preact"] is True


def _config_classes():
    """Every config dataclass of the package (``*Config``; ModelSpec is the registry's per-name defaults,
    not options): name -> set of field names."""
    out = {}
    for path in SRC.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                    getattr(d, "id", None) == "dataclass" or getattr(getattr(d, "func", None), "id", None) == "dataclass"
                    for d in node.decorator_list) and node.name.endswith("Config"):
                out[f"{path.stem}.{node.name}"] = {s.target.id for s in node.body if isinstance(s, ast.AnnAssign)}
    return out


def test_model_options_are_declared_only_in_model_config():
    """A model option lives in ModelConfig and nowhere else (``seed``, the run seed, aside)."""
    options = {f.name for f in dataclasses.fields(ModelConfig)} - {"seed", "name"}
    classes = _config_classes()
    assert "models.ModelConfig" in classes and len(classes) > 5
    offenders = {name: sorted(fields & options) for name, fields in classes.items()
                 if name != "models.ModelConfig" and fields & options}
    assert offenders == {}


def test_every_command_nests_the_model_config():
    from resnetlab.analysis import AnalyzeConfig
    from resnetlab.evaluate_cli import EvalConfig, PredictConfig
    from resnetlab.landscape import LandscapeConfig
    from resnetlab.study import DemoConfig, StudyConfig
    from resnetlab.summary import SummaryConfig
    from resnetlab.train import TrainConfig
    for cls in (AnalyzeConfig, EvalConfig, PredictConfig, LandscapeConfig, DemoConfig, StudyConfig, SummaryConfig,
                TrainConfig):
        assert {f.name: f.type for f in dataclasses.fields(cls)}.get("model") in (ModelConfig, "ModelConfig"), cls


def test_cli_dispatch_and_errors(capsys):
    assert cli.main(["--help"]) == 0
    assert "summary" in capsys.readouterr().out
    assert cli.main([]) == 2
    assert "usage" in capsys.readouterr().err
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_python_dash_m_and_help_do_not_import_torch():
    out = subprocess.run([sys.executable, "-m", "resnetlab", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("resnetlab ")
    probe = ("import sys, resnetlab, resnetlab.cli as c; c.main(['--help']); "
             "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith("NO-TORCH"), out.stdout + out.stderr


@pytest.mark.parametrize("argv", [["--help"], ["models"]])
def test_a_reader_that_goes_away_ends_the_command_quietly(argv):
    # `resnetlab --help | head -1`: the reader closes the pipe; the command exits 0 without a traceback
    read, write = os.pipe()
    os.close(read)
    try:
        out = subprocess.run([sys.executable, "-m", "resnetlab", *argv], stdout=write, stderr=subprocess.PIPE,
                             text=True, timeout=120)
    finally:
        os.close(write)
    assert out.returncode == 0 and out.stderr == "", out.stderr
