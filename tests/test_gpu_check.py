"""The GPU session's prepared check (`scripts/gpu_check.sh` with `benchmarks/gpu_study.py`) runs
against the code as it is, on the CPU at the smallest sizes: a GPU session has 15 minutes of
device time and must not spend them finding that a script broke when the code under it changed
(one such break, a round's outcome read as one object where `train_rounds` returns a list, was
found this way)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def test_gpu_check_script_runs_every_stage_on_the_cpu_in_smoke_mode(data_root, tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "LTH_DATA_DIR": str(data_root),
           "DEVICE": "cpu", "SUITE_SECONDS": "0", "GPU_STUDY_ARGS": "--smoke --full-study --parallel-study 2", "OUT": str(tmp_path / "out")}
    spec = "tiny:--preset quick --rounds 1 --train.initial_epochs 1 --train.epochs 1 --no-energy"
    done = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), spec], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 0 and "Traceback" not in out, out[-3000:]
    for line in ("SMOKE on the CPU", "lth engine, CUDA graph", "K studies", "measured round", "measured seed study (2 rounds)",
                 "measured 2 seed studies trained together", "tiny: ", "(exit 0)"):
        assert line in out, (line, out[-3000:])
    assert (tmp_path / "out" / "gpu_study.txt").is_file() and (tmp_path / "out" / "tiny-rounds.csv").is_file()


def test_gpu_study_refuses_a_cpu_without_smoke_in_one_line(data_root):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_study.py"), "--data-dir", str(data_root)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "--smoke" in done.stderr and len(done.stderr.strip().splitlines()) == 1
