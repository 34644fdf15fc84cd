"""The CPU kernel against an independent per-element numpy reference, including NaN, ±0, Inf."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlsparse_lib.diff.kernels import cpu
from rlsparse_lib.diff.kernels.cpu import CpuKernel, tolerance_table
from rlsparse_lib.diff.kernels.protocol import ChunkSpec
from rlsparse_lib.diff.stats import ULP_BINS, ULP_LOG2_MIN
from rlsparse_lib.io.dtypes import FLOAT_FORMATS, ulp_by_exponent_field
from rlsparse_lib.rules import MaskRule

TOLS = np.array([0.0, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4])
ETA = 1e-3


def decode(words: np.ndarray, fmt: str) -> np.ndarray:
    """Raw words -> float32 values (independent of the kernel's lookup tables)."""
    if fmt == "bfloat16":
        return (words.astype(np.uint32) << 16).view(np.float32)
    if fmt == "float16":
        return words.view(np.float16).astype(np.float32)
    return words.view(np.float32)


def make_words(fmt: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Base/tuned words with many one-ULP and random changes plus special values."""
    rng = np.random.default_rng(seed)
    word = FLOAT_FORMATS[fmt].word
    vals = (rng.standard_normal(n) * rng.choice([1e-6, 1e-3, 0.02, 1.0], n)).astype(np.float32)
    if fmt == "bfloat16":
        a = (vals.view(np.uint32) >> 16).astype(np.uint16)
    elif fmt == "float16":
        a = vals.astype(np.float16).view(np.uint16)
    else:
        a = vals.view(np.uint32).copy()
    b = a.copy()
    kind = rng.integers(0, 4, n)
    b[kind == 1] += word.type(1)  # one ULP (away from zero)
    b[kind == 2] -= word.type(1)  # one ULP towards zero
    rand = kind == 3
    b[rand] = rng.integers(0, np.iinfo(word).max, rand.sum(), dtype=word)  # anything, incl. NaN/Inf
    specials = _specials(fmt)[:n]
    k = len(specials)
    a[:k] = [s[0] for s in specials]
    b[:k] = [s[1] for s in specials]
    return a, b


def _specials(fmt: str) -> list[tuple[int, int]]:
    if fmt == "float32":
        nan, nan2, inf, neg0, one, tiny = (
            0x7FC00000,
            0x7FC00001,
            0x7F800000,
            0x80000000,
            0x3F800000,
            0x1,
        )
        big = 0x7F7FFFFF
        return [
            (nan, nan),
            (nan, nan2),
            (nan, one),
            (one, nan),
            (inf, inf),
            (inf, one),
            (0, neg0),
            (neg0, 0),
            (0, tiny),
            (one, inf),
            (big, 0xFF7FFFFF),
        ]
    if fmt == "bfloat16":
        nan, nan2, inf, neg0, one = 0x7FC0, 0x7FC1, 0x7F80, 0x8000, 0x3F80
        return [
            (nan, nan),
            (nan, nan2),
            (nan, one),
            (one, nan),
            (inf, inf),
            (inf, one),
            (0, neg0),
            (neg0, 0),
            (0, 1),
            (one, inf),
            (0x7F7F, 0xFF7F),
        ]
    nan, nan2, inf, neg0, one = 0x7E00, 0x7E01, 0x7C00, 0x8000, 0x3C00
    return [
        (nan, nan),
        (nan, nan2),
        (nan, one),
        (one, nan),
        (inf, inf),
        (inf, one),
        (0, neg0),
        (neg0, 0),
        (0, 1),
        (one, inf),
        (0x7BFF, 0xFBFF),
    ]


def reference(a: np.ndarray, b: np.ndarray, fmt: str, stored: str) -> dict:
    """Per-element statistics, written from the definitions with whole-array numpy."""
    fa, fb = decode(a, fmt), decode(b, fmt)
    changed = a != b
    with np.errstate(all="ignore"):
        d32 = np.abs(fb - fa)  # float32 arithmetic
    d = d32.astype(np.float64)
    fin = np.isfinite(d) & changed
    st = FLOAT_FORMATS[stored]
    with np.errstate(all="ignore"):
        mag = np.abs(fa.astype(np.float64))
        e = np.floor(np.log2(np.where(mag > 0, mag, 1.0)))
        e = np.where((mag > 0) & np.isfinite(mag), np.maximum(e, st.emin), st.emin)
        ratio = np.floor(np.log2(np.where(d > 0, d, 1.0))) - (e - st.mant_bits)
    sel = fin & (d > 0)
    bins = np.clip(ratio[sel].astype(np.int64) - ULP_LOG2_MIN, 0, ULP_BINS - 1)
    fmt_c = FLOAT_FORMATS[fmt]
    with np.errstate(all="ignore"):
        mag_c = np.abs(fa.astype(np.float64))
        field = np.where(
            np.isnan(mag_c) | np.isinf(mag_c),
            fmt_c.exp_max_field,
            np.where(
                mag_c >= 2.0**fmt_c.emin,
                np.floor(np.log2(np.where(mag_c > 0, mag_c, 1))) + fmt_c.bias,
                0,
            ),
        ).astype(np.int64)
    with np.errstate(all="ignore"):
        ref = np.maximum(np.abs(fa), np.abs(fb)).astype(np.float64)
    base_fin = np.isfinite(fa)
    return {
        "numel": a.size,
        "n_changed": int(changed.sum()),
        "n_le_tol": [int((fin & (d <= t)).sum()) for t in TOLS],
        "n_rel_unchanged": int((fin & (d <= ETA * ref)).sum()),
        "n_zero_delta": int((fin & (d == 0)).sum()),
        "n_nonfinite_delta": int((changed & ~np.isfinite(d)).sum()),
        "n_nan_base": int(np.isnan(fa).sum()),
        "n_inf_base": int(np.isinf(fa).sum()),
        "n_nan_tuned": int(np.isnan(fb).sum()),
        "n_inf_tuned": int(np.isinf(fb).sum()),
        "max_abs_delta": float(d[fin].max()) if fin.any() else 0.0,
        "sum_abs_delta": float(d[fin].sum()),
        "sum_sq_delta": float((d[fin] ** 2).sum()),
        "sum_sq_base": float((fa[base_fin].astype(np.float64) ** 2).sum()),
        "ulp_hist": np.bincount(bins, minlength=ULP_BINS),
        "binade_total": np.bincount(field, minlength=256),
        "binade_changed": np.bincount(field[changed], minlength=256),
        "mask": {  # a non-finite Δ is a change under every rule
            "bitwise": changed,
            "abs": changed & ~(fin & (d <= 1e-5)),
            "rel": changed & ~(fin & (d <= ETA * ref)),
        },
    }


def assert_stats_equal(s, ref: dict) -> None:
    for f in (
        "numel",
        "n_changed",
        "n_rel_unchanged",
        "n_zero_delta",
        "n_nonfinite_delta",
        "n_nan_base",
        "n_inf_base",
        "n_nan_tuned",
        "n_inf_tuned",
    ):
        assert getattr(s, f) == ref[f], f
    assert list(s.n_le_tol) == ref["n_le_tol"]
    for f in ("ulp_hist", "binade_total", "binade_changed"):
        np.testing.assert_array_equal(getattr(s, f), ref[f], err_msg=f)
    for f in ("max_abs_delta", "sum_abs_delta", "sum_sq_delta", "sum_sq_base"):
        assert math.isclose(getattr(s, f), ref[f], rel_tol=1e-9, abs_tol=1e-300), f


@pytest.mark.parametrize("fmt", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("n", [1, 7, 4096 + 3, 300_001])
def test_kernel_matches_reference(fmt: str, n: int) -> None:
    a, b = make_words(fmt, n, seed=n)
    spec = ChunkSpec(fmt, fmt, TOLS, ETA)
    s = CpuKernel().diff_chunk(a, b, spec)
    assert_stats_equal(s, reference(a, b, fmt, fmt))


@pytest.mark.parametrize("fmt", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("rule", [MaskRule("bitwise"), MaskRule("abs", 1e-5), MaskRule("rel", ETA)])
def test_packed_mask_matches_reference(fmt: str, rule: MaskRule) -> None:
    a, b = make_words(fmt, 100_003, seed=1)
    packed = np.zeros((a.size + 7) // 8, np.uint8)
    CpuKernel().diff_chunk(a, b, ChunkSpec(fmt, fmt, TOLS, ETA, rule), packed)
    expected = reference(a, b, fmt, fmt)["mask"][rule.kind]
    np.testing.assert_array_equal(packed, np.packbits(expected, bitorder="little"))


def test_ulp_unit_is_the_stored_dtype() -> None:
    """bf16 values compared as float32 keep bf16 ULPs: a one-ULP change lands in bin 0."""
    rng = np.random.default_rng(0)
    a16 = (rng.standard_normal(10_000).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    b16 = a16 + np.uint16(1)
    a32, b32 = a16.astype(np.uint32) << 16, b16.astype(np.uint32) << 16
    s32 = CpuKernel().diff_chunk(a32, b32, ChunkSpec("float32", "bfloat16", TOLS, ETA))
    s16 = CpuKernel().diff_chunk(a16, b16, ChunkSpec("bfloat16", "bfloat16", TOLS, ETA))
    np.testing.assert_array_equal(s32.ulp_hist, s16.ulp_hist)
    assert s16.ulp_hist[-ULP_LOG2_MIN] == a16.size  # |Δ|/ULP in [1, 2)
    assert_stats_equal(s32, reference(a32, b32, "float32", "bfloat16"))


@pytest.mark.parametrize("fmt", ["bfloat16", "float32"])
def test_chunking_and_threads_do_not_change_results(fmt: str) -> None:
    a, b = make_words(fmt, 2_500_000, seed=3)
    spec = ChunkSpec(fmt, fmt, TOLS, ETA)
    whole = CpuKernel(threads=2).diff_chunk(a, b, spec)
    one_thread = CpuKernel(threads=1).diff_chunk(a, b, spec)
    assert whole.to_dict() == one_thread.to_dict()  # fixed partitions: identical, floats included
    parts = [
        CpuKernel().diff_chunk(a[s : s + 999_992], b[s : s + 999_992], spec)
        for s in range(0, a.size, 999_992)
    ]
    merged = parts[0]
    for p in parts[1:]:
        merged = merged.merge(p)
    d1, d2 = whole.to_dict(), merged.to_dict()
    for k in ("sum_abs_delta", "sum_sq_delta", "sum_sq_base"):
        assert math.isclose(d1.pop(k), d2.pop(k), rel_tol=1e-12)
    assert d1 == d2


def test_bf16_relative_probe_is_bitwise() -> None:
    """Path Not Taken, Corollary E.4: for finite non-zero bf16 values η = 1e-3 < 2^-9 is bitwise."""
    a, b = make_words("bfloat16", 200_000, seed=5)
    fa, fb = decode(a, "bfloat16"), decode(b, "bfloat16")
    ok = np.isfinite(fa) & np.isfinite(fb) & (fa != 0) & (fb != 0)
    s = CpuKernel().diff_chunk(a[ok], b[ok], ChunkSpec("bfloat16", "bfloat16", TOLS, ETA))
    assert s.n_changed > 0 and s.n_rel_unchanged == 0


def test_count_changed_any_width() -> None:
    rng = np.random.default_rng(0)
    for dt in (np.uint8, np.uint16, np.uint32, np.uint64):
        a = rng.integers(0, 50, 10_001).astype(dt)
        b = a.copy()
        b[::7] += 1
        assert CpuKernel().count_changed(a, b) == int((a != b).sum())


def _n_le(a: np.ndarray, b: np.ndarray, fmt: str, tols: np.ndarray) -> list[int]:
    """Per-tolerance counts of changed, finite-Δ elements with |Δ| <= tol (naive)."""
    with np.errstate(all="ignore"):
        d = np.abs(decode(b, fmt) - decode(a, fmt)).astype(np.float64)
    fin = (a != b) & np.isfinite(d)
    return [int((fin & (d <= t)).sum()) for t in np.sort(tols)]


def test_tolerance_table_agrees_with_a_search() -> None:
    """Every table entry that is not -1 is the number of tolerances below every float32 of its
    range; -1 marks only ranges holding a tolerance."""
    tols = (0.0, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4)
    table = tolerance_table(tols)
    rng = np.random.default_rng(0)
    d = np.abs(rng.standard_normal(200_000) * 10.0 ** rng.integers(-12, 2, 200_000))
    d = np.concatenate([d, np.array(tols[1:]), np.nextafter(np.array(tols[1:]), 1)])
    d32 = d.astype(np.float32)
    j = table[d32.view(np.uint32) >> 16]
    exact = np.searchsorted(np.array(tols), d32.astype(np.float64), side="left")
    known = j >= 0
    np.testing.assert_array_equal(j[known], exact[known])
    # among finite |Δ| (indices below +Inf's), only ranges that hold a tolerance fall back
    assert (table[:0x7F80] < 0).sum() == len(tols)


@pytest.mark.parametrize("fmt", ["bfloat16", "float32"])
def test_unusual_grids_match_the_naive_count(fmt: str) -> None:
    """Grids the table cannot serve (>= 127 tolerances; many inside one 16-bit range of |Δ|),
    unsorted ones and duplicates all count like the naive reference."""
    a, b = make_words(fmt, 50_003, seed=7)
    with np.errstate(all="ignore"):
        d = np.abs(decode(b, fmt) - decode(a, fmt)).astype(np.float64)
    d = np.unique(d[np.isfinite(d) & (d > 0)])
    crowded = np.concatenate([d[:20], np.nextafter(d[:20], 0), np.nextafter(d[:20], 1)])
    grids = {
        "dense": np.geomspace(1e-12, 1.0, 200),
        "crowded": crowded,
        "unsorted with duplicates": np.random.default_rng(1).permutation(
            np.concatenate([TOLS, TOLS[:3], d[:5]])
        ),
    }
    for name, tols in grids.items():
        s = CpuKernel().diff_chunk(a, b, ChunkSpec(fmt, fmt, tols, ETA))
        assert list(s.n_le_tol) == _n_le(a, b, fmt, tols), name


def test_compiled_kernel_shares_the_histogram_layout() -> None:
    """diffcore.h repeats the layout constants of stats.py; they must agree."""
    from rlsparse_lib.diff.kernels import _diffcore
    from rlsparse_lib.diff.stats import BINADE_BINS

    assert (_diffcore.ULP_LOG2_MIN, _diffcore.ULP_BINS, _diffcore.BINADE_BINS) == (
        ULP_LOG2_MIN,
        ULP_BINS,
        BINADE_BINS,
    )


def test_ulps_by_exponent_field_where_the_tables_allow() -> None:
    """bfloat16 ULPs depend on a word's exponent field alone in every stored format but float64
    (whose zero has another ULP than the bfloat16 subnormals); never for float16 words."""
    for stored in ("bfloat16", "float16", "float32", "float64"):
        assert ulp_by_exponent_field("bfloat16", stored) == (stored != "float64")
        assert not ulp_by_exponent_field("float16", stored)


@pytest.mark.parametrize("rule", [None, MaskRule("abs", 1e-5), MaskRule("rel", ETA)])
def test_bf16_words_decoded_from_their_bits_equal_the_tables(
    monkeypatch: pytest.MonkeyPatch, rule: MaskRule | None
) -> None:
    """The kernel decodes changed bfloat16 words from their bits and reads their ULP by exponent
    field: the stats (float sums included) and the mask are those of the table lookups, and
    match the reference."""
    a, b = make_words("bfloat16", 300_001, seed=7)
    spec = ChunkSpec("bfloat16", "bfloat16", TOLS, ETA, rule or MaskRule("bitwise"))
    masks = [np.zeros((a.size + 7) // 8, np.uint8) for _ in range(2)]
    by_bits = CpuKernel().diff_chunk(a, b, spec, masks[0] if rule else None)
    monkeypatch.setattr(cpu, "ulp_by_exponent_field", lambda compare, stored: False)
    by_tables = CpuKernel().diff_chunk(a, b, spec, masks[1] if rule else None)
    assert by_bits.to_dict() == by_tables.to_dict()
    np.testing.assert_array_equal(masks[0], masks[1])
    assert_stats_equal(by_bits, reference(a, b, "bfloat16", "bfloat16"))
