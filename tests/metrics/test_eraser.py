"""ERASER comprehensiveness and sufficiency (DeYoung et al. 2020) over any feature groups.

Properties: hand-computed values on an additive model; comprehensiveness + sufficiency = f(x) - f(fill) per bin
for any additive model; a slow oracle written from the paper on a softmax classifier; the exact contributions
beat every random ordering; null features (already equal to the fill) are never counted nor selected; batched
equals one by one and the chunk size changes nothing; channel pooling and label maps are equivalent spellings;
bad options give exact messages.
"""

from __future__ import annotations

import math

import pytest
import torch

import whybox
from whybox.errors import InvalidInputError, InvalidParameterError
from whybox.masking.features import FeatureGroups
from whybox.metrics.eraser import (
    ERASER_FRACTIONS,
    Comprehensiveness,
    Sufficiency,
    bin_counts,
    default_features,
    null_features,
    pool_attributions,
)

from ._models import Additive, Linear, cnn3, randn

F64 = torch.float64


def _eval(model, x, a, name, **kw):
    return whybox.evaluate(model, x, a, name, **kw)


# ---------------------------------------------------------------------------------------------- known answers
def test_additive_model_gives_the_hand_values() -> None:
    """f(x) = 4 x0 + 3 x1 + 2 x2 + x3, x = 1, fill 0, a = w, bins 25/50/100 %: top-1, top-2, all four features.
    Comprehensiveness drops 10 - [6, 3, 0] = [4, 7, 10] -> 7; sufficiency drops 10 - [4, 7, 10] = [6, 3, 0] -> 3."""
    model, x, a = Additive([4, 3, 2, 1]), torch.ones(1, 4, dtype=F64), torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    kw = {"score": "logit", "target": 0, "fractions": (0.25, 0.5, 1.0)}
    c = _eval(model, x, a, "comprehensiveness", **kw)
    s = _eval(model, x, a, "sufficiency", **kw)
    assert c.scores.tolist() == [7.0] and s.scores.tolist() == [3.0]
    assert c.curves["y"].tolist() == [[6.0, 3.0, 0.0]] and c.curves["drop"].tolist() == [[4.0, 7.0, 10.0]]
    assert s.curves["y"].tolist() == [[4.0, 7.0, 10.0]] and s.curves["drop"].tolist() == [[6.0, 3.0, 0.0]]
    assert c.curves["x"].tolist() == [[0.25, 0.5, 1.0]] and c.meta["n_selected"].tolist() == [[1, 2, 4]]
    assert c.meta["n_forward"] == 1 + 3 and c.meta["features"] == "columns" and c.meta["n_features"] == [4]
    assert c.higher_is_better is True and s.higher_is_better is False
    # ERASER's default bins on M = 4: ceil(k * 4) = [1, 1, 1, 1, 2]
    c = _eval(model, x, a, "comprehensiveness", score="logit", target=0)
    s = _eval(model, x, a, "sufficiency", score="logit", target=0)
    assert c.scores.tolist() == [pytest.approx(23 / 5, abs=1e-15)] and s.scores.tolist() == [pytest.approx(27 / 5)]
    assert c.meta["n_selected"].tolist() == [[1, 1, 1, 1, 2]] and c.meta["n_forward"] == 1 + 2  # 2 distinct bins
    torch.testing.assert_close(c.curves["y"], torch.tensor([[6.0, 6.0, 6.0, 6.0, 3.0]], dtype=F64))
    assert c.params["fractions"] == list(ERASER_FRACTIONS)


def test_comprehensiveness_plus_sufficiency_is_the_full_drop_for_additive_models() -> None:
    """For f additive and one fill x~: f(x \\ r) + f(r) = f(x) + f(x~), so per bin comp + suff = f(x) - f(x~)."""
    w = randn(30, seed=1, dtype=F64)
    x, a = randn(3, 30, seed=2, dtype=F64), randn(3, 30, seed=3)
    kw = {"score": "logit", "target": 0, "fill": 0.5, "fractions": (0.1, 0.3, 0.7, 1.0)}
    c = _eval(Additive(w), x, a, "comprehensiveness", **kw)
    s = _eval(Additive(w), x, a, "sufficiency", **kw)
    full = (x * w).sum(1) - 0.5 * w.sum()
    torch.testing.assert_close(c.curves["drop"] + s.curves["drop"], full.unsqueeze(1).expand(3, 4), atol=1e-12, rtol=0)


