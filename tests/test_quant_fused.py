"""The fused quantized diff (``rls_qdiff``: codes and scales in, no decoded buffer) equals decoding
both sides to bfloat16 and running the ordinary bfloat16 diff kernel, bit for bit: every count,
histogram, float sum, mask bit and raw-code view, for FP8 block / channel / tensor scales and
MXFP4, several partitions per chunk, one and two threads, every mask rule."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from rlsparse_lib.diff.kernels.cpu import CpuKernel
from rlsparse_lib.diff.kernels.dequant import CodeSource, CpuDecoder, DequantSource, quant_step
from rlsparse_lib.diff.kernels.protocol import ChunkSpec
from rlsparse_lib.diff.stats import DiffStats
from rlsparse_lib.io.maskfile import packed_size
from rlsparse_lib.io.quant import QuantTensor
from rlsparse_lib.io.tensor_info import TensorInfo
from rlsparse_lib.rules import MaskRule

TOLS = np.array([0.0, 1e-8, 1e-6, 1e-5, 1e-4, 1e-2])
RULES = (MaskRule("bitwise"), MaskRule("abs", 1e-5), MaskRule("rel", 1e-2))


class _Reader:
    """In-memory stand-in for a TensorReader: flat unsigned words of named arrays."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        words = {1: np.uint8, 2: np.uint16, 4: np.uint32}
        self.arrays = {k: v.reshape(-1).view(words[v.itemsize]) for k, v in arrays.items()}

    def words(self, name: str, start: int, stop: int) -> np.ndarray:
        return self.arrays[name][start:stop]

    def prefetch(self, name: str, start: int, stop: int) -> None:
        pass

    def release(self, name: str, start: int, stop: int) -> None:
        pass


