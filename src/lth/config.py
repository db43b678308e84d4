"""Typed, validated experiment configuration: frozen dataclasses, presets, TOML in and out.

A config describes a study fully, except where its data lives and how loudly it reports, so two
runs with equal `computed` configs are the same experiment. Imports nothing else from lth.
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

REWIND_POINTS = ("init", "epoch:K", "iter:K", "lr", "best", "final", "reinit")
DEVICES = ("auto", "cpu", "cuda")
ENGINES = ("auto", "eager", "graph")
PRECISIONS = ("fp32", "bf16")
OPTIMIZERS = ("adam", "sgd")
AUGMENTATIONS = ("none", "crop-flip")
LAYER_TYPES = ("conv", "dense", "output")
SCOPES = ("global", "layer")
# The names the registries below this module answer to (lth.models.MODELS, lth.pruning.CRITERIA,
# lth.energy.TRACKERS; a test keeps them equal), so that a config is validated here, once,
# without importing them.
MODELS = ("seed-cnn", "conv2", "conv4", "conv6", "resnet20", "vgg16", "lenet-300-100")
# lth.data.DATASETS' names and sizes (training images, test images, channels, side; a test
# keeps them equal), so that a data slice is checked here.
DATASET_SIZES = {"cifar10": (50_000, 10_000, 3, 32), "cifar100": (50_000, 10_000, 3, 32),
                 "mnist": (60_000, 10_000, 1, 28), "fashion-mnist": (60_000, 10_000, 1, 28)}
DATASETS = tuple(DATASET_SIZES)
LABELS = ("fine", "coarse")
NORMALIZATIONS = ("none", "dataset", "imagenet")
MIN_SIDE = {"vgg16": 32}  # models whose pooling needs at least this image side
CRITERIA = ("high-movement", "magnitude", "random", "low-movement", "movement-from-init", "magnitude-increase",
            "snip", "snip-iterative", "grasp", "synflow", "smart-ratio")
TRACKERS = ("codecarbon", "carbontracker", "off")
WANDB_MODES = ("off", "offline", "online")


class ConfigError(ValueError):
    """A bad config value or key; the message is one line naming the key and the fix."""


@dataclass(frozen=True)
class DataConfig:
    """Which data set a study uses, how it is split and which slice of each part; `None` means
    the whole part (CIFAR-10: 45k / 5k / 10k)."""

    dataset: str = "cifar10"
    """"cifar10", "cifar100", "mnist" or "fashion-mnist", each in its official layout under the data folder."""
    validation: int = 5000
    """Training images held out, the last ones, to validate (choose the best weights); 0: none, as open_lth (best = final)."""
    labels: str = "fine"
    """CIFAR-100's label set: "fine" (100 classes) or "coarse" (20 superclasses); the other data sets have one."""
    normalize: str = "none"
    """Input scaling after /255: "none", "dataset" (its training set's per-channel mean and std) or "imagenet" (open_lth's for CIFAR)."""
    train_size: int | None = None
    """Training images, the first of those not held out (omitted: all)."""
    val_size: int | None = None
    """Validation images, the first of the held-out ones (omitted: all)."""
    test_size: int | None = None
    """Test images, the first of the test set (omitted: all)."""

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the data set's images: what every model is built for."""
        _, _, channels, side = DATASET_SIZES[self.dataset]
        return channels, side, side

    @property
    def classes(self) -> int:
        """How many classes the labels name: the model's output width."""
        return 20 if self.labels == "coarse" else 100 if self.dataset == "cifar100" else 10

    @property
    def train_images(self) -> int:
        """How many images a round's epoch passes over."""
        return self.train_size or DATASET_SIZES[self.dataset][0] - self.validation


def _length(text: str) -> tuple[int, str]:
    """(count, unit) of a length such as "80ep" or "500it" (a bare number counts iterations)."""
    body, unit = (text.strip()[:-2], text.strip()[-2:]) if text.strip()[-2:] in ("ep", "it") else (text.strip(), "it")
    if not (body.isascii() and body.isdigit()):
        raise ValueError(f"not a length: {text!r}")
    return int(body), unit


def iterations(length: str, steps_per_epoch: int) -> int:
    """A length with its unit ("80ep", "500it"; a bare number counts iterations) in iterations."""
    count, unit = _length(length)
    return count * steps_per_epoch if unit == "ep" else count


