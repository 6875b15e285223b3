"""Infidelity and max-sensitivity (Yeh et al., NeurIPS 2019).

References
----------
Yeh, Hsieh, Suggala, Inouye & Ravikumar, "On the (In)fidelity and Sensitivity of Explanations", NeurIPS 2019.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from whybox.errors import InvalidInputError, InvalidParameterError, check_bool
from whybox.metrics.base import (
    Context,
    Metric,
    check_choice,
    check_float,
    check_int,
    check_map_shape,
    check_options,
    derived_seeds,
    make_explain_fn,
    reads_sequence,
    row_keys,
    text_positions,
)
from whybox.models.inputs import is_text_adapter, python_numbers
from whybox.registry import METRICS

__all__ = ["Infidelity", "MaxSensitivity", "squares"]

_INFD_KEY = 3_000_017
_SENS_KEY = 3_000_029


def _broadcast_attr(a: torch.Tensor, x: torch.Tensor, *, signal: bool = False) -> torch.Tensor:
    """Attributions as a tensor shaped like ``x``: a 1-channel or channel-less map of images ``(B, H, W)`` or of 1-D
    signals ``(B, L)`` is repeated over the channels, one value per step of a sequence ``(B, T)`` over its D features
    (the layouts :func:`~whybox.metrics.base.check_map_shape` reads)."""
    layout = check_map_shape(a, x, signal=signal)
    if layout in ("image", "signal") and a.ndim == x.ndim - 1:
        a = a.unsqueeze(1)
    elif layout == "tokens" and a.ndim == 2:
        a = a.unsqueeze(-1)
    try:
        return torch.broadcast_to(a, x.shape).to(torch.float64)
    except RuntimeError:
        raise InvalidInputError(
            f"attributions of shape {tuple(a.shape)} do not broadcast to the inputs {tuple(x.shape)}."
        ) from None


def squares(h: int, w: int, max_side: int) -> torch.Tensor:
    """Every axis-aligned square of side ``1..max_side`` at every position: ``(n, 3)`` (side, top, left)."""
    out = []
    for s in range(1, min(max_side, h, w) + 1):
        tops, lefts = torch.meshgrid(torch.arange(h - s + 1), torch.arange(w - s + 1), indexing="ij")
        out.append(torch.stack([torch.full_like(tops, s), tops, lefts], -1).reshape(-1, 3))
    return torch.cat(out)


@METRICS.register("infidelity")
class Infidelity(Metric):
    """``INFD = E_I[(I^T a - (f(x) - f(x - I)))^2]``; with ``normalize`` (default, as the official code)
    ``beta = E[I^T a df] / E[(I^T a)^2]`` and ``INFD = E[(df - beta I^T a)^2]`` (invariant to scaling ``a``).

    Perturbations: ``"noisy_baseline"`` (``x - I = baseline + eps``, ``eps ~ N(0, sigma^2)`` per element, clipped
    to ``clip`` when given; ``n_samples`` draws, row ``i`` draw ``k`` from ``(seed, i, k)``) or ``"square"``
    (``I = x - baseline`` on one square of side ``1..max_square`` at every position, zero elsewhere: ``x - I`` sets
    the square to ``baseline``, default 0, which zeroes it as the official code; deterministic, one perturbation per
    square). ``sigma``, ``clip`` and ``n_samples`` belong to the noise and are refused with ``"square"``;
    ``max_square`` belongs to the squares and is refused with ``"noisy_baseline"``. A 1-channel map is repeated
    over the input's channels. Lower is better, range [0, inf); NaN when every ``I^T a`` is 0 with ``normalize``.

    Parameters
    ----------
    perturbation
        ``"noisy_baseline"`` (default) or ``"square"`` (images ``(B, C, H, W)``).
    sigma, n_samples, clip
        ``"noisy_baseline"`` only: the noise's standard deviation (default 0.2), the number of draws (default 100)
        and an optional ``(low, high)`` range the noisy reference is clipped to.
    baseline
        The noisy reference's mean, or the value a square is set to (default 0).
    max_square
        ``"square"`` only: the largest side of a square (default 10).

    Raises
    ------
    InvalidParameterError
        An option of the other perturbation (``sigma=`` with ``perturbation="square"``, ...); a text adapter's
        packed inputs or a :class:`~whybox.explainers.llm.generation.CausalLMAdapter`'s step rows, whose control
        channels (attention mask, read position), specials and future tokens the noise would rewrite.

    Curves: ``"attribution_dot"`` (``I^T a``) and ``"drop"`` (``f(x) - f(x - I)``), ``(B, n)``.
    """

    higher_is_better = False
    adds_noise = True

    def __init__(
        self,
        *,
        perturbation: str = "noisy_baseline",
        sigma: float | None = None,
        n_samples: int | None = None,
        normalize: bool = True,
        baseline: float = 0.0,
        clip: tuple[float, float] | None = None,
        max_square: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.perturbation = check_choice("perturbation", perturbation, ("noisy_baseline", "square"))
        square = self.perturbation == "square"
        # an option the chosen perturbation does not read is refused, not ignored: the squares are deterministic and
        # set to the baseline (no noise, no clip, one perturbation per square); the noise has no squares. The unused
        # options are None, so a result's params re-run it (evaluate(..., **result.params))
        unused = {"sigma": sigma, "n_samples": n_samples, "clip": clip} if square else {"max_square": max_square}
        for name, value in unused.items():
            if value is not None:
                use = (
                    "the squares are set to baseline= with no noise, one perturbation per square (max_square= sets "
                    "how many)"
                    if square
                    else "its perturbations are noise around baseline=, not squares"
                )
                raise InvalidParameterError(
                    f"{name}={value!r} does not apply to perturbation={self.perturbation!r}: {use}. Leave {name} "
                    f"out, or use perturbation={'noisy_baseline' if square else 'square'!r}."
                )
        self.sigma = None if square else check_float("sigma", 0.2 if sigma is None else sigma, 0.0)
        self.n_samples = None if square else check_int("n_samples", 100 if n_samples is None else n_samples)
        self.normalize = check_bool("normalize", normalize)
        self.baseline = check_float("baseline", baseline)
        clip = python_numbers(clip)  # (low, high) as a NumPy array or a tensor, or NumPy scalars in a tuple
        if clip is not None and (
            not isinstance(clip, (tuple, list))
            or len(clip) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in clip)
            or not clip[0] < clip[1]
        ):
            raise InvalidParameterError(f"clip must be None or (low, high) with low < high; got {clip!r}.")
        self.clip = None if clip is None else (float(clip[0]), float(clip[1]))
        self.max_square = check_int("max_square", 10 if max_square is None else max_square) if square else None

    def _compute(self, ctx: Context) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]:
        if ctx.attributions is None or ctx.engine is None or ctx.target is None or ctx.clean is None:
            raise InvalidParameterError("infidelity needs attributions and a model.")
        from whybox.models.targets import apply_score_space

        x = ctx.x
        if is_text_adapter(ctx.adapter):  # packed text inputs: the mask channel, specials (or a row's index)
            raise InvalidParameterError(
                "infidelity perturbs every element of its inputs, and a text adapter's inputs hold more than the "
                "words: the attention mask in their last channel and the special tokens (a black-box text model's: "
                "the text's index), which noise would change. For texts use comprehensiveness, sufficiency, "
                "deletion or insertion (they replace words by [MASK], or remove them, and keep the rest)."
            )
        if getattr(ctx.adapter, "control_channels", 0):  # a causal LM's step rows: mask and read-position channels
            raise InvalidParameterError(
                f"infidelity perturbs every element of its inputs, and the step rows of {type(ctx.adapter).__name__} "
                f"hold more than the attributed tokens' word vectors: the attention-mask and read-position channels "
                "(their last two), the special tokens and each step's future tokens, which noise would change (a step "
                "would be scored at other positions). Score generation steps with deletion, insertion, "
                "comprehensiveness, sufficiency or mufidelity (they replace the attributed tokens' word vectors and "
                "keep the rest), or max_sensitivity (its noise lands on those word vectors only)."
            )
        a = _broadcast_attr(ctx.attributions, x, signal=ctx.signal)
        b = x.shape[0]
        one = (1,) * (x.ndim - 1)
        if self.perturbation == "square":
            if x.ndim != 4:
                raise InvalidInputError(f"perturbation='square' needs images (B, C, H, W); got {tuple(x.shape)}.")
            h, w = x.shape[-2:]
            sq = squares(h, w, self.max_square or 10).to(x.device)
            n = sq.shape[0]
            # I = x - baseline on a square: I^T a = box sum of ((x - baseline) * a) pooled over channels, from an
            # integral image
            xa = ((x.to(torch.float64) - self.baseline) * a).sum(1)
            ii = torch.nn.functional.pad(xa.cumsum(1).cumsum(2), (1, 0, 1, 0))
            s_, t_, l_ = sq[:, 0], sq[:, 1], sq[:, 2]
            dot = ii[:, t_ + s_, l_ + s_] - ii[:, t_, l_ + s_] - ii[:, t_ + s_, l_] + ii[:, t_, l_]
            yy = torch.arange(h, device=x.device).view(1, h, 1)
            xx = torch.arange(w, device=x.device).view(1, 1, w)

            def masks(rows: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
                s, t, left = (v.view(-1, 1, 1) for v in sq[ks].unbind(1))
                inside = (yy >= t) & (yy < t + s) & (xx >= left) & (xx < left + s)
                return (~inside).unsqueeze(1)

            perturbed = ctx.engine.scores(
                x, masks, n_masks=n, fill=torch.full_like(x, self.baseline), target=ctx.target, score=self.score
            )
        else:
            n = self.n_samples or 100
            dot = torch.empty(b, n, dtype=torch.float64, device=x.device)
            keys = torch.tensor(row_keys(x), dtype=torch.int64)  # draws keyed by the sample, not its place

            def masks(rows: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
                return torch.zeros((rows.shape[0], *one), dtype=torch.bool, device=x.device)

            def fill(rows: torch.Tensor, ks: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
                eps = torch.empty((rows.shape[0], *x.shape[1:]), dtype=torch.float64)
                g = torch.Generator()  # reseeded per pair: derive_generator(seed, key, row, draw)'s stream
                pairs = torch.stack([keys[rows.cpu()], ks.cpu()], 1).numpy()  # (sample key, draw)
                for j, s in enumerate(derived_seeds(self.seed, _INFD_KEY, pairs)):
                    torch.randn(x.shape[1:], generator=g.manual_seed(s), dtype=torch.float64, out=eps[j])
                xt = self.baseline + (self.sigma or 0.0) * eps.to(x.device)
                if self.clip is not None:
                    xt = xt.clamp(*self.clip)
                xt = xt.to(x.dtype)
                r = rows.to(x.device)
                diff = (x[r].to(torch.float64) - xt.to(torch.float64)) * a[r]
                dot[r, ks.to(x.device)] = diff.reshape(rows.shape[0], -1).sum(1)
                return xt

            perturbed = ctx.engine.scores(x, masks, n_masks=n, fill=fill, target=ctx.target, score=self.score)
        clean = ctx.target.select(apply_score_space(ctx.clean, self.score)).to(torch.float64)
        drop = (clean.unsqueeze(1) - perturbed).cpu()
        dot = dot.cpu()
        if self.normalize:
            den = (dot * dot).mean(1)
            beta = (dot * drop).mean(1) / torch.where(den > 0, den, torch.ones_like(den))
            infd = ((drop - beta.unsqueeze(1) * dot) ** 2).mean(1)
            infd = torch.where(den > 0, infd, torch.full_like(infd, math.nan))
            meta: dict[str, Any] = {"beta": beta}
        else:
            infd = ((dot - drop) ** 2).mean(1)
            meta = {}
        meta["n_perturbations"] = n
        return infd, {"attribution_dot": dot, "drop": drop}, meta


@METRICS.register("max_sensitivity")
class MaxSensitivity(Metric):
    """``SENS_MAX = max_{||delta||_inf <= r} ||Phi(x + delta) - Phi(x)||_2``, Monte Carlo over ``n_samples`` draws
    ``delta ~ U(-r, r)^d`` (row ``i`` draw ``j`` from ``(seed, i, j)``), divided by ``||Phi(x)||_2`` when
    ``relative`` (a zero norm divides by 1, as captum). ``Phi`` re-runs the explanation's method (or
    ``explainer=``: a registry name or a callable ``(model, inputs, target) -> attributions``) for the same target
    on the perturbed inputs. With ``skip_label_change`` draws that change the predicted class are left out (NaN
    in the curve); a row with every draw left out scores NaN. Lower is better, range [0, inf).

    ``deltas`` gives the perturbations instead of drawing them: ``(B, n_samples, *S)`` (or ``(n_samples, *S)``
    shared by every row), added as they are (``radius`` is then unused), e.g. to replay another library's draws.
    An explanation pooled over channels (``(B, 1, H, W)`` for ``(B, C, H, W)`` images) is compared with the new
    maps pooled the same way (summed over channels). Without ``skip_label_change`` the model's clean scores are
    not needed, and their forward pass is not run when the target is known. On a text adapter's packed inputs the
    drawn noise lands on the ordinary tokens' word vectors only (never the mask channel, specials or pads), and on a
    causal LM's generation step rows on the word vectors of the tokens each step attributes (never the attention-mask
    and read-position channels, the specials or the step's future tokens); a black-box text model, which reads only
    which words are present, is refused.

    Curves: ``"sensitivity"`` ``(B, n_samples)`` per draw. ``meta["n_skipped"]`` ``(B,)``.
    """

    higher_is_better = False
    adds_noise = True

    def __init__(
        self,
        *,
        radius: float = 0.02,
        n_samples: int = 50,
        relative: bool = True,
        skip_label_change: bool = True,
        deltas: torch.Tensor | None = None,
        explainer: Any = None,
        explainer_params: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.radius = check_float("radius", radius, 0.0, lo_open=True)
        self.n_samples = check_int("n_samples", n_samples)
        self.relative = check_bool("relative", relative)
        self.skip_label_change = check_bool("skip_label_change", skip_label_change)
        if deltas is not None and (not isinstance(deltas, torch.Tensor) or not deltas.is_floating_point()):
            raise InvalidParameterError(
                f"deltas must be a float tensor (B, n_samples, ...) or (n_samples, ...), or None; got "
                f"{type(deltas).__name__}{'' if not isinstance(deltas, torch.Tensor) else ' of ' + str(deltas.dtype)}."
            )
        self.deltas = deltas
        self.explainer = explainer
        self.explainer_params = check_options("explainer_params", explainer_params)

    def _reads_clean(self) -> bool:
        return self.skip_label_change  # the clean prediction, to see which draws change it

    def _given_deltas(self, x: torch.Tensor) -> torch.Tensor | None:
        """``deltas`` as ``(B, n_samples, *S)`` on the inputs' device and dtype, or an error naming the shapes."""
        d = self.deltas
        if d is None:
            return None
        b, n, s = x.shape[0], self.n_samples, tuple(x.shape[1:])
        if tuple(d.shape) == (n, *s):
            d = d.unsqueeze(0).expand(b, *d.shape)
        if tuple(d.shape) != (b, n, *s):
            raise InvalidParameterError(
                f"deltas must have shape ({b}, {n}, {', '.join(map(str, s))}) or ({n}, {', '.join(map(str, s))}) "
                f"for {b} inputs of shape {s} and n_samples={n}; got {tuple(d.shape)}."
            )
        if not bool(torch.isfinite(d).all()):
            raise InvalidParameterError("deltas hold NaN or inf; pass finite perturbations.")
        return d.detach().to(device=x.device, dtype=x.dtype)

    def _draws(
        self,
        rows: torch.Tensor,
        ks: torch.Tensor,
        x: torch.Tensor,
        given: torch.Tensor | None = None,
        keys: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The perturbations of the (row, draw) pairs ``(rows[i], ks[i])``, ``(n, *S)`` in the inputs' dtype:
        ``given`` (:meth:`_given_deltas`) when there is one, else draw ``j`` of row ``i`` from its own generator
        ``(seed, key of x[i], j)`` (scaled at once); ``keys`` are ``row_keys(x)`` when the caller has them."""
        if given is not None:
            return given[rows.to(given.device), ks.to(given.device)]
        u = torch.empty((rows.shape[0], *x.shape[1:]), dtype=torch.float64)
        g = torch.Generator()  # reseeded per pair: the stream derive_generator(seed, key, row, draw) would give
        if keys is None:
            keys = torch.tensor(row_keys(x), dtype=torch.int64)
        picked = keys[rows.cpu()]  # the sample's key, not its place in the batch
        for i, s in enumerate(derived_seeds(self.seed, _SENS_KEY, torch.stack([picked, ks.cpu()], 1).numpy())):
            torch.rand(x.shape[1:], generator=g.manual_seed(s), dtype=torch.float64, out=u[i])
        return ((2 * u - 1) * self.radius).to(device=x.device, dtype=x.dtype)

    def _compute(self, ctx: Context) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]:
        if ctx.attributions is None or ctx.engine is None or ctx.target is None:
            raise InvalidParameterError("max_sensitivity needs attributions and a model.")
        fn, name = make_explain_fn(self.explainer, ctx.explanation, self.explainer_params, ctx.passes)
        x = ctx.x
        given = self._given_deltas(x)
        where = None  # a text adapter's packed inputs: noise on the ordinary tokens' word vectors only
        noise_mask = getattr(ctx.adapter, "packed_noise_mask", None)
        if given is None and is_text_adapter(ctx.adapter):
            if not callable(noise_mask):
                raise InvalidParameterError(
                    "max_sensitivity adds small noise to the inputs, but a black-box text model reads only which "
                    "words are present, so the noise never changes what it reads (every score would be 0). Use "
                    "stability (the method's seeds) to measure how far its explanations vary."
                )
            where = noise_mask(x)
        elif given is None and callable(noise_mask):  # a causal LM's step rows: each step's attributed word vectors
            where = noise_mask(x)
        b, n = x.shape[0], self.n_samples
        pred = torch.empty(b, n, dtype=torch.int64)
        pred0 = torch.zeros(b, dtype=torch.int64)
        if self.skip_label_change:
            if ctx.clean is None:
                raise InvalidParameterError("max_sensitivity with skip_label_change needs the clean scores.")
            pred0 = ctx.clean.argmax(1).cpu()
        a0 = ctx.attributions.reshape(b, -1).to(torch.float64).cpu()
        norm0 = a0.norm(dim=1)
        denom = torch.where(norm0 > 0, norm0, torch.ones_like(norm0)) if self.relative else torch.ones_like(norm0)
        sens = torch.empty(b, n, dtype=torch.float64)
        total = b * n
        step = ctx.engine.batch_size
        # hashed once per call; a text's key is read up to its last token, so the pads of its batch do not move it
        own = text_positions(ctx.adapter, x)
        keys = None if given is not None else torch.tensor(row_keys(x, own), dtype=torch.int64)
        sequence = reads_sequence(ctx)
        for s in range(0, total, step):  # batch_size (row, draw) pairs at a time, each drawn once
            idx = torch.arange(s, min(s + step, total))
            rows, ks = idx // n, idx % n
            d = self._draws(rows, ks, x, given, keys)
            xs = x[rows.to(x.device)] + (d if where is None else d * where[rows.to(x.device)])
            if self.skip_label_change:  # the predicted class of each perturbed input: one more pass of its rows
                pred[rows, ks] = ctx.engine.forward(xs).argmax(1).cpu()
            tgt = ctx.target.fn if ctx.target.fn is not None else ctx.target.index[rows]
            att = fn(ctx.adapter, xs, tgt, None, rows=rows, n_rows=b).attributions
            pooled_layout = x.ndim == 4 or (ctx.signal and x.ndim == 3)  # images, 1-D signals
            if pooled_layout and att.ndim == x.ndim and a0.shape[1] == att[0, 0].numel() != att[0].numel():
                att = att.sum(1)  # a channel-pooled explanation (B, 1, H, W), (B, L): the new maps pooled alike
            elif sequence and att.ndim == 3 and a0.shape[1] == att.shape[1] != att[0].numel():
                att = att.sum(2)  # one value per time step of a sequence (B, T), to_map()'s: pooled alike
            att = att.reshape(rows.shape[0], -1).to(torch.float64).cpu()
            if att.shape[1] != a0.shape[1]:
                raise InvalidInputError(
                    f"the explainer returned {att.shape[1]} values per row but the explanation has {a0.shape[1]}."
                )
            sens[rows, ks] = (att - a0[rows]).norm(dim=1) / denom[rows]
        skipped = pred != pred0.view(-1, 1) if self.skip_label_change else torch.zeros(b, n, dtype=torch.bool)
        sens = torch.where(skipped, torch.full_like(sens, math.nan), sens)
        kept = torch.where(skipped, torch.full_like(sens, -math.inf), sens)
        score = kept.amax(1)
        score = torch.where(torch.isinf(score), torch.full_like(score, math.nan), score)
        return score, {"sensitivity": sens}, {"n_skipped": skipped.sum(1), "explainer": name}
