"""Ninth pass on generation steps scored by the metrics: every input form.

Properties: ``whybox.evaluate`` on a ``CausalLMAdapter`` scores the step rows given as a NumPy array exactly as the
same rows as a tensor, each step at its own read position (a text adapter's packed rows alike)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the text extra (transformers) is not installed")
tokenizers = pytest.importorskip("tokenizers", reason="the text extra (tokenizers) is not installed")

from test_generation import tiny_gpt2, toy_tokenizer  # noqa: E402

import whybox  # noqa: E402
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
