"""Overlap of masks against numpy references, the paper's Table 4, and stratified baselines."""

from __future__ import annotations

import doctest
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rlsparse_lib.analysis import overlap as overlap_mod
from rlsparse_lib.analysis.overlap import (
    count_overlaps,
    hypergeom_var,
    mask_overlap,
    overlap_matrix,
)
from rlsparse_lib.errors import ConfigError
from rlsparse_lib.masks.ops import MaskError

from .ckpt_factory import save_hf
from .test_analytics_masks import SHAPES, random_bool, write_mask

TOP_LEVEL = ("n_params", "n1", "n2", "n_both", "o1", "o2", "jaccard", "o1_random", "o2_random")


def test_doctests() -> None:
    assert doctest.testmod(overlap_mod).failed == 0


@pytest.mark.parametrize("chunk_bytes", [8, 1 << 24])
def test_pair_matches_numpy(tmp_path: Path, chunk_bytes: int) -> None:
    shapes = dict(SHAPES, **{"model.embed_tokens.weight": (101, 67)})  # 847 bytes: words + tail
    a, b = random_bool(shapes, 0.3, 1), random_bool(shapes, 0.6, 2)
    pa, pb = write_mask(tmp_path / "a.mask", a), write_mask(tmp_path / "b.mask", b)
    po = mask_overlap(pa, pb, chunk_bytes=chunk_bytes, progress=False)
    fa = np.concatenate([a[n].ravel() for n in shapes])
    fb = np.concatenate([b[n].ravel() for n in shapes])
    n, n1, n2, nb = fa.size, fa.sum(), fb.sum(), (fa & fb).sum()
    s = po.summary()
    assert (s["n_params"], s["n1"], s["n2"], s["n_both"]) == (n, n1, n2, nb)
    assert s["o1"] == pytest.approx(nb / n1) and s["o2"] == pytest.approx(nb / n2)
    assert s["jaccard"] == pytest.approx(nb / (fa | fb).sum())
    assert s["o1_random"] == pytest.approx(n2 / n) and s["o2_random"] == pytest.approx(n1 / n)
    p, q = n1 / n, n2 / n
    assert s["jaccard_random"] == pytest.approx(p * q / (p + q - p * q))
    g = s["baselines"]["global"]
    assert g["expected_both"] == pytest.approx(n1 * n2 / n)
    assert g["o1"] == pytest.approx(s["o1_random"]) and g["jaccard"] == pytest.approx(
        s["jaccard_random"]
    )
    exp_t = sum(a[k].sum() * b[k].sum() / a[k].size for k in shapes)
    assert s["baselines"]["tensor"]["expected_both"] == pytest.approx(exp_t)
    assert s["baselines"]["tensor"]["enrichment"] == pytest.approx(nb / exp_t)
    assert s["baselines"]["binade"] is None
    per = po.breakdown("tensor").set_index("name")
    for k in shapes:
        assert per.loc[k, "n_both"] == (a[k] & b[k]).sum()
        if a[k].any():
            assert per.loc[k, "o1"] == pytest.approx((a[k] & b[k]).sum() / a[k].sum())
    mod = po.breakdown("module").set_index("module")
    assert mod.loc["embed_tokens", "n1"] == a["model.embed_tokens.weight"].sum()
    d = po.to_dict()
    assert d["schema"] == "rlsparse.overlap/1"
    assert all(isinstance(d[k], int) for k in ("n_params", "n1", "n2", "n_both"))
    assert set(TOP_LEVEL) <= set(d) and {"per_tensor", "per_layer", "per_module"} <= set(d)
    json.dumps(d)


def test_hypergeometric_variance_by_enumeration() -> None:
    """Var |A∩B| with A fixed (n1 of n) and B uniform among all n2-subsets, enumerated."""
    for n, n1, n2 in ((6, 2, 3), (7, 3, 3), (5, 5, 2), (4, 1, 1)):
        a = set(range(n1))
        inter = [len(a & set(c)) for c in itertools.combinations(range(n), n2)]
        assert float(hypergeom_var(n, n1, n2)) == pytest.approx(np.var(inter))
        assert float(np.mean(inter)) == pytest.approx(n1 * n2 / n)


