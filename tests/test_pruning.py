"""Pruning on hand-made tensors: criteria as scores, counts, the shared selection, skip rules, registry."""

import pytest
import torch

from lth.pruning import CRITERIA, Criterion, next_masks, prune_count, prune_counts, select

PRUNABLE = ["a.weight", "b.weight"]


def prune(name, best, final, init, masks, fraction, names, rates=None, seed=0, target_kept=None):
    """One round of criterion `name`: the counts, then `next_masks`."""
    return next_masks(name, best, final, init, masks, prune_counts(masks, names, rates, fraction, target_kept), seed)


def layer(names, fraction, special=None):
    """Per-tensor rates (Frankle & Carbin): `fraction` everywhere but in `special`."""
    return {n: (special or {}).get(n, fraction) for n in names}


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


def test_exact_count_prunes_largest_movement():
    torch.manual_seed(0)
    best, final = states(torch.randn(4, 5), torch.randn(30))
    masks = ones((4, 5), (30,))
    new = prune("high-movement", best, final, {}, masks, 0.1, PRUNABLE)
    pruned = {n: ~new[n] for n in PRUNABLE}
    assert sum(int(p.sum()) for p in pruned.values()) == 5  # round(0.1 * 50)
    scores = torch.cat([(best[n] - final[n]).abs().flatten() for n in PRUNABLE])
    flat_pruned = torch.cat([pruned[n].flatten() for n in PRUNABLE])
    assert scores[flat_pruned].min() > scores[~flat_pruned].max()


def test_count_uses_python_round_half_to_even():
    assert prune_count(25, 0.1) == 2 and prune_count(35, 0.1) == 4 and prune_count(15, 0.1) == 2
    best, final = states(torch.ones(25), torch.ones(0))
    masks = ones((25,), (0,))
    assert prune_counts(masks, PRUNABLE, None, 0.1) == {tuple(PRUNABLE): 2}
    new = prune("high-movement", best, final, {}, masks, 0.1, PRUNABLE)
    assert int((~new["a.weight"]).sum()) == 2


def test_prune_counts_global_per_tensor_and_target():
    masks = ones((10,), (5,))
    masks["a.weight"][:2] = False  # active: a 8, b 5
    assert prune_counts(masks, PRUNABLE, None, 0.5) == {("a.weight", "b.weight"): round(0.5 * 13)}
    assert prune_counts(masks, PRUNABLE, {"a.weight": 0.5, "b.weight": 0.0}, 0.9) == {("a.weight",): 4, ("b.weight",): 0}
    target = {"a.weight": 3, "b.weight": 5}
    expected = {("a.weight",): 5, ("b.weight",): 0}
    assert prune_counts(masks, PRUNABLE, None, 0.9, target) == expected
    # With a target, neither the fraction nor per-tensor rates set any count.
    assert prune_counts(masks, PRUNABLE, {"a.weight": 0.1, "b.weight": 0.9}, 0.1, target) == expected


def test_ties_are_broken_by_position_and_never_prune_more():
    best, final = states(torch.ones(10), torch.ones(10))  # every score is exactly 1
    new = prune("high-movement", best, final, {}, ones((10,), (10,)), 0.1, PRUNABLE)
    assert (~new["a.weight"]).nonzero().flatten().tolist() == [0, 1]
    assert bool(new["b.weight"].all())
    again = prune("high-movement", best, final, {}, ones((10,), (10,)), 0.1, PRUNABLE)
    assert all(torch.equal(new[n], again[n]) for n in PRUNABLE)


def test_already_pruned_stay_pruned_and_are_not_ranked():
    best, final = states(torch.arange(10.0), torch.arange(10.0) + 100)
    masks = ones((10,), (10,))
    masks["b.weight"][5:] = False  # pruned, and their stale scores are the largest of all
    new = prune("high-movement", best, final, {}, masks, 0.2, PRUNABLE)
    assert not bool(new["b.weight"][5:].any())  # stay pruned
    newly = int(masks["a.weight"].sum() + masks["b.weight"].sum()) - int(new["a.weight"].sum() + new["b.weight"].sum())
    assert newly == 3  # round(0.2 * 15 active), not counting the 5 already pruned
    assert (~new["b.weight"][:5]).nonzero().flatten().tolist() == [2, 3, 4]


