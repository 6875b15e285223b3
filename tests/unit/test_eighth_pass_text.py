"""Eighth-pass audit regressions on texts: a method's fill= or baseline= given to explain_text as a name or a number
means what replace= (and evaluate's fill=) means, so CLS, SEP, the pads and the attention-mask column never change;
a slice of a text explanation scores its texts as the whole batch scored those rows."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("transformers", reason="the text extra (transformers) is not installed")
pytest.importorskip("tokenizers", reason="the text extra (tokenizers) is not installed")

import whybox
from whybox.cli.main import main as cli
from whybox.errors import InvalidInputError, InvalidParameterError
from whybox.models.blackbox_text import BlackBoxTextAdapter

TEXTS = ["playing the movie was great", "bad film", "the plot was not very fun and boring"]
CHEAP = {"lime": {"n_samples": 40}, "kernel_shap": {"n_samples": 40}, "lima": {"max_evaluations": 200}}


def counts(texts: list[str]) -> torch.Tensor:
    """An additive toy function of strings: score = 2 x #"good" - #"bad" + 0.1 x #words, and its negative."""
    s = torch.tensor(
        [2.0 * t.split().count("good") - t.split().count("bad") + 0.1 * len(t.split()) for t in texts],
        dtype=torch.float64,
    )
    return torch.stack([-s, s], 1)


def _by_hand(batch: Any, value: float) -> torch.Tensor:
    """The packed inputs with every ordinary token's word vector set to ``value`` (CLS, SEP, pads, mask kept)."""
    out = batch.inputs.clone()
    ordinary = ~batch.special_mask
    out[..., :-1][ordinary] = value
    return out


# ------------------------------------------------------------------------------ 1. fill= / baseline= in explain_text
@pytest.mark.parametrize("method", ["feature_ablation", "occlusion", "kernel_shap", "lima"])
@pytest.mark.parametrize("kind", ["zero", "unk", 0.0])
def test_a_named_or_zero_fill_in_explain_text_is_replace(make_text_classifier: Any, method: str, kind: Any) -> None:
    """fill='zero' (or 0.0) was passed to the method as it is: it zeroed CLS, SEP, the pads and the attention-mask
    column too (|a| up to 0.44 on them, other word values than replace='zero'); 'unk' was refused as an image fill.
    It is now replace='zero' ('unk': replace='unk'), exactly, and the specials and pads get exactly 0."""
    clf = make_text_classifier()
    opts = CHEAP.get(method, {})
    named = whybox.explain_text(clf, TEXTS, method, target=1, fill=kind, **opts)
    replaced = whybox.explain_text(clf, TEXTS, method, target=1, replace="zero" if kind == 0.0 else kind, **opts)
    torch.testing.assert_close(named.explanation.attributions, replaced.explanation.attributions, rtol=0, atol=0)
    assert named.words == replaced.words
    assert float(named.explanation.attributions[named.batch.special_mask].abs().max()) == 0.0


@pytest.mark.parametrize("kind", ["zero", "pad", 0.0, None])
def test_a_named_or_zero_baseline_in_explain_text_is_replace(make_text_classifier: Any, kind: Any) -> None:
    """Integrated Gradients' baseline='zero' (0.0, None) rewrote the specials and the mask column (|a| 0.34 on CLS,
    SEP and pads); 'pad' was refused. Each is now the text baseline of that token (None: the default, 'pad')."""
    clf = make_text_classifier()
    named = whybox.explain_text(clf, TEXTS, "integrated_gradients", target=1, n_steps=8, baseline=kind)
    replace = "zero" if kind == 0.0 else (kind or "pad")
    replaced = whybox.explain_text(clf, TEXTS, "integrated_gradients", target=1, n_steps=8, replace=replace)
    torch.testing.assert_close(named.explanation.attributions, replaced.explanation.attributions, rtol=0, atol=0)
    assert float(named.explanation.attributions[named.batch.special_mask].abs().max()) == 0.0


def test_a_number_is_every_element_of_a_removed_word_s_vector(make_text_classifier: Any) -> None:
    """fill=0.5 (a NumPy scalar alike) sets a removed word's vector to 0.5 and keeps the specials, pads and mask
    column: the map equals the one of that fill built by hand, in explain_text and in evaluate."""
    import numpy as np

    clf = make_text_classifier()
    batch = clf.encode(TEXTS)
    hand = _by_hand(batch, 0.5)
    for value in (0.5, np.float32(0.5)):
        named = whybox.explain_text(clf, TEXTS, "feature_ablation", target=1, fill=value)
        given = whybox.explain_text(clf, TEXTS, "feature_ablation", target=1, fill=hand)
        torch.testing.assert_close(named.explanation.attributions, given.explanation.attributions, rtol=0, atol=0)
        assert float(named.explanation.attributions[batch.special_mask].abs().max()) == 0.0
    out = whybox.explain_text(clf, TEXTS, "integrated_gradients", target=1, n_steps=8)
    by_number = whybox.evaluate(clf, TEXTS, out, "deletion", fill=0.5).scores
    by_hand = whybox.evaluate(clf, TEXTS, out, "deletion", fill=hand).scores
    torch.testing.assert_close(by_number, by_hand, rtol=0, atol=0)


