"""Model-parameter randomisation and the random-logit test: the user's model is never touched, model-independent
explainers fail the check, linear models decorrelate, and Quantus' MPRT gives the same per-layer values."""

from __future__ import annotations

import copy
import hashlib
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

import whybox
from whybox.metrics.base import spearman
from whybox.metrics.randomization import _reinit, execution_layers, map_similarities

from ._models import Linear, cnn1, randn, seeded


def sobel(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A model-independent 'explainer': the gradient magnitude of the input image."""
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=x.dtype).view(1, 1, 3, 3)
    g = x.sum(1, keepdim=True)
    gx = torch.nn.functional.conv2d(g, kx, padding=1)
    gy = torch.nn.functional.conv2d(g, kx.transpose(2, 3), padding=1)
    return (gx**2 + gy**2).sqrt()


def _fingerprint(model: nn.Module) -> tuple:
    h = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]
    return h, [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()], hooks


def test_randomization_never_touches_the_users_model() -> None:
    model = cnn1()
    model.train()
    model[0].weight.requires_grad_(False)
    before = _fingerprint(model)
    state = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    x = randn(2, 1, 8, 8, seed=1)
    e = whybox.explain(model, x, "saliency", target=0)
    assert model.training  # explain restores the user's mode
    r = whybox.evaluate(model, x, e, "randomization")
    assert _fingerprint(model) == before
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert torch.equal(torch.get_rng_state(), rng)
    assert r.meta["layers"] == ["5", "2", "0"]  # top down, execution order
    assert all(r.curves[k].shape == (2, 3) for k in ("spearman_abs", "spearman", "ssim", "hog"))


def test_randomization_seeds_the_cpu_generator_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """fork_rng(devices=[]) restores the CPU generator alone, so an accelerator's generator must not be seeded:
    torch.manual_seed would seed CUDA's (and queue a lazy call where CUDA is not initialised)."""
    model, x = cnn1(), randn(2, 1, 8, 8, seed=1)
    e = whybox.explain(model, x, "saliency", target=0)
    calls: list[str] = []
    for mod in (torch.cuda, torch.xpu, torch.mtia):
        monkeypatch.setattr(mod, "manual_seed_all", lambda s, _m=mod.__name__: calls.append(_m))
    with_seed = whybox.evaluate(model, x, e, "randomization", seed=3)
    assert calls == []
    monkeypatch.undo()
    fresh = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)  # Quantus' rule: the CPU draws are the same
        fresh[5].reset_parameters()
    mine = copy.deepcopy(model)
    _reinit(mine[5], 3)
    assert torch.equal(fresh[5].weight, mine[5].weight) and not torch.equal(mine[5].weight, model[5].weight)
    assert with_seed.meta["layers"] == ["5", "2", "0"]


def test_model_independent_explainer_scores_one_at_every_layer_and_fails() -> None:
    model, x = cnn1(), randn(3, 1, 8, 8, seed=2)
    a = sobel(model, x, torch.zeros(3))
    r = whybox.evaluate(model, x, a, "randomization", target=0, explainer=sobel)
    for key in ("spearman_abs", "spearman", "ssim"):
        torch.testing.assert_close(r.curves[key], torch.ones(3, 3, dtype=torch.float64))
    torch.testing.assert_close(r.scores, torch.ones(3, dtype=torch.float64))
    assert r.higher_is_better is False
    assert torch.isnan(r.curves["hog"]).all()  # 8 x 8 maps are smaller than three 16-pixel HOG cells


def test_one_layer_linear_gradient_decorrelates_after_one_step() -> None:
    w = seeded(lambda: torch.randn(4, 64, dtype=torch.float64), 3)
    model = seeded(lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 4, bias=False).double()), 0)
    with torch.no_grad():
        model[1].weight.copy_(w)
    x = randn(2, 1, 8, 8, seed=4, dtype=torch.float64)
    e = whybox.explain(model, x, "saliency", target=[0, 2], abs=False)
    r = whybox.evaluate(model, x, e, "randomization", order="cascading")
    assert r.meta["layers"] == ["1"]
    assert bool((r.curves["spearman"].abs() < 0.4).all()), r.curves["spearman"]
    ind = whybox.evaluate(model, x, e, "randomization", order="independent")
    torch.testing.assert_close(ind.curves["spearman"], r.curves["spearman"])


