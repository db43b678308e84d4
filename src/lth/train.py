"""One round of training (DESIGN §1) for K ≥ 1 studies: the optimizer and its learning-rate
schedule, per-step re-masking, validation every epoch (or N iterations), best (lowest validation
loss, earlier on ties) and final weights. No I/O: each evaluation hands a `RoundState` to
`on_eval`, to resume from; the data order and augmentation are pure functions of the data seed and
the epoch (`lth.seeds`), and the learning rate of the iteration (`lth.schedule`), so a round
resumed, or started at iteration K, sees exactly what an uninterrupted one would."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn

from lth.config import TrainConfig
from lth.data import Splits, input_transform
from lth.engine import Engine, GraphedStep, ModuleEngine, StackedEngine, StateDict, eager_step, numerics, use_graphs
from lth.schedule import round_schedule
from lth.seeds import epoch_augmentation, epoch_order


def optimizer_tensors(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """An optimizer's state as flat tensors `opt/<param index>/<key>`, and the keys each index holds."""
    keys = {str(pid): sorted(entry) for pid, entry in state["state"].items()}
    return {f"opt/{pid}/{key}": v for pid, entry in state["state"].items() for key, v in entry.items()}, keys


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], keys: dict[str, list[str]], param_groups: list[dict[str, Any]]) -> dict[str, Any]:
    """The inverse of `optimizer_tensors`, with the param groups stored beside it."""
    state = {int(pid): {key: tensors[f"opt/{pid}/{key}"] for key in names} for pid, names in keys.items()}
    return {"state": state, "param_groups": param_groups}


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
    # Training-metric sums since the last evaluation, when the position was saved between two
    # (on a stop signal): {"seen": images, "loss_sum": float, "correct": int}.
    partial: dict[str, Any] = field(default_factory=dict)

    def to_file(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors and metadata for the run directory's resume file (with the torch RNG)."""
        tensors = {**{f"model/{k}": v for k, v in self.model.items()}, **{f"best/{k}": v for k, v in self.best.items()}}
        optimizer, keys = optimizer_tensors(self.optimizer)
        tensors.update(optimizer)
        tensors["rng/torch"] = torch.get_rng_state()
        meta = {"steps_done": self.steps_done, "best_step": self.best_step, "best_val_loss": self.best_val_loss,
                "best_val_acc": self.best_val_acc, "history": self.history, "partial": self.partial,
                "optimizer": {"param_groups": self.optimizer["param_groups"], "state": keys}}
        return tensors, meta

    @classmethod
    def from_file(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> RoundState:
        """The inverse of `to_file`; restores the torch RNG as it was saved."""
        torch.set_rng_state(tensors["rng/torch"])
        opt = optimizer_from_tensors(tensors, meta["optimizer"]["state"], meta["optimizer"]["param_groups"])
        part = lambda prefix: {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}  # noqa: E731
        return cls(meta["steps_done"], part("model/"), opt,
                   part("best/"), meta["best_step"], meta["best_val_loss"], meta["best_val_acc"], meta["history"], meta.get("partial", {}))


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
    engine: str = "eager"  # how its iterations ran: "graph", "eager", or eager after a failed capture (why)


class Diverged(RuntimeError):
    """A non-finite loss or weight: the round stops at once and nothing after it is saved."""

    def __init__(self, message: str, member: int) -> None:
        super().__init__(message)
        self.member = member


class Stopped(KeyboardInterrupt):
    """A stop was requested (SIGTERM, SIGINT); every member's position was saved first."""

    signum: int | None = None  # set by whoever installed the handlers

    def __init__(self, round_index: int, step: int) -> None:
        super().__init__(f"round {round_index} step {step}")
        self.round_index, self.step = round_index, step


# On CUDA, reading the loss back every step would stall the graph; there it is read this often.
FINITE_CHECK_EVERY_CUDA = 50


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Iterations per pass over `n` images; the last batch may be partial (as in Keras)."""
    return math.ceil(n / batch_size)


@dataclass
class Member:
    """One study's part in a round (a plain run is one member; `--parallel K` trains K together)."""

    model: nn.Module
    masks: Mapping[str, torch.Tensor]
    data_seed: int
    resume: RoundState | None = None
    on_eval: Callable[[RoundState], None] | None = None
    on_stop: Callable[[RoundState], None] | None = None  # saves a position between evaluations
    # After every iteration: (step, a function returning the weights, one returning the optimizer
    # state); cheap when it has nothing to do.
    snapshots: Callable[[int, Callable[[], StateDict], Callable[[], dict[str, Any]]], None] | None = None
    fine_tune: bool = False  # train at the schedule's last learning rate (rewind `best`/`final`)


def train_rounds(members: Sequence[Member], splits: Splits, cfg: TrainConfig, round_index: int,
                 stop: Callable[[], bool] = lambda: False) -> list[RoundOutcome]:
    """Train K studies' round together (K = 1: a plain round), validating every `cfg.eval_every`
    iterations and after the last; members must all start fresh or all resume at one iteration.
    `stop()` is asked after every iteration: when true, positions are saved and `Stopped` raised."""
    device = splits.train_x.device
    resumed = [m.resume for m in members]
    if len({r.steps_done if r else 0 for r in resumed}) > 1 or (any(resumed) and not all(resumed)):
        raise ValueError("studies trained together must resume from the same iteration")
    if len({m.fine_tune for m in members}) > 1:
        raise ValueError("studies trained together must share one learning-rate schedule (fine-tuning or not)")
    graphed = use_graphs(cfg.engine, device)
    prepare = input_transform(splits.normalization, device)
    with numerics(cfg.tf32, device):
        if len(members) == 1:
            engine: Engine = ModuleEngine(members[0].model, members[0].masks, cfg, device, capturable=graphed, prepare=prepare)
        else:
            engine = StackedEngine([m.model for m in members], [m.masks for m in members], cfg, device, capturable=graphed, prepare=prepare)
        if all(resumed):
            engine.load_weights([r.model for r in resumed])  # type: ignore[union-attr]
            engine.load_optimizer([r.optimizer for r in resumed])  # type: ignore[union-attr]
            states = list(resumed)  # type: ignore[arg-type]
        else:
            states = [RoundState(0, {}, {}, engine.state(i), 0, float("inf"), 0.0, []) for i in range(len(members))]
        if graphed:
            step: Callable[..., None] = GraphedStep(engine, splits.train_x, splits.train_y, cfg.batch_size, fallback=cfg.engine == "auto",
                                                    augment=cfg.augment != "none")
        else:
            step = partial(eager_step, engine, splits.train_x, splits.train_y)
        outcomes = _loop(members, engine, step, states, splits, cfg, round_index, stop)
        engine.write_back([m.model for m in members])
        if graphed:
            used = "graph" if GraphedStep.failure is None else f"eager (graph capture failed: {GraphedStep.failure})"
            outcomes = [dataclasses.replace(o, engine=used) for o in outcomes]
    return outcomes


def _loop(members: Sequence[Member], engine: Engine, step: Callable[..., None], states: list[RoundState], splits: Splits,
          cfg: TrainConfig, round_index: int, stop: Callable[[], bool]) -> list[RoundOutcome]:
    n = splits.train_x.shape[0]
    per_epoch = steps_per_epoch(n, cfg.batch_size)
    total = cfg.round_length(round_index, per_epoch)
    learning_rate = round_schedule(cfg, per_epoch, total, members[0].fine_tune)
    augment, augments = cfg.augment != "none", None
    every = cfg.eval_interval(per_epoch)
    # Without a validation split (open_lth's way) the evaluations watch the test set, as
    # open_lth's do, and choose nothing: the best weights are the last evaluated, the final ones.
    validates = splits.validates
    watched, prefix = ((splits.val_x, splits.val_y), "val") if validates else ((splits.test_x, splits.test_y), "test")
    check_every = 1 if splits.train_x.device.type == "cpu" else FINITE_CHECK_EVERY_CUDA
    order_epoch, orders = -1, torch.empty(0)
    seen, started = states[0].partial.get("seen", 0), time.perf_counter()
    for i, state in enumerate(states):  # a position saved between evaluations carries its sums
        engine.loss_sum[i], engine.correct[i] = state.partial.get("loss_sum", 0.0), state.partial.get("correct", 0)

    def diverged(i: int, done: int, what: str) -> Diverged:
        return Diverged(f"round {round_index}, epoch {math.ceil(done / per_epoch)}, step {done}: {what}", i)

    for index in range(states[0].steps_done, total):
        epoch_index, offset = divmod(index, per_epoch)
        if epoch_index != order_epoch:
            # [K, n]: each study's permutation for this epoch, made on the host and copied once
            order_epoch = epoch_index
            orders = torch.stack([epoch_order(n, m.data_seed, round_index, epoch_index + 1) for m in members]).to(splits.train_x.device)
            if augment:
                augments = torch.stack([epoch_augmentation(n, m.data_seed, round_index, epoch_index + 1) for m in members]).to(splits.train_x.device)
        window = slice(offset * cfg.batch_size, (offset + 1) * cfg.batch_size)
        idx = orders[:, window]
        engine.set_lr(learning_rate(index))
        step(idx, augments[:, window] if augments is not None else None)
        seen += idx.shape[1]
        done = index + 1
        if done % check_every == 0 and not (finite := torch.isfinite(engine.loss_sum)).all():
            raise diverged(int((~finite).nonzero()[0]), done, f"the training loss is {engine.loss_sum[~finite][0].item()}")
        for i, member in enumerate(members):
            if member.snapshots is not None:
                member.snapshots(done, partial(engine.state, i), partial(engine.optimizer_state, i))
        if done % every == 0 or done == total:
            evaluations = engine.evaluate(*watched, cfg.eval_batch_size)
            loss_sums, corrects = engine.loss_sum.tolist(), engine.correct.tolist()
            seconds = time.perf_counter() - started
            for i, (member, state, (val_loss, val_acc)) in enumerate(zip(members, states, evaluations)):
                weights = engine.state(i)
                if not (math.isfinite(loss_sums[i]) and math.isfinite(val_loss) and all(torch.isfinite(v).all() for v in weights.values())):
                    raise diverged(i, done, f"a non-finite training loss ({loss_sums[i] / seen}), validation loss ({val_loss}) or weight")
                # best gets its own copy: a saved position holds model and best side by side, and
                # safetensors refuses tensors that share memory
                if not validates:
                    state.best, state.best_step, state.best_val_loss, state.best_val_acc = engine.state(i), done, math.nan, math.nan
                elif val_loss < state.best_val_loss:
                    state.best, state.best_step, state.best_val_loss, state.best_val_acc = engine.state(i), done, val_loss, val_acc
                state.history.append({"round": round_index, "epoch": math.ceil(done / per_epoch), "step": done,
                                      "train_loss": loss_sums[i] / seen, "train_acc": corrects[i] / seen,
                                      f"{prefix}_loss": val_loss, f"{prefix}_acc": val_acc, "seconds": seconds})
                state.steps_done, state.model, state.optimizer, state.partial = done, weights, engine.optimizer_state(i), {}
                if member.on_eval is not None:
                    member.on_eval(state)
            engine.loss_sum.zero_()
            engine.correct.zero_()
            seen, started = 0, time.perf_counter()
        if stop() and done < total:
            for i, (member, state) in enumerate(zip(members, states)):
                state.steps_done, state.model, state.optimizer = done, engine.state(i), engine.optimizer_state(i)
                state.partial = {"seen": seen, "loss_sum": engine.loss_sum[i].item(), "correct": int(engine.correct[i])}
                if member.on_stop is not None:
                    member.on_stop(state)
            raise Stopped(round_index, done)
    finals = [engine.state(i) for i in range(len(members))]
    test_final = engine.evaluate(splits.test_x, splits.test_y, cfg.eval_batch_size)
    engine.load_weights([s.best for s in states])
    test_best = engine.evaluate(splits.test_x, splits.test_y, cfg.eval_batch_size)
    engine.load_weights(finals)
    return [
        RoundOutcome(best=s.best, final=final, best_step=s.best_step, best_epoch=math.ceil(s.best_step / per_epoch),
                     best_val_loss=s.best_val_loss, best_val_acc=s.best_val_acc,
                     final_val_loss=s.history[-1].get("val_loss", math.nan), final_val_acc=s.history[-1].get("val_acc", math.nan),
                     test_acc_best=acc_b, test_acc_final=acc_f, test_loss_best=loss_b, test_loss_final=loss_f, history=s.history)
        for s, final, (loss_f, acc_f), (loss_b, acc_b) in zip(states, finals, test_final, test_best)
    ]
