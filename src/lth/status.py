"""`lth status STUDY_DIR`: every cell of a comparison study as done, running (with its job id),
failed (its log and last error line) or pending. Read from the run directories (a cell is done
when all its rounds are committed) and from the record each job keeps of its cells; a job that
vanished without saying how it ended (killed, node lost) is asked about of the engine (Slurm's
queue) or of the machine (its process), never guessed."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from lth.cells import Cell, cells_named, is_complete, read_job_record
from lth.executors import slurm_job_state

STATES = ("done", "running", "failed", "pending")
QUEUED = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESIZING", "SUSPENDED"}


@dataclass(frozen=True)
class CellStatus:
    cell: str
    state: str  # one of STATES
    job: str | None = None
    log: str | None = None
    error: str | None = None


def _job_alive(record: dict) -> str | None:
    """'running', 'queued' or None (gone) for the job a record names."""
    job = str(record.get("job") or "")
    if job.startswith(("local:", "ray:")):
        if record.get("host") not in (None, socket.gethostname()):
            return "running"  # another machine's process: only its own record can say it ended
        try:
            os.kill(int(record["pid"]), 0)
        except (KeyError, ValueError, ProcessLookupError):
            return None
        except PermissionError:
            pass
        return "running"
    state = slurm_job_state(job) if job else None
    return None if state is None else "queued" if state in QUEUED else "running"


def last_error_line(log: str | None) -> str | None:
    """The last line of a job's log that looks like an error (else its last line)."""
    try:
        lines = [line.strip() for line in Path(log).read_text(errors="replace").splitlines() if line.strip()] if log else []
    except OSError:
        return None
    errors = [line for line in lines if "error" in line.lower() or "exception" in line.lower()]
    return (errors or lines or [None])[-1]


def cell_status(study: Path, cell: Cell) -> CellStatus:
    record = read_job_record(study, cell)
    job, log, said = record.get("job"), record.get("log"), record.get("state")
    if is_complete(cell):
        return CellStatus(cell.name, "done", job, log)
    if said == "failed":
        return CellStatus(cell.name, "failed", job, log, record.get("error"))
    if said in ("submitted", "running", "requeued", "stopped"):
        alive = _job_alive(record)
        if alive == "running" and said != "stopped":
            return CellStatus(cell.name, "running", job, log)
        if alive is not None:
            return CellStatus(cell.name, "pending", job, log)
        if said == "stopped":  # stopped by a signal, position saved, no job left: the next submission continues it
            return CellStatus(cell.name, "pending", None, log, record.get("error"))
        return CellStatus(cell.name, "failed", job, log, last_error_line(log) or f"job {job} ended without finishing the cell")
    return CellStatus(cell.name, "pending")


def study_status(study: Path) -> list[CellStatus]:
    return [cell_status(study, cell) for cell in cells_named(study, None)]


def format_status(study: Path, cells: list[CellStatus]) -> str:
    counts = ", ".join(f"{sum(c.state == s for c in cells)} {s}" for s in STATES)
    width = max(len(c.cell) for c in cells)
    lines = [f"{study}: {len(cells)} cells: {counts}"]
    for c in cells:
        detail = {
            "running": f"job {c.job}" if c.job else "",
            "failed": f"job {c.job}, log {c.log or '(none)'}: {c.error or 'no error line'}",
            "pending": f"queued as job {c.job}" if c.job else (c.error or ""),
            "done": "",
        }[c.state]
        lines.append(f"  {c.cell:<{width}}  {c.state:<7}  {detail}".rstrip())
    if any(c.state == "failed" for c in cells):
        lines.append("retry the failed cells with the same lth compare command plus --retry-failed")
    return "\n".join(lines)
