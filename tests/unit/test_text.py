"""Text models through whybox: a tiny BERT and a toy WordPiece tokenizer built locally (no hub), float64.

Properties: IG at the word embeddings is complete and matches captum's LayerIntegratedGradients on
``get_input_embeddings()``; specials and pads get exactly 0 (baseline and fill keep them); token occlusion equals
a hand loop that replaces one token by [MASK]; word sums equal token sums; batched (with padding) equals one by
one; a sentence encoder's score is the cosine to the reference sentence."""

from __future__ import annotations

from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the text extra (transformers) is not installed")
tokenizers = pytest.importorskip("tokenizers", reason="the text extra (tokenizers) is not installed")

import whybox  # noqa: E402
from whybox.errors import InvalidInputError, InvalidParameterError  # noqa: E402
from whybox.models.text import TextBatch, adapt_text  # noqa: E402

F64 = torch.float64
WORDS = ["the", "movie", "was", "great", "bad", "not", "a", "film", "plot", "acting", "good", "terrible", "it",
         "and", "but", "very", "boring", "fun", "play", "##ing", "##ed", "love", "hate", "story"]  # fmt: skip
SENTENCES = ["the movie was great", "it was not a good film but the acting was fun", "boring plot", "playing it"]


def toy_tokenizer() -> object:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]",
    )  # fmt: skip


