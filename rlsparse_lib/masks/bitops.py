"""Kernels on bit-packed masks: fused popcounts, per-stratum counts and exact sampling.

Packed masks follow :mod:`rlsparse_lib.io.maskfile`: element ``i`` is bit ``i % 8`` (least significant
first) of byte ``i // 8``. Strata are the exponent field of θ0's raw words, i.e. the |θ0| binade
(zero/subnormal and inf/nan are strata of their own). The loops are C (``bitcore.c``, bound by
``_bitcore.pyx``, compiled at install time with OpenMP): numpy has no fused popcount reduction, no
joint (binade, mask bits) histogram without unpacking every bit, and no sequential selection
sampler. Every kernel releases the GIL and accepts read-only (mmap) inputs; counts are integers,
identical for any ``threads`` (<= 0: OpenMP's default; small inputs run on one thread).
"""

from __future__ import annotations

import numpy as np

from rlsparse_lib.errors import ConfigError
from rlsparse_lib.io.dtypes import FLOAT_FORMATS

try:
    from rlsparse_lib.masks import _bitcore
except ImportError as exc:  # a source checkout that was never installed
    raise ImportError(
        "the compiled mask kernels (rlsparse_lib/masks/_bitcore) are missing: install the "
        "package with `pip install -e .` (needs a C compiler)"
    ) from exc

#: number of strata (exponent-field values) a kernel can index; enough for fp32/bf16
N_STRATA: int = _bitcore.N_STRATA
#: most masks a strata histogram can combine (codes are bytes)
MAX_STRATA_MASKS: int = _bitcore.MAX_MASKS


def _bytes(a: np.ndarray) -> np.ndarray:
    """A 1-d uint8 array as a contiguous one (no copy when it already is)."""
    return np.ascontiguousarray(a, np.uint8).reshape(-1)


def max_threads() -> int:
    """Threads a kernel uses by default (OpenMP's maximum; 1 without OpenMP)."""
    return int(_bitcore.max_threads())


def popcount(packed: np.ndarray, *, threads: int = 0) -> int:
    """Set bits in a uint8[n] array (any length, aligned or not)."""
    return int(_bitcore.popcount(_bytes(packed), threads))


def and_popcount(a: np.ndarray, b: np.ndarray, *, threads: int = 0) -> int:
    """Set bits of ``a & b`` for two uint8[n] arrays, without materialising it."""
    return int(_bitcore.and_popcount(_bytes(a), _bytes(b), threads))


def pair_popcounts(a: np.ndarray, b: np.ndarray, *, threads: int = 0) -> tuple[int, int, int]:
    """(|a|, |b|, |a & b|) of two uint8[n] arrays in one fused pass."""
    ca, cb, cab = _bitcore.pair_popcounts(_bytes(a), _bytes(b), threads)
    return int(ca), int(cb), int(cab)


def strata_params(dtype: str) -> tuple[int, int]:
    """(shift, field mask) extracting the exponent field from raw words of a float ``dtype``."""
    fmt = FLOAT_FORMATS.get(dtype)
    if fmt is None:
        raise ConfigError(f"|θ0| binades need a bf16/fp16/fp32 tensor, got {dtype}")
    return fmt.mant_bits, fmt.exp_max_field


def strata_histogram(
    words: np.ndarray, dtype: str, masks: np.ndarray, hist: np.ndarray, *, threads: int = 0
) -> None:
    """Accumulate the joint histogram of |θ0| binade and mask bits.

    Args:
        words: raw words (uint16/uint32) of θ0, n elements.
        dtype: θ0's float dtype (decides the exponent field).
        masks: uint8[R, >= ceil(n / 8)] packed masks aligned with ``words`` (1 <= R <= 8).
        hist: int64[N_STRATA, 2**R] (C-contiguous), modified in place: ``hist[g, c]`` counts
            elements in binade g whose bit in mask r is bit r of c. See :func:`strata_marginals`.
    """
    if masks.shape[0] > MAX_STRATA_MASKS:
        raise ConfigError(f"binade strata combine at most {MAX_STRATA_MASKS} masks at once")
    shift, fmask = strata_params(dtype)
    masks = np.ascontiguousarray(masks, np.uint8)
    _bitcore.strata_histogram(np.ascontiguousarray(words), shift, fmask, masks, hist, threads)


