"""Text and categorical columns of a pandas DataFrame, for a scikit-learn estimator fitted on such a frame (a
``Pipeline`` whose ``ColumnTransformer`` one-hot or ordinal encodes them).

The masking engine perturbs numbers, so each such column is coded as numbers: the position of the value in the
column's vocabulary. Before every call of the estimator the codes are decoded back to the values (and to the
column's own ``category`` dtype where it had one), so the estimator sees rows like the ones it was fitted on. A
perturbation replaces a whole cell by another row's cell (a reference row's, a background row's), so a coded
cell only ever holds a code of a real value.

Vocabularies live on the model's :class:`~whybox.models.adapter.SklearnAdapter` and only grow: a code, once given
to a value, keeps meaning that value. ``Explanation.meta["categories"]`` records them, and :func:`whybox.evaluate`
takes them up before coding anything else, so an explanation's coded options (a reference row, background rows)
mean the same when a metric re-runs the method, also after a save and a load.

pandas is never imported here: a frame is recognised by its attributes (the estimator's own pandas decodes).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch

from whybox.errors import InvalidInputError, InvalidParameterError, UnknownCategoryError, WhyboxError

__all__ = [
    "categorical_columns",
    "decode_rows",
    "encode_frame",
    "model_categories",
    "refused_categories",
    "register_vocabularies",
    "start_call",
    "vocabularies",
]

_NUMERIC = "biuf"

#: what a coded table is to the call: the inputs explained (a DataFrame given to the API), an option (a fill row,
#: background rows), or the data rows of a run (a CSV the command line reads), scored one by one
Kind = Literal["inputs", "option", "data"]


class _Column:
    """One column's vocabulary: its values in code order, and its pandas ``category`` dtype if it had one."""

    def __init__(self, dtype: Any = None) -> None:
        self.values: list[Any] = []
        self.index: dict[Any, int] = {}
        self.dtype = dtype  # a CategoricalDtype: decoded cells get it back

    def extend(self, values: list[Any]) -> None:
        new = {v for v in values if v not in self.index}
        for v in sorted(new, key=lambda v: (type(v).__name__, str(v))):  # the same codes whatever the row order
            self.index[v] = len(self.values)
            self.values.append(v)


def categorical_columns(frame: Any) -> list[str]:
    """The columns of a DataFrame that are not numbers (text, object, ``category`` dtypes)."""
    return [str(c) for c, dt in frame.dtypes.items() if getattr(dt, "kind", "O") not in _NUMERIC]


def vocabularies(coder: Any) -> dict[str, list[Any]] | None:
    """The coded columns of ``coder`` (a :class:`~whybox.models.adapter.SklearnAdapter`) and their values in code
    order (``None``: none coded)."""
    columns: dict[str, _Column] | None = getattr(coder, "categories", None)
    return None if not columns else {c: list(col.values) for c, col in columns.items()}


