"""Every bad input gives a WhyboxError subclass (and the builtin it resembles) whose message names the
parameter or value and says what to do instead (RELIABILITY.md "The model", STYLE.md habits 3-5)."""

from __future__ import annotations

import functools
import math
import re
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import whybox
from whybox.errors import (
    InvalidInputError,
    InvalidParameterError,
    InvalidTargetError,
    LayerError,
    ModelOutputError,
    NotDifferentiableError,
    UnderdeterminedWarning,
    UnknownNameError,
    WhyboxError,
    did_you_mean,
)
from whybox.explainers.base import GradientExplainer
from whybox.explainers.cam.base import CAM

METHODS = whybox.methods("image")
GRADIENT_METHODS = [m for m in METHODS if issubclass(whybox.get_explainer(m), GradientExplainer)]
CAM_METHODS = [m for m in METHODS if issubclass(whybox.get_explainer(m), CAM)]


@pytest.fixture
def model(make_cnn: Callable[..., nn.Module]) -> nn.Module:
    return make_cnn()


@pytest.fixture
def x(gen: torch.Generator) -> torch.Tensor:
    return torch.rand(2, 3, 12, 12, generator=gen)


def _raises(exc: type[BaseException], builtin: type[BaseException], match: str, fn: Callable[[], Any]) -> str:
    with pytest.raises(exc, match=match) as info:
        fn()
    assert isinstance(info.value, WhyboxError)
    assert isinstance(info.value, builtin)
    return str(info.value)


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (InvalidParameterError, ValueError),
        (InvalidInputError, ValueError),
        (InvalidTargetError, ValueError),
        (UnknownNameError, KeyError),
        (LayerError, ValueError),
        (ModelOutputError, TypeError),
        (NotDifferentiableError, TypeError),
    ],
)
def test_error_tree_subclasses_the_builtin(cls: type[Exception], builtin: type[Exception]) -> None:
    assert issubclass(cls, WhyboxError) and issubclass(cls, builtin)
    assert issubclass(WhyboxError, Exception) and not issubclass(WhyboxError, (ValueError, TypeError, KeyError))


def test_unknown_name_error_prints_without_keyerror_quotes() -> None:
    assert str(UnknownNameError("method='x' is not known.")) == "method='x' is not known."


# ------------------------------------------------------------------------------------------ inputs
@pytest.mark.parametrize("method", METHODS)
def test_one_dimensional_input(method: str, model: nn.Module) -> None:
    _raises(
        InvalidInputError,
        ValueError,
        r"inputs must have a leading batch dimension \(B, \.\.\.\); got shape \(5,\)\. Add one with inputs\[None\]",
        lambda: whybox.explain(model, torch.rand(5), method),
    )


@pytest.mark.parametrize("method", CAM_METHODS)
def test_unbatched_image_to_a_cam(method: str, model: nn.Module, x: torch.Tensor) -> None:
    _raises(
        InvalidInputError,
        ValueError,
        rf"inputs for '{method}' must be images of shape \(B, C, H, W\) or signals \(B, C, L\); got shape "
        r"\(3, 12, 12\)\. If this is one \(C, H, W\) image, add the batch dimension with inputs\.unsqueeze\(0\)\. "
        r"It also takes 1-D signals \(B, C, L\) for a model with an nn\.Conv1d\.",
        lambda: whybox.explain(model, x[0], method),
    )


@pytest.mark.parametrize("method", [*CAM_METHODS, "rise"])
def test_rows_to_an_image_method_point_to_the_tabular_methods(method: str) -> None:
    _raises(
        InvalidInputError,
        ValueError,
        rf"inputs for '{method}' must be images of shape \(B, C, H, W\) or signals \(B, C, L\); got shape \(4, 6\)\. "
        r"For rows of features "
        r"use a method of whybox\.methods\('tabular'\)\.$",
        lambda: whybox.explain(nn.Linear(6, 3), torch.rand(4, 6), method),
    )
    assert method not in whybox.methods("tabular")


@pytest.mark.parametrize("method", [m for m in METHODS if m not in CAM_METHODS])
def test_unbatched_image_names_the_batch_and_the_fix(method: str, model: nn.Module, x: torch.Tensor) -> None:
    """A (C, H, W) image reads as C samples of (H, W): either the method refuses it (WhyboxError pointing to
    unsqueeze(0)) or the model's own error reaches the user unchanged, with a note (Python >= 3.11) saying which
    batch shape the model got and the same fix."""
    with pytest.raises(Exception) as info:  # either kind: the property is about the message
        whybox.explain(model, x[0], method)
    err = info.value
    if isinstance(err, WhyboxError):
        if method == "exact_shapley":  # its cost check comes first: 144 pixel features of a (12, 12) sample
            assert "M=144 features" in str(err)
        else:
            assert "unsqueeze(0)" in str(err) and "(3, 12, 12)" in str(err)
        return
    assert "whybox" not in str(err)  # the model's message, as it raised it
    if not hasattr(err, "add_note"):
        pytest.skip("exception notes need Python >= 3.11")
    notes = getattr(err, "__notes__", [])
    assert len(notes) == 1, notes
    assert re.search(
        r"raised while running the model on a batch of shape \(\d+, 12, 12\), built from `inputs`\. whybox reads dim 0 of "
        r"inputs as the batch, so each sample has shape \(12, 12\)\. .*inputs\.unsqueeze\(0\)",
        notes[0],
    ), notes[0]


