"""Attention methods on a Hugging Face vision transformer (tiny ViT built locally, float64): the map is the CLS row
of the rollout / relevance without the CLS column, on the 4 x 4 patch grid, each patch's value repeated over its
8 x 8 pixels; batched equals one by one; the model is left as it came."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("transformers", reason="the text extra (transformers) is not installed")

import whybox
from whybox.explainers.attention.collect import collect_attentions
from whybox.explainers.attention.relevance import gradient_weighted_relevance
from whybox.explainers.attention.rollout import attention_rollout, to_grid


@pytest.fixture(scope="module")
def vit() -> torch.nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(
        image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return ViTForImageClassification(cfg).to(torch.float64).eval()


def images(n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize("method", ["attention_rollout", "attention_relevance"])
def test_vit_map_is_the_cls_row_on_the_patch_grid(vit: torch.nn.Module, method: str) -> None:
    x = images()
    e = whybox.explain(whybox.adapt(vit, output="logits"), x, method, target=1)
    _, att, grads = collect_attentions(vit, target=1, with_grads=True, pixel_values=x)
    r = attention_rollout(att) if method == "attention_rollout" else gradient_weighted_relevance(att, grads)
    want = to_grid(r[:, 0, :], prefix=1, h=4, w=4)
    assert torch.allclose(e.meta["grid"], want, atol=1e-12)
    assert e.attributions.shape == (2, 1, 32, 32)
    blocks = e.attributions[:, 0].reshape(2, 4, 8, 4, 8)
    assert torch.equal(blocks, want[:, :, None, :, None].expand(2, 4, 8, 4, 8))  # one value per patch, no blur
    one = whybox.explain(whybox.adapt(vit, output="logits"), x[1:], method, target=1)
    assert torch.allclose(one.attributions[0], e.attributions[1], atol=1e-12)


def test_vit_model_left_as_it_came(vit: torch.nn.Module) -> None:
    before = copy.deepcopy(vit.state_dict())
    impl = vit.config._attn_implementation
    vit.train()
    try:
        whybox.explain(whybox.adapt(vit, output="logits"), images(1), "attention_relevance", target=0)
        assert vit.training and vit.config._attn_implementation == impl
        assert all(torch.equal(v, before[k]) for k, v in vit.state_dict().items())
        assert all(p.grad is None for p in vit.parameters())
    finally:
        vit.eval()


def test_cams_default_to_the_last_layer_whose_patch_tokens_reach_the_class_token(vit: torch.nn.Module) -> None:
    """After the last block a ViT classifier reads the class token alone, so the final LayerNorm's patch tokens (the
    last token grid the forward pass makes) get no gradient and their Grad-CAM was 0 everywhere. The automatic layer
    is now the last one whose patch grid the score depends on: in the last block, the value projection, through
    which the class token attends to the patches. (A CNN's choice is unchanged: tests/contract, EfficientNet-Lite's
    "_swish@1".)"""
    adapter = whybox.adapt(vit, output="logits")
    x = images()
    stale = whybox.explain(adapter, x, "gradcam", layer="vit.layernorm")
    assert bool((stale.attributions == 0).all())  # what the old choice gave
    e = whybox.explain(adapter, x, "gradcam")
    (name,) = e.meta["layer"]  # "vit.layers.1.attention.v_proj" (module names vary with transformers' version)
    assert ".1." in name and ("v_proj" in name or "value" in name)  # the last of the two blocks
    flat = e.attributions.flatten(1)
    assert bool((flat.amax(1) > 0).all()) and bool((flat.std(1) > 0).all())
    for method in ("gradcam_pp", "layercam", "xgradcam", "hirescam"):
        assert whybox.explain(adapter, x, method).meta["layer"] == e.meta["layer"]


@pytest.mark.parametrize("method", ["attention_rollout", "attention_relevance"])
def test_the_adapter_s_preprocess_runs_before_the_vision_transformer(vit: torch.nn.Module, method: str) -> None:
    """The attention methods called the model on the raw images: adapt(vit, preprocess=...) was ignored (the targets
    were the raw images' argmax, the maps those of the raw images). Now they explain the model the adapter runs: the
    same as explaining pre(x) with a plain adapter, and the targets are its predictions."""
    x = images()

    def pre(z: torch.Tensor) -> torch.Tensor:
        return (z - 0.5) / 0.1

    e = whybox.explain(whybox.adapt(vit, output="logits", preprocess=pre), x, method)
    plain = whybox.explain(whybox.adapt(vit, output="logits"), pre(x), method)
    raw = whybox.explain(whybox.adapt(vit, output="logits"), x, method)
    assert e.target.tolist() == vit(pixel_values=pre(x)).logits.argmax(1).tolist()
    assert torch.equal(e.attributions, plain.attributions) and not torch.equal(e.attributions, raw.attributions)


def test_an_image_the_patches_do_not_tile_gets_a_map_of_its_own_size() -> None:
    """36 x 36 images on 8 x 8 patches: the model reads a 4 x 4 grid (32 x 32 pixels); the map was 32 x 32, which
    no metric accepted for 36 x 36 images. Now it is 36 x 36: each patch's value over its pixels, 0 on the border
    no patch reads."""
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(image_size=36, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=64, num_labels=3)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ViTForImageClassification(cfg).to(torch.float64).eval()
    x = torch.rand(2, 3, 36, 36, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    adapter = whybox.adapt(model, output="logits")
    e = whybox.explain(adapter, x, "attention_rollout")
    assert e.attributions.shape == (2, 1, 36, 36) and e.meta["grid"].shape == (2, 4, 4)
    inner = e.meta["grid"].repeat_interleave(8, 1).repeat_interleave(8, 2)
    assert torch.equal(e.attributions[:, 0, :32, :32], inner)
    assert bool((e.attributions[:, 0, 32:] == 0).all()) and bool((e.attributions[:, 0, :, 32:] == 0).all())
    assert whybox.evaluate(adapter, x, e, "deletion").scores.shape == (2,)


def test_a_clip_image_tower_as_a_zero_shot_classifier_is_explained_by_its_similarities() -> None:
    """A CLIP vision tower with projection, adapted as an embedding model against two class embeddings: the
    attention methods read output.logits, which it has not (ModelOutputError naming a classification head). Now
    they score the adapter's similarities: relevance follows each class, its targets are the adapter's argmax,
    and relevance for class k equals Chefer's rule on the attentions' gradients of that similarity."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from whybox.explainers.attention.collect import collect_attentions

    cfg = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, projection_dim=16)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        tower = CLIPVisionModelWithProjection(cfg).to(torch.float64).eval()
    classes = torch.randn(2, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    adapter = whybox.adapt(tower, kind="embedding", output="image_embeds", references=classes, scale=10.0)
    x = images()
    e = whybox.explain(adapter, x, "attention_relevance")
    assert e.target.tolist() == adapter.scores(x).argmax(1).tolist()
    for k in (0, 1):
        ek = whybox.explain(adapter, x, "attention_relevance", target=k)
        _, att, grads = collect_attentions(
            tower, target=k, scores=lambda out: adapter.similarities(out.image_embeds), pixel_values=x
        )
        want = to_grid(gradient_weighted_relevance(att, grads)[:, 0, :], prefix=1, h=4, w=4)
        torch.testing.assert_close(ek.meta["grid"], want, rtol=0, atol=1e-12)
    assert whybox.explain(adapter, x, "attention_rollout").attributions.shape == (2, 1, 32, 32)


def test_a_model_without_input_embeddings_gets_a_not_differentiable_error() -> None:
    """CLIPModel's get_input_embeddings raises transformers' NotImplementedError (two towers); collect_attentions
    let it through instead of its documented NotDifferentiableError."""
    from transformers import CLIPConfig, CLIPModel

    from whybox.errors import NotDifferentiableError
    from whybox.explainers.attention.collect import collect_attentions

    cfg = CLIPConfig(
        text_config={"vocab_size": 50, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 16},
        vision_config={"image_size": 16, "patch_size": 8, "hidden_size": 16, "intermediate_size": 32,
                       "num_hidden_layers": 1, "num_attention_heads": 2},
        projection_dim=8,
    )  # fmt: skip
    model = CLIPModel(cfg).eval()
    with pytest.raises(NotDifferentiableError, match="get_input_embeddings"):
        collect_attentions(
            model, scores=lambda out: out.logits_per_image, input_ids=torch.tensor([[1, 2, 3]]),
            pixel_values=torch.rand(1, 3, 16, 16),
        )  # fmt: skip


@pytest.mark.parametrize(("height", "width"), [(16, 64), (24, 40)])
def test_cam_lays_a_non_square_patch_grid_out_on_the_image(height: int, width: int) -> None:
    """A 16 x 64 image of 8-pixel patches is a 2 x 8 grid (not 4 x 4), a 24 x 40 one 3 x 5 (15 patches + CLS = 16
    tokens, not a 4 x 4 grid with the CLS as its first patch): Grad-CAM equals the hand reshape of the layer."""
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(image_size=(height, width), patch_size=8, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=4, intermediate_size=64, num_labels=3)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vit = ViTForImageClassification(cfg).double().eval()
    x = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    layer = next(n for n, _ in vit.named_modules() if n.endswith("1.layernorm_before"))  # names vary by version
    ad = whybox.adapt(vit, output="logits")
    e = whybox.explain(ad, x, "gradcam", target=1, layer=layer, upsample=False, normalize="none")
    h, w = height // 8, width // 8
    assert e.attributions.shape == (2, 1, h, w)
    store: dict[str, torch.Tensor] = {}
    hook = dict(vit.named_modules())[layer].register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        score = vit(pixel_values=x).logits[:, 1].sum()
    finally:
        hook.remove()
    g = torch.autograd.grad(score, store["a"])[0][:, 1:].transpose(1, 2).reshape(2, 32, h, w)
    a = store["a"][:, 1:].detach().transpose(1, 2).reshape(2, 32, h, w)
    cam = (g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True).clamp_min(0)
    torch.testing.assert_close(e.attributions, cam, rtol=0, atol=1e-12)
    auto = whybox.explain(ad, x, "gradcam", target=1)
    assert auto.meta["layer"] != ["vit.layernorm"]  # the final LayerNorm's patch tokens carry no gradient
