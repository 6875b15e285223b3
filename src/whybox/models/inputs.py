"""Inputs as they arrive: torch tensors, and the numpy arrays and pandas DataFrames of tabular work.

Every explainer and metric reads its ``inputs`` through :func:`as_tensor_inputs`, so a scikit-learn user can
pass the array or frame the model was fitted on. pandas is never imported here: a frame is recognised by its
type's module and its ``columns`` / ``dtypes`` / ``to_numpy``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from whybox.errors import InvalidInputError, InvalidParameterError

__all__ = [
    "as_tensor_inputs",
    "check_feature_names",
    "coded_later",
    "column_mismatch",
    "is_dataframe",
    "is_pandas",
    "is_text_adapter",
    "is_texts",
    "name_list",
    "python_number",
    "python_numbers",
    "tensor_option",
]

TEXTS_GIVEN_TO_A_TENSOR_MODEL = (
    "inputs are texts, but this model reads tensors: adapt a Hugging Face classifier and its tokenizer with "
    "whybox.adapt_text(model, tokenizer) and explain with whybox.explain_text(adapter, texts, method), or "
    "wrap a function texts -> scores in whybox.models.blackbox_text.BlackBoxTextAdapter."
)


def is_texts(inputs: Any) -> bool:
    """Whether ``inputs`` are texts: a string, or a non-empty list or tuple of strings."""
    return isinstance(inputs, str) or (
        isinstance(inputs, (list, tuple)) and bool(inputs) and all(isinstance(t, str) for t in inputs)
    )


def is_text_adapter(adapter: Any) -> bool:
    """Whether ``adapter`` reads texts through packed inputs: a Hugging Face text adapter (:func:`whybox.adapt_text`)
    or a black-box text model (``BlackBoxTextAdapter``): it encodes texts and fills its packed inputs."""
    return callable(getattr(adapter, "encode", None)) and callable(getattr(adapter, "packed_fill", None))


_NUMERIC = "biuf"  # numpy dtype kinds whybox can perturb: bool, signed and unsigned int, float


def name_list(names: list[str], k: int = 5) -> str:
    """The first ``k`` names, comma-separated, then how many more."""
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")


def column_mismatch(names: list[str], fitted: list[str]) -> tuple[list[str], list[str]]:
    """``(missing, unexpected)``: the fitted columns ``names`` lacks, and the columns of ``names`` not fitted."""
    return [c for c in fitted if c not in names], [c for c in names if c not in fitted]


def is_dataframe(obj: Any) -> bool:
    """True for a pandas DataFrame (duck-typed, no pandas import)."""
    return type(obj).__module__.split(".")[0] == "pandas" and all(
        hasattr(obj, a) for a in ("columns", "dtypes", "to_numpy")
    )


def is_pandas(obj: Any) -> bool:
    """True for a pandas DataFrame or Series (duck-typed, no pandas import)."""
    return type(obj).__module__.split(".")[0] == "pandas" and hasattr(obj, "to_numpy")


def _has_text(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, (list, tuple)) and any(_has_text(v) for v in value))


def coded_later(value: Any) -> bool:
    """True for an option only the adapter of a scikit-learn estimator fitted on a DataFrame can turn into numbers,
    once the inputs have set which columns hold text: a pandas Series or DataFrame, or a list of a row's values (or
    of rows) with text in it, ``[40, "oslo", 50.5, "basic"]`` (``--option fill=[...]`` on the command line)."""
    return is_pandas(value) or (isinstance(value, (list, tuple)) and bool(value) and _has_text(value))


def as_tensor_inputs(inputs: Any, coder: Any = None, packing: Any = None) -> tuple[torch.Tensor, list[str] | None]:
    """``(tensor, column names)`` of ``inputs`` (:func:`_as_tensor_inputs`). With ``coder``, a call of whybox starts
    on it: the coded tables of its call before are forgotten and these inputs are this call's (what names the table
    of a category the estimator refuses: :func:`whybox.models.categorical.refused_categories`)."""
    if coder is None or not hasattr(coder, "tables"):
        return _as_tensor_inputs(inputs, coder, packing)
    from whybox.models.categorical import start_call

    start_call(coder)
    x, names = _as_tensor_inputs(inputs, coder, packing)
    if "inputs" not in coder.tables:  # inputs given as coded rows (a tensor), not coded here
        start_call(coder, x)
    return x, names


def _as_tensor_inputs(inputs: Any, coder: Any = None, packing: Any = None) -> tuple[torch.Tensor, list[str] | None]:
    """``(tensor, column names)``: a tensor as it is (names None); a numeric numpy array copied to a tensor of its
    dtype (names None); a pandas DataFrame of numeric columns as a float64 tensor ``(B, F)`` with its column
    names; with ``coder`` (the adapter of a scikit-learn estimator fitted on a DataFrame) also a frame with text or
    categorical columns, coded (:mod:`whybox.models.categorical`). Anything else, or non-numeric data, is an
    :class:`InvalidInputError` naming what to pass (a nested tensor, a ``PackedSequence`` or a list of samples of
    different lengths, variable-length sequences: how to pad them to one tensor). With ``packing`` (a torch model of several inputs), a tuple or
    a mapping of its inputs' tensors, packed into rows (:mod:`whybox.models.packed`)."""
    if isinstance(inputs, torch.Tensor):
        if inputs.is_nested:  # samples of different lengths: no shape (B, ...) to perturb, batch or map
            raise InvalidInputError(
                f"inputs is a nested tensor of {inputs.size(0)} samples of different shapes (variable-length "
                "sequences); whybox takes one tensor (B, ...) of equal-shaped rows: pad them to (B, T, D), e.g. "
                "torch.nested.to_padded_tensor(inputs, 0.0), with a model that reads padded rows (a mask, or its "
                "own lengths)."
            )
        return inputs, None
    if isinstance(inputs, torch.nn.utils.rnn.PackedSequence):
        raise InvalidInputError(
            "inputs is a PackedSequence; whybox takes one tensor (B, ...) of equal-shaped rows: pad the sequences "
            "to (B, T, D) with torch.nn.utils.rnn.pad_packed_sequence(inputs, batch_first=True)[0] and pass that, "
            "with a model that takes padded rows (packing them itself, if it must, inside its forward)."
        )
    if packing is not None:
        inputs = packing.pack_inputs(inputs)
        if isinstance(inputs, torch.Tensor):
            return inputs, None
    if (isinstance(inputs, (tuple, list)) and len(inputs) > 1 and all(isinstance(t, torch.Tensor) for t in inputs)) or (
        isinstance(inputs, dict) and inputs and all(isinstance(t, torch.Tensor) for t in inputs.values())
    ):
        tensors = list(inputs.values()) if isinstance(inputs, dict) else list(inputs)
        uneven = (
            isinstance(inputs, (tuple, list))
            and len({t.shape for t in tensors}) > 1
            and len({t.ndim for t in tensors}) == 1
            and tensors[0].ndim >= 1
        )
        raise InvalidInputError(
            f"inputs is a {type(inputs).__name__} of {len(inputs)} tensors; for a model of several inputs, adapt it "
            "with their per-sample shapes, whybox.adapt(model, input_shapes=[(3, 32, 32), (10,)]) (or a mapping by "
            "argument name), and pass the tuple to that adapter. A model of one input takes one tensor (B, ...)"
            + (
                f"; if these are its samples, of different lengths ({', '.join(str(tuple(t.shape)) for t in tensors[:3])}"
                f"{', ...' if len(tensors) > 3 else ''}: variable-length sequences), pad them into one (B, T, D) with "
                "torch.nn.utils.rnn.pad_sequence(inputs, batch_first=True)."
                if uneven
                else "."
            )
        )
    if isinstance(inputs, np.ndarray):
        if inputs.dtype.kind not in _NUMERIC:
            raise InvalidInputError(
                f"inputs as a numpy array must be numeric (bool, int or float); got dtype {inputs.dtype}. whybox "
                "perturbs numbers: encode other values (e.g. ordinal or one-hot codes) and pass those; for a "
                "scikit-learn estimator fitted on a DataFrame with text columns, pass the rows as such a DataFrame "
                "(whybox codes its text columns)."
            )
        return torch.tensor(np.ascontiguousarray(inputs)), None
    if is_dataframe(inputs):
        bad = [str(c) for c, dt in inputs.dtypes.items() if getattr(dt, "kind", "O") not in _NUMERIC]
        if coder is not None and (bad or coder.feature_names is not None):  # columns checked (and text coded)
            from whybox.models.categorical import encode_frame

            return encode_frame(inputs, coder, "inputs", "inputs"), [str(c) for c in inputs.columns]
        if bad:
            raise InvalidInputError(
                f"inputs (a DataFrame) has non-numeric columns {name_list([repr(c) for c in bad])}; whybox perturbs numbers: encode them "
                "(e.g. ordinal or one-hot codes, and fit the model on those) or pass only the numeric columns."
            )
        return torch.tensor(np.ascontiguousarray(inputs.to_numpy(dtype=np.float64))), [str(c) for c in inputs.columns]
    if type(inputs).__module__.split(".")[0] == "pandas" and type(inputs).__name__ == "Series":
        raise InvalidInputError(
            f"inputs must be rows (B, F); got a pandas Series of {len(inputs)} values, one row or one column. Pass "
            "rows as a DataFrame: X.iloc[[0]] (a one-row frame) instead of X.iloc[0]."
        )
    if isinstance(inputs, str) or (isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], str)):
        raise InvalidInputError(TEXTS_GIVEN_TO_A_TENSOR_MODEL)
    raise InvalidInputError(
        f"inputs must be a torch.Tensor, a numpy array or a pandas DataFrame with a leading batch dimension; got "
        f"{type(inputs).__name__}. Convert with torch.as_tensor(...)."
    )


