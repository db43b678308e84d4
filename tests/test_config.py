import dataclasses

import pytest

from lth import config as cfgmod
from lth.config import Config, ConfigError


def test_seed_preset_is_the_seed_protocol():
    c = cfgmod.preset("seed")
    assert (c.model, c.rewind, c.prune.criterion, c.prune.fraction, c.prune.rounds) == ("seed-cnn", "init", "high-movement", 0.1, 15)
    assert (c.train.initial_epochs, c.train.epochs, c.train.batch_size, c.train.lr, c.train.eps) == (26, 25, 60, 3e-4, 1e-7)
    assert (c.train.beta1, c.train.beta2) == (0.9, 0.999)
    assert c.data.train_size is None and c.data.val_size is None


def test_quick_preset_prunes_at_least_three_rounds():
    assert cfgmod.preset("quick").prune.rounds >= 3


@pytest.mark.parametrize("name", list(cfgmod.PRESETS))
def test_toml_round_trip(name):
    c = cfgmod.preset(name)
    assert cfgmod.from_toml(cfgmod.to_toml(c)) == c


def test_overrides_and_hash():
    c = cfgmod.apply_overrides(cfgmod.preset("seed"), {"train.epochs": "3", "prune.fraction": "0.2", "data.train_size": "100"})
    assert c.train.epochs == 3 and c.prune.fraction == 0.2 and c.data.train_size == 100
    assert cfgmod.config_hash(c) != cfgmod.config_hash(cfgmod.preset("seed"))
    assert cfgmod.config_hash(c) == cfgmod.config_hash(cfgmod.from_toml(cfgmod.to_toml(c)))
    assert cfgmod.config_hash(c) == cfgmod.config_hash(cfgmod.apply_overrides(c, {"device": "cpu"}))


@pytest.mark.parametrize(
    "data, match",
    [
        ({"train": {"epoch": 3}}, "unknown config key train.'epoch'"),
        ({"bogus": 1}, "unknown config key 'bogus'"),
        ({"train": {"epochs": "three"}}, "train.epochs: expected int"),
        ({"train": {"epochs": 2.5}}, "train.epochs: expected int"),
        ({"train": {"epochs": 0}}, "train.epochs: must be between 1 and 100000"),
        ({"train": {"initial_epochs": 0}}, "train.initial_epochs: must be between 1 and 100000"),
        ({"prune": {"fraction": 0.0}}, r"prune.fraction: must be in \(0, 1\)"),
        ({"prune": {"fraction": 1.0}}, r"prune.fraction: must be in \(0, 1\)"),
        ({"prune": {"criterion": "biggest"}}, "unknown criterion 'biggest'"),
        ({"model": "resnet"}, "unknown model"),
        ({"rewind": "sometime"}, "unknown rewind point"),
        ({"data": {"val_size": 6000}}, "data.val_size"),
        ({"train": 3}, "train: expected a table"),
        ({"prune": {"rates": "dense = 0.2"}}, "prune.rates: expected a table like"),
    ],
)
def test_bad_configs_raise_one_line_errors(data, match):
    with pytest.raises(ConfigError, match=match) as info:
        cfgmod.from_dict(data)
    assert "\n" not in str(info.value)


def test_a_table_key_takes_an_inline_table_from_the_command_line():
    """`--prune.rates "{}"` turns a per-layer preset (lenet) into one global ranking; a table in
    inline TOML sets rates as a config file would."""
    global_lenet = cfgmod.apply_overrides(cfgmod.preset("lenet"), {"prune.scope": "global", "prune.rates": "{}"})
    assert global_lenet.prune.rates == {} and global_lenet.prune.scope == "global"
    assert cfgmod.apply_overrides(cfgmod.preset("lenet"), {"prune.rates": "{dense = 0.3, output = 0.1}"}).prune.rates == {"dense": 0.3, "output": 0.1}