def strata_marginals(hist: np.ndarray, *members: int) -> np.ndarray:
    """Per-stratum count of elements set in every mask in ``members`` (all elements if none).

    Args:
        hist: the int64[N_STRATA, 2**R] joint histogram of :func:`strata_histogram`.

    Returns:
        int64[N_STRATA].
    """
    want = sum(1 << r for r in members)
    codes = [c for c in range(hist.shape[1]) if c & want == want]
    return hist[:, codes].sum(axis=1)


def select_uniform(u: np.ndarray, rem: np.ndarray, out: np.ndarray) -> None:
    """Continue an exact uniform k-of-n draw over the next ``u.size`` elements.

    Each element is selected with probability (k left)/(n left), so over the whole sequence exactly
    k elements are drawn and every k-subset is equally likely, however the sequence is chunked
    (Knuth's selection sampling, Algorithm S; sequential, hence one thread).

    Args:
        u: float64 uniforms in [0, 1), one per element.
        rem: int64[2] = [selections left, elements left], updated in place.
        out: zero-filled uint8[ceil(u.size / 8)] receiving the packed selection.
    """
    _bitcore.select_flat(np.ascontiguousarray(u, np.float64), rem, out)


def select_uniform_strata(
    words: np.ndarray,
    dtype: str,
    u: np.ndarray,
    rem_k: np.ndarray,
    rem_n: np.ndarray,
    out: np.ndarray,
) -> None:
    """:func:`select_uniform` within each |θ0| binade.

    Args:
        words: raw words (uint16/uint32) of θ0, n elements; u: float64[n] uniforms.
        rem_k, rem_n: int64[N_STRATA] selections and elements left per binade, in place.
        out: zero-filled uint8[ceil(n / 8)] receiving the packed selection.
    """
    shift, fmask = strata_params(dtype)
    _bitcore.select_strata(
        np.ascontiguousarray(words),
        shift,
        fmask,
        np.ascontiguousarray(u, np.float64),
        rem_k,
        rem_n,
        out,
    )


def absorb_counts(
    a32: np.ndarray,
    b32: np.ndarray,
    a16: np.ndarray,
    b16: np.ndarray,
    efield: np.ndarray,
    ulplog2: np.ndarray,
    binades: np.ndarray,
    hist: np.ndarray,
    *,
    threads: int = 0,
) -> None:
    """Count fp32 updates and whether a cast to a 16-bit format keeps them visible.

    For every element, in stratum g = ``efield[a16]``: ``binades[g, 0] += 1``; where the fp32
    words differ ``binades[g, 1] += 1`` and ``binades[g, 2] += (a16 != b16)``; and for a finite,
    non-zero |Δ| = |b − a| (float64), ``hist[visible, clip(floor(log2|Δ|) − ulplog2[a16] −
    ULP_LOG2_MIN, 0, ULP_BINS − 1)] += 1``.

    Args:
        a32, b32: uint32[n] fp32 words of θ0 and θ1; a16, b16: uint16[n] their casts.
        efield: uint8[65536] exponent field, ulplog2: int32[65536] log2 ULP of each 16-bit word.
        binades: int64[BINADE_BINS, 3] and hist: int64[2, ULP_BINS], accumulated in place.
    """
    _bitcore.absorb_counts(
        np.ascontiguousarray(a32),
        np.ascontiguousarray(b32),
        np.ascontiguousarray(a16),
        np.ascontiguousarray(b16),
        np.ascontiguousarray(efield, np.uint8),
        np.ascontiguousarray(ulplog2, np.int32),
        binades,
        hist,
        threads,
    )
