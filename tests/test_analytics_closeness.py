"""Closeness of two finetunes from one init, against numpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rlsparse_lib.analysis.closeness import closeness
from rlsparse_lib.errors import ConfigError

from .ckpt_factory import pick, random_state, save_hf


def runs(seed: int = 0):
    """init; B = init + updates on a 30% subnetwork; A = B restricted to 2/3 of that subnetwork,
    with extra sub-1e-4 noise on some of it (θ_sub ≈ θ_full; noise can move A where B's update
    was absorbed, so A ⊄ B for a few weights)."""
    init = random_state(seed=seed)
    g = torch.Generator().manual_seed(seed)
    a, b = {}, {}
    for i, (name, t) in enumerate(init.items()):
        n = t.numel()
        sub = pick(n, int(0.3 * n), seed + i)
        step = torch.zeros(n)
        step[sub] = 2e-3 * torch.randn(sub.numel(), generator=g)
        full = (t.float().reshape(-1) + step).to(torch.bfloat16)
        part = t.reshape(-1).clone()
        keep = sub[: 2 * sub.numel() // 3]
        noise = (
            3e-5
            * torch.randn(keep.numel(), generator=g)
            * (torch.rand(keep.numel(), generator=g) < 0.5)
        )
        part[keep] = (full[keep].float() + noise).to(torch.bfloat16)
        b[name], a[name] = full.reshape(t.shape), part.reshape(t.shape)
    return init, a, b


def test_closeness_matches_numpy(tmp_path: Path) -> None:
    init, a, b = runs()
    pi, pa, pb = (save_hf(tmp_path / k, s) for k, s in (("i", init), ("a", a), ("b", b)))
    rep = closeness(pa, pb, init=pi, progress=False, workdir=tmp_path)
    s = rep.summary()
    fa = {k: v.float().numpy().ravel() for k, v in a.items()}
    fb = {k: v.float().numpy().ravel() for k, v in b.items()}
    words = lambda t: t.view(torch.int16).numpy().ravel()  # noqa: E731
    eq_bits = sum((words(a[k]) == words(b[k])).sum() for k in a)
    n = sum(v.size for v in fa.values())
    assert s["n_params"] == n
    assert s["equal"]["bitwise"] == pytest.approx(eq_bits / n)
    for tol in (1e-5, 1e-4):
        eq = sum(
            ((words(a[k]) == words(b[k])) | (np.abs(fb[k] - fa[k]).astype(np.float64) <= tol)).sum()
            for k in a
        )
        assert s["n_equal"][f"tol_{tol!r}"] == eq
    assert s["equal"]["tol_0.0001"] > s["equal"]["tol_1e-05"] > s["equal"]["bitwise"]
    ua = sum((words(a[k]) != words(init[k])).sum() for k in a)
    ub = sum((words(b[k]) != words(init[k])).sum() for k in a)
    u = s["updates"]
    assert (u["n_updated_a"], u["n_updated_b"]) == (ua, ub)
    outside = sum(
        ((words(a[k]) != words(init[k])) & (words(b[k]) == words(init[k]))).sum() for k in a
    )
    assert u["n_a_outside_b"] == outside and u["a_subset_of_b"] == (outside == 0)
    untouched = n - u["n_updated_either"]
    assert s["equal_among_updated"]["bitwise"] == pytest.approx(
        (eq_bits - untouched) / u["n_updated_either"]
    )
    per = rep.table.set_index("name")
    k = "model.layers.1.mlp.up_proj.weight"
    assert per.loc[k, "n_equal_bitwise"] == (words(a[k]) == words(b[k])).sum()
    assert per.loc[k, "equal_bitwise"] == pytest.approx((words(a[k]) == words(b[k])).mean())
    d = rep.to_dict()
    assert d["schema"] == "rlsparse.closeness/1" and len(d["per_tensor"]) == len(a)
    assert list(tmp_path.glob("rlsparse-closeness-*")) == []  # temporary masks removed


def test_closeness_without_init_and_bad_tolerance(tmp_path: Path) -> None:
    _init, a, b = runs(1)
    pa, pb = save_hf(tmp_path / "a", a), save_hf(tmp_path / "b", b)
    s = closeness(pa, pb, tolerances=(0.1,), progress=False).summary()
    assert set(s["equal"]) == {"bitwise", "tol_0.1"} and "updates" not in s
    assert s["equal"]["tol_0.1"] == 1.0 > s["equal"]["bitwise"]  # all |Δ| < 0.1 here
    with pytest.raises(ConfigError, match="> 0"):
        closeness(pa, pb, tolerances=(0.0,), progress=False)
