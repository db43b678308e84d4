"""Pruning masks: `state_dict` name → bool tensor (True kept, False pruned). They are re-applied in
place after every optimizer step and every load or rewind, so pruned weights stay exactly zero."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

Masks = dict[str, torch.Tensor]


def full_masks(model: nn.Module, names: Iterable[str]) -> Masks:
    """All-ones masks for `names` (round 0 trains the dense network)."""
    params = dict(model.named_parameters())
    return {name: torch.ones_like(params[name], dtype=torch.bool, device="cpu") for name in names}


class MaskApplier:
    """One fused in-place multiply per step; built once per round, so no per-layer loop or host copy."""

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
        params = dict(model.named_parameters())
        if missing := sorted(set(masks) - set(params)):
            raise KeyError(f"mask for unknown parameter {missing[0]!r}")
        self.params = [params[name] for name in masks]
        self.factors = [masks[name].to(param) for name, param in zip(masks, self.params)]  # dtype, device

    @torch.no_grad()
    def __call__(self) -> None:
        if self.params:  # _foreach_mul_ rejects empty lists
            torch._foreach_mul_(self.params, self.factors)


def apply_masks_(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the pruned entries of `model`'s parameters in place."""
    MaskApplier(model, masks)()


def count_kept(masks: Mapping[str, torch.Tensor]) -> dict[str, int]:
    return {name: int(mask.sum()) for name, mask in masks.items()}


def density(masks: Mapping[str, torch.Tensor]) -> dict[str, float]:
    return {name: float(mask.sum()) / mask.numel() for name, mask in masks.items()}