def _is_length(text: str) -> bool:
    try:
        _length(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class TrainConfig:
    """One round of training. The defaults are the seed's (DESIGN §1: Keras' Adam defaults except
    the learning rate, constant); the `resnet20`/`vgg16` presets set open_lth's SGD recipe."""

    initial_epochs: int = 26
    """Epochs of round 0, the dense network."""
    epochs: int = 25
    """Epochs of every later round."""
    steps: int | None = None
    """Iterations in every round, round 0 included (Frankle & Carbin's way); replaces the epochs."""
    eval_every: str = "epoch"
    """Validate every epoch, or every N iterations ("100" as in F&C); the best weights follow this cadence."""
    batch_size: int = 60
    """Training batch size."""
    lr: float = 3e-4
    """Learning rate (the peak rate when there is a schedule)."""
    beta1: float = 0.9
    """Adam's first-moment decay."""
    beta2: float = 0.999
    """Adam's second-moment decay."""
    eps: float = 1e-7
    """Adam's epsilon: Keras' default, not PyTorch's 1e-8."""
    optimizer: str = "adam"
    """"adam" or "sgd" (beta1/beta2/eps are Adam's; momentum/nesterov SGD's); a fresh one each round."""
    momentum: float = 0.0
    """SGD's momentum."""
    nesterov: bool = False
    """Nesterov momentum (SGD with momentum only)."""
    weight_decay: float = 0.0
    """L2 added to the gradient, as PyTorch's SGD/Adam `weight_decay` (and open_lth) do."""
    milestones: str = ""
    """Learning rate ×gamma at each of these lengths, e.g. "80ep,120ep" (open_lth) or "32000it"; a pure function of the iteration (lth.schedule)."""
    gamma: float = 0.1
    """The factor applied at each milestone."""
    warmup: str = "0it"
    """Linear warm-up to `lr` over this length ("1ep", "500it"); iteration i (from 0) trains at lr·(i+1)/W."""
    warmup_from_zero: bool = False
    """Warm-up as open_lth computes it: iteration i trains at lr·i/W, so the first at 0."""
    augment: str = "none"
    """"crop-flip": a random 32×32 crop of the 4-pixel zero-padded image, then a coin-flip mirror (seeded, on the device)."""
    eval_batch_size: int = 500
    """Validation and test batch size; does not change the results' meaning."""
    tf32: bool = True
    """TF32 matmuls on CUDA, as TensorFlow (the seed's Keras) defaults on Ampere and newer; no effect on a CPU."""
    engine: str = "auto"
    """How iterations execute, not what they compute: CUDA graphs on a GPU and eager on a CPU, or "eager", "graph" (CUDA only)."""
    channels_last: bool | None = None
    """CPU only: NHWC convolutions; unset ("auto"): measured on the machine once and cached (lth.layout)."""
    precision: str = "fp32"
    """"bf16": bf16 autocast of the forward pass and loss, fp32 weights, optimizer state and masks; fast only on CPUs with AMX or AVX512-BF16, and on GPUs."""

    def round_length(self, round_index: int, steps_per_epoch: int) -> int:
        """Iterations in a round: `steps` if set, else the round's epochs × iterations per epoch."""
        if self.steps is not None:
            return self.steps
        return (self.initial_epochs if round_index == 0 else self.epochs) * steps_per_epoch

    def eval_interval(self, steps_per_epoch: int) -> int:
        """Iterations between evaluations ("epoch": one epoch)."""
        return steps_per_epoch if self.eval_every == "epoch" else int(self.eval_every)


@dataclass(frozen=True)
class PruneConfig:
    """What is pruned after each round and how much of the still-active weights goes."""

    criterion: str = "high-movement"
    """Which weights go: the score each prunable weight gets after a round (see the criteria page)."""
    fraction: float = 0.1
    """Share of the still-active weights pruned per round (scope "global")."""
    rounds: int = 15
    """Pruning rounds after round 0; 0 trains the dense network only."""
    scope: str = "global"
    """"global": one ranking over all prunable layers; "layer": each layer prunes its own rate."""
    include_output: bool = False
    """Prune the output layer too: in the global ranking, or at `fraction` in scope "layer" unless `rates.output` says otherwise (open_lth's ResNet-20 does)."""
    rates: dict[str, float] = field(default_factory=dict)
    """Scope "layer": a rate per layer type {conv, dense, output}; the output layer is pruned only if given a rate."""
    layer_rates: dict[str, float] = field(default_factory=dict)
    """Scope "layer": a rate per tensor name ("features.0.weight"), which wins over `rates`."""
    match: str | None = None
    """Random only: a run whose per-layer kept counts this run copies round by round ("@variant" in a comparison)."""
    score_images_per_class: int = 10
    """SNIP and GraSP: training images of each class in the seeded sample they score θ0 on."""
    shuffle: bool = False
    """Sanity check: after each round's mask is made, move each tensor's kept weights to random positions within it (seeded); counts per tensor stay."""
    invert: bool = False
    """Sanity check: prune the other end of the criterion's ranking (keep what it would prune)."""


@dataclass(frozen=True)
class EnergyConfig:
    """Per-round energy and CO2: recording only, so outside the hash."""

    tracker: str = "codecarbon"
    """Which meter records each round's energy; "off" records none."""
    country: str = "CAN"
    """ISO 3166-1 alpha-3 code of the grid whose carbon intensity converts kWh to CO2."""


@dataclass(frozen=True)
class TrackConfig:
    """Experiment trackers that mirror what lth writes (lth.track): recording only, so outside the
    hash; lth's own files stay the record, and a tracker that fails never stops a study."""

    tensorboard: bool = False
    """Write TensorBoard event files, into the run directory's `tensorboard/` unless `tensorboard_dir` says where."""
    tensorboard_dir: str = ""
    """A folder for the event files instead: each run writes to `<folder>/<run name>` (needs `tensorboard = true`)."""
    mlflow: str = ""
    """An MLflow tracking URI, e.g. "sqlite:///mlflow.db" (a local file, no server) or "http://host:5000"; "" logs nothing."""
    wandb: str = "off"
    """Weights & Biases: "offline" (files in the run directory's `wandb/`, for a later `wandb sync`), "online" or "off"."""
    project: str = "lth"
    """The W&B project, and the MLflow experiment of a run outside a comparison."""
    entity: str = ""
    """The W&B entity (user or team); "" is the account's default."""
    group: str = ""
    """Groups runs (W&B group, MLflow experiment); `lth compare` sets it to the study's name, `--replicates` to their folder's."""
    name: str = ""
    """The run's name in the trackers; "" is the run directory's name (a comparison's cells: `<variant>/seed-<s>`)."""

    @property
    def enabled(self) -> bool:
        """Whether any tracker is asked for: only then does lth import one."""
        return self.tensorboard or bool(self.mlflow) or self.wandb != "off"


@dataclass(frozen=True)
class Config:
    """A whole study. `seed` alone determines θ0 and every epoch's data order. `rewind`: where
    survivors restart each round: `init` (θ0), `epoch:K` (after epoch K of round 0), `best` /
    `final` (the previous round's: fine-tuning) or `reinit` (fresh weights: the control)."""

    name: str = "seed"
    """Names the default run directory (runs/<name>-<hash>)."""
    model: str = "seed-cnn"
    """The network (see the model table)."""
    seed: int = 0
    """The one seed θ0, every epoch's data order and every random choice derive from."""
    rewind: str = "init"
    """Where survivors restart each round: "init" (θ0), "epoch:K", "iter:K", "lr", "best", "final" or "reinit" (K >= 1)."""
    device: str = "auto"
    """"auto" (cuda if available, else cpu), "cpu", "cuda" or "cuda:N"."""
    data: DataConfig = field(default_factory=DataConfig)
    """The data slice."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """One round of training."""
    prune: PruneConfig = field(default_factory=PruneConfig)
    """The criterion and the pruning schedule."""
    energy: EnergyConfig = field(default_factory=EnergyConfig)
    """Energy recording."""
    track: TrackConfig = field(default_factory=TrackConfig)
    """Experiment trackers (TensorBoard, MLflow, Weights & Biases)."""

    def __post_init__(self) -> None:
        validate(self)  # the config boundary: no Config exists that would run but mean nothing

    @property
    def rewind_epoch(self) -> int | None:
        """K of `rewind = "epoch:K"` (late rewinding of the weights), else None."""
        return int(self.rewind[6:]) if self.rewind.startswith("epoch:") else None

    @property
    def rewind_step(self) -> int | None:
        """K of `rewind = "iter:K"`: weights, optimizer state and schedule rewound to iteration K of
        round 0; each later round trains from K to its end."""
        return int(self.rewind[5:]) if self.rewind.startswith("iter:") else None


@dataclass(frozen=True)
class Bounds:
    """The interval a numeric key must lie in. Validation and the generated reference both read
    `BOUNDS`, so what the docs say a key accepts is what `validate` enforces."""

    low: float
    high: float | None = None  # None: no upper bound
    low_open: bool = False
    high_open: bool = False
    unset: str = ""  # what leaving an optional key unset means, e.g. "all"

    def holds(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def text(self) -> str:
        if self.high is None:
            interval = f"{'>' if self.low_open else '>='} {self.low}"
        elif not (self.low_open or self.high_open):
            interval = f"between {self.low} and {self.high}"
        else:
            interval = f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        return interval + (f" (or omitted {self.unset})" if self.unset else "")


# Bounds above too: a config may come from anyone, and no study needs more than these.
BOUNDS: dict[str, Bounds] = {
    "seed": Bounds(0, 2**62),
    "data.validation": Bounds(0, 59_999), "data.train_size": Bounds(1, 60_000, unset="for all"),
    "data.val_size": Bounds(1, 59_999, unset="for all"), "data.test_size": Bounds(1, 10_000, unset="for all"),
    "train.initial_epochs": Bounds(1, 100_000), "train.epochs": Bounds(1, 100_000), "train.steps": Bounds(1, 10**9, unset="to count epochs"),
    "train.batch_size": Bounds(1, 50_000), "train.eval_batch_size": Bounds(1, 100_000),
    "train.lr": Bounds(0, low_open=True), "train.eps": Bounds(0, low_open=True),
    "train.beta1": Bounds(0, 1, high_open=True), "train.beta2": Bounds(0, 1, high_open=True),
    "train.momentum": Bounds(0, 1, high_open=True), "train.weight_decay": Bounds(0, 1, high_open=True),
    "train.gamma": Bounds(0, 1, low_open=True),
    "prune.fraction": Bounds(0, 1, low_open=True, high_open=True), "prune.rounds": Bounds(0, 1000),
    "prune.score_images_per_class": Bounds(1, 1000),
    "prune.rates": Bounds(0, 1, high_open=True), "prune.layer_rates": Bounds(0, 1, high_open=True),  # each entry
}
# Keys that take one of a fixed set of names (rewind and device have forms with a number; see validate).
CHOICES: dict[str, tuple[str, ...]] = {
    "model": MODELS, "data.dataset": DATASETS, "data.labels": LABELS, "data.normalize": NORMALIZATIONS, "prune.criterion": CRITERIA, "prune.scope": SCOPES, "train.optimizer": OPTIMIZERS,
    "train.augment": AUGMENTATIONS, "train.engine": ENGINES, "train.precision": PRECISIONS, "energy.tracker": TRACKERS,
    "track.wandb": WANDB_MODES,
}


def value_at(config: Config, key: str) -> Any:
    """The value of a dotted key such as "train.lr"."""
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def validate(config: Config) -> None:
    """Reject values that would run but mean nothing, each with one line naming the key."""

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    t, p, d = config.train, config.prune, config.data
    for key, choices in CHOICES.items():
        value = value_at(config, key)
        need(value in choices, f"{key}: unknown {key.rsplit('.', 1)[-1]} {value!r}; choose one of: {', '.join(choices)}")
    for key, bounds in BOUNDS.items():
        value = value_at(config, key)
        entries = [(f"{key}.{k}", v) for k, v in value.items()] if isinstance(value, dict) else [(key, value)]
        for name, number in entries:
            need(number is None or bounds.holds(number), f"{name}: must be {bounds.text()}, got {number}")
    point, _, k_text = config.rewind.partition(":")
    need(
        (config.rewind in REWIND_POINTS and ":" not in config.rewind) or (point in ("epoch", "iter") and k_text.isdigit() and 1 <= int(k_text) <= 10**9),
        f"rewind: unknown rewind point {config.rewind!r}; choose one of: {', '.join(REWIND_POINTS)} (K >= 1)",
    )
    train_total, test_total, channels, side = DATASET_SIZES[d.dataset]
    held = f"{d.dataset} holds {train_total:,} training images, {d.validation:,} of them held out to validate"
    need(d.validation < train_total, f"data.validation: {d.validation} leaves nothing to train on; {d.dataset} holds {train_total:,} training images")
    need(d.train_size is None or d.train_size <= train_total - d.validation, f"data.train_size: {d.train_size} is more than there are; {held}")
    need(d.val_size is None or d.validation > 0, "data.val_size: there is no validation split (data.validation is 0); leave val_size unset")
    need(d.val_size is None or d.val_size <= d.validation, f"data.val_size: {d.val_size} is more than there are; {held}")
    need(d.test_size is None or d.test_size <= test_total, f"data.test_size: {d.test_size} is more than there are; {d.dataset} holds {test_total:,} test images")
    need(d.labels == "fine" or d.dataset == "cifar100", f"data.labels: only cifar100 has coarse labels (dataset is {d.dataset!r})")
    need(d.normalize != "imagenet" or channels == 3, f"data.normalize: \"imagenet\" is for RGB images; {d.dataset} is grey, use \"dataset\"")
    need(side >= MIN_SIDE.get(config.model, 0), f"model: {config.model} needs images of at least {MIN_SIDE.get(config.model)}×{MIN_SIDE.get(config.model)}; "
         f"{d.dataset}'s are {side}×{side}, choose another model")
    per_epoch = -(-d.train_images // t.batch_size)
    if (k := config.rewind_epoch) is not None:  # the late-rewinding point must lie inside round 0
        last = f"iteration ({t.steps})" if t.steps is not None else f"epoch ({t.initial_epochs})"
        need(k * per_epoch <= t.round_length(0, per_epoch), f"rewind: epoch:{k} is after round 0's last {last}")
    if (k := config.rewind_step) is not None:  # inside round 0, and before the end of every later round
        need(k <= t.round_length(0, per_epoch), f"rewind: iter:{k} is after round 0's last iteration ({t.round_length(0, per_epoch)})")
        need(p.rounds == 0 or k < t.round_length(1, per_epoch),
             f"rewind: iter:{k} leaves nothing to retrain: later rounds are {t.round_length(1, per_epoch)} iterations long; choose a smaller K")
    need(not t.nesterov or (t.optimizer == "sgd" and t.momentum > 0), "train.nesterov: needs train.optimizer = \"sgd\" and train.momentum > 0")
    need(t.momentum == 0 or t.optimizer == "sgd", f"train.momentum: SGD's; Adam's are train.beta1/beta2 (optimizer is {t.optimizer!r})")
    milestones = [m for m in t.milestones.split(",") if m.strip()]
    need(len(milestones) <= 100 and all(_is_length(m) for m in milestones),
         f"train.milestones: comma-separated lengths such as \"80ep,120ep\" or \"32000it\" (at most 100), got {t.milestones!r}")
    need(_is_length(t.warmup), f"train.warmup: a length such as \"5ep\", \"500it\" or \"0it\", got {t.warmup!r}")
    if milestones:
        at = [iterations(m, 1000) for m in milestones], [iterations(m, 1) for m in milestones]  # increasing in any epoch length
        need(all(a < b for seq in at for a, b in zip(seq, seq[1:])) and all(x >= 1 for x in at[0]),
             f"train.milestones: must be >= 1 and increasing in one unit, got {t.milestones!r}")
    need(t.eval_every == "epoch" or (t.eval_every.isdigit() and int(t.eval_every) >= 1), f"train.eval_every: 'epoch' or a number of iterations >= 1, got {t.eval_every!r}")
    bad_type = sorted(set(p.rates) - set(LAYER_TYPES))
    need(not bad_type, f"prune.rates: unknown layer type {bad_type[0] if bad_type else ''!r}; use {', '.join(LAYER_TYPES)}")
    need(p.scope == "layer" or not (p.rates or p.layer_rates), "prune.rates/layer_rates: per-layer rates need prune.scope = \"layer\"")
    need(p.match is None or p.criterion == "random", f"prune.match: only the random criterion copies another run's densities (criterion is {p.criterion!r})")
    need(config.device in DEVICES or config.device.startswith("cuda:"), f"device: expected one of {', '.join(DEVICES)} or cuda:N, got {config.device!r}")
    e = config.energy
    need(len(e.country) == 3 and e.country.isalpha(), f"energy.country: an ISO 3166-1 alpha-3 code such as CAN or USA, got {e.country!r}")
    need(0 < len(config.name) <= 100 and config.name not in (".", "..") and not set("/\\\0") & set(config.name),
         f"name: must be 1-100 characters without '/', '\\' or NUL, got {config.name[:100]!r}")
    tr = config.track
    need(not tr.tensorboard_dir or tr.tensorboard, "track.tensorboard_dir: set track.tensorboard = true too, or leave the folder unset")
    need(not tr.mlflow or ("://" in tr.mlflow or tr.mlflow.startswith(("file:", "databricks"))),
         f"track.mlflow: a tracking URI such as sqlite:///mlflow.db or http://host:5000, got {tr.mlflow[:200]!r}")
    for key in ("tensorboard_dir", "mlflow", "project", "entity", "group", "name"):
        text = getattr(tr, key)
        need(len(text) <= 4096 and "\0" not in text, f"track.{key}: at most 4096 characters without NUL")
    need(bool(tr.project), "track.project: must not be empty; the default is \"lth\"")
    need(len(p.layer_rates) <= 1000, f"prune.layer_rates: at most 1000 entries, got {len(p.layer_rates)}")
    # A path key: resolved and checked to be a run when the study opens (lth.study); here only its form.
    need(p.match is None or (0 < len(p.match) <= 4096 and "\0" not in p.match), "prune.match: must be a path of 1-4096 characters without NUL")


def _frankle_carbin(model: str, lr: float, steps: int, conv_rate: float, rounds: int) -> Config:
    """Frankle & Carbin (ICLR 2019) Conv-2/4/6: per-layer magnitude pruning (conv, dense 20%, output
    10%), rewind to θ0, Adam, batch 60, validation every 100 iterations, to about 2% remaining."""
    return Config(name=f"fc-{model}", model=model, train=TrainConfig(steps=steps, eval_every="100", batch_size=60, lr=lr),
                  prune=PruneConfig(criterion="magnitude", scope="layer", rounds=rounds,
                                    rates={"conv": conv_rate, "dense": 0.2, "output": 0.1}))


def _open_lth(model: str, quick: bool = False, dataset: str = "cifar10") -> Config:
    """open_lth's CIFAR ResNet-20 / VGG-16 defaults (`quick`: the same optimiser and schedule
    scaled down, with lth's validation split)."""
    recipe = dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4, gamma=0.1, augment="crop-flip", eval_batch_size=1000)
    if not quick:  # open_lth's defaults exactly: see the docs' table of what still differs
        train = TrainConfig(initial_epochs=160, epochs=160, batch_size=128, milestones="80ep,120ep", warmup_from_zero=True, **recipe)
        data = DataConfig(dataset=dataset, validation=0, normalize="imagenet")  # all 50,000 training images; best = final
        prune = PruneConfig(criterion="magnitude", fraction=0.2, rounds=15, include_output=model == "resnet20")  # VGG-16 ignores fc.weight
        return Config(name=model if dataset == "cifar10" else f"{model}-{dataset}", model=model, data=data, train=train, prune=prune)
    if model == "resnet20":  # about 30 s a round on a 2-core CPU
        size, train = 2000, TrainConfig(initial_epochs=8, epochs=8, batch_size=64, milestones="4ep,6ep", warmup="1ep", **recipe)
    else:  # VGG-16 is 12× ResNet-20's compute a image
        size, train = 400, TrainConfig(initial_epochs=6, epochs=6, batch_size=50, milestones="3ep,5ep", warmup="1ep", **recipe)
    return Config(name=f"{model}-quick", model=model, data=DataConfig(train_size=size, val_size=500, test_size=1000),
                  train=train, prune=PruneConfig(criterion="magnitude", fraction=0.2, rounds=2))


