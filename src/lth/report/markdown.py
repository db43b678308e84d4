"""report.md: the tables of `tables` as text, with what every number means beside it."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from lth.report.stability import stability_lines
from lth.report.tables import Run

RESULTS_NOTE = ("Test accuracy in %, mean ± sample std (min–max) over seeds; *early stopping* = the weights of the evaluation with "
                "the lowest validation loss, *final* = after the last iteration. Early-stop step = the iteration of the "
                "early-stopping weights (mean over seeds).")
AGREEMENT_NOTE = ("Jaccard |kept_A ∩ kept_B| / |kept_A ∪ kept_B| of the masks of two groups at the same round and seed, per tensor "
                  "and over all tensors (mask_agreement.csv), beside the value two independent random masks of the same densities "
                  "would give. Over all tensors, at the last round both groups have:")


def _num(x: Any, fmt: str, scale: float = 1.0) -> str:
    """A number, or "–" for a missing or non-finite one (a column some runs lack)."""
    try:
        return format(scale * float(x), fmt) if math.isfinite(float(x)) else "–"
    except (TypeError, ValueError):
        return "–"


_pct = partial(_num, fmt=".2f", scale=100)  # accuracies are recorded as fractions


def _acc_cell(row: pd.Series, col: str) -> str:
    spread = f" ± {_pct(row[f'{col}_std'])} ({_pct(row[f'{col}_min'])}–{_pct(row[f'{col}_max'])})" if row["n_seeds"] > 1 else ""
    return _pct(row[f"{col}_mean"]) + spread


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    return lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows] + [""]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def group_lines(groups: Mapping[str, Sequence[Run]]) -> list[str]:
    """What each group ran, and each seed's directory, with incomplete runs marked."""
    lines = []
    for label, runs in groups.items():
        c = runs[0].config
        t, p = c.train, c.prune
        length = f"{t.steps} iterations a round" if t.steps else f"{t.initial_epochs} epochs then {t.epochs} a round"
        d = c.data
        sizes = "/".join("none" if s == 0 else str(s if s is not None else "full") for s in (d.train_size, d.val_size if d.validation else 0, d.test_size))
        amount = ", ".join(f"{k} {v:g}" for k, v in p.rates.items()) if p.scope == "layer" and p.rates else f"{p.fraction}"
        lines.append(f"- **{label}** — model {c.model}, {length}, {d.dataset} {sizes} (train/val/test), {_plural(p.rounds, 'pruning round')} of "
                     f"{amount} ({p.scope}); seed{'s' * (len(runs) > 1)} {', '.join(str(r.seed) for r in runs)}")
        if not d.validation:
            lines.append("  - no validation split (data.validation = 0, as open_lth): the evaluations watch the test set and choose "
                         "nothing, so the early-stopping weights are the final ones")
        for run in runs:
            done = int(run.rounds["round"].max())
            status = f" — **incomplete**: rounds 0 to {done} of 0 to {p.rounds} done" if done < p.rounds else ""
            lines.append(f"  - seed {run.seed}: `{run.path}`{status}")
    return lines


def results_lines(summary: pd.DataFrame) -> list[str]:
    energy = "energy_kwh_mean" in summary
    header = ["round", "remaining %", "seeds", "test acc, early stop", "test acc, final", "early-stop step", "pruning skipped"]
    out = []
    for label, g in summary.groupby("group", sort=False):
        rows = [[int(r["round"]), f"{r['remaining_pct']:.1f}", int(r["n_seeds"]), _acc_cell(r, "test_acc_best"), _acc_cell(r, "test_acc_final"),
                 _num(r.get("best_step_mean"), ".0f"), _num(r.get("pruning_skipped"), ".0f")] + ([_num(r.get("energy_kwh_mean"), ".4f")] if energy else [])
                for _, r in g.iterrows()]
        out += [f"### {label}", "", *_table(header + ["energy (kWh)"] * energy, rows)]
    return out


def best_round_lines(summary: pd.DataFrame) -> list[str]:
    rows = []
    for label, g in summary.groupby("group", sort=False):
        d0 = g.loc[g["round"] == 0, "test_acc_best_mean"].max()  # NaN when round 0 is missing
        best = g.loc[g["test_acc_best_mean"].idxmax()]
        rows.append([label, _pct(d0), f"{int(best['round'])} ({best['remaining_pct']:.1f}%)", _pct(best["test_acc_best_mean"]),
                     _num(best["test_acc_best_mean"] - d0, "+.2f", 100)])
    return _table(["group", "dense test acc % (round 0)", "best round (remaining)", "its test acc %", "vs dense (pp)"], rows)


