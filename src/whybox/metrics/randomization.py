"""Sanity checks: model-parameter randomisation (Adebayo et al. 2018) and the random-logit test (Sixt et al. 2020).

References
----------
Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim, "Sanity Checks for Saliency Maps", NeurIPS 2018.
Sixt, Granz & Landgraf, "When Explanations Lie: Why Many Modified BP Attributions Fail", ICML 2020.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from whybox.errors import InvalidInputError, InvalidParameterError, InvalidTargetError, check_bool
from whybox.metrics.base import (
    Context,
    Metric,
    check_choice,
    check_float,
    check_int,
    check_options,
    derive_generator,
    make_explain_fn,
    present_features,
    reads_sequence,
    row_keys,
    spearman,
    text_positions,
)
from whybox.models._guard import GLOBAL_RNG_LOCK
from whybox.models.adapter import FunctionModel, ModelAdapter, TorchAdapter
from whybox.models.targets import Target, class_label_target, resolve_target
from whybox.registry import EXPLAINERS, METRICS

__all__ = ["RandomLogit", "Randomization", "execution_layers", "map_similarities"]

SIMILARITIES = ("spearman_abs", "spearman", "ssim", "hog")
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
_LOGIT_KEY = 4_000_037


# ---------------------------------------------------------------------------------------------- similarities
def _pooled(a: torch.Tensor, b: int, *, absolute: bool = False) -> torch.Tensor:
    """``(B, H, W)`` for image maps (channels summed; ``absolute``: their ``|.|`` summed, Adebayo et al.'s grayscale
    map, so channels of opposite sign do not cancel), ``(B, N)`` otherwise; float64 on the CPU."""
    a = a.detach().to("cpu", torch.float64)
    if absolute:
        a = a.abs()
    if a.ndim == 4:
        return a.sum(1)
    return a.reshape(b, -1) if a.ndim != 3 else a


def _abs_scaled(m: torch.Tensor, clip_percentile: float | None) -> torch.Tensor:
    """``|m|`` clipped at its ``clip_percentile`` (per row) and scaled to [0, 1] (all-zero rows stay zero)."""
    flat = m.reshape(m.shape[0], -1).abs()
    if clip_percentile is not None:
        hi = torch.quantile(flat, clip_percentile / 100.0, dim=1, keepdim=True)
        flat = torch.minimum(flat, hi)
    top = flat.amax(1, keepdim=True)
    flat = flat / torch.where(top > 0, top, torch.ones_like(top))
    return flat.view_as(m)


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    side = min(a.shape)
    win = min(11, side if side % 2 else side - 1)
    if a.ndim != 2 or win < 3:
        return math.nan
    return float(
        structural_similarity(
            a, b, data_range=1.0, gaussian_weights=True, sigma=1.5, win_size=win, use_sample_covariance=False
        )
    )


def _hog(a: np.ndarray, pixels_per_cell: int) -> np.ndarray | None:
    from skimage.feature import hog

    if a.ndim != 2 or min(a.shape) < 3 * pixels_per_cell:
        return None
    return np.asarray(hog(a, pixels_per_cell=(pixels_per_cell, pixels_per_cell), feature_vector=True))


def map_similarities(
    original: torch.Tensor,
    other: torch.Tensor,
    *,
    clip_percentile: float | None = 99.0,
    hog_cell: int = 16,
    which: tuple[str, ...] = SIMILARITIES,
) -> dict[str, torch.Tensor]:
    """Per-row similarities of two attribution batches (METRICS.md, model-parameter randomisation).

    - ``spearman_abs``: Spearman of the channel-summed ``|.|`` maps (``sum_c |a_c|``), clipped at the ``clip_percentile`` and
      scaled to [0, 1];
    - ``spearman``: Spearman of the signed channel-summed maps;
    - ``ssim``: SSIM of the ``|.|`` [0, 1] maps (scikit-image, ``gaussian_weights=True``, ``data_range=1``, window
      up to 11 but no larger than the map); NaN for non-image maps;
    - ``hog``: Spearman of HOG descriptors (``pixels_per_cell=hog_cell``) of the [0, 1] maps; NaN for maps
      smaller than three cells.

    Every entry of ``which`` is ``(B,)`` float64; a constant map gives NaN correlations.
    """
    b = original.shape[0]
    o, r = _pooled(original, b), _pooled(other, b)
    out: dict[str, torch.Tensor] = {}
    if "spearman" in which:
        out["spearman"] = spearman(o.reshape(b, -1), r.reshape(b, -1))
    if not {"spearman_abs", "ssim", "hog"} & set(which):
        return out  # the signed maps alone: no |.| maps (their percentile clip takes a quantile per row)
    oa = _abs_scaled(_pooled(original, b, absolute=True), clip_percentile)
    ra = _abs_scaled(_pooled(other, b, absolute=True), clip_percentile)
    if "spearman_abs" in which:
        out["spearman_abs"] = spearman(oa.reshape(b, -1), ra.reshape(b, -1))
    if "ssim" in which:
        ssim = torch.full((b,), math.nan, dtype=torch.float64)
        for i in range(b if oa.ndim == 3 else 0):
            ssim[i] = _ssim(oa[i].numpy(), ra[i].numpy())
        out["ssim"] = ssim
    if "hog" in which:
        hogs = torch.full((b,), math.nan, dtype=torch.float64)
        for i in range(b if oa.ndim == 3 else 0):
            ho, hr = _hog(oa[i].numpy(), hog_cell), _hog(ra[i].numpy(), hog_cell)
            if ho is not None and hr is not None:
                hogs[i] = spearman(torch.from_numpy(ho)[None], torch.from_numpy(hr)[None])[0]
        out["hog"] = hogs
    return {k: out[k] for k in SIMILARITIES if k in out}  # one order, whichever were asked for


# ---------------------------------------------------------------------------------------------- layers
def execution_layers(
    model: nn.Module, x: torch.Tensor, *, include_norm: bool = False, forward: Any = None
) -> list[tuple[str, nn.Module]]:
    """Modules holding weight tensors of their own, in forward execution order (first call), found by hooks.

    Normalisation layers are left out unless ``include_norm``; modules never called are left out. ``forward``
    (default ``model``) is what is called on ``x``, e.g. an adapter's ``scores`` (which applies its preprocess).
    """
    seen: list[str] = []
    names = {id(m): n for n, m in model.named_modules()}
    handles = []

    def hook(mod: nn.Module, *_: Any) -> None:
        n = names[id(mod)]
        if n not in seen:
            seen.append(n)

    try:
        for _n, m in model.named_modules():
            if any(True for _ in m.parameters(recurse=False)):
                if isinstance(m, _NORMS) and not include_norm:
                    continue
                handles.append(m.register_forward_pre_hook(hook))
        with torch.no_grad():
            (forward or model)(x)
    finally:
        for h in handles:
            h.remove()
    mods = dict(model.named_modules())
    return [(n, mods[n]) for n in seen]


def _reinit(module: nn.Module, seed: int) -> bool:
    """Re-initialise ``module`` with its own ``reset_parameters`` with the CPU generator seeded ``seed + 1`` (Quantus'
    rule, ``torch.manual_seed(seed + 1)``, so the two agree), the global RNG forked and restored; the draws are made on the CPU whatever the module's
    device. False when the module has no such method."""
    if not callable(getattr(module, "reset_parameters", None)):
        return False
    # On another device reset_parameters would draw from that device's generator (other numbers than the CPU's):
    # there it runs on a CPU twin whose values are copied over, so the randomised model is the same everywhere.
    tensors = [*module.parameters(), *module.buffers()]
    on_cpu = all(t.device.type == "cpu" for t in tensors)
    twin = module if on_cpu else copy.deepcopy(module).to("cpu")
    with GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=[]), torch.no_grad():
        # The CPU generator alone (what torch.manual_seed seeds first): torch.manual_seed would also seed every
        # accelerator's generator, which fork_rng(devices=[]) does not restore, and queue a lazy CUDA call with
        # its stack trace on each layer (0.5 ms a call on a machine without CUDA).
        torch.default_generator.manual_seed(seed + 1)
        getattr(twin, "reset_parameters")()  # noqa: B009 - mypy reads a module's attribute as a Tensor
        if not on_cpu:
            for t, u in zip(tensors, [*twin.parameters(), *twin.buffers()], strict=True):
                t.copy_(u)
    return True


# ---------------------------------------------------------------------------------------------- metrics
class _MapComparison(Metric):
    higher_is_better = False

    def __init__(
        self,
        *,
        similarity: str | None = "spearman_abs",
        clip_percentile: float | None = 99.0,
        hog_cell: int = 16,
        similarities: tuple[str, ...] | list[str] = SIMILARITIES,
        explainer: Any = None,
        explainer_params: dict[str, Any] | None = None,
        regions: Any = None,
        pool: str = "sum",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        from whybox.metrics.eraser import _check_pool, check_regions

        #: features to compare the maps over (a text's words; whybox.evaluate on texts gives them): each map is pooled
        #: per feature (``pool``) and compared over the features the row has, so a text's score does not depend on
        #: the pads of its batch
        self.regions = check_regions(regions, "every element")
        self.pool = _check_pool(pool)
        self.similarity = None if similarity is None else check_choice("similarity", similarity, SIMILARITIES)
        if isinstance(similarities, str) or not isinstance(similarities, (tuple, list)):
            raise InvalidParameterError(
                f"similarities must be a list of names from {SIMILARITIES}; got {similarities!r}."
            )
        self.similarities = tuple(check_choice("similarities", v, SIMILARITIES) for v in similarities)
        if self.similarity is not None and self.similarity not in self.similarities:
            self.similarities = (*self.similarities, self.similarity)
        self.clip_percentile = (
            None
            if clip_percentile is None
            else check_float("clip_percentile", clip_percentile, 0.0, 100.0, lo_open=True)
        )
        self.hog_cell = check_int("hog_cell", hog_cell)
        self.explainer = explainer
        self.explainer_params = check_options("explainer_params", explainer_params)

    def _score_similarity(self, attributions: torch.Tensor) -> str:
        """The similarity that gives the scores: ``similarity``, or with ``None`` SSIM for image maps and the signed
        Spearman otherwise. SSIM and HOG compare 2-D maps: asked for on other attributions they are an error (they
        would be NaN for every row)."""
        image = attributions.ndim == 4 and self.regions is None
        if self.similarity is None:
            return "ssim" if image else "spearman"
        if self.similarity in ("ssim", "hog") and not image:
            raise InvalidParameterError(
                f"similarity={self.similarity!r} compares 2-D maps and needs image attributions (B, C, H, W); got "
                f"attributions of shape {tuple(attributions.shape)}. Use similarity='spearman' (signed ranks) or "
                "'spearman_abs' (ranks of |a|)."
            )
        return self.similarity

    @staticmethod
    def _given_map(ctx: Context) -> torch.Tensor:
        """The explanation's map; a channel-less ``(B, H, W)`` map of images as one channel ``(B, 1, H, W)``."""
        a = ctx.attributions
        if a is None:
            raise InvalidParameterError("this metric needs attributions.")
        one_channel = (a.ndim == 3 and ctx.x.ndim == 4) or (ctx.signal and a.ndim == 2 and ctx.x.ndim == 3)
        return a.unsqueeze(1) if one_channel else a  # (B, H, W) of images, (B, L) of signals: one channel

    def _similarities(self, a: torch.Tensor, b: torch.Tensor, score: str, ctx: Context) -> dict[str, torch.Tensor]:
        """Every similarity of ``similarities`` and ``score``; attributions other than images (tabular, tokens) are
        compared as flat vectors, so their SSIM and HOG are NaN. A channel-pooled explanation ``(B, 1, H, W)`` is
        compared with the new maps pooled alike (summed over channels), as max_sensitivity does. With ``regions``,
        each row's pooled feature values over the features it has."""
        which = self.similarities if score in self.similarities else (*self.similarities, score)
        if self.regions is not None:
            from whybox.metrics.eraser import pool_attributions, resolve_regions

            groups = resolve_regions(self.regions, ctx.x, signal=ctx.signal, sequence=reads_sequence(ctx))
            pa = pool_attributions(a, groups, ctx.x, pool=self.pool, signal=ctx.signal).cpu()
            pb = pool_attributions(b, groups, ctx.x, pool=self.pool, signal=ctx.signal).cpu()
            present = present_features(ctx, groups).cpu()  # a text's words, not its specials and pads
            cp, cell = self.clip_percentile, self.hog_cell
            rows = [
                map_similarities(pa[i : i + 1, own], pb[i : i + 1, own], clip_percentile=cp, hog_cell=cell, which=which)
                for i, own in enumerate(present)
            ]
            return {k: torch.cat([r[k] for r in rows]) for k in rows[0]}
        pooled_layout = a.ndim == 4 or (ctx.signal and a.ndim == 3)  # images, 1-D signals (B, 1, L)
        if pooled_layout and b.ndim == a.ndim and a.shape[1] == 1 and b.shape[1] > 1:
            b = b.sum(1, keepdim=True)
        elif reads_sequence(ctx) and b.ndim == 3 and a[0].numel() == b.shape[1] != b[0].numel():
            b = b.sum(2).reshape(a.shape)  # one value per time step of a sequence (B, T), to_map()'s: pooled alike
        if a[0].numel() != b[0].numel():
            raise InvalidInputError(
                f"the explainer returned maps of shape {tuple(b.shape)} but the explanation has shape "
                f"{tuple(a.shape)}; pass the explanation as the explainer gives it (or explainer= the method that made it)."
            )
        if a.ndim != 4:
            a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
        return map_similarities(a, b, clip_percentile=self.clip_percentile, hog_cell=self.hog_cell, which=which)


