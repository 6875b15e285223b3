"""The LIMA set function F(S) and the subset scorer every search calls (LIMA.md, Objective).

For target class c, ``merge(S)`` is the input with only the regions in S shown (the rest replaced by the
fill) and ``comp(S)`` the input with S removed. With p_c the softmax probability of c (``score="prob"``):

- consistency    s_cons(S)  = p_c(merge(S))
- collaboration  s_colla(S) = 1 - p_c(comp(S))
- confidence     s_conf(S)  = 1 - H(p(merge(S))) / log K        (normalised entropy; 1 when K = 1)
- effectiveness  s_eff(S)   = sum_{i in S} min_{j in S, j != i} arccos(cos(e_i, e_j)) / pi   (0 for |S| <= 1)

  with e_i the embedding of region i shown alone (``merge({i})``): :meth:`EmbeddingAdapter.embed` for
  embedding adapters, the class-score vector for classifiers; N extra forward passes, computed once.

F(S) = lambda_cons s_cons + lambda_colla s_colla + lambda_conf s_conf + lambda_eff s_eff.

Default weights are LiMA's for classifiers: cons 20, colla 5, conf 0.01, eff 0 (the paper's alternative is
eff 0.01; s_eff grows with |S|, so it needs a tiny weight, and costs N extra passes). The ICLR paper used
all weights 1 on CUB. For an embedding adapter the "class scores" are its similarities to the references
(``scale * cos``): give it ``scale=100`` to get the spec's softmax over 100 cos(image, class texts); with a
single reference (K = 1) p_c is the similarity itself (``score="logit"``, which the default ``None`` becomes
there: a softmax over one score is always 1).

F is argued to be submodular in the paper; for real networks that is an assumption, so no approximation
bound is promised here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from whybox.errors import InvalidParameterError
from whybox.masking.engine import MaskingEngine
from whybox.masking.features import FeatureGroups
from whybox.models.adapter import EmbeddingAdapter, ModelAdapter
from whybox.models.targets import Target, apply_score_space

__all__ = [
    "EngineScorer",
    "Scored",
    "SubsetScorer",
    "Weights",
    "confidence",
    "effectiveness",
    "region_adjacency",
    "region_angles",
]

F64 = torch.float64


@dataclass(frozen=True)
class Weights:
    """The four named weights of F (never positional: the reference code's order differs between places)."""

    cons: float = 20.0
    colla: float = 5.0
    conf: float = 0.01
    eff: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise InvalidParameterError(f"lambda_{f.name} must be a finite number >= 0; got {v!r}.")
        if self.cons == self.colla == self.conf == self.eff == 0:
            raise InvalidParameterError(
                "lambda_cons, lambda_colla, lambda_conf and lambda_eff are all 0, so every subset scores the same; "
                "give at least one a positive weight (defaults: 20, 5, 0.01, 0)."
            )

    def value(self, kept: torch.Tensor, removed: torch.Tensor, conf: torch.Tensor, eff: torch.Tensor) -> torch.Tensor:
        """F from the raw readings (float64): consistency = kept, collaboration = 1 - removed."""
        return self.cons * kept + self.colla * (1.0 - removed) + self.conf * conf + self.eff * eff


@dataclass(frozen=True)
class Scored:
    """Readings of K scored subsets of one image, each ``(K,)`` float64 on the CPU.

    ``kept`` = p_c(merge(S)), ``removed`` = p_c(comp(S)), ``confidence`` = s_conf(S),
    ``effectiveness`` = s_eff(S), ``value`` = F(S).
    """

    kept: torch.Tensor
    removed: torch.Tensor
    confidence: torch.Tensor
    effectiveness: torch.Tensor
    value: torch.Tensor

    def __len__(self) -> int:
        return int(self.value.shape[0])

    def __getitem__(self, idx: Any) -> Scored:
        """The readings of the subsets ``idx`` (an int keeps a length-1 batch)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1) if idx != -1 else slice(-1, None)
        return Scored(*(getattr(self, f.name)[idx] for f in fields(self)))

    @staticmethod
    def cat(parts: Sequence[Scored]) -> Scored:
        return Scored(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(Scored)))


# ---------------------------------------------------------------------------------------------- terms
def confidence(raw: torch.Tensor) -> torch.Tensor:
    """s_conf = 1 - H(softmax(raw)) / log K per row of raw scores ``(n, K)``; 1 when K = 1. float64."""
    k = raw.shape[-1]
    if k == 1:
        return torch.ones(raw.shape[0], dtype=F64, device=raw.device)
    p = raw.to(F64).softmax(-1)
    h = -torch.special.xlogy(p, p).sum(-1)
    return 1.0 - h / math.log(k)


def region_angles(emb: torch.Tensor) -> torch.Tensor:
    """``(N, N)`` float64 arccos(cos(e_i, e_j)) / pi of region embeddings ``(N, D)`` (0 on the diagonal)."""
    e = torch.nn.functional.normalize(emb.to(F64), dim=1)
    a = torch.arccos((e @ e.T).clamp(-1.0, 1.0)) / math.pi
    a.fill_diagonal_(0.0)
    return a


def effectiveness(subsets: torch.Tensor, angles: torch.Tensor, *, chunk: int = 4_000_000) -> torch.Tensor:
    """s_eff of every subset ``(K, N)`` bool given the region angles ``(N, N)``; ``(K,)`` float64.

    Each member i contributes its smallest angle to another member; a subset of one region (or none) gets 0.
    """
    k, n = subsets.shape
    out = torch.zeros(k, dtype=F64)
    if n < 2 or k == 0:
        return out
    s = subsets.to("cpu")
    a = angles.to("cpu", F64)
    eye = torch.eye(n, dtype=torch.bool)
    step = max(1, chunk // (n * n))
    for lo in range(0, k, step):
        sc = s[lo : lo + step]
        excluded = ~sc[:, None, :] | eye  # (k', N, N): j outside S or j == i
        d = a.expand(sc.shape[0], n, n).masked_fill(excluded, math.inf).amin(-1)  # (k', N)
        d = torch.where(torch.isinf(d), torch.zeros_like(d), d)
        out[lo : lo + step] = (d * sc).sum(1)
    return out


def region_adjacency(labels: torch.Tensor, connectivity: int = 8) -> dict[int, list[int]]:
    """Regions that touch (share an edge, or with ``connectivity=8`` also a corner), from a label map whose last
    two dimensions are image rows and columns (``(1, H, W)`` or ``(H, W)``); ``{}`` for anything with fewer than
    two spatial dimensions (table columns)."""
    g = labels.squeeze(0) if labels.ndim == 3 and labels.shape[0] == 1 else labels
    if g.ndim != 2 or min(g.shape) < 2:
        return {}
    g = g.to("cpu", torch.int64)
    links = [
        torch.stack([g[:, :-1].reshape(-1), g[:, 1:].reshape(-1)], 1),
        torch.stack([g[:-1].reshape(-1), g[1:].reshape(-1)], 1),
    ]
    if connectivity == 8:
        links.append(torch.stack([g[:-1, :-1].reshape(-1), g[1:, 1:].reshape(-1)], 1))
        links.append(torch.stack([g[:-1, 1:].reshape(-1), g[1:, :-1].reshape(-1)], 1))
    pairs = torch.cat(links)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    pairs = torch.unique(torch.cat([pairs, pairs.flip(1)]), dim=0)
    adj: dict[int, list[int]] = {}
    for a, b in pairs.tolist():
        adj.setdefault(a, []).append(b)
    return adj


# ---------------------------------------------------------------------------------------------- scorers
class SubsetScorer:
    """What a search sees: B images with ``n_regions[b]`` regions each, scored subset by subset.

    Attributes
    ----------
    n_regions
        N_b per image.
    empty, full
        :class:`Scored` (length 1) of S = {} and S = all regions of each image; known before any search
        (``merge({}) = comp(all)`` = the all-filled input, ``merge(all) = comp({})`` = the input).

    weights
        The four weights of F (searches that predict F from its readings need them).
    probabilities
        True when ``kept`` and ``removed`` are probabilities (``score="prob"`` or ``"sigmoid"``), False for raw scores.

    A search calls :meth:`score` with one ``(K_b, N_b)`` bool tensor (or ``None``) per image and gets one
    :class:`Scored` (or ``None``) back per image; all images go through the model together. Scoring one subset
    costs 2 forward passes (merge and comp).
    """

    n_regions: list[int]
    empty: list[Scored]
    full: list[Scored]
    weights: Weights = Weights()
    probabilities: bool = True

    def score(self, subsets: Sequence[torch.Tensor | None]) -> list[Scored | None]:  # pragma: no cover
        raise NotImplementedError

    def read(self, subsets: Sequence[torch.Tensor | None]) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """One side at a time: ``(p_c, s_conf)`` of ``merge(T)`` for each row T of ``subsets[b]`` ``(K_b, N_b)``
        bool, float64 ``(K_b,)`` each on the CPU; 1 forward pass per row (``comp(S)`` is ``merge(~S)``)."""
        raise NotImplementedError  # pragma: no cover

    def effectiveness_of(self, image: int, subsets: torch.Tensor) -> torch.Tensor:
        """s_eff of ``subsets`` ``(K, N_b)`` of image ``image`` without a model pass (zeros when it has no weight)."""
        return torch.zeros(subsets.shape[0], dtype=F64)

    def neighbours(self, image: int) -> dict[int, list[int]]:
        """Regions of image ``image`` that touch each region (images; empty where regions have no layout)."""
        return {}


class _EmbeddingView(ModelAdapter):
    """The adapter's embeddings (embedding adapters) or class scores (classifiers) as its "scores"."""

    def __init__(self, adapter: ModelAdapter) -> None:
        self.inner = adapter
        self.model = adapter.model
        self.kind = adapter.kind

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.inner, EmbeddingAdapter):
            return self.inner.embed(x)
        return self.inner.scores(x)

    @property
    def device(self) -> torch.device:
        return self.inner.device

    @property
    def dtype(self) -> torch.dtype:
        return self.inner.dtype


