"""lth.report on hand-made run directories (the DESIGN §5 contract written by hand through
lth.rundir's paths, no training): 2 groups × 2 seeds × 3 rounds, plus broken runs that must be
skipped and listed."""

from __future__ import annotations

import csv
import json
import math
import shutil
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from safetensors.numpy import load_file, save_file

from lth import report
from lth.config import Config, PruneConfig
from lth.report import ReportError, figures
from lth.rundir import RunDir

SHAPES = {"features.0.weight": (4, 3, 3, 3), "classifier.0.weight": (16, 8)}
BIASES = {"features.0.bias": (4,), "classifier.0.bias": (16,)}
ROUNDS = 3  # 0, 1, 2
EPOCHS = 4
STEPS_PER_EPOCH = 15
T_975 = {1: 12.7062, 2: 4.3027, 3: 3.1824, 10: 2.2281, 30: 2.0423, 100: 1.9840}  # Student-t tables


def _config_toml(criterion: str, seed: int, *, model: str = "seed-cnn", scope: str = "global", fraction: float = 0.1) -> str:
    return f'''name = "hand-{criterion}"
model = "{model}"
seed = {seed}
rewind = "init"
device = "cpu"

[data]
train_size = 300
val_size = 100
test_size = 200

[train]
initial_epochs = {EPOCHS}
epochs = {EPOCHS}
eval_every = "epoch"
batch_size = 20
lr = 0.001

[prune]
criterion = "{criterion}"
fraction = {fraction}
rounds = {ROUNDS - 1}
scope = "{scope}"
'''


def _save(path: Path, tensors: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))


