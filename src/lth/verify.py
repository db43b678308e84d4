"""`lth verify`: is a run (or every run of a study) whole? Its files are present and match the
checksums recorded as they were written, each mask keeps a subset of the previous round's (for
the criteria that promise it),
pruned weights are exactly zero, and the counts agree with rounds.csv."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from lth.config import ConfigError
from lth.pruning import CRITERIA
from lth.rundir import RunDir, RunDirError, find_runs


def run_problems(run: RunDir) -> list[str]:
    """Every problem found in one run directory, one line each; [] when it is whole."""
    try:
        config, rows, _ = run.read_config(), run.read_rounds(), run.read_manifest()
        problems = run.damage()
    except (ConfigError, RunDirError) as exc:
        return [str(exc)]
    needed = [run.init] + ([run.rewind_point] if (config.rewind_epoch or config.rewind_step) is not None and rows else [])
    needed += [run.rewind_optimizer] if config.rewind_step is not None and rows else []
    needed += [run.checkpoint(r, kind) for r in range(len(rows)) for kind in ("mask", "best", "final")]
    problems += [f"{path}: missing" for path in needed if not path.is_file()]
    if problems:
        return problems
    # Masks nest unless the criterion scores θ0 afresh each round or the shuffle check moves them.
    nested = CRITERIA[config.prune.criterion].nested and not config.prune.shuffle
    previous: dict[str, torch.Tensor] | None = None
    for row in rows:
        r = row["round"]
        try:
            mask, best, final = (run.load(run.checkpoint(r, kind)) for kind in ("mask", "best", "final"))
        except RunDirError as exc:
            return problems + [str(exc)]
        kept, total = sum(int(m.sum()) for m in mask.values()), sum(m.numel() for m in mask.values())
        if previous is not None:
            grown = [n for n, m in mask.items() if n not in previous or bool((m.bool() & ~previous[n].bool()).any())] if nested else []
            problems += [f"{run.mask(r)}: {n} keeps weights that round {r - 1} pruned" for n in grown]
            if row.get("pruned") is not None and row["pruned"] != sum(int(m.sum()) for m in previous.values()) - kept:
                problems.append(f"{run.rounds}: round {r} says {row['pruned']} pruned, the masks say {sum(int(m.sum()) for m in previous.values()) - kept}")
        for kind, weights in (("best", best), ("final", final)):
            nonzero = [n for n, m in mask.items() if n not in weights or bool(weights[n][~m.bool()].any())]
            problems += [f"{run.checkpoint(r, kind)}: {n} has non-zero pruned weights (or is missing)" for n in nonzero]
        for column, value in (("weights_remaining", kept), ("weights_prunable", total)):
            if row.get(column) is not None and row[column] != value:
                problems.append(f"{run.rounds}: round {r} {column} is {row[column]}, the mask says {value}")
        previous = mask
    return problems


def verify(paths: Sequence[str | os.PathLike]) -> tuple[list[str], bool]:
    """Report lines for every run under `paths`, and whether all of them are whole."""
    runs, missing = find_runs(paths)
    lines, whole = [f"FAIL {m}" for m in missing], not missing
    for run in runs:
        problems = run_problems(run)
        whole = whole and not problems
        rounds = len(run.read_rounds()) if not problems else 0
        lines += [f"ok   {run.root} ({rounds} rounds)"] if not problems else [f"FAIL {run.root}: {p}" for p in problems]
    return lines, whole
