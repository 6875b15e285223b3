"""The README names every registered method (a row of its method table) and every metric (in its Metrics
section): a method or metric added to a registry without its line in the README fails here."""

from __future__ import annotations

import re
from pathlib import Path

import whybox

README = Path(__file__).resolve().parents[2] / "README.md"


def _section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def test_every_registered_method_has_a_row_in_the_method_table() -> None:
    rows = set(re.findall(r"^\| `([a-z_]+)` \|", README.read_text(encoding="utf-8"), flags=re.M))
    missing = [m for m in whybox.methods() if m not in rows]
    assert not missing, f"methods without a README row: {missing}"


def test_every_registered_metric_is_named_in_the_metrics_section() -> None:
    named = set(re.findall(r"`([a-z_]+)`", _section(README.read_text(encoding="utf-8"), "Metrics")))
    missing = [m for m in whybox.metrics() if m not in named]
    assert not missing, f"metrics the README's Metrics section does not name: {missing}"
