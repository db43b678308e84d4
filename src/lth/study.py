"""The study: round 0 trains the dense network from θ0, then each round prunes, rewinds and
retrains. One path runs K ≥ 1 studies (solo: K = 1; `--parallel K`: K trained together). Each
round, as open_lth's runner: if committed, skip it; else mask → rewind → train → commit. The
mask is stored first, the row last and the position at every evaluation, so a study resumes
where it stopped and ends as an uninterrupted one would."""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from lth import __version__
from lth import config as cfgmod
from lth.config import Config, ConfigError
from lth.data import Splits, input_transform, splits_for
from lth.energy import EnergyMeter, EnergyReading, make_meter
from lth.engine import use_graphs
from lth.layout import bf16_warning
from lth.layout import choose as choose_layout
from lth.masks import Masks, apply_masks_, count_kept, density, full_masks
from lth.models import has_convolutions, layer_types, model_for
from lth.progress import Progress
from lth.pruning import CRITERIA, kept_ladder, next_masks, prune_counts
from lth.pruning_at_init import (balanced_sample, grasp_scores, masks_at_init, random_masks_with_counts, shuffle_within_tensors, smart_ratio_counts,
                                 smart_ratio_weights, snip_scores, synflow_scores)
from lth.rundir import RunDir, RunDirError, claimed, prepare
from lth.schedule import is_constant
from lth.seeds import prune_seed, reinit_seed, score_sample_seed, shuffle_seed, smart_ratio_seed, study_seeds
from lth.signals import StopRequest, stop_on_signals
from lth.track import Trackers
from lth.train import (Diverged, Member, RoundOutcome, RoundState, Stopped, optimizer_from_tensors, optimizer_tensors, steps_per_epoch,
                       train_rounds)

# With eval every N iterations, the position is saved at most this often (checkpoint writes must not throttle a GPU).
RESUME_SAVE_SECONDS = 30.0
OUTCOME_COLUMNS = ("best_epoch", "best_step", "best_val_loss", "best_val_acc", "final_val_loss", "final_val_acc",
                   "test_acc_best", "test_acc_final", "test_loss_best", "test_loss_final")


@dataclass
class StudyResult:
    run_dir: Path
    rounds: list[dict[str, Any]]


def default_run_dir(config: Config, root: Path = Path("runs")) -> Path:
    return root / f"{config.name}-{cfgmod.config_hash(config)}"


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RunDirError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def compatible(a: Config, b: Config) -> str | None:
    """Why two studies cannot train together, or None: they must share the model, the data
    slice, the schedule and the device (seeds, criteria and rewind points may differ, except
    that fine-tuning trains at another learning rate than a schedule replayed from its start)."""
    if (reason := next((f"they differ in {what}" for what in ("model", "data", "train", "device") if getattr(a, what) != getattr(b, what)), None)):
        return reason
    return "one fine-tunes (rewind best/final) at the schedule's last learning rate, the other replays the schedule" if fine_tunes(a, 1) != fine_tunes(b, 1) else None


def fine_tunes(config: Config, r: int) -> bool:
    """Whether round `r` trains at the schedule's last learning rate: the retraining rounds of
    `rewind = "best"/"final"` (fine-tuning; `lr` replays the whole schedule, as round 0 always
    does). It matters only when the learning rate changes during a round."""
    return r > 0 and config.rewind in ("best", "final") and not is_constant(config.train)


def run_study(config: Config, out: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None,
              resume: bool = False, force: bool = False, progress: bool | None = None) -> StudyResult:
    """Run (or continue) one study; `progress=None` shows bars only on a terminal."""
    return run_studies([config], [out if out is not None else default_run_dir(config)], data_dir, resume, force, progress)[0]


def resume_study(run_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None, progress: bool | None = None,
                 device: str | None = None, lr: float | None = None) -> StudyResult:
    """Continue an interrupted study from its own stored config and data (the folder recorded in
    its manifest unless `data_dir` says otherwise), optionally on another device or, after a
    divergence, with another learning rate (recorded in the manifest's history)."""
    run = RunDir(Path(run_dir))
    run.require_run()
    config = run.read_config()
    if device is not None:
        config = cfgmod.apply_overrides(config, {"device": device})
    if lr is not None:
        config = cfgmod.apply_overrides(config, {"train.lr": str(lr)})
    return run_study(config, out=run.root, data_dir=recorded_data_dir(run, data_dir), resume=True, progress=progress)


