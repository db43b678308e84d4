"""open_lth's networks and recipes (ResNet-20, VGG-16; SGD, step schedule with warm-up, crop + flip)
and the rewind points past θ0 (learning-rate rewinding, iteration K with the optimizer state), on
the real data where training is involved."""

from __future__ import annotations

import copy
import math
import subprocess

import pytest
import torch
import torch.nn.functional as F

from conftest import load_tensors, read_metrics, read_rounds_csv, strip_timing
from lth import config as cfgmod
from lth.config import ConfigError, TrainConfig
from lth.data import crop_flip, load_splits
from lth.engine import ModuleEngine, StackedEngine
from lth.masks import full_masks
from lth.models import VGG16_PLAN, build_model, layer_types, prunable_names
from lth.rundir import RunDir
from lth.schedule import learning_rate, round_schedule
from lth.seeds import epoch_augmentation
from lth.study import compatible, pruning_plan, rewind_weights, run_study
from lth.train import Member, train_rounds
from test_resume import epochs_logged, kill_when
from test_resume import lth as lth_cmd

CPU = torch.device("cpu")
# resnet20-quick at test size: 128 real training images, 4 iterations an epoch, 4 epochs a round
# with warm-up over the first epoch and ×0.1 at epochs 2 and 3, crop + flip, 2 pruning rounds.
SMALL = {"name": "r20", "data.train_size": "128", "data.val_size": "100", "data.test_size": "100", "train.batch_size": "32",
         "train.initial_epochs": "4", "train.epochs": "4", "train.milestones": "2ep,3ep", "train.warmup": "1ep",
         "train.eval_batch_size": "100", "energy.tracker": "off", "device": "cpu", "train.channels_last": "false"}


def small(**overrides: str) -> cfgmod.Config:
    return cfgmod.apply_overrides(cfgmod.preset("resnet20-quick"), {**SMALL, **overrides})


@pytest.fixture(scope="module")
def splits(data_root):
    return load_splits(data_root, train_size=128, val_size=100, test_size=100)


# ---------------------------------------------------------------- models


def conv_bn(f_in: int, f_out: int, k: int = 3, bias: bool = False) -> int:
    """Parameters of a k×k conv (optionally with bias) and its batch norm (scale and shift)."""
    return f_in * f_out * k * k + (f_out if bias else 0) + 2 * f_out


def test_resnet20_parameter_count_follows_from_its_architecture():
    stem = conv_bn(3, 16)
    stage1 = 3 * 2 * conv_bn(16, 16)
    stage2 = conv_bn(16, 32) + conv_bn(32, 32) + conv_bn(16, 32, k=1) + 2 * 2 * conv_bn(32, 32)
    stage3 = conv_bn(32, 64) + conv_bn(64, 64) + conv_bn(32, 64, k=1) + 2 * 2 * conv_bn(64, 64)
    expected = stem + stage1 + stage2 + stage3 + 64 * 10 + 10
    model = build_model("resnet20", 0)
    assert sum(p.numel() for p in model.parameters()) == expected == 272_474  # "about 0.27 M"
    # Pruned: every conv kernel, the two 1×1 shortcut convs included; not the output layer, biases or batch norm.
    names = prunable_names(model)
    assert len(names) == 21 and "blocks.3.shortcut.0.weight" in names and "blocks.6.shortcut.0.weight" in names
    assert set(layer_types(model).values()) == {"conv", "output"} and layer_types(model)["fc.weight"] == "output"
    assert all(name.endswith(".weight") and "bn" not in name for name in names)


