"""The report's figures: each takes DataFrames from `tables` and a path, and writes one PNG.
Figures are drawn on `matplotlib.figure.Figure` (Agg when saved), never through pyplot, so that
drawing a report changes no global backend or state of the caller (a notebook, say)."""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter, NullLocator

from lth.rundir import atomic_write

STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "xtick.labelsize": 9, "ytick.labelsize": 9,
         "legend.fontsize": 9, "figure.dpi": 100, "savefig.dpi": 150, "axes.grid": True, "grid.alpha": 0.3}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
TICK_SETS = ((100, 50, 20, 10, 5, 2, 1, 0.5, 0.2, 0.1),
             (100, 70, 50, 30, 20, 10, 7, 5, 3, 2, 1, 0.7, 0.5, 0.3, 0.2, 0.1),
             (100, 90, 80, 70, 60, 50, 40, 30, 20, 15, 10, 7, 5, 4, 3, 2, 1.5, 1, 0.7, 0.5, 0.3, 0.2, 0.1))


def palette(labels: Sequence[str]) -> dict[str, Any]:
    """A color per label, so the lines of every figure in a report (stability's too) match."""
    cmap = matplotlib.colormaps["tab10" if len(labels) <= 10 else "tab20"]
    return {label: cmap(i % cmap.N) for i, label in enumerate(labels)}


@contextmanager
def figure(path: Path, title: str, n: int = 0, height: float = 2.6, figsize: tuple = (6.5, 4), **grid) -> Iterator[tuple[Figure, Any]]:
    """Every report figure's frame, so that all share one style and are saved atomically, titled
    `title`: `n` small multiples (two a row, one y scale so panels compare by eye), or
    `fig.subplots(**grid)` when n is 0."""
    with matplotlib.rc_context(STYLE):
        rows = math.ceil(n / 2)
        fig = Figure(figsize=(6.5, 0.8 + height * rows) if n > 1 else figsize, layout="constrained")
        if n:
            axes = fig.subplots(rows, 1 if n == 1 else 2, squeeze=False, sharey=True).ravel()
            for ax in axes[n:]:
                ax.set_visible(False)
            for ax in (axes := axes[:n]):
                ax.yaxis.set_tick_params(labelleft=True)
        yield fig, axes if n else fig.subplots(**grid)
        fig.suptitle(title)
        buf = io.BytesIO()
        fig.savefig(buf, format=path.suffix.lstrip("."))
    atomic_write(path, buf.getvalue())


def legend(fig, handles: list, names: list[str], ncol: int = 3, **kw) -> None:
    """The legend under the plot, outside the axes, so that it never hides a line."""
    fig.legend(handles, names, loc="outside lower center", ncol=ncol, frameon=False, **kw)


def remaining_axis(ax, values: Sequence[float]) -> None:
    """Frankle & Carbin's x axis: weights remaining (%), log scale, reversed, plain ticks."""
    vals = [v for v in values if v > 0 and math.isfinite(v)] or [100.0]
    left, right = max(vals) * 1.06, min(vals) / 1.06
    ax.set_xscale("log")
    ax.set_xlim(left, right)
    for ticks in TICK_SETS:  # the coarsest set that still puts 4 ticks on the axis
        inside = [t for t in ticks if right <= t <= left]
        if len(inside) >= 4:
            break
    ax.xaxis.set_major_locator(FixedLocator(inside))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("weights remaining (%)")


def plot_vs_remaining(summary: pd.DataFrame, path: Path, *, kind: str) -> None:
    """`kind` "accuracy" (early-stopping and final weights) or "early_stop"; mean over seeds, min–max band."""
    accuracy = kind == "accuracy"
    series = [("test_acc_best", "-", 100.0), ("test_acc_final", "--", 100.0)] if accuracy else [("best_step", "-", 1.0)]
    colors = palette(list(dict.fromkeys(summary["group"])))
    markers = dict(zip(colors, itertools.cycle(MARKERS)))  # groups stay apart where lines coincide, and in grey print
    title = "Test accuracy vs weights remaining" if accuracy else "Early-stopping iteration (min. validation loss) vs weights remaining"
    with figure(path, title, figsize=(6.5, 4.2)) as (fig, ax):
        for label, g in summary.groupby("group", sort=False):
            g = g.sort_values("round")
            for col, ls, scale in [s for s in series if f"{s[0]}_mean" in g]:
                ax.plot(g["remaining_pct"], scale * g[f"{col}_mean"], ls, color=colors[label], marker=markers[label], ms=4, lw=1.5, alpha=0.9)
                if (g["n_seeds"] > 1).any():
                    ax.fill_between(g["remaining_pct"], scale * g[f"{col}_min"], scale * g[f"{col}_max"], color=colors[label],
                                    alpha=0.18 if ls == "-" else 0.08, lw=0)
        remaining_axis(ax, summary["remaining_pct"])
        ax.set_ylabel("test accuracy (%)" if accuracy else "early-stop iteration (steps)")
        handles, names = [Line2D([], [], color=c, lw=2, marker=markers[label], ms=5) for label, c in colors.items()], list(colors)
        if accuracy:
            handles += [Line2D([], [], color="0.3", ls="-"), Line2D([], [], color="0.3", ls="--")]
            names += ["early-stopping weights", "final weights"]
        if (summary["n_seeds"] > 1).any():
            handles.append(Rectangle((0, 0), 1, 1, color="0.5", alpha=0.3, lw=0))
            names.append("min–max over seeds")
        legend(fig, handles, names, ncol=2 if len(names) > 3 else len(names))


def wrap(label: str, width: int = 34) -> str:
    """A long label on two lines at a space, so that it fits as the title of a half-width panel."""
    cut = label.rfind(" ", 0, width) if len(label) > width else -1
    return label[:cut] + "\n" + label[cut + 1:] if cut > 0 else label


