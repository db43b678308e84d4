"""Resume after SIGKILL, mid-epoch in round 0 and again mid-round 1, gives bit-identical results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch

import pytest

from conftest import strip_timing, tiny_cli_args, tiny_config
from lth.rundir import RunDir
from conftest import load_tensors, read_metrics, read_rounds_csv


def lth(*args: str) -> list[str]:
    return [sys.executable, "-m", "lth", *args]


def kill_when(cmd: list[str], ready, delay: float, timeout: float = 240) -> None:
    """Start `cmd`, wait until `ready()` holds, let it run `delay` s more, then SIGKILL it."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, f"finished before it could be killed: {proc.stderr.read().decode()}"
            assert time.monotonic() < deadline, "timed out waiting to kill"
            time.sleep(0.02)
        time.sleep(delay)
        assert proc.poll() is None, "finished before it could be killed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def epochs_logged(run: RunDir, round_index: int) -> int:
    return sum(1 for m in read_metrics(run.metrics) if m["round"] == round_index)



def test_sigkill_mid_epoch_and_mid_round_then_resume_is_bit_identical(tiny_run, data_root, tmp_path):
    if tiny_config().device != "cpu":
        pytest.skip("bit-identical resume is a CPU guarantee; GPU kernels are not bitwise reproducible")
    out = tmp_path / "run"
    run = RunDir(out)
    start = lth("run", *tiny_cli_args(), "--out", str(out), "--data-dir", str(data_root), "--no-progress")

    # Killed in the middle of round 0's third epoch.
    kill_when(start, lambda: epochs_logged(run, 0) >= 2, delay=0.3)
    assert run.resume_state.exists() and not run.rounds.exists()
    before = {(m["round"], m["epoch"]): m["seconds"] for m in read_metrics(run.metrics)}
    assert set(before) >= {(0, 1), (0, 2)}

    # A plain `lth run` on it refuses; resume continues. Killed mid-round 1.
    refused = subprocess.run(start, capture_output=True, text=True)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    kill_when(lth("resume", str(out), "--data-dir", str(data_root), "--no-progress"), lambda: epochs_logged(run, 1) >= 1, delay=0.3)
    assert len(read_rounds_csv(run.rounds)) == 1
    round0_mtime = run.best(0).stat().st_mtime_ns

    done = subprocess.run(start[:-1] + ["--resume", "--no-progress"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

    # Completed work was not recomputed: round 0's checkpoint untouched, early epochs' timings kept.
    assert run.best(0).stat().st_mtime_ns == round0_mtime
    after = {(m["round"], m["epoch"]): m["seconds"] for m in read_metrics(run.metrics)}
    assert after[(0, 1)] == before[(0, 1)] and after[(0, 2)] == before[(0, 2)]

    # Same masks, checkpoints, per-round results and epoch metrics as the uninterrupted run.
    ref = RunDir(tiny_run.run_dir)
    for r in range(3):
        for path in ("mask", "best", "final"):
            a, b = load_tensors(getattr(run, path)(r)), load_tensors(getattr(ref, path)(r))
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (r, path)
    assert strip_timing(read_rounds_csv(run.rounds)) == strip_timing(read_rounds_csv(ref.rounds))
    assert strip_timing(read_metrics(run.metrics)) == strip_timing(read_metrics(ref.metrics))
    assert not run.resume_state.exists()
    assert json.loads(run.manifest.read_text())["seeds"] == json.loads(ref.manifest.read_text())["seeds"]


def test_foreign_resume_state_is_refused_in_one_line(tiny_run, data_root, tmp_path, capsys):
    import shutil

    from lth.cli import main
    from lth.rundir import RESUME_FORMAT

    out = tmp_path / "copy"
    shutil.copytree(tiny_run.run_dir, out)
    run = RunDir(out)
    rows = read_rounds_csv(run.rounds)
    run.write_rounds(rows[:2])  # round 2 not committed: resume will look at its state
    run.save(run.resume_state, {"x": torch.zeros(1)}, metadata={"lth_resume": json.dumps({"format": RESUME_FORMAT - 1, "round": 2})})
    code = main(["resume", str(out), "--data-dir", str(data_root)])
    err = capsys.readouterr().err
    assert code == 2 and "another lth version" in err and err.count("\n") == 1
    run.resume_state.write_bytes(b"garbage")
    assert main(["resume", str(out), "--data-dir", str(data_root)]) == 2
    assert "not a readable lth resume state" in capsys.readouterr().err