def recorded_data_dir(run: RunDir, data_dir: str | os.PathLike | None) -> str | os.PathLike | None:
    """Where a stored run's data is: `data_dir` if given, else the folder its manifest recorded
    (refused if it is gone), else None for the usual lookup (a run from before the record)."""
    recorded = run.read_manifest().get("data", {}).get("dir")
    if data_dir is not None or not recorded:
        return data_dir
    if not Path(recorded).is_dir():
        raise RunDirError(f"{run.root} was trained on the data in {recorded}, which is gone; pass --data-dir with a copy of it")
    return recorded


def check_same_data(run: RunDir, splits: Splits) -> None:
    """A stored run goes on only with the data it was trained on (the fingerprint it recorded)."""
    recorded = run.read_manifest().get("data", {})
    if recorded.get("fingerprint") not in (None, splits.fingerprint):
        raise RunDirError(f"{run.root} was trained on other data ({recorded['dir']}, fingerprint {recorded['fingerprint']}; "
                          f"{splits.source} has {splits.fingerprint}); pass --data-dir with the data it used")


def run_studies(configs: Sequence[Config], outs: Sequence[str | os.PathLike], data_dir: str | os.PathLike | None = None,
                resume: bool = False, force: bool = False, progress: bool | None = None) -> list[StudyResult]:
    """Run K studies, each into its own run directory; K > 1 train together on one device
    (one stacked model a round). Everything is checked before anything is written."""
    if len(configs) != len(outs) or not configs:
        raise ValueError("run_studies needs one output directory per config")
    first = configs[0]
    for c in configs:
        if (reason := compatible(first, c)) is not None:
            raise ConfigError(f"--parallel: {c.name} (seed {c.seed}) cannot train together with {first.name} (seed {first.seed}): {reason}; run them separately")
    runs = [RunDir(Path(o)) for o in outs]
    if len({r.root.resolve() for r in runs}) != len(runs):
        raise RunDirError("--parallel: two studies would share one run directory; give each its own --out")
    for run, c in zip(runs, configs):
        prepare(run, c, resume, force)
    device = resolve_device(first.device)
    graphs = use_graphs(first.train.engine, device)  # refuses "graph" on a CPU before writing anything
    configs, execution = _pin_execution(list(configs), runs, device)
    execution["engine"] = "graph" if graphs else "eager"
    if device.type == "cpu" and len(configs) > 1 and has_convolutions(model_for(first, 0)):
        # Convolutions gain nothing from stacking on a CPU; LeNet's small products do (benchmarks/lenet_throughput.py).
        print(f"lth: note: training {len(configs)} studies of a convolutional network together on a CPU is slower than one after "
              "another (0.78x measured for 2, benchmarks/cpu_throughput.py); --parallel is meant for GPUs", file=sys.stderr)
    with contextlib.ExitStack() as stack:
        for run in runs:
            stack.enter_context(claimed(run, force))
        splits = splits_for(first.data, data_dir, device)
        studies = [Study.open(run, c, splits, execution) for run, c in zip(runs, configs)]
        for study in studies:
            stack.callback(study.meter.close)
            stack.callback(lambda s=study: s.trackers.close(finished=len(s.rows) == s.total_rounds))
        stop = stack.enter_context(stop_on_signals())
        try:
            _run_rounds(studies, progress, stop)
        except Stopped as stopped:
            stopped.signum = stop.signum
            raise
    return [StudyResult(s.run.root, s.rows) for s in studies]


def _pin_execution(configs: list[Config], runs: list[RunDir], device: torch.device) -> tuple[list[Config], dict[str, Any]]:
    """How a study executes where that is free to choose: a single CPU study's memory layout is
    the one its run directory already holds, else the config's, else measured on this machine
    (cached); it is pinned into the stored config, so a resume keeps it. Stacked studies and
    GPUs train in the default layout."""
    if device.type == "cpu" and (warning := bf16_warning(configs)):
        print(warning, file=sys.stderr)
    if device.type != "cpu" or len(configs) > 1:
        return configs, {"channels_last": False, "chosen": "default"}
    config, run = configs[0], runs[0]
    stored = run.read_config().train.channels_last if run.is_run() and config.train.channels_last is None else None
    choice, how = (stored, "stored with the run") if stored is not None else choose_layout(config)
    return [replace(config, train=replace(config.train, channels_last=choice))], {"channels_last": choice, "chosen": how}


