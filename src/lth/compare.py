"""`lth compare`: a comparison study — variants (criteria × rewind points × models) × seeds —
run cell by cell into one study directory, then one combined report.

Each cell is an ordinary run directory (`<study>/<variant>/seed-<s>/`), so everything that
reads runs reads cells. Cells already complete are skipped and interrupted ones resumed, so
rerunning the same command continues a study. Cells go through an executor seam with the
`concurrent.futures.Executor` interface — sequential in this process by default — so a cluster
engine (submitit, ray) can be plugged in without touching the study logic.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import os
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from lth import config as cfgmod
from lth.config import Config, ConfigError
from lth.report import write_report
from lth.rundir import RunDir, RunDirBusy, atomic_write, prepare
from lth.study import StudyResult, compatible, run_studies

MATCH_PREFIX = "@"  # prune.match = "@<variant>" copies that variant's ticket of the same seed


@dataclass(frozen=True)
class CompareSpec:
    """What a comparison study runs. Variants are dotted-key overrides of the base preset."""

    name: str
    base: str
    variants: tuple[tuple[tuple[str, str], ...], ...]
    seeds: tuple[int, ...]
    overrides: tuple[tuple[str, str], ...] = ()

    def to_toml(self) -> str:
        return tomli_w.dumps(
            {
                "name": self.name,
                "base": self.base,
                "seeds": list(self.seeds),
                "overrides": dict(self.overrides),
                "variants": [dict(v) for v in self.variants],
            }
        )


def variant_label(variant: Sequence[tuple[str, str]]) -> str:
    """A directory-safe name saying what the variant changes, e.g. `magnitude_init`."""
    values = dict(variant)
    parts = [values.get("prune.criterion", ""), values.get("rewind", "")]
    parts += [f"{k.split('.')[-1]}-{v}" for k, v in variant if k not in ("prune.criterion", "rewind", "prune.match")]
    if "prune.match" in values:
        parts.append("matched")
    label = "_".join(p for p in parts if p) or "base"
    return label.replace("/", "-").replace(":", "")


def grid(criteria: Sequence[str], rewinds: Sequence[str], models: Sequence[str] = ()) -> tuple[tuple[tuple[str, str], ...], ...]:
    """Variants for every combination of criterion × rewind point (× model)."""
    axes: list[list[tuple[str, str]]] = [[("prune.criterion", c) for c in criteria], [("rewind", r) for r in rewinds]]
    if models:
        axes.append([("model", m) for m in models])
    return tuple(tuple(combo) for combo in itertools.product(*axes))


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


def load_spec(path: str | os.PathLike) -> CompareSpec:
    """A study TOML: name, base, seeds (or replicates + seed), overrides, and either explicit
    `variants = [{...}, ...]` or a grid `criteria`/`rewinds`/`models`."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read study file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    known = {"name", "base", "seeds", "replicates", "seed", "overrides", "variants", "criteria", "rewinds", "models"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown study key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
    if "variants" in data and any(k in data for k in ("criteria", "rewinds", "models")):
        raise ConfigError(f"{path}: give either variants or criteria/rewinds/models, not both")
    if "variants" in data:
        variants = tuple(tuple((str(k), str(v)) for k, v in dict(item).items()) for item in data["variants"])
    else:
        variants = grid(data.get("criteria", ["high-movement"]), data.get("rewinds", ["init"]), data.get("models", []))
    if "seeds" in data:
        seeds = tuple(int(s) for s in data["seeds"])
    else:
        seeds = tuple(range(int(data.get("seed", 0)), int(data.get("seed", 0)) + int(data.get("replicates", 1))))
    spec = CompareSpec(
        name=str(data.get("name", Path(path).stem)),
        base=str(data.get("base", "seed")),
        variants=variants,
        seeds=seeds,
        overrides=tuple((str(k), str(v)) for k, v in dict(data.get("overrides", {})).items()),
    )
    return spec


@dataclass(frozen=True)
class Cell:
    label: str
    seed: int
    config: Config
    out: Path
    depends_on: str | None = None  # the variant label whose same-seed run it matches


def plan(spec: CompareSpec, out: Path) -> list[Cell]:
    """Every cell's resolved config, validated before anything runs (bad input writes nothing)."""
    if not spec.variants or not spec.seeds:
        raise ConfigError("a comparison needs at least one variant and one seed")
    if len(set(spec.seeds)) != len(spec.seeds):
        raise ConfigError(f"seeds repeat: {list(spec.seeds)}")
    labels = [variant_label(v) for v in spec.variants]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"two variants share the label {next(l for l in labels if labels.count(l) > 1)!r}; make them differ")
    base = cfgmod.apply_overrides(cfgmod.preset(spec.base), dict(spec.overrides))
    cells = []
    for variant, label in zip(spec.variants, labels):
        overrides = dict(variant)
        match = overrides.get("prune.match", "")
        depends_on = None
        for seed in spec.seeds:
            cell_dir = out / label / f"seed-{seed}"
            if match.startswith(MATCH_PREFIX):
                depends_on = match[len(MATCH_PREFIX):]
                if depends_on not in labels:
                    raise ConfigError(f"variant {label}: prune.match {match!r} names no variant; use one of {', '.join('@' + l for l in labels)}")
                overrides["prune.match"] = str(out / depends_on / f"seed-{seed}")
            config = cfgmod.apply_overrides(base, {**overrides, "seed": str(seed), "name": f"{spec.name}-{label}"})
            cells.append(Cell(label, seed, config, cell_dir, depends_on))
    # Cells that copy another ticket run after the cells they copy.
    return sorted(cells, key=lambda c: c.depends_on is not None)


