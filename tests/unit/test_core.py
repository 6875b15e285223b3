"""Core pieces: registry, public surface, masking engine (masks, groups, fills), targets, adapters, guard."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import whybox
from whybox.errors import (
    DataFormatError,
    InvalidInputError,
    InvalidParameterError,
    InvalidTargetError,
    ModelOutputError,
    UnknownNameError,
)
from whybox.explanation import Explanation
from whybox.masking import (
    FILLS,
    FeatureGroups,
    MaskingEngine,
    columns,
    gaussian_blur,
    grid,
    make_fill,
    pixels,
    superpixels,
)
from whybox.masking.engine import padded_rows
from whybox.models import EmbeddingAdapter, ModelAdapter, SklearnAdapter, Target, TorchAdapter, resolve_target
from whybox.models._guard import preserved
from whybox.registry import EXPLAINERS, Registry

F64 = torch.float64


def rand(*shape: int, seed: int = 0, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ------------------------------------------------------------------------------------------ registry, surface
def test_registry_lists_names_and_suggests_close_ones() -> None:
    reg: Registry[type] = Registry("metric")

    @reg.register("deletion")
    class Deletion: ...

    @reg.register("insertion")
    class Insertion: ...

    assert reg.get("deletion") is Deletion and Deletion.name == "deletion"  # type: ignore[attr-defined]
    assert reg.names() == ["deletion", "insertion"] and list(reg) == reg.names() and len(reg) == 2
    assert "insertion" in reg and "road" not in reg
    with pytest.raises(
        UnknownNameError,
        match=r"'insertoin' is not a known metric\. Did you mean 'insertion'\? Known metrics: deletion, insertion\.",
    ) as info:
        reg.get("insertoin")
    assert isinstance(info.value, KeyError)
    with pytest.raises(UnknownNameError, match=r"'road' is not a known metric\. Known metrics: deletion, insertion\.$"):
        reg.get("road")
    with pytest.raises(UnknownNameError, match=r"Known metrics: deletion, insertion"):
        reg.get(3)  # type: ignore[arg-type]
    with pytest.raises(
        UnknownNameError,
        match=r"metric= takes one metric name, not a list; got \['deletion', 'insertion'\]\. Make one call per name",
    ):
        reg.get(["deletion", "insertion"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"metric 'deletion' is registered twice"):
        reg.register("deletion")(type("Other", (), {}))


def test_explainer_registry_is_the_facade_list() -> None:
    assert whybox.methods() == sorted(EXPLAINERS.names())
    assert {"saliency", "input_x_gradient", "integrated_gradients", "smoothgrad", "gradcam", "scorecam"} <= set(
        whybox.methods()
    )
    for name in whybox.methods():
        cls = whybox.get_explainer(name)
        assert issubclass(cls, whybox.Explainer) and cls.name == name


def test_public_surface_is_pinned() -> None:
    assert whybox.__all__ == [
        "Explainer",
        "Explanation",
        "InvalidInputError",
        "InvalidParameterError",
        "InvalidTargetError",
        "LayerError",
        "MaskingEngine",
        "ModelAdapter",
        "ModelOutputError",
        "NotDifferentiableError",
        "UnknownNameError",
        "WhyboxError",
        "__version__",
        "adapt",
        "adapt_text",
        "evaluate",
        "explain",
        "explain_text",
        "find_mistakes",
        "get_explainer",
        "methods",
        "metrics",
    ]
    for name in whybox.__all__:
        assert hasattr(whybox, name), name


# ------------------------------------------------------------------------------------------ masking engine
class Recorder(ModelAdapter):
    """Scores = per-row sums of what it is fed (K = 2: sum and minus sum); keeps every rendered input."""

    def __init__(self) -> None:
        self.model = "recorder"
        self.seen: list[torch.Tensor] = []

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        s = x.flatten(1).sum(1, keepdim=True)
        return torch.cat([s, -s], 1)


def _engine_case(
    make_cnn: Callable[..., nn.Module],
) -> tuple[TorchAdapter, torch.Tensor, FeatureGroups, torch.Tensor, Target]:
    adapter = TorchAdapter(make_cnn(dtype=F64))
    x = rand(2, 3, 12, 12, seed=1)
    groups = grid(x, patch=4)
    masks = rand(2, 5, groups.n_groups, seed=2) > 0.5
    return adapter, x, groups, masks, Target(torch.tensor([1, 3]))


def test_engine_chunk_size_changes_no_score_and_counts_rows(make_cnn: Callable[..., nn.Module]) -> None:
    adapter, x, groups, masks, tgt = _engine_case(make_cnn)
    fill = torch.zeros_like(x)
    ref = None
    for bs in (1, 3, 4, 64):
        eng = MaskingEngine(adapter, batch_size=bs)
        s = eng.scores(x, masks, fill=fill, target=tgt, groups=groups)
        assert s.shape == (2, 5) and s.dtype == F64
        assert eng.n_forward == 2 * 5  # one row per (input row, mask)
        assert eng.n_batches == math.ceil(10 / bs)
        if ref is None:
            ref = s
        torch.testing.assert_close(s, ref, rtol=1e-12, atol=1e-12)
    # and the scores are the model's own, row i scored on its own target
    with torch.no_grad():
        for i in range(2):
            for k in range(5):
                m = groups.expand(masks[i, k : k + 1], torch.tensor([i]))
                inp = torch.where(m, x[i : i + 1], fill[i : i + 1])
                assert float(ref[i, k]) == pytest.approx(float(adapter.scores(inp)[0, tgt.index[i]]), rel=1e-12)


def test_engine_scores_only_the_live_pairs_and_returns_nan_for_the_rest(make_cnn: Callable[..., nn.Module]) -> None:
    adapter, x, groups, masks, tgt = _engine_case(make_cnn)
    fill = make_fill("mean", x)
    ref = MaskingEngine(adapter, batch_size=3).scores(x, masks, fill=fill, target=tgt, groups=groups)
    live = torch.tensor([[True, False, True, True, False], [False, False, False, True, True]])
    seen: list[tuple[int, int]] = []

    def hook(raw: torch.Tensor, r: torch.Tensor, k: torch.Tensor) -> None:
        seen.extend(zip(r.tolist(), k.tolist(), strict=True))

    eng = MaskingEngine(adapter, batch_size=3)
    s = eng.scores(x, masks, fill=fill, target=tgt, groups=groups, live=live, on_scores=hook)
    assert (eng.n_forward, eng.n_batches) == (5, 2)
    assert seen == [(0, 0), (0, 2), (0, 3), (1, 3), (1, 4)]  # the pairs' own mask indices, row by row
    torch.testing.assert_close(s[live], ref[live], rtol=0, atol=1e-12)
    assert torch.isnan(s[~live]).all()
    every = MaskingEngine(adapter, batch_size=3)
    torch.testing.assert_close(
        every.scores(x, masks, fill=fill, target=tgt, groups=groups, live=torch.ones(2, 5, dtype=torch.bool)), ref
    )
    with pytest.raises(InvalidParameterError, match=r"live must be \(2, 5\) bool \(rows x masks\); got \(2, 4\)"):
        eng.scores(x, masks, fill=fill, target=tgt, groups=groups, live=live[:, :4])
    with pytest.raises(InvalidParameterError, match="live and per-row n_masks cannot be combined"):
        eng.scores(x, lambda r, k: masks[r, k], n_masks=torch.tensor([5, 5]), fill=fill, target=tgt, live=live)


def test_engine_prefetch_renders_the_chunks_in_order_with_the_same_scores(make_cnn: Callable[..., nn.Module]) -> None:
    """prefetch=True renders chunk j + 1 in a worker thread while the model scores chunk j: same scores, same
    passes, the render and fill callables called on the same chunks in the same order, never with grad enabled."""
    adapter, x, groups, masks, tgt = _engine_case(make_cnn)
    elements = groups.expand(masks.reshape(10, -1), torch.arange(2).repeat_interleave(5)).view(2, 5, 1, 12, 12)
    fills = rand(2, 5, 1, 12, 12, seed=4)  # a fill per (row, mask), as ROAD's imputation

    def one(prefetch: bool) -> tuple[torch.Tensor, list, list, list]:
        calls: list[tuple[list[int], list[int]]] = []
        grad: list[bool] = []
        seen: list[tuple[list[int], list[int]]] = []
        threads: set[str] = set()

        def render(r: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
            calls.append((r.tolist(), k.tolist()))
            grad.append(torch.is_grad_enabled())
            threads.add(threading.current_thread().name.split("_")[0])
            return elements[r, k]

        def fill(r: torch.Tensor, k: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            grad.append(torch.is_grad_enabled())
            return fills[r, k].expand(-1, 3, -1, -1)

        eng = MaskingEngine(adapter, batch_size=3)
        s = eng.scores(
            x,
            render,
            n_masks=5,
            fill=fill,
            target=tgt,
            prefetch=prefetch,
            on_scores=lambda raw, r, k: seen.append((r.tolist(), k.tolist())),
        )
        assert (eng.n_forward, eng.n_batches) == (10, 4)
        assert threads == ({"whybox-render"} if prefetch else {"MainThread"})
        return s, calls, grad, seen

    runs = {p: one(p) for p in (False, True)}
    torch.testing.assert_close(runs[True][0], runs[False][0], rtol=0, atol=0)
    assert runs[True][1] == runs[False][1] and runs[True][3] == runs[False][3] == runs[False][1]
    assert not any(runs[True][2]) and not any(runs[False][2])


def test_engine_prefetch_raises_the_workers_error_and_stops(make_cnn: Callable[..., nn.Module]) -> None:
    adapter, x, groups, masks, tgt = _engine_case(make_cnn)
    done: list[int] = []

    def fill(r: torch.Tensor, k: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        if len(done) == 2:
            raise RuntimeError("fill failed on the third chunk")
        done.append(1)
        return torch.zeros(r.shape[0], *x.shape[1:])

    eng = MaskingEngine(adapter, batch_size=3)
    with pytest.raises(RuntimeError, match="fill failed on the third chunk"):
        eng.scores(x, masks, groups=groups, fill=fill, target=tgt, prefetch=True)
    assert eng.n_batches == 2  # the chunks rendered before the error were scored; nothing after it


def test_engine_forward_counts_rows(make_cnn: Callable[..., nn.Module]) -> None:
    adapter, x, *_ = _engine_case(make_cnn)
    eng = MaskingEngine(adapter, batch_size=1)
    out = eng.forward(x)
    assert (eng.n_forward, eng.n_batches) == (2, 2)
    with torch.no_grad():
        torch.testing.assert_close(out, adapter.scores(x))


def test_engine_group_element_and_callable_masks_agree(make_cnn: Callable[..., nn.Module]) -> None:
    adapter, x, groups, masks, tgt = _engine_case(make_cnn)
    fill = make_fill("mean", x)
    eng = MaskingEngine(adapter, batch_size=4)
    by_group = eng.scores(x, masks, fill=fill, target=tgt, groups=groups)
    rows = torch.arange(2).repeat_interleave(5)
    elements = groups.expand(masks.reshape(10, -1), rows).view(2, 5, 1, 12, 12)
    by_element = eng.scores(x, elements, fill=fill, target=tgt)
    by_callable = eng.scores(x, lambda r, k: elements[r, k], n_masks=5, fill=fill, target=tgt)
    torch.testing.assert_close(by_element, by_group, rtol=0, atol=0)
    torch.testing.assert_close(by_callable, by_group, rtol=0, atol=0)
    with pytest.raises(InvalidParameterError, match="n_masks is required when masks is a callable"):
        eng.scores(x, lambda r, k: elements[r, k], fill=fill, target=tgt)


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_engine_element_masks_without_a_channel_axis_broadcast_over_the_channels(batch_size: int) -> None:
    """Masks (B, N, H, W) for rows (C, H, W): G = (H, W) broadcasts to S from the right, as documented. They
    worked at batch_size=1 only: a chunk of n masks (n, H, W) met the rows (1, C, H, W) with n on the channel axis
    (wrong scores or a RuntimeError). Now they score as (B, N, 1, H, W) masks and as a loop over the masks."""
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 7 * 5, 4)).double()
    x = torch.rand(2, 3, 7, 5, generator=g, dtype=torch.float64)
    masks = torch.rand(2, 10, 7, 5, generator=g) > 0.5
    tgt = resolve_target(1, None, batch=2)
    got = MaskingEngine(whybox.adapt(net), batch_size=batch_size).scores(x, masks, fill=torch.zeros_like(x), target=tgt)
    with torch.no_grad():
        want = torch.stack([net(torch.where(masks[r].unsqueeze(1), x[r], 0.0))[:, 1] for r in range(2)])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_engine_renders_bool_and_float_masks_as_documented(kind: str) -> None:
    x = rand(3, 2, 4, 4, seed=3)
    fill = rand(3, 2, 4, 4, seed=4) - 2
    m = rand(3, 4, 1, 4, 4, seed=5)
    masks = m > 0.5 if kind == "bool" else m
    rec = Recorder()
    eng = MaskingEngine(rec, batch_size=5)
    s = eng.scores(x, masks, fill=fill, target=Target(torch.tensor([0, 1, 0])))
    seen = torch.cat(rec.seen).view(3, 4, 2, 4, 4)  # row-major: (row, mask)
    xs, fs = x[:, None], fill[:, None]
    expected = torch.where(masks, xs, fs) if kind == "bool" else fs + masks * (xs - fs)
    torch.testing.assert_close(seen, expected, rtol=0, atol=1e-15)
    sums = expected.flatten(2).sum(2)
    torch.testing.assert_close(s, sums * torch.tensor([1.0, -1.0, 1.0], dtype=F64)[:, None], rtol=1e-12, atol=1e-12)


class _Layouts(ModelAdapter):
    """Records whether each chunk came channels-last; ``view=True`` flattens with ``x.view`` (which a channels-last
    tensor refuses), ``check=True`` raises a ValueError on a tensor that is not contiguous (a model's own check),
    ``broken=True`` always raises."""

    def __init__(self, *, view: bool = False, check: bool = False, broken: bool = False) -> None:
        self.model = "layouts"
        self.view, self.check, self.broken = view, check, broken
        self.calls: list[bool] = []

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        if self.broken:
            raise RuntimeError("the model is broken")
        if self.check and not x.is_contiguous():
            raise ValueError("expects a contiguous NCHW tensor")
        flat = x.view(x.shape[0], -1) if self.view else x.flatten(1)
        w = torch.arange(flat.shape[1], dtype=x.dtype)
        s = flat @ w
        return torch.stack([s, -s], 1)


def test_engine_feeds_cpu_image_chunks_channels_last_with_unchanged_scores() -> None:
    x, fill = rand(2, 3, 6, 6, seed=1), rand(2, 3, 6, 6, seed=2)
    masks = rand(2, 4, 1, 6, 6, seed=3) > 0.5
    tgt = Target(torch.tensor([0, 1]))
    expected = torch.where(masks, x[:, None], fill[:, None]).flatten(2) @ torch.arange(108, dtype=F64)
    expected = expected * torch.tensor([1.0, -1.0], dtype=F64)[:, None]
    rec = _Layouts()
    s = MaskingEngine(rec, batch_size=3).scores(x, masks, fill=fill, target=tgt)
    assert rec.calls == [True, True, True]  # every chunk in channels-last layout
    torch.testing.assert_close(s, expected, rtol=1e-12, atol=1e-9)


def test_engine_falls_back_to_the_default_layout_for_a_model_that_needs_it() -> None:
    x, fill = rand(2, 3, 6, 6, seed=1), rand(2, 3, 6, 6, seed=2)
    masks = rand(2, 4, 1, 6, 6, seed=3) > 0.5
    tgt = Target(torch.tensor([0, 1]))
    eng = MaskingEngine(_Layouts(), batch_size=3)
    ref = eng.scores(x, masks, fill=fill, target=tgt)
    # x.view fails on a channels-last tensor (a RuntimeError); a model's own check may raise anything
    for viewer in (_Layouts(view=True), _Layouts(check=True)):
        fallback = MaskingEngine(viewer, batch_size=3)
        torch.testing.assert_close(fallback.scores(x, masks, fill=fill, target=tgt), ref, rtol=1e-12, atol=1e-9)
        fallback.scores(x, masks, fill=fill, target=tgt)
        # one refused channels-last try on the first chunk, then the default layout only (no retry per chunk)
        assert viewer.calls == [True] + [False] * 6
        assert fallback.n_forward == 16  # the refused try is not a pass: 2 calls x 8 rows
    broken = _Layouts(broken=True)  # an error in the default layout too reaches the caller as the model raised it
    with pytest.raises(RuntimeError, match="the model is broken"):
        MaskingEngine(broken).scores(x, masks, fill=fill, target=tgt)
    assert broken.calls == [True, False]


def test_padded_rows_is_a_short_series_that_adds_under_half() -> None:
    sizes = [padded_rows(n, 1024) for n in range(1, 1025)]
    assert all(n <= s <= 1024 for n, s in enumerate(sizes, 1))
    assert sizes == sorted(sizes)  # monotone: a larger chunk never gets a smaller shape
    assert all(s < 1.5 * n for n, s in enumerate(sizes, 1) if n > 16)  # 16, 24, 32, 48, ...: worst just above 2^k
    assert sorted(set(sizes[:256])) == [16, 24, 32, 48, 64, 96, 128, 192, 256]
    assert sizes[256:] == list(range(257, 1025))  # larger chunks keep their size
    assert [padded_rows(n, 40) for n in (7, 33, 40)] == [16, 40, 40]  # never above batch_size


class _RowsSeen(nn.Module):
    """A float64 conv net (BatchNorm included) that records the batch size of every call."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                                 nn.Linear(4 * 36, 3)).double()  # fmt: skip
        self.rows: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows.append(x.shape[0])
        return self.net(x)


def test_padded_chunks_change_no_score_and_no_pass_count_and_skip_training_mode() -> None:
    x, fill = rand(2, 3, 6, 6, seed=1), rand(2, 3, 6, 6, seed=2)
    masks = rand(2, 25, 1, 6, 6, seed=3) > 0.5  # 50 rows: chunks of 32 and 18 at batch_size 32
    tgt = Target(torch.tensor([0, 2]))
    model = _RowsSeen().eval()
    plain = MaskingEngine(TorchAdapter(model), batch_size=32, pad=False)
    ref, ref_fwd = plain.scores(x, masks, fill=fill, target=tgt), plain.forward(x[:1].expand(5, -1, -1, -1))
    assert model.rows == [32, 18, 5]
    model.rows.clear()
    padded = MaskingEngine(TorchAdapter(model), batch_size=32, pad=True)
    torch.testing.assert_close(padded.scores(x, masks, fill=fill, target=tgt), ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(padded.forward(x[:1].expand(5, -1, -1, -1)), ref_fwd, rtol=1e-12, atol=1e-12)
    assert model.rows == [32, 24, 16]  # the 18-row chunk ran as 24 rows, the 5-row forward as 16
    assert (padded.n_forward, padded.n_batches) == (plain.n_forward, plain.n_batches) == (55, 3)
    model.rows.clear()
    model.net[1].train()  # BatchNorm's batch statistics couple the rows: no padding, whatever pad says
    MaskingEngine(TorchAdapter(model), batch_size=32, pad=True).scores(x, masks, fill=fill, target=tgt)
    assert model.rows == [32, 18]
    model.rows.clear()
    MaskingEngine(TorchAdapter(model.eval()), batch_size=32).scores(x, masks, fill=fill, target=tgt)
    assert model.rows == [32, 18]  # the default pads on CUDA only
    with pytest.raises(InvalidParameterError, match=r"pad must be None \(pad on CUDA only\), True or False; got 'yes'"):
        MaskingEngine(TorchAdapter(model), pad="yes")  # type: ignore[arg-type]


class _FlattenNet(nn.Module):
    """conv -> relu -> flatten -> linear; ``view=True`` flattens with ``h.view``, which a channels-last ``h`` refuses;
    ``check=True`` asserts its input is contiguous (an AssertionError on channels-last)."""

    def __init__(self, view: bool, check: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.relu, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Linear(4 * 36, 3)
        self.view, self.check = view, check

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert not self.check or x.is_contiguous(), "expects a contiguous NCHW tensor"
        h = self.relu(self.conv(x))
        return self.head(h.view(h.shape[0], -1) if self.view else h.reshape(h.shape[0], -1))


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients", "gradcam", "scorecam", "occlusion"])
def test_every_method_family_works_on_a_model_that_refuses_channels_last(method: str) -> None:
    x = rand(2, 3, 6, 6, seed=7)
    params: dict[str, Any] = {"layer": "relu"} if "cam" in method else {}
    ref = whybox.explain(_FlattenNet(view=False), x, method, target=0, **params)
    for refusing in (_FlattenNet(view=True), _FlattenNet(view=False, check=True)):
        e = whybox.explain(refusing, x, method, target=0, **params)
        torch.testing.assert_close(e.attributions, ref.attributions, rtol=1e-5, atol=1e-6)
        assert e.meta["n_forward"] == ref.meta["n_forward"]  # the refused try is not counted


# ------------------------------------------------------------------------------------------ feature groups
def _check_partition(fg: FeatureGroups, b: int, spatial: tuple[int, ...]) -> None:
    assert fg.groups.dtype == torch.int64 and fg.groups.shape == (b, *spatial)
    for row in fg.groups:
        ids = row.unique()
        assert torch.equal(ids, torch.arange(len(ids)))  # consecutive from 0: every id covers something
        assert len(ids) <= fg.n_groups
    assert fg.n_groups == int(fg.groups.max()) + 1
    sizes = fg.sizes()
    assert sizes.shape == (b, fg.n_groups)
    assert torch.equal(sizes.sum(1), torch.full((b,), math.prod(spatial)))  # every element in exactly one group


def test_grid_groups() -> None:
    x = rand(2, 3, 12, 12)
    fg = grid(x, patch=5)  # 3 x 3 patches, the border ones cut to 2 pixels
    _check_partition(fg, 2, (1, 12, 12))
    assert fg.n_groups == 9 and fg.kind == "grid"
    assert fg.sizes()[0].tolist() == [25, 25, 10, 25, 25, 10, 10, 10, 4]
    assert int(fg.groups[0, 0, 4, 5]) == 1 and int(fg.groups[0, 0, 11, 11]) == 8  # raster order
    rect = grid(x, patch=(4, 6))
    _check_partition(rect, 2, (1, 12, 12))
    assert rect.n_groups == 6 and bool((rect.sizes() == 24).all())
    with pytest.raises(
        InvalidParameterError, match=r"patch must be an int >= 1 or a pair \(rows, cols\) of them; got 0"
    ):
        grid(x, patch=0)
    with pytest.raises(InvalidInputError, match=r"grid\(\) needs images \(B, C, H, W\); got inputs of shape \(2, 5\)"):
        grid(rand(2, 5), patch=2)


def test_pixel_groups() -> None:
    fg = pixels(rand(2, 3, 4, 5))
    _check_partition(fg, 2, (1, 4, 5))
    assert torch.equal(fg.groups[1, 0], torch.arange(20).view(4, 5))


def test_column_groups() -> None:
    x = rand(3, 5)
    _check_partition(columns(x), 3, (5,))
    fg = columns(x, groups=torch.tensor([0, 0, 1, 2, 2]))
    _check_partition(fg, 3, (5,))
    assert fg.sizes()[0].tolist() == [2, 1, 2]
    with pytest.raises(InvalidParameterError, match=r"groups must have shape \(5,\); got \(4,\)"):
        columns(x, groups=torch.tensor([0, 1, 2, 3]))
    with pytest.raises(InvalidInputError, match=r"columns\(\) needs tabular rows \(B, F\)"):
        columns(rand(2, 3, 4, 4))
    # ids below 0 or not integers were taken (a -1 broke sizes() later with an index error; 0.5 became 0)
    with pytest.raises(InvalidParameterError, match=r"groups must be ids >= 0 .*got \[0, -1, 1, 1, 1\]"):
        columns(x, groups=torch.tensor([0, -1, 1, 1, 1]))
    with pytest.raises(InvalidParameterError, match="groups must hold integer group ids, one per column; got dtype"):
        columns(x, groups=torch.tensor([0.0, 0.5, 1.0, 1.0, 2.0]))


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda x: grid(x, patch=2.5), r"patch must be an int >= 1 or a pair \(rows, cols\) of them; got 2.5"),
        (lambda x: grid(x, patch=(2, 0)), r"patch must be an int >= 1 .*got \(2, 0\)"),
        (lambda x: grid(x, patch=(1, 2, 3)), r"patch must be an int >= 1 .*got \(1, 2, 3\)"),
        (lambda x: superpixels(x, image=rand(2, 3, 8, 8)), r"image must be the inputs' pictures, 2 of 16 x 16 pixels"),
    ],
)
def test_feature_builders_name_a_bad_argument(build: Callable[[torch.Tensor], Any], match: str) -> None:
    """grid(patch=2.5) raised a bare TypeError; superpixels(image=) of another size made groups that fit no input."""
    with pytest.raises(InvalidParameterError, match=match):
        build(rand(2, 3, 16, 16))
    assert grid(rand(1, 1, 6, 6), patch=np.int64(3)).n_groups == 4


