"""``whybox explain``, ``evaluate``, ``compare``, ``report`` and ``metrics``: the command line over files and datasets.

Models: a built-in name (``efficientnet-lite0``, ``digits-cnn``) or ``path/to/file.py:factory`` with
``--weights``; inputs: built-in datasets (``photos``, ``digits-test``), image files and folders, ``.npy``/``.npz``
and CSV. Every flag can live in a TOML file given with ``--config`` (flags on the command line win); unknown keys
are errors that list them, and no string in a config is imported: a model file must be named on the command line.

Exit codes: 0 done; 1 done, but some samples failed (recorded with their reasons); 2 bad flag, path, config or
input; 3 stopped by ``--budget`` (rerun the same command to resume); 130 interrupted (rerun to resume).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

import whybox
from whybox.errors import WhyboxError, did_you_mean
from whybox.registry import METRICS

__all__ = [
    "EXIT_BUDGET",
    "EXIT_FAILURES",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "compare_cmd",
    "evaluate_cmd",
    "explain_cmd",
    "metrics_cmd",
    "parse_options",
    "register",
    "report_cmd",
]

EXIT_OK = 0
EXIT_FAILURES = 1
EXIT_USAGE = 2
EXIT_BUDGET = 3
EXIT_INTERRUPTED = 130

# Flags a config file may hold, with their types (dict: a table of per-method or per-metric options).
_COMMON_KEYS: dict[str, type | tuple[type, ...]] = {
    "model": str,
    "weights": str,
    "inputs": list,
    "limit": int,
    "label_column": str,
    "batch_size": int,
    "seed": int,
    "target": (str, int),
    "device": str,
}


class BadInput(click.ClickException):
    """A bad flag value, path, config or input: exit code 2, the message names what was wrong."""

    exit_code = EXIT_USAGE

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


def _fail(message: str) -> BadInput:
    return BadInput(message)


class _ModelFailed(BadInput):
    """The model, or a method or metric on it, raised while explaining or scoring: exit code 1, no traceback."""

    exit_code = EXIT_FAILURES


#: What a user's model may raise on an input (as ``whybox.runs.job`` records per sample).
_MODEL_ERRORS = (RuntimeError, ValueError, TypeError, IndexError, ArithmeticError)


_PYTHON_WORDS = {"True": True, "False": False, "None": None}


def _parse_value(text: str) -> Any:
    """A flag's value as JSON (``false``, ``3``, ``[1, 2]``), Python's ``True``, ``False`` and ``None`` as
    themselves, anything else as the text."""
    if text.strip() in _PYTHON_WORDS:
        return _PYTHON_WORDS[text.strip()]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_options(
    items: tuple[str, ...] | list[str], *, flag: str, scoped: bool
) -> dict[str, dict[str, Any]] | dict[str, Any]:
    """Parse ``KEY=VALUE`` (``scoped=False``) or ``NAME.KEY=VALUE`` (``scoped=True``) flags.

    Values are JSON when they parse as JSON (``64``, ``true``, ``[75, 112]``, ``"zero"``), else plain strings
    (``fill=zero``).
    """
    flat: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            form = "NAME.KEY=VALUE" if scoped else "KEY=VALUE"
            raise _fail(f"{flag} takes {form}; got {item!r}.")
        if scoped:
            name, dot, opt = key.partition(".")
            if not dot or not name or not opt:
                raise _fail(f"{flag} takes NAME.KEY=VALUE (e.g. lime.n_samples=200); got {item!r}.")
            nested.setdefault(name, {})[opt] = _parse_value(value)
        else:
            flat[key] = _parse_value(value)
    return nested if scoped else flat


def _split(value: str | list[str] | None, *, flag: str, valid: list[str]) -> list[str]:
    if value is None:
        return []
    parts = value if isinstance(value, list) else [p.strip() for p in value.split(",")]
    parts = [p for p in parts if p]
    bad = [p for p in parts if p not in valid]
    if bad:
        hint = "".join(dict.fromkeys(did_you_mean(p, valid, n=3) for p in bad))
        raise _fail(f"{flag}: unknown {', '.join(map(repr, bad))}.{hint} Known: {', '.join(valid)}.")
    if len(set(parts)) != len(parts):
        raise _fail(f"{flag} names {', '.join(sorted({p for p in parts if parts.count(p) > 1}))} more than once.")
    return parts


#: Config keys whose flag is stored under another parameter name.
_PARAM_OF = {"methods": "methods_opt", "metrics": "metrics_opt", "out": "out_dir", "masks": "masks_file"}


def _apply_config(
    ctx: click.Context, params: dict[str, Any], extra_keys: Mapping[str, type | tuple[type, ...]]
) -> dict[str, Any]:
    """Fill ``params`` from ``--config`` where the flag was not given on the command line; return the option
    tables (``options``, ``metric_options``) of the config, which the caller merges under the flags."""
    path = params.get("config")
    if path is None:
        return {}
    from whybox.runs.loaders import load_config

    allowed = {**_COMMON_KEYS, **extra_keys}
    try:
        cfg = load_config(path, allowed=allowed)
    except WhyboxError as exc:
        raise _fail(f"--config: {exc}") from None
    if "model" in cfg and ":" in str(cfg["model"]):
        raise _fail(
            f"--config {str(path)!r}: model = {cfg['model']!r} names a Python file; a config never makes whybox "
            "import code. Give file models on the command line (--model path/to/file.py:factory)."
        )
    tables: dict[str, Any] = {}
    for key, value in cfg.items():
        if key in ("options", "metric_options"):
            tables[key] = value
            continue
        name = _PARAM_OF.get(key, key)
        if name not in params:
            continue
        source = ctx.get_parameter_source(name)
        given = source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")
        if key == "inputs":
            if not params["inputs"]:  # relative paths in a config are relative to the config's folder
                from whybox.runs.loaders import BUILTIN_DATASETS

                base = Path(path).parent
                params["inputs"] = tuple(
                    str(v) if str(v) in BUILTIN_DATASETS or Path(str(v)).is_absolute() else str(base / str(v))
                    for v in value
                )
        elif key in ("masks", "out") and not given:  # relative to the config's folder, as its inputs
            params[name] = Path(str(value)) if Path(str(value)).is_absolute() else Path(path).parent / str(value)
        elif key in ("weights", "model") and not given:  # files relative to the config's folder, as its inputs
            beside = Path(path).parent / str(value)
            local = key == "weights" or beside.exists()  # a model may be a built-in name (digits-cnn)
            params[name] = str(beside) if local and not Path(str(value)).is_absolute() else value
        elif key == "target" and not given:  # target = 3 (a class index), as --target 3
            params[name] = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        elif not given:
            params[name] = (
                ",".join(map(str, value)) if isinstance(value, list) and key in ("methods", "metrics") else value
            )
    return tables


def _flag_options(tables: Mapping[str, Any], params: Mapping[str, Any], key: str, *, scoped: bool) -> dict[str, Any]:
    """The ``--option`` (``key="options"``) or ``--metric-option`` flags over the config's table of the same name."""
    flag = "--option" if key == "options" else "--metric-option"
    return _merge(tables.get(key, {}), parse_options(params[key], flag=flag, scoped=scoped), flag=key, scoped=scoped)


def _chosen_options(
    options: Mapping[str, Any], params: Mapping[str, Any], key: str, chosen: Sequence[str]
) -> dict[str, Any]:
    """``options`` (one table per name) without the config's tables for names the command line left out
    (``--methods saliency`` with a config's ``[options.lime]``: the flags win); a flag's own name stays, for the
    error that names it. A name that is no registered method (metric) at all is an error (``_refuse_unknown``)."""
    _refuse_unknown(options, params, key)
    flag = "--option" if key == "options" else "--metric-option"
    flagged = set(parse_options(params[key], flag=flag, scoped=True))
    return {k: v for k, v in options.items() if k in chosen or k in flagged}


