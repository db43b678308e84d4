"""`lth show`: a run's rounds table, or several runs side by side, from their rounds alone."""

from __future__ import annotations

import os
from pathlib import Path

from lth.config import ConfigError
from lth.rundir import RunDir, RunDirError, find_runs

COLUMNS = [
    ("round", "round", "{}"),
    ("remaining_pct", "remain %", "{:.1f}"),
    ("pruned", "pruned", "{}"),
    ("pruning_skipped", "skipped", "{}"),
    ("best_epoch", "best ep", "{}"),
    ("best_val_loss", "val loss", "{:.4f}"),
    ("best_val_acc", "val acc", "{:.4f}"),
    ("test_acc_best", "test acc best", "{:.4f}"),
    ("test_acc_final", "test acc final", "{:.4f}"),
    ("seconds", "seconds", "{:.0f}"),
]


def _render(header: list[str], body: list[list[str]]) -> str:
    """Right-aligned columns, two spaces apart, as wide as their widest cell."""
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in [header, *body])


def rounds_table(run_dir: Path) -> str:
    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise RunDirError(f"{run_dir} does not exist; pass a run directory")
    rows = run.read_rounds()
    if problems := run.damage():
        raise RunDirError(f"{problems[0]} (lth verify {run_dir} lists every problem)")
    if not rows:
        raise RunDirError(f"{run_dir} has no {run.rounds.name} yet (no round completed, or not an lth run)")
    body = [["" if row.get(key) is None else spec.format(row[key]) for key, _, spec in COLUMNS] for row in rows]
    return _render([title for _, title, _ in COLUMNS], body)


def side_by_side(paths: list[Path]) -> str:
    """One row per round, remaining % and test accuracy at early stopping for each run, headed
    by the run's path relative to the runs' common parent."""
    found, _ = find_runs(paths)
    readable, skipped = [], []
    for run in found:  # a damaged run is listed below the table, not shown
        try:
            rows = run.read_rounds()
            if problems := run.damage():
                raise RunDirError(problems[0])
            readable.append((run, rows))
        except (RunDirError, ConfigError) as exc:
            skipped.append(f"skipped {run.root}: {exc}")
    if not readable:
        raise RunDirError("; ".join(skipped) or f"no run directories under {', '.join(map(str, paths))}; pass run or study directories")
    base = Path(os.path.commonpath([str(r.root) for r, _ in readable])) if len(readable) > 1 else readable[0][0].root.parent
    tables = {str(r.root.relative_to(base)) or r.root.name: rows for r, rows in readable}
    header = ["round"] + [f"{name} rem%/acc" for name in tables]
    body = [[str(i)] + [f"{rows[i]['remaining_pct']:.1f} / {rows[i]['test_acc_best']:.4f}" if i < len(rows) else "-" for rows in tables.values()]
            for i in range(max(len(t) for t in tables.values()))]
    return "\n".join([_render(header, body), *skipped])