@pytest.mark.parametrize(
    ("inputs", "fix"),
    [
        ((2, 12, 12, 3), r"The model's first layer, Conv2d, reads 3 channels in dim 1; these samples look channels-last: "
                         r"pass inputs\.permute\(0, 3, 1, 2\)\.$"),
        ((2, 1, 12, 12), r"The model's first layer, Conv2d, reads 3 channels in dim 1; these samples have 1\.$"),
    ],
)  # fmt: skip
def test_images_with_other_channels_get_that_fix_not_the_batch_one(
    model: nn.Module, inputs: tuple[int, ...], fix: str
) -> None:
    """A channels-last batch (an (N, H, W, C) array) or a grayscale batch for an RGB model got the note's advice to add
    a batch dimension they already have; the note now names the first convolution's channel count and the fix."""
    if not hasattr(RuntimeError(), "add_note"):
        pytest.skip("exception notes need Python >= 3.11")
    with pytest.raises(RuntimeError) as info:  # the model's own error, its type and message kept
        whybox.explain(model, torch.rand(*inputs), "occlusion")
    (note,) = info.value.__notes__
    assert re.search(rf"each sample has shape {re.escape(str(inputs[1:]))}\. {fix}", note), note
    assert "unsqueeze" not in note


def test_a_model_s_own_error_on_a_4d_batch_gets_no_advice_to_add_a_batch_dimension() -> None:
    """Any error a model raised on a right-shaped (4, 1, 8, 8) batch got the note "add the batch dimension with
    inputs.unsqueeze(0)": only a 3-D batch can be one (C, H, W) sample read as a batch."""
    if not hasattr(RuntimeError(), "add_note"):
        pytest.skip("exception notes need Python >= 3.11")

    class Strict(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise KeyError("no such input field")

    with pytest.raises(KeyError) as info:
        whybox.explain(Strict(), torch.rand(4, 1, 8, 8), "occlusion")
    (note,) = info.value.__notes__
    assert note.endswith("so each sample has shape (1, 8, 8).") and "unsqueeze" not in note, note


def test_not_a_tensor(model: nn.Module) -> None:
    _raises(
        InvalidInputError,
        ValueError,
        r"inputs must be a torch\.Tensor, a numpy array or a pandas DataFrame with a leading batch dimension; got "
        r"list\. Convert with torch\.as_tensor",
        lambda: whybox.explain(model, [[0.0] * 4], "saliency"),
    )


def test_empty_batch(model: nn.Module) -> None:
    _raises(
        InvalidInputError,
        ValueError,
        r"no rows \(batch size 0\)",
        lambda: whybox.explain(model, torch.rand(0, 3, 12, 12), "saliency"),
    )


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_integer_input_to_a_gradient_method_points_to_the_embedding(method: str) -> None:
    emb = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 3))
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    _raises(
        InvalidInputError,
        ValueError,
        rf"inputs have integer dtype torch\.int64, which has no gradient; '{method}' needs float inputs\. "
        r"For token ids, attribute at the embedding layer",
        lambda: whybox.explain(emb, ids, method),
    )


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_names_the_rows(bad: float, model: nn.Module, x: torch.Tensor) -> None:
    x = x.clone()
    x[1, 0, 2, 2] = bad
    _raises(
        InvalidInputError,
        ValueError,
        r"inputs contain 1 non-finite values \(NaN or inf\) in rows \[1\]; clean or impute them",
        lambda: whybox.explain(model, x, "saliency"),
    )


# ------------------------------------------------------------------------------------------ targets
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bad", [5, -1, 99])
def test_target_out_of_range(method: str, bad: int, model: nn.Module, x: torch.Tensor) -> None:
    _raises(
        InvalidTargetError,
        ValueError,
        rf"target={bad} is out of range for a model with 5 outputs; use a class index in 0\.\.4, or target=None",
        lambda: whybox.explain(model, x, method, target=bad),
    )


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients", "gradcam", "scorecam"])
def test_target_tensor_out_of_range_names_the_bad_value(method: str, model: nn.Module, x: torch.Tensor) -> None:
    _raises(
        InvalidTargetError,
        ValueError,
        r"target=7 is out of range .* 0\.\.4",
        lambda: whybox.explain(model, x, method, target=torch.tensor([1, 7])),
    )


@pytest.mark.parametrize("bad", [1.5, 2.0, torch.tensor([1.0, 2.0])])
def test_float_target(bad: Any, model: nn.Module, x: torch.Tensor) -> None:
    _raises(
        InvalidTargetError,
        ValueError,
        r"target must hold integer class indices; got dtype torch\.float\d+\. Pass e\.g\. torch\.tensor\(\[3, 1\]\)",
        lambda: whybox.explain(model, x, "saliency", target=bad),
    )


@pytest.mark.parametrize("bad", ["cat", {"class": 1}, object()])
def test_target_of_no_known_form(bad: Any, model: nn.Module, x: torch.Tensor) -> None:
    _raises(
        InvalidTargetError,
        ValueError,
        r"target must be None, an int class index, one int per row \(a sequence or tensor\) or a callable scores "
        r"-> \(B,\); got (str 'cat'|dict \{'class': 1\}|object <object object at 0x[0-9a-f]+>)\.",
        lambda: whybox.explain(model, x, "saliency", target=bad),
    )


@pytest.mark.parametrize("bad", ["cat", ["cat", "dog"]])
def test_a_class_name_for_a_model_without_output_names_says_how_to_name_them(
    bad: Any, model: nn.Module, x: torch.Tensor
) -> None:
    _raises(
        InvalidTargetError,
        ValueError,
        r"A class name needs the model's output names: whybox\.adapt\(model, labels=\[\.\.\.\]\)",
        lambda: whybox.explain(model, x, "saliency", target=bad),
    )
    named = whybox.adapt(model, labels=["bird", "cat", "dog", "fish", "frog"])
    assert whybox.explain(named, x, "saliency", target=bad).target.tolist() == ([1, 1] if bad == "cat" else [1, 2])


