"""Pruning criteria on hand-made tensors: exact counts, ties, scope, skip rules, registry."""

import pytest
import torch

from lth.pruning import (
    CRITERIA,
    CRITERIA_INFO,
    high_movement,
    low_movement,
    magnitude,
    magnitude_increase,
    movement_from_init,
    prune_count,
    prune_largest_global,
    random_prune,
    random_scores,
    select_prune,
)

PRUNABLE = ["a.weight", "b.weight"]


def states(best_a, best_b, final_a=None, final_b=None, out_move=100.0):
    """best/final dicts with an output layer that moves a lot (it must never be pruned)."""
    best = {"a.weight": best_a, "b.weight": best_b, "out.weight": torch.zeros(3), "a.bias": torch.zeros(2)}
    final = {
        "a.weight": torch.zeros_like(best_a) if final_a is None else final_a,
        "b.weight": torch.zeros_like(best_b) if final_b is None else final_b,
        "out.weight": torch.full((3,), out_move),
        "a.bias": torch.full((2,), out_move),
    }
    return best, final


def ones(*shapes):
    return {n: torch.ones(s, dtype=torch.bool) for n, s in zip(PRUNABLE, shapes)}


def test_registry_has_high_movement():
    assert CRITERIA["high-movement"] is high_movement


def test_exact_count_prunes_largest_movement():
    torch.manual_seed(0)
    best, final = states(torch.randn(4, 5), torch.randn(30))
    masks = ones((4, 5), (30,))
    new = high_movement(best, final, {}, masks, 0.1, PRUNABLE)
    pruned = {n: ~new[n] for n in PRUNABLE}
    assert sum(int(p.sum()) for p in pruned.values()) == 5  # round(0.1 * 50)
    scores = torch.cat([(best[n] - final[n]).abs().flatten() for n in PRUNABLE])
    flat_pruned = torch.cat([pruned[n].flatten() for n in PRUNABLE])
    assert scores[flat_pruned].min() > scores[~flat_pruned].max()


def test_count_uses_python_round_half_to_even():
    assert prune_count(25, 0.1) == 2 and prune_count(35, 0.1) == 4 and prune_count(15, 0.1) == 2
    best, final = states(torch.ones(25), torch.ones(0))
    new = high_movement(best, final, {}, ones((25,), (0,)), 0.1, PRUNABLE)
    assert int((~new["a.weight"]).sum()) == 2


def test_ties_are_broken_by_position_and_never_prune_more():
    best, final = states(torch.ones(10), torch.ones(10))  # every score is exactly 1
    new = high_movement(best, final, {}, ones((10,), (10,)), 0.1, PRUNABLE)
    assert (~new["a.weight"]).nonzero().flatten().tolist() == [0, 1]
    assert bool(new["b.weight"].all())
    again = high_movement(best, final, {}, ones((10,), (10,)), 0.1, PRUNABLE)
    assert all(torch.equal(new[n], again[n]) for n in PRUNABLE)


def test_already_pruned_stay_pruned_and_are_not_ranked():
    best, final = states(torch.arange(10.0), torch.arange(10.0) + 100)
    masks = ones((10,), (10,))
    masks["b.weight"][5:] = False  # pruned, and their stale scores are the largest of all
    new = high_movement(best, final, {}, masks, 0.2, PRUNABLE)
    assert not bool(new["b.weight"][5:].any())  # stay pruned
    newly = int(masks["a.weight"].sum() + masks["b.weight"].sum()) - int(new["a.weight"].sum() + new["b.weight"].sum())
    assert newly == 3  # round(0.2 * 15 active), not counting the 5 already pruned
    assert (~new["b.weight"][:5]).nonzero().flatten().tolist() == [2, 3, 4]


def test_output_layer_and_biases_untouched():
    best, final = states(torch.rand(10) * 0.01, torch.rand(10) * 0.01, out_move=1e6)
    masks = ones((10,), (10,))
    new = high_movement(best, final, {}, masks, 0.5, PRUNABLE)
    assert set(new) == set(PRUNABLE)
    assert int((~new["a.weight"]).sum() + (~new["b.weight"]).sum()) == 10


