"""The contract every method that applies to text keeps (parametrised over ``whybox.methods("text")``), on a tiny
BERT through ``whybox.adapt_text`` with the options ``explain_text`` fills in: attributions broadcast to the packed
inputs, padding changes nothing (a padded row equals the row alone), the model leaves exactly as it came (also
when a call raises), CLS/SEP/pads never move, save/load round trip; attention methods: rollout and raw attention
ignore the target, relevance follows each row's own target."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers", reason="the text extra (transformers) is not installed")
pytest.importorskip("tokenizers", reason="the text extra (tokenizers) is not installed")

import whybox
from whybox.errors import InvalidParameterError
from whybox.models.text import text_defaults

TEXT_METHODS = whybox.methods("text")
ATTENTION = ("raw_attention", "attention_rollout", "attention_relevance")
TEXTS = ["the movie was great", "it was not a good film but the acting was fun", "boring plot"]
FAST: dict[str, dict[str, Any]] = {"integrated_gradients": {"n_steps": 16}, "smoothgrad": {"n_samples": 4}}
# Methods with a baseline or a fill keep CLS/SEP/pads as they are, so those get 0: exactly, except LIME, whose ridge
# gives a never-changing feature a coefficient of about 0, and LIMA, whose maps are cumulative along its order.
# Plain gradients (saliency, gradient x input, SmoothGrad) and the attention maps read CLS/SEP like any token.
NOT_EXACT_ZERO = {"lime": 1e-6}
NO_ZERO_PROMISE = {"saliency", "input_x_gradient", "smoothgrad", "lima", *ATTENTION}


@pytest.fixture(scope="module")
def clf(make_text_classifier: Any) -> Any:
    return make_text_classifier()


def run(clf: Any, texts: list[str], method: str, **extra: Any) -> tuple[Any, Any]:
    batch = clf.encode(texts)
    opts = {**text_defaults(method, batch), **FAST.get(method, {}), **extra}
    return whybox.explain(clf, batch.inputs, method, **opts), batch


@pytest.mark.parametrize("method", TEXT_METHODS)
def test_text_explanation_contract(clf: Any, method: str) -> None:
    e, batch = run(clf, TEXTS, method, target=1)
    a = e.attributions
    assert a.shape[:2] == batch.inputs.shape[:2] and a.shape[-1] in (1, batch.inputs.shape[-1])
    assert torch.broadcast_shapes(a.shape, batch.inputs.shape) == batch.inputs.shape
    assert e.target.tolist() == [1, 1, 1] and e.method == method
    assert all(e.meta["finite"]) and e.meta["n_forward"] >= 1
    tok = batch.token_attributions(e)
    if method not in NO_ZERO_PROMISE:
        assert float(tok[batch.special_mask].abs().max()) <= NOT_EXACT_ZERO.get(method, 0.0)
    else:  # pads are 0 for every method
        assert bool((tok[batch.attention_mask == 0] == 0).all())


@pytest.mark.parametrize("method", TEXT_METHODS)
def test_a_padded_row_equals_the_row_alone(clf: Any, method: str) -> None:
    e, batch = run(clf, TEXTS, method, target=1)
    tok = batch.token_attributions(e)
    for r, text in enumerate(TEXTS):
        e1, one = run(clf, [text], method, target=1)
        n = one.inputs.shape[1]
        assert torch.allclose(one.token_attributions(e1)[0], tok[r, :n], atol=1e-8, rtol=1e-6), (method, r)
        assert bool((tok[r, n:] == 0).all())


@pytest.mark.parametrize("method", TEXT_METHODS)
def test_model_left_exactly_as_it_came(clf: Any, method: str) -> None:
    model = clf.model
    model.train()
    model.classifier.weight.requires_grad_(False)
    before = copy.deepcopy(model.state_dict())
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    impl = model.config._attn_implementation
    try:
        run(clf, TEXTS[:2], method, target=0)
        with pytest.raises((InvalidParameterError, ValueError, IndexError)):
            run(clf, TEXTS[:2], method, target=99)  # out of range: raises after the model ran
        assert model.training
        assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
        assert all(p.grad is None for p in model.parameters())
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
        assert model.config._attn_implementation == impl
    finally:
        model.eval()
        model.classifier.weight.requires_grad_(True)


@pytest.mark.parametrize("method", TEXT_METHODS)
def test_save_load_round_trip(clf: Any, method: str, tmp_path: Path) -> None:
    e, _ = run(clf, TEXTS[:2], method, target=2)
    e.save(tmp_path / "e.safetensors")
    back = whybox.Explanation.load(tmp_path / "e.safetensors")
    assert torch.equal(back.attributions, e.attributions) and torch.equal(back.target, e.target)
    assert back.method == method


@pytest.mark.parametrize("method", ["raw_attention", "attention_rollout"])
def test_attention_maps_ignore_the_target(clf: Any, method: str) -> None:
    a0, _ = run(clf, TEXTS, method, target=0)
    a2, _ = run(clf, TEXTS, method, target=2)
    assert torch.equal(a0.attributions, a2.attributions)
    cls_row, _ = run(clf, TEXTS, method, target=0)
    if method == "attention_rollout":  # rows of the rollout sum to 1: the CLS readout over real tokens too
        assert torch.allclose(cls_row.attributions[..., 0].sum(1), torch.ones(3, dtype=torch.float64), atol=1e-12)


def test_relevance_follows_each_row_s_target(clf: Any) -> None:
    per_row = torch.tensor([0, 2, 1])
    e, _ = run(clf, TEXTS, "attention_relevance", target=per_row)
    for r in range(3):
        e1, one = run(clf, [TEXTS[r]], "attention_relevance", target=int(per_row[r]))
        n = one.inputs.shape[1]
        assert torch.allclose(e1.attributions[0, :, 0], e.attributions[r, :n, 0], atol=1e-10)
    e_other, _ = run(clf, TEXTS, "attention_relevance", target=0)
    assert not torch.equal(e_other.attributions, e.attributions)


def test_attention_methods_refuse_models_that_are_not_text_classifiers(make_cnn: Any) -> None:
    for method in ATTENTION:
        with pytest.raises(InvalidParameterError, match=r"pass a text adapter from whybox.adapt_text"):
            whybox.explain(make_cnn(), torch.rand(1, 3, 8, 8), method)


# ------------------------------------------------------------------------------------ sentence encoders
def _encoder(clf: Any) -> Any:
    """The classifier's own BERT body as a mean-pooled sentence encoder scored against two reference sentences."""
    return whybox.adapt_text(clf.model.bert, clf.tokenizer, kind="embedding", references=["boring plot", "fun story"])


