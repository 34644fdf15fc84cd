"""Numba kernels on bit-packed masks: fused popcounts, per-stratum counts and exact sampling.

Packed masks follow :mod:`rlsparse_lib.io.maskfile`: element ``i`` is bit ``i % 8`` (least significant
first) of byte ``i // 8``. Byte ranges are read as unaligned ``uint64`` views (x86 loads them at
full speed) plus a tail of fewer than 8 bytes. Strata are the exponent field of θ0's raw words,
i.e. the |θ0| binade (zero/subnormal and inf/nan are strata of their own). All kernels are
single-threaded and release the GIL; read-only (mmap) and writable inputs compile separately.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

from rlsparse_lib.errors import ConfigError
from rlsparse_lib.io.dtypes import FLOAT_FORMATS

#: number of strata (exponent-field values) a kernel can index; enough for fp32/bf16
N_STRATA = 256


@intrinsic
def _popcount64(typingctx, x):
    """LLVM ``ctpop`` on a uint64 (one instruction with POPCNT)."""
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return sig, codegen


def split_words(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8[n] -> (uint64[n // 8] view of the leading whole words, uint8[n % 8] tail)."""
    n8 = packed.size // 8 * 8
    return packed[:n8].view(np.uint64), packed[n8:]


@njit(cache=True, nogil=True, boundscheck=False)
def _popcount_words(a) -> int:
    c = np.uint64(0)
    for i in range(a.size):
        c += _popcount64(a[i])
    return c


@njit(cache=True, nogil=True, boundscheck=False)
def _and_popcount_words(a, b) -> int:
    c = np.uint64(0)
    for i in range(a.size):
        c += _popcount64(a[i] & b[i])
    return c


@njit(cache=True, nogil=True, boundscheck=False)
def _triple_popcount_words(a, b):
    ca = np.uint64(0)
    cb = np.uint64(0)
    cab = np.uint64(0)
    for i in range(a.size):
        x = a[i]
        y = b[i]
        ca += _popcount64(x)
        cb += _popcount64(y)
        cab += _popcount64(x & y)
    return ca, cb, cab


def popcount(packed: np.ndarray) -> int:
    """Set bits in a uint8 array (any length, aligned or not)."""
    words, tail = split_words(packed)
    return int(_popcount_words(words)) + int(np.bitwise_count(tail).sum())


def and_popcount(a: np.ndarray, b: np.ndarray) -> int:
    """Set bits of ``a & b`` for two uint8 arrays of equal length, without materialising it."""
    wa, ta = split_words(a)
    wb, tb = split_words(b)
    return int(_and_popcount_words(wa, wb)) + int(np.bitwise_count(ta & tb).sum())


def pair_popcounts(a: np.ndarray, b: np.ndarray) -> tuple[int, int, int]:
    """(|a|, |b|, |a & b|) of two uint8 arrays of equal length in one fused pass."""
    wa, ta = split_words(a)
    wb, tb = split_words(b)
    ca, cb, cab = _triple_popcount_words(wa, wb)
    return (
        int(ca) + int(np.bitwise_count(ta).sum()),
        int(cb) + int(np.bitwise_count(tb).sum()),
        int(cab) + int(np.bitwise_count(ta & tb).sum()),
    )


def strata_params(dtype: str) -> tuple[int, int]:
    """(shift, field mask) extracting the exponent field from raw words of a float ``dtype``."""
    fmt = FLOAT_FORMATS.get(dtype)
    if fmt is None:
        raise ConfigError(f"|θ0| binades need a bf16/fp16/fp32 tensor, got {dtype}")
    return fmt.mant_bits, fmt.exp_max_field


#: SPREAD[b] holds bit t of byte b in byte t (to build 8 per-element codes at once)
SPREAD = np.array([sum(((b >> t) & 1) << (8 * t) for t in range(8)) for b in range(256)], np.uint64)
#: most masks a strata histogram can combine (codes are bytes)
MAX_STRATA_MASKS = 8


