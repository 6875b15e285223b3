"""Optional integration: a real small causal LM from a local folder (e.g. distilgpt2 saved with save_pretrained).

Set ``WHYBOX_CAUSAL_LM_DIR`` to the folder; nothing downloads. Skipped with the reason when it is not set."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("transformers", reason="the text extra (transformers) is not installed")

FOLDER = os.environ.get("WHYBOX_CAUSAL_LM_DIR")
pytestmark = pytest.mark.skipif(
    not FOLDER,
    reason="no local causal LM: set WHYBOX_CAUSAL_LM_DIR to a folder saved with save_pretrained (offline only)",
)


def test_generation_attribution_on_a_real_causal_lm_is_complete() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from whybox.explainers.llm.generation import attribute_generation

    tok = AutoTokenizer.from_pretrained(FOLDER, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(FOLDER, local_files_only=True, attn_implementation="eager").eval()
    out = attribute_generation(model, tok, "The capital of France is", max_new_tokens=3, n_steps=64)
    assert out.matrix.shape == (len(out.tokens), 3)
    p = out.prompt_length
    for t in range(3):  # IG completeness per step, relative to the step's score gap
        col = out.matrix[: p + t, t]
        assert torch.isfinite(torch.as_tensor(col)).all()
    delta = out.explanation.meta["delta_rel"]
    assert float(torch.as_tensor(delta).abs().max()) < 0.05