def comparison_lines(comparison: pd.DataFrame, baseline: str, n_groups: int) -> list[str]:
    if comparison.empty:
        return [f"No group shares a seed and a round with the baseline **{baseline}**; nothing to pair."
                if n_groups > 1 else "One group only; nothing to compare.", ""]
    formed = comparison[comparison["n"] > 0]
    rows = [[int(r["round"]), r["group"], f"{r['remaining_pct']:.1f} / {r['baseline_remaining_pct']:.1f}", int(r["n"]), _num(r["mean_diff"], "+.2f", 100),
             f"[{100 * r['ci_low']:+.2f}, {100 * r['ci_high']:+.2f}]" if math.isfinite(r["ci_low"]) else "–", _num(r["sign_p"], ".3g")]
            for _, r in formed.iterrows()]
    dropped = int(comparison["dropped"].sum()) if "dropped" in comparison else 0
    note = ([f"{_plural(dropped, 'pair')} of a seed's rounds left out: the two arms had kept different numbers of weights "
             "(a round that skipped pruning, best == final, leaves its arm at another density from then on); pairs are "
             "formed only at equal density. Left out per group and round: "
             + "; ".join(f"{r['group']} round {int(r['round'])}: {int(r['dropped'])}" for _, r in comparison[comparison["dropped"] > 0].iterrows())
             + ".", ""] if dropped else [])
    return [f"Each group against **{baseline}**, paired over seeds: mean difference of test accuracy (early stopping) with a 95% "
            "Student-t CI, and an exact two-sided sign test (zero differences dropped). Differences in percentage points "
            "(group − baseline); the CI needs at least 2 seeds, and with n seeds the sign test cannot go below p = 2/2^n.", "",
            *_table(["round", "group", "remaining % (group / baseline)", "n", "mean diff (pp)", "95% CI (pp)", "sign-test p"], rows), *note]


def agreement_lines(agreement: pd.DataFrame, n_groups: int) -> list[str]:
    """What mask_agreement.png shows, and each pair's overall Jaccard at its last shared round."""
    if agreement.empty:
        return ["Not drawn: it needs two groups that share a seed and have masks for a round ≥ 1." if n_groups > 1
                else "Not drawn: one group only (it compares groups that share a seed).", ""]
    pairs = agreement[agreement["layer"] == "all"].groupby(["group_a", "group_b"], sort=False)
    last = {pair: g[g["round"] == g["round"].max()] for pair, g in pairs}
    return [AGREEMENT_NOTE, "", *[f"- {a} vs {b}, round {int(g['round'].iloc[0])} (mean over {g['seed'].nunique()} seed(s)): {g['jaccard'].mean():.3f}; "
                                  f"independent random masks: {g['chance'].mean():.3f}" for (a, b), g in last.items()], ""]


def energy_lines(long: pd.DataFrame) -> list[str]:
    """Totals over every round of every seed; a method instead of numbers where not measurable."""
    rows = []
    for label, table in long.groupby("group", sort=False):
        methods = ", ".join(sorted(set(table["energy_method"].dropna().astype(str)))) if "energy_method" in table else ""
        kwh = pd.to_numeric(table["energy_kwh"], errors="coerce") if "energy_kwh" in table else pd.Series(dtype=float)
        if kwh.isna().all() and not methods:
            continue
        measured = f" ({kwh.notna().sum()} of {len(table)} rounds measured)" if kwh.isna().any() and kwh.notna().any() else ""
        co2 = pd.to_numeric(table["co2_kg"], errors="coerce").sum(min_count=1) if "co2_kg" in table else float("nan")
        rows.append([label, table["seed"].nunique(), _num(kwh.sum(min_count=1), ".4f") + measured, _num(co2, ".4f"), methods or "–"])
    if not rows:
        return ["Energy: not recorded (the runs have no energy_kwh).", ""]
    return ["Totals over every round of every seed (– = not measurable, see the method):", "",
            *_table(["group", "seeds", "energy (kWh)", "CO₂ (kg)", "method"], rows)]


def report_markdown(groups: Mapping[str, Sequence[Run]], tables: Mapping[str, pd.DataFrame], *, paths: Sequence[Path], skipped: Sequence[str],
                    notes: Sequence[str], figures: Sequence[tuple[str, str]], baseline: str) -> str:
    """`tables`: summary, comparison, agreement and long (every round of every run)."""
    n_runs, n = sum(len(r) for r in groups.values()), len(groups)
    out = ["# lth report", "", f"Read {_plural(n_runs, 'run')} in {_plural(n, 'group')} from " + ", ".join(f"`{p}`" for p in paths)
           + ". A group is the runs whose config differs only in the seed.", ""]
    for title, items in ((f"Skipped {len(skipped)} (unreadable):", skipped), (f"Left out {len(notes)}:", notes)):
        out += [title, "", *[f"- {s}" for s in items], ""] if items else []
    out += ["## Groups", "", *group_lines(groups), "", "## Results per round", "", RESULTS_NOTE, "", *results_lines(tables["summary"])]
    out += ["## Dense baseline and best round", "", "Round 0 is the dense network; the best round is the one with the highest mean test "
            "accuracy at early stopping (pp = percentage points).", "", *best_round_lines(tables["summary"])]
    out += ["## Paired comparison", "", *comparison_lines(tables["comparison"], baseline, n)]
    out += ["## Mask agreement", "", *agreement_lines(tables["agreement"], n), *stability_lines(tables.get("stability", pd.DataFrame())), "## Energy", "", *energy_lines(tables["long"]), "## Figures", ""]
    for file, caption in figures:
        out += [f"**{caption}**", "", f"![{caption}]({file})", ""]
    agreement_csv = ", [mask_agreement.csv](mask_agreement.csv)" if not tables["agreement"].empty else ""
    out += [f"Tables: [summary.csv](summary.csv) (accuracies as fractions, as recorded; std is the sample std, ddof 1), "
            f"[comparison.csv](comparison.csv){agreement_csv}."]
    return "\n".join(out) + "\n"
