"""ROAR, RemOve And Retrain (Hooker et al., NeurIPS 2019), as a job on a small bundled data set and model.

For each method and fraction t, the top-t pixels of every training and test image (ranked by that method's
attribution, seeded ties) are replaced by the per-channel training-set mean, the same architecture is retrained
from scratch, and its accuracy on the modified test set is recorded; a random ranking is the baseline. A method
whose removal makes accuracy drop faster than random removal found pixels the task needs. ``keep=True`` gives
the KAR variant (keep the top-t, replace the rest).

Cost: (methods + 1) x fractions x ``n_retrain`` trainings, plus one explanation of every image per method. The
defaults use the scikit-learn digits (:func:`whybox.data.load_digits`, 1347 training and 450 test images) and
:class:`whybox.data.DigitsCNN` with its training recipe (Adam, one-cycle schedule peaking at 0.01, batch 64).

References
----------
Hooker, Erhan, Kindermans & Kim, "A Benchmark for Interpretability Methods in Deep Neural Networks", NeurIPS 2019.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from whybox.errors import InvalidInputError, InvalidParameterError, check_bool
from whybox.masking.engine import MaskingEngine
from whybox.metrics.base import check_float, check_int, check_map_shape, derive_generator, feature_values, tie_order
from whybox.models.adapter import adapt
from whybox.models.inputs import python_numbers
from whybox.models.targets import Target

__all__ = ["RoarResult", "remove_top", "roar"]

_RANDOM_KEY = 5_000_011
_TRAIN_KEY = 5_000_023
RANDOM = "random"


@dataclass
class RoarResult:
    """Accuracy after removal and retraining.

    Attributes
    ----------
    fractions
        The fractions t removed (kept, for KAR).
    accuracy
        ``method -> (F, n_retrain)`` test accuracy of each retrained model; ``"random"`` is the baseline.
    base_accuracy
        ``(n_retrain,)`` accuracy of models trained on the unmodified data (t = 0).
    params
        The job's configuration.
    """

    fractions: list[float]
    accuracy: dict[str, torch.Tensor]
    base_accuracy: torch.Tensor
    params: dict[str, Any] = field(default_factory=dict)

    def mean(self, method: str) -> torch.Tensor:
        """``(F,)`` mean accuracy over the retrains."""
        return self.accuracy[method].mean(1)

    def std(self, method: str) -> torch.Tensor:
        """``(F,)`` standard deviation over the retrains (ddof 1; 0 with a single retrain)."""
        a = self.accuracy[method]
        return a.std(1, unbiased=True) if a.shape[1] > 1 else torch.zeros(a.shape[0], dtype=a.dtype)

    def gap(self, method: str) -> torch.Tensor:
        """``(F,)`` random-baseline accuracy minus the method's (mean over retrains): larger = a faster drop."""
        return self.mean(RANDOM) - self.mean(method)

    def table(self) -> str:
        """A plain-text table: accuracy mean +- std per method and fraction."""
        head = "method".ljust(24) + "".join(f"t={t:<10g}" for t in self.fractions)
        lines = [head]
        for m in self.accuracy:
            cells = "".join(f"{mu:.3f}+-{sd:.3f} " for mu, sd in zip(self.mean(m), self.std(m), strict=True))
            lines.append(m.ljust(24) + cells)
        return "\n".join(lines)


def remove_top(
    x: torch.Tensor, ranking: torch.Tensor, fraction: float, fill: torch.Tensor, *, keep: bool = False
) -> torch.Tensor:
    """Replace the top ``floor(fraction * N)`` pixels of each image (``ranking`` ``(B, N)``, most relevant
    first) by ``fill`` (broadcast to ``x``); with ``keep`` replace all the others instead.

    Shapes
    ------
    x ``(B, C, H, W)``, ranking ``(B, H * W)`` -> ``(B, C, H, W)``.
    """
    b, _, h, w = x.shape
    n = h * w
    count = math.floor(fraction * n + 1e-9)
    ranks = torch.empty_like(ranking)
    ranks.scatter_(1, ranking, torch.arange(n, device=ranking.device).expand(b, n).contiguous())
    top = (ranks < count).view(b, 1, h, w)
    removed = ~top if keep else top
    return torch.where(removed, torch.broadcast_to(fill, x.shape), x)


def _fit(
    model_fn: Callable[[], nn.Module], x: torch.Tensor, y: torch.Tensor, *, epochs: int, seed: int, batch_size: int
) -> nn.Module:
    """Train a fresh model with the digits recipe's trainer, seeded; global RNG state restored."""
    from whybox.data.digits import fit_classifier

    return fit_classifier(
        model_fn,
        x,
        y,
        epochs=epochs,
        batch_size=batch_size,
        init_seed=seed,
        generator=derive_generator(seed, _TRAIN_KEY),
        lr=1e-2,
    )


