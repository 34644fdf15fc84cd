/* rlsparse CPU kernels on bit-packed masks (see bitcore.h).
 *
 * Why C and not numpy: numpy has no fused popcount reduction (np.bitwise_count materialises a
 * byte per word, then sums it: two passes and a temporary), no way to build the joint
 * (binade, mask-bit code) histogram without unpacking every mask bit into a byte per element,
 * and selection sampling is a sequential recurrence (each draw depends on the counts left by all
 * earlier ones) that no vectorised expression computes. The absorption counts fuse a compare,
 * two table look-ups, a float64 difference and two histograms in one pass over four arrays.
 *
 * Threads split the element range into contiguous pieces; every thread counts into its own
 * integer accumulators, merged at the end, so results do not depend on the thread count.
 */
#include "bitcore.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* Work per thread below which the default (threads <= 0) stays on fewer threads. A parallel
 * region costs microseconds on an idle machine but up to a scheduler time slice when the machine
 * is busy: on a shared 2-core host, 2 threads per 4M-element strata chunk (bench/overlap_bench.py
 * --binade) ran 1.6x faster when idle and 3x slower when loaded than one thread, which was
 * consistently 3x faster than the former JIT kernel. One core also streams popcounts at memory
 * bandwidth (about 40 GB/s measured). So by default only huge calls split; an explicit thread
 * count is honoured down to EXPLICIT_MIN units per thread. */
#define PAR_MIN_BYTES ((int64_t)1 << 26) /* popcounts: bytes per thread */
#define PAR_MIN_ELEMS ((int64_t)1 << 24) /* strata histograms, absorption counts: elements */
#define EXPLICIT_MIN ((int64_t)1 << 12)
/* Histogram kernels hand out blocks on demand (a thread the scheduler pauses holds up at most
 * one block): bytes of masks (8 elements each) and elements per block. */
#define BLOCK_BYTES ((int64_t)1 << 12)
#define BLOCK_ELEMS ((int64_t)1 << 15)

int rlb_max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* Threads for `work` units: `requested`, or by default OpenMP's maximum with at least
 * `min_per_thread` units each. */
static int threads_for(int32_t requested, int64_t work, int64_t min_per_thread) {
    int64_t nt = requested > 0 ? requested : rlb_max_threads();
    const int64_t cap = work / (requested > 0 ? EXPLICIT_MIN : min_per_thread);
    if (nt > cap) nt = cap;
    return nt < 1 ? 1 : (int)nt;
}

static int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

static int team_size(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

/* [*s, *e) = piece `t` of `nt` of [0, n), boundaries multiples of `align`. */
static void piece(int64_t n, int t, int nt, int64_t align, int64_t *s, int64_t *e) {
    const int64_t units = (n + align - 1) / align;
    const int64_t a = units * t / nt * align, b = units * (t + 1) / nt * align;
    *s = a < n ? a : n;
    *e = b < n ? b : n;
}

/* ---- popcounts --------------------------------------------------------------------------- */

ALWAYS_INLINE uint64_t load64(const uint8_t *p) {
    uint64_t x;
    memcpy(&x, p, 8); /* an unaligned load */
    return x;
}

/* Counts over bytes [s, e): c[0] += |a|, c[1] += |b|, c[2] += |a & b| (as `what` selects). */
enum { PC_A = 1, PC_B = 2, PC_AB = 4 };

ALWAYS_INLINE void pc_body(const uint8_t *a, const uint8_t *b, int64_t s, int64_t e, int what,
                           uint64_t *c) {
    uint64_t ca = 0, cb = 0, cab = 0;
    int64_t i = s;
    for (; i + 8 <= e; i += 8) {
        const uint64_t x = load64(a + i);
        if (what & PC_A) ca += (uint64_t)__builtin_popcountll(x);
        if (what & (PC_B | PC_AB)) {
            const uint64_t y = load64(b + i);
            if (what & PC_B) cb += (uint64_t)__builtin_popcountll(y);
            if (what & PC_AB) cab += (uint64_t)__builtin_popcountll(x & y);
        }
    }
    for (; i < e; i++) {
        if (what & PC_A) ca += (uint64_t)__builtin_popcount(a[i]);
        if (what & PC_B) cb += (uint64_t)__builtin_popcount(b[i]);
        if (what & PC_AB) cab += (uint64_t)__builtin_popcount(a[i] & b[i]);
    }
    c[0] += ca;
    c[1] += cb;
    c[2] += cab;
}

/* The bytes before the first 32-byte boundary of `a` go to the scalar loop: aligned vector loads
 * never split a cache line (split loads halve the speed of a stream from memory). */
ALWAYS_INLINE int64_t align32(const uint8_t *a, int64_t s, int64_t e) {
    const int64_t head = (int64_t)((32 - ((uintptr_t)(a + s) & 31)) & 31);
    return e - s < head ? e : s + head;
}

/* x86-64 without -mpopcnt lowers __builtin_popcountll to a library call; the loops are compiled
 * four times (AVX-512 VPOPCNTQ, AVX2 nibble look-up, POPCNT, portable) and one is picked at run
 * time from what the CPU supports. */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define X86_DISPATCH 1
#define HW_POPCNT __attribute__((target("popcnt")))
#define AVX2_INLINE static inline __attribute__((always_inline, target("avx2,popcnt")))

/* Per-byte popcounts of 32 bytes (Mula's nibble look-up with vpshufb). */
AVX2_INLINE __m256i bytes_popcount(__m256i v) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1,
                                         2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0F);
    const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(v, low));
    const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), low));
    return _mm256_add_epi8(lo, hi);
}