def tiny_bert(kind: str = "classifier", seed: int = 0) -> torch.nn.Module:
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    cfg = BertConfig(
        vocab_size=len(WORDS) + 5, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        num_labels=3, max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertForSequenceClassification(cfg) if kind == "classifier" else BertModel(cfg)
    return model.to(F64).eval()


@pytest.fixture(scope="module")
def clf() -> object:
    return adapt_text(tiny_bert(), toy_tokenizer())


def test_encode_packs_embeddings_and_the_mask(clf: object) -> None:
    batch = clf.encode(SENTENCES)
    assert isinstance(batch, TextBatch)
    b, t = batch.input_ids.shape
    assert batch.inputs.shape == (b, t, 33)
    emb = clf.model.get_input_embeddings()(batch.input_ids)
    assert torch.equal(batch.inputs[..., :32], emb.detach())
    assert torch.equal(batch.inputs[..., 32], batch.attention_mask.to(F64))
    assert batch.tokens[3] == ["[CLS]", "play", "##ing", "it", "[SEP]"] + ["[PAD]"] * (t - 5)
    assert batch.word_ids[3][:5] == [None, 0, 0, 1, None]
    # the packed call equals the model on ids
    with torch.no_grad():
        direct = clf.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        assert torch.allclose(clf.scores(batch.inputs), direct, atol=1e-12)


def test_integrated_gradients_is_complete_and_specials_get_zero(clf: object) -> None:
    batch = clf.encode(SENTENCES)
    base = batch.baseline("pad")
    e = whybox.explain(clf, batch.inputs, "integrated_gradients", baseline=base, n_steps=300, target=1)
    tok = batch.token_attributions(e)
    with torch.no_grad():
        fx = clf.scores(batch.inputs)[:, 1]
        fb = clf.scores(base)[:, 1]
    gap = (tok.sum(1) - (fx - fb)).abs()
    assert bool((gap <= 1e-3 * (fx - fb).abs()).all()), gap
    assert bool((tok[batch.special_mask] == 0).all())  # CLS, SEP and pads: input == baseline, mask channel fixed
    assert bool((e.attributions[..., -1] == 0).all())  # the mask channel never moves


def test_integrated_gradients_matches_captum_layer_ig(clf: object) -> None:
    captum_attr = pytest.importorskip("captum.attr")
    batch = clf.encode(SENTENCES[:2])
    pad = clf.tokenizer.pad_token_id
    base_ids = torch.where(batch.special_mask, batch.input_ids, torch.full_like(batch.input_ids, pad))

    def forward(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return clf.model(input_ids=ids, attention_mask=mask).logits

    lig = captum_attr.LayerIntegratedGradients(forward, clf.model.get_input_embeddings())
    ref = lig.attribute(
        batch.input_ids, baselines=base_ids, target=2, additional_forward_args=(batch.attention_mask,),
        n_steps=64, method="gausslegendre",
    ).sum(-1)  # fmt: skip
    e = whybox.explain(clf, batch.inputs, "integrated_gradients", baseline=batch.baseline("pad"), n_steps=64, target=2)
    assert torch.allclose(batch.token_attributions(e), ref * batch.attention_mask, atol=1e-9)


def test_token_occlusion_equals_a_hand_loop_and_never_touches_specials(clf: object) -> None:
    batch = clf.encode(SENTENCES[:2])
    fill = batch.fill("mask")
    e = whybox.explain(
        clf, batch.inputs, "feature_ablation", features=batch.token_features(), fill=fill, target=0, batch_size=7
    )
    got = batch.token_attributions(e)
    with torch.no_grad():
        clean = clf.scores(batch.inputs)[:, 0]
        for r in range(len(batch)):
            for i in range(batch.inputs.shape[1]):
                x = batch.inputs[r : r + 1].clone()
                x[0, i] = fill[r, i]
                want = 0.0 if bool(batch.special_mask[r, i]) else float(clean[r] - clf.scores(x)[0, 0])
                assert float(got[r, i]) == pytest.approx(want, abs=1e-10), (r, i)
    assert bool((got[batch.special_mask] == 0).all())


def test_word_sums_equal_token_sums_and_batched_equals_one_by_one(clf: object) -> None:
    batch = clf.encode(SENTENCES)
    e = whybox.explain(clf, batch.inputs, "input_x_gradient", target=1)
    words = batch.word_attributions(e)
    tok = batch.token_attributions(e)
    for r, row in enumerate(words):  # words leave out CLS and SEP, which input x gradient does not zero
        ordinary = tok[r][~batch.special_mask[r]]
        assert sum(v for _, v in row) == pytest.approx(float(ordinary.sum()), abs=1e-12)
    assert [w for w, _ in words[3]] == ["playing", "it"]
    for r, s in enumerate(SENTENCES):  # padding changes nothing: one row alone (no pads) gives the same values
        one = clf.encode([s])
        e1 = whybox.explain(clf, one.inputs, "input_x_gradient", target=1)
        n = one.inputs.shape[1]
        assert torch.allclose(one.token_attributions(e1)[0], tok[r, :n], atol=1e-10)
        assert bool((tok[r, n:] == 0).all())


def test_word_features_group_subwords(clf: object) -> None:
    batch = clf.encode(["playing it"])
    ids = batch.word_features()[0, :, 0].tolist()
    assert ids[1] == ids[2] != ids[3]  # "play" + "##ing" one word, "it" another
    assert ids[0] == ids[4] == 2 and len(set(ids)) == 3  # CLS and SEP share one (never changing) feature
    e = whybox.explain(clf, batch.inputs, "exact_shapley", features=batch.word_features(), fill=batch.fill("mask"))
    with torch.no_grad():
        t = int(clf.scores(batch.inputs).argmax())
        full = clf.scores(batch.inputs)[0, t] - clf.scores(batch.fill("mask"))[0, t]
    # Shapley efficiency over the two words: values add up to f(x) - f(all masked)
    tok = batch.token_attributions(e)[0]
    assert float(tok[1]) == float(tok[2]) != 0.0 and float(tok[0]) == float(tok[4]) == 0.0  # one value per word
    words = batch.word_attributions(e, how="mean")  # feature values are repeated on each subword: mean = value
    assert sum(v for _, v in words[0]) == pytest.approx(float(full), abs=1e-9)


def test_sentence_encoder_scores_cosine_to_the_reference() -> None:
    tok = toy_tokenizer()
    enc = adapt_text(tiny_bert("encoder"), tok, kind="embedding", references="the movie was great")
    batch = enc.encode(["the movie was great", "boring plot"])
    with torch.no_grad():
        s = enc.scores(batch.inputs)[:, 0]
    assert float(s[0]) == pytest.approx(1.0, abs=1e-12)  # the reference itself
    assert -1.0 <= float(s[1]) < 1.0
    e = whybox.explain(
        enc, batch.inputs, "integrated_gradients", baseline=batch.baseline("mask"), n_steps=200, target=0
    )
    gap = batch.token_attributions(e).sum(1) - (s - enc.scores(batch.baseline("mask")).detach()[:, 0])
    assert float(gap.abs().max()) < 1e-3


def test_smoothgrad_on_text_moves_only_the_ordinary_word_vectors(clf: object) -> None:
    """explain_text's SmoothGrad adds noise to the ordinary tokens' word vectors only (the attention-mask channel,
    specials and pads are the input's in every noisy copy: noise on the mask channel switched tokens on and off) and
    averages gradient x input, which tends to input_x_gradient as sigma -> 0. A signed gradient summed over the
    embedding dimensions is 0 behind BERT's embedding LayerNorm, which is why gradient is not the text default."""
    from whybox.models.text import explain_text

    texts = ["the movie was great", "boring plot"]
    batch = clf.encode(texts)  # type: ignore[attr-defined]
    seen: list[torch.Tensor] = []
    scores = type(clf).scores

    def spy(self: object, x: torch.Tensor) -> torch.Tensor:
        seen.append(x.detach().clone())
        return scores(self, x)  # type: ignore[arg-type]

    keep = ~batch.noise_mask()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(clf), "scores", spy)
        out = explain_text(clf, texts, "smoothgrad", n_samples=8, noise_level=0.5, batch_size=4)
    noisy = torch.cat([x for x in seen if x.shape[0] == 4])  # the noisy copies, 4 a call, sample-major
    assert noisy.shape[0] == 16
    rows = torch.arange(16) % 2
    ref = batch.inputs[rows]
    assert torch.equal(noisy[keep[rows]], ref[keep[rows]])  # mask channel, specials and pads untouched
    assert bool((noisy[~keep[rows]] != ref[~keep[rows]]).all())
    assert out.explanation.params["base"] == "input_x_gradient"
    tiny = explain_text(clf, texts, "smoothgrad", n_samples=2, sigma=1e-9)
    ixg = explain_text(clf, texts, "input_x_gradient")
    for a, b in zip(tiny.words, ixg.words, strict=True):
        assert [w for w, _ in a] == [w for w, _ in b]
        assert [v for _, v in a] == pytest.approx([v for _, v in b], abs=1e-6)
    plain = explain_text(clf, texts, "smoothgrad", n_samples=4, base="gradient")
    assert max(abs(v) for row in plain.words for _, v in row) < 1e-9  # the LayerNorm's invariance


def test_an_encoders_reference_sentences_name_its_scores() -> None:
    """target= may name a reference sentence; the encoder's config.id2label (LABEL_0, LABEL_1 by default) names
    no output of a similarity scorer and is refused."""
    from whybox.models.text import explain_text

    refs = ["the movie was great", "a very terrible and boring film"]
    enc = adapt_text(tiny_bert("encoder"), toy_tokenizer(), kind="embedding", references=refs)
    named = explain_text(enc, ["boring plot"], "occlusion", target="a very terrible and boring film")
    index = explain_text(enc, ["boring plot"], "occlusion", target=1)
    assert named.explanation.target.tolist() == [1]
    torch.testing.assert_close(named.explanation.attributions, index.explanation.attributions)
    with pytest.raises(whybox.InvalidTargetError, match=r"target 'LABEL_1' is not one of the model's outputs \['the"):
        explain_text(enc, ["boring plot"], "occlusion", target="LABEL_1")
    by_tensor = adapt_text(tiny_bert("encoder"), toy_tokenizer(), kind="embedding", references=enc.references)
    with pytest.raises(whybox.InvalidTargetError):  # no names at all: a string target is not an index
        explain_text(by_tensor, ["boring plot"], "occlusion", target="LABEL_1")


@pytest.mark.parametrize("method", ["lime", "lima"])
def test_an_encoder_with_one_reference_explains_the_similarity(method: str) -> None:
    """One reference sentence gives one score a row, whose softmax is 1 whatever the words: the default score (None)
    reads the similarity itself (the same as score='logit'), where LIME used to return zeros; score='prob' given
    explicitly is still the error that says why."""
    from whybox.models.text import explain_text

    enc = adapt_text(tiny_bert("encoder"), toy_tokenizer(), kind="embedding", references="the movie was great")
    opts = {"n_samples": 40} if method == "lime" else {}
    auto = explain_text(enc, ["the movie was boring"], method, **opts)
    given = explain_text(enc, ["the movie was boring"], method, score="logit", **opts)
    assert auto.explanation.params["score"] is None
    torch.testing.assert_close(auto.explanation.attributions, given.explanation.attributions)
    assert float(auto.explanation.attributions.abs().max()) > 0
    with pytest.raises(InvalidParameterError, match=r"score='prob' needs a model with several outputs"):
        explain_text(enc, ["the movie was boring"], method, score="prob", **opts)


def test_bad_input_names_the_problem(clf: object) -> None:
    batch = clf.encode("the movie")
    with pytest.raises(InvalidParameterError, match=r"baseline must be one of \('pad', 'mask', 'unk', 'zero'\)"):
        batch.baseline("eos")
    with pytest.raises(InvalidInputError, match=r"packed inputs \(B, T, D \+ 1\)"):
        clf.scores(torch.zeros(2, 5))
    with pytest.raises(InvalidInputError, match=r"non-empty list of strings; got \[\]\."):
        clf.encode([])
    with pytest.raises(InvalidInputError, match=r"non-empty list of strings; got None\."):
        clf.encode(None)
    with pytest.raises(InvalidInputError, match=r"non-empty list of strings; got \['str', 'int'\]\."):
        clf.encode(["a film", 3])
    with pytest.raises(InvalidParameterError, match="kind='embedding' needs references="):
        adapt_text(tiny_bert("encoder"), clf.tokenizer, kind="embedding")
    with pytest.raises(InvalidParameterError, match="reduce must be 'sum' or 'l2'"):
        batch.token_attributions(torch.zeros_like(batch.inputs), reduce="max")


@pytest.mark.parametrize("method", ["integrated_gradients", "occlusion", "lime", "kernel_shap", "lima"])
def test_explain_text_gives_word_values_and_leaves_specials_alone(clf: object, method: str) -> None:
    """Every method family through explain_text: one value per word, in reading order; specials never perturbed
    (perturbation methods) or kept in the baseline (IG), so the words carry the whole explanation."""
    from whybox.models.text import explain_text

    opts = {"n_steps": 300} if method == "integrated_gradients" else {}
    out = explain_text(clf, SENTENCES[:2], method, target=1, **opts)
    assert [w for w, _ in out.words[0]] == ["the", "movie", "was", "great"]
    assert len(out.words[1]) == 11
    tok = out.batch.token_attributions(out.explanation)
    # CLS, SEP and pads never change (the fill keeps them): every method gives them exactly 0 (LIME leaves them out
    # of its surrogate on texts, LIMA out of its search)
    assert float(tok[out.batch.special_mask].abs().max()) == 0.0
    if method == "lima":  # the search ranks the words alone
        assert sorted(int(i) for i in out.explanation.meta["order"][0] if int(i) >= 0) == [0, 1, 2, 3]
    if method == "occlusion":  # one token at a time: the drop when that token alone becomes [MASK]
        with torch.no_grad():
            x = out.batch.inputs[:1].clone()
            x[0, 4] = out.batch.fill("mask")[0, 4]  # "great"
            drop = clf.scores(out.batch.inputs[:1])[0, 1] - clf.scores(x)[0, 1]
        assert out.words[0][3][1] == pytest.approx(float(drop), abs=1e-10)
    if method == "integrated_gradients":
        with torch.no_grad():
            gap = clf.scores(out.batch.inputs)[:, 1] - clf.scores(out.batch.baseline("pad"))[:, 1]
        assert torch.allclose(torch.tensor([sum(v for _, v in row) for row in out.words], dtype=F64), gap, atol=1e-3)


@pytest.mark.parametrize("method", ["gradcam", "rise", "scorecam"])
def test_an_image_method_on_text_points_to_the_text_methods(clf: object, method: str) -> None:
    """(B, T, D + 1) token embeddings are batched: the fix is another method, not unsqueeze(0)."""
    batch = clf.encode(SENTENCES[:2])
    with pytest.raises(
        whybox.InvalidInputError,
        match=rf"inputs for '{method}' must be images of shape \(B, C, H, W\); got shape \(2, \d+, 33\)\. These are a "
        r"text model's token embeddings: use a method of whybox\.methods\('text'\)\.$",
    ):
        whybox.explain(clf, batch.inputs, method)
    assert method not in whybox.methods("text")


@pytest.mark.parametrize("method", ["occlusion", "lime", "integrated_gradients"])
def test_metrics_that_re_run_the_method_take_a_text_explanation(clf: object, method: str) -> None:
    """The text options (word features, [MASK] fill, pad baseline) are tensors that params only describes; the
    explanation keeps them, so stability and random logit re-run the method as it was (a deterministic method is
    perfectly stable)."""
    from whybox.models.text import explain_text

    out = explain_text(clf, SENTENCES[:2], method, **({"n_samples": 30} if method == "lime" else {}))
    assert set(out.explanation.meta["described_options"]) <= set(out.explanation.options)
    x = out.batch.inputs
    stable = whybox.evaluate(clf, x, out.explanation, "stability", n_runs=2)
    if method != "lime":
        torch.testing.assert_close(stable.scores, torch.ones(2, dtype=torch.float64))
    other = whybox.evaluate(clf, x, out.explanation, "random_logit")
    assert other.meta["similarity"] == "spearman" and bool(torch.isfinite(other.scores).all())
    if method != "lime":
        # max-sensitivity re-explains (row, draw) pairs in chunks that mix rows: each gets its own row's options, so
        # zero perturbations give exactly the explanation back
        zero = torch.zeros(2, *x.shape[1:], dtype=x.dtype)
        sens = whybox.evaluate(clf, x, out.explanation, "max_sensitivity", n_samples=2, deltas=zero, batch_size=3)
        torch.testing.assert_close(sens.scores, torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-9)
    # one row of the explanation carries its row of the per-row options (fill, features, baseline)
    one = whybox.evaluate(clf, x[1:], out.explanation[1], "random_logit", other_class=other.meta["other_class"][1:])
    torch.testing.assert_close(one.scores, other.scores[1:])


def test_a_text_cut_at_max_length_warns_naming_the_rows_and_the_model_s_limit() -> None:
    """Tokens past max_length were dropped without a word: neither read by the model nor explained."""
    from whybox.models.text import TruncatedTextWarning

    enc = adapt_text(tiny_bert(), toy_tokenizer(), max_length=8)
    long = " ".join(["movie"] * 20)
    with pytest.warns(TruncatedTextWarning, match=r"1 of 2 texts \(rows \[1\]\) are longer than max_length=8 tokens"):
        batch = enc.encode(["a movie", long])
    assert batch.inputs.shape[1] == 8
    with pytest.warns(
        TruncatedTextWarning, match=r"Pass a larger max_length to adapt_text \(this model reads up to 64\)"
    ):
        enc.encode([long])
    adapt_text(tiny_bert(), toy_tokenizer(), max_length=32).encode([long])  # fits: no warning (warnings are errors)


def test_a_class_name_from_the_config_is_a_target(clf: object) -> None:
    """config.id2label names a Hugging Face classifier's classes: target='LABEL_2' is output 2 (it was refused)."""
    from whybox.models.text import explain_text

    by_name = explain_text(clf, SENTENCES[:2], "occlusion", target="LABEL_2")
    by_index = explain_text(clf, SENTENCES[:2], "occlusion", target=2)
    assert by_name.explanation.target.tolist() == [2, 2]
    assert torch.equal(by_name.explanation.attributions, by_index.explanation.attributions)
    with pytest.raises(whybox.InvalidTargetError, match=r"target 'LABEL_9' is not one of the model's classes"):
        explain_text(clf, SENTENCES[:1], "occlusion", target="LABEL_9")


def test_texts_given_to_explain_name_explain_text(clf: object) -> None:
    with pytest.raises(
        whybox.InvalidInputError,
        match=r"inputs are text, but 'occlusion' takes the text adapter's packed inputs \(B, T, D \+ 1\): use "
        r"whybox\.explain_text\(adapter, texts, method\)",
    ):
        whybox.explain(clf, ["the movie"], "occlusion")
    # the function it names is at the top level, and gives the words
    out = whybox.explain_text(clf, ["the movie"], "occlusion")  # type: ignore[arg-type]
    assert [w for w, _ in out.words[0]] == ["the", "movie"]


@pytest.mark.parametrize("metric", ["deletion", "comprehensiveness", "mufidelity"])
def test_evaluate_takes_the_texts_and_what_explain_text_returned(clf: object, metric: str) -> None:
    """Texts are encoded and read over their words (explain_text's): the packed inputs with the words as regions;
    an explain_text result is its explanation."""
    out = whybox.explain_text(clf, SENTENCES[:2], "occlusion")  # type: ignore[arg-type]
    # a word's value as explain_text shows an occlusion's (one token a window): the sum over its tokens
    words: dict[str, object] = {"regions": out.batch.word_features(), "pool": "sum"}
    packed = whybox.evaluate(clf, out.batch.inputs, out.explanation, metric, **words)
    assert torch.equal(whybox.evaluate(clf, SENTENCES[:2], out, metric).scores, packed.scores)
    assert torch.equal(whybox.evaluate(clf, out.batch.inputs, out, metric, **words).scores, packed.scores)


def test_stability_of_a_method_on_texts_runs_it_with_the_text_options(clf: object) -> None:
    from whybox.models.text import text_defaults

    batch = clf.encode(SENTENCES[:2])  # type: ignore[attr-defined]
    opts = {"n_samples": 48}
    got = whybox.evaluate(clf, SENTENCES[:2], "lime", "stability", n_runs=3, explainer_params=opts)
    want = whybox.evaluate(
        clf, batch.inputs, "lime", "stability", n_runs=3, explainer_params={**text_defaults("lime", batch), **opts}
    )
    assert torch.equal(got.scores, want.scores)
    # over words (the text options), not over every embedding entry; tensor options named by shape
    assert got.params["explainer_params"]["features"] == f"tensor{tuple(batch.word_features().shape)}"


def test_a_model_whose_config_says_multi_label_reads_each_labels_sigmoid() -> None:
    """A Hugging Face classifier with problem_type='multi_label_classification' (trained with a sigmoid per label,
    e.g. a toxicity model) is adapted as kind='multilabel': LIME and the metrics read each label's sigmoid by default,
    as they do when kind='multilabel' is named; a softmax would make the labels compete."""
    from whybox.models.text import explain_text

    model = tiny_bert()
    model.config.problem_type = "multi_label_classification"
    ml = adapt_text(model, toy_tokenizer())
    assert ml.kind == "multilabel" and whybox.adapt(model, output="logits").kind == "multilabel"
    named = adapt_text(tiny_bert(), toy_tokenizer(), kind="multilabel")
    plain = adapt_text(tiny_bert(), toy_tokenizer())
    assert plain.kind == "classifier"
    a = explain_text(ml, SENTENCES[:2], "lime", target=2, n_samples=64)
    b = explain_text(named, SENTENCES[:2], "lime", target=2, n_samples=64)
    c = explain_text(plain, SENTENCES[:2], "lime", target=2, n_samples=64)
    assert a.explanation.params["score"] == "sigmoid"
    torch.testing.assert_close(a.explanation.attributions, b.explanation.attributions)
    assert (a.explanation.attributions - c.explanation.attributions).abs().max() > 1e-6


def test_a_text_attribution_shows_its_words_coloured_by_value(clf: object) -> None:
    """to_html (a page) and _repr_html_ (what a notebook shows) hold one span per word, in reading order, titled
    with its value and red where it is for the explained class, blue where against."""
    from test_tokens_render import BLUE, RED, parse, rgba

    out = whybox.explain_text(clf, SENTENCES[:2], "occlusion")  # type: ignore[arg-type]
    words = [w for row in out.words for w, _ in row]
    values = [v for row in out.words for _, v in row]
    for page in (out.to_html(), out._repr_html_()):
        p = parse(page)
        assert p.texts == words
        assert [s["title"] for s in p.spans] == [format(v + 0.0, "+.3g") for v in values]
        assert [rgba(s)[0] for s, v in zip(p.spans, values, strict=True) if v != 0] == [
            RED if v > 0 else BLUE for v in values if v != 0
        ]
    target = out.explanation.target.tolist()
    names = clf.model.config.id2label  # type: ignore[attr-defined]
    assert parse(out.to_html()).headings[1:] == [f"text {r}, class {t} ({names[t]})" for r, t in enumerate(target)]


def test_a_decoder_classifier_is_scored_at_each_text_s_last_token(make_gpt2_classifier: Any) -> None:
    """GPT-2's classifier reads the last non-pad token, which it finds from input_ids; given word embeddings it read
    the last position, a pad in every shorter row: a text's scores and attributions changed with its batch. Now
    each row is read at its own last token (the model's own logits from input_ids), the default attention readout is
    that row (row 0 reads only itself under causal attention), and a tokenizer without a pad token is named."""
    model, tok = make_gpt2_classifier()
    clf = adapt_text(model, tok)
    texts = ["the movie was great and fun", "boring plot", "it"]
    batch = clf.encode(texts)
    with torch.no_grad():
        own = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        torch.testing.assert_close(clf.scores(batch.inputs), own)
    both = whybox.explain_text(clf, texts, "occlusion")
    for i, text in enumerate(texts):
        alone = whybox.explain_text(clf, [text], "occlusion")
        assert [w for w, _ in both.words[i]] == [w for w, _ in alone.words[0]]
        torch.testing.assert_close(
            torch.tensor([v for _, v in both.words[i]]), torch.tensor([v for _, v in alone.words[0]])
        )
    rollout = whybox.explain_text(clf, texts[:1], "raw_attention")
    assert rollout.explanation.meta["readout"] == "last"
    assert max(v for _, v in rollout.words[0]) < 0.9  # not everything on the first token
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    bare = Tokenizer(models.WordLevel({"<eos>": 0, "it": 1}, unk_token="<eos>"))
    bare.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    no_pad = PreTrainedTokenizerFast(tokenizer_object=bare, unk_token="<eos>", eos_token="<eos>")
    with pytest.raises(InvalidParameterError) as err:
        adapt_text(model, no_pad).encode(["it"])
    assert str(err.value) == (
        f"the tokenizer ({type(no_pad).__name__}) has no padding token, which whybox pads texts with; set one, e.g. "
        "tokenizer.pad_token = tokenizer.eos_token (as Hugging Face does for GPT-2)."
    )


@pytest.mark.parametrize("method", ["attention_relevance", "attention_rollout", "raw_attention"])
def test_a_decoder_classifier_s_attention_maps_do_not_depend_on_the_batch(
    make_gpt2_classifier: Any, method: str
) -> None:
    """The attention methods ran GPT-2 on the padded batch, whose logits come from the last position (a pad for every
    shorter text): relevance followed a pad's logit and the recorded targets were a pad's argmax. Now each token
    length's rows run cut after their last token, as the adapter scores them: a text's map and target are those it
    gets alone, and the targets are the model's own predictions from token ids."""
    model, tok = make_gpt2_classifier()
    clf = adapt_text(model, tok)
    texts = ["the movie was great and fun", "boring plot", "it was not a good film"]
    batch = clf.encode(texts)
    with torch.no_grad():
        own = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.argmax(1)
    for target in (None, 1):
        both = whybox.explain_text(clf, texts, method, target=target).explanation
        assert both.target.tolist() == (own.tolist() if target is None else [1, 1, 1])
        for i, text in enumerate(texts):
            alone = whybox.explain_text(clf, [text], method, target=target).explanation
            n = alone.attributions.shape[1]
            torch.testing.assert_close(both.attributions[i, :n], alone.attributions[0], rtol=0, atol=1e-12)
            assert bool((both.attributions[i, n:] == 0).all())


def test_a_left_padding_tokenizer_pads_after_each_text(make_gpt2_classifier: Any) -> None:
    """With tokenizer.padding_side = "left" a shorter text's tokens sat at later positions (the inputs are word
    embeddings: no position ids offset them), so its scores and maps changed with its batch (0.059 alone, 0.092
    beside a longer text). whybox pads after each text whatever the side, and leaves the tokenizer's side as it was."""
    model, tok = make_gpt2_classifier()
    tok.padding_side = "left"
    clf = adapt_text(model, tok)
    texts = ["the movie was great and fun", "boring plot"]
    batch = clf.encode(texts)
    assert tok.padding_side == "left" and batch.attention_mask[1].tolist() == [1, 1, 0, 0, 0, 0]
    alone = clf.encode(texts[1:])
    torch.testing.assert_close(clf.scores(batch.inputs)[1], clf.scores(alone.inputs)[0], rtol=0, atol=1e-12)
    both = whybox.explain_text(clf, texts, "attention_relevance", target=1).explanation
    one = whybox.explain_text(clf, texts[1:], "attention_relevance", target=1).explanation
    torch.testing.assert_close(both.attributions[1, :2], one.attributions[0], rtol=0, atol=1e-12)


def test_a_text_longer_than_the_position_table_is_cut_there() -> None:
    """max_length (128 by default) above the model's 64 positions made a long text a raw size error deep inside
    transformers; it is cut at 64 tokens with the truncation warning naming the model's limit."""
    clf = adapt_text(tiny_bert(), toy_tokenizer())
    assert clf.max_length == 64
    long = " ".join(["the movie was great"] * 30)
    with pytest.warns(whybox.models.text.TruncatedTextWarning, match=r"longer than max_length=64 tokens: .* This "
                      r"model reads at most 64 tokens \(its position table\): split the texts\."):  # fmt: skip
        e = whybox.explain_text(clf, [long], "occlusion")
    assert len(e.words[0]) < 64
