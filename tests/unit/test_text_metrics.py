"""Text metrics on the tiny BERT of ``test_text.py`` (toy WordPiece tokenizer, float64, no hub).

Properties: ERASER comprehensiveness and sufficiency over words and over tokens equal a hand loop that replaces
the top words by [MASK]; specials and pads are null features (never counted, never selected, whatever their
attribution); padding changes nothing (batched equals one by one). Deletion and insertion over words equal a
hand loop, with the word ids as a label map (B, T, 1), as FeatureGroups over tokens or spread over every channel,
and with per-token attribution maps (B, T); CLS, SEP and pads (equal to the [MASK] fill) leave the curve, so padding
does not move a row's AUC.
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("transformers", reason="the text extra (transformers) is not installed")
pytest.importorskip("tokenizers", reason="the text extra (tokenizers) is not installed")

from test_text import SENTENCES, tiny_bert, toy_tokenizer

import whybox
from whybox.masking.features import FeatureGroups
from whybox.metrics.eraser import ERASER_FRACTIONS
from whybox.models.text import TextBatch, adapt_text

F64 = torch.float64


@pytest.fixture(scope="module")
def clf() -> object:
    return adapt_text(tiny_bert(), toy_tokenizer())


@pytest.fixture(scope="module")
def batch(clf: object) -> TextBatch:
    return clf.encode(SENTENCES)


@pytest.fixture(scope="module")
def ig(clf: object, batch: TextBatch) -> whybox.Explanation:
    return whybox.explain(
        clf, batch.inputs, "integrated_gradients", baseline=batch.baseline("pad"), n_steps=32, target=1
    )


def _prob(clf: object, x: torch.Tensor, target: int) -> float:
    with torch.no_grad():
        return float(torch.softmax(clf.scores(x), 1)[0, target])


def _eraser_by_hand(
    clf: object, batch: TextBatch, tok: torch.Tensor, *, words: bool, keep: bool, target: int
) -> torch.Tensor:
    """ERASER straight from the paper: rank the row's words (or ordinary tokens) by their summed token values,
    replace the top ceil(k M) by [MASK] (keep: replace all the others), average p(x) - p(x_k) over the bins."""
    fill = batch.fill("mask")
    out = []
    for r in range(len(batch)):
        units: dict[int, list[int]] = {}
        for i, w in enumerate(batch.word_ids[r]):
            if w is not None and not bool(batch.special_mask[r, i]):
                units.setdefault(w if words else i, []).append(i)
        value = {u: float(tok[r, idx].sum()) for u, idx in units.items()}
        order = sorted(units, key=lambda u: -value[u])
        x = batch.inputs[r : r + 1]
        p0 = _prob(clf, x, target)
        drops = []
        for k in ERASER_FRACTIONS:
            top = order[: math.ceil(k * len(order))]
            chosen = [i for u in (top if not keep else [u for u in order if u not in top]) for i in units[u]]
            xk = x.clone()
            xk[0, chosen] = fill[r, chosen]
            drops.append(p0 - _prob(clf, xk, target))
        out.append(sum(drops) / len(drops))
    return torch.tensor(out, dtype=F64)


# ---------------------------------------------------------------------------------------------- ERASER on text
@pytest.mark.parametrize(("name", "keep"), [("comprehensiveness", False), ("sufficiency", True)])
def test_eraser_over_words_matches_a_hand_loop(
    clf: object, batch: TextBatch, ig: object, name: str, keep: bool
) -> None:
    r = whybox.evaluate(clf, batch.inputs, ig, name, regions=batch.word_features(), fill=batch.fill("mask"))
    want = _eraser_by_hand(clf, batch, batch.token_attributions(ig), words=True, keep=keep, target=1)
    torch.testing.assert_close(r.scores, want, atol=1e-12, rtol=0)
    n_words = [len({w for w in wids if w is not None}) for wids in batch.word_ids]
    assert r.meta["n_features"] == n_words == [4, 11, 2, 2]  # "playing" is one word of two tokens
    # the clean rows, then one pass per distinct bin: ceil(k M) for ERASER's bins is [1, 1, 1, 1, 2] (M = 4),
    # [1, 1, 2, 3, 6] (M = 11) and all 1 (M = 2); a bin as large as the one before repeats its input and score
    assert r.meta["n_forward"] == 4 + (2 + 4 + 1 + 1)


@pytest.mark.parametrize(("name", "keep"), [("comprehensiveness", False), ("sufficiency", True)])
def test_eraser_defaults_to_token_positions_with_specials_and_pads_null(
    clf: object, batch: TextBatch, ig: object, name: str, keep: bool
) -> None:
    """No regions: one feature per position of (B, T, D + 1); the [MASK] fill keeps CLS, SEP and pads, so they are
    null. A (B, T) token map scores exactly like the (B, T, D + 1) map (the mask channel of IG is 0)."""
    tok = batch.token_attributions(ig)
    r = whybox.evaluate(clf, batch.inputs, ig, name, fill=batch.fill("mask"))
    want = _eraser_by_hand(clf, batch, tok, words=False, keep=keep, target=1)
    torch.testing.assert_close(r.scores, want, atol=1e-12, rtol=0)
    assert r.meta["features"] == "positions"
    assert r.meta["n_features"] == (~batch.special_mask).sum(1).tolist()
    assert r.meta["n_null"] == batch.special_mask.sum(1).tolist()
    by_tokens = whybox.evaluate(clf, batch.inputs, tok, name, fill=batch.fill("mask"), target=1)
    torch.testing.assert_close(by_tokens.scores, r.scores, atol=1e-12, rtol=0)
    by_ids = whybox.evaluate(clf, batch.inputs, ig, name, regions=batch.token_features(), fill=batch.fill("mask"))
    torch.testing.assert_close(by_ids.scores, r.scores, atol=1e-12, rtol=0)


def test_specials_and_pads_are_never_selected_whatever_their_attribution(
    clf: object, batch: TextBatch, ig: object
) -> None:
    tok = batch.token_attributions(ig)
    loud = tok + 1e6 * batch.special_mask.to(tok.dtype)  # the largest values sit on CLS, SEP and pads
    for name in ("comprehensiveness", "sufficiency"):
        kw = {"regions": batch.word_features(), "fill": batch.fill("mask"), "target": 1}
        quiet = whybox.evaluate(clf, batch.inputs, tok, name, **kw)
        torch.testing.assert_close(whybox.evaluate(clf, batch.inputs, loud, name, **kw).scores, quiet.scores)


def test_eraser_on_text_batched_equals_one_by_one(clf: object, batch: TextBatch, ig: object) -> None:
    """Padding adds null features only: each sentence alone (no pads) scores as in the padded batch."""
    tok = batch.token_attributions(ig)
    for name in ("comprehensiveness", "sufficiency"):
        r = whybox.evaluate(
            clf, batch.inputs, tok, name, regions=batch.word_features(), fill=batch.fill("mask"), target=1
        )
        for i, s in enumerate(SENTENCES):
            one = clf.encode([s])
            n = one.inputs.shape[1]
            got = whybox.evaluate(
                clf, one.inputs, tok[i : i + 1, :n], name, regions=one.word_features(), fill=one.fill("mask"), target=1
            )
            torch.testing.assert_close(got.scores, r.scores[i : i + 1], atol=1e-10, rtol=0)
            torch.testing.assert_close(got.curves["y"], r.curves["y"][i : i + 1], atol=1e-10, rtol=0)


# ---------------------------------------------------------------------------------------------- deletion / insertion
def _curve_by_hand(
    clf: object, batch: TextBatch, a: torch.Tensor, *, insertion: bool, target: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Region-step deletion (insertion) over the word features, straight from RISE: the words ranked by the mean
    attribution of their elements, removed (revealed) one per step; x = share of the words' tokens done. The
    region of CLS, SEP and pads never changes under the [MASK] fill: it comes last with no area, like the unused
    region ids of a row (points at the end, y unchanged)."""
    fill = batch.fill("mask")
    ids = batch.word_features()[..., 0]
    m = int(ids.max()) + 1
    xs, ys = [], []
    for r in range(len(batch)):
        regions = sorted(set(ids[r].tolist()))
        words = [g for g in regions if not bool(batch.special_mask[r][ids[r] == g].all())]
        value = {g: float(a[r][ids[r] == g].mean()) for g in words}
        order = sorted(words, key=lambda g: -value[g])
        n_word_tokens = sum(int((ids[r] == g).sum()) for g in words)
        x0 = batch.inputs[r : r + 1]
        cur = (fill if insertion else batch.inputs)[r : r + 1].clone()
        y, done = [_prob(clf, cur, target)], [0.0]
        for g in order:
            pos = ids[r] == g
            cur[0, pos] = x0[0, pos] if insertion else fill[r, pos]
            y.append(_prob(clf, cur, target))
            done.append(done[-1] + float(pos.sum()) / n_word_tokens)
        y += [y[-1]] * (m - len(words))
        done += [1.0] * (m - len(words))
        xs.append(done)
        ys.append(y)
    return torch.tensor(xs, dtype=F64), torch.tensor(ys, dtype=F64)


