"""CIFAR-10: find, download, verify, load and split (DESIGN §1 "Data", §7).

The data set lives in the official python-batch layout (``cifar-10-batches-py``). Everything
that touches the disk or the network sits in a few edge functions (``ensure_cifar10``,
``load_batch``); splitting and slicing are pure. Images stay uint8 until they are on the
training device, where ``to_float`` scales them, so only a quarter of the bytes cross to it.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import platformdirs
import torch
from tqdm import tqdm

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
BATCHES_DIRNAME = "cifar-10-batches-py"
DATA_ENV_VAR = "LTH_DATA_DIR"

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
REQUIRED_FILES = (*TRAIN_FILES, TEST_FILE, META_FILE)

NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)
ROW_SIZE = 3 * 32 * 32
ROWS_PER_BATCH = 10_000
VAL_SIZE = 5_000

_CHUNK = 1 << 20
_TMP_PREFIX = ".lth-cifar10-"


class DataError(Exception):
    """A data problem the user can fix; the message is one line naming the file and the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(_one_line(message))


def _one_line(text: object) -> str:
    """Collapse whitespace so a message (or a wrapped exception's text) stays on one line."""
    return " ".join(str(text).split())


# --------------------------------------------------------------------------- locating


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the data lives: the explicit argument, else $LTH_DATA_DIR, else the user cache.

    Offline machines point LTH_DATA_DIR at a shared copy; everyone else gets a per-user cache
    so a download happens once per machine, not once per project checkout.
    """
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_ENV_VAR, "")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("lth")) / "data"


def _is_complete(directory: Path) -> bool:
    return directory.is_dir() and all((directory / name).is_file() for name in REQUIRED_FILES)


def find_batches_dir(root: Path) -> Path | None:
    """The complete batches dir under ``root`` (or ``root`` itself), else None.

    Accepting both spellings lets users point at either the parent they downloaded into or the
    extracted folder. Incomplete folders count as absent so they are never half-used.
    """
    root = Path(root)
    for candidate in (root / BATCHES_DIRNAME, root):
        if _is_complete(candidate):
            return candidate
    return None


# --------------------------------------------------------------------------- download


def ensure_cifar10(
    root: Path,
    download: bool = True,
    url: str = CIFAR10_URL,
    md5: str = CIFAR10_MD5,
) -> Path:
    """Return the batches dir under ``root``, downloading and extracting it if needed.

    The archive is checked against its MD5 before it is opened, extracted into a temporary
    folder inside ``root`` and moved into place with one ``os.rename``: an interrupted run
    leaves either nothing or a complete folder, never a half-extracted tree.
    """
    root = Path(root)
    found = find_batches_dir(root)
    if found is not None:
        return found
    target = root / BATCHES_DIRNAME
    if target.exists():
        missing = [n for n in REQUIRED_FILES if not (target / n).is_file()]
        raise DataError(
            f"{target} is incomplete (missing {', '.join(missing)}); "
            "delete it to re-download, or point --data-dir / LTH_DATA_DIR at a complete copy"
        )
    if not download:
        raise DataError(
            f"CIFAR-10 not found in {root} (expected {BATCHES_DIRNAME}/ with {', '.join(REQUIRED_FILES)}); "
            f"pass --data-dir or set {DATA_ENV_VAR} to a folder that has it, or allow downloading"
        )

    root.mkdir(parents=True, exist_ok=True)
    archive: Path | None = None
    extract_dir: Path | None = None
    try:
        fd, name = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=".tar.gz.part", dir=root)
        os.close(fd)
        archive = Path(name)
        digest = _download(url, archive)
        if digest != md5.lower():
            raise DataError(
                f"MD5 mismatch for {url}: got {digest}, expected {md5}; "
                "the download is corrupt or not CIFAR-10, retry or fetch it by hand"
            )
        extract_dir = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, suffix=".extract", dir=root))
        _safe_extract(archive, extract_dir, source=url)
        extracted = extract_dir / BATCHES_DIRNAME
        if not _is_complete(extracted):
            raise DataError(
                f"archive from {url} has no complete {BATCHES_DIRNAME}/ folder; "
                "check the URL points at the CIFAR-10 python archive"
            )
        try:
            os.rename(extracted, target)
        except OSError as exc:
            # Another process may have finished the same download first: use its copy.
            if not _is_complete(target):
                raise DataError(
                    f"cannot move the extracted data to {target}: {exc}; check that folder"
                ) from exc
        return target
    finally:
        if archive is not None:
            archive.unlink(missing_ok=True)
        if extract_dir is not None:
            shutil.rmtree(extract_dir, ignore_errors=True)


def _download(url: str, dest: Path) -> str:
    """Stream ``url`` to ``dest`` with a progress bar; return the hex MD5 of what was written."""
    md5 = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(url) as response, open(dest, "wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024,
                desc="Downloading CIFAR-10", disable=None, leave=False,
            ) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    md5.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DataError(
            f"could not download {url}: {exc}; check the network, or download the archive "
            f"yourself and point --data-dir / {DATA_ENV_VAR} at the extracted folder"
        ) from exc
    return md5.hexdigest()


def _check_member(member: tarfile.TarInfo, source: str) -> None:
    """Refuse members that could write outside the extraction folder or aren't plain data."""
    path = PurePosixPath(member.name)
    if path.is_absolute() or member.name.startswith(("/", "\\")) or ".." in path.parts:
        raise DataError(f"unsafe path {member.name!r} in archive {source}; refusing to extract it")
    if not (member.isfile() or member.isdir()):
        raise DataError(
            f"archive {source} has a link or special file {member.name!r}; refusing to extract it"
        )


