# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Python binding of the C mask kernels (``bitcore.c``): typed buffers in, GIL released.

Read-only buffers (mmap views) are accepted wherever the kernel only reads. ``threads`` <= 0
means OpenMP's default; every result is an integer count, identical for any thread count.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t


cdef extern from "bitcore.h" nogil:
    enum:
        RLB_N_STRATA
        RLB_MAX_MASKS
        RLB_ULP_LOG2_MIN
        RLB_ULP_BINS
        RLB_BINADE_BINS

    int64_t rlb_popcount(const uint8_t *a, int64_t n, int32_t threads)
    int64_t rlb_and_popcount(const uint8_t *a, const uint8_t *b, int64_t n, int32_t threads)
    void rlb_pair_popcounts(const uint8_t *a, const uint8_t *b, int64_t n, int32_t threads,
                            int64_t *out)
    int rlb_strata_hist16(const uint16_t *words, int64_t n, int32_t shift, uint32_t fmask,
                          const uint8_t *masks, int64_t nmasks, int64_t stride, int64_t *hist,
                          int32_t threads)
    int rlb_strata_hist32(const uint32_t *words, int64_t n, int32_t shift, uint32_t fmask,
                          const uint8_t *masks, int64_t nmasks, int64_t stride, int64_t *hist,
                          int32_t threads)
    void rlb_select_flat(const double *u, int64_t n, int64_t *rem, uint8_t *out)
    void rlb_select_strata16(const uint16_t *words, int32_t shift, uint32_t fmask,
                             const double *u, int64_t n, int64_t *rem_k, int64_t *rem_n,
                             uint8_t *out)
    void rlb_select_strata32(const uint32_t *words, int32_t shift, uint32_t fmask,
                             const double *u, int64_t n, int64_t *rem_k, int64_t *rem_n,
                             uint8_t *out)
    int rlb_absorb_counts(const uint32_t *a32, const uint32_t *b32, const uint16_t *a16,
                          const uint16_t *b16, int64_t n, const uint8_t *efield,
                          const int32_t *ulplog2, int64_t *binades, int64_t *hist,
                          int32_t threads)
    int rlb_max_threads()


#: strata a histogram indexes, masks it combines, and the absorption histogram's layout
N_STRATA, MAX_MASKS = RLB_N_STRATA, RLB_MAX_MASKS
ULP_LOG2_MIN, ULP_BINS, BINADE_BINS = RLB_ULP_LOG2_MIN, RLB_ULP_BINS, RLB_BINADE_BINS

ctypedef fused word_t:
    uint16_t
    uint32_t


def max_threads() -> int:
    """Threads a kernel call uses by default (OpenMP's maximum; 1 without OpenMP)."""
    return rlb_max_threads()


def popcount(const uint8_t[::1] a, int threads=0) -> int:
    """Set bits in uint8[n]."""
    cdef int64_t n = a.shape[0], c = 0
    if n:
        with nogil:
            c = rlb_popcount(&a[0], n, threads)
    return c


cdef void _same_length(Py_ssize_t n, Py_ssize_t m) except *:
    if n != m:
        raise ValueError(f"packed masks differ in length: {n} vs {m} bytes")


def and_popcount(const uint8_t[::1] a, const uint8_t[::1] b, int threads=0) -> int:
    """Set bits of ``a & b`` for two uint8[n]."""
    _same_length(a.shape[0], b.shape[0])
    cdef int64_t n = a.shape[0], c = 0
    if n:
        with nogil:
            c = rlb_and_popcount(&a[0], &b[0], n, threads)
    return c


def pair_popcounts(const uint8_t[::1] a, const uint8_t[::1] b, int threads=0) -> tuple:
    """(|a|, |b|, |a & b|) for two uint8[n], in one pass."""
    _same_length(a.shape[0], b.shape[0])
    cdef int64_t n = a.shape[0]
    cdef int64_t out[3]
    out[0] = out[1] = out[2] = 0
    if n:
        with nogil:
            rlb_pair_popcounts(&a[0], &b[0], n, threads, out)
    return out[0], out[1], out[2]


cdef void _check_field(int shift, uint32_t fmask, int width) except *:
    if shift < 0 or shift >= width or fmask >= RLB_N_STRATA:
        raise ValueError(f"bad exponent field: shift {shift}, mask {fmask}")


