"""Ninth pass on generation steps scored by the metrics, second round.

Properties: ``randomization``'s re-runs of a method by name on a ``CausalLMAdapter`` read each step's fixed tokens
(specials, future), its fill and its baseline from the rows as the model that made them reads them, not from the
randomised copy's re-initialised word embedding: BOS gets exactly 0 in every re-run map and every re-run's fixed
tokens, baseline and fill are the step batch's; a metric that perturbs, given no ``regions``, takes one region per
token (``batch.token_features()``), so its score equals that with those regions given (each step's future tokens and
specials none of its features); ``whybox.explain`` with ``target=batch.targets`` equals ``attribute_generation``'s
explanation, as the docs write it."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the text extra (transformers) is not installed")
tokenizers = pytest.importorskip("tokenizers", reason="the text extra (tokenizers) is not installed")

from test_generation import tiny_gpt2, toy_tokenizer  # noqa: E402

import whybox  # noqa: E402
import whybox.explainers.llm.generation as gen  # noqa: E402
from whybox.errors import InvalidParameterError  # noqa: E402
from whybox.explainers.llm.generation import CausalLMAdapter, GenerationBatch, attribute_generation  # noqa: E402
from whybox.registry import EXPLAINERS, METRICS  # noqa: E402

PROMPT = "the cat sat on the"
CONT = "mat and"


@pytest.fixture(scope="module")
def lm() -> tuple[torch.nn.Module, object]:
    return tiny_gpt2(), toy_tokenizer()


def _steps(lm: tuple) -> tuple[CausalLMAdapter, GenerationBatch, list[int], list[int]]:
    """The step rows of a prompt that starts with BOS (a special token, kept by every fill) and its continuation."""
    model, tok = lm
    ids = lambda t: list(tok(t, add_special_tokens=False)["input_ids"])  # noqa: E731
    prompt, cont = [0, *ids(PROMPT)], ids(CONT)
    ad = CausalLMAdapter(model, tok)
    return ad, ad.steps(prompt + cont, len(prompt)), prompt, cont


# ---------------------------------------------------------------------------------------------- randomization
@pytest.mark.parametrize("order", ["cascading", "independent"])
@pytest.mark.parametrize("method", ["integrated_gradients", "feature_ablation"])
def test_randomization_reruns_keep_the_step_structure_of_the_rows(
    lm: tuple, method: str, order: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ad, batch, _, _ = _steps(lm)
    x, tg = batch.inputs, batch.targets
    fixed = batch.fixed_mask()
    options: list[dict[str, Any]] = []
    masks: list[torch.Tensor] = []
    step_options = gen.step_explain_options

    def spy(adapter: CausalLMAdapter, xx: torch.Tensor, name: str, params: dict[str, Any]) -> dict[str, Any]:
        masks.append(adapter.fixed_positions(xx))
        out = step_options(adapter, xx, name, params)
        options.append(out)
        return out

    monkeypatch.setattr(gen, "step_explain_options", spy)
    cls = EXPLAINERS.get(method)
    explain = cls.explain
    maps: list[torch.Tensor] = []

    @functools.wraps(explain)
    def record(self: Any, inputs: torch.Tensor, **kw: Any) -> Any:
        out = explain(self, inputs, **kw)
        maps.append(out.attributions.detach().clone())
        return out

    monkeypatch.setattr(cls, "explain", record)
    e = whybox.explain(ad, x, method, target=tg)
    maps.clear()
    options.clear()
    masks.clear()
    r = whybox.evaluate(ad, x, e, "randomization", target=tg, explainer=method, order=order)
    assert len(maps) == len(r.meta["layers"]) >= 2
    bos = batch.special_mask.nonzero().flatten().tolist()
    assert bos == [0]
    for a in maps:  # BOS is kept by every baseline and fill: exactly 0 in every re-run's map
        assert torch.count_nonzero(a[:, 0]) == 0
    for m in masks:  # the rows' own fixed tokens, whatever the copy's re-initialised embedding
        assert torch.equal(m, fixed)
    key = "baseline" if method == "integrated_gradients" else "fill"
    for o in options:
        assert torch.equal(o[key], getattr(batch, key)("zero"))
    if method == "feature_ablation":
        for o in options:
            assert torch.equal(o["features"], batch.token_features())


def test_randomization_rerun_fill_by_name_is_the_rows_token(lm: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    """A re-run's fill named "unk" is the unk token's word vector of the model that made the rows, in every re-run
    (the copy's re-initialised embedding holds another vector for it): the metric built directly, as a run's config
    builds it, reads the name in each re-run."""
    ad, batch, _, _ = _steps(lm)
    x, tg = batch.inputs, batch.targets
    cls = EXPLAINERS.get("occlusion")
    init = cls.__init__
    fills: list[torch.Tensor] = []

    @functools.wraps(init)  # the options read from its signature (and cached) stay the class's own
    def record(self: Any, adapter: Any, **kw: Any) -> None:
        init(self, adapter, **kw)
        f = kw["fill"]
        fills.append(f(x) if callable(f) else f)

    monkeypatch.setattr(cls, "__init__", record)
    e = whybox.explain(ad, x, "occlusion", target=tg, fill="unk")
    fills.clear()
    metric = METRICS.get("randomization")(explainer="occlusion", explainer_params={"fill": "unk"})
    metric.evaluate(ad, x, e, target=tg)
    assert len(fills) >= 2
    want = batch.fill("unk")
    for f in fills:
        assert torch.equal(f, want)


# ---------------------------------------------------------------------------------------------- default regions
@pytest.mark.parametrize("metric", ["deletion", "insertion", "aopc", "comprehensiveness", "mufidelity"])
@pytest.mark.parametrize("method", ["kernel_shap", "integrated_gradients"])
def test_default_regions_of_step_rows_are_their_tokens(lm: tuple, metric: str, method: str) -> None:
    model, tok = lm
    ad, batch, prompt, cont = _steps(lm)
    x, tg = batch.inputs, batch.targets
    sizes = {"n_samples": 64} if method == "kernel_shap" else {"n_steps": 16}
    out = attribute_generation(model, tok, prompt, continuation=cont, method=method, **sizes)
    opts: dict[str, Any] = {"n_samples": 16, "subset_fraction": 0.5} if metric == "mufidelity" else {}
    plain = whybox.evaluate(ad, x, out.explanation, metric, target=tg, **opts)
    given = whybox.evaluate(ad, x, out.explanation, metric, target=tg, regions=batch.token_features(), **opts)
    none = whybox.evaluate(ad, x, out.explanation, metric, target=tg, regions=None, **opts)
    assert torch.equal(plain.scores, given.scores)
    assert torch.equal(none.scores, given.scores)
    for k, v in given.curves.items():
        assert torch.allclose(plain.curves[k], v, rtol=0, atol=0, equal_nan=True)


def test_deletion_steps_over_each_steps_own_tokens(lm: tuple) -> None:
    """Deletion without regions steps over the tokens each step attributes (1/5 and 1/6 of them), never a future
    token or a special nor a word-vector dimension."""
    model, tok = lm
    ad, batch, prompt, cont = _steps(lm)
    out = attribute_generation(model, tok, prompt, continuation=cont, method="kernel_shap", n_samples=64)
    r = whybox.evaluate(ad, batch.inputs, out.explanation, "deletion", target=batch.targets)
    own = (~batch.fixed_mask()).sum(1).tolist()
    assert own == [5, 6]
    for row, n in enumerate(own):
        xs = r.curves["x"][row]
        want = torch.arange(n + 1, dtype=xs.dtype) / n
        assert torch.allclose(xs[: n + 1], want)
        assert bool((xs[n:] == 1).all())


def test_mufidelity_without_regions_replaces_half_of_each_steps_tokens(
    lm: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tok = lm
    ad, batch, prompt, cont = _steps(lm)
    x, tg = batch.inputs, batch.targets
    out = attribute_generation(model, tok, prompt, continuation=cont, method="integrated_gradients")
    seen: list[torch.Tensor] = []
    forward = ad.forward

    def spy(z: torch.Tensor) -> Any:
        seen.append(z.detach().clone())
        return forward(z)

    monkeypatch.setattr(ad, "forward", spy)
    whybox.evaluate(ad, x, out.explanation, "mufidelity", target=tg, n_samples=8, subset_fraction=0.5)
    own = (~batch.fixed_mask()).sum(1)
    counts = set()
    for rows in seen:
        for z in rows:
            g = int(z[0, -1]) - (len(prompt) - 1)  # the step this row reads
            changed = (z[:, :-2] != x[g, :, :-2]).any(-1)
            assert not bool((changed & batch.fixed_mask()[g]).any())  # never a future token or a special
            if bool(changed.any()):
                counts.add((g, int(changed.sum())))
    assert counts == {(0, round(0.5 * int(own[0]))), (1, round(0.5 * int(own[1])))}


def test_steps_with_default_regions_of_step_rows_is_refused(lm: tuple) -> None:
    model, tok = lm
    ad, batch, prompt, cont = _steps(lm)
    out = attribute_generation(model, tok, prompt, continuation=cont, method="kernel_shap", n_samples=32)
    with pytest.raises(InvalidParameterError, match="on a causal LM's step rows their tokens, always"):
        whybox.evaluate(ad, batch.inputs, out.explanation, "deletion", target=batch.targets, steps=10)


# ---------------------------------------------------------------------------------------------- the docs' example
def test_explain_with_the_continuation_as_target_is_attribute_generations(lm: tuple) -> None:
    model, tok = lm
    ad, batch, prompt, cont = _steps(lm)
    out = attribute_generation(model, tok, prompt, continuation=cont)
    e = whybox.explain(ad, batch.inputs, "integrated_gradients", target=batch.targets)
    assert torch.equal(e.attributions, out.explanation.attributions)
