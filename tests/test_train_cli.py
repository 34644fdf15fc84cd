"""`rlsparse train`, `rlsparse eval` and `rlsparse compare-runs`: outputs, one-line errors (exit 2), no partial outputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from rlsparse_lib.cli import main

from .test_train_factory import make_tiny, tiny_config


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny(tmp_path_factory)


def test_train_then_eval_reproduces_the_runs_evaluation(
    tmp_path: Path, tiny_dir: Path, capsys
) -> None:
    cfg = tiny_config(tiny_dir, "sft", name="cli-sft", eval={"max_new_tokens": 6, "batch_size": 4})
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert (
        main(["train", str(path), "--out-root", str(tmp_path), "-q", "--set", "train.steps=2"]) == 0
    )
    out = capsys.readouterr().out
    run = tmp_path / "data" / "runs" / "cli-sft"
    assert f"run: {run}" in out and "update sparsity fp32 step 0 -> 2" in out
    manifest = json.loads((run / "run.json").read_text())
    compute = manifest["precision"]["compute"]
    assert f"compute: {compute} on cpu (precision mixed" in out and "CPU bf16 " in out
    assert manifest["config"]["train"]["steps"] == 2
    # evaluating the saved fp32 weights on the run's split gives the run's own evaluation
    rc = main(
        [
            "eval",
            str(run / "step_000002" / "fp32"),
            "--config",
            str(run),
            "--max-new-tokens",
            "6",
            "--json",
            str(tmp_path / "e.json"),
            "-q",
        ]
    )
    assert rc == 0
    doc = json.loads((tmp_path / "e.json").read_text())
    after = [json.loads(line) for line in (run / "eval_after.jsonl").read_text().splitlines()]
    assert [r["completion"] for r in doc["records"]] == [r["completion"] for r in after]
    assert doc["accuracy"] == manifest["eval"]["after"]["accuracy"] and doc["n"] == 4
    # the summary tables read the manifest faithfully
    out_csv, dyn_csv = tmp_path / "t.csv", tmp_path / "d.csv"
    capsys.readouterr()
    rc = main(["compare-runs", str(run), "--csv", str(out_csv), "--dynamics-csv", str(dyn_csv)])
    assert rc == 0 and "| cli-sft | sft | mixed | 2 |" in capsys.readouterr().out
    (row,) = list(csv.DictReader(out_csv.open()))
    assert (
        row["run"] == "cli-sft" and row["precision"] == "mixed" and row["reward_mean_first_k"] == ""
    )
    assert float(row["bf16_sparsity_bitwise"]) == manifest["final_diff"]["bf16"]["sparsity_bitwise"]
    assert float(row["acc_after"]) == manifest["eval"]["after"]["accuracy"]
    dyn = list(csv.DictReader(dyn_csv.open()))
    assert [int(r["step"]) for r in dyn] == [1, 2]
    assert float(dyn[-1]["fp32_sparsity_vs_init"]) == manifest["monitor"][-1]["sparsity_vs_init"]


def test_eval_with_explicit_task(tmp_path: Path, tiny_dir: Path, capsys) -> None:
    rc = main(
        [
            "eval",
            str(tiny_dir),
            "--task",
            "chain_sum",
            "--param",
            "min_digits=1",
            "max_digits=1",
            "--n",
            "3",
            "--max-new-tokens",
            "3",
            "--json",
            str(tmp_path / "e.json"),
            "-q",
        ]
    )
    assert rc == 0
    doc = json.loads((tmp_path / "e.json").read_text())
    assert (
        doc["n"] == 3
        and doc["task"]["name"] == "chain_sum"
        and doc["task"]["params"]["max_digits"] == 1
    )
    assert "chain_sum: accuracy" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "train.stepz=3"], "unknown key 'train.stepz'"),
        (["--set", "kind=reinforce"], "'kind' must be one of"),
        (["--set", "model=no/such/model"], "model 'no/such/model'"),
        (["--set", "task.name=nope"], "no task 'nope'"),
    ],
)
def test_train_errors_are_one_line_and_leave_nothing(
    tmp_path: Path, tiny_dir: Path, capsys, args: list[str], message: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tiny_dir, "sft")))
    assert main(["train", str(path), "--out-root", str(tmp_path), "-q", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rlsparse train: error: ") and message in err and "\n" not in err
    runs = tmp_path / "data" / "runs"
    assert not runs.exists() or not any(runs.iterdir())


def test_dry_run_prints_the_validated_config(tmp_path: Path, capsys) -> None:
    path = tmp_path / "g.yaml"
    path.write_text("kind: grpo\ntrain: {lr: 1e-6}\n")
    assert main(["train", str(path), "--dry-run", "--name", "x", "--set", "rl.beta=0.04"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (
        printed["name"] == "x" and printed["rl"]["beta"] == 0.04 and printed["train"]["lr"] == 1e-6
    )
    assert "sampling" not in printed and "mask" not in printed


def test_eval_errors(tmp_path: Path, capsys) -> None:
    assert main(["eval", str(tmp_path), "--task", "basic_arithmetic"]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert main(["eval", "x/y", "--param", "oops"]) == 2
    assert "--param 'oops': expected KEY=VALUE" in capsys.readouterr().err


def test_compare_runs_errors(tmp_path: Path, capsys) -> None:
    assert main(["compare-runs", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlsparse compare-runs: error: ") and "no run.json" in err
    assert main(["compare-runs", str(tmp_path), "-k", "0"]) == 2
    assert "-k must be >= 1" in capsys.readouterr().err