def test_bool_target(model: nn.Module, x: torch.Tensor) -> None:
    _raises(
        InvalidTargetError,
        ValueError,
        r"target must be an int class index; got True",
        lambda: whybox.explain(model, x, "saliency", target=True),
    )


def test_target_with_wrong_length(model: nn.Module, x: torch.Tensor) -> None:
    _raises(
        InvalidTargetError,
        ValueError,
        r"one class per row, shape \(2,\); got shape \(3,\)",
        lambda: whybox.explain(model, x, "gradcam", target=torch.tensor([0, 1, 2])),
    )


@pytest.mark.parametrize("method", ["saliency", "smoothgrad", "gradcam", "occlusion"])
@pytest.mark.parametrize("target", [[0, 1, 2], (4, 0, 1), [3]], ids=["list", "tuple", "short"])
def test_sequence_target_with_wrong_length_is_refused_whatever_the_chunking(
    method: str, target: object, model: nn.Module, x: torch.Tensor
) -> None:
    # chunk by chunk (batch_size=1) a longer list must not be cut to the batch
    n = len(target)  # type: ignore[arg-type]
    _raises(
        InvalidTargetError,
        ValueError,
        rf"one class per row, shape \(2,\); got shape \({n},\)",
        lambda: whybox.explain(model, x, method, target=target, batch_size=1),
    )


def test_callable_target_with_wrong_output_shape(model: nn.Module, x: torch.Tensor) -> None:
    _raises(
        InvalidTargetError,
        ValueError,
        r"a callable target must map scores \(2, 5\) to shape \(2,\); it returned \(2, 5\)\. Return one scalar per row",
        lambda: whybox.explain(model, x, "saliency", target=lambda s: s),
    )


# ------------------------------------------------------------------------------------------ names and options
def test_unknown_method_lists_known_and_suggests(model: nn.Module, x: torch.Tensor) -> None:
    msg = _raises(
        UnknownNameError,
        KeyError,
        r"method='gradcma' is not a known explainer\. Did you mean 'gradcam'",
        lambda: whybox.explain(model, x, "gradcma"),
    )
    assert msg.endswith("Known explainers: " + ", ".join(whybox.methods()) + ".")
    _raises(
        UnknownNameError,
        KeyError,
        r"Known explainers: " + re.escape(", ".join(whybox.methods())),
        lambda: whybox.get_explainer("nope"),
    )


@pytest.mark.parametrize("method", METHODS)
def test_unknown_option_names_it_and_lists_the_options(method: str, model: nn.Module, x: torch.Tensor) -> None:
    msg = _raises(
        InvalidParameterError,
        ValueError,
        rf"'{method}' got an unknown option 'colour_map'\. Its options are: ",
        lambda: whybox.explain(model, x, method, colour_map="viridis"),
    )
    for common in ("batch_size", "mode", "seed"):
        assert common in msg.split("Its options are: ")[1]


def test_an_option_name_with_a_typo_gets_the_closest_name(model: nn.Module, x: torch.Tensor) -> None:
    """The keyword a typo missed is named, also where it is explain's or evaluate's own (target=, masks=)."""
    cases = [
        (
            lambda: whybox.explain(model, x, "integrated_gradients", steps=8),
            "'integrated_gradients'",
            "steps",
            "n_steps",
        ),
        (lambda: whybox.explain(model, x, "lime", n_sample=8), "'lime'", "n_sample", "n_samples"),
        (lambda: whybox.explain(model, x, "saliency", targets=1), "'saliency'", "targets", "target"),
        (lambda: whybox.evaluate(model, x, None, "sparseness", mask=1), "metric 'sparseness'", "mask", "masks"),
        (lambda: whybox.evaluate(model, x, None, "deletion", step=4), "metric 'deletion'", "step", "steps"),
    ]
    for call, what, typo, fix in cases:
        _raises(InvalidParameterError, ValueError,
                rf"^{what} got an unknown option '{typo}'\. Did you mean '{fix}'\? Its options are: ", call)  # fmt: skip
    _raises(InvalidParameterError, ValueError, r"^'saliency' got an unknown option 'zzz'\. Its options are: ",
            lambda: whybox.explain(model, x, "saliency", zzz=1))  # fmt: skip


def test_a_mistyped_choice_gets_the_closest_one(model: nn.Module, x: torch.Tensor) -> None:
    """Every "must be one of" of the common options ends with the closest choice, when one is close."""
    cases = [
        (lambda: whybox.explain(model, x, "lima", search="predictve"), "search", "predictive"),
        (lambda: whybox.explain(model, x, "lima", regions="grdi"), "regions", "grid"),
        (lambda: whybox.explain(model, x, "lima", map="ranks"), "map", "rank"),
        (lambda: whybox.explain(model, x, "integrated_gradients", method="gauss_legendre"), "method", "gausslegendre"),
        (lambda: whybox.explain(model, x, "occlusion", fill="blurr"), "fill", "blur"),
        (lambda: whybox.explain(model, x, "saliency", mode="asis"), "mode", "as_is"),
        (lambda: whybox.explain(model, x, "saliency", score="probs"), "score", "prob"),
    ]
    for call, name, fix in cases:
        _raises(InvalidParameterError, ValueError, rf"^{name} must be one of .* Did you mean '{fix}'\?$", call)
    _raises(InvalidParameterError, ValueError, r"got 'zzz'\.$", lambda: whybox.explain(model, x, "lima", search="zzz"))


