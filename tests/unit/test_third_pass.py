"""Regressions found by the third-pass audits: each test states the promised behaviour the code missed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import whybox
from whybox.errors import InvalidParameterError, WhyboxError


def test_cam_max_normalisation_keeps_the_signs_of_a_signed_map() -> None:
    """normalize='max' divides by the largest |value|: an all-negative map (relu=False) stays negative, in the same
    order, within [-1, 1] (dividing by its negative max turned the most negative pixel into the brightest)."""
    m = nn.Sequential(nn.Conv2d(1, 1, 1), nn.Flatten(), nn.Linear(4, 2)).double().eval()
    with torch.no_grad():
        m[0].weight.fill_(1.0)
        m[0].bias.zero_()
        m[2].weight.fill_(1.0)
        m[2].bias.zero_()
    x = torch.tensor([[[[-1.0, -2.0], [-3.0, -4.0]]]], dtype=torch.float64)
    kw = {"layer": "0", "target": 0, "relu": False, "upsample": False}
    raw = whybox.explain(m, x, "hirescam", normalize="none", **kw).attributions
    scaled = whybox.explain(m, x, "hirescam", normalize="max", **kw).attributions
    torch.testing.assert_close(scaled, raw / raw.abs().max())
    assert float(scaled.min()) == -1.0 and bool((scaled < 0).all())


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("integrated_gradients", {"baseline": "blur", "sigma": math.inf}),
        ("integrated_gradients", {"baseline": "gaussian", "sigma": math.inf}),
        ("smoothgrad", {"sigma": math.inf}),
        ("smoothgrad", {"noise_level": math.inf}),
    ],
)
def test_an_infinite_noise_or_blur_width_is_refused_by_name(method: str, params: dict[str, float]) -> None:
    """sigma=inf crashed the blur with a bare OverflowError and gave all-NaN maps elsewhere."""
    m = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.Flatten(), nn.Linear(72, 3)).double().eval()
    x = torch.rand(1, 3, 6, 6, dtype=torch.float64)
    name = next(iter(k for k in params if k != "baseline"))
    with pytest.raises(InvalidParameterError, match=rf"{name} must be a finite number >= 0.*inf"):
        whybox.explain(m, x, method, target=0, **params)


def test_a_lazy_model_not_yet_run_is_a_named_error() -> None:
    m = nn.Sequential(nn.LazyConv2d(2, 3, padding=1), nn.Flatten(), nn.LazyLinear(3))
    with pytest.raises(WhyboxError, match=r"uninitialised lazy parameters.*run one forward pass"):
        whybox.explain(m, torch.rand(1, 3, 6, 6), "saliency", target=0)
    m(torch.rand(1, 3, 6, 6))  # once run, it explains
    assert whybox.explain(m, torch.rand(1, 3, 6, 6), "saliency", target=0).attributions.shape == (1, 3, 6, 6)


def test_a_multi_output_estimator_is_a_named_error_not_an_index_crash() -> None:
    """predict_proba of a multi-output classifier is one (B, 2) array per output: stacked, it was read as (L, B, 2)
    scores and crashed with IndexError / ValueError deep in the methods."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.multioutput import MultiOutputClassifier

    from whybox.errors import ModelOutputError

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    y = np.stack([(x[:, 0] > 0), (x[:, 1] > 0)], 1).astype(int)
    xt = torch.tensor(x[:3], dtype=torch.float32)
    for model in (MultiOutputClassifier(LogisticRegression()).fit(x, y), RandomForestClassifier(5).fit(x, y)):
        for method in ("occlusion", "kernel_shap"):
            with pytest.raises(ModelOutputError, match=r"multi-output.*estimators_\[k\]"):
                whybox.explain(model, xt, method, target=0)
        with pytest.raises(ModelOutputError, match="multi-output"):
            whybox.evaluate(model, xt, torch.rand(3, 3), "deletion", target=0)


def test_an_embedding_forward_ending_in_squeeze_reads_a_one_row_chunk() -> None:
    """A forward ending in .squeeze() gives (D,) for one row: read as (1, D), as a classifier's (K,) is, so a
    result does not depend on whether some chunk holds one row."""

    class Squeezed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(5, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x).squeeze()

    torch.manual_seed(0)
    m = Squeezed().eval()
    ad = whybox.adapt(m, kind="embedding", references=torch.randn(3, 4))
    x = torch.randn(2, 5)
    whole = whybox.explain(ad, x, "occlusion", target=0, batch_size=2).attributions
    for bs in (3, 11):  # 12 rows: chunks of 3 and 11 (the last of one row)
        torch.testing.assert_close(whybox.explain(ad, x, "occlusion", target=0, batch_size=bs).attributions, whole)
    assert whybox.explain(ad, x[:1], "saliency", target=0).attributions.shape == (1, 5)


