"""Sparseness (Gini) and complexity (entropy): hand-computed values, NaN policy, and Quantus agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import whybox
from whybox.metrics.complexity import entropy, gini


def test_gini_known_values() -> None:
    d = 8
    one_hot = torch.zeros(1, d)
    one_hot[0, 3] = -2.0  # |.| first
    assert gini(one_hot).item() == pytest.approx((d - 1) / d)
    assert gini(torch.full((1, d), 0.3)).item() == pytest.approx(0.0, abs=1e-15)
    assert gini(torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0]])).item() == pytest.approx(0.6)
    assert math.isnan(gini(torch.zeros(1, 4)).item())


def test_entropy_known_values() -> None:
    assert entropy(torch.ones(1, 6)).item() == pytest.approx(math.log(6))
    assert entropy(torch.tensor([[0.0, 5.0, 0.0]])).item() == pytest.approx(0.0)
    assert entropy(torch.tensor([[1.0, 1.0, 2.0]])).item() == pytest.approx(1.5 * math.log(2))
    assert math.isnan(entropy(torch.zeros(1, 3)).item())


def test_metrics_read_flattened_attributions_without_a_model_and_leave_them_unchanged() -> None:
    a = torch.tensor([[[[0.0, 0.0], [0.0, 1.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    keep = a.clone()
    x = torch.zeros(2, 1, 2, 2)
    s = whybox.evaluate(None, x, a, "sparseness")
    c = whybox.evaluate(None, x, a, "complexity")
    assert s.scores.tolist() == pytest.approx([0.75, 0.0]) and s.higher_is_better is True
    assert c.scores.tolist() == pytest.approx([0.0, math.log(4)]) and c.higher_is_better is False
    assert torch.equal(a, keep)


@pytest.mark.filterwarnings("ignore::UserWarning:quantus")
def test_sparseness_and_complexity_agree_with_quantus(quantus) -> None:
    """Quantus adds 1e-7 to every |a| in Sparseness and computes -sum p ln(p + 1e-12): agreement to ~1e-6."""
    g = torch.Generator().manual_seed(0)
    a = torch.rand(4, 1, 6, 6, generator=g) + 0.05
    x = torch.rand(4, 1, 6, 6, generator=g)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 2)).eval()
    kw = {
        "model": model,
        "x_batch": x.numpy(),
        "y_batch": np.zeros(4, dtype=int),
        "a_batch": a.numpy(),
        "channel_first": True,
    }
    q_s = quantus.Sparseness(abs=True, normalise=False, disable_warnings=True)(**kw)
    q_c = quantus.Complexity(abs=True, normalise=False, disable_warnings=True)(**kw)
    s = whybox.evaluate(None, x, a, "sparseness").scores.numpy()
    c = whybox.evaluate(None, x, a, "complexity").scores.numpy()
    np.testing.assert_allclose(s, np.asarray(q_s), atol=1e-5)
    np.testing.assert_allclose(c, np.asarray(q_c), atol=1e-5)


def test_gini_and_entropy_equal_their_definitions_with_and_without_zeros() -> None:
    """Oracles: scipy's entropy of |a| (0 ln 0 = 0) and the Gini sum over the ascending sort, on maps without a
    zero (entropy's one-log path), with zeros and with an all-zero row (its shares path: NaN), at scales from
    1e-30 to 1e30 and in float32 and float64."""
    from scipy.stats import entropy as sp_entropy

    rng = np.random.default_rng(3)
    for trial in range(40):
        b, d = int(rng.integers(1, 6)), int(rng.integers(1, 80))
        a = rng.standard_normal((b, d)) ** int(rng.integers(1, 4)) * 10.0 ** rng.uniform(-30, 30)
        if trial % 3 == 1:
            a[rng.random((b, d)) < 0.3] = 0.0
        if trial % 3 == 2:
            a[0] = 0.0
        t = torch.from_numpy(a if trial % 2 else a.astype(np.float32))
        v = np.abs(t.double().numpy())
        total = v.sum(1)
        want_h = np.array([sp_entropy(r) if s > 0 else math.nan for r, s in zip(v, total, strict=True)])
        srt = np.sort(v, axis=1)
        k = np.arange(1, d + 1)
        want_g = np.array(
            [(((2 * k - d - 1) * r).sum() / (d * s)) if s > 0 else math.nan for r, s in zip(srt, total, strict=True)]
        )
        np.testing.assert_allclose(entropy(t).numpy(), want_h, rtol=1e-12, atol=1e-12, equal_nan=True)
        np.testing.assert_allclose(gini(t).numpy(), want_g, rtol=1e-12, atol=1e-14, equal_nan=True)
        keep = t.clone()
        x = torch.zeros(b, d)
        c = whybox.evaluate(None, x, t, "complexity").scores.numpy()
        np.testing.assert_allclose(c, want_h, rtol=1e-12, atol=1e-12, equal_nan=True)
        assert torch.equal(t, keep)


def test_a_map_without_features_is_nan() -> None:
    """Zero features per row: both scores undefined (NaN), and no NumPy error or warning on the way."""
    x = torch.zeros(2, 0)
    for name in ("sparseness", "complexity"):
        r = whybox.evaluate(None, x, torch.zeros(2, 0), name)
        assert r.n_nan == 2


@pytest.mark.parametrize("name", ["sparseness", "complexity"])
def test_a_map_of_another_shape_is_refused(name: str) -> None:
    """A map that does not lie over the inputs is refused as every other metric refuses it (it was scored)."""
    x = torch.zeros(2, 3, 8, 8)
    for a in (torch.rand(2, 3, 4, 4), torch.rand(2, 2, 8, 8)):
        with pytest.raises(whybox.InvalidInputError) as err:
            whybox.evaluate(None, x, a, name)
        assert str(err.value) == (
            f"attributions of shape {tuple(a.shape)} do not match images (2, 3, 8, 8); expected (2, 3 or 1, 8, 8) "
            "or (2, 8, 8)."
        )
    with pytest.raises(whybox.InvalidInputError, match=r"^attributions of shape \(3, 4\) must have the shape of "):
        whybox.evaluate(None, torch.zeros(3, 5), torch.rand(3, 4), name)
    for a in (torch.rand(2, 1, 8, 8), torch.rand(2, 8, 8)):  # the layouts that fit still score
        assert whybox.evaluate(None, x, a, name).n_nan == 0
