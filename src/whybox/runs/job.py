"""Dataset-scale jobs: methods x metrics over a dataset, in units of (shard, method), resumable.

A :class:`Job` is a pure description (methods, metrics, their options, shard size, seed, target rule). The
dataset is cut into fixed shards of ``shard_size`` consecutive samples; a unit is one shard under one method:
explain the shard, then score that explanation with every metric. A unit's result is a deterministic function
of (model, shard, job): every shard runs with the job's seed (each sample's draws are keyed by the sample itself,
so results do not depend on the shard size), its target from the stored
predictions (or labels), and the model runs with a fixed number of intra-op threads. So a run killed and
resumed, or spread over Ray workers, ends with the same rows and the same array bytes as one uninterrupted
local run.

:func:`run_job` drives it: fingerprints, the store, predictions, the plan (only the units not yet committed),
a cost estimate from the first units, a time budget, progress, and the local or Ray backend.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from whybox.api import _options, evaluate, explain
from whybox.errors import InvalidParameterError, LayerError, WhyboxError, did_you_mean
from whybox.models.adapter import (
    FunctionModel,
    ModelAdapter,
    TorchAdapter,
    adapt,
    is_sequence,
    is_signal,
    output_probabilities,
    reads_probabilities,
)
from whybox.models.inputs import is_text_adapter
from whybox.models.layers import resolve_layers
from whybox.models.onnx import OnnxModel
from whybox.models.targets import class_label_target
from whybox.models.text import read_text_fills
from whybox.registry import EXPLAINERS, METRICS
from whybox.runs.store import UNDEFINED, MetricValue, RunStore, SampleResult, UnitResult

__all__ = [
    "Job",
    "RunSummary",
    "Unit",
    "execute_unit",
    "fingerprints",
    "plan_units",
    "run_job",
    "shards",
]

#: Metrics a dataset run cannot compute: they need ground-truth masks the inputs do not carry.
NEEDS_MASKS = ("pointing_game", "energy_pointing_game", "relevance_mass", "relevance_rank")
TARGETS = ("prediction", "label")
_MAX_CURVE_POINTS = 1024
#: what a model or a method may raise on one sample (recorded with its reason; the run goes on): a user's model
#: asserting its inputs' range or looking a key up fails like a ValueError would. Interrupts, exits, memory errors
#: and the rest stop the run.
SAMPLE_ERRORS = (
    WhyboxError,
    RuntimeError,
    ValueError,
    TypeError,
    LookupError,
    ArithmeticError,
    AssertionError,
    AttributeError,
)


@dataclass(frozen=True)
class Job:
    """What to compute.

    Parameters
    ----------
    methods
        Registry names of the explainers (``whybox.methods()``).
    metrics
        Registry names of the metrics (``whybox.metrics()``), each applied to every method's explanation.
        ``randomization`` (the sanity check) and ``stability`` re-run the method with its options.
    method_options, metric_options
        ``{name: {option: value}}``; unknown names and options are refused before any work.
    shard_size
        Samples per unit of work (and per model batch of an explainer call).
    seed
        The seed every shard explains and scores with (a sample's random draws are keyed by the sample, so its
        results equal ``whybox.explain(..., seed=seed)`` on it whatever the shard size, up to float rounding: the
        model sees the sample in a batch of another size, and float32 kernels such as convolutions may round
        differently per batch size (differences around 1e-7, float32's rounding). ``shard_size`` and
        ``batch_size`` are in the config fingerprint, so no stored run mixes results computed at different sizes).
    target
        ``"prediction"`` (explain each sample's predicted class) or ``"label"`` (its true class; needs labels).
    batch_size
        Forward batch of methods and metrics that do not set their own (``None``: 64 rows for a torch model, 4,096
        for a scikit-learn estimator).
    threads
        Torch intra-op threads while a unit runs (fixed so results do not depend on the machine's core count).
    """

    methods: tuple[str, ...]
    metrics: tuple[str, ...] = ("deletion", "insertion")
    method_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    metric_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    shard_size: int = 16
    seed: int = 0
    target: str = "prediction"
    batch_size: int | None = None
    threads: int = 1

    def __post_init__(self) -> None:
        for attr in ("methods", "metrics"):  # one name is a tuple of one (tuple("lime") would be its letters)
            value = getattr(self, attr)
            object.__setattr__(self, attr, (value,) if isinstance(value, str) else tuple(value))
        if not self.methods:
            raise InvalidParameterError("methods must name at least one method; see whybox.methods().")
        for attr in ("methods", "metrics"):
            names = getattr(self, attr)
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:  # its units would share one key: the run could never be complete
                raise InvalidParameterError(
                    f"{attr} names {', '.join(map(repr, twice))} more than once; name each once."
                )
        for name in self.methods:
            EXPLAINERS.get(name)
        for name in self.metrics:
            METRICS.get(name)
            if name in NEEDS_MASKS:
                raise InvalidParameterError(
                    f"metric {name!r} needs ground-truth masks, which dataset runs do not carry; call "
                    "whybox.evaluate(..., masks=...) for it."
                )
        for what, given, known, registry in (
            ("method_options", self.method_options, self.methods, EXPLAINERS),
            ("metric_options", self.metric_options, self.metrics, METRICS),
        ):
            for name, opts in given.items():
                if name not in known:
                    raise InvalidParameterError(
                        f"{what} has options for {name!r}, which is not in this job ({', '.join(known)}); "
                        "add it to the job or remove its options."
                    )
                valid = _options(registry.get(name))
                bad = sorted(k for k in opts if k not in valid)
                if bad:
                    hint = "".join(dict.fromkeys(did_you_mean(b, valid) for b in bad))
                    raise InvalidParameterError(
                        f"{what}[{name!r}] has unknown option(s) {', '.join(map(repr, bad))}.{hint} {name!r} takes: "
                        f"{', '.join(valid)}."
                    )
                if "seed" in opts or "explainer" in opts:
                    raise InvalidParameterError(
                        f"{what}[{name!r}] sets {'seed' if 'seed' in opts else 'explainer'!r}, which the job "
                        "controls (seed: Job.seed; the explainer: the method being scored)."
                    )
        for pname, value in (
            ("shard_size", self.shard_size),
            ("batch_size", self.batch_size),
            ("threads", self.threads),
        ):
            if value is None and pname == "batch_size":
                continue  # each method's and metric's default for the model
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidParameterError(f"{pname} must be a positive integer; got {value!r}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise InvalidParameterError(f"seed must be a non-negative integer; got {self.seed!r}.")
        if self.target not in TARGETS:
            raise InvalidParameterError(
                f"target must be one of {TARGETS}; got {self.target!r}.{did_you_mean(self.target, TARGETS)}"
            )
        try:
            json.dumps(self.config(), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidParameterError(
                f"job options must be JSON values (numbers, strings, booleans, lists); {exc}."
            ) from None

    def config(self) -> dict[str, Any]:
        """The job as JSON-friendly data (what the ``config`` fingerprint hashes)."""
        return {
            "methods": list(self.methods),
            "metrics": list(self.metrics),
            "method_options": {k: dict(v) for k, v in sorted(self.method_options.items())},
            "metric_options": {k: dict(v) for k, v in sorted(self.metric_options.items())},
            "shard_size": self.shard_size,
            "seed": self.seed,
            # every shard runs with the job's seed: a sample's draws and ties are its own, so its results do not
            # depend on the shard size (runs of an earlier scheme, seed + shard, are not resumed with this one)
            "seeding": "per-sample",
            "target": self.target,
            "batch_size": self.batch_size,
            "threads": self.threads,
        }

    def options_for(self, method: str) -> dict[str, Any]:
        """The explainer options of ``method``: the job's, plus batch size and the job's seed (the same for every
        shard: explainers key their draws by sample, so a sample's explanation does not depend on which shard holds
        it)."""
        opts = dict(self.method_options.get(method, {}))
        valid = _options(EXPLAINERS.get(method))
        if "batch_size" in valid:
            opts.setdefault("batch_size", self.batch_size)
        if "seed" in valid:
            opts["seed"] = self.seed
        return opts

    def metric_options_for(self, metric: str) -> dict[str, Any]:
        """The options of ``metric`` (the job's seed for every shard, as :meth:`options_for`)."""
        opts = dict(self.metric_options.get(metric, {}))
        opts.setdefault("batch_size", self.batch_size)
        opts["seed"] = self.seed
        return opts


@dataclass(frozen=True)
class Unit:
    """One unit of work: the samples ``indices`` (one shard) under ``method``."""

    shard: int
    method: str
    indices: tuple[int, ...]


def shards(n: int, shard_size: int) -> list[tuple[int, ...]]:
    """Consecutive, disjoint shards covering ``range(n)``; the last may be shorter."""
    return [tuple(range(s, min(s + shard_size, n))) for s in range(0, n, shard_size)]


def plan_units(n: int, job: Job, done: set[tuple[int, str]] | None = None) -> list[Unit]:
    """The units of ``job`` over ``n`` samples not in ``done``, shard by shard (every method of shard 0 first)."""
    return [
        Unit(s, m, idx)
        for s, idx in enumerate(shards(n, job.shard_size))
        for m in job.methods
        if done is None or (s, m) not in done
    ]


# ---------------------------------------------------------------------------------------------- fingerprints
def _hash_tensor(h: Any, t: torch.Tensor) -> None:
    t = t.detach().to("cpu").contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-d buffers too


#: how deep :func:`_hash_value` follows containers, closures and objects' attributes (a bound on the cost)
_HASH_DEPTH = 4


def _hash_value(h: Any, v: Any, depth: int = 0, seen: set[int] | None = None) -> None:
    """A value's identity for the weights fingerprint: tensors and arrays by value, modules by their weights,
    numbers and strings by ``repr``, containers item by item, a function by its code, constants, defaults and what
    it closes over, a ``functools.partial`` by its function and arguments, an ONNX model by its graph's bytes and
    output, and any other object by its type and
    attributes, ``_HASH_DEPTH`` levels deep (beyond, and for a value seen before, its type alone). Never an
    object's ``repr`` (it may hold a memory address) and never a set's iteration order (it varies by process)."""
    import functools

    seen = set() if seen is None else seen
    if v is None or isinstance(v, (bool, int, float, complex, str, bytes)):
        h.update(repr(v).encode())
        return
    if isinstance(v, torch.Tensor):
        _hash_tensor(h, v)
        return
    if isinstance(v, np.ndarray):
        if v.dtype.kind in "MmUSV":  # dates, durations, strings, raw bytes: by their bytes
            h.update(f"ndarray{v.dtype.str}{v.shape}".encode())
            h.update(np.ascontiguousarray(v).tobytes())
            return
        if v.dtype == object:
            h.update(f"ndarray{v.shape}".encode())
            _hash_value(h, v.tolist(), depth, set())  # a temporary: its id may be a freed one's (not in seen)
        else:
            _hash_tensor(h, torch.from_numpy(np.ascontiguousarray(v)))
        return
    if isinstance(v, np.generic):
        h.update(repr(v.item()).encode())
        return
    if _is_pandas(v):  # a Series, DataFrame or Index by pandas' own row hashes (any dtype); a scalar by its text
        import pandas as pd

        h.update(type(v).__qualname__.encode())
        try:
            rows = pd.util.hash_pandas_object(v, index=True).to_numpy()
        except TypeError:  # a Categorical or extension array, cells pandas cannot hash (lists), a Timestamp
            if getattr(v, "ndim", 0) >= 1:  # every cell (str() would shorten a long one to its ends)
                cells = np.asarray(v, dtype=object).ravel().tolist()
                h.update(f"cells{getattr(v, 'shape', ())}".encode())
                _hash_value(h, [str(c) if _is_pandas(c) else c for c in cells], depth, set())  # a temporary
            else:
                h.update(str(v).encode())
            return
        h.update(f"rows{rows.shape}".encode())
        h.update(np.ascontiguousarray(rows).tobytes())
        h.update(repr([str(c) for c in getattr(v, "columns", [])]).encode())
        return
    import types

    if isinstance(v, (types.ModuleType, type)):  # a module (``import torch`` closed over) or a class: by name
        h.update(
            f"{type(v).__qualname__} {getattr(v, '__module__', '')}.{getattr(v, '__qualname__', v.__name__)}".encode()
        )
        return
    if _plain_value(v):  # their repr holds no memory address; a pattern's may be cut short, so its text
        text = f"{v.pattern!r} {v.flags}" if hasattr(v, "pattern") and hasattr(v, "flags") else repr(v)
        h.update(f"{type(v).__qualname__} {text}".encode())
        return
    if isinstance(v, OnnxModel):  # its graph's bytes (a session's too: its own attributes hold only a file's path)
        h.update(f"OnnxModel {v.fingerprint} output {v.output}".encode())
        return
    h.update(type(v).__qualname__.encode())
    if id(v) in seen or depth >= _HASH_DEPTH:
        return
    seen.add(id(v))
    if isinstance(v, torch.nn.Module):
        _hash_module(h, v)
    elif isinstance(v, (list, tuple)):
        h.update(f"[{len(v)}".encode())
        for item in v:
            _hash_value(h, item, depth + 1, seen)
    elif isinstance(v, dict):
        h.update(f"{{{len(v)}".encode())
        for k, item in v.items():  # insertion order: the same code builds the same order
            _hash_value(h, k, depth + 1, seen)
            _hash_value(h, item, depth + 1, seen)
    elif isinstance(v, (set, frozenset)):
        items = [repr(i) for i in v if i is None or isinstance(i, (bool, int, float, str, bytes))]
        h.update(f"{{{len(v)}{sorted(items)}".encode())
    elif isinstance(v, functools.partial):
        _hash_value(h, v.func, depth + 1, seen)
        _hash_value(h, v.args, depth + 1, seen)
        _hash_value(h, v.keywords, depth + 1, seen)
    elif hasattr(v, "__code__"):  # a Python function
        code = v.__code__
        h.update(str(getattr(v, "__qualname__", "")).encode())
        h.update(code.co_code)
        h.update(_consts_repr(code.co_consts).encode())
        _hash_value(h, getattr(v, "__defaults__", None), depth + 1, seen)
        _hash_value(h, getattr(v, "__kwdefaults__", None), depth + 1, seen)
        for cell in getattr(v, "__closure__", None) or ():
            try:
                content = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            _hash_value(h, content, depth + 1, seen)
        _hash_globals(h, v, depth + 1, seen)
    elif hasattr(v, "__func__") and hasattr(v, "__self__"):  # a bound method: its function and its object
        _hash_value(h, v.__func__, depth + 1, seen)
        _hash_value(h, v.__self__, depth + 1, seen)
    else:
        try:
            attributes = vars(v)
        except TypeError:  # no __dict__ (a C object, __slots__): its type alone
            return
        for k, item in attributes.items():
            h.update(str(k).encode())
            _hash_value(h, item, depth + 1, seen)


def _user_code(fn: Any) -> bool:
    """Whether ``fn`` (a Python function) was written by the user: its file is neither in an installed package
    (site-packages) nor in the standard library."""
    import sysconfig

    file = str(getattr(getattr(fn, "__code__", None), "co_filename", ""))
    if not file or file.startswith("<frozen") or "site-packages" in file or "dist-packages" in file:
        return False
    stdlib = sysconfig.get_paths().get("stdlib", "")
    return not (stdlib and file.startswith(stdlib))


def _global_names(code: Any) -> tuple[set[str], set[str]]:
    """The global names ``code`` and the code nested in it (a lambda, a comprehension) may read, and those it
    writes (``global n; n += 1``: state, not a setting)."""
    import dis

    read, written = set(code.co_names), set()
    for ins in dis.get_instructions(code):
        if ins.opname in ("STORE_GLOBAL", "DELETE_GLOBAL"):
            written.add(str(ins.argval))
    for c in code.co_consts:
        if hasattr(c, "co_names"):
            r, w = _global_names(c)
            read |= r
            written |= w
    return read, written


def _settings_like(v: Any, depth: int = 0) -> bool:
    """Whether a module-level value is a setting or data the run's numbers follow (numbers, strings, arrays,
    tensors, pandas tables, modules, fitted estimators, functions, containers of them, and plain objects holding
    them: a dataclass or namespace of settings), rather than process state (a logger, a lock, a cache of objects, a
    registry), which differs between processes and is left out of the fingerprint. Looked into 4 levels deep."""
    import functools

    if v is None or isinstance(v, (bool, int, float, complex, str, bytes, np.generic, np.ndarray, torch.Tensor)):
        return True
    if isinstance(v, (torch.nn.Module, functools.partial)) or hasattr(v, "__code__"):
        return True
    if _is_pandas(v):
        return True
    if hasattr(v, "fit") and any(callable(getattr(v, n, None)) for n in ("predict", "predict_proba", "transform")):
        return True  # a scikit-learn estimator or Pipeline fitted at import (clf = joblib.load(...))
    if _plain_value(v) or isinstance(v, type):  # a class (np.float32): by its name
        return True
    if depth >= 4:
        return False
    if isinstance(v, (list, tuple, set, frozenset)):
        return all(_settings_like(i, depth + 1) for i in list(v)[:64])
    if isinstance(v, dict):
        return all(_settings_like(k, depth + 1) and _settings_like(i, depth + 1) for k, i in list(v.items())[:64])
    try:
        attributes = vars(v)
    except TypeError:  # a C object without a __dict__ (a lock, a generator)
        return False
    return all(_settings_like(i, depth + 1) for i in list(attributes.values())[:64])


def _plain_value(v: Any) -> bool:
    """A value without a ``__dict__`` that is still a setting, hashed by its text: a torch dtype or device, a path, an
    enum member, a date, a compiled pattern."""
    import datetime
    import decimal
    import enum
    import fractions
    import pathlib
    import re

    return isinstance(v, (torch.dtype, torch.device, np.dtype, pathlib.PurePath, enum.Enum, datetime.date,
                          datetime.time, datetime.timedelta, re.Pattern, range, slice, decimal.Decimal,
                          fractions.Fraction))  # fmt: skip


def _is_pandas(v: Any) -> bool:
    """A pandas value (a table, an index, an array, a timestamp, ...; not a groupby or other view of one)."""
    return type(v).__module__.split(".")[0] == "pandas" and callable(getattr(v, "to_numpy", None))


def _hash_globals(h: Any, fn: Any, depth: int, seen: set[int]) -> None:
    """The module-level settings a user's function reads (``W = np.load(...)`` beside ``def scores(x)``, a ``clf``
    fitted at import, a helper function and the constants it reads), as :func:`_hash_value` hashes them; modules
    and classes by name (a class of the model is hashed by its source where it is one of the model's modules), other
    objects (loggers, locks, caches: process state) by type, and names the code writes (counters) not at all.
    Library functions are known by their code alone."""
    glob = getattr(fn, "__globals__", None)
    if not isinstance(glob, dict) or not _user_code(fn):
        return
    import types

    read, written = _global_names(fn.__code__)
    for name in sorted(read - written):
        if name not in glob:  # a builtin or an attribute name
            continue
        value = glob[name]
        h.update(f"global {name}".encode())
        if isinstance(value, types.ModuleType):
            h.update(value.__name__.encode())
        elif isinstance(value, type):
            h.update(f"{value.__module__}.{value.__qualname__}".encode())
        elif _settings_like(value):
            _hash_value(h, value, 0, seen)  # a setting of its own: followed as deep as a model's settings
        else:
            h.update(type(value).__qualname__.encode())


def _consts_repr(consts: Any) -> str:
    """A code object's constants as text that is the same in every process: a frozenset (``x in {"a", "b"}``
    compiles to one) sorted, since its order follows the process's string hashing; nested code (a lambda inside)
    by its bytecode and constants."""
    if hasattr(consts, "co_code"):
        return f"<code {consts.co_code.hex()} {_consts_repr(consts.co_consts)}>"
    if isinstance(consts, (frozenset, set)):
        return "{" + ", ".join(sorted(_consts_repr(c) for c in consts)) + "}"
    if isinstance(consts, tuple):
        return "(" + ", ".join(_consts_repr(c) for c in consts) + ")"
    return repr(consts)


_LIBRARY_ROOTS = frozenset({"torch", "transformers", "whybox", "torchvision", "timm", "efficientnet_lite_pytorch"})


def _hash_user_code(h: Any, module: torch.nn.Module) -> None:
    """Hash what a user's own module classes are beyond their weights: each class's source, the module-level
    helpers and constants its methods read (:func:`_hash_globals`) and its instances' settings (numbers, strings,
    flags, tuples of normalisation constants, tensors kept outside the buffers, functions: :func:`_hash_value`), so
    that a run does not resume after the model's code or settings changed. Library layers (torch, transformers,
    ...) by their class, their plain settings (a convolution's padding, an activation's slope) and their weights."""
    import inspect

    seen: set[type] = set()
    internals = _module_internals()
    writes: dict[type, set[str]] = {}  # per class, read once (a BERT repeats a dozen layer classes)
    for name, m in module.named_modules():
        cls = type(m)
        if cls.__module__.split(".")[0] in _LIBRARY_ROOTS:  # a library layer: which one, and its plain settings
            h.update(f"{name} {cls.__module__}.{cls.__qualname__}".encode())  # (a Conv2d's padding, a slope, p)
            written = writes.get(cls) or writes.setdefault(cls, _forward_writes(cls))  # (a function model's
            # returns_numpy, learnt at its first call)
            for k, v in sorted(vars(m).items()):
                # (not where it was loaded from: a Hugging Face model's name_or_path is a location, not a setting)
                if (
                    not k.startswith("_")
                    and k != "training"
                    and k not in written
                    and k != "name_or_path"
                    and _plain_setting(v)
                ):
                    h.update(f"{k}={v!r}".encode())
            continue
        if cls not in seen:
            seen.add(cls)
            try:
                h.update(inspect.getsource(cls).encode())
            except (OSError, TypeError):  # defined where its source cannot be read (an interactive session)
                h.update(cls.__qualname__.encode())
            for k, fn in sorted(vars(cls).items()):  # the module-level helpers and constants its methods read
                if hasattr(fn, "__code__"):
                    h.update(f"method {k}".encode())
                    _hash_globals(h, fn, 1, set())
        h.update(name.encode())
        written = writes.get(cls) or writes.setdefault(cls, _forward_writes(cls))
        for k, v in sorted(vars(m).items()):  # (not the train/eval flag: the run reads the model in eval mode)
            # its own settings, private ones too (self._temperature); not torch's bookkeeping (hooks, the
            # parameter and submodule tables), nor what forward writes (a call counter, a cache: process state)
            if k not in internals and k != "training" and k not in written:
                h.update(k.encode())
                _hash_value(h, v)


def _module_internals() -> frozenset[str]:
    """The attribute names ``nn.Module.__init__`` gives every module (its parameter, buffer and submodule tables and
    hook dictionaries): torch's bookkeeping, not a user's setting."""
    return frozenset(vars(torch.nn.Module()))


def _forward_writes(cls: type) -> set[str]:
    """The attribute names a call of the model may assign: those ``cls.forward`` assigns, through its decorators
    (``__wrapped__``), the code nested in it and the methods of ``cls`` it names (``self._positions(x)``), in turn:
    state the model keeps across calls (a counter, a cache), which differs between processes, not a setting."""
    import dis

    names: set[str] = set()
    done: set[int] = set()
    own = cls.__module__.split(".")[0]
    stack: list[Any] = [getattr(cls, "forward", None)]
    while stack:
        fn = stack.pop()
        while hasattr(fn, "__wrapped__"):  # @torch.no_grad(), functools.wraps decorators
            fn = fn.__wrapped__
        root = str(getattr(fn, "__module__", "") or "").split(".")[0]
        if root in _LIBRARY_ROOTS and root != own:
            continue  # torch's own methods a user model calls (self.register_buffer): not its state
        code = getattr(fn, "__code__", None)
        codes = [code] if code is not None else []
        while codes:
            c = codes.pop()
            if id(c) in done:
                continue
            done.add(id(c))
            codes.extend(k for k in c.co_consts if hasattr(k, "co_code"))
            me = c.co_varnames[0] if c.co_argcount else None  # ``self`` (a nested function's first argument is
            # not: its loads of ``self`` are free variables, and count too)
            previous = None
            for ins in dis.get_instructions(c):
                if ins.opname in ("STORE_ATTR", "DELETE_ATTR"):
                    names.add(str(ins.argval))
                # the class's own methods it names on ``self``: calls (self._positions(x)) and callables it hands on
                # (checkpoint(self._body, x)); not another object's attribute of the same name (self.cfg.update),
                # nor a setter forward never names
                on_self = (
                    previous is not None
                    and previous.argval in (me, "self")
                    and previous.opname in ("LOAD_FAST", "LOAD_DEREF", "LOAD_CLOSURE")
                )
                named = on_self and ins.opname in ("LOAD_METHOD", "LOAD_ATTR")
                member = getattr(cls, str(ins.argval), None) if named else None
                if callable(member) and not isinstance(member, type) and ins.argval != "__init__":
                    stack.append(member)
                previous = ins
    return names


def _plain_setting(v: Any) -> bool:
    """A library layer's setting hashed by its ``repr``: a number, a string, a flag or a tuple of them."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return True
    return isinstance(v, tuple) and all(i is None or isinstance(i, (bool, int, float, str)) for i in v)


#: the settings of an adapter that change what the model computes (``adapt(model, preprocess=..., output=...)``)
_ADAPTER_SETTINGS = (
    "kind", "output", "preprocess", "default_layers", "references", "similarity", "scale", "output_names",
    "outputs_values", "method_name", "score_fn", "labels", "probabilities",
)  # fmt: skip


def _hash_module(h: Any, module: torch.nn.Module) -> None:
    """A module's weights: its state dict and the buffers the state dict leaves out (``persistent=False``)."""
    state = module.state_dict()
    for k, v in sorted(state.items()):
        h.update(k.encode())
        _hash_tensor(h, v)
    for k, v in sorted(module.named_buffers()):
        if k not in state:
            h.update(f"buffer {k}".encode())
            _hash_tensor(h, v)


#: Raised when whybox changes what a stored run's options mean or what its results are within one version: a run
#: made before then resumes only with --overwrite (its units would mix two readings). 2: a text's fill=/baseline=
#: read as replace= reads it, the blur fill as scipy's mirror Gaussian on small images, ONNX external data hashed.
#: 3: infidelity's square perturbation sets each square to baseline= (it was zeroed whatever the baseline);
#: mufidelity's regions= draws among every region a row has (regions equal to the fill were left out off texts); a
#: text adapter's attention-mask channel and a black box's text-index column hold 0 in every map (occlusion and
#: feature ablation copied the token's value onto the mask channel).
RESULTS_EPOCH = 3


def fingerprints(
    job: Job,
    model: Any,
    x: torch.Tensor,
    names: Sequence[str],
    labels: torch.Tensor | None,
    data_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, str]:
    """SHA-256 digests of the job configuration, the data (inputs, names, labels) and the model weights, and
    the versions of Python, whybox (with its :data:`RESULTS_EPOCH`), torch and numpy: a run directory resumes only
    when all four match."""
    import whybox

    cfg = hashlib.sha256(json.dumps(job.config(), sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    hd = hashlib.sha256()
    _hash_tensor(hd, x)
    hd.update(json.dumps(list(names)).encode())
    if labels is not None:
        _hash_tensor(hd, labels)
    row_words = getattr(model, "row_words", None)  # a black-box text adapter: the texts its presence rows stand for
    if callable(row_words):
        hd.update(json.dumps(row_words(x)).encode())
    for method, given in sorted((data_options or {}).items()):
        for k, v in sorted(given.items()):
            hd.update(f"{method}.{k}".encode())
            if isinstance(v, torch.Tensor):
                _hash_tensor(hd, v)
            else:
                hd.update(json.dumps(v, default=repr).encode())
    hw = hashlib.sha256()
    module = model.model if isinstance(model, ModelAdapter) else model
    if isinstance(module, torch.nn.Module):
        hw.update(type(module).__qualname__.encode())
        _hash_module(hw, module)
        _hash_user_code(hw, module)
        if isinstance(module, FunctionModel):  # a black-box function: its code and data
            _hash_value(hw, module.fn)  # its code and the data it closes over
    else:  # a scikit-learn estimator: its pickled bytes (hashed, never loaded)
        import pickle

        hw.update(pickle.dumps(module))
    if isinstance(model, ModelAdapter):  # how the adapter reads the model: preprocess, output, kind, layers, ...
        hw.update(f"adapter {type(model).__qualname__}".encode())
        for name in _ADAPTER_SETTINGS:
            if hasattr(model, name):
                hw.update(name.encode())
                _hash_value(hw, getattr(model, name))
    versions = (
        f"python {platform.python_version()}; whybox {whybox.__version__} (results {RESULTS_EPOCH}); "
        f"torch {torch.__version__}; numpy {np.__version__}"
    )
    return {"config": cfg, "data": hd.hexdigest(), "weights": hw.hexdigest(), "versions": versions}


# ---------------------------------------------------------------------------------------------- one unit
@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or repr(exc)
    return f"{type(exc).__name__}: {text}"[:2000]


def _curves(curves: Mapping[str, torch.Tensor], row: int) -> dict[str, list[float]] | None:
    out: dict[str, list[float]] = {}
    for k, v in curves.items():
        if isinstance(v, torch.Tensor) and v.ndim == 2 and v.shape[1] <= _MAX_CURVE_POINTS:
            out[k] = [float(a) if math.isfinite(float(a)) else float("nan") for a in v[row].tolist()]
    if not out:
        return None
    # NaN is not JSON: a curve with an undefined point is dropped rather than stored as text
    return {k: c for k, c in out.items() if all(math.isfinite(a) for a in c)} or None


#: The entry of ``data_options`` that holds options from the data for every metric that takes them (a text
#: dataset's word regions), beside the ``{method: {...}}`` entries.
METRICS_KEY = "*metrics"


def _cut(
    given: Mapping[str, Any], rows: torch.Tensor | slice, n: int, keep: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """``given`` with each tensor of one row per sample (``n`` rows) cut to ``rows``, except those named in ``keep``;
    other values as they are."""
    return {
        k: v[rows] if k not in keep and isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == n else v
        for k, v in given.items()
    }


def _shared(opts: Mapping[str, Any]) -> frozenset[str]:
    """The tensor options of a method that are never cut by sample: Integrated Gradients' k baseline rows, shared by
    every sample (``n_baselines`` > 1), whatever k is."""
    k = opts.get("n_baselines")
    return frozenset({"baseline"}) if isinstance(k, int) and not isinstance(k, bool) and k > 1 else frozenset()


def _packed_text(model: Any, x: Any) -> bool:
    """Whether ``x`` are a text adapter's packed inputs (their fill or baseline names are read as text)."""
    return is_text_adapter(model) and isinstance(x, torch.Tensor)


def _text_job_options(model: Any, x: Any, opts: dict[str, Any], data: Mapping[str, Any] | None) -> dict[str, Any]:
    """A method's job options on a text adapter's packed inputs with a ``fill`` or ``baseline`` of ``None`` left to
    the data's text option of that name (:func:`~whybox.models.text.explain_text`'s default), where there is one."""
    if not _packed_text(model, x) or not data:
        return opts
    return {k: v for k, v in opts.items() if not (k in ("fill", "baseline") and v is None and k in data)}


def _check_option_values(
    job: Job,
    adapter: ModelAdapter,
    data_options: Mapping[str, Mapping[str, Any]] | None,
    n: int,
    x: torch.Tensor | None = None,
) -> None:
    """Build every method and metric once with the job's options before any work: a bad value (``n_samples='abc'``,
    ``steps=0``) is an error now, not a failure recorded on every sample (or a run that says nothing failed).
    Only the option errors are raised here; what a method cannot do on this model is recorded per sample."""
    first = slice(0, 1)
    for m in job.methods:
        data = (data_options or {}).get(m) or {}
        own = _text_job_options(adapter, x, job.options_for(m), data)
        given = {**_cut({k: v for k, v in data.items() if k not in own}, first, n, _shared(own)), **own}
        try:
            if x is not None and _packed_text(adapter, x):
                given = read_text_fills(adapter, x[first], m, given)
            explainer = EXPLAINERS.get(m)(adapter, **given)
            layer = given.get("layer")
            if layer is not None and isinstance(getattr(explainer, "adapter", None), TorchAdapter):
                resolve_layers(explainer.adapter, layer)  # a named layer the model lacks: an option error
        except (InvalidParameterError, LayerError) as exc:
            raise InvalidParameterError(f"method_options[{m!r}]: {exc}") from None
        except WhyboxError:
            pass
    shared = (data_options or {}).get(METRICS_KEY) or {}
    for k in job.metrics:
        takes = _options(METRICS.get(k))
        given = {**_cut({o: v for o, v in shared.items() if o in takes}, first, n), **job.metric_options_for(k)}
        try:
            METRICS.get(k)(**given)
        except InvalidParameterError as exc:
            raise InvalidParameterError(f"metric_options[{k!r}]: {exc}") from None
        except WhyboxError:
            pass


def unit_data_options(
    data_options: Mapping[str, Mapping[str, Any]] | None, unit: Unit, n: int, job: Job | None = None
) -> dict[str, Any] | None:
    """``unit``'s share of ``data_options`` (``{method: {option: value}}`` over the whole dataset of ``n``
    samples, and the metrics' under :data:`METRICS_KEY`): tensors with one row per sample cut to the unit's
    samples, other values as they are. The metrics' share comes back under :data:`METRICS_KEY`."""
    idx = torch.tensor(unit.indices)
    keep = _shared(job.options_for(unit.method)) if job is not None else frozenset()
    out = _cut((data_options or {}).get(unit.method) or {}, idx, n, keep)
    if (data_options or {}).get(METRICS_KEY):
        out[METRICS_KEY] = _cut(data_options[METRICS_KEY], idx, n)  # type: ignore[index]
    return out or None


class _Nothing(Exception):
    """No sample of the unit has a target to explain."""


def execute_unit(
    model: Any,
    x: torch.Tensor,
    unit: Unit,
    job: Job,
    target: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    data_options: Mapping[str, Any] | None = None,
) -> UnitResult:
    """Compute one unit: explain ``x`` (the shard's inputs) with ``unit.method`` for ``target``, then score the
    explanation with every metric of the job.

    ``data_options`` are explainer options that come from the data (a text dataset's word features, fill and
    baseline, see :func:`unit_data_options`), and under :data:`METRICS_KEY` those of every metric that takes them
    (its word regions): tensors hold one row per sample of ``x``; the job's own options win.

    A failure of the whole shard is retried sample by sample, so one bad sample costs only itself; every failure
    is recorded with its reason. Non-finite attributions count as a failure of that sample.
    """
    costs: dict[str, tuple[float, int, int]] = {}
    samples = [SampleResult(i, None) for i in unit.indices]
    opts = _text_job_options(model, x, job.options_for(unit.method), data_options)
    n_rows = len(unit.indices)
    metric_data = dict((data_options or {}).get(METRICS_KEY) or {})
    per_row = {k: v for k, v in (data_options or {}).items() if k not in opts and k != METRICS_KEY}

    def options(rows: torch.Tensor | slice) -> dict[str, Any]:
        """The options for some rows of ``x``: per-row tensors cut to them, under the job's (on a text adapter's
        packed rows a fill or baseline name or number read on those rows, as explain_text reads it)."""
        given = {**_cut(per_row, rows, n_rows, _shared(opts)), **opts}
        return read_text_fills(model, x[rows], unit.method, given) if _packed_text(model, x) else given

    n_forward = n_backward = 0
    errors = SAMPLE_ERRORS
    with _threads(job.threads):
        t0 = time.perf_counter()
        rows_ok: list[int] = []
        attributions: list[torch.Tensor | None] = [None] * len(samples)
        live = [r for r in range(len(samples)) if int(target[r]) >= 0]
        for r in range(len(samples)):
            if r not in live:
                samples[r].reason = "no prediction: the model failed on this sample (see the samples table)"
        try:
            if not live:
                raise _Nothing
            sel = torch.tensor(live)
            e = explain(model, x[sel], unit.method, target=target[sel], **options(sel))
            n_forward, n_backward = int(e.meta.get("n_forward", 0)), int(e.meta.get("n_backward", 0))
            for j, r in enumerate(live):
                attributions[r] = e.attributions[j].detach().to("cpu")
        except _Nothing:
            pass
        except (*errors, MemoryError) as exc:
            if len(live) == 1:
                samples[live[0]].reason = _reason(exc)
            else:
                for r in live:
                    try:
                        e1 = explain(
                            model, x[r : r + 1], unit.method, target=target[r : r + 1], **options(slice(r, r + 1))
                        )
                    except errors as exc1:
                        samples[r].reason = _reason(exc1)
                        continue
                    n_forward += int(e1.meta.get("n_forward", 0))
                    n_backward += int(e1.meta.get("n_backward", 0))
                    attributions[r] = e1.attributions[0].detach().to("cpu")
        for r, a in enumerate(attributions):
            if a is None:
                continue
            if not bool(torch.isfinite(a).all()):
                samples[r].reason = "attributions are not finite (NaN or inf); the sample is left out of the metrics"
                attributions[r] = None
                continue
            samples[r].attributions = a.to(torch.float32).numpy()
            rows_ok.append(r)
        costs["explain"] = (time.perf_counter() - t0, n_forward, n_backward)
        if rows_ok and job.metrics:
            sel = torch.tensor(rows_ok)
            from whybox.explanation import Explanation

            expl = Explanation(
                attributions=torch.stack([attributions[r] for r in rows_ok]),  # type: ignore[misc]
                target=target[sel],
                method=unit.method,
                params=opts,
                meta={"n_forward": n_forward, "n_backward": n_backward, "seed": opts.get("seed")},
                options=options(sel),  # what stability and randomization re-run the method with
            )
            xs, ts = x[sel], target[sel]
            for metric in job.metrics:
                t1 = time.perf_counter()
                job_mopts = job.metric_options_for(metric)
                takes = _options(METRICS.get(metric))
                lab = (
                    labels if getattr(METRICS.get(metric), "reads_labels", False) else None
                )  # true classes: where a metric reads them
                own = {k: v for k, v in metric_data.items() if k in takes}
                if "regions" in own and "pool" in takes and "pool" not in job_mopts and is_text_adapter(model):
                    from whybox.models.text import word_pool

                    pool = word_pool(model, unit.method)  # a word's value as explain_text gives it
                    if pool is not None:
                        own["pool"] = pool

                def record(res: Any, rows: list[int], metric: str = metric) -> tuple[int, int]:
                    for j, r in enumerate(rows):
                        v = float(res.scores[j])
                        samples[r].metrics[metric] = MetricValue(
                            v if math.isfinite(v) else None,
                            _curves(res.curves, j),
                            None if math.isfinite(v) else UNDEFINED,
                        )
                    return int(res.meta.get("n_forward", 0)), int(res.meta.get("n_backward", 0))

                try:
                    mopts = {**_cut(own, sel, n_rows), **job_mopts}
                    ls = lab[sel] if lab is not None else None
                    nf, nb = record(evaluate(model, xs, expl, metric, target=ts, labels=ls, **mopts), rows_ok)
                except errors as exc:
                    nf = nb = 0
                    if len(rows_ok) == 1:
                        samples[rows_ok[0]].metrics[metric] = MetricValue(None, None, _reason(exc))
                    else:  # one sample's failure costs only that sample, as in the explain stage
                        for j, r in enumerate(rows_ok):
                            one = sel[j : j + 1]
                            mopts = {**_cut(own, one, n_rows), **job_mopts}
                            try:
                                res1 = evaluate(
                                    model, x[one], expl[j : j + 1], metric, target=target[one],
                                    labels=lab[one] if lab is not None else None, **mopts,
                                )  # fmt: skip
                            except errors as exc1:
                                samples[r].metrics[metric] = MetricValue(None, None, _reason(exc1))
                                continue
                            f1, b1 = record(res1, [r])
                            nf, nb = nf + f1, nb + b1
                costs[f"metric:{metric}"] = (time.perf_counter() - t1, nf, nb)
    return UnitResult(unit.shard, unit.method, samples, costs)


# ---------------------------------------------------------------------------------------------- the driver
@dataclass
class RunSummary:
    """How a :func:`run_job` call ended."""

    path: Path
    n_units: int
    n_skipped: int  # already in the store when the call started
    n_computed: int
    n_failed_samples: int  # (sample, method) pairs recorded as failed, whole run
    complete: bool  # every unit committed
    stopped_by_budget: bool
    seconds: float
    estimate_seconds: float | None = None
    n_failed_metric_values: int = 0  # (sample, method, metric) values that failed (not the NaN of an undefined one)


Progress = Callable[[str], None]


def _predict(
    adapter: ModelAdapter, x: torch.Tensor, shard_size: int, threads: int
) -> tuple[list[int], list[float | None], list[str | None], bool]:
    """Predicted class, its probability and the failure reason (or None) per sample; a batch that fails is
    retried row by row, and a row that still fails gets class -1 and its reason. Last, whether those numbers are
    probabilities (False: a one-output model's or a regressor's own output)."""
    preds: list[int] = []
    probs: list[float | None] = []
    reasons: list[str | None] = []
    width = 2  # the number of outputs, once a row has given them

    def scores(xb: torch.Tensor) -> torch.Tensor:
        s = adapter.scores(xb.to(adapter.device)).detach().to("cpu", torch.float64)
        return output_probabilities(adapter, s)  # a multi-label model's label sigmoids, not a softmax over them

    errors = SAMPLE_ERRORS
    with _threads(threads), adapter.guard("eval"), torch.no_grad():
        for idx in shards(x.shape[0], shard_size):
            xb = x[idx[0] : idx[-1] + 1]
            try:
                p = scores(xb)
                rows: list[torch.Tensor | str] = list(p)
            except errors:
                rows = []
                for r in range(xb.shape[0]):
                    try:
                        rows.append(scores(xb[r : r + 1])[0])
                    except errors as exc:
                        rows.append(_reason(exc))
            for row in rows:
                if isinstance(row, str):
                    preds.append(-1)
                    probs.append(None)
                    reasons.append(row)
                else:
                    preds.append(int(row.argmax()))
                    probs.append(float(row.max()))
                    reasons.append(None)
                    width = int(row.numel())
    return preds, probs, reasons, reads_probabilities(adapter, width)


def _fmt_s(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(round(seconds), 60)
    return f"{m}m{s:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m"


def run_job(
    job: Job,
    model: Any,
    x: torch.Tensor,
    run_dir: str | Path,
    *,
    names: Sequence[str] | None = None,
    labels: torch.Tensor | None = None,
    backend: str = "local",
    ray_address: str | None = None,
    model_factory: Callable[[], Any] | None = None,
    budget: float | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    extra_config: Mapping[str, Any] | None = None,
    before_unit: Callable[[Unit], None] | None = None,
    data_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> RunSummary:
    """Run ``job`` on ``x`` into ``run_dir``, computing only the units not already stored there.

    Parameters
    ----------
    job
        The :class:`Job`.
    model
        A torch classifier, a scikit-learn estimator or a :class:`~whybox.ModelAdapter`.
    x
        ``(N, ...)`` inputs.
    run_dir
        The run directory (created, or resumed when it holds a run of the same job, model, data and versions).
    names, labels
        One name per sample (default ``"0"``, ``"1"``, ...); true labels ``(N,)`` (needed for ``target="label"``).
    backend
        ``"local"`` (this process) or ``"ray"`` (tasks on a Ray cluster; see :mod:`whybox.runs.ray_backend`).
    ray_address
        The cluster to join (``None``: start a local one).
    model_factory
        For Ray: a picklable zero-argument callable that builds the model in each worker (default: the model
        itself is shipped through the object store).
    budget
        Seconds: no new unit starts after this much time; the run can be resumed later.
    overwrite
        Replace a run of a different job in ``run_dir`` instead of refusing.
    progress
        Called with one line of text per finished unit (with the ETA) and for the estimate.
    extra_config
        Extra JSON data stored with the config for the report (model and input descriptions); not fingerprinted.
    before_unit
        Ray backend: a picklable callable run in the worker before each unit (instrumentation, fault-injection
        tests).
    data_options
        ``{method: {option: value}}`` explainer options that come from the data, such as a text dataset's word
        features, fill and baseline (:func:`whybox.models.text.text_defaults` over the whole dataset), and under
        :data:`METRICS_KEY` options for every metric that takes them (its word regions): tensors with one row per
        sample are cut to each unit's samples; the job's ``method_options`` and ``metric_options`` win. Part of the data
        fingerprint.

    Returns
    -------
    RunSummary
    """
    t_start = time.perf_counter()
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or x.shape[0] < 1:
        raise InvalidParameterError(
            f"x must be a tensor (N, ...) with at least one sample; got {getattr(x, 'shape', type(x).__name__)}."
        )
    n = int(x.shape[0])
    names = [str(i) for i in range(n)] if names is None else [str(s) for s in names]
    if len(names) != n:
        raise InvalidParameterError(f"names must have one entry per sample ({n}); got {len(names)}.")
    adapter = model if isinstance(model, ModelAdapter) else adapt(model)
    if labels is not None:
        try:  # class names (a classifier's classes_, an HF model's id2label) read as target= reads them
            given = torch.as_tensor(class_label_target(adapter, labels))
        except WhyboxError:
            raise
        except (TypeError, ValueError, RuntimeError):
            raise InvalidParameterError(
                f"labels must hold one class per sample (indices, or the model's class names); got "
                f"{type(labels).__name__} {labels!r:.80}."
            ) from None
        if given.is_floating_point() and not bool((given == given.round()).all()):
            raise InvalidParameterError(
                "labels must be integer class indices; got fractional values (e.g. "
                f"{given[given != given.round()].reshape(-1)[0].item()!r})."
            )
        labels = given.to(torch.int64).reshape(-1)
        if labels.shape[0] != n:
            raise InvalidParameterError(f"labels must have one entry per sample ({n}); got {labels.shape[0]}.")
        if bool((labels < 0).any()):
            bad = (labels < 0).nonzero().flatten().tolist()
            raise InvalidParameterError(
                f"labels must be class indices >= 0; samples {bad[:5]} have {labels[bad[0]].item()} (a missing "
                "label?). Drop those samples, or give their true class."
            )
    if job.target == "label" and labels is None:
        raise InvalidParameterError("target='label' explains each sample's true class, but no labels were given.")
    if backend not in ("local", "ray"):
        raise InvalidParameterError(f"backend must be 'local' or 'ray'; got {backend!r}.")
    if budget is not None and not (isinstance(budget, (int, float)) and budget > 0):
        raise InvalidParameterError(f"budget must be a positive number of seconds; got {budget!r}.")
    _check_option_values(job, adapter, data_options, n, x)
    say = progress or (lambda _line: None)

    extra = dict(extra_config or {})
    if "kind" not in extra and is_signal(adapter, x):  # a signal run from Python: its report draws signals over time
        extra["kind"] = "signal"
    elif "kind" not in extra and is_sequence(adapter, x):  # sequences (N, T, D) too, their features over time
        extra["kind"] = "sequence"
    config = {"job": job.config(), **({"extra": extra} if extra else {})}
    store = RunStore(
        run_dir,
        fingerprints=fingerprints(job, adapter, x, names, labels, data_options),
        config=config,
        overwrite=overwrite,
    )
    try:
        store.save_inputs(x.detach().to("cpu").numpy())
        if store.n_samples() != n:
            preds, probs, reasons, probabilities = _predict(adapter, x, job.shard_size, job.threads)
            store.record_samples(
                [
                    (
                        i,
                        names[i],
                        None if labels is None else int(labels[i]),
                        preds[i],
                        probs[i],
                        i // job.shard_size,
                        reasons[i],
                    )
                    for i in range(n)
                ],
                prediction_reads="probability" if probabilities else "output",
            )
        stored = store.predictions()
        if job.target == "label" and labels is not None:
            target_all = labels
        else:
            target_all = torch.tensor([stored[i] for i in range(n)], dtype=torch.int64)
        done = store.done_units()
        total = len(plan_units(n, job))
        todo = plan_units(n, job, done)
        n_skipped = total - len(todo)
        if n_skipped:
            say(f"resuming {store.path}: {n_skipped} of {total} units already done, {len(todo)} to go")
        stopped = False
        computed = 0
        est: float | None = None
        per_method: dict[str, list[float]] = {}
        if n_skipped and todo:  # an estimate before starting, from the units a previous call finished
            spent: dict[tuple[int, str], float] = {}
            for shard, method, _stage, sec, *_rest in store.rows("costs"):
                spent[(shard, method)] = spent.get((shard, method), 0.0) + float(sec)
            for (_shard, method), sec in spent.items():
                per_method.setdefault(method, []).append(sec)
            if set(per_method) >= {u.method for u in todo}:
                est = sum(float(np.mean(per_method[u.method])) for u in todo)
                say(f"estimate: {_fmt_s(est)} for the {len(todo)} units to go (from the units already done)")

        def on_result(res: UnitResult) -> None:
            nonlocal computed, est
            store.commit(res)
            computed += 1
            spent = sum(c[0] for c in res.costs.values())
            per_method.setdefault(res.method, []).append(spent)
            left = todo[computed:]
            mean_all = float(np.mean([v for vs in per_method.values() for v in vs]))
            eta = sum(float(np.mean(per_method.get(u.method, [mean_all]))) for u in left)
            if backend == "ray":
                eta /= max(1, _ray_parallelism())
            if est is None and len(per_method) == len(job.methods) and left:  # (none left: nothing to estimate)
                est = (time.perf_counter() - t_start) + eta
                say(f"estimate: {_fmt_s(est)} for {len(todo)} units (from the first unit of each method)")
            failed = sum(s.reason is not None for s in res.samples)
            say(
                f"[{n_skipped + computed}/{total}] {res.method} shard {res.shard}: "
                f"{spent:.1f}s" + (f", {failed} failed" if failed else "") + f", ETA {_fmt_s(eta)}"
            )

        def over_budget() -> bool:
            return budget is not None and time.perf_counter() - t_start >= budget

        if backend == "local":
            for unit in todo:
                if over_budget():
                    stopped = True
                    break
                idx = torch.tensor(unit.indices)
                on_result(
                    execute_unit(
                        adapter,
                        x[idx],
                        unit,
                        job,
                        target_all[idx],
                        None if labels is None else labels[idx],
                        data_options=unit_data_options(data_options, unit, n, job),
                    )
                )
        else:
            from whybox.runs.ray_backend import run_units

            stopped = run_units(
                todo,
                job,
                model_factory if model_factory is not None else adapter,
                x,
                target_all,
                labels,
                on_result,
                over_budget,
                address=ray_address,
                before_unit=before_unit,
                data_options=data_options,
            )
        done_now = store.done_units()
        n_failed = store.n_failed()
        n_failed_metrics = store.n_failed_metrics(UNDEFINED)
        complete = len(done_now) == total
        return RunSummary(
            path=store.path,
            n_units=total,
            n_skipped=n_skipped,
            n_computed=computed,
            n_failed_samples=n_failed,
            n_failed_metric_values=n_failed_metrics,
            complete=complete,
            stopped_by_budget=stopped and not complete,
            seconds=time.perf_counter() - t_start,
            estimate_seconds=est,
        )
    finally:
        store.close()


def _ray_parallelism() -> int:
    with contextlib.suppress(Exception):
        import ray

        if ray.is_initialized():
            return int(ray.cluster_resources().get("CPU", 1))
    return 1


def python_info() -> str:
    """One line naming the interpreter (for run metadata)."""
    return f"{platform.python_implementation()} {platform.python_version()} ({sys.platform})"