@pytest.mark.parametrize(("method", "option", "value"), [("occlusion", "fill", "mean"),
                         ("lime", "fill", "blur"), ("integrated_gradients", "baseline", "uniform")])  # fmt: skip
def test_a_fill_evaluate_refuses_is_refused_with_replace_named(
    make_text_classifier: Any, method: str, option: str, value: str
) -> None:
    """What evaluate refuses on text ('mean', 'blur', ...) was passed on to the method (which rewrote the specials,
    or refused it naming only image fills); it is now refused with the parameter, the value and replace='s choices."""
    clf = make_text_classifier()
    want = (
        rf"{option}='{value}' on a text model would also rewrite CLS, SEP, the pads and the attention-mask column; "
        r"say what a removed word becomes with replace= one of \('pad', 'mask', 'unk', 'zero'\)"
    )
    with pytest.raises(InvalidParameterError, match=want):
        whybox.explain_text(clf, TEXTS, method, target=1, **{option: value})


@pytest.mark.parametrize("fill", ["zero", 0.0, "mask"])
def test_a_named_or_numeric_fill_on_a_function_of_strings_is_refused_in_explain_text(fill: Any) -> None:
    """fill='zero' also zeroed a black box's text-index column: row 1's pad and index feature was scored on text 0's
    words (-3.5 where it gets 0). explain_text now refuses it as evaluate does; fill=None is the default."""
    ad = BlackBoxTextAdapter(counts, labels=["neg", "pos"])
    texts = ["good good good", "bad"]
    with pytest.raises(InvalidParameterError, match=rf"fill={fill!r} on a function of strings would rewrite its rows"):
        whybox.explain_text(ad, texts, "feature_ablation", target="pos", fill=fill)
    with pytest.raises(InvalidParameterError, match=r"fill=0.0 on a function of strings would rewrite"):
        whybox.evaluate(ad, texts, "feature_ablation", "deletion", fill=0.0)
    default = whybox.explain_text(ad, texts, "feature_ablation", target="pos")
    none = whybox.explain_text(ad, texts, "feature_ablation", target="pos", fill=None)
    assert torch.equal(default.explanation.attributions, none.explanation.attributions)
    torch.testing.assert_close(
        default.explanation.attributions[1],
        torch.tensor([-0.9, 0.0, 0.0, 0.0], dtype=torch.float64),
        rtol=0,
        atol=1e-12,
    )


def test_a_named_fill_of_a_metric_s_re_runs_is_the_text_fill(make_text_classifier: Any) -> None:
    """explainer_params={'fill': 'zero'} of a metric that re-runs the method went to the method as it is (zeroing
    the specials and mask column in every re-run); it is now the text fill of zero word vectors."""
    clf = make_text_classifier()
    out = whybox.explain_text(clf, TEXTS, "feature_ablation", target=1)

    def zero_words(x: torch.Tensor) -> torch.Tensor:  # every re-run's rows: attended tokens but CLS and SEP zeroed
        out = x.clone()
        for r in range(x.shape[0]):
            attended = (x[r, :, -1] > 0.5).nonzero().flatten()
            out[r, attended[1:-1], :-1] = 0.0
        return out

    named = whybox.evaluate(clf, TEXTS, out, "max_sensitivity", n_samples=3, explainer_params={"fill": "zero"})
    given = whybox.evaluate(clf, TEXTS, out, "max_sensitivity", n_samples=3, explainer_params={"fill": zero_words})
    torch.testing.assert_close(named.scores, given.scores, rtol=0, atol=0)


# ------------------------------------------------------------------------ 2. a slice of a text explanation's rows
METRICS = ["deletion", "insertion", "comprehensiveness", "sufficiency", "aopc", "mufidelity", "highest_confidence",
           "max_sensitivity", "stability", "random_logit", "sparseness", "complexity"]  # fmt: skip