def make_run(run_dir: Path, criterion: str, seed: int, *, rounds: int = ROUNDS, **config) -> Path:
    """A complete run directory with deterministic but seed/criterion-dependent numbers."""
    rng = np.random.default_rng([seed, len(criterion), sum(map(ord, criterion))])
    run = RunDir(run_dir)
    run_dir.mkdir(parents=True)
    run.config.write_text(_config_toml(criterion, seed, **config))
    total = sum(math.prod(s) for s in SHAPES.values())
    masks = {n: np.ones(s, dtype=bool) for n, s in SHAPES.items()}
    _save(run.init, {n: rng.normal(size=s).astype(np.float32) for n, s in {**SHAPES, **BIASES}.items()})
    rows, metrics = [], []
    for r in range(rounds):
        pruned = 0
        if r >= 1:  # prune 20% of each tensor's active weights at random positions
            for m in masks.values():
                drop = rng.choice(np.flatnonzero(m), size=round(0.2 * m.sum()), replace=False)
                m.reshape(-1)[drop] = False
                pruned += drop.size
        remaining = sum(int(m.sum()) for m in masks.values())
        best = {n: rng.normal(size=s).astype(np.float32) for n, s in {**SHAPES, **BIASES}.items()}
        final = {n: (v + rng.normal(scale=0.1, size=v.shape)).astype(np.float32) for n, v in best.items()}
        for n, m in masks.items():
            best[n] *= m
            final[n] *= m
        _save(run.best(r), best)
        _save(run.final(r), final)
        _save(run.mask(r), {n: m.copy() for n, m in masks.items()})
        val = [2.0 - 0.1 * e + 0.05 * max(0, e - 2) ** 2 + 0.01 * r for e in range(1, EPOCHS + 1)]
        best_epoch = int(np.argmin(val)) + 1
        metrics += [{"round": r, "epoch": e, "step": e * STEPS_PER_EPOCH, "train_loss": v, "train_acc": 0.3, "val_loss": v,
                     "val_acc": 0.3, "seconds": 1.0} for e, v in enumerate(val, start=1)]
        row = {
            "round": r, "criterion": "none" if r == 0 else criterion, "rewind": "none" if r == 0 else "init",
            "pruning_skipped": False, "pruned": pruned, "weights_remaining": remaining, "weights_prunable": total,
            "remaining_pct": 100 * remaining / total, "best_epoch": best_epoch, "best_step": best_epoch * STEPS_PER_EPOCH,
            "best_val_loss": min(val), "best_val_acc": 0.3, "final_val_loss": val[-1], "final_val_acc": 0.28,
            "test_acc_best": round(float(rng.uniform(0.4, 0.6)), 4), "test_acc_final": round(float(rng.uniform(0.3, 0.5)), 4),
            "test_loss_best": 1.5, "test_loss_final": 1.7, "seconds": 2.0,
        }
        rows.append(row | {f"density/{n}": float(m.mean()) for n, m in masks.items()})
    with open(run.rounds, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    run.metrics.write_text("".join(json.dumps(m) + "\n" for m in metrics))
    run.manifest.write_text(json.dumps({"seeds": {"seed": seed}, "prunable": list(SHAPES)}))
    return run_dir


def _rows(run_dir: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(RunDir(run_dir).rounds.read_text().splitlines()))


def _load(run_dir: Path) -> report.Run:
    return report.load_run(RunDir(run_dir))


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study")
    for criterion in ("magnitude", "high-movement"):
        for seed in (0, 1):
            make_run(root / criterion / f"seed-{seed}", criterion, seed)
    # Broken runs: no rounds.csv; header only; a torn last line; an unknown config key.
    RunDir(make_run(root / "broken" / "no-rounds", "random", 0)).rounds.unlink()
    header_only = RunDir(make_run(root / "broken" / "header-only", "random", 1)).rounds
    header_only.write_text(header_only.read_text().splitlines()[0] + "\n")
    torn = RunDir(make_run(root / "broken" / "torn", "random", 2)).rounds
    torn.write_text(torn.read_text()[:-40])
    bad_config = RunDir(make_run(root / "broken" / "bad-config", "random", 3)).config
    bad_config.write_text(bad_config.read_text() + "colour = 3\n")
    return root


@pytest.fixture(scope="module")
def built(study) -> Path:
    return report.write_report([study])


def test_report_files_exist_and_are_nonempty(built, study):
    assert built == study / "report"
    for name in ("accuracy_vs_remaining.png", "early_stop_vs_remaining.png", "val_loss_curves.png", "layer_density.png",
                 "mask_agreement.png", "scores_round_02.png"):
        data = (built / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000, name
    for name in ("report.md", "summary.csv", "comparison.csv", "mask_agreement.csv"):
        assert (built / name).stat().st_size > 0, name
    assert not list(built.glob(".*"))  # atomic writes leave no temporary files
    md = (built / "report.md").read_text()
    for name in ("accuracy_vs_remaining.png", "scores_round_02.png", "mask_agreement.png"):
        assert f"]({name})" in md
    for section in ("## Groups", "## Results per round", "### magnitude / init", "## Dense baseline and best round",
                    "## Paired comparison", "## Mask agreement", "## Energy", "## Figures"):
        assert section in md, section
    assert "paired over seeds: mean difference of test accuracy (early stopping) with a 95% Student-t CI, and an exact two-sided sign test" in md
    assert "Read 4 runs in 2 groups" in md
    assert "not recorded" in md  # no energy columns
    assert "incomplete" not in md and "Left out" not in md


def test_broken_runs_are_skipped_and_reported(built, study):
    md = (built / "report.md").read_text()
    assert "Skipped 4" in md
    assert f"{study / 'broken' / 'no-rounds'}: no round completed yet" in md
    assert f"{study / 'broken' / 'header-only'}: no round completed yet" in md
    assert f"{RunDir(study / 'broken' / 'torn').rounds}: line" in md and "truncated" in md
    assert "bad-config" in md and "colour" in md
    assert "Traceback" not in md
    summary = pd.read_csv(built / "summary.csv")
    assert set(summary["group"]) == {"high-movement / init", "magnitude / init"}


def test_summary_numbers_equal_the_inputs(built, study):
    summary = pd.read_csv(built / "summary.csv")
    assert len(summary) == 2 * ROUNDS
    for criterion in ("high-movement", "magnitude"):
        tables = [_rows(study / criterion / f"seed-{s}") for s in (0, 1)]
        for r in range(ROUNDS):
            row = summary[(summary["group"] == f"{criterion} / init") & (summary["round"] == r)].iloc[0]
            assert row["n_seeds"] == 2
            for col in ("test_acc_best", "test_acc_final"):
                values = [float(t[r][col]) for t in tables]
                assert row[f"{col}_mean"] == pytest.approx(statistics.mean(values))
                assert row[f"{col}_std"] == pytest.approx(statistics.stdev(values))
                assert row[f"{col}_min"] == pytest.approx(min(values))
                assert row[f"{col}_max"] == pytest.approx(max(values))
            for col in ("remaining_pct", "best_step", "best_val_loss"):
                assert row[f"{col}_mean" if col != "remaining_pct" else col] == pytest.approx(statistics.mean(float(t[r][col]) for t in tables))


def test_comparison_pairs_by_seed(built, study):
    comp = pd.read_csv(built / "comparison.csv")
    assert set(comp["baseline"]) == {"high-movement / init"}  # the seed's criterion is the default baseline
    assert set(comp["group"]) == {"magnitude / init"} and list(comp["round"]) == [0, 1, 2]
    for _, row in comp.iterrows():
        a = [float(_rows(study / "magnitude" / f"seed-{s}")[row["round"]]["test_acc_best"]) for s in (0, 1)]
        b = [float(_rows(study / "high-movement" / f"seed-{s}")[row["round"]]["test_acc_best"]) for s in (0, 1)]
        d = [x - y for x, y in zip(a, b)]
        half = T_975[1] * statistics.stdev(d) / math.sqrt(2)
        assert row["n"] == 2
        assert row["mean_diff"] == pytest.approx(statistics.mean(d))
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((statistics.mean(d) - half, statistics.mean(d) + half), rel=1e-4)
        assert row["sign_p"] == pytest.approx(1.0 if d[0] * d[1] < 0 else 0.5)


def test_cli_baseline_chooses_the_group_paired_with(study, tmp_path):
    """`lth report --baseline GROUP` pairs the others with GROUP; an unknown one is one line, exit 2, nothing written."""
    def lth_report(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "lth", "report", str(study), *args], capture_output=True, text=True, timeout=300)

    proc = lth_report("--out", str(tmp_path / "by-magnitude"), "--baseline", "magnitude / init")
    assert proc.returncode == 0, proc.stderr
    comp = pd.read_csv(tmp_path / "by-magnitude" / "comparison.csv")
    assert set(comp["baseline"]) == {"magnitude / init"} and set(comp["group"]) == {"high-movement / init"}
    bad = lth_report("--out", str(tmp_path / "nope"), "--baseline", "nope")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "lth: error: baseline 'nope' is not a group; groups: high-movement / init, magnitude / init"], bad.stderr
    assert not (tmp_path / "nope").exists()


