"""The pair-report notebook in batch over a registry (`rlsparse run 10 --pairs`) and as one HTML
file (`rlsparse report`); headlines are checked against a naive whole-tensor count."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from rlsparse_lib.cli import main
from rlsparse_lib.errors import ConfigError
from rlsparse_lib.experiments.pair_report import parse_tolerances, registry_rows
from tests.ckpt_factory import bump_bits, pick, random_state, save_hf


def _pair(root: Path, seed: int, k: int) -> tuple[Path, Path]:
    state = random_state(seed=seed)
    tuned = {n: bump_bits(v, pick(v.numel(), k, i)) for i, (n, v) in enumerate(state.items())}
    return save_hf(root / "base", state), save_hf(root / "tuned", tuned)


def _naive_sparsity(base: Path, tuned: Path) -> float:
    from safetensors.torch import load_file

    a, b = load_file(str(base / "model.safetensors")), load_file(str(tuned / "model.safetensors"))
    same = sum(int((a[n].view(torch.int16) == b[n].view(torch.int16)).sum()) for n in a)
    return same / sum(t.numel() for t in a.values())


def test_parse_tolerances_and_registry_rows() -> None:
    assert parse_tolerances("0, 1e-8,1e-5") == (0.0, 1e-8, 1e-5)
    for bad in ("", "x", "-1"):
        with pytest.raises(ConfigError, match="TOLERANCES"):
            parse_tolerances(bad)
    rows = registry_rows("allenai/Llama-3.1-Tulu-3-8B-SFT@main", "allenai/Llama-3.1-Tulu-3-8B-DPO")
    assert [(r["registry"], r["id"]) for r in rows] == [("paper", "tulu3-8b-dpo")]
    assert rows[0]["reported_table1"] == 81.4
    assert registry_rows("a/b", "c/d") == []


@pytest.mark.slow
def test_batch_over_a_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base, tuned = _pair(tmp_path / "p1", seed=1, k=7)
    registry = tmp_path / "family.yaml"
    pairs = [
        {"id": "tiny", "base": "p1/base", "tuned": "p1/tuned"},
        {"id": "offline", "base": "org/base", "tuned": "org/tuned"},
        {"id": "no-id", "base": "org/base", "tuned": None},
    ]
    registry.write_text(yaml.safe_dump({"source": "test", "rl": pairs}))
    out = tmp_path / "out"
    code = main(["run", "10", "--pairs", str(registry), "--out-root", str(out), "-q"])
    assert code == 1  # not every pair was reported
    printed = capsys.readouterr().out
    batch = out / "data" / "runs" / "pairs" / "family"
    rows = {r["id"]: r for r in json.loads((batch / "summary.json").read_text())}
    assert rows["tiny"]["status"] == "done"
    assert rows["tiny"]["sparsity_bitwise"] == _naive_sparsity(base, tuned)
    assert rows["offline"]["status"].startswith("unreachable:")
    assert "HF_HUB_OFFLINE" in rows["offline"]["status"]
    assert rows["no-id"]["status"] == "no public hub id"
    for pair_id in rows:
        assert f"{pair_id}: " in printed
    html = (batch / "tiny" / "report.html").read_text()
    assert "Pair report" in html and html.count("data:image/png;base64") >= 4


@pytest.mark.slow
def test_report_command_writes_one_html(tmp_path: Path) -> None:
    base, tuned = _pair(tmp_path, seed=2, k=3)
    out, keep = tmp_path / "r.html", tmp_path / "keep"
    args = ["report", str(base), str(tuned), "-o", str(out), "--out-root", str(keep), "-q"]
    assert main([*args, "--compare-dtype", "bfloat16", "--tol", "0", "1e-5"]) == 0
    record = json.loads((keep / "data/results/10_pair_report/record.json").read_text())
    assert record["headline"]["sparsity_bitwise"] == _naive_sparsity(base, tuned)
    assert "sparsity_tol_1e-05" in record["headline"] and record["rank"] is None
    assert "Pair report" in out.read_text()
    assert main(["report", str(tmp_path / "nope"), str(tuned), "-o", str(tmp_path / "x.html")]) == 2
    assert not (tmp_path / "x.html").exists()
