"""Small shared fixtures: seeded generators and a tiny image classifier built on the fly."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch
from torch import nn

# The test models are tiny: intra-op threads only add overhead, and on a shared 2-core machine they
# oversubscribe it (measured: contract suite 47 s with 2 threads under load, 5 s with 1). An explicit
# OMP_NUM_THREADS still wins.
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(1)


def _small_cnn(
    *, seed: int = 0, dtype: torch.dtype = torch.float32, channels: int = 8, classes: int = 5, inplace: bool = False
) -> nn.Sequential:
    """Conv-ReLU-Conv-ReLU-AdaptiveAvgPool-Flatten-Linear on (B, 3, H, W), seeded, in eval mode."""
    with torch.random.fork_rng(devices=[]):  # seeded weights, global RNG left as it was
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Conv2d(3, channels, 3, padding=1),
            nn.ReLU(inplace=inplace),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=inplace),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(channels, classes),
        )
    return model.to(dtype).eval()


@pytest.fixture
def make_cnn() -> Callable[..., nn.Sequential]:
    """Factory for the small seeded CNN (``make_cnn(seed=0, dtype=..., channels=8, classes=5, inplace=False)``)."""
    return _small_cnn


@pytest.fixture
def gen() -> torch.Generator:
    """A CPU generator seeded with 0 (never the global RNG)."""
    return torch.Generator().manual_seed(0)
