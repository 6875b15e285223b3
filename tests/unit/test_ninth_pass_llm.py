"""Ninth pass on the language-model tools: generation attribution scored by the metrics, SAE plumbing, token ids.

Properties: a generation explanation holds exactly 0 on the two control channels (attention mask, read position)
whatever the method, its token values unchanged; ``whybox.evaluate`` on a ``CausalLMAdapter`` gives exactly what the
step batch's own fill gives (``fill=batch.fill()``, the oracle), for the default fill and for a named one, and
refuses a fill name that would rewrite the control channels; the adapter's packed fill of step rows is the batch's
fill, told from the packed rows alone (specials, pads and each step's future kept); ``collect_activations`` refuses
a tokenizer without a padding token with the message the text adapter gives; ``train_sae`` leaves no gradient on
its model; prompts given as a ``(1, P)`` tensor, a NumPy array or a list of NumPy ints are the ids they hold, and
other shapes get messages naming the shape and the fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the text extra (transformers) is not installed")
tokenizers = pytest.importorskip("tokenizers", reason="the text extra (tokenizers) is not installed")

from test_generation import tiny_gpt2, toy_tokenizer  # noqa: E402

import whybox  # noqa: E402
from whybox.errors import InvalidParameterError  # noqa: E402
from whybox.explainers.llm.generation import CausalLMAdapter, attribute_generation  # noqa: E402
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


# ---------------------------------------------------------------------------------------------- control channels
@pytest.mark.parametrize("method", ["occlusion", "feature_ablation", "integrated_gradients", "saliency"])
def test_generation_attributions_are_exactly_zero_on_the_control_channels(lm: tuple, method: str) -> None:
    model, tok = lm
    prompt, cont = _sequence(tok)
    out = attribute_generation(model, tok, prompt, continuation=cont, method=method)
    a = out.explanation.attributions
    assert a.shape[-1] == 32 + 2
    assert torch.equal(a[..., -2:], torch.zeros_like(a[..., -2:]))
    if method in ("occlusion", "feature_ablation"):  # the token's value, copied onto each of its word elements
        m = out.matrix.T  # (G, T)
        ok = ~torch.isnan(m)
        assert torch.equal(a[..., 0].double()[ok], m[ok])
        assert torch.equal(a[..., :-2], a[..., :1].expand_as(a[..., :-2]))


def test_explain_on_a_causal_lm_adapter_gives_zero_on_the_control_channels(lm: tuple) -> None:
    model, tok = lm
    prompt, cont = _sequence(tok)
    ad = CausalLMAdapter(model, tok)
    batch = ad.steps(prompt + cont, len(prompt))
    e = whybox.explain(ad, batch.inputs, "feature_ablation", target=batch.targets, score="logit",
                       features=batch.token_features(), fill=batch.fill())  # fmt: skip
    assert torch.equal(e.attributions[..., -2:], torch.zeros_like(e.attributions[..., -2:]))
    assert bool((e.attributions[..., 0] != 0).any())


# ---------------------------------------------------------------------------------------------- the metrics' fill
@pytest.mark.parametrize("kind", ["zero", "unk"])
def test_packed_fill_of_step_rows_is_the_batch_fill(lm: tuple, kind: str) -> None:
    model, tok = lm
    prompt, cont = _sequence(tok)
    ad = CausalLMAdapter(model, tok)
    batch = ad.steps(prompt + cont, len(prompt))
    assert torch.equal(ad.packed_fill(batch.inputs, kind), batch.fill(kind))
    assert torch.equal(ad.fixed_positions(batch.inputs), batch.fixed_mask())


def test_packed_fill_keeps_the_padding_of_a_left_padded_row(lm: tuple) -> None:
    model, tok = lm
    ad = CausalLMAdapter(model, tok)
    z = torch.tensor([[5, 5, 2, 3, 4]])
    x = ad.pack(z, [4], attention_mask=torch.tensor([[0, 0, 1, 1, 1]]))
    fill = ad.packed_fill(x)
    assert torch.equal(fill[0, :2], x[0, :2])  # the pads
    assert torch.equal(fill[0, 2:, :-2], torch.zeros_like(fill[0, 2:, :-2]))
    assert torch.equal(fill[..., -2:], x[..., -2:])


@pytest.mark.parametrize("metric", ["deletion", "insertion", "comprehensiveness"])
def test_evaluate_on_a_causal_lm_equals_the_batch_fill_oracle(lm: tuple, metric: str) -> None:
    model, tok = lm
    prompt, cont = _sequence(tok)
    out = attribute_generation(model, tok, prompt, continuation=cont, method="occlusion")
    ad = CausalLMAdapter(model, tok)
    batch = ad.steps(prompt + cont, len(prompt))
    seen: set[int] = set()
    read = ad.read_positions

    def spy(x: torch.Tensor) -> torch.Tensor:
        r = read(x)
        seen.update(r.tolist())
        return r

    ad.read_positions = spy  # type: ignore[method-assign]
    got = whybox.evaluate(ad, batch.inputs, out.explanation, metric)
    assert seen == set(range(len(prompt) - 1, len(prompt) + len(cont) - 1))  # each step scored at its own position
    oracle = whybox.evaluate(ad, batch.inputs, out.explanation, metric, fill=batch.fill())
    assert torch.equal(torch.as_tensor(got.scores), torch.as_tensor(oracle.scores))
    named = whybox.evaluate(ad, batch.inputs, out.explanation, metric, fill="unk")
    oracle_unk = whybox.evaluate(ad, batch.inputs, out.explanation, metric, fill=batch.fill("unk"))
    assert torch.equal(torch.as_tensor(named.scores), torch.as_tensor(oracle_unk.scores))


def test_evaluate_refuses_a_fill_that_would_rewrite_the_control_channels(lm: tuple) -> None:
    model, tok = lm
    prompt, cont = _sequence(tok)
    ad = CausalLMAdapter(model, tok)
    batch = ad.steps(prompt + cont, len(prompt))
    expl = torch.ones(batch.inputs.shape, dtype=batch.inputs.dtype)
    with pytest.raises(InvalidParameterError) as err:
        whybox.evaluate(ad, batch.inputs, expl, "deletion", fill="mean", target=batch.targets)
    assert str(err.value) == (
        "fill='mean' on a causal LM's step rows would also rewrite their attention-mask and read-position channels "
        "(each step would be scored at another position), the special tokens and each step's future tokens; pass "
        "one of ('pad', 'mask', 'unk', 'zero') (that token's word vector; 'zero': zeros), a number (each element of "
        "the word vector), or a tensor such as batch.fill('unk') of batch = adapter.steps(ids, prompt_length)."
    )
    with pytest.raises(InvalidParameterError, match="needs a mask token"):
        whybox.evaluate(ad, batch.inputs, expl, "deletion", fill="mask", target=batch.targets)


def test_a_rerun_fill_name_is_read_on_each_rerun_rows(lm: tuple) -> None:
    from whybox.explainers.llm.generation import step_metric_options

    model, tok = lm
    prompt, cont = _sequence(tok)
    ad = CausalLMAdapter(model, tok)
    batch = ad.steps(prompt + cont, len(prompt))
    opts = step_metric_options(ad, batch.inputs, ["explainer_params"], {"explainer_params": {"fill": "unk"}})
    fill = opts["explainer_params"]["fill"]
    assert torch.equal(fill(batch.inputs), batch.fill("unk"))
    assert torch.equal(fill(batch.inputs[1:]), batch.fill("unk")[1:])  # the rows of the re-run, whichever
    with pytest.raises(InvalidParameterError, match="baseline='blur' on a causal LM's step rows"):
        step_metric_options(ad, batch.inputs, ["explainer_params"], {"explainer_params": {"baseline": "blur"}})


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
