"""The report's stability section, drawn whenever runs hold `lth stability` results (stability.csv,
read through `lth.rundir`'s path): the test error along the path between two copies, per round; the
instability against weights remaining; against the rewinding iteration after a `--rewind-sweep`."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from lth.report.figures import figure, legend, palette, remaining_axis, wrap
from lth.report.tables import Groups, Run

STABLE = 0.02  # Frankle et al. 2020's threshold, as lth.stability's (not imported from there: it would load torch)
COLUMNS = ("round", "rewind", "rewind_step", "remaining_pct", "instability", "error_a", "error_b", "path")
NOTE = ("Instability (Frankle et al. 2020): two copies of a round's ticket train from the same start with different data orders; "
        "it is the highest test error on the straight line between their final weights minus the mean of the two ends' errors. "
        "*Stable*: a mean of at most 2 percentage points. Mean over pairs and seeds, max in brackets; errors in %.")


def _read(run: Run) -> pd.DataFrame | None:
    """A run's stability.csv, or None when it has none or it is damaged (that run's rows are left out)."""
    try:
        return table if set(COLUMNS) <= set(table := pd.read_csv(run.dir.stability)) else None
    except (OSError, ValueError):
        return None


def stability_table(groups: Groups) -> pd.DataFrame:
    """Every stability.csv row of every run, with its group and seed; `path` as an array."""
    parts = [t.assign(group=label, seed=run.seed) for label, runs in groups.items() for run in runs if (t := _read(run)) is not None]
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["group", "seed", "round", "rewind", "instability", "path"])
    table["path"] = [np.array(str(p).split(), dtype=float) for p in table["path"]]
    table["sweep"] = table["rewind"].astype(str).str.startswith("iter:")
    return table


def plot_paths(table: pd.DataFrame, path: Path) -> None:
    """Error along the path, one panel per group, one line per round (mean over pairs and seeds)."""
    own, labels = table[~table["sweep"]], list(dict.fromkeys(table.loc[~table["sweep"], "group"]))
    cmap, top = matplotlib.colormaps["viridis"], max(int(own["round"].max()), 1)
    with figure(path, "Test error along the line between two trained copies", len(labels)) as (fig, axes):
        for ax, label in zip(axes, labels):
            for rnd, g in own[own["group"] == label].groupby("round"):
                errors = 100 * np.mean(np.stack(g["path"].to_list()), axis=0)
                ax.plot(np.linspace(0, 1, len(errors)), errors, color=cmap(rnd / top), lw=1.4)
            ax.set(title=wrap(label), xlabel="interpolation α (copy A → copy B)", ylabel="test error (%)")
        rounds = sorted(own["round"].unique())
        legend(fig, [Line2D([], [], color=cmap(r / top)) for r in rounds], [f"round {r}" for r in rounds], ncol=min(len(rounds), 6))


def plot_instability(table: pd.DataFrame, path: Path, *, x: str) -> None:
    """Instability (%) against `x`: "remaining_pct" (each round from its own rewind point, a line per
    group) or "rewind_step" (the sweep, a line per group and round); mean over pairs and seeds."""
    sweep = x == "rewind_step"
    rows = table[table["sweep"] == sweep]
    lines = {(f"{key[0]} · round {key[1]}" if sweep else key[0]): g for key, g in rows.groupby(["group", "round"] if sweep else ["group"], sort=False)}
    colors = palette(list(lines))
    with figure(path, "Instability vs rewinding iteration" if sweep else "Instability vs weights remaining") as (fig, ax):
        for name, g in lines.items():
            mean = g.groupby(x)["instability"].mean()
            ax.plot(mean.index, 100 * mean.to_numpy(), marker="o", ms=4, color=colors[name])
        ax.axhline(100 * STABLE, color="0.3", ls=":", lw=1)
        if sweep:
            ax.set(xscale="symlog", xlabel="rewinding iteration k (of round 0)")
        else:
            remaining_axis(ax, rows["remaining_pct"])
        ax.set_ylabel("instability (% test error)")
        legend(fig, [Line2D([], [], color=c, marker="o") for c in colors.values()] + [Line2D([], [], color="0.3", ls=":")],
               [*colors, "2%: stable at or below"], ncol=2)


def figures(table: pd.DataFrame) -> list[tuple[str, str, object, dict]]:
    """(file, caption, plot, keywords) of each figure the table allows."""
    own = [("stability_paths.png", "Test error along the path between two copies of each round's ticket", plot_paths, {}),
           ("instability_vs_remaining.png", "Instability vs weights remaining (dotted: 2%)", plot_instability, {"x": "remaining_pct"})]
    sweep = [("instability_vs_rewind.png", "Instability vs rewinding iteration (dotted: 2%)", plot_instability, {"x": "rewind_step"})]
    return own * bool((~table["sweep"]).any()) + sweep * bool(table["sweep"].any())


def stability_lines(table: pd.DataFrame) -> list[str]:
    """report.md's stability section: a table per group (nothing when no run has results)."""
    if table.empty:
        return []
    out = ["## Stability (linear mode connectivity)", "", NOTE, ""]
    for label, g in table.groupby("group", sort=False):
        rows = [[int(rnd), f"{g2['remaining_pct'].iloc[0]:.1f}", rewind, len(g2), f"{100 * g2['instability'].mean():.2f} ({100 * g2['instability'].max():.2f})",
                 f"{50 * (g2['error_a'] + g2['error_b']).mean():.2f}", "yes" if g2["instability"].mean() <= STABLE else "no"]
                for (rnd, rewind), g2 in g.groupby(["round", "rewind"], sort=False)]
        header = ["round", "remaining %", "start", "pairs", "instability % (max)", "end error %", "stable"]
        out += [f"### {label}", "", "| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|",
                *["| " + " | ".join(map(str, r)) + " |" for r in rows], ""]
    return out
