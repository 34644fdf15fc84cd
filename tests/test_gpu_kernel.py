"""The Triton diff kernel against the CPU kernel (the specification): counts, histograms and masks
bit for bit, float sums within 1e-6.

Without CUDA the kernel runs through Triton's interpreter (``TRITON_INTERPRET=1``, set here before
triton is imported) on CPU tensors; on a CUDA machine the same tests run natively.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import torch

if not torch.cuda.is_available():  # must precede the first import of triton
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest

from rlsparse_lib.diff.kernels.cpu import CpuKernel
from rlsparse_lib.diff.kernels.cuda import CudaKernel
from rlsparse_lib.diff.kernels.protocol import ChunkSpec
from rlsparse_lib.diff.kernels.triton_diff import Tuning, floor_f32, launch_diff
from rlsparse_lib.diff.stats import ULP_LOG2_MIN
from rlsparse_lib.io.synthetic import bf16_words_to_float, to_bf16_words
from rlsparse_lib.rules import MaskRule

from .test_diff_kernel import ETA, TOLS, make_words

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
#: the CPU device runs the interpreter; CUDA runs natively (never both in one process)
DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(not INTERPRET, reason="TRITON_INTERPRET unset")),
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available() or INTERPRET, reason="needs CUDA"),
        ],
    ),
]
#: many small tiles over several programs (exercises the grid walk), or few large tiles (fast
#: in the interpreter)
SMALL = Tuning(rows=16, programs=3)
MEDIUM = Tuning(rows=128, programs=3)
LARGE = Tuning(rows=1024)
RULES = [MaskRule("bitwise"), MaskRule("abs", 1e-5), MaskRule("rel", ETA)]

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy inf-inf in interpreter


def assert_same(gpu, cpu) -> None:
    """Integer fields and histograms identical; float sums within 1e-6 relative."""
    g, c = gpu.to_dict(), cpu.to_dict()
    for key in ("max_abs_delta", "sum_abs_delta", "sum_sq_delta", "sum_sq_base"):
        assert math.isclose(g.pop(key), c.pop(key), rel_tol=1e-6, abs_tol=0.0), key
    assert g == c


def run_both(device, a, b, spec, tuning=MEDIUM):
    """Diff (a, b) on both kernels, with a mask, and compare stats and mask bytes."""
    m_cpu = np.zeros((a.size + 7) // 8, np.uint8)
    m_gpu = np.full_like(m_cpu, 0xA5)  # poisoned: every byte must be written
    cpu = CpuKernel().diff_chunk(a, b, spec, m_cpu)
    gpu = CudaKernel(device, tuning).diff_chunk(a, b, spec, m_gpu)
    assert_same(gpu, cpu)
    np.testing.assert_array_equal(m_gpu, m_cpu)
    return gpu


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("n", [1, 7, 8, 1029, 12_345])
@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.kind)
def test_matches_cpu_kernel(device: str, fmt: str, n: int, rule: MaskRule) -> None:
    """Random words with NaN, ±0, Inf, one-ULP moves; sizes not multiples of the tile."""
    a, b = make_words(fmt, n, seed=n)
    s = run_both(device, a, b, ChunkSpec(fmt, fmt, TOLS, ETA, rule), SMALL if n < 2000 else LARGE)
    assert s.numel == n


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", ["bfloat16", "float16", "float32"])
def test_large_chunk_default_grid(device: str, fmt: str) -> None:
    a, b = make_words(fmt, 100_003, seed=7)
    tuning = Tuning() if device == "cuda" else LARGE
    s = run_both(device, a, b, ChunkSpec(fmt, fmt, TOLS, ETA, MaskRule("abs", 1e-6)), tuning)
    assert 0 < s.n_changed < s.numel and s.n_nonfinite_delta > 0


def _tile_spreads(keys: np.ndarray, keep: np.ndarray, tile: int) -> np.ndarray:
    """max - min of the kept keys in each tile (-1 for tiles with none)."""
    out = []
    for s in range(0, keys.size, tile):
        k = keys[s : s + tile][keep[s : s + tile]]
        out.append(int(k.max() - k.min()) if k.size else -1)
    return np.array(out)


@pytest.mark.parametrize("device", DEVICES)
def test_histogram_window_and_fallback(device: str) -> None:
    """Narrow tiles take the 32-bin window, wide ones the full histogram; both are exact."""
    rng = np.random.default_rng(11)
    n = 4 * 8192
    narrow = to_bf16_words(0.02 * rng.standard_normal(n).astype(np.float32))
    moved = narrow + np.where(rng.random(n) < 0.3, 1, 0).astype(np.uint16)  # one-ULP moves
    wide = rng.integers(0, 0x7F00, n).astype(np.uint16)  # finite, exponents all over
    a = np.concatenate([narrow, wide])
    b = np.concatenate([moved, rng.integers(0, 0x7F00, n).astype(np.uint16)])
    fields = (a >> 7) & 0xFF
    spreads = _tile_spreads(fields.astype(np.int64), np.ones(a.size, bool), 8192)
    assert (spreads[:4] < 32).all() and (spreads[4:] >= 32).all()  # both binade paths
    fa, fb = bf16_words_to_float(a).astype(np.float64), bf16_words_to_float(b).astype(np.float64)
    d = np.abs(fb - fa)
    with np.errstate(divide="ignore"):
        ulp = np.maximum(np.frexp(fa)[1] - 1, -126) - 7
        k = np.clip(np.frexp(d)[1] - 1 - ulp - ULP_LOG2_MIN, 0, 95)
    spreads = _tile_spreads(k, d > 0, 8192)
    assert (spreads[:4] < 32).all() and (spreads[4:] >= 32).all()  # both ULP paths
    s = run_both(device, a, b, ChunkSpec("bfloat16", "bfloat16", TOLS, ETA), LARGE)
    assert s.ulp_hist[-ULP_LOG2_MIN] >= (moved != narrow).sum()  # one-ULP moves: ratio in [1, 2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("compare", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("stored", ["bfloat16", "float16", "float32"])
def test_ulp_unit_is_the_stored_dtype(device: str, compare: str, stored: str) -> None:
    a, b = make_words(compare, 3001, seed=3)
    run_both(device, a, b, ChunkSpec(compare, stored, TOLS, ETA))


@pytest.mark.parametrize("device", DEVICES)
def test_one_ulp_lands_in_bin_zero(device: str) -> None:
    """bf16 values compared as float32 keep bf16 ULPs (independent of the CPU kernel)."""
    rng = np.random.default_rng(0)
    a16 = to_bf16_words(rng.standard_normal(5000).astype(np.float32))
    a16 = a16[np.isfinite(bf16_words_to_float(a16)) & ((a16 & 0x7F80) != 0)]  # normal numbers
    b16 = a16 + np.uint16(1)
    a32, b32 = a16.astype(np.uint32) << 16, b16.astype(np.uint32) << 16
    k = CudaKernel(device, MEDIUM)
    s32 = k.diff_chunk(a32, b32, ChunkSpec("float32", "bfloat16", TOLS, ETA))
    s16 = k.diff_chunk(a16, b16, ChunkSpec("bfloat16", "bfloat16", TOLS, ETA))
    assert s16.ulp_hist[-ULP_LOG2_MIN] == a16.size == s16.ulp_hist.sum()
    np.testing.assert_array_equal(s32.ulp_hist, s16.ulp_hist)


@pytest.mark.parametrize("device", DEVICES)
def test_tolerance_boundaries_and_odd_grids(device: str) -> None:
    """Tolerances equal to, just above and just below actual |Δ| (float64 neighbours), unsorted
    and duplicated grids, subnormal and huge values, and an empty grid."""
    a, b = make_words("float32", 4000, seed=5)
    fa, fb = a.view(np.float32), b.view(np.float32)
    with np.errstate(all="ignore"):
        d = np.abs(fb - fa).astype(np.float64)
    d = d[np.isfinite(d) & (d > 0)][:8]
    grid = np.concatenate(
        [d, np.nextafter(d, np.inf), np.nextafter(d, -np.inf), [1e-300, 5e-324, 1e300, 0.0, 1e-5]]
    )
    rng = np.random.default_rng(1)
    grid = rng.permutation(np.concatenate([grid, grid[:3]]))
    for tols in (grid, np.zeros(0)):
        for rule in (MaskRule("abs", float(d[0])), MaskRule("abs", float(np.nextafter(d[1], 0)))):
            run_both(device, a, b, ChunkSpec("float32", "float32", tols, ETA, rule))


@pytest.mark.parametrize("device", DEVICES)
def test_relative_probe_is_float64(device: str) -> None:
    """η·max(|θ0|, |θ1|) just below |Δ| in float64 but equal to it once rounded to float32: the
    probe and the ``rel`` mask rule must compare in float64 (hand-computed expectations)."""
    x, y = np.float32(1.0), np.nextafter(np.float32(1.0), np.float32(2.0))
    d, ref = float(y - x), float(y)
    eta_hi = d / ref
    while eta_hi * ref < d:
        eta_hi = float(np.nextafter(eta_hi, np.inf))
    eta_lo = eta_hi
    while eta_lo * ref >= d:
        eta_lo = float(np.nextafter(eta_lo, 0.0))
    assert float(np.float32(eta_lo * ref)) == d  # a float32 comparison could not tell them apart
    a = np.full(21, x, np.float32).view(np.uint32)
    b = np.full(21, y, np.float32).view(np.uint32)
    b[-1] = a[-1]
    for eta, expected in ((eta_lo, 0), (eta_hi, 20)):
        spec = ChunkSpec("float32", "float32", TOLS, eta, MaskRule("rel", eta))
        s = run_both(device, a, b, spec)
        assert (s.n_changed, s.n_rel_unchanged) == (20, expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", ["bfloat16", "float16"])
def test_special_values_explicit(device: str, fmt: str) -> None:
    """Hand-computed counts: ±0, NaN payloads, Inf, subnormals (not derived from the CPU kernel)."""
    one, inf, nan = (0x3F80, 0x7F80, 0x7FC0) if fmt == "bfloat16" else (0x3C00, 0x7C00, 0x7E00)
    pairs = [
        (0x0000, 0x8000),  # +0 -> -0: changed, Δ == 0
        (nan, nan + 1),  # NaN payload: changed, non-finite Δ
        (nan, nan),  # same NaN bits: unchanged
        (inf, inf),  # unchanged
        (one, inf),  # non-finite Δ
        (0x0000, 0x0001),  # smallest subnormal: tiny finite Δ
        (one, one + 1),  # one ULP
        (one, one),
    ]
    a = np.array([p[0] for p in pairs], np.uint16)
    b = np.array([p[1] for p in pairs], np.uint16)
    s = run_both(device, a, b, ChunkSpec(fmt, fmt, np.array([0.0, 1.0]), ETA))
    assert (s.n_changed, s.n_zero_delta, s.n_nonfinite_delta) == (5, 1, 2)
    assert (s.n_nan_base, s.n_inf_base, s.n_nan_tuned, s.n_inf_tuned) == (2, 1, 2, 2)
    assert list(s.n_le_tol) == [1, 3]  # ±0 within 0; subnormal and one ULP within 1.0
    assert s.ulp_hist.sum() == 2 and s.ulp_hist[-ULP_LOG2_MIN] == 2  # both one ULP


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic_and_chunk_merge(device: str) -> None:
    a, b = make_words("bfloat16", 20_000, seed=9)
    spec = ChunkSpec("bfloat16", "bfloat16", TOLS, ETA)
    k = CudaKernel(device, LARGE)
    first, second = k.diff_chunk(a, b, spec), k.diff_chunk(a, b, spec)
    assert first.to_dict() == second.to_dict()  # floats included
    parts = [k.diff_chunk(a[s : s + 6000], b[s : s + 6000], spec) for s in range(0, a.size, 6000)]
    merged = parts[0]
    for p in parts[1:]:
        merged = merged.merge(p)
    assert_same(merged, first)


@pytest.mark.parametrize("device", DEVICES)
def test_device_tensors_and_mask_tensor(device: str) -> None:
    """Tensors already on the device are used in place; a device mask tensor is filled."""
    a, b = make_words("float16", 5000, seed=4)
    ta = torch.from_numpy(a.view(np.int16)).to(device)
    tb = torch.from_numpy(b.view(np.int16)).to(device)
    mask = torch.full(((a.size + 7) // 8,), 0xFF, dtype=torch.uint8, device=device)
    spec = ChunkSpec("float16", "float16", TOLS, ETA)
    s = launch_diff(ta, tb, spec, mask, MEDIUM).to_stats()
    ref_mask = np.zeros(mask.numel(), np.uint8)
    assert_same(s, CpuKernel().diff_chunk(a, b, spec, ref_mask))
    np.testing.assert_array_equal(mask.cpu().numpy(), ref_mask)


@pytest.mark.parametrize("device", DEVICES)
def test_count_changed_any_width(device: str) -> None:
    rng = np.random.default_rng(0)
    for dt in (np.uint8, np.uint16, np.uint32, np.uint64):
        a = rng.integers(0, 50, 10_001).astype(dt)
        b = a.copy()
        b[::7] += 1
        assert CudaKernel(device).count_changed(a, b) == int((a != b).sum()) > 0


@pytest.mark.parametrize("device", DEVICES)
def test_bad_inputs(device: str) -> None:
    k = CudaKernel(device, SMALL)
    a = np.zeros(16, np.uint16)
    spec = ChunkSpec("bfloat16", "bfloat16", TOLS, ETA)
    with pytest.raises(ValueError, match="sizes differ"):
        k.diff_chunk(a, a[:8], spec)
    with pytest.raises(ValueError, match="2-byte words"):
        k.diff_chunk(a.view(np.uint32), a.view(np.uint32), spec)
    with pytest.raises(ValueError, match="raw integer words"):
        k.words(torch.zeros(4))


def test_floor_f32_is_the_float32_comparison_threshold() -> None:
    """For float32 d and float64 t: d <= t exactly when d <= floor_f32(t)."""
    rng = np.random.default_rng(0)
    t = np.concatenate(
        [
            rng.standard_normal(20_000) * 10.0 ** rng.integers(-40, 39, 20_000),
            [0.0, 5e-324, 1e-45, 1.4e-45, 3.5e38, 3.4028234663852886e38, 1e300, -1e300],
        ]
    )
    f = floor_f32(t)
    assert f.dtype == np.float32 and (f.astype(np.float64) <= t).all()
    d = np.concatenate([f, np.nextafter(f, np.float32(np.inf)), np.nextafter(f, np.float32(0))])
    tt = np.concatenate([t, t, t])
    ff = np.concatenate([f, f, f])
    np.testing.assert_array_equal(d.astype(np.float64) <= tt, d <= ff)


@pytest.mark.parametrize(
    "tuning", [Tuning(), Tuning(window=0, stages=2), Tuning(rows=16, programs=2, window=0)]
)
def test_tunings_agree(tuning: Tuning) -> None:
    """Histogram windows on or off, pipelined loop, tiny tiles: same results (interpreter or GPU)."""
    device = "cuda" if torch.cuda.is_available() and not INTERPRET else "cpu"
    a, b = make_words("bfloat16", 3000, seed=12)
    run_both(device, a, b, ChunkSpec("bfloat16", "bfloat16", TOLS, ETA, RULES[2]), tuning)


COMPILE = """
import re, sys
from rlsparse_lib.diff.kernels.protocol import ChunkSpec
from rlsparse_lib.rules import MaskRule
from rlsparse_lib.diff.kernels.triton_diff import Tuning, compile_for
from rlsparse_lib.diff.config import DEFAULT_TOLERANCES as T
for fmt, rule, mask in (("bfloat16", "bitwise", False), ("float16", "abs", True),
                        ("float32", "rel", True)):
    spec = ChunkSpec(fmt, fmt, T, 1e-3, MaskRule(rule, 1e-5))
    for tuning in (Tuning(), Tuning(window=0, stages=2)):
        ptx = compile_for(spec, mask, tuning).asm["ptx"]
        wide = re.findall(r"ld\\.global[^;]*\\.v4|cp\\.async\\.cg[^;]*, 0x10", ptx)
        assert len(wide) >= 2, (fmt, tuning, len(wide))  # inputs read in 16-byte pieces
print("ok")
"""


def test_compiles_for_hopper_without_a_gpu() -> None:
    """The kernel compiles for sm_90 (Triton's bundled ptxas; no device needed) with vectorized
    loads: catches what the interpreter cannot (typing, layouts, lowering)."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-c", COMPILE], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
