"""Sixth review of the attention readers (tiny Hugging Face models built from configs, random weights, float64, no
downloads): the row a vision model reads when it has no CLS token, a CLIP classifier's patch size, models whose
attention class was fixed when built, a user's wrapper whose forward takes no output_attentions, and the patch-row
mean of a mean-pooling image model."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers", reason="the text extra (transformers) is not installed")

import transformers

import whybox
from whybox.errors import InvalidParameterError
from whybox.explainers.attention.collect import collect_attentions
from whybox.explainers.attention.relevance import gradient_weighted_relevance
from whybox.explainers.attention.rollout import attention_rollout

TOWER = dict(
    image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
)


def _built(make: object) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return make().to(torch.float64).eval()  # type: ignore[operator]


def images(n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _matrix(method: str, att: list[torch.Tensor], grads: list[torch.Tensor] | None) -> torch.Tensor:
    return attention_rollout(att) if method == "attention_rollout" else gradient_weighted_relevance(att, grads or [])


# --- a vision transformer without a CLS token (SigLIP's image tower) -------------------------------------------------


def _siglip_tower() -> torch.nn.Module:
    return _built(lambda: transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**TOWER)))


@pytest.mark.parametrize("method", ["attention_rollout", "attention_relevance"])
def test_a_tower_without_cls_reads_the_mean_of_its_patch_rows(method: str) -> None:
    """SigLIP's tower has 16 tokens for 16 patches (no CLS): the map was R[:, 0] (the top-left patch's row, read as
    if it were a CLS row, 0.285 on that patch against ~0.04 elsewhere); it is the mean over the patch rows."""
    tower = _siglip_tower()
    refs = torch.randn(2, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ad = whybox.adapt(tower, kind="embedding", output="pooler_output", references=refs)
    x = images()
    e = whybox.explain(ad, x, method, target=1)
    _, att, grads = collect_attentions(
        tower, target=1, scores=lambda o: ad.similarities(o.pooler_output), pixel_values=x
    )
    assert att[0].shape[-1] == 16  # no prefix token
    r = _matrix(method, att, grads)
    assert e.meta["readout"] == "mean"
    torch.testing.assert_close(e.meta["grid"], r.mean(1).reshape(2, 4, 4), atol=1e-12, rtol=0)
    assert not torch.allclose(e.meta["grid"], r[:, 0].reshape(2, 4, 4), atol=1e-6)


def test_a_cls_readout_asked_of_a_tower_without_cls_is_refused() -> None:
    refs = torch.randn(2, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ad = whybox.adapt(_siglip_tower(), kind="embedding", output="pooler_output", references=refs)
    with pytest.raises(InvalidParameterError, match=r"readout='cls'.*no CLS token.*readout='mean'"):
        whybox.explain(ad, images(), "attention_rollout", readout="cls")


def _clip_classifier() -> torch.nn.Module:
    config = transformers.CLIPConfig(vision_config=TOWER, num_labels=3)
    return _built(lambda: transformers.CLIPForImageClassification(config))


def test_a_clip_classifier_is_taken_with_its_patch_size_from_the_vision_config() -> None:
    """CLIPForImageClassification keeps patch_size in config.vision_config: it was refused as 'not a vision
    transformer' although the error named CLIP's image tower among those supported. Its head averages the patch
    tokens, so the default readout is the mean."""
    clip = _clip_classifier()
    x = images()
    ad = whybox.adapt(clip, output="logits")
    e = whybox.explain(ad, x, "attention_rollout")
    assert e.meta["readout"] == "mean" and e.attributions.shape == (2, 1, 32, 32)
    cls = whybox.explain(ad, x, "attention_rollout", readout="cls")
    _, att, _ = collect_attentions(clip, with_grads=False, pixel_values=x)
    want = attention_rollout(att)[:, 0, 1:].reshape(2, 4, 4)
    torch.testing.assert_close(cls.meta["grid"], want, atol=1e-12, rtol=0)


def test_a_two_tower_model_is_not_taken_for_a_vision_transformer() -> None:
    """CLIPModel has a vision_config too, but its forward needs input_ids: still refused up front."""
    config = transformers.CLIPConfig(vision_config=TOWER, text_config=dict(hidden_size=32, intermediate_size=64,
        num_hidden_layers=1, num_attention_heads=4, vocab_size=50))  # fmt: skip
    model = _built(lambda: transformers.CLIPModel(config))
    with pytest.raises(InvalidParameterError, match="vision transformer"):
        whybox.explain(whybox.adapt(model, output="logits_per_image"), images(), "attention_rollout")


# --- a model whose attention class was fixed when it was built -------------------------------------------------------


def _data2vec(**kw: object) -> torch.nn.Module:
    config = transformers.Data2VecVisionConfig(**TOWER, num_labels=3, **kw)
    return _built(lambda: transformers.Data2VecVisionForImageClassification(config))


def test_attentions_of_none_name_the_attention_class_chosen_when_built() -> None:
    """Data2VecVision (of the BEiT family) picks its SDPA attention modules when built: under the config switched to eager
    they still returned attentions (None, None), and the error said the model had run 'under eager attention'."""
    from whybox.errors import ModelOutputError

    model = _data2vec()
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(ModelOutputError, match=r"\(None, None\).*when it was built.*attn_implementation=.eager."):
        whybox.explain(whybox.adapt(model, output="logits"), images(), "attention_rollout")
    with pytest.raises(ModelOutputError, match="when it was built"):
        collect_attentions(model, with_grads=False, pixel_values=images())
    assert model.config._attn_implementation == "sdpa"  # left as it came
    eager = _data2vec(attn_implementation="eager")  # the fix the message names works
    e = whybox.explain(whybox.adapt(eager, output="logits"), images(), "attention_rollout")
    assert e.meta["grid"].shape == (2, 4, 4)


# --- a user's wrapper around a Hugging Face encoder ------------------------------------------------------------------


def _text_parts() -> tuple[object, object]:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_text import tiny_bert, toy_tokenizer

    return tiny_bert, toy_tokenizer


class _Wrapper(torch.nn.Module):
    """A head of the user's own on a BERT encoder; ``passes`` gives its forward output_attentions and return_dict."""

    def __init__(self, encoder: torch.nn.Module, passes: bool) -> None:
        super().__init__()
        self.enc, self.passes = encoder, passes
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            self.head = torch.nn.Linear(32, 2).to(torch.float64)

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.enc.get_input_embeddings()  # type: ignore[operator,no-any-return]

    def _run(self, input_ids: object, attention_mask: object, inputs_embeds: object, **kw: object) -> object:
        from transformers.modeling_outputs import SequenceClassifierOutput

        out = self.enc(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kw)
        return SequenceClassifierOutput(logits=self.head(out.last_hidden_state[:, 0]), attentions=out.attentions)


