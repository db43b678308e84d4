"""Hostile input, fuzzed (hypothesis): config TOML, command-line overrides and CIFAR-10 batch
files. Whatever comes in, lth answers with a config or its one-line error, never a traceback.
The example counts keep the whole module at about a minute on 2 cores."""

from __future__ import annotations

import pickle
import string

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lth import config as cfgmod
from lth.cli import dotted_keys, main
from lth.data import DataError, load_batch

FUZZ = settings(max_examples=2500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# TOML made of lth's own keys and arbitrary values, so that most documents get past the TOML
# parser and reach the config's own checks.
SCALARS = st.one_of(st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                    st.text(max_size=12), st.none())
KEYS = st.sampled_from([k.rsplit(".", 1)[-1] for k in dotted_keys()] + ["rates", "layer_rates", "unknown"])
TABLES = st.dictionaries(KEYS, st.one_of(SCALARS, st.dictionaries(st.text(max_size=6), SCALARS, max_size=3)), max_size=6)
DOCUMENTS = st.dictionaries(st.sampled_from(["name", "model", "seed", "rewind", "device", "data", "train", "prune", "energy", "x"]),
                            st.one_of(SCALARS, TABLES), max_size=6)


def _toml(doc: dict) -> str:
    """A TOML rendering that tolerates values tomli_w refuses (None, NaN): those become strings."""
    import tomli_w

    def clean(v):
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        return "None" if v is None else v

    return tomli_w.dumps(clean(doc))


@FUZZ
@given(DOCUMENTS)
def test_config_files_give_a_config_or_one_line_error(doc):
    try:
        config = cfgmod.from_toml(_toml(doc))
    except cfgmod.ConfigError as exc:
        assert "\n" not in str(exc) and str(exc)
    else:
        assert cfgmod.from_toml(cfgmod.to_toml(config)) == config  # what loads, round-trips


@FUZZ
@given(st.text(max_size=200))
def test_arbitrary_text_as_a_config_file(text):
    try:
        cfgmod.from_toml(text)
    except cfgmod.ConfigError as exc:
        assert "\n" not in str(exc)


TOKENS = st.lists(st.one_of(st.sampled_from([f"--{k}" for k in dotted_keys()] + ["--preset", "--rounds", "--seed", "--device", "-x", "--"]),
                            st.text(string.printable, max_size=10)), max_size=6)


@FUZZ
@given(TOKENS)
def test_command_line_overrides_exit_0_or_2_with_one_line(capsys, tokens):
    try:
        code = main(["config", *tokens])
    except SystemExit as exc:  # argparse's own usage errors (e.g. --seed with no number) exit 2
        code = exc.code
    err = capsys.readouterr().err
    assert code in (0, 2)
    if code == 2 and err.startswith("lth: error:"):
        assert err.count("\n") == 1


def _batch_bytes(draw_obj) -> bytes:
    return pickle.dumps(draw_obj, protocol=2)


BATCH_OBJECTS = st.one_of(
    st.dictionaries(st.sampled_from([b"data", b"labels", b"x", "data"]),
                    st.one_of(st.integers(), st.lists(st.integers(-3, 12), max_size=5), st.text(max_size=4),
                              st.builds(lambda n, d: np.zeros((n, 3072 if d else 7), dtype=np.uint8 if d else np.float32),
                                        st.integers(0, 4), st.booleans())),
                    max_size=3),
    st.lists(st.integers(), max_size=3),
    st.integers(),
)


@FUZZ
@given(st.one_of(BATCH_OBJECTS.map(_batch_bytes), st.binary(max_size=300)))
def test_batch_files_load_or_raise_a_data_error(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("batch") / "data_batch_1"
    path.write_bytes(blob)
    try:
        images, labels = load_batch(path)
    except DataError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
    else:
        assert images.dtype == np.uint8 and images.shape[1:] == (3, 32, 32) and len(labels) == len(images)


@FUZZ
@given(st.binary(min_size=1, max_size=64), st.integers(0, 2000))
def test_truncated_or_flipped_real_batches_raise_a_data_error(data_root, tmp_path_factory, noise, cut):
    """The real test batch, cut short or with bytes overwritten near its start, is refused."""
    real = (data_root / "cifar-10-batches-py" / "test_batch").read_bytes()
    path = tmp_path_factory.mktemp("real") / "test_batch"
    path.write_bytes(real[:cut] + noise + real[cut + len(noise): cut + 4096])  # never the whole file
    with pytest.raises(DataError) as err:
        load_batch(path)
    assert "\n" not in str(err.value)
