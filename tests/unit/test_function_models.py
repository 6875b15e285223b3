"""A plain function ``inputs -> scores (B, K)`` is a model: a black box (a NumPy model, a remote scorer, a lambda
around a model that takes more arguments). Properties: every method that needs only the outputs gives the numbers
it gives on the equivalent module; a differentiable torch function takes the gradient methods too; a NumPy one is
refused by them naming why; bad outputs and what a function cannot do (layers, randomisation) are named."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import whybox
from whybox.errors import InvalidParameterError, LayerError, ModelOutputError, NotDifferentiableError


def linear() -> nn.Linear:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Linear(6, 3).double().eval()


def rows() -> torch.Tensor:
    return torch.rand(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def numpy_model(model: nn.Linear):
    w, b = model.weight.detach().numpy().copy(), model.bias.detach().numpy().copy()

    def score(x: torch.Tensor) -> np.ndarray:
        return x.detach().cpu().numpy() @ w.T + b

    return score


@pytest.mark.parametrize("method", ["kernel_shap", "exact_shapley", "lime", "occlusion", "shapley_sampling", "lima"])
def test_a_numpy_function_gets_the_modules_attributions(method: str) -> None:
    model, x = linear(), rows()
    want = whybox.explain(model, x, method).attributions
    got = whybox.explain(numpy_model(model), x, method)
    torch.testing.assert_close(got.attributions.to(want.dtype), want, rtol=1e-6, atol=1e-9)
    assert got.meta["n_forward"] == whybox.explain(model, x, method).meta["n_forward"]


def test_metrics_score_a_function_as_the_module() -> None:
    model, x = linear(), rows()
    e = whybox.explain(model, x, "kernel_shap")
    for metric in ("deletion", "mufidelity", "random_logit"):
        want = whybox.evaluate(model, x, e, metric).scores
        torch.testing.assert_close(whybox.evaluate(numpy_model(model), x, e, metric).scores, want)


def test_a_torch_function_takes_the_gradient_methods_and_extra_arguments() -> None:
    """A lambda closing over a model that needs a second argument: differentiable, so IG runs (complete)."""
    model, x = linear(), rows()
    shift = torch.full((1, 6), 0.25, dtype=torch.float64)

    def two_inputs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return model(a + b)

    e = whybox.explain(lambda t: two_inputs(t, shift), x, "integrated_gradients")
    # the same path as the module's IG from the baseline `shift` to x + shift
    base = shift.expand_as(x).clone()
    want = whybox.explain(model, x + shift, "integrated_gradients", baseline=base, target=e.target)
    torch.testing.assert_close(e.attributions, want.attributions)
    assert float(e.meta["delta_rel"].max()) < 1e-6  # a linear function: IG is exact


def test_what_a_function_cannot_do_is_named() -> None:
    model, x = linear(), rows()
    with pytest.raises(
        NotDifferentiableError,
        match=r"the function returns NumPy values, not torch tensors\), so 'saliency' cannot run; use 'rise', 'lima' or a perturbation method \(they need only the outputs\)\.$",
    ):
        whybox.explain(numpy_model(model), x, "saliency")
    w = model.weight.detach().numpy().T.copy()
    for method in ("saliency", "integrated_gradients", "smoothgrad"):  # np.asarray(x): torch's numpy() error before
        with pytest.raises(NotDifferentiableError) as err:
            whybox.explain(lambda t: np.asarray(t) @ w, x, method)
        assert str(err.value) == (
            f"FunctionModel turns its inputs into NumPy arrays, so no gradient reaches them and {method!r} cannot "
            "run; use 'rise', 'lima' or a perturbation method (they need only the outputs)."
        )
    with pytest.raises(
        ModelOutputError, match=r"the function '<lambda>' returned str of dtype <U4; return class scores"
    ):
        whybox.explain(lambda t: "oops", x, "occlusion")
    with pytest.raises(InvalidParameterError, match=r"kind='embedding' takes a torch.nn.Module"):
        whybox.adapt(numpy_model(model), kind="embedding")
    cnn = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )
    images = torch.rand(2, 3, 8, 8)
    with pytest.raises(LayerError, match=r"a function has no layers to read: pass the torch.nn.Module itself"):
        whybox.explain(lambda t: cnn(t), images, "gradcam")
    e = whybox.explain(lambda t: cnn(t), images, "rise", n_masks=32)  # RISE needs only the outputs
    with pytest.raises(InvalidParameterError, match=r"no layer with weights to randomise \(a function: pass the"):
        whybox.evaluate(lambda t: cnn(t), images, e, "randomization")
    with pytest.raises(InvalidParameterError, match=r"a function inputs -> scores \(B, K\)"):
        whybox.adapt(42)


def test_a_run_of_a_function_resumes_only_for_the_same_function_and_data(tmp_path: object) -> None:
    """The weights fingerprint of a function: its code and what it closes over (arrays, tensors, modules)."""
    from whybox.runs.job import Job, fingerprints

    x, job = rows(), Job(methods=("occlusion",))

    def scorer(w: np.ndarray):
        def score(t: torch.Tensor) -> np.ndarray:
            return t.detach().numpy() @ w

        return score

    w = np.arange(18, dtype=np.float64).reshape(6, 3)
    digest = fingerprints(job, whybox.adapt(scorer(w)), x, [], None)["weights"]
    assert fingerprints(job, whybox.adapt(scorer(w.copy())), x, [], None)["weights"] == digest
    assert fingerprints(job, whybox.adapt(scorer(w + 1)), x, [], None)["weights"] != digest
    assert fingerprints(job, whybox.adapt(lambda t: t.detach().numpy() @ w), x, [], None)["weights"] != digest


def test_a_model_file_may_return_a_function(tmp_path: object) -> None:
    from pathlib import Path

    from whybox.runs.loaders import load_model

    path = Path(str(tmp_path)) / "black_box.py"
    path.write_text("import numpy as np\n\ndef make():\n    return lambda t: t.detach().numpy()[:, :3] * 2.0\n")
    lm = load_model(f"{path}:make")
    e = whybox.explain(lm.module, rows(), "occlusion")
    assert e.attributions.shape == (4, 6) and float(e.attributions[:, 3:].abs().max()) == 0.0  # unread columns: 0


def test_a_function_returning_a_tuple_or_dict_is_selected_from_by_output() -> None:
    model, x = linear(), rows()
    want = whybox.explain(model, x, "occlusion").attributions
    with pytest.raises(ModelOutputError, match=r"pass output= to adapt\(\)"):
        whybox.explain(lambda t: {"logits": model(t), "hidden": t}, x, "occlusion")
    for fn, output in ((lambda t: {"logits": model(t), "hidden": t}, "logits"), (lambda t: (model(t), t), 0)):
        got = whybox.explain(whybox.adapt(fn, output=output), x, "occlusion").attributions
        torch.testing.assert_close(got, want)