def _run_rounds(studies: list[Study], progress: bool | None, stop: StopRequest) -> None:
    """The studies at the lowest uncommitted round train together, grouped by resume position.
    A stop request ends it between iterations or rounds; a divergence names its run."""
    bars = Progress(sum(s.total_rounds for s in studies), enabled=progress)
    bars.skip_rounds(sum(len(s.rows) for s in studies))
    try:
        while pending := [s for s in studies if len(s.rows) < s.total_rounds]:
            r = min(len(s.rows) for s in pending)
            plans = [s.begin_round(r) for s in pending if len(s.rows) == r]
            groups: dict[int, list[_RoundPlan]] = {}
            for plan in plans:
                groups.setdefault(plan.member.resume.steps_done if plan.member.resume else 0, []).append(plan)
            for position, group in groups.items():
                if stop():
                    raise Stopped(r, position)
                lead = group[0]
                bars.start_round(r, lead.total_steps, position, len(group))
                persist = lead.member.on_eval
                lead.member.on_eval = lambda state, persist=persist: (persist(state), bars.end_eval(state.history[-1]))
                for plan in group:
                    plan.started = time.perf_counter()  # a group's time is its own
                lead.study.meter.start()
                try:
                    outcomes = train_rounds([p.member for p in group], lead.study.splits, lead.study.config.train, r, stop)
                except Diverged as exc:
                    root, lr = group[exc.member].study.run.root, lead.study.config.train.lr
                    raise Diverged(f"{root}: {exc}; nothing after its last saved position was written: continue with a lower "
                                   f"learning rate, e.g. lth resume {root} --train.lr {lr / 10:g}", exc.member) from None
                energy = lead.study.meter.stop().share(len(group))
                for plan, outcome in zip(group, outcomes):
                    row = plan.study.commit(plan, outcome, energy)
                    label = f"{plan.study.config.name} seed {plan.study.config.seed}" if len(studies) > 1 else ""
                    bars.end_round(row, plan.study.total_rounds, label=label)
    finally:
        bars.close()


def pruning_plan(config: Config, model: torch.nn.Module) -> tuple[list[str], dict[str, float] | None]:
    """The tensors a study prunes (the output layer only if given a rate, as F&C do, or
    `include_output`, as open_lth's ResNet-20), and their
    rates for scope "layer" (own, else the layer type's, else `fraction`; None: one global rate)."""
    p, types = config.prune, layer_types(model)
    unknown = sorted(set(p.layer_rates) - set(types))
    if unknown:
        raise ConfigError(f"prune.layer_rates: {unknown[0]!r} is not a conv/dense weight of {config.model}; choose from {', '.join(types)}")
    rates = {n: p.layer_rates.get(n, p.rates.get(kind, p.fraction if kind != "output" or p.include_output else 0.0)) for n, kind in types.items()}
    names = [n for n, kind in types.items() if kind != "output" or rates[n] > 0]
    return names, ({n: rates[n] for n in names} if p.scope == "layer" else None)


