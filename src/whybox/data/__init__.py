"""Offline, deterministic demo assets: models, datasets and photos to explain.

* ImageNet: :func:`efficientnet_lite0` (real weights, needs the ``demo`` extra), :func:`imagenet_labels`,
  :func:`imagenet_preprocess`, :func:`imagenet_unnormalize`, and the photos bundled with scikit-image
  (:data:`PHOTOS`, :func:`photo`, :func:`photos`).
* Digits: :func:`load_digits` (scikit-learn's 8 x 8 digits) and :func:`digits_cnn`, a small CNN trained
  deterministically on first use and cached as safetensors.
* Fashion-MNIST: :func:`load_fashion_mnist` from local IDX files (Debian ``dataset-fashion-mnist``).

Nothing here downloads anything.
"""

from __future__ import annotations

from whybox.data.digits import DIGITS_SPLITS, DigitsCNN, digits_cnn, load_digits
from whybox.data.fashion_mnist import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIRS,
    FASHION_MNIST_SPLITS,
    load_fashion_mnist,
)
from whybox.data.imagenet import (
    IMAGENET_INPUT_SIZE,
    PHOTOS,
    efficientnet_lite0,
    imagenet_labels,
    imagenet_preprocess,
    imagenet_unnormalize,
    photo,
    photos,
)
from whybox.errors import DataFormatError, DatasetNotFoundError, MissingExtraError

__all__ = [
    "DIGITS_SPLITS",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIRS",
    "FASHION_MNIST_SPLITS",
    "IMAGENET_INPUT_SIZE",
    "PHOTOS",
    "DataFormatError",
    "DatasetNotFoundError",
    "DigitsCNN",
    "MissingExtraError",
    "digits_cnn",
    "efficientnet_lite0",
    "imagenet_labels",
    "imagenet_preprocess",
    "imagenet_unnormalize",
    "load_digits",
    "load_fashion_mnist",
    "photo",
    "photos",
]
