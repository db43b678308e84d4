"""Plots and tables from run directories alone (DESIGN §4 `report`, §5 the run-directory contract).

Reads only what a run directory promises: `config.toml`, `rounds.csv`, `metrics.jsonl` and the
safetensors checkpoints (with `safetensors.numpy`). It never imports torch or the training code,
so a report can be drawn on any machine from copied run directories.

Runs that differ only in their seed form a *group* (a criterion × rewind × config cell); every
number is a mean over the group's seeds with its spread. Groups are compared round by round,
paired over seeds: the mean difference of test accuracy at early stopping with a 95% Student-t
confidence interval, and an exact two-sided sign test.

    write_report([Path("runs/cmp")])          # -> runs/cmp/report/{report.md, *.png, *.csv}
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "ReportError",
    "RunData",
    "load_run",
    "find_runs",
    "group_label",
    "group_runs",
    "summary_table",
    "paired_comparison",
    "compare_groups",
    "mask_jaccard",
    "mask_agreement",
    "t_quantile",
    "sign_test",
    "write_report",
]


class ReportError(ValueError):
    """A run directory that cannot be read (missing or half-written files); one line."""


# --------------------------------------------------------------------------------------------
# Reading the contract


@dataclass(frozen=True, eq=False)
class RunData:
    """One run directory, read back. `rounds` has one row per completed round, sorted;
    `metrics` one row per evaluation (may be empty); `label` is the run's group label plus
    its seed, for messages."""

    path: Path
    config: dict
    rounds: pd.DataFrame
    metrics: pd.DataFrame
    label: str
    seed: int


REQUIRED_COLUMNS = ("round", "remaining_pct", "test_acc_best", "test_acc_final")
TEXT_COLUMNS = ("criterion", "rewind", "energy_method")
# Markers of a run directory: a dir holding any of these is read as a run (and reported if broken).
RUN_MARKERS = ("config.toml", "rounds.csv", "manifest.json")
NOT_RUNS = ("checkpoints", "report")
DEFAULT_TRAIN_SIZE = 45_000  # DESIGN §1: the training split when data.train_size is omitted


def load_run(path: str | os.PathLike) -> RunData:
    """Read one run directory; raise `ReportError` naming the path and what is missing."""
    path = Path(path)
    if not path.is_dir():
        raise ReportError(f"{path}: not a directory")
    config = _read_config(path)
    rounds = _read_rounds(path / "rounds.csv")
    rounds = _with_best_step(rounds, config)
    metrics = _read_metrics(path / "metrics.jsonl")
    seed = int(config.get("seed", 0))
    return RunData(path=path, config=config, rounds=rounds, metrics=metrics, label=f"{group_label(config)} · seed {seed}", seed=seed)


def _read_config(path: Path) -> dict:
    file = path / "config.toml"
    if not file.is_file():
        raise ReportError(f"{path}: no config.toml (not an lth run, or not started)")
    try:
        return tomllib.loads(file.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ReportError(f"{file}: unreadable TOML ({str(e).splitlines()[0]})") from None


def _read_rounds(file: Path) -> pd.DataFrame:
    """rounds.csv as a DataFrame, refusing a header-only, torn or non-numeric table."""
    if not file.is_file():
        raise ReportError(f"{file.parent}: no rounds.csv (no round completed yet)")
    try:
        rows = [row for row in csv.reader(io.StringIO(file.read_text())) if row]
    except (csv.Error, UnicodeDecodeError) as e:
        raise ReportError(f"{file}: unreadable CSV ({e})") from None
    if not rows:
        raise ReportError(f"{file}: empty file (no header)")
    header, body = rows[0], rows[1:]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ReportError(f"{file}: missing column(s) {', '.join(missing)}")
    for i, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise ReportError(f"{file}: line {i} has {len(row)} fields, the header {len(header)} (truncated?)")
    if not body:
        raise ReportError(f"{file}: zero rounds (header only)")
    df = pd.DataFrame(body, columns=header)
    for col in df.columns:
        if col in TEXT_COLUMNS:
            continue
        if col == "pruning_skipped":
            df[col] = df[col].str.strip().str.lower().map({"true": True, "false": False, "1": True, "0": False})
            continue
        raw = df[col].replace("", np.nan)
        values = pd.to_numeric(raw, errors="coerce")
        bad = values.isna() & (raw.notna() | (col in REQUIRED_COLUMNS))
        if bad.any() and col in REQUIRED_COLUMNS:
            raise ReportError(f"{file}: column {col} has a non-numeric value {df[col][bad].iloc[0]!r}")
        if not bad.any():  # a column of another kind (text) stays as it is
            df[col] = values
    if df["round"].duplicated().any() or (df["round"] % 1 != 0).any():
        raise ReportError(f"{file}: round numbers are not unique integers")
    df["round"] = df["round"].astype(int)
    return df.sort_values("round").reset_index(drop=True)


def _with_best_step(rounds: pd.DataFrame, config: dict) -> pd.DataFrame:
    """Older runs recorded only `best_epoch`; derive the iteration from the epoch size."""
    if "best_step" in rounds.columns or "best_epoch" not in rounds.columns:
        return rounds
    train, data = config.get("train", {}), config.get("data", {})
    n, batch = data.get("train_size", DEFAULT_TRAIN_SIZE), train.get("batch_size")
    if not batch or train.get("steps") is not None:
        return rounds
    rounds = rounds.copy()
    rounds["best_step"] = rounds["best_epoch"] * math.ceil(n / batch)
    return rounds


def _read_metrics(file: Path) -> pd.DataFrame:
    """metrics.jsonl; a torn last line (a crash mid-append) is dropped; a repeated
    evaluation (re-run after a resume) keeps its last line."""
    rows = []
    if file.is_file():
        for line in file.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty or "round" not in df.columns or "val_loss" not in df.columns:
        return pd.DataFrame(columns=["round", "epoch", "step", "val_loss", "val_acc"])
    key = ["round", "step"] if "step" in df.columns else ["round", "epoch"]
    return df.drop_duplicates(subset=key, keep="last").reset_index(drop=True)


def find_runs(paths: Sequence[str | os.PathLike]) -> tuple[list[RunData], list[str]]:
    """Runs under `paths` (each a run directory or a study directory holding runs up to 3
    levels down), and one message per path or run that could not be read."""
    runs: list[RunData] = []
    skipped: list[str] = []
    seen: set[Path] = set()
    for p in paths:
        p = Path(p)
        if not p.exists():
            skipped.append(f"{p}: does not exist")
            continue
        candidates = _run_dirs(p, depth=3)
        if not candidates:
            skipped.append(f"{p}: no lth runs found (no config.toml or rounds.csv within 3 levels)")
        for run_dir in candidates:
            if run_dir.resolve() in seen:
                continue
            seen.add(run_dir.resolve())
            try:
                runs.append(load_run(run_dir))
            except ReportError as e:
                skipped.append(str(e))
    return runs, skipped


def _run_dirs(path: Path, depth: int) -> list[Path]:
    if not path.is_dir():
        return []
    if any((path / m).is_file() for m in RUN_MARKERS):
        return [path]
    if depth == 0:
        return []
    found = []
    for child in sorted(path.iterdir()):
        if child.is_dir() and not child.name.startswith(".") and child.name not in NOT_RUNS:
            found += _run_dirs(child, depth - 1)
    return found


# --------------------------------------------------------------------------------------------
# Groups

CRITERION_ORDER = ("high-movement", "magnitude", "random", "low-movement", "movement-from-init", "magnitude-increase")
# Keys that do not change what a run measures: they never split a group.
IGNORED_KEYS = {"name", "seed", "device", "train.eval_batch_size"}
# Defaults of keys that older config.toml files omit, so old and new runs of one config group together.
DEFAULTS = {"train.eval_every": "epoch", "prune.scope": "global"}


def group_label(config: Mapping[str, Any], *, with_model: bool = False) -> str:
    """What a run is apart from its seed: criterion (with its scope when per layer, and
    "matched" for a random ticket copying another run's densities) / rewind point, e.g.
    "high-movement / init" or, `with_model`, "magnitude(layer) / init · conv4"."""
    prune = config.get("prune", {})
    criterion = prune.get("criterion", "high-movement")
    qualifiers = [prune["scope"]] if prune.get("scope", "global") != "global" else []
    qualifiers += ["matched"] if prune.get("match") else []
    if qualifiers:
        criterion += f"({', '.join(qualifiers)})"
    label = f"{criterion} / {config.get('rewind', 'init')}"
    if with_model:
        label += f" · {config.get('model', 'seed-cnn')}"
    return label


def _config_key(config: Mapping[str, Any]) -> tuple:
    flat = {**DEFAULTS, **_flatten(config)}
    if flat.get("prune.match"):
        # A matched random ticket copies the run of its own seed (`<study>/<variant>/seed-<s>`):
        # the seeds of one variant match one variant, so group by that variant, not the path.
        match = Path(str(flat["prune.match"]))
        flat["prune.match"] = match.parent.name if re.fullmatch(r"seed-\d+", match.name) else str(match)
    return tuple(sorted((k, repr(v)) for k, v in flat.items() if k not in IGNORED_KEYS and v is not None))


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def group_runs(runs: Sequence[RunData]) -> dict[str, list[RunData]]:
    """Runs with the same config apart from seed, name and device, keyed by a label: the
    model is named only if runs differ in it, and the other keys in which groups with one
    label differ are appended (e.g. "· fraction=0.2"). Seed high-movement first; runs in a
    group by seed."""
    cells: dict[tuple, list[RunData]] = {}
    for run in runs:
        cells.setdefault(_config_key(run.config), []).append(run)
    with_model = len({r.config.get("model", "seed-cnn") for r in runs}) > 1
    base = {key: group_label(rs[0].config, with_model=with_model) for key, rs in cells.items()}
    labels = {}
    for key, label in base.items():
        twins = [k for k, lab in base.items() if lab == label]
        labels[key] = label + _distinguishing(key, twins) if len(twins) > 1 else label

    def order(key: tuple) -> tuple:
        cfg = cells[key][0].config
        crit = cfg.get("prune", {}).get("criterion", "")
        rank = CRITERION_ORDER.index(crit) if crit in CRITERION_ORDER else len(CRITERION_ORDER)
        return (rank, labels[key])

    return {labels[k]: sorted(cells[k], key=lambda r: (r.seed, str(r.path))) for k in sorted(cells, key=order)}


def _distinguishing(key: tuple, twins: list[tuple]) -> str:
    """` · k=v` for each key in which this config differs from its same-label twins."""
    mine = dict(key)
    others = [dict(t) for t in twins if t != key]
    keys = sorted({k for o in others for k in set(o) | set(mine) if o.get(k) != mine.get(k)})
    parts = [f"{k.rsplit('.', 1)[-1]}={mine[k].strip(chr(39))}" for k in keys if k in mine]
    return "".join(f" · {p}" for p in parts) or " · (other config)"


def _criterion(runs: Sequence[RunData]) -> str:
    return runs[0].config.get("prune", {}).get("criterion", "high-movement")


def _dedupe_seeds(groups: dict[str, list[RunData]]) -> tuple[dict[str, list[RunData]], list[str]]:
    """One run per seed in a group, the one with the most rounds (the same config and seed
    twice would fake replicates)."""
    out, notes = {}, []
    for label, runs in groups.items():
        kept: dict[int, RunData] = {}
        for run in sorted(runs, key=lambda r: (-len(r.rounds), str(r.path))):
            if run.seed in kept:
                notes.append(f"{run.path}: same config and seed as {kept[run.seed].path}; left out (a repeat, not a replicate)")
            else:
                kept[run.seed] = run
        out[label] = sorted(kept.values(), key=lambda r: r.seed)
    return out, notes


# --------------------------------------------------------------------------------------------
# Numbers (pure)


def summary_table(groups: Mapping[str, Sequence[RunData]]) -> pd.DataFrame:
    """Per group and round: seeds, mean remaining %, test accuracy (fractions, as in
    rounds.csv) of the early-stopping and final weights as mean / sample std (ddof 1, NaN
    for one seed) / min / max, the early-stop iteration, best validation loss, pruning
    skips, and energy where recorded."""
    rows = []
    for label, runs in groups.items():
        table = pd.concat([r.rounds.assign(seed=r.seed) for r in runs], ignore_index=True)
        for rnd, g in table.groupby("round", sort=True):
            row: dict[str, Any] = {"group": label, "round": int(rnd), "n_seeds": int(g["seed"].nunique())}
            row["remaining_pct"] = g["remaining_pct"].mean()
            for col in ("test_acc_best", "test_acc_final"):
                row |= _spread(g[col], col)
            if "best_step" in g:
                row |= _spread(g["best_step"], "best_step")
            for col in ("best_epoch", "best_val_loss"):
                if col in g:
                    row[f"{col}_mean"] = g[col].mean()
            if "pruning_skipped" in g:
                row["pruning_skipped"] = int(g["pruning_skipped"].fillna(False).astype(bool).sum())
            for col in ("energy_kwh", "co2_kg"):
                if col in g and g[col].notna().any():
                    row[f"{col}_mean"] = g[col].mean()
            rows.append(row)
    return pd.DataFrame(rows)


def _spread(values: pd.Series, name: str) -> dict[str, float]:
    v = values.dropna().astype(float)
    std = v.std(ddof=1) if len(v) > 1 else float("nan")
    return {f"{name}_mean": v.mean(), f"{name}_std": std, f"{name}_min": v.min(), f"{name}_max": v.max()}


def t_quantile(p: float, df: int) -> float:
    """Quantile of Student's t with `df` degrees of freedom (p in (0.5, 1)), by bisection on
    its CDF (regularised incomplete beta); no scipy needed."""
    if not 0.5 < p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df >= 1, got p={p}, df={df}")
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def _t_cdf(t: float, df: int) -> float:
    x = df / (df + t * t)
    tail = 0.5 * _betainc(df / 2, 0.5, x)
    return 1 - tail if t >= 0 else tail


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) (continued fraction, Numerical Recipes §6.4)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1 - front * _betacf(b, a, 1 - x) / b


def _betacf(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)), -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + num * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return h


def sign_test(diffs: Sequence[float]) -> float:
    """Exact two-sided sign test p-value (binomial, p = 1/2); zero differences are dropped."""
    pos = sum(1 for d in diffs if d > 0)
    neg = sum(1 for d in diffs if d < 0)
    n = pos + neg
    if n == 0:
        return 1.0
    k = min(pos, neg)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def paired_comparison(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict:
    """Paired over seeds (a[i] and b[i] share a seed): n, mean of a − b, its Student-t
    confidence interval (`ci` = (low, high), None when n < 2), and the exact two-sided sign
    test p-value (`sign_p`, ties dropped). Pairs with a NaN are dropped."""
    if len(a) != len(b):
        raise ValueError(f"paired_comparison needs equal lengths, got {len(a)} and {len(b)}")
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    d = d[~np.isnan(d)]
    n = len(d)
    mean = float(d.mean()) if n else float("nan")
    ci = None
    if n >= 2:
        half = t_quantile(0.5 + confidence / 2, n - 1) * float(d.std(ddof=1)) / math.sqrt(n)
        ci = (mean - half, mean + half)
    return {"n": n, "mean_diff": mean, "ci": ci, "sign_p": sign_test(d.tolist()) if n else float("nan")}


def default_baseline(groups: Mapping[str, Sequence[RunData]]) -> str:
    """The seed's criterion (high-movement) if present, else the first group."""
    for label, runs in groups.items():
        if _criterion(runs) == "high-movement":
            return label
    return next(iter(groups))


def compare_groups(groups: Mapping[str, Sequence[RunData]], baseline: str | None = None, metric: str = "test_acc_best") -> pd.DataFrame:
    """Each group against the baseline group, round by round, paired by seed on `metric`."""
    columns = ["round", "group", "baseline", "n", "mean_diff", "ci_low", "ci_high", "sign_p", "remaining_pct", "baseline_remaining_pct"]
    if not groups:
        return pd.DataFrame(columns=columns)
    baseline = baseline or default_baseline(groups)
    if baseline not in groups:
        raise ValueError(f"baseline {baseline!r} is not a group; groups: {', '.join(groups)}")
    base = _by_seed_round(groups[baseline])
    rows = []
    for label, runs in groups.items():
        if label == baseline:
            continue
        other = _by_seed_round(runs)
        for rnd in sorted({r for _, r in base} & {r for _, r in other}):
            seeds = sorted({s for s, r in base if r == rnd} & {s for s, r in other if r == rnd})
            a = [other[(s, rnd)][metric] for s in seeds]
            b = [base[(s, rnd)][metric] for s in seeds]
            if not seeds:
                continue
            res = paired_comparison(a, b)
            ci = res["ci"] or (float("nan"), float("nan"))
            rows.append({
                "round": rnd, "group": label, "baseline": baseline, "n": res["n"], "mean_diff": res["mean_diff"],
                "ci_low": ci[0], "ci_high": ci[1], "sign_p": res["sign_p"],
                "remaining_pct": float(np.mean([other[(s, rnd)]["remaining_pct"] for s in seeds])),
                "baseline_remaining_pct": float(np.mean([base[(s, rnd)]["remaining_pct"] for s in seeds])),
            })
    return pd.DataFrame(rows, columns=columns)


def _by_seed_round(runs: Sequence[RunData]) -> dict[tuple[int, int], pd.Series]:
    out = {}
    for run in runs:
        for _, row in run.rounds.iterrows():
            out.setdefault((run.seed, int(row["round"])), row)
    return out


def mask_jaccard(mask_a: Mapping[str, np.ndarray], mask_b: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Per tensor (those in both), |kept_a ∩ kept_b| / |kept_a ∪ kept_b| (1.0 when both keep
    nothing), and "all" over every shared tensor together."""
    out: dict[str, float] = {}
    inter_all = union_all = 0
    for name in mask_a:
        if name not in mask_b:
            continue
        a, b = np.asarray(mask_a[name]).astype(bool), np.asarray(mask_b[name]).astype(bool)
        if a.shape != b.shape:
            raise ValueError(f"mask {name}: shapes differ {a.shape} vs {b.shape}")
        inter, union = int(np.count_nonzero(a & b)), int(np.count_nonzero(a | b))
        out[name] = inter / union if union else 1.0
        inter_all, union_all = inter_all + inter, union_all + union
    out["all"] = inter_all / union_all if union_all else 1.0
    return out


def _chance_jaccard(da: float, db: float) -> float:
    """Expected Jaccard of two independent random masks with densities da and db:
    E|A∩B| = n·da·db and E|A∪B| = n·(da + db − da·db)."""
    union = da + db - da * db
    return da * db / union if union else 1.0


# --------------------------------------------------------------------------------------------
# Tables drawn from checkpoints


def _checkpoint(run: RunData, rnd: int, kind: str) -> Path:
    return run.path / "checkpoints" / f"round_{rnd:02d}" / f"{kind}.safetensors"


def _load(file: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(file))


def mask_agreement(groups: Mapping[str, Sequence[RunData]]) -> pd.DataFrame:
    """Jaccard of kept weights between every two groups, per seed they share, round (≥ 1,
    completed in both, masks present) and tensor ("all" = every tensor together), with the
    value two independent random masks of the same densities would give."""
    rows = []
    labels = list(groups)
    cache: dict[Path, dict[str, np.ndarray]] = {}

    def mask(run: RunData, rnd: int) -> dict[str, np.ndarray] | None:
        file = _checkpoint(run, rnd, "mask")
        if file not in cache:
            try:
                cache[file] = _load(file) if file.is_file() else None
            except Exception:  # a torn or foreign file: no agreement for that round
                cache[file] = None
        return cache[file]

    for i, ga in enumerate(labels):
        for gb in labels[i + 1:]:
            runs_a, runs_b = {r.seed: r for r in groups[ga]}, {r.seed: r for r in groups[gb]}
            for seed in sorted(set(runs_a) & set(runs_b)):
                ra, rb = runs_a[seed], runs_b[seed]
                for rnd in sorted(set(ra.rounds["round"]) & set(rb.rounds["round"])):
                    ma, mb = (mask(ra, rnd), mask(rb, rnd)) if rnd >= 1 else (None, None)
                    if ma is None or mb is None:
                        continue
                    jac = mask_jaccard(ma, mb)
                    names = [n for n in jac if n != "all"]
                    dens = {n: (ma[n].mean(), mb[n].mean()) for n in names}
                    size = {n: ma[n].size for n in names}
                    total = sum(size.values()) or 1
                    dens["all"] = (sum(dens[n][0] * size[n] for n in names) / total, sum(dens[n][1] * size[n] for n in names) / total)
                    for name, value in jac.items():
                        da, db = dens[name]
                        rows.append({"group_a": ga, "group_b": gb, "seed": seed, "round": int(rnd), "layer": name,
                                     "jaccard": value, "density_a": float(da), "density_b": float(db),
                                     "chance": _chance_jaccard(float(da), float(db))})
    return pd.DataFrame(rows, columns=["group_a", "group_b", "seed", "round", "layer", "jaccard", "density_a", "density_b", "chance"])


def score_rounds(run: RunData) -> list[int]:
    """Rounds r ≥ 1 (completed) whose mask and round r−1's best and final weights exist."""
    done = set(run.rounds["round"])
    return [r for r in sorted(done) if r >= 1 and r - 1 in done and _checkpoint(run, r, "mask").is_file()
            and _checkpoint(run, r - 1, "best").is_file() and _checkpoint(run, r - 1, "final").is_file()]


def score_histograms(run: RunData, rnd: int, bins: int = 60) -> pd.DataFrame:
    """Histograms for pruning round `rnd` of one run: the movement score |w_best − w_final|
    of round rnd−1 over its active weights, and round rnd−1's final weight values, each split
    into weights pruned at `rnd` and weights kept. Columns: quantity, subset, left, right, count."""
    prev_mask = _load(_checkpoint(run, rnd - 1, "mask"))
    mask, best, final = _load(_checkpoint(run, rnd, "mask")), _load(_checkpoint(run, rnd - 1, "best")), _load(_checkpoint(run, rnd - 1, "final"))
    names = [n for n in mask if n in prev_mask and n in best and n in final]
    active = np.concatenate([prev_mask[n].astype(bool).ravel() for n in names])
    kept = np.concatenate([mask[n].astype(bool).ravel() for n in names])[active]
    w_best = np.concatenate([best[n].ravel() for n in names])[active].astype(np.float64)
    w_final = np.concatenate([final[n].ravel() for n in names])[active].astype(np.float64)
    rows = []
    for quantity, values in (("score", np.abs(w_best - w_final)), ("final_weight", w_final)):
        edges = np.histogram_bin_edges(values, bins=bins) if values.size else np.linspace(0, 1, bins + 1)
        for subset, sel in (("kept", kept), ("pruned", ~kept)):
            counts, _ = np.histogram(values[sel], bins=edges)
            rows += [{"quantity": quantity, "subset": subset, "left": lo, "right": hi, "count": int(c)} for lo, hi, c in zip(edges[:-1], edges[1:], counts)]
    return pd.DataFrame(rows)


def density_table(groups: Mapping[str, Sequence[RunData]]) -> pd.DataFrame:
    """Per-tensor density (%) per round from rounds.csv, the first seed of each group."""
    rows = []
    for label, runs in groups.items():
        rounds = runs[0].rounds
        for col in [c for c in rounds.columns if c.startswith("density/")]:
            for rnd, value in zip(rounds["round"], rounds[col]):
                rows.append({"group": label, "round": int(rnd), "tensor": col.split("/", 1)[1], "density_pct": 100 * value})
    return pd.DataFrame(rows, columns=["group", "round", "tensor", "density_pct"])


def curves_table(groups: Mapping[str, Sequence[RunData]]) -> pd.DataFrame:
    """Validation loss per evaluation of the completed rounds, the first seed of each group;
    x is the epoch, or the iteration when the run evaluates every N iterations or counts steps."""
    rows = []
    for label, runs in groups.items():
        run = runs[0]
        m = run.metrics
        if m.empty:
            continue
        train = run.config.get("train", {})
        by_step = "step" in m.columns and (train.get("steps") is not None or str(train.get("eval_every", "epoch")) != "epoch")
        xcol = "step" if by_step else "epoch"
        m = m[m["round"].isin(set(run.rounds["round"]))]
        rows.append(pd.DataFrame({"group": label, "round": m["round"].astype(int), "x": m[xcol].astype(float),
                                  "x_unit": "iteration" if by_step else "epoch", "val_loss": m["val_loss"].astype(float)}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["group", "round", "x", "x_unit", "val_loss"])


# --------------------------------------------------------------------------------------------
# Figures (each takes DataFrames and a path)

STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "xtick.labelsize": 9, "ytick.labelsize": 9,
         "legend.fontsize": 9, "figure.dpi": 100, "savefig.dpi": 150, "axes.grid": True, "grid.alpha": 0.3}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
TICK_SETS = ((100, 50, 20, 10, 5, 2, 1, 0.5, 0.2, 0.1),
             (100, 70, 50, 30, 20, 10, 7, 5, 3, 2, 1, 0.7, 0.5, 0.3, 0.2, 0.1),
             (100, 90, 80, 70, 60, 50, 40, 30, 20, 15, 10, 7, 5, 4, 3, 2, 1.5, 1, 0.7, 0.5, 0.3, 0.2, 0.1))


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(labels: Sequence[str]) -> dict[str, Any]:
    cmap = _plt().get_cmap("tab10" if len(labels) <= 10 else "tab20")
    return {label: cmap(i % cmap.N) for i, label in enumerate(labels)}


def _remaining_axis(ax, values: Sequence[float]) -> None:
    """Frankle & Carbin's x axis: weights remaining (%), log scale, reversed, plain ticks."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    vals = [v for v in values if v > 0 and math.isfinite(v)] or [100.0]
    left, right = max(vals) * 1.06, min(vals) / 1.06
    ax.set_xscale("log")
    ax.set_xlim(left, right)
    for ticks in TICK_SETS:
        inside = [t for t in ticks if right <= t <= left]
        if len(inside) >= 4:
            break
    ax.xaxis.set_major_locator(FixedLocator(inside))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("weights remaining (%)")


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format=path.suffix.lstrip("."))
    os.replace(tmp, path)
    _plt().close(fig)


def plot_vs_remaining(summary: pd.DataFrame, path: Path, *, kind: str) -> None:
    """`kind` "accuracy": test accuracy (%) of early-stopping (solid) and final (dashed)
    weights; "early_stop": the early-stop iteration. Mean over seeds, min–max band."""
    plt = _plt()
    from matplotlib.lines import Line2D

    series = ([("test_acc_best", "-", 100.0), ("test_acc_final", "--", 100.0)] if kind == "accuracy"
              else [("best_step", "-", 1.0)])
    colors = _colors(list(dict.fromkeys(summary["group"])))
    markers = dict(zip(colors, itertools.cycle(MARKERS)))  # groups stay apart where lines coincide, and in grey print
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.5, 4.2), layout="constrained")
        for label, g in summary.groupby("group", sort=False):
            g = g.sort_values("round")
            for col, ls, scale in series:
                if f"{col}_mean" not in g:
                    continue
                x = g["remaining_pct"]
                ax.plot(x, scale * g[f"{col}_mean"], ls, color=colors[label], marker=markers[label], ms=4, lw=1.5, alpha=0.9)
                if (g["n_seeds"] > 1).any():
                    ax.fill_between(x, scale * g[f"{col}_min"], scale * g[f"{col}_max"], color=colors[label],
                                    alpha=0.18 if ls == "-" else 0.08, lw=0)
        _remaining_axis(ax, summary["remaining_pct"])
        handles = [Line2D([], [], color=c, lw=2, marker=markers[label], ms=5) for label, c in colors.items()]
        names = list(colors)
        if kind == "accuracy":
            ax.set_ylabel("test accuracy (%)")
            ax.set_title("Test accuracy vs weights remaining")
            handles += [Line2D([], [], color="0.3", ls="-"), Line2D([], [], color="0.3", ls="--")]
            names += ["early-stopping weights", "final weights"]
        else:
            ax.set_ylabel("early-stop iteration (steps)")
            ax.set_title("Early-stopping iteration (min. validation loss) vs weights remaining")
        multi = (summary["n_seeds"] > 1).any()
        if multi:
            handles.append(plt.Rectangle((0, 0), 1, 1, color="0.5", alpha=0.3, lw=0))
            names.append("min–max over seeds")
        fig.legend(handles, names, loc="outside lower center", ncol=2 if len(names) > 3 else len(names), frameon=False)
        _save(fig, path)


def _grid(n: int, height: float = 2.6):
    """Small multiples, two a row, one y scale for all (panels compare by eye)."""
    plt = _plt()
    cols = 1 if n == 1 else 2
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5, 0.8 + height * rows) if n > 1 else (6.5, 4), layout="constrained",
                             squeeze=False, sharey=True)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    for ax in axes.ravel()[:n]:
        ax.yaxis.set_tick_params(labelleft=True)
    return fig, axes.ravel()[:n]


def _wrap(label: str, width: int = 34) -> str:
    if len(label) <= width:
        return label
    cut = label.rfind(" ", 0, width)
    return label[:cut] + "\n" + label[cut + 1:] if cut > 0 else label


def plot_val_loss_curves(curves: pd.DataFrame, path: Path) -> None:
    """Validation loss per evaluation, one panel per group, colour = round, best marked."""
    plt = _plt()
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    labels = list(dict.fromkeys(curves["group"]))
    rounds = curves["round"]
    norm = Normalize(vmin=rounds.min(), vmax=max(rounds.max(), rounds.min() + 1))
    cmap = plt.get_cmap("viridis")
    with plt.rc_context(STYLE):
        fig, axes = _grid(len(labels))
        for ax, label in zip(axes, labels):
            g = curves[curves["group"] == label]
            for rnd, c in g.groupby("round"):
                c = c.sort_values("x")
                color = cmap(norm(rnd))
                ax.plot(c["x"], c["val_loss"], color=color, lw=1.2)
                best = c.loc[c["val_loss"].idxmin()]
                ax.plot(best["x"], best["val_loss"], "o", color=color, mec="black", mew=0.6, ms=4.5)
            ax.set_title(_wrap(label))
            ax.set_xlabel(g["x_unit"].iloc[0])
            ax.set_ylabel("validation loss")
        fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(axes), label="round", shrink=0.9,
                     ticks=sorted(set(int(r) for r in rounds)) if rounds.nunique() <= 16 else None)
        fig.suptitle("Validation loss per round (first seed; ● = lowest, the early-stopping point)")
        _save(fig, path)


def plot_layer_density(density: pd.DataFrame, path: Path) -> None:
    """Per-tensor density (%) per round, one panel per group (first seed)."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    labels = list(dict.fromkeys(density["group"]))
    tensors = list(dict.fromkeys(density["tensor"]))
    colors = _colors(tensors)
    with plt.rc_context(STYLE):
        fig, axes = _grid(len(labels))
        for ax, label in zip(axes, labels):
            g = density[density["group"] == label]
            for tensor, t in g.groupby("tensor", sort=False):
                ax.plot(t["round"], t["density_pct"], marker="o", ms=3, lw=1.3, color=colors[tensor])
            ax.set_title(_wrap(label))
            ax.set_xlabel("round")
            ax.set_ylabel("weights remaining (%)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        handles = [plt.Line2D([], [], color=colors[t], marker="o", ms=3) for t in tensors]
        fig.legend(handles, tensors, loc="outside lower center", ncol=3, frameon=False, title="tensor")
        fig.suptitle("Density of each pruned tensor per round (first seed)")
        _save(fig, path)


def plot_mask_agreement(agreement: pd.DataFrame, path: Path, tensor_order: Sequence[str] = ()) -> None:
    """Jaccard overlap of kept weights per tensor vs round, one panel per pair of groups
    (mean over shared seeds); black = all tensors, dotted = two independent random masks."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    mean = agreement.groupby(["group_a", "group_b", "layer", "round"], sort=False)[["jaccard", "chance"]].mean().reset_index()
    pairs = list(dict.fromkeys(zip(mean["group_a"], mean["group_b"])))
    tensors = [t for t in dict.fromkeys([*tensor_order, *mean["layer"]]) if t != "all" and t in set(mean["layer"])]
    colors = _colors(tensors)  # same order, so the same colours, as layer_density.png
    with plt.rc_context(STYLE):
        fig, axes = _grid(len(pairs), height=2.5)
        for ax, (ga, gb) in zip(axes, pairs):
            g = mean[(mean["group_a"] == ga) & (mean["group_b"] == gb)]
            for tensor in tensors:
                t = g[g["layer"] == tensor]
                ax.plot(t["round"], t["jaccard"], lw=1, color=colors[tensor], alpha=0.8)
            t = g[g["layer"] == "all"]
            ax.plot(t["round"], t["jaccard"], lw=2.2, color="black", marker="o", ms=3.5)
            ax.plot(t["round"], t["chance"], lw=1.4, color="black", ls=":")
            ax.set_title(f"{ga}\nvs {gb}", fontsize=9)
            ax.set_xlabel("round")
            ax.set_ylabel("Jaccard of kept weights")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        handles = [plt.Line2D([], [], color="black", lw=2.2, marker="o", ms=3.5), plt.Line2D([], [], color="black", ls=":")]
        handles += [plt.Line2D([], [], color=colors[t]) for t in tensors]
        fig.legend(handles, ["all tensors", "independent random masks", *tensors], loc="outside lower center", ncol=3, frameon=False)
        fig.suptitle("Overlap of the kept weights between groups at the same round and seed")
        _save(fig, path)


def plot_scores(hists: Mapping[str, pd.DataFrame], rnd: int, path: Path) -> None:
    """Per group (a row): the movement score of round rnd−1's active weights, and their final
    values, split into pruned at round `rnd` and kept; counts on a log scale."""
    plt = _plt()
    from matplotlib.ticker import NullFormatter

    colors = {"kept": "tab:blue", "pruned": "tab:red"}
    with plt.rc_context(STYLE):
        n = len(hists)
        fig, axes = plt.subplots(n, 2, figsize=(6.5, 0.9 + 2.3 * n), layout="constrained", squeeze=False)
        for row, (label, h) in zip(axes, hists.items()):
            for ax, quantity, xlabel in ((row[0], "score", f"|w_best − w_final| of round {rnd - 1}"),
                                         (row[1], "final_weight", f"final weight value, round {rnd - 1}")):
                q = h[h["quantity"] == quantity]
                for subset in ("kept", "pruned"):
                    s = q[q["subset"] == subset]
                    if s["count"].sum():
                        ax.stairs(s["count"], np.r_[s["left"].to_numpy(), s["right"].to_numpy()[-1:]],
                                  color=colors[subset], fill=True, alpha=0.45, lw=0)
                ax.set_yscale("log")
                ax.yaxis.set_minor_formatter(NullFormatter())
                ax.set_xlabel(xlabel)
                ax.set_ylabel("number of weights")
                # Plain tick labels: a "1e-2" offset text would collide with the axis label.
                ax.ticklabel_format(axis="x", style="plain", useOffset=False)
            row[0].set_title(_wrap(label, 40), loc="left")
        handles = [plt.Rectangle((0, 0), 1, 1, color=c, alpha=0.45) for c in colors.values()]
        fig.legend(handles, [f"kept at round {rnd}", f"pruned at round {rnd}"], loc="outside lower center", ncol=2, frameon=False)
        fig.suptitle(f"Weights active in round {rnd - 1}: movement score and final value (first seed)")
        _save(fig, path)


# --------------------------------------------------------------------------------------------
# report.md


def _pct(x: float, digits: int = 2) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}"


def _acc_cell(row: pd.Series, col: str) -> str:
    mean = _pct(row[f"{col}_mean"])
    if row["n_seeds"] < 2:
        return mean
    return f"{mean} ± {_pct(row[f'{col}_std'])} ({_pct(row[f'{col}_min'])}–{_pct(row[f'{col}_max'])})"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    return lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def _num(x: Any, fmt: str) -> str:
    try:
        return "–" if not math.isfinite(float(x)) else format(float(x), fmt)
    except (TypeError, ValueError):
        return "–"


def _group_lines(groups: Mapping[str, Sequence[RunData]]) -> list[str]:
    lines = []
    for label, runs in groups.items():
        cfg = runs[0].config
        train, data, prune = cfg.get("train", {}), cfg.get("data", {}), cfg.get("prune", {})
        length = f"{train['steps']} iterations a round" if train.get("steps") else f"{train.get('initial_epochs', '?')} epochs then {train.get('epochs', '?')} a round"
        sizes = "/".join(str(data.get(k, "full")) for k in ("train_size", "val_size", "test_size"))
        planned = prune.get("rounds")
        scope = prune.get("scope", "global")
        lines.append(f"- **{label}** — model {cfg.get('model', 'seed-cnn')}, {length}, data {sizes} (train/val/test), "
                     f"{planned if planned is not None else '?'} pruning round{'' if planned == 1 else 's'} of "
                     f"{prune.get('fraction', '?')} ({scope}); seed{'s' * (len(runs) > 1)} {', '.join(str(r.seed) for r in runs)}")
        for run in runs:
            done = int(run.rounds["round"].max())
            status = "" if planned is None or done >= int(planned) else f" — **incomplete**: rounds 0 to {done} of 0 to {planned} done"
            lines.append(f"  - seed {run.seed}: `{run.path}`{status}")
    return lines


def _energy_lines(groups: Mapping[str, Sequence[RunData]]) -> list[str]:
    rows = []
    for label, runs in groups.items():
        table = pd.concat([r.rounds for r in runs], ignore_index=True)
        methods = ", ".join(sorted(set(table["energy_method"].dropna().astype(str)))) if "energy_method" in table else ""
        kwh = table["energy_kwh"] if "energy_kwh" in table else pd.Series(dtype=float)
        if kwh.isna().all() and not methods:
            continue
        measured = f" ({kwh.notna().sum()} of {len(table)} rounds measured)" if kwh.isna().any() and kwh.notna().any() else ""
        co2 = table["co2_kg"].sum(min_count=1) if "co2_kg" in table else float("nan")
        rows.append([label, len(runs), _num(kwh.sum(min_count=1), ".4f") + measured, _num(co2, ".4f"), methods or "–"])
    if not rows:
        return ["Energy: not recorded (rounds.csv has no energy_kwh)."]
    return ["Totals over every round of every seed (– = not measurable, see the method):", "",
            *_md_table(["group", "seeds", "energy (kWh)", "CO₂ (kg)", "method"], rows)]


def report_markdown(groups, summary, comparison, *, paths, skipped, notes, figures, agreement_note, baseline) -> str:
    n_runs = sum(len(r) for r in groups.values())
    out = ["# lth report", "",
           f"Read {n_runs} run{'s' * (n_runs != 1)} in {len(groups)} group{'s' * (len(groups) != 1)} from "
           + ", ".join(f"`{p}`" for p in paths) + ". A group is the runs whose config differs only in the seed.", ""]
    if skipped:
        out += [f"Skipped {len(skipped)} (unreadable):", ""] + [f"- {s}" for s in skipped] + [""]
    if notes:
        out += [f"Left out {len(notes)}:", ""] + [f"- {s}" for s in notes] + [""]
    out += ["## Groups", "", *_group_lines(groups), ""]
    out += ["## Results per round", "",
            "Test accuracy in %, mean ± sample std (min–max) over seeds; *early stopping* = the weights of the "
            "evaluation with the lowest validation loss, *final* = after the last iteration. "
            "Early-stop step = the iteration of the early-stopping weights (mean over seeds).", ""]
    energy = "energy_kwh_mean" in summary
    for label, g in summary.groupby("group", sort=False):
        header = ["round", "remaining %", "seeds", "test acc, early stop", "test acc, final", "early-stop step", "pruning skipped"]
        header += ["energy (kWh)"] if energy else []
        rows = []
        for _, r in g.iterrows():
            row = [int(r["round"]), f"{r['remaining_pct']:.1f}", int(r["n_seeds"]), _acc_cell(r, "test_acc_best"),
                   _acc_cell(r, "test_acc_final"), _num(r.get("best_step_mean"), ".0f"), _num(r.get("pruning_skipped"), ".0f")]
            rows.append(row + ([_num(r.get("energy_kwh_mean"), ".4f")] if energy else []))
        out += [f"### {label}", "", *_md_table(header, rows), ""]
    out += ["## Dense baseline and best round", "",
            "Round 0 is the dense network; the best round is the one with the highest mean test accuracy at early stopping "
            "(pp = percentage points).", ""]
    rows = []
    for label, g in summary.groupby("group", sort=False):
        dense = g[g["round"] == 0]
        best = g.loc[g["test_acc_best_mean"].idxmax()]
        d0 = dense["test_acc_best_mean"].iloc[0] if len(dense) else float("nan")
        rows.append([label, _pct(d0), f"{int(best['round'])} ({best['remaining_pct']:.1f}%)", _pct(best["test_acc_best_mean"]),
                     _num(100 * (best["test_acc_best_mean"] - d0), "+.2f")])
    out += _md_table(["group", "dense test acc % (round 0)", "best round (remaining)", "its test acc %", "vs dense (pp)"], rows) + [""]
    out += ["## Paired comparison", ""]
    if comparison.empty:
        out += [f"No group shares a seed and a round with the baseline **{baseline}**; nothing to pair."
                if len(groups) > 1 else "One group only; nothing to compare.", ""]
    else:
        out += [f"Each group against **{baseline}**, paired over seeds: mean difference of test accuracy (early stopping) "
                "with a 95% Student-t CI, and an exact two-sided sign test (zero differences dropped). Differences in "
                "percentage points (group − baseline); the CI needs at least 2 seeds, and with n seeds the sign test "
                f"cannot go below p = 2/2^n.", ""]
        rows = [[int(r["round"]), r["group"], f"{r['remaining_pct']:.1f} / {r['baseline_remaining_pct']:.1f}", int(r["n"]),
                 _num(100 * r["mean_diff"], "+.2f"),
                 "–" if not math.isfinite(r["ci_low"]) else f"[{100 * r['ci_low']:+.2f}, {100 * r['ci_high']:+.2f}]",
                 _num(r["sign_p"], ".3g")] for _, r in comparison.iterrows()]
        out += _md_table(["round", "group", "remaining % (group / baseline)", "n", "mean diff (pp)", "95% CI (pp)", "sign-test p"], rows) + [""]
    out += ["## Mask agreement", "", agreement_note, ""]
    out += ["## Energy", "", *_energy_lines(groups), ""]
    out += ["## Figures", ""]
    for file, caption in figures:
        out += [f"**{caption}**", "", f"![{caption}]({file})", ""]
    out += ["Tables: [summary.csv](summary.csv) (accuracies as fractions, as in rounds.csv; std is the sample std, "
            "ddof 1), [comparison.csv](comparison.csv)" + (", [mask_agreement.csv](mask_agreement.csv)" if "mask_agreement.png" in dict(figures) else "") + "."]
    return "\n".join(out) + "\n"


def _agreement_note(agreement: pd.DataFrame) -> str:
    """What mask_agreement.png shows, and each pair's overall Jaccard at its last shared round."""
    overall = agreement[agreement["layer"] == "all"]
    parts = []
    for (a, b), g in overall.groupby(["group_a", "group_b"], sort=False):
        last = g[g["round"] == g["round"].max()]
        parts.append(f"- {a} vs {b}, round {int(last['round'].iloc[0])} (mean over {last['seed'].nunique()} seed(s)): "
                     f"{last['jaccard'].mean():.3f}; independent random masks: {last['chance'].mean():.3f}")
    return ("Jaccard |kept_A ∩ kept_B| / |kept_A ∪ kept_B| of the masks of two groups at the same round and seed, per "
            "tensor and over all tensors (mask_agreement.csv), beside the value two independent random masks of the same "
            "densities would give. Over all tensors, at the last round both groups have:\n\n" + "\n".join(parts))


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _default_out(paths: Sequence[Path]) -> Path:
    if len(paths) == 1:
        return paths[0] / "report"
    return Path(os.path.commonpath([p.resolve() for p in paths])) / "report"


def write_report(paths: Sequence[str | os.PathLike], out: str | os.PathLike | None = None, *, baseline: str | None = None,
                 scores_round: int | None = None) -> Path:
    """Read the runs under `paths`, write report.md, summary.csv, comparison.csv and the
    figures into `out` (default `<path>/report`, or `<common parent>/report` for several
    paths), and return it. Broken runs are skipped and listed; no readable run at all
    raises `ReportError`. `scores_round` picks the round of the score histograms (default:
    the last one every group's first run has)."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise ReportError("no paths given")
    runs, skipped = find_runs(paths)
    if not runs:
        raise ReportError("no readable lth runs: " + ("; ".join(skipped) or "nothing found"))
    groups, notes = _dedupe_seeds(group_runs(runs))
    out = Path(out) if out is not None else _default_out(paths)
    out.mkdir(parents=True, exist_ok=True)
    baseline = baseline or default_baseline(groups)

    summary = summary_table(groups)
    comparison = compare_groups(groups, baseline)
    _write_text(out / "summary.csv", summary.to_csv(index=False))
    _write_text(out / "comparison.csv", comparison.to_csv(index=False))

    figures: list[tuple[str, str]] = []
    plot_vs_remaining(summary, out / "accuracy_vs_remaining.png", kind="accuracy")
    figures.append(("accuracy_vs_remaining.png", "Test accuracy (early stopping: solid; final: dashed) vs weights remaining"))
    if "best_step_mean" in summary:
        plot_vs_remaining(summary, out / "early_stop_vs_remaining.png", kind="early_stop")
        figures.append(("early_stop_vs_remaining.png", "Early-stopping iteration vs weights remaining"))
    curves = curves_table(groups)
    if not curves.empty:
        plot_val_loss_curves(curves, out / "val_loss_curves.png")
        figures.append(("val_loss_curves.png", "Validation loss per round (first seed of each group)"))
    density = density_table(groups)
    if not density.empty:
        plot_layer_density(density, out / "layer_density.png")
        figures.append(("layer_density.png", "Density of each pruned tensor per round (first seed)"))

    agreement = mask_agreement(groups) if len(groups) > 1 else pd.DataFrame()
    if not agreement.empty:
        _write_text(out / "mask_agreement.csv", agreement.to_csv(index=False))
        plot_mask_agreement(agreement, out / "mask_agreement.png", tensor_order=list(dict.fromkeys(density.get("tensor", []))))
        figures.append(("mask_agreement.png", "Jaccard overlap of kept weights between groups (same round and seed)"))
        agreement_note = _agreement_note(agreement)
    else:
        agreement_note = ("Not drawn: it needs two groups that share a seed and have masks for a round ≥ 1."
                          if len(groups) > 1 else "Not drawn: one group only (it compares groups that share a seed).")

    hists, rnd = _score_histograms(groups, scores_round)
    if hists:
        name = f"scores_round_{rnd:02d}.png"
        plot_scores(hists, rnd, out / name)
        figures.append((name, f"Movement score and final weights of round {rnd - 1}, pruned vs kept at round {rnd}"))

    _write_text(out / "report.md", report_markdown(groups, summary, comparison, paths=paths, skipped=skipped, notes=notes,
                                                   figures=figures, agreement_note=agreement_note, baseline=baseline))
    return out


def _score_histograms(groups: Mapping[str, Sequence[RunData]], rnd: int | None) -> tuple[dict[str, pd.DataFrame], int]:
    """Histograms at round `rnd` (default: the last round every group's first run can show,
    else the last any can) for the groups whose first run has it."""
    available = {label: set(score_rounds(runs[0])) for label, runs in groups.items()}
    if rnd is None:
        common = set.intersection(*available.values()) if available else set()
        rnd = max(common or set().union(*available.values()) or {0})
    hists = {}
    for label, runs in groups.items():
        if rnd in available[label]:
            try:
                hists[label] = score_histograms(runs[0], rnd)
            except Exception:  # a torn checkpoint: leave the group out of this figure
                continue
    return hists, rnd