@pytest.mark.parametrize(
    ("s1", "s2", "o1", "o2", "inter"),
    [
        (0.633, 0.633, 0.605, 0.606, 0.222),  # seed 42 vs seed 123
        (0.633, 0.854, 0.267, 0.671, 0.098),  # Tulu data vs PRIME data
        (0.871, 0.770, 0.591, 0.332, 0.076),  # DPO vs PRIME
    ],
)
def test_paper_table4_internal_consistency(tmp_path: Path, s1, s2, o1, o2, inter) -> None:
    """Masks with the paper's sparsities and implied intersection reproduce its Table 4 row:
    random o1 = 1 − s2, random o2 = 1 − s1, o1(1 − s1) = o2(1 − s2) = |I1∩I2|/n."""
    n = 200_000
    n1, n2 = round((1 - s1) * n), round((1 - s2) * n)
    nb = round(o1 * n1)  # the intersection implied by the paper's o1
    rng = np.random.default_rng(0)
    perm = rng.permutation(n)
    a = np.zeros(n, bool)
    b = np.zeros(n, bool)
    a[perm[:n1]] = True
    b[perm[:nb]] = True
    b[perm[n1 : n1 + n2 - nb]] = True
    pa = write_mask(tmp_path / "a.mask", {"model.layers.0.mlp.up_proj.weight": a.reshape(400, 500)})
    pb = write_mask(tmp_path / "b.mask", {"model.layers.0.mlp.up_proj.weight": b.reshape(400, 500)})
    s = mask_overlap(pa, pb, progress=False).summary()
    assert s["o1_random"] == pytest.approx(1 - s2, abs=1e-5)
    assert s["o2_random"] == pytest.approx(1 - s1, abs=1e-5)
    assert 100 * s["o1"] == pytest.approx(100 * o1, abs=0.05)
    assert 100 * s["o2"] == pytest.approx(100 * o2, abs=0.5)  # the paper rounds to 0.1 pt
    assert s["o1"] * (1 - s1) == pytest.approx(s["o2"] * (1 - s2), rel=1e-4)
    assert s["intersection_fraction"] == pytest.approx(inter, abs=5e-4)


def _two_population_pair(tmp_path: Path, seed: int):
    """θ0 with small (|w|~1e-4) and large (|w|~1e-1) weights; two masks drawn independently,
    each favouring small weights (p = 0.6 vs 0.05)."""
    rng = np.random.default_rng(seed)
    names = [f"model.layers.{i}.mlp.up_proj.weight" for i in range(3)]
    state, ma, mb = {}, {}, {}
    for name in names:
        small = rng.random((64, 64)) < 0.5
        mag = np.where(small, 1e-4, 1e-1) * (1 + rng.random((64, 64)))
        state[name] = torch.from_numpy((mag * rng.choice([-1, 1], (64, 64))).astype(np.float32)).to(
            torch.bfloat16
        )
        prob = np.where(small, 0.6, 0.05)
        ma[name] = rng.random((64, 64)) < prob
        mb[name] = rng.random((64, 64)) < prob
    base = save_hf(tmp_path / "base", state)
    return (
        base,
        write_mask(tmp_path / "a.mask", ma),
        write_mask(tmp_path / "b.mask", mb),
        state,
        ma,
        mb,
    )


def test_binade_baseline_removes_magnitude_effect(tmp_path: Path) -> None:
    base, pa, pb, state, ma, mb = _two_population_pair(tmp_path, 0)
    s = mask_overlap(pa, pb, base=base, progress=False, chunk_elems=512).summary()
    bl = s["baselines"]
    assert bl["global"]["enrichment"] > 1.5 and bl["global"]["z"] > 10  # "they overlap!"
    assert bl["tensor"]["enrichment"] > 1.5
    assert abs(bl["binade"]["enrichment"] - 1) < 0.08 and abs(bl["binade"]["z"]) < 4
    # the binade expectation equals Σ n1_s n2_s / N_s over (tensor, exponent field) strata
    exp = 0.0
    for name, t in state.items():
        field = (t.view(torch.int16).numpy().view(np.uint16).ravel() >> 7) & 0xFF
        for f in np.unique(field):
            sel = field == f
            exp += ma[name].ravel()[sel].sum() * mb[name].ravel()[sel].sum() / sel.sum()
    assert bl["binade"]["expected_both"] == pytest.approx(exp)
    assert "enrichment_binade" in mask_overlap(pa, pb, base=base, progress=False).breakdown("layer")


