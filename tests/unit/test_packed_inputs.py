"""Torch models of several inputs, ``model(image, metadata)``: ``whybox.adapt(model, input_shapes=...)`` packs each
sample's inputs into one row, so every tabular method and metric applies; the numbers are those of the model on its
own inputs (captum's tuple inputs for the gradient methods, a hand-written two-player Shapley value for exact
Shapley over whole inputs), and misfits get errors naming the fix."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import whybox
from whybox.errors import InvalidInputError, InvalidParameterError
from whybox.explanation import Explanation
from whybox.models.packed import InputPacking


class ImageAndMeta(nn.Module):
    """An image branch and a metadata branch joined before the head, as multimodal classifiers are."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.meta = nn.Linear(5, 4)
        self.head = nn.Linear(8, 3)

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.conv(image).relu().mean((2, 3)), self.meta(meta).tanh()], 1))


class ByKeyword(ImageAndMeta):
    def forward(self, *, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(image, meta)


def _data() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return ImageAndMeta().eval(), torch.randn(4, 3, 6, 6), torch.randn(4, 5)


@pytest.mark.parametrize("method", ["saliency", "input_x_gradient", "integrated_gradients"])
def test_gradient_methods_give_each_input_captums_tuple_input_attributions(method: str) -> None:
    captum = pytest.importorskip("captum.attr")
    model, img, meta = _data()
    clf = whybox.adapt(model, input_shapes=[(3, 6, 6), (5,)])
    opts = {"n_steps": 32} if method == "integrated_gradients" else {}
    e = whybox.explain(clf, (img, meta), method, **opts)
    peer_cls = {
        "saliency": captum.Saliency,
        "input_x_gradient": captum.InputXGradient,
        "integrated_gradients": captum.IntegratedGradients,
    }[method]
    peer_opts = opts  # saliency: |gradient| on both sides by default
    peer_inputs = (img.clone().requires_grad_(True), meta.clone().requires_grad_(True))  # captum warns otherwise
    want = peer_cls(model).attribute(peer_inputs, target=e.target, **peer_opts)
    got = clf.packing.unpack(e.attributions)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        assert torch.allclose(g, w, atol=1e-6, rtol=1e-5)


def test_exact_shapley_over_whole_inputs_is_the_two_player_shapley_value() -> None:
    """features=packing.input_groups() makes each input one player: phi_image = (v(image) - v(none) + v(both) -
    v(meta)) / 2 with an absent input set to zero, computed here by calling the model on its own inputs."""
    model, img, meta = _data()
    clf = whybox.adapt(model, input_shapes=[(3, 6, 6), (5,)])
    e = whybox.explain(clf, (img, meta), "exact_shapley", features=clf.packing.input_groups())
    t = e.target
    with torch.no_grad():
        v = {
            (a, b): model(img * a, meta * b).gather(1, t.view(-1, 1)).squeeze(1).double()
            for a, b in itertools.product((0, 1), repeat=2)
        }
    phi_img = (v[1, 0] - v[0, 0] + v[1, 1] - v[0, 1]) / 2
    phi_meta = (v[0, 1] - v[0, 0] + v[1, 1] - v[1, 0]) / 2
    assert torch.allclose(e.meta["values"][:, :2], torch.stack([phi_img, phi_meta], 1), atol=1e-6)
    a_img, a_meta = clf.packing.unpack(e.attributions)  # each input's value painted on all its features
    assert torch.allclose(a_img.amax((1, 2, 3)).double(), phi_img, atol=1e-6)
    assert torch.allclose(a_meta.amin(1).double(), phi_meta, atol=1e-6)


def test_a_keyword_model_takes_a_mapping_a_tuple_in_order_or_packed_rows_alike() -> None:
    _, img, meta = _data()
    torch.manual_seed(0)
    model = ByKeyword().eval()
    clf = whybox.adapt(model, input_shapes={"image": (3, 6, 6), "meta": (5,)})
    by_name = whybox.explain(clf, {"meta": meta, "image": img}, "kernel_shap", n_samples=300)
    in_order = whybox.explain(clf, (img, meta), "kernel_shap", n_samples=300)
    packed = whybox.explain(clf, clf.packing.pack(image=img, meta=meta), "kernel_shap", n_samples=300)
    assert torch.equal(by_name.attributions, in_order.attributions)
    assert torch.equal(by_name.attributions, packed.attributions)
    parts = clf.packing.unpack_named(by_name.attributions)
    assert isinstance(parts, dict) and parts["image"].shape == img.shape and parts["meta"].shape == meta.shape
    assert by_name.meta["input_shapes"] == {"image": [3, 6, 6], "meta": [5]}


def test_metrics_take_the_inputs_as_a_tuple_and_the_model_comes_back_as_it_was(tmp_path: object) -> None:
    model, img, meta = _data()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    clf = whybox.adapt(model, input_shapes=[(3, 6, 6), (5,)])
    e = whybox.explain(clf, (img, meta), "saliency")
    for metric in ("deletion", "insertion", "mufidelity", "randomization"):
        got = whybox.evaluate(clf, (img, meta), e, metric).scores
        want = whybox.evaluate(clf, clf.packing.pack(img, meta), e, metric).scores
        assert torch.allclose(got, want, equal_nan=True), metric
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    path = tmp_path / "e.safetensors"  # type: ignore[operator]
    e.save(path)
    loaded = Explanation.load(path)
    parts = InputPacking(loaded.meta["input_shapes"]).unpack(loaded.attributions)
    assert [tuple(p.shape) for p in parts] == [tuple(img.shape), tuple(meta.shape)]


def test_misfit_inputs_and_shapes_get_errors_that_name_the_fix() -> None:
    model, img, meta = _data()
    clf = whybox.adapt(model, input_shapes=[(3, 6, 6), (5,)])
    cases = [
        ((img, meta[:2]), r"the inputs disagree on the batch size: input 0 has 4 rows, input 1 2"),
        ((img, meta, meta), r"inputs must be a tuple of the model's 2 inputs, shaped \(B, \*s\) for s in"),
        ((img[:, :2], meta), r"input 0 must have shape \(B, \*\(3, 6, 6\)\) .*; got \(4, 2, 6, 6\)"),
        ((img, meta.long()), r"input 1 has dtype torch.int64; packed inputs are attributed, so they must be floating"),
        (img, r"packed rows must have shape \(B, 113\) .*got \(4, 3, 6, 6\)\. Pass the inputs as a tuple"),
    ]
    for inputs, match in cases:
        with pytest.raises(InvalidInputError, match=match):
            whybox.explain(clf, inputs, "saliency")
    with pytest.raises(
        InvalidInputError, match=r"for a model of several inputs, adapt it with their per-sample shapes"
    ):
        whybox.explain(nn.Linear(5, 2), (meta, meta), "saliency")
    # a forward that needs arguments whybox would not pass is refused before any call (it was a raw TypeError)
    for model_, shapes, match in (
        (model, None, r"ImageAndMeta.forward also needs meta, which whybox does not pass: it calls the model with one "
         r"tensor \(B, ...\). For several inputs explained together, adapt\(model, input_shapes=\[...\]\)"),
        (model, [(3, 6, 6)], r"ImageAndMeta.forward also needs meta, .* 1 tensor \(input_shapes\)"),
        (ByKeyword(), [(3, 6, 6), (5,)], r"ByKeyword.forward also needs image, meta"),
        (ByKeyword(), {"image": (3, 6, 6)}, r"ByKeyword.forward also needs meta, .* Name every input in input_shapes"),
    ):  # fmt: skip
        with pytest.raises(InvalidParameterError, match=match):
            whybox.explain(whybox.adapt(model_, input_shapes=shapes), img, "saliency")
    with pytest.raises(
        InvalidInputError, match=r"A model of several inputs \(adapt\(input_shapes=...\)\) is explained"
    ):
        whybox.explain(clf, (img, meta), "rise")
    for shapes, match in (
        ([], r"input_shapes must list one per-sample shape per model input"),
        ([(3, 0, 6), (5,)], r"input_shapes\[0\] must be one sample's shape"),
        ({"image": "3x6x6"}, r"input_shapes\['image'\] must be one sample's shape"),
    ):
        with pytest.raises(InvalidParameterError, match=match):
            whybox.adapt(model, input_shapes=shapes)
    with pytest.raises(InvalidParameterError, match=r"input_shapes applies to a torch.nn.Module of several inputs"):
        whybox.adapt(lambda x: x, input_shapes=[(2,), (3,)])


class Viewing(nn.Module):
    """Flattens its image with .view, which a channels-last tensor refuses."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3 * 6 * 6 + 5, 3)

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return self.lin(torch.cat([image.view(image.shape[0], -1), meta], 1))


def test_image_inputs_go_channels_last_on_the_cpu_unless_the_model_refuses_them() -> None:
    """The unpacked images reach the model channels-last (faster convolutions, the same numbers as the contiguous
    tensors give); a model whose .view refuses that layout gets the default one, with the same numbers."""
    model, img, meta = _data()
    seen: list[bool] = []
    model.conv.register_forward_pre_hook(
        lambda m, a: seen.append(a[0].is_contiguous(memory_format=torch.channels_last))
    )
    clf = whybox.adapt(model, input_shapes=[(3, 6, 6), (5,)])
    e = whybox.explain(clf, (img, meta), "feature_ablation", features=clf.packing.input_groups())
    assert seen and all(seen)
    with torch.no_grad():
        full = model(img, meta).gather(1, e.target.view(-1, 1)).squeeze(1)
        no_meta = model(img, torch.zeros_like(meta)).gather(1, e.target.view(-1, 1)).squeeze(1)
    assert torch.allclose(clf.packing.unpack(e.attributions)[1].amin(1), full - no_meta, atol=1e-6)
    torch.manual_seed(0)
    viewing = Viewing().eval()
    vclf = whybox.adapt(viewing, input_shapes=[(3, 6, 6), (5,)])
    got = whybox.explain(vclf, (img, meta), "integrated_gradients", n_steps=16).attributions

    def flat(x: torch.Tensor) -> torch.Tensor:  # the same model on rows, written by hand
        return viewing(x[:, :108].reshape(-1, 3, 6, 6), x[:, 108:])

    want = whybox.explain(flat, torch.cat([img.flatten(1), meta], 1), "integrated_gradients", n_steps=16)
    assert vclf.packing._channels_last is False
    assert torch.allclose(got, want.attributions, atol=1e-6)


def test_a_packed_explanation_names_its_features_by_input_and_position() -> None:
    """plot() named the packed features x0 ... x112; they are named by the input they belong to and their index in
    it, from meta["input_shapes"] (so a saved explanation plots alike)."""
    packing = InputPacking({"image": (3, 6, 6), "meta": (5,)})
    assert [packing.feature_name(j) for j in (0, 1, 6, 36, 107, 108, 112)] == [
        "image[0,0,0]", "image[0,0,1]", "image[0,1,0]", "image[1,0,0]", "image[2,5,5]", "meta[0]", "meta[4]",
    ]  # fmt: skip
    assert InputPacking([(2,), (3,)]).feature_name(4) == "input 1[2]"
    with pytest.raises(InvalidParameterError, match=r"feature index must be in \[0, 113\); got 113"):
        packing.feature_name(113)
    two = whybox.adapt(nn.Bilinear(3, 4, 2), input_shapes=[(3,), (4,)])  # no image: bars over every feature
    gen = torch.Generator().manual_seed(0)
    e = whybox.explain(two, (torch.randn(2, 3, generator=gen), torch.randn(2, 4, generator=gen)), "saliency")
    ax = e.plot(top=4).axes[0]
    order = e.attributions[0].abs().argsort(descending=True)[:4].tolist()
    assert [t.get_text() for t in ax.get_yticklabels()] == [two.packing.feature_name(j) for j in order]


def test_a_packed_explanation_with_an_image_plots_its_map_beside_the_other_inputs_bars() -> None:
    """With an image among the inputs, plot() draws per row the image's map over it and bars for the other inputs'
    values, each panel titled with its input's share of the row's |attribution|."""
    model, img, meta = _data()
    clf = whybox.adapt(model, input_shapes=[(3, 6, 6), (5,)])
    e = whybox.explain(clf, (img, meta), "integrated_gradients")
    fig = e.plot((img, meta), rows=[0, 1], top=3)
    axes = fig.axes
    assert len(axes) == 4 and axes[0].images and not axes[1].images
    a_img, a_meta = clf.packing.unpack(e.attributions)
    for k, r in enumerate((0, 1)):
        bars = axes[2 * k + 1]
        order = a_meta[r].abs().argsort(descending=True)[:3].tolist()
        assert [t.get_text() for t in bars.get_yticklabels()] == [
            f"input 1[{j}] = {float(meta[r, j]):.4g}" for j in order
        ]
        share = float(a_img[r].abs().sum() / e.attributions[r].abs().sum())
        assert axes[2 * k].get_title().endswith(f"input 0: {share:.0%} of |attribution|")
        assert bars.get_title().endswith(f"input 1: {1 - share:.0%} of |attribution|")
    with pytest.raises(InvalidInputError, match=r"inputs must be the explained inputs: a tuple"):
        e.plot(img)


def test_an_input_of_one_number_per_sample_has_the_empty_shape() -> None:
    """model(x, age) with age (B,): input_shapes {"age": ()}; it unpacks to (B,), is named by its name alone, and
    Integrated Gradients' completeness holds over both inputs."""

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor, age: torch.Tensor) -> torch.Tensor:
            return self.lin(x) * age.view(-1, 1)

    torch.manual_seed(0)
    clf = whybox.adapt(Scaled(), input_shapes={"x": (4,), "age": ()})
    x, age = torch.randn(3, 4), torch.rand(3) + 0.5
    e = whybox.explain(clf, {"x": x, "age": age}, "integrated_gradients", n_steps=64)
    a_x, a_age = clf.packing.unpack(e.attributions)
    assert a_x.shape == (3, 4) and a_age.shape == (3,)
    assert float(e.meta["delta_rel"].max()) < 1e-5
    assert clf.packing.feature_name(4) == "age" and clf.packing.n_features == 5