def _noisy(a: torch.Tensor) -> torch.Tensor:
    """The attributions plus a small distinct offset per token: no tied regions, so the hand loop needs no tie rule
    (IG gives CLS, SEP and pads exactly 0)."""
    t = a.shape[1]
    return a + (1e-3 * torch.arange(1, t + 1, dtype=a.dtype) / t).view(1, t, 1)


@pytest.mark.parametrize("name", ["deletion", "insertion"])
def test_deletion_and_insertion_over_words_match_a_hand_loop(
    clf: object, batch: TextBatch, ig: object, name: str
) -> None:
    """Works today when the word ids cover every element of (B, T, D + 1) (FeatureGroups over all channels) and the
    attributions are the full (B, T, D + 1) map."""
    a = _noisy(ig.attributions)
    ids = batch.word_features()
    spread = FeatureGroups(ids.expand_as(batch.inputs).contiguous(), int(ids.max()) + 1, "words")
    r = whybox.evaluate(clf, batch.inputs, a, name, regions=spread, fill=batch.fill("mask"), target=1)
    xs, ys = _curve_by_hand(clf, batch, a, insertion=name == "insertion", target=1)
    torch.testing.assert_close(r.curves["y"], ys, atol=1e-12, rtol=0)
    torch.testing.assert_close(r.curves["x"], xs, atol=1e-12, rtol=0)
    assert r.meta["protocol"] == "region_steps"


