"""FP16 precision views (issue 12 item 5): a float16 pair is measured in fp16 ULPs and binades, and
a bf16 pair compared as float16 shows what fp16 storage would have kept. References: whole arrays,
plain numpy, the ULP from ``np.spacing`` of the float16 θ0 (2^(e−10) for normals, 2^−24 for
subnormals and zero), the binade from the fp16 exponent field 0..31."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from rlsparse_lib.analysis.absorption import absorption_table
from rlsparse_lib.diff.config import DiffConfig
from rlsparse_lib.diff.engine import diff_checkpoints
from rlsparse_lib.diff.kernels.cpu import CpuKernel
from rlsparse_lib.diff.kernels.protocol import ChunkSpec
from rlsparse_lib.diff.stats import BINADE_BINS, ULP_BINS, ULP_LOG2_MIN

TOLS = np.array([0.0, 1e-8, 1e-5], np.float64)


def fp16_reference(a: np.ndarray, b: np.ndarray) -> dict:
    """Changed count, ULP histogram (|Δ| / np.spacing(|θ0|)) and binades of a float16 pair."""
    wa, wb = a.view(np.uint16), b.view(np.uint16)
    changed = wa != wb
    with np.errstate(all="ignore"):
        d = np.abs(b.astype(np.float32) - a.astype(np.float32)).astype(np.float64)
        ulp = np.spacing(np.abs(a)).astype(np.float64)  # ULP of |θ0| in float16
        ratio = np.floor(np.log2(d / ulp))
    sel = changed & np.isfinite(d) & (d > 0)
    ulp_hist = np.bincount(
        np.clip(ratio[sel].astype(np.int64) - ULP_LOG2_MIN, 0, ULP_BINS - 1), minlength=ULP_BINS
    )
    field = (wa >> 10) & 0x1F
    return {
        "n_changed": int(changed.sum()),
        "ulp_hist": ulp_hist,
        "binade_total": np.bincount(field, minlength=BINADE_BINS),
        "binade_changed": np.bincount(field[changed], minlength=BINADE_BINS),
    }


def fp16_pair(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """float16 θ0 over many binades (normals, subnormals, zeros) and θ1 with sparse updates of
    sizes from far below to far above the ULP."""
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal(n) * 2.0 ** rng.integers(-26, 10, n)).astype(np.float16)
    a[rng.random(n) < 0.02] = 0
    b = a.astype(np.float32)
    idx = rng.random(n) < 0.3
    b[idx] += (rng.standard_normal(idx.sum()) * 2.0 ** rng.integers(-30, 0, idx.sum())).astype(
        np.float32
    )
    return a, b.astype(np.float16)


def bf16_words(x: torch.Tensor) -> np.ndarray:
    return x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def assert_views(stats, ref: dict) -> None:
    assert stats.n_changed == ref["n_changed"]
    np.testing.assert_array_equal(stats.ulp_hist, ref["ulp_hist"])
    np.testing.assert_array_equal(stats.binade_total, ref["binade_total"])
    np.testing.assert_array_equal(stats.binade_changed, ref["binade_changed"])


def test_float16_pair_uses_float16_ulps_and_binades() -> None:
    a, b = fp16_pair(200_003, seed=1)
    stats = CpuKernel().diff_chunk(
        a.view(np.uint16), b.view(np.uint16), ChunkSpec("float16", "float16", TOLS, 1e-3)
    )
    ref = fp16_reference(a, b)
    assert_views(stats, ref)
    assert ref["binade_total"][0] > 0 and ref["binade_total"][1:31].sum() > 0  # subnormal, normal
    assert ref["binade_total"][32:].sum() == 0  # fp16 fields stop at 31


def test_bf16_words_compared_as_float16_use_float16_ulps() -> None:
    """A bf16 pair cast to float16 (ChunkSpec stored bfloat16): the unit is fp16's ULP."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(100_000, generator=g) * torch.exp2(
        torch.randint(-28, 8, (100_000,), generator=g)
    )
    a = x.to(torch.bfloat16)
    b = a.view(torch.int16).add(torch.randint(0, 2, a.shape, generator=g).to(torch.int16))
    b = b.view(torch.bfloat16)
    a16, b16 = a.to(torch.float16).numpy(), b.to(torch.float16).numpy()
    spec = ChunkSpec("float16", "bfloat16", TOLS, 1e-3)
    stats = CpuKernel().diff_chunk(a16.view(np.uint16), b16.view(np.uint16), spec)
    assert_views(stats, fp16_reference(a16, b16))


def _save(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "model.safetensors"))
    return path