def test_did_you_mean_offers_only_close_strings() -> None:
    assert did_you_mean("gird", ("grid", "auto")) == " Did you mean 'grid'?"
    assert did_you_mean("salincy", ("saliency", "saliency_x", "lime"), n=2) == " Did you mean 'saliency', 'saliency_x'?"
    assert did_you_mean("zzz", ("grid", "auto")) == ""
    assert did_you_mean(3, ("3", "grid")) == ""  # only a mistyped string gets a guess


def test_ig_quadrature_option_named_method_reaches_the_explainer(model: nn.Module, x: torch.Tensor) -> None:
    """IG's ``method=`` (the quadrature rule, captum's name) must not collide with explain()'s method."""
    e = whybox.explain(model, x, "integrated_gradients", method="riemann_left", n_steps=4)
    assert e.params["method"] == "riemann_left"
    _raises(
        InvalidParameterError,
        ValueError,
        r"method must be one of \('gausslegendre', .*'riemann_trapezoid', 'adaptive'\); got 'simpson'",
        lambda: whybox.explain(model, x, "integrated_gradients", method="simpson"),
    )


@pytest.mark.parametrize("method", CAM_METHODS)
def test_unknown_layer_suggests_close_names(method: str) -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()
            )
            self.head = nn.Linear(4, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(x).mean((2, 3)))

    _raises(
        LayerError,
        ValueError,
        r"layer='features\.33' is not a module of Net\. Did you mean 'features\.3'.*The last modules are: .*features\.3, head",
        lambda: whybox.explain(Net(), torch.rand(1, 3, 8, 8), method, layer="features.33"),
    )
    _raises(
        LayerError,
        ValueError,
        r"layer 'head' outputs shape \(1, 5\); CAM methods need \(B, C, h, w\)",
        lambda: whybox.explain(Net(), torch.rand(1, 3, 8, 8), method, layer="head"),
    )
    _raises(
        LayerError,
        ValueError,
        r"layer='features\.1@x': the part after '@' must be an integer",
        lambda: whybox.explain(Net(), torch.rand(1, 3, 8, 8), method, layer="features.1@x"),
    )


# ------------------------------------------------------------------------------------------ models
class ArgmaxOneHot(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(self.inner(x).argmax(1), 5).to(x.dtype)


class NoGrad(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.inner(x)


@pytest.mark.parametrize("wrapper", [ArgmaxOneHot, NoGrad])
@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_non_differentiable_torch_model(
    method: str, wrapper: type[nn.Module], model: nn.Module, x: torch.Tensor
) -> None:
    _raises(
        NotDifferentiableError,
        TypeError,
        rf"the scores of {wrapper.__name__} carry no gradient .*so '{method}' cannot run; use a perturbation method",
        lambda: whybox.explain(wrapper(model), x, method),
    )


@functools.cache
def _logistic_regression() -> Any:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    xs = rng.normal(size=(40, 4))
    return LogisticRegression().fit(xs, (xs[:, 0] > 0).astype(int))


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_sklearn_model_asked_for_a_gradient_method(method: str) -> None:
    lr = _logistic_regression()
    rows = torch.rand(3, 4, dtype=torch.float64)
    for m in (whybox.adapt(lr), lr):
        _raises(
            NotDifferentiableError,
            TypeError,
            rf"method '{method}' needs gradients, but LogisticRegression is not a differentiable torch model; "
            r"use a method that needs only the model's outputs: 'exact_shapley', 'feature_ablation', 'kernel_shap', "
            r"'lima', 'lime', 'occlusion', 'shapley_sampling'\.$",
            lambda m=m: whybox.explain(m, rows, method),
        )


@pytest.mark.parametrize("method", CAM_METHODS)
def test_sklearn_model_asked_for_a_cam(method: str) -> None:
    _raises(
        InvalidParameterError,
        ValueError,
        rf"method '{method}' taps a layer of a torch model; LogisticRegression has none\. Use a method that needs only "
        r"the model's outputs: 'occlusion'",  # (it named 'scorecam', itself a CAM)
        lambda: whybox.explain(_logistic_regression(), torch.rand(3, 4, dtype=torch.float64), method),
    )


@pytest.mark.parametrize(
    ("call", "space"),
    [
        (lambda m, x: whybox.explain(m, x, "lime", n_samples=20, score="prob"), "prob"),
        (lambda m, x: whybox.explain(m, x, "rise", n_masks=8, score="prob"), "prob"),
        (lambda m, x: whybox.explain(m, x, "kernel_shap", n_samples=200, score="log_prob"), "log_prob"),
        (lambda m, x: whybox.evaluate(m, x, "saliency", "deletion", score="prob"), "prob"),
        (lambda m, x: whybox.evaluate(m, x, "saliency", "mufidelity", n_samples=4, score="prob"), "prob"),
    ],
)
def test_probability_score_on_a_one_output_model(call: Callable[..., Any], space: str) -> None:
    """A softmax over one score is always 1: before, LIME gave all-zero weights (R^2 0) and deletion an AUC of
    exactly 1 for a regressor. A probability asked for by name is an error that names score='logit' (the
    default, None, reads the raw score there: the next tests)."""
    model, x = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 1)), torch.rand(2, 3, 6, 6)
    _raises(
        InvalidParameterError,
        ValueError,
        rf"score='{space}' needs a model with several outputs: this one gives K = 1 score per row \(a regressor, "
        r".*whose softmax is always 1\. Pass score='logit' to use the raw score",
        lambda: call(model, x),
    )