def test_skip_when_best_equals_final():
    w = torch.randn(6)
    best, final = states(w, w.clone(), final_a=w.clone(), final_b=w.clone())
    masks = ones((6,), (6,))
    masks["a.weight"][0] = False
    new = high_movement(best, final, {}, masks, 0.1, PRUNABLE)
    assert all(torch.equal(new[n], masks[n]) for n in PRUNABLE)
    # Only pruned weights moved: still nothing to rank among the active ones.
    final["a.weight"][0] += 5
    new = high_movement(best, final, {}, masks, 0.1, PRUNABLE)
    assert all(torch.equal(new[n], masks[n]) for n in PRUNABLE)


def test_global_threshold_across_layers_not_per_layer():
    best, final = states(torch.full((10,), 0.01), torch.full((10,), 5.0))
    best["b.weight"] = torch.linspace(1, 5, 10)
    new = high_movement(best, final, {}, ones((10,), (10,)), 0.25, PRUNABLE)
    assert bool(new["a.weight"].all())  # the low-movement layer keeps everything
    assert int((~new["b.weight"]).sum()) == 5  # all 5 = round(0.25 * 20) come from layer b


def test_inputs_not_mutated():
    best, final = states(torch.randn(8), torch.randn(8))
    masks = ones((8,), (8,))
    snapshot = {n: m.clone() for n, m in masks.items()}
    high_movement(best, final, {}, masks, 0.5, PRUNABLE)
    assert all(torch.equal(masks[n], snapshot[n]) for n in PRUNABLE)


# ---------------------------------------------------------------- every criterion
# Three small prunable layers in parameter order; "out.weight" and "fc.bias" are not prunable.
NAMES = ["conv.weight", "fc.weight", "output.weight"]
SHAPES = {"conv.weight": (2, 3), "fc.weight": (4,), "output.weight": (3,)}
SMALLEST = ["magnitude", "low-movement", "movement-from-init", "magnitude-increase"]


def full(names=NAMES):
    return {n: torch.ones(SHAPES[n], dtype=torch.bool) for n in names}


def with_scores(name, scores):
    """best, final, init whose score under criterion `name` is exactly the ordering of `scores`.

    Equal entries of `scores` give bit-identical scores, so ties stay ties.
    """
    best, final, init = {}, {}, {}
    for n, s in scores.items():
        s = torch.as_tensor(s, dtype=torch.float32).reshape(SHAPES[n])
        base = torch.full_like(s, 2.0)
        if name in ("magnitude",):
            best[n], final[n], init[n] = base, -s, base  # |w_final| = s (s >= 0)
        elif name in ("low-movement", "high-movement"):
            best[n], final[n], init[n] = base + s, base, base
        elif name == "movement-from-init":
            best[n], final[n], init[n] = base, base - s, base
        elif name == "magnitude-increase":
            best[n], final[n], init[n] = base, -(1.0 + s), torch.ones_like(s)  # |final| - |init| = s
        else:
            raise AssertionError(name)
    # Tensors outside `prunable` that would win any ranking if they were ever looked at.
    for state in (best, final, init):
        state["out.weight"] = torch.full((3,), float(len(state)))
        state["fc.bias"] = torch.zeros(4)
    final["out.weight"] = torch.full((3,), 1e6)
    return best, final, init


def pruned_idx(old, new, name):
    return (old[name] & ~new[name]).flatten().nonzero().flatten().tolist()


def random_states(seed=0):
    g = torch.Generator().manual_seed(seed)
    states = []
    for _ in range(3):
        s = {n: torch.randn(SHAPES[n], generator=g) for n in NAMES}
        s["out.weight"] = torch.randn(3, generator=g) * 1e6
        states.append(s)
    return states


def partly_pruned():
    masks = full()
    masks["conv.weight"][0, 1] = False
    masks["fc.weight"][3] = False
    masks["output.weight"][0] = False
    return masks