def encode_frame(frame: Any, coder: Any, what: str, kind: Kind) -> torch.Tensor:
    """``frame`` (rows of the estimator's columns, or one row as a Series) as a float64 tensor, its non-numeric
    columns coded by ``coder``'s vocabularies (grown by the values seen here). ``(B, F)`` for a frame, ``(F,)``
    for a Series. ``what`` names the table in messages; ``kind`` says what it is to the call (:data:`Kind`).

    A column that holds text here and numbers in another table of the call (or the reverse) is an error, and so is
    a category the estimator's encoder refuses (:func:`model_categories`): ``InvalidInputError`` for the inputs,
    ``InvalidParameterError`` for an option. A run's data rows (``kind="data"``) are not refused for it: the model
    is asked row by row there, and a row holding such a value fails alone (:func:`refused_categories` names it).
    The coded values of each table are noted on ``coder.tables`` for :func:`refused_categories`; coding the
    inputs starts a new call (the tables of the call before are forgotten)."""
    series = not hasattr(frame, "columns")
    if series:  # a reference row: one value per column
        frame = frame.to_frame().T.infer_objects()
    bad = categorical_columns(frame)
    fitted = getattr(coder, "feature_names", None)
    if fitted is None:
        raise InvalidInputError(
            f"{what} (a DataFrame) has non-numeric columns {', '.join(repr(c) for c in bad[:5])}; whybox perturbs "
            "numbers, and codes such columns only for a scikit-learn estimator fitted on a DataFrame with them (a "
            "Pipeline that encodes them). Encode them (e.g. ordinal or one-hot codes, and fit the model on those) "
            "or pass only the numeric columns."
        )
    names = [str(c) for c in frame.columns]
    if names != fitted:
        from whybox.models.inputs import check_feature_names

        check_feature_names(names, fitted, what)
    columns: dict[str, _Column] = coder.categories
    if kind == "inputs":  # a new call: the tables of the one before are not its own
        start_call(coder)
    noted: dict[str, list[Any]] = {}  # the coded values of this table, by column
    known = _known_categories(getattr(coder, "model", None), fitted) if bad else {}
    out = np.empty((len(frame), len(names)), dtype=np.float64)
    for j, c in enumerate(names):
        cells = frame.iloc[:, j]
        if c not in bad:
            if c in columns and all(v in columns[c].index for v in cells.tolist()):
                # values of a coded column that read as numbers here (a reference row of a category column of
                # ints, which a Series row loses the dtype of): coded like the column's other values
                _check_known(cells.tolist(), c, known, coder, what, kind)
                out[:, j] = [columns[c].index[v] for v in cells.tolist()]
                noted[c] = cells.tolist()
                bad.append(c)
                continue
            if c in columns:
                raise InvalidInputError(
                    f"{what}: column {c!r} holds numbers, but another table of this call (the inputs, a fill row or "
                    "background rows) holds text there; pass the same kind of value in every table."
                )
            out[:, j] = cells.to_numpy(dtype=np.float64)
            if getattr(cells.dtype, "kind", "f") in "iub":  # ints and bools go back to the estimator as such
                coder.numeric_dtypes.setdefault(c, cells.dtype)
            continue
        if c not in columns and c in coder.numeric_seen:
            raise InvalidInputError(
                f"{what}: column {c!r} holds text, but another table of this call (the inputs, a fill row or "
                "background rows) holds numbers there; pass the same kind of value in every table."
            )
        values = cells.tolist()
        missing = [i for i, v in enumerate(values) if v is None or (isinstance(v, float) and v != v)]
        if missing:
            raise InvalidInputError(
                f"{what}: column {c!r} has missing values in rows {missing[:10]}; fill them in (e.g. with a "
                "'missing' category) before explaining."
            )
        _check_known(values, c, known, coder, what, kind)
        dtype = cells.dtype if getattr(cells.dtype, "name", "") == "category" else None
        col = columns.setdefault(c, _Column())
        if dtype is not None and col.dtype is None:  # decoded cells get the dtype back
            col.dtype = dtype
            col.extend(list(dtype.categories))  # every category (codes already given keep their values)
        col.extend(values)
        out[:, j] = [col.index[v] for v in values]
        noted[c] = values
    coder.numeric_seen.update(c for c in names if c not in bad)
    _note(coder, what, kind, noted)
    t = torch.from_numpy(out)
    return t[0] if series else t


def start_call(coder: Any, rows: torch.Tensor | None = None) -> None:
    """A call of whybox starts on ``coder`` (the estimator's adapter) with its inputs: the tables noted for the call
    before (:func:`encode_frame`) are forgotten, and ``rows`` (inputs given as coded rows ``(B, F)``, not coded in
    this call) noted as the call's inputs."""
    tables = getattr(coder, "tables", None)
    if tables is None:
        return
    tables.clear()
    columns: dict[str, _Column] = getattr(coder, "categories", {})
    names = getattr(coder, "feature_names", None)
    if rows is None or not columns or names is None or rows.ndim != 2 or rows.shape[1] != len(names):
        return
    noted: dict[str, list[Any]] = {}
    for j, c in enumerate(names):
        col = columns.get(c)
        if col is not None and col.values and rows.shape[0]:
            codes = torch.unique(rows[:, j].detach().double().cpu()).numpy()
            codes = np.unique(np.clip(np.rint(codes[np.isfinite(codes)]), 0, len(col.values) - 1).astype(np.int64))
            noted[c] = [col.values[k] for k in codes.tolist()]
    _note(coder, "inputs", "inputs", noted)


def _note(coder: Any, what: str, kind: Kind, noted: dict[str, list[Any]]) -> None:
    """Note on ``coder.tables`` the coded values (by column) that the table ``what`` brought into this call."""
    tables: dict[str, tuple[str, dict[str, list[Any]]]] | None = getattr(coder, "tables", None)
    if tables is None or not noted:
        return
    _, seen = tables.setdefault(what, (kind, {}))
    for c, values in noted.items():
        seen[c] = list(dict.fromkeys([*seen.get(c, []), *values]))