@pytest.mark.parametrize("score", [None, "logit"])
def test_a_regressor_explained_with_the_raw_score_gets_its_linear_terms(score: str | None) -> None:
    """LIME on a linear regressor, by default (which reads a one-output model's raw score, as lime's regression
    mode) and with the score='logit' the error names, with the column means as the fill, recovers each column's
    term coef_j (x_j - mean_j) (the exact Shapley values of a linear model)."""
    from sklearn.linear_model import Ridge

    gen = np.random.default_rng(0)
    xs = gen.normal(size=(200, 5))
    ridge = Ridge().fit(xs, xs @ np.array([3.0, -2.0, 0.5, 0.0, 1.0]) + 0.1 * gen.normal(size=200))
    opts = {} if score is None else {"score": score}
    e = whybox.explain(ridge, xs[:3], "lime", n_samples=400, fill=torch.tensor(xs.mean(0)), **opts)
    terms = torch.from_numpy(ridge.coef_ * (xs[:3] - xs.mean(0)))
    torch.testing.assert_close(e.attributions.double(), terms, atol=0.03 * float(terms.abs().max()), rtol=0)


def test_a_multi_output_regressor_is_explained_by_its_values_never_a_softmax_over_them() -> None:
    """Two regression targets are two unrelated values: the default score used to softmax them together (no error,
    since K = 2), so LIME explained exp(y_j) / (exp(y_0) + exp(y_1)). Now each target is its own value: LIME against
    the zero row recovers coef_jk x_k, a metric reads the value, and a probability named is refused naming predict."""
    from sklearn.linear_model import LinearRegression

    gen = np.random.default_rng(0)
    xs = gen.normal(size=(100, 3))
    ys = xs @ np.array([[3.0, 0.0], [-2.0, 1.0], [0.0, 4.0]])
    reg = LinearRegression().fit(xs, ys)
    for j in (0, 1):
        e = whybox.explain(reg, xs[:3], "lime", target=j, n_samples=400, fill="zero")
        terms = torch.from_numpy(reg.coef_[j] * xs[:3])
        torch.testing.assert_close(e.attributions.double(), terms, atol=0.03 * float(terms.abs().max()), rtol=0)
        assert e.params["score"] == "logit"
        r = whybox.evaluate(reg, xs[:3], e, "deletion", steps=3, fill="zero")
        assert r.params["score"] == "logit"
        pred = reg.predict(xs[:3])[:, j]
        assert r.curves["y"][:, 0].tolist() == pytest.approx(pred.tolist(), rel=1e-12)  # the unperturbed point
    for call in (
        lambda: whybox.explain(reg, xs[:3], "lime", score="prob"),
        lambda: whybox.evaluate(reg, xs[:3], "kernel_shap", "deletion", score="log_prob"),
    ):
        _raises(
            InvalidParameterError,
            ValueError,
            r"score='(log_)?prob' reads class probabilities, but the outputs of LinearRegression are predicted values "
            r"\(its predict, not predict_proba\): pass score='logit', or leave score out",
            call,
        )


@pytest.mark.parametrize(
    ("method", "metric"), [("lime", "deletion"), ("rise", "insertion"), ("lima", "mufidelity"), ("lime", "road")]
)
def test_the_default_score_is_the_probability_or_a_one_output_model_s_raw_score(method: str, metric: str) -> None:
    """score=None (the default of LIME, RISE, LIMA and every metric) is score='prob' on a model with several outputs
    and score='logit' on a model with one, bit for bit."""
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    fast = {"lime": {"n_samples": 30}, "rise": {"n_masks": 16}, "lima": {"regions": "grid", "n_regions": 4}}[method]
    extra = {"mufidelity": {"n_samples": 8}, "road": {"fractions": (0.25, 0.5)}}.get(metric, {})
    for k, named in ((1, "logit"), (3, "prob")):
        torch.manual_seed(k)
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, k)).double()
        e = whybox.explain(model, x.double(), method, **fast)
        e_named = whybox.explain(model, x.double(), method, score=named, **fast)
        assert e.params["score"] is None and torch.equal(e.attributions, e_named.attributions)
        r = whybox.evaluate(model, x.double(), e, metric, **extra)
        r_named = whybox.evaluate(model, x.double(), e, metric, score=named, **extra)
        assert torch.equal(r.scores, r_named.scores), (k, metric)


def test_a_baseline_that_does_not_fit_is_named_baseline(model: nn.Module, x: torch.Tensor) -> None:
    _raises(
        InvalidParameterError,
        ValueError,
        r"baseline tensor of shape \(5,\) does not broadcast to the inputs \(2, 3, 12, 12\)\.",
        lambda: whybox.explain(model, x[:2], "integrated_gradients", baseline=torch.zeros(5)),
    )


def test_kernel_shap_with_fewer_samples_than_unknowns_is_refused_before_any_pass() -> None:
    """With M features the efficiency constraint leaves M - 1 unknowns: fewer coalitions give an arbitrary
    (minimum-norm) solution, which used to come back with meta['cond'] = inf."""
    calls: list[int] = []
    model = nn.Linear(10, 3)
    model.register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[0]))
    _raises(
        InvalidParameterError,
        ValueError,
        r"kernel_shap with n_samples=5 cannot determine the values of M=10 features: the regression has 9 unknowns "
        r"and would get 5 coalitions \(its solution would be arbitrary\)\. Use n_samples >= 20",
        lambda: whybox.explain(model, torch.rand(2, 10), "kernel_shap", n_samples=5),
    )
    assert calls == []
    assert whybox.explain(model, torch.rand(2, 10), "kernel_shap", n_samples=9, paired=False).meta["cond"][0] < math.inf


