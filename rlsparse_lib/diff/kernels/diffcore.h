/* rlsparse CPU diff kernel: one fused, multi-threaded pass over a chunk of raw words.
 *
 * The caller splits a chunk of n elements into `nparts` partitions of `per` elements (a multiple
 * of 4096, chosen from n alone). Integer outputs are totals (exact whatever the threading); float
 * sums are kept per partition, so their rounding depends on n only and runs are deterministic.
 */
#ifndef RLSPARSE_DIFFCORE_H
#define RLSPARSE_DIFFCORE_H

#include <stdint.h>

#define RLS_ULP_LOG2_MIN (-40) /* stats.ULP_LOG2_MIN */
#define RLS_ULP_BINS 96        /* stats.ULP_BINS */
#define RLS_BINADE_BINS 256    /* stats.BINADE_BINS */

/* integer totals: ints[RLS_NI] */
enum {
    RLS_I_CHANGED,  /* bit patterns differ */
    RLS_I_REL,      /* changed, |d| <= eta * max(|x|, |y|) */
    RLS_I_ZERO,     /* changed, d == 0 (+0 vs -0, or equal after the cast) */
    RLS_I_NONFIN,   /* changed, d not finite */
    RLS_I_NAN_A,    /* changed with non-finite d: base NaN / Inf, tuned NaN / Inf */
    RLS_I_INF_A,
    RLS_I_NAN_B,
    RLS_I_INF_B,
    RLS_I_NAN_BASE, /* every element: base NaN / Inf */
    RLS_I_INF_BASE,
    RLS_NI
};

/* per-partition float sums: flt[nparts][RLS_NF] */
enum { RLS_F_MAX, RLS_F_ABS, RLS_F_SQD, RLS_F_SQB, RLS_NF };

/* What to compute, shared by both widths. */
typedef struct {
    const double *tols; /* [ntol] ascending absolute tolerances */
    int64_t ntol;
    const int8_t *tol_table; /* [65536] number of tolerances below every float32 |d| whose top 16
                                bits are the index, or -1 where that range holds a tolerance */
    double eta;       /* relative probe */
    int32_t rule;     /* mask rule: 0 bitwise, 1 |d| > rule_tol, 2 |d| > rule_tol * max(|x|,|y|) */
    double rule_tol;
    uint8_t *mask;    /* packed mask (bit i%8 of byte i/8), or NULL */
    int64_t nparts;
    int64_t per;
    int32_t threads;  /* <= 0: all */
} rls_spec;

/* Results; every array zero-filled by the caller. */
typedef struct {
    int64_t *ints;     /* [RLS_NI] */
    int64_t *tcount;   /* [ntol + 1]: finite-d changed elements above exactly j tolerances */
    int64_t *ulp_hist; /* [RLS_ULP_BINS] */
    int64_t *bchg;     /* [RLS_BINADE_BINS] changed elements per base exponent field */
    int64_t *btot;     /* [RLS_BINADE_BINS] all elements per base exponent field */
    double *flt;       /* [nparts][RLS_NF]; RLS_F_SQB holds the whole chunk's sum in row 0 for
                          16-bit words (it comes from the exact word histogram) */
} rls_out;

/* 16-bit words (bfloat16, float16). `values` float32[65536] decodes a word, `efield`
 * uint8[65536] is its exponent field, `ulplog2` int32[65536] log2 ULP(value) in the stored dtype.
 * `bf16`: the words are bfloat16 and ulplog2[x] == ulplog2[x & 0x7F80] for every word (the ULP
 * depends on the exponent field alone); changed elements are then decoded from their bits: the
 * same numbers, fewer cache misses. Returns 0, or -1 when memory runs out. */
int rls_diff16(const uint16_t *a, const uint16_t *b, int64_t n, const float *values,
               const uint8_t *efield, const int32_t *ulplog2, int32_t bf16, const rls_spec *spec,
               rls_out *out);

/* 32-bit words (float32); `st_mant` / `st_emin`: mantissa bits and smallest normal exponent of
 * the stored dtype (the ULP unit). */