def test_superpixel_groups_cover_every_pixel_with_consecutive_ids() -> None:
    x = rand(2, 3, 16, 16, seed=6) * 0.1
    x[0, :, :8] += 1.0  # some structure to segment
    x[1, 0, :, 8:] += 1.0
    fg = superpixels(x, n_segments=6)
    _check_partition(fg, 2, (1, 16, 16))
    assert fg.kind == "superpixels" and fg.n_groups >= 2
    assert torch.equal(superpixels(x, n_segments=6).groups, fg.groups)  # deterministic


def test_superpixels_of_noise_are_not_merged_into_one_segment() -> None:
    # SLIC at compactness 10 merges uniform noise into one segment (measured: 1 of 50 at 32 and 224 px), which
    # would leave LIME or Kernel SHAP a single feature; the retry with a larger compactness keeps >= n_segments // 10
    from skimage.segmentation import slic

    for size in (32, 96):
        x = rand(1, 3, size, size, seed=size)
        direct = slic(x[0].permute(1, 2, 0).double().numpy(), n_segments=50, compactness=10.0, start_label=0)
        assert len(torch.unique(torch.from_numpy(direct))) < 5  # the failure the retry answers
        fg = superpixels(x, n_segments=50)
        _check_partition(fg, 1, (1, size, size))
        assert fg.n_groups >= 5
    # a picture with structure keeps its segmentation as SLIC gives it
    from skimage import data, transform

    pic = torch.tensor(transform.resize(data.chelsea(), (64, 64)), dtype=torch.float64).permute(2, 0, 1)[None]
    arr = ((pic[0] - pic.min()) / (pic.max() - pic.min() + 1e-12)).permute(1, 2, 0).numpy()
    ref = slic(arr, n_segments=50, compactness=10.0, start_label=0, channel_axis=-1, enforce_connectivity=True)
    assert len(torch.unique(torch.from_numpy(ref))) == superpixels(pic, n_segments=50).n_groups


