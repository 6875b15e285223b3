"""Turn the command line's strings into a model, a dataset and a config.

* :func:`load_model`: a builtin model name (:data:`BUILTIN_MODELS`), a ``path/to/file.py:factory``
  spec, or (only with ``trust_model_file=True``) a pickled full model ``model.pt``; optional weights
  from ``.safetensors`` or ``.pt`` / ``.pth`` / ``.bin`` state dicts, loaded strictly.
* :func:`load_inputs`: builtin datasets (:data:`BUILTIN_DATASETS`), image files, folders of images,
  ``.npy`` / ``.npz`` arrays and ``.csv`` tables, concatenated into one :class:`Dataset`.
* :func:`load_config`: a TOML file of command-line options, checked against the allowed keys and types.

Nothing here downloads anything, and no string from a config is imported or evaluated. Python code
runs only where the user names it: the ``file.py`` of a ``file.py:factory`` spec, and the pickle of a
model file loaded with ``trust_model_file=True`` (which warns).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import importlib.util
import math
import os
import pickle
import re
import sys
import uuid
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np
import torch
from torch import nn

from whybox import data
from whybox.data.imagenet import _to_rgb_float
from whybox.errors import (
    DataFormatError,
    DatasetNotFoundError,
    InvalidInputError,
    InvalidParameterError,
    UnknownNameError,
    WhyboxError,
)
from whybox.models.adapter import ModelAdapter
from whybox.models.categorical import encode_frame
from whybox.models.inputs import column_mismatch
from whybox.models.targets import class_indexer, estimator_classes, true_class_indices

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "BUILTIN_DATASETS",
    "BUILTIN_MODELS",
    "CSV_SUFFIXES",
    "IMAGE_SUFFIXES",
    "WEIGHTS_SUFFIXES",
    "Dataset",
    "LoadedModel",
    "load_config",
    "load_inputs",
    "load_model",
    "resolve_device",
    "texts_dataset",
]

#: Model names :func:`load_model` knows without a file.
BUILTIN_MODELS: tuple[str, ...] = ("efficientnet-lite0", "digits-cnn", "minilm-sentiment")

#: Dataset names :func:`load_inputs` knows without a file: ``"photos"``, the photos bundled with
#: scikit-image (:data:`whybox.data.PHOTOS`), and ``"digits-test"``, the labelled test split of
#: :func:`whybox.data.load_digits`.
BUILTIN_DATASETS: tuple[str, ...] = ("photos", "digits-test", "sentiment-test")

#: File name endings read as images (case-insensitive).
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")

#: File name endings read as tables.
CSV_SUFFIXES: tuple[str, ...] = (".csv",)

#: File name endings accepted for ``weights=`` (and, with ``trust_model_file=True``, for a pickled model).
WEIGHTS_SUFFIXES: tuple[str, ...] = (".safetensors", ".pt", ".pth", ".bin")

_TORCH_SUFFIXES = (".pt", ".pth", ".bin")
_ARRAY_SUFFIXES = (".npy", ".npz")
_INPUT_SUFFIXES = IMAGE_SUFFIXES + _ARRAY_SUFFIXES + CSV_SUFFIXES
_DIGITS_SIZE = (8, 8)
# Keys under which common checkpoints keep the model's state dict (torch.save({"model_state_dict": ...})).
_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model")
_MAX_LISTED = 20


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for the command line, with how to feed it images and how to show its inputs.

    Attributes
    ----------
    module : torch.nn.Module or estimator
        A ``torch.nn.Module`` in eval mode, or a fitted scikit-learn estimator (anything with
        ``predict_proba``, ``decision_function`` or ``predict``: a classifier or a regressor).
    name : str
        ``"efficientnet-lite0"``, ``"digits-cnn"``, or the spec string of a file model.
    labels : list of str or None
        Class names in class-index order, when known.
    prepare_image : callable or None
        One image ``(H, W)`` / ``(H, W, C)`` (uint8, or float in [0, 1]) to one model input
        ``(C, H, W)`` float32. ``None``: the model takes no images (a scikit-learn estimator).
    display : callable
        One model input ``(C, H, W)`` to an ``(H, W, 3)`` float32 numpy array in [0, 1], for showing.
    """

    module: Any
    name: str
    labels: list[str] | None
    prepare_image: Callable[[np.ndarray], torch.Tensor] | None
    display: Callable[[torch.Tensor], np.ndarray]


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _listing(names: Sequence[str]) -> str:
    """``a, b, c`` (at most :data:`_MAX_LISTED` names, then how many more), or ``(none)``."""
    if not names:
        return "(none)"
    shown = ", ".join(names[:_MAX_LISTED])
    return shown if len(names) <= _MAX_LISTED else f"{shown} and {len(names) - _MAX_LISTED} more"


def _header_mismatch(missing: Sequence[str], extra: Sequence[str]) -> str:
    """The refusal of a CSV whose header is not the estimator's columns; where the table only holds one column more,
    it is likely the labels: the flag that says so."""
    msg = (
        f"the CSV header does not match the columns the model was fitted on: missing {_listing(missing)}, "
        f"unexpected {_listing(extra)}; give a table with exactly the model's columns (feature_names_in_)"
    )
    if not missing and len(extra) == 1:
        msg += f", or, if {extra[0]!r} holds the true labels, say so with --label-column {extra[0]} (label_column in a config file)"
    return msg + "."


def _rgb_prepare(image: np.ndarray) -> torch.Tensor:
    """One image to ``(3, H, W)`` float32 RGB in [0, 1]: grayscale replicated, RGBA composited on white, no resizing."""
    rgb = _to_rgb_float(image)
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32))


def _gray_prepare(image: np.ndarray) -> torch.Tensor:
    """One image to ``(1, H, W)`` float32 in [0, 1], for a model whose first convolution reads one channel: a
    grayscale image as it is, a colour one by ``skimage.color.rgb2gray`` (RGBA composited on white), no resizing."""
    from skimage.color import rgb2gray

    rgb = _to_rgb_float(image)  # validates shape, dtype and range
    gray = rgb[:, :, 0] if image.ndim == 2 or image.shape[2] == 1 else rgb2gray(rgb)
    return torch.from_numpy(np.ascontiguousarray(np.clip(gray, 0.0, 1.0), dtype=np.float32)[None])


def _first_conv_channels(model: nn.Module) -> int | None:
    """``in_channels`` of the first ``nn.Conv2d`` of ``model`` (in registration order; a TorchScript model's too),
    or None without one."""
    from whybox.models.adapter import first_conv_channels

    return first_conv_channels(model, nn.Conv2d)


def _onnx_gray(model: Any) -> bool:
    """Whether ``model`` is an ONNX graph (a :class:`~whybox.models.adapter.FunctionModel` around an ONNX model)
    whose input is one-channel images ``(batch, 1, H, W)``."""
    shape = getattr(getattr(model, "fn", None), "row_shape", None)
    return isinstance(shape, tuple) and len(shape) == 3 and shape[0] == 1


def _digits_prepare(image: np.ndarray) -> torch.Tensor:
    """One image to a ``(1, 8, 8)`` float32 input of the digits CNN.

    Colour images become grayscale with ``skimage.color.rgb2gray`` (after RGBA is composited on
    white); images that are not 8 x 8 are resized with ``skimage.transform.resize(...,
    anti_aliasing=True)``. The digits are light ink on a dark background.
    """
    from skimage.color import rgb2gray
    from skimage.transform import resize

    rgb = _to_rgb_float(image)  # validates shape, dtype and range
    if image.ndim == 2 or image.shape[2] == 1:
        gray = rgb[:, :, 0]  # exact: the channel was only replicated
    else:
        gray = rgb2gray(rgb)
    if gray.shape != _DIGITS_SIZE:
        gray = resize(gray, _DIGITS_SIZE, anti_aliasing=True)
    return torch.from_numpy(np.clip(gray, 0.0, 1.0).astype(np.float32)[None])


