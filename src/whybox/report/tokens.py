"""Token and word attributions as heatmaps: an HTML fragment, a self-contained page, or one terminal line.

Every token is shown as text with a background colour: red for a positive value, blue for a negative one,
with an opacity (HTML) or intensity (terminal) of ``|v| / scale``, clipped to 1. ``scale`` defaults to the
largest ``|v|``; when every value is 0 every token is left uncoloured.

Display rules, the same for all three outputs:

* A token ``"##xyz"`` (WordPiece continuation) is shown as ``"xyz"`` joined to the previous token with no
  space; in HTML its span has the class ``subword`` and a ``data-subword`` attribute. ``"##"`` alone is an
  ordinary token. Other tokenizers' markers (``Ġ``, ``▁``) are shown as they are.
* Control characters (C0, DEL, C1), the line and paragraph separators U+2028/U+2029, the bidirectional
  overrides and isolates and lone surrogates are shown as Python escapes (``"\\x1b"``, ``"\\n"``,
  ``"\\u202e"``), so a token can neither inject terminal sequences nor break or reorder the line.
* A token made only of whitespace is shown visibly: each space as ``␣``, other whitespace escaped
  (``"\\t"``, ``"\\xa0"``). The empty token is shown as ``∅``.
* A literal backslash is shown as it is (so the token ``"\\x1b"``, four characters, looks like an escaped
  ESC; the escape is for the eye, not a round trip).

Values must be finite or NaN: NaN marks a missing value (a special token left out, say) and is shown grey,
with the title ``"nan"``; it is ignored when the default scale is computed. ``±inf`` is an error.

In HTML every token goes through jinja's autoescape, as text content only: the only attributes are the
class, the colour and the ``title`` (the formatted value), none built from a token.
"""

from __future__ import annotations

import math
import numbers
import unicodedata
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from whybox.errors import InvalidInputError, InvalidParameterError
from whybox.report.html import _environment

__all__ = ["TOKENS_CSP", "render_tokens_html", "render_tokens_page", "render_tokens_terminal"]

#: No script, nothing from the network: the page is text with inline styles.
TOKENS_CSP = "default-src 'none'; style-src 'unsafe-inline'"

_POSITIVE = (239, 68, 68)  # red; black text stays readable on it at full opacity
_NEGATIVE = (59, 130, 246)  # blue
_MISSING = (128, 128, 128)  # grey, for NaN
_MISSING_ALPHA = 0.5
_SUBWORD = "##"
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

_MACRO = (
    "{% macro tokens(title, items) %}"
    '<div class="tokens" style="white-space: pre-wrap; line-height: 1.8">'
    '{% if title is not none %}<p class="tokens-title">{{ title }}</p>{% endif %}'
    "{% for t in items %}{{ t.sep }}"
    '<span class="{{ t.cls }}"{% if t.subword %} data-subword=""{% endif %}'
    ' style="background: {{ t.bg }}" title="{{ t.value }}">{{ t.text }}</span>'
    "{% endfor %}</div>"
    "{% endmacro %}"
)
_FRAGMENT = _MACRO + "{{ tokens(title, items) }}"
_PAGE = (
    _MACRO
    + """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{{ csp }}">
<meta name="referrer" content="no-referrer">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; max-width: 60rem; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.05rem; margin: 1.5rem 0 .4rem; overflow-wrap: anywhere; }
.legend { color: #555; font-size: .9rem; }
.tokens { font-family: ui-monospace, monospace; overflow-wrap: anywhere; }
.tokens span { color: #000; padding: 0 1px; border-radius: 3px; }
</style>
</head>
<body>
<h1>{{ title }}</h1>
<p class="legend">Red: positive, blue: negative, opacity: |value| / {{ scale_text }}; grey: missing (NaN).
Hover a token for its value.</p>
{% for row in rows %}
<section>
<h2>{{ row.heading }}</h2>
{{ tokens(none, row.spans) }}
</section>
{% endfor %}
</body>
</html>
"""
)


