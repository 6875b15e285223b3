"""Ninth-pass fixes to infidelity, mufidelity, Explanation.plot and overlay: each test states the property a user
relied on and failed before the fix."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import whybox
from whybox import Explanation
from whybox.errors import InvalidInputError, InvalidParameterError
from whybox.metrics.robustness import squares
from whybox.report.overlay import overlay
from whybox.runs.report_data import method_reading


def _cnn(side: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return (
            nn.Sequential(
                nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(2 * side * side, 3)
            ).double()
        ).eval()


# ------------------------------------------------------------------ infidelity: square mode's options
@pytest.mark.parametrize(
    ("option", "value"), [("sigma", 5.0), ("n_samples", 3), ("clip", (0.2, 0.3)), ("sigma", 0.2), ("n_samples", 100)]
)
def test_square_infidelity_refuses_the_noise_options_it_does_not_read(option: str, value: Any) -> None:
    """sigma, n_samples and clip shape the noise; the squares are deterministic: given, they are refused (also at
    their old defaults), never recorded in params as if they had been used."""
    model, x = _cnn(5), torch.rand(2, 1, 5, 5, dtype=torch.float64)
    with pytest.raises(InvalidParameterError, match=rf"^{option}=.* does not apply to perturbation='square'"):
        whybox.evaluate(model, x, torch.randn(2, 1, 5, 5), "infidelity", perturbation="square", **{option: value})


def test_noise_infidelity_refuses_max_square() -> None:
    model, x = _cnn(5), torch.rand(2, 1, 5, 5, dtype=torch.float64)
    with pytest.raises(InvalidParameterError, match=r"^max_square=3 does not apply to perturbation='noisy_baseline'"):
        whybox.evaluate(model, x, torch.randn(2, 1, 5, 5), "infidelity", max_square=3, n_samples=4)


@pytest.mark.parametrize("normalize", [True, False])
def test_square_infidelity_sets_each_square_to_the_baseline_as_a_hand_computation(normalize: bool) -> None:
    """I = x - baseline on one square, 0 elsewhere: x - I holds the baseline on the square. Every square of side
    1..max_square, one perturbation each; INFD computed by hand from the model's logits."""
    g = torch.Generator().manual_seed(3)
    model, x = _cnn(5), torch.rand(2, 1, 5, 5, generator=g, dtype=torch.float64)
    a = torch.randn(2, 1, 5, 5, generator=g, dtype=torch.float64)
    target, base = torch.tensor([0, 2]), 0.5
    r = whybox.evaluate(
        model, x, a, "infidelity", perturbation="square", max_square=2, baseline=base, target=target,
        score="logit", normalize=normalize,
    )  # fmt: skip
    with torch.no_grad():
        clean = model(x)[torch.arange(2), target]
        dots, drops = [], []
        for s, t, left in squares(5, 5, 2).tolist():
            xp = x.clone()
            xp[:, :, t : t + s, left : left + s] = base
            dots.append(((x - xp) * a).flatten(1).sum(1))
            drops.append(clean - model(xp)[torch.arange(2), target])
    dot, drop = torch.stack(dots, 1), torch.stack(drops, 1)
    if normalize:
        beta = (dot * drop).mean(1) / (dot * dot).mean(1)
        want = ((drop - beta[:, None] * dot) ** 2).mean(1)
    else:
        want = ((dot - drop) ** 2).mean(1)
    assert r.meta["n_perturbations"] == 25 + 16  # every 1x1 and 2x2 square of a 5x5 image
    torch.testing.assert_close(r.curves["attribution_dot"], dot, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(r.curves["drop"], drop, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(r.scores, want, rtol=1e-9, atol=1e-15)
    zero = whybox.evaluate(
        model, x, a, "infidelity", perturbation="square", max_square=2, target=target, score="logit",
        normalize=normalize,
    )  # fmt: skip
    assert not torch.equal(zero.scores, r.scores)  # the baseline is read, not ignored


@pytest.mark.parametrize("perturbation", ["noisy_baseline", "square"])
def test_infidelity_re_runs_from_its_recorded_params(perturbation: str) -> None:
    """A result's params hold only the options its perturbation reads (the others None): evaluate(**params) works
    and gives the same scores."""
    model, x = _cnn(5), torch.rand(2, 1, 5, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    a = torch.randn(2, 1, 5, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    opts = {"max_square": 2} if perturbation == "square" else {"n_samples": 5}
    r = whybox.evaluate(model, x, a, "infidelity", perturbation=perturbation, target=0, **opts)
    unused = ("sigma", "n_samples", "clip") if perturbation == "square" else ("max_square",)
    assert all(r.params[k] is None for k in unused)
    again = whybox.evaluate(model, x, a, "infidelity", target=0, **r.params)
    torch.testing.assert_close(again.scores, r.scores, rtol=0, atol=0)


# ------------------------------------------------------------------ mufidelity: grid_size vs regions
def test_mufidelity_same_partition_as_grid_or_regions_gives_the_same_subsets_and_score() -> None:
    """A 6x6 image whose top half equals the fill (0) and its 3x3 grid's 2x2 cells passed as a label map: the same
    9 features, subsets of round(0.2 * 9) = 2 of them drawn among all 9 (the black cells too), the same score."""
    g = torch.Generator().manual_seed(0)
    model = _cnn(6)
    x = torch.randn(1, 1, 6, 6, generator=g, dtype=torch.float64)
    x[:, :, :3, :] = 0  # the top rows equal the fill
    a = torch.randn(1, 1, 6, 6, generator=g, dtype=torch.float64)
    cells = torch.arange(9).view(3, 3).repeat_interleave(2, 0).repeat_interleave(2, 1)[None]
    grid = whybox.evaluate(model, x, a, "mufidelity", grid_size=3, n_samples=200, target=0)
    regions = whybox.evaluate(model, x, a, "mufidelity", regions=cells, n_samples=200, target=0)
    torch.testing.assert_close(regions.curves["attribution_sum"], grid.curves["attribution_sum"], rtol=0, atol=0)
    torch.testing.assert_close(regions.curves["drop"], grid.curves["drop"], rtol=0, atol=0)
    torch.testing.assert_close(regions.scores, grid.scores, rtol=0, atol=0)
    # C(9, 2) = 36 different subsets of 2 cells (each pair's attribution sum is its own)
    assert regions.curves["attribution_sum"].unique().numel() == math.comb(9, 2)
    # subsets of black cells only are kept with drop 0 (their input is unchanged), not left out of the draw
    assert bool((regions.curves["drop"] == 0).any())


def test_mufidelity_draws_only_the_regions_a_row_has() -> None:
    """A label id absent from a row is none of its features: row 0 of 4 regions draws round(0.5 * 4) = 2 of them,
    never the ids only row 1 has, so its subsets are those of the same map alone."""
    g = torch.Generator().manual_seed(1)
    model = _cnn(4)
    x = torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64)
    a = torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64)
    quad = torch.arange(4).view(2, 2).repeat_interleave(2, 0).repeat_interleave(2, 1)
    labels = torch.stack([quad, torch.arange(16).view(4, 4)])  # row 1: 16 regions, ids 4..15 absent from row 0
    both = whybox.evaluate(model, x, a, "mufidelity", regions=labels, subset_fraction=0.5, n_samples=20, target=0)
    alone = whybox.evaluate(
        model, x[:1], a[:1], "mufidelity", regions=quad[None], subset_fraction=0.5, n_samples=20, target=0
    )
    torch.testing.assert_close(both.curves["attribution_sum"][0], alone.curves["attribution_sum"][0], rtol=0, atol=0)
    torch.testing.assert_close(both.scores[0], alone.scores[0], rtol=0, atol=0)


def test_mufidelity_on_a_text_draws_its_words_only(make_text_classifier: Any) -> None:
    """A text's specials and pads share one region the fill never changes: none of its words, never drawn. Word j
    of a row holds 2**j (on one token), the specials 2**W: each subset's attribution sum spells the words it
    perturbs, exactly round(0.5 * W) of its W words and never the specials."""
    pytest.importorskip("transformers", reason="the text extra (transformers) is not installed")
    pytest.importorskip("tokenizers", reason="the text extra (tokenizers) is not installed")
    clf = make_text_classifier()
    batch = clf.encode(["it was not a good film", "playing it"])
    ids = batch.word_features()[..., 0]
    a = torch.zeros(ids.shape, dtype=torch.float64)
    for r in range(2):
        for j in range(int(ids[r].max()) + 1):  # ids[r].max() = W, the specials' region
            a[r, (ids[r] == j).nonzero()[0, 0]] = 2.0**j
    res = whybox.evaluate(
        clf, batch.inputs, a, "mufidelity", regions=ids[..., None], pool="sum", subset_fraction=0.5, n_samples=30,
        target=0,
    )  # fmt: skip
    for r, sums in enumerate(res.curves["attribution_sum"].to(torch.int64).tolist()):
        n_words = int(ids[r].max())
        assert all(s < 2**n_words and bin(s).count("1") == round(0.5 * n_words) for s in sums), (r, sums)


# ------------------------------------------------------------------ plot: a method whybox does not know
@pytest.mark.parametrize("method", ["captum_integrated_gradients", "my_method"])
def test_a_method_whybox_does_not_know_is_read_signed(method: str) -> None:
    assert method_reading(method, {}) == "signed"
    assert method_reading(method, {"abs": True}) == "signed"  # nothing says what a foreign option means
    assert method_reading("gradcam", {}) == "relative"  # a known method keeps its own reading


def test_plot_draws_another_library_s_maps_as_signed() -> None:
    """Images and signals explained by a method whybox does not know plot with the default reading, the
    same picture as reading='signed'."""
    FigureCanvasAgg = pytest.importorskip("matplotlib.backends.backend_agg").FigureCanvasAgg
    g = torch.Generator().manual_seed(0)
    e = Explanation(torch.randn(2, 3, 8, 8, generator=g), torch.zeros(2, dtype=torch.long), "captum_saliency")
    x = torch.rand(2, 3, 8, 8, generator=g)

    def pixels(fig: Any) -> np.ndarray:
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        return np.asarray(canvas.buffer_rgba())

    np.testing.assert_array_equal(pixels(e.plot(x)), pixels(e.plot(x, reading="signed")))
    signal = Explanation(
        torch.randn(2, 2, 10, generator=g), torch.zeros(2, dtype=torch.long), "my_method", meta={"signal": True}
    )
    np.testing.assert_array_equal(pixels(signal.plot()), pixels(signal.plot(reading="signed")))


# ------------------------------------------------------------------ overlay: a picture of 0-255 values
@pytest.mark.parametrize(
    "image",
    [torch.full((3, 4, 4), 200, dtype=torch.uint8), np.full((3, 4, 4), 200, dtype=np.uint8)],
    ids=["torch", "numpy"],
)
def test_overlay_tells_to_divide_a_uint8_picture_by_255(image: Any) -> None:
    with pytest.raises(InvalidInputError, match=r"uint8 picture holds 0-255 values: divide it by 255 first"):
        overlay(image, torch.rand(4, 4))


def test_overlay_names_both_fixes_for_floats_in_0_255_and_only_normalisation_below_0() -> None:
    with pytest.raises(InvalidInputError, match=r"If it holds 0-255 values, divide it by 255 first.*normalisation"):
        overlay(torch.full((3, 4, 4), 37.0), torch.rand(4, 4))
    with pytest.raises(InvalidInputError) as info:
        overlay(torch.full((3, 4, 4), -1.5), torch.rand(4, 4))
    assert "255" not in str(info.value).split("].", 1)[1] and "normalisation" in str(info.value)


def test_a_run_report_sample_of_0_255_values_is_told_to_divide_by_255() -> None:
    from whybox.report.run_report import ReportSample, _check_image

    sample = ReportSample("a", np.full((4, 4, 3), 200, dtype=np.uint8), "cat", 0.9, None, {}, {})
    with pytest.raises(InvalidInputError, match=r"samples\[3\]\.image .* uint8 picture holds 0-255 values"):
        _check_image(sample, 3)


def test_mufidelity_on_generation_steps_draws_each_step_s_own_tokens_only() -> None:
    # a step's features are the tokens it attributes: its future tokens and the specials, which the fill keeps, are
    # none of them (CausalLMAdapter.null_regions), as a text's pads are none of its words. Token j holds attribution
    # 2**j, so each subset's attribution sum spells the tokens drawn
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_generation import ids, tiny_gpt2, toy_tokenizer

    from whybox.explainers.llm.generation import CausalLMAdapter

    model, tok = tiny_gpt2(), toy_tokenizer()
    prompt, cont = ids(tok, "the cat sat on the"), ids(tok, "mat and it was")
    ad = CausalLMAdapter(model, tok)
    batch = ad.steps(prompt + cont, len(prompt))
    g, t = batch.inputs.shape[:2]
    a = (2.0 ** torch.arange(t, dtype=torch.float64)).view(1, t, 1).expand(g, t, 1).contiguous()
    r = whybox.evaluate(
        ad,
        batch.inputs,
        a,
        "mufidelity",
        regions=batch.token_features(),
        n_samples=12,
        subset_fraction=0.5,
        target=batch.targets,
        pool="sum",
    )
    fixed = ad.fixed_positions(batch.inputs)
    for row in range(g):
        own = int((~fixed[row]).sum())
        subsets = {tuple(j for j in range(t) if int(s) >> j & 1) for s in r.curves["attribution_sum"][row].tolist()}
        assert subsets, row
        for sub in subsets:
            assert not any(bool(fixed[row, j]) for j in sub), (row, sub)
            assert len(sub) == round(0.5 * own), (row, sub, own)
