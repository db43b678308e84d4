"""`lth compare`: a comparison study — variants (criteria × rewind points × models) × seeds —
run cell by cell into one study directory, then one combined report.

Each cell is an ordinary run directory (`<study>/<variant>/seed-<s>/`), so everything that
reads runs reads cells. Cells already complete are skipped and interrupted ones resumed, so
rerunning the same command continues a study. Cells go through an executor seam with the
`concurrent.futures.Executor` interface — sequential in this process by default, or Ray's tasks
(`lth.executors`) — and a batch system (Slurm through submitit) takes every wave as job arrays
and returns at once. Every engine runs the same job, `executors.run_job`: "these cells of the
study in this directory", read from disk. The study directory holds `study.toml` (the spec),
`jobs/data.txt` (where the jobs find CIFAR-10), `jobs/cells/*.json` (which job last ran each cell,
and how it ended; what `lth status` reads) and `jobs/slurm/` (submitit's logs). What a cell is,
its spec and its record are `lth.cells`, which the jobs and `lth status` share without this module.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import shutil
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lth import config as cfgmod
from lth import executors, track
from lth.cells import Cell, CompareSpec, jobs_dir, load_spec, plan, study_file, write_job_record
from lth.config import Config, ConfigError
from lth.data import resolve_data_dir
from lth.report import write_report
from lth.rundir import RunDir, atomic_write, prepare
from lth.status import cell_status
from lth.study import StudyResult, compatible, run_studies

COMPARISON_PRESETS: dict[str, CompareSpec] = {
    # The seed's question: high-movement vs the classic recipe and its controls, 3 seeds. The
    # random ticket copies the high-movement ticket's per-layer densities (same seed).
    "seed-comparison": CompareSpec(
        name="seed-comparison",
        base="seed",
        variants=(
            (("prune.criterion", "high-movement"), ("rewind", "init")),
            (("prune.criterion", "magnitude"), ("rewind", "init")),
            (("prune.criterion", "random"), ("rewind", "init"), ("prune.match", "@high-movement_init")),
            (("prune.criterion", "high-movement"), ("rewind", "reinit")),
        ),
        seeds=(0, 1, 2),
    ),
}


def executor_table(path: str | os.PathLike) -> dict[str, Any]:
    """A study file's `[executor]` table (kind and options); where the study runs is not part of
    what it is, so it stays out of `study.toml`."""
    table = tomllib.loads(Path(path).read_text()).get("executor", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: executor must be a table, e.g. [executor] kind = \"slurm\"")
    return table


def data_record(study: Path) -> Path:
    return jobs_dir(study) / "data.txt"


def record_data_dir(study: Path, data_dir: str | os.PathLike | None) -> str:
    """Where the jobs find CIFAR-10: `--data-dir` (a path valid on the nodes) or where this
    command finds it, kept in the study directory for later submissions and for the record."""
    if data_dir is None and not os.environ.get("LTH_DATA_DIR") and data_record(study).is_file():
        return data_record(study).read_text().strip()
    found = str(resolve_data_dir(data_dir))
    atomic_write(data_record(study), found + "\n")
    return found


class SequentialExecutor(concurrent.futures.Executor):
    """Runs each submitted call at once in this process: the default, and the simplest engine."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
            if isinstance(exc, KeyboardInterrupt):
                raise
            future.set_exception(exc)
        return future


