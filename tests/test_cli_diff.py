"""`rlsparse diff`: JSON contract, summary, exit codes, one-line errors, no partial outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlsparse_lib.cli import main

from .ckpt_factory import TINY, save_hf
from .test_diff_exact import planted


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path, dict]:
    base, tuned, counts = planted()
    return save_hf(tmp_path / "base", base, shards=2), save_hf(tmp_path / "tuned", tuned), counts


def test_json_contract(tmp_path: Path, pair, capsys) -> None:
    b, t, counts = pair
    out = tmp_path / "out"
    rc = main(
        [
            "diff",
            str(b),
            str(t),
            "--json",
            str(out / "r.json"),
            "--csv",
            str(out / "t.csv"),
            "--mask-out",
            str(out / "m.safetensors"),
            "-q",
        ]
    )
    assert rc == 0
    d = json.loads((out / "r.json").read_text())
    assert isinstance(d["n_params"], int) and d["n_params"] == TINY.n_params
    assert d["n_changed"] == sum(counts.values())
    assert d["sparsity"] == pytest.approx(1 - d["n_changed"] / d["n_params"], rel=1e-15)
    assert d["tolerances"]["1e-05"]["sparsity"] == pytest.approx(
        d["tolerances"]["1e-05"]["n_unchanged"] / d["n_params"]
    )
    assert {x["name"]: x["n_changed"] for x in d["tensors"]} == counts
    assert all({"name", "numel", "n_changed"} <= set(x) for x in d["tensors"])
    assert d["skipped"] == []
    assert sorted(p.name for p in out.iterdir()) == ["m.safetensors", "r.json", "t.csv"]


def test_summary_and_options(pair, capsys) -> None:
    b, t, _ = pair
    assert (
        main(
            ["diff", str(b), str(t), "--tol", "1e-5", "--compare-dtype", "float32", "--by", "layer"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "|Δ| <= 1e-05  (paper default)" in out and "bitwise (bits differ)" in out
    assert "sparsity by layer" in out and "float32" in out


def test_skipped_tensors_in_json(tmp_path: Path, pair) -> None:
    b, t, _ = pair
    rc = main(
        ["diff", str(b), str(t), "--exclude", "norm", "--json", str(tmp_path / "r.json"), "-q"]
    )
    assert rc == 0
    skipped = json.loads((tmp_path / "r.json").read_text())["skipped"]
    assert len(skipped) == 2 * TINY.layers + 1 and all(
        s["reason"].startswith("excluded by --exclude") for s in skipped
    )


def _bad_cases(tmp_path: Path, pair) -> list[tuple[list[str], str]]:
    b, t, _ = pair
    trunc = tmp_path / "trunc"
    trunc.mkdir()
    raw = (t / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    empty = tmp_path / "empty"
    empty.mkdir()
    return [
        ([str(b), str(tmp_path / "missing")], "no such file or folder"),
        ([str(b), str(empty)], "no weights found"),
        ([str(b), str(trunc)], "file is truncated"),
        ([str(b), "nobody/nothing-here"], "'nobody/nothing-here' is not a local path"),
        ([str(b), str(t), "--tol", "-1"], "tolerances must be finite and >= 0"),
        ([str(b), str(t), "--include", "("], "--include: invalid regular expression"),
    ]


def test_bad_input_one_line_and_no_outputs(tmp_path: Path, pair, capsys, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "outputs"
    out.mkdir()
    for args, message in _bad_cases(tmp_path, pair):
        rc = main(
            [
                "diff",
                *args,
                "--json",
                str(out / "r.json"),
                "--csv",
                str(out / "t.csv"),
                "--mask-out",
                str(out / "m.safetensors"),
                "-q",
            ]
        )
        err = capsys.readouterr().err.strip()
        assert rc == 2, args
        assert (
            err.count("\n") == 0 and err.startswith("rlsparse diff: error: ") and message in err
        ), err
        assert list(out.iterdir()) == [], args


def test_console_script_and_argparse_errors(pair) -> None:
    b, t, _ = pair
    script = Path(sys.executable).parent / "rlsparse"
    ok = subprocess.run([str(script), "diff", str(b), str(t)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "bitwise (bits differ)" in ok.stdout
    exe = [sys.executable, "-m", "rlsparse_lib.cli"]
    bad = subprocess.run(
        [*exe, "diff", str(b), str(t), "--compare-dtype", "int8"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    none = subprocess.run(exe, capture_output=True, text=True)
    assert none.returncode == 2 and "diff" in none.stderr


def test_mask_out_count_matches_report(tmp_path: Path, pair) -> None:
    from rlsparse_lib.io.maskfile import MaskFile

    b, t, counts = pair
    m = tmp_path / "m.safetensors"
    assert main(["diff", str(b), str(t), "--mask-out", str(m), "--mask-rule", "abs", "-q"]) == 0
    with MaskFile.open(m) as mf:
        assert mf.meta["rule"] == {"kind": "abs", "tol": 1e-5}
        assert mf.meta["n_total"] == TINY.n_params
        assert (
            0 < mf.meta["n_set_total"] < sum(counts.values())
        )  # one-ULP changes of tiny weights pass 1e-5


def test_start_up_stays_light(pair, tmp_path: Path) -> None:
    """`rlsparse diff --json` of local files imports no torch, tqdm (when no bar is shown), pandas,
    transformers or httpx: start-up is part of every diff's wall time (bench/diff_bench.py)."""
    b, t, _ = pair
    code = (
        "import sys; from rlsparse_lib.cli import main; "
        f"rc = main(['diff', {str(b)!r}, {str(t)!r}, '--json', {str(tmp_path / 'r.json')!r}]); "
        "print(sorted(m for m in ('torch', 'tqdm', 'pandas', 'transformers', 'httpx') "
        "if m in sys.modules))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQDM_")}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert proc.stdout.strip().splitlines()[-1] == "[]"