def test_matrix_of_three_masks(tmp_path: Path) -> None:
    masks = [random_bool(SHAPES, p, s) for p, s in ((0.3, 1), (0.5, 2), (0.7, 3))]
    paths = [write_mask(tmp_path / f"{i}.mask", m) for i, m in enumerate(masks)]
    mat = overlap_matrix(paths, ["s1", "s2", "s3"], progress=False)
    o = mat.frame("o")
    assert list(o.index) == ["s1", "s2", "s3"] and np.allclose(np.diag(o), 1)
    flat = [np.concatenate([m[n].ravel() for n in SHAPES]) for m in masks]
    for i, j in itertools.permutations(range(3), 2):
        assert o.iat[i, j] == pytest.approx((flat[i] & flat[j]).sum() / flat[i].sum())
        assert mat.frame("o_random").iat[i, j] == pytest.approx(flat[j].mean())
        assert mat.frame("jaccard").iat[i, j] == pytest.approx(
            (flat[i] & flat[j]).sum() / (flat[i] | flat[j]).sum()
        )
    assert mat.pair(2, 0).summary()["o1"] == pytest.approx(o.iat[2, 0])
    d = mat.to_dict()
    assert len(d["pairs"]) == 3 and set(TOP_LEVEL) <= set(d["pairs"][0])
    assert d["matrices"]["o"][0][1] == pytest.approx(o.iat[0, 1])
    assert "enrichment_binade" not in d["matrices"]
    with pytest.raises(ConfigError, match="needs the base"):
        mat.frame("enrichment_binade")


def test_bad_input(tmp_path: Path) -> None:
    a = write_mask(tmp_path / "a.mask", random_bool(SHAPES, 0.5, 1))
    b = write_mask(tmp_path / "b.mask", random_bool({"x.weight": (3, 3)}, 0.5, 1))
    with pytest.raises(ConfigError, match="at least two"):
        count_overlaps([a], progress=False)
    with pytest.raises(MaskError, match="different tensors"):
        count_overlaps([a, b], progress=False)
    with pytest.raises(ConfigError, match="distinct labels"):
        count_overlaps([a, a], ["x", "x"], progress=False)
    # the same file twice gets distinct default labels and overlaps fully
    s = mask_overlap(a, a, progress=False).summary()
    assert s["o1"] == s["o2"] == s["jaccard"] == 1.0
    assert math.isclose(s["o1_random"], s["n1"] / s["n_params"])


def test_strata_histogram_matches_numpy() -> None:
    from rlsparse_lib.masks import bitops

    rng = np.random.default_rng(4)
    n = 1003  # not a multiple of 8
    words = rng.integers(0, 1 << 16, n, dtype=np.uint16)
    bits = rng.random((3, n)) < 0.4
    packed = np.stack([np.packbits(b, bitorder="little") for b in bits])
    hist = np.zeros((bitops.N_STRATA, 8), np.int64)
    bitops.strata_histogram(words, "bfloat16", packed, hist)
    g = (words >> 7) & 0xFF
    assert (bitops.strata_marginals(hist) == np.bincount(g, minlength=256)).all()
    for members in ((0,), (2,), (0, 1), (1, 2), (0, 1, 2)):
        sel = np.logical_and.reduce([bits[r] for r in members])
        assert (bitops.strata_marginals(hist, *members) == np.bincount(g[sel], minlength=256)).all()
    with pytest.raises(ConfigError, match="at most 8"):
        bitops.strata_histogram(words, "bfloat16", np.zeros((9, 126), np.uint8), hist)


def test_binade_baseline_for_every_pair_of_three(tmp_path: Path) -> None:
    base, pa, pb, state, ma, mb = _two_population_pair(tmp_path, 1)
    mc = {k: ~v for k, v in ma.items()}
    pc = write_mask(tmp_path / "c.mask", mc)
    mat = overlap_matrix([pa, pb, pc], base=base, progress=False, chunk_elems=1024)
    for (i, j), (x, y) in {(0, 1): (ma, mb), (1, 2): (mb, mc), (0, 2): (ma, mc)}.items():
        exp = 0.0
        for name, t in state.items():
            field = (t.view(torch.int16).numpy().view(np.uint16).ravel() >> 7) & 0xFF
            for f in np.unique(field):
                sel = field == f
                exp += x[name].ravel()[sel].sum() * y[name].ravel()[sel].sum() / sel.sum()
        assert mat.pair(i, j).summary()["baselines"]["binade"]["expected_both"] == pytest.approx(
            exp
        )
    assert mat.frame("n_both").iat[0, 2] == 0  # a mask and its complement
    with pytest.raises(ConfigError, match="at most 8 masks"):
        count_overlaps([pa] * 9, [str(i) for i in range(9)], base=base, progress=False)
