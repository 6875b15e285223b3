"""Models of several input tensors, ``model(image, metadata)`` or ``model(image=..., metadata=...)``.

whybox explains one input tensor ``(B, ...)``; a model of several inputs is adapted with
``whybox.adapt(model, input_shapes=[(3, 32, 32), (10,)])`` (or a mapping ``{"image": (3, 32, 32), "metadata": (10,)}``
for keyword arguments). Its inputs are then *packed*: each sample's tensors flattened and laid end to end in one
row ``(B, F)``, ``F`` = the sum of their sizes, which every method and metric takes as rows of F features
(gradients flow through the unpacking, so gradient methods give each input's gradient, as captum's tuple inputs do;
perturbation methods mask any features, e.g. whole inputs with ``features=packing.input_groups()``). A tuple (or a
mapping) of the per-input tensors given as ``inputs`` is packed on the way in; :meth:`InputPacking.unpack` cuts
attributions ``(B, F)`` back into one tensor per input, shaped as that input.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from whybox.errors import InvalidInputError, InvalidParameterError, WhyboxError

__all__ = ["InputPacking"]


class InputPacking:
    """The layout of a packed row: each input's name (``None`` for positional arguments), shape and slice.

    Parameters
    ----------
    shapes
        One per-sample shape per input, in the order of the model's positional arguments, or a mapping from the
        keyword argument names to the shapes.
    """

    def __init__(self, shapes: Sequence[Sequence[int]] | Mapping[str, Sequence[int]]) -> None:
        named = isinstance(shapes, Mapping)
        items = list(shapes.items()) if isinstance(shapes, Mapping) else [(None, s) for s in shapes]
        if isinstance(shapes, (str, bytes)) or not items:
            raise InvalidParameterError(
                f"input_shapes must list one per-sample shape per model input, e.g. [(3, 32, 32), (10,)] or "
                f"{{'image': (3, 32, 32), 'metadata': (10,)}}; got {shapes!r}."
            )
        self.names: list[str] | None = [str(k) for k, _ in items] if named else None
        self.shapes: list[tuple[int, ...]] = []
        for key, shape in items:
            label = f"[{key!r}]" if named else f"[{len(self.shapes)}]"
            if isinstance(shape, int) and not isinstance(shape, bool):
                shape = (shape,)
            if not isinstance(shape, (tuple, list, torch.Size)) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape
            ):
                raise InvalidParameterError(
                    f"input_shapes{label} must be one sample's shape, a tuple of ints >= 1 without the batch "
                    f"dimension (e.g. (3, 32, 32); () for one number per sample, an input (B,)); got {shape!r}."
                )
            self.shapes.append(tuple(int(d) for d in shape))
        self.sizes = [math.prod(s) for s in self.shapes]
        self._channels_last: bool | None = None  # whether the model takes channels-last images (None: not tried)
        self.n_features = sum(self.sizes)

    # ------------------------------------------------------------------ describing
    def _label(self, i: int) -> str:
        return repr(self.names[i]) if self.names is not None else f"input {i}"

    def __repr__(self) -> str:
        parts = ", ".join(f"{self._label(i)}: {s}" for i, s in enumerate(self.shapes))
        return f"InputPacking({parts}; {self.n_features} features per row)"

    def feature_name(self, j: int) -> str:
        """Packed feature ``j`` by its input and position: ``"meta[3]"``, ``"image[0,5,2]"`` (``"input 1[3]"`` for
        positional inputs)."""
        if not 0 <= j < self.n_features:
            raise InvalidParameterError(f"feature index must be in [0, {self.n_features}); got {j}.")
        for i, size in enumerate(self.sizes):
            if j < size:
                name = self.names[i] if self.names is not None else f"input {i}"
                if not self.shapes[i]:  # one number per sample
                    return name
                return f"{name}[{','.join(map(str, np.unravel_index(j, self.shapes[i])))}]"
            j -= size
        raise AssertionError("unreachable")  # pragma: no cover

    @property
    def images(self) -> list[int]:
        """The indices of the image inputs, per-sample shape ``(C, H, W)``."""
        return [i for i, s in enumerate(self.shapes) if len(s) == 3]

    @property
    def has_image(self) -> bool:
        """Whether an input is an image, a per-sample shape ``(C, H, W)``."""
        return bool(self.images)

    def region_groups(self, patch: int | tuple[int, int] | None = None) -> torch.Tensor:
        """``(F,)`` int64 feature ids for the perturbation methods' default features: each image input ``(C, H, W)``
        in square patches of ``patch`` pixels shared by its channels (default ``ceil(min(H, W) / 8)``, as
        ``features="grid"`` cuts images: 64 patches of a square image), every value of the other inputs its own
        feature."""
        ids: list[torch.Tensor] = []
        start = 0
        for shape, size in zip(self.shapes, self.sizes, strict=True):
            if len(shape) == 3:
                c, h, w = shape
                ph, pw = (patch, patch) if isinstance(patch, int) else patch or (-(-min(h, w) // 8),) * 2
                cols = -(-w // pw)
                cell = (torch.arange(h) // ph).view(-1, 1) * cols + (torch.arange(w) // pw).view(1, -1)
                cell = torch.unique(cell, return_inverse=True)[1]  # consecutive ids
                part = cell.expand(c, h, w).reshape(-1)
            else:
                part = torch.arange(size)
            ids.append(part + start)
            start += int(part.max()) + 1
        return torch.cat(ids)

    def input_groups(self) -> torch.Tensor:
        """``(F,)`` int64: feature ``f`` belongs to input ``i`` (a label map for ``features=`` / ``regions=``: one
        feature per input, e.g. exact Shapley values of the inputs themselves)."""
        return torch.repeat_interleave(torch.arange(len(self.sizes)), torch.tensor(self.sizes))

    # ------------------------------------------------------------------ packing
    def pack(self, *tensors: Any, **named: Any) -> torch.Tensor:
        """One packed row per sample, ``(B, F)``: each input ``(B, *shape)`` flattened, end to end, in one floating
        dtype (the widest of the inputs'; integer inputs are refused: attribute those at their embedding)."""
        if self.names is not None and tensors and not named and len(tensors) == len(self.names):
            named = dict(zip(self.names, tensors, strict=True))
            tensors = ()
        if self.names is not None:
            if tensors or set(named) != set(self.names):
                raise InvalidInputError(
                    f"inputs must give the model's inputs {', '.join(map(repr, self.names))} (a mapping, or a tuple in "
                    f"that order); got {', '.join(map(repr, named)) if named else f'{len(tensors)} positional'}."
                )
            parts = [named[k] for k in self.names]
        else:
            if named or len(tensors) != len(self.shapes):
                got = f"{len(tensors)} tensor{'s' if len(tensors) != 1 else ''}" + (
                    f" and keywords {', '.join(map(repr, named))}" if named else ""
                )
                raise InvalidInputError(
                    f"inputs must be a tuple of the model's {len(self.shapes)} inputs, shaped (B, *s) for s in "
                    f"{self.shapes}; got {got}."
                )
            parts = list(tensors)
        flat: list[torch.Tensor] = []
        batch: int | None = None
        for i, (t, shape) in enumerate(zip(parts, self.shapes, strict=True)):
            if isinstance(t, np.ndarray):
                t = torch.from_numpy(np.ascontiguousarray(t))
            if not isinstance(t, torch.Tensor):
                raise InvalidInputError(
                    f"{self._label(i)} must be a tensor or a numpy array (B, *{shape}); got {type(t).__name__}."
                )
            if tuple(t.shape[1:]) != shape or t.ndim != len(shape) + 1:
                raise InvalidInputError(
                    f"{self._label(i)} must have shape (B, *{shape}) (a batch of samples shaped as input_shapes "
                    f"says); got {tuple(t.shape)}."
                )
            if not t.is_floating_point():
                raise InvalidInputError(
                    f"{self._label(i)} has dtype {t.dtype}; packed inputs are attributed, so they must be floating "
                    "point. Pass float values, or attribute integer ids (tokens) at their embedding layer."
                )
            if batch is not None and t.shape[0] != batch:
                raise InvalidInputError(
                    f"the inputs disagree on the batch size: {self._label(0)} has {batch} rows, {self._label(i)} "
                    f"{t.shape[0]}; give every input the same samples, one row each."
                )
            batch = t.shape[0]
            if batch == 0:
                raise InvalidInputError("inputs hold no rows (batch size 0); pass at least one row.")
            flat.append(t.reshape(t.shape[0], -1))
        dtype = flat[0].dtype
        for t in flat[1:]:
            dtype = torch.promote_types(dtype, t.dtype)
        device = flat[0].device
        return torch.cat([t.to(device=device, dtype=dtype) for t in flat], dim=1)

    def unpack(self, rows: torch.Tensor) -> list[torch.Tensor]:
        """Packed rows ``(B, F)`` (inputs, or attributions shaped like them) cut into one tensor per input,
        ``(B, *shape)``; gradients flow through to the packed rows."""
        self._check(rows)
        # contiguous copies, not strided views into the rows: a convolution reads a strided image far slower (26 ms
        # against 19 ms for 48 images of 3 x 64 x 64 in bench/packed.py's model); gradients flow through the copy
        return [p.contiguous() for p in self._views(rows)]

    def _check(self, rows: Any) -> None:
        if not isinstance(rows, torch.Tensor) or rows.ndim != 2 or rows.shape[1] != self.n_features:
            got = tuple(rows.shape) if isinstance(rows, torch.Tensor) else type(rows).__name__
            raise InvalidInputError(
                f"packed rows must have shape (B, {self.n_features}) for the inputs {self.shapes}; got {got}. Pass "
                "the inputs as a tuple (whybox packs them) or as adapter.packing.pack(...)."
            )

    def _views(self, rows: torch.Tensor) -> list[torch.Tensor]:
        """Each input's part of checked ``rows`` ``(B, *shape)`` as a strided view (no copy)."""
        return [p.reshape(rows.shape[0], *s) for p, s in zip(rows.split(self.sizes, dim=1), self.shapes, strict=True)]

    def unpack_named(self, rows: torch.Tensor) -> dict[str, torch.Tensor] | list[torch.Tensor]:
        """:meth:`unpack` as a mapping by argument name when the inputs are keyword arguments."""
        parts = self.unpack(rows)
        return dict(zip(self.names, parts, strict=True)) if self.names is not None else parts

    def call(self, model: Any, rows: torch.Tensor) -> Any:
        """``model`` on packed rows: its inputs unpacked, as positional or keyword arguments. On the CPU, image
        inputs ``(B, C, H, W)`` reach it in channels-last memory layout (the same values; oneDNN's convolutions and
        pooling run faster on it, as the masking engine's image batches do), unless the model refuses such a
        tensor (a ``view`` of it), which is then remembered."""
        self._check(rows)
        views = self._views(rows)
        images = [i for i in self.images if rows.device.type == "cpu" and self.shapes[i][0] > 1]
        if images and self._channels_last is not False:  # one copy of each image, straight into channels-last
            last = [p.contiguous(memory_format=torch.channels_last) if i in images else p.contiguous()
                    for i, p in enumerate(views)]  # fmt: skip
            try:
                out = self._call(model, last)
            except WhyboxError:
                raise
            except Exception:  # any refusal of the layout; a genuine error raises again below
                out = self._call(model, [p.contiguous() for p in views])
                self._channels_last = False
                return out
            self._channels_last = True
            return out
        return self._call(model, [p.contiguous() for p in views])

    def _call(self, model: Any, parts: list[torch.Tensor]) -> Any:
        if self.names is not None:
            return model(**dict(zip(self.names, parts, strict=True)))
        return model(*parts)

    def pack_inputs(self, inputs: Any) -> Any:
        """``inputs`` given as a tuple or list of the per-input tensors (or a mapping by name), packed; anything
        else unchanged (already packed rows, which the model call checks)."""
        if isinstance(inputs, Mapping):
            return self.pack(**inputs)
        if (
            isinstance(inputs, (tuple, list))
            and inputs
            and all(isinstance(t, (torch.Tensor, np.ndarray)) for t in inputs)
        ):
            return self.pack(*inputs)
        return inputs


def packed_option(value: Any, adapter: Any, name: str = "option") -> Any:
    """A reference given per input (captum's convention) for a model of several inputs, packed like its rows: a
    tuple, list or mapping of tensors or arrays, each one sample's shape (a baseline row ``(F,)``) or with a batch
    dimension (rows ``(B, F)``), or of one number per input (``(0.0, 50.0)``: that value over the input). Anything
    else, or any value for another model, unchanged. A per-input value that does not fit the inputs is an
    :class:`InvalidParameterError` naming the option ``name`` (``fill``, ``baseline``, ``background``)."""
    packing = getattr(adapter, "packing", None)
    if packing is None:
        return value
    parts = list(value.values()) if isinstance(value, Mapping) else value
    number = (int, float, np.integer, np.floating)
    if not (
        isinstance(parts, (tuple, list))
        and parts
        and all(isinstance(t, (torch.Tensor, np.ndarray, *number)) and not isinstance(t, bool) for t in parts)
    ):
        return value
    per_input = name in ("fill", "baseline", "background")  # options read per input (not a nested dict option)
    if isinstance(value, Mapping) and not per_input and name != "option":
        return value  # a nested method's options (LIMA's prior_options): not one value per input
    if isinstance(value, Mapping) and packing.names is None:
        raise InvalidParameterError(
            f"{name}= is a mapping, but this model's inputs have no names (input_shapes was a list): give one value "
            f"per input as a tuple in their order, or adapt the model with input_shapes={{name: shape, ...}}."
        )
    if (
        per_input
        and isinstance(value, Mapping)
        and packing.names is not None
        and set(map(str, value)) != set(packing.names)
    ):
        given = ", ".join(repr(str(k)) for k in value)
        raise InvalidParameterError(
            f"{name}= given per input must name each of the model's inputs "
            f"{', '.join(map(repr, packing.names))}; got {given}. Give one value per input (a number, or a tensor "
            "of that input's shape), or one value for all."
        )
    if not any(isinstance(t, (torch.Tensor, np.ndarray)) or len(parts) > 1 for t in parts):
        return value
    try:
        return _pack_option(value, parts, packing, number)
    except InvalidInputError as exc:  # said of the inputs by pack_inputs: it is the option that does not fit
        raise InvalidParameterError(
            f"{name}= given per input does not fit the model's inputs: {exc} (in {name}=; each part is that input's "
            "one-sample shape, or rows (B, *shape), or one number)"
        ) from None


def _pack_option(value: Any, parts: Any, packing: InputPacking, number: tuple[type, ...]) -> Any:
    """:func:`packed_option`'s packing of a per-input value."""
    if isinstance(value, Mapping) and packing.names is not None:  # each value against its own input's shape
        shape_of = dict(zip(packing.names, packing.shapes, strict=True))
        shapes = [shape_of.get(k, ()) for k in value]
    else:
        shapes = list(packing.shapes)
    if len(parts) == len(shapes) and any(isinstance(t, number) or getattr(t, "ndim", 1) == 0 for t in parts):
        # one number per input (captum's baselines=(0.0, 50.0)): that value over the input's shape, batched like the
        # other parts where they are
        batch = next((int(t.shape[0]) for t, sh in zip(parts, shapes, strict=True)
                      if isinstance(t, (torch.Tensor, np.ndarray)) and t.ndim == len(sh) + 1), None)  # fmt: skip
        full = [
            torch.full(((batch,) if batch else ()) + tuple(sh), float(t)) if isinstance(t, number) or t.ndim == 0 else t
            for t, sh in zip(parts, shapes, strict=True)
        ]
        value = dict(zip(value.keys(), full, strict=True)) if isinstance(value, Mapping) else full
        parts = full
    tensors = [torch.as_tensor(t) for t in parts]
    single = len(tensors) == len(shapes) and all(t.ndim == len(s) for t, s in zip(tensors, shapes, strict=True))
    if not single:
        return packing.pack_inputs(value)
    rows = [t.unsqueeze(0) for t in tensors]
    batched = dict(zip(value.keys(), rows, strict=True)) if isinstance(value, Mapping) else rows
    return packing.pack_inputs(batched)[0]
