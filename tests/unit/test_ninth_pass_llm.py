"""Ninth pass on the language-model tools.

Properties: ``collect_activations`` refuses a tokenizer without a padding token with the message the text
adapter gives; ``train_sae`` leaves no gradient on its model."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the text extra (transformers) is not installed")
tokenizers = pytest.importorskip("tokenizers", reason="the text extra (tokenizers) is not installed")


import whybox  # noqa: E402
from whybox.errors import InvalidParameterError  # noqa: E402
from whybox.explainers.llm.sae import SAEConfig, train_sae  # noqa: E402
from whybox.explainers.llm.sae_text import collect_activations  # noqa: E402


# ---------------------------------------------------------------------------------------------- SAE plumbing
def test_collect_activations_refuses_a_tokenizer_without_a_pad_token(make_gpt2_classifier: object) -> None:
    model, tok = make_gpt2_classifier()  # type: ignore[operator]
    tok.pad_token = None
    ad = whybox.adapt_text(model, tok)
    with pytest.raises(InvalidParameterError) as encode_err:
        ad.encode(["the movie"])
    for texts in (["the movie", "a good film was"], ["the movie"]):
        with pytest.raises(InvalidParameterError) as err:
            collect_activations(ad, texts, layer=0)
        assert str(err.value) == str(encode_err.value)
        assert "tokenizer.pad_token = tokenizer.eos_token" in str(err.value)


@pytest.mark.parametrize("activation", ["topk", "relu"])
def test_train_sae_leaves_no_gradient_on_its_model(activation: str) -> None:
    acts = torch.randn(64, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = train_sae(acts, SAEConfig(d_in=8, d_sae=16, k=2, steps=5, batch_size=16, activation=activation))
    assert res.n_steps == 5
    assert [p.grad for p in res.model.parameters()] == [None] * len(list(res.model.parameters()))
