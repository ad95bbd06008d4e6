"""Built-in datasets that work offline: scikit-learn's digits and Fashion-MNIST's IDX files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from imgclf.errors import DataError

__all__ = ["FASHION_MNIST_CLASSES", "FASHION_MNIST_DIR", "load_digits_arrays", "load_fashion_mnist_arrays", "read_idx"]

# Where Debian's dataset-fashion-mnist package puts the files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's 1,797 8x8 digits as (N, 8, 8, 1) uint8 images, 0..16 scaled to 0..255."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, :, :, None]
    return images, digits.target.astype(np.int64), [str(name) for name in digits.target_names]


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format: big-endian header, then raw values), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            zero, dtype_code, ndim = struct.unpack(">HBB", handle.read(4))
            if zero != 0 or dtype_code not in _IDX_DTYPES:
                raise DataError(f"{path}: not an IDX file (bad magic number)")
            shape = struct.unpack(f">{ndim}I", handle.read(4 * ndim))
            values = np.frombuffer(handle.read(), dtype=_IDX_DTYPES[dtype_code])
    except (OSError, EOFError, struct.error) as error:
        raise DataError(f"{path}: cannot read IDX file ({error})") from None
    if values.size != int(np.prod(shape)):
        raise DataError(f"{path}: IDX file is truncated ({values.size} of {np.prod(shape)} values)")
    return values.reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise DataError(
        f"Fashion-MNIST file {stem}(.gz) not found in {folder}: install Debian's package "
        "(apt-get install dataset-fashion-mnist) or pass --data-dir with the IDX files"
    )


def load_fashion_mnist_arrays(
    folder: Path | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The official 60,000 / 10,000 split as {"train": (images, targets), "test": ...}."""
    folder = Path(folder) if folder is not None else FASHION_MNIST_DIR
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(_find_idx(folder, f"{prefix}-images-idx3-ubyte"))
        targets = read_idx(_find_idx(folder, f"{prefix}-labels-idx1-ubyte"))
        if len(images) != len(targets):
            raise DataError(f"{folder}: {split} has {len(images)} images but {len(targets)} labels")
        splits[split] = (images.astype(np.uint8)[:, :, :, None], targets.astype(np.int64))
    return splits
