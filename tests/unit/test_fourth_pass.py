"""Regressions and spec gaps found by the fourth-pass audits: each test states the promised behaviour the code missed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import whybox
from whybox.errors import InvalidParameterError


def _tanh_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).double().eval()


def test_integrated_gradients_over_a_baseline_distribution_is_the_mean_of_single_baselines() -> None:
    """ATTRIBUTION.md 1.3: k baseline rows, IG averaged over them, complete in expectation:
    mean_j sum IG^(j) = f(x) - mean_j f(x'_j); one forward of the k baselines and k path integrals per row."""
    m = _tanh_mlp()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 6, dtype=torch.float64, generator=gen)
    bg = torch.randn(4, 6, dtype=torch.float64, generator=gen)
    e = whybox.explain(m, x, "integrated_gradients", baseline=bg, n_baselines=4, n_steps=50, target=1)
    each = [whybox.explain(m, x, "integrated_gradients", baseline=bg[j], n_steps=50, target=1) for j in range(4)]
    torch.testing.assert_close(e.attributions, torch.stack([a.attributions for a in each]).mean(0))
    with torch.no_grad():
        f_x, f_bg = m(x)[:, 1], m(bg)[:, 1].mean()
    torch.testing.assert_close(e.meta["f_baseline"], f_bg.expand(5))
    torch.testing.assert_close(e.attributions.sum(1), f_x - f_bg, atol=1e-9, rtol=0)
    assert e.meta["n_forward"] == 5 * (4 * 51 + 1) and e.meta["n_backward"] == 5 * 4 * 50


@pytest.mark.parametrize("baseline", ["gaussian", "uniform"])
def test_random_baseline_draws_do_not_depend_on_the_batch(baseline: str) -> None:
    """k seeded draws per row: a row's IG is the same alone and in a batch, and k draws differ from one."""
    m = _tanh_mlp()
    x = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    kw = {"baseline": baseline, "sigma": 0.5, "seed": 3, "target": 1}
    a = whybox.explain(m, x, "integrated_gradients", n_baselines=3, **kw)
    alone = [
        whybox.explain(m, x[i : i + 1], "integrated_gradients", n_baselines=3, batch_size=7, **kw) for i in range(5)
    ]
    torch.testing.assert_close(a.attributions, torch.cat([b.attributions for b in alone]))
    assert float(a.meta["delta_rel"].max()) < 1e-8
    one = whybox.explain(m, x, "integrated_gradients", n_baselines=1, **kw)
    assert not torch.allclose(a.attributions, one.attributions)


def test_adaptive_rule_keeps_each_baselines_mesh() -> None:
    m = _tanh_mlp()
    x = torch.randn(2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    bg = torch.randn(3, 6, dtype=torch.float64)
    e = whybox.explain(m, x, "integrated_gradients", baseline=bg, n_baselines=3, n_steps=16, method="adaptive")
    assert e.meta["alphas"].shape == (2, 3, 16)
    assert float(e.meta["delta_rel"].max()) < 1e-2


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"baseline": "zero", "n_baselines": 2}, "baseline='zero' gives the same row"),
        ({"baseline": "shape", "n_baselines": 3}, "must hold 3 rows"),
        ({"n_baselines": 0}, "n_baselines must be an int >= 1; got 0"),
        ({"n_baselines": True}, "n_baselines must be an int >= 1; got True"),
    ],
)
def test_baseline_distribution_refusals_name_the_fix(params: dict[str, object], words: str) -> None:
    m = _tanh_mlp()
    if params.get("baseline") == "shape":
        params = {**params, "baseline": torch.zeros(4, 6, dtype=torch.float64)}
    with pytest.raises(InvalidParameterError, match=words):
        whybox.explain(m, torch.randn(2, 6, dtype=torch.float64), "integrated_gradients", **params)


