"""CIFAR-10: find, download, verify, load and split (DESIGN §1 "Data", §7). Disk and network stay in
``ensure_cifar10`` and ``load_batch``; splitting and slicing are pure. Images stay uint8 until
``to_float`` runs on the training device, so a quarter of the bytes cross."""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
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
import torch.nn.functional as F
from tqdm import tqdm

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

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


class DataError(Exception):
    """A data problem the user can fix; the message is one line naming the file and the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))  # wrapped exception texts may span lines


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data folder: the argument, else $LTH_DATA_DIR, else the per-user cache (one download per machine).
    Made absolute here, where it is read, so a later chdir or subprocess cannot re-interpret it."""
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get(DATA_ENV_VAR) or Path(platformdirs.user_cache_dir("lth")) / "data"
    return Path(data_dir).expanduser().resolve()


def _missing(directory: Path) -> list[str]:
    return [name for name in REQUIRED_FILES if not (directory / name).is_file()]


def find_batches_dir(root: Path) -> Path | None:
    """The complete batches dir under ``root`` or ``root`` itself (users point at either), else None."""
    root = Path(root)
    return next((d for d in (root / BATCHES_DIRNAME, root) if not _missing(d)), None)


def ensure_cifar10(root: Path, download: bool = True, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5) -> Path:
    """Return the batches dir under ``root``, downloading, MD5-checking and extracting it if needed.
    The work happens in a temporary folder inside ``root``, moved into place with one ``os.rename``, so
    an interrupted run leaves either nothing or a complete folder."""
    root = Path(root)
    if (found := find_batches_dir(root)) is not None:
        return found
    target = root / BATCHES_DIRNAME
    if target.exists():
        raise DataError(f"{target} is incomplete (missing {', '.join(_missing(target))}); delete it to "
                        f"re-download, or point --data-dir / {DATA_ENV_VAR} at a complete copy")
    if not download:
        raise DataError(f"CIFAR-10 not found in {root} (expected {BATCHES_DIRNAME}/ with {', '.join(REQUIRED_FILES)}); "
                        f"pass --data-dir or set {DATA_ENV_VAR} to a folder that has it, or allow downloading")

    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".lth-cifar10-", dir=root, ignore_cleanup_errors=True) as tmp:
        work = Path(tmp)
        archive = work / "cifar-10-python.tar.gz"
        digest = _download(url, archive)
        if digest != md5.lower():
            raise DataError(f"MD5 mismatch for {url}: got {digest}, expected {md5}; "
                            "the download is corrupt or not CIFAR-10, retry or fetch it by hand")
        _safe_extract(archive, work / "extracted", source=url)
        extracted = work / "extracted" / BATCHES_DIRNAME
        if _missing(extracted):
            raise DataError(f"archive from {url} has no complete {BATCHES_DIRNAME}/ folder; "
                            "check the URL points at the CIFAR-10 python archive")
        try:
            os.rename(extracted, target)
        except OSError as exc:
            if _missing(target):  # else another process finished the same download first: use its copy
                raise DataError(f"cannot move the extracted data to {target}: {exc}; check that folder") from exc
        return target


def _download(url: str, dest: Path) -> str:
    """Stream ``url`` to ``dest`` with a progress bar; return the hex MD5 of what was written."""
    md5 = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(url) as response, open(dest, "wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                      desc="Downloading CIFAR-10", disable=None, leave=False) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    md5.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DataError(f"could not download {url}: {exc}; check the network, or download the archive "
                        f"yourself and point --data-dir / {DATA_ENV_VAR} at the extracted folder") from exc
    return md5.hexdigest()


def _safe_extract(archive: Path, dest: Path, source: str) -> None:
    """Extract only plain files and folders that stay inside ``dest``; the stdlib 'data' filter is a second guard."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                path = PurePosixPath(member.name)
                if path.is_absolute() or member.name.startswith(("/", "\\")) or ".." in path.parts:
                    raise DataError(f"unsafe path {member.name!r} in archive {source}; refusing to extract it")
                if not (member.isfile() or member.isdir()):
                    raise DataError(f"archive {source} has a link or special file {member.name!r}; "
                                    "refusing to extract it")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # pragma: no cover - Python without PEP 706 backports
                tar.extractall(dest, members=members)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"cannot extract archive from {source}: {exc}; "
                        "the archive is damaged or unsafe, retry the download") from exc


# The only globals a CIFAR-10 batch references: numpy's ndarray-rebuilding pieces under numpy 1 (official
# archive) and numpy 2 (re-pickled) names, mapped to objects so numpy 2 never warns about numpy.core.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _BatchUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and nothing else: pickle can run code, a batch file must not."""

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise DataError(f"{self._path}: refusing forbidden global {module}.{name} in pickle; "
                            "the file is not a CIFAR-10 batch, delete it and re-download")
        return _ALLOWED_GLOBALS[(module, name)]


