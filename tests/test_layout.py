"""The memory layout a CPU study trains in (issue 16): measured on the machine, cached, recorded in
the manifest, pinned by a flag and into the stored config; a study trains exactly as the same
choice made by hand would."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import load_tensors, read_rounds_csv, strip_timing, tiny_config
from lth import config as cfgmod
from lth import layout
from lth.rundir import RunDir
from lth.study import run_study


def dense(**overrides: str) -> cfgmod.Config:
    return cfgmod.apply_overrides(tiny_config(), {"prune.rounds": "0", **overrides})


def seed_cache(choice: bool, config: cfgmod.Config) -> None:
    layout.cache_file().parent.mkdir(parents=True, exist_ok=True)
    layout.cache_file().write_text(json.dumps({layout.machine_key(config): {"channels_last": choice}}))


def execution(out) -> dict:
    return json.loads(RunDir(out).manifest.read_text())["execution"]


def test_the_probe_times_both_layouts_on_its_own_copy():
    config = dense()
    rng = torch.get_rng_state()
    seconds = layout.step_seconds(config, steps=2, rounds=1)
    assert set(seconds) == {False, True} and all(s > 0 for s in seconds.values())
    assert torch.equal(torch.get_rng_state(), rng)  # the study's random stream is untouched
    key = layout.machine_key(config)
    assert torch.__version__ in key and "seed-cnn" in key and f"batch {config.train.batch_size}" in key


def test_measured_once_then_cached_and_recorded(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv(layout.CACHE_ENV_VAR, str(tmp_path / "cache"))
    run_study(dense(), out=tmp_path / "a", data_dir=data_root, progress=False)
    first = execution(tmp_path / "a")
    assert first["chosen"] == "measured" and isinstance(first["channels_last"], bool) and first["engine"] == "eager"
    cached = json.loads(layout.cache_file().read_text())[layout.machine_key(dense())]
    assert cached["channels_last"] == first["channels_last"] and set(cached["seconds_per_step"]) == {"nchw", "channels_last"}
    assert RunDir(tmp_path / "a").read_config().train.channels_last == first["channels_last"]  # pinned for a resume
    run_study(dense(), out=tmp_path / "b", data_dir=data_root, progress=False)
    assert execution(tmp_path / "b") == {**first, "chosen": "cached"}


@pytest.mark.parametrize("choice", [False, True])
def test_a_chosen_layout_trains_exactly_as_the_same_layout_pinned(data_root, tmp_path, monkeypatch, choice):
    monkeypatch.setenv(layout.CACHE_ENV_VAR, str(tmp_path / "cache"))
    seed_cache(choice, dense())
    auto = run_study(dense(), out=tmp_path / "auto", data_dir=data_root, progress=False)
    pinned = run_study(dense(**{"train.channels_last": str(choice).lower()}), out=tmp_path / "pinned", data_dir=data_root, progress=False)
    assert execution(auto.run_dir) == {"channels_last": choice, "chosen": "cached", "engine": "eager"}
    assert execution(pinned.run_dir)["chosen"] == "config"
    for kind in ("best", "final"):
        a, b = load_tensors(RunDir(auto.run_dir).checkpoint(0, kind)), load_tensors(RunDir(pinned.run_dir).checkpoint(0, kind))
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert strip_timing(read_rounds_csv(RunDir(auto.run_dir).rounds)) == strip_timing(read_rounds_csv(RunDir(pinned.run_dir).rounds))


def test_a_resume_keeps_the_layout_stored_with_the_run(data_root, tmp_path, monkeypatch):
    """Round 1 is taken back and retrained after the machine's cached answer changed: it comes
    out bit-identical, so it trained in the layout stored with the run, not the new answer."""
    monkeypatch.setenv(layout.CACHE_ENV_VAR, str(tmp_path / "cache"))
    config = dense(**{"prune.rounds": "1"})
    seed_cache(True, config)
    run = RunDir(run_study(config, out=tmp_path / "run", data_dir=data_root, progress=False).run_dir)
    before = load_tensors(run.final(1))
    run.write_rounds(run.read_rounds()[:1])
    seed_cache(False, config)
    run_study(config, out=run.root, data_dir=data_root, resume=True, progress=False)
    after = load_tensors(run.final(1))
    assert run.read_config().train.channels_last is True and all(torch.equal(before[k], after[k]) for k in before)


def test_auto_is_accepted_and_stays_out_of_the_hash():
    auto = cfgmod.apply_overrides(cfgmod.preset("seed"), {"train.channels_last": "auto"})
    assert auto.train.channels_last is None and "channels_last" not in cfgmod.to_toml(auto)
    pinned = cfgmod.apply_overrides(auto, {"train.channels_last": "true"})
    assert cfgmod.config_hash(auto) == cfgmod.config_hash(pinned) == cfgmod.config_hash(cfgmod.preset("seed"))


@pytest.mark.parametrize("flags, warned", [({"avx2", "avx512f"}, True), ({"avx2", "avx512f", "avx512_bf16"}, False), ({"avx2", "amx_bf16"}, False)])
def test_bf16_on_a_cpu_that_only_emulates_it_says_so_in_one_line(data_root, tmp_path, monkeypatch, capsys, flags, warned):
    """A Xeon with AVX-512 but neither AMX nor AVX512-BF16 trains bf16 2.6x slower than fp32: one
    warning at the start names the fix; a CPU with native bf16, or an fp32 study, hears nothing."""
    monkeypatch.setattr(layout, "cpu_flags", lambda: flags)
    bf16 = dense(**{"train.precision": "bf16", "train.steps": "2", "train.eval_every": "1", "train.channels_last": "false"})
    run_study(bf16, out=tmp_path / "bf16", data_dir=data_root, progress=False)
    lines = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert lines == (["lth: warning: train.precision = \"bf16\" on a CPU without native bf16 (neither AMX nor AVX512-BF16): "
                      "it is emulated and slower than fp32 here; use --train.precision fp32"] if warned else [])
    assert layout.bf16_warning([dense()]) is None  # fp32 never warns


def test_a_network_without_convolutions_is_neither_measured_nor_cached(tmp_path, monkeypatch):
    monkeypatch.setenv(layout.CACHE_ENV_VAR, str(tmp_path / "cache"))
    monkeypatch.setattr(layout, "step_seconds", lambda *a, **k: pytest.fail("measured a network without convolutions"))
    lenet = cfgmod.apply_overrides(dense(), {"model": "lenet-300-100"})
    assert layout.choose(lenet) == (False, "no convolutions")
    assert not layout.cache_file().exists()