AVX2_INLINE uint64_t lanes_sum(__m256i v) {
    return (uint64_t)_mm256_extract_epi64(v, 0) + (uint64_t)_mm256_extract_epi64(v, 1) +
           (uint64_t)_mm256_extract_epi64(v, 2) + (uint64_t)_mm256_extract_epi64(v, 3);
}

/* Bytes [s, e): 32 at a time, byte counters widened to 64 bits every 31 vectors (31 * 8 < 256),
 * then the scalar loop for the rest. */
AVX2_INLINE void pc_avx2_body(const uint8_t *a, const uint8_t *b, int64_t s, int64_t e, int what,
                              uint64_t *c) {
    const int64_t s0 = align32(a, s, e);
    pc_body(a, b, s, s0, what, c);
    const __m256i zero = _mm256_setzero_si256();
    __m256i sa = zero, sb = zero, sab = zero;
    int64_t i = s0;
    while (e - i >= 32) {
        int64_t blocks = (e - i) / 32;
        if (blocks > 31) blocks = 31;
        __m256i ba = zero, bb = zero, bab = zero;
        for (int64_t k = 0; k < blocks; k++, i += 32) {
            const __m256i x = _mm256_loadu_si256((const __m256i *)(a + i));
            if (what & PC_A) ba = _mm256_add_epi8(ba, bytes_popcount(x));
            if (what & (PC_B | PC_AB)) {
                const __m256i y = _mm256_loadu_si256((const __m256i *)(b + i));
                if (what & PC_B) bb = _mm256_add_epi8(bb, bytes_popcount(y));
                if (what & PC_AB) bab = _mm256_add_epi8(bab, bytes_popcount(_mm256_and_si256(x, y)));
            }
        }
        sa = _mm256_add_epi64(sa, _mm256_sad_epu8(ba, zero));
        sb = _mm256_add_epi64(sb, _mm256_sad_epu8(bb, zero));
        sab = _mm256_add_epi64(sab, _mm256_sad_epu8(bab, zero));
    }
    c[0] += lanes_sum(sa);
    c[1] += lanes_sum(sb);
    c[2] += lanes_sum(sab);
    pc_body(a, b, i, e, what, c);
}
/* Bytes [s, e): 64 at a time with 256-bit VPOPCNTQ into 64-bit lanes, then the scalar loop.
 * 512-bit vectors are not used: on the CPUs measured (AMD EPYC) they run at half speed from
 * memory whenever an input is not 64-byte aligned, which mask files do not guarantee. */
