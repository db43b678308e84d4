"""Baselines and controls end to end on the real CIFAR-10: rewind points, F&C-style runs,
random tickets matched to another run, replicates and same-seed reproducibility."""

from __future__ import annotations

import json

import pytest
import torch

import lth.study as study
from conftest import strip_timing, tiny_config
from lth import config as cfgmod
from lth.rundir import RunDirError
from lth.seeds import reinit_seed
from lth.compare import run_replicates
from lth.study import rewind_weights, run_study
from lth.masks import count_kept
from lth.models import build_model, layer_types
from lth.rundir import RunDir
from conftest import load_tensors, read_metrics, read_rounds_csv


def tiny(**overrides: str) -> cfgmod.Config:
    return cfgmod.apply_overrides(tiny_config(), overrides)



@pytest.fixture
def spy_starts(monkeypatch):
    """Record the weights every round starts training from (after rewind and masking)."""
    starts: list[dict[str, torch.Tensor]] = []
    real = study.train_rounds

    def spy(members, *args, **kwargs):
        starts.extend({k: v.detach().clone() for k, v in m.model.state_dict().items()} for m in members)
        return real(members, *args, **kwargs)

    monkeypatch.setattr(study, "train_rounds", spy)
    return starts


@pytest.mark.parametrize("rewind", ["init", "reinit", "best", "final", "epoch:2"])
def test_rewind_points_restart_survivors_where_the_config_says(rewind, spy_starts, data_root, tmp_path):
    config = tiny(rewind=rewind, **{"prune.rounds": "1"})
    result = run_study(config, out=tmp_path / "run", data_dir=data_root, progress=False)
    run = RunDir(result.run_dir)
    init, mask = load_tensors(run.init), load_tensors(run.mask(1))
    start = spy_starts[1]
    expected = {
        "init": init,
        "best": load_tensors(run.best(0)),
        "final": load_tensors(run.final(0)),
        "epoch:2": load_tensors(run.rewind_point) if rewind.startswith("epoch") else None,
        "reinit": build_model("seed-cnn", reinit_seed(0, 1)).state_dict(),
    }[rewind]
    for name, value in start.items():
        keep = mask.get(name, torch.ones_like(value, dtype=torch.bool))
        assert torch.equal(value[keep], expected[name][keep]), name  # survivors restart there
        assert torch.count_nonzero(value[~keep]) == 0  # pruned stay exactly zero
    if rewind == "reinit":
        assert not torch.equal(start["features.0.weight"][mask["features.0.weight"]], init["features.0.weight"][mask["features.0.weight"]])
    assert torch.equal(load_tensors(run.mask(1))["features.0.weight"], mask["features.0.weight"])  # mask intact


def test_rewind_weights_epoch_point_is_from_round_0(tiny_run, tmp_path):
    run = RunDir(tiny_run.run_dir)
    init = load_tensors(run.init)
    assert rewind_weights(tiny_config(), 0, run, init) is init
    assert rewind_weights(tiny(rewind="final"), 2, run, init)["output.weight"].equal(load_tensors(run.final(1))["output.weight"])


def test_frankle_carbin_style_run(data_root, tmp_path):
    """conv2, 20 iterations a round, evaluation every 7, per-layer magnitude with the output layer."""
    config = cfgmod.apply_overrides(
        cfgmod.preset("fc-conv2"),
        {"data.train_size": "120", "data.val_size": "100", "data.test_size": "100", "train.steps": "20",
         "train.eval_every": "7", "train.batch_size": "20", "prune.rounds": "2", "device": tiny_config().device},
    )
    result = run_study(config, out=tmp_path / "fc", data_dir=data_root, progress=False)
    run = RunDir(result.run_dir)
    metrics = read_metrics(run.metrics)
    assert [(m["round"], m["step"]) for m in metrics] == [(r, s) for r in range(3) for s in (7, 14, 20)]
    types = layer_types(build_model("conv2", 0))
    rates = {"conv": 0.1, "dense": 0.2, "output": 0.1}
    kept = count_kept(load_tensors(run.mask(0)))
    assert set(kept) == set(types)  # the output layer is pruned too
    for r in (1, 2):
        now = count_kept(load_tensors(run.mask(r)))
        for name, before in kept.items():
            assert now[name] == before - round(rates[types[name]] * before), (r, name)
        kept = now
    rows = read_rounds_csv(run.rounds)
    for row, m in zip(rows, (metrics[0:3], metrics[3:6], metrics[6:9])):
        best = min(m, key=lambda e: (e["val_loss"], e["step"]))
        assert int(row["best_step"]) == best["step"]
        assert row["criterion"] in ("none", "magnitude")
    assert 0 < float(rows[2]["density/output.weight"]) < 1


