/* rlsparse CPU diff kernel (see diffcore.h).
 *
 * Hot path: a branch-free loop compares the raw words, compacts the offsets of changed elements
 * and, for 16-bit words, histograms the base words. All float math (|d|, the tolerance grid, the
 * relative probe, the ULP histogram) runs on changed elements only. For 16-bit words the base
 * tensor's norm, binades and NaN/Inf counts come from the 65536-bin word histogram: one increment
 * per element, exact whatever the threading.
 */
#include "diffcore.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif
#ifdef __SSSE3__
#include <tmmintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#define SUB 4096 /* elements per compaction block */

/* Integer counts of one thread, merged into rls_out at the end (order does not matter). */
typedef struct {
    int64_t ints[RLS_NI];
    int64_t ulp_hist[RLS_ULP_BINS];
    int64_t bchg[RLS_BINADE_BINS];
    int64_t btot[RLS_BINADE_BINS];
    int32_t idx[SUB + 8]; /* offsets of changed elements in a block, + slack for scan16 */
    int64_t *tcount; /* [ntol + 1] */
    uint32_t *hist;  /* [65536] base words, 16-bit only */
} local_t;

/* Per-partition accumulators of the changed-element path; a local, so they live in registers. */
typedef struct {
    int64_t rel, zero, nonfin, nan_a, inf_a, nan_b, inf_b;
    double dmax, sabs, ssq;
} acc_t;

/* What the mask gets: nothing, or a bit per element by the spec's rule. Every part function is
 * compiled once per mode, so the inner loop carries no mask or rule branches. */
enum { MODE_NONE, MODE_BITWISE, MODE_ABS, MODE_REL };

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* The spec's fields hoisted into locals (stores to the mask may alias anything in memory). */
typedef struct {
    const double *tols;
    int64_t ntol;
    const int8_t *tol_table;
    double eta;
    double rule_tol;
    uint8_t *mask;
    int64_t *tcount;
    int64_t *ulp_hist;
} ctx_t;

/* Histogram buffers kept per thread from one call to the next. Allocated and freed per call
 * (~1 MB a call), they went back to the kernel whenever the allocator trimmed its heap, and the
 * next call faulted them in again: read before written, a fresh page maps the shared zero page
 * and is copied on the first write, with a TLB shootdown on every core of the process. A 2-thread
 * MXFP4 diff of SmolLM2's 210 matrices took 0.40 s instead of 0.11 s. Freed at thread exit. */
enum { SCRATCH_HIST, SCRATCH_COUNTS, SCRATCH_CHIST, SCRATCH_QHIST, SCRATCH_QCOUNTS, SCRATCH_N };
typedef struct {
    void *p[SCRATCH_N];
    size_t cap[SCRATCH_N];
} scratch_t;
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void scratch_free(void *v) {
    scratch_t *s = v;
    for (int i = 0; i < SCRATCH_N; i++) free(s->p[i]);
    free(s);
}

static void scratch_init(void) { (void)pthread_key_create(&scratch_key, scratch_free); }

/* This thread's buffer `slot`, at least `bytes` long; zeroed when (re)allocated, otherwise as the
 * last call left it. NULL when memory runs out. */
static void *scratch_get(int slot, size_t bytes) {
    (void)pthread_once(&scratch_once, scratch_init);
    scratch_t *s = pthread_getspecific(scratch_key);
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s || pthread_setspecific(scratch_key, s)) {
            free(s);
            return NULL;
        }
    }
    if (s->cap[slot] < bytes) {
        free(s->p[slot]);
        s->p[slot] = calloc(1, bytes);
        s->cap[slot] = s->p[slot] ? bytes : 0;
    }
    return s->p[slot];
}

/* This thread's buffer `slot`, `bytes` long and zeroed; NULL when memory runs out. */
static void *scratch_zeroed(int slot, size_t bytes) {
    void *p = scratch_get(slot, bytes);
    return p ? memset(p, 0, bytes) : NULL;
}

static local_t *local_new(int64_t ntol, int with_hist) {
    local_t *l = calloc(1, sizeof(local_t));
    if (!l) return NULL;
    l->tcount = calloc((size_t)ntol + 1, sizeof(int64_t));
    l->hist = with_hist ? scratch_zeroed(SCRATCH_HIST, 65536 * sizeof(uint32_t)) : NULL;
    if (!l->tcount || (with_hist && !l->hist)) {
        free(l->tcount);
        free(l);
        return NULL;
    }
    return l;
}

static void local_free(local_t *l) {
    free(l->tcount);
    free(l);
}

static void local_merge(const local_t *l, int64_t ntol, rls_out *out, int64_t *counts) {
    for (int k = 0; k < RLS_NI; k++) out->ints[k] += l->ints[k];
    for (int64_t k = 0; k <= ntol; k++) out->tcount[k] += l->tcount[k];
    for (int k = 0; k < RLS_ULP_BINS; k++) out->ulp_hist[k] += l->ulp_hist[k];
    for (int k = 0; k < RLS_BINADE_BINS; k++) {
        out->bchg[k] += l->bchg[k];
        out->btot[k] += l->btot[k];
    }
    if (l->hist)
        for (int v = 0; v < 65536; v++) counts[v] += l->hist[v];
}

/* floor(log2(v)) for finite v > 0, from the float64 exponent (float32 subnormals are normal). */
static inline int64_t log2_floor(double v) {
    uint64_t u;
    memcpy(&u, &v, sizeof u);
    return (int64_t)((u >> 52) & 0x7FF) - 1023;
}

static inline float as_float(uint32_t w) {
    float f;
    memcpy(&f, &w, sizeof f);
    return f;
}

static inline ctx_t ctx_of(const rls_spec *s, local_t *l) {
    const ctx_t c = {s->tols,     s->ntol, s->tol_table, s->eta,
                     s->rule_tol, s->mask, l->tcount,   l->ulp_hist};
    return c;
}

/* How 16-bit words decode (the tables of diffcore.h). With `bf16` (a compile-time argument of
 * the functions that take it) the words are bfloat16, decoded from their bits, and `ulplog2` is
 * read at the word's exponent field (x & 0x7F80; see rls_diff16): a changed element then touches a
 * few hot lines of the tables instead of three random lines of 576 KB, which at a few percent
 * changed, with the tables evicted by the streamed words, were cache misses. */
