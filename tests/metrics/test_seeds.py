"""``derived_seeds``: NumPy's SeedSequence restated on arrays gives, for every (row, draw) pair at once, the seed
``derive_generator`` would seed its generator with, so a vectorised draw is the per-pair draw bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from whybox.metrics.base import derive_generator, derived_seeds


@pytest.mark.parametrize("seed", [0, 1, 42, 2**32 - 1, 2**32, 2**40 + 5, 123456789012345678901234567890])
@pytest.mark.parametrize("key", [0, 3_000_029, 2**33 + 1])
def test_derived_seeds_are_numpys_seed_sequence(seed: int, key: int) -> None:
    rng = np.random.default_rng(seed % 2**32 + key % 97)
    cols = np.stack([rng.integers(0, 2**32, 40), rng.integers(0, 300, 40)], 1)
    cols[:3] = [[0, 0], [0, 1], [2**32 - 1, 0]]
    want = [int(np.random.SeedSequence([seed, key, *map(int, c)]).generate_state(1, np.uint64)[0]) >> 1 for c in cols]
    assert derived_seeds(seed, key, cols) == want
    one = [int(np.random.SeedSequence([seed, key, int(c)]).generate_state(1, np.uint64)[0]) >> 1 for c in cols[:, 0]]
    assert derived_seeds(seed, key, cols[:, :1]) == one  # fewer entropy words than the pool (zeros mixed in)


def test_a_generator_seeded_from_derived_seeds_draws_what_derive_generator_draws() -> None:
    pairs = np.array([[r, k] for r in range(3) for k in range(4)])
    for s, (r, k) in zip(derived_seeds(7, 3_000_029, pairs), pairs.tolist(), strict=True):
        a = torch.rand(5, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
        b = torch.rand(5, generator=derive_generator(7, 3_000_029, r, k), dtype=torch.float64)
        assert torch.equal(a, b)
    assert derived_seeds(0, 1, np.zeros((0, 2), dtype=np.int64)) == []
