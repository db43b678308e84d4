"""Pruning criteria as scores, and the one selection that turns scores into the next masks.

A criterion is a score per weight from a round's best, final and initial weights, and which end
of the ranking goes: one short function and one `CRITERIA` line. The rest is shared (DESIGN §1):
`prune_counts` says how many active weights each group of tensors loses, and `select` prunes
exactly that many, by top-k over active weights (ties at the threshold cannot prune more), ties
by position, on scores multiplied by the mask (a pruned weight's stale value never counts)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

State = Mapping[str, torch.Tensor]
Masks = dict[str, torch.Tensor]
Scores = dict[str, torch.Tensor]
Counts = dict[tuple[str, ...], int]  # tensors ranked together → how many of their active weights go


@dataclass(frozen=True)
class Criterion:
    score: Callable[[State, State, State, Sequence[str], int], Scores] | None  # (best, final, init, names, seed); None: at θ0
    label: str  # the score as a formula, for figures
    prunes: str  # "largest" or "smallest": which scores are pruned
    keeps: str  # one line for humans: which weights survive
    uses: tuple[str, ...]  # which of best, final, init it reads (the others need not be loaded)
    # The seed's skip rule: a score that is 0 on every active weight (best == final, as when
    # the best epoch is the last) carries no information, so the round prunes nothing.
    skip_when_flat: bool = False
    # Pruning at initialization (lth.pruning_at_init): "snip", "grasp" or "synflow" scores the
    # network at θ0 ("smart-ratio" draws a random ticket with Su et al.'s layer shares); round
    # r's mask is made from the dense network at round r's kept count, so
    # masks need not nest. `steps`: how many times it rescores on the way (1: one shot).
    at_init: str | None = None
    steps: int = 1

    @property
    def nested(self) -> bool:
        """Whether each round's mask keeps a subset of the previous round's (what `lth verify` checks)."""
        return self.at_init is None


def _movement(best: State, final: State, init: State, names: Sequence[str], seed: int) -> Scores:
    return {n: (best[n].float() - final[n].float()).abs() for n in names}


def _magnitude(best: State, final: State, init: State, names: Sequence[str], seed: int) -> Scores:
    return {n: final[n].float().abs() for n in names}


def _movement_from_init(best: State, final: State, init: State, names: Sequence[str], seed: int) -> Scores:
    return {n: (final[n].float() - init[n].float()).abs() for n in names}


def _magnitude_increase(best: State, final: State, init: State, names: Sequence[str], seed: int) -> Scores:
    return {n: final[n].float().abs() - init[n].float().abs() for n in names}


def _random(best: State, final: State, init: State, names: Sequence[str], seed: int) -> Scores:
    """A uniform draw per position of every tensor, pruned or not: the draw never depends on the mask."""
    flat = torch.rand(sum(init[n].numel() for n in names), generator=torch.Generator().manual_seed(int(seed)))
    return dict(zip(names, (part.view(init[n].shape) for n, part in zip(names, flat.split([init[n].numel() for n in names])))))


CRITERIA: dict[str, Criterion] = {
    "high-movement": Criterion(_movement, "|w_best − w_final|", "largest", "the smallest |w_best − w_final|: weights that stayed put after the best epoch (the seed)", ("best", "final"), True),
    "magnitude": Criterion(_magnitude, "|w_final|", "smallest", "the largest |w_final| (Frankle & Carbin)", ("final",)),
    "random": Criterion(_random, "uniform random draw", "smallest", "a seeded random subset (the control); can follow another run's per-layer counts", ("init",)),
    "low-movement": Criterion(_movement, "|w_best − w_final|", "smallest", "the largest |w_best − w_final|: weights that still moved after the best epoch", ("best", "final"), True),
    "movement-from-init": Criterion(_movement_from_init, "|w_final − w_init|", "smallest", "the largest |w_final − w_init| (Zhou et al.'s movement)", ("final", "init")),
    "magnitude-increase": Criterion(_magnitude_increase, "|w_final| − |w_init|", "smallest", "the largest |w_final| − |w_init|: weights whose magnitude grew most", ("final", "init")),
    "snip": Criterion(None, "|∂L/∂θ ⊙ θ| at θ0", "smallest", "the largest |g ⊙ θ| at θ0, g the loss gradient on a class-balanced sample (Lee et al. 2019)", ("init",), at_init="snip"),
    "snip-iterative": Criterion(None, "|∂L/∂θ ⊙ θ| at θ0, rescored", "smallest", "SNIP rescored on the masked network along an exponential schedule", ("init",), at_init="snip", steps=100),
    "grasp": Criterion(None, "−θ ⊙ Hg at θ0", "largest", "the smallest −θ ⊙ Hg at θ0: weights whose removal least reduces gradient flow (Wang et al. 2020)", ("init",), at_init="grasp"),
    "synflow": Criterion(None, "|θ ⊙ ∂R/∂θ| at θ0", "smallest", "the largest synaptic flow of the all-ones input through |θ|, rescored 100 times (Tanaka et al. 2020)", ("init",), at_init="synflow", steps=100),
    "smart-ratio": Criterion(None, "random; layer l keeps ∝ (L−l+1)² + (L−l+1)", "smallest", "random weights in per-layer shares from Su et al.'s smart ratios (a random ticket)", ("init",), at_init="smart-ratio"),
}


def prune_count(active: int, fraction: float) -> int:
    """How many of `active` weights a rate prunes: Python's `round` (half to even)."""
    return int(round(fraction * active))


