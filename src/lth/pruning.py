"""Pruning criteria: pure functions from a round's weights and masks to the next masks.

Every criterion has the signature `(best, final, init, masks, fraction, prunable) -> masks`
and is registered in `CRITERIA` by name; adding one is one function and one line. A criterion
only reads the tensors it needs and never mutates its inputs.

Shared rules (DESIGN §1): only active weights (mask 1) are ranked; exactly
`round(fraction × active)` of them are pruned, by top-k rather than a `>=` threshold so ties
cannot prune more; ties are broken by position in parameter order (the earlier weight goes
first); pruned weights stay pruned; tensors outside `prunable` (the output layer, biases) are
never touched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Callable

import torch

from lth.masks import Masks

State = Mapping[str, torch.Tensor]
Criterion = Callable[[State, State, State, Masks, float, Sequence[str]], Masks]


def prune_count(active: int, fraction: float) -> int:
    """How many of `active` weights a round prunes: Python's `round` (half to even)."""
    return int(round(fraction * active))


def prune_largest_global(
    scores: Mapping[str, torch.Tensor], masks: Masks, fraction: float, prunable: Sequence[str]
) -> Masks:
    """Prune the `round(fraction × active)` active weights with the largest scores, globally.

    One ranking over all prunable layers together (a global quantile, not per-layer rates).
    Scores are multiplied by the mask first, and only active positions enter the ranking, so a
    pruned weight is never ranked again. A stable descending sort breaks ties by position.
    """
    flat_scores = torch.cat([(scores[n].float() * masks[n]).flatten().cpu() for n in prunable])
    flat_mask = torch.cat([masks[n].flatten().cpu().bool() for n in prunable])
    active = flat_mask.nonzero().squeeze(1)
    k = prune_count(active.numel(), fraction)
    new_flat = flat_mask.clone()
    if k > 0:
        order = torch.sort(flat_scores[active], descending=True, stable=True).indices
        new_flat[active[order[:k]]] = False
    new_masks = {name: mask.clone() for name, mask in masks.items()}
    offset = 0
    for name in prunable:
        n = masks[name].numel()
        new_masks[name] = new_flat[offset : offset + n].view_as(masks[name]).to(masks[name].device)
        offset += n
    return new_masks


def high_movement(
    best: State, final: State, init: State, masks: Masks, fraction: float, prunable: Sequence[str]
) -> Masks:
    """The seed's criterion: prune the active weights that moved most, |w_best − w_final|.

    Keeps the weights that stayed put after the early-stopping epoch. When every active score
    is 0 (best and final are the same weights, as when the best epoch is the last) there is
    nothing to rank by, so the round is skipped: the masks come back unchanged.
    """
    scores = {n: (best[n].float() - final[n].float()).abs() for n in prunable}
    if all(not bool((scores[n] * masks[n]).any()) for n in prunable):
        return {name: mask.clone() for name, mask in masks.items()}
    return prune_largest_global(scores, masks, fraction, prunable)


CRITERIA: dict[str, Criterion] = {
    "high-movement": high_movement,
}


def get_criterion(name: str) -> Criterion:
    if name not in CRITERIA:
        raise KeyError(f"unknown criterion {name!r}; choose one of {sorted(CRITERIA)}")
    return CRITERIA[name]