def _oracle(model: torch.nn.Module, x: torch.Tensor, a: torch.Tensor, target: list[int], fractions, fill: float, keep):
    """Straight from the paper, one row and one bin at a time, probabilities of the target class."""
    out = []
    for i in range(x.shape[0]):
        with torch.no_grad():
            p0 = torch.softmax(model(x[i : i + 1]), 1)[0, target[i]]
        order = sorted(range(x.shape[1]), key=lambda j: -float(a[i, j]))  # distinct values: no ties
        row = []
        for k in fractions:
            top = set(order[: math.ceil(k * x.shape[1])])
            xi = x[i].clone()
            for j in range(x.shape[1]):
                if (j in top) != keep:
                    xi[j] = fill
            with torch.no_grad():
                row.append(float(p0 - torch.softmax(model(xi.unsqueeze(0)), 1)[0, target[i]]))
        out.append(sum(row) / len(row))
    return torch.tensor(out, dtype=F64)


def test_probabilities_match_a_slow_oracle_from_the_paper() -> None:
    model = Linear(randn(4, 12, seed=4))
    x, a = randn(3, 12, seed=5, dtype=F64), randn(3, 12, seed=6, dtype=F64)
    target = [0, 2, 3]
    for name, keep in (("comprehensiveness", False), ("sufficiency", True)):
        r = _eval(model, x, a, name, target=target, fill=-0.25)
        want = _oracle(model, x, a, target, ERASER_FRACTIONS, -0.25, keep)
        torch.testing.assert_close(r.scores, want, atol=1e-14, rtol=0)
        assert r.params["score"] is None and r.meta["target"].tolist() == target


def test_the_exact_contributions_beat_random_orderings() -> None:
    """Additive model, fill 0: the drop of removing (keeping) a set is its contribution sum, so ranking by the
    contributions w * x maximises comprehensiveness and minimises sufficiency at every bin."""
    w = randn(50, seed=7, dtype=F64)
    x = randn(2, 50, seed=8, dtype=F64)
    model = Additive(w)
    kw = {"score": "logit", "target": 0}
    perfect_c = _eval(model, x, x * w, "comprehensiveness", **kw)
    perfect_s = _eval(model, x, x * w, "sufficiency", **kw)
    for seed in range(5):
        noise = randn(2, 50, seed=100 + seed, dtype=F64)
        rc = _eval(model, x, noise, "comprehensiveness", **kw)
        rs = _eval(model, x, noise, "sufficiency", **kw)
        assert bool((perfect_c.curves["drop"] >= rc.curves["drop"] - 1e-12).all())
        assert bool((perfect_s.curves["drop"] <= rs.curves["drop"] + 1e-12).all())
        assert bool((perfect_c.scores > rc.scores).all()) and bool((perfect_s.scores < rs.scores).all())


# ---------------------------------------------------------------------------------------------- null features
def test_null_features_are_never_counted_nor_selected() -> None:
    """Columns 1 and 4 already equal the fill (0): they carry the largest attributions but are not features.
    M = 3; bins 30/60/100 % select 1, 2, 3 of columns 3, 2, 0 (contributions 3, 2, 1)."""
    model = Additive([1, 10, 2, 3, 20])
    x = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0]], dtype=F64)
    a = torch.tensor([[1.0, 100.0, 2.0, 3.0, 50.0]])
    kw = {"score": "logit", "target": 0, "fractions": (0.3, 0.6, 1.0)}
    c = _eval(model, x, a, "comprehensiveness", **kw)
    assert c.curves["drop"].tolist() == [[3.0, 5.0, 6.0]] and c.scores.tolist() == [pytest.approx(14 / 3)]
    assert c.meta["n_features"] == [3] and c.meta["n_null"] == [2] and c.meta["n_selected"].tolist() == [[1, 2, 3]]
    s = _eval(model, x, a, "sufficiency", **kw)
    assert s.curves["y"].tolist() == [[3.0, 5.0, 6.0]]  # only the kept non-null columns count
    assert null_features(x, torch.zeros_like(x), default_features(x)).tolist() == [[False, True, False, False, True]]


def test_a_row_without_any_non_null_feature_is_nan_and_not_scored() -> None:
    model = Additive([1.0, 2.0])
    x = torch.tensor([[1.0, 1.0], [0.0, 0.0]], dtype=F64)
    r = _eval(model, x, torch.tensor([[1.0, 2.0], [1.0, 2.0]]), "comprehensiveness", score="logit", target=0)
    assert float(r.scores[0]) == 2.0  # M = 2: every bin removes column 1 (a = 2), whose contribution is 2
    assert math.isnan(float(r.scores[1])) and r.meta["n_nan"] == 1 and r.meta["n_features"] == [2, 0]
    assert r.meta["n_forward"] == 2 + 1  # the clean rows, then the first row's one distinct bin (M = 2: all 1)
    assert bool(torch.isnan(r.curves["y"][1]).all()) and bool(torch.isnan(r.curves["x"][1]).all())