def is_complete(cell: Cell) -> bool:
    run = RunDir(cell.out)
    return run.is_run() and len(run.read_rounds()) == cell.config.prune.rounds + 1


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


def _run_cells(cells: list[Cell], data_dir: str | None, progress: bool | None) -> tuple[list[Path], list[Path]]:
    """One or several cells (trained together on one device, `--parallel`), continued where
    an earlier attempt stopped; (cells run, cells left to another process that holds them)."""
    try:
        results = run_studies([c.config for c in cells], [c.out for c in cells], data_dir=data_dir, resume=True, progress=progress)
    except RunDirBusy as busy:  # claimed before anything ran: the others go on without it
        rest = [c for c in cells if c.out.resolve() != busy.root.resolve()]
        ran, taken = _run_cells(rest, data_dir, progress) if rest else ([], [])
        return ran, [busy.root, *taken]
    return [r.run_dir for r in results], []


def run_replicates(config: Config, replicates: int, out: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None,
                   resume: bool = False, force: bool = False, progress: bool | None = None, parallel: int = 1) -> list[StudyResult]:
    """K seeds N..N+K-1 of one study, each in `<out>/seed-<s>/`, `parallel` at a time. Every
    directory is checked before the first starts, so a refused one leaves none half-done."""
    for flag, value in (("--replicates", replicates), ("--parallel", parallel)):
        if value < 1:
            raise ConfigError(f"{flag}: must be >= 1, got {value}")
    configs = [dataclasses.replace(config, seed=config.seed + i) for i in range(replicates)]
    parent = Path(out) if out is not None else Path("runs") / f"{config.name}-{cfgmod.config_hash(config)}-x{replicates}"
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


def run_comparison(
    spec: CompareSpec,
    out: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    executor: concurrent.futures.Executor | None = None,
    progress: bool | None = None,
    report: bool = True,
    log: Callable[[str], None] = print,
    parallel: int = 1,
) -> CompareResult:
    """Run every incomplete cell, then write the combined report into `<out>/report/`.

    `parallel` > 1 trains up to that many compatible cells together on one device; each batch
    of cells is one call through the executor."""
    if parallel < 1:
        raise ConfigError(f"--parallel: must be >= 1, got {parallel}")
    study = Path(out)
    cells = plan(spec, study)
    stored = study / "study.toml"
    if stored.exists() and stored.read_text() != spec.to_toml():
        raise ConfigError(f"{study} holds a different comparison (study.toml); continue it with its own spec or choose another --out")
    for cell in cells:  # refuse before running anything if a cell dir holds a foreign run
        if cell.out.exists() and any(cell.out.iterdir()) and not RunDir(cell.out).is_run() and not RunDir(cell.out).in_use():
            raise ConfigError(f"{cell.out} exists and is not an lth run; choose another --out")
    atomic_write(stored, spec.to_toml())
    executor = executor or SequentialExecutor()
    result = CompareResult(study)
    data = None if data_dir is None else str(data_dir)
    for wave in (False, True):  # cells that copy another ticket wait for the first wave
        todo = []
        for cell in (c for c in cells if (c.depends_on is not None) == wave):
            if is_complete(cell):
                result.skipped.append(cell.out)
                log(f"[{cell.label} seed {cell.seed}] complete, skipped")
                continue
            if cell.depends_on is not None and study / cell.depends_on / f"seed-{cell.seed}" in result.busy:
                result.busy.append(cell.out)
                log(f"[{cell.label} seed {cell.seed}] waits for {cell.depends_on}, which another process is running; left for later")
                continue
            log(f"[{cell.label} seed {cell.seed}] running into {cell.out}")
            todo.append(cell)
        pending = [executor.submit(_run_cells, batch, data, progress) for batch in parallel_batches(todo, parallel)]
        for future in pending:
            ran, busy = future.result()  # re-raises a cell's error here
            result.ran += ran
            result.busy += busy
            for path in busy:
                log(f"[{path}] in use by another lth process; left to it")
    if result.busy:
        log(f"report not written: {len(result.busy)} cell(s) still run elsewhere; rerun this command (or lth report {study}) when they finish")
    elif report:
        result.report_dir = write_report([study], out=study / "report")
        log(f"report: {result.report_dir / 'report.md'}")
    return result
