"""Ninth pass on the language-model tools.

Properties: ``train_sae`` leaves no gradient on its model."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the text extra (transformers) is not installed")
tokenizers = pytest.importorskip("tokenizers", reason="the text extra (tokenizers) is not installed")


from whybox.explainers.llm.sae import SAEConfig, train_sae  # noqa: E402


@pytest.mark.parametrize("activation", ["topk", "relu"])
def test_train_sae_leaves_no_gradient_on_its_model(activation: str) -> None:
    acts = torch.randn(64, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = train_sae(acts, SAEConfig(d_in=8, d_sae=16, k=2, steps=5, batch_size=16, activation=activation))
    assert res.n_steps == 5
    assert [p.grad for p in res.model.parameters()] == [None] * len(list(res.model.parameters()))