def plot_val_loss_curves(curves: pd.DataFrame, path: Path) -> None:
    """Validation loss per evaluation, one panel per group, colour = round, the lowest marked."""
    labels, rounds = list(dict.fromkeys(curves["group"])), curves["round"]
    norm, cmap = Normalize(vmin=rounds.min(), vmax=max(rounds.max(), rounds.min() + 1)), matplotlib.colormaps["viridis"]
    with figure(path, "Validation loss per round (first seed; ● = lowest, the early-stopping point)", len(labels)) as (fig, axes):
        for ax, label in zip(axes, labels):
            g = curves[curves["group"] == label]
            for rnd, c in g.groupby("round"):
                c = c.sort_values("x")
                ax.plot(c["x"], c["val_loss"], color=cmap(norm(rnd)), lw=1.2)
                best = c.loc[c["val_loss"].idxmin()]
                ax.plot(best["x"], best["val_loss"], "o", color=cmap(norm(rnd)), mec="black", mew=0.6, ms=4.5)
            ax.set(title=wrap(label), xlabel=g["x_unit"].iloc[0], ylabel="validation loss")
        fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(axes), label="round", shrink=0.9,
                     ticks=sorted(set(int(r) for r in rounds)) if rounds.nunique() <= 16 else None)


def plot_layer_density(density: pd.DataFrame, path: Path) -> None:
    """Per-tensor density (%) per round, one panel per group (first seed)."""
    labels, tensors = list(dict.fromkeys(density["group"])), list(dict.fromkeys(density["tensor"]))
    colors = palette(tensors)
    with figure(path, "Density of each pruned tensor per round (first seed)", len(labels)) as (fig, axes):
        for ax, label in zip(axes, labels):
            for tensor, t in density[density["group"] == label].groupby("tensor", sort=False):
                ax.plot(t["round"], t["density_pct"], marker="o", ms=3, lw=1.3, color=colors[tensor])
            ax.set(title=wrap(label), xlabel="round", ylabel="weights remaining (%)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        legend(fig, [Line2D([], [], color=colors[t], marker="o", ms=3) for t in tensors], tensors, title="tensor")


def plot_mask_agreement(agreement: pd.DataFrame, path: Path, tensor_order: Sequence[str] = ()) -> None:
    """One panel per pair of groups (mean over shared seeds); black = all tensors, dotted = chance."""
    mean = agreement.groupby(["group_a", "group_b", "layer", "round"], sort=False)[["jaccard", "chance"]].mean().reset_index()
    pairs = list(dict.fromkeys(zip(mean["group_a"], mean["group_b"])))
    tensors = [t for t in dict.fromkeys([*tensor_order, *mean["layer"]]) if t != "all" and t in set(mean["layer"])]
    colors = palette(tensors)  # the order, and so the colours, of layer_density.png
    with figure(path, "Overlap of the kept weights between groups at the same round and seed", len(pairs), height=2.5) as (fig, axes):
        for ax, (ga, gb) in zip(axes, pairs):
            g = mean[(mean["group_a"] == ga) & (mean["group_b"] == gb)]
            for tensor in tensors:
                ax.plot(g.loc[g["layer"] == tensor, "round"], g.loc[g["layer"] == tensor, "jaccard"], lw=1, color=colors[tensor], alpha=0.8)
            t = g[g["layer"] == "all"]
            ax.plot(t["round"], t["jaccard"], lw=2.2, color="black", marker="o", ms=3.5)
            ax.plot(t["round"], t["chance"], lw=1.4, color="black", ls=":")
            ax.set(title=f"{ga}\nvs {gb}", xlabel="round", ylabel="Jaccard of kept weights")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        handles = [Line2D([], [], color="black", lw=2.2, marker="o", ms=3.5), Line2D([], [], color="black", ls=":")]
        legend(fig, handles + [Line2D([], [], color=colors[t]) for t in tensors], ["all tensors", "independent random masks", *tensors])


def plot_scores(hists: Mapping[str, pd.DataFrame], rnd: int, path: Path) -> None:
    """A row per group: its criterion's score and the final weights, pruned vs kept; log counts."""
    colors = {"kept": "tab:blue", "pruned": "tab:red"}
    title = f"Weights active in round {rnd - 1}: pruning score and final value (first seed)"
    with figure(path, title, figsize=(6.5, 0.9 + 2.3 * len(hists)), nrows=len(hists), ncols=2, squeeze=False) as (fig, axes):
        for row, (label, h) in zip(axes, hists.items()):
            score = h["score_label"].iloc[0]  # the criterion's own formula, from its registry entry
            for ax, quantity, xlabel in ((row[0], "score", f"{score} of round {rnd - 1}"), (row[1], "final_weight", f"final weight value, round {rnd - 1}")):
                for subset in colors:
                    s = h[(h["quantity"] == quantity) & (h["subset"] == subset)]
                    if s["count"].sum():
                        ax.stairs(s["count"], np.r_[s["left"].to_numpy(), s["right"].to_numpy()[-1:]], color=colors[subset], fill=True, alpha=0.45, lw=0)
                ax.set(yscale="log", xlabel=xlabel, ylabel="number of weights")
                ax.yaxis.set_minor_formatter(NullFormatter())
                ax.ticklabel_format(axis="x", style="plain", useOffset=False)  # an offset text would collide with the label
            row[0].set_title(wrap(label, 40), loc="left")
        handles = [Rectangle((0, 0), 1, 1, color=c, alpha=0.45) for c in colors.values()]
        legend(fig, handles, [f"kept at round {rnd}", f"pruned at round {rnd}"], ncol=2)
