"""Fixtures for the metric tests: a Quantus handle with the test-only ``np.trapz`` shim."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def quantus(monkeypatch: pytest.MonkeyPatch):
    """Quantus 0.6.0, pinned. Its ``utils.calculate_auc`` still calls ``np.trapz``, removed in NumPy 2.4: a
    test-only shim maps it to ``np.trapezoid`` for the duration of the test (never shipped in ``src``)."""
    q = pytest.importorskip("quantus")
    if q.__version__ != "0.6.0":
        pytest.skip(f"the agreement tests are pinned to Quantus 0.6.0; found {q.__version__}")
    if not hasattr(np, "trapz"):
        monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)
    return q