typedef struct {
    const float *values;
    const uint8_t *efield;
    const int32_t *ulplog2;
} dec16_t;

ALWAYS_INLINE float dec_value(const dec16_t *d, uint16_t x, const int bf16) {
    return bf16 ? as_float((uint32_t)x << 16) : d->values[x];
}

ALWAYS_INLINE uint8_t dec_field(const dec16_t *d, uint16_t x, const int bf16) {
    return bf16 ? (uint8_t)((x >> 7) & 0xFF) : d->efield[x];
}

ALWAYS_INLINE int32_t dec_ulp(const dec16_t *d, uint16_t x, const int bf16) {
    return d->ulplog2[bf16 ? x & 0x7F80 : x];
}

/* One changed element (bits differ): x, y its float32 values, ulp = log2 ULP(x), i its index. */
ALWAYS_INLINE void changed_one(float fx, float fy, int32_t ulp, int64_t i, const ctx_t *c,
                               acc_t *acc, const int mode) {
    const double x = fx, y = fy;
    const float df = fabsf(fy - fx); /* Δ in float32, compared in float64 */
    const double d = df;
    int bit = 1;
    if (!isfinite(d)) { /* a side is NaN/Inf, or the float32 difference overflowed */
        acc->nonfin++;
        acc->nan_a += isnan(x) != 0;
        acc->inf_a += isinf(x) != 0;
        acc->nan_b += isnan(y) != 0;
        acc->inf_b += isinf(y) != 0;
    } else {
        uint32_t u;
        memcpy(&u, &df, sizeof u);
        int64_t j = c->tol_table[u >> 16];
        if (j < 0) /* |d| shares its top 16 bits with a tolerance: count exactly */
            for (j = 0; j < c->ntol && d > c->tols[j]; j++) {
            }
        c->tcount[j]++;
        const double ax = fabs(x), ay = fabs(y);
        const double ref = ax > ay ? ax : ay; /* both finite here; fmax() would be a call */
        acc->rel += d <= c->eta * ref;
        if (d == 0.0) {
            acc->zero++;
        } else {
            int64_t k = log2_floor(d) - ulp - RLS_ULP_LOG2_MIN;
            k = k < 0 ? 0 : (k >= RLS_ULP_BINS ? RLS_ULP_BINS - 1 : k);
            c->ulp_hist[k]++;
            acc->sabs += d;
            acc->ssq += d * d;
            acc->dmax = d > acc->dmax ? d : acc->dmax;
        }
        if (mode == MODE_ABS)
            bit = d > c->rule_tol;
        else if (mode == MODE_REL)
            bit = d > c->rule_tol * ref;
    }
    if (mode != MODE_NONE && bit) c->mask[i >> 3] |= (uint8_t)(1u << (i & 7));
}

/* Adds a partition's accumulators to the thread's counts and its float sums to `flt`. */
static void acc_store(const acc_t *acc, local_t *l, double *flt) {
    l->ints[RLS_I_REL] += acc->rel;
    l->ints[RLS_I_ZERO] += acc->zero;
    l->ints[RLS_I_NONFIN] += acc->nonfin;
    l->ints[RLS_I_NAN_A] += acc->nan_a;
    l->ints[RLS_I_INF_A] += acc->inf_a;
    l->ints[RLS_I_NAN_B] += acc->nan_b;
    l->ints[RLS_I_INF_B] += acc->inf_b;
    flt[RLS_F_MAX] = acc->dmax;
    flt[RLS_F_ABS] = acc->sabs;
    flt[RLS_F_SQD] = acc->ssq;
}

/* Offsets (< 8) of the set bits of every byte value, left-packed, and how many there are: turns a
 * byte of "changed" flags into compacted offsets with two stores and no branch. */
static uint8_t pack_offsets[256][8];
static uint8_t pack_count[256];

__attribute__((constructor)) static void pack_tables_init(void) { /* when the library loads */
    for (int v = 0; v < 256; v++) {
        int n = 0;
        for (int k = 0; k < 8; k++)
            if (v >> k & 1) pack_offsets[v][n++] = (uint8_t)k;
        pack_count[v] = (uint8_t)n;
    }
}

/* The hot loop, kept out of line so every mode shares one well-scheduled copy: histograms the base
 * words, then writes the offsets of changed elements (k < len <= SUB) to idx, which has room for
 * 8 entries more; returns their number. */
static __attribute__((noinline)) int32_t scan16(const uint16_t *restrict a,
                                                const uint16_t *restrict b, int32_t len,
                                                uint32_t *restrict hist, int32_t *restrict idx) {
    for (int32_t k = 0; k < len; k++) hist[a[k]]++;
    int32_t m = 0, k = 0;
#ifdef __SSE2__ /* every x86-64 CPU: compare 8 words at once, left-pack their offsets */
    const __m128i zero = _mm_setzero_si128();
    for (; k + 8 <= len; k += 8) {
        const __m128i x = _mm_loadu_si128((const __m128i *)(a + k));
        const __m128i y = _mm_loadu_si128((const __m128i *)(b + k));
        const int bits = ~_mm_movemask_epi8(_mm_packs_epi16(_mm_cmpeq_epi16(x, y), zero)) & 0xFF;
        const __m128i off =
            _mm_unpacklo_epi8(_mm_loadl_epi64((const __m128i *)pack_offsets[bits]), zero);
        const __m128i base = _mm_set1_epi32(k);
        _mm_storeu_si128((__m128i *)(idx + m), _mm_add_epi32(_mm_unpacklo_epi16(off, zero), base));
        _mm_storeu_si128((__m128i *)(idx + m + 4),
                         _mm_add_epi32(_mm_unpackhi_epi16(off, zero), base));
        m += pack_count[bits];
    }
#endif
    for (; k < len; k++) {
        idx[m] = k;
        m += a[k] != b[k];
    }
    return m;
}

