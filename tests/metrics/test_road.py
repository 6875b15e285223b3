"""ROAD: noisy linear imputation known answers and its linear system, the metric's protocol, and Quantus."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import whybox
from whybox.metrics.road import noisy_linear_imputation

from ._models import cnn1, randn


def _ramp(h: int = 9, w: int = 11, c: int = 2) -> torch.Tensor:
    i = torch.arange(h, dtype=torch.float64).view(-1, 1)
    j = torch.arange(w, dtype=torch.float64).view(1, -1)
    return torch.stack([i + 2 * j + k for k in range(c)])


def test_nli_reproduces_a_linear_ramp_in_an_interior_hole() -> None:
    img = _ramp()
    hole = torch.zeros(9, 11, dtype=torch.bool)
    hole[2:6, 3:8] = True
    hole[6, 4] = True
    out = noisy_linear_imputation(img, hole, noise=0.0)
    torch.testing.assert_close(out, img, rtol=0, atol=1e-10)


def test_nli_constant_image_stays_constant_even_at_the_border() -> None:
    img = torch.full((3, 6, 7), 2.5, dtype=torch.float64)
    hole = torch.zeros(6, 7, dtype=torch.bool)
    hole[0, :4] = True
    hole[3:, 5:] = True
    torch.testing.assert_close(noisy_linear_imputation(img, hole, noise=0.0), img, rtol=0, atol=1e-12)


def test_nli_solution_satisfies_the_weighted_mean_equations() -> None:
    """Each removed pixel equals the weighted mean of its in-image neighbours (weights 1/6 edges, 1/12 diagonals,
    renormalised at the border)."""
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 7, 8, generator=g, dtype=torch.float64)
    hole = torch.rand(7, 8, generator=g) < 0.5
    out = noisy_linear_imputation(img, hole, noise=0.0)[0]
    assert torch.equal(out[~hole], img[0][~hole])
    for r, c in hole.nonzero().tolist():
        num = den = 0.0
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                if (dr, dc) == (0, 0) or not (0 <= r + dr < 7 and 0 <= c + dc < 8):
                    continue
                wt = 1 / 6 if dr == 0 or dc == 0 else 1 / 12
                num += wt * out[r + dr, c + dc].item()
                den += wt
        assert out[r, c].item() == pytest.approx(num / den, abs=1e-10)


def test_nli_noise_has_the_requested_std_and_is_seeded() -> None:
    img = _ramp(40, 40, 1)
    hole = torch.zeros(40, 40, dtype=torch.bool)
    hole[5:35, 5:35] = True
    out = noisy_linear_imputation(img, hole, noise=0.01, generator=torch.Generator().manual_seed(1))
    resid = (out - img)[0][hole]
    assert resid.std().item() == pytest.approx(0.01, rel=0.1)
    again = noisy_linear_imputation(img, hole, noise=0.01, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again)


def test_nli_with_nothing_known_is_nan() -> None:
    out = noisy_linear_imputation(torch.ones(1, 3, 3), torch.ones(3, 3, dtype=torch.bool), noise=0.0)
    assert torch.isnan(out).all()


def test_nli_agrees_with_quantus_noisy_linear_imputation(quantus) -> None:
    from quantus.functions.perturb_func import noisy_linear_imputation as q_nli

    g = torch.Generator().manual_seed(3)
    img = torch.rand(3, 10, 12, generator=g, dtype=torch.float64)
    idx = torch.randperm(120, generator=g)[:70].sort().values
    hole = torch.zeros(120, dtype=torch.bool)
    hole[idx] = True
    q = q_nli(img.numpy(), idx.numpy(), noise=0.0)
    ours = noisy_linear_imputation(img, hole.view(10, 12), noise=0.0)
    np.testing.assert_allclose(ours.numpy(), q, rtol=1e-9, atol=1e-9)


def test_road_removes_floor_pn_pixels_and_p_one_is_nan() -> None:
    model, x = cnn1(), randn(2, 1, 8, 8, seed=1)
    a = randn(2, 1, 8, 8, seed=2)
    r = whybox.evaluate(model, x, a, "road", fractions=(0.1, 0.55, 1.0), noise=0.0)
    assert r.meta["removed_counts"] == [6, 35, 64]
    assert torch.isnan(r.curves["morf_score"][:, 2]).all() and torch.isnan(r.curves["lerf_accuracy"][:, 2]).all()
    assert torch.isfinite(r.scores).all()  # the means skip the undefined point
    expected = (r.curves["lerf_score"][:, :2].mean(1) - r.curves["morf_score"][:, :2].mean(1)) / 2
    torch.testing.assert_close(r.scores, expected)


@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_one_order_is_that_half_of_both_at_half_the_passes(noise: float) -> None:
    """orders="morf" / "lerf": the curves of that order as orders="both" computes them (same noise draws),
    the score their mean (MoRF: lower is better), half the passes."""
    model, x = cnn1(), randn(3, 1, 8, 8, seed=7)
    a = randn(3, 1, 8, 8, seed=8)
    both = whybox.evaluate(model, x, a, "road", fractions=(0.2, 0.5, 0.8), noise=noise, seed=1)
    for order, higher in (("morf", False), ("lerf", True)):
        one = whybox.evaluate(model, x, a, "road", fractions=(0.2, 0.5, 0.8), noise=noise, seed=1, orders=order)
        assert set(one.curves) == {"x", f"{order}_score", f"{order}_accuracy"}
        for key in (f"{order}_score", f"{order}_accuracy"):
            # float32 model: the batch differs (one order vs both), so oneDNN may round differently (7e-9 seen);
            # different noise draws would move these scores by orders of magnitude more
            torch.testing.assert_close(one.curves[key], both.curves[key], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(one.scores, both.curves[f"{order}_score"].mean(1))
        assert one.higher_is_better is higher and one.meta["n_forward"] - 3 == (both.meta["n_forward"] - 3) // 2
    assert both.higher_is_better is True
    with pytest.raises(whybox.InvalidParameterError, match=r"orders must be one of \('both', 'morf', 'lerf'\)"):
        whybox.evaluate(model, x, a, "road", orders="all")


def test_road_is_seeded_and_chunk_size_changes_nothing() -> None:
    model, x = cnn1(), randn(2, 1, 8, 8, seed=3)
    a = randn(2, 1, 8, 8, seed=4)
    r1 = whybox.evaluate(model, x, a, "road", fractions=(0.2, 0.6), batch_size=64, seed=2)
    r2 = whybox.evaluate(model, x, a, "road", fractions=(0.2, 0.6), batch_size=3, seed=2)
    torch.testing.assert_close(r1.curves["morf_score"], r2.curves["morf_score"], rtol=1e-5, atol=1e-7)
    r3 = whybox.evaluate(model, x, a, "road", fractions=(0.2, 0.6), seed=3)
    assert not torch.equal(r1.curves["morf_score"], r3.curves["morf_score"])


@pytest.mark.filterwarnings("ignore::UserWarning:quantus")
def test_road_morf_accuracy_agrees_with_quantus(quantus) -> None:
    """Quantus ROAD is MoRF only and returns the accuracy per percentage averaged over samples; with noise 0 both
    impute deterministically. 1-channel inputs and a map without ties (Quantus ranks elements by argsort)."""
    model, x = cnn1(seed=1), randn(6, 1, 8, 8, seed=5)
    a = randn(6, 1, 8, 8, seed=6)
    y = model(x).argmax(1)
    y[::2] = (y[::2] + 1) % 10  # some wrong labels, so accuracy is not trivially 1
    pct = [10, 30, 50, 70, 90]
    road = quantus.ROAD(
        percentages=pct, noise=0.0, abs=False, normalise=False, disable_warnings=True, display_progressbar=False
    )
    q = road(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(), device="cpu", channel_first=True)
    r = whybox.evaluate(model, x, a, "road", fractions=[p / 100 for p in pct], noise=0.0, labels=y, quantity="accuracy")
    np.testing.assert_allclose(r.curves["morf_accuracy"].mean(0).numpy(), [q[p] for p in pct], atol=1e-12)
    assert not math.isnan(r.scores.mean().item())


def test_batched_imputation_equals_one_by_one() -> None:
    from whybox.metrics.road import noisy_linear_imputation_batch

    g = torch.Generator().manual_seed(7)
    imgs = torch.rand(3, 2, 6, 7, generator=g, dtype=torch.float64)
    holes = torch.rand(3, 6, 7, generator=g) < 0.4
    holes[1] = False  # nothing to impute
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    batch = noisy_linear_imputation_batch(imgs, holes, noise=0.05, generators=gens)
    for i in range(3):
        one = noisy_linear_imputation(imgs[i], holes[i], noise=0.05, generator=torch.Generator().manual_seed(i))
        torch.testing.assert_close(batch[i], one, rtol=0, atol=1e-12)


def test_dense_block_solve_equals_the_sparse_solve(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small holes take the batched dense solve; it gives the sparse LU's imputation (images with nothing or
    everything removed included, and holes of different sizes in one batch)."""
    import whybox.metrics.road as road

    g = torch.Generator().manual_seed(3)
    imgs = torch.rand(5, 3, 7, 9, generator=g, dtype=torch.float64)
    removed = torch.rand(5, 7, 9, generator=g) < torch.tensor([0.1, 0.5, 0.9, 0.0, 1.0]).view(-1, 1, 1)
    assert int(removed[:3].flatten(1).sum(1).max()) <= road.DENSE_MAX  # the dense path is the one taken
    dense = road.noisy_linear_imputation_batch(imgs, removed, noise=0.0)
    monkeypatch.setattr(road, "DENSE_MAX", 0)
    sparse = road.noisy_linear_imputation_batch(imgs, removed, noise=0.0)
    torch.testing.assert_close(dense, sparse, rtol=1e-12, atol=1e-12, equal_nan=True)
    assert torch.isnan(dense[4]).all() and torch.equal(dense[3], imgs[3])


