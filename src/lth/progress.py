"""Progress display: nested tqdm bars for rounds and epochs, and one summary line per round.

Bars go to stderr and switch themselves off when it is not a terminal (tqdm's `disable=None`);
the per-round summary always goes to stdout, so logs of batch jobs still say how a study went.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from tqdm.auto import tqdm


class Progress:
    def __init__(self, total_rounds: int, enabled: bool | None = None, summaries: bool = True) -> None:
        # enabled=None lets tqdm decide (on for a terminal, off for pipes and files).
        self.enabled = None if enabled is None else not enabled
        self.summaries = summaries
        self.rounds = tqdm(total=total_rounds, desc="rounds", unit="round", disable=self.enabled, position=0, file=sys.stderr)
        self.epochs: Any = None

    def start_round(self, round_index: int, steps: int, steps_done: int, studies: int = 1) -> None:
        """The inner bar counts iterations; it moves at every evaluation (each epoch by default)."""
        together = f" ({studies} studies)" if studies > 1 else ""
        self.epochs = tqdm(
            total=steps, initial=steps_done, desc=f"round {round_index}{together}", unit="step",
            disable=self.enabled, position=1, leave=False, file=sys.stderr,
        )

    def end_eval(self, row: dict[str, Any]) -> None:
        if self.epochs is not None:
            part = "val" if "val_loss" in row else "test"  # no validation split: the test set is watched
            self.epochs.set_postfix(epoch=row["epoch"], **{f"{part}_loss": f"{row[f'{part}_loss']:.4f}", f"{part}_acc": f"{row[f'{part}_acc']:.3f}"})
            self.epochs.update(row["step"] - self.epochs.n)

    def end_round(self, row: dict[str, Any], total_rounds: int, label: str = "") -> None:
        if self.epochs is not None:
            self.epochs.close()
            self.epochs = None
        self.rounds.update(1)
        if self.summaries:
            tqdm.write((f"[{label}] " if label else "") + summary_line(row, total_rounds), file=sys.stdout)
            sys.stdout.flush()  # batch logs see each round as it ends, not at exit

    def skip_rounds(self, n: int) -> None:
        self.rounds.update(n)

    def close(self) -> None:
        if self.epochs is not None:
            self.epochs.close()
        self.rounds.close()


def summary_line(row: dict[str, Any], total_rounds: int) -> str:
    pruning = "dense" if int(row["round"]) == 0 else (
        "pruning skipped (best == final)" if row["pruning_skipped"] else f"pruned {row['pruned']:,}"
    )
    best = (f"best epoch {row['best_epoch']} step {row['best_step']} (val loss {row['best_val_loss']:.4f})"
            if math.isfinite(float(row["best_val_loss"])) else "no validation split: best = final")
    return (
        f"round {row['round']}/{total_rounds - 1}: {row['remaining_pct']:.1f}% remaining, {pruning}; {best}; "
        f"test acc best {100 * row['test_acc_best']:.2f}% final {100 * row['test_acc_final']:.2f}%; "
        f"{row['seconds']:.0f} s"
    )
