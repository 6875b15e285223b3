"""Ninth pass on generation steps scored by the metrics: every input form, every metric, every way to name a method.

Properties: ``whybox.evaluate`` on a ``CausalLMAdapter`` scores the step rows given as a NumPy array exactly as the
same rows as a tensor, each step at its own read position (a text adapter's packed rows alike); ``infidelity``, whose
noise covers every element, is refused there with a message naming the metrics to use; ``max_sensitivity`` never
runs the model on a row whose control channels, specials or future tokens differ from the step's; a method named by
its name (``whybox.explain``, ``evaluate`` with a method name, ``max_sensitivity``'s ``explainer=``) runs with
:func:`attribute_generation`'s defaults for it, so its result equals that of ``attribute_generation`` (the oracle),
and a fill or baseline given by name is the step batch's fill of that name."""

from __future__ import annotations

from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the text extra (transformers) is not installed")
tokenizers = pytest.importorskip("tokenizers", reason="the text extra (tokenizers) is not installed")

from test_generation import tiny_gpt2, toy_tokenizer  # noqa: E402

import whybox  # noqa: E402
from whybox.errors import InvalidParameterError  # noqa: E402
from whybox.explainers.llm.generation import CausalLMAdapter, GenerationBatch, attribute_generation  # noqa: E402

PROMPT = "the cat sat on"
CONT = "the mat and"


@pytest.fixture(scope="module")
def lm() -> tuple[torch.nn.Module, object]:
    return tiny_gpt2(), toy_tokenizer()


def _sequence(tok: Any) -> tuple[list[int], list[int]]:
    """A prompt that starts with BOS (a special token, kept by every fill) and its continuation."""
    ids = lambda t: list(tok(t, add_special_tokens=False)["input_ids"])  # noqa: E731
    return [0, *ids(PROMPT)], ids(CONT)


def _steps(lm: tuple) -> tuple[CausalLMAdapter, GenerationBatch, list[int], list[int]]:
    model, tok = lm
    prompt, cont = _sequence(tok)
    ad = CausalLMAdapter(model, tok)
    return ad, ad.steps(prompt + cont, len(prompt)), prompt, cont


def _spy_forward(ad: CausalLMAdapter) -> list[torch.Tensor]:
    """Every packed row batch the adapter runs, recorded (a copy) as the model reads it."""
    seen: list[torch.Tensor] = []
    forward = ad.forward

    def spy(x: torch.Tensor) -> Any:
        seen.append(x.detach().clone())
        return forward(x)

    ad.forward = spy  # type: ignore[method-assign]
    return seen


def _assert_steps_kept(seen: list[torch.Tensor], batch: GenerationBatch) -> None:
    """Each row run is read at one of the steps' own positions and holds that step's control channels, specials and
    future tokens exactly as the step row has them: only the attributed tokens' word vectors ever change."""
    x = batch.inputs
    fixed = batch.fixed_mask()  # (G, T)
    own = {int(x[g, 0, -1]): g for g in range(x.shape[0])}
    assert seen
    for rows in seen:
        for r in rows:
            g = own.get(round(float(r[:, -1].double().mean())))
            assert g is not None, "a row read at another position"
            assert torch.equal(r[:, -2:], x[g, :, -2:].to(r.dtype))
            assert torch.equal(r[fixed[g]], x[g][fixed[g]].to(r.dtype))


# ---------------------------------------------------------------------------------------------- 1. NumPy rows
@pytest.mark.parametrize("metric", ["deletion", "comprehensiveness"])
def test_step_rows_as_a_numpy_array_score_as_the_tensor(lm: tuple, metric: str) -> None:
    model, tok = lm
    ad, batch, prompt, cont = _steps(lm)
    out = attribute_generation(model, tok, prompt, continuation=cont, method="occlusion")
    tensor = whybox.evaluate(ad, batch.inputs, out.explanation, metric)
    seen = _spy_forward(ad)
    array = whybox.evaluate(ad, batch.inputs.numpy(), out.explanation, metric)
    assert torch.equal(torch.as_tensor(array.scores), torch.as_tensor(tensor.scores))
    _assert_steps_kept(seen, batch)


def test_text_adapter_rows_as_a_numpy_array_score_as_the_tensor(make_text_classifier: Any) -> None:
    clf = make_text_classifier()
    texts = ["good movie", "bad plot here"]
    enc = clf.encode(texts)
    expl = whybox.explain_text(clf, texts, "occlusion").explanation
    tensor = whybox.evaluate(clf, enc.inputs, expl, "deletion")
    array = whybox.evaluate(clf, enc.inputs.numpy(), expl, "deletion")
    assert torch.equal(torch.as_tensor(array.scores), torch.as_tensor(tensor.scores))


def test_explain_on_step_rows_as_a_numpy_array_equals_attribute_generation(lm: tuple) -> None:
    model, tok = lm
    ad, batch, prompt, cont = _steps(lm)
    oracle = attribute_generation(model, tok, prompt, continuation=cont, method="integrated_gradients", n_steps=8)
    got = whybox.explain(ad, batch.inputs.numpy(), "integrated_gradients", target=batch.targets, n_steps=8)
    assert torch.equal(got.attributions, oracle.explanation.attributions)


