"""CLI of the analytics layer: JSON contracts, outputs, one-line errors, no partial outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rlsparse_lib.cli import main
from rlsparse_lib.io.maskfile import MaskFile

from .ckpt_factory import TINY, bump_bits, pick, random_state, save_hf


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    base = random_state(seed=0)
    out = {"base": save_hf(root / "base", base, shards=2)}
    prev = base
    for k, frac in enumerate((0.1, 0.2, 0.3), start=1):
        prev = {
            n: bump_bits(t, pick(t.numel(), int(frac * t.numel()), 10 * k + i))
            for i, (n, t) in enumerate(prev.items())
        }
        out[f"c{k}"] = save_hf(root / f"c{k}", prev)
    return out


def test_mask_build_info_algebra_random(ckpts, tmp_path: Path, capsys) -> None:
    m1, m2 = tmp_path / "m1.mask", tmp_path / "m2.mask"
    assert main(["mask", str(ckpts["base"]), str(ckpts["c1"]), "-o", str(m1), "-q"]) == 0
    assert (
        main(["mask", str(ckpts["base"]), str(ckpts["c3"]), "-o", str(m2), "--tol", "1e-5", "-q"])
        == 0
    )
    with MaskFile.open(m1) as a, MaskFile.open(m2) as b:
        assert a.meta["rule"] == {"kind": "bitwise", "tol": 0.0}
        assert b.meta["rule"] == {"kind": "abs", "tol": 1e-5}
        assert a.meta["sources"]["base"]["source"] == str(ckpts["base"])
    assert (
        main(["mask", "info", str(m1), "--json", str(tmp_path / "info.json"), "--by", "layer"]) == 0
    )
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["n_total"] == TINY.n_params and [r["layer"] for r in info["by_layer"]] == [
        0,
        1,
        None,
    ]
    printed = capsys.readouterr().out
    assert "density" in printed and str(m1) in printed
    assert main(["mask", "and", str(m1), str(m2), "-o", str(tmp_path / "and.mask"), "-q"]) == 0
    assert main(["mask", "not", str(m1), "-o", str(tmp_path / "not.mask"), "-q"]) == 0
    with MaskFile.open(tmp_path / "not.mask") as n, MaskFile.open(m1) as a:
        assert n.meta["n_set_total"] == a.meta["n_total"] - a.meta["n_set_total"]
    rnd = tmp_path / "r.mask"
    assert (
        main(
            [
                "mask",
                "random",
                str(m1),
                "-o",
                str(rnd),
                "--seed",
                "3",
                "--stratify",
                "binade",
                "--base",
                str(ckpts["base"]),
                "-q",
            ]
        )
        == 0
    )
    with MaskFile.open(rnd) as r, MaskFile.open(m1) as a:
        assert r.meta["n_set"] == a.meta["n_set"]
        assert r.meta["rule"]["seed"] == 3


def test_mask_errors_are_one_line_without_outputs(ckpts, tmp_path: Path, capsys) -> None:
    out = tmp_path / "x.mask"
    cases = [
        (["mask", str(ckpts["base"]), str(tmp_path / "missing"), "-o", str(out)], "no such file"),
        (["mask", str(ckpts["base"]), str(ckpts["c1"])], "-o PATH"),
        (["mask", "random", str(tmp_path / "nope.mask"), "-o", str(out)], "--seed is required"),
        (
            [
                "mask",
                str(ckpts["base"]),
                str(ckpts["c1"]),
                "-o",
                str(out),
                "--rule",
                "bitwise",
                "--tol",
                "1e-5",
            ],
            "no meaning",
        ),
    ]
    for argv, msg in cases:
        assert main([*argv, "-q"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("rlsparse mask: error:") and msg in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_overlap_json_contract(ckpts, tmp_path: Path, capsys) -> None:
    masks = []
    for k in (1, 2, 3):
        masks.append(tmp_path / f"m{k}.mask")
        main(["mask", str(ckpts["base"]), str(ckpts[f"c{k}"]), "-o", str(masks[-1]), "-q"])
    js, csv = tmp_path / "o.json", tmp_path / "o.csv"
    assert (
        main(
            [
                "overlap",
                str(masks[0]),
                str(masks[2]),
                "--json",
                str(js),
                "--csv",
                str(csv),
                "--base",
                str(ckpts["base"]),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "o1 = |I1∩I2|/|I1|" in printed and "per tensor × |θ0| binade" in printed
    d = json.loads(js.read_text())
    for key in ("n_params", "n1", "n2", "n_both"):
        assert isinstance(d[key], int)
    assert d["n_params"] == TINY.n_params
    with MaskFile.open(masks[0]) as a, MaskFile.open(masks[2]) as c:
        fa = np.concatenate([a.mask(n).ravel() for n in a.names])
        fc = np.concatenate([c.mask(n).ravel() for n in a.names])
    assert (d["n1"], d["n2"], d["n_both"]) == (fa.sum(), fc.sum(), (fa & fc).sum())
    assert d["o1"] == pytest.approx(d["n_both"] / d["n1"]) and d["o2"] == pytest.approx(
        d["n_both"] / d["n2"]
    )
    assert d["o1_random"] == pytest.approx(d["n2"] / d["n_params"])
    assert d["o2_random"] == pytest.approx(d["n1"] / d["n_params"])
    assert d["jaccard"] == pytest.approx(d["n_both"] / (fa | fc).sum())
    assert d["baselines"]["binade"]["expected_both"] > 0
    assert csv.read_text().startswith("name,layer,module,group,numel,n1,n2,n_both")
    js3, heat = tmp_path / "o3.json", tmp_path / "figs" / "heat"
    assert (
        main(
            [
                "overlap",
                *map(str, masks),
                "--labels",
                "a",
                "b",
                "c",
                "--json",
                str(js3),
                "--heatmap",
                str(heat),
                "-q",
            ]
        )
        == 0
    )
    d3 = json.loads(js3.read_text())
    assert d3["labels"] == ["a", "b", "c"] and len(d3["pairs"]) == 3
    assert np.asarray(d3["matrices"]["o"]).shape == (3, 3)
    assert (heat.parent / "heat.png").exists() and (heat.parent / "heat.pdf").exists()


def test_overlap_error_leaves_no_json(tmp_path: Path, capsys) -> None:
    from .test_analytics_masks import SHAPES, random_bool, write_mask

    a = write_mask(tmp_path / "a.mask", random_bool(SHAPES, 0.5, 0))
    b = write_mask(tmp_path / "b.mask", random_bool({"w": (2, 2)}, 0.5, 0))
    assert main(["overlap", str(a), str(b), "--json", str(tmp_path / "o.json"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rlsparse overlap: error:") and "different tensors" in err
    assert not (tmp_path / "o.json").exists()


def test_rank_dynamics_closeness_json(ckpts, tmp_path: Path, capsys) -> None:
    rj = tmp_path / "rank.json"
    assert (
        main(
            [
                "rank",
                str(ckpts["base"]),
                str(ckpts["c1"]),
                "--json",
                str(rj),
                "--no-lm-head",
                "--plot",
                str(tmp_path / "rank"),
            ]
        )
        == 0
    )
    d = json.loads(rj.read_text())
    names = [m["name"] for m in d["matrices"]]
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names
    assert all(isinstance(m["rank"], int) and m["rank"] <= m["max_rank"] for m in d["matrices"])
    assert "mean rank" in capsys.readouterr().out
    dj, dc = tmp_path / "dyn.json", tmp_path / "dyn.csv"
    args = ["dynamics", str(ckpts["base"]), str(ckpts["c1"]), str(ckpts["c2"]), str(ckpts["c3"])]
    assert (
        main(
            [
                *args,
                "--steps",
                "1",
                "2",
                "3",
                "--json",
                str(dj),
                "--csv",
                str(dc),
                "--final-mask",
                str(tmp_path / "final.mask"),
            ]
        )
        == 0
    )
    d = json.loads(dj.read_text())
    assert d["schema"] == "rlsparse.dynamics/1" and [c["step"] for c in d["checkpoints"]] == [
        1,
        2,
        3,
    ]
    assert d["fate"]["final"] == pytest.approx(1 - d["checkpoints"][-1]["sparsity"])
    assert "fate: never updated" in capsys.readouterr().out
    with MaskFile.open(tmp_path / "final.mask") as m:
        assert m.meta["n_set_total"] == d["checkpoints"][-1]["n_changed"]
    cj = tmp_path / "close.json"
    assert (
        main(
            [
                "closeness",
                str(ckpts["c2"]),
                str(ckpts["c3"]),
                "--init",
                str(ckpts["base"]),
                "--json",
                str(cj),
            ]
        )
        == 0
    )
    d = json.loads(cj.read_text())
    assert set(d["equal"]) == {"bitwise", "tol_1e-05", "tol_0.0001"}
    assert d["updates"]["a_subset_of_b"] is True  # c3 only adds changes to c2
    assert "A ⊆ B" in capsys.readouterr().out
