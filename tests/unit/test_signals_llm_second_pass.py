"""Signals, black boxes and language-model cases a second audit found: per-input references of a model of several
inputs survive save/load and reach the metrics; an onnxruntime session of a 1-D CNN reads signals; a black box on
signals names fn.signal_channels; attention methods on an SAE adapter at GPT-2's last block follow the adapter's own
scores; attribute_generation refuses a generation past the positions before any pass, takes batch_size=None and
IG's rule (integration=); feature_contexts keeps byte-level BPE words whole; SAE decode names a wrong shape."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import whybox
from whybox.errors import InvalidInputError, InvalidParameterError


class _TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.fc = nn.Linear(2 + 4, 3)

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([self.conv(image).mean((2, 3)), meta], 1))


def test_per_input_references_survive_save_and_reach_the_metrics(tmp_path: Path) -> None:
    a = whybox.adapt(_TwoInputs(), input_shapes=[(3, 6, 6), (4,)])
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(3, 3, 6, 6, generator=g), torch.rand(3, 4, generator=g))
    base = (torch.full((3, 6, 6), 0.5), torch.zeros(4))
    e = whybox.explain(a, x, "integrated_gradients", baseline=base, n_steps=8)
    e.save(tmp_path / "e.safetensors")
    loaded = whybox.Explanation.load(tmp_path / "e.safetensors")
    assert torch.equal(loaded.options["baseline"], a.packing.pack_inputs([b.unsqueeze(0) for b in base])[0])
    before = whybox.evaluate(a, x, e, "max_sensitivity", n_samples=2)
    after = whybox.evaluate(a, x, loaded, "max_sensitivity", n_samples=2)
    assert torch.equal(before.scores, after.scores)
    packed = a.packing.pack_inputs([b.unsqueeze(0) for b in base])[0]
    per_input = whybox.evaluate(a, x, e, "deletion", fill=base, steps=4)
    by_hand = whybox.evaluate(a, x, e, "deletion", fill=packed, steps=4)
    assert torch.equal(per_input.scores, by_hand.scores)


def _conv1d() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 35, 2)).eval()


def test_an_onnx_session_of_a_1d_cnn_reads_signals(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime", reason="the onnx extra (onnxruntime) is not installed")
    pytest.importorskip("onnx", reason="exporting the test model needs the onnx package (dev extra)")
    model, x = _conv1d(), torch.rand(2, 3, 37, generator=torch.Generator().manual_seed(2))
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x[:1],), str(path), dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})  # fmt: skip
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    by_torch = whybox.explain(model, x, "occlusion")
    by_session = whybox.explain(session, x, "occlusion")
    assert by_session.params["window"] == by_torch.params["window"]
    assert torch.allclose(by_session.attributions, by_torch.attributions, atol=1e-5)


def test_a_black_box_on_signals_names_signal_channels() -> None:
    model, x = _conv1d(), torch.rand(2, 3, 37)

    def fn(t: torch.Tensor) -> torch.Tensor:
        return model(t)

    with pytest.raises(InvalidInputError, match=r"fn\.signal_channels = 3"):
        whybox.explain(fn, x, "rise")
    fn.signal_channels = 3  # type: ignore[attr-defined]
    assert torch.allclose(
        whybox.explain(fn, x, "occlusion").attributions, whybox.explain(model, x, "occlusion").attributions
    )


def test_sae_attention_at_gpt2_s_last_block_follows_the_adapter_s_scores(make_gpt2_classifier: object) -> None:
    pytest.importorskip("transformers")
    from whybox.explainers.llm.sae import SAEConfig, SparseAutoencoder
    from whybox.explainers.llm.sae_text import SAEFeatureAdapter

    model, tok = make_gpt2_classifier()  # type: ignore[operator]
    clf = whybox.adapt_text(model, tok)
    sae = SparseAutoencoder(SAEConfig(d_in=16, d_sae=24, activation="relu", seed=1), dtype=torch.float64)
    with torch.no_grad():
        sae.b_e.fill_(0.05)
    fa = SAEFeatureAdapter.from_text_adapter(clf, sae, layer=1, features=list(range(24)), pool="mean")
    batch = fa.encode(["the movie was great", "boring plot"])
    with torch.no_grad():
        own = fa.scores(batch.inputs).argmax(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        e = whybox.explain(fa, batch.inputs, "attention_relevance")
    assert e.target.tolist() == own.tolist()


def _lm() -> tuple[nn.Module, object]:
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = ["<eos>", "the", "cat", "sat", "on", "mat", "and", "it", "was", "dog"]
    t = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<eos>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<eos>", eos_token="<eos>", pad_token="<eos>")
    cfg = GPT2Config(vocab_size=len(vocab), n_embd=16, n_layer=1, n_head=2, n_positions=16, bos_token_id=0,
                     eos_token_id=99, attn_implementation="eager")  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(cfg).to(torch.float64).eval()
    return model, tok


def test_attribute_generation_checks_before_generating_and_takes_its_documented_options() -> None:
    from whybox.explainers.llm.generation import attribute_generation

    model, tok = _lm()
    with pytest.raises(InvalidInputError, match="max_new_tokens=20 exceed the model's 16 positions"):
        attribute_generation(model, tok, "the cat sat on", max_new_tokens=20, method="saliency")
    a = attribute_generation(model, tok, "the cat", continuation="sat on", method="occlusion", batch_size=None)
    b = attribute_generation(model, tok, "the cat", continuation="sat on", method="occlusion", batch_size=2)
    assert torch.equal(a.matrix.nan_to_num(), b.matrix.nan_to_num())
    ig = attribute_generation(model, tok, "the cat", continuation="sat on", integration="riemann_trapezoid", n_steps=8)
    assert ig.explanation.params["method"] == "riemann_trapezoid"
    with pytest.raises(InvalidParameterError, match="target= is not an option of attribute_generation"):
        attribute_generation(model, tok, "the cat", continuation="sat", method="saliency", target=3)
    with pytest.raises(InvalidParameterError, match="'occlusion' has none"):
        attribute_generation(
            model, tok, "the cat", continuation="sat", method="occlusion", integration="riemann_trapezoid"
        )


def test_byte_level_words_stay_whole_in_contexts() -> None:
    from whybox.explainers.llm.sae_text import _context

    tokens = ["the", "Ġgame", "playing", "Ġwas", "Ġfun"]
    assert _context(tokens, 2, 2) == "the game«playing» was fun"
    assert _context(["<|endoftext|>", "hello", "Ġworld"], 1, 1) == "<|endoftext|> «hello» world"
    assert _context(["[CLS]", "play", "##ing", "it", "[SEP]"], 2, 1) == "[CLS] play«ing» it …"


def test_sae_decode_names_a_wrong_shape() -> None:
    from whybox.explainers.llm.sae import SAEConfig, SparseAutoencoder

    sae = SparseAutoencoder(SAEConfig(d_in=8, d_sae=24, activation="relu", seed=1))
    with pytest.raises(InvalidInputError, match=r"f must have shape \(B, 24\)"):
        sae.decode(torch.zeros(3, 8))
