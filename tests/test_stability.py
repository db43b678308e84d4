"""`lth stability` on the tiny real study (tests/conftest.py): the instability of identical copies,
the path's ends against the copies' own test errors, masks along the path, the exact replay of
round 0, stability.csv through the CLI, SIGKILL mid-copy then resume, the report's section, and
one-line errors. Copies train a few iterations only, except where the CLI measures a whole round."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors import safe_open

from conftest import read_rounds_csv, tiny_config
from lth import cli
from lth.data import load_splits
from lth.report import write_report
from lth.report.stability import stability_lines
from lth.rundir import RunDir
from lth.stability import STABLE, Progress, copy_seed, error_path, instability, interpolate, replay_round0, train_copies

CPU = tiny_config().device == "cpu"


@pytest.fixture(scope="module")
def splits(data_root):
    d = tiny_config().data
    return load_splits(data_root, device=tiny_config().device, train_size=d.train_size, val_size=d.val_size, test_size=d.test_size)


@pytest.fixture(scope="module")
def measured(tiny_run, data_root, tmp_path_factory):
    """A copy of the tiny run, measured through the CLI: round 2 from its rewind point (θ0) on a
    5-point path, and round 0 from iteration 12 of its own training (a one-point sweep)."""
    run = RunDir(tmp_path_factory.mktemp("stability") / "run")
    shutil.copytree(tiny_run.run_dir, run.root)
    common = ["--data-dir", str(data_root)]
    assert cli.main(["stability", str(run.root), "--rounds", "2", "--points", "5", *common]) == 0
    assert cli.main(["stability", str(run.root), "--rounds", "0", "--points", "3", "--rewind-sweep", "12", *common]) == 0
    return run


def rows(run: RunDir) -> list[dict[str, str]]:
    with open(run.stability, newline="") as f:
        return list(csv.DictReader(f))


def ticket(tiny_run, r=2):
    run = RunDir(tiny_run.run_dir)
    return run.load(run.mask(r)), run.load(run.init)


def test_identical_copies_have_zero_instability(tiny_run, splits, tmp_path):
    masks, init = ticket(tiny_run)
    progress = Progress(RunDir(tmp_path), {"test": "identical"})
    finals, errors = train_copies(tiny_config(), masks, init, [5, 5], 2, 6, splits, together=True, progress=progress)
    assert all(torch.allclose(finals[0][k], finals[1][k], atol=1e-6) for k in finals[0])
    path = error_path(tiny_config(), finals[0], finals[1], masks, splits, 4)
    assert instability(path) == pytest.approx(0.0, abs=1e-9) and errors[0] == pytest.approx(errors[1], abs=1e-9)


@pytest.fixture(scope="module")
def pair(tiny_run, splits, tmp_path_factory):
    """Two copies of round 2's ticket with their own data orders, 6 iterations, one after another."""
    masks, init = ticket(tiny_run)
    progress = Progress(RunDir(tmp_path_factory.mktemp("pair")), {"test": "pair"})
    finals, errors = train_copies(tiny_config(), masks, init, [copy_seed(0, 0), copy_seed(0, 1)], 2, 6, splits, together=False, progress=progress)
    return masks, finals, errors


def test_path_ends_are_the_copies_own_test_errors(pair, splits):
    masks, finals, errors = pair
    assert any(not torch.equal(finals[0][k], finals[1][k]) for k in masks)  # other data orders, other weights
    path = error_path(tiny_config(), finals[0], finals[1], masks, splits, 3)
    assert path[0] == pytest.approx(errors[0], abs=1e-12) and path[-1] == pytest.approx(errors[1], abs=1e-12)
    assert instability(path) == pytest.approx(max(path) - (errors[0] + errors[1]) / 2)


def test_masks_hold_along_the_path(pair):
    masks, finals, _ = pair
    noisy = {k: v + 0.1 for k, v in finals[0].items()}  # an end that breaks the mask: the path must not
    for final in finals:
        assert all(not final[k][~m].any() for k, m in masks.items())
    for alpha in (0.0, 0.3, 0.5, 1.0):
        w = interpolate(noisy, finals[1], alpha, masks)
        assert all(not w[k][~m].any() for k, m in masks.items())
        assert all(torch.allclose(w[k][m], ((1 - alpha) * noisy[k] + alpha * finals[1][k])[m], atol=1e-6) for k, m in masks.items())


@pytest.mark.skipif(not CPU, reason="exact replay is a CPU promise")
def test_replay_of_round_0_is_exact(tiny_run, splits):
    run = RunDir(tiny_run.run_dir)
    steps = int(read_rounds_csv(run.rounds)[0]["best_step"])
    total = 2 * tiny_config().train.initial_epochs  # 20 images in batches of 10
    replayed = replay_round0(run.read_config(), run, splits, [0, steps, total])  # as trained: its layout pinned
    for k, kind in ((0, run.init), (steps, run.best(0)), (total, run.final(0))):
        stored = run.load(kind)
        assert all(torch.equal(replayed[k][n], stored[n]) for n in stored), k