def run_replicates(config: Config, replicates: int, out: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None,
                   resume: bool = False, force: bool = False, progress: bool | None = None, parallel: int = 1) -> list[StudyResult]:
    """K seeds N..N+K-1 of one study, each in `<out>/seed-<s>/`, `parallel` at a time. Every
    directory is checked before the first starts, so a refused one leaves none half-done."""
    for flag, value in (("--replicates", replicates), ("--parallel", parallel)):
        if value < 1:
            raise ConfigError(f"{flag}: must be >= 1, got {value}")
    configs = [dataclasses.replace(config, seed=config.seed + i) for i in range(replicates)]
    parent = Path(out) if out is not None else Path("runs") / f"{config.name}-{cfgmod.config_hash(config)}-x{replicates}"
    if config.track.enabled and not config.track.group:  # the trackers group the seeds by their folder's name
        configs = [dataclasses.replace(c, track=dataclasses.replace(c.track, group=parent.resolve().name)) for c in configs]
    outs = [parent / f"seed-{c.seed}" for c in configs]
    for o, c in zip(outs, configs):
        prepare(RunDir(o), c, resume, force)
    results: list[StudyResult] = []
    for start in range(0, replicates, parallel):
        chunk = slice(start, start + parallel)
        results += run_studies(configs[chunk], outs[chunk], data_dir, resume, force, progress)
    return results


def parallel_batches(cells: list[Cell], k: int) -> list[list[Cell]]:
    """Cells in groups of up to k that can train together (same model, data, schedule, device),
    in plan order."""
    batches: list[list[Cell]] = []
    open_batches: list[list[Cell]] = []
    for cell in cells:
        home = next((b for b in open_batches if len(b) < k and compatible(b[0].config, cell.config) is None), None)
        if home is None:
            home = []
            open_batches.append(home)
            batches.append(home)
        home.append(cell)
    return batches


@dataclass
class CompareResult:
    study_dir: Path
    ran: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    busy: list[Path] = field(default_factory=list)  # being run by another process (another `lth compare`, a cluster job)
    report_dir: Path | None = None
    submitted: list[tuple[str, str]] = field(default_factory=list)  # (cell, job id) left running on a batch system


def extends(earlier: CompareSpec, spec: CompareSpec) -> bool:
    """Whether `spec` is `earlier` with variants or seeds added at the end: every cell of the
    earlier comparison is planned again exactly as it was, so its runs stay valid and are skipped."""
    return ((earlier.name, earlier.base, dict(earlier.overrides)) == (spec.name, spec.base, dict(spec.overrides))
            and spec.variants[:len(earlier.variants)] == earlier.variants and spec.seeds[:len(earlier.seeds)] == earlier.seeds)


def run_comparison(
    spec: CompareSpec,
    out: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    executor: concurrent.futures.Executor | None = None,
    progress: bool | None = None,
    report: bool = True,
    log: Callable[[str], None] = print,
    parallel: int = 1,
    engine: executors.ExecutorSpec | None = None,
    retry_failed: bool = False,
) -> CompareResult:
    """Run every incomplete cell, then write the combined report into `<out>/report/`.

    `parallel` > 1 trains up to that many compatible cells together on one device; each batch
    of cells is one job. `engine` chooses where jobs run (`executor` overrides it with any
    `concurrent.futures.Executor`); on Slurm the jobs are submitted and this returns, and the
    job that completes the study writes the report. `retry_failed` runs only the cells whose
    last job failed."""
    if parallel < 1:
        raise ConfigError(f"--parallel: must be >= 1, got {parallel}")
    engine = engine or executors.ExecutorSpec()
    study = Path(out)
    cells = plan(spec, study)
    stored = study_file(study)
    if stored.exists() and stored.read_text() != spec.to_toml():
        earlier = load_spec(stored)
        if not extends(earlier, spec):
            raise ConfigError(f"{study} holds a different comparison (study.toml); continue it with its own spec, one that only adds "
                              "variants or seeds at the end, or choose another --out")
        log(f"{study}: adding {len(spec.variants) - len(earlier.variants)} variant(s) and {len(spec.seeds) - len(earlier.seeds)} seed(s) "
            "to the comparison; its finished cells are kept")
    for cell in cells:  # refuse before running anything if a cell dir holds a foreign run
        if cell.out.exists() and any(cell.out.iterdir()) and not RunDir(cell.out).is_run() and not RunDir(cell.out).in_use():
            raise ConfigError(f"{cell.out} exists and is not an lth run; choose another --out")
    created = not study.exists()
    engine_executor = executor or executors.build(engine, study) or SequentialExecutor()  # a missing extra: nothing written
    atomic_write(stored, spec.to_toml())
    data = record_data_dir(study, data_dir)
    # Jobs elsewhere (Ray workers, Slurm nodes) get the study by its absolute path.
    where = str(study) if engine.kind == "local" and executor is None else str(study.resolve())
    result = CompareResult(study)
    if isinstance(engine_executor, executors.SlurmSubmitter):  # both waves now, the second after the first
        waves = [_select(cells, wave, study, result, log, retry_failed) for wave in (False, True)]
        try:
            _submit_detached(engine_executor, waves, parallel, where, data, report, study, result, log)
        except ConfigError:
            if created and not result.submitted:  # refused input leaves nothing behind
                shutil.rmtree(study, ignore_errors=True)
            raise
    else:
        for wave in (False, True):  # chosen after the first has run: a ticket held elsewhere leaves its copies waiting
            todo = _select(cells, wave, study, result, log, retry_failed)
            pending = []
            for batch in parallel_batches(todo, parallel):
                for cell in batch:
                    log(f"[{cell.label} seed {cell.seed}] running into {cell.out}")
                pending.append(engine_executor.submit(executors.run_job, where, [c.name for c in batch], data, progress, False))
            for future in pending:
                ran, busy = future.result()  # re-raises a cell's error here
                result.ran += [Path(p) for p in ran]
                result.busy += [Path(p) for p in busy]
                for path in busy:
                    log(f"[{path}] in use by another lth process; left to it")
    if result.submitted:
        log(f"{len(result.submitted)} cell(s) submitted; follow them with: lth status {study} (the last job writes the report)")
    elif result.busy:
        log(f"report not written: {len(result.busy)} cell(s) still run elsewhere; rerun this command (or lth report {study}) when they finish")
    elif report:
        result.report_dir = write_report([study], out=study / "report")
        log(f"report: {result.report_dir / 'report.md'}")
        track.log_report([c.out for c in cells], result.report_dir)
    return result


