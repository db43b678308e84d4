"""Model registry and each model's declaration of which tensors may be pruned.

Each model draws θ0 the way its reference did: `seed-cnn` reproduces the seed study's Keras
defaults ('valid' padding, Glorot-uniform kernels, zero biases); `conv2`/`conv4`/`conv6` are
Frankle & Carbin's (ICLR 2019) Conv-2/4/6 ('same' padding, Glorot-normal kernels, zero biases);
`resnet20` and `vgg16` are open_lth's CIFAR ResNet-20 and VGG-16 (batch norm; Kaiming-normal
kernels, batch-norm scales uniform in [0, 1), as open_lth's defaults draw them); `lenet-300-100`
is Frankle & Carbin's LeNet (Glorot-normal, as their conv nets). Every model takes its input's
channels and side and its class count from the data set (`model_for`).

Prunable tensors are chosen by module type (every conv and dense kernel except the output layer),
never by parameter name, so renaming a layer cannot silently change what a criterion sees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lth.config import Config


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
    layers on CIFAR)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> None:
        super().__init__((64, 128), num_classes, in_channels, image_size, padding=0)


class LeNet(nn.Module):
    """Frankle & Carbin's LeNet-300-100: the image flattened, dense layers of `widths` with ReLU,
    and the output layer (784-300-100-10 on MNIST: 266,610 parameters)."""

    def __init__(self, widths: tuple[int, ...] = (300, 100), num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        features = in_channels * image_size * image_size
        for width in widths:
            layers += [nn.Linear(features, width), nn.ReLU()]
            features = width
        self.hidden = nn.Sequential(*layers)
        self.output = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.hidden(x))


class BasicBlock(nn.Module):
    """Two 3×3 conv + batch-norm layers and a shortcut: identity, or a strided 1×1 conv + batch
    norm where the block halves the side and widens (open_lth's, the original CIFAR ResNet's "B")."""

    def __init__(self, f_in: int, f_out: int, downsample: bool) -> None:
        super().__init__()
        stride = 2 if downsample else 1
        self.conv1 = nn.Conv2d(f_in, f_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(f_out)
        self.conv2 = nn.Conv2d(f_out, f_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(f_out)
        self.shortcut = nn.Sequential()
        if downsample or f_in != f_out:
            self.shortcut = nn.Sequential(nn.Conv2d(f_in, f_out, 1, stride=stride, bias=False), nn.BatchNorm2d(f_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet-(6n+2): a 3×3 conv, three stages of n basic blocks at `width`,
    2×, 4× channels (the 2nd and 3rd start by halving the side), global average pool, `fc`."""

    def __init__(self, n: int = 3, width: int = 16, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> None:
        super().__init__()  # any image size: the global average pool takes what the stages leave
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        blocks, channels = [], width
        for stage, filters in enumerate((width, 2 * width, 4 * width)):
            for index in range(n):
                blocks.append(BasicBlock(channels, filters, downsample=stage > 0 and index == 0))
                channels = filters
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(out.mean((2, 3)))


VGG16_PLAN = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


class ConvBN(nn.Module):
    """3×3 conv (with bias, as open_lth's VGG) → batch norm → ReLU."""

    def __init__(self, f_in: int, f_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(f_in, f_out, 3, padding=1)
        self.bn = nn.BatchNorm2d(f_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class CifarVGG(nn.Module):
    """open_lth's CIFAR VGG: conv-BN-ReLU modules and 2×2 max-pools as `plan` lists them, a 2×2
    average pool (2×2 → 1×1), and one linear output layer `fc`."""

    def __init__(self, plan: tuple[int | str, ...] = VGG16_PLAN, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> None:
        super().__init__()
        pools = plan.count("M") + 1  # and the closing 2×2 average pool
        if image_size < 2 ** pools:
            raise ValueError(f"VGG's {pools} poolings need images of at least {2 ** pools}×{2 ** pools}, got {image_size}×{image_size}")
        layers: list[nn.Module] = []
        channels = in_channels
        for spec in plan:
            if spec == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers.append(ConvBN(channels, int(spec)))
                channels = int(spec)
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.avg_pool2d(self.layers(x), 2).flatten(1))


def _init_kernels_(kernel_init: Callable[..., torch.Tensor], model: nn.Module,
                   generator: torch.Generator | None = None) -> None:
    """`kernel_init` on every Conv2d/Linear kernel, zeros on their biases."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            kernel_init(module.weight, generator=generator)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def open_lth_init_(model: nn.Module, generator: torch.Generator | None = None) -> None:
    """open_lth's defaults (`kaiming_normal`, batch norm `uniform`): Kaiming-normal kernels (fan
    in, ReLU gain), PyTorch's own uniform(±1/sqrt(fan_in)) biases, batch-norm scales uniform in
    [0, 1) and shifts 0; all drawn from `generator`, so θ0 is a function of the seed alone."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, generator=generator)
            if module.bias is not None:
                bound = 1 / math.sqrt(nn.init._calculate_fan_in_and_fan_out(module.weight)[0])
                nn.init.uniform_(module.bias, -bound, bound, generator=generator)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.weight, 0.0, 1.0, generator=generator)
            nn.init.zeros_(module.bias)


# Keras' Conv2D/Dense default. PyTorch's conv fans (channels × receptive field) equal Keras', so
# `xavier_uniform_` draws from the same distribution.
keras_init_ = partial(_init_kernels_, nn.init.xavier_uniform_)

INITIALISERS: dict[str, Callable[..., None]] = {
    "glorot_uniform": keras_init_,
    # Frankle & Carbin: std sqrt(2 / (fan_in + fan_out)), untruncated.
    "glorot_normal": partial(_init_kernels_, nn.init.xavier_normal_),
    "open_lth": open_lth_init_,
}


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: how to build the architecture and how its reference drew θ0."""

    factory: Callable[..., nn.Module]  # (num_classes, in_channels, image_size) -> the module
    init: str  # a key of INITIALISERS


MODELS: dict[str, ModelSpec] = {
    "seed-cnn": ModelSpec(SeedCNN, "glorot_uniform"),
    "conv2": ModelSpec(partial(ConvNet, (64,)), "glorot_normal"),
    "conv4": ModelSpec(partial(ConvNet, (64, 128)), "glorot_normal"),
    "conv6": ModelSpec(partial(ConvNet, (64, 128, 256)), "glorot_normal"),
    "resnet20": ModelSpec(CifarResNet, "open_lth"),
    "vgg16": ModelSpec(CifarVGG, "open_lth"),
    "lenet-300-100": ModelSpec(partial(LeNet, (300, 100)), "glorot_normal"),
}


def build_model(name: str, seed: int, shape: tuple[int, int, int] = (3, 32, 32), classes: int = 10) -> nn.Module:
    """Build a registered model for images of `shape` (channels, height, width) and `classes`
    outputs, its weights drawn from `seed` alone (θ0 is reproducible)."""
    spec = MODELS[name]
    channels, height, width = shape
    if height != width:
        raise ValueError(f"lth's models take square images, got {height}×{width}")
    model = spec.factory(num_classes=classes, in_channels=channels, image_size=height)
    INITIALISERS[spec.init](model, torch.Generator().manual_seed(seed))
    return model


def model_for(config: Config, seed: int) -> nn.Module:
    """`config`'s model, built for its data set's images and classes."""
    return build_model(config.model, seed, config.data.image_shape, config.data.classes)


def output_layer(model: nn.Module) -> nn.Module:
    """The layer producing the logits: the model's `output` attribute, else its last Linear."""
    if isinstance(getattr(model, "output", None), nn.Module):
        return model.output
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("model has no Linear output layer")
    return linears[-1]


def has_convolutions(model: nn.Module) -> bool:
    """Whether a model has convolutions: the only layers a memory layout or stacking on a CPU changes."""
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


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