def test_invalid_toml_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("train = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        cfgmod.load(bad)
    with pytest.raises(ConfigError, match="cannot read config file"):
        cfgmod.load(tmp_path / "missing.toml")


def test_config_is_frozen():
    with pytest.raises(Exception):
        Config().seed = 3  # type: ignore[misc]


def _remaining_after(config: cfgmod.Config) -> float:
    """Fraction of all weights left after the preset's rounds, from the F&C per-layer rates."""
    from lth.models import build_model
    from lth.pruning import prune_count
    from lth.study import pruning_plan

    model = build_model(config.model, 0)
    names, rates = pruning_plan(config, model)
    params = dict(model.named_parameters())
    kept = {n: params[n].numel() for n in names}
    for _ in range(config.prune.rounds):
        kept = {n: k - prune_count(k, rates[n]) for n, k in kept.items()}
    return sum(kept.values()) / sum(params[n].numel() for n in names)


@pytest.mark.parametrize("name, lr, steps, conv", [("fc-conv2", 2e-4, 20000, 0.1), ("fc-conv4", 3e-4, 25000, 0.1), ("fc-conv6", 3e-4, 30000, 0.15)])
def test_frankle_carbin_presets(name, lr, steps, conv):
    c = cfgmod.preset(name)
    assert (c.model, c.train.lr, c.train.steps, c.train.batch_size, c.train.eval_every) == (name[3:], lr, steps, 60, "100")
    assert (c.prune.criterion, c.prune.scope, c.rewind) == ("magnitude", "layer", "init")
    assert c.prune.rates == {"conv": conv, "dense": 0.2, "output": 0.1}
    assert 0.015 < _remaining_after(c) < 0.025  # "about 2% remaining"


def test_seed_control_presets_change_one_thing():
    seed = cfgmod.preset("seed")
    assert cfgmod.preset("seed-magnitude") == dataclasses.replace(seed, name="seed-magnitude", prune=dataclasses.replace(seed.prune, criterion="magnitude"))
    assert cfgmod.preset("seed-random") == dataclasses.replace(seed, name="seed-random", prune=dataclasses.replace(seed.prune, criterion="random"))
    assert cfgmod.preset("seed-reinit") == dataclasses.replace(seed, name="seed-reinit", rewind="reinit")


def test_table_overrides_merge_and_validate():
    c = cfgmod.apply_overrides(cfgmod.preset("fc-conv4"), {"prune.rates.output": "0", "prune.layer_rates.features.0.weight": "0.05"})
    assert c.prune.rates == {"conv": 0.1, "dense": 0.2, "output": 0.0}
    assert c.prune.layer_rates == {"features.0.weight": 0.05}
    from lth.cli import is_settable

    assert is_settable("prune.rates.conv") and is_settable("prune.layer_rates.classifier.0.weight")
    assert not is_settable("prune.rates")


@pytest.mark.parametrize(
    "data, match",
    [
        ({"rewind": "epoch:0"}, "unknown rewind point"),
        ({"rewind": "epoch:x"}, "unknown rewind point"),
        ({"rewind": "epoch:27"}, "after round 0's last epoch"),
        ({"rewind": "epoch:3", "train": {"steps": 1000}}, r"after round 0's last iteration \(1000\)"),
        ({"train": {"eval_every": "often"}}, "train.eval_every"),
        ({"train": {"eval_every": 0}}, "train.eval_every"),
        ({"train": {"steps": 0}}, "train.steps: must be between 1 and 10"),
        ({"prune": {"scope": "block"}}, "prune.scope"),
        ({"prune": {"rates": {"conv": 0.1}}}, "need prune.scope"),
        ({"prune": {"scope": "layer", "rates": {"attention": 0.1}}}, "unknown layer type 'attention'"),
        ({"prune": {"scope": "layer", "rates": {"conv": 1.0}}}, r"prune.rates.conv: must be in \[0, 1\)"),
        ({"prune": {"scope": "layer", "layer_rates": {"x": "big"}}}, "prune.layer_rates.x: expected float"),
        ({"prune": {"match": "runs/a"}}, "only the random criterion"),
    ],
)
def test_baseline_options_validated(data, match):
    with pytest.raises(ConfigError, match=match):
        cfgmod.from_dict(data)


def test_layer_rates_must_name_a_weight_of_the_model():
    from lth.models import build_model
    from lth.study import pruning_plan

    c = cfgmod.from_dict({"prune": {"scope": "layer", "layer_rates": {"features.9.weight": 0.1}}})
    with pytest.raises(ConfigError, match="'features.9.weight' is not a conv/dense weight of seed-cnn"):
        pruning_plan(c, build_model("seed-cnn", 0))


def test_config_names_the_registries_below_it():
    """config validates names without importing the registries; they must answer to the same."""
    from lth.energy import TRACKERS
    from lth.models import MODELS
    from lth.pruning import CRITERIA

    assert (set(cfgmod.MODELS), set(cfgmod.CRITERIA), set(cfgmod.TRACKERS)) == (set(MODELS), set(CRITERIA), set(TRACKERS))
    from lth.data import DATASETS

    assert {name: (d.train, d.test, *d.shape[:2]) for name, d in DATASETS.items()} == cfgmod.DATASET_SIZES
    assert all(set(d.classes) <= set(cfgmod.LABELS) for d in DATASETS.values())
    assert {(name, labels): n for name, d in DATASETS.items() for labels, n in d.classes.items()} == {
        (name, labels): cfgmod.DataConfig(dataset=name, labels=labels).classes for name, d in DATASETS.items() for labels in d.classes}


def test_a_config_built_in_python_is_validated_too():
    """The boundary is the dataclass itself: replace() and direct construction are checked."""
    with pytest.raises(ConfigError, match=r"prune.fraction: must be in \(0, 1\)"):
        dataclasses.replace(Config(), prune=cfgmod.PruneConfig(fraction=1.5))
    with pytest.raises(ConfigError, match="unknown criterion"):
        Config(prune=cfgmod.PruneConfig(criterion="biggest"))


def test_precision_is_validated_and_in_the_hash_only_when_it_changes_the_arithmetic():
    quick = cfgmod.preset("quick")
    bf16 = cfgmod.apply_overrides(quick, {"train.precision": "bf16"})
    assert cfgmod.config_hash(quick) == "972aa46b"  # fp32: the hash every earlier quick run has
    assert cfgmod.config_hash(bf16) != cfgmod.config_hash(quick) and 'precision = "bf16"' in cfgmod.to_toml(bf16)
    assert all(c.train.precision == "fp32" for c in cfgmod.PRESETS.values())  # opt-in only
    with pytest.raises(ConfigError, match="train.precision: unknown precision .fp16.; choose one of: fp32, bf16"):
        cfgmod.apply_overrides(quick, {"train.precision": "fp16"})