class EngineScorer(SubsetScorer):
    """The LIMA objective of real inputs, every subset scored through the masking engine in chunks.

    Parameters
    ----------
    engine
        The call's masking engine (its ``batch_size`` bounds memory; its ``n_forward`` counts every pass).
    x, fills
        Inputs ``(B, *S)`` and their fill values (what a removed region becomes), same shape.
    labels, n_regions
        The regions: ``(B, *G)`` label map, ids ``0..n_regions[b]-1`` in row b.
    target
        The resolved target.
    weights
        The four weights.
    score
        ``"prob"`` (p_c = softmax probability of c) or ``"logit"`` (p_c = the raw score, for one-output models).
    raw_x, raw_fill
        The model's raw scores ``(B, K)`` of the inputs and of the all-filled inputs (the reference passes).

    With ``weights.eff > 0`` the region embeddings cost ``sum_b N_b`` passes here, once.
    """

    def __init__(
        self,
        engine: MaskingEngine,
        x: torch.Tensor,
        fills: torch.Tensor,
        labels: torch.Tensor,
        n_regions: list[int],
        target: Target,
        weights: Weights,
        score: str,
        raw_x: torch.Tensor,
        raw_fill: torch.Tensor,
    ) -> None:
        self.engine = engine
        self.x = x
        self.fills = fills
        self.n_regions = list(n_regions)
        self.groups = FeatureGroups(labels, max(self.n_regions), "lima")
        self.target = target
        self.weights = weights
        self.space = score
        self.probabilities = score in ("prob", "sigmoid")  # scores in (0, 1): predicted on the logit scale
        self._adjacency: list[dict[int, list[int]]] | None = None
        self.angles: list[torch.Tensor] | None = self._angles() if weights.eff > 0 else None
        rows = torch.arange(x.shape[0], device=raw_x.device)
        px = target.select(apply_score_space(raw_x, score), rows).to("cpu", F64)
        pf = target.select(apply_score_space(raw_fill, score), rows).to("cpu", F64)
        cx, cf = confidence(raw_x).cpu(), confidence(raw_fill).cpu()
        self.empty, self.full = [], []
        for b, n in enumerate(self.n_regions):
            zero = torch.zeros(1, dtype=F64)
            self.empty.append(self._scored(pf[b : b + 1], px[b : b + 1], cf[b : b + 1], zero))
            eff = zero if self.angles is None else effectiveness(torch.ones(1, n, dtype=torch.bool), self.angles[b])
            self.full.append(self._scored(px[b : b + 1], pf[b : b + 1], cx[b : b + 1], eff))

    def _scored(self, kept: torch.Tensor, removed: torch.Tensor, conf: torch.Tensor, eff: torch.Tensor) -> Scored:
        return Scored(kept, removed, conf, eff, self.weights.value(kept, removed, conf, eff))

    def _angles(self) -> list[torch.Tensor]:
        """Region embeddings e_i = embed(merge({i})): one engine call over all images (N_b passes each)."""
        b, nmax = self.x.shape[0], max(self.n_regions)
        eye = torch.eye(nmax, dtype=torch.bool, device=self.x.device).expand(b, nmax, nmax)
        emb: dict[str, torch.Tensor] = {}

        def keep(raw: torch.Tensor, rows: torch.Tensor, ks: torch.Tensor) -> None:
            if "e" not in emb:
                emb["e"] = torch.zeros(b, nmax, raw.shape[1], dtype=F64, device=raw.device)
            emb["e"][rows, ks] = raw.to(F64)

        view = MaskingEngine(_EmbeddingView(self.engine.adapter), batch_size=self.engine.batch_size)
        nothing = Target(torch.full((b,), -1, dtype=torch.int64), fn=lambda s: s.new_zeros(s.shape[0]))
        view.scores(
            self.x,
            eye,
            groups=self.groups,
            n_masks=torch.tensor(self.n_regions),
            fill=self.fills,
            target=nothing,
            on_scores=keep,
        )
        self.engine.n_forward += view.n_forward
        self.engine.n_batches += view.n_batches
        return [region_angles(emb["e"][r, :n]).cpu() for r, n in enumerate(self.n_regions)]

    def neighbours(self, image: int) -> dict[int, list[int]]:
        """8-connected adjacency of the image's label map (rows of images only: columns have no layout)."""
        if self._adjacency is None:
            self._adjacency = [region_adjacency(self.groups.groups[r]) for r in range(len(self.n_regions))]
        return self._adjacency[image]

    def effectiveness_of(self, image: int, subsets: torch.Tensor) -> torch.Tensor:
        if self.angles is None:
            return torch.zeros(subsets.shape[0], dtype=F64)
        return effectiveness(subsets, self.angles[image])

    def read(self, subsets: Sequence[torch.Tensor | None]) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        b = len(self.n_regions)
        if len(subsets) != b:
            # internal misuse, not a user error
            raise ValueError(f"score() and read() need one entry per image ({b}); got {len(subsets)}")
        counts = [0 if s is None else int(s.shape[0]) for s in subsets]
        out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * b
        if sum(counts) == 0:
            return out
        masks = torch.zeros(b, max(counts), self.groups.n_groups, dtype=torch.bool)
        for r, s in enumerate(subsets):
            if s is None or s.shape[0] == 0:
                continue
            n = self.n_regions[r]
            if s.dtype != torch.bool or s.ndim != 2 or s.shape[1] != n:
                raise ValueError(f"image {r}: subsets must be (K, {n}) bool; got {s.dtype} {tuple(s.shape)}")
            masks[r, : s.shape[0], :n] = s.cpu()
        dev = self.x.device
        conf = torch.zeros(b, max(counts), dtype=F64, device=dev)

        def keep(raw: torch.Tensor, rows: torch.Tensor, ks: torch.Tensor) -> None:
            conf[rows, ks] = confidence(raw)

        vals = self.engine.scores(
            self.x,
            masks.to(dev),
            groups=self.groups,
            n_masks=torch.tensor(counts),
            fill=self.fills,
            target=self.target,
            score=self.space,
            on_scores=keep,
        ).cpu()
        conf_c = conf.cpu()
        for r, k in enumerate(counts):
            if subsets[r] is not None and k > 0:
                out[r] = (vals[r, :k].to(F64), conf_c[r, :k])
        return out

    def score(self, subsets: Sequence[torch.Tensor | None]) -> list[Scored | None]:
        """F and its readings for ``subsets[b]`` ``(K_b, N_b)`` bool of every image b (None: nothing for b).

        One engine call (:meth:`read`): image b's rows are its K_b merge/comp pairs (2 K_b passes), chunked by
        ``batch_size`` across images.
        """
        rows: list[torch.Tensor | None] = []
        for s in subsets:
            if s is None or s.dtype != torch.bool or s.ndim != 2:
                rows.append(s)  # None, or a malformed entry that read() reports
                continue
            pairs = torch.empty(2 * s.shape[0], s.shape[1], dtype=torch.bool)
            pairs[0::2], pairs[1::2] = s.cpu(), ~s.cpu()
            rows.append(pairs)
        out: list[Scored | None] = []
        for r, (s, got) in enumerate(zip(subsets, self.read(rows), strict=True)):
            if s is None or got is None or s.shape[0] == 0:
                out.append(None)
                continue
            vals, conf = got
            eff = torch.zeros(s.shape[0], dtype=F64) if self.angles is None else effectiveness(s, self.angles[r])
            out.append(self._scored(vals[0::2], vals[1::2], conf[0::2], eff))
        return out