def test_group_expand_maps_each_group_mask_to_its_elements() -> None:
    x = rand(2, 1, 6, 6)
    fg = grid(x, patch=3)
    masks = rand(3, fg.n_groups, seed=7) > 0.5
    rows = torch.tensor([1, 0, 1])
    out = fg.expand(masks, rows)
    assert out.shape == (3, 1, 6, 6) and out.dtype == torch.bool
    for i in range(3):
        assert torch.equal(out[i], masks[i][fg.groups[rows[i]]])


# ------------------------------------------------------------------------------------------ fills
def test_fill_values() -> None:
    x = rand(2, 3, 8, 8, seed=8)
    assert torch.equal(make_fill("zero", x), torch.zeros_like(x))
    assert torch.equal(make_fill(0.25, x), torch.full_like(x, 0.25))
    torch.testing.assert_close(make_fill("mean", x), x.mean((2, 3), keepdim=True).expand_as(x))
    tab = rand(4, 5)
    torch.testing.assert_close(make_fill("mean", tab), tab.mean(1, keepdim=True).expand_as(tab))
    t = rand(1, 3, 1, 1, seed=9)
    assert torch.equal(make_fill(t, x), t.expand_as(x))
    assert torch.equal(make_fill(lambda v: v * 2, x), x * 2)
    with pytest.raises(
        InvalidParameterError, match=r"fill must be one of \('zero', 'mean', 'blur', 'uniform'\).*got 'black'"
    ):
        make_fill("black", x)
    with pytest.raises(
        InvalidParameterError, match=r"fill tensor of shape \(4,\) does not broadcast to the inputs \(2, 3, 8, 8\)"
    ):
        make_fill(torch.zeros(4), x)
    assert FILLS == ("zero", "mean", "blur", "uniform")


