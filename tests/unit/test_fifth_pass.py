"""Regressions and spec gaps found by the fifth-pass audits: each test states the promised behaviour the code missed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import whybox
from whybox.masking.features import segments


class _Seq(nn.Module):
    """A sequence model (B, T, D) read batch-first, no Conv1d: its time axis is 1."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(3, 5, batch_first=True)
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


@pytest.mark.parametrize("metric", ["deletion", "insertion", "aopc", "highest_confidence"])
def test_int_regions_on_a_sequence_are_windows_of_time_steps(metric: str) -> None:
    """README: sequences (B, T, D) get windows along axis 1 with all D features. ``regions=2`` is the same as
    ``segments(x, length=2, time_axis=1)`` (3 windows of T = 6 steps), not 2 windows of feature columns shared by
    every time step, under which a per-time-step map pools to one value per region and its order never enters."""
    torch.manual_seed(0)
    m = _Seq().eval()
    x = torch.randn(2, 6, 3)
    a = torch.randn(2, 6, 1)
    r = whybox.evaluate(m, x, a, metric, regions=2, target=0)
    ref = whybox.evaluate(m, x, a, metric, regions=segments(x, length=2, time_axis=1), target=0)
    torch.testing.assert_close(r.scores, ref.scores, rtol=0, atol=0)
    if metric in ("deletion", "insertion"):
        assert r.meta["n_features"] == 3
        torch.testing.assert_close(r.curves["x"][0], torch.tensor([0.0, 1 / 3, 2 / 3, 1.0], dtype=r.curves["x"].dtype))


class _Img(nn.Module):
    def __init__(self, h: int = 6, w: int = 7) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * h * w, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.conv(x)).flatten(1))