def test_perturbation_methods_cut_a_packed_image_in_squares_and_exact_shapley_takes_whole_inputs() -> None:
    """features='auto' on packed rows with an image: the image in squares of ceil(min(H, W) / 8) pixels shared by its
    channels and every other value its own feature (LIME, Kernel SHAP, LIMA: 64 + 5 features for a 3 x 16 x 16 image
    and 5 values, not 773 single values); exact Shapley over the inputs themselves (2 players)."""
    torch.manual_seed(0)
    model = ImageAndMeta().eval()
    img, meta = torch.randn(2, 3, 16, 16), torch.randn(2, 5)
    clf = whybox.adapt(model, input_shapes=[(3, 16, 16), (5,)])
    ids = clf.packing.region_groups()
    assert ids.unique().numel() == 64 + 5
    square = ids[:768].view(3, 16, 16)
    assert torch.equal(square[0], square[2]) and square[0, 0, 0] == square[0, 1, 1] != square[0, 0, 2]
    assert ids[768:].tolist() == [64, 65, 66, 67, 68]
    for method in ("lime", "kernel_shap", "feature_ablation"):
        auto = whybox.explain(clf, (img, meta), method)
        given = whybox.explain(clf, (img, meta), method, features=ids)
        assert torch.equal(auto.attributions, given.attributions), method
    lima = whybox.explain(clf, (img, meta), "lima")
    assert lima.meta["n_regions"] == [69, 69]
    exact = whybox.explain(clf, (img, meta), "exact_shapley")
    assert exact.meta["n_features"] == [2, 2]


