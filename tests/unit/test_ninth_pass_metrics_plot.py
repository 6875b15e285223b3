"""Ninth-pass fixes to infidelity, mufidelity, Explanation.plot and overlay: each test states the property a user
relied on and failed before the fix."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import whybox
from whybox.errors import InvalidParameterError
from whybox.metrics.robustness import squares


def _cnn(side: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return (
            nn.Sequential(
                nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(2 * side * side, 3)
            ).double()
        ).eval()


# ------------------------------------------------------------------ infidelity: square mode's options
@pytest.mark.parametrize(
    ("option", "value"), [("sigma", 5.0), ("n_samples", 3), ("clip", (0.2, 0.3)), ("sigma", 0.2), ("n_samples", 100)]
)
def test_square_infidelity_refuses_the_noise_options_it_does_not_read(option: str, value: Any) -> None:
    """sigma, n_samples and clip shape the noise; the squares are deterministic: given, they are refused (also at
    their old defaults), never recorded in params as if they had been used."""
    model, x = _cnn(5), torch.rand(2, 1, 5, 5, dtype=torch.float64)
    with pytest.raises(InvalidParameterError, match=rf"^{option}=.* does not apply to perturbation='square'"):
        whybox.evaluate(model, x, torch.randn(2, 1, 5, 5), "infidelity", perturbation="square", **{option: value})


def test_noise_infidelity_refuses_max_square() -> None:
    model, x = _cnn(5), torch.rand(2, 1, 5, 5, dtype=torch.float64)
    with pytest.raises(InvalidParameterError, match=r"^max_square=3 does not apply to perturbation='noisy_baseline'"):
        whybox.evaluate(model, x, torch.randn(2, 1, 5, 5), "infidelity", max_square=3, n_samples=4)


@pytest.mark.parametrize("normalize", [True, False])
def test_square_infidelity_sets_each_square_to_the_baseline_as_a_hand_computation(normalize: bool) -> None:
    """I = x - baseline on one square, 0 elsewhere: x - I holds the baseline on the square. Every square of side
    1..max_square, one perturbation each; INFD computed by hand from the model's logits."""
    g = torch.Generator().manual_seed(3)
    model, x = _cnn(5), torch.rand(2, 1, 5, 5, generator=g, dtype=torch.float64)
    a = torch.randn(2, 1, 5, 5, generator=g, dtype=torch.float64)
    target, base = torch.tensor([0, 2]), 0.5
    r = whybox.evaluate(
        model, x, a, "infidelity", perturbation="square", max_square=2, baseline=base, target=target,
        score="logit", normalize=normalize,
    )  # fmt: skip
    with torch.no_grad():
        clean = model(x)[torch.arange(2), target]
        dots, drops = [], []
        for s, t, left in squares(5, 5, 2).tolist():
            xp = x.clone()
            xp[:, :, t : t + s, left : left + s] = base
            dots.append(((x - xp) * a).flatten(1).sum(1))
            drops.append(clean - model(xp)[torch.arange(2), target])
    dot, drop = torch.stack(dots, 1), torch.stack(drops, 1)
    if normalize:
        beta = (dot * drop).mean(1) / (dot * dot).mean(1)
        want = ((drop - beta[:, None] * dot) ** 2).mean(1)
    else:
        want = ((dot - drop) ** 2).mean(1)
    assert r.meta["n_perturbations"] == 25 + 16  # every 1x1 and 2x2 square of a 5x5 image
    torch.testing.assert_close(r.curves["attribution_dot"], dot, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(r.curves["drop"], drop, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(r.scores, want, rtol=1e-9, atol=1e-15)
    zero = whybox.evaluate(
        model, x, a, "infidelity", perturbation="square", max_square=2, target=target, score="logit",
        normalize=normalize,
    )  # fmt: skip
    assert not torch.equal(zero.scores, r.scores)  # the baseline is read, not ignored


@pytest.mark.parametrize("perturbation", ["noisy_baseline", "square"])
def test_infidelity_re_runs_from_its_recorded_params(perturbation: str) -> None:
    """A result's params hold only the options its perturbation reads (the others None): evaluate(**params) works
    and gives the same scores."""
    model, x = _cnn(5), torch.rand(2, 1, 5, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    a = torch.randn(2, 1, 5, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    opts = {"max_square": 2} if perturbation == "square" else {"n_samples": 5}
    r = whybox.evaluate(model, x, a, "infidelity", perturbation=perturbation, target=0, **opts)
    unused = ("sigma", "n_samples", "clip") if perturbation == "square" else ("max_square",)
    assert all(r.params[k] is None for k in unused)
    again = whybox.evaluate(model, x, a, "infidelity", target=0, **r.params)
    torch.testing.assert_close(again.scores, r.scores, rtol=0, atol=0)
