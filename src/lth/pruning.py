"""Pruning criteria: pure functions from a round's weights and masks to the next masks.

Every criterion has the signature

    crit(best, final, init, masks, fraction, prunable, *, scope="global",
         layer_fractions=None, seed=0, target_kept=None) -> masks

and is registered in `CRITERIA_INFO` (and its plain view `CRITERIA`) by name; adding one is one
function and one line. A criterion only reads the tensors it needs and never mutates its
inputs. Each one computes a score per weight and hands it to `select_prune`, which owns the
shared rules.

Shared rules (DESIGN §1): only active weights (mask 1) are ranked; exactly
`round(fraction × active)` of them are pruned, by top-k rather than a `>=` threshold so ties
cannot prune more; ties are broken by position in parameter order (the earlier weight goes
first); pruned weights stay pruned; tensors outside `prunable` (biases, and the output layer
where the model says so) are never touched. The result is a new dict holding a clone of every
input mask.

Scope: "global" ranks all prunable tensors together (the seed's one global quantile);
"layer" ranks each tensor on its own at `layer_fractions.get(name, fraction)` (Frankle &
Carbin's per-layer rates).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from lth.masks import Masks

State = Mapping[str, torch.Tensor]
Scores = Mapping[str, torch.Tensor]
SCOPES = ("global", "layer")


class Criterion(Protocol):
    def __call__(
        self,
        best: State,
        final: State,
        init: State,
        masks: Masks,
        fraction: float,
        prunable: Sequence[str],
        *,
        scope: str = "global",
        layer_fractions: Mapping[str, float] | None = None,
        seed: int = 0,
        target_kept: Mapping[str, int] | None = None,
    ) -> Masks: ...


def prune_count(active: int, fraction: float) -> int:
    """How many of `active` weights a round prunes: Python's `round` (half to even)."""
    return int(round(fraction * active))


# ---------------------------------------------------------------- shared selection


def _check_rate(what: str, rate: float) -> None:
    if not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"{what}: a pruning rate must be in [0, 1], got {rate}")


def check_selection(
    fraction: float,
    prunable: Sequence[str],
    scope: str,
    layer_fractions: Mapping[str, float] | None,
) -> None:
    """Reject a scope/rate combination before anything is computed (ValueError)."""
    if scope not in SCOPES:
        raise ValueError(f"unknown pruning scope {scope!r}; choose one of {', '.join(SCOPES)}")
    _check_rate("fraction", fraction)
    if layer_fractions is None:
        return
    if scope != "layer":
        raise ValueError("layer_fractions needs scope 'layer' (global scope has one rate for all tensors)")
    unknown = sorted(set(layer_fractions) - set(prunable))
    if unknown:
        raise ValueError(f"layer_fractions names tensors that are not prunable: {', '.join(unknown)}")
    for name, rate in layer_fractions.items():
        _check_rate(f"layer_fractions[{name!r}]", rate)


def _clone(masks: Masks) -> Masks:
    return {name: mask.clone() for name, mask in masks.items()}


def _prune_k(flat_scores: torch.Tensor, flat_mask: torch.Tensor, k: int, largest: bool) -> torch.Tensor:
    """`flat_mask` with the k active positions of largest (or smallest) score set False.

    Only active positions are sorted; the sort is stable, so equal scores keep their order and
    the earlier position is pruned first in either direction.
    """
    new_flat = flat_mask.clone()
    active = flat_mask.nonzero().squeeze(1)
    if not 0 <= k <= active.numel():
        raise ValueError(f"cannot prune {k} of {active.numel()} active weights")
    if k > 0:
        order = torch.sort(flat_scores[active], descending=largest, stable=True).indices
        new_flat[active[order[:k]]] = False
    return new_flat


def _prune_group(new: Masks, scores: Scores, masks: Masks, group: Sequence[str], k_of, largest: bool) -> None:
    """Rank the tensors of `group` together and write their new masks into `new`.

    `k_of(active)` says how many of the group's active weights go. Scores are multiplied by the
    mask first, so a pruned weight carries no stale value even though it is never ranked.
    """
    if not group:
        return
    flat_scores = torch.cat([(scores[n].detach().float().cpu() * masks[n].cpu()).flatten() for n in group])
    flat_mask = torch.cat([masks[n].detach().flatten().cpu().bool() for n in group])
    new_flat = _prune_k(flat_scores, flat_mask, k_of(int(flat_mask.sum())), largest)
    offset = 0
    for name in group:
        n = masks[name].numel()
        new[name] = new_flat[offset : offset + n].clone().view(masks[name].shape).to(masks[name].device)
        offset += n