def _safe_extract(archive: Path, dest: Path, source: str) -> None:
    """Extract after checking every member; the stdlib 'data' filter adds a second guard."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, source)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # pragma: no cover - Python without PEP 706 backports
                tar.extractall(dest, members=members)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(
            f"cannot extract archive from {source}: {exc}; "
            "the archive is damaged or unsafe, retry the download"
        ) from exc


# --------------------------------------------------------------------------- unpickling


def _numpy_reconstruct() -> Any:
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return _reconstruct


# The only globals a CIFAR-10 batch references: the pieces numpy uses to rebuild an ndarray,
# under their numpy 1 names (the official archive) and numpy 2 names (re-pickled copies).
# Mapping to objects (rather than importing by name) avoids numpy 2's numpy.core deprecation.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays and nothing else: a batch file cannot run code."""

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"{self._path}: refusing forbidden global {module}.{name} in pickle; "
                "the file is not a CIFAR-10 batch, delete it and re-download"
            ) from None


def _unpickle(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            return _BatchUnpickler(f, path).load()
    except DataError:
        raise
    except FileNotFoundError as exc:
        raise DataError(
            f"{path} is missing; re-download CIFAR-10 or fix --data-dir / {DATA_ENV_VAR}"
        ) from exc
    except Exception as exc:  # a corrupt pickle can fail in many ways; all mean "bad file"
        raise DataError(
            f"{path} is corrupt or truncated ({type(exc).__name__}: {exc}); delete it and re-download"
        ) from exc


def _validate_batch(obj: Any, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Check a decoded batch against the CIFAR-10 format and return (images NCHW, labels)."""

    def bad(problem: str) -> DataError:
        return DataError(f"{path}: {problem}; not a valid CIFAR-10 batch, delete it and re-download")

    if not isinstance(obj, dict):
        raise bad(f"expected a dict, got {type(obj).__name__}")
    if b"data" not in obj or b"labels" not in obj:
        raise bad(f"missing key b'data' or b'labels' (keys: {sorted(map(repr, obj))})")
    data, labels = obj[b"data"], obj[b"labels"]
    if not isinstance(data, np.ndarray):
        raise bad(f"b'data' is a {type(data).__name__}, expected a numpy array")
    if data.dtype != np.uint8:
        raise bad(f"b'data' has dtype {data.dtype}, expected uint8")
    if data.ndim != 2 or data.shape[1] != ROW_SIZE:
        raise bad(f"b'data' has shape {data.shape}, expected (N, {ROW_SIZE})")
    if not isinstance(labels, list):
        raise bad(f"b'labels' is a {type(labels).__name__}, expected a list of ints")
    if any(type(v) is not int for v in labels):
        raise bad("b'labels' holds a non-int value")
    if len(labels) != data.shape[0]:
        raise bad(f"{len(labels)} labels for {data.shape[0]} images")
    if labels and not (0 <= min(labels) and max(labels) < NUM_CLASSES):
        raise bad(f"labels span {min(labels)}..{max(labels)}, expected 0..{NUM_CLASSES - 1}")
    images = np.ascontiguousarray(data).reshape(-1, *IMAGE_SHAPE)
    return images, np.asarray(labels, dtype=np.int64)


def load_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch file: uint8 images (N, 3, 32, 32) and int64 labels (N,).

    Pickle can run arbitrary code, so only numpy's array-rebuilding globals are allowed; the
    row count is left to ``load_cifar10`` so small batches of the same format also load.
    """
    path = Path(path)
    return _validate_batch(_unpickle(path), path)


def load_cifar10(batches_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Load all of CIFAR-10: (train_x, train_y, test_x, test_y), training batches 1..5 in order.

    Each batch must hold exactly 10,000 rows so a truncated-but-parseable copy cannot pass
    silently as a smaller data set.
    """
    batches_dir = Path(batches_dir)

    def load_full(name: str) -> tuple[np.ndarray, np.ndarray]:
        x, y = load_batch(batches_dir / name)
        if len(x) != ROWS_PER_BATCH:
            raise DataError(
                f"{batches_dir / name}: {len(x)} rows, expected {ROWS_PER_BATCH}; "
                "the copy is incomplete, delete it and re-download"
            )
        return x, y

    parts = [load_full(name) for name in TRAIN_FILES]
    train_x = np.concatenate([x for x, _ in parts])
    train_y = np.concatenate([y for _, y in parts])
    test_x, test_y = load_full(TEST_FILE)
    return train_x, train_y, test_x, test_y


@functools.lru_cache(maxsize=2)
def _load_cifar10_cached(batches_dir: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Decode once per process: unpickling 180 MB takes seconds, tests and studies reload often."""
    return load_cifar10(Path(batches_dir))


# --------------------------------------------------------------------------- splits


@dataclass(frozen=True, eq=False)
class Splits:
    """Train / validation / test tensors on the training device: images uint8 NCHW, labels int64.

    ``eq=False`` because element-wise tensor comparison has no single truth value.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def split_train_val(
    train_x: np.ndarray, train_y: np.ndarray, val_size: int = VAL_SIZE
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split off the LAST ``val_size`` rows as validation (Keras ``validation_split``).

    Returns (train_x, train_y, val_x, val_y) as views; deterministic, no shuffling, as in the
    seed study.
    """
    if len(train_x) != len(train_y):
        raise ValueError(f"{len(train_x)} images but {len(train_y)} labels")
    if not 0 < val_size < len(train_x):
        raise ValueError(f"val_size must be in 1..{len(train_x) - 1}, got {val_size}")
    cut = len(train_x) - val_size
    return train_x[:cut], train_y[:cut], train_x[cut:], train_y[cut:]


def _take(n: int | None, available: int, what: str) -> int:
    if n is None:
        return available
    if n < 1 or n > available:
        raise DataError(f"{what}={n} is out of range; choose 1..{available} (or leave it unset for all)")
    return n


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    # copy=True: the cached arrays must never alias tensors a caller may modify in place.
    return torch.from_numpy(array).to(device, copy=True)


def load_splits(
    data_dir: str | os.PathLike[str] | None = None,
    device: torch.device | str = "cpu",
    train_size: int | None = None,
    val_size: int | None = None,
    test_size: int | None = None,
    download: bool = True,
) -> Splits:
    """Resolve, fetch if needed, load and split CIFAR-10 (45k / 5k / 10k) onto ``device``.

    The optional sizes keep the first rows of each part (None = all) for quick smoke runs;
    the split itself never changes, so a smoke run validates on real validation images.
    """
    batches_dir = ensure_cifar10(resolve_data_dir(data_dir), download=download)
    train_x, train_y, test_x, test_y = _load_cifar10_cached(str(batches_dir.resolve()))
    tr_x, tr_y, va_x, va_y = split_train_val(train_x, train_y, VAL_SIZE)
    n_tr = _take(train_size, len(tr_x), "train_size")
    n_va = _take(val_size, len(va_x), "val_size")
    n_te = _take(test_size, len(test_x), "test_size")
    dev = torch.device(device)
    return Splits(
        train_x=_to_device(tr_x[:n_tr], dev),
        train_y=_to_device(tr_y[:n_tr], dev),
        val_x=_to_device(va_x[:n_va], dev),
        val_y=_to_device(va_y[:n_va], dev),
        test_x=_to_device(test_x[:n_te], dev),
        test_y=_to_device(test_y[:n_te], dev),
    )


def to_float(images_uint8: torch.Tensor) -> torch.Tensor:
    """Scale uint8 images to float32 in [0, 1] on the tensor's own device.

    Scaling happens on the training device so only uint8 (a quarter of the bytes) crosses to it.
    """
    if images_uint8.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images_uint8.dtype}")
    return images_uint8.float().div_(255)
