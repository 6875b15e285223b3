"""Which text models without ``inputs_embeds`` whybox gives word vectors: only those that pool the end-of-text token
as CLIP does (read class by class in transformers' source), where stand-in ids mark it. SigLIP's text towers pool the
last position, a pad once a text shares its batch with a longer one, so their scores changed with the other texts of
the batch (0.7017 for "bad" beside a longer text, 0.6584 alone): they are refused with a message that says why.

Properties: each enabled tower's sentence embedding equals the model's own for the texts' real ids (an oracle), and a
text's score and explanations are the same alone and beside a longer text (batch-composition invariance)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

import whybox  # noqa: E402
from whybox.errors import InvalidParameterError  # noqa: E402
from whybox.explainers.attention import collect_attentions  # noqa: E402
from whybox.models._embeds import END_OF_TEXT_POOLED, stand_in_ids  # noqa: E402
from whybox.models.text import TextEncoderAdapter  # noqa: E402

WORDS = ["the", "movie", "was", "great", "bad", "a", "good", "story", "sad", "fun", "plot", "film"]
#: the end-of-text token [SEP] has the largest id, as CLIP's tokenizer gives it: models that pool the largest id and
#: models that pool the first eos_token_id read the same token of the real ids
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[MASK]"]
EOT = len(SPECIALS) + len(WORDS)
VOCAB = EOT + 1

#: (config class, model class): every class of END_OF_TEXT_POOLED that a user passes as a text tower
ENABLED = [
    ("CLIPTextConfig", "CLIPTextModelWithProjection"),
    ("CLIPTextConfig", "CLIPTextModel"),
    ("CLIPSegTextConfig", "CLIPSegTextModel"),
    ("GroupViTTextConfig", "GroupViTTextModel"),
    ("OwlViTTextConfig", "OwlViTTextModel"),
    ("Owlv2TextConfig", "Owlv2TextModel"),
    ("XCLIPTextConfig", "XCLIPTextModel"),
    ("MetaClip2TextConfig", "MetaClip2TextModel"),
    ("MetaClip2TextConfig", "MetaClip2TextModelWithProjection"),
    ("Aimv2TextConfig", "Aimv2TextModel"),
]
REFUSED = [("SiglipTextConfig", "SiglipTextModel"), ("Siglip2TextConfig", "Siglip2TextModel")]


def _tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate([*SPECIALS, *WORDS, "[SEP]"])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", EOT)]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def _model(config: str, cls: str, *, eos: int | None = EOT, dtype: torch.dtype = torch.float64, seed: int = 0):
    if not hasattr(transformers, cls):
        pytest.skip(f"transformers {transformers.__version__} has no {cls}")
    cfg = getattr(transformers, config)(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=20,
        eos_token_id=eos,
        bos_token_id=2,
        pad_token_id=0,
        attn_implementation="eager",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, cls)(cfg)
    return model.to(dtype).eval()


def _own(out):
    """The model's own sentence embedding: the projection's text_embeds, else the end-of-text state."""
    return out.text_embeds if getattr(out, "text_embeds", None) is not None else out.pooler_output


def test_the_enabled_list_is_the_verified_one():
    assert {cls for _, cls in ENABLED} <= set(END_OF_TEXT_POOLED)
    assert not {cls for _, cls in REFUSED} & set(END_OF_TEXT_POOLED)


@pytest.mark.parametrize(("config", "cls"), REFUSED)
def test_siglip_text_towers_are_refused_with_the_reason(config, cls):
    model = _model(config, cls, dtype=torch.float32)
    tok = _tokenizer()
    pattern = (
        rf"model: {cls}\.forward takes input_ids and no inputs_embeds(.|\n)*CLIPTextModel(.|\n)*{cls} pools the last "
        r"position \(\[:, -1\]\)(.|\n)*depend on which other texts share the batch(.|\n)*not supported yet"
    )
    for kind, refs in (("embedding", "a good story"), ("classifier", None)):
        with pytest.raises(InvalidParameterError, match=pattern):
            whybox.adapt_text(model, tok, kind=kind, references=refs)
    # an adapter built by hand is refused at its first forward, with the word-embedding module left without a hook
    enc = TextEncoderAdapter(model, tok, references=torch.zeros(1, 32), pooling="model")
    with pytest.raises(InvalidParameterError, match=pattern):
        enc.embed(enc.encode(["bad"]).inputs)
    assert not model.get_input_embeddings()._forward_hooks
    # collect_attentions: word vectors (stand-in ids would not say where SigLIP pools) refused ...
    batch = tok(["a good film , fun plot", "bad"], padding=True, return_tensors="pt")
    with torch.no_grad():
        vectors = model.get_input_embeddings()(batch["input_ids"])
    with pytest.raises(InvalidParameterError, match=pattern):
        collect_attentions(
            model,
            target=0,
            scores=lambda o: o.pooler_output,
            inputs_embeds=vectors,
            attention_mask=batch.attention_mask,
        )
    assert not model.get_input_embeddings()._forward_hooks
    # ... while its own ids run as given: the logits of a plain forward
    logits, atts, grads = collect_attentions(model, target=0, scores=lambda o: o.pooler_output, **batch)
    with torch.no_grad():
        plain = model(**batch, output_attentions=True)
    torch.testing.assert_close(logits, plain.pooler_output)
    for got, want in zip(atts, plain.attentions, strict=True):
        torch.testing.assert_close(got, want)
    assert grads is not None and not model.get_input_embeddings()._forward_hooks


@pytest.mark.parametrize(("config", "cls"), ENABLED)
def test_an_enabled_text_tower_embeds_as_the_model_does(config, cls):
    """The adapter's sentence embeddings (word vectors through the embedding module, stand-in ids) equal the model's
    own output for the texts' real ids, padded rows included."""
    model = _model(config, cls)
    tok = _tokenizer()
    enc = whybox.adapt_text(model, tok, kind="embedding", references=["a good story", "the film was sad"])
    assert enc.pooling == "model"
    batch = enc.encode(["the movie was great , a good plot", "bad", "a sad film"])
    assert int(batch.attention_mask.sum(-1).min()) < batch.attention_mask.shape[1]  # padded rows
    with torch.no_grad():
        got = enc.embed(batch.inputs)
        want = _own(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask))
    torch.testing.assert_close(got, torch.nn.functional.normalize(want, dim=-1), rtol=1e-10, atol=1e-12)
    assert not model.get_input_embeddings()._forward_hooks


