"""The report's numbers as DataFrames, from run directories read through `lth.rundir` only.
A *group* is the runs that are one study but for the seed: the config the run hash covers."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from lth import config as cfgmod
from lth.rundir import RunDir, RunDirError, find_runs

# The seed's criterion first (the default baseline), then the controls: the config's own order.
RANK = {c: i for i, c in enumerate(cfgmod.CRITERIA)}
Groups = Mapping[str, Sequence["Run"]]


class ReportError(ValueError):
    """A run directory (or a request) the report cannot use; the message is one line."""


@dataclass(frozen=True, eq=False)
class Run:
    dir: RunDir
    config: cfgmod.Config
    rounds: pd.DataFrame  # one row per committed round, never empty
    metrics: pd.DataFrame  # one row per evaluation, with round and val_loss; may be empty

    path = property(lambda self: self.dir.root)
    seed = property(lambda self: self.config.seed)


def load_run(run: RunDir) -> Run:
    """One run, or a ReportError naming its directory: a broken run is listed, never fatal."""
    try:
        config, rounds, metrics = run.read_config(), run.read_rounds(), pd.DataFrame(run.read_metrics())
        if problems := run.damage():
            raise RunDirError(problems[0])
    except (cfgmod.ConfigError, RunDirError) as exc:
        message = str(exc).splitlines()[0]
        raise ReportError(message if str(run.root) in message else f"{run.root}: {message}") from None
    if not rounds:
        raise ReportError(f"{run.root}: no round completed yet")
    return Run(run, config, pd.DataFrame(rounds), metrics if {"round", "val_loss"} <= set(metrics) else pd.DataFrame(columns=["round", "val_loss"]))


def read_runs(paths: Sequence[Path]) -> tuple[list[Run], list[str]]:
    """The readable runs under `paths`, and one line per path or run that was not."""
    dirs, skipped = find_runs(paths)
    runs = []
    for d in dirs:
        try:
            runs.append(load_run(d))
        except ReportError as exc:
            skipped.append(str(exc))
    return runs, skipped


def group_label(config: cfgmod.Config, *, with_model: bool = False) -> str:
    """What a run is apart from its seed, e.g. "magnitude(layer) / init · conv4", "random(matched) / init"."""
    qualifiers = [config.prune.scope] * (config.prune.scope != "global") + ["matched"] * bool(config.prune.match)
    criterion = config.prune.criterion + (f"({', '.join(qualifiers)})" if qualifiers else "")
    return f"{criterion} / {config.rewind}" + (f" · {config.model}" if with_model else "")


def group_key(config: cfgmod.Config) -> tuple:
    """The hashed config minus the seed. A matched random ticket copies the run of its own seed
    (`<study>/<variant>/seed-<s>`), so its seeds share a key through the variant's name."""
    flat = pd.json_normalize(cfgmod.computed(replace(config, seed=0))).to_dict("records")[0]
    match = Path(str(flat.get("prune.match", "")))
    if re.fullmatch(r"seed-\d+", match.name):
        flat["prune.match"] = match.parent.name
    return tuple(sorted((k, repr(v)) for k, v in flat.items()))