def _lenet(quick: bool = False) -> Config:
    """Frankle & Carbin (ICLR 2019) LeNet-300-100 on MNIST: Adam 1.2e-3, batch 60, 50,000
    iterations a round, validation on the last 5,000 training images every 100 iterations,
    magnitude pruning per layer (hidden 20%, output 10%), rewind to θ0, 18 rounds (1.9% left)."""
    rates = {"dense": 0.2, "output": 0.1}
    if quick:  # the protocol at a tenth of the iterations and 3 rounds (49% left)
        return Config(name="lenet-quick", model="lenet-300-100", data=DataConfig(dataset="mnist"),
                      train=TrainConfig(steps=5_000, eval_every="500", batch_size=60, lr=1.2e-3),
                      prune=PruneConfig(criterion="magnitude", scope="layer", rounds=3, rates=rates))
    return Config(name="lenet", model="lenet-300-100", data=DataConfig(dataset="mnist"),
                  train=TrainConfig(steps=50_000, eval_every="100", batch_size=60, lr=1.2e-3),
                  prune=PruneConfig(criterion="magnitude", scope="layer", rounds=18, rates=rates))


PRESETS: dict[str, Config] = {
    # The seed study: 26 epochs dense, then 15 rounds × 25 epochs of high-movement pruning.
    "seed": Config(name="seed"),
    # A few minutes on a 2-core CPU: a demonstration of the mechanics, not a result. 300
    # training images overfit within a round (the validation loss bottoms out around epoch 11
    # of 16 and then climbs), so best != final and every round really prunes.
    "quick": Config(name="quick", data=DataConfig(train_size=300, val_size=500, test_size=1000),
                    train=TrainConfig(initial_epochs=16, epochs=16, batch_size=20, lr=1e-3), prune=PruneConfig(rounds=3)),
    # The seed's model and schedule with one control swapped in.
    "seed-magnitude": Config(name="seed-magnitude", prune=PruneConfig(criterion="magnitude")),
    "seed-random": Config(name="seed-random", prune=PruneConfig(criterion="random")),
    "seed-reinit": Config(name="seed-reinit", rewind="reinit"),
    "fc-conv2": _frankle_carbin("conv2", 2e-4, 20_000, 0.10, rounds=18),  # 1.9% remaining
    "fc-conv4": _frankle_carbin("conv4", 3e-4, 25_000, 0.10, rounds=21),  # 2.0%
    "fc-conv6": _frankle_carbin("conv6", 3e-4, 30_000, 0.15, rounds=21),  # 2.1%
    # open_lth's CIFAR defaults (cifar_resnet_20, cifar_vgg_16): all 50,000 training images (no
    # validation split), ImageNet normalisation, SGD 0.1, momentum 0.9, weight decay 1e-4, batch
    # 128, 160 epochs with ×0.1 at 80 and 120, crop + flip, 20% global magnitude pruning per round
    # (ResNet-20's output layer included, VGG-16's not), rewind to θ0.
    "resnet20": _open_lth("resnet20"),
    "vgg16": _open_lth("vgg16"),
    "resnet20-cifar100": _open_lth("resnet20", dataset="cifar100"),
    "vgg16-cifar100": _open_lth("vgg16", dataset="cifar100"),
    # Frankle & Carbin's LeNet-300-100 on MNIST (--data.dataset fashion-mnist: the same on Fashion-MNIST).
    "lenet": _lenet(),
    "lenet-quick": _lenet(quick=True),
    # Their recipe on a CPU's budget (a demonstration of the mechanics in minutes, not a result):
    # 2,000 (ResNet-20) / 400 (VGG-16) training images, the schedule scaled to the shorter rounds.
    "resnet20-quick": _open_lth("resnet20", quick=True),
    "vgg16-quick": _open_lth("vgg16", quick=True),
}


