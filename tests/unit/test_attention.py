"""Attention rollout, raw attention and gradient-weighted relevance (Chefer et al. ICCV 2021), and their HF plumbing.

Every test states a property: row-stochasticity, agreement with float64 loops written from the formulas,
closed forms for one layer, exact zeros that follow from the architecture, batched == one by one, and the
model left exactly as it came.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

from whybox.errors import InvalidInputError, InvalidParameterError, InvalidTargetError
from whybox.explainers.attention import (
    attention_rollout,
    collect_attentions,
    discard_smallest,
    fuse_heads,
    gradient_weighted_attention,
    gradient_weighted_relevance,
    normalize_residual,
    raw_attention,
    readout,
    to_grid,
)

D = torch.float64


def _attentions(seed: int, *, layers: int = 3, b: int = 2, h: int = 4, t: int = 6) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, t, t, generator=g, dtype=D).mul(2).softmax(-1) for _ in range(layers)]


def _grads(seed: int, like: list[torch.Tensor]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(a.shape, generator=g, dtype=D) for a in like]


# ---------------------------------------------------------------------------------------------- float64 oracles


def _rollout_loops(attentions: list[torch.Tensor], fusion: str, ratio: float, start: int) -> torch.Tensor:
    """Rollout written straight from spec §1 with Python lists: fuse, discard, +I, rownorm, multiply on the left."""
    fuse = {"mean": lambda v: sum(v) / len(v), "max": max, "min": min}[fusion]
    b_, h_, t, _ = attentions[0].shape
    out = []
    for b in range(b_):
        r = [[1.0 if i == j else 0.0 for j in range(t)] for i in range(t)]
        for a_l in attentions[start:]:
            a = a_l[b].tolist()
            f = [[fuse([a[h][i][j] for h in range(h_)]) for j in range(t)] for i in range(t)]
            if ratio > 0:
                k = min(math.floor(ratio * t * t), t * t - 1)
                ranked = sorted((f[i][j], i * t + j) for i in range(t) for j in range(t) if (i, j) != (0, 0))
                for _, idx in ranked[:k]:
                    f[idx // t][idx % t] = 0.0
            a_hat = [[f[i][j] + (1.0 if i == j else 0.0) for j in range(t)] for i in range(t)]
            a_hat = [[x / sum(row) for x in row] for row in a_hat]
            r = [[sum(a_hat[i][k] * r[k][j] for k in range(t)) for j in range(t)] for i in range(t)]
        out.append(r)
    return torch.tensor(out, dtype=D)


def _relevance_loops(attentions: list[torch.Tensor], grads: list[torch.Tensor], start: int) -> torch.Tensor:
    """ICCV 2021 single stream, per sample: Ā = mean_h max(∇A·A, 0); R = I; R ← R + Ā R."""
    b_, h_, t, _ = attentions[0].shape
    out = []
    for b in range(b_):
        r = [[1.0 if i == j else 0.0 for j in range(t)] for i in range(t)]
        for a_l, g_l in zip(attentions[start:], grads[start:], strict=True):
            a, g = a_l[b].tolist(), g_l[b].tolist()
            bar = [[sum(max(g[h][i][j] * a[h][i][j], 0.0) for h in range(h_)) / h_ for j in range(t)] for i in range(t)]
            r = [[r[i][j] + sum(bar[i][k] * r[k][j] for k in range(t)) for j in range(t)] for i in range(t)]
        out.append(r)
    return torch.tensor(out, dtype=D)


# ---------------------------------------------------------------------------------------------- rollout


def test_rollout_mean_fusion_is_row_stochastic_and_cls_readout_sums_to_one() -> None:
    r = attention_rollout(_attentions(0))
    torch.testing.assert_close(r.sum(-1), torch.ones(2, 6, dtype=D), atol=1e-12, rtol=0)
    assert bool((r >= 0).all())
    torch.testing.assert_close(readout(r, "cls").sum(-1), torch.ones(2, dtype=D), atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    ("fusion", "ratio", "start"),
    [("mean", 0.0, 0), ("max", 0.0, 0), ("min", 0.0, 1), ("mean", 0.5, 0), ("max", 0.9, 2)],
)
def test_rollout_equals_triple_loop(fusion: str, ratio: float, start: int) -> None:
    attentions = _attentions(1)
    got = attention_rollout(attentions, head_fusion=fusion, discard_ratio=ratio, start_layer=start)
    torch.testing.assert_close(got, _rollout_loops(attentions, fusion, ratio, start), atol=1e-12, rtol=0)


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_rollout_of_identity_attention_is_identity(fusion: str) -> None:
    eye = torch.eye(5, dtype=D).expand(2, 3, 5, 5)
    r = attention_rollout([eye, eye, eye, eye], head_fusion=fusion, discard_ratio=0.5)
    assert torch.equal(r, torch.eye(5, dtype=D).expand(2, 5, 5))


def test_rollout_of_one_layer_is_renormalised_mean_plus_identity() -> None:
    (a,) = _attentions(2, layers=1)
    expected = a.mean(1) + torch.eye(6, dtype=D)
    expected = expected / expected.sum(-1, keepdim=True)
    torch.testing.assert_close(attention_rollout([a]), expected, atol=1e-15, rtol=0)


@pytest.mark.parametrize("fusion", ["max", "min"])
def test_rollout_renormalises_rows_for_max_and_min_fusion(fusion: str) -> None:
    attentions = _attentions(3)
    assert not torch.allclose(fuse_heads(attentions[0], fusion).sum(-1), torch.ones(2, 6, dtype=D))
    for ratio in (0.0, 0.7):
        r = attention_rollout(attentions, head_fusion=fusion, discard_ratio=ratio)
        torch.testing.assert_close(r.sum(-1), torch.ones(2, 6, dtype=D), atol=1e-12, rtol=0)


def test_discard_zeroes_exactly_k_smallest_per_sample_and_never_cls_cls() -> None:
    fused = fuse_heads(_attentions(4, layers=1)[0])
    fused[0, 0, 0] = 1e-9  # the smallest entry of sample 0: still kept
    fused[1, 0, 0] = 0.5
    out = discard_smallest(fused, 0.6)
    k = math.floor(0.6 * 36)
    for b in range(2):
        dropped = out[b] == 0
        assert int(dropped.sum()) == k
        assert out[b, 0, 0] == fused[b, 0, 0]
        candidate = torch.ones(6, 6, dtype=torch.bool)
        candidate[0, 0] = False
        kept = fused[b][~dropped & candidate]
        assert float(fused[b][dropped].max()) <= float(kept.min())
        torch.testing.assert_close(out[b : b + 1], discard_smallest(fused[b : b + 1], 0.6), atol=0, rtol=0)
    assert fused[0, 0, 0] == 1e-9  # input untouched


def test_rollout_with_pads_equals_rollout_of_the_unpadded_sample() -> None:
    """Pads attend only to themselves and give nothing to real tokens; the real block is the unpadded rollout."""
    g = torch.Generator().manual_seed(5)
    t, n = 7, 4
    mask = torch.tensor([[1] * t, [1] * n + [0] * (t - n)])
    scores = torch.randn(2, 2, 4, t, t, generator=g, dtype=D)
    scores = scores.masked_fill(mask[None, :, None, None, :] == 0, float("-inf"))  # HF: pad keys get 0
    attentions = list(scores.softmax(-1))
    for fusion, ratio in (("mean", 0.0), ("max", 0.5)):
        r = attention_rollout(attentions, head_fusion=fusion, discard_ratio=ratio, mask=mask)
        alone = attention_rollout([a[1:, :, :n, :n] for a in attentions], head_fusion=fusion, discard_ratio=ratio)
        torch.testing.assert_close(r[1, :n, :n], alone[0], atol=1e-13, rtol=0)
        assert torch.equal(r[1, :n, n:], torch.zeros(n, t - n, dtype=D))
        assert torch.equal(r[1, n:, :], torch.eye(t, dtype=D)[n:])
        unpadded = attention_rollout([a[:1] for a in attentions], head_fusion=fusion, discard_ratio=ratio)
        torch.testing.assert_close(r[0], unpadded[0], atol=1e-13, rtol=0)
        for how in ("cls", "mean", "last"):
            row = readout(r, how, mask=mask)
            assert torch.equal(row[1, n:], torch.zeros(t - n, dtype=D))
            torch.testing.assert_close(row[1, :n], readout(alone, how)[0], atol=1e-13, rtol=0)


def test_readouts_pick_the_documented_rows() -> None:
    m = torch.arange(2 * 4 * 4, dtype=D).reshape(2, 4, 4)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    assert torch.equal(readout(m, "cls"), m[:, 0])
    assert torch.equal(readout(m, "last"), m[:, 3])
    assert torch.equal(readout(m, "last", mask=mask)[1], m[1, 1] * mask[1])
    assert torch.equal(readout(m, "mean", mask=mask)[1], m[1, :2].mean(0) * mask[1])
    assert torch.equal(readout(m, torch.tensor([2, 1])), torch.stack([m[0, 2], m[1, 1]]))
    a = _attentions(6)
    assert torch.equal(raw_attention(a, layer=1, head_fusion="max"), a[1].amax(1)[:, 0])


def test_invalid_arguments_name_the_parameter() -> None:
    a = _attentions(7)
    with pytest.raises(InvalidParameterError, match=r"head_fusion must be one of \('mean', 'max', 'min'\); got 'sum'"):
        attention_rollout(a, head_fusion="sum")
    with pytest.raises(InvalidParameterError, match=r"start_layer must be an int in \[0, 2\] for 3 layers; got 3"):
        attention_rollout(a, start_layer=3)
    with pytest.raises(InvalidParameterError, match=r"discard_ratio must be a float in \[0, 1\); got 1.0"):
        attention_rollout(a, discard_ratio=1.0)
    with pytest.raises(InvalidInputError, match=r"attentions\[1\] is \(2, 4, 5, 5\)"):
        attention_rollout([a[0], a[1][..., :5, :5]])
    with pytest.raises(InvalidInputError, match="grads must hold one tensor per attention layer"):
        gradient_weighted_relevance(a, a[:2])
    with pytest.raises(InvalidParameterError, match="a 3x3 grid needs 9 patch tokens but r has 16"):
        to_grid(torch.zeros(1, 17), h=3, w=3)


# ---------------------------------------------------------------------------------------------- relevance


def test_relevance_of_one_layer_is_e_cls_plus_a_bar_cls() -> None:
    (a,) = _attentions(8, layers=1)
    (g,) = _grads(9, [a])
    r = gradient_weighted_relevance([a], [g])
    a_bar = (g * a).clamp(min=0).mean(1)
    assert torch.equal(readout(r, "cls"), torch.eye(6, dtype=D)[0] + a_bar[:, 0])
    # clamp before the head mean: differs from clamping the mean
    assert not torch.allclose(a_bar, (g * a).mean(1).clamp(min=0))


@pytest.mark.parametrize("start", [0, 1, 2])
def test_relevance_equals_per_sample_loops(start: int) -> None:
    attentions = _attentions(10, b=3)
    grads = _grads(11, attentions)
    got = gradient_weighted_relevance(attentions, grads, start_layer=start)
    torch.testing.assert_close(got, _relevance_loops(attentions, grads, start), atol=1e-10, rtol=0)
    assert bool((torch.diagonal(got - torch.eye(6, dtype=D), dim1=-2, dim2=-1) >= 0).all())  # reference's check


def test_normalize_residual_gives_unit_row_sums_and_leaves_zero_rows_at_identity() -> None:
    attentions = _attentions(12)
    r = gradient_weighted_relevance(attentions, _grads(13, attentions))
    r[1, 2] = torch.eye(6, dtype=D)[2]  # R̂ row 2 of sample 1 is all zero
    bar = normalize_residual(r) - torch.eye(6, dtype=D)
    sums = bar.sum(-1)
    assert torch.equal(bar[1, 2], torch.zeros(6, dtype=D))
    sums[1, 2] = 1.0
    torch.testing.assert_close(sums, torch.ones(2, 6, dtype=D), atol=1e-12, rtol=0)
    assert not bool(normalize_residual(torch.eye(6, dtype=D).expand(2, 6, 6)).isnan().any())


# ---------------------------------------------------------------------------------------------- Hugging Face models

NUM_LABELS = 3


def _bert(seed: int = 0) -> Any:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=100,
        max_position_embeddings=64, num_labels=NUM_LABELS,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.BertForSequenceClassification(cfg)
    return model.to(D)


def _vit(seed: int = 0) -> Any:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
        patch_size=8, num_labels=NUM_LABELS,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.ViTForImageClassification(cfg)
    return model.to(D)


def _text_inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(20)
    ids = torch.randint(5, 100, (3, 9), generator=g)
    mask = torch.ones(3, 9, dtype=torch.int64)
    mask[1, 6:] = 0
    ids[1, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _image_inputs() -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(21), dtype=D)}


MODELS: dict[str, tuple[Callable[[], Any], Callable[[], dict[str, torch.Tensor]]]] = {
    "bert": (_bert, _text_inputs),
    "vit": (_vit, _image_inputs),
}


@pytest.mark.parametrize("name", MODELS)
def test_last_layer_gradient_is_zero_off_the_cls_row(name: str) -> None:
    """The head reads token 0 only, so the last layer's other query rows cannot reach the logits."""
    make, inputs = MODELS[name]
    model = make()
    _, attentions, grads = collect_attentions(model, target=None, **inputs())
    assert grads is not None
    assert torch.equal(grads[-1][:, :, 1:, :], torch.zeros_like(grads[-1][:, :, 1:, :]))
    assert bool((grads[-1][:, :, 0, :] != 0).any(-1).all())
    a_bar = gradient_weighted_attention(attentions[-1], grads[-1])
    assert torch.equal(a_bar[:, 1:], torch.zeros_like(a_bar[:, 1:]))
    assert bool((a_bar[:, 0] > 0).any(-1).all())
    assert bool((grads[0] != 0).any())  # earlier layers do get gradient on every row


