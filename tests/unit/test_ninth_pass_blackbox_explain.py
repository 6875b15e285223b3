"""whybox.explain on a black-box text model's presence rows removes words, never the text index.

The methods' own zero fill set the index column to 0 too, so a row whose words were removed was scored on text 0's
words: for "bad film" beside "good good good", exact Shapley gave film +0.5 and bad -0.5 (the model reads bad as -2 and
ignores film), and the values no longer added up to f(x) - f(fill). The default is now the metrics' fill (every word
dropped, the index kept), as explain_text explains.
"""

from __future__ import annotations

import pytest
import torch

import whybox
import whybox.errors
from whybox.models.blackbox_text import BlackBoxTextAdapter


def _score(texts: list[str]) -> torch.Tensor:
    z = torch.tensor([t.split().count("good") - 2.0 * t.split().count("bad") for t in texts], dtype=torch.float64)
    return torch.stack([-z, z], 1)


TEXTS = ["good good good", "bad film"]
# the additive model's word contributions (class 1), the text index column last: exactly 0
EXPECTED = torch.tensor([[1.0, 1.0, 1.0, 0.0], [-2.0, 0.0, 0.0, 0.0]], dtype=torch.float64)


@pytest.mark.parametrize(
    "method", ["occlusion", "feature_ablation", "exact_shapley", "kernel_shap", "shapley_sampling"]
)
def test_explain_on_presence_rows_gives_each_word_its_own_contribution(method: str) -> None:
    bb = BlackBoxTextAdapter(_score)
    enc = bb.encode(TEXTS)
    out = whybox.explain(bb, enc.inputs, method, target=1, seed=0)
    torch.testing.assert_close(out.attributions.to(torch.float64), EXPECTED, rtol=0, atol=1e-12)
    ref = whybox.explain_text(bb, TEXTS, method, target=1, seed=0)
    assert [[round(v, 9) for _, v in row] for row in ref.words] == [[1.0, 1.0, 1.0], [-2.0, 0.0]]


def test_shapley_values_add_up_to_the_change_from_the_fill() -> None:
    bb = BlackBoxTextAdapter(_score)
    x = bb.encode(TEXTS).inputs
    out = whybox.explain(bb, x, "exact_shapley", target=1)
    gap = bb.scores(x)[:, 1] - bb.scores(bb.packed_fill(x))[:, 1]
    torch.testing.assert_close(out.attributions.to(torch.float64).sum(1), gap.to(torch.float64), rtol=0, atol=1e-12)


def test_a_fill_name_is_refused_as_explain_text_refuses_it_and_a_background_gets_no_fill() -> None:
    bb = BlackBoxTextAdapter(_score)
    x = bb.encode(TEXTS).inputs
    with pytest.raises(
        whybox.errors.InvalidParameterError, match=r"fill='zero' on a function of strings would rewrite"
    ):
        whybox.explain(bb, x, "feature_ablation", target=1, fill="zero")
    bg = bb.packed_fill(x)[1:]  # one reference row: "bad film" with every word dropped
    out = whybox.explain(bb, x[1:], "kernel_shap", target=1, background=bg, seed=0)
    torch.testing.assert_close(out.attributions.to(torch.float64), EXPECTED[1:], rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", ["exact_shapley", "kernel_shap", "lime", "lima", "feature_ablation"])
def test_a_metric_s_rerun_by_name_explains_as_explain_does(method: str) -> None:
    # randomization, random_logit and stability re-run a method named by explainer= (or by a bare map's metric):
    # the re-run took the method's zero fill, scoring removed-word rows on text 0's words
    from whybox.metrics.base import make_explain_fn

    bb = BlackBoxTextAdapter(_score)
    x = bb.encode([*TEXTS, "film good bad good"]).inputs
    ref = whybox.explain(bb, x, method, target=1, seed=0)
    run, _ = make_explain_fn(method, None, None)
    torch.testing.assert_close(run(bb, x, 1, 0).attributions, ref.attributions, rtol=0, atol=0)


def test_random_logit_by_explainer_name_equals_the_method_name_result() -> None:
    bb = BlackBoxTextAdapter(_score)
    x = bb.encode([*TEXTS, "film good bad good"]).inputs
    e = whybox.explain(bb, x, "exact_shapley", target=1)
    by_name = whybox.evaluate(bb, x, e, "random_logit", target=1, seed=0)
    by_map = whybox.evaluate(bb, x, e.attributions, "random_logit", target=1, seed=0, explainer="exact_shapley")
    torch.testing.assert_close(by_map.scores, by_name.scores, rtol=0, atol=1e-12, equal_nan=True)
