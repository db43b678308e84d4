"""Pruning at initialization: scores of the network at θ0, before any training (SNIP, Lee et al.
2019; GraSP, Wang et al. 2020; SynFlow, Tanaka et al. 2020). Each is a pure function of a model
holding θ0, the current masks and, for SNIP and GraSP, a sample of training images; the
selection that turns scores into masks is `lth.pruning.select`, shared with every criterion.

Conventions, as the papers and their reference code have them:
- SNIP: |g ⊙ θ|, g the gradient of the training loss on the sample; the smallest go.
- GraSP: −θ ⊙ (H g), H the Hessian of the loss, by a double backward; the largest go (a weight
  whose removal would most reduce the gradient flow has a large −θ⊙Hg).
- SynFlow: data-free. Every parameter made non-negative, an all-ones input, float64, eval mode;
  R = the sum of the logits; |θ ⊙ ∂R/∂θ|; the smallest go. Applied iteratively (100 steps on an
  exponential schedule to the target), each step on the masked network, so that a layer is not
  cut off whole (Tanaka et al.'s layer collapse).
- Smart ratios (Su et al. 2020, "random tickets"): no score at all. Layer l of L keeps a share
  proportional to (L−l+1)² + (L−l+1) of its weights (divided by l² for VGG), at random positions.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

Masks = dict[str, torch.Tensor]
Scores = dict[str, torch.Tensor]


def _masked_copy(model: nn.Module, masks: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None) -> nn.Module:
    """A copy of `model` with its pruned weights zeroed (the scoring must not touch the study's model)."""
    clone = copy.deepcopy(model)
    if dtype is not None:
        clone = clone.to(dtype)
    with torch.no_grad():
        params = dict(clone.named_parameters())
        for name, mask in masks.items():
            params[name].mul_(mask.to(params[name]))
    return clone


def _parameters(model: nn.Module, names: Sequence[str]) -> list[torch.Tensor]:
    params = dict(model.named_parameters())
    return [params[n] for n in names]


def snip_scores(model: nn.Module, masks: Mapping[str, torch.Tensor], names: Sequence[str], images: torch.Tensor,
                labels: torch.Tensor, prepare: Callable[[torch.Tensor], torch.Tensor]) -> Scores:
    """|∂L/∂θ ⊙ θ| at the model's weights, L the mean cross-entropy on the sample, in train mode
    (batch norm from the sample's statistics, as the network trains)."""
    net = _masked_copy(model, masks).train()
    weights = _parameters(net, names)
    loss = F.cross_entropy(net(prepare(images)), labels)
    grads = torch.autograd.grad(loss, weights)
    return {n: (g * w).detach().abs() for n, g, w in zip(names, grads, weights)}


def grasp_scores(model: nn.Module, masks: Mapping[str, torch.Tensor], names: Sequence[str], images: torch.Tensor,
                 labels: torch.Tensor, prepare: Callable[[torch.Tensor], torch.Tensor]) -> Scores:
    """−θ ⊙ (H g): g = ∂L/∂θ (held fixed), H g = ∂(gᵀ ∂L/∂θ)/∂θ by a second backward pass."""
    net = _masked_copy(model, masks).train()
    weights = _parameters(net, names)
    x = prepare(images)
    fixed = [g.detach() for g in torch.autograd.grad(F.cross_entropy(net(x), labels), weights)]
    grads = torch.autograd.grad(F.cross_entropy(net(x), labels), weights, create_graph=True)
    inner = sum((g * f).sum() for g, f in zip(grads, fixed))
    hessian_grad = torch.autograd.grad(inner, weights)
    return {n: (-w * hg).detach() for n, w, hg in zip(names, weights, hessian_grad)}


def synflow_scores(model: nn.Module, masks: Mapping[str, torch.Tensor], names: Sequence[str], shape: tuple[int, ...]) -> Scores:
    """|θ ⊙ ∂R/∂θ| on the masked network with every parameter made non-negative, in float64 and
    eval mode (batch norm as an affine map), R the sum of the logits of one all-ones input."""
    net = _masked_copy(model, masks, torch.float64).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    weights = _parameters(net, names)
    total = net(torch.ones((1, *shape), dtype=torch.float64)).sum()
    grads = torch.autograd.grad(total, weights)
    return {n: (g * w).detach().abs() for n, g, w in zip(names, grads, weights)}


def exponential_schedule(start: int, target: int, steps: int) -> list[int]:
    """Kept counts after each of `steps` pruning steps from `start` to `target` kept weights, on
    Tanaka et al.'s exponential schedule (density target^(k/steps)); the last is `target`."""
    if not 0 <= target <= start or steps < 1:
        raise ValueError(f"cannot go from {start} to {target} kept weights in {steps} steps")
    ratio = target / start if start else 1.0
    counts = [round(start * ratio ** (k / steps)) for k in range(1, steps + 1)]
    counts[-1] = target
    return [max(target, min(c, start)) for c in counts]


def balanced_sample(labels: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Indices of `per_class` training images of every class, drawn from `seed` alone (sorted,
    so a record of them reads as a set); the sample SNIP and GraSP score on."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for cls in torch.unique(labels).tolist():
        where = (labels == cls).nonzero().squeeze(1).cpu()
        if len(where) < per_class:
            raise ValueError(f"class {cls} has {len(where)} training images, fewer than the {per_class} asked for")
        chosen.append(where[torch.randperm(len(where), generator=generator)[:per_class]])
    return torch.cat(chosen).sort().values


def shuffle_within_tensors(masks: Mapping[str, torch.Tensor], seed: int) -> Masks:
    """The layerwise-shuffle sanity check (Frankle et al. 2021; Su et al. 2020): each tensor keeps
    as many weights as before, at positions drawn at random within the tensor from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    shuffled = {}
    for name, mask in masks.items():
        flat = mask.flatten().bool().cpu()
        order = torch.randperm(flat.numel(), generator=generator)
        shuffled[name] = flat[order].view(mask.shape).to(device=mask.device, dtype=mask.dtype)
    return shuffled


def masks_at_init(score: Callable[[Masks], Scores], full: Masks, targets: Mapping[tuple[str, ...], int], largest: bool,
                  steps: int = 1) -> Masks:
    """Masks from the dense ones `full` down to `targets` kept weights per group of tensors
    ranked together: `steps` times, score the masked network and prune to the next count of
    each group's exponential schedule (1: one shot, as SNIP and GraSP; 100: SynFlow). Scores
    come from `score(masks)`; the selection is lth's shared one (`lth.pruning.select`)."""
    from lth.pruning import select

    masks = {n: m.clone() for n, m in full.items()}
    kept = {group: sum(int(full[n].sum()) for n in group) for group in targets}
    schedules = {group: exponential_schedule(kept[group], target, steps) for group, target in targets.items()}
    for step in range(steps):
        counts = {group: sum(int(masks[n].sum()) for n in group) - schedules[group][step] for group in targets}
        if any(counts.values()):
            masks = select(score(masks), masks, counts, largest)
    return masks


def smart_ratio_weights(layers: int, depth_squared: bool = False) -> list[float]:
    """Su et al.'s per-layer keep weights, first layer first: (L−l+1)² + (L−l+1) for layer l of L,
    divided by l² for VGG (`depth_squared`), as their reference code does. Earlier layers keep
    a larger share; the ratios, not the positions, are what the random ticket is said to need."""
    return [((layers - l + 1) ** 2 + (layers - l + 1)) / (l * l if depth_squared else 1) for l in range(1, layers + 1)]


def smart_ratio_counts(sizes: Mapping[str, int], kept: int, weights: Sequence[float]) -> dict[str, int]:
    """How many weights each tensor keeps so that tensor l keeps min(n_l, c·w_l·n_l) and the total
    is exactly `kept`: c found by filling (a tensor that would keep more than all of itself keeps
    all, and the rest is shared again), the fractions rounded by largest remainder.

    Su et al.'s reference code instead keeps every linear layer at 30% and scales only the
    convolutions, which gives a network of linear layers alone (LeNet) nothing to scale and
    misses the ladder's densities; lth applies the formula to every prunable tensor."""
    names, total = list(sizes), sum(sizes.values())
    if not 0 <= kept <= total or len(weights) != len(names) or min(weights, default=1) <= 0:
        raise ValueError(f"cannot keep {kept} of {total} weights over {len(names)} tensors with {len(weights)} positive weights")
    full: set[str] = set()
    while True:
        share = sum(w * sizes[n] for n, w in zip(names, weights) if n not in full)
        scale = (kept - sum(sizes[n] for n in full)) / share if share else 0.0
        newly = {n for n, w in zip(names, weights) if n not in full and scale * w >= 1}
        if not newly:
            break
        full |= newly
    exact = {n: float(sizes[n]) if n in full else scale * w * sizes[n] for n, w in zip(names, weights)}
    counts = {n: min(sizes[n], int(x)) for n, x in exact.items()}
    short = kept - sum(counts.values())  # 0 ≤ short < len(names), but for float rounding either way
    step = 1 if short > 0 else -1
    room = [n for n in names if 0 <= counts[n] + step <= sizes[n]]
    for n in sorted(room, key=lambda n: step * (counts[n] - exact[n]))[:abs(short)]:
        counts[n] += step
    return counts


def random_masks_with_counts(full: Masks, counts: Mapping[str, int], seed: int) -> Masks:
    """Each tensor keeps `counts[name]` weights at positions ranked by one random draw per tensor
    from `seed`. The draw does not depend on the counts, so the same seed at smaller counts keeps
    a subset: a study's rounds nest where each tensor's count falls."""
    generator = torch.Generator().manual_seed(seed)
    masks = {}
    for name, mask in full.items():
        ranking = torch.rand(mask.numel(), generator=generator)
        flat = torch.zeros(mask.numel(), dtype=torch.bool)
        flat[ranking.topk(counts[name]).indices] = True
        masks[name] = flat.view(mask.shape).to(device=mask.device, dtype=mask.dtype)
    return masks
