"""Pointing game, energy pointing game, relevance mass and rank: hand-computed answers and Quantus agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import whybox

from ._models import randn


def _delta(h: int, w: int, row: int, col: int) -> torch.Tensor:
    a = torch.zeros(1, 1, h, w)
    a[0, 0, row, col] = 1.0
    return a


def test_pointing_game_tolerance_on_a_non_square_image() -> None:
    """Mask = columns 0..4 of a 20 x 40 image; the map's peak 10 px to the right of it (u = 14, v = 7):
    a hit at tolerance 15, a miss at tolerance 0; a peak on the mask hits at any tolerance."""
    h, w = 20, 40
    x = torch.zeros(1, 3, h, w)
    mask = torch.zeros(1, h, w, dtype=torch.bool)
    mask[0, :, :5] = True
    a = _delta(h, w, 7, 14)
    hit = whybox.evaluate(None, x, a, "pointing_game", masks=mask, target=0, tolerance=15)
    miss = whybox.evaluate(None, x, a, "pointing_game", masks=mask, target=0, tolerance=0)
    assert hit.scores.tolist() == [1.0] and miss.scores.tolist() == [0.0]
    assert hit.meta["point"].tolist() == [[14, 7]]  # (u, v) = (x, y)
    assert whybox.evaluate(None, x, a, "pointing_game", masks=mask, tolerance=10).scores.tolist() == [0.0]  # strict <
    on = whybox.evaluate(None, x, _delta(h, w, 7, 2), "pointing_game", masks=mask, tolerance=0)
    assert on.scores.tolist() == [1.0]


def test_pointing_game_empty_mask_is_nan_and_class_accuracy_is_per_class() -> None:
    x = torch.zeros(3, 1, 6, 6)
    a = torch.cat([_delta(6, 6, 1, 1), _delta(6, 6, 5, 5), _delta(6, 6, 1, 1)])
    masks = torch.zeros(3, 6, 6, dtype=torch.bool)
    masks[0, :2, :2] = True
    masks[1, :2, :2] = True
    r = whybox.evaluate(None, x, a, "pointing_game", masks=masks, target=torch.tensor([1, 1, 2]), tolerance=0)
    assert r.scores[:2].tolist() == [1.0, 0.0] and math.isnan(r.scores[2].item())
    assert r.meta["class_accuracy"] == {1: 0.5} and r.meta["class_mean"] == 0.5
    assert r.n_nan == 1 and r.mean() == 0.5


def test_energy_pointing_game_known_values() -> None:
    x = torch.zeros(3, 1, 4, 5)
    masks = torch.zeros(3, 4, 5, dtype=torch.bool)
    masks[:, 1:3, 1:4] = True  # 6 of 20 pixels
    uniform = torch.ones(1, 1, 4, 5)
    inside = (
        masks[:1, None].float() * torch.rand(1, 1, 4, 5, generator=torch.Generator().manual_seed(0))
        - (~masks[:1, None]).float()
    )  # negative outside: L+ is zero there
    a = torch.cat([uniform, inside, torch.zeros(1, 1, 4, 5)])
    r = whybox.evaluate(None, x, a, "energy_pointing_game", masks=masks)
    assert r.scores[0].item() == pytest.approx(6 / 20) and r.scores[1].item() == pytest.approx(1.0)
    assert math.isnan(r.scores[2].item())
    m = whybox.evaluate(None, x, a, "relevance_mass", masks=masks)
    torch.testing.assert_close(m.scores, r.scores, equal_nan=True)


def test_relevance_rank_of_the_ground_truth_indicator_is_one() -> None:
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, 2:5, 3:7] = True
    masks[1, 0, :] = True
    a = masks.float().unsqueeze(1)
    x = torch.zeros(2, 1, 8, 8)
    assert whybox.evaluate(None, x, a, "relevance_rank", masks=masks).scores.tolist() == [1.0, 1.0]
    assert whybox.evaluate(None, x, a, "relevance_mass", masks=masks).scores.tolist() == [1.0, 1.0]
    rand = whybox.evaluate(None, x, randn(2, 1, 8, 8, seed=1), "relevance_rank", masks=masks)
    assert bool(((rand.scores >= 0) & (rand.scores <= 1)).all())


@pytest.mark.filterwarnings("ignore::UserWarning:quantus")
def test_localisation_agrees_with_quantus(quantus) -> None:
    """Maps without ties (Quantus hits on any tied maximum, ranks with an unstable argsort) and non-negative
    (Quantus sums signed relevance in its mass accuracy); tolerance 0 for the pointing game."""
    g = torch.Generator().manual_seed(2)
    a = torch.rand(5, 1, 10, 10, generator=g)
    masks = torch.rand(5, 10, 10, generator=g) < 0.3
    x = torch.rand(5, 1, 10, 10, generator=g)
    kw = {
        "x_batch": x.numpy(),
        "y_batch": np.zeros(5, dtype=int),
        "a_batch": a.numpy(),
        "s_batch": masks[:, None].numpy().astype(float),
        "channel_first": True,
    }
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(100, 2)).eval()
    pg = quantus.PointingGame(abs=False, normalise=False, disable_warnings=True)(model=model, **kw)
    rr = quantus.RelevanceRankAccuracy(abs=False, normalise=False, disable_warnings=True)(model=model, **kw)
    rm = quantus.RelevanceMassAccuracy(abs=False, normalise=False, disable_warnings=True)(model=model, **kw)
    ours_pg = whybox.evaluate(None, x, a, "pointing_game", masks=masks, tolerance=0).scores
    ours_rr = whybox.evaluate(None, x, a, "relevance_rank", masks=masks).scores
    ours_rm = whybox.evaluate(None, x, a, "relevance_mass", masks=masks).scores
    np.testing.assert_array_equal(ours_pg.numpy(), np.asarray(pg, dtype=float))
    np.testing.assert_allclose(ours_rr.numpy(), np.asarray(rr, dtype=float), atol=1e-12)
    np.testing.assert_allclose(ours_rm.numpy(), np.asarray(rm, dtype=float), rtol=1e-6)


@pytest.mark.parametrize("tolerance", [0.0, 1.0, 1.5, 2.0, math.sqrt(8), 3.5, 15.0])
def test_pointing_game_distance_is_the_distance_transform_at_the_point(tolerance: float) -> None:
    """Oracle: scipy's exact Euclidean distance transform of ~mask, read at the map's maximum, row by row."""
    from scipy.ndimage import distance_transform_edt

    g = torch.Generator().manual_seed(4)
    h, w = 9, 13
    a = torch.rand(40, 1, h, w, generator=g)
    masks = torch.rand(40, h, w, generator=g) < torch.linspace(0.0, 0.2, 40).view(-1, 1, 1)
    x = torch.rand(40, 1, h, w, generator=g)
    r = whybox.evaluate(None, x, a, "pointing_game", masks=masks, tolerance=tolerance)
    point = a.flatten(1).argmax(1)
    for i in range(40):
        m = masks[i].numpy()
        if not m.any():
            assert math.isnan(r.scores[i])
            continue
        dist = float(distance_transform_edt(~m).reshape(-1)[int(point[i])])
        assert r.scores[i].item() == float(dist == 0.0 or dist < tolerance), i


@pytest.mark.parametrize(
    "metric",
    ["pointing_game", "energy_pointing_game", "relevance_mass", "relevance_rank", "sparseness", "complexity"],
)
def test_a_bare_map_and_an_explanation_give_the_same_result(metric: str) -> None:
    """A map-only metric given a bare tensor and no model takes a short path; given the same map as an Explanation
    it takes the general one. Same scores, NaN rows (an empty mask, a non-finite map), meta and params."""
    from whybox import Explanation

    g = torch.Generator().manual_seed(5)
    b, h, w = 6, 7, 9
    x = torch.rand(b, 3, h, w, generator=g)
    a = torch.rand(b, 3, h, w, generator=g) - 0.3
    a[1, 0, 2, 2] = math.nan
    a[2, 1, 0, 0] = math.inf
    a[3] = a[3].round(decimals=1)  # ties
    masks = torch.rand(b, h, w, generator=g) < 0.3
    masks[4] = False
    target = torch.tensor([0, 1, 1, 2, 0, 2])
    kw = {"masks": masks} if metric not in ("sparseness", "complexity") else {}
    short = whybox.evaluate(None, x, a, metric, target=target, seed=3, **kw)
    general = whybox.evaluate(None, x, Explanation(a, target, "saliency"), metric, seed=3, **kw)
    torch.testing.assert_close(short.scores, general.scores, equal_nan=True, rtol=0, atol=0)
    assert general.meta.pop("method") == "saliency"
    assert short.meta.keys() == general.meta.keys() and short.params == general.params
    for k, v in short.meta.items():
        assert torch.equal(v, general.meta[k]) if isinstance(v, torch.Tensor) else v == general.meta[k], k
    assert short.meta["nonfinite_attributions"] == [1, 2] and short.n_nan >= 2


def test_map_metrics_take_numpy_and_dataframe_inputs() -> None:
    """The inputs of a map-only metric may be a numpy array or a DataFrame (tabular rows), as for every metric:
    converted, read for their shape, the same scores as a tensor."""
    pd = pytest.importorskip("pandas")
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 5, generator=g, dtype=torch.float64)
    a = torch.rand(3, 5, generator=g) - 0.2
    for name in ("sparseness", "complexity"):
        want = whybox.evaluate(None, x, a, name).scores
        assert torch.equal(whybox.evaluate(None, x.numpy(), a, name).scores, want)
        frame = pd.DataFrame(x.numpy(), columns=[f"c{i}" for i in range(5)])
        assert torch.equal(whybox.evaluate(None, frame, a, name).scores, want)


@pytest.mark.parametrize("name", ["pointing_game", "relevance_mass", "sparseness"])
def test_a_target_of_other_rows_is_refused_by_name(name: str) -> None:
    """A metric that reads only the map takes target= as one class or one per row: another length (the labels of
    a whole test set for a slice of it) is the error a model's metrics give, not an IndexError inside."""
    a = randn(4, 1, 8, 8, seed=1)
    masks = torch.zeros(4, 8, 8, dtype=torch.bool)
    masks[:, 2:6, 2:6] = True
    kw = {"masks": masks} if name != "sparseness" else {}
    with pytest.raises(
        whybox.InvalidTargetError,
        match=r"^target must be an int or hold one class per row, shape \(4,\); got shape \(10,\)\.$",
    ):
        whybox.evaluate(None, randn(4, 1, 8, 8), a, name, target=torch.arange(10), **kw)
    ok = whybox.evaluate(None, randn(4, 1, 8, 8), a, name, target=torch.tensor([0, 1, 2, 3]), **kw)
    assert ok.scores.shape == (4,)


