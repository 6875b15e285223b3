"""ROAR as a job: a label carried only by a 4 x 4 patch; the oracle map removes it (chance accuracy at t >= the
patch share) while random removal leaves the model clearly above chance at t = 10 %."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from whybox.errors import InvalidInputError, InvalidParameterError
from whybox.metrics.roar import remove_top, roar


def _patch_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = 0.5 * torch.randn(n, 1, 8, 8, generator=g)
    x[:, :, :4, :4] += (2 * y - 1).float().view(-1, 1, 1, 1) * 1.5  # the label lives only here (25 % of pixels)
    return x, y


def test_remove_top_replaces_floor_t_n_pixels_and_keep_inverts() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4)
    ranking = torch.arange(16).flip(0).view(1, 16)  # pixel 15 first
    out = remove_top(x, ranking, 0.3, torch.full((1, 1, 1, 1), -1.0))  # floor(4.8) = 4 pixels
    assert out.flatten().tolist()[-4:] == [-1.0] * 4 and bool((out.flatten()[:12] == x.flatten()[:12]).all())
    kept = remove_top(x, ranking, 0.3, torch.full((1, 1, 1, 1), -1.0), keep=True)
    assert kept.flatten().tolist()[-4:] == [12.0, 13.0, 14.0, 15.0] and int((kept == -1).sum()) == 12


def test_oracle_map_drops_to_chance_and_random_removal_does_not() -> None:
    x_tr, y_tr = _patch_data(600, 0)
    x_te, y_te = _patch_data(300, 1)
    oracle = torch.zeros(1, 1, 8, 8)
    oracle[:, :, :4, :4] = 1.0

    def linear() -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 2))

    res = roar(
        {"oracle": (oracle.expand(600, -1, -1, -1), oracle.expand(300, -1, -1, -1))},
        data=(x_tr, y_tr, x_te, y_te),
        model_fn=linear,
        fractions=(0.1, 0.3),
        n_retrain=2,
        epochs=4,
    )
    assert bool((res.base_accuracy > 0.95).all())
    oracle_acc, random_acc = res.mean("oracle"), res.mean("random")
    assert abs(oracle_acc[1].item() - 0.5) < 0.1  # t = 0.3 >= 25 %: the patch is gone, chance accuracy
    assert random_acc[0].item() > 0.85  # random removal of 10 % leaves most of the patch
    assert res.gap("oracle")[1].item() > 0.3
    assert res.accuracy["oracle"].shape == (2, 2) and "random" in res.table()
    again = roar(
        {"oracle": (oracle.expand(600, -1, -1, -1), oracle.expand(300, -1, -1, -1))},
        data=(x_tr, y_tr, x_te, y_te),
        model_fn=linear,
        fractions=(0.1, 0.3),
        n_retrain=2,
        epochs=4,
    )
    torch.testing.assert_close(again.accuracy["oracle"], res.accuracy["oracle"])  # seeded end to end


def test_precomputed_maps_of_other_rows_are_refused_by_name() -> None:
    x_tr, y_tr = _patch_data(30, 0)
    x_te, y_te = _patch_data(20, 1)
    with pytest.raises(InvalidInputError) as err:
        roar(
            {"mine": (torch.rand(10, 1, 8, 8), torch.rand(20, 1, 8, 8))},
            data=(x_tr, y_tr, x_te, y_te),
            model_fn=lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 2)),
            fractions=(0.1,),
            n_retrain=1,
            epochs=1,
        )
    assert str(err.value) == (
        "methods['mine']'s train attributions: attributions of shape (10, 1, 8, 8) do not match images "
        "(30, 1, 8, 8); expected (30, 1, 8, 8) or (30, 8, 8)."
    )


def _linear() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 2))


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        # 10 labels for 30 images trained on the first 10 without a word
        (
            {"y_train": slice(0, 10)},
            InvalidInputError,
            r"y_train must hold one label per image of x_train \(30\); got 10",
        ),
        ({"x_test": (20, 1, 6, 6)}, InvalidInputError, r"x_test must hold images like x_train's, \(1, 8, 8\); got"),
        ({"y_test": "float"}, InvalidInputError, r"y_test must be integer class indices \(N,\); got torch.float32"),
        ({"data": 3}, InvalidParameterError, r"data must be \(x_train, y_train, x_test, y_test\); got 3 items"),
        ({"fractions": "0.5"}, InvalidParameterError, r"fractions must be shares in \[0, 1\]"),
    ],
)
def test_bad_data_is_named(change: dict[str, object], error: type, match: str) -> None:
    """Labels of another length, test images of another size, float labels, a short data tuple: raw torch or
    Python errors before (or, for short labels, a run on part of the data)."""
    x_tr, y_tr = _patch_data(30, 0)
    x_te, y_te = _patch_data(20, 1)
    data: list[object] = [x_tr, y_tr, x_te, y_te]
    kwargs: dict[str, object] = {"fractions": (0.5,)}
    if "y_train" in change:
        data[1] = y_tr[change["y_train"]]  # type: ignore[index]
    if "x_test" in change:
        data[2] = torch.rand(*change["x_test"])  # type: ignore[misc]
    if "y_test" in change:
        data[3] = y_te.float()
    if "data" in change:
        data = data[:3]
    if "fractions" in change:
        kwargs["fractions"] = change["fractions"]
    maps = (torch.rand(30, 1, 8, 8), torch.rand(20, 1, 8, 8))
    with pytest.raises(error, match=match):
        roar({"m": maps}, data=tuple(data), model_fn=_linear, n_retrain=1, epochs=1, **kwargs)  # type: ignore[arg-type]


def test_one_method_name_one_fraction_and_numpy_labels_are_taken() -> None:
    """roar("saliency") split the name into one-letter methods; fractions=0.5 and NumPy labels raised TypeError."""
    x_tr, y_tr = _patch_data(30, 0)
    x_te, y_te = _patch_data(20, 1)
    model = _linear()
    r = roar("saliency", data=(x_tr, y_tr.numpy(), x_te, y_te.numpy()), model_fn=_linear, explain_model=model,
             fractions=0.5, n_retrain=1, epochs=1)  # fmt: skip
    assert r.fractions == [0.5] and sorted(r.accuracy) == ["random", "saliency"]