def model_categories(estimator: Any, columns: list[str] | None) -> dict[str, list[Any]]:
    """The categories a fitted scikit-learn estimator knows of its input ``columns`` (its ``feature_names_in_``):
    for each column an encoder reads as it came in, the values of that encoder's ``categories_``, where the encoder
    refuses any other (``handle_unknown="error"``, the default of ``OneHotEncoder`` and ``OrdinalEncoder``); a
    column read by several such encoders, the values all of them know. Read through a ``Pipeline`` (its first
    step, and the steps after a ``SimpleImputer``, which leaves the values whybox gives as they are), a
    ``ColumnTransformer`` (the columns each transformer picks) and a ``FeatureUnion``; an encoder behind any other
    step (one that may change the values: a ``FunctionTransformer``) is not read, nor is a column an encoder takes
    any value of (``handle_unknown="ignore"``)."""
    return {c: values for c, (values, _) in _known_categories(estimator, columns).items()}


def _known_categories(estimator: Any, columns: list[str] | None) -> dict[str, tuple[list[Any], str]]:
    """:func:`model_categories`, each column's values with the name of the encoder that reads it."""
    out: dict[str, tuple[list[Any], str]] = {}
    if estimator is not None and columns:
        _read_encoders(estimator, list(columns), out)
    return out


def _read_encoders(step: Any, columns: list[str], out: dict[str, tuple[list[Any], str]]) -> None:
    cats = getattr(step, "categories_", None)
    if isinstance(cats, list) and hasattr(step, "handle_unknown"):  # an encoder: OneHotEncoder, OrdinalEncoder
        if step.handle_unknown == "error" and len(cats) == len(columns) == getattr(step, "n_features_in_", -1):
            for c, values in zip(columns, cats, strict=True):
                seen = [v for v in np.asarray(values, dtype=object).tolist() if _present(v)]
                out[c] = (
                    (seen, type(step).__name__) if c not in out else ([v for v in out[c][0] if v in seen], out[c][1])
                )
        return
    steps = getattr(step, "steps", None)
    if isinstance(steps, list):  # a Pipeline: its first step reads the columns as they came in
        for _, inner in steps:
            if inner is None or (isinstance(inner, str) and inner == "passthrough"):
                continue
            _read_encoders(inner, columns, out)
            if type(inner).__name__ != "SimpleImputer" or getattr(inner, "n_features_in_", -1) != len(columns):
                return  # the next step reads what this one made of the columns
        return
    transformers = getattr(step, "transformers_", None)
    if isinstance(transformers, list):  # a fitted ColumnTransformer: each transformer reads the columns it picks
        for entry in transformers:
            if len(entry) < 3 or isinstance(entry[1], str):  # "drop", "passthrough"
                continue
            picked = _picked_columns(entry[2], columns)
            if picked is not None:
                _read_encoders(entry[1], picked, out)
        return
    union = getattr(step, "transformer_list", None)
    if isinstance(union, list):  # a FeatureUnion: every part reads every column
        for entry in union:
            if len(entry) >= 2 and not isinstance(entry[1], str):
                _read_encoders(entry[1], columns, out)


def _present(value: Any) -> bool:
    """Whether an encoder's category is a value (not None, NaN or pandas' NA: missing values, which whybox refuses
    in the tables it codes)."""
    try:
        return value is not None and bool(value == value)
    except (TypeError, ValueError):
        return False


def _picked_columns(selection: Any, columns: list[str]) -> list[str] | None:
    """The names of the columns a ColumnTransformer's ``selection`` (names, positions, a slice, a bool mask) picks
    of ``columns``, or ``None`` where it does not say."""
    if isinstance(selection, str):
        selection = [selection]
    if isinstance(selection, slice):
        return None if any(isinstance(b, str) for b in (selection.start, selection.stop)) else columns[selection]
    try:
        picked = np.asarray(selection).tolist()
    except (TypeError, ValueError):
        return None
    if not isinstance(picked, list):
        return None
    if picked and all(isinstance(p, bool) for p in picked):
        return [c for c, keep in zip(columns, picked, strict=False) if keep] if len(picked) == len(columns) else None
    if all(isinstance(p, str) for p in picked):
        return [str(p) for p in picked] if all(p in columns for p in picked) else None
    if all(isinstance(p, int) and -len(columns) <= p < len(columns) for p in picked):
        return [columns[p] for p in picked]
    return None


