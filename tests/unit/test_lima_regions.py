"""LIMA region builders: every builder yields a partition (disjoint, covering, no empty region), and the
checks refuse anything else with an error naming the problem."""

from __future__ import annotations

import math

import pytest
import torch

from whybox.errors import InvalidInputError, InvalidParameterError
from whybox.explainers.lima import regions as R


def smooth_images(b: int = 2, h: int = 40, w: int = 48, seed: int = 0) -> torch.Tensor:
    """Piecewise-smooth colour images (upsampled coarse noise), so segmentations have structure to find."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(b, 3, 5, 6, generator=g, dtype=torch.float64)
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False).float()


def assert_partition(rm: R.RegionMap, x: torch.Tensor) -> None:
    """One-hot region masks sum to exactly 1 at every element (disjoint + covering) and none is empty."""
    lab = rm.labels
    assert lab.dtype == torch.int64 and lab.shape[0] == x.shape[0]
    assert torch.broadcast_shapes(tuple(lab.shape[1:]), tuple(x.shape[1:])) == tuple(x.shape[1:])
    for r in range(x.shape[0]):
        n = rm.n_regions[r]
        onehot = torch.nn.functional.one_hot(lab[r].reshape(-1), num_classes=max(n, int(lab[r].max()) + 1))
        assert onehot.shape[1] == n, "labels outside 0..N-1"
        assert torch.equal(onehot.sum(1), torch.ones(onehot.shape[0], dtype=torch.int64))
        assert bool((onehot.sum(0) > 0).all()), "an empty region"


@pytest.mark.parametrize("builder", ["superpixels", "seeds", "grid"])
@pytest.mark.parametrize("n", [25, 49, 100])
def test_image_builders_partition_with_about_n_regions(builder: str, n: int) -> None:
    x = smooth_images(h=64, w=64)
    rm = getattr(R, builder)(x, n_regions=n)
    assert_partition(rm, x)
    assert rm.labels.shape == (2, 1, 64, 64)
    for count in rm.n_regions:
        assert n / 2 <= count <= 1.5 * n, (builder, n, rm.n_regions)
    if builder == "grid":
        assert rm.n_regions == [round(math.sqrt(n)) ** 2] * 2


def test_builders_are_deterministic_and_rows_independent() -> None:
    x = smooth_images(b=3)
    for build in (R.superpixels, R.seeds):
        a, b = build(x), build(x)
        assert torch.equal(a.labels, b.labels)
        one = build(x[1:2])
        assert torch.equal(one.labels[0], a.labels[1]) and one.n_regions[0] == a.n_regions[1]


def _within_variance(img: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean squared distance of every pixel's colour to its region's mean colour."""
    flat = labels.reshape(-1)
    n = int(flat.max()) + 1
    col = img.reshape(img.shape[0], -1).T.double()
    cnt = torch.zeros(n, dtype=torch.float64).index_add_(0, flat, torch.ones(flat.shape[0], dtype=torch.float64))
    mean = torch.zeros(n, col.shape[1], dtype=torch.float64).index_add_(0, flat, col) / cnt.clamp_min(1)[:, None]
    return float((col - mean[flat]).pow(2).sum(1).mean())


def test_seeds_refines_the_grid_towards_colour_edges() -> None:
    # two flat colours split by a diagonal edge that no grid line follows
    h = w = 42
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    img = torch.where((xx + 0.6 * yy < 30).view(1, 1, h, w), torch.tensor([0.9, 0.2, 0.1]).view(1, 3, 1, 1), 0.1)
    img = img.expand(1, 3, h, w).contiguous()
    grid = R.grid(img, n_regions=49)
    refined = R.seeds(img, n_regions=49)
    assert_partition(refined, img)
    assert _within_variance(img[0], refined.labels[0, 0]) < 0.5 * _within_variance(img[0], grid.labels[0, 0])
    assert R.seeds(img, n_regions=49, n_iter=0).n_regions == grid.n_regions  # no sweep: the grid itself


def test_prior_patches_follow_the_prior() -> None:
    x = smooth_images(b=2, h=56, w=56)
    g = torch.Generator().manual_seed(3)
    prior = torch.rand(2, 56, 56, generator=g)
    for grid_size, d in [(14, 4), (10, 4), (7, 3)]:
        rm = R.prior_patches(prior, x, grid_size=grid_size, cells_per_region=d)
        assert_partition(rm, x)
        assert rm.n_regions == [math.ceil(grid_size * grid_size / d)] * 2
        cells = R.grid(x, n_regions=grid_size * grid_size).labels  # the same G x G cells
        for r in range(2):
            cid = cells[r].flatten()  # the prior is image-sized: a cell's prior is the mean over its pixels
            cell_prior = (
                torch.zeros(grid_size * grid_size, dtype=torch.float64).index_add_(0, cid, prior[r].flatten().double())
                / torch.bincount(cid).double()
            )
            cell_region = torch.zeros(grid_size * grid_size, dtype=torch.int64)
            cell_region[cells[r].flatten()] = rm.labels[r].flatten()
            sizes = torch.bincount(cell_region, minlength=rm.n_regions[r])
            assert bool((sizes[:-1] == d).all()) and 1 <= int(sizes[-1]) <= d  # d cells each, the rest last
            # every cell of region k has a prior at least as high as every cell of region k + 1
            lo = torch.full((rm.n_regions[r],), math.inf, dtype=torch.float64).scatter_reduce(
                0, cell_region, cell_prior, "amin"
            )
            hi = torch.full((rm.n_regions[r],), -math.inf, dtype=torch.float64).scatter_reduce(
                0, cell_region, cell_prior, "amax"
            )
            assert bool((lo[:-1] >= hi[1:] - 1e-12).all())