def _fp8_pair(
    scheme: str, seed: int, factor: float = 2.0, width: int = 128
) -> tuple[QuantTensor, dict, dict]:
    """A [3, 260, 400] FP8 pair (partial edge blocks; > 1 partition per chunk): 25 % of the codes
    redrawn, special codes on both sides, some scales changed (some by less than bf16 resolves,
    so most equal codes keep equal values), others doubled; one tensor scale times ``factor``;
    FP8 blocks ``width`` columns wide."""
    rng = np.random.default_rng(seed)
    lead, r, c = 3, 260, 400
    block: tuple[int, int] | None
    if scheme == "fp8_block":
        block, sshape = (128, width), (lead, 3, -(-c // width))
    elif scheme == "ct_fp8_channel":
        block, sshape = (1, c), (lead, r, 1)
    else:
        block, sshape = None, (1,)
    codes = rng.integers(0, 256, (lead, r, c), dtype=np.uint8)
    special = np.array([0x00, 0x80, 0x01, 0x81, 0x07, 0x7E, 0xFE, 0x7F, 0xFF], np.uint8)
    codes.reshape(-1)[rng.integers(0, codes.size, 2000)] = rng.choice(special, 2000)
    tuned = codes.copy()
    flat = tuned.reshape(-1)
    idx = rng.random(flat.size) < 0.25
    flat[idx] = rng.integers(0, 256, int(idx.sum()), dtype=np.uint8)
    flat[rng.integers(0, flat.size, 500)] = rng.choice(special, 500)
    scales = (rng.random(sshape) * 1e-3 + 1e-4).astype(np.float32)
    scales.reshape(-1)[:1] = 3e-41  # subnormal float32 scale: products flush toward zero
    tscales = scales.copy()
    ts = tscales.reshape(-1)
    if ts.size > 1:
        ts[1::7] *= np.float32(2.0)
        ts[3::11] = np.nextafter(ts[3::11], np.float32(1))  # one float32 ULP: values mostly equal
        ts[5::13] *= np.float32(1 + 2**-12)  # below bf16's resolution: a few codes' values move
    else:
        ts[0] *= np.float32(factor)
    name, sname = "w", "w_scale" if scheme.startswith("ct") else "w_scale_inv"
    info = TensorInfo(name, "float8_e4m3fn", (lead, r, c), Path("x"))
    sinfo = TensorInfo(sname, "float32", sshape, Path("x"))
    qt = QuantTensor(name, scheme, info, sinfo, (lead, r, c), block)
    return qt, {name: codes, sname: scales}, {name: tuned, sname: tscales}


def _mx_pair(seed: int) -> tuple[QuantTensor, dict, dict]:
    """A [4, 100, 24 * 32] MXFP4 pair: 20 % of the bytes changed in a nibble or both, scales
    changed in some groups, E8M0 0, 254 and 255 (NaN) on both sides."""
    rng = np.random.default_rng(seed)
    shape = (4, 100, 24)
    blocks = rng.integers(0, 256, (*shape, 16), dtype=np.uint8)
    scales = rng.integers(110, 135, shape, dtype=np.uint8)
    scales.reshape(-1)[:3] = (255, 0, 254)
    tb, ts = blocks.copy(), scales.copy()
    flat = tb.reshape(-1)
    idx = rng.random(flat.size) < 0.2
    flat[idx] ^= rng.choice(np.array([0x01, 0x30, 0x88, 0xFF], np.uint8), int(idx.sum()))
    s = ts.reshape(-1)
    s[5::13] += 1
    s[7] = 255
    bi = TensorInfo("e_blocks", "uint8", (*shape, 16), Path("x"))
    si = TensorInfo("e_scales", "uint8", shape, Path("x"))
    qt = QuantTensor("e", "mxfp4", bi, si, (4, 100, 24 * 32), (1, 32))
    return qt, {"e_blocks": blocks, "e_scales": scales}, {"e_blocks": tb, "e_scales": ts}


def _same(x: DiffStats, y: DiffStats) -> None:
    for f in dataclasses.fields(DiffStats):
        a, b = getattr(x, f.name), getattr(y, f.name)
        if isinstance(a, np.ndarray):
            assert np.array_equal(a, b), f.name
        else:
            assert a == b, (f.name, a, b)


@pytest.mark.parametrize(
    "make",
    [
        lambda: _fp8_pair("fp8_block", 0),
        lambda: _fp8_pair("fp8_block", 5, width=96),
        lambda: _fp8_pair("ct_fp8_channel", 1),
        lambda: _fp8_pair("ct_fp8_tensor", 2),
        lambda: _fp8_pair("ct_fp8_tensor", 2, factor=1.0),
        lambda: _mx_pair(3),
    ],
    ids=["fp8_block", "fp8_block_96", "ct_channel", "ct_tensor", "ct_tensor_same_scale", "mxfp4"],
)
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_equals_decode_then_diff(make, threads: int) -> None:
    qt, base, tuned = make()
    kernel = CpuKernel(threads=threads)
    ra, rb = _Reader(base), _Reader(tuned)
    fa, fb = CodeSource(ra, qt), CodeSource(rb, qt)
    da = DequantSource(ra, qt, CpuDecoder(threads))
    db = DequantSource(rb, qt, CpuDecoder(threads))
    step = quant_step(300_000, qt, qt)  # one chunk of several partitions, then a shorter one
    assert step < qt.numel
    tot_fused, tot_ref = np.zeros(2, np.int64), np.zeros(2, np.int64)
    n_changed = n_scale_only = 0
    for start in range(0, qt.numel, step):
        stop = min(qt.numel, start + step)
        wa, wb = da.words(qt.name, start, stop), db.words(qt.name, start, stop)
        raw, so = da.decoder.quant_counts(da.codes, db.codes, wa, wb, qt.scheme == "mxfp4")
        counts = np.array([raw, so], np.int64)
        ca, cb = fa.words(qt.name, start, stop), fb.words(qt.name, start, stop)
        for rule in RULES:
            spec = ChunkSpec("bfloat16", "bfloat16", TOLS, 1e-3, rule)
            m_ref = np.zeros(packed_size(stop - start), np.uint8)
            m_fused = np.zeros_like(m_ref)
            ref = kernel.diff_chunk(wa, wb, spec, m_ref)
            got_counts = np.zeros(2, np.int64)
            got = kernel.diff_codes(fa, fb, ca, cb, spec, m_fused, got_counts)
            _same(got, ref)
            assert np.array_equal(m_fused, m_ref), rule
            assert np.array_equal(got_counts, counts)
        no_mask = kernel.diff_codes(
            fa, fb, ca, cb, ChunkSpec("bfloat16", "bfloat16", TOLS, 1e-3), None, tot_fused
        )
        _same(no_mask, ref)
        for ulp in ("float16", "float32"):  # the ULP unit of another stored dtype
            spec = ChunkSpec("bfloat16", ulp, TOLS, 1e-3)
            _same(kernel.diff_codes(fa, fb, ca, cb, spec), kernel.diff_chunk(wa, wb, spec))
        tot_ref += counts
        n_changed += ref.n_changed
        n_scale_only += int(counts[1])
        fa.release(qt.name, start, stop)
        fb.release(qt.name, start, stop)
    assert np.array_equal(tot_fused, tot_ref)
    # the pair exercises every path: changed codes, values changed through a scale only, codes
    # changed with equal values (NaN codes, products rounding alike)
    same_scales = all(np.array_equal(base[k], tuned[k]) for k in base if k != qt.codes.name)
    assert n_changed > 0 and (n_scale_only > 0) != same_scales
    assert tot_ref[0] > n_changed - n_scale_only


def test_fused_diff_refuses_other_compare_dtypes() -> None:
    qt, base, tuned = _mx_pair(4)
    fa, fb = CodeSource(_Reader(base), qt), CodeSource(_Reader(tuned), qt)
    ca, cb = fa.words(qt.name, 0, 1024), fb.words(qt.name, 0, 1024)
    with pytest.raises(ValueError, match="bfloat16"):
        CpuKernel().diff_codes(fa, fb, ca, cb, ChunkSpec("float16", "bfloat16", TOLS, 1e-3))
