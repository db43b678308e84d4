"""Tests for lth.data: real CIFAR-10 where possible, generated files where the format is under test.

The real data is found through $LTH_DATA_DIR, defaulting to ``<repo>/../shared/data``; if it is
missing the real-data tests FAIL (never skip), so a broken data setup cannot pass unnoticed.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lth import data
from lth.data import fetch
from lth.data.cifar import ALLOWED_GLOBALS
from lth.data import (
    BATCHES_DIRNAME,
    DataError,
    Splits,
    ensure_cifar10,
    find_batches_dir,
    load_batch,
    load_cifar10,
    load_splits,
    resolve_data_dir,
    split_train_val,
    to_float,
)

REPO = Path(__file__).resolve().parents[1]
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
BATCH_NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]


def real_data_root() -> Path:
    return Path(os.environ.get("LTH_DATA_DIR") or REPO.parent / "shared" / "data")


@pytest.fixture(scope="module")
def real_dir() -> Path:
    root = real_data_root()
    found = find_batches_dir(root)
    assert found is not None, f"real CIFAR-10 not found under {root}; set LTH_DATA_DIR"
    return found


@pytest.fixture(scope="module")
def real(real_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return load_cifar10(real_dir)


# --------------------------------------------------------------------------- generated files


def batch_dict(n: int = 4, seed: int = 0, **overrides: object) -> dict:
    rng = np.random.default_rng(seed)
    d = {
        b"batch_label": b"fake batch",
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }
    d.update({k.encode(): v for k, v in overrides.items()})
    return d


def write_pickle(path: Path, obj: object) -> Path:
    # Protocol 3: bytes stay bytes and globals are GLOBAL text opcodes (like the official files).
    path.write_bytes(pickle.dumps(obj, protocol=3))
    return path


def make_batches_dir(directory: Path, n: int = 4) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(BATCH_NAMES[:-1]):
        write_pickle(directory / name, batch_dict(n, seed=i))
    write_pickle(directory / "batches.meta", {b"label_names": [b"c%d" % i for i in range(10)]})
    return directory


def make_archive(path: Path, members: dict[str, bytes]) -> str:
    """Write a tar.gz with the given member names and contents; return its MD5."""
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return hashlib.md5(path.read_bytes()).hexdigest()


def fake_archive(path: Path, n: int = 3) -> str:
    src = make_batches_dir(path.parent / "fake_src" / BATCHES_DIRNAME, n)
    members = {f"{BATCHES_DIRNAME}/{name}": (src / name).read_bytes() for name in BATCH_NAMES}
    return make_archive(path, members)


# --------------------------------------------------------------------------- real data


def test_real_load_shapes_dtypes_and_labels(real):
    train_x, train_y, test_x, test_y = real
    assert train_x.shape == (50_000, 3, 32, 32) and train_x.dtype == np.uint8
    assert test_x.shape == (10_000, 3, 32, 32) and test_x.dtype == np.uint8
    assert train_y.shape == (50_000,) and train_y.dtype == np.int64
    assert test_y.shape == (10_000,) and test_y.dtype == np.int64
    assert train_y.min() == 0 and train_y.max() == 9
    assert np.bincount(train_y, minlength=10).tolist() == [5000] * 10
    assert np.bincount(test_y, minlength=10).tolist() == [1000] * 10


def test_real_train_channel_mean(real):
    mean = real[0].mean(axis=(0, 2, 3), dtype=np.float64) / 255
    np.testing.assert_allclose(mean, CIFAR_MEAN, atol=1e-3)


def test_real_load_batch_row_layout_is_channel_major(real_dir, real):
    # Row = 1024 red, 1024 green, 1024 blue; NCHW reshape must put red first.
    with open(real_dir / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="bytes")[b"data"]
    np.testing.assert_array_equal(real[0][:10, 0].reshape(10, -1), raw[:10, :1024])
    np.testing.assert_array_equal(real[0][:10, 2].reshape(10, -1), raw[:10, 2048:])


def test_load_splits_uses_last_5000_as_validation(real_dir):
    s = load_splits(real_dir, download=False)
    assert isinstance(s, Splits)
    assert s.train_x.shape == (45_000, 3, 32, 32) and s.train_x.dtype == torch.uint8
    assert s.val_x.shape == (5_000, 3, 32, 32) and s.val_y.dtype == torch.int64
    assert s.test_x.shape == (10_000, 3, 32, 32) and s.test_y.shape == (10_000,)
    b5_x, b5_y = load_batch(real_dir / "data_batch_5")
    assert torch.equal(s.val_x, torch.from_numpy(b5_x[-5000:]))
    assert torch.equal(s.val_y, torch.from_numpy(b5_y[-5000:]))
    assert torch.equal(s.train_x[-5000:], torch.from_numpy(b5_x[:5000]))
    b1_x, _ = load_batch(real_dir / "data_batch_1")
    assert torch.equal(s.train_x[:10_000], torch.from_numpy(b1_x))


def test_load_splits_slicing_and_env_var(real_dir, monkeypatch):
    monkeypatch.setenv("LTH_DATA_DIR", str(real_dir.parent))
    s = load_splits(train_size=100, val_size=20, test_size=30, download=False)
    full = load_splits(real_dir, download=False)
    assert [len(t) for t in (s.train_x, s.train_y, s.val_x, s.val_y, s.test_x, s.test_y)] == [
        100, 100, 20, 20, 30, 30,
    ]
    assert torch.equal(s.train_x, full.train_x[:100])
    assert torch.equal(s.val_y, full.val_y[:20])
    assert torch.equal(s.test_x, full.test_x[:30])


def test_load_splits_tensors_do_not_alias_cache(real_dir):
    first = load_splits(real_dir, train_size=5, download=False)
    expected = first.train_x.clone()
    first.train_x.zero_()
    again = load_splits(real_dir, train_size=5, download=False)
    assert torch.equal(again.train_x, expected)


@pytest.mark.parametrize(
    "kwargs", [{"train_size": 45_001}, {"val_size": 5_001}, {"test_size": 10_001}, {"train_size": 0}]
)
def test_load_splits_size_out_of_range(real_dir, kwargs):
    with pytest.raises(DataError, match=next(iter(kwargs))):
        load_splits(real_dir, download=False, **kwargs)


def test_real_batches_reference_only_numpy_array_globals(real_dir):
    seen: set[tuple[str, str]] = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            seen.add((module, name))
            return super().find_class(module, name)

    with open(real_dir / "test_batch", "rb") as f:
        Recorder(f, encoding="bytes").load()
    assert seen <= set(ALLOWED_GLOBALS)


# --------------------------------------------------------------------------- pure helpers


def test_split_train_val_is_last_rows():
    x, y = np.arange(20).reshape(10, 2), np.arange(10)
    tx, ty, vx, vy = split_train_val(x, y, val_size=3)
    assert ty.tolist() == list(range(7)) and vy.tolist() == [7, 8, 9]
    assert tx.shape == (7, 2) and vx.tolist() == [[14, 15], [16, 17], [18, 19]]
    with pytest.raises(ValueError):
        split_train_val(x, y, val_size=10)


def test_to_float_scales_to_unit_range():
    images = torch.tensor([[0, 51, 255]], dtype=torch.uint8)
    out = to_float(images)
    assert out.dtype == torch.float32 and out.device == images.device
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.2, 1.0]]))
    assert images.tolist() == [[0, 51, 255]]
    with pytest.raises(TypeError):
        to_float(out)


def test_resolve_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setattr(fetch.platformdirs, "user_cache_dir", lambda app: str(tmp_path / "cache" / app))
    monkeypatch.delenv("LTH_DATA_DIR", raising=False)
    assert resolve_data_dir() == tmp_path / "cache" / "lth" / "data"
    monkeypatch.setenv("LTH_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir() == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir(str(tmp_path / "arg")) == tmp_path / "arg"


def test_resolve_data_dir_makes_relative_paths_absolute_where_read(monkeypatch, tmp_path):
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(here)
    monkeypatch.setenv("LTH_DATA_DIR", os.path.join("rel", "data"))
    from_env = resolve_data_dir()
    from_arg = resolve_data_dir(Path("arg") / ".." / "argdir")
    monkeypatch.chdir(elsewhere)
    assert from_env.is_absolute() and from_arg.is_absolute()
    assert from_env == here.resolve() / "rel" / "data"
    assert from_arg == here.resolve() / "argdir"
    assert resolve_data_dir() == elsewhere.resolve() / "rel" / "data"  # read again: read at the new cwd


def test_find_batches_dir_accepts_root_or_dir_and_rejects_incomplete(tmp_path):
    batches = make_batches_dir(tmp_path / BATCHES_DIRNAME)
    assert find_batches_dir(tmp_path) == batches
    assert find_batches_dir(batches) == batches
    (batches / "data_batch_3").unlink()
    assert find_batches_dir(tmp_path) is None
    assert find_batches_dir(tmp_path / "nope") is None


# --------------------------------------------------------------------------- load_batch format


@pytest.mark.parametrize("numpy_module", [b"numpy.core.multiarray", b"numpy._core.multiarray"])
def test_load_batch_accepts_numpy1_and_numpy2_names(tmp_path, numpy_module):
    d = batch_dict(5)
    raw = pickle.dumps(d, protocol=3)
    for name in (b"numpy.core.multiarray", b"numpy._core.multiarray"):
        raw = raw.replace(b"c" + name + b"\n", b"c" + numpy_module + b"\n")
    assert b"c" + numpy_module + b"\n_reconstruct" in raw
    path = tmp_path / "b"
    path.write_bytes(raw)
    x, y = load_batch(path)
    assert x.shape == (5, 3, 32, 32) and x.dtype == np.uint8 and y.dtype == np.int64
    np.testing.assert_array_equal(x.reshape(5, -1), d[b"data"])
    assert y.tolist() == d[b"labels"]


@pytest.mark.parametrize(
    ("module", "name", "payload"),
    [
        ("os", "system", "touch {marker}"),
        ("builtins", "eval", "open({marker!r}, 'w').close()"),
    ],
)
def test_load_batch_rejects_code_execution(tmp_path, module, name, payload):
    marker = tmp_path / "pwned"
    arg = payload.format(marker=str(marker))
    evil = f"c{module}\n{name}\n(V{arg}\ntR.".encode()
    assert not marker.exists()
    path = tmp_path / "data_batch_1"
    path.write_bytes(evil)
    with pytest.raises(DataError) as err:
        load_batch(path)
    assert not marker.exists(), "the exploit ran"
    msg = str(err.value)
    assert str(path) in msg and f"{module}.{name}" in msg and "\n" not in msg


def test_exploit_pickle_is_live(tmp_path):
    # Guard against a vacuous rejection test: the payload really executes under pickle.loads.
    marker = tmp_path / "ran"
    evil = f"cbuiltins\neval\n(Vopen({str(marker)!r}, 'w').close()\ntR.".encode()
    pickle.loads(evil)
    assert marker.exists()


def test_load_batch_corrupt_and_truncated(tmp_path):
    good = pickle.dumps(batch_dict(8), protocol=3)
    truncated = write_pickle(tmp_path / "truncated", None)
    truncated.write_bytes(good[: len(good) // 2])
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x00this is not a pickle" * 10)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    for path in (truncated, garbage, empty):
        with pytest.raises(DataError) as err:
            load_batch(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DataError, match="missing"):
        load_batch(tmp_path / "absent")


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ([1, 2, 3], "expected a dict"),
        ({b"labels": [1]}, "missing key"),
        (batch_dict(4, data=np.zeros((4, 3072), np.float32)), "dtype float32"),
        (batch_dict(4, data=np.zeros((4, 3071), np.uint8)), "shape"),
        (batch_dict(4, data=np.zeros((4, 3, 32, 32), np.uint8)), "shape"),
        (batch_dict(4, data=[[0] * 3072] * 4), "numpy array"),
        (batch_dict(4, labels=[0, 1, 10, 3]), "labels span"),
        (batch_dict(4, labels=[0, 1, -1, 3]), "labels span"),
        (batch_dict(4, labels=[0, 1, 2]), "3 labels for 4 images"),
        (batch_dict(4, labels=[0, 1, 2.0, 3]), "non-int"),
        (batch_dict(4, labels=np.zeros(4, np.int64)), "list of ints"),
    ],
)
def test_load_batch_rejects_bad_content(tmp_path, obj, match):
    path = write_pickle(tmp_path / "data_batch_1", obj)
    with pytest.raises(DataError, match=match) as err:
        load_batch(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_load_cifar10_requires_full_batches(tmp_path):
    batches = make_batches_dir(tmp_path / BATCHES_DIRNAME, n=4)
    x, y = load_batch(batches / "data_batch_2")
    assert x.shape == (4, 3, 32, 32) and y.shape == (4,)
    with pytest.raises(DataError, match="data_batch_1: 4 rows, expected 10000"):
        load_cifar10(batches)


# --------------------------------------------------------------------------- ensure_cifar10


def test_ensure_cifar10_downloads_verifies_and_extracts(tmp_path):
    archive = tmp_path / "src" / "cifar.tar.gz"
    archive.parent.mkdir()
    md5 = fake_archive(archive, n=3)
    root = tmp_path / "root"
    out = ensure_cifar10(root, url=archive.as_uri(), md5=md5)
    assert out == root / BATCHES_DIRNAME
    assert sorted(p.name for p in root.iterdir()) == [BATCHES_DIRNAME]  # no temp leftovers
    assert sorted(p.name for p in out.iterdir()) == sorted(BATCH_NAMES)
    x, y = load_batch(out / "test_batch")
    assert x.shape == (3, 3, 32, 32) and y.shape == (3,)
    # Present now: no second download (a bad URL would fail if one were attempted).
    assert ensure_cifar10(root, url="file:///nonexistent.tar.gz", md5="0" * 32) == out
    assert ensure_cifar10(root, download=False) == out


def test_ensure_cifar10_md5_mismatch_leaves_nothing(tmp_path):
    archive = tmp_path / "cifar.tar.gz"
    fake_archive(archive)
    root = tmp_path / "root"
    with pytest.raises(DataError, match="MD5 mismatch") as err:
        ensure_cifar10(root, url=archive.as_uri(), md5="0" * 32)
    assert "\n" not in str(err.value)
    assert list(root.iterdir()) == []


@pytest.mark.parametrize("bad_name", ["../evil", "/tmp/lth-evil-absolute", f"{BATCHES_DIRNAME}/../../evil"])
def test_ensure_cifar10_rejects_path_traversal(tmp_path, bad_name):
    archive = tmp_path / "cifar.tar.gz"
    members = {f"{BATCHES_DIRNAME}/{n}": b"x" for n in BATCH_NAMES}
    members[bad_name] = b"pwned"
    md5 = make_archive(archive, members)
    root = tmp_path / "a" / "root"
    with pytest.raises(DataError, match="unsafe path"):
        ensure_cifar10(root, url=archive.as_uri(), md5=md5)
    assert list(root.iterdir()) == []
    assert not (tmp_path / "a" / "evil").exists() and not (tmp_path / "evil").exists()
    assert not Path("/tmp/lth-evil-absolute").exists()


def test_ensure_cifar10_rejects_links(tmp_path):
    archive = tmp_path / "cifar.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        link = tarfile.TarInfo(f"{BATCHES_DIRNAME}/data_batch_1")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    root = tmp_path / "root"
    with pytest.raises(DataError, match="link"):
        ensure_cifar10(root, url=archive.as_uri(), md5=md5)
    assert list(root.iterdir()) == []


def test_ensure_cifar10_archive_without_batches(tmp_path):
    archive = tmp_path / "cifar.tar.gz"
    md5 = make_archive(archive, {"something/else": b"x"})
    root = tmp_path / "root"
    with pytest.raises(DataError, match=BATCHES_DIRNAME):
        ensure_cifar10(root, url=archive.as_uri(), md5=md5)
    assert list(root.iterdir()) == []


def test_ensure_cifar10_no_download_on_empty_dir(tmp_path):
    with pytest.raises(DataError, match="LTH_DATA_DIR") as err:
        ensure_cifar10(tmp_path, download=False)
    assert "--data-dir" in str(err.value) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_ensure_cifar10_refuses_incomplete_existing_dir(tmp_path):
    batches = make_batches_dir(tmp_path / BATCHES_DIRNAME)
    (batches / "test_batch").unlink()
    with pytest.raises(DataError, match="incomplete.*test_batch"):
        ensure_cifar10(tmp_path, url="file:///nonexistent.tar.gz")


def test_ensure_cifar10_unreachable_url(tmp_path):
    root = tmp_path / "root"
    with pytest.raises(DataError, match="could not download"):
        ensure_cifar10(root, url=(tmp_path / "missing.tar.gz").as_uri())
    assert list(root.iterdir()) == []
