"""Black-box text models (a function of strings) explained over words with the perturbation methods.

A model that only reads text (VADER, a web service, a rule system) has no embeddings to differentiate. Its inputs
are then *word-presence rows*: ``(B, W + 1)`` floats, 1 where word ``w`` of text ``b`` is kept, 0 where it is
removed, and a last column holding the row's text index (it never changes: :meth:`BlackBoxText.fill` keeps it).
``scores`` rebuilds each perturbed text from its kept words (joined by single spaces) and calls the model. Every
perturbation method works through the masking engine with ``features=BlackBoxText.features`` (one feature per
word; the padding columns of shorter texts and the index column share one never-changing feature, so they get
exactly 0 and padding changes nothing). The index column is a control, not a feature (``control_channels = 1``):
every method's attributions hold exactly 0 there, also with a fill that rewrites it (a zero there reads text 0).

:func:`vader` wraps VADER (``vaderSentiment``, offline): scores ``(negative, positive)`` = ``(-compound,
+compound)``, so the explained class is the predicted polarity.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from whybox.errors import InvalidInputError, InvalidParameterError, MissingExtraError, ModelOutputError
from whybox.models.adapter import ModelAdapter
from whybox.models.targets import distribution_rows

__all__ = ["BlackBoxText", "BlackBoxTextAdapter", "vader"]

_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class BlackBoxText:
    """Texts split into words, and the presence rows a :class:`BlackBoxTextAdapter` scores.

    Shapes
    ------
    inputs: ``(B, W + 1)`` (W = the longest text's word count); features: ``(B, W + 1)`` int64.
    """

    texts: list[str]
    words: list[list[str]]
    inputs: torch.Tensor

    @property
    def features(self) -> torch.Tensor:
        """Feature ids ``(B, W + 1)``: word ``w`` is feature ``w``; padding and the index column share feature W."""
        b, w1 = self.inputs.shape
        w = w1 - 1
        ids = torch.arange(w1).expand(b, w1).clone()
        for r, words in enumerate(self.words):
            ids[r, len(words) :] = w
        return ids

    def word_spans(self) -> list[list[tuple[str, list[int]]]]:
        """Per row, its words in reading order, each with its column (the form
        :meth:`~whybox.models.text.TextBatch.word_spans` gives a text's words and their token positions)."""
        return [[(w, [i]) for i, w in enumerate(words)] for words in self.words]

    def word_features(self) -> torch.Tensor:
        """The words as features, :attr:`features` (the name :class:`~whybox.models.text.TextBatch` uses)."""
        return self.features

    def fill(self) -> torch.Tensor:
        """The fill: every word removed (0), the index column kept."""
        return _removed(self.inputs)

    def word_values(self, explanation: Any) -> list[list[tuple[str, float]]]:
        """``(word, value)`` pairs per text from an explanation (or ``(B, W + 1)`` tensor) of these rows."""
        a = explanation.attributions if hasattr(explanation, "attributions") else explanation
        a = torch.as_tensor(a).detach().to("cpu", torch.float64)
        if a.shape != self.inputs.shape:
            raise InvalidInputError(f"attributions must have shape {tuple(self.inputs.shape)}; got {tuple(a.shape)}.")
        return [[(w, float(a[r, i])) for i, w in enumerate(words)] for r, words in enumerate(self.words)]


def _removed(x: torch.Tensor) -> torch.Tensor:
    """Presence rows with every word removed (0) and the index column kept."""
    out = torch.zeros_like(x)
    out[:, -1] = x[:, -1]
    return out


class BlackBoxTextModel(nn.Module):
    """A parameter-free stand-in so the adapter's guard has a module to keep (the model is a plain function)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - never called
        return x


class BlackBoxTextAdapter(ModelAdapter):
    """A function ``texts -> scores (B, K)`` explained over words (not differentiable: perturbation methods only).

    Parameters
    ----------
    score_fn
        Maps a list of strings to a ``(B, K)`` array or tensor of class scores (probabilities or any scores).
    labels
        Optional class names (``target="positive"``).
    probabilities
        Whether ``score_fn`` returns class probabilities (each row a distribution), which ``score="prob"`` (LIME's
        and the metrics' default) then reads as they are, as a scikit-learn ``predict_proba``, not as their softmax
        (0.8 would read as 0.65); ``None`` (default): decided from the first scored batch (every row non-negative,
        summing to 1) and kept.

    Explain with :func:`whybox.explain_text` (words as features, every word removed as the fill) and score with
    :func:`whybox.evaluate` on the texts; the adapter keeps each distinct text's words once, for the presence rows
    to refer to.
    """

    differentiable = False
    #: the text-index column is a control, not a feature: every method's attributions are exactly 0 there
    control_channels: ClassVar[int] = 1

    def __init__(
        self,
        score_fn: Callable[[list[str]], Any],
        *,
        labels: Sequence[str] | None = None,
        probabilities: bool | None = None,
    ) -> None:
        if not callable(score_fn):
            raise InvalidParameterError(
                f"score_fn must be callable (texts -> (B, K) scores); got {type(score_fn).__name__}."
            )
        if probabilities is not None and not isinstance(probabilities, bool):
            raise InvalidParameterError(f"probabilities must be True, False or None; got {probabilities!r}.")
        self.score_fn = score_fn
        self.probabilities = probabilities
        self._read_as: bool | None = probabilities  # the decision taken (probabilities None: at the first batch)
        self._eps = 0.0  # the machine epsilon of score_fn's last output (float16 probabilities sum to 1 within it)
        self.labels = list(labels) if labels is not None else None
        self.output_names = self.labels  # target="positive"
        self.model = BlackBoxTextModel()
        self._texts: list[list[str]] = []
        self._index: dict[tuple[str, ...], int] = {}  # a text's words -> its row index (each text kept once)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float64

    def guard(self, mode: str = "eval") -> Any:
        from whybox.models._guard import preserved

        return preserved(self.model, mode)

    def named_modules(self) -> Any:
        return iter(())

    def encode(self, texts: str | Sequence[str]) -> BlackBoxText:
        """Split ``texts`` into words (runs of non-space characters) and build their presence rows."""
        return self._encode(texts)

    def _encode(self, texts: str | Sequence[str], length: int | None = None) -> BlackBoxText:
        """:meth:`encode`, with rows of ``length`` columns (``W + 1``) when that is more than the longest text's word
        count and its index column (these rows in a batch with a longer text: a slice of its explanation fits them)."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise InvalidInputError("texts must be a non-empty string or a list of non-empty strings; got none.")
        bad = next((i for i, t in enumerate(texts) if not (isinstance(t, str) and t.strip())), None)
        if bad is not None:
            raise InvalidInputError(
                f"texts must be a non-empty string or a list of non-empty strings; texts[{bad}] is {texts[bad]!r} "
                "(a black box's words are its non-space runs: such a text has none to explain; drop it)."
            )
        words = [_WORD.findall(t) for t in texts]
        w = max(max(len(ws) for ws in words), (length or 0) - 1)
        x = torch.zeros(len(texts), w + 1, dtype=torch.float64)
        for r, ws in enumerate(words):
            key = tuple(ws)
            if key not in self._index:
                self._index[key] = len(self._texts)
                self._texts.append(ws)
            x[r, : len(ws)] = 1.0
            x[r, -1] = float(self._index[key])
        return BlackBoxText(texts, words, x)

    def probability_scores(self) -> ModelAdapter:
        """This adapter seen through the log of its probabilities when ``score_fn`` returns them (a softmax then
        gives them back), else as it is: what ``score="prob"`` and ``"log_prob"`` read."""
        return _TextProbabilities(self)

    def packed_fill(self, x: torch.Tensor, kind: str | None = None) -> torch.Tensor:
        """The fill of presence rows ``x`` (every word removed, the index column kept): the metrics' default, so a
        fill never rewrites the index column (a zero there would read another text)."""
        if x.ndim != 2 or x.shape[1] < 2:
            raise InvalidInputError(f"presence rows must be (B, W + 1); got shape {tuple(x.shape)}.")
        return _removed(x)

    def row_words(self, x: torch.Tensor) -> list[list[str]]:
        """The words of each presence row's text (its index column), whatever is kept: what the rows stand for, so
        a run's data fingerprint sees other texts of the same lengths (their presence rows are equal)."""
        return [
            list(self._texts[i]) if 0 <= (i := round(float(row[-1]))) < len(self._texts) else []
            for row in x.detach().to("cpu", torch.float64)
        ]

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] < 2:
            raise InvalidInputError(
                f"a black-box text adapter takes presence rows (B, W + 1) from adapter.encode(texts); got {tuple(x.shape)}."
            )
        texts = []
        for row in x.detach().to("cpu", torch.float64):
            idx = round(float(row[-1]))
            if not 0 <= idx < len(self._texts):
                raise InvalidInputError(
                    f"row index {idx} is not a text this adapter encoded; use adapter.encode(texts)."
                )
            words = self._texts[idx]
            texts.append(" ".join(w for w, keep in zip(words, row[: len(words)].tolist(), strict=True) if keep > 0.5))
        raw = self.score_fn(texts)
        kind = getattr(raw, "dtype", None)  # half precision or bfloat16 probabilities sum to 1 only within their eps
        self._eps = float(torch.finfo(kind).eps) if isinstance(kind, torch.dtype) and kind.is_floating_point else 0.0
        if hasattr(kind, "kind") and getattr(kind, "kind", "") == "f":  # a NumPy float dtype
            import numpy as np

            self._eps = float(np.finfo(kind).eps)
        out = torch.as_tensor(raw, dtype=torch.float64)
        if out.ndim == 1:
            out = out.unsqueeze(1)
        if out.shape[0] != len(texts) or out.ndim != 2:
            raise ModelOutputError(
                f"score_fn must return (B, K) scores for {len(texts)} texts; got {tuple(out.shape)}."
            )
        return out


class _TextProbabilities(ModelAdapter):
    """A black-box text model read for ``score="prob"``/``"log_prob"``: the log of its probabilities where its
    ``score_fn`` returns probabilities (decided once, see ``BlackBoxTextAdapter(probabilities=)``), else its scores."""

    def __init__(self, inner: BlackBoxTextAdapter) -> None:
        self.inner = inner
        self.model = inner.model

    @property
    def dtype(self) -> torch.dtype:
        return self.inner.dtype

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        s = self.inner.scores(x)
        if s.shape[1] < 2:  # one score: no distribution (a softmax over it is 1 and is refused elsewhere)
            return s
        dist = bool(distribution_rows(s, self.inner._eps).all())  # within 3-decimal, float16 or bfloat16 rounding
        if self.inner._read_as is None:
            self.inner._read_as = dist
        if not self.inner._read_as:
            return s
        if not dist:
            before = (
                "BlackBoxTextAdapter(probabilities=True) says score_fn returns probabilities, but it returned rows "
                "that are not"
                if self.inner.probabilities
                else "score_fn returned probabilities before (rows summing to 1) and now rows that are not"
            )
            raise ModelOutputError(
                f"{before} "
                f"(e.g. {[round(v, 4) for v in s[0].tolist()]}); pass BlackBoxTextAdapter(..., probabilities=False) "
                "to read its outputs as scores, or return probabilities for every text."
            )
        return s.clamp_min(1e-300).log()


def vader() -> BlackBoxTextAdapter:
    """VADER (Hutto & Gilbert 2014) as a black-box text model: scores ``(negative, positive)`` =
    ``(-compound, +compound)``.

    Raises
    ------
    MissingExtraError
        If ``vaderSentiment`` is not installed (``pip install 'whybox[demo]'``).
    """
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError as exc:
        raise MissingExtraError(f"VADER needs vaderSentiment: pip install 'whybox[demo]' ({exc}).") from exc
    analyzer = SentimentIntensityAnalyzer()

    def score(texts: list[str]) -> torch.Tensor:
        c = torch.tensor([analyzer.polarity_scores(t)["compound"] for t in texts], dtype=torch.float64)
        return torch.stack([-c, c], 1)

    return BlackBoxTextAdapter(score, labels=["negative", "positive"])