def test_bf16_pair_compared_as_float16_shows_what_fp16_would_keep(tmp_path: Path) -> None:
    """θ0 on both grids (bf16 values that fp16 represents exactly), θ1 one bf16 ULP away: in the
    fp16 normal range that is 8 fp16 ULPs (kept); in fp16's subnormal range a change below half
    an fp16 ULP (2^-25) is absorbed, above it kept — the diff's counts and views say so."""
    rng = np.random.default_rng(3)
    k = rng.integers(1, 256, 4000)  # <= 8 significant bits: exact in bf16 and in fp16
    e = rng.integers(-24, 4, 4000)
    theta0 = torch.from_numpy((k * 2.0 ** e.astype(np.float64)).astype(np.float32))
    theta0 = theta0 * torch.from_numpy(rng.choice([-1.0, 1.0], 4000).astype(np.float32))
    a = theta0.to(torch.bfloat16)
    assert torch.equal(a.float(), theta0) and torch.equal(a.to(torch.float16).float(), theta0)
    b = (a.view(torch.int16) + 1).view(torch.bfloat16)  # one bf16 ULP away from zero
    base = _save(tmp_path / "base", {"w": a.reshape(40, 100)})
    tuned = _save(tmp_path / "tuned", {"w": b.reshape(40, 100)})
    report = diff_checkpoints(base, tuned, DiffConfig(compare_dtype="float16"), progress=False)
    stats = report.tensors[0].float_stats()
    a16, b16 = a.to(torch.float16).numpy(), b.to(torch.float16).numpy()
    ref = fp16_reference(a16, b16)
    assert_views(stats, ref)

    delta = (b.float() - a.float()).abs().double().numpy()
    half_ulp16 = np.spacing(np.abs(a16)).astype(np.float64) / 2
    kept = a16.view(np.uint16) != b16.view(np.uint16)
    assert not kept[delta < half_ulp16].any()  # below half an fp16 ULP: fp16 absorbs it
    assert kept[delta > half_ulp16].all()  # above: fp16 keeps it
    assert (delta < half_ulp16).sum() > 20 and (delta > half_ulp16).sum() > 1000
    normal = np.abs(a16) >= 2.0**-14
    # 1 bf16 ULP = 2^3 fp16 ULPs in the normal range: bin 3 (bf16 units would give bin 0)
    assert stats.ulp_hist[3 - ULP_LOG2_MIN] >= int(normal.sum())
    assert stats.ulp_hist[: -1 - ULP_LOG2_MIN].sum() == 0  # nothing kept below half an ULP

    table = report.binade_table()
    assert set(table["compare_dtype"]) == {"float16"}
    for row in table.to_dict("records"):
        exp = row["exponent"]
        lo = 0.0 if exp == "zero/subnormal" else 2.0**exp
        assert row["ulp"] == float(np.spacing(np.float16(lo)))  # 2^(e-10), 2^-24 subnormal
        field = 0 if exp == "zero/subnormal" else exp + 15
        assert row["n_total"] == ref["binade_total"][field]
        assert row["n_changed"] == ref["binade_changed"][field]
    # a bf16 pair compared as bf16 absorbs nothing: every element changed
    same = diff_checkpoints(base, tuned, progress=False)
    assert same.n_changed == a.numel() > report.n_changed == int(kept.sum())
    assert same.tensors[0].float_stats().ulp_hist[-ULP_LOG2_MIN] == a.numel()  # bf16 units


@pytest.mark.parametrize("stored", [torch.float16, torch.bfloat16])
def test_float16_views_through_the_engine_match_the_reference(tmp_path: Path, stored) -> None:
    a, b = fp16_pair(50_000, seed=4)
    ta, tb = torch.from_numpy(a.astype(np.float32)), torch.from_numpy(b.astype(np.float32))
    base = _save(tmp_path / "base", {"m.w": ta.to(stored).reshape(500, 100)})
    tuned = _save(tmp_path / "tuned", {"m.w": tb.to(stored).reshape(500, 100)})
    cfg = DiffConfig(compare_dtype="float16", chunk_elems=4096)
    report = diff_checkpoints(base, tuned, cfg, progress=False)
    a16 = ta.to(stored).to(torch.float16).numpy()
    b16 = tb.to(stored).to(torch.float16).numpy()
    ref = fp16_reference(a16, b16)
    assert_views(report.totals(), ref)
    rows = {r["log2_ratio"]: r["n"] for r in report.ulp_rows()}
    nz = np.flatnonzero(ref["ulp_hist"])
    assert rows == {int(i) + ULP_LOG2_MIN: int(ref["ulp_hist"][i]) for i in nz}
    # absorption per update size reads the fp16 binades: ½ULP from np.spacing
    u = 1e-3
    row = absorption_table(report, [u]).iloc[0]
    assert row["abs_threshold_float16"] == 4.0  # first binade whose fp16 ½ULP exceeds 1e-3
    absorbing = (np.spacing(np.abs(a16)) / 2 > u) & np.isfinite(a16)
    assert row["n_absorbing"] == int(absorbing.sum())


def test_binade_curve_plots_a_bf16_report_and_its_fp16_view(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from rlsparse_lib.analysis.absorption import absorption_threshold
    from rlsparse_lib.plotting.precision import plot_binade_curve

    g = torch.Generator().manual_seed(5)
    a = (torch.randn(4000, generator=g) * 0.02).to(torch.bfloat16)
    b = (a.float() + 1e-4 * torch.randn(4000, generator=g)).to(torch.bfloat16)
    base = _save(tmp_path / "base", {"w": a.reshape(40, 100)})
    tuned = _save(tmp_path / "tuned", {"w": b.reshape(40, 100)})
    views = {
        dtype: diff_checkpoints(base, tuned, DiffConfig(compare_dtype=dtype), progress=False)
        for dtype in ("float16", "bfloat16")
    }
    fig = plot_binade_curve({k: r.binade_table() for k, r in views.items()}, [1e-6])
    ax = fig.axes[0]
    fp16_exps = [r["exponent"] for r in views["float16"].binade_rows()]
    assert list(ax.lines[0].get_xdata()) == [e for e in fp16_exps if isinstance(e, int)]
    threshold = next(ln for ln in ax.lines if "absorbed" in str(ln.get_label()))
    assert threshold.get_xdata()[0] == np.log2(absorption_threshold(1e-6, "float16"))
