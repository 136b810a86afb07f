"""Learning-rate schedules and recipes: the numbers the paper and PyTorch define."""
import math

import pytest

from resnetlab.models import ModelConfig
import torch

from resnetlab.schedule import Schedule, get_recipe, resolve_warmup, scale_milestones
from resnetlab.train import TrainConfig, make_schedule, param_groups, resolve_config


def he2016(model="resnet20", **kw):
    return resolve_config(TrainConfig(model=ModelConfig(model), out="unused", **kw))


def test_he2016_cifar_step_schedule():
    cfg = he2016()
    assert (cfg.iterations, cfg.batch_size, cfg.momentum, cfg.weight_decay) == (64000, 128, 0.9, 1e-4)
    assert cfg.milestones == (32000, 48000) and cfg.warmup == "none"
    s = make_schedule(cfg)
    expected = {0: 0.1, 31999: 0.1, 32000: 0.01, 47999: 0.01, 48000: 0.001, 63999: 0.001}
    for step, lr in expected.items():
        assert s(step) == pytest.approx(lr, rel=1e-12), step


def test_he2016_warmup_for_110_layers():
    cfg = he2016("resnet110")
    assert cfg.warmup == "he2016" and cfg.warmup_lr == 0.01 and cfg.warmup_steps == 0  # no cap: the paper's
    s = make_schedule(cfg)
    # Not yet below 80% training error: 0.01 for as long as that lasts (the paper caps nothing).
    assert [s(t) for t in (0, 1, 399, 400, 5000)] == [0.01] * 5
    # The error fell below 80% at step 150: 0.1 from step 150 on, then the step decays.
    assert s(149, warmup_end=150) == 0.01 and s(150, warmup_end=150) == 0.1
    assert s(31999, warmup_end=150) == 0.1 and s(32000, warmup_end=150) == pytest.approx(0.01)
    # The optional cap: back to 0.1 at step 400 even if the error is still high.
    capped = make_schedule(he2016("resnet110", warmup_steps=400))
    assert capped(399) == 0.01 and capped(400) == 0.1 and capped(30, warmup_end=30) == 0.1
    assert resolve_warmup("auto", 56) == "none" and resolve_warmup("auto", 1202) == "he2016"
    assert he2016("resnet56", warmup="he2016").warmup == "he2016"  # a flag for shallower nets


def test_iterations_scale_the_milestones():
    cfg = he2016(iterations=2000)
    assert cfg.milestones == (1000, 1500)
    assert scale_milestones((32000, 48000), 64000, 3000) == (1500, 2250)
    assert he2016(iterations=2000, milestones=(100, 200)).milestones == (100, 200)  # explicit wins


def test_cosine_matches_pytorch():
    lr, total = 0.1, 50
    s = Schedule(lr=lr, iterations=total, schedule="cosine")
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    for step in range(total):
        assert s(step) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-12), step
        opt.step()
        ref.step()
    assert s(25) == pytest.approx(0.05)


def test_onecycle_matches_pytorch():
    lr, total = 0.4, 100
    s = Schedule(lr=lr, iterations=total, schedule="onecycle")
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr, momentum=0.9)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, cycle_momentum=False)
    for step in range(total):
        assert s(step) == pytest.approx(ref.get_last_lr()[0], rel=1e-9), step
        opt.step()
        ref.step()
    assert s(0) == pytest.approx(lr / 25) and max(s(t) for t in range(total)) == pytest.approx(lr)


def test_linear_warmup_then_cosine():
    s = Schedule(lr=1.0, iterations=110, schedule="cosine", warmup="linear", warmup_lr=0.0, warmup_steps=10)
    assert [s(t) for t in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert s(10) == pytest.approx(1.0) and s(60) == pytest.approx(0.5) and s(109) < 0.01


def test_modern_recipe_and_errors():
    cfg = resolve_config(TrainConfig(out="x", recipe="modern-cifar", iterations=1000))
    assert cfg.schedule == "cosine" and cfg.nesterov and cfg.label_smoothing == 0.1
    assert cfg.decay_norm_and_bias is False and cfg.lr == 0.1
    with pytest.raises(ValueError, match="unknown recipe"):
        get_recipe("he2017")
    with pytest.raises(ValueError, match="unknown recipe"):
        resolve_config(TrainConfig(out="x", recipe="nope"))
    with pytest.raises(ValueError, match="unknown schedule"):
        resolve_config(TrainConfig(out="x", schedule="exp"))
    with pytest.raises(ValueError, match="--out"):
        resolve_config(TrainConfig())


def test_no_weight_decay_on_norm_and_bias_by_rank():
    from resnetlab import create_model
    model = create_model("resnet20", shortcut="B", seed=0)
    decay, no_decay = param_groups(model, 5e-4, decay_norm_and_bias=False)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    # What the rank rule must select, found by module type instead.
    norm_or_bias = set()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            norm_or_bias |= {id(m.weight), id(m.bias)}
        if getattr(m, "bias", None) is not None and isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            norm_or_bias.add(id(m.bias))
    assert {id(p) for p in no_decay["params"]} == norm_or_bias
    assert all(p.ndim == 4 or p is model.fc.weight for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    (everything,) = param_groups(model, 1e-4, decay_norm_and_bias=True)
    assert len(everything["params"]) == len(list(model.parameters()))
    assert not math.isnan(everything["weight_decay"])



def test_recipe_warmups_scale_with_iterations():
    """modern-cifar's 1000-step linear warm-up of 64k iterations is 1/64 of any run: a 100-iteration run
    leaves it after 2 steps instead of never; a warm-up given explicitly is kept."""
    short = resolve_config(TrainConfig(out="x", recipe="modern-cifar", iterations=100))
    assert short.warmup == "linear" and short.warmup_steps == 2
    s = make_schedule(short)
    assert s(0) == pytest.approx(short.lr / 2) and s(1) == pytest.approx(short.lr)  # the ramp is over
    assert resolve_config(TrainConfig(out="x", recipe="modern-cifar", iterations=64000)).warmup_steps == 1000
    assert resolve_config(TrainConfig(out="x", recipe="modern-cifar", iterations=100, warmup_steps=30)).warmup_steps == 30
    assert he2016("resnet110", iterations=100).warmup_steps == 0  # the paper's: no cap, nothing to scale