@pytest.mark.parametrize("name", ["deletion", "insertion"])
def test_deletion_and_insertion_take_word_features_as_a_label_map(
    clf: object, batch: TextBatch, ig: object, name: str
) -> None:
    a = _noisy(ig.attributions)
    r = whybox.evaluate(clf, batch.inputs, a, name, regions=batch.word_features(), fill=batch.fill("mask"), target=1)
    _, ys = _curve_by_hand(clf, batch, a, insertion=name == "insertion", target=1)
    torch.testing.assert_close(r.curves["y"], ys, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", ["deletion", "insertion"])
def test_deletion_and_insertion_take_token_shaped_feature_groups(
    clf: object, batch: TextBatch, ig: object, name: str
) -> None:
    a = _noisy(ig.attributions)
    ids = batch.word_features()  # (B, T, 1): the shape every explainer takes as features=
    groups = FeatureGroups(ids, int(ids.max()) + 1, "words")
    r = whybox.evaluate(clf, batch.inputs, a, name, regions=groups, fill=batch.fill("mask"), target=1)
    _, ys = _curve_by_hand(clf, batch, a, insertion=name == "insertion", target=1)
    torch.testing.assert_close(r.curves["y"], ys, atol=1e-12, rtol=0)


def test_deletion_takes_a_token_map(clf: object, batch: TextBatch, ig: object) -> None:
    ids = batch.word_features()
    spread = FeatureGroups(ids.expand_as(batch.inputs).contiguous(), int(ids.max()) + 1, "words")
    tok = batch.token_attributions(ig)
    full = whybox.evaluate(clf, batch.inputs, ig, "deletion", regions=spread, fill=batch.fill("mask"), target=1)
    r = whybox.evaluate(clf, batch.inputs, tok, "deletion", regions=spread, fill=batch.fill("mask"), target=1)
    torch.testing.assert_close(r.scores, full.scores)


def test_deletion_over_words_is_independent_of_padding(clf: object, batch: TextBatch, ig: object) -> None:
    def auc(b: TextBatch, a: torch.Tensor) -> torch.Tensor:
        ids = b.word_features()
        spread = FeatureGroups(ids.expand_as(b.inputs).contiguous(), int(ids.max()) + 1, "words")
        return whybox.evaluate(clf, b.inputs, a, "deletion", regions=spread, fill=b.fill("mask"), target=1).scores

    a = _noisy(ig.attributions)
    padded = auc(batch, a)
    one = clf.encode([SENTENCES[2]])
    n = one.inputs.shape[1]
    torch.testing.assert_close(auc(one, a[2:3, :n]), padded[2:3], atol=1e-10, rtol=0)


# ---------------------------------------------------------------------------------------------- defaults
FILLED = [n for n in whybox.metrics() if "fill" in whybox.api._options(whybox.api.METRICS.get(n))]


def test_packed_fill_is_the_batch_fill_without_the_texts(clf: object, batch: TextBatch) -> None:
    """The text adapter finds the specials by position (first and last attended tokens), so its fill of the
    packed inputs equals the batch's own (which knows the tokens), padded rows included."""
    assert torch.equal(clf.packed_fill(batch.inputs), batch.fill("mask"))
    assert torch.equal(clf.packed_fill(batch.inputs, "unk"), batch.fill("unk"))
    assert torch.equal(clf.packed_noise_mask(batch.inputs), batch.noise_mask())


@pytest.mark.parametrize("name", FILLED)
def test_a_metric_on_texts_replaces_words_by_mask_and_keeps_the_rest(
    clf: object, batch: TextBatch, ig: object, name: str
) -> None:
    """Without fill=, every metric that fills reads a text adapter's inputs with the [MASK] fill: the attention-mask
    channel, the specials and the pads are the input's in every model call (a zero fill switched the masked tokens
    off and zeroed CLS and SEP); on texts it also takes the words as its regions, as explain_text's words."""
    seen: list[torch.Tensor] = []
    scores = type(clf).scores

    def spy(self: object, x: torch.Tensor) -> torch.Tensor:
        seen.append(x.detach().clone())
        return scores(self, x)  # type: ignore[arg-type]

    fixed = batch.noise_mask().logical_not()  # the mask channel, specials and pads
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(clf), "scores", spy)
        auto = whybox.evaluate(clf, batch.inputs, ig, name, target=1)
    moved = [x for x in seen if x.shape[1:] == batch.inputs.shape[1:]]
    assert moved
    for x in moved:  # each call's rows are some of the batch's: compare with the row it came from
        for row in x:
            r = min(range(len(batch)), key=lambda i: int((row != batch.inputs[i]).sum()))
            assert torch.equal(row[fixed[r]], batch.inputs[r][fixed[r]]), name
    given = whybox.evaluate(clf, batch.inputs, ig, name, target=1, fill=batch.fill("mask"))
    torch.testing.assert_close(auto.scores, given.scores, rtol=0, atol=0, equal_nan=True)
    if "regions" in whybox.api._options(whybox.api.METRICS.get(name)):
        texts = whybox.evaluate(clf, SENTENCES, ig, name, target=1)
        words = whybox.evaluate(
            clf, batch.inputs, ig, name, target=1, fill=batch.fill("mask"), regions=batch.word_features()
        )
        torch.testing.assert_close(texts.scores, words.scores, rtol=0, atol=0, equal_nan=True)