def test_adapt_refuses_options_its_adapter_would_drop() -> None:
    from sklearn.linear_model import LogisticRegression

    net = nn.Linear(5, 4)
    with pytest.raises(InvalidParameterError, match=r"references=, scale= apply to embedding models only"):
        whybox.adapt(net, references=torch.randn(3, 4), scale=100.0)
    with pytest.raises(InvalidParameterError, match=r"similarity= apply to embedding models only.*kind='embedding'"):
        whybox.adapt(net, similarity="dot")
    clf = LogisticRegression().fit(np.random.default_rng(0).normal(size=(20, 3)), np.arange(20) % 2)
    with pytest.raises(InvalidParameterError, match=r"output=, layers= do not apply to a scikit-learn estimator"):
        whybox.adapt(clf, output=1, layers="x")
    whybox.adapt(net, kind="embedding", references=torch.randn(3, 4), similarity="dot", scale=2.0)  # still fine


def test_sparseness_and_complexity_of_a_text_are_over_its_words(make_text_classifier: object) -> None:
    """The never-changing group of CLS, SEP and the pads is no word of the text: a one-word text has sparseness 0
    and complexity 0 (d = 1), and a longer text's statistics are those of its word values alone."""
    pytest.importorskip("transformers")
    from whybox.metrics.complexity import entropy, gini

    ad = make_text_classifier(0, 3)  # type: ignore[operator]
    texts = ["playing", "the movie was great"]
    for method in ("integrated_gradients", "saliency", "occlusion"):
        r = whybox.explain_text(ad, texts, method, target=1)
        a = r.explanation.attributions.detach().double().abs()
        pool = (lambda t: t.mean()) if method == "occlusion" else (lambda t: t.sum())  # a copied value, or Σ|a|
        words = [torch.stack([pool(a[i, idx]) for _, idx in spans]) for i, spans in enumerate(r.batch.word_spans())]
        sparse = whybox.evaluate(ad, texts, r, "sparseness").scores
        complexity = whybox.evaluate(ad, texts, r, "complexity").scores
        assert sparse[0].item() == 0.0 and complexity[0].item() == pytest.approx(0.0, abs=1e-12)
        assert sparse[1].item() == pytest.approx(gini(words[1][None]).item(), abs=1e-9)
        assert complexity[1].item() == pytest.approx(entropy(words[1][None]).item(), abs=1e-9)


def test_lime_on_a_black_box_text_leaves_its_pads_and_index_column_out() -> None:
    """explain_text gives LIME keep_null=False on every text model, as its docstring says: the never-changing pads
    and index column of a black box's presence rows are no feature of the surrogate."""
    from whybox.models.blackbox_text import BlackBoxTextAdapter
    from whybox.models.text import text_defaults

    def score(texts: list[str]) -> torch.Tensor:
        v = torch.tensor([t.split().count("great") - t.split().count("bad") for t in texts], dtype=torch.float64)
        return torch.stack([-v, v], 1)

    bb = BlackBoxTextAdapter(score, labels=["neg", "pos"])
    texts = ["the movie was great but bad", "great"]
    assert text_defaults("lime", bb.encode(texts))["keep_null"] is False
    kw = {"target": 1, "seed": 0, "n_samples": 200, "score": "logit"}
    default = whybox.explain_text(bb, texts, "lime", **kw)
    explicit = whybox.explain_text(bb, texts, "lime", keep_null=False, **kw)
    assert default.words == explicit.words


def test_a_text_run_pools_a_perturbation_word_as_explain_text_reads_it(
    make_text_classifier: object, tmp_path: object
) -> None:
    """A run over texts (as compare gives it) scores occlusion's words with the mean of their subwords' copied
    value, as whybox.evaluate on the texts does: a word of two subwords no longer counts twice."""
    pytest.importorskip("transformers")
    from pathlib import Path

    from whybox.models.text import text_defaults
    from whybox.runs.job import METRICS_KEY, Job, run_job
    from whybox.runs.store import RunStore

    ad = make_text_classifier(0, 3)  # type: ignore[operator]
    texts = ["playing the movie", "the movie was great"]
    batch = ad.encode(texts)
    assert len(batch.word_spans()[0][0][1]) > 1  # 'playing' is two subwords here
    metrics = ("sparseness", "comprehensiveness")
    job = Job(methods=("occlusion",), metrics=metrics, shard_size=2, target="prediction")
    options = {"occlusion": text_defaults("occlusion", batch), METRICS_KEY: {"regions": batch.word_features()}}
    run_job(job, ad, batch.inputs, Path(str(tmp_path)) / "run", data_options=options)
    store = RunStore.open_existing(Path(str(tmp_path)) / "run")
    try:
        rows = store.contents()[0]["metric_values"]
    finally:
        store.close()
    r = whybox.explain_text(ad, texts, "occlusion")
    for metric in metrics:
        want = whybox.evaluate(ad, texts, r, metric).scores.tolist()
        got = [row[3] for row in sorted(rows) if row[2] == metric]
        assert got == pytest.approx(want, abs=1e-9), metric


