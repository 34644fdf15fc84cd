"""CPU diff kernel: one fused, multi-threaded numba pass per chunk.

Hot path: a branch-free loop over all elements compares the raw words, compacts the indices of
changed elements, and (for 16-bit formats) histograms the base words. All float math — |Δ|, the
tolerance grid, the relative probe, the ULP histogram — runs on changed elements only. θ0's norm,
binades and NaN/Inf counts come from the 65536-bin word histogram, so they cost one increment per
element and are exact regardless of threading.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from ..dtypes import FLOAT_FORMATS, ULP_FORMATS, decode_tables
from ..stats import BINADE_BINS, ULP_BINS, ULP_LOG2_MIN, DiffStats
from . import ChunkSpec

_SUB = 4096  # elements per compaction block
_PART = 1 << 20  # elements per partition; partitions depend on n only (deterministic sums)
_MAX_PARTS = 64
# per-partition integer counters
_I_CHANGED, _I_REL, _I_ZERO, _I_NONFIN, _I_NAN_A, _I_INF_A, _I_NAN_B, _I_INF_B = range(8)
_NI = 8
# per-partition float accumulators
_F_MAX, _F_ABS, _F_SQD, _F_SQB = range(4)
_NF = 4


@njit(inline="always")
def _log2_floor(v: float) -> int:
    """floor(log2(v)) for finite v > 0 (float64, so float32 subnormals are exact)."""
    return np.int64((np.float64(v).view(np.uint64) >> np.uint64(52)) & np.uint64(0x7FF)) - 1023


@njit(inline="always")
def _accumulate(
    fx, fy, ulp, idx, m, tols, eta, rule, rule_tol, p, ints, tcount, ulp_hist, flt, mask, want_mask
):
    """Accumulate ``m`` changed elements (bits differ) of one compaction block.

    ``fx``/``fy`` hold their float32 values, ``ulp`` log2 ULP(θ0), ``idx`` their chunk indices.
    ``tcount[p, j]`` counts elements whose |Δ| exceeds exactly j grid tolerances (turned into
    cumulative counts by the caller). Locals keep the loop free of store-to-load chains.
    """
    ntol = tols.size
    n_rel = 0
    n_zero = 0
    n_nonfin = 0
    nan_a = 0
    inf_a = 0
    nan_b = 0
    inf_b = 0
    s_abs = 0.0
    s_sq = 0.0
    d_max = flt[p, _F_MAX]
    for q in range(m):
        x = np.float64(fx[q])
        y = np.float64(fy[q])
        d = np.float64(abs(fy[q] - fx[q]))  # Δ in float32, compared in float64
        bit = True
        if not np.isfinite(d):  # a side is NaN/Inf, or the float32 difference overflowed
            n_nonfin += 1
            nan_a += np.isnan(x)
            inf_a += np.isinf(x)
            nan_b += np.isnan(y)
            inf_b += np.isinf(y)
        else:
            j = 0
            for t in range(ntol):
                j += d > tols[t]
            tcount[p, j] += 1
            ref = max(abs(x), abs(y))
            n_rel += d <= eta * ref
            if d == 0.0:
                n_zero += 1
            else:
                k = _log2_floor(d) - ulp[q] - ULP_LOG2_MIN
                ulp_hist[p, min(max(k, 0), ULP_BINS - 1)] += 1
                s_abs += d
                s_sq += d * d
                d_max = max(d_max, d)
            if rule == 1:
                bit = not (d <= rule_tol)
            elif rule == 2:
                bit = not (d <= rule_tol * ref)
        if want_mask and bit:
            i = idx[q]
            mask[i >> 3] |= np.uint8(1 << (i & 7))
    ints[p, _I_REL] += n_rel
    ints[p, _I_ZERO] += n_zero
    ints[p, _I_NONFIN] += n_nonfin
    ints[p, _I_NAN_A] += nan_a
    ints[p, _I_INF_A] += inf_a
    ints[p, _I_NAN_B] += nan_b
    ints[p, _I_INF_B] += inf_b
    flt[p, _F_ABS] += s_abs
    flt[p, _F_SQD] += s_sq
    flt[p, _F_MAX] = d_max


def _parts(n: int) -> tuple[int, int]:
    nparts = max(1, min(_MAX_PARTS, -(-n // _PART)))
    per = -(-n // nparts)
    per = -(-per // _SUB) * _SUB
    return max(1, -(-n // per)) if n else 1, per


@njit(parallel=True, cache=True, nogil=True, boundscheck=False)
def _diff16(a, b, values, efield, ulplog2, tols, eta, rule, rule_tol, mask, want_mask, nparts, per):
    n = a.size
    ntol = tols.size
    hist = np.zeros((nparts, 65536), np.int32)
    ints = np.zeros((nparts, _NI), np.int64)
    tcount = np.zeros((nparts, ntol + 1), np.int64)
    bchg = np.zeros((nparts, BINADE_BINS), np.int64)
    uh = np.zeros((nparts, ULP_BINS), np.int64)
    flt = np.zeros((nparts, _NF), np.float64)
    for p in prange(nparts):
        buf = np.empty(_SUB, np.int64)
        fx = np.empty(_SUB, np.float32)
        fy = np.empty(_SUB, np.float32)
        ulp = np.empty(_SUB, np.int64)
        s0 = p * per
        e0 = min(n, s0 + per)
        for s in range(s0, e0, _SUB):
            e = min(e0, s + _SUB)
            m = 0
            for i in range(s, e):
                hist[p, a[i]] += 1
                buf[m] = i
                m += a[i] != b[i]
            ints[p, _I_CHANGED] += m
            for q in range(m):
                i = buf[q]
                x = a[i]
                bchg[p, efield[x]] += 1
                fx[q] = values[x]
                fy[q] = values[b[i]]
                ulp[q] = ulplog2[x]
            _accumulate(
                fx,
                fy,
                ulp,
                buf,
                m,
                tols,
                eta,
                rule,
                rule_tol,
                p,
                ints,
                tcount,
                uh,
                flt,
                mask,
                want_mask,
            )
    counts = np.zeros(65536, np.int64)
    for p in range(nparts):
        for v in range(65536):
            counts[v] += hist[p, v]
    btot = np.zeros(BINADE_BINS, np.int64)
    base = np.zeros(3, np.float64)  # nan, inf, sum of squares
    for v in range(65536):
        c = counts[v]
        if c == 0:
            continue
        btot[efield[v]] += c
        val = np.float64(values[v])
        if np.isnan(val):
            base[0] += c
        elif np.isinf(val):
            base[1] += c
        else:
            base[2] += c * val * val
    return ints, tcount, uh, bchg, btot, flt, base


@njit(parallel=True, cache=True, nogil=True, boundscheck=False)
def _diff32(a, b, st_emin, st_mant, tols, eta, rule, rule_tol, mask, want_mask, nparts, per):
    n = a.size
    ntol = tols.size
    ints = np.zeros((nparts, _NI), np.int64)
    tcount = np.zeros((nparts, ntol + 1), np.int64)
    bchg = np.zeros((nparts, BINADE_BINS), np.int64)
    btot = np.zeros((nparts, BINADE_BINS), np.int64)
    uh = np.zeros((nparts, ULP_BINS), np.int64)
    flt = np.zeros((nparts, _NF), np.float64)
    base = np.zeros((nparts, 3), np.float64)
    for p in prange(nparts):
        buf = np.empty(_SUB, np.int64)
        fx = np.empty(_SUB, np.float32)
        fy = np.empty(_SUB, np.float32)
        ulp = np.empty(_SUB, np.int64)
        s0 = p * per
        e0 = min(n, s0 + per)
        for s in range(s0, e0, _SUB):
            e = min(e0, s + _SUB)
            m = 0
            for i in range(s, e):
                x = a[i]
                field = (x >> np.uint32(23)) & np.uint32(0xFF)
                btot[p, field] += 1
                if field == 0xFF:
                    if x & np.uint32(0x7FFFFF):
                        base[p, 0] += 1
                    else:
                        base[p, 1] += 1
                else:
                    v = np.float64(np.uint32(x).view(np.float32))
                    base[p, 2] += v * v
                buf[m] = i
                m += x != b[i]
            ints[p, _I_CHANGED] += m
            for q in range(m):
                i = buf[q]
                x = a[i]
                field = np.int64((x >> np.uint32(23)) & np.uint32(0xFF))
                bchg[p, field] += 1
                e_unb = field - 127 if field > 0 else -126
                ulp[q] = max(e_unb, st_emin) - st_mant
                fx[q] = np.uint32(x).view(np.float32)
                fy[q] = np.uint32(b[i]).view(np.float32)
            _accumulate(
                fx,
                fy,
                ulp,
                buf,
                m,
                tols,
                eta,
                rule,
                rule_tol,
                p,
                ints,
                tcount,
                uh,
                flt,
                mask,
                want_mask,
            )
    tot = np.zeros(BINADE_BINS, np.int64)
    bsum = np.zeros(3, np.float64)
    for p in range(nparts):
        tot += btot[p]
        bsum += base[p]
    return ints, tcount, uh, bchg, tot, flt, bsum


@njit(cache=True, nogil=True, boundscheck=False)
def _count_ne(a, b) -> int:
    c = 0
    for i in range(a.size):
        c += a[i] != b[i]
    return c


class CpuKernel:
    """Numba implementation of :class:`~rlsparse_lib.kernels.DiffKernel`."""

    name = "cpu-numba"

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads

    def diff_chunk(self, a: np.ndarray, b: np.ndarray, spec: ChunkSpec, mask_out=None) -> DiffStats:
        """Compare raw words ``a`` (base) and ``b`` (tuned); see the protocol."""
        n = a.size
        if b.size != n:
            raise ValueError(f"chunk sizes differ: {n} vs {b.size}")
        if n >= 2**31:
            raise ValueError("chunks must hold fewer than 2**31 elements")
        fmt = FLOAT_FORMATS[spec.compare]
        nparts, per = _parts(n)
        want = mask_out is not None
        mask = mask_out if want else np.zeros(1, np.uint8)
        tols = np.asarray(spec.tolerances, np.float64)
        args = (
            tols,
            float(spec.eta),
            spec.mask_rule.code,
            float(spec.mask_rule.tol),
            mask,
            want,
            nparts,
            per,
        )
        if self.threads:
            numba.set_num_threads(self.threads)
        if fmt.bits == 16:
            values, efield, ulplog2 = decode_tables(spec.compare, spec.stored)
            out = _diff16(a, b, values, efield, ulplog2, *args)
        else:
            st_mant, st_emin = ULP_FORMATS[spec.stored]
            out = _diff32(a, b, st_emin, st_mant, *args)
        ints, tcount, uh, bchg, btot, flt, base = out
        isum = ints.sum(axis=0)
        # tcount[:, j]: finite-Δ changed elements above exactly j tolerances -> |Δ| <= tol[t]
        # holds for those with j <= t
        n_le_tol = np.cumsum(tcount.sum(axis=0))[: tols.size]
        return DiffStats(
            numel=n,
            n_changed=int(isum[_I_CHANGED]),
            n_le_tol=n_le_tol,
            n_rel_unchanged=int(isum[_I_REL]),
            n_zero_delta=int(isum[_I_ZERO]),
            n_nonfinite_delta=int(isum[_I_NONFIN]),
            n_nan_base=int(base[0]),
            n_inf_base=int(base[1]),
            n_nan_tuned=int(base[0]) - int(isum[_I_NAN_A]) + int(isum[_I_NAN_B]),
            n_inf_tuned=int(base[1]) - int(isum[_I_INF_A]) + int(isum[_I_INF_B]),
            max_abs_delta=float(flt[:, _F_MAX].max()),
            sum_abs_delta=math.fsum(flt[:, _F_ABS]),
            sum_sq_delta=math.fsum(flt[:, _F_SQD]),
            sum_sq_base=float(base[2]),
            ulp_hist=uh.sum(axis=0),
            binade_total=btot,
            binade_changed=bchg.sum(axis=0),
        )

    def count_changed(self, a: np.ndarray, b: np.ndarray) -> int:
        """Bitwise changed count of two raw-word arrays (any width)."""
        return int(_count_ne(a, b))