@METRICS.register("randomization")
class Randomization(_MapComparison):
    """Model-parameter randomisation test (Adebayo et al. 2018), on a deep copy: the user's model is never touched.

    Layers are the modules holding weight tensors, in forward execution order (recorded by hooks; norm layers
    only with ``include_norm``). ``order="cascading"`` randomises from the top (logits) down, one more layer per
    step; ``"independent"`` one layer at a time with the rest intact. Each layer is re-initialised by its own
    ``reset_parameters`` under ``torch.manual_seed(seed + 1)`` (Quantus' ``MPRT`` rule; the global RNG is
    restored); layers without it are skipped and listed in ``meta["skipped_layers"]``. After each step the
    explanation's method (or ``explainer=``) is re-run on the copy for the same target and compared with the
    original map by every similarity of :func:`map_similarities`.

    Scores: ``similarity`` (default ``"spearman_abs"``) averaged over the steps (``reduce="mean"``) or at the
    last step (``reduce="last"``: fully randomised for cascading). Lower is better: a faithful method
    decorrelates. Curves: one ``(B, L)`` per similarity computed (``similarities``, default all four),
    ``meta["layers"]`` the layer names in step order.
    """

    reads_clean = False  # it compares maps of the randomised copies

    def __init__(
        self,
        *,
        order: str = "cascading",
        include_norm: bool = False,
        reduce: str = "mean",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.order = check_choice("order", order, ("cascading", "independent"))
        self.include_norm = check_bool("include_norm", include_norm)
        self.reduce = check_choice("reduce", reduce, ("mean", "last"))

    def _compute(self, ctx: Context) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]:
        if ctx.attributions is None or ctx.target is None:
            raise InvalidParameterError("randomization needs attributions and a model.")
        if not isinstance(ctx.adapter, TorchAdapter):
            what = type(getattr(ctx.adapter, "model", ctx.adapter)).__name__  # the user's model, not the wrapper
            other = (
                "a regressor has no other class, so neither sanity check applies; stability (the method's seeds) "
                "and max_sensitivity (small input noise) still measure the explanation"
                if getattr(ctx.adapter, "outputs_values", False)
                else "For other models use random_logit (explanations of other classes) as the sanity check"
            )
            raise InvalidParameterError(
                f"randomization re-initialises the layers of a torch model; got a {what} model. {other}."
            )
        given = self._given_map(ctx)
        score = self._score_similarity(given)
        source = getattr(ctx.adapter, "model", None)
        fn, name = make_explain_fn(
            self.explainer,
            ctx.explanation,
            self.explainer_params,
            ctx.passes,
            source=source if isinstance(source, torch.nn.Module) else None,
            origin=ctx.adapter,  # the step structure of a causal LM's rows: read with the weights that made them
        )
        work = copy.deepcopy(ctx.adapter)  # the user's model is never modified
        for m in work.model.modules():  # a copied cuDNN RNN's weights are no longer one block: compacted again
            if isinstance(m, nn.RNNBase):  # (else cuDNN warns and compacts them at every call); no-op on the CPU
                m.flatten_parameters()
        with work.guard(self.mode):
            layers = execution_layers(work.model, ctx.x[:1], include_norm=self.include_norm, forward=work.scores)
        ctx.passes["n_forward"] += 1  # the run on one row that finds the layers in execution order
        if not layers:
            raise InvalidParameterError(
                "the model has no layer with weights to randomise"
                + (
                    " (a function: pass the torch.nn.Module itself, or use random_logit as the sanity check)."
                    if isinstance(work.model, FunctionModel)
                    else "."
                )
            )
        steps = list(reversed(layers))
        original_state = copy.deepcopy(work.model.state_dict()) if self.order == "independent" else None
        sims: dict[str, list[torch.Tensor]] = {k: [] for k in self.similarities}
        done, skipped = [], []
        for lname, module in steps:
            if original_state is not None:
                work.model.load_state_dict(original_state)
            if not _reinit(module, self.seed):
                skipped.append(lname)
                continue
            done.append(lname)
            with work.guard(self.mode):
                a = fn(work, ctx.x, ctx.target, None).attributions
            for k, v in self._similarities(given, a, score, ctx).items():
                sims[k].append(v)
        if not done:
            raise InvalidParameterError(f"no layer could be re-initialised (none has reset_parameters): {skipped}.")
        curves = {k: torch.stack(v, 1) for k, v in sims.items()}
        sel = curves[score]
        scores = sel[:, -1] if self.reduce == "last" else _nanmean(sel)
        return scores, curves, {"layers": done, "skipped_layers": skipped, "explainer": name}