def prune_counts(masks: Masks, names: Sequence[str], rates: Mapping[str, float] | None, fraction: float,
                 target_kept: Mapping[str, int] | None = None) -> Counts:
    """How many active weights go, per group ranked together. `rates=None`: one global
    group at `fraction` (the seed); otherwise each tensor alone at its own rate (Frankle &
    Carbin). `target_kept` (a matched random ticket) lands each tensor on that many kept."""
    active = {n: int(masks[n].sum()) for n in names}
    if target_kept is not None:
        return {(n,): active[n] - int(target_kept[n]) for n in names}
    if rates is None:
        return {tuple(names): prune_count(sum(active.values()), fraction)}
    return {(n,): prune_count(active[n], rates[n]) for n in names}


def select(scores: Scores, masks: Masks, counts: Counts, largest: bool) -> Masks:
    """New masks with, in each group, the `k` active weights of largest (or smallest) score
    pruned. Only active positions are sorted, with a stable sort, so among equal scores the
    earlier position goes first."""
    new = {name: mask.clone() for name, mask in masks.items()}
    for group, k in counts.items():
        flat_scores = torch.cat([(scores[n].detach().float().cpu() * masks[n].cpu()).flatten() for n in group])
        flat = torch.cat([masks[n].detach().flatten().cpu().bool() for n in group])
        active = flat.nonzero().squeeze(1)
        if not 0 <= k <= active.numel():
            raise ValueError(f"cannot prune {k} of {active.numel()} active weights")
        order = torch.sort(flat_scores[active], descending=largest, stable=True).indices
        flat[active[order[:k]]] = False
        for name, part in zip(group, flat.split([masks[n].numel() for n in group])):
            new[name] = part.view(masks[name].shape).to(masks[name].device)
    return new


def kept_ladder(active: Mapping[str, int], names: Sequence[str], rates: Mapping[str, float] | None, fraction: float, rounds: int) -> dict[tuple[str, ...], int]:
    """How many weights each group keeps after `rounds` rounds of the iterative ladder from
    `active` (per tensor): what the iterative criteria reach at round r when no round is
    skipped, and where pruning at initialization puts round r, so every arm meets at the same
    densities."""
    if rates is None:
        total = sum(active[n] for n in names)
        for _ in range(rounds):
            total -= prune_count(total, fraction)
        return {tuple(names): total}
    out = {}
    for n in names:
        kept = active[n]
        for _ in range(rounds):
            kept -= prune_count(kept, rates[n])
        out[(n,)] = kept
    return out


def next_masks(criterion: str, best: State, final: State, init: State, masks: Masks, counts: Counts, seed: int, invert: bool = False) -> Masks:
    """The masks of the next round: the criterion's scores through the shared selection
    (`invert`: the other end of the ranking, the inversion sanity check)."""
    crit = CRITERIA[criterion]
    if crit.score is None:
        raise ValueError(f"{criterion} scores the network at θ0: its masks come from lth.pruning_at_init")
    names = [n for group in counts for n in group]
    scores = crit.score(best, final, init, names, seed)
    if crit.skip_when_flat and not any(bool((scores[n] * masks[n]).any()) for n in names):
        return {name: mask.clone() for name, mask in masks.items()}
    return select(scores, masks, counts, largest=(crit.prunes == "largest") != invert)