@pytest.mark.parametrize(("config", "cls"), ENABLED)
def test_an_enabled_text_tower_scores_a_text_alike_alone_and_beside_a_longer_one(config, cls):
    """Batch-composition invariance: "bad" scores and is explained the same alone and padded beside a longer text."""
    model = _model(config, cls, dtype=torch.float32)
    enc = whybox.adapt_text(model, _tokenizer(), kind="embedding", references="a good story")
    texts = ["a good film , fun plot , the movie was great", "bad"]
    with torch.no_grad():
        beside = enc.scores(enc.encode(texts).inputs)[1]
        alone = enc.scores(enc.encode(texts[1:]).inputs)[0]
    torch.testing.assert_close(beside, alone, rtol=1e-5, atol=1e-6)
    for method in ("saliency", "attention_relevance"):
        got = whybox.explain_text(enc, texts, method, target=0).words[1]
        want = whybox.explain_text(enc, texts[1:], method, target=0).words[0]
        assert [w for w, _ in got] == [w for w, _ in want] == ["bad"]
        torch.testing.assert_close(
            torch.tensor([v for _, v in got]), torch.tensor([v for _, v in want]), rtol=1e-4, atol=1e-6
        )


@pytest.mark.parametrize(("config", "cls"), [c for c in ENABLED if END_OF_TEXT_POOLED[c[1]] == "argmax"])
@pytest.mark.parametrize("eos", [0, None])
def test_a_tower_pooling_the_largest_id_is_marked_whatever_its_eos_token_id(config, cls, eos):
    """OwlViT and X-CLIP pool the largest id, not config.eos_token_id: with an eos_token_id of 0 or none the stand-in
    mark is still the row's largest id (an eos 0 among fills of 1 read the first token)."""
    model = _model(config, cls, eos=eos)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    assert stand_in_ids(model, mask).argmax(-1).tolist() == [3, 1]
    enc = whybox.adapt_text(model, _tokenizer(), kind="embedding", references="a good story")
    batch = enc.encode(["the movie was great", "bad"])
    with torch.no_grad():
        got = enc.embed(batch.inputs)
        want = _own(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask))
    torch.testing.assert_close(got, torch.nn.functional.normalize(want, dim=-1), rtol=1e-10, atol=1e-12)


def test_a_clip_tower_without_an_eos_token_id_is_refused():
    """CLIP pools the first config.eos_token_id: without one there is no token to mark (Hugging Face's own forward
    fails on its ids too)."""
    model = _model("CLIPTextConfig", "CLIPTextModelWithProjection", eos=None)
    with pytest.raises(InvalidParameterError, match=r"config\.eos_token_id, which is None; set model\.config"):
        whybox.adapt_text(model, _tokenizer(), kind="embedding", references="a good story")
