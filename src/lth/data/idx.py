"""MNIST and Fashion-MNIST in their official form: four gzipped IDX files (LeCun's format: a
magic number naming the element type and the number of dimensions, the dimensions as big-endian
32-bit counts, then the bytes). The header is checked before anything is decompressed past it,
so a lying header cannot make lth read (or allocate) more than the file claims, and a file with
bytes missing or left over is refused."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from lth.data.fetch import DATA_ENV_VAR, DataError

UBYTE = 0x08
FILES = {  # the official names: (train images, train labels, test images, test labels)
    "train_x": "train-images-idx3-ubyte.gz", "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz", "test_y": "t10k-labels-idx1-ubyte.gz",
}
ROWS = {"train": 60_000, "test": 10_000}
SIDE = 28


def read_idx(path: Path, ndim: int, what: str) -> np.ndarray:
    """One gzipped IDX file of unsigned bytes with `ndim` dimensions, as a uint8 array."""
    path = Path(path)

    def bad(problem: str) -> DataError:
        return DataError(f"{path}: {problem}; not a valid {what} IDX file, delete it and re-download")

    try:
        with gzip.open(path, "rb") as f:
            header = f.read(4)
            if len(header) < 4:
                raise bad(f"{len(header)} bytes where a 4-byte magic number belongs")
            zero, kind, dims = struct.unpack(">HBB", header)
            if zero != 0 or kind != UBYTE or dims != ndim:
                raise bad(f"magic number 0x{header.hex()}, expected 0x{0:04x}{UBYTE:02x}{ndim:02x} (unsigned bytes, {ndim} dimensions)")
            raw_shape = f.read(4 * ndim)
            if len(raw_shape) < 4 * ndim:
                raise bad("the header ends before its dimensions")
            shape = struct.unpack(f">{ndim}I", raw_shape)
            size = math.prod(shape)  # Python's integers: a lying header cannot wrap it round
            if size > 60_000 * SIDE * SIDE:  # the largest official file; refuse before allocating
                raise bad(f"the header claims {shape}, larger than any official file")
            body = f.read(size)
            if len(body) < size:
                raise bad(f"truncated: {len(body)} of the {size} bytes its header {shape} announces")
            if f.read(1):
                raise bad(f"bytes after the {size} its header {shape} announces")
    except DataError:
        raise
    except FileNotFoundError as exc:
        raise DataError(f"{path} is missing; re-download {what} or fix --data-dir / {DATA_ENV_VAR}") from exc
    except (OSError, EOFError, zlib.error) as exc:  # gzip's own damage (bad CRC, truncated stream, not gzip)
        raise DataError(f"{path} is corrupt or truncated ({type(exc).__name__}: {exc}); delete it and re-download") from exc
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def load_idx_set(folder: Path, what: str, classes: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_x, train_y, test_x, test_y): images (N, 1, 28, 28), int64 labels in 0..classes-1,
    60,000 training and 10,000 test rows, as the official files hold."""
    folder = Path(folder)
    out = []
    for part in ("train", "test"):
        images_path, labels_path = folder / FILES[f"{part}_x"], folder / FILES[f"{part}_y"]
        images = read_idx(images_path, 3, what)
        labels = read_idx(labels_path, 1, what)
        if images.shape[1:] != (SIDE, SIDE):
            raise DataError(f"{images_path}: images of {images.shape[1]}×{images.shape[2]}, expected {SIDE}×{SIDE}; "
                            f"not {what}, delete it and re-download")
        if len(images) != ROWS[part]:
            raise DataError(f"{images_path}: {len(images)} images, expected {ROWS[part]}; the copy is incomplete, delete it and re-download")
        if len(labels) != len(images):
            raise DataError(f"{labels_path}: {len(labels)} labels for the {len(images)} images of {images_path.name}; "
                            "the files do not belong together, delete them and re-download")
        if labels.max() >= classes:
            raise DataError(f"{labels_path}: labels span {labels.min()}..{labels.max()}, expected 0..{classes - 1}; "
                            f"not {what}, delete it and re-download")
        out += [images[:, None].copy(), labels.astype(np.int64)]
    return out[0], out[1], out[2], out[3]