def test_vgg16_parameter_count_follows_from_its_architecture():
    widths = [w for w in VGG16_PLAN if w != "M"]
    expected = sum(conv_bn(f_in, f_out, bias=True) for f_in, f_out in zip([3, *widths], widths)) + 512 * 10 + 10
    model = build_model("vgg16", 0)
    assert sum(p.numel() for p in model.parameters()) == expected == 14_728_266  # "about 14.7 M"
    assert prunable_names(model) == [f"layers.{i}.conv.weight" for i, w in enumerate(VGG16_PLAN) if w != "M"]
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", ["resnet20", "vgg16"])
def test_open_lth_init_is_a_function_of_the_seed(name):
    a, b, c = (build_model(name, s).state_dict() for s in (3, 3, 4))
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a[prunable_names(build_model(name, 3))[0]], c[prunable_names(build_model(name, 3))[0]])
    bn = next(k for k in a if k.endswith("bn.weight") or k.endswith("bn1.weight"))
    assert 0 <= a[bn].min() and a[bn].max() < 1 and not torch.all(a[bn] == a[bn][0])  # uniform [0, 1) scales
    kernel = a[prunable_names(build_model(name, 3))[1]]
    fan_in = kernel[0].numel()
    assert math.isclose(kernel.std().item(), math.sqrt(2 / fan_in), rel_tol=0.1)  # Kaiming normal, ReLU gain


# ---------------------------------------------------------------- schedule


def test_open_lth_schedule_learning_rate_at_chosen_steps():
    t, per_epoch = cfgmod.preset("resnet20").train, 391  # 50,000 / 128: open_lth holds nothing out
    at = lambda step: learning_rate(t, step, per_epoch)  # noqa: E731
    assert at(0) == 0.1 and at(80 * per_epoch - 1) == 0.1
    assert math.isclose(at(80 * per_epoch), 0.01) and math.isclose(at(120 * per_epoch - 1), 0.01)
    assert math.isclose(at(120 * per_epoch), 0.001) and math.isclose(at(160 * per_epoch - 1), 0.001)


def test_warmup_rises_linearly_then_milestones_in_iterations():
    t = TrainConfig(optimizer="sgd", lr=0.4, warmup="4it", milestones="6it,8it", gamma=0.5)
    assert [learning_rate(t, s, 100) for s in range(10)] == [0.1, 0.2, 0.30000000000000004, 0.4, 0.4, 0.4, 0.2, 0.2, 0.1, 0.1]
    assert round_schedule(t, 100, total=10, fine_tune=True)(0) == 0.1  # fine-tuning: the schedule's last rate throughout
    assert round_schedule(t, 100, total=10)(0) == 0.1 and round_schedule(t, 100, total=10)(4) == 0.4


def test_warmup_from_zero_is_open_lths_lr_times_it_over_w():
    """open_lth's LambdaLR: min(1, it / W), so iteration 0 trains at learning rate 0."""
    t = TrainConfig(optimizer="sgd", lr=0.4, warmup="4it", warmup_from_zero=True)
    assert [learning_rate(t, s, 100) for s in range(6)] == [0.0, 0.1, 0.2, 0.30000000000000004, 0.4, 0.4]
    assert cfgmod.preset("resnet20").train.warmup_from_zero and not cfgmod.preset("resnet20-quick").train.warmup_from_zero


@pytest.mark.parametrize("key, value, words", [
    ("train.optimizer", "rmsprop", "train.optimizer"), ("train.momentum", "1.0", "train.momentum"),
    ("train.milestones", "80ep,40ep", "increasing"), ("train.milestones", "eighty", "train.milestones"), ("train.milestones", "5itep", "train.milestones"),
    ("train.warmup", "5 epochs", "train.warmup"), ("train.augment", "cutout", "train.augment"),
    ("train.gamma", "0", "train.gamma"), ("rewind", "iter:0", "rewind"), ("rewind", "iter:99999", "after round 0"),
])
def test_bad_recipe_values_are_refused_naming_the_key(key, value, words):
    with pytest.raises(ConfigError, match=words):
        cfgmod.apply_overrides(cfgmod.preset("resnet20-quick"), {key: value})


def test_momentum_and_nesterov_belong_to_sgd():
    with pytest.raises(ConfigError, match="train.momentum"):
        cfgmod.apply_overrides(cfgmod.preset("seed"), {"train.momentum": "0.9"})
    with pytest.raises(ConfigError, match="train.nesterov"):
        cfgmod.apply_overrides(cfgmod.preset("seed"), {"train.nesterov": "true"})
    assert cfgmod.apply_overrides(cfgmod.preset("resnet20"), {"train.nesterov": "true"}).train.nesterov