def test_kernel_shap_warns_before_any_pass_when_paired_draws_leave_the_fit_undetermined() -> None:
    """A coalition and its complement give one equation once efficiency eliminates the last feature, so 11 to 21
    paired draws for 12 features came back as a minimum-norm guess without a word (0.08 off the exact values of a
    linear model, where 24 draws are exact). Now such a design warns, before any model call, naming the fix."""
    calls: list[int] = []
    torch.manual_seed(0)
    model = nn.Linear(12, 2).double()
    model.register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[0]))
    x = torch.randn(1, 12, dtype=torch.float64)
    exact = (model.weight[0] * x[0]).detach()  # Shapley values of a linear model from the zero fill
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnderdeterminedWarning)
        with pytest.raises(UnderdeterminedWarning, match=r"its 16 coalitions give \d+ independent equations for 11 "
                           r"unknowns \(a paired draw's complement adds no equation\).*Use n_samples >= 24"):  # fmt: skip
            whybox.explain(model, x, "kernel_shap", n_samples=16, target=0)
        assert calls == []
        e = whybox.explain(model, x, "kernel_shap", n_samples=24, target=0)  # no warning
    torch.testing.assert_close(e.meta["values"][0], exact, rtol=0, atol=1e-12)


def test_unsupported_model_type() -> None:
    _raises(
        InvalidParameterError,
        ValueError,
        r"model of type str is not supported; pass a torch\.nn\.Module",
        lambda: whybox.adapt("resnet50"),
    )


class TupleOut(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inner(x), x.mean((2, 3))


class DictOut(TupleOut):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return {"logits": self.inner(x), "features": x.mean((2, 3))}


@pytest.mark.parametrize("method", ["saliency", "gradcam", "scorecam"])
def test_tuple_or_dict_output_needs_a_selector(method: str, model: nn.Module, x: torch.Tensor) -> None:
    _raises(
        ModelOutputError,
        TypeError,
        r"the model returned tuple of \[0\] Tensor\(\d+, 5\), \[1\] Tensor\(\d+, 3\); pass output= to adapt\(\)",
        lambda: whybox.explain(TupleOut(model), x, method),
    )
    _raises(
        ModelOutputError,
        TypeError,
        r"the model returned dict with keys 'logits': Tensor\(\d+, 5\), 'features': Tensor\(\d+, 3\); pass output=",
        lambda: whybox.explain(DictOut(model), x, method),
    )
    _raises(
        ModelOutputError,
        TypeError,
        r"output='logit' does not select anything from the model's output \(dict with keys 'logits'.*'features'",
        lambda: whybox.explain(whybox.adapt(DictOut(model), output="logit"), x, method),
    )
    # output= fixes it, and gives the plain model's answer
    plain = whybox.explain(model, x, method).attributions
    layer = {"layer": "inner.3"} if method in CAM_METHODS else {}
    for wrapped in (
        whybox.adapt(TupleOut(model), output=0),
        whybox.adapt(DictOut(model), output="logits"),
        whybox.adapt(DictOut(model), output=lambda o: o["logits"]),
    ):
        torch.testing.assert_close(whybox.explain(wrapped, x, method, **layer).attributions, plain)


def test_scores_of_the_wrong_shape(x: torch.Tensor) -> None:
    class Spatial(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    _raises(
        ModelOutputError,
        TypeError,
        r"scores must have shape \(B, K\) = \(2, K\); got \(2, 3, 12, 12\)",
        lambda: whybox.explain(Spatial(), x, "saliency"),
    )


def test_embedding_adapter_needs_references(model: nn.Module) -> None:
    _raises(
        InvalidParameterError,
        ValueError,
        r"kind='embedding' needs references=: a target embedding \(D,\) or class embeddings \(K, D\)",
        lambda: whybox.adapt(model, kind="embedding"),
    )
    _raises(
        InvalidParameterError,
        ValueError,
        r"references must be embeddings of shape \(D,\) or \(K, D\).*got shape \(1, 2, 5\)",
        lambda: whybox.adapt(model, kind="embedding", references=torch.rand(1, 2, 5)),
    )
    _raises(
        InvalidParameterError,
        ValueError,
        r"kind must be one of \('classifier', 'multilabel', 'embedding'\); got 'detector'",
        lambda: whybox.adapt(model, kind="detector"),
    )


def test_embedding_references_of_the_wrong_dimension(model: nn.Module, x: torch.Tensor) -> None:
    adapter = whybox.adapt(model, kind="embedding", references=torch.rand(3, 7))
    _raises(
        ModelOutputError,
        TypeError,
        r"references have dimension 7 but the model embeds into 5",
        lambda: whybox.explain(adapter, x, "saliency"),
    )


# ------------------------------------------------------------------------------------------ options
@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "8"])
@pytest.mark.parametrize("method", METHODS)
def test_bad_batch_size(method: str, bad: Any, model: nn.Module, x: torch.Tensor) -> None:
    _raises(
        InvalidParameterError,
        ValueError,
        rf"batch_size must be a positive int \(rows per forward pass\); got {re.escape(repr(bad))}\.",
        lambda: whybox.explain(model, x, method, batch_size=bad),
    )


@pytest.mark.parametrize("method", METHODS)
def test_bad_mode(method: str, model: nn.Module, x: torch.Tensor) -> None:
    _raises(
        InvalidParameterError,
        ValueError,
        r"mode must be one of \('eval', 'as_is'\); got 'train'\.",
        lambda: whybox.explain(model, x, method, mode="train"),
    )