@pytest.mark.parametrize("method", ["gradcam", "gradcam_pp", "xgradcam", "layercam", "hirescam"])
def test_gradient_cams_map_the_image_input_as_the_image_model_alone_maps_it(method: str) -> None:
    """On packed rows a gradient CAM maps the one image input: every channel of a pixel carries the map the same
    layer gives on the image alone (the metadata held by a wrapper, the oracle), the other inputs 0; Score-CAM,
    which masks the input with its maps, and a model of two images are refused."""

    class ImageOnly(nn.Module):
        def __init__(self, net: nn.Module, meta: torch.Tensor) -> None:
            super().__init__()
            self.net, self.meta = net, meta

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.net(image, self.meta)

    model, img, meta = _data()
    clf = whybox.adapt(model, input_shapes=[(3, 6, 6), (5,)])
    e = whybox.explain(clf, (img, meta), method)
    want = whybox.explain(ImageOnly(model, meta), img, method, layer="net.conv")
    a_img, a_meta = clf.packing.unpack(e.attributions)
    assert e.meta["layer"] == ["conv"]
    for c in range(3):
        torch.testing.assert_close(a_img[:, c], want.attributions[:, 0], atol=1e-6, rtol=1e-5)
    assert torch.equal(a_meta, torch.zeros_like(a_meta))
    with pytest.raises(InvalidInputError, match=r"inputs for 'scorecam' must be images"):
        whybox.explain(clf, (img, meta), "scorecam")
    two = whybox.adapt(ImageAndMeta(), input_shapes=[(3, 6, 6), (3, 6, 6)])
    with pytest.raises(
        InvalidParameterError, match=r"maps the one image input of a model of several inputs; this one has 2"
    ):
        whybox.explain(two, (img, img), method)


