"""GPU speed of lth's engine, side by side with a plain eager PyTorch loop on the same GPU.

Prints, with the GPU and torch version it ran on:
1. steps/s of the seed-cnn at batch 60: a plain eager loop (pre-scaled float32 data on the GPU,
   textbook Adam) vs lth's eager engine vs lth's CUDA-graph engine, and the ratios;
2. K-parallel scaling, K = 1, 2, 4, 8 studies on one GPU, two ways: the stacked (vmapped,
   grouped-convolution) engine in one graph, and K separate graphed engines replayed on K CUDA
   streams; study-steps/s and the speed-up over K = 1;
3. a measured full round (25 epochs of 45k images with per-epoch validation), the projected
   seed-study time from it (26 + 15 × 25 epochs), and optionally the measured whole study
   (`--full-study`) and K studies trained together (`--parallel-study K`).

Data: the real CIFAR-10 when --data-dir finds it, else synthetic uint8 data of CIFAR-10's shape
written in the official batch format (speed does not depend on pixel values; accuracies printed
for synthetic data mean nothing).

    python benchmarks/gpu_study.py [--data-dir DIR] [--full-study] [--parallel-study 8]

`--smoke` runs every stage on the CPU at the smallest sizes (a few iterations, 600 training
images, one-epoch rounds), graphs and streams replaced by the eager engine: a check of the script
against the code as it is, before a GPU session spends its device time on it. Its numbers mean
nothing.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lth import config as cfgmod
from lth.data import BATCHES_DIRNAME, META_FILE, TEST_FILE, TRAIN_FILES, find_batches_dir, load_splits
from lth.engine import GraphedStep, ModuleEngine, StackedEngine, eager_step, numerics
from lth.masks import full_masks
from lth.models import build_model, prunable_names
from lth.train import Member, train_rounds


def write_synthetic_cifar(root: Path) -> Path:
    """Random images and labels in CIFAR-10's python-batch layout (for timing only)."""
    folder = root / BATCHES_DIRNAME
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in (*TRAIN_FILES, TEST_FILE):
        batch = {b"data": rng.integers(0, 256, (10_000, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, 10_000).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / META_FILE).write_bytes(pickle.dumps({b"label_names": [f"class{i}".encode() for i in range(10)]}))
    return root


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, steps: int) -> float:
    """Steps per second of `fn(i)` over `steps` calls, synchronised at both ends."""
    synchronize()
    started = time.perf_counter()
    for i in range(steps):
        fn(i)
    synchronize()
    return steps / (time.perf_counter() - started)


def plain_loop_rate(splits, steps: int, batch: int) -> float:
    model = build_model("seed-cnn", 0).to(splits.train_x.device)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4, eps=1e-7)
    x = splits.train_x.float().div_(255)
    y = splits.train_y
    perm = torch.randperm(x.shape[0], device=x.device)

    def step(i: int) -> None:
        idx = perm[(i * batch) % (x.shape[0] - batch) :][:batch]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()

    for i in range(10):
        step(i)
    return timed(step, steps)