def test_prior_ties_keep_raster_order() -> None:
    x = smooth_images(b=1, h=28, w=28)
    rm = R.prior_patches(torch.ones(1, 28, 28), x, grid_size=14, cells_per_region=4)
    cells = R.grid(x, n_regions=196).labels[0, 0]
    assert torch.equal(rm.labels[0, 0], cells // 4)


def test_columns_and_spans() -> None:
    x = torch.rand(3, 7)
    assert_partition(R.columns(x), x)
    assert R.columns(x).n_regions == [7] * 3
    rm = R.columns(x, groups=[0, 0, 5, 5, 2, 9, 2])
    assert_partition(rm, x)
    assert rm.n_regions == [4] * 3
    assert torch.equal(rm.labels[0], torch.tensor([0, 0, 2, 2, 1, 3, 1]))  # compacted, order kept
    sp = R.spans(x, groups=[(0, 2), (2, 3), (3, 7)])
    assert_partition(sp, x)
    assert torch.equal(sp.labels[1], torch.tensor([0, 0, 1, 2, 2, 2, 2]))


@pytest.mark.parametrize(
    ("spans", "match"),
    [
        ([(0, 3), (2, 7)], "overlaps an earlier span"),
        ([(0, 3), (4, 7)], r"leave tokens \[3\] uncovered"),
        ([(0, 3), (3, 9)], r"0 <= start < stop <= 7"),
        ([(0, 3.5), (3, 7)], "pair of ints"),
    ],
)
def test_bad_spans_are_refused(spans: list[tuple[float, float]], match: str) -> None:
    with pytest.raises(InvalidParameterError, match=match):
        R.spans(torch.rand(2, 7), groups=spans)


def test_user_label_map_is_compacted_and_checked() -> None:
    x = smooth_images(b=2, h=6, w=6)
    lab = torch.tensor([[3, 3, 3, 9, 9, 9]] * 3 + [[40, 40, 3, 3, 9, 9]] * 3)
    rm = R.from_label_map(lab, x)
    assert_partition(rm, x)
    assert rm.n_regions == [3, 3]
    same = lab.view(1, -1) == lab.view(-1, 1)  # the partition itself is unchanged by compaction
    assert torch.equal(rm.labels[0, 0].view(1, -1) == rm.labels[0, 0].view(-1, 1), same)
    with pytest.raises(InvalidParameterError, match="negative ids"):
        R.from_label_map(lab - 4, x)
    with pytest.raises(InvalidParameterError, match="does not fit inputs"):
        R.from_label_map(torch.zeros(5, 6, dtype=torch.int64), x)
    with pytest.raises(InvalidParameterError, match="integer region ids"):
        R.from_label_map(lab.float(), x)


def test_mask_stacks_must_be_disjoint_and_covering() -> None:
    x = smooth_images(b=2, h=4, w=4)
    left = torch.zeros(4, 4, dtype=torch.bool)
    left[:, :2] = True
    rm = R.from_masks(torch.stack([left, ~left]), x)
    assert_partition(rm, x)
    assert torch.equal(rm.labels[1, 0], (~left).long())
    wide = left.clone()
    wide[:, 2] = True  # column 2 in both masks (SAM-style overlap)
    with pytest.raises(InvalidParameterError, match="4 elements are in several masks and 0 in none"):
        R.from_masks(torch.stack([wide, ~left]), x)
    with pytest.raises(InvalidParameterError, match="0 elements are in several masks and 8 in none"):
        R.from_masks(left.unsqueeze(0), x)
    assert torch.equal(R.from_label_map(torch.stack([left, ~left]), x).labels, rm.labels)  # bool = a mask stack


def test_check_partition_refuses_gaps_and_out_of_range() -> None:
    x = torch.rand(1, 4)
    with pytest.raises(InvalidParameterError, match="empty regions"):
        R.check_partition(torch.tensor([[0, 0, 2, 2]]), [3], x)
    with pytest.raises(InvalidParameterError, match="cover the input"):
        R.check_partition(torch.tensor([[0, 1, 2, 3]]), [3], x)


def test_builders_refuse_the_wrong_inputs() -> None:
    with pytest.raises(InvalidInputError, match=r"regions='superpixels' needs images.*'columns' or 'spans'"):
        R.superpixels(torch.rand(2, 5))
    with pytest.raises(InvalidInputError, match="regions='columns' needs tabular rows"):
        R.columns(torch.rand(1, 3, 8, 8))
    with pytest.raises(InvalidParameterError, match="n_regions must be an int >= 1; got 0"):
        R.grid(torch.rand(1, 3, 8, 8), n_regions=0)
    with pytest.raises(InvalidParameterError, match="prior_cells must be an int >= 1; got 0"):
        R.prior_patches(torch.rand(1, 8, 8), torch.rand(1, 3, 8, 8), cells_per_region=0)
