"""Studies past one machine (issue 11), on real engines: a real one-node Slurm (.ci/slurm.sh
starts it in CI) driven through submitit, and a local Ray cluster. Each runs the same 2 × 2 tiny
grid (criteria × seeds, conftest's tiny study) through the real `lth` command, and must give the
local executor's results bit for bit; on Slurm one job is preempted mid-round with submitit's
signal (USR2), requeued by submitit, and continues from lth's saved position. Without Slurm or
Ray these tests skip, except in CI (CI=true), where a missing engine is a failure."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY_OVERRIDES, load_tensors, read_metrics, read_rounds_csv, strip_timing
from lth.rundir import RunDir

CI = os.environ.get("CI") == "true"
CELLS = [f"{c}_init/seed-{s}" for c in ("high-movement", "magnitude") for s in (0, 1)]
ROUNDS = 1  # round 0 and one pruned round: enough to preempt a job mid-round 1, and CI's 2 cores run the grid three times
RETRAIN_EPOCHS = 40  # round 1 long enough (a few seconds) that the signal lands inside it on a loaded machine


def lth(*args: str, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lth", *args], capture_output=True, text=True, timeout=timeout, **kw)


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0, proc.stdout
    assert len(lines) == 1 and lines[0].startswith("lth: error:") and "Traceback" not in proc.stderr, proc.stderr
    assert all(n in lines[0] for n in needles), (needles, lines[0])
    return lines[0]


def missing(what: str) -> None:
    """A missing engine: a skip on a workstation, a failure in CI."""
    (pytest.fail if CI else pytest.skip)(f"{what} (CI must provide it: .ci/run starts Slurm and installs lth[test])")


@pytest.fixture(scope="module")
def slurm() -> None:
    if shutil.which("sinfo") is None:
        missing("Slurm is not installed")
    up = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    if up.returncode != 0 or not any(s in up.stdout for s in ("idle", "mixed", "allocated")):
        missing(f"Slurm is not running ({up.stderr.strip() or up.stdout.strip()}); start it with .ci/slurm.sh start")
    pytest.importorskip("submitit") if not CI else __import__("submitit")


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory) -> Path:
    """The 2 × 2 grid at conftest's tiny size, with an `[executor]` table for Slurm: one job at a
    time (the machine's 2 cores), which `--executor local`/`ray` on the command line set aside."""
    overrides = {k: v for k, v in TINY_OVERRIDES.items() if k != "name"} | {"energy.tracker": "off", "prune.rounds": str(ROUNDS),
                                                                            "train.epochs": str(RETRAIN_EPOCHS)}
    path = tmp_path_factory.mktemp("spec") / "grid.toml"
    path.write_text('name = "grid"\nbase = "quick"\nseeds = [0, 1]\ncriteria = ["high-movement", "magnitude"]\n[overrides]\n'
                    + "".join(f'"{k}" = "{v}"\n' for k, v in overrides.items())
                    + '[executor]\nkind = "slurm"\nparallelism = 1\ncpus = 2\n')
    return path


@pytest.fixture(scope="module")
def local_grid(spec_file, data_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "study"
    started = time.monotonic()
    proc = lth("compare", "--spec", str(spec_file), "--executor", "local", "--out", str(out), "--data-dir", str(data_root), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    print(f"\nlocal executor: 2 x 2 grid in {time.monotonic() - started:.1f} s")
    return out


def same_results(study: Path, ref: Path) -> None:
    """Every cell bit-identical to the local run's: masks, best and final weights of every
    round, θ0, and rounds.csv apart from timing and energy."""
    for cell in CELLS:
        run, other = RunDir(study / cell), RunDir(ref / cell)
        for path in sorted(other.checkpoints.rglob("*.safetensors")):
            mine = load_tensors(run.root / path.relative_to(other.root))
            theirs = load_tensors(path)
            assert mine.keys() == theirs.keys() and all(mine[k].equal(theirs[k]) for k in theirs), (cell, path.name)
        assert strip_timing(read_rounds_csv(run.rounds)) == strip_timing(read_rounds_csv(other.rounds)), cell


def status(study: Path) -> str:
    proc = lth("status", str(study), timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def wait_for(condition, timeout: float, what: str, poll: float = 0.5, explain=lambda: ""):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{explain()}"
        time.sleep(poll)
    return found


def slurm_state(study: Path) -> str:
    """What Slurm and the jobs say, for a failure message: a timed-out wait says why."""
    def run(*cmd: str) -> str:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            return proc.stdout + proc.stderr
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{cmd[0]}: {exc}"
    parts = ["$ squeue", run("squeue", "-a", "-o", "%i %T %r %S %M"), "$ scontrol show job",
             run("scontrol", "show", "job")[-4000:], "$ lth status", run(sys.executable, "-m", "lth", "status", str(study))]
    for log in sorted((study / "jobs" / "slurm").glob("*_log.*")):
        parts += [f"--- {log.name} (tail)", log.read_text(errors="replace")[-1500:]]
    return "\n".join(parts)


def record(study: Path, cell: str) -> dict:
    path = study / "jobs" / "cells" / (cell.replace("/", ".") + ".json")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def test_slurm_grid_survives_a_preemption_and_matches_local(slurm, spec_file, local_grid, data_root, tmp_path):
    """Submitted as one job array (from the spec's [executor] table, time from the command line),
    one job preempted mid-round 1 with submitit's signal: submitit requeues it, it continues
    from the saved position (no evaluation is appended twice), the last job writes the report,
    and the results are the local run's bit for bit."""
    study = tmp_path / "study"
    started = time.monotonic()
    proc = lth("compare", "--spec", str(spec_file), "--executor.time", "30", "--out", str(study), "--data-dir", str(data_root), "--no-progress")
    assert proc.returncode == 0 and "4 submitted to slurm" in proc.stdout, proc.stdout + proc.stderr
    victim = "high-movement_init/seed-0"

    def mid_round_1() -> bool:
        return any(row.get("round") == 1 and row.get("epoch", 0) >= 2 for row in read_metrics(study / victim / "metrics.jsonl"))

    wait_for(mid_round_1, 300, f"{victim} to reach round 1", poll=0.1)
    job = record(study, victim)["job"]  # signalled at once: `lth status` would take a round's time
    # What submitit asks Slurm to send before a time limit. scancel may keep retrying once the job
    # is already being requeued ("can not be altered now"), so it is not waited for; it is stopped
    # as soon as the requeue shows, well before the job starts again (Slurm holds a requeued job
    # for cred_expire, 10 s in .ci/slurm.sh): a late retry would signal the restarted job before
    # submitit's handler is installed, and kill it (slurmd: "died by signal: 12").
    scancel = subprocess.Popen(["scancel", "--signal=USR2", job], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = Path(record(study, victim)["log"])
    try:
        wait_for(lambda: "DUE TO JOB REQUEUE" in log.read_text(), 120, "submitit to requeue the job", poll=0.1, explain=lambda: slurm_state(study))
    finally:
        scancel.kill()
        scancel.wait()
    line = next(x for x in status(study).splitlines() if x.strip().startswith(victim))
    assert "failed" not in line and ("requeued" in line or "pending" in line or "running" in line), line
    wait_for(lambda: (study / "report" / "report.md").is_file(), 540, "the last job to write the report", poll=1,
             explain=lambda: slurm_state(study))
    seconds = time.monotonic() - started
    print(f"\nslurm executor (one job preempted and requeued): 2 x 2 grid in {seconds:.1f} s")

    shown = status(study)
    assert shown.splitlines()[0].endswith("4 cells: 4 done, 0 running, 0 failed, 0 pending"), shown
    logs = log.read_text() + log.with_suffix(".out").read_text()
    assert "Caught signal SIGUSR2" in logs and f"Requeued job {job}" in logs, logs[-3000:]
    evaluations = [(r["round"], r["epoch"]) for r in read_metrics(study / victim / "metrics.jsonl")]
    assert len(evaluations) == len(set(evaluations)) == int(TINY_OVERRIDES["train.initial_epochs"]) + ROUNDS * RETRAIN_EPOCHS, evaluations  # no epoch redone
    same_results(study, local_grid)


def test_ray_grid_matches_local(spec_file, local_grid, data_root, tmp_path):
    """A local Ray cluster, one task per cell, one at a time (2 CPUs a task on 2 cores)."""
    if not CI:
        pytest.importorskip("ray")
    study = tmp_path / "study"
    started = time.monotonic()
    proc = lth("compare", "--spec", str(spec_file), "--executor", "ray", "--executor.local_cpus", "2", "--executor.cpus", "2",
               "--out", str(study), "--data-dir", str(data_root), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"\nray executor: 2 x 2 grid in {time.monotonic() - started:.1f} s")
    assert (study / "report" / "report.md").is_file()
    assert "4 done" in status(study)
    same_results(study, local_grid)


def test_a_killed_cell_is_failed_and_retried_alone(data_root, tmp_path):
    """A job killed outright (SIGKILL: no word from it) is `failed` in `lth status`;
    `--retry-failed` reruns that cell only, and a plain rerun the pending rest."""
    study = tmp_path / "study"
    args = ("compare", "--preset", "quick", *[a for k, v in TINY_OVERRIDES.items() for a in (f"--{k}", v)], "--rounds", "0",
            "--seeds", "0,1,2", "--no-energy", "--no-progress", "--out", str(study), "--data-dir", str(data_root))
    proc = subprocess.Popen([sys.executable, "-m", "lth", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: read_metrics(study / "high-movement_init/seed-1/metrics.jsonl"), 300, "seed 1 to train", poll=0.05)
    finally:
        proc.kill()
        proc.wait()
    shown = status(study)
    assert "seed-0  done" in shown and "seed-1  failed" in shown and "ended without finishing" in shown and "seed-2  pending" in shown, shown
    retried = lth(*args, "--retry-failed")
    assert retried.returncode == 0, retried.stderr
    assert "[high-movement_init seed 1] running into" in retried.stdout and "seed 2] pending, not failed: not retried" in retried.stdout
    shown = status(study)
    assert "seed-1  done" in shown and "seed-2  pending" in shown, shown
    assert lth(*args).returncode == 0
    assert "3 done" in status(study)


def test_bad_executor_input_gets_one_line(data_root, tmp_path):
    out = tmp_path / "study"
    base = ("compare", "--preset", "quick", "--rounds", "0", "--out", str(out), "--data-dir", str(data_root))
    one_line_error(lth(*base, "--executor", "nope"), "unknown executor 'nope'", "local, slurm, ray")
    one_line_error(lth(*base, "--executor", "ray", "--executor.partition", "x"), "--executor.partition", "ray")
    for kind, package in (("slurm", "submitit"), ("ray", "ray")):  # the extra not installed
        code = f"import sys; sys.modules[{package!r}] = None; from lth.cli import main; sys.exit(main(sys.argv[1:]))"
        proc = subprocess.run([sys.executable, "-c", code, *base, "--executor", kind], capture_output=True, text=True, timeout=120)
        one_line_error(proc, f"pip install 'lth[{kind}]'")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    one_line_error(lth("compare", "--preset", "quick", "--rounds", "0", "--out", str(blocker / "study")), str(blocker))
    assert not out.exists()


def test_slurm_refusals_get_the_engines_line(slurm, data_root, tmp_path):
    out = tmp_path / "study"
    base = ("compare", "--preset", "quick", "--rounds", "0", "--out", str(out), "--data-dir", str(data_root), "--executor", "slurm")
    one_line_error(lth(*base, "--executor.partition", "no-such-partition"), "sbatch: error:", "no-such-partition")
    one_line_error(lth(*base, "--executor.no-such-option", "1"), "sbatch:", "no-such-option")
    one_line_error(lth(*base, "--executor.time", "soon"), "--executor.time")
    assert not out.exists()
    # A job that fails on the node: `failed`, with its log and the error line from it.
    offline = os.environ | {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}  # sbatch passes it on: no download
    assert lth(*base, "--data-dir", str(tmp_path / "no-data"), "--no-energy", env=offline).returncode == 0
    cell = "high-movement_init/seed-0"
    wait_for(lambda: record(out, cell).get("state") == "failed", 120, "the job to fail")
    shown = status(out)
    assert f"{cell}  failed" in shown and "_log.err" in shown and "DataError" in shown, shown