def test_a_nan_csi_says_why() -> None:
    """LIME with fewer samples than features leaves its coefficients' standard deviations undefined: CSI is NaN and
    meta['csi_note'] says why and what to change (it came back NaN with no note)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(128, 3)).eval()
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    features = torch.arange(64).reshape(1, 8, 8)
    few = whybox.evaluate(
        m, x, "lime", "stability", measure="csi", n_runs=2, explainer_params={"n_samples": 30, "features": features}
    )
    assert all(math.isnan(v) for v in few.scores.tolist())
    assert "n_samples" in few.meta["csi_note"]
    enough = whybox.evaluate(
        m,
        x,
        "lime",
        "stability",
        measure="csi",
        n_runs=2,
        explainer_params={"n_samples": 200, "features": torch.arange(4).repeat_interleave(16).reshape(1, 8, 8)},
    )
    assert all(math.isfinite(v) for v in enough.scores.tolist()) and "csi_note" not in enough.meta


def test_shown_probabilities_of_a_model_that_returns_probabilities_are_its_own() -> None:
    """The CLI and the run report show each prediction's probability: a black box (or a model ending in softmax)
    returning [0.1, 0.9] is shown 0.9, not the softmax of its probabilities (0.69); logits still get the softmax."""
    from whybox.models.adapter import output_probabilities
    from whybox.models.blackbox_text import BlackBoxTextAdapter

    def score(texts: list[str]) -> np.ndarray:
        return np.array([[0.1, 0.9] if "good" in t.split() else [0.8, 0.2] for t in texts])

    bb = BlackBoxTextAdapter(score, labels=["neg", "pos"])
    p = output_probabilities(bb, bb.scores(bb.encode(["a good day", "a day"]).inputs))
    torch.testing.assert_close(p, torch.tensor([[0.1, 0.9], [0.8, 0.2]], dtype=torch.float64))
    logits = torch.tensor([[0.1, 0.9], [2.0, -1.0]])  # one decision for the batch: logits here, both softmaxed
    net = whybox.adapt(nn.Linear(2, 2))
    torch.testing.assert_close(output_probabilities(net, logits), logits.softmax(1))
    rounded = torch.tensor([[0.9, 0.05, 0.0499], [0.2, 0.3, 0.5]])  # an API's 4 decimals: still its probabilities
    torch.testing.assert_close(output_probabilities(net, rounded), rounded)


@pytest.mark.parametrize("name", ["", "."])
def test_writing_to_a_folder_name_is_an_os_error_the_cli_reports(name: str, tmp_path: object) -> None:
    """--json '' / report --out '' reached a raw ValueError ('has an empty name'): an IsADirectoryError now, which
    the commands report as a usage error naming the flag."""
    import os

    from whybox.report.html import write_text_atomic

    here = os.getcwd()
    os.chdir(str(tmp_path))
    try:
        with pytest.raises(IsADirectoryError, match="is a folder, not a file name"):
            write_text_atomic(name, "x")
        assert os.listdir(".") == []
    finally:
        os.chdir(here)


def test_find_mistakes_on_texts_explains_and_steps_with_the_fill_it_is_given(make_text_classifier: object) -> None:
    """A fill name on texts was ignored (any string, even a wrong one, gave [MASK]) and a fill tensor reached the
    insertion steps only, the explanation still made with [MASK]: both now read the same given fill."""
    pytest.importorskip("transformers")
    ad = make_text_classifier(0, 3)  # type: ignore[operator]
    texts = ["the movie was great", "playing the movie", "a bad plot"]
    batch = ad.encode(texts)
    with torch.no_grad():
        wrong = ((ad.scores(batch.inputs).argmax(1) + 1) % 3).tolist()  # every text mislabelled
    kw = {"method": "occlusion"}
    by_name = whybox.find_mistakes(ad, texts, wrong, fill="unk", **kw)
    by_tensor = whybox.find_mistakes(ad, texts, wrong, fill=batch.fill("unk"), **kw)
    default = whybox.find_mistakes(ad, texts, wrong, **kw)
    direct = whybox.explain(ad, batch.inputs, "occlusion", target=torch.tensor(wrong), fill=batch.fill("unk"),
                            window=(1, batch.inputs.shape[-1]), stride=(1, batch.inputs.shape[-1]))  # fmt: skip
    torch.testing.assert_close(by_name.explanation.attributions, direct.attributions)
    torch.testing.assert_close(by_tensor.explanation.attributions, direct.attributions)
    assert [m.hc for m in by_name.mistakes] == [m.hc for m in by_tensor.mistakes]
    assert not torch.equal(default.explanation.attributions, direct.attributions)  # [MASK] is another fill
    with pytest.raises(InvalidParameterError, match=r"fill='nope' on a text model .* one of"):
        whybox.find_mistakes(ad, texts, wrong, fill="nope", **kw)


def test_int_and_bool_columns_reach_a_frame_fitted_estimator_in_their_own_dtype() -> None:
    """An int column cast to text and one-hot encoded saw '3.0' (never fitted: all-zero codes), so the column that
    drives the model got exactly 0 and the Shapley values did not add up to the model's output; a bool one saw
    '1.0' for 'True'. Cells go back as ints and bools: efficiency holds and the column gets its share."""
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

    g = np.random.default_rng(0)
    n = 300
    df = pd.DataFrame({"kids": g.integers(0, 4, n), "vip": g.random(n) > 0.5, "inc": g.normal(50, 10, n)})
    y = ((df.kids >= 2) ^ df.vip).astype(int)
    as_text = make_pipeline(FunctionTransformer(lambda t: t.astype(str)), OneHotEncoder(handle_unknown="ignore"))
    pipe = make_pipeline(
        ColumnTransformer([("cat", as_text, ["kids", "vip"]), ("n", StandardScaler(), ["inc"])]), LogisticRegression()
    ).fit(df, y)
    rows, background = df.iloc[:4], df.iloc[100:116]
    e = whybox.explain(pipe, rows, "exact_shapley", background=background, target=1)
    p = pipe.predict_proba(rows)[:, 1]
    base = pipe.predict_proba(background)[:, 1].mean()
    np.testing.assert_allclose(base + e.attributions.sum(1).numpy(), p, atol=1e-9)
    assert bool((e.attributions[:, 0].abs() > 0.01).all())  # kids has its share (was exactly 0)
    # a fill no int holds (a column's mean, 1.5) stays a number: occluding kids is the model's drop with 1.5 there
    half = pd.Series({"kids": 1.5, "vip": True, "inc": 50.0})
    occ = whybox.explain(pipe, rows, "occlusion", fill=half, target=1)
    filled = rows.astype({"kids": object}).assign(kids=1.5)
    np.testing.assert_allclose(occ.attributions[:, 0].numpy(), p - pipe.predict_proba(filled)[:, 1], atol=1e-9)


class _ImageAndMeta(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 16 + 5, 3)

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([self.conv(image).flatten(1), meta / 50.0], 1))


def test_statistic_fills_of_several_inputs_are_each_inputs_own() -> None:
    """baseline='mean'/'uniform', fill='mean'/'min'/'uniform' and SmoothGrad's noise_level took one statistic over
    the packed row: an image in [0, 1] beside metadata near 50 got a 'mean' of ~8 and noise on the metadata's
    scale. Each input now gets its own: the same numbers as a fill built per input by hand."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = _ImageAndMeta().double().eval()
    ad = whybox.adapt(model, input_shapes=[(3, 4, 4), (5,)])
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 4, 4, generator=g, dtype=torch.float64)
    meta = 50 + 10 * torch.rand(2, 5, generator=g, dtype=torch.float64)
    by_input_mean = ad.packing.pack(
        image.mean((2, 3), keepdim=True).expand_as(image), meta.mean(1, keepdim=True).expand_as(meta)
    )
    by_input_min = ad.packing.pack(
        image.amin((1, 2, 3), keepdim=True).expand_as(image), meta.amin(1, keepdim=True).expand_as(meta)
    )
    x = (image, meta)
    ig = whybox.explain(ad, x, "integrated_gradients", target=0, baseline="mean", n_steps=8)
    ig_hand = whybox.explain(ad, x, "integrated_gradients", target=0, baseline=by_input_mean, n_steps=8)
    torch.testing.assert_close(ig.attributions, ig_hand.attributions)
    fa = whybox.explain(ad, x, "feature_ablation", target=0, fill="mean")
    torch.testing.assert_close(
        fa.attributions, whybox.explain(ad, x, "feature_ablation", target=0, fill=by_input_mean).attributions
    )
    a = torch.rand(2, ad.packing.n_features, generator=g, dtype=torch.float64)
    d_min = whybox.evaluate(ad, x, a, "deletion", target=0, fill="min", steps=5)
    torch.testing.assert_close(
        d_min.scores, whybox.evaluate(ad, x, a, "deletion", target=0, fill=by_input_min, steps=5).scores
    )
    from whybox.masking.fills import make_fill

    drawn = ad.packing.unpack(make_fill("uniform", ad.packing.pack(image, meta), generator=g, packing=ad.packing))
    assert bool((drawn[0] <= image.flatten(1).amax(1).view(-1, 1, 1, 1)).all())  # the image's own range
    assert bool((drawn[1] >= meta.amin(1, keepdim=True)).all())  # the metadata's own range
    sg = whybox.explain(ad, x, "smoothgrad", target=0, n_samples=2)
    ranges = torch.stack([image.flatten(1).amax(1) - image.flatten(1).amin(1), meta.amax(1) - meta.amin(1)], 1)
    torch.testing.assert_close(sg.meta["sigma"], 0.15 * ranges)


