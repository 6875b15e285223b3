"""Every CAM variant against a slow reference written from its paper (ATTRIBUTION.md §2).

The references take the layer's activations A and gradients g = ∂f_c/∂A from their own forward hook and
``torch.autograd.grad`` (no whybox code), then loop over channels and positions in float64 numpy. They share
nothing with the vectorised implementation: not the tap, not the formulas, not the bilinear resize (written
out below, half-pixel centres or corner-aligned) nor the scaling. Models and inputs are float64, so whybox
must agree to 1e-8, both on the raw layer-resolution map (``normalize="none", upsample=False``) and on the
final map (ReLU -> bilinear upsample to H x W -> per-row min-max or max scaling).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from whybox.explainers.cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM, XGradCAM

from ._models import DigitsCNN, SmallCNN, build, images

F64 = torch.float64
ATOL = 1e-8


# ---------------------------------------------------------------- plain-torch taps (float64)
def acts_and_grads(model: nn.Module, layer: str, x: torch.Tensor, target: list[int]):
    """A (B, K, h, w), g = ∂f_c/∂A (B, K, h, w) and the scores S = f_c (B,), as numpy float64."""
    store: list[torch.Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: store.append(o))
    try:
        out = model(x)
    finally:
        handle.remove()
    (a,) = store
    s = out[torch.arange(x.shape[0]), torch.tensor(target)]
    (g,) = torch.autograd.grad(s.sum(), a)  # rows do not interact: d(Σ_b S_b)/dA_b = dS_b/dA_b
    return a.detach().numpy(), g.numpy(), s.detach().numpy()


# ---------------------------------------------------------------- per-row references, loops only
def ref_gradcam(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Selvaraju et al. 2017: w_k = (1/Z) Σ_ij g_ij^k, L = Σ_k w_k A^k (ReLU applied by the pipeline)."""
    k_, h, w = a.shape
    out = np.zeros((h, w))
    for k in range(k_):
        wk = 0.0
        for i in range(h):
            for j in range(w):
                wk += g[k, i, j]
        wk /= h * w
        for i in range(h):
            for j in range(w):
                out[i, j] += wk * a[k, i, j]
    return out


def ref_gradcam_pp(a: np.ndarray, d1: np.ndarray, d2: np.ndarray, d3: np.ndarray) -> np.ndarray:
    """Chattopadhay et al. 2018, eq. 19 and 7, with the derivatives of Y = exp(S) passed in:
    α_ij^k = d2 / (2 d2 + Σ_ab A_ab^k d3), w_k = Σ_ij α_ij^k ReLU(d1_ij^k), L = Σ_k w_k A^k.

    Where ReLU(d1) = 0 the position contributes nothing whatever α is (this also covers 0/0 at g = 0 and the
    zero denominator at g = -2/ΣA < 0), so those positions are skipped.
    """
    k_, h, w = a.shape
    out = np.zeros((h, w))
    for k in range(k_):
        total = 0.0
        for i in range(h):
            for j in range(w):
                total += a[k, i, j]
        wk = 0.0
        for i in range(h):
            for j in range(w):
                if d1[k, i, j] > 0:
                    alpha = d2[k, i, j] / (2 * d2[k, i, j] + total * d3[k, i, j])
                    wk += alpha * d1[k, i, j]
        for i in range(h):
            for j in range(w):
                out[i, j] += wk * a[k, i, j]
    return out


