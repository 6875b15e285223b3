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
