"""The engines behind the one training loop: stacked K-way training, channels-last, optimizer
state portability, and the execution settings' place in the config. GPU-only behaviour (CUDA
graphs) is in test_gpu.py; everything here runs on the CPU on real CIFAR-10 slices."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from lth import config as cfgmod
from lth.data import load_splits, to_float
from lth.engine import ModuleEngine, StackedEngine, load_optimizer_state, make_optimizer, numerics, use_graphs
from lth.masks import full_masks
from lth.models import build_model, prunable_names
from lth.train import Diverged, Member, RoundState, Stopped, train_rounds

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def splits(data_root):
    return load_splits(data_root, "cpu", train_size=120, val_size=100, test_size=100)


def short_train(**overrides: str) -> cfgmod.TrainConfig:
    base = {"train.steps": "12", "train.eval_every": "6", "train.batch_size": "20", "train.lr": "1e-3"}
    return cfgmod.apply_overrides(cfgmod.preset("quick"), {**base, **overrides}).train


def members(seeds=(0, 1)) -> list[Member]:
    """Studies with different θ0 and data orders; the second has half of one layer pruned."""
    out = []
    for seed in seeds:
        model = build_model("seed-cnn", seed)
        masks = full_masks(model, prunable_names(model))
        if seed % 2:
            masks["features.2.weight"] = torch.rand(masks["features.2.weight"].shape, generator=torch.Generator().manual_seed(seed)) > 0.5
        out.append(Member(model, masks, data_seed=100 + seed))
    return out


def test_stacked_gradients_are_each_studys_own(splits):
    """One backward through the vmapped K-way model gives every study the gradient it would
    get alone (to float32 rounding: vmap runs the convolutions grouped)."""
    cfg = short_train()
    solo = [build_model("seed-cnn", s) for s in (0, 1)]
    stacked = StackedEngine([copy.deepcopy(m) for m in solo], [full_masks(m, prunable_names(m)) for m in solo], cfg, CPU)
    idx = torch.stack([torch.arange(20), torch.arange(20, 40)])
    x, y = splits.train_x[idx], splits.train_y[idx]
    losses = torch.func.vmap(F.cross_entropy)(stacked.forward((stacked.params, stacked.buffers), to_float(x)), y)
    losses.sum().backward()
    for k, model in enumerate(solo):
        loss = F.cross_entropy(model(to_float(x[k])), y[k])
        loss.backward()
        assert math.isclose(loss.item(), losses[k].item(), rel_tol=1e-6)
        for name, p in model.named_parameters():
            got = stacked.params[name].grad[k]
            assert (got - p.grad).norm() <= 1e-4 * p.grad.norm() + 1e-12, name


def test_stacked_round_matches_separate_rounds_and_keeps_masks(splits):
    cfg = short_train()
    together = train_rounds(members(), splits, cfg, round_index=1)
    alone = [train_rounds([m], splits, cfg, round_index=1)[0] for m in members()]
    mask = members()[1].masks["features.2.weight"]
    assert torch.count_nonzero(together[1].final["features.2.weight"][~mask]) == 0
    assert torch.count_nonzero(together[1].best["features.2.weight"][~mask]) == 0
    for t, a in zip(together, alone):
        assert [h["step"] for h in t.history] == [h["step"] for h in a.history] == [6, 12]
        for ht, ha in zip(t.history, a.history):
            assert math.isclose(ht["train_loss"], ha["train_loss"], rel_tol=5e-3)
            assert math.isclose(ht["val_loss"], ha["val_loss"], rel_tol=5e-3)
        assert sorted(t.final) == sorted(a.final)


def test_stacked_round_is_deterministic_and_writes_back_each_model(splits):
    cfg = short_train()
    first, again = members(), members()
    a = train_rounds(first, splits, cfg, round_index=1)
    b = train_rounds(again, splits, cfg, round_index=1)
    for x, y, m in zip(a, b, first):
        assert all(torch.equal(x.final[k], y.final[k]) for k in x.final)
        assert x.history == [{**h, "seconds": x.history[i]["seconds"]} for i, h in enumerate(y.history)]
        assert all(torch.equal(x.final[k], v) for k, v in m.model.state_dict().items())  # model left at final


def test_stacked_resume_is_bit_identical(splits):
    """Resuming K studies from their saved per-study states (the format a single study saves)
    continues exactly as the uninterrupted K-way round."""
    cfg = short_train()
    saved: dict[int, object] = {}

    def keep(k):
        def on_eval(state):
            if state.steps_done == 6:
                saved[k] = copy.deepcopy(state)
        return on_eval

    first = members()
    for k, m in enumerate(first):
        m.on_eval = keep(k)
    whole = train_rounds(first, splits, cfg, round_index=1)
    single = ModuleEngine(build_model("seed-cnn", 0), full_masks(build_model("seed-cnn", 0), prunable_names(build_model("seed-cnn", 0))), cfg, CPU)
    reference = single.optimizer_state()
    assert sorted(saved[0].optimizer["state"]) == sorted(range(len(list(single.model.parameters()))))
    assert saved[0].optimizer["param_groups"][0]["params"] == reference["param_groups"][0]["params"]

    again = members()
    for k, m in enumerate(again):
        m.model.load_state_dict(saved[k].model)
        m.resume = saved[k]
    resumed = train_rounds(again, splits, cfg, round_index=1)
    for w, r in zip(whole, resumed):
        assert all(torch.equal(w.final[k], r.final[k]) for k in w.final)
        assert w.best_step == r.best_step


def test_members_at_different_positions_are_refused(splits):
    cfg = short_train()
    saved = {}
    alone = members((0,))[0]
    alone.on_eval = lambda state: saved.setdefault("state", copy.deepcopy(state))
    train_rounds([alone], splits, cfg, 1)
    group = members()
    group[0].resume = saved["state"]  # one study at step 6, the other fresh
    with pytest.raises(ValueError, match="same iteration"):
        train_rounds(group, splits, cfg, 1)


def test_channels_last_engine_trains_like_nchw_and_stores_contiguous(splits):
    cfg_cl = short_train(**{"train.channels_last": "true"})
    a = train_rounds(members((0,)), splits, cfg_cl, 1)[0]
    b = train_rounds(members((0,)), splits, short_train(), 1)[0]
    assert all(v.is_contiguous() for v in a.final.values())
    for ha, hb in zip(a.history, b.history):
        assert math.isclose(ha["val_loss"], hb["val_loss"], rel_tol=5e-3)


def test_optimizer_state_moves_between_adam_implementations():
    """A state saved by the multi-tensor Adam loads into a single-tensor (or fused/capturable
    GPU) Adam: the numbers travel, each optimizer keeps its own kernel flags."""
    model = build_model("seed-cnn", 0)
    cfg = cfgmod.preset("seed").train
    opt = make_optimizer(model.parameters(), cfg, CPU)
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    opt.step()
    other = torch.optim.Adam(build_model("seed-cnn", 0).parameters(), lr=cfg.lr, foreach=False)
    load_optimizer_state(other, opt.state_dict())
    assert other.param_groups[0]["foreach"] is False and other.param_groups[0]["eps"] == cfg.eps
    first = next(iter(opt.state.values()))
    loaded = next(iter(other.state.values()))
    assert torch.equal(first["exp_avg"], loaded["exp_avg"]) and float(loaded["step"]) == 1.0


def test_execution_settings_stay_out_of_the_hash_and_tf32_is_in():
    base = cfgmod.preset("seed")
    assert base.train.tf32 and base.train.engine == "auto" and not base.train.channels_last
    for key, value in (("train.engine", "eager"), ("train.channels_last", "true"), ("device", "cpu")):
        assert cfgmod.config_hash(cfgmod.apply_overrides(base, {key: value})) == cfgmod.config_hash(base), key
    assert cfgmod.config_hash(cfgmod.apply_overrides(base, {"train.tf32": "false"})) != cfgmod.config_hash(base)
    with pytest.raises(cfgmod.ConfigError, match="train.engine"):
        cfgmod.apply_overrides(base, {"train.engine": "turbo"})


def test_graph_engine_needs_cuda_and_auto_is_eager_on_cpu():
    assert use_graphs("auto", CPU) is False and use_graphs("eager", CPU) is False
    with pytest.raises(cfgmod.ConfigError, match="needs a CUDA device"):
        use_graphs("graph", CPU)


def test_numerics_sets_and_restores_the_tf32_flags():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    with numerics(False, CPU):
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    with numerics(True, torch.device("cuda")):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32 and torch.backends.cudnn.benchmark
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark) == before


def test_stacking_refuses_different_models():
    cfg = short_train()
    a, b = build_model("seed-cnn", 0), build_model("conv2", 0)
    with pytest.raises(ValueError, match="same model"):
        StackedEngine([a, b], [full_masks(a, prunable_names(a)), full_masks(b, prunable_names(b))], cfg, CPU)


class _RecordedGraph:
    """A CPU stand-in for a CUDA graph with the semantics `GraphedStep` relies on: capture
    records the iteration without running it; replay runs it again, its backward writing fresh
    gradients (a captured backward that started from unset gradients overwrites its gradient
    buffers on every replay, it never accumulates into them)."""

    def __init__(self, fn, params):
        self.fn, self.params = fn, list(params)

    def replay(self):
        for p in self.params:
            p.grad = None
        self.fn()


def test_graphed_step_control_flow_matches_eager_steps(splits, monkeypatch):
    """GraphedStep's CPU-side logic with the CUDA calls replaced by a recording stand-in:
    3 eager warm-up iterations, one capture with gradients unset, then replays that read the
    static index buffer, and partial batches run eagerly — bit-identical to plain eager steps."""
    from contextlib import nullcontext

    from lth import engine as engine_mod

    grads_at_capture = []

    def fake_capture(fn):
        grads_at_capture.append([p.grad for p in graphed.model.parameters()])
        return _RecordedGraph(fn, graphed.model.parameters())

    monkeypatch.setattr(engine_mod, "capture", fake_capture)
    monkeypatch.setattr(engine_mod, "side_stream", nullcontext)
    cfg = short_train()
    model = build_model("seed-cnn", 1)
    masks = members((1,))[0].masks
    eager = ModuleEngine(copy.deepcopy(model), masks, cfg, CPU)
    graphed = ModuleEngine(copy.deepcopy(model), masks, cfg, CPU)
    step = engine_mod.GraphedStep(graphed, splits.train_x, splits.train_y, cfg.batch_size)
    gen = torch.Generator().manual_seed(0)
    for i in range(9):
        size = 7 if i == 6 else cfg.batch_size  # one partial batch after the capture
        idx = torch.randint(0, 120, (1, size), generator=gen)
        engine_mod.eager_step(eager, splits.train_x, splits.train_y, idx)
        step(idx)
        assert (step.graph is None) == (i < engine_mod.GraphedStep.WARMUP)
    assert len(grads_at_capture) == 1 and all(g is None for g in grads_at_capture[0])
    assert torch.equal(eager.loss_sum, graphed.loss_sum) and torch.equal(eager.correct, graphed.correct)
    assert all(torch.equal(a, b) for a, b in zip(eager.state().values(), graphed.state().values()))


@pytest.mark.parametrize("k", [1, 2])
def test_bf16_trains_in_autocast_with_fp32_weights_and_exact_masks(splits, k):
    """`train.precision = "bf16"`: a different (lower-precision) trajectory, but weights, Adam's
    state and checkpoints stay fp32, pruned weights stay exactly zero, and K stacked studies too."""
    fp32 = train_rounds(members(range(k)), splits, short_train(), 1)
    bf16 = train_rounds(members(range(k)), splits, short_train(**{"train.precision": "bf16"}), 1)
    mask = members()[1].masks["features.2.weight"]
    for a, b in zip(fp32, bf16):
        assert all(v.dtype == torch.float32 for v in (*b.final.values(), *b.best.values()))
        assert all(math.isfinite(h["val_loss"]) and math.isfinite(h["train_loss"]) for h in b.history)
        assert not torch.equal(a.final["features.0.weight"], b.final["features.0.weight"])  # bf16 really ran
        assert math.isclose(a.history[-1]["val_loss"], b.history[-1]["val_loss"], rel_tol=0.05)  # and learned alike
    if k == 2:
        assert torch.count_nonzero(bf16[1].final["features.2.weight"][~mask]) == 0


def test_bf16_state_of_an_engine_is_fp32_and_resumes_exactly(splits):
    """A bf16 round interrupted at an evaluation and resumed ends where the whole round ends."""
    cfg = short_train(**{"train.precision": "bf16"})
    whole = train_rounds(members((0,)), splits, cfg, 1)[0]
    saved = []
    first = members((0,))[0]
    first.on_eval = lambda state: saved.append(copy.deepcopy(state))
    train_rounds([first], splits, cfg, 1)
    assert saved[0].steps_done == 6 and all(v.dtype == torch.float32 for v in saved[0].model.values())
    resumed = members((0,))[0]
    resumed.resume = saved[0]  # the position after the first evaluation (step 6)
    end = train_rounds([resumed], splits, cfg, 1)[0]
    assert all(torch.equal(end.final[n], whole.final[n]) for n in whole.final)


@pytest.mark.parametrize("k", [1, 2])
def test_a_stop_between_evaluations_saves_a_position_that_resumes_exactly(splits, k):
    """SIGTERM's path: the position after iteration 9 (evaluations at 6 and 12) goes through the
    resume file's format, training-metric sums included, and the round ends as an uninterrupted one."""
    cfg = short_train()
    whole = train_rounds(members()[:k], splits, cfg, round_index=1)
    saved: dict[int, tuple] = {}
    first = members()[:k]
    for i, m in enumerate(first):
        m.on_stop = lambda state, i=i: saved.__setitem__(i, state.to_file())
    calls = iter(range(100))
    with pytest.raises(Stopped) as stopped:
        train_rounds(first, splits, cfg, round_index=1, stop=lambda: next(calls) == 8)
    assert (stopped.value.round_index, stopped.value.step) == (1, 9) and sorted(saved) == list(range(k))
    assert saved[0][1]["partial"]["seen"] == 3 * 20 and saved[0][1]["steps_done"] == 9
    again = members()[:k]
    for i, m in enumerate(again):
        m.resume = RoundState.from_file(*saved[i])
    resumed = train_rounds(again, splits, cfg, round_index=1)
    timeless = lambda h: [{key: v for key, v in row.items() if key != "seconds"} for row in h]  # noqa: E731
    for w, r in zip(whole, resumed):
        assert all(torch.equal(w.final[name], r.final[name]) for name in w.final)
        assert timeless(w.history) == timeless(r.history) and w.best_step == r.best_step


