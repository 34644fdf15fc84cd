/* rlsparse CPU kernels on bit-packed masks (and the fp32 -> 16-bit absorption counts).
 *
 * Packed masks follow rlsparse_lib.io.maskfile: element i is bit i % 8 (least significant first)
 * of byte i / 8. Strata are the exponent field of θ0's raw words, (w >> shift) & fmask, i.e. the
 * |θ0| binade. Every output is an integer count, so results are exact and identical whatever the
 * number of threads; `threads` <= 0 means OpenMP's default. Small inputs run on one thread.
 * Outputs marked "+=" are accumulated into caller-allocated (zero-filled or running) arrays.
 */
#ifndef RLSPARSE_BITCORE_H
#define RLSPARSE_BITCORE_H

#include <stdint.h>

#define RLB_N_STRATA 256      /* strata a histogram row indexes (exponent fields of fp32/bf16) */
#define RLB_MAX_MASKS 8       /* masks a strata histogram combines (codes are bytes) */
#define RLB_ULP_LOG2_MIN (-40) /* diff.stats.ULP_LOG2_MIN */
#define RLB_ULP_BINS 96        /* diff.stats.ULP_BINS */
#define RLB_BINADE_BINS 256    /* diff.stats.BINADE_BINS */

/* Set bits in a[0..n) (bytes). */
int64_t rlb_popcount(const uint8_t *a, int64_t n, int32_t threads);

/* Set bits of a & b over n bytes. */
int64_t rlb_and_popcount(const uint8_t *a, const uint8_t *b, int64_t n, int32_t threads);

/* out[0..3) = (|a|, |b|, |a & b|) over n bytes, in one pass. */
void rlb_pair_popcounts(const uint8_t *a, const uint8_t *b, int64_t n, int32_t threads,
                        int64_t *out);

/* hist[g][c] += elements i < n in stratum g = (words[i] >> shift) & fmask whose bits in the
 * nmasks packed masks (row r at masks + r * stride, >= ceil(n / 8) bytes each) spell c (bit r of
 * c is mask r's bit). hist is int64[RLB_N_STRATA][1 << nmasks]; fmask < RLB_N_STRATA and
 * nmasks <= RLB_MAX_MASKS. Returns 0, or -1 when memory runs out. */
int rlb_strata_hist16(const uint16_t *words, int64_t n, int32_t shift, uint32_t fmask,
                      const uint8_t *masks, int64_t nmasks, int64_t stride, int64_t *hist,
                      int32_t threads);
int rlb_strata_hist32(const uint32_t *words, int64_t n, int32_t shift, uint32_t fmask,
                      const uint8_t *masks, int64_t nmasks, int64_t stride, int64_t *hist,
                      int32_t threads);

/* Selection sampling (Knuth's Algorithm S), sequential by nature: element i is selected when
 * u[i] * (n left) < (k left); rem = {k left, n left} is updated; out (zero-filled, ceil(n / 8)
 * bytes) receives the packed selection. */
void rlb_select_flat(const double *u, int64_t n, int64_t *rem, uint8_t *out);

/* The same within each stratum g of words[i]: rem_k[g], rem_n[g] (int64[RLB_N_STRATA]). */
void rlb_select_strata16(const uint16_t *words, int32_t shift, uint32_t fmask, const double *u,
                         int64_t n, int64_t *rem_k, int64_t *rem_n, uint8_t *out);
void rlb_select_strata32(const uint32_t *words, int32_t shift, uint32_t fmask, const double *u,
                         int64_t n, int64_t *rem_k, int64_t *rem_n, uint8_t *out);

/* fp32 updates split by a 16-bit cast: for each i < n with stratum g = efield[a16[i]],
 * binades[g][0] += 1; where a32[i] != b32[i]: binades[g][1] += 1, binades[g][2] += (a16 != b16)
 * and, for finite non-zero |Δ| = |b - a| (float64), hist[visible][clip(floor(log2|Δ|) -
 * ulplog2[a16[i]] - RLB_ULP_LOG2_MIN, 0, RLB_ULP_BINS - 1)] += 1. binades is
 * int64[RLB_BINADE_BINS][3], hist int64[2][RLB_ULP_BINS], efield uint8[65536], ulplog2
 * int32[65536]. Returns 0, or -1 when memory runs out. */
int rlb_absorb_counts(const uint32_t *a32, const uint32_t *b32, const uint16_t *a16,
                      const uint16_t *b16, int64_t n, const uint8_t *efield,
                      const int32_t *ulplog2, int64_t *binades, int64_t *hist, int32_t threads);

/* Threads a parallel kernel uses by default (1 without OpenMP). */
int rlb_max_threads(void);

#endif