ALWAYS_INLINE void part16_mode(const uint16_t *restrict a, const uint16_t *restrict b, int64_t s0,
                              int64_t e0, const dec16_t *dec, const rls_spec *spec, local_t *l,
                              double *flt, const int mode, const int bf16) {
    const ctx_t c = ctx_of(spec, l);
    const dec16_t d = *dec; /* a local: stays in registers across the stores to the counts */
    acc_t acc = {0};
    int64_t nchg = 0, *restrict bchg = l->bchg;
    uint32_t *hist = l->hist;
    int32_t *idx = l->idx;
    for (int64_t s = s0; s < e0; s += SUB) {
        const int64_t e = e0 < s + SUB ? e0 : s + SUB;
        const int32_t m = scan16(a + s, b + s, (int32_t)(e - s), hist, idx);
        nchg += m;
        for (int32_t q = 0; q < m; q++) {
            const int64_t i = s + idx[q];
            const uint16_t x = a[i];
            bchg[dec_field(&d, x, bf16)]++;
            changed_one(dec_value(&d, x, bf16), dec_value(&d, b[i], bf16), dec_ulp(&d, x, bf16), i,
                        &c, &acc, mode);
        }
    }
    l->ints[RLS_I_CHANGED] += nchg;
    acc_store(&acc, l, flt);
}

/* scan16 for float32 words; base statistics are counted here (no word histogram at 32 bits):
 * exponent fields into btot, NaN/Inf into nonfin[0]/nonfin[1], Σθ0² of finite values into *sqb. */
static __attribute__((noinline)) int32_t scan32(const uint32_t *restrict a,
                                                const uint32_t *restrict b, int32_t len,
                                                int64_t *restrict btot, int64_t *restrict nonfin,
                                                double *restrict sqb, int32_t *restrict idx) {
    int32_t m = 0;
    double sq = *sqb;
    for (int32_t k = 0; k < len; k++) {
        const uint32_t x = a[k];
        const uint32_t field = (x >> 23) & 0xFF;
        btot[field]++;
        if (field == 0xFF) {
            nonfin[(x & 0x7FFFFF) ? 0 : 1]++;
        } else {
            const double v = as_float(x);
            sq += v * v;
        }
        idx[m] = k;
        m += x != b[k];
    }
    *sqb = sq;
    return m;
}

ALWAYS_INLINE void part32_mode(const uint32_t *restrict a, const uint32_t *restrict b, int64_t s0,
                              int64_t e0, int32_t st_mant, int32_t st_emin, const rls_spec *spec,
                              local_t *l, double *flt, const int mode) {
    const ctx_t c = ctx_of(spec, l);
    acc_t acc = {0};
    int64_t nchg = 0, nonfin[2] = {0, 0}, *bchg = l->bchg;
    double sqb = 0.0;
    for (int64_t s = s0; s < e0; s += SUB) {
        const int64_t e = e0 < s + SUB ? e0 : s + SUB;
        const int32_t m = scan32(a + s, b + s, (int32_t)(e - s), l->btot, nonfin, &sqb, l->idx);
        nchg += m;
        for (int32_t q = 0; q < m; q++) {
            const int64_t i = s + l->idx[q];
            const uint32_t x = a[i];
            const int32_t field = (int32_t)((x >> 23) & 0xFF);
            bchg[field]++;
            const int32_t e_unb = field > 0 ? field - 127 : -126;
            const int32_t ulp = (e_unb > st_emin ? e_unb : st_emin) - st_mant;
            changed_one(as_float(x), as_float(b[i]), ulp, i, &c, &acc, mode);
        }
    }
    l->ints[RLS_I_CHANGED] += nchg;
    l->ints[RLS_I_NAN_BASE] += nonfin[0];
    l->ints[RLS_I_INF_BASE] += nonfin[1];
    acc_store(&acc, l, flt);
    flt[RLS_F_SQB] = sqb;
}

static int mode_of(const rls_spec *s) {
    if (s->mask == NULL) return MODE_NONE;
    return s->rule == 1 ? MODE_ABS : (s->rule == 2 ? MODE_REL : MODE_BITWISE);
}

static void part16(const uint16_t *a, const uint16_t *b, int64_t s0, int64_t e0,
                   const dec16_t *dec, int bf16, const rls_spec *spec, local_t *l, double *flt) {
#define PART16(MODE)                                                                              \
    do {                                                                                          \
        if (bf16)                                                                                 \
            part16_mode(a, b, s0, e0, dec, spec, l, flt, MODE, 1);                                \
        else                                                                                      \
            part16_mode(a, b, s0, e0, dec, spec, l, flt, MODE, 0);                                \
    } while (0)
    switch (mode_of(spec)) {
    case MODE_NONE:
        PART16(MODE_NONE);
        break;
    case MODE_BITWISE:
        PART16(MODE_BITWISE);
        break;
    case MODE_ABS:
        PART16(MODE_ABS);
        break;
    default:
        PART16(MODE_REL);
    }
#undef PART16
}

static void part32(const uint32_t *a, const uint32_t *b, int64_t s0, int64_t e0, int32_t st_mant,
                   int32_t st_emin, const rls_spec *spec, local_t *l, double *flt) {
    switch (mode_of(spec)) {
    case MODE_NONE:
        part32_mode(a, b, s0, e0, st_mant, st_emin, spec, l, flt, MODE_NONE);
        break;
    case MODE_BITWISE:
        part32_mode(a, b, s0, e0, st_mant, st_emin, spec, l, flt, MODE_BITWISE);
        break;
    case MODE_ABS:
        part32_mode(a, b, s0, e0, st_mant, st_emin, spec, l, flt, MODE_ABS);
        break;
    default:
        part32_mode(a, b, s0, e0, st_mant, st_emin, spec, l, flt, MODE_REL);
    }
}

int rls_max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static int threads_for(const rls_spec *spec) {
    const int nt = spec->threads > 0 ? spec->threads : rls_max_threads();
    return (int64_t)nt > spec->nparts ? (int)spec->nparts : nt;
}

/* One chunk's inputs, for either width. */
typedef struct {
    const void *a, *b;
    int64_t n;
    int width; /* 16 or 32 bits per word */
    /* 16-bit words: the decode tables, and whether they are bfloat16's (see rls_diff16) */
    dec16_t dec;
    int bf16;
    /* 32-bit words: mantissa bits and smallest normal exponent of the stored dtype */
    int32_t st_mant, st_emin;
} job_t;

/* Runs every partition on the thread pool and merges the threads' counts into `out` (and the
 * base-word histograms into `counts` for 16-bit words). Returns 0, or -1 when memory runs out. */
