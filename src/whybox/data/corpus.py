"""An offline English text corpus: the docstrings of Python's standard library, split into paragraphs.

A corpus for activation statistics (sparse autoencoders, top-activating contexts) that needs no download and no
extra package: every Python ships it. :func:`stdlib_docstrings` imports the standard library's modules (the
top-level names of ``sys.stdlib_module_names`` and, for packages, their public submodules), reads the docstrings
of each module, of the classes and functions it defines, and of those classes' public methods, properties and
nested classes, splits them into paragraphs (at blank lines), normalises whitespace, drops paragraphs under 40
characters and duplicates, and sorts the rest by their SHA-256 (a fixed, content-only order that mixes topics, so
``limit=n`` takes a spread sample rather than the paragraphs that sort first alphabetically).

The walk runs in a child interpreter of the same Python with site-packages off (``python -I -S -B``), so the
list depends only on the Python build: not on installed packages (transformers adds methods to
``logging.Logger``, pytest replaces ``sys.unraisablehook``), not on what the caller imported, not on the hash
seed; and the calling process imports nothing and sees no output or window. On CPython 3.11.7 (this project's
venv) it is 8,310 paragraphs, 1.07 million characters: 276,262 MiniLM word pieces without the specials, 263,451 of
them under MiniLM's 128-token truncation. Building it takes about 0.3 s (a child interpreter importing 478
modules); the list is cached per process.

What is left out, and why: private modules (a leading ``_``: mostly C accelerators whose public twins carry the
same docs; ``__hello__``/``__phello__`` print on import); ``__main__`` submodules (importing one runs a program:
``venv``, ``ensurepip``, ``unittest``); test packages (``test``, ``tests``, ``idle_test``); modules with side
effects or a display: ``antigravity`` (opens a browser), ``this`` (prints), ``idlelib``, ``tkinter``,
``turtle``, ``turtledemo``, ``readline`` and ``rlcompleter`` (touch the terminal); ``lib2to3`` (may write grammar
pickles next to the interpreter on import) and ``distutils`` (setuptools shims it). Every import runs inside
``try``/``except`` with stdout and stderr captured and warnings silenced; a module that fails to import
(Windows-only ones, missing C libraries; on this Linux build: ``msilib``, ``msvcrt``, ``nt``, ``winreg``,
``winsound``) is skipped.

Only an object's *own* docstring is read (``inspect.cleandoc(obj.__doc__)``, the cleaning ``inspect.getdoc``
does, without its fallback to a base class's docstring), so each paragraph belongs to the object it documents
and re-exported or inherited objects add nothing.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import inspect
import io
import json
import pkgutil
import re
import subprocess
import sys
import tempfile
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["MIN_CHARS", "SKIPPED_MODULES", "stdlib_docstrings"]

#: Paragraphs shorter than this many characters (after whitespace normalisation) are dropped.
MIN_CHARS = 40
#: Top-level standard-library names never imported (side effects, a display, or docs that are not the stdlib's).
SKIPPED_MODULES = frozenset(
    {
        "antigravity",
        "this",
        "idlelib",
        "tkinter",
        "turtle",
        "turtledemo",
        "readline",
        "rlcompleter",
        "lib2to3",
        "distutils",
        "test",
    }
)
_SKIPPED_PARTS = frozenset({"__main__", "test", "tests", "idle_test"})
_PARAGRAPH = re.compile(r"\n[ \t]*\n")


def stdlib_docstrings(limit: int | None = None) -> list[str]:
    """Paragraphs of the standard library's docstrings: deterministic, deduplicated, at least 40 characters.

    Parameters
    ----------
    limit
        Return only the first ``limit`` paragraphs of the full list (its order is by SHA-256, so any prefix is
        a spread sample); ``None`` returns all of them.

    Returns
    -------
    list of str
        A new list each call (the cached full list is never handed out). 8,310 paragraphs on CPython 3.11.7.

    Raises
    ------
    InvalidParameterError
        ``limit`` is not ``None`` or an int >= 0.
    """
    from whybox.errors import InvalidParameterError

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise InvalidParameterError(f"limit must be None or an int >= 0; got {limit!r}.")
    paragraphs = _cached_paragraphs()
    return list(paragraphs if limit is None else paragraphs[:limit])


@functools.lru_cache(maxsize=1)
def _cached_paragraphs() -> tuple[str, ...]:
    return tuple(_collect_paragraphs())


def _collect_paragraphs() -> list[str]:
    """The whole list, built afresh by :func:`_walk` in a child interpreter started with ``-I -S -B``.

    ``-S`` leaves site-packages off the path, so no installed package can import itself in and monkeypatch a
    standard-library class (transformers adds ``logging.Logger.warning_once``; pytest replaces
    ``sys.unraisablehook``); ``-I`` ignores ``PYTHON*`` variables and the user's site; ``-B`` writes no bytecode.
    The calling process imports nothing; each child draws its own hash seed.
    """
    if not sys.executable:
        return _walk()  # an embedded interpreter without a python binary: walk here instead
    with tempfile.TemporaryDirectory(prefix="whybox-corpus-") as tmp:
        out = Path(tmp) / "paragraphs.json"
        cmd = [sys.executable, "-I", "-S", "-B", str(Path(__file__).resolve()), str(out)]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        if res.returncode != 0 or not out.is_file():
            raise RuntimeError(
                f"building the standard-library corpus failed (exit {res.returncode}) in {' '.join(cmd)}: "
                f"{res.stderr[-2000:]}"
            )
        paragraphs: list[str] = json.loads(out.read_text(encoding="utf-8"))
    return paragraphs


def _walk() -> list[str]:
    """Import, read, split, normalise, filter, deduplicate and sort, in this process."""
    seen: set[str] = set()
    with warnings.catch_warnings():  # deprecated modules warn on import and on some attribute reads
        warnings.simplefilter("ignore")
        for module in _stdlib_modules():
            for doc in _docstrings(module):
                for para in _PARAGRAPH.split(doc):
                    text = " ".join(para.split())
                    if len(text) >= MIN_CHARS:
                        seen.add(text)
    return sorted(seen, key=lambda s: (hashlib.sha256(s.encode("utf-8")).hexdigest(), s))


def _quiet_import(name: str) -> types.ModuleType | None:
    """``importlib.import_module(name)`` with stdout/stderr captured and warnings off; ``None`` if it fails."""
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        try:
            return importlib.import_module(name)
        except BaseException as exc:  # any failure (even SystemExit) just skips the module
            if isinstance(exc, KeyboardInterrupt):
                raise
            return None


def _stdlib_modules() -> Iterator[types.ModuleType]:
    """The importable public standard-library modules and their public submodules, in name order."""
    names = sorted(n for n in sys.stdlib_module_names if not n.startswith("_") and n not in SKIPPED_MODULES)
    done: set[str] = set()
    stack = list(reversed(names))
    while stack:
        name = stack.pop()
        if name in done:
            continue
        done.add(name)
        module = _quiet_import(name)
        if module is None:
            continue
        yield module
        path = getattr(module, "__path__", None)
        if path is None:
            continue
        subs = sorted(
            f"{name}.{info.name}"
            for info in pkgutil.iter_modules(list(path))
            if not info.name.startswith("_") and info.name not in _SKIPPED_PARTS
        )
        stack.extend(reversed(subs))


def _own_doc(obj: Any) -> str | None:
    doc = getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if isinstance(doc, str) and doc.strip() else None


def _docstrings(module: types.ModuleType) -> Iterator[str]:
    """The module's docstring, then those of the classes and functions it defines (``__module__`` is the module)
    and of those classes' public methods, properties and nested classes (and ``__init__``/``__call__`` when they
    are Python functions with their own docstring)."""
    doc = _own_doc(module)
    if doc:
        yield doc
    try:
        members = sorted(vars(module).items())
    except TypeError:
        return
    for name, obj in members:
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj):
            yield from _class_docstrings(obj, depth=0)
        elif inspect.isroutine(obj):
            doc = _own_doc(obj)
            if doc:
                yield doc


def _class_docstrings(cls: type, depth: int) -> Iterator[str]:
    doc = _own_doc(cls)
    if doc:
        yield doc
    for name, attr in sorted(vars(cls).items()):
        if name.startswith("_") and not (name in ("__init__", "__call__") and inspect.isfunction(attr)):
            continue
        target = attr.__func__ if isinstance(attr, (classmethod, staticmethod)) else attr
        if inspect.isclass(target):
            if depth < 2 and getattr(target, "__module__", None) == cls.__module__:
                yield from _class_docstrings(target, depth + 1)
        elif inspect.isroutine(target) or inspect.isdatadescriptor(target):
            if not _from_stdlib(target.fget if isinstance(target, property) else target):
                continue  # set on the class by a third-party package (transformers adds Logger.warning_once)
            doc = _own_doc(target)
            if doc:
                yield doc


def _from_stdlib(obj: Any) -> bool:
    """Whether ``obj`` was defined in the standard library (C descriptors without ``__module__`` count)."""
    mod = getattr(obj, "__module__", None)
    return not isinstance(mod, str) or mod.partition(".")[0] in sys.stdlib_module_names


if __name__ == "__main__":  # the child of _collect_paragraphs: only the standard library is importable here
    Path(sys.argv[1]).write_text(json.dumps(_walk()), encoding="utf-8")
