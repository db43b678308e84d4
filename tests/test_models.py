import math

import torch
from torch import nn

from lth.models import build_model, count_parameters, output_layer, prunable_names


def test_seed_cnn_parameter_count_matches_keras():
    assert count_parameters(build_model("seed-cnn", 0)) == 1_147_978


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