def _numbers(value: Any) -> bool:
    """True for a list (or tuple) of numbers, or of such lists: a row or rows written out. A bool in them is a
    number, 0 or 1, as in a DataFrame's bool column (``df.mode().iloc[0].tolist()``: ``[1, True, 0.0]``); only
    lists are read here, so a bare ``True`` is never taken for a row."""
    if isinstance(value, (list, tuple)):
        return all(_numbers(v) for v in value)
    return isinstance(value, (int, float, np.integer, np.floating, np.bool_))  # bool is an int


def _ints(value: Any) -> bool:
    """True for a list (or tuple) of ints or bools, or of such lists: a label map or a mask written out."""
    if isinstance(value, (list, tuple)):
        return all(_ints(v) for v in value)
    return isinstance(value, (int, np.integer, bool, np.bool_))


def python_number(value: Any) -> Any:
    """A real NumPy scalar or 0-d tensor (``np.float32(0.1)``, ``np.int64(8)``, ``torch.tensor(0.5)``) as the Python
    number it holds, so an option's check reads it as it reads ``0.1`` or ``8``; anything else unchanged (a bool,
    NumPy's or a bool tensor's, stays what it is: an option that refuses ``True`` refuses it still).

    A float of fewer than 64 bits is read as the shortest decimal that its own precision reads back to it, as NumPy
    prints it: ``np.float32(0.1)`` is ``0.1``, not ``0.10000000149011612`` (a share of 0.1 of 10 features is 1
    feature, as with ``0.1``, not 2); a bfloat16 (which NumPy lacks) as its exact value."""
    if isinstance(value, torch.Tensor) and value.ndim == 0 and value.dtype != torch.bool and not value.is_complex():
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:  # NumPy has no bfloat16 (no shortest decimal of its own): its exact value
            return float(value)
        value = value.numpy()[()]
    if isinstance(value, np.generic) and value.dtype.kind in "iu":
        return int(value)
    if isinstance(value, np.generic) and value.dtype.kind == "f":
        return float(str(value)) if value.dtype.itemsize < 8 else float(value)
    return value


