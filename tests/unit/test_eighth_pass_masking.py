"""Eighth pass, masking helpers. Properties: the "blur" fill is scipy's Gaussian (mirror mode, radius 3 sigma) at
every image size, also where the kernel is longer than the image; the public masking helpers check their options
as the explainers do and refuse bad input with an error that names it (or work: empty batches, numpy fills); a
black-box text model's explanation is recognised as text by plot(), also after save and load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import whybox
from whybox.errors import InvalidInputError, InvalidParameterError
from whybox.explanation import Explanation
from whybox.masking import MaskingEngine, columns, gaussian_blur, make_fill, segments, superpixels
from whybox.models.blackbox_text import BlackBoxTextAdapter
from whybox.models.text import explain_text


# ---------------------------------------------------------------------------------------------- the blur fill
def _scipy_blur(x: torch.Tensor, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    arr = x.numpy()
    out = np.empty_like(arr)
    for i in range(arr.shape[0]):
        for c in range(arr.shape[1]):
            out[i, c] = gaussian_filter(arr[i, c], sigma, mode="mirror", truncate=3.0)
    return out


@pytest.mark.parametrize("hw", [(1, 1), (1, 7), (7, 1), (2, 2), (2, 9), (3, 5), (8, 8), (13, 40)])
@pytest.mark.parametrize("sigma", [0.1, 0.3, 1.0, 2.5, 5.0, 17.0])
def test_blur_is_scipys_mirror_gaussian_at_any_size(hw: tuple[int, int], sigma: float) -> None:
    pytest.importorskip("scipy")
    x = torch.rand(2, 3, *hw, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = _scipy_blur(x, sigma)
    np.testing.assert_allclose(gaussian_blur(x, sigma).numpy(), ref, rtol=0, atol=1e-14)
    np.testing.assert_allclose(make_fill("blur", x, sigma=sigma).numpy(), ref, rtol=0, atol=1e-14)
    x32 = x.float()
    out32 = make_fill("blur", x32, sigma=sigma)
    assert out32.dtype == torch.float32
    np.testing.assert_allclose(out32.numpy(), ref, rtol=0, atol=1e-5)


def test_blur_at_the_default_sigma_on_8x8_digits_is_the_documented_gaussian() -> None:
    pytest.importorskip("scipy")
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 16
    np.testing.assert_allclose(make_fill("blur", x).numpy(), _scipy_blur(x, 5.0), rtol=0, atol=1e-13)


def test_blur_of_a_constant_image_is_that_constant_and_sigma_0_a_copy() -> None:
    x = torch.full((1, 2, 3, 5), 0.7, dtype=torch.float64)
    torch.testing.assert_close(gaussian_blur(x, 9.0), x, rtol=0, atol=1e-15)
    one = torch.rand(1, 1, 1, 1)
    out = gaussian_blur(one, 5.0)
    assert torch.equal(out, one) and out.data_ptr() != one.data_ptr()
    out = gaussian_blur(x, 0.0)
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("sigma", [float("nan"), float("inf"), -1.0, True, "5"])
def test_a_bad_blur_sigma_is_named(sigma: object) -> None:
    with pytest.raises(
        InvalidParameterError, match=r"^sigma \(the blur's standard deviation in pixels\) must be a fin"
    ):
        make_fill("blur", torch.rand(1, 3, 8, 8), sigma=sigma)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- superpixels
@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"compactness": 0.0}, "compactness must be a number > 0; got 0.0."),
        ({"compactness": -1.0}, "compactness must be a number > 0; got -1.0."),
        ({"compactness": float("nan")}, "compactness must be a number > 0; got nan."),
        ({"compactness": "10"}, "compactness must be a number > 0; got '10'."),
        ({"n_segments": None}, "n_segments must be an int >= 1; got None."),
        ({"n_segments": "50"}, "n_segments must be an int >= 1; got '50'."),
        ({"n_segments": True}, "n_segments must be an int >= 1; got True."),
        ({"n_segments": 0}, "n_segments must be an int >= 1; got 0."),
    ],
)
def test_superpixels_checks_its_options_as_the_explainers_do(kw: dict[str, object], message: str) -> None:
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(InvalidParameterError) as direct:
        superpixels(x, **kw)  # type: ignore[arg-type]
    assert str(direct.value) == message
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2)).eval()
    with pytest.raises(InvalidParameterError) as through:
        whybox.explain(model, x, "lime", features="superpixels", n_samples=8, **kw)
    assert str(through.value) == message


def test_superpixels_takes_numpy_numbers() -> None:
    pytest.importorskip("skimage")
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    a = superpixels(x, n_segments=np.int64(9), compactness=np.float32(10.0))
    b = superpixels(x, n_segments=9, compactness=10.0)
    assert torch.equal(a.groups, b.groups) and a.n_groups == b.n_groups


# ---------------------------------------------------------------------------------------------- fills, groups, engine
def test_a_numpy_fill_is_read_as_the_tensor_it_holds() -> None:
    x = torch.rand(2, 4)
    values = np.array([0.5, -1.0, 2.0, 3.0])
    torch.testing.assert_close(make_fill(values, x), torch.tensor(values, dtype=x.dtype).expand(2, 4))
    with pytest.raises(InvalidParameterError, match="does not broadcast to the inputs"):
        make_fill(np.zeros(3), x)


@pytest.mark.parametrize("fill", ["mean", "blur", "uniform"])
def test_statistics_of_integer_inputs_are_refused_with_the_fix(fill: str) -> None:
    x = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    with pytest.raises(
        InvalidInputError, match=rf"^fill='{fill}' is computed .* dtype torch.uint8\. Pass x\.float\(\)"
    ):
        make_fill(fill, x)
    assert torch.equal(make_fill("zero", x), x)  # a fill that reads no statistic keeps the dtype


@pytest.mark.parametrize("fill", ["zero", "mean", "blur", "uniform", 0.5])
def test_fills_of_no_rows_are_empty(fill: object) -> None:
    x = torch.rand(0, 3, 4, 4)
    out = make_fill(fill, x, generator=torch.Generator().manual_seed(0))  # type: ignore[arg-type]
    assert out.shape == x.shape and out.dtype == x.dtype


def test_columns_of_rows_without_columns_is_named() -> None:
    with pytest.raises(InvalidInputError, match=r"^columns\(\) needs rows of at least one column .* shape \(2, 0\)"):
        columns(torch.rand(2, 0))


def test_an_empty_batch_gets_scores_of_no_rows() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
    engine = MaskingEngine(whybox.adapt(model))
    out = engine.forward(torch.rand(0, 4))
    assert out.shape == (0, 3) and engine.n_forward == 0


def test_an_empty_batch_a_model_cannot_score_is_named() -> None:
    from whybox.models.adapter import ModelAdapter

    class NoEmpty(ModelAdapter):
        def scores(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[0] == 0:
                raise ValueError("Found array with 0 sample(s)")
            return x

    with pytest.raises(InvalidInputError, match=r"^x holds no rows \(shape \(0, 4\)\) .*pass at least one row\.$"):
        MaskingEngine(NoEmpty()).forward(torch.rand(0, 4))


def test_segments_names_its_own_length_option() -> None:
    x = torch.rand(2, 3, 10)
    with pytest.raises(InvalidParameterError) as err:
        segments(x, length=0)
    assert str(err.value) == "length (the window length for segments) must be an int >= 1; got 0."
    with pytest.raises(InvalidParameterError, match=r"^patch \(the window length for segments\)"):
        segments(x, length=0, name="patch")
    model = nn.Sequential(nn.Flatten(), nn.Linear(30, 2)).eval()
    with pytest.raises(InvalidParameterError, match=r"^regions \(the window length for segments\) must be an int"):
        whybox.evaluate(model, x, torch.rand(2, 3, 10), "deletion", regions=0)


# ---------------------------------------------------------------------------------------------- black-box text
def _polarity(texts: list[str]) -> torch.Tensor:
    bad = torch.tensor([float("bad" in t.split()) for t in texts], dtype=torch.float64)
    return torch.stack([1.0 - bad, bad], 1)


def test_a_black_box_text_explanation_is_refused_by_plot_like_a_text_models(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    ad = BlackBoxTextAdapter(_polarity, labels=["neg", "pos"])
    r = explain_text(ad, ["this is bad", "a good day"], "occlusion")
    assert r.explanation.meta["word_presence"] is True
    for e in (r.explanation, Explanation.load(r.explanation.save(tmp_path / "e.safetensors")), r.explanation[1]):
        with pytest.raises(InvalidInputError, match=r"word-presence rows .* explain_text\(\.\.\.\)\.words holds"):
            e.plot()
    # a table is no text: its explanation still draws bars
    tab = whybox.explain(nn.Sequential(nn.Linear(3, 2)).eval(), torch.rand(2, 3), "feature_ablation")
    assert "word_presence" not in tab.meta
    tab.plot()
