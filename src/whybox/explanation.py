"""The one return type of every explainer."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from whybox.errors import DataFormatError, InvalidInputError, InvalidParameterError, did_you_mean
from whybox.models.inputs import label_map_option, tensor_option

__all__ = ["Explanation", "digest_mismatch", "input_digest"]

_FORMAT = "whybox.explanation/1"
_MAP_REDUCTIONS = ("sum", "mean", "abs_sum", "max_abs")
#: ``meta`` lists that describe the whole explanation, never one entry per row (a slice keeps them whole even when
#: their length happens to equal the number of rows)
_GLOBAL_META = frozenset({"feature_names", "described_options", "layer", "layer_shape", "input_shapes"})
_ROW_OPTIONS = (
    "fill",
    "baseline",
    "features",
    "regions",
    "noise_mask",
    "prior",  # LIMA's prior map (B, H, W) / (B, C, H, W)
)  # options that may hold one entry per input row


def input_digest(x: torch.Tensor, adapter: Any = None) -> torch.Tensor:
    """``(B, 3)`` float64 on the CPU: each row's sum, sum of absolute values and sum of squares, which
    ``meta["input_digest"]`` keeps so that a metric can tell an explanation of other inputs (shuffled rows, another
    preprocessing) from one of the inputs it is given. A black-box text adapter's presence rows stand for the words
    of a text the adapter keeps (its index column depends on what it encoded before): their digest is three 31-bit
    parts of a SHA-256 of each row's words and presence values."""
    row_words = getattr(adapter, "row_words", None)
    if callable(row_words) and x.ndim == 2:
        import hashlib

        out = []
        for words, row in zip(row_words(x), x.detach().to("cpu", torch.float64)[:, :-1].tolist(), strict=True):
            key = "\x1f".join(words) + "\x1e" + ",".join(repr(v) for v in row[: len(words)])
            d = hashlib.sha256(key.encode()).digest()
            out.append([float(int.from_bytes(d[4 * i : 4 * i + 4], "little") >> 1) for i in range(3)])
        return torch.tensor(out, dtype=torch.float64).reshape(-1, 3)
    flat = x.detach().reshape(x.shape[0], -1)
    step = max(1, (1 << 20) // max(1, flat.shape[1]))  # about 8 MB of float64 at a time
    parts = []
    f64 = torch.float64
    for chunk in flat.split(step) if flat.shape[0] > step else (flat,):  # (split costs as much as a reduction)
        v = chunk if chunk.is_floating_point() else chunk.to(f64)
        # float64 accumulation without a float64 copy or temporaries (5x faster than summing a float64 copy's
        # abs() and square on 16 rows of 12k values; this runs on every explain call)
        l1 = torch.linalg.vector_norm(v, 1, dim=1, dtype=f64)
        l2 = torch.linalg.vector_norm(v, 2, dim=1, dtype=f64)
        parts.append(torch.stack([v.sum(1, dtype=f64), l1, l2 * l2], 1))
    return torch.cat(parts).cpu() if parts else torch.zeros(0, 3, dtype=torch.float64)


def digest_mismatch(saved: torch.Tensor, x: torch.Tensor, adapter: Any = None) -> list[int]:
    """Rows whose inputs differ from those :func:`input_digest` ``saved`` describes (tolerant of float rounding:
    the same inputs in float32 and float64, or summed on a GPU, match)."""
    now = input_digest(x, adapter)
    saved = saved.to(torch.float64).cpu()
    if saved.shape != now.shape:
        return list(range(x.shape[0]))
    if callable(getattr(adapter, "row_words", None)):  # a black box's rows: the words' hash, or (an explanation saved
        # before it covered the words) the presence rows' sums, as they were kept then
        old = set(_bad_rows(saved, input_digest(x)))
        return [i for i in _bad_rows(saved, now) if i in old]
    return _bad_rows(saved, now)


def _bad_rows(saved: torch.Tensor, now: torch.Tensor) -> list[int]:
    """Rows whose two ``(B, 3)`` digests differ beyond float rounding."""
    scale = torch.maximum(saved[:, 1], now[:, 1])
    sq = torch.maximum(saved[:, 2], now[:, 2])
    bad = ((saved[:, 0] - now[:, 0]).abs() > 1e-5 * scale + 1e-9) | (
        (saved[:, 1] - now[:, 1]).abs() > 1e-5 * scale + 1e-9
    )
    bad |= (saved[:, 2] - now[:, 2]).abs() > 1e-5 * sq + 1e-12
    return bad.nonzero().flatten().tolist()


def _packing_of(shapes: Any, n: int) -> Any:
    """The :class:`~whybox.models.packed.InputPacking` of packed rows of ``n`` features (``meta["input_shapes"]``,
    a model of several inputs), else None."""
    if not shapes:
        return None
    from whybox.models.packed import InputPacking

    packing = InputPacking(shapes)
    return packing if packing.n_features == n else None


def _packed_names(shapes: Any, n: int) -> list[str]:
    """The features of packed rows named by input and position; [] when the explanation is not of packed rows."""
    packing = _packing_of(shapes, n)
    return [] if packing is None else [packing.feature_name(j) for j in range(n)]


def _same(a: Any, b: Any) -> bool:
    """Equality of explanation fields as save/load keeps them: tensors by dtype, shape and values (NaN equal to
    NaN), a tuple equal to the list JSON gives back, NumPy scalars to Python numbers."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return False
        if a.dtype != b.dtype or a.shape != b.shape:
            return False
        a, b = a.detach().cpu(), b.detach().cpu()
        if a.is_floating_point() or a.is_complex():
            return bool(((a == b) | (a.isnan() & b.isnan())).all())
        return torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):  # an array in meta; saved, it loads as a list
        return _same(np.asarray(a).tolist(), np.asarray(b).tolist())
    if isinstance(a, (dict, list, tuple)) or isinstance(b, (dict, list, tuple)):
        return False
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True  # NaN in meta
    return bool(a == b)


@dataclass(eq=False)
class Explanation:
    """Attributions for a batch of inputs, with everything needed to reproduce them.

    Attributes
    ----------
    attributions
        Tensor broadcastable to the input: ``(B, C, H, W)`` for pixel methods, ``(B, 1, H, W)`` for
        spatial maps (CAM family), ``(B, F)`` for tabular inputs.
    target
        ``(B,)`` int64: the class explained for each row (``-1`` where a callable target was used).
    method
        Registry name of the explainer.
    params
        The explainer's configuration (JSON-serialisable values).
    meta
        Extras: at least ``n_forward``, ``n_backward``, ``seed``, per-sample ``finite`` and ``input_digest``
        ``(B, 3)`` (:func:`input_digest`: the metrics refuse the explanation on other rows); per-sample
        ``target_names`` where the model names its outputs (``classes_``, ``id2label``, ``adapt(labels=)``);
        tensors allowed as values (saved beside the attributions as tensors); anything nested (a list or dict
        holding tensors, a dict with int keys) is saved as JSON: its tensors come back as lists, its keys as strings.
    options
        The options ``params`` can only describe (a tensor fill or baseline, a feature mask, a callable), as they
        were given to :func:`whybox.explain`, so that a metric re-running the method (stability, max-sensitivity,
        randomization, random logit) runs it as it was. Their names are in ``meta["described_options"]``; tensors
        are saved beside the attributions, callables are not (a metric then asks for them).

    Shapes
    ------
    attributions: ``(B, *feature)``; target: ``(B,)``.
    """

    attributions: torch.Tensor
    target: torch.Tensor
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.attributions.shape[0])

    def __eq__(self, other: object) -> bool:
        """Same method, params, meta, targets and attributions (values, dtype, shape); ``options`` are not compared
        (callables among them do not survive :meth:`save`)."""
        if not isinstance(other, Explanation):
            return NotImplemented
        return (
            self.method == other.method
            and _same(self.attributions, other.attributions)
            and _same(self.target, other.target)
            and _same(self.params, other.params)
            and _same(self.meta, other.meta)
        )

    def __getitem__(self, index: Any) -> Explanation:
        """Rows of the explanation, always a batch (``e[2]`` is one row): an int (NumPy's, a 0-d tensor), a slice
        (any step) or a sequence of row indices (a list, an integer array or tensor); per-row tensors and per-row
        lists in ``meta`` and the per-row options follow their rows."""
        idx = self._rows(index)
        meta: dict[str, Any] = {}
        n = len(self)
        for k, v in self.meta.items():
            if k not in _GLOBAL_META and (
                (isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == n)
                or (isinstance(v, list) and len(v) == n)
            ):
                meta[k] = v[idx.to(v.device)] if isinstance(v, torch.Tensor) else [v[i] for i in idx.tolist()]
            else:
                meta[k] = v
        options = row_options(self, idx)  # per-row fills, baselines and feature maps (a text batch's) follow their rows
        rows = idx.to(self.attributions.device)
        return Explanation(
            self.attributions[rows], self.target[idx.to(self.target.device)], self.method, dict(self.params), meta,
            options,
        )  # fmt: skip

    def _rows(self, index: Any) -> torch.Tensor:
        """``index`` as the int64 row indices it picks, in order (negative ones count from the end)."""
        import operator

        n = len(self)
        if isinstance(index, slice):
            return torch.tensor(list(range(n)[index]), dtype=torch.int64)
        shaped_or_bool = isinstance(index, torch.Tensor) and (index.dtype == torch.bool or index.ndim > 0)
        if not isinstance(index, (bool, np.bool_)) and not shaped_or_bool:  # (operator.index reads tensor([True]) as 1)
            try:
                one = operator.index(index)  # an int, NumPy's integers, a 0-d integer tensor
            except TypeError:
                one = None
            if one is not None:
                if not -n <= one < n:
                    raise IndexError(f"row index {one} is out of range for an explanation of {n} rows.")
                return torch.tensor([one % n])
        many = None
        if isinstance(index, (list, tuple, np.ndarray, torch.Tensor)):
            try:
                many = torch.as_tensor(np.asarray(index) if isinstance(index, (list, tuple)) else index)
            except (TypeError, ValueError, RuntimeError):  # text, ragged lists
                many = None
        if many is not None and many.numel() == 0:
            many = many.to(torch.int64)  # e[[]] picks no rows, as e[1:1] does (np.asarray([]) is float64)
        if many is None or many.ndim != 1 or many.is_floating_point() or many.dtype == torch.bool:
            raise InvalidParameterError(
                "an explanation's rows are picked by an int, a slice or a list of row indices (e[2], e[1:4], "
                f"e[[0, 2]]); got {type(index).__name__} {index!r}."
            )
        many = many.to(torch.int64).cpu()
        bad = (many < -n) | (many >= n)
        if bool(bad.any()):
            raise IndexError(f"row index {int(many[bad][0])} is out of range for an explanation of {n} rows.")
        return many % n

    def to_map(self, reduce: str = "sum") -> torch.Tensor:
        """A ``(B, H, W)`` map for display and image metrics; for 1-D signals (``meta["signal"]``, attributions
        ``(B, C, L)``) a ``(B, L)`` map over time, and for sequences (``meta["sequence"]``, ``(B, T, D)``) a ``(B, T)``
        one (the ``D`` features combined at each step).

        Parameters
        ----------
        reduce
            How channels are combined: ``"sum"`` (signed, the default), ``"mean"``, ``"abs_sum"`` or
            ``"max_abs"`` (Simonyan et al.'s reduction for saliency). Attributions ``(B, H, W)`` (a model of images
            without a channel dimension) are one channel: ``"abs_sum"`` and ``"max_abs"`` give their ``|.|``.

        Raises
        ------
        InvalidInputError
            For tabular attributions, which have no spatial map.
        """
        a = self.attributions
        if reduce not in _MAP_REDUCTIONS:
            raise InvalidParameterError(
                f"reduce must be one of {_MAP_REDUCTIONS}; got {reduce!r}.{did_you_mean(reduce, _MAP_REDUCTIONS)}"
            )
        if a.ndim == 3 and self.meta.get("signal"):  # (B, C, L): the channels combined at each time step
            a = a.unsqueeze(2)
            return self._reduce(a, reduce)[:, 0]
        if a.ndim == 3 and self.meta.get("sequence"):  # (B, T, D): the features combined at each time step
            return self._reduce(a.transpose(1, 2).unsqueeze(2), reduce)[:, 0]
        if a.ndim == 3 and self.meta.get("tokens"):
            raise InvalidInputError(
                f"to_map() needs image attributions; these are token attributions {tuple(a.shape)} (a text model's "
                "explanation). Read words and values from explain_text(...).words, or sum .attributions over the last "
                "dimension for one value per token."
            )
        if a.ndim == 3:  # (B, H, W): the images of a model without a channel dimension, one channel
            return self._reduce(a.unsqueeze(1), reduce)
        if a.ndim != 4:
            raise InvalidInputError(
                f"to_map() needs image attributions (B, C, H, W); these have shape {tuple(a.shape)}. "
                "Use .attributions directly for tabular or token attributions."
            )
        return self._reduce(a, reduce)

    @staticmethod
    def _reduce(a: torch.Tensor, reduce: str) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, H, W)``, the channels combined by ``reduce`` (one of ``_MAP_REDUCTIONS``)."""
        if reduce == "sum":
            return a.sum(1)
        if reduce == "mean":
            return a.mean(1)
        if reduce == "abs_sum":
            return a.abs().sum(1)
        return a.abs().amax(1)

    # ------------------------------------------------------------------ display
    def plot(
        self,
        inputs: Any = None,
        *,
        rows: Any = None,
        top: int = 10,
        reading: str | None = None,
        columns: int = 4,
        labels: Any = None,
    ) -> Any:
        """A matplotlib ``Figure`` of the explanation, one panel per row (no pyplot: nothing opens a window; a
        notebook shows the figure it returns, ``fig.savefig(path)`` writes it).

        Images: the map (:meth:`to_map`) as the report colours it, over ``inputs`` ``(B, C, H, W)`` when given (each
        image min-max scaled to [0, 1] for display; C = 1 or 3), else alone. 1-D signals (``meta["signal"]``): the
        map summed over channels as a coloured band along time, under the channels of ``inputs`` ``(B, C, L)``;
        sequences (``meta["sequence"]``, ``(B, T, D)``): the map summed over the ``D`` features as that band, under
        the features of ``inputs`` ``(B, T, D)`` drawn as lines over the ``T`` steps. Tabular rows ``(B, F)``: the ``top``
        features by magnitude as bars, named by ``meta["feature_names"]`` (else ``x0, x1, ...``), largest first.
        Text (token attributions, ``meta["tokens"]``, and a black-box text model's word-presence rows,
        ``meta["word_presence"]``) is refused: ``explain_text(...).words`` holds its (word, value) pairs.

        Parameters
        ----------
        inputs
            The explained inputs, shown under image maps (or signal bands); for tabular rows the bars are labelled
            ``name = value`` from them (a DataFrame's text cells as they are).
        rows
            Which rows: an int, a list of ints, or ``None`` for all (at most 16).
        top
            Bars per tabular row.
        reading
            How to colour a map (:func:`whybox.report.overlay.to_heatmap`): ``"signed"``, ``"positive"`` or
            ``"relative"``; default: the method's own (CAMs and RISE relative, magnitudes positive, else signed: a
            method whybox does not know, e.g. another library's maps, too).
        columns
            Panels per figure row (images and tables; signals and sequences are drawn one under another, a
            row each, their maps along the time axis).
        labels
            Class names by output index (e.g. ``whybox.data.imagenet_labels()``) for the panel titles; by default
            ``meta["target_names"]``, the names the model gives its outputs, where it has them.
        """
        from matplotlib.figure import Figure

        a = self.attributions.detach().cpu()
        n = a.shape[0]
        try:
            picked = list(range(min(n, 16))) if rows is None else self._rows(rows).tolist()
        except (InvalidParameterError, IndexError):
            picked = []
        if not picked:
            raise InvalidParameterError(f"rows must be row indices in [0, {n}) (an int or a list); got {rows!r}.")
        top, columns = (v.item() if isinstance(v, np.integer) else v for v in (top, columns))  # NumPy's ints too
        if isinstance(top, bool) or not isinstance(top, int) or top < 1:
            raise InvalidParameterError(f"top must be a positive int; got {top!r}.")
        if isinstance(columns, bool) or not isinstance(columns, int) or columns < 1:
            raise InvalidParameterError(f"columns must be a positive int; got {columns!r}.")
        names_of: Any = None
        if (isinstance(labels, np.ndarray) and labels.ndim == 1) or type(labels).__name__ == "Index":
            labels = list(labels)  # an estimator's classes_, a pandas Index of class names
        if isinstance(labels, Mapping):  # config.id2label: {0: "negative", 1: "positive"}
            try:
                names_of = {int(k): str(v) for k, v in labels.items()}
            except (TypeError, ValueError):
                raise InvalidParameterError(
                    "labels must map output indices to class names, such as config.id2label ({0: 'negative', ...}); "
                    f"got keys {list(labels)[:3]!r}: that is names to indices (config.label2id?). Pass id2label."
                ) from None
        elif labels is not None:
            if isinstance(labels, str) or not isinstance(labels, Sequence):
                raise InvalidParameterError(
                    f"labels must be class names by output index (a list, or a dict such as config.id2label); got "
                    f"{type(labels).__name__} {labels!r:.60}."
                )
            names_of = dict(enumerate(map(str, labels)))
        known = self.meta.get("target_names")  # the model's names for each row's target, when it has names

        def title(r: int) -> str:
            t = int(self.target[r])
            if names_of is not None and t in names_of:
                return f"row {r}: {names_of[t]}"
            if isinstance(known, list) and len(known) == len(self) and known[r] is not None:
                return f"row {r}: {known[r]}"
            return f"row {r}: target {t}"

        if a.ndim == 2 and self.meta.get("word_presence"):
            raise InvalidInputError(
                f"plot() does not draw a black-box text model's explanation: its attributions {tuple(a.shape)} are "
                "word-presence rows (one column per word of each text, the last the text's index), not a table. "
                "explain_text(...).words holds (word, value) pairs and whybox.report.render_tokens_page(...) draws them."
            )
        packing = _packing_of(self.meta.get("input_shapes"), a.shape[1]) if a.ndim == 2 else None
        if packing is not None and packing.has_image:  # a model of several inputs, images among them
            return self._plot_packed(packing, picked, inputs, top, reading, title)
        signal = a.ndim == 3 and bool(self.meta.get("signal"))
        sequence = a.ndim == 3 and bool(self.meta.get("sequence"))
        # (B, H, W): the images of a model without a channel dimension (token attributions are marked)
        image = a.ndim == 4 or (a.ndim == 3 and not signal and not sequence and not self.meta.get("tokens"))
        if signal or sequence:
            fig = Figure(figsize=(6.4, 2.2 * len(picked)))
            axes = fig.subplots(len(picked), 1, squeeze=False)
            self._plot_signals(axes.flat, picked, inputs, reading, title, sequence=sequence)
            fig.suptitle(self.method, fontsize=10, parse_math=False)
            fig.tight_layout()
            return fig
        if not image and a.ndim != 2:
            raise InvalidInputError(
                f"plot() shows image attributions (B, C, H, W) or (B, H, W) and tabular ones (B, F); these have shape "
                f"{tuple(a.shape)}. For text, explain_text(...).words holds (word, value) pairs and "
                "whybox.report.render_tokens_page(...) draws them."
            )
        ncols = min(columns, len(picked))
        nrows = -(-len(picked) // ncols)
        fig = Figure(figsize=(3.2 * ncols, (3.2 if image else 0.35 * min(top, a.shape[1]) + 1.0) * nrows))
        axes = fig.subplots(nrows, ncols, squeeze=False)
        for ax in axes.flat[len(picked) :]:
            ax.set_axis_off()
        if image:
            self._plot_maps(axes.flat, picked, inputs, reading, title)
        else:
            names = (
                self.meta.get("feature_names")
                or list(getattr(inputs, "columns", []))
                or _packed_names(self.meta.get("input_shapes"), a.shape[1])
                or [f"x{j}" for j in range(a.shape[1])]
            )
            if packing is not None and isinstance(inputs, (tuple, list, Mapping)):  # the inputs as they were given
                inputs = packing.pack_inputs(inputs)
            given = self.meta.get("feature_names")
            if hasattr(inputs, "iloc") and isinstance(given, list) and [str(c) for c in inputs.columns] != given:
                if sorted(map(str, inputs.columns)) != sorted(given):
                    raise InvalidInputError(
                        f"inputs (a DataFrame) have columns {[str(c) for c in inputs.columns][:6]}, but the explanation "
                        f"was made over {given[:6]}; pass the explained rows."
                    )
                inputs = inputs.set_axis([str(c) for c in inputs.columns], axis=1)[given]  # read by name, not place
            cell = self._row_values(inputs, a.shape)
            for ax, r in zip(axes.flat, picked, strict=False):
                v = a[r].to(torch.float64)
                order = torch.argsort(v.abs(), descending=True, stable=True)[:top].tolist()
                vals = [float(v[j]) for j in order]
                ax.barh(range(len(order)), vals, color=["#b2182b" if x > 0 else "#2166ac" for x in vals])
                labels = [str(names[j]) + ("" if cell is None else f" = {cell(r, j)}") for j in order]
                ax.set_yticks(range(len(order)), labels)
                for text in ax.get_yticklabels():
                    text.set_parse_math(False)  # a "$" in a name or a cell is shown as it is
                ax.invert_yaxis()  # the largest on top
                ax.axvline(0.0, color="#444", linewidth=0.6)
                ax.set_title(title(r), fontsize=9, parse_math=False)
        fig.suptitle(self.method, fontsize=10, parse_math=False)
        fig.tight_layout()
        return fig

    def _plot_packed(
        self, packing: Any, picked: list[int], inputs: Any, top: int, reading: str | None, title: Callable[[int], str]
    ) -> Any:
        """Packed rows of a model of several inputs: per row, one panel per image input (its map summed over
        channels, over the image when ``inputs`` are given) and one of bars for the ``top`` values of the others."""
        from matplotlib.figure import Figure

        from whybox.report.overlay import overlay, to_heatmap

        if reading is None:
            from whybox.runs.report_data import method_reading

            reading = method_reading(self.method, self.params) if self.method else "auto"
        a = self.attributions.detach().cpu()
        parts = packing.unpack(a)
        xs = None
        if inputs is not None:
            rows = packing.pack_inputs(inputs)
            if not isinstance(rows, torch.Tensor) or tuple(rows.shape) != tuple(a.shape):
                got = tuple(rows.shape) if isinstance(rows, torch.Tensor) else type(inputs).__name__
                raise InvalidInputError(
                    f"inputs must be the explained inputs: a tuple (or mapping) of the model's inputs, or their packed "
                    f"rows {tuple(a.shape)}; got {got}."
                )
            xs = packing.unpack(rows.detach().cpu())
        images = packing.images
        rest = [i for i in range(len(packing.shapes)) if i not in images]
        ids = packing.input_groups()  # feature -> its input
        features = torch.isin(ids, torch.tensor(rest, dtype=ids.dtype)).nonzero().flatten().tolist()
        ncols = len(images) + (1 if features else 0)
        fig = Figure(figsize=(3.4 * ncols, 3.2 * len(picked)))
        axes = fig.subplots(len(picked), ncols, squeeze=False)
        mass = torch.stack([p.reshape(p.shape[0], -1).abs().sum(1) for p in parts], 1).to(torch.float64)  # (B, inputs)
        share = mass / mass.sum(1, keepdim=True).clamp_min(1e-300)  # each input's part of the row's |attribution|

        def name(i: int) -> str:
            return packing.names[i] if packing.names is not None else f"input {i}"

        for row_axes, r in zip(axes, picked, strict=True):
            for ax, i in zip(row_axes, images, strict=False):
                amap = parts[i][r].to(torch.float64).sum(0)
                if xs is None or xs[i].shape[1] not in (1, 3):
                    ax.imshow(to_heatmap(amap, reading=reading))
                else:
                    img = xs[i][r].to(torch.float64)
                    lo, hi = img.min(), img.max()
                    img = (img - lo) / (hi - lo) if hi > lo else torch.zeros_like(img)
                    ax.imshow(overlay(img, amap, reading=reading))
                ax.set_title(
                    f"{title(r)}\n{name(i)}: {float(share[r, i]):.0%} of |attribution|", fontsize=9, parse_math=False
                )
                ax.set_axis_off()
            if features:
                ax = row_axes[-1]
                v = a[r, features].to(torch.float64)
                order = torch.argsort(v.abs(), descending=True, stable=True)[:top].tolist()
                vals = [float(v[k]) for k in order]
                ax.barh(range(len(order)), vals, color=["#b2182b" if x > 0 else "#2166ac" for x in vals])
                flat = None if xs is None else torch.cat([xs[i].reshape(xs[i].shape[0], -1) for i in rest], 1)
                labels = [
                    packing.feature_name(features[k]) + ("" if flat is None else f" = {float(flat[r, k]):.4g}")
                    for k in order
                ]
                ax.set_yticks(range(len(order)), labels)
                for text in ax.get_yticklabels():
                    text.set_parse_math(False)  # a "$" in a name or a cell is shown as it is
                ax.invert_yaxis()  # the largest on top
                ax.axvline(0.0, color="#444", linewidth=0.6)
                rest_share = float(share[r, rest].sum())
                ax.set_title(
                    f"{title(r)}\n{', '.join(name(i) for i in rest)}: {rest_share:.0%} of |attribution|",
                    fontsize=9,
                    parse_math=False,
                )
        fig.suptitle(self.method, fontsize=10, parse_math=False)
        fig.tight_layout()
        return fig

    @staticmethod
    def _row_values(inputs: Any, shape: tuple[int, ...]) -> Callable[[int, int], str] | None:
        """For tabular bars: ``(row, column) -> the explained value as text`` from ``inputs`` ``(B, F)`` (a tensor,
        an array or a DataFrame, whose text cells show as they are), or None without inputs."""
        if inputs is None:
            return None
        import numpy as np

        def text(v: Any) -> str:
            return (
                f"{v:.4g}" if isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_)) else str(v)
            )

        if hasattr(inputs, "iloc"):  # a DataFrame: its cells as they are (text columns included)
            got = tuple(inputs.shape)
            frame = inputs
            if got == tuple(shape):
                return lambda r, j: text(frame.iloc[r, j])
        elif not isinstance(inputs, torch.Tensor) and np.asarray(inputs).dtype.kind in "OUS":  # text cells too
            cells = np.asarray(inputs)
            got = tuple(cells.shape)
            if got == tuple(shape):
                return lambda r, j: text(cells[r, j])
        else:
            x = inputs.detach().cpu() if isinstance(inputs, torch.Tensor) else torch.from_numpy(np.array(inputs))
            got = tuple(x.shape)
            if got == tuple(shape):
                return lambda r, j: f"{float(x[r, j]):.4g}"
        raise InvalidInputError(
            f"inputs must be the explained rows (B, F) = {tuple(shape)} (a tensor, an array or a DataFrame); got {got}."
        )

    def _plot_signals(
        self,
        axes: Any,
        picked: list[int],
        inputs: Any,
        reading: str | None,
        title: Callable[[int], str],
        *,
        sequence: bool = False,
    ) -> None:
        """1-D signals: each row's map (summed over channels) as a coloured band along time, the report's colours,
        under the row's channels drawn as lines when ``inputs`` ``(B, C, L)`` are given. Sequences (``sequence``,
        ``(B, T, D)``): the same, time along axis 1 and the ``D`` features as the lines."""
        from whybox.report.overlay import to_heatmap

        if reading is None:
            from whybox.runs.report_data import method_reading

            reading = method_reading(self.method, self.params) if self.method else "auto"
        a = self.attributions.detach().cpu().to(torch.float64)
        if sequence:  # (B, T, D) -> (B, D, T): the features as channels along time
            a = a.transpose(1, 2)
        maps = a.sum(1)  # (B, L)
        x = None
        if inputs is not None:
            x = inputs.detach().cpu() if isinstance(inputs, torch.Tensor) else torch.as_tensor(inputs)
            if sequence and x.ndim == 3:
                x = x.transpose(1, 2)
            if x.ndim != 3 or x.shape[0] != a.shape[0] or x.shape[-1] != a.shape[-1]:
                shown = tuple(x.transpose(1, 2).shape) if sequence and x.ndim == 3 else tuple(x.shape)
                raise InvalidInputError(
                    f"inputs must be the explained sequences (B, T, D) with B = {a.shape[0]} and T = {a.shape[-1]}; "
                    f"got {shown}."
                    if sequence
                    else f"inputs must be the explained signals (B, C, L) with B = {a.shape[0]} and L = {a.shape[-1]}; "
                    f"got {tuple(x.shape)}."
                )
        length = maps.shape[1]
        for ax, r in zip(axes, picked, strict=False):
            band = to_heatmap(maps[r].view(1, -1), reading=reading)
            lo, hi = (0.0, 1.0)
            if x is not None:
                row = x[r].to(torch.float64)
                lo, hi = float(row.min()), float(row.max())
                hi = hi if hi > lo else lo + 1.0
            ax.imshow(band, aspect="auto", extent=(0, length, lo, hi), alpha=0.85 if x is not None else 1.0)
            if x is not None:
                for c in range(x.shape[1]):  # one step (T = 1): a marker, as a line of one point draws nothing
                    ax.plot(torch.arange(length).numpy() + 0.5, x[r, c].to(torch.float64).numpy(), linewidth=0.8,
                            marker="o" if length == 1 else None)  # fmt: skip
            ax.set_xlim(0, length)
            ax.set_xlabel("time step", fontsize=8)
            ax.set_title(title(r), fontsize=9, parse_math=False)

    def _plot_maps(
        self, axes: Any, picked: list[int], inputs: Any, reading: str | None, title: Callable[[int], str]
    ) -> None:
        from whybox.report.overlay import overlay, to_heatmap

        if reading is None:
            from whybox.runs.report_data import method_reading

            reading = method_reading(self.method, self.params) if self.method else "auto"
        maps = self.to_map().detach().cpu()
        if inputs is not None:
            x = inputs.detach().cpu() if isinstance(inputs, torch.Tensor) else torch.as_tensor(inputs)
            if x.ndim == 3 and self.attributions.ndim == 3:  # channel-less images, as explained
                x = x.unsqueeze(1)
            if x.ndim != 4 or x.shape[0] != maps.shape[0] or x.shape[1] not in (1, 3):
                raise InvalidInputError(
                    f"inputs must be the explained images (B, 1 or 3, H, W) with B = {maps.shape[0]}; got "
                    f"{tuple(x.shape)}."
                )
        for ax, r in zip(axes, picked, strict=False):
            if inputs is None:
                ax.imshow(to_heatmap(maps[r], reading=reading))
            else:
                img = x[r].to(torch.float64)
                lo, hi = img.min(), img.max()
                img = (img - lo) / (hi - lo) if hi > lo else torch.zeros_like(img)
                ax.imshow(overlay(img, maps[r], reading=reading))
            ax.set_title(title(r), fontsize=9, parse_math=False)
            ax.set_axis_off()

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write to one safetensors file (tensors) with the JSON header holding method, params, meta.

        No pickle is involved; :meth:`load` restores an equal object.
        """
        from safetensors.torch import save_file

        path = Path(path)
        if path.is_dir():
            raise InvalidParameterError(
                f"path={str(path)!r} is a folder; pass a file path, e.g. {str(path / 'explanation.safetensors')!r}."
            )
        seen: set[int] = set()

        def own(t: torch.Tensor) -> torch.Tensor:
            """``t`` for the file; a copy where another saved tensor shares its memory (safetensors refuses those:
            meta["predicted"] = e.target, an IG baseline kept in meta)."""
            t = t.detach().cpu().contiguous()
            ptr = t.untyped_storage().data_ptr()
            if t.numel() and ptr in seen:
                return t.clone()
            seen.add(ptr)
            return t

        from whybox.masking.features import FeatureGroups

        tensors: dict[str, torch.Tensor] = {"attributions": own(self.attributions), "target": own(self.target)}
        nested: dict[str, dict[str, Any]] = {}
        for k, v in self.options.items():  # tensor options; a callable cannot be saved (params describes it)
            if isinstance(v, FeatureGroups):  # its ids: features=ids gives the same groups (each row's present ids)
                v = v.groups
            if k in ("features", "regions"):
                v = label_map_option(v, f"options[{k!r}]")  # ids stay integers (a list of ints is not a float fill)
            if isinstance(v, dict):  # a nested method's options (LIMA's prior_options): its arrays as tensors by key,
                # its plain values in the header; one that is neither (a module, a callable) leaves the whole option
                # out, so a re-run asks for it again rather than running on its text
                arrays = {str(sub): torch.from_numpy(np.ascontiguousarray(w)) if isinstance(w, np.ndarray) else w
                          for sub, w in v.items()
                          if isinstance(w, torch.Tensor) or (isinstance(w, np.ndarray) and w.dtype.kind in "biuf")}  # fmt: skip
                plain = {str(sub): w for sub, w in v.items() if str(sub) not in arrays}
                if all("/" not in sub for sub in arrays) and _json_plain(plain):
                    for sub, w in arrays.items():
                        tensors[f"optiondict.{k}/{sub}"] = own(w)
                    nested[k] = plain
                continue
            try:
                v = tensor_option(v, f"options[{k!r}]")  # a numpy array or pandas Series as the explainer read it
            except InvalidParameterError:
                continue  # not an array (a CAM's layers given as names and modules): params describes it
            if isinstance(v, torch.Tensor):
                tensors[f"option.{k}"] = own(v)
        meta_json: dict[str, Any] = {}
        for k, v in self.meta.items():
            if isinstance(v, torch.Tensor):
                if v.is_meta:
                    raise InvalidParameterError(
                        f"meta[{k!r}] is a tensor on the 'meta' device (a shape without values), which cannot be "
                        "saved; store its shape instead, e.g. list(t.shape)."
                    )
                tensors[f"meta.{k}"] = own(v)
            else:
                meta_json[k] = v
        header = {
            "format": _FORMAT,
            "method": self.method,
            "params": json.dumps(_jsonable(self.params, "params")),
            "meta": json.dumps(_jsonable(meta_json, "meta")),
        }
        if nested:
            header["option_dicts"] = json.dumps(_jsonable(nested, "options"))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=header)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Explanation:
        """Read a file written by :meth:`save`."""
        from safetensors import SafetensorError, safe_open

        if Path(path).is_dir():
            raise InvalidInputError(
                f"path={str(path)!r} is a folder; pass the .safetensors file Explanation.save wrote."
            )
        if not Path(path).exists():
            raise FileNotFoundError(f"path={str(path)!r} does not exist; pass a file written by Explanation.save().")
        try:
            f_open = safe_open(str(path), framework="pt")
        except SafetensorError as exc:
            raise DataFormatError(
                f"path={str(path)!r} is not a safetensors file ({exc}); pass a file written by Explanation.save()."
            ) from None
        with f_open as f:
            header = f.metadata() or {}
            fmt = header.get("format")
            if isinstance(fmt, str) and fmt.startswith(_FORMAT.rsplit("/", 1)[0] + "/") and fmt != _FORMAT:
                raise DataFormatError(
                    f"path={str(path)!r} is a whybox explanation of format {fmt!r}, which this whybox "
                    f"({_FORMAT!r}) does not read: it was written by another version; load it with that version "
                    "(upgrade whybox if it is newer)."
                )
            if fmt != _FORMAT:
                raise InvalidInputError(
                    f"path={str(path)!r} is not a whybox explanation file (format {fmt!r}); write it with "
                    "Explanation.save()."
                )
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        fields: dict[str, Any] = {}
        for name in ("meta", "params", "method", "attributions", "target"):
            try:
                if name in ("meta", "params"):
                    fields[name] = json.loads(header[name])
                    if not isinstance(fields[name], dict):
                        raise ValueError(f"not a JSON object: {type(fields[name]).__name__}")
                else:
                    fields[name] = header[name] if name == "method" else tensors[name]
            except (KeyError, ValueError) as exc:  # (json's decode error is a ValueError)
                why = "missing" if isinstance(exc, KeyError) else f"damaged ({exc})"
                raise DataFormatError(
                    f"path={str(path)!r}: the explanation's {name!r} is {why}; the file is damaged. Write it again "
                    "with Explanation.save()."
                ) from None
        attr, tgt = fields["attributions"], fields["target"]
        if attr.ndim == 0 or tgt.ndim != 1 or tgt.shape[0] != attr.shape[0] or tgt.is_floating_point():
            raise DataFormatError(
                f"path={str(path)!r}: the explanation's target {tuple(tgt.shape)} {tgt.dtype} does not give one class "
                f"index per row of its attributions {tuple(attr.shape)}; the file is damaged or was not written by "
                "Explanation.save(). Write it again with Explanation.save()."
            )
        meta: dict[str, Any] = _untag_time(fields["meta"])  # dates and times as they were saved
        for k, v in tensors.items():
            if k.startswith("meta."):
                meta[k[5:]] = v
        options: dict[str, Any] = {k[7:]: v for k, v in tensors.items() if k.startswith("option.")}
        try:
            nested = json.loads(header.get("option_dicts") or "{}")
        except ValueError:
            nested = {}
        for name, plain in nested.items() if isinstance(nested, dict) else ():  # a nested method's options
            options[name] = dict(plain) if isinstance(plain, dict) else {}
        for key, v in tensors.items():  # ... and their tensors
            if key.startswith("optiondict."):
                name, slash, sub = key[len("optiondict.") :].partition("/")
                holder = options.setdefault(name, {})
                if not slash or not isinstance(holder, dict):
                    raise DataFormatError(
                        f"path={str(path)!r}: the explanation's option {key!r} is damaged (a nested option's tensor "
                        f"{'without its key' if not slash else 'beside a plain option of that name'}); the file is "
                        "damaged. Write it again with Explanation.save()."
                    )
                holder[sub] = v
        return cls(
            attributions=fields["attributions"],
            target=fields["target"],
            method=fields["method"],
            params=fields["params"],
            meta=meta,
            options=options,
        )


def row_options(
    explanation: Explanation, rows: slice | torch.Tensor, *, keep: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``explanation.options`` for some of its rows: a fill, baseline, feature or region tensor with one entry per
    row (as many rows as the explanation and as many dimensions as its attributions: a text batch's) indexed by
    ``rows``; every other option, any named in ``keep``, and Integrated Gradients' k baseline rows shared by every
    row (``n_baselines`` > 1), as it is."""
    n, shape = len(explanation), tuple(explanation.attributions.shape)
    return options_for_rows(explanation.options, rows, n, shape, params=explanation.params, keep=keep)


def options_for_rows(
    options: dict[str, Any],
    rows: slice | torch.Tensor,
    n: int,
    shape: tuple[int, ...],
    *,
    params: dict[str, Any] | None = None,
    keep: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A method's ``options`` over ``n`` rows (``shape``: the rows' attributions or inputs, ``(n, ...)``) for some of
    those rows, by :func:`row_options`' rule: a fill, baseline, feature or region tensor with one entry per row
    indexed by ``rows``; every other option, any named in ``keep``, and Integrated Gradients' k baseline rows
    (``n_baselines`` > 1 in ``params``, else in ``options``) as they are. A metric's ``explainer_params`` on the
    rows it re-runs the method on (max_sensitivity's noisy copies: each input's row once per draw) read alike."""
    idx = rows.cpu().numpy() if isinstance(rows, torch.Tensor) else np.arange(n)[rows]
    out = _rows_of(options, options if params is None else params, n, shape, idx, keep or {})
    for k, v in options.items():  # a nested method's options (LIMA's prior_options): theirs alike
        if isinstance(v, dict) and k.endswith("_options") and k not in (keep or {}):
            out[k] = {**v, **_rows_of(v, v, n, shape, idx, {})}
    return out


def _rows_of(
    options: dict[str, Any], params: dict[str, Any], n: int, shape: tuple[int, ...], idx: np.ndarray, keep: Any
) -> dict[str, Any]:
    """:func:`row_options`' rule on one dict of options (``params``: where ``n_baselines`` is read)."""
    from whybox.masking.features import FeatureGroups

    out: dict[str, Any] = {}
    shared = {"baseline"} if _int_param(params.get("n_baselines")) > 1 else set()  # k baseline rows
    for k, v in options.items():
        ids: Any = v.groups if isinstance(v, FeatureGroups) else v
        if _is_dataframe(ids):
            ids = ids.to_numpy()  # one reference row per input row: a DataFrame of as many rows
        vshape = tuple(getattr(ids, "shape", ()))
        # integer ids (a bool stack (N, H, W) is N regions shared by every row, never one entry per row)
        integer = (isinstance(ids, torch.Tensor) and not ids.is_floating_point() and ids.dtype != torch.bool) or (
            isinstance(ids, np.ndarray) and ids.dtype.kind in "iu"
        )
        stack = isinstance(ids, torch.Tensor) and ids.dtype == torch.bool and k in ("features", "regions")
        per_row = (
            k in _ROW_OPTIONS
            and k not in shared
            and k not in keep
            and isinstance(ids, (torch.Tensor, np.ndarray))
            and len(vshape) >= 1
            and vshape[0] == n
            and (
                # a bool mask stack: (N, *G) regions shared by every row, (B, N, *G) per row ((B, N, H, W) of images)
                (len(vshape) == len(shape) + 1 or (len(shape) == 4 and len(vshape) == 4))
                if stack
                else len(vshape) == len(shape)
                # one id map per row shared by its channels, (B, H, W) of images or (B, L) of signals, as
                # broadcast_ids reads it (also a FeatureGroups' ids)
                or (
                    k in ("features", "regions")
                    and integer
                    and len(shape) >= 3
                    and len(vshape) == len(shape) - 1
                    and vshape[1:] == shape[2:]
                )
                # LIMA's prior map: always one per row, (B, H', W') or (B, C, H', W') at any resolution
                or (k == "prior" and len(vshape) in (3, 4))
            )
        )
        if not per_row:
            out[k] = v
        elif isinstance(v, FeatureGroups):
            out[k] = FeatureGroups(v.groups[torch.as_tensor(idx, device=v.groups.device)], v.n_groups, v.kind)
        elif isinstance(v, torch.Tensor):
            out[k] = v[torch.as_tensor(idx, device=v.device)]
        elif isinstance(v, np.ndarray):
            out[k] = v[idx]
        else:  # a DataFrame: its rows, names kept for the column-order check
            out[k] = v.iloc[idx]
    return out


def _json_plain(v: Any) -> bool:
    """A value JSON keeps as it is: None, a bool, a number, a string, or lists and string-keyed dicts of them."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return True
    if isinstance(v, (list, tuple)):
        return all(_json_plain(i) for i in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _json_plain(i) for k, i in v.items())
    return False


def _is_dataframe(v: Any) -> bool:
    return type(v).__name__ == "DataFrame" and hasattr(v, "iloc") and hasattr(v, "to_numpy")


def _int_param(v: Any) -> int:
    """An int parameter as recorded in ``params`` (1 where absent or not an int)."""
    return v if isinstance(v, int) and not isinstance(v, bool) else 1


def _jsonable(obj: Any, where: str) -> Any:
    """Convert params/meta to JSON values; tensors inside containers become lists."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v, where) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v, where) for v in obj]
    if isinstance(obj, torch.Tensor):
        if obj.is_meta:
            raise InvalidParameterError(
                f"{where} holds a tensor on the 'meta' device (a shape without values), which cannot be saved; store "
                "its shape instead, e.g. list(t.shape)."
            )
        return obj.detach().cpu().tolist()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.ndarray):  # an array in meta (class ids): its values, as a tensor's
        return _jsonable(obj.tolist(), where)
    tagged = _tag_time(obj)
    if tagged is not None:
        return tagged
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    return repr(obj)


