"""Every report saves and loads back: same numbers, schema checked, provenance kept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from rlsparse_lib.analysis.absorption import AbsorptionReport, visible_vs_absorbed
from rlsparse_lib.analysis.closeness import ClosenessReport, closeness
from rlsparse_lib.analysis.dynamics import DynamicsReport, sparsity_dynamics
from rlsparse_lib.analysis.overlap import OverlapMatrix, PairOverlap, mask_overlap, overlap_matrix
from rlsparse_lib.analysis.rank import RankReport, update_ranks
from rlsparse_lib.diff.engine import diff_checkpoints
from rlsparse_lib.diff.report import DiffReport
from rlsparse_lib.errors import ConfigError, RlsparseError
from rlsparse_lib.io.synthetic import LlamaShape, fp32_master_update, write_pair
from rlsparse_lib.masks.ops import build_mask, random_mask_like

from .ckpt_factory import save_hf

SHAPE = LlamaShape(vocab=64, hidden=16, intermediate=32, layers=2, heads=2, kv_heads=1)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reports")
    for name, lr in (("a", 1e-6), ("b", 3e-6)):
        write_pair(
            root / f"{name}0", root / f"{name}1", SHAPE.tensors(), fp32_master_update(lr, 50)
        )
    build_mask(root / "a0", root / "a1", root / "a.mask", progress=False)
    random_mask_like(root / "a.mask", root / "r.mask", seed=0, progress=False)
    return root


def _same_frames(x: pd.DataFrame, y: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(
        x.reset_index(drop=True), y.reset_index(drop=True), check_dtype=False
    )


def _roundtrip(report, cls, path: Path):
    report.save_json(path)
    loaded = cls.load(path)
    assert loaded.provenance == json.loads(json.dumps(report.provenance))
    text = json.dumps(report.to_dict(), sort_keys=True)  # as text: NaN layers compare equal
    assert json.dumps(loaded.to_dict(), sort_keys=True) == text
    return loaded


def test_overlap_pair_and_matrix_roundtrip(root: Path, tmp_path: Path) -> None:
    pair = mask_overlap(root / "a.mask", root / "r.mask", base=root / "a0", progress=False)
    back = _roundtrip(pair, PairOverlap, tmp_path / "pair.json")
    assert back.summary() == pair.summary()
    _same_frames(back.breakdown("module"), pair.breakdown("module"))
    mat = overlap_matrix([root / "a.mask", root / "r.mask"], base=root / "a0", progress=False)
    back_m = _roundtrip(mat, OverlapMatrix, tmp_path / "matrix.json.gz")
    for metric in ("o", "jaccard", "n_both", "enrichment_binade"):
        _same_frames(back_m.frame(metric), mat.frame(metric))
    with pytest.raises(ConfigError, match="not a pair overlap"):
        PairOverlap.load(tmp_path / "matrix.json.gz")
    with pytest.raises(ConfigError, match="not an overlap matrix"):
        OverlapMatrix.load(tmp_path / "pair.json")


def test_rank_dynamics_closeness_roundtrip(root: Path, tmp_path: Path) -> None:
    rank = update_ranks(root / "a0", root / "a1", progress=False)
    back = _roundtrip(rank, RankReport, tmp_path / "rank.json")
    assert back.summary() == rank.summary()
    _same_frames(back.by_module(), rank.by_module())

    dyn = sparsity_dynamics(root / "a0", [root / "a1", root / "b1"], steps=[1, 2], progress=False)
    back_d = _roundtrip(dyn, DynamicsReport, tmp_path / "dyn.json")
    _same_frames(back_d.series(), dyn.series())
    assert back_d.fate() == dyn.fate()

    close = closeness(root / "a1", root / "b1", init=root / "a0", progress=False)
    back_c = _roundtrip(close, ClosenessReport, tmp_path / "close.json")
    assert back_c.summary() == close.summary()
    assert back_c.diff.headline() == close.diff.headline()


def test_absorption_and_diff_roundtrip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w = (0.05 * rng.standard_normal((40, 30))).astype(np.float32)
    step = (rng.choice([0, 1e-7, 1e-5, 1e-3], w.shape)).astype(np.float32)
    name = "model.layers.0.mlp.down_proj.weight"
    a = save_hf(tmp_path / "a", {name: torch.from_numpy(w)})
    b = save_hf(tmp_path / "b", {name: torch.from_numpy(w + step)})
    rep = visible_vs_absorbed(a, b, progress=False)
    back = _roundtrip(rep, AbsorptionReport, tmp_path / "abs.json")
    assert np.array_equal(back.binades, rep.binades) and np.array_equal(back.hist, rep.hist)
    assert back.summary() == rep.summary()

    diff = diff_checkpoints(a, b, progress=False)
    diff.save_json(tmp_path / "diff.json.gz")
    assert DiffReport.load(tmp_path / "diff.json.gz").headline() == diff.headline()


def test_bad_schema_refused_with_the_file_named(root: Path, tmp_path: Path) -> None:
    rank = update_ranks(root / "a0", root / "a1", progress=False)
    rank.save_json(tmp_path / "rank.json")
    for cls in (PairOverlap, OverlapMatrix, DynamicsReport, ClosenessReport, AbsorptionReport):
        with pytest.raises(RlsparseError, match=r"rank\.json.*rlsparse\.rank/1"):
            cls.load(tmp_path / "rank.json")
    with pytest.raises(ConfigError, match="diff/1"):
        DiffReport.load(tmp_path / "rank.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"junk\.json"):
        RankReport.load(tmp_path / "junk.json")
    with pytest.raises(ConfigError, match=r"missing\.json"):
        RankReport.load(tmp_path / "missing.json")


def test_save_is_atomic(root: Path, tmp_path: Path, monkeypatch) -> None:
    rank = update_ranks(root / "a0", root / "a1", progress=False)
    target = tmp_path / "rank.json"
    target.write_text("old")

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(json, "dumps", boom)
    with pytest.raises(RuntimeError):
        rank.save_json(target)
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]
