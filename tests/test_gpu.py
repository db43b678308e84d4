"""CUDA-graph engine checks. They need an NVIDIA GPU and run when one is present (the device
tool's sessions run them with scripts/gpu_check.sh); on a CPU-only machine they are skipped
because the hardware is absent, not a dependency. The CPU-side parts of the engine (flags,
optimizer-state portability, the shared step body) are tested in test_engine.py.

Documented tolerance: the graphed iteration replays the eager iteration's kernels, so over the
first 30 iterations their training losses agree to 1e-4 relative and the weights to 1e-3
relative (norm of the difference / norm of the weights); what differences remain come from
cuDNN's non-deterministic reductions, which differ from run to run of the eager loop too.
"""

from __future__ import annotations

import copy

import pytest
import torch

from lth import config as cfgmod
from lth.data import load_splits
from lth.engine import GraphedStep, ModuleEngine, StackedEngine, eager_step
from lth.masks import full_masks
from lth.models import build_model, prunable_names

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (hardware, not a dependency)")

STEPS = 30


def _engines(kind: str, cfg, device):
    models = [build_model("seed-cnn", s) for s in (0, 1)]
    masks = [full_masks(m, prunable_names(m)) for m in models]
    masks[1]["features.2.weight"] = torch.rand(masks[1]["features.2.weight"].shape, generator=torch.Generator().manual_seed(1)) > 0.5
    if kind == "module":
        make = lambda capturable: ModuleEngine(copy.deepcopy(models[1]), masks[1], cfg, device, capturable=capturable)
    else:
        make = lambda capturable: StackedEngine([copy.deepcopy(m) for m in models], masks, cfg, device, capturable=capturable)
    return make(False), make(True), masks


@pytest.mark.parametrize("kind", ["module", "stacked"])
def test_graphed_steps_match_eager_steps(kind, data_root):
    device = torch.device("cuda")
    splits = load_splits(data_root, device, train_size=3000, val_size=100, test_size=100)
    cfg = cfgmod.apply_overrides(cfgmod.preset("seed"), {"train.tf32": "false"}).train
    eager, graphed, masks = _engines(kind, cfg, device)
    step = GraphedStep(graphed, splits.train_x, splits.train_y, cfg.batch_size)
    gen = torch.Generator().manual_seed(0)
    for _ in range(STEPS):
        idx = torch.randint(0, 3000, (eager.k, cfg.batch_size), generator=gen).to(device)
        eager_step(eager, splits.train_x, splits.train_y, idx)
        step(idx)
    assert step.graph is not None  # the later iterations really were replays
    torch.cuda.synchronize()
    loss_e, loss_g = eager.loss_sum.cpu(), graphed.loss_sum.cpu()
    assert torch.allclose(loss_e, loss_g, rtol=1e-4)
    for k in range(eager.k):
        we, wg = eager.state(k), graphed.state(k)
        for name in we:
            assert (we[name] - wg[name]).norm() <= 1e-3 * we[name].norm() + 1e-6, name
        member_masks = masks[k] if kind == "stacked" else masks[1]
        for name, m in member_masks.items():
            assert torch.count_nonzero(wg[name][~m]) == 0  # the in-graph re-mask holds


def test_graphed_study_runs_end_to_end(data_root, tmp_path):
    from lth.study import run_study

    config = cfgmod.apply_overrides(cfgmod.preset("quick"), {"device": "cuda", "train.engine": "graph", "energy.tracker": "off", "prune.rounds": "1"})
    result = run_study(config, out=tmp_path / "run", data_dir=data_root, progress=False)
    assert len(result.rounds) == 2


@pytest.mark.parametrize("k", [1, 2])
def test_graphed_resnet20_with_schedule_and_augmentation_matches_eager(k, data_root):
    """open_lth's recipe under a graph: fused SGD with a tensor learning rate refilled between
    replays (warm-up and a milestone inside the 30 iterations), crop + flip from static buffers,
    batch norm's running statistics updated in the graph (stacked: as the engine's own state)."""
    from lth.schedule import learning_rate
    from lth.seeds import epoch_augmentation

    device = torch.device("cuda")
    splits = load_splits(data_root, device, train_size=3000, val_size=100, test_size=100)
    cfg = cfgmod.apply_overrides(cfgmod.preset("resnet20"), {"train.tf32": "false", "train.warmup": "5it", "train.milestones": "20it"}).train
    models = [build_model("resnet20", s) for s in range(k)]
    masks = [full_masks(m, prunable_names(m)) for m in models]
    make = (lambda cap: ModuleEngine(copy.deepcopy(models[0]), masks[0], cfg, device, capturable=cap)) if k == 1 else \
        (lambda cap: StackedEngine([copy.deepcopy(m) for m in models], masks, cfg, device, capturable=cap))
    eager, graphed = make(False), make(True)
    step = GraphedStep(graphed, splits.train_x, splits.train_y, cfg.batch_size, augment=True)
    gen = torch.Generator().manual_seed(0)
    for i in range(STEPS):
        idx = torch.randint(0, 3000, (k, cfg.batch_size), generator=gen).to(device)
        aug = torch.stack([epoch_augmentation(cfg.batch_size, s, 0, i) for s in range(k)]).to(device)
        for engine in (eager, graphed):
            engine.set_lr(learning_rate(cfg, i, 100))
        eager_step(eager, splits.train_x, splits.train_y, idx, aug)
        step(idx, aug)
    assert step.graph is not None
    torch.cuda.synchronize()
    assert torch.allclose(eager.loss_sum.cpu(), graphed.loss_sum.cpu(), rtol=1e-3)
    for j in range(k):
        we, wg = eager.state(j), graphed.state(j)
        for name in we:
            if we[name].is_floating_point():
                assert (we[name] - wg[name]).norm() <= 1e-2 * we[name].norm() + 1e-5, name
            else:
                assert torch.equal(we[name], wg[name]), name


def test_graphed_resnet20_quick_study_runs_end_to_end(data_root, tmp_path):
    from lth.study import run_study

    config = cfgmod.apply_overrides(cfgmod.preset("resnet20-quick"), {"device": "cuda", "train.engine": "graph", "energy.tracker": "off",
                                                                       "prune.rounds": "1", "rewind": "iter:40"})
    result = run_study(config, out=tmp_path / "run", data_dir=data_root, progress=False)
    assert len(result.rounds) == 2 and result.rounds[1]["best_step"] > 40