def test_explanation_plot_save_and_rows_take_what_users_pass() -> None:
    """plot(labels=config.id2label) titles by name (a dict's keys were read as the names); a DataFrame in another
    column order is labelled by name; a '$' in a cell is drawn as text; several tabular inputs plot from their
    tuple; tensors sharing memory in meta save; a one-element bool tensor is no row index."""
    import io

    import pandas as pd

    e = whybox.Explanation(
        attributions=torch.tensor([[0.5, -0.2, 0.1], [0.1, 0.3, -0.4]], dtype=torch.float64),
        target=torch.tensor([1, 0]),
        method="custom $x$",
        meta={"feature_names": ["age", "income", "city"]},
    )
    fig = e.plot(labels={1: "positive", 0: "negative"})
    assert [ax.get_title() for ax in fig.axes[:2]] == ["row 0: positive", "row 1: negative"]
    with pytest.raises(InvalidParameterError, match="labels must be class names"):
        e.plot(labels="ab")
    frame = pd.DataFrame({"city": ["$20k-$50k", "oslo"], "age": [41.0, 30.0], "income": [5321.0, 10.0]})
    fig = e.plot(frame)
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert ticks == ["age = 41", "income = 5321", "city = $20k-$50k"]
    fig.savefig(io.BytesIO(), format="png")  # mathtext would drop the dollars (or fail on '$^$')
    e.meta["predicted"] = e.target  # shares memory with target
    e.meta["raw"] = e.attributions
    buf = __import__("tempfile").mkdtemp()
    loaded = whybox.Explanation.load(e.save(f"{buf}/e.safetensors"))
    assert torch.equal(loaded.meta["predicted"], e.target) and torch.equal(loaded.meta["raw"], e.attributions)
    for index in (torch.tensor([True]), torch.tensor(False), torch.tensor([[1]])):
        with pytest.raises(InvalidParameterError, match="rows are picked by"):
            e[index]
    assert e[torch.tensor(1)].target.tolist() == [0]

    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(5, 2)

        def forward(self, num: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.cat([num, extra], 1))

    packed = whybox.adapt(Two(), input_shapes={"num": (3,), "extra": (2,)})
    inputs = (torch.rand(2, 3), torch.rand(2, 2))
    ex = whybox.explain(packed, inputs, "saliency", target=0)
    from_tuple = [t.get_text() for t in ex.plot(inputs).axes[0].get_yticklabels()]
    from_rows = [t.get_text() for t in ex.plot(packed.packing.pack(*inputs)).axes[0].get_yticklabels()]
    assert from_tuple == from_rows and " = " in from_tuple[0]