_TIME_TAG = "__whybox_time__"


def _tag_time(obj: Any) -> dict[str, str] | None:
    """A date or time value (a pandas Timestamp or Timedelta, a datetime, a date, a NumPy datetime64 or timedelta64) as a tagged
    JSON object that :func:`_untag_time` reads back as the same value (a column's vocabulary of dates: the coded
    options of a loaded explanation must mean what they meant); ``None`` for anything else."""
    import datetime

    kind = type(obj).__module__.split(".")[0]
    if kind == "pandas" and type(obj).__name__ == "NaTType":  # a missing date (a datetime subclass)
        return {_TIME_TAG: "nat", "value": "NaT"}
    if kind == "pandas" and type(obj).__name__ == "Timestamp":
        return {_TIME_TAG: "timestamp", "value": obj.isoformat()}
    if kind == "pandas" and type(obj).__name__ == "Timedelta":
        return {_TIME_TAG: "pd_timedelta", "value": str(obj)}
    if isinstance(obj, np.datetime64):
        return {_TIME_TAG: "datetime64", "value": str(obj)}
    if isinstance(obj, np.timedelta64):  # "<count> <unit>" in its own unit ("NaT <unit>" for a missing one)
        unit, step = np.datetime_data(obj.dtype)
        count = "NaT" if np.isnat(obj) else str(int(obj.astype(np.int64)))
        return {_TIME_TAG: "timedelta64", "value": f"{count} {step}{unit}" if step != 1 else f"{count} {unit}"}
    if isinstance(obj, datetime.datetime):
        return {_TIME_TAG: "datetime", "value": obj.isoformat()}
    if isinstance(obj, datetime.date):
        return {_TIME_TAG: "date", "value": obj.isoformat()}
    if isinstance(obj, datetime.timedelta):
        return {_TIME_TAG: "timedelta", "value": repr(obj.total_seconds())}
    return None


