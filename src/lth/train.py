"""One round of training (DESIGN §1): Adam, per-step re-masking, validation after every epoch
(or every N iterations), and the best (lowest validation loss, earlier on ties) and final weights.

The loop does no I/O: at each evaluation it hands a `RoundState` to `on_eval`, which the
experiment layer persists so that an interrupted round resumes from its last evaluation.
Everything random comes from `data_seed` via per-epoch generators, so a resumed round sees the
same data order as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lth.config import TrainConfig
from lth.data import Splits, to_float
from lth.masks import MaskApplier

StateDict = dict[str, torch.Tensor]


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed derived from `seed` and a label, stable across Python/torch versions."""
    text = ":".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def epoch_order(n: int, data_seed: int, round_index: int, epoch: int, device: torch.device) -> torch.Tensor:
    """The training-set permutation for one epoch, a pure function of its coordinates."""
    gen = torch.Generator().manual_seed(derive_seed(data_seed, "order", round_index, epoch))
    return torch.randperm(n, generator=gen).to(device)


def cpu_state(model: nn.Module) -> StateDict:
    """A detached CPU copy of the model's weights (what checkpoints and pruning read)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


@torch.inference_mode()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a split, in large batches, one host sync at the end."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=images.device, dtype=torch.float64)
    correct = torch.zeros((), device=images.device, dtype=torch.int64)
    for start in range(0, images.shape[0], batch_size):
        x = to_float(images[start : start + batch_size])
        y = labels[start : start + batch_size]
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
    model.train(was_training)
    n = images.shape[0]
    return float(loss_sum) / n, int(correct) / n


@dataclass
class RoundState:
    """Everything needed to continue a round after its `steps_done`-th iteration (an eval point)."""

    steps_done: int
    model: StateDict
    optimizer: dict[str, Any]
    best: StateDict
    best_step: int
    best_val_loss: float
    best_val_acc: float
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class RoundOutcome:
    best: StateDict
    final: StateDict
    best_step: int
    best_epoch: int
    best_val_loss: float
    best_val_acc: float
    final_val_loss: float
    final_val_acc: float
    test_acc_best: float
    test_acc_final: float
    test_loss_best: float
    test_loss_final: float
    history: list[dict[str, float]]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Adam:
    """Adam with Keras' epsilon (1e-7, not PyTorch's 1e-8); a fresh one every round."""
    return torch.optim.Adam(
        model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, foreach=True
    )


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Iterations per pass over `n` images; the last batch may be partial (as in Keras)."""
    return math.ceil(n / batch_size)


def round_length(cfg: TrainConfig, n: int, round_index: int) -> int:
    """Iterations in a round: `steps` if set, else the round's epochs × iterations per epoch."""
    if cfg.steps is not None:
        return cfg.steps
    epochs = cfg.initial_epochs if round_index == 0 else cfg.epochs
    return epochs * steps_per_epoch(n, cfg.batch_size)


def eval_interval(cfg: TrainConfig, n: int) -> int:
    return steps_per_epoch(n, cfg.batch_size) if cfg.eval_every == "epoch" else int(cfg.eval_every)


def train_round(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    splits: Splits,
    cfg: TrainConfig,
    data_seed: int,
    round_index: int,
    resume: RoundState | None = None,
    on_eval: Callable[[RoundState], None] | None = None,
    snapshots: Callable[[int, nn.Module], None] | None = None,
) -> RoundOutcome:
    """Train `model` (already rewound and masked) for one round under `masks`.

    Validation runs every `cfg.eval_every` iterations ("epoch": at each epoch's end) and after
    the last iteration; the best weights follow that cadence. `on_eval` receives the resumable
    state at every evaluation; `snapshots(step, model)` is called after every iteration (for
    late-rewinding points) and must be cheap when it has nothing to do.
    """
    device = splits.train_x.device
    model.to(device).train()
    optimizer = make_optimizer(model, cfg)
    apply_masks = MaskApplier(model, masks)
    apply_masks()

    if resume is not None:
        model.load_state_dict(resume.model)
        optimizer.load_state_dict(resume.optimizer)
        apply_masks()
        state = resume
    else:
        state = RoundState(0, {}, {}, cpu_state(model), 0, float("inf"), 0.0, [])

    n = splits.train_x.shape[0]
    per_epoch = steps_per_epoch(n, cfg.batch_size)
    total = round_length(cfg, n, round_index)
    every = eval_interval(cfg, n)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    order_epoch, order = -1, torch.empty(0)
    started = time.perf_counter()
    for step in range(state.steps_done, total):
        epoch_index, offset = divmod(step, per_epoch)
        if epoch_index != order_epoch:
            order_epoch, order = epoch_index, epoch_order(n, data_seed, round_index, epoch_index + 1, device)
        idx = order[offset * cfg.batch_size : (offset + 1) * cfg.batch_size]
        x = to_float(splits.train_x[idx])
        y = splits.train_y[idx]
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        apply_masks()
        with torch.no_grad():
            loss_sum += loss.detach().double() * y.shape[0]
            correct += (logits.argmax(1) == y).sum()
        seen += y.shape[0]
        done = step + 1
        if snapshots is not None:
            snapshots(done, model)
        if done % every and done != total:
            continue
        val_loss, val_acc = evaluate(model, splits.val_x, splits.val_y, cfg.eval_batch_size)
        if val_loss < state.best_val_loss:
            state.best, state.best_step = cpu_state(model), done
            state.best_val_loss, state.best_val_acc = val_loss, val_acc
        state.history.append(
            {
                "round": round_index,
                "epoch": math.ceil(done / per_epoch),
                "step": done,
                "train_loss": float(loss_sum) / seen,
                "train_acc": int(correct) / seen,
                "val_loss": val_loss,
                "val_acc": val_acc,
                "seconds": time.perf_counter() - started,
            }
        )
        loss_sum.zero_()
        correct.zero_()
        seen = 0
        state.steps_done = done
        state.model = cpu_state(model)
        state.optimizer = optimizer.state_dict()
        if on_eval is not None:
            on_eval(state)
        started = time.perf_counter()

    final = cpu_state(model)
    last = state.history[-1]
    test_loss_final, test_acc_final = evaluate(model, splits.test_x, splits.test_y, cfg.eval_batch_size)
    model.load_state_dict(state.best)
    test_loss_best, test_acc_best = evaluate(model, splits.test_x, splits.test_y, cfg.eval_batch_size)
    model.load_state_dict(final)
    return RoundOutcome(
        best=state.best,
        final=final,
        best_step=state.best_step,
        best_epoch=math.ceil(state.best_step / per_epoch),
        best_val_loss=state.best_val_loss,
        best_val_acc=state.best_val_acc,
        final_val_loss=last["val_loss"],
        final_val_acc=last["val_acc"],
        test_acc_best=test_acc_best,
        test_acc_final=test_acc_final,
        test_loss_best=test_loss_best,
        test_loss_final=test_loss_final,
        history=state.history,
    )
