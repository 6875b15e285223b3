"""LIME (Ribeiro, Singh & Guestrin 2016): a locally weighted linear surrogate over interpretable features."""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar

import torch

from whybox.errors import InvalidParameterError, check_bool, did_you_mean
from whybox.explainers.perturbation._common import F64, RegionExplainer, _check_int, segment_mean
from whybox.masking.engine import MaskingEngine
from whybox.masking.fills import FILLS, FillLike
from whybox.models.targets import Target, TargetLike
from whybox.registry import EXPLAINERS

__all__ = [
    "SURROGATES",
    "Lime",
    "cosine_kernel",
    "lime_samples",
    "ridge_coef_sd",
    "weighted_lasso",
    "weighted_ridge",
]

SURROGATES = ("ridge", "lasso")


def lime_samples(m: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """``(n, m)`` bool coalitions as lime_image draws them: row 0 all ones (the original), then Bernoulli(0.5)."""
    z = torch.rand(n, m, generator=generator, dtype=F64) < 0.5
    z[0] = True
    return z


def cosine_kernel(z: torch.Tensor, kernel_width: float) -> torch.Tensor:
    """lime_image's weights ``exp(-d^2 / (2 w^2))`` with d the cosine distance from z to all-ones,
    ``1 - sqrt(|z| / M)`` (1 for the empty coalition). ``(n, M)`` -> ``(n,)`` float64."""
    d = 1.0 - (z.to(F64).sum(1) / z.shape[1]).sqrt()
    return torch.exp(-(d * d) / (2.0 * kernel_width**2))


def _center(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
    sw = w.sum()
    zm = (w @ z) / sw  # (M,)
    ym = (y @ w) / sw  # (B,)
    return z - zm, y - ym.view(-1, 1), zm, ym


def _fit_stats(
    z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, coef: torch.Tensor, zm: torch.Tensor, ym: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    intercept = ym - coef @ zm
    pred = intercept.view(-1, 1) + coef @ z.T
    ss_res = ((y - pred) ** 2) @ w
    ss_tot = ((y - ym.view(-1, 1)) ** 2) @ w
    # sklearn's weighted R² (r2_score, force_finite): a constant target scores 1 if fitted exactly, else 0
    r2 = torch.where(ss_tot > 0, 1 - ss_res / ss_tot.where(ss_tot > 0, torch.ones_like(ss_tot)), (ss_res == 0).to(F64))
    return intercept, r2, intercept + coef.sum(1)


def _row_gram(z: torch.Tensor) -> torch.Tensor | None:
    """``Z Zᵀ`` ``(n, n)`` float64 of a 0/1 design (LIME's coalitions) computed in float32, exactly: its entries
    are counts of at most M < 2^24, so every partial sum is an integer float32 holds (half the work of a float64
    product); None for any other design."""
    if z.dtype != torch.bool or z.shape[1] >= 1 << 24:
        return None
    zf = z.to(torch.float32)
    return (zf @ zf.T).to(F64)


def weighted_ridge(
    z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """min Σ_j w_j (y_j - β₀ - β·z_j)² + α‖β‖² for every row of ``y`` (sklearn ``Ridge(alpha)`` with
    ``sample_weight=w``), in float64.

    Parameters
    ----------
    z
        ``(n, M)`` design shared by the rows. y: ``(B, n)``; w: ``(n,)`` non-negative.

    Returns
    -------
    (coef ``(B, M)``, intercept ``(B,)``, weighted R² ``(B,)``, local prediction at z = 1 ``(B,)``).
    With ``alpha > 0`` the normal equations are positive definite and solved by Cholesky, on the smaller of the
    two Gram matrices: ``(AᵀA + αI) β = Aᵀr`` when n >= M, else ``β = Aᵀ(AAᵀ + αI)⁻¹ r`` (the same solution; on
    1,000 samples of 3,077 features 0.1 s where the augmented least squares took 5 s). With ``alpha = 0``, or a
    factorisation that fails, the augmented least-squares problem (minimum norm when rank deficient).
    """
    binary = z
    z, y, w = z.to(F64), y.to(F64), w.to(F64)
    zc, yc, zm, ym = _center(z, y, w)
    sw = w.sqrt().view(-1, 1)
    a, rhs = sw * zc, sw * yc.T
    n, m = a.shape
    coef = None
    if alpha > 0:
        if n >= m:
            chol, info = torch.linalg.cholesky_ex(a.T @ a + alpha * torch.eye(m, dtype=F64, device=z.device))
            if int(info) == 0:
                coef = torch.cholesky_solve(a.T @ rhs, chol).T
        else:
            zzt = _row_gram(binary)
            if zzt is not None:  # AAᵀ = S (Z - 1 zmᵀ)(Z - 1 zmᵀ)ᵀ S from the exact Z Zᵀ
                u = z @ zm
                gram = sw * (zzt - u.view(-1, 1) - u.view(1, -1) + zm @ zm) * sw.T
            else:
                gram = a @ a.T
            chol, info = torch.linalg.cholesky_ex(gram + alpha * torch.eye(n, dtype=F64, device=z.device))
            if int(info) == 0:
                coef = (a.T @ torch.cholesky_solve(rhs, chol)).T
    if coef is None:
        if alpha > 0:
            a = torch.cat([a, alpha**0.5 * torch.eye(m, dtype=F64, device=z.device)])
            rhs = torch.cat([rhs, torch.zeros(m, y.shape[0], dtype=F64, device=z.device)])
        driver = "gelsd" if a.device.type == "cpu" else None
        coef = torch.linalg.lstsq(a, rhs, driver=driver).solution.T
    return coef, *_fit_stats(z, y, w, coef, zm, ym)


def ridge_coef_sd(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, alpha: float) -> torch.Tensor:
    """Standard deviations of the :func:`weighted_ridge` coefficients (Visani et al.'s CSI), in float64.

    ``Var(β) = σ² (G + αI)⁻¹ G (G + αI)⁻¹`` with ``G = ZcᵀWZc`` and ``Zc`` the design centred on its weighted
    mean (the intercept is not penalised, as in the fit); under errors of variance ``σ² / w_j`` this is exact
    for the ridge estimator. ``σ²`` = weighted residual sum of squares ``Σ_j w_j r_j²`` of the unregularised
    weighted least-squares fit with intercept, divided by ``n - p`` (``p`` its numerical rank, intercept
    included: eigenvalues of ``X₁ᵀWX₁`` above ``1e-10`` times the largest).

    Everything is computed from two ``(M + 1)``-sized eigendecompositions and a few products with the ``(n, M)``
    design: cheap next to the ``n`` forward passes that produced ``y``.

    Parameters
    ----------
    z, y, w, alpha
        As :func:`weighted_ridge`: ``(n, M)``, ``(B, n)``, ``(n,)`` and the ridge strength.

    Returns
    -------
    ``(B, M)`` standard deviations; NaN for every coefficient of a fit with no residual degrees of freedom
    (``n <= p``). Directions with ``G + αI`` singular (``alpha = 0`` and a rank-deficient design) are left out,
    as a pseudo-inverse does.

    References
    ----------
    Visani et al., "Statistical stability indices for LIME", JORS 2022.
    """
    zzt = _row_gram(z) if z.shape[0] <= z.shape[1] + 1 else None
    z, y, w = z.to(F64), y.to(F64), w.to(F64)
    n, m = z.shape
    x1 = torch.cat([torch.ones(n, 1, dtype=F64, device=z.device), z], 1)  # (n, M + 1)
    if n <= m + 1:  # p <= n: read the rank from the smaller (n, n) Gram matrix, the same non-zero eigenvalues
        sw = w.sqrt().view(-1, 1)
        small = sw * (1.0 + zzt) * sw.T if zzt is not None else (sw * x1) @ (sw * x1).T  # X₁X₁ᵀ = 11ᵀ + ZZᵀ
        if int(torch.linalg.cholesky_ex(small).info) == 0:  # positive definite: rank n (LIME's random designs)
            rank = n
        else:
            lam_s = torch.linalg.eigvalsh(small)
            rank = int((lam_s > lam_s[-1].clamp_min(0) * 1e-10).sum())
        if n - rank <= 0:  # no residual degrees of freedom
            return torch.full((y.shape[0], m), float("nan"), dtype=F64, device=z.device)
    g1 = (x1.T * w) @ x1  # X₁ᵀWX₁
    lam, vec = torch.linalg.eigh(g1)
    ok = lam > lam[-1].clamp_min(0) * 1e-10
    dof = n - int(ok.sum())
    if dof <= 0 or m == 0:
        return torch.full((y.shape[0], m), float("nan"), dtype=F64, device=z.device)
    inv = torch.where(ok, 1.0 / torch.where(ok, lam, 1.0), 0.0)
    b = ((y * w) @ x1) @ vec * inv @ vec.T  # (B, M + 1): the unregularised WLS fit (pseudo-inverse)
    sigma2 = ((y - b @ x1.T) ** 2) @ w / dof  # (B,)
    gram = g1[1:, 1:] - torch.outer(g1[0, 1:], g1[0, 1:]) / g1[0, 0]  # ZcᵀWZc (Schur complement)
    mu, u = torch.linalg.eigh(gram)
    mu = mu.clamp_min(0)
    den = mu + alpha
    keep = den > mu[-1] * 1e-10 if alpha == 0 else den > 0
    shrink = torch.where(keep, mu / torch.where(keep, den, 1.0) ** 2, 0.0)  # eigenvalues of (G+αI)⁻¹G(G+αI)⁻¹
    var = (u * u) @ shrink  # (M,) its diagonal
    return (sigma2.view(-1, 1) * var).sqrt()


def weighted_lasso(
    z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, alpha: float, *, max_iter: int = 10_000, tol: float = 1e-12
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """min (1 / (2 Σw)) Σ_j w_j (y_j - β₀ - β·z_j)² + α‖β‖₁ (sklearn ``Lasso(alpha)`` with ``sample_weight``),
    by cyclic coordinate descent on the weighted Gram matrix, all rows at once. Returns as :func:`weighted_ridge`.
    """
    z, y, w = z.to(F64), y.to(F64), w.to(F64)
    zc, yc, zm, ym = _center(z, y, w)
    sw = w.sum()
    gram = (zc.T * w) @ zc / sw  # (M, M)
    c = (yc * w) @ zc / sw  # (B, M)
    m = z.shape[1]
    coef = torch.zeros_like(c)
    diag = gram.diagonal()
    scale = c.abs().amax().clamp_min(1e-300)
    for _ in range(max_iter):
        step = torch.zeros((), dtype=F64)
        for k in range(m):
            if diag[k] <= 0:
                continue
            old = coef[:, k].clone()
            rho = c[:, k] - coef @ gram[:, k] + old * diag[k]
            coef[:, k] = torch.sign(rho) * (rho.abs() - alpha).clamp_min(0) / diag[k]
            step = torch.maximum(step, (coef[:, k] - old).abs().amax())
        if step <= tol * scale:
            break
    return coef, *_fit_stats(z, y, w, coef, zm, ym)


@EXPLAINERS.register("lime")
class Lime(RegionExplainer):
    """Fit g(z) = β₀ + β·z to f_c on random coalitions z of the features, weighted by closeness to x.

    Parameters
    ----------
    n_samples
        Coalitions per row, the original (all features on) included; each but the original costs one
        forward pass.
    kernel_width
        w in the weights exp(-d²/(2w²)), d = cosine distance from z to all-ones (lime_image's kernel).
    surrogate
        ``"ridge"`` (lime's ``Ridge(alpha=1)``) or ``"lasso"`` (captum's ``SkLearnLasso(alpha=0.01)``).
    alpha
        Regularisation strength; ``None`` = 1.0 for ridge, 0.01 for lasso (sklearn's scaling of each).
    fill
        ``"auto"`` = ``"segment_mean"`` on images (absent superpixels take their mean colour, lime_image's
        ``hide_color=None``) and zero otherwise; or any fill of the perturbation family. An image whose segments
        each hold one value (SLIC's single pixels on an 8 x 8 digit), which its segment means would leave as it
        is, gets the zero fill under ``"auto"`` (``meta["fill"]`` then names each row's fill); an explicit
        ``"segment_mean"`` there warns.
    features
        See :class:`RegionExplainer`; ``"auto"`` = SLIC superpixels on images (``"quickshift"`` gives
        lime_image's own segmentation, which finds a single segment on very small images).
    score
        ``None`` (the default): the softmax probability (``"prob"``, the paper's), or the raw score of a model with
        one output (a regressor, as lime's ``mode="regression"``).
    keep_null
        ``True`` (lime's): features equal to the fill everywhere (a digit's black background) stay in the surrogate
        and its kernel. ``False``: they are left out and get 0, as the Shapley methods do; the text and generation
        entry points (:func:`~whybox.explain_text`, ``attribute_generation``) use it, so the pads a batch adds to a
        text (or the fixed future of a generation step) do not change its weights.

    Shapes
    ------
    inputs ``(B, *S)`` -> the coefficients painted on the groups: ``(B, 1, H, W)`` on images, ``(B, F)`` on
    rows. meta: ``values`` ``(B, M)`` (β), ``intercept``, ``r2`` (weighted R² of the surrogate) and
    ``local_pred`` (g at the original) ``(B,)``; with the ridge surrogate also ``coef_sd`` ``(B, M)``, the
    standard deviation of each β from the same fit (:func:`ridge_coef_sd`; 0, like β, for ids that are not
    features of a row), which the ``stability`` metric turns into Visani's CSI. The lasso surrogate reports no
    ``coef_sd``: its coefficients have no closed-form variance. Cost: ``B * n_samples`` forward passes.

    References
    ----------
    Ribeiro, Singh & Guestrin, "Why Should I Trust You?: Explaining the Predictions of Any Classifier", KDD 2016.
    """

    fill_options: ClassVar[tuple[str, ...]] = (*FILLS, "auto", "segment_mean")
    drops_null_features = False  # lime keeps every feature in the surrogate (keep_null=False: left out)

    def __init__(
        self,
        model: Any,
        *,
        n_samples: int = 1000,
        kernel_width: float = 0.25,
        surrogate: str = "ridge",
        alpha: float | None = None,
        fill: FillLike = "auto",
        score: str | None = None,
        keep_null: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, fill=fill, score=score, **kwargs)
        self.keep_null = check_bool("keep_null", keep_null)
        _check_int("n_samples", n_samples, 2)
        if isinstance(kernel_width, bool) or not isinstance(kernel_width, (int, float)) or not kernel_width > 0:
            raise InvalidParameterError(f"kernel_width must be a positive number; got {kernel_width!r}.")
        if surrogate not in SURROGATES:
            raise InvalidParameterError(
                f"surrogate must be one of {SURROGATES}; got {surrogate!r}.{did_you_mean(surrogate, SURROGATES)}"
            )
        if alpha is None:
            alpha = 1.0 if surrogate == "ridge" else 0.01
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha < math.inf:
            raise InvalidParameterError(
                f"alpha must be a finite number >= 0 (the surrogate's penalty: 1.0 for ridge, 0.01 for lasso by "
                f"default); got {alpha!r}."
            )
        self.n_samples = n_samples
        self.kernel_width = float(kernel_width)
        self.surrogate = surrogate
        self.alpha = float(alpha)

    def _drops_null(self) -> bool:
        return not self.keep_null

    def _explain(
        self, x: torch.Tensor, target: TargetLike, engine: MaskingEngine, n_backward: list[int]
    ) -> tuple[torch.Tensor, Target, dict[str, Any]]:
        groups = self._groups(x)
        fill = self.fill
        auto = isinstance(fill, str) and fill == "auto"
        if auto:
            fill = "segment_mean" if x.ndim == 4 else "zero"
        row_fills = None
        if isinstance(fill, str) and fill == "segment_mean":
            fills = segment_mean(x, groups)
            inert = (fills == x).flatten(1).all(1)  # every segment one value: its mean changes nothing
            if auto and bool(inert.any()):
                fills = torch.where(inert.view(-1, *(1,) * (x.ndim - 1)), self._fills(x, "zero"), fills)
                row_fills = ["zero" if i else "segment_mean" for i in inert.tolist()]
            elif bool(inert.any()):
                warnings.warn(
                    f"lime: fill='segment_mean' leaves rows {inert.nonzero().flatten().tolist()} exactly as they "
                    "are (each of their segments holds one value, e.g. single-pixel superpixels on a small image), "
                    "so every coefficient is 0; pass another fill (fill='zero') or larger segments "
                    "(n_segments=, features='grid').",
                    stacklevel=3,
                )
        else:
            fills = self._fills(x, fill)
        regions = self._regions(x, fills.unsqueeze(1), groups)
        b, n = x.shape[0], self.n_samples
        self._check_cost(b * n, f"{b} rows x {n} samples")
        tgt, fx = self._clean(x, target, engine)
        mmax = max(regions.sizes)
        values = torch.zeros(b, mmax, dtype=F64, device=x.device)
        ridge = self.surrogate == "ridge"
        sds = torch.zeros(b, mmax, dtype=F64, device=x.device)
        intercept, r2, local = (torch.zeros(b, dtype=F64, device=x.device) for _ in range(3))
        fit = weighted_ridge if ridge else weighted_lasso
        zs = {m: lime_samples(m, n, self.row_generator()).to(x.device) for m in set(regions.sizes)}
        designs = {m: (n - 1, lambda ks, z=z: z[ks + 1]) for m, z in zs.items()}  # z[0], the original, is f(x)
        scores = self._region_scores(engine, x, fills.unsqueeze(1), tgt, regions, designs)
        for m, s in scores.items():
            rows = regions.by_size()[m]
            z = zs[m]
            y = torch.cat([fx[rows].view(-1, 1), s], 1)
            kw = cosine_kernel(z, self.kernel_width)
            coef, b0, rr, lp = fit(z, y, kw, self.alpha)
            values[rows, :m] = coef
            if ridge:
                sds[rows, :m] = ridge_coef_sd(z, y, kw, self.alpha)
            intercept[rows], r2[rows], local[rows] = b0, rr, lp
        attr, full = regions.paint(values)
        meta = {
            "values": full,
            "intercept": intercept,
            "r2": r2,
            "local_pred": local,
            "n_features": regions.sizes,
            "kept_features": regions.kept(),
        }
        if row_fills is not None:
            meta["fill"] = row_fills
        if ridge:
            meta["coef_sd"] = regions.paint(sds)[1]
        return attr.to(x.dtype), tgt, meta