def test_output_layer_and_biases_untouched():
    best, final = states(torch.rand(10) * 0.01, torch.rand(10) * 0.01, out_move=1e6)
    masks = ones((10,), (10,))
    new = prune("high-movement", best, final, {}, masks, 0.5, PRUNABLE)
    assert set(new) == set(PRUNABLE)
    assert int((~new["a.weight"]).sum() + (~new["b.weight"]).sum()) == 10
    # An output-layer mask outside `names` comes back as it was, though it moved most.
    masks["out.weight"] = torch.ones(3, dtype=torch.bool)
    new = prune("high-movement", best, final, {}, masks, 0.5, PRUNABLE)
    assert bool(new["out.weight"].all()) and int((~new["a.weight"]).sum() + (~new["b.weight"]).sum()) == 10


def test_skip_when_best_equals_final():
    w = torch.randn(6)
    best, final = states(w, w.clone(), final_a=w.clone(), final_b=w.clone())
    masks = ones((6,), (6,))
    masks["a.weight"][0] = False
    new = prune("high-movement", best, final, {}, masks, 0.1, PRUNABLE)
    assert all(torch.equal(new[n], masks[n]) and new[n] is not masks[n] for n in PRUNABLE)
    # Only pruned weights moved: still nothing to rank among the active ones.
    final["a.weight"][0] += 5
    new = prune("high-movement", best, final, {}, masks, 0.1, PRUNABLE)
    assert all(torch.equal(new[n], masks[n]) for n in PRUNABLE)


def test_global_threshold_across_layers_not_per_layer():
    best, final = states(torch.full((10,), 0.01), torch.full((10,), 5.0))
    best["b.weight"] = torch.linspace(1, 5, 10)
    new = prune("high-movement", best, final, {}, ones((10,), (10,)), 0.25, PRUNABLE)
    assert bool(new["a.weight"].all())  # the low-movement layer keeps everything
    assert int((~new["b.weight"]).sum()) == 5  # all 5 = round(0.25 * 20) come from layer b


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
        if name == "magnitude":
            best[n], final[n], init[n] = base, -s, base  # |w_final| = s (s >= 0)
        elif name in ("low-movement", "high-movement"):
            best[n], final[n], init[n] = base + s, base, base
        elif name == "movement-from-init":
            best[n], final[n], init[n] = base, base - s, base
        elif name == "magnitude-increase":
            best[n], final[n], init[n] = base, -(1.0 + s), torch.ones_like(s)  # |final| - |init| = s
        else:
            raise AssertionError(name)
    # Tensors outside `names` that would win any ranking if they were ever looked at.
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


ITERATIVE = {n: c for n, c in CRITERIA.items() if c.score is not None}  # those scored after training


def test_registry_order_and_fields():
    assert list(CRITERIA) == ["high-movement", "magnitude", "random", "low-movement", "movement-from-init", "magnitude-increase",
                              "snip", "snip-iterative", "grasp", "synflow", "smart-ratio"]
    at_init = {"snip", "snip-iterative", "grasp", "synflow", "smart-ratio"}
    assert {n for n, c in CRITERIA.items() if c.score is None} == {n for n, c in CRITERIA.items() if c.at_init} == at_init
    assert {n for n, c in CRITERIA.items() if not c.nested} == at_init
    for name, crit in ITERATIVE.items():
        assert isinstance(crit, Criterion) and callable(crit.score) and crit.keeps
        assert crit.prunes in ("largest", "smallest"), name
        assert isinstance(crit.uses, tuple) and crit.uses and set(crit.uses) <= {"best", "final", "init"}, name
        assert crit.skip_when_flat == (name in ("high-movement", "low-movement")), name
    assert {n for n, c in CRITERIA.items() if c.prunes == "largest"} == {"high-movement", "grasp"}
    assert CRITERIA["random"].uses == ("init",) and CRITERIA["magnitude"].uses == ("final",)
    assert CRITERIA["high-movement"].uses == CRITERIA["low-movement"].uses == ("best", "final")
    assert CRITERIA["movement-from-init"].uses == CRITERIA["magnitude-increase"].uses == ("final", "init")