def load_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read and check one batch file: uint8 images (N, 3, 32, 32) and int64 labels (N,). Any row
    count is accepted (``load_cifar10`` insists on 10,000) so small test batches load."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            obj = _BatchUnpickler(f, path).load()
    except DataError:
        raise
    except FileNotFoundError as exc:
        raise DataError(f"{path} is missing; re-download CIFAR-10 or fix --data-dir / {DATA_ENV_VAR}") from exc
    except Exception as exc:  # a corrupt pickle can fail in many ways; all mean "bad file"
        raise DataError(f"{path} is corrupt or truncated ({type(exc).__name__}: {exc}); "
                        "delete it and re-download") from exc

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
    return np.ascontiguousarray(data).reshape(-1, *IMAGE_SHAPE), np.asarray(labels, dtype=np.int64)


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


# Decode once per resolved folder and process: unpickling 180 MB takes seconds; tests and studies reload often.
_load_cifar10_cached = functools.lru_cache(maxsize=2)(load_cifar10)


@functools.lru_cache(maxsize=2)
def fingerprint(batches_dir: Path) -> str:
    """A digest of the decoded images and labels (not of the files, so a re-pickled copy of the
    same data matches): what a run records, so that resuming on another data set is refused."""
    digest = hashlib.sha256()
    for array in _load_cifar10_cached(batches_dir):
        digest.update(np.ascontiguousarray(array).data)
    return "sha256:" + digest.hexdigest()[:16]


@dataclass(frozen=True, eq=False)  # eq=False: tensor comparison has no single truth value
class Splits:
    """Train / validation / test tensors on the training device: images uint8 NCHW, labels int64."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: Path | None = None  # the batches folder they came from, and its `fingerprint`
    fingerprint: str = ""


def split_train_val(train_x: np.ndarray, train_y: np.ndarray,
                    val_size: int = VAL_SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Keras ``validation_split``: the LAST ``val_size`` rows validate; no shuffling, as in the seed study."""
    if len(train_x) != len(train_y):
        raise ValueError(f"{len(train_x)} images but {len(train_y)} labels")
    if not 0 < val_size < len(train_x):
        raise ValueError(f"val_size must be in 1..{len(train_x) - 1}, got {val_size}")
    cut = len(train_x) - val_size
    return train_x[:cut], train_y[:cut], train_x[cut:], train_y[cut:]


def load_splits(data_dir: str | os.PathLike[str] | None = None, device: torch.device | str = "cpu",
                train_size: int | None = None, val_size: int | None = None, test_size: int | None = None,
                download: bool = True) -> Splits:
    """Resolve, fetch if needed, load and split CIFAR-10 (45k / 5k / 10k) onto ``device``. The optional
    sizes keep the first rows of each part (None = all) for quick smoke runs; the split itself never
    changes, so a smoke run still validates on real validation images."""
    batches_dir = ensure_cifar10(resolve_data_dir(data_dir), download=download)
    train_x, train_y, test_x, test_y = _load_cifar10_cached(batches_dir.resolve())
    tr_x, tr_y, va_x, va_y = split_train_val(train_x, train_y, VAL_SIZE)
    dev = torch.device(device)

    def head(x: np.ndarray, y: np.ndarray, n: int | None, what: str) -> list[torch.Tensor]:
        if n is not None and not 1 <= n <= len(x):
            raise DataError(f"{what}={n} is out of range; choose 1..{len(x)} (or leave it unset for all)")
        # copy=True: the cached arrays must never alias tensors a caller may modify in place.
        return [torch.from_numpy(a[:n]).to(dev, copy=True) for a in (x, y)]

    return Splits(*head(tr_x, tr_y, train_size, "train_size"), *head(va_x, va_y, val_size, "val_size"),
                  *head(test_x, test_y, test_size, "test_size"), source=batches_dir.resolve(), fingerprint=fingerprint(batches_dir.resolve()))


def crop_flip(images_uint8: torch.Tensor, params: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Random-crop (zero padding `pad`) and mirror a batch on its own device, as one gather: image
    i of `images_uint8` [..., C, H, W] becomes the H×W window at (row, column) offsets params[i, :2]
    of its padded copy, read right to left when params[i, 2] is 1 (`lth.seeds.epoch_augmentation`
    draws them). Integer indexing only, so it is exact and the same on every device."""
    *lead, channels, height, width = images_uint8.shape
    x = F.pad(images_uint8.reshape(-1, channels, height, width), (pad, pad, pad, pad))
    p = params.reshape(-1, 3).to(images_uint8.device)
    rows = p[:, :1] + torch.arange(height, device=x.device)
    ahead = torch.arange(width, device=x.device)
    cols = p[:, 1:2] + torch.where(p[:, 2:].bool(), width - 1 - ahead, ahead)
    batch = torch.arange(x.shape[0], device=x.device)[:, None, None]
    out = x.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # [N, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous().reshape(*lead, channels, height, width)


def to_float(images_uint8: torch.Tensor) -> torch.Tensor:
    """Scale uint8 images to float32 in [0, 1] on the tensor's own device (see the module docstring)."""
    if images_uint8.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images_uint8.dtype}")
    return images_uint8.float().div_(255)