def test_a_non_finite_loss_stops_the_round_at_once_naming_where(splits):
    saved = []
    member = members()[:1]
    member[0].on_eval = saved.append
    with pytest.raises(Diverged, match=r"round 1, epoch 1, step [12]: the training loss is (nan|inf)"):
        train_rounds(member, splits, short_train(**{"train.lr": "1e30"}), round_index=1)
    assert saved == []  # nothing after the divergence reached the caller to be saved


def test_a_failed_capture_falls_back_to_eager_once_with_one_warning(splits, monkeypatch, capsys):
    """`engine = "auto"`: a capture that raises costs one warning line naming the cause, and that
    round and every later one train eagerly, bit-identical to eager steps; `"graph"` raises it."""
    from contextlib import nullcontext

    from lth import engine as engine_mod

    tries = []

    def failing_capture(fn):
        tries.append(fn)
        raise RuntimeError("operation not permitted when stream is capturing\n(a second line)")

    monkeypatch.setattr(engine_mod, "capture", failing_capture)
    monkeypatch.setattr(engine_mod, "side_stream", nullcontext)
    monkeypatch.setattr(engine_mod.GraphedStep, "failure", None)
    cfg, model, masks = short_train(), build_model("seed-cnn", 1), members((1,))[0].masks
    eager = ModuleEngine(copy.deepcopy(model), masks, cfg, CPU)
    graphed = ModuleEngine(copy.deepcopy(model), masks, cfg, CPU)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):  # two rounds, each with its own GraphedStep
        step = engine_mod.GraphedStep(graphed, splits.train_x, splits.train_y, cfg.batch_size, fallback=True)
        for _ in range(6):
            idx = torch.randint(0, 120, (1, cfg.batch_size), generator=gen)
            engine_mod.eager_step(eager, splits.train_x, splits.train_y, idx)
            step(idx)
    assert len(tries) == 1
    err = capsys.readouterr().err
    assert err.count("lth: warning: CUDA graph capture failed (RuntimeError: operation not permitted when stream is capturing)") == 1
    assert err.count("\n") == 1
    assert all(torch.equal(a, b) for a, b in zip(eager.state().values(), graphed.state().values()))
    monkeypatch.setattr(engine_mod.GraphedStep, "failure", None)
    strict = engine_mod.GraphedStep(graphed, splits.train_x, splits.train_y, cfg.batch_size, fallback=False)
    with pytest.raises(RuntimeError, match="stream is capturing"):
        for _ in range(engine_mod.GraphedStep.WARMUP + 1):
            strict(torch.randint(0, 120, (1, cfg.batch_size), generator=gen))


def test_the_manifest_records_the_engine_actually_used(data_root, tmp_path, monkeypatch):
    """A study that asked for graphs (as on a GPU) but whose capture failed says so."""
    from contextlib import nullcontext

    from conftest import tiny_config
    from lth import engine as engine_mod
    from lth import study as study_mod
    from lth import train as train_mod

    def failing_capture(fn):
        raise RuntimeError("stand-in capture failure")

    monkeypatch.setattr(engine_mod, "capture", failing_capture)
    monkeypatch.setattr(engine_mod, "side_stream", nullcontext)
    monkeypatch.setattr(engine_mod.GraphedStep, "failure", None)
    monkeypatch.setattr(train_mod, "use_graphs", lambda engine, device: True)
    monkeypatch.setattr(study_mod, "use_graphs", lambda engine, device: True)
    config = cfgmod.apply_overrides(tiny_config(), {"prune.rounds": "0", "train.initial_epochs": "3"})
    result = study_mod.run_study(config, out=tmp_path / "run", data_dir=data_root, progress=False)
    execution = json.loads((result.run_dir / "manifest.json").read_text())["execution"]
    assert execution["engine"] == "eager (graph capture failed: RuntimeError: stand-in capture failure)"