def test_random_ticket_copies_another_runs_layer_densities(tiny_run, data_root, tmp_path):
    config = tiny(**{"prune.criterion": "random", "prune.match": str(tiny_run.run_dir)})
    result = run_study(config, out=tmp_path / "random", data_dir=data_root, progress=False)
    mine, theirs = RunDir(result.run_dir), RunDir(tiny_run.run_dir)
    for r in range(3):
        assert count_kept(load_tensors(mine.mask(r))) == count_kept(load_tensors(theirs.mask(r)))
    assert not torch.equal(load_tensors(mine.mask(2))["features.0.weight"], load_tensors(theirs.mask(2))["features.0.weight"]) or \
        count_kept(load_tensors(theirs.mask(2))) == count_kept(load_tensors(theirs.mask(0)))


def test_match_needs_a_finished_run(data_root, tmp_path):
    with pytest.raises(RunDirError, match="not an lth run directory"):
        run_study(tiny(**{"prune.criterion": "random", "prune.match": str(tmp_path)}), out=tmp_path / "r", data_dir=data_root)
    assert not (tmp_path / "r" / "config.toml").exists()


def test_same_seed_runs_are_bit_identical(tiny_run, data_root, tmp_path):
    """A second run of the same seed (one round shorter) reproduces the first's rounds 0 and 1."""
    result = run_study(tiny(**{"prune.rounds": "1"}), out=tmp_path / "again", data_dir=data_root, progress=False)
    mine, ref = RunDir(result.run_dir), RunDir(tiny_run.run_dir)
    for r in (0, 1):
        for kind in ("mask", "best", "final"):
            a, b = load_tensors(getattr(mine, kind)(r)), load_tensors(getattr(ref, kind)(r))
            assert all(torch.equal(a[k], b[k]) for k in b)
    assert strip_timing(read_rounds_csv(mine.rounds)) == strip_timing(read_rounds_csv(ref.rounds)[:2])
    assert strip_timing(read_metrics(mine.metrics)) == strip_timing([m for m in read_metrics(ref.metrics) if m["round"] < 2])


def test_replicates_get_derived_seeds_in_their_own_dirs(data_root, tmp_path):
    config = tiny(**{"prune.rounds": "0", "train.initial_epochs": "1", "seed": "5"})
    results = run_replicates(config, 2, out=tmp_path / "reps", data_dir=data_root, progress=False)
    assert [r.run_dir.name for r in results] == ["seed-5", "seed-6"]
    seeds = [cfgmod.load(r.run_dir / "config.toml").seed for r in results]
    assert seeds == [5, 6]
    inits = [load_tensors(RunDir(r.run_dir).init)["features.0.weight"] for r in results]
    assert not torch.equal(*inits)
    assert json.loads((results[1].run_dir / "manifest.json").read_text())["seeds"]["seed"] == 6


def test_iteration_cadence_resume_is_bit_identical(data_root, tmp_path, monkeypatch):
    """Interrupted at an evaluation inside round 1 (eval every 4 iterations), then resumed."""
    config = tiny(**{"train.steps": "12", "train.eval_every": "4", "prune.rounds": "1", "train.lr": "3e-3"})
    reference = run_study(config, out=tmp_path / "ref", data_dir=data_root, progress=False)

    monkeypatch.setattr(study, "RESUME_SAVE_SECONDS", 0.0)
    real_save, calls = RunDir.save_resume, []

    def save_then_die(self, round_index, tensors, meta):
        real_save(self, round_index, tensors, meta)
        calls.append(round_index)
        if len(calls) == 5:  # round 1's second evaluation
            raise KeyboardInterrupt

    monkeypatch.setattr(RunDir, "save_resume", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_study(config, out=tmp_path / "cut", data_dir=data_root, progress=False)
    monkeypatch.setattr(RunDir, "save_resume", real_save)
    cut = RunDir(tmp_path / "cut")
    saved_round, _, meta = cut.load_resume()
    assert (saved_round, meta["steps_done"], len(read_rounds_csv(cut.rounds))) == (1, 8, 1)
    run_study(config, out=cut.root, data_dir=data_root, resume=True, progress=False)
    ref = RunDir(reference.run_dir)
    for r in (0, 1):
        for kind in ("mask", "best", "final"):
            a, b = load_tensors(getattr(cut, kind)(r)), load_tensors(getattr(ref, kind)(r))
            assert all(torch.equal(a[k], b[k]) for k in b)
    assert strip_timing(read_metrics(cut.metrics)) == strip_timing(read_metrics(ref.metrics))
    assert strip_timing(read_rounds_csv(cut.rounds)) == strip_timing(read_rounds_csv(ref.rounds))