def _check_known(
    values: list[Any], column: str, known: dict[str, tuple[list[Any], str]], coder: Any, what: str, kind: Kind
) -> None:
    """Refuse a value of a coded ``column`` that the estimator's encoder does not know (:func:`model_categories`):
    the estimator would refuse every row holding it. ``InvalidInputError`` for the inputs, ``InvalidParameterError``
    for an option; nothing for a run's data rows (each row that holds it fails alone, when the model is asked)."""
    if column not in known or kind == "data":
        return
    ok, encoder = known[column]
    try:
        lookup: Any = set(ok)
        unknown = list(dict.fromkeys(v for v in values if v not in lookup))
    except TypeError:  # unhashable values: compared one by one
        unknown = [v for i, v in enumerate(values) if v not in ok and v not in values[:i]]
    if not unknown:
        return
    error = InvalidInputError if kind == "inputs" else InvalidParameterError
    if kind == "inputs":
        fix = "explain rows of the categories the model was fitted on, or refit it with handle_unknown='ignore'"
    elif "background" in what:
        fix = "give background rows of the categories the model was fitted on (e.g. X_train[:50])"
    else:
        fix = f"give {what} a category the model knows (e.g. X_train.mode().iloc[0] as the reference row)"
    raise error(f"{what}: column {column!r} holds {_unknown_text(unknown, ok, encoder, coder)}; {fix}.")


def _unknown_text(unknown: list[Any], ok: list[Any], encoder: str, coder: Any) -> str:
    """``'berlin', a category the model was not fitted on: its OneHotEncoder (in the Pipeline) knows only ...``"""
    model = type(getattr(coder, "model", None)).__name__
    listed = ", ".join(map(repr, ok[:10])) + (f" and {len(ok) - 10} more" if len(ok) > 10 else "")
    return (
        f"{', '.join(map(repr, unknown[:5]))}, a category the model was not fitted on: its {encoder} (in the "
        f"{model}) knows only {listed} there and refuses any other (handle_unknown='error')"
    )


def refused_categories(rows: np.ndarray, coder: Any, exc: Exception) -> WhyboxError | None:
    """whybox's error for the estimator's refusal ``exc`` of a category it was not fitted on (scikit-learn's
    ``Found unknown categories ['berlin'] in column 0 during transform``) on the coded ``rows`` ``(n, F)`` it was
    given, or ``None`` where the rows hold no value it can be about.

    The values refused are those of the rows' coded columns that the encoder does not know (where
    :func:`model_categories` reads it), else those the estimator's message names (an encoder behind a
    ``FunctionTransformer``: which of the columns it means, whybox cannot read). The table that brought them in is
    read from the tables coded in this call (``coder.tables``, :func:`encode_frame`). Where one table did, its
    error: ``InvalidInputError`` for the inputs or a run's data rows, ``InvalidParameterError`` for an option;
    where several could have, or none of this call did (rows coded before it), an ``UnknownCategoryError`` that
    lists the candidates (table, column, value) without picking one."""
    text = str(exc)
    named = text.split(" in column")[0]  # "Found unknown categories ['berlin'] in column 0 during transform"
    known = _known_categories(getattr(coder, "model", None), list(coder.feature_names or []))
    columns: dict[str, _Column] = coder.categories
    refused: dict[str, list[Any]] = {}  # column -> its values in the rows the estimator refuses (or may)
    for j, c in enumerate(coder.feature_names or []):
        col = columns.get(c)
        if col is None or not col.values:
            continue
        codes = np.unique(np.clip(np.rint(rows[:, j]), 0, len(col.values) - 1).astype(np.int64))
        present = [col.values[k] for k in codes.tolist()]
        if c in known:
            ok = known[c][0]
            values = [v for v in present if v not in ok]
        else:
            values = [v for v in present if repr(v) in named]
        if values:
            refused[c] = values
    if not refused:
        return None
    tables: dict[str, tuple[str, dict[str, list[Any]]]] = getattr(coder, "tables", {})
    found: dict[tuple[str, str], dict[str, list[Any]]] = {}  # (table, kind) -> column -> values it brought
    earlier = "rows coded before this call"
    for c, values in refused.items():
        for v in values:
            owners = [(what, kind) for what, (kind, seen) in tables.items() if v in seen.get(c, [])]
            for owner in owners or [(earlier, "")]:
                found.setdefault(owner, {}).setdefault(c, []).append(v)
    parts = []
    for (what, _), cols in found.items():
        for c, values in cols.items():
            about = f"{_unknown_text(values, *known[c], coder)}" if c in known else ", ".join(map(repr, values[:5]))
            parts.append(f"{what}: column {c!r} holds {about}")
    listed = "; ".join(parts[:8]) + (f"; and {len(parts) - 8} more" if len(parts) > 8 else "")
    what, kind = next(iter(found)) if len(found) == 1 else (earlier, "")  # one table of this call brought them
    sure = all(c in known for c in refused) or len(refused) == 1  # which column: read, or the only candidate
    if kind and sure:
        error: type[WhyboxError] = InvalidParameterError if kind == "option" else InvalidInputError
        return error(
            f"the model refused a category it was not fitted on ({text}): {listed}. Give {what} categories the "
            "model was fitted on."
        )
    return UnknownCategoryError(
        f"the model refused a category it was not fitted on ({text}), and whybox cannot tell which of these "
        f"brought it in: {listed}. Give every one of them categories the model was fitted on."
    )


