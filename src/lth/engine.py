"""How one training iteration runs (`train.train_rounds` is the loop above it): one study's module
(`ModuleEngine`), K studies stacked under `torch.func.vmap` (`StackedEngine`; Adam and SGD are
elementwise, so one optimizer over stacked tensors is K optimizers), either replayed as a CUDA graph
(`GraphedStep`). Every path runs the same `body`, so none can drift from the eager one (bit-for-bit
on CPU). Batch norm's running statistics are, in the stacked engine, stacked tensors the engine
owns and passes into every call as functional state (vmap cannot update a module's own buffers)."""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lth.config import ConfigError, TrainConfig
from lth.data import crop_flip, to_float
from lth.masks import MaskApplier

StateDict = dict[str, torch.Tensor]
OPTIMIZER_FLAGS = ("foreach", "fused", "capturable", "differentiable")


def use_graphs(engine: str, device: torch.device) -> bool:
    """Whether `train.engine` means CUDA graphs on this device ("auto": yes on CUDA)."""
    if engine == "graph" and device.type != "cuda":
        raise ConfigError(f"train.engine: 'graph' needs a CUDA device, this run is on {device}; use 'auto' or 'eager'")
    return engine == "graph" or (engine == "auto" and device.type == "cuda")


@contextmanager
def numerics(tf32: bool, device: torch.device) -> Iterator[None]:
    """TF32 as `train.tf32` says and cuDNN's autotuner on CUDA, restored afterwards; no effect on CPU."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = device.type == "cuda"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved


def make_optimizer(params: Iterable[torch.Tensor], cfg: TrainConfig, device: torch.device, capturable: bool = False,
                   tensor_lr: bool = False) -> torch.optim.Optimizer:
    """The round's optimizer, fresh every round: Adam with Keras' epsilon, or SGD with momentum;
    foreach kernels on CPU, fused on CUDA (Adam capturable when the step is graphed: its step
    counter then lives on the GPU). `tensor_lr`: the learning rate is a device tensor, so a
    graphed step can follow a schedule (it is refilled between replays, never re-captured)."""
    lr: float | torch.Tensor = torch.tensor(cfg.lr, device=device) if tensor_lr else cfg.lr
    cuda = device.type == "cuda"
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay,
                               **({"fused": True} if cuda else {"foreach": True}))
    flags: dict[str, bool] = {"fused": True, "capturable": capturable} if cuda else {"foreach": True}
    return torch.optim.Adam(params, lr=lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay, **flags)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: Mapping[str, Any]) -> None:
    """Load a saved Adam state into an optimizer that may run another kernel: the saved state
    keeps its numbers, this optimizer keeps its implementation flags and its (the config's)
    learning rate, which a resume after a divergence may have changed."""
    groups = [{**saved, "lr": mine["lr"], **{flag: mine[flag] for flag in OPTIMIZER_FLAGS if flag in mine}}
              for saved, mine in zip(state["param_groups"], optimizer.param_groups)]
    if any(("betas" in saved) != ("betas" in mine) for saved, mine in zip(groups, optimizer.param_groups)):
        raise ValueError("the saved optimizer state is another optimizer's (train.optimizer differs)")
    optimizer.load_state_dict({"state": state["state"], "param_groups": groups})


def host_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU copy (what checkpoints store, whatever the training layout)."""
    return tensor.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)


@torch.inference_mode()
def evaluate_model(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                   prepare: Callable[[torch.Tensor], torch.Tensor] = to_float) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a uint8 split, in large batches, with one host sync."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=images.device, dtype=torch.float64)
    correct = torch.zeros((), device=images.device, dtype=torch.int64)
    for start in range(0, images.shape[0], batch_size):
        y = labels[start : start + batch_size]
        logits = model(prepare(images[start : start + batch_size]))
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
    model.train(was_training)
    n = images.shape[0]
    return float(loss_sum) / n, int(correct) / n


