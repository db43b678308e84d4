"""The memory layout a CPU study trains in, measured on the machine itself: channels-last pays
1.25x on an AVX-512 Xeon and loses on an AVX2 EPYC, and a laptop or cluster node can be either.
Both layouts compute the same thing (only the summation order of the convolutions differs), so
the choice is execution, like the device: outside the config hash, recorded in the manifest,
pinned by `train.channels_last = true|false`. A choice is measured once per machine, torch
version, thread count, model, batch size and precision, and cached."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import time
from pathlib import Path

import platformdirs
import torch

from lth.config import Config
from lth.engine import ModuleEngine, eager_step
from lth.models import has_convolutions, model_for

CACHE_ENV_VAR = "LTH_CACHE_DIR"


def cache_file() -> Path:
    return Path(os.environ.get(CACHE_ENV_VAR) or platformdirs.user_cache_dir("lth")) / "layouts.json"


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_flags() -> set[str] | None:
    """The processor's feature flags (x86 "flags", Arm "Features"); None where the OS does not say."""
    lines = [line for line in _cpuinfo().splitlines() if line.startswith(("flags", "Features"))]
    return set(lines[0].split(":", 1)[1].split()) if lines else None


def cpu_name() -> str:
    """The processor's model name and the vector extensions that decide convolution speed."""
    info = _cpuinfo()
    if not info:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), platform.machine())
    return " ".join([name, *sorted(f for f in cpu_flags() or () if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"))])


# bf16 arithmetic in hardware: Intel AMX, AVX512-BF16 (Intel, AMD Zen 4 and later), Arm's BF16.
NATIVE_BF16_FLAGS = {"amx_bf16", "avx512_bf16", "bf16"}


def bf16_warning(configs: list[Config]) -> str | None:
    """One line when a CPU study asks for bf16 that this CPU only emulates: there it costs more
    than it gives (2.6x slower than fp32 on a Xeon with AVX-512 but neither AMX nor AVX512-BF16),
    and nothing else would say so."""
    flags = cpu_flags()
    if flags is None or flags & NATIVE_BF16_FLAGS or all(c.train.precision != "bf16" for c in configs):
        return None
    return ("lth: warning: train.precision = \"bf16\" on a CPU without native bf16 (neither AMX nor AVX512-BF16): "
            "it is emulated and slower than fp32 here; use --train.precision fp32")


def machine_key(config: Config) -> str:
    t = config.train
    shape = "" if config.data.image_shape == (3, 32, 32) else f" | input {'x'.join(map(str, config.data.image_shape))}"
    return f"{cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads | {config.model} | batch {t.batch_size} | {t.precision}{shape}"


def step_seconds(config: Config, steps: int = 6, rounds: int = 3) -> dict[bool, float]:
    """Median seconds per training iteration in each layout, the two measured in alternation
    (the machine's noise hits both alike) on a copy of the model and a synthetic batch from
    a generator of its own, so that the study's weights and random streams are untouched."""
    generator = torch.Generator().manual_seed(0)
    b = config.train.batch_size
    images = torch.randint(0, 256, (b, *config.data.image_shape), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, config.data.classes, (b,), generator=generator)
    idx = torch.arange(b).unsqueeze(0)
    times: dict[bool, list[float]] = {False: [], True: []}
    with torch.random.fork_rng(devices=[]):  # building a model draws from the global stream
        engines = {cl: ModuleEngine(model_for(config, 0), {}, dataclasses.replace(config.train, channels_last=cl), torch.device("cpu"))
                   for cl in (False, True)}
        for _ in range(rounds):
            for cl, engine in engines.items():
                eager_step(engine, images, labels, idx)  # warm-up: oneDNN picks and caches kernels per layout
                start = time.perf_counter()
                for _ in range(steps):
                    eager_step(engine, images, labels, idx)
                times[cl].append((time.perf_counter() - start) / steps)
    return {cl: statistics.median(t) for cl, t in times.items()}


def choose(config: Config) -> tuple[bool, str]:
    """(channels_last, how it was chosen: "config", "cached" or "measured") for a CPU study."""
    if config.train.channels_last is not None:
        return config.train.channels_last, "config"
    key, path = machine_key(config), cache_file()
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if isinstance(cache, dict) and isinstance(cache.get(key), dict) and isinstance(cache[key].get("channels_last"), bool):
        return cache[key]["channels_last"], "cached"
    if not has_convolutions(model_for(config, 0)):
        return False, "no convolutions"  # a memory layout only convolutions see: nothing to measure
    seconds = step_seconds(config)
    choice = seconds[True] < seconds[False]
    cache = cache if isinstance(cache, dict) else {}
    cache[key] = {"channels_last": choice, "seconds_per_step": {"nchw": seconds[False], "channels_last": seconds[True]}}
    try:
        from lth.rundir import atomic_write

        atomic_write(path, json.dumps(cache, indent=2) + "\n")
    except OSError:
        pass  # a cache that cannot be written costs a measurement next time, nothing else
    return choice, "measured"