def register_vocabularies(coder: Any, saved: dict[str, list[Any]]) -> None:
    """Take up the vocabularies an explanation was made with (``meta["categories"]``) before anything else is
    coded, so that its coded options (a reference row, background rows) read as they were made. Codes are given in
    the order values are first seen, so one that ``coder`` already holds agrees where either vocabulary begins the
    other (the rows coded so far held fewer values than the explanation's reference row): the longer one is kept.
    Any other is an error."""
    columns: dict[str, _Column] = coder.categories
    for c, values in saved.items():
        col = columns.get(c)
        if col is None:
            col = columns[c] = _Column()
        n = min(len(col.values), len(values))
        if col.values[:n] == list(values)[:n]:
            for v in list(values)[n:]:
                col.index[v] = len(col.values)
                col.values.append(v)
        else:
            raise InvalidParameterError(
                f"the explanation coded column {c!r} as {list(values)[:5]}, but this model adapter codes it as "
                f"{col.values[:5]}; evaluate with the estimator itself (a fresh adapter) or the adapter it was "
                "explained with."
            )


def decode_rows(rows: np.ndarray, coder: Any, mixed: str = "object") -> Any:
    """Coded rows ``(n, F)`` back to a DataFrame of the estimator's columns: coded cells as their values (a code
    is rounded to the nearest one in the vocabulary), int and bool columns in their own dtype (:func:`_typed_cells`,
    ``mixed`` for a column of whole and non-whole cells), the rest as numbers."""
    import pandas as pd  # the estimator was fitted on a DataFrame: pandas is installed

    columns: list[str] = coder.feature_names
    vocab: dict[str, _Column] = coder.categories
    typed: dict[str, Any] = getattr(coder, "numeric_dtypes", {})
    data: dict[str, Any] = {}
    for j, c in enumerate(columns):
        col = vocab.get(c)
        if col is None:
            dtype = typed.get(c)
            data[c] = rows[:, j] if dtype is None else _typed_cells(rows[:, j], dtype, mixed)
            continue
        codes = np.clip(np.rint(rows[:, j]), 0, len(col.values) - 1).astype(np.int64)
        cells = np.asarray(col.values, dtype=object)[codes]
        if col.dtype is None:
            data[c] = cells
            continue
        # values another table brought in (a background row's city that the input row's own Categorical does not
        # list): the dtype widened by them, in code order, so that they reach the estimator (not as NaN)
        known = set(col.dtype.categories)
        extra = [v for v in col.values if v not in known]
        dtype = col.dtype if not extra else pd.CategoricalDtype([*col.dtype.categories, *extra], col.dtype.ordered)
        data[c] = pd.Categorical(cells, dtype=dtype)
    return pd.DataFrame(data, columns=columns)


def typed_ok(values: np.ndarray, dtype: Any) -> np.ndarray:
    """``(n,)`` bool: the cells of a column that its int or bool ``dtype`` holds (whole; 0/1 for a bool; in range
    for an int)."""
    kind = getattr(dtype, "kind", "f")
    ok = values == np.rint(values)
    if kind == "b":
        ok &= (values == 0) | (values == 1)
    else:
        try:
            info = np.iinfo(np.dtype(getattr(dtype, "numpy_dtype", dtype)))
            ok &= (values >= info.min) & (values <= info.max)
        except TypeError:
            pass
    return ok


def _typed_cells(values: np.ndarray, dtype: Any, mixed: str = "object") -> Any:
    """A column's cells in its own int or bool ``dtype`` (:func:`typed_ok`), so a row reads the same whatever else
    shares its call. Where some cells cannot be cast (a fill of the column's mean, 1.5; 300 in a uint8 column),
    ``mixed="object"`` gives each cell as it holds (ints beside floats: ``astype(str)`` reads '2' and '1.5') and
    ``"float"`` every cell as a float (for estimators that refuse object columns, e.g. ``np.log1p``)."""
    import pandas as pd

    ok = typed_ok(values, dtype)
    if bool(ok.all()):
        return pd.Series(values).astype(dtype)
    if mixed == "float" or not bool(ok.any()):
        return values
    cast = bool if getattr(dtype, "kind", "") == "b" else int
    return np.array(
        [cast(v) if k else float(v) for v, k in zip(values.tolist(), ok.tolist(), strict=True)], dtype=object
    )
