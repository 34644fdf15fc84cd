"""On-device use: when the model lives on the GPU, update statistics and update-rank SVDs run
there and only small results come back (CUDA only; skipped without a GPU).

The in-training sparsity monitor (:class:`rlsparse_lib.training.monitor.SparsityMonitor`) keeps its
reference copies on the parameters' device; ``test_sparsity_monitor_counts_on_the_device`` checks
that on CUDA and compares its counts with a naive count on host copies. The diff kernel's own
on-device use is :meth:`CudaKernel.diff_chunk` on parameters that never leave the device.
"""

from __future__ import annotations

import math
import os

import torch

if not torch.cuda.is_available():  # must precede the first import of triton
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest

from rlsparse_lib.diff.kernels.cpu import CpuKernel
from rlsparse_lib.diff.kernels.cuda import CudaKernel
from rlsparse_lib.diff.kernels.protocol import ChunkSpec
from rlsparse_lib.training.monitor import SparsityMonitor

from .ckpt_factory import TINY, bump_bits, pick, random_state, save_hf
from .test_gpu_kernel import ETA, INTERPRET, TOLS, assert_same

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or INTERPRET, reason="needs CUDA"),
]


def test_optimizer_step_stats_stay_on_device() -> None:
    """Diff every bf16 parameter before/after an AdamW step on the GPU: equal to the CPU
    kernel on the same words, with inputs that are device tensors (no host copy of weights)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.Linear(512, 256))
    model = model.to("cuda", torch.bfloat16)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(
        torch.randn(32, 256, device="cuda", dtype=torch.bfloat16)
    ).float().square().mean().backward()
    opt.step()
    kernel = CudaKernel("cuda")
    spec = ChunkSpec("bfloat16", "bfloat16", TOLS, ETA)
    for p, p0 in zip(model.parameters(), before, strict=True):
        a, b = p0.view(torch.int16).reshape(-1), p.detach().view(torch.int16).reshape(-1)
        assert a.is_cuda and b.is_cuda
        gpu = kernel.diff_chunk(a, b, spec)
        cpu = CpuKernel().diff_chunk(
            a.cpu().numpy().view(np.uint16), b.cpu().numpy().view(np.uint16), spec
        )
        assert_same(gpu, cpu)
        assert gpu.n_changed > 0


def _host_copies(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().cpu().clone() for p in model.parameters()]


def _naive_changed(now: list[torch.Tensor], ref: list[torch.Tensor], bf16: bool) -> int:
    """#weights whose stored words differ (or those of their bf16 cast), counted with numpy."""

    def as_words(t: torch.Tensor) -> np.ndarray:
        if bf16:
            return t.to(torch.bfloat16).view(torch.int16).numpy()
        if t.dtype == torch.float32:
            return t.numpy().view(np.uint32)
        assert t.dtype == torch.bfloat16
        return t.view(torch.int16).numpy()

    return sum(
        int(np.count_nonzero(as_words(a) != as_words(b))) for a, b in zip(now, ref, strict=True)
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sparsity_monitor_counts_on_the_device(dtype: torch.dtype) -> None:
    """SparsityMonitor(every=1) on a CUDA model over AdamW steps: its references stay on the GPU
    and every record equals a naive count on host copies of θ0 and θ_{s-1}, for the stored words
    and (fp32 weights) for the bf16 cast."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64)
    ).to("cuda", dtype)
    mon = SparsityMonitor(every=1)
    mon.attach(model)
    fp32 = dtype == torch.float32
    assert mon.bf16_view == fp32
    assert mon.n_params == sum(p.numel() for p in model.parameters())
    refs = mon._init + mon._prev + (mon._init16 + mon._prev16 if fp32 else [])
    assert mon._init[0].is_cuda and all(t.is_cuda for t in refs)
    theta0 = _host_copies(model)
    prev = theta0
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(32, 64, device="cuda", dtype=dtype)
    for s in (1, 2, 3, 4):
        if s < 4:  # step 4: no optimizer step, so nothing changed since the snapshot of step 3
            opt.zero_grad(set_to_none=True)
            model(x).float().square().mean().backward()
            opt.step()
        mon.after_step(s)
        now = _host_copies(model)
        rec = mon.records[-1]
        assert len(mon.records) == s and rec["step"] == s
        assert rec["changed_vs_init"] == _naive_changed(now, theta0, bf16=False)
        assert rec["changed_step"] == _naive_changed(now, prev, bf16=False)
        if fp32:
            assert rec["changed_vs_init_bf16"] == _naive_changed(now, theta0, bf16=True)
            assert rec["changed_step_bf16"] == _naive_changed(now, prev, bf16=True)
            if s < 4:  # Adam moves every fp32 weight by ~lr; in bf16 only the small ones show
                assert 0 < rec["changed_step_bf16"] < rec["changed_step"]
        else:
            assert "changed_vs_init_bf16" not in rec
        if s < 4:
            assert rec["changed_step"] > 0
        else:
            assert rec["changed_step"] == 0
            assert rec["changed_vs_init"] == mon.records[-2]["changed_vs_init"]
        prev = now
    assert all(t.is_cuda for t in refs)


def test_rank_svd_runs_where_the_update_lives(monkeypatch) -> None:
    """spectrum_stats keeps a CUDA ΔW on the GPU for the SVD and matches the CPU result."""
    from rlsparse_lib.analysis import rank

    seen: list[torch.device] = []
    real = torch.linalg.svdvals

    def spy(t, *args, **kw):
        seen.append(t.device)
        return real(t, *args, **kw)

    monkeypatch.setattr(torch.linalg, "svdvals", spy)
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(96, 3, generator=g) @ torch.randn(3, 64, generator=g)  # rank 3
    on_gpu = rank.spectrum_stats(delta.cuda())
    on_cpu = rank.spectrum_stats(delta)
    assert seen == [torch.device("cuda", torch.cuda.current_device()), torch.device("cpu")]
    assert on_gpu["rank"] == on_cpu["rank"] == 3
    assert math.isclose(on_gpu["sigma_max"], on_cpu["sigma_max"], rel_tol=1e-4)


def test_update_ranks_default_to_the_gpu(tmp_path) -> None:
    from rlsparse_lib.analysis import rank

    base = random_state(TINY, torch.bfloat16, seed=0)
    tuned = {
        n: bump_bits(t, pick(t.numel(), t.numel() // 4, i)) for i, (n, t) in enumerate(base.items())
    }
    b, t = save_hf(tmp_path / "b", base), save_hf(tmp_path / "t", tuned)
    gpu = rank.update_ranks(b, t, progress=False)
    cpu = rank.update_ranks(b, t, device="cpu", progress=False)
    assert gpu.provenance["device"] == "cuda"
    assert [m["rank"] for m in gpu.matrices] == [m["rank"] for m in cpu.matrices]