def test_stability_csv_through_the_cli(measured, tiny_run):
    own, sweep = rows(measured)
    assert (own["round"], own["rewind"], own["rewind_step"], own["pair"], own["copies"], own["points"]) == ("2", "init", "0", "0-1", "2", "5")
    assert (sweep["round"], sweep["rewind"], sweep["rewind_step"], sweep["points"]) == ("0", "iter:12", "12", "3")
    for row, r in ((own, 2), (sweep, 0)):
        path = [float(e) for e in row["path"].split()]
        assert len(path) == int(row["points"]) and (float(row["error_a"]), float(row["error_b"])) == (path[0], path[-1])
        assert float(row["instability"]) == pytest.approx(instability(path), abs=1e-8)
        assert row["stable"] == str(float(row["instability"]) <= STABLE)
        assert float(row["remaining_pct"]) == pytest.approx(float(read_rounds_csv(measured.rounds)[r]["remaining_pct"]))
    assert not measured.stability_resume.exists()
    before = measured.stability.read_bytes()  # measured again: kept, not redone
    assert cli.main(["stability", str(measured.root), "--rounds", "2", "--points", "5"]) == 0
    assert measured.stability.read_bytes() == before


def progress_meta(run: RunDir) -> dict:
    try:
        with safe_open(str(run.stability_resume), "pt") as f:
            return json.loads(f.metadata()["lth_stability"])
    except Exception:  # not written yet
        return {}


@pytest.mark.skipif(not CPU, reason="bit-identical resume is a CPU promise")
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_a_kill_mid_copy_then_resume_matches_the_uninterrupted_run(measured, tiny_run, data_root, tmp_path, signum):
    """SIGKILL: resumed from the copies' last evaluation; SIGTERM: saved at the next iteration, exit 143."""
    run = RunDir(tmp_path / "run")
    shutil.copytree(tiny_run.run_dir, run.root)
    cmd = [sys.executable, "-m", "lth", "stability", str(run.root), "--rounds", "2", "--points", "5", "--data-dir", str(data_root)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:  # copy 0 done, copy 1 part-way: the position is mid-copy
        while not ((meta := progress_meta(run)).get("done") == [0] and meta.get("states", {}).get("1", {}).get("steps_done", 99) <= 18):
            assert proc.poll() is None, f"finished before it could be killed: {proc.stderr.read().decode()}"
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        os.kill(proc.pid, signum)
        proc.wait()
    if signum == signal.SIGTERM:
        assert proc.returncode == 143 and "the same lth stability command" in proc.stderr.read().decode()
        meta = progress_meta(run)
    assert not run.stability.exists() and 0 < meta["states"]["1"]["steps_done"] < 24
    assert cli.main(cmd[3:]) == 0
    assert rows(run) == rows(measured)[:1] and not run.stability_resume.exists()


def test_report_shows_stability(measured, tmp_path):
    out = write_report([measured.root], out=tmp_path / "report")
    for name in ("stability_paths.png", "instability_vs_remaining.png", "instability_vs_rewind.png"):
        assert (out / name).stat().st_size > 5000
    text = (out / "report.md").read_text()
    own = rows(measured)[0]
    assert "## Stability" in text and f"| 2 | 81.0 | init | 1 | {100 * float(own['instability']):.2f}" in text
    assert stability_lines(__import__("pandas").DataFrame()) == []


@pytest.mark.parametrize("argv, message", [
    (["--rounds", "5"], "round 5 is not committed"),
    (["--copies", "1"], "--copies and --points must be >= 2"),
    (["--rewind-sweep", "0,100"], "--rewind-sweep: iteration 100 is not inside round 0"),
    (["--rounds", "2", "--points", "7"], "was measured with --copies 2 --points 5"),
    (["--rounds", "x"], "comma-separated integers"),
])
def test_bad_requests_are_one_line(argv, message, measured, capsys):
    before = measured.stability.read_bytes()
    assert cli.main(["stability", str(measured.root), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and measured.stability.read_bytes() == before


def test_missing_checkpoint_and_not_a_run(tiny_run, tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    shutil.copytree(tiny_run.run_dir, run.root)
    run.mask(1).unlink()
    assert cli.main(["stability", str(run.root), "--rounds", "1"]) == 2 and "mask.safetensors: missing" in capsys.readouterr().err
    assert cli.main(["stability", str(tmp_path)]) == 2 and "not an lth run directory" in capsys.readouterr().err