def _check_display_input(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InvalidParameterError(f"display takes one model input of shape (C, H, W), got {shape}.")
    return x.detach().to(device="cpu", dtype=torch.float32)


def _channels_display(x: torch.Tensor) -> np.ndarray:
    """One ``(1, H, W)`` or ``(3, H, W)`` input in [0, 1] to ``(H, W, 3)``: clamped, channels last, gray repeated."""
    x = _check_display_input(x)
    if x.shape[0] not in (1, 3):
        raise InvalidParameterError(
            f"display shows inputs with 1 or 3 channels, got shape {tuple(x.shape)}; "
            "show one channel at a time, or convert the input to RGB first."
        )
    img = x.clamp(0.0, 1.0).permute(1, 2, 0)
    if img.shape[2] == 1:
        img = img.repeat(1, 1, 3)
    return img.numpy().copy()


def _imagenet_display(x: torch.Tensor) -> np.ndarray:
    return data.imagenet_unnormalize(_check_display_input(x)).permute(1, 2, 0).numpy().copy()


def _check_path_arg(value: object, param: str) -> Path:
    if isinstance(value, bool) or not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise InvalidParameterError(f"{param} must be a non-empty path (str or os.PathLike), got {value!r}.")
    return Path(os.fspath(value)).expanduser()


def _check_weights_path(weights: object) -> Path:
    path = _check_path_arg(weights, "weights")
    if path.suffix.lower() not in WEIGHTS_SUFFIXES:
        raise InvalidParameterError(
            f"weights must be a {', '.join(WEIGHTS_SUFFIXES)} file, got {str(weights)!r}; save a state dict with "
            "safetensors.torch.save_file(model.state_dict(), 'model.safetensors') or torch.save(model.state_dict(), ...)."
        )
    if not path.is_file():
        what = "a folder" if path.is_dir() else "no such file"
        raise InvalidParameterError(f"weights={str(weights)!r}: {what} (looked at {path.resolve()}).")
    return path


def _parse_spec(spec: str) -> tuple[str, Path, str]:
    """Classify a non-builtin spec: ``("factory", file, name)`` or ``("pickle", file, "")``."""
    head, colon, tail = spec.rpartition(":")
    forms = (
        f"a builtin model ({', '.join(BUILTIN_MODELS)}), 'path/to/file.py:factory', an ONNX file 'model.onnx', or a "
        "pickled full model 'model.pt' with trust_model_file=True"
    )
    if colon and head.lower().endswith(".py"):
        if not tail.isidentifier():
            raise InvalidParameterError(
                f"model {spec!r}: the part after the colon must name a function (or class) in {head}, got {tail!r}; "
                "write 'path/to/file.py:factory'."
            )
        path = Path(head).expanduser()
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "does not exist"
            raise InvalidParameterError(
                f"model {spec!r}: the file {head!r} {what} (looked at {path.resolve()}); give the path of a Python file."
            )
        return "factory", path, tail
    path = Path(spec).expanduser()
    suffix = path.suffix.lower()
    if suffix in _TORCH_SUFFIXES:
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "does not exist"
            raise InvalidParameterError(f"model {spec!r}: the file {what} (looked at {path.resolve()}).")
        return "pickle", path, ""
    if suffix == ".py":
        raise InvalidParameterError(
            f"model {spec!r}: name the function that builds the model after a colon, e.g. '{spec}:make_model'; "
            "it is called with no arguments."
        )
    if suffix == ".onnx":
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "does not exist"
            raise InvalidParameterError(f"model {spec!r}: the ONNX file {what} (looked at {path.resolve()}).")
        return "onnx", path, ""
    if suffix == ".safetensors":
        raise InvalidParameterError(
            f"model {spec!r}: a safetensors file holds weights only, not the architecture; pass the architecture "
            f"as 'path/to/file.py:factory' and this file as weights (command line: --weights {spec})."
        )
    raise UnknownNameError(f"unknown model {spec!r}; give {forms}.")


@contextlib.contextmanager
def _folder_on_path(path: Path) -> Iterator[None]:
    """Put the folder of ``path`` first on ``sys.path`` for the duration, so the file can import its siblings."""
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        if folder in sys.path:
            sys.path.remove(folder)


def _import_file(spec: str, path: Path) -> Any:
    """Import the Python file ``path`` under a fresh module name (registered in ``sys.modules``)."""
    module_name = f"whybox_user_model_{uuid.uuid4().hex}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise InvalidParameterError(f"model {spec!r}: {str(path)!r} cannot be imported as a Python file.")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # dataclasses and pickle look classes up by module name
    try:
        module_spec.loader.exec_module(module)
    except WhyboxError:
        sys.modules.pop(module_name, None)
        raise
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise InvalidParameterError(
            f"model {spec!r}: importing {str(path)!r} raised {type(exc).__name__}: {_clip(str(exc))}"
        ) from exc
    return module


def _callables_in(module: Any) -> list[str]:
    """Public callables defined in ``module`` itself (not imported into it), sorted."""
    return sorted(
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and callable(value) and getattr(value, "__module__", None) == module.__name__
    )


def _call_factory(spec: str, path: Path, name: str) -> Any:
    with _folder_on_path(path):
        return _import_and_call(spec, path, name)


def _import_and_call(spec: str, path: Path, name: str) -> Any:
    module = _import_file(spec, path)
    if not hasattr(module, name):
        raise InvalidParameterError(
            f"model {spec!r}: {str(path)!r} defines no {name!r}; functions and classes defined there: "
            f"{_listing(_callables_in(module))}."
        )
    factory = getattr(module, name)
    if not callable(factory):
        raise InvalidParameterError(
            f"model {spec!r}: {name!r} in {str(path)!r} is a {type(factory).__name__}, not a function; name a "
            f"function that takes no arguments and returns the model (defined there: {_listing(_callables_in(module))})."
        )
    try:
        model = factory()
    except WhyboxError:
        raise
    except Exception as exc:
        raise InvalidParameterError(
            f"model {spec!r}: calling {name}() raised {type(exc).__name__}: {_clip(str(exc))}; the factory is called "
            "with no arguments."
        ) from exc
    if isinstance(model, nn.Module):
        return model
    if isinstance(model, ModelAdapter):  # e.g. whybox.adapt(hf_model, output="logits") for a ModelOutput
        return model
    if any(callable(getattr(model, m, None)) for m in ("predict_proba", "decision_function", "predict")):
        _check_fitted(spec, model)
        return model
    if callable(model) and not isinstance(model, type):  # a function inputs -> scores: a black box
        from whybox.models.adapter import adapt

        return adapt(model)
    raise InvalidParameterError(
        f"model {spec!r}: {name}() returned a {type(model).__name__}; it must return a torch.nn.Module, a fitted "
        "estimator with predict_proba, decision_function or predict (a scikit-learn classifier or regressor), a "
        "function inputs -> scores (B, K), or a whybox adapter (whybox.adapt(model, output=...) for a model whose "
        "output is a tuple, dict or ModelOutput)."
    )


def _check_fitted(spec: str, estimator: Any) -> None:
    from sklearn.base import BaseEstimator
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    if not isinstance(estimator, BaseEstimator):
        return
    try:
        check_is_fitted(estimator)
    except NotFittedError as exc:
        raise InvalidParameterError(
            f"model {spec!r}: the {type(estimator).__name__} it returns is not fitted; call .fit(...) in the factory "
            "(or load a fitted one) before returning it."
        ) from exc


def _is_torchscript(path: Path) -> bool:
    """Whether the zip archive at ``path`` is a TorchScript module (``torch.jit.save``: its compiled code under
    ``code/``), not a ``torch.save`` pickle."""
    try:
        with zipfile.ZipFile(path) as z:  # <top>/code/__torch__/... (torch.save's own entries are <top>/data.pkl,
            # and its top folder is named after the file: code.pt holds code/data.pkl)
            return any(len(parts := name.split("/")) > 2 and parts[1] == "code" for name in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _torch_load(path: Path, *, trust: bool, what: str) -> object:
    """``torch.load`` with ``weights_only=True``; a pickle of other objects needs ``trust`` (and then warns)."""
    try:
        with path.open("rb") as f:
            is_pickle = f.read(1) == b"\x80"  # a pickle's PROTO opcode (torch's legacy format)
        is_torch = is_pickle or zipfile.is_zipfile(path)  # torch.save writes a zip archive since torch 1.6
    except OSError as exc:
        raise DataFormatError(f"{what} {str(path)!r} cannot be read: {exc.strerror or exc}.") from exc
    if not is_torch:
        raise DataFormatError(
            f"{what} {str(path)!r} cannot be read as a PyTorch file: it is neither a zip archive (torch.save) nor a "
            "pickle."
        )
    if not is_pickle and _is_torchscript(path):  # torch.jit.save: compiled code, run by torch.jit.load
        if not trust:
            raise InvalidParameterError(
                f"{what} {str(path)!r} is a TorchScript archive (torch.jit.save): loading it runs the code it holds. "
                "If it comes from a source you trust, pass trust_model_file=True (command line: --trust-model-file); "
                "otherwise save a state dict (torch.save(model.state_dict(), ...) or safetensors)."
            )
        warnings.warn(
            f"loading the TorchScript archive {str(path)!r} because trust_model_file=True: it runs the code it holds; "
            "do this only for files you trust.",
            UserWarning,
            stacklevel=4,
        )
        try:
            with warnings.catch_warnings():  # torch.jit is deprecated, but the archive is what the user has
                warnings.simplefilter("ignore", DeprecationWarning)
                return torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise DataFormatError(
                f"{what} {str(path)!r} cannot be loaded as TorchScript: {type(exc).__name__}: {_clip(str(exc))}"
            ) from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        detail = f" (it contains {found.group(1)})" if found else ""
        if not trust:
            raise InvalidParameterError(
                f"{what} {str(path)!r} holds pickled Python objects, not only tensors{detail}, and unpickling it can "
                "run arbitrary code. If it is a full model or checkpoint from a source you trust, pass "
                "trust_model_file=True (command line: --trust-model-file); otherwise save a state dict instead "
                "(torch.save(model.state_dict(), ...) or safetensors)."
            ) from exc
    except Exception as exc:
        raise DataFormatError(
            f"{what} {str(path)!r} cannot be read as a PyTorch file: {type(exc).__name__}: {_clip(str(exc))}"
        ) from exc
    warnings.warn(
        f"unpickling {str(path)!r} because trust_model_file=True: a pickled file can run arbitrary code when "
        "loaded; do this only for files you trust.",
        UserWarning,
        stacklevel=4,
    )
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise DataFormatError(
            f"{what} {str(path)!r} cannot be unpickled: {type(exc).__name__}: {_clip(str(exc))}; every class it "
            "refers to must be importable here."
        ) from exc


def _is_tensor_dict(value: object) -> TypeGuard[dict[str, torch.Tensor]]:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def _read_state_dict(path: Path, *, trust: bool) -> dict[str, torch.Tensor]:
    """Read a state dict from a weights file (safetensors, or a torch pickle of tensors / a checkpoint / a model)."""
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(path, device="cpu"))
        except Exception as exc:
            raise DataFormatError(
                f"weights {str(path)!r} cannot be read as safetensors: {type(exc).__name__}: {_clip(str(exc))}"
            ) from exc
    obj = _torch_load(path, trust=trust, what="weights")
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict())
    if _is_tensor_dict(obj):
        return dict(obj)
    if isinstance(obj, dict):
        nested = [k for k in _CHECKPOINT_KEYS if _is_tensor_dict(obj.get(k))]
        if len(nested) == 1:
            return dict(obj[nested[0]])
        others = [repr(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
        raise DataFormatError(
            f"weights {str(path)!r} hold a dict with non-tensor entries ({_listing(others)}), not a state dict; save "
            "model.state_dict() alone, or a checkpoint with exactly one of the keys "
            f"{', '.join(repr(k) for k in _CHECKPOINT_KEYS)} holding it."
        )
    raise DataFormatError(
        f"weights {str(path)!r} hold a {type(obj).__name__}, not a state dict; save model.state_dict()."
    )


def _strip_hint(given: set[str], expected: set[str]) -> str:
    """A hint when the file's keys carry one extra leading component (``module.`` from DataParallel, ...)."""
    prefixes = {k.split(".", 1)[0] for k in given if "." in k}
    if len(prefixes) == 1 and all("." in k for k in given):
        prefix = prefixes.pop()
        if {k.split(".", 1)[1] for k in given} == expected:
            return f" Every key in the file starts with {prefix + '.'!r}: strip that prefix before saving."
    return ""


def _apply_state_dict(module: nn.Module, state: dict[str, torch.Tensor], path: Path, spec: str) -> None:
    """Load ``state`` into ``module`` strictly; a mismatch names the missing, unexpected and misshapen keys."""
    own = module.state_dict()
    expected, given = set(own), set(state)
    missing = sorted(expected - given)
    unexpected = sorted(given - expected)
    misshapen = sorted(
        f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
        for k in expected & given
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or misshapen:
        parts = []
        if missing:
            parts.append(f"missing keys (in the model, not in the file): {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys (in the file, not in the model): {_listing(unexpected)}")
        if misshapen:
            parts.append(f"shape mismatches: {_listing(misshapen)}")
        raise InvalidParameterError(
            f"weights {str(path)!r} do not fit model {spec!r}: {'; '.join(parts)}. Save the weights from the same "
            f"architecture (model.state_dict()).{_strip_hint(given, expected)}"
        )
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # e.g. a dtype that cannot be copied
        raise InvalidParameterError(
            f"weights {str(path)!r} cannot be loaded into model {spec!r}: {_clip(str(exc), 400)}"
        ) from exc


def _load_pickled_model(spec: str, path: Path, *, trust: bool) -> nn.Module:
    obj = _torch_load(path, trust=trust, what=f"model {spec!r}:")
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, dict):
        raise InvalidParameterError(
            f"model {spec!r}: the file holds weights only (a dict), not a model; pass the architecture as "
            f"'path/to/file.py:factory' and this file as weights (command line: --weights {spec})."
        )
    raise InvalidParameterError(
        f"model {spec!r}: the file holds a {type(obj).__name__}, not a torch.nn.Module; pass the architecture as "
        "'path/to/file.py:factory' and a state dict as weights."
    )


DEVICE_CHOICES = "'cpu', 'auto' (cuda where torch sees a GPU, else cpu), 'cuda', 'cuda:N' or 'mps'"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The torch device a ``--device`` value names, checked against what this machine has.

    Parameters
    ----------
    device : str, torch.device or None
        ``None`` or ``"cpu"``; ``"auto"`` (``cuda`` when ``torch.cuda.is_available()``, else ``cpu``); ``"cuda"``
        or ``"cuda:N"``; ``"mps"``.

    Raises
    ------
    InvalidParameterError
        For any other value, or a device this machine does not have (the message says what to pass instead).
    """
    if device is None:
        return torch.device("cpu")
    if isinstance(device, str) and device.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = device if isinstance(device, torch.device) else torch.device(str(device).strip().lower())
    except (RuntimeError, ValueError):
        dev = None
    if not isinstance(device, (str, torch.device)) or dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise InvalidParameterError(f"device must be {DEVICE_CHOICES}; got {device!r}.")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidParameterError(
                f"device {str(device)!r}: torch sees no CUDA device on this machine (torch.cuda.is_available() is "
                "False); use 'cpu', or 'auto' to use a GPU only where there is one."
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InvalidParameterError(
                f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered "
                f"from 0; pass cuda:0 to cuda:{torch.cuda.device_count() - 1}."
            )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidParameterError(
            f"device {str(device)!r}: torch sees no MPS (Apple GPU) device on this machine; use 'cpu' or 'auto'."
        )
    return dev


def load_model(
    spec: str,
    *,
    weights: str | os.PathLike[str] | None = None,
    trust_model_file: bool = False,
    device: str | torch.device | None = None,
) -> LoadedModel:
    """Load the model a command-line ``--model`` string names.

    Parameters
    ----------
    spec : str
        One of

        * a builtin name, :data:`BUILTIN_MODELS`: ``"efficientnet-lite0"`` (real ImageNet weights, needs
          the ``demo`` extra) or ``"digits-cnn"`` (the 8 x 8 digits CNN, trained once and cached);
        * ``"path/to/file.py:factory"``: the file is imported by path (under a fresh module name; its
          folder is on ``sys.path`` only while it is imported and the factory runs) and ``factory()``
          is called with no arguments. It must return a ``torch.nn.Module`` or a fitted estimator
          with ``predict_proba``, ``decision_function`` or ``predict`` (a scikit-learn classifier or regressor);
        * ``"model.pt"`` (``.pth``, ``.bin``): a pickled full model, only with ``trust_model_file=True``;
        * ``"model.onnx"``: an ONNX graph of one input, run by ONNX Runtime as a black box (the ``onnx`` extra).
    weights : str or path-like, optional
        A state dict for the model: ``.safetensors`` (read with ``safetensors.torch.load_file``) or
        ``.pt`` / ``.pth`` / ``.bin`` (read with ``torch.load(..., weights_only=True)``), loaded with
        ``load_state_dict(strict=True)``. A torch file may also be a checkpoint dict holding the state
        dict under exactly one of ``"state_dict"``, ``"model_state_dict"``, ``"model"``; a pickled full
        model (``trust_model_file=True`` only) gives its ``state_dict()``. Allowed for builtin models
        too (``"digits-cnn"`` with weights is built fresh, without training).
    trust_model_file : bool, default False
        Allow unpickling torch files that hold Python objects other than tensors (full models,
        checkpoints with custom classes). Unpickling can run arbitrary code: use it only for files you
        trust. A ``UserWarning`` says so whenever it happens.
    device : str, torch.device or None
        Where a torch model runs (:func:`resolve_device`): ``None``/``"cpu"`` (default), ``"auto"``, ``"cuda"``,
        ``"cuda:N"`` or ``"mps"``. Inputs stay on the CPU: explainers and metrics move each batch to the model's
        device and hand their results back on the CPU. Estimators run on the CPU only.

    Returns
    -------
    LoadedModel
        The model (a torch module in eval mode, or the estimator), its name, class names when known
        (builtin models; ``classes_`` of an estimator), how to prepare images for it and how to
        display its inputs. File models take images as RGB in [0, 1], unresized; estimators take no
        images (``prepare_image is None``).

    Raises
    ------
    InvalidParameterError
        For a spec or weights path that does not exist, a factory that is missing, not callable, raises
        or returns something else than a model, an unfitted estimator, weights for an estimator,
        weights whose keys or shapes do not match the model (the message lists them), a pickled
        file without ``trust_model_file=True``, a device this machine does not have, or a device other
        than the CPU for an estimator.
    UnknownNameError
        For a spec that is neither a builtin name nor a file form; the message lists the forms.
    DataFormatError
        For a weights or model file that cannot be read.
    MissingExtraError
        For ``"efficientnet-lite0"`` without the ``demo`` extra.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidParameterError(
            f"spec must be a non-empty string ({', '.join(BUILTIN_MODELS)} or 'path/to/file.py:factory'), got {spec!r}."
        )
    if not isinstance(trust_model_file, bool):
        raise InvalidParameterError(f"trust_model_file must be True or False, got {trust_model_file!r}.")
    weights_path = None if weights is None else _check_weights_path(weights)
    dev = resolve_device(device)

    labels: list[str] | None = None
    prepare: Callable[[np.ndarray], torch.Tensor] | None = _rgb_prepare
    display: Callable[[torch.Tensor], np.ndarray] = _channels_display
    module: Any
    if spec == "digits-cnn":
        # with weights, skip the (cached) training: the weights replace them anyway
        if weights_path is not None:
            with torch.random.fork_rng(devices=[]):  # its random initialisation, replaced by the weights, draws
                module = data.DigitsCNN()  # from a forked generator: the caller's RNG state stays as it was
        else:
            module = data.digits_cnn()
        labels, prepare = [str(c) for c in range(10)], _digits_prepare
    elif spec == "efficientnet-lite0":
        module = data.efficientnet_lite0()
        labels, prepare, display = data.imagenet_labels(), data.imagenet_preprocess, _imagenet_display
    elif spec == "minilm-sentiment":
        if weights_path is not None:
            raise InvalidParameterError(
                "weights= does not apply to minilm-sentiment (MiniLM's files and the cached head are its weights)."
            )
        from whybox.data.text import minilm_sentiment
        from whybox.models.text import adapt_text

        clf, tokenizer = minilm_sentiment()
        return LoadedModel(adapt_text(clf.to(dev), tokenizer), spec, ["negative", "positive"], None, _channels_display)
    else:
        kind, path, factory = _parse_spec(spec)
        if kind == "onnx":  # a black box run by ONNX Runtime; its weights are in the file
            if weights_path is not None:
                raise InvalidParameterError(
                    f"weights={str(weights)!r} given for the ONNX model {spec!r}, whose weights are in the file; drop "
                    "--weights."
                )
            from whybox.models.adapter import adapt

            module = adapt(str(path))
        elif kind == "factory":
            module = _call_factory(spec, path, factory)
        else:
            module = _load_pickled_model(spec, path, trust=trust_model_file)
        inner = module.model if isinstance(module, ModelAdapter) else module
        if not isinstance(inner, nn.Module):
            classes = getattr(inner, "classes_", None)
            labels = [str(c) for c in classes] if classes is not None else None
            prepare = None
        else:  # a Hugging Face classifier names its classes in its config
            names = getattr(getattr(inner, "config", None), "id2label", None)
            if isinstance(names, Mapping) and names and sorted(names) == list(range(len(names))):
                labels = [str(names[i]) for i in range(len(names))]
            if _first_conv_channels(inner) == 1 or _onnx_gray(inner):  # a grayscale CNN reads files as one channel
                prepare = _gray_prepare
        named = getattr(module, "output_names", None)  # an adapter that names its outputs (adapt(labels=...))
        if named is not None:
            labels = [str(n) for n in named]

    torch_module = module.model if isinstance(module, ModelAdapter) else module  # an adapter's own model
    if weights_path is not None:
        if not isinstance(torch_module, nn.Module):
            raise InvalidParameterError(
                f"weights={str(weights)!r} given for model {spec!r}, which is a {type(torch_module).__name__}, not a "
                "torch module; load the fitted estimator in the factory instead and drop the weights."
            )
        _apply_state_dict(torch_module, _read_state_dict(weights_path, trust=trust_model_file), weights_path, spec)
    if isinstance(torch_module, nn.Module):
        torch_module.eval().to(dev)
    elif dev.type != "cpu":
        raise InvalidParameterError(
            f"device {str(device)!r} given for model {spec!r}, a {type(torch_module).__name__}: estimators run on the "
            "CPU; drop the device (or pass 'cpu')."
        )
    return LoadedModel(module=module, name=spec, labels=labels, prepare_image=prepare, display=display)


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Dataset:
    """Model inputs with a name per row, and labels when the source has them.

    Attributes
    ----------
    x : torch.Tensor
        ``(N, ...)`` model inputs: ``(N, C, H, W)`` float32 for images, ``(N, F)`` for tables (float32, or float64
        for a model that computes in it: a scikit-learn estimator, a torch model with float64 weights).
    names : list of str
        One unique name per row (a repeated name gets ``#2``, ``#3``, ... appended).
    labels : torch.Tensor or None
        ``(N,)`` int64 class indices, or ``None``.
    kind : str
        ``"image"``, ``"signal"`` (``(N, C, L)`` arrays of a model whose first ``nn.Conv1d`` reads their ``C``
        channels), ``"sequence"`` (``(N, T, D)`` arrays of a torch model with a recurrent layer, an
        ``nn.MultiheadAttention`` or an ``nn.Conv1d`` reading ``D`` channels: time steps of ``D`` features, see
        :func:`~whybox.models.adapter.is_sequence`), ``"tabular"`` or ``"text"``.
    columns : list of str or None
        The feature names of a table (from a CSV header), else ``None``.
    texts : list of str or None
        ``kind="text"``: the texts; ``x`` is then the text adapter's packed ``(N, T, D + 1)`` inputs.
    coder : SklearnAdapter or None
        Where a CSV had text columns: the estimator's adapter that coded them into ``x``; explain and evaluate with
        it (it decodes the codes for the estimator), not with the bare estimator.
    """

    x: torch.Tensor
    names: list[str]
    labels: torch.Tensor | None
    kind: str
    columns: list[str] | None
    texts: list[str] | None = None
    coder: Any = None


@dataclass(frozen=True)
class _Source:
    entry: str  # what the user wrote
    kind: str  # "builtin", "folder", "image", "npy", "npz", "csv"
    path: Path  # for a builtin dataset, the name as a path (unused)


@dataclass
class _Part:
    source: str
    x: torch.Tensor
    names: list[str]
    labels: torch.Tensor | None
    kind: str
    columns: list[str] | None = None


def _classify(entry: object, model: LoadedModel) -> _Source:
    if isinstance(entry, bool) or not isinstance(entry, (str, os.PathLike)) or not os.fspath(entry):
        raise InvalidParameterError(f"each input must be a non-empty path or dataset name, got {entry!r}.")
    text = os.fspath(entry)
    if not isinstance(text, str):
        raise InvalidParameterError(f"each input must be a text path, got the bytes path {text!r}.")
    if text in BUILTIN_DATASETS:
        source = _Source(text, "builtin", Path(text))
    else:
        path = Path(text).expanduser()
        if path.is_dir():
            source = _Source(text, "folder", path)
        elif path.is_file():
            suffix = path.suffix.lower()
            if suffix not in _INPUT_SUFFIXES:
                raise InvalidParameterError(
                    f"input {text!r}: unsupported file type {path.suffix!r}; give images ({', '.join(IMAGE_SUFFIXES)}), "
                    f"arrays (.npy, .npz), a table (.csv), a folder of images or a builtin dataset "
                    f"({', '.join(BUILTIN_DATASETS)})."
                )
            kind = "image" if suffix in IMAGE_SUFFIXES else suffix[1:]
            source = _Source(text, kind, path)
        else:
            raise DatasetNotFoundError(
                f"input {text!r} is not a builtin dataset ({', '.join(BUILTIN_DATASETS)}) and no such file or folder "
                f"exists (looked at {path.resolve()})."
            )
    if source.kind in ("builtin", "folder", "image") and model.prepare_image is None:
        raise InvalidParameterError(
            f"input {text!r} holds images, but model {model.name!r} takes no images (it has no prepare_image); give "
            "it a table (.csv) or arrays (.npy, .npz) instead."
        )
    return source


def _read_image(path: Path) -> np.ndarray:
    """Read the first frame of an image file as ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)``: uint8 or float in [0, 1]."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as opened:
            im = ImageOps.exif_transpose(opened)
            if im is None:  # pragma: no cover - only with in_place=True
                im = opened
            mode = im.mode
            if mode in ("L", "RGB", "RGBA", "F"):
                pass
            elif mode == "1":
                im = im.convert("L")
            elif mode.startswith("I"):  # 16- or 32-bit integer gray
                values = np.asarray(im).astype(np.float64)
                if values.size and (values.min() < 0 or values.max() > 65535):
                    raise DataFormatError(
                        f"image {str(path)!r}: integer pixel values outside [0, 65535] (mode {mode}); save it as 8- or "
                        "16-bit."
                    )
                return values / 65535.0
            elif mode in ("LA", "La", "PA", "RGBa") or (mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
            else:  # P, CMYK, YCbCr, LAB, HSV, RGBX, ...
                im = im.convert("RGB")
            return np.array(im)
    except WhyboxError:
        raise
    except Exception as exc:
        raise DataFormatError(f"image {str(path)!r} cannot be read: {type(exc).__name__}: {_clip(str(exc))}") from exc


def _prepare(model: LoadedModel, image: np.ndarray, source: str) -> torch.Tensor:
    prepare = model.prepare_image
    if prepare is None:  # _classify refuses this earlier; kept for direct calls
        raise InvalidParameterError(f"input {source!r} is an image, but model {model.name!r} takes no images.")
    try:
        t = prepare(image)
    except WhyboxError as exc:
        raise type(exc)(f"input {source!r}: {exc}") from exc
    if not isinstance(t, torch.Tensor):
        raise InvalidParameterError(
            f"model {model.name!r}: prepare_image must return a torch.Tensor, got {type(t).__name__} for {source!r}."
        )
    return t.to(torch.float32)


def _stack_images(items: list[tuple[str, torch.Tensor]]) -> torch.Tensor:
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.shape != first.shape:
            raise InvalidInputError(
                f"images {first_name!r} and {name!r} give model inputs of different shapes, {tuple(first.shape)} and "
                f"{tuple(t.shape)}; resize them to one size (this model does not resize its inputs)."
            )
    return torch.stack([t for _, t in items])


def _image_files(folder: Path, entry: str) -> list[Path]:
    files = sorted(
        (
            p
            for p in folder.iterdir()
            if not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        ),
        key=lambda p: p.name,
    )
    if not files:
        raise DatasetNotFoundError(
            f"input folder {entry!r} holds no image files ({', '.join(IMAGE_SUFFIXES)}; hidden files and subfolders are "
            "skipped)."
        )
    return files


def _load_images(files: list[tuple[Path, str]], model: LoadedModel, source: str) -> _Part:
    items = [(name, _prepare(model, _read_image(path), str(path))) for path, name in files]
    return _Part(source, _stack_images(items), [n for n, _ in items], None, "image")


def _load_builtin(entry: str, model: LoadedModel, rows: int | None) -> _Part:
    if entry == "sentiment-test":
        raise InvalidInputError(
            f"input 'sentiment-test' holds texts, but model {model.name!r} is not a text model; use --model "
            "minilm-sentiment (or an image dataset: photos, digits-test)."
        )
    if entry == "photos":
        names = list(data.PHOTOS[:rows])
        items = [(n, _prepare(model, data.photo(n), f"photos/{n}")) for n in names]
        return _Part(entry, _stack_images(items), names, None, "image")
    x, y = data.load_digits("test")
    x, y = x[:rows], y[:rows]
    images = [_prepare(model, x[i, 0].numpy(), f"digits-test #{i}") for i in range(len(x))]
    names = [f"digits-test-{i:04d}" for i in range(len(x))]
    return _Part(entry, _stack_images(list(zip(names, images, strict=True))), names, y.clone(), "image")


def _labels_from(values: np.ndarray, source: str, n: int) -> torch.Tensor:
    if values.ndim != 1 or len(values) != n:
        raise DataFormatError(f"{source}: labels must have shape ({n},) to match the inputs, got {values.shape}.")
    if np.issubdtype(values.dtype, np.integer):
        return torch.from_numpy(values.astype(np.int64))
    if np.issubdtype(values.dtype, np.floating) and np.isfinite(values).all() and (values == np.round(values)).all():
        return torch.from_numpy(values.astype(np.int64))
    raise DataFormatError(
        f"{source}: labels must be integer class indices, got dtype {values.dtype}"
        + ("" if values.dtype.kind in "iub" else f" with values like {values[:3].tolist()!r}")
        + "."
    )


def _table_dtype(module: Any) -> torch.dtype:
    """The dtype a table's rows are read in for ``module``: float64 where the model computes in it (a scikit-learn
    estimator, as the API reads a DataFrame for it: epoch seconds, or 1000.00001, lose their last digits in float32;
    a torch model with float64 weights), else float32 as before (a torch model computes in its weights' dtype, and
    explain casts its inputs to it; a black box ``inputs -> scores`` is often torch code with float32 constants)."""
    from whybox.models.adapter import TorchAdapter

    if isinstance(module, nn.Module):
        module = TorchAdapter(module)
    if not isinstance(module, ModelAdapter):
        return torch.float64  # a fitted estimator: its adapter computes in float64
    try:
        dtype = module.dtype
    except WhyboxError:  # e.g. lazy parameters: explaining names the fix
        return torch.float32
    return torch.float64 if dtype == torch.float64 else torch.float32


def _array_part(
    array: np.ndarray, source: str, stem: str, rows: int | None, table_dtype: torch.dtype = torch.float32
) -> _Part:
    """Arrays ``(N, ...)`` as model inputs: rows ``(N, F)`` (a table) in ``table_dtype`` (float32 where the file's
    numbers are float32 or narrower), others in float32."""
    if array.dtype.kind not in "biuf":
        raise DataFormatError(f"{source}: the inputs must be numbers, got dtype {array.dtype}.")
    if array.ndim < 2:
        raise DataFormatError(
            f"{source}: the inputs must have shape (N, ...) with at least 2 dims (N, F) or (N, C, H, W), got "
            f"{array.shape}; add a dimension with x[:, None] for one feature."
        )
    kind = "tabular" if array.ndim == 2 else "image"
    # a table for an estimator in float64, unless the file holds float32 (or narrower) numbers: those the user chose
    # (an estimator that needs float32 rows, a skorch net, is given them as the API would be)
    wide = kind == "tabular" and table_dtype == torch.float64 and not (array.dtype.kind == "f" and array.itemsize <= 4)
    x = torch.from_numpy(np.array(array[:rows], dtype=np.float64 if wide else np.float32))
    return _Part(source, x, [f"{stem}-{i}" for i in range(len(x))], None, kind)


def _load_npy(path: Path, entry: str, rows: int | None, table_dtype: torch.dtype = torch.float32) -> _Part:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise DataFormatError(
            f"input {entry!r} cannot be read as .npy: {type(exc).__name__}: {_clip(str(exc))}"
        ) from exc
    return _array_part(array, f"input {entry!r}", path.stem, rows, table_dtype)


def _load_npz(
    path: Path,
    entry: str,
    rows: int | None,
    packing: Any = None,
    classes: Any = None,
    table_dtype: torch.dtype = torch.float32,
) -> _Part:
    """An archive's ``x`` (and labels ``y``); for a model of several inputs (``packing``), its inputs under their
    argument names (``x0``, ``x1``, ... for positional ones), packed into rows."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.keys())
            names = None
            if packing is not None:
                names = packing.names or [f"x{i}" for i in range(len(packing.shapes))]
            if names is not None and "x" not in keys and all(k in keys for k in names):
                counts = [archive[k].shape[0] if archive[k].ndim else 0 for k in names]
                if len(set(counts)) != 1:
                    raise DataFormatError(
                        f"input {entry!r}: the arrays {', '.join(map(repr, names))} hold different numbers of rows "
                        f"({', '.join(map(str, counts))}); give every input one row per sample."
                    )
                try:
                    x = packing.pack(*(torch.from_numpy(np.ascontiguousarray(archive[k])) for k in names))
                except WhyboxError as exc:
                    raise DataFormatError(f"input {entry!r}: {exc}") from None
                x = x.numpy()
            elif "x" not in keys:
                wanted = (
                    f"; this model takes {len(names)} inputs: save them as np.savez(path, "
                    + ", ".join(f"{k}=..." for k in names)
                    + ", y=labels)"
                    if names is not None
                    else "; save it with np.savez(path, x=inputs, y=labels)"
                )
                raise DataFormatError(f"input {entry!r} has no array 'x' (it holds: {_listing(keys)}){wanted}.")
            else:
                x = archive["x"]
            y = archive["y"] if "y" in keys else None
    except WhyboxError:
        raise
    except Exception as exc:
        raise DataFormatError(
            f"input {entry!r} cannot be read as .npz: {type(exc).__name__}: {_clip(str(exc))}"
        ) from exc
    part = _array_part(x, f"input {entry!r}", path.stem, rows, table_dtype)
    if packing is not None and "x" not in keys:  # packed inputs: each feature named by its input and position
        part.columns = [packing.feature_name(j) for j in range(packing.n_features)]
    if y is not None:
        if y.shape[:1] != x.shape[:1]:
            raise DataFormatError(
                f"input {entry!r}: 'y' has shape {y.shape} but the inputs have {x.shape[0]} rows; give one label per "
                "row."
            )
        if classes is not None:  # a scikit-learn classifier's labels: the values of its classes_
            try:
                found = true_class_indices(classes, np.asarray(y[:rows]).reshape(-1).tolist(), what="'y'") or []
            except InvalidInputError as exc:
                raise DataFormatError(f"input {entry!r}: {exc}") from None
            part.labels = torch.tensor(found, dtype=torch.int64)
        else:
            part.labels = _labels_from(np.asarray(y[:rows]), f"input {entry!r} ('y')", len(part.x))
    return part


def _table_coder(module: Any) -> Any:
    """The adapter that codes a table's text columns for ``module``: a scikit-learn estimator fitted on a DataFrame
    (it has ``feature_names_in_``), or such an adapter; else ``None``."""
    from whybox.models.adapter import SklearnAdapter, adapt

    if isinstance(module, SklearnAdapter):
        return module if module.feature_names is not None else None
    if isinstance(module, (nn.Module, ModelAdapter)) or getattr(module, "feature_names_in_", None) is None:
        return None
    return adapt(module)


def is_regressor_model(module: Any) -> bool:
    from whybox.models.adapter import SklearnAdapter

    if isinstance(module, SklearnAdapter):
        module = module.model
    if isinstance(module, (nn.Module, ModelAdapter)):
        return False
    from sklearn.base import is_regressor

    return bool(is_regressor(module))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _load_csv(
    path: Path,
    entry: str,
    rows: int | None,
    label_column: str | None,
    *,
    class_labels: bool = True,
    coder: Any = None,
    classes: Any = None,
    table_dtype: torch.dtype = torch.float32,
) -> _Part:
    """One CSV table, its numbers in ``table_dtype`` (:func:`_table_dtype`). With ``coder`` (the adapter of a scikit-learn estimator fitted on a DataFrame) a column with
    text cells is read as text and coded by it (:mod:`whybox.models.categorical`), as a DataFrame with that column
    would be through the API; otherwise every cell must be a number. ``classes``: the model whose ``classes_`` the
    label column's cells name (a scikit-learn classifier: ``1, 2, 3`` or ``yes, no``), else they are class indices."""
    text_columns: set[int] = set()
    raw: list[list[str]] = []
    class_index = class_indexer(classes) if classes is not None else None
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise DataFormatError(f"input {entry!r} is empty; it needs a header row and one row per input.")
            columns = [c.strip() for c in header]
            if columns and all(_is_number(c) for c in columns):  # np.savetxt's output: the first row is data
                raise DataFormatError(
                    f"input {entry!r}: its first row ({_listing(columns)}) holds only numbers, so it is data, not a "
                    "header of column names; add a header row (e.g. f0,f1,...), or save the inputs as .npy."
                )
            unnamed = [j for j, c in enumerate(columns) if not c]
            if unnamed:  # pandas' to_csv writes its index under an empty name: it would be read as a feature
                raise DataFormatError(
                    f"input {entry!r}: column{'s' if len(unnamed) > 1 else ''} {_listing([str(j) for j in unnamed])} "
                    "of the header ha" + ("ve" if len(unnamed) > 1 else "s") + " no name (pandas writes its index "
                    "so: save with DataFrame.to_csv(path, index=False); a trailing comma leaves one too); name every "
                    "column."
                )
            duplicated = sorted({c for c in columns if columns.count(c) > 1})
            if duplicated:
                raise DataFormatError(f"input {entry!r}: the header repeats column names: {_listing(duplicated)}.")
            label_at: int | None = None
            if label_column is not None:
                if label_column not in columns:
                    raise InvalidParameterError(
                        f"label_column={label_column!r} is not a column of {entry!r}; its columns: {_listing(columns)}."
                    )
                label_at = columns.index(label_column)
            features: list[list[float]] = []
            labels: list[int] = []
            for cells in reader:
                if rows is not None and len(features) >= rows:
                    break
                if not cells or all(not c.strip() for c in cells):
                    continue  # blank line
                line = reader.line_num
                if len(cells) != len(columns):
                    raise DataFormatError(
                        f"input {entry!r}, line {line}: {len(cells)} cells, but the header has {len(columns)} columns."
                    )
                row: list[float] = []
                for j, (name, cell) in enumerate(zip(columns, cells, strict=True)):
                    if j == label_at and not class_labels:
                        continue  # a regressor's target column: not a feature, and no class label (may be blank)
                    if j == label_at and class_index is not None:  # a class of the estimator, as it names them
                        try:
                            labels.append(class_index(cell))
                        except InvalidInputError as exc:
                            raise DataFormatError(
                                f"input {entry!r}, line {line}, column {name!r} (the label column): {exc}"
                            ) from None
                        continue
                    try:
                        value = float(cell)
                    except ValueError:
                        value = math.nan
                    if not math.isfinite(value) and coder is not None and j != label_at and cell.strip():
                        text_columns.add(j)  # a text cell: the column is read as text, coded for the estimator
                        value = 0.0
                    if not math.isfinite(value):
                        fix = (
                            "fill it in (e.g. with a 'missing' category)"
                            if coder is not None and not cell.strip()
                            else "every cell must be numeric (encode categories as numbers first, or fit the model "
                            "on a DataFrame whose pipeline encodes them: its text columns are then read as text)"
                        )
                        raise DataFormatError(
                            f"input {entry!r}, line {line}, column {name!r}: {cell!r} is not a finite number; {fix}."
                        )
                    if j == label_at:
                        if value != round(value):
                            raise DataFormatError(
                                f"input {entry!r}, line {line}, column {name!r} (the label column): {cell!r} is not "
                                "an integer class index."
                            )
                        labels.append(int(value))
                    else:
                        row.append(value)
                features.append(row)
                if coder is not None:
                    raw.append([c for j, c in enumerate(cells) if j != label_at])
    except WhyboxError:
        raise
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataFormatError(
            f"input {entry!r} cannot be read as CSV: {type(exc).__name__}: {_clip(str(exc))}"
        ) from exc
    n_features = len(columns) - (label_at is not None)
    wide = table_dtype == torch.float64
    x = torch.tensor(np.array(features, dtype=np.float64 if wide else np.float32).reshape(len(features), n_features))
    names = [f"{path.stem}-{i}" for i in range(len(features))]
    y = torch.tensor(labels, dtype=torch.int64) if label_at is not None and class_labels else None
    kept = [c for j, c in enumerate(columns) if j != label_at]
    if text_columns or (coder is not None and getattr(coder, "feature_names", None) is not None and features):
        # text columns, or an estimator fitted on a DataFrame: its rows as such a frame would give them (text, bool
        # and int columns in their types, which the adapter gives back to the estimator)
        texts = {columns[j] for j in text_columns}
        x, kept = _coded_table(raw, x, kept, texts, coder, f"input {entry!r}", table_dtype)
    return _Part(f"input {entry!r}", x, names, y, "tabular", kept)


def _is_int(cell: str) -> bool:
    try:
        int(cell)
    except ValueError:
        return False
    return True


def _coded_table(
    raw: list[list[str]],
    x: torch.Tensor,
    columns: list[str],
    texts: set[str],
    coder: Any,
    what: str,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, list[str]]:
    """A table with text columns for an estimator fitted on a DataFrame: as a DataFrame in the estimator's column
    order (the text columns as read, the others as numbers), coded by the estimator's adapter ``coder``, in
    ``dtype``. Its rows are data rows (``kind="data"``): a row holding a category the estimator's encoder was not
    fitted on is not refused here, it fails alone when the model is asked for it (a run records it with its
    reason, naming the column and the value) and the other rows go on."""
    import pandas as pd  # the estimator was fitted on a DataFrame: pandas is installed

    fitted = list(coder.feature_names)
    missing, extra = column_mismatch(columns, fitted)
    if missing or extra:
        raise InvalidInputError(_header_mismatch(missing, extra))
    data: dict[str, Any] = {}
    for j, c in enumerate(columns):
        cells = [r[j].strip() for r in raw]
        if all(v.lower() in ("true", "false") for v in cells):  # DataFrame.to_csv's bools
            data[c] = np.array([v.lower() == "true" for v in cells])
        elif c in texts:
            data[c] = [r[j] for r in raw]
        elif all(_is_int(v) for v in cells):  # whole numbers written as such: an int column
            data[c] = np.array([int(v) for v in cells], dtype=np.int64)
        else:
            data[c] = np.array([float(v) for v in cells], dtype=np.float64)
    frame = pd.DataFrame({c: data[c] for c in fitted})
    return encode_frame(frame, coder, what, "data").to(dtype), fitted


def _unique(names: list[str]) -> list[str]:
    """Keep the first of each name; later repeats get ``#2``, ``#3``, ... (never colliding with another name)."""
    taken = set(names)
    seen: set[str] = set()
    out = []
    for name in names:
        if name not in seen:
            seen.add(name)
            out.append(name)
            continue
        k = 2
        while f"{name}#{k}" in taken or f"{name}#{k}" in seen:
            k += 1
        unique = f"{name}#{k}"
        seen.add(unique)
        out.append(unique)
    return out


def _combine(parts: list[_Part]) -> Dataset:
    first = parts[0]
    for part in parts[1:]:
        if part.kind != first.kind:
            raise InvalidInputError(
                f"cannot mix {first.kind} and {part.kind} inputs: {first.source} gives {first.kind} inputs, "
                f"{part.source} gives {part.kind} inputs; explain them in separate runs."
            )
        if part.x.shape[1:] != first.x.shape[1:]:
            raise InvalidInputError(
                f"inputs of different shapes: {first.source} gives {tuple(first.x.shape[1:])} per row, {part.source} "
                f"gives {tuple(part.x.shape[1:])}; every input must have the same shape."
            )
        if (part.labels is None) != (first.labels is None):
            with_labels, without = (first, part) if first.labels is not None else (part, first)
            raise InvalidInputError(
                f"{with_labels.source} has labels but {without.source} has none; give labels for every input or for "
                "none (load them in separate runs)."
            )
    columns = None
    for part in parts:
        if part.columns is None:
            continue
        if columns is not None and part.columns != columns[1]:
            raise InvalidInputError(
                f"{columns[0]} and {part.source} have different columns ({_listing(columns[1])} vs "
                f"{_listing(part.columns)}); put the columns in the same order."
            )
        columns = (part.source, part.columns)
    labels = None if first.labels is None else torch.cat([p.labels for p in parts if p.labels is not None])
    return Dataset(
        x=torch.cat([p.x for p in parts]),
        names=_unique([n for p in parts for n in p.names]),
        labels=labels,
        kind=first.kind,
        columns=None if columns is None else list(columns[1]),
    )


def load_inputs(
    paths: Sequence[str], model: LoadedModel, *, limit: int | None = None, label_column: str | None = None
) -> Dataset:
    """Load the inputs the command line names, prepared for ``model``, as one :class:`Dataset`.

    Parameters
    ----------
    paths : sequence of str
        Each entry is one of

        * a builtin dataset, :data:`BUILTIN_DATASETS` (these names are reserved: write ``./photos`` for
          a folder of that name): ``"photos"``, the photos bundled with scikit-image, through
          ``model.prepare_image`` (with ``efficientnet-lite0`` exactly :func:`whybox.data.photos`),
          named by photo, no labels; ``"digits-test"``, the 450 labelled test digits of
          :func:`whybox.data.load_digits`, each through ``model.prepare_image`` (unchanged for
          ``digits-cnn``), named ``digits-test-0000``, ...;
        * an image file (:data:`IMAGE_SUFFIXES`; the first frame, EXIF orientation applied), named by
          its file name;
        * a folder: its image files sorted by name (not recursive; hidden files and other files skipped);
        * a ``.npy`` array ``(N, ...)``, used as model inputs as it is, rows named ``<stem>-<i>``;
        * a ``.npz`` archive with the inputs under ``x`` and optional integer labels under ``y``;
        * a ``.csv`` table with a header row; every cell numeric.

        Entries are concatenated in order.
    model : LoadedModel
        What :func:`load_model` returned; its ``prepare_image`` turns each image into a model input.
    limit : int, optional
        Keep only the first ``limit`` rows. Every entry is checked to exist, but entries after the
        limit is reached are not read.
    label_column : str, optional
        A CSV column holding integer class indices: it becomes ``labels`` and is not a feature. For a
        scikit-learn regressor it holds the regression targets: left out of the features, not read as labels
        (a regressor has no classes; its one output is what is explained).

    Returns
    -------
    Dataset
        ``x`` ``(N, ...)``: float32, except tables (CSV, 2-dim arrays) for a model that computes in float64 (a
        scikit-learn estimator, as the API reads a DataFrame for it; a torch model with float64 weights): float64;
        ``names`` unique (repeats get ``#2``, ``#3``, ...); ``labels``
        ``(N,)`` int64 when every source has labels; ``kind`` ``"image"`` (image sources, and arrays with
        3 or more dims), ``"signal"`` or ``"sequence"`` (3-dim arrays of time series, see :class:`Dataset`) or
        ``"tabular"`` (CSV, 2-dim arrays); ``columns`` from the CSV header.

    Raises
    ------
    InvalidParameterError
        For an empty or bare-string ``paths``, a bad ``limit`` or ``label_column``, an unsupported file
        type, or images given to a model that takes none.
    DatasetNotFoundError
        For an entry that is neither a builtin dataset nor an existing path, or a folder without images.
    DataFormatError
        For a file that cannot be read, a non-numeric or non-finite CSV cell (the message names the
        file, line and column), or arrays of the wrong dtype or rank.
    InvalidInputError
        When entries mix image and tabular inputs, give inputs of different shapes, or some have labels
        and others not (the message names both entries).

    Shapes
    ------
    x: ``(N, C, H, W)`` for images (the shape ``prepare_image`` gives), ``(N, F)`` for tables.
    """
    if isinstance(paths, (str, os.PathLike)) or not isinstance(paths, Sequence):
        raise InvalidParameterError(
            f"paths must be a list of paths or dataset names, got {paths!r}"
            + (f"; pass [{paths!r}]." if isinstance(paths, (str, os.PathLike)) else ".")
        )
    if not paths:
        raise InvalidParameterError(
            f"paths must not be empty; give image files, folders, .npy/.npz/.csv files or a builtin dataset "
            f"({', '.join(BUILTIN_DATASETS)})."
        )
    if not isinstance(model, LoadedModel):
        raise InvalidParameterError(f"model must be a LoadedModel from load_model(), got {type(model).__name__}.")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidParameterError(f"limit must be a positive integer or None, got {limit!r}.")
    if _is_text(model):
        return _load_texts(paths, model, limit)
    if label_column is not None and (not isinstance(label_column, str) or not label_column.strip()):
        raise InvalidParameterError(f"label_column must be a non-empty column name or None, got {label_column!r}.")
    sources = [_classify(entry, model) for entry in paths]
    if label_column is not None and not any(s.kind == "csv" for s in sources):
        raise InvalidParameterError(
            f"label_column={label_column!r} applies to .csv inputs, but none was given "
            f"({', '.join(repr(s.entry) for s in sources)}); .npz files carry labels under 'y'."
        )

    parts: list[_Part] = []
    remaining = limit
    coder = None  # the estimator's adapter, where a CSV's text columns are coded (one vocabulary for every table)
    table_dtype = _table_dtype(model.module)
    for s in sources:
        if remaining == 0:
            break
        if s.kind == "builtin":
            part = _load_builtin(s.entry, model, remaining)
            part.source = f"input {s.entry!r}"
        elif s.kind == "folder":
            files = _image_files(s.path, s.entry)[:remaining]
            part = _load_images([(p, p.name) for p in files], model, f"input {s.entry!r}")
        elif s.kind == "image":
            part = _load_images([(s.path, s.path.name)], model, f"input {s.entry!r}")
        elif s.kind == "npy":
            part = _load_npy(s.path, s.entry, remaining, table_dtype)
        elif s.kind == "npz":
            part = _load_npz(
                s.path,
                s.entry,
                remaining,
                getattr(model.module, "packing", None),
                classes=model.module if estimator_classes(model.module) is not None else None,
                table_dtype=table_dtype,
            )
        else:
            coder = coder or _table_coder(model.module)
            part = _load_csv(
                s.path,
                s.entry,
                remaining,
                label_column,
                class_labels=not is_regressor_model(model.module),
                coder=coder,
                classes=model.module if estimator_classes(model.module) is not None else None,
                table_dtype=table_dtype,
            )
        if len(part.x) == 0:
            raise DataFormatError(f"{part.source} holds no rows.")
        parts.append(part)
        if remaining is not None:
            remaining -= len(part.x)
    ds = _match_fitted_columns(_combine(parts), model)
    if coder is not None and (coder.categories or getattr(coder, "numeric_dtypes", None)):
        # text columns coded, or int/bool columns read in their types: the model to use is that adapter
        ds = dataclasses.replace(ds, coder=coder)
    if ds.kind == "image" and ds.x.ndim == 3:
        # (N, C, L) arrays a 1-D CNN reads: signals; (N, T, D) a recurrent or transformer model reads: sequences
        ds = dataclasses.replace(ds, kind=_timed_kind(model.module, ds.x) or ds.kind)
    return ds


def _timed_kind(module: Any, x: torch.Tensor) -> str | None:
    """``"signal"`` or ``"sequence"`` for 3-D inputs ``x`` of ``module`` that are time series (see
    :func:`~whybox.models.adapter.is_signal` and :func:`~whybox.models.adapter.is_sequence`), else None."""
    from whybox.models.adapter import TorchAdapter, is_sequence, is_signal

    if isinstance(module, nn.Module):
        module = TorchAdapter(module)
    if not isinstance(module, TorchAdapter):
        return None
    return "signal" if is_signal(module, x) else "sequence" if is_sequence(module, x) else None


def _match_fitted_columns(ds: Dataset, model: LoadedModel) -> Dataset:
    """A CSV table for an estimator fitted on a DataFrame: its columns put in the estimator's order (by header
    name); a header without all of the estimator's columns, or with others, is refused naming them."""
    module = getattr(model.module, "model", model.module)  # an estimator's own, also behind a whybox adapter
    fitted = getattr(module, "feature_names_in_", None)
    if ds.columns is None or fitted is None:
        return ds
    fitted = [str(c) for c in fitted]
    if ds.columns == fitted:
        return ds
    missing, extra = column_mismatch(ds.columns, fitted)
    if missing or extra:
        raise InvalidInputError(_header_mismatch(missing, extra))
    order = torch.tensor([ds.columns.index(c) for c in fitted])
    return dataclasses.replace(ds, x=ds.x[:, order].contiguous(), columns=fitted)


def _is_text(model: LoadedModel) -> bool:
    """Whether the model reads texts: a Hugging Face text adapter or a black-box text model (a function of strings)."""
    from whybox.models.inputs import is_text_adapter

    return is_text_adapter(model.module)


def texts_dataset(texts: Sequence[str], model: LoadedModel, *, names: Sequence[str] | None = None,
                  labels: torch.Tensor | None = None) -> Dataset:  # fmt: skip
    """A text :class:`Dataset`: ``texts`` encoded by the model's text adapter (padded to the longest)."""
    texts = [str(t) for t in texts]
    if not texts or any(not t.strip() for t in texts):
        raise InvalidInputError("texts must be non-empty strings (blank lines are skipped in .txt files).")
    batch = model.module.encode(texts)
    names = _unique([f"text-{i:04d}" for i in range(len(texts))] if names is None else list(names))
    # the inputs stay on the CPU like every dataset's (explanations come back on their inputs' device)
    return Dataset(batch.inputs.detach().cpu(), names, labels, "text", None, texts)


def _load_texts(paths: Sequence[str | os.PathLike[str]], model: LoadedModel, limit: int | None) -> Dataset:
    """Texts for a text model: the builtin ``sentiment-test`` set, or ``.txt`` files (one text per line)."""
    texts: list[str] = []
    names: list[str] = []
    labels: list[int] = []  # -1: a row of a source without labels
    sources: list[str] = []  # each row's source, for the mixed-labels error
    for entry in paths:
        if limit is not None and len(texts) >= limit:
            break  # sources past the limit are not read
        text = os.fspath(entry)
        if text == "sentiment-test":
            from whybox.data.text import sentiment_data

            builtin_texts, builtin_labels = sentiment_data("test")
            texts += builtin_texts
            names += [f"sentiment-test-{i:03d}" for i in range(len(builtin_texts))]
            labels += builtin_labels.tolist()
            sources += [text] * len(builtin_texts)
            continue
        path = Path(text).expanduser()
        if not path.is_file() or path.suffix.lower() != ".txt":
            raise DatasetNotFoundError(
                f"input {text!r}: a text model reads the builtin 'sentiment-test' set or .txt files (one text per "
                "line)" + ("; no such file." if not path.exists() else f"; got {path.suffix or 'no suffix'!r}.")
            )
        try:
            # lines end at \n, \r\n or a lone \r (read_text's universal newlines make them all \n); not
            # str.splitlines, which also splits at U+2028, U+0085, form feeds and other characters a pasted text may
            # hold: one line became several texts, and the later ones' <file>:<line> names were wrong
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8-sig").split("\n")]  # a BOM left out
        except (OSError, UnicodeDecodeError) as exc:
            raise DataFormatError(f"input {text!r} could not be read as UTF-8 text: {exc}.") from None
        numbered = [(i + 1, ln) for i, ln in enumerate(lines) if ln]  # named by their line in the file
        if not numbered:
            raise DataFormatError(f"input {text!r} holds no text (every line is blank).")
        texts += [ln for _, ln in numbered]
        names += [f"{path.name}:{n}" for n, _ in numbered]
        labels += [-1] * len(numbered)
        sources += [text] * len(numbered)
    if limit is not None:
        texts, names, labels, sources = texts[:limit], names[:limit], labels[:limit], sources[:limit]
    with_labels = [s for s, lab in zip(sources, labels, strict=True) if lab >= 0]
    without = [s for s, lab in zip(sources, labels, strict=True) if lab < 0]
    if with_labels and without:  # as image inputs: labels for every input or for none
        raise InvalidInputError(
            f"{with_labels[0]} has labels but {without[0]} has none; give labels for every input or for none (load "
            "them in separate runs)."
        )
    y = torch.tensor(labels, dtype=torch.int64) if with_labels else None
    return texts_dataset(texts, model, names=names, labels=y)


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


def _type_names(types: tuple[type, ...]) -> str:
    names: dict[type, str] = {dict: "a table (dict)", list: "an array (list)"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _check_value(key: str, value: Any, types: tuple[type, ...], where: str, tables: list[str]) -> Any:
    if isinstance(value, bool):
        ok = bool in types or object in types
    elif isinstance(value, int) and float in types and int not in types:
        return float(value)  # TOML 1 for a float option
    else:
        ok = isinstance(value, types)
    if ok:
        return value
    got = "a table" if isinstance(value, dict) else f"{type(value).__name__} {_clip(repr(value), 80)}"
    hint = f" (tables are allowed only for: {', '.join(tables)})" if isinstance(value, dict) and tables else ""
    raise InvalidParameterError(f"config {where}: {key!r} must be {_type_names(types)}; got {got}{hint}.")


def _yaml_loader(yaml: Any) -> Any:
    """PyYAML's safe loader reading floats as YAML 1.2 (and TOML, JSON) write them: ``1e-1`` and ``2E5`` are numbers
    (YAML 1.1, PyYAML's default, wants a dot and a signed exponent and read them as strings)."""
    import re

    class Loader(yaml.SafeLoader):
        pass

    number = re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$|^[-+]?(?:\d[\d_]*)?\.\d+$|^[-+]?\d+\.\d*$")
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", number, list("-+0123456789."))
    return Loader


def _parse_config(text: str, suffix: str, where: str) -> dict[str, Any]:
    """A config's top-level mapping: JSON for ``.json``, YAML (safe loader: plain data, no tags that build
    objects) for ``.yaml`` / ``.yml``, TOML otherwise."""
    if suffix == ".json":
        import json

        try:
            table = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidParameterError(f"the config file {where} is not valid JSON: {exc}.") from exc
    elif suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:
            raise InvalidParameterError(
                f"the config file {where} is YAML, which needs PyYAML (pip install pyyaml); or write it as TOML."
            ) from exc
        try:
            table = yaml.load(text, Loader=_yaml_loader(yaml))  # a SafeLoader subclass: plain data only
        except yaml.YAMLError as exc:
            raise InvalidParameterError(f"the config file {where} is not plain YAML data: {exc}.") from exc
        table = {} if table is None else table
    else:
        try:
            table = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InvalidParameterError(f"the config file {where} is not valid TOML: {exc}.") from exc
    if not isinstance(table, dict) or not all(isinstance(k, str) for k in table):
        raise InvalidParameterError(
            f"the config file {where} must hold a mapping of option names to values at its top level; got "
            f"{type(table).__name__}."
        )
    return table


def load_config(path: str | os.PathLike[str], *, allowed: Mapping[str, type | tuple[type, ...]]) -> dict[str, Any]:
    """Read a config file of command-line options (TOML; JSON for ``.json``, YAML through a safe loader for
    ``.yaml`` / ``.yml``) and check its keys and value types.

    Keys are the command-line flag names without ``--``, with dashes or underscores
    (``n-samples`` and ``n_samples`` are the same key); the result uses underscores. Nested tables are
    allowed only for keys whose allowed type is ``dict``, e.g. per-method options::

        methods = ["lime", "rise"]
        [options.lime]
        n_samples = 100

    Nothing in the file is imported or evaluated.

    Parameters
    ----------
    path : str or path-like
        The config file (``.toml``, ``.json``, ``.yaml`` or ``.yml``).
    allowed : mapping of str to type or tuple of types
        The keys allowed at the top level (dashes or underscores) and the type(s) of each value. An
        integer is accepted (and converted) where ``float`` is allowed but ``int`` is not; a boolean is
        accepted only where ``bool`` is.

    Returns
    -------
    dict
        The top-level table, keys with underscores; nested tables as plain dicts, unchanged.

    Raises
    ------
    InvalidParameterError
        If the file is missing or unreadable (naming the path), not UTF-8 TOML (naming the path and,
        for a syntax error, the line and column), has unknown keys (listing all of them and the allowed
        ones), the same key twice (once with dashes, once with underscores), or a value of the wrong
        type (naming the key, the value and the expected type). Also if ``allowed`` is malformed.
    """
    if not isinstance(allowed, Mapping):
        raise InvalidParameterError(f"allowed must be a mapping of key to type, got {type(allowed).__name__}.")
    expected: dict[str, tuple[type, ...]] = {}
    for key, spec in allowed.items():
        types = spec if isinstance(spec, tuple) else (spec,)
        if not isinstance(key, str) or not types or not all(isinstance(t, type) for t in types):
            raise InvalidParameterError(f"allowed[{key!r}] must be a type or a tuple of types, got {spec!r}.")
        expected[key.replace("-", "_")] = types
    p = _check_path_arg(path, "path")
    where = repr(str(p))
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise InvalidParameterError(
            f"cannot read the config file {where}: {exc.strerror or exc} (looked at {p.resolve()})."
        ) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidParameterError(f"the config file {where} is not UTF-8 text (byte {exc.start}).") from exc
    table = _parse_config(text, p.suffix.lower(), where)

    normalised: dict[str, tuple[str, Any]] = {}
    for key, value in table.items():
        norm = key.replace("-", "_")
        if norm in normalised:
            raise InvalidParameterError(
                f"config {where} sets {normalised[norm][0]!r} and {key!r}, which are the same option; keep one."
            )
        normalised[norm] = (key, value)
    unknown = [original for norm, (original, _) in normalised.items() if norm not in expected]
    if unknown:
        named = [
            repr(k)
            + (
                f" (did you mean {close[0]!r}?)"
                if (close := get_close_matches(k.replace("-", "_"), expected, n=1))
                else ""
            )
            for k in unknown
        ]
        raise InvalidParameterError(
            f"config {where} has unknown keys: {', '.join(named)}; allowed keys: "
            f"{', '.join(sorted(expected)) or '(none)'} (dashes or underscores)."
        )
    tables = sorted(k for k, types in expected.items() if dict in types)
    return {
        norm: _check_value(original, value, expected[norm], where, tables)
        for norm, (original, value) in normalised.items()
    }
