"""The data sets beyond CIFAR-10: Fashion-MNIST (real, from the Debian package), MNIST and
CIFAR-100 (generated in their official formats, full size), the models and the config for each.

Real Fashion-MNIST is read from /usr/share/datasets/fashion-mnist (`apt-get install
dataset-fashion-mnist`); if it is missing these tests FAIL, never skip. MNIST and CIFAR-100 are
not installed: their files are generated here once per module, at their official sizes (60,000 /
10,000 IDX images; 50,000 / 10,000 pickled rows), so that the real row-count checks apply.

Generated images are row-constant (row i holds i % 256 in every pixel) and labels follow the row
index, so which rows land in which split can be read back from the pixels.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tarfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from lth import config as cfgmod
from lth.config import DATASET_SIZES, ConfigError, DataConfig
from lth.data import DATASETS, DataError, ensure, find_batches_dir, fingerprint, input_transform, load_splits, splits_for
from lth.data.cifar import ALLOWED_GLOBALS, CIFAR100_DIRNAME, load_cifar100
from lth.data.idx import FILES as IDX_FILES
from lth.data.idx import load_idx_set, read_idx
from lth.models import MODELS, build_model, model_for, output_layer

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_ROOT = FASHION_DIR.parent
TRAIN_X, TRAIN_Y, TEST_X, TEST_Y = (IDX_FILES[k] for k in ("train_x", "train_y", "test_x", "test_y"))
MNIST_ROWS = {TRAIN_X: 60_000, TRAIN_Y: 60_000, TEST_X: 10_000, TEST_Y: 10_000}


def one_line(err: pytest.ExceptionInfo | BaseException) -> str:
    message = str(err.value if isinstance(err, pytest.ExceptionInfo) else err)
    assert "\n" not in message, f"not one line: {message!r}"
    return message


def lth_cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lth", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


# --------------------------------------------------------------------------- IDX writers


def idx_header(shape: tuple[int, ...], kind: int = 0x08, ndim: int | None = None) -> bytes:
    ndim = len(shape) if ndim is None else ndim
    return struct.pack(">HBB", 0, kind, ndim) + struct.pack(f">{len(shape)}I", *shape)


def write_gz(path: Path, raw: bytes) -> Path:
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(raw)
    return path


def write_idx(path: Path, array: np.ndarray) -> Path:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return write_gz(path, idx_header(array.shape) + array.tobytes())


def pattern_images(n: int, side: int = 28) -> np.ndarray:
    """Row i: every pixel i % 256."""
    return np.ascontiguousarray(np.broadcast_to((np.arange(n) % 256).astype(np.uint8)[:, None, None], (n, side, side)))


def pattern_labels(n: int, classes: int = 10) -> np.ndarray:
    return (np.arange(n) % classes).astype(np.uint8)


def decode_idx_by_hand(path: Path) -> np.ndarray:
    """An independent reader (not lth's): gunzip, the header's dims, the bytes."""
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def link_folder(src: Path, dest: Path, skip: tuple[str, ...] = ()) -> Path:
    """`dest` holding hard links to `src`'s files except `skip` (full-size files are not copied)."""
    dest.mkdir(parents=True)
    for p in src.iterdir():
        if p.name not in skip:
            os.link(p, dest / p.name)
    return dest


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def mnist_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full-size MNIST folder in the official form (the four gzipped IDX files)."""
    folder = tmp_path_factory.mktemp("mnist-src")
    write_idx(folder / TRAIN_X, pattern_images(60_000))
    write_idx(folder / TRAIN_Y, pattern_labels(60_000))
    write_idx(folder / TEST_X, pattern_images(10_000))
    write_idx(folder / TEST_Y, pattern_labels(10_000)[::-1])
    return folder


# --------------------------------------------------------------------------- CIFAR-100 writers


class Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Protocol 2 with bytes written as Python 2 str (SHORT_BINSTRING / BINSTRING), as the
    official CIFAR pickles (written by Python 2's cPickle) hold them. Python 3's own protocol 2
    writes bytes as `_codecs.encode(...)` calls, which no official file contains."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_str2(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_str2


def official_pickle(obj: object) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    # The official files name numpy 1's module; numpy 2 pickles under numpy._core.
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def cifar100_dict(n: int, name: str) -> dict:
    fine = [int(v) for v in np.arange(n) % 100]
    return {
        b"filenames": [b"img_%05d.png" % i for i in range(n)],
        b"batch_label": b"%s batch 1 of 1" % name.encode(),
        b"fine_labels": fine,
        b"coarse_labels": [v // 5 for v in fine],
        b"data": pattern_images(n, 32).reshape(n, 1, 32 * 32).repeat(3, axis=1).reshape(n, 3072),
    }


@pytest.fixture(scope="module")
def cifar100_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder holding a full-size `cifar-100-python/` in the official layout."""
    root = tmp_path_factory.mktemp("c100-root")
    folder = root / CIFAR100_DIRNAME
    folder.mkdir()
    (folder / "train").write_bytes(official_pickle(cifar100_dict(50_000, "training")))
    (folder / "test").write_bytes(official_pickle(cifar100_dict(10_000, "testing")))
    (folder / "meta").write_bytes(official_pickle({b"fine_label_names": [b"f%d" % i for i in range(100)],
                                                   b"coarse_label_names": [b"c%d" % i for i in range(20)]}))
    return root


# --------------------------------------------------------------------------- real Fashion-MNIST


@pytest.fixture(scope="module")
def fashion_dir() -> Path:
    missing = [name for name in IDX_FILES.values() if not (FASHION_DIR / name).is_file()]
    assert not missing, (f"real Fashion-MNIST not found in {FASHION_DIR} (missing {', '.join(missing)}); "
                         "install it with `apt-get install dataset-fashion-mnist`")
    return FASHION_DIR


@pytest.fixture(scope="module")
def fashion(fashion_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return load_idx_set(fashion_dir, "Fashion-MNIST")


def test_fashion_shapes_dtypes_and_balanced_labels(fashion_dir, fashion):
    train_x, train_y, test_x, test_y = fashion
    assert train_x.shape == (60_000, 1, 28, 28) and train_x.dtype == np.uint8
    assert test_x.shape == (10_000, 1, 28, 28) and test_x.dtype == np.uint8
    assert train_y.shape == (60_000,) and train_y.dtype == np.int64
    assert test_y.shape == (10_000,) and test_y.dtype == np.int64
    assert np.bincount(train_y, minlength=10).tolist() == [6_000] * 10
    assert np.bincount(test_y, minlength=10).tolist() == [1_000] * 10
    # What lth decoded is what the files hold, read by an independent decoder.
    np.testing.assert_array_equal(train_x[:, 0], decode_idx_by_hand(fashion_dir / TRAIN_X))
    np.testing.assert_array_equal(test_y, decode_idx_by_hand(fashion_dir / TEST_Y))


def test_fashion_channel_mean_and_std_match_the_table(fashion):
    train_x = fashion[0]
    mean = train_x.mean(dtype=np.float64) / 255
    std = train_x.std(dtype=np.float64) / 255
    spec = DATASETS["fashion-mnist"]
    assert len(spec.mean) == len(spec.std) == 1
    assert abs(mean - spec.mean[0]) < 1e-3, mean
    assert abs(std - spec.std[0]) < 1e-3, std


def test_fashion_load_splits_holds_out_the_last_5000(fashion_dir, fashion):
    s = load_splits(FASHION_ROOT, dataset="fashion-mnist", download=False)
    assert s.source == fashion_dir.resolve()
    assert [t.shape[0] for t in (s.train_x, s.train_y, s.val_x, s.val_y, s.test_x, s.test_y)] == [55_000, 55_000, 5_000, 5_000, 10_000, 10_000]
    assert s.train_x.shape[1:] == (1, 28, 28) and s.train_x.dtype == torch.uint8 and s.val_y.dtype == torch.int64
    train_x, train_y, test_x, _ = fashion
    assert torch.equal(s.val_x, torch.from_numpy(train_x[-5_000:]))
    assert torch.equal(s.val_y, torch.from_numpy(train_y[-5_000:]))
    assert torch.equal(s.train_x, torch.from_numpy(train_x[:55_000]))
    assert torch.equal(s.test_x, torch.from_numpy(test_x))
    assert s.validates and s.normalization is None


def test_fashion_validation_zero_keeps_every_training_image(fashion):
    s = load_splits(FASHION_ROOT, dataset="fashion-mnist", download=False, validation=0)
    assert s.train_x.shape == (60_000, 1, 28, 28) and s.train_y.shape == (60_000,)
    assert s.val_x.shape[0] == 0 and s.val_y.shape[0] == 0 and not s.validates
    assert torch.equal(s.train_y, torch.from_numpy(fashion[1]))
    # The same through a config's data table, with the data set's own normalisation.
    data = DataConfig(dataset="fashion-mnist", validation=0, normalize="dataset", train_size=7)
    c = splits_for(data, FASHION_ROOT)
    assert c.train_x.shape[0] == 7 and not c.validates
    assert c.normalization == (DATASETS["fashion-mnist"].mean, DATASETS["fashion-mnist"].std)


def test_fashion_fingerprint_differs_from_cifar10(fashion_dir, data_root):
    fashion_print = fingerprint(fashion_dir.resolve(), "fashion-mnist")
    cifar_print = fingerprint(find_batches_dir(data_root).resolve(), "cifar10")
    assert fashion_print.startswith("sha256:") and len(fashion_print) == len("sha256:") + 16
    assert fashion_print != cifar_print
    assert load_splits(FASHION_ROOT, dataset="fashion-mnist", download=False, train_size=1).fingerprint == fashion_print


# --------------------------------------------------------------------------- generated MNIST


def test_generated_mnist_loads_with_the_official_layout(mnist_src, tmp_path):
    root = tmp_path / "root"
    link_folder(mnist_src, root / "mnist")
    s = load_splits(root, dataset="mnist", download=False)
    assert s.source == (root / "mnist").resolve()
    assert s.train_x.shape == (55_000, 1, 28, 28) and s.val_x.shape == (5_000, 1, 28, 28) and s.test_x.shape == (10_000, 1, 28, 28)
    # Row i holds i % 256: validation is rows 55,000..59,999, in order.
    assert s.val_x[:, 0, 0, 0].tolist() == [i % 256 for i in range(55_000, 60_000)]
    assert s.val_y.tolist() == [i % 10 for i in range(55_000, 60_000)]
    assert s.test_y.tolist() == (np.arange(10_000) % 10)[::-1].tolist()
    assert int(s.train_y.max()) == 9 and s.train_y.dtype == torch.int64
    # The folder itself works as --data-dir too.
    assert load_splits(root / "mnist", dataset="mnist", download=False, test_size=3).test_x.shape[0] == 3


def test_mnist_fingerprint_is_of_the_data_not_the_files(mnist_src, tmp_path):
    same = link_folder(mnist_src, tmp_path / "recompressed", skip=(TRAIN_Y,))
    with gzip.open(same / TRAIN_Y, "wb", compresslevel=9) as f:  # other gzip bytes, the same content
        f.write(gzip.decompress((mnist_src / TRAIN_Y).read_bytes()))
    assert md5_of(same / TRAIN_Y) != md5_of(mnist_src / TRAIN_Y)
    other = link_folder(mnist_src, tmp_path / "relabelled", skip=(TRAIN_Y,))
    labels = pattern_labels(60_000)
    labels[0] = 1
    write_idx(other / TRAIN_Y, labels)
    base = fingerprint(mnist_src.resolve(), "mnist")
    assert fingerprint(same.resolve(), "mnist") == base
    assert fingerprint(other.resolve(), "mnist") != base


def test_ensure_mnist_downloads_verifies_and_places(mnist_src, tmp_path):
    md5 = {name: md5_of(mnist_src / name) for name in IDX_FILES.values()}
    root = tmp_path / "root"
    out = ensure("mnist", root, urls=[mnist_src.as_uri() + "/"], md5=md5)
    assert out == root / "mnist"
    assert sorted(p.name for p in root.iterdir()) == ["mnist"]  # no temporary folder left
    assert sorted(p.name for p in out.iterdir()) == sorted(IDX_FILES.values())
    for name in IDX_FILES.values():
        assert (out / name).read_bytes() == (mnist_src / name).read_bytes()
    # Present now: no second download (a bad URL would fail if one were attempted).
    assert ensure("mnist", root, urls=["file:///nonexistent/"], md5={k: "0" * 32 for k in md5}) == out
    assert ensure("mnist", root, download=False) == out
    assert load_splits(root, dataset="mnist", download=False, train_size=2).train_x.shape == (2, 1, 28, 28)


def test_ensure_mnist_md5_mismatch_leaves_nothing(mnist_src, tmp_path):
    md5 = {name: md5_of(mnist_src / name) for name in IDX_FILES.values()}
    md5[TEST_Y] = "0" * 32  # the last file: the first three are downloaded before the mismatch
    root = tmp_path / "root"
    with pytest.raises(DataError, match="MD5 mismatch") as err:
        ensure("mnist", root, urls=[mnist_src.as_uri() + "/"], md5=md5)
    assert TEST_Y in one_line(err)
    assert list(root.iterdir()) == []


def test_ensure_mnist_without_download_names_data_dir(tmp_path):
    with pytest.raises(DataError, match="--data-dir") as err:
        ensure("mnist", tmp_path, download=False)
    assert "MNIST" in one_line(err)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DataError, match="--data-dir"):
        load_splits(tmp_path, dataset="mnist", download=False)
    assert list(tmp_path.iterdir()) == []


def test_ensure_mnist_refuses_an_incomplete_folder(mnist_src, tmp_path):
    link_folder(mnist_src, tmp_path / "mnist", skip=(TEST_X,))
    with pytest.raises(DataError, match=f"incomplete.*{TEST_X}") as err:
        ensure("mnist", tmp_path, urls=["file:///nonexistent/"])
    one_line(err)


# --------------------------------------------------------------------------- bad IDX files


def _gz_cut(raw: bytes) -> bytes:
    whole = gzip.compress(raw, compresslevel=1)
    return whole[: len(whole) // 2]


# (file, what the file holds: ("gz", uncompressed bytes) or ("raw", file bytes), what the error says)
BAD_IDX = {
    "magic-type": (TEST_Y, ("gz", idx_header((10_000,), kind=0x09) + bytes(10_000)), "magic number"),
    "magic-nonzero": (TEST_Y, ("gz", b"\x12\x34\x08\x01" + struct.pack(">I", 10_000) + bytes(10_000)), "magic number"),
    "ndim": (TRAIN_X, ("gz", idx_header((60_000, 784)) + bytes(60_000 * 784)), "magic number 0x00000802"),
    "header-cut": (TRAIN_Y, ("gz", idx_header((60_000,))[:6]), "header ends"),
    "truncated-body": (TRAIN_Y, ("gz", idx_header((60_000,)) + bytes(59_000)), "truncated"),
    "truncated-gzip": (TEST_X, ("raw", _gz_cut(idx_header((10_000, 28, 28)) + bytes(range(256)) * 30_625)), "corrupt or truncated"),
    "trailing-bytes": (TEST_Y, ("gz", idx_header((10_000,)) + bytes(10_001)), "bytes after"),
    "huge-header": (TRAIN_X, ("gz", idx_header((2**32 - 1, 28, 28)) + bytes(100)), "larger than any official file"),
    "not-gzip": (TEST_X, ("raw", idx_header((10_000, 28, 28)) + bytes(10_000 * 784)), "corrupt"),
    "empty": (TRAIN_Y, ("raw", b""), "magic number"),
    "label-10": (TRAIN_Y, ("gz", idx_header((60_000,)) + bytes(59_999) + b"\x0a"), "labels span 0..10"),
    "label-count": (TEST_Y, ("gz", idx_header((9_999,)) + bytes(9_999)), "9999 labels for the 10000 images"),
    "not-28x28": (TEST_X, ("gz", idx_header((10_000, 32, 32)) + bytes(10_000 * 32 * 32)), "32×32, expected 28×28"),
    "rows-59999": (TRAIN_X, ("gz", idx_header((59_999, 28, 28)) + bytes(59_999 * 784)), "59999 images, expected 60000"),
    # The dimensions' product, 2**64, wraps to 0 in int64: the header claims 0 bytes (and holds none).
    "size-overflow": (TRAIN_X, ("gz", idx_header((2**22, 2**21, 2**21))), ""),
}


def bad_mnist_folder(mnist_src: Path, dest: Path, case: str) -> Path:
    name, (how, content), _ = BAD_IDX[case]
    folder = link_folder(mnist_src, dest, skip=(name,))
    if how == "gz":
        write_gz(folder / name, content)
    else:
        (folder / name).write_bytes(content)
    return folder / name


@pytest.mark.parametrize("case", list(BAD_IDX))
def test_bad_idx_file_refused_in_one_line_naming_it(mnist_src, tmp_path, case):
    bad = bad_mnist_folder(mnist_src, tmp_path / "data", case)
    with pytest.raises(DataError) as err:
        load_splits(tmp_path / "data", dataset="mnist", download=False)
    message = one_line(err)
    assert str(bad) in message and BAD_IDX[case][2] in message, message


# Headers claiming more than any official file: refused from the header alone. The last one's
# dimensions multiply to 2**64 - 1, which is -1 in int64 (read(-1) reads the whole stream).
HUGE_HEADERS = {
    "labels-4G": ((2**32 - 1,), 1),
    "images-4G-rows": ((2**32 - 1, 28, 28), 3),
    "product-wraps-to-0": ((2**22, 2**21, 2**21), 3),
    "product-wraps-to-minus-1": ((6_700_417, 42_009_217, 65_535), 3),
}


@pytest.mark.parametrize("case", list(HUGE_HEADERS))
def test_huge_idx_header_refused_without_allocating(tmp_path, case):
    shape, ndim = HUGE_HEADERS[case]
    path = tmp_path / "train-images-idx3-ubyte.gz"
    # 64 MiB of zeros after the header (64 KiB compressed): more than the largest official file,
    # so reading it means the header's claim was not enforced.
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(idx_header(shape))
        for _ in range(64):
            f.write(bytes(1 << 20))
    tracemalloc.start()
    error: BaseException | None = None
    try:
        read_idx(path, ndim, "MNIST")
    except Exception as exc:  # noqa: BLE001 - the type is what is checked
        error = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert isinstance(error, DataError), f"{type(error).__name__}: {error} (after allocating {peak / 2**20:.0f} MiB)"
    assert str(path) in one_line(error)
    assert peak < 16 << 20, f"{peak / 2**20:.0f} MiB allocated for a header claiming {shape}"


def test_mnist_label_range_checked_for_any_class_count(mnist_src):
    # The loader's own bound: the same files, told there are only 5 classes, are refused.
    with pytest.raises(DataError, match="labels span 0..9, expected 0..4"):
        load_idx_set(mnist_src, "MNIST", classes=5)


@pytest.mark.parametrize("case", ["label-10", "size-overflow"])
def test_cli_bad_idx_file_exits_2_with_one_line_and_writes_nothing(mnist_src, tmp_path, case):
    bad = bad_mnist_folder(mnist_src, tmp_path / "data", case)
    out = tmp_path / "out"
    done = lth_cli("run", "--preset", "lenet-quick", "--data.dataset", "mnist", "--data-dir", str(tmp_path / "data"),
                   "--out", str(out), "--no-energy", "--no-progress", cwd=tmp_path)
    lines = done.stderr.splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("lth: error:") and str(bad) in lines[0], done.stderr
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing else either (no runs/)


def test_refused_data_leaves_no_new_parent_folders(mnist_src, tmp_path):
    # `--out a/b/run` where a/ does not exist: refused data must leave a/ absent too.
    from lth.study import run_study

    bad_mnist_folder(mnist_src, tmp_path / "data", "label-10")
    config = cfgmod.apply_overrides(cfgmod.preset("lenet-quick"), {"energy.tracker": "off", "device": "cpu"})
    with pytest.raises(DataError, match="labels span"):
        run_study(config, out=tmp_path / "a" / "b" / "run", data_dir=tmp_path / "data", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


# --------------------------------------------------------------------------- generated CIFAR-100


def test_generated_cifar100_is_in_the_official_pickle_form(cifar100_root):
    raw = (cifar100_root / CIFAR100_DIRNAME / "test").read_bytes()
    assert raw[:2] == b"\x80\x02" and b"cnumpy.core.multiarray\n_reconstruct\n" in raw and b"_codecs" not in raw
    plain = pickle.loads(raw, encoding="bytes")
    assert plain[b"data"].shape == (10_000, 3072) and plain[b"data"].dtype == np.uint8
    assert plain[b"fine_labels"][:3] == [0, 1, 2] and isinstance(plain[b"filenames"][0], bytes)


def test_cifar100_fine_labels(cifar100_root):
    s = load_splits(cifar100_root, dataset="cifar100", download=False)
    assert s.source == (cifar100_root / CIFAR100_DIRNAME).resolve()
    assert s.train_x.shape == (45_000, 3, 32, 32) and s.val_x.shape == (5_000, 3, 32, 32) and s.test_x.shape == (10_000, 3, 32, 32)
    assert int(s.train_y.min()) == 0 and int(s.train_y.max()) == 99
    assert s.train_y.tolist() == [i % 100 for i in range(45_000)]
    assert s.val_y.tolist() == [i % 100 for i in range(45_000, 50_000)]
    # Row layout: 1024 red, 1024 green, 1024 blue (all i % 256 here), channel-major NCHW.
    assert s.val_x[:, :, 5, 7].tolist() == [[i % 256] * 3 for i in range(45_000, 50_000)]


def test_cifar100_coarse_labels(cifar100_root):
    coarse = load_splits(cifar100_root, dataset="cifar100", download=False, labels="coarse")
    fine = load_splits(cifar100_root, dataset="cifar100", download=False)
    assert int(coarse.train_y.max()) == 19 and int(coarse.test_y.max()) == 19
    assert torch.equal(coarse.train_y, fine.train_y // 5)
    assert torch.equal(coarse.train_x, fine.train_x)
    assert coarse.fingerprint != fine.fingerprint
    assert DataConfig(dataset="cifar100", labels="coarse").classes == 20
    assert DataConfig(dataset="cifar100").classes == 100


def test_cli_cifar100_run_trains_a_100_way_model(cifar100_root, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    done = lth_cli("run", "--preset", "quick", "--data.dataset", "cifar100", "--data-dir", str(cifar100_root),
                   "--data.train_size", "20", "--data.val_size", "20", "--data.test_size", "20",
                   "--train.initial_epochs", "1", "--train.epochs", "1", "--rounds", "0", "--no-energy", "--no-progress",
                   "--train.channels_last", "false",  # skip the memory-layout measurement (outside the hash)
                   "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    final = load_file(str(out / "checkpoints" / "round_00" / "final.safetensors"))
    assert final["output.weight"].shape == (100, 256) and final["output.bias"].shape == (100,)
    assert final["features.0.weight"].shape[1] == 3
    init = load_file(str(out / "checkpoints" / "init.safetensors"))
    assert init["output.weight"].shape == (100, 256)
    assert 'dataset = "cifar100"' in (out / "config.toml").read_text()


def lying_cifar100(cifar100_root: Path, dest: Path, name: str, content: bytes) -> Path:
    folder = link_folder(cifar100_root / CIFAR100_DIRNAME, dest, skip=(name,))
    (folder / name).write_bytes(content)
    return folder / name


def test_cifar100_fine_label_100_refused(cifar100_root, tmp_path):
    d = cifar100_dict(10_000, "testing")
    d[b"fine_labels"][-1] = 100
    bad = lying_cifar100(cifar100_root, tmp_path / "c", "test", official_pickle(d))
    with pytest.raises(DataError, match="labels span 0..100, expected 0..99") as err:
        load_splits(tmp_path / "c", dataset="cifar100", download=False)
    assert str(bad) in one_line(err)
    # The coarse labels of the same file are fine: the check is of the label set in use.
    assert load_cifar100(tmp_path / "c", "coarse")[3].max() == 19


def test_cifar100_short_train_file_refused(cifar100_root, tmp_path):
    bad = lying_cifar100(cifar100_root, tmp_path / "c", "train", official_pickle(cifar100_dict(49_999, "training")))
    with pytest.raises(DataError, match="49999 rows, expected 50000") as err:
        load_splits(tmp_path / "c", dataset="cifar100", download=False)
    assert str(bad) in one_line(err)


def test_cifar100_forbidden_global_refused_and_exploit_is_live(cifar100_root, tmp_path):
    marker = tmp_path / "pwned"
    evil = f"cos\nsystem\n(Vtouch {marker}\ntR.".encode()
    # The payload is real: plain pickle runs it.
    pickle.loads(evil)
    assert marker.exists()
    marker.unlink()
    bad = lying_cifar100(cifar100_root, tmp_path / "c", "train", evil)
    with pytest.raises(DataError, match="forbidden global os.system") as err:
        load_splits(tmp_path / "c", dataset="cifar100", download=False)
    assert str(bad) in one_line(err)
    assert not marker.exists(), "the exploit ran"
    assert ("os", "system") not in ALLOWED_GLOBALS


def test_ensure_cifar100_archive_download(cifar100_root, tmp_path):
    archive = tmp_path / "src" / "cifar-100-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        tar.add(cifar100_root / CIFAR100_DIRNAME, arcname=CIFAR100_DIRNAME)
    root = tmp_path / "root"
    out = ensure("cifar100", root, urls=[archive.as_uri()], md5={"cifar-100-python.tar.gz": md5_of(archive)})
    assert out == root / CIFAR100_DIRNAME
    assert sorted(p.name for p in root.iterdir()) == [CIFAR100_DIRNAME]  # no temporary folder left
    assert sorted(p.name for p in out.iterdir()) == ["meta", "test", "train"]
    assert fingerprint(out.resolve(), "cifar100") == fingerprint((cifar100_root / CIFAR100_DIRNAME).resolve(), "cifar100")
    # A wrong digest leaves nothing behind.
    other = tmp_path / "other"
    with pytest.raises(DataError, match="MD5 mismatch") as err:
        ensure("cifar100", other, urls=[archive.as_uri()], md5={"cifar-100-python.tar.gz": "0" * 32})
    one_line(err)
    assert list(other.iterdir()) == []


# --------------------------------------------------------------------------- models


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize(("shape", "classes"), [((1, 28, 28), 10), ((3, 32, 32), 100)])
def test_every_model_builds_for_every_image_shape(name, shape, classes):
    if name == "vgg16" and shape[1] < 32:
        with pytest.raises(ValueError, match="28×28"):
            build_model(name, 0, shape, classes)
        return
    model = build_model(name, 0, shape, classes).eval()
    with torch.no_grad():
        logits = model(torch.zeros(2, *shape))
    assert logits.shape == (2, classes)
    assert output_layer(model).out_features == classes


def test_config_model_names_and_data_set_table_match_the_registries():
    assert set(cfgmod.MODELS) == set(MODELS)
    assert set(DATASET_SIZES) == set(DATASETS)
    for name, (train, test, channels, side) in DATASET_SIZES.items():
        spec = DATASETS[name]
        assert (spec.train, spec.test, spec.shape) == (train, test, (channels, side, side)), name
        assert DataConfig(dataset=name).image_shape == spec.shape
        assert DataConfig(dataset=name).classes == spec.classes["fine"]


def test_config_refuses_vgg16_on_mnist():
    with pytest.raises(ConfigError) as err:
        cfgmod.apply_overrides(cfgmod.preset("vgg16-quick"), {"data.dataset": "mnist"})
    assert str(err.value).startswith("model:") and "28×28" in one_line(err)
    with pytest.raises(ConfigError, match="^model:"):
        cfgmod.Config(model="vgg16", data=DataConfig(dataset="mnist"))
    assert cfgmod.Config(model="resnet20", data=DataConfig(dataset="mnist")).data.image_shape == (1, 28, 28)


def test_lenet_300_100_on_mnist():
    config = cfgmod.preset("lenet")
    assert config.model == "lenet-300-100" and config.data.dataset == "mnist"
    model = model_for(config, 0)
    assert sum(p.numel() for p in model.parameters()) == 266_610
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 300), (300, 100), (100, 10)]
    for m in linears:
        assert torch.count_nonzero(m.bias) == 0
        expected = math.sqrt(2 / (m.in_features + m.out_features))
        std = m.weight.std().item()
        assert abs(std / expected - 1) < 0.05, (m, std, expected)
        assert abs(m.weight.mean().item()) < 0.1 * expected
    # θ0 is the seed's alone.
    again = build_model("lenet-300-100", 0, (1, 28, 28), 10)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


# --------------------------------------------------------------------------- normalisation, label sets


def test_input_transform_normalises_per_channel():
    f = input_transform(((0.5,), (0.25,)), "cpu")
    images = torch.tensor([[[[0, 255]]]], dtype=torch.uint8)
    out = f(images)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[[[-2.0, 2.0]]]]))
    assert images.tolist() == [[[[0, 255]]]]
    rgb = input_transform(((0.0, 0.5, 1.0), (1.0, 0.5, 0.25)), "cpu")(torch.full((1, 3, 1, 1), 255, dtype=torch.uint8))
    torch.testing.assert_close(rgb.flatten(), torch.tensor([1.0, 1.0, 0.0]))
    assert input_transform(None, "cpu")(images).tolist() == [[[[0.0, 1.0]]]]


def test_config_refuses_imagenet_normalisation_of_grey_images():
    with pytest.raises(ConfigError) as err:
        cfgmod.apply_overrides(cfgmod.preset("lenet"), {"data.dataset": "fashion-mnist", "data.normalize": "imagenet"})
    assert one_line(err).startswith("data.normalize:")
    ok = cfgmod.apply_overrides(cfgmod.preset("lenet"), {"data.dataset": "fashion-mnist", "data.normalize": "dataset"})
    assert ok.data.normalize == "dataset"


def test_config_refuses_coarse_labels_outside_cifar100():
    with pytest.raises(ConfigError) as err:
        cfgmod.apply_overrides(cfgmod.preset("quick"), {"data.labels": "coarse"})
    assert one_line(err).startswith("data.labels:") and "cifar100" in str(err.value)
    ok = cfgmod.apply_overrides(cfgmod.preset("quick"), {"data.dataset": "cifar100", "data.labels": "coarse"})
    assert ok.data.classes == 20


def test_cli_lenet_quick_on_debians_fashion_mnist(fashion_dir, tmp_path):
    """The issue's command, `lth run --preset lenet-quick --data.dataset fashion-mnist --data-dir
    /usr/share/datasets`, cut to 300 iterations a round and 1 pruning round: LeNet trains on the
    real files, round 1 prunes 20% of the hidden layers and 10% of the output layer."""
    out = tmp_path / "run"
    proc = lth_cli("run", "--preset", "lenet-quick", "--data.dataset", "fashion-mnist", "--data-dir", str(fashion_dir.parent),
                   "--train.steps", "300", "--train.eval_every", "100", "--rounds", "1", "--no-energy", "--no-progress",
                   "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import csv

    rows = list(csv.DictReader((out / "rounds.csv").open()))
    assert [int(r["weights_remaining"]) for r in rows] == [266_200, 188_160 + 24_000 + 900]
    assert float(rows[0]["test_acc_best"]) > 0.6  # 300 Adam steps on real Fashion-MNIST: far above chance (0.1)
    manifest = __import__("json").loads((out / "manifest.json").read_text())
    assert manifest["data"]["dataset"] == "fashion-mnist" and manifest["data"]["dir"] == str(fashion_dir)
