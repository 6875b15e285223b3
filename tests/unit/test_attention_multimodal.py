"""Bi-modal and encoder-decoder relevance (Chefer, Gur & Wolf ICCV 2021 §3) and the encoder-decoder collector.

Every test states a property: agreement with per-sample float64 loops written straight from the spec's
equations, reduction to the single-stream result when cross-attention carries nothing, a hand-computed
one-layer result, unit row sums of R̄ - I, batched == one by one, exact zeros that follow from causal decoding,
the reference's diag(R - I) >= 0 invariant, exact error messages, and the model left exactly as it came.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from whybox.errors import InvalidInputError, InvalidParameterError, InvalidTargetError
from whybox.explainers.attention import (
    BimodalRelevance,
    CrossModalLayer,
    EncoderDecoderRelevance,
    bimodal_readout,
    bimodal_relevance,
    check_self_relevance,
    co_attention_update,
    collect_encoder_decoder_attentions,
    encoder_decoder_readout,
    encoder_decoder_relevance,
    gradient_weighted_relevance,
    normalize_residual,
    self_attention_update,
)

D = torch.float64
Pair = tuple[torch.Tensor, torch.Tensor]
Matrix = list[list[float]]


def _pair(g: torch.Generator, b: int, rows: int, cols: int, *, h: int = 3) -> Pair:
    attention = torch.randn(b, h, rows, cols, generator=g, dtype=D).mul(2).softmax(-1)
    return attention, torch.randn(b, h, rows, cols, generator=g, dtype=D)


def _pairs(g: torch.Generator, n: int, b: int, rows: int, cols: int) -> list[Pair]:
    return [_pair(g, b, rows, cols) for _ in range(n)]


def _bimodal_inputs(
    seed: int, *, b: int = 2, n_t: int = 5, n_i: int = 4, l_t: int = 2, l_i: int = 2, l_x: int = 3
) -> tuple[list[Pair], list[Pair], list[CrossModalLayer]]:
    g = torch.Generator().manual_seed(seed)
    text = _pairs(g, l_t, b, n_t, n_t)
    image = _pairs(g, l_i, b, n_i, n_i)
    cross = [
        CrossModalLayer(
            text_image=_pair(g, b, n_t, n_i),
            text_self=_pair(g, b, n_t, n_t),
            image_text=_pair(g, b, n_i, n_t),
            image_self=_pair(g, b, n_i, n_i),
        )
        for _ in range(l_x)
    ]
    return text, image, cross


def _encoder_decoder_inputs(
    seed: int, *, b: int = 2, n_e: int = 6, n_d: int = 4, l_e: int = 2, l_d: int = 3
) -> tuple[list[Pair], list[Pair], list[Pair]]:
    g = torch.Generator().manual_seed(seed)
    return _pairs(g, l_e, b, n_e, n_e), _pairs(g, l_d, b, n_d, n_d), _pairs(g, l_d, b, n_d, n_e)


def _row(pair: Pair, b: int) -> Pair:
    return pair[0][b : b + 1], pair[1][b : b + 1]


def _layer_row(layer: CrossModalLayer, b: int) -> CrossModalLayer:
    return CrossModalLayer(
        text_image=_row(layer.text_image, b),
        text_self=_row(layer.text_self, b),
        image_text=None if layer.image_text is None else _row(layer.image_text, b),
        image_self=None if layer.image_self is None else _row(layer.image_self, b),
    )


# ---------------------------------------------------------------------------------------------- float64 oracles
# per sample, Python lists only, each line one equation of spec §3


def _eye(n: int) -> Matrix:
    return [[1.0 if i == j else 0.0 for j in range(n)] for i in range(n)]


def _zeros(n: int, m: int) -> Matrix:
    return [[0.0] * m for _ in range(n)]


def _mm(x: Matrix, y: Matrix) -> Matrix:
    return [[sum(x[i][k] * y[k][j] for k in range(len(y))) for j in range(len(y[0]))] for i in range(len(x))]


def _add(x: Matrix, y: Matrix) -> Matrix:
    return [[p + q for p, q in zip(rx, ry, strict=True)] for rx, ry in zip(x, y, strict=True)]


def _t(x: Matrix) -> Matrix:
    return [list(col) for col in zip(*x, strict=True)]


def _bar(pair: Pair, b: int) -> Matrix:
    """Ā = E_h[(∇A ⊙ A)^+] of sample b."""
    a, g = pair[0][b].tolist(), pair[1][b].tolist()
    h, rows, cols = len(a), len(a[0]), len(a[0][0])
    return [[sum(max(g[k][i][j] * a[k][i][j], 0.0) for k in range(h)) / h for j in range(cols)] for i in range(rows)]


def _norm(r: Matrix) -> Matrix:
    """R̂ = R - I (the reference asserts diag(R̂) >= 0); R̄ = R̂ ⊘ rowsum(R̂) + I, a zero row of R̂ stays 0."""
    n = len(r)
    r_hat = [[r[i][j] - (1.0 if i == j else 0.0) for j in range(n)] for i in range(n)]
    assert min(r_hat[i][i] for i in range(n)) >= 0
    out = []
    for i, row in enumerate(r_hat):
        s = sum(row)
        out.append([(x / s if s != 0 else 0.0) + (1.0 if i == j else 0.0) for j, x in enumerate(row)])
    return out


def _self_rules(r_ss: Matrix, r_sq: Matrix, a: Matrix) -> tuple[Matrix, Matrix]:
    return _add(r_ss, _mm(a, r_ss)), _add(r_sq, _mm(a, r_sq))


def _co_rules(r_ss: Matrix, r_qq: Matrix, r_qs: Matrix, a: Matrix) -> tuple[Matrix, Matrix]:
    """The additions (ΔR^{ss}, ΔR^{sq}) = (Ā·R^{qs}, (R̄^{ss})ᵀ·Ā·R̄^{qq})."""
    return _mm(a, r_qs), _mm(_t(_norm(r_ss)), _mm(a, _norm(r_qq)))


def _bimodal_loops(text: list[Pair], image: list[Pair], cross: list[CrossModalLayer]) -> BimodalRelevance:
    ref = cross[0].text_image[0]
    b_, _, n_t, n_i = ref.shape
    out: list[list[Matrix]] = [[], [], [], []]
    for b in range(b_):
        tt, ii, ti, it = _eye(n_t), _eye(n_i), _zeros(n_t, n_i), _zeros(n_i, n_t)
        for pair in text:
            tt, ti = _self_rules(tt, ti, _bar(pair, b))
        for pair in image:
            ii, it = _self_rules(ii, it, _bar(pair, b))
        for x, layer in enumerate(cross):
            d_tt, d_ti = _co_rules(tt, ii, it, _bar(layer.text_image, b))
            if x == len(cross) - 1:  # last cross layer: only the text branch
                tt, ti = _add(tt, d_tt), _add(ti, d_ti)
                tt, ti = _self_rules(tt, ti, _bar(layer.text_self, b))
                break
            assert layer.image_text is not None and layer.image_self is not None
            d_ii, d_it = _co_rules(ii, tt, ti, _bar(layer.image_text, b))
            tt, ti, ii, it = _add(tt, d_tt), _add(ti, d_ti), _add(ii, d_ii), _add(it, d_it)
            tt, ti = _self_rules(tt, ti, _bar(layer.text_self, b))
            ii, it = _self_rules(ii, it, _bar(layer.image_self, b))
        for k, m in enumerate((tt, ti, ii, it)):
            out[k].append(m)
    tt_, ti_, ii_, it_ = (torch.tensor(m, dtype=D) for m in out)
    return BimodalRelevance(text_text=tt_, text_image=ti_, image_image=ii_, image_text=it_)


def _encoder_decoder_loops(encoder: list[Pair], decoder: list[Pair], cross: list[Pair]) -> EncoderDecoderRelevance:
    b_, _, n_d, n_e = cross[0][0].shape
    out: list[list[Matrix]] = [[], [], []]
    for b in range(b_):
        ee, dd, de, ed = _eye(n_e), _eye(n_d), _zeros(n_d, n_e), _zeros(n_e, n_d)
        for pair in encoder:
            ee = _add(ee, _mm(_bar(pair, b), ee))
        for self_pair, cross_pair in zip(decoder, cross, strict=True):
            dd, de = _self_rules(dd, de, _bar(self_pair, b))
            d_dd, d_de = _co_rules(dd, ee, ed, _bar(cross_pair, b))
            dd, de = _add(dd, d_dd), _add(de, d_de)
        for k, m in enumerate((ee, dd, de)):
            out[k].append(m)
    ee_, dd_, de_ = (torch.tensor(m, dtype=D) for m in out)
    return EncoderDecoderRelevance(encoder_encoder=ee_, decoder_decoder=dd_, decoder_encoder=de_)


def _assert_same_relevance(got: Any, expected: Any, atol: float = 1e-10) -> None:
    assert type(got) is type(expected)
    for name in got.__dataclass_fields__:
        torch.testing.assert_close(getattr(got, name), getattr(expected, name), atol=atol, rtol=0, msg=name)


# ---------------------------------------------------------------------------------------------- update rules


def _relevance_like(g: torch.Generator, b: int, n: int) -> torch.Tensor:
    """A self-relevance as the rules build it: I + a non-negative matrix, some rows of R - I left at 0."""
    r_hat = torch.rand(b, n, n, generator=g, dtype=D)
    r_hat[:, 0] = 0
    return torch.eye(n, dtype=D) + r_hat


def test_co_and_self_attention_updates_equal_the_equations_per_sample() -> None:
    g = torch.Generator().manual_seed(0)
    b, n_s, n_q = 3, 4, 5
    r_ss, r_qq = _relevance_like(g, b, n_s), _relevance_like(g, b, n_q)
    r_sq, r_qs = torch.rand(b, n_s, n_q, generator=g, dtype=D), torch.rand(b, n_q, n_s, generator=g, dtype=D)
    a_sq, a_ss = torch.rand(b, n_s, n_q, generator=g, dtype=D), torch.rand(b, n_s, n_s, generator=g, dtype=D)
    co_ss, co_sq = co_attention_update(r_ss, r_sq, r_qq, r_qs, a_sq)
    self_ss, self_sq = self_attention_update(r_ss, r_sq, a_ss)
    for i in range(b):
        d_ss, d_sq = _co_rules(r_ss[i].tolist(), r_qq[i].tolist(), r_qs[i].tolist(), a_sq[i].tolist())
        torch.testing.assert_close(co_ss[i], r_ss[i] + torch.tensor(d_ss, dtype=D), atol=1e-12, rtol=0)
        torch.testing.assert_close(co_sq[i], r_sq[i] + torch.tensor(d_sq, dtype=D), atol=1e-12, rtol=0)
        s_ss, s_sq = _self_rules(r_ss[i].tolist(), r_sq[i].tolist(), a_ss[i].tolist())
        torch.testing.assert_close(self_ss[i], torch.tensor(s_ss, dtype=D), atol=1e-12, rtol=0)
        torch.testing.assert_close(self_sq[i], torch.tensor(s_sq, dtype=D), atol=1e-12, rtol=0)
    # pure: the inputs are untouched
    assert torch.equal(r_ss[:, 0], torch.eye(n_s, dtype=D)[0].expand(b, n_s))


# ---------------------------------------------------------------------------------------------- bi-modal


@pytest.mark.parametrize(
    ("l_t", "l_i", "l_x"), [(2, 2, 3), (1, 0, 1), (0, 2, 2), (3, 1, 2)], ids=["lxmert", "one-cross", "no-text", "3-1-2"]
)
def test_bimodal_relevance_equals_the_per_sample_loop(l_t: int, l_i: int, l_x: int) -> None:
    text, image, cross = _bimodal_inputs(1, l_t=l_t, l_i=l_i, l_x=l_x)
    _assert_same_relevance(bimodal_relevance(text, image, cross), _bimodal_loops(text, image, cross))


def test_bimodal_ignores_the_image_branch_of_the_last_cross_layer() -> None:
    text, image, cross = _bimodal_inputs(2)
    full = bimodal_relevance(text, image, cross)
    last = cross[-1]
    trimmed = [*cross[:-1], CrossModalLayer(text_image=last.text_image, text_self=last.text_self)]
    _assert_same_relevance(bimodal_relevance(text, image, trimmed), full, atol=0)
    # and the image state stops before the last cross layer: whatever that layer holds, R^{ii} and R^{it} stay
    other = bimodal_relevance(text, image, [*cross[:-1], CrossModalLayer(cross[0].text_image, cross[0].text_self)])
    assert torch.equal(other.image_image, full.image_image) and torch.equal(other.image_text, full.image_text)
    assert not torch.equal(other.text_image, full.text_image)


def test_zero_cross_attention_reduces_to_two_single_stream_relevances() -> None:
    text, image, cross = _bimodal_inputs(3)
    silent = [
        CrossModalLayer(
            text_image=(layer.text_image[0], torch.zeros_like(layer.text_image[1])),
            text_self=layer.text_self,
            image_text=None
            if layer.image_text is None
            else (layer.image_text[0], torch.zeros_like(layer.image_text[1])),
            image_self=layer.image_self,
        )
        for layer in cross
    ]
    r = bimodal_relevance(text, image, silent)
    text_stack = [*text, *(layer.text_self for layer in cross)]
    image_stack = [*image, *(layer.image_self for layer in cross[:-1] if layer.image_self is not None)]
    expected_tt = gradient_weighted_relevance([a for a, _ in text_stack], [g for _, g in text_stack])
    expected_ii = gradient_weighted_relevance([a for a, _ in image_stack], [g for _, g in image_stack])
    torch.testing.assert_close(r.text_text, expected_tt, atol=1e-12, rtol=0)
    torch.testing.assert_close(r.image_image, expected_ii, atol=1e-12, rtol=0)
    assert torch.equal(r.text_image, torch.zeros_like(r.text_image))
    assert torch.equal(r.image_text, torch.zeros_like(r.image_text))
    assert torch.equal(bimodal_readout(r)[1], torch.zeros(2, 4, dtype=D))


def test_bimodal_batched_equals_one_by_one() -> None:
    text, image, cross = _bimodal_inputs(4, b=3)
    r = bimodal_relevance(text, image, cross)
    maps = bimodal_readout(r)
    for b in range(3):
        r_b = bimodal_relevance(
            [_row(p, b) for p in text], [_row(p, b) for p in image], [_layer_row(x, b) for x in cross]
        )
        for name in r.__dataclass_fields__:
            torch.testing.assert_close(getattr(r, name)[b : b + 1], getattr(r_b, name), atol=1e-12, rtol=0)
        for m, m_b in zip(maps, bimodal_readout(r_b), strict=True):
            torch.testing.assert_close(m[b : b + 1], m_b, atol=1e-12, rtol=0)


def test_bimodal_readout_zeroes_the_cls_self_entry_only_and_leaves_r_untouched() -> None:
    text, image, cross = _bimodal_inputs(5)
    r = bimodal_relevance(text, image, cross)
    before = r.text_text.clone()
    for cls in (0, 2):
        text_map, image_map = bimodal_readout(r, cls=cls)
        expected = r.text_text[:, cls].clone()
        expected[:, cls] = 0
        assert torch.equal(text_map, expected)
        assert torch.equal(image_map, r.text_image[:, cls])
        assert bool((text_map >= 0).all()) and bool((image_map >= 0).all())
    assert torch.equal(r.text_text, before)
    assert bool((r.text_text.diagonal(dim1=-2, dim2=-1) >= 1).all())


# ---------------------------------------------------------------------------------------------- encoder-decoder


@pytest.mark.parametrize(("l_e", "l_d"), [(2, 3), (0, 1), (1, 2)])
def test_encoder_decoder_relevance_equals_the_per_sample_loop(l_e: int, l_d: int) -> None:
    encoder, decoder, cross = _encoder_decoder_inputs(6, l_e=l_e, l_d=l_d)
    r = encoder_decoder_relevance(encoder, decoder, cross)
    _assert_same_relevance(r, _encoder_decoder_loops(encoder, decoder, cross))
    # R^{ee} is the single-stream relevance of the encoder alone
    if encoder:
        expected = gradient_weighted_relevance([a for a, _ in encoder], [g for _, g in encoder])
        torch.testing.assert_close(r.encoder_encoder, expected, atol=1e-12, rtol=0)


def test_encoder_decoder_one_decoder_layer_by_hand() -> None:
    """Encoder A = I with ∇A = 2: Ā = 2I, R^{ee} = 3I, R̄^{ee} = 2I. Decoder self A = [[1, 0], [½, ½]] with
    ∇A = 1: R^{dd} = I + A = R̄^{dd}. Cross Ā = M: R^{de} = (R̄^{dd})ᵀ M (2I) = 2 [[2, ½], [0, 3/2]] M = [[4 M0 + M1], [3 M1]]
    (the transpose lets the first query row collect from the second one)."""
    heads = 2
    eye3 = torch.eye(3, dtype=D).expand(1, heads, 3, 3)
    causal = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=D).expand(1, heads, 2, 2)
    m = torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.3, 0.5]], dtype=D)
    cross = m.expand(1, heads, 2, 3)
    r = encoder_decoder_relevance(
        [(eye3, torch.full_like(eye3, 2.0))],
        [(causal, torch.ones_like(causal))],
        [(cross, torch.ones_like(cross))],
    )
    torch.testing.assert_close(r.encoder_encoder, 3 * torch.eye(3, dtype=D)[None], atol=1e-15, rtol=0)
    torch.testing.assert_close(r.decoder_decoder, torch.tensor([[[2.0, 0.0], [0.5, 1.5]]], dtype=D), atol=1e-15, rtol=0)
    expected = torch.stack([4 * m[0] + m[1], 3 * m[1]])[None]
    torch.testing.assert_close(r.decoder_encoder, expected, atol=1e-15, rtol=0)
    torch.testing.assert_close(encoder_decoder_readout(r, 1), expected[:, 1], atol=0, rtol=0)
    # identity decoder self-attention: R̄^{dd} = 2I as well, so R^{de} = 4M exactly
    eye2 = torch.eye(2, dtype=D).expand(1, heads, 2, 2)
    r_eye = encoder_decoder_relevance(
        [(eye3, torch.full_like(eye3, 2.0))], [(eye2, torch.ones_like(eye2))], [(cross, torch.ones_like(cross))]
    )
    torch.testing.assert_close(r_eye.decoder_encoder, 4 * m[None], atol=1e-15, rtol=0)


def test_encoder_decoder_zero_cross_attention_leaves_r_de_zero_and_r_dd_single_stream() -> None:
    encoder, decoder, cross = _encoder_decoder_inputs(7)
    silent = [(a, torch.zeros_like(g)) for a, g in cross]
    r = encoder_decoder_relevance(encoder, decoder, silent)
    assert torch.equal(r.decoder_encoder, torch.zeros_like(r.decoder_encoder))
    expected = gradient_weighted_relevance([a for a, _ in decoder], [g for _, g in decoder])
    torch.testing.assert_close(r.decoder_decoder, expected, atol=1e-12, rtol=0)


def test_encoder_decoder_batched_equals_one_by_one_and_readout_takes_per_row_positions() -> None:
    encoder, decoder, cross = _encoder_decoder_inputs(8, b=3)
    r = encoder_decoder_relevance(encoder, decoder, cross)
    positions = torch.tensor([3, 0, 2])
    maps = encoder_decoder_readout(r, positions)
    assert maps.shape == (3, 6)
    for b in range(3):
        r_b = encoder_decoder_relevance(*([_row(p, b) for p in group] for group in (encoder, decoder, cross)))
        for name in r.__dataclass_fields__:
            torch.testing.assert_close(getattr(r, name)[b : b + 1], getattr(r_b, name), atol=1e-12, rtol=0)
        torch.testing.assert_close(maps[b : b + 1], encoder_decoder_readout(r_b, int(positions[b])), atol=1e-12, rtol=0)
        assert torch.equal(maps[b], r.decoder_encoder[b, positions[b]])


def test_normalized_residual_minus_identity_has_unit_row_sums_where_defined() -> None:
    text, image, cross = _bimodal_inputs(9)
    bi = bimodal_relevance(text, image, cross)
    encoder, decoder, cross_ed = _encoder_decoder_inputs(9)
    ed = encoder_decoder_relevance(encoder, decoder, cross_ed)
    fresh = torch.eye(4, dtype=D).expand(2, 4, 4).clone()  # no self-attention seen: every row undefined
    for r in (bi.text_text, bi.image_image, ed.encoder_encoder, ed.decoder_decoder, fresh):
        eye = torch.eye(r.shape[-1], dtype=D)
        defined = (r - eye).sum(-1) > 0
        sums = (normalize_residual(r) - eye).sum(-1)
        torch.testing.assert_close(sums[defined], torch.ones_like(sums[defined]), atol=1e-12, rtol=0)
        assert torch.equal(sums[~defined], torch.zeros_like(sums[~defined]))
    assert not bool((bi.text_text - torch.eye(5, dtype=D)).sum(-1).eq(0).all())


# ---------------------------------------------------------------------------------------------- invariant and errors


def test_invariant_check_catches_nan_and_negative_diagonals_and_can_be_switched_off() -> None:
    encoder, decoder, cross = _encoder_decoder_inputs(10)
    decoder[0] = (decoder[0][0], decoder[0][1].clone())
    decoder[0][1][0, 0, 1, 1] = math.nan
    with pytest.raises(InvalidInputError, match=r"r_ss must satisfy diag\(r_ss - I\) >= 0"):
        encoder_decoder_relevance(encoder, decoder, cross)
    assert bool(encoder_decoder_relevance(encoder, decoder, cross, check=False).decoder_encoder.isnan().any())
    bad = torch.eye(3, dtype=D)[None].clone()
    bad[0, 2, 2] = 0.5
    with pytest.raises(InvalidInputError, match=r"R_tt must satisfy diag\(R_tt - I\) >= 0.*1 entries such as -0.5"):
        check_self_relevance(bad, "R_tt")
    check_self_relevance(bimodal_relevance(*_bimodal_inputs(10)).text_text)  # built by the rules: passes
    g = torch.Generator().manual_seed(10)
    with pytest.raises(InvalidInputError, match=r"r_qq must satisfy"):
        co_attention_update(torch.eye(2, dtype=D)[None], torch.zeros(1, 2, 3, dtype=D), torch.zeros(1, 3, 3, dtype=D),
                            torch.zeros(1, 3, 2, dtype=D), torch.rand(1, 2, 3, generator=g, dtype=D))  # fmt: skip


def test_error_messages_name_the_parameter() -> None:
    text, image, cross = _bimodal_inputs(11)
    z = torch.zeros(2, 4, 5, dtype=D)
    with pytest.raises(InvalidInputError, match=r"r_qs must have shape \(B, n_q, n_s\) = \(2, 4, 5\); got \(2, 5, 4\)"):
        co_attention_update(torch.eye(5, dtype=D).expand(2, 5, 5), z.transpose(1, 2), torch.eye(4, dtype=D).expand(2, 4, 4),
                            z.transpose(1, 2), z.transpose(1, 2))  # fmt: skip
    with pytest.raises(
        InvalidInputError, match=r"a_bar must have shape \(B, n_s, n_s\) = \(2, 5, 5\); got \(2, 4, 5\)"
    ):
        self_attention_update(torch.eye(5, dtype=D).expand(2, 5, 5), z.transpose(1, 2), z)
    with pytest.raises(InvalidInputError, match=r"cross_layers\[0\]\.image_text is required in every cross layer but"):
        bimodal_relevance(text, image, [CrossModalLayer(cross[0].text_image, cross[0].text_self), cross[1]])
    with pytest.raises(InvalidInputError, match=r"text_self\[1\] must have shape \(2, H, 5, 5\); got \(2, 3, 4, 4\)"):
        bimodal_relevance([text[0], image[0]], image, cross)
    with pytest.raises(InvalidInputError, match=r"cross_layers\[1\]\.text_self grad must have the shape of its"):
        bimodal_relevance(text, image, [cross[0], CrossModalLayer(cross[1].text_image, (cross[1].text_self[0], z))])
    with pytest.raises(InvalidInputError, match=r"cross_layers must be a non-empty sequence of CrossModalLayer"):
        bimodal_relevance(text, image, [])
    with pytest.raises(InvalidInputError, match=r"image_self\[0\] must be an \(attention, grad\) pair"):
        bimodal_relevance(text, [image[0][0]], cross)
    encoder, decoder, cross_ed = _encoder_decoder_inputs(11)
    with pytest.raises(
        InvalidInputError, match=r"cross must hold one \(attention, grad\) pair per decoder layer \(3\)"
    ):
        encoder_decoder_relevance(encoder, decoder, cross_ed[:2])
    with pytest.raises(InvalidInputError, match=r"decoder_self must be a non-empty sequence"):
        encoder_decoder_relevance(encoder, [], [])
    with pytest.raises(InvalidInputError, match=r"encoder_self\[0\] must have shape \(2, H, 6, 6\)"):
        encoder_decoder_relevance(decoder, decoder, cross_ed)
    r = bimodal_relevance(text, image, cross)
    with pytest.raises(InvalidParameterError, match=r"cls must be an int in \[0, 4\]; got 5"):
        bimodal_readout(r, cls=5)
    ed = encoder_decoder_relevance(encoder, decoder, cross_ed)
    with pytest.raises(InvalidParameterError, match=r"position must be in \[0, 3\]; got \[4, 4\]"):
        encoder_decoder_readout(ed, 4)


# ---------------------------------------------------------------------------------------------- BART integration


def _bart(seed: int = 0) -> Any:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BartConfig(
        vocab_size=100, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.BartForConditionalGeneration(cfg)
    return model.to(D)


def _seq2seq_inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(30)
    return {
        "input_ids": torch.randint(5, 100, (3, 7), generator=g),
        "decoder_input_ids": torch.randint(5, 100, (3, 5), generator=g),
    }


def _snapshot(model: Any) -> dict[str, Any]:
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grad": [p.grad for p in model.parameters()],
        "attn": [m.config._attn_implementation for m in model.modules() if hasattr(m, "config")],
        "hooks": [
            (len(m._forward_hooks), len(m._forward_pre_hooks), m.__dict__.get("_output_capturing_hooks_installed"))
            for m in model.modules()
        ],
    }


def test_bart_collected_relevance_matches_the_loop_and_rows_after_the_target_get_no_gradient() -> None:
    model = _bart().train()
    x = _seq2seq_inputs()
    before = _snapshot(model)
    positions, tokens = torch.tensor([4, 2, 0]), torch.tensor([7, 11, 50])
    c = collect_encoder_decoder_attentions(model, target_position=positions, target_token=tokens, **x)
    assert _snapshot(model) == before  # train mode, sdpa and hooks as they came
    # ids -> embeddings changed nothing: the logits are the model's own (eval, its own sdpa attention)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(c.logits, model(**x, use_cache=False).logits, atol=1e-10, rtol=0)
    assert (len(c.encoder_self), len(c.decoder_self), len(c.cross)) == (2, 2, 2)
    assert c.encoder_self[0][0].shape == (3, 4, 7, 7) and c.cross[0][0].shape == (3, 4, 5, 7)
    # causal decoding: decoder query rows after the target position cannot reach its logit (every layer);
    # in the last layer no row but the target's can
    for b, p in enumerate(positions.tolist()):
        for _, grad in (*c.decoder_self, *c.cross):
            assert torch.equal(grad[b, :, p + 1 :], torch.zeros_like(grad[b, :, p + 1 :]))
        for _, grad in (c.decoder_self[-1], c.cross[-1]):
            rows = [q for q in range(5) if q != p]
            assert torch.equal(grad[b, :, rows], torch.zeros_like(grad[b, :, rows]))
            assert bool((grad[b, :, p] != 0).any())
        assert all(bool((grad[b] != 0).any()) for _, grad in c.encoder_self)
    r = encoder_decoder_relevance(c.encoder_self, c.decoder_self, c.cross)
    _assert_same_relevance(r, _encoder_decoder_loops(c.encoder_self, c.decoder_self, c.cross))
    maps = encoder_decoder_readout(r, positions)
    assert maps.shape == (3, 7)
    assert bool(maps.isfinite().all()) and bool((maps >= 0).all()) and bool((maps.sum(-1) > 0).all())
    assert bool((r.decoder_decoder - torch.eye(5, dtype=D) >= 0).all())
    # batched == one by one (int targets per row)
    for b in range(3):
        row = {k: v[b : b + 1] for k, v in x.items()}
        c_b = collect_encoder_decoder_attentions(
            model, target_position=int(positions[b]), target_token=int(tokens[b]), **row
        )
        r_b = encoder_decoder_relevance(c_b.encoder_self, c_b.decoder_self, c_b.cross)
        torch.testing.assert_close(maps[b : b + 1], encoder_decoder_readout(r_b, int(positions[b])), atol=1e-10, rtol=0)


def test_bart_collector_errors_leave_the_model_as_it_came() -> None:
    model = _bart()
    x = _seq2seq_inputs()
    before = _snapshot(model)
    with pytest.raises(InvalidTargetError, match=r"target_token must be in \[0, 99\]; got \[100, 100, 100\]"):
        collect_encoder_decoder_attentions(model, target_position=0, target_token=100, **x)
    assert _snapshot(model) == before
    with pytest.raises(InvalidTargetError, match=r"target_position must be an int, 3 ints or a \(3,\) integer tensor"):
        collect_encoder_decoder_attentions(model, target_position=[0, 1], target_token=1, **x)
    with pytest.raises(InvalidInputError, match="needs decoder_input_ids or decoder_inputs_embeds"):
        collect_encoder_decoder_attentions(model, target_position=0, target_token=1, input_ids=x["input_ids"])
    with pytest.raises(InvalidInputError, match="sets output_attentions itself"):
        collect_encoder_decoder_attentions(model, target_position=0, target_token=1, output_attentions=True, **x)
    assert _snapshot(model) == before