@pytest.mark.parametrize("name", list(ITERATIVE))
def test_reads_only_declared_inputs(name):
    states = dict(zip(("best", "final", "init"), random_states()))
    args = [states[k] if k in CRITERIA[name].uses else {} for k in ("best", "final", "init")]
    new = prune(name, *args, full(), 0.5, NAMES)
    assert sum(int(m.sum()) for m in new.values()) == 13 - round(0.5 * 13)


@pytest.mark.parametrize("name", list(ITERATIVE))
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_shared_rules_for_every_criterion(name, scope):
    best, final, init = random_states(1)
    masks = partly_pruned()
    masks["extra.weight"] = torch.tensor([True, False, True])  # a mask outside `names`
    snap = [{k: v.clone() for k, v in d.items()} for d in (best, final, init, masks)]
    new = prune(name, best, final, init, masks, 0.4, NAMES, rates=layer(NAMES, 0.4) if scope == "layer" else None)
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


def test_select_raises_when_asked_to_prune_more_than_active():
    masks = partly_pruned()  # conv has 5 active of 6
    scores = {n: torch.rand(SHAPES[n]) for n in NAMES}
    with pytest.raises(ValueError):
        select(scores, masks, {("conv.weight",): 6}, largest=True)
    with pytest.raises(ValueError):
        select(scores, masks, {tuple(NAMES): 11}, largest=False)  # 10 active in all
    with pytest.raises(ValueError):
        select(scores, masks, {("conv.weight",): -1}, largest=False)
    assert not bool(select(scores, masks, {tuple(NAMES): 10}, largest=False)["conv.weight"].any())


@pytest.mark.parametrize("name", SMALLEST)
def test_prunes_smallest_scores_exactly(name):
    scores = {"conv.weight": [5, 0.3, 9, 0.1, 7, 8], "fc.weight": [6, 0.2, 4, 3], "output.weight": [2, 10, 0.4]}
    best, final, init = with_scores(name, scores)
    got = CRITERIA[name].score(best, final, init, NAMES, 0)
    assert list(got) == NAMES  # only the tensors asked for
    assert all(torch.allclose(got[n], torch.tensor(scores[n]).reshape(SHAPES[n])) for n in NAMES)
    masks = full()
    new = prune(name, best, final, init, masks, 0.3, NAMES)  # round(0.3 * 13) = 4
    assert pruned_idx(masks, new, "conv.weight") == [1, 3]
    assert pruned_idx(masks, new, "fc.weight") == [1]
    assert pruned_idx(masks, new, "output.weight") == [2]


@pytest.mark.parametrize("name", SMALLEST)
def test_smallest_ties_go_to_the_earlier_position(name):
    scores = {"conv.weight": [3, 1, 1, 1, 2, 3], "fc.weight": [1, 1, 3, 3], "output.weight": [1, 3, 3]}
    best, final, init = with_scores(name, scores)
    masks = full()
    new = prune(name, best, final, init, masks, 0.3, NAMES)  # 4 of the 6 tied ones go
    assert pruned_idx(masks, new, "conv.weight") == [1, 2, 3]
    assert pruned_idx(masks, new, "fc.weight") == [0]
    assert pruned_idx(masks, new, "output.weight") == []
    again = prune(name, best, final, init, masks, 0.3, NAMES)
    assert all(torch.equal(new[n], again[n]) for n in NAMES)


@pytest.mark.parametrize("name", ["magnitude", "movement-from-init", "magnitude-increase"])
def test_flat_scores_are_not_skipped_without_the_skip_rule(name):
    best, final, init = with_scores(name, {n: [0.0] * torch.Size(SHAPES[n]).numel() for n in NAMES})
    masks = full()
    new = prune(name, best, final, init, masks, 0.3, NAMES)  # all tied at 0: the first 4 go
    assert {n: pruned_idx(masks, new, n) for n in NAMES} == {"conv.weight": [0, 1, 2, 3], "fc.weight": [], "output.weight": []}


