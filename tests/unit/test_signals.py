"""1-D signals ``(B, C, L)`` (time series for a 1-D CNN): every image method applies, with the last axis as time.

Properties: each CAM on a signal equals the same CAM of the same network written with ``1 x k`` Conv2d on a one-row
image (B, C, 1, L), and Grad-CAM equals captum's LayerGradCam with linear interpolation; the default features are
windows shared by all channels (exact Shapley values of a linear model over 8 windows equal the windows' sums of
w * x; occlusion's default window equals captum's Occlusion with the same window and stride); RISE and LIMA put a
model's only read window first; the metrics read one feature per time step (deletion equals a hand-run curve);
every method's rows are independent and its chunk size changes nothing; inputs that are not such signals get
errors that name what would work.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import whybox
from whybox.errors import InvalidInputError, LayerError
from whybox.models.adapter import is_signal

B, C, L, K = 3, 2, 48, 3


def _seeded(build, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().eval()


def cnn1d(seed: int = 0) -> nn.Sequential:
    return _seeded(
        lambda: nn.Sequential(
            nn.Conv1d(C, 6, 5, padding=2),
            nn.ReLU(),
            nn.Conv1d(6, 6, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.AdaptiveAvgPool1d(1),
            nn.Flatten(),
            nn.Linear(6, K),
        ),
        seed,
    )


def as_image_model(m: nn.Sequential) -> nn.Sequential:
    """The same network on one-row images (B, C, 1, L): each Conv1d as a 1 x k Conv2d with the same weights."""
    conv1, conv2 = m[0], m[2]
    c1 = nn.Conv2d(C, 6, (1, 5), padding=(0, 2))
    c2 = nn.Conv2d(6, 6, (1, 3), padding=(0, 1))
    with torch.no_grad():
        c1.weight.copy_(conv1.weight.unsqueeze(2))
        c1.bias.copy_(conv1.bias)
        c2.weight.copy_(conv2.weight.unsqueeze(2))
        c2.bias.copy_(conv2.bias)
    head = nn.Linear(6, K)
    head.load_state_dict(m[7].state_dict())
    return nn.Sequential(
        c1, nn.ReLU(), c2, nn.ReLU(), nn.MaxPool2d((1, 2)), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head
    ).eval()


def signals(n: int = B, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, C, L, generator=g)


class WindowModel(nn.Module):
    """Scores [sum of channel 0 over time steps lo..hi-1, 0]: only that window matters. Starts with a Conv1d so the
    inputs read as signals (the conv's output is not used)."""

    def __init__(self, lo: int, hi: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(C, 1, 1)
        self.lo, self.hi = lo, hi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x[:, 0, self.lo : self.hi].sum(1) + 0.0 * self.conv(x).sum((1, 2))
        return torch.stack([s, torch.zeros_like(s)], 1)


class LinearSignal(nn.Module):
    """f_k(x) = sum_{c,t} W_k[c, t] x[c, t]."""

    def __init__(self, seed: int = 3) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv1d(C, 1, 1)
        self.w = nn.Parameter(torch.randn(K, C, L, generator=g, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (
            torch.einsum("kcl,bcl->bk", self.w, x.to(torch.float64)) + 0.0 * self.conv(x.float()).sum((1, 2))[:, None]
        )


CAMS = ["gradcam", "gradcam_pp", "xgradcam", "layercam", "hirescam", "scorecam"]


# ---------------------------------------------------------------------------------------------- detection
def test_is_signal_needs_a_conv1d_reading_the_channels():
    x = signals()
    assert is_signal(whybox.adapt(cnn1d()), x)
    assert not is_signal(whybox.adapt(cnn1d()), torch.randn(B, C + 1, L))  # the conv reads 2 channels
    assert not is_signal(whybox.adapt(nn.Sequential(nn.Linear(L, K))), x)  # no Conv1d: (B, T, D) rows
    assert not is_signal(whybox.adapt(cnn1d()), torch.randn(B, C, 4, 4))


# ---------------------------------------------------------------------------------------------- CAMs
@pytest.mark.parametrize("method", CAMS)
def test_cam_on_a_signal_equals_the_cam_of_the_same_network_on_one_row_images(method):
    m = cnn1d()
    x = signals()
    e1 = whybox.explain(m, x, method, layer="3", normalize="none")
    e2 = whybox.explain(as_image_model(m), x.unsqueeze(2), method, layer="3", normalize="none")
    assert e1.attributions.shape == (B, 1, L)
    assert torch.equal(e1.target, e2.target)
    torch.testing.assert_close(e1.attributions, e2.attributions.squeeze(2), rtol=1e-5, atol=1e-6)
    assert e1.meta["layer_shape"] == [[6, L]]


def test_gradcam_on_a_signal_equals_captums_layer_gradcam():
    captum_attr = pytest.importorskip("captum.attr")
    m = cnn1d(seed=5)
    x = signals(seed=2)
    e = whybox.explain(m, x, "gradcam", layer="3", normalize="none", target=1)
    ref = captum_attr.LayerGradCam(m, m[3]).attribute(x, target=1, relu_attributions=True)
    ref = captum_attr.LayerAttribution.interpolate(ref, (L,), interpolate_mode="linear")
    torch.testing.assert_close(e.attributions, ref, rtol=1e-5, atol=1e-6)


def test_the_automatic_layer_is_the_last_output_with_the_convs_channels():
    class ConvThenLinear(nn.Module):
        """Conv1d (B, 6, L) -> ReLU -> a Linear over channels, channels last (B, L, 6): that output is no CAM grid."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(C, 6, 3, padding=1)
            self.act = nn.ReLU()
            self.mix = nn.Linear(6, 5)
            self.head = nn.Linear(5, K)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.mix(self.act(self.conv(x)).transpose(1, 2))  # (B, L, 5)
            return self.head(h.mean(1))

    e = whybox.explain(cnn1d(), signals(), "gradcam")
    assert e.meta["layer"] == ["4"]  # the max-pool after the last ReLU: (B, 6, L / 2)
    e = whybox.explain(_seeded(ConvThenLinear), signals(), "gradcam")
    assert e.meta["layer"] == ["act"]


# ---------------------------------------------------------------------------------------------- perturbation
def test_exact_shapley_over_the_default_windows_of_a_linear_model():
    m = LinearSignal()
    x = signals(2)
    e = whybox.explain(m, x, "exact_shapley", target=0)
    seg = torch.arange(L) * 8 // L  # 8 near-equal windows, all channels together
    contrib = (m.w[0].detach() * x.to(torch.float64)).sum(1)  # (B, L): w * x summed over channels
    want = torch.zeros(2, 8, dtype=torch.float64).index_add_(1, seg, contrib)
    assert e.attributions.shape == (2, 1, L)
    torch.testing.assert_close(e.meta["values"].to(torch.float64), want, rtol=1e-5, atol=1e-5)


def test_occlusion_default_window_equals_captums_occlusion():
    captum_attr = pytest.importorskip("captum.attr")
    m = cnn1d(seed=1)
    x = signals(seed=4)
    e = whybox.explain(m, x, "occlusion", target=2)
    w = -(-L // 16)
    ref = captum_attr.Occlusion(m).attribute(x, sliding_window_shapes=(C, w), strides=(C, w // 2), target=2)
    torch.testing.assert_close(e.attributions, ref, rtol=1e-4, atol=1e-6)
    # a window in time steps alone, an int or (k,), spans every channel; the stride likewise
    for window, stride in ((7, 3), ((7,), (3,))):
        e = whybox.explain(m, x, "occlusion", target=2, window=window, stride=stride)
        ref = captum_attr.Occlusion(m).attribute(x, sliding_window_shapes=(C, 7), strides=(C, 3), target=2)
        torch.testing.assert_close(e.attributions, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["rise", "lima", "lime", "kernel_shap"])
def test_the_only_window_the_model_reads_comes_first(method):
    m = WindowModel(24, 30)
    x = signals(2).abs() + 1.0  # the read window raises the score: its removal lowers it
    opts = {"rise": {"n_masks": 800}, "lima": {"n_regions": 8}, "lime": {"n_samples": 300}}.get(method, {})
    e = whybox.explain(m, x, method, target=0, **opts)
    assert e.attributions.shape == (2, 1, L)
    a = e.attributions[:, 0]
    inside = a[:, 24:30].mean(1)
    outside = torch.cat([a[:, :18], a[:, 36:]], 1).amax(1)
    assert bool((inside > outside).all()), (method, inside, outside)


def test_features_segments_with_a_window_length():
    e = whybox.explain(LinearSignal(), signals(1), "feature_ablation", features="segments", patch=10, target=0)
    assert e.meta["n_forward"] == 1 + 5  # ceil(48 / 10) windows


# ---------------------------------------------------------------------------------------------- metrics
def test_deletion_on_a_signal_steps_through_time_steps_in_the_maps_order():
    m = LinearSignal()
    x = signals(1)
    order = torch.randperm(L, generator=torch.Generator().manual_seed(0))
    amap = torch.zeros(1, 1, L)
    amap[0, 0, order] = torch.linspace(1.0, 0.1, L)  # time step order[0] first
    r = whybox.evaluate(m, x, amap, "deletion", target=0, steps=4, score="logit")
    want = []
    for k in range(5):
        xd = x.clone()
        xd[0, :, order[: k * L // 4]] = 0.0
        want.append(float(m(xd)[0, 0].detach()))
    torch.testing.assert_close(
        r.curves["y"][0].to(torch.float64), torch.tensor(want, dtype=torch.float64), rtol=1e-5, atol=1e-5
    )
    # a (B, C, L) map is pooled over channels as on images: the same time-step order gives the same curve
    r2 = whybox.evaluate(m, x, amap.expand(1, C, L) / C, "deletion", target=0, steps=4, score="logit")
    torch.testing.assert_close(r2.curves["y"], r.curves["y"])


def test_region_steps_on_a_signal_remove_whole_windows_in_the_maps_order():
    m = LinearSignal()
    x = signals(1)
    windows = torch.arange(L) * 6 // L  # 6 windows of 8 time steps
    rank = torch.tensor([3, 0, 5, 1, 4, 2])  # window 3 first
    amap = (6 - rank.argsort()).to(torch.float32)[windows].view(1, 1, L)  # window rank[0] highest
    r = whybox.evaluate(m, x, amap, "deletion", target=0, regions=windows, score="logit")
    want = []
    for k in range(7):
        xd = x.clone()
        for w in rank[:k].tolist():
            xd[0, :, windows == w] = 0.0
        want.append(float(m(xd)[0, 0].detach()))
    torch.testing.assert_close(r.curves["y"][0].to(torch.float64), torch.tensor(want, dtype=torch.float64))


def test_find_mistakes_on_signals_inserts_windows():
    m = cnn1d()
    x = signals(6)
    pred = m(x).argmax(1)
    labels = (pred + 1) % K  # every one wrong
    report = whybox.find_mistakes(m, x, labels, method="occlusion")
    assert report.n_wrong == 6 and len(report.mistakes) == 6
    p = m(x).softmax(1).detach()
    for mk in report.mistakes:
        assert mk.culprit_mask.shape == mk.regions.shape == mk.attribution.shape == (1, L)
        assert int(mk.regions.max()) + 1 == 48  # 49 windows asked, clamped to the 48 time steps
        # the whole signal shown is the model's own probability of the true class, the best reached at least that
        assert mk.hc[-1] >= float(p[mk.index, mk.label]) - 1e-6
        assert mk.p_label == pytest.approx(float(p[mk.index, mk.label]), abs=1e-6)


@pytest.mark.parametrize("orders", ["both", "morf"])
def test_road_on_a_signal_equals_road_on_the_same_network_as_one_row_images(orders):
    """A one-row image keeps only the left and right neighbours of the 8-neighbour imputation, so a removed time step
    is the mean of its neighbours in time: ROAD on signals is ROAD on the (B, C, 1, L) images of the same network."""
    m = cnn1d(seed=2)
    x = signals(seed=5)
    amap = torch.randn(B, 1, L, generator=torch.Generator().manual_seed(6))
    r1 = whybox.evaluate(m, x, amap, "road", orders=orders, noise=0.0, fractions=(0.2, 0.5))
    r2 = whybox.evaluate(as_image_model(m), x.unsqueeze(2), amap.unsqueeze(2), "road", orders=orders, noise=0.0,
                         fractions=(0.2, 0.5))  # fmt: skip
    torch.testing.assert_close(r1.scores, r2.scores, rtol=1e-5, atol=1e-6)
    from whybox.metrics.road import noisy_linear_imputation

    row = torch.arange(6.0).view(1, 1, 6) ** 2  # 0 1 4 9 16 25
    removed = torch.zeros(1, 6, dtype=torch.bool)
    removed[0, 2] = True  # an isolated step: (1 + 9) / 2
    assert float(noisy_linear_imputation(row, removed, noise=0.0)[0, 0, 2]) == pytest.approx(5.0)


def test_eraser_features_of_a_signal_are_time_steps():
    m = WindowModel(10, 14)
    x = signals(1).abs() + 1.0
    amap = torch.zeros(1, 1, L)
    amap[0, 0, 10:14] = 1.0
    # the top 10 % (5 of 48 time steps) hold the 4 read ones: removing them takes the whole score away
    r = whybox.evaluate(m, x, amap, "comprehensiveness", target=0, fractions=(0.1,), score="logit")
    torch.testing.assert_close(r.scores.to(torch.float64), m(x)[:, 0].detach().to(torch.float64))


# ---------------------------------------------------------------------------------------------- contract
FAST = {
    "integrated_gradients": {"n_steps": 8},
    "smoothgrad": {"n_samples": 4},
    "rise": {"n_masks": 64},
    "lime": {"n_samples": 64},
    "kernel_shap": {"n_samples": 64},
    "shapley_sampling": {"n_permutations": 4},
    "lima": {"n_regions": 6},
}


@pytest.mark.parametrize("method", whybox.methods("signal"))
def test_every_image_method_on_signals_rows_are_independent_and_chunking_changes_nothing(method):
    m = cnn1d()
    before = copy.deepcopy(m.state_dict())
    x = signals()
    opts = FAST.get(method, {})
    e = whybox.explain(m, x, method, seed=3, **opts)
    assert e.attributions.shape[0] == B and e.attributions.shape[-1] == L
    assert e.attributions.shape[1] in (1, C)
    one = whybox.explain(m, x[1:2], method, seed=3, target=e.target[1:2], **opts)
    torch.testing.assert_close(one.attributions, e.attributions[1:2], rtol=1e-4, atol=1e-6)
    small = whybox.explain(m, x, method, seed=3, batch_size=5, **opts)
    torch.testing.assert_close(small.attributions, e.attributions, rtol=1e-4, atol=1e-6)
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())


# ---------------------------------------------------------------------------------------------- errors
def test_a_cam_on_3d_inputs_that_are_not_signals_says_what_would_work():
    m = nn.Sequential(nn.Flatten(), nn.Linear(C * L, K))
    with pytest.raises(InvalidInputError, match=r"images of shape \(B, C, H, W\) or signals \(B, C, L\)"):
        whybox.explain(m, signals(), "gradcam")
    with pytest.raises(InvalidInputError, match=r"first nn.Conv1d reads their C channels \(this one reads 2\)"):
        whybox.explain(cnn1d(), torch.randn(B, C + 1, L), "gradcam")


class SequenceLinear(nn.Module):
    """A sequence model on (B, T, D), features last (no Conv1d): f_k = sum_{t,d} W_k[t, d] x[t, d]."""

    def __init__(self, t: int, d: int, seed: int = 7) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(K, t, d, generator=g, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ktd,btd->bk", self.w, x.to(torch.float64))


def test_segments_of_a_sequence_are_windows_of_time_steps_with_all_their_features():
    """features='segments' on (B, T, D) inputs of a model without a Conv1d (an RNN, a transformer on time steps)
    cuts axis 1: exact Shapley values of a linear model over those windows are each window's sum of w x."""
    t, d = 24, 5
    m = SequenceLinear(t, d)
    x = torch.randn(2, t, d, generator=torch.Generator().manual_seed(8))
    e = whybox.explain(m, x, "exact_shapley", features="segments", patch=4, target=1)
    assert e.attributions.shape == (2, t, 1)
    contrib = (m.w[1].detach() * x.to(torch.float64)).sum(2)  # (B, T)
    want = contrib.view(2, 6, 4).sum(2)
    torch.testing.assert_close(e.meta["values"].to(torch.float64), want, rtol=1e-6, atol=1e-6)
    # an LSTM reading (B, T, D) batch-first: LIME and LIMA over windows of time steps; a window map is what the
    # metrics read as one value per time step
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        lstm = nn.LSTM(d, 8, batch_first=True)
        head = nn.Linear(8, K)

    class Tagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm, self.head = lstm, head

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.lstm(x)[0][:, -1])

    tagger = Tagger().eval()
    lime = whybox.explain(tagger, x, "lime", features="segments", n_samples=100)
    assert lime.attributions.shape == (2, t, 1)
    windows = torch.arange(t) * 16 // t
    for w in range(16):  # one value per window
        vals = lime.attributions[:, windows == w, 0]
        assert torch.equal(vals, vals[:, :1].expand_as(vals))
    lima = whybox.explain(tagger, x, "lima", regions="segments", n_regions=6)
    assert lima.attributions.shape == (2, t, 1) and int(lima.meta["regions"].max()) + 1 == 6
    # deletion reads the (B, T, 1) map as one value per time step: its curve runs from the sequence to all zeros
    r = whybox.evaluate(tagger, x, lime, "deletion")
    p = tagger(torch.cat([x, torch.zeros(1, t, d)])).softmax(1).detach().double()
    rows = torch.arange(2)
    torch.testing.assert_close(r.curves["y"][:, 0], p[rows, lime.target], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(r.curves["y"][:, -1], p[2, lime.target], rtol=1e-5, atol=1e-6)


def test_segments_of_a_text_models_inputs_point_to_its_words():
    from whybox.errors import InvalidParameterError

    class FakeText(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.sum((1, 2)).unsqueeze(1).expand(-1, 2)

    ad = whybox.adapt(FakeText())
    ad.tokenizer = object()  # what marks a text adapter
    with pytest.raises(InvalidParameterError, match="a text model's features are its words"):
        whybox.explain(ad, torch.rand(1, 4, 3), "lime", features="segments")
    with pytest.raises(InvalidInputError, match=r"features='segments' cuts 1-D signals \(B, C, L\) or sequences"):
        whybox.explain(nn.Linear(4, 2), torch.rand(2, 4), "lime", features="segments")


def test_a_layer_with_a_channels_last_output_on_a_signal_is_named():
    m = cnn1d()
    with pytest.raises(LayerError, match="outputs shape"):
        whybox.explain(m, signals(), "gradcam", layer="6")  # Flatten: (B, 6)


# ---------------------------------------------------------------------------------------------- plot
def test_plot_draws_each_rows_map_along_time_under_its_channels():
    pytest.importorskip("matplotlib")
    import numpy as np

    from whybox.report.overlay import to_heatmap

    x = signals()
    e = whybox.explain(cnn1d(), x, "occlusion")
    assert e.meta["signal"] is True
    fig = e.plot(x, rows=[0, 2])
    axes = fig.axes
    assert len(axes) == 2
    band = axes[1].images[0].get_array()
    np.testing.assert_allclose(band, to_heatmap(e.attributions[2].sum(0).view(1, -1), reading="signed"))
    lines = axes[1].get_lines()
    assert len(lines) == C
    np.testing.assert_allclose(lines[1].get_ydata(), x[2, 1].numpy().astype(np.float64))
    with pytest.raises(InvalidInputError, match=r"explained signals \(B, C, L\)"):
        e.plot(x[:2])


def test_methods_for_signals_are_the_image_methods():
    assert whybox.methods("signal") == whybox.methods("image")


def test_a_signals_report_picture_puts_each_time_step_under_its_place_in_the_map():
    """The run report draws a signal across the picture's whole width (no margins), so that a (1, L) map resized to
    the picture lies under the time steps it belongs to: a lone spike is drawn where its time step's map is."""
    import numpy as np

    from whybox.runs.report_data import signal_picture

    sig = np.zeros((1, 40))
    sig[0, 29] = 1.0
    pic = signal_picture(sig, height=50, width=200)
    assert pic.shape == (50, 200, 3) and pic.min() >= 0.0 and pic.max() <= 1.0
    top = pic[:8].mean(2).min(0)  # the spike reaches the top band of the picture; the flat line stays low
    drawn = np.flatnonzero(top < 0.9)
    centre = (29 + 0.5) / 40 * 200  # where a (1, 40) map's column 29 lands when resized to 200 pixels
    assert drawn.size and abs(drawn.mean() - centre) < 3


def test_localisation_metrics_take_time_step_masks_for_signals() -> None:
    """Ground truth for a signal is the class's time steps, masks (B, L) (or (B, 1, L)): the pointing game measures
    the distance along time, relevance mass and rank read the channel-summed map, with the model or without; the
    same numbers as the signal laid out as a one-row image."""
    model = cnn1d()
    x = torch.rand(3, 2, 40, generator=torch.Generator().manual_seed(1))
    a = torch.zeros(3, 2, 40, dtype=torch.float64)
    a[0, 0, 5], a[0, 1, 5] = 1.0, 0.5  # peak at t=5 (channels summed: 1.5), 13 steps before the mask
    a[0, 0, 30] = -2.0
    a[1, 1, 22] = 3.0  # peak at t=22, on the mask
    a[1, 0, 10] = 1.0
    a[2, :, 35] = 1.0  # peak at t=35, 10 steps after the mask
    masks = torch.zeros(3, 40, dtype=torch.bool)
    masks[:, 18:26] = True
    for m in (model, None):
        for given in (masks, masks[:, None]):
            assert whybox.evaluate(m, x, a, "pointing_game", masks=given, tolerance=12).scores.tolist() == [0, 1, 1]
            assert whybox.evaluate(m, x, a, "pointing_game", masks=given, tolerance=0).scores.tolist() == [0, 1, 0]
            # the default: the paper's 15 px of 224 as a share of the 40 steps (2.68 steps); 15 steps hit all three
            by_default = whybox.evaluate(m, x, a, "pointing_game", masks=given)
            assert by_default.scores.tolist() == [0, 1, 0] and by_default.meta["tolerance"] == 15 * 40 / 224
            mass = whybox.evaluate(m, x, a, "relevance_mass", masks=given).scores
            assert mass.tolist() == [0.0, 0.75, 0.0]  # positive relevance inside / all positive relevance
        image = (x[:, :, None, :], a[:, :, None, :], masks[:, None, :])  # (B, C, 1, L), masks (B, 1, L)
        for metric in ("relevance_rank", "energy_pointing_game"):
            got = whybox.evaluate(m, x, a, metric, masks=masks).scores
            torch.testing.assert_close(got, whybox.evaluate(None, image[0], image[1], metric, masks=image[2]).scores)
    with pytest.raises(
        InvalidInputError,
        match=r"masks must have shape \(3, 40\) or \(3, 1, 40\) for signals \(3, 2, 40\) \(the time steps of the "
        r"class\); got \(3, 39\)\.$",
    ):
        whybox.evaluate(model, x, a, "pointing_game", masks=masks[:, :39])


def test_to_map_of_a_signal_combines_its_channels_at_each_time_step():
    """to_map() gave a signal's (B, C, L) attributions back as they were, whatever reduce said (even a bad one)."""
    model = cnn1d()
    x = torch.rand(3, 2, 40, generator=torch.Generator().manual_seed(2))
    e = whybox.explain(model, x, "saliency", abs=False)
    a = e.attributions
    assert torch.equal(e.to_map(), a.sum(1)) and torch.equal(e.to_map("max_abs"), a.abs().amax(1))
    torch.testing.assert_close(e.to_map("mean"), a.mean(1))
    with pytest.raises(whybox.InvalidParameterError, match=r"^reduce must be one of"):
        e.to_map("bogus")
