"""Multi-label classifiers (``adapt(model, kind="multilabel")``) and the ``"sigmoid"`` score spaces.

A multi-label model's outputs are the logits of independent labels: the probability an explainer or metric reads
must be each label's sigmoid, never a softmax that makes the labels compete. Properties: with ``kind="multilabel"``
the defaults (LIME, every metric) equal the same method on a two-output model ``[0, z_k]``, whose softmax is
sigmoid(z_k); exact Shapley values of a label give exactly 0 to the features only another label reads (a softmax
over the labels does not); ``score="sigmoid"`` on a binary classifier's single logit equals the same two-output
model; the CLI and runs report each label's sigmoid; and the places a sigmoid cannot apply say why.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import whybox
from whybox.errors import InvalidParameterError
from whybox.models.adapter import output_probabilities

F, K = 6, 3


def block_model() -> nn.Linear:
    """Label 0 reads features 0-2 only, label 1 features 3-5 only, label 2 all of them."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        lin = nn.Linear(F, K)
    with torch.no_grad():
        lin.weight[0, 3:] = 0.0
        lin.weight[1, :3] = 0.0
    return lin.eval()


def rows(n: int = 4) -> torch.Tensor:
    return torch.randn(n, F, generator=torch.Generator().manual_seed(1))


def one_label(model: nn.Module, k: int) -> whybox.ModelAdapter:
    """Outputs [0, z_k]: their softmax is [1 - sigmoid(z_k), sigmoid(z_k)]."""
    return whybox.adapt(model, output=lambda z: torch.stack([torch.zeros_like(z[:, k]), z[:, k]], 1))


def test_lime_by_default_explains_each_labels_sigmoid():
    m, x = block_model(), rows()
    e = whybox.explain(whybox.adapt(m, kind="multilabel"), x, "lime", target=1, n_samples=300, seed=2)
    ref = whybox.explain(one_label(m, 1), x, "lime", target=1, n_samples=300, seed=2)
    assert e.params["score"] == "sigmoid"
    torch.testing.assert_close(e.attributions, ref.attributions, rtol=1e-5, atol=1e-6)
    soft = whybox.explain(m, x, "lime", target=1, n_samples=300, seed=2)  # a softmax over the 3 labels
    assert (soft.attributions - ref.attributions).abs().max() > 1e-2


@pytest.mark.parametrize("metric", ["deletion", "insertion", "comprehensiveness"])
def test_metrics_by_default_read_each_labels_sigmoid(metric):
    m, x = block_model(), rows()
    amap = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    r = whybox.evaluate(whybox.adapt(m, kind="multilabel"), x, amap, metric, target=2)
    ref = whybox.evaluate(one_label(m, 2), x, amap, metric, target=1)
    assert r.params["score"] == "sigmoid"
    torch.testing.assert_close(r.scores, ref.scores, rtol=1e-6, atol=1e-7)


def test_a_feature_only_another_label_reads_gets_exactly_zero():
    m, x = block_model(), rows()
    e = whybox.explain(whybox.adapt(m, kind="multilabel"), x, "exact_shapley", target=0, score=None, fill="zero")
    assert torch.equal(e.attributions[:, 3:], torch.zeros(x.shape[0], 3))
    assert bool((e.attributions[:, :3].abs().sum(1) > 0).all())
    soft = whybox.explain(m, x, "exact_shapley", target=0, score="prob", fill="zero")
    assert bool((soft.attributions[:, 3:].abs().amax(1) > 1e-4).all())  # the softmax couples the labels


def test_sigmoid_of_a_binary_classifiers_single_logit():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        m = nn.Linear(F, 1).eval()
    x = rows()
    e = whybox.explain(m, x, "lime", target=0, score="sigmoid", n_samples=200, seed=1)
    ref = whybox.explain(one_label(m, 0), x, "lime", target=1, n_samples=200, seed=1)
    torch.testing.assert_close(e.attributions, ref.attributions, rtol=1e-5, atol=1e-6)
    with pytest.raises(InvalidParameterError, match="score='sigmoid' for a binary classifier's probability"):
        whybox.explain(m, x, "lime", target=0, score="prob")


def test_log_sigmoid_and_log_prob_on_a_multilabel_adapter():
    m, x = block_model(), rows()
    ad = whybox.adapt(m, kind="multilabel")
    a = whybox.explain(ad, x, "occlusion", target=1, score="log_prob")
    b = whybox.explain(m, x, "occlusion", target=1, score="log_sigmoid")
    assert a.params["score"] == "log_sigmoid"
    torch.testing.assert_close(a.attributions, b.attributions)
    # occlusion of one column: log sigmoid(z_1(x)) - log sigmoid(z_1(x with that column zeroed))
    x4 = x.clone()
    x4[:, 4] = 0.0
    logsig = torch.nn.functional.logsigmoid
    want = logsig(m(x)[:, 1]) - logsig(m(x4)[:, 1])
    torch.testing.assert_close(b.attributions[:, 4], want.detach(), rtol=1e-5, atol=1e-6)


def test_what_a_user_reads_as_each_outputs_probability():
    m, x = block_model(), rows(2)
    s = m(x).detach().double()
    torch.testing.assert_close(output_probabilities(whybox.adapt(m, kind="multilabel"), s), s.sigmoid())
    torch.testing.assert_close(output_probabilities(whybox.adapt(m), s), s.softmax(1))
    torch.testing.assert_close(output_probabilities(whybox.adapt(m), s[:, :1]), s[:, :1])


# ---------------------------------------------------------------------------------------------- errors
def test_a_sigmoid_of_predict_proba_or_of_a_regressors_values_is_refused():
    from sklearn.linear_model import LinearRegression, LogisticRegression

    x = rows(40).numpy()
    y = (x[:, 0] > 0).astype(int)
    clf = LogisticRegression().fit(x, y)
    with pytest.raises(
        InvalidParameterError, match="predict_proba gives probabilities already: leave score out to explain them"
    ):
        whybox.explain(clf, x[:2], "lime", score="sigmoid")
    reg = LinearRegression().fit(x, x[:, 1])
    with pytest.raises(InvalidParameterError, match=r"are predicted values \(its predict\): pass score='logit'"):
        whybox.evaluate(reg, x[:2], "occlusion", "deletion", score="log_sigmoid")
    with pytest.raises(
        InvalidParameterError, match="kind='multilabel' reads each label's probability from predict_proba"
    ):
        whybox.adapt(reg, kind="multilabel")


def test_find_mistakes_on_a_multilabel_model_says_why_not():
    m, x = block_model(), rows()
    with pytest.raises(InvalidParameterError, match="no single true class"):
        whybox.find_mistakes(whybox.adapt(m, kind="multilabel"), x, torch.zeros(4, dtype=torch.int64))


def test_generation_scores_stay_over_the_vocabulary():
    from whybox.explainers.llm.generation import attribute_generation

    with pytest.raises(InvalidParameterError, match=r"score must be one of \('logit', 'prob', 'log_prob'\)"):
        attribute_generation(nn.Linear(2, 2), lambda t: t, "a", continuation="b", method="saliency", score="sigmoid")