@njit(cache=True, nogil=True, boundscheck=False)
def _strata_histogram(words, shift, fmask, masks, n, spread, hist):
    """hist[g, c] += elements in stratum g whose bits in masks[0..R) spell the code c."""
    nr = masks.shape[0]
    nfull = n >> 3
    for j in range(nfull + 1):
        i0 = j * 8
        m = min(8, n - i0)
        if m <= 0:
            break
        codes = np.uint64(0)
        for r in range(nr):
            codes |= spread[masks[r, j]] << np.uint64(r)
        for t in range(m):
            c = (codes >> np.uint64(8 * t)) & np.uint64(0xFF)
            hist[(words[i0 + t] >> shift) & fmask, c] += 1


def strata_histogram(words: np.ndarray, dtype: str, masks: np.ndarray, hist: np.ndarray) -> None:
    """Accumulate the joint histogram of |θ0| binade and mask bits.

    Args:
        words: raw words (uint16/uint32) of θ0, n elements.
        dtype: θ0's float dtype (decides the exponent field).
        masks: uint8[R, ceil(n / 8)] packed masks aligned with ``words`` (R <= 8).
        hist: int64[N_STRATA, 2**R], modified in place: ``hist[g, c]`` counts elements in binade
            g whose bit in mask r is bit r of c. See :func:`strata_marginals`.
    """
    if masks.shape[0] > MAX_STRATA_MASKS:
        raise ConfigError(f"binade strata combine at most {MAX_STRATA_MASKS} masks at once")
    shift, fmask = strata_params(dtype)
    t = words.dtype.type
    _strata_histogram(words, t(shift), t(fmask), masks, words.size, SPREAD, hist)


def strata_marginals(hist: np.ndarray, *members: int) -> np.ndarray:
    """Per-stratum count of elements set in every mask in ``members`` (all elements if none).

    Args:
        hist: the int64[N_STRATA, 2**R] joint histogram of :func:`strata_histogram`.
    """
    want = sum(1 << r for r in members)
    codes = [c for c in range(hist.shape[1]) if c & want == want]
    return hist[:, codes].sum(axis=1)


@njit(cache=True, nogil=True, boundscheck=False)
def _select_flat(u, rem, out):
    """Knuth's selection sampling (Algorithm S) over one stratum; rem = [k left, n left]."""
    k = rem[0]
    m = rem[1]
    for i in range(u.size):
        if u[i] * m < k:
            out[i >> 3] |= np.uint8(1 << (i & 7))
            k -= 1
        m -= 1
    rem[0] = k
    rem[1] = m


@njit(cache=True, nogil=True, boundscheck=False)
def _select_strata(words, shift, fmask, u, rem_k, rem_n, out):
    for i in range(u.size):
        g = (words[i] >> shift) & fmask
        if u[i] * rem_n[g] < rem_k[g]:
            out[i >> 3] |= np.uint8(1 << (i & 7))
            rem_k[g] -= 1
        rem_n[g] -= 1


def select_uniform(u: np.ndarray, rem: np.ndarray, out: np.ndarray) -> None:
    """Continue an exact uniform k-of-n draw over the next ``u.size`` elements.

    Each element is selected with probability (k left)/(n left), so over the whole sequence exactly
    k elements are drawn and every k-subset is equally likely, however the sequence is chunked.

    Args:
        u: float64 uniforms in [0, 1), one per element.
        rem: int64[2] = [selections left, elements left], updated in place.
        out: zero-filled uint8[ceil(u.size / 8)] receiving the packed selection.
    """
    _select_flat(u, rem, out)


def select_uniform_strata(
    words: np.ndarray,
    dtype: str,
    u: np.ndarray,
    rem_k: np.ndarray,
    rem_n: np.ndarray,
    out: np.ndarray,
) -> None:
    """:func:`select_uniform` within each |θ0| binade (rem_k/rem_n: int64[N_STRATA], in place)."""
    shift, fmask = strata_params(dtype)
    _select_strata(words, words.dtype.type(shift), words.dtype.type(fmask), u, rem_k, rem_n, out)
