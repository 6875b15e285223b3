"""Small seeded models built on the fly for the reference tests (no downloads, no global RNG use)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DigitsCNN", "Quadratic", "SmallCNN", "build", "images"]


def _act(kind: str) -> nn.Module:
    return {"relu": nn.ReLU(), "tanh": nn.Tanh(), "softplus": nn.Softplus()}[kind]


class SmallCNN(nn.Module):
    """3x16x16 -> 5 logits. CAM layers: ``act1`` (6x16x16), ``act2`` (8x8x8, post-ReLU), ``pool2`` (8x4x4)."""

    def __init__(self, act: str = "relu", head_scale: float = 1.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.act1 = _act(act)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.act2 = nn.ReLU()  # post-ReLU activations at the CAM layer, whatever ``act`` is elsewhere
        self.pool2 = nn.AvgPool2d(2)
        self.fc1 = nn.Linear(8 * 4 * 4, 24)
        self.act3 = _act(act)
        self.fc2 = nn.Linear(24, 5)
        self.head_scale = head_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool1(self.act1(self.conv1(x)))
        h = self.pool2(self.act2(self.conv2(h)))
        return self.head_scale * self.fc2(self.act3(self.fc1(h.flatten(1))))


class DigitsCNN(nn.Module):
    """A digits-like 1x8x8 -> 10 logits CNN. CAM layers: ``act2`` (8x8x8), ``pool`` (8x4x4)."""

    def __init__(self, act: str = "relu", head_scale: float = 1.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.act1 = _act(act)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.act2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 4 * 4, 10)
        self.head_scale = head_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.act2(self.conv2(self.act1(self.conv1(x)))))
        return self.head_scale * self.fc(h.flatten(1))


class Quadratic(nn.Module):
    """Scores (sum x^2, -sum x^2): the gradient of class 0 is 2x, so noise-averaged maps have closed forms."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))  # gives the model a dtype/device (and nothing else)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x * x).flatten(1).sum(1) + 0 * self.dummy
        return torch.stack([s, -s], 1)


def build(cls: type[nn.Module], seed: int, dtype: torch.dtype = torch.float32, **kwargs: object) -> nn.Module:
    """A seeded model in eval mode; torch's global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(**kwargs)
        for mod in model.modules():  # He init: O(1) activations, gradients and logits at every depth
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
                nn.init.normal_(mod.bias, std=0.1)
    return model.to(dtype).eval()


def images(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard-normal inputs from a private generator."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
