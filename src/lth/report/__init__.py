"""Plots and tables from run directories alone (DESIGN §4 `report`), read through `lth.rundir` so
that the report follows the layout; torch only to redraw a criterion's scores, so the import stays light.

    write_report([Path("runs/cmp")])          # -> runs/cmp/report/{report.md, *.png, *.csv}
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from lth.report import figures, stability, tables
from lth.report.markdown import report_markdown
from lth.report.tables import ReportError, Run, group_label, group_runs, load_run, mask_jaccard, paired_comparison, read_runs, score_histograms
from lth.rundir import atomic_write

__all__ = ["ReportError", "Run", "write_report", "read_runs", "load_run", "group_label", "group_runs", "mask_jaccard", "paired_comparison",
           "score_histograms"]


def write_report(paths: Sequence[str | os.PathLike], out: str | os.PathLike | None = None, *, baseline: str | None = None,
                 scores_round: int | None = None) -> Path:
    """Write report.md, the CSV tables and the figures into `out` (default `<path>/report`, or `<common
    parent>/report`) and return it. Broken runs are listed, never fatal: only no readable run raises.
    `baseline`: the group the others are paired with (default high-movement, the seed's criterion)."""
    paths = [Path(p) for p in paths]
    runs, skipped = read_runs(paths) if paths else ([], ["no paths given"])
    if not runs:
        raise ReportError("no readable lth runs: " + ("; ".join(skipped) or "nothing found"))
    groups, notes = tables.dedupe_seeds(group_runs(runs))
    out = Path(out) if out is not None else (paths[0] if len(paths) == 1 else Path(os.path.commonpath([p.resolve() for p in paths]))) / "report"
    baseline = baseline or next((g for g, rs in groups.items() if rs[0].config.prune.criterion == "high-movement"), next(iter(groups)))
    data = {"summary": tables.summary_table(groups), "comparison": tables.compare_groups(groups, baseline), "long": tables.long_table(groups),
            "agreement": tables.mask_agreement(groups) if len(groups) > 1 else pd.DataFrame(), "stability": stability.stability_table(groups)}
    for file, name in (("summary.csv", "summary"), ("comparison.csv", "comparison"), ("mask_agreement.csv", "agreement")):
        if name != "agreement" or not data[name].empty:
            atomic_write(out / file, data[name].to_csv(index=False))
    drawn = _draw(groups, data, out, scores_round)
    atomic_write(out / "report.md", report_markdown(groups, data, paths=paths, skipped=skipped, notes=notes, figures=drawn, baseline=baseline))
    return out


def _draw(groups: tables.Groups, data: dict[str, pd.DataFrame], out: Path, scores_round: int | None) -> list[tuple[str, str]]:
    """Every figure the data allows; (file, caption) of each drawn."""
    drawn = []

    def draw(file: str, caption: str, plot, *args, **kw) -> None:
        plot(*args, out / file, **kw)
        drawn.append((file, caption))

    summary, curves, density = data["summary"], tables.curves_table(groups), tables.density_table(groups)
    draw("accuracy_vs_remaining.png", "Test accuracy (early stopping: solid; final: dashed) vs weights remaining",
         figures.plot_vs_remaining, summary, kind="accuracy")
    if "best_step_mean" in summary:
        draw("early_stop_vs_remaining.png", "Early-stopping iteration vs weights remaining", figures.plot_vs_remaining, summary, kind="early_stop")
    if not curves.empty:
        draw("val_loss_curves.png", "Validation loss per round (first seed of each group)", figures.plot_val_loss_curves, curves)
    if not density.empty:
        draw("layer_density.png", "Density of each pruned tensor per round (first seed)", figures.plot_layer_density, density)
    if not data["agreement"].empty:
        draw("mask_agreement.png", "Jaccard overlap of kept weights between groups (same round and seed)", figures.plot_mask_agreement,
             data["agreement"], tensor_order=list(dict.fromkeys(density["tensor"])))
    for file, caption, plot, kw in stability.figures(data["stability"]):  # where runs hold `lth stability` results
        draw(file, caption, plot, data["stability"], **kw)
    hists, rnd = _score_histograms(groups, scores_round)
    if hists:
        draw(f"scores_round_{rnd:02d}.png", f"Pruning score (each group's criterion) and final weights of round {rnd - 1}, pruned vs kept at "
             f"round {rnd}", figures.plot_scores, hists, rnd)
    return drawn


def _score_histograms(groups: tables.Groups, rnd: int | None) -> tuple[dict[str, pd.DataFrame], int]:
    """At round `rnd` (default: the last every group's first run can show, else the last any
    can), for the groups whose first run has it; a torn checkpoint costs its group the panel."""
    available = {label: set(tables.score_rounds(runs[0])) for label, runs in groups.items()}
    rnd = rnd if rnd is not None else max(set.intersection(*available.values()) or set().union(*available.values()) or {0})
    hists = {}
    for label in [label for label in groups if rnd in available[label]]:
        try:
            hists[label] = score_histograms(groups[label][0], rnd)
        except Exception:  # noqa: BLE001 - any damage to one checkpoint costs that group its panel only
            continue
    return hists, rnd