def test_pairs_are_formed_only_at_equal_density(study, tmp_path):
    """A seed whose arm skipped a round (best == final) sits at another density from then on:
    its rounds are not paired with the baseline's, and the report says how many were left out."""
    study2 = tmp_path / "study"
    shutil.copytree(study, study2, ignore=shutil.ignore_patterns("broken", "report"))
    skipped = RunDir(study2 / "magnitude" / "seed-1").rounds  # seed 1's round 1 kept every weight: 2 at 80% from then on
    rows = list(csv.DictReader(skipped.read_text().splitlines()))
    for row in rows[1:]:
        row["weights_remaining"] = str(int(int(row["weights_remaining"]) / 0.8))
    with open(skipped, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out = report.write_report([study2])
    comp = pd.read_csv(out / "comparison.csv")
    assert list(comp["n"]) == [2, 1, 1] and list(comp["dropped"]) == [0, 1, 1]
    for _, row in comp[comp["round"] > 0].iterrows():  # the pair left is seed 0's, at equal density
        a = float(_rows(study2 / "magnitude" / "seed-0")[row["round"]]["test_acc_best"])
        b = float(_rows(study2 / "high-movement" / "seed-0")[row["round"]]["test_acc_best"])
        assert row["mean_diff"] == pytest.approx(a - b)
    text = (out / "report.md").read_text()
    assert "2 pairs of a seed's rounds left out" in text and "magnitude / init round 1: 1; magnitude / init round 2: 1" in text


def test_mask_agreement_csv_matches_masks(built, study):
    agree = pd.read_csv(built / "mask_agreement.csv")
    row = agree[(agree["seed"] == 1) & (agree["round"] == 2) & (agree["layer"] == "all")].iloc[0]
    ma, mb = (load_file(str(RunDir(study / row[g].split(" /")[0] / "seed-1").mask(2))) for g in ("group_a", "group_b"))
    assert row["jaccard"] == pytest.approx(report.mask_jaccard(ma, mb)["all"])
    assert 0 < row["jaccard"] < 1 and 0 < row["chance"] < 1


def test_mask_jaccard():
    a = {"x": np.array([1, 1, 0, 0], bool), "y": np.array([[1, 1]], bool), "z": np.zeros(3, bool)}
    b = {"x": np.array([1, 0, 1, 0], bool), "y": np.array([[1, 1]], bool), "z": np.zeros(3, bool)}
    assert report.mask_jaccard(a, a) == {"x": 1.0, "y": 1.0, "z": 1.0, "all": 1.0}
    j = report.mask_jaccard(a, b)
    assert j["x"] == pytest.approx(1 / 3) and j["y"] == 1.0 and j["z"] == 1.0  # empty union → 1
    assert j["all"] == pytest.approx((1 + 2) / (3 + 2))
    with pytest.raises(ValueError):
        report.mask_jaccard(a, {"x": np.ones(5, bool)})


def test_paired_comparison_known_values():
    res = report.paired_comparison([1, 2, 3, 4], [0, 1, 1, 2])  # differences 1, 1, 2, 2
    assert res["n"] == 4 and res["mean_diff"] == pytest.approx(1.5)
    half = 3.182446 * math.sqrt(1 / 3) / 2  # t_{0.975,3} · s / √n, s = √(1/3)
    assert res["ci"] == pytest.approx((1.5 - half, 1.5 + half), abs=1e-5)
    assert res["sign_p"] == pytest.approx(0.125)  # 4 of 4 positive: 2 · (1/2)^4
    assert report.paired_comparison([1.0], [0.5])["ci"] is None
    assert report.paired_comparison([1, 0, -1, 1], [0, 0, 0, 0])["sign_p"] == pytest.approx(1.0)  # tie dropped: 2+ 1−
    assert report.paired_comparison([1] * 10, [0] * 10)["sign_p"] == pytest.approx(2 / 1024)
    assert report.paired_comparison([1, 2, 3, 4, 5, 6, 7], [0] * 7)["sign_p"] == pytest.approx(2 / 128)
    assert report.paired_comparison([1, 1, 1, 1, 1, 1, 1, -1], [0] * 8)["sign_p"] == pytest.approx(2 * 9 / 256)  # P(≤1 of 8) twice
    assert report.paired_comparison([0, 0], [0, 0])["sign_p"] == 1.0
    assert report.paired_comparison([1, np.nan], [0, 0])["n"] == 1


@pytest.mark.parametrize("df", sorted(T_975))
def test_ci_uses_student_t_quantiles(df):
    d = np.arange(df + 1, dtype=float)
    res = report.paired_comparison(d, np.zeros_like(d))
    half = T_975[df] * statistics.stdev(d) / math.sqrt(df + 1)
    assert res["ci"] == pytest.approx((d.mean() - half, d.mean() + half), rel=1e-4)


def test_group_label_and_grouping(tmp_path):
    assert report.group_label(Config(seed=3)) == "high-movement / init"
    cfg = Config(model="conv4", prune=PruneConfig(criterion="magnitude", scope="layer"))
    assert report.group_label(cfg, with_model=True) == "magnitude(layer) / init · conv4"
    assert report.group_label(Config(prune=PruneConfig(criterion="random", match="s/high-movement_init/seed-0"))) == "random(matched) / init"

    runs = [_load(make_run(tmp_path / f"a{s}", "magnitude", s)) for s in (0, 1)]
    runs.append(_load(make_run(tmp_path / "b0", "magnitude", 0, model="conv4")))
    runs.append(_load(make_run(tmp_path / "c0", "magnitude", 0, fraction=0.2)))
    groups = report.group_runs(runs)
    assert set(groups) == {"magnitude / init · seed-cnn · fraction=0.1", "magnitude / init · conv4",
                           "magnitude / init · seed-cnn · fraction=0.2"}
    assert [r.seed for r in groups["magnitude / init · seed-cnn · fraction=0.1"]] == [0, 1]
    assert not any("seed 0" in label or "seed=" in label for label in groups)
    # The same model everywhere: not named. Execution settings (device) do not split a group.
    assert list(report.group_runs(runs[:2])) == ["magnitude / init"]
    moved = replace(runs[1], config=replace(runs[1].config, device="cuda"))
    assert list(report.group_runs([runs[0], moved])) == ["magnitude / init"]
    # Matched random tickets copy their own seed's run (`<study>/<variant>/seed-<s>`): still one group.
    matched = []
    for s in (0, 1):
        run_dir = make_run(tmp_path / "random" / f"seed-{s}", "random", s)
        with open(RunDir(run_dir).config, "a") as f:
            f.write(f'match = "{tmp_path}/high-movement_init/seed-{s}"\n')
        matched.append(_load(run_dir))
    assert {k: [r.seed for r in v] for k, v in report.group_runs(matched).items()} == {"random(matched) / init": [0, 1]}


def test_load_errors_name_the_path(tmp_path):
    with pytest.raises(ReportError, match="config") as e:
        report.load_run(RunDir(tmp_path))
    assert str(tmp_path) in str(e.value)
    run = RunDir(make_run(tmp_path / "r", "magnitude", 0))
    run.rounds.write_text("round,remaining_pct,test_acc_best,test_acc_final\n0,100,abc,0.5\n")
    with pytest.raises(ReportError, match="non-numeric") as e:
        report.load_run(run)
    assert str(run.rounds) in str(e.value) and "\n" not in str(e.value)
    runs, skipped = report.read_runs([tmp_path / "missing", run.root])
    assert runs == [] and len(skipped) == 2 and "does not exist" in skipped[0]
    with pytest.raises(ReportError, match="no readable lth runs"):
        report.write_report([run.root])


def test_incomplete_runs_are_marked_and_repeats_left_out(tmp_path):
    make_run(tmp_path / "a" / "seed-0", "magnitude", 0)
    make_run(tmp_path / "a" / "seed-1", "magnitude", 1, rounds=2)
    shutil.copytree(tmp_path / "a" / "seed-1", tmp_path / "b" / "seed-1")  # the same config and seed again
    md = (report.write_report([tmp_path]) / "report.md").read_text()
    assert f"seed 1: `{tmp_path / 'a' / 'seed-1'}` — **incomplete**: rounds 0 to 1 of 0 to {ROUNDS - 1} done" in md
    assert "Left out 1:" in md and "a repeat, not a replicate" in md
    assert "Read 2 runs in 1 group from" in md and "One group only; nothing to compare." in md
    assert "](scores_round_02.png)" in md  # the group's first run (seed 0) has round 2


@pytest.mark.parametrize("criterion", ["random", "magnitude", "high-movement"])
def test_score_histograms_draw_the_runs_own_criterion(tmp_path, criterion):
    """Round 1's mask redone with the criterion itself (and, for random, the study's seeded draw):
    the histogram must then separate pruned from kept at one score."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file as load_torch

    from lth.pruning import CRITERIA, next_masks, prune_counts
    from lth.seeds import prune_seed

    run = RunDir(make_run(tmp_path / "r", criterion, 5))
    best, final, init, mask0 = (load_torch(str(p)) for p in (run.best(0), run.final(0), run.init, run.mask(0)))
    names = list(SHAPES)
    mask0 = {n: mask0[n].to(torch.bool) for n in names}
    masks = next_masks(criterion, best, final, init, mask0, prune_counts(mask0, names, None, 0.3), prune_seed(5, 1))
    save_file({n: m.numpy() for n, m in masks.items()}, str(run.mask(1)))
    h = report.score_histograms(report.load_run(run), 1)
    assert set(h["criterion"]) == {criterion} and set(h["score_label"]) == {CRITERIA[criterion].label}
    score = h[h["quantity"] == "score"].reset_index(drop=True)
    bins = {s: score.index[(score["subset"] == s) & (score["count"] > 0)] % (len(score) // 2) for s in ("kept", "pruned")}
    low, high = ("kept", "pruned") if CRITERIA[criterion].prunes == "largest" else ("pruned", "kept")
    assert bins[low].max() <= bins[high].min()
    assert score["count"].sum() == sum(math.prod(s) for s in SHAPES.values())  # every weight was active in round 0


def test_every_criterion_labels_its_score():
    from lth.pruning import CRITERIA

    assert all(c.label and "\n" not in c.label for c in CRITERIA.values())


def test_remaining_axis_ticks_are_plain_and_reversed():
    ax = Figure().subplots()
    figures.remaining_axis(ax, [100, 50, 20, 8, 2.1])
    left, right = ax.get_xlim()
    assert left > right  # 100 on the left, as in Frankle & Carbin
    assert list(ax.get_xticks()) == [100, 50, 20, 10, 5, 2]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["100", "50", "20", "10", "5", "2"]


def test_import_does_not_load_torch_or_training_code():
    code = ("import lth.report, sys; bad = [m for m in ('torch', 'lth.pruning', 'lth.train', 'lth.experiment', 'lth.models', 'lth.data') "
            "if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_energy_columns_are_summed_per_group(tmp_path):
    run_dir = make_run(tmp_path / "e", "high-movement", 0)
    rounds_csv = RunDir(run_dir).rounds
    rounds = pd.read_csv(rounds_csv)
    rounds["energy_kwh"] = [0.5, 0.25, 0.25]
    rounds["co2_kg"] = [0.1, 0.05, 0.05]
    rounds["energy_method"] = "codecarbon"
    rounds.to_csv(rounds_csv, index=False)
    out = report.write_report([run_dir])
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["energy_kwh_mean"]) == [0.5, 0.25, 0.25]
    md = (out / "report.md").read_text()
    assert "| high-movement / init | 1 | 1.0000 | 0.2000 | codecarbon |" in md
    assert "## Mask agreement" in md
    # Not measurable on this machine: the method is reported instead of numbers.
    rounds["energy_kwh"] = ""
    rounds["co2_kg"] = ""
    rounds["energy_method"] = "not measurable: no power counters"
    rounds.to_csv(rounds_csv, index=False)
    md = (report.write_report([run_dir]) / "report.md").read_text()
    assert "| high-movement / init | 1 | – | – | not measurable: no power counters |" in md
    assert "Not drawn: one group only" in md