@pytest.mark.parametrize("name", MODELS)
def test_collect_batched_equals_one_by_one(name: str) -> None:
    make, inputs = MODELS[name]
    model = make().eval()
    x = inputs()
    b = next(iter(x.values())).shape[0]
    target = torch.tensor([2, 0, 1][:b])
    logits, attentions, grads = collect_attentions(model, target=target, **x)
    assert grads is not None
    for i in range(b):
        row = {k: v[i : i + 1] for k, v in x.items()}
        lg, at, gr = collect_attentions(model, target=int(target[i]), **row)
        assert gr is not None
        torch.testing.assert_close(logits[i : i + 1], lg, atol=1e-10, rtol=0)
        for layer in range(len(at)):
            torch.testing.assert_close(attentions[layer][i : i + 1], at[layer], atol=1e-10, rtol=0)
            torch.testing.assert_close(grads[layer][i : i + 1], gr[layer], atol=1e-10, rtol=0)
    # target=None is the argmax of the same forward pass
    _, _, g_pred = collect_attentions(model, **x)
    _, _, g_arg = collect_attentions(model, target=logits.argmax(1), **x)
    assert g_pred is not None and g_arg is not None
    assert all(torch.equal(p, q) for p, q in zip(g_pred, g_arg, strict=True))


def test_collect_without_grads_returns_the_same_attentions_and_no_graph() -> None:
    model = _bert()
    x = _text_inputs()
    logits, attentions, grads = collect_attentions(model, **x)
    logits2, attentions2, grads2 = collect_attentions(model, with_grads=False, **x)
    assert grads is not None and grads2 is None
    torch.testing.assert_close(logits2, logits, atol=1e-12, rtol=0)
    assert all(torch.allclose(p, q, atol=1e-12, rtol=0) for p, q in zip(attentions, attentions2, strict=True))
    assert not any(a.requires_grad for a in attentions2)
    # pads get exactly zero attention, so rollout with the mask is the rollout of the real tokens
    assert torch.equal(attentions[0][1, :, :, 6:], torch.zeros(4, 9, 3, dtype=D))


