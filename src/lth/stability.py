"""Linear mode connectivity (Frankle et al. 2020): is a round's ticket stable to SGD noise? K copies
train from one start (the round's mask and rewind point) with different data orders; the test error
along the straight line between two copies' final weights gives the *instability*: the highest error
on the path minus the mean of its two ends. They call a network stable when it is at most 2%.

A measurement (a *job*) is a round and a start point: the round's own rewind point, or iteration k of
round 0 (`--rewind-sweep`), reached by replaying round 0 from θ0 with the study's data seed (exact on
a CPU: the data order is a pure function of (seed, round, epoch) and Adam starts fresh each round).
Copies from iteration k train the round's remaining T − k iterations, as in the paper. The copies'
position is saved at every evaluation (`RunDir.stability_resume`), so a killed job continues
mid-copy; a job's rows reach stability.csv together, so a finished job is never redone."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from itertools import combinations
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save

from lth.config import Config, ConfigError
from lth.data import Splits, input_transform, splits_for
from lth.engine import StateDict, evaluate_model
from lth.masks import Masks
from lth.models import model_for
from lth.rundir import RunDir, RunDirError, atomic_write, claimed
from lth.seeds import derive_seed, study_seeds
from lth.schedule import is_constant
from lth.study import check_same_data, fine_tunes, recorded_data_dir, resolve_device, rewind_weights
from lth.signals import stop_on_signals
from lth.train import Member, RoundState, Stopped, steps_per_epoch, train_rounds

STABLE = 0.02  # Frankle et al. 2020: stable when the instability is at most 2% test error
COLUMNS = ("round", "rewind", "rewind_step", "remaining_pct", "pair", "copies", "points", "instability", "stable", "error_a", "error_b", "path")


def copy_seed(seed: int, copy: int) -> int:
    """Copy `copy`'s data seed: its own purpose label in the seed protocol, so no copy sees the study's order."""
    return derive_seed(seed, "stability", copy)


def instability(path: Sequence[float]) -> float:
    """Frankle et al.'s instability: the error barrier above the mean of the path's two ends."""
    return max(path) - (path[0] + path[-1]) / 2


def interpolate(a: StateDict, b: StateDict, alpha: float, masks: Masks) -> StateDict:
    """(1 − α)·a + α·b, exactly a at α = 0 and b at α = 1, with pruned weights at zero. Batch norm's
    running statistics are interpolated like the weights; its batch counter (an integer, unused
    when evaluating) is a's up to the midpoint and b's after it."""

    def point(k: str) -> torch.Tensor:
        if not a[k].is_floating_point():
            return a[k] if alpha <= 0.5 else b[k]
        return torch.lerp(a[k], b[k], alpha) * masks[k].to(a[k]) if k in masks else torch.lerp(a[k], b[k], alpha)

    return {k: point(k) for k in a}


def error_path(config: Config, a: StateDict, b: StateDict, masks: Masks, splits: Splits, points: int) -> list[float]:
    """Test error at `points` evenly spaced points from a to b, evaluated as training evaluates."""
    model = model_for(config, 0).to(splits.test_x.device)
    prepare = input_transform(splits.normalization, splits.test_x.device)  # scaled as training scaled them
    errors = []
    for i in range(points):
        model.load_state_dict(interpolate(a, b, i / (points - 1), masks))
        with torch.autocast(splits.test_x.device.type, torch.bfloat16, enabled=config.train.precision == "bf16", cache_enabled=False):
            errors.append(1.0 - evaluate_model(model, splits.test_x, splits.test_y, config.train.eval_batch_size, prepare)[1])
    return errors


class Progress:
    """A job's copies on disk: finished copies' final weights and unfinished ones' `RoundState`,
    in one file replaced as a unit; a file of another job is ignored."""

    def __init__(self, run: RunDir, job: dict[str, Any]) -> None:
        self.path, self.job = run.stability_resume, job
        self.finals: dict[int, StateDict] = {}
        self.errors: dict[int, float] = {}  # each finished copy's test error, as its training measured it
        self.states: dict[int, RoundState] = {}
        if (path := self.path).exists():
            try:
                with safe_open(str(path), framework="pt") as f:
                    meta, tensors = json.loads((f.metadata() or {})["lth_stability"]), {k: f.get_tensor(k) for k in f.keys()}
            except Exception as exc:  # a damaged file: one line, and how to go on
                raise RunDirError(f"{path} is not a readable stability state ({type(exc).__name__}); delete it to restart the job") from None
            if meta["job"] == job:
                part = lambda p: {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}  # noqa: E731
                self.finals = {int(i): part(f"final/{i}/") for i in meta["done"]}
                self.errors = {int(i): e for i, e in meta["errors"].items()}
                self.states = {int(i): RoundState.from_file(part(f"copy/{i}/"), m) for i, m in meta["states"].items()}

    def save(self) -> None:
        tensors = {f"final/{i}/{k}": v for i, w in self.finals.items() for k, v in w.items()}
        metas = {}
        for i, state in self.states.items():
            t, metas[str(i)] = state.to_file()
            tensors.update({f"copy/{i}/{k}": v for k, v in t.items()})
        meta = {"job": self.job, "done": sorted(self.finals), "errors": self.errors, "states": metas}
        atomic_write(  # not RunDir.save: a scratch file, kept out of the run's checksums
            self.path, save({k: v.contiguous() for k, v in tensors.items()}, metadata={"lth_stability": json.dumps(meta)}))


def train_copies(config: Config, masks: Masks, start: StateDict, seeds: Sequence[int], round_index: int, length: int,
                 splits: Splits, together: bool, progress: Progress,
                 stop: Callable[[], bool] = lambda: False) -> tuple[list[StateDict], list[float]]:
    """Each copy's final weights and their test error after `length` iterations from `start` (a fresh optimizer, data order
    from its seed); copies still to train go together (stacked) or one by one, from `progress`."""
    cfg = replace(config.train, steps=length)
    pending: dict[int, list[int]] = {}
    for i in [i for i in range(len(seeds)) if i not in progress.finals]:
        pending.setdefault(progress.states[i].steps_done if i in progress.states else 0, []).append(i)
    for group in [g for gs in pending.values() for g in ([gs] if together else [[i] for i in gs])]:
        members = []
        for i in group:
            model = model_for(config, 0)
            model.load_state_dict(start)

            def on_eval(state: RoundState, i: int = i) -> None:
                progress.states[i] = state
                if i == group[-1]:  # all of a stacked group have reported: save them as one position
                    progress.save()

            members.append(Member(model, masks, seeds[i], progress.states.get(i), on_eval, on_stop=on_eval,  # a stop saves as an evaluation does
                                  fine_tune=fine_tunes(config, round_index)))
        for i, outcome in zip(group, train_rounds(members, splits, cfg, round_index, stop)):
            progress.finals[i], progress.errors[i] = outcome.final, 1.0 - outcome.test_acc_final
            progress.states.pop(i, None)
        progress.save()
    return [progress.finals[i] for i in range(len(seeds))], [progress.errors[i] for i in range(len(seeds))]


def replay_round0(config: Config, run: RunDir, splits: Splits, steps: Sequence[int]) -> dict[int, StateDict]:
    """θ_k for every k in `steps`: round 0 retrained from θ0 with the study's own data seed."""
    init, last = _load(run, run.init), max(steps)
    out = {0: init}
    if last:
        model = model_for(config, 0)
        model.load_state_dict(init)
        wanted = set(steps)

        def snapshots(step: int, weights: Callable[[], StateDict], *_: Any) -> None:
            if step in wanted:
                out[step] = weights()

        member = Member(model, _load(run, run.mask(0)), study_seeds(config.seed)["data_seed"], snapshots=snapshots)
        train_rounds([member], splits, replace(config.train, steps=last, eval_every=str(last)), 0)
    return out


