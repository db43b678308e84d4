"""The run directory (DESIGN §5) and its crash-safe writes.

Every file is written atomically: to a temporary file in the same directory, flushed and
fsync'ed, then renamed over the target, so a kill or power loss leaves either the old file or
the new one, never a torn one. `rounds.csv` is the commit point of a round: a round counts as
done only once its row is there, and its checkpoints are written before it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    contiguous = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, st_save(contiguous, metadata=metadata))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return st_load(Path(path).read_bytes())


def load_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


@dataclass(frozen=True)
class RunDir:
    """Paths of one study's run directory; creates nothing by itself."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def rounds(self) -> Path:
        return self.root / "rounds.csv"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def init(self) -> Path:
        return self.checkpoints / "init.safetensors"

    def round_dir(self, round_index: int) -> Path:
        return self.checkpoints / f"round_{round_index:02d}"

    def best(self, round_index: int) -> Path:
        return self.round_dir(round_index) / "best.safetensors"

    def final(self, round_index: int) -> Path:
        return self.round_dir(round_index) / "final.safetensors"

    def mask(self, round_index: int) -> Path:
        return self.round_dir(round_index) / "mask.safetensors"

    @property
    def rewind_point(self) -> Path:
        """The late-rewinding weights (`rewind = "epoch:K"`), saved during round 0."""
        return self.checkpoints / "rewind.safetensors"

    @property
    def resume_state(self) -> Path:
        return self.checkpoints / "resume" / "state.safetensors"


# ---------------------------------------------------------------- tables


def write_rounds_csv(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    rows = list(rows)
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def read_rounds_csv(path: Path) -> list[dict[str, str]]:
    if not Path(path).exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_metrics(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(dict(r)) + "\n" for r in rows))


def append_metrics(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Append epoch lines; a torn last line from a crash is dropped by `read_metrics`."""
    with open(path, "a") as f:
        for row in rows:
            f.write(json.dumps(dict(row)) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not Path(path).exists():
        return []
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


# ---------------------------------------------------------------- resume state


RESUME_FORMAT = 2  # bump when the layout below changes; older states are refused, not misread


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked; the message says how to proceed."""


class ResumeStateError(RunDirError):
    """The resume state cannot be used; the message says what to do."""


def save_resume_state(path: Path, round_index: int, state: Any) -> None:
    """One file holds the whole position, so it is replaced atomically as one unit."""
    tensors: dict[str, torch.Tensor] = {}
    for k, v in state.model.items():
        tensors[f"model/{k}"] = v
    for k, v in state.best.items():
        tensors[f"best/{k}"] = v
    opt_meta: dict[str, Any] = {"param_groups": state.optimizer["param_groups"], "state": {}}
    for pid, pstate in state.optimizer["state"].items():
        opt_meta["state"][str(pid)] = sorted(pstate)
        for key, value in pstate.items():
            tensors[f"opt/{pid}/{key}"] = value
    tensors["rng/torch"] = torch.get_rng_state()
    meta = {
        "format": RESUME_FORMAT,
        "round": round_index,
        "steps_done": state.steps_done,
        "best_step": state.best_step,
        "best_val_loss": state.best_val_loss,
        "best_val_acc": state.best_val_acc,
        "history": state.history,
        "optimizer": opt_meta,
    }
    save_tensors(path, tensors, metadata={"lth_resume": json.dumps(meta)})


def load_resume_state(path: Path) -> tuple[int, Any]:
    from lth.train import RoundState

    try:
        tensors = load_tensors(path)
        meta = json.loads(load_metadata(path)["lth_resume"])
    except Exception as exc:  # a foreign or damaged file: say so in one line
        raise ResumeStateError(f"{path} is not a readable lth resume state ({type(exc).__name__}); delete it to restart the round from its beginning") from None
    if meta.get("format") != RESUME_FORMAT:
        raise ResumeStateError(
            f"{path} was written by another lth version (resume format {meta.get('format', 1)}, this one reads {RESUME_FORMAT}); "
            "finish the run with that version, or delete the file to restart the round from its beginning"
        )
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for pid, keys in meta["optimizer"]["state"].items():
        opt_state[int(pid)] = {key: tensors[f"opt/{pid}/{key}"] for key in keys}
    torch.set_rng_state(tensors["rng/torch"])
    state = RoundState(
        steps_done=meta["steps_done"],
        model={k[6:]: v for k, v in tensors.items() if k.startswith("model/")},
        optimizer={"state": opt_state, "param_groups": meta["optimizer"]["param_groups"]},
        best={k[5:]: v for k, v in tensors.items() if k.startswith("best/")},
        best_step=meta["best_step"],
        best_val_loss=meta["best_val_loss"],
        best_val_acc=meta["best_val_acc"],
        history=meta["history"],
    )
    return meta["round"], state