def test_infidelity_refuses_a_text_adapters_packed_inputs(clf: object, batch: TextBatch, ig: object) -> None:
    with pytest.raises(
        whybox.InvalidParameterError, match="infidelity perturbs every element of its inputs, and a text"
    ):
        whybox.evaluate(clf, batch.inputs, ig, "infidelity", target=1)


def test_max_sensitivity_on_text_moves_only_the_ordinary_word_vectors(clf: object, batch: TextBatch) -> None:
    """Its noise lands on the ordinary tokens' word vectors: in every perturbed input the mask channel, CLS, SEP
    and the pads are the input's (the explanation's [MASK] fill keeps them, so they stay outside the features), and
    the word vectors do move; a black-box text model, which only reads which words are present, is refused."""
    seen: list[torch.Tensor] = []
    scores = type(clf).scores

    def spy(self: object, x: torch.Tensor) -> torch.Tensor:
        seen.append(x.detach().clone())
        return scores(self, x)  # type: ignore[arg-type]

    out = whybox.explain_text(clf, SENTENCES, "occlusion")
    fixed = batch.noise_mask().logical_not()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(clf), "scores", spy)
        r = whybox.evaluate(clf, SENTENCES, out, "max_sensitivity", n_samples=3, skip_label_change=False)
    assert bool(torch.isfinite(r.scores).all())
    moved = 0
    for x in seen:
        for row in x:
            i = min(range(len(batch)), key=lambda k: int((row != batch.inputs[k]).sum()))
            assert torch.equal(row[fixed[i]], batch.inputs[i][fixed[i]])
            moved += int((row != batch.inputs[i]).any())
    assert moved > 0
    from whybox.models.blackbox_text import BlackBoxTextAdapter

    ad = BlackBoxTextAdapter(lambda t: torch.ones(len(t), 2))
    e = whybox.explain_text(ad, ["a b"], "occlusion")
    with pytest.raises(whybox.InvalidParameterError, match="a black-box text model reads only which words"):
        whybox.evaluate(ad, ["a b"], e, "max_sensitivity")


