"""Ninth pass on the language-model tools: SAE plumbing, token ids.

Properties: ``collect_activations`` refuses a tokenizer without a padding token with the message the text
adapter gives; ``train_sae`` leaves no gradient on its model; prompts given as a ``(1, P)`` tensor, a NumPy array or
a list of NumPy ints are the ids they hold, and other shapes get messages naming the shape and the fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the text extra (transformers) is not installed")
tokenizers = pytest.importorskip("tokenizers", reason="the text extra (tokenizers) is not installed")

from test_generation import tiny_gpt2, toy_tokenizer  # noqa: E402

import whybox  # noqa: E402
from whybox.errors import InvalidParameterError  # noqa: E402
from whybox.explainers.llm.generation import attribute_generation  # noqa: E402
from whybox.explainers.llm.sae import SAEConfig, train_sae  # noqa: E402
from whybox.explainers.llm.sae_text import collect_activations  # noqa: E402

PROMPT = "the cat sat on"
CONT = "the mat and"


@pytest.fixture(scope="module")
def lm() -> tuple[torch.nn.Module, object]:
    return tiny_gpt2(), toy_tokenizer()


def _ids(tok: object, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])  # type: ignore[operator]


def _sequence(tok: object) -> tuple[list[int], list[int]]:
    """A prompt that starts with BOS (a special token, kept by every fill) and its continuation."""
    return [0, *_ids(tok, PROMPT)], _ids(tok, CONT)


# ---------------------------------------------------------------------------------------------- SAE plumbing
def test_collect_activations_refuses_a_tokenizer_without_a_pad_token(make_gpt2_classifier: object) -> None:
    model, tok = make_gpt2_classifier()  # type: ignore[operator]
    tok.pad_token = None
    ad = whybox.adapt_text(model, tok)
    with pytest.raises(InvalidParameterError) as encode_err:
        ad.encode(["the movie"])
    for texts in (["the movie", "a good film was"], ["the movie"]):
        with pytest.raises(InvalidParameterError) as err:
            collect_activations(ad, texts, layer=0)
        assert str(err.value) == str(encode_err.value)
        assert "tokenizer.pad_token = tokenizer.eos_token" in str(err.value)


@pytest.mark.parametrize("activation", ["topk", "relu"])
def test_train_sae_leaves_no_gradient_on_its_model(activation: str) -> None:
    acts = torch.randn(64, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = train_sae(acts, SAEConfig(d_in=8, d_sae=16, k=2, steps=5, batch_size=16, activation=activation))
    assert res.n_steps == 5
    assert [p.grad for p in res.model.parameters()] == [None] * len(list(res.model.parameters()))


# ---------------------------------------------------------------------------------------------- token ids
def test_prompt_ids_as_a_batch_of_one_an_array_or_numpy_ints_are_the_ids_they_hold(lm: tuple) -> None:
    model, tok = lm
    prompt, cont = _sequence(tok)
    ref = attribute_generation(model, tok, prompt, continuation=cont, method="occlusion")
    for given in (
        torch.tensor([prompt]),  # tokenizer(text, return_tensors="pt")["input_ids"]
        np.array(prompt),
        np.array([prompt]),
        list(np.array(prompt)),
        [torch.tensor(i) for i in prompt],
    ):
        got = attribute_generation(model, tok, given, continuation=list(np.array(cont)), method="occlusion")
        assert got.token_ids == ref.token_ids
        assert torch.equal(got.matrix.nan_to_num(7.0), ref.matrix.nan_to_num(7.0))


def test_token_ids_of_another_shape_or_type_get_messages_naming_them(lm: tuple) -> None:
    model, tok = lm
    prompt, cont = _sequence(tok)
    cases = {
        "batch": (
            torch.tensor([prompt, prompt]),
            "prompt must be a string or token ids (a list of ints, or a 1-d or (1, P) integer tensor or array); got a "
            "Tensor of dtype torch.int64 and shape (2, 5). attribute_generation explains one sequence: pass one row "
            "of integer ids (ids[0] of a batch).",
        ),
        "float": (
            np.array(prompt, dtype=np.float32),
            "prompt must be a string or token ids (a list of ints, or a 1-d or (1, P) integer tensor or array); got a "
            "ndarray of dtype float32 and shape (5,). attribute_generation explains one sequence: pass one row of "
            "integer ids (ids[0] of a batch).",
        ),
        "mixed": (
            [0, 2, 1.5],
            "prompt must be a string or token ids (a list of ints, or a 1-d or (1, P) integer tensor or array); got a "
            "list holding 1.5 (float) at index 2.",
        ),
        "bool": (
            [0, True],
            "prompt must be a string or token ids (a list of ints, or a 1-d or (1, P) integer tensor or array); got a "
            "list holding True (bool) at index 1.",
        ),
    }
    for name, (given, message) in cases.items():
        with pytest.raises(InvalidParameterError) as err:
            attribute_generation(model, tok, given, continuation=cont, method="occlusion")
        assert str(err.value) == message, name
