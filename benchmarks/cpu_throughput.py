"""CPU training throughput: Keras/TensorFlow vs a plain eager PyTorch loop vs lth's engine, side
by side in one run, plus lth's loop overhead.

All three train the seed-cnn (same layers, Glorot-uniform, Adam 3e-4 / eps 1e-7) at batch 60
on the same real CIFAR-10 images, one epoch per repeat, repeats interleaved so that drift on a
noisy machine hits every contender alike; medians are printed.

- Keras/TF runs in its own virtual environment (TensorFlow cannot share a process with this
  torch build): the script creates it under --keras-venv with `pip install tensorflow-cpu`
  on first use, or prints why Keras was skipped. Its time is `model.fit` on in-memory arrays
  (data already scaled), measured inside the worker after a warm-up epoch.
- plain eager: the textbook loop on a pre-scaled float32 tensor, no masks, no validation.
- lth engine: `train_rounds` as a study runs it (NCHW; channels-last; channels-last with
  `train.precision = "bf16"`): uint8 → float per batch, re-mask after every
  step, one validation pass per epoch (100 images), best-weight bookkeeping.
- 2 studies trained together (the stacked engine behind `--parallel`): images/s summed over
  both, against one study alone (on a CPU, stacking adds no compute, so ~1× is the best case).
- pure steps: forward + backward + Adam on one fixed batch, NCHW or channels-last, fp32 or under
  bf16 autocast (fp32 weights): the ceiling a loop can reach on this machine, per layout and precision.
- loop overhead: lth's epoch wall time / (iterations × the pure step time), where the pure
  step is forward + backward + Adam on one fixed batch, timed in a tight loop right after each
  lth epoch; the median of the per-repeat ratios.

    python benchmarks/cpu_throughput.py --data-dir ../shared/data [--images 3000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lth import config as cfgmod
from lth.data import load_splits, to_float
from lth.layout import step_seconds
from lth.masks import full_masks
from lth.models import build_model, prunable_names
from lth.train import Member, train_rounds

KERAS_WORKER = textwrap.dedent(
    """
    import json, os, sys, time
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import keras
    from keras import layers as L
    images, batch, repeats = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    data = np.load(sys.argv[4])
    x, y = data["x"][:images], data["y"][:images]
    model = keras.Sequential([
        keras.Input((32, 32, 3)),
        L.Conv2D(64, 3, activation="relu"), L.Conv2D(64, 3, activation="relu"), L.MaxPooling2D(),
        L.Conv2D(128, 3, activation="relu"), L.Conv2D(128, 3, activation="relu"), L.MaxPooling2D(),
        L.Flatten(), L.Dense(256, activation="relu"), L.Dense(256, activation="relu"), L.Dense(10),
    ])
    model.compile(optimizer=keras.optimizers.Adam(3e-4, epsilon=1e-7),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[: 10 * batch], y[: 10 * batch], batch_size=batch, epochs=1, verbose=0)  # warm-up / tracing
    for _ in range(repeats):
        line = sys.stdin.readline()  # the parent says when (interleaving with the torch loops)
        if not line:
            break
        started = time.perf_counter()
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=True)
        print(json.dumps({"images_per_s": images / (time.perf_counter() - started)}), flush=True)
    print(json.dumps({"versions": f"tensorflow {__import__('tensorflow').__version__}, keras {keras.__version__}"}), flush=True)
    """
)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def keras_python(venv: Path) -> tuple[Path | None, str]:
    """The venv's python with TensorFlow importable, creating the venv if needed."""
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import keras, tensorflow"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python, ""
    print(f"creating {venv} with tensorflow-cpu (one time, about a minute) ...", flush=True)
    made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
    if made.returncode != 0:
        return None, f"cannot create a venv: {made.stderr.strip().splitlines()[-1:]}"
    pip = subprocess.run([str(python), "-m", "pip", "install", "-q", "tensorflow-cpu"], capture_output=True, text=True)
    if pip.returncode != 0 or subprocess.run(check, capture_output=True).returncode != 0:
        last = (pip.stderr.strip().splitlines() or ["import failed"])[-1]
        return None, f"pip install tensorflow-cpu failed: {last}"
    return python, ""


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


def lth_epoch(splits, cfg: cfgmod.TrainConfig, studies: int = 1) -> tuple[float, float]:
    """Training images/s (summed over the studies) and wall seconds of one lth epoch of
    `studies` studies trained together (validation included)."""
    members = []
    for seed in range(studies):
        model = build_model("seed-cnn", seed)
        members.append(Member(model, full_masks(model, prunable_names(model)), data_seed=seed))
    started = time.perf_counter()
    train_rounds(members, splits, cfg, round_index=0)
    seconds = time.perf_counter() - started
    return studies * splits.train_x.shape[0] / seconds, seconds