def test_a_named_fill_on_a_text_model_is_a_token_and_keeps_the_specials(clf: object, batch: TextBatch) -> None:
    """fill='zero' (or 'mean') zeroed CLS, SEP and the attention-mask column and made the specials a removable
    feature ("not good": 3 features, not 2); 'unk' got the generic fill error. A token name, or 'zero' (zero word
    vectors), is now that token's fill with the rest kept; other names are refused with the choices."""
    e = whybox.explain_text(clf, SENTENCES, "occlusion", target=1)
    for kind in ("unk", "zero"):
        named = whybox.evaluate(clf, SENTENCES, e, "comprehensiveness", target=1, fill=kind)
        given = whybox.evaluate(clf, SENTENCES, e, "comprehensiveness", target=1, fill=batch.fill(kind))
        torch.testing.assert_close(named.scores, given.scores, rtol=0, atol=0)
        assert named.meta["n_features"] == [len(w) for w in e.words]  # type: ignore[attr-defined]
    with pytest.raises(whybox.InvalidParameterError, match=r"fill='mean' on a text model would also rewrite CLS"):
        whybox.evaluate(clf, SENTENCES, e, "comprehensiveness", target=1, fill="mean")


def test_eraser_on_texts_ranks_a_perturbation_method_s_words_as_explain_text_shows_them(clf: object) -> None:
    """A perturbation method copies a word's value onto each of its tokens: the metric summed the copies, so a word
    of two tokens ranked as twice its value (above the word explain_text shows first). Now the metric equals ERASER
    by hand over the words ranked by out.words, for perturbation (mean of copies) and gradient (sum) methods alike."""
    texts = ["playing the story was great", "it was not a good film but the acting was fun"]
    batch = clf.encode(texts)  # type: ignore[attr-defined]
    for method in ("feature_ablation", "occlusion", "saliency"):
        out = whybox.explain_text(clf, texts, method, target=1)
        # token values whose sum over a word is the value out.words shows for it
        tok = torch.zeros(batch.special_mask.shape, dtype=F64)
        for r, words in enumerate(out.words):  # type: ignore[attr-defined]
            positions: dict[int, list[int]] = {}
            for i, w in enumerate(batch.word_ids[r]):
                if w is not None and not bool(batch.special_mask[r, i]):
                    positions.setdefault(w, []).append(i)
            for (_, value), idx in zip(words, positions.values(), strict=True):
                tok[r, idx] = value / len(idx)
        want = _eraser_by_hand(clf, batch, tok, words=True, keep=False, target=1)
        got = whybox.evaluate(clf, texts, out, "comprehensiveness", target=1)
        torch.testing.assert_close(got.scores, want, rtol=0, atol=1e-9, msg=method)


@pytest.mark.parametrize("name", ["sparseness", "complexity"])
def test_sparseness_of_a_text_does_not_change_with_its_batch(clf: object, name: str) -> None:
    """Sparseness took the Gini over every element of (B, T, D + 1), pads and mask channel included: "not good"
    scored 0.80 alone and 0.93 beside a longer text. On texts it now reads the words (one value each)."""
    texts = ["not good", "it was not a good film but the acting was fun"]
    both = whybox.explain_text(clf, texts, "integrated_gradients", target=1, n_steps=16)
    alone = whybox.explain_text(clf, texts[:1], "integrated_gradients", target=1, n_steps=16)
    b = whybox.evaluate(clf, texts, both, name)
    a = whybox.evaluate(clf, texts[:1], alone, name)
    assert float(b.scores[0]) == pytest.approx(float(a.scores[0]), abs=1e-9)
    if name == "sparseness":  # the Gini of each word's sum of |a| (the specials are no word: left out)
        one = clf.encode(texts[:1])  # type: ignore[attr-defined]
        mag = alone.explanation.attributions[0].abs().sum(-1).to(F64)  # type: ignore[attr-defined]
        words: dict[int, float] = {}
        for i, w in enumerate(one.word_ids[0]):
            if w is not None and not bool(one.special_mask[0, i]):
                words[w] = words.get(w, 0.0) + float(mag[i])
        v = torch.sort(torch.tensor(list(words.values()), dtype=F64)).values
        n = v.numel()
        gini = float(((2 * torch.arange(1, n + 1, dtype=F64) - n - 1) * v).sum() / (n * v.sum()))
        assert float(a.scores[0]) == pytest.approx(gini, abs=1e-9)
