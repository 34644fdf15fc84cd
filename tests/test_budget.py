"""The sync budget: every number against a naive whole-tensor numpy reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zstandard as zstd

from rlsparse_lib.cli import main
from rlsparse_lib.patches import create_patch, read_patch
from rlsparse_lib.patches.budget import cadence_table, sync_budget
from tests.test_patches import _bf16, _write


def _changed_at(
    rng: np.random.Generator, w: np.ndarray, p: float, rows: slice | None = None
) -> np.ndarray:
    """``w`` with a fraction ``p`` of its elements (optionally only in ``rows``) moved by 1 ULP."""
    out = w.copy()
    view = out if rows is None else out[rows]
    flat = view.reshape(-1)
    pos = rng.choice(flat.size, round(flat.size * p), replace=False)
    flat[pos] += np.uint16(1)
    if rows is not None:
        out[rows] = flat.reshape(view.shape)
    return out


@pytest.fixture()
def series(tmp_path: Path) -> tuple[list[Path], list[dict[str, np.ndarray]]]:
    rng = np.random.default_rng(2)
    w = _bf16(rng, 300 * 200).reshape(300, 200)  # 300 x 200: 3 x 2 blocks of 128, 2 64-KiB chunks
    b = _bf16(rng, 40000)
    c = _bf16(rng, 16).reshape(2, 2, 4)
    states = [{"w": w, "b": b, "c": c}]
    states.append({"w": _changed_at(rng, w, 0.01, slice(0, 100)), "b": b, "c": c})
    states.append({"w": states[1]["w"], "b": _changed_at(rng, b, 0.2), "c": c + np.uint16(1)})
    states.append({"w": _changed_at(rng, states[2]["w"], 0.3), "b": states[2]["b"], "c": c})
    paths = []
    for i, s in enumerate(states):
        spec = {k: ("bfloat16", v.shape, v.reshape(-1)) for k, v in s.items()}
        paths.append(_write(tmp_path / f"run/step_{i * 10:06d}", spec))
    return paths, states


def _naive_units(a: np.ndarray, b: np.ndarray) -> dict[str, tuple[int, int]]:
    ch = a != b
    out = {"element": (ch.size, int((~ch).sum())), "tensor": (1, int(not ch.any()))}
    flat = ch.reshape(-1)
    per = (64 << 10) // 2
    pad = np.zeros(-(-flat.size // per) * per, bool)
    pad[: flat.size] = flat
    ck = pad.reshape(-1, per).any(1)
    out["chunk_64KiB"] = (ck.size, int((~ck).sum()))
    if ch.ndim < 2:
        out.update({g: (0, 0) for g in ("row", "column", "block_128x128")})
        return out
    m = ch.reshape(ch.shape[0], -1)
    out["row"] = (m.shape[0], int((~m.any(1)).sum()))
    out["column"] = (m.shape[1], int((~m.any(0)).sum()))
    blocks = [
        m[i : i + 128, j : j + 128].any()
        for i in range(0, m.shape[0], 128)
        for j in range(0, m.shape[1], 128)
    ]
    out["block_128x128"] = (len(blocks), int(len(blocks) - sum(blocks)))
    return out


def test_budget_matches_naive(series, tmp_path: Path) -> None:
    paths, states = series
    bud = sync_budget([str(tmp_path / "run")], every=(1, 2), periods=(10.0,), progress=False)
    assert list(bud.steps["step_to"]) == [10, 20, 30]
    cctx = zstd.ZstdCompressor(level=3)
    for i, row in bud.steps.iterrows():
        s0, s1 = states[i], states[i + 1]
        n_changed = sum(int((s0[k] != s1[k]).sum()) for k in s0)
        n = sum(v.size for v in s0.values())
        assert row["n_changed"] == n_changed and row["n_elements"] == n
        assert row["sparsity_bitwise"] == (n - n_changed) / n
        assert row["bytes_raw"] == 6 * n_changed
        assert row["bytes_dense"] == 2 * n
        assert row["bytes_xor_zstd"] == sum(
            len(cctx.compress((s0[k] ^ s1[k]).tobytes())) for k in s0
        )
        # our codec: the blocks of a real patch (sizes read from its manifest)
        create_patch(paths[i], paths[i + 1], tmp_path / f"p{i}")
        blocks = [
            b["size"]
            for t in read_patch(tmp_path / f"p{i}").manifest["tensors"]
            for b in t["blocks"]
        ]
        assert row["bytes_rlsparse"] == sum(blocks)
        assert row["B_per_changed_rlsparse"] == sum(blocks) / n_changed
        g = bud.granularity[bud.granularity["step_to"] == row["step_to"]].set_index("granularity")
        want: dict[str, list[int]] = {}
        for k in s0:
            for name, (units, unchanged) in _naive_units(s0[k], s1[k]).items():
                want.setdefault(name, [0, 0])
                want[name][0] += units
                want[name][1] += unchanged
        for name, (units, unchanged) in want.items():
            assert (g.loc[name, "n_units"], g.loc[name, "n_unchanged"]) == (units, unchanged), name
            assert g.loc[name, "unchanged_fraction"] == unchanged / units
    # changes confined to rows 0-99 of w leave rows and blocks of the rest unchanged
    first = bud.granularity[bud.granularity["step_to"] == 10].set_index("granularity")
    assert first.loc["row", "n_unchanged"] >= 200 and first.loc["tensor", "n_unchanged"] == 2
    # cadence: a dense anchor every N syncs, the others at the mean sync
    dense = 2 * sum(v.size for v in states[-1].values())
    c = bud.cadence.set_index(["every", "codec"])
    raw = bud.steps["bytes_raw"].to_numpy()
    assert c.loc[(1, "raw"), "bytes_per_sync"] == dense
    assert c.loc[(2, "raw"), "bytes_per_sync"] == pytest.approx((dense + raw.mean()) / 2)
    assert c.loc[(2, "raw"), "bytes_per_s_T10"] == pytest.approx(
        c.loc[(2, "raw"), "bytes_per_sync"] / 10
    )


def test_cadence_table_by_hand() -> None:
    import pandas as pd

    steps = pd.DataFrame(
        {f"bytes_{c}": [10, 20, 30, 40] for c in ("raw", "rlsparse", "xor_zstd", "dense")}
    )
    t = cadence_table(steps, [3], [2.0], anchor_bytes=100).set_index("codec")
    assert t.loc["raw", "bytes_per_sync"] == (100 + 2 * 25) / 3
    assert t.loc["raw", "bytes_per_s_T2"] == 50 / 2


def test_budget_cli(series, tmp_path: Path, capsys) -> None:
    out = tmp_path / "budget.json"
    assert (
        main(["budget", str(tmp_path / "run"), "--json", str(out), "--every", "1", "2", "-q"]) == 0
    )
    text = capsys.readouterr().out
    assert "B per changed element" in text and "block_128x128" in text
    data = json.loads(out.read_text())
    assert data["schema"] == "rlsparse.budget/1"
    assert len(data["steps"]) == 3 and {r["every"] for r in data["cadence"]} == {1, 2}
    assert main(["budget", str(tmp_path / "run" / "step_000000")]) == 2


def test_k_step_sparsity_matches_naive(series, tmp_path: Path) -> None:
    from rlsparse_lib.patches.ksteps import k_step_sparsity

    _, states = series
    got = k_step_sparsity([str(tmp_path / "run")], ks=(10, 20, 30, 40), progress=False)
    assert sorted(zip(got["k"], got["step"], strict=True)) == [
        (10, 0),
        (10, 10),
        (10, 20),
        (20, 0),
        (20, 10),
        (30, 0),
    ]
    for _, r in got.iterrows():
        t, k = int(r["step"]), int(r["k"])
        a, b = states[t // 10], states[(t + k) // 10]
        same = sum(int((a[k] == b[k]).sum()) for k in a)
        n = sum(v.size for v in a.values())
        assert (r["n_elements"], r["n_unchanged"]) == (n, same)
        assert r["sparsity"] == same / n


def test_published_k_step_is_the_mean_of_the_csv(tmp_path: Path) -> None:
    from rlsparse_lib.patches.ksteps import KS, aggregate_k_step, published_k_step

    csv = tmp_path / "k.csv"
    csv.write_text(
        "model_family,model_size,seed,step,k,sparsity,iteration_num,learning_rate,experiment_type\n"
        "Qwen,1.5B,42,0,1,99.0,1,3e-06,\nQwen,1.5B,43,0,1,98.0,1,3e-06,\n"
        "Qwen,1.5B,42,0,2,97.0,1,3e-06,\n"
    )
    p = aggregate_k_step(csv).set_index("k")
    assert p.loc[1, "sparsity"] == pytest.approx(0.985) and p.loc[1, "n"] == 2
    assert p.loc[2, "model"] == "Qwen 1.5B"
    committed = published_k_step()  # the committed means of the real file
    assert list(committed.columns) == ["model", "learning_rate", "k", "sparsity", "n"]
    assert set(committed["k"]) == set(KS) and committed["sparsity"].between(0, 1).all()


def test_delta_sync_plots_draw_every_curve(series, tmp_path: Path) -> None:
    import pandas as pd

    from rlsparse_lib.patches.ksteps import k_step_sparsity
    from rlsparse_lib.plotting.delta_sync import plot_cadence, plot_k_step, plot_payload

    run = [str(tmp_path / "run")]
    ks = k_step_sparsity(run, ks=(10, 20), progress=False).assign(label="lr 1e-05")
    pub = pd.DataFrame(
        {"model": "Qwen 1.5B", "learning_rate": 3e-6, "k": [1, 2], "sparsity": [0.99, 0.98]}
    )
    fig = plot_k_step(ks, pub)
    assert [len(ax.lines) for ax in fig.axes] == [1, 2]
    bud = sync_budget(run, every=(1, 2), progress=False)
    fig = plot_payload(bud.steps.assign(label="a"))
    assert [len(ax.lines) for ax in fig.axes] == [3, 1]
    fig = plot_cadence(bud.cadence.assign(label="a"))
    assert len(fig.axes[0].lines) == 3 + 1