#define AVX512_TARGET "avx512f,avx512vl,avx512vpopcntdq,popcnt"
static inline __attribute__((always_inline, target(AVX512_TARGET))) void pc_avx512_body(
    const uint8_t *a, const uint8_t *b, int64_t s, int64_t e, int what, uint64_t *c) {
    const int64_t s0 = align32(a, s, e);
    pc_body(a, b, s, s0, what, c);
    const __m256i zero = _mm256_setzero_si256();
    __m256i sa = zero, sb = zero, sab = zero, ta = zero, tb = zero, tab = zero;
    int64_t i = s0;
    for (; e - i >= 64; i += 64) {
        const __m256i x0 = _mm256_loadu_si256((const __m256i *)(a + i));
        const __m256i x1 = _mm256_loadu_si256((const __m256i *)(a + i + 32));
        if (what & PC_A) {
            sa = _mm256_add_epi64(sa, _mm256_popcnt_epi64(x0));
            ta = _mm256_add_epi64(ta, _mm256_popcnt_epi64(x1));
        }
        if (what & (PC_B | PC_AB)) {
            const __m256i y0 = _mm256_loadu_si256((const __m256i *)(b + i));
            const __m256i y1 = _mm256_loadu_si256((const __m256i *)(b + i + 32));
            if (what & PC_B) {
                sb = _mm256_add_epi64(sb, _mm256_popcnt_epi64(y0));
                tb = _mm256_add_epi64(tb, _mm256_popcnt_epi64(y1));
            }
            if (what & PC_AB) {
                sab = _mm256_add_epi64(sab, _mm256_popcnt_epi64(_mm256_and_si256(x0, y0)));
                tab = _mm256_add_epi64(tab, _mm256_popcnt_epi64(_mm256_and_si256(x1, y1)));
            }
        }
    }
    c[0] += lanes_sum(_mm256_add_epi64(sa, ta));
    c[1] += lanes_sum(_mm256_add_epi64(sb, tb));
    c[2] += lanes_sum(_mm256_add_epi64(sab, tab));
    pc_body(a, b, i, e, what, c);
}
#define PC_AVX512(NAME, WHAT)                                                                   \
    __attribute__((target(AVX512_TARGET))) static void NAME(                                    \
        const uint8_t *a, const uint8_t *b, int64_t s, int64_t e, uint64_t *c) {                \
        pc_avx512_body(a, b, s, e, WHAT, c);                                                    \
    }
PC_AVX512(pc_a_avx512, PC_A)
PC_AVX512(pc_ab_avx512, PC_AB)
PC_AVX512(pc_pair_avx512, PC_A | PC_B | PC_AB)

#define PC_AVX2(NAME, WHAT)                                                                     \
    __attribute__((target("avx2,popcnt"))) static void NAME(                                    \
        const uint8_t *a, const uint8_t *b, int64_t s, int64_t e, uint64_t *c) {                \
        pc_avx2_body(a, b, s, e, WHAT, c);                                                      \
    }
PC_AVX2(pc_a_avx2, PC_A)
PC_AVX2(pc_ab_avx2, PC_AB)
PC_AVX2(pc_pair_avx2, PC_A | PC_B | PC_AB)
#else
#define HW_POPCNT
#endif

#define PC_VARIANT(NAME, WHAT, ATTR)                                                            \
    ATTR static void NAME(const uint8_t *a, const uint8_t *b, int64_t s, int64_t e,             \
                          uint64_t *c) {                                                        \
        pc_body(a, b, s, e, WHAT, c);                                                           \
    }
PC_VARIANT(pc_a_hw, PC_A, HW_POPCNT)
PC_VARIANT(pc_a_sw, PC_A, )
PC_VARIANT(pc_ab_hw, PC_AB, HW_POPCNT)
PC_VARIANT(pc_ab_sw, PC_AB, )
PC_VARIANT(pc_pair_hw, PC_A | PC_B | PC_AB, HW_POPCNT)
PC_VARIANT(pc_pair_sw, PC_A | PC_B | PC_AB, )

typedef void (*pc_fn)(const uint8_t *, const uint8_t *, int64_t, int64_t, uint64_t *);

/* 3: AVX-512 VPOPCNTQ (on 256-bit vectors), 2: AVX2 and POPCNT, 1: POPCNT, 0: none of them (or not x86-64, where
 * the portable loop is the target's best) */
static int cpu_level(void) {
#ifdef X86_DISPATCH
    static int known = -1; /* a benign race: every thread stores the same value */
    if (known < 0) {
        __builtin_cpu_init();
        const int popcnt = __builtin_cpu_supports("popcnt") != 0;
        known = !popcnt                                   ? 0
                : __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                        __builtin_cpu_supports("avx512vpopcntdq") ? 3
                : __builtin_cpu_supports("avx2")                  ? 2
                                                                  : 1;
    }
    return known;
#else
    return 0;
#endif
}

static pc_fn pick(pc_fn avx512, pc_fn avx2, pc_fn hw, pc_fn sw) {
    switch (cpu_level()) {
    case 3:
        return avx512;
    case 2:
        return avx2;
    case 1:
        return hw;
    default:
        return sw;
    }
}

