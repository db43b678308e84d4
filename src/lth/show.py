"""`lth show`: a run's rounds table from `rounds.csv` alone (no training code needed)."""

from __future__ import annotations

from pathlib import Path

from lth.store import RunDir, RunDirError, read_rounds_csv

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
    run = RunDir(run_dir)
    if not run.rounds.exists():
        if not run.root.is_dir():
            raise RunDirError(f"{run_dir} does not exist; pass a run directory")
        raise RunDirError(f"{run_dir} has no rounds.csv yet (no round completed, or not an lth run)")
    rows = read_rounds_csv(run.rounds)
    header = [title for _, title, _ in COLUMNS]
    body = [[_fmt(row.get(key, ""), spec) for key, _, spec in COLUMNS] for row in rows]
    return _render(header, body)


def _render(header: list[str], body: list[list[str]]) -> str:
    """Right-aligned columns, two spaces apart, as wide as their widest cell."""
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in body]
    return "\n".join(lines)


def _find_runs(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if (path / "config.toml").exists():
            found.append(path)
        elif path.is_dir():
            found += sorted(p.parent for p in path.glob("**/config.toml") if "report" not in p.parts)
        else:
            raise RunDirError(f"{path} does not exist; pass run or study directories")
    return found


def side_by_side(paths: list[Path]) -> str:
    """A compact table: one row per round, two columns (remaining %, test acc at early
    stopping) per run, headed by the run's path relative to the common parent."""
    import os

    runs = _find_runs(paths)
    if not runs:
        raise RunDirError(f"no run directories under {', '.join(map(str, paths))}")
    base = Path(os.path.commonpath([str(r) for r in runs])) if len(runs) > 1 else runs[0].parent
    tables = {str(r.relative_to(base)) or r.name: read_rounds_csv(RunDir(r).rounds) for r in runs}
    n_rounds = max((len(t) for t in tables.values()), default=0)
    header = ["round"] + [f"{name} rem%/acc" for name in tables]
    body = []
    for i in range(n_rounds):
        line = [str(i)]
        for rows in tables.values():
            line.append(f"{float(rows[i]['remaining_pct']):.1f} / {float(rows[i]['test_acc_best']):.4f}" if i < len(rows) else "-")
        body.append(line)
    return _render(header, body)
