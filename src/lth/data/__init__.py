"""The data sets (DESIGN §1 "Data", §7): CIFAR-10, CIFAR-100, MNIST and Fashion-MNIST, each found
in its official layout under the data folder, downloaded and verified if absent, loaded, split
and sliced. Disk and network stay in `lth.data.fetch` and the format readers (`lth.data.cifar`,
`lth.data.idx`); splitting and slicing are pure. Images stay uint8 until `to_float` runs on the
training device, so a quarter of the bytes cross."""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lth.config import DataConfig

from lth.data.cifar import (BATCHES_DIRNAME, CIFAR10_MD5, CIFAR10_URL, CIFAR100_DIRNAME, CIFAR100_FILES, CIFAR100_MD5, CIFAR100_URL,
                            META_FILE, REQUIRED_FILES, TEST_FILE, TRAIN_FILES, load_batch, load_cifar10, load_cifar100)
from lth.data.fetch import DATA_ENV_VAR, DataError, download_verified, install, resolve_data_dir, safe_extract
from lth.data.idx import FILES as IDX_FILES
from lth.data.idx import load_idx_set

__all__ = [
    "BATCHES_DIRNAME", "DATASETS", "DATA_ENV_VAR", "DataError", "Dataset", "META_FILE", "REQUIRED_FILES", "Splits", "TEST_FILE",
    "TRAIN_FILES", "crop_flip", "ensure", "ensure_cifar10", "find_batches_dir", "fingerprint", "load_batch", "load_cifar10",
    "input_transform", "load_splits", "splits_for", "resolve_data_dir", "split_train_val", "to_float",
]

