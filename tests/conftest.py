"""Small shared fixtures: seeded generators and a tiny image classifier built on the fly."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

# The test models are tiny: intra-op threads only add overhead, and on a shared 2-core machine they
# oversubscribe it (measured: contract suite 47 s with 2 threads under load, 5 s with 1). An explicit
# OMP_NUM_THREADS still wins.
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(1)


def _small_cnn(
    *, seed: int = 0, dtype: torch.dtype = torch.float32, channels: int = 8, classes: int = 5, inplace: bool = False
) -> nn.Sequential:
    """Conv-ReLU-Conv-ReLU-AdaptiveAvgPool-Flatten-Linear on (B, 3, H, W), seeded, in eval mode."""
    with torch.random.fork_rng(devices=[]):  # seeded weights, global RNG left as it was
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Conv2d(3, channels, 3, padding=1),
            nn.ReLU(inplace=inplace),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=inplace),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(channels, classes),
        )
    return model.to(dtype).eval()


@pytest.fixture
def make_cnn() -> Callable[..., nn.Sequential]:
    """Factory for the small seeded CNN (``make_cnn(seed=0, dtype=..., channels=8, classes=5, inplace=False)``)."""
    return _small_cnn


@pytest.fixture
def gen() -> torch.Generator:
    """A CPU generator seeded with 0 (never the global RNG)."""
    return torch.Generator().manual_seed(0)


TOY_WORDS = ["the", "movie", "was", "great", "bad", "not", "a", "film", "plot", "acting", "good", "terrible", "it",
             "and", "but", "very", "boring", "fun", "play", "##ing", "##ed", "love", "hate", "story"]  # fmt: skip


def toy_text_classifier(seed: int = 0, num_labels: int = 3) -> object:
    """A tiny BERT classifier (hidden 32, 2 layers, 4 heads, float64, eval) with a toy WordPiece tokenizer, both
    built locally, wrapped by ``whybox.adapt_text``. Needs transformers and tokenizers (the caller skips)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    import whybox

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TOY_WORDS])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]",
    )  # fmt: skip
    cfg = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        num_labels=num_labels, max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertForSequenceClassification(cfg).to(torch.float64).eval()
    return whybox.adapt_text(model, tokenizer)


@pytest.fixture(scope="session")
def make_text_classifier() -> Callable[..., object]:
    """Factory for :func:`toy_text_classifier` (the caller skips without transformers/tokenizers)."""
    return toy_text_classifier


def toy_gpt2_classifier(num_labels: int = 2) -> tuple[nn.Module, object]:
    """A tiny GPT-2 sequence classifier (float64, eval, eager attention) and a word-level tokenizer with EOS as its
    pad token, as Hugging Face sets GPT-2 up for classification (not adapted: the caller passes both)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2ForSequenceClassification, PreTrainedTokenizerFast

    vocab = ["<eos>", *TOY_WORDS]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<eos>", eos_token="<eos>", pad_token="<eos>")
    cfg = GPT2Config(vocab_size=len(vocab), n_embd=16, n_layer=2, n_head=2, n_positions=32, num_labels=num_labels,
                     pad_token_id=0, attn_implementation="eager")  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GPT2ForSequenceClassification(cfg)
    return model.to(torch.float64).eval(), fast


@pytest.fixture(scope="session")
def make_gpt2_classifier() -> Callable[..., tuple[nn.Module, object]]:
    """Factory for :func:`toy_gpt2_classifier` (the caller skips without transformers/tokenizers)."""
    return toy_gpt2_classifier


# ---------------------------------------------------------------------------------------------- memory growth
CALLS = 100
WARM_UP = 5
OBJECT_SLACK = 5  # a leak of one object per call leaves 100


def _live() -> tuple[set[int], int, int]:
    """(ids of the objects the collector tracks, live tensors, bytes of their storages) after a full collection.

    Storage objects are left out of the ids: reading a tensor's storage here makes its Python object.
    """
    gc.collect()
    objects = gc.get_objects()
    tensors = [o for o in objects if issubclass(type(o), torch.Tensor)]  # type(): no attribute lookups on o
    ids = {id(o) for o in objects if not issubclass(type(o), torch.UntypedStorage)}
    return ids, len(tensors), sum(t.untyped_storage().nbytes() for t in tensors)


def _assert_no_growth(call: Callable[[], Any]) -> None:
    """No more live tensors or tensor bytes, and no growth in the objects the collector tracks (containers,
    instances, closures: what a cache, a kept hook or a reference cycle would hold; a str or a dict of numbers is
    not tracked, so a leak of those alone goes unseen here).

    Object growth is objects made by the calls that are still alive *and* a larger count. Neither alone: the count
    moves when the collector starts tracking an existing dict or tuple (it tracks them lazily), and new objects
    survive where a cache keeps only the latest value (torch.manual_seed without CUDA queues one seeding callback
    for a later CUDA start, replacing the one before: about 20 objects, however many calls).
    """
    for _ in range(WARM_UP):
        call()
    before = _live()
    for _ in range(CALLS):
        call()
    after = _live()
    assert after[1:] == before[1:], f"live tensors / bytes grew over {CALLS} calls: {before[1:]} -> {after[1:]}"
    survivors = len(after[0] - before[0])
    grown = len(after[0]) - len(before[0])
    assert survivors <= OBJECT_SLACK or grown <= OBJECT_SLACK, (
        f"{survivors} Python objects made by {CALLS} calls are still alive, {grown} more in all"
    )


@pytest.fixture
def assert_no_growth() -> Callable[[Callable[[], Any]], None]:
    """``assert_no_growth(call)``: 100 calls of ``call`` after a warm-up leave no tensor, tensor byte or
    collector-tracked object behind (RELIABILITY.md: 100 repeated calls do not grow memory)."""
    return _assert_no_growth