def test_feature_ids_readable_two_ways_say_how_they_are_read() -> None:
    """(3, H, W) ids for 3 RGB images: per-row maps, or one per-channel map shared by the rows. The same call gave
    other groups for a batch of 2 (read per channel) than of 3 (read per row), silently; it now warns, and the
    explicit shapes read as they say without a warning."""
    from whybox.masking.features import AmbiguousIdsWarning

    model = nn.Sequential(nn.Flatten(), nn.Linear(60, 2)).double().eval()
    x = torch.rand(3, 3, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ids = torch.arange(6).repeat_interleave(10).reshape(3, 4, 5)  # 2 groups per channel
    with pytest.warns(AmbiguousIdsWarning, match=r"\(1, 3, 4, 5\).*\(3, 1, 4, 5\)"):
        whybox.explain(model, x, "feature_ablation", target=0, features=ids)
    shared = whybox.explain(model, x, "feature_ablation", target=0, features=ids[None])
    two = whybox.explain(model, x[:2], "feature_ablation", target=0, features=ids)  # (*G): per channel, no warning
    torch.testing.assert_close(shared.attributions[:2], two.attributions)
    whybox.explain(model, x, "feature_ablation", target=0, features=ids[:, None])  # per row, explicitly


def test_a_series_of_int_labels_as_target_names_the_classifiers_classes() -> None:
    """target=y_test (a Series) of a classifier with classes_ [1, 2, 3] was read as output indices (label 2 explained
    class 3); a Series holds labels, as find_mistakes reads it. A list of ints stays indices."""
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    g = np.random.default_rng(0)
    x = g.normal(size=(60, 3))
    y = 1 + (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5).astype(int)
    clf = LogisticRegression().fit(x, y)
    rows = torch.tensor(x[:4])
    labels = pd.Series(y[:4], index=[10, 11, 12, 13])
    by_series = whybox.explain(clf, rows, "occlusion", target=labels)
    assert by_series.target.tolist() == [list(clf.classes_).index(v) for v in y[:4]]
    assert whybox.explain(clf, rows, "occlusion", target=[0, 1, 2, 0]).target.tolist() == [0, 1, 2, 0]


def test_a_cache_dir_that_is_no_path_is_named() -> None:
    from whybox.data._cache import resolve_cache_dir

    with pytest.raises(InvalidParameterError, match=r"cache_dir must be a folder path .*got int 5"):
        resolve_cache_dir(5)  # type: ignore[arg-type]


def test_lima_refuses_a_prior_it_cannot_afford_before_any_pass() -> None:
    """max_evaluations one short of LIMA with a Grad-CAM prior: refused before the prior's passes ran (2 rows were
    scored first), as max_evaluations promises for over-budget requests."""
    from whybox import get_explainer

    class Counter(nn.Module):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net, self.rows = net, 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.rows += x.shape[0]
            return self.net(x)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 5))
    m = Counter(net.eval())
    x = torch.rand(2, 3, 9, 10, generator=torch.Generator().manual_seed(0))
    kw = {"regions": "prior", "prior_grid": 3, "prior_cells": 1, "search": "naive", "prior_options": {"layer": "net.1"}}
    n = get_explainer("lima")(m, **kw).explain(x).meta["n_forward"]
    m.rows = 0
    with pytest.raises(InvalidParameterError, match="max_evaluations"):
        get_explainer("lima")(m, max_evaluations=n - 1, **kw).explain(x)
    assert m.rows == 0


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.full((2, 2, 3), 1.5), r"values in \[0, 1\]"),
        (np.zeros((2, 2, 3), dtype=np.int64), "uint8 .* or float"),
        (np.zeros((2, 2, 3), dtype=bool), "uint8 .* or float"),
    ],
)
def test_save_png_names_what_it_cannot_draw(array: np.ndarray, match: str, tmp_path: object) -> None:
    from whybox.errors import InvalidInputError
    from whybox.report.overlay import save_png

    with pytest.raises(InvalidInputError, match=match):
        save_png(f"{tmp_path}/a.png", array)
    save_png(f"{tmp_path}/b.png", np.zeros((2, 2, 3), dtype=np.uint8))
    save_png(f"{tmp_path}/c.png", np.full((2, 2, 4), 0.5))


