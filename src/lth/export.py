"""A round's ticket out of lth, for code that knows only PyTorch: the round's mask and its weights at
one point: `init` (where the round's training started, its rewind point), `best` (early stopping,
the weights behind rounds.csv's `test_acc_best`) or `final`.

- `prune`: a `torch.save`d dict {"model", "round", "weights", "state_dict"}; the state dict is that
  of the model pruned with `torch.nn.utils.prune` (`<layer>.weight_orig`, `<layer>.weight_mask`),
  so `load_pruned` (or its six lines, quoted in the README) rebuilds it with `lth.models` alone.
- `state-dict`: safetensors, the masked weights under their usual names, and the sparsity summary
  as JSON in the metadata (`lth_sparsity`), so no mask is needed to use them."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from lth.config import ConfigError
from lth.masks import Masks, apply_masks_
from lth.models import build_model, model_for
from lth.rundir import RunDir, RunDirError, atomic_write
from lth.study import rewind_weights

FORMATS = ("prune", "state-dict")
WEIGHTS = ("init", "best", "final")


def sparsity(masks: Masks) -> dict[str, list[int]]:
    """Kept and total weights per masked tensor, and over all of them ("all")."""
    counts = {name: [int(m.sum()), m.numel()] for name, m in masks.items()}
    return {**counts, "all": [sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values())]}


def pruned_module(model_name: str, weights: dict[str, torch.Tensor], masks: Masks, shape: tuple[int, int, int] = (3, 32, 32),
                  classes: int = 10) -> nn.Module:
    """The model (for images of `shape`, `classes` outputs) holding `weights`, each masked tensor
    pruned by `torch.nn.utils.prune.custom_from_mask`."""
    model = build_model(model_name, 0, shape, classes)
    model.load_state_dict(weights)
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        module, _, param = name.rpartition(".")
        prune.custom_from_mask(modules[module], param, mask)
    return model


def load_pruned(path: str | os.PathLike) -> nn.Module:
    """A `prune` export as a pruned module: plain PyTorch and `lth.models` (no pickled code runs)."""
    ckpt = torch.load(path, weights_only=True)
    shape, classes = tuple(ckpt.get("input_shape", (3, 32, 32))), int(ckpt.get("classes", 10))  # exports before data sets: CIFAR-10
    model, state = build_model(ckpt["model"], 0, shape, classes), ckpt["state_dict"]
    modules = dict(model.named_modules())
    for key in [k for k in state if k.endswith("_mask")]:
        module, _, param = key.removesuffix("_mask").rpartition(".")
        prune.custom_from_mask(modules[module], param, state[key])
    model.load_state_dict(state)
    return model


def ticket(run: RunDir, round_index: int, weights: str) -> tuple[str, dict[str, torch.Tensor], Masks]:
    """(model name, masked weights, mask) of a committed round, or a one-line RunDirError."""
    run.require_run()
    config, done = run.read_config(), len(run.read_rounds())
    if not 0 <= round_index < done:
        raise RunDirError(f"{run.root}: round {round_index} is not committed (rounds done: {done}); choose --round 0 to {done - 1}")
    paths = {"best": run.best(round_index), "final": run.final(round_index)}
    for path in (run.mask(round_index), paths.get(weights, run.init)):
        if not path.is_file():
            raise RunDirError(f"{path}: missing; the run directory is incomplete or damaged")
    try:
        state = run.load(paths[weights]) if weights in paths else rewind_weights(config, round_index, run, run.load(run.init))
    except FileNotFoundError as exc:
        raise RunDirError(f"{exc.filename}: missing; round {round_index}'s rewind point cannot be read") from None
    model, masks = model_for(config, 0), run.load(run.mask(round_index))
    model.load_state_dict(state)
    apply_masks_(model, masks)
    return config.model, model.state_dict(), {name: masks[name] for name in model.state_dict() if name in masks}  # parameter order


def write_ticket(model_name: str, state: dict[str, torch.Tensor], masks: Masks, fmt: str, out: Path, meta: dict[str, Any]) -> None:
    """One ticket (masked weights and their mask) to `out`, atomically, in `fmt`."""
    meta = {"model": model_name, **meta}
    if fmt == "prune":
        buf = io.BytesIO()
        module = pruned_module(model_name, state, masks, tuple(meta.get("input_shape", (3, 32, 32))), int(meta.get("classes", 10)))
        torch.save({**meta, "state_dict": module.state_dict()}, buf)
        atomic_write(out, buf.getvalue())
    else:
        from safetensors.torch import save

        text = {f"lth_{k}": str(v) for k, v in meta.items()} | {"lth_sparsity": json.dumps(sparsity(masks))}
        atomic_write(out, save({k: v.contiguous() for k, v in state.items()}, metadata=text))


def export_ticket(run_dir: str | os.PathLike, round_index: int, fmt: str, out: str | os.PathLike, weights: str = "best",
                  force: bool = False) -> dict[str, list[int]]:
    """Write round `round_index`'s ticket to `out` in `fmt`; returns its sparsity summary."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if weights not in WEIGHTS:
        raise ConfigError(f"--weights: expected one of {', '.join(WEIGHTS)}, got {weights!r}")
    out = Path(out)
    if out.is_dir():
        raise RunDirError(f"{out} is a directory; give a file name to --out")
    if out.exists() and not force:
        raise RunDirError(f"{out} already exists; pass --force to overwrite it or choose another --out")
    model_name, state, masks = ticket(RunDir(Path(run_dir)), round_index, weights)
    data = RunDir(Path(run_dir)).read_config().data
    write_ticket(model_name, state, masks, fmt, out, {"round": round_index, "weights": weights, "dataset": data.dataset,
                                                      "input_shape": list(data.image_shape), "classes": data.classes})
    return sparsity(masks)