# ---------------------------------------------------------------------------------------------- invariances
@pytest.mark.parametrize("name", ["comprehensiveness", "sufficiency"])
def test_batched_equals_one_by_one_and_chunks_change_nothing(name: str) -> None:
    model, x = cnn3(), randn(3, 3, 8, 8, seed=9)
    e = whybox.explain(model, x, "saliency", target=[0, 1, 2])
    r = _eval(model, x, e, name, batch_size=64)
    assert r.meta["features"] == "pixels" and r.meta["n_features"] == [64, 64, 64]
    assert r.meta["n_selected"][0].tolist() == [1, 4, 7, 13, 32] and r.meta["n_forward"] == 3 + 3 * 5
    torch.testing.assert_close(_eval(model, x, e, name, batch_size=2).scores, r.scores, atol=1e-6, rtol=0)
    for i in range(3):
        one = _eval(model, x[i : i + 1], e.attributions[i : i + 1], name, target=i)
        torch.testing.assert_close(one.scores, r.scores[i : i + 1], atol=1e-6, rtol=0)
        torch.testing.assert_close(one.curves["y"], r.curves["y"][i : i + 1], atol=1e-6, rtol=0)


def test_channel_pooling_and_label_maps_are_equivalent_spellings() -> None:
    """A (B, C, H, W) map ranks pixels by its channel sum, like the summed (B, 1, H, W) and (B, H, W) maps; the
    pixel label map as a tensor equals the default pixel features; a 2 x 2 patch map equals FeatureGroups."""
    model, x = cnn3(), randn(2, 3, 8, 8, seed=10)
    a = randn(2, 3, 8, 8, seed=11)
    base = _eval(model, x, a, "comprehensiveness", target=1)
    for spelled in (a.sum(1, keepdim=True), a.sum(1)):
        torch.testing.assert_close(_eval(model, x, spelled, "comprehensiveness", target=1).scores, base.scores)
    ids = torch.arange(64).view(8, 8)
    torch.testing.assert_close(_eval(model, x, a, "comprehensiveness", target=1, regions=ids).scores, base.scores)
    patches = (torch.arange(8).view(-1, 1) // 2 * 4 + torch.arange(8).view(1, -1) // 2).view(1, 1, 8, 8)
    by_map = _eval(model, x, a, "sufficiency", target=1, regions=patches.expand(2, 1, 8, 8))
    by_groups = _eval(model, x, a, "sufficiency", target=1, regions=FeatureGroups(patches.expand(2, 1, 8, 8), 16, "p"))
    torch.testing.assert_close(by_map.scores, by_groups.scores, atol=0, rtol=0)
    assert by_map.meta["n_features"] == [16, 16] and by_map.meta["n_selected"][0].tolist() == [1, 1, 2, 4, 8]


def test_pool_mean_reads_copied_values_and_sum_adds_them() -> None:
    """Column groups {0, 1} and {2}; a copies 5 onto both columns of group 0 and 8 onto column 2. The sum ranks
    group 0 first (10 > 8), the mean ranks group 2 first (8 > 5)."""
    model, x = Additive([1.0, 1.0, 4.0]), torch.ones(1, 3, dtype=F64)
    a = torch.tensor([[5.0, 5.0, 8.0]])
    kw = {"score": "logit", "target": 0, "fractions": (0.5,), "regions": torch.tensor([0, 0, 1])}
    assert _eval(model, x, a, "comprehensiveness", **kw).scores.tolist() == [2.0]
    assert _eval(model, x, a, "comprehensiveness", pool="mean", **kw).scores.tolist() == [4.0]


def test_pure_functions() -> None:
    assert bin_counts(torch.tensor([100, 4, 1]), ERASER_FRACTIONS).tolist() == [
        [1, 5, 10, 20, 50],
        [1, 1, 1, 1, 2],
        [1, 1, 1, 1, 1],
    ]
    assert bin_counts(torch.tensor([100]), (0.07, 0.29, 0.57)).tolist() == [[7, 29, 57]]  # no float creep upwards
    x = torch.zeros(1, 3, 4)  # a sequence (B, T, D): default features are the positions
    g = default_features(x)
    assert g.kind == "positions" and g.groups.shape == (1, 3, 1)
    a = torch.arange(12.0).view(1, 3, 4)
    assert pool_attributions(a, g, x).tolist() == [[6.0, 22.0, 38.0]]
    assert pool_attributions(a, g, x, pool="mean").tolist() == [[1.5, 5.5, 9.5]]
    assert pool_attributions(torch.tensor([[1.0, -2.0, 3.0]]), g, x, abs=True).tolist() == [[1.0, 2.0, 3.0]]
    words = FeatureGroups(torch.tensor([[[0], [0], [1]]]), 3, "words")  # feature 2 covers nothing: NaN and null
    v = pool_attributions(a[..., :1], words, x)
    assert v[0, :2].tolist() == [4.0, 8.0] and math.isnan(float(v[0, 2]))
    assert null_features(x, torch.ones_like(x), words).tolist() == [[False, False, True]]


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("opts", "message"),
    [
        ({"fractions": ()}, "fractions must be a non-empty increasing sequence of numbers in (0, 1]; got ()."),
        ({"fractions": (0.0, 0.5)}, "fractions must be a non-empty increasing sequence of numbers in (0, 1]; got (0.0, 0.5)."),
        ({"fractions": (0.5, 1.5)}, "fractions must be a non-empty increasing sequence of numbers in (0, 1]; got (0.5, 1.5)."),
        ({"fractions": (0.5, 0.1)}, "fractions must be a non-empty increasing sequence of numbers in (0, 1]; got (0.5, 0.1)."),
        ({"fractions": 0.5}, "fractions must be a non-empty increasing sequence of numbers in (0, 1]; got 0.5."),
        ({"fractions": "0.5"}, "fractions must be a non-empty increasing sequence of numbers in (0, 1]; got '0.5'."),
        ({"pool": "max"}, "pool must be one of ('sum', 'mean'); got 'max'."),
        ({"abs": 1}, "abs must be True or False; got 1."),
        ({"fill": "blurry"}, "fill must be 'auto', 'zero', 'mean', 'blur', 'min', 'uniform', a number, a tensor or a callable; got 'blurry'."),
        ({"regions": "words"}, "regions must be None (the default features), a FeatureGroups or an integer label map (B, *G); got str."),
        ({"score": "softmax"}, "score must be one of ('logit', 'prob', 'log_prob', 'sigmoid', 'log_sigmoid'); got 'softmax'."),
    ],
)  # fmt: skip
@pytest.mark.parametrize("cls", [Comprehensiveness, Sufficiency])
def test_bad_options_give_exact_messages(cls: type, opts: dict, message: str) -> None:
    with pytest.raises(InvalidParameterError) as err:
        cls(**opts)
    assert str(err.value) == message