def _untag_time(obj: Any) -> Any:
    """:func:`_tag_time`'s objects in loaded JSON back to their values (pandas' only where pandas is installed)."""
    if isinstance(obj, list):
        return [_untag_time(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    kind, value = obj.get(_TIME_TAG), obj.get("value")
    if not isinstance(kind, str) or not isinstance(value, str) or len(obj) != 2:
        return {k: _untag_time(v) for k, v in obj.items()}
    import datetime

    try:
        if kind in ("timestamp", "pd_timedelta", "nat"):
            import pandas as pd

            return pd.NaT if kind == "nat" else pd.Timestamp(value) if kind == "timestamp" else pd.Timedelta(value)
        if kind == "datetime64":
            return np.datetime64(value)
        if kind == "timedelta64":
            count, unit = value.split(" ")
            make: Any = np.timedelta64  # its stubs take literal units only
            return make("NaT", unit) if count == "NaT" else make(int(count), unit)
        if kind == "datetime":
            return datetime.datetime.fromisoformat(value)
        if kind == "date":
            return datetime.date.fromisoformat(value)
        if kind == "timedelta":
            return datetime.timedelta(seconds=float(value))
    except (ValueError, TypeError, ImportError):  # not one of ours (a user's dict of these keys): as it was saved
        pass
    return dict(obj)
