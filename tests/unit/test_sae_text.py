"""SAE plumbing for text models, on the tiny float64 BERT of conftest and small random SAEs.

Properties: the collected activations are Hugging Face's ``hidden_states[layer + 1]`` at exactly the ordinary
tokens (texts run one by one, so batching and padding change nothing); the model comes back as it went in;
feature contexts agree with a brute-force scan; the feature adapter's scores equal the SAE applied to the
collected activations and pooled by hand, and Integrated Gradients on it is complete with zeros at the specials;
the logit-to-feature attribution satisfies its exact identity against gradient × activation at the layer computed
on the unspliced model, and each feature's value equals the slow formula; the stdlib corpus is deterministic
(two child interpreters, two hash seeds, give one list), deduplicated and normalised."""

from __future__ import annotations

import re
import sys
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the text extra (transformers) is not installed")
tokenizers = pytest.importorskip("tokenizers", reason="the text extra (tokenizers) is not installed")

import whybox  # noqa: E402
from whybox.data.corpus import MIN_CHARS, _collect_paragraphs, stdlib_docstrings  # noqa: E402
from whybox.errors import InvalidParameterError, InvalidTargetError, LayerError  # noqa: E402
from whybox.explainers.llm.sae import SAEConfig, SparseAutoencoder  # noqa: E402
from whybox.explainers.llm.sae_text import (  # noqa: E402
    SAEFeatureAdapter,
    _context,
    collect_activations,
    feature_contexts,
    prediction_to_features,
)

F64 = torch.float64
TEXTS = [
    "the movie was great",
    "it was not a good film but the acting was fun",
    "boring plot",
    "playing it and loving the story",
    "a very terrible and boring film",
]


@pytest.fixture(scope="module")
def clf(make_text_classifier: object) -> object:
    return make_text_classifier()  # type: ignore[operator]


def random_sae(activation: str = "relu", d_sae: int = 48, k: int = 6, seed: int = 1) -> SparseAutoencoder:
    """A random float64 SAE on 32 dims with a small positive encoder bias (about half the latents fire)."""
    sae = SparseAutoencoder(SAEConfig(d_in=32, d_sae=d_sae, activation=activation, k=k, seed=seed), dtype=F64)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.b_e.copy_(0.1 * torch.rand(d_sae, generator=g, dtype=F64))
        sae.b_d.copy_(0.1 * torch.randn(32, generator=g, dtype=F64))
    return sae.eval()


def hf_hidden(clf: object, text: str, layer: int) -> tuple[torch.Tensor, list[int], list[str]]:
    """Hugging Face's own hidden_states[layer + 1] for one text alone, its ordinary positions and tokens."""
    enc = clf.tokenizer(text, return_tensors="pt", return_special_tokens_mask=True)  # type: ignore[attr-defined]
    with torch.no_grad():
        out = clf.model(input_ids=enc["input_ids"], output_hidden_states=True)  # type: ignore[attr-defined]
    pos = [i for i, s in enumerate(enc["special_tokens_mask"][0].tolist()) if not s]
    toks = clf.tokenizer.convert_ids_to_tokens(enc["input_ids"][0, pos].tolist())  # type: ignore[attr-defined]
    return out.hidden_states[layer + 1][0, pos], pos, toks


@pytest.mark.parametrize("layer", [0, 1])
def test_activations_are_hf_hidden_states_at_the_ordinary_tokens(clf: object, layer: int) -> None:
    model = clf.model  # type: ignore[attr-defined]
    model.train()  # the call must run in eval mode and hand the model back in train mode
    try:
        acts, refs, tokens = collect_activations(clf, TEXTS, layer=layer, batch_size=2)  # type: ignore[arg-type]
        assert model.training and all(m.training for m in model.modules())
    finally:
        model.eval()
    assert acts.dtype == F64 and acts.shape == (len(refs), 32) and len(tokens) == len(refs)
    row = 0
    for i, text in enumerate(TEXTS):
        ref, pos, toks = hf_hidden(clf, text, layer)
        n = len(pos)
        assert refs[row : row + n] == [(i, p) for p in pos]
        assert tokens[row : row + n] == toks
        assert torch.allclose(acts[row : row + n], ref, atol=1e-12, rtol=0)  # padded batch == alone
        row += n
    assert row == len(refs)
    assert not {"[CLS]", "[SEP]", "[PAD]"} & set(tokens)
    assert all(p >= 1 for _, p in refs)  # [CLS] is position 0


