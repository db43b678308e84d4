"""`lth show`: a run's rounds table from `rounds.csv` alone (no training code needed)."""

from __future__ import annotations

from pathlib import Path

from lth.store import RunDir, read_rounds_csv

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


def _fmt(value: str, spec: str) -> str:
    try:
        return spec.format(float(value)) if "f" in spec else value
    except ValueError:
        return value


def rounds_table(run_dir: Path) -> str:
    from lth.experiment import RunDirError

    run = RunDir(run_dir)
    if not run.rounds.exists():
        if not run.root.is_dir():
            raise RunDirError(f"{run_dir} does not exist; pass a run directory")
        raise RunDirError(f"{run_dir} has no rounds.csv yet (no round completed, or not an lth run)")
    rows = read_rounds_csv(run.rounds)
    header = [title for _, title, _ in COLUMNS]
    body = [[_fmt(row.get(key, ""), spec) for key, _, spec in COLUMNS] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in body]
    return "\n".join(lines)
