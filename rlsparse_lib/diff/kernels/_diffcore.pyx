# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Python binding of the C diff kernel (``diffcore.c``): typed buffers in, GIL released.

Outputs are caller-allocated, zero-filled arrays; see ``diffcore.h`` for their layout.
"""

from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t


cdef extern from "diffcore.h" nogil:
    enum:
        RLS_ULP_LOG2_MIN
        RLS_NI
        RLS_NF
        RLS_ULP_BINS
        RLS_BINADE_BINS
        RLS_I_CHANGED
        RLS_I_REL
        RLS_I_ZERO
        RLS_I_NONFIN
        RLS_I_NAN_A
        RLS_I_INF_A
        RLS_I_NAN_B
        RLS_I_INF_B
        RLS_I_NAN_BASE
        RLS_I_INF_BASE
        RLS_F_MAX
        RLS_F_ABS
        RLS_F_SQD
        RLS_F_SQB

    ctypedef struct rls_spec:
        const double *tols
        int64_t ntol
        const int8_t *tol_table
        double eta
        int32_t rule
        double rule_tol
        uint8_t *mask
        int64_t nparts
        int64_t per
        int32_t threads

    ctypedef struct rls_out:
        int64_t *ints
        int64_t *tcount
        int64_t *ulp_hist
        int64_t *bchg
        int64_t *btot
        double *flt

    int rls_diff16(const uint16_t *a, const uint16_t *b, int64_t n, const float *values,
                   const uint8_t *efield, const int32_t *ulplog2, int32_t bf16,
                   const rls_spec *spec, rls_out *out)
    int rls_diff32(const uint32_t *a, const uint32_t *b, int64_t n, int32_t st_mant,
                   int32_t st_emin, const rls_spec *spec, rls_out *out)
    int rls_max_threads()
    ctypedef struct rls_qchunk:
        int32_t nibbles
        const uint8_t *ca
        const uint8_t *cb
        int64_t n
        int64_t ncols
        int64_t scols
        int64_t col_block
        const float *sa
        const float *sb
        const int64_t *srow
        const float *table
        const uint8_t *ea
        const uint8_t *eb
        const float *e2m1
        const float *e8m0
    int rls_qdiff(const rls_qchunk *q, const float *values, const uint8_t *efield,
                  const int32_t *ulplog2, const rls_spec *spec, rls_out *out, int64_t *qcounts)
    void rls_dequant_fp8(const uint8_t *codes, int64_t nrows, int64_t ncols, const float *scales,
                         const int64_t *srow, int64_t scols, int64_t col_block,
                         const float *table, int32_t use_lut, uint16_t *out, int32_t threads)
    void rls_dequant_mxfp4(const uint8_t *blocks, const uint8_t *scales, int64_t ngroups,
                           const float *e2m1, const float *e8m0, uint16_t *out, int32_t threads)
    void rls_quant_counts(const uint8_t *ca, const uint8_t *cb, const uint16_t *da,
                          const uint16_t *db, int64_t n, int32_t nibbles, int64_t *counts,
                          int32_t threads)


#: sizes and field indices of the output arrays
NI, NF, ULP_BINS, BINADE_BINS = RLS_NI, RLS_NF, RLS_ULP_BINS, RLS_BINADE_BINS
ULP_LOG2_MIN = RLS_ULP_LOG2_MIN
I_CHANGED, I_REL, I_ZERO, I_NONFIN = RLS_I_CHANGED, RLS_I_REL, RLS_I_ZERO, RLS_I_NONFIN
I_NAN_A, I_INF_A, I_NAN_B, I_INF_B = RLS_I_NAN_A, RLS_I_INF_A, RLS_I_NAN_B, RLS_I_INF_B
I_NAN_BASE, I_INF_BASE = RLS_I_NAN_BASE, RLS_I_INF_BASE
F_MAX, F_ABS, F_SQD, F_SQB = RLS_F_MAX, RLS_F_ABS, RLS_F_SQD, RLS_F_SQB


def max_threads() -> int:
    """Threads a kernel call uses by default (OpenMP's maximum; 1 without OpenMP)."""
    return rls_max_threads()


cdef rls_spec _spec(const double[::1] tols, const int8_t[::1] tol_table, double eta, int rule,
                    double rule_tol, uint8_t[::1] mask, int64_t nparts, int64_t per,
                    int threads):
    if tol_table.shape[0] != 65536:
        raise ValueError("tol_table must hold 65536 entries")
    if nparts < 1 or per < 1 or per % 4096:
        raise ValueError(f"bad partitioning: {nparts} parts of {per}")
    cdef rls_spec s
    s.tols = &tols[0] if tols.shape[0] else NULL
    s.ntol = tols.shape[0]
    s.tol_table = &tol_table[0]
    s.eta = eta
    s.rule = rule
    s.rule_tol = rule_tol
    s.mask = &mask[0] if mask is not None else NULL
    s.nparts = nparts
    s.per = per
    s.threads = threads
    return s


cdef rls_out _out(int64_t[::1] ints, int64_t[::1] tcount, int64_t[::1] ulp_hist,
                  int64_t[::1] bchg, int64_t[::1] btot, double[:, ::1] flt, int64_t ntol,
                  int64_t nparts):
    if (ints.shape[0] != RLS_NI or tcount.shape[0] != ntol + 1
            or ulp_hist.shape[0] != RLS_ULP_BINS or bchg.shape[0] != RLS_BINADE_BINS
            or btot.shape[0] != RLS_BINADE_BINS or flt.shape[0] != nparts
            or flt.shape[1] != RLS_NF):
        raise ValueError("output arrays have the wrong sizes")
    cdef rls_out o
    o.ints = &ints[0]
    o.tcount = &tcount[0]
    o.ulp_hist = &ulp_hist[0]
    o.bchg = &bchg[0]
    o.btot = &btot[0]
    o.flt = &flt[0, 0]
    return o


def _check(int64_t n, int64_t m, uint8_t[::1] mask, int64_t nparts, int64_t per):
    if m != n:
        raise ValueError(f"chunk sizes differ: {n} vs {m}")
    if nparts * per < n or (nparts - 1) * per >= n:
        raise ValueError(f"{nparts} parts of {per} do not tile {n} elements")
    if mask is not None and mask.shape[0] < (n + 7) // 8:
        raise ValueError(f"mask holds {mask.shape[0]} bytes, {(n + 7) // 8} needed")


def diff16(const uint16_t[::1] a, const uint16_t[::1] b, const float[::1] values,
           const uint8_t[::1] efield, const int32_t[::1] ulplog2, int bf16, const double[::1] tols,
           const int8_t[::1] tol_table, double eta, int rule, double rule_tol,
           uint8_t[::1] mask, int64_t nparts, int64_t per, int threads, int64_t[::1] ints,
           int64_t[::1] tcount, int64_t[::1] ulp_hist, int64_t[::1] bchg, int64_t[::1] btot,
           double[:, ::1] flt):
    """Diff two uint16[n] word arrays of a 16-bit format; tables are [65536], ``bf16``: they are
    bfloat16's with ULPs by exponent field (see diffcore.h)."""
    cdef int64_t n = a.shape[0]
    _check(n, b.shape[0], mask, nparts, per)
    if values.shape[0] != 65536 or efield.shape[0] != 65536 or ulplog2.shape[0] != 65536:
        raise ValueError("decode tables must hold 65536 entries")
    cdef rls_spec s = _spec(tols, tol_table, eta, rule, rule_tol, mask, nparts, per, threads)
    cdef rls_out o = _out(ints, tcount, ulp_hist, bchg, btot, flt, s.ntol, nparts)
    cdef int rc
    with nogil:
        rc = rls_diff16(&a[0], &b[0], n, &values[0], &efield[0], &ulplog2[0], bf16, &s, &o)
    if rc:
        raise MemoryError("diff kernel: out of memory")


def diff32(const uint32_t[::1] a, const uint32_t[::1] b, int st_mant, int st_emin,
           const double[::1] tols, const int8_t[::1] tol_table, double eta, int rule,
           double rule_tol, uint8_t[::1] mask, int64_t nparts, int64_t per, int threads,
           int64_t[::1] ints, int64_t[::1] tcount, int64_t[::1] ulp_hist, int64_t[::1] bchg,
           int64_t[::1] btot, double[:, ::1] flt):
    """Diff two uint32[n] word arrays of float32 (see diffcore.h)."""
    cdef int64_t n = a.shape[0]
    _check(n, b.shape[0], mask, nparts, per)
    cdef rls_spec s = _spec(tols, tol_table, eta, rule, rule_tol, mask, nparts, per, threads)
    cdef rls_out o = _out(ints, tcount, ulp_hist, bchg, btot, flt, s.ntol, nparts)
    cdef int rc
    with nogil:
        rc = rls_diff32(&a[0], &b[0], n, st_mant, st_emin, &s, &o)
    if rc:
        raise MemoryError("diff kernel: out of memory")


def dequant_fp8(const uint8_t[::1] codes, int64_t ncols, const float[::1] scales,
                const int64_t[::1] srow, int64_t scols, int64_t col_block,
                const float[::1] table, uint16_t[::1] out, int threads, int use_lut=0):
    """FP8 codes uint8[nrows * ncols] -> bfloat16 words ``out`` (see diffcore.h)."""
    cdef int64_t nrows = srow.shape[0]
    if ncols < 1 or col_block < 1 or scols != -(-ncols // col_block):
        raise ValueError(f"{scols} scale columns do not cover {ncols} columns in blocks of {col_block}")
    if codes.shape[0] != nrows * ncols or out.shape[0] != nrows * ncols:
        raise ValueError("codes and out must hold nrows * ncols elements")
    if table.shape[0] != 256:
        raise ValueError("the FP8 table must hold 256 entries")
    cdef int64_t r
    for r in range(nrows):
        if srow[r] < 0 or (srow[r] + 1) * scols > scales.shape[0]:
            raise ValueError(f"scale row {srow[r]} out of range")
    if nrows == 0:
        return
    with nogil:
        rls_dequant_fp8(&codes[0], nrows, ncols, &scales[0], &srow[0], scols, col_block,
                        &table[0], use_lut, &out[0], threads)


def dequant_mxfp4(const uint8_t[::1] blocks, const uint8_t[::1] scales, const float[::1] e2m1,
                  const float[::1] e8m0, uint16_t[::1] out, int threads):
    """MXFP4 blocks uint8[16 * G] and scales uint8[G] -> bfloat16 words ``out[32 * G]``."""
    cdef int64_t g = scales.shape[0]
    if blocks.shape[0] != 16 * g or out.shape[0] != 32 * g:
        raise ValueError("blocks must hold 16 and out 32 elements per scale")
    if e2m1.shape[0] != 16 or e8m0.shape[0] != 256:
        raise ValueError("decode tables must hold 16 and 256 entries")
    if g == 0:
        return
    with nogil:
        rls_dequant_mxfp4(&blocks[0], &scales[0], g, &e2m1[0], &e8m0[0], &out[0], threads)


def quant_counts(const uint8_t[::1] ca, const uint8_t[::1] cb, const uint16_t[::1] da,
                 const uint16_t[::1] db, int nibbles, int64_t[::1] counts, int threads):
    """Adds (codes changed, changed through the scale only) of n decoded elements to counts[2]."""
    cdef int64_t n = da.shape[0]
    cdef int64_t nc = (n + 1) // 2 if nibbles else n
    if db.shape[0] != n or ca.shape[0] != nc or cb.shape[0] != nc or counts.shape[0] != 2:
        raise ValueError("code and word arrays do not match")
    if n == 0:
        return
    with nogil:
        rls_quant_counts(&ca[0], &cb[0], &da[0], &db[0], n, nibbles, &counts[0], threads)


cdef _qdiff(rls_qchunk *q, const float[::1] values, const uint8_t[::1] efield,
            const int32_t[::1] ulplog2, const double[::1] tols, const int8_t[::1] tol_table,
            double eta, int rule, double rule_tol, uint8_t[::1] mask, int64_t nparts, int64_t per,
            int threads, int64_t[::1] ints, int64_t[::1] tcount, int64_t[::1] ulp_hist,
            int64_t[::1] bchg, int64_t[::1] btot, double[:, ::1] flt, int64_t[::1] qcounts):
    _check(q.n, q.n, mask, nparts, per)
    if values.shape[0] != 65536 or efield.shape[0] != 65536 or ulplog2.shape[0] != 65536:
        raise ValueError("decode tables must hold 65536 entries")
    if qcounts.shape[0] != 2:
        raise ValueError("qcounts must hold 2 entries")
    cdef rls_spec s = _spec(tols, tol_table, eta, rule, rule_tol, mask, nparts, per, threads)
    cdef rls_out o = _out(ints, tcount, ulp_hist, bchg, btot, flt, s.ntol, nparts)
    cdef int rc
    with nogil:
        rc = rls_qdiff(q, &values[0], &efield[0], &ulplog2[0], &s, &o, &qcounts[0])
    if rc:
        raise MemoryError("diff kernel: out of memory")


def qdiff_fp8(const uint8_t[::1] ca, const uint8_t[::1] cb, int64_t ncols,
              const float[::1] sa, const float[::1] sb, const int64_t[::1] srow, int64_t scols,
              int64_t col_block, const float[::1] table, int64_t[::1] qcounts,
              const float[::1] values,
              const uint8_t[::1] efield, const int32_t[::1] ulplog2, const double[::1] tols,
              const int8_t[::1] tol_table, double eta, int rule, double rule_tol,
              uint8_t[::1] mask, int64_t nparts, int64_t per, int threads, int64_t[::1] ints,
              int64_t[::1] tcount, int64_t[::1] ulp_hist, int64_t[::1] bchg, int64_t[::1] btot,
              double[:, ::1] flt):
    """Fused diff of two FP8 chunks of ``srow.shape[0]`` rows of ``ncols`` codes with float32
    scales (flat ``[-1, scols]``, row r uses row ``srow[r]``); see ``rls_qdiff``."""
    cdef int64_t nrows = srow.shape[0], r
    if ncols < 1 or col_block < 1 or scols != -(-ncols // col_block):
        raise ValueError(f"{scols} scale columns do not cover {ncols} columns in blocks of {col_block}")
    if ca.shape[0] != nrows * ncols or cb.shape[0] != nrows * ncols or nrows == 0:
        raise ValueError("codes must hold nrows * ncols > 0 elements on both sides")
    if sa.shape[0] != sb.shape[0] or table.shape[0] != 256:
        raise ValueError("scales differ in size, or the FP8 table is not 256 entries")
    for r in range(nrows):
        if srow[r] < 0 or (srow[r] + 1) * scols > sa.shape[0] or (r and srow[r] < srow[r - 1]):
            raise ValueError(f"scale row {srow[r]} out of range or decreasing")
    cdef rls_qchunk q
    q.nibbles = 0
    q.ca = &ca[0]
    q.cb = &cb[0]
    q.n = nrows * ncols
    q.ncols = ncols
    q.scols = scols
    q.col_block = col_block
    q.sa = &sa[0]
    q.sb = &sb[0]
    q.srow = &srow[0]
    q.table = &table[0]
    q.ea = q.eb = NULL
    q.e2m1 = q.e8m0 = NULL
    _qdiff(&q, values, efield, ulplog2, tols, tol_table, eta, rule, rule_tol, mask, nparts, per,
           threads, ints, tcount, ulp_hist, bchg, btot, flt, qcounts)


def qdiff_mxfp4(const uint8_t[::1] ca, const uint8_t[::1] cb, const uint8_t[::1] ea,
                const uint8_t[::1] eb, const float[::1] e2m1, const float[::1] e8m0,
                int64_t[::1] qcounts, const float[::1] values, const uint8_t[::1] efield, const int32_t[::1] ulplog2,
                const double[::1] tols, const int8_t[::1] tol_table, double eta, int rule,
                double rule_tol, uint8_t[::1] mask, int64_t nparts, int64_t per, int threads,
                int64_t[::1] ints, int64_t[::1] tcount, int64_t[::1] ulp_hist,
                int64_t[::1] bchg, int64_t[::1] btot, double[:, ::1] flt):
    """Fused diff of two MXFP4 chunks: blocks uint8[16 * G], E8M0 scales uint8[G] (32 * G
    elements); see ``rls_qdiff``."""
    cdef int64_t g = ea.shape[0]
    if g == 0 or eb.shape[0] != g or ca.shape[0] != 16 * g or cb.shape[0] != 16 * g:
        raise ValueError("blocks must hold 16 bytes per scale on both sides")
    if e2m1.shape[0] != 16 or e8m0.shape[0] != 256:
        raise ValueError("decode tables must hold 16 and 256 entries")
    cdef rls_qchunk q
    q.nibbles = 1
    q.ca = &ca[0]
    q.cb = &cb[0]
    q.n = 32 * g
    q.ncols = q.scols = q.col_block = 0
    q.sa = q.sb = NULL
    q.srow = NULL
    q.table = NULL
    q.ea = &ea[0]
    q.eb = &eb[0]
    q.e2m1 = &e2m1[0]
    q.e8m0 = &e8m0[0]
    _qdiff(&q, values, efield, ulplog2, tols, tol_table, eta, rule, rule_tol, mask, nparts, per,
           threads, ints, tcount, ulp_hist, bchg, btot, flt, qcounts)