#ifdef X86_DISPATCH
#define PICK(WHAT) pick(pc_##WHAT##_avx512, pc_##WHAT##_avx2, pc_##WHAT##_hw, pc_##WHAT##_sw)
#else
#define PICK(WHAT) pick(pc_##WHAT##_sw, pc_##WHAT##_sw, pc_##WHAT##_sw, pc_##WHAT##_sw)
#endif

static void pc_run(pc_fn f, const uint8_t *a, const uint8_t *b, int64_t n, int32_t threads,
                   uint64_t *out) {
    const int nt = threads_for(threads, n, PAR_MIN_BYTES);
    out[0] = out[1] = out[2] = 0;
    if (nt == 1) {
        f(a, b, 0, n, out);
        return;
    }
    uint64_t c0 = 0, c1 = 0, c2 = 0;
#pragma omp parallel num_threads(nt) reduction(+ : c0, c1, c2)
    {
        int64_t s, e;
        uint64_t c[3] = {0, 0, 0};
        piece(n, thread_id(), team_size(), 64, &s, &e);
        f(a, b, s, e, c);
        c0 += c[0];
        c1 += c[1];
        c2 += c[2];
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
}

int64_t rlb_popcount(const uint8_t *a, int64_t n, int32_t threads) {
    uint64_t c[3];
    pc_run(PICK(a), a, a, n, threads, c);
    return (int64_t)c[0];
}

int64_t rlb_and_popcount(const uint8_t *a, const uint8_t *b, int64_t n, int32_t threads) {
    uint64_t c[3];
    pc_run(PICK(ab), a, b, n, threads, c);
    return (int64_t)c[2];
}

void rlb_pair_popcounts(const uint8_t *a, const uint8_t *b, int64_t n, int32_t threads,
                        int64_t *out) {
    uint64_t c[3];
    pc_run(PICK(pair), a, b, n, threads, c);
    for (int k = 0; k < 3; k++) out[k] = (int64_t)c[k];
}

/* ---- strata histograms ------------------------------------------------------------------- */

/* SPREAD[b] holds bit t of byte b in byte t: 8 per-element codes are built at once. */
#define SP(b)                                                                                    \
    ((uint64_t)((b) & 1) | (uint64_t)((b) >> 1 & 1) << 8 | (uint64_t)((b) >> 2 & 1) << 16 |      \
     (uint64_t)((b) >> 3 & 1) << 24 | (uint64_t)((b) >> 4 & 1) << 32 |                          \
     (uint64_t)((b) >> 5 & 1) << 40 | (uint64_t)((b) >> 6 & 1) << 48 |                          \
     (uint64_t)((b) >> 7 & 1) << 56)
#define SP4(b) SP(b), SP((b) + 1), SP((b) + 2), SP((b) + 3)
#define SP16(b) SP4(b), SP4((b) + 4), SP4((b) + 8), SP4((b) + 12)
#define SP64(b) SP16(b), SP16((b) + 16), SP16((b) + 32), SP16((b) + 48)
static const uint64_t SPREAD[256] = {SP64(0), SP64(64), SP64(128), SP64(192)};

/* Histogram of bytes [j0, j1) (elements [8 j0, min(8 j1, n))) into h, NSUB interleaved copies
 * of (RLB_N_STRATA << R) bins each, so that runs of one bin do not serialise on one counter. */
#define NSUB 2

#define STRATA_RANGE(W, T)                                                                       \
    ALWAYS_INLINE void strata_range##W##_r(const T *words, int64_t n, int32_t shift,            \
                                           uint32_t fmask, const uint8_t *masks, int64_t R,     \
                                           int64_t stride, int64_t j0, int64_t j1,              \
                                           const uint64_t *spread, int64_t *h) {                \
        const int64_t bins = (int64_t)RLB_N_STRATA << R;                                        \
        int64_t *h1 = h + bins;                                                                 \
        const int64_t full = n >> 3, jf = j1 < full ? j1 : full;                                \
        int64_t j = j0;                                                                         \
        for (; j < jf; j++) {                                                                   \
            uint64_t codes = 0;                                                                 \
            for (int64_t r = 0; r < R; r++) codes |= spread[masks[r * stride + j]] << r;        \
            const T *w = words + 8 * j;                                                         \
            for (int t = 0; t < 8; t += 2) {                                                    \
                const uint64_t c0 = (codes >> (8 * t)) & 0xFF;                                  \
                const uint64_t c1 = (codes >> (8 * t + 8)) & 0xFF;                              \
                h[((((uint32_t)w[t] >> shift) & fmask) << R) | c0]++;                           \
                h1[((((uint32_t)w[t + 1] >> shift) & fmask) << R) | c1]++;                      \
            }                                                                                   \
        }                                                                                       \
        for (; j < j1; j++) { /* the last, partial byte */                                     \
            for (int64_t i = 8 * j; i < n; i++) {                                               \
                uint32_t c = 0;                                                                 \
                for (int64_t r = 0; r < R; r++)                                                 \
                    c |= (uint32_t)((masks[r * stride + j] >> (i & 7)) & 1) << r;               \
                h[((((uint32_t)words[i] >> shift) & fmask) << R) | c]++;                        \
            }                                                                                   \
        }                                                                                       \
    }                                                                                           \
    /* the common mask counts get their own copies, so R is a constant there */                 \
    static void strata_range##W(const T *words, int64_t n, int32_t shift, uint32_t fmask,       \
                                const uint8_t *masks, int64_t R, int64_t stride, int64_t j0,    \
                                int64_t j1, const uint64_t *spread, int64_t *h) {               \
        switch (R) {                                                                            \
        case 1:                                                                                 \
            strata_range##W##_r(words, n, shift, fmask, masks, 1, stride, j0, j1, spread, h);   \
            break;                                                                              \
        case 2:                                                                                 \
            strata_range##W##_r(words, n, shift, fmask, masks, 2, stride, j0, j1, spread, h);   \
            break;                                                                              \
        default:                                                                                \
            strata_range##W##_r(words, n, shift, fmask, masks, R, stride, j0, j1, spread, h);   \
        }                                                                                       \
    }