class _Plain(_Wrapper):
    def forward(self, input_ids: object = None, attention_mask: object = None, inputs_embeds: object = None) -> object:
        return self._run(input_ids, attention_mask, inputs_embeds)


class _Passing(_Wrapper):
    def forward(
        self, input_ids: object = None, attention_mask: object = None, inputs_embeds: object = None,
        output_attentions: bool = False, return_dict: bool = True,
    ) -> object:  # fmt: skip
        return self._run(input_ids, attention_mask, inputs_embeds, output_attentions=output_attentions)


def test_a_wrapper_whose_forward_takes_no_output_attentions_is_refused_by_name() -> None:
    """attention_rollout on a user's wrapper module crashed with a bare TypeError from the model call
    ("forward() got an unexpected keyword argument 'output_attentions'")."""
    from whybox.errors import ModelOutputError
    from whybox.models.text import adapt_text

    tiny_bert, toy_tokenizer = _text_parts()
    plain = adapt_text(_Plain(tiny_bert("encoder"), passes=False).eval(), toy_tokenizer())  # type: ignore[operator]
    texts = ["the movie was great", "boring plot"]
    with pytest.raises(ModelOutputError, match=r"_Plain\.forward takes no output_attentions.*\.attentions"):
        whybox.explain_text(plain, texts, "attention_rollout")
    encoder = tiny_bert("encoder")  # type: ignore[operator]
    passing = adapt_text(_Passing(encoder, passes=True).eval(), toy_tokenizer())  # type: ignore[operator]
    out = whybox.explain_text(passing, texts, "attention_rollout")  # the forward the message asks for works
    ids = toy_tokenizer()(texts, padding=True, return_tensors="pt")  # type: ignore[operator]
    encoder.set_attn_implementation("eager")  # type: ignore[operator]
    att = encoder(**ids, output_attentions=True).attentions  # type: ignore[operator]
    want = attention_rollout(list(att), mask=ids["attention_mask"])[:, 0] * ids["attention_mask"]
    torch.testing.assert_close(out.explanation.attributions[..., 0], want, atol=1e-10, rtol=0)


