"""The compiled mask kernels (masks/bitcore.c via masks.bitops) against plain numpy references.

Every entry point is checked on empty input, odd lengths, unaligned and read-only views, and with
one thread against several (integer counts must not depend on the thread count).
"""

from __future__ import annotations

import numpy as np
import pytest

from rlsparse_lib.diff.stats import BINADE_BINS, ULP_BINS, ULP_LOG2_MIN
from rlsparse_lib.errors import ConfigError
from rlsparse_lib.io.dtypes import cast_words, decode_tables
from rlsparse_lib.masks import _bitcore, bitops

#: byte lengths around the kernels' vector widths (8, 32, 64) and thread blocks
LENGTHS = [0, 1, 7, 8, 9, 31, 32, 33, 63, 64, 65, 127, 129, 1000, 4099, 70001]
THREADS = [1, 2, 3]


def bits_ref(a: np.ndarray) -> int:
    return int(np.unpackbits(a).sum())


def test_constants_match_the_python_side() -> None:
    assert _bitcore.ULP_BINS == ULP_BINS and _bitcore.ULP_LOG2_MIN == ULP_LOG2_MIN
    assert _bitcore.BINADE_BINS == BINADE_BINS
    assert bitops.N_STRATA == 256 and bitops.MAX_STRATA_MASKS == 8
    assert bitops.max_threads() >= 1


@pytest.mark.parametrize("offset", [0, 1, 3, 13])
def test_popcounts_match_numpy(offset: int) -> None:
    rng = np.random.default_rng(offset)
    for n in LENGTHS:
        buf_a = rng.integers(0, 256, n + 64, dtype=np.uint8)
        buf_b = rng.integers(0, 256, n + 64, dtype=np.uint8)
        # unaligned views, b shifted differently from a; read-only like an mmap
        a, b = buf_a[offset : offset + n], buf_b[2 * offset + 1 : 2 * offset + 1 + n]
        a.setflags(write=False)
        ref = (bits_ref(a), bits_ref(b), bits_ref(a & b))
        for t in [0, *THREADS]:
            assert bitops.popcount(a, threads=t) == ref[0], (n, t)
            assert bitops.and_popcount(a, b, threads=t) == ref[2], (n, t)
            assert bitops.pair_popcounts(a, b, threads=t) == ref, (n, t)


def test_popcounts_threads_agree_on_large_input() -> None:
    rng = np.random.default_rng(1)
    n = 3_000_017
    a = rng.integers(0, 256, n, dtype=np.uint8)
    b = rng.integers(0, 256, n, dtype=np.uint8) & a
    ref = bitops.pair_popcounts(a, b, threads=1)
    assert ref == (bits_ref(a), bits_ref(b), bits_ref(a & b))
    for t in (2, 3, 7):
        assert bitops.pair_popcounts(a, b, threads=t) == ref
        assert bitops.popcount(b, threads=t) == ref[1]
        assert bitops.and_popcount(a, b, threads=t) == ref[2]


def test_popcounts_reject_unequal_lengths() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        bitops.and_popcount(np.zeros(5, np.uint8), np.zeros(6, np.uint8))
    with pytest.raises(ValueError, match="differ in length"):
        bitops.pair_popcounts(np.zeros(5, np.uint8), np.zeros(6, np.uint8))


def strata_ref(words: np.ndarray, dtype: str, bits: np.ndarray) -> np.ndarray:
    """int64[256, 2**R]: bincount of (binade, mask-bit code) from unpacked bool masks."""
    shift, fmask = bitops.strata_params(dtype)
    g = (words.astype(np.int64) >> shift) & fmask
    code = sum(bits[r].astype(np.int64) << r for r in range(bits.shape[0]))
    r = bits.shape[0]
    return np.bincount((g << r) | code, minlength=256 << r).reshape(256, 1 << r)


def random_words(rng: np.random.Generator, dtype: str, n: int) -> np.ndarray:
    """Raw words spread over every binade, zero/subnormal and inf/nan included."""
    if dtype == "float32":
        return rng.integers(0, 1 << 32, n, dtype=np.uint32)
    return rng.integers(0, 1 << 16, n, dtype=np.uint16)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("n_masks", [1, 2, 3, 8])