static int run_parts(const job_t *job, const rls_spec *spec, rls_out *out, int64_t *counts) {
    int failed = 0;
#pragma omp parallel num_threads(threads_for(spec))
    {
        local_t *l = local_new(spec->ntol, job->width == 16);
        if (!l) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t p = 0; p < spec->nparts; p++) {
            if (!l) continue;
            const int64_t s0 = p * spec->per;
            const int64_t e0 = job->n < s0 + spec->per ? job->n : s0 + spec->per;
            double *flt = out->flt + p * RLS_NF;
            if (job->width == 16)
                part16(job->a, job->b, s0, e0, &job->dec, job->bf16, spec, l, flt);
            else
                part32(job->a, job->b, s0, e0, job->st_mant, job->st_emin, spec, l, flt);
        }
        if (l) {
#pragma omp critical(rls_merge)
            local_merge(l, spec->ntol, out, counts);
            local_free(l);
        }
    }
    return failed ? -1 : 0;
}

/* Adds `c` base elements of word `v` to the base statistics; Σθ0² goes to *sqb. */
ALWAYS_INLINE void base_word(int v, int64_t c, const float *values, const uint8_t *efield,
                             rls_out *out, double *sqb) {
    out->btot[efield[v]] += c;
    const double val = values[v];
    if (isnan(val))
        out->ints[RLS_I_NAN_BASE] += c;
    else if (isinf(val))
        out->ints[RLS_I_INF_BASE] += c;
    else
        *sqb += (double)c * val * val;
}

/* Base statistics of 16-bit words from their exact histogram `counts` [65536], in word order. */
static void base_stats16(const int64_t *counts, const float *values, const uint8_t *efield,
                         rls_out *out) {
    double sqb = 0.0;
    for (int v = 0; v < 65536; v++)
        if (counts[v]) base_word(v, counts[v], values, efield, out, &sqb);
    out->flt[RLS_F_SQB] = sqb;
}

int rls_diff16(const uint16_t *a, const uint16_t *b, int64_t n, const float *values,
               const uint8_t *efield, const int32_t *ulplog2, int32_t bf16, const rls_spec *spec,
               rls_out *out) {
    int64_t *counts = scratch_zeroed(SCRATCH_COUNTS, 65536 * sizeof(int64_t));
    if (!counts) return -1;
    const job_t job = {a, b, n, 16, {values, efield, ulplog2}, bf16 != 0, 0, 0};
    const int rc = run_parts(&job, spec, out, counts);
    if (rc == 0) base_stats16(counts, values, efield, out);
    return rc;
}

int rls_diff32(const uint32_t *a, const uint32_t *b, int64_t n, int32_t st_mant, int32_t st_emin,
               const rls_spec *spec, rls_out *out) {
    const job_t job = {a, b, n, 32, {NULL, NULL, NULL}, 0, st_mant, st_emin};
    return run_parts(&job, spec, out, NULL);
}

/* ---- dequantization ---- */

