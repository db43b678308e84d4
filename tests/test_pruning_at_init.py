"""Pruning-at-initialization scores (SNIP, GraSP, SynFlow) against computations by hand on tiny
networks, where each answer can be written down without autograd."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lth.pruning_at_init import exponential_schedule, grasp_scores, snip_scores, synflow_scores


class TwoLayer(nn.Module):
    """x → W1 x → ReLU → W2 · → logits, no biases: small enough to differentiate by hand."""

    def __init__(self, w1: torch.Tensor, w2: torch.Tensor) -> None:
        super().__init__()
        self.hidden = nn.Linear(w1.shape[1], w1.shape[0], bias=False)
        self.output = nn.Linear(w2.shape[1], w2.shape[0], bias=False)
        with torch.no_grad():
            self.hidden.weight.copy_(w1)
            self.output.weight.copy_(w2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(torch.relu(self.hidden(x.flatten(1))))


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


@pytest.fixture
def tiny() -> tuple[TwoLayer, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    w1, w2 = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(2, 4, generator=g, dtype=torch.float64)
    x, y = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1])
    return TwoLayer(w1, w2).double(), x, y


def gradients_by_hand(w1: np.ndarray, w2: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """∂L/∂W1, ∂L/∂W2 of the mean cross-entropy, by the chain rule written out."""
    pre = x @ w1.T
    h = np.maximum(pre, 0)
    logits = h @ w2.T
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    d_logits = (p - np.eye(w2.shape[0])[y]) / len(y)
    d_w2 = d_logits.T @ h
    d_h = d_logits @ w2 * (pre > 0)
    return d_h.T @ x, d_w2


def test_snip_is_gradient_times_weight_by_hand(tiny):
    model, x, y = tiny
    w1, w2 = (model.hidden.weight.detach().numpy(), model.output.weight.detach().numpy())
    g1, g2 = gradients_by_hand(w1, w2, x.numpy(), y.numpy())
    names = ["hidden.weight", "output.weight"]
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    scores = snip_scores(model, masks, names, x, y, identity)
    np.testing.assert_allclose(scores["hidden.weight"].numpy(), np.abs(g1 * w1), rtol=1e-10)
    np.testing.assert_allclose(scores["output.weight"].numpy(), np.abs(g2 * w2), rtol=1e-10)
    assert torch.equal(model.hidden.weight, torch.from_numpy(w1))  # the study's model is untouched


def test_snip_scores_the_masked_network(tiny):
    model, x, y = tiny
    masks = {"hidden.weight": torch.ones(4, 3, dtype=torch.bool), "output.weight": torch.ones(2, 4, dtype=torch.bool)}
    masks["hidden.weight"][0, 0] = False
    w1 = model.hidden.weight.detach().numpy().copy()
    w1[0, 0] = 0
    g1, _ = gradients_by_hand(w1, model.output.weight.detach().numpy(), x.numpy(), y.numpy())
    scores = snip_scores(model, masks, ["hidden.weight"], x, y, identity)
    np.testing.assert_allclose(scores["hidden.weight"].numpy(), np.abs(g1 * w1), rtol=1e-10)
    assert scores["hidden.weight"][0, 0] == 0


def test_grasp_is_minus_weight_times_hessian_gradient_by_finite_differences(tiny):
    """H g from central differences of the hand gradient along g: an independent check of the
    double backward, and of the sign (−θ ⊙ Hg)."""
    model, x, y = tiny
    w1, w2 = (model.hidden.weight.detach().numpy(), model.output.weight.detach().numpy())
    xs, ys = x.numpy(), y.numpy()
    g1, g2 = gradients_by_hand(w1, w2, xs, ys)
    eps = 1e-6
    plus = gradients_by_hand(w1 + eps * g1, w2 + eps * g2, xs, ys)
    minus = gradients_by_hand(w1 - eps * g1, w2 - eps * g2, xs, ys)
    hg1, hg2 = ((p - m) / (2 * eps) for p, m in zip(plus, minus))
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    scores = grasp_scores(model, masks, ["hidden.weight", "output.weight"], x, y, identity)
    np.testing.assert_allclose(scores["hidden.weight"].numpy(), -w1 * hg1, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(scores["output.weight"].numpy(), -w2 * hg2, rtol=1e-5, atol=1e-9)


def test_synflow_is_the_path_sum_through_each_weight():
    """For x → |W2| |W1| x with an all-ones input, R = 1ᵀ|W2||W1|1, so W1[i, j]'s score is
    |W1[i, j]| · (column i's sum of |W2|) and W2[k, i]'s is |W2[k, i]| · (row i's sum of |W1|).
    ReLU never cuts: every parameter is made non-negative first."""
    g = torch.Generator().manual_seed(1)
    w1, w2 = torch.randn(4, 3, generator=g), torch.randn(2, 4, generator=g)
    model = TwoLayer(w1, w2)
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    scores = synflow_scores(model, masks, ["hidden.weight", "output.weight"], (3,))
    a1, a2 = w1.abs().double().numpy(), w2.abs().double().numpy()
    np.testing.assert_allclose(scores["hidden.weight"].numpy(), a1 * a2.sum(0)[:, None], rtol=1e-12)
    np.testing.assert_allclose(scores["output.weight"].numpy(), a2 * a1.sum(1)[None, :], rtol=1e-12)
    assert scores["hidden.weight"].dtype == torch.float64
    assert torch.equal(model.hidden.weight, w1)  # signs and values of the study's model untouched


def test_exponential_schedule_ends_at_the_target_and_never_rises():
    counts = exponential_schedule(1000, 100, 100)
    assert len(counts) == 100 and counts[-1] == 100 and counts[0] < 1000
    assert all(a >= b for a, b in zip(counts, counts[1:]))
    assert counts[49] == round(1000 * 0.1 ** 0.5)
    with pytest.raises(ValueError):
        exponential_schedule(10, 11, 5)


def test_balanced_sample_is_seeded_and_balanced():
    from lth.pruning_at_init import balanced_sample

    labels = torch.arange(100) % 10
    a, b, c = balanced_sample(labels, 3, 7), balanced_sample(labels, 3, 7), balanced_sample(labels, 3, 8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.bincount(labels[a], minlength=10).tolist() == [3] * 10 and len(set(a.tolist())) == 30
    with pytest.raises(ValueError, match="fewer than the 11"):
        balanced_sample(labels, 11, 0)


def test_layerwise_shuffle_keeps_counts_and_moves_positions():
    from lth.pruning_at_init import shuffle_within_tensors

    g = torch.Generator().manual_seed(3)
    masks = {"a": torch.rand(20, 30, generator=g) > 0.7, "b": torch.rand(50, generator=g) > 0.2}
    shuffled = shuffle_within_tensors(masks, seed=5)
    for name, mask in masks.items():
        assert shuffled[name].shape == mask.shape and shuffled[name].dtype == mask.dtype
        assert int(shuffled[name].sum()) == int(mask.sum())  # per-layer counts kept
        assert not torch.equal(shuffled[name], mask)  # positions moved
    assert all(torch.equal(shuffled[n], shuffle_within_tensors(masks, seed=5)[n]) for n in masks)  # seeded


def test_smart_ratio_weights_are_su_et_al_formula():
    from lth.pruning_at_init import smart_ratio_weights

    assert smart_ratio_weights(3) == [12, 6, 2]  # (L−l+1)² + (L−l+1) for l = 1, 2, 3
    assert smart_ratio_weights(3, depth_squared=True) == pytest.approx([12, 6 / 4, 2 / 9])  # VGG: divided by l²


def test_smart_ratio_counts_share_the_total_in_proportion_and_cap_at_a_whole_tensor():
    from lth.pruning_at_init import smart_ratio_counts

    sizes = {"a": 100, "b": 100, "c": 100}
    # Uncapped: keep ratios 12c, 6c, 2c with 100·20c = 100 → c = 0.05 → 60, 30, 10.
    assert smart_ratio_counts(sizes, 100, [12, 6, 2]) == {"a": 60, "b": 30, "c": 10}
    # Capped: 240 kept would give "a" 144 > 100; it keeps all, and 140 is shared 6:2 → 105 > 100,
    # so "b" keeps all too and "c" keeps the remaining 40.
    assert smart_ratio_counts(sizes, 240, [12, 6, 2]) == {"a": 100, "b": 100, "c": 40}
    uneven = {"conv": 27, "dense": 1000, "out": 70}
    for kept in range(0, sum(uneven.values()) + 1, 7):
        counts = smart_ratio_counts(uneven, kept, [12, 6, 2])
        assert sum(counts.values()) == kept and all(0 <= counts[n] <= uneven[n] for n in uneven)
    previous = smart_ratio_counts(uneven, 1097, [12, 6, 2])
    for kept in range(1096, -1, -1):  # a tensor's count falls with the total but for rounding by one
        counts = smart_ratio_counts(uneven, kept, [12, 6, 2])
        assert all(counts[n] <= previous[n] + 1 for n in uneven)
        previous = counts
    with pytest.raises(ValueError, match="cannot keep 301"):
        smart_ratio_counts(sizes, 301, [12, 6, 2])


def test_smart_ratio_masks_are_random_within_layers_seeded_and_nest():
    from lth.pruning_at_init import random_masks_with_counts

    full = {"a": torch.ones(10, 20), "b": torch.ones(30)}
    big = random_masks_with_counts(full, {"a": 50, "b": 12}, seed=4)
    small = random_masks_with_counts(full, {"a": 20, "b": 5}, seed=4)
    assert {n: int(m.sum()) for n, m in big.items()} == {"a": 50, "b": 12} and big["a"].dtype == full["a"].dtype
    assert all(bool((small[n] <= big[n]).all()) for n in full)  # one draw per study: fewer kept is a subset
    other = random_masks_with_counts(full, {"a": 50, "b": 12}, seed=5)
    assert not torch.equal(other["a"], big["a"])
    assert torch.equal(random_masks_with_counts(full, {"a": 50, "b": 12}, seed=4)["a"], big["a"])


def test_iterative_synflow_masks_equal_an_independent_computation():
    """100 steps of SynFlow from dense to 10% kept, global over both layers, against numpy: the
    path-sum scores of the masked |W1|, |W2| by hand, the lowest pruned, ties by position."""
    from lth.pruning_at_init import masks_at_init

    g = torch.Generator().manual_seed(2)
    w1, w2 = torch.randn(12, 8, generator=g), torch.randn(5, 12, generator=g)
    model = TwoLayer(w1, w2)
    names = ["hidden.weight", "output.weight"]
    full = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    target = round(0.1 * (96 + 60))
    got = masks_at_init(lambda m: synflow_scores(model, m, names, (8,)), full, {tuple(names): target}, largest=False, steps=100)

    a1, a2 = w1.abs().double().numpy(), w2.abs().double().numpy()
    m1, m2 = np.ones_like(a1, bool), np.ones_like(a2, bool)
    for count in exponential_schedule(156, target, 100):
        b1, b2 = a1 * m1, a2 * m2
        scores = np.concatenate([(b1 * b2.sum(0)[:, None]).ravel(), (b2 * b1.sum(1)[None, :]).ravel()])
        active = np.flatnonzero(np.concatenate([m1.ravel(), m2.ravel()]))
        k = len(active) - count
        flat = np.concatenate([m1.ravel(), m2.ravel()])
        flat[active[np.argsort(scores[active], kind="stable")[:k]]] = False
        m1, m2 = flat[:96].reshape(12, 8), flat[96:].reshape(5, 12)
    assert int(got["hidden.weight"].sum() + got["output.weight"].sum()) == target
    np.testing.assert_array_equal(got["hidden.weight"].numpy(), m1)
    np.testing.assert_array_equal(got["output.weight"].numpy(), m2)


def test_one_shot_snip_keeps_the_largest_scores_and_grasp_prunes_the_largest(tiny):
    from lth.pruning_at_init import masks_at_init

    model, x, y = tiny
    names = ["hidden.weight", "output.weight"]
    full = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    for scores_of, largest in ((snip_scores, False), (grasp_scores, True)):
        scores = scores_of(model, full, names, x, y, identity)
        masks = masks_at_init(lambda m: scores_of(model, m, names, x, y, identity), full, {tuple(names): 10}, largest=largest)
        flat_scores = torch.cat([scores[n].flatten() for n in names])
        flat_kept = torch.cat([masks[n].flatten() for n in names])
        assert int(flat_kept.sum()) == 10
        kept, gone = flat_scores[flat_kept], flat_scores[~flat_kept]
        assert (kept.max() <= gone.min()) if largest else (kept.min() >= gone.max())  # GraSP keeps the smallest −θ⊙Hg


@pytest.mark.parametrize("criterion", ["synflow", "snip", "grasp", "smart-ratio"])
def test_a_study_pruned_at_init_meets_the_iterative_ladder(criterion, data_root, tmp_path):
    """On tiny real CIFAR-10: every round's mask is made at θ0 and lands on the kept count the
    magnitude ladder reaches (no skips), the run verifies although masks need not nest, SNIP
    and GraSP record their sample, and a smart-ratio ticket keeps earlier layers denser."""
    import json

    from conftest import read_rounds_csv, tiny_config
    from lth import config as cfgmod
    from lth.rundir import RunDir
    from lth.study import run_study
    from lth.verify import run_problems

    base = cfgmod.apply_overrides(tiny_config(), {"energy.tracker": "off", "train.initial_epochs": "2", "train.epochs": "2",
                                                  "prune.score_images_per_class": "1", "train.channels_last": "false"})
    at_init = run_study(cfgmod.apply_overrides(base, {"prune.criterion": criterion}), out=tmp_path / criterion, data_dir=data_root, progress=False)
    magnitude = run_study(cfgmod.apply_overrides(base, {"prune.criterion": "magnitude"}), out=tmp_path / "magnitude", data_dir=data_root, progress=False)
    kept = lambda run: [int(r["weights_remaining"]) for r in read_rounds_csv(RunDir(run.run_dir).rounds)]  # noqa: E731
    assert kept(at_init) == kept(magnitude) and kept(at_init)[-1] < kept(at_init)[0]
    assert run_problems(RunDir(at_init.run_dir)) == []
    manifest = json.loads(RunDir(at_init.run_dir).manifest.read_text())
    assert ("score_sample" in manifest) == (criterion in ("snip", "grasp"))
    if criterion in ("snip", "grasp"):
        assert manifest["score_sample"]["images_per_class"] == 1 and len(manifest["score_sample"]["train_indices"]) <= 10
    if criterion == "smart-ratio":
        from lth.masks import density

        kept = density(RunDir(at_init.run_dir).load(RunDir(at_init.run_dir).mask(2)))
        layers = [kept[n] for n in manifest["prunable"]]  # first layer first
        assert layers == sorted(layers, reverse=True) and layers[0] > layers[-1]