def _snapshot(model: Any) -> dict[str, Any]:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grad": [p.grad for p in model.parameters()],
        "attn": [m.config._attn_implementation for m in model.modules() if hasattr(m, "config")],
        "hooks": [
            (len(m._forward_hooks), len(m._forward_pre_hooks), m.__dict__.get("_output_capturing_hooks_installed"))
            for m in model.modules()
        ],
    }


def _assert_same(model: Any, before: dict[str, Any]) -> None:
    after = _snapshot(model)
    assert after["state"].keys() == before["state"].keys()
    assert all(torch.equal(after["state"][k], v) for k, v in before["state"].items())
    for key in ("training", "requires_grad", "attn", "hooks"):
        assert after[key] == before[key], key
    assert all(p is q for p, q in zip(after["grad"], before["grad"], strict=True))


@pytest.mark.parametrize("hooked_before", [False, True])
def test_model_is_left_exactly_as_it_came_also_when_the_call_raises(hooked_before: bool) -> None:
    model = _bert()
    model.train()
    model.bert.embeddings.requires_grad_(False)  # mixed flags
    x = _text_inputs()
    if hooked_before:  # the user already had transformers install its capture hooks
        model.set_attn_implementation("eager")
        model(**x, output_attentions=True)
        model.set_attn_implementation("sdpa")
    assert model.config._attn_implementation == "sdpa"
    before = _snapshot(model)
    collect_attentions(model, target=1, **x)
    _assert_same(model, before)
    with pytest.raises(InvalidTargetError, match="target=7 is out of range for a model with 3 outputs"):
        collect_attentions(model, target=7, **x)
    _assert_same(model, before)
    # the model still works for its owner: sdpa forward, and eager forward that returns attentions
    model.eval()
    out = model(**x)
    model.set_attn_implementation("eager")
    out_eager = model(**x, output_attentions=True)
    assert len(out_eager.attentions) == 2
    torch.testing.assert_close(out.logits, out_eager.logits, atol=1e-10, rtol=0)


