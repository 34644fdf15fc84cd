"""Dynamics over a checkpoint series against a numpy reference; one pass; masks; bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rlsparse_lib.analysis.dynamics import sparsity_dynamics
from rlsparse_lib.errors import ConfigError
from rlsparse_lib.io.checkpoint import TensorReader
from rlsparse_lib.io.maskfile import MaskFile
from rlsparse_lib.rules import MaskRule

from .ckpt_factory import bump_bits, pick, random_state, save_hf

K = 4


def series(seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """θ0 … θK: each step bumps 8% of the weights by 1–3 ULPs and reverts a third of the weights
    that differ from θ0 back to their θ0 value (so some updates cancel)."""
    states = [random_state(seed=seed)]
    g = torch.Generator().manual_seed(seed)
    for k in range(1, K + 1):
        nxt = {}
        for i, (name, t) in enumerate(states[-1].items()):
            u = bump_bits(t, pick(t.numel(), t.numel() * 8 // 100, 100 * k + i), k=1 + k % 3)
            differs = (u.view(torch.int16) != states[0][name].view(torch.int16)).reshape(-1)
            revert = differs & (torch.rand(t.numel(), generator=g) < 1 / 3)
            flat = u.reshape(-1).clone()
            flat[revert] = states[0][name].reshape(-1)[revert]
            nxt[name] = flat.reshape(t.shape)
        states.append(nxt)
    return states


def changed(a: torch.Tensor, b: torch.Tensor, rule: MaskRule) -> np.ndarray:
    bits = (a.view(torch.int16) != b.view(torch.int16)).numpy().ravel()
    if rule.kind == "abs":
        d = (b.float() - a.float()).abs().double().numpy().ravel()
        bits &= ~(d <= rule.tol)
    return bits


def reference(states, rule: MaskRule) -> dict:
    names = list(states[0])
    m = [np.concatenate([changed(states[0][n], s[n], rule) for n in names]) for s in states[1:]]
    st = [
        np.concatenate([changed(states[k - 1][n], states[k][n], rule) for n in names])
        for k in range(1, K + 1)
    ]
    n = m[0].size
    union = np.logical_or.accumulate(np.stack(m), axis=0)
    return {
        "n": n,
        "n_changed": [int(x.sum()) for x in m],
        "n_step": [int(x.sum()) for x in st],
        "n_union": [int(x.sum()) for x in union],
        "n_outside_final": [int((x & ~m[-1]).sum()) for x in m],
        "step_overlap": [(st[k] & st[k + 1]).sum() / st[k].sum() for k in range(K - 1)],
        "final": m[-1],
        "union": union[-1],
    }


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[list, list[Path]]:
    root = tmp_path_factory.mktemp("series")
    states = series()
    return states, [save_hf(root / f"c{k}", s, shards=1 + k % 2) for k, s in enumerate(states)]


@pytest.mark.parametrize("rule", [MaskRule(), MaskRule("abs", 1e-5)])
def test_series_matches_numpy(saved, tmp_path: Path, rule: MaskRule) -> None:
    states, paths = saved
    dyn = sparsity_dynamics(
        paths[0],
        paths[1:],
        rule=rule,
        steps=[10, 20, 30, 40],
        final_mask_out=tmp_path / "final.mask",
        union_mask_out=tmp_path / "union.mask",
        chunk_elems=256,
        progress=False,
    )
    ref = reference(states, rule)
    s = dyn.series()
    assert dyn.n_params == ref["n"]
    for key in ("n_changed", "n_step", "n_union", "n_outside_final"):
        assert list(s[key]) == ref[key], key
    assert s["sparsity"].tolist() == pytest.approx([1 - c / ref["n"] for c in ref["n_changed"]])
    assert s["step_overlap"].tolist()[:-1] == pytest.approx(ref["step_overlap"])
    assert ref["n_outside_final"][1] > 0  # reverts happened
    f = dyn.fate()
    assert f["n_final"] == ref["final"].sum()
    assert f["n_cancelled"] == (ref["union"] & ~ref["final"]).sum()
    assert f["n_never"] == (~ref["union"]).sum()
    assert f["never"] + f["cancelled"] + f["final"] == pytest.approx(1.0)
    for path, want in (
        (tmp_path / "final.mask", ref["final"]),
        (tmp_path / "union.mask", ref["union"]),
    ):
        with MaskFile.open(path) as m:
            got = np.concatenate([m.mask(n).ravel() for n in states[0]])
            assert m.meta["rule"]["kind"] == rule.kind
        np.testing.assert_array_equal(got, want)
    if rule.kind == "bitwise":  # the per-k statistics carry the whole tolerance grid
        tol = [
            int(
                sum((~changed(states[0][n], st[n], MaskRule("abs", 1e-5))).sum() for n in states[0])
            )
            for st in states[1:]
        ]
        assert (s["sparsity_tol_1e-05"] * ref["n"]).round().astype(int).tolist() == tol
    assert s["step"].tolist() == [10, 20, 30, 40]
    fm = dyn.fate_by("module").set_index("module")
    assert fm["numel"].sum() == ref["n"]
    d = dyn.to_dict()
    assert d["schema"] == "rlsparse.dynamics/1" and len(d["checkpoints"]) == K
    assert d["tensors"][0]["n_changed"] == [int(v) for v in dyn.counts["n_changed"][0]]


def test_chunking_does_not_matter_and_each_checkpoint_is_read_once(saved, monkeypatch) -> None:
    _states, paths = saved
    calls: list[tuple[str, str, int]] = []
    orig = TensorReader.words

    def spy(self, name, start, stop):
        calls.append((self.ckpt.source, name, start))
        return orig(self, name, start, stop)

    monkeypatch.setattr(TensorReader, "words", spy)
    a = sparsity_dynamics(paths[0], paths[1:], chunk_elems=512, progress=False)
    # one read per (checkpoint, tensor, chunk): K + 1 checkpoints, never K separate diffs
    assert len(calls) == len(set(calls))
    assert {c[0] for c in calls} == {str(p) for p in paths}
    b = sparsity_dynamics(paths[0], paths[1:], progress=False)
    for key in a.counts:
        np.testing.assert_array_equal(a.counts[key], b.counts[key])


def test_inconsistent_series_is_reported(tmp_path: Path) -> None:
    states = series(seed=3)[:3]
    states[1] = dict(states[1])
    states[1]["lm_head.weight"] = states[1]["lm_head.weight"][:-1]  # resized in the middle
    del states[1]["model.norm.weight"]
    paths = [save_hf(tmp_path / f"c{k}", s) for k, s in enumerate(states)]
    dyn = sparsity_dynamics(paths[0], paths[1:], progress=False)
    reasons = {s["name"]: s["reason"] for s in dyn.skipped}
    assert "shape [63, 32] in checkpoint 1" in reasons["lm_head.weight"]
    assert "missing in checkpoint 1" in reasons["model.norm.weight"]
    assert "lm_head.weight" not in dyn.names
    with pytest.raises(ConfigError, match="at least one checkpoint"):
        sparsity_dynamics(paths[0], [], progress=False)
    with pytest.raises(ConfigError, match="2 checkpoints but 1 labels"):
        sparsity_dynamics(paths[0], paths[1:], labels=["x"], progress=False)