def python_numbers(value: Any) -> Any:
    """A sequence-of-numbers option (``fractions=``, ``window=``, ``clip=``) given as a NumPy array or a tensor of
    real numbers, or as a list or tuple holding NumPy scalars or 0-d tensors (``list(np.linspace(0.1, 0.9, 9))``), as
    the list (the tuple) of the Python numbers it holds (:func:`python_number`), so the option's check reads it as it
    reads ``[0.1, 0.5]``. A bool array or tensor, and bools in a list, are kept as they came (an option that refuses
    bools refuses them still); anything else unchanged."""
    if isinstance(value, torch.Tensor) and value.dtype != torch.bool and not value.is_complex():
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:  # NumPy has no bfloat16: its exact values
            return value.double().tolist()
        value = value.numpy()
    if isinstance(value, np.ndarray) and value.dtype.kind in "iuf":
        return _python_rows(value)
    if isinstance(value, list):
        return [python_number(v) for v in value]
    if type(value) is tuple:  # not a named tuple: its fields are not a sequence of numbers
        return tuple(python_number(v) for v in value)
    return value


def _python_rows(a: np.ndarray) -> Any:
    return python_number(a[()]) if a.ndim == 0 else [_python_rows(r) for r in a]


def label_map_option(value: Any, name: str) -> Any:
    """An integer label map or a bool mask stack (``features=``, ``regions=``) given as a numpy array or as lists of
    ints (``--option features=[0,0,1,1]`` on the command line, a JSON, TOML or YAML config), as a tensor; anything
    else unchanged (the option's own check names what it takes)."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "biu":
        return torch.tensor(np.ascontiguousarray(value))
    if isinstance(value, (list, tuple)) and value and _ints(value):
        try:
            return torch.tensor(value)
        except (TypeError, ValueError) as exc:  # ragged rows
            raise InvalidParameterError(
                f"{name} as a list must be a row of ints or equal rows of them; {exc}."
            ) from None
    return value


def tensor_option(value: Any, name: str, coder: Any = None) -> Any:
    """An array-valued option (``fill=``, ``baseline=``) given as a numpy array, a pandas Series / DataFrame or a
    list of numbers (a row, or rows: ``--option fill=[5.8,3.0,4.3,1.3]`` on the command line; a bool in it is 0 or
    1, as in a DataFrame's bool column), as a tensor: numeric data only (e.g. ``fill=X_train.mean(0)`` for tabular rows), and with ``coder`` (the adapter of a scikit-learn
    estimator fitted on a DataFrame) text and categorical columns too, coded as its inputs are (a category the
    estimator's encoder refuses is an ``InvalidParameterError`` naming the ones it knows:
    :func:`whybox.models.categorical.model_categories`). Anything else is returned unchanged."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in _NUMERIC:
            raise InvalidParameterError(f"{name} as a numpy array must be numeric; got dtype {value.dtype}.")
        return torch.tensor(np.ascontiguousarray(value)).reshape(value.shape)  # a 0-d array stays 0-d (one number)
    if isinstance(value, (list, tuple)) and value and _numbers(value):  # e.g. a reference row from a config file
        try:
            return torch.tensor(value, dtype=torch.float64)
        except (TypeError, ValueError) as exc:  # ragged rows
            raise InvalidParameterError(f"{name} as a list must be a row of numbers or equal rows; {exc}.") from None
    if isinstance(value, (list, tuple)) and coded_later(value):
        if coder is None:
            raise InvalidParameterError(
                f"{name} holds text ({_short(value)}); text values are read only for a scikit-learn estimator fitted on "
                "a DataFrame with text columns. This model takes numbers: give one number per feature."
            )
        return _coded_rows(value, name, coder)
    if is_pandas(value):
        from whybox.models.categorical import categorical_columns, encode_frame

        frame = value if hasattr(value, "columns") else value.to_frame().T.infer_objects()
        if coder is not None and (coder.categories or categorical_columns(frame)):  # text here, or coded elsewhere
            return encode_frame(value, coder, name, "option")
        if coder is not None and getattr(coder, "feature_names", None) is not None:
            value = _by_column_name(value, list(coder.feature_names), name)
        try:
            arr = np.ascontiguousarray(value.to_numpy(dtype=np.float64))
        except (TypeError, ValueError):
            if hasattr(value, "columns"):
                bad = [repr(str(c)) for c, dt in value.dtypes.items() if getattr(dt, "kind", "O") not in _NUMERIC]
            else:  # a Series (a reference row): the entries that are not numbers
                bad = [repr(str(k)) for k, v in value.items() if not isinstance(v, (int, float, np.number, bool))]
            where = f" (not numbers: {name_list(bad)})" if bad else ""
            raise InvalidParameterError(
                f"{name} as a pandas {type(value).__name__} must hold numbers only (one per feature){where}; "
                "whybox perturbs numbers: encode the other columns (e.g. ordinal or one-hot codes, and fit the model "
                "on those) or pass only the numeric columns."
            ) from None
        return torch.tensor(arr)
    return value