def test_registry_order_and_info():
    assert list(CRITERIA) == ["high-movement", "magnitude", "random", "low-movement", "movement-from-init", "magnitude-increase"]
    assert list(CRITERIA_INFO) == list(CRITERIA)
    for name, info in CRITERIA_INFO.items():
        assert CRITERIA[name] is info.fn
        assert set(info.uses) <= {"best", "final", "init"} and info.keeps
    assert CRITERIA_INFO["random"].uses == () and CRITERIA_INFO["magnitude"].uses == ("final",)
    assert CRITERIA["random"] is random_prune and CRITERIA["low-movement"] is low_movement
    assert CRITERIA["magnitude"] is magnitude and CRITERIA["movement-from-init"] is movement_from_init
    assert CRITERIA["magnitude-increase"] is magnitude_increase


@pytest.mark.parametrize("name", list(CRITERIA))
def test_reads_only_declared_inputs(name):
    states = dict(zip(("best", "final", "init"), random_states()))
    args = [states[k] if k in CRITERIA_INFO[name].uses else {} for k in ("best", "final", "init")]
    new = CRITERIA[name](*args, full(), 0.5, NAMES)
    assert sum(int(m.sum()) for m in new.values()) == 13 - round(0.5 * 13)


@pytest.mark.parametrize("name", list(CRITERIA))
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_shared_rules_for_every_criterion(name, scope):
    best, final, init = random_states(1)
    masks = partly_pruned()
    masks["extra.weight"] = torch.tensor([True, False, True])  # a mask outside `prunable`
    snap = [{k: v.clone() for k, v in d.items()} for d in (best, final, init, masks)]
    new = CRITERIA[name](best, final, init, masks, 0.4, NAMES, scope=scope)
    # Inputs untouched; the result is a new dict of fresh tensors.
    for before, after in zip(snap, (best, final, init, masks)):
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert new is not masks and set(new) == set(masks)
    assert all(new[k].data_ptr() != masks[k].data_ptr() for k in masks)
    assert torch.equal(new["extra.weight"], masks["extra.weight"])  # never touched
    for n in NAMES:
        assert new[n].dtype == torch.bool and new[n].shape == masks[n].shape
        assert not bool((new[n] & ~masks[n]).any())  # never resurrects
    active = {n: int(masks[n].sum()) for n in NAMES}  # 5, 3, 2
    lost = {n: active[n] - int(new[n].sum()) for n in NAMES}
    if scope == "global":
        assert sum(lost.values()) == round(0.4 * 10)
    else:
        assert lost == {n: round(0.4 * active[n]) for n in NAMES}  # 2, 1, 1
    new["conv.weight"][...] = False
    assert torch.equal(masks["conv.weight"], snap[3]["conv.weight"])


@pytest.mark.parametrize("name", list(CRITERIA))
def test_bad_scope_or_rates_raise(name):
    best, final, init = random_states()
    crit = CRITERIA[name]
    with pytest.raises(ValueError, match="scope"):
        crit(best, final, init, full(), 0.1, NAMES, scope="per-layer")
    with pytest.raises(ValueError, match="layer"):
        crit(best, final, init, full(), 0.1, NAMES, layer_fractions={"fc.weight": 0.2})  # global scope
    with pytest.raises(ValueError, match="not prunable"):
        crit(best, final, init, full(), 0.1, NAMES, scope="layer", layer_fractions={"out.weight": 0.2})
    with pytest.raises(ValueError):
        crit(best, final, init, full(), 0.1, NAMES, scope="layer", layer_fractions={"fc.weight": 1.5})


@pytest.mark.parametrize("name", SMALLEST)
def test_prunes_smallest_scores_exactly(name):
    scores = {"conv.weight": [5, 0.3, 9, 0.1, 7, 8], "fc.weight": [6, 0.2, 4, 3], "output.weight": [2, 10, 0.4]}
    best, final, init = with_scores(name, scores)
    masks = full()
    new = CRITERIA[name](best, final, init, masks, 0.3, NAMES)  # round(0.3 * 13) = 4
    assert pruned_idx(masks, new, "conv.weight") == [1, 3]
    assert pruned_idx(masks, new, "fc.weight") == [1]
    assert pruned_idx(masks, new, "output.weight") == [2]