def test_layers_follow_execution_order_not_registration_order() -> None:
    class Swapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(4, 3)
            self.body = nn.Linear(6, 4)
            self.norm = nn.LayerNorm(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.norm(self.body(x)))

    model = seeded(Swapped, 0)
    assert [n for n, _ in execution_layers(model, torch.zeros(1, 6))] == ["body", "head"]
    assert [n for n, _ in execution_layers(model, torch.zeros(1, 6), include_norm=True)] == ["body", "norm", "head"]


def test_similarities_of_identical_maps_are_one() -> None:
    a = randn(2, 3, 20, 20, seed=5).abs()
    sims = map_similarities(a, a.clone())
    for k in ("spearman_abs", "spearman", "ssim"):
        torch.testing.assert_close(sims[k], torch.ones(2, dtype=torch.float64))


def test_similarities_asked_for_alone_are_the_same_as_with_all() -> None:
    """``which`` only picks what is computed (the signed Spearman alone skips the |.| maps): every subset gives
    the same values, in the same order."""
    from itertools import combinations

    from whybox.metrics.randomization import SIMILARITIES

    a, b = randn(3, 1, 40, 40, seed=7), randn(3, 1, 40, 40, seed=8)
    b[2] = a[2] * 2.0 - 0.1  # one row rank-identical in sign, not in |.|
    full = map_similarities(a, b, hog_cell=8)
    assert list(full) == list(SIMILARITIES)
    for n in range(1, len(SIMILARITIES) + 1):
        for which in combinations(SIMILARITIES, n):
            part = map_similarities(a, b, hog_cell=8, which=which)
            assert list(part) == list(which)
            for k in which:
                torch.testing.assert_close(part[k], full[k], rtol=0, atol=0, equal_nan=True)


@pytest.mark.filterwarnings("ignore::UserWarning:quantus")
def test_cascading_randomization_agrees_with_quantus_mprt(quantus) -> None:
    """Same model (registration order = execution order, no norm layers), same explainer (whybox saliency), same
    re-initialisation rule (reset_parameters under manual_seed(seed + 1)), Spearman of |a| without our 99th
    percentile clip (Quantus normalises by the max only): per-layer values agree."""
    model, x = cnn1(seed=2), randn(4, 1, 8, 8, seed=6)
    y = model(x).argmax(1)

    def explain_func(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, **_: object) -> np.ndarray:
        t = torch.as_tensor(inputs)
        return whybox.explain(model, t, "saliency", target=torch.as_tensor(targets)).attributions.numpy()

    a = explain_func(model, x.numpy(), y.numpy())
    mprt = quantus.MPRT(
        similarity_func=quantus.similarity_func.correlation_spearman,
        layer_order="top_down",
        seed=42,
        abs=True,
        normalise=True,
        disable_warnings=True,
        display_progressbar=False,
    )
    q = mprt(
        model=model,
        x_batch=x.numpy(),
        y_batch=y.numpy(),
        a_batch=a,
        explain_func=explain_func,
        explain_func_kwargs={},
        device="cpu",
        channel_first=True,
    )
    r = whybox.evaluate(
        model, x, torch.from_numpy(a), "randomization", target=y, explainer="saliency", seed=42, clip_percentile=None
    )
    assert r.meta["layers"] == [k for k in q if k != "original"]
    for i, layer in enumerate(r.meta["layers"]):
        np.testing.assert_allclose(r.curves["spearman_abs"][:, i].numpy(), np.asarray(q[layer]), atol=1e-9)


