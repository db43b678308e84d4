"""Experiment trackers against the real libraries, no mocks: a tiny real study logs to TensorBoard,
an MLflow sqlite store and W&B offline, and each is read back with its own reader (TensorBoard's
EventAccumulator, MlflowClient, W&B's protobuf records from its offline file) and compared with
metrics.jsonl and rounds.csv; a run killed mid-round and resumed has each evaluation once; an
unreachable server or a missing package costs one warning."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY_OVERRIDES, tiny_config
from lth import config as cfgmod
from lth.rundir import RunDir
from lth.study import run_study
from lth.track import flat_params, new_evals, reason, round_offsets
from test_resume import kill_when, lth

SHORT = {"train.initial_epochs": "3", "train.epochs": "3", "prune.rounds": "1", "energy.tracker": "off"}


# ---------------------------------------------------------------- readers, each the tracker's own


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def tensorboard_hparams(folder: Path) -> dict[str, object]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(folder))
    acc.Reload()
    data = plugin_data_pb2.HParamsPluginData.FromString(acc.PluginTagToContent("hparams")["_hparams_/session_start_info"])
    return {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in data.session_start_info.hparams.items()}


def mlflow_run(uri: str, run: RunDir):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    run_id = json.loads(run.track_state.read_text())["mlflow"]["run_id"]
    history = lambda key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]  # noqa: E731
    return client.get_run(run_id), history


def wandb_records(run: RunDir) -> list:
    """Every record of the run's offline files (one per process that logged to it), in order.
    wandb 0.31 has no Python reader of its `.wandb` log, so its framing (LevelDB's log: 32 KiB
    blocks, 7-byte record headers, records split first/middle/last) is read here and each record
    parsed with wandb's own protobuf."""
    from wandb.proto import wandb_internal_pb2 as pb

    run_id = json.loads(run.track_state.read_text())["wandb"]["run_id"]
    records = []
    for path in sorted(run.root.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb")):
        data, pos, block, pending = path.read_bytes(), 7, 32768, b""
        assert data[:4] == b":W&B"
        while pos + 7 <= len(data):
            left = block - pos % block
            length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
            if left < 7 or (length == 0 and kind == 0):
                pos += left
                continue
            payload, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
            pending = payload if kind in (1, 2) else pending + payload
            if kind in (1, 4):
                records.append(pb.Record.FromString(pending))
    return records


def wandb_history(run: RunDir) -> list[dict[str, object]]:
    rows = []
    for record in wandb_records(run):
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
    return rows


def wandb_config(run: RunDir) -> dict[str, object]:
    config = {}
    for record in wandb_records(run):
        if record.WhichOneof("record_type") == "config":
            config.update({u.key: json.loads(u.value_json) for u in record.config.update})
    return config


def once_each(steps: list[int]) -> bool:
    return len(steps) == len(set(steps))


# ---------------------------------------------------------------- the tests


def test_tracking_settings_leave_the_hash_and_errors_name_the_fix():
    base = tiny_config()
    tracked = cfgmod.apply_overrides(base, {"track.tensorboard": "true", "track.mlflow": "sqlite:///mlflow.db", "track.wandb": "offline"})
    assert cfgmod.config_hash(tracked) == cfgmod.config_hash(base) and "track" not in cfgmod.computed(tracked)
    for bad, words in (({"track.mlflow": "mlflow.db"}, "sqlite:///"), ({"track.wandb": "yes"}, "offline"),
                       ({"track.tensorboard_dir": "tb"}, "track.tensorboard = true")):
        with pytest.raises(cfgmod.ConfigError, match=words):
            cfgmod.apply_overrides(base, bad)


def test_pure_parts():
    config = cfgmod.apply_overrides(tiny_config(), {"prune.scope": "layer", "prune.rates.conv": "0.2"})
    params = flat_params(config)
    assert params["train.lr"] == 1e-3 and params["prune.rates.conv"] == 0.2 and "data.train_size" in params
    assert round_offsets(config, 2) == [0, 24, 48]  # 12 epochs of 2 iterations a round
    rows = [{"round": 0, "step": 2}, {"round": 0, "step": 24}, {"round": 1, "step": 2}]
    assert [s for s, _ in new_evals(rows, [0, 24, 48], after=24)] == [26]
    missing = ModuleNotFoundError("No module named 'wandb'", name="wandb")
    assert reason("wandb", missing) == "wandb is not installed (pip install 'lth[wandb]')"


def test_every_tracker_mirrors_metrics_and_rounds(data_root, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = cfgmod.apply_overrides(tiny_config(), {**SHORT, "track.tensorboard": "true", "track.mlflow": uri, "track.wandb": "offline"})
    run = RunDir(run_study(config, out=tmp_path / "run", data_dir=data_root, progress=False).run_dir)
    assert "warning" not in capsys.readouterr().err
    metrics, rounds = run.read_metrics(), run.read_rounds()
    steps = [m["step"] + (0, 6)[m["round"]] for m in metrics]  # global: round 1 starts after round 0's 3 epochs of 2 iterations
    val_loss = [m["val_loss"] for m in metrics]

    scalars = tensorboard_scalars(run.tensorboard)
    assert [s for s, _ in scalars["eval/val_loss"]] == steps
    assert [v for _, v in scalars["eval/val_loss"]] == pytest.approx(val_loss, rel=1e-6)  # stored as float32
    assert [v for _, v in scalars["round/test_acc_best"]] == pytest.approx([r["test_acc_best"] for r in rounds])
    hparams = tensorboard_hparams(run.tensorboard)
    assert hparams["train.lr"] == pytest.approx(1e-3) and hparams["model"] == "seed-cnn"

    mlrun, history = mlflow_run(uri, run)
    assert history("eval/val_loss") == list(zip(steps, val_loss))
    assert history("eval/train_acc") == list(zip(steps, [m["train_acc"] for m in metrics]))
    assert history("round/test_acc_best") == [(r["round"], r["test_acc_best"]) for r in rounds]
    assert history("round/remaining_pct") == [(r["round"], r["remaining_pct"]) for r in rounds]
    assert mlrun.data.params == {k: str(v) for k, v in flat_params(run.read_config()).items()}  # as it ran (layout pinned)
    assert mlrun.data.tags["lth.config_hash"] == cfgmod.config_hash(config) and mlrun.info.status == "FINISHED"

    history = wandb_history(run)
    evals = [h for h in history if "eval/global_step" in h]
    assert [(h["eval/global_step"], h["eval/val_loss"]) for h in evals] == list(zip(steps, val_loss))
    assert [(h["round/index"], h["round/test_acc_final"]) for h in history if "round/index" in h] == [
        (r["round"], r["test_acc_final"]) for r in rounds]
    assert wandb_config(run)["train.lr"] == 1e-3


def test_killed_mid_round_and_resumed_logs_each_evaluation_once(data_root, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out, run = tmp_path / "run", RunDir(tmp_path / "run")
    args = ["--preset", "quick", *[a for k, v in {**TINY_OVERRIDES, "prune.rounds": "1"}.items() for a in (f"--{k}", v)],
            "--track.tensorboard", "true", "--track.mlflow", uri, "--track.wandb", "offline", "--no-energy", "--no-progress"]
    start = lth("run", *args, "--out", str(out), "--data-dir", str(data_root))
    kill_when(start, lambda: sum(m["round"] == 1 for m in run.read_metrics()) >= 3, delay=0.2)
    assert len(run.read_rounds()) == 1
    done = subprocess.run(lth("resume", str(out), "--data-dir", str(data_root), "--no-progress"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    metrics = run.read_metrics()
    offsets = round_offsets(run.read_config(), 2)
    steps = [offsets[m["round"]] + m["step"] for m in metrics]
    assert len(steps) == 24

    tb = tensorboard_scalars(run.tensorboard)["eval/val_loss"]
    assert [s for s, _ in tb] == steps and [v for _, v in tb] == pytest.approx([m["val_loss"] for m in metrics], rel=1e-6)
    _, history = mlflow_run(uri, run)
    assert history("eval/val_loss") == list(zip(steps, [m["val_loss"] for m in metrics]))
    assert [s for s, _ in history("round/test_acc_best")] == [0, 1]
    wb = [h["eval/global_step"] for h in wandb_history(run) if "eval/global_step" in h]
    # W&B offline is asynchronous: what its service had not written when the process was killed is
    # lost with it, never doubled (the steps it holds are each there once, in order).
    assert once_each(wb) and wb == sorted(wb) and set(wb) <= set(steps)


def test_an_unreachable_server_costs_one_warning(data_root, tmp_path, capsys):
    config = cfgmod.apply_overrides(tiny_config(), {**SHORT, "track.mlflow": "http://127.0.0.1:9", "track.tensorboard": "true"})
    started = time.monotonic()
    result = run_study(config, out=tmp_path / "run", data_dir=data_root, progress=False)
    err = capsys.readouterr().err
    assert time.monotonic() - started < 120
    warnings = [line for line in err.splitlines() if "warning" in line.lower() or "retry" in line.lower()]
    assert len(warnings) == 1 and "mlflow" in warnings[0] and "study goes on" in warnings[0], err
    run = RunDir(result.run_dir)
    assert len(run.read_rounds()) == 2 and len(run.read_metrics()) == 6
    assert len(tensorboard_scalars(run.tensorboard)["eval/val_loss"]) == 6  # the other tracker went on


def test_a_missing_package_names_its_extra(data_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: `import wandb` raises ModuleNotFoundError
    config = cfgmod.apply_overrides(tiny_config(), {**SHORT, "prune.rounds": "0", "track.wandb": "offline"})
    run = RunDir(run_study(config, out=tmp_path / "run", data_dir=data_root, progress=False).run_dir)
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "pip install 'lth[wandb]'" in err, err
    assert len(run.read_rounds()) == 1 and not math.isnan(run.read_rounds()[0]["test_acc_best"])


def test_quick_cli_run_shows_the_run_in_tensorboard_and_mlflow_with_the_report_figures(data_root, tmp_path):
    """The issue's check as a user runs it: `lth run ... --track.tensorboard true --track.mlflow
    sqlite:///mlflow.db` (a path relative to the working directory)."""
    args = ["--preset", "quick", *[a for k, v in {**TINY_OVERRIDES, **SHORT}.items() for a in (f"--{k}", v)]]
    done = subprocess.run(lth("run", *args, "--out", "run", "--data-dir", str(data_root), "--no-progress",
                              "--track.tensorboard", "true", "--track.mlflow", "sqlite:///mlflow.db"),
                          cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0 and "warning" not in done.stderr, done.stderr
    run = RunDir(tmp_path / "run")
    metrics, rounds = run.read_metrics(), run.read_rounds()
    figures = sorted(p.name for p in (run.root / "report").glob("*.png"))
    assert figures

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run.tensorboard), size_guidance={"images": 0})
    acc.Reload()
    assert [v for _, v in tensorboard_scalars(run.tensorboard)["eval/val_loss"]] == pytest.approx([m["val_loss"] for m in metrics], rel=1e-6)
    assert sorted(f"{tag[len('report/'):]}.png" for tag in acc.Tags()["images"]) == figures

    mlrun, history = mlflow_run(f"sqlite:///{tmp_path / 'mlflow.db'}", run)
    assert [v for _, v in history("eval/val_loss")] == [m["val_loss"] for m in metrics]
    assert [v for _, v in history("round/test_acc_best")] == [r["test_acc_best"] for r in rounds]
    assert mlrun.data.params["train.batch_size"] == "10" and mlrun.data.tags["lth.version"]
    from mlflow.tracking import MlflowClient

    listed = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").list_artifacts(mlrun.info.run_id, "report")
    assert sorted(Path(a.path).name for a in listed) == figures
    assert not (tmp_path / "mlruns").exists()  # the artifacts lie beside the database, not in the working directory


def test_a_comparison_groups_its_cells_and_names_each(data_root, tmp_path):
    """`lth compare` with MLflow on: one experiment named after the study, one run per cell named
    as `lth status` names it, each with the cell's own evaluations."""
    from mlflow.tracking import MlflowClient

    from lth import cells, compare

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = {k: v for k, v in {**TINY_OVERRIDES, **SHORT}.items() if k != "name"}
    spec = cells.CompareSpec(name="tracked", base="quick", seeds=(0,), overrides=tuple({**overrides, "track.mlflow": uri}.items()),
                             variants=((("prune.criterion", "magnitude"),), (("prune.criterion", "random"),)))
    compare.run_comparison(spec, tmp_path / "study", data_dir=data_root, progress=False, report=False, log=lambda _: None)
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tracked").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["magnitude/seed-0", "random/seed-0"]
    for r in runs:
        folder = tmp_path / "study" / r.info.run_name
        evals = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert [m.value for m in client.get_metric_history(r.info.run_id, "eval/val_loss")] == pytest.approx([e["val_loss"] for e in evals])