STRATA_RANGE(16, uint16_t)
STRATA_RANGE(32, uint32_t)

typedef void (*strata_fn)(const void *, int64_t, int32_t, uint32_t, const uint8_t *, int64_t,
                          int64_t, int64_t, int64_t, const uint64_t *, int64_t *);

/* Each thread fills its own zeroed copies, allocated up front (so that running out of memory
 * leaves `hist` untouched); they are added into `hist` afterwards in thread order. */
static int strata_run(strata_fn f, const void *words, int64_t n, int32_t shift, uint32_t fmask,
                      const uint8_t *masks, int64_t R, int64_t stride, int64_t *hist,
                      int32_t threads) {
    const int64_t bins = (int64_t)RLB_N_STRATA << R, nbytes = (n + 7) / 8;
    const int nt = threads_for(threads, n, PAR_MIN_ELEMS);
    int64_t *local = calloc((size_t)(nt * NSUB * bins), sizeof(int64_t));
    if (!local) return -1;
    if (nt == 1) {
        f(words, n, shift, fmask, masks, R, stride, 0, nbytes, SPREAD, local);
    } else {
        const int64_t nblk = (nbytes + BLOCK_BYTES - 1) / BLOCK_BYTES;
#pragma omp parallel num_threads(nt)
        {
            int64_t *h = local + thread_id() * NSUB * bins;
#pragma omp for schedule(dynamic, 1)
            for (int64_t k = 0; k < nblk; k++) {
                const int64_t s = k * BLOCK_BYTES, e = s + BLOCK_BYTES < nbytes ? s + BLOCK_BYTES : nbytes;
                f(words, n, shift, fmask, masks, R, stride, s, e, SPREAD, h);
            }
        }
    }
    for (int64_t k = 0; k < (int64_t)nt * NSUB * bins; k++) hist[k % bins] += local[k];
    free(local);
    return 0;
}

int rlb_strata_hist16(const uint16_t *words, int64_t n, int32_t shift, uint32_t fmask,
                      const uint8_t *masks, int64_t nmasks, int64_t stride, int64_t *hist,
                      int32_t threads) {
    return strata_run((strata_fn)strata_range16, words, n, shift, fmask, masks, nmasks, stride,
                      hist, threads);
}

int rlb_strata_hist32(const uint32_t *words, int64_t n, int32_t shift, uint32_t fmask,
                      const uint8_t *masks, int64_t nmasks, int64_t stride, int64_t *hist,
                      int32_t threads) {
    return strata_run((strata_fn)strata_range32, words, n, shift, fmask, masks, nmasks, stride,
                      hist, threads);
}