static inline uint16_t bf16_rne(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0xFFFFu;
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

static int threads_or_max(int32_t threads) { return threads > 0 ? threads : rls_max_threads(); }

/* One row of FP8 codes through the scales directly (small blocks). */
static void fp8_row_direct(const uint8_t *c, const float *s, int64_t ncols, int64_t col_block,
                           const float *table, uint16_t *o) {
    for (int64_t b = 0, c0 = 0; c0 < ncols; b++, c0 += col_block) {
        const int64_t c1 = c0 + col_block < ncols ? c0 + col_block : ncols;
        const float sb = s[b];
        for (int64_t j = c0; j < c1; j++) o[j] = bf16_rne(table[c[j]] * sb);
    }
}

void rls_dequant_fp8(const uint8_t *codes, int64_t nrows, int64_t ncols, const float *scales,
                     const int64_t *srow, int64_t scols, int64_t col_block, const float *table,
                     int32_t use_lut, uint16_t *out, int32_t threads) {
#pragma omp parallel num_threads(threads_or_max(threads))
    {
        /* large blocks: the 256 decoded words of every scale of the current scale row, built
         * once per scale row and thread (the same products, looked up per element) */
        uint16_t *lut = use_lut ? malloc((size_t)scols * 256 * sizeof(uint16_t)) : NULL;
        int64_t have = -1;
#pragma omp for schedule(dynamic, 16)
        for (int64_t r = 0; r < nrows; r++) {
            const uint8_t *c = codes + r * ncols;
            const float *s = scales + srow[r] * scols;
            uint16_t *o = out + r * ncols;
            if (!lut) {
                fp8_row_direct(c, s, ncols, col_block, table, o);
                continue;
            }
            if (srow[r] != have) {
                for (int64_t b = 0; b < scols; b++)
                    for (int k = 0; k < 256; k++) lut[b * 256 + k] = bf16_rne(table[k] * s[b]);
                have = srow[r];
            }
            for (int64_t b = 0, c0 = 0; c0 < ncols; b++, c0 += col_block) {
                const int64_t c1 = c0 + col_block < ncols ? c0 + col_block : ncols;
                const uint16_t *l = lut + b * 256;
                for (int64_t j = c0; j < c1; j++) o[j] = l[c[j]];
            }
        }
        free(lut);
    }
}

void rls_dequant_mxfp4(const uint8_t *blocks, const uint8_t *scales, int64_t ngroups,
                       const float *e2m1, const float *e8m0, uint16_t *out, int32_t threads) {
#pragma omp parallel for schedule(dynamic, 2048) num_threads(threads_or_max(threads))
    for (int64_t g = 0; g < ngroups; g++) {
        const uint8_t *b = blocks + g * 16;
        const float s = e8m0[scales[g]];
        uint16_t l[16]; /* the group's 16 decoded words */
        for (int k = 0; k < 16; k++) l[k] = bf16_rne(e2m1[k] * s);
        uint16_t *o = out + g * 32;
        for (int k = 0; k < 16; k++) {
            o[2 * k] = l[b[k] & 15];
            o[2 * k + 1] = l[b[k] >> 4];
        }
    }
}

void rls_quant_counts(const uint8_t *ca, const uint8_t *cb, const uint16_t *da, const uint16_t *db,
                      int64_t n, int32_t nibbles, int64_t *counts, int32_t threads) {
    int64_t raw = 0, scale_only = 0;
    if (nibbles) { /* two elements per byte, low nibble first */
        const int64_t nbytes = n / 2;
#pragma omp parallel for schedule(dynamic, 65536) reduction(+ : raw, scale_only) \
    num_threads(threads_or_max(threads))
        for (int64_t k = 0; k < nbytes; k++) {
            const unsigned x = ca[k] ^ cb[k];
            const int s0 = (x & 15u) == 0, s1 = (x >> 4) == 0;
            raw += !s0 + !s1;
            scale_only += (s0 & (da[2 * k] != db[2 * k])) + (s1 & (da[2 * k + 1] != db[2 * k + 1]));
        }
        if (n & 1) {
            const int s0 = ((ca[n / 2] ^ cb[n / 2]) & 15u) == 0;
            raw += !s0;
            scale_only += s0 & (da[n - 1] != db[n - 1]);
        }
    } else {
#pragma omp parallel for schedule(dynamic, 65536) reduction(+ : raw, scale_only) \
    num_threads(threads_or_max(threads))
        for (int64_t i = 0; i < n; i++) {
            const int same = ca[i] == cb[i];
            raw += !same;
            scale_only += same & (da[i] != db[i]);
        }
    }
    counts[0] += raw;
    counts[1] += scale_only;
}

/* ---- fused diff of quantized codes (see diffcore.h) ---- */

/* Base words counted by the fused pass: `n` [65536] is zero between calls, and `seen` flags its
 * nonzero entries, so a call costs its distinct words (few: a tensor's codes through its few
 * scales), not a pass over all 65536 of them and a zeroing of 256 KB. */
typedef struct {
    uint32_t *n;
    uint64_t seen[1024];
} words_t;

static inline void words_add(words_t *w, uint16_t v, uint32_t c) {
    w->n[v] += c;
    w->seen[v >> 6] |= 1ull << (v & 63);
}

/* Calls f(v) for every flagged word v of seen [1024], in ascending order. */
#define FOR_SEEN(seen, v, f)                                                                       \
    for (int j_ = 0; j_ < 1024; j_++)                                                              \
        for (uint64_t m_ = (seen)[j_]; m_; m_ &= m_ - 1) {                                         \
            const int v = j_ * 64 + __builtin_ctzll(m_);                                           \
            f;                                                                                     \
        }

/* Moves a thread's counts into `counts` [65536] int64 (flagged in `seen`) and zeroes them. */
static void words_merge(words_t *w, int64_t *counts, uint64_t *seen) {
    FOR_SEEN(w->seen, v, (counts[v] += w->n[v], w->n[v] = 0));
    for (int j = 0; j < 1024; j++) seen[j] |= w->seen[j];
}

#define FP8_TABLES 4 /* FP8: histogram tables per scale column (see hist8) */

/* Per-thread scratch of the fused pass. */
typedef struct {
    words_t words;         /* the base words of the codes counted so far */
    uint32_t *chist;       /* base codes counted per table row, zero between calls: FP8
                              [scols][FP8_TABLES][256] per scale column of the scale row `have`;
                              MXFP4 [256][256] per (scale, code byte) */
    uint16_t *luta, *lutb; /* FP8 [scols][256]: the words of scale row `have`, base and tuned
                              (tuned only for the columns whose scale differs) */
    uint8_t *moved;        /* FP8 [scols][256]: 1 where a code's word differs between the base and
                              tuned scale (columns whose scale differs) */
    uint8_t *moved_bits;   /* FP8 [scols][2][16]: the same set, bit (code >> 4) & 7 of byte
                              [code >> 7][code & 15] (scan8_moved's lookups) */
    int64_t have;          /* FP8: the scale row the tables hold, -1 none */
    int row_moved;         /* FP8: whether a scale of row `have` differs between the sides */
    int slo, shi;          /* MXFP4: the smallest and largest base scale byte counted */
    int64_t raw, scale_only;
} qlocal_t;

static inline uint32_t float_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* One element whose code or scale differs, with bfloat16 words x (base) and y (tuned): if the
 * words differ, what rls_diff16 does for a changed element; returns whether they differ. */
ALWAYS_INLINE int qcand(uint16_t x, uint16_t y, int64_t i, const dec16_t *d, const ctx_t *c,
                        acc_t *acc, int64_t *bchg, const int mode) {
    if (x == y) return 0;
    bchg[dec_field(d, x, 1)]++;
    changed_one(dec_value(d, x, 1), dec_value(d, y, 1), dec_ulp(d, x, 1), i, c, acc, mode);
    return 1;
}

/* Adds the pending FP8 code counts to the base words through the words of scale row `have`,
 * and zeroes them. */
static void fp8_fold(qlocal_t *q, int64_t scols) {
    if (q->have < 0) return;
    for (int64_t b = 0; b < scols; b++)
        for (int k = 0; k < 256; k++) {
            uint32_t c = 0, *h = q->chist + b * FP8_TABLES * 256 + k;
            for (int t = 0; t < FP8_TABLES; t++) {
                c += h[t * 256];
                h[t * 256] = 0;
            }
            if (c) words_add(&q->words, q->luta[b * 256 + k], c);
        }
}

/* MXFP4: adds the (scale, code byte) counts to the base words and zeroes them. */
static void mx_fold(qlocal_t *q, const uint16_t *mxw) {
    for (int s = q->slo; s <= q->shi; s++)
        for (int v = 0; v < 256; v++) {
            const uint32_t c = q->chist[s * 256 + v];
            if (!c) continue;
            words_add(&q->words, mxw[s * 16 + (v & 15)], c);
            words_add(&q->words, mxw[s * 16 + (v >> 4)], c);
            q->chist[s * 256 + v] = 0;
        }
}

/* Counts the codes a[0..len) into h [FP8_TABLES][256]. Neighbouring weights often share a code;
 * with one table every repeat waits for the last increment's store, with four, consecutive codes
 * go to different tables. */
static __attribute__((noinline)) void hist8(const uint8_t *restrict a, int32_t len,
                                            uint32_t *restrict h) {
    int32_t k = 0;
    for (; k + FP8_TABLES <= len; k += FP8_TABLES)
        for (int t = 0; t < FP8_TABLES; t++) h[t * 256 + a[k + t]]++;
    for (; k < len; k++) h[a[k]]++;
}

#ifdef __SSE2__
/* Appends k + j to idx[m..] for every set bit j of the 16-bit `bits` (idx has room for 16 more),
 * left-packed a byte of flags at a time; returns the new count. */
static inline int32_t pack16(int bits, int32_t k, int32_t *restrict idx, int32_t m) {
    const __m128i zero = _mm_setzero_si128();
    for (int half = 0; half < 2; half++) {
        const int hb = (bits >> (8 * half)) & 0xFF;
        const __m128i off =
            _mm_unpacklo_epi8(_mm_loadl_epi64((const __m128i *)pack_offsets[hb]), zero);
        const __m128i base = _mm_set1_epi32(k + 8 * half);
        _mm_storeu_si128((__m128i *)(idx + m), _mm_add_epi32(_mm_unpacklo_epi16(off, zero), base));
        _mm_storeu_si128((__m128i *)(idx + m + 4),
                         _mm_add_epi32(_mm_unpackhi_epi16(off, zero), base));
        m += pack_count[hb];
    }
    return m;
}
#endif

/* scan16's compare for FP8 codes: writes the offsets of the differing codes (k < len <= SUB) to
 * idx (room for 16 more) and returns their number. */
static __attribute__((noinline)) int32_t cmp8(const uint8_t *restrict a, const uint8_t *restrict b,
                                              int32_t len, int32_t *restrict idx) {
    int32_t m = 0, k = 0;
#ifdef __SSE2__ /* compare 16 codes at once, left-pack the offsets of each half */
    for (; k + 16 <= len; k += 16) {
        const __m128i x = _mm_loadu_si128((const __m128i *)(a + k));
        const __m128i y = _mm_loadu_si128((const __m128i *)(b + k));
        const int bits = ~_mm_movemask_epi8(_mm_cmpeq_epi8(x, y)) & 0xFFFF;
        m = pack16(bits, k, idx, m);
    }
#endif
    for (; k < len; k++) {
        idx[m] = k;
        m += a[k] != b[k];
    }
    return m;
}

/* cmp8 for a block whose tuned scale differs: histograms the base codes into h (hist8) and writes
 * the offsets of the candidates (k < len <= SUB) to idx: codes that differ, and equal codes whose
 * word the scale moves (moved[code], or bit (code >> 4) & 7 of moved_bits[code >> 7][code & 15]).
 * Returns their number; adds the differing codes to *raw. A block whose scale changed by less
 * than bf16 resolves has few moved codes, so most equal codes cost a lookup here instead of a
 * decode and compare. */
static __attribute__((noinline)) int32_t scan8_moved(const uint8_t *restrict a,
                                                     const uint8_t *restrict b, int32_t len,
                                                     uint32_t *restrict h,
                                                     const uint8_t *restrict moved,
                                                     const uint8_t *restrict moved_bits,
                                                     int32_t *restrict idx, int64_t *raw) {
    int32_t m = 0, r = 0, k = 0;
    hist8(a, len, h);
#ifdef __SSSE3__ /* 16 codes at once: differ, or a member of the moved set (two pshufb lookups) */
    const __m128i nib = _mm_set1_epi8(0x0F), zero = _mm_setzero_si128();
    const __m128i lo_set = _mm_loadu_si128((const __m128i *)moved_bits);
    const __m128i hi_set = _mm_loadu_si128((const __m128i *)(moved_bits + 16));
    const __m128i bit = _mm_setr_epi8(1, 2, 4, 8, 16, 32, 64, -128, 1, 2, 4, 8, 16, 32, 64, -128);
    for (; k + 16 <= len; k += 16) {
        const __m128i x = _mm_loadu_si128((const __m128i *)(a + k));
        const __m128i y = _mm_loadu_si128((const __m128i *)(b + k));
        const __m128i lo = _mm_and_si128(x, nib);
        const __m128i hi = _mm_and_si128(_mm_srli_epi16(x, 4), nib);
        const __m128i up = _mm_cmplt_epi8(x, zero); /* code >= 128: the upper table */
        const __m128i row = _mm_or_si128(_mm_andnot_si128(up, _mm_shuffle_epi8(lo_set, lo)),
                                         _mm_and_si128(up, _mm_shuffle_epi8(hi_set, lo)));
        const __m128i in = _mm_and_si128(row, _mm_shuffle_epi8(bit, hi));
        const int ne = ~_mm_movemask_epi8(_mm_cmpeq_epi8(x, y)) & 0xFFFF;
        const int bits = ne | (~_mm_movemask_epi8(_mm_cmpeq_epi8(in, zero)) & 0xFFFF);
        r += pack_count[ne & 0xFF] + pack_count[ne >> 8];
        m = pack16(bits, k, idx, m);
    }
#endif
    for (; k < len; k++) {
        const uint8_t x = a[k];
        const int ne = x != b[k];
        idx[m] = k;
        m += ne | moved[x];
        r += ne;
    }
    *raw += r;
    return m;
}

ALWAYS_INLINE void qpart_fp8_mode(const rls_qchunk *qc, int64_t s0, int64_t e0,
                                  const dec16_t *dec, const rls_spec *spec, local_t *l,
                                  qlocal_t *q, double *flt, const int mode) {
    const ctx_t c = ctx_of(spec, l);
    const dec16_t d = *dec;
    acc_t acc = {0};
    int64_t nchg = 0, raw = 0, scale_only = 0, *bchg = l->bchg;
    const int64_t ncols = qc->ncols, scols = qc->scols, cblk = qc->col_block;
    /* a column's block by a shift where the block is a power of two (a division costs ns) */
    const int cshift = cblk & (cblk - 1) ? -1 : __builtin_ctzll((uint64_t)cblk);
    const uint8_t *restrict A = qc->ca, *restrict B = qc->cb;
    int64_t i = s0;
    while (i < e0) {
        const int64_t r = i / ncols, row0 = r * ncols;
        const int64_t rowend = row0 + ncols < e0 ? row0 + ncols : e0;
        const int64_t sr = qc->srow[r];
        const float *sa = qc->sa + sr * scols, *sb = qc->sb + sr * scols;
        if (sr != q->have) { /* a new scale row: fold the counts of the last one, new tables */
            fp8_fold(q, scols);
            q->row_moved = 0;
            for (int64_t b = 0; b < scols; b++) {
                for (int k = 0; k < 256; k++)
                    q->luta[b * 256 + k] = bf16_rne(qc->table[k] * sa[b]);
                if (float_bits(sa[b]) == float_bits(sb[b])) continue;
                q->row_moved = 1;
                uint8_t *mv = q->moved + b * 256, *bits = q->moved_bits + b * 32;
                memset(bits, 0, 32);
                for (int k = 0; k < 256; k++) {
                    q->lutb[b * 256 + k] = bf16_rne(qc->table[k] * sb[b]);
                    mv[k] = q->lutb[b * 256 + k] != q->luta[b * 256 + k];
                    bits[(k >> 7) * 16 + (k & 15)] |= (uint8_t)(mv[k] << ((k >> 4) & 7));
                }
            }
            q->have = sr;
        }
        if (!q->row_moved) { /* every scale of the row equal: equal codes, equal values */
            for (int64_t s = i, b = (i - row0) / cblk; s < rowend; b++) { /* the base codes */
                const int64_t end = row0 + (b + 1) * cblk < rowend ? row0 + (b + 1) * cblk : rowend;
                hist8(A + s, (int32_t)(end - s), q->chist + b * FP8_TABLES * 256);
                s = end;
            }
            for (int64_t s = i; s < rowend; s += SUB) { /* then the differing codes, row-wide */
                const int64_t e = rowend < s + SUB ? rowend : s + SUB;
                const int32_t m = cmp8(A + s, B + s, (int32_t)(e - s), l->idx);
                raw += m;
                for (int32_t k = 0; k < m; k++) {
                    const int64_t j = s + l->idx[k];
                    const int64_t col = j - row0;
                    const uint16_t *la = q->luta + (cshift >= 0 ? col >> cshift : col / cblk) * 256;
                    nchg += qcand(la[A[j]], la[B[j]], j, &d, &c, &acc, bchg, mode);
                }
            }
            i = rowend;
            continue;
        }
        while (i < rowend) { /* one row's run of one scale block */
            const int64_t b = (i - row0) / cblk;
            const int64_t end = row0 + (b + 1) * cblk < rowend ? row0 + (b + 1) * cblk : rowend;
            const uint16_t *la = q->luta + b * 256;
            uint32_t *restrict h = q->chist + b * FP8_TABLES * 256;
            if (float_bits(sa[b]) == float_bits(sb[b])) { /* equal codes, equal values */
                for (int64_t s = i; s < end; s += SUB) {
                    const int64_t e = end < s + SUB ? end : s + SUB;
                    hist8(A + s, (int32_t)(e - s), h);
                    const int32_t m = cmp8(A + s, B + s, (int32_t)(e - s), l->idx);
                    raw += m;
                    for (int32_t k = 0; k < m; k++) {
                        const int64_t j = s + l->idx[k];
                        nchg += qcand(la[A[j]], la[B[j]], j, &d, &c, &acc, bchg, mode);
                    }
                }
            } else { /* the scale differs: differing codes and moved codes are decoded */
                const uint16_t *lb = q->lutb + b * 256;
                const uint8_t *mv = q->moved + b * 256, *bits = q->moved_bits + b * 32;
                for (int64_t s = i; s < end; s += SUB) {
                    const int64_t e = end < s + SUB ? end : s + SUB;
                    const int32_t m =
                        scan8_moved(A + s, B + s, (int32_t)(e - s), h, mv, bits, l->idx, &raw);
                    for (int32_t k = 0; k < m; k++) {
                        const int64_t j = s + l->idx[k];
                        const int chg = qcand(la[A[j]], lb[B[j]], j, &d, &c, &acc, bchg, mode);
                        nchg += chg;
                        scale_only += (A[j] == B[j]) & chg;
                    }
                }
            }
            i = end;
        }
    }
    l->ints[RLS_I_CHANGED] += nchg;
    q->raw += raw;
    q->scale_only += scale_only;
    acc_store(&acc, l, flt);
}

/* 16 bits spread to the even bits of 32 (bit k -> bit 2k). */
static inline uint32_t spread16(uint32_t v) {
    v = (v | (v << 8)) & 0x00FF00FFu;
    v = (v | (v << 4)) & 0x0F0F0F0Fu;
    v = (v | (v << 2)) & 0x33333333u;
    return (v | (v << 1)) & 0x55555555u;
}

/* The changed-nibble mask of a 16-byte MXFP4 group pair: bit 2k (low) and 2k+1 (high nibble) of
 * byte k set where the codes differ. */
static inline uint32_t mx_diff(const uint8_t *x, const uint8_t *y) {
#ifdef __SSE2__
    const __m128i dx = _mm_xor_si128(_mm_loadu_si128((const __m128i *)x),
                                     _mm_loadu_si128((const __m128i *)y));
    const __m128i z = _mm_setzero_si128();
    const uint32_t lo =
        ~(uint32_t)_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_and_si128(dx, _mm_set1_epi8(0x0F)), z)) &
        0xFFFFu;
    const uint32_t hi = ~(uint32_t)_mm_movemask_epi8(
                            _mm_cmpeq_epi8(_mm_and_si128(dx, _mm_set1_epi8((char)0xF0)), z)) &
                        0xFFFFu;
    return spread16(lo) | spread16(hi) << 1;
