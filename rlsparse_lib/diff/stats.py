"""Mergeable per-tensor diff statistics.

A :class:`DiffStats` summarises any contiguous range of a tensor pair. Stats of two disjoint
ranges merge by :meth:`DiffStats.merge`, so a tensor's stats are the merge of its chunks and a
report is the merge of per-unit partial results: the math never depends on how work was
split (integer counts are exact; float sums may differ in the last bits).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: ``ulp_hist[j]`` counts changed entries with floor(log2(|Δ| / ULP(θ0))) == j + ULP_LOG2_MIN
#: (both end bins are open: they also hold everything beyond them).
ULP_LOG2_MIN = -40
ULP_BINS = 96
#: binade histograms are indexed by the compare format's exponent field (0..255)
BINADE_BINS = 256

#: counts of zero and non-finite deltas and of non-finite values on each side
NONFINITE_FIELDS = (
    "n_zero_delta",
    "n_nonfinite_delta",
    "n_nan_base",
    "n_inf_base",
    "n_nan_tuned",
    "n_inf_tuned",
)
_INT_FIELDS = ("numel", "n_changed", "n_rel_unchanged", *NONFINITE_FIELDS)
_SUM_FIELDS = ("sum_abs_delta", "sum_sq_delta", "sum_sq_base")
_ARRAY_FIELDS = ("n_le_tol", "ulp_hist", "binade_total", "binade_changed")


@dataclass
class DiffStats:
    """Statistics of one compared range of a float tensor pair (base θ0 vs tuned θ1).

    Attributes:
        numel: compared elements.
        n_changed: elements whose compare-dtype bit patterns differ.
        n_le_tol: int64[n_tol]; among changed elements, those with |Δ| <= tol for each tolerance
            (so unchanged at tol = numel - n_changed + n_le_tol[k]).
        n_rel_unchanged: changed elements with |Δ| <= η·max(|θ0|, |θ1|) (Path Not Taken's probe).
        n_zero_delta: changed elements with Δ == 0 (+0 vs -0).
        n_nonfinite_delta: changed elements whose Δ is NaN or ±Inf.
        n_nan_base, n_inf_base, n_nan_tuned, n_inf_tuned: non-finite values on each side.
        max_abs_delta, sum_abs_delta, sum_sq_delta: over finite Δ (float64 sums of float32 Δ).
        sum_sq_base: Σθ0² over finite θ0 (float64).
        ulp_hist: int64[ULP_BINS]; log2 histogram of |Δ| / ULP(θ0) over changed elements with
            finite non-zero Δ; the ULP is θ0's in a 16-bit compare dtype, else in its stored dtype
            (:attr:`~rlsparse_lib.diff.kernels.protocol.ChunkSpec.ulp_dtype`).
        binade_total, binade_changed: int64[256]; elements (all / changed) per exponent field of θ0
            in the compare dtype.
    """

    numel: int = 0
    n_changed: int = 0
    n_le_tol: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    n_rel_unchanged: int = 0
    n_zero_delta: int = 0
    n_nonfinite_delta: int = 0
    n_nan_base: int = 0
    n_inf_base: int = 0
    n_nan_tuned: int = 0
    n_inf_tuned: int = 0
    max_abs_delta: float = 0.0
    sum_abs_delta: float = 0.0
    sum_sq_delta: float = 0.0
    sum_sq_base: float = 0.0
    ulp_hist: np.ndarray = field(default_factory=lambda: np.zeros(ULP_BINS, np.int64))
    binade_total: np.ndarray = field(default_factory=lambda: np.zeros(BINADE_BINS, np.int64))
    binade_changed: np.ndarray = field(default_factory=lambda: np.zeros(BINADE_BINS, np.int64))

    @classmethod
    def empty(cls, n_tol: int) -> DiffStats:
        return cls(n_le_tol=np.zeros(n_tol, np.int64))

    def merge(self, other: DiffStats) -> DiffStats:
        """Stats of the union of two disjoint ranges (a new object)."""
        if self.n_le_tol.shape != other.n_le_tol.shape:
            raise ValueError("cannot merge stats computed for different tolerance grids")
        kw: dict = {f: getattr(self, f) + getattr(other, f) for f in _INT_FIELDS + _SUM_FIELDS}
        kw.update({f: getattr(self, f) + getattr(other, f) for f in _ARRAY_FIELDS})
        kw["max_abs_delta"] = max(self.max_abs_delta, other.max_abs_delta)
        return DiffStats(**kw)

    def n_unchanged_at(self, k: int) -> int:
        """Unchanged elements under tolerance index ``k``."""
        return self.numel - self.n_changed + int(self.n_le_tol[k])

    @property
    def n_rel_unchanged_total(self) -> int:
        """Unchanged elements under the relative probe."""
        return self.numel - self.n_changed + self.n_rel_unchanged

    @property
    def n_nonfinite(self) -> int:
        return self.n_nan_base + self.n_inf_base + self.n_nan_tuned + self.n_inf_tuned

    def to_dict(self) -> dict:
        """JSON-able form; histograms are stored sparsely as ``{bin: count}``."""
        out: dict = {f: int(getattr(self, f)) for f in _INT_FIELDS}
        out.update({f: float(getattr(self, f)) for f in (*_SUM_FIELDS, "max_abs_delta")})
        out["n_le_tol"] = [int(v) for v in self.n_le_tol]
        for f in ("ulp_hist", "binade_total", "binade_changed"):
            arr = getattr(self, f)
            out[f] = {str(int(i)): int(arr[i]) for i in np.flatnonzero(arr)}
        return out

    @classmethod
    def from_dict(cls, data: dict) -> DiffStats:
        kw: dict = {f: int(data[f]) for f in _INT_FIELDS}
        kw.update({f: float(data[f]) for f in (*_SUM_FIELDS, "max_abs_delta")})
        kw["n_le_tol"] = np.asarray(data["n_le_tol"], np.int64)
        for f, size in (
            ("ulp_hist", ULP_BINS),
            ("binade_total", BINADE_BINS),
            ("binade_changed", BINADE_BINS),
        ):
            arr = np.zeros(size, np.int64)
            for k, v in data[f].items():
                arr[int(k)] = v
            kw[f] = arr
        return cls(**kw)