def group_runs(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Runs by label; the model is named only when runs differ in it, twin labels get the keys they differ in."""
    cells: dict[tuple, list[Run]] = {}
    for run in runs:
        cells.setdefault(group_key(run.config), []).append(run)
    with_model = len({r.config.model for r in runs}) > 1
    base = {key: group_label(rs[0].config, with_model=with_model) for key, rs in cells.items()}
    labels = {key: label + _distinguishing(key, [k for k, other in base.items() if other == label and k != key]) for key, label in base.items()}
    order = sorted(cells, key=lambda k: (RANK.get(cells[k][0].config.prune.criterion, len(RANK)), labels[k]))
    return {labels[k]: sorted(cells[k], key=lambda r: (r.seed, str(r.path))) for k in order}


def _distinguishing(key: tuple, twins: list[tuple]) -> str:
    """` · k=v` per key that differs from its twins; the name only if nothing else does (each variant has one)."""
    if not twins:
        return ""
    mine, others = dict(key), [dict(t) for t in twins]
    keys = sorted({k for o in others for k in set(o) | set(mine) if o.get(k) != mine.get(k)})
    keys = [k for k in keys if k != "name"] or keys
    return "".join(f" · {k.rsplit('.', 1)[-1]}={mine[k].strip(chr(39))}" for k in keys if k in mine) or " · (other config)"


def dedupe_seeds(groups: Groups) -> tuple[dict[str, list[Run]], list[str]]:
    """One run per seed and group (the one with most rounds): a repeat would pass for a replicate."""
    out, notes = {}, []
    for label, runs in groups.items():
        kept: dict[int, Run] = {}
        for run in sorted(runs, key=lambda r: (-len(r.rounds), str(r.path))):
            if run.seed in kept:
                notes.append(f"{run.path}: same config and seed as {kept[run.seed].path}; left out (a repeat, not a replicate)")
            kept.setdefault(run.seed, run)
        out[label] = sorted(kept.values(), key=lambda r: r.seed)
    return out, notes


def long_table(groups: Groups) -> pd.DataFrame:
    """Every round of every run, one row each, with its group and seed."""
    return pd.concat([r.rounds.assign(group=label, seed=r.seed) for label, runs in groups.items() for r in runs], ignore_index=True)


def summary_table(groups: Groups) -> pd.DataFrame:
    """Per group and round over seeds; spreads as mean / sample std (ddof 1, NaN for one seed) / min / max."""
    rows = []
    for (label, rnd), g in long_table(groups).groupby(["group", "round"], sort=False):
        row: dict[str, Any] = {"group": label, "round": int(rnd), "n_seeds": int(g["seed"].nunique()), "remaining_pct": g["remaining_pct"].mean()}
        for col in [c for c in ("test_acc_best", "test_acc_final", "best_step") if c in g]:
            v = g[col].dropna().astype(float)
            row |= {f"{col}_mean": v.mean(), f"{col}_std": v.std(ddof=1) if len(v) > 1 else np.nan, f"{col}_min": v.min(), f"{col}_max": v.max()}
        row |= {f"{col}_mean": g[col].mean() for col in ("best_epoch", "best_val_loss") if col in g}
        row |= {"pruning_skipped": int(g["pruning_skipped"].fillna(False).astype(bool).sum())} if "pruning_skipped" in g else {}
        row |= {f"{col}_mean": g[col].mean() for col in ("energy_kwh", "co2_kg") if col in g and g[col].notna().any()}
        rows.append(row)
    return pd.DataFrame(rows)


def paired_comparison(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict:
    """a[i] and b[i] share a seed: n, mean of a − b, its Student-t interval (`ci`, None below two
    pairs), the exact two-sided sign test (`sign_p`, zero differences dropped); NaN pairs dropped."""
    if len(a) != len(b):
        raise ValueError(f"paired_comparison needs equal lengths, got {len(a)} and {len(b)}")
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    d = d[~np.isnan(d)]
    n, nonzero, mean = len(d), d[d != 0], float(d.mean()) if len(d) else float("nan")
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * float(d.std(ddof=1)) / np.sqrt(n) if n >= 2 else None
    sign_p = float(stats.binomtest(int((nonzero > 0).sum()), len(nonzero), 0.5).pvalue) if len(nonzero) else (1.0 if n else float("nan"))
    return {"n": n, "mean_diff": mean, "ci": None if half is None else (mean - half, mean + half), "sign_p": sign_p}


EQUAL_DENSITY_RTOL = 1e-3  # two rounds are at "the same density" when their kept weights differ by at most 0.1%


def compare_groups(groups: Groups, baseline: str, metric: str = "test_acc_best") -> pd.DataFrame:
    """Each group against `baseline`, round by round, paired by seed on `metric`, and only where
    both sides kept the same number of weights (within `EQUAL_DENSITY_RTOL`): a round that skipped pruning (high-movement's
    best == final) leaves that seed's arm at another density from then on, and comparing
    accuracies at different densities would mislead. Pairs left out for that are counted in
    `dropped` (per group and round; also `attrs["dropped"]`, their total)."""
    if baseline not in groups:
        raise ReportError(f"baseline {baseline!r} is not a group; groups: {', '.join(groups)}")
    density = "weights_remaining" if all("weights_remaining" in r.rounds for runs in groups.values() for r in runs) else "remaining_pct"
    table = long_table(groups)[["group", "seed", "round", metric, "remaining_pct"] + ([density] if density != "remaining_pct" else [])]
    base = table[table["group"] == baseline].drop(columns="group")
    rows, dropped = [], 0
    for label in [g for g in groups if g != baseline]:
        for rnd, p in table[table["group"] == label].merge(base, on=["seed", "round"], suffixes=("", "_b")).groupby("round"):
            # Within 0.1% of each other: per-layer and global rounding may differ by a weight or two,
            # a skipped round by the whole rate.
            equal = np.isclose(p[density].astype(float), p[f"{density}_b"].astype(float), rtol=EQUAL_DENSITY_RTOL, atol=0)
            dropped += int((~equal).sum())
            p = p[equal]
            if p.empty:
                rows.append([int(rnd), label, baseline, 0, np.nan, np.nan, np.nan, np.nan, np.nan, np.nan, int((~equal).sum())])
                continue
            res = paired_comparison(p[metric], p[f"{metric}_b"])
            low, high = res["ci"] or (np.nan, np.nan)
            rows.append([int(rnd), label, baseline, res["n"], res["mean_diff"], low, high, res["sign_p"], p["remaining_pct"].mean(),
                         p["remaining_pct_b"].mean(), int((~equal).sum())])
    frame = pd.DataFrame(rows, columns=["round", "group", "baseline", "n", "mean_diff", "ci_low", "ci_high", "sign_p", "remaining_pct",
                                        "baseline_remaining_pct", "dropped"])
    frame.attrs["dropped"] = dropped
    return frame


def mask_jaccard(mask_a: Mapping[str, np.ndarray], mask_b: Mapping[str, np.ndarray]) -> dict[str, float]:
    """|kept_a ∩ kept_b| / |kept_a ∪ kept_b| per shared tensor and "all" together; 1.0 when both keep none."""
    counts = {}
    for name in [n for n in mask_a if n in mask_b]:
        a, b = np.asarray(mask_a[name]).astype(bool), np.asarray(mask_b[name]).astype(bool)
        if a.shape != b.shape:
            raise ValueError(f"mask {name}: shapes differ {a.shape} vs {b.shape}")
        counts[name] = (np.count_nonzero(a & b), np.count_nonzero(a | b))
    counts["all"] = tuple(sum(c[i] for c in counts.values()) for i in (0, 1))
    return {name: inter / union if union else 1.0 for name, (inter, union) in counts.items()}


def _arrays(run: Run, path: Path) -> dict[str, np.ndarray] | None:
    """A checkpoint as numpy arrays; None when missing or torn, which leaves that round out."""
    try:
        return {k: v.numpy() for k, v in run.dir.load(path).items()}
    except Exception:  # noqa: BLE001 - any damage to one file costs that round only
        return None


def mask_agreement(groups: Groups) -> pd.DataFrame:
    """Jaccard of kept weights per pair of groups, shared seed, round ≥ 1 and tensor, beside `chance`: two
    independent random masks of the same densities, E|A∩B| / E|A∪B| = da·db / (da + db − da·db)."""
    labels, rows = list(groups), []
    pairs = [(ga, gb, ra, rb) for i, ga in enumerate(labels) for gb in labels[i + 1:] for ra in groups[ga] for rb in groups[gb] if ra.seed == rb.seed]
    for ga, gb, ra, rb in pairs:
        for rnd in sorted(set(ra.rounds["round"]) & set(rb.rounds["round"]) - {0}):
            ma, mb = _arrays(ra, ra.dir.mask(rnd)), _arrays(rb, rb.dir.mask(rnd))
            if ma is None or mb is None:
                continue
            jac = mask_jaccard(ma, mb)
            names = [n for n in jac if n != "all"]
            dens = {n: (ma[n].mean(), mb[n].mean()) for n in names}
            total = sum(ma[n].size for n in names) or 1
            dens["all"] = tuple(sum(dens[n][k] * ma[n].size for n in names) / total for k in (0, 1))
            rows += [{"group_a": ga, "group_b": gb, "seed": ra.seed, "round": int(rnd), "layer": name, "jaccard": value, "density_a": float(da),
                      "density_b": float(db), "chance": float(da * db / (da + db - da * db)) if da + db else 1.0} for name, value in jac.items() for da, db in [dens[name]]]
    return pd.DataFrame(rows, columns=["group_a", "group_b", "seed", "round", "layer", "jaccard", "density_a", "density_b", "chance"])


def score_rounds(run: Run) -> list[int]:
    """Rounds r ≥ 1 whose pruning can be redrawn: masks r−1 and r, and round r−1's weights."""
    from lth.pruning import CRITERIA

    d, done = run.dir, set(run.rounds["round"])
    if CRITERIA[run.config.prune.criterion].score is None:  # scored at θ0 on a network and a sample: not redrawn here
        return []
    return [r for r in sorted(done) if r - 1 in done and all(p.is_file() for p in (d.mask(r), d.mask(r - 1), d.best(r - 1), d.final(r - 1)))]


def score_histograms(run: Run, rnd: int, bins: int = 60) -> pd.DataFrame:
    """Round rnd−1's active weights, pruned at `rnd` or kept: histograms of the run's own criterion's
    score (random: the study's seeded draw) and final weights. Torch code, so imported here only."""
    from lth.pruning import CRITERIA
    from lth.seeds import prune_seed

    d, criterion = run.dir, run.config.prune.criterion
    prev, mask = d.load(d.mask(rnd - 1)), d.load(d.mask(rnd))
    best, final, init = (d.load(p) if kind in (*CRITERIA[criterion].uses, "final") else {}
                         for kind, p in (("best", d.best(rnd - 1)), ("final", d.final(rnd - 1)), ("init", d.init)))
    names = [n for n in d.read_manifest().get("prunable", list(mask)) if n in mask and n in prev]  # parameter order: the random draw's
    scores = CRITERIA[criterion].score(best, final, init, names, prune_seed(run.seed, rnd))
    active = np.concatenate([prev[n].numpy().ravel() != 0 for n in names])
    kept = np.concatenate([mask[n].numpy().ravel() != 0 for n in names])[active]
    rows = []
    for quantity, tensors in (("score", scores), ("final_weight", final)):
        values = np.concatenate([tensors[n].float().numpy().ravel() for n in names])[active]
        edges = np.histogram_bin_edges(values, bins=bins) if values.size else np.linspace(0, 1, bins + 1)
        rows += [{"criterion": criterion, "score_label": CRITERIA[criterion].label, "quantity": quantity, "subset": subset, "left": lo, "right": hi, "count": int(c)}
                 for subset, sel in (("kept", kept), ("pruned", ~kept)) for lo, hi, c in zip(edges[:-1], edges[1:], np.histogram(values[sel], bins=edges)[0])]
    return pd.DataFrame(rows)


def density_table(groups: Groups) -> pd.DataFrame:
    """Per-tensor density (%) per round as recorded, first seed of each group."""
    rows = [{"group": label, "round": int(rnd), "tensor": col.split("/", 1)[1], "density_pct": 100 * value}
            for label, runs in groups.items() for col in runs[0].rounds.columns if col.startswith("density/")
            for rnd, value in zip(runs[0].rounds["round"], runs[0].rounds[col])]
    return pd.DataFrame(rows, columns=["group", "round", "tensor", "density_pct"])


def curves_table(groups: Groups) -> pd.DataFrame:
    """Validation loss per evaluation, first seed; x in iterations when the run counts or evaluates by them."""
    parts = []
    for label, run in [(label, runs[0]) for label, runs in groups.items() if not runs[0].metrics.empty]:
        by_step = "step" in run.metrics and (run.config.train.steps is not None or run.config.train.eval_every != "epoch")
        m = run.metrics[run.metrics["round"].isin(set(run.rounds["round"]))]
        parts.append(pd.DataFrame({"group": label, "round": m["round"].astype(int), "x": m["step" if by_step else "epoch"].astype(float),
                                   "x_unit": "iteration" if by_step else "epoch", "val_loss": m["val_loss"].astype(float)}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["group", "round", "x", "x_unit", "val_loss"])