def _refuse_unknown(options: Mapping[str, Any], params: Mapping[str, Any], key: str) -> None:
    """Exit 2 when ``options`` (one table per name) has a table for a name that is no registered method
    (``key="options"``) or metric (``"metric_options"``), from a flag or a config's table (``[options.lmie]``,
    ``[metric_options.deletoin]``): the error names where it came from, with a did-you-mean; a typo is never
    dropped as a table for a method the command line left out."""
    flag = "--option" if key == "options" else "--metric-option"
    flagged = set(parse_options(params[key], flag=flag, scoped=True))
    kind, registered = ("method", whybox.methods()) if key == "options" else ("metric", METRICS.names())
    for name in options:
        if name not in registered:
            where = f"{flag} {name}.KEY=..." if name in flagged else f"--config: [{key}.{name}]"
            raise _fail(
                f"{where}: {name!r} is not a {kind}.{did_you_mean(name, registered, n=3)} "
                f"Known: {', '.join(registered)}."
            )


#: the arguments whybox.explain / whybox.evaluate take beside a method's or metric's options, and the flag that sets
#: each on the command line (an --option of one of them would clash with it: a raw TypeError before)
_EXPLAIN_ARGUMENTS = {"model": "--model", "inputs": "INPUTS", "method": "--method", "target": "--target"}
_EVALUATE_ARGUMENTS = {
    **_EXPLAIN_ARGUMENTS,
    "explanation": "--method or --explanation",
    "metric": "--metrics",
    "labels": "the inputs' labels (--label-column, an .npz's y)",
    "masks": "--masks",
}


def _refuse_arguments(options: Mapping[str, Any], flag: str, arguments: Mapping[str, str], scope: str = "") -> None:
    """Exit 2 when an ``--option``/``--metric-option`` names an argument its command sets by a flag."""
    for key in options:
        if key in arguments:
            raise _fail(f"{flag} {scope}{key}=...: {key} is set by {arguments[key]}, not as an option; drop it.")


def _own_options(tables: Mapping[str, Any], method: str) -> dict[str, Any]:
    """The config's tables with ``[options]`` as one method's options: a table per method (``[options.lime]``, as
    compare reads them) gives ``method``'s own (the others are left for the methods they name); plain keys
    (``[options] n_samples = 500``) apply as they are."""
    table = tables.get("options")
    if not isinstance(table, Mapping):
        return dict(tables)
    names = set(whybox.methods())
    flat = {k: v for k, v in table.items() if not (k in names and isinstance(v, Mapping))}
    own = table.get(method)
    return {**tables, "options": {**flat, **(dict(own) if isinstance(own, Mapping) else {})}}


def _merge(base: Mapping[str, Any], over: Mapping[str, Any], *, flag: str, scoped: bool) -> dict[str, Any]:
    """Config option tables under the command line's (the flags win, key by key)."""
    out: dict[str, Any] = {}
    for k, v in base.items():
        if scoped and not isinstance(v, dict):
            raise _fail(f"--config: [{flag}] must hold one table per name ([{flag}.{k}]); got {k} = {v!r}.")
        out[k] = dict(v) if scoped else v
    for k, v in over.items():
        if scoped:
            out.setdefault(k, {}).update(v)
        else:
            out[k] = v
    return out


def _load(params: dict[str, Any]) -> tuple[Any, Any]:
    from whybox.runs.loaders import load_inputs, load_model, resolve_device

    texts = list(params.get("texts") or ())
    if not params.get("model"):
        raise _fail("--model is required (a built-in name such as digits-cnn, or path/to/file.py:factory).")
    if texts and params.get("inputs"):
        raise _fail("give either INPUTS or --text, not both.")
    if not params.get("inputs") and not texts:
        raise _fail(
            "give at least one input: a dataset name (photos, digits-test, sentiment-test), image files or folders, "
            ".npy, .csv or .txt files (or --text for a text model)."
        )
    try:
        device = resolve_device(params.get("device"))
    except WhyboxError as exc:
        raise _fail(f"--device: {exc}") from None
    try:
        lm = load_model(
            params["model"],
            weights=params.get("weights"),
            trust_model_file=bool(params.get("trust_model_file")),
            device=device,
        )
    except WhyboxError as exc:
        raise _fail(f"--model {params['model']!r}: {exc}") from None
    try:
        if texts:
            from whybox.runs.loaders import _is_text, texts_dataset

            if not _is_text(lm):
                raise _fail(f"--text needs a text model (minilm-sentiment); {lm.name!r} is not one.")
            ds = texts_dataset(texts[: params.get("limit") or None], lm)
        else:
            ds = load_inputs(
                list(params["inputs"]), lm, limit=params.get("limit"), label_column=params.get("label_column")
            )
    except WhyboxError as exc:
        raise _fail(f"{'--text' if texts else 'inputs'}: {exc}") from None
    if ds.coder is not None:  # a CSV's text columns, coded by the estimator's adapter: explain through it
        lm = dataclasses.replace(lm, module=ds.coder)
    _check_width(lm, ds, params)
    return lm, ds


def _check_width(lm: Any, ds: Any, params: Mapping[str, Any]) -> None:
    """A table for an estimator that knows how many features it takes (``n_features_in_``) must have that many
    columns: a label column left in (no --label-column) was the estimator's own ValueError on every sample."""
    est = getattr(lm.module, "model", lm.module)
    want = getattr(est, "n_features_in_", None)
    if ds.kind != "tabular" or isinstance(est, torch.nn.Module) or not isinstance(want, int):
        return
    have = int(ds.x.shape[1])
    if have == want:
        return
    cols = ds.columns or []
    hint = (
        "; name the label column with --label-column (it is not a feature)"
        if have == want + 1 and not params.get("label_column")
        else ""
    )
    raise _fail(
        f"inputs: {have} columns{' (' + ', '.join(cols[:12]) + ('...' if len(cols) > 12 else '') + ')' if cols else ''}"
        f", but {type(est).__name__} takes {want} features (n_features_in_){hint}."
    )


def _target(spec: str | None, ds: Any, names: list[str] | None = None, model: Any = None) -> Any:
    """``--target``: None (the prediction), the true labels, a class index, or a class name of the model's
    ``names`` (its labels: ImageNet's for efficientnet-lite0, ``classes_`` of a scikit-learn estimator)."""
    if spec is None or spec == "prediction":
        return None
    from whybox.runs.loaders import is_regressor_model

    if spec == "label" and model is not None and is_regressor_model(model):
        raise _fail(
            f"--target label explains each input's true class, but {type(model).__name__} is a regressor: it has no "
            "classes, and its one output is explained by default (drop --target)."
        )
    if spec == "label":
        if ds.labels is None:
            raise _fail(
                "--target label needs true labels; these inputs have none (use a labelled dataset or CSV --label-column)."
            )
        return ds.labels
    try:
        return int(spec)
    except ValueError:
        pass
    hits = [i for i, n in enumerate(names or []) if n == spec]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise _fail(f"--target {spec!r} names {len(hits)} classes ({', '.join(map(str, hits))}); give the index.")
    from whybox.models.targets import name_hint

    known = "" if not names else f", or one of the model's class names (e.g. {names[0]!r})"
    hint = name_hint(spec, names) if names else ""
    raise _fail(f"--target must be 'prediction', 'label', a class index{known}; got {spec!r}.{hint}")


