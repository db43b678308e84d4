"""How to fill a 2-core CPU with LeNet-300-100 studies: one study at a time (both threads), two
processes at a time (one thread each), K studies stacked in one process (the engine behind
`--parallel K`), or two one-thread processes of K stacked studies each. LeNet's steps are small matrix products, so a step is mostly overhead, and
stacking K studies into one batched product may pay on a CPU, unlike for the CNNs.

Each contender trains real rounds with `train_rounds`, as a study does: Frankle & Carbin's
protocol (Adam 1.2e-3, batch 60, layerwise masks, validation on 5,000 held-out images every 100
iterations) on real Fashion-MNIST, `--steps` iterations per study. Repeats are interleaved, so
drift on a noisy machine hits every contender alike; the table gives medians of study-iterations
per second and their ratio to one study at a time.

    python benchmarks/lenet_throughput.py --data-dir /usr/share/datasets [--steps 1000] [--repeats 3] [--stack 2,4,12] [--stack-per-process 6]
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import statistics
import time

import torch

from lth import config as cfgmod
from lth.data import splits_for
from lth.layout import cpu_name
from lth.masks import full_masks
from lth.models import layer_types, model_for
from lth.train import Member, train_rounds


def study_config(steps: int) -> cfgmod.Config:
    return cfgmod.apply_overrides(cfgmod.preset("lenet"), {"data.dataset": "fashion-mnist", "train.steps": str(steps)})


def train(k: int, steps: int, threads: int, data_dir: str) -> tuple[float, float]:
    """(start, end) wall-clock stamps of one round of K studies trained together, data loaded first."""
    torch.set_num_threads(threads)
    config = study_config(steps)
    splits = splits_for(config.data, data_dir)
    members = []
    for seed in range(k):
        model = model_for(config, seed)
        members.append(Member(model, full_masks(model, list(layer_types(model))), data_seed=seed))  # the output layer too: it is pruned
    start = time.time()
    train_rounds(members, splits, config.train, round_index=0)
    return start, time.time()


def _worker(args: tuple[int, int, int, str, object]) -> tuple[float, float]:
    k, steps, threads, data_dir, barrier = args
    torch.set_num_threads(threads)
    config = study_config(steps)
    splits_for(config.data, data_dir)  # decode before the barrier: only training is timed
    barrier.wait()  # type: ignore[attr-defined]
    return train(k, steps, threads, data_dir)


def two_processes(steps: int, data_dir: str, k: int = 1) -> float:
    """Seconds from the first start to the last end of two one-thread processes, K studies each."""
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        barrier = manager.Barrier(2)
        with context.Pool(2) as pool:
            stamps = pool.map(_worker, [(k, steps, 1, data_dir, barrier)] * 2)
    return max(end for _, end in stamps) - min(start for start, _ in stamps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="the folder holding fashion-mnist/ (Debian: /usr/share/datasets)")
    parser.add_argument("--steps", type=int, default=1000, help="iterations per study per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stack", default="2,4,12", help="K values for stacked studies")
    parser.add_argument("--stack-per-process", default="6", help="K values for two one-thread processes of K stacked studies each")
    args = parser.parse_args()
    stacks = [int(k) for k in args.stack.split(",")]
    per_process = [int(k) for k in args.stack_per_process.split(",") if k]
    rates: dict[str, list[float]] = {}
    for repeat in range(args.repeats):
        start, end = train(1, args.steps, 2, args.data_dir)
        rates.setdefault("1 study, 2 threads", []).append(args.steps / (end - start))
        rates.setdefault("2 processes, 1 thread each", []).append(2 * args.steps / two_processes(args.steps, args.data_dir))
        for k in stacks:
            start, end = train(k, args.steps, 2, args.data_dir)
            rates.setdefault(f"{k} studies stacked, 2 threads", []).append(k * args.steps / (end - start))
        for k in per_process:
            rates.setdefault(f"2 processes × {k} stacked, 1 thread", []).append(2 * k * args.steps / two_processes(args.steps, args.data_dir, k))
        print(f"repeat {repeat + 1}/{args.repeats} done", flush=True)
    base = statistics.median(rates["1 study, 2 threads"])
    print(f"\nmachine: {cpu_name()}, {torch.get_num_threads()} threads available, torch {torch.__version__}, Python {platform.python_version()}")
    print(f"LeNet-300-100 on Fashion-MNIST, batch 60, {args.steps} iterations per study, validation every 100 on 5,000 images; "
          f"median of {args.repeats}\n")
    print(f"| {'how':<34} | study-iterations/s | vs one at a time |")
    print(f"|{'-' * 36}|-------------------:|-----------------:|")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"| {name:<34} | {median:18.0f} | {median / base:15.2f}x |")


if __name__ == "__main__":
    main()
