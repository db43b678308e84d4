"""Model registry and each model's declaration of which tensors may be pruned.

Each model draws θ0 the way its reference did: `seed-cnn` reproduces the seed study's Keras
defaults ('valid' padding, Glorot-uniform kernels, zero biases); `conv2`/`conv4`/`conv6` are
Frankle & Carbin's (ICLR 2019) Conv-2/4/6 ('same' padding, Glorot-normal kernels, zero biases).

Prunable tensors are chosen by module type (every conv and dense kernel except the output layer),
never by parameter name, so renaming a layer cannot silently change what a criterion sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
from torch import nn


class ConvNet(nn.Module):
    """Modules of two 3×3 convs + 2×2 max-pool, one per entry of `widths`, then dense 256-256
    and the output layer (logits): (64,) is Conv-2, (64, 128) Conv-4, (64, 128, 256) Conv-6."""

    def __init__(self, widths: tuple[int, ...], num_classes: int = 10, in_channels: int = 3,
                 image_size: int = 32, padding: int = 1) -> None:
        super().__init__()
        if not widths:
            raise ValueError("ConvNet needs at least one conv module")
        trim = 2 - 2 * padding  # how much each 3×3 conv shrinks the side: 0 with 'same' padding, 2 with 'valid'
        layers: list[nn.Module] = []
        channels, side = in_channels, image_size
        for width in widths:
            layers += [
                nn.Conv2d(channels, width, 3, padding=padding),
                nn.ReLU(),
                nn.Conv2d(width, width, 3, padding=padding),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            channels, side = width, (side - 2 * trim) // 2
        layers.append(nn.Flatten())
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(side * side * channels, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU()
        )
        self.output = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.classifier(self.features(x)))


class SeedCNN(ConvNet):
    """The seed study's CNN: Conv-4's layout with Keras' 'valid' padding (5×5×128 reach the dense
    layers)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__((64, 128), num_classes, padding=0)


def _init_kernels_(kernel_init: Callable[..., torch.Tensor], model: nn.Module,
                   generator: torch.Generator | None = None) -> None:
    """`kernel_init` on every Conv2d/Linear kernel, zeros on their biases."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            kernel_init(module.weight, generator=generator)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


# Keras' Conv2D/Dense default. PyTorch's conv fans (channels × receptive field) equal Keras', so
# `xavier_uniform_` draws from the same distribution.
keras_init_ = partial(_init_kernels_, nn.init.xavier_uniform_)

INITIALISERS: dict[str, Callable[..., None]] = {
    "glorot_uniform": keras_init_,
    # Frankle & Carbin: std sqrt(2 / (fan_in + fan_out)), untruncated.
    "glorot_normal": partial(_init_kernels_, nn.init.xavier_normal_),
}


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: how to build the architecture and how its reference drew θ0."""

    factory: Callable[[], nn.Module]
    init: str  # a key of INITIALISERS


MODELS: dict[str, ModelSpec] = {
    "seed-cnn": ModelSpec(SeedCNN, "glorot_uniform"),
    "conv2": ModelSpec(partial(ConvNet, (64,)), "glorot_normal"),
    "conv4": ModelSpec(partial(ConvNet, (64, 128)), "glorot_normal"),
    "conv6": ModelSpec(partial(ConvNet, (64, 128, 256)), "glorot_normal"),
}


def build_model(name: str, seed: int) -> nn.Module:
    """Build a registered model with its weights drawn from `seed` alone (θ0 is reproducible)."""
    spec = MODELS[name]
    model = spec.factory()
    INITIALISERS[spec.init](model, torch.Generator().manual_seed(seed))
    return model


def output_layer(model: nn.Module) -> nn.Module:
    """The layer producing the logits: the model's `output` attribute, else its last Linear."""
    if isinstance(getattr(model, "output", None), nn.Module):
        return model.output
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("model has no Linear output layer")
    return linears[-1]


def layer_types(model: nn.Module) -> dict[str, str]:
    """Every Conv2d/Linear kernel's `state_dict` name → "conv", "dense" or "output" (the
    `output_layer`, whatever its type), in parameter order; biases are left out."""
    out = output_layer(model)
    types = {}
    for module_name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            name = f"{module_name}.weight" if module_name else "weight"
            types[name] = "output" if module is out else "conv" if isinstance(module, nn.Conv2d) else "dense"
    return types


def prunable_names(model: nn.Module) -> list[str]:
    """`state_dict` names of the prunable kernels, in parameter order: every Conv2d/Linear
    weight except the output layer's; biases are never prunable."""
    return [name for name, kind in layer_types(model).items() if kind != "output"]
