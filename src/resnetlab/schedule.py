"""Training recipes and learning-rate schedules, all defined in iterations (optimizer steps).

A recipe fills the fields of :class:`resnetlab.train.TrainConfig` left unset (``None``). ``he2016-cifar`` is
He et al. 2016, Sec. 4.2: SGD 0.9, weight decay 1e-4, batch 128, lr 0.1 divided by 10 at 32k and 48k of
64k iterations (ResNet-110 and deeper: 0.01 until the training error is below 80%). A shorter or longer
run keeps the milestones' fractions. :class:`Schedule` is a pure function of the step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("step", "cosine", "onecycle", "constant")
WARMUPS = ("auto", "none", "he2016", "linear")

# Each recipe sets every field of TrainConfig that defaults to None ("the recipe's").
_HE2016 = dict(
    iterations=64000, batch_size=128, lr=0.1, momentum=0.9, nesterov=False, weight_decay=1e-4,
    decay_norm_and_bias=True,  # the paper's Torch/Caffe code decays every parameter
    schedule="step", milestones=(32000, 48000), gamma=0.1,
    warmup="auto",  # "he2016" for depth >= 110, "none" below
    warmup_lr=0.01, warmup_steps=0, warmup_error=0.8,  # 0: no cap, as in the paper
    label_smoothing=0.0, grad_clip=0.0, normalization="pixel", padding="mean",
)
RECIPES: dict[str, dict] = {
    "he2016-cifar": _HE2016,
    # he2016-cifar with the two divisions at 75% and 90% of the run: in a run of a few hundred iterations
    # (the demo's) the deeper nets need most of it at the full lr to get anywhere.
    "he2016-short": {**_HE2016, "milestones": (48000, 57600)},
    "modern-cifar": dict(
        iterations=64000, batch_size=128, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
        decay_norm_and_bias=False, schedule="cosine", milestones=(), gamma=0.1,
        warmup="linear", warmup_lr=0.0, warmup_steps=1000, warmup_error=0.8,
        label_smoothing=0.1, grad_clip=0.0, normalization="channel", padding="black",
    ),
}


def get_recipe(name: str) -> dict:
    """The defaults of recipe ``name``; a clear error for unknown names."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; valid: {', '.join(RECIPES)}")
    return dict(RECIPES[name])


def scale_milestones(milestones: tuple[int, ...], recipe_iterations: int, iterations: int) -> tuple[int, ...]:
    """Milestones of a recipe of ``recipe_iterations`` steps moved to the same fractions of ``iterations``."""
    return tuple(int(round(m * iterations / recipe_iterations)) for m in milestones)


def resolve_warmup(warmup: str, depth: int) -> str:
    """``"auto"`` means the paper's rule: the 0.01 warm-up for networks of 110 layers or more."""
    if warmup not in WARMUPS:
        raise ValueError(f"unknown warmup {warmup!r}; valid: {', '.join(WARMUPS)}")
    if warmup == "auto":
        return "he2016" if depth >= 110 else "none"
    return warmup


@dataclass(frozen=True)
class Schedule:
    """The learning rate at every step of a run.

    schedule: ``"step"`` (times ``gamma`` at each milestone), ``"cosine"`` (``lr`` to 0 after the warm-up),
    ``"onecycle"`` (PyTorch's ``OneCycleLR`` with its defaults: cosine up from ``lr/25`` over 30% of the run,
    then down to ``lr/25e4``) or ``"constant"``. warmup: ``"he2016"`` is ``warmup_lr`` until the run reports
    ``warmup_end`` (training error below the threshold), capped at ``warmup_steps`` if positive; ``"linear"``
    ramps from ``warmup_lr`` to ``lr`` over ``warmup_steps``.
    """

    lr: float
    iterations: int
    schedule: str = "step"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup: str = "none"
    warmup_lr: float = 0.01
    warmup_steps: int = 0

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        if self.warmup not in WARMUPS or self.warmup == "auto":
            raise ValueError(f"warmup must be one of none, he2016, linear (resolved), got {self.warmup!r}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"milestones must be increasing, got {self.milestones}")

    def in_warmup(self, step: int, warmup_end: int | None = None) -> bool:
        """Whether ``step`` is still in the he2016/linear warm-up."""
        if self.warmup == "he2016":
            # The paper ends it on the training error alone; warmup_steps > 0 adds a cap.
            cap = self.warmup_steps if self.warmup_steps > 0 else math.inf
            return step < (cap if warmup_end is None else min(warmup_end, cap))
        return self.warmup == "linear" and step < self.warmup_steps

    def __call__(self, step: int, warmup_end: int | None = None) -> float:
        """Learning rate for optimizer step ``step`` (0-based). ``warmup_end``: see the class docstring."""
        if self.warmup == "he2016" and self.in_warmup(step, warmup_end):
            return self.warmup_lr
        if self.warmup == "linear" and step < self.warmup_steps:
            return self.warmup_lr + (self.lr - self.warmup_lr) * (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return self.lr
        if self.schedule == "step":
            # The paper counts milestones from step 0, warm-up included.
            return self.lr * self.gamma ** sum(1 for m in self.milestones if step >= m)
        if self.schedule == "cosine":
            start = self.warmup_steps if self.warmup == "linear" else 0
            t = min(max(step - start, 0) / max(self.iterations - start, 1), 1.0)
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * t))
        # onecycle, as torch.optim.lr_scheduler.OneCycleLR's defaults (two phases, cosine annealing)
        up_end = float(0.3 * self.iterations) - 1
        down_end = float(self.iterations - 1)
        if step <= up_end:
            start, end, pct = self.lr / 25.0, self.lr, step / up_end if up_end > 0 else 1.0
        else:
            start, end = self.lr, self.lr / 25e4
            pct = min((step - up_end) / max(down_end - up_end, 1e-12), 1.0)
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
