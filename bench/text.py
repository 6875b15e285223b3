"""Benchmark: token attribution on the real MiniLM sentiment classifier, whybox beside captum, equal passes.

Sentences: the 86 held-out sentences of ``whybox.data.text.sentiment_data("test")``, explained one at a time (the
way a user explains a sentence), target = the positive class, from the [PAD] baseline:

- Integrated Gradients, 64 Gauss-Legendre steps: ``whybox.explain(adapter, batch.inputs, "integrated_gradients",
  baseline=batch.baseline("pad"), n_steps=64, batch_size=64)`` against captum's
  ``LayerIntegratedGradients(forward, get_input_embeddings())`` with the same baseline ids, steps, rule and
  ``internal_batch_size=64`` (64 forward and 64 backward rows per sentence for both);
- gradient x input: ``input_x_gradient`` against captum's ``LayerGradientXActivation`` on the embedding layer
  (1 forward + 1 backward row each);
- word occlusion: whybox ``feature_ablation`` over word features with the [MASK] fill against captum's
  ``FeatureAblation`` on ``inputs_embeds`` with the same word mask and baseline (1 + W forward rows each).

Each variant's attributions are checked against the other's (max abs difference printed). Variants alternate
over ``--reps``; the table gives median seconds per sentence and the ratio whybox / captum (below 1: whybox is
faster). One intra-op thread count for both (the machine's). Run when the machine is otherwise idle.

    python bench/text.py [--reps 3] [--n 86] [--out bench/results/text.md]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import whybox
from whybox.data.text import minilm_sentiment, sentiment_data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--n", type=int, default=86)
    ap.add_argument("--out", type=Path, default=Path("bench/results/text.md"))
    args = ap.parse_args()

    from captum.attr import FeatureAblation, LayerGradientXActivation, LayerIntegratedGradients

    model, tokenizer = minilm_sentiment()
    adapter = whybox.adapt_text(model, tokenizer)
    texts = sentiment_data("test")[0][: args.n]
    batches = [adapter.encode([t]) for t in texts]
    pad = tokenizer.pad_token_id
    emb = model.get_input_embeddings()

    def fwd_ids(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids, attention_mask=mask).logits

    def fwd_embeds(e: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return model(inputs_embeds=e, attention_mask=mask).logits

    lig = LayerIntegratedGradients(fwd_ids, emb)
    lgxa = LayerGradientXActivation(fwd_ids, emb)
    fa = FeatureAblation(fwd_embeds)

    def w_ig(b: Any) -> torch.Tensor:
        e = whybox.explain(adapter, b.inputs, "integrated_gradients", baseline=b.baseline("pad"), n_steps=64,
                           batch_size=64, target=1)  # fmt: skip
        return b.token_attributions(e)

    def c_ig(b: Any) -> torch.Tensor:
        base = torch.where(b.special_mask, b.input_ids, torch.full_like(b.input_ids, pad))
        a = lig.attribute(b.input_ids, baselines=base, target=1, additional_forward_args=(b.attention_mask,),
                          n_steps=64, method="gausslegendre", internal_batch_size=64)  # fmt: skip
        return a.sum(-1)

    def w_gxi(b: Any) -> torch.Tensor:
        return b.token_attributions(whybox.explain(adapter, b.inputs, "input_x_gradient", target=1))

    def c_gxi(b: Any) -> torch.Tensor:
        a = lgxa.attribute(b.input_ids, target=1, additional_forward_args=(b.attention_mask,))
        return a.sum(-1)

    def w_occ(b: Any) -> torch.Tensor:
        e = whybox.explain(adapter, b.inputs, "feature_ablation", features=b.word_features(), fill=b.fill("mask"),
                           target=1, batch_size=64)  # fmt: skip
        return b.token_attributions(e)

    def c_occ(b: Any) -> torch.Tensor:
        e = b.inputs[..., :-1]
        fill = b.fill("mask")[..., :-1]
        mask = b.word_features()[..., 0:1].expand_as(e)
        with torch.no_grad():
            a = fa.attribute(e, baselines=fill, target=1, feature_mask=mask,
                             additional_forward_args=(b.attention_mask,), perturbations_per_eval=64)  # fmt: skip
        return a[..., 0] * b.attention_mask

    pairs: list[tuple[str, Callable[[Any], torch.Tensor], Callable[[Any], torch.Tensor], str]] = [
        ("Integrated Gradients, 64 steps", w_ig, c_ig, "LayerIntegratedGradients"),
        ("gradient x input", w_gxi, c_gxi, "LayerGradientXActivation"),
        ("word occlusion ([MASK])", w_occ, c_occ, "FeatureAblation"),
    ]
    rows = []
    for name, w, c, peer in pairs:
        diff = max(float((w(b) - c(b)).abs().max()) for b in batches[:8])
        ws, cs = [], []
        for rep in range(args.reps):
            order = [("w", w), ("c", c)] if rep % 2 == 0 else [("c", c), ("w", w)]
            for tag, fn in order:
                t0 = time.perf_counter()
                with torch.enable_grad():
                    for b in batches:
                        fn(b)
                dt = (time.perf_counter() - t0) / len(batches)
                (ws if tag == "w" else cs).append(dt)
        ratio = statistics.median([a / b for a, b in zip(ws, cs, strict=True)])
        rows.append((name, peer, statistics.median(ws), statistics.median(cs), ratio, diff))
        print(f"{name}: whybox {statistics.median(ws) * 1e3:.1f} ms, captum {statistics.median(cs) * 1e3:.1f} ms, "
              f"ratio {ratio:.3f}, max |diff| {diff:.2e}")  # fmt: skip

    gpt_rows = gpt2_rows(args.reps)

    lines = [
        f"# Token attribution on MiniLM sentiment: whybox beside captum ({len(batches)} sentences, one at a time)",
        "",
        f"`python bench/text.py --reps {args.reps} --n {args.n}`; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; target: the positive class; median over repetitions (variants "
        "alternate). Equal passes: both sides run the same number of forward/backward rows per sentence.",
        "",
        "| method | captum peer | whybox ms/sentence | captum ms/sentence | ratio whybox/captum | max abs difference |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, peer, w_s, c_s, ratio, diff in rows:
        lines.append(f"| {name} | {peer} | {w_s * 1e3:.1f} | {c_s * 1e3:.1f} | {ratio:.3f} | {diff:.1e} |")
    lines += [
        "",
        "## Generation attribution on a tiny GPT-2 (locally built: 2 layers, 32 dimensions, float32, random weights)",
        "",
        "Prompt of 6 words, teacher-forced continuation of 6 tokens: every step's log-probability attributed to the "
        "earlier tokens with Integrated Gradients (64 Gauss-Legendre steps, <|endoftext|> baseline). whybox: "
        "`attribute_generation` (all steps as rows of one call, chunked by batch_size 64); captum: "
        "`LayerIntegratedGradients` on the word embeddings, one call per step on the prefix (the usual loop). Same "
        "passes: 64 rows per step.",
        "",
        "| method | whybox ms/continuation | captum ms/continuation | ratio whybox/captum | max abs difference |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, w_s, c_s, ratio, diff in gpt_rows:
        lines.append(f"| {name} | {w_s * 1e3:.1f} | {c_s * 1e3:.1f} | {ratio:.3f} | {diff:.1e} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")


def gpt2_rows(reps: int) -> list[tuple[str, float, float, float, float]]:
    """IG of every generation step of a tiny GPT-2: whybox's batched steps against captum's loop over prefixes."""
    from captum.attr import LayerIntegratedGradients
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from whybox.explainers.llm.generation import attribute_generation

    eos = "<|endoftext|>"
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "it", "was", "very", "happy", "dog"]
    vocab = [eos, *words, *[f"w{i}" for i in range(64)]]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token=eos))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=eos, eos_token=eos, bos_token=eos)
    cfg = GPT2Config(vocab_size=len(vocab), n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0,
                     eos_token_id=0, attn_implementation="eager")  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(cfg).eval()
    prompt, cont = "the cat sat on the mat", "and it was very happy dog"
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(cont, add_special_tokens=False)["input_ids"]
    z = torch.tensor([p_ids + c_ids])
    emb = model.get_input_embeddings()

    def whybox_ig() -> torch.Tensor:
        out = attribute_generation(model, tokenizer, p_ids, continuation=c_ids, method="integrated_gradients",
                                   n_steps=64, batch_size=64, baseline="unk")  # fmt: skip
        return torch.as_tensor(out.matrix)

    def captum_ig() -> torch.Tensor:
        cols = []
        for t in range(len(c_ids)):
            p = len(p_ids) + t
            prefix = z[:, :p]

            def fwd(ids: torch.Tensor, target_id: int = int(z[0, p])) -> torch.Tensor:
                return torch.log_softmax(model(input_ids=ids, use_cache=False).logits[:, -1], -1)[:, target_id]

            lig = LayerIntegratedGradients(fwd, emb)
            a = lig.attribute(prefix, baselines=None, n_steps=64, method="gausslegendre", internal_batch_size=64,
                              attribute_to_layer_input=False)  # fmt: skip
            col = torch.full((z.shape[1],), float("nan"), dtype=torch.float64)
            col[:p] = a[0].sum(-1).double()
            cols.append(col)
        return torch.stack(cols, 1)

    # captum's baselines=None for a layer method are id 0 in input space: <|endoftext|> embeddings ("unk" in whybox)
    w, c = whybox_ig(), captum_ig()
    finite = torch.isfinite(w) & torch.isfinite(c)
    diff = float((w[finite] - c[finite]).abs().max())
    ws, cs = [], []
    for rep in range(reps):
        for tag, fn in [("w", whybox_ig), ("c", captum_ig)] if rep % 2 == 0 else [("c", captum_ig), ("w", whybox_ig)]:
            t0 = time.perf_counter()
            fn()
            (ws if tag == "w" else cs).append(time.perf_counter() - t0)
    ratio = statistics.median([a / b for a, b in zip(ws, cs, strict=True)])
    print(f"GPT-2 generation IG: whybox {statistics.median(ws) * 1e3:.1f} ms, captum {statistics.median(cs) * 1e3:.1f} "
          f"ms, ratio {ratio:.3f}, max |diff| {diff:.2e}")  # fmt: skip
    return [("Integrated Gradients, 64 steps, 6 steps of generation", statistics.median(ws), statistics.median(cs),
             ratio, diff)]  # fmt: skip


if __name__ == "__main__":
    main()