def pure_step_seconds(x: torch.Tensor, y: torch.Tensor, channels_last: bool, steps: int = 12, bf16: bool = False) -> float:
    """Median forward + backward + Adam on one fixed batch: the work an iteration cannot avoid.
    `bf16`: forward and loss under bf16 autocast, fp32 weights (what AMX/AVX512-BF16 could give)."""
    model = build_model("seed-cnn", 0)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4, eps=1e-7, foreach=True)
    times = []
    for i in range(steps + 2):
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--images", type=int, default=3000, help="training images per epoch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=60)
    parser.add_argument("--keras-venv", type=Path, default=Path.home() / ".cache" / "lth" / "keras-venv")
    parser.add_argument("--no-keras", action="store_true", help="skip the Keras/TensorFlow baseline")
    args = parser.parse_args()

    splits = load_splits(args.data_dir, "cpu", train_size=args.images, val_size=100, test_size=100)
    x, y = to_float(splits.train_x), splits.train_y
    def lth_config(**overrides: str) -> cfgmod.TrainConfig:
        keys = {"train.batch_size": str(args.batch), "train.initial_epochs": "1", **{f"train.{k}": v for k, v in overrides.items()}}
        return cfgmod.apply_overrides(cfgmod.preset("seed"), keys).train

    variants = {"lth engine": lth_config(channels_last="false"), "lth engine, channels-last": lth_config(channels_last="true"),
                "lth, channels-last, bf16": lth_config(channels_last="true", precision="bf16")}

    keras, keras_note, versions = None, "", ""
    if args.no_keras:
        keras_note = "skipped (--no-keras)"
    else:
        python, keras_note = keras_python(args.keras_venv)
        if python is not None:
            arrays = args.keras_venv / "cifar-slice.npz"
            import numpy as np

            np.savez(arrays, x=x.permute(0, 2, 3, 1).contiguous().numpy(), y=y.numpy())
            keras = subprocess.Popen(
                [str(python), "-c", KERAS_WORKER, str(args.images), str(args.batch), str(args.repeats), str(arrays)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )

    plain_epoch(x[:240], y[:240], args.batch)  # warm-up (allocator, oneDNN primitives)
    results: dict[str, list[float]] = {"Keras/TensorFlow": [], "plain eager PyTorch": [], **{k: [] for k in variants}}
    epoch_seconds: dict[str, list[float]] = {k: [] for k in variants}
    pure: dict[str, list[float]] = {k: [] for k in variants}
    stacked: list[float] = []
    bounds: dict[str, list[float]] = {f"{layout}, {p}": [] for p in ("fp32", "bf16 autocast") for layout in ("NCHW", "channels-last")}
    for _ in range(args.repeats):
        if keras is not None:  # the Keras worker trains while this process waits
            keras.stdin.write("go\n")
            keras.stdin.flush()
            results["Keras/TensorFlow"].append(json.loads(keras.stdout.readline())["images_per_s"])
        results["plain eager PyTorch"].append(plain_epoch(x, y, args.batch))
        for name, cfg in variants.items():
            rate, seconds = lth_epoch(splits, cfg)
            results[name].append(rate)
            epoch_seconds[name].append(seconds)
            pure[name].append(pure_step_seconds(x[: args.batch], y[: args.batch], cfg.channels_last, bf16=cfg.precision == "bf16"))
        stacked.append(lth_epoch(splits, variants["lth engine"], studies=2)[0])
        for name in bounds:
            seconds = pure_step_seconds(x[: args.batch], y[: args.batch], "channels" in name, bf16="bf16" in name)
            bounds[name].append(args.batch / seconds)
    if keras is not None:
        keras.stdin.close()
        tail = keras.stdout.read().strip().splitlines()
        versions = json.loads(tail[-1])["versions"] if tail else ""
        keras.wait()

    steps = -(-args.images // args.batch)

    print(f"machine: {machine()}")
    print(f"seed-cnn, batch {args.batch}, {args.images} real CIFAR-10 images per epoch, median of {args.repeats} interleaved epochs")
    # Medians are the headline; the best epoch of each loop is shown too, because on a small
    # machine one contender's epochs can be bimodal (Keras/TF's are here: ~145 or ~230 img/s).
    keras_rates = results["Keras/TensorFlow"]
    reference = (statistics.median(keras_rates), max(keras_rates)) if keras_rates else None
    plain = statistics.median(results["plain eager PyTorch"])
    print(f"{'loop':<30}{'median img/s':>13}{'vs Keras':>10}{'vs plain':>10}{'best img/s':>12}{'best vs best Keras':>20}")
    for name, rates in results.items():
        if not rates:
            print(f"{name:<30}{'-':>13}   {keras_note}")
            continue
        rate, best = statistics.median(rates), max(rates)
        vs_keras = f"{rate / reference[0]:.2f}" if reference else "-"
        best_vs = f"{best / reference[1]:.2f}" if reference else "-"
        print(f"{name:<30}{rate:>13.1f}{vs_keras:>10}{rate / plain:>10.2f}{best:>12.1f}{best_vs:>20}")
    if keras_rates:
        print(f"Keras epochs: {', '.join(f'{r:.0f}' for r in keras_rates)} img/s")
    if stacked:
        rate = statistics.median(stacked)
        print(f"2 studies trained together (--parallel 2): {rate:.1f} img/s summed over both, {rate / statistics.median(results['lth engine']):.2f}× one study alone")
    if versions:
        print(f"Keras baseline: {versions}")
    probe = step_seconds(cfgmod.apply_overrides(cfgmod.preset("seed"), {"train.batch_size": str(args.batch)}))
    print(f"layout a study picks here (lth.layout, measured now): {'channels-last' if probe[True] < probe[False] else 'NCHW'} "
          f"(NCHW {probe[False] * 1000:.1f} ms/step, channels-last {probe[True] * 1000:.1f} ms/step)")
    print()
    print(f"{'pure step (no lth loop)':<30}{'median img/s':>13}{'vs Keras':>10}")
    for name, rates in bounds.items():
        rate = statistics.median(rates)
        print(f"{name:<30}{rate:>13.1f}{(f'{rate / reference[0]:.2f}' if reference else '-'):>10}")
    print()
    print(f"{'loop overhead':<30}{'epoch s':>10}{'pure step ms':>14}{'ratio':>8}")
    for name in variants:
        wall, step = statistics.median(epoch_seconds[name]), statistics.median(pure[name])
        ratios = [w / (steps * p) for w, p in zip(epoch_seconds[name], pure[name])]
        print(f"{name:<30}{wall:>10.2f}{step * 1000:>14.1f}{statistics.median(ratios):>8.3f}")


if __name__ == "__main__":
    main()
