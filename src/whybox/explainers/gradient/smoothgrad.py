"""SmoothGrad (Smilkov et al. 2017), SmoothGrad-squared (Hooker et al. 2019) and VarGrad (Adebayo et al. 2018)."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch

from whybox.errors import InvalidParameterError, did_you_mean
from whybox.explainers.base import GradientExplainer
from whybox.masking.engine import MaskingEngine
from whybox.models.targets import Target, TargetLike
from whybox.registry import EXPLAINERS

__all__ = ["SmoothGrad"]

VARIANTS = ("mean", "square", "var")
BASES = ("gradient", "input_x_gradient")


@EXPLAINERS.register("smoothgrad")
class SmoothGrad(GradientExplainer):
    """Average a base attribution E over noisy copies x + eps_j, eps_j ~ N(0, sigma^2 I).

    Parameters
    ----------
    n_samples
        Noisy copies per row (50, as the paper).
    noise_level
        sigma as a fraction of each row's range (max x - min x); 0.15 by default. A model of several inputs
        (``adapt(model, input_shapes=...)``): of each input's own range, so each input's noise is on its scale
        (``meta["sigma"]`` then ``(B, n_inputs)``).
    sigma
        Absolute sigma (overrides ``noise_level``; captum's ``stdevs``).
    variant
        ``"mean"`` (SmoothGrad, signed), ``"square"`` (SG^2 = mean E^2) or ``"var"`` (VarGrad, the
        population variance of E, ddof 0).
    base
        ``"gradient"`` (signed) or ``"input_x_gradient"``.
    noise_mask
        Where the noise lands: a bool (or 0/1) tensor broadcastable to the inputs ``(B, *S)`` (one per row) or to
        one input ``S``; ``None``: everywhere. With ``noise_level``, sigma is that fraction of the range of each
        row's elements under the mask. :func:`~whybox.models.text.explain_text` and generation attribution set it
        to the ordinary tokens' word vectors, so an attention mask or a special token never moves.

    Notes
    -----
    Sample k's noise comes from a generator seeded with ``(seed, k)`` and is shared by every row, drawn as one
    flat stream in a multiple of 16 values (torch draws normals in blocks of 16, so a shorter draw is a prefix of
    a longer one): a row's result depends neither on its batch neighbours nor on ``batch_size``, nor on padding
    after it (a text padded in a batch gets the noise it gets alone); global RNGs are untouched.

    Shapes
    ------
    inputs ``(B, *S)`` -> attributions ``(B, *S)``; n_samples forwards and backwards per row (+1 forward
    for the target when it is not given).
    """

    def __init__(
        self,
        model: Any,
        *,
        n_samples: int = 50,
        noise_level: float = 0.15,
        sigma: float | None = None,
        variant: str = "mean",
        base: str = "gradient",
        noise_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise InvalidParameterError(f"n_samples must be an int >= 1; got {n_samples!r}.")
        if (
            isinstance(noise_level, bool)
            or not isinstance(noise_level, (int, float))
            or not 0 <= noise_level < math.inf
        ):
            raise InvalidParameterError(f"noise_level must be a finite number >= 0; got {noise_level!r}.")
        if sigma is not None and (
            isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 <= sigma < math.inf
        ):
            raise InvalidParameterError(f"sigma must be a finite number >= 0 or None; got {sigma!r}.")
        if variant not in VARIANTS:
            raise InvalidParameterError(
                f"variant must be one of {VARIANTS}; got {variant!r}.{did_you_mean(variant, VARIANTS)}"
            )
        if base not in BASES:
            raise InvalidParameterError(f"base must be one of {BASES}; got {base!r}.{did_you_mean(base, BASES)}")
        self.n_samples = n_samples
        self.noise_level = float(noise_level)
        self.sigma = sigma
        if noise_mask is not None and not isinstance(noise_mask, torch.Tensor):
            raise InvalidParameterError(
                f"noise_mask must be a tensor broadcastable to the inputs (True where noise lands) or None; got "
                f"{type(noise_mask).__name__}."
            )
        self.variant = variant
        self.base = base
        self.noise_mask = noise_mask

    def _noise_mask(self, x: torch.Tensor) -> torch.Tensor | None:
        """The mask as ``x.shape`` in ``x``'s dtype (1 where noise lands), or ``None`` for everywhere."""
        m = self.noise_mask
        if m is None:
            return None
        shape = tuple(x.shape)
        try:
            ok = torch.broadcast_shapes(tuple(m.shape), shape) == shape
        except RuntimeError:
            ok = False
        if not ok or m.is_complex():
            raise InvalidParameterError(
                f"noise_mask must be broadcastable to the inputs {shape} (one mask per row) or to one input "
                f"{shape[1:]}; got shape {tuple(m.shape)}. Pass a bool tensor that is True where noise lands."
            )
        return m.to(x.device).ne(0).to(x.dtype).expand(shape)

    def _explain(
        self, x: torch.Tensor, target: TargetLike, engine: MaskingEngine, n_backward: list[int]
    ) -> tuple[torch.Tensor, Target, dict[str, Any]]:
        b, n = x.shape[0], self.n_samples
        tgt = self._resolve(target, x, engine)
        where = self._noise_mask(x)
        flat = x.reshape(b, -1)
        if self.sigma is not None:
            sig = torch.full((b,), float(self.sigma), dtype=x.dtype, device=x.device)
        elif where is None:
            sig = self.noise_level * (flat.amax(1) - flat.amin(1))
        else:  # the range of the elements the noise lands on (0 for a row where it lands nowhere)
            on = where.reshape(b, -1) > 0
            hi = flat.masked_fill(~on, -torch.inf).amax(1)
            lo = flat.masked_fill(~on, torch.inf).amin(1)
            sig = torch.where(on.any(1), self.noise_level * (hi - lo), torch.zeros_like(hi))
        shape = (-1, *([1] * (x.ndim - 1)))
        scale = sig.view(shape)  # the noise's standard deviation, per row (broadcast over its elements)
        packing = getattr(self.adapter, "packing", None)
        if self.sigma is None and packing is not None and x.ndim == 2:
            # a model of several inputs: each input's noise from its own range (an image in [0, 1] beside metadata
            # in the thousands would otherwise get noise on the metadata's scale)
            on_all = (where > 0) if where is not None else torch.ones_like(x, dtype=torch.bool)
            per, cols = [], []
            for part, on in zip(x.split(packing.sizes, 1), on_all.split(packing.sizes, 1), strict=True):
                hi = part.masked_fill(~on, -torch.inf).amax(1)
                lo = part.masked_fill(~on, torch.inf).amin(1)
                s_in = torch.where(on.any(1), self.noise_level * (hi - lo), torch.zeros_like(hi))
                per.append(s_in)
                cols.append(s_in[:, None].expand(-1, part.shape[1]))
            sig, scale = torch.stack(per, 1), torch.cat(cols, 1)
        base_seed = int(self.generator().initial_seed())
        numel = math.prod(x.shape[1:])
        size = max(16, -(-numel // 16) * 16)  # torch draws normals in blocks of 16: a prefix of a longer draw
        noise: dict[int, torch.Tensor] = {}
        next_k = 0
        s1 = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
        s2 = torch.zeros_like(s1)
        # sample-major order (sample k, row b): draw eps_k once, in order, and use it for every row
        total = n * b
        for s in range(0, total, self.batch_size):
            idx = torch.arange(s, min(s + self.batch_size, total))
            ks, rows = idx // b, idx % b
            for k in [k for k in noise if k < int(ks[0])]:
                del noise[k]
            while next_k <= int(ks[-1]):  # sample k's noise from its own generator, seeded by (seed, k)
                key = hashlib.blake2b(f"{base_seed}:{next_k}".encode(), digest_size=4).digest()
                gen = torch.Generator().manual_seed(int.from_bytes(key, "little"))  # (torch seeds with 32 bits)
                flat_eps = torch.randn(size, generator=gen, dtype=torch.float32)[:numel]
                noise[next_k] = flat_eps.view(x.shape[1:]).to(x.device, x.dtype)
                next_k += 1
            eps = torch.stack([noise[k] for k in ks.tolist()])
            rows = rows.to(x.device)
            if where is not None:
                eps = eps * where[rows]
            pts = x[rows] + scale[rows] * eps
            g, _, _ = self._grads(pts, rows, tgt, engine, n_backward)
            e = (pts * g if self.base == "input_x_gradient" else g).to(torch.float64)
            s1.index_add_(0, rows, e)
            s2.index_add_(0, rows, e * e)
        mean = s1 / n
        if self.variant == "mean":
            out = mean
        elif self.variant == "square":
            out = s2 / n
        else:
            out = (s2 / n - mean * mean).clamp_min(0)
        return out.to(x.dtype), tgt, {"sigma": sig.cpu()}