def strata_histogram(const word_t[::1] words, int shift, uint32_t fmask,
                     const uint8_t[:, ::1] masks, int64_t[:, ::1] hist, int threads=0) -> None:
    """hist[g, c] += elements of stratum g = (words >> shift) & fmask whose mask bits spell c.

    words: uint16[n] or uint32[n]; masks: uint8[R, >= ceil(n / 8)] (R <= MAX_MASKS);
    hist: int64[N_STRATA, 2**R].
    """
    cdef int64_t n = words.shape[0], R = masks.shape[0]
    if R < 1 or R > RLB_MAX_MASKS:
        raise ValueError(f"a strata histogram combines 1 to {RLB_MAX_MASKS} masks, got {R}")
    if masks.shape[1] < (n + 7) // 8:
        raise ValueError(f"masks hold {masks.shape[1]} bytes, {(n + 7) // 8} needed")
    if hist.shape[0] != RLB_N_STRATA or hist.shape[1] != (1 << R):
        raise ValueError(f"hist must be int64[{RLB_N_STRATA}, {1 << R}]")
    _check_field(shift, fmask, 16 if word_t is uint16_t else 32)
    if n == 0:
        return
    cdef int rc
    cdef int64_t stride = masks.shape[1]
    with nogil:
        if word_t is uint16_t:
            rc = rlb_strata_hist16(&words[0], n, shift, fmask, &masks[0, 0], R, stride,
                                   &hist[0, 0], threads)
        else:
            rc = rlb_strata_hist32(&words[0], n, shift, fmask, &masks[0, 0], R, stride,
                                   &hist[0, 0], threads)
    if rc:
        raise MemoryError("strata histogram: out of memory")


cdef void _check_out(Py_ssize_t n, Py_ssize_t nbytes) except *:
    if nbytes < (n + 7) // 8:
        raise ValueError(f"out holds {nbytes} bytes, {(n + 7) // 8} needed")


def select_flat(const double[::1] u, int64_t[::1] rem, uint8_t[::1] out) -> None:
    """Selection sampling over u: float64[n]; rem: int64[2] = [k left, n left]; out: uint8."""
    if rem.shape[0] != 2:
        raise ValueError("rem must be int64[2]")
    _check_out(u.shape[0], out.shape[0])
    cdef int64_t n = u.shape[0]
    if n == 0:
        return
    with nogil:
        rlb_select_flat(&u[0], n, &rem[0], &out[0])


def select_strata(const word_t[::1] words, int shift, uint32_t fmask, const double[::1] u,
                  int64_t[::1] rem_k, int64_t[::1] rem_n, uint8_t[::1] out) -> None:
    """Selection sampling within each stratum of words (rem_k, rem_n: int64[N_STRATA])."""
    if rem_k.shape[0] != RLB_N_STRATA or rem_n.shape[0] != RLB_N_STRATA:
        raise ValueError(f"rem_k and rem_n must be int64[{RLB_N_STRATA}]")
    if words.shape[0] != u.shape[0]:
        raise ValueError(f"{words.shape[0]} words but {u.shape[0]} uniforms")
    _check_field(shift, fmask, 16 if word_t is uint16_t else 32)
    _check_out(u.shape[0], out.shape[0])
    cdef int64_t n = u.shape[0]
    if n == 0:
        return
    with nogil:
        if word_t is uint16_t:
            rlb_select_strata16(&words[0], shift, fmask, &u[0], n, &rem_k[0], &rem_n[0],
                                &out[0])
        else:
            rlb_select_strata32(&words[0], shift, fmask, &u[0], n, &rem_k[0], &rem_n[0],
                                &out[0])


def absorb_counts(const uint32_t[::1] a32, const uint32_t[::1] b32, const uint16_t[::1] a16,
                  const uint16_t[::1] b16, const uint8_t[::1] efield,
                  const int32_t[::1] ulplog2, int64_t[:, ::1] binades, int64_t[:, ::1] hist,
                  int threads=0) -> None:
    """fp32 updates split by a 16-bit cast (see bitcore.h); binades: int64[BINADE_BINS, 3],
    hist: int64[2, ULP_BINS], efield: uint8[65536], ulplog2: int32[65536]."""
    cdef int64_t n = a32.shape[0]
    if b32.shape[0] != n or a16.shape[0] != n or b16.shape[0] != n:
        raise ValueError("a32, b32, a16 and b16 must have one length")
    if efield.shape[0] != 65536 or ulplog2.shape[0] != 65536:
        raise ValueError("efield and ulplog2 must hold 65536 entries")
    if (binades.shape[0] != RLB_BINADE_BINS or binades.shape[1] != 3
            or hist.shape[0] != 2 or hist.shape[1] != RLB_ULP_BINS):
        raise ValueError(f"binades must be int64[{RLB_BINADE_BINS}, 3], "
                         f"hist int64[2, {RLB_ULP_BINS}]")
    if n == 0:
        return
    cdef int rc
    with nogil:
        rc = rlb_absorb_counts(&a32[0], &b32[0], &a16[0], &b16[0], n, &efield[0], &ulplog2[0],
                               &binades[0, 0], &hist[0, 0], threads)
    if rc:
        raise MemoryError("absorption counts: out of memory")