def test_high_movement_prunes_largest():
    scores = {"conv.weight": [5, 0.3, 9, 0.1, 7, 8], "fc.weight": [6, 0.2, 4, 3], "output.weight": [2, 10, 0.4]}
    best, final, init = with_scores("high-movement", scores)
    masks = full()
    new = prune("high-movement", best, final, init, masks, 0.3, NAMES)  # round(3.9) = 4: 10, 9, 8, 7
    assert {n: pruned_idx(masks, new, n) for n in NAMES} == {"conv.weight": [2, 4, 5], "fc.weight": [], "output.weight": [1]}
    per = prune("high-movement", best, final, init, masks, 0.3, NAMES, rates=layer(NAMES, 0.3))  # 2, 1, 1
    assert {n: pruned_idx(masks, per, n) for n in NAMES} == {"conv.weight": [2, 5], "fc.weight": [0], "output.weight": [1]}
    direct = select({n: (best[n] - final[n]).abs() for n in NAMES}, masks, prune_counts(masks, NAMES, None, 0.3), largest=True)
    assert all(torch.equal(direct[n], new[n]) for n in NAMES)


def test_largest_ties_go_to_the_earlier_position():
    best, final, init = with_scores("high-movement", {"conv.weight": [1, 3, 3, 1, 3, 2], "fc.weight": [3, 1, 1, 1], "output.weight": [3, 1, 1]})
    masks = full()
    new = prune("high-movement", best, final, init, masks, 0.3, NAMES)  # 4 of the 5 tied at 3 go
    assert {n: pruned_idx(masks, new, n) for n in NAMES} == {"conv.weight": [1, 2, 4], "fc.weight": [0], "output.weight": []}


def test_magnitude_global_vs_layer_scope():
    # conv's weights are all small, fc's all large: a global ranking takes only from conv.
    final = {"conv.weight": torch.tensor([[0.1, -0.2, 0.3], [-0.4, 0.5, -0.6]]), "fc.weight": torch.tensor([1.0, -2.0, 3.0, -4.0])}
    names = ["conv.weight", "fc.weight"]
    masks = full(names)
    glob = prune("magnitude", {}, final, {}, masks, 0.5, names)  # round(0.5 * 10) = 5
    assert pruned_idx(masks, glob, "conv.weight") == [0, 1, 2, 3, 4]
    assert pruned_idx(masks, glob, "fc.weight") == []
    per = prune("magnitude", {}, final, {}, masks, 0.5, names, rates=layer(names, 0.5))  # 3 and 2
    assert pruned_idx(masks, per, "conv.weight") == [0, 1, 2]
    assert pruned_idx(masks, per, "fc.weight") == [0, 1]


def test_per_tensor_rates_with_output_rate_and_zero():
    # Frankle & Carbin style: conv at the default rate, the output layer at its own, fc frozen.
    final = {
        "conv.weight": torch.tensor([[0.6, 0.1, 0.5], [0.2, 0.4, 0.3]]),
        "fc.weight": torch.tensor([0.01, 0.02, 0.03, 0.04]),  # smallest of all, but rate 0
        "output.weight": torch.tensor([0.9, 0.05, 0.7]),
    }
    masks = full()
    rates = layer(NAMES, 0.5, {"output.weight": 1 / 3, "fc.weight": 0.0})
    new = prune("magnitude", {}, final, {}, masks, 0.5, NAMES, rates=rates)
    assert pruned_idx(masks, new, "conv.weight") == [1, 3, 5]  # round(0.5 * 6) = 3: 0.1, 0.2, 0.3
    assert pruned_idx(masks, new, "fc.weight") == []
    assert pruned_idx(masks, new, "output.weight") == [1]  # round(3 / 3) = 1
    # The rate applies to the tensor's active weights (already-pruned ones are not counted again).
    new2 = prune("magnitude", {}, final, {}, new, 0.5, NAMES, rates=rates)
    assert pruned_idx(new, new2, "conv.weight") == [2, 4]  # round(0.5 * 3) = round(1.5) = 2: 0.5, 0.4
    assert int(new["conv.weight"].sum()) - int(new2["conv.weight"].sum()) == prune_count(3, 0.5)