def test_compare_s_default_methods_include_the_cams_of_the_image_input() -> None:
    """compare without --methods offered a model of several inputs the tabular methods only (no CAMs, and no line
    saying so), though the gradient CAMs map its image input; Score-CAM, which masks images, stays out."""
    from whybox.cli.jobs import methods_for

    model, _, _ = _data()
    names = methods_for("tabular", whybox.adapt(model, input_shapes=[(3, 6, 6), (5,)]))
    cams = {"gradcam", "gradcam_pp", "hirescam", "layercam", "xgradcam"}
    assert cams <= set(names) and "scorecam" not in names
    assert set(whybox.methods("tabular")) <= set(names)
    no_image = methods_for("tabular", whybox.adapt(nn.Bilinear(3, 4, 2), input_shapes=[(3,), (4,)]))
    assert no_image == whybox.methods("tabular")


def test_a_reference_given_per_input_is_packed_as_captums_tuple_baselines_are() -> None:
    """baseline= / fill= as a tuple (or mapping) of per-input tensors, captum's convention, was refused with a dump
    of the tensors; it is packed like the inputs: IG equals captum's with the same tuple baselines, a per-sample
    tuple equals its one packed row, and feature ablation's fill likewise."""
    captum = pytest.importorskip("captum.attr")
    model, img, meta = _data()
    clf = whybox.adapt(model, input_shapes=[(3, 6, 6), (5,)])
    base = (torch.full_like(img, 0.5), torch.ones_like(meta))
    e = whybox.explain(clf, (img, meta), "integrated_gradients", baseline=base, n_steps=32)
    want = captum.IntegratedGradients(model).attribute(
        (img, meta), baselines=base, target=e.target, n_steps=32, method="gausslegendre"
    )
    for g, w in zip(clf.packing.unpack(e.attributions), want, strict=True):
        torch.testing.assert_close(g, w.to(g.dtype), rtol=1e-5, atol=1e-6)
    row = (torch.full((3, 6, 6), 0.5), torch.ones(5))
    one = whybox.explain(clf, (img, meta), "integrated_gradients", baseline=row, n_steps=32)
    torch.testing.assert_close(one.attributions, e.attributions)
    groups = clf.packing.input_groups()
    by_name = whybox.adapt(ByKeyword(), input_shapes={"image": (3, 6, 6), "meta": (5,)})
    named = whybox.explain(by_name, {"image": img, "meta": meta}, "feature_ablation", features=groups,
                           fill={"meta": torch.ones(5), "image": torch.full((3, 6, 6), 0.5)})  # fmt: skip
    packed = whybox.explain(by_name, {"image": img, "meta": meta}, "feature_ablation", features=groups,
                            fill=clf.packing.pack(*(t.unsqueeze(0) for t in row))[0])  # fmt: skip
    torch.testing.assert_close(named.attributions, packed.attributions)