def test_sparse_imputation_agrees_with_quantus_on_a_large_hole(quantus) -> None:
    """Holes above DENSE_MAX take the sparse LU in nested-dissection order: same values as Quantus' solve."""
    from quantus.functions.perturb_func import noisy_linear_imputation as q_nli

    import whybox.metrics.road as road

    g = torch.Generator().manual_seed(5)
    img = torch.rand(3, 30, 37, generator=g, dtype=torch.float64)
    idx = torch.randperm(30 * 37, generator=g)[:800].sort().values
    assert idx.numel() > road.DENSE_MAX
    hole = torch.zeros(30 * 37, dtype=torch.bool)
    hole[idx] = True
    q = q_nli(img.numpy(), idx.numpy(), noise=0.0)
    ours = noisy_linear_imputation(img, hole.view(30, 37), noise=0.0)
    np.testing.assert_allclose(ours.numpy(), q, rtol=1e-9, atol=1e-9)


def test_dissection_key_puts_each_separator_after_its_halves() -> None:
    from whybox.metrics.road import _dissection_key

    h, w = 17, 12
    key = _dissection_key(h, w).reshape(h, w)
    assert key[8].min() > max(key[:8].max(), key[9:].max())  # the first split: the middle row, last
    top, bottom = key[:8], key[9:]
    assert top.max() < bottom.min()  # the first half entirely before the second
    assert key[:8, 6].min() > max(key[:8, :6].max(), key[:8, 7:].max())  # the top half's split: its middle column