def engine_rate(splits, cfg, k: int, graphed: bool, steps: int, streams: bool = False) -> float:
    """Iterations/s of K studies advanced together (each iteration trains all K)."""
    device = splits.train_x.device
    graphed = graphed and device.type == "cuda"  # --smoke: the eager engine stands in
    models = [build_model("seed-cnn", s) for s in range(k)]
    masks = [full_masks(m, prunable_names(m)) for m in models]
    n = splits.train_x.shape[0]
    gen = torch.Generator().manual_seed(0)
    idx_pool = torch.randint(0, n, (64, k, cfg.batch_size), generator=gen).to(device)
    if streams:  # K separate graphed engines, each replayed on its own stream
        engines = [ModuleEngine(m, mk, cfg, device, capturable=True) for m, mk in zip(models, masks)]
        steppers = [GraphedStep(e, splits.train_x, splits.train_y, cfg.batch_size) for e in engines]
        side = [torch.cuda.Stream() for _ in range(k)]

        def step(i: int) -> None:
            idx = idx_pool[i % 64]
            main = torch.cuda.current_stream()
            for j, (stepper, stream) in enumerate(zip(steppers, side)):
                stream.wait_stream(main)
                with torch.cuda.stream(stream):
                    stepper(idx[j : j + 1])
            for stream in side:
                main.wait_stream(stream)
    else:
        engine = (ModuleEngine(models[0], masks[0], cfg, device, capturable=graphed) if k == 1
                  else StackedEngine(models, masks, cfg, device, capturable=graphed))
        stepper = GraphedStep(engine, splits.train_x, splits.train_y, cfg.batch_size) if graphed else None

        def step(i: int) -> None:
            if stepper is not None:
                stepper(idx_pool[i % 64])
            else:
                eager_step(engine, splits.train_x, splits.train_y, idx_pool[i % 64])

    for i in range(GraphedStep.WARMUP + 5):
        step(i)
    return timed(step, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--steps", type=int, default=1500, help="iterations per throughput measurement")
    parser.add_argument("--ks", default="1,2,4,8")
    parser.add_argument("--no-round", action="store_true", help="skip the measured full round")
    parser.add_argument("--full-study", action="store_true", help="also run the whole seed preset (energy off)")
    parser.add_argument("--parallel-study", type=int, default=0, metavar="K", help="also run K seed studies together")
    parser.add_argument("--tf32", choices=("true", "false"), default="true")
    parser.add_argument("--smoke", action="store_true", help="every stage on the CPU at the smallest sizes: checks the script, measures nothing")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.smoke:
        sys.exit("gpu_study.py: no CUDA device here; run it on a GPU machine (CPU numbers: benchmarks/cpu_throughput.py; "
                 "--smoke checks the script on a CPU)")
    if args.smoke:
        args.steps, args.ks = 3, "1,2"

    scratch = Path(tempfile.mkdtemp(prefix="lth-gpu-study-"))
    data_dir = Path(args.data_dir) if args.data_dir and find_batches_dir(Path(args.data_dir)) else None
    data_note = f"real CIFAR-10 from {data_dir}" if data_dir else "synthetic uint8 data of CIFAR-10's shape (timing only)"
    if data_dir is None:
        data_dir = write_synthetic_cifar(scratch / "data")
    device = torch.device("cpu" if args.smoke else "cuda")
    smallest = {"data.train_size": "600", "data.val_size": "100", "data.test_size": "100", "train.initial_epochs": "1",
                "train.epochs": "1", "prune.rounds": "1", "device": "cpu"} if args.smoke else {}
    config = cfgmod.apply_overrides(cfgmod.preset("seed"), {"train.tf32": args.tf32, "energy.tracker": "off", **smallest})
    d, cfg = config.data, config.train
    splits = load_splits(data_dir, device, train_size=d.train_size, val_size=d.val_size, test_size=d.test_size)
    if args.smoke:
        print(f"SMOKE on the CPU, smallest sizes, graphs and streams replaced by the eager engine: these numbers mean nothing; torch {torch.__version__}")
    else:
        props = torch.cuda.get_device_properties(0)
        print(f"device: {props.name}, {props.total_memory / 2**30:.0f} GiB; torch {torch.__version__}, CUDA {torch.version.cuda}; tf32 {args.tf32}")
    print(f"data: {data_note}")

    with numerics(cfg.tf32, device):
        plain = plain_loop_rate(splits, min(args.steps, 600), cfg.batch_size)
        eager = engine_rate(splits, cfg, 1, False, min(args.steps, 600))
        graph = engine_rate(splits, cfg, 1, True, args.steps)  # --smoke: eager
        print(f"\n{'seed-cnn, batch 60':<34}{'steps/s':>10}{'ms/step':>10}{'vs plain':>10}")
        for name, rate in (("plain eager PyTorch loop", plain), ("lth engine, eager", eager), ("lth engine, CUDA graph", graph)):
            print(f"{name:<34}{rate:>10.0f}{1000 / rate:>10.3f}{rate / plain:>10.2f}")

        ks = [int(k) for k in args.ks.split(",")]
        print(f"\n{'K studies':<10}{'stacked study-steps/s':>24}{'speed-up':>10}{'K streams study-steps/s':>26}{'speed-up':>10}")
        base_stacked = base_streams = None
        for k in ks:
            at_least = 1 if args.smoke else 200
            stacked = k * engine_rate(splits, cfg, k, True, max(args.steps // k, at_least))
            streams = stacked if args.smoke else k * engine_rate(splits, cfg, k, True, max(args.steps // k, at_least), streams=True)
            base_stacked = base_stacked or stacked / k
            base_streams = base_streams or streams / k
            print(f"{k:<10}{stacked:>24.0f}{stacked / base_stacked:>10.2f}{streams:>26.0f}{streams / base_streams:>10.2f}")

    per_epoch = -(-splits.train_x.shape[0] // cfg.batch_size)
    if not args.no_round:
        model = build_model("seed-cnn", 0)
        member = Member(model, full_masks(model, prunable_names(model)), data_seed=0)
        synchronize()
        started = time.perf_counter()
        (outcome,) = train_rounds([member], splits, cfg, round_index=1)
        round_s = time.perf_counter() - started
        study_epochs = cfg.initial_epochs + config.prune.rounds * cfg.epochs
        print(f"\nmeasured round ({cfg.epochs} epochs × {per_epoch} steps, validation each epoch, test at the end): {round_s:.1f} s "
              f"(best epoch {outcome.best_epoch}, test acc {100 * outcome.test_acc_best:.2f}%)")
        print(f"projected seed study ({study_epochs} epochs): {round_s / cfg.epochs * study_epochs / 60:.2f} min (pruning and I/O excluded)")

    if args.full_study:
        from lth.study import run_study

        started = time.perf_counter()
        result = run_study(config, out=scratch / "seed", data_dir=data_dir, progress=False)
        print(f"measured seed study ({len(result.rounds)} rounds): {(time.perf_counter() - started) / 60:.2f} min wall")
    if args.parallel_study:
        from lth.compare import run_replicates

        started = time.perf_counter()
        results = run_replicates(config, args.parallel_study, out=scratch / "parallel", data_dir=data_dir, progress=False, parallel=args.parallel_study)
        print(f"measured {len(results)} seed studies trained together: {(time.perf_counter() - started) / 60:.2f} min wall")


if __name__ == "__main__":
    main()
