"""Pooling of token states (runtime/pooling.py) against a plain numpy reference.

Mean pooling averages the real tokens only: padding never changes a vector, whatever the
padded states hold; CLS takes the first token; a row without any real token gives zeros,
not NaN; half-precision states stay in their dtype.
"""

from __future__ import annotations

import numpy as np
import torch
from textserve.runtime.pooling import pool_states

LENGTHS = [5, 1, 3, 0]


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    states = torch.randn(len(LENGTHS), 5, 4, generator=generator) * 3 + 1
    mask = torch.zeros(len(LENGTHS), 5, dtype=torch.int64)
    for row, length in enumerate(LENGTHS):
        mask[row, :length] = 1
    return states, mask


def test_mean_pooling_averages_the_real_tokens_only() -> None:
    states, mask = batch()
    pooled = pool_states(states, mask, "mean").numpy()
    for row, length in enumerate(LENGTHS):
        expected = states[row, :length].numpy().mean(axis=0) if length else np.zeros(4, dtype=np.float32)
        np.testing.assert_allclose(pooled[row], expected, rtol=1e-6, atol=1e-6)
    assert np.isfinite(pooled).all()


def test_padding_never_changes_a_mean_vector() -> None:
    states, mask = batch()
    noisy = states.clone()
    noisy[mask == 0] = 1e4  # whatever the padded positions hold
    np.testing.assert_array_equal(
        pool_states(states, mask, "mean").numpy(), pool_states(noisy, mask, "mean").numpy()
    )


def test_cls_pooling_takes_the_first_token() -> None:
    states, mask = batch(1)
    np.testing.assert_array_equal(pool_states(states, mask, "cls").numpy(), states[:, 0].numpy())


def test_half_precision_states_keep_their_dtype() -> None:
    """Rows with real tokens only: every text has at least one ([CLS], or its first token; empty
    token inputs are refused), and in float16 the 1e-9 floor of an empty row underflows to 0."""
    states, mask = batch(2)
    pooled = pool_states(states.to(torch.float16), mask, "mean")
    assert pooled.dtype == torch.float16 and pooled.shape == (len(LENGTHS), 4)
    real = [row for row, length in enumerate(LENGTHS) if length]
    np.testing.assert_allclose(
        pooled[real].float().numpy(), pool_states(states, mask, "mean")[real].numpy(), rtol=1e-2, atol=1e-2
    )