@pytest.mark.parametrize(
    ("param", "bad", "message"),
    [
        ("seed", -1, r"seed must be a non-negative int or None; got -1\."),
        ("seed", 1.5, r"seed must be a non-negative int or None; got 1\.5\."),
        (
            "score",
            "probs",
            r"score must be one of \('logit', 'prob', 'log_prob', 'sigmoid', 'log_sigmoid'\); got 'probs'\.",
        ),
    ],
)
def test_bad_common_options(param: str, bad: Any, message: str, model: nn.Module, x: torch.Tensor) -> None:
    _raises(InvalidParameterError, ValueError, message, lambda: whybox.explain(model, x, "saliency", **{param: bad}))


@pytest.mark.parametrize("method", GRADIENT_METHODS + CAM_METHODS)
def test_as_is_mode_refuses_batched_forwards_with_train_batchnorm(method: str, x: torch.Tensor) -> None:
    """A training-mode BatchNorm couples the rows of every batched forward (rows, IG path points, noisy or
    masked copies), so mode='as_is' refuses unless batch_size=1; the refusal leaves the model as it came, and
    batch_size=1 runs without changing the BatchNorm's running statistics."""
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)
    ).train()
    _raises(
        InvalidParameterError,
        ValueError,
        r"mode='as_is' with a BatchNorm in training mode couples the rows .*use mode='eval' \(the default\) "
        r"or batch_size=1",
        lambda: whybox.explain(model, x[:1], method, mode="as_is"),
    )
    assert model.training
    bn = model[1]
    before = (bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked))
    opts = {"n_steps": 4} if method == "integrated_gradients" else {"n_samples": 3} if method == "smoothgrad" else {}
    e = whybox.explain(model, x[:1], method, mode="as_is", batch_size=1, **opts)
    assert e.meta["finite"] == [True]
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    assert int(bn.num_batches_tracked) == before[2]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"method": "simpson"}, r"method must be one of \('gausslegendre', 'riemann_left'.*; got 'simpson'\."),
        ({"n_steps": 0}, r"n_steps must be an int >= 1 for method='gausslegendre'; got 0\."),
        ({"n_steps": 2.5}, r"n_steps must be an int >= 1 for method='gausslegendre'; got 2\.5\."),
        ({"method": "trapezoid", "n_steps": 1}, r"n_steps must be an int >= 2 for method='trapezoid'; got 1\."),
        (
            {"method": "riemann_trapezoid", "n_steps": 1},
            r"n_steps must be an int >= 2 for method='riemann_trapezoid'; got 1\.",
        ),
        ({"baseline": "black"}, r"baseline must be one of \('zero', 'blur'.*a number or a tensor; got 'black'\."),
        ({"sigma": -1.0}, r"sigma must be a finite number >= 0; got -1\.0\."),
    ],
)
def test_bad_integrated_gradients_options(
    options: dict[str, Any], message: str, model: nn.Module, x: torch.Tensor
) -> None:
    _raises(
        InvalidParameterError, ValueError, message, lambda: whybox.explain(model, x, "integrated_gradients", **options)
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"variant": "median"}, r"variant must be one of \('mean', 'square', 'var'\); got 'median'\."),
        ({"n_samples": 0}, r"n_samples must be an int >= 1; got 0\."),
        ({"noise_level": -0.1}, r"noise_level must be a finite number >= 0; got -0\.1\."),
        ({"noise_level": "high"}, r"noise_level must be a finite number >= 0; got 'high'\."),
        ({"noise_level": float("nan")}, r"noise_level must be a finite number >= 0; got nan\."),
        ({"sigma": -2.0}, r"sigma must be a finite number >= 0 or None; got -2\.0\."),
        ({"sigma": "2"}, r"sigma must be a finite number >= 0 or None; got '2'\."),
        ({"base": "ig"}, r"base must be one of \('gradient', 'input_x_gradient'\); got 'ig'\."),
    ],
)
def test_bad_smoothgrad_options(options: dict[str, Any], message: str, model: nn.Module, x: torch.Tensor) -> None:
    _raises(InvalidParameterError, ValueError, message, lambda: whybox.explain(model, x, "smoothgrad", **options))


@pytest.mark.parametrize("method", CAM_METHODS)
@pytest.mark.parametrize("bad", [2.5, {"name": "0"}])  # (an int names the module it writes: layer=5 is module '5')
def test_cam_layer_of_no_known_form(method: str, bad: Any, model: nn.Module, x: torch.Tensor) -> None:
    _raises(
        LayerError,
        ValueError,
        rf"layer must be a module name, an nn\.Module or a list of them; got {type(bad).__name__} {bad!r}\. Names "
        r"are those of dict\(model\.named_modules\(\)\)\.",
        lambda: whybox.explain(model, x, method, layer=bad),
    )


def test_adapter_layers_of_no_known_form(model: nn.Module) -> None:
    _raises(
        LayerError,
        ValueError,
        r"layers must be a module name, an nn\.Module or a list of them; got float 7\.5\.",
        lambda: whybox.adapt(model, layers=7.5),  # (an int names the module it writes, as a CAM's layer=)
    )


@pytest.mark.parametrize("method", CAM_METHODS)
def test_bad_cam_normalize(method: str, model: nn.Module, x: torch.Tensor) -> None:
    _raises(
        InvalidParameterError,
        ValueError,
        r"normalize must be one of \('minmax', 'max', 'none'\); got 'l2'\.",
        lambda: whybox.explain(model, x, method, normalize="l2"),
    )