def test_load_refuses_a_target_that_does_not_match_the_rows(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A hand-made or damaged file whose target has another length than the attributions fails at load, naming
    both shapes (it failed later, inside a metric, with an index error)."""
    from safetensors.torch import load_file, save_file

    from whybox.errors import DataFormatError

    m = _tanh_mlp()
    e = whybox.explain(m, torch.randn(3, 6, dtype=torch.float64), "saliency")
    path = tmp_path / "e.safetensors"
    e.save(path)
    assert whybox.Explanation.load(path) == e
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
    tensors = load_file(str(path))
    tensors["target"] = tensors["target"][:2].clone()
    save_file(tensors, str(path), metadata=header)
    with pytest.raises(DataFormatError, match=r"target \(2,\) torch.int64 does not give one class index per row"):
        whybox.Explanation.load(path)


def test_channel_less_images_plot_and_token_attributions_are_not_maps() -> None:
    """A model of images without a channel dimension (B, H, W) explains and maps (to_map's docstring) and now
    plots, over the images when given; token attributions (B, T, D) are marked and to_map refuses them (it returned
    them unchanged as a 'map')."""
    import sys
    from pathlib import Path

    from whybox.errors import InvalidInputError

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3)).eval()
    x = torch.rand(2, 6, 6)
    e = whybox.explain(model, x, "input_x_gradient")
    assert "tokens" not in e.meta
    for fig in (e.plot(), e.plot(x), e.plot(x[:, None])):
        assert len([ax for ax in fig.axes if ax.images]) == 2
    sys.path.insert(0, str(Path(__file__).parent))
    from test_text import tiny_bert, toy_tokenizer

    from whybox.models.text import adapt_text

    clf = adapt_text(tiny_bert(), toy_tokenizer())
    t = whybox.explain_text(clf, ["the movie was great"], "saliency").explanation
    assert t.meta["tokens"] is True and t.attributions.ndim == 3
    with pytest.raises(InvalidInputError, match="token attributions"):
        t.to_map()
    with pytest.raises(InvalidInputError, match="explain_text"):
        t.plot()


def test_lima_refuses_a_prior_map_with_nan_or_inf() -> None:
    """A prior map with NaN cells ranked them as 0 (between the real values) and inf as the largest, silently."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 3)).eval()
    x = torch.rand(1, 3, 8, 8)
    prior = torch.full((1, 8, 8), float("nan"))
    prior[0, :4, :4] = -1.0
    with pytest.raises(InvalidParameterError, match=r"prior map holds 48 non-finite values"):
        whybox.explain(m, x, "lima", search="naive", regions="prior", prior=prior, prior_grid=2, prior_cells=1)


class _Tagger(nn.Module):
    """An LSTM reading (B, T, D) batch-first: a sequence model, no Conv1d."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(4, 8, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.rnn(x)[0][:, -1])


def test_localisation_reads_a_sequence_along_its_time_axis() -> None:
    """Masks (B, T) of a sequence model's inputs (B, T, D) mark time steps (the README: sequence maps are read as one
    value per time step); they were read as a signal's (B, L = D) and a map over time could never be scored, while
    masks over the D features were accepted as time."""
    from whybox.errors import InvalidInputError

    torch.manual_seed(0)
    m = _Tagger().eval()
    x = torch.randn(2, 12, 4)
    masks = torch.zeros(2, 12, dtype=torch.bool)
    masks[:, 8:] = True
    for e in (
        whybox.explain(m, x, "feature_ablation", features="segments", patch=3),  # (B, T, 1)
        whybox.explain(m, x, "integrated_gradients", n_steps=8),  # (B, T, D)
    ):
        per_step = e.attributions.to(torch.float64).sum(2)
        pos = per_step.clamp_min(0)
        want = (pos * masks).sum(1) / pos.sum(1)
        got = whybox.evaluate(m, x, e, "relevance_mass", masks=masks).scores
        torch.testing.assert_close(got, want)
        hit = masks[torch.arange(2), per_step.argmax(1)].to(torch.float64)
        torch.testing.assert_close(whybox.evaluate(m, x, e, "pointing_game", masks=masks, tolerance=0).scores, hit)
        # the map alone, no model: masks (B, T) tell the sequence apart from a signal's (B, L)
        alone = whybox.evaluate(None, x, e.attributions, "relevance_mass", masks=masks).scores
        torch.testing.assert_close(alone, want)
    with pytest.raises(
        InvalidInputError, match=r"masks must have shape \(2, 4\) .* For sequences \(B, T, D\) the masks are \(2, 12\)"
    ):
        whybox.evaluate(m, x, e, "relevance_mass", masks=torch.ones(2, 5, dtype=torch.bool))
    # 3-D inputs of a model that declares no signal, with masks over the last axis (B, L): read as before, as a
    # signal's time steps, the same with and without the model
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(32, 2)).eval()
    xs = torch.rand(2, 2, 16, generator=torch.Generator().manual_seed(1))
    sal = whybox.explain(mlp, xs, "saliency")
    steps = torch.zeros(2, 16, dtype=torch.bool)
    steps[:, :6] = True
    with_model = whybox.evaluate(mlp, xs, sal, "relevance_mass", masks=steps).scores
    torch.testing.assert_close(
        with_model, whybox.evaluate(None, xs, sal.attributions, "relevance_mass", masks=steps).scores
    )
    per_step = sal.attributions.to(torch.float64).sum(1).clamp_min(0)
    torch.testing.assert_close(with_model, (per_step * steps).sum(1) / per_step.sum(1))


def test_localisation_of_channel_less_images_reads_their_pixels() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3)).eval()
    x = torch.rand(2, 6, 6)
    e = whybox.explain(model, x, "saliency")
    masks = torch.zeros(2, 6, 6, dtype=torch.bool)
    masks[:, :3] = True
    a = e.attributions.to(torch.float64).clamp_min(0)
    want = (a * masks).sum((1, 2)) / a.sum((1, 2))
    torch.testing.assert_close(whybox.evaluate(model, x, e, "energy_pointing_game", masks=masks).scores, want)


def test_background_categories_the_inputs_categorical_does_not_list_reach_the_estimator() -> None:
    """A row built by hand, pd.Categorical(['rome']), knows only its own city: background rows' cities (paris, oslo)
    were decoded into that dtype and reached the estimator as NaN (one-hot: all zeros), so Shapley values and the
    base value were silently wrong."""
    pd = pytest.importorskip("pandas")
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    X = pd.DataFrame({"city": pd.Categorical(["paris", "rome", "oslo"] * 20), "v": np.arange(60.0) % 7})
    y = (X.city == "rome") | (X.v > 4)
    enc = ColumnTransformer([("c", OneHotEncoder(handle_unknown="ignore"), ["city"])], remainder="passthrough")
    model = make_pipeline(enc, LogisticRegression()).fit(X, y)
    x = pd.DataFrame({"city": pd.Categorical(["rome"]), "v": [1.0]})
    bg = X.iloc[[0, 2]]  # paris, oslo
    e = whybox.explain(model, x, "exact_shapley", background=bg, target=True, score="prob")
    f_bg = model.predict_proba(bg)[:, 1].mean()
    assert float(e.meta["base_value"][0]) == pytest.approx(f_bg, abs=1e-12)
    assert float(e.attributions.sum()) == pytest.approx(model.predict_proba(x)[0, 1] - f_bg, abs=1e-12)
    fill = pd.Series({"city": "paris", "v": 1.0})
    fa = whybox.explain(model, x, "feature_ablation", fill=fill, target=True, score="prob")
    want = model.predict_proba(x)[0, 1] - model.predict_proba(X.iloc[[0]].assign(v=1.0))[0, 1]
    assert float(fa.attributions[0, 0]) == pytest.approx(want, abs=1e-12)


def _tiny_vit(cls_name: str = "ViT") -> nn.Module:
    import transformers

    config = getattr(transformers, f"{cls_name}Config")(
        image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return getattr(transformers, f"{cls_name}ForImageClassification")(config).to(torch.float64).eval()


@pytest.mark.parametrize("method", ["attention_rollout", "attention_relevance", "raw_attention"])
def test_attention_methods_leave_images_alone_under_an_in_place_preprocess(method: str) -> None:
    """The adapter's preprocess ran on the caller's images: an in-place normalisation rewrote them."""
    ad = whybox.adapt(_tiny_vit(), output="logits", preprocess=lambda x: x.sub_(0.5).div_(0.25))
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    kept = x.clone()
    e = whybox.explain(ad, x, method)
    assert torch.equal(x, kept)
    again = whybox.explain(ad, x, method)
    torch.testing.assert_close(again.attributions, e.attributions)


def test_attention_relevance_reads_the_mean_row_of_a_mean_pooling_model() -> None:
    """BEiT's head reads the mean of its patch tokens (config.use_mean_pooling): the CLS row never sees the last
    layer's gradient, so with start_layer at the last layer the default (CLS) map was all zeros."""
    pytest.importorskip("transformers")
    ad = whybox.adapt(_tiny_vit("Beit"), output="logits")
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    e = whybox.explain(ad, x, "attention_relevance", target=1, start_layer=1)
    assert e.meta["readout"] == "mean"
    assert float(e.attributions.abs().max()) > 0
    cls = whybox.explain(ad, x, "attention_relevance", target=1, start_layer=1, readout="cls")
    assert float(cls.attributions.abs().max()) == 0.0  # what the CLS row gave


def test_attention_word_values_sum_their_subwords() -> None:
    """An attention method gives each token its own value: a word of two subwords is their sum (the readout row
    sums to 1 over the tokens), not their mean (as for a perturbation method's copied value)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_text import tiny_bert, toy_tokenizer

    from whybox.models.text import adapt_text, word_pool

    clf = adapt_text(tiny_bert(), toy_tokenizer())
    out = whybox.explain_text(clf, ["playing it"], "attention_rollout")
    tok = dict(out.tokens[0])
    words = dict(out.words[0])
    assert words["playing"] == pytest.approx(tok["play"] + tok["##ing"], abs=1e-12)
    assert word_pool(clf, "attention_rollout") == "sum" and word_pool(clf, "lime") == "mean"


def _gen_lm() -> tuple[nn.Module, object]:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_generation import tiny_gpt2, toy_tokenizer

    return tiny_gpt2(), toy_tokenizer()


def test_lima_on_a_generation_step_ignores_the_tokens_after_it() -> None:
    """Each step's numbers are the method's on that step's prefix alone (README): LIMA kept the step's future tokens
    (which its fill leaves as they are) as do-nothing candidates, so step 1 changed with the continuation after it."""
    from whybox.explainers.llm.generation import attribute_generation

    m, tok = _gen_lm()
    short = attribute_generation(m, tok, "the cat sat on", continuation="a mat", method="lima")
    long = attribute_generation(m, tok, "the cat sat on", continuation="a mat and it was", method="lima")
    p = short.prompt_length
    torch.testing.assert_close(long.matrix[: p + 1, 1], short.matrix[: p + 1, 1])
    assert bool(long.matrix[p + 2 :, 1].isnan().all())


def test_generation_refuses_methods_that_cannot_attribute_a_step() -> None:
    """The attention methods (and CAMs, RISE) failed with advice to pass an adapter, which the caller never does
    here; a bad integration= was reported as a bad method."""
    from whybox.explainers.llm.generation import attribute_generation

    m, tok = _gen_lm()
    with pytest.raises(InvalidParameterError, match=r"method='attention_rollout' reads a classifier's or encoder's"):
        attribute_generation(m, tok, "the cat", continuation="sat", method="attention_rollout")
    with pytest.raises(InvalidParameterError, match=r"method='gradcam' does not apply to text; attribute_generation"):
        attribute_generation(m, tok, "the cat", continuation="sat", method="gradcam")
    with pytest.raises(InvalidParameterError, match=r"integration must be one of .*got 'gauss'"):
        attribute_generation(m, tok, "the cat", continuation="sat", method="integrated_gradients", integration="gauss")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sae_density_is_exact_for_a_half_precision_sae(dtype: torch.dtype) -> None:
    """The active-row count was cast to the SAE's dtype: float16 overflowed to inf past 65,504 rows, bfloat16
    rounded 69,997 / 70,000 to 1.0."""
    from whybox.explainers.llm.sae import SAEConfig, SparseAutoencoder, top_activating

    sae = SparseAutoencoder(SAEConfig(d_in=4, d_sae=8, activation="relu"))
    with torch.no_grad():
        sae.b_e.fill_(10.0)  # every latent fires on the zero rows
    acts = torch.zeros(70_000, 4)
    acts[:3] = -1e4 * sae.W_e[0].detach()  # latent 0 off on 3 rows
    top = top_activating(sae.to(dtype), acts.to(dtype), k=2)
    torch.testing.assert_close(
        top.density[:2].double(), torch.tensor([69_997 / 70_000, 1.0], dtype=torch.float64), rtol=1e-6, atol=0
    )


def test_a_multilabel_estimator_explains_each_labels_own_probability() -> None:
    """A OneVsRestClassifier on a label-indicator matrix gives each label's probability in one (B, K) array; score
    'prob' (LIME's and the metrics' default) renormalised them across labels (p1 / sum p: 0.09 for 0.165) and
    kind='multilabel' was refused. It is now detected; rows that do not sum to 1 under a softmax are an error."""
    from sklearn.datasets import make_multilabel_classification
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    from whybox.errors import ModelOutputError

    X, Y = make_multilabel_classification(n_samples=200, n_features=5, n_classes=3, random_state=0)
    X = X.astype(float)
    model = OneVsRestClassifier(LogisticRegression(max_iter=500)).fit(X, Y)
    x, bg = X[:2], X[10:14]
    p = model.predict_proba(x)
    assert whybox.adapt(model).kind == "multilabel"
    lime = whybox.explain(model, x, "lime", fill=bg.mean(0), target=1, n_samples=300, seed=0)
    np.testing.assert_allclose(lime.meta["local_pred"].numpy(), p[:, 1], atol=0.02)  # the surrogate near P(label 1)
    curve = whybox.evaluate(model, x, whybox.explain(model, x, "occlusion", fill=bg.mean(0), target=1), "deletion")
    np.testing.assert_allclose(curve.curves["y"][:, 0].numpy(), p[:, 1], rtol=1e-9)
    shap = whybox.explain(model, x, "exact_shapley", background=bg, target=1, score="prob")
    f_bg = model.predict_proba(bg)[:, 1].mean()
    np.testing.assert_allclose(shap.attributions.sum(1).numpy(), p[:, 1] - f_bg, atol=1e-9)

    class Labels:  # an estimator of independent labels that says nothing about it
        classes_ = np.arange(3)

        def fit(self, *a: object) -> None: ...

        def predict_proba(self, rows: np.ndarray) -> np.ndarray:
            return model.predict_proba(rows)

    with pytest.raises(ModelOutputError, match=r"rows sum to .*kind='multilabel'"):
        whybox.explain(Labels(), x, "lime", fill=bg.mean(0), target=1, n_samples=50)
    e = whybox.explain(whybox.adapt(Labels(), kind="multilabel"), x, "exact_shapley", background=bg, target=1)
    np.testing.assert_allclose(e.attributions.sum(1).numpy(), p[:, 1] - f_bg, atol=1e-9)


_MODULE_W = np.ones((4, 3))  # a black box's weights, read from the module's globals (as W = np.load(...) would be)
_MODULE_SCALE = 1.0


def _module_scores(x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(x.detach().numpy().astype(np.float64) @ _MODULE_W)


def _act(h: torch.Tensor) -> torch.Tensor:
    return torch.tanh(h) * _MODULE_SCALE


class _HelperNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _act(self.fc(x))


def test_run_fingerprint_covers_the_module_globals_a_model_reads() -> None:
    """A black box whose weights are a module-level global, and a model whose forward calls a module-level helper
    reading a constant, resumed stale runs after the global changed (only code, defaults and closures were hashed)."""
    from whybox.runs.job import Job, fingerprints

    global _MODULE_W, _MODULE_SCALE
    job = Job(methods=("occlusion",))
    x = torch.zeros(2, 4)
    net = _HelperNet()
    before = [fingerprints(job, whybox.adapt(m), x, [], None)["weights"] for m in (_module_scores, net)]
    again = [fingerprints(job, whybox.adapt(m), x, [], None)["weights"] for m in (_module_scores, net)]
    assert again == before
    old_w, old_scale = _MODULE_W, _MODULE_SCALE
    try:
        _MODULE_W = -old_w
        _MODULE_SCALE = -3.0
        after = [fingerprints(job, whybox.adapt(m), x, [], None)["weights"] for m in (_module_scores, net)]
    finally:
        _MODULE_W, _MODULE_SCALE = old_w, old_scale
    assert after[0] != before[0] and after[1] != before[1]


def test_a_black_box_text_model_returning_probabilities_is_read_as_them() -> None:
    """score='prob' took the softmax of a score_fn's probabilities (0.8 - 0.2 read as 0.25 instead of 0.6), with a
    warning whose advice (adapt(model, output=torch.log)) does not apply to a black box."""
    import warnings

    from whybox.errors import ModelOutputError
    from whybox.models.blackbox_text import BlackBoxTextAdapter

    def probs(texts: list[str]) -> np.ndarray:
        p = np.array([0.2 + 0.6 * ("good" in t.split()) for t in texts])
        return np.stack([1 - p, p], 1)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ProbabilityOutputWarning
        r = whybox.explain_text(BlackBoxTextAdapter(probs), ["the food was good"], "occlusion", target=1, score="prob")
    assert dict(r.words[0])["good"] == pytest.approx(0.6, abs=1e-12)
    scores = BlackBoxTextAdapter(lambda texts: probs(texts) * 3.0)  # not probabilities: their softmax, as before
    s = whybox.explain_text(scores, ["the food was good"], "occlusion", target=1, score="prob")
    f64 = torch.float64
    want = float(torch.tensor([0.6, 2.4], dtype=f64).softmax(0)[1] - torch.tensor([2.4, 0.6], dtype=f64).softmax(0)[1])
    assert dict(s.words[0])["good"] == pytest.approx(want, abs=1e-12)

    def changing(texts: list[str]) -> np.ndarray:  # probabilities for the whole text only
        return probs(texts) * np.array([[1.0 if t == "the food was good" else 3.0] for t in texts])

    with pytest.raises(ModelOutputError, match="returned probabilities before"):
        whybox.explain_text(
            BlackBoxTextAdapter(changing), ["the food was good"], "occlusion", target=1, score="prob", batch_size=1
        )


def test_k_shared_baselines_are_never_cut_by_row_even_when_k_equals_the_rows(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """n_baselines=k with k baseline rows shared by every input: when k happened to equal the batch (or a run's
    shard), row slicing and metrics cut them as one baseline per row (e[0] carried one; max_sensitivity failed)."""
    from whybox.runs.job import Job, run_job
    from whybox.runs.store import RunStore

    m = _tanh_mlp()
    x = torch.randn(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    bg = torch.randn(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    e = whybox.explain(m, x, "integrated_gradients", baseline=bg, n_baselines=3, n_steps=8, target=0)
    assert tuple(e[0].options["baseline"].shape) == (3, 6)
    alone = whybox.explain(m, x[:1], "integrated_gradients", baseline=bg, n_baselines=3, n_steps=8, target=0)
    torch.testing.assert_close(e[0].attributions, alone.attributions)
    r = whybox.evaluate(m, x, e, "max_sensitivity", n_samples=2)
    assert bool(torch.isfinite(r.scores).all())
    job = Job(
        methods=("integrated_gradients",),
        shard_size=3,
        method_options={"integrated_gradients": {"n_steps": 8, "n_baselines": 3}},
    )
    x6 = torch.cat([x, x.flip(0)])
    run_job(job, m, x6, tmp_path / "r", data_options={"integrated_gradients": {"baseline": bg}})
    want = whybox.explain(m, x6, "integrated_gradients", baseline=bg, n_baselines=3, n_steps=8).attributions
    store = RunStore.open_existing(tmp_path / "r")
    try:
        got = torch.stack([torch.from_numpy(store.load_array("integrated_gradients", i)) for i in range(6)])
    finally:
        store.close()
    torch.testing.assert_close(got.to(torch.float64), want, atol=1e-6, rtol=1e-6)


def test_gaussian_baseline_is_clipped_to_each_rows_range() -> None:
    """ATTRIBUTION.md 1.3: x + N(0, sigma^2), clipped; it left [0, 1] images for [-11, 11] at the default sigma."""
    m = nn.Sequential(nn.Flatten(), nn.Linear(12, 2)).double()
    x = torch.rand(2, 3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ig = whybox.get_explainer("integrated_gradients")(m, baseline="gaussian", sigma=0.3, n_baselines=4)
    base = ig._baseline(x).view(2, 4, 3, 2, 2)
    lo, hi = x.amin((1, 2, 3)).view(2, 1, 1, 1, 1), x.amax((1, 2, 3)).view(2, 1, 1, 1, 1)
    assert bool(((base >= lo) & (base <= hi)).all())
    assert bool((base != x.unsqueeze(1)).any())  # noise, not the inputs


_MODULE_LOG = __import__("logging").getLogger("whybox-test-fourth-pass")
_MODULE_CALLS = 0


def _logged_scores(x: torch.Tensor) -> torch.Tensor:
    global _MODULE_CALLS
    _MODULE_CALLS += 1  # state the function writes: not a setting
    _MODULE_LOG.debug("scoring %d rows", x.shape[0])
    return torch.from_numpy(x.detach().numpy().astype(np.float64) @ _MODULE_W)


def test_run_fingerprint_leaves_out_process_state_among_the_globals() -> None:
    """The first globals fix hashed a module-level logger (its manager lists every logger of the process, its cache
    fills at the first call) and a call counter: a run of such a model never resumed."""
    from whybox.runs.job import Job, fingerprints

    job, x = Job(methods=("occlusion",)), torch.zeros(2, 4)
    before = fingerprints(job, whybox.adapt(_logged_scores), x, [], None)["weights"]
    _logged_scores(x)
    __import__("logging").getLogger("whybox-test-another-logger")
    assert fingerprints(job, whybox.adapt(_logged_scores), x, [], None)["weights"] == before


@pytest.mark.parametrize("batch_size", [1, 64])
def test_rounded_or_half_precision_probabilities_of_a_black_box_are_read_as_them(batch_size: int) -> None:
    """The probability check took 1e-6 as rounding: probabilities rounded to 3 decimals (a web API) or cast to float16
    were softmaxed at one batch size and refused mid-run at another."""
    from whybox.models.blackbox_text import BlackBoxTextAdapter

    def probs(texts: list[str]) -> np.ndarray:
        z = np.array([[0.3, 1.0 + 1.5 * ("slow" in t.split()), -0.2] for t in texts])
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        return p

    want = whybox.explain_text(
        BlackBoxTextAdapter(probs), ["the service was slow"], "occlusion", target=1, score="prob"
    )
    for cast in (lambda p: p.round(3), lambda p: p.astype(np.float16)):
        ad = BlackBoxTextAdapter(lambda texts, cast=cast: cast(probs(texts)))
        got = whybox.explain_text(
            ad, ["the service was slow"], "occlusion", target=1, score="prob", batch_size=batch_size
        )
        assert dict(got.words[0])["slow"] == pytest.approx(dict(want.words[0])["slow"], abs=2e-3)


class _TinyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _roar_data() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 1, 4, 4, generator=g, dtype=torch.float64)  # float64 images: trained in the model's dtype
    y = torch.arange(12) % 3
    return x, y, x.clone(), y.clone()


def test_roar_ranks_tied_pixels_alike_in_both_splits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test split broke ties with seed + 1: an image and its map ranked differently as a training and a test
    image, so the drop measured a train/test shift (accuracy below chance for an oracle map)."""
    import whybox.metrics.roar as roar_mod

    seen: list[torch.Tensor] = []
    real = roar_mod.remove_top

    def spy(x: torch.Tensor, ranking: torch.Tensor, *a: object, **k: object) -> torch.Tensor:
        seen.append(ranking.clone())
        return real(x, ranking, *a, **k)

    monkeypatch.setattr(roar_mod, "remove_top", spy)
    data = _roar_data()
    tied = torch.zeros(12, 1, 4, 4)
    tied[:, :, :2, :2] = 1.0  # a box: 4 tied pixels on, 12 tied off
    res = roar_mod.roar({"box": (tied, tied)}, data=data, model_fn=_TinyMLP, fractions=(0.25,), n_retrain=1, epochs=1)
    assert torch.equal(seen[0], seen[1])  # train and test rankings of the same images and map
    assert set(res.accuracy) == {"box", "random"}


def test_roar_refuses_a_model_fn_that_would_train_one_model_in_place() -> None:
    from whybox.metrics.roar import roar

    data, net = _roar_data(), _TinyMLP()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    maps = (torch.rand(12, 1, 4, 4), torch.rand(12, 1, 4, 4))
    with pytest.raises(InvalidParameterError, match="got a _TinyMLP instance"):
        roar({"m": maps}, data=data, model_fn=net, fractions=(0.5,), n_retrain=1, epochs=1)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="model_fn returned the same _TinyMLP twice"):
        roar({"m": maps}, data=data, model_fn=lambda: net, fractions=(0.5,), n_retrain=2, epochs=1)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    with pytest.raises(InvalidParameterError, match="explains your data= on explain_model, which is not given"):
        roar(["saliency"], data=data, model_fn=_TinyMLP, fractions=(0.5,), n_retrain=1, epochs=1)


