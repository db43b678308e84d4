"""The learning rate at every iteration of a round, a pure function of the iteration: linear
warm-up, then ×gamma at each milestone (open_lth's "80ep,120ep" style). Being a function of the
iteration alone, the schedule's state at iteration K is K itself: a resumed round, or one rewound
to iteration K (`rewind = "iter:K"`), continues the schedule exactly where it was."""

from __future__ import annotations

from collections.abc import Callable

from lth.config import TrainConfig, iterations


def _points(cfg: TrainConfig, steps_per_epoch: int) -> tuple[int, list[int]]:
    """The warm-up length and the milestones, in iterations."""
    return iterations(cfg.warmup, steps_per_epoch), [iterations(m, steps_per_epoch) for m in cfg.milestones.split(",") if m.strip()]


def _rate(cfg: TrainConfig, step: int, warmup: int, milestones: list[int]) -> float:
    scale = min(1.0, (step + (0 if cfg.warmup_from_zero else 1)) / warmup) if warmup else 1.0
    return cfg.lr * scale * cfg.gamma ** sum(1 for m in milestones if m <= step)


def learning_rate(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate of the iteration after `step` iterations (step counts from 0): during a
    warm-up of W iterations it rises linearly to `lr` ((step + 1) / W, so no iteration is wasted
    at 0; step / W with `warmup_from_zero`, as open_lth), and it is multiplied by `gamma` once for every milestone at or before `step`."""
    return _rate(cfg, step, *_points(cfg, steps_per_epoch))


def is_constant(cfg: TrainConfig) -> bool:
    """No warm-up and no milestones: the seed's and Frankle & Carbin's constant learning rate."""
    return _points(cfg, 1) == (0, [])


def round_schedule(cfg: TrainConfig, steps_per_epoch: int, total: int, fine_tune: bool = False) -> Callable[[int], float]:
    """A round's learning rate by iteration (the lengths parsed once, not at every iteration).
    Fine-tuning (rewind `best`/`final`) trains at the schedule's last learning rate throughout
    (Renda et al. 2020's baseline); every other rewind point, learning-rate rewinding (`lr`)
    included, replays the schedule from its start."""
    warmup, milestones = _points(cfg, steps_per_epoch)
    if fine_tune:
        last = _rate(cfg, total - 1, warmup, milestones)
        return lambda step: last
    return lambda step: _rate(cfg, step, warmup, milestones)
