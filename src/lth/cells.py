"""The cells of a comparison study, on their own so that every place that handles cells shares one
definition without importing the others: `compare` plans and schedules them, `executors` runs them
as jobs, `status` reports on them. A cell is one variant at one seed, trained into its own run
directory (`<study>/<variant>/seed-<s>/`); the spec that yields the cells is here too, because a
job rebuilds its cells from the study's `study.toml` and nothing else.

Each cell has a job record, `<study>/jobs/cells/<variant>.seed-<s>.json`: which job last ran it and
how that ended. Jobs write it; `lth status` and `lth compare` read it.
"""

from __future__ import annotations

import itertools
import json
import os
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from lth import config as cfgmod
from lth.config import Config, ConfigError
from lth.rundir import RunDir, RunDirBusy, atomic_write
from lth.study import run_studies

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


def load_spec(path: str | os.PathLike) -> CompareSpec:
    """A study TOML: name, base, seeds (or replicates + seed), overrides, and either explicit
    `variants = [{...}, ...]` or a grid `criteria`/`rewinds`/`models`."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read study file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    known = {"name", "base", "seeds", "replicates", "seed", "overrides", "variants", "criteria", "rewinds", "models", "executor"}
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
    """One variant at one seed, trained into its own run directory `out`."""

    label: str
    seed: int
    config: Config
    out: Path
    depends_on: str | None = None  # the variant label whose same-seed run it matches

    @property
    def name(self) -> str:
        """How jobs, records and `lth status` name the cell: `<variant>/seed-<s>`."""
        return f"{self.label}/seed-{self.seed}"


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
            if config.track.enabled:  # the trackers group the study's cells and name each as lth status does
                config = cfgmod.apply_overrides(config, {"track.group": config.track.group or spec.name, "track.name": f"{label}/seed-{seed}"})
            cells.append(Cell(label, seed, config, cell_dir, depends_on))
    # Cells that copy another ticket run after the cells they copy.
    return sorted(cells, key=lambda c: c.depends_on is not None)


def is_complete(cell: Cell) -> bool:
    """Every round of the cell is committed in its run directory."""
    run = RunDir(cell.out)
    return run.is_run() and len(run.read_rounds()) == cell.config.prune.rounds + 1


# ---------------------------------------------------------------- the study directory's job bookkeeping


def study_file(study: Path) -> Path:
    return study / "study.toml"


def jobs_dir(study: Path) -> Path:
    return study / "jobs"


def job_record(study: Path, cell: Cell) -> Path:
    return jobs_dir(study) / "cells" / f"{cell.label}.seed-{cell.seed}.json"


def write_job_record(study: Path, cell: Cell, **record: Any) -> None:
    """What a job last did with a cell: submitted, running, requeued, stopped, done or failed,
    with its job id and log (atomic: `lth status` may read it at any moment)."""
    atomic_write(job_record(study, cell), json.dumps({"cell": cell.name, **record}) + "\n")


def read_job_record(study: Path, cell: Cell) -> dict[str, Any]:
    try:
        return json.loads(job_record(study, cell).read_text())
    except (OSError, ValueError):
        return {}


def stored_spec(study: Path) -> CompareSpec:
    """The spec a study directory holds, as `lth compare` wrote it."""
    if not study_file(study).is_file():
        raise ConfigError(f"{study} is not a comparison study (no study.toml); give the --out of an lth compare")
    return load_spec(study_file(study))


def cells_named(study: Path, names: Sequence[str] | None) -> list[Cell]:
    """The cells of the study on disk with these names (all of them for None), in plan order."""
    cells = plan(stored_spec(study), study)
    if names is None:
        return cells
    by_name = {c.name: c for c in cells}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ConfigError(f"{study}: no cell {unknown[0]!r} in its study.toml")
    return [by_name[n] for n in names]


# ---------------------------------------------------------------- running cells


def run_cells(cells: list[Cell], data_dir: str | None, progress: bool | None) -> tuple[list[Path], list[Path]]:
    """One or several cells (trained together on one device, `--parallel`), continued where
    an earlier attempt stopped; (cells run, cells left to another process that holds them)."""
    try:
        results = run_studies([c.config for c in cells], [c.out for c in cells], data_dir=data_dir, resume=True, progress=progress)
    except RunDirBusy as busy:  # claimed before anything ran: the others go on without it
        rest = [c for c in cells if c.out.resolve() != busy.root.resolve()]
        ran, taken = run_cells(rest, data_dir, progress) if rest else ([], [])
        return ran, [busy.root, *taken]
    return [r.run_dir for r in results], []
