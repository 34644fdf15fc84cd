"""End-to-end diffs of planted checkpoint pairs with exact expected counts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rlsparse_lib.diff.config import DEFAULT_TOLERANCES, DiffConfig
from rlsparse_lib.diff.engine import diff_checkpoints
from rlsparse_lib.diff.report import DiffReport
from rlsparse_lib.io.maskfile import MaskFile
from rlsparse_lib.rules import MaskRule

from .ckpt_factory import TINY, bump_bits, numel, pick, random_state, save_hf
from .reference import naive_pair_counts, paper_script_sparsity


def planted(dtype=torch.bfloat16, frac=0.2, seed=0):
    """base, tuned (a ``frac`` of every tensor bumped by one ULP), per-tensor changed counts."""
    base = random_state(dtype=dtype, seed=seed)
    tuned, counts = {}, {}
    for i, (name, t) in enumerate(base.items()):
        k = round(frac * t.numel())
        tuned[name] = bump_bits(t, pick(t.numel(), k, seed + i))
        counts[name] = k
    return base, tuned, counts


def run(
    tmp_path: Path,
    base,
    tuned,
    shards=(1, 1),
    fmt=("safetensors", "safetensors"),
    config=None,
    **kw,
):
    b = save_hf(tmp_path / "base", base, shards=shards[0], fmt=fmt[0], config=config)
    t = save_hf(tmp_path / "tuned", tuned, shards=shards[1], fmt=fmt[1], config=config)
    return diff_checkpoints(b, t, DiffConfig(**kw), progress=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_planted_one_ulp_counts_are_exact(tmp_path: Path, dtype) -> None:
    base, tuned, counts = planted(dtype)
    rep = run(tmp_path, base, tuned)
    assert rep.n_params == numel(base)
    assert rep.n_changed == sum(counts.values())
    assert {t.name: t.n_changed for t in rep.tensors} == counts
    for t in rep.tensors:
        ref = naive_pair_counts(base[t.name], tuned[t.name], DEFAULT_TOLERANCES)
        assert [t.stats.n_unchanged_at(k) for k in range(len(DEFAULT_TOLERANCES))] == ref[
            "unchanged_tol"
        ]
        assert t.stats.n_rel_unchanged_total == ref["unchanged_rel"]
        assert math.isclose(t.stats.sum_sq_delta, ref["sum_sq_delta"], rel_tol=1e-9)
        assert math.isclose(t.stats.sum_sq_base, ref["sum_sq_base"], rel_tol=1e-9)
        assert t.stats.max_abs_delta == ref["max_abs_delta"]


def test_shard_layouts_and_formats_do_not_matter(tmp_path: Path) -> None:
    base, tuned, _counts = planted()
    a = run(tmp_path / "a", base, tuned)
    b = run(tmp_path / "b", base, tuned, shards=(3, 2), fmt=("safetensors", "bin"))
    c = run(tmp_path / "c", base, tuned, shards=(2, 1), fmt=("bin", "safetensors"))
    for rep in (b, c):
        assert {t.name: t.stats.to_dict() for t in rep.tensors} == {
            t.name: t.stats.to_dict() for t in a.tensors
        }


def test_matches_paper_style_naive_script(tmp_path: Path) -> None:
    """Global sparsity at each tolerance equals whole-model concatenation + isclose."""
    base = random_state(dtype=torch.float32, seed=1)
    g = torch.Generator().manual_seed(2)
    tuned = {}
    for n, t in base.items():
        noise = torch.randn(t.shape, generator=g) * torch.rand(t.shape, generator=g) ** 6 * 1e-3
        keep = torch.rand(t.shape, generator=g) < 0.5
        tuned[n] = torch.where(keep, t, t + noise)
    rep = run(tmp_path, base, tuned)
    for tol in DEFAULT_TOLERANCES[1:]:
        assert rep.sparsity_at(tol) == pytest.approx(
            paper_script_sparsity(base, tuned, tol), abs=0, rel=0
        )


def _neighbours(tol: float, dtype: torch.dtype) -> tuple[float, float]:
    """Largest value of ``dtype`` <= tol and smallest > tol."""
    x = torch.tensor(tol, dtype=torch.float64).to(dtype)
    if float(x) > tol:
        x = torch.nextafter(x.float(), torch.tensor(0.0)).to(dtype) if dtype == torch.float32 else x
    below = float(x)
    word = {2: torch.int16, 4: torch.int32}[x.element_size()]
    while below > tol:
        below = float((x.view(word) - 1).view(dtype))
        x = torch.tensor(below, dtype=dtype)
    above = float((x.view(word) + 1).view(dtype))
    assert below <= tol < above
    return below, above


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_changes_just_below_and_above_each_tolerance(tmp_path: Path, dtype) -> None:
    """Δ from a zero base just below / above every tolerance is counted on the right side."""
    tols = [t for t in DEFAULT_TOLERANCES if t > 0]
    vals = []
    for t in tols:
        vals += list(_neighbours(t, dtype))
    base = {"w": torch.zeros(len(vals), dtype=dtype)}
    tuned = {"w": torch.tensor(vals, dtype=dtype)}
    rep = run(tmp_path, base, tuned)
    s = rep.tensors[0].stats
    assert s.n_changed == len(vals)
    for k, t in enumerate(rep.tolerances):
        expected = sum(v <= t for v in vals)
        assert int(s.n_le_tol[k]) == expected, t
        if t > 0:
            assert expected == 2 * tols.index(t) + 1  # all lower pairs plus this 'below'


def test_one_ulp_bf16_against_the_1e5_rule(tmp_path: Path) -> None:
    """A one-ULP bf16 change is hidden by 1e-5 only for |w| < 2^-9 (paper.md §2.7)."""
    mags = torch.tensor([2.0**-12, 2.0**-10, 2.0**-9, 2.0**-8, 0.02, 1.0])
    base = {"w": mags.to(torch.bfloat16)}
    tuned = {"w": bump_bits(base["w"], torch.arange(6))}
    s = run(tmp_path, base, tuned).tensors[0].stats
    k = DEFAULT_TOLERANCES.index(1e-5)
    assert s.n_changed == 6 and int(s.n_le_tol[k]) == 2  # 2^-12 and 2^-10 (ULPs 2^-19, 2^-17)


def test_nan_and_signed_zero_semantics(tmp_path: Path) -> None:
    nan = torch.tensor([0x7FC0, 0x7FC1], dtype=torch.int16).view(torch.bfloat16)
    base = torch.tensor([0.0, 1.0, 1.0, 0.0, 2.0], dtype=torch.bfloat16)
    base = torch.cat([nan[:1], nan[:1], base, torch.tensor([float("inf")], dtype=torch.bfloat16)])
    tuned = base.clone()
    tuned[1] = nan[1]  # NaN payload changes: changed everywhere
    tuned[2] = -0.0  # +0 -> -0: bitwise change, equal under every tolerance
    tuned[3] = float("nan")  # 1 -> NaN: changed, flagged
    s = run(tmp_path, {"w": base}, {"w": tuned}).tensors[0].stats
    # index 0: identical NaN bits are unchanged; index 7: inf == inf bits unchanged
    assert s.n_changed == 3
    assert s.n_zero_delta == 1 and s.n_nonfinite_delta == 2
    assert all(s.n_unchanged_at(k) == s.numel - 2 for k in range(len(DEFAULT_TOLERANCES)))
    assert (s.n_nan_base, s.n_nan_tuned, s.n_inf_base, s.n_inf_tuned) == (2, 3, 1, 1)


def test_resized_vocabulary_compares_leading_rows(tmp_path: Path) -> None:
    base, tuned, counts = planted()
    emb = "model.embed_tokens.weight"
    extra = torch.zeros(8, TINY.hidden, dtype=torch.bfloat16)
    tuned[emb] = torch.cat([tuned[emb], extra])
    rep = run(tmp_path, base, tuned)
    t = next(t for t in rep.tensors if t.name == emb)
    assert t.shape_compared == (TINY.vocab, TINY.hidden) and t.shape_tuned == (
        TINY.vocab + 8,
        TINY.hidden,
    )
    assert t.n_changed == counts[emb] and t.numel == TINY.vocab * TINY.hidden
    assert "8 rows only in tuned not compared" in t.note
    assert any(p["name"] == emb for p in rep.provenance["partial"])


def test_missing_extra_and_shape_mismatch_are_reported(tmp_path: Path) -> None:
    base, tuned, _ = planted()
    del tuned["model.norm.weight"]
    tuned["extra.bias"] = torch.zeros(3, dtype=torch.bfloat16)
    q = "model.layers.0.self_attn.q_proj.weight"
    tuned[q] = tuned[q].reshape(-1)
    rep = run(tmp_path, base, tuned)
    reasons = {s["name"]: s["reason"] for s in rep.skipped}
    assert reasons["model.norm.weight"] == "missing in tuned"
    assert reasons["extra.bias"] == "missing in base"
    assert reasons[q].startswith("shape mismatch [32, 32] vs [1024]")
    assert rep.n_params == numel(base) - TINY.hidden - TINY.hidden**2


def test_dtype_mismatch_is_cast_to_the_base_dtype(tmp_path: Path) -> None:
    base = random_state(dtype=torch.bfloat16, seed=3)
    g = torch.Generator().manual_seed(4)
    tuned = {n: t.float() + 1e-4 * torch.randn(t.shape, generator=g) for n, t in base.items()}
    rep = run(tmp_path, base, tuned)
    for t in rep.tensors:
        assert t.compare_dtype == "bfloat16" and "tuned float32 cast to bfloat16" in t.note
        ref = naive_pair_counts(base[t.name], tuned[t.name].to(torch.bfloat16), DEFAULT_TOLERANCES)
        assert t.n_changed == ref["n_changed"]
    rep32 = run(tmp_path / "f32", base, tuned, compare_dtype="float32")
    for t in rep32.tensors:
        ref = naive_pair_counts(base[t.name].float(), tuned[t.name], DEFAULT_TOLERANCES)
        assert t.n_changed == ref["n_changed"]
        assert t.stats.ulp_hist.sum() == ref["n_changed"]  # ULP unit: bf16 (the stored dtype)


def test_bf16_pair_compared_in_float32_gives_the_same_counts(tmp_path: Path) -> None:
    base, tuned, _ = planted()
    a = run(tmp_path / "a", base, tuned)
    b = run(tmp_path / "b", base, tuned, compare_dtype="float32")
    for x, y in zip(a.tensors, b.tensors, strict=True):
        dx, dy = x.stats.to_dict(), y.stats.to_dict()
        assert dx == dy, x.name


def test_tied_head_is_counted_once(tmp_path: Path) -> None:
    base, tuned, _counts = planted()
    base["lm_head.weight"] = base["model.embed_tokens.weight"].clone()
    tuned["lm_head.weight"] = tuned["model.embed_tokens.weight"].clone()
    cfg = {"tie_word_embeddings": True}
    rep = run(tmp_path, base, tuned, config=cfg)
    assert "lm_head.weight" not in {t.name for t in rep.tensors}
    assert any(s["name"] == "lm_head.weight" and "counted once" in s["reason"] for s in rep.skipped)
    del base["lm_head.weight"], tuned["lm_head.weight"]
    rep2 = run(tmp_path / "unstored", base, tuned, config=cfg)
    assert rep2.tied and "counted once as model.embed_tokens.weight" in rep2.tied[0]


def test_integer_buffers_are_reported_apart(tmp_path: Path) -> None:
    base, tuned, _counts = planted()
    base["model.position_ids"] = torch.arange(10)
    tuned["model.position_ids"] = torch.arange(10).flip(0)
    rep = run(tmp_path, base, tuned)
    assert rep.n_params == numel(base) - 10
    (buf,) = rep.buffers
    assert buf.name == "model.position_ids" and buf.n_changed == 10 and buf.stats is None


def test_include_and_exclude(tmp_path: Path) -> None:
    base, tuned, _counts = planted()
    rep = run(tmp_path, base, tuned, exclude=("norm",), include=(r"layers\.0\.",))
    names = {t.name for t in rep.tensors}
    assert names and all(".layers.0." in n and "norm" not in n for n in names)
    assert len(rep.skipped) == len(base) - len(names)


@pytest.mark.parametrize("chunk", [8, 64, 1 << 24])
def test_chunk_size_does_not_change_counts(tmp_path: Path, chunk: int) -> None:
    base, tuned, counts = planted()
    rep = run(tmp_path, base, tuned, chunk_elems=chunk)
    assert {t.name: t.n_changed for t in rep.tensors} == counts
    assert rep.sparsity_at(1e-5) == run(tmp_path / "ref", base, tuned).sparsity_at(1e-5)


@pytest.mark.parametrize("rule", [MaskRule("bitwise"), MaskRule("abs", 1e-5)])
def test_mask_out_matches_reference(tmp_path: Path, rule: MaskRule) -> None:
    base, tuned, _counts = planted(dtype=torch.float32)
    b = save_hf(tmp_path / "base", base)
    t = save_hf(tmp_path / "tuned", tuned)
    out = tmp_path / "m.safetensors"
    diff_checkpoints(b, t, DiffConfig(mask_rule=rule, chunk_elems=64), mask_out=out, progress=False)
    with MaskFile.open(out) as mf:
        assert mf.meta["rule"] == {"kind": rule.kind, "tol": rule.tol}
        total_set = 0
        for name in base:
            d = (tuned[name] - base[name]).abs().double()
            changed = base[name].view(torch.int32) != tuned[name].view(torch.int32)
            expected = changed if rule.kind == "bitwise" else changed & ~(d <= rule.tol)
            np.testing.assert_array_equal(mf.mask(name), expected.numpy())
            assert mf.meta["n_set"][name] == int(expected.sum())
            total_set += int(expected.sum())
        assert mf.density == pytest.approx(total_set / numel(base))
        assert mf.meta["sources"]["base"]["fingerprint"]


def test_failed_diff_leaves_no_mask_file(tmp_path: Path, monkeypatch) -> None:
    base, tuned, _ = planted()
    b, t = save_hf(tmp_path / "b", base), save_hf(tmp_path / "t", tuned)
    import rlsparse_lib.diff.engine as engine

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(engine, "cast_words", boom)
    with pytest.raises(RuntimeError):
        diff_checkpoints(b, t, mask_out=tmp_path / "out" / "m.safetensors", progress=False)
    assert list((tmp_path / "out").iterdir()) == []


def test_report_json_roundtrip_and_tables(tmp_path: Path) -> None:
    base, tuned, counts = planted()
    rep = run(tmp_path, base, tuned)
    rep.save_json(tmp_path / "r.json")
    rep.save_json(tmp_path / "r.json.gz")
    assert DiffReport.load(tmp_path / "r.json").to_dict() == rep.to_dict()
    assert DiffReport.load(tmp_path / "r.json.gz").to_dict() == rep.to_dict()
    assert (tmp_path / "r.json.gz").stat().st_size < (tmp_path / "r.json").stat().st_size / 3
    d = rep.to_dict()
    assert d["tolerances"]["1e-05"]["n_unchanged"] == rep.totals().n_unchanged_at(4)
    assert set(d["tolerances"]) == {"0.0", "1e-08", "1e-07", "1e-06", "1e-05", "0.0001"}
    assert d["provenance"]["inputs"]["base"]["stored_dtypes"] == {"bfloat16": len(base)}
    rep.save_table(tmp_path / "t.csv")
    rep.save_table(tmp_path / "t.parquet")
    import pandas as pd

    csv, pq = pd.read_csv(tmp_path / "t.csv"), pd.read_parquet(tmp_path / "t.parquet")
    assert list(csv["n_changed"]) == list(pq["n_changed"]) == [counts[n] for n in csv["name"]]


def test_layer_and_module_aggregates(tmp_path: Path) -> None:
    base, tuned, _counts = planted()
    rep = run(tmp_path, base, tuned)
    table = rep.table()
    by_layer = rep.aggregate("layer").set_index("layer")
    for layer, rows in table.groupby("layer"):
        row = by_layer.loc[layer]
        weighted = 1 - rows["n_changed"].sum() / rows["numel"].sum()
        assert row["sparsity_bitwise"] == pytest.approx(weighted, rel=1e-12)
        assert row["mean_sparsity_bitwise"] == pytest.approx(
            (1 - rows["n_changed"] / rows["numel"]).mean(), rel=1e-12
        )
    by_module = rep.aggregate("module").set_index("module")
    assert by_module.loc["mlp.down_proj", "n_tensors"] == TINY.layers


def test_partials_merge_to_the_same_report(tmp_path: Path) -> None:
    """A report is the merge of per-shard-pair partials, in any order and split."""
    from rlsparse_lib.diff.engine import diff_pairs
    from rlsparse_lib.diff.kernels.selection import get_kernel
    from rlsparse_lib.diff.units import build_report
    from rlsparse_lib.io.checkpoint import open_checkpoint
    from rlsparse_lib.io.pairing import pair_checkpoints

    base, tuned, _counts = planted()
    b = open_checkpoint(save_hf(tmp_path / "b", base, shards=3))
    t = open_checkpoint(save_hf(tmp_path / "t", tuned, shards=2))
    cfg = DiffConfig()
    whole = diff_checkpoints(b, t, cfg, progress=False)
    plan = pair_checkpoints(b, t)
    kernel = get_kernel("cpu")
    with b.reader() as rb, t.reader() as rt:
        partials = [diff_pairs(g, rb, rt, kernel, cfg) for g in plan.shard_groups()]
    assert len(partials) > 1
    merged = build_report(plan, cfg, partials[::-1], kernel.name)
    assert [x.stats.to_dict() for x in merged.tensors] == [x.stats.to_dict() for x in whole.tensors]


@pytest.mark.parametrize("compare", ["bfloat16", "float16", "float32"])
def test_float64_base_is_compared_with_float64_ulps(tmp_path: Path, compare: str) -> None:
    """A float64 checkpoint compared as float32 keeps float64's ULPs (2^(e-52)); compared in a
    16-bit dtype, that dtype's (2^(e-7) bf16, 2^(e-10) fp16)."""
    base = {"w": torch.tensor([1.0, 0.5, 3.0, -2.0], dtype=torch.float64)}
    tuned = {"w": torch.tensor([1.5, 0.5, 3.0, -2.0], dtype=torch.float64)}
    rep = run(tmp_path, base, tuned, compare_dtype=compare)
    s = rep.tensors[0].stats
    assert s.n_changed == 1
    from rlsparse_lib.diff.stats import ULP_LOG2_MIN

    # |Δ| = 0.5 at θ0 = 1.0: log2(0.5 / 2^-mant)
    mant = {"float32": 52, "bfloat16": 7, "float16": 10}[compare]
    assert s.ulp_hist[mant - 1 - ULP_LOG2_MIN] == 1
