"""Attention cases a second audit found: attention relevance takes the gradients of the chosen score (score=); every
attention method runs at most batch_size rows per model call; a ConvNeXt or a Swin (a patch size, but no single
global token grid) is refused; rollout on an SAE feature stops at its block; random_logit skips class-agnostic
maps; mode='as_is' is refused where the attentions are read in eval mode."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

pytest.importorskip("transformers", reason="the text extra (transformers) is not installed")

import whybox
from whybox.errors import InvalidParameterError
from whybox.explainers.attention.collect import collect_attentions
from whybox.explainers.attention.relevance import gradient_weighted_relevance


def _vit() -> torch.nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(
        image_size=16, patch_size=8, num_channels=3, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return ViTForImageClassification(cfg).to(torch.float64).eval()


def _images(n: int = 3) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_relevance_takes_the_gradients_of_the_chosen_score() -> None:
    model, x = _vit(), _images(2)
    _, att, grads = collect_attentions(model, target=1, pixel_values=x, space="prob")
    want = gradient_weighted_relevance(att, grads)[:, 0, 1:]
    got = whybox.explain(model, x, "attention_relevance", target=1, score="prob").meta["grid"].flatten(1)
    assert torch.allclose(got.to(want.dtype), want, atol=1e-12)
    logit = whybox.explain(model, x, "attention_relevance", target=1).meta["grid"].flatten(1)
    assert not torch.allclose(logit.to(want.dtype), want)


@pytest.mark.parametrize("method", ["attention_rollout", "attention_relevance", "raw_attention"])
def test_attention_methods_run_at_most_batch_size_rows_per_call(method: str) -> None:
    model, x = _vit(), _images(3)
    rows: list[int] = []
    handle = model.vit.embeddings.register_forward_hook(lambda m, a, out: rows.append(int(out.shape[0])))
    try:
        one = whybox.explain(model, x, method, batch_size=1)
    finally:
        handle.remove()
    assert rows == [1, 1, 1]
    assert torch.allclose(one.attributions, whybox.explain(model, x, method).attributions, atol=1e-12)


def test_models_without_one_global_token_grid_are_refused() -> None:
    from transformers import ConvNextConfig, ConvNextForImageClassification

    cfg = ConvNextConfig(num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        convnext = ConvNextForImageClassification(cfg).eval()
    with pytest.raises(InvalidParameterError, match="not Swin's windows or a ConvNeXt"):
        whybox.explain(convnext, torch.rand(1, 3, 16, 16), "attention_rollout")


def test_random_logit_skips_class_agnostic_maps_and_as_is_is_refused() -> None:
    model, x = whybox.adapt(_vit(), output="logits"), _images(2)
    e = whybox.explain(model, x, "attention_rollout")
    r = whybox.evaluate(model, x, e, "random_logit")
    assert all(math.isnan(v) for v in r.scores.tolist())
    assert "class-agnostic" in r.meta["skipped"]
    with pytest.raises(InvalidParameterError, match="mode='as_is' does not apply"):
        whybox.explain(model, x, "attention_rollout", mode="as_is")


def test_rollout_on_an_sae_feature_stops_at_its_block(make_text_classifier: object) -> None:
    pytest.importorskip("tokenizers")
    from whybox.explainers.llm.sae import SAEConfig, SparseAutoencoder
    from whybox.explainers.llm.sae_text import SAEFeatureAdapter

    clf = make_text_classifier()  # type: ignore[operator]
    sae = SparseAutoencoder(SAEConfig(d_in=32, d_sae=16, activation="relu", seed=1), dtype=torch.float64)
    fa = SAEFeatureAdapter.from_text_adapter(clf, sae, layer=0, features=list(range(16)), pool="mean")
    batch = fa.encode(["the movie was great"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before = whybox.explain(fa, batch.inputs, "attention_rollout").attributions
        block1 = clf.model.bert.encoder.layer[1].attention.self
        saved = block1.query.weight.detach().clone()
        try:
            with torch.no_grad():
                block1.query.weight.mul_(5.0)  # a layer after the SAE's block
            after = whybox.explain(fa, batch.inputs, "attention_rollout").attributions
        finally:
            with torch.no_grad():
                block1.query.weight.copy_(saved)
    assert torch.equal(before, after)
