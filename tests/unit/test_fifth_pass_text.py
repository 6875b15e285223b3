"""Fifth-pass audit regressions on texts: a method name is explained as explain_text explains it, a word's value is
pooled one way whether the word regions are given or implied, and a saved explanation's words read as explain_text's."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the text extra (transformers) is not installed")
tokenizers = pytest.importorskip("tokenizers", reason="the text extra (tokenizers) is not installed")

import whybox  # noqa: E402

TEXTS = ["playing the movie was great", "the film was boring playing it", "played it and love the story"]


@pytest.mark.parametrize("method", ["occlusion", "integrated_gradients", "lime"])
def test_a_method_name_on_texts_is_explained_as_explain_text_explains_it(
    make_text_classifier: Any, method: str
) -> None:
    """evaluate(clf, texts, "occlusion", "deletion") scores what explain_text gives (one-token window, [MASK]
    fill, word features; IG from the pad baseline), not a plain explain of the packed inputs that occludes the
    attention-mask column and CLS with zeros."""
    clf = make_text_classifier()
    by_text = whybox.explain_text(clf, TEXTS, method, target=1)
    for metric in ("deletion", "comprehensiveness"):
        by_name = whybox.evaluate(clf, TEXTS, method, metric, target=1)
        want = whybox.evaluate(clf, TEXTS, by_text, metric)
        torch.testing.assert_close(by_name.scores, want.scores, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("method", "metric"),
    [
        ("feature_ablation", "comprehensiveness"),
        ("feature_ablation", "mufidelity"),
        ("integrated_gradients", "deletion"),
    ],
)
def test_word_regions_given_or_implied_score_alike(make_text_classifier: Any, method: str, metric: str) -> None:
    """regions=batch.word_features() are the regions evaluate takes on texts by default: passing them (on the texts
    or on the packed inputs) pools a word as explain_text does (a perturbation method's copied value not counted once
    per subword, a gradient method's tokens summed), so the scores do not change."""
    clf = make_text_classifier()
    out = whybox.explain_text(clf, TEXTS, method, target=0)
    implied = whybox.evaluate(clf, TEXTS, out, metric).scores
    given = whybox.evaluate(clf, TEXTS, out, metric, regions=out.batch.word_features()).scores
    packed = whybox.evaluate(clf, out.batch.inputs, out.explanation, metric, regions=out.batch.word_features()).scores
    torch.testing.assert_close(given, implied, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(packed, implied, rtol=0, atol=0, equal_nan=True)


def test_word_attributions_of_a_saved_explanation_read_as_explain_text(make_text_classifier: Any, tmp_path) -> None:
    """TextBatch.word_attributions without how= combines a word's subwords as explain_text does: a perturbation
    method's copied value once (it read 'playing' at twice its value after a save and a load), a gradient's summed."""
    clf = make_text_classifier()
    for method in ("feature_ablation", "saliency"):
        out = whybox.explain_text(clf, TEXTS[:1], method, target=0)
        out.explanation.save(tmp_path / f"{method}.safetensors")
        loaded = whybox.Explanation.load(tmp_path / f"{method}.safetensors")
        assert out.batch.word_attributions(loaded) == out.words


@pytest.mark.parametrize("metric", ["deletion", "insertion", "aopc", "highest_confidence"])
def test_a_text_without_words_scores_nan_on_the_curves(make_text_classifier: Any, metric: str) -> None:
    """METRICS.md: undefined values are NaN, never silently a number. An empty text's curve never moves (x stays 0):
    its deletion AUC read 0.0, the best score, pulling a method's mean toward "better"; the other row is unchanged."""
    clf = make_text_classifier()
    texts = ["", "it was not a good film"]
    out = whybox.explain_text(clf, texts, "occlusion", target=1)
    r = whybox.evaluate(clf, texts, out, metric)
    assert torch.isnan(r.scores[0]) and torch.isfinite(r.scores[1])
    alone = whybox.evaluate(clf, texts[1:], whybox.explain_text(clf, texts[1:], "occlusion", target=1), metric)
    torch.testing.assert_close(r.scores[1:], alone.scores)


def test_run_fingerprint_does_not_follow_where_a_hugging_face_model_was_loaded_from(make_text_classifier: Any) -> None:
    """The same checkpoint loaded from another directory (its name_or_path) resumes a run; layer settings count."""
    from whybox.runs.job import Job, fingerprints

    clf = make_text_classifier()
    b = clf.encode(["the movie was great"]).inputs
    job = Job(methods=("saliency",))
    before = fingerprints(job, clf, b, [], None)["weights"]
    clf.model.name_or_path = "/mnt/other_copy/checkpoint"
    assert fingerprints(job, clf, b, [], None)["weights"] == before
    dropout = next(m for m in clf.model.modules() if isinstance(m, torch.nn.Dropout))
    dropout.p = 0.5
    assert fingerprints(job, clf, b, [], None)["weights"] != before


def test_an_unregistered_method_s_map_is_read_element_by_element(make_text_classifier: Any) -> None:
    """An Explanation of a method whybox does not know (a custom explainer's or a wrapped captum map) is read as
    a plain tensor: tokens sum their embedding elements and words their tokens (it read the first element only, and
    word_attributions halved split words)."""
    clf = make_text_classifier()
    out = whybox.explain_text(clf, TEXTS[:1], "saliency", target=0)
    e = out.explanation
    custom = whybox.Explanation(e.attributions, e.target, "my_method")
    torch.testing.assert_close(out.batch.token_attributions(custom), out.batch.token_attributions(e.attributions))
    assert out.batch.word_attributions(custom) == out.batch.word_attributions(e.attributions) == out.words


def test_prediction_to_features_names_an_empty_text_of_a_decoder_classifier(make_gpt2_classifier: Any) -> None:
    """A decoder's classifier reads its class at the last token; an empty text has none (a raw IndexError from
    inside the model before): a WhyboxError naming the text, and the other texts still explain."""
    from whybox.errors import InvalidInputError
    from whybox.explainers.llm.sae import SAEConfig, train_sae
    from whybox.explainers.llm.sae_text import prediction_to_features

    m, tok = make_gpt2_classifier(3)
    ad = whybox.adapt_text(m, tok)
    sae = train_sae(torch.randn(50, 16, dtype=torch.float64), SAEConfig(d_in=16, d_sae=8, k=2, steps=3, batch_size=10))
    with pytest.raises(InvalidInputError, match=r"texts \[1\] hold no tokens"):
        prediction_to_features(ad, ["the movie was great", "", "fun"], sae.model, layer=0)
    assert len(prediction_to_features(ad, ["the movie was great", "fun"], sae.model, layer=0)) == 2


def test_a_text_encoder_s_reference_embeddings_are_checked(make_text_classifier: Any) -> None:
    """adapt_text(kind="embedding", references=tensor) checks the embeddings as adapt does (NaN gave all-NaN words)."""
    from whybox.errors import InvalidParameterError

    clf = make_text_classifier()
    with pytest.raises(InvalidParameterError, match="references must be finite real embeddings"):
        whybox.adapt_text(clf.model.bert, clf.tokenizer, kind="embedding", references=torch.full((2, 32), math.nan))


@pytest.mark.parametrize("method", ["occlusion", "integrated_gradients"])
def test_a_model_asked_for_attentions_still_returns_them_after_any_method(
    make_text_classifier: Any, method: str
) -> None:
    """transformers installs its output-capturing hooks at the first forward asking for attentions and marks the
    module; whybox removed the hooks but left the mark, so the user's model returned no attentions for the rest of
    the session (only the attention methods restored the mark)."""
    clf = make_text_classifier()
    model = clf.model
    model.set_attn_implementation("eager")  # (sdpa returns no attentions)
    model.config.output_attentions = True
    ids = clf.tokenizer(TEXTS[:2], padding=True, return_tensors="pt")
    whybox.explain_text(clf, TEXTS[:2], method, target=0)
    with torch.no_grad():
        assert len(model(**ids).attentions) == model.config.num_hidden_layers
