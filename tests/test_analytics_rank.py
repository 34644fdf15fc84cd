"""Update rank: planted low-rank ΔW against numpy.linalg references, rules, selection, devices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rlsparse_lib.analysis.rank import RankRule, RankSelection, spectrum_stats, update_ranks
from rlsparse_lib.errors import ConfigError

from .ckpt_factory import TINY, random_state, save_hf


def planted(m: int, n: int, r: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((m, r)) @ rng.standard_normal((r, n))).astype(np.float32) * 1e-3


def numpy_stats(d: np.ndarray, energy: float = 0.99) -> dict:
    """Independent reference: numpy SVD in float64 of the float32 matrix."""
    s = np.linalg.svd(d.astype(np.float64), compute_uv=False)
    frac = np.cumsum(s**2) / np.sum(s**2)
    return {
        "rank": int(np.linalg.matrix_rank(d)),  # numpy's default: S.max()·max(M, N)·eps(float32)
        "effective_rank": int(np.argmax(frac >= energy - 1e-12) + 1),
        "stable_rank": float(
            np.linalg.norm(d.astype(np.float64), "fro") ** 2
            / np.linalg.norm(d.astype(np.float64), 2) ** 2
        ),
    }


@pytest.mark.parametrize(("m", "n", "r"), [(48, 32, 5), (32, 64, 1), (40, 40, 40), (16, 16, 0)])
def test_planted_rank_matches_numpy(m: int, n: int, r: int) -> None:
    d = planted(m, n, r, seed=m + n + r)
    got = spectrum_stats(torch.from_numpy(d))
    ref = numpy_stats(d) if r else {"rank": 0, "effective_rank": 0, "stable_rank": None}
    assert got["rank"] == r == ref["rank"]
    assert got["rank"] == int(torch.linalg.matrix_rank(torch.from_numpy(d)))
    assert got["max_rank"] == min(m, n) and got["shape"] == [m, n]
    assert got["rank_pct"] == pytest.approx(100 * r / min(m, n))
    assert got["effective_rank"] == ref["effective_rank"]
    if r:
        assert got["stable_rank"] == pytest.approx(ref["stable_rank"], rel=1e-5)
        assert got["threshold"] == pytest.approx(
            got["sigma_max"] * max(m, n) * np.finfo(np.float32).eps
        )
    else:
        assert got["stable_rank"] is None and got["sigma_max"] == 0


def test_effective_rank_of_known_spectrum() -> None:
    """σ = (10, 2, 1, 0.1, 0.01, 0): 100/105.01 < 0.99 ≤ 104/105.01, so two singular values."""
    u, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((6, 6)))
    v, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((6, 6)))
    sv = np.array([10, 2, 1, 0.1, 0.01, 0.0])
    d = (u * sv) @ v.T
    got = spectrum_stats(d, svd_dtype="float64")
    assert got["effective_rank"] == 2
    assert spectrum_stats(d, energy=0.95, svd_dtype="float64")["effective_rank"] == 1
    assert got["rank"] == 5  # 0.01 > 10·6·eps64; the exact zero is not counted
    assert got["stable_rank"] == pytest.approx(np.sum(sv**2) / 100)


def test_rules_follow_torch_matrix_rank() -> None:
    t = torch.from_numpy(planted(30, 20, 20, 3) + planted(30, 20, 3, 4) * 1e3)
    for atol, rtol in ((None, None), (1e-4, None), (None, 1e-3), (1e-4, 1e-2), (0.0, None)):
        got = spectrum_stats(t, RankRule(atol, rtol), rtol_grid=(1e-6, 0.5))
        assert got["rank"] == int(torch.linalg.matrix_rank(t, atol=atol, rtol=rtol)), (atol, rtol)
    got = spectrum_stats(t, rtol_grid=(1e-6, 0.5))
    assert got["rank_at_rtol"]["1e-06"] == int(torch.linalg.matrix_rank(t, rtol=1e-6))
    assert got["rank_at_rtol"]["0.5"] == int(torch.linalg.matrix_rank(t, rtol=0.5))
    with pytest.raises(ConfigError):
        RankRule(atol=-1.0)
    with pytest.raises(ConfigError, match="2-D"):
        spectrum_stats(torch.zeros(3))


def _fp32_pair(tmp_path: Path, rank_of: dict[str, int]):
    base = random_state(dtype=torch.float32, seed=5)
    tuned = {}
    for i, (name, t) in enumerate(base.items()):
        if t.ndim == 2:
            tuned[name] = t + torch.from_numpy(planted(*t.shape, rank_of.get(name, 2), seed=i))
        else:
            tuned[name] = t + 1e-3
    return save_hf(tmp_path / "b", base), save_hf(tmp_path / "t", tuned), base, tuned


def test_update_ranks_of_checkpoint_pair(tmp_path: Path) -> None:
    ranks = {"model.layers.1.mlp.down_proj.weight": 7, "lm_head.weight": 1}
    b, t, base, tuned = _fp32_pair(tmp_path, ranks)
    rep = update_ranks(b, t, progress=False, device="cpu")
    got = {r["name"]: r for r in rep.matrices}
    # the paper's selection: every 2-D tensor (embeddings, lm_head kept), no norms
    assert set(got) == {n for n, s in TINY.tensors() if len(s) == 2}
    assert {s["reason"] for s in rep.skipped} == {"1-D tensor"}
    for name, r in got.items():
        delta = (tuned[name] - base[name]).numpy()  # fp32 rounding noise stays below the rule
        assert r["rank"] == numpy_stats(delta)["rank"] == ranks.get(name, 2), name
        assert r["effective_rank"] == numpy_stats(delta)["effective_rank"], name
    s = rep.summary()
    assert s["mean_rank_pct"] == pytest.approx(np.mean([r["rank_pct"] for r in rep.matrices]))
    d = rep.to_dict()
    assert d["schema"] == "rlsparse.rank/1"
    assert all({"name", "rank", "max_rank"} <= set(m) for m in d["matrices"])
    par = update_ranks(b, t, workers=2, progress=False)
    assert [(r["name"], r["rank"], r["stable_rank"]) for r in par.matrices] == [
        (r["name"], r["rank"], r["stable_rank"]) for r in rep.matrices
    ]
    sel = RankSelection(embeddings=False, lm_head=False, skip_substrings=(), exclude=("k_proj",))
    names = {r["name"] for r in update_ranks(b, t, selection=sel, progress=False).matrices}
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" not in names
    assert not any("k_proj" in n for n in names) and "model.layers.0.mlp.up_proj.weight" in names


def test_bf16_delta_is_taken_in_float32_from_stored_values(tmp_path: Path) -> None:
    """Δ of bf16 checkpoints = float32(tuned) − float32(base): rounding makes low-rank updates full rank."""
    base = random_state(seed=2)
    tuned = {}
    for i, (name, t) in enumerate(base.items()):
        step = torch.from_numpy(planted(*t.shape, 1, i)) if t.ndim == 2 else 0.0
        tuned[name] = (t.float() + 10 * step).to(torch.bfloat16)
    b, tt = save_hf(tmp_path / "b", base), save_hf(tmp_path / "t", tuned)
    rep = update_ranks(b, tt, progress=False)
    for r in rep.matrices:
        delta = (tuned[r["name"]].float() - base[r["name"]].float()).numpy()
        ref = numpy_stats(delta)
        assert r["rank"] == ref["rank"] and r["effective_rank"] == ref["effective_rank"]
        assert r["rank"] > 1  # the planted update is rank 1; bf16 rounding is not
    assert rep.provenance["svd_dtype"] == "float32"


def test_zero_and_nonfinite_updates(tmp_path: Path) -> None:
    base = random_state(dtype=torch.float32, seed=0)
    tuned = {k: v.clone() for k, v in base.items()}
    tuned["lm_head.weight"][3, 4] = float("nan")
    b, t = save_hf(tmp_path / "b", base), save_hf(tmp_path / "t", tuned)
    rep = update_ranks(b, t, progress=False)
    got = {r["name"]: r for r in rep.matrices}
    assert got["lm_head.weight"]["rank"] is None and "non-finite" in got["lm_head.weight"]["note"]
    q = got["model.layers.0.self_attn.q_proj.weight"]
    assert q["rank"] == 0 and q["effective_rank"] == 0 and q["stable_rank"] is None
    assert rep.summary()["n_full_rank"] == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    d = torch.from_numpy(planted(64, 48, 9, 0))
    cpu, gpu = spectrum_stats(d), spectrum_stats(d.cuda())
    assert cpu["rank"] == gpu["rank"] == 9
    assert gpu["stable_rank"] == pytest.approx(cpu["stable_rank"], rel=1e-4)