def test_strata_histogram_matches_numpy(dtype: str, n_masks: int) -> None:
    rng = np.random.default_rng(n_masks)
    for n in [0, 1, 7, 8, 9, 1003, 70001]:
        words = random_words(rng, dtype, n)
        bits = rng.random((n_masks, n)) < 0.3
        packed = np.stack([np.packbits(b, bitorder="little") for b in bits]).reshape(n_masks, -1)
        # masks may run past ceil(n / 8) bytes; the extra bytes are ignored
        packed = np.concatenate([packed, np.full((n_masks, 3), 0xFF, np.uint8)], axis=1)
        ref = strata_ref(words, dtype, bits)
        for t in [0, *THREADS]:
            hist = np.zeros((bitops.N_STRATA, 1 << n_masks), np.int64)
            bitops.strata_histogram(words, dtype, packed, hist, threads=t)
            np.testing.assert_array_equal(hist, ref, err_msg=f"{dtype} n={n} threads={t}")
        bitops.strata_histogram(words, dtype, packed, hist)  # accumulates
        np.testing.assert_array_equal(hist, 2 * ref)


def test_strata_histogram_threads_agree_on_large_input() -> None:
    rng = np.random.default_rng(7)
    n = 1_000_003
    words = ((rng.standard_normal(n).astype(np.float32) * 0.02).view(np.uint32) >> 16).astype(
        np.uint16
    )
    bits = rng.random((2, n)) < 0.2
    packed = np.stack([np.packbits(b, bitorder="little") for b in bits])
    ref = strata_ref(words, "bfloat16", bits)
    for t in (1, 2, 3, 5):
        hist = np.zeros((bitops.N_STRATA, 4), np.int64)
        bitops.strata_histogram(words, "bfloat16", packed, hist, threads=t)
        np.testing.assert_array_equal(hist, ref, err_msg=f"threads={t}")


def test_strata_histogram_rejects_bad_shapes() -> None:
    words = np.zeros(20, np.uint16)
    with pytest.raises(ValueError, match="bytes"):
        bitops.strata_histogram(
            words, "bfloat16", np.zeros((1, 2), np.uint8), np.zeros((256, 2), np.int64)
        )
    with pytest.raises(ValueError, match="hist must be"):
        bitops.strata_histogram(
            words, "bfloat16", np.zeros((2, 3), np.uint8), np.zeros((256, 2), np.int64)
        )
    with pytest.raises(ConfigError, match="at most 8"):
        bitops.strata_histogram(
            words, "bfloat16", np.zeros((9, 3), np.uint8), np.zeros((256, 512), np.int64)
        )
    with pytest.raises(ConfigError, match="bf16/fp16/fp32"):
        bitops.strata_params("int8")


def select_ref(u: np.ndarray, k: int, m: int) -> tuple[np.ndarray, int, int]:
    """Algorithm S in plain Python: element i is taken when u[i] * (n left) < (k left)."""
    sel = np.zeros(u.size, bool)
    for i, x in enumerate(u.tolist()):
        if x * m < k:
            sel[i] = True
            k -= 1
        m -= 1
    return sel, k, m


