"""The control channels of text adapters: the attention-mask channel of a Hugging Face text adapter's packed inputs
``(B, T, D + 1)`` and the text-index column of a black box's presence rows ``(B, W + 1)`` are controls, not
features, and every method's per-element attributions hold exactly 0 there.

Properties: occlusion and feature ablation (one value copied onto every element of a token or a word) give a hand
loop's drop on each token's word vectors and 0 on its mask channel, so :func:`whybox.explain_text`'s tokens and words
are the hand loop's (as before: they never read the mask channel); the gradient methods' maps are a hand gradient's
(the models read the mask only as ``> 0.5``, so its gradient is exactly 0) and Integrated Gradients' ``delta`` is the
completeness gap of the map returned; a black box explained on its presence rows with a zero fill (which rewrites the
index column, so that row reads another text) gets 0 there and each word's contribution on its column.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers", reason="the text extra (transformers) is not installed")
pytest.importorskip("tokenizers", reason="the text extra (tokenizers) is not installed")

from test_blackbox_text import counts
from test_text import SENTENCES, tiny_bert, toy_tokenizer

import whybox
from whybox.models.blackbox_text import BlackBoxTextAdapter
from whybox.models.text import adapt_text


@pytest.fixture(scope="module")
def clf() -> object:
    return adapt_text(tiny_bert(), toy_tokenizer())


@pytest.fixture(scope="module")
def enc() -> object:
    return adapt_text(tiny_bert("encoder"), toy_tokenizer(), kind="embedding", references="the movie was great")


def _hand_drops(model: object, batch: object, target: int, *, words: bool) -> dict[tuple[int, int], float]:
    """Per (row, token position) of the ordinary tokens: s(x) - s(x with the token's, or its word's, word vectors
    replaced by [MASK]'s), straight from the model's scores."""
    fill = batch.fill("mask")
    out = {}
    with torch.no_grad():
        clean = model.scores(batch.inputs)[:, target]
        for r, spans in enumerate(batch.word_spans()):
            for _, idx in spans:
                for unit in [idx] if words else [[i] for i in idx]:
                    x = batch.inputs[r : r + 1].clone()
                    x[0, unit] = fill[r, unit]
                    drop = float(clean[r] - model.scores(x)[0, target])
                    out.update({(r, i): drop for i in unit})
    return out


@pytest.mark.parametrize("method", ["occlusion", "feature_ablation"])
def test_copying_methods_give_the_hand_drop_on_word_vectors_and_zero_on_the_mask_channel(
    clf: object, method: str
) -> None:
    out = whybox.explain_text(clf, SENTENCES, method, target=1, score="logit")
    batch, a = out.batch, out.explanation.attributions
    assert bool((a[..., -1] == 0).all())  # the token's value was copied there
    want = _hand_drops(clf, batch, 1, words=method == "feature_ablation")  # occlusion: one token; ablation: words
    for r in range(len(batch)):
        for i in range(batch.inputs.shape[1]):
            v = want.get((r, i), 0.0)  # specials and pads never change: 0
            assert torch.allclose(a[r, i, :-1], torch.full_like(a[r, i, :-1], v), rtol=0, atol=1e-12), (r, i)
        ordinary = [i for i in range(batch.inputs.shape[1]) if not bool(batch.special_mask[r, i])]
        assert [v for _, v in out.tokens[r]] == pytest.approx([want[(r, i)] for i in ordinary], abs=1e-12)
        # a word's value: occlusion sums its tokens' own drops, feature ablation gives the word's drop once
        got_words = [v for _, v in out.words[r]]
        pool = sum if method == "occlusion" else (lambda vs: sum(vs) / len(vs))
        hand_words = [pool([want[(r, i)] for i in idx]) for _, idx in batch.word_spans()[r]]
        assert got_words == pytest.approx(hand_words, abs=1e-12)


def test_an_encoder_s_occlusion_holds_zero_on_the_mask_channel(enc: object) -> None:
    out = whybox.explain_text(enc, ["boring plot", "it was not a good film"], "occlusion", target=0)
    a = out.explanation.attributions
    assert bool((a[..., -1] == 0).all())
    want = _hand_drops(enc, out.batch, 0, words=False)
    for (r, i), v in want.items():
        assert torch.allclose(a[r, i, :-1], torch.full_like(a[r, i, :-1], v), rtol=0, atol=1e-12), (r, i)
    assert any(abs(v) > 1e-6 for v in want.values())


@pytest.mark.parametrize("method", ["saliency", "input_x_gradient"])
def test_gradient_maps_equal_a_hand_gradient_which_is_zero_on_the_mask_channel(clf: object, method: str) -> None:
    batch = clf.encode(SENTENCES)
    x = batch.inputs.clone().requires_grad_(True)
    clf.scores(x)[:, 1].sum().backward()
    g = x.grad.detach()
    assert bool((g[..., -1] == 0).all())  # the adapter reads the mask as > 0.5: no gradient flows there
    e = whybox.explain(clf, batch.inputs, method, target=1)
    hand = g.abs() if method == "saliency" else g * batch.inputs
    assert torch.allclose(e.attributions, hand, rtol=0, atol=1e-12)


def test_integrated_gradients_delta_is_the_completeness_gap_of_the_map_returned(clf: object) -> None:
    out = whybox.explain_text(clf, SENTENCES, "integrated_gradients", target=1, n_steps=16)
    e = out.explanation
    gap = e.attributions.reshape(len(SENTENCES), -1).sum(1) - (e.meta["f_x"] - e.meta["f_baseline"])
    assert torch.allclose(gap, e.meta["delta"], rtol=0, atol=1e-12)
    assert bool((e.attributions[..., -1] == 0).all())


@pytest.mark.parametrize("method", ["feature_ablation", "occlusion"])
def test_a_black_box_s_index_column_holds_zero_whatever_the_fill(method: str) -> None:
    ad = BlackBoxTextAdapter(counts)
    b = ad.encode(["good good bad", "bad film", "a very fine good day"])
    # whybox.explain's own zero fill, element by element: zeroing a row's index column reads text 0's words
    e = whybox.explain(ad, b.inputs, method, target=0)
    a = e.attributions
    assert bool((a[:, -1] == 0).all())
    contribution = {"good": 2.0, "bad": -1.0, "very": 0.5}
    for r, words in enumerate(b.words):  # an additive model: each word column its contribution, pads 0
        want = [contribution.get(w, 0.0) for w in words] + [0.0] * (a.shape[1] - 1 - len(words))
        assert a[r, :-1].tolist() == pytest.approx(want, abs=1e-12)