def test_frozen_model_gets_the_same_gradients_and_stays_frozen() -> None:
    x = _text_inputs()
    _, _, trainable = collect_attentions(_bert(), target=2, **x)
    frozen = _bert().requires_grad_(False)
    _, _, grads = collect_attentions(frozen, target=2, **x)
    assert trainable is not None and grads is not None
    assert all(torch.equal(p, q) for p, q in zip(trainable, grads, strict=True))
    assert not any(p.requires_grad for p in frozen.parameters())


def test_collected_relevance_equals_loop_oracle_and_batched_equals_one_by_one() -> None:
    model = _bert().eval()
    x = _text_inputs()
    _, attentions, grads = collect_attentions(model, target=[0, 1, 2], **x)
    assert grads is not None
    r = gradient_weighted_relevance(attentions, grads)
    torch.testing.assert_close(r, _relevance_loops(attentions, grads, 0), atol=1e-10, rtol=0)
    maps = readout(r, "cls", mask=x["attention_mask"])
    for i in range(3):
        _, a_i, g_i = collect_attentions(model, target=i, **{k: v[i : i + 1] for k, v in x.items()})
        assert g_i is not None
        m_i = readout(gradient_weighted_relevance(a_i, g_i), "cls", mask=x["attention_mask"][i : i + 1])
        torch.testing.assert_close(maps[i : i + 1], m_i, atol=1e-10, rtol=0)