@pytest.mark.parametrize("method", ["raw_attention", "attention_rollout"])
def test_attention_maps_of_an_encoder_are_those_of_the_classifier_built_on_it(clf: Any, method: str) -> None:
    # the same transformer body, so the same attentions: class-agnostic maps agree whatever reads the output
    enc = _encoder(clf)
    e = whybox.explain(enc, enc.encode(TEXTS).inputs, method)
    assert e.meta["readout"] == "mean"  # the row a mean-pooled encoder reads
    c, _ = run(clf, TEXTS, method, readout="mean")
    assert torch.equal(e.attributions, c.attributions)


def test_relevance_of_an_encoder_weights_heads_by_the_gradient_of_the_similarity(clf: Any) -> None:
    from whybox.explainers.attention import gradient_weighted_relevance, readout

    enc = _encoder(clf)
    batch = enc.encode(TEXTS)
    for target in (0, 1):
        e = whybox.explain(enc, batch.inputs, "attention_relevance", target=target)
        # oracle: the cosine similarity to reference `target`, differentiated by hand through the eager encoder
        bert, mask = clf.model.bert, batch.attention_mask
        before = bert.config._attn_implementation
        bert.config._attn_implementation = "eager"
        try:
            out = bert(inputs_embeds=batch.inputs[..., :-1], attention_mask=mask, output_attentions=True)
        finally:
            bert.config._attn_implementation = before
        m = mask.to(out.last_hidden_state.dtype).unsqueeze(-1)
        u = (out.last_hidden_state * m).sum(1) / m.sum(1)
        sim = torch.nn.functional.cosine_similarity(u, enc.references[target].unsqueeze(0), dim=-1)
        grads = torch.autograd.grad(sim.sum(), out.attentions)
        r = gradient_weighted_relevance([a.detach() for a in out.attentions], list(grads))
        expected = readout(r, "mean", mask=mask) * mask
        assert torch.allclose(e.attributions[..., 0], expected, atol=1e-12)
        assert e.meta["n_forward"] == 3 and e.meta["n_backward"] == 3
    e0 = whybox.explain(enc, batch.inputs, "attention_relevance", target=0)
    e1 = whybox.explain(enc, batch.inputs, "attention_relevance", target=1)
    assert not torch.allclose(e0.attributions, e1.attributions)