def _select(cells: list[Cell], wave: bool, study: Path, result: CompareResult, log: Callable[[str], None],
            retry_failed: bool) -> list[Cell]:
    """The cells of one wave (second: those copying another cell's ticket) that need a job:
    incomplete, not run by a live job now, and with `retry_failed` only the failed ones."""
    todo = []
    for cell in (c for c in cells if (c.depends_on is not None) == wave):
        state = cell_status(study, cell)
        if state.state == "done":
            result.skipped.append(cell.out)
            log(f"[{cell.label} seed {cell.seed}] complete, skipped")
        elif state.state == "running" or (state.state == "pending" and state.job):
            result.busy.append(cell.out)
            log(f"[{cell.label} seed {cell.seed}] {state.state} as job {state.job}; left to it")
        elif retry_failed and state.state != "failed":
            log(f"[{cell.label} seed {cell.seed}] {state.state}, not failed: not retried")
        elif cell.depends_on is not None and study / cell.depends_on / f"seed-{cell.seed}" in result.busy:
            result.busy.append(cell.out)
            log(f"[{cell.label} seed {cell.seed}] waits for {cell.depends_on}, which another process is running; left for later")
        else:
            todo.append(cell)
    return todo


def _submit_detached(submitter: executors.SlurmSubmitter, waves: list[list[Cell]], parallel: int, where: str, data: str,
                     report: bool, study: Path, result: CompareResult, log: Callable[[str], None]) -> None:
    """Every wave as one job array (the second after the first has ended), recorded per cell."""
    earlier: list[Any] = []
    for todo in waves:
        batches = parallel_batches(todo, parallel)
        if not batches:
            continue
        jobs = submitter.submit_array([(where, [c.name for c in b], data, report) for b in batches], after=earlier)
        for batch, job in zip(batches, jobs):
            for cell in batch:
                write_job_record(study, cell, state="submitted", job=str(job.job_id), log=str(job.paths.stderr))
                result.submitted.append((cell.name, str(job.job_id)))
            log(f"[{', '.join(c.name for c in batch)}] submitted as Slurm job {job.job_id}")
        earlier = jobs