# ---------------------------------------------------------------------------------------------- pure helpers
def _escape_char(ch: str) -> str:
    return ch.encode("unicode_escape").decode("ascii")  # "\x1b", "\n", "\u202e", "\ud800"


def _unsafe(ch: str) -> bool:
    """Whether ``ch`` must be shown escaped: it could move the cursor, break or reorder the line."""
    return unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") or ch in _BIDI


def _visible(text: str) -> str:
    """``text`` as displayed (after the subword marker is removed): see the module docstring."""
    if text == "":
        return "∅"
    if text.isspace():
        return "".join("␣" if ch == " " else _escape_char(ch) for ch in text)
    return "".join(_escape_char(ch) if _unsafe(ch) else ch for ch in text)


def _split_subword(token: str) -> tuple[str, bool]:
    if token.startswith(_SUBWORD) and len(token) > len(_SUBWORD):
        return token[len(_SUBWORD) :], True
    return token, False


def _format_value(v: float) -> str:
    """``+0.42``, ``-1.5e-05``, ``+0``, ``nan``: three significant digits, always signed."""
    if math.isnan(v):
        return "nan"
    return format(v + 0.0, "+.3g")  # + 0.0 turns -0.0 into 0.0


def _alphas(values: np.ndarray, scale: float | None) -> np.ndarray:
    """Opacity per value: ``|v| / scale`` clipped to [0, 1]; 0 for NaN and when the scale is 0.

    Shapes
    ------
    values
        ``(T,)`` float64, finite or NaN.
    returns
        ``(T,)`` float64 in [0, 1].
    """
    mag = np.abs(values)
    if scale is None:
        finite = mag[~np.isnan(mag)]
        scale = float(finite.max()) if finite.size else 0.0
    if scale == 0.0:
        return np.zeros_like(mag)
    return np.clip(np.nan_to_num(mag, nan=0.0) / scale, 0.0, 1.0)


def _colour(v: float, alpha: float) -> tuple[tuple[int, int, int], float]:
    if math.isnan(v):
        return _MISSING, _MISSING_ALPHA
    return (_POSITIVE if v >= 0 else _NEGATIVE), alpha


def _blend_on_white(rgb: tuple[int, int, int], alpha: float) -> tuple[int, int, int]:
    r, g, b = (round(255 + alpha * (c - 255)) for c in rgb)
    return r, g, b


# ---------------------------------------------------------------------------------------------- validation
def _check_tokens(tokens: Any, name: str) -> list[str]:
    if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Sequence):
        raise InvalidInputError(
            f"{name} must be a sequence of str (one per token, e.g. a list); got {type(tokens).__name__}."
        )
    out = list(tokens)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise InvalidInputError(f"{name}[{i}] must be a str; got {type(t).__name__} {t!r}.")
    return out


def _check_values(values: Any, n: int, name: str, tokens_name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        if values.is_complex():
            raise InvalidInputError(f"{name} must be real numbers; got a complex tensor ({values.dtype}).")
        arr = values.detach().to(device="cpu", dtype=torch.float64).numpy()
    else:
        try:
            arr = np.asarray(values)
        except (TypeError, ValueError) as e:
            raise InvalidInputError(
                f"{name} must be a 1-D sequence of real numbers; got {type(values).__name__}."
            ) from e
        if arr.dtype.kind not in "biuf":
            raise InvalidInputError(f"{name} must be real numbers; got dtype {arr.dtype}.")
        arr = arr.astype(np.float64)
    if arr.ndim != 1:
        raise InvalidInputError(
            f"{name} must be 1-D (one value per token); got shape {tuple(arr.shape)}. Pick one row first, "
            f"e.g. {name}[0]."
        )
    if arr.shape[0] != n:
        raise InvalidInputError(
            f"{tokens_name} and {name} must have the same length; got {n} tokens and {arr.shape[0]} values."
        )
    bad = np.flatnonzero(np.isinf(arr))
    if bad.size:
        i = int(bad[0])
        raise InvalidInputError(
            f"{name} must be finite or NaN (NaN is shown grey, as missing); got {arr[i]} at index {i}."
        )
    return arr


def _check_scale(scale: Any) -> float | None:
    if scale is None:
        return None
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale) or scale <= 0:
        raise InvalidParameterError(f"scale must be a finite number > 0, or None (the largest |value|); got {scale!r}.")
    return float(scale)