def option_columns(value: Any) -> list[str] | None:
    """The column names a pandas option carries (a Series row's index, a DataFrame's columns), or ``None``: not
    pandas, or names by position only (a default 0..n-1 index)."""
    if not is_pandas(value):
        return None
    labels = list(value.columns if hasattr(value, "columns") else value.index)
    return None if labels == list(range(len(labels))) else [str(c) for c in labels]


def note_option_columns(owner: Any, what: str, value: Any) -> None:
    """Keep on ``owner`` (an explainer, a metric) the column names of its pandas option ``what``
    (``fill=X_train.mean()``), in ``owner._option_columns``: read by position, they are checked
    (:func:`check_option_columns`) against the inputs' columns when the inputs are a DataFrame."""
    labels = option_columns(value)
    if labels is not None:
        owner._option_columns = {**getattr(owner, "_option_columns", {}), what: labels}


def check_option_columns(options: dict[str, list[str]], names: list[str] | None) -> None:
    """The column names of pandas options (``{"fill": [...]}`` from :func:`option_columns`) against those of the
    inputs (a DataFrame's, ``names``): whybox reads an option by position, so its columns must be the inputs', in
    their order. Nothing to check when the inputs carry no names."""
    for what, labels in options.items():
        check_feature_names(labels, names, what, kind="pandas", against="inputs")


