"""Precision attribution: binade sparsity, absorption thresholds, fp32 visible vs absorbed."""

from __future__ import annotations

import doctest
from pathlib import Path

import numpy as np
import pytest
import torch

from rlsparse_lib.analysis import absorption as precision
from rlsparse_lib.analysis.absorption import (
    absorption_table,
    precision_attribution,
    visible_vs_absorbed,
)
from rlsparse_lib.diff.engine import diff_checkpoints
from rlsparse_lib.errors import ConfigError
from rlsparse_lib.io.synthetic import to_bf16_words

from .ckpt_factory import save_hf

U = 1.5 * 2.0**-12


def absorbing_state(seed: int = 0):
    """θ0 with |w| spread over 2^-16 … 2^1, θ1 = bf16(θ0 ± u) for one step of u = 1.5·2^-12:
    weights with ½ULP(θ0) > u (|θ0| ≥ 2^-3 in bf16) absorb it, smaller ones move."""
    rng = np.random.default_rng(seed)
    state, tuned = {}, {}
    for i in range(3):
        name = f"model.layers.{i}.mlp.up_proj.weight"
        mag = 2.0 ** rng.uniform(-16, 1.5, (40, 50))
        w0 = (mag * rng.choice([-1, 1], mag.shape)).astype(np.float32)
        a = torch.from_numpy(w0).to(torch.bfloat16)
        upd = U * rng.choice([-1, 1], mag.shape)
        b = (a.double() + torch.from_numpy(upd)).to(torch.bfloat16)
        state[name], tuned[name] = a, b
    return state, tuned


def test_doctests() -> None:
    assert doctest.testmod(precision).failed == 0


def test_binade_sparsity_and_absorption_match_numpy(tmp_path: Path) -> None:
    state, tuned = absorbing_state()
    rep = diff_checkpoints(
        save_hf(tmp_path / "a", state), save_hf(tmp_path / "b", tuned), progress=False
    )
    a = np.concatenate([t.float().numpy().ravel() for t in state.values()]).astype(np.float64)
    b = np.concatenate([t.float().numpy().ravel() for t in tuned.values()]).astype(np.float64)
    e = np.floor(np.log2(np.abs(a)))
    chg = a != b
    tab = rep.binade_table().set_index("exponent")
    for ex in np.unique(e):
        sel = e == ex
        row = tab.loc[int(ex)]
        assert row["n_total"] == sel.sum() and row["n_changed"] == chg[sel].sum()
        assert row["ulp"] == 2.0 ** (ex - 7) and row["half_ulp"] == 2.0 ** (ex - 8)
        assert row["abs_lo"] == 2.0**ex
    assert tab["share_of_weights"].sum() == pytest.approx(1.0)
    # absorption: a step of u is absorbed exactly where ½ULP = 2^(e-8) > u, i.e. e >= -3
    assert not chg[e >= -3].any() and chg[e < -3].all()
    abs_tab = absorption_table(rep, [U, 1e-9]).set_index("update_size")
    r = abs_tab.loc[U]
    assert r["abs_threshold_bfloat16"] == 2.0**-3
    assert r["n_absorbing"] == (e >= -3).sum()
    assert r["share_of_unchanged"] == pytest.approx(1.0)  # every unchanged weight is explained
    assert r["sparsity_absorbing"] == 1.0 and r["sparsity_visible"] == 0.0
    tiny = abs_tab.loc[1e-9]  # absorbed where 2^(e-8) > 1e-9: e >= -21, all weights here
    assert tiny["abs_threshold_bfloat16"] == 2.0**-21
    assert tiny["n_absorbing"] == a.size and tiny["share_of_unchanged"] == 1.0
    h = rep.ulp_histogram()
    assert h["n"].sum() == chg.sum() and h["fraction"].sum() == pytest.approx(1.0)
    doc = precision_attribution(rep, [U])
    assert doc["absorption"][0]["n_absorbing"] == r["n_absorbing"]
    with pytest.raises(ConfigError):
        absorption_table(rep, [0.0])


def test_visible_vs_absorbed_matches_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    base, tuned = {}, {}
    for i, shape in enumerate([(30, 40), (17,), (8, 9)]):
        name = f"model.layers.{i}.mlp.down_proj.weight"
        w = (0.05 * rng.standard_normal(shape)).astype(np.float32)
        step = (rng.choice([0, 1e-7, 1e-5, 1e-3], shape) * rng.choice([-1, 1], shape)).astype(
            np.float32
        )
        base[name], tuned[name] = torch.from_numpy(w), torch.from_numpy(w + step)
    base["model.norm.weight"] = torch.ones(5, dtype=torch.bfloat16)  # not fp32: skipped
    tuned["model.norm.weight"] = torch.ones(5, dtype=torch.bfloat16)
    rep = visible_vs_absorbed(
        save_hf(tmp_path / "a", base),
        save_hf(tmp_path / "b", tuned),
        chunk_elems=64,
        progress=False,
    )
    assert [s["name"] for s in rep.skipped] == ["model.norm.weight"]
    upd_all = vis_all = 0
    for row in rep.tensors:
        a, b = base[row["name"]].numpy().ravel(), tuned[row["name"]].numpy().ravel()
        upd = a.view(np.uint32) != b.view(np.uint32)
        vis = to_bf16_words(a) != to_bf16_words(b)
        assert row["n_updated"] == upd.sum() and row["n_visible"] == vis.sum()
        assert not (vis & ~upd).any()
        upd_all += upd.sum()
        vis_all += vis.sum()
    s = rep.summary()
    assert (s["n_updated"], s["n_visible"]) == (upd_all, vis_all)
    assert 0 < s["n_absorbed"] < s["n_updated"]
    assert s["sparsity_bfloat16"] == pytest.approx(1 - vis_all / s["n_params"])
    bt = rep.binade_table()
    assert bt["n_updated"].sum() == upd_all and bt["n_total"].sum() == s["n_params"]
    hist = rep.ratio_histogram()
    # absorbed updates are below ½ ULP (log2 ratio < -1), visible ones mostly above
    assert hist.loc[hist["log2_ratio"] >= 0, "n_absorbed"].sum() == 0
    assert hist["n_absorbed"].sum() == s["n_absorbed"]
    assert hist["n_visible"].sum() == vis_all
    with pytest.raises(ConfigError, match="float32"):
        visible_vs_absorbed(tmp_path / "a", tmp_path / "b", include=("norm",), progress=False)
    with pytest.raises(ConfigError, match="cast dtype"):
        visible_vs_absorbed(tmp_path / "a", tmp_path / "b", dtype="float8", progress=False)
