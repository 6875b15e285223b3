"""Fashion-MNIST from local IDX files (as installed by Debian's ``dataset-fashion-mnist`` package).

Nothing is downloaded. Debian/Ubuntu install the four gzip'd IDX files into
``/usr/share/datasets/fashion-mnist/`` (``apt-get install dataset-fashion-mnist``); any other
directory holding the files with their original names (gzip'd or not) works via ``root=``.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from whybox.errors import DataFormatError, DatasetNotFoundError, InvalidParameterError, did_you_mean

__all__ = ["FASHION_MNIST_CLASSES", "FASHION_MNIST_DIRS", "FASHION_MNIST_SPLITS", "load_fashion_mnist"]

#: The 10 class names, in label order.
FASHION_MNIST_CLASSES: tuple[str, ...] = (
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
)

#: Directories searched when ``root`` is not given (where Debian's ``dataset-fashion-mnist`` puts them).
FASHION_MNIST_DIRS: tuple[str, ...] = ("/usr/share/datasets/fashion-mnist",)

#: Valid values of ``split`` for :func:`load_fashion_mnist`.
FASHION_MNIST_SPLITS: tuple[str, ...] = ("train", "test")

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# IDX type codes -> big-endian numpy dtypes.
_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (gzip'd when the name ends in ``.gz``) into a native-endian numpy array.

    Format: two zero bytes, a type code byte, a byte with the number of dimensions ``d``, then ``d``
    big-endian uint32 sizes, then the data in C order, big-endian.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataFormatError(f"cannot read IDX file {str(path)!r}: {exc}. Reinstall the dataset.") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataFormatError(
            f"{str(path)!r} is not an IDX file (bad magic number {data[:4].hex() or 'empty'}); "
            "expected 0x0000 followed by a type code and a dimension count. Reinstall the dataset."
        )
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFormatError(f"IDX file {str(path)!r} is truncated inside its header. Reinstall the dataset.")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataFormatError(
            f"IDX file {str(path)!r} declares shape {shape} ({expected} data bytes) but holds "
            f"{len(data) - header} data bytes; it is truncated or corrupt. Reinstall the dataset."
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def _find(directory: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


def _locate(directories: list[Path], image_stem: str, label_stem: str) -> tuple[Path, Path] | None:
    for directory in directories:
        image_path, label_path = _find(directory, image_stem), _find(directory, label_stem)
        if image_path is not None and label_path is not None:
            return image_path, label_path
    return None


def load_fashion_mnist(
    split: str = "train", *, root: str | os.PathLike[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load Fashion-MNIST from local IDX files.

    Parameters
    ----------
    split : {"train", "test"}, default "train"
        ``"train"`` is the 60 000 training images, ``"test"`` the 10 000 test images.
    root : str or path-like, optional
        Directory holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (each optionally ending in ``.gz``).
        Default: search :data:`FASHION_MNIST_DIRS` (``/usr/share/datasets/fashion-mnist``, where
        ``apt-get install dataset-fashion-mnist`` puts them).

    Returns
    -------
    images : torch.Tensor
        ``(N, 1, H, W)`` float32 in [0, 1] (pixel / 255); ``H = W = 28`` for the real dataset.
    labels : torch.Tensor
        ``(N,)`` int64 labels, indices into :data:`FASHION_MNIST_CLASSES`.

    Raises
    ------
    InvalidParameterError
        If ``split`` is not ``"train"`` or ``"test"``.
    DatasetNotFoundError
        If no searched directory holds both files of the split; the message lists the paths tried.
    DataFormatError
        If a file is not valid IDX, or the images and labels do not match.
    """
    if not isinstance(split, str) or split not in FASHION_MNIST_SPLITS:
        raise InvalidParameterError(
            f"split must be one of {FASHION_MNIST_SPLITS}, got {split!r}.{did_you_mean(split, FASHION_MNIST_SPLITS)}"
        )
    image_stem, label_stem = _FILES[split]
    directories = [Path(root).expanduser()] if root is not None else [Path(d) for d in FASHION_MNIST_DIRS]
    found = _locate(directories, image_stem, label_stem)
    if found is None:
        tried = ", ".join(str(d / f"{stem}[.gz]") for d in directories for stem in (image_stem, label_stem))
        fix = (
            f"check root={str(root)!r}, or omit root to use the system copy"
            if root is not None
            else "install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or pass root= "
            "a directory holding the original IDX files"
        )
        raise DatasetNotFoundError(f"Fashion-MNIST {split!r} files not found; looked for {tried}. To fix: {fix}.")
    image_path, label_path = found

    images = _read_idx(image_path)
    labels = _read_idx(label_path)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DataFormatError(
            f"Fashion-MNIST files do not match: images {str(image_path)!r} have shape {images.shape} "
            f"(expected (N, H, W)) and labels {str(label_path)!r} have shape {labels.shape} "
            "(expected (N,)). Reinstall the dataset."
        )
    x = torch.from_numpy(images.astype(np.float32) / np.float32(255.0)).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y