@pytest.fixture(scope="module")
def explained(make_text_classifier: Any) -> dict[str, Any]:
    clf = make_text_classifier()
    return {m: whybox.explain_text(clf, TEXTS, m, target=1) for m in ("integrated_gradients", "feature_ablation")} | {
        "clf": clf
    }


@pytest.mark.parametrize("method", ["integrated_gradients", "feature_ablation"])
@pytest.mark.parametrize("metric", METRICS)
def test_a_slice_of_a_text_explanation_scores_as_its_rows_in_the_batch(
    explained: dict[str, Any], method: str, metric: str
) -> None:
    """evaluate(clf, texts[1:2], out.explanation[1:2], metric) failed on a shape mismatch ((1, 10, 33) vs (1, 4, 33)):
    the texts were re-encoded to their own shorter length while the rows keep the batch's. They are now read padded
    as they were explained, so the row scores what it scored in the whole batch, for every text metric."""
    clf, out = explained["clf"], explained[method]
    whole = whybox.evaluate(clf, TEXTS, out, metric).scores
    for rows in ([1], [1, 0]):
        part = whybox.evaluate(clf, [TEXTS[r] for r in rows], out.explanation[rows], metric).scores
        torch.testing.assert_close(part, whole[rows], rtol=0, atol=1e-12, equal_nan=True)


def test_a_slice_of_a_black_box_explanation_scores_as_its_row_in_the_batch() -> None:
    """A black box's presence rows of a slice had fewer columns than the explanation's rows ((1, 3) vs (1, 4))."""
    ad = BlackBoxTextAdapter(counts, labels=["neg", "pos"])
    texts = ["good good very good", "bad film", "good"]
    out = whybox.explain_text(ad, texts, "feature_ablation", target="pos", score="logit")
    for metric in ("deletion", "comprehensiveness", "sufficiency"):
        whole = whybox.evaluate(ad, texts, out, metric, score="logit").scores
        part = whybox.evaluate(ad, texts[1:], out.explanation[1:], metric, score="logit").scores
        torch.testing.assert_close(part, whole[1:], rtol=0, atol=0, equal_nan=True)


def test_rows_that_do_not_fit_the_texts_get_an_error_that_says_so(explained: dict[str, Any]) -> None:
    """An explanation longer than the texts with values beyond them, or shorter than the texts, explains other texts:
    the error says what does not match and what to do (it was a bare shape mismatch)."""
    clf, out = explained["clf"], explained["integrated_gradients"]
    with pytest.raises(InvalidInputError, match=r"rows \[0\] hold non-zero values beyond them, where these texts have"):
        whybox.evaluate(clf, TEXTS[1:2], out.explanation[2:3].attributions, "deletion")  # the third text's row
    with pytest.raises(
        InvalidInputError, match=r"cover 4 token positions, these texts 10: it explains other \(shorter"
    ):
        whybox.evaluate(clf, TEXTS[2:3], whybox.explain_text(clf, TEXTS[1:2], "saliency").explanation, "deletion")


# ------------------------------------------------ 3. explainer_params' per-row tensors on max_sensitivity's rows
def test_a_per_row_text_fill_in_explainer_params_follows_max_sensitivity_s_rows(make_text_classifier: Any) -> None:
    """The fix the refusal of fill='mean' suggests, explainer_params={'fill': batch.fill('unk')}, failed in
    max_sensitivity ("fill tensor of shape (3, 10, 33) does not broadcast to the inputs (6, 10, 33)"): its re-runs
    explain noisy copies, each input's row once per draw. The tensor's rows now follow them, as the explanation's own
    fill does: it scores exactly what the explanation made with that fill scores without explainer_params."""
    clf = make_text_classifier()
    out = whybox.explain_text(clf, TEXTS, "feature_ablation", target=1, replace="unk")
    fill = out.batch.fill("unk")
    for n_samples in (1, 2):
        own = whybox.evaluate(clf, TEXTS, out, "max_sensitivity", n_samples=n_samples, batch_size=4)
        given = whybox.evaluate(
            clf, TEXTS, out, "max_sensitivity", n_samples=n_samples, batch_size=4, explainer_params={"fill": fill}
        )
        torch.testing.assert_close(given.scores, own.scores, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["image", "table"])
