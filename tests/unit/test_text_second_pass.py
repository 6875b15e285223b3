"""Text cases a second audit found: metrics that re-explain or draw subsets score a text the same alone and beside
a longer one (its batch's pads change nothing); LIME leaves a text's specials and pads (and a decoder's pads) out
of its surrogate; explain_text takes Integrated Gradients' method= and refuses a replace= it would ignore; a
wrapper's max_length is capped at its encoder's positions; a black box's "##word" is its own word on the page."""

from __future__ import annotations

from typing import Any

import pytest

transformers = pytest.importorskip("transformers", reason="the text extra (transformers) is not installed")
tokenizers = pytest.importorskip("tokenizers", reason="the text extra (tokenizers) is not installed")

import whybox  # noqa: E402
from whybox.errors import InvalidParameterError  # noqa: E402
from whybox.models.blackbox_text import BlackBoxTextAdapter  # noqa: E402

SHORT, LONG = "playing it", "it was not a good film but the acting was fun"


@pytest.mark.parametrize(
    ("metric", "options"),
    [
        ("randomization", {}),
        ("random_logit", {}),
        ("mufidelity", {"n_samples": 20}),
        ("max_sensitivity", {"n_samples": 3}),
    ],
)
def test_a_text_s_score_does_not_depend_on_its_batch(make_text_classifier: Any, metric: str, options: dict) -> None:
    clf = make_text_classifier()
    alone = whybox.evaluate(clf, [SHORT], whybox.explain_text(clf, [SHORT], "occlusion"), metric, **options)
    both = whybox.evaluate(clf, [SHORT, LONG], whybox.explain_text(clf, [SHORT, LONG], "occlusion"), metric, **options)
    assert float(both.scores[0]) == pytest.approx(float(alone.scores[0]), abs=1e-9)


def test_lime_leaves_specials_and_pads_out(make_text_classifier: Any, make_gpt2_classifier: Any) -> None:
    clf = make_text_classifier()
    out = whybox.explain_text(clf, [SHORT, LONG], "lime", n_samples=200)
    special = out.batch.special_mask
    assert bool((out.explanation.attributions[0][special[0]] == 0).all())  # CLS, SEP and pads exactly 0
    model, tok = make_gpt2_classifier()
    gpt = whybox.adapt_text(model, tok)
    alone = whybox.explain_text(gpt, ["movie was great"], "lime", n_samples=200)
    padded = whybox.explain_text(gpt, ["movie was great", LONG], "lime", n_samples=200)
    assert [v for _, v in padded.words[0]] == pytest.approx([v for _, v in alone.words[0]], abs=1e-12)


def test_explain_text_options_named_like_its_arguments_and_replace(make_text_classifier: Any) -> None:
    clf = make_text_classifier()
    out = whybox.explain_text(clf, ["the movie was great"], "integrated_gradients", method="adaptive", n_steps=8)
    assert out.explanation.params["method"] == "adaptive"
    with pytest.raises(InvalidParameterError, match="'saliency' removes no word"):
        whybox.explain_text(clf, ["the movie"], "saliency", replace="unk")
    with pytest.raises(InvalidParameterError, match="replace must be one of"):
        whybox.explain_text(clf, ["the movie"], "occlusion", replace="nonsense")
    box = BlackBoxTextAdapter(lambda texts: [[len(t) % 3, 1.0] for t in texts], labels=["a", "b"])
    with pytest.raises(InvalidParameterError, match="does not apply to a function of strings"):
        whybox.explain_text(box, ["the movie"], "occlusion", replace="unk")


def test_a_wrapper_s_max_length_is_capped_at_its_encoder_s_positions(make_text_classifier: Any) -> None:
    from torch import nn

    inner = make_text_classifier()

    class Wrapper(nn.Module):  # no config of its own, as whybox's MiniLM sentiment model
        def __init__(self) -> None:
            super().__init__()
            self.encoder = inner.model

        def forward(self, **kw: Any) -> Any:
            return self.encoder(**kw)

    wrapped = whybox.adapt_text(Wrapper(), inner.tokenizer, max_length=1000)
    assert wrapped.max_length == 64  # the toy BERT's position table


def test_a_black_box_s_words_are_drawn_as_words() -> None:
    box = BlackBoxTextAdapter(lambda texts: [[1.0, float("##ai" in t)] for t in texts], labels=["a", "b"])
    page = whybox.explain_text(box, ["I love ##ai"], "occlusion", target=1).to_html()
    assert "##ai" in page and "data-subword" not in page