def test_new_keys_at_their_defaults_leave_every_earlier_hash_alone():
    # The hashes the presets had before the recipe keys existed (they name existing run directories).
    before = {"seed": "44618be7", "quick": "972aa46b", "fc-conv4": "64261eff", "seed-reinit": "fd71280d"}
    assert {name: cfgmod.config_hash(cfgmod.preset(name)) for name in before} == before
    assert "optimizer" not in cfgmod.computed(cfgmod.preset("seed"))["train"]
    assert cfgmod.computed(cfgmod.preset("resnet20"))["train"]["optimizer"] == "sgd"


def test_presets_carry_open_lths_defaults():
    for name in ("resnet20", "vgg16"):
        c = cfgmod.preset(name)
        t = c.train
        assert (t.optimizer, t.lr, t.momentum, t.weight_decay, t.batch_size, t.initial_epochs, t.epochs) == ("sgd", 0.1, 0.9, 1e-4, 128, 160, 160)
        assert (t.milestones, t.gamma, t.augment, c.prune.fraction, c.prune.scope, c.model) == ("80ep,120ep", 0.1, "crop-flip", 0.2, "global", name)
        quick = cfgmod.preset(f"{name}-quick")
        assert (quick.model, quick.train.optimizer, quick.train.augment) == (name, "sgd", "crop-flip")
        # The four points where the presets once differed from open_lth's defaults (issue 22).
        assert (c.data.validation, c.data.normalize, t.warmup_from_zero) == (0, "imagenet", True)
        assert c.data.train_images == 50_000
        types = layer_types(build_model(name, 0))
        names, _ = pruning_plan(c, build_model(name, 0))
        output = next(n for n, kind in types.items() if kind == "output")
        assert output == "fc.weight" and (output in names) == (name == "resnet20")  # ResNet-20 prunes fc.weight, VGG-16 does not
        hundred = cfgmod.preset(f"{name}-cifar100")
        assert (hundred.data.dataset, hundred.data.classes) == ("cifar100", 100)
        assert cfgmod.computed(hundred)["train"] == cfgmod.computed(c)["train"]  # one key away


def test_nesterov_and_weight_decay_reach_the_optimizer(splits):
    """The recipe's SGD options change the training as they should: Nesterov momentum another
    trajectory from the same start, a strong weight decay smaller weights."""
    def final(**overrides: str) -> dict[str, torch.Tensor]:
        cfg = small(**{"train.steps": "4", "train.eval_every": "4", **overrides}).train
        return train_rounds([Member(build_model("resnet20", 0), {}, data_seed=1)], splits, cfg, 0)[0].final

    plain, nesterov, decayed = final(), final(**{"train.nesterov": "true"}), final(**{"train.weight_decay": "0.5"})
    assert all(torch.isfinite(t).all() for t in nesterov.values() if t.is_floating_point())
    assert not torch.equal(plain["conv.weight"], nesterov["conv.weight"])
    kernels = prunable_names(build_model("resnet20", 0))
    assert sum(decayed[n].norm() for n in kernels) < sum(plain[n].norm() for n in kernels)
    engine = ModuleEngine(build_model("resnet20", 0), {}, small(**{"train.nesterov": "true"}).train, CPU)
    group = engine.optimizer.param_groups[0]
    assert type(engine.optimizer).__name__ == "SGD" and (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.9, True, 1e-4)


# ---------------------------------------------------------------- augmentation


def test_augmentation_is_deterministic_for_a_seed_and_differs_across_seeds(splits):
    a, b, other = epoch_augmentation(128, 7, 1, 2), epoch_augmentation(128, 7, 1, 2), epoch_augmentation(128, 8, 1, 2)
    assert torch.equal(a, b) and not torch.equal(a, other) and not torch.equal(a, epoch_augmentation(128, 7, 1, 3))
    assert a[:, :2].min() == 0 and a[:, :2].max() == 8 and set(a[:, 2].tolist()) == {0, 1}
    images = splits.train_x[:128]
    out = crop_flip(images, a)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    for i in range(0, 128, 17):  # each is the window of the zero-padded image, mirrored on a coin flip
        dy, dx, mirror = a[i].tolist()
        window = F.pad(images[i], (4, 4, 4, 4))[:, dy : dy + 32, dx : dx + 32]
        assert torch.equal(out[i], window.flip(-1) if mirror else window)
    assert torch.equal(crop_flip(images[:3], torch.tensor([[4, 4, 0]] * 3)), images[:3])  # centred, unmirrored: the image


