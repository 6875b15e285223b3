"""Token attribution heatmaps (``whybox.report.tokens``): HTML fragment, page and terminal line.

Properties: hostile tokens change nothing in the fragment's element structure and come back as text, with no
attribute built from them; the colour follows the sign and its opacity/intensity grows with ``|v| / scale``;
subwords are joined, whitespace and control characters shown visibly; in the terminal every ESC is one of our
SGR colour sequences; invalid inputs fail with messages that name the parameter.
"""

from __future__ import annotations

import html.parser
import re
import unicodedata
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import whybox.report
from whybox.errors import InvalidInputError, InvalidParameterError
from whybox.report import TOKENS_CSP, render_tokens_html, render_tokens_page, render_tokens_terminal

HOSTILE = [
    "<script>alert(1)</script>",
    '"onmouseover="x',
    "'onfocus='y",
    "</span>",
    "</div><script>",
    "javascript:alert(1)",
    "&amp;",
    "&#60;b&#62;",
    "{{ 7*7 }}",
    "<!--",
    "]]>",
]
SGR = re.compile(r"\x1b\[[0-9;]*m")
SPAN_ATTRS = {"class", "style", "title", "data-subword"}
RGBA = re.compile(r"^background: rgba\((\d+), (\d+), (\d+), ([0-9.]+)\)$")
RED, BLUE, GREY = (239, 68, 68), (59, 130, 246), (128, 128, 128)


