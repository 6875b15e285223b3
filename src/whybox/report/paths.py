"""Output file names built from indices and sanitised names, checked to stay inside the output directory."""

from __future__ import annotations

import os
import re
from pathlib import Path

from whybox.errors import InvalidParameterError

__all__ = ["output_path", "safe_component"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_MAX_LEN = 40


def safe_component(name: str) -> str:
    """A file-name fragment from arbitrary text: runs of characters outside ``[A-Za-z0-9_-]`` become one
    ``_``, leading/trailing ``_`` are dropped, the result is cut to 40 characters; ``"x"`` if nothing is left.

    ``"../../x<script>"`` becomes ``"x_script"``: no separator, no dot, nothing a shell or browser reads
    specially. Uniqueness is not promised; callers prefix an index.
    """
    cleaned = _UNSAFE.sub("_", str(name)).strip("_")[:_MAX_LEN].strip("_")
    return cleaned or "x"


def output_path(out_dir: str | os.PathLike[str], filename: str) -> Path:
    """``out_dir / filename``, refusing anything that would land outside ``out_dir``.

    Parameters
    ----------
    out_dir
        The output directory.
    filename
        One plain path component (no separators, not ``.`` or ``..``), normally built with
        :func:`safe_component` and an index.

    Raises
    ------
    InvalidParameterError
        If ``filename`` is not a single plain component or the resolved path (symlinks followed) is not
        inside ``out_dir``.
    """
    if (
        not isinstance(filename, str)
        or not filename
        or filename in (".", "..")
        or "/" in filename
        or "\\" in filename
        or "\x00" in filename
        or (os.altsep is not None and os.altsep in filename)
    ):
        raise InvalidParameterError(
            f"filename must be one plain path component; got {filename!r}. Build it with safe_component()."
        )
    root = Path(out_dir).resolve()
    path = (root / filename).resolve()
    if path.parent != root:
        raise InvalidParameterError(f"output file {filename!r} would be written outside {str(root)!r}; refusing.")
    return path