def test_feature_contexts_agree_with_a_brute_force_scan(clf: object) -> None:
    sae = random_sae()
    acts, refs, tokens = collect_activations(clf, TEXTS, layer=1)  # type: ignore[arg-type]
    f = sae.encode(acts).detach()
    out = feature_contexts(sae, acts, refs, TEXTS, tokens, k=3, latents=[5, 0], window=2)
    assert [c.latent for c in out] == [5, 0]
    for c in out:
        col = f[:, c.latent]
        expect = col.sort(descending=True).values[:3]
        expect = expect[expect > 0]
        assert torch.allclose(c.values, expect, atol=1e-12)
        assert torch.equal(col[c.rows], c.values)
        assert c.density == pytest.approx(float((col > 0).double().mean()))
        for row, ctx, tok, ref in zip(c.rows, c.contexts, c.tokens, c.token_refs, strict=True):
            assert tok == tokens[row] and ref == refs[row]
            assert f"«{tok.removeprefix('##')}»" in ctx
            # at most 2 words either side of the marked word
            assert len(ctx.replace("… ", "").replace(" …", "").split()) <= 5
    # a word piece is shown inside its word
    acts_row = tokens.index("##ing")
    text_tokens = [tokens[r] for r in range(len(refs)) if refs[r][0] == refs[acts_row][0]]
    assert _context(text_tokens, text_tokens.index("##ing"), 1) == "play«ing» it …"


@pytest.mark.parametrize("pool", ["mean", "max"])
def test_feature_adapter_scores_are_the_pooled_sae_features(clf: object, pool: str) -> None:
    sae = random_sae()
    fa = SAEFeatureAdapter.from_text_adapter(clf, sae, layer=0, features=[3, 7, 11], pool=pool)  # type: ignore[arg-type]
    batch = fa.encode(TEXTS)
    with torch.no_grad():
        got = fa.scores(batch.inputs)
    acts, refs, _ = collect_activations(clf, TEXTS, layer=0)  # type: ignore[arg-type]
    f = sae.encode(acts)[:, [3, 7, 11]].detach()
    text_of = torch.tensor([t for t, _ in refs])
    for i in range(len(TEXTS)):
        rows = f[text_of == i]
        expect = rows.mean(0) if pool == "mean" else rows.max(0).values
        assert torch.allclose(got[i], expect, atol=1e-12)


@pytest.mark.parametrize(
    ("activation", "readout", "pool", "tol"),
    [
        ("topk", "pre_activation", "mean", 1e-9),  # smooth: complete to rounding
        ("topk", "relu", "mean", 1e-2),  # ReLU kinks: the quadrature converges slowly (0.6 % measured)
        ("relu", "activation", "max", 5e-2),  # and where the max switches tokens (2.3 % measured)
    ],
)
def test_feature_adapter_integrated_gradients_is_complete_and_zero_at_specials(
    clf: object, activation: str, readout: str, pool: str, tol: float
) -> None:
    sae = random_sae(activation)
    fa = SAEFeatureAdapter.from_text_adapter(clf, sae, layer=1, features=[3, 7], pool=pool, readout=readout)  # type: ignore[arg-type]
    batch = fa.encode(TEXTS)
    base = batch.baseline("pad")
    with torch.no_grad():
        fx, fb = fa.scores(batch.inputs), fa.scores(base)
    for target in (0, 1):
        e = whybox.explain(fa, batch.inputs, "integrated_gradients", baseline=base, target=target, n_steps=200)
        tok = batch.token_attributions(e)
        gap = fx[:, target] - fb[:, target]
        assert bool((gap.abs() > 1e-3).any())  # the feature moves between baseline and input
        delta = tok.sum(1) - gap
        assert torch.allclose(e.meta["delta"].to(F64), delta, atol=1e-10)
        assert bool((delta.abs() <= tol * gap.abs().clamp_min(1e-2)).all()), delta
        assert bool((tok[batch.special_mask] == 0).all())
    # the SAE and the model come back untouched
    assert all(p.requires_grad for p in sae.parameters()) and not sae._forward_hooks
    assert all(p.requires_grad for p in clf.model.parameters())  # type: ignore[attr-defined]


