"""The learning rate at every iteration of a round, a pure function of the iteration: linear
warm-up, then ×gamma at each milestone (open_lth's "80ep,120ep" style). Being a function of the
iteration alone, the schedule's state at iteration K is K itself: a resumed round, or one rewound
to iteration K (`rewind = "iter:K"`), continues the schedule exactly where it was."""

from __future__ import annotations

from collections.abc import Callable

from lth.config import TrainConfig, iterations


def learning_rate(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate of the iteration after `step` iterations (step counts from 0): during a
    warm-up of W iterations it rises linearly to `lr` ((step + 1) / W, so no iteration is wasted
    at 0), and it is multiplied by `gamma` once for every milestone at or before `step`."""
    warmup = iterations(cfg.warmup, steps_per_epoch)
    scale = min(1.0, (step + 1) / warmup) if warmup else 1.0
    passed = sum(1 for m in cfg.milestones.split(",") if m.strip() and iterations(m, steps_per_epoch) <= step)
    return cfg.lr * scale * cfg.gamma**passed


def is_constant(cfg: TrainConfig) -> bool:
    """No warm-up and no milestones: the seed's and Frankle & Carbin's constant learning rate."""
    return not cfg.milestones.strip() and iterations(cfg.warmup, 1) == 0


def round_schedule(cfg: TrainConfig, steps_per_epoch: int, total: int, fine_tune: bool = False) -> Callable[[int], float]:
    """A round's learning rate by iteration. Fine-tuning (rewind `best`/`final`) trains at the
    schedule's last learning rate throughout (Renda et al. 2020's baseline); every other rewind
    point, learning-rate rewinding (`lr`) included, replays the schedule from its start."""
    if fine_tune:
        last = learning_rate(cfg, total - 1, steps_per_epoch)
        return lambda step: last
    return lambda step: learning_rate(cfg, step, steps_per_epoch)