def test_one_number_per_input_as_a_baseline_or_fill() -> None:
    """captum's baselines=(0.0, 50.0): one number per input over its shape (was refused as 'does not broadcast');
    the same numbers as the tensors built by hand."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = _ImageAndMeta().double().eval()
    ad = whybox.adapt(model, input_shapes=[(3, 4, 4), (5,)])
    g = torch.Generator().manual_seed(1)
    x = (
        torch.rand(2, 3, 4, 4, generator=g, dtype=torch.float64),
        50 + torch.rand(2, 5, generator=g, dtype=torch.float64),
    )
    by_hand = (torch.zeros(3, 4, 4, dtype=torch.float64), torch.full((5,), 50.0, dtype=torch.float64))
    for method, key in (("integrated_gradients", "baseline"), ("feature_ablation", "fill")):
        want = whybox.explain(ad, x, method, target=0, **{key: by_hand}).attributions
        for given in ((0.0, 50.0), [0, 50], (torch.tensor(0.0), 50.0), (torch.zeros(3, 4, 4), 50.0)):
            torch.testing.assert_close(whybox.explain(ad, x, method, target=0, **{key: given}).attributions, want)


def test_an_sae_reads_activations_of_another_float_dtype() -> None:
    """A float32 SAE given a float64 model's activations (collect_activations keeps the model's dtype) raised torch's
    'expected m1 and m2 to have the same dtype'; it reads them in its own dtype, as sae_metrics does."""
    from whybox.explainers.llm.sae import SAEConfig, SparseAutoencoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        sae = SparseAutoencoder(SAEConfig(d_in=8, d_sae=16, k=4))
    x = torch.rand(3, 8, dtype=torch.float64)
    f = sae.encode(x)
    torch.testing.assert_close(f, sae.encode(x.float()))
    torch.testing.assert_close(sae.decode(f.double()), sae.decode(f))
    assert sae(x)[0].dtype == torch.float32


def test_a_word_equal_to_the_fill_token_stays_a_word_of_its_text(make_gpt2_classifier: object) -> None:
    """Without [MASK] the fill is the unknown token, which an out-of-vocabulary word already is: that word is still
    one of the text's words for sparseness (only CLS/SEP/pads are left out)."""
    pytest.importorskip("transformers")
    from whybox.metrics.complexity import gini

    model, tok = make_gpt2_classifier()  # type: ignore[operator]
    clf = whybox.adapt_text(model, tok)
    texts = ["the movie was zzyzx great", "the plot was good"]  # 'zzyzx': out of the toy vocabulary
    r = whybox.explain_text(clf, texts, "occlusion", target=0)
    want = [gini(torch.tensor([abs(v) for _, v in w], dtype=torch.float64)[None]).item() for w in r.words]
    assert len(r.words[0]) == 5
    assert whybox.evaluate(clf, texts, r, "sparseness").scores.tolist() == pytest.approx(want, abs=1e-9)


