"""The study: round 0 dense from θ0, then prune → rewind → retrain for each later round.

Crash safety lives here: after every epoch the round's whole position is written atomically
(`checkpoints/resume/`), a round is committed by its row in `rounds.csv` after its checkpoints,
and resuming recomputes nothing that was committed. Because every random choice is a function
of the config's seed and the round/epoch coordinates, a resumed study ends with the same masks
and results as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lth import __version__
from lth import config as cfgmod
from lth.config import Config
from lth.data import load_splits
from lth.energy import EnergyMeter, EnergyReading, make_meter
from lth.engine import use_graphs
from lth.masks import Masks, apply_masks_, count_kept, count_total, density, full_masks
from lth.models import build_model, layer_types, prunable_names
from lth.progress import Progress
from lth.pruning import get_criterion
from lth.store import (  # noqa: F401 - RunDirError is re-exported as part of the API
    RunDir,
    RunDirError,
    append_metrics,
    atomic_write_text,
    load_resume_state,
    load_tensors,
    read_metrics,
    read_rounds_csv,
    save_resume_state,
    save_tensors,
    write_metrics,
    write_rounds_csv,
)
from lth.train import Member, RoundOutcome, RoundState, derive_seed, round_length, steps_per_epoch, train_rounds

# With an iteration cadence (eval every N steps) the resume state is written at an evaluation
# at most this often, so a fast GPU run is not throttled by checkpoint writes.
RESUME_SAVE_SECONDS = 30.0


@dataclass
class StudyResult:
    run_dir: Path
    rounds: list[dict[str, Any]]


def default_run_dir(config: Config, root: Path = Path("runs")) -> Path:
    return root / f"{config.name}-{cfgmod.config_hash(config)}"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RunDirError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return torch.device(name)


def seeds_for(config: Config) -> dict[str, int]:
    """The generators' seeds, all derived from the one `seed` in the config."""
    return {
        "seed": config.seed,
        "init_seed": derive_seed(config.seed, "init"),
        "data_seed": derive_seed(config.seed, "data"),
    }


def is_run_dir(path: Path) -> bool:
    return (path / "config.toml").is_file() and (path / "manifest.json").is_file()