int rls_diff32(const uint32_t *a, const uint32_t *b, int64_t n, int32_t st_mant, int32_t st_emin,
               const rls_spec *spec, rls_out *out);

/* Threads a parallel region gets by default. */
int rls_max_threads(void);

/* ---- dequantization: codes and scales -> bfloat16 words (see rlsparse_lib/io/quant.py) ----
 * Every value is bf16_rne(float32 code value * float32 scale): the product rounded in float32,
 * then to bfloat16 to nearest even; a NaN becomes 0xFFFF (what torch's CPU cast writes). */

/* FP8 (one byte per code): `nrows` rows of `ncols` codes; row r uses the scale row
 * scales + srow[r] * scols, column c its entry c / col_block. `table` float32[256] decodes a code.
 * `use_lut`: decode each scale's 256 codes once per scale row and look them up (large blocks). */
void rls_dequant_fp8(const uint8_t *codes, int64_t nrows, int64_t ncols, const float *scales,
                     const int64_t *srow, int64_t scols, int64_t col_block, const float *table,
                     int32_t use_lut, uint16_t *out, int32_t threads);

/* MXFP4: `ngroups` groups of 16 bytes (32 E2M1 codes, low nibble first) and one E8M0 byte each;
 * `e2m1` float32[16] decodes a nibble, `e8m0` float32[256] a scale byte. */
void rls_dequant_mxfp4(const uint8_t *blocks, const uint8_t *scales, int64_t ngroups,
                       const float *e2m1, const float *e8m0, uint16_t *out, int32_t threads);

/* Raw-code views of n decoded elements: counts[0] += elements whose code differs, counts[1] +=
 * elements whose code is equal but whose decoded words `da`, `db` differ. Codes are bytes
 * (`nibbles` 0) or packed nibbles, low first (`nibbles` 1: element i in byte i / 2). */
void rls_quant_counts(const uint8_t *ca, const uint8_t *cb, const uint16_t *da, const uint16_t *db,
                      int64_t n, int32_t nibbles, int64_t *counts, int32_t threads);

/* ---- fused diff of two quantized chunks laid out alike (codes and scales, no decoded buffer) ----
 * Equal to rls_dequant_* on both sides followed by rls_diff16 on bfloat16 words (same partitions,
 * changed elements in the same order, so the same counts and float sums bit for bit), plus the
 * raw-code views of rls_quant_counts. Where the scales of a block are equal and the codes equal,
 * the values are equal: such an element costs a byte compare and a code-histogram increment (its
 * base word is counted through a per-(scale, code) table). In an FP8 block whose scale differs,
 * an equal code keeps its value unless the new scale moves its word (a 256-entry table per
 * block), as it does for few codes when the scale moved by less than bf16 resolves. Only the
 * elements whose code differs or whose word may have moved are decoded. */
typedef struct {
    int32_t nibbles;        /* 0: FP8, a code per byte; 1: MXFP4, two per byte, low nibble first */
    const uint8_t *ca, *cb; /* codes of base and tuned */
    int64_t n;              /* elements */
    /* FP8: rows of `ncols` codes; row r uses scale row srow[r] (of `scols` float32 entries),
     * column c its entry c / col_block; `table` float32[256] decodes a code */
    int64_t ncols, scols, col_block;
    const float *sa, *sb;
    const int64_t *srow;
    const float *table;
    /* MXFP4: one E8M0 scale byte per 32 elements; `e2m1` float32[16], `e8m0` float32[256] */
    const uint8_t *ea, *eb;
    const float *e2m1, *e8m0;
} rls_qchunk;

/* The tables are rls_diff16's for bfloat16 words with `bf16` true: changed words are decoded
 * from their bits. `qcounts[0]` += elements whose code differs, `qcounts[1]` += elements whose
 * code is equal but whose value differs (through the scale). Returns 0, or -1 when memory runs
 * out. */
int rls_qdiff(const rls_qchunk *q, const float *values, const uint8_t *efield,
              const int32_t *ulplog2, const rls_spec *spec, rls_out *out, int64_t *qcounts);

#endif
