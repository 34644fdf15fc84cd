"""The streaming executor behind ``--device cuda``: reports and mask files equal to the CPU path.

Without CUDA, device ``cuda`` is routed to the CPU device, where the executor runs its full
chunking, slot rotation, casting and merging logic with no-op streams and the kernel runs in
Triton's interpreter. With CUDA the same tests run on the GPU (pinned buffers, copy and compute
streams).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():  # must precede the first import of triton
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from rlsparse_lib.cli import main
from rlsparse_lib.diff import gpu_executor
from rlsparse_lib.diff.config import DiffConfig
from rlsparse_lib.diff.engine import diff_checkpoints, unit_executor
from rlsparse_lib.diff.kernels import cuda as cuda_mod
from rlsparse_lib.diff.kernels.selection import get_kernel
from rlsparse_lib.errors import CheckpointError, ConfigError
from rlsparse_lib.io.checkpoint import TensorReader, open_checkpoint
from rlsparse_lib.io.maskfile import MaskFile
from rlsparse_lib.io.pairing import pair_checkpoints
from rlsparse_lib.rules import MaskRule

from .ckpt_factory import TINY, bump_bits, pick, random_state, save_hf
from .test_gpu_kernel import DEVICES

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy inf-inf in interpreter
CHUNK = 1000  # elements: most tensors span several chunks, so slots wrap around


@pytest.fixture
def gpu(request, monkeypatch) -> str:
    """The device ``--device cuda`` runs on: the real GPU, or the interpreter's CPU device."""
    if request.param == "cpu":
        monkeypatch.setattr(cuda_mod, "cuda_problem", lambda: None)
        monkeypatch.setattr(cuda_mod, "default_device", lambda: torch.device("cpu"))
    return request.param


