"""Metrics that re-run the explanation's method (max_sensitivity, stability, random_logit, randomization) run it with
the options it was made with, also those ``params`` can only describe: a tensor fill or baseline, a feature mask, a
callable. Before, they re-ran it with the description (``fill='tensor(4,)'``), which every explainer refused, so
none of these metrics could be computed for text explanations (their fill and word features are tensors).

The property: with zero perturbations, max-sensitivity re-explains the very same inputs, so it is exactly 0 when the
method re-runs as it was and not 0 when an option is lost (the default fill gives other attributions)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import whybox

B, F, N = 3, 6, 2


def model_and_rows() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(F, 8), nn.Tanh(), nn.Linear(8, 3)).double().eval()
        x = torch.randn(B, F, dtype=torch.float64)
        fill = torch.randn(F, dtype=torch.float64)  # e.g. the training means
    return model, x, fill


def assert_zero(t: torch.Tensor) -> None:
    """Zero up to rounding: the re-run batches rows differently (Kernel SHAP's regression sums in another order)."""
    torch.testing.assert_close(t, torch.zeros_like(t), atol=1e-12, rtol=0)


def sensitivity(model: nn.Module, x: torch.Tensor, e: whybox.Explanation, **opts: object) -> torch.Tensor:
    zero = torch.zeros(N, F, dtype=torch.float64)
    return whybox.evaluate(model, x, e, "max_sensitivity", n_samples=N, deltas=zero, **opts).scores


@pytest.mark.parametrize(
    ("method", "opts"),
    [
        ("occlusion", {}),
        ("kernel_shap", {"n_samples": 64}),
        ("feature_ablation", {"features": torch.tensor([0, 0, 1, 1, 2, 2])}),
    ],
)
def test_a_tensor_fill_is_what_the_metric_re_runs_with(method: str, opts: dict, tmp_path: Path) -> None:
    model, x, fill = model_and_rows()
    e = whybox.explain(model, x, method, fill=fill, **opts)
    assert e.meta["described_options"] == sorted(["fill", *opts.keys()] if "features" in opts else ["fill"])
    assert isinstance(e.params["fill"], str) and torch.equal(e.options["fill"], fill)
    assert_zero(sensitivity(model, x, e))
    # the same explanation without its fill re-runs with the default fill: other attributions
    rest = {k: v for k, v in e.options.items() if k != "fill"}
    bare = whybox.Explanation(e.attributions, e.target, e.method, {**e.params, "fill": "zero"}, {}, rest)
    assert bool((sensitivity(model, x, bare) > 1e-6).all())
    # saved and loaded, the tensor options come back
    path = e.save(tmp_path / "e.safetensors")
    back = whybox.Explanation.load(path)
    assert set(back.options) == set(e.options)
    for k, v in e.options.items():
        assert torch.equal(back.options[k], torch.as_tensor(v))
    assert_zero(sensitivity(model, x, back))
    # rows of an explanation keep them
    assert_zero(sensitivity(model, x[:2], e[:2]))


def test_a_callable_fill_is_asked_for_after_a_save(tmp_path: Path) -> None:
    model, x, fill = model_and_rows()

    def means(rows: torch.Tensor) -> torch.Tensor:
        return fill.expand_as(rows)

    e = whybox.explain(model, x, "occlusion", fill=means)
    assert e.options["fill"] is means
    assert_zero(sensitivity(model, x, e))
    back = whybox.Explanation.load(e.save(tmp_path / "e.safetensors"))
    assert back.options == {} and back.meta["described_options"] == ["fill"]
    with pytest.raises(
        whybox.InvalidParameterError,
        match=r"this metric re-runs 'occlusion' with the explanation's options, but fill='means' is only a "
        r"description of what was given \(a callable or a module is not saved with an explanation\)\. Pass the value "
        r"again: "
        r"explainer_params=\{'fill': \.\.\.\}\.",
    ):
        sensitivity(model, x, back)
    again = sensitivity(model, x, back, explainer_params={"fill": means})
    assert_zero(again)


def test_plain_options_are_not_described() -> None:
    model, x, _ = model_and_rows()
    e = whybox.explain(model, x, "occlusion", fill="mean", window=(2,), stride=[1])
    assert e.options == {} and "described_options" not in e.meta


def test_an_option_given_as_none_is_the_default_it_resolved_to(tmp_path: Path) -> None:
    """batch_size=None (what the command line passes without --batch-size) resolves to 64 in params; it was kept as a
    described option, so stability on a saved explanation (whybox evaluate --explanation) asked for it again."""
    model, x, _ = model_and_rows()
    e = whybox.explain(model, x, "lime", n_samples=40, batch_size=None, alpha=None)
    assert e.options == {} and "described_options" not in e.meta and e.params["batch_size"] == 64
    e.save(tmp_path / "e.safetensors")
    loaded = whybox.Explanation.load(tmp_path / "e.safetensors")
    got = whybox.evaluate(model, x, loaded, "stability", n_runs=2)
    torch.testing.assert_close(got.scores, whybox.evaluate(model, x, e, "stability", n_runs=2).scores)


def test_a_cam_layer_named_by_a_string_survives_a_save(tmp_path: Path) -> None:
    """A CAM records layer="2" as the list ["2"], which names the same layer: not a described option, so a loaded
    explanation re-runs with it (it used to be refused as if a callable had been lost)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        cnn = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()  # fmt: skip
        x = torch.rand(2, 3, 8, 8)
    for layer in ("2", ["2", "0"]):
        e = whybox.explain(cnn, x, "gradcam", layer=layer)
        assert e.options == {} and "described_options" not in e.meta
        back = whybox.Explanation.load(e.save(tmp_path / "cam.safetensors"))
        here = whybox.evaluate(cnn, x, e, "max_sensitivity", n_samples=2, radius=0.01).scores
        torch.testing.assert_close(
            whybox.evaluate(cnn, x, back, "max_sensitivity", n_samples=2, radius=0.01).scores, here
        )


@pytest.mark.parametrize("kind", ["numpy", "pandas"])
def test_an_array_or_series_fill_is_saved_as_the_tensor_the_explainer_read(kind: str, tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    model, x, fill = model_and_rows()
    given = fill.numpy() if kind == "numpy" else pd.Series(fill.numpy(), index=[f"c{i}" for i in range(F)])
    e = whybox.explain(model, x, "occlusion", fill=given)
    back = whybox.Explanation.load(e.save(tmp_path / "e.safetensors"))
    assert torch.equal(back.options["fill"], fill)
    assert_zero(sensitivity(model, x, back))
