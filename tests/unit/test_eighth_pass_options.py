"""Eighth-pass fixes: each test states the property a user relied on and failed before the fix."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import whybox
from whybox.errors import InvalidParameterError
from whybox.masking.features import AmbiguousIdsWarning
from whybox.metrics.eraser import Comprehensiveness, Sufficiency
from whybox.metrics.road import ROAD
from whybox.metrics.robustness import Infidelity


# ------------------------------------------------------------------ sequences of numbers given as NumPy / torch
def _linear() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return nn.Linear(10, 3).eval(), torch.randn(2, 10), torch.randn(2, 10)


@pytest.mark.parametrize(
    "given",
    [
        np.array([0.1, 0.5], dtype=np.float32),
        [np.float32(0.1), np.float32(0.5)],
        torch.tensor([0.1, 0.5]),
        (np.float64(0.1), np.float16(0.5)),
        [torch.tensor(0.1), torch.tensor(0.5)],
    ],
    ids=["float32-array", "float32-list", "tensor", "mixed-tuple", "0d-tensors"],
)
@pytest.mark.parametrize("metric", ["comprehensiveness", "sufficiency"])
def test_eraser_fractions_from_numpy_or_torch_score_as_the_python_list(metric: str, given: Any) -> None:
    """A float32 0.1 is the share 0.1 (NumPy prints it so): 10 features at 0.1 is one feature, not two, so the
    scores equal those of the Python list exactly, through evaluate() and the class."""
    model, x, a = _linear()
    ref = whybox.evaluate(model, x, a, metric, target=0, fractions=[0.1, 0.5])
    got = whybox.evaluate(model, x, a, metric, target=0, fractions=given)
    assert got.params["fractions"] == [0.1, 0.5]
    torch.testing.assert_close(got.scores, ref.scores, rtol=0, atol=0)
    cls = {"comprehensiveness": Comprehensiveness, "sufficiency": Sufficiency}[metric]
    assert cls(fractions=given).fractions == (0.1, 0.5)


def test_eraser_fractions_numpy_int_one_is_the_whole() -> None:
    model, x, a = _linear()
    ref = whybox.evaluate(model, x, a, "comprehensiveness", target=0, fractions=(1,))
    got = whybox.evaluate(model, x, a, "comprehensiveness", target=0, fractions=(np.int64(1),))
    torch.testing.assert_close(got.scores, ref.scores, rtol=0, atol=0)


def test_road_fractions_from_numpy_or_torch() -> None:
    """ROAD took lists and tuples only: a float64 array was refused too."""
    for given in (np.array([0.2, 0.6]), np.array([0.2, 0.6], dtype=np.float32), torch.tensor([0.2, 0.6])):
        assert ROAD(fractions=given).fractions == (0.2, 0.6)


@pytest.mark.parametrize(
    "bad", [[True], np.array([True, True]), torch.tensor([True]), [np.True_]], ids=["bool", "np", "torch", "np-item"]
)
def test_bool_fractions_are_still_refused(bad: Any) -> None:
    with pytest.raises(InvalidParameterError, match="fractions must be a non-empty increasing sequence"):
        Comprehensiveness(fractions=bad)
    with pytest.raises(InvalidParameterError, match="fractions"):
        ROAD(fractions=bad)


def test_fractions_error_names_the_value_given() -> None:
    with pytest.raises(InvalidParameterError, match=r"got array\(\[0\.5, 0\.1\], dtype=float32\)"):
        Comprehensiveness(fractions=np.array([0.5, 0.1], dtype=np.float32))


def test_other_number_sequences_take_numpy_and_torch() -> None:
    """infidelity's clip, occlusion's window and stride, the region methods' patch: NumPy and torch too."""
    assert Infidelity(clip=np.array([-1.0, 1.0], dtype=np.float32)).clip == (-1.0, 1.0)
    assert Infidelity(clip=(np.float32(-0.5), torch.tensor(0.5))).clip == (-0.5, 0.5)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    x = torch.randn(1, 3, 8, 8)
    ref = whybox.explain(model.eval(), x, "occlusion", target=1, window=(3, 2, 2), stride=(3, 2, 2))
    for window in (np.array([3, 2, 2]), torch.tensor([3, 2, 2]), [np.int64(3), np.int64(2), np.int64(2)]):
        got = whybox.explain(model, x, "occlusion", target=1, window=window, stride=(3, 2, 2))
        torch.testing.assert_close(got.attributions, ref.attributions, rtol=0, atol=0)
    ref = whybox.explain(model, x, "feature_ablation", target=1, features="grid", patch=(4, 2))
    got = whybox.explain(model, x, "feature_ablation", target=1, features="grid", patch=np.array([4, 2]))
    torch.testing.assert_close(got.attributions, ref.attributions, rtol=0, atol=0)