def test_a_per_row_fill_in_explainer_params_follows_max_sensitivity_s_rows(make_cnn: Any, kind: str) -> None:
    """An image's or a table's fill of one row per input in explainer_params failed in max_sensitivity alike (its
    B rows against the re-run's B x n_samples); it now scores what the explanation made with that fill scores."""
    g = torch.Generator().manual_seed(0)
    if kind == "image":
        model: Any = make_cnn(dtype=torch.float64)
        x = torch.rand(3, 3, 8, 8, generator=g, dtype=torch.float64)
        opts: dict[str, Any] = {
            "features": torch.arange(16).reshape(4, 4).repeat_interleave(2, 0).repeat_interleave(2, 1)
        }
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
        x = torch.rand(3, 5, generator=g, dtype=torch.float64)
        opts = {}
    fill = torch.rand(x.shape, generator=g, dtype=torch.float64)  # another reference for every row
    e = whybox.explain(model, x, "feature_ablation", target=1, fill=fill, **opts)
    own = whybox.evaluate(model, x, e, "max_sensitivity", n_samples=3, batch_size=4)
    given = whybox.evaluate(model, x, e, "max_sensitivity", n_samples=3, batch_size=4, explainer_params={"fill": fill})
    torch.testing.assert_close(given.scores, own.scores, rtol=0, atol=0)
    assert bool((own.scores > 0).all())


# ------------------------------------------------------------------- 4. replace= beside a fill= / baseline= name
@pytest.mark.parametrize(
    ("method", "option", "replace", "value"),
    [("feature_ablation", "fill", "unk", "zero"), ("lime", "fill", "zero", 0.5), ("occlusion", "fill", "mask", "unk"),
     ("integrated_gradients", "baseline", "pad", "unk")],
)  # fmt: skip
def test_replace_beside_another_fill_or_baseline_is_refused(
    make_text_classifier: Any, method: str, option: str, replace: str, value: Any
) -> None:
    """explain_text(replace='unk', fill='zero') dropped replace= without a word (it gave replace='zero's values):
    both say what a removed word becomes, so two that differ are now refused naming both."""
    clf = make_text_classifier()
    want = (
        rf"replace='{replace}' and {option}={value!r} both say what a removed word becomes, and they differ; give one "
        rf"of them \(replace= one of \('pad', 'mask', 'unk', 'zero'\), or {option}= one of those names"
    )
    with pytest.raises(InvalidParameterError, match=want):
        whybox.explain_text(clf, TEXTS, method, target=1, replace=replace, **{option: value}, **CHEAP.get(method, {}))


@pytest.mark.parametrize(("method", "option"), [("feature_ablation", "fill"), ("integrated_gradients", "baseline")])
@pytest.mark.parametrize("kind", ["tensor", "callable"])
def test_replace_beside_a_tensor_or_callable_fill_is_refused(
    make_text_classifier: Any, method: str, option: str, kind: str
) -> None:
    """A tensor (batch.fill('zero')) or a callable beside replace='unk' took over and replace= was dropped without a
    word: refused, naming both."""
    clf = make_text_classifier()
    tensor = clf.encode(TEXTS).fill("zero")
    value = tensor if kind == "tensor" else (lambda x: tensor)
    want = rf"replace='unk' and {option}= \(a {kind}\) both say what a removed word becomes; give one of them"
    with pytest.raises(InvalidParameterError, match=want):
        whybox.explain_text(clf, TEXTS, method, target=1, replace="unk", **{option: value}, **CHEAP.get(method, {}))


@pytest.mark.parametrize(("replace", "value"), [("unk", "unk"), ("zero", "zero"), ("zero", 0.0), ("zero", 0)])
def test_replace_beside_the_same_fill_is_that_replace(make_text_classifier: Any, replace: str, value: Any) -> None:
    """replace= and a fill= that means the same word vector ('zero' and 0.0) pass, and explain as either alone."""
    clf = make_text_classifier()
    both = whybox.explain_text(clf, TEXTS, "feature_ablation", target=1, replace=replace, fill=value)
    alone = whybox.explain_text(clf, TEXTS, "feature_ablation", target=1, replace=replace)
    assert torch.equal(both.explanation.attributions, alone.explanation.attributions)


# -------------------------------------------------- 5. the command line reads a text's fill as explain_text does
@pytest.fixture
def text_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """model.py:build (the toy BERT classifier of conftest) and t.txt (two of TEXTS) in the working folder."""
    import conftest

    monkeypatch.chdir(tmp_path)
    source = inspect.getsource(conftest.toy_text_classifier)
    (tmp_path / "model.py").write_text(
        f"import torch\n\nTOY_WORDS = {conftest.TOY_WORDS!r}\n\n\n{source}\n\ndef build():\n    return toy_text_classifier()\n"
    )
    (tmp_path / "t.txt").write_text("\n".join(TEXTS[:2]) + "\n")
    return tmp_path


