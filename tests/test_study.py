"""End to end on the real CIFAR-10: the run-directory contract of DESIGN §5 for a tiny study."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from conftest import TINY_EPOCHS, tiny_config
from lth import config as cfgmod
from lth.masks import apply_masks_
from lth.models import build_model, prunable_names
from lth.pruning import next_masks, prune_count, prune_counts
from lth.rundir import RunDir
from conftest import load_tensors, read_rounds_csv

ROUNDS = 3  # round 0 + 2 pruning rounds


@pytest.fixture(scope="module")
def run(tiny_run) -> RunDir:
    return RunDir(tiny_run.run_dir)


def test_files_present(run, tiny_run):
    for path in (run.config, run.manifest, run.metrics, run.rounds, run.init):
        assert path.is_file() and path.stat().st_size > 0, path
    for r in range(ROUNDS):
        for path in (run.best(r), run.final(r), run.mask(r)):
            assert path.is_file(), path
    assert not run.resume_state.exists()  # cleared once a round is committed
    # The stored config is the one that ran, with the memory layout lth chose pinned (lth.layout).
    chosen = json.loads(run.manifest.read_text())["execution"]["channels_last"]
    assert cfgmod.load(run.config) == dataclasses.replace(tiny_config(), train=dataclasses.replace(tiny_config().train, channels_last=chosen))
    assert [row["round"] for row in tiny_run.rounds] == list(range(ROUNDS))


def test_manifest_records_derived_seeds(run):
    manifest = json.loads(run.manifest.read_text())
    assert manifest["seeds"]["seed"] == 0
    assert {"init_seed", "data_seed"} <= set(manifest["seeds"])
    assert manifest["prunable"] == prunable_names(build_model("seed-cnn", 0))


def test_init_is_theta0_of_the_seed(run):
    manifest = json.loads(run.manifest.read_text())
    theta0 = build_model("seed-cnn", manifest["seeds"]["init_seed"]).state_dict()
    init = load_tensors(run.init)
    assert all(torch.equal(init[k], theta0[k]) for k in theta0)


def test_masks_follow_the_pruning_schedule(run):
    rows = read_rounds_csv(run.rounds)
    prunable = prunable_names(build_model("seed-cnn", 0))
    init = load_tensors(run.init)
    masks = [load_tensors(run.mask(r)) for r in range(ROUNDS)]
    assert set(masks[0]) == set(prunable)
    assert all(bool(m.all()) for m in masks[0].values())  # round 0 is dense
    total = sum(m.numel() for m in masks[0].values())
    kept = total
    pruned_rounds = 0
    for r in range(1, ROUNDS):
        skipped = rows[r]["pruning_skipped"] == "True"
        expected = kept if skipped else kept - prune_count(kept, 0.1)
        kept_now = sum(int(m.sum()) for m in masks[r].values())
        assert kept_now == expected
        pruned_rounds += not skipped
        assert all(bool((masks[r][n] <= masks[r - 1][n]).all()) for n in prunable)  # pruned stay pruned
        # The mask is exactly the criterion applied to the previous round's best and final.
        counts = prune_counts(masks[r - 1], prunable, None, 0.1)
        recomputed = next_masks("high-movement", load_tensors(run.best(r - 1)), load_tensors(run.final(r - 1)), init, masks[r - 1], counts, 0)
        assert all(torch.equal(recomputed[n], masks[r][n]) for n in prunable)
        kept = kept_now
    if tiny_config().device == "cpu":  # deterministic there; a GPU's numbers may skip every round
        assert pruned_rounds >= 1, "the tiny study should really prune at least once"
    assert math.isclose(kept / total, 0.9 ** pruned_rounds, rel_tol=1e-3)


def test_pruned_weights_are_exactly_zero_and_output_layer_dense(run):
    for r in range(ROUNDS):
        mask = load_tensors(run.mask(r))
        assert "output.weight" not in mask
        for which in (run.best(r), run.final(r)):
            weights = load_tensors(which)
            for name, m in mask.items():
                assert torch.count_nonzero(weights[name][~m]) == 0
            assert torch.count_nonzero(weights["output.weight"]) == weights["output.weight"].numel()


def test_rounds_csv_consistent_with_masks_and_metrics(run):
    rows = read_rounds_csv(run.rounds)
    metrics = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    epochs = {r: TINY_EPOCHS for r in range(ROUNDS)}
    assert [(m["round"], m["epoch"]) for m in metrics] == [(r, e) for r in range(ROUNDS) for e in range(1, epochs[r] + 1)]
    previous_kept = None
    for r, row in enumerate(rows):
        mask = load_tensors(run.mask(r))
        kept = sum(int(m.sum()) for m in mask.values())
        total = sum(m.numel() for m in mask.values())
        assert int(row["weights_remaining"]) == kept and int(row["weights_prunable"]) == total
        assert math.isclose(float(row["remaining_pct"]), 100 * kept / total)
        for name, m in mask.items():
            assert math.isclose(float(row[f"density/{name}"]), float(m.sum()) / m.numel())
        if previous_kept is not None:
            assert int(row["pruned"]) == previous_kept - kept
            assert (row["pruning_skipped"] == "True") == (kept == previous_kept)
        previous_kept = kept
        losses = [m["val_loss"] for m in metrics if m["round"] == r]
        best = min(range(len(losses)), key=lambda i: (losses[i], i))
        assert int(row["best_epoch"]) == best + 1
        assert float(row["best_val_loss"]) == losses[best]
        assert float(row["final_val_loss"]) == losses[-1]
        for key in ("test_acc_best", "test_acc_final", "best_val_acc"):
            assert 0.0 <= float(row[key]) <= 1.0
        assert (row["criterion"], row["rewind"]) == (("none", "none") if r == 0 else ("high-movement", "init"))


def test_best_weights_reproduce_recorded_validation_loss(run, data_root):
    """The saved best checkpoint is the one whose validation loss the table reports."""
    from lth.data import load_splits
    from lth.engine import evaluate_model as evaluate

    rows = read_rounds_csv(run.rounds)
    splits = load_splits(data_root, "cpu", train_size=1, val_size=100, test_size=1)
    model = build_model("seed-cnn", 0)
    model.load_state_dict(load_tensors(run.best(1)))
    loss, acc = evaluate(model, splits.val_x, splits.val_y, 500)
    # Bitwise-close on CPU; a GPU run recorded it with TF32 convolutions, so allow for that.
    tolerance = 1e-6 if tiny_config().device == "cpu" else 1e-4
    assert math.isclose(loss, float(rows[1]["best_val_loss"]), rel_tol=tolerance)
    apply_masks_(model, load_tensors(run.mask(1)))  # already masked: no change
    assert math.isclose(evaluate(model, splits.val_x, splits.val_y, 500)[0], loss, rel_tol=1e-9)


def test_energy_recorded_per_round_with_its_method(run):
    for row in read_rounds_csv(run.rounds):
        method = row["energy_method"]
        assert method.startswith("codecarbon:") or method.startswith("not measurable")
        if row["energy_kwh"]:
            assert float(row["energy_kwh"]) > 0 and float(row["co2_kg"]) > 0
            assert "measured" in method or "estimated" in method
        assert float(row["energy_seconds"]) > 0


def test_report_from_the_real_tiny_run(run, tmp_path):
    import pandas as pd

    from lth.report import write_report

    report = write_report([run.root], out=tmp_path / "report")
    for name in ("accuracy_vs_remaining.png", "early_stop_vs_remaining.png", "val_loss_curves.png", "layer_density.png", "report.md", "summary.csv"):
        assert (report / name).stat().st_size > 0, name
    assert list(report.glob("scores_round_*.png"))
    summary = pd.read_csv(report / "summary.csv")
    rows = read_rounds_csv(run.rounds)
    assert list(summary["round"]) == [int(r["round"]) for r in rows]
    for (_, s), r in zip(summary.iterrows(), rows):
        assert math.isclose(s["test_acc_best_mean"], float(r["test_acc_best"]))
        assert math.isclose(s["remaining_pct"], float(r["remaining_pct"]))