@pytest.mark.parametrize("name", SMALLEST)
def test_smallest_ties_go_to_the_earlier_position(name):
    scores = {"conv.weight": [3, 1, 1, 1, 2, 3], "fc.weight": [1, 1, 3, 3], "output.weight": [1, 3, 3]}
    best, final, init = with_scores(name, scores)
    masks = full()
    new = CRITERIA[name](best, final, init, masks, 0.3, NAMES)  # 4 of the 6 tied ones go
    assert pruned_idx(masks, new, "conv.weight") == [1, 2, 3]
    assert pruned_idx(masks, new, "fc.weight") == [0]
    assert pruned_idx(masks, new, "output.weight") == []
    again = CRITERIA[name](best, final, init, masks, 0.3, NAMES)
    assert all(torch.equal(new[n], again[n]) for n in NAMES)


def test_high_movement_prunes_largest_under_the_new_signature():
    scores = {"conv.weight": [5, 0.3, 9, 0.1, 7, 8], "fc.weight": [6, 0.2, 4, 3], "output.weight": [2, 10, 0.4]}
    best, final, init = with_scores("high-movement", scores)
    masks = full()
    new = high_movement(best, final, init, masks, 0.3, NAMES)  # round(3.9) = 4: 10, 9, 8, 7
    assert {n: pruned_idx(masks, new, n) for n in NAMES} == {"conv.weight": [2, 4, 5], "fc.weight": [], "output.weight": [1]}
    layer = high_movement(best, final, init, masks, 0.3, NAMES, scope="layer")  # 2, 1, 1
    assert {n: pruned_idx(masks, layer, n) for n in NAMES} == {"conv.weight": [2, 5], "fc.weight": [0], "output.weight": [1]}
    assert torch.equal(prune_largest_global(
        {n: (best[n] - final[n]).abs() for n in NAMES}, masks, 0.3, NAMES)["conv.weight"], new["conv.weight"])


def test_magnitude_global_vs_layer_scope():
    # conv's weights are all small, fc's all large: a global ranking takes only from conv.
    final = {"conv.weight": torch.tensor([[0.1, -0.2, 0.3], [-0.4, 0.5, -0.6]]), "fc.weight": torch.tensor([1.0, -2.0, 3.0, -4.0])}
    names = ["conv.weight", "fc.weight"]
    masks = full(names)
    glob = magnitude({}, final, {}, masks, 0.5, names)  # round(0.5 * 10) = 5
    assert pruned_idx(masks, glob, "conv.weight") == [0, 1, 2, 3, 4]
    assert pruned_idx(masks, glob, "fc.weight") == []
    layer = magnitude({}, final, {}, masks, 0.5, names, scope="layer")  # 3 and 2
    assert pruned_idx(masks, layer, "conv.weight") == [0, 1, 2]
    assert pruned_idx(masks, layer, "fc.weight") == [0, 1]


def test_layer_fractions_per_name_with_output_rate_and_zero():
    # Frankle & Carbin style: conv at the default rate, the output layer at its own, fc frozen.
    final = {
        "conv.weight": torch.tensor([[0.6, 0.1, 0.5], [0.2, 0.4, 0.3]]),
        "fc.weight": torch.tensor([0.01, 0.02, 0.03, 0.04]),  # smallest of all, but rate 0
        "output.weight": torch.tensor([0.9, 0.05, 0.7]),
    }
    masks = full()
    rates = {"output.weight": 1 / 3, "fc.weight": 0.0}
    new = magnitude({}, final, {}, masks, 0.5, NAMES, scope="layer", layer_fractions=rates)
    assert pruned_idx(masks, new, "conv.weight") == [1, 3, 5]  # round(0.5 * 6) = 3: 0.1, 0.2, 0.3
    assert pruned_idx(masks, new, "fc.weight") == []
    assert pruned_idx(masks, new, "output.weight") == [1]  # round(3 / 3) = 1
    # The rate applies to the tensor's active weights (already-pruned ones are not counted again).
    new2 = magnitude({}, final, {}, new, 0.5, NAMES, scope="layer", layer_fractions=rates)
    assert pruned_idx(new, new2, "conv.weight") == [2, 4]  # round(0.5 * 3) = round(1.5) = 2: 0.5, 0.4
    assert int(new["conv.weight"].sum()) - int(new2["conv.weight"].sum()) == prune_count(3, 0.5)


