"""Model registry and each model's declaration of which tensors may be pruned.

The seed study was written in Keras, so `seed-cnn` reproduces Keras' defaults rather than
PyTorch's: 'valid' padding, Glorot-uniform kernels and zero biases. `conv2`, `conv4` and `conv6`
are Frankle & Carbin's (ICLR 2019) Conv-2/4/6: 'same' padding and Glorot-normal kernels with zero
biases. Each registry entry (`ModelSpec`) carries its model's initialisation scheme, so
`build_model` draws θ0 the way that model's reference did.

Which tensors are prunable is decided by module type (every conv and dense kernel except the
output layer), never by matching parameter names, so renaming a layer cannot silently change what
a criterion sees. `layer_types` classifies the same kernels as conv / dense / output for
per-layer-type pruning rates.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
from torch import nn


def dense_head(in_features: int, num_classes: int) -> tuple[nn.Sequential, nn.Linear]:
    """Dense 256-256 with ReLUs, and the output layer: the head every registered model shares."""
    classifier = nn.Sequential(nn.Linear(in_features, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU())
    return classifier, nn.Linear(256, num_classes)


class SeedCNN(nn.Module):
    """The seed study's CNN: 2×(conv-conv-pool), dense 256-256, dense 10 (logits)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 3),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3),
            nn.ReLU(),
            nn.Conv2d(128, 128, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.classifier, self.output = dense_head(5 * 5 * 128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.classifier(self.features(x)))


class ConvNet(nn.Module):
    """Frankle & Carbin's Conv-2/4/6: modules of two 3×3 'same' convs + 2×2 max-pool, then
    dense 256-256 and dense 10 (logits) — the same `features` / `classifier` / `output` layout as
    `SeedCNN`.

    `widths` gives each module's channel count: (64,) Conv-2, (64, 128) Conv-4,
    (64, 128, 256) Conv-6. Input is 3×32×32, so the flattened size is
    (32 / 2**len(widths))² × widths[-1].
    """

    def __init__(self, widths: tuple[int, ...], num_classes: int = 10, in_channels: int = 3,
                 image_size: int = 32) -> None:
        super().__init__()
        if not widths:
            raise ValueError("ConvNet needs at least one conv module")
        layers: list[nn.Module] = []
        channels = in_channels
        for width in widths:
            layers += [
                nn.Conv2d(channels, width, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(width, width, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            channels = width
        layers.append(nn.Flatten())
        self.features = nn.Sequential(*layers)
        side = image_size // 2 ** len(widths)
        self.classifier, self.output = dense_head(side * side * channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.classifier(self.features(x)))


def _init_kernels_(model: nn.Module, kernel_init: Callable[..., torch.Tensor],
                   generator: torch.Generator | None) -> None:
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            kernel_init(module.weight, generator=generator)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def keras_init_(model: nn.Module, generator: torch.Generator | None = None) -> None:
    """Glorot-uniform kernels and zero biases, as Keras initialises Conv2D and Dense.

    PyTorch's fan computation for conv kernels (in/out channels × receptive field) equals
    Keras', so `xavier_uniform_` gives the same distribution.
    """
    _init_kernels_(model, nn.init.xavier_uniform_, generator)


def glorot_normal_init_(model: nn.Module, generator: torch.Generator | None = None) -> None:
    """Glorot-normal kernels (std sqrt(2 / (fan_in + fan_out)), untruncated) and zero biases,
    as Frankle & Carbin initialise Conv-2/4/6."""
    _init_kernels_(model, nn.init.xavier_normal_, generator)


INITIALISERS: dict[str, Callable[[nn.Module, torch.Generator | None], None]] = {
    "glorot_uniform": keras_init_,
    "glorot_normal": glorot_normal_init_,
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
    explicit = getattr(model, "output", None)
    if isinstance(explicit, nn.Module):
        return explicit
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("model has no Linear output layer")
    return linears[-1]


def layer_types(model: nn.Module) -> dict[str, str]:
    """Every Conv2d/Linear kernel's `state_dict` name → "conv", "dense" or "output".

    The output layer (as `output_layer` finds it) is "output" whatever its type; other Conv2d
    kernels are "conv" and other Linear kernels "dense". Parameter order; biases are left out.
    """
    out = output_layer(model)
    types = {}
    for module_name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            name = f"{module_name}.weight" if module_name else "weight"
            if module is out:
                types[name] = "output"
            else:
                types[name] = "conv" if isinstance(module, nn.Conv2d) else "dense"
    return types


def prunable_names(model: nn.Module) -> list[str]:
    """`state_dict` names of the prunable kernels, in parameter order: every Conv2d/Linear
    weight except the output layer's; biases are never prunable."""
    return [name for name, kind in layer_types(model).items() if kind != "output"]
