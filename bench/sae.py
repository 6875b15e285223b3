"""Benchmark: sparse autoencoders on MiniLM's residual stream over the standard-library docstrings corpus.

What it does (CPU, offline, a few minutes on 2 cores):

1. Corpus: ``whybox.data.corpus.stdlib_docstrings()`` (8,310 paragraphs on CPython 3.11.7, in SHA-256 order, so
   any slice is a spread sample). The last 10 % of the paragraphs are held out; the training paragraphs are taken
   in order until ``--train-tokens`` ordinary tokens (MiniLM's tokenizer, truncation at 128).
2. Activations: ``collect_activations`` of the MiniLM sentiment model (``whybox.data.text.minilm_sentiment``, whose
   encoder is all-MiniLM-L6-v2) after block ``--layer`` (default 3: ``hidden_states[4]``), every ordinary token.
3. Two SAEs on the same training rows, same steps, batch and learning rate: TopK (``--d-sae`` latents, ``--k``
   active, AuxK on) and ReLU + L1 (``--l1``). Reported: L0, FVE, nMSE, dead fraction on the training rows and on
   the held-out paragraphs, and FVE on the project's 345 sentiment sentences (another domain); the sentiment
   classifier's test accuracy and mean |Δ logit| when block ``layer``'s output is replaced by the SAE's
   reconstruction at the ordinary tokens.
4. Features: 5 latents of the TopK SAE drawn at random (seed 0) among those active on the training rows, each with
   its top 5 contexts (``feature_contexts``) and density.
5. Sentiment: for 3 sentences, the positive logit attributed to the TopK SAE's features at that layer
   (``prediction_to_features``), the top 5 features with the bias, error and special terms; then the top feature
   attributed to the input words with Integrated Gradients from the [PAD] baseline (``SAEFeatureAdapter``,
   ``readout="relu"``, ``pool="max"``, 256 Gauss-Legendre steps), with its completeness gap, and its top corpus
   contexts.

    python bench/sae.py [--layer 3] [--train-tokens 160000] [--d-sae 1536] [--k 32] [--l1 1.2] [--steps 2500]
                        [--out bench/results/sae.md]

The markdown goes to ``--out``; the "what the features seem to respond to" notes in the committed
``bench/results/sae.md`` were written by hand after reading that run.
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

import whybox
from whybox.data.corpus import stdlib_docstrings
from whybox.data.text import minilm_sentiment, sentiment_data
from whybox.explainers.llm.sae import SAEConfig, SAETrainingResult, SparseAutoencoder, sae_metrics, train_sae
from whybox.explainers.llm.sae_text import (
    SAEFeatureAdapter,
    _replace_block,
    collect_activations,
    feature_contexts,
    prediction_to_features,
    transformer_blocks,
)

SENTENCES = [
    "The food was delicious and the staff were friendly.",
    "The plot was dull and the acting was even worse.",
    "The hotel was not cheap, but the view was wonderful.",
]


def md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("`", "'").replace("*", "\\*").replace("_", "\\_")


@torch.no_grad()
def spliced_accuracy(model: Any, adapter: Any, sae: SparseAutoencoder, layer: int) -> tuple[float, float, float]:
    """Test accuracy of the sentiment classifier clean and with block ``layer``'s output replaced by the SAE's
    reconstruction at ordinary tokens; and the mean |Δ positive logit|."""
    texts, labels = sentiment_data("test")
    batch = adapter.encode(texts)
    ordinary = ~batch.special_mask
    block = transformer_blocks(model)[layer]

    def splice(h: torch.Tensor) -> torch.Tensor:
        x_hat = sae(h.reshape(-1, h.shape[-1]))[0].reshape(h.shape).to(h.dtype)
        return torch.where(ordinary.unsqueeze(-1), x_hat, h)

    with adapter.guard("eval"):
        clean = adapter.scores(batch.inputs)
        with _replace_block(block, splice):
            spliced = adapter.scores(batch.inputs)
    acc_clean = float((clean.argmax(1) == labels).double().mean())
    acc_sae = float((spliced.argmax(1) == labels).double().mean())
    return acc_clean, acc_sae, float((spliced[:, 1] - clean[:, 1]).abs().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layer", type=int, default=3)
    ap.add_argument("--train-tokens", type=int, default=160_000)
    ap.add_argument("--d-sae", type=int, default=1536)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--l1", type=float, default=1.2)
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--out", type=Path, default=Path("bench/results/sae.md"))
    args = ap.parse_args()
    command = " ".join([".venv/bin/python bench/sae.py", *sys.argv[1:]])
    t_all = time.perf_counter()

    # ------------------------------------------------------------------ corpus and activations
    t0 = time.perf_counter()
    corpus = stdlib_docstrings()
    t_corpus = time.perf_counter() - t0
    model, tokenizer = minilm_sentiment()
    adapter = whybox.adapt_text(model, tokenizer)
    n_hold = len(corpus) // 10
    train_pool, held = corpus[:-n_hold], corpus[-n_hold:]
    lengths = [
        sum(1 for s in m if not s)
        for m in tokenizer(train_pool, truncation=True, max_length=128, return_special_tokens_mask=True)[
            "special_tokens_mask"
        ]
    ]
    total, n_train = 0, 0
    while n_train < len(train_pool) and total < args.train_tokens:
        total += lengths[n_train]
        n_train += 1
    train_texts = train_pool[:n_train]
    t0 = time.perf_counter()
    acts, refs, tokens = collect_activations(adapter, train_texts, layer=args.layer, batch_size=64)
    held_acts = collect_activations(adapter, held, layer=args.layer, batch_size=64).acts
    sent_texts, _ = sentiment_data("all")
    sent_acts = collect_activations(adapter, sent_texts, layer=args.layer, batch_size=64).acts
    t_collect = time.perf_counter() - t0
    print(f"corpus {len(corpus)} paragraphs ({t_corpus:.1f} s); train {len(train_texts)} paragraphs / "
          f"{acts.shape[0]} tokens, held-out {len(held)} / {held_acts.shape[0]}; collected in {t_collect:.0f} s")  # fmt: skip

    # ------------------------------------------------------------------ training
    common = {"d_in": acts.shape[1], "d_sae": args.d_sae, "lr": args.lr, "batch_size": args.batch_size,
              "steps": args.steps, "log_every": max(1, args.steps // 10), "seed": 0}  # fmt: skip
    configs = {
        "TopK": SAEConfig(activation="topk", k=args.k, **common),
        "ReLU + L1": SAEConfig(activation="relu", l1=args.l1, **common),
    }
    runs: dict[str, tuple[SAETrainingResult, float]] = {}
    for name, cfg in configs.items():
        t0 = time.perf_counter()
        res = train_sae(acts, cfg)
        runs[name] = (res, time.perf_counter() - t0)
        print(f"{name}: {runs[name][1]:.0f} s; last log {res.history[-1]}")

    metric_rows = []
    for name, (res, secs) in runs.items():
        m_tr = sae_metrics(res.model, acts)
        m_te = sae_metrics(res.model, held_acts)
        m_se = sae_metrics(res.model, sent_acts)
        acc_clean, acc_sae, dlogit = spliced_accuracy(model, adapter, res.model, args.layer)
        metric_rows.append((name, res, secs, m_tr, m_te, m_se, acc_clean, acc_sae, dlogit))
        print(name, m_tr, m_te, m_se, acc_clean, acc_sae, dlogit)

    topk = runs["TopK"][0].model

    # ------------------------------------------------------------------ features and their contexts
    alive = torch.nonzero((topk.encode(acts[:50_000]) > 0).any(0)).flatten().tolist()
    picked = sorted(random.Random(0).sample(alive, 5))
    ctx = feature_contexts(topk, acts, refs, train_texts, tokens, k=5, latents=picked, window=6)

    # ------------------------------------------------------------------ sentiment -> features -> tokens
    pf = prediction_to_features(adapter, SENTENCES, topk, layer=args.layer, target=1)
    sentence_rows = []
    for p in pf:
        top_feature = int(p.features[0])
        fa = SAEFeatureAdapter.from_text_adapter(adapter, topk, layer=args.layer, features=top_feature, pool="max",
                                                 readout="relu")  # fmt: skip
        b = fa.encode([p.text])
        e = whybox.explain(fa, b.inputs, "integrated_gradients", baseline=b.baseline("pad"), target=0, n_steps=256)
        words = b.word_attributions(e)[0]
        with torch.no_grad(), fa.guard():
            fmap = fa.feature_map(b.inputs)[0, :, 0]
            gated = SAEFeatureAdapter.from_text_adapter(adapter, topk, layer=args.layer, features=top_feature,
                                                        pool="max").scores(b.inputs)  # fmt: skip
        fires = [(b.tokens[0][i], float(fmap[i])) for i in range(fmap.shape[0]) if float(fmap[i]) > 0]
        fctx = feature_contexts(topk, acts, refs, train_texts, tokens, k=5, latents=[top_feature], window=6)[0]
        sentence_rows.append((p, top_feature, e, words, fires, float(gated[0, 0]), fctx))

    # ------------------------------------------------------------------ markdown
    lines = [
        f"# Sparse autoencoders on MiniLM layer {args.layer} over the standard-library docstrings",
        "",
        f"`{command}`",
        "",
        f"Python {platform.python_version()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.machine()} CPU; whole run {time.perf_counter() - t_all:.0f} s (corpus {t_corpus:.1f} s, "
        f"activations {t_collect:.0f} s, training {' and '.join(f'{n} {s:.0f} s' for n, (_, s) in runs.items())}).",
        "",
        "## Data",
        "",
        f"- Corpus: `stdlib_docstrings()`, {len(corpus)} paragraphs. Held out: the last {n_hold} "
        f"({held_acts.shape[0]:,} tokens). Training: the first {len(train_texts)} paragraphs, {acts.shape[0]:,} "
        f"ordinary tokens (cap {args.train_tokens:,}; [CLS]/[SEP]/pads left out; truncation at 128).",
        f"- Activations: output of block {args.layer} of all-MiniLM-L6-v2 (`hidden_states[{args.layer + 1}]`), "
        f"d = {acts.shape[1]}; mean token norm {float(acts.norm(dim=1).mean()):.2f}, total variance a token "
        f"{float((acts - acts.mean(0)).pow(2).sum(1).mean()):.1f}.",
        f"- Training: {args.steps} Adam steps of {args.batch_size} rows, lr {args.lr}, seed 0; "
        f"d_sae = {args.d_sae} ({args.d_sae / acts.shape[1]:g}x); TopK k = {args.k} with AuxK (k_aux = "
        f"{configs['TopK'].resolved_aux_k}, alpha 1/32, dead after {configs['TopK'].dead_after} steps); ReLU with "
        f"L1 lambda = {args.l1} on sum_i f_i (unit-norm decoder). Epochs over the training rows: "
        f"{args.steps * args.batch_size / acts.shape[0]:.1f}.",
        "",
        "## Reconstruction and sparsity",
        "",
        "FVE = 1 - sum ||x - x_hat||^2 / sum ||x - mean||^2 with the mean of the rows evaluated (spec section 6); "
        "nMSE = 1 - FVE; dead = latents zero on every row evaluated. Sentiment: the 345 review sentences of "
        "`sentiment_data('all')` (another domain). Classifier: test accuracy (86 sentences) clean, then with block "
        f"{args.layer}'s output replaced by x_hat at the ordinary tokens, and the mean |change| of the positive logit.",
        "",
        "| SAE | train s | L0 train | FVE train | dead train | L0 held-out | FVE held-out | nMSE held-out | "
        "dead held-out | FVE sentiment | accuracy clean / spliced | mean abs d logit |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, _res, secs, m_tr, m_te, m_se, acc_clean, acc_sae, dlogit in metric_rows:
        lines.append(
            f"| {name} | {secs:.0f} | {m_tr['l0']:.1f} | {m_tr['fve']:.3f} | {m_tr['dead_fraction']:.3f} | "
            f"{m_te['l0']:.1f} | {m_te['fve']:.3f} | {m_te['nmse']:.3f} | {m_te['dead_fraction']:.3f} | "
            f"{m_se['fve']:.3f} | {acc_clean:.3f} / {acc_sae:.3f} | {dlogit:.3f} |"
        )
    lines += ["", "Training log (every tenth of the run: step, loss, reconstruction term, L0 of the batch, "
              "latents dead by the step counter):", ""]  # fmt: skip
    for name, res, *_ in metric_rows:
        log = "; ".join(f"{h.step}: {h.loss:.3f}/{h.recon:.3f}/{h.l0:.0f}/{h.n_dead}" for h in res.history)
        lines.append(f"- {name}: {log}")
    lines += [
        "",
        "## Five TopK features drawn at random (seed 0, among the latents active on the first 50k rows)",
        "",
        "Top 5 training tokens each; the token is in «», with 6 words either side; density = fraction of training "
        "tokens on which the latent is active.",
        "",
    ]
    for c in ctx:
        lines.append(f"### latent {c.latent} (density {c.density:.4f})")
        lines.append("")
        for v, s in zip(c.values.tolist(), c.contexts, strict=True):
            lines.append(f"- {v:.2f}: {md_escape(s)}")
        lines.append("")
    lines += [
        "## Three sentiment sentences: positive logit -> TopK features -> words",
        "",
        "`prediction_to_features(adapter, sentences, sae, layer, target=1)`: a_i = sum over tokens of f_i d_i . "
        "dlogit/dx. Identity: sum_i a_i + bias + error = sum over ordinary tokens of x . dlogit/dx; plus the special "
        "tokens' term, the first-order total at the layer. Error share = |error| / (sum |a_i| + |bias| + |error|). "
        "Then the top feature's IG from [PAD] (readout ReLU(z_i), max over tokens, 256 Gauss-Legendre steps); 'gated' is the "
        "TopK feature's own max activation f_i on the sentence.",
        "",
    ]
    for p, top_feature, e, words, fires, gated, fctx in sentence_rows:
        total = float(p.attributions.sum()) + p.bias + p.error
        lines += [
            f'### "{p.text}"',
            "",
            f"positive logit {p.logit:.3f}; sum of feature attributions {float(p.attributions.sum()):.3f}, bias "
            f"{p.bias:.3f}, error {p.error:.3f} (share {p.error_share:.2f}), special tokens {p.special:.3f}; "
            f"first-order total {total + p.special:.3f}; {p.features.numel()} active features.",
            "",
            "| rank | latent | attribution | density in corpus | its top corpus context |",
            "|---:|---:|---:|---:|---|",
        ]
        dens = feature_contexts(topk, acts, refs, train_texts, tokens, k=1, latents=p.features[:5].tolist(), window=4)
        for r in range(min(5, p.features.numel())):
            top_ctx = md_escape(dens[r].contexts[0]) if dens[r].contexts else ""
            lines.append(
                f"| {r + 1} | {int(p.features[r])} | {float(p.attributions[r]):.4f} | {dens[r].density:.4f} | "
                f"{top_ctx} |"
            )
        delta = float(e.meta["delta"][0])
        fx, fb = float(e.meta["f_x"][0]), float(e.meta["f_baseline"][0])
        lines += [
            "",
            f"Top feature {top_feature}: fires on "
            + (", ".join(f"{md_escape(t)} ({v:.2f})" for t, v in fires) or "no token")
            + f"; max ReLU(z) = {fx:.3f} (gated f = {gated:.3f}), at the [PAD] baseline {fb:.3f}; IG delta {delta:.2e} "
            f"({abs(delta) / max(abs(fx - fb), 1e-12):.1%} of f(x) - f(baseline)).",
            "",
            "Words (IG): " + ", ".join(f"{md_escape(w)} {v:+.3f}" for w, v in words),
            "",
            "Its top corpus contexts: "
            + " / ".join(f"{v:.2f}: {md_escape(s)}" for v, s in zip(fctx.values.tolist(), fctx.contexts, strict=True)),
            "",
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