# What each preset is for, one line each: the generated presets reference prints it beside the
# preset's values (a test keeps the keys equal to PRESETS').
PRESET_NOTES: dict[str, str] = {
    "seed": "the seed study (DESIGN §1): 26 epochs dense, then 15 rounds × 25 epochs of high-movement pruning",
    "quick": "the mechanics in a few minutes on a 2-core CPU; not a result (the validation loss bottoms out mid-round, so every round prunes)",
    "seed-magnitude": "the seed with magnitude pruning (global 10%, keep the largest |w_final|)",
    "seed-random": "the seed with random pruning (global 10%)",
    "seed-reinit": "the seed with random re-initialisation instead of rewinding to θ0",
    "fc-conv2": "Frankle & Carbin's Conv-2 (per-layer magnitude, 18 rounds → 1.9%)",
    "fc-conv4": "Frankle & Carbin's Conv-4 (per-layer magnitude, 21 rounds → 2.0%)",
    "fc-conv6": "Frankle & Carbin's Conv-6 (per-layer magnitude, 21 rounds → 2.1%)",
    "resnet20": "open_lth's cifar_resnet_20 defaults: 50,000 training images and no validation split (best = final), ImageNet normalisation, fc.weight pruned",
    "vgg16": "open_lth's cifar_vgg_16 defaults: 50,000 training images and no validation split (best = final), ImageNet normalisation, fc.weight kept",
    "resnet20-cifar100": "resnet20 on CIFAR-100 (fine labels, 100 classes)",
    "vgg16-cifar100": "vgg16 on CIFAR-100 (fine labels, 100 classes)",
    "lenet": "Frankle & Carbin's LeNet-300-100 on MNIST (per-layer magnitude, hidden 20%, output 10%, 18 rounds → 1.9%)",
    "lenet-quick": "lenet's protocol in a few minutes on a 2-core CPU (5,000 iterations a round, 3 rounds); not a result",
    "resnet20-quick": "resnet20's recipe scaled to minutes on a 2-core CPU; not a result",
    "vgg16-quick": "vgg16's recipe scaled to minutes on a 2-core CPU; not a result",
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


# Where and how a study executes (device, engine, memory layout) and what it records (energy):
# not what it computes, so `computed` sets them to these fixed values and a run may be resumed
# on another device or engine. The reference marks these keys "outside the hash".
HASH_NEUTRAL: dict[str, Any] = {"device": "auto", "train.engine": "auto", "train.channels_last": False, "energy": EnergyConfig(),
                                "track": TrackConfig()}
# Hash-neutral tables added after runs existed: left out of `computed` altogether, so hashes stay.
LATER_TABLES = ("track",)


def _with(node: Any, key: str, value: Any) -> Any:
    """`node` with the dotted `key` replaced by `value`."""
    head, _, rest = key.partition(".")
    return replace(node, **{head: _with(getattr(node, head), rest, value) if rest else value})


def computed(config: Config) -> dict[str, Any]:
    """What decides a study's results: all but `HASH_NEUTRAL`. Its hash names the default run directory."""
    for key, value in HASH_NEUTRAL.items():
        config = _with(config, key, value)
    payload = to_dict(config)
    for table in LATER_TABLES:
        payload.pop(table, None)
    for key, default in LATER_KEYS.items():  # at their defaults, what every run did before they existed: hashes stay
        table, _, name = key.partition(".")
        if payload[table].get(name, default) == default:
            payload[table].pop(name, None)
    return payload


# Keys added after runs existed, with the default that means what those runs did.
LATER_KEYS = {**{f"train.{k}": v for k, v in {"precision": "fp32", "optimizer": "adam", "momentum": 0.0, "nesterov": False, "weight_decay": 0.0,
                                               "milestones": "", "gamma": 0.1, "warmup": "0it", "augment": "none", "warmup_from_zero": False}.items()},
              "data.dataset": "cifar10", "data.validation": 5000, "data.labels": "fine", "data.normalize": "none", "prune.include_output": False,
              "prune.score_images_per_class": 10, "prune.shuffle": False, "prune.invert": False}


def config_hash(config: Config) -> str:
    return hashlib.sha256(tomli_w.dumps(computed(config)).encode()).hexdigest()[:8]


_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
_FROM_TEXT = {bool: lambda text: _BOOLS[text.lower()], int: int, float: float}


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check one value against its annotation; a string from the command line is parsed."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "all", "auto")):
            return None
        return _coerce(value, next(a for a in typing.get_args(annotation) if a is not type(None)), key)
    if origin is dict:
        if isinstance(value, str):  # from the command line or a study's overrides: an inline TOML table, "{dense = 0.2}" or "{}"
            try:
                value = tomllib.loads(f"value = {value}")["value"]
            except tomllib.TOMLDecodeError:
                pass  # reported below with the value as given
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table like {{conv = 0.1}}, got {value!r}")
        return {str(k): _coerce(v, typing.get_args(annotation)[1], f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, str) and annotation in _FROM_TEXT:
        try:
            value = _FROM_TEXT[annotation](value)
        except (KeyError, ValueError):
            pass  # reported below with the value as given
    if isinstance(value, int) and not isinstance(value, bool) and annotation in (float, str):
        return annotation(value)  # 3 for a float; eval_every = 100 in TOML
    if type(value) is annotation:
        return value
    raise ConfigError(f"{key}: expected {annotation.__name__}, got {value!r}")


def _build(cls: type, data: dict[str, Any], prefix: str, base: Any) -> Any:
    """`base` with the entries of `data` (checked, nested tables recursively) replaced."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a table, got {data!r}")
    hints, names = typing.get_type_hints(cls), [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]!r}; known keys: {', '.join(sorted(names))}")
    values = {}
    for name in names:
        value, hint = data.get(name), hints[name]
        if name not in data:
            values[name] = getattr(base, name)
        elif dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, f"{prefix}{name}.", getattr(base, name))
        else:
            values[name] = _coerce(value, hint, prefix + name)
    return cls(**values)


def from_dict(data: dict[str, Any], base: Config | None = None) -> Config:
    """Overlay `data` on `base` (default: the seed preset); the result validates itself."""
    return _build(Config, data, "", base if base is not None else Config())


def from_toml(text: str, base: Config | None = None, source: str = "config") -> Config:
    try:
        return from_dict(tomllib.loads(text), base)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML ({exc})") from None


def load(path: str | Path, base: Config | None = None) -> Config:
    try:
        if Path(path).stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES // 1024} KiB; that is not an lth config")
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason}); that is not an lth config") from None
    return from_toml(text, base, source=str(path))


MAX_CONFIG_BYTES = 1 << 20
TABLES = ("prune.rates", "prune.layer_rates")  # their entries are set one by one: --prune.rates.conv 0.1


def apply_overrides(config: Config, overrides: dict[str, str]) -> Config:
    """Dotted `key -> value` overrides such as {'train.epochs': '3'}; an entry of a table
    merges into the table (tensor names hold dots, so they are not split)."""
    nested: dict[str, Any] = {}
    for dotted, value in overrides.items():
        table = next((t for t in TABLES if dotted.startswith(t + ".")), None)
        parts = [*table.split("."), dotted[len(table) + 1:]] if table else dotted.split(".")
        node = nested
        for depth, part in enumerate(parts[:-1]):
            if table and depth == 1 and part not in node:
                node[part] = dict(getattr(config.prune, part))
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {dotted!r} conflicts with another override")
        node[parts[-1]] = value
    return from_dict(nested, config)