# ------------------------------------------------------------------------------------------ random logit
def test_random_logit_of_an_input_as_map_explainer_is_one() -> None:
    model, x = cnn1(), randn(3, 1, 8, 8, seed=7)

    def as_map(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return inputs.clone()

    r = whybox.evaluate(model, x, x.clone(), "random_logit", target=0, explainer=as_map)
    torch.testing.assert_close(r.scores, torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(r.meta["spearman"], torch.ones(3, dtype=torch.float64))
    assert bool((r.meta["other_class"] != 0).all())


def test_random_logit_of_a_linear_model_gradient_is_the_weights_correlation() -> None:
    g = torch.Generator().manual_seed(8)
    w = torch.randn(5, 16, generator=g, dtype=torch.float64)
    x = torch.randn(4, 16, generator=g, dtype=torch.float64)
    e = whybox.explain(Linear(w), x, "saliency", target=[0, 1, 2, 3], abs=False)
    r = whybox.evaluate(Linear(w), x, e, "random_logit", similarity="spearman")
    other = r.meta["other_class"]
    assert bool((other != torch.tensor([0, 1, 2, 3])).all()) and bool(((other >= 0) & (other < 5)).all())
    expected = spearman(w[[0, 1, 2, 3]], w[other])
    torch.testing.assert_close(r.scores, expected)
    again = whybox.evaluate(Linear(w), x, e, "random_logit", similarity="spearman")
    assert torch.equal(again.meta["other_class"], other)  # seeded


def test_random_logit_on_tabular_maps_defaults_to_the_signed_spearman_and_refuses_ssim() -> None:
    """SSIM and HOG compare 2-D maps: on tabular attributions the default score is the signed Spearman (the same
    values as asking for it), and asking for SSIM is an error that names the alternatives, not a row of NaNs."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(4, 12, generator=g, dtype=torch.float64)
    x = torch.randn(5, 12, generator=g, dtype=torch.float64)
    e = whybox.explain(Linear(w), x, "saliency", abs=False)
    r = whybox.evaluate(Linear(w), x, e, "random_logit")
    assert r.meta["similarity"] == "spearman"
    assert bool(torch.isfinite(r.scores).all())
    torch.testing.assert_close(r.scores, whybox.evaluate(Linear(w), x, e, "random_logit", similarity="spearman").scores)
    assert bool(torch.isnan(r.meta["ssim"]).all())  # reported as undefined, never the score
    for bad in ("ssim", "hog"):
        with pytest.raises(
            whybox.InvalidParameterError,
            match=rf"similarity='{bad}' compares 2-D maps and needs image attributions \(B, C, H, W\); got "
            r"attributions of shape \(5, 12\)\. Use similarity='spearman'",
        ):
            whybox.evaluate(Linear(w), x, e, "random_logit", similarity=bad)
    with pytest.raises(whybox.InvalidParameterError, match=r"similarity='ssim' compares 2-D maps"):
        whybox.evaluate(Linear(w), x, e, "randomization", similarity="ssim")


def test_random_logit_on_images_defaults_to_ssim() -> None:
    model, x = cnn1(), randn(3, 1, 8, 8, seed=4)
    e = whybox.explain(model, x, "saliency")
    r = whybox.evaluate(model, x, e, "random_logit")
    assert r.meta["similarity"] == "ssim"
    torch.testing.assert_close(r.scores, r.meta["ssim"])
    assert bool(torch.isfinite(r.scores).all())


def test_random_logit_draws_every_other_class_uniformly() -> None:
    from whybox.metrics.base import derive_generator
    from whybox.metrics.randomization import _LOGIT_KEY

    draws = [int(torch.randint(0, 4, (1,), generator=derive_generator(0, _LOGIT_KEY, i))) for i in range(2000)]
    counts = np.bincount(draws, minlength=4)
    assert counts.min() > 400  # uniform over the K - 1 = 4 offsets


@pytest.mark.filterwarnings("ignore::UserWarning:quantus")
def test_random_logit_agrees_with_quantus_on_its_own_draws(quantus) -> None:
    """Quantus' RandomLogit draws the other class with np.random under its seed; replayed here and given as
    other_class, with the same explainer (whybox saliency, signed) and Spearman of the raw maps on both sides
    (Quantus' abs and normalise off), the scores agree. (Quantus' default SSIM runs on the flattened maps, whybox's
    on the 2-D ones: not compared.)"""
    from quantus.functions.similarity_func import correlation_spearman

    k = 10
    model = cnn1(seed=3, classes=k)
    x = randn(6, 1, 8, 8, seed=11)
    y = model(x).argmax(1)

    def explain_func(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, **_: object) -> np.ndarray:
        t = torch.as_tensor(inputs)
        return whybox.explain(model, t, "saliency", target=torch.as_tensor(targets), abs=False).attributions.numpy()

    a = explain_func(model, x.numpy(), y.numpy())
    rl = quantus.RandomLogit(
        num_classes=k, seed=42, similarity_func=correlation_spearman, abs=False, normalise=False,
        disable_warnings=True, display_progressbar=False,
    )  # fmt: skip
    q = np.asarray(rl(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a, explain_func=explain_func,
                      explain_func_kwargs={}, device="cpu", channel_first=True))  # fmt: skip
    np.random.seed(42)  # Quantus' draw: an index into each row's classes without its target
    pick = np.random.randint(0, k - 1, x.shape[0])
    others = np.array([np.delete(np.arange(k), t)[i] for t, i in zip(y.tolist(), pick, strict=True)])
    r = whybox.evaluate(
        model, x, a, "random_logit", target=y, explainer="saliency", explainer_params={"abs": False},
        similarity="spearman", other_class=others,
    )  # fmt: skip
    assert r.meta["other_class"].tolist() == others.tolist()
    np.testing.assert_allclose(r.scores.numpy(), q, atol=1e-9)


def test_random_logit_other_class_is_checked_and_costs_no_clean_pass() -> None:
    model, x = cnn1(seed=2), randn(3, 1, 8, 8, seed=6)
    a = whybox.explain(model, x, "saliency", target=[0, 1, 2])
    r = whybox.evaluate(model, x, a, "random_logit", other_class=[1, 2, 0])
    assert r.meta["other_class"].tolist() == [1, 2, 0] and r.meta["n_forward"] == 3  # the explainer's rows alone
    assert whybox.evaluate(model, x, a, "random_logit").meta["n_forward"] == 6  # the draw needs the class count
    b = whybox.explain(model, x, "saliency", target=[1, 2, 0]).attributions
    torch.testing.assert_close(r.meta["spearman"], map_similarities(a.attributions, b)["spearman"])
    with pytest.raises(whybox.WhyboxError, match=r"other_class must differ from the target; rows \[1\]"):
        whybox.evaluate(model, x, a, "random_logit", other_class=[2, 1, 0])
    with pytest.raises(whybox.WhyboxError, match=r"other_class: target=10 is out of range for a model with 10"):
        whybox.evaluate(model, x, a, "random_logit", other_class=10)
    with pytest.raises(whybox.WhyboxError, match=r"other_class: target must hold integer class indices"):
        whybox.evaluate(model, x, a, "random_logit", other_class=[1.0, 2.0, 0.0])
    with pytest.raises(whybox.WhyboxError, match=r"shape \(3,\); got shape \(2,\)"):
        whybox.evaluate(model, x, a, "random_logit", other_class=[1, 2])
    with pytest.raises(whybox.WhyboxError, match=r"other_class: target=-1 is out of range"):
        whybox.evaluate(model, x, a, "random_logit", other_class=-1)
    with pytest.raises(whybox.WhyboxError, match=r"other_class must be an int .* not a callable"):
        whybox.evaluate(model, x, a, "random_logit", other_class=lambda s: s[:, 0])


def test_sequential_names_in_ordered_dict_models() -> None:
    model = seeded(lambda: nn.Sequential(OrderedDict(a=nn.Linear(3, 3), act=nn.ReLU(), b=nn.Linear(3, 2))), 0)
    x = randn(2, 3, seed=9)
    e = whybox.explain(model, x, "saliency", target=0, abs=False)
    r = whybox.evaluate(model, x, e, "randomization", reduce="last")
    assert r.meta["layers"] == ["b", "a"]
    torch.testing.assert_close(r.scores, r.curves["spearman_abs"][:, -1])


def test_a_layer_given_as_a_module_is_the_copys_layer_of_that_name() -> None:
    """randomization re-runs Grad-CAM on a copy of the model: a layer= given as the user's module (and LIMA's prior
    layer inside prior_options) becomes the copy's module of the same name, so the scores are those of layer='2'
    (it was 'layer=Conv2d module is not part of the model'), and the user's model is untouched."""
    model = cnn1()
    before = _fingerprint(model)
    x = randn(2, 1, 8, 8, seed=3)
    by_name = whybox.evaluate(model, x, whybox.explain(model, x, "gradcam", layer="2"), "randomization")
    by_module = whybox.evaluate(model, x, whybox.explain(model, x, "gradcam", layer=model[2]), "randomization")
    torch.testing.assert_close(by_module.scores, by_name.scores)
    lima = whybox.explain(model, x, "lima", regions="prior", prior_options={"layer": model[2]}, n_regions=4)
    assert torch.isfinite(whybox.evaluate(model, x, lima, "randomization").scores).all()
    assert _fingerprint(model) == before