@pytest.mark.parametrize("activation", ["relu", "topk"])
def test_prediction_to_features_identity(clf: object, activation: str) -> None:
    """Σ_i a_i + bias + error = Σ_p x_p·g_p over ordinary tokens and special = the rest, where a_i comes from the
    spliced model and g_p = ∂logit/∂x_p from the unspliced one; a_i = Σ_p f_{p,i} d_i·g_p (slow formula)."""
    sae = random_sae(activation)
    layer = 0
    out = prediction_to_features(clf, TEXTS, sae, layer=layer, target=None, batch_size=2)  # type: ignore[arg-type]
    batch = clf.encode(TEXTS)  # type: ignore[attr-defined]
    block = clf.model.bert.encoder.layer[layer]  # type: ignore[attr-defined]
    box = {}

    def leaf(module: object, args: object, output: torch.Tensor) -> torch.Tensor:
        box["x"] = output.detach().requires_grad_(True)
        return box["x"]

    handle = block.register_forward_hook(leaf)
    try:
        logits = clf.scores(batch.inputs)  # type: ignore[attr-defined]
    finally:
        handle.remove()
    tgt = logits.argmax(1)
    (g,) = torch.autograd.grad(logits.gather(1, tgt[:, None]).sum(), box["x"])
    x, logits = box["x"].detach(), logits.detach()
    gxa = (x * g).sum(-1)  # (B, T) gradient × activation at the layer
    ordinary = ~batch.special_mask
    special = batch.special_mask & (batch.attention_mask == 1)
    f = sae.encode(x.reshape(-1, 32)).reshape(*x.shape[:2], -1).detach()
    slow = torch.einsum("btf,btd,df->bf", f * ordinary[..., None], g, sae.W_d.detach())
    for r, pf in enumerate(out):
        assert pf.target == int(tgt[r]) and pf.logit == pytest.approx(float(logits[r, tgt[r]]), abs=1e-12)
        total = float(pf.attributions.sum()) + pf.bias + pf.error
        assert total == pytest.approx(float(gxa[r][ordinary[r]].sum()), abs=1e-10)
        assert pf.special == pytest.approx(float(gxa[r][special[r]].sum()), abs=1e-10)
        assert torch.allclose(pf.attributions, slow[r, pf.features], atol=1e-12)
        active = (f[r][ordinary[r]] > 0).any(0)
        assert set(pf.features.tolist()) == set(torch.nonzero(active).flatten().tolist())
        assert bool((pf.attributions.abs().diff() <= 0).all())  # sorted by |attribution|
        assert 0 <= pf.error_share <= 1


def test_prediction_to_features_on_a_decoder_classifier_batches_texts_of_any_length(make_gpt2_classifier: Any) -> None:
    """GPT-2's classifier is scored one token length at a time; the SAE splice indexed every such call with the whole
    batch's token mask (IndexError for two texts of different lengths in one batch). Now each text's result is the
    one it gets alone, in the order given."""
    model, tok = make_gpt2_classifier(num_labels=3)
    gpt = whybox.adapt_text(model, tok)
    sae = SparseAutoencoder(SAEConfig(d_in=16, d_sae=24, activation="relu", seed=2), dtype=F64).eval()
    texts = ["the movie was great and fun", "boring plot", "it was not a good film", "a very terrible film"]
    both = prediction_to_features(gpt, texts, sae, layer=0, target=[0, 1, 2, 0], batch_size=3)  # type: ignore[arg-type]
    assert [p.text for p in both] == texts and [p.target for p in both] == [0, 1, 2, 0]
    for i, text in enumerate(texts):
        (alone,) = prediction_to_features(gpt, [text], sae, layer=0, target=[0, 1, 2, 0][i])  # type: ignore[arg-type]
        assert both[i].logit == pytest.approx(alone.logit, abs=1e-12)
        assert torch.equal(both[i].features, alone.features)
        torch.testing.assert_close(both[i].attributions, alone.attributions, rtol=0, atol=1e-12)


