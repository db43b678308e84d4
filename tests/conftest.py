"""Shared fixtures: the real CIFAR-10 location and one tiny real study reused by several tests.

The data is found through $LTH_DATA_DIR, defaulting to `<repo>/../shared/data`. Missing data is a
test failure, never a skip.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from lth import config as cfgmod
from lth.data import find_batches_dir

REPO = Path(__file__).resolve().parents[1]

# One cache of measured memory layouts (lth.layout) for the whole session and its subprocesses:
# every run here then trains in the same layout, which the bit-identity tests need, and the
# user's own cache is left alone.
os.environ.setdefault("LTH_CACHE_DIR", tempfile.mkdtemp(prefix="lth-test-cache-"))

# LTH_TEST_DEVICE=cuda runs it on a GPU (CPU by default; bit-identical resume is a CPU promise).
# A study small enough for CI that overfits by design, so that it prunes on any CPU: 20 real
# training images are memorised within a few epochs (training loss from 2.3 towards 0.2), while
# the validation loss climbs from about ln 10 = 2.30 to 3-8. The early-stopping epoch therefore
# comes long before the last one in every round and best != final, whatever the CPU's kernels.
TINY_EPOCHS = 12
TINY_OVERRIDES = {
    "name": "tiny",
    "data.train_size": "20",
    "data.val_size": "100",
    "data.test_size": "200",
    "train.initial_epochs": str(TINY_EPOCHS),
    "train.epochs": str(TINY_EPOCHS),
    "train.lr": "1e-3",
    "train.batch_size": "10",
    "prune.rounds": "2",
    "device": os.environ.get("LTH_TEST_DEVICE", "cpu"),
}


def tiny_config() -> cfgmod.Config:
    return cfgmod.apply_overrides(cfgmod.preset("quick"), TINY_OVERRIDES)


def tiny_cli_args() -> list[str]:
    args = ["--preset", "quick"]
    for key, value in TINY_OVERRIDES.items():
        args += [f"--{key}", value]
    return args


@pytest.fixture(scope="session")
def data_root() -> Path:
    # Resolved once, here: the notebook test runs in another working directory.
    root = Path(os.environ.get("LTH_DATA_DIR") or REPO.parent / "shared" / "data").resolve()
    assert find_batches_dir(root) is not None, f"real CIFAR-10 not found under {root}; set LTH_DATA_DIR"
    return root


@pytest.fixture(scope="session")
def tiny_run(data_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """One uninterrupted tiny study on the real data, shared by the contract and resume tests."""
    from lth.study import run_study

    out = tmp_path_factory.mktemp("tiny") / "run"
    return run_study(tiny_config(), out=out, data_dir=data_root, progress=False)


# Wall-clock and energy readings differ from run to run; everything else must not.
TIMING_KEYS = {"seconds", "energy_kwh", "co2_kg", "energy_seconds", "energy_method"}


def strip_timing(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


# Plain readers of the run-directory contract (DESIGN §5), as any user's script would read it:
# the tests check the files, not lth's own readers of them.
def load_tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def read_rounds_csv(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_metrics(path):
    """Complete lines only: a test may read while a run is appending."""
    import json

    lines = Path(path).read_text().splitlines() if Path(path).exists() else []
    return [json.loads(line) for line in lines if line.endswith("}")]