def test_blur_of_a_constant_image_is_the_constant() -> None:
    x = torch.full((2, 3, 9, 7), 0.7, dtype=F64)
    x[1] = -1.5
    for sigma in (0.5, 2.0, 10.0):  # a radius beyond the image too
        torch.testing.assert_close(make_fill("blur", x, sigma=sigma), x, rtol=0, atol=1e-12)
    img = rand(1, 3, 9, 7, seed=10)
    assert torch.equal(gaussian_blur(img, 0.0), img)
    blurred = gaussian_blur(img, 1.5)
    assert float(blurred.std()) < float(img.std())  # it smooths
    torch.testing.assert_close(blurred.mean(), img.mean(), rtol=0.05, atol=0)
    with pytest.raises(InvalidParameterError, match=r"fill='blur' needs images"):
        make_fill("blur", rand(2, 5))


def test_uniform_fill_stays_within_each_row_range_and_is_seeded() -> None:
    x = rand(3, 2, 5, 5, seed=11)
    x[1] *= 10
    x[2] -= 4

    def draw(seed: int) -> torch.Tensor:
        return make_fill("uniform", x, generator=torch.Generator().manual_seed(seed))

    u = draw(0)
    flat, uf = x.flatten(1), u.flatten(1)
    assert bool((uf >= flat.amin(1, keepdim=True)).all()) and bool((uf <= flat.amax(1, keepdim=True)).all())
    assert torch.equal(u, draw(0))
    assert not torch.equal(u, draw(1))
    state = torch.get_rng_state()
    draw(2)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched


# ------------------------------------------------------------------------------------------ targets
def test_target_select_with_callable_and_per_row_indices() -> None:
    scores = rand(4, 5, seed=12)
    t = resolve_target(lambda s: s[:, 1] - s[:, 0], scores)
    assert torch.equal(t.index, torch.full((4,), -1))
    torch.testing.assert_close(t.select(scores), scores[:, 1] - scores[:, 0])
    torch.testing.assert_close(t.select(scores, torch.tensor([0, 0, 1, 1])), scores[:, 1] - scores[:, 0])
    idx = Target(torch.tensor([2, 4]))
    torch.testing.assert_close(
        idx.select(scores, torch.tensor([0, 1, 1, 0])), scores[torch.arange(4), torch.tensor([2, 4, 4, 2])]
    )
    assert torch.equal(resolve_target(None, scores).index, scores.argmax(1))
    assert torch.equal(resolve_target(3, scores).index, torch.full((4,), 3))
    assert torch.equal(resolve_target(torch.tensor(1), scores).index, torch.ones(4, dtype=torch.int64))
    with pytest.raises(
        InvalidTargetError, match=r"callable target must map scores \(4, 5\) to shape \(4,\); it returned float"
    ):
        Target(torch.full((4,), -1), fn=lambda s: 1.0).select(scores)  # type: ignore[arg-type, return-value]


def test_callable_target_drives_the_explanation(make_cnn: Callable[..., nn.Module]) -> None:
    model = make_cnn(dtype=F64)
    x = rand(2, 3, 12, 12, seed=13)
    e = whybox.explain(model, x, "saliency", abs=False, target=lambda s: s[:, 1] - s[:, 3])
    assert torch.equal(e.target, torch.full((2,), -1))
    a1 = whybox.explain(model, x, "saliency", abs=False, target=1).attributions
    a3 = whybox.explain(model, x, "saliency", abs=False, target=3).attributions
    torch.testing.assert_close(e.attributions, a1 - a3, rtol=1e-10, atol=1e-14)  # gradients are linear in the score


# ------------------------------------------------------------------------------------------ adapters
def _embedder(seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return (
            nn.Sequential(
                nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 6)
            )
            .to(F64)
            .eval()
        )


