"""Regressions and spec gaps found by the fifth-pass audits: each test states the promised behaviour the code missed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import whybox
from whybox.masking.features import segments


class _Seq(nn.Module):
    """A sequence model (B, T, D) read batch-first, no Conv1d: its time axis is 1."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(3, 5, batch_first=True)
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


@pytest.mark.parametrize("metric", ["deletion", "insertion", "aopc", "highest_confidence"])
def test_int_regions_on_a_sequence_are_windows_of_time_steps(metric: str) -> None:
    """README: sequences (B, T, D) get windows along axis 1 with all D features. ``regions=2`` is the same as
    ``segments(x, length=2, time_axis=1)`` (3 windows of T = 6 steps), not 2 windows of feature columns shared by
    every time step, under which a per-time-step map pools to one value per region and its order never enters."""
    torch.manual_seed(0)
    m = _Seq().eval()
    x = torch.randn(2, 6, 3)
    a = torch.randn(2, 6, 1)
    r = whybox.evaluate(m, x, a, metric, regions=2, target=0)
    ref = whybox.evaluate(m, x, a, metric, regions=segments(x, length=2, time_axis=1), target=0)
    torch.testing.assert_close(r.scores, ref.scores, rtol=0, atol=0)
    if metric in ("deletion", "insertion"):
        assert r.meta["n_features"] == 3
        torch.testing.assert_close(r.curves["x"][0], torch.tensor([0.0, 1 / 3, 2 / 3, 1.0], dtype=r.curves["x"].dtype))