def ref_xgradcam(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Fu et al. 2020: w_k = Σ_ij (A_ij^k / Σ_ab A_ab^k) g_ij^k. A channel with Σ A = 0 (all zero after a
    ReLU) adds w_k·0 = 0 to the map whatever w_k is, so it is skipped."""
    k_, h, w = a.shape
    out = np.zeros((h, w))
    for k in range(k_):
        total = sum(a[k, i, j] for i in range(h) for j in range(w))
        if total == 0:
            continue
        wk = sum(a[k, i, j] / total * g[k, i, j] for i in range(h) for j in range(w))
        for i in range(h):
            for j in range(w):
                out[i, j] += wk * a[k, i, j]
    return out


def ref_layercam(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Jiang et al. 2021: L_ij = Σ_k ReLU(g_ij^k) A_ij^k (per-position weights)."""
    k_, h, w = a.shape
    out = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            for k in range(k_):
                out[i, j] += max(g[k, i, j], 0.0) * a[k, i, j]
    return out


def ref_hirescam(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Draelos & Carin 2020: L_ij = Σ_k g_ij^k A_ij^k (no averaging of the gradients)."""
    k_, h, w = a.shape
    out = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            for k in range(k_):
                out[i, j] += g[k, i, j] * a[k, i, j]
    return out


def relu(m: np.ndarray) -> np.ndarray:
    out = m.copy()
    for idx in np.ndindex(*m.shape):
        out[idx] = max(m[idx], 0.0)
    return out


def layercam_tanh(m: np.ndarray, gamma: float) -> np.ndarray:
    """Layer-CAM's rescaling for shallow layers: tanh(γ · L / max L) on the (ReLU'd) map."""
    peak = max(m[idx] for idx in np.ndindex(*m.shape))
    if peak <= 0:
        return m
    out = m.copy()
    for idx in np.ndindex(*m.shape):
        out[idx] = math.tanh(gamma * m[idx] / peak)
    return out


def bilinear(m: np.ndarray, size: tuple[int, int], align_corners: bool) -> np.ndarray:
    """Bilinear resize of one (h, w) map. Half-pixel centres (OpenCV INTER_LINEAR, align_corners=False):
    src = (dst + 0.5)·in/out - 0.5, clamped at 0; corner-aligned: src = dst·(in - 1)/(out - 1)."""
    h, w = m.shape
    big_h, big_w = size

    def src(d: int, n_in: int, n_out: int) -> tuple[int, int, float]:
        if align_corners:
            s = d * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        else:
            s = max((d + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = math.floor(s)
        return i0, min(i0 + 1, n_in - 1), s - i0

    out = np.empty(size)
    for yy in range(big_h):
        y0, y1, ly = src(yy, h, big_h)
        for xx in range(big_w):
            x0, x1, lx = src(xx, w, big_w)
            top = (1 - lx) * m[y0, x0] + lx * m[y0, x1]
            bottom = (1 - lx) * m[y1, x0] + lx * m[y1, x1]
            out[yy, xx] = (1 - ly) * top + ly * bottom
    return out


def scale(m: np.ndarray, how: str) -> np.ndarray:
    """Per-map scaling; a constant map (range ≤ 1e-12·max(1, |max|)) becomes zeros, never NaN (§2.0 step 5)."""
    hi, lo = float(m.max()), float(m.min())
    tol = 1e-12 * max(1.0, abs(hi))
    if how == "minmax":
        return np.zeros_like(m) if hi - lo <= tol else (m - lo) / (hi - lo)
    if how == "max":
        return np.zeros_like(m) if abs(hi) <= tol else m / hi
    return m


def finish(maps: list[np.ndarray], size: tuple[int, int], how: str) -> np.ndarray:
    """ReLU'd layer maps -> upsampled, min-max each when several layers, averaged, scaled."""
    ups = [bilinear(m, size, align_corners=False) for m in maps]
    if len(ups) > 1:
        ups = [scale(u, "minmax") for u in ups]
    return scale(sum(ups) / len(ups), how)


# ---------------------------------------------------------------- cases
CASES = {
    # name: (model builder, input shape, targets, layers)
    "small": (lambda: build(SmallCNN, seed=30, dtype=F64), (2, 3, 16, 16), [2, 0], ("act2", "pool2")),
    "small_tanh": (lambda: build(SmallCNN, seed=31, dtype=F64, act="tanh"), (2, 3, 16, 16), [1, 4], ("act2",)),
    "digits": (lambda: build(DigitsCNN, seed=32, dtype=F64), (3, 1, 8, 8), [3, 7, 1], ("act2", "pool")),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request: pytest.FixtureRequest):
    make, shape, target, layers = CASES[request.param]
    return make(), images(shape, seed=33, dtype=F64), target, layers


GRAD_VARIANTS = {
    "gradcam": (GradCAM, {}),
    "gradcam_pp": (GradCAMPlusPlus, {}),
    "xgradcam": (XGradCAM, {}),
    "layercam": (LayerCAM, {}),
    "layercam_gamma2": (LayerCAM, {"gamma": 2.0}),
    "hirescam": (HiResCAM, {}),
}


def reference_row(variant: str, a: np.ndarray, g: np.ndarray, s: float) -> np.ndarray:
    """The variant's layer-resolution map after ReLU (and Layer-CAM's tanh), for one row."""
    if variant == "gradcam":
        return relu(ref_gradcam(a, g))
    if variant == "gradcam_pp":
        # the exp-score shortcut: Y = exp(S), S piecewise linear in A ⇒ ∂Y/∂A = e^S g, ∂²Y = e^S g², ∂³Y = e^S g³.
        # L is then e^S times whybox's map (which drops the positive factor): divide it back out.
        e = math.exp(s)
        return relu(ref_gradcam_pp(a, e * g, e * g**2, e * g**3)) / e
    if variant == "xgradcam":
        return relu(ref_xgradcam(a, g))
    if variant == "layercam":
        return relu(ref_layercam(a, g))
    if variant == "layercam_gamma2":
        return layercam_tanh(relu(ref_layercam(a, g)), 2.0)
    assert variant == "hirescam"
    return relu(ref_hirescam(a, g))


@pytest.mark.parametrize("variant", list(GRAD_VARIANTS))
def test_gradient_cams_match_paper_reference(case, variant: str) -> None:
    model, x, target, layers = case
    cls, kwargs = GRAD_VARIANTS[variant]
    t = torch.tensor(target)
    size = tuple(x.shape[-2:])
    refs = {}
    for layer in layers:
        a, g, s = acts_and_grads(model, layer, x, target)
        refs[layer] = [reference_row(variant, a[b], g[b], float(s[b])) for b in range(x.shape[0])]
        # before scaling: the raw (ReLU'd) layer-resolution map
        raw = cls(model, layer=layer, normalize="none", upsample=False, **kwargs).explain(x, t).attributions
        assert raw.shape == (x.shape[0], 1, *a.shape[-2:])
        ref = np.stack(refs[layer])[:, None]
        assert np.abs(ref).max() > 1e-3, "reference map is ~0: the comparison would be vacuous"
        np.testing.assert_allclose(raw.numpy(), ref, atol=ATOL, rtol=0, err_msg=f"{variant} raw at {layer}")
        # after: ReLU -> bilinear (half-pixel) to H x W -> per-row scaling
        for how in ("minmax", "max"):
            full = cls(model, layer=layer, normalize=how, **kwargs).explain(x, t).attributions
            expected = np.stack([finish([m], size, how) for m in refs[layer]])[:, None]
            np.testing.assert_allclose(full.numpy(), expected, atol=ATOL, rtol=0, err_msg=f"{variant} {how} {layer}")
    if len(layers) > 1:
        # several layers: min-max each upsampled map, average, scale again (the gradient at the earlier layer
        # is the total derivative, computed here by a separate autograd call)
        both = cls(model, layer=list(layers), **kwargs).explain(x, t).attributions
        expected = np.stack([finish([refs[lay][b] for lay in layers], size, "minmax") for b in range(x.shape[0])])
        np.testing.assert_allclose(both.numpy(), expected[:, None], atol=ATOL, rtol=0, err_msg=f"{variant} multi")


# ---------------------------------------------------------------- Grad-CAM++ with real higher derivatives
def test_gradcam_pp_general_alpha_with_autograd_derivatives() -> None:
    """The general α formula with ∂²Y/∂(A_ij^k)² and ∂³Y/∂(A_ij^k)³ of Y = exp(S) taken by autograd (one
    position at a time), not by the closed-form shortcut. The head after the layer is ReLU/linear, so S is
    piecewise linear in A and the shortcut is exact: whybox's map = (general-formula map) / e^S."""
    model = build(DigitsCNN, seed=34, dtype=F64)
    x = images((2, 1, 8, 8), seed=35, dtype=F64)
    target = [5, 2]
    layer = "pool"  # 8 x 4 x 4 = 128 positions per row
    store: list[torch.Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: store.append(o))
    try:
        out = model(x)
    finally:
        handle.remove()
    (a,) = store
    s = out[torch.arange(2), torch.tensor(target)]
    ours = GradCAMPlusPlus(model, layer=layer, normalize="none", upsample=False).explain(x, torch.tensor(target))
    for b in range(2):
        y = torch.exp(s[b])
        (d1,) = torch.autograd.grad(y, a, create_graph=True)
        d2 = torch.zeros_like(a[b])
        d3 = torch.zeros_like(a[b])
        for idx in np.ndindex(*a.shape[1:]):
            (h2,) = torch.autograd.grad(d1[b][idx], a, create_graph=True)
            second = h2[b][idx]
            d2[idx] = second.detach()
            if second.requires_grad:
                (h3,) = torch.autograd.grad(second, a, retain_graph=True, allow_unused=True)
                d3[idx] = 0.0 if h3 is None else h3[b][idx]
        an = a[b].detach().numpy()
        ref = relu(ref_gradcam_pp(an, d1[b].detach().numpy(), d2.numpy(), d3.numpy()))
        assert ref.max() > 0
        np.testing.assert_allclose(ours.attributions[b, 0].numpy() * float(y.detach()), ref, atol=ATOL, rtol=1e-10)


# ---------------------------------------------------------------- Score-CAM
def ref_scorecam_row(
    model: nn.Module,
    x: torch.Tensor,
    c: int,
    a: np.ndarray,
    *,
    score: str,
    weighting: str,
    align_corners: bool,
    baseline: bool,
) -> np.ndarray:
    """Wang et al. 2020 for one row: H^k = Up(A^k), Ĥ^k = (H^k - min)/(max - min + 1e-8), s_k = f_c(x ⊙ Ĥ^k)
    (minus f_c(0) when ``baseline``, as in the paper), α = softmax_k(s) or s; L = ReLU(Σ_k α_k A^k)."""
    k_ = a.shape[0]
    size = tuple(x.shape[-2:])

    def f(inp: np.ndarray) -> float:
        with torch.no_grad():
            logits = model(torch.from_numpy(inp)[None])[0].numpy()
        if score == "logit":
            return float(logits[c])
        e = [math.exp(v - logits.max()) for v in logits]
        return e[c] / sum(e)

    xn = x.numpy()
    s = []
    for k in range(k_):
        up = bilinear(a[k], size, align_corners)
        lo, hi = up.min(), up.max()
        mask = (up - lo) / (hi - lo + 1e-8)
        s.append(f(xn * mask[None]) - (f(np.zeros_like(xn)) if baseline else 0.0))
    if weighting == "softmax":
        top = max(s)
        e = [math.exp(v - top) for v in s]
        alpha = [v / sum(e) for v in e]
    else:
        alpha = s
    out = np.zeros(a.shape[1:])
    for k in range(k_):
        out += alpha[k] * a[k]
    return relu(out)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize(("score", "weighting"), [("logit", "softmax"), ("prob", "softmax"), ("prob", "raw")])
def test_scorecam_matches_paper_reference(case, score: str, weighting: str, align_corners: bool) -> None:
    """Both weightings. With the channel softmax the paper's baseline f_c(x_b) is a constant shift of every
    s_k and cancels, so the reference subtracts it (paper) and whybox does not (no baseline): they must agree.
    With raw weights whybox follows the authors' official code, which has no baseline either, and so does the
    reference there (the paper's subtraction would shift every α_k by f_c(0): a different map, by design)."""
    model, x, target, layers = case
    layer = layers[-1]
    a, _, _ = acts_and_grads(model, layer, x, target)
    refs = [
        ref_scorecam_row(
            model,
            x[b],
            target[b],
            a[b],
            score=score,
            weighting=weighting,
            align_corners=align_corners,
            baseline=weighting == "softmax",
        )
        for b in range(x.shape[0])
    ]
    kw = {"layer": layer, "score": score, "weighting": weighting, "mask_align_corners": align_corners}
    t = torch.tensor(target)
    raw = ScoreCAM(model, normalize="none", upsample=False, batch_size=5, **kw).explain(x, t).attributions
    ref = np.stack(refs)[:, None]
    assert np.abs(ref).max() > 1e-6
    np.testing.assert_allclose(raw.numpy(), ref, atol=ATOL, rtol=0)
    full = ScoreCAM(model, **kw).explain(x, t).attributions
    expected = np.stack([finish([m], tuple(x.shape[-2:]), "minmax") for m in refs])[:, None]
    np.testing.assert_allclose(full.numpy(), expected, atol=ATOL, rtol=0)
