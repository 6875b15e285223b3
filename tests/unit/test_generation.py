"""Generation attribution for a causal LM: a tiny GPT-2 and a toy word-level tokenizer built locally (no hub),
float64, eager attention.

Properties: the adapter's scores are the model's next-token scores at each row's read position (a left-padded row
equals the unpadded one); gradient methods over the batched steps equal a slow loop over truncated prefixes (and
a direct autograd oracle on the model), with exact zeros at future positions and on the control channels; IG is
complete per step; contrastive log-prob and logit differences give identical attributions; token occlusion and
ablation equal a hand loop; exact Shapley values are efficient per step; a given continuation is used as is and a
generated one is the greedy decode; the model comes back unchanged, also when a call raises; bad input gets exact
messages."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the text extra (transformers) is not installed")
tokenizers = pytest.importorskip("tokenizers", reason="the text extra (tokenizers) is not installed")

import whybox  # noqa: E402
from whybox.errors import InvalidInputError, InvalidParameterError, UnknownNameError  # noqa: E402
from whybox.explainers.llm.generation import (  # noqa: E402
    MAX_NOISE_SIGMA,
    CausalLMAdapter,
    GenerationAttribution,
    attribute_generation,
)

F64 = torch.float64
EOS = "<|endoftext|>"
WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "park", "it", "was", "very", "happy",
         "sad", "big", "small", "red", "blue"]  # fmt: skip
VOCAB = [EOS, *WORDS] + [f"w{i}" for i in range(100 - 1 - len(WORDS))]
PROMPT = "the cat sat on the"
CONT = "mat and it was"
CONTRAST = "dog ran it sad"


def toy_tokenizer() -> object:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token=EOS))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # GPT-2 style: no pad and no mask token; <|endoftext|> is BOS, EOS and UNK
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=EOS, eos_token=EOS, bos_token=EOS)


def tiny_gpt2(seed: int = 0, dropout: float = 0.0) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=len(VOCAB), n_embd=32, n_layer=2, n_head=4, n_positions=64, resid_pdrop=dropout,
        embd_pdrop=dropout, attn_pdrop=dropout, bos_token_id=0, eos_token_id=0, initializer_range=0.3,
        attn_implementation="eager",
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(cfg)
    return model.to(F64).eval()


@pytest.fixture(scope="module")
def lm() -> tuple[torch.nn.Module, object]:
    return tiny_gpt2(), toy_tokenizer()


def ids(tok: object, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def zero_baseline(x: torch.Tensor) -> torch.Tensor:
    """Zero word vectors, control channels (mask, read position) kept."""
    base = x.clone()
    base[..., :-2] = 0
    return base


# ---------------------------------------------------------------------------------------------- the adapter
@pytest.mark.parametrize("score", ["log_prob", "prob", "logit"])
def test_adapter_scores_are_next_token_scores_at_the_read_position(lm: tuple, score: str) -> None:
    model, tok = lm
    adapter = CausalLMAdapter(model, tok, score=score)
    z = torch.tensor([ids(tok, PROMPT + " " + CONT)] * 3)
    read = torch.tensor([0, 4, 8])
    x = adapter.pack(z, read)
    assert x.shape == (3, 9, 34)
    assert torch.equal(x[..., -2], torch.ones(3, 9, dtype=F64))
    assert torch.equal(x[..., -1], read.view(3, 1).expand(3, 9).to(F64))
    with torch.no_grad():
        logits = model(input_ids=z).logits[torch.arange(3), read]
        want = {"logit": logits, "prob": logits.softmax(-1), "log_prob": logits.log_softmax(-1)}[score]
        assert torch.allclose(adapter.scores(x), want, atol=1e-12, rtol=0)


def test_a_left_padded_row_scores_as_the_unpadded_row(lm: tuple) -> None:
    model, tok = lm
    adapter = CausalLMAdapter(model, tok)
    z = ids(tok, PROMPT)
    plain = adapter.pack(torch.tensor([z]), [len(z) - 1])
    padded = adapter.pack(
        torch.tensor([[0, 0, *z]]), [len(z) + 1], attention_mask=torch.tensor([[0, 0] + [1] * len(z)])
    )
    with torch.no_grad():
        assert torch.allclose(adapter.scores(padded), adapter.scores(plain), atol=1e-12, rtol=0)


# ---------------------------------------------------------------------------------------------- gradient methods
@pytest.mark.parametrize("method", ["integrated_gradients", "input_x_gradient", "saliency"])
def test_batched_steps_equal_a_loop_over_truncated_prefixes(lm: tuple, method: str) -> None:
    model, tok = lm
    opts = {"n_steps": 16} if method == "integrated_gradients" else {}
    res = attribute_generation(model, tok, PROMPT, continuation=CONT, method=method, batch_size=3, **opts)
    p, g = res.prompt_length, len(res.continuation)
    z = res.token_ids
    assert res.matrix.shape == (p + g, g) and res.matrix.dtype == F64
    adapter = CausalLMAdapter(model, tok)
    for t in range(g):
        x = adapter.pack(torch.tensor([z[: p + t]]), [p + t - 1])
        extra = {"baseline": zero_baseline(x)} if method == "integrated_gradients" else {}
        e = whybox.explain(adapter, x, method, target=z[p + t], **opts, **extra)
        want = e.attributions[0, :, :-2].sum(-1)
        assert torch.allclose(res.matrix[: p + t, t], want, atol=1e-8, rtol=0), t
        assert bool(res.matrix[p + t :, t].isnan().all())  # undefined: the step's target and after
        assert not bool(res.matrix[: p + t, t].isnan().any())
    # the raw explanation: exactly 0 at each row's future and on the two control channels
    a = res.explanation.attributions
    future = torch.arange(p + g).view(1, -1) >= (p + torch.arange(g)).view(-1, 1)
    assert bool((a[future] == 0).all())
    assert bool((a[..., -2:] == 0).all())
    assert res.explanation.target.tolist() == z[p:]


def test_input_x_gradient_matches_autograd_on_the_model(lm: tuple) -> None:
    model, tok = lm
    res = attribute_generation(model, tok, PROMPT, continuation=CONT, method="input_x_gradient")
    p, z = res.prompt_length, res.token_ids
    for t in range(len(z) - p):
        e = model.get_input_embeddings()(torch.tensor([z[: p + t]])).detach().requires_grad_(True)
        s = model(inputs_embeds=e).logits[0, -1].log_softmax(-1)[z[p + t]]
        (grad,) = torch.autograd.grad(s, e)
        assert torch.allclose(res.matrix[: p + t, t], (e * grad)[0].sum(-1), atol=1e-10, rtol=0), t
        assert float(res.step_scores[t]) == pytest.approx(float(s.detach()), abs=1e-12)


@pytest.mark.parametrize("method", ["saliency", "input_x_gradient", "smoothgrad", "integrated_gradients", "occlusion"])
def test_a_special_token_in_the_prompt_gets_zero_from_every_method(lm: tuple, method: str) -> None:
    """A BOS in the prompt is never perturbed, so it gets 0; gradient methods reported their gradient there
    (saliency 12.06, x·grad -0.34 at BOS on this model) while baselines and fills kept it (0). The other tokens'
    values are unchanged (x·grad: autograd on the model)."""
    model, tok = lm
    prompt = [0, *ids(tok, PROMPT)]  # <|endoftext|> as BOS, a special token of this tokenizer
    res = attribute_generation(model, tok, prompt, continuation=CONT, method=method)
    p = res.prompt_length
    assert bool((res.matrix[0] == 0).all()), res.matrix[0]
    assert bool(res.matrix[1:p].abs().sum() > 0)
    if method == "input_x_gradient":
        z = res.token_ids
        e = model.get_input_embeddings()(torch.tensor([z[:p]])).detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(inputs_embeds=e).logits[0, -1].log_softmax(-1)[z[p]], e)
        assert torch.allclose(res.matrix[1:p, 0], (e * grad)[0, 1:].sum(-1), atol=1e-10, rtol=0)


def test_the_first_step_equals_captum_llm_gradient_attribution(lm: tuple) -> None:
    """captum's LLMGradientAttribution(LayerIntegratedGradients) with its default baseline (token 0, this
    tokenizer's unk) attributes step 0 as whybox does with baseline="unk"; from step 1 on captum keeps the generated
    tokens in its baseline and attributes to the prompt only (whybox attributes to every earlier token)."""
    captum_attr = pytest.importorskip("captum.attr", reason="captum (the dev extra) is not installed")
    model, tok = lm
    res = attribute_generation(
        model, tok, PROMPT, continuation=CONT, method="integrated_gradients", n_steps=64, baseline="unk"
    )
    lig = captum_attr.LayerIntegratedGradients(model, model.get_input_embeddings())
    theirs = captum_attr.LLMGradientAttribution(lig, tok).attribute(
        captum_attr.TextTokenInput(PROMPT, tok), target=CONT, n_steps=64
    )
    p = res.prompt_length
    torch.testing.assert_close(res.matrix[:p, 0], theirs.token_attr[0].to(F64), rtol=0, atol=1e-6)


@pytest.mark.parametrize("baseline", ["zero", "unk"])
def test_integrated_gradients_is_complete_per_step(lm: tuple, baseline: str) -> None:
    model, tok = lm
    res = attribute_generation(model, tok, PROMPT, continuation=CONT, baseline=baseline, n_steps=300)
    p, z = res.prompt_length, res.token_ids
    adapter = CausalLMAdapter(model, tok)
    batch = adapter.steps(z, p)
    with torch.no_grad():
        fb = adapter.scores(batch.baseline(baseline)).gather(1, batch.targets.view(-1, 1)).squeeze(1)
    gap = res.step_scores - fb
    total = torch.nansum(res.matrix, 0)
    assert bool(((total - gap).abs() <= 1e-3 * gap.abs()).all()), (total, gap)


def test_smoothgrad_sigma_is_relative_to_the_embeddings_and_tends_to_its_base(lm: tuple) -> None:
    model, tok = lm
    sal = attribute_generation(model, tok, PROMPT, continuation=CONT, method="input_x_gradient")
    sg = attribute_generation(
        model, tok, PROMPT, continuation=CONT, method="smoothgrad", base="input_x_gradient", sigma=1e-9, n_samples=3
    )
    both = ~sal.matrix.isnan()
    assert torch.equal(both, ~sg.matrix.isnan())
    assert torch.allclose(sg.matrix[both], sal.matrix[both], atol=1e-6, rtol=1e-6)
    level = 0.02
    res = attribute_generation(
        model, tok, PROMPT, continuation=CONT, method="smoothgrad", noise_level=level, n_samples=2
    )
    # each step's sigma from its own attributed word vectors (its prefix): a step reads as on that prefix alone, so
    # the tokens after it change nothing (one sigma over the whole sequence moved every step with the continuation)
    batch = CausalLMAdapter(model, tok).steps(res.token_ids, res.prompt_length)
    on = batch.noise_mask()
    want = [level * float(batch.inputs[t][on[t]].max() - batch.inputs[t][on[t]].min()) for t in range(len(on))]
    assert res.explanation.meta["sigma"].tolist() == pytest.approx(want, rel=1e-12)
    longer = attribute_generation(  # 'dog''s word vector reaches past the first step's range
        model, tok, PROMPT, continuation="mat dog", method="smoothgrad", noise_level=level, n_samples=2
    )
    first = attribute_generation(
        model, tok, PROMPT, continuation="mat", method="smoothgrad", noise_level=level, n_samples=2
    )
    assert float(longer.explanation.meta["sigma"][0]) == float(first.explanation.meta["sigma"][0])
    a, b = first.explanation.attributions[0], longer.explanation.attributions[0]
    t = a.shape[0]
    torch.testing.assert_close(a, b[:t], equal_nan=True)


def test_smoothgrad_defaults_move_only_the_attributed_word_vectors(lm: tuple) -> None:
    """The default sigma (0.15 x each step's word vectors' range, above MAX_NOISE_SIGMA here, as on GPT-2) runs: the noise
    lands on the word vectors of each step's attributed tokens only, so the control channels, specials and each
    row's future are the input's in every noisy copy; the average is of gradient x input."""
    model, tok = lm
    seen: list[torch.Tensor] = []
    scores = CausalLMAdapter.scores

    def spy(self: object, x: torch.Tensor) -> torch.Tensor:
        seen.append(x.detach().clone())
        return scores(self, x)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(CausalLMAdapter, "scores", spy)
        res = attribute_generation(model, tok, PROMPT, continuation=CONT, method="smoothgrad", n_samples=3)
    assert float(res.explanation.meta["sigma"][0]) > MAX_NOISE_SIGMA
    assert res.explanation.params["base"] == "input_x_gradient"
    g = len(res.continuation)
    (noisy,) = [x for x in seen if x.shape[0] == 3 * g]  # the noisy copies: one call, sample-major
    batch = CausalLMAdapter(model, tok).steps(res.token_ids, res.prompt_length)
    where = batch.noise_mask()
    rows = torch.arange(3 * g) % g
    ref, on = batch.inputs[rows], where[rows]
    assert torch.equal(noisy[~on], ref[~on])
    assert bool((noisy[on] != ref[on]).all())
    assert not bool(res.matrix[~res.matrix.isnan()].eq(0).all())


# ---------------------------------------------------------------------------------------------- contrastive
def test_contrastive_log_prob_and_logit_differences_give_identical_attributions(lm: tuple) -> None:
    model, tok = lm
    kw = {"continuation": CONT, "contrast": CONTRAST, "n_steps": 24}
    lp = attribute_generation(model, tok, PROMPT, score="log_prob", **kw)
    lg = attribute_generation(model, tok, PROMPT, score="logit", **kw)
    assert torch.equal(lp.matrix.isnan(), lg.matrix.isnan())
    ok = ~lp.matrix.isnan()
    assert torch.allclose(lp.matrix[ok], lg.matrix[ok], atol=1e-8, rtol=0)
    assert lp.contrast_tokens == CONTRAST.split()
    z, c, p = lp.token_ids, ids(tok, CONTRAST), lp.prompt_length
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([z])).logits[0]
    for t in range(len(c)):
        lsm = logits[p + t - 1].log_softmax(-1)
        want = float(lsm[z[p + t]] - lsm[c[t]])
        assert float(lp.step_scores[t]) == pytest.approx(want, abs=1e-12)
        assert float(lg.step_scores[t]) == pytest.approx(want, abs=1e-12)
    plain = attribute_generation(model, tok, PROMPT, continuation=CONT, n_steps=24)
    assert not torch.allclose(plain.matrix[ok], lp.matrix[ok])  # the contrast changes the question


# ---------------------------------------------------------------------------------------------- perturbation
@pytest.mark.parametrize("method", ["occlusion", "feature_ablation"])
@pytest.mark.parametrize("baseline", ["zero", "unk"])
def test_token_perturbation_equals_a_hand_loop(lm: tuple, method: str, baseline: str) -> None:
    model, tok = lm
    res = attribute_generation(model, tok, PROMPT, continuation=CONT, method=method, baseline=baseline, batch_size=5)
    p, z = res.prompt_length, res.token_ids
    adapter = CausalLMAdapter(model, tok)
    emb = model.get_input_embeddings()
    with torch.no_grad():
        vec = torch.zeros(32, dtype=F64) if baseline == "zero" else emb(torch.tensor([tok.unk_token_id]))[0]
        for t in range(len(z) - p):
            x = adapter.pack(torch.tensor([z]), [p + t - 1])
            clean = adapter.scores(x)[0, z[p + t]]
            assert float(res.step_scores[t]) == pytest.approx(float(clean), abs=1e-12)
            for i in range(p + t):
                xi = x.clone()
                xi[0, i, :-2] = vec
                want = float(clean - adapter.scores(xi)[0, z[p + t]])
                assert float(res.matrix[i, t]) == pytest.approx(want, abs=1e-10), (t, i)
            assert bool(res.matrix[p + t :, t].isnan().all())


def test_exact_shapley_over_earlier_tokens_is_efficient_per_step(lm: tuple) -> None:
    model, tok = lm
    prompt, cont = "the cat sat", "on a mat"
    res = attribute_generation(model, tok, prompt, continuation=cont, method="exact_shapley")
    adapter = CausalLMAdapter(model, tok)
    batch = adapter.steps(res.token_ids, res.prompt_length)
    with torch.no_grad():  # v(all) - v(none): every earlier token set to the fill (zero vectors)
        empty = adapter.scores(batch.fill("zero")).gather(1, batch.targets.view(-1, 1)).squeeze(1)
    assert torch.allclose(torch.nansum(res.matrix, 0), res.step_scores - empty, atol=1e-10, rtol=0)


# ---------------------------------------------------------------------------------------------- continuations
def test_a_given_continuation_is_used_as_is(lm: tuple) -> None:
    model, tok = lm
    res = attribute_generation(model, tok, PROMPT, continuation=CONT, method="saliency")
    assert isinstance(res, GenerationAttribution)
    assert res.tokens == PROMPT.split() + CONT.split()
    assert res.prompt_length == 5 and res.continuation == CONT.split()
    as_ids = attribute_generation(
        model, tok, ids(tok, PROMPT), continuation=torch.tensor(ids(tok, CONT)), method="saliency"
    )
    assert as_ids.tokens == res.tokens
    assert torch.equal(as_ids.matrix.isnan(), res.matrix.isnan())
    assert torch.equal(torch.nan_to_num(as_ids.matrix), torch.nan_to_num(res.matrix))


def test_a_tokenizer_that_returns_a_batch_of_one_gives_the_same_ids(lm: tuple) -> None:
    """Some tokenizers (or wrappers that set return_tensors="pt") give input_ids as a (1, n) tensor, not a list:
    its one row is the ids (before, iterating it compared a whole row with the vocabulary size and raised)."""
    model, tok = lm

    class Batched:
        def __init__(self, inner: object) -> None:
            self.inner = inner

        def __call__(self, text: str, **kwargs: object) -> dict[str, torch.Tensor]:
            return {"input_ids": torch.tensor([self.inner(text, **kwargs)["input_ids"]])}

        def __getattr__(self, name: str) -> object:
            return getattr(self.inner, name)

    res = attribute_generation(model, tok, PROMPT, continuation=CONT, method="saliency")
    batched = attribute_generation(model, Batched(tok), PROMPT, continuation=CONT, method="saliency")
    assert batched.token_ids == res.token_ids
    assert torch.equal(torch.nan_to_num(batched.matrix), torch.nan_to_num(res.matrix))


def test_a_generated_continuation_is_the_greedy_decode_made_once(lm: tuple) -> None:
    model, tok = lm
    prompt = ids(tok, PROMPT)
    want: list[int] = []
    with torch.no_grad():
        for _ in range(6):  # greedy, stopping after EOS (kept), as model.generate(do_sample=False)
            nxt = int(model(input_ids=torch.tensor([prompt + want])).logits[0, -1].argmax())
            want.append(nxt)
            if nxt == tok.eos_token_id:
                break
    calls = [0]
    handle = model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        res = attribute_generation(model, tok, PROMPT, max_new_tokens=6, method="saliency", batch_size=64)
    finally:
        handle.remove()
    assert res.token_ids == prompt + want
    assert res.tokens == tok.convert_ids_to_tokens(prompt + want)
    # one pass per generated token, one for the gradients of all steps, one for the step scores: generated once
    assert calls[0] == len(want) + 2
    forced = attribute_generation(model, tok, PROMPT, continuation=want, method="saliency")
    assert torch.equal(torch.nan_to_num(forced.matrix), torch.nan_to_num(res.matrix))


# ---------------------------------------------------------------------------------------------- the model
def _snapshot(model: torch.nn.Module) -> tuple:
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        model.config.to_dict(),
    )


def _same(model: torch.nn.Module, snap: tuple) -> bool:
    state, training, requires, config = snap
    return (
        all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
        and [m.training for m in model.modules()] == training
        and [p.requires_grad for p in model.parameters()] == requires
        and model.config.to_dict() == config
        and all(p.grad is None for p in model.parameters())
    )


def test_the_model_comes_back_unchanged_also_when_a_call_raises() -> None:
    model, tok = tiny_gpt2(dropout=0.1), toy_tokenizer()
    model.train()
    model.transformer.h[0].attn.c_attn.weight.requires_grad_(False)
    snap = _snapshot(model)
    res = attribute_generation(model, tok, PROMPT, max_new_tokens=3, method="integrated_gradients", n_steps=8)
    assert _same(model, snap)
    ref = attribute_generation(tiny_gpt2(dropout=0.1), tok, PROMPT, max_new_tokens=3, n_steps=8)  # in eval mode
    assert res.token_ids == ref.token_ids
    assert torch.equal(torch.nan_to_num(res.matrix), torch.nan_to_num(ref.matrix))  # dropout was off inside
    with pytest.raises(InvalidParameterError, match="max_evaluations=1"):
        attribute_generation(model, tok, PROMPT, max_new_tokens=3, method="feature_ablation", max_evaluations=1)
    assert _same(model, snap)


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_input_gets_exact_messages(lm: tuple) -> None:
    model, tok = lm
    cases = [
        ({"prompt": ""}, InvalidParameterError, "prompt must be a non-empty string or hold at least one token id; got ''."),
        ({"prompt": []}, InvalidParameterError, "prompt must be a non-empty string or hold at least one token id; got []."),
        ({"continuation": ""}, InvalidParameterError,
         "continuation must be a non-empty string or hold at least one token id; got ''."),
        ({"continuation": CONT, "contrast": "dog ran"}, InvalidParameterError,
         "contrast must have as many tokens as the continuation (4); got 2."),
        ({"score": "probability"}, InvalidParameterError,
         "score must be one of ('logit', 'prob', 'log_prob'); got 'probability'."),
        ({"baseline": "blur"}, InvalidParameterError,
         "baseline must be one of ('pad', 'mask', 'unk', 'zero'); got 'blur'."),
        ({"baseline": "pad", "continuation": CONT}, InvalidParameterError,
         "baseline='pad' needs a pad token, which this tokenizer does not have; use one of ['unk', 'zero']."),
        ({"max_new_tokens": 0}, InvalidParameterError, "max_new_tokens must be an int >= 1; got 0."),
        ({"continuation": [3, 100]}, InvalidInputError,
         "continuation holds token id 100, outside the model's vocabulary 0..99; use the tokenizer that belongs to "
         "the model."),
        ({"prompt": 3.5}, InvalidParameterError,
         "prompt must be a string or token ids (a list of ints, or a 1-d or (1, P) integer tensor or array); got "
         "float."),
        ({"continuation": CONT, "method": "smoothgrad", "sigma": 0.5, "noise_mask": None}, InvalidParameterError,
         f"sigma must be <= {MAX_NOISE_SIGMA} for generation attribution with noise_mask=None (the noise then also "
         "lands on the attention-mask and read-position channels); got 0.5. Pass a smaller sigma= or noise_level=, "
         "or leave noise_mask out (noise on the word vectors only)."),
        ({"continuation": " ".join(["the"] * 60)}, InvalidInputError,
         "prompt (5 tokens) and continuation (60) exceed the model's 64 positions; shorten them."),
    ]  # fmt: skip
    for kw, err, msg in cases:
        kw = {"prompt": PROMPT, **kw}
        with pytest.raises(err) as info:
            attribute_generation(model, tok, kw.pop("prompt"), **kw)
        assert str(info.value) == msg, kw
    with pytest.raises(UnknownNameError, match="method='integrated_gradient' is not a known explainer"):
        attribute_generation(model, tok, PROMPT, continuation=CONT, method="integrated_gradient")
    adapter = CausalLMAdapter(model, tok, contrast={4: 7})
    x = adapter.pack(torch.tensor([ids(tok, PROMPT + " " + CONT)]), [5])
    with pytest.raises(InvalidInputError) as info:
        adapter.scores(x)
    assert str(info.value) == "a row reads position 5, which has no contrast token; contrast covers read positions [4]."
    with torch.no_grad():  # the contrast token scores exactly 0 against itself
        assert float(CausalLMAdapter(model, tok, contrast={5: 7}).scores(x)[0, 7]) == 0.0


def test_whole_continuation_target_equals_ablating_the_total_log_likelihood(lm: tuple) -> None:
    """Whole-continuation target: removing prompt token i (zero vector) changes the continuation's total
    log-likelihood by exactly whole_continuation[i] (ablation is linear in the score; a continuation token counts
    only for the steps after it)."""
    model, tok = lm
    res = attribute_generation(model, tok, PROMPT, continuation=CONT, method="feature_ablation")
    p, z = res.prompt_length, torch.tensor([res.token_ids])
    emb = model.get_input_embeddings()

    def total(e: torch.Tensor) -> float:
        with torch.no_grad():
            logp = torch.log_softmax(model(inputs_embeds=e, use_cache=False).logits[0], -1)
        return float(sum(logp[p + t - 1, z[0, p + t]] for t in range(z.shape[1] - p)))

    e0 = emb(z).detach()
    clean = total(e0)
    assert clean == pytest.approx(float(res.step_scores.sum()), abs=1e-10)
    whole = res.whole_continuation
    for i in range(z.shape[1] - 1):  # the last token precedes no step
        ei = e0.clone()
        ei[0, i] = 0.0
        assert float(whole[i]) == pytest.approx(clean - total(ei), abs=1e-10), i
    assert float(whole[-1]) == 0.0


def test_a_generation_attribution_shows_each_step_and_the_whole_continuation(lm: tuple) -> None:
    """to_html: one row per generated token with the tokens before it, titled with the matrix column's values,
    then the whole continuation's row (every token, its row sum); _repr_html_ shows the same rows."""
    from test_tokens_render import parse

    model, tok = lm
    res = attribute_generation(model, tok, PROMPT, continuation=CONT, method="occlusion")
    p_len, g = res.prompt_length, len(res.continuation)
    want_tokens: list[str] = []
    want_titles: list[str] = []
    for t in range(g):
        want_tokens += res.tokens[: p_len + t]
        want_titles += [format(float(v) + 0.0, "+.3g") for v in res.matrix[: p_len + t, t]]
    want_tokens += res.tokens
    want_titles += [format(float(v) + 0.0, "+.3g") for v in res.whole_continuation]
    for page in (res.to_html(), res._repr_html_()):
        parsed = parse(page)
        assert parsed.texts == want_tokens
        assert [s["title"] for s in parsed.spans] == want_titles
    headings = parse(res.to_html()).headings
    assert headings[1:] == [f"step {t}: {res.continuation[t]!r}" for t in range(g)] + ["whole continuation"]


def test_byte_level_tokens_are_shown_as_the_text_they_stand_for() -> None:
    """A GPT-2 style byte-level tokenizer's 'Ġcat' is ' cat' in token_texts and on the page (tokens keep the
    tokenizer's own strings)."""
    from test_tokens_render import parse
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = [EOS, "the", "Ġcat", "Ġsat", "Ġon", "Ġthe", "Ġmat", *[f"w{i}" for i in range(93)]]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token=EOS))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=EOS, eos_token=EOS, bos_token=EOS)
    res = attribute_generation(tiny_gpt2(), fast, "the cat sat", continuation=" on the mat", method="occlusion")
    assert res.tokens == ["the", "Ġcat", "Ġsat", "Ġon", "Ġthe", "Ġmat"]
    assert res.token_texts == ["the", " cat", " sat", " on", " the", " mat"]
    assert parse(res.to_html()).texts[-6:] == res.token_texts  # the whole continuation's row
