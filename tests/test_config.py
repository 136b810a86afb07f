"""Config dataclasses -> CLI, files as defaults, flags override, unknown keys are errors."""
import argparse
import subprocess
import sys
from dataclasses import dataclass

import pytest

from resnetlab import cli
from resnetlab.config import add_arguments, from_dict, load_file, opt, parse_config, to_dict


@dataclass(frozen=True)
class Demo:
    """A config used only by these tests."""

    lr: float = opt(0.1, "peak learning rate")
    steps: int = opt(100, "iterations")
    name: str = opt("resnet20", "model name")
    nesterov: bool = opt(False, "Nesterov momentum")
    milestones: tuple[int, ...] = opt((32, 48), "steps where lr drops")
    out: str | None = opt(None, "output folder")
    schedule: str = opt("step", "schedule", choices=("step", "cosine"))


def _parse(argv):
    p = argparse.ArgumentParser()
    add_arguments(p, Demo)
    return parse_config(Demo, p.parse_args(argv))


def test_defaults_written_once():
    assert _parse([]) == Demo()


def test_flags_convert_types():
    cfg = _parse(["--lr", "0.5", "--steps", "7", "--nesterov", "--milestones", "1,2,3", "--out", "x"])
    assert cfg.lr == 0.5 and cfg.steps == 7 and cfg.nesterov is True
    assert cfg.milestones == (1, 2, 3) and cfg.out == "x"
    assert _parse(["--no-nesterov"]).nesterov is False


@pytest.mark.parametrize("ext,text", [
    (".yaml", "lr: 0.2\nsteps: 50\nmilestones: [5, 6]\n"),
    (".toml", "lr = 0.2\nsteps = 50\nmilestones = [5, 6]\n"),
    (".json", '{"lr": 0.2, "steps": 50, "milestones": [5, 6]}'),
])
def test_file_sets_defaults_and_flags_override(tmp_path, ext, text):
    path = tmp_path / f"c{ext}"
    path.write_text(text)
    cfg = _parse(["--config", str(path), "--steps", "9"])
    assert cfg.lr == 0.2 and cfg.steps == 9 and cfg.milestones == (5, 6)


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
    with pytest.raises(ValueError, match="not found"):
        load_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.toml"
    bad.write_text("lr = = 1")
    with pytest.raises(ValueError, match="could not be parsed"):
        load_file(bad)
    with pytest.raises(SystemExit):  # argparse rejects unknown flags
        _parse(["--learning-rate", "1"])


def test_none_is_a_value_of_string_fields():
    """`--shortcut none` means the plain net, never "unset" (which would silently give option A)."""
    from resnetlab.models import ModelOptions
    from resnetlab.train import TrainConfig
    assert from_dict(ModelOptions, {"shortcut": "none"}).shortcut == "none"
    assert from_dict(TrainConfig, {"shortcut": "none"}).shortcut == "none"
    assert from_dict(Demo, {"out": "none"}).out == "none"
    assert from_dict(ModelOptions, {"width": "none"}).width is None
    assert from_dict(ModelOptions, {"shortcut": None}).shortcut is None


def test_round_trip_through_dict():
    cfg = Demo(lr=0.3, milestones=(1, 2))
    assert from_dict(Demo, to_dict(cfg)) == cfg
    assert to_dict(cfg)["milestones"] == [1, 2]


def test_cli_dispatch_and_errors(capsys):
    assert cli.main(["--help"]) == 0
    assert "summary" in capsys.readouterr().out
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_python_dash_m():
    out = subprocess.run([sys.executable, "-m", "resnetlab", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("resnetlab ")
