"""One provenance builder for every report; canonical keys of the headline numbers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from rlsparse_lib import __version__
from rlsparse_lib.diff.engine import diff_checkpoints
from rlsparse_lib.errors import ConfigError
from rlsparse_lib.io.synthetic import LlamaShape, fp32_master_update, write_pair
from rlsparse_lib.provenance import build_provenance, canonical_json, config_hash, versions
from rlsparse_lib.rules import (
    PAPER_SPARSITY,
    sparsity,
    sparsity_column,
    tol_of_column,
    unchanged_column,
)

SHAPE = LlamaShape(vocab=64, hidden=16, intermediate=32, layers=2, heads=2, kv_heads=1)


def test_config_hash_is_canonical() -> None:
    a = {"tolerances": (1e-5, 0.0), "rule": {"tol": 0.0, "kind": "abs"}}
    b = {"rule": {"kind": "abs", "tol": 0.0}, "tolerances": [1e-5, 0.0]}
    assert canonical_json(a) == canonical_json(b) and config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash({**a, "tolerances": [1e-5]})
    assert len(config_hash(None)) == 64


def test_builder_fields() -> None:
    src = {"source": "x", "fingerprint": "f", "revision": None, "path": "/p"}
    p = build_provenance("rank", settings={"k": 1}, sources={"base": src, "none": None}, seconds=2)
    assert p["tool"] == f"rlsparse {__version__}" and p["tool_version"] == __version__
    assert p["report"] == "rank" and p["seconds"] == 2 and p["platform"]
    assert p["sources"] == {"base": {"source": "x", "fingerprint": "f", "revision": None}}
    assert p["config_hash"] == config_hash({"k": 1})
    v = versions()
    assert {"python", "numpy"} <= set(v) and ("torch" in v) == ("torch" in sys.modules)


def test_diff_report_provenance_keeps_its_keys(tmp_path: Path) -> None:
    write_pair(tmp_path / "a", tmp_path / "b", SHAPE.tensors(), fp32_master_update(1e-6, 10))
    rep = diff_checkpoints(tmp_path / "a", tmp_path / "b", progress=False)
    p = rep.provenance
    for key in ("tool", "inputs", "stored_dtypes", "compare_dtypes", "rules", "kernel", "versions"):
        assert key in p
    assert p["report"] == "diff" and len(p["config_hash"]) == 64
    assert p["sources"]["base"]["fingerprint"] == p["inputs"]["base"]["fingerprint"]
    again = diff_checkpoints(tmp_path / "a", tmp_path / "b", progress=False)
    assert again.provenance["config_hash"] == p["config_hash"]


def test_headline_canonical_keys(tmp_path: Path) -> None:
    write_pair(tmp_path / "a", tmp_path / "b", SHAPE.tensors(), fp32_master_update(1e-6, 10))
    rep = diff_checkpoints(tmp_path / "a", tmp_path / "b", progress=False)
    h = rep.headline()
    suffixes = [s for s, _ in rep.rules()]
    assert list(h)[:2] == ["n_params", "n_changed"]
    assert [k for k in h if k.startswith("sparsity_")] == [f"sparsity_{s}" for s in suffixes]
    assert PAPER_SPARSITY == "sparsity_tol_1e-05" and PAPER_SPARSITY in h
    for s in suffixes:
        assert h[sparsity_column(s)] == sparsity(h[unchanged_column(s)], h["n_params"])
    assert h["sparsity_bitwise"] == rep.sparsity
    assert h[sparsity_column("tol", 1e-5)] == rep.sparsity_at(1e-5)
    # the group and tensor tables use the same names
    assert PAPER_SPARSITY in rep.table().columns and PAPER_SPARSITY in rep.aggregate("module")


def test_column_helpers() -> None:
    assert sparsity_column("tol", 1e-5) == sparsity_column("tol_1e-5") == "sparsity_tol_1e-05"
    assert sparsity_column("abs", 0.0) == "sparsity_tol_0.0"
    assert unchanged_column("bitwise") == "n_unchanged_bitwise"
    assert sparsity_column("rel") == "sparsity_rel"
    assert tol_of_column("sparsity_tol_0.0001") == 1e-4 and tol_of_column("sparsity_rel") is None
    for bad in ("1e-05", "tol", "tol_x", "sparsity_1e-05"):
        with pytest.raises(ConfigError):
            sparsity_column(bad)