def test_feature_adapter_explains_each_feature_value_itself(clf: object) -> None:
    """The scores are feature values, not class logits: a feature's perturbation explanation and its metric scores
    do not depend on which other features the adapter reads (no softmax across features), and a string target
    names a latent, not one of the classifier's classes."""
    sae = random_sae()
    both = SAEFeatureAdapter.from_text_adapter(clf, sae, layer=0, features=[3, 7])  # type: ignore[arg-type]
    alone = SAEFeatureAdapter.from_text_adapter(clf, sae, layer=0, features=[7])  # type: ignore[arg-type]
    e2 = whybox.explain_text(both, TEXTS, "occlusion", target="latent 7")
    e1 = whybox.explain_text(alone, TEXTS, "occlusion", target=0)
    assert e2.explanation.target.tolist() == [1] * len(TEXTS)
    assert e2.explanation.params["score"] == "logit"
    assert bool(e1.explanation.attributions.abs().amax() > 0)
    assert torch.allclose(e2.explanation.attributions, e1.explanation.attributions, atol=1e-12)
    m2 = whybox.evaluate(both, TEXTS, e2, "comprehensiveness").scores
    m1 = whybox.evaluate(alone, TEXTS, e1, "comprehensiveness").scores
    assert torch.allclose(m2, m1, atol=1e-12)
    with pytest.raises(
        InvalidTargetError,
        match=re.escape("target 'LABEL_1' is not one of the model's outputs ['latent 3', 'latent 7']"),
    ):
        whybox.explain_text(both, TEXTS[:1], "occlusion", target="LABEL_1")
    with pytest.raises(InvalidParameterError, match=re.escape("are SAE feature values (latents [3, 7] at block 0)")):
        whybox.explain_text(both, TEXTS[:1], "occlusion", score="prob")


def test_errors_name_the_parameter(clf: object) -> None:
    sae = random_sae()
    with pytest.raises(LayerError, match=re.escape("layer must be an int in [0, 1] (the model has 2 transformer")):
        collect_activations(clf, TEXTS, layer=2)  # type: ignore[arg-type]
    wide = SparseAutoencoder(SAEConfig(d_in=16, d_sae=8, k=2))
    with pytest.raises(InvalidParameterError, match="reads 16-dimensional activations but the model's hidden size"):
        SAEFeatureAdapter.from_text_adapter(clf, wide, layer=0)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match=re.escape("features must be a latent id or a non-empty list")):
        SAEFeatureAdapter.from_text_adapter(clf, sae, layer=0, features=[48])  # type: ignore[arg-type]


def test_stdlib_corpus_is_deterministic_deduplicated_and_normalised() -> None:
    first = stdlib_docstrings(limit=200)
    assert first == stdlib_docstrings(limit=200) and len(first) == 200
    full = stdlib_docstrings()
    assert full[:200] == first
    assert len(full) > 5000 and len(set(full)) == len(full)
    assert all(len(p) >= MIN_CHARS and p == " ".join(p.split()) for p in full)
    # a second child interpreter (its own random hash seed) builds the same list; this process imported nothing
    assert _collect_paragraphs() == full
    assert "tabnanny" not in sys.modules and "mailbox" not in sys.modules
    with pytest.raises(InvalidParameterError, match=re.escape("limit must be None or an int >= 0; got -1.")):
        stdlib_docstrings(limit=-1)


def test_attention_methods_follow_the_sae_feature_not_the_classifiers_logits(clf: object) -> None:
    """The attention methods read an SAE adapter's scores from the full forward pass (hidden_states[layer + 1]):
    the same scores as the adapter's own; attention relevance explains the feature (its predicted 'class' is the
    largest feature, not the classifier's argmax), with the mean readout of a score pooled over tokens."""
    sae = random_sae()
    fa = SAEFeatureAdapter.from_text_adapter(clf, sae, layer=0, features=[3, 7, 11], pool="mean")  # type: ignore[arg-type]
    batch = fa.encode(TEXTS)
    with torch.no_grad():
        out = fa.model(
            inputs_embeds=batch.inputs[..., :-1], attention_mask=batch.attention_mask, output_hidden_states=True
        )
        mask = batch.attention_mask
        torch.testing.assert_close(fa.scores_from_output(out, mask), fa.scores(batch.inputs), rtol=0, atol=1e-12)
        own, logits = fa.scores(batch.inputs).argmax(1), clf.scores(batch.inputs).argmax(1)  # type: ignore[attr-defined]
    e = whybox.explain(fa, batch.inputs, "attention_relevance")
    assert e.target.tolist() == own.tolist() and e.meta["readout"] == "mean"
    assert e.target.tolist() != logits.tolist()  # the classifier would pick other columns here