def test_vit_map_is_a_row_major_patch_grid() -> None:
    """to_grid puts token 1 + i*w + j at (i, j), which is where the ViT embeds image patch (i, j)."""
    model = _vit().eval()
    x = _image_inputs()
    _, attentions, grads = collect_attentions(model, **x)
    assert grads is not None
    assert attentions[0].shape == (2, 4, 17, 17)
    grid = to_grid(readout(gradient_weighted_relevance(attentions, grads), "cls"), prefix=1, h=4, w=4)
    assert grid.shape == (2, 4, 4)
    rollout_grid = to_grid(readout(attention_rollout(attentions), "cls"), prefix=1, h=4, w=4)
    assert rollout_grid.shape == (2, 4, 4)
    # change only image patch (1, 2): exactly the token that to_grid puts at (1, 2) changes
    pixels = x["pixel_values"][:1]
    moved = pixels.clone()
    moved[..., 8:16, 16:24] += 1.0
    with torch.no_grad():
        changed = (model.vit.embeddings(moved) - model.vit.embeddings(pixels)).abs().sum(-1) > 0
    expected = torch.zeros(1, 4, 4, dtype=torch.bool)
    expected[0, 1, 2] = True
    assert torch.equal(to_grid(changed, h=4, w=4), expected)
    assert not bool(changed[0, 0])
