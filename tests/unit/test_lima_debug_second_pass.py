"""LIMA and find_mistakes cases a second audit found: LIMA leaves a text's CLS, SEP and pads out of its search
(attribution exactly 0); a (B, H, W) label map is one map per image also when B equals C; a prior on the cell grid
keeps its cell order; an unbounded prior's passes count against max_evaluations; prior_options survive save/load.
find_mistakes documents which container holds class values and which indices, gives a table's column its share of the input
whatever its value, cuts a per-input fill to the mistakes, and names an empty batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import whybox
from whybox.errors import InvalidInputError, InvalidParameterError


def _cnn(channels: int = 3, side: int = 12) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * side * side, 3)
    ).eval()


def test_lima_on_text_gives_specials_and_pads_zero(make_text_classifier: Any) -> None:
    pytest.importorskip("transformers")
    clf = make_text_classifier()
    out = whybox.explain_text(clf, ["movie plot boring", "play a"], "lima", target=0)
    special = out.batch.special_mask
    a = out.explanation.attributions
    assert bool((a[special.unsqueeze(-1).expand_as(a)] == 0).all())
    assert out.explanation.meta["n_regions"] == [3, 2]  # the words only: no candidate for the specials


def test_a_b_h_w_label_map_is_one_map_per_image() -> None:
    x = torch.rand(3, 3, 12, 12, generator=torch.Generator().manual_seed(0))  # B == C
    labels = torch.stack([torch.arange(144).view(12, 12) // 18, torch.arange(144).view(12, 12) // 36,
                          torch.arange(144).view(12, 12) // 24])  # fmt: skip
    e = whybox.explain(_cnn(), x, "lima", regions=labels, search="naive")
    assert tuple(e.attributions.shape) == (3, 1, 12, 12)
    assert e.meta["n_regions"] == [8, 4, 6]


def test_a_prior_on_the_cell_grid_keeps_its_order() -> None:
    from whybox.explainers.lima.regions import prior_patches

    x = torch.rand(1, 3, 16, 16)
    prior = torch.zeros(1, 4, 4)
    prior[0, 1, 1], prior[0, 3, 3], prior[0, 1, 2] = 1.0, 0.95, 0.9
    labels = prior_patches(prior, x, grid_size=4, cells_per_region=1).labels[0, 0]
    cell = labels[::4, ::4]  # one pixel per cell
    assert int(cell[1, 1]) == 0 and int(cell[3, 3]) == 1 and int(cell[1, 2]) == 2
    rest = [int(v) for i, v in enumerate(cell.flatten()) if i not in (5, 15, 6)]
    assert rest == list(range(3, 16))  # ties in raster order


def test_an_unbounded_prior_s_passes_count_against_max_evaluations() -> None:
    model, x = _cnn(side=8), torch.rand(1, 3, 8, 8)
    opts = {"regions": "prior", "prior": "gradcam", "prior_options": {"layer": "0"}, "search": "naive"}
    e = whybox.explain(model, x, "lima", max_evaluations=None, **opts)
    n = e.meta["n_regions"][0]
    bound = 2 + n * (n + 1)  # LIMA's own bound (naive search), all of it left to LIMA
    with pytest.raises(
        InvalidParameterError, match=r"leaves the prior explainer 'gradcam' 0, fewer than the 1 \(one per row\)"
    ):
        whybox.explain(model, x, "lima", max_evaluations=bound, **opts)
    ok = whybox.explain(model, x, "lima", max_evaluations=bound + 1, **opts)  # the prior's one pass fits
    assert int(ok.meta["n_forward"]) <= bound + 1


def test_prior_options_survive_save_and_load(tmp_path: Path) -> None:
    model, x = _cnn(side=8), torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    e = whybox.explain(model, x, "lima", regions="prior", prior="rise", prior_options={"n_masks": 30}, n_regions=9)
    assert e.params["prior_options"] == {"n_masks": 30}
    e.save(tmp_path / "e.safetensors")
    loaded = whybox.Explanation.load(tmp_path / "e.safetensors")
    before = whybox.evaluate(model, x, e, "stability", n_runs=2)
    after = whybox.evaluate(model, x, loaded, "stability", n_runs=2)
    assert torch.equal(before.scores, after.scores)


def test_find_mistakes_reads_class_values_from_an_array_and_indices_from_a_tensor() -> None:
    LogisticRegression = pytest.importorskip("sklearn.linear_model").LogisticRegression
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    y = 1 + (x[:, 0] > 0).astype(int) + (x[:, 1] > 1.2).astype(int)  # classes_ [1, 2, 3]
    clf = LogisticRegression().fit(x, y)
    as_array = whybox.find_mistakes(clf, x[:40], y[:40], method="occlusion")  # class values, as y_test holds them
    indices = torch.tensor([list(clf.classes_).index(v) for v in y[:40]])  # a tensor: output indices (documented)
    as_tensor = whybox.find_mistakes(clf, x[:40], indices, method="occlusion")
    assert as_tensor.accuracy == as_array.accuracy == pytest.approx(float((clf.predict(x[:40]) == y[:40]).mean()))


def test_find_mistakes_gives_a_column_its_share_whatever_its_value() -> None:
    m = nn.Linear(4, 2).eval()
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]))
        m.bias.zero_()
    areas = []
    for last in (0.0, 1e-9):
        x = torch.tensor([[-2.0, 0.5, 0.3, last]])
        rep = whybox.find_mistakes(m, x, torch.tensor([1]), method="occlusion")
        areas.append(rep.mistakes[0].hc_area)
    assert areas[0] == areas[1]
    assert all(a in (0.0, 0.25, 0.5, 0.75, 1.0) for a in areas[0])


def test_find_mistakes_cuts_a_per_input_fill_and_names_an_empty_batch() -> None:
    model = _cnn(1, 8)
    x = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    pred = model(x).argmax(1)
    y = (pred + 1) % 3
    y[:3] = pred[:3]  # 7 mistakes of 10
    fill = torch.full_like(x, 0.25)
    per_input = whybox.find_mistakes(model, x, y, method="saliency", fill=fill)
    shared = whybox.find_mistakes(model, x, y, method="saliency", fill=0.25)
    assert per_input.n_wrong == 7
    assert [mk.hc for mk in per_input.mistakes] == [mk.hc for mk in shared.mistakes]
    with pytest.raises(InvalidInputError, match="inputs hold no rows"):
        whybox.find_mistakes(model, x[:0], y[:0], method="saliency")
