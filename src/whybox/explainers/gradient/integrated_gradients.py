"""Integrated Gradients (Sundararajan, Taly & Yan 2017) with exact quadrature rules and baselines."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from whybox.errors import InvalidParameterError
from whybox.explainers.base import GradientExplainer
from whybox.masking.engine import MaskingEngine
from whybox.masking.fills import make_fill
from whybox.models.targets import Target, TargetLike, apply_score_space, resolve_target
from whybox.registry import EXPLAINERS

__all__ = ["RULES", "IntegratedGradients", "quadrature"]

RULES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "trapezoid", "riemann_trapezoid")
BASELINES = ("zero", "blur", "uniform", "gaussian", "mean")


def quadrature(rule: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes ``alpha`` in [0, 1] and weights (float64) of an n-point rule for the integral over [0, 1].

    ``trapezoid`` is the correct composite rule (weights sum to 1); ``riemann_trapezoid`` reproduces
    captum's rule of that name, whose weights sum to (n - 1) / n.
    """
    if rule not in RULES:
        raise InvalidParameterError(f"method must be one of {RULES}; got {rule!r}.")
    min_n = 2 if rule in ("trapezoid", "riemann_trapezoid") else 1
    if isinstance(n, bool) or not isinstance(n, int) or n < min_n:
        raise InvalidParameterError(f"n_steps must be an int >= {min_n} for method={rule!r}; got {n!r}.")
    k = np.arange(n, dtype=np.float64)
    if rule == "gausslegendre":
        t, w = np.polynomial.legendre.leggauss(n)
        a, w = (t + 1) / 2, w / 2
    elif rule == "riemann_left":
        a, w = k / n, np.full(n, 1 / n)
    elif rule == "riemann_right":
        a, w = (k + 1) / n, np.full(n, 1 / n)
    elif rule == "riemann_middle":
        a, w = (k + 0.5) / n, np.full(n, 1 / n)
    elif rule == "trapezoid":
        a = k / (n - 1)
        w = np.full(n, 1 / (n - 1))
        w[0] = w[-1] = 1 / (2 * (n - 1))
    else:  # captum's riemann_trapezoid
        a = k / (n - 1)
        w = np.full(n, 1 / n)
        w[0] = w[-1] = 1 / (2 * n)
    return torch.from_numpy(a), torch.from_numpy(w)


@EXPLAINERS.register("integrated_gradients")
class IntegratedGradients(GradientExplainer):
    """IG_i = (x_i - x'_i) * integral of d f_c(x' + a (x - x')) / d x_i over a in [0, 1].

    Parameters
    ----------
    n_steps
        Quadrature points (50, as captum).
    method
        ``"gausslegendre"`` (default, exact for polynomials of degree < 2n), ``"riemann_left"``,
        ``"riemann_right"``, ``"riemann_middle"``, ``"trapezoid"`` (correct composite rule) or
        ``"riemann_trapezoid"`` (captum's, weights summing to (n-1)/n).
    baseline
        ``"zero"``, ``"blur"`` (Gaussian, ``sigma`` pixels), ``"uniform"`` (U(min x, max x), seeded),
        ``"gaussian"`` (x + N(0, sigma^2), seeded), ``"mean"``, a number, or a tensor broadcastable to the inputs.
    sigma
        For the blur and gaussian baselines.

    Notes
    -----
    Path points of all rows are chunked by ``batch_size`` (internal batching). ``meta["delta"]`` is
    the signed completeness gap per row, sum(IG) - (f(x) - f(x')), and ``meta["delta_rel"]`` its size
    relative to |f(x) - f(x')|.

    Shapes
    ------
    inputs ``(B, *S)`` -> attributions ``(B, *S)``; n_steps + 2 forwards and n_steps backwards per row.
    """

    def __init__(
        self,
        model: Any,
        *,
        n_steps: int = 50,
        method: str = "gausslegendre",
        baseline: str | float | torch.Tensor = "zero",
        sigma: float = 5.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        quadrature(method, n_steps)  # validates both
        if isinstance(baseline, str) and baseline not in BASELINES:
            raise InvalidParameterError(f"baseline must be one of {BASELINES}, a number or a tensor; got {baseline!r}.")
        if sigma < 0:
            raise InvalidParameterError(f"sigma must be >= 0; got {sigma!r}.")
        self.n_steps = n_steps
        self.method = method
        self.baseline = baseline
        self.sigma = float(sigma)

    def _baseline(self, x: torch.Tensor) -> torch.Tensor:
        gen = self.generator()
        if self.baseline == "gaussian":
            noise = torch.randn(x.shape[1:], generator=gen, dtype=torch.float64).to(x.device, x.dtype)
            return x + self.sigma * noise
        if self.baseline == "uniform":
            # one draw per row from the row's own generator state: batching does not change draws
            return torch.cat(
                [make_fill("uniform", x[i : i + 1], generator=self.generator()) for i in range(x.shape[0])]
            )
        return make_fill(self.baseline, x, sigma=self.sigma)

    def _explain(
        self, x: torch.Tensor, target: TargetLike, engine: MaskingEngine, n_backward: list[int]
    ) -> tuple[torch.Tensor, Target, dict[str, Any]]:
        b = x.shape[0]
        base = self._baseline(x)
        ends = engine.forward(torch.cat([x, base]))  # f(x) and f(x'): target resolution and the delta
        tgt = resolve_target(target, ends[:b])
        both = torch.arange(2 * b, device=x.device) % b
        fx, fb = tgt.select(apply_score_space(ends, self.score), both).to(torch.float64).view(2, b)
        alphas, weights = quadrature(self.method, self.n_steps)
        n = self.n_steps
        total_g = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
        diff = x - base
        # row-major path points (row b, step k), generated chunk by chunk: memory ~ batch_size rows
        step = self.batch_size
        for s in range(0, b * n, step):
            idx = torch.arange(s, min(s + step, b * n), device=x.device)
            rows, ks = idx // n, idx % n
            a = alphas.to(x.device, x.dtype)[ks].view(-1, *([1] * (x.ndim - 1)))
            pts = base[rows] + a * diff[rows]
            g, _, _ = self._grads(pts, rows, tgt, engine, n_backward)
            w = weights.to(x.device)[ks].view(-1, *([1] * (x.ndim - 1)))
            total_g.index_add_(0, rows, g.to(torch.float64) * w)
        attr64 = diff.to(torch.float64) * total_g
        delta = attr64.reshape(b, -1).sum(1) - (fx - fb)
        delta_rel = delta.abs() / (fx - fb).abs().clamp_min(1e-12)
        meta = {"delta": delta.cpu(), "delta_rel": delta_rel.cpu(), "f_x": fx.cpu(), "f_baseline": fb.cpu()}
        return attr64.to(x.dtype), tgt, meta