def _items(tokens: list[str], values: np.ndarray, scale: float | None, *, words: bool = False) -> list[dict[str, Any]]:
    items = []
    for i, (token, v, a) in enumerate(zip(tokens, values.tolist(), _alphas(values, scale).tolist(), strict=True)):
        text, subword = (token, False) if words else _split_subword(token)
        rgb, alpha = _colour(v, a)
        items.append(
            {
                "sep": "" if (i == 0 or subword) else " ",
                "subword": subword,
                "cls": "tok subword" if subword else "tok",
                "text": _visible(text),
                "value": _format_value(v),
                "rgb": rgb,
                "alpha": alpha,
                "bg": f"rgba({rgb[0]}, {rgb[1]}, {rgb[2]}, {alpha:.3f})",
            }
        )
    return items


# ---------------------------------------------------------------------------------------------- public API
def render_tokens_html(
    tokens: Sequence[str],
    values: Sequence[float] | np.ndarray | torch.Tensor,
    *,
    scale: float | None = None,
    title: str | None = None,
    words: bool = False,
) -> str:
    """Render token attributions as an HTML fragment: a ``<div class="tokens">`` of one ``<span>`` per token.

    Parameters
    ----------
    tokens
        The tokens, as text (a list of str; a bare str is refused).
    values
        One attribution per token, finite or NaN (NaN: shown grey, title ``"nan"``).
    scale
        The ``|value|`` shown at full opacity (larger ones are clipped); ``None``: the largest finite ``|value|``.
    title
        A caption (escaped) shown above the tokens in a ``<p class="tokens-title">``; ``None``: no caption.
    words
        ``True``: the items are whole words (a ``"##"`` at their start is their own text, not a subword marker).

    Returns
    -------
    str
        The fragment. Each span has ``style="background: rgba(r, g, b, a)"`` (red for ``v >= 0``, blue for
        ``v < 0``, ``a = min(|v| / scale, 1)``) and ``title`` = the value with three significant digits and a
        sign (``"+0.42"``). Subword spans (``"##ing"``) carry the class ``subword`` and ``data-subword`` and
        follow the previous span without a space. See the module docstring for how tokens are displayed.

    Raises
    ------
    InvalidInputError
        If ``tokens`` is not a sequence of str, ``values`` is not 1-D real, the lengths differ, or a value is inf.
    InvalidParameterError
        If ``scale`` is not a finite number > 0 or ``None``.

    Shapes
    ------
    values
        ``(T,)`` with ``T = len(tokens)``: a list, numpy array or tensor (any device; it is copied to the CPU).
    """
    toks = _check_tokens(tokens, "tokens")
    vals = _check_values(values, len(toks), "values", "tokens")
    s = _check_scale(scale)
    if title is not None and not isinstance(title, str):
        raise InvalidParameterError(f"title must be a str or None; got {type(title).__name__}.")
    template = _environment().from_string(_FRAGMENT)
    return template.render(title=title, items=_items(toks, vals, s, words=words))