def test_python_numbers_reads_each_real_scalar_as_the_number_it_shows() -> None:
    from whybox.models.inputs import python_number, python_numbers

    assert python_number(np.float32(0.1)) == 0.1 and type(python_number(np.float32(0.1))) is float
    assert python_number(torch.tensor(0.1, dtype=torch.bfloat16)) == float(torch.tensor(0.1, dtype=torch.bfloat16))
    assert python_number(np.int64(7)) == 7 and type(python_number(np.int64(7))) is int
    assert python_number(np.True_) is np.True_  # bools stay bools: refused where a number is asked
    assert python_numbers(np.array([[1, 2], [3, 4]], dtype=np.int32)) == [[1, 2], [3, 4]]
    assert python_numbers((np.float32(0.25), 1)) == (0.25, 1)
    assert python_numbers("0.1") == "0.1"


# ------------------------------------------------------------------ references= as a NumPy array of embeddings
def test_adapt_text_takes_numpy_reference_embeddings() -> None:
    """sentence-transformers' encode() returns NumPy: the same adapter as the tensor gives, the same scores."""
    from test_text import SENTENCES, tiny_bert, toy_tokenizer

    tok, bert = toy_tokenizer(), tiny_bert("encoder")
    by_text = whybox.adapt_text(bert, tok, kind="embedding", references=["boring plot", "fun story"])
    refs = by_text.references.numpy().copy()
    by_array = whybox.adapt_text(bert, tok, kind="embedding", references=refs)
    assert isinstance(by_array.references, torch.Tensor)
    torch.testing.assert_close(by_array.references, by_text.references, rtol=0, atol=0)
    batch = by_text.encode(SENTENCES[:2])
    torch.testing.assert_close(by_array.scores(batch.inputs), by_text.scores(batch.inputs), rtol=0, atol=0)
    refs[:] = 0  # a copy: the user's array changing later changes nothing
    assert bool(by_array.references.abs().sum() > 0)
    sentences = whybox.adapt_text(bert, tok, kind="embedding", references=np.array(["boring plot", "fun story"]))
    torch.testing.assert_close(sentences.references, by_text.references, rtol=0, atol=0)
    assert sentences.output_names == ["boring plot", "fun story"]


@pytest.mark.parametrize("bad", [[0.1, 0.2], 3, np.array([True, False]), {"a": 1}])
def test_adapt_text_wrong_references_name_references(bad: Any) -> None:
    from test_text import tiny_bert, toy_tokenizer

    with pytest.raises(InvalidParameterError, match=r"^references must be a reference sentence.*Pass the sentences"):
        whybox.adapt_text(tiny_bert("encoder"), toy_tokenizer(), kind="embedding", references=bad)


def test_adapt_embedding_takes_numpy_references() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 6).double().eval()
    refs = np.random.default_rng(0).standard_normal((3, 6))
    x = torch.randn(5, 4, dtype=torch.float64)
    by_array = whybox.adapt(model, kind="embedding", references=refs)
    by_tensor = whybox.adapt(model, kind="embedding", references=torch.from_numpy(refs.copy()))
    torch.testing.assert_close(by_array.scores(x), by_tensor.scores(x), rtol=0, atol=0)
    with pytest.raises(InvalidParameterError, match=r"^references must be embeddings .*got list of float\. Pass"):
        whybox.adapt(model, kind="embedding", references=[0.1] * 6)


# ------------------------------------------------------------------ meta["n_forward"] counts every row scored
class _CountingRegressor:
    """A regressor that says nothing of its outputs (no n_outputs_), counting the rows it predicts."""

    def __init__(self, n_outputs: int = 1, stated: bool = False) -> None:
        self.w = np.arange(1.0, 1.0 + 4 * n_outputs).reshape(4, n_outputs) if n_outputs > 1 else np.arange(1.0, 5.0)
        self.n_features_in_ = 4
        self.rows = 0
        if stated:
            self.n_outputs_ = n_outputs

    def fit(self, x: Any, y: Any) -> _CountingRegressor:
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.rows += len(x)
        return x @ self.w


@pytest.mark.parametrize("stated", [False, True], ids=["unstated", "n_outputs_"])
@pytest.mark.parametrize("method", ["occlusion", "feature_ablation", "kernel_shap", "lime"])
def test_n_forward_equals_rows_the_regressor_scored(method: str, stated: bool) -> None:
    est = _CountingRegressor(stated=stated)
    x = np.random.default_rng(0).standard_normal((3, 4))
    opts = {"n_samples": 20} if method in ("kernel_shap", "lime") else {}
    for target in (None, 0):
        est.rows = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a regressor's default score space note
            e = whybox.explain(est, x, method, target=target, **opts)
        assert e.meta["n_forward"] == est.rows
    # n_outputs_ says how many without a call: no extra row; else one row more than with target=0
    est.rows = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whybox.explain(est, x, "occlusion")
    none_rows = est.rows
    est.rows = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whybox.explain(est, x, "occlusion", target=0)
    assert none_rows == est.rows + (0 if stated else 1)