def test_bad_cam_variant_options(model: nn.Module, x: torch.Tensor) -> None:
    if "scorecam" in METHODS:
        _raises(
            InvalidParameterError,
            ValueError,
            r"weighting must be one of \('softmax', 'raw'\); got 'mean'\.",
            lambda: whybox.explain(model, x, "scorecam", weighting="mean"),
        )
    if "layercam" in METHODS:
        _raises(
            InvalidParameterError,
            ValueError,
            r"gamma must be a number > 0 or None; got 0\.",
            lambda: whybox.explain(model, x, "layercam", gamma=0),
        )


@pytest.mark.parametrize("method", [*CAM_METHODS, "lima"])
def test_a_torchscript_model_asked_for_a_layer_says_why_and_is_left_as_it_came(method: str) -> None:
    """torch refuses forward hooks on ScriptModules with a bare RuntimeError; the CAMs (and LIMA's CAM prior) now
    say what to pass instead, and the methods that need no layer still run on the scripted model."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )
    with warnings.catch_warnings():  # deprecated in torch 2.13, yet users still load such models (torch.jit.load)
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(net.eval())
    x = torch.rand(2, 3, 8, 8)
    opts = {"regions": "prior", "prior_cells": 4} if method == "lima" else {}
    _raises(
        LayerError,
        ValueError,
        r"this method taps a layer with a forward hook, which TorchScript modules do not support \(RecursiveScriptModule"
        r" was made by torch.jit.script or torch.jit.trace\)\. Pass the original nn.Module",
        lambda: whybox.explain(scripted, x, method, **opts),
    )
    assert not scripted.training and all(p.requires_grad and p.grad is None for p in scripted.parameters())
    e = whybox.explain(scripted, x, "integrated_gradients", n_steps=8)
    assert torch.equal(e.attributions, whybox.explain(net, x, "integrated_gradients", n_steps=8).attributions)


def test_a_softmax_over_outputs_that_are_already_probabilities_warns_with_the_fix() -> None:
    """A model that ends in a softmax gave LIME and the metrics softmax(p) without a word ([0.9, 0.1] read as
    [0.69, 0.31]); now they warn, and the fix named (adapt to the log) gives back the model's own probabilities."""
    from whybox.models.targets import ProbabilityOutputWarning

    torch.manual_seed(0)
    logits = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 3))
    probs = nn.Sequential(logits, nn.Softmax(1))
    x = torch.rand(2, 3, 6, 6)
    with pytest.warns(ProbabilityOutputWarning, match=r"already look like probabilities .* output=torch.log\)"):
        whybox.explain(probs, x, "lime", n_samples=20)
    with pytest.warns(ProbabilityOutputWarning):
        whybox.evaluate(probs, x, "saliency", "deletion", steps=3)
    fixed = whybox.explain(whybox.adapt(probs, output=torch.log), x, "lime", n_samples=20)  # no warning (errors)
    assert torch.allclose(fixed.attributions, whybox.explain(logits, x, "lime", n_samples=20).attributions)


def test_the_sanity_checks_on_a_regressor_say_why_neither_applies() -> None:
    """randomization on an estimator pointed to random_logit, which a regressor cannot run either (it has no other
    class): the first now says so and names what still measures the explanation, the second names the reason."""
    from sklearn.linear_model import Ridge

    gen = np.random.default_rng(0)
    xs = gen.normal(size=(40, 3))
    ridge = Ridge().fit(xs, xs @ np.array([1.0, -1.0, 0.5]))
    e = whybox.explain(ridge, xs[:2], "occlusion", fill=torch.tensor(xs.mean(0)))
    _raises(
        InvalidParameterError,
        ValueError,
        r"got a Ridge model\. a regressor has no other class, so neither sanity check applies; stability",
        lambda: whybox.evaluate(ridge, xs[:2], e, "randomization"),
    )
    _raises(
        InvalidParameterError,
        ValueError,
        r"random_logit compares the explanation with that of another class, so it needs a model with at least 2 "
        r"classes; this one has 1 output \(a regressor",
        lambda: whybox.evaluate(ridge, xs[:2], e, "random_logit"),
    )


@pytest.mark.parametrize("texts", [["a fine film", "a dull one"], "a fine film"])
def test_texts_given_to_a_tensor_model_name_the_text_adapters(texts: object) -> None:
    want = (
        r"inputs are texts, but this model reads tensors: adapt a Hugging Face classifier and its tokenizer with "
        r"whybox\.adapt_text\(model, tokenizer\) and explain with whybox\.explain_text\(adapter, texts, method\), or "
        r"wrap a function texts -> scores in whybox\.models\.blackbox_text\.BlackBoxTextAdapter\.$"
    )
    model = nn.Linear(4, 2)
    with pytest.raises(InvalidInputError, match=want):
        whybox.explain(model, texts, "occlusion")
    with pytest.raises(InvalidInputError, match=want):
        whybox.evaluate(model, texts, torch.zeros(2, 4), "deletion")


@pytest.mark.parametrize("alpha", [math.inf, math.nan, -1.0])
def test_lime_alpha_must_be_finite(alpha: float) -> None:
    """alpha=inf passed the >= 0 check and crashed in torch's least squares (an internal assert); with lasso it gave
    all-zero weights silently."""
    with pytest.raises(InvalidParameterError, match=r"alpha must be a finite number >= 0 .*got"):
        whybox.explain(nn.Linear(4, 2), torch.rand(2, 4), "lime", alpha=alpha)
