"""CLIP's text towers take ``input_ids`` and no ``inputs_embeds``: whybox gives them word vectors and takes gradients
at them through their word-embedding module's output (a forward hook for the call), with stand-in ids marking the
end-of-text token where CLIP pools. Checked against oracles written straight from the model: Chefer relevance from
the model's own attentions and their gradients (parameters requiring grad, no hook), the model's own ``text_embeds``,
and the gradient at the word-embedding output of a plain forward."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

import whybox  # noqa: E402
from whybox.explainers.attention import collect_attentions, gradient_weighted_relevance, readout  # noqa: E402
from whybox.models._embeds import stand_in_ids  # noqa: E402

F64 = torch.float64
WORDS = ["the", "movie", "was", "great", "bad", "a", "good", "story", "sad", "fun", "plot", "film"]


def _tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def _clip_text(cls=None, *, eos: int = 99, vocab: int = 100, seed: int = 0):
    cfg = transformers.CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        projection_dim=16,
        max_position_embeddings=20,
        eos_token_id=eos,
        bos_token_id=vocab - 2,
        pad_token_id=0,
        attention_dropout=0.0,
        attn_implementation="eager",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = (cls or transformers.CLIPTextModelWithProjection)(cfg)
    return model.to(F64).eval()


def _ids_and_mask():
    """Two right-padded rows of random ids ending in the end-of-text id 99 (the largest id), at different lengths."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 90, (2, 7), generator=g)
    mask = torch.ones(2, 7, dtype=torch.long)
    ids[0, 6] = 99
    ids[1, 4] = 99
    ids[1, 5:] = 0
    mask[1, 5:] = 0
    return ids, mask


def _oracle(model, ids, mask, score_fn, target, eot_id=99):
    """Attentions, their gradients and the Chefer relevance row at the end-of-text token, from a plain forward of a
    fresh copy of the model with its parameters requiring grad (no hook, no whybox)."""
    out = model(input_ids=ids, attention_mask=mask, output_attentions=True, return_dict=True)
    atts = list(out.attentions)
    score = score_fn(out)[:, target].sum()
    grads = torch.autograd.grad(score, atts)
    eot = (ids == eot_id).int().argmax(-1)
    rows = []
    for b in range(ids.shape[0]):
        r = torch.eye(ids.shape[1], dtype=F64)
        for a, g in zip(atts, grads, strict=True):
            r = r + (a[b] * g[b]).clamp(min=0).mean(0) @ r
        rows.append(r[int(eot[b])] * mask[b])
    return [a.detach() for a in atts], [g.detach() for g in grads], torch.stack(rows)


