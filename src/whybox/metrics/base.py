"""The Metric template and its one return type, :class:`MetricResult`.

A metric is configured in ``__init__`` (keyword-only, no work there) and computes in :meth:`Metric.evaluate`:
it validates the inputs and the explanation at the boundary, resolves the target (default: the explanation's),
runs every model call inside ``adapter.guard(mode)`` (eval mode, everything restored on exit) and returns
per-sample scores. Every perturbation goes through :class:`~whybox.masking.MaskingEngine` with the metric's one
``batch_size``. Metrics keep no state between calls.

Conventions (``specs/METRICS.md``): target score = softmax probability of the explained class (``score="prob"``;
``"logit"`` and ``"log_prob"`` are options, recorded in ``params``); image features are pixels with channels
pooled (summed, ``|.|`` first when ``abs=True``); ties are broken by a fixed seeded rule (:func:`tie_order`);
curves have ``steps + 1`` points with x = the fraction actually revealed/removed; AUC is the trapezoid rule
written out (:func:`trapezoid`); undefined values are NaN, counted in ``meta["n_nan"]``.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from whybox.errors import InvalidInputError, InvalidParameterError, InvalidTargetError, did_you_mean
from whybox.explanation import Explanation, digest_mismatch, options_for_rows, row_options
from whybox.masking.engine import MaskingEngine, check_batch_size, resolve_batch_size
from whybox.masking.features import FeatureGroups, pixels, segments
from whybox.masking.fills import one_value_per_column
from whybox.models._guard import MODES, instance_lock, public_call, seed_global_rngs
from whybox.models.adapter import (
    ModelAdapter,
    TorchAdapter,
    adapt,
    check_default_target,
    coder_of,
    is_sequence,
    is_signal,
    score_for,
    scoring_adapter,
)
from whybox.models.categorical import register_vocabularies
from whybox.models.inputs import (
    as_tensor_inputs,
    check_feature_names,
    check_option_columns,
    coded_later,
    is_text_adapter,
    name_list,
    tensor_option,
)
from whybox.models.packed import packed_option
from whybox.models.targets import (
    SCORE_SPACES,
    Target,
    TargetLike,
    class_label_target,
    probability_check_over_chunks,
    resolve_score,
    resolve_target,
)

__all__ = [
    "Context",
    "ExplainFn",
    "Metric",
    "MetricResult",
    "all_finite",
    "boundaries",
    "derive_generator",
    "feature_array",
    "feature_scores",
    "feature_values",
    "finite_rows",
    "make_explain_fn",
    "pearson",
    "rankdata",
    "row_widths",
    "spearman",
    "tie_first",
    "tie_order",
    "tie_top",
    "trapezoid",
]


class ExplainFn(Protocol):
    """Re-runs a method: (adapter (the user's, or a randomised copy), inputs (n, *S), target (n,) ints or a Target,
    seed, and ``rows`` (n,): which of the explanation's rows the inputs are, so per-row options follow them (the
    explanation's, and ``explainer_params``' of one row per input: ``n_rows`` inputs, default the explanation's
    rows); None: the inputs are the explanation's rows) -> Explanation."""

    def __call__(
        self,
        adapter: Any,
        x: torch.Tensor,
        target: Any,
        seed: int | None,
        rows: torch.Tensor | None = None,
        n_rows: int | None = None,
    ) -> Explanation: ...


# ---------------------------------------------------------------------------------------------- the result
@dataclass
class MetricResult:
    """What every metric returns.

    Attributes
    ----------
    metric
        Registry name of the metric.
    scores
        ``(B,)`` float64 on the CPU: one score per input row, NaN where undefined (see ``meta["n_nan"]``).
    higher_is_better
        Direction of ``scores``.
    params
        The metric's configuration (every keyword of its ``__init__``), JSON-friendly.
    curves
        Per-sample curves where the metric has them (deletion/insertion: ``"x"`` and ``"y"``, both
        ``(B, P)``); an empty dict otherwise. Each metric's docstring names its keys.
    meta
        Extras: ``n_forward`` and ``n_backward`` (every pass the metric made through the model, those of the
        explainers it re-runs included), ``n_nan``, ``target`` ``(B,)`` and metric-specific entries.

    Shapes
    ------
    scores: ``(B,)``; curves: ``(B, P)`` each (``P`` = points per curve).
    """

    metric: str
    scores: torch.Tensor
    higher_is_better: bool
    params: dict[str, Any] = field(default_factory=dict)
    curves: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def n_nan(self) -> int:
        """Number of samples whose score is undefined (NaN)."""
        return int(torch.isnan(self.scores).sum())

    def mean(self) -> float:
        """NaN-ignoring mean of the scores (NaN when every score is NaN); see :attr:`n_nan`."""
        ok = self.scores[~torch.isnan(self.scores)]
        return float(ok.mean()) if ok.numel() else math.nan

    def __repr__(self) -> str:
        return (
            f"MetricResult(metric={self.metric!r}, n={len(self)}, mean={self.mean():.6g}, n_nan={self.n_nan}, "
            f"higher_is_better={self.higher_is_better}, curves={sorted(self.curves)})"
        )


# ---------------------------------------------------------------------------------------------- shared math
_NUMPY_FLOATS = (torch.float32, torch.float64)  # the CPU dtypes read through NumPy without a cast


def trapezoid(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Area under ``y(x)`` along the last axis by the trapezoid rule, written out: sum (x1 - x0)(y0 + y1) / 2."""
    return ((x[..., 1:] - x[..., :-1]) * (y[..., 1:] + y[..., :-1]) / 2).sum(-1)


def boundaries(n: int, steps: int) -> list[int]:
    """Step boundaries ``b_i = floor(i * n / steps)``, ``i = 0..steps`` (``steps`` clamped to ``n``).

    Every feature is used exactly once and the last boundary is ``n``: ``boundaries(5, 2) == [0, 2, 5]``.
    """
    steps = max(1, min(int(steps), int(n)))
    return [(i * n) // steps for i in range(steps + 1)]


def finite_rows(t: torch.Tensor) -> torch.Tensor:
    """``(B,)`` bool on the CPU: whether every value of row ``i`` of ``t`` ``(B, ...)`` is finite (the rows to
    blank once :func:`all_finite` has said that some value is not)."""
    flat = t.detach().reshape(t.shape[0], -1)
    if not flat.is_floating_point() and not flat.is_complex():
        return torch.ones(t.shape[0], dtype=torch.bool)
    return torch.isfinite(flat).all(1).cpu()


def all_finite(t: torch.Tensor) -> bool:
    """Whether every value of ``t`` is finite. A CPU float32/float64 tensor is checked in NumPy (one pass, no
    dispatch: the cheapest check on the small maps where each call counts); any other by its sum (an inf or NaN
    would make it inf or NaN; a sum that is not finite, an overflow included, is checked value by value)."""
    if not t.is_floating_point():
        return not t.is_complex() or bool(torch.isfinite(t).all())
    if t.is_cpu and t.dtype in _NUMPY_FLOATS and not t.requires_grad:
        return bool(np.isfinite(t.numpy()).all())
    return math.isfinite((t.detach() if t.requires_grad else t).sum().item()) or bool(torch.isfinite(t).all())


def derive_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator seeded from ``(seed, *keys)`` through NumPy's ``SeedSequence`` (well mixed, never global)."""
    state = np.random.SeedSequence([int(seed), *(int(k) for k in keys)]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) >> 1)


# NumPy's SeedSequence constants (O'Neill's seed_seq_fe mixing), for derived_seeds
_SS_INIT_A, _SS_MULT_A, _SS_INIT_B, _SS_MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_SS_MIX_L, _SS_MIX_R = 0xCA01F9DD, 0x4973F715
_M32 = np.uint64(0xFFFFFFFF)


def _uint32_words(n: int) -> list[int]:
    """``n >= 0`` as SeedSequence reads an int: its 32-bit words, least significant first (``[0]`` for 0)."""
    out = [n & 0xFFFFFFFF]
    n >>= 32
    while n:
        out.append(n & 0xFFFFFFFF)
        n >>= 32
    return out


def derived_seeds(seed: int, key: int, cols: np.ndarray) -> list[int]:
    """The seeds :func:`derive_generator` gives ``(seed, key, *cols[i])`` for every row ``i`` of ``cols`` ``(n, m)``
    (ints in ``[0, 2**32)``, e.g. (row, draw) pairs), all at once: NumPy's ``SeedSequence`` entropy mixing and
    ``generate_state(1, uint64)`` restated on uint32 arrays (one pass for thousands of pairs, where a
    ``SeedSequence`` each costs ~8 us). ``torch.Generator().manual_seed(s)`` with ``s`` from here draws what
    ``derive_generator`` would."""
    cols = np.asarray(cols, dtype=np.int64)
    cols = cols[:, None] if cols.ndim == 1 else cols
    if cols.size and (cols.min() < 0 or cols.max() >= 2**32):
        raise ValueError("derived_seeds needs keys in [0, 2**32)")  # internal misuse
    n = cols.shape[0]
    prefix = [w for v in (int(seed), int(key)) for w in _uint32_words(v)]
    entropy = [np.full(n, w, dtype=np.uint64) for w in prefix] + [
        cols[:, j].astype(np.uint64) for j in range(cols.shape[1])
    ]
    hash_const = [_SS_INIT_A]

    def hashmix(v: np.ndarray) -> np.ndarray:
        v = (v ^ np.uint64(hash_const[0])) & _M32
        hash_const[0] = (hash_const[0] * _SS_MULT_A) & 0xFFFFFFFF
        v = (v * np.uint64(hash_const[0])) & _M32
        return v ^ (v >> np.uint64(16))

    def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        r = np.bitwise_and(x * np.uint64(_SS_MIX_L) - y * np.uint64(_SS_MIX_R), _M32)  # wraps mod 2**64, then 2**32
        return r ^ (r >> np.uint64(16))

    zero = np.zeros(n, dtype=np.uint64)
    pool = [hashmix(entropy[i] if i < len(entropy) else zero) for i in range(4)]
    for src in range(4):
        for dst in range(4):
            if src != dst:
                pool[dst] = mix(pool[dst], hashmix(pool[src]))
    for src in range(4, len(entropy)):
        for dst in range(4):
            pool[dst] = mix(pool[dst], hashmix(entropy[src]))
    words, h = [], _SS_INIT_B
    for i in range(2):  # generate_state(1, uint64): two uint32 words, the first the low half
        v = (pool[i] ^ np.uint64(h)) & _M32
        h = (h * _SS_MULT_B) & 0xFFFFFFFF
        v = (v * np.uint64(h)) & _M32
        words.append(v ^ (v >> np.uint64(16)))
    state = words[0] | (words[1] << np.uint64(32))
    return (state >> np.uint64(1)).tolist()


_TIE_KEY = 7_151_829  # keys of the derived generators: one stream per purpose


def row_keys(x: torch.Tensor, own: torch.Tensor | None = None) -> list[int]:
    """One key per row of ``x`` ``(B, ...)`` in ``[0, 2**32)``, from the row's content (its dtype and bytes): a
    metric's random draws for a sample are keyed by it, so they do not depend on the sample's position in the batch
    (RELIABILITY: batched equals one-by-one) while different samples still draw differently.

    ``own`` ``(B, T)`` bool, for sequences ``(B, T, ...)``: the positions that are the row's own (a text's tokens,
    not the pads its batch added); a row is keyed by its positions up to its last own one, so padding does not
    move its key."""
    import hashlib

    rows = x.detach().to("cpu").contiguous()
    tag = str(rows.dtype).encode()
    if rows.dtype == torch.bfloat16:  # NumPy has no bfloat16: its bits as int16
        rows = rows.view(torch.int16)
    arr = rows.numpy()
    if own is None:
        flat = arr.reshape(arr.shape[0], -1)
        return [int.from_bytes(hashlib.blake2b(tag + r.tobytes(), digest_size=4).digest(), "little") for r in flat]
    mine = own.detach().to("cpu").reshape(arr.shape[0], -1).numpy()
    ends = [int(np.flatnonzero(o).max()) + 1 if o.any() else 0 for o in mine]
    return [
        int.from_bytes(hashlib.blake2b(tag + np.ascontiguousarray(r[:end]).tobytes(), digest_size=4).digest(), "little")
        for r, end in zip(arr, ends, strict=True)
    ]


def text_positions(adapter: Any, x: torch.Tensor) -> torch.Tensor | None:
    """``(B, T)`` bool: a text adapter's ordinary tokens in its packed inputs ``x`` (not the specials, nor the pads
    a batch adds), for :func:`row_keys` to key a text by its own tokens; ``None`` for other models."""
    mask = getattr(adapter, "packed_noise_mask", None)
    if not is_text_adapter(adapter) or not callable(mask) or x.ndim < 2:
        return None
    return mask(x).reshape(x.shape[0], x.shape[1], -1).any(-1)


def _tie_rho(seed: int, n: int) -> np.ndarray:
    """The tie rule's permutation of ``0..n-1``, drawn from ``seed`` alone: every row (and every call) that meets
    a tie among ``n`` features uses the same one, so a sample's order does not depend on its place in the batch."""
    return torch.randperm(n, generator=derive_generator(seed, _TIE_KEY)).numpy()


def _ranking_values(values: torch.Tensor | np.ndarray, descending: bool = True) -> np.ndarray:
    """``values`` as float64 NumPy on the CPU, ready to rank: NaN becomes -inf (``descending``) or +inf, so it comes
    last, and infinities become the largest finite floats, so NaN comes after them too. A float64 array is used as
    it is (not modified: a cleaned copy is made when it holds a non-finite value)."""
    if isinstance(values, torch.Tensor):
        v = values.detach().to("cpu", torch.float64).numpy()
    else:
        v = np.asarray(values, dtype=np.float64)  # a float64 array as it is
    if not np.isfinite(v).all():
        v = np.nan_to_num(v, nan=-math.inf if descending else math.inf)
    return v


def tie_order(
    values: torch.Tensor, seed: int, *, descending: bool = True, widths: torch.Tensor | np.ndarray | None = None
) -> torch.Tensor:
    """Feature order by ``values`` ``(B, N)``, ties broken by the fixed seeded rule of METRICS.md.

    A permutation ``rho`` of ``0..N-1`` is drawn from ``seed`` (the same for every row, so a row's order does not
    depend on its place in the batch; a row of ``widths[i] = w < N`` features, the rest the batch's padding, draws
    the permutation of its own ``0..w-1`` and gives its padding ``rho = w..N-1``, so its order does not depend on
    the batch's width either: a text beside a longer one is ordered as alone); the order is the sort on
    ``(-value, rho)`` (``(value, -rho)`` when ``descending=False``: least relevant first is the reverse of that
    order, as METRICS.md's LeRF and ROAD's LeRF take it), a total order, so no sort algorithm can change
    it: a row without ties is ordered by its distinct values (an unstable, SIMD argsort is safe there), a row with
    ties by the distinct integers ``dense_rank(value) * N + rho``. NaN values sort last.

    Returns
    -------
    ``(B, N)`` int64 feature indices, most relevant first.
    """
    b, n = values.shape
    v = _ranking_values(values, descending)
    key = -v if descending else v
    # One unstable (SIMD) argsort per row orders the distinct values; only rows holding a tie then need rho:
    # sorting on the integer key dense_rank(value) * N + rho is the stable sort on (value, rho), since rho is
    # a permutation. A row without ties keeps its first order (any rho gives it), so it draws nothing.
    first = np.argsort(key, axis=1)
    ranked = key[np.arange(b)[:, None], first]
    new_value = ranked[:, 1:] != ranked[:, :-1]
    out = first
    own = None if widths is None else np.minimum(np.asarray(torch.as_tensor(widths).cpu(), dtype=np.int64), n)
    rhos: dict[int, np.ndarray] = {}  # one permutation per width
    for i in np.flatnonzero(~new_value.all(1)).tolist():
        dense = np.empty(n, dtype=np.int64)
        dense[first[i]] = np.concatenate([[0], np.cumsum(new_value[i])])
        w = n if own is None else max(int(own.reshape(-1)[i if own.size > 1 else 0]), 0)
        if w not in rhos:
            rhos[w] = _tie_rho(seed, n) if w == n else np.concatenate([_tie_rho(seed, w), np.arange(w, n)])
        rho = rhos[w]
        out[i] = np.argsort(dense * n + (rho if descending else n - 1 - rho))
    return torch.from_numpy(out).to(values.device)


def row_widths(
    sizes: torch.Tensor, x: torch.Tensor | None = None, adapter: Any = None, groups: Any = None
) -> torch.Tensor:
    """``(B,)`` int64 on the CPU: each row's own feature count from its features' sizes ``(B, M)``: one past its
    last feature covering an element (the features after it are the batch's padding, e.g. the word ids of a longer
    text), for :func:`tie_order`'s ``widths``. With a Hugging Face text adapter's packed inputs ``x`` ``(B, T, D + 1)``
    and their feature ``groups`` (ids per token), at most one past the largest id on the row's attended tokens: a
    feature only on pad positions (a token position past the text) is the batch's width, not the text's."""
    used = sizes.detach().cpu() > 0
    m = used.shape[1]
    last = m - torch.flip(used, dims=[1]).to(torch.int64).argmax(1)
    widths = torch.where(used.any(1), last, torch.zeros_like(last))
    ids = getattr(groups, "groups", None)
    if (
        x is not None
        and x.ndim == 3
        and isinstance(ids, torch.Tensor)
        and ids.ndim == 3
        and tuple(ids.shape[:2]) == tuple(x.shape[:2])
        and getattr(adapter, "tokenizer", None) is not None
    ):
        attended = x[..., -1].detach().cpu() > 0.5  # the attention-mask column
        token_ids = ids[..., 0].detach().cpu().to(torch.int64)  # a token's feature (its elements share it)
        text = torch.where(attended, token_ids, torch.full_like(token_ids, -1)).amax(1) + 1
        widths = torch.minimum(widths, text.clamp_min(0))
    return widths


def tie_top(values: torch.Tensor | np.ndarray, seed: int, k: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``(B, N)`` bool on the CPU: the first ``k[i]`` features of row ``i`` in :func:`tie_order`'s order (most
    relevant first), as a set, without ordering the rest: the features above the ``k``-th value, and of those tied
    with it the ones with the smallest ``rho``. The permutation is drawn only for rows where a tie straddles
    position ``k``. ``k`` ``(B,)`` ints in ``0..N``; ``values`` a tensor or a NumPy array (``(B, N)`` each).
    """
    v = _ranking_values(values)
    kk = k.cpu().numpy() if isinstance(k, torch.Tensor) else np.asarray(k)
    return torch.from_numpy(_tie_top(v, seed, np.minimum(np.maximum(kk, 0), v.shape[1])))


def _tie_top(v: np.ndarray, seed: int, kk: np.ndarray) -> np.ndarray:
    """:func:`tie_top` on ranking values (:func:`_ranking_values`) and ``kk`` ints in ``0..N``: a NumPy ``(B, N)``
    bool array."""
    b, n = v.shape
    flat = np.sort(v, axis=1).reshape(-1)  # ascending: the k-th largest value of row i sits at i * n + n - k
    every = np.count_nonzero(kk) == b
    at = np.arange(n, (b + 1) * n, n) - (kk if every else np.maximum(kk, 1))
    kth = flat[at]
    if not every:
        kth[kk == 0] = np.inf  # k = 0: nothing (no value is +inf here: _ranking_values made them finite)
    top = v >= kth[:, None]
    # A tie straddles position k (0 < k < N) where the next value down equals the k-th: then more than k
    # features reach it, and its smallest rho decide which go in. (For k = N, at - 1 is the end of the row
    # before, and for k = 0 the k-th value is +inf: neither can straddle, so they are ruled out after.)
    tied = flat[at - 1] == kth
    if not np.count_nonzero(tied):
        return top
    straddle = np.flatnonzero(tied & (kk < n) & (kk > 0))
    if not straddle.size:
        return top
    count = top.sum(1)
    rho = _tie_rho(seed, n)
    for i in straddle.tolist():
        group = np.flatnonzero(v[i] == kth[i])
        need = int(kk[i]) - (count[i] - group.size)
        top[i, group] = False
        top[i, group[np.argsort(rho[group])[:need]]] = True
    return top


def tie_first(values: torch.Tensor | np.ndarray, seed: int) -> torch.Tensor:
    """``(B,)`` int64 on the CPU: the first feature of :func:`tie_order`'s order (the most relevant; of tied
    maxima the one with the smallest ``rho``), without sorting: the permutation is drawn only for rows whose
    maximum is tied. ``values`` a tensor or a NumPy array ``(B, N)``."""
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    return torch.from_numpy(_tie_first(np.asarray(values, dtype=np.float64), seed))


def _tie_first(v: np.ndarray, seed: int) -> np.ndarray:
    """:func:`tie_first` of a float64 array ``(B, N)`` (NaN and infinities allowed): NumPy int64 ``(B,)``."""
    b, n = v.shape
    first = v.argmax(1)  # a NaN, when a row holds one, is where argmax stops
    top = v[np.arange(b), first]
    if np.isfinite(top).all() and np.count_nonzero(v == top[:, None]) == b:
        return first  # one finite maximum per row (NaN and +inf excluded): the rule has nothing to break
    v = _ranking_values(v)
    first = v.argmax(1)
    at_max = v == v[np.arange(b), first][:, None]
    rho = _tie_rho(seed, n)
    for i in np.flatnonzero(at_max.sum(1) > 1).tolist():
        group = np.flatnonzero(at_max[i])
        first[i] = group[rho[group].argmin()]
    return first


def rankdata(a: torch.Tensor) -> torch.Tensor:
    """Average ranks (1-based, ties averaged, as ``scipy.stats.rankdata``) along the last axis, float64.

    Every row at once: one sort, then each run of equal values takes the mean of its positions (exact: integers
    and halves). Rows holding a NaN go through scipy (NaN ranks, its ``nan_policy="propagate"``)."""
    v = a.detach().cpu().double().numpy()
    shape = v.shape
    v = v.reshape(-1, shape[-1]) if v.ndim else v.reshape(1, 1)
    n = v.shape[1]
    out = np.empty(v.shape, dtype=np.float64)
    if n:
        order = np.argsort(v, axis=1)  # unstable is fine: every member of a run of equal values gets its mean
        rows = np.arange(v.shape[0])[:, None]
        s = v[rows, order]
        starts = np.ones(v.shape, dtype=bool)
        np.not_equal(s[:, 1:], s[:, :-1], out=starts[:, 1:])  # a new run of equal values begins
        if starts.all():  # no ties: the ranks are the positions
            out[rows, order] = np.arange(1.0, n + 1.0)
        else:
            flat_starts = np.flatnonzero(starts)
            run_len = np.diff(np.append(flat_starts, starts.size))
            mean_pos = (flat_starts % n) + (run_len - 1) / 2 + 1  # 1-based mean position of each run
            out[rows, order] = np.repeat(mean_pos, run_len).reshape(v.shape)
    nan_rows = np.isnan(v).any(1)
    if nan_rows.any():
        from scipy.stats import rankdata as sp_rankdata

        out[nan_rows] = sp_rankdata(v[nan_rows], axis=-1)
    return torch.from_numpy(out.reshape(shape))


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Pearson correlation of ``(..., n)`` tensors in float64; NaN where either row is constant."""
    a = a.detach().cpu().double()
    b = b.detach().cpu().double()
    da = a - a.mean(-1, keepdim=True)
    db = b - b.mean(-1, keepdim=True)
    na = da.pow(2).sum(-1).sqrt()
    nb = db.pow(2).sum(-1).sqrt()
    den = na * nb
    # a row is constant when its spread is at round-off level of its magnitude
    tol_a = 1e-12 * a.abs().amax(-1).clamp_min(1e-300) * math.sqrt(a.shape[-1])
    tol_b = 1e-12 * b.abs().amax(-1).clamp_min(1e-300) * math.sqrt(b.shape[-1])
    bad = (na <= tol_a) | (nb <= tol_b)
    r = (da * db).sum(-1) / torch.where(bad, torch.ones_like(den), den)
    return torch.where(bad, torch.full_like(r, math.nan), r.clamp(-1.0, 1.0))


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Spearman correlation (Pearson of average ranks); NaN where either row is constant."""
    return pearson(rankdata(a), rankdata(b))


def _channels(c: int) -> str:
    return f"{c} or 1" if c != 1 else "1"


def check_map_shape(attributions: torch.Tensor, x: torch.Tensor, *, signal: bool = False) -> str:
    """How ``attributions`` lay over the inputs ``x``: ``"signal"`` (``(B, C or 1, L)`` or ``(B, L)`` on 1-D signals),
    ``"image"`` (``(B, C or 1, H, W)`` or ``(B, H, W)`` on images), ``"tokens"`` (``(B, T)`` or ``(B, T, 1)`` on packed
    text ``(B, T, D + 1)``) or ``"same"`` (the inputs' shape); any other shape raises
    :class:`~whybox.InvalidInputError` saying what fits."""
    sa, sx, b = tuple(attributions.shape), tuple(x.shape), x.shape[0]
    if signal and len(sx) == 3:
        if len(sa) == 2:
            sa = (sa[0], 1, sa[1])
        if len(sa) != 3 or sa[0] != b or sa[-1] != sx[-1] or sa[1] not in (1, sx[1]):
            raise InvalidInputError(
                f"attributions of shape {tuple(attributions.shape)} do not match signals {sx}; expected "
                f"({b}, {_channels(sx[1])}, {sx[-1]}) or ({b}, {sx[-1]})."
            )
        return "signal"
    if len(sx) == 4:
        h, w = sx[-2:]
        if len(sa) == 3:
            sa = (sa[0], 1, *sa[1:])
        if len(sa) != 4 or sa[0] != b or sa[-2:] != (h, w) or sa[1] not in (1, sx[1]):
            raise InvalidInputError(
                f"attributions of shape {tuple(attributions.shape)} do not match images {sx}; expected "
                f"({b}, {_channels(sx[1])}, {h}, {w}) or ({b}, {h}, {w})."
            )
        return "image"
    if sa == sx:
        return "same"
    if len(sx) == 3 and len(sa) in (2, 3) and sa[:2] == sx[:2] and (len(sa) == 2 or sa[2] == 1):
        return "tokens"
    per_class = len(sa) == len(sx) + 1 and sa[:-1] == sx
    raise InvalidInputError(
        f"attributions of shape {tuple(attributions.shape)} must have the shape of the inputs {sx}"
        + (" (or one value per token: (B, T) or (B, T, 1))." if len(sx) == 3 else ".")
        + (
            f" These hold one map per class on their last axis (shap's layout for {sa[-1]} outputs): pass "
            f"each row's class, e.g. values[np.arange({b}), ..., target] with target the explained class per row."
            if per_class
            else ""
        )
    )


def feature_values(
    attributions: torch.Tensor, x: torch.Tensor, *, abs: bool = False, signal: bool = False
) -> torch.Tensor:
    """Per-feature attribution ``(B, N)`` (float64), the first half of :func:`feature_scores` (no feature groups:
    what the metrics that read only the map need).

    Images ``(B, C, H, W)``: one feature per pixel; a ``(B, C, H, W)``, ``(B, 1, H, W)`` or ``(B, H, W)`` map is
    pooled over channels by summing (``|.|`` first when ``abs``). Any other input ``(B, *S)``: one feature per
    element, the attributions shaped like the input (for packed text ``(B, T, D + 1)`` also one value per token,
    ``(B, T)`` or ``(B, T, 1)``, copied onto the token's elements). 1-D signals ``(B, C, L)`` (``signal``,
    :func:`~whybox.models.adapter.is_signal`): one feature per time step, a ``(B, C, L)`` or ``(B, 1, L)`` map
    pooled over channels as for images.
    """
    a = attributions.detach()
    if abs:
        a = a.abs()
    b = x.shape[0]
    layout = check_map_shape(attributions, x, signal=signal)
    if layout == "signal":
        return (a if a.ndim == 3 else a.unsqueeze(1)).sum(1).to(torch.float64)
    if layout == "image":
        if a.ndim == 3:
            a = a.unsqueeze(1)
        if a.device.type == "cpu" and a.dtype in (torch.float32, torch.float64) and a.shape[1] == 1:  # NumPy: cheapest
            return torch.from_numpy(a.numpy().reshape(b, -1).astype(np.float64))
        a = a[:, 0] if a.shape[1] == 1 else a.sum(1)
        return a.reshape(b, -1).to(torch.float64)
    if layout == "tokens":  # one value per token (B, T) or (B, T, 1) of packed text inputs: each element takes it
        a = (a if a.ndim == 3 else a.unsqueeze(-1)).expand(x.shape)
    return a.reshape(b, -1).to(torch.float64)


def feature_array(
    attributions: torch.Tensor, x: torch.Tensor, *, abs: bool = False, signal: bool = False
) -> np.ndarray:
    """:func:`feature_values` as a NumPy ``(B, N)`` float64 array on the CPU (a copy: the caller may write to it),
    for the metrics that read only the map. A CPU float map ``(B, 1, H, W)`` of images takes the shortest path:
    one NumPy cast, no torch operation."""
    a = attributions
    sa, sx = a.shape, x.shape
    if (
        len(sa) == 4
        and len(sx) == 4
        and sa[1] == 1
        and sa[0] == sx[0]
        and sa[2] == sx[2]
        and sa[3] == sx[3]
        and a.dtype in _NUMPY_FLOATS
        and a.is_cpu
    ):
        v = (a.detach() if a.requires_grad else a).numpy().reshape(sa[0], -1).astype(np.float64)
        return np.abs(v, out=v) if abs else v
    return feature_values(attributions, x, abs=abs, signal=signal).cpu().numpy().copy()


def reads_sequence(ctx: Context) -> bool:
    """Inputs ``(B, T, D)`` of a model that reads them as a sequence of time steps
    (:func:`~whybox.models.adapter.is_sequence`: not a Conv1d's signal, not a text adapter's packed tokens, not a
    black box's rows, not an MLP's gray images ``(B, H, W)``, whose features are their pixels)."""
    return ctx.x.ndim == 3 and not ctx.signal and (ctx.steps_given or is_sequence(ctx.adapter, ctx.x))


def feature_scores(
    attributions: torch.Tensor, x: torch.Tensor, *, abs: bool = False, signal: bool = False, sequence: bool = False
) -> tuple[torch.Tensor, FeatureGroups]:
    """Per-feature attribution ``(B, N)`` (float64, :func:`feature_values`) and the feature groups of ``x``: its
    pixels for images, its time steps for 1-D signals (``signal``) and for sequences ``(B, T, D)`` given one value
    per step (``(B, T)`` or ``(B, T, 1)`` maps) or of a model that reads them as such (``sequence``: a full
    ``(B, T, D)`` map summed over D, ``|.|`` first with ``abs``, as images pool their channels), its elements
    otherwise."""
    layout = check_map_shape(attributions, x, signal=signal) if x.ndim == 3 and not signal else None
    if layout == "tokens" or (sequence and layout == "same"):
        # one value per time step of a sequence (B, T, D) or per token of packed text: the features are the steps,
        # all D elements together, as pixels on images (not T x D elements with tied copies of the step's value)
        a = attributions.detach()
        a = a.abs() if abs else a
        a = (a.sum(-1) if layout == "same" else a.reshape(x.shape[0], x.shape[1])).to(torch.float64)
        steps = segments(x, length=1, time_axis=1)
        return a, FeatureGroups(steps.groups.expand(x.shape).contiguous(), steps.n_groups, "segments")
    values = feature_values(attributions, x, abs=abs, signal=signal)
    if x.ndim == 4:
        return values, pixels(x)
    if signal and x.ndim == 3:
        return values, segments(x, length=1)
    b, n = x.shape[0], int(np.prod(x.shape[1:]))
    g = torch.arange(n, device=x.device).view(1, *x.shape[1:]).expand(b, *x.shape[1:]).contiguous()
    return values, FeatureGroups(g, n, "elements")


# ---------------------------------------------------------------------------------------------- explainers
def make_explain_fn(
    explainer: str | Callable[..., torch.Tensor] | None,
    explanation: Explanation | None,
    explainer_params: dict[str, Any] | None,
    tally: dict[str, int] | None = None,
    source: torch.nn.Module | None = None,
    origin: Any = None,
) -> tuple[ExplainFn, str]:
    """A function ``(adapter, inputs, target, seed) -> Explanation`` re-running the explanation's method.

    ``tally`` (the metric's :attr:`Context.passes`) gets every run's passes added: a registry explainer's
    ``meta["n_forward"]`` and ``meta["n_backward"]``; for a callable, the rows its torch model ran forward (counted
    by a hook; its backward passes cannot be seen and are not counted).

    ``explainer`` is a registry name, a callable ``(model, inputs, target) -> attributions`` (called with the
    adapter's model, e.g. a randomised copy, and ``target`` an int64 tensor ``(n,)``), or ``None`` for the method recorded in ``explanation`` with its recorded ``params``.
    ``explainer_params`` override those params. ``seed`` (when not ``None``) replaces the explainer's seed.
    ``source``: the model the options' modules belong to (a CAM's ``layer=`` given as a module); run on a copy of
    it (randomization's), each such option is the copy's module of the same name.
    ``origin``: the adapter the re-runs' adapter is a copy of (randomization's, whose layers it re-initialises). On a
    :class:`~whybox.explainers.llm.generation.CausalLMAdapter` the step options (each step's fixed tokens, the fill and
    baseline word vectors, the token features) are read with it: they belong to the inputs, not to the copy's
    weights (a re-initialised word embedding no longer knows the specials the rows hold, nor the fill tokens' vectors).
    """
    extra = dict(explainer_params or {})
    if callable(explainer):
        fn = explainer

        def run_callable(
            adapter: Any,
            x: torch.Tensor,
            target: Any,
            seed: int | None,
            rows: torch.Tensor | None = None,
            n_rows: int | None = None,
        ) -> Explanation:
            t = target.index if isinstance(target, Target) else target
            model = getattr(adapter, "model", adapter)
            with _counting_rows(model, tally):
                out = fn(model, x, t)
            if not isinstance(out, torch.Tensor):
                raise InvalidParameterError(
                    f"the explainer callable must return an attribution tensor; it returned {type(out).__name__}."
                )
            idx = (
                torch.as_tensor(t).reshape(-1) if isinstance(t, (torch.Tensor, int)) else torch.full((x.shape[0],), -1)
            )
            return Explanation(out.detach(), idx.expand(x.shape[0]).clone(), "callable")

        return run_callable, getattr(explainer, "__name__", "callable")
    from whybox.registry import EXPLAINERS

    if explainer is None:
        if explanation is None or not explanation.method:
            raise InvalidParameterError(
                "this metric re-runs the explainer: pass an Explanation made by whybox.explain, a method name, "
                "or explainer= (a registry name or a callable (model, inputs, target) -> attributions)."
            )
        name = explanation.method
    else:
        name = explainer
    cls = EXPLAINERS.get(name, param="explainer" if explainer is not None else "method")
    params: dict[str, Any] = {}
    if explanation is not None and explanation.method == name:
        params.update(explanation.params)
        params.update(explanation.options)  # tensors and callables as given, not their descriptions in params
        if params.get("seed", 0) is None and isinstance(explanation.meta.get("seed"), int):
            # made with seed=None: the seed that call drew (meta), so the re-runs draw as the map did and a metric's
            # own seed decides its result (each re-run drew a fresh seed: two calls of randomization differed)
            params["seed"] = explanation.meta["seed"]
        lost = [
            k for k in explanation.meta.get("described_options", []) if k not in explanation.options and k not in extra
        ]
        if lost:
            raise InvalidParameterError(
                f"this metric re-runs {name!r} with the explanation's options, but "
                + ", ".join(f"{k}={explanation.params.get(k)!r}" for k in lost)
                + " is only a description of what was given (a callable or a module is not saved with an explanation). Pass "
                f"the value again: explainer_params={{{', '.join(repr(k) + ': ...' for k in lost)}}}."
            )
    params.update(extra)

    def run(
        adapter: Any,
        x: torch.Tensor,
        target: Any,
        seed: int | None,
        rows: torch.Tensor | None = None,
        n_rows: int | None = None,
    ) -> Explanation:
        p = dict(params)
        if rows is not None and explanation is not None and explanation.method == name:
            # a text batch's fill and features, row by row; explainer_params' own values stay (the explanation's
            # option of that name came back in their place: its B rows against the re-run's)
            p.update({k: v for k, v in row_options(explanation, rows, keep=extra).items() if k not in extra})
        n = n_rows if n_rows is not None else len(explanation) if explanation is not None else None
        if rows is not None and n is not None and extra:
            # explainer_params' own per-row fill, baseline or features (one row per input) follow the rows alike
            cut = options_for_rows(extra, rows, n, (n, *x.shape[1:]), params=p)
            p.update({k: v for k, v in cut.items() if v is not extra[k]})
        if seed is not None:
            p["seed"] = seed
        from whybox.explainers.llm.generation import CausalLMAdapter, step_explain_options
        from whybox.models.blackbox_text import BlackBoxTextAdapter

        if isinstance(adapter, CausalLMAdapter):  # step rows: attribute_generation's defaults, on these rows
            # read with the adapter the rows were made by: a randomised copy's embedding no longer matches them
            steps_of = origin if isinstance(origin, CausalLMAdapter) else adapter
            p = step_explain_options(steps_of, x, name, p)
        elif isinstance(adapter, BlackBoxTextAdapter) and isinstance(x, torch.Tensor):
            # a black-box text model's presence rows: a fill left out drops words and keeps the text index, as
            # whybox.explain does there (the methods' zero fill would score rows on text 0's words)
            from whybox.api import _blackbox_text_options

            p = _blackbox_text_options(adapter, x, name, p)
        model = getattr(adapter, "model", None)
        if source is not None and isinstance(model, torch.nn.Module) and model is not source:
            p = _rebind_modules(p, source, model)
        tgt = target
        if isinstance(target, Target):
            tgt = target.fn if target.fn is not None else target.index
        try:
            explainer_obj = cls(adapter, **p)
        except TypeError as exc:
            if "unexpected keyword argument" not in str(exc):
                raise
            from whybox.api import _unknown_option

            raise _unknown_option(f"explainer_params: {name!r}", exc, cls, ()) from None
        except InvalidParameterError as exc:  # a bad value among the re-run's options: say whose
            given = sorted(k for k in extra if k in str(exc))
            where = f"explainer_params ({', '.join(given)})" if given else f"the re-run of {name!r}"
            raise type(exc)(f"{where}: {exc}") from None
        e = explainer_obj.explain(x, target=tgt)
        if tally is not None:
            for key in ("n_forward", "n_backward"):
                tally[key] += int(e.meta.get(key, 0))
        return e

    return run, name


def _rebind_modules(options: dict[str, Any], source: torch.nn.Module, clone: torch.nn.Module) -> dict[str, Any]:
    """``options`` with every submodule of ``source`` (also inside dicts, lists and tuples) replaced by the module of
    the same name in ``clone`` (a deep copy of ``source``)."""
    names = {id(m): n for n, m in source.named_modules()}
    if not names:
        return options
    found = dict(clone.named_modules())

    def swap(v: Any) -> Any:
        if isinstance(v, torch.nn.Module):
            name = names.get(id(v))
            return found.get(name, v) if name is not None else v
        if isinstance(v, dict):
            return {k: swap(u) for k, u in v.items()}
        if isinstance(v, (list, tuple)):
            return type(v)(swap(u) for u in v)
        return v

    return {k: swap(v) for k, v in options.items()}


@contextlib.contextmanager
def _counting_rows(model: Any, tally: dict[str, int] | None) -> Iterator[None]:
    """Add the rows ``model`` runs forward inside the block to ``tally["n_forward"]`` (torch modules only)."""
    if tally is None or not isinstance(model, torch.nn.Module):
        yield
        return

    def count(_m: torch.nn.Module, args: tuple[Any, ...]) -> None:
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        tally["n_forward"] += int(first.shape[0]) if first is not None and first.dim() > 0 else 1

    handle = model.register_forward_pre_hook(count)
    try:
        yield
    finally:
        handle.remove()


# ---------------------------------------------------------------------------------------------- the template
def _array_attributions(a: np.ndarray) -> torch.Tensor:
    """A NumPy attribution array as a tensor (a copy: the caller's array is never written); numbers only."""
    if a.dtype.kind not in "biuf":
        raise InvalidInputError(
            f"an attribution array must hold real numbers; got dtype {a.dtype}. Pass e.g. a.astype(np.float32)."
        )
    return torch.from_numpy(np.array(a, order="C", copy=True))  # any strides, read-only arrays too


@dataclass
class Context:
    """Everything a metric computes from, validated and on the model's device."""

    adapter: ModelAdapter | None
    x: torch.Tensor
    attributions: torch.Tensor | None
    target: Target | None
    explanation: Explanation | None
    engine: MaskingEngine | None
    clean: torch.Tensor | None  # raw scores of the clean inputs (B, K)
    masks: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    method: str | None = None
    # passes spent outside ``engine`` (explainers the metric re-runs, tracing runs), added to meta's counts
    passes: dict[str, int] = field(default_factory=lambda: {"n_forward": 0, "n_backward": 0})
    # whether every attribution value is finite (checked once, before _compute; the rows of a map that is not
    # come back NaN)
    finite: bool = True
    # signals known without the adapter here (a metric that reads only the map, given the model or masks (B, L))
    signal_given: bool = False
    # a sequence (B, T, D) of a model without Conv1d whose masks (B, T) mark time steps (the localisation metrics)
    sequence: bool = False
    # inputs of a model that reads time steps (is_sequence), known without the adapter here (a metric of the map
    # alone given the model: sparseness, complexity); see reads_sequence
    steps_given: bool = False

    @property
    def signal(self) -> bool:
        """Whether the inputs are 1-D signals ``(B, C, L)`` (:func:`~whybox.models.adapter.is_signal`): the
        metrics' features are then time steps, all channels together, as pixels are for images."""
        return self.signal_given or is_signal(self.adapter, self.x)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InvalidParameterError(f"seed must be a non-negative int; got {seed!r}.")
    return seed


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidParameterError(f"{name} must be an int >= {minimum}; got {value!r}.")
    return value


def check_options(name: str, value: Any) -> dict[str, Any]:
    """A dict of keyword options (``None``: empty), copied."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise InvalidParameterError(f"{name} must be a dict of option names to values, or None; got {value!r}.")
    return dict(value)


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise InvalidParameterError(f"{name} must be one of {choices}; got {value!r}.{did_you_mean(value, choices)}")
    return str(value)


def check_float(name: str, value: Any, lo: float = -math.inf, hi: float = math.inf, *, lo_open: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > lo if lo_open else value >= lo) and value <= hi
    if not ok:
        lo_s = f"> {lo}" if lo_open else f">= {lo}"
        raise InvalidParameterError(f"{name} must be a finite number {lo_s} and <= {hi}; got {value!r}.")
    return float(value)


_KEYWORD_OPTIONS: dict[type, tuple[str, ...]] = {}
_MISSING = object()
_SCALARS = frozenset((bool, int, float, str, type(None)))


def _keyword_options(cls: type) -> tuple[str, ...]:
    """The keyword-only parameters of every ``__init__`` along ``cls``'s MRO, most derived first, each once (read
    once per class: ``inspect.signature`` cost a quarter of a millisecond per metric call)."""
    if cls in _KEYWORD_OPTIONS:
        return _KEYWORD_OPTIONS[cls]
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind is p.KEYWORD_ONLY and p.name not in names:
                names.append(p.name)
    _KEYWORD_OPTIONS[cls] = tuple(names)
    return _KEYWORD_OPTIONS[cls]


class Metric:
    """Base class of every metric.

    Parameters
    ----------
    score
        Score space of the target: ``"prob"`` (softmax probability), ``"logit"``, ``"log_prob"``, ``"sigmoid"`` or
        ``"log_sigmoid"`` (each output as its own label's logit); ``None`` (the default) is ``"prob"``, or ``"logit"``
        (the raw score) on a model with one output, such as a regressor, and ``"sigmoid"`` for a multi-label
        classifier (``adapt(model, kind="multilabel")``).
        For a scikit-learn model's ``predict_proba``, ``"prob"`` is its own probabilities (not a softmax of them)
        and ``"logit"`` reads them as they are too (:func:`~whybox.models.adapter.scoring_adapter`).
    seed
        Seeds every random draw and the tie rule; the metric uses its own generators, never the global RNG.
    batch_size
        Model input rows per forward pass, passed to the masking engine; it bounds memory and changes no number.
        ``None`` (the default): 64 rows for a torch model, 4,096 for a scikit-learn estimator.
    mode
        ``"eval"`` (the default: the model runs in eval mode during the call) or ``"as_is"``.

    Subclasses set ``higher_is_better`` and implement :meth:`_compute`.
    """

    name: ClassVar[str] = "metric"
    higher_is_better: ClassVar[bool] = True
    needs_model: ClassVar[bool] = True
    needs_attributions: ClassVar[bool] = True
    #: whether ``labels=`` (true classes) enters the score (ROAD's accuracy); elsewhere it is refused, not ignored
    reads_labels: ClassVar[bool] = False
    #: whether ``masks=`` (ground-truth regions) enters the score (localisation); elsewhere refused
    reads_masks: ClassVar[bool] = False
    # whether _compute reads ``ctx.clean`` (the model's scores of the unperturbed inputs); when it does not, the
    # clean forward pass runs only where the target needs it (the predicted class of a bare attribution tensor)
    reads_clean: ClassVar[bool] = True
    # whether the metric adds noise to every input value (refused on an estimator's coded categorical columns)
    adds_noise: ClassVar[bool] = False

    def __init__(
        self, *, score: str | None = None, seed: int = 0, batch_size: int | None = None, mode: str = "eval"
    ) -> None:
        self.score = None if score is None else check_choice("score", score, SCORE_SPACES)
        self.seed = _check_seed(seed)
        self.batch_size = None if batch_size is None else check_batch_size(batch_size)
        self.mode = check_choice("mode", mode, MODES)

    # ------------------------------------------------------------------ configuration
    def params(self) -> dict[str, Any]:
        """The metric's options (every keyword of ``__init__``), JSON-friendly."""
        out: dict[str, Any] = {}
        for name in _keyword_options(type(self)):
            v = getattr(self, name, _MISSING)
            if v is _MISSING:
                continue
            if type(v) in _SCALARS or isinstance(v, (bool, int, float, str, type(None))):
                out[name] = v
            elif isinstance(v, (list, tuple)) and all(isinstance(e, (bool, int, float, str)) for e in v):
                out[name] = list(v)
            elif isinstance(v, dict):  # (explainer_params: a tensor option is named by its shape, as above)
                out[name] = {
                    str(k): e
                    if isinstance(e, (bool, int, float, str))
                    else f"tensor{tuple(e.shape)}"
                    if isinstance(e, torch.Tensor)
                    else repr(e)
                    for k, e in v.items()
                }
            elif callable(v) and not isinstance(v, torch.Tensor):
                out[name] = getattr(v, "__name__", repr(v))
            else:
                out[name] = repr(v) if not isinstance(v, torch.Tensor) else f"tensor{tuple(v.shape)}"
        return out

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({opts})"

    def result_direction(self) -> bool:
        """``higher_is_better`` of this configuration (a few metrics depend on an option)."""
        return type(self).higher_is_better

    # ------------------------------------------------------------------ the call
    def __call__(self, *args: Any, **kwargs: Any) -> MetricResult:
        return self.evaluate(*args, **kwargs)

    def evaluate(
        self,
        model: Any,
        inputs: torch.Tensor,
        explanation: Explanation | torch.Tensor | np.ndarray | str | None,
        *,
        target: TargetLike = None,
        masks: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> MetricResult:
        """Score ``explanation`` of ``inputs``.

        Parameters
        ----------
        model
            A torch module, scikit-learn estimator or :class:`~whybox.ModelAdapter` (``None`` for metrics that
            read only the attributions: sparseness, complexity, localisation).
        inputs
            ``(B, ...)`` tensor with a leading batch dimension (for tabular models also a numpy array or a pandas
            DataFrame of numeric columns). NaN or inf in it is an error, except for the metrics that read only the
            map (sparseness, complexity, localisation), which use the inputs for their shape alone.
        explanation
            An :class:`~whybox.Explanation`, an attribution tensor or NumPy array ``(B, ...)``, or a method name (the
            metric then explains ``inputs`` itself with default options).
        target
            ``None`` = the explanation's target (the predicted class for a bare tensor); an int, per-row ints or
            a callable ``scores (B, K) -> (B,)``.
        masks
            Ground-truth masks ``(B, H, W)`` or ``(B, 1, H, W)`` for localisation metrics.
        labels
            True labels ``(B,)`` for accuracy-based metrics (ROAD); default: the target.
        """
        if torch.is_inference_mode_enabled():  # a metric may take gradients (a re-explanation, a randomised copy)
            with torch.inference_mode(False):
                if isinstance(inputs, torch.Tensor) and inputs.is_inference():
                    inputs = inputs.clone()  # a copy made outside inference mode can enter autograd
                return self.evaluate(model, inputs, explanation, target=target, masks=masks, labels=labels)
        # one metric object shared by threads scores one call at a time: a call keeps state on it (its score space
        # and fill resolved for its model, restored on exit)
        with instance_lock(self), public_call(), probability_check_over_chunks():  # one probability warning a call
            return self._evaluate_call(model, inputs, explanation, target=target, masks=masks, labels=labels)

    def _evaluate_call(
        self,
        model: Any,
        inputs: torch.Tensor,
        explanation: Explanation | torch.Tensor | np.ndarray | str | None,
        *,
        target: TargetLike = None,
        masks: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> MetricResult:
        if masks is not None and not self.reads_masks:
            raise InvalidParameterError(
                f"masks= applies to the localisation metrics (pointing_game, energy_pointing_game, relevance_mass, "
                f"relevance_rank); {self.name!r} does not read them. Drop masks=, or score localisation with one of those."
            )
        if model is None and not self.needs_model and labels is None and isinstance(explanation, torch.Tensor):
            return self._evaluate_map(inputs, explanation, target, masks)  # the common call of a map-only metric
        adapter: ModelAdapter | None = None if model is None else adapt(model)
        coder = coder_of(adapter)
        saved = explanation.meta.get("categories") if isinstance(explanation, Explanation) else None
        if coder is not None and saved:  # the vocabularies its coded options were made with
            register_vocabularies(coder, saved)
        x, names = self._validate_inputs(
            inputs,
            values=self.needs_model,
            coder=coder,
            packing=getattr(adapter, "packing", None),
            dtype=torch.float32 if adapter is None else adapter.dtype,
        )
        if adapter is not None:
            check_feature_names(names, getattr(adapter, "feature_names", None))
            target = class_label_target(adapter, target)  # class labels, an SAE adapter's latents
        elif self.needs_model:
            raise InvalidParameterError(f"metric {self.name!r} needs a model; got model=None.")
        given, given_fill = self.score, getattr(self, "fill", None)
        if adapter is not None:  # a regressor's values are read as they are (None), or refuse a probability
            self.score = score_for(adapter, given)
        try:
            if self.adds_noise and coder is not None and coder.categories:
                coded = list(coder.categories)
                raise InvalidParameterError(
                    f"{self.name!r} adds noise to every input value, which on the coded text or categorical columns "
                    f"({', '.join(map(repr, coded[:5]))}) picks arbitrary categories; score this model with the "
                    "metrics that replace features by a reference row (deletion, insertion, mufidelity, "
                    "comprehensiveness with fill= a row of the training data)."
                )
            self._code_fill(coder)  # a pandas reference row read now that the inputs are known
            if getattr(adapter, "packing", None) is not None and hasattr(self, "fill"):
                # one fill per input, packed as the explainers pack it
                setattr(self, "fill", packed_option(getattr(self, "fill"), adapter, "fill"))  # noqa: B009, B010
            if isinstance(getattr(self, "fill", None), tuple):  # a row given as a tuple: as a list would be read
                setattr(self, "fill", tensor_option(getattr(self, "fill"), "fill"))  # noqa: B009, B010
            check_option_columns(getattr(self, "_option_columns", {}), names)  # a pandas fill read by position
            expl: Explanation | None = None
            method: str | None = None
            attributions: torch.Tensor | None = None
            if isinstance(explanation, str):
                method = explanation
                if self.needs_attributions:
                    if adapter is None:
                        raise InvalidParameterError(
                            f"explanation={explanation!r} is a method name, which needs a model to explain; pass a model."
                        )
                    from whybox.api import explain

                    expl = explain(adapter, inputs, explanation, target=target)
                    attributions = expl.attributions
            elif isinstance(explanation, Explanation):
                expl, method, attributions = explanation, explanation.method, explanation.attributions
                digest = explanation.meta.get("input_digest")
                other = (  # another row count gets the row-count error below
                    digest_mismatch(digest, x, adapter)
                    if isinstance(digest, torch.Tensor) and digest.shape[0] == x.shape[0]
                    else []
                )
                if other:
                    raise InvalidInputError(
                        f"the explanation was made for other inputs than these: rows {other[:8]}"
                        f"{' ...' if len(other) > 8 else ''} of {x.shape[0]} differ from the rows it explains "
                        "(shuffled, re-preprocessed or another batch?); pass the inputs it explains, or its attributions "
                        "(explanation.attributions) to score that map on these inputs."
                    )
                explained = explanation.meta.get("feature_names")
                if names is not None and explained is not None and list(explained) != names:
                    raise InvalidInputError(
                        "inputs (a DataFrame) and the explanation name different columns "
                        f"({name_list(names, 4)} vs {name_list(list(explained), 4)}); evaluate the rows with the columns they were "
                        "explained with, in that order."
                    )
            elif isinstance(explanation, torch.Tensor):
                attributions = explanation
            elif isinstance(explanation, np.ndarray):  # e.g. a map from another library (Quantus' a_batch)
                attributions = _array_attributions(explanation)
            elif explanation is None and not self.needs_attributions:
                pass
            else:
                raise InvalidInputError(
                    "explanation must be an Explanation, an attribution tensor or NumPy array (B, ...) or a method name; "
                    f"got {type(explanation).__name__}."
                )
            if attributions is not None:
                attributions = self._validate_attributions(attributions, x)
            signal, sequence = is_signal(adapter, x), False
            if masks is not None:
                # a 3-D input of a model that reads no signal (and no text) is a sequence (B, T, D): masks over T
                seq_model = adapter is not None and not signal and not is_text_adapter(adapter)
                masks, signal, sequence = self._validate_masks(masks, x, signal=signal, sequence=seq_model)
            if labels is not None:
                labels = self._labels(labels, adapter, x.shape[0])
            if adapter is not None:
                x = x.to(device=adapter.device)
                if isinstance(adapter, TorchAdapter) and adapter.weights_dtype is not None:
                    x = x.to(adapter.weights_dtype)
                if attributions is not None:
                    attributions = attributions.to(x.device)
            engine = (
                MaskingEngine(
                    scoring_adapter(adapter, self.score), batch_size=resolve_batch_size(self.batch_size, adapter)
                )
                if adapter is not None
                else None
            )
            if self.needs_model and engine is not None and isinstance(adapter, TorchAdapter):
                from whybox.models._guard import warn_batch_statistics

                warn_batch_statistics(adapter.model, engine.batch_size, "the scores")
            if not self.needs_model or adapter is None or engine is None:
                tgt0 = self._target_without_model(target, expl, x)
                # a text adapter stays known to a metric of the map alone: its words are the features, not the
                # specials and pads (:func:`present_features`)
                known = adapter if is_text_adapter(adapter) else None
                ctx = Context(
                    known,
                    x,
                    attributions,
                    tgt0,
                    expl,
                    None,
                    None,
                    masks,
                    labels,
                    method,
                    signal_given=signal,
                    sequence=sequence,
                    steps_given=adapter is not None and is_sequence(adapter, x),
                )
                scores, curves, meta = self._checked_compute(ctx)
            else:
                with adapter.guard(self.mode):
                    if self.mode == "as_is" and isinstance(adapter, TorchAdapter) and self.seed is not None:
                        seed_global_rngs(self.seed, adapter.device)  # Dropout in training mode draws: the seed decides
                    clean = engine.forward(x) if self._needs_clean(target, expl) else None
                    tgt = self._resolve_target(target, expl, clean, x, adapter)
                    ctx = Context(adapter, x, attributions, tgt, expl, engine, clean, masks, labels, method)
                    scores, curves, meta = self._checked_compute(ctx)
            return self._result(ctx, scores, curves, meta, engine)
        finally:
            self.score = given
            if given_fill is not None:
                self.fill = given_fill

    def _evaluate_map(
        self, inputs: torch.Tensor, attributions: torch.Tensor, target: TargetLike, masks: torch.Tensor | None
    ) -> MetricResult:
        """:meth:`evaluate` of a metric that reads only the map, given an attribution tensor and no model: the same
        checks and result, without the model-side branches (a call here costs tens of microseconds, so each counts:
        the common inputs, float tensors with a batch dimension, pass the checks inline; anything else goes
        through the validators, which convert or raise)."""
        x = inputs  # read for its shape alone: its values are not checked (see _validate_inputs)
        if (
            not isinstance(x, torch.Tensor)
            or x.ndim < 2
            or not x.shape[0]
            or not x.is_floating_point()
            or x.requires_grad
        ):
            x, _ = self._validate_inputs(inputs, values=False)  # a numpy array or DataFrame converted, or an error
        a = attributions
        if a.ndim < 2 or a.shape[0] != x.shape[0] or not a.is_floating_point() or a.requires_grad:
            a = self._validate_attributions(a, x)
        tgt = None if target is None else self._target_without_model(target, None, x)
        if masks is None:
            ctx = Context(None, x, a, tgt, None, None, None)
        else:
            m, signal, sequence = self._validate_masks(masks, x)
            ctx = Context(None, x, a, tgt, None, None, None, m, signal_given=signal, sequence=sequence)
        scores, curves, meta = self._checked_compute(ctx)
        return self._result(ctx, scores, curves, meta, None)

    def _checked_compute(self, ctx: Context) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]:
        """:meth:`_compute`, after one finiteness check of the attributions (``ctx.finite``). Where a value is not
        finite, NumPy's warnings about the arithmetic on it are silenced: its row's score is NaN either way, and
        ``meta["nonfinite_attributions"]`` names it."""
        ctx.finite = ctx.attributions is None or all_finite(ctx.attributions)
        if ctx.finite:
            return self._compute(ctx)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return self._compute(ctx)

    def _result(
        self,
        ctx: Context,
        scores: torch.Tensor,
        curves: dict[str, torch.Tensor],
        meta: dict[str, Any],
        engine: MaskingEngine | None,
    ) -> MetricResult:
        """The :class:`MetricResult` of :meth:`_compute`'s output: scores float64 on the CPU, NaN for the rows whose
        attributions are not finite, the pass counts, and every tensor moved to the CPU."""
        attributions = ctx.attributions
        if scores.dtype != torch.float64 or not scores.is_cpu or scores.requires_grad:
            scores = scores.detach().to("cpu", torch.float64)
        if attributions is not None and not ctx.finite:
            finite = finite_rows(attributions)
            if not bool(finite.all()):
                scores = torch.where(finite, scores, torch.full_like(scores, math.nan))
                meta["nonfinite_attributions"] = (~finite).nonzero().flatten().tolist()
        s = scores.numpy()
        out_meta: dict[str, Any] = {
            "n_forward": (engine.n_forward if engine is not None else 0) + ctx.passes["n_forward"],
            "n_backward": ctx.passes["n_backward"],
            "n_nan": int(np.count_nonzero(s != s)),  # NaN is the one value unequal to itself
        }
        if ctx.target is not None:
            out_meta["target"] = ctx.target.index.clone()
        if engine is not None and engine.n_outputs is not None:  # the score space the model's scores were read in
            out_meta["score"] = resolve_score(self.score, engine.n_outputs)
        elif self.score is not None:
            out_meta["score"] = self.score
        if ctx.method is not None:
            out_meta["method"] = ctx.method
        # like the scores and curves, meta's tensors come back on the CPU whatever the model's device
        for k, v in meta.items():
            out_meta[k] = v.detach().cpu() if isinstance(v, torch.Tensor) and (v.requires_grad or not v.is_cpu) else v
        return MetricResult(
            metric=self.name,
            scores=scores,
            higher_is_better=self.result_direction(),
            params=self.params(),
            curves={k: v.detach().to("cpu") for k, v in curves.items()} if curves else {},
            meta=out_meta,
        )

    def _compute(self, ctx: Context) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]:
        raise NotImplementedError  # pragma: no cover - interface

    # ------------------------------------------------------------------ helpers
    def _code_fill(self, coder: Any) -> None:
        """A reference row given as a pandas Series, as a tensor for this call (:meth:`evaluate` puts the option
        back): coded like the inputs for an estimator whose adapter (``coder``) codes text columns, where a fill by
        name is refused (it would set those columns to an arbitrary code)."""
        fill = getattr(self, "fill", None)
        coded = list(coder.categories) if coder is not None else []
        if coded and one_value_per_column(fill):
            raise InvalidParameterError(
                f"inputs have text or categorical columns ({', '.join(map(repr, coded[:5]))}), which {self.name!r} "
                f"with fill={fill!r} would set to an arbitrary value; pass a reference row as fill= (a Series with "
                "every column, e.g. X_train.mode().iloc[0], or a list of its values in the model's column order: "
                f"--metric-option '{self.name}.fill=[...]' on the command line)."
            )
        if coded_later(fill):
            self.fill = tensor_option(fill, "fill", coder)

    @staticmethod
    def _validate_inputs(
        inputs: Any, *, values: bool = True, coder: Any = None, packing: Any = None, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, list[str] | None]:
        """The inputs as a tensor (numpy arrays and DataFrames of tabular models converted; text and categorical
        columns coded by a scikit-learn estimator's adapter, ``coder``) and a DataFrame's column names (None otherwise).
        ``values=False`` skips the finiteness check: the metrics that read only the map use the inputs for their
        shape, so no input value can change their result."""
        inputs, names = as_tensor_inputs(inputs, coder, packing)  # a model of several inputs: packed rows
        if inputs.ndim < 2:
            raise InvalidInputError(
                f"inputs must have a leading batch dimension (B, ...); got shape {tuple(inputs.shape)}. "
                "Add one with inputs[None] (a tensor or an array; inputs.unsqueeze(0) for a tensor)."
            )
        if inputs.shape[0] == 0:
            raise InvalidInputError("inputs hold no rows (batch size 0); pass at least one row.")
        x = inputs.detach()
        if not x.is_floating_point():
            x = x.to(dtype)  # the model's dtype (an estimator's float64 keeps int64 values exact)
        if values and not all_finite(x):
            raise InvalidInputError("inputs contain non-finite values (NaN or inf); clean them before evaluating.")
        return x, names

    @staticmethod
    def _validate_attributions(a: Any, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(a, torch.Tensor):
            raise InvalidInputError(f"attributions must be a tensor; got {type(a).__name__}.")
        if a.ndim < 2 or a.shape[0] != x.shape[0]:
            raise InvalidInputError(
                f"attributions must have one row per input ({x.shape[0]}); got shape {tuple(a.shape)}."
            )
        a = a.detach()
        return a if a.is_floating_point() else a.to(torch.float32)

    @staticmethod
    def _validate_masks(
        masks: Any, x: torch.Tensor, *, signal: bool = False, sequence: bool | None = None
    ) -> tuple[torch.Tensor, bool, bool]:
        """Masks as ``(B, H, W)`` bool for images, ``(B, L)`` for 1-D signals ``(B, C, L)`` (the time steps of the
        class: a model with an ``nn.Conv1d``), ``(B, T)`` for sequences ``(B, T, D)`` read batch-first (an LSTM, a
        transformer), or masks shaped like 3-D inputs (images without a channel dimension ``(B, H, W)``: each
        element's own). For 3-D inputs of no declared signal the masks' shape tells; where ``(B, T)`` and ``(B, L)``
        are one shape, ``sequence`` (a model that reads no signal) reads them as a sequence's, else as a signal's.
        Returns the masks, whether the inputs are signals and whether they are sequences."""
        m = torch.as_tensor(masks)
        if x.ndim == 3:
            b, t, length = x.shape
            if tuple(m.shape) == tuple(x.shape) and not signal and t > 1 and length > 1:
                return _binary_masks(m), False, False  # channel-less images (B, H, W), or one flag per element
            if m.ndim == 3 and m.shape[1] == 1 and not sequence:
                m = m[:, 0]
            if m.ndim == 3 and m.shape[2] == 1 and not signal:
                m = m[:, :, 0]
            if not signal:  # the masks' shape tells: (B, T) a sequence's time steps, (B, L) the last axis's; when
                # T == L, a model that reads no signal (``sequence``) takes them as a sequence's, the map alone as a
                # signal's
                sequence = tuple(m.shape) == (b, t) and (t != length or bool(sequence))
            if sequence:
                if tuple(m.shape) != (b, t):
                    raise InvalidInputError(
                        f"masks must have shape ({b}, {t}) or ({b}, {t}, 1) for the sequences {tuple(x.shape)} (the "
                        f"time steps of the class, along axis 1); got {tuple(m.shape)}."
                    )
                return _binary_masks(m), False, True
            if m.shape != (b, length):
                raise InvalidInputError(
                    f"masks must have shape ({b}, {length}) or ({b}, 1, {length}) for signals {tuple(x.shape)} (the "
                    f"time steps of the class); got {tuple(m.shape)}."
                    + (
                        ""
                        if signal
                        else f" For sequences (B, T, D) the masks are ({b}, {t}). Images need (B, C, H, W) inputs."
                    )
                )
            return _binary_masks(m), True, False
        if x.ndim != 4:
            raise InvalidInputError(
                f"masks need image inputs (B, C, H, W) or 1-D signals (B, C, L); got inputs {tuple(x.shape)}."
            )
        if m.ndim == 4 and m.shape[1] == 1:
            m = m[:, 0]
        b, _, h, w = x.shape
        if m.shape != (b, h, w):
            raise InvalidInputError(
                f"masks must have shape ({b}, {h}, {w}) or ({b}, 1, {h}, {w}); got {tuple(m.shape)}."
            )
        return _binary_masks(m), False, False

    @staticmethod
    def _explanation_target(expl: Explanation | None) -> torch.Tensor | None:
        if expl is None:
            return None
        t = torch.as_tensor(expl.target).to(torch.int64).reshape(-1)
        if bool((t < 0).any()):
            raise InvalidTargetError(
                "the explanation was made for a callable target (target -1); pass the same callable as target=."
            )
        return t

    def _reads_clean(self) -> bool:
        """Whether this configuration's :meth:`_compute` reads ``ctx.clean`` (:attr:`reads_clean`; a metric whose
        need depends on an option overrides this)."""
        return self.reads_clean

    def _needs_clean(self, target: TargetLike, expl: Explanation | None) -> bool:
        """Whether :meth:`evaluate` runs the clean forward pass: for a metric that reads ``ctx.clean``, and for the
        predicted class when neither ``target`` nor the explanation names one."""
        return self._reads_clean() or (target is None and (expl is None or expl.target is None))

    def _resolve_target(
        self,
        target: TargetLike,
        expl: Explanation | None,
        clean: torch.Tensor | None,
        x: torch.Tensor,
        adapter: ModelAdapter | None = None,
    ) -> Target:
        """``target`` normalised; without ``clean`` (no forward pass was needed) an explicit target's range is
        checked the first time it selects from the model's scores, or by the explainer the metric re-runs."""
        if target is None:
            t = self._explanation_target(expl)
            if t is not None:
                if t.shape != (x.shape[0],):
                    raise InvalidTargetError(f"the explanation holds {t.shape[0]} targets for {x.shape[0]} input rows.")
                return resolve_target(t, clean, batch=x.shape[0])
            if clean is not None:
                check_default_target(adapter, clean.shape[1])
        return resolve_target(target, clean, batch=x.shape[0])

    def _target_without_model(self, target: TargetLike, expl: Explanation | None, x: torch.Tensor) -> Target | None:
        if target is None:
            t = self._explanation_target(expl)
            return Target(t) if t is not None else None
        if callable(target) and not isinstance(target, torch.Tensor):
            return None
        idx = resolve_target(target, None, batch=x.shape[0]).index  # the checks a model's target gets, less its range
        if bool((idx < 0).any()):
            raise InvalidTargetError(
                f"target={idx[idx < 0][0].item()} is negative; use a class index 0..K-1 (K: the model's outputs)."
            )
        return Target(idx)

    def _labels(self, labels: Any, adapter: ModelAdapter | None, b: int) -> torch.Tensor:
        """``labels=`` (true classes, one per row) as int64 ``(b,)``: class names read as ``target=`` reads them."""
        if not self.reads_labels:
            raise InvalidParameterError(
                f"labels= applies to the metrics that score accuracy against true classes (road); {self.name!r} "
                "scores the explained target and would ignore them. Pass target=labels to score the true classes."
            )
        if adapter is not None:
            labels = class_label_target(adapter, labels)
        try:
            t = torch.as_tensor(labels)
        except (TypeError, ValueError, RuntimeError):
            raise InvalidParameterError(
                f"labels must hold one class per row (indices, or the model's class names); got "
                f"{type(labels).__name__} {labels!r:.80}."
            ) from None
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise InvalidParameterError(
                f"labels must hold integer class indices, one per row; got dtype {t.dtype}. Pass e.g. "
                "torch.tensor([3, 1]) (or the model's class names)."
            )
        if t.shape != (b,):
            raise InvalidParameterError(f"labels must hold one class per row, shape ({b},); got {tuple(t.shape)}.")
        return t.to(torch.int64)


def _binary_masks(m: torch.Tensor) -> torch.Tensor:
    """``masks`` as bool, refusing values other than 0 and 1 (a soft or interpolated mask, NaN): read as ``!= 0``
    they would count a faint edge, or a NaN mask, as ground truth."""
    if m.dtype == torch.bool:
        return m
    bad = ~((m == 0) | (m == 1))
    if bool(bad.any()):
        value = m[bad][0].item()
        raise InvalidInputError(
            f"masks must hold 0/1 or bool values (the ground-truth region); found {value!r}. Threshold a soft or "
            "resized mask first, e.g. masks > 0.5."
        )
    return m.to(torch.bool)


def _text_null_features(ctx: Context, groups: Any) -> torch.Tensor | None:
    """``(B, M)`` bool: on a text adapter's packed inputs, the features holding none of a text's own tokens (the
    group of CLS, SEP and the pads; a black box's pads and index column), which are no word of the text; ``None``
    elsewhere."""
    if not is_text_adapter(ctx.adapter):
        return None
    from whybox.masking.features import groups_touched

    ordinary = text_positions(ctx.adapter, ctx.x)  # (B, T): a text's own tokens (a word equal to [UNK] included)
    if ordinary is not None:
        shape = ctx.x.shape
        return ~groups_touched(groups, ordinary.view(*ordinary.shape, *([1] * (len(shape) - 2))).expand(shape))
    fill = ctx.adapter.packed_fill(ctx.x)  # type: ignore[union-attr]
    return ~groups_touched(groups, ctx.x != fill)


def present_features(ctx: Context, groups: Any) -> torch.Tensor:
    """``(B, M)`` bool: the features each row has (groups with elements), on a text adapter's packed inputs only its
    words (:func:`_text_null_features`: not the group of CLS, SEP and the pads). What the metrics that read the map
    over ``regions`` compare or summarise."""
    present = groups.sizes() > 0
    null = _text_null_features(ctx, groups)
    if null is not None:
        present &= ~null.to(present.device)
    return present