def test_magnitude_increase_negative_scores_and_pruned_never_ranked():
    scores = {"conv.weight": [-0.5, 0.2, -0.1, 0.0, 0.3, 0.1], "fc.weight": [-1.0, 0.5, 0.05, 2.0], "output.weight": [1.0, 1.0, 1.0]}
    best, final, init = with_scores("magnitude-increase", scores)
    masks = full()
    masks["conv.weight"][1, 0] = False  # flat index 3: its masked score 0 would rank below 0.05
    new = magnitude_increase(best, final, init, masks, 4 / 12, NAMES)  # round(4/12 * 12) = 4
    assert pruned_idx(masks, new, "conv.weight") == [0, 2]
    assert pruned_idx(masks, new, "fc.weight") == [0, 2]
    assert pruned_idx(masks, new, "output.weight") == []
    assert not bool(new["conv.weight"][1, 0])


def test_movement_from_init_ignores_best():
    best, final, init = with_scores("movement-from-init", {"conv.weight": [1, 2, 3, 4, 5, 6], "fc.weight": [7, 8, 9, 10], "output.weight": [11, 12, 13]})
    other_best = {n: -100 * torch.arange(float(t.numel())).reshape(t.shape) for n, t in best.items()}
    a = movement_from_init(best, final, init, full(), 0.2, NAMES)
    b = movement_from_init(other_best, final, init, full(), 0.2, NAMES)
    assert all(torch.equal(a[n], b[n]) for n in NAMES)
    assert pruned_idx(full(), a, "conv.weight") == [0, 1, 2] and pruned_idx(full(), a, "fc.weight") == []


def test_low_movement_skip_rule():
    w = {n: torch.randn(SHAPES[n]) for n in NAMES}
    same = {n: t.clone() for n, t in w.items()}
    masks = partly_pruned()
    new = low_movement(w, same, {}, masks, 0.3, NAMES)
    assert all(torch.equal(new[n], masks[n]) and new[n] is not masks[n] for n in NAMES)
    # Only an already-pruned weight moved: still nothing to rank among the active ones.
    same["fc.weight"][3] += 5
    new = low_movement(w, same, {}, masks, 0.3, NAMES, scope="layer")
    assert all(torch.equal(new[n], masks[n]) for n in NAMES)
    # One active weight moved: low-movement now prunes the still (score 0) ones, earliest first.
    same["conv.weight"][0, 0] += 1
    new = low_movement(w, same, {}, masks, 0.3, NAMES)  # round(0.3 * 10) = 3
    assert pruned_idx(masks, new, "conv.weight") == [2, 3, 4]


# ---------------------------------------------------------------- random


def test_random_draw_is_the_seeded_generator_over_all_positions():
    a = random_scores(full(), NAMES, seed=7)
    b = random_scores(partly_pruned(), NAMES, seed=7)
    expected = torch.rand(13, generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.cat([a[n].flatten() for n in NAMES]), expected)
    assert all(torch.equal(a[n], b[n]) for n in NAMES)  # independent of the mask


def test_random_same_seed_same_masks_other_seed_differs():
    masks = partly_pruned()
    a = random_prune({}, {}, {}, masks, 0.5, NAMES, seed=3)
    b = random_prune({}, {}, {}, masks, 0.5, NAMES, seed=3)
    c = random_prune({}, {}, {}, masks, 0.5, NAMES, seed=4)
    assert all(torch.equal(a[n], b[n]) for n in NAMES)
    assert not all(torch.equal(a[n], c[n]) for n in NAMES)
    assert sum(int(masks[n].sum()) - int(a[n].sum()) for n in NAMES) == round(0.5 * 10)