def use_kernel(monkeypatch, **kw) -> None:
    """Make ``--device cuda`` build a :class:`CudaKernel` with these settings."""
    monkeypatch.setattr(
        cuda_mod, "cuda_kernel", lambda required, threads=None: cuda_mod.CudaKernel(**kw)
    )


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """A sharded Llama-shaped bf16 pair with one-ULP changes, NaN/Inf/±0, a float32 tuned tensor
    (cast), an int64 buffer (bitwise) and a resized embedding (partial rows)."""
    base = random_state(TINY, torch.bfloat16, seed=0)
    tuned = {}
    for i, (name, t) in enumerate(base.items()):
        tuned[name] = bump_bits(t, pick(t.numel(), t.numel() // 5, i))
    norm = "model.norm.weight"
    base[norm] = base[norm].clone()
    tuned[norm] = tuned[norm].clone()
    base[norm][:5] = torch.tensor([math.nan, math.inf, 0.0, 1.0, -math.inf])
    tuned[norm][:5] = torch.tensor([math.nan, 1.0, -0.0, math.inf, -math.inf])
    up = "model.layers.1.mlp.up_proj.weight"
    tuned[up] = (tuned[up].float() + 1e-4 * torch.randn(tuned[up].shape)).contiguous()
    base["model.position_ids"] = torch.arange(300, dtype=torch.int64)
    tuned["model.position_ids"] = torch.arange(300, dtype=torch.int64) * (torch.arange(300) % 7 > 0)
    emb = "model.embed_tokens.weight"
    tuned[emb] = torch.cat([tuned[emb], torch.randn(3, TINY.hidden).to(torch.bfloat16)])
    b = save_hf(tmp_path / "base", base, shards=2, config=TINY.config())
    t = save_hf(tmp_path / "tuned", tuned, shards=3, config=TINY.config())
    return b, t


def assert_reports_equal(gpu_rep, cpu_rep) -> None:
    """Every tensor's counts and histograms identical; float sums within 1e-6 relative."""
    assert [r.name for r in gpu_rep.tensors] == [r.name for r in cpu_rep.tensors]
    assert [r.to_dict() for r in gpu_rep.buffers] == [r.to_dict() for r in cpu_rep.buffers]
    for g, c in zip(gpu_rep.tensors, cpu_rep.tensors, strict=True):
        gd, cd = g.to_dict(), c.to_dict()
        gs, cs = gd.pop("stats"), cd.pop("stats")
        for key in ("max_abs_delta", "sum_abs_delta", "sum_sq_delta", "sum_sq_base"):
            assert math.isclose(gs.pop(key), cs.pop(key), rel_tol=1e-6, abs_tol=0.0), (g.name, key)
        assert (gd, gs) == (cd, cs), g.name


def assert_masks_equal(path_a: Path, path_b: Path) -> None:
    with MaskFile.open(path_a) as ma, MaskFile.open(path_b) as mb:
        assert ma.names == mb.names and ma.meta["n_set"] == mb.meta["n_set"]
        for name in ma.names:
            assert (ma.packed(name) == mb.packed(name)).all(), name


@pytest.mark.parametrize("gpu", DEVICES, indirect=True)
@pytest.mark.parametrize("rule", [MaskRule("bitwise"), MaskRule("rel", 1e-3)], ids=lambda r: r.kind)
def test_report_and_masks_equal_cpu_path(tmp_path: Path, pair, gpu: str, rule: MaskRule) -> None:
    b, t = pair
    runs = {}
    for device in ("cpu", "cuda"):
        cfg = DiffConfig(device=device, chunk_elems=CHUNK, mask_rule=rule)
        mask = tmp_path / f"{device}.mask.safetensors"
        runs[device] = (diff_checkpoints(b, t, cfg, mask_out=mask, progress=False), mask)
    (gpu_rep, gpu_mask), (cpu_rep, cpu_mask) = runs["cuda"], runs["cpu"]
    assert gpu_rep.provenance["kernel"] == ("triton-interpreter" if gpu == "cpu" else "cuda-triton")
    assert cpu_rep.provenance["kernel"] == "cpu-c"
    assert_reports_equal(gpu_rep, cpu_rep)
    assert_masks_equal(gpu_mask, cpu_mask)
    norm = next(r for r in gpu_rep.tensors if r.name == "model.norm.weight").stats
    assert (norm.n_nan_base, norm.n_inf_base, norm.n_zero_delta) == (1, 2, 1)
    assert any("cast" in r.note for r in gpu_rep.tensors)
    assert any(r.name == "model.position_ids" and r.n_changed == 42 for r in gpu_rep.buffers)


@pytest.mark.parametrize("gpu", DEVICES, indirect=True)
@pytest.mark.parametrize(("slots", "chunk"), [(1, 4096), (3, 512)])
def test_slot_counts_and_parallel_fill(pair, gpu: str, slots: int, chunk: int, monkeypatch) -> None:
    """Any number of slots and chunk size, and the reader pool's piecewise fill, give the
    CPU path's counts."""
    b, t = pair
    monkeypatch.setattr(gpu_executor, "_SPLIT", 256)  # bytes: every chunk is filled in pieces
    use_kernel(monkeypatch, device=cuda_mod.default_device(), slots=slots, readers=3)
    gpu_rep = diff_checkpoints(b, t, DiffConfig(device="cuda", chunk_elems=chunk), progress=False)
    cpu_rep = diff_checkpoints(b, t, DiffConfig(chunk_elems=chunk), progress=False)
    assert_reports_equal(gpu_rep, cpu_rep)


@pytest.mark.parametrize("gpu", DEVICES, indirect=True)
def test_progress_counts_every_byte(pair, gpu: str) -> None:
    b, t = (open_checkpoint(p) for p in pair)
    plan = pair_checkpoints(b, t)
    kernel = get_kernel("cuda")
    seen: list[int] = []
    with TensorReader(b) as rb, TensorReader(t) as rt:
        for group in plan.shard_groups():
            unit_executor(kernel)(
                group, rb, rt, kernel, DiffConfig(chunk_elems=CHUNK), None, seen.append
            )
    assert sum(seen) == plan.nbytes
    assert len(seen) == sum(-(-p.numel // CHUNK) for p in plan.pairs)


@pytest.mark.parametrize("gpu", DEVICES, indirect=True)
def test_read_error_leaves_no_mask_file(tmp_path: Path, pair, gpu: str, monkeypatch) -> None:
    b, t = pair
    calls = {"n": 0}
    real = TensorReader.words

    def failing(self, name, start, stop):
        calls["n"] += 1
        if calls["n"] > 9:
            raise CheckpointError(f"{name}: simulated read error")
        return real(self, name, start, stop)

    monkeypatch.setattr(TensorReader, "words", failing)
    mask = tmp_path / "m.safetensors"
    with pytest.raises(CheckpointError, match="simulated"):
        cfg = DiffConfig(device="cuda", chunk_elems=CHUNK)
        diff_checkpoints(b, t, cfg, mask_out=mask, progress=False)
    assert not mask.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU behaviour")
def test_cuda_without_gpu_is_a_config_error(pair, capsys) -> None:
    b, t = pair
    with pytest.raises(ConfigError, match="no CUDA device"):
        get_kernel("cuda")
    assert main(["diff", str(b), str(t), "--device", "cuda", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlsparse diff: error: device 'cuda': no CUDA device") and err[-1] == "\n"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU behaviour")
def test_auto_falls_back_to_cpu(pair) -> None:
    b, t = pair
    rep = diff_checkpoints(b, t, DiffConfig(device="auto"), progress=False)
    assert rep.provenance["kernel"] == "cpu-c"


@pytest.mark.parametrize("gpu", DEVICES, indirect=True)
def test_auto_picks_the_gpu(gpu: str) -> None:
    kernel = get_kernel("auto", threads=2)
    assert isinstance(kernel, cuda_mod.CudaKernel) and kernel.readers == 2


def test_unknown_device_and_cli_choices(pair, capsys) -> None:
    with pytest.raises(ConfigError, match="use 'cpu', 'cuda' or 'auto'"):
        get_kernel("tpu")
    b, t = pair
    with pytest.raises(SystemExit):
        main(["diff", str(b), str(t), "--device", "tpu"])
    assert "invalid choice: 'tpu'" in capsys.readouterr().err


def test_cpu_path_imports_neither_triton_nor_the_gpu_module(pair) -> None:
    b, t = pair
    code = (
        "import sys; from rlsparse_lib.cli import main; "
        f"rc = main(['diff', {str(b)!r}, {str(t)!r}, '-q']); "
        "bad = [m for m in ('triton', 'rlsparse_lib.diff.kernels.cuda', 'rlsparse_lib.diff.gpu_executor') if m in sys.modules]; "
        "sys.exit(rc or (3 if bad else 0))"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
