"""Small numpy helpers on rows of vectors (numpy only)."""

from __future__ import annotations

import numpy as np


def unit_rows(vectors: np.ndarray, norms: np.ndarray | None = None) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), as float32. `norms` are the rows'
    L2 norms when the caller has them already (one per row); else they are computed."""
    if norms is None:
        norms = np.linalg.norm(vectors, axis=-1)
    return (vectors / np.maximum(norms, 1e-12)[..., None]).astype(np.float32, copy=False)