class CosineHead(nn.Module):
    """The same scores as EmbeddingAdapter, written as a plain classifier."""

    def __init__(self, embedder: nn.Module, refs: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.embedder = embedder
        self.refs = refs
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.embedder(x)
        return self.scale * F.cosine_similarity(e[:, None, :], self.refs[None], dim=2)


def test_embedding_adapter_scores_are_scaled_cosine_similarities() -> None:
    emb = _embedder()
    refs = rand(3, 6, seed=14) - 0.5
    x = rand(4, 3, 8, 8, seed=15)
    adapter = whybox.adapt(emb, kind="embedding", references=refs, scale=10.0)
    assert isinstance(adapter, EmbeddingAdapter) and adapter.kind == "embedding"
    with torch.no_grad():
        e = emb(x)
        manual = 10.0 * (e @ refs.T) / (e.norm(dim=1, keepdim=True) * refs.norm(dim=1)[None])
        torch.testing.assert_close(adapter.scores(x), manual, rtol=1e-12, atol=1e-12)
        dot = whybox.adapt(emb, kind="embedding", references=refs, similarity="dot")
        torch.testing.assert_close(dot.scores(x), e @ refs.T, rtol=1e-12, atol=1e-12)
        one = whybox.adapt(emb, kind="embedding", references=refs[0])  # one target embedding: K = 1
        assert one.scores(x).shape == (4, 1)


@pytest.mark.parametrize("method", ["saliency", "gradcam"])
def test_embedding_adapter_works_with_gradient_and_cam_methods(method: str) -> None:
    emb = _embedder()
    refs = rand(3, 6, seed=16) - 0.5
    x = rand(2, 3, 8, 8, seed=17)
    tgt = torch.tensor([2, 0])
    adapter = whybox.adapt(emb, kind="embedding", references=refs, scale=5.0)
    opts: dict[str, Any] = {"layer": "1"} if method == "gradcam" else {"abs": False}
    e = whybox.explain(adapter, x, method, target=tgt, **opts)
    twin_opts = {**opts, "layer": "embedder.1"} if method == "gradcam" else opts
    ref = whybox.explain(CosineHead(emb, refs, 5.0), x, method, target=tgt, **twin_opts)
    torch.testing.assert_close(e.attributions, ref.attributions, rtol=1e-9, atol=1e-12)
    assert float(e.attributions.abs().amax()) > 0
    if method == "saliency":  # and it is the gradient of the cosine similarity itself
        xg = x.clone().requires_grad_(True)
        s = 5.0 * F.cosine_similarity(emb(xg), refs[tgt], dim=1)
        (g,) = torch.autograd.grad(s.sum(), xg)
        torch.testing.assert_close(e.attributions, g, rtol=1e-9, atol=1e-12)


def test_sklearn_adapter_scores_are_predict_proba() -> None:
    from sklearn.linear_model import LinearRegression, LogisticRegression

    rng = np.random.default_rng(0)
    xs = rng.normal(size=(60, 4))
    ys = (xs[:, 0] + xs[:, 1] > 0).astype(int) + (xs[:, 2] > 1).astype(int)
    clf = LogisticRegression().fit(xs, ys)
    adapter = whybox.adapt(clf)
    assert isinstance(adapter, SklearnAdapter) and adapter.method_name == "predict_proba" and not adapter.differentiable
    rows = torch.from_numpy(rng.normal(size=(5, 4)))
    s = adapter.scores(rows)
    assert s.dtype == F64 and s.shape == (5, 3)
    np.testing.assert_array_equal(s.numpy(), clf.predict_proba(rows.numpy()))
    reg = whybox.adapt(LinearRegression().fit(xs, xs[:, 0]))
    np.testing.assert_allclose(reg.scores(rows).numpy()[:, 0], rows.numpy()[:, 0], atol=1e-10)
    with pytest.raises(
        InvalidInputError, match=r"scikit-learn model takes rows of shape \(B, F\); got inputs of shape \(2, 1, 4\)"
    ):
        adapter.scores(rows[:2, None])


def test_adapt_returns_an_adapter_unchanged(make_cnn: Callable[..., nn.Module]) -> None:
    adapter = whybox.adapt(make_cnn())
    assert isinstance(adapter, TorchAdapter)
    assert whybox.adapt(adapter) is adapter  # with options it would drop: refused (test_adapting_an_adapter_...)


# ------------------------------------------------------------------------------------------ the guard
def _state(model: nn.Module) -> tuple[Any, ...]:
    params = list(model.parameters())
    return (
        [m.training for m in model.modules()],
        [p.requires_grad for p in params],
        [p.grad for p in params],
        [p.detach().clone() for p in params],
        [dict(m._forward_hooks) for m in model.modules()],
        torch.get_rng_state(),
    )


def _assert_state(model: nn.Module, before: tuple[Any, ...]) -> None:
    after = _state(model)
    assert after[0] == before[0] and after[1] == before[1]
    assert all(a is b for a, b in zip(after[2], before[2], strict=True))  # the very same .grad tensors
    assert all(torch.equal(a, b) for a, b in zip(after[3], before[3], strict=True))
    assert after[4] == before[4]
    assert torch.equal(after[5], before[5])


def test_guard_restores_everything_when_the_body_is_interrupted(make_cnn: Callable[..., nn.Module]) -> None:
    model = make_cnn().train()
    model[2].eval()
    params = list(model.parameters())
    params[0].requires_grad_(False)
    params[1].grad = torch.ones_like(params[1])
    model[0].register_forward_hook(lambda *a: None)
    before = _state(model)
    with pytest.raises(KeyboardInterrupt), preserved(model, "eval"):
        assert not any(m.training for m in model.modules())  # eval inside
        assert not any(p.requires_grad for p in model.parameters())  # frozen inside
        model[4].register_forward_hook(lambda *a: None)  # a hook left behind
        params[1].grad = None
        torch.rand(10)  # the global RNG consumed
        raise KeyboardInterrupt
    _assert_state(model, before)


def test_explain_interrupted_mid_call_leaves_the_model_as_it_came(make_cnn: Callable[..., nn.Module]) -> None:
    class Interrupts(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = make_cnn()
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            out = self.net(x)
            if self.calls == 2:
                raise KeyboardInterrupt
            return out

    for method in ("integrated_gradients", "gradcam"):
        model = Interrupts().train()
        before = _state(model)
        with pytest.raises(KeyboardInterrupt):
            whybox.explain(model, rand(3, 3, 12, 12, dtype=torch.float32), method, batch_size=1)
        _assert_state(model, before)


def test_guard_mode_as_is_keeps_the_callers_mode(make_cnn: Callable[..., nn.Module]) -> None:
    model = make_cnn().train()
    with preserved(model, "as_is"):
        assert all(m.training for m in model.modules())
    assert all(m.training for m in model.modules())
    with (
        pytest.raises(InvalidParameterError, match=r"mode must be one of \('eval', 'as_is'\); got 'train'"),
        preserved(model, "train"),
    ):
        pass


# ------------------------------------------------------------------------------------------ Explanation
def test_explanation_rows_and_maps() -> None:
    a = rand(3, 2, 4, 4, seed=18) - 0.5
    e = Explanation(
        a,
        torch.tensor([0, 1, 2]),
        "saliency",
        {"abs": False},
        {"finite": [True, False, True], "delta": torch.arange(3.0), "seed": 0},
    )
    row = e[1]
    assert len(row) == 1 and row.meta["finite"] == [False] and torch.equal(row.meta["delta"], torch.tensor([1.0]))
    assert row.meta["seed"] == 0 and torch.equal(row.attributions, a[1:2])
    last = e[-1]  # negative indices count from the end, as for any sequence
    assert len(last) == 1 and last.meta["finite"] == [True] and torch.equal(last.attributions, a[2:3])
    assert torch.equal(e[-3].target, torch.tensor([0]))
    assert len(e[1:]) == 2 and e[1:].meta["finite"] == [False, True]
    # lists that describe the whole explanation stay whole, also when their length equals the number of rows
    whole = {
        "feature_names": ["a", "b", "c"],
        "described_options": ["baseline", "fill", "x"],
        "layer": ["l1", "l2", "l3"],
    }
    e3 = Explanation(a, torch.tensor([0, 1, 2]), "saliency", {}, {**whole, "target_names": ["x", "y", "z"]})
    assert {k: e3[1:].meta[k] for k in whole} == whole and e3[1:].meta["target_names"] == ["y", "z"]
    for bad in (3, -4):
        with pytest.raises(IndexError, match=rf"row index {bad} is out of range for an explanation of 3 rows"):
            e[bad]
    # any integer-like index is one row (NumPy's ints kept a (C, H, W) 'row' and a bare meta value), lists and
    # slices of any step pick rows in their order, anything else is named
    for one in (np.int64(1), torch.tensor(1), np.array([1])[0]):
        got = e[one]
        assert torch.equal(got.attributions, a[1:2]) and got.meta["finite"] == [False] and got.target.tolist() == [1]
    picked = e[[2, 0]]
    assert torch.equal(picked.attributions, a[[2, 0]]) and picked.meta["finite"] == [True, True]
    assert torch.equal(picked.meta["delta"], torch.tensor([2.0, 0.0])) and picked.target.tolist() == [2, 0]
    assert torch.equal(e[torch.tensor([2, 0])].attributions, picked.attributions)
    assert e[::-1].target.tolist() == [2, 1, 0] and e[::-1].meta["finite"] == [True, False, True]
    for bad_index in ("a", 1.5, [[0]], True):
        with pytest.raises(InvalidParameterError, match=r"^an explanation's rows are picked by an int, a slice or a "):
            e[bad_index]
    assert torch.equal(e.to_map(), a.sum(1))
    assert torch.equal(e.to_map("max_abs"), a.abs().amax(1))
    assert torch.equal(e.to_map("abs_sum"), a.abs().sum(1))
    torch.testing.assert_close(e.to_map("mean"), a.mean(1))
    with pytest.raises(
        InvalidParameterError, match=r"reduce must be one of \('sum', 'mean', 'abs_sum', 'max_abs'\); got 'max'"
    ):
        e.to_map("max")
    with pytest.raises(InvalidInputError, match=r"to_map\(\) needs image attributions .*shape \(3, 5\)"):
        Explanation(rand(3, 5), torch.zeros(3, dtype=torch.int64), "saliency").to_map()


def test_loading_a_foreign_safetensors_file_is_refused(tmp_path: Any) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(
        InvalidInputError, match=r"is not a whybox explanation file .*write it with Explanation\.save\(\)"
    ):
        Explanation.load(path)


def test_a_whybox_file_with_a_damaged_header_field_is_named(tmp_path: Any) -> None:
    """A file that says it is an explanation but lacks 'meta' or holds broken JSON in 'params' gave KeyError or
    JSONDecodeError; each is a DataFormatError naming the field."""
    from safetensors.torch import save_file

    from whybox.explanation import _FORMAT

    tensors = {"attributions": torch.zeros(1, 2), "target": torch.zeros(1, dtype=torch.int64)}
    good = {"format": _FORMAT, "method": "saliency", "params": "{}", "meta": "{}"}
    for name, header in (
        ("meta", {k: v for k, v in good.items() if k != "meta"}),
        ("params", {**good, "params": "{x"}),
    ):
        path = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(path), metadata=header)
        with pytest.raises(DataFormatError, match=rf"^path='.*{name}\.safetensors': the explanation's '{name}' is "):
            Explanation.load(path)
    save_file(tensors, str(tmp_path / "ok.safetensors"), metadata=good)
    assert Explanation.load(tmp_path / "ok.safetensors").method == "saliency"


def test_saving_to_and_loading_from_a_folder_a_missing_or_a_broken_file_say_so(tmp_path: Any) -> None:
    e = Explanation(rand(2, 3), torch.zeros(2, dtype=torch.int64), "saliency")
    with pytest.raises(
        InvalidParameterError, match=r"is a folder; pass a file path, e\.g\. .*explanation\.safetensors"
    ):
        e.save(tmp_path)
    with pytest.raises(InvalidInputError, match=r"is a folder; pass the \.safetensors file Explanation\.save wrote"):
        Explanation.load(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"nope\.safetensors' does not exist"):
        Explanation.load(tmp_path / "nope.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DataFormatError, match=r"is not a safetensors file \(.*\); pass a file written by"):
        Explanation.load(tmp_path / "broken.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.safetensors"]  # nothing written


def test_seed_none_draws_a_fresh_seed_that_is_recorded_and_reproduces_the_result() -> None:
    """seed=None: each call draws its own seed (global RNG untouched) and meta['seed'] reproduces it exactly."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    x = torch.randn(2, 4)
    rng = torch.get_rng_state()
    a = whybox.explain(model, x, "smoothgrad", seed=None, n_samples=4)
    b = whybox.explain(model, x, "smoothgrad", seed=None, n_samples=4)
    assert torch.equal(torch.get_rng_state(), rng)
    assert isinstance(a.meta["seed"], int) and a.meta["seed"] != b.meta["seed"]
    assert not torch.equal(a.attributions, b.attributions)
    again = whybox.explain(model, x, "smoothgrad", seed=a.meta["seed"], n_samples=4)
    assert torch.equal(again.attributions, a.attributions)


def test_rows_finite_equals_the_elementwise_check_overflowing_sums_included():
    from whybox.explainers.base import rows_finite

    flat = torch.randn(6, 50)
    flat[1, 3] = float("nan")
    flat[2, 7] = float("inf")
    flat[3, :2] = 3e38  # finite values whose sum overflows to inf
    flat[4, 0], flat[4, 1] = float("inf"), float("-inf")  # their sum is NaN
    want = torch.isfinite(flat).all(1)
    assert torch.equal(rows_finite(flat), want)
    assert want.tolist() == [True, False, False, True, False, True]
    flat[0, 0] = float("nan")  # the same tensor changed in place: checked again, not remembered
    assert rows_finite(flat).tolist() == [False, False, False, True, False, True]
    assert torch.equal(rows_finite(torch.ones(2, 3, dtype=torch.int64)), torch.ones(2, dtype=torch.bool))


def test_adapt_labels_name_the_outputs_for_target(make_cnn: Callable[..., nn.Module]) -> None:
    """labels= names the outputs in order: a name as target explains that output (the same as its index, in
    explain and evaluate); an unknown name lists the names; labels that are not a list of strings are refused."""
    model = make_cnn()
    x = rand(2, 3, 8, 8, seed=3, dtype=torch.float32)
    k = int(model(x).shape[1])
    names = [f"class {i}" for i in range(k)]
    ad = whybox.adapt(model, labels=names)
    by_name = whybox.explain(ad, x, "gradcam", target="class 1")
    by_index = whybox.explain(ad, x, "gradcam", target=1)
    assert by_name.target.tolist() == [1, 1]
    torch.testing.assert_close(by_name.attributions, by_index.attributions, rtol=0, atol=0)
    mixed = whybox.explain(ad, x, "saliency", target=["class 0", 2])
    assert mixed.target.tolist() == [0, 2]
    got = whybox.evaluate(ad, x, by_index, "deletion", target="class 1").scores
    torch.testing.assert_close(got, whybox.evaluate(ad, x, by_index, "deletion", target=1).scores, rtol=0, atol=0)
    with pytest.raises(whybox.InvalidTargetError, match=r"target 'dog' is not one of the model's outputs \['class 0'"):
        whybox.explain(ad, x, "saliency", target="dog")
    with pytest.raises(whybox.InvalidParameterError, match=r"labels must be a list of strings, one per output"):
        whybox.adapt(model, labels="cat")
    # each row's target by name in meta (saved with it), and as the plot's panel titles
    assert mixed.meta["target_names"] == ["class 0", "class 2"]
    fig = mixed.plot(x)
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["row 0: class 0", "row 1: class 2"]


def test_threads_explaining_one_model_each_see_it_as_it_came_and_leave_it_so() -> None:
    """Two threads explaining one train-mode model (a web service) each froze it and set eval mode on entry and
    restored what they found on exit: the model was left frozen in eval mode, one thread's exit put Dropout back
    under the other's passes, and Grad-CAM's layer taps recorded the other thread's forward passes (a LayerError
    blaming module reuse). Calls on one model now run one at a time; results equal the sequential ones."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(96, 32), nn.Dropout(0.5), nn.Linear(32, 5)
    ).train()
    x = torch.rand(4, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    want = {
        m: whybox.explain(model, x, m, **o).attributions for m, o in (("saliency", {}), ("gradcam", {"layer": "1"}))
    }
    failures: list[str] = []

    def work(method: str, options: dict[str, Any]) -> None:
        try:
            for _ in range(40):
                got = whybox.explain(model, x, method, **options).attributions
                if not torch.equal(got, want[method]):
                    failures.append(f"{method}: {float((got - want[method]).abs().max())}")
        except Exception as exc:  # reported below
            failures.append(f"{method}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=work, args=a) for a in [("saliency", {}), ("gradcam", {"layer": "1"})] * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


def test_a_buffer_the_forward_replaces_is_put_back_under_mode_as_is() -> None:
    """mode='as_is' restores buffers, but only into the tensors it saved: a forward that replaced a buffer
    (self.calls = self.calls + 1) left the new one in place (calls = 1 after the call)."""

    class Counting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 3)
            self.register_buffer("calls", torch.zeros(()))

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            self.calls = self.calls + 1
            return self.lin(z)

    model = Counting()
    saved = model.calls
    whybox.explain(model, torch.rand(2, 4), "occlusion", mode="as_is", batch_size=1)
    assert model.calls is saved and float(model.calls) == 0.0


def test_a_model_whose_weights_are_buffers_runs_in_their_dtype() -> None:
    """A float64 model holding its weights as buffers got float32 inputs (only parameters set the dtype): torch's
    'expected m1 and m2 to have the same dtype'. Its buffers set it now, as parameters do."""

    class Fixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer(
                "w", torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
            )

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return z @ self.w

    model = Fixed()
    x = torch.rand(2, 6)
    for method in ("saliency", "occlusion"):
        e = whybox.explain(model, x, method, target=0)
        assert e.attributions.dtype == torch.float64
    torch.testing.assert_close(
        whybox.explain(model, x, "saliency", target=0).attributions, model.w[:, 0].abs().expand(2, 6)
    )


def test_an_estimator_that_predicts_text_labels_is_named() -> None:
    """predict returning class labels ('yes') raised numpy's 'could not convert string to float'."""

    class OnlyPredict:
        classes_ = np.array(["no", "yes"])

        def fit(self, rows: np.ndarray, y: np.ndarray) -> OnlyPredict:
            return self

        def predict(self, rows: np.ndarray) -> np.ndarray:
            return np.where(rows[:, 0] > 0.5, "yes", "no")

    with pytest.raises(ModelOutputError, match=r"OnlyPredict\.predict returned <U3 values .*predict_proba or decision"):
        whybox.explain(OnlyPredict(), np.random.default_rng(0).random((3, 4)), "occlusion")


def test_adapting_an_adapter_refuses_the_options_it_would_drop() -> None:
    """adapt(adapter, kind=..., output=...) returned the adapter unchanged, the options (invalid ones too) dropped
    without a word: output=torch.log, the probability warning's own advice, changed nothing. They are refused now;
    labels= still names an adapter's outputs."""
    adapter = whybox.adapt(nn.Linear(4, 2))
    for options in ({"kind": "multilabel"}, {"kind": "nonsense"}, {"output": torch.log}, {"scale": 2.0}):
        with pytest.raises(InvalidParameterError, match=r"model is already a whybox adapter \(TorchAdapter\)"):
            whybox.adapt(adapter, **options)
    assert whybox.adapt(adapter) is adapter
    assert whybox.adapt(adapter, labels=["a", "b"]).output_names == ["a", "b"]
