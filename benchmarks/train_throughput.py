"""Training throughput of lth's round loop vs a plain eager PyTorch loop, side by side.

Both train the seed-cnn at batch 60 on the same real CIFAR-10 images in the same process; the
plain loop is the textbook one (pre-scaled float32 tensor, Adam, no masks, no validation).
lth's loop adds what the protocol needs: uint8→float on the fly, per-step re-masking and one
validation pass per epoch. Prints medians over repeats and their ratio, plus the machine.

    python benchmarks/train_throughput.py --data-dir ../shared/data [--images 3000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from lth.config import TrainConfig
from lth.data import load_splits, to_float
from lth.masks import full_masks
from lth.models import build_model, prunable_names
from lth.train import train_round


def plain_epoch(x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    model = build_model("seed-cnn", 0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4, eps=1e-7)
    perm = torch.randperm(x.shape[0])
    started = time.perf_counter()
    for i in range(0, x.shape[0], batch):
        idx = perm[i : i + batch]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return x.shape[0] / (time.perf_counter() - started)


def lth_epoch(splits, batch: int) -> float:
    model = build_model("seed-cnn", 0)
    masks = full_masks(model, prunable_names(model))
    started = time.perf_counter()
    train_round(model, masks, splits, TrainConfig(batch_size=batch, initial_epochs=1), 0, 0)
    return splits.train_x.shape[0] / (time.perf_counter() - started)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--images", type=int, default=3000, help="training images per epoch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=60)
    args = parser.parse_args()

    # Validation is 100 images (lth evaluates once per epoch; its cost is part of the loop).
    splits = load_splits(args.data_dir, "cpu", train_size=args.images, val_size=100, test_size=100)
    x, y = to_float(splits.train_x), splits.train_y
    plain_epoch(x[:240], y[:240], args.batch)  # warm-up (allocator, oneDNN primitives)
    plain, ours = [], []
    for _ in range(args.repeats):  # interleaved so drift on a noisy machine hits both alike
        plain.append(plain_epoch(x, y, args.batch))
        ours.append(lth_epoch(splits, args.batch))
    p, o = statistics.median(plain), statistics.median(ours)
    print(f"machine: {machine()}")
    print(f"seed-cnn, batch {args.batch}, {args.images} real CIFAR-10 images per epoch, median of {args.repeats}")
    print(f"{'loop':<34}{'images/s':>10}{'ratio':>8}")
    print(f"{'plain eager PyTorch (baseline)':<34}{p:>10.1f}{1.0:>8.2f}")
    print(f"{'lth train_round (+mask, +val)':<34}{o:>10.1f}{o / p:>8.2f}")


if __name__ == "__main__":
    main()