def test_sparse_factors_have_no_fill_across_the_first_separator(monkeypatch: pytest.MonkeyPatch) -> None:
    """In nested-dissection order, eliminating one half never links it to the other: the L factor of a
    fully removed grid (one known column) has no entry between a pixel above the middle row and one below."""
    import scipy.sparse.linalg as sla

    import whybox.metrics.road as road

    factors = []
    real = sla.splu

    def spy(a, **kw):  # type: ignore[no-untyped-def]
        lu = real(a, **kw)
        factors.append(lu)
        return lu

    monkeypatch.setattr(sla, "splu", spy)
    h, w = 17, 12
    hole = torch.ones(h, w, dtype=torch.bool)
    hole[:, 0] = False
    img = torch.rand(1, h, w, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = noisy_linear_imputation(img, hole, noise=0.0)
    (lu,) = factors
    assert (lu.perm_r == np.arange(lu.shape[0])).all() and (lu.perm_c == np.arange(lu.shape[0])).all()
    pix = np.flatnonzero(hole.numpy().reshape(-1))
    pix = pix[np.argsort(road._dissection_key(h, w)[pix], kind="stable")]  # unknown j's pixel
    rows = pix // w
    lower = lu.L.tocoo()
    a, b = rows[lower.row], rows[lower.col]
    assert not (((a < 8) & (b > 8)) | ((a > 8) & (b < 8))).any()
    assert torch.isfinite(out).all() and torch.equal(out[0][~hole], img[0][~hole])


def test_sparse_batch_equals_one_by_one_on_non_square_images() -> None:
    """Block-diagonal nested-dissection LU of several images (holes of different sizes, one image with nothing
    removed, one with everything) gives each image its own solution and its own noise."""
    import whybox.metrics.road as road

    g = torch.Generator().manual_seed(12)
    imgs = torch.rand(5, 2, 19, 23, generator=g, dtype=torch.float64)
    share = torch.tensor([0.4, 0.0, 0.95, 1.0, 0.7]).view(-1, 1, 1)
    holes = torch.rand(5, 19, 23, generator=g) < share
    assert int(holes.flatten(1).sum(1).max()) > road.DENSE_MAX  # the sparse path is the one taken
    gens = [torch.Generator().manual_seed(i) for i in range(5)]
    batch = road.noisy_linear_imputation_batch(imgs, holes, noise=0.02, generators=gens)
    for i in range(5):
        one = noisy_linear_imputation(imgs[i], holes[i], noise=0.02, generator=torch.Generator().manual_seed(i))
        torch.testing.assert_close(batch[i], one, rtol=0, atol=1e-12, equal_nan=True)
    assert torch.isnan(batch[3]).all() and torch.equal(batch[1], imgs[1])


@pytest.mark.parametrize("cpus", [1, 4])
def test_sparse_images_factor_one_by_one_on_worker_threads(cpus: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each image of a sparse batch gets its own LU (the sizes of its own system), on worker threads when there is
    more than one CPU, and the values do not depend on which."""
    import os
    import threading

    import scipy.sparse.linalg as sla

    import whybox.metrics.road as road

    seen: list[tuple[int, str]] = []
    real = sla.splu

    def spy(a, **kw):  # type: ignore[no-untyped-def]
        seen.append((a.shape[0], threading.current_thread().name.split("_")[0]))
        return real(a, **kw)

    g = torch.Generator().manual_seed(13)
    imgs = torch.rand(3, 2, 21, 17, generator=g, dtype=torch.float64)
    holes = torch.rand(3, 21, 17, generator=g) < torch.tensor([0.5, 0.8, 0.0]).view(-1, 1, 1)
    ref = road.noisy_linear_imputation_batch(imgs, holes, noise=0.0)
    monkeypatch.setattr(sla, "splu", spy)
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    monkeypatch.setattr(road, "PARALLEL_MIN", 100)  # these systems are small
    out = road.noisy_linear_imputation_batch(imgs, holes, noise=0.0)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert sorted(n for n, _ in seen) == sorted(holes.flatten(1).sum(1)[:2].tolist())  # image 2: nothing removed
    assert {t for _, t in seen} == ({"whybox-road"} if cpus > 1 else {"MainThread"})


def test_labels_outside_the_classes_are_refused() -> None:
    """A label the model cannot predict made every accuracy point 0 without a word."""
    model, x = cnn1(), randn(2, 1, 8, 8, seed=1)
    a = randn(2, 1, 8, 8, seed=2)
    k = model(x).shape[1]
    with pytest.raises(whybox.InvalidParameterError) as err:
        whybox.evaluate(model, x, a, "road", quantity="accuracy", labels=torch.tensor([0, k]))
    assert str(err.value) == (
        f"labels={k} is out of range for a model with {k} outputs; give the true class of each row, 0..{k - 1}."
    )
    ok = whybox.evaluate(model, x, a, "road", quantity="accuracy", labels=torch.tensor([0, k - 1]))
    assert torch.isfinite(ok.scores).all()
