"""Masks: building from a diff, streaming set algebra, density, random masks of matched density."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rlsparse_lib.errors import CheckpointError, ConfigError
from rlsparse_lib.io.maskfile import MaskFile, MaskWriter, pack_mask
from rlsparse_lib.masks import bitops
from rlsparse_lib.masks.ops import (
    MaskError,
    build_mask,
    combine_masks,
    mask_density,
    mask_info,
    random_mask_like,
)
from rlsparse_lib.rules import MaskRule

from .ckpt_factory import bump_bits, pick, random_state, save_hf

#: odd sizes so that packed tensors end mid-byte and are not multiples of 8 bytes
SHAPES = {
    "model.layers.0.mlp.up_proj.weight": (7, 13),
    "model.layers.1.self_attn.q_proj.weight": (5, 5),
    "model.norm.weight": (3,),
}


def write_mask(path: Path, masks: dict[str, np.ndarray], rule: dict | None = None) -> Path:
    """A mask file from bool arrays (the reference layout: numpy packbits, little bit order)."""
    shapes = {k: v.shape for k, v in masks.items()}
    with MaskWriter(path, shapes, rule or {"kind": "test"}, {}) as w:
        for name, m in masks.items():
            w.write(name, pack_mask(m))
    return path


def random_bool(shapes: dict, p: float, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.random(s) < p for k, s in shapes.items()}


def read_all(path: Path) -> dict[str, np.ndarray]:
    with MaskFile.open(path) as m:
        return {n: m.mask(n).copy() for n in m.names}


def test_build_mask_matches_numpy_for_bitwise_and_tolerance(tmp_path: Path) -> None:
    base = random_state(seed=3)
    tuned = {}
    for i, (n, t) in enumerate(base.items()):
        tuned[n] = bump_bits(t, pick(t.numel(), t.numel() // 5, i), k=1 + (i % 40))
    b, t = save_hf(tmp_path / "b", base), save_hf(tmp_path / "t", tuned)
    rep = build_mask(b, t, tmp_path / "bit.mask", progress=False)
    build_mask(b, t, tmp_path / "abs.mask", rule=MaskRule("abs", 1e-5), progress=False)
    bit, ab = read_all(tmp_path / "bit.mask"), read_all(tmp_path / "abs.mask")
    for n in base:
        a16 = base[n].view(torch.int16).numpy()
        t16 = tuned[n].view(torch.int16).numpy()
        np.testing.assert_array_equal(bit[n], a16 != t16)
        d = (tuned[n].float() - base[n].float()).abs().double().numpy()
        np.testing.assert_array_equal(ab[n], (a16 != t16) & ~(d <= 1e-5))
    assert 0 < sum(m.sum() for m in ab.values()) < sum(m.sum() for m in bit.values())
    info = mask_info(tmp_path / "bit.mask")
    assert info["n_set_total"] == rep.n_changed
    assert info["density"] == pytest.approx(1 - rep.sparsity)


@pytest.mark.parametrize("chunk", [1, 3, 16, 1 << 20])
def test_set_algebra_matches_numpy(tmp_path: Path, chunk: int) -> None:
    a, b, c = (random_bool(SHAPES, p, s) for p, s in ((0.3, 1), (0.5, 2), (0.2, 3)))
    pa, pb, pc = (
        write_mask(tmp_path / f"{k}.mask", m) for k, m in zip("abc", (a, b, c), strict=True)
    )
    expect = {
        ("and", 3): lambda n: a[n] & b[n] & c[n],
        ("or", 3): lambda n: a[n] | b[n] | c[n],
        ("xor", 3): lambda n: a[n] ^ b[n] ^ c[n],
        ("andnot", 3): lambda n: a[n] & ~(b[n] | c[n]),
        ("andnot", 2): lambda n: a[n] & ~b[n],
        ("not", 1): lambda n: ~a[n],
    }
    for (op, k), ref in expect.items():
        out = combine_masks(
            op, [pa, pb, pc][:k], tmp_path / f"{op}{k}.mask", chunk_bytes=chunk, progress=False
        )
        got = read_all(out)
        with MaskFile.open(out) as m:
            for n in SHAPES:
                np.testing.assert_array_equal(got[n], ref(n), err_msg=f"{op} {n}")
                # the padding bits of the last byte stay zero (density = popcount / numel)
                assert bitops.popcount(m.packed(n)) == ref(n).sum()
            assert m.meta["rule"]["kind"] == op
            assert len(m.meta["sources"]["operands"]) == k
            assert m.density == pytest.approx(
                sum(ref(n).sum() for n in SHAPES) / sum(math.prod(s) for s in SHAPES.values())
            )


def test_algebra_rejects_mismatched_layouts_without_output(tmp_path: Path) -> None:
    a = write_mask(tmp_path / "a.mask", random_bool(SHAPES, 0.5, 1))
    other = dict(SHAPES, **{"model.norm.weight": (4,)})
    b = write_mask(tmp_path / "b.mask", random_bool(other, 0.5, 2))
    with pytest.raises(MaskError, match=r"model\.norm\.weight.*\[3\].*\[4\]"):
        combine_masks("and", [a, b], tmp_path / "out.mask", progress=False)
    fewer = {k: v for k, v in SHAPES.items() if k != "model.norm.weight"}
    c = write_mask(tmp_path / "c.mask", random_bool(fewer, 0.5, 2))
    with pytest.raises(MaskError, match=r"model\.norm\.weight"):
        combine_masks("or", [a, c], tmp_path / "out.mask", progress=False)
    with pytest.raises(ConfigError, match="exactly one"):
        combine_masks("not", [a, a], tmp_path / "out.mask", progress=False)
    with pytest.raises(ConfigError, match="unknown mask operation"):
        combine_masks("nand", [a, a], tmp_path / "out.mask", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mask", "b.mask", "c.mask"]


def test_density_per_tensor_and_module(tmp_path: Path) -> None:
    masks = random_bool(SHAPES, 0.4, 5)
    p = write_mask(tmp_path / "m.mask", masks)
    df = mask_density(p, "tensor").set_index("name")
    for n, m in masks.items():
        assert df.loc[n, "n_set"] == m.sum()
        assert df.loc[n, "density"] == pytest.approx(m.mean())
    mod = mask_density(p, "module").set_index("module")
    assert mod.loc["norm", "numel"] == 3
    assert mod.loc["mlp.up_proj", "n_set"] == masks["model.layers.0.mlp.up_proj.weight"].sum()
    by_layer = mask_density(p, "layer")
    assert list(by_layer["n_tensors"]) == [1, 1, 1]
    with pytest.raises(ConfigError):
        mask_density(p, "row")


# ---- random masks ---------------------------------------------------------------------------
def test_selection_sampling_is_exact_and_uniform() -> None:
    """Every k-subset equally likely (chi-square over all 10 subsets of 2 of 5), exact counts."""
    rng = np.random.default_rng(0)
    n, k, draws = 5, 2, 20000
    counts = dict.fromkeys(itertools.combinations(range(n), k), 0)
    for _ in range(draws):
        out = np.zeros(1, np.uint8)
        rem = np.array([k, n], np.int64)
        # two chunks: the draw must not depend on how the sequence is split
        bitops.select_uniform(rng.random(3), rem, out[:1])
        tail = np.zeros(1, np.uint8)
        bitops.select_uniform(rng.random(2), rem, tail)
        bits = np.concatenate(
            [np.unpackbits(out, bitorder="little")[:3], np.unpackbits(tail, bitorder="little")[:2]]
        )
        assert bits.sum() == k and rem.tolist() == [0, 0]
        counts[tuple(np.flatnonzero(bits))] += 1
    expected = draws / len(counts)
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 27.9  # 9 degrees of freedom, p = 0.001


def _words_of(state: dict, name: str) -> np.ndarray:
    return state[name].contiguous().view(torch.int16).numpy().view(np.uint16).ravel()


@pytest.mark.parametrize("stratify", ["global", "tensor", "binade"])
def test_random_mask_counts_determinism_and_chunking(tmp_path: Path, stratify: str) -> None:
    base = random_state(seed=1)
    bpath = save_hf(tmp_path / "base", base)
    # a mask concentrated on small |θ0| (what bf16 absorption produces)
    masks = {}
    for n, t in base.items():
        v = t.float().abs().numpy()
        masks[n] = v < np.quantile(v, 0.3) if t.numel() > 64 else np.zeros(t.shape, bool)
    src = write_mask(tmp_path / "src.mask", masks)
    kw = {"seed": 7, "stratify": stratify, "base": bpath if stratify == "binade" else None}
    r1 = random_mask_like(src, tmp_path / "r1.mask", progress=False, **kw)
    r2 = random_mask_like(src, tmp_path / "r2.mask", chunk_elems=64, progress=False, **kw)
    r3 = random_mask_like(src, tmp_path / "r3.mask", progress=False, **dict(kw, seed=8))
    assert r1.read_bytes() == r2.read_bytes()  # same seed, any chunking -> same file
    got, other = read_all(r1), read_all(r3)
    assert any((got[n] != other[n]).any() for n in got)
    total = sum(m.sum() for m in masks.values())
    assert sum(g.sum() for g in got.values()) == total
    with MaskFile.open(r1) as m:
        assert m.shapes == {n: tuple(v.shape) for n, v in masks.items()}
        assert m.meta["rule"] == {
            "kind": "random",
            "stratify": stratify,
            "seed": 7,
            "sampler": m.meta["rule"]["sampler"],
        }
        assert m.meta["n_set_total"] == total
    if stratify in ("tensor", "binade"):
        for n in masks:
            assert got[n].sum() == masks[n].sum(), n
    if stratify == "binade":
        for n in masks:
            field = (_words_of(base, n) >> 7) & 0xFF
            for f in np.unique(field):
                sel = field == f
                assert got[n].ravel()[sel].sum() == masks[n].ravel()[sel].sum(), (n, f)
    if stratify == "global":  # uniform over all weights: no preference for small |θ0|
        small = np.concatenate([masks[n].ravel() for n in masks])
        chosen = np.concatenate([got[n].ravel() for n in masks])
        assert abs(chosen[small].mean() - small.mean()) < 0.05


def test_random_mask_global_is_uniform_across_tensors(tmp_path: Path) -> None:
    """Global placement ignores where the source mask's bits are: all in one tensor here."""
    masks = {"a.weight": np.ones((40, 50), bool), "b.weight": np.zeros((40, 50), bool)}
    src = write_mask(tmp_path / "src.mask", masks)
    share = []
    for seed in range(20):
        got = read_all(random_mask_like(src, tmp_path / f"r{seed}.mask", seed=seed, progress=False))
        assert got["a.weight"].sum() + got["b.weight"].sum() == 2000
        share.append(got["a.weight"].sum() / 2000)
    # hypergeometric: mean 0.5, sd = sqrt(2000*0.5*0.5*2000/3999)/2000 ≈ 0.008
    assert abs(np.mean(share) - 0.5) < 0.01
    assert 0.002 < np.std(share) < 0.02


def test_random_mask_bad_input(tmp_path: Path) -> None:
    base = random_state(seed=1)
    src = write_mask(tmp_path / "src.mask", {"model.extra.weight": np.ones((4, 4), bool)})
    bpath = save_hf(tmp_path / "base", base)
    with pytest.raises(ConfigError, match="needs the base"):
        random_mask_like(src, tmp_path / "o.mask", seed=0, stratify="binade")
    with pytest.raises(ConfigError, match="unknown stratification"):
        random_mask_like(src, tmp_path / "o.mask", seed=0, stratify="layer")
    with pytest.raises(CheckpointError, match=r"model\.extra\.weight.*not in the base"):
        random_mask_like(src, tmp_path / "o.mask", seed=0, stratify="binade", base=bpath)
    name = "model.layers.0.mlp.up_proj.weight"
    wrong = write_mask(tmp_path / "w.mask", {name: np.ones((48, 33), bool)})
    with pytest.raises(CheckpointError, match=r"up_proj.*shape \[48, 32\].*\[48, 33\]"):
        random_mask_like(wrong, tmp_path / "o.mask", seed=0, stratify="binade", base=bpath)
    assert not (tmp_path / "o.mask").exists()