def _fresh_models(model_fn: Any) -> Callable[[], nn.Module]:
    """``model_fn`` checked to build a new ``nn.Module`` at every call: a model instance (``model_fn=net``) or a
    function returning one existing model (``lambda: net``) would be trained in place, each retrain going on from the
    last."""
    if isinstance(model_fn, nn.Module) or not callable(model_fn):
        what = f"a {type(model_fn).__name__} instance" if isinstance(model_fn, nn.Module) else type(model_fn).__name__
        raise InvalidParameterError(
            "model_fn must build a fresh, untrained model at every call (a class such as MyNet, or a function "
            f"returning a new nn.Module); got {what}."
        )
    import weakref

    built: list[weakref.ref[nn.Module]] = []  # weak: the retrained models are freed as the job goes on

    def fresh() -> nn.Module:
        m = model_fn()
        if not isinstance(m, nn.Module):
            raise InvalidParameterError(f"model_fn must return an nn.Module; it returned {type(m).__name__}.")
        built[:] = [r for r in built if r() is not None]
        if any(r() is m for r in built):
            raise InvalidParameterError(
                f"model_fn returned the same {type(m).__name__} twice; it must build a fresh, untrained model at every "
                "call (e.g. model_fn=MyNet, not lambda: net), or every retrain would train that one model further."
            )
        built.append(weakref.ref(m))
        return m

    return fresh


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """Test accuracy, scored through the masking engine (an all-kept mask: the images are already modified)."""
    adapter = adapt(model)
    engine = MaskingEngine(adapter, batch_size=batch_size)
    hits = torch.zeros(len(y), dtype=torch.bool)

    def record(raw: torch.Tensor, rows: torch.Tensor, ks: torch.Tensor) -> None:
        hits[rows.cpu()] = raw.argmax(1).cpu() == y[rows.cpu()]

    keep = torch.ones(len(y), 1, *([1] * (x.ndim - 1)), dtype=torch.bool)
    with adapter.guard("eval"):
        engine.scores(x, keep, fill=x, target=Target(y), on_scores=record)
    return float(hits.to(torch.float64).mean())


def _labels(name: str, y: Any, x: torch.Tensor) -> torch.Tensor:
    """Class labels ``(N,)`` int64 for the images ``x`` (a tensor, an array or a list)."""
    try:
        t = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
    except (TypeError, ValueError, RuntimeError):
        raise InvalidInputError(f"{name} must be class indices, one per image; got {type(y).__name__}.") from None
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool or t.ndim != 1:
        raise InvalidInputError(f"{name} must be integer class indices (N,); got {t.dtype} of shape {tuple(t.shape)}.")
    if t.shape[0] != x.shape[0]:
        images = "x_train" if name == "y_train" else "x_test"
        raise InvalidInputError(f"{name} must hold one label per image of {images} ({x.shape[0]}); got {t.shape[0]}.")
    return t.to(torch.int64)