def select_prune(
    scores: Scores,
    masks: Masks,
    prunable: Sequence[str],
    fraction: float,
    *,
    largest: bool,
    scope: str = "global",
    layer_fractions: Mapping[str, float] | None = None,
) -> Masks:
    """Prune the active weights with the largest (or smallest) scores; the shared rules.

    scope "global": one ranking over all `prunable` tensors, `round(fraction × total active)`.
    scope "layer": each tensor on its own, `round(f × active)` with
    `f = layer_fractions.get(name, fraction)`; a rate of 0 leaves that tensor as it is.
    """
    check_selection(fraction, prunable, scope, layer_fractions)
    new = _clone(masks)
    if scope == "global":
        _prune_group(new, scores, masks, list(prunable), lambda a: prune_count(a, fraction), largest)
    else:
        rates = dict(layer_fractions or {})
        for name in prunable:
            f = rates.get(name, fraction)
            _prune_group(new, scores, masks, [name], lambda a, f=f: prune_count(a, f), largest)
    return new


def prune_largest_global(scores: Scores, masks: Masks, fraction: float, prunable: Sequence[str]) -> Masks:
    """Prune the `round(fraction × active)` active weights with the largest scores, globally."""
    return select_prune(scores, masks, prunable, fraction, largest=True, scope="global")


def _nothing_to_rank(scores: Scores, masks: Masks, prunable: Sequence[str]) -> bool:
    return all(not bool((scores[n] * masks[n]).any()) for n in prunable)


# ---------------------------------------------------------------- criteria


def _movement(best: State, final: State, prunable: Sequence[str]) -> dict[str, torch.Tensor]:
    return {n: (best[n].float() - final[n].float()).abs() for n in prunable}


def high_movement(
    best: State,
    final: State,
    init: State,
    masks: Masks,
    fraction: float,
    prunable: Sequence[str],
    *,
    scope: str = "global",
    layer_fractions: Mapping[str, float] | None = None,
    seed: int = 0,
    target_kept: Mapping[str, int] | None = None,
) -> Masks:
    """The seed's criterion: prune the active weights that moved most, |w_best − w_final|.

    Keeps the weights that stayed put after the early-stopping epoch. When every active score
    is 0 (best and final are the same weights, as when the best epoch is the last) there is
    nothing to rank by, so the round is skipped: the masks come back unchanged.
    """
    check_selection(fraction, prunable, scope, layer_fractions)
    scores = _movement(best, final, prunable)
    if _nothing_to_rank(scores, masks, prunable):
        return _clone(masks)
    return select_prune(scores, masks, prunable, fraction, largest=True, scope=scope, layer_fractions=layer_fractions)


def low_movement(
    best: State,
    final: State,
    init: State,
    masks: Masks,
    fraction: float,
    prunable: Sequence[str],
    *,
    scope: str = "global",
    layer_fractions: Mapping[str, float] | None = None,
    seed: int = 0,
    target_kept: Mapping[str, int] | None = None,
) -> Masks:
    """The seed's mirror: prune the most stable active weights, smallest |w_best − w_final|.

    Same skip rule as `high_movement`: best == final on every active weight carries no
    information, so the masks come back unchanged.
    """
    check_selection(fraction, prunable, scope, layer_fractions)
    scores = _movement(best, final, prunable)
    if _nothing_to_rank(scores, masks, prunable):
        return _clone(masks)
    return select_prune(scores, masks, prunable, fraction, largest=False, scope=scope, layer_fractions=layer_fractions)


def magnitude(
    best: State,
    final: State,
    init: State,
    masks: Masks,
    fraction: float,
    prunable: Sequence[str],
    *,
    scope: str = "global",
    layer_fractions: Mapping[str, float] | None = None,
    seed: int = 0,
    target_kept: Mapping[str, int] | None = None,
) -> Masks:
    """Frankle & Carbin: prune the smallest |w_final|, keeping the largest final weights."""
    scores = {n: final[n].float().abs() for n in prunable}
    return select_prune(scores, masks, prunable, fraction, largest=False, scope=scope, layer_fractions=layer_fractions)


def movement_from_init(
    best: State,
    final: State,
    init: State,
    masks: Masks,
    fraction: float,
    prunable: Sequence[str],
    *,
    scope: str = "global",
    layer_fractions: Mapping[str, float] | None = None,
    seed: int = 0,
    target_kept: Mapping[str, int] | None = None,
) -> Masks:
    """Zhou et al.'s `movement`: prune the smallest |w_final − w_init| (keep what moved far)."""
    scores = {n: (final[n].float() - init[n].float()).abs() for n in prunable}
    return select_prune(scores, masks, prunable, fraction, largest=False, scope=scope, layer_fractions=layer_fractions)


