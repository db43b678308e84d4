"""Model registry and each model's declaration of which tensors may be pruned.

The seed study was written in Keras, so `seed-cnn` reproduces Keras' defaults rather than
PyTorch's: 'valid' padding, Glorot-uniform kernels and zero biases. Which tensors are prunable is
decided by module type (every conv and dense kernel except the output layer), never by matching
parameter names, so renaming a layer cannot silently change what a criterion sees.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


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
        self.classifier = nn.Sequential(
            nn.Linear(5 * 5 * 128, 256),
            nn.ReLU(),
            nn.Linear(256, 256),
            nn.ReLU(),
        )
        self.output = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.classifier(self.features(x)))


def keras_init_(model: nn.Module, generator: torch.Generator | None = None) -> None:
    """Glorot-uniform kernels and zero biases, as Keras initialises Conv2D and Dense.

    PyTorch's fan computation for conv kernels (in/out channels × receptive field) equals
    Keras', so `xavier_uniform_` gives the same distribution.
    """
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight, generator=generator)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


MODELS: dict[str, Callable[[], nn.Module]] = {
    "seed-cnn": SeedCNN,
}


def build_model(name: str, seed: int) -> nn.Module:
    """Build a registered model with its weights drawn from `seed` alone (θ0 is reproducible)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    model = MODELS[name]()
    keras_init_(model, torch.Generator().manual_seed(seed))
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


def prunable_names(model: nn.Module) -> list[str]:
    """`state_dict` names of the prunable kernels, in parameter order.

    Every Conv2d/Linear weight except the output layer's; biases are never prunable.
    """
    out = output_layer(model)
    names = []
    for module_name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and module is not out:
            names.append(f"{module_name}.weight" if module_name else "weight")
    return names


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