def test_magnitude_increase_negative_scores_and_pruned_never_ranked():
    scores = {"conv.weight": [-0.5, 0.2, -0.1, 0.0, 0.3, 0.1], "fc.weight": [-1.0, 0.5, 0.05, 2.0], "output.weight": [1.0, 1.0, 1.0]}
    best, final, init = with_scores("magnitude-increase", scores)
    masks = full()
    masks["conv.weight"][1, 0] = False  # flat index 3: its masked score 0 would rank below 0.05
    new = prune("magnitude-increase", best, final, init, masks, 4 / 12, NAMES)  # round(4/12 * 12) = 4
    assert pruned_idx(masks, new, "conv.weight") == [0, 2]
    assert pruned_idx(masks, new, "fc.weight") == [0, 2]
    assert pruned_idx(masks, new, "output.weight") == []
    assert not bool(new["conv.weight"][1, 0])


def test_movement_from_init_ignores_best():
    best, final, init = with_scores("movement-from-init", {"conv.weight": [1, 2, 3, 4, 5, 6], "fc.weight": [7, 8, 9, 10], "output.weight": [11, 12, 13]})
    other_best = {n: -100 * torch.arange(float(t.numel())).reshape(t.shape) for n, t in best.items()}
    a = prune("movement-from-init", best, final, init, full(), 0.2, NAMES)
    b = prune("movement-from-init", other_best, final, init, full(), 0.2, NAMES)
    assert all(torch.equal(a[n], b[n]) for n in NAMES)
    assert pruned_idx(full(), a, "conv.weight") == [0, 1, 2] and pruned_idx(full(), a, "fc.weight") == []


def test_low_movement_skip_rule():
    w = {n: torch.randn(SHAPES[n]) for n in NAMES}
    same = {n: t.clone() for n, t in w.items()}
    masks = partly_pruned()
    new = prune("low-movement", w, same, {}, masks, 0.3, NAMES)
    assert all(torch.equal(new[n], masks[n]) and new[n] is not masks[n] for n in NAMES)
    # Only an already-pruned weight moved: still nothing to rank among the active ones.
    same["fc.weight"][3] += 5
    new = prune("low-movement", w, same, {}, masks, 0.3, NAMES, rates=layer(NAMES, 0.3))
    assert all(torch.equal(new[n], masks[n]) for n in NAMES)
    # One active weight moved: low-movement now prunes the still (score 0) ones, earliest first.
    same["conv.weight"][0, 0] += 1
    new = prune("low-movement", w, same, {}, masks, 0.3, NAMES)  # round(0.3 * 10) = 3
    assert pruned_idx(masks, new, "conv.weight") == [2, 3, 4]


# ---------------------------------------------------------------- random


def test_random_draw_is_the_seeded_generator_over_all_positions():
    _, _, init = random_states()
    a = CRITERIA["random"].score({}, {}, init, NAMES, 7)
    b = CRITERIA["random"].score({}, {}, {n: torch.zeros(SHAPES[n]) for n in NAMES}, NAMES, 7)
    expected = torch.rand(13, generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.cat([a[n].flatten() for n in NAMES]), expected)
    assert all(a[n].shape == SHAPES[n] and torch.equal(a[n], b[n]) for n in NAMES)  # shapes only, not values


def test_random_same_seed_same_masks_other_seed_differs():
    _, _, init = random_states()
    masks = partly_pruned()
    a = prune("random", {}, {}, init, masks, 0.5, NAMES, seed=3)
    b = prune("random", {}, {}, init, masks, 0.5, NAMES, seed=3)
    c = prune("random", {}, {}, init, masks, 0.5, NAMES, seed=4)
    assert all(torch.equal(a[n], b[n]) for n in NAMES)
    assert not all(torch.equal(a[n], c[n]) for n in NAMES)
    assert sum(int(masks[n].sum()) - int(a[n].sum()) for n in NAMES) == round(0.5 * 10)