def render_tokens_page(
    rows: Sequence[tuple[str, Sequence[str], Sequence[float] | np.ndarray | torch.Tensor]],
    *,
    title: str,
    scale: float | None = None,
    words: bool = False,
) -> str:
    """Render several token attributions as one self-contained HTML page.

    Parameters
    ----------
    rows
        ``(heading, tokens, values)`` per row, shown as an ``<h2>`` (escaped) and the fragment of
        :func:`render_tokens_html`.
    title
        The page's ``<title>`` and ``<h1>`` (escaped).
    scale
        One scale for every row, so that colours compare across rows; ``None``: each row uses its own largest
        ``|value|``.
    words
        ``True``: the items are whole words (see :func:`render_tokens_html`).

    Returns
    -------
    str
        The page: no script, and a Content-Security-Policy (:data:`TOKENS_CSP`) that refuses everything but
        inline styles.

    Raises
    ------
    InvalidInputError
        If a row is not a ``(str, tokens, values)`` triple, or its tokens and values are invalid (the message
        names the row, e.g. ``rows[2][2]`` for its values).
    InvalidParameterError
        If ``title`` is not a str, or ``scale`` is not a finite number > 0 or ``None``.
    """
    if not isinstance(title, str):
        raise InvalidParameterError(f"title must be a str; got {type(title).__name__}.")
    s = _check_scale(scale)
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence):
        raise InvalidInputError(f"rows must be a sequence of (heading, tokens, values); got {type(rows).__name__}.")
    prepared = []
    for r, row in enumerate(rows):
        if not isinstance(row, Sequence) or isinstance(row, (str, bytes)) or len(row) != 3:
            raise InvalidInputError(f"rows[{r}] must be a (heading, tokens, values) triple; got {row!r:.80}.")
        heading, tokens, values = row
        if not isinstance(heading, str):
            raise InvalidInputError(f"rows[{r}][0] (the heading) must be a str; got {type(heading).__name__}.")
        toks = _check_tokens(tokens, f"rows[{r}][1]")
        vals = _check_values(values, len(toks), f"rows[{r}][2]", f"rows[{r}][1]")
        prepared.append({"heading": heading, "spans": _items(toks, vals, s, words=words)})
    template = _environment().from_string(_PAGE)
    return template.render(
        csp=TOKENS_CSP,
        title=title,
        rows=prepared,
        scale_text="each row's largest |value|" if s is None else _format_value(s).lstrip("+"),
    )


def render_tokens_terminal(
    tokens: Sequence[str],
    values: Sequence[float] | np.ndarray | torch.Tensor,
    *,
    color: bool = True,
    scale: float | None = None,
    words: bool = False,
) -> str:
    """Render token attributions as one line of text for a terminal.

    Parameters
    ----------
    tokens, values, scale, words
        As in :func:`render_tokens_html` (``words=True``: whole words, a leading ``"##"`` kept as their text).
    color
        ``True``: each token in black on a 24-bit background (``ESC[38;2;0;0;0;48;2;r;g;bm`` ... ``ESC[0m``),
        white blended towards red (``v >= 0``) or blue (``v < 0``) by ``min(|v| / scale, 1)``, grey for NaN.
        ``False``: plain text, each token followed by its value in brackets, ``great[+0.42]``.

    Returns
    -------
    str
        One line, without a trailing newline. Tokens are separated by a space, subwords (unless ``words``) joined
        to the previous token; control characters in tokens are shown as escapes, so the only ESC characters in the line are
        the colour sequences above.

    Raises
    ------
    InvalidInputError, InvalidParameterError
        As in :func:`render_tokens_html`.
    """
    if not isinstance(color, bool):
        raise InvalidParameterError(f"color must be a bool; got {color!r}.")
    if not isinstance(words, bool):
        raise InvalidParameterError(f"words must be a bool (True: whole words, not subword tokens); got {words!r}.")
    toks = _check_tokens(tokens, "tokens")
    vals = _check_values(values, len(toks), "values", "tokens")
    s = _check_scale(scale)
    parts = []
    for it in _items(toks, vals, s, words=words):
        if color:
            r, g, b = _blend_on_white(it["rgb"], it["alpha"])
            parts.append(f"{it['sep']}\x1b[38;2;0;0;0;48;2;{r};{g};{b}m{it['text']}\x1b[0m")
        else:
            parts.append(f"{it['sep']}{it['text']}[{it['value']}]")
    return "".join(parts)