def roar(
    methods: Mapping[str, str | tuple[torch.Tensor, torch.Tensor]] | Sequence[str],
    *,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    model_fn: Callable[[], nn.Module] | None = None,
    explain_model: nn.Module | None = None,
    explain_params: Mapping[str, Mapping[str, Any]] | None = None,
    fractions: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
    n_retrain: int = 5,
    epochs: int = 40,
    keep: bool = False,
    seed: int = 0,
    batch_size: int = 64,
    progress: Callable[[str], None] | None = None,
) -> RoarResult:
    """Run ROAR (or KAR with ``keep=True``) and return the accuracy curves.

    Parameters
    ----------
    methods
        Explainer names (each explains every train and test image on ``explain_model`` for its true label), or a
        mapping ``name -> method name | (train attributions, test attributions)`` with precomputed maps
        ``(N, 1 or C, H, W)``. The random baseline is always added as ``"random"``.
    data
        ``(x_train, y_train, x_test, y_test)`` images ``(N, C, H, W)``; default the bundled digits.
    model_fn
        Builds a fresh, untrained model; default :class:`whybox.data.DigitsCNN`.
    explain_model
        The trained model to explain; default :func:`whybox.data.digits_cnn` (only needed for method names; with your
        own ``data=`` it must be given).
    explain_params
        ``method label or name -> options`` for :func:`whybox.explain`; a key naming no method is refused.
    fractions, n_retrain, epochs
        Fractions t (0.1 ... 0.9), retrains per point (5, as the paper) and training epochs per retrain (40).
    keep
        KAR: keep the top-t and replace the rest.
    seed
        Seeds the random rankings, the tie rule, the data order and the initialisation of every retrain
        (retrain r uses ``seed + r``).
    progress
        Optional callback receiving one line per finished training.
    """
    n_retrain = check_int("n_retrain", n_retrain)
    seed = check_int("seed", seed, 0)
    keep = check_bool("keep", keep)
    epochs = check_int("epochs", epochs)
    batch_size = check_int("batch_size", batch_size)
    fractions = python_numbers(fractions)  # a NumPy array or a tensor of shares, NumPy scalars in a list
    if isinstance(fractions, (int, float)) and not isinstance(fractions, bool):
        fractions = [fractions]  # one share
    if isinstance(fractions, (str, bytes)) or not isinstance(fractions, Iterable):
        raise InvalidParameterError(f"fractions must be shares in [0, 1], e.g. (0.1, 0.5, 0.9); got {fractions!r}.")
    fr = [check_float("fractions", t, 0.0, 1.0) for t in fractions]
    if not fr:
        raise InvalidParameterError("fractions must hold at least one share in [0, 1].")
    if data is None:
        from whybox.data import load_digits

        x_tr, y_tr = load_digits("train")
        x_te, y_te = load_digits("test")
    else:
        if not isinstance(data, (tuple, list)) or len(data) != 4:
            got = f"{len(data)} items" if isinstance(data, (tuple, list)) else type(data).__name__
            raise InvalidParameterError(f"data must be (x_train, y_train, x_test, y_test); got {got}.")
        x_tr, y_tr, x_te, y_te = data
    images = []
    for name, arr in (("x_train", x_tr), ("x_test", x_te)):
        if isinstance(arr, np.ndarray) and arr.dtype.kind in "biuf":  # the labels may be arrays: the images too
            arr = torch.from_numpy(np.ascontiguousarray(arr))
        if not isinstance(arr, torch.Tensor):
            raise InvalidInputError(
                f"{name} must be a torch.Tensor (or a numeric NumPy array) of images (N, C, H, W); got "
                f"{type(arr).__name__}."
            )
        if arr.ndim != 4:
            raise InvalidInputError(f"{name} must be images (N, C, H, W); got shape {tuple(arr.shape)}.")
        if arr.shape[0] == 0:
            raise InvalidInputError(
                f"{name} holds no images (shape {tuple(arr.shape)}); ROAR trains and tests on both."
            )
        bad = ~torch.isfinite(arr.reshape(arr.shape[0], -1)).all(1) if arr.is_floating_point() else None
        if bad is not None and bool(bad.any()):
            raise InvalidInputError(
                f"{name} contains non-finite values (NaN or inf) in {int(bad.sum())} of {arr.shape[0]} images (first: "
                f"{bad.nonzero().flatten()[:5].tolist()}); clean or drop them before training on them."
            )
        images.append(arr)
    x_tr, x_te = images
    if x_te.shape[1:] != x_tr.shape[1:]:
        raise InvalidInputError(
            f"x_test must hold images like x_train's, {tuple(x_tr.shape[1:])}; got {tuple(x_te.shape[1:])} (one model "
            "is trained on the first and tested on the second)."
        )
    y_tr, y_te = _labels("y_train", y_tr, x_tr), _labels("y_test", y_te, x_te)
    if model_fn is None:
        from whybox.data import DigitsCNN

        model_fn = DigitsCNN
    model_fn = _fresh_models(model_fn)
    with torch.random.fork_rng(devices=[]):
        probe = model_fn()  # the models' dtype: the images are trained and tested in it (float64 or uint8 data)
    dtype = next((p.dtype for p in probe.parameters() if p.is_floating_point()), torch.float32)
    x_tr, x_te = x_tr.to(dtype), x_te.to(dtype)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        n_classes = probe.eval()(x_tr[:1]).shape[-1]  # the classes a model of model_fn scores
    del probe
    for name, y in (("y_train", y_tr), ("y_test", y_te)):
        out_of_range = (y < 0) | (y >= n_classes)
        if bool(out_of_range.any()):
            i = int(out_of_range.nonzero()[0, 0])
            raise InvalidInputError(
                f"{name} must hold class indices in [0, {n_classes - 1}] (the model_fn's models score {n_classes} "
                f"classes); got {int(y[i])} at position {i}. Map your labels to 0..{n_classes - 1}, or give a "
                "model_fn with as many outputs as classes."
            )
    spec: dict[str, str | tuple[torch.Tensor, torch.Tensor]] = (
        dict(methods)
        if isinstance(methods, Mapping)
        else {m: m for m in ([methods] if isinstance(methods, str) else methods)}
    )
    if RANDOM in spec:
        raise InvalidParameterError("'random' is the built-in baseline; give your methods other names.")
    options = dict(explain_params or {})
    known = set(spec) | {m for m in spec.values() if isinstance(m, str)}
    unused = sorted(k for k in options if k not in known)
    if unused:  # a typo or another method: its options would be ignored
        raise InvalidParameterError(
            f"explain_params has options for {', '.join(map(repr, unused))}, which names none of the methods "
            f"({', '.join(map(repr, sorted(known)))}); key them by a method's name or its label in methods."
        )
    rankings: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, m in spec.items():
        if isinstance(m, str):
            import whybox

            if explain_model is None:
                if data is not None:  # the bundled digits CNN explains the bundled digits only
                    raise InvalidParameterError(
                        f"methods[{name!r}] = {m!r} explains your data= on explain_model, which is not given (the "
                        "default, the bundled digits CNN, reads only the bundled digits); pass explain_model= (your "
                        "trained model), or precomputed maps (train attributions, test attributions)."
                    )
                from whybox.data import digits_cnn

                explain_model = digits_cnn()
            opts = dict(options.get(name, options.get(m, {})))  # by its label, else by the method's name
            a_tr = whybox.explain(explain_model, x_tr, m, target=y_tr, **opts).attributions
            a_te = whybox.explain(explain_model, x_te, m, target=y_te, **opts).attributions
        else:
            if not (isinstance(m, (tuple, list)) and len(m) == 2):
                raise InvalidParameterError(
                    f"methods[{name!r}] must be a method name or a pair (train attributions, test attributions); "
                    f"got {type(m).__name__}."
                )
            a_tr, a_te = (torch.as_tensor(v) for v in m)
            for part, a, xs in (("train", a_tr, x_tr), ("test", a_te, x_te)):
                try:
                    check_map_shape(a, xs)
                except InvalidInputError as exc:
                    raise InvalidInputError(f"methods[{name!r}]'s {part} attributions: {exc}") from None
        for part, a in (("train", a_tr), ("test", a_te)):
            bad = ~torch.isfinite(a.reshape(a.shape[0], -1)).all(1)
            if bool(bad.any()):  # no ranking: the tie rule alone would order them, reported as the method's curve
                raise InvalidInputError(
                    f"methods[{name!r}]'s {part} attributions are not finite (NaN or inf) for {int(bad.sum())} of "
                    f"{a.shape[0]} images (first: {bad.nonzero().flatten()[:5].tolist()}), so they rank no pixels; "
                    "recompute them, or leave the method out."
                )
        rankings[name] = (  # one tie rule for both splits: an image ranks its tied pixels alike in either
            tie_order(feature_values(a_tr, x_tr), seed),
            tie_order(feature_values(a_te, x_te), seed),
        )
    n_pix = x_tr.shape[-2] * x_tr.shape[-1]
    rand = [
        torch.stack(
            [torch.randperm(n_pix, generator=derive_generator(seed, _RANDOM_KEY, part, i)) for i in range(xs.shape[0])]
        )
        for part, xs in enumerate((x_tr, x_te))
    ]
    rankings[RANDOM] = (rand[0], rand[1])
    fill = x_tr.mean(dim=(0, 2, 3), keepdim=True)  # per-channel training-set mean

    base = []
    for r in range(n_retrain):
        model = _fit(model_fn, x_tr, y_tr, epochs=epochs, seed=seed + r, batch_size=batch_size)
        base.append(_accuracy(model, x_te, y_te, batch_size=256))
        if progress is not None:
            progress(f"base retrain {r}: accuracy {base[-1]:.3f}")
    acc: dict[str, torch.Tensor] = {}
    for name, (rk_tr, rk_te) in rankings.items():
        out = torch.empty(len(fr), n_retrain, dtype=torch.float64)
        for i, t in enumerate(fr):
            xt = remove_top(x_tr, rk_tr, t, fill, keep=keep)
            xe = remove_top(x_te, rk_te, t, fill, keep=keep)
            for r in range(n_retrain):
                model = _fit(model_fn, xt, y_tr, epochs=epochs, seed=seed + r, batch_size=batch_size)
                out[i, r] = _accuracy(model, xe, y_te, batch_size=256)
                if progress is not None:
                    progress(f"{name} t={t:g} retrain {r}: accuracy {out[i, r]:.3f}")
        acc[name] = out
    params = {
        "methods": list(spec),
        "fractions": fr,
        "n_retrain": n_retrain,
        "epochs": epochs,
        "keep": keep,
        "seed": seed,
        "batch_size": batch_size,
        "fill": "channel_mean",
    }
    return RoarResult(fractions=fr, accuracy=acc, base_accuracy=torch.tensor(base, dtype=torch.float64), params=params)