def _load(run: RunDir, path: Path) -> StateDict:
    if not path.is_file():
        raise RunDirError(f"{path}: missing; the run directory is incomplete or damaged")
    return run.load(path)


def read_rows(run: RunDir) -> list[dict[str, str]]:
    """stability.csv as written (strings), [] before the first job; a foreign or torn table is refused."""
    rows = list(csv.DictReader(io.StringIO(run.stability.read_text()))) if run.stability.is_file() else []
    if any(list(row) != list(COLUMNS) or None in row.values() for row in rows):
        raise RunDirError(f"{run.stability}: not a stability table as lth writes it (damaged?); move it away to measure again")
    return rows


def _write_rows(run: RunDir, rows: Sequence[dict[str, Any]]) -> None:
    writer = csv.DictWriter(buf := io.StringIO(), fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(run.stability, buf.getvalue())


def run_stability(run_dir: str | os.PathLike, rounds: Sequence[int] | None = None, copies: int = 2, points: int = 30,
                  sweep: Sequence[int] | None = None, data_dir: str | os.PathLike | None = None, device: str | None = None,
                  together: bool | None = None, log: Callable[[str], None] = print) -> list[dict[str, str]]:
    """Measure every requested (round, start point) not yet in stability.csv; returns their rows.
    Rounds default to every committed one; `sweep`: start from iterations k of round 0 instead of
    each round's own rewind point; `together` (default: on a GPU) trains the copies stacked."""
    run = RunDir(Path(run_dir))
    run.require_run()
    if copies < 2 or points < 2:
        raise ConfigError(f"lth stability: --copies and --points must be >= 2, got {copies} and {points}")
    config, committed = run.read_config(), run.read_rounds()
    rounds = list(range(len(committed))) if rounds is None else list(rounds)
    if bad := [r for r in rounds if not 0 <= r < len(committed)]:
        raise RunDirError(f"{run.root}: round {bad[0]} is not committed (rounds done: {len(committed)}); finish the run or choose another --rounds")
    if missing := [run.mask(r) for r in rounds if not run.mask(r).is_file()]:
        raise RunDirError(f"{missing[0]}: missing; the run directory is incomplete or damaged")
    if config.rewind_step is not None or (sweep and (not is_constant(config.train) or config.train.optimizer != "adam")):
        # Copies from iteration k start a fresh Adam at the schedule's step 0; a study rewound with
        # its optimizer state, or trained on a schedule or with momentum, would need both at k.
        raise ConfigError(f"lth stability: {'rewind ' + config.rewind if config.rewind_step is not None else '--rewind-sweep'} is not supported "
                          "for studies with a learning-rate schedule, SGD or optimizer-state rewinding yet; measure from the rounds' own "
                          "rewind points of an init/epoch:K/lr/best/final/reinit study")
    per_epoch = steps_per_epoch(config.data.train_images, config.train.batch_size)
    length = {r: config.train.round_length(r, per_epoch) for r in rounds}
    if sweep:  # (round, label, iteration of round 0 it starts from, iterations to train)
        if bad := [k for k in sweep if not 0 <= k < min(config.train.round_length(0, per_epoch), *length.values())]:
            raise ConfigError(f"--rewind-sweep: iteration {bad[0]} is not inside round 0 and before the end of every round measured")
        jobs = [(r, f"iter:{k}", k, length[r] - k) for r in rounds for k in sweep]
    else:  # each round's own start, trained as long as the round was
        own = lambda r: ("init", 0) if r == 0 or config.rewind == "init" else (config.rewind, config.rewind_epoch and config.rewind_epoch * per_epoch)  # noqa: E731
        jobs = [(r, *own(r), length[r]) for r in rounds]
    done = {(int(row["round"]), row["rewind"]): row for row in read_rows(run)}
    for r, label, _, _ in jobs:
        if (row := done.get((r, label))) and (int(row["copies"]), int(row["points"])) != (copies, points):
            raise RunDirError(f"{run.stability}: round {r} from {label} was measured with --copies {row['copies']} --points {row['points']}; "
                              "remove its rows to measure it again")
    todo = [job for job in jobs if (job[0], job[1]) not in done]
    if skipped := len(jobs) - len(todo):
        log(f"lth stability: {skipped} of {len(jobs)} measurements already in {run.stability.name}; kept")
    dev = resolve_device(device or config.device)
    together = dev.type == "cuda" if together is None else together
    with claimed(run), stop_on_signals() as stop:  # SIGTERM/SIGINT: the copies' position is saved at the next iteration
        splits = splits_for(config.data, recorded_data_dir(run, data_dir), dev) if todo else None
        if splits is not None:  # the data the run was trained on, as a resume finds it
            check_same_data(run, splits)
        starts = replay_round0(config, run, splits, [k for _, _, k, _ in todo]) if sweep and todo else {}
        seeds = [copy_seed(config.seed, i) for i in range(copies)]
        for r, label, k, steps in todo:
            masks = _load(run, run.mask(r))
            try:  # the engines apply the mask to the start
                start = starts[k] if sweep else rewind_weights(config, r, run, _load(run, run.init))
            except FileNotFoundError as exc:
                raise RunDirError(f"{exc.filename}: missing; round {r}'s rewind point cannot be read") from None
            progress = Progress(run, {"round": r, "rewind": label, "seeds": seeds, "steps": steps})
            try:
                finals, _ = train_copies(config, masks, start, seeds, r, steps, splits, together, progress, stop)
            except Stopped as stopped:
                stopped.signum = stop.signum
                raise
            new = []
            for a, b in combinations(range(copies), 2):
                path = [round(e, 8) for e in error_path(config, finals[a], finals[b], masks, splits, points)]  # multiples of 1/n, n <= 10,000
                value = round(instability(path), 8)
                new.append({"round": r, "rewind": label, "rewind_step": k, "remaining_pct": committed[r]["remaining_pct"], "pair": f"{a}-{b}",
                            "copies": copies, "points": points, "instability": value, "stable": value <= STABLE,
                            "error_a": path[0], "error_b": path[-1], "path": " ".join(map(str, path))})
            _write_rows(run, [*read_rows(run), *new])
            run.stability_resume.unlink(missing_ok=True)
            worst = max(row["instability"] for row in new)
            log(f"round {r} ({committed[r]['remaining_pct']:.1f}% remaining) from {label}: instability {100 * worst:.2f}% (max over "
                f"{len(new)} pair{'s' * (len(new) > 1)}), {'stable' if worst <= STABLE else 'unstable'} at Frankle et al.'s 2%")
    wanted = {(job[0], job[1]) for job in jobs}
    return [row for row in read_rows(run) if (int(row["round"]), row["rewind"]) in wanted]