def test_per_row_id_maps_follow_their_rows_in_slices_and_re_runs(tmp_path) -> None:
    """One id map per row as (B, H, W) (a documented form, shared by the channels) and a FeatureGroups of per-row
    segmentations are per-row options: ``e[1:]`` carries rows 1.. of them, a metric's re-run on some rows reads each
    row's own map (max-sensitivity at radius 1e-9 is ~1e-9, not the 1.5 of another row's map read per channel when
    B == C), and a saved FeatureGroups option loads as its ids, re-runnable."""
    from whybox.masking import FeatureGroups

    m = _Img().double()
    x = torch.randn(3, 3, 6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    i, j = torch.arange(6)[:, None], torch.arange(7)[None]
    maps = torch.stack([(i // 3) * 2 + j // 4, (j % 2).expand(6, 7), (i // 2).expand(6, 7)])  # 4, 2, 3 regions
    e = whybox.explain(m, x, "feature_ablation", features=maps)
    assert e.meta["n_features"] == [4, 2, 3]
    sub = e[1:]
    assert torch.equal(sub.options["features"], maps[1:])
    again = whybox.explain(m, x[1:], "feature_ablation", **sub.options)
    torch.testing.assert_close(again.attributions, e.attributions[1:], rtol=0, atol=0)
    s = whybox.evaluate(m, x, e, "max_sensitivity", n_samples=2, radius=1e-9).scores
    assert float(s.max()) < 1e-6
    fg = FeatureGroups(maps[:, None].contiguous(), 4, "superpixels")
    eg = whybox.explain(m, x, "feature_ablation", features=fg)
    assert torch.equal(eg[1:].options["features"].groups, maps[1:, None])
    st = whybox.evaluate(m, x[1:], eg[1:], "stability", n_runs=2)
    assert torch.equal(st.scores, torch.ones(2, dtype=st.scores.dtype))
    eg.save(tmp_path / "fg.safetensors")
    loaded = whybox.Explanation.load(tmp_path / "fg.safetensors")
    rerun = whybox.explain(m, x, "feature_ablation", features=loaded.options["features"])
    torch.testing.assert_close(rerun.attributions, eg.attributions, rtol=0, atol=0)


def test_signal_per_row_maps_follow_their_rows() -> None:
    """(B, L) id maps of a 1-D signal, one per row: a re-run on some rows reads each row's own (it was refused:
    "features mask of shape (2, 12) does not fit inputs (6, 3, 12)")."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv1d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(48, 3)).double()
    x = torch.randn(2, 3, 12, dtype=torch.float64)
    maps = torch.stack([torch.arange(12) // 3, torch.arange(12) % 2])
    e = whybox.explain(m, x, "feature_ablation", features=maps)
    s = whybox.evaluate(m, x, e, "max_sensitivity", n_samples=3, radius=1e-9).scores
    assert float(s.max()) < 1e-6
    torch.testing.assert_close(
        whybox.explain(m, x[1:], "feature_ablation", **e[1:].options).attributions, e.attributions[1:]
    )


@pytest.mark.parametrize("kind", ["numpy", "DataFrame"])
def test_a_reference_row_per_input_as_an_array_follows_the_rows(kind: str) -> None:
    """A table's fill of one reference row per input, given as a NumPy array or a DataFrame, follows the
    explanation's rows as a tensor does: the re-running metrics give the tensor fill's numbers (they crashed, or
    max-sensitivity on e[1:3] read 4 unsliced reference rows as its 2 x 2 noisy rows and reported 3.0 for 0)."""
    pd = pytest.importorskip("pandas")
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.RandomState(0)
    X = pd.DataFrame(rng.randn(200, 5), columns=list("abcde"))
    y = (X.a + X.b > 0).astype(int) + (X.c > 1)
    clf = RandomForestClassifier(n_estimators=10, random_state=0).fit(X, y)
    xs, refs = X.iloc[:4], X.iloc[100:104]
    fill = refs.to_numpy() if kind == "numpy" else refs
    e = whybox.explain(clf, xs, "feature_ablation", fill=fill)
    et = whybox.explain(clf, xs, "feature_ablation", fill=torch.tensor(refs.to_numpy()))
    for sub, ref in ((e, et), (e[1:3], et[1:3])):
        rows = xs.iloc[1:3] if len(sub) == 2 else xs
        got = whybox.evaluate(clf, rows, sub, "max_sensitivity", n_samples=2, seed=0).scores
        want = whybox.evaluate(clf, rows, ref, "max_sensitivity", n_samples=2, seed=0).scores
        torch.testing.assert_close(got, want)
    st = whybox.evaluate(clf, xs.iloc[1:3], e[1:3], "stability", n_runs=2).scores
    assert torch.equal(st, torch.ones(2, dtype=st.dtype))


def test_occlusion_counts_only_the_windows_it_scores_against_max_evaluations() -> None:
    """max_evaluations is the most forward passes a call may spend; occlusion skips windows whose elements all
    equal the fill, so a call spending n passes runs at max_evaluations=n and is refused at n - 1 (it was refused
    at n, counting the skipped windows)."""
    from whybox.errors import InvalidParameterError

    m = _Img(10, 9).double()
    x = torch.randn(3, 3, 10, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    x[1, :, :5] = 0
    e = whybox.explain(m, x, "occlusion", window=3, stride=2)
    n = e.meta["n_forward"]
    assert e.meta["n_unchanged_windows"] > 0 and n == 3 * (1 + 5 * 4) - e.meta["n_unchanged_windows"]
    ok = whybox.explain(m, x, "occlusion", window=3, stride=2, max_evaluations=n)
    torch.testing.assert_close(ok.attributions, e.attributions, rtol=0, atol=0)
    with pytest.raises(InvalidParameterError, match="max_evaluations"):
        whybox.explain(m, x, "occlusion", window=3, stride=2, max_evaluations=n - 1)


def test_exact_shapley_refusal_names_an_option_that_works_on_sequences() -> None:
    """On sequences (B, T, D) the refusal above 12 features suggests features='segments' (grid() needs images)."""
    from whybox.errors import InvalidParameterError

    torch.manual_seed(0)
    m = _Seq().eval()
    x = torch.randn(1, 9, 3)
    with pytest.raises(InvalidParameterError, match="features='segments'") as info:
        whybox.explain(m, x, "exact_shapley")
    assert "features='grid'" not in str(info.value)
    assert whybox.explain(m, x, "exact_shapley", features="segments").meta["n_features"] == [9]


def test_list_options_are_kept_as_the_tensors_the_method_read(tmp_path) -> None:
    """features=[0, 0, 1, 1, 2] (the README's --option form) saves as integer ids, so a loaded explanation re-runs
    (it came back float64 and was refused as a feature mask); a fill of one row per input given as nested lists
    follows its rows in a re-run as a tensor fill does."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    e = whybox.explain(m, x, "kernel_shap", features=[0, 0, 1, 1, 2])
    e.save(tmp_path / "e.safetensors")
    loaded = whybox.Explanation.load(tmp_path / "e.safetensors")
    assert loaded.options["features"].dtype == torch.int64
    for ex in (e, loaded):
        st = whybox.evaluate(m, x, ex, "stability", n_runs=2).scores
        assert torch.equal(st, torch.ones(4, dtype=st.dtype))
    refs = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    by_list = whybox.explain(m, x, "feature_ablation", fill=refs.tolist())
    by_tensor = whybox.explain(m, x, "feature_ablation", fill=refs)
    got = whybox.evaluate(m, x, by_list, "max_sensitivity", n_samples=2, seed=0).scores
    want = whybox.evaluate(m, x, by_tensor, "max_sensitivity", n_samples=2, seed=0).scores
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    st = whybox.evaluate(m, x[1:3], by_list[1:3], "stability", n_runs=2).scores
    assert torch.equal(st, torch.ones(2, dtype=st.dtype))


def test_plot_takes_class_names_as_an_array_and_top_as_a_numpy_int() -> None:
    """An estimator's classes_ (a NumPy array) or a pandas Index names the classes as a list does; top=np.int64(3)."""
    pytest.importorskip("matplotlib")
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 3)).double()
    e = whybox.explain(m, torch.randn(2, 5, dtype=torch.float64), "saliency", target=1)
    fig = e.plot(labels=np.array(["a", "b", "c"]), top=np.int64(3))
    import matplotlib.pyplot as plt

    assert "row 0: b" in [ax.get_title() for ax in fig.axes]
    plt.close(fig)


class _Scaled(nn.Module):
    """A user module with a private setting and a call counter its forward writes."""

    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.LeakyReLU(0.01), nn.Flatten(), nn.Linear(32, 3))
        self._temperature = temperature
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.body(x) / self._temperature


def test_run_fingerprint_sees_library_layer_settings_and_private_settings() -> None:
    """A run does not resume after a change that keeps every weight's shape: a torch layer's settings (a LeakyReLU's
    slope, a convolution's padding), which were left out as "known by their weights", and a user module's private
    setting (self._temperature), which was left out with torch's own underscore tables; an attribute forward writes
    (a call counter) is process state and does not block a resume."""
    from whybox.runs.job import Job, fingerprints

    job, x = Job(methods=("occlusion",)), torch.zeros(2, 1, 4, 4)

    def weights(m: nn.Module) -> str:
        return fingerprints(job, whybox.adapt(m), x, [], None)["weights"]

    torch.manual_seed(0)
    m = _Scaled(1.0).eval()
    before = weights(m)
    with torch.no_grad():
        m(torch.zeros(1, 1, 4, 4))
    assert m.calls == 1 and weights(m) == before
    m._temperature = 0.01
    assert weights(m) != before
    m._temperature = 1.0
    assert weights(m) == before
    m.body[1].negative_slope = 0.5
    assert weights(m) != before
    m.body[1].negative_slope = 0.01
    m.body[0].padding = (2, 2)
    assert weights(m) != before


def test_run_fingerprint_of_a_function_model_is_the_same_after_a_call() -> None:
    """A function model learns at its first call whether it returns NumPy; that is not a setting of the model."""
    from whybox.runs.job import Job, fingerprints

    job, x = Job(methods=("occlusion",)), torch.zeros(2, 4)
    adapter = whybox.adapt(lambda rows: np.asarray(rows).sum(1, keepdims=True).repeat(2, 1))
    before = fingerprints(job, adapter, x, [], None)["weights"]
    whybox.explain(adapter, x + 1, "occlusion")
    assert fingerprints(job, adapter, x, [], None)["weights"] == before


@pytest.mark.parametrize("fill", ["blur", "uniform"])
def test_find_mistakes_hides_a_region_alike_in_the_explanation_and_the_steps(fill: str) -> None:
    """find_mistakes' fill= is "what a hidden region becomes, in the explanation and the insertion steps alike":
    with a fill name LIMA's search saw the explainer's blur / uniform draws and the steps the metric's (an empty
    input scored 0.309 by one and 0.329 by the other); the name is now resolved once for both."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(144, 3)).eval()
    x = torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = (model(x).argmax(1) + 1) % 3  # every row a mistake
    r = whybox.find_mistakes(model, x, y, fill=fill)
    e = r.explanation
    rows = [m.index for m in r.mistakes]
    t = torch.tensor([m.label for m in r.mistakes])
    steps = whybox.evaluate(model, x[rows], e, "highest_confidence", target=t, regions=e.meta["regions"], fill=fill)
    empty = torch.as_tensor(e.meta["empty_score"]).flatten().to(torch.float64)
    torch.testing.assert_close(empty, steps.curves["y"][:, 0].to(torch.float64), rtol=0, atol=1e-6)


def test_roar_checks_its_data_before_training() -> None:
    """Labels outside the model's classes, NaN images and NaN maps are WhyboxErrors naming what is wrong (raw
    cross-entropy / index errors after training had started; NaN data and maps were trained on and ranked by the tie
    rule alone); NumPy images are read as the labels are."""
    from whybox.errors import InvalidInputError
    from whybox.metrics.roar import roar

    g = torch.Generator().manual_seed(0)
    xtr, xte = torch.rand(40, 1, 6, 6, generator=g), torch.rand(20, 1, 6, 6, generator=g)
    ytr, yte = torch.randint(0, 3, (40,), generator=g), torch.randint(0, 3, (20,), generator=g)
    maps = {"m": (torch.randn(40, 1, 6, 6, generator=g), torch.randn(20, 1, 6, 6, generator=g))}
    kw = dict(model_fn=lambda: nn.Sequential(nn.Flatten(), nn.Linear(36, 3)), fractions=[0.5], n_retrain=1, epochs=1)
    with pytest.raises(InvalidInputError, match=r"y_train must hold class indices in \[0, 2\].*got 5"):
        roar(maps, data=(xtr, ytr + 5, xte, yte), **kw)
    with pytest.raises(InvalidInputError, match=r"y_test must hold class indices in \[0, 2\].*got -1"):
        roar(maps, data=(xtr, ytr, xte, yte - 1), **kw)
    with pytest.raises(InvalidInputError, match="x_test contains non-finite values"):
        roar(maps, data=(xtr, ytr, torch.full_like(xte, float("nan")), yte), **kw)
    nan_maps = {"m": (maps["m"][0], torch.full_like(xte, float("nan")))}
    with pytest.raises(InvalidInputError, match=r"methods\['m'\]'s test attributions are not finite"):
        roar(nan_maps, data=(xtr, ytr, xte, yte), **kw)
    a = roar(maps, data=(xtr.numpy(), ytr, xte.numpy(), yte), **kw)
    b = roar(maps, data=(xtr, ytr, xte, yte), **kw)
    torch.testing.assert_close(a.accuracy["m"], b.accuracy["m"], rtol=0, atol=0)


class _BatchStatsNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4, track_running_stats=False)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


@pytest.mark.parametrize("method", ["saliency", "occlusion"])
def test_batchnorm_without_running_stats_warns_that_rows_are_coupled(method: str) -> None:
    """A BatchNorm with track_running_stats=False normalises with the batch's statistics in eval mode too: rows are
    coupled (the results changed with batch_size without a word). Explaining and scoring with batch_size > 1 warns
    (BatchCouplingWarning; a table model's BatchNorm1d cannot run one row, so it is not refused); at batch_size=1
    a row's map is the same alone or in a batch."""
    from whybox.errors import BatchCouplingWarning

    m = _BatchStatsNet().eval()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with pytest.warns(BatchCouplingWarning, match=r"track_running_stats=False.*batch_size=1"):
        whybox.explain(m, x, method, target=0)
    with pytest.warns(BatchCouplingWarning, match="the scores") as caught:
        whybox.evaluate(m, x, method, "stability", n_runs=2, target=0)  # re-explains: still one warning, here
    assert len(caught) == 1 and caught[0].filename == __file__
    both = whybox.explain(m, x, method, target=0, batch_size=1).attributions
    alone = whybox.explain(m, x[1:], method, target=0, batch_size=1).attributions
    torch.testing.assert_close(both[1:], alone)


def test_embedding_adapter_and_output_options_are_checked() -> None:
    """scale= and references= of kind='embedding' get WhyboxErrors naming the option (raw ValueError, TypeError,
    IndexError, or all-NaN maps without a word); a one-element tensor scale (CLIP's logit_scale.exp()) still works;
    output=True is refused (it selected entry 1)."""
    from whybox.errors import InvalidParameterError

    torch.manual_seed(0)
    enc = nn.Linear(6, 4)
    refs = torch.randn(3, 4)
    for bad in ("abc", None, float("nan"), 0.0, True):
        with pytest.raises(InvalidParameterError, match="scale must be a finite number > 0"):
            whybox.adapt(enc, kind="embedding", references=refs, scale=bad)
    for bad_refs in (torch.zeros(0, 4), torch.full((2, 4), float("nan")), torch.ones(2, 4, dtype=torch.bool)):
        with pytest.raises(InvalidParameterError, match="references must be finite real embeddings"):
            whybox.adapt(enc, kind="embedding", references=bad_refs)
    b = whybox.adapt(enc, kind="embedding", references=refs, scale=100.0)
    x = torch.randn(2, 6)
    for same in (torch.tensor(100.0), torch.tensor(100), np.array(100.0), np.float32(100.0)):
        a = whybox.adapt(enc, kind="embedding", references=refs, scale=same)
        torch.testing.assert_close(a.scores(x), b.scores(x))

    class TwoHeads(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x[:, :3], x[:, 3:]

    with pytest.raises(InvalidParameterError, match="output=True is a flag"):
        whybox.adapt(TwoHeads(), output=True)


def test_a_black_box_text_explanation_is_checked_against_its_words(tmp_path) -> None:
    """A black box's presence rows stand for words the adapter keeps (the index column depends on what it encoded
    before): a saved explanation was accepted on other texts of the same word counts, and refused on its own texts
    by an adapter that had encoded another text first. Its input digest now covers the words."""
    from whybox.errors import InvalidInputError
    from whybox.models.blackbox_text import BlackBoxTextAdapter

    def counts(texts: list[str]) -> torch.Tensor:
        s = torch.tensor([2.0 * t.split().count("good") - t.split().count("bad") for t in texts], dtype=torch.float64)
        return torch.stack([s, -s], 1)

    texts = ["a good film", "bad plot"]
    out = whybox.explain_text(BlackBoxTextAdapter(counts), texts, "occlusion", target=0)
    out.explanation.save(tmp_path / "bb.safetensors")
    loaded = whybox.Explanation.load(tmp_path / "bb.safetensors")
    with pytest.raises(InvalidInputError, match="made for other inputs"):
        whybox.evaluate(BlackBoxTextAdapter(counts), ["a bad film", "good plot"], loaded, "comprehensiveness")
    later = BlackBoxTextAdapter(counts)
    later.encode(["an earlier text"])
    r = whybox.evaluate(later, texts, loaded, "comprehensiveness")
    want = whybox.evaluate(BlackBoxTextAdapter(counts), texts, out, "comprehensiveness")
    torch.testing.assert_close(r.scores, want.scores, equal_nan=True)
    # an explanation saved before the digest covered the words (the presence rows' sums) still scores its texts
    from whybox.explanation import input_digest

    old = whybox.Explanation.load(tmp_path / "bb.safetensors")
    old.meta["input_digest"] = input_digest(out.batch.inputs)
    again = whybox.evaluate(BlackBoxTextAdapter(counts), texts, old, "comprehensiveness")
    torch.testing.assert_close(again.scores, want.scores, equal_nan=True)


def test_a_shared_bool_mask_stack_is_not_cut_by_row() -> None:
    """LIMA's regions as a bool stack (N, *G) are N regions shared by every row: when N equals the batch size they
    were cut by row in slices and re-runs (images (N, H, W) since the per-row id maps; tables (N, F) before),
    and the re-run refused its masks as not covering the input."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3)).double()
    x = torch.randn(3, 3, 6, 6, dtype=torch.float64)
    masks = torch.zeros(3, 6, 6, dtype=torch.bool)
    masks[0, :2], masks[1, 2:4], masks[2, 4:] = True, True, True
    e = whybox.explain(m, x, "lima", regions=masks)
    assert torch.equal(e[1:].options["regions"], masks)
    torch.testing.assert_close(whybox.explain(m, x[1:], "lima", **e[1:].options).attributions, e.attributions[1:])
    s = whybox.evaluate(m, x, e, "max_sensitivity", n_samples=2, seed=0, radius=1e-9).scores
    assert float(s.max()) < 1e-6
    t = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    rows = torch.randn(3, 3, dtype=torch.float64)
    cols = torch.eye(3, dtype=torch.bool)  # 3 regions of one column each, N == B == 3
    et = whybox.explain(t, rows, "lima", regions=cols)
    assert torch.equal(et[1:].options["regions"], cols)
    torch.testing.assert_close(whybox.explain(t, rows[1:], "lima", **et[1:].options).attributions, et.attributions[1:])


class _Cached(nn.Module):
    """State a call writes through a helper and under a decorator; a setting a setter (not forward) changes."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self._pe_cache: torch.Tensor | None = None
        self.n_seen = 0
        self._calls = 0
        self._temperature = 1.0

    def _positions(self, x: torch.Tensor) -> torch.Tensor:
        if self._pe_cache is None or self._pe_cache.shape[0] != x.shape[1]:
            self._pe_cache = torch.arange(x.shape[1], dtype=x.dtype)
        return self._pe_cache

    def _count(self, x: torch.Tensor) -> None:
        self.n_seen += x.shape[0]

    def set_temperature(self, t: float) -> None:
        self._temperature = t

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._calls += 1
        self._count(x)
        return self.lin(x + self._positions(x) * 0) / self._temperature


def test_run_fingerprint_leaves_out_what_a_call_writes_through_helpers_and_decorators() -> None:
    """What forward writes through the helpers it calls and under a decorator (a cache, counters) is state: the
    fingerprint is the same after a call; a setting changed by a setter forward does not call is seen."""
    from whybox.runs.job import Job, fingerprints

    torch.manual_seed(0)
    m = _Cached().eval()
    job, x = Job(methods=("occlusion",)), torch.zeros(2, 4)

    def weights() -> str:
        return fingerprints(job, whybox.adapt(m), x, [], None)["weights"]

    before = weights()
    m(torch.zeros(1, 4))
    assert (m.n_seen, m._calls) == (1, 1) and weights() == before
    m.set_temperature(0.5)
    assert weights() != before


def test_a_packed_model_s_per_row_fill_as_nested_lists_follows_its_rows() -> None:
    """A model of two inputs (an image and a vector) packed into rows: a fill of one packed row per input given as
    nested lists follows its rows in re-runs and slices (max-sensitivity refused it: (3, 53) for 6 rows)."""

    class ImageAndMeta(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.meta, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(5, 4), nn.Linear(8, 3)

        def forward(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
            return self.head(torch.cat([self.conv(image).relu().mean((2, 3)), self.meta(meta).tanh()], 1))

    torch.manual_seed(0)
    clf = whybox.adapt(ImageAndMeta().eval(), input_shapes=[(3, 4, 4), (5,)])
    img, meta = torch.randn(3, 3, 4, 4), torch.randn(3, 5)
    feat = [0] * 48 + [1, 2, 3, 4, 5]
    rows = clf.packing.pack(img, meta).flip(0)
    e = whybox.explain(clf, (img, meta), "feature_ablation", features=feat, fill=rows.tolist())
    s = whybox.evaluate(clf, (img, meta), e, "max_sensitivity", n_samples=2, seed=0, radius=1e-9).scores
    assert float(s.max()) < 1e-5
    st = whybox.evaluate(clf, (img[1:], meta[1:]), e[1:], "stability", n_runs=2).scores
    assert torch.equal(st, torch.ones(2, dtype=st.dtype))


class _ChannelsLast(nn.Module):
    """A 1-D CNN fed (B, T, D): the same network reads a signal (B, C, L) and its channels-last sequence twin."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.transpose(1, 2))


@pytest.mark.parametrize("metric", ["deletion", "insertion", "aopc", "mufidelity"])
def test_a_sequence_s_per_step_map_steps_over_time_steps_as_a_signal_s(metric: str) -> None:
    """README: maps (B, T, 1) of sequences are read as one value per time step. Without regions the curves stepped
    over the T x D elements, the step's value tied on its D copies; a sequence now scores as its signal twin."""
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(64, 3)).eval()
    xs = torch.randn(2, 2, 16)
    a = torch.rand(2, 1, 16)
    # (the same random subsets and a fixed fill: random draws are keyed by each row's values in their layout)
    opts = (
        {"subsets": torch.rand(20, 16, generator=torch.Generator().manual_seed(3)) < 0.25}
        if metric == "mufidelity"
        else {"fill": "zero"}
    )
    sig = whybox.evaluate(conv, xs, a, metric, target=1, **opts)
    seq = whybox.evaluate(_ChannelsLast(conv).eval(), xs.transpose(1, 2), a.transpose(1, 2), metric, target=1, **opts)
    torch.testing.assert_close(seq.scores, sig.scores, rtol=0, atol=1e-6)


def test_mufidelity_takes_a_patch_size_as_deletion_does() -> None:
    """Its docstring: regions as Deletion's, a label map or a patch size; an int was refused on every input."""
    from whybox.masking.features import grid, segments

    torch.manual_seed(0)
    m = _Seq().eval()
    x, a = torch.randn(2, 8, 3), torch.rand(2, 8, 1)
    got = whybox.evaluate(m, x, a, "mufidelity", regions=2, n_samples=20, target=0).scores
    want = whybox.evaluate(m, x, a, "mufidelity", regions=segments(x, length=2, time_axis=1), n_samples=20, target=0)
    torch.testing.assert_close(got, want.scores, rtol=0, atol=0)
    img = _Img(8, 8)
    xi, ai = torch.rand(1, 3, 8, 8), torch.rand(1, 1, 8, 8)
    got = whybox.evaluate(img, xi, ai, "mufidelity", regions=(2, 4), n_samples=20, target=0).scores
    want = whybox.evaluate(img, xi, ai, "mufidelity", regions=grid(xi, patch=(2, 4)), n_samples=20, target=0).scores
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("metric", "opts"),
    [
        ("comprehensiveness", {}),
        ("sufficiency", {}),
        ("random_logit", {"explainer": "saliency"}),
        ("max_sensitivity", {"explainer": "saliency", "n_samples": 2}),
        ("infidelity", {"n_samples": 4}),
    ],
)
def test_a_signal_s_to_map_is_read_as_its_one_channel_map(metric: str, opts: dict) -> None:
    """Explanation.to_map() of a 1-D signal is (B, L), one value per time step; every metric reads it as the (B, 1, L)
    map (comprehensiveness and sufficiency refused it, random_logit and max_sensitivity refused a channel-summed map
    they pool for images, infidelity read a (B, L) map as one map per channel when B == C)."""
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(48, 3)).eval()
    xs = torch.randn(2, 2, 12)
    m = whybox.explain(conv, xs, "saliency", target=0).to_map()
    assert m.shape == (2, 12)
    got = whybox.evaluate(conv, xs, m, metric, target=0, **opts).scores
    want = whybox.evaluate(conv, xs, m.unsqueeze(1), metric, target=0, **opts).scores
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    assert bool(torch.isfinite(got).all())


def test_find_mistakes_on_sequences_works_with_windows_of_time_steps() -> None:
    """find_mistakes on sequences (B, T, D) with LIMA's regions="segments", a method over segments (it fell back
    to table columns) and a label map per input (N, T, 1): a raw reshape error before; now each mistake's regions
    are its time-step windows (T, 1), and the insertion steps equal the metric's on those windows."""
    torch.manual_seed(0)
    m = _Seq().eval()
    x = torch.randn(6, 8, 3)
    with torch.no_grad():
        labels = (m(x).argmax(1) + 1) % 3  # every row a mistake
    r = whybox.find_mistakes(m, x, labels, regions="segments", n_regions=4)
    assert len(r.mistakes) == 6 and all(tuple(mk.regions.shape) == (8, 1) for mk in r.mistakes)
    assert all(set(mk.regions.flatten().tolist()) == {0, 1, 2, 3} for mk in r.mistakes)
    r2 = whybox.find_mistakes(m, x, labels, method="kernel_shap", features="segments", patch=2, n_samples=40)
    assert all(tuple(mk.regions.shape) == (8, 1) for mk in r2.mistakes)
    ids = (torch.arange(8) // 2).view(1, 8, 1).expand(6, 8, 1)
    r3 = whybox.find_mistakes(m, x, labels, method="occlusion", regions=ids)
    mk = r3.mistakes[0]
    assert torch.equal(mk.regions, ids[0])
    hc = whybox.evaluate(m, x[:1], r3.explanation[:1], "highest_confidence", target=labels[:1], regions=ids[:1])
    assert mk.insertion == pytest.approx(float(hc.meta["auc"][0]), abs=1e-6)  # (float32 rows batched or alone)
    # one shared map of element ids (1, T, D) with D == the number of mistakes (3): per element, not per step
    cols = (torch.arange(24).view(1, 8, 3) % 3).clone()
    r4 = whybox.find_mistakes(m, x[:3], labels[:3], method="occlusion", regions=cols)
    assert all(torch.equal(mk.regions, cols[0]) for mk in r4.mistakes)


def test_a_date_column_s_vocabulary_survives_save_and_load(tmp_path) -> None:
    """A Pipeline reading a datetime column: its coded vocabulary came back as the values' repr strings after a save,
    so the loaded explanation was refused as made for other inputs (the real dates got new codes)."""
    pd = pytest.importorskip("pandas")
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    rng = np.random.RandomState(0)
    days = pd.to_datetime(rng.choice(["2024-01-05", "2024-02-10", "2024-03-15"], 200))
    X = pd.DataFrame({"signup": days, "x": rng.randn(200)})
    y = (X.x > 0).astype(int)
    month = FunctionTransformer(lambda d: d.apply(lambda c: c.dt.month).to_numpy(), feature_names_out="one-to-one")
    clf = make_pipeline(ColumnTransformer([("m", month, ["signup"])], remainder="passthrough"), LogisticRegression())
    clf.fit(X, y)
    xs, fill = X.iloc[:3], X.iloc[10]
    e = whybox.explain(clf, xs, "kernel_shap", fill=fill)
    e.save(tmp_path / "e.safetensors")
    loaded = whybox.Explanation.load(tmp_path / "e.safetensors")
    assert loaded.meta["categories"] == e.meta["categories"]
    got = whybox.evaluate(clf, xs, loaded, "deletion", fill=fill).scores
    torch.testing.assert_close(got, whybox.evaluate(clf, xs, e, "deletion", fill=fill).scores)


def test_dates_and_times_in_meta_round_trip(tmp_path) -> None:
    import datetime

    pd = pytest.importorskip("pandas")
    values = [
        pd.Timestamp("2024-01-05 10:00", tz="UTC"),
        pd.Timedelta("1 days 02:00:00"),
        np.datetime64("2024-03-01"),
        datetime.datetime(2024, 1, 2, 3, 4, 5),
        datetime.date(2024, 1, 2),
        datetime.timedelta(seconds=90),
    ]
    mine = {"__whybox_time__": "date", "value": "not a date"}  # a user's dict of the tag's keys: kept as it is
    meta = {"v": values, "missing": [pd.NaT, pd.Timestamp("2024-01-01")], "mine": mine}
    e = whybox.Explanation(torch.zeros(1, 2), torch.zeros(1, dtype=torch.int64), "saliency", meta=meta)
    e.save(tmp_path / "t.safetensors")
    loaded = whybox.Explanation.load(tmp_path / "t.safetensors").meta
    assert loaded["v"] == values and loaded["mine"] == mine
    assert loaded["missing"][0] is pd.NaT and loaded["missing"][1] == pd.Timestamp("2024-01-01")


@pytest.mark.parametrize("method", ["lime", "kernel_shap"])
def test_stability_over_feature_values_does_not_depend_on_how_the_ids_are_numbered(method: str) -> None:
    """A segmentation with ids {0, 1, 5, 7} (gaps) scores as the same segmentation numbered 0..3: stability read
    each row's first n_features columns of meta["values"] (two of them always-zero gap columns)."""
    torch.manual_seed(0)
    m = _Img(8, 8)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    q = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    q[..., :4, 4:], q[..., 4:, :4], q[..., 4:, 4:] = 1, 2, 3
    gaps = torch.tensor([0, 1, 5, 7])[q]
    opts = {"n_samples": 30, "fill": "zero"}
    dense = whybox.evaluate(m, x, method, "stability", explainer_params={"features": q, **opts}, n_runs=3, k=2)
    sparse = whybox.evaluate(m, x, method, "stability", explainer_params={"features": gaps, **opts}, n_runs=3, k=2)
    for key in ("jaccard", "kendall", "vsi"):
        torch.testing.assert_close(sparse.meta[key], dense.meta[key], equal_nan=True)
    if method == "lime":
        csi = sparse.meta["csi_features"]  # per feature id: the gaps have none
        assert torch.isnan(csi[:, [2, 3, 4, 6]]).all()
        torch.testing.assert_close(csi[:, [0, 1, 5, 7]], dense.meta["csi_features"], equal_nan=True)


def test_a_sequence_s_full_map_with_copied_step_values_scores_as_its_step_map() -> None:
    """features="segments" on a sequence returns (B, T, D) maps, each step's value copied onto its D elements: the
    curves and mufidelity read them per time step (summed over D, as images pool channels), as the (B, T, 1) map."""
    from whybox.masking.features import segments

    torch.manual_seed(0)
    m = _Seq().double().eval()
    x = torch.randn(3, 6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    full = whybox.explain(m, x, "feature_ablation", target=0, features=segments(x, length=1, time_axis=1)).attributions
    assert full.shape == (3, 6, 3)
    for metric in ("deletion", "insertion", "aopc", "mufidelity"):
        opts = {"n_samples": 8} if metric == "mufidelity" else {}
        a = whybox.evaluate(m, x, full, metric, target=0, **opts)
        b = whybox.evaluate(m, x, full[..., :1], metric, target=0, **opts)
        torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=1e-12)


def test_a_target_made_under_inference_mode_works_everywhere() -> None:
    """Targets from m(x).argmax(1) inside torch.inference_mode are inference tensors: the gradient methods, the
    metrics and find_mistakes crashed ("Inference tensors cannot be saved for backward"); inputs were already copied."""
    m = _Img(8, 8).eval()
    with torch.inference_mode():
        x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
        t = m(x).argmax(1)
        labels = (t + 1) % 4
        for method in ("saliency", "gradcam"):
            e = whybox.explain(m, x, method, target=t)
            assert bool(torch.isfinite(e.attributions).all())
        s = whybox.evaluate(m, x, e, "deletion", target=t, steps=4).scores
        assert bool(torch.isfinite(s).all())
        r = whybox.find_mistakes(m, x, labels, method="saliency")
    assert len(r.mistakes) == 3


def test_one_metric_object_shared_by_threads_scores_each_call_in_its_own_score_space() -> None:
    """A metric keeps the score space it resolves for a model on itself during a call: two threads sharing one
    Deletion on a softmax classifier and a multi-label model read each other's (263 of 300 results wrong)."""
    import threading

    from whybox.metrics.faithfulness import Deletion

    torch.manual_seed(0)
    clf = nn.Sequential(nn.Linear(6, 4)).eval()
    multi = whybox.adapt(nn.Sequential(nn.Linear(6, 4)).eval(), kind="multilabel")
    x = torch.randn(3, 6)
    a = torch.randn(3, 6)
    metric = Deletion(steps=5)
    want = metric.evaluate(clf, x, a, target=1).scores
    got: list[torch.Tensor] = []

    def run(model: object, keep: bool) -> None:
        for _ in range(40):
            r = metric.evaluate(model, x, a, target=1).scores
            if keep:
                got.append(r)

    threads = [threading.Thread(target=run, args=(clf, True)), threading.Thread(target=run, args=(multi, False))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 40 and all(torch.equal(g, want) for g in got)


@pytest.mark.parametrize("method", ["smoothgrad", "rise"])
def test_a_call_made_from_inside_a_call_leaves_the_outer_call_s_seed(method: str) -> None:
    """A target callable that explains again with the same explainer object (seed=None) replaced the outer call's
    drawn seed: its recorded seed no longer reproduced its result."""
    from whybox.registry import EXPLAINERS

    m = _Img(8, 8).eval()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    opts = {"n_samples": 4} if method == "smoothgrad" else {"n_masks": 16}
    explainer = EXPLAINERS.get(method)(m, seed=None, **opts)

    def target(scores: torch.Tensor) -> torch.Tensor:
        explainer.explain(x[:1], target=0)
        return scores[:, 1]

    e = explainer.explain(x, target=target)
    again = whybox.explain(m, x, method, seed=e.meta["seed"], target=1, **opts)
    torch.testing.assert_close(e.attributions, again.attributions)


def test_a_metric_subclass_that_is_unhashable_still_scores() -> None:
    """A user metric defining __eq__ (so __hash__ is None) cannot key the per-object lock: it shares one lock."""
    from whybox.metrics.complexity import Sparseness

    class Mine(Sparseness):
        def __eq__(self, other: object) -> bool:
            return isinstance(other, Mine)

    a = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    got = Mine().evaluate(None, torch.rand(2, 3, 6, 6), a).scores
    torch.testing.assert_close(got, Sparseness().evaluate(None, torch.rand(2, 3, 6, 6), a).scores)


def test_a_tensor_inside_a_nested_option_is_saved(tmp_path) -> None:
    """README: save stores an explanation's tensors. LIMA's prior_options={"baseline": tensor, "n_steps": 4} lost the
    tensor at a save, and every metric re-running LIMA refused the loaded explanation."""
    m = _Img(8, 8).eval()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    prior = {"baseline": torch.full((1, 3, 8, 8), 0.1), "n_steps": 4}
    opts = {"regions": "grid", "n_regions": 4, "prior": "integrated_gradients", "prior_options": prior}
    e = whybox.explain(m, x, "lima", **opts)
    e.save(tmp_path / "e.safetensors")
    loaded = whybox.Explanation.load(tmp_path / "e.safetensors")
    assert torch.equal(loaded.options["prior_options"]["baseline"], prior["baseline"])
    assert loaded.options["prior_options"]["n_steps"] == 4
    again = whybox.explain(m, x, "lima", **{**loaded.params, **loaded.options})
    torch.testing.assert_close(again.attributions, e.attributions)
    st = whybox.evaluate(m, x, loaded, "stability", n_runs=2).scores
    assert bool(torch.isfinite(st).all())


def test_the_batch_coupling_warning_is_given_once_when_evaluate_explains_first() -> None:
    """evaluate with a method name explains first: the warning came from neither call when the metric reads only the
    map (sparseness) or scores one row at a time (batch_size=1), though the explainer's rows were coupled."""
    from whybox.errors import BatchCouplingWarning

    m = _BatchStatsNet().eval()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    for metric, opts in (("sparseness", {}), ("deletion", {"batch_size": 1, "steps": 4})):
        with pytest.warns(BatchCouplingWarning) as caught:
            whybox.evaluate(m, x, "saliency", metric, target=0, **opts)
        assert len(caught) == 1 and caught[0].filename == __file__


def test_nested_options_slice_by_row_and_a_module_inside_is_asked_for_again(tmp_path) -> None:
    """LIMA's prior_options: a baseline of one row per input follows e[1:] (it stayed 3 rows for 2); a module inside
    (a prior's layer) is not saved as its text (a re-run failed with 'layer=Conv2d(...) is not a module'), so the
    loaded explanation asks for it again."""
    from whybox.errors import InvalidParameterError

    m = _Img(8, 8).eval()
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    base = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    prior = {"baseline": base, "n_steps": 4}
    e = whybox.explain(m, x, "lima", regions="grid", n_regions=4, prior="integrated_gradients", prior_options=prior)
    sub = e[1:]
    assert torch.equal(sub.options["prior_options"]["baseline"], base[1:])
    sub.save(tmp_path / "s.safetensors")
    loaded = whybox.Explanation.load(tmp_path / "s.safetensors")
    torch.testing.assert_close(whybox.explain(m, x[1:], "lima", **{**loaded.params, **loaded.options}).attributions,
                               e.attributions[1:])  # fmt: skip
    e2 = whybox.explain(m, x, "lima", regions="prior", prior="gradcam", prior_options={"layer": m.conv})
    e2.save(tmp_path / "g.safetensors")
    with pytest.raises(InvalidParameterError, match="only a description"):
        whybox.evaluate(m, x, whybox.Explanation.load(tmp_path / "g.safetensors"), "stability", n_runs=2)


def test_run_fingerprint_keeps_a_setting_that_another_object_s_method_of_the_same_name_would_write() -> None:
    """forward calling self.cfg.update(...) does not make the model's own update() a method forward runs: the
    setting update() writes stays in the fingerprint."""
    from whybox.runs.job import _forward_writes

    class Cfg:
        def update(self, v: float) -> None:
            self.v = v

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cfg, self.scale = Cfg(), 1.0

        def update(self, s: float) -> None:
            self.scale = s

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.cfg.update(1.0)
            return x * self.scale

    assert "scale" not in _forward_writes(Scaled)
