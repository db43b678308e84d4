"""`lth compare` on the real data: cells, matched random tickets, resume by skipping, executor seam."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import shutil

import pytest

from conftest import TINY_OVERRIDES
from lth import cells, compare
from lth.cli import main
from lth.config import ConfigError
from lth.masks import count_kept
from lth.rundir import RunDir
from conftest import load_tensors, read_rounds_csv

CELL_OVERRIDES = tuple({**TINY_OVERRIDES, "prune.rounds": "1", "train.initial_epochs": "2", "train.epochs": "2"}.items())
SPEC = cells.CompareSpec(
    name="tiny-comparison",
    base="quick",
    variants=(
        (("prune.criterion", "high-movement"), ("rewind", "init")),
        (("prune.criterion", "random"), ("rewind", "init"), ("prune.match", "@high-movement_init")),
    ),
    seeds=(0, 1),
    overrides=tuple((k, v) for k, v in CELL_OVERRIDES if k != "name"),
)


class CountingExecutor(concurrent.futures.ThreadPoolExecutor):
    def __init__(self):
        super().__init__(max_workers=1)
        self.submitted = 0

    def submit(self, fn, /, *args, **kwargs):
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


@pytest.fixture(scope="module")
def study(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("cmp") / "study"
    executor = CountingExecutor()
    result = compare.run_comparison(SPEC, out, data_dir=data_root, executor=executor, progress=False, log=lambda _: None)
    return result, executor


def test_every_cell_is_a_complete_run(study):
    result, executor = study
    assert executor.submitted == 4 and len(result.ran) == 4 and not result.skipped
    for label in ("high-movement_init", "random_init_matched"):
        for seed in (0, 1):
            run = RunDir(result.study_dir / label / f"seed-{seed}")
            assert len(read_rounds_csv(run.rounds)) == 2
    assert (result.study_dir / "study.toml").exists()
    assert (result.report_dir / "report.md").exists()


def test_random_cells_copy_the_same_seed_high_movement_ticket(study):
    result, _ = study
    for seed in (0, 1):
        hm = RunDir(result.study_dir / "high-movement_init" / f"seed-{seed}")
        rnd = RunDir(result.study_dir / "random_init_matched" / f"seed-{seed}")
        assert count_kept(load_tensors(rnd.mask(1))) == count_kept(load_tensors(hm.mask(1)))


def test_rerun_skips_complete_cells(study, data_root):
    result, _ = study
    again = compare.run_comparison(SPEC, result.study_dir, data_dir=data_root, progress=False, report=False, log=lambda _: None)
    assert not again.ran and len(again.skipped) == 4


def test_a_different_spec_in_the_same_dir_is_refused(study):
    result, _ = study
    other = cells.CompareSpec(name="x", base="quick", variants=SPEC.variants[:1], seeds=(0,))
    with pytest.raises(ConfigError, match="holds a different comparison"):
        compare.run_comparison(other, result.study_dir, log=lambda _: None)


def test_a_spec_that_only_adds_variants_or_seeds_extends_the_comparison(study, data_root, tmp_path):
    """Adding an arm to a finished comparison trains only the new cells; study.toml becomes the
    larger spec; reordering or changing what ran is still refused."""
    copy = shutil.copytree(study[0].study_dir, tmp_path / "study")
    wider = dataclasses.replace(SPEC, variants=SPEC.variants + ((("prune.criterion", "magnitude"), ("rewind", "reinit")),))
    assert compare.extends(SPEC, wider) and not compare.extends(wider, SPEC)
    assert not compare.extends(SPEC, dataclasses.replace(wider, variants=wider.variants[::-1]))
    assert not compare.extends(SPEC, dataclasses.replace(wider, overrides=(("train.epochs", "3"),)))
    lines: list[str] = []
    again = compare.run_comparison(wider, copy, data_dir=data_root, progress=False, report=False, log=lines.append)
    assert len(again.skipped) == 4 and [p.parent.name for p in again.ran] == ["magnitude_reinit"] * len(SPEC.seeds)
    assert any("adding 1 variant(s) and 0 seed(s)" in line for line in lines)
    assert cells.stored_spec(copy) == wider


def test_plan_validates_before_running(tmp_path):
    bad = cells.CompareSpec(name="x", base="quick", variants=((("prune.criterion", "nope"),),), seeds=(0,))
    with pytest.raises(ConfigError, match="unknown criterion"):
        cells.plan(bad, tmp_path)
    dangling = cells.CompareSpec(name="x", base="quick", variants=((("prune.criterion", "random"), ("prune.match", "@ghost")),), seeds=(0,))
    with pytest.raises(ConfigError, match="names no variant"):
        cells.plan(dangling, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_seed_comparison_preset_and_grid():
    spec = compare.COMPARISON_PRESETS["seed-comparison"]
    assert spec.seeds == (0, 1, 2) and spec.base == "seed"
    assert [cells.variant_label(v) for v in spec.variants] == ["high-movement_init", "magnitude_init", "random_init_matched", "high-movement_reinit"]
    assert len(cells.grid(["a", "b"], ["init", "reinit"], ["conv2", "conv4"])) == 8


def test_spec_file_and_cli_errors(tmp_path, capsys):
    spec_file = tmp_path / "s.toml"
    spec_file.write_text('name = "s"\nbase = "quick"\ncriteria = ["high-movement", "magnitude"]\nrewinds = ["init"]\nreplicates = 2\nseed = 3\n')
    spec = cells.load_spec(spec_file)
    assert spec.seeds == (3, 4) and len(spec.variants) == 2
    spec_file.write_text('name = "s"\ncolour = "red"\n')
    assert main(["compare", "--spec", str(spec_file), "--out", str(tmp_path / "o")]) == 2
    assert "unknown study key 'colour'" in capsys.readouterr().err
    assert main(["compare", "--preset", "quick", "--criteria", "high-movement,bogus", "--out", str(tmp_path / "o")]) == 2
    assert "unknown criterion 'bogus'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_show_side_by_side(study, capsys):
    result, _ = study
    assert main(["show", str(result.study_dir)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[0] == "round" and "high-movement_init/seed-0" in lines[0] and len(lines) == 3


def test_parallel_comparison_batches_cells_through_the_executor(study, data_root, tmp_path):
    """--parallel 2: the two seeds of each variant train together (one executor call per
    batch); the matched random cells still wait for and copy their high-movement tickets."""
    executor = CountingExecutor()
    result = compare.run_comparison(SPEC, tmp_path / "par", data_dir=data_root, executor=executor, progress=False, report=False, log=lambda _: None, parallel=2)
    assert executor.submitted == 2 and len(result.ran) == 4
    for seed in (0, 1):
        ticket = RunDir(tmp_path / "par" / "high-movement_init" / f"seed-{seed}")
        control = RunDir(tmp_path / "par" / "random_init_matched" / f"seed-{seed}")
        assert len(read_rounds_csv(control.rounds)) == 2
        assert count_kept(load_tensors(control.mask(1))) == count_kept(load_tensors(ticket.mask(1)))
