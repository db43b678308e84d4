"""High-movement pruning on hand-made tensors: exact counts, ties, scope, skip rule."""

import torch

from lth.pruning import CRITERIA, high_movement, prune_count

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