VAL_SIZE = 5_000
# open_lth's ImageNet normalisation of CIFAR (torchvision's ImageNet mean and std).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Dataset:
    """A data set as lth knows it: where its official files live and what they hold."""

    name: str
    title: str
    folder: str  # the official folder name under the data folder (Debian's for Fashion-MNIST)
    files: tuple[str, ...]  # what a complete folder holds
    shape: tuple[int, int, int]  # channels, height, width
    classes: dict[str, int]  # label set → class count ("fine" for all; CIFAR-100 has "coarse" too)
    train: int  # images in the official training set (validation is held out from it)
    test: int
    mean: tuple[float, ...]  # per channel, of the training images in [0, 1]: `data.normalize = "dataset"`
    std: tuple[float, ...]
    urls: tuple[str, ...]  # an archive's URL (mirrors), or base URLs (mirrors) the files sit under
    md5: dict[str, str]  # the published MD5 of each downloaded file
    read: Callable[[Path, str], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = field(repr=False)
    archive: bool = False  # one tar.gz holding `folder`, else the files one by one

    def missing(self, directory: Path) -> list[str]:
        return [name for name in self.files if not (directory / name).is_file()]

    def find(self, root: Path) -> Path | None:
        """The complete folder under `root`, or `root` itself (users point at either), else None."""
        return next((d for d in (Path(root) / self.folder, Path(root)) if not self.missing(d)), None)


DATASETS: dict[str, Dataset] = {
    "cifar10": Dataset("cifar10", "CIFAR-10", BATCHES_DIRNAME, REQUIRED_FILES, (3, 32, 32), {"fine": 10}, 50_000, 10_000,
                       (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), (CIFAR10_URL,), {"cifar-10-python.tar.gz": CIFAR10_MD5},
                       lambda folder, labels: load_cifar10(folder), archive=True),
    "cifar100": Dataset("cifar100", "CIFAR-100", CIFAR100_DIRNAME, CIFAR100_FILES, (3, 32, 32), {"fine": 100, "coarse": 20}, 50_000, 10_000,
                        (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), (CIFAR100_URL,), {"cifar-100-python.tar.gz": CIFAR100_MD5},
                        load_cifar100, archive=True),
    "mnist": Dataset("mnist", "MNIST", "mnist", tuple(IDX_FILES.values()), (1, 28, 28), {"fine": 10}, 60_000, 10_000, (0.1307,), (0.3081,),
                     ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/"),
                     {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873", "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
                      "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3", "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"},
                     lambda folder, labels: load_idx_set(folder, "MNIST")),
    "fashion-mnist": Dataset("fashion-mnist", "Fashion-MNIST", "fashion-mnist", tuple(IDX_FILES.values()), (1, 28, 28), {"fine": 10}, 60_000, 10_000,
                             (0.2860,), (0.3530,), ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
                             {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                              "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79", "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"},
                             lambda folder, labels: load_idx_set(folder, "Fashion-MNIST")),
}


def dataset(name: str) -> Dataset:
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; choose one of: {', '.join(DATASETS)}")
    return DATASETS[name]


def ensure(name: str, root: Path, download: bool = True, urls: Sequence[str] | None = None, md5: dict[str, str] | None = None) -> Path:
    """The complete folder of data set `name` under `root`, downloaded (MD5-checked) and put in
    place first if it is absent. `urls`/`md5` replace the official ones (tests; a local mirror)."""
    spec, root = dataset(name), Path(root)
    if (found := spec.find(root)) is not None:
        return found
    target = root / spec.folder
    if target.exists():
        raise DataError(f"{target} is incomplete (missing {', '.join(spec.missing(target))}); delete it to "
                        f"re-download, or point --data-dir / {DATA_ENV_VAR} at a complete copy")
    if not download:
        raise DataError(f"{spec.title} not found in {root} (expected {spec.folder}/ with {', '.join(spec.files)}); "
                        f"pass --data-dir or set {DATA_ENV_VAR} to a folder that has it, or allow downloading")
    urls, md5 = tuple(urls or spec.urls), dict(md5 or spec.md5)

    def fill(work: Path) -> Path:
        if spec.archive:
            (archive_name, digest), = md5.items()
            archive = work / archive_name
            download_verified(urls, digest, archive, spec.title)
            safe_extract(archive, work / "extracted", source=urls[0])
            return work / "extracted" / spec.folder
        (work / spec.folder).mkdir()
        for file_name, digest in md5.items():
            download_verified([u.rstrip("/") + "/" + file_name for u in urls], digest, work / spec.folder / file_name, spec.title)
        return work / spec.folder

    return install(root, target, fill, spec.missing, spec.title)


def find_batches_dir(root: Path) -> Path | None:
    """CIFAR-10's batches folder under `root` or `root` itself, else None."""
    return DATASETS["cifar10"].find(root)


def ensure_cifar10(root: Path, download: bool = True, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5) -> Path:
    """CIFAR-10's batches folder under `root`, downloaded and extracted if needed."""
    return ensure("cifar10", root, download, urls=[url], md5={"cifar-10-python.tar.gz": md5})


# Decode once per folder, label set and process: decoding takes seconds; tests and studies reload often.
@functools.lru_cache(maxsize=4)
def _decoded(name: str, folder: Path, labels: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return DATASETS[name].read(folder, labels)


@functools.lru_cache(maxsize=4)
def fingerprint(folder: Path, name: str = "cifar10", labels: str = "fine") -> str:
    """A digest of the decoded images and labels (not of the files, so a re-pickled or
    re-compressed copy of the same data matches): what a run records, so that resuming on
    other data is refused."""
    digest = hashlib.sha256()
    for array in _decoded(name, folder, labels):
        digest.update(np.ascontiguousarray(array).data)
    return "sha256:" + digest.hexdigest()[:16]


@dataclass(frozen=True, eq=False)  # eq=False: tensor comparison has no single truth value
class Splits:
    """Train / validation / test tensors on the training device: images uint8 NCHW, labels int64.
    An empty validation split (`data.validation = 0`) means none: the best weights are the final ones."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: Path | None = None  # the folder they came from, and its `fingerprint`
    fingerprint: str = ""
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # (mean, std) applied after /255

    @property
    def validates(self) -> bool:
        return self.val_x.shape[0] > 0


def split_train_val(train_x: np.ndarray, train_y: np.ndarray,
                    val_size: int = VAL_SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Keras ``validation_split``: the LAST ``val_size`` rows validate, no shuffling, as in the
    seed study; 0 holds nothing out (open_lth)."""
    if len(train_x) != len(train_y):
        raise ValueError(f"{len(train_x)} images but {len(train_y)} labels")
    if not 0 <= val_size < len(train_x):
        raise ValueError(f"val_size must be in 0..{len(train_x) - 1}, got {val_size}")
    cut = len(train_x) - val_size
    return train_x[:cut], train_y[:cut], train_x[cut:], train_y[cut:]


def normalization(name: str, normalize: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) of `data.normalize`: "none" (only /255), "dataset" (its training set's own),
    "imagenet" (open_lth's for CIFAR: ImageNet's)."""
    if normalize == "none":
        return None
    if normalize == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    return DATASETS[name].mean, DATASETS[name].std


def load_splits(data_dir: str | os.PathLike[str] | None = None, device: torch.device | str = "cpu",
                train_size: int | None = None, val_size: int | None = None, test_size: int | None = None,
                download: bool = True, dataset: str = "cifar10", validation: int = VAL_SIZE, labels: str = "fine",
                normalize: str = "none") -> Splits:
    """Resolve, fetch if needed, load and split a data set onto ``device``: the last `validation`
    training images validate. The optional sizes keep the first rows of each part (None = all)
    for quick smoke runs; the split itself never changes, so a smoke run still validates on real
    validation images."""
    spec = DATASETS[dataset]
    folder = ensure(dataset, resolve_data_dir(data_dir), download=download).resolve()
    train_x, train_y, test_x, test_y = _decoded(dataset, folder, labels)
    if not 0 <= validation < len(train_x):
        raise DataError(f"data.validation={validation} is out of range for {spec.title}; choose 0..{len(train_x) - 1}")
    tr_x, tr_y, va_x, va_y = split_train_val(train_x, train_y, validation)
    dev = torch.device(device)

    def head(x: np.ndarray, y: np.ndarray, n: int | None, what: str) -> list[torch.Tensor]:
        if n is not None and not 1 <= n <= len(x):
            raise DataError(f"{what}={n} is out of range for {spec.title}; choose 1..{len(x)} (or leave it unset for all)")
        # copy=True: the cached arrays must never alias tensors a caller may modify in place.
        return [torch.from_numpy(a[:n]).to(dev, copy=True) for a in (x, y)]

    if val_size is not None and validation == 0:
        raise DataError("data.val_size needs a validation split; data.validation is 0 (none): leave val_size unset")
    return Splits(*head(tr_x, tr_y, train_size, "train_size"), *head(va_x, va_y, val_size if validation else None, "val_size"),
                  *head(test_x, test_y, test_size, "test_size"), source=folder, fingerprint=fingerprint(folder, dataset, labels),
                  normalization=normalization(dataset, normalize))


def splits_for(data: DataConfig, data_dir: str | os.PathLike[str] | None = None, device: torch.device | str = "cpu",
               download: bool = True) -> Splits:
    """`load_splits` as a config's `data` table says."""
    return load_splits(data_dir, device, data.train_size, data.val_size, data.test_size, download, data.dataset, data.validation,
                       data.labels, data.normalize)


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


def input_transform(normalization: tuple[tuple[float, ...], tuple[float, ...]] | None,
                    device: torch.device | str) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 images → the model's input: `to_float`, then, with a `normalization`, minus its
    per-channel mean, over its std. Applied after the crop's zero padding, as open_lth's
    transforms do, so the border holds a black pixel's value. The constants are made on the
    device once, here (a CUDA graph cannot copy from the host while it captures)."""
    if normalization is None:
        return to_float
    mean, std = (torch.tensor(v, device=device, dtype=torch.float32).view(-1, 1, 1) for v in normalization)
    return lambda images_uint8: to_float(images_uint8).sub_(mean).div_(std)