@pytest.mark.parametrize("value", [0.0, 0.3])
def test_a_flat_map_points_nowhere(value: float) -> None:
    """An all-zero Grad-CAM (or any map of one value) has no maximum and no ranking: NaN, flagged in meta, where
    the seeded tie rule alone would have made a point (a hit on small images at the default tolerance)."""
    x = torch.zeros(3, 1, 16, 16)
    a = torch.full((3, 1, 16, 16), value)
    a[2, 0, 5, 5] = value + 1.0  # an ordinary map in the last row: its peak on the mask
    mask = torch.zeros(3, 16, 16, dtype=torch.bool)
    mask[:, 4:12, 4:12] = True
    for metric in ("pointing_game", "relevance_rank"):
        r = whybox.evaluate(None, x, a, metric, masks=mask)
        assert math.isnan(r.scores[0]) and math.isnan(r.scores[1]), metric
        assert r.meta["flat_map"] == [True, True, False]
    assert whybox.evaluate(None, x, a, "pointing_game", masks=mask).scores[2] == 1.0


@pytest.mark.parametrize("value", [0.25, math.nan, 255.0])
def test_masks_other_than_zero_and_one_are_refused(value: float) -> None:
    """A soft (interpolated) mask, a NaN mask or a 0/255 image mask would count every non-zero pixel as ground truth;
    the metric refuses it and says to threshold. 0/1 floats and uint8 stay accepted."""
    x = torch.zeros(1, 1, 6, 6)
    a = _delta(6, 6, 1, 1)
    soft = torch.zeros(1, 6, 6)
    soft[0, 1, 1] = value
    for name in ("pointing_game", "relevance_mass"):
        with pytest.raises(whybox.errors.InvalidInputError, match=r"masks .*0/1.*masks > 0.5"):
            whybox.evaluate(None, x, a, name, masks=soft)
    hard = torch.zeros(1, 6, 6, dtype=torch.uint8)
    hard[0, 1, 1] = 1
    assert whybox.evaluate(None, x, a, "pointing_game", masks=hard.float(), tolerance=0).scores.tolist() == [1.0]
    assert whybox.evaluate(None, x, a, "relevance_mass", masks=hard).scores.tolist() == [1.0]
