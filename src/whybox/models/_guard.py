"""Leave the user's model exactly as it came: modes, requires_grad, grads, hooks, global RNG."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from whybox.errors import InvalidParameterError, did_you_mean

__all__ = ["MODES", "preserved"]

MODES = ("eval", "as_is")
_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks_with_kwargs",
)


@contextmanager
def preserved(model: nn.Module, mode: str = "eval") -> Iterator[None]:
    """Run a block with the model in ``mode`` and its parameters frozen, then restore everything.

    Restored on every exit path (errors and ``KeyboardInterrupt`` included): each module's
    ``training`` flag, each parameter's ``requires_grad`` and ``.grad``, the set of registered
    module hooks (any hook added inside the block and left behind is removed), buffers such as
    BatchNorm running statistics (with ``mode="as_is"``, where a training-mode module may update them)
    and torch's global CPU/CUDA RNG state (a buffer a forward replaces, ``self.calls = self.calls + 1``, is put
    back too). Parameters are frozen inside the block so that explainers take gradients with respect to inputs or
    activations only and never touch weight gradients. Blocks on one model run one at a time (a re-entrant lock
    per model, see :func:`_model_lock`): another thread's call on it waits.
    """
    if mode not in MODES:
        raise InvalidParameterError(f"mode must be one of {MODES}; got {mode!r}.{did_you_mean(mode, MODES)}")
    modules = list(model.modules())  # one walk over the model for the lock and the state (this runs on every call)
    with _model_lock(model, modules):
        yield from _preserved(model, mode, modules)


_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


@contextmanager
def _model_lock(model: nn.Module, modules: list[nn.Module] | None = None) -> Iterator[None]:
    """Hold ``model``'s lock for the block: whybox's calls on one model run one at a time.

    Two threads explaining one model (a web service) each froze it and set it to eval mode on entry and restored
    what they had found on exit: the second found the first's frozen, eval-mode model and left it so (training
    stopped updating it), the first's exit switched train mode back on under the second's passes (Dropout in its
    results), and each one's layer taps recorded the other's forward passes. A re-entrant lock per model: calls on
    other models run alongside, and a call made from inside a call (a callable target, a model's forward) goes
    on in the same thread.

    The lock is taken on every submodule, not the model alone: two models sharing a backbone (two heads, a compiled
    or DataParallel wrapper and the module itself) would otherwise each record and restore the state of the shared
    modules under the other's call (the backbone left frozen in eval mode). The locks are taken in one global order
    (by ``id``), so two calls never wait on each other in a cycle. ``modules``: ``list(model.modules())``, where
    the caller has it."""
    with _LOCKS_LOCK:
        locks = []
        for m in sorted({id(m): m for m in (model.modules() if modules is None else modules)}.values(), key=id):
            lock = _LOCKS.get(m)
            if lock is None:
                lock = _LOCKS[m] = threading.RLock()
            locks.append(lock)
    held = 0  # acquired one by one and released in reverse order on every exit path (no ExitStack: every call)
    try:
        for lock in locks:
            lock.acquire()
            held += 1
        yield
    finally:
        for lock in reversed(locks[:held]):
            lock.release()


_CAPTURE_MARK = "_output_capturing_hooks_installed"  # transformers >= 5 (see _preserved)
_MISSING = object()


def _preserved(model: nn.Module, mode: str, modules: list[nn.Module]) -> Iterator[None]:
    training = [m.training for m in modules]
    seen: set[int] = set()  # model.parameters(), read from the modules walked already (the same order, no repeats)
    params = [
        p
        for m in modules
        for p in m._parameters.values()
        if p is not None and not (id(p) in seen or seen.add(id(p)))  # type: ignore[func-returns-value]
    ]
    requires = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    # every hook registration takes the next id of one global counter: ids at or above this mark were
    # added inside the block, and only they are removed on exit
    first_hook_id = RemovableHandle.next_id
    # transformers (>= 5) installs its output-capturing hooks (attentions, hidden states) at the first forward that
    # asks for them and marks the module; the hooks are removed below, so the mark goes back to what it was too
    # (left set, transformers would never install them again: the model would return no attentions)
    marks = [(m, m.__dict__.get(_CAPTURE_MARK, _MISSING)) for m in modules]
    # buffers (BatchNorm running statistics) only change when modules run in training mode
    # (a forward may also put a new tensor in a buffer's place, self.calls = self.calls + 1: the old one goes back)
    buffers = (
        [(m, name, b, b.detach().clone()) for m in modules for name, b in m._buffers.items() if b is not None]
        if mode == "as_is"
        else []
    )
    with GLOBAL_RNG_LOCK:
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        if mode == "eval":
            for m, flag in zip(modules, training, strict=True):
                if flag:
                    m.training = False
        for p, req in zip(params, requires, strict=True):
            if req:
                p.requires_grad_(False)
        _rnn_gradients_through_cudnn(modules)
        yield
    finally:
        for m, flag in zip(modules, training, strict=True):
            if m.training != flag:
                m.training = flag
        for p, req, g in zip(params, requires, grads, strict=True):
            if p.requires_grad != req:
                p.requires_grad_(req)
            if p.grad is not g:
                p.grad = g
        for m, mark in marks:
            if m.__dict__.get(_CAPTURE_MARK, _MISSING) is not mark:
                if mark is _MISSING:
                    m.__dict__.pop(_CAPTURE_MARK, None)
                else:
                    m.__dict__[_CAPTURE_MARK] = mark
        if RemovableHandle.next_id != first_hook_id:
            for m in modules:
                for a in _HOOK_DICTS:
                    d = m.__dict__.get(a)
                    if d:
                        for k in [k for k in d if isinstance(k, int) and k >= first_hook_id]:
                            del d[k]
        with torch.no_grad():
            for m, name, b, saved in buffers:
                if m._buffers.get(name) is not b:
                    m._buffers[name] = b
                b.copy_(saved)
        with GLOBAL_RNG_LOCK:
            torch.set_rng_state(cpu_rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)


def _rnn_gradients_through_cudnn(modules: list[nn.Module]) -> None:
    """Hooks (removed with the block's others) that let gradients through each eval-mode recurrent layer on a CUDA
    device: cuDNN's RNN backward runs in training mode only ("cudnn RNN backward can only be called in training
    mode"), so every gradient method failed on a GRU or LSTM on the GPU. While gradients are taken, the layer runs in
    training mode with its between-layer dropout set to 0 for that forward: the eval-mode function, through cuDNN's
    training path. Both are the layer's own attributes, put back after its forward (also when it raises) and under
    the model's lock, so no process-wide switch changes (cuDNN's is global: threads and nested calls left it off).
    Passes without gradients (the perturbation methods' scoring) are untouched, and so is a layer whose weights are
    not on a CUDA device (no hooks: nothing to do there)."""
    for m in modules:
        if not isinstance(m, nn.RNNBase) or m.training:
            continue
        if not any(p.is_cuda for p in m.parameters(recurse=False)):  # cuDNN runs it only where its weights are
            continue
        saved: list[float] = []

        def before(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], saved: list[float] = saved) -> None:
            x = args[0] if args else kwargs.get("input")
            x = x.data if isinstance(x, nn.utils.rnn.PackedSequence) else x
            if torch.is_grad_enabled() and isinstance(x, torch.Tensor) and x.is_cuda:
                saved.append(float(getattr(mod, "dropout", 0.0)))
                setattr(mod, "dropout", 0.0)  # noqa: B010 - mypy reads a module's attribute as a Tensor
                mod.training = True

        def after(mod: nn.Module, args: tuple[Any, ...], out: Any, saved: list[float] = saved) -> None:
            if saved:
                setattr(mod, "dropout", saved.pop())  # noqa: B010
                mod.training = False

        m.register_forward_pre_hook(before, with_kwargs=True)
        m.register_forward_hook(after, always_call=True)


#: held while whybox sets and reads torch's process-wide generators (a seed, a draw, the guard's restore): another
#: whybox call's restore on another model cannot land between a seed and its draws (randomization's re-initialised
#: layers took other weights when it did). Code outside whybox drawing from the global generators in another thread
#: is not held back: see the README (the global generators are process-wide).
GLOBAL_RNG_LOCK = threading.RLock()


def seed_global_rngs(seed: int, device: torch.device | None) -> None:
    """Seed the CPU generator (and ``device``'s, a CUDA one) from ``seed`` inside a guarded block, whose exit
    restores them: under ``mode="as_is"`` a model's stochastic layers (Dropout in training mode) draw from them, so
    the call's ``seed`` decides its result, as everywhere else."""
    with GLOBAL_RNG_LOCK:
        torch.default_generator.manual_seed(seed)
        if device is not None and device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)


def has_train_mode_batchnorm(model: nn.Module) -> bool:
    """True when a BatchNorm in training mode couples the rows of a batch."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules())


_INSTANCE_LOCKS: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()
_INSTANCE_LOCKS_LOCK = threading.Lock()
_UNHASHABLE_LOCK = threading.RLock()  # objects that cannot key a dict (a subclass defining __eq__ only) share one


def instance_lock(owner: Any) -> threading.RLock:
    """A re-entrant lock per explainer (or metric) object: one object shared by threads runs one call at a time, so
    the state a call keeps on it (the seed drawn for ``seed=None``, recorded in meta; a metric's resolved score
    space) is its own."""
    with _INSTANCE_LOCKS_LOCK:
        try:
            lock = _INSTANCE_LOCKS.get(owner)
            if lock is None:
                lock = _INSTANCE_LOCKS[owner] = threading.RLock()
        except TypeError:  # unhashable
            return _UNHASHABLE_LOCK
        return lock


_CALLS = threading.local()  # depth of whybox calls on this thread (a metric's re-explanations are inner calls)


@contextmanager
def public_call() -> Iterator[None]:
    """Marks an explain or evaluate call, so that a warning about the model is given once, by the outermost call."""
    _CALLS.depth = getattr(_CALLS, "depth", 0) + 1
    if _CALLS.depth == 1:
        _CALLS.warned = set()  # the models warned about in this outermost call
    try:
        yield
    finally:
        _CALLS.depth -= 1


def _user_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside whybox (the user's call), counted from the caller of warn."""
    import sys

    frame: Any = sys._getframe(2)
    level = 2
    while frame is not None and str(frame.f_globals.get("__name__", "")).split(".")[0] == "whybox":
        frame, level = frame.f_back, level + 1
    return level


def warn_batch_statistics(model: Any, batch_size: int, what: str) -> None:
    """Warn (:class:`~whybox.errors.BatchCouplingWarning`) when ``model`` holds a BatchNorm without running
    statistics and ``batch_size`` > 1: its rows are coupled in eval mode too, so ``what`` is not per row."""
    if batch_size <= 1 or not isinstance(model, nn.Module):
        return
    warned = getattr(_CALLS, "warned", None)
    if warned is not None and id(model) in warned:
        return  # once per outermost call (a metric's re-explanations are inner calls)
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None for m in model.modules()):
        import warnings

        if warned is not None:
            warned.add(id(model))

        from whybox.errors import BatchCouplingWarning

        warnings.warn(
            f"a BatchNorm without running statistics (track_running_stats=False) normalises every forward pass "
            f"with its batch's statistics, in eval mode too, so {what} depend on the rows scored beside each row and "
            "on batch_size; pass batch_size=1 where the model takes one row, or give the BatchNorm running "
            "statistics.",
            BatchCouplingWarning,
            stacklevel=_user_stacklevel(),
        )


def batchnorm_couples_rows(m: nn.Module) -> bool:
    """Whether ``m`` is a BatchNorm that normalises a batch with that batch's statistics as it is now."""
    return isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or m.running_mean is None)