def test_bad_regions_and_attributions_give_exact_messages() -> None:
    model, x = Additive([1.0, 2.0, 3.0]), torch.ones(2, 3, dtype=F64)
    a = torch.ones(2, 3)
    cases = [
        (
            {"regions": torch.tensor([0.0, 1.0, 2.0])},
            InvalidParameterError,
            "regions must hold integer feature ids; got dtype torch.float32.",
        ),
        (
            {"regions": torch.tensor([0, 1])},
            InvalidParameterError,
            "regions of shape (2,) do not fit inputs (2, 3); pass (B, *G) or (*G) integer feature ids with G "
            "broadcasting to one input row (e.g. (B, T, 1) word ids for text, (B, H, W) or (H, W) for images).",
        ),
        ({"regions": torch.tensor([0, -1, 1])}, InvalidParameterError, "regions must hold feature ids >= 0; got -1."),
    ]
    for opts, err_type, message in cases:
        with pytest.raises(err_type) as err:
            _eval(model, x, a, "comprehensiveness", **opts)
        assert str(err.value) == message
    with pytest.raises(InvalidInputError) as err2:
        _eval(model, x, torch.ones(2, 4), "sufficiency")
    assert str(err2.value) == (
        "attributions of shape (2, 4) do not fit inputs (2, 3); expected the input's shape or one broadcasting to "
        "it (e.g. (B, 1, H, W) or (B, H, W) for images, (B, T) or (B, T, 1) for token maps)."
    )


def test_bins_that_repeat_the_input_are_scored_again_only_for_a_model_that_draws_anew(monkeypatch) -> None:
    """ceil(k * 4) = [1, 1, 1, 1, 2]: two distinct inputs, so 2 passes; with every bin scored (a model in training
    mode, whose dropout draws anew) the same values from 5."""
    from whybox.masking import MaskingEngine

    model, x, a = Additive([4, 3, 2, 1]), torch.ones(1, 4, dtype=F64), torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    once = _eval(model, x, a, "comprehensiveness", score="logit", target=0)
    monkeypatch.setattr(MaskingEngine, "deterministic", lambda self: False)
    every = _eval(model, x, a, "comprehensiveness", score="logit", target=0)
    assert (once.meta["n_forward"], every.meta["n_forward"]) == (1 + 2, 1 + 5)
    torch.testing.assert_close(once.curves["y"], every.curves["y"], rtol=0, atol=0)