@pytest.mark.parametrize("stated", [False, True])
def test_multi_output_regressor_still_refuses_the_default_target(stated: bool) -> None:
    est = _CountingRegressor(n_outputs=2, stated=stated)
    with pytest.raises(whybox.errors.InvalidTargetError, match="predicts 2 values per row"):
        whybox.explain(est, np.ones((2, 4)), "occlusion")


# ------------------------------------------------------------------ sequence region ids per time step
class _GRUNet(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.rnn = nn.GRU(d, 5, batch_first=True)
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


def _seq(t: int, d: int) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return _GRUNet(d).eval(), torch.randn(2, t, d)


REGION_METHODS = [
    ("feature_ablation", {}),
    ("kernel_shap", {"n_samples": 40}),
    ("shapley_sampling", {"n_permutations": 4}),
    ("exact_shapley", {}),
    ("lime", {"n_samples": 40}),
]


@pytest.mark.parametrize(("method", "opts"), REGION_METHODS, ids=[m for m, _ in REGION_METHODS])
def test_sequence_step_ids_equal_the_same_ids_given_per_element(method: str, opts: dict[str, Any]) -> None:
    """(T,), (1, T) and (B, T) ids are one id per time step, shared by its D features, as the metrics read them:
    the same numbers as the (B, T, D) map that spells it out (refused before, suggesting (1, H, W))."""
    model, x = _seq(6, 3)
    steps = torch.tensor([0, 0, 1, 1, 2, 3])
    full = steps.view(1, 6, 1).expand(2, 6, 3)
    ref = whybox.explain(model, x, method, target=1, features=full, seed=0, **opts)
    for ids in (steps, steps.view(1, 6), steps.expand(2, 6), steps.tolist()):
        got = whybox.explain(model, x, method, target=1, features=ids, seed=0, **opts)
        torch.testing.assert_close(got.attributions.expand_as(ref.attributions), ref.attributions)
        torch.testing.assert_close(got.meta["values"], ref.meta["values"])


@pytest.mark.parametrize(("method", "opts"), REGION_METHODS, ids=[m for m, _ in REGION_METHODS])
def test_sequence_step_ids_where_t_equals_d_are_read_per_step_with_a_warning(method: str, opts: dict[str, Any]) -> None:
    """T == D: a (T,) map was silently read per feature; now per step, as the metrics read it, and said so; (1, 1, D)
    stays the per-feature form, without a warning."""
    model, x = _seq(4, 4)
    steps = torch.tensor([0, 0, 1, 2])
    ref = whybox.explain(model, x, method, target=1, features=steps.view(1, 4, 1).expand(2, 4, 4), seed=0, **opts)
    with pytest.warns(AmbiguousIdsWarning, match=r"read one per time step.*\(1, 1, 4\)"):
        got = whybox.explain(model, x, method, target=1, features=steps, seed=0, **opts)
    torch.testing.assert_close(got.attributions.expand_as(ref.attributions), ref.attributions)
    per_feature = steps.view(1, 1, 4).expand(2, 4, 4)
    ref = whybox.explain(model, x, method, target=1, features=per_feature, seed=0, **opts)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = whybox.explain(model, x, method, target=1, features=steps.view(1, 1, 4), seed=0, **opts)
    torch.testing.assert_close(got.attributions.expand_as(ref.attributions), ref.attributions)


def test_sequence_ids_that_fit_no_form_name_the_sequence_forms() -> None:
    model, x = _seq(6, 3)
    with pytest.raises(
        InvalidParameterError,
        match=r"does not fit sequences \(2, 6, 3\).*one per time step \(6,\), \(1, 6\) or \(2, 6\)",
    ):
        whybox.explain(model, x, "feature_ablation", target=1, features=torch.zeros(5, dtype=torch.long))


def test_step_ids_leave_images_tables_and_signals_as_they_were() -> None:
    """Not a sequence: a Conv1d's signal (B, C, L) reads (L,) ids per time step shared by the channels, as before,
    and an MLP's gray images (B, H, W) read (W,) ids per column."""
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv1d(3, 4, 3, padding=1), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    s = torch.randn(2, 3, 6)
    ids = torch.tensor([0, 0, 1, 1, 2, 2])
    ref = whybox.explain(conv, s, "feature_ablation", target=0, features=ids.view(1, 1, 6).expand(2, 3, 6))
    got = whybox.explain(conv, s, "feature_ablation", target=0, features=ids)
    torch.testing.assert_close(got.attributions.expand_as(ref.attributions), ref.attributions)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    g = torch.randn(2, 4, 3)
    cols = torch.tensor([0, 1, 1])
    ref = whybox.explain(mlp, g, "feature_ablation", target=0, features=cols.view(1, 1, 3).expand(2, 4, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = whybox.explain(mlp, g, "feature_ablation", target=0, features=cols)
    torch.testing.assert_close(got.attributions.expand_as(ref.attributions), ref.attributions)
