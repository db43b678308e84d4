"""`lth export`: a ticket loaded by plain PyTorch (torch.nn.utils.prune, or a masked safetensors
state dict) computes what lth's own masked model computes, for every model; the tiny real run's
exported ticket reproduces its recorded test accuracy; bad requests are one line and exit 2."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch.nn.utils import prune

from conftest import read_rounds_csv, tiny_config
from lth import cli
from lth.data import load_splits, to_float
from lth.engine import evaluate_model
from lth.export import load_pruned, write_ticket
from lth.masks import apply_masks_
from lth.models import MODELS, build_model, prunable_names
from lth.rundir import RunDir


@pytest.fixture(scope="module")
def splits(data_root):
    d = tiny_config().data
    return load_splits(data_root, train_size=d.train_size, val_size=d.val_size, test_size=d.test_size)


def plain_pytorch_load(path):
    """The recipe in docs/how-to/stability-and-export.md, verbatim: torch, torch.nn.utils.prune and lth.models only."""
    ckpt = torch.load(path, weights_only=True)
    model = build_model(ckpt["model"], 0)
    for name, module in model.named_modules():
        if f"{name}.weight_mask" in ckpt["state_dict"]:
            prune.custom_from_mask(module, "weight", ckpt["state_dict"][f"{name}.weight_mask"])
    model.load_state_dict(ckpt["state_dict"])
    return model


@pytest.mark.parametrize("name", list(MODELS))
def test_both_formats_round_trip_for_every_model(name, splits, tmp_path):
    reference = build_model(name, 3)
    generator = torch.Generator().manual_seed(1)
    masks = {n: torch.rand(p.shape, generator=generator) < 0.6 for n, p in reference.named_parameters() if n in prunable_names(reference)}
    apply_masks_(reference, masks)
    state = reference.state_dict()
    batch = to_float(splits.test_x[:32])
    with torch.no_grad():
        expected = reference(batch)

    write_ticket(name, state, masks, "prune", tmp_path / "t.pt", {"round": 1, "weights": "best"})
    for model in (plain_pytorch_load(tmp_path / "t.pt"), load_pruned(tmp_path / "t.pt")):
        assert all(prune.is_pruned(model.get_submodule(n.rpartition(".")[0])) for n in masks)
        keys = set(model.state_dict())
        assert {f"{n}_orig" for n in masks} | {f"{n}_mask" for n in masks} <= keys and not set(masks) & keys
        with torch.no_grad():
            assert torch.equal(model(batch), expected)
        for n, mask in masks.items():
            assert torch.equal(model.get_submodule(n.rpartition(".")[0]).weight == 0, ~mask | (state[n] == 0))

    write_ticket(name, state, masks, "state-dict", tmp_path / "t.safetensors", {"round": 1, "weights": "best"})
    plain = build_model(name, 0)
    plain.load_state_dict(load_file(tmp_path / "t.safetensors"))
    with torch.no_grad():
        assert torch.equal(plain(batch), expected)
    with safe_open(str(tmp_path / "t.safetensors"), "pt") as f:
        meta = f.metadata()
    summary = json.loads(meta["lth_sparsity"])
    assert meta["lth_model"] == name and summary == {**{n: [int(m.sum()), m.numel()] for n, m in masks.items()},
                                                     "all": [sum(int(m.sum()) for m in masks.values()), sum(m.numel() for m in masks.values())]}


def test_export_of_the_tiny_run_reproduces_its_test_accuracy(tiny_run, splits, tmp_path, capsys):
    run = RunDir(tiny_run.run_dir)
    row = read_rounds_csv(run.rounds)[2]
    out = tmp_path / "ticket.pt"
    assert cli.main(["export", str(run.root), "--round", "2", "--format", "prune", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{int(row['weights_remaining']):,} of {int(row['weights_prunable']):,} prunable weights kept" in printed
    model = plain_pytorch_load(out)
    assert evaluate_model(model, splits.test_x, splits.test_y, 500)[1] == pytest.approx(float(row["test_acc_best"]), abs=1e-12)

    # --weights init: the round's rewind point (θ0 here) under its mask, as a plain state dict.
    sd = tmp_path / "init.safetensors"
    assert cli.main(["export", str(run.root), "--round", "2", "--format", "state-dict", "--out", str(sd), "--weights", "init"]) == 0
    init, mask, exported = (load_file(p) for p in (run.init, run.mask(2), sd))
    assert all(torch.equal(exported[k], init[k] * mask[k] if k in mask else init[k]) for k in init)


@pytest.mark.parametrize("argv, message", [
    (["--round", "3", "--format", "prune"], "round 3 is not committed"),
    (["--round", "1", "--format", "onnx"], "--format: expected one of prune, state-dict"),
    (["--round", "1", "--format", "prune", "--weights", "last"], "--weights: expected one of init, best, final"),
])
def test_bad_requests_are_one_line(argv, message, tiny_run, tmp_path, capsys):
    assert cli.main(["export", str(tiny_run.run_dir), *argv, "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (tmp_path / "x.pt").exists()


def test_existing_out_is_kept_without_force(tiny_run, tmp_path, capsys):
    out = tmp_path / "x.pt"
    out.write_text("keep me")
    args = ["export", str(tiny_run.run_dir), "--round", "0", "--format", "prune", "--out", str(out)]
    assert cli.main(args) == 2 and "already exists; pass --force" in capsys.readouterr().err and out.read_text() == "keep me"
    assert cli.main([*args, "--force"]) == 0 and load_pruned(out) is not None
    assert cli.main(["export", str(tmp_path), "--round", "0", "--format", "prune", "--out", str(tmp_path / "y.pt")]) == 2
    assert "not an lth run directory" in capsys.readouterr().err