def _cli(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.mark.parametrize("option", ["fill=zero", "fill=mask", "fill=0.5", "replace=unk"])
def test_cli_evaluate_scores_what_explain_text_explains_with_the_same_option(text_files: Path, option: str) -> None:
    """whybox evaluate t.txt --method feature_ablation --option fill=zero passed fill='zero' to the method as it is
    (sparseness 0.1712 where explain --text with that option, then evaluate --explanation, gives 0.1418), and fill=mask
    or replace=unk were refused. It now explains with explain_text's options: the same scores, exactly."""
    model = ["--model", "model.py:build"]
    r = _cli("evaluate", *model, "t.txt", "--method", "feature_ablation", "--option", option,
             "--metrics", "sparseness,deletion", "--json", "own.json")  # fmt: skip
    assert r.exit_code == 0, r.output
    texts = [a for t in TEXTS[:2] for a in ("--text", t)]
    r = _cli("explain", *model, *texts, "--method", "feature_ablation", "--option", option, "--out", "ex")
    assert r.exit_code == 0, r.output
    r = _cli("evaluate", *model, "t.txt", "--explanation", "ex/explanation.safetensors",
             "--metrics", "sparseness,deletion", "--json", "saved.json")  # fmt: skip
    assert r.exit_code == 0, r.output
    own, saved = (json.loads((text_files / f).read_text())["metrics"] for f in ("own.json", "saved.json"))
    for metric in ("sparseness", "deletion"):
        assert own[metric]["scores"] == saved[metric]["scores"]


def test_cli_evaluate_refuses_a_text_fill_as_explain_text_does(text_files: Path) -> None:
    """evaluate's fill=mean on texts reached the method (which rewrote the specials); refused as explain_text does."""
    r = _cli("evaluate", "--model", "model.py:build", "t.txt", "--method", "feature_ablation",
             "--option", "fill=mean", "--metrics", "sparseness")  # fmt: skip
    assert r.exit_code == 2, r.output
    assert "feature_ablation: fill='mean' on a text model would also rewrite CLS, SEP, the pads" in r.output


def test_cli_compare_explains_a_text_fill_as_explain_text_does(text_files: Path, make_text_classifier: Any) -> None:
    """whybox compare passed --option feature_ablation.fill=zero (integrated_gradients.baseline=unk, ...) to the
    method as it is, and refused fill=mask as an image fill; each unit's maps are now explain_text's, exactly."""
    given = {"feature_ablation": {"fill": "zero"}, "integrated_gradients": {"baseline": "unk"},
             "kernel_shap": {"fill": 0.5, "n_samples": 40}, "occlusion": {"fill": "mask"}}  # fmt: skip
    flags = [a for m, o in given.items() for k, v in o.items() for a in ("--option", f"{m}.{k}={v}")]
    r = _cli("compare", "--model", "model.py:build", "t.txt", "--methods", ",".join(given), *flags,
             "--metrics", "max_sensitivity", "--out", "run", "--no-report")  # fmt: skip
    assert r.exit_code == 0, r.output
    clf = make_text_classifier()  # what model.py:build builds
    for method, opts in given.items():
        got = np.load(text_files / "run" / "arrays" / method / "000000.npy")
        want = whybox.explain_text(clf, TEXTS[:2], method, seed=0, **opts).explanation.attributions
        np.testing.assert_array_equal(got, want.float().numpy())
    r = _cli("compare", "--model", "model.py:build", "t.txt", "--methods", "occlusion",
             "--option", "occlusion.fill=mean", "--out", "run2", "--no-report")  # fmt: skip
    assert r.exit_code == 2, r.output
    assert "method_options['occlusion']: fill='mean' on a text model would also rewrite CLS, SEP" in r.output


def test_a_run_s_fill_of_none_on_texts_is_the_texts_default(make_text_classifier: Any, tmp_path: Path) -> None:
    """A run's fill=None (from Python: the command line cannot say None) went to the method over the texts' own
    [MASK] fill, which it replaced by the method's image default; it is now the texts' default, as explain_text's."""
    from whybox.models.text import text_defaults
    from whybox.runs.job import Job, run_job

    clf = make_text_classifier()
    batch = clf.encode(TEXTS)
    job = Job(methods=("feature_ablation",), metrics=(), method_options={"feature_ablation": {"fill": None}})
    run_job(
        job, clf, batch.inputs, tmp_path, data_options={"feature_ablation": text_defaults("feature_ablation", batch)}
    )
    got = np.load(tmp_path / "arrays" / "feature_ablation" / "000000.npy")
    want = whybox.explain_text(clf, TEXTS, "feature_ablation", seed=0).explanation.attributions
    np.testing.assert_array_equal(got, want.float().numpy())
