"""Debugging wrong predictions (LIMA.md, Evaluation): find a model's mistakes and the regions behind each.

For every misclassified input the *true* class is explained (LIMA by default) and the regions are inserted in the
explanation's order into the filled input: the highest probability of the true class reached while at most 25, 50,
75 and 100 % of the input is shown ("highest confidence", Chen et al. ICLR 2024), and where it is reached. The
regions ranked after that point lower the true class when they are added: they are the regions that cause the
error (``culprits``), shown as a mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from whybox.api import evaluate, explain
from whybox.errors import InvalidInputError, InvalidParameterError, InvalidTargetError
from whybox.explainers.base import _keyword_options
from whybox.explainers.perturbation._common import PerturbationExplainer
from whybox.explanation import Explanation
from whybox.masking.engine import MaskingEngine, resolve_batch_size
from whybox.masking.features import FeatureGroups
from whybox.masking.fills import one_value_per_column
from whybox.models.adapter import ModelAdapter, TorchAdapter, adapt, coder_of, is_signal, scoring_adapter
from whybox.models.inputs import (
    TEXTS_GIVEN_TO_A_TENSOR_MODEL,
    as_tensor_inputs,
    check_option_columns,
    is_dataframe,
    is_text_adapter,
    is_texts,
    option_columns,
    tensor_option,
)
from whybox.models.packed import packed_option
from whybox.models.targets import apply_score_space, class_label_target, true_class_indices
from whybox.models.targets import class_names as model_class_names
from whybox.registry import EXPLAINERS, METRICS

__all__ = ["DebugReport", "Mistake", "find_mistakes"]

BUDGETS = (0.25, 0.5, 0.75, 1.0)
CULPRIT_DROP = 0.01  # a culprit lowers the true class's probability by more than this when it is added


@dataclass
class Mistake:
    """One misclassified input.

    Attributes
    ----------
    index
        Position in the inputs given to :func:`find_mistakes`.
    label, predicted
        True and predicted class; ``p_label`` and ``p_predicted`` their probabilities on the whole input.
    hc, hc_area
        Highest probability of the true class along region insertion with at most 25 / 50 / 75 / 100 % of the
        input shown, and the shown fraction where it is first reached.
    insertion
        Insertion AUC of the true class (region steps).
    culprits, drops
        The regions that cause the error: among those ranked after the point of the highest confidence (100 %
        budget), each one whose addition lowers the true class's probability by more than ``CULPRIT_DROP`` (0.01),
        the largest drop first, with the drops (< 0).
    culprit_mask
        ``(H, W)`` bool (or ``(F,)`` for rows): where the culprits are.
    regions
        The region label map ``(H, W)`` (or ``(F,)``; for a text, ``(T,)`` word ids per token).
    attribution
        The true-class map ``(H, W)`` (channels summed) or row ``(F,)`` of the explanation (a text: ``(T,)`` per
        token).
    culprit_words
        For a text, the culprits as words (in the order of ``culprits``); empty otherwise.
    """

    index: int
    label: int
    predicted: int
    p_label: float
    p_predicted: float
    hc: list[float]
    hc_area: list[float]
    insertion: float
    culprits: list[int]
    drops: list[float]
    culprit_mask: torch.Tensor
    regions: torch.Tensor
    attribution: torch.Tensor
    culprit_words: list[str] = field(default_factory=list)


@dataclass
class DebugReport:
    """What :func:`find_mistakes` found: the mistakes explained (at most ``max_mistakes``), all ``n_wrong`` of the
    ``n_inputs``, and the true-class explanation of the explained ones."""

    n_inputs: int
    n_wrong: int
    mistakes: list[Mistake]
    method: str
    explanation: Explanation | None = None
    params: dict[str, Any] = field(default_factory=dict)
    #: the model's class names (``classes_``, ``id2label``, ``adapt(labels=)``), where it has them
    class_names: list[str] | None = None

    @property
    def accuracy(self) -> float:
        return 1.0 - self.n_wrong / max(1, self.n_inputs)

    def __repr__(self) -> str:  # the dataclass repr printed every tensor of every mistake
        shown = "" if len(self.mistakes) == self.n_wrong else f", {len(self.mistakes)} explained"
        return (
            f"DebugReport({self.n_inputs} inputs, {self.n_wrong} wrong (accuracy {self.accuracy:.3f}){shown}, "
            f"method {self.method!r}; .table() lists the mistakes, .mistakes holds them)"
        )

    def table(self, class_names: list[str] | None = None, column_names: list[str] | None = None) -> str:
        """A plain-text table: one line per mistake (classes by ``class_names``, by default the model's own).

        ``column_names``: a table's columns (``(F,)`` region maps), to name the culprit of the largest drop by its
        column(s) instead of its region id."""
        if class_names is None:
            class_names = self.class_names

        def name(c: int) -> str:
            return class_names[c] if class_names is not None and 0 <= c < len(class_names) else str(c)

        head = f"{'index':>6}  {'label':>12}  {'predicted':>12}  {'p(label)':>8}  " + "  ".join(
            f"HC<={int(b * 100)}%" for b in BUDGETS
        )
        lines = [head + "  reached at  culprits  largest drop"]
        for m in self.mistakes:
            hc = "  ".join(f"{v:>8.3f}" for v in m.hc)
            if m.culprits:  # the culprit whose addition lowers the true class most: its region id (a text: its word)
                first = m.culprit_words[0] if m.culprit_words else f"region {m.culprits[0]}"
                ids = m.regions.reshape(-1).tolist()
                if column_names is not None and m.regions.ndim == 1 and len(ids) == len(column_names):
                    first = ", ".join(c for c, g in zip(column_names, ids, strict=True) if g == m.culprits[0])
                worst = f"{m.drops[0]:+.3f} ({first})"
            else:
                worst = "-"
            lines.append(
                f"{m.index:>6}  {name(m.label):>12}  {name(m.predicted):>12}  {m.p_label:>8.3f}  {hc}  "
                f"{m.hc_area[-1]:>10.0%}  {len(m.culprits):>8}  {worst}"
            )
        return "\n".join(lines)


def find_mistakes(
    model: Any,
    inputs: Any,
    labels: Any,
    *,
    method: str = "lima",
    max_mistakes: int | None = None,
    regions: torch.Tensor | None = None,
    fill: Any = None,
    batch_size: int | None = None,
    **params: Any,
) -> DebugReport:
    """Find the inputs ``model`` gets wrong and explain each one's true class (see the module docstring).

    Parameters
    ----------
    model
        A classifier (``nn.Module`` or adapter).
    inputs, labels
        ``(B, *S)`` inputs (a tensor, a numpy array or a DataFrame of rows; for a text adapter, the texts) and their
        true classes ``(B,)``: a torch tensor holds output indices ``0..K-1``; a list, NumPy array or pandas Series
        holds ints or the model's class names: a scikit-learn classifier's own labels (its ``classes_``, e.g.
        ``y_test``, also ``[1, 2, 3]``), a Hugging Face model's ``id2label``. Texts are explained over words with the text options of
        :func:`~whybox.models.text.explain_text` (LIMA: word regions; the [MASK] fill), and the culprits are words.
    method
        The explainer (default ``"lima"`` with ``search="predictive"``); ``params`` go to it.
    max_mistakes
        Explain at most this many mistakes (the first ones in input order).
    regions
        Region label map for the insertion steps, ``(H, W)`` / ``(B, H, W)`` (images) or ``(F,)`` (rows). Default:
        LIMA's own regions; for other methods a grid of about 49 cells (images), the columns (rows), or for a model
        of several inputs with an image its image in squares and the other inputs value by value
        (``adapter.packing.region_groups(patch)``, the perturbation methods' default features). With
        ``method="lima"`` also one of LIMA's region kinds (``"grid"``, ``"superpixels"``, ...), which LIMA builds
        (with ``n_regions`` and its other options in ``params``) and the steps then use.
    fill
        What a hidden region becomes, in the explanation and the insertion steps alike: a fill name, a number, or
        values broadcasting to one input or holding one row per input (cut to the mistakes' rows), as a tensor,
        NumPy array, list, pandas Series (a reference row) or DataFrame (rows), or per input for a model of several
        inputs. Default zero; on texts [MASK] (a name: one of ``"mask"``, ``"unk"``, ``"pad"``, ``"zero"``, the
        token a removed word becomes; a black box's removed words are dropped, so it takes no fill). With
        ``background=`` rows in ``params`` (the Shapley methods) the explanation reads those instead, and ``fill``
        only the insertion steps.
        Rows with text or categorical columns (a scikit-learn estimator fitted on such a DataFrame, also the rows
        the command line codes from a CSV) need a reference row here: a fill by name or number (also a 0-d array or
        tensor) is refused, as :func:`~whybox.explain` refuses it, since it would set such a column to an arbitrary
        category; so is a reference row holding a category the model's encoder was not fitted on.
    batch_size
        Rows per model call (``None``: 64 for a torch model, 4,096 for a scikit-learn estimator).

    Raises
    ------
    InvalidParameterError
        A fill by name or number on rows with text or categorical columns, or a reference row holding a category
        the model's encoder refuses (``handle_unknown="error"``); a fill that neither broadcasts to one input nor
        holds one row per input (said of the inputs given, not of the mistakes' rows).
    """
    adapter = model if isinstance(model, ModelAdapter) else adapt(model)
    if adapter.outputs_values:
        raise InvalidParameterError(
            f"find_mistakes looks for the inputs a classifier gets wrong, but {type(adapter.model).__name__} is a "
            "regressor (its outputs are predicted values, not classes); explain its largest errors with "
            "whybox.explain on those rows instead."
        )
    if adapter.kind == "multilabel":
        raise InvalidParameterError(
            "find_mistakes looks for the inputs a classifier puts in the wrong class, but this adapter is multi-label "
            "(kind='multilabel': independent labels, several true at once), where a row has no single true class; "
            "explain a missed label with whybox.explain(adapter, rows, 'lima', target=label) on the rows that miss it."
        )
    text_batch: Any = None
    if is_texts(inputs):
        if not is_text_adapter(adapter):
            raise InvalidInputError(TEXTS_GIVEN_TO_A_TENSOR_MODEL)
        text_batch = adapter.encode(inputs)  # type: ignore[attr-defined]
        inputs = text_batch.inputs
        from whybox.api import _text_fill

        fill = _text_fill(adapter, text_batch.inputs, fill)  # None: [MASK]; a token name; a tensor as given
    elif fill is None:
        fill = "zero"
    coder = coder_of(adapter)
    fill_columns = option_columns(fill)
    if fill_columns is not None and is_dataframe(inputs):  # read by position, as explain and evaluate read it: the
        check_option_columns({"fill": fill_columns}, [str(c) for c in inputs.columns])  # inputs' columns, in order
    inputs, _ = as_tensor_inputs(
        inputs, coder, getattr(adapter, "packing", None)
    )  # a numpy array or a DataFrame of rows (text columns coded)
    # text columns coded here (a DataFrame) or before (the command line's CSV, coded by its adapter): what the
    # explainers and metrics refuse a fill by name or number for, as they would set such a column to its first value
    coded = list(coder.categories) if coder is not None else []
    background = params.get("background") is not None  # the Shapley methods' reference rows, for the explanation
    if coded and one_value_per_column(fill):
        why = (
            "background= is read by the explanation only; the insertion steps hide regions with find_mistakes' "
            "own fill= (default 'zero'), and "
            if background
            else ""
        )
        raise InvalidParameterError(
            f"{why}inputs have text or categorical columns ({', '.join(map(repr, coded[:5]))}), which fill={fill!r} "
            "would set to an arbitrary value; pass a reference row as fill= (a Series with every column, e.g. "
            "X_train.mode().iloc[0], or a list of its values in the model's column order: --option 'fill=[...]' on "
            "the command line)."
        )
    if text_batch is None:  # a reference row or rows (an array, a list, pandas), per input for several inputs:
        # a tensor, coded once (the explainer and the metric read the same row) and cut below to the mistakes' rows
        fill = tensor_option(packed_option(fill, adapter, "fill"), "fill", coder)
    if inputs.ndim < 2:
        raise InvalidInputError(
            f"inputs must have a leading batch dimension (B, ...); got shape {tuple(inputs.shape)}."
        )
    if inputs.shape[0] == 0:
        raise InvalidInputError("inputs hold no rows (batch size 0); pass at least one row.")
    if isinstance(fill, torch.Tensor) and text_batch is None:
        _check_fill(fill, inputs)  # against the user's inputs, before the cut to the mistakes' rows
    if not isinstance(labels, torch.Tensor):  # a list, array or Series; a classifier's own labels become indices
        given = np.asarray(labels.to_numpy() if hasattr(labels, "to_numpy") else labels)
        classes = true_class_indices(adapter, given.reshape(-1).tolist()) if given.ndim == 1 else None
        if classes is not None:  # a scikit-learn classifier's own labels, classes_ [1, 2, 3] or ["no", "yes"]
            labels = torch.tensor(classes, dtype=torch.int64)
        else:
            try:
                arr = np.asarray(class_label_target(adapter, given))
            except InvalidTargetError as exc:  # a class name the model does not have: say it of labels
                raise InvalidTargetError(str(exc).replace("target ", "labels: ", 1)) from None
            if arr.dtype.kind in "iu":
                labels = torch.from_numpy(arr.astype(np.int64))
    if not isinstance(labels, torch.Tensor) or labels.shape != (inputs.shape[0],) or labels.is_floating_point():
        shape = (
            tuple(labels.shape) if hasattr(labels, "shape") else (len(labels),) if hasattr(labels, "__len__") else ()
        )
        text = not isinstance(labels, torch.Tensor) and np.asarray(labels).dtype.kind in ("U", "S", "O")
        hint = (
            " Class names need the model's output names: whybox.adapt(model, labels=[...]) (a scikit-learn "
            "classifier's classes_ and a Hugging Face config's id2label give them already)."
            if text and model_class_names(adapter) is None
            else ""
        )
        raise InvalidInputError(
            f"labels must be integer classes of shape ({inputs.shape[0]},), one per input; got "
            f"{getattr(labels, 'dtype', type(labels).__name__)} {shape}.{hint}"
        )
    EXPLAINERS.get(method)  # unknown names list the known ones
    if "target" in params:
        raise InvalidParameterError(
            "target= is not an option of find_mistakes: each mistake is explained for its true class, from labels; "
            "to explain another class, call whybox.explain(model, rows, method, target=...) on the rows."
        )
    lima_kind = None
    if isinstance(regions, str) and method == "lima":
        lima_kind, regions = regions, None  # LIMA builds them; the steps read them from its meta
    elif regions is not None and not isinstance(regions, torch.Tensor):
        raise InvalidParameterError(
            f"regions must be a label map tensor ((H, W), (B, H, W) or (F,)) or None; got {regions!r}"
            + (" (a region kind by name applies to method='lima' only)." if isinstance(regions, str) else ".")
        )
    if max_mistakes is not None and (
        isinstance(max_mistakes, bool) or not isinstance(max_mistakes, int) or max_mistakes < 1
    ):
        raise InvalidParameterError(f"max_mistakes must be a positive int or None; got {max_mistakes!r}.")
    # the predictions: through the adapter's guard (eval mode, state restored) and the engine's chunked forward
    dev = adapter.device
    w_dtype = getattr(adapter, "weights_dtype", None)
    floats = inputs.is_floating_point() or inputs.dtype == torch.uint8  # not token ids: explain says what fits them
    if isinstance(adapter, TorchAdapter) and isinstance(w_dtype, torch.dtype) and text_batch is None and floats:
        inputs = inputs.to(w_dtype)  # float64 or uint8 data into a float32 model, as explain and evaluate read them
    with adapter.guard("eval"):
        scorer = scoring_adapter(adapter, "prob")  # a classifier's predict_proba read as its probabilities
        raw = MaskingEngine(scorer, batch_size=resolve_batch_size(batch_size, adapter)).forward(inputs.to(dev))
    if raw.shape[1] == 1:
        model_name = type(getattr(adapter, "model", adapter)).__name__
        raise InvalidParameterError(
            f"find_mistakes compares each row's predicted class with its true one, but {model_name} gives one score "
            "per row (a regressor, a binary classifier's single logit or decision_function), so it names no "
            "predicted class; use a classifier with one output per class (a scikit-learn classifier with "
            "predict_proba: SVC(probability=True), CalibratedClassifierCV(LinearSVC()); a torch model of two logits)."
        )
    p = apply_score_space(raw.double(), "prob").cpu()
    if int(labels.max()) >= p.shape[1] or int(labels.min()) < 0:
        raise InvalidInputError(
            f"labels must lie in [0, {p.shape[1] - 1}] (the model's classes); got "
            f"[{int(labels.min())}, {int(labels.max())}]."
        )
    pred = p.argmax(1)
    wrong = (pred != labels.cpu()).nonzero().flatten()
    report = DebugReport(
        n_inputs=int(inputs.shape[0]),
        n_wrong=int(wrong.numel()),
        mistakes=[],
        method=method,
        params=dict(params),
        class_names=model_class_names(adapter),
    )
    if max_mistakes is not None:
        wrong = wrong[:max_mistakes]
    if wrong.numel() == 0:
        return report
    x = inputs[wrong].to(dev)
    if isinstance(regions, torch.Tensor) and text_batch is None:
        if inputs.ndim == 3 and not is_signal(adapter, inputs[:1]):  # sequences (N, T, D): ids per time step
            regions = _sequence_regions(regions, inputs, wrong)
        else:
            regions = _mistakes_regions(regions, inputs, wrong)
    if isinstance(fill, torch.Tensor) and fill.ndim == inputs.ndim and fill.shape[0] == inputs.shape[0] > 1:
        fill = fill[wrong.to(fill.device)]  # one fill row per input: the mistakes' rows, as regions are cut
    if isinstance(fill, str) and text_batch is None:
        # a fill name resolved once, as the insertion steps resolve it (RISE's blur kernel, the metric's seeded
        # uniform draws, "min"): the explanation hides a region exactly as the steps that rank it do
        fill = METRICS.get("highest_confidence")(fill=fill).fill_values(x, adapter)
    model = adapter  # the explainer and the metric reuse it
    y = labels.cpu()[wrong].to(dev)
    opts = dict(params)
    if method == "lima":
        opts.setdefault("search", "predictive")
        if regions is not None or lima_kind is not None:
            opts.setdefault("regions", regions if regions is not None else lima_kind)
    if text_batch is not None:  # words as features / regions, a word removed becomes [MASK] (or is dropped)
        from whybox.models.text import text_defaults

        rows = wrong.to(inputs.device)
        for name, v in text_defaults(method, text_batch).items():
            opts.setdefault(name, v[rows] if isinstance(v, torch.Tensor) and v.shape[:1] == inputs.shape[:1] else v)
        if "fill" in opts:  # the explanation removes a word as the insertion steps do
            opts["fill"] = fill
        if regions is None:
            regions = text_batch.word_features()[rows]
    cls: type = EXPLAINERS.get(method)
    takes_baseline = "baseline" in _keyword_options(cls)
    if issubclass(cls, PerturbationExplainer):
        if not background:  # background rows replace the explainer's fill (it takes one or the other)
            opts.setdefault("fill", fill)
    elif takes_baseline and text_batch is None and "baseline" not in opts:
        # Integrated Gradients: its baseline is the hidden state the insertion steps start from (a fill name
        # resolved as they resolve it; a number, a tensor, a reference row read as the metric reads it)
        opts["baseline"] = fill
    e = explain(model, x, method, target=y, batch_size=batch_size, **opts)
    report.explanation = e
    signal = is_signal(adapter, x)
    if regions is None:
        regions = e.meta.get("regions")
    if regions is None:
        from whybox.explainers.lima import regions as R

        packing = getattr(adapter, "packing", None)
        if x.ndim == 4:
            built = R.grid(x, n_regions=49)
        elif x.ndim == 3:  # 1-D signals (B, C, L) and sequences (B, T, D): windows along time, as LIMA's default
            built = R.segments(x, n_regions=min(49, x.shape[2 if signal else 1]), time_axis=2 if signal else 1)
        elif packing is not None and packing.has_image:  # several inputs: the image in squares, others by value
            built = R.columns(x, groups=packing.region_groups(opts.get("patch")).to(x.device))  # as the explainers'
        else:  # tables: columns
            built = R.columns(x)
        regions = built.labels
    regions = regions.to(dev)
    packed_text = text_batch is not None and x.ndim == 3  # a HF text adapter's (B, T, D + 1): word ids per token
    sequence = x.ndim == 3 and not signal and not packed_text  # (B, T, D): ids per time step (B, T, 1)
    if packed_text:
        regions = regions.reshape(x.shape[0], x.shape[1])
    elif sequence:
        t = x.shape[1]  # ids per time step: (T,), (B, T), (B, 1, T) or (B, T, 1); else per element (B, T, D)
        per_step = regions.ndim <= 2 or (regions.ndim == 3 and (regions.shape[-1] == 1 or regions.shape[1:] == (1, t)))
        regions = regions.reshape(-1, x.shape[1], 1 if per_step else x.shape[2]).expand(x.shape[0], -1, -1)
    elif x.ndim == 4 and regions.ndim == 2:
        regions = regions.expand(x.shape[0], *regions.shape)
    elif x.ndim == 2 and regions.ndim == 1:
        regions = regions.expand(x.shape[0], -1)
    if signal:  # a signal's windows: (B, 1, L), shared by the channels
        regions = regions.reshape(-1, 1, x.shape[-1]).expand(x.shape[0], 1, x.shape[-1])
    elif not packed_text and not sequence:
        regions = regions.reshape(x.shape[0], *regions.shape[-(2 if x.ndim == 4 else 1) :])
    # images: the label map as is; rows: the column ids as feature groups (the metric's own form for non-images)
    ids = regions.long().unsqueeze(-1) if packed_text else regions.long()  # a text's word ids as (B, T, 1)
    metric_regions: Any = regions if x.ndim == 4 else FeatureGroups(ids, int(regions.max()) + 1, "regions")
    hc = evaluate(model, x, e, "highest_confidence", target=y, regions=metric_regions, fill=fill, batch_size=batch_size)
    curves_y = hc.curves["y"]  # point i: the i best-ranked regions shown
    # images: the channel-summed map; signals: likewise over time (B, 1, L); rows: the attributions; texts: per
    # token (a word's value on each of its tokens, or a gradient summed over the embedding dimensions)
    a = e.attributions
    if packed_text:
        maps = a[..., 0] if a.shape[-1] == 1 else a[..., :-1].sum(-1)
    else:
        maps = e.to_map() if x.ndim == 4 else a.sum(1, keepdim=True) if signal else a
    spans = text_batch.word_spans() if packed_text else None
    words_of = text_batch.words if text_batch is not None and not packed_text else None  # a black box's words
    for k, idx in enumerate(wrong.tolist()):
        reg = regions[k].cpu()
        order = hc.meta["region_order"][k].tolist()  # the regions in the order the insertion curve added them
        ys = curves_y[k]
        best = int(torch.nan_to_num(ys, nan=-1.0).argmax())  # points: 0 = nothing shown, i = i regions shown
        # after the best subset, each region whose addition lowers the true class, the largest drop first
        drops = [(float(ys[j + 1] - ys[j]), order[j]) for j in range(best, min(len(order), ys.shape[0] - 1))]
        ranked = sorted((d, c) for d, c in drops if d < -CULPRIT_DROP)
        culprits = [c for _, c in ranked]
        if spans is not None:
            named = [w for w, _ in spans[idx]]
        elif words_of is not None:
            named = list(words_of[idx])
        else:
            named = []
        culprit_words = [named[c] for c in culprits if 0 <= c < len(named)]
        mask = torch.zeros(reg.shape, dtype=torch.bool)
        for c in culprits:
            mask |= reg == c
        report.mistakes.append(
            Mistake(
                index=idx,
                label=int(labels[idx]),
                predicted=int(pred[idx]),
                p_label=float(p[idx, labels[idx]]),
                p_predicted=float(p[idx, pred[idx]]),
                hc=[float(v) for v in hc.meta["hc"][k]],
                hc_area=[float(v) for v in hc.meta["hc_area"][k]],
                insertion=float(hc.meta["auc"][k]),
                culprits=culprits,
                drops=[d for d, _ in ranked],
                culprit_mask=mask,
                regions=reg,
                attribution=maps[k].detach().cpu(),
                culprit_words=culprit_words,
            )
        )
    return report


def _sequence_regions(regions: torch.Tensor, inputs: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    """A label map of sequences ``(N, T, D)`` as the mistakes' maps ``(B, T, 1)`` (ids per time step) or
    ``(B, T, D)`` (per element), what LIMA and the curve take: one map for all, ``(T,)``, ``(T, 1)``, ``(1, T)``,
    ``(1, T, 1)``, ``(T, D)`` or ``(1, T, D)``, repeated; one per input, ``(N, T)``, ``(N, T, 1)``, ``(N, 1, T)`` or
    ``(N, T, D)``, cut to the mistakes' rows."""
    n, t, d = inputs.shape
    shape = tuple(regions.shape)
    if shape == (t, d) and n == t and d == t and t > 1:  # one map per element, or one per input per step?
        raise InvalidParameterError(
            f"regions of shape {shape} on {n} sequences of {t} steps of {d} features can be one map per element "
            f"for all, or one map per input of ids per step: give ({1}, {t}, {d}) for the first, ({n}, {t}, 1) for "
            "the second."
        )
    if shape in ((t,), (t, 1), (1, t), (1, t, 1), (1, 1, t)):
        one = regions.reshape(1, t, 1)
    elif shape in ((t, d), (1, t, d)):
        one = regions.reshape(1, t, d)
    elif shape in ((n, t), (n, t, 1), (n, 1, t), (n, t, d)):
        per = regions.reshape(n, t, d if shape == (n, t, d) and d != 1 else 1)
        return per[wrong.to(per.device)]
    else:
        raise InvalidParameterError(
            f"regions of shape {shape} do not fit sequences {tuple(inputs.shape)}: give ids per time step, ({t},), "
            f"({t}, 1) or one map per input ({n}, {t}) / ({n}, {t}, 1), or per element ({t}, {d}) / ({n}, {t}, {d})."
        )
    return one.expand(int(wrong.numel()), -1, -1)


def _mistakes_regions(regions: torch.Tensor, inputs: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    """A label map given for every input ``(N, H, W)`` / ``(N, 1, H, W)`` (images), ``(N, L)`` / ``(N, 1, L)``
    (1-D signals) or ``(N, F)`` (rows) cut to the mistakes' rows (``(B, 1, H, W)`` for images, ``(B, 1, L)`` for
    signals); one map for all, ``(H, W)`` or ``(1, H, W)`` (``(L,)``, ``(F,)`` or ``(1, F)``), as one map."""
    if inputs.ndim == 3 and regions.ndim == 3 and regions.shape[-1] == 1 and regions.shape[1] == inputs.shape[1] > 1:
        regions = regions[..., 0]  # (N, T, 1) of sequences (B, T, D): ids per time step
    elif inputs.ndim in (3, 4) and regions.ndim == inputs.ndim and regions.shape[1] == 1:
        regions = regions[:, 0]  # (N, 1, H, W) images, (N, 1, L) signals
    per_input = inputs.ndim in (2, 3, 4) and regions.ndim == (3 if inputs.ndim == 4 else 2)  # (N, H, W), (N, L|F)
    if not per_input:
        tail = tuple(inputs.shape[-2:]) if inputs.ndim == 4 else tuple(inputs.shape[-1:])
        one = tuple(regions.shape[regions.ndim - len(tail) :]) == tail and all(
            d == 1 for d in regions.shape[: -len(tail)]
        )
        if inputs.ndim in (2, 3, 4) and not one:  # checked here, against the user's inputs (not the mistakes' rows)
            what = (
                "(H, W) or (1, H, W)"
                if inputs.ndim == 4
                else "(L,) or (1, L)"
                if inputs.ndim == 3
                else "(F,) or (1, F)"
            )
            per = f"({inputs.shape[0]}, {', '.join(map(str, tail))})"
            raise InvalidParameterError(
                f"regions of shape {tuple(regions.shape)} do not fit inputs {tuple(inputs.shape)}: give one label map "
                f"for all, {what} = {tail if len(tail) > 1 else tail[0]}, or one per input, {per}."
            )
        return regions
    tail = tuple(inputs.shape[-2:]) if inputs.ndim == 4 else tuple(inputs.shape[-1:])
    if tuple(regions.shape[1:]) != tail:  # one map per input, each of another size than the inputs'
        raise InvalidParameterError(
            f"regions of shape {tuple(regions.shape)} do not fit inputs {tuple(inputs.shape)}: each input's label "
            f"map must be {tail if len(tail) > 1 else tail[0]}, one id per "
            + (
                "pixel (shared by the channels)."
                if inputs.ndim == 4
                else "time step."
                if inputs.ndim == 3
                else "column."
            )
        )
    if regions.shape[0] == inputs.shape[0]:
        cut = regions[wrong.to(regions.device)]
        return cut.unsqueeze(1) if inputs.ndim in (3, 4) else cut  # images (B, 1, H, W), signals (B, 1, L)
    if regions.shape[0] == 1:
        return regions[0]
    raise InvalidParameterError(
        f"regions of shape {tuple(regions.shape)} hold {regions.shape[0]} label maps for {inputs.shape[0]} inputs; "
        "give one map for every input (in their order) or one map for all."
    )


def _check_fill(fill: torch.Tensor, inputs: torch.Tensor) -> None:
    """A fill tensor must broadcast to one input (a value, a row, a reference image) or hold one row per input, the
    shape of ``inputs`` ``(N, *S)``; said of the user's inputs, not of the mistakes' rows it is cut to."""
    try:
        fits = torch.broadcast_shapes(fill.shape, inputs.shape) == inputs.shape
    except RuntimeError:
        fits = False
    if not fits:
        one = tuple(inputs.shape[1:])
        hint = ""
        if inputs.ndim >= 3 and fill.numel() == inputs.shape[1] > 1:  # one value per channel, written flat: (C,)
            view = ", ".join(map(str, (inputs.shape[1],) + (1,) * (inputs.ndim - 2)))
            hint = f" For one value per channel give shape ({view}), e.g. torch.tensor(values).view({view})."
        raise InvalidParameterError(
            f"fill of shape {tuple(fill.shape)} does not fit the inputs {tuple(inputs.shape)}: give values that "
            f"broadcast to one input {one} (a reference row, a value per channel) or one row per input, "
            f"{tuple(inputs.shape)}."
            f"{hint}"
        )