def test_random_prunes_the_lowest_draws_among_active_only():
    _, _, init = random_states()
    masks = partly_pruned()
    draw = CRITERIA["random"].score({}, {}, init, NAMES, 11)
    new = prune("random", {}, {}, init, masks, 0.3, NAMES, seed=11)  # round(0.3 * 10) = 3
    flat_draw = torch.cat([draw[n].flatten() for n in NAMES])
    flat_old = torch.cat([masks[n].flatten() for n in NAMES])
    flat_new = torch.cat([new[n].flatten() for n in NAMES])
    active = flat_old.nonzero().flatten()
    expected = active[flat_draw[active].argsort()[:3]].sort().values
    assert (flat_old & ~flat_new).nonzero().flatten().tolist() == expected.tolist()
    # From a full mask the same draw decides (independent of the mask): the 4 = round(3.9) lowest of all 13.
    full_new = prune("random", {}, {}, init, full(), 0.3, NAMES, seed=11)
    flat_full = torch.cat([full_new[n].flatten() for n in NAMES])
    assert (~flat_full).nonzero().flatten().tolist() == flat_draw.argsort()[:4].sort().values.tolist()


def test_random_target_kept_exact_per_layer():
    _, _, init = random_states()
    masks = partly_pruned()  # active: conv 5, fc 3, output 2
    target = {"conv.weight": 2, "fc.weight": 3, "output.weight": 0}
    for seed in range(5):
        new = prune("random", {}, {}, init, masks, 0.1, NAMES, seed=seed, target_kept=target)
        assert {n: int(new[n].sum()) for n in NAMES} == target
        assert all(not bool((new[n] & ~masks[n]).any()) for n in NAMES)  # never resurrects
        assert torch.equal(new["fc.weight"], masks["fc.weight"])
    # Follows another run's densities round by round.
    final = {n: torch.randn(SHAPES[n]) for n in NAMES}
    other = prune("magnitude", {}, final, {}, masks, 0.5, NAMES, rates=layer(NAMES, 0.5))
    follow = prune("random", {}, {}, init, masks, 0.5, NAMES, target_kept={n: int(m.sum()) for n, m in other.items()})
    assert {n: int(follow[n].sum()) for n in NAMES} == {n: int(other[n].sum()) for n in NAMES}


@pytest.mark.parametrize(
    "target",
    [
        {"conv.weight": 6, "fc.weight": 3, "output.weight": 2},  # more than conv's 5 active
        {"conv.weight": -1, "fc.weight": 3, "output.weight": 2},
    ],
)
def test_random_unreachable_target_kept_raises(target):
    _, _, init = random_states()
    with pytest.raises(ValueError):
        prune("random", {}, {}, init, partly_pruned(), 0.1, NAMES, target_kept=target)


def test_random_target_kept_missing_a_tensor_raises():
    with pytest.raises(KeyError):
        prune_counts(partly_pruned(), NAMES, None, 0.1, {"conv.weight": 5, "fc.weight": 3})


def test_select_direction_and_groups():
    scores = {"conv.weight": torch.tensor([[1.0, 2, 3], [4, 5, 6]]), "fc.weight": torch.tensor([0.5, 9, 9, 0.5])}
    names = ["conv.weight", "fc.weight"]
    masks = full(names)
    counts = prune_counts(masks, names, None, 0.2)  # round(0.2 * 10) = 2
    low = select(scores, masks, counts, largest=False)
    high = select(scores, masks, counts, largest=True)
    assert pruned_idx(masks, low, "fc.weight") == [0, 3] and pruned_idx(masks, low, "conv.weight") == []
    assert pruned_idx(masks, high, "fc.weight") == [1, 2] and pruned_idx(masks, high, "conv.weight") == []
    per = select(scores, masks, prune_counts(masks, names, {"conv.weight": 0.0, "fc.weight": 0.2}, 0.2), largest=True)
    assert pruned_idx(masks, per, "conv.weight") == [] and pruned_idx(masks, per, "fc.weight") == [1]
