"""CPU training throughput of ResNet-20 and VGG-16 with open_lth's recipe (SGD + momentum + weight
decay, step schedule, random crop + flip, masks): a plain eager PyTorch loop vs lth's engine, side by
side in one run, repeats interleaved so that a noisy machine's drift hits every contender alike;
medians and ratios to the plain loop are printed with the machine.

- plain eager: the loop a user writes without lth: per-image crop and flip in Python (as
  torchvision's transforms do, one image at a time), float images, `torch.optim.SGD` with its
  defaults, `MultiStepLR` stepped every iteration, one `mul_` per masked layer after each step.
- plain eager, batched augmentation: the same loop with lth's one-gather crop + flip of the batch,
  to show how much of the difference is the augmentation.
- lth engine: an iteration as `train_rounds` runs it on a CPU (eager ModuleEngine, foreach SGD,
  uint8 → float per batch, the epoch's seeded crop + flip as one gather, the schedule's learning
  rate set every iteration, re-mask after every step), in both memory layouts (`lth.layout`
  picks one per machine). Evaluations are left out of every contender: in a study they are one
  forward pass over 5,000 images per 45,000 trained, the same for any loop.
- lth, 2 studies stacked (ResNet-20): the vmapped engine behind `--parallel 2`, batch norm as
  functional state; images/s summed over both studies.

    python benchmarks/recipes_cpu.py --data-dir ../shared/data [--repeats 3] [--models resnet20,vgg16]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from lth import config as cfgmod
from lth.data import crop_flip, load_splits, to_float
from lth.layout import cpu_name
from lth.masks import full_masks
from lth.models import build_model, prunable_names
from lth.engine import ModuleEngine, StackedEngine, eager_step
from lth.schedule import learning_rate
from lth.seeds import epoch_augmentation, epoch_order

CPU = torch.device("cpu")
STEPS = {"resnet20": 12, "vgg16": 3}  # iterations of batch 128 per repeat (VGG-16 is ~12× the compute)


def half_masks(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every prunable tensor half pruned (a mid-study round), from a fixed generator."""
    generator = torch.Generator().manual_seed(0)
    return {n: torch.rand(m.shape, generator=generator) > 0.5 for n, m in full_masks(model, prunable_names(model)).items()}


def plain_eager(name: str, x: torch.Tensor, y: torch.Tensor, cfg: cfgmod.TrainConfig, batched_augment: bool) -> float:
    """Seconds for `len(x) / batch` iterations of the textbook loop."""
    model = build_model(name, 0).train()
    masks = half_masks(model)
    params = dict(model.named_parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[10**6], gamma=cfg.gamma)
    xf = to_float(x)
    generator = torch.Generator().manual_seed(1)
    b = cfg.batch_size
    started = time.perf_counter()
    for start in range(0, len(x), b):
        if batched_augment:
            images = to_float(crop_flip(x[start : start + b], epoch_augmentation(b, 1, 0, start)))
        else:
            images = []
            for image in xf[start : start + b]:
                dy, dx = torch.randint(0, 9, (2,), generator=generator).tolist()
                image = F.pad(image, (4, 4, 4, 4))[:, dy : dy + 32, dx : dx + 32]
                images.append(image.flip(-1) if torch.rand((), generator=generator) < 0.5 else image)
            images = torch.stack(images)
        loss = F.cross_entropy(model(images), y[start : start + b])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            for n, m in masks.items():
                params[n].mul_(m)
    return time.perf_counter() - started


def lth_engine(name: str, splits, cfg: cfgmod.TrainConfig, k: int) -> float:
    """Seconds for one epoch of `train_rounds`' iterations (order, augmentation, schedule, step)."""
    models = [build_model(name, s) for s in range(k)]
    masks = [half_masks(m) for m in models]
    engine = ModuleEngine(models[0], masks[0], cfg, CPU) if k == 1 else StackedEngine(models, masks, cfg, CPU)
    n, b = len(splits.train_x), cfg.batch_size
    started = time.perf_counter()
    orders = torch.stack([epoch_order(n, 10 + i, 0, 1) for i in range(k)])
    augments = torch.stack([epoch_augmentation(n, 10 + i, 0, 1) for i in range(k)])
    for step, start in enumerate(range(0, n, b)):
        engine.set_lr(learning_rate(cfg, step, n // b))
        eager_step(engine, splits.train_x, splits.train_y, orders[:, start : start + b], augments[:, start : start + b])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="resnet20,vgg16")
    args = parser.parse_args()
    print(f"machine: {cpu_name()} | {torch.get_num_threads()} threads | torch {torch.__version__} | Python {platform.python_version()}")
    for name in args.models.split(","):
        steps = STEPS[name]
        base = cfgmod.preset(name)
        images = steps * base.train.batch_size
        splits = load_splits(args.data_dir, train_size=images, val_size=100, test_size=100)
        cfg = cfgmod.apply_overrides(base, {"train.channels_last": "false"}).train
        cl = cfgmod.apply_overrides(base, {"train.channels_last": "true"}).train
        contenders = {
            "plain eager (per-image augmentation)": lambda: plain_eager(name, splits.train_x, splits.train_y, cfg, False),
            "plain eager (batched augmentation)": lambda: plain_eager(name, splits.train_x, splits.train_y, cfg, True),
            "lth engine (NCHW)": lambda: lth_engine(name, splits, cfg, 1),
            "lth engine (channels-last)": lambda: lth_engine(name, splits, cl, 1),
        }
        if name == "resnet20":
            contenders["lth, 2 studies stacked"] = lambda: lth_engine(name, splits, cfg, 2) / 2
        for run in contenders.values():  # warm-up: oneDNN picks its kernels
            run()
        times: dict[str, list[float]] = {label: [] for label in contenders}
        for _ in range(args.repeats):
            for label, run in contenders.items():
                times[label].append(run())
        baseline = statistics.median(times["plain eager (per-image augmentation)"])
        print(f"\n{name}: {steps} iterations of batch {base.train.batch_size} (half the prunable weights masked), median of {args.repeats}")
        print(f"| {'contender':<38} | {'images/s':>9} | {'vs plain eager':>14} |")
        print(f"|{'-' * 40}|{'-' * 11}|{'-' * 16}|")
        for label, seconds in times.items():
            median = statistics.median(seconds)
            print(f"| {label:<38} | {images / median:>9.1f} | {baseline / median:>13.2f}x |")


if __name__ == "__main__":
    main()
