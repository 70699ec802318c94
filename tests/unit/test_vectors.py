"""core/vectors.unit_rows: unit L2 rows, zero rows kept, float32 out, the last axis only."""

from __future__ import annotations

import numpy as np
from textserve.core.vectors import unit_rows


def test_rows_get_unit_length_and_zero_rows_stay_zero() -> None:
    out = unit_rows(np.array([[3.0, 4.0], [0.0, 0.0], [-1.0, 0.0]]))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.array([[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]], dtype=np.float32))


def test_the_last_axis_is_normalised_whatever_the_rank() -> None:
    rng = np.random.default_rng(0)
    batch = rng.normal(size=(2, 3, 5)).astype(np.float32) * 7
    out = unit_rows(batch)
    assert out.shape == batch.shape
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(out * np.linalg.norm(batch, axis=-1, keepdims=True), batch, rtol=1e-5)
    single = unit_rows(np.array([0.0, 5.0], dtype=np.float32))
    np.testing.assert_array_equal(single, np.array([0.0, 1.0], dtype=np.float32))


def test_tiny_norms_are_divided_by_the_floor_not_blown_up() -> None:
    """Norms under 1e-12 divide by 1e-12: no inf or nan from a near-zero row."""
    out = unit_rows(np.array([[1e-20, 0.0]]))
    np.testing.assert_allclose(out, [[1e-8, 0.0]], rtol=1e-6)
    assert np.isfinite(out).all()


def test_float32_input_is_not_copied_needlessly() -> None:
    vectors = np.ones((4, 3), dtype=np.float32)
    out = unit_rows(vectors)
    np.testing.assert_allclose(out, np.full((4, 3), 1 / np.sqrt(3), dtype=np.float32), rtol=1e-6)
    assert out.dtype == np.float32