def magnitude_increase(
    best: State,
    final: State,
    init: State,
    masks: Masks,
    fraction: float,
    prunable: Sequence[str],
    *,
    scope: str = "global",
    layer_fractions: Mapping[str, float] | None = None,
    seed: int = 0,
    target_kept: Mapping[str, int] | None = None,
) -> Masks:
    """Prune the smallest |w_final| − |w_init| (keep the weights whose magnitude grew most).

    Scores can be negative; masking them sets pruned positions to 0, which would sit in the
    middle of the ranking, but only active positions are ranked, so that is harmless.
    """
    scores = {n: final[n].float().abs() - init[n].float().abs() for n in prunable}
    return select_prune(scores, masks, prunable, fraction, largest=False, scope=scope, layer_fractions=layer_fractions)


def random_scores(masks: Masks, prunable: Sequence[str], seed: int) -> dict[str, torch.Tensor]:
    """Uniform scores from a CPU generator seeded with `seed`, one per position of every
    prunable tensor in parameter order, pruned or not, so the draw never depends on the mask."""
    generator = torch.Generator().manual_seed(int(seed))
    total = sum(masks[n].numel() for n in prunable)
    flat = torch.rand(total, generator=generator)
    out, offset = {}, 0
    for name in prunable:
        n = masks[name].numel()
        out[name] = flat[offset : offset + n].view(masks[name].shape)
        offset += n
    return out


def _check_target_kept(target_kept: Mapping[str, int], masks: Masks, prunable: Sequence[str]) -> dict[str, int]:
    """How many active weights each tensor loses to land exactly on `target_kept`."""
    missing = [n for n in prunable if n not in target_kept]
    if missing:
        raise ValueError(f"target_kept lacks prunable tensors: {', '.join(missing)}")
    unknown = sorted(set(target_kept) - set(prunable))
    if unknown:
        raise ValueError(f"target_kept names tensors that are not prunable: {', '.join(unknown)}")
    counts = {}
    for name in prunable:
        target, active = target_kept[name], int(masks[name].bool().sum())
        if isinstance(target, bool) or int(target) != target:
            raise ValueError(f"target_kept[{name!r}] must be an integer, got {target!r}")
        if not 0 <= int(target) <= active:
            raise ValueError(f"target_kept[{name!r}] = {target} is outside [0, {active}] (its active weights)")
        counts[name] = active - int(target)
    return counts


def random_prune(
    best: State,
    final: State,
    init: State,
    masks: Masks,
    fraction: float,
    prunable: Sequence[str],
    *,
    scope: str = "global",
    layer_fractions: Mapping[str, float] | None = None,
    seed: int = 0,
    target_kept: Mapping[str, int] | None = None,
) -> Masks:
    """The random control: prune active weights chosen by a seeded draw (`random_scores`).

    With `target_kept` (tensor name → weights to keep after this round), each tensor loses
    exactly `active − target_kept[name]` active weights, so a random ticket can follow another
    run's per-layer densities round by round; `fraction` and `scope` then set no counts.
    """
    check_selection(fraction, prunable, scope, layer_fractions)
    scores = random_scores(masks, prunable, seed)
    if target_kept is None:
        return select_prune(scores, masks, prunable, fraction, largest=False, scope=scope, layer_fractions=layer_fractions)
    if layer_fractions is not None:
        raise ValueError("give either target_kept or layer_fractions, not both")
    counts = _check_target_kept(target_kept, masks, prunable)
    new = _clone(masks)
    for name in prunable:
        _prune_group(new, scores, masks, [name], lambda _active, k=counts[name]: k, largest=False)
    return new


# ---------------------------------------------------------------- registry


@dataclass(frozen=True)
class CriterionInfo:
    fn: Criterion
    uses: tuple[str, ...]  # which of ("best", "final", "init") the criterion reads
    keeps: str  # one line: which weights survive


CRITERIA_INFO: dict[str, CriterionInfo] = {
    "high-movement": CriterionInfo(high_movement, ("best", "final"), "the smallest |w_best − w_final|: weights that stayed put after the best epoch (the seed)"),
    "magnitude": CriterionInfo(magnitude, ("final",), "the largest |w_final| (Frankle & Carbin)"),
    "random": CriterionInfo(random_prune, (), "a seeded random subset (the control); can follow another run's per-layer counts"),
    "low-movement": CriterionInfo(low_movement, ("best", "final"), "the largest |w_best − w_final|: weights that still moved after the best epoch"),
    "movement-from-init": CriterionInfo(movement_from_init, ("final", "init"), "the largest |w_final − w_init| (Zhou et al.'s movement)"),
    "magnitude-increase": CriterionInfo(magnitude_increase, ("final", "init"), "the largest |w_final| − |w_init|: weights whose magnitude grew most"),
}

CRITERIA: dict[str, Criterion] = {name: info.fn for name, info in CRITERIA_INFO.items()}


def get_criterion(name: str) -> Criterion:
    if name not in CRITERIA:
        raise KeyError(f"unknown criterion {name!r}; choose one of {sorted(CRITERIA)}")
    return CRITERIA[name]
