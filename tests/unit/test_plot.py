"""``Explanation.plot``: the figure shows exactly what the report draws (the same overlay and colouring) for image
maps, the top features by magnitude for tabular rows, and refuses what it cannot show with the fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import whybox
from whybox.errors import InvalidInputError, InvalidParameterError
from whybox.report.overlay import overlay, to_heatmap


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )


def test_image_panels_are_the_report_s_overlays_of_the_chosen_rows() -> None:
    x = (
        torch.rand(5, 3, 12, 12, generator=torch.Generator().manual_seed(0)) * 4 - 2
    )  # not in [0, 1]: scaled for display
    e = whybox.explain(_cnn(), x, "gradcam")
    fig = e.plot(x, rows=[3, 1], columns=4, labels=["cat", "dog", "fox"])
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 2 and [ax.get_title() for ax in shown] == [
        f"row 3: {['cat', 'dog', 'fox'][int(e.target[3])]}",
        f"row 1: {['cat', 'dog', 'fox'][int(e.target[1])]}",
    ]
    for ax, r in zip(shown, [3, 1], strict=True):
        img = x[r].double()
        want = overlay((img - img.min()) / (img.max() - img.min()), e.to_map()[r], reading="relative")  # a CAM
        np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), want)
    sal = whybox.explain(_cnn(), x[:2], "saliency", abs=False)
    for ax, r in zip([a for a in sal.plot().axes if a.images], range(2), strict=True):  # no inputs: the map alone
        want = to_heatmap(sal.to_map()[r], reading="signed")  # signed saliency: centred on zero
        np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), want)


def test_tabular_panels_list_the_top_features_by_magnitude_with_their_names() -> None:
    pd = pytest.importorskip("pandas")
    torch.manual_seed(0)
    net = nn.Linear(6, 2).double()
    cols = ["a", "b", "c", "d", "e", "f"]
    frame = pd.DataFrame(np.random.default_rng(0).normal(size=(3, 6)), columns=cols)
    e = whybox.explain(net, frame, "input_x_gradient")
    fig = e.plot(top=4)
    assert len([ax for ax in fig.axes if ax.patches]) == 3
    for ax, r in zip([ax for ax in fig.axes if ax.patches], range(3), strict=True):
        v = e.attributions[r]
        order = torch.argsort(v.abs(), descending=True)[:4].tolist()
        assert [t.get_text() for t in ax.get_yticklabels()] == [cols[j] for j in order]
        np.testing.assert_allclose([p.get_width() for p in ax.patches], [float(v[j]) for j in order], rtol=0, atol=0)


def test_tabular_bars_are_labelled_name_equals_value_from_the_inputs() -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"age": [31.0, 62.5], "income": [50.25, 12.0], "score": [0.5, -1.0]})
    net = nn.Sequential(nn.Linear(3, 2)).double()
    e = whybox.explain(net, frame, "input_x_gradient")
    for given in (frame, frame.to_numpy(), torch.tensor(frame.to_numpy())):
        fig = e.plot(given, top=2)
        for ax, r in zip([ax for ax in fig.axes if ax.patches], range(2), strict=True):
            order = torch.argsort(e.attributions[r].abs(), descending=True)[:2].tolist()
            want = [f"{frame.columns[j]} = {frame.iloc[r, j]:.4g}" for j in order]
            assert [t.get_text() for t in ax.get_yticklabels()] == want


def test_what_cannot_be_plotted_is_refused_with_the_fix() -> None:
    x = torch.rand(2, 3, 8, 8)
    e = whybox.explain(_cnn(), x, "gradcam")
    with pytest.raises(
        InvalidParameterError, match=r"rows must be row indices in \[0, 2\) \(an int or a list\); got 5"
    ):
        e.plot(rows=5)
    with pytest.raises(InvalidInputError, match=r"inputs must be the explained images \(B, 1 or 3, H, W\) with B = 2"):
        e.plot(x[:1])
    text = whybox.Explanation(
        torch.zeros(2, 5, 1), torch.zeros(2, dtype=torch.long), "occlusion", meta={"tokens": True}
    )
    with pytest.raises(InvalidInputError, match=r"For text, explain_text\(...\).words holds \(word, value\) pairs"):
        text.plot()
    rows = whybox.explain(nn.Linear(4, 2), torch.rand(2, 4), "saliency")
    with pytest.raises(
        InvalidInputError,
        match=r"inputs must be the explained rows \(B, F\) = \(2, 4\) \(a tensor, an array or a DataFrame\); got "
        r"\(2, 5\)\.",
    ):
        rows.plot(torch.rand(2, 5))
