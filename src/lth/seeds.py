"""The seed protocol on one page: every random choice of a study derives from its one `seed`,
as a pure function of (seed, label, coordinates): θ0 (`init`), each epoch's data order (`data`),
a round's random pruning (`prune`) and re-initialisation (`reinit`). So a resumed study draws
exactly what an uninterrupted one would, on any machine and Python or torch version."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from `seed` and a label, stable across Python and torch versions."""
    text = ":".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def study_seeds(seed: int) -> dict[str, int]:
    """The seeds recorded in the manifest."""
    return {"seed": seed, "init_seed": derive_seed(seed, "init"), "data_seed": derive_seed(seed, "data")}


def epoch_order(n: int, data_seed: int, round_index: int, epoch: int) -> torch.Tensor:
    """The training-set permutation of one epoch (epochs count from 1), on the CPU."""
    generator = torch.Generator().manual_seed(derive_seed(data_seed, "order", round_index, epoch))
    return torch.randperm(n, generator=generator)


def prune_seed(seed: int, round_index: int) -> int:
    """The draw of a random criterion when it makes round `round_index`'s mask."""
    return derive_seed(seed, "prune", round_index)


def reinit_seed(seed: int, round_index: int) -> int:
    """θ of the random re-initialisation control in round `round_index`."""
    return derive_seed(seed, "reinit", round_index)


def epoch_augmentation(n: int, data_seed: int, round_index: int, epoch: int, pad: int = 4) -> torch.Tensor:
    """One epoch's random crop and flip, on the CPU: [n, 3] int64 rows (row offset, column offset,
    mirror), one per position in the epoch's order (`lth.data.crop_flip` applies them). Drawn
    apart from the order, so augmenting a study never changes which images it sees when."""
    generator = torch.Generator().manual_seed(derive_seed(data_seed, "augment", round_index, epoch))
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    mirror = torch.randint(0, 2, (n, 1), generator=generator)
    return torch.cat([offsets, mirror], dim=1)


def score_sample_seed(seed: int) -> int:
    """The class-balanced sample SNIP and GraSP score θ0 on (one per study: every round's mask is
    scored on the same images)."""
    return derive_seed(seed, "score-sample")


def shuffle_seed(seed: int, round_index: int) -> int:
    """The layerwise-shuffle sanity check's draw for round `round_index`'s mask."""
    return derive_seed(seed, "shuffle", round_index)


def smart_ratio_seed(seed: int) -> int:
    """The random positions of a smart-ratio ticket: one draw per study, so rounds nest where they can."""
    return derive_seed(seed, "smart-ratio")