def test_select_uniform_matches_python() -> None:
    rng = np.random.default_rng(3)
    for n in [0, 1, 7, 8, 9, 100, 1001]:
        u = rng.random(n)
        for k in sorted({0, 1, n // 3, n}):
            if k > n:
                continue
            sel, k_left, n_left = select_ref(u, k, n)
            out = np.zeros((n + 7) // 8, np.uint8)
            rem = np.array([k, n], np.int64)
            bitops.select_uniform(u, rem, out)
            np.testing.assert_array_equal(np.unpackbits(out, bitorder="little")[:n], sel)
            assert rem.tolist() == [k_left, n_left] == [0, 0]
            # chunked at an odd boundary: the same draw
            rem = np.array([k, n], np.int64)
            head = np.zeros((5 + 7) // 8, np.uint8)
            tail = np.zeros((max(n - 5, 0) + 7) // 8, np.uint8)
            bitops.select_uniform(u[:5], rem, head)
            bitops.select_uniform(u[5:], rem, tail)
            got = np.concatenate(
                [
                    np.unpackbits(head, bitorder="little")[: min(n, 5)],
                    np.unpackbits(tail, bitorder="little")[: max(n - 5, 0)],
                ]
            )
            np.testing.assert_array_equal(got, sel)


def test_select_uniform_rejects_a_short_output() -> None:
    with pytest.raises(ValueError, match="out holds"):
        bitops.select_uniform(np.zeros(9), np.array([1, 9], np.int64), np.zeros(1, np.uint8))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_select_uniform_strata_matches_python(dtype: str) -> None:
    rng = np.random.default_rng(5)
    shift, fmask = bitops.strata_params(dtype)
    for n in [0, 1, 9, 2001]:
        words = random_words(rng, dtype, n)
        if n:
            words[: n // 2] = words[0]  # one big stratum plus scattered ones
        u = rng.random(n)
        g = (words.astype(np.int64) >> shift) & fmask
        total = np.bincount(g, minlength=256)
        want = total // 3
        rem_k, rem_n = want.astype(np.int64), total.astype(np.int64)
        sel = np.zeros(n, bool)
        k_left, n_left = want.copy(), total.copy()
        for i in range(n):
            s = g[i]
            if u[i] * int(n_left[s]) < int(k_left[s]):
                sel[i] = True
                k_left[s] -= 1
            n_left[s] -= 1
        out = np.zeros((n + 7) // 8, np.uint8)
        bitops.select_uniform_strata(words, dtype, u, rem_k, rem_n, out)
        np.testing.assert_array_equal(np.unpackbits(out, bitorder="little")[:n], sel)
        assert (rem_k == 0).all() and (rem_n == 0).all()
        assert (np.bincount(g[sel], minlength=256) == want).all()


def absorb_ref(a32, b32, a16, b16, efield, ulplog2) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised reference of the absorption counts."""
    g = efield[a16].astype(np.int64)
    changed = a32 != b32
    vis = changed & (a16 != b16)
    binades = np.stack(
        [np.bincount(g[m], minlength=BINADE_BINS) for m in (np.ones_like(changed), changed, vis)],
        axis=1,
    )
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.abs(
            b32.view(np.float32).astype(np.float64) - a32.view(np.float32).astype(np.float64)
        )
    ok = changed & np.isfinite(d) & (d > 0)
    _, ex = np.frexp(d[ok])  # d = m 2^ex with m in [0.5, 1): floor(log2 d) = ex - 1
    k = np.clip(ex.astype(np.int64) - 1 - ulplog2[a16[ok]] - ULP_LOG2_MIN, 0, ULP_BINS - 1)
    hist = np.zeros((2, ULP_BINS), np.int64)
    np.add.at(hist, (vis[ok].astype(np.int64), k), 1)
    return binades, hist


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_absorb_counts_match_numpy(dtype: str) -> None:
    rng = np.random.default_rng(11)
    _, efield, ulplog2 = decode_tables(dtype, dtype)
    for n in [0, 1, 7, 1001, 200_003]:
        scale = np.float32(2.0) ** rng.integers(-30, 12, n).astype(np.float32)
        a = rng.standard_normal(n).astype(np.float32) * scale
        step = rng.standard_normal(n) * 10.0 ** rng.integers(-9, 0, n) * (rng.random(n) < 0.7)
        b = (a + step.astype(np.float32) * a).astype(np.float32)
        for arr, frac, val in ((b, 0.01, np.nan), (a, 0.005, np.inf), (b, 0.01, 0.0)):
            arr[rng.random(n) < frac] = val
        b[rng.random(n) < 0.01] = -0.0
        a32, b32 = a.view(np.uint32), b.view(np.uint32)
        a16, b16 = cast_words(a32, "float32", dtype), cast_words(b32, "float32", dtype)
        ref_b, ref_h = absorb_ref(a32, b32, a16, b16, efield, ulplog2)
        for t in [0, *THREADS, 8]:
            binades = np.zeros((BINADE_BINS, 3), np.int64)
            hist = np.zeros((2, ULP_BINS), np.int64)
            bitops.absorb_counts(a32, b32, a16, b16, efield, ulplog2, binades, hist, threads=t)
            np.testing.assert_array_equal(binades, ref_b, err_msg=f"{dtype} n={n} threads={t}")
            np.testing.assert_array_equal(hist, ref_h, err_msg=f"{dtype} n={n} threads={t}")


def test_absorb_counts_reject_bad_shapes() -> None:
    _, efield, ulplog2 = decode_tables("bfloat16", "bfloat16")
    a32, a16 = np.zeros(4, np.uint32), np.zeros(4, np.uint16)
    binades, hist = np.zeros((BINADE_BINS, 3), np.int64), np.zeros((2, ULP_BINS), np.int64)
    with pytest.raises(ValueError, match="one length"):
        bitops.absorb_counts(a32, a32[:3], a16, a16, efield, ulplog2, binades, hist)
    with pytest.raises(ValueError, match="binades must be"):
        bitops.absorb_counts(a32, a32, a16, a16, efield, ulplog2, hist, binades)