def _nanmean(t: torch.Tensor) -> torch.Tensor:
    ok = ~torch.isnan(t)
    n = ok.sum(1)
    s = torch.where(ok, t, torch.zeros_like(t)).sum(1)
    return torch.where(n > 0, s / n.clamp_min(1), torch.full_like(s, math.nan))


@METRICS.register("random_logit")
class RandomLogit(_MapComparison):
    """Random-logit test (Sixt et al. 2020): similarity of the map for class c and the map for a class c' drawn
    uniformly (row ``i`` from ``(seed, i)``) among the other K - 1 classes.

    ``other_class`` fixes c' instead of drawing it: an int or one class per row, each different from its row's
    target (e.g. the runner-up class, or another library's draws to compare with it); then the model's clean
    scores are not needed, and their forward pass is not run when the target is known.

    Scores: ``similarity`` (default ``None``: ``"ssim"``, the 2-D SSIM of the ``|.|`` [0, 1] maps, for images, and
    ``"spearman"``, the signed maps' rank correlation, for tabular and token attributions, where SSIM is undefined;
    ``"spearman"``, ``"spearman_abs"``, ``"ssim"`` and ``"hog"`` as :func:`map_similarities`; ``meta["similarity"]``
    says which). Lower is better: a class-sensitive method
    gives different maps. Curves: none; ``meta`` holds every similarity ``(B,)`` and ``"other_class"`` ``(B,)``.
    """

    def __init__(self, *, similarity: str | None = None, other_class: Any = None, **kwargs: Any) -> None:
        super().__init__(similarity=similarity, **kwargs)
        self.other_class = other_class

    def _reads_clean(self) -> bool:
        return self.other_class is None  # the draw needs the number of classes; given ones are range-checked later

    def _other(
        self, target: torch.Tensor, clean: torch.Tensor | None, x: torch.Tensor, adapter: ModelAdapter | None = None
    ) -> torch.Tensor:
        """``(B,)`` int64: the class each row's map is compared with, for the targets ``(B,)`` (CPU); a drawn
        class is keyed by the row's inputs ``x`` (:func:`row_keys`), not its place in the batch."""
        b = target.shape[0]
        if self.other_class is not None:
            try:  # the checks of any target (ints, one per row), then the range where it meets the model's scores
                given = self.other_class if adapter is None else class_label_target(adapter, self.other_class)
                other = resolve_target(given, None, batch=b).index
            except InvalidTargetError as exc:
                raise InvalidTargetError(f"other_class: {exc}") from None
            if callable(self.other_class) and not isinstance(self.other_class, torch.Tensor):
                raise InvalidParameterError(
                    "other_class must be an int or one int class index per row, not a callable."
                )
            same = (other == target).nonzero().flatten().tolist()
            if same:
                raise InvalidParameterError(
                    f"other_class must differ from the target; rows {same[:10]} have other_class == target "
                    f"({int(other[same[0]])}). Pick another class for them."
                )
            return other.clone()
        if clean is None:
            raise InvalidParameterError("random_logit needs the model's scores to draw the other class.")
        k = clean.shape[1]
        if k < 2:
            raise InvalidParameterError(
                f"random_logit compares the explanation with that of another class, so it needs a model with at least "
                f"2 classes; this one has {k} output (a regressor, a single logit, one reference embedding)."
            )
        keys = row_keys(x, text_positions(adapter, x))  # keyed by the sample (a text's tokens, not its pads)
        offs = torch.tensor(
            [
                int(torch.randint(0, k - 1, (1,), generator=derive_generator(self.seed, _LOGIT_KEY, keys[i])))
                for i in range(b)
            ]
        )
        return (target + 1 + offs) % k

    def _compute(self, ctx: Context) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]:
        if ctx.attributions is None or ctx.target is None or ctx.adapter is None:
            raise InvalidParameterError("random_logit needs attributions and a model.")
        if ctx.target.fn is not None:
            raise InvalidParameterError("random_logit needs class targets, not a callable target.")
        given = self._given_map(ctx)
        score = self._score_similarity(given)
        method = self.explainer if isinstance(self.explainer, str) else getattr(ctx.explanation, "method", None)
        if isinstance(method, str) and getattr(EXPLAINERS.get(method), "class_agnostic", False):
            # the map ignores the target: comparing it with another class's says nothing (TRANSFORMERS.md §1)
            nan = torch.full((ctx.x.shape[0],), math.nan, dtype=torch.float64)
            return (
                nan,
                {},
                {"skipped": f"{method!r} is class-agnostic: random_logit does not apply", "explainer": method},
            )
        other = self._other(ctx.target.index.cpu(), ctx.clean, ctx.x, ctx.adapter)
        fn, name = make_explain_fn(self.explainer, ctx.explanation, self.explainer_params, ctx.passes)
        try:
            a = fn(ctx.adapter, ctx.x, Target(other), None).attributions
        except InvalidTargetError as exc:
            if self.other_class is None:
                raise
            raise InvalidTargetError(f"other_class: {exc}") from None
        sims = self._similarities(given, a, score, ctx)
        meta: dict[str, Any] = {"other_class": other, "explainer": name, "similarity": score, **sims}
        return sims[score], {}, meta