# --- the mean readout of an image model averages its patch rows ------------------------------------------------------


def _beit_mean() -> torch.nn.Module:
    config = transformers.BeitConfig(**TOWER, num_labels=3, use_mean_pooling=True)
    return _built(lambda: transformers.BeitForImageClassification(config))


@pytest.mark.parametrize("method", ["attention_rollout", "attention_relevance", "raw_attention"])
@pytest.mark.parametrize("make", [_beit_mean, _clip_classifier], ids=["beit", "clip"])
def test_the_mean_readout_of_an_image_model_is_over_its_patch_rows(method: str, make: object) -> None:
    """BEiT's pooler (use_mean_pooling) reads layernorm(hidden[:, 1:].mean(1)) and CLIPForImageClassification
    mean(hidden[:, 1:]): the CLS row is never read, but the map averaged it in (relevance: 5.9% off at most, the
    argmax patch 15 where the patch rows give 8)."""
    model = make()  # type: ignore[operator]
    x = images()
    e = whybox.explain(whybox.adapt(model, output="logits"), x, method, target=0)
    _, att, grads = collect_attentions(model, target=0, pixel_values=x)
    if method == "raw_attention":
        r = sum(att[-1].unbind(1)) / att[-1].shape[1]
    else:
        r = _matrix(method, att, grads)
    assert e.meta["readout"] == "mean"
    want = r[:, 1:, 1:].mean(1).reshape(2, 4, 4)  # the patch rows' mean, the CLS column dropped
    torch.testing.assert_close(e.meta["grid"], want, atol=1e-12, rtol=0)


# --- the tie rule does not read the batch's padded width -------------------------------------------------------------


def test_tie_order_draws_each_row_over_its_own_width() -> None:
    """A row's tie permutation is the one of its own features, 0..w-1, drawn from the seed; the batch's padding
    features w..N-1 after them: a row of width N keeps the permutation of 0..N-1 it always had."""
    from whybox.metrics.base import _TIE_KEY, derive_generator, tie_order

    seed = 7
    row = torch.tensor([0.5, 0.0, 0.2, 0.0, 0.0, 0.2], dtype=torch.float64)
    padded = torch.cat([row, torch.full((4,), -torch.inf, dtype=torch.float64)])
    batch = torch.stack([padded, torch.arange(10, dtype=torch.float64) % 3])
    got = tie_order(batch, seed, widths=torch.tensor([6, 10]))
    assert got[0, :6].tolist() == tie_order(row[None], seed)[0].tolist() and got[0, 6:].tolist() == [6, 7, 8, 9]
    assert torch.equal(got[1], tie_order(batch[1:], seed)[0])  # a full-width row: as before
    rho = torch.randperm(6, generator=derive_generator(seed, _TIE_KEY))  # the oracle: sort on (-value, rho)
    want = sorted(range(6), key=lambda j: (-float(row[j]), int(rho[j])))
    assert got[0, :6].tolist() == want


def test_text_deletion_with_tied_attributions_does_not_depend_on_the_batch() -> None:
    """Rollout (max fusion, half discarded) leaves exact zeros on two words of 'the movie was great'; its deletion
    score was 0.335326831 alone and 0.335328686 beside a longer text (the tie permutation drawn over the batch's 12
    regions instead of the text's own 5)."""
    from whybox.models.text import adapt_text

    tiny_bert, toy_tokenizer = _text_parts()
    clf = adapt_text(tiny_bert(), toy_tokenizer())  # type: ignore[operator]
    texts = ["the movie was great", "it was not a good film but the acting was fun"]
    kw = dict(head_fusion="max", discard_ratio=0.5)
    both = whybox.explain_text(clf, texts, "attention_rollout", **kw)
    alone = whybox.explain_text(clf, texts[:1], "attention_rollout", **kw)
    a = alone.explanation.attributions[0, :, 0]
    assert int((a[1:5] == 0).sum()) == 2  # two words tied at 0
    rb = whybox.evaluate(clf, texts, both, "deletion")
    r1 = whybox.evaluate(clf, texts[:1], alone, "deletion")
    n = r1.curves["y"].shape[1]
    torch.testing.assert_close(rb.curves["y"][0, :n], r1.curves["y"][0], atol=1e-12, rtol=0)
    assert rb.scores[0].item() == pytest.approx(r1.scores[0].item(), abs=1e-12)
