"""whybox's CAM family vs pytorch-grad-cam (jacobgil/pytorch-grad-cam, ATTRIBUTION.md §2, §5).

Same model (eval mode), same layer module, ``targets=[ClassifierOutputTarget(c)]`` per row; our default
``normalize="minmax"``, ``upsample=True`` against their float32 ``(B, H, W)`` output.

Pipelines, and why they agree where the formulas match:
- theirs: raw map -> ReLU -> per-map min-max with +1e-7 in the denominator -> cv2.resize INTER_LINEAR
  (half-pixel centres) -> (aggregate) ReLU, mean over layers, min-max again with +1e-7.
- ours: raw map -> ReLU -> bilinear with half-pixel centres (align_corners=False) -> min-max.
  Bilinear resizing commutes with a positive affine rescaling and min-max is invariant to one, so
  minmax(resize(minmax(L))) = minmax(resize(L)); the two +1e-7 only matter for maps whose range is ~1e-7.
Differences by design, kept out of the comparison or made negligible:
- Grad-CAM++: their α denominator carries +1e-6 (ours none, α = 0 where the denominator is 0). The relative
  effect on α is ~1e-6 / (2 g²): 4e-4 on the final map at head_scale 10 (|g| 10th percentile 0.04, measured),
  so the gradient variants run with logits scaled by 100 (all of them but Grad-CAM++ are linear in g, hence
  unchanged by the scale after min-max; the Grad-CAM++ eps effect drops to ~4e-6). Score-CAM, whose channel
  softmax is not scale-invariant, runs on the unscaled logits.
- Several layers: both min-max each layer's map and average, but pytorch-grad-cam scales at the layer's
  resolution and then resizes (so a resized layer map need not span [0, 1]), while we upsample first and then
  scale (each layer map spans exactly [0, 1]). Single-layer maps agree (the final min-max undoes the order);
  averaged maps differ by design (measured max |diff| 0.02-0.09 on these models), so the multi-layer test rebuilds
  their order of operations from our per-layer raw maps and checks that, plus our own order.
- XGrad-CAM: their +1e-7 on Σ_ab A_ab^k (sums here are O(1..100): relative 1e-9 or less).
- Score-CAM: their masks use nn.UpsamplingBilinear2d (align_corners=True), matched with
  ``mask_align_corners=True`` (our default is half-pixel); ε = 1e-8 in the mask scaling as ours; raw logits
  under ClassifierOutputTarget and a softmax over channels = our ``score="logit", weighting="softmax"``.
  They collect scores as float32 (``torch.Tensor(list)``), hence atol 1e-4 rather than 1e-6.
- Constant or all-negative maps: theirs silently become zeros; ours zeros plus ``meta["degenerate"]`` (the
  cases below are chosen so that the maps are not degenerate, which is asserted).
- pytorch-grad-cam calls ``model.eval()`` in its constructor and never restores the mode; the models here are
  already in eval mode, so the comparison does not depend on it.

pytorch-grad-cam imports torchvision at load time; where torchvision is missing or does not match the
installed torch, this module is skipped with the import error (torchvision is never stubbed).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

try:
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
except (ImportError, OSError, RuntimeError) as err:  # torchvision missing or built for another torch
    pytest.skip(
        f"pytorch_grad_cam cannot be imported ({type(err).__name__}: {err}); it imports torchvision at load "
        "time, so install a torchvision build that matches this torch to run the pytorch-grad-cam comparisons",
        allow_module_level=True,
    )

from whybox.explainers.cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM, XGradCAM

from ._models import DigitsCNN, SmallCNN, build, images

ATOL = 1e-4

PAIRS = {
    # ours, theirs, our options that make the two comparable
    "gradcam": (GradCAM, "GradCAM", {}),
    "gradcam_pp": (GradCAMPlusPlus, "GradCAMPlusPlus", {}),
    "xgradcam": (XGradCAM, "XGradCAM", {}),
    "layercam": (LayerCAM, "LayerCAM", {}),  # gamma=None: pytorch-grad-cam omits the paper's tanh
    "hirescam": (HiResCAM, "HiResCAM", {}),
    "scorecam": (ScoreCAM, "ScoreCAM", {"mask_align_corners": True, "weighting": "softmax", "score": "logit"}),
}

# name: (model class, seed, input shape, layers); the same weights at two logit scales (see Grad-CAM++ above)
CASES = {
    "small": (SmallCNN, 40, (3, 3, 16, 16), ("act2", "pool2")),
    "digits": (DigitsCNN, 41, (3, 1, 8, 8), ("act2", "pool")),
}
HEAD_SCALE = {"gradient": 100.0, "scorecam": 1.0}


@pytest.fixture(scope="module", params=list(CASES))
def case(request: pytest.FixtureRequest):
    cls, seed, shape, layers = CASES[request.param]
    models = {k: build(cls, seed=seed, head_scale=v) for k, v in HEAD_SCALE.items()}
    x = images(shape, seed=42)
    with torch.no_grad():
        pred = models["scorecam"](x).argmax(1)  # a positive scale changes no argmax
    return models, x, pred, layers


def pick(models: dict[str, torch.nn.Module], name: str) -> torch.nn.Module:
    return models["scorecam" if name == "scorecam" else "gradient"]


def theirs(name: str, model: torch.nn.Module, layers: list[str], x: torch.Tensor, target: torch.Tensor | None):
    cls = getattr(pgc, PAIRS[name][1])
    targets = None if target is None else [ClassifierOutputTarget(int(c)) for c in target]
    with cls(model=model, target_layers=[model.get_submodule(lay) for lay in layers]) as cam:
        out = cam(input_tensor=x, targets=targets)
    model.zero_grad(set_to_none=True)  # pytorch-grad-cam backpropagates into the weights
    return torch.from_numpy(np.asarray(out))


def ours(name: str, model: torch.nn.Module, layers: list[str], x: torch.Tensor, target: torch.Tensor | None):
    cls, _, kwargs = PAIRS[name]
    exp = cls(model, layer=layers if len(layers) > 1 else layers[0], normalize="minmax", **kwargs).explain(x, target)
    assert not any(exp.meta["degenerate"]), "a degenerate map would make the comparison vacuous"
    return exp.attributions[:, 0]


@pytest.mark.parametrize("which", [0, 1])
@pytest.mark.parametrize("name", list(PAIRS))
def test_cam_matches_pytorch_grad_cam(case, name: str, which: int) -> None:
    models, x, pred, layers = case
    model, layer = pick(models, name), [layers[which]]
    a = ours(name, model, layer, x, pred)
    b = theirs(name, model, layer, x, pred)
    assert a.shape == b.shape == (x.shape[0], *x.shape[-2:])
    torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def _minmax(m: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    flat = m.flatten(1)
    lo = flat.amin(1).view(-1, *[1] * (m.ndim - 1))
    return (m - lo) / ((m - lo).flatten(1).amax(1).view(-1, *[1] * (m.ndim - 1)) + eps)


@pytest.mark.parametrize("name", ["gradcam", "gradcam_pp", "layercam", "scorecam"])
def test_multi_layer_mean_vs_pytorch_grad_cam(case, name: str) -> None:
    """Several layers: min-max each, average, min-max again; theirs scales before resizing, ours after."""
    models, x, pred, layers = case
    model = pick(models, name)
    cls, _, kwargs = PAIRS[name]
    size = tuple(x.shape[-2:])
    raw = [
        cls(model, layer=lay, normalize="none", upsample=False, **kwargs).explain(x, pred).attributions
        for lay in layers
    ]
    up = [F.interpolate(r, size=size, mode="bilinear", align_corners=False) for r in raw]
    their_order = _minmax(sum(F.interpolate(_minmax(r), size=size, mode="bilinear") for r in raw) / len(raw))
    our_order = _minmax(sum(_minmax(u) for u in up) / len(up))
    got_theirs = theirs(name, model, list(layers), x, pred)
    got_ours = ours(name, model, list(layers), x, pred)
    torch.testing.assert_close(got_theirs, their_order[:, 0], atol=ATOL, rtol=0)
    torch.testing.assert_close(got_ours, our_order[:, 0], atol=1e-6, rtol=0)
    # the order matters here (4x4 and 8x8 maps resized to the input): a real, by-design difference
    assert (got_ours - got_theirs).abs().max() > 1e-3


def test_default_target_is_argmax_in_both(case) -> None:
    """targets=None: pytorch-grad-cam takes the per-row argmax of the raw output, as our target=None does."""
    models, x, _, layers = case
    model = pick(models, "gradcam")
    torch.testing.assert_close(
        ours("gradcam", model, [layers[0]], x, None), theirs("gradcam", model, [layers[0]], x, None), atol=ATOL, rtol=0
    )


@pytest.mark.parametrize("name", ["gradcam", "hirescam", "xgradcam", "scorecam"])
def test_other_class_targets(case, name: str) -> None:
    """A non-predicted class per row (maps still non-degenerate for these rows: asserted in ``ours``)."""
    models, x, pred, layers = case
    model = pick(models, name)
    other = (pred + 1) % (5 if x.shape[1] == 3 else 10)
    torch.testing.assert_close(
        ours(name, model, [layers[0]], x, other), theirs(name, model, [layers[0]], x, other), atol=ATOL, rtol=0
    )