def rewind_weights(config: Config, r: int, run: RunDir, init: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Where round `r`'s survivors restart (before masking). Round 0 always starts at θ0."""
    if r == 0 or config.rewind == "init":
        return init
    if config.rewind_epoch is not None or config.rewind_step is not None:
        return run.load(run.rewind_point)
    if config.rewind == "reinit":
        return model_for(config, reinit_seed(config.seed, r)).state_dict()
    # "best"/"final": fine-tuning; "lr": learning-rate rewinding (the final weights, the schedule from its start)
    return run.load(run.checkpoint(r - 1, "final" if config.rewind == "lr" else config.rewind))


def rewound_position(config: Config, run: RunDir, model: torch.nn.Module, masks: Masks) -> RoundState:
    """`rewind = "iter:K"`: where a retraining round starts, iteration K of round 0 with its weights
    and optimizer state (momentum, Adam's moments), the pruned entries of both zeroed."""
    weights = {n: t * masks[n].to(t) if n in masks else t for n, t in run.load(run.rewind_point).items()}
    tensors, meta = run.load_optimizer(run.rewind_optimizer)
    optimizer, step = optimizer_from_tensors(tensors, meta["state"], meta["param_groups"]), meta["step"]
    names = [n for n, _ in model.named_parameters()]
    state = {pid: {key: v * masks[names[pid]].to(v) if names[pid] in masks and v.shape == masks[names[pid]].shape else v
                   for key, v in entry.items()} for pid, entry in optimizer["state"].items()}
    return RoundState(step, weights, {"state": state, "param_groups": optimizer["param_groups"]}, dict(weights), step, float("inf"), 0.0, [])


def _matched_counts(config: Config, names: list[str], run: RunDir) -> list[dict[str, int]] | None:
    """Per-round kept counts of the run a random control copies (checked before any write)."""
    if config.prune.match is None:
        return None
    other = RunDir(Path(config.prune.match).expanduser().resolve())
    if other.root == run.root.resolve():
        raise RunDirError(f"prune.match: {other.root} is this run itself; give the run whose densities to copy")
    if not other.is_run():
        raise RunDirError(f"prune.match: {other.root} is not an lth run directory; give the run whose densities to copy")
    counts = []
    for r in range(config.prune.rounds + 1):
        if not other.mask(r).exists():
            raise RunDirError(f"prune.match: {other.root} has no mask for round {r}; let it finish or use fewer --rounds")
        mask = other.load(other.mask(r))
        if sorted(mask) != sorted(names):
            raise RunDirError(f"prune.match: {other.root} prunes other tensors ({', '.join(sorted(mask))}); match a run of the same model and output-layer setting")
        counts.append(count_kept(mask))
    return counts


@dataclass
class Study:
    """One study across its rounds: its run directory, θ0 and what every round shares."""

    run: RunDir
    config: Config
    model: torch.nn.Module
    init: dict[str, torch.Tensor]
    names: list[str]
    rates: dict[str, float] | None
    splits: Splits
    matched: list[dict[str, int]] | None
    meter: EnergyMeter
    rows: list[dict[str, Any]]
    trackers: Trackers

    @property
    def total_rounds(self) -> int:
        return self.config.prune.rounds + 1

    @classmethod
    def open(cls, run: RunDir, config: Config, splits: Splits, execution: dict[str, Any] | None = None) -> Study:
        """Set a claimed run directory up (config, manifest, θ0 on first use) with its committed rounds."""
        seeds = study_seeds(config.seed)
        model = model_for(config, seeds["init_seed"])
        names, rates = pruning_plan(config, model)
        matched = _matched_counts(config, names, run)
        sample = _score_sample_record(config, splits)  # refused before anything is written
        if not run.config.exists():
            run.write_config(config)
            run.write_manifest({"lth_version": __version__, "torch_version": torch.__version__, "python": platform.python_version(),
                                "device": str(splits.train_x.device), "seeds": seeds, "prunable": names,
                                "data": {"dataset": config.data.dataset, "dir": str(splits.source), "fingerprint": splits.fingerprint}, "execution": execution or {},
                                **sample,
                                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        else:
            if problems := run.damage():
                raise RunDirError(f"{problems[0]}; restore it or start the run again (lth verify {run.root} lists every problem)")
            check_same_data(run, splits)
            _record_lr_change(run, config)
        if not run.init.exists():
            run.save(run.init, model.state_dict())
        init = run.load(run.init)
        meter = make_meter(config.energy.tracker, config.energy.country)
        trackers = Trackers.open(run, config, steps_per_epoch(splits.train_x.shape[0], config.train.batch_size))
        return cls(run, config, model, init, names, rates, splits, matched, meter, run.read_rounds(), trackers)

    def masks_for_round(self, r: int) -> tuple[Masks, int]:
        """Round r's mask (the stored one if an earlier attempt got that far) and how many it pruned."""
        run, p = self.run, self.config.prune
        stored = run.load(run.mask(r)) if run.mask(r).exists() else None
        if r == 0:
            return stored or full_masks(self.model, self.names), 0
        previous, masks = run.load(run.mask(r - 1)), stored
        if masks is None:
            if CRITERIA[p.criterion].at_init is not None:
                masks = self.mask_at_init(r)
            else:
                uses = CRITERIA[p.criterion].uses
                best, final = ({} if kind not in uses else run.load(run.checkpoint(r - 1, kind)) for kind in ("best", "final"))
                counts = prune_counts(previous, self.names, self.rates, p.fraction, self.matched[r] if self.matched else None)
                masks = next_masks(p.criterion, best, final, self.init, previous, counts, prune_seed(self.config.seed, r), invert=p.invert)
            if p.shuffle:
                masks = shuffle_within_tensors(masks, shuffle_seed(self.config.seed, r))
        return masks, sum(count_kept(previous).values()) - sum(count_kept(masks).values())

    def score_sample(self) -> torch.Tensor:
        """Indices (into the training split) of the class-balanced images SNIP and GraSP score θ0 on."""
        return balanced_sample(self.splits.train_y.cpu(), self.config.prune.score_images_per_class, score_sample_seed(self.config.seed))

    def mask_at_init(self, r: int) -> Masks:
        """Round r's mask by pruning at initialization: the criterion scores θ0 (on the CPU, in
        float32; SynFlow in float64) from the dense network down to round r's kept count on the
        iterative ladder, so that every arm of a comparison meets at the same densities."""
        p, crit = self.config.prune, CRITERIA[self.config.prune.criterion]
        full = full_masks(self.model, self.names)
        targets = kept_ladder(count_kept(full), self.names, self.rates, p.fraction, r)
        if crit.at_init == "smart-ratio":  # the ladder's total, shared out by Su et al.'s formula
            weights = smart_ratio_weights(len(self.names), depth_squared=self.config.model.startswith("vgg"))
            counts = smart_ratio_counts(count_kept(full), sum(targets.values()), weights)
            return random_masks_with_counts(full, counts, smart_ratio_seed(self.config.seed))
        model = model_for(self.config, 0)
        model.load_state_dict(self.init)
        if crit.at_init == "synflow":
            def score(masks: Masks) -> dict[str, torch.Tensor]:
                return synflow_scores(model, masks, self.names, self.config.data.image_shape)
        else:
            index = self.score_sample()
            images, labels = self.splits.train_x[index].cpu(), self.splits.train_y[index].cpu()
            prepare, method = input_transform(self.splits.normalization, "cpu"), snip_scores if crit.at_init == "snip" else grasp_scores

            def score(masks: Masks) -> dict[str, torch.Tensor]:
                return method(model, masks, self.names, images, labels, prepare)
        return masks_at_init(score, full, targets, largest=(crit.prunes == "largest") != p.invert, steps=crit.steps)

    def begin_round(self, r: int) -> _RoundPlan:
        """Before training: the mask (stored first), the rewind, a saved position, the persisting callbacks."""
        run, config = self.run, self.config
        masks, pruned = self.masks_for_round(r)
        if not run.mask(r).exists():
            run.save(run.mask(r), masks)
        self.model.load_state_dict(rewind_weights(config, r, run, self.init))
        apply_masks_(self.model, masks)  # survivors restart from the rewind point, the rest at 0

        saved = run.load_resume()
        resume = RoundState.from_file(saved[1], saved[2]) if saved and saved[0] == r else None
        if saved and resume is None:
            run.resume_state.unlink()
        interrupted = resume is not None
        if resume is None and r > 0 and config.rewind_step is not None:
            resume = rewound_position(config, run, self.model, masks)  # the round starts at iteration K
        earlier = [m for m in run.read_metrics() if m.get("round", -1) < r]
        run.write_metrics(earlier + (resume.history if resume else []))

        per_epoch = steps_per_epoch(self.splits.train_x.shape[0], config.train.batch_size)
        total_steps = config.train.round_length(r, per_epoch)
        per_eval_save = config.train.eval_every == "epoch"
        last_save = [time.monotonic()]

        def on_eval(state: RoundState) -> None:
            now = time.monotonic()
            if per_eval_save or now - last_save[0] >= RESUME_SAVE_SECONDS or state.steps_done == total_steps:
                run.save_resume(r, *state.to_file())
                last_save[0] = now
                # metrics.jsonl holds exactly the evaluations a resume would not redo.
                run.append_metrics(state.history[-1:]) if per_eval_save else run.write_metrics(earlier + state.history)
                self.trackers.log_evals(state.history)  # what metrics.jsonl now holds, once

        snapshots = None
        if r == 0 and (config.rewind_epoch is not None or config.rewind_step is not None) and not run.rewind_point.exists():
            at = config.rewind_step if config.rewind_step is not None else config.rewind_epoch * per_epoch

            def snapshots(step: int, weights: Callable[[], dict[str, torch.Tensor]], optimizer: Callable[[], dict[str, Any]]) -> None:
                if step == at:
                    if config.rewind_step is not None:  # first: the weights' file is what says the point is stored
                        state = optimizer()
                        tensors, keys = optimizer_tensors(state)
                        run.save_optimizer(run.rewind_optimizer, tensors, {"step": step, "param_groups": state["param_groups"], "state": keys})
                    run.save(run.rewind_point, weights())

        def on_stop(state: RoundState) -> None:
            run.save_resume(r, *state.to_file())
            run.write_metrics(earlier + state.history)
            self.trackers.log_evals(state.history)

        member = Member(self.model, masks, study_seeds(config.seed)["data_seed"], resume, on_eval, on_stop, snapshots, fine_tunes(config, r))
        elapsed = sum(m["seconds"] for m in resume.history) if resume else 0.0
        return _RoundPlan(self, r, masks, pruned, member, total_steps, elapsed, time.perf_counter(), interrupted)

    def commit(self, plan: _RoundPlan, outcome: RoundOutcome, energy: EnergyReading) -> dict[str, Any]:
        """Store the round's weights, then its rounds.csv row: the round is done."""
        self.run.save(self.run.best(plan.r), outcome.best)
        self.run.save(self.run.final(plan.r), outcome.final)
        manifest = self.run.read_manifest()
        if manifest.get("execution", {}).get("engine", outcome.engine) != outcome.engine:  # the engine actually used
            self.run.write_manifest({**manifest, "execution": {**manifest["execution"], "engine": outcome.engine}})
        row = {**_round_row(plan, outcome, time.perf_counter() - plan.started), **energy.as_row()}
        if plan.interrupted and energy.kwh is not None:
            row["energy_method"] += "; resumed round: the interrupted part is not counted"
        self.rows.append(row)
        self.run.write_rounds(self.rows)
        self.trackers.log_round(row)
        return row


def _score_sample_record(config: Config, splits: Splits) -> dict[str, Any]:
    """Which training images SNIP or GraSP scored θ0 on, for the manifest (nothing for other criteria)."""
    if CRITERIA[config.prune.criterion].at_init not in ("snip", "grasp"):
        return {}
    try:
        index = balanced_sample(splits.train_y.cpu(), config.prune.score_images_per_class, score_sample_seed(config.seed))
    except ValueError as exc:
        raise ConfigError(f"prune.score_images_per_class: {exc} among the {len(splits.train_y)} training images; "
                          "lower it or train on more images") from None
    return {"score_sample": {"images_per_class": config.prune.score_images_per_class, "train_indices": index.tolist()}}


def _record_lr_change(run: RunDir, config: Config) -> None:
    """A changed learning rate (the one change `prepare` lets a resume make) is stored, with
    where it took effect."""
    old = run.read_config()
    if old.train.lr != config.train.lr:
        manifest = run.read_manifest()
        saved = run.load_resume()
        where = {"round": len(run.read_rounds()), "step": saved[2]["steps_done"] if saved else 0}
        manifest["history"] = [*manifest.get("history", []), {**where, "train.lr": [old.train.lr, config.train.lr],
                                                              "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}]
        run.write_config(config)
        run.write_manifest(manifest)
        print(f"lth: note: {run.root}: train.lr {old.train.lr:g} -> {config.train.lr:g} from round {where['round']} "
              f"step {where['step']} (recorded in {run.manifest.name})", file=sys.stderr)


@dataclass
class _RoundPlan:
    """One study's round between `begin_round` and `commit`."""

    study: Study
    r: int
    masks: Masks
    pruned: int
    member: Member
    total_steps: int
    elapsed_before: float  # seconds an interrupted attempt already spent on this round
    started: float
    interrupted: bool = False  # continues a saved position (not counted: a start at iter:K)


def _round_row(plan: _RoundPlan, outcome: RoundOutcome, seconds: float) -> dict[str, Any]:
    """The round's results as DESIGN §1 lists them, one rounds.csv row."""
    r, config, kept = plan.r, plan.study.config, count_kept(plan.masks)
    total = sum(m.numel() for m in plan.masks.values())
    return {
        "round": r, "criterion": config.prune.criterion if r else "none", "rewind": config.rewind if r else "none",
        "pruning_skipped": r > 0 and plan.pruned == 0, "pruned": plan.pruned,
        "weights_remaining": sum(kept.values()), "weights_prunable": total, "remaining_pct": 100.0 * sum(kept.values()) / total,
        **{key: getattr(outcome, key) for key in OUTCOME_COLUMNS}, "seconds": plan.elapsed_before + seconds, **{f"density/{n}": d for n, d in density(plan.masks).items()},
    }