# ---------------------------------------------------------------------------------------------- 2. noise metrics
def test_infidelity_on_step_rows_is_refused_naming_the_metrics_to_use(lm: tuple) -> None:
    model, tok = lm
    ad, batch, prompt, cont = _steps(lm)
    out = attribute_generation(model, tok, prompt, continuation=cont, method="integrated_gradients", n_steps=8)
    with pytest.raises(InvalidParameterError) as err:
        whybox.evaluate(ad, batch.inputs, out.explanation, "infidelity", n_samples=4)
    assert str(err.value) == (
        "infidelity perturbs every element of its inputs, and the step rows of CausalLMAdapter hold more than the "
        "attributed tokens' word vectors: the attention-mask and read-position channels (their last two), the "
        "special tokens and each step's future tokens, which noise would change (a step would be scored at other "
        "positions). Score generation steps with deletion, insertion, comprehensiveness, sufficiency or mufidelity "
        "(they replace the attributed tokens' word vectors and keep the rest), or max_sensitivity (its noise lands "
        "on those word vectors only)."
    )


def test_packed_noise_mask_of_step_rows_is_the_batch_noise_mask(lm: tuple) -> None:
    ad, batch, _, _ = _steps(lm)
    assert torch.equal(ad.packed_noise_mask(batch.inputs), batch.noise_mask())


def test_max_sensitivity_noise_lands_on_the_attributed_word_vectors_only(lm: tuple) -> None:
    model, tok = lm
    ad, batch, prompt, cont = _steps(lm)
    out = attribute_generation(model, tok, prompt, continuation=cont, method="saliency")
    seen = _spy_forward(ad)
    r = whybox.evaluate(ad, batch.inputs, out.explanation, "max_sensitivity", n_samples=3, radius=0.5)
    _assert_steps_kept(seen, batch)
    assert bool(torch.isfinite(torch.as_tensor(r.scores)).any())


# ---------------------------------------------------------------------------------------------- 3. method names
@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("integrated_gradients", {"n_steps": 8}),
        ("feature_ablation", {}),
        ("occlusion", {}),
        ("smoothgrad", {"n_samples": 4}),
        ("kernel_shap", {"n_samples": 16}),
    ],
)
def test_explain_on_a_causal_lm_adapter_equals_attribute_generation(lm: tuple, method: str, options: dict) -> None:
    model, tok = lm
    ad, batch, prompt, cont = _steps(lm)
    oracle = attribute_generation(model, tok, prompt, continuation=cont, method=method, **options).explanation
    seen = _spy_forward(ad)
    got = whybox.explain(ad, batch.inputs, method, target=batch.targets, **options)
    assert torch.equal(got.attributions, oracle.attributions)
    _assert_steps_kept(seen, batch)


def test_a_fill_or_baseline_name_given_to_explain_is_the_batch_fill(lm: tuple) -> None:
    ad, batch, _, _ = _steps(lm)
    named = whybox.explain(ad, batch.inputs, "occlusion", target=batch.targets, fill="unk")
    given = whybox.explain(ad, batch.inputs, "occlusion", target=batch.targets, fill=batch.fill("unk"))
    assert torch.equal(named.attributions, given.attributions)
    ig = whybox.explain(ad, batch.inputs, "integrated_gradients", target=batch.targets, baseline=0.0, n_steps=4)
    oracle = whybox.explain(
        ad, batch.inputs, "integrated_gradients", target=batch.targets, baseline=batch.baseline("zero"), n_steps=4
    )
    assert torch.equal(ig.attributions, oracle.attributions)
    with pytest.raises(InvalidParameterError, match=r"^baseline='blur' on a causal LM's step rows would also"):
        whybox.explain(ad, batch.inputs, "integrated_gradients", target=batch.targets, baseline="blur")


@pytest.mark.parametrize("metric", ["deletion", "comprehensiveness"])
def test_evaluate_with_a_method_name_scores_attribute_generation_s_explanation(lm: tuple, metric: str) -> None:
    model, tok = lm
    ad, batch, prompt, cont = _steps(lm)
    out = attribute_generation(model, tok, prompt, continuation=cont, method="integrated_gradients")
    oracle = whybox.evaluate(ad, batch.inputs, out.explanation, metric)
    seen = _spy_forward(ad)
    got = whybox.evaluate(ad, batch.inputs, "integrated_gradients", metric, target=batch.targets)
    assert torch.equal(torch.as_tensor(got.scores), torch.as_tensor(oracle.scores))
    _assert_steps_kept(seen, batch)


def test_max_sensitivity_rerun_by_name_equals_the_rerun_of_attribute_generation_s_options(lm: tuple) -> None:
    model, tok = lm
    ad, batch, prompt, cont = _steps(lm)
    out = attribute_generation(model, tok, prompt, continuation=cont, method="integrated_gradients", n_steps=8)
    oracle = whybox.evaluate(ad, batch.inputs, out.explanation, "max_sensitivity", n_samples=2)
    seen = _spy_forward(ad)
    got = whybox.evaluate(ad, batch.inputs, out.explanation.attributions, "max_sensitivity", n_samples=2,
                          target=batch.targets, explainer="integrated_gradients",
                          explainer_params={"n_steps": 8})  # fmt: skip
    assert torch.equal(torch.as_tensor(got.scores), torch.as_tensor(oracle.scores))
    _assert_steps_kept(seen, batch)
