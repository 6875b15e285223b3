"""Sparse autoencoders (dictionary learning) on activations: model, training, metrics, feature readouts.

The model (spec TRANSFORMERS.md §6, notation of Bricken et al. 2023 and Gao et al. 2024):
``x̄ = x − b_d``; ``z = W_e x̄ + b_e``; ``f = σ(z)``; ``x̂ = W_d f + b_d``, with σ = ReLU (trained with an L1
penalty) or TopK (keep the k largest ``z``, ReLU them, zero the rest; trained with normalised MSE + α·AuxK).
Decoder columns ``d_i = W_d[:, i]`` have unit norm. Pure torch: the language-model plumbing (which layer,
which tokens) lives elsewhere; here activations are rows ``(N, d_in)``.

References
----------
Bricken et al. 2023, "Towards Monosemanticity"; Cunningham et al. 2023, "Sparse Autoencoders Find Highly
Interpretable Features in Language Models"; Gao et al. 2024, "Scaling and evaluating sparse autoencoders"
(and openai/sparse_autoencoder).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from whybox.errors import InvalidInputError, InvalidParameterError, NotDifferentiableError, did_you_mean

__all__ = [
    "ACTIVATIONS",
    "FeatureAttribution",
    "SAEConfig",
    "SAELogEntry",
    "SAETrainingResult",
    "SparseAutoencoder",
    "TopActivations",
    "feature_attribution",
    "geometric_median",
    "sae_metrics",
    "top_activating",
    "train_sae",
]

ACTIVATIONS = ("topk", "relu")
_MEDIAN_SAMPLE = 4096  # rows used for the geometric-median initialisation of b_d
_CHUNK = 4096  # rows per forward pass in the metrics and top-activation scans


# ---------------------------------------------------------------------------------------------- validation
def _check_int(name: str, value: Any, lo: int, hi: int | None = None, fix: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        rng = f"an int >= {lo}" if hi is None else f"an int in [{lo}, {hi}]"
        raise InvalidParameterError(f"{name} must be {rng}; got {value!r}.{' ' + fix if fix else ''}")
    return value


def _check_float(name: str, value: Any, *, positive: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        rng = "> 0" if positive else ">= 0"
        raise InvalidParameterError(f"{name} must be a finite number {rng}; got {value!r}.")
    return float(value)


def _check_rows(x: Any, d_in: int, name: str, *, device: torch.device | None = None) -> Tensor:
    """``x`` as a finite floating ``(N, d_in)`` tensor with N >= 1 (on ``device`` when given), else raise."""
    if not isinstance(x, Tensor):
        raise InvalidInputError(f"{name} must be a torch.Tensor of shape (N, {d_in}); got {type(x).__name__}.")
    if x.ndim != 2 or x.shape[1] != d_in:
        raise InvalidInputError(
            f"{name} must have shape (N, d_in) with d_in = {d_in}; got shape {tuple(x.shape)}. Pass activations "
            "of the layer the SAE reads, flattened to rows ((B, T, D) -> (B*T, D))."
        )
    if x.shape[0] == 0:
        raise InvalidInputError(f"{name} must have at least one row; got shape {tuple(x.shape)}.")
    if not x.is_floating_point():
        raise InvalidInputError(f"{name} must be a floating-point tensor; got dtype {x.dtype}. Cast it with .float().")
    if device is not None and x.device != device:
        raise InvalidInputError(
            f"{name} is on {x.device} but the SAE is on {device}; move one of them with .to(...) first."
        )
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        raise InvalidInputError(
            f"{name} must be finite; got {int(bad.sum())} non-finite value(s) (NaN or inf). Drop or repair those "
            "rows first."
        )
    return x


def _check_sae(sae: Any) -> SparseAutoencoder:
    if isinstance(sae, SAETrainingResult):
        raise InvalidParameterError(
            "sae must be a SparseAutoencoder; got the SAETrainingResult train_sae() returns. Pass its .model "
            "(result.model)."
        )
    if not isinstance(sae, SparseAutoencoder):
        raise InvalidParameterError(
            f"sae must be a SparseAutoencoder; got {type(sae).__name__}. Train one with train_sae() and pass its "
            ".model."
        )
    return sae


# ---------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class SAEConfig:
    """Hyper-parameters of a sparse autoencoder and its training run; checked on construction.

    Parameters
    ----------
    d_in
        Width of the activations.
    d_sae
        Number of latents (dictionary size); the expansion factor is ``d_sae / d_in``.
    activation
        ``"topk"`` (Gao et al. 2024; default) or ``"relu"`` (Bricken et al. 2023, with an L1 penalty).
    k
        Active latents per row for TopK, in ``[1, d_sae]``.
    l1
        λ of the ReLU penalty ``λ Σ_i f_i ‖d_i‖`` (``‖d_i‖ = 1`` while ``normalize_decoder``).
    aux_k
        Dead latents that reconstruct the residual in the TopK AuxK loss; ``None`` means ``min(2 k, d_sae)``.
    aux_alpha
        α, the weight of the AuxK loss (Gao: 1/32); 0 turns it off.
    lr
        Adam learning rate.
    batch_size
        Rows a step (tensor input; an iterable of batches sets its own).
    steps
        Optimiser steps (fewer if an iterable of batches runs out first).
    dead_after
        Steps without firing after which a latent counts as dead (for AuxK and the logged ``n_dead``).
    log_every
        A history entry every this many steps (and at the last one); each costs one device sync.
    seed
        Seeds the private generator of the initialisation, the b_d sample and the batch order.
    tied_init
        Initialise ``W_e = W_dᵀ`` (Gao et al.); otherwise ``W_e`` uniform in ``±1/√d_in``.
    normalize_decoder
        Keep the decoder columns at unit norm (parallel gradient removed before a step, renormalised after).
    """

    d_in: int
    d_sae: int
    activation: str = "topk"
    k: int = 32
    l1: float = 1e-3
    aux_k: int | None = None
    aux_alpha: float = 1 / 32
    lr: float = 1e-3
    batch_size: int = 1024
    steps: int = 2000
    dead_after: int = 200
    log_every: int = 50
    seed: int = 0
    tied_init: bool = True
    normalize_decoder: bool = True

    def __post_init__(self) -> None:
        _check_int("d_in", self.d_in, 1)
        _check_int("d_sae", self.d_sae, 1)
        if self.activation not in ACTIVATIONS:
            raise InvalidParameterError(
                f"activation must be one of {ACTIVATIONS}; got {self.activation!r}.{did_you_mean(self.activation, ACTIVATIONS)}"
            )
        if self.activation == "topk":
            _check_int("k", self.k, 1, self.d_sae, f"Lower k or raise d_sae (= {self.d_sae}).")
            if self.aux_k is not None:
                _check_int("aux_k", self.aux_k, 1, self.d_sae, f"Lower aux_k or raise d_sae (= {self.d_sae}).")
        _check_float("l1", self.l1, positive=False)
        _check_float("aux_alpha", self.aux_alpha, positive=False)
        _check_float("lr", self.lr, positive=True)
        for name in ("batch_size", "steps", "dead_after", "log_every"):
            _check_int(name, getattr(self, name), 1)
        _check_int("seed", self.seed, 0)
        for name in ("tied_init", "normalize_decoder"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidParameterError(f"{name} must be True or False; got {getattr(self, name)!r}.")

    @property
    def resolved_aux_k(self) -> int:
        """``aux_k``, or its default ``min(2 k, d_sae)``."""
        return self.aux_k if self.aux_k is not None else min(2 * self.k, self.d_sae)


# ---------------------------------------------------------------------------------------------- model
class SparseAutoencoder(nn.Module):
    """``f = σ(W_e (x − b_d) + b_e)``, ``x̂ = W_d f + b_d``; σ is TopK or ReLU as ``config.activation`` says.

    Parameters
    ----------
    config
        The :class:`SAEConfig`; only ``d_in``, ``d_sae``, ``activation``, ``k``, ``tied_init`` and ``seed``
        matter here.
    dtype, device
        Where the parameters live (float32 by default; float64 works).
    generator
        Source of the random initialisation (a CPU generator); ``None`` seeds a private one with
        ``config.seed``. The global RNG is never used.

    Attributes
    ----------
    W_e : (d_sae, d_in)
    b_e : (d_sae,)
    W_d : (d_in, d_sae); column i is the dictionary direction ``d_i`` (unit norm after init)
    b_d : (d_in,); the decoder bias, subtracted before encoding

    Shapes
    ------
    ``encode``: (B, d_in) -> (B, d_sae); ``decode``: (B, d_sae) -> (B, d_in); ``forward``: (B, d_in) ->
    ``(x̂ (B, d_in), f (B, d_sae))``.
    """

    def __init__(
        self,
        config: SAEConfig,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(config, SAEConfig):
            raise InvalidParameterError(f"config must be an SAEConfig; got {type(config).__name__}.")
        self.config = config
        g = generator if generator is not None else torch.Generator().manual_seed(config.seed)
        d_in, d_sae = config.d_in, config.d_sae
        w_d = torch.randn(d_in, d_sae, generator=g, dtype=torch.float64)
        w_d = w_d / w_d.norm(dim=0, keepdim=True).clamp_min(1e-12)
        if config.tied_init:
            w_e = w_d.T.clone()
        else:
            w_e = (torch.rand(d_sae, d_in, generator=g, dtype=torch.float64) * 2 - 1) / math.sqrt(d_in)
        kw: dict[str, Any] = {"dtype": dtype, "device": device}
        self.W_e = nn.Parameter(w_e.to(**kw))
        self.b_e = nn.Parameter(torch.zeros(d_sae, **kw))
        self.W_d = nn.Parameter(w_d.to(**kw))
        self.b_d = nn.Parameter(torch.zeros(d_in, **kw))

    @property
    def d_in(self) -> int:
        return self.config.d_in

    @property
    def d_sae(self) -> int:
        return self.config.d_sae

    def pre_activation(self, x: Tensor) -> Tensor:
        """``z = W_e (x − b_d) + b_e``, (B, d_in) -> (B, d_sae); use it for "why did latent i not fire"."""
        if x.ndim != 2 or x.shape[-1] != self.d_in:
            raise InvalidInputError(f"x must have shape (B, {self.d_in}); got shape {tuple(x.shape)}.")
        if x.dtype != self.W_e.dtype:  # float64 activations of a float64 model into a float32 SAE: read in its dtype
            x = x.to(self.W_e.dtype)
        return (x - self.b_d) @ self.W_e.T + self.b_e

    def activate(self, z: Tensor) -> Tensor:
        """σ(z): ReLU, or TopK (exactly ``k`` kept per row, of which any non-positive become 0)."""
        if self.config.activation == "relu":
            return torch.relu(z)
        vals, idx = z.topk(self.config.k, dim=-1)
        return torch.zeros_like(z).scatter(-1, idx, torch.relu(vals))

    def encode(self, x: Tensor) -> Tensor:
        """Latent activations ``f`` (B, d_sae), all >= 0."""
        return self.activate(self.pre_activation(x))

    def decode(self, f: Tensor) -> Tensor:
        """Reconstruction ``x̂ = W_d f + b_d`` (B, d_in)."""
        d_sae = self.W_d.shape[1]
        if f.ndim != 2 or f.shape[-1] != d_sae:
            raise InvalidInputError(f"f must have shape (B, {d_sae}) (latent activations); got shape {tuple(f.shape)}.")
        if f.dtype != self.W_d.dtype:
            f = f.to(self.W_d.dtype)
        return f @ self.W_d.T + self.b_d

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = self.encode(x)
        return self.decode(f), f


# ---------------------------------------------------------------------------------------------- training
@dataclass(frozen=True)
class SAELogEntry:
    """One logged training step (values of the batch seen at that step, before its update).

    ``recon`` is the TopK loss's normalised MSE ``Σ‖x − x̂‖² / Σ‖x − x̄‖²`` (batch mean x̄), or the ReLU loss's
    ``mean_rows ‖x − x̂‖²``; ``penalty`` is the AuxK nMSE (TopK; 0 while no latent is dead) or the unweighted
    L1 term ``mean_rows Σ_i f_i ‖d_i‖`` (ReLU); ``loss`` is the optimised total; ``l0`` the mean active latents
    a row; ``n_dead`` the latents that have not fired for ``dead_after`` steps.
    """

    step: int
    loss: float
    recon: float
    penalty: float
    l0: float
    n_dead: int


@dataclass(frozen=True)
class SAETrainingResult:
    """What :func:`train_sae` returns.

    Attributes
    ----------
    model
        The trained :class:`SparseAutoencoder`, in eval mode.
    config
        The configuration it was trained with (``config.seed`` is the seed used).
    history
        One :class:`SAELogEntry` every ``log_every`` steps and at the last step.
    n_steps
        Optimiser steps actually taken.
    steps_since_fired
        (d_sae,) long: steps since each latent last fired, at the end of training.
    """

    model: SparseAutoencoder
    config: SAEConfig
    history: tuple[SAELogEntry, ...]
    n_steps: int
    steps_since_fired: Tensor


def geometric_median(x: Tensor, *, n_iter: int = 20, tol: float = 1e-7) -> Tensor:
    """The point minimising ``Σ_n ‖x_n − y‖`` by Weiszfeld iterations from the mean (computed in float64).

    Parameters
    ----------
    x
        (N, D) points.
    n_iter
        At most this many iterations; stops earlier once a step moves less than ``tol·(1 + ‖y‖)``.
    tol
        Relative stopping tolerance.

    Returns
    -------
    (D,) tensor in ``x``'s dtype and device.
    """
    if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[0] == 0:
        raise InvalidInputError(f"x must be a (N, D) tensor with N >= 1; got {getattr(x, 'shape', type(x))}.")
    _check_int("n_iter", n_iter, 0)
    xd = x.to(torch.float64)
    y = xd.mean(0)
    for _ in range(n_iter):
        w = 1.0 / (xd - y).norm(dim=1).clamp_min(1e-12)
        y_new = (w[:, None] * xd).sum(0) / w.sum()
        moved = float((y_new - y).norm())
        y = y_new
        if moved <= tol * (1.0 + float(y.norm())):
            break
    return y.to(x.dtype)


def _nmse(pred: Tensor, target: Tensor) -> Tensor:
    """``Σ‖target − pred‖² / Σ‖target − mean_rows(target)‖²`` over the batch (Gao et al.'s normalised MSE)."""
    den = (target - target.mean(0)).pow(2).sum().clamp_min(torch.finfo(target.dtype).tiny)
    return (target - pred).pow(2).sum() / den


def _tensor_batches(x: Tensor, batch_size: int, gen: torch.Generator) -> Iterator[Tensor]:
    """Endless shuffled batches of ``x`` (a new permutation each epoch; the incomplete tail is dropped)."""
    n = x.shape[0]
    bs = min(batch_size, n)
    while True:
        perm = torch.randperm(n, generator=gen).to(x.device)
        for s in range(0, n - bs + 1, bs):
            yield x[perm[s : s + bs]]


def _checked_batches(first: Tensor, rest: Iterator[Any], d_in: int, dtype: torch.dtype) -> Iterator[Tensor]:
    yield first
    for i, b in enumerate(rest, start=1):
        yield _check_rows(b, d_in, f"batch {i}", device=first.device).to(dtype)


def train_sae(activations: Tensor | Iterable[Tensor], config: SAEConfig) -> SAETrainingResult:
    """Train a sparse autoencoder on activations with Adam.

    Steps: a private generator seeded with ``config.seed`` draws the initial weights (unit-norm decoder
    columns, ``W_e = W_dᵀ`` when ``tied_init``), then a sample of up to 4096 rows whose geometric median
    (:func:`geometric_median`) initialises ``b_d``, then the batch order. Each step minimises

    - TopK: ``nMSE(x̂, x) + α · nMSE(ê, e)`` with ``e = x − x̂`` (no gradient through it), ``ê = W_d f_aux``
      and ``f_aux`` the ReLU of the top ``aux_k`` pre-activations among dead latents (AuxK, Gao et al. 2024;
      dead = no firing for ``dead_after`` steps; the term is 0 while none is dead);
    - ReLU: ``mean_rows ‖x − x̂‖² + λ · mean_rows Σ_i f_i ‖d_i‖``.

    With ``normalize_decoder``, the gradient component of each decoder column parallel to it is removed before
    the step and the columns are renormalised after it. No resampling of dead latents is done.

    Parameters
    ----------
    activations
        A tensor (N, d_in), shuffled into batches of ``batch_size`` each epoch (``collect_activations``'s result
        stands for its ``.acts``), or an iterable of (B, d_in) tensors used in order (its first batch is also the
        geometric-median sample). The model takes their
        dtype (float32 or float64; other floating types train in float32) and device.
    config
        The :class:`SAEConfig`.

    Returns
    -------
    SAETrainingResult
        The model in eval mode with no ``.grad`` left on its parameters, the loss history and the dead-latent
        counters.

    Raises
    ------
    InvalidInputError
        Activations that are not a floating (N, config.d_in) tensor with finite values (checked per batch for
        an iterable), or an empty iterable.
    InvalidParameterError
        ``config`` is not an :class:`SAEConfig`.
    """
    if not isinstance(config, SAEConfig):
        raise InvalidParameterError(f"config must be an SAEConfig; got {type(config).__name__}.")
    d_in = config.d_in
    own = getattr(activations, "acts", None)
    if isinstance(own, Tensor) and hasattr(activations, "token_refs"):  # collect_activations' result: its rows
        activations = own
    if isinstance(activations, Tensor):
        x = _check_rows(activations, d_in, "activations")
        first = x
    else:
        try:
            it = iter(activations)
        except TypeError:
            raise InvalidInputError(
                "activations must be a (N, d_in) tensor or an iterable of (B, d_in) tensors; got "
                f"{type(activations).__name__}."
            ) from None
        first_b = next(it, None)
        if first_b is None:
            raise InvalidInputError("activations is an empty iterable; pass at least one (B, d_in) batch.")
        first = _check_rows(first_b, d_in, "batch 0")
    dtype = first.dtype if first.dtype in (torch.float32, torch.float64) else torch.float32
    device = first.device

    gen = torch.Generator().manual_seed(config.seed)
    model = SparseAutoencoder(config, dtype=dtype, device=device, generator=gen)
    if isinstance(activations, Tensor):
        sample = first[torch.randperm(first.shape[0], generator=gen)[:_MEDIAN_SAMPLE].to(device)].to(dtype)
        batches: Iterator[Tensor] = (b.to(dtype) for b in _tensor_batches(first, config.batch_size, gen))
    else:
        sample = first[:_MEDIAN_SAMPLE].to(dtype)
        batches = _checked_batches(first.to(dtype), it, d_in, dtype)
    with torch.no_grad():
        model.b_d.copy_(geometric_median(sample).to(dtype))

    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    since_fired = torch.zeros(config.d_sae, dtype=torch.long, device=device)
    topk = config.activation == "topk"
    aux_k = config.resolved_aux_k if topk else 0
    history: list[SAELogEntry] = []
    model.train()
    n_steps = 0
    last: tuple[Tensor, ...] = ()
    # range first, so no batch is drawn past the last step
    for step, xb in zip(range(config.steps), batches, strict=False):
        z = model.pre_activation(xb)
        f = model.activate(z)
        x_hat = model.decode(f)
        dead = since_fired >= config.dead_after
        if topk:
            recon = _nmse(x_hat, xb)
            if config.aux_alpha > 0:
                z_dead = z.masked_fill(~dead, -math.inf)
                vals, idx = z_dead.topk(aux_k, dim=-1)
                f_aux = torch.zeros_like(z).scatter(-1, idx, torch.relu(vals))
                penalty = _nmse(f_aux @ model.W_d.T, (xb - x_hat).detach()) * dead.any()
            else:
                penalty = recon.new_zeros(())
            loss = recon + config.aux_alpha * penalty
        else:
            recon = (xb - x_hat).pow(2).sum(-1).mean()
            penalty = (f * model.W_d.norm(dim=0)).sum(-1).mean()
            loss = recon + config.l1 * penalty
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            if config.normalize_decoder and model.W_d.grad is not None:
                g = model.W_d.grad
                g -= (g * model.W_d).sum(0, keepdim=True) * model.W_d
            opt.step()
            if config.normalize_decoder:
                model.W_d.div_(model.W_d.norm(dim=0, keepdim=True).clamp_min(torch.finfo(dtype).tiny))
            fired = (f > 0).any(0)
            since_fired += 1
            since_fired.masked_fill_(fired, 0)
        n_steps = step + 1
        last = (loss.detach(), recon.detach(), penalty.detach(), (f > 0).sum(-1).to(dtype).mean(), dead.sum())
        if step % config.log_every == 0:
            history.append(_log_entry(step, last))
    if n_steps and (n_steps - 1) % config.log_every != 0:
        history.append(_log_entry(n_steps - 1, last))
    opt.zero_grad(set_to_none=True)  # the last step's gradients are no part of the model (nor its memory)
    model.eval()
    return SAETrainingResult(
        model=model, config=config, history=tuple(history), n_steps=n_steps, steps_since_fired=since_fired
    )


def _log_entry(step: int, vals: tuple[Tensor, ...]) -> SAELogEntry:
    loss, recon, penalty, l0, n_dead = vals
    return SAELogEntry(
        step=step,
        loss=float(loss),
        recon=float(recon),
        penalty=float(penalty),
        l0=float(l0),
        n_dead=int(n_dead),
    )


# ---------------------------------------------------------------------------------------------- metrics
def _param_of(sae: SparseAutoencoder) -> Tensor:
    return sae.W_d


@torch.no_grad()
def sae_metrics(sae: SparseAutoencoder, activations: Tensor, *, batch_size: int = _CHUNK) -> dict[str, float]:
    """Reconstruction and sparsity of ``sae`` on ``activations``, accumulated in float64 over chunks.

    Returns
    -------
    dict
        - ``l0``: mean number of active latents a row, ``E[#{i : f_i > 0}]``;
        - ``fve``: fraction of variance explained, ``1 − Σ_n ‖x_n − x̂_n‖² / Σ_n ‖x_n − μ‖²`` with μ the mean
          of these activations (spec §6; not SAELens' per-token legacy formula);
        - ``nmse``: ``1 − fve``, i.e. normalised by the variance around μ (not OpenAI's ``E‖x‖²`` variant);
        - ``mse``: ``mean_n ‖x_n − x̂_n‖²``;
        - ``dead_fraction``: fraction of latents that are 0 on every row of ``activations``.

    Raises
    ------
    InvalidInputError
        Activations not a finite floating (N, d_in) tensor on the SAE's device, or all rows equal (FVE
        undefined).

    Shapes
    ------
    activations: (N, d_in). They are cast to the SAE's dtype before encoding.
    """
    sae = _check_sae(sae)
    p = _param_of(sae)
    x = _check_rows(activations, sae.d_in, "activations", device=p.device)
    _check_int("batch_size", batch_size, 1)
    n = x.shape[0]
    mu = x.to(torch.float64).mean(0)
    sse = x.new_zeros((), dtype=torch.float64)
    sst = x.new_zeros((), dtype=torch.float64)
    active = x.new_zeros((), dtype=torch.float64)
    fired = torch.zeros(sae.d_sae, dtype=torch.bool, device=p.device)
    for s in range(0, n, batch_size):
        xc = x[s : s + batch_size]
        x_hat, f = sae(xc.to(p.dtype))
        xc64 = xc.to(torch.float64)
        sse += (xc64 - x_hat.to(torch.float64)).pow(2).sum()
        sst += (xc64 - mu).pow(2).sum()
        on = f > 0
        active += on.sum()
        fired |= on.any(0)
    if float(sst) == 0.0:
        raise InvalidInputError(
            "activations have zero variance (every row is the same), so FVE is undefined; pass varied rows."
        )
    nmse = float(sse / sst)
    return {
        "l0": float(active) / n,
        "fve": 1.0 - nmse,
        "nmse": nmse,
        "mse": float(sse) / n,
        "dead_fraction": float((~fired).sum()) / sae.d_sae,
    }


@dataclass(frozen=True)
class TopActivations:
    """The rows that activate each latent most (from :func:`top_activating`).

    Attributes
    ----------
    latents
        (L,) long: the latent ids (all of them, or the one asked for).
    values
        (L, k): activations ``f_i`` of the top rows, descending; a 0 means the latent fired on fewer rows.
    indices
        (L, k) long: the row indices into ``activations`` (ties in any order).
    density
        (L,) float: fraction of rows on which each latent is active (``f_i > 0``).
    contexts
        ``contexts[l][j]`` is the context string of row ``indices[l, j]``, or ``None`` when none were given.
    """

    latents: Tensor
    values: Tensor
    indices: Tensor
    density: Tensor
    contexts: list[list[str]] | None


def _density(count: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """``count / n`` divided in float64 (a float16 count overflows past 65,504 rows, a bfloat16 one rounds past
    256), in ``dtype`` when that holds it (float32 for a half-precision SAE)."""
    out = count.to(torch.float64) / max(n, 1)
    return out.to(torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype)


@torch.no_grad()
def top_activating(
    sae: SparseAutoencoder,
    activations: Tensor,
    *,
    k: int = 20,
    contexts: list[str] | None = None,
    latent: int | None = None,
    batch_size: int = _CHUNK,
) -> TopActivations:
    """For each latent (or only ``latent``), the ``k`` rows of ``activations`` on which it is largest.

    Scans in chunks of ``batch_size`` rows, merging each chunk's ``torch.topk`` with the running top ``k``,
    so memory is ``O((batch_size + k) · d_sae)``. ``k`` larger than N is clamped to N.

    Parameters
    ----------
    sae
        The autoencoder.
    activations
        (N, d_in) rows (cast to the SAE's dtype).
    k
        Rows to keep a latent.
    contexts
        Optional N strings (the text around each row's token), returned alongside the indices.
    latent
        One latent id in ``[0, d_sae)``; ``None`` means all.
    batch_size
        Rows a forward pass.

    Raises
    ------
    InvalidInputError, InvalidParameterError
        Bad activations, ``k < 1``, ``latent`` out of range, or ``contexts`` not N strings.

    Shapes
    ------
    activations: (N, d_in) -> values, indices: (L, k) with L = d_sae, or 1 when ``latent`` is given.
    """
    sae = _check_sae(sae)
    p = _param_of(sae)
    x = _check_rows(activations, sae.d_in, "activations", device=p.device)
    n = x.shape[0]
    _check_int("k", k, 1)
    _check_int("batch_size", batch_size, 1)
    if latent is not None:
        _check_int("latent", latent, 0, sae.d_sae - 1, f"The SAE has d_sae = {sae.d_sae} latents.")
    if contexts is not None and (
        not isinstance(contexts, (list, tuple)) or len(contexts) != n or not all(isinstance(c, str) for c in contexts)
    ):
        got = f"{type(contexts).__name__} of length {len(contexts)}" if hasattr(contexts, "__len__") else contexts
        raise InvalidParameterError(f"contexts must be a list of {n} strings, one per activation row; got {got}.")
    k = min(k, n)
    lat = torch.arange(sae.d_sae, device=p.device) if latent is None else torch.tensor([latent], device=p.device)
    best_v = torch.empty(0, lat.numel(), dtype=p.dtype, device=p.device)
    best_i = torch.empty(0, lat.numel(), dtype=torch.long, device=p.device)
    count = torch.zeros(lat.numel(), dtype=torch.long, device=p.device)
    for s in range(0, n, batch_size):
        f = sae.encode(x[s : s + batch_size].to(p.dtype))
        if latent is not None:
            f = f[:, latent : latent + 1]
        count += (f > 0).sum(0)
        rows = torch.arange(s, s + f.shape[0], device=p.device)[:, None].expand_as(f)
        cand_v = torch.cat([best_v, f])
        cand_i = torch.cat([best_i, rows])
        best_v, pos = cand_v.topk(min(k, cand_v.shape[0]), dim=0)
        best_i = cand_i.gather(0, pos)
    values, indices = best_v.T.contiguous(), best_i.T.contiguous()
    ctx = None
    if contexts is not None:
        ctx = [[contexts[j] for j in row] for row in indices.tolist()]
    return TopActivations(
        latents=lat, values=values, indices=indices, density=_density(count, n, p.dtype), contexts=ctx
    )


# ---------------------------------------------------------------------------------------------- attribution
@dataclass(frozen=True)
class FeatureAttribution:
    """Attribution of a scalar readout of the reconstruction to SAE features (:func:`feature_attribution`).

    Attributes
    ----------
    attributions
        (B, d_sae): ``a_i = f_i · (d_i · g)`` with ``g = ∂r/∂x̂`` at ``x̂``.
    features
        (B, d_sae): the latent activations ``f``.
    readout
        (B,): ``r(x̂)``.
    bias
        (B,): ``b_d · g``, the decoder bias's share.
    error
        (B,): ``(x − x̂) · g``, the share of what the SAE fails to reconstruct (the spec's error node).

    For a linear (or affine) readout, ``Σ_i a_i = r(x̂) − r(b_d)`` and ``Σ_i a_i + bias + error = g · x``
    exactly.
    """

    attributions: Tensor
    features: Tensor
    readout: Tensor
    bias: Tensor
    error: Tensor


def feature_attribution(
    sae: SparseAutoencoder, x: Tensor, target: Tensor | Callable[[Tensor], Tensor]
) -> FeatureAttribution:
    """Attribute a scalar readout ``r`` of the reconstruction to each SAE feature: ``a_i = f_i · (d_i · ∇r(x̂))``.

    This is gradient × activation in feature space (spec §6, "attribution to latents"): ``x̂ = Σ_i f_i d_i +
    b_d``, so ``f_i d_i · g`` is feature i's share of the first-order change of ``r`` from ``b_d`` to ``x̂``.
    It is exact (``Σ_i a_i = r(x̂) − r(b_d)``) when ``r`` is affine, e.g. a direction ``w``: ``r(x̂) = w · x̂``,
    ``g = w``; for a non-linear ``r`` it is the first-order (Taylor) share, with ``g`` taken at ``x̂``. The
    features ``f`` are held fixed (no gradient through the encoder), so inactive latents get exactly 0.

    Parameters
    ----------
    sae
        The autoencoder.
    x
        (B, d_in) activations (cast to the SAE's dtype).
    target
        A direction ``w`` of shape (d_in,) or (B, d_in), read out as ``w · x̂`` (a logit-lens or probe
        direction), or a callable mapping ``x̂`` (B, d_in) to (B,) scalars that treats rows independently.

    Returns
    -------
    FeatureAttribution

    Raises
    ------
    InvalidInputError
        Bad ``x``, a direction of the wrong shape or non-finite, or a callable whose output is not (B,).
    NotDifferentiableError
        The callable's output carries no gradient with respect to ``x̂``.

    Shapes
    ------
    x: (B, d_in) -> attributions, features: (B, d_sae); readout, bias, error: (B,).
    """
    sae = _check_sae(sae)
    p = _param_of(sae)
    x = _check_rows(x, sae.d_in, "x", device=p.device).to(p.dtype)
    b = x.shape[0]
    with torch.no_grad():
        f = sae.encode(x)
        x_hat = sae.decode(f)
        b_d = sae.b_d.detach().clone()
        w_d = sae.W_d.detach().clone()
    if isinstance(target, Tensor):
        w = target
        if w.ndim == 1:
            w = w.expand(b, -1)
        if w.shape != (b, sae.d_in):
            raise InvalidInputError(
                f"target direction must have shape ({sae.d_in},) or ({b}, {sae.d_in}); got {tuple(target.shape)}."
            )
        _check_rows(w, sae.d_in, "target direction", device=p.device)
        g = w.to(p.dtype)
        readout = (x_hat * g).sum(-1)
    elif callable(target):
        leaf = x_hat.detach().requires_grad_(True)
        with torch.enable_grad():
            out = target(leaf)
            if not isinstance(out, Tensor) or out.shape != (b,):
                got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise InvalidInputError(f"target(x_hat) must return one scalar a row, shape ({b},); got {got}.")
            if not out.requires_grad:
                raise NotDifferentiableError(
                    "target(x_hat) carries no gradient with respect to x_hat; make the readout a differentiable "
                    "torch function of its input."
                )
            (g,) = torch.autograd.grad(out.sum(), leaf, allow_unused=True)
        if g is None:
            g = torch.zeros_like(leaf)
        readout = out.detach()
    else:
        raise InvalidParameterError(
            f"target must be a direction tensor (d_in,) or (B, d_in), or a callable x_hat -> (B,); got "
            f"{type(target).__name__}."
        )
    g = g.detach()
    return FeatureAttribution(
        attributions=f * (g @ w_d),
        features=f,
        readout=readout,
        bias=g @ b_d,
        error=((x - x_hat) * g).sum(-1),
    )
