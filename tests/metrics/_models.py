"""Small models with known answers for the metric tests (seeded, built on the fly, global RNG untouched)."""

from __future__ import annotations

import torch
from torch import nn


class Additive(nn.Module):
    """f(x) = sum_i w_i x_i over the flattened input: one output (identity), so every curve is known by hand."""

    def __init__(self, w: torch.Tensor | list[float]) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.as_tensor(w, dtype=torch.float64).flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1).to(torch.float64) * self.w).sum(1, keepdim=True)


class Linear(nn.Module):
    """f(x) = W x over the flattened input, K outputs, no bias (float64)."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w.to(torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).to(torch.float64) @ self.w.T


class HalfSquare(nn.Module):
    """Scores (0.5 ||x||^2, -0.5 ||x||^2): the gradient of class 0 is x."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = 0.5 * x.flatten(1).to(torch.float64).pow(2).sum(1) + 0 * self.dummy
        return torch.stack([s, -s], 1)


def seeded(build, seed: int = 0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def cnn1(seed: int = 0, classes: int = 10) -> nn.Sequential:
    """A digits-sized CNN on (B, 1, 8, 8): conv-relu-conv-relu-flatten-linear, registration = execution order."""
    return seeded(
        lambda: nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(4, 4, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 8 * 8, classes),
        ),
        seed,
    ).eval()


def cnn3(seed: int = 0, classes: int = 5) -> nn.Sequential:
    """A small RGB CNN on (B, 3, H, W)."""
    return seeded(
        lambda: nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(6, 6, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(24, classes),
        ),
        seed,
    ).eval()


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