def test_an_augmented_round_is_bit_reproducible_on_the_cpu(splits):
    cfg = small().train

    def once(seed: int) -> dict[str, torch.Tensor]:
        model = build_model("resnet20", 0)
        return train_rounds([Member(model, full_masks(model, prunable_names(model)), data_seed=seed)], splits, cfg, 0)[0].final

    a, b, c = once(1), once(1), once(2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv.weight"], c["conv.weight"])  # another data seed: other order and crops


# ---------------------------------------------------------------- batch norm stacked


@pytest.mark.parametrize("steps, lr, tolerance", [(2, "0.1", 1e-4), (16, "0.002", 2e-3)])
def test_stacked_batch_norm_round_equals_separate_rounds(splits, steps, lr, tolerance):
    """Two ResNet-20 studies (SGD + momentum + weight decay, crop + flip, warm-up) trained as one
    stacked model end like the two trained alone, batch-norm running statistics included, to float
    rounding: vmap runs the convolutions grouped, which sums in another order. A ResNet with batch
    norm on 32-image batches amplifies rounding fast (NCHW and channels-last alone part by 1e-3
    after 2 iterations at lr 0.1, Intel Xeon), so the whole round is compared at a small rate."""
    cfg = small(**{"train.steps": str(steps), "train.lr": lr, "train.eval_every": "2"}).train
    models = [build_model("resnet20", s) for s in (0, 1)]
    masks = [full_masks(m, prunable_names(m)) for m in models]
    masks[1]["blocks.4.conv1.weight"] = torch.rand(masks[1]["blocks.4.conv1.weight"].shape, generator=torch.Generator().manual_seed(1)) > 0.5
    together = train_rounds([Member(copy.deepcopy(m), k, data_seed=10 + i) for i, (m, k) in enumerate(zip(models, masks))], splits, cfg, 0)
    alone = [train_rounds([Member(copy.deepcopy(m), k, data_seed=10 + i)], splits, cfg, 0)[0] for i, (m, k) in enumerate(zip(models, masks))]
    for t, a in zip(together, alone):
        assert t.best_step == a.best_step and math.isclose(t.best_val_loss, a.best_val_loss, rel_tol=1e-3)
        assert list(t.final) == list(a.final)  # the module's own state_dict, buffers included, in its order
        for name, tensor in a.final.items():
            if tensor.is_floating_point():
                assert torch.allclose(t.final[name], tensor, rtol=0, atol=tolerance), name
            else:
                assert torch.equal(t.final[name], tensor) and int(tensor) == steps, name  # num_batches_tracked
        assert not torch.allclose(a.final["bn.running_mean"], torch.zeros(16))  # the statistics did move
    assert torch.count_nonzero(together[1].final["blocks.4.conv1.weight"][~masks[1]["blocks.4.conv1.weight"]]) == 0


def test_stacked_engine_evaluates_with_running_statistics(splits):
    models = [build_model("resnet20", s) for s in (0, 1)]
    engine = StackedEngine([copy.deepcopy(m) for m in models], [{}, {}], small().train, CPU)
    solo = [ModuleEngine(copy.deepcopy(m), {}, small().train, CPU) for m in models]
    got = engine.evaluate(splits.val_x, splits.val_y, 100)
    for (loss, acc), e in zip(got, solo):
        ((loss_1, acc_1),) = e.evaluate(splits.val_x, splits.val_y, 100)
        assert math.isclose(loss, loss_1, rel_tol=1e-5) and acc == acc_1
    assert engine.template.training  # back in training mode for the next step


# ---------------------------------------------------------------- rewinding past θ0


def test_learning_rate_rewinding_keeps_the_final_weights_and_replays_the_schedule(data_root, tmp_path, monkeypatch):
    import lth.engine

    seen: list[float] = []
    original = lth.engine._Engine.set_lr
    monkeypatch.setattr(lth.engine._Engine, "set_lr", lambda self, lr: (seen.append(lr), original(self, lr))[1])
    starts: list[dict[str, torch.Tensor]] = []
    original_train = lth.study.train_rounds

    def spy(members, *args, **kwargs):
        starts.append({k: v.clone() for k, v in members[0].model.state_dict().items()})
        return original_train(members, *args, **kwargs)

    monkeypatch.setattr(lth.study, "train_rounds", spy)
    config = small(rewind="lr", **{"prune.rounds": "1"})
    run = RunDir(run_study(config, out=tmp_path / "lr", data_dir=data_root, progress=False).run_dir)
    per_round = 16
    assert seen[:per_round] == seen[per_round:]  # the same 16 learning rates again: the schedule restarted
    assert seen[0] == 0.1 / 4 and math.isclose(seen[-1], 0.001)
    final0, mask1 = load_tensors(run.final(0)), load_tensors(run.mask(1))
    expected = {k: v * mask1[k] if k in mask1 else v for k, v in final0.items()}
    assert all(torch.equal(starts[1][k], expected[k]) for k in expected)  # round 1 started from round 0's final weights
    assert read_rounds_csv(run.rounds)[1]["rewind"] == "lr"
    assert torch.equal(rewind_weights(config, 1, run, load_tensors(run.init))["conv.weight"], final0["conv.weight"])
    # Linear mode connectivity from the round's own start (final weights, the schedule replayed) works on it.
    measured = subprocess.run(lth_cmd("stability", str(run.root), "--rounds", "1", "--points", "3"), capture_output=True, text=True)
    assert measured.returncode == 0, measured.stderr
    assert "round 1 (80.0% remaining) from lr: instability" in measured.stdout


def test_fine_tuning_runs_at_the_schedules_last_rate_and_is_not_stacked_with_a_replay(data_root, tmp_path, monkeypatch):
    import lth.engine

    seen: list[float] = []
    original = lth.engine._Engine.set_lr
    monkeypatch.setattr(lth.engine._Engine, "set_lr", lambda self, lr: (seen.append(lr), original(self, lr))[1])
    run_study(small(rewind="final", **{"prune.rounds": "1"}), out=tmp_path / "ft", data_dir=data_root, progress=False)
    schedule = [learning_rate(small().train, step, 4) for step in range(16)]
    assert seen[:16] == schedule  # round 0 trains the dense network on the whole schedule
    assert seen[16:] == [schedule[-1]] * 16  # round 1 fine-tunes at its last rate throughout
    a, b = small(rewind="final"), small(rewind="lr")
    assert "fine-tunes" in compatible(a, b)
    assert compatible(cfgmod.apply_overrides(cfgmod.preset("quick"), {"rewind": "final"}), cfgmod.preset("quick")) is None  # constant rate: no difference


def test_rewinding_to_iteration_k_restores_weights_optimizer_and_schedule(data_root, tmp_path, monkeypatch):
    import lth.engine

    seen: list[float] = []
    original = lth.engine._Engine.set_lr
    monkeypatch.setattr(lth.engine._Engine, "set_lr", lambda self, lr: (seen.append(lr), original(self, lr))[1])
    config = small(rewind="iter:6", **{"prune.rounds": "1"})
    run = RunDir(run_study(config, out=tmp_path / "k", data_dir=data_root, progress=False).run_dir)
    _, meta = run.load_optimizer(run.rewind_optimizer)
    assert meta["step"] == 6 and all(keys == ["momentum_buffer"] for keys in meta["state"].values())
    # Round 1 trains iterations 6..15: 10 learning rates, the schedule's own from iteration 6 on.
    assert len(seen) == 16 + 10 and seen[16:] == seen[6:16]
    metrics = [m for m in read_metrics(run.metrics) if m["round"] == 1]
    assert [m["step"] for m in metrics] == [8, 12, 16]  # evaluations at the round's epochs after K
    row = read_rounds_csv(run.rounds)[1]
    assert row["rewind"] == "iter:6" and int(row["best_step"]) > 6
    # The stored point is round 0's iteration 6; pruned weights start (and stay) at zero.
    mask1, final1 = load_tensors(run.mask(1)), load_tensors(run.final(1))
    assert all(torch.count_nonzero(final1[n][~m.bool()]) == 0 for n, m in mask1.items())
    assert load_tensors(run.rewind_point).keys() == load_tensors(run.init).keys()
    assert subprocess.run(lth_cmd("verify", str(run.root)), capture_output=True).returncode == 0
    # lth stability cannot yet start copies with an optimizer state: it says so instead of measuring something else.
    refused = subprocess.run(lth_cmd("stability", str(run.root), "--rounds", "1"), capture_output=True, text=True)
    assert refused.returncode == 2 and "not supported" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- end to end


def test_resnet20_quick_study_resumes_bit_identically_after_sigkill(data_root, tmp_path):
    """`lth run --preset resnet20-quick` at test size, killed mid-round 1 and resumed, writes what
    an uninterrupted run writes (CPU: bit for bit)."""
    args = ["--preset", "resnet20-quick", *[a for k, v in SMALL.items() for a in (f"--{k}", v)], "--data-dir", str(data_root), "--no-progress"]
    ref, run = RunDir(tmp_path / "ref"), RunDir(tmp_path / "killed")
    done = subprocess.run(lth_cmd("run", *args, "--out", str(ref.root)), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    kill_when(lth_cmd("run", *args, "--out", str(run.root)), lambda: epochs_logged(run, 1) >= 2, delay=0.2)
    assert run.resume_state.exists() and len(read_rounds_csv(run.rounds)) == 1
    resumed = subprocess.run(lth_cmd("resume", str(run.root), "--no-progress"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    for r in range(3):
        for kind in ("mask", "best", "final"):
            a, b = load_tensors(run.checkpoint(r, kind)), load_tensors(ref.checkpoint(r, kind))
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (r, kind)
    assert "bn.running_var" in load_tensors(run.final(2))
    assert strip_timing(read_rounds_csv(run.rounds)) == strip_timing(read_rounds_csv(ref.rounds))
    assert strip_timing(read_metrics(run.metrics)) == strip_timing(read_metrics(ref.metrics))
    rows = read_rounds_csv(ref.rounds)
    assert [r["criterion"] for r in rows] == ["none", "magnitude", "magnitude"]
    assert [round(float(r["remaining_pct"])) for r in rows] == [100, 80, 64]


# ---------------------------------------------------------------- open_lth's data handling


def test_without_a_validation_split_the_test_set_is_watched_and_best_is_final(data_root, tmp_path):
    """open_lth's way (`data.validation = 0`): all training images train, the evaluations watch
    the test set, and the best weights of every round are its final ones (the report says so)."""
    config = small(**{"data.validation": "0", "data.val_size": "none", "data.normalize": "imagenet", "prune.rounds": "1",
                      "prune.include_output": "true"})
    result = run_study(config, out=tmp_path / "run", data_dir=data_root, progress=False)
    run, rows = RunDir(result.run_dir), read_rounds_csv(RunDir(result.run_dir).rounds)
    for r, row in enumerate(rows):
        assert int(row["best_step"]) == 16 and math.isnan(float(row["best_val_loss"])), row  # 4 epochs of 4 iterations
        best, final = load_tensors(run.best(r)), load_tensors(run.final(r))
        assert all(best[k].equal(final[k]) for k in final)
    metrics = read_metrics(run.metrics)
    assert metrics and all("test_loss" in m and "val_loss" not in m for m in metrics)
    assert "fc.weight" in load_tensors(run.mask(1))  # include_output: the output layer is ranked too


def test_imagenet_normalisation_comes_after_the_crops_zero_padding():
    """As open_lth's transforms (pad, crop, then normalise): a padded border pixel becomes (0 - mean) / std."""
    from lth.data import IMAGENET_MEAN, IMAGENET_STD, input_transform

    images = torch.full((1, 3, 4, 4), 255, dtype=torch.uint8)
    shifted = crop_flip(images, torch.tensor([[0, 0, 0]]), pad=1)  # the window's top-left corner is padding
    x = input_transform((IMAGENET_MEAN, IMAGENET_STD), "cpu")(shifted)
    for c in range(3):
        assert math.isclose(x[0, c, 0, 0].item(), -IMAGENET_MEAN[c] / IMAGENET_STD[c], rel_tol=1e-6)
        assert math.isclose(x[0, c, 1, 1].item(), (1 - IMAGENET_MEAN[c]) / IMAGENET_STD[c], rel_tol=1e-6)
