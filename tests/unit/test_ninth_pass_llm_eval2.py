"""Ninth pass on generation steps scored by the metrics, second round.

Properties: ``randomization``'s re-runs of a method by name on a ``CausalLMAdapter`` read each step's fixed tokens
(specials, future), its fill and its baseline from the rows as the model that made them reads them, not from the
randomised copy's re-initialised word embedding: BOS gets exactly 0 in every re-run map and every re-run's fixed
tokens, baseline and fill are the step batch's; a metric that perturbs, given no ``regions``, takes one region per
token (``batch.token_features()``), so its score equals that with those regions given (each step's future tokens and
specials none of its features); ``whybox.explain`` with ``target=batch.targets`` equals ``attribute_generation``'s
explanation, as the docs write it."""

from __future__ import annotations

from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the text extra (transformers) is not installed")
tokenizers = pytest.importorskip("tokenizers", reason="the text extra (tokenizers) is not installed")

from test_generation import tiny_gpt2, toy_tokenizer  # noqa: E402

import whybox  # noqa: E402
import whybox.explainers.llm.generation as gen  # noqa: E402
from whybox.explainers.llm.generation import CausalLMAdapter, GenerationBatch  # noqa: E402
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