def test_fingerprints_of_a_function_with_a_set_literal_agree_across_processes(tmp_path: object) -> None:
    """A set literal in a model's function compiles to a frozenset, whose repr order follows the process's string
    hashing: two processes hashed one model differently and a run refused to resume. Its constants are sorted."""
    import subprocess
    import sys
    from pathlib import Path

    folder = Path(str(tmp_path))
    (folder / "setmodel.py").write_text(
        "import torch\nfrom torch import nn\n"
        "def act(t, name='relu'):\n    return torch.relu(t) if name in {'relu', 'gelu', 'silu', 'tanh'} else t\n"
        "class M(nn.Module):\n    def __init__(self):\n        super().__init__(); self.fc = nn.Linear(3, 2); self.act = act\n"
        "    def forward(self, x):\n        return self.act(self.fc(x))\n",
        encoding="utf-8",
    )
    code = (
        "import sys, torch; sys.path.insert(0, sys.argv[1]); from setmodel import M\n"
        "from whybox.runs.job import Job, fingerprints\n"
        "torch.manual_seed(0); m = M()\n"
        "print(fingerprints(Job(methods=('saliency',)), m, torch.zeros(1, 3), ['0'], None)['weights'])\n"
    )
    digests = set()
    for seed in ("1", "2", "3"):
        env = {**__import__("os").environ, "PYTHONHASHSEED": seed, "OMP_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr
        digests.add(out.stdout.strip())
    assert len(digests) == 1


def test_a_state_dict_saved_as_code_pt_is_no_torchscript(tmp_path: object) -> None:
    """torch.save names its archive's top folder after the file: code.pt holds code/data.pkl, which read as a
    TorchScript archive's code/ folder."""
    from pathlib import Path

    from whybox.runs.loaders import _is_torchscript

    path = Path(str(tmp_path)) / "code.pt"
    torch.save(nn.Linear(3, 2).state_dict(), path)
    assert not _is_torchscript(path)


def test_typed_columns_read_the_same_whatever_shares_their_call() -> None:
    """An int column went back as int only when every cell of the call was whole: one filled cell (the training
    mean) turned the call's column to float, so a row's score hung on batch_size. Per cell now; a value outside a
    uint8 column's range stays a float (pandas refused the cast)."""
    import pandas as pd
    from sklearn.compose import make_column_transformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder

    rng = np.random.default_rng(0)
    x = pd.DataFrame({"a": rng.normal(size=80), "k": rng.integers(0, 3, 80)})
    y = ((x.k == 2) | (x.a > 1)).astype(int)
    as_text = make_pipeline(FunctionTransformer(lambda d: d.astype(str)), OneHotEncoder(handle_unknown="ignore"))
    pipe = make_pipeline(make_column_transformer((as_text, ["k"]), remainder="passthrough"), LogisticRegression())
    pipe.fit(x, y)
    rows, ref = x.iloc[:4], x.mean()
    one = whybox.explain(pipe, rows, "exact_shapley", fill=ref, target=1, batch_size=1)
    many = whybox.explain(pipe, rows, "exact_shapley", fill=ref, target=1, batch_size=64)
    torch.testing.assert_close(one.attributions, many.attributions)
    small = pd.DataFrame({"a": rng.normal(size=60), "k": rng.integers(0, 3, 60).astype(np.uint8)})
    clf = LogisticRegression().fit(small, (small.a + small.k > 1).astype(int))
    ref = pd.Series({"a": 0.0, "k": -1.0})  # -1 no uint8 holds: a float there, and the values add up
    e = whybox.explain(clf, small.iloc[:3], "exact_shapley", fill=ref, target=1)
    drop = clf.predict_proba(small.iloc[:3])[:, 1] - clf.predict_proba(ref.to_frame().T)[:, 1]
    np.testing.assert_allclose(e.attributions.sum(1).numpy(), drop, atol=1e-9)


def test_cam_on_a_vit_behind_a_resizing_preprocess_reads_its_configured_grid() -> None:
    """24 x 40 images resized to the ViT's 32 x 32 (CLS + 4 x 4 tokens): the image's own size suggested 2 prefix
    tokens and a 3 x 5 grid; the model's config says 4 x 4."""
    pytest.importorskip("transformers")
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=64, num_labels=3)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vit = ViTForImageClassification(cfg).double().eval()

    def resize(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(t, size=(32, 32), mode="bilinear", align_corners=False)

    ad = whybox.adapt(vit, output="logits", preprocess=resize)
    x = torch.rand(2, 3, 24, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert whybox.explain(ad, x, "gradcam", target=1, upsample=False).attributions.shape == (2, 1, 4, 4)


def test_second_review_regressions() -> None:
    """From the review of this session's later commits: a declared ViT grid yields to the image's own patch grid
    (timm's dynamic size), and fills in where the image's size is not the model's (a resize); a Series of int
    class indices for text classes_ stays indices; a bfloat16 softmax is read as probabilities; an int column fed
    to np.log1p with a mean fill works (an object column broke the ufunc); metrics take one fill per input."""
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    from whybox.models.adapter import output_probabilities
    from whybox.models.layers import token_grid

    assert token_grid(17, (16, 64), grids=[(4, 4)]) == (1, 2, 8)
    assert token_grid(17, (24, 40), grids=[(4, 4)]) == (1, 4, 4)
    assert token_grid(197, (480, 640), grids=[(14, 14)]) == (1, 14, 14)
    g = np.random.default_rng(0)
    x = g.normal(size=(40, 2))
    clf = LogisticRegression().fit(x, np.array(["no", "yes"])[(x[:, 0] > 0).astype(int)])
    rows = torch.tensor(x[:3])
    assert whybox.explain(clf, rows, "occlusion", target=pd.Series([1, 0, 1])).target.tolist() == [1, 0, 1]
    net = nn.Sequential(nn.Linear(4, 300), nn.Softmax(1)).to(torch.bfloat16)
    with torch.no_grad():
        p = net(torch.rand(8, 4, dtype=torch.bfloat16)).double()
    torch.testing.assert_close(output_probabilities(whybox.adapt(net), p), p)
    frame = pd.DataFrame({"a": g.normal(size=60), "k": g.integers(0, 4, 60)})
    pipe = make_pipeline(FunctionTransformer(np.log1p), LogisticRegression()).fit(
        frame.abs(), (frame.k > 1).astype(int)
    )
    e = whybox.explain(pipe, frame.abs().iloc[:3], "exact_shapley", fill=frame.abs().mean(), target=1)
    assert bool(torch.isfinite(e.attributions).all())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = _ImageAndMeta().double().eval()
    ad = whybox.adapt(model, input_shapes=[(3, 4, 4), (5,)])
    xs = (torch.rand(2, 3, 4, 4, dtype=torch.float64), 50 + torch.rand(2, 5, dtype=torch.float64))
    a = torch.rand(2, ad.packing.n_features, dtype=torch.float64)
    hand = (torch.zeros(3, 4, 4, dtype=torch.float64), torch.full((5,), 50.0, dtype=torch.float64))
    for metric in ("deletion", "comprehensiveness"):
        got = whybox.evaluate(ad, xs, a, metric, target=0, fill=(0.0, 50.0)).scores
        torch.testing.assert_close(got, whybox.evaluate(ad, xs, a, metric, target=0, fill=hand).scores)


def test_generation_smoothgrad_with_noise_everywhere_keeps_its_sigma_bound() -> None:
    """noise_mask=None puts the noise on the control channels too: the default sigma (from the word embeddings'
    range) is refused above MAX_NOISE_SIGMA, as it was before the per-step sigma."""
    pytest.importorskip("transformers")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_generation import CONT, PROMPT, tiny_gpt2, toy_tokenizer

    from whybox.explainers.llm.generation import attribute_generation

    with pytest.raises(InvalidParameterError, match=r"sigma must be <= .* noise_mask=None"):
        attribute_generation(tiny_gpt2(), toy_tokenizer(), PROMPT, continuation=CONT, method="smoothgrad",
                             noise_mask=None, n_samples=2)  # fmt: skip


@pytest.mark.parametrize(
    ("n", "hw", "grids", "patches", "want"),
    [
        (17, (16, 64), [(4, 4)], [(8, 8)], (1, 2, 8)),  # a dynamic-size ViT: its image's grid, the same CLS
        (17, (24, 40), [(4, 4)], [(8, 8)], (1, 4, 4)),  # behind a resize to 32 x 32: the declared grid
        (577, (360, 640), [(24, 24)], [(16, 16)], (1, 24, 24)),  # a 16:9 frame resized to 384 (18 x 32 is chance)
        (198, (176, 288), [(14, 14)], [(16, 16)], (2, 14, 14)),  # DeiT behind a resize: 11 x 18 + 0 is chance
        (197, (224, 224), [(14, 14)], [(16, 16)], (1, 14, 14)),
        (17, (16, 64), [], [], (1, 2, 8)),  # no declared grid: the image's
        (197, (240, 320), [], [], (1, 14, 14)),  # a square before 5 leading tokens over a chance grid
        (198, (224, 224), [], [], (2, 14, 14)),  # DeiT without a config: its two leading tokens
        (49, (224, 224), [], [], (0, 7, 7)),
    ],
)
def test_token_grid_reads_the_layout_a_vit_has(
    n: int,
    hw: tuple[int, int],
    grids: list[tuple[int, int]],
    patches: list[tuple[int, int]],
    want: tuple[int, int, int],
) -> None:
    from whybox.models.layers import token_grid

    assert token_grid(n, hw, grids, patches) == want


def test_generation_smoothgrad_noise_everywhere_does_not_read_the_future() -> None:
    """With noise_mask=None the default sigma came from the whole sequence: changing the last continuation token
    moved step 0. It comes from the embedding matrix now."""
    pytest.importorskip("transformers")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_generation import PROMPT, tiny_gpt2, toy_tokenizer

    from whybox.explainers.llm.generation import attribute_generation

    model, tok = tiny_gpt2(), toy_tokenizer()
    kw = {"method": "smoothgrad", "noise_mask": None, "noise_level": 0.01, "n_samples": 2}
    a = attribute_generation(model, tok, PROMPT, continuation="mat and it was", **kw)
    b = attribute_generation(model, tok, PROMPT, continuation="mat and it w60", **kw)
    assert float(a.explanation.meta["sigma"][0]) == float(b.explanation.meta["sigma"][0])
    torch.testing.assert_close(a.explanation.attributions[0], b.explanation.attributions[0], equal_nan=True)


def test_typed_columns_cost_no_extra_estimator_calls() -> None:
    """Splitting a call by which int cells a mean fill touched made one call per mask pattern (LIME: 1,025 calls
    for 32 rows instead of 10); an object column of whole and non-whole cells keeps one call per batch."""
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    calls = []

    def count(t: object) -> object:
        calls.append(1)
        return t

    g = np.random.default_rng(0)
    frame = pd.DataFrame({f"k{i}": g.integers(0, 5, 80) for i in range(4)})
    pipe = make_pipeline(FunctionTransformer(count), LogisticRegression()).fit(frame, (frame.k0 > 2).astype(int))
    calls.clear()
    whybox.explain(pipe, frame.iloc[:8], "lime", fill=frame.mean(), target=1, n_samples=64, batch_size=4096)
    assert len(calls) <= 3


def test_a_fill_row_of_numpy_float32_scalars_is_a_row() -> None:
    """list(X_train.mean(0)) of a float32 array holds np.float32 scalars: read as a row like Python floats."""
    x = torch.rand(3, 4)
    model = nn.Linear(4, 2)
    row = list(np.float32([0.1, 0.2, 0.3, 0.4]))  # np.float32 scalars
    want = whybox.explain(model, x, "feature_ablation", target=0, fill=torch.tensor([0.1, 0.2, 0.3, 0.4]))
    torch.testing.assert_close(
        whybox.explain(model, x, "feature_ablation", target=0, fill=row).attributions, want.attributions
    )