#: ``--device`` of every command that runs a model (explain, evaluate, compare, demo, debug).
device_option = click.option(
    "--device",
    default="cpu",
    show_default=True,
    help="Where the model runs: cpu, auto (cuda where torch sees a GPU), cuda, cuda:N or mps. Inputs and results "
    "stay on the CPU.",
)


def _common(f: Callable[..., Any]) -> Callable[..., Any]:
    return input_options()(f)


def input_options(*, leave_out: tuple[str, ...] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The INPUTS argument and the flags that load a model and its inputs (``--model``, ``--weights``, ...,
    ``--config``), less those named in ``leave_out`` (``"limit"``, ``"config"``)."""
    options = {
        "inputs": click.argument("inputs", nargs=-1),
        "model": click.option(
            "--model",
            "model",
            help="Built-in model (efficientnet-lite0, digits-cnn), model.onnx or path/to/file.py:factory.",
        ),
        "weights": click.option(
            "--weights",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Weights: .safetensors or a state dict (.pt).",
        ),
        "trust_model_file": click.option(
            "--trust-model-file",
            is_flag=True,
            help="Allow a pickled full model in --weights (runs its code; only for files you trust).",
        ),
        "limit": click.option("--limit", type=click.IntRange(min=1), help="Use only the first N inputs."),
        "label_column": click.option("--label-column", help="CSV inputs: the column holding true labels."),
        "batch_size": click.option(
            "--batch-size",
            type=click.IntRange(min=1),
            default=None,
            help="Rows per model call of methods and metrics [default: 64 for torch models, 4096 for scikit-learn "
            "estimators].",
        ),
        "seed": click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True),
        "device": device_option,
        "config": click.option(
            "--config",
            type=click.Path(dir_okay=False, path_type=Path),
            help="TOML (or .json, .yaml) file holding any of these flags.",
        ),
    }

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        for name, opt in reversed(options.items()):
            if name not in leave_out:
                f = opt(f)
        return f

    return decorate


def _done(code: int) -> None:
    if code:
        sys.exit(code)


# ---------------------------------------------------------------------------------------------- metrics
@click.command("metrics")
def metrics_cmd() -> None:
    """List the registered metrics and their direction."""
    names = METRICS.names()
    width = max(len(n) for n in names)
    for name in names:
        hib = getattr(METRICS.get(name), "higher_is_better", None)
        arrow = "higher is better" if hib else "lower is better" if hib is False else ""
        doc = (METRICS.get(name).__doc__ or "").strip().splitlines()[0]
        click.echo(f"{name:<{width}}  {arrow:<16}  {doc}")


# ---------------------------------------------------------------------------------------------- explain
@click.command("explain")
@_common
@click.option("--method", required=False, help="A method from `whybox methods`.")
@click.option(
    "--option", "options", multiple=True, metavar="KEY=VALUE", help="A method option (repeatable), e.g. n_samples=200."
)
@click.option("--target", help="'prediction' (default), 'label', a class index or a class name.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("whybox-explain"),
    show_default=True,
    help="Output folder (created if missing). The overlay PNGs (NNNN_<input>_<method>.png) and tokens.html that an "
    "earlier explain wrote there (listed in .whybox-explain-files.json) and this one does not rewrite are removed, "
    "so the folder shows this explanation only; other files, your own of such names too, are left alone.",
)
@click.option(
    "--text",
    "texts",
    multiple=True,
    metavar="TEXT",
    help="A text to explain with a text model such as minilm-sentiment (repeatable; instead of INPUTS).",
)
@click.pass_context
def explain_cmd(ctx: click.Context, **params: Any) -> None:
    """Explain INPUTS with one method: write explanation.safetensors (the maps, with method, options and meta in
    its JSON header; whybox.Explanation.load reads it) and one overlay PNG per image, or for a text model the word
    attributions (in the terminal and in tokens.html)."""
    tables = _apply_config(ctx, params, {"method": str, "options": dict, "out": str, "target": (str, int)})
    method = params.get("method")
    if not method:
        raise _fail("--method is required; see `whybox methods`.")
    _split(method, flag="--method", valid=whybox.methods())
    opts = _flag_options(_own_options(tables, method), params, "options", scoped=False)
    _refuse_arguments(opts, "--option", _EXPLAIN_ARGUMENTS)
    lm, ds = _load(params)
    target = _target(params.get("target"), ds, lm.labels, lm.module)
    out_dir = _make_dir(Path(params["out_dir"]), "--out")
    from whybox.api import _options

    valid = _options(whybox.get_explainer(method))
    if "batch_size" in valid:
        opts.setdefault("batch_size", params["batch_size"])
    if "seed" in valid:
        opts.setdefault("seed", params["seed"])
    if ds.kind == "text":
        _explain_texts(lm, ds, method, target, opts, out_dir)
        _remove_stale(out_dir, _explain_outputs(), {"tokens.html"})
        return
    t0 = time.perf_counter()
    try:
        e = whybox.explain(lm.module, ds.x, method, target=target, **opts)
    except WhyboxError as exc:
        raise _fail(f"{method}: {exc}") from None
    except _MODEL_ERRORS as exc:
        raise _ModelFailed(f"{method} failed: {type(exc).__name__}: {exc}") from None
    seconds = time.perf_counter() - t0
    from whybox.report import output_path, safe_component, save_png
    from whybox.report.overlay import overlay
    from whybox.runs.report_data import method_reading

    if ds.columns is not None:  # a CSV's header: the saved explanation names its attribution columns
        e.meta["feature_names"] = list(ds.columns)
    _save_explanation(e, output_path(out_dir, "explanation.safetensors"))
    probs = _probabilities(lm.module, ds.x)
    click.echo(
        f"{method}: {len(ds.names)} inputs in {seconds:.2f}s, {e.meta.get('n_forward', 0)} forward and "
        f"{e.meta.get('n_backward', 0)} backward passes"
    )
    no_overlay: str | None = None
    written: set[str] = set()
    for i, name in enumerate(ds.names):
        t = int(e.target[i])
        line = f"  {name}: {_explained(lm.labels, probs[i], t)}" if t >= 0 else f"  {name}"
        if ds.kind in ("signal", "sequence"):  # signals (N, C, L), sequences (N, T, D): the map along time under them
            png = output_path(out_dir, f"{i:04d}_{safe_component(name)}_{method}.png")
            e.plot(ds.x, rows=i).savefig(png, dpi=100)
            line += f" -> {png.name}"
            written.add(png.name)
        elif ds.kind == "image":
            try:
                shown = lm.display(ds.x[i])
            except WhyboxError as exc:  # arrays the display cannot show: (N, H, W), or 2 or 4+ channels
                no_overlay = str(exc)
            else:
                a = e.attributions[i]
                amap = a.sum(0) if a.ndim == 3 else a
                png = output_path(out_dir, f"{i:04d}_{safe_component(name)}_{method}.png")
                picture = torch.from_numpy(shown.transpose(2, 0, 1).copy())
                reading = method_reading(method, e.params)  # as plot(), the demo and the run report colour it
                save_png(png, _enlarged(overlay(picture, amap, reading=reading)))
                line += f" -> {png.name}"
                written.add(png.name)
        else:
            top = torch.argsort(e.attributions[i].abs(), descending=True)[:5].tolist()
            cols = ds.columns or [str(j) for j in range(ds.x.shape[1])]
            line += "; top features: " + ", ".join(f"{cols[j]}={float(e.attributions[i, j]):+.3g}" for j in top)
            packing = getattr(lm.module, "packing", None)
            if packing is not None and packing.has_image:  # an image among several inputs: its map, the rest as bars
                png = output_path(out_dir, f"{i:04d}_{safe_component(name)}_{method}.png")
                e.plot(ds.x, rows=i).savefig(png, dpi=100)
                line += f" -> {png.name}"
                written.add(png.name)
        click.echo(line)
    if no_overlay is not None:
        click.echo(f"no overlay PNGs: {no_overlay}", err=True)
    _remove_stale(out_dir, _explain_outputs(), written)
    click.echo(f"wrote {out_dir / 'explanation.safetensors'}")


def _explain_outputs() -> re.Pattern[str]:
    """The names of the files ``whybox explain`` writes beside its explanation.safetensors: an overlay per input,
    ``{index:04d}_{safe_component(name)}_{method}.png``, and a text model's ``tokens.html``."""
    methods = "|".join(map(re.escape, whybox.methods()))
    return re.compile(rf"\d{{4,}}_[A-Za-z0-9_-]{{1,40}}_(?:{methods})\.png|tokens\.html")


def _save_explanation(e: Any, path: Path) -> None:
    """``e.save(path)``; a folder that cannot be written (read-only, full) is an ``Error:`` line, not a traceback."""
    try:
        e.save(path)
    except WhyboxError:
        raise
    except Exception as exc:  # OSError, or safetensors' own error wrapping one
        raise _fail(f"--out: cannot write {str(path)!r}: {exc}") from None


def _remove_stale(out_dir: Path, pattern: re.Pattern[str], written: set[str], command: str = "explain") -> None:
    """Delete the files an earlier run of ``command`` wrote in ``out_dir`` (listed in its manifest,
    ``.whybox-<command>-files.json``, and of its naming ``pattern``) that this run did not write (``written``): an
    earlier, larger run's overlays beside this run's results would show rows the results no longer hold. Only files
    whybox itself listed go: a user's own file of the same form of name is never touched (a folder without a
    manifest, one whybox never wrote or wrote before manifests, loses nothing). Then this run's list replaces the
    manifest."""
    from whybox.report import output_path

    try:  # not through a link out of the folder
        manifest = output_path(out_dir, f".whybox-{command}-files.json")
    except WhyboxError as exc:
        raise _fail(f"--out: {exc}") from None
    try:
        listed = json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else []
        earlier = {str(n) for n in listed} if isinstance(listed, list) else set()
    except (OSError, ValueError):  # unreadable: nothing is known to be whybox's
        earlier = set()
    stale = [
        out_dir / n
        for n in sorted(earlier - written)
        if "/" not in n
        and "\\" not in n
        and pattern.fullmatch(n)
        and ((out_dir / n).is_file() or (out_dir / n).is_symlink())
    ]
    for p in stale:
        try:
            p.unlink(missing_ok=True)
        except OSError as exc:
            raise _fail(f"--out: cannot remove {str(p)!r}, left by an earlier run: {exc.strerror or exc}") from None
    if stale:
        click.echo(f"removed {len(stale)} file(s) an earlier run left in {out_dir}", err=True)
    try:
        manifest.write_text(json.dumps(sorted(written)), encoding="utf-8")
    except OSError as exc:
        raise _fail(f"--out: cannot write {str(manifest)!r}: {exc.strerror or exc}") from None


def methods_for(kind: str, model: Any) -> list[str]:
    """The methods that apply to ``kind`` inputs of ``model``: ``whybox.methods(kind)``, on images of a Hugging
    Face vision transformer also the attention readers (listed under text, as most image models have no attention),
    and on the packed rows of a model of several inputs with an image among them the CAMs that map that image."""
    from whybox.api import INPUT_KINDS
    from whybox.explainers.attention.explainers import AttentionExplainer, _patch_size
    from whybox.models.adapter import adapt
    from whybox.registry import EXPLAINERS

    names = whybox.methods(kind if kind in INPUT_KINDS else None)
    adapter = adapt(model)
    if kind == "image" and _patch_size(adapter) is not None:
        names = sorted({*names, *(n for n in whybox.methods() if issubclass(EXPLAINERS.get(n), AttentionExplainer))})
    packing = getattr(adapter, "packing", None)
    if kind == "tabular" and packing is not None and packing.has_image:
        cams = (n for n in whybox.methods("image") if getattr(EXPLAINERS.get(n), "takes_packed_images", False))
        names = sorted({*names, *cams})
    return names


def _model_can_run(methods: Sequence[str], model: Any, x: torch.Tensor) -> tuple[list[str], str]:
    """Of ``methods``, those the model can run: gradient methods need a differentiable model (not a scikit-learn
    estimator, nor a function returning NumPy values: one forward on one sample tells), CAMs need a torch model's
    layers and hooks on them (not a function, not a TorchScript model), the attention readers a transformer (not a black-box text model). Returns the methods
    kept and a line saying what was left out and why ("" if nothing)."""
    from whybox.explainers.attention.explainers import AttentionExplainer
    from whybox.explainers.cam.base import CAM
    from whybox.models.adapter import FunctionModel, adapt
    from whybox.registry import EXPLAINERS

    adapter = adapt(model)
    function = isinstance(getattr(adapter, "model", None), FunctionModel)
    grads = bool(adapter.differentiable)
    if grads and function:
        probe = x[:1].detach().to(adapter.device)
        probe = (probe if probe.is_floating_point() else probe.float()).requires_grad_(True)
        with adapter.guard("eval"), torch.enable_grad():
            try:
                grads = bool(adapter.scores(probe).requires_grad)
            except (*_MODEL_ERRORS, WhyboxError):  # the run itself records why the model fails
                grads = False
    no_grad = [m for m in methods if getattr(EXPLAINERS.get(m), "needs_grad", False)] if not grads else []
    no_layer = [m for m in methods if function and issubclass(EXPLAINERS.get(m), CAM)]
    scripted = isinstance(getattr(adapter, "model", None), torch.jit.ScriptModule)
    no_hook = [m for m in methods if scripted and issubclass(EXPLAINERS.get(m), CAM)]
    no_attention = []  # the attention readers need a transformer (they say so when built on anything else)
    for m in methods:
        if issubclass(EXPLAINERS.get(m), AttentionExplainer) and m not in no_grad:
            try:
                EXPLAINERS.get(m)(adapter)
            except WhyboxError:
                no_attention.append(m)
    reasons = (
        (no_grad, "the model gives no gradients"),
        (no_layer, "a function has no layers"),
        (no_hook, "a TorchScript model takes no forward hooks on its layers"),
        (no_attention, "the model is not a transformer whybox reads attention from"),
    )
    left = {m for names, _ in reasons for m in names}
    why = [f"{', '.join(names)} ({reason})" for names, reason in reasons if names]
    return [m for m in methods if m not in left], "; ".join(why)


def _affordable(methods: Sequence[str], lm: Any, ds: Any, options: Mapping[str, Any]) -> tuple[list[str], str]:
    """Of ``methods``, those within their cost limit on these inputs: exact Shapley enumerates 2^M coalitions and is
    refused above M = 16 features, so a run that picks its methods leaves it out where some input has more (a
    table of 30 columns, a long text) rather than fail it on those rows. Returns the methods kept and why any
    was left out ("" if none)."""
    from whybox.explainers.perturbation.exact_shapley import MAX_EXACT_FEATURES
    from whybox.registry import EXPLAINERS

    name = "exact_shapley"
    opts = dict(options.get(name, {}))
    if name not in methods or opts.get("allow_large"):
        return list(methods), ""
    batch = _text_batch(lm, ds)
    if batch is not None:
        from whybox.models.text import text_defaults

        opts = {**text_defaults(name, batch), **opts}
    try:
        counts = EXPLAINERS.get(name)(lm.module, **opts).feature_counts(ds.x)
    except WhyboxError:  # bad options: the run reports them
        return list(methods), ""
    over = [m for m in counts if m > MAX_EXACT_FEATURES]
    if not over:
        return list(methods), ""
    many = f"{len(over)} of {len(counts)} inputs have" if len(over) < len(counts) else "the inputs have"
    return [m for m in methods if m != name], (
        f"{name} ({many} more than {MAX_EXACT_FEATURES} features, up to {max(over)}: 2^M coalitions each; name it "
        f"in --methods with fewer features (--option {name}.features=...) or --option {name}.allow_large=true)"
    )


def _text_batch(lm: Any, ds: Any) -> Any:
    """A text dataset's texts encoded by the model's text adapter (its inputs are the dataset's), else None."""
    if ds.kind != "text":
        return None
    batch = lm.module.encode(list(ds.texts))
    if tuple(batch.inputs.shape) != tuple(ds.x.shape):  # pragma: no cover - the dataset is this same encoding
        raise _fail("internal: the texts encode to other inputs than the dataset's.")
    return batch


def _text_options(batch: Any, methods: Sequence[str]) -> dict[str, dict[str, Any]] | None:
    """For a text dataset's batch, each method's text options over the whole set (word features, the [MASK]
    fill, the pad baseline, one-token occlusion windows: what explain_text gives it), and under the runs'
    ``METRICS_KEY`` the metrics' word regions (what ``whybox.evaluate`` on the texts reads); None without a batch."""
    if batch is None:
        return None
    from whybox.models.text import text_defaults
    from whybox.runs.job import METRICS_KEY

    return {**{m: text_defaults(m, batch) for m in methods}, METRICS_KEY: {"regions": batch.word_features()}}


def _explain_texts(lm: Any, ds: Any, method: str, target: Any, opts: dict[str, Any], out_dir: Path) -> None:
    """The text branch of ``explain``: word attributions printed as a heatmap line per text and written to
    tokens.html, the explanation of the packed inputs to explanation.safetensors."""
    from whybox.models.text import explain_text
    from whybox.report import output_path, render_tokens_page, render_tokens_terminal, write_text_atomic

    t0 = time.perf_counter()
    try:
        out = explain_text(lm.module, ds.texts, method, target=target, **opts)
    except WhyboxError as exc:
        raise _fail(f"{method}: {exc}") from None
    except _MODEL_ERRORS as exc:
        raise _ModelFailed(f"{method} failed: {type(exc).__name__}: {exc}") from None
    seconds = time.perf_counter() - t0
    e = out.explanation
    _save_explanation(e, output_path(out_dir, "explanation.safetensors"))
    probs = _probabilities(lm.module, out.batch.inputs)
    click.echo(
        f"{method}: {len(ds.names)} texts in {seconds:.2f}s, {e.meta.get('n_forward', 0)} forward and "
        f"{e.meta.get('n_backward', 0)} backward passes; word attributions to the explained class "
        "(red: for it, blue: against it)"
    )
    color = sys.stdout.isatty()
    rows = []
    for i, name in enumerate(ds.names):
        t = int(e.target[i])
        words = [w for w, _ in out.words[i]]
        values = [v for _, v in out.words[i]]
        click.echo(f"  {name}: {_explained(lm.labels, probs[i], t)}")
        click.echo("    " + render_tokens_terminal(words, values, color=color, words=True))  # whole words
        rows.append((f"{name}: {_explained(lm.labels, probs[i], t, quote=False)}", words, values))
    page = output_path(out_dir, "tokens.html")
    write_text_atomic(page, render_tokens_page(rows, title=f"whybox {method}: {lm.name}", words=True))
    click.echo(f"wrote {out_dir / 'explanation.safetensors'} and {page}")


SMALL_OVERLAY = 64  # an overlay smaller than this (8 x 8 digits) is written enlarged, to at least twice this side


def _enlarged(picture: np.ndarray) -> np.ndarray:
    """A small overlay ``(H, W, 3)`` repeated pixel by pixel (crisp, no smoothing) so its longer side is at least
    ``2 * SMALL_OVERLAY``; a larger one as it is."""
    side = max(picture.shape[:2])
    if side >= SMALL_OVERLAY:
        return picture
    k = -(-2 * SMALL_OVERLAY // side)
    return np.repeat(np.repeat(picture, k, axis=0), k, axis=1)


def _make_dir(path: Path, flag: str) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _fail(f"{flag}: cannot create {str(path)!r}: {exc.strerror or exc}") from None
    return path


def _label_text(labels: list[str] | None, k: int) -> str:
    return labels[k] if labels is not None and 0 <= k < len(labels) else str(k)


def _coded_model(load: Callable[[], Any], vocab: dict[str, list[Any]], dtypes: dict[str, Any] | None = None) -> Any:
    """A Ray worker's model for inputs whose text columns were coded (or int/bool columns read in their types):
    the estimator's adapter holding the vocabulary they were coded with and the columns' dtypes (a module-level
    function, so that Ray can ship it)."""
    from whybox.models.categorical import register_vocabularies

    adapter = whybox.adapt(load().module)
    register_vocabularies(adapter, vocab)
    getattr(adapter, "numeric_dtypes", {}).update(dtypes or {})
    return adapter


def _encoded_texts_model(load: Callable[[], Any], texts: list[str]) -> Any:
    """A Ray worker's black-box text model that has encoded the dataset's texts, as the driver's did first, so
    the index column of the dataset's presence rows names the same texts there (a module-level function)."""
    adapter = load().module
    adapter.encode(texts)
    return adapter


def _probabilities(model: Any, x: torch.Tensor) -> torch.Tensor:
    """Class probabilities ``(B, K)`` (a multi-label classifier's: each label's sigmoid); a one-output model's (a
    regressor's) own output ``(B, 1)``."""
    adapter = whybox.adapt(model) if not isinstance(model, whybox.ModelAdapter) else model
    from whybox.models.adapter import output_probabilities

    with adapter.guard("eval"), torch.no_grad():
        s = adapter.scores(x.to(adapter.device)).detach().to("cpu", torch.float64)
    return output_probabilities(adapter, s)


def _explained(labels: list[str] | None, probs: torch.Tensor, t: int, *, quote: bool = True) -> str:
    """What a row's explanation is of: ``explained 'cat' (p=0.912)``, or ``output 200.65`` for a one-output model
    (a regressor, whose output is no class probability)."""
    if probs.shape[0] == 1:
        return f"output {float(probs[0]):.6g}"
    label = _label_text(labels, t)
    return f"explained {label!r} (p={float(probs[t]):.3f})" if quote else f"{label} (p={float(probs[t]):.3f})"


# ---------------------------------------------------------------------------------------------- evaluate
@click.command("evaluate")
@_common
@click.option("--method", help="The method whose explanation is scored.")
@click.option(
    "--explanation",
    "explanation_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Score this saved explanation (explain's explanation.safetensors) instead of explaining INPUTS again; it "
    "must explain these inputs.",
)
@click.option("--metrics", "metrics_opt", default="deletion,insertion", show_default=True, metavar="A,B,...")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE", help="A method option (repeatable).")
@click.option(
    "--metric-option",
    "metric_options",
    multiple=True,
    metavar="METRIC.KEY=VALUE",
    help="A metric option (repeatable), e.g. deletion.steps=20 (pixel steps: images, signals, tables).",
)
@click.option("--target", help="'prediction' (default), 'label', a class index or a class name.")
@click.option(
    "--masks",
    "masks_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Ground-truth masks for the localisation metrics (pointing_game, energy_pointing_game, relevance_mass, "
    "relevance_rank): a .npy of shape (N, H, W), bool or 0/1, or an .npz holding it as 'masks'; row i is the mask "
    "of input i (with --limit, the first rows).",
)
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the per-sample scores as JSON.",
)
@click.pass_context
def evaluate_cmd(ctx: click.Context, **params: Any) -> None:
    """Explain INPUTS with one method (or take the saved --explanation of them) and score the explanation with each
    metric: mean, std and per-sample values."""
    tables = _apply_config(
        ctx,
        params,
        {
            "method": str,
            "metrics": (str, list),
            "options": dict,
            "metric_options": dict,
            "target": (str, int),
            "masks": str,
        },
    )
    method = params.get("method")
    saved = None
    if params.get("explanation_file") is not None:

        def flagged(name: str) -> bool:  # given on the command line (a config's value is not: the flag wins over it)
            source = ctx.get_parameter_source(name)
            return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")

        if (method and flagged("method")) or (params["options"] and flagged("options")):
            raise _fail(
                "--explanation scores a saved explanation as it was made; drop --method and --option (its method and "
                "options are in the file)."
            )
        if params.get("target") is not None and flagged("target"):
            raise _fail(
                "--explanation scores a saved explanation for the targets it explains (they are in the file); drop "
                "--target, or explain that target anew with --method."
            )
        # a config's method, options and target describe how to explain; the saved explanation already is one
        tables = {k: v for k, v in tables.items() if k != "options"}
        params["options"], params["target"] = (), None
        try:
            saved = whybox.Explanation.load(params["explanation_file"])
        except (WhyboxError, OSError) as exc:
            raise _fail(f"--explanation {str(params['explanation_file'])!r}: {exc}") from None
        method = saved.method
        if method not in whybox.methods():
            raise _fail(
                f"--explanation {str(params['explanation_file'])!r} was made by {method!r}, not a whybox method; this "
                "command scores what whybox explain wrote (score other attributions with whybox.evaluate(model, "
                "inputs, attributions, metric) in Python)."
            )
    if not method:
        raise _fail("--method is required (or --explanation, a saved one); see `whybox methods`.")
    _split(method, flag="--method", valid=whybox.methods())
    metric_names = _split(params["metrics_opt"], flag="--metrics", valid=METRICS.names())
    if not metric_names:
        raise _fail("--metrics names no metric; see `whybox metrics`.")
    opts = _flag_options(_own_options(tables, method), params, "options", scoped=False)
    mopts = _chosen_options(
        _flag_options(tables, params, "metric_options", scoped=True), params, "metric_options", metric_names
    )
    for name in mopts:
        if name not in metric_names:
            raise _fail(
                f"--metric-option sets options of {name!r}, which is not in --metrics ({', '.join(metric_names)})."
            )
        _refuse_arguments(mopts[name], "--metric-option", _EVALUATE_ARGUMENTS, scope=f"{name}.")
        from whybox.api import _options as option_names

        takes_keys = option_names(METRICS.get(name))
        bad = sorted(k for k in mopts[name] if k not in takes_keys)
        if bad:  # before the explanation and the other metrics are computed and printed
            hint = "".join(dict.fromkeys(did_you_mean(b, takes_keys) for b in bad))
            raise _fail(
                f"--metric-option {name}: unknown option(s) {', '.join(map(repr, bad))}.{hint} {name!r} takes: "
                f"{', '.join(takes_keys)}."
            )
    _refuse_arguments(opts, "--option", _EXPLAIN_ARGUMENTS)
    from whybox.runs.job import NEEDS_MASKS

    localising = [m for m in metric_names if m in NEEDS_MASKS]
    if localising and params.get("masks_file") is None:
        raise _fail(
            f"{', '.join(localising)} need{'s' if len(localising) == 1 else ''} ground-truth masks: give --masks "
            "masks.npy, (N, H, W) bool, row i the mask of input i."
        )
    if params.get("masks_file") is not None and not localising:
        raise _fail(
            f"--masks is read by the localisation metrics ({', '.join(NEEDS_MASKS)}); --metrics has none of them."
        )
    if localising and not Path(params["masks_file"]).is_file():
        raise _fail(f"--masks {str(params['masks_file'])!r}: no such file.")
    lm, ds = _load(params)
    explained = None if saved is None else saved.meta.get("feature_names")
    if explained is not None and ds.columns is not None and list(explained) != list(ds.columns):
        raise _fail(  # the metrics read the columns by position: another order scores other features
            f"--explanation explains the columns {', '.join(map(str, explained))}, but these inputs have "
            f"{', '.join(map(str, ds.columns))}; evaluate it on inputs with the columns it was made with, in that order."
        )
    masks = _read_masks(params["masks_file"], len(ds.names), bool(params.get("limit"))) if localising else None
    target = _target(params.get("target"), ds, lm.labels, lm.module)
    from whybox.api import _options

    valid = _options(whybox.get_explainer(method))
    if "batch_size" in valid:
        opts.setdefault("batch_size", params["batch_size"])
    if "seed" in valid:
        opts.setdefault("seed", params["seed"])
    batch = _text_batch(lm, ds)
    text_opts = _text_options(batch, [method])
    if text_opts:
        if saved is None:  # as explain --text explains: over words, [MASK] fill, pad baseline; fill=zero, replace=unk
            from whybox.models.text import explain_text_options

            replace = opts.pop("replace", None)  # explain_text's own option, as explain --text reads it
            try:
                opts = explain_text_options(lm.module, method, batch, opts, replace)
            except WhyboxError as exc:
                raise _fail(f"{method}: {exc}") from None
        from whybox.models.text import word_pool
        from whybox.runs.job import METRICS_KEY

        pool = word_pool(lm.module, saved.method if saved is not None else method)  # a word's value, as explained
        for metric in metric_names:  # the metrics over the same words
            takes = _options(METRICS.get(metric))
            extra = {k: v for k, v in text_opts[METRICS_KEY].items() if k in takes}
            if pool is not None and "pool" in takes:
                extra["pool"] = pool
            mopts[metric] = {**extra, **mopts.get(metric, {})}
    try:
        e = saved if saved is not None else whybox.explain(lm.module, ds.x, method, target=target, **opts)
    except WhyboxError as exc:
        raise _fail(f"{method}: {exc}") from None
    except _MODEL_ERRORS as exc:
        raise _ModelFailed(f"{method} failed: {type(exc).__name__}: {exc}") from None
    out: dict[str, Any] = {"method": method, "samples": ds.names, "metrics": {}}
    click.echo(f"{method} on {len(ds.names)} inputs")
    for metric in metric_names:
        mo = {"batch_size": params["batch_size"], "seed": params["seed"], **mopts.get(metric, {})}
        try:
            extra = {"masks": masks} if metric in NEEDS_MASKS else {}
            labels = ds.labels if getattr(METRICS.get(metric), "reads_labels", False) else None
            res = whybox.evaluate(lm.module, ds.x, e, metric, labels=labels, **extra, **mo)
        except WhyboxError as exc:
            raise _fail(f"{metric}: {'--masks: ' if extra else ''}{exc}") from None
        except _MODEL_ERRORS as exc:
            raise _ModelFailed(f"{metric} failed: {type(exc).__name__}: {exc}") from None
        s = res.scores.numpy()
        ok = s[np.isfinite(s)]
        arrow = "higher is better" if res.higher_is_better else "lower is better"
        mean = float(ok.mean()) if ok.size else math.nan
        std = float(ok.std()) if ok.size else math.nan
        click.echo(  # 4 significant digits, as the report: infidelity's ~1e-6 is no 0.0000
            f"  {metric:<18} mean {mean:<10.4g}  std {std:<10.4g}  ({arrow}; {ok.size}/{s.size} defined)"
        )
        out["metrics"][metric] = {
            "higher_is_better": res.higher_is_better,
            "scores": [float(v) if math.isfinite(v) else None for v in s.tolist()],
            "params": res.params,
        }
    if params.get("json_out"):
        from whybox.report import write_text_atomic

        try:
            Path(params["json_out"]).parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(params["json_out"], json.dumps(out, indent=1, default=str))
        except OSError as exc:
            raise _fail(f"--json: cannot write {str(params['json_out'])!r}: {exc.strerror or exc}") from None
        click.echo(f"wrote {params['json_out']}")


def _read_masks(path: Path, n: int, limited: bool) -> torch.Tensor:
    """The ``(n, H, W)`` bool masks in ``path`` (.npy, or .npz under ``masks``): all its rows, or with ``--limit``
    its first ``n``."""
    try:
        raw = np.load(path, allow_pickle=False)
        if isinstance(raw, np.lib.npyio.NpzFile):
            with raw:
                arr = raw["masks"]
        else:
            arr = np.asarray(raw)
    except KeyError:
        raise _fail(f"--masks {str(path)!r}: an .npz must hold the masks as 'masks'.") from None
    except (OSError, ValueError) as exc:
        raise _fail(f"--masks {str(path)!r}: not a NumPy .npy or .npz file ({exc}).") from None
    if arr.ndim not in (2, 3) or arr.dtype.kind not in "biuf":  # (N, H, W) for images, (N, L) for 1-D signals
        raise _fail(
            f"--masks {str(path)!r}: expected an (N, H, W) array (images; (N, L) for 1-D signals) of bool or 0/1; got "
            f"{arr.dtype} {arr.shape}."
        )
    if arr.dtype.kind != "b" and not np.isin(arr, (0, 1)).all():
        raise _fail(f"--masks {str(path)!r}: holds values other than 0 and 1; give bool masks (pixels of the class).")
    if arr.shape[0] < n or (arr.shape[0] != n and not limited):
        raise _fail(
            f"--masks {str(path)!r}: {arr.shape[0]} masks for {n} inputs; give one mask per input, in their order."
        )
    return torch.from_numpy(arr[:n].astype(bool))


# ---------------------------------------------------------------------------------------------- compare
@click.command("compare")
@_common
@click.option(
    "--methods",
    "methods_opt",
    metavar="A,B,...",
    help="Methods to compare (default: every method that applies to the inputs).",
)
@click.option("--metrics", "metrics_opt", default="deletion,insertion", show_default=True, metavar="A,B,...")
@click.option(
    "--option",
    "options",
    multiple=True,
    metavar="METHOD.KEY=VALUE",
    help="A method option (repeatable), e.g. lime.n_samples=200.",
)
@click.option(
    "--metric-option", "metric_options", multiple=True, metavar="METRIC.KEY=VALUE", help="A metric option (repeatable)."
)
@click.option("--target", type=click.Choice(["prediction", "label"]), default="prediction", show_default=True)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("whybox-run"),
    show_default=True,
    help="The run directory (resumed when it holds the same job).",
)
@click.option(
    "--shard-size", type=click.IntRange(min=1), default=16, show_default=True, help="Samples per unit of work."
)
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--ray-address", help="Ray cluster to join (default: start a local one).")
@click.option(
    "--budget",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds: start no new unit after this; rerun to resume.",
)
@click.option("--overwrite", is_flag=True, help="Replace a run of a different job in --out instead of refusing.")
@click.option(
    "--report/--no-report",
    "write_report",
    default=True,
    show_default=True,
    help="Write report.html into the run directory.",
)
@click.pass_context
def compare_cmd(ctx: click.Context, **params: Any) -> None:
    """Every method x every metric over INPUTS, into a resumable run directory; prints the leaderboard."""
    tables = _apply_config(
        ctx,
        params,
        {
            "methods": (str, list),
            "metrics": (str, list),
            "options": dict,
            "metric_options": dict,
            "out": str,
            "shard_size": int,
            "backend": str,
            "ray_address": str,
            "budget": (int, float),
            "target": (str, int),
        },
    )
    from whybox.runs.job import Job, run_job

    methods = _split(params["methods_opt"], flag="--methods", valid=whybox.methods())
    metric_names = _split(params["metrics_opt"], flag="--metrics", valid=METRICS.names())
    mopts = _flag_options(tables, params, "options", scoped=True)
    metopts = _flag_options(tables, params, "metric_options", scoped=True)
    _refuse_unknown(mopts, params, "options")  # before loading the model and inputs
    _refuse_unknown(metopts, params, "metric_options")
    if params["backend"] == "ray" and params.get("device") not in (None, "cpu"):
        from whybox.runs.loaders import resolve_device

        try:
            on_gpu = resolve_device(params["device"]).type != "cpu"
        except WhyboxError as exc:
            raise _fail(f"--device: {exc}") from None
        if on_gpu:
            raise _fail(
                f"--device {params['device']} with --backend ray: Ray's workers load their own model on the CPU (their "
                "tasks ask Ray for no GPU); use --backend local to run on this machine's GPU."
            )
    loaded: tuple[Any, Any] | None = None
    if not methods:  # every method that applies to these inputs (CAMs and RISE need images; attention a transformer)
        loaded = _load(params)
        methods = methods_for(loaded[1].kind, loaded[0].module)
        methods, left = _model_can_run(methods, loaded[0].module, loaded[1].x)
        methods, costly = _affordable(methods, *loaded, mopts)
        left = "; ".join(w for w in (left, costly) if w)
        if left:
            click.echo(f"left out: {left}", err=True)
    mopts = _chosen_options(mopts, params, "options", methods)
    metopts = _chosen_options(metopts, params, "metric_options", metric_names)
    try:
        job = Job(
            methods=tuple(methods),
            metrics=tuple(metric_names),
            method_options=mopts,
            metric_options=metopts,
            shard_size=params["shard_size"],
            seed=params["seed"],
            target=params["target"],
            batch_size=params["batch_size"],
        )
    except WhyboxError as exc:
        raise _fail(str(exc)) from None
    lm, ds = loaded if loaded is not None else _load(params)
    _target(params["target"], ds, lm.labels, lm.module)
    out_dir = Path(params["out_dir"])
    n = len(ds.names)
    click.echo(
        f"{n} inputs x {len(methods)} methods, metrics {', '.join(metric_names) or 'none'}: "
        f"{math.ceil(n / job.shard_size) * len(methods)} units of up to {job.shard_size} samples -> {out_dir}"
    )
    extra = {
        "model": lm.name,
        "inputs": ", ".join(params["inputs"]),
        "labels": lm.labels,
        "display": "imagenet" if lm.name == "efficientnet-lite0" else "clamp",
        "kind": ds.kind,
        "device": str(params.get("device") or "cpu"),
    }
    if ds.kind == "tabular":  # for the report: the column names, and a coded text column's values by code
        from whybox.models.categorical import vocabularies

        extra["columns"] = list(ds.columns) if ds.columns is not None else None
        extra["categories"] = vocabularies(ds.coder) if getattr(ds, "coder", None) is not None else None
    text_batch = _text_batch(lm, ds)
    if text_batch is not None:  # for the report: each text's words and the positions of their tokens
        extra["words"] = [[[w, idx] for w, idx in spans] for spans in text_batch.word_spans()]
    factory = None
    if params["backend"] == "ray":
        from whybox.runs.loaders import load_model

        factory = partial(
            load_model,
            params["model"],
            weights=params.get("weights"),
            trust_model_file=bool(params.get("trust_model_file")),
        )
        if ds.coder is not None:  # text columns: each worker's adapter decodes the codes with this vocabulary
            from whybox.models.categorical import vocabularies

            factory = partial(
                _coded_model, factory, vocabularies(ds.coder) or {}, dict(getattr(ds.coder, "numeric_dtypes", {}))
            )
        from whybox.models.blackbox_text import BlackBoxTextAdapter

        if isinstance(lm.module, BlackBoxTextAdapter):  # its rows name texts by index: each worker encodes them
            factory = partial(_encoded_texts_model, factory, list(ds.texts))
    budget = params.get("budget")
    try:
        data_options = _text_options(text_batch, job.methods)
        summary = run_job(
            job,
            lm.module,
            ds.x,
            out_dir,
            names=ds.names,
            labels=ds.labels,
            backend=params["backend"],
            ray_address=params.get("ray_address"),
            model_factory=factory,
            budget=budget,
            overwrite=params["overwrite"],
            progress=lambda line: click.echo(line, err=True),
            extra_config=extra,
            data_options=data_options,
        )
    except KeyboardInterrupt:
        click.echo(f"interrupted; finished units are kept in {out_dir}; rerun the same command to resume.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except WhyboxError as exc:
        raise _fail(str(exc)) from None
    if summary.estimate_seconds is not None and budget is not None and summary.estimate_seconds > budget:
        click.echo(f"note: the estimate ({summary.estimate_seconds:.0f}s) exceeds --budget {budget:g}s", err=True)
    try:  # a run file damaged after its unit was checked, or a report that cannot be written: as `whybox report`
        _print_leaderboard(out_dir)
        if params["write_report"]:
            path = _write_report(out_dir, None, 24)
            click.echo(f"wrote {path}")
    except WhyboxError as exc:
        raise _fail(f"--out: {exc}") from None
    except OSError as exc:
        raise _fail(f"cannot write {str(out_dir / 'report.html')!r}: {exc.strerror or exc}") from None
    click.echo(
        f"{summary.n_computed} units computed, {summary.n_skipped} already done, {summary.n_units} in all; "
        f"{summary.n_failed_samples} failed (sample, method) pairs"
        + (f", {summary.n_failed_metric_values} failed metric values" if summary.n_failed_metric_values else "")
        + f"; {summary.seconds:.1f}s"
    )
    if summary.stopped_by_budget:
        click.echo(f"stopped by --budget {budget:g}s; rerun the same command to resume.", err=True)
        _done(EXIT_BUDGET)
    failures = summary.n_failed_samples or summary.n_failed_metric_values
    bad_methods, bad_metrics, reasons = _refused_options(out_dir) if failures else ({}, {}, [])
    for method, reason in bad_methods.items():
        click.echo(f"{method}: every sample refused its options ({reason}); fix --option {method}.KEY=...", err=True)
    for metric, reason in bad_metrics.items():
        click.echo(
            f"{metric}: every sample refused its options ({reason}); fix --metric-option {metric}.KEY=...", err=True
        )
    if bad_methods or bad_metrics:
        _done(EXIT_USAGE)  # a bad option value, found on the inputs: not samples that failed
    for reason, count in reasons:  # why samples failed (the report lists each)
        click.echo(f"{count} x {reason[:300]}", err=True)
    _done(EXIT_FAILURES if failures else EXIT_OK)


def _refused_options(out_dir: Path) -> tuple[dict[str, str], dict[str, str], list[tuple[str, int]]]:
    """``(methods, metrics, reasons)``: the methods whose every sample failed with one and the same
    InvalidParameterError, the metrics whose every value did (an option value that does not fit the inputs, a
    features mask or regions of another width, which only the method or metric can tell on them), and the most
    frequent failure reasons with their counts (what the terminal shows when samples failed otherwise)."""
    from collections import Counter

    from whybox.runs.store import UNDEFINED, RunStore

    store = RunStore.open_existing(out_dir)
    try:
        rows, values = store.rows("results"), store.rows("metric_values")
    finally:
        store.close()

    def refused(groups: dict[str, list[str | None]]) -> dict[str, str]:
        out = {}
        for name, reasons in groups.items():  # None: a success
            if len(set(reasons)) == 1 and reasons[0] is not None and reasons[0].startswith("InvalidParameterError:"):
                out[name] = reasons[0].removeprefix("InvalidParameterError: ")
        return out

    by_method: dict[str, list[str | None]] = {}
    for _, method, status, reason, *_ in rows:
        by_method.setdefault(method, []).append(reason if status == "failed" else None)
    by_metric: dict[str, list[str | None]] = {}
    for _, _, metric, value, _, reason in values:  # values exist where the method explained the sample
        by_metric.setdefault(metric, []).append(reason if value is None and reason != UNDEFINED else None)
    failed = Counter(str(r) for rs in (*by_method.values(), *by_metric.values()) for r in rs if r is not None)
    return refused(by_method), refused(by_metric), failed.most_common(3)


def _print_leaderboard(run_dir: Path) -> None:
    from whybox.runs.report_data import load_run_report

    rep = load_run_report(run_dir, max_samples=0)
    if not rep.metrics:
        return
    heads = [
        f"{m.name} {'↑' if m.higher_is_better else '↓' if m.higher_is_better is False else ''}".strip()
        for m in rep.metrics
    ]
    first = next((m for m in rep.metrics if m.higher_is_better is not None), None)

    def key(method: str) -> tuple[bool, float]:
        if first is None:
            return (False, 0.0)
        v = rep.leaderboard[method].get(first.name)
        return (v is None, 0.0 if v is None else (-v if first.higher_is_better else v))

    rows = sorted(rep.leaderboard, key=key)
    width = max(len(r) for r in rows)
    click.echo(f"{'method':<{width}}  " + "  ".join(f"{h:>14}" for h in heads))
    for r in rows:
        vals = [rep.leaderboard[r].get(m.name) for m in rep.metrics]
        click.echo(f"{r:<{width}}  " + "  ".join(f"{'-' if v is None else f'{v:.4g}':>14}" for v in vals))


def _write_report(run_dir: Path, out: Path | None, max_samples: int) -> Path:
    from whybox.report.run_report import write_run_report
    from whybox.runs.report_data import load_run_report, readings_of
    from whybox.runs.store import REPORT_NAME

    rep = load_run_report(run_dir, max_samples=max_samples)
    path = out if out is not None else run_dir / REPORT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)  # --out in a new folder (as --json's)
    return write_run_report(rep, path, max_samples=max_samples, readings=readings_of(run_dir))


# ---------------------------------------------------------------------------------------------- report
@click.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The HTML file (default: RUN_DIR/report.html).",
)
@click.option(
    "--max-samples", type=click.IntRange(min=0), default=24, show_default=True, help="Rows of the per-sample grid."
)
def report_cmd(run_dir: Path, out: Path | None, max_samples: int) -> None:
    """Write the self-contained HTML report of the run in RUN_DIR."""
    try:
        path = _write_report(run_dir, out, max_samples)
    except WhyboxError as exc:
        raise _fail(f"RUN_DIR: {exc}") from None
    except OSError as exc:  # writing the page (reading the run's files fails as a WhyboxError above)
        where = (
            f"--out: cannot write {str(out)!r}" if out is not None else f"cannot write {str(run_dir / 'report.html')!r}"
        )
        raise _fail(f"{where}: {exc.strerror or exc}") from None
    click.echo(f"wrote {path}")


def register(group: click.Group) -> None:
    """Add these commands to the ``whybox`` group."""
    for cmd in (explain_cmd, evaluate_cmd, compare_cmd, report_cmd, metrics_cmd):
        group.add_command(cmd)