def test_collect_attentions_with_grads_on_a_clip_text_tower_matches_the_chefer_oracle():
    model = _clip_text()
    ids, mask = _ids_and_mask()
    ref = torch.randn(3, 16, dtype=F64, generator=torch.Generator().manual_seed(2))

    def sims(out):
        return torch.nn.functional.normalize(out.text_embeds, dim=-1) @ torch.nn.functional.normalize(ref, dim=-1).T

    want_atts, want_grads, want_rows = _oracle(_clip_text(), ids, mask, sims, target=1)
    frozen = [p.requires_grad for p in model.parameters()]
    _, atts, grads = collect_attentions(model, target=1, scores=sims, input_ids=ids, attention_mask=mask)
    assert grads is not None
    for got, want in zip(atts + grads, want_atts + want_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert any(bool(g.abs().sum() > 0) for g in grads)
    rows = readout(gradient_weighted_relevance(atts, grads), (ids == 99).int().argmax(-1), mask=mask)
    torch.testing.assert_close(rows, want_rows, rtol=1e-10, atol=1e-12)
    # the model leaves as it came: no hook left on its word embeddings, requires_grad as before
    assert not model.get_input_embeddings()._forward_hooks
    assert [p.requires_grad for p in model.parameters()] == frozen


def test_collect_attentions_removes_the_embedding_hook_when_the_call_raises():
    model = _clip_text()
    ids, mask = _ids_and_mask()
    ref = torch.randn(3, 16, dtype=F64)
    with pytest.raises(whybox.errors.InvalidTargetError):
        collect_attentions(
            model,
            target=7,
            scores=lambda out: out.text_embeds @ ref.T,
            input_ids=ids,
            attention_mask=mask,
        )
    assert not model.get_input_embeddings()._forward_hooks


@pytest.mark.parametrize("eos", [99, 2])  # eos_token_id=2: configs from before transformers' PR 24773 (largest id)
def test_inputs_embeds_to_a_clip_text_tower_act_as_their_input_ids(eos):
    """Word vectors without their ids (what whybox's text adapters pass) give the model's outputs, attentions and
    gradients for the ids they came from: stand-in ids mark the end-of-text token where CLIP pools."""
    model = _clip_text(eos=eos)
    ids, mask = _ids_and_mask()
    ref = torch.randn(3, 16, dtype=F64, generator=torch.Generator().manual_seed(3))
    stand_in = stand_in_ids(model, mask)
    assert stand_in[0, 6] == eos and stand_in[1, 4] == eos and int((stand_in != 0).sum()) == 2
    with torch.no_grad():
        vectors = model.get_input_embeddings()(ids)

    def sims(out):
        return out.text_embeds @ ref.T

    by_ids = collect_attentions(model, target=0, scores=sims, input_ids=ids, attention_mask=mask)
    by_vectors = collect_attentions(model, target=0, scores=sims, inputs_embeds=vectors, attention_mask=mask)
    for got, want in zip(
        [by_vectors[0], *by_vectors[1], *by_vectors[2]], [by_ids[0], *by_ids[1], *by_ids[2]], strict=True
    ):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert not model.get_input_embeddings()._forward_hooks


@pytest.mark.parametrize("cls", ["CLIPTextModelWithProjection", "CLIPTextModel"])
def test_adapt_text_embeds_a_clip_text_tower_as_the_model_does(cls):
    """adapt_text(kind='embedding') of a CLIP text tower: its sentence embedding is the model's own (text_embeds of
    the projection model, pooler_output of the plain one: the end-of-text token's final state), for the texts and
    for the references."""
    model = _clip_text(getattr(transformers, cls), eos=3, vocab=len(WORDS) + 5)
    tok = _tokenizer()
    enc = whybox.adapt_text(model, tok, kind="embedding", references=["a good story", "the film was sad"])
    assert enc.pooling == "model"
    batch = enc.encode(["the movie was great", "a sad plot", "fun"])
    with torch.no_grad():
        got = enc.embed(batch.inputs)
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        ref_batch = tok(["a good story", "the film was sad"], padding=True, return_tensors="pt")
        ref_out = model(**ref_batch)
    key = "text_embeds" if cls.endswith("Projection") else "pooler_output"
    torch.testing.assert_close(got, torch.nn.functional.normalize(getattr(out, key), dim=-1), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        enc.references, torch.nn.functional.normalize(getattr(ref_out, key), dim=-1), rtol=1e-10, atol=1e-12
    )
    assert not model.get_input_embeddings()._forward_hooks


def test_explain_text_on_a_clip_text_tower_matches_the_oracles():
    """Gradients at the word vectors and attention relevance (read at the end-of-text row, the last attended token)
    of a CLIP text encoder equal those of a plain forward of the model on the texts' own ids."""
    model = _clip_text(eos=3, vocab=len(WORDS) + 5)
    tok = _tokenizer()
    enc = whybox.adapt_text(model, tok, kind="embedding", references=["a good story", "the film was sad"])
    texts = ["the movie was great", "a sad plot"]
    batch = enc.encode(texts)
    refs = enc.references

    def sims(out):
        return torch.nn.functional.normalize(out.text_embeds, dim=-1) @ refs.T

    # gradient oracle: d sims[:, 1] / d (word-embedding output) of a plain forward with the real ids
    plain = _clip_text(eos=3, vocab=len(WORDS) + 5)
    kept = []
    handle = plain.get_input_embeddings().register_forward_hook(lambda m, i, o: kept.append(o) or o.retain_grad())
    try:
        sims(plain(input_ids=batch.input_ids, attention_mask=batch.attention_mask))[:, 1].sum().backward()
    finally:
        handle.remove()
    want = kept[0].grad * batch.attention_mask.unsqueeze(-1)
    got = whybox.explain(enc, batch.inputs, "saliency", target=1, abs=False)
    torch.testing.assert_close(got.attributions[..., :-1] * batch.attention_mask.unsqueeze(-1), want)

    res = whybox.explain_text(enc, texts, "attention_relevance", target=1, score="logit")
    assert res.explanation.meta["readout"] == "last"
    plain = _clip_text(eos=3, vocab=len(WORDS) + 5)
    _, _, want_rows = _oracle(plain, batch.input_ids, batch.attention_mask, sims, 1, eot_id=3)
    assert (batch.input_ids == 3).int().argmax(-1).tolist() == [5, 4]  # [SEP], the end-of-text token of each row
    torch.testing.assert_close(res.explanation.attributions[..., 0], want_rows, rtol=1e-10, atol=1e-12)
