"""Typed, validated experiment configuration: frozen dataclasses, presets, TOML in and out.

A config fully describes a study except where its data lives and how loudly it reports, so two
runs with equal configs are the same experiment; its TOML form is stored in every run directory
and its hash names the default run directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import tomli_w

REWIND_POINTS = ("init",)
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """A bad config value or key; the message is one line naming the key and the fix."""


@dataclass(frozen=True)
class DataConfig:
    """Which slice of CIFAR-10 a study uses; `None` means the whole split (45k / 5k / 10k)."""

    train_size: int | None = None
    val_size: int | None = None
    test_size: int | None = None


@dataclass(frozen=True)
class TrainConfig:
    """One round of training, DESIGN §1: Keras' Adam defaults except the learning rate."""

    initial_epochs: int = 26
    epochs: int = 25
    batch_size: int = 60
    lr: float = 3e-4
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-7
    eval_batch_size: int = 500


@dataclass(frozen=True)
class PruneConfig:
    """What is pruned after each round and how much of the still-active weights goes."""

    criterion: str = "high-movement"
    fraction: float = 0.1
    rounds: int = 15


@dataclass(frozen=True)
class Config:
    """A whole study. `seed` alone determines θ0 and every epoch's data order."""

    name: str = "seed"
    model: str = "seed-cnn"
    seed: int = 0
    rewind: str = "init"
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)


PRESETS: dict[str, Config] = {
    # The seed study: 26 epochs dense, then 15 rounds × 25 epochs of high-movement pruning.
    "seed": Config(name="seed"),
    # A few minutes on a 2-core CPU: a demonstration of the mechanics, not a result. 300
    # training images overfit within a round (the validation loss bottoms out around epoch 11
    # of 16 and then climbs), so best != final and every round really prunes. Smaller batches
    # and a higher learning rate get there in fewer image passes than the seed's schedule.
    "quick": Config(
        name="quick",
        data=DataConfig(train_size=300, val_size=500, test_size=1000),
        train=TrainConfig(initial_epochs=16, epochs=16, batch_size=20, lr=1e-3),
        prune=PruneConfig(rounds=3),
    ),
}


def preset(name: str) -> Config:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


# ---------------------------------------------------------------- dict / TOML conversion


def to_dict(config: Config) -> dict[str, Any]:
    """Plain nested dict; `None` values are dropped because TOML has no null."""

    def strip(d: dict[str, Any]) -> dict[str, Any]:
        return {k: strip(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}

    return strip(dataclasses.asdict(config))


def to_toml(config: Config) -> str:
    return tomli_w.dumps(to_dict(config))


def config_hash(config: Config) -> str:
    """Short stable hash of what the study computes (device excluded: it does not change it)."""
    payload = to_dict(replace(config, device="auto"))
    return hashlib.sha256(tomli_w.dumps(payload).encode()).hexdigest()[:8]


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check (and, for CLI strings, parse) one value against its annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "all")):
            return None
        return _coerce(value, options[0], key)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - only the annotations above are used
        raise ConfigError(f"{key}: unsupported type {annotation}")
    name = getattr(annotation, "__name__", str(annotation))
    raise ConfigError(f"{key}: expected {name}, got {value!r}")


def _build(cls: type, data: dict[str, Any], prefix: str, base: Any) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a table, got {data!r}")
    hints = _field_types(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]!r}; known keys: {', '.join(sorted(names))}"
        )
    values = {}
    for f in fields(cls):
        current = getattr(base, f.name)
        if f.name not in data:
            values[f.name] = current
            continue
        key = prefix + f.name
        if dataclasses.is_dataclass(hints[f.name]):
            values[f.name] = _build(hints[f.name], data[f.name], key + ".", current)
        else:
            values[f.name] = _coerce(data[f.name], hints[f.name], key)
    return cls(**values)


def from_dict(data: dict[str, Any], base: Config | None = None) -> Config:
    """Overlay `data` on `base` (default: the seed preset) and validate the result."""
    config = _build(Config, data, "", base if base is not None else Config())
    validate(config)
    return config


def from_toml(text: str, base: Config | None = None, source: str = "config") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML ({exc})") from None
    return from_dict(data, base)


def load(path: str | Path, base: Config | None = None) -> Config:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    return from_toml(text, base, source=str(path))


def apply_overrides(config: Config, overrides: dict[str, str]) -> Config:
    """Apply dotted `key -> string value` overrides such as {'train.epochs': '3'}."""
    nested: dict[str, Any] = {}
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {dotted!r} conflicts with another override")
        node[parts[-1]] = value
    return from_dict(nested, config)


def dotted_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every settable key, for `--help` and for suggesting the fix to a typo."""
    hints = _field_types(cls)
    keys = []
    for f in fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += dotted_keys(hints[f.name], prefix + f.name + ".")
        else:
            keys.append(prefix + f.name)
    return keys


# ---------------------------------------------------------------- validation


def validate(config: Config) -> None:
    """Reject values that would run but mean nothing; registries are checked lazily."""
    from lth.models import MODELS
    from lth.pruning import CRITERIA

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    t, p, d = config.train, config.prune, config.data
    need(config.model in MODELS, f"model: unknown model {config.model!r}; choose one of: {', '.join(MODELS)}")
    need(p.criterion in CRITERIA, f"prune.criterion: unknown criterion {p.criterion!r}; choose one of: {', '.join(CRITERIA)}")
    need(0.0 < p.fraction < 1.0, f"prune.fraction: must be in (0, 1), got {p.fraction}")
    need(p.rounds >= 0, f"prune.rounds: must be >= 0, got {p.rounds}")
    need(t.initial_epochs >= 1, f"train.initial_epochs: must be >= 1, got {t.initial_epochs}")
    need(t.epochs >= 1, f"train.epochs: must be >= 1, got {t.epochs}")
    need(t.batch_size >= 1, f"train.batch_size: must be >= 1, got {t.batch_size}")
    need(t.eval_batch_size >= 1, f"train.eval_batch_size: must be >= 1, got {t.eval_batch_size}")
    need(t.lr > 0, f"train.lr: must be > 0, got {t.lr}")
    need(0 <= t.beta1 < 1 and 0 <= t.beta2 < 1, "train.beta1/beta2: must be in [0, 1)")
    need(t.eps > 0, f"train.eps: must be > 0, got {t.eps}")
    need(config.rewind in REWIND_POINTS, f"rewind: unknown rewind point {config.rewind!r}; choose one of: {', '.join(REWIND_POINTS)}")
    need(config.device in DEVICES or config.device.startswith("cuda:"), f"device: expected one of {', '.join(DEVICES)} or cuda:N, got {config.device!r}")
    need(config.seed >= 0, f"seed: must be >= 0, got {config.seed}")
    for key, size, limit in (("train_size", d.train_size, 45000), ("val_size", d.val_size, 5000), ("test_size", d.test_size, 10000)):
        need(size is None or 1 <= size <= limit, f"data.{key}: must be between 1 and {limit} (or omitted for all), got {size}")
    need(bool(config.name) and "/" not in config.name, f"name: must be a non-empty name without '/', got {config.name!r}")
