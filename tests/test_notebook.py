"""The example notebook runs end to end at smoke size on the real data (via nbmake), and its
committed .ipynb is in sync with its py:percent twin (jupytext)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jupytext

from conftest import REPO, TINY_OVERRIDES

NOTEBOOK = REPO / "examples" / "seed_study.ipynb"
TWIN = REPO / "examples" / "seed_study.py"


def test_ipynb_matches_its_py_percent_twin():
    paired = jupytext.read(TWIN)
    committed = jupytext.read(NOTEBOOK)
    assert [(c.cell_type, c.source) for c in paired.cells] == [(c.cell_type, c.source) for c in committed.cells], (
        "examples/seed_study.ipynb is out of date: run `jupytext --sync examples/seed_study.py`"
    )


def test_notebook_runs_at_smoke_size(data_root, tmp_path):
    smoke = {**TINY_OVERRIDES, "prune.rounds": "1", "train.initial_epochs": "2", "train.epochs": "2"}
    env = dict(
        os.environ,
        LTH_NB_PRESET="quick",
        LTH_NB_OVERRIDES=json.dumps(smoke),
        LTH_NB_OUT=str(tmp_path / "run"),
        LTH_DATA_DIR=str(data_root),
        MPLBACKEND="Agg",
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbmake", str(NOTEBOOK)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert (tmp_path / "run" / "rounds.csv").exists()
    assert any((tmp_path / "run" / "report").glob("*.png"))
