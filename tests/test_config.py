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
        ({"train": {"epochs": 0}}, "train.epochs: must be >= 1"),
        ({"train": {"initial_epochs": 0}}, "train.initial_epochs: must be >= 1"),
        ({"prune": {"fraction": 0.0}}, r"prune.fraction: must be in \(0, 1\)"),
        ({"prune": {"fraction": 1.0}}, r"prune.fraction: must be in \(0, 1\)"),
        ({"prune": {"criterion": "biggest"}}, "unknown criterion 'biggest'"),
        ({"model": "resnet"}, "unknown model"),
        ({"rewind": "sometime"}, "unknown rewind point"),
        ({"data": {"val_size": 6000}}, "data.val_size"),
        ({"train": 3}, "train: expected a table"),
    ],
)
def test_bad_configs_raise_one_line_errors(data, match):
    with pytest.raises(ConfigError, match=match) as info:
        cfgmod.from_dict(data)
    assert "\n" not in str(info.value)


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