/* ---- selection sampling ------------------------------------------------------------------ */

void rlb_select_flat(const double *u, int64_t n, int64_t *rem, uint8_t *out) {
    int64_t k = rem[0], m = rem[1];
    for (int64_t i = 0; i < n; i++) {
        if (u[i] * (double)m < (double)k) {
            out[i >> 3] |= (uint8_t)(1u << (i & 7));
            k--;
        }
        m--;
    }
    rem[0] = k;
    rem[1] = m;
}

#define SELECT_STRATA(W, T)                                                                      \
    void rlb_select_strata##W(const T *words, int32_t shift, uint32_t fmask, const double *u,    \
                              int64_t n, int64_t *rem_k, int64_t *rem_n, uint8_t *out) {         \
        for (int64_t i = 0; i < n; i++) {                                                        \
            const uint32_t g = ((uint32_t)words[i] >> shift) & fmask;                            \
            if (u[i] * (double)rem_n[g] < (double)rem_k[g]) {                                    \
                out[i >> 3] |= (uint8_t)(1u << (i & 7));                                         \
                rem_k[g]--;                                                                      \
            }                                                                                    \
            rem_n[g]--;                                                                          \
        }                                                                                        \
    }
SELECT_STRATA(16, uint16_t)
SELECT_STRATA(32, uint32_t)

/* ---- absorption counts ------------------------------------------------------------------- */

ALWAYS_INLINE double f32_bits_to_f64(uint32_t w) {
    float f;
    memcpy(&f, &w, 4);
    return (double)f;
}

static void absorb_range(const uint32_t *a32, const uint32_t *b32, const uint16_t *a16,
                         const uint16_t *b16, int64_t s, int64_t e, const uint8_t *efield,
                         const int32_t *ulplog2, int64_t *bins, int64_t *hist) {
    for (int64_t i = s; i < e; i++) {
        const uint16_t w = a16[i];
        int64_t *row = bins + 3 * (int64_t)efield[w];
        row[0]++;
        if (a32[i] == b32[i]) continue;
        const int vis = w != b16[i];
        row[1]++;
        row[2] += vis;
        const double d = fabs(f32_bits_to_f64(b32[i]) - f32_bits_to_f64(a32[i]));
        if (isfinite(d) && d > 0) {
            uint64_t bits;
            memcpy(&bits, &d, 8);
            int64_t k = (int64_t)((bits >> 52) & 0x7FF) - 1023 - ulplog2[w] - RLB_ULP_LOG2_MIN;
            k = k < 0 ? 0 : (k > RLB_ULP_BINS - 1 ? RLB_ULP_BINS - 1 : k);
            hist[vis * RLB_ULP_BINS + k]++;
        }
    }
}

int rlb_absorb_counts(const uint32_t *a32, const uint32_t *b32, const uint16_t *a16,
                      const uint16_t *b16, int64_t n, const uint8_t *efield,
                      const int32_t *ulplog2, int64_t *binades, int64_t *hist, int32_t threads) {
    enum { NB = 3 * RLB_BINADE_BINS, NH = 2 * RLB_ULP_BINS };
    const int nt = threads_for(threads, n, PAR_MIN_ELEMS);
    int64_t *local = calloc((size_t)nt * (NB + NH), sizeof(int64_t));
    if (!local) return -1;
    if (nt == 1) {
        absorb_range(a32, b32, a16, b16, 0, n, efield, ulplog2, local, local + NB);
    } else {
        const int64_t nblk = (n + BLOCK_ELEMS - 1) / BLOCK_ELEMS;
#pragma omp parallel num_threads(nt)
        {
            int64_t *bl = local + thread_id() * (NB + NH);
#pragma omp for schedule(dynamic, 1)
            for (int64_t k = 0; k < nblk; k++) {
                const int64_t s = k * BLOCK_ELEMS, e = s + BLOCK_ELEMS < n ? s + BLOCK_ELEMS : n;
                absorb_range(a32, b32, a16, b16, s, e, efield, ulplog2, bl, bl + NB);
            }
        }
    }
    for (int t = 0; t < nt; t++) {
        const int64_t *bl = local + t * (NB + NH);
        for (int k = 0; k < NB; k++) binades[k] += bl[k];
        for (int k = 0; k < NH; k++) hist[k] += bl[NB + k];
    }
    free(local);
    return 0;
}
