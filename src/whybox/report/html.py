"""The static HTML index of a report: escaped, self-contained, behind a restrictive Content-Security-Policy."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

__all__ = ["CSP", "render_demo_index", "write_text_atomic"]

#: Nothing from the network, no scripts; images only from the report's own folder (or data: URIs).
CSP = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'"


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        autoescape=True,  # every string from data (labels, names, errors) is HTML-escaped
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render_demo_index(
    *,
    title: str,
    model: str,
    version: str,
    methods: list[dict[str, Any]],
    images: list[dict[str, Any]],
    leaderboard: dict[str, Any] | None = None,
    stability: dict[str, Any] | None = None,
) -> str:
    """Render ``templates/demo_index.html``.

    Parameters
    ----------
    title, model, version
        Page title, model name and whybox version.
    methods
        One dict per method: ``name``, ``options`` (text), ``seconds``, ``n_forward``, ``n_backward``,
        ``error`` (text or ``None``).
    images
        One dict per image: ``name``, ``small`` (bool: draw pixels crisp), ``input_src``, ``grid_src``
        (relative file names or ``None``), ``top`` (list of ``{"label", "prob"}``) and ``overlays`` (list of
        ``{"method", "src", "seconds", "n_forward", "n_backward", "note", "reading"}``).
    leaderboard
        ``None`` (no section) or ``{"protocol", "sorted_by"}`` (text) and ``"rows"``: one dict per method,
        ``rank`` (int or ``"-"``), ``method``, ``deletion`` and ``insertion`` (mean AUCs or ``None``), ``note``
        and ``error`` (bool: show the note as an error).
    stability
        ``None`` (no section) or ``{"image", "protocol", "src"}`` (text; the figure's file name or ``None``),
        ``"stats"`` (list of ``{"name", "value", "meaning"}``) and ``"error"`` (text or ``None``).

    Returns
    -------
    str
        The HTML page. Image sources must be relative file names; they are escaped like everything else.
    """
    source = resources.files("whybox.report").joinpath("templates/demo_index.html").read_text(encoding="utf-8")
    template = _environment().from_string(source)
    return template.render(
        csp=CSP,
        title=title,
        model=model,
        version=version,
        methods=methods,
        images=images,
        leaderboard=leaderboard,
        stability=stability,
    )


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    if not path.name or path.is_dir():  # '' or '.': no file name (the CLI reports an OSError as a usage error)
        raise IsADirectoryError(f"{str(path)!r} is a folder, not a file name; give the path of a file to write")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # normal permissions, unlike mkstemp's 0600
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
