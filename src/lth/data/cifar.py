"""CIFAR-10 and CIFAR-100 in their official python layouts: pickles of numpy arrays, read by an
unpickler that rebuilds numpy arrays and nothing else (pickle can run code; a data file must
not). Every file's content is checked (dtype, shape, label count and range, row count), so a
truncated or lying file is refused in one line naming it."""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from lth.data.fetch import DATA_ENV_VAR, DataError

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

ROW_SIZE = 3 * 32 * 32
IMAGE_SHAPE = (3, 32, 32)

# CIFAR-10: `cifar-10-batches-py/`, five training batches of 10,000 and a test batch.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
BATCHES_DIRNAME = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
REQUIRED_FILES = (*TRAIN_FILES, TEST_FILE, META_FILE)
ROWS_PER_BATCH = 10_000

# CIFAR-100: `cifar-100-python/`, one training file of 50,000 and a test file of 10,000, each
# with fine (100) and coarse (20) labels.
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
CIFAR100_DIRNAME = "cifar-100-python"
CIFAR100_FILES = ("train", "test", "meta")
CIFAR100_ROWS = {"train": 50_000, "test": 10_000}
CIFAR100_CLASSES = {"fine": 100, "coarse": 20}

# The only globals a CIFAR batch references: numpy's ndarray-rebuilding pieces under numpy 1
# (official archive) and numpy 2 (re-pickled) names, mapped to objects so numpy 2 never warns.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # Python 3's protocol 2 writes bytes as _codecs.encode(text, "latin1"): a pure function, so a
    # user's own re-pickled copy loads too.
    ("_codecs", "encode"): codecs.encode,
}


class BatchUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and nothing else."""

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise DataError(f"{self._path}: refusing forbidden global {module}.{name} in pickle; "
                            "the file is not a CIFAR batch, delete it and re-download")
        return ALLOWED_GLOBALS[(module, name)]


def read_pickle(path: Path, what: str) -> Any:
    """A data pickle through `BatchUnpickler`; every failure is one `DataError` naming the file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return BatchUnpickler(f, path).load()
    except DataError:
        raise
    except FileNotFoundError as exc:
        raise DataError(f"{path} is missing; re-download {what} or fix --data-dir / {DATA_ENV_VAR}") from exc
    except Exception as exc:  # a corrupt pickle can fail in many ways; all mean "bad file"
        raise DataError(f"{path} is corrupt or truncated ({type(exc).__name__}: {exc}); delete it and re-download") from exc


def check_batch(obj: Any, path: Path, labels_key: bytes, classes: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 3, 32, 32) and int64 labels (N,) from one decoded batch dict, or a
    `DataError` saying what is wrong with it."""

    def bad(problem: str) -> DataError:
        return DataError(f"{path}: {problem}; not a valid {what} file, delete it and re-download")

    if not isinstance(obj, dict):
        raise bad(f"expected a dict, got {type(obj).__name__}")
    if b"data" not in obj or labels_key not in obj:
        raise bad(f"missing key b'data' or {labels_key!r} (keys: {sorted(map(repr, obj))})")
    data, labels = obj[b"data"], obj[labels_key]
    if not isinstance(data, np.ndarray):
        raise bad(f"b'data' is a {type(data).__name__}, expected a numpy array")
    if data.dtype != np.uint8:
        raise bad(f"b'data' has dtype {data.dtype}, expected uint8")
    if data.ndim != 2 or data.shape[1] != ROW_SIZE:
        raise bad(f"b'data' has shape {data.shape}, expected (N, {ROW_SIZE})")
    if not isinstance(labels, list):
        raise bad(f"{labels_key!r} is a {type(labels).__name__}, expected a list of ints")
    if any(type(v) is not int for v in labels):
        raise bad(f"{labels_key!r} holds a non-int value")
    if len(labels) != data.shape[0]:
        raise bad(f"{len(labels)} labels for {data.shape[0]} images")
    if labels and not (0 <= min(labels) and max(labels) < classes):
        raise bad(f"labels span {min(labels)}..{max(labels)}, expected 0..{classes - 1}")
    return np.ascontiguousarray(data).reshape(-1, *IMAGE_SHAPE), np.asarray(labels, dtype=np.int64)


def load_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read and check one CIFAR-10 batch file. Any row count is accepted (``load_cifar10``
    insists on 10,000) so small test batches load."""
    return check_batch(read_pickle(path, "CIFAR-10"), Path(path), b"labels", 10, "CIFAR-10 batch")


def load_cifar10(batches_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_x, train_y, test_x, test_y); each batch must hold 10,000 rows, so a truncated copy cannot pass."""
    parts = []
    for name in (*TRAIN_FILES, TEST_FILE):
        path = Path(batches_dir) / name
        x, y = load_batch(path)
        if len(x) != ROWS_PER_BATCH:
            raise DataError(f"{path}: {len(x)} rows, expected {ROWS_PER_BATCH}; "
                            "the copy is incomplete, delete it and re-download")
        parts.append((x, y))
    test_x, test_y = parts.pop()
    return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts]), test_x, test_y


def load_cifar100(folder: Path, labels: str = "fine") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_x, train_y, test_x, test_y) with the fine (100) or coarse (20) labels; the files
    must hold 50,000 and 10,000 rows."""
    arrays = []
    for name in ("train", "test"):
        path = Path(folder) / name
        x, y = check_batch(read_pickle(path, "CIFAR-100"), path, f"{labels}_labels".encode(), CIFAR100_CLASSES[labels], "CIFAR-100")
        if len(x) != CIFAR100_ROWS[name]:
            raise DataError(f"{path}: {len(x)} rows, expected {CIFAR100_ROWS[name]}; the copy is incomplete, delete it and re-download")
        arrays += [x, y]
    return arrays[0], arrays[1], arrays[2], arrays[3]