class _SpikeNet(nn.Module):
    """Class 0 from channel 0's first half, class 1 from a spike in channel 1 at steps 48..51."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv1d(2, 2, 1)
        with torch.no_grad():
            self.c.weight.copy_(torch.eye(2)[:, :, None])
            self.c.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c(x)
        return torch.stack([10 * h[:, 0, :32].mean(1), 5 * h[:, 1, 48:52].sum(1)], 1)


def test_find_mistakes_reads_float64_data_per_signal_regions_and_a_baseline_fill() -> None:
    """find_mistakes crashed on float64 data a float32 model reads elsewhere, on one region map per signal, gave a
    raw TypeError for target=, and Integrated Gradients ignored fill= (the insertion steps used it)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 2, 64, generator=g, dtype=torch.float64) * 0.1
    x[:, 0, :32] += 0.5
    x[::2, 1, 48:52] = 1.0  # the spike: predicted class 1 where the label says 0
    y = torch.zeros(6, dtype=torch.int64)
    seg = torch.arange(64) // 4
    shared = whybox.find_mistakes(_SpikeNet(), x, y, method="occlusion", regions=seg)
    assert [m.culprits for m in shared.mistakes] == [[12], [12], [12]]
    for per_input in (seg.expand(6, -1), seg.expand(6, 1, -1)):
        got = whybox.find_mistakes(_SpikeNet(), x, y, method="occlusion", regions=per_input)
        assert [m.culprits for m in got.mistakes] == [[12], [12], [12]]
    with pytest.raises(InvalidParameterError, match="target= is not an option of find_mistakes"):
        whybox.find_mistakes(_SpikeNet(), x, y, method="occlusion", target=1)
    ig = whybox.find_mistakes(_SpikeNet(), x, y, method="integrated_gradients", fill=0.3, n_steps=8)
    want = whybox.explain(_SpikeNet(), x[::2].float(), "integrated_gradients", target=0, baseline=0.3, n_steps=8)
    torch.testing.assert_close(ig.explanation.attributions, want.attributions)