#else
    uint32_t m = 0;
    for (int k = 0; k < 16; k++) {
        const unsigned dk = x[k] ^ y[k];
        m |= (uint32_t)((dk & 15) != 0) << (2 * k) | (uint32_t)((dk >> 4) != 0) << (2 * k + 1);
    }
    return m;
#endif
}

#define MX_BATCH 128 /* MXFP4 groups scanned before their candidates are decoded */

ALWAYS_INLINE void qpart_mx_mode(const rls_qchunk *qc, int64_t s0, int64_t e0, const uint16_t *mxw,
                                 const dec16_t *dec, const rls_spec *spec, local_t *l,
                                 qlocal_t *q, double *flt, const int mode) {
    const ctx_t c = ctx_of(spec, l);
    const dec16_t d = *dec;
    acc_t acc = {0};
    int64_t nchg = 0, raw = 0, scale_only = 0, *bchg = l->bchg;
    const uint8_t *restrict A = qc->ca, *restrict B = qc->cb;
    uint32_t *restrict chist = q->chist;
    int slo = q->slo, shi = q->shi;
    /* a batch's groups with candidates, in order: offset, and their changed-nibble mask (equal
     * scales) or MX_ALL (the scale differs: every element is decoded); appended without a branch
     * so that few changed groups cost no mispredicted branch each */
    int32_t cand[MX_BATCH];
    uint64_t cmask[MX_BATCH];
    const uint64_t MX_ALL = 1ull << 32;
    for (int64_t g0 = s0 / 32; g0 < e0 / 32; g0 += MX_BATCH) {
        const int64_t g1 = e0 / 32 < g0 + MX_BATCH ? e0 / 32 : g0 + MX_BATCH;
        int32_t n = 0;
        for (int64_t g = g0; g < g1; g++) { /* a group: 16 bytes, 32 codes, one scale */
            const uint8_t *x = A + g * 16;
            const int esa = qc->ea[g], esb = qc->eb[g];
            slo = esa < slo ? esa : slo;
            shi = esa > shi ? esa : shi;
            uint32_t *h = chist + esa * 256;
            for (int k = 0; k < 16; k++) h[x[k]]++;
            const uint64_t m = esa == esb ? mx_diff(x, B + g * 16) : MX_ALL;
            cand[n] = (int32_t)(g - g0);
            cmask[n] = m;
            n += m != 0;
        }
        for (int32_t k = 0; k < n; k++) {
            const int64_t g = g0 + cand[k], i0 = g * 32;
            const uint8_t *x = A + g * 16, *y = B + g * 16;
            const uint16_t *la = mxw + qc->ea[g] * 16, *lb = mxw + qc->eb[g] * 16;
            if (cmask[k] != MX_ALL) { /* equal scales: only differing nibbles are decoded */
                for (uint32_t m = (uint32_t)cmask[k]; m; m &= m - 1, raw++) {
                    const int t = __builtin_ctz(m);
                    const int sh = (t & 1) * 4;
                    nchg += qcand(la[(x[t >> 1] >> sh) & 15], la[(y[t >> 1] >> sh) & 15], i0 + t,
                                  &d, &c, &acc, bchg, mode);
                }
                continue;
            }
            for (int t = 0; t < 32; t++) { /* the scale differs: every element is decoded */
                const int sh = (t & 1) * 4;
                const unsigned u = (x[t >> 1] >> sh) & 15, v = (y[t >> 1] >> sh) & 15;
                const int chg = qcand(la[u], lb[v], i0 + t, &d, &c, &acc, bchg, mode);
                raw += u != v;
                nchg += chg;
                scale_only += (u == v) & chg;
            }
        }
    }
    q->slo = slo;
    q->shi = shi;
    l->ints[RLS_I_CHANGED] += nchg;
    q->raw += raw;
    q->scale_only += scale_only;
    acc_store(&acc, l, flt);
}

