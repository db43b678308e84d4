import math

import torch
from torch import nn

import pytest

from lth.models import (
    MODELS,
    ModelSpec,
    SeedCNN,
    build_model,
    keras_init_,
    layer_types,
    output_layer,
    prunable_names,
)


def _count(model):
    return sum(p.numel() for p in model.parameters())


def _kernels(model):
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _fans(w):
    receptive = w[0, 0].numel() if w.dim() == 4 else 1
    return w.shape[1] * receptive, w.shape[0] * receptive


def test_seed_cnn_parameter_count_matches_keras():
    assert _count(build_model("seed-cnn", 0)) == 1_147_978


def test_prunable_tensors_are_conv_and_dense_kernels_except_output():
    model = build_model("seed-cnn", 0)
    names = prunable_names(model)
    params = dict(model.named_parameters())
    kernels = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(names) == 6 and len(kernels) == 7
    assert all(n.endswith(".weight") for n in names)
    assert "output.weight" not in names and output_layer(model) is model.output
    assert sum(params[n].numel() for n in names) == 1_147_978 - 2570 - (64 + 64 + 128 + 128 + 256 + 256)


def test_prunable_declared_by_module_type_not_names():
    class Renamed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3)
            self.weird_name = nn.Linear(4, 5)
            self.zzz = nn.Linear(5, 2)

    model = Renamed()
    assert prunable_names(model) == ["a.weight", "weird_name.weight"]


def test_keras_initialisation_glorot_uniform_and_zero_bias():
    model = build_model("seed-cnn", 3)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            w = module.weight
            receptive = w[0, 0].numel() if w.dim() == 4 else 1
            limit = math.sqrt(6.0 / (w.shape[1] * receptive + w.shape[0] * receptive))
            assert w.abs().max() <= limit
            assert w.abs().max() > 0.9 * limit  # really spans the Glorot range
            assert torch.count_nonzero(module.bias) == 0


def test_same_seed_same_init_and_valid_padding_shapes():
    a, b, c = build_model("seed-cnn", 7), build_model("seed-cnn", 7), build_model("seed-cnn", 8)
    for (n, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb)
        if n.endswith("weight"):
            assert not torch.equal(pa, pc)
    assert a.classifier[0].in_features == 5 * 5 * 128
    assert a(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_build_model_seed_cnn_unchanged_keras_init_from_seed():
    for seed in (0, 7):
        expected = SeedCNN()
        keras_init_(expected, torch.Generator().manual_seed(seed))
        got = build_model("seed-cnn", seed)
        for (n, pe), (m, pg) in zip(expected.state_dict().items(), got.state_dict().items()):
            assert n == m and torch.equal(pe, pg)


def test_registry_entries_carry_their_init():
    assert set(MODELS) >= {"seed-cnn", "conv2", "conv4", "conv6", "lenet-300-100"}
    assert all(isinstance(spec, ModelSpec) for spec in MODELS.values())
    assert MODELS["seed-cnn"].init == "glorot_uniform"
    assert {MODELS[n].init for n in ("conv2", "conv4", "conv6")} == {"glorot_normal"}
    from lth import config as cfgmod

    with pytest.raises(cfgmod.ConfigError, match="unknown model"):  # refused at the config boundary
        cfgmod.from_dict({"model": "no-such-model"})


@pytest.mark.parametrize(
    "name, weights, flat",
    [
        ("conv2", 4_300_992, 16 * 16 * 64),
        ("conv4", 2_425_024, 8 * 8 * 128),
        ("conv6", 2_261_184, 4 * 4 * 256),
    ],
)
def test_frankle_carbin_conv_weight_counts_same_padding_and_shape(name, weights, flat):
    model = build_model(name, 0)
    assert sum(m.weight.numel() for m in _kernels(model)) == weights
    assert model.classifier[0].in_features == flat
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert isinstance(model.output, nn.Linear) and output_layer(model) is model.output
    x = torch.rand(2, 3, 32, 32)
    assert model.features(x).shape == (2, flat)
    assert model(x).shape == (2, 10)


def test_conv_models_glorot_normal_and_zero_bias():
    model = build_model("conv2", 5)
    for module in _kernels(model):
        w = module.weight.detach()
        fan_in, fan_out = _fans(w)
        std = math.sqrt(2.0 / (fan_in + fan_out))
        assert abs(w.std().item() - std) < 0.1 * std
        assert abs(w.mean().item()) < 0.1 * std
        assert torch.count_nonzero(module.bias) == 0
    # The big dense layer (4.2M weights): Gaussian tails, not Glorot-uniform's bounded box.
    w = model.classifier[0].weight.detach().flatten()
    fan_in, fan_out = _fans(model.classifier[0].weight)
    std = math.sqrt(2.0 / (fan_in + fan_out))
    uniform_limit = math.sqrt(6.0 / (fan_in + fan_out))  # = √3·std; uniform never exceeds it
    beyond_2sd = (w.abs() > 2 * std).float().mean().item()
    assert 0.040 < beyond_2sd < 0.051  # Normal: 4.55%; uniform: 0
    assert w.abs().max().item() > uniform_limit
    kurtosis = (((w - w.mean()) / w.std()) ** 4).mean().item()
    assert abs(kurtosis - 3.0) < 0.1  # Normal 3, uniform 1.8


def test_conv_models_same_seed_same_init():
    for name in ("conv2", "conv4", "conv6"):
        a, b, c = build_model(name, 11), build_model(name, 11), build_model(name, 12)
        for (n, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
            assert torch.equal(pa, pb)
            if n.endswith("weight"):
                assert not torch.equal(pa, pc)


def test_conv4_prunable_names_are_conv_and_hidden_dense_kernels():
    model = build_model("conv4", 0)
    assert prunable_names(model) == [
        "features.0.weight",
        "features.2.weight",
        "features.5.weight",
        "features.7.weight",
        "classifier.0.weight",
        "classifier.2.weight",
    ]


def test_layer_types_seed_cnn_and_conv6():
    assert layer_types(build_model("seed-cnn", 0)) == {
        "features.0.weight": "conv",
        "features.2.weight": "conv",
        "features.5.weight": "conv",
        "features.7.weight": "conv",
        "classifier.0.weight": "dense",
        "classifier.2.weight": "dense",
        "output.weight": "output",
    }
    model = build_model("conv6", 0)
    types = layer_types(model)
    assert types == {
        **{f"features.{i}.weight": "conv" for i in (0, 2, 5, 7, 10, 12)},
        "classifier.0.weight": "dense",
        "classifier.2.weight": "dense",
        "output.weight": "output",
    }
    assert list(types) == [n for n in model.state_dict() if n.endswith("weight")]
    assert [n for n, t in types.items() if t != "output"] == prunable_names(model)


def test_layer_types_uses_output_layer_not_names():
    class Renamed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3)
            self.weird_name = nn.Linear(4, 5)
            self.zzz = nn.Linear(5, 2)

    assert layer_types(Renamed()) == {"a.weight": "conv", "weird_name.weight": "dense", "zzz.weight": "output"}
