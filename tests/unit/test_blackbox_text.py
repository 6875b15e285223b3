"""Black-box text models over words: presence rows through the masking engine. Properties: exact Shapley equals
a brute-force Shapley computation from the model's own calls; an additive model gets exactly each word's
contribution; padding (a shorter text in a batch) changes nothing; bad input is named."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import whybox
from whybox.errors import InvalidInputError, InvalidParameterError, NotDifferentiableError
from whybox.models.blackbox_text import BlackBoxTextAdapter


def counts(texts: list[str]) -> torch.Tensor:
    """An additive toy model: score = 2 x #"good" - #"bad" + 0.5 x #"very", and its negative."""
    s = torch.tensor(
        [2.0 * t.split().count("good") - t.split().count("bad") + 0.5 * t.split().count("very") for t in texts],
        dtype=torch.float64,
    )
    return torch.stack([s, -s], 1)


def test_an_additive_model_gets_each_word_s_contribution() -> None:
    ad = BlackBoxTextAdapter(counts)
    b = ad.encode(["a very good film", "bad bad plot"])
    for method in ("exact_shapley", "kernel_shap", "feature_ablation", "shapley_sampling"):
        e = whybox.explain(ad, b.inputs, method, features=b.features, fill=b.fill(), target=0)
        got = b.word_values(e)
        assert [round(v, 9) for _, v in got[0]] == [0.0, 0.5, 2.0, 0.0], method
        assert [round(v, 9) for _, v in got[1]] == [-1.0, -1.0, 0.0], method
        assert float(e.attributions[1, 3:].abs().max()) == 0.0  # padding and the index column never move


def test_exact_shapley_equals_brute_force_on_vader() -> None:
    pytest.importorskip("vaderSentiment", reason="the demo extra (vaderSentiment) is not installed")
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    from whybox.models.blackbox_text import vader

    ad = vader()
    text = "The plot was not good but fun"
    b = ad.encode([text])
    e = whybox.explain(ad, b.inputs, "exact_shapley", features=b.features, fill=b.fill(), target=1)
    words = text.split()
    an = SentimentIntensityAnalyzer()

    def v(keep: frozenset[int]) -> float:
        return an.polarity_scores(" ".join(w for i, w in enumerate(words) if i in keep))["compound"]

    n = len(words)
    for i in range(n):
        phi = 0.0
        others = [j for j in range(n) if j != i]
        for k in range(n):
            for s in itertools.combinations(others, k):
                weight = math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n)
                phi += weight * (v(frozenset(s) | {i}) - v(frozenset(s)))
        assert b.word_values(e)[0][i][1] == pytest.approx(phi, abs=1e-12), words[i]


def test_a_text_in_a_batch_equals_the_text_alone() -> None:
    ad = BlackBoxTextAdapter(counts)
    b = ad.encode(["good", "a very good but bad film indeed"])
    e = whybox.explain(ad, b.inputs, "kernel_shap", features=b.features, fill=b.fill(), target=0)
    one = ad.encode(["good"])
    e1 = whybox.explain(ad, one.inputs, "kernel_shap", features=one.features, fill=one.fill(), target=0)
    assert [w for w, _ in b.word_values(e)[0]] == ["good"]
    assert [v for _, v in b.word_values(e)[0]] == pytest.approx([v for _, v in one.word_values(e1)[0]], abs=1e-12)


def test_bad_input_names_the_problem() -> None:
    with pytest.raises(InvalidParameterError, match="score_fn must be callable"):
        BlackBoxTextAdapter("vader")  # type: ignore[arg-type]
    ad = BlackBoxTextAdapter(counts)
    with pytest.raises(InvalidInputError, match="non-empty string"):
        ad.encode(["  "])
    with pytest.raises(InvalidInputError, match=r"presence rows \(B, W \+ 1\)"):
        ad.scores(torch.zeros(2))
    with pytest.raises(InvalidInputError, match="is not a text this adapter encoded"):
        ad.scores(torch.tensor([[1.0, 1.0, 7.0]]))
    with pytest.raises(NotDifferentiableError, match="'saliency' needs gradients, but BlackBoxTextModel is not") as err:
        whybox.explain(ad, ad.encode("good").inputs, "saliency")
    # the fix names the methods that run on it: perturbation ones, not CAMs nor the attention readers
    hint = str(err.value).split("use a method that needs only the model's outputs: ")[1]
    names = [n.strip("'.") for n in hint.split(", ")]
    assert "kernel_shap" in names and "lime" in names
    assert not {"scorecam", "attention_rollout", "raw_attention"} & set(names)


def test_explain_text_and_evaluate_take_a_function_of_strings() -> None:
    """explain_text gives a black-box text model its words as features and every word removed as the fill (the
    additive model's contributions, as the explicit call); a label names a class; the metrics' default fill keeps
    the index column, so every call scores the words of its own text (a zero fill read text 0 for every row); on
    the texts the metrics read whole words."""
    seen: list[str] = []

    def spy(texts: list[str]) -> torch.Tensor:
        seen.extend(texts)
        return counts(texts)

    ad = BlackBoxTextAdapter(spy, labels=["pos", "neg"])
    texts = ["a very good film", "bad bad plot"]
    out = whybox.explain_text(ad, texts, "exact_shapley", target="pos")
    assert out.explanation.target.tolist() == [0, 0]
    assert [[round(v, 9) for _, v in row] for row in out.words] == [[0.0, 0.5, 2.0, 0.0], [-1.0, -1.0, 0.0]]
    assert out.tokens == out.words
    b = ad.encode(texts)
    assert ad.encode(texts[::-1]).inputs[:, -1].tolist() == b.inputs[:, -1].flip(0).tolist()  # each text kept once
    assert len(ad._texts) == 2
    for name in ("deletion", "insertion", "comprehensiveness", "sufficiency", "mufidelity"):
        seen.clear()
        auto = whybox.evaluate(ad, b.inputs, out, name)
        vocab = [set(t.split()) for t in texts]
        assert seen and all(any(set(t.split()) <= v for v in vocab) for t in seen)
        assert all(not (set(t.split()) & vocab[0] and set(t.split()) & vocab[1]) for t in seen)
        given = whybox.evaluate(ad, b.inputs, out, name, fill=b.fill())
        torch.testing.assert_close(auto.scores, given.scores, rtol=0, atol=0, equal_nan=True)
        on_texts = whybox.evaluate(ad, texts, out, name)
        words = {"regions": b.features}  # texts: every metric over the words (mufidelity's subsets too)
        torch.testing.assert_close(
            on_texts.scores, whybox.evaluate(ad, b.inputs, out, name, **words).scores, rtol=0, atol=0, equal_nan=True
        )
    with pytest.raises(InvalidInputError, match=r"use whybox.explain_text\(adapter, texts, method\)"):
        whybox.explain(ad, texts, "lime")


@pytest.mark.parametrize("fill", ["zero", "mean", "mask"])
def test_a_named_fill_on_a_function_of_strings_is_refused(fill: str) -> None:
    """fill='zero' set the index column to 0 too: text 1's rows were scored on text 0's words (sufficiency 0.8
    where the words give 0). A named fill is refused with the fix; the default drops the removed words."""
    ad = BlackBoxTextAdapter(counts)
    texts = ["a very good film", "bad bad plot"]
    out = whybox.explain_text(ad, texts, "feature_ablation", target=0)
    with pytest.raises(InvalidParameterError, match=rf"fill='{fill}' on a function of strings would rewrite"):
        whybox.evaluate(ad, texts, out, "sufficiency", fill=fill)