def test_plot_labels_the_cells_of_an_object_array_as_they_are() -> None:
    """plot(inputs=X.to_numpy()) of a table with a text column raised a raw TypeError (object arrays)."""
    pd = pytest.importorskip("pandas")
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    X = pd.DataFrame({"num": np.arange(30.0) % 5, "color": ["red", "green", "blue"] * 10})
    y = (X.num > 2) | (X.color == "red")
    enc = ColumnTransformer([("c", OneHotEncoder(), ["color"])], remainder="passthrough")
    model = make_pipeline(enc, LogisticRegression()).fit(X, y)
    e = whybox.explain(model, X.iloc[:2], "exact_shapley", background=X.iloc[5:9])
    fig = e.plot(X.iloc[:2].to_numpy(), top=2)
    labels = [t.get_text() for ax in fig.axes for t in ax.get_yticklabels()]
    assert "color = red" in labels or "color = green" in labels


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 7 * 9, 4)).eval()


def test_faithfulness_options_that_would_be_ignored_are_refused_or_applied() -> None:
    """An even blur_klen crashed inside the engine; steps= with regions= and grid_size= with regions= were silently
    ignored (and recorded in params); mufidelity's pool='mean' did nothing without regions."""
    m = _small_cnn()
    x = torch.rand(2, 1, 7, 9, generator=torch.Generator().manual_seed(0))
    a = torch.rand(2, 1, 7, 9, generator=torch.Generator().manual_seed(1))
    with pytest.raises(InvalidParameterError, match="blur_klen must be an odd kernel length"):
        whybox.evaluate(m, x, a, "insertion", fill="blur", blur_klen=10)
    with pytest.raises(InvalidParameterError, match=r"steps=3 applies to element steps; with regions"):
        whybox.evaluate(m, x, a, "deletion", regions=3, steps=3)
    r = whybox.evaluate(m, x, a, "deletion", regions=3)
    assert r.params["steps"] is None and r.meta["protocol"] == "region_steps"
    with pytest.raises(InvalidParameterError, match=r"grid_size=5 sets the grid cells of images; with regions="):
        whybox.evaluate(m, x, a, "mufidelity", regions=torch.arange(63).view(7, 9) // 7, grid_size=5)
    kw = {"n_samples": 20, "grid_size": 3}
    total = whybox.evaluate(m, x, a, "mufidelity", pool="sum", **kw)
    mean = whybox.evaluate(m, x, a, "mufidelity", pool="mean", **kw)
    assert not torch.allclose(total.curves["attribution_sum"], mean.curves["attribution_sum"])  # 7 x 9: unequal cells
    torch.testing.assert_close(total.curves["drop"], mean.curves["drop"])  # the same subsets, pooled otherwise


def test_metric_results_record_the_score_space_they_read() -> None:
    """METRICS.md: record the score space; params said None both for a 4-class model (probabilities) and a
    one-output model (the raw logit)."""
    x = torch.rand(2, 1, 7, 9, generator=torch.Generator().manual_seed(0))
    a = torch.rand(2, 1, 7, 9, generator=torch.Generator().manual_seed(1))
    assert whybox.evaluate(_small_cnn(), x, a, "deletion", steps=4).meta["score"] == "prob"
    one = nn.Sequential(nn.Flatten(), nn.Linear(63, 1)).eval()
    assert whybox.evaluate(one, x, a, "deletion", steps=4).meta["score"] == "logit"
    assert whybox.evaluate(one, x, a, "deletion", steps=4, score="logit").meta["score"] == "logit"


def test_road_flags_a_flat_map() -> None:
    x = torch.rand(2, 1, 7, 9, generator=torch.Generator().manual_seed(0))
    flat = torch.ones(2, 1, 7, 9)
    r = whybox.evaluate(_small_cnn(), x, flat, "road", fractions=(0.2,))
    assert r.meta["flat_map"] == [True, True] and "tie rule" in r.meta["note"]


def test_stability_kendall_ranks_by_abs_as_documented() -> None:
    """Kendall tau-b was always on the signed weights: abs=True ('ranking by |weight|', the default) did nothing."""
    import itertools

    from scipy.stats import kendalltau

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 3)).eval()
    x = torch.randn(1, 12)
    opts = {"n_runs": 4, "measure": "kendall", "explainer_params": {"n_samples": 40}}
    got = {a: whybox.evaluate(net, x, "lime", "stability", abs=a, **opts).scores.item() for a in (True, False)}
    v = [whybox.explain(net, x, "lime", n_samples=40, seed=s).meta["values"][0].numpy() for s in range(4)]
    pairs = list(itertools.combinations(range(4), 2))
    want_abs = np.mean([kendalltau(abs(v[a]), abs(v[b])).statistic for a, b in pairs])
    want_signed = np.mean([kendalltau(v[a], v[b]).statistic for a, b in pairs])
    assert got[True] == pytest.approx(want_abs, abs=1e-12) and got[False] == pytest.approx(want_signed, abs=1e-12)