static void qpart(const rls_qchunk *qc, int64_t s0, int64_t e0, const uint16_t *mxw,
                  const dec16_t *dec, const rls_spec *spec, local_t *l, qlocal_t *q, double *flt) {
#define QPART(MODE)                                                                               \
    do {                                                                                          \
        if (qc->nibbles)                                                                          \
            qpart_mx_mode(qc, s0, e0, mxw, dec, spec, l, q, flt, MODE);                           \
        else                                                                                      \
            qpart_fp8_mode(qc, s0, e0, dec, spec, l, q, flt, MODE);                               \
    } while (0)
    switch (mode_of(spec)) {
    case MODE_NONE:
        QPART(MODE_NONE);
        break;
    case MODE_BITWISE:
        QPART(MODE_BITWISE);
        break;
    case MODE_ABS:
        QPART(MODE_ABS);
        break;
    default:
        QPART(MODE_REL);
    }
#undef QPART
}

int rls_qdiff(const rls_qchunk *q, const float *values, const uint8_t *efield,
              const int32_t *ulplog2, const rls_spec *spec, rls_out *out, int64_t *qcounts) {
    const dec16_t dec = {values, efield, ulplog2};
    /* zero between calls, like every count buffer of this pass (each user zeroes what it wrote) */
    int64_t *counts = scratch_get(SCRATCH_QCOUNTS, 65536 * sizeof(int64_t));
    if (!counts) return -1;
    uint64_t seen[1024] = {0}; /* the words counted */
    uint16_t mxw[4096]; /* MXFP4: the word of every (scale byte, code) */
    if (q->nibbles)
        for (int s = 0; s < 256; s++)
            for (int k = 0; k < 16; k++) mxw[s * 16 + k] = bf16_rne(q->e2m1[k] * q->e8m0[s]);
    const size_t rows = (q->nibbles ? 256 : (size_t)q->scols) * 256;
    const size_t crows = q->nibbles ? rows : rows * FP8_TABLES;
    int failed = 0;
    int64_t raw = 0, scale_only = 0;
#pragma omp parallel num_threads(threads_for(spec)) reduction(+ : raw, scale_only)
    {
        local_t *l = local_new(spec->ntol, 0);
        qlocal_t ql = {.words = {scratch_get(SCRATCH_QHIST, 65536 * sizeof(uint32_t)), {0}},
                       .chist = scratch_get(SCRATCH_CHIST, crows * sizeof(uint32_t)),
                       .have = -1,
                       .slo = 256,
                       .shi = -1};
        if (!q->nibbles) {
            ql.luta = malloc(rows * sizeof(uint16_t));
            ql.lutb = malloc(rows * sizeof(uint16_t));
            ql.moved = malloc(rows);
            ql.moved_bits = malloc(rows / 8);
        }
        const int tables = q->nibbles || (ql.luta && ql.lutb && ql.moved && ql.moved_bits);
        const int ok = l && ql.words.n && ql.chist && tables;
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t p = 0; p < spec->nparts; p++) {
            if (!ok) continue;
            const int64_t s0 = p * spec->per;
            const int64_t e0 = q->n < s0 + spec->per ? q->n : s0 + spec->per;
            qpart(q, s0, e0, mxw, &dec, spec, l, &ql, out->flt + p * RLS_NF);
        }
        if (ok) {
            if (q->nibbles)
                mx_fold(&ql, mxw);
            else
                fp8_fold(&ql, q->scols);
            raw += ql.raw;
            scale_only += ql.scale_only;
#pragma omp critical(rls_merge)
            {
                local_merge(l, spec->ntol, out, NULL);
                words_merge(&ql.words, counts, seen);
            }
        }
        if (l) local_free(l);
        free(ql.luta);
        free(ql.lutb);
        free(ql.moved);
        free(ql.moved_bits);
    }
    double sqb = 0.0; /* in word order, as base_stats16 sums */
    FOR_SEEN(seen, v, (base_word(v, counts[v], values, efield, out, &sqb), counts[v] = 0));
    if (failed) return -1;
    out->flt[RLS_F_SQB] = sqb;
    qcounts[0] += raw;
    qcounts[1] += scale_only;
    return 0;
}
