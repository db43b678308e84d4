"""Where the cells of a comparison study run: in this process (`local`), as Slurm jobs through
submitit (`slurm`), or as Ray tasks (`ray`). The engines schedule; lth only says what a job is.

A job is "run these cells of the study in this directory" (`run_job`): it reads the study's
spec from `study.toml`, plans it again and trains the named cells from their own run
directories, so nothing but paths and cell names is ever pickled, and a job can run twice or
anywhere the study directory is visible. Finished cells are skipped and the run-directory lock
keeps two jobs off one cell. Each job records what it is doing (`lth.cells.write_job_record`), which
is what `lth status` reads.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import io
import os
import signal
import socket
import subprocess
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lth import track
from lth.cells import cells_named, is_complete, job_record, jobs_dir, read_job_record, run_cells, write_job_record
from lth.config import ConfigError
from lth.report import write_report

KINDS = ("local", "slurm", "ray")
SLURM_KEYS = {  # lth's short names → submitit's parameters; any other key goes to sbatch as --KEY=VALUE
    "partition": ("slurm_partition", str),
    "gpus": ("gpus_per_node", int),
    "cpus": ("cpus_per_task", int),
    "mem": ("slurm_mem", str),
    "time": ("timeout_min", int),
    "parallelism": ("slurm_array_parallelism", int),
    "signal_delay": ("slurm_signal_delay_s", int),
}
RAY_KEYS = {"address": str, "cpus": float, "gpus": float, "local_cpus": int}


@dataclass(frozen=True)
class ExecutorSpec:
    """An engine and its options, as given by `--executor KIND`, `--executor.KEY VALUE` and a
    study file's `[executor]` table (the command line wins)."""

    kind: str = "local"
    options: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown executor {self.kind!r}; choose one of: {', '.join(KINDS)}")
        known = {"local": {}, "slurm": None, "ray": RAY_KEYS}[self.kind]
        unknown = [k for k in self.options if known is not None and k not in known]
        if unknown:
            hint = f"; known: {', '.join(known)}" if known else " (it takes none)"
            raise ConfigError(f"--executor.{unknown[0]}: not an option of the {self.kind} executor{hint}")

    @property
    def detached(self) -> bool:
        """Jobs outlive the submitting command (a batch system): it submits and returns."""
        return self.kind == "slurm"


def executor_spec(table: dict[str, Any], kind: str | None, tokens: Sequence[str]) -> ExecutorSpec:
    """Merge a study file's `[executor]` table, `--executor KIND` and `--executor.KEY VALUE` tokens."""
    chosen = kind or str(table.get("kind", "local"))
    same_engine = chosen == str(table.get("kind", "local"))  # a table for another engine does not apply
    options = {str(k): str(v) for k, v in table.items() if k != "kind" and same_engine}
    options.update(dict(zip(tokens[::2], tokens[1::2])))
    return ExecutorSpec(chosen, options)


def split_executor_tokens(extra: list[str]) -> tuple[list[str], list[str]]:
    """(`--executor.KEY VALUE` pairs as KEY, VALUE, ...; the other tokens) from unparsed arguments."""
    mine, rest, i = [], [], 0
    while i < len(extra):
        token = extra[i]
        if token.startswith("--executor."):
            key, eq, value = token[len("--executor."):].partition("=")
            if not eq:
                if i + 1 >= len(extra):
                    raise ConfigError(f"{token} needs a value, e.g. {token} VALUE")
                value, i = extra[i + 1], i + 1
            mine += [key, value]
        else:
            rest.append(token)
        i += 1
    return mine, rest


def _convert(key: str, value: str, kind: type) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise ConfigError(f"--executor.{key}: expected {kind.__name__}, got {value!r}") from None


def _missing_extra(kind: str, exc: ImportError) -> ConfigError:
    package = {"slurm": "submitit", "ray": "ray"}[kind]
    return ConfigError(f"--executor {kind} needs {package}, which is not installed ({exc.name or exc}); pip install 'lth[{kind}]'")


# ---------------------------------------------------------------- building the engines


class RayExecutor(concurrent.futures.Executor):
    """One Ray task per call, with its resources (fractional GPUs allowed); Ray's own futures."""

    def __init__(self, options: dict[str, str]) -> None:
        try:
            import ray
        except ImportError as exc:
            raise _missing_extra("ray", exc) from None
        values = {k: _convert(k, v, RAY_KEYS[k]) for k, v in options.items()}
        if not ray.is_initialized():
            if "address" in values:
                ray.init(address=values["address"], log_to_driver=False)
            else:
                ray.init(num_cpus=values.get("local_cpus", os.cpu_count()), log_to_driver=False, include_dashboard=False)
        self._ray = ray
        self._resources = {"num_cpus": values.get("cpus", 1), "num_gpus": values.get("gpus", 0), "max_retries": 0}

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        task = self._ray.remote(**self._resources)(fn).remote(*args, **kwargs).future()
        future: concurrent.futures.Future = concurrent.futures.Future()

        def settle(done: concurrent.futures.Future) -> None:  # the task's own error, not Ray's wrapper with its traceback
            exc = done.exception()
            future.set_exception(getattr(exc, "cause", None) or exc) if exc is not None else future.set_result(done.result())

        task.add_done_callback(settle)
        return future


class SlurmSubmitter:
    """Job arrays through submitit, logs in `<study>/jobs/slurm/`. Submits and returns: the
    jobs outlive the command, and the last one writes the report."""

    def __init__(self, options: dict[str, str], folder: Path) -> None:
        try:
            import submitit
        except ImportError as exc:
            raise _missing_extra("slurm", exc) from None
        params: dict[str, Any] = {"timeout_min": 60 * 24, "cpus_per_task": 1}
        extras: dict[str, str] = {}
        for key, value in options.items():
            if key in SLURM_KEYS:
                name, kind = SLURM_KEYS[key]
                params[name] = _convert(key, value, kind)
            else:
                extras[key.replace("_", "-")] = value
        self._executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        self._params, self._extras = params, extras

    def submit_array(self, args: list[tuple[Any, ...]], after: Sequence[Any] = ()) -> list[Any]:
        """One array task per argument tuple of `CellJob`; `after`: jobs that must end first."""
        import submitit

        extras = dict(self._extras)
        if after:
            extras["dependency"] = "afterany:" + ":".join(sorted({str(j.job_id).split("_")[0] for j in after}))
        try:
            self._executor.update_parameters(name="lth", slurm_additional_parameters=extras, **self._params)
            with contextlib.redirect_stderr(io.StringIO()):  # submitit echoes sbatch's stderr; its message is ours to give
                return self._executor.map_array(CellJob(), *zip(*args))
        except (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError, OSError) as exc:
            raise ConfigError(f"Slurm refused the jobs: {_engine_message(exc)}") from None
        except (ValueError, TypeError) as exc:  # submitit's own check of the parameters
            raise ConfigError(f"--executor slurm: {_engine_message(exc)}") from None


def _engine_message(exc: BaseException) -> str:
    """The engine's own line (e.g. `sbatch: error: invalid partition specified: x`): the first
    saying "error", else the first."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    return next((line for line in lines if "error" in line.lower()), lines[0])[:300]


# ---------------------------------------------------------------- the job


def current_job() -> tuple[str, str | None]:
    """(job id, log file) of the process running a job: Slurm's array id and submitit's log,
    Ray's task id, or this process (local)."""
    if "SUBMITIT_FOLDER" in os.environ and "SLURM_JOB_ID" in os.environ:
        import submitit

        env = submitit.JobEnvironment()
        return env.job_id, str(env.paths.stderr)
    try:
        import ray

        if ray.is_initialized() and ray.get_runtime_context().get_task_id():
            return f"ray:{ray.get_runtime_context().get_task_id()}", None
    except ImportError:
        pass
    return f"local:{socket.gethostname()}:{os.getpid()}", None


def run_job(study: str, cells: Sequence[str], data_dir: str | None, progress: bool | None = False,
            report: bool = False) -> tuple[list[str], list[str]]:
    """Run cells (`<variant>/seed-<s>`) of the study in `study`, as they are on disk; (cells
    run, cells another process holds). With `report`, the job that completes the study writes
    its report. Every engine calls this."""
    study_dir = Path(study)
    chosen = cells_named(study_dir, cells)
    job, log = current_job()
    before = {cell.name: read_job_record(study_dir, cell) for cell in chosen}
    for cell in chosen:
        write_job_record(study_dir, cell, state="running", job=job, log=log, host=socket.gethostname(), pid=os.getpid())
    try:
        ran, busy = run_cells(chosen, data_dir, progress)
    except KeyboardInterrupt as exc:  # a signal: the position is saved; the engine may requeue the job
        for cell in chosen:
            write_job_record(study_dir, cell, state="stopped", job=job, log=log, error=f"stopped by {type(exc).__name__} ({exc})")
        raise
    except BaseException as exc:
        line = f"{type(exc).__name__}: {exc}".splitlines()[0]
        for cell in chosen:
            if not is_complete(cell):
                write_job_record(study_dir, cell, state="failed", job=job, log=log, error=line,
                                 traceback="".join(traceback.format_exception(exc))[-4000:])
        raise
    held = {Path(p).resolve() for p in busy}
    for cell in chosen:
        if cell.out.resolve() not in held:
            write_job_record(study_dir, cell, state="done", job=job, log=log)
        elif before[cell.name]:  # another job holds it: its record stands
            write_job_record(study_dir, cell, **{k: v for k, v in before[cell.name].items() if k != "cell"})
        else:
            job_record(study_dir, cell).unlink(missing_ok=True)
    if report:
        _report_if_complete(study_dir)
    return [str(p) for p in ran], [str(p) for p in busy]


def _report_if_complete(study: Path) -> None:
    """The job that finishes the last cell writes the report; a lock keeps two from writing at once."""
    if not all(is_complete(c) for c in cells_named(study, None)):
        return
    lock_path = jobs_dir(study) / ".report.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        report_dir = write_report([study], out=study / "report")
        print(f"report: {report_dir / 'report.md'}", flush=True)
        track.log_report([c.out for c in cells_named(study, None)], report_dir)


class CellJob:
    """submitit's callable: `run_job` plus checkpointing. On submitit's preemption/time-out
    signal (USR2) lth saves its position at the next iteration, as on SIGTERM, and submitit
    then requeues this same job (`checkpoint` returns it unchanged: the state is on disk)."""

    def __call__(self, study: str, cells: Sequence[str], data_dir: str | None, report: bool) -> tuple[list[str], list[str]]:
        requeue = signal.getsignal(signal.SIGUSR2)  # submitit's checkpoint-and-requeue
        outside = signal.getsignal(signal.SIGTERM)  # submitit's (it ignores SIGTERM); lth's own while training
        asked: list[int] = []

        def on_usr2(signum: int, frame: Any) -> None:
            asked.append(signum)
            if signal.getsignal(signal.SIGTERM) == outside:  # not training: nothing to save, requeue now
                requeue(signum, frame)
            else:
                os.kill(os.getpid(), signal.SIGTERM)  # lth saves the position after this iteration

        signal.signal(signal.SIGUSR2, on_usr2)
        try:
            return run_job(study, cells, data_dir, progress=False, report=report)
        except KeyboardInterrupt:
            if not asked:
                raise
            for cell in cells_named(Path(study), cells):
                write_job_record(Path(study), cell, state="requeued", job=current_job()[0], log=current_job()[1])
            requeue(signal.SIGUSR2, None)  # submitit: checkpoint, `scontrol requeue`, exit
            raise

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def build(spec: ExecutorSpec, study: Path) -> concurrent.futures.Executor | SlurmSubmitter | None:
    """The engine for `spec` (None: lth's in-process default)."""
    if spec.kind == "slurm":
        return SlurmSubmitter(spec.options, study / "jobs" / "slurm")
    if spec.kind == "ray":
        return RayExecutor(spec.options)
    return None


def slurm_job_state(job_id: str) -> str | None:
    """Slurm's state of a job (PENDING, RUNNING, ...), or None when Slurm no longer lists it."""
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