class _Settings:  # a plain settings object (as a dataclass or SimpleNamespace): hashed by its values
    def __init__(self) -> None:
        self.scale = 1.0
        self.norm = {"mean": {"value": [1.0, 0.5]}}  # three levels deep


_SETTINGS = _Settings()


def _settings_scores(x: torch.Tensor) -> torch.Tensor:
    s = _SETTINGS.scale * _SETTINGS.norm["mean"]["value"][0]
    return x.sum(1, keepdim=True).repeat(1, 2) * s


def test_run_fingerprint_follows_settings_objects_and_leaves_modules_by_name() -> None:
    """The process-state filter dropped plain settings objects (a dataclass, a namespace) and dicts nested three
    deep, and a module closed over (import torch inside a factory) crashed the hasher (OSError from ctypes)."""
    from whybox.runs.job import Job, fingerprints

    job, x = Job(methods=("occlusion",)), torch.zeros(2, 4)
    before = fingerprints(job, whybox.adapt(_settings_scores), x, [], None)["weights"]
    _SETTINGS.norm["mean"]["value"][0] = 2.0
    try:
        assert fingerprints(job, whybox.adapt(_settings_scores), x, [], None)["weights"] != before
    finally:
        _SETTINGS.norm["mean"]["value"][0] = 1.0

    def make() -> object:
        import torch as t

        return lambda rows: t.as_tensor(rows).sum(1, keepdim=True).repeat(1, 2)

    digest = fingerprints(job, whybox.adapt(make()), x, [], None)["weights"]
    assert digest == fingerprints(job, whybox.adapt(make()), x, [], None)["weights"]