def test_random_prunes_the_lowest_draws_among_active_only():
    masks = partly_pruned()
    draw = random_scores(masks, NAMES, seed=11)
    new = random_prune({}, {}, {}, masks, 0.3, NAMES, seed=11)  # round(0.3 * 10) = 3
    flat_draw = torch.cat([draw[n].flatten() for n in NAMES])
    flat_old = torch.cat([masks[n].flatten() for n in NAMES])
    flat_new = torch.cat([new[n].flatten() for n in NAMES])
    active = flat_old.nonzero().flatten()
    expected = active[flat_draw[active].argsort()[:3]].sort().values
    assert (flat_old & ~flat_new).nonzero().flatten().tolist() == expected.tolist()
    # From a full mask the same draw decides: the 4 = round(3.9) lowest of all 13 positions.
    full_new = random_prune({}, {}, {}, full(), 0.3, NAMES, seed=11)
    flat_full = torch.cat([full_new[n].flatten() for n in NAMES])
    assert (~flat_full).nonzero().flatten().tolist() == flat_draw.argsort()[:4].sort().values.tolist()


def test_random_target_kept_exact_per_layer():
    masks = partly_pruned()  # active: conv 5, fc 3, output 2
    target = {"conv.weight": 2, "fc.weight": 3, "output.weight": 0}
    for seed in range(5):
        new = random_prune({}, {}, {}, masks, 0.1, NAMES, seed=seed, target_kept=target)
        assert {n: int(new[n].sum()) for n in NAMES} == target
        assert all(not bool((new[n] & ~masks[n]).any()) for n in NAMES)  # never resurrects
        assert torch.equal(new["fc.weight"], masks["fc.weight"])
    # Follows another run's densities round by round.
    other = magnitude({}, {n: torch.randn(SHAPES[n]) for n in NAMES}, {}, masks, 0.5, NAMES, scope="layer")
    follow = random_prune({}, {}, {}, masks, 0.5, NAMES, target_kept={n: int(m.sum()) for n, m in other.items()})
    assert {n: int(follow[n].sum()) for n in NAMES} == {n: int(other[n].sum()) for n in NAMES}


@pytest.mark.parametrize(
    "target",
    [
        {"conv.weight": 6, "fc.weight": 3, "output.weight": 2},  # more than conv's 5 active
        {"conv.weight": -1, "fc.weight": 3, "output.weight": 2},
        {"conv.weight": 5, "fc.weight": 3},  # a prunable tensor missing
        {"conv.weight": 5, "fc.weight": 3, "output.weight": 2, "out.weight": 1},  # not prunable
        {"conv.weight": 2.5, "fc.weight": 3, "output.weight": 2},
    ],
)
def test_random_bad_target_kept_raises(target):
    masks = partly_pruned()
    with pytest.raises(ValueError):
        random_prune({}, {}, {}, masks, 0.1, NAMES, target_kept=target)


def test_random_target_kept_with_layer_fractions_raises():
    good = {"conv.weight": 5, "fc.weight": 3, "output.weight": 2}
    with pytest.raises(ValueError):
        random_prune({}, {}, {}, partly_pruned(), 0.1, NAMES, scope="layer", layer_fractions={"fc.weight": 0.5}, target_kept=good)


def test_select_prune_direction_and_scope():
    scores = {"conv.weight": torch.tensor([[1.0, 2, 3], [4, 5, 6]]), "fc.weight": torch.tensor([0.5, 9, 9, 0.5])}
    names = ["conv.weight", "fc.weight"]
    masks = full(names)
    low = select_prune(scores, masks, names, 0.2, largest=False)
    high = select_prune(scores, masks, names, 0.2, largest=True)
    assert pruned_idx(masks, low, "fc.weight") == [0, 3] and pruned_idx(masks, low, "conv.weight") == []
    assert pruned_idx(masks, high, "fc.weight") == [1, 2] and pruned_idx(masks, high, "conv.weight") == []
    layer = select_prune(scores, masks, names, 0.2, largest=True, scope="layer", layer_fractions={"conv.weight": 0.0})
    assert pruned_idx(masks, layer, "conv.weight") == [] and pruned_idx(masks, layer, "fc.weight") == [1]