class _Parsed(html.parser.HTMLParser):
    """Start tags in order, each span's attributes and text, and the text between spans."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.spans: list[dict[str, str | None]] = []
        self.texts: list[str] = []
        self.gaps: list[str] = []  # text before each span (after the previous one)
        self.headings: list[str] = []
        self.metas: list[dict[str, str | None]] = []
        self.all_attrs: list[tuple[str, str | None]] = []
        self._in_span = False
        self._in_heading = False
        self._gap = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.all_attrs.extend(attrs)
        if tag == "span":
            self.spans.append(dict(attrs))
            self.texts.append("")
            self.gaps.append(self._gap)
            self._in_span = True
        elif tag in ("h1", "h2"):
            self.headings.append("")
            self._in_heading = True
        elif tag == "meta":
            self.metas.append(dict(attrs))

    def handle_endtag(self, tag: str) -> None:
        if tag == "span":
            self._in_span = False
            self._gap = ""
        elif tag in ("h1", "h2"):
            self._in_heading = False

    def handle_data(self, data: str) -> None:
        if self._in_span:
            self.texts[-1] += data
        else:
            self._gap += data
        if self._in_heading:
            self.headings[-1] += data


def parse(text: str) -> _Parsed:
    p = _Parsed()
    p.feed(text)
    p.close()
    return p


def rgba(span: dict[str, str | None]) -> tuple[tuple[int, int, int], float]:
    m = RGBA.match(span["style"] or "")
    assert m, span["style"]
    return (int(m[1]), int(m[2]), int(m[3])), float(m[4])


def term_backgrounds(line: str) -> list[tuple[int, int, int]]:
    return [(int(r), int(g), int(b)) for r, g, b in re.findall(r"\x1b\[38;2;0;0;0;48;2;(\d+);(\d+);(\d+)m", line)]


def _unsafe(ch: str) -> bool:
    return (
        unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp")
        or ch in "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
    )


# ---------------------------------------------------------------------------------------------- escaping
def test_hostile_tokens_stay_text_in_the_fragment() -> None:
    values = np.linspace(-1, 1, len(HOSTILE))
    out = render_tokens_html(HOSTILE, values, title="<script>alert('t')</script>")
    p = parse(out)
    assert "script" not in p.tags
    assert p.tags == ["div", "p", *(["span"] * len(HOSTILE))]
    assert p.texts == HOSTILE
    assert [s["title"] for s in p.spans] == [format(float(v) + 0.0, "+.3g") for v in values]
    for span in p.spans:
        assert set(span) <= SPAN_ATTRS
    for _, value in p.all_attrs:
        assert not (value or "").strip().lower().startswith("javascript:")
    assert "<script>" not in out and "</span></span>" not in out


def test_no_attribute_is_built_from_a_token() -> None:
    """The same values with different tokens give identical attributes: tokens only ever reach text."""
    a = parse(render_tokens_html(HOSTILE, np.arange(len(HOSTILE), dtype=float)))
    b = parse(render_tokens_html(["x"] * len(HOSTILE), np.arange(len(HOSTILE), dtype=float)))
    assert a.spans == b.spans


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=8), max_size=6))
def test_arbitrary_tokens_keep_one_span_each_and_no_unsafe_character(tokens: list[str]) -> None:
    out = render_tokens_html(tokens, np.ones(len(tokens)))
    p = parse(out)
    assert p.tags.count("span") == len(tokens)
    assert "script" not in p.tags
    assert not any(_unsafe(ch) for ch in out)
    out.encode("utf-8")  # lone surrogates are escaped, so the page can be written


# ---------------------------------------------------------------------------------------------- display rules
def test_subwords_are_joined_and_marked() -> None:
    p = parse(render_tokens_html(["the", "play", "##ing", "##s", "##", "end"], [1, 2, 3, 4, 5, 6]))
    assert p.texts == ["the", "play", "ing", "s", "##", "end"]
    assert p.gaps == ["", " ", "", "", " ", " "]
    assert ["data-subword" in s for s in p.spans] == [False, False, True, True, False, False]
    assert ["subword" in (s["class"] or "").split() for s in p.spans] == [False, False, True, True, False, False]


def test_whitespace_and_control_characters_are_shown_visibly() -> None:
    tokens = [" ", "  ", "\t", "\n", "", "\u00a0", "a b", "x\x1by", "\r", "\u202eevil", "\x9b2J", "a\u2028b"]
    p = parse(render_tokens_html(tokens, np.ones(len(tokens))))
    assert p.texts == [
        "␣",
        "␣␣",
        "\\t",
        "\\n",
        "∅",
        "\\xa0",
        "a b",
        "x\\x1by",
        "\\r",
        "\\u202eevil",
        "\\x9b2J",
        "a\\u2028b",
    ]


# ---------------------------------------------------------------------------------------------- colours
def test_colour_follows_the_sign_and_opacity_is_abs_value_over_max() -> None:
    values = [0.5, -1.0, 0.25, -0.1, 0.0]
    cols = [rgba(s) for s in parse(render_tokens_html(list("abcde"), values)).spans]
    assert [c for c, _ in cols] == [RED, BLUE, RED, BLUE, RED]
    assert [a for _, a in cols] == pytest.approx([0.5, 1.0, 0.25, 0.1, 0.0], abs=1e-3)


def test_opacity_and_terminal_intensity_grow_with_abs_value() -> None:
    mags = np.array([0.0, 0.01, 0.1, 0.3, 0.5, 0.9, 1.0])
    for sign, colour in ((1.0, RED), (-1.0, BLUE)):
        values = sign * mags
        alphas = [rgba(s)[1] for s in parse(render_tokens_html(list("abcdefg"), values)).spans]
        assert np.all(np.diff(alphas) > 0)
        bgs = np.array(term_backgrounds(render_tokens_terminal(list("abcdefg"), values)), dtype=float)
        # distance from white towards the end colour grows with |v|; the end colour is reached at |v| = max
        dist = np.abs(bgs - 255).sum(axis=1)
        assert dist[0] == 0 and np.all(np.diff(dist) > 0)
        assert tuple(bgs[-1].astype(int)) == colour


def test_scale_sets_full_opacity_and_clips() -> None:
    values = [0.1, -0.2, 0.4, -0.8]
    spans = parse(render_tokens_html(list("abcd"), values, scale=0.4)).spans
    assert [rgba(s)[1] for s in spans] == pytest.approx([0.25, 0.5, 1.0, 1.0], abs=1e-3)
    half = parse(render_tokens_html(list("abcd"), values, scale=1.6)).spans
    assert [rgba(s)[1] for s in half] == pytest.approx([0.0625, 0.125, 0.25, 0.5], abs=1e-3)


def test_all_zero_values_are_transparent() -> None:
    spans = parse(render_tokens_html(list("abc"), [0.0, -0.0, 0.0])).spans
    assert [rgba(s)[1] for s in spans] == [0.0, 0.0, 0.0]
    assert [s["title"] for s in spans] == ["+0", "+0", "+0"]
    assert set(term_backgrounds(render_tokens_terminal(list("abc"), [0.0, 0.0, 0.0]))) == {(255, 255, 255)}


def test_nan_is_grey_titled_nan_and_left_out_of_the_scale() -> None:
    spans = parse(render_tokens_html(list("abc"), [float("nan"), 0.5, -0.25])).spans
    assert [s["title"] for s in spans] == ["nan", "+0.5", "-0.25"]
    assert rgba(spans[0]) == (GREY, 0.5)
    assert rgba(spans[1]) == (RED, 1.0) and rgba(spans[2]) == (BLUE, 0.5)
    assert render_tokens_terminal(["a", "b"], [float("nan"), 1.0], color=False) == "a[nan] b[+1]"


def test_lists_arrays_and_tensors_render_the_same() -> None:
    tokens = ["a", "##b", "c"]
    values = [0.5, -0.125, 1.0]
    expected = render_tokens_html(tokens, values)
    assert render_tokens_html(tokens, np.array(values, dtype=np.float32)) == expected
    assert render_tokens_html(tokens, torch.tensor(values, requires_grad=True)) == expected
    assert render_tokens_html(tokens, torch.tensor(values, dtype=torch.bfloat16)) == expected  # exact in bf16
    assert render_tokens_html(tokens, (1, 0, -1)) == render_tokens_html(tokens, [1.0, 0.0, -1.0])


# ---------------------------------------------------------------------------------------------- terminal
def test_terminal_plain_output_is_exact() -> None:
    out = render_tokens_terminal(
        ["this", "movie", "is", "great", "play", "##ing", " "], [0.1, -0.05, 0, 0.42, -1.5, 2e-5, 0.3333], color=False
    )
    assert out == "this[+0.1] movie[-0.05] is[+0] great[+0.42] play[-1.5]ing[+2e-05] ␣[+0.333]"


def test_terminal_colour_output_is_exact_for_a_small_example() -> None:
    out = render_tokens_terminal(["good", "##ness", "bad"], [1.0, 0.5, -1.0])
    assert out == (
        "\x1b[38;2;0;0;0;48;2;239;68;68mgood\x1b[0m"
        "\x1b[38;2;0;0;0;48;2;247;162;162mness\x1b[0m"
        " \x1b[38;2;0;0;0;48;2;59;130;246mbad\x1b[0m"
    )


CONTROL_TOKENS = [
    "\x1b[2J\x1b[H",  # clear screen
    "\x1b]0;pwned\x07",  # OSC: window title
    "\x1b]8;;http://evil.example\x1b\\link\x1b]8;;\x1b\\",  # OSC 8 hyperlink
    "\x9b31m",  # C1 CSI
    "a\rb",
    "line\nbreak",
    "\x00\x08\x7f",
    "\u2028\u2029",
    "\u202eevil\u202c",
    "\x1bc",  # full reset
]


@pytest.mark.parametrize("color", [True, False])
def test_terminal_neutralises_control_characters(color: bool) -> None:
    out = render_tokens_terminal(CONTROL_TOKENS, np.linspace(-1, 1, len(CONTROL_TOKENS)), color=color)
    # every ESC starts a well-formed SGR sequence, and those are exactly ours: two per token with colour
    assert all(SGR.match(out, m.start()) for m in re.finditer("\x1b", out))
    assert len(SGR.findall(out)) == (2 * len(CONTROL_TOKENS) if color else 0)
    plain = SGR.sub("", out)
    assert not any(_unsafe(ch) for ch in plain)
    assert "\n" not in out and "\r" not in out
    assert "\\x1b[2J\\x1b[H" in plain and "\\x9b31m" in plain and "a\\rb" in plain and "\\u202eevil\\u202c" in plain


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=8), max_size=6))
def test_terminal_arbitrary_tokens_emit_only_our_escapes(tokens: list[str]) -> None:
    out = render_tokens_terminal(tokens, np.linspace(-1, 1, len(tokens)))
    assert all(SGR.match(out, m.start()) for m in re.finditer("\x1b", out))
    assert len(SGR.findall(out)) == 2 * len(tokens)
    assert not any(_unsafe(ch) for ch in SGR.sub("", out))


# ---------------------------------------------------------------------------------------------- page
def test_page_is_self_contained_with_csp_and_escaped_headings() -> None:
    rows: list[tuple[str, list[str], Any]] = [
        ("<script>alert(1)</script>", HOSTILE, np.linspace(-1, 1, len(HOSTILE))),
        ("second & last", ["fine", "##ly"], torch.tensor([0.2, -0.4])),
    ]
    page = render_tokens_page(rows, title="</title><script>x</script>")
    p = parse(page)
    assert TOKENS_CSP == "default-src 'none'; style-src 'unsafe-inline'"
    csp = [m for m in p.metas if (m.get("http-equiv") or "").lower() == "content-security-policy"]
    assert [m["content"] for m in csp] == [TOKENS_CSP]
    assert page.index("Content-Security-Policy") < page.index("<style>")
    assert "script" not in p.tags and not {"img", "link", "iframe", "a", "form", "object"} & set(p.tags)
    assert p.headings == ["</title><script>x</script>", "<script>alert(1)</script>", "second & last"]
    assert p.tags.count("h2") == 2 and p.tags.count("section") == 2
    assert p.texts == [*HOSTILE, "fine", "ly"]
    fragment = parse(render_tokens_html(HOSTILE, np.linspace(-1, 1, len(HOSTILE))))
    assert p.spans[: len(HOSTILE)] == fragment.spans


def test_page_scale_is_shared_across_rows() -> None:
    rows = [("a", ["x"], [1.0]), ("b", ["y"], [0.25])]
    own = [rgba(s)[1] for s in parse(render_tokens_page(rows, title="t")).spans]
    shared = [rgba(s)[1] for s in parse(render_tokens_page(rows, title="t", scale=1.0)).spans]
    assert own == [1.0, 1.0] and shared == [1.0, 0.25]


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("tokens", "values", "kwargs", "error", "message"),
    [
        (
            ["a", "b"],
            [1.0],
            {},
            InvalidInputError,
            "tokens and values must have the same length; got 2 tokens and 1 values.",
        ),
        (
            ["a"],
            [[1.0]],
            {},
            InvalidInputError,
            "values must be 1-D (one value per token); got shape (1, 1). Pick one row first, e.g. values[0].",
        ),
        (
            ["a", "b"],
            [1.0, float("-inf")],
            {},
            InvalidInputError,
            "values must be finite or NaN (NaN is shown grey, as missing); got -inf at index 1.",
        ),
        (["a"], ["x"], {}, InvalidInputError, "values must be real numbers; got dtype <U1."),
        (
            ["a"],
            torch.tensor([1j]),
            {},
            InvalidInputError,
            "values must be real numbers; got a complex tensor (torch.complex64).",
        ),
        (
            "ab",
            [1.0, 2.0],
            {},
            InvalidInputError,
            "tokens must be a sequence of str (one per token, e.g. a list); got str.",
        ),
        (["a", 3], [1.0, 2.0], {}, InvalidInputError, "tokens[1] must be a str; got int 3."),
        (
            ["a"],
            [1.0],
            {"scale": 0},
            InvalidParameterError,
            "scale must be a finite number > 0, or None (the largest |value|); got 0.",
        ),
        (
            ["a"],
            [1.0],
            {"scale": float("nan")},
            InvalidParameterError,
            "scale must be a finite number > 0, or None (the largest |value|); got nan.",
        ),
        (
            ["a"],
            [1.0],
            {"scale": True},
            InvalidParameterError,
            "scale must be a finite number > 0, or None (the largest |value|); got True.",
        ),
    ],
)
def test_invalid_inputs_name_the_parameter(
    tokens: Any, values: Any, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as e:
        render_tokens_html(tokens, values, **kwargs)
    assert str(e.value) == message
    with pytest.raises(error) as e:
        render_tokens_terminal(tokens, values, **kwargs)
    assert str(e.value) == message


def test_terminal_color_must_be_a_bool() -> None:
    with pytest.raises(InvalidParameterError, match=r"^color must be a bool; got 'no'\.$"):
        render_tokens_terminal(["a"], [1.0], color="no")  # type: ignore[arg-type]


def test_page_errors_name_the_row() -> None:
    with pytest.raises(
        InvalidInputError,
        match=r"^rows\[1\]\[1\] and rows\[1\]\[2\] must have the same length; got 1 tokens and 2 values\.$",
    ):
        render_tokens_page([("a", ["x"], [1.0]), ("b", ["y"], [1.0, 2.0])], title="t")
    with pytest.raises(InvalidInputError, match=r"^rows\[0\] must be a \(heading, tokens, values\) triple"):
        render_tokens_page([("a", ["x"])], title="t")  # type: ignore[list-item]
    with pytest.raises(InvalidInputError, match=r"^rows\[0\]\[0\] \(the heading\) must be a str; got int\.$"):
        render_tokens_page([(1, ["x"], [1.0])], title="t")  # type: ignore[list-item]
    with pytest.raises(InvalidParameterError, match=r"^title must be a str; got NoneType\.$"):
        render_tokens_page([], title=None)  # type: ignore[arg-type]


def test_errors_are_value_errors_and_the_api_is_exported() -> None:
    with pytest.raises(ValueError):
        render_tokens_html(["a"], [1.0, 2.0])
    assert {"TOKENS_CSP", "render_tokens_html", "render_tokens_page", "render_tokens_terminal"} <= set(
        whybox.report.__all__
    )