def test_find_mistakes_ig_takes_the_insertion_fill_and_keeps_token_id_errors() -> None:
    """The first fill -> baseline mapping refused fill='min' (no IG baseline of that name) and left 'blur' and
    'uniform' to IG's own versions (another blur, other draws); the dtype cast turned token ids into floats."""
    from whybox.errors import InvalidInputError
    from whybox.metrics.faithfulness import resolve_fill

    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 2, 64, generator=g) * 0.1
    x[:, 0, :32] += 0.5
    x[::2, 1, 48:52] = 1.0
    y = torch.zeros(6, dtype=torch.int64)
    for fill in ("min", "uniform", "mean"):
        rep = whybox.find_mistakes(_SpikeNet(), x, y, method="integrated_gradients", fill=fill, n_steps=4)
        base = rep.explanation.options["baseline"]
        torch.testing.assert_close(base, resolve_fill(fill, x[::2], seed=0))
    torch.manual_seed(0)
    emb = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 2)).eval()
    ids = torch.randint(0, 10, (3, 3), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        wrong = 1 - emb(ids).argmax(1)  # every row a mistake: each is explained
    with pytest.raises(InvalidInputError, match="token ids"):
        whybox.find_mistakes(emb, ids, wrong, method="occlusion")


def test_loaders_refuse_an_unnamed_csv_column_and_read_configs_like_flags(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """pandas' to_csv index became a feature (then a raw shape error); a TOML target = 3 was refused and a YAML 1e-1
    read as a string; text sources mixed with and without labels lost the labels silently; a UTF-8 BOM stayed in the
    first text."""
    from whybox.errors import DataFormatError, InvalidInputError
    from whybox.runs.loaders import _load_csv, _load_texts, _parse_config

    (tmp_path / "t.csv").write_text(",a,b\n0,1.0,2.0\n1,3.0,4.0\n")
    with pytest.raises(DataFormatError, match=r"has no name \(pandas writes its index so: save with .*index=False"):
        _load_csv(tmp_path / "t.csv", "t.csv", None, None)
    got = _parse_config("noise_level: 1e-1\nsteps: 3\nname: abc\nq: '1e-1'\n", ".yaml", "c.yaml")
    assert got == {"noise_level": 0.1, "steps": 3, "name": "abc", "q": "1e-1"}

    class _Model:  # what _load_texts reads of a loaded text model
        pass

    (tmp_path / "a.txt").write_text("\ufeffThe plot was dull.\nGreat food.\n", encoding="utf-8")
    import whybox.runs.loaders as L

    seen: dict[str, object] = {}
    real = L.texts_dataset

    def spy(texts, model, *, names, labels):  # type: ignore[no-untyped-def]
        seen.update(texts=texts, labels=labels)
        return None

    L.texts_dataset = spy  # type: ignore[assignment]
    try:
        _load_texts([str(tmp_path / "a.txt")], _Model(), None)  # type: ignore[arg-type]
        assert seen["texts"] == ["The plot was dull.", "Great food."] and seen["labels"] is None
        _load_texts(["sentiment-test", str(tmp_path / "a.txt")], _Model(), 3)  # type: ignore[arg-type]
        assert seen["labels"] is not None and len(seen["labels"]) == 3  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match=r"sentiment-test has labels but .*a.txt has none"):
            _load_texts(["sentiment-test", str(tmp_path / "a.txt")], _Model(), None)  # type: ignore[arg-type]
    finally:
        L.texts_dataset = real  # type: ignore[assignment]


def test_digits_model_with_weights_leaves_the_rng_and_trains_under_inference_mode(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """load_model('digits-cnn', weights=...) drew its throwaway initialisation from the caller's RNG; the shared
    trainer failed on a first call inside torch.inference_mode()."""
    from whybox.data import DigitsCNN
    from whybox.data.digits import fit_classifier
    from whybox.runs.loaders import load_model

    torch.save(DigitsCNN().state_dict(), tmp_path / "w.pt")
    torch.manual_seed(123)
    want = torch.rand(1)
    torch.manual_seed(123)
    load_model("digits-cnn", weights=tmp_path / "w.pt")
    assert torch.equal(torch.rand(1), want)
    x, y = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.arange(8) % 10

    def fit(epochs: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        return fit_classifier(DigitsCNN, x, y, epochs=epochs, batch_size=4, init_seed=0, generator=g).state_dict()

    want = fit(2)
    with torch.inference_mode():
        got = fit(2)
    for name, value in want.items():  # the same training under inference mode as outside it
        torch.testing.assert_close(got[name], value, msg=name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the initialisation fit_classifier draws (init_seed=0)
        init = DigitsCNN().state_dict()
    assert not torch.equal(init["head.fc.weight"], got["head.fc.weight"])  # and it did train


def test_five_class_probabilities_rounded_to_3_decimals_are_read_as_them() -> None:
    """Rounded to 3 decimals, 5 classes can sum to 0.998: beyond the first tolerance, so they were softmaxed."""
    from whybox.models.blackbox_text import BlackBoxTextAdapter

    def probs(texts: list[str]) -> np.ndarray:
        z = np.array([[0.3, 1.0 + 2.0 * ("slow" in t.split()), -0.2, 0.1, 0.4] for t in texts])
        return np.exp(z) / np.exp(z).sum(1, keepdims=True)

    def rounded(texts: list[str]) -> np.ndarray:
        return probs(texts).round(3)

    want = whybox.explain_text(
        BlackBoxTextAdapter(probs), ["the service was slow"], "occlusion", target=1, score="prob"
    )
    got = whybox.explain_text(
        BlackBoxTextAdapter(rounded), ["the service was slow"], "occlusion", target=1, score="prob"
    )
    assert dict(got.words[0])["slow"] == pytest.approx(dict(want.words[0])["slow"], abs=3e-3)


def test_roar_frees_the_models_it_has_trained() -> None:
    """The in-place check kept every retrained model alive until roar returned."""
    import weakref

    from whybox.metrics.roar import roar

    alive: weakref.WeakSet[nn.Module] = weakref.WeakSet()

    def build() -> nn.Module:
        m = _TinyMLP()
        alive.add(m)
        assert len(alive) <= 2, len(alive)  # the one being built and at most one not yet collected
        return m

    import gc

    gc.collect()
    roar({"m": (torch.rand(12, 1, 4, 4), torch.rand(12, 1, 4, 4))}, data=_roar_data(), model_fn=build,
         fractions=(0.25, 0.5), n_retrain=2, epochs=1)  # fmt: skip


def test_text_curves_rank_words_as_explain_text_and_stability_reads_words() -> None:
    """Deletion on texts ranked a word by the mean of its subwords' gradient values (explain_text sums them: a
    two-subword word fell in rank); stability with a gradient method scored embedding elements, pads and specials
    included, so a text's score changed with the longer texts of its batch."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_text import tiny_bert, toy_tokenizer

    from whybox.models.text import adapt_text

    clf = adapt_text(tiny_bert(), toy_tokenizer())
    texts = ["played it was very fun", "the movie was not a good film but the acting was fun"]
    out = whybox.explain_text(clf, texts, "integrated_gradients", n_steps=8)
    r = whybox.evaluate(clf, texts, out, "deletion")
    order = r.meta["region_order"][0].tolist()
    words = [w for w, _ in out.words[0]]
    by_value = sorted(range(len(words)), key=lambda i: -out.words[0][i][1])
    assert order[: len(words)] == by_value
    kw = {"n_runs": 3, "measure": "kendall", "explainer_params": {"n_samples": 4}}
    alone = whybox.evaluate(clf, texts[:1], "smoothgrad", "stability", **kw).scores
    batch = whybox.evaluate(clf, texts, "smoothgrad", "stability", **kw).scores
    torch.testing.assert_close(batch[:1], alone)


def test_words_are_read_as_written_with_a_byte_level_or_unk_tokenizer() -> None:
    """Words were their tokens joined: 'Ġ' markers and byte mojibake ('ĠcafÃ©') for byte-level BPE, '[UNK]' for an
    out-of-vocabulary word (in out.words, to_html and the run report)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_text import tiny_bert, toy_tokenizer

    from whybox.models.text import adapt_text

    clf = adapt_text(tiny_bert(), toy_tokenizer())
    out = whybox.explain_text(clf, ["the café movie was playing"], "occlusion")
    assert [w for w, _ in out.words[0]] == ["the", "café", "movie", "was", "playing"]


def test_occlusion_word_values_sum_their_tokens() -> None:
    """Occlusion on text hides one token at a time; a word's value was the mean of its tokens' drops, matching
    neither the word removed nor the sum. It is the sum, as for the other methods whose tokens carry their own."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_text import tiny_bert, toy_tokenizer

    from whybox.models.text import adapt_text, word_pool

    clf = adapt_text(tiny_bert(), toy_tokenizer())
    out = whybox.explain_text(clf, ["playing it"], "occlusion")
    tok = dict(out.tokens[0])
    assert dict(out.words[0])["playing"] == pytest.approx(tok["play"] + tok["##ing"], abs=1e-12)
    assert word_pool(clf, "occlusion") == "sum" and word_pool(clf, "feature_ablation") == "mean"


def test_stability_over_regions_scores_each_rows_own_regions() -> None:
    """Ids a label map leaves unused counted as constant-0 features: Kendall tau changed when a map was renumbered
    (SLIC's start_label=1) and with the other rows' maps in the batch."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3)
    )
    net = net.eval()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    lab = torch.arange(8).view(8, 1) // 2 * 4 + torch.arange(8).view(1, 8) // 2  # 16 blocks
    kw = {"measure": "kendall", "n_runs": 3, "explainer_params": {"n_samples": 4, "noise_level": 0.3}}
    a = whybox.evaluate(net, x, "smoothgrad", "stability", regions=lab, **kw).scores
    torch.testing.assert_close(whybox.evaluate(net, x, "smoothgrad", "stability", regions=lab + 1, **kw).scores, a)
    m1 = lab // 2
    m1[m1 == 7] = 9  # ids 7 and 8 unused
    maps = torch.stack([lab, m1])
    alone = whybox.evaluate(net, x[1:], "smoothgrad", "stability", regions=maps[1:], **kw).scores
    both = whybox.evaluate(net, x, "smoothgrad", "stability", regions=maps, **kw).scores
    torch.testing.assert_close(both[1:], alone)


def test_run_fingerprint_reads_pandas_objects_dates_and_plain_values() -> None:
    """The first pandas branch crashed on an Index, a Timestamp and dates (raw errors ended the run); a dataclass
    holding a torch dtype (no __dict__) was taken for process state, so a changed setting beside it resumed stale
    numbers."""
    import dataclasses
    import hashlib

    import pandas as pd

    from whybox.runs.job import Job, _hash_value, fingerprints

    def digest(v: object) -> str:
        h = hashlib.sha256()
        _hash_value(h, v)
        return h.hexdigest()

    for v in (pd.Index(["a", "b"]), pd.Timestamp("2020-01-01"), pd.Series(pd.date_range("2020", periods=3)),
              np.array(["a", "b"]), np.array(["2020-01-01"], dtype="datetime64[D]")):  # fmt: skip
        assert digest(v) == digest(v)
    assert digest(pd.Series([1.0, 2.0])) != digest(pd.Series([1.0, 3.0]))

    @dataclasses.dataclass
    class Cfg:
        scale: float
        dtype: torch.dtype = torch.float32

    cfg = Cfg(1.0)
    job, x = Job(methods=("occlusion",)), torch.zeros(2, 4)

    def scores(rows: torch.Tensor) -> torch.Tensor:
        return rows.to(cfg.dtype).sum(1, keepdim=True).repeat(1, 2) * cfg.scale

    before = fingerprints(job, whybox.adapt(scores), x, [], None)["weights"]
    cfg.scale = 5.0
    assert fingerprints(job, whybox.adapt(scores), x, [], None)["weights"] != before


def test_fingerprint_sees_every_cell_of_pandas_arrays_long_patterns_and_numpy_dtypes() -> None:
    """A Categorical or nullable-int array fell back to str() (cut to its ends), a long pattern to its repr (cut at
    200 characters), and a dataclass holding a numpy dtype was taken for process state: changes went unseen. Two
    temporaries hashed in turn could also share an id, so the second was skipped as already seen."""
    import dataclasses
    import hashlib
    import re

    import pandas as pd

    from whybox.runs.job import _hash_value, _settings_like

    def digest(*vs: object) -> str:
        h = hashlib.sha256()
        seen: set[int] = set()
        for v in vs:
            _hash_value(h, v, 0, seen)
        return h.hexdigest()

    cells = [1] * 100
    changed = list(cells)
    changed[50] = 5
    cat = pd.Categorical(["a"] * 100)
    assert digest(cat, pd.array(cells, dtype="Int64")) != digest(cat, pd.array(changed, dtype="Int64"))
    assert digest(pd.Categorical(["a"] * 50 + ["b"] + ["a"] * 49)) != digest(cat)
    long = "x" * 300
    assert digest(re.compile(long + "(a|b)")) != digest(re.compile(long + "(a|c)"))

    @dataclasses.dataclass
    class Cfg:
        scale: float
        dtype: object = np.dtype("float32")

    assert _settings_like(Cfg(1.0)) and digest(Cfg(1.0)) != digest(Cfg(5.0))


def test_find_mistakes_refuses_a_reference_row_in_another_column_order() -> None:
    """A Series fill in another column order than the DataFrame was read by position, silently; explain and evaluate
    refuse it (options are read by position), and find_mistakes now does as they do."""
    from whybox.errors import InvalidInputError

    pd = pytest.importorskip("pandas")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)).eval()
    X = pd.DataFrame(np.random.default_rng(0).normal(size=(12, 4)), columns=list("abcd"))
    with torch.no_grad():
        y = 1 - net(torch.tensor(X.to_numpy(), dtype=torch.float32)).argmax(1)  # every row a mistake
    ref = pd.Series({"a": 0.1, "b": -0.2, "c": 0.3, "d": 0.4})
    kw = {"method": "occlusion", "max_mistakes": 3}
    assert whybox.find_mistakes(net, X, y, fill=ref, **kw).n_wrong == 12
    shuffled = ref[["d", "c", "b", "a"]]
    order = r"\(pandas\) has the inputs' columns in another order"
    for method in ("occlusion", "integrated_gradients"):
        with pytest.raises(InvalidInputError, match=order):
            whybox.find_mistakes(net, X, y, fill=shuffled, method=method, max_mistakes=3)
    with pytest.raises(InvalidInputError, match=order):  # as explain reads it
        whybox.explain(net, X, "occlusion", fill=shuffled)
