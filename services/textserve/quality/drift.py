"""Two-sample drift detectors: a window of recent inputs against a reference sample.

Each detector is fitted once on a reference sample and then tests windows; a test returns
a `DriftResult` (statistic, p-value, and the drift flag at the configured significance).
Detectors do no I/O, hold no locks and know nothing about services: `monitor.py` decides
when they run (off the request path) and where the results go.

Which tests, and why they are written here rather than imported
- Embeddings: `MMDDrift`, the maximum mean discrepancy with a Gaussian (RBF) kernel and a
  permutation test, as Alibi Detect's `MMDDrift` and Evidently's embedding drift do. MMD
  compares whole distributions in the 384-dimension space (not each coordinate alone), and
  the permutation test makes the p-value exact for any window size, with no asymptotic
  approximation. The bandwidth follows the median heuristic (2 sigma^2 = the median squared
  distance between reference points), computed once at fit time so a window cannot move it.
  The only maintained implementation is Alibi Detect, which pulls TensorFlow or PyTorch
  backends and a large dependency tree for what is here ~40 lines of numpy. The cost is
  kept small by algebra: the biased MMD^2 of a split of the pooled sample is a' K a with
  a = +1/n on the window, -1/m on the reference, so all permutations are one matrix product
  K @ A (A holds one assignment per column) done by BLAS; the reference-reference block of
  K is computed at fit time. The diagonal of K adds the same constant to every split, and a
  permutation test is exact for any statistic, so the biased estimator is used as is.
  Measured (loadtests/bench_drift.py, one BLAS thread): about 9 ms CPU per 200 x 384 window
  against 500 reference vectors with 200 permutations; the budget is 250 ms.
- Embeddings, alternative: `ProjectionKSDrift`, Kolmogorov-Smirnov tests
  (`scipy.stats.ks_2samp`) on k fixed random projections with a Bonferroni correction
  (p = min(1, k * min p)). Cheaper and coarser than MMD; kept for very large windows.
- Exact copies in a window (a text sent twice, client retries, hot queries) are tested
  once (`distinct_rows`): the permutation test assumes independent draws, and copies make a
  window look tighter than the reference. Without this, windows of SST-2 dev sentences
  drawn with replacement were flagged 15 times in 20 against SST-2 train; with it, about
  once (the 5 % the level allows).
- Classifier outputs: `LabelMixDrift` is Pearson's chi-square test of homogeneity on the
  2 x K table of label counts (reference, window) with `scipy.stats.chi2_contingency`: it
  accounts for the reference being a sample too. `ConfidenceDrift` is the two-sample KS
  test (`scipy.stats.ks_2samp`) on the top scores.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy import stats

MMD = "mmd"
PROJECTION_KS = "projection_ks"
LABEL_MIX = "label_mix"
CONFIDENCE = "confidence"


@dataclass(frozen=True)
class DriftResult:
    """The outcome of one test of a window against the reference."""

    detector: str
    """Detector name (the `detector` metric label): mmd, projection_ks, label_mix, confidence."""
    statistic: float
    """The test statistic (MMD^2, KS distance, chi-square)."""
    p_value: float
    """Probability of a statistic at least this large if the window came from the reference."""
    drifted: bool
    """p_value < significance."""
    window_size: int
    """Observations in the tested window."""
    reference_size: int
    """Observations in the reference sample."""


class VectorDetector(Protocol):
    """A detector fitted on reference vectors that tests windows of vectors (rows)."""

    name: str

    def test(self, window: np.ndarray) -> DriftResult:
        """Tests `window` (n x d) against the reference."""
        ...


def _as_matrix(values: np.ndarray | Sequence[Sequence[float]], what: str) -> np.ndarray:
    matrix = np.asarray(values, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[0] < 2:
        raise ValueError(f"{what} must be a 2-D array with at least 2 rows, got shape {matrix.shape}")
    return matrix


def distinct_rows(matrix: np.ndarray) -> np.ndarray:
    """The distinct rows of `matrix` (exact copies dropped; order not kept)."""
    return np.unique(matrix, axis=0)


def _check_significance(significance: float) -> None:
    if not 0.0 < significance < 1.0:
        raise ValueError(f"significance must be in (0, 1), got {significance}")


def _squared_distances(x: np.ndarray, y: np.ndarray, x_norms: np.ndarray, y_norms: np.ndarray) -> np.ndarray:
    d2 = x_norms[:, None] + y_norms[None, :] - 2.0 * (x @ y.T)
    return np.maximum(d2, 0.0, out=d2)


class MMDDrift:
    """MMD two-sample test with an RBF kernel (median-heuristic bandwidth) and permutations."""

    name = MMD

    def __init__(
        self,
        reference: np.ndarray | Sequence[Sequence[float]],
        *,
        significance: float = 0.05,
        n_permutations: int = 200,
        max_reference: int = 500,
        seed: int = 0,
    ) -> None:
        _check_significance(significance)
        if n_permutations < 1:
            raise ValueError(f"n_permutations must be >= 1, got {n_permutations}")
        ref = distinct_rows(_as_matrix(reference, "reference"))
        self._rng = np.random.default_rng(seed)
        if ref.shape[0] > max_reference:
            ref = ref[self._rng.choice(ref.shape[0], max_reference, replace=False)]
        self.significance = significance
        self.n_permutations = n_permutations
        self.reference = np.ascontiguousarray(ref)
        self._ref_norms = np.einsum("ij,ij->i", ref, ref)
        d2 = _squared_distances(ref, ref, self._ref_norms, self._ref_norms)
        off_diagonal = d2[~np.eye(ref.shape[0], dtype=bool)]
        median = float(np.median(off_diagonal))
        self.gamma = 1.0 / median if median > 0 else 1.0
        """Kernel k(x, y) = exp(-gamma |x - y|^2), gamma = 1 / median squared distance."""
        self._k_ref = np.exp(-self.gamma * d2)

    def test(self, window: np.ndarray) -> DriftResult:
        """MMD^2 of window vs reference; p-value from `n_permutations` random splits."""
        x = distinct_rows(_as_matrix(window, "window"))
        if x.shape[0] < 2:
            return DriftResult(self.name, 0.0, 1.0, False, x.shape[0], self.reference.shape[0])
        if x.shape[1] != self.reference.shape[1]:
            raise ValueError(f"window has {x.shape[1]} dimensions, reference {self.reference.shape[1]}")
        n, m = x.shape[0], self.reference.shape[0]
        x_norms = np.einsum("ij,ij->i", x, x)
        k_xx = np.exp(-self.gamma * _squared_distances(x, x, x_norms, x_norms))
        k_xr = np.exp(-self.gamma * _squared_distances(x, self.reference, x_norms, self._ref_norms))
        kernel = np.block([[k_xx, k_xr], [k_xr.T, self._k_ref]]).astype(np.float64)
        # Column 0: the observed split; columns 1..B: random splits of the pooled sample.
        total = n + m
        ranks = np.argsort(self._rng.random((total, self.n_permutations)), axis=0).argsort(axis=0)
        in_window = np.concatenate([np.arange(total)[:, None] < n, ranks < n], axis=1)
        weights = np.where(in_window, 1.0 / n, -1.0 / m)
        mmd2 = np.einsum("ib,ib->b", kernel @ weights, weights)
        observed = float(mmd2[0])
        p_value = float((1 + np.count_nonzero(mmd2[1:] >= observed)) / (self.n_permutations + 1))
        return DriftResult(self.name, observed, p_value, p_value < self.significance, n, m)


class ProjectionKSDrift:
    """KS tests on k fixed random projections, Bonferroni-corrected."""

    name = PROJECTION_KS

    def __init__(
        self,
        reference: np.ndarray | Sequence[Sequence[float]],
        *,
        significance: float = 0.05,
        n_projections: int = 32,
        seed: int = 0,
    ) -> None:
        _check_significance(significance)
        if n_projections < 1:
            raise ValueError(f"n_projections must be >= 1, got {n_projections}")
        ref = distinct_rows(_as_matrix(reference, "reference"))
        rng = np.random.default_rng(seed)
        directions = rng.standard_normal((ref.shape[1], n_projections)).astype(np.float32)
        self.directions = directions / np.linalg.norm(directions, axis=0, keepdims=True)
        self.significance = significance
        self._reference = ref @ self.directions
        self._dimensions = ref.shape[1]

    def test(self, window: np.ndarray) -> DriftResult:
        """Largest KS distance over the projections; p = min(1, k * smallest p)."""
        x = distinct_rows(_as_matrix(window, "window"))
        if x.shape[1] != self._dimensions:
            raise ValueError(f"window has {x.shape[1]} dimensions, reference {self._dimensions}")
        projected = x @ self.directions
        result = stats.ks_2samp(self._reference, projected, axis=0)
        k = self.directions.shape[1]
        p_value = float(min(1.0, k * float(np.min(result.pvalue))))
        statistic = float(np.max(result.statistic))
        return DriftResult(
            self.name, statistic, p_value, p_value < self.significance, x.shape[0], self._reference.shape[0]
        )


class LabelMixDrift:
    """Chi-square test of homogeneity of the predicted-label mix (reference vs window)."""

    name = LABEL_MIX

    def __init__(self, reference_labels: Sequence[str], *, significance: float = 0.05) -> None:
        _check_significance(significance)
        if not reference_labels:
            raise ValueError("reference_labels is empty")
        self.significance = significance
        self.reference_counts = Counter(reference_labels)
        self._reference_size = len(reference_labels)

    def test(self, labels: Sequence[str]) -> DriftResult:
        """chi2_contingency on the 2 x K table; labels seen in neither sample are dropped."""
        if not labels:
            raise ValueError("labels is empty")
        window_counts = Counter(labels)
        names = sorted(set(self.reference_counts) | set(window_counts))
        if len(names) < 2:
            return DriftResult(self.name, 0.0, 1.0, False, len(labels), self._reference_size)
        table = np.array(
            [[self.reference_counts[name] for name in names], [window_counts[name] for name in names]]
        )
        result = stats.chi2_contingency(table, correction=False)
        p_value = float(result.pvalue)
        if math.isnan(p_value):
            p_value = 1.0
        return DriftResult(
            self.name,
            float(result.statistic),
            p_value,
            p_value < self.significance,
            len(labels),
            self._reference_size,
        )


class ConfidenceDrift:
    """Two-sample KS test on the top score (confidence) of each prediction."""

    name = CONFIDENCE

    def __init__(self, reference_confidences: Sequence[float], *, significance: float = 0.05) -> None:
        _check_significance(significance)
        reference = np.asarray(reference_confidences, dtype=np.float64)
        if reference.ndim != 1 or reference.size == 0:
            raise ValueError("reference_confidences must be a non-empty 1-D sequence")
        self.significance = significance
        self._reference = reference

    def test(self, confidences: Sequence[float]) -> DriftResult:
        """scipy.stats.ks_2samp of the window's confidences against the reference's."""
        window = np.asarray(confidences, dtype=np.float64)
        if window.size == 0:
            raise ValueError("confidences is empty")
        result = stats.ks_2samp(self._reference, window)
        p_value = float(result.pvalue)
        return DriftResult(
            self.name,
            float(result.statistic),
            p_value,
            p_value < self.significance,
            int(window.size),
            int(self._reference.size),
        )