@contextmanager
def _locked(run: RunDir) -> Iterator[None]:
    """One writer per run directory: a second `lth run` on it fails instead of interleaving.

    A directory this call created is removed again if the run stops before writing its config
    (bad data, a bad rewind point), so refused input leaves nothing behind.
    """
    created = not run.root.exists()
    run.root.mkdir(parents=True, exist_ok=True)
    lock_path = run.root / ".lock"
    try:
        with open(lock_path, "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunDirError(f"{run.root} is in use by another lth process; wait for it or choose another --out") from None
            yield
    finally:
        if created and not run.config.exists():
            lock_path.unlink(missing_ok=True)
            if not any(run.root.iterdir()):
                run.root.rmdir()


def _clear_run_dir(run: RunDir) -> None:
    """`--force`: empty a (locked) run directory, keeping only the lock we hold."""
    for child in run.root.iterdir():
        if child.name != ".lock":
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


def _prepare(run: RunDir, config: Config, resume: bool, force: bool) -> None:
    """Check the directory against the request before anything is written."""
    root = run.root
    if root.exists() and not root.is_dir():
        raise RunDirError(f"{root} exists and is not a directory; choose another --out")
    occupied = root.exists() and any(p.name != ".lock" for p in root.iterdir())
    if not occupied:
        return
    if force:
        if not is_run_dir(root):
            raise RunDirError(f"{root} is not an lth run directory (no config.toml/manifest.json); refusing to delete it with --force")
        return
    if not resume:
        raise RunDirError(f"{root} already holds a run; pass --resume to continue it or --force to delete it and start over")
    if not is_run_dir(root):
        raise RunDirError(f"{root} is not an lth run directory (no config.toml/manifest.json); choose another --out")
    stored = cfgmod.load(run.config)
    if cfgmod.computed(stored) != cfgmod.computed(config):
        raise RunDirError(f"{root} holds a run with a different config; resume it as it is with `lth resume {root}` or choose another --out")


def _parse(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(value, value)


def _round_row(round_index: int, config: Config, outcome: RoundOutcome, masks: Masks, pruned: int, skipped: bool, seconds: float) -> dict[str, Any]:
    kept, total = sum(count_kept(masks).values()), sum(count_total(masks).values())
    row: dict[str, Any] = {
        "round": round_index,
        "criterion": config.prune.criterion if round_index else "none",
        "rewind": config.rewind if round_index else "none",
        "pruning_skipped": skipped,
        "pruned": pruned,
        "weights_remaining": kept,
        "weights_prunable": total,
        "remaining_pct": 100.0 * kept / total,
        "best_epoch": outcome.best_epoch,
        "best_step": outcome.best_step,
        "best_val_loss": outcome.best_val_loss,
        "best_val_acc": outcome.best_val_acc,
        "final_val_loss": outcome.final_val_loss,
        "final_val_acc": outcome.final_val_acc,
        "test_acc_best": outcome.test_acc_best,
        "test_acc_final": outcome.test_acc_final,
        "test_loss_best": outcome.test_loss_best,
        "test_loss_final": outcome.test_loss_final,
        "seconds": seconds,
    }
    row.update({f"density/{name}": d for name, d in density(masks).items()})
    return row


def run_study(
    config: Config,
    out: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool | None = None,
) -> StudyResult:
    """Run (or continue) a study; returns its run directory and per-round results.

    `progress=None` shows bars only on a terminal; the per-round summary is always printed.
    """
    cfgmod.validate(config)
    run = RunDir(Path(out) if out is not None else default_run_dir(config))
    _prepare(run, config, resume, force)
    device = resolve_device(config.device)
    use_graphs(config.train.engine, device)  # refuse "graph" on a CPU before writing anything
    with _locked(run):
        if force and is_run_dir(run.root):
            _clear_run_dir(run)
        return _run_locked(run, config, device, data_dir, progress)


def replicate_configs(config: Config, replicates: int) -> list[Config]:
    """K copies of a study with seeds N, N+1, ..., N+K-1 (each recorded in its own config)."""
    if replicates < 1:
        raise cfgmod.ConfigError(f"--replicates: must be >= 1, got {replicates}")
    return [dataclasses.replace(config, seed=config.seed + i) for i in range(replicates)]


def run_replicates(
    config: Config,
    replicates: int,
    out: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool | None = None,
    parallel: int = 1,
) -> list[StudyResult]:
    """Run K seeds of one study, each in `<out>/seed-<s>/`: one after another, or `parallel`
    at a time trained together on one device (`run_parallel`).

    Every child directory is checked before the first one starts, so a refused child cannot
    leave the others half-done.
    """
    if parallel < 1:
        raise cfgmod.ConfigError(f"--parallel: must be >= 1, got {parallel}")
    configs = replicate_configs(config, replicates)
    parent = Path(out) if out is not None else Path("runs") / f"{config.name}-{cfgmod.config_hash(config)}-x{replicates}"
    children = [RunDir(parent / f"seed-{c.seed}") for c in configs]
    for child, c in zip(children, configs):
        cfgmod.validate(c)
        _prepare(child, c, resume, force)
    if parallel == 1:
        return [run_study(c, out=child.root, data_dir=data_dir, resume=resume, force=force, progress=progress) for child, c in zip(children, configs)]
    results: list[StudyResult] = []
    for start in range(0, len(configs), parallel):
        chunk = slice(start, start + parallel)
        results += run_parallel(configs[chunk], [c.root for c in children[chunk]], data_dir=data_dir, resume=resume, force=force, progress=progress)
    return results


def resume_study(run_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None, progress: bool | None = None, device: str | None = None) -> StudyResult:
    """Continue an interrupted study from its own stored config."""
    root = Path(run_dir)
    if not is_run_dir(root):
        raise RunDirError(f"{root} is not an lth run directory (no config.toml/manifest.json); check the path")
    config = cfgmod.load(root / "config.toml")
    if device is not None:
        config = cfgmod.apply_overrides(config, {"device": device})
    return run_study(config, out=root, data_dir=data_dir, resume=True, progress=progress)


def pruned_tensors(config: Config, model: torch.nn.Module) -> list[str]:
    """The tensors a study may prune: the model's prunable kernels, plus the output layer only
    if the config gives it a rate (Frankle & Carbin prune it; the seed does not)."""
    types = layer_types(model)
    p = config.prune
    unknown = sorted(set(p.layer_rates) - set(types))
    if unknown:
        raise cfgmod.ConfigError(f"prune.layer_rates: {unknown[0]!r} is not a conv/dense weight of {config.model}; choose from {', '.join(types)}")
    names = prunable_names(model)
    for name, kind in types.items():
        if kind == "output" and p.layer_rates.get(name, p.rates.get("output", 0.0)) > 0:
            names.append(name)
    return names


def layer_fractions(config: Config, model: torch.nn.Module, names: list[str]) -> dict[str, float] | None:
    """Per-tensor pruning rates for scope "layer": per-name rate, else per-type, else `fraction`."""
    p = config.prune
    if p.scope != "layer":
        return None
    types = layer_types(model)
    return {n: p.layer_rates.get(n, p.rates.get(types[n], p.fraction)) for n in names}


def rewind_weights(config: Config, r: int, run: RunDir, init: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Where round `r`'s survivors restart (before masking). Round 0 always starts at θ0."""
    kind = config.rewind
    if r == 0 or kind == "init":
        return init
    if kind.startswith("epoch:"):
        return load_tensors(run.rewind_point)
    if kind == "best":
        return load_tensors(run.best(r - 1))
    if kind == "final":
        return load_tensors(run.final(r - 1))
    if kind == "reinit":
        return build_model(config.model, derive_seed(config.seed, "reinit", r)).state_dict()
    raise cfgmod.ConfigError(f"rewind: unknown rewind point {kind!r}")


def _match_counts(config: Config, names: list[str]) -> list[dict[str, int]] | None:
    """Per-round kept counts of the run a random control copies (checked before any write)."""
    if config.prune.match is None:
        return None
    other = RunDir(Path(config.prune.match))
    if not is_run_dir(other.root):
        raise RunDirError(f"prune.match: {other.root} is not an lth run directory; give the run whose densities to copy")
    counts = []
    for r in range(config.prune.rounds + 1):
        if not other.mask(r).exists():
            raise RunDirError(f"prune.match: {other.root} has no mask for round {r}; let it finish or use fewer --rounds")
        mask = load_tensors(other.mask(r))
        if sorted(mask) != sorted(names):
            raise RunDirError(f"prune.match: {other.root} prunes other tensors ({', '.join(sorted(mask))}); match a run of the same model and output-layer setting")
        counts.append(count_kept(mask))
    return counts


def _open_study(run: RunDir, config: Config, splits: Any) -> tuple[_Study, list[dict[str, Any]]]:
    """Set a (locked) run directory up for training — config, manifest and θ0 written on first
    use — and return the study with the rounds it has already committed."""
    seeds = seeds_for(config)
    model = build_model(config.model, seeds["init_seed"])
    names = pruned_tensors(config, model)
    matched = _match_counts(config, names)
    n_train = splits.train_x.shape[0]
    if config.rewind.startswith("epoch:"):
        k_steps = int(config.rewind[6:]) * steps_per_epoch(n_train, config.train.batch_size)
        if k_steps > round_length(config.train, n_train, 0):
            raise cfgmod.ConfigError(f"rewind: {config.rewind} is after round 0's last iteration ({round_length(config.train, n_train, 0)})")
    if not run.config.exists():
        atomic_write_text(run.config, cfgmod.to_toml(config))
        manifest = {
            "lth_version": __version__,
            "torch_version": torch.__version__,
            "python": platform.python_version(),
            "device": str(splits.train_x.device),
            "seeds": seeds,
            "prunable": names,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write_text(run.manifest, json.dumps(manifest, indent=2) + "\n")
    if run.init.exists():
        init = load_tensors(run.init)
    else:
        init = {k: v.detach().clone() for k, v in model.state_dict().items()}
        save_tensors(run.init, init)
    rows = [{k: _parse(v) for k, v in r.items()} for r in read_rounds_csv(run.rounds)]
    meter = make_meter(config.energy.tracker, config.energy.country)
    return _Study(run, config, model, init, names, splits, seeds, matched, meter), rows


def _load_splits(config: Config, data_dir: Any, device: torch.device) -> Any:
    d = config.data
    return load_splits(data_dir, device=device, train_size=d.train_size, val_size=d.val_size, test_size=d.test_size)


def _commit_round(study: _Study, rows: list[dict[str, Any]], row: dict[str, Any]) -> None:
    """A round is committed by its rows.csv row, written after its checkpoints."""
    rows.append(row)
    write_rounds_csv(study.run.rounds, rows)
    study.run.resume_state.unlink(missing_ok=True)


def _run_locked(run: RunDir, config: Config, device: torch.device, data_dir: Any, progress: bool | None) -> StudyResult:
    study, rows = _open_study(run, config, _load_splits(config, data_dir, device))
    total_rounds = config.prune.rounds + 1
    bars = Progress(total_rounds, enabled=progress)
    bars.skip_rounds(len(rows))
    try:
        for r in range(len(rows), total_rounds):
            _commit_round(study, rows, study.run_round(r, bars))
            bars.end_round(rows[-1], total_rounds)
    finally:
        bars.close()
    return StudyResult(run.root, rows)


def parallel_compatible(a: Config, b: Config) -> str | None:
    """Why two studies cannot be trained together, or None: they must share the model, the data
    slice, the training schedule and the device (seeds, criteria and rewind points may differ)."""
    for what, x, y in (("model", a.model, b.model), ("data", a.data, b.data), ("train", a.train, b.train), ("device", a.device, b.device)):
        if x != y:
            return f"they differ in {what}"
    return None


def run_parallel(
    configs: list[Config],
    outs: list[str | os.PathLike],
    data_dir: str | os.PathLike | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool | None = None,
) -> list[StudyResult]:
    """Run K studies together on one device (`--parallel K`): each round, the studies at that
    round train as one stacked model (`lth.engine.StackedEngine`), then each prunes and stores
    its own run directory exactly as `run_study` would.

    Every directory is checked before anything is written. Studies whose resume positions
    differ within a round train in separate groups, so an interrupted set resumes correctly.
    """
    if len(configs) != len(outs) or not configs:
        raise ValueError("run_parallel needs one output directory per config")
    for c in configs:
        cfgmod.validate(c)
        reason = parallel_compatible(configs[0], c)
        if reason:
            raise cfgmod.ConfigError(f"--parallel: {c.name} (seed {c.seed}) cannot train together with {configs[0].name} (seed {configs[0].seed}): {reason}; run them separately")
    runs = [RunDir(Path(o)) for o in outs]
    if len({r.root.resolve() for r in runs}) != len(runs):
        raise RunDirError("--parallel: two studies would share one run directory; give each its own --out")
    for run, c in zip(runs, configs):
        _prepare(run, c, resume, force)
    device = resolve_device(configs[0].device)
    use_graphs(configs[0].train.engine, device)
    if device.type == "cpu" and len(configs) > 1:
        print(f"lth: note: training {len(configs)} studies together on a CPU is slower than one after another "
              "(0.78x measured for 2, benchmarks/cpu_throughput.py); --parallel is meant for GPUs", file=sys.stderr)
    with contextlib.ExitStack() as stack:
        for run in runs:
            stack.enter_context(_locked(run))
        for run in runs:
            if force and is_run_dir(run.root):
                _clear_run_dir(run)
        splits = _load_splits(configs[0], data_dir, device)
        opened = [_open_study(run, c, splits) for run, c in zip(runs, configs)]
        _train_together(opened, progress)
    return [StudyResult(run.root, rows) for run, (_, rows) in zip(runs, opened)]


def _train_together(opened: list[tuple[_Study, list[dict[str, Any]]]], progress: bool | None) -> None:
    totals = [study.config.prune.rounds + 1 for study, _ in opened]
    bars = Progress(sum(totals), enabled=progress)
    bars.skip_rounds(sum(len(rows) for _, rows in opened))
    try:
        while True:
            pending = [(s, rows) for (s, rows), t in zip(opened, totals) if len(rows) < t]
            if not pending:
                return
            r = min(len(rows) for _, rows in pending)
            at_r = [(s, rows) for s, rows in pending if len(rows) == r]
            plans = [s.begin_round(r, None) for s, _ in at_r]
            groups: dict[int, list[int]] = {}
            for i, plan in enumerate(plans):
                groups.setdefault(plan.member.resume.steps_done if plan.member.resume else 0, []).append(i)
            for members in groups.values():
                study0, config0 = at_r[members[0]][0], at_r[members[0]][0].config
                n_train = study0.splits.train_x.shape[0]
                first = plans[members[0]]
                bars.start_round(r, round_length(config0.train, n_train, r), first.member.resume.steps_done if first.member.resume else 0, len(members))
                persist = first.member.on_eval
                assert persist is not None

                def on_eval(state: RoundState, persist: Callable[[RoundState], None] = persist) -> None:
                    persist(state)
                    bars.end_eval(state.history[-1])  # one bar for the group, driven by its first study

                first.member.on_eval = on_eval
                for i in members:
                    plans[i].started = time.perf_counter()  # a group's time is its own
                study0.meter.start()
                outcomes = train_rounds([plans[i].member for i in members], study0.splits, config0.train, r)
                energy = study0.meter.stop().share(len(members))
                for i, outcome in zip(members, outcomes):
                    study, rows = at_r[i]
                    _commit_round(study, rows, study.finish_round(plans[i], outcome, energy))
                    bars.end_round(rows[-1], study.config.prune.rounds + 1, label=f"{study.config.name} seed {study.config.seed}")
    finally:
        bars.close()


@dataclass
class _Study:
    """What every round of one study shares; `run_round` does one round end to end."""

    run: RunDir
    config: Config
    model: torch.nn.Module
    init: dict[str, torch.Tensor]
    names: list[str]
    splits: Any
    seeds: dict[str, int]
    matched: list[dict[str, int]] | None
    meter: EnergyMeter

    def masks_for_round(self, r: int) -> tuple[Masks, int, bool]:
        """Round r's mask (stored if an earlier attempt got that far), pruned count, skipped."""
        run, p = self.run, self.config.prune
        if r == 0:
            masks = load_tensors(run.mask(0)) if run.mask(0).exists() else full_masks(self.model, self.names)
            return masks, 0, False
        previous = load_tensors(run.mask(r - 1))
        if run.mask(r).exists():
            masks = load_tensors(run.mask(r))
        else:
            masks = get_criterion(p.criterion)(
                load_tensors(run.best(r - 1)), load_tensors(run.final(r - 1)), self.init,
                previous, p.fraction, self.names,
                scope=p.scope, layer_fractions=layer_fractions(self.config, self.model, self.names),
                seed=derive_seed(self.config.seed, "prune", r),
                target_kept=self.matched[r] if self.matched else None,
            )
        pruned = sum(count_kept(previous).values()) - sum(count_kept(masks).values())
        return masks, pruned, pruned == 0

    def begin_round(self, r: int, bars: Progress | None) -> _RoundPlan:
        """Everything before training: the round's mask (stored first), the rewind, a resume
        position if an earlier attempt saved one, and the callbacks that persist evaluations.
        `bars=None` leaves the progress display to the caller (studies trained together)."""
        run, config, model = self.run, self.config, self.model
        masks, pruned, skipped = self.masks_for_round(r)
        if not run.mask(r).exists():
            save_tensors(run.mask(r), masks)

        # Rewind, then zero the pruned weights: survivors restart from the rewind point.
        model.load_state_dict(rewind_weights(config, r, run, self.init))
        apply_masks_(model, masks)

        resume_state: RoundState | None = None
        if run.resume_state.exists():
            saved_round, state = load_resume_state(run.resume_state)
            if saved_round == r:
                resume_state = state
            else:
                run.resume_state.unlink()
        history = resume_state.history if resume_state else []
        earlier = [m for m in read_metrics(run.metrics) if m.get("round", -1) < r]
        write_metrics(run.metrics, earlier + history)

        n_train = self.splits.train_x.shape[0]
        total_steps = round_length(config.train, n_train, r)
        if bars is not None:
            bars.start_round(r, total_steps, resume_state.steps_done if resume_state else 0)
        last_save = [time.monotonic()]
        per_eval_save = config.train.eval_every == "epoch"

        def on_eval(state: RoundState) -> None:
            now = time.monotonic()
            if per_eval_save or now - last_save[0] >= RESUME_SAVE_SECONDS or state.steps_done == total_steps:
                save_resume_state(run.resume_state, r, state)
                last_save[0] = now
                # metrics.jsonl holds exactly the evaluations a resume would not redo.
                if per_eval_save:
                    append_metrics(run.metrics, state.history[-1:])
                else:
                    write_metrics(run.metrics, earlier + state.history)
            if bars is not None:
                bars.end_eval(state.history[-1])

        snapshots = None
        if r == 0 and config.rewind.startswith("epoch:") and not run.rewind_point.exists():
            at = int(config.rewind[6:]) * steps_per_epoch(n_train, config.train.batch_size)

            def snapshots(step: int, weights: Callable[[], dict[str, torch.Tensor]]) -> None:
                if step == at:
                    save_tensors(run.rewind_point, weights())

        member = Member(model, masks, self.seeds["data_seed"], resume_state, on_eval, snapshots)
        return _RoundPlan(r, masks, pruned, skipped, member, sum(m["seconds"] for m in history), time.perf_counter())

    def finish_round(self, plan: _RoundPlan, outcome: RoundOutcome, energy: EnergyReading) -> dict[str, Any]:
        """Store the round's weights and return its rounds.csv row (the caller commits it)."""
        save_tensors(self.run.best(plan.r), outcome.best)
        save_tensors(self.run.final(plan.r), outcome.final)
        seconds = plan.elapsed_before + time.perf_counter() - plan.started
        row = _round_row(plan.r, self.config, outcome, plan.masks, plan.pruned, plan.skipped, seconds)
        row.update(energy.as_row())
        if plan.member.resume is not None and energy.kwh is not None:
            row["energy_method"] += "; resumed round: the interrupted part is not counted"
        return row

    def run_round(self, r: int, bars: Progress) -> dict[str, Any]:
        plan = self.begin_round(r, bars)
        self.meter.start()
        outcome = train_rounds([plan.member], self.splits, self.config.train, r)[0]
        energy = self.meter.stop()  # never raises; covers only this process's part of the round
        return self.finish_round(plan, outcome, energy)


@dataclass
class _RoundPlan:
    """One study's round between `begin_round` and `finish_round`."""

    r: int
    masks: Masks
    pruned: int
    skipped: bool
    member: Member
    elapsed_before: float  # seconds an interrupted attempt already spent on this round
    started: float