class _Engine:
    """What both engines share: Adam, the per-study metric sums, per-study optimizer state."""

    stacked = False  # tensors carry a leading study axis

    def __init__(self, k: int, params: Iterable[torch.Tensor], cfg: TrainConfig, device: torch.device, capturable: bool,
                 prepare: Callable[[torch.Tensor], torch.Tensor] = to_float) -> None:
        self.k = k
        self.prepare = prepare  # uint8 images → the model's input (lth.data.input_transform)
        # bf16 autocast of the forward and loss (`train.precision`); weights, Adam and masks stay fp32.
        self.autocast = partial(torch.autocast, device.type, torch.bfloat16, cfg.precision == "bf16", cache_enabled=False)
        self.optimizer = make_optimizer(params, cfg, device, capturable, tensor_lr=capturable and device.type == "cuda")
        self.lr = cfg.lr
        self.loss_sum = torch.zeros(k, device=device, dtype=torch.float64)
        self.correct = torch.zeros(k, device=device, dtype=torch.int64)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def set_lr(self, lr: float) -> None:
        """The learning rate of the coming iterations (in place when it is a graph's tensor)."""
        if lr != self.lr:
            self.lr = lr
            for group in self.optimizer.param_groups:
                if isinstance(group["lr"], torch.Tensor):
                    group["lr"].fill_(lr)
                else:
                    group["lr"] = lr

    def _finish(self, total: torch.Tensor, losses: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """The end of every iteration: backward, Adam, re-mask, then the metric sums."""
        total.backward()
        self.optimizer.step()
        self.remask()
        with torch.no_grad():
            self.loss_sum += losses.detach().double() * labels.shape[-1]
            self.correct += (logits.argmax(-1) == labels).sum(-1)

    def optimizer_state(self, k: int = 0) -> dict[str, Any]:
        """Study k's Adam state, in the format a single study's Adam saves."""
        full = self.optimizer.state_dict()
        state = {
            pid: {key: host_copy(v[k] if self.stacked and key != "step" else v) for key, v in entry.items() if v is not None}
            for pid, entry in full["state"].items()
        }
        groups = [{key: float(v) if isinstance(v, torch.Tensor) else v for key, v in g.items()} for g in full["param_groups"]]
        return {"state": state, "param_groups": copy.deepcopy(groups)}


class ModuleEngine(_Engine):
    """One study: its module trained in place (channels-last on CPU if `train.channels_last`)."""

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor], cfg: TrainConfig, device: torch.device, capturable: bool = False,
                 prepare: Callable[[torch.Tensor], torch.Tensor] = to_float) -> None:
        self.channels_last = cfg.channels_last and device.type == "cpu"
        self.model = model.to(device).train()
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        super().__init__(1, model.parameters(), cfg, device, capturable, prepare)
        self.remask = MaskApplier(model, masks)
        self.remask()

    def _input(self, images_uint8: torch.Tensor) -> torch.Tensor:
        x = self.prepare(images_uint8)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def state(self, k: int = 0) -> StateDict:
        return {name: host_copy(v) for name, v in self.model.state_dict().items()}

    def body(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """One iteration on a [1, B] batch; gradients must be unset (or the graph's own)."""
        y = labels[0]
        with self.autocast():
            logits = self.model(self._input(images[0]))
            loss = F.cross_entropy(logits, y)
        self._finish(loss, loss, logits, y)

    def load_weights(self, states: Sequence[Mapping[str, torch.Tensor]]) -> None:
        self.model.load_state_dict(states[0])
        self.remask()

    def load_optimizer(self, states: Sequence[Mapping[str, Any]]) -> None:
        load_optimizer_state(self.optimizer, states[0])

    def evaluate(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> list[tuple[float, float]]:
        with self.autocast():
            return [evaluate_model(self.model, images, labels, batch_size, self._input)]

    def write_back(self, models: Sequence[nn.Module]) -> None:
        """The module was trained in place; only its layout goes back to the default."""
        if self.channels_last:
            self.model.to(memory_format=torch.contiguous_format)


class StackedEngine(_Engine):
    """K studies of one architecture in one stacked, vmapped model (K convolutions become one grouped one)."""

    stacked = True

    def __init__(self, models: Sequence[nn.Module], masks: Sequence[Mapping[str, torch.Tensor]], cfg: TrainConfig, device: torch.device,
                 capturable: bool = False, prepare: Callable[[torch.Tensor], torch.Tensor] = to_float) -> None:
        first = models[0]
        if len({type(m) for m in models}) != 1 or len({tuple(m.state_dict()) for m in models}) != 1:
            raise ValueError("studies trained together must use the same model")
        if len({frozenset(m) for m in masks}) != 1:
            raise ValueError("studies trained together must prune the same tensors")
        members = [dict(m.named_parameters()) for m in models]
        self.params = {name: torch.stack([p[name].detach().to(device) for p in members]).requires_grad_() for name in members[0]}
        # Batch norm's running statistics: the engine's own stacked state, updated by each call.
        self.buffers = {name: torch.stack([dict(m.named_buffers())[name].to(device) for m in models]) for name, _ in first.named_buffers()}
        self.names = list(first.state_dict())  # state() in the module's own order
        self.masked = [self.params[name] for name in masks[0]]
        self.factors = [torch.stack([m[name] for m in masks]).to(device=device, dtype=self.params[name].dtype) for name in masks[0]]
        self.template = copy.deepcopy(first).to("meta").train()
        super().__init__(len(models), self.params.values(), cfg, device, capturable, prepare)
        call = partial(torch.func.functional_call, self.template)  # ((params, buffers), x) -> logits
        self.forward = torch.func.vmap(call, in_dims=((0, 0), 0))
        self.forward_shared = torch.func.vmap(call, in_dims=((0, 0), None))  # one split, K models
        self.remask()

    @torch.no_grad()
    def remask(self) -> None:
        if self.masked:
            torch._foreach_mul_(self.masked, self.factors)

    def state(self, k: int) -> StateDict:
        tensors = {**self.params, **self.buffers}
        return {name: host_copy(tensors[name][k]) for name in self.names}

    def body(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """One iteration on a [K, B] batch; summing the studies' mean losses gives each its own gradient."""
        with self.autocast():
            logits = self.forward((self.params, self.buffers), self.prepare(images))
            losses = torch.func.vmap(F.cross_entropy)(logits, labels)
        self._finish(losses.sum(), losses, logits, labels)

    @torch.no_grad()
    def load_weights(self, states: Sequence[Mapping[str, torch.Tensor]]) -> None:
        for name, tensor in {**self.params, **self.buffers}.items():
            tensor.copy_(torch.stack([s[name] for s in states]))
        self.remask()

    def load_optimizer(self, states: Sequence[Mapping[str, Any]]) -> None:
        if len({float(s["state"][pid]["step"]) for s in states for pid in s["state"] if "step" in s["state"][pid]}) > 1:
            raise ValueError("studies trained together must resume from the same iteration")
        stacked = {pid: {key: v if key == "step" else torch.stack([s["state"][pid][key] for s in states]) for key, v in entry.items()}
                   for pid, entry in states[0]["state"].items()}
        load_optimizer_state(self.optimizer, {"state": stacked, "param_groups": states[0]["param_groups"]})

    @torch.no_grad()
    def evaluate(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> list[tuple[float, float]]:
        loss_sum = torch.zeros(self.k, device=images.device, dtype=torch.float64)
        correct = torch.zeros(self.k, device=images.device, dtype=torch.int64)
        self.template.eval()  # batch norm from the running statistics
        for start in range(0, images.shape[0], batch_size):
            y = labels[start : start + batch_size]
            with self.autocast():  # the loss too: autocast computes cross-entropy in fp32
                logits = self.forward_shared((self.params, self.buffers), self.prepare(images[start : start + batch_size]))
                loss_sum += torch.func.vmap(lambda out: F.cross_entropy(out, y, reduction="sum"))(logits).double()
            correct += (logits.argmax(-1) == y).sum(1)
        self.template.train()
        n = images.shape[0]
        return [(s / n, c / n) for s, c in zip(loss_sum.tolist(), correct.tolist())]

    def write_back(self, models: Sequence[nn.Module]) -> None:
        """Leave each study's module holding its stacked slice (the final weights)."""
        for k, model in enumerate(models):
            model.load_state_dict(self.state(k))


Engine = ModuleEngine | StackedEngine


def batch(train_x: torch.Tensor, idx: torch.Tensor, augment: torch.Tensor | None) -> torch.Tensor:
    """The images of `idx`, cropped and mirrored by `augment` ([K, B, 3]) when it is given."""
    return train_x[idx] if augment is None else crop_flip(train_x[idx], augment)


def eager_step(engine: Engine, train_x: torch.Tensor, train_y: torch.Tensor, idx: torch.Tensor, augment: torch.Tensor | None = None) -> None:
    """One iteration on the batches `idx` ([K, B] indices into the training set)."""
    engine.zero_grad()
    engine.body(batch(train_x, idx, augment), train_y[idx])


class GraphedStep:
    """An engine's iteration as one CUDA graph: `WARMUP` eager full batches on a side stream (they
    create Adam's state and let cuDNN pick kernels), then one capture replayed for every full
    batch (capture does not execute); a partial batch runs eagerly."""

    WARMUP = 3
    failure: str | None = None  # why a capture failed in this process: later rounds do not try again

    def __init__(self, engine: Engine, train_x: torch.Tensor, train_y: torch.Tensor, batch_size: int, fallback: bool = True,
                 augment: bool = False) -> None:
        self.engine, self.train_x, self.train_y, self.fallback = engine, train_x, train_y, fallback
        self.idx = torch.zeros((engine.k, batch_size), dtype=torch.long, device=train_x.device)
        self.augment = torch.zeros((engine.k, batch_size, 3), dtype=torch.long, device=train_x.device) if augment else None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.warm = 0

    def __call__(self, idx: torch.Tensor, augment: torch.Tensor | None = None) -> None:
        if idx.shape != self.idx.shape or (self.fallback and GraphedStep.failure is not None):
            return eager_step(self.engine, self.train_x, self.train_y, idx, augment)
        if self.graph is None and self.warm < self.WARMUP:
            self.warm += 1
            with side_stream():
                return eager_step(self.engine, self.train_x, self.train_y, idx, augment)
        if self.graph is None:
            # Unset gradients: the captured backward allocates them from the graph's pool, so
            # every replay overwrites (never accumulates) them.
            self.engine.zero_grad()
            try:
                self.graph = capture(lambda: self.engine.body(batch(self.train_x, self.idx, self.augment), self.train_y[self.idx]))
            except Exception as exc:  # a driver, kernel or allocator that cannot be captured: "auto" trains eagerly
                if not self.fallback:
                    raise
                GraphedStep.failure = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else 'no message'}"
                print(f"lth: warning: CUDA graph capture failed ({GraphedStep.failure}); training eagerly from here on "
                      "(train.engine = \"eager\" skips the attempt)", file=sys.stderr)
                self.engine.zero_grad()
                return eager_step(self.engine, self.train_x, self.train_y, idx, augment)
        self.idx.copy_(idx)
        if self.augment is not None and augment is not None:
            self.augment.copy_(augment)
        self.graph.replay()


@contextmanager
def side_stream() -> Iterator[None]:
    """Run the enclosed work on a fresh CUDA stream ordered after (and before) the current one."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        yield
    torch.cuda.current_stream().wait_stream(side)


def capture(fn: Callable[[], None]) -> torch.cuda.CUDAGraph:
    """Record `fn`'s kernels as a CUDA graph (recording does not execute them)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph
