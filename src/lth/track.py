"""Experiment trackers (TensorBoard, MLflow, Weights & Biases) that mirror what a study writes.

lth's own files (metrics.jsonl, rounds.csv, report/) stay the record; a tracker is a window on
them for researchers who watch runs where their group already does. Every tracker gets the same:
the resolved config as dotted parameters, the config hash and lth's version as tags, each
evaluation (the metrics.jsonl row) at its global step, each round's summary (the rounds.csv row)
at its round, and the report's figures.

    trackers = Trackers.open(run, config, steps_per_epoch)   # reconnects to the run's tracker runs
    trackers.log_evals(history)                               # only what metrics.jsonl holds
    trackers.log_round(row)                                   # after rounds.csv committed it
    trackers.close(finished=True)

Exactly once, across resumes: `track.json` in the run directory keeps each tracker's run id and
the last global step and round it received; rows at or before them are skipped, and rows it
lacks are replayed from metrics.jsonl / rounds.csv when the study reopens. A kill between a
tracker's write and the record could repeat one evaluation: TensorBoard's readers drop it (the
writer reopens with `purge_step`), MLflow is asked for its own last step; W&B offline cannot be
asked, so there one evaluation may appear twice after such a kill.

A tracker that is missing or fails never costs a result: one warning names it and why, and the
study goes on without it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from lth import __version__
from lth import config as cfgmod
from lth.config import Config
from lth.rundir import RunDir, atomic_write

KINDS = ("tensorboard", "mlflow", "wandb")
_HINT = {"tensorboard": "pip install 'lth[tensorboard]'", "mlflow": "pip install 'lth[mlflow]'", "wandb": "pip install 'lth[wandb]'"}
# Which top-level module a tracker needs, to tell a missing extra from a failure inside it.
_MODULES = {"tensorboard": ("tensorboard", "torch"), "mlflow": ("mlflow",), "wandb": ("wandb",)}
EVAL_SKIP = ("round", "epoch", "step", "seconds")  # metrics.jsonl's position columns, not measurements
ROUND_KEYS = ("remaining_pct", "test_acc_best", "test_acc_final", "test_loss_best", "test_loss_final", "best_step", "best_epoch",
              "best_val_loss", "best_val_acc", "pruned", "energy_kwh", "co2_kg", "seconds")
# An unreachable MLflow server must cost seconds, not MLflow's default minutes of backoff; a
# value the user set wins.
MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


# ---------------------------------------------------------------- pure functions


def flat_params(config: Config) -> dict[str, str | int | float | bool]:
    """The resolved config as dotted keys ("train.lr"), tables included ("prune.rates.conv");
    unset keys are left out, as config.toml leaves them out."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Mapping[str, Any]) -> None:
        for key, value in node.items():
            if isinstance(value, Mapping):
                walk(f"{prefix}{key}.", value)
            else:
                out[prefix + key] = value

    walk("", cfgmod.to_dict(config))
    return out


def round_offsets(config: Config, steps_per_epoch: int) -> list[int]:
    """The global step each round starts at: the lengths of the rounds before it, so that a
    study's evaluations lie on one increasing axis across rounds."""
    offsets, total = [], 0
    for r in range(config.prune.rounds + 1):
        offsets.append(total)
        total += config.train.round_length(r, steps_per_epoch)
    return offsets


def eval_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """The measurements of one metrics.jsonl row (training and validation, or test, loss and
    accuracy), under its own column names."""
    return {k: float(v) for k, v in row.items() if k not in EVAL_SKIP and _number(v)}


def round_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """A rounds.csv row's summary: remaining %, test accuracy of best and final, the
    early-stopping step, energy (absent where it was not measurable, and NaN is left out)."""
    return {k: float(row[k]) for k in ROUND_KEYS if _number(row.get(k))}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def new_evals(rows: Iterable[Mapping[str, Any]], offsets: Sequence[int], after: int) -> list[tuple[int, Mapping[str, Any]]]:
    """(global step, row) of the evaluations after global step `after`: what a tracker that has
    everything up to `after` still lacks."""
    stepped = [(offsets[int(row["round"])] + int(row["step"]), row) for row in rows]
    return [(step, row) for step, row in stepped if step > after]


def run_name(config: Config, run: RunDir) -> str:
    return config.track.name or run.root.name


def reason(kind: str, exc: BaseException) -> str:
    """One line saying why a tracker is off: a missing extra names the pip command."""
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] in _MODULES[kind]:
        return f"{exc.name} is not installed ({_HINT[kind]})"
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= 200 else text[:197] + "..."


# ---------------------------------------------------------------- the adapters, one per tracker


class Adapter(Protocol):
    kind: str

    def start(self, state: dict[str, Any]) -> dict[str, Any]: ...  # connect; what to keep in track.json
    def logged(self) -> tuple[int, int] | None: ...  # (last step, last round) the tracker itself reports
    def params(self, params: Mapping[str, Any], tags: Mapping[str, str]) -> None: ...
    def evals(self, rows: Sequence[tuple[int, Mapping[str, float]]]) -> None: ...
    def round(self, r: int, metrics: Mapping[str, float]) -> None: ...
    def figure(self, path: Path) -> None: ...
    def close(self, finished: bool) -> None: ...


class TensorBoard:
    """torch's SummaryWriter (the `tensorboard` package's event format) in one folder per run."""

    kind = "tensorboard"

    def __init__(self, folder: Path) -> None:
        self.folder, self.writer = folder, None

    def start(self, state: dict[str, Any]) -> dict[str, Any]:
        from torch.utils.tensorboard import SummaryWriter

        # Reopened, events past the recorded step (written just before a kill) are dropped by
        # TensorBoard's readers, and logged again from the run's own files.
        purge = state["step"] + 1 if state.get("dir") == str(self.folder) else None
        self.writer = SummaryWriter(str(self.folder), purge_step=purge)
        return {"dir": str(self.folder)}

    def logged(self) -> tuple[int, int] | None:
        return None

    def params(self, params: Mapping[str, Any], tags: Mapping[str, str]) -> None:
        from torch.utils.tensorboard.summary import hparams

        for summary in hparams({k: v for k, v in params.items()}, {}):
            self.writer.file_writer.add_summary(summary)
        for key, value in tags.items():
            self.writer.add_text(f"lth/{key}", value)
        self.writer.flush()

    def evals(self, rows: Sequence[tuple[int, Mapping[str, float]]]) -> None:
        for step, metrics in rows:
            for key, value in metrics.items():
                self.writer.add_scalar(f"eval/{key}", value, step)
        self.writer.flush()

    def round(self, r: int, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(f"round/{key}", value, r)
        self.writer.flush()

    def figure(self, path: Path) -> None:
        """The PNG as it is (no decoding): an image summary carries encoded bytes and the size."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        data = path.read_bytes()
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")  # the IHDR chunk
        image = Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=data)
        self.writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=f"report/{path.stem}", image=image)]))
        self.writer.flush()

    def close(self, finished: bool) -> None:
        if self.writer is not None:
            self.writer.close()


class MLflow:
    """MLflow's client API against any tracking URI; one MLflow run per lth run, in the
    experiment named by `track.group` (a comparison) or `track.project`."""

    kind = "mlflow"

    def __init__(self, uri: str, experiment: str, name: str) -> None:
        self.uri, self.experiment, self.name, self.client, self.run_id = uri, experiment, name, None, ""

    def start(self, state: dict[str, Any]) -> dict[str, Any]:
        for key, value in MLFLOW_HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial MLflow database tables..." on every new store

        self.client = client = MlflowClient(tracking_uri=self.uri)
        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is None:
            try:
                experiment_id = client.create_experiment(self.experiment, artifact_location=self._artifacts())
            except Exception:  # another cell created it meanwhile
                experiment = client.get_experiment_by_name(self.experiment)
                if experiment is None:
                    raise
                experiment_id = experiment.experiment_id
        else:
            experiment_id = experiment.experiment_id
        if state.get("run_id") and state.get("uri") == self.uri:
            self.run_id = state["run_id"]
            client.update_run(self.run_id, status="RUNNING")  # fails if the run is gone: said in the warning
        else:
            self.run_id = client.create_run(experiment_id, run_name=self.name).info.run_id
        return {"run_id": self.run_id, "uri": self.uri}

    def _artifacts(self) -> str | None:
        """A local sqlite store keeps its artifacts beside the database file, not in the
        working directory (MLflow's default, ./mlruns)."""
        if not self.uri.startswith("sqlite:///"):
            return None
        database = Path(self.uri[len("sqlite:///"):])
        return (database.resolve().parent / "mlartifacts").as_uri()

    def logged(self) -> tuple[int, int] | None:
        """MLflow's own record of the last step and round, which outlives a kill of this process."""
        run = self.client.get_run(self.run_id)
        keys = run.data.metrics
        step = max((m.step for k in keys if k.startswith("eval/") for m in self.client.get_metric_history(self.run_id, k)), default=0)
        rnd = max((m.step for m in self.client.get_metric_history(self.run_id, "round/remaining_pct")), default=-1)
        return step, rnd

    def params(self, params: Mapping[str, Any], tags: Mapping[str, str]) -> None:
        from mlflow.entities import Param, RunTag

        items = [Param(k, str(v)) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 parameters a batch
            self.client.log_batch(self.run_id, params=items[start:start + 100])
        self.client.log_batch(self.run_id, tags=[RunTag(f"lth.{k}", v) for k, v in tags.items()])

    def _metrics(self, rows: Sequence[tuple[int, Mapping[str, float]]], prefix: str) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(f"{prefix}/{k}", v, now, step) for step, values in rows for k, v in values.items()]
        for start in range(0, len(metrics), 1000):  # MLflow's batch limit
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])

    def evals(self, rows: Sequence[tuple[int, Mapping[str, float]]]) -> None:
        self._metrics(rows, "eval")

    def round(self, r: int, metrics: Mapping[str, float]) -> None:
        self._metrics([(r, metrics)], "round")

    def figure(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path), "report")

    def close(self, finished: bool) -> None:
        if self.client is not None and self.run_id:
            self.client.set_terminated(self.run_id, "FINISHED" if finished else "KILLED")


class Wandb:
    """A W&B run ("offline": files under the run directory's `wandb/`, for `wandb sync`). Its
    metrics are plotted against their own axes (global step, round), not W&B's `_step`, so a
    resumed run appends where it left off."""

    kind = "wandb"

    def __init__(self, mode: str, project: str, entity: str, group: str, name: str, folder: Path) -> None:
        self.mode, self.project, self.entity, self.group, self.name, self.folder = mode, project, entity, group, name, folder
        self.run = None

    def start(self, state: dict[str, Any]) -> dict[str, Any]:
        import wandb

        self.folder.mkdir(parents=True, exist_ok=True)
        run_id = state.get("run_id") or uuid.uuid4().hex[:8]
        self.run = run = wandb.init(project=self.project, entity=self.entity or None, group=self.group or None, name=self.name,
                                    id=run_id, resume="allow", mode=self.mode, dir=str(self.folder), reinit="create_new",
                                    settings=wandb.Settings(silent=True, console="off", x_disable_stats=True))
        run.define_metric("eval/global_step")
        run.define_metric("eval/*", step_metric="eval/global_step")
        run.define_metric("round/index")
        run.define_metric("round/*", step_metric="round/index")
        return {"run_id": run_id}

    def logged(self) -> tuple[int, int] | None:
        return None

    def params(self, params: Mapping[str, Any], tags: Mapping[str, str]) -> None:
        self.run.config.update(dict(params), allow_val_change=True)
        self.run.tags = tuple(f"{k}:{v}" for k, v in tags.items())

    def evals(self, rows: Sequence[tuple[int, Mapping[str, float]]]) -> None:
        for step, metrics in rows:
            self.run.log({"eval/global_step": step, **{f"eval/{k}": v for k, v in metrics.items()}})

    def round(self, r: int, metrics: Mapping[str, float]) -> None:
        self.run.log({"round/index": r, **{f"round/{k}": v for k, v in metrics.items()}})

    def figure(self, path: Path) -> None:
        self.run.save(str(path), base_path=str(path.parent), policy="now")

    def close(self, finished: bool) -> None:
        if self.run is not None:
            self.run.finish(exit_code=0 if finished else 1)


def adapters(run: RunDir, config: Config) -> list[Adapter]:
    """The trackers the config asks for, unconnected."""
    t, name = config.track, run_name(config, run)
    chosen: list[Adapter] = []
    if t.tensorboard:
        folder = Path(t.tensorboard_dir).expanduser() / (t.group or ".") / name if t.tensorboard_dir else run.tensorboard
        chosen.append(TensorBoard(folder))
    if t.mlflow:
        chosen.append(MLflow(t.mlflow, t.group or t.project, name))
    if t.wandb != "off":
        chosen.append(Wandb(t.wandb, t.project, t.entity, t.group, name, run.root))
    return chosen


# ---------------------------------------------------------------- one study's trackers


class Trackers:
    """The trackers of one study. Every call is safe: a tracker that raises is warned about once
    and dropped, and the study goes on."""

    def __init__(self, run: RunDir, config: Config, offsets: Sequence[int], live: list[Adapter], state: dict[str, Any]) -> None:
        self.run, self.config, self.offsets, self.live, self.state = run, config, offsets, live, state

    @classmethod
    def open(cls, run: RunDir, config: Config, steps_per_epoch: int) -> Trackers:
        """Connect to the run's trackers (its earlier tracker runs on a resume) and send each what
        it lacks of the run's own files."""
        state = _read_state(run) if config.track.enabled else {}
        trackers = cls(run, config, round_offsets(config, steps_per_epoch), [], state)
        for adapter in adapters(run, config):
            trackers._start(adapter)
        if trackers.live:
            trackers.log_evals(run.read_metrics())
            for row in run.read_rounds():
                trackers.log_round(row)
        return trackers

    def _start(self, adapter: Adapter) -> None:
        before = self.state.get(adapter.kind, {})
        try:
            kept = adapter.start(before)
            same = bool(before) and all(before.get(k) == v for k, v in kept.items())  # the same tracker run as before
            record = {**kept, "step": before["step"], "round": before["round"]} if same else {**kept, "step": 0, "round": -1}
            if (asked := adapter.logged()) is not None:
                record["step"], record["round"] = max(record["step"], asked[0]), max(record["round"], asked[1])
            if not same:
                adapter.params(flat_params(self.config), {"config_hash": cfgmod.config_hash(self.config), "version": __version__})
        except (Exception, SystemExit) as exc:
            self._drop(adapter, exc)
            return
        self.state[adapter.kind] = record
        self.live.append(adapter)
        self._save()

    def _drop(self, adapter: Adapter, exc: BaseException) -> None:
        print(f"lth: warning: {adapter.kind} tracking is off for {self.run.root}: {reason(adapter.kind, exc)}; "
              "the study goes on and its own files are complete", file=sys.stderr, flush=True)
        if adapter in self.live:
            self.live.remove(adapter)
        try:
            adapter.close(False)
        except (Exception, SystemExit):
            pass

    def _each(self, call: Any) -> None:
        for adapter in list(self.live):
            try:
                call(adapter, self.state[adapter.kind])
            except (Exception, SystemExit) as exc:
                self._drop(adapter, exc)
        self._save()

    def log_evals(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Evaluations that the run's files hold (metrics.jsonl rows); each tracker gets those past its last step."""
        rows = list(rows)

        def send(adapter: Adapter, record: dict[str, Any]) -> None:
            todo = [(step, eval_metrics(row)) for step, row in new_evals(rows, self.offsets, record["step"])]
            if todo:
                adapter.evals(todo)
                record["step"] = todo[-1][0]

        if rows and self.live:
            self._each(send)

    def log_round(self, row: Mapping[str, Any]) -> None:
        """A committed round (its rounds.csv row), once per tracker."""

        def send(adapter: Adapter, record: dict[str, Any]) -> None:
            if int(row["round"]) > record["round"]:
                adapter.round(int(row["round"]), round_metrics(row))
                record["round"] = int(row["round"])

        if self.live:
            self._each(send)

    def log_figures(self, paths: Sequence[Path]) -> None:
        """The report's figures (PNG files)."""
        if self.live and paths:
            self._each(lambda adapter, record: [adapter.figure(p) for p in paths])

    def close(self, finished: bool = False) -> None:
        for adapter in list(self.live):
            try:
                adapter.close(finished)
            except (Exception, SystemExit) as exc:
                self._drop(adapter, exc)
        self.live = []

    def _save(self) -> None:
        if self.state:
            atomic_write(self.run.track_state, json.dumps(self.state, indent=1) + "\n")


def _read_state(run: RunDir) -> dict[str, Any]:
    """track.json, or nothing: a damaged record costs a duplicate at worst, never the study."""
    try:
        state = json.loads(run.track_state.read_text())
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


def log_report(run_dirs: Sequence[Path], report_dir: Path) -> None:
    """After a report is drawn: its figures to the tracker runs of the runs it covers."""
    figures = sorted(report_dir.glob("*.png"))
    for root in run_dirs:
        run = RunDir(root)
        try:
            config = run.read_config()
        except Exception:  # noqa: BLE001 - a run the report skipped is skipped here too
            continue
        if config.track.enabled and figures:
            trackers = Trackers.open(run, config, _steps_per_epoch(config))
            trackers.log_figures(figures)
            trackers.close(finished=len(run.read_rounds()) == config.prune.rounds + 1)


def _steps_per_epoch(config: Config) -> int:
    return math.ceil(config.data.train_images / config.train.batch_size)