def _by_column_name(value: Any, fitted: list[str], name: str) -> Any:
    """A pandas Series (a reference row, by its index) or DataFrame (rows, by its columns) whose names must be the
    columns an estimator was fitted on, in their order, as the inputs' are; one without names (a default 0..n-1
    index) is read by position."""
    labels = list(value.columns if hasattr(value, "columns") else value.index)
    if labels != list(range(len(labels))):
        kind = "a DataFrame" if hasattr(value, "columns") else "a Series, by its index"
        check_feature_names([str(c) for c in labels], fitted, name, kind=kind)
    return value


def _coded_rows(value: list[Any] | tuple[Any, ...], name: str, coder: Any) -> torch.Tensor:
    """A row of values (or a list of rows) with text in it, in the estimator's column order, coded by ``coder``:
    ``(F,)`` for a row, ``(R, F)`` for rows."""
    columns = getattr(coder, "feature_names", None)
    rows = list(value) if all(isinstance(v, (list, tuple)) for v in value) else [list(value)]
    if columns is None:
        raise InvalidParameterError(
            f"{name} holds text ({_short(value)}), but {type(coder.model).__name__} was not fitted on a DataFrame, so "
            "its inputs are numbers: give one number per feature."
        )
    if any(len(r) != len(columns) for r in rows):
        raise InvalidParameterError(
            f"{name} as a list with text must be a row of the estimator's columns in their order: {len(columns)} "
            f"values, one per column ({name_list(list(columns))}); got {_short(value)}."
        )
    import pandas as pd  # the estimator was fitted on a DataFrame: pandas is installed

    from whybox.models.categorical import encode_frame

    coded = encode_frame(pd.DataFrame(rows, columns=list(columns)).infer_objects(), coder, name, "option")
    return coded if all(isinstance(v, (list, tuple)) for v in value) else coded[0]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def check_feature_names(
    names: list[str] | None,
    fitted: list[str] | None,
    what: str = "inputs",
    *,
    kind: str = "a DataFrame",
    against: str = "model",
) -> None:
    """A DataFrame's columns (of ``what``: the inputs, a fill row; ``kind`` says what holds them) against the columns
    the model was fitted on (``against="model"``) or those of the inputs (``"inputs"``: a pandas option read by
    position; both known): same names, same order."""
    if names is None or fitted is None or names == fitted:
        return
    model = against == "model"
    whose, columns = ("the model's", "model.feature_names_in_") if model else ("the inputs'", "inputs.columns")
    if sorted(names) == sorted(fitted):
        raise InvalidInputError(
            f"{what} ({kind}) has {whose} columns in another order; whybox reads {'them' if model else 'it'} by "
            f"position. Pass {what}[{columns}]."
        )
    missing, extra = column_mismatch(names, fitted)
    raise InvalidInputError(
        f"{what} ({kind}) has columns the {'model was not fitted on' if model else 'inputs do not have'}: missing "
        f"{missing[:5]}, unexpected {extra[:5]}. Pass "
        + (
            "the columns in model.feature_names_in_, in that order."
            if model
            else "the inputs' columns, in their order."
        )
    )
