"""Dequantization in the Triton kernel (issue 12 item 6) against the compiled CPU kernel, bit for
bit over every code and a range of scales, and a whole quantized diff through the GPU kernel.

Without CUDA the Triton code runs through its interpreter (``TRITON_INTERPRET=1``, set before
triton is imported), as in ``tests/test_gpu_kernel.py``.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():  # must precede the first import of triton
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest

from rlsparse_lib.diff.config import DiffConfig
from rlsparse_lib.diff.engine import diff_pairs, unit_executor
from rlsparse_lib.diff.kernels.cpu import CpuKernel
from rlsparse_lib.diff.kernels.cuda import CudaKernel
from rlsparse_lib.diff.kernels.dequant import CpuDecoder
from rlsparse_lib.diff.kernels.triton_diff import Tuning
from rlsparse_lib.io.checkpoint import open_checkpoint
from rlsparse_lib.io.pairing import pair_checkpoints

from .ckpt_factory import save_placed
from .test_quant_mxfp4 import CONFIG, _states

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
pytestmark = pytest.mark.skipif(
    not (INTERPRET or torch.cuda.is_available()), reason="needs CUDA or TRITON_INTERPRET"
)


@pytest.fixture(scope="module")
def kernel() -> CudaKernel:
    return CudaKernel("cpu" if INTERPRET else "cuda", tuning=Tuning(rows=1024))


def _host(x) -> np.ndarray:
    return x.cpu().numpy().view(np.uint16)


def test_fp8_decode_equals_the_c_kernel_for_every_code(kernel: CudaKernel) -> None:
    scales = np.array(
        [1.0, 1e-3, 2.0**-130, 1e-45, 0.0, -0.75, 1e30, 3.0e38, np.inf, np.nan, 448.0, 2.0**-7],
        np.float32,
    )
    ncols = 256 * 3  # every code in three scale columns of 256
    codes = np.tile(np.arange(256, dtype=np.uint8), 3 * scales.size)
    srow = np.arange(scales.size, dtype=np.int64)
    with np.errstate(over="ignore", invalid="ignore"):  # inf and NaN scales on purpose
        grid = np.repeat(scales, 3) * np.tile(np.array([1, -2, 0.5], np.float32), scales.size)
    cpu = CpuDecoder().dequant_fp8(codes, ncols, grid.astype(np.float32), srow, 3, 256)
    dev = kernel.dequant_fp8(codes, ncols, grid.astype(np.float32), srow, 3, 256)
    assert np.array_equal(_host(dev), cpu)
    # and both equal torch's float8 -> float32 -> bfloat16 (NaN -> 0xFFFF on both)
    ref = torch.from_numpy(codes).view(torch.float8_e4m3fn).float().reshape(-1, 256)
    ref = (ref * torch.from_numpy(grid.astype(np.float32)).reshape(-1, 1)).to(torch.bfloat16)
    ref_words = ref.reshape(-1).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(ref_words, cpu)


def test_mxfp4_decode_equals_the_c_kernel_for_every_byte_and_scale(kernel: CudaKernel) -> None:
    blocks = np.tile(np.arange(256, dtype=np.uint8), 256)  # 16 groups per scale byte
    scales = np.repeat(np.arange(256, dtype=np.uint8), 16)
    cpu = CpuDecoder().dequant_mxfp4(blocks, scales)
    assert np.array_equal(_host(kernel.dequant_mxfp4(blocks, scales)), cpu)
    rng = np.random.default_rng(0)
    ca, cb = blocks, blocks ^ rng.integers(0, 2, blocks.size, dtype=np.uint8)
    wa, wb = cpu, CpuDecoder().dequant_mxfp4(cb, np.roll(scales, 1))
    assert kernel.quant_counts(ca, cb, wa, wb, True) == CpuDecoder().quant_counts(
        ca, cb, wa, wb, True
    )


def test_a_quantized_diff_through_the_gpu_kernel_equals_the_cpu_kernel(
    kernel: CudaKernel, tmp_path
) -> None:
    base, tuned = _states()
    b = open_checkpoint(save_placed(tmp_path / "b", base, {}, CONFIG))
    t = open_checkpoint(save_placed(tmp_path / "t", tuned, {}, CONFIG))
    plan = pair_checkpoints(b, t, dequantize=True)
    config = DiffConfig(chunk_elems=1024)
    with b.reader() as rb, t.reader() as rt:
        gpu = unit_executor(kernel)(plan.pairs, rb, rt, kernel, config)
        cpu = diff_pairs(plan.pairs, rb, rt, CpuKernel(), config)
    assert list(gpu) == list(cpu)
    for name, res in cpu.items():
        g = gpu[name].to_dict()
        want = res.to_dict()
        for key in ("n_changed", "numel", "quant"):
            assert g.get(key) == want.get(key), (name, key)
        for key in ("n_le_tol", "n_rel_unchanged", "n_nan_base", "ulp_hist", "binade_changed"):
            assert g["stats"][key] == want["stats"][key], (name, key)
