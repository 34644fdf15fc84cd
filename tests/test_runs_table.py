"""The table of every run (runs.csv): rows from run folders and committed tables, updates, the
seed summary with intervals, and the README block, each checked against naive computations."""

from __future__ import annotations

import copy
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from rlsparse_lib.cli import main
from rlsparse_lib.errors import ConfigError
from rlsparse_lib.experiments.tables import (
    MARKERS,
    RUNS_COLUMNS,
    imported_rows,
    read_runs_table,
    replace_marked_block,
    runs_summary,
    runs_table_row,
    summary_markdown,
    update_runs_table,
)
from rlsparse_lib.paths import repo_root

ENGINE = repo_root() / "data" / "results" / "engine"
TOL = "sparsity_tol_1e-05"


def _manifest(name: str, seed: int, acc: float, sparsity: float, **changes) -> dict:
    """A run.json as the runner writes it, reduced to what the runs table reads."""
    config = {
        "kind": "grpo",
        "name": name,
        "model": "tiny-random",
        "precision": "mixed",
        "seed": seed,
        "task": {"name": "basic_arithmetic", "eval_size": 512},
        "train": {"steps": 20, "lr": 1e-5, "optimizer": "adamw"},
        "checkpoints": {"every": 5, "fp32": True},
        "monitor": {"every": 1},
        "eval": {"max_new_tokens": 32},
    }
    for key, value in changes.items():
        section, _, field = key.partition(".")
        if field:
            config[section][field] = value
        else:
            config[section] = value
    n = 1000
    views = {"bf16": sparsity, "fp32": sparsity / 100}
    if config["precision"] == "fp16":
        views = {"fp16": sparsity}
    return {
        "name": name,
        "kind": config["kind"],
        "config": config,
        "precision": {"mode": config["precision"]},
        "history": [{"step": s, "reward": 0.1 * s} for s in range(1, 7)],
        "eval": {"before": {"n": 512, "accuracy": 0.125}, "after": {"n": 512, "accuracy": acc}},
        "final_diff": {
            view: {
                "from_step": 0,
                "to_step": 20,
                "n_params": n,
                "sparsity_bitwise": s,
                TOL: s + 0.001,
            }
            for view, s in views.items()
        },
        "timing": {"train_seconds": 12.34, "loadavg_start": [1.0, 2.0, 3.0]},
    }


def _write_run(root: Path, manifest: dict) -> Path:
    folder = root / manifest["name"]
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps(manifest), encoding="utf-8")
    return folder


@pytest.fixture
def seed_runs(tmp_path: Path) -> list[Path]:
    values = [(0, 0.25, 0.86), (1, 0.2109375, 0.87), (2, 0.234375, 0.855)]
    return [
        _write_run(tmp_path / "runs", _manifest(f"g-seed{s}", s, acc, sp)) for s, acc, sp in values
    ]


def test_row_of_a_run_folder_reads_its_manifest(tmp_path: Path, seed_runs) -> None:
    row = runs_table_row(seed_runs[1], k=2)
    m = json.loads((seed_runs[1] / "run.json").read_text())
    assert tuple(row) == RUNS_COLUMNS
    assert (row["run"], row["kind"], row["precision"], row["optimizer"]) == (
        "g-seed1",
        "grpo",
        "mixed",
        "adamw",
    )
    assert (row["steps"], row["seed"], row["lr"], row["task"]) == (20, 1, 1e-5, "basic_arithmetic")
    assert (row["mask"], row["eval_n"], row["acc_before"], row["acc_after"]) == (
        "none",
        512,
        0.125,
        0.2109375,
    )
    assert row["reward_mean_first_k"] == pytest.approx((0.1 + 0.2) / 2)
    assert row["reward_mean_last_k"] == pytest.approx((0.5 + 0.6) / 2)
    bf16, fp32 = m["final_diff"]["bf16"], m["final_diff"]["fp32"]
    assert row["compare_dtype"] == "bfloat16"
    assert (row["sparsity_bitwise"], row[TOL]) == (bf16["sparsity_bitwise"], bf16[TOL])
    assert (row["fp32_sparsity_bitwise"], row[f"fp32_{TOL}"]) == (
        fp32["sparsity_bitwise"],
        fp32[TOL],
    )
    assert row["train_seconds"] == 12.3 and row["source"] == str(seed_runs[1])


def test_config_id_is_shared_by_seed_siblings_only(tmp_path: Path, seed_runs) -> None:
    ids = {runs_table_row(r)["config_id"] for r in seed_runs}
    assert len(ids) == 1
    (same,) = ids
    variants = {
        "lr": _manifest("lr", 0, 0.2, 0.8, **{"train.lr": 3e-5}),
        "sgd": _manifest("sgd", 0, 0.2, 0.8, **{"train.optimizer": "sgd"}),
        "eval": _manifest("eval", 0, 0.2, 0.8, **{"task.eval_size": 64}),
        "mask": _manifest("mask", 0, 0.2, 0.8, mask={"random": True, "density": 0.01}),
    }
    for label, m in variants.items():
        assert runs_table_row(_write_run(tmp_path, m))["config_id"] != same, label
    outputs_only = _manifest("ck", 5, 0.2, 0.8, checkpoints={"every": 1}, monitor={"every": 2})
    assert runs_table_row(_write_run(tmp_path, outputs_only))["config_id"] == same
    # the evaluation cache setting changes no number (a cached evaluation is byte-identical)
    cached = _manifest("cache", 6, 0.2, 0.8, eval={"max_new_tokens": 32, "cache": None})
    assert runs_table_row(_write_run(tmp_path, cached))["config_id"] == same
    # ... but the eval section's other keys do
    longer = _manifest("tokens", 7, 0.2, 0.8, eval={"max_new_tokens": 64})
    assert runs_table_row(_write_run(tmp_path, longer))["config_id"] != same
    masked = runs_table_row(tmp_path / "mask")
    assert masked["mask"] == "random=True density=0.01"
    # a random mask's draw is a seed: seed siblings of a masked run share its config_id
    redrawn = _manifest(
        "redrawn", 8, 0.2, 0.8, mask={"random": True, "density": 0.01, "random_seed": 1}
    )
    assert runs_table_row(_write_run(tmp_path, redrawn))["config_id"] == masked["config_id"]


def test_fp16_run_is_compared_in_float16(tmp_path: Path) -> None:
    m = _manifest("h", 0, 0.2, 0.97, precision="fp16")
    row = runs_table_row(_write_run(tmp_path, m))
    assert row["compare_dtype"] == "float16" and row["sparsity_bitwise"] == 0.97
    assert row["fp32_sparsity_bitwise"] is None


def test_not_a_run_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no run\.json"):
        runs_table_row(tmp_path)


@pytest.mark.parametrize("name", ["grpo_vs_sft.csv", "cpu_configs.csv"])
def test_imported_rows_equal_the_committed_table(name: str) -> None:
    path = ENGINE / name
    with path.open() as f:
        committed = list(csv.DictReader(f))
    rows = imported_rows(path)
    assert [r["run"] for r in rows] == [c["run"] for c in committed]
    for r, c in zip(rows, committed, strict=True):
        assert tuple(r) == RUNS_COLUMNS
        for col in ("kind", "precision", "steps", "lr", "acc_before", "acc_after", "train_seconds"):
            assert r[col] == c[col]
        assert r["sparsity_bitwise"] == c["bf16_sparsity_bitwise"] != ""
        assert r[TOL] == c[f"bf16_{TOL}"] and r["compare_dtype"] == "bfloat16"
        assert r["fp32_sparsity_bitwise"] == c["fp32_sparsity_bitwise"]
        for lacking in ("optimizer", "seed", "mask", "task", "eval_n", "config_id"):
            assert r[lacking] == "", lacking
        assert r["source"] == str(path)


def test_import_of_a_foreign_csv_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match=r"bad\.csv: not a compare-runs table"):
        imported_rows(bad)


def test_update_adds_replaces_and_round_trips_exactly(tmp_path: Path, seed_runs) -> None:
    table = tmp_path / "runs.csv"
    old = imported_rows(ENGINE / "grpo_vs_sft.csv")
    update_runs_table(table, old)
    first = [runs_table_row(r) for r in seed_runs]
    update_runs_table(table, first)
    changed = copy.deepcopy(first[0])
    changed["acc_after"] = 0.5
    rows = update_runs_table(table, [changed])
    assert [r["run"] for r in rows] == [r["run"] for r in old] + ["g-seed0", "g-seed1", "g-seed2"]
    back = read_runs_table(table)
    assert [r["run"] for r in back] == [r["run"] for r in rows]
    by_run = {r["run"]: r for r in back}
    assert float(by_run["g-seed0"]["acc_after"]) == 0.5
    assert float(by_run["g-seed1"]["sparsity_bitwise"]) == first[1]["sparsity_bitwise"]
    assert by_run["cpu-grpo"] == old[0]  # untouched rows keep their exact text


def test_foreign_runs_table_is_refused(tmp_path: Path) -> None:
    table = tmp_path / "runs.csv"
    table.write_text("run,kind\nx,grpo\n")
    with pytest.raises(ConfigError, match="columns differ"):
        read_runs_table(table)


def test_summary_intervals_against_naive_t_interval(tmp_path: Path, seed_runs) -> None:
    table = tmp_path / "runs.csv"
    rows = update_runs_table(
        table, imported_rows(ENGINE / "grpo_vs_sft.csv") + [runs_table_row(r) for r in seed_runs]
    )
    summary = runs_summary(read_runs_table(table))
    assert len(summary) == len(rows) - 2  # the three seeds are one group
    g = summary[-1]
    assert (g["group"], g["n_runs"], g["seeds"], g["eval_n"]) == ("g", 3, "0 1 2", "512")
    t975_df2 = math.sqrt(2 * 0.95**2 / (1 - 0.95**2))  # closed form of the t quantile, df = 2
    for metric, values in (
        ("acc_after", [0.25, 0.2109375, 0.234375]),
        (TOL, [0.861, 0.871, 0.856]),
    ):
        a = np.array(values)
        half = t975_df2 * a.std(ddof=1) / math.sqrt(3)
        assert g[f"{metric}_mean"] == pytest.approx(a.mean(), abs=1e-12)
        assert g[f"{metric}_low"] == pytest.approx(a.mean() - half, rel=1e-9)
        assert g[f"{metric}_high"] == pytest.approx(a.mean() + half, rel=1e-9)
    p = g["acc_after_mean"]
    assert g["acc_after_binomial_se"] == pytest.approx(math.sqrt(p * (1 - p) / 512))
    grpo = summary[0]  # an imported run: its own group, no interval, no eval size
    assert (grpo["group"], grpo["n_runs"], grpo["acc_after_low"]) == ("cpu-grpo", 1, None)
    assert grpo["acc_after_binomial_se"] is None
    md = summary_markdown(summary)
    assert md.count("\n") == len(summary) + 2
    assert f"{100 * g[f'{TOL}_mean']:.2f} [{100 * g[f'{TOL}_low']:.2f}, " in md
    assert f"{p:.3f} [{g['acc_after_low']:.3f}, {g['acc_after_high']:.3f}] ± " in md


def test_marked_block_is_replaced_and_markers_are_required(tmp_path: Path) -> None:
    begin, end = MARKERS
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\ntext\n{begin}\nold\n{end}\nafter\n")
    assert replace_marked_block(readme, "| a |\n|---|\n")
    assert readme.read_text() == f"# title\n\ntext\n{begin}\n| a |\n|---|\n{end}\nafter\n"
    assert not replace_marked_block(readme, "| a |\n|---|\n")
    for text, message in (
        ("no markers\n", "expected one"),
        (f"{begin}\n{begin}\n{end}\n", "found 2"),
        (f"{end}\nx\n{begin}\n", "comes before"),
    ):
        readme.write_text(text)
        with pytest.raises(ConfigError, match=message):
            replace_marked_block(readme, "new")
        assert readme.read_text() == text
    with pytest.raises(ConfigError, match="no such file"):
        replace_marked_block(tmp_path / "absent.md", "new")


def test_cli_updates_table_summary_and_readme(tmp_path: Path, seed_runs, capsys) -> None:
    table, readme = tmp_path / "out" / "runs.csv", tmp_path / "README.md"
    readme.write_text(f"intro\n{MARKERS[0]}\n{MARKERS[1]}\n")
    args = ["runs-table", "--table", str(table), "--import", str(ENGINE / "cpu_configs.csv")]
    assert main([*args, "--readme", str(readme)]) == 0
    assert len(read_runs_table(table)) == 14
    assert main(["runs-table", *map(str, seed_runs), "--table", str(table),
                 "--summary-csv", str(tmp_path / "s.csv"), "--summary-md", str(tmp_path / "s.md"),
                 "--readme", str(readme)]) == 0  # fmt: skip
    assert len(read_runs_table(table)) == 17
    md = (tmp_path / "s.md").read_text()
    assert readme.read_text() == f"intro\n{MARKERS[0]}\n{md}{MARKERS[1]}\n"
    with (tmp_path / "s.csv").open() as f:
        assert [r["group"] for r in csv.DictReader(f)][-1] == "g"
    capsys.readouterr()
    readme.write_text("no markers\n")
    before = table.read_bytes()
    assert (
        main(["runs-table", str(seed_runs[0]), "--table", str(table), "--readme", str(readme)]) == 2
    )
    assert "expected one '<!-- runs-table:begin -->' marker" in capsys.readouterr().err
    assert table.read_bytes() == before


def test_notebook_12_parameters_and_overlap_pairs() -> None:
    from rlsparse_lib.experiments.studies import (
        control_list,
        seed_list,
        seed_overlap_axes,
    )

    assert seed_list("0 1 2") == [0, 1, 2] and seed_list("3 1 2", smoke=True) == [3, 1]
    for bad in ("0", "0 0", "0 x"):
        with pytest.raises(ConfigError, match="SEEDS"):
            seed_list(bad)
    assert control_list("fp16 lr") == ["fp16", "lr"] and control_list("") == []
    with pytest.raises(ConfigError, match=r"unknown \['adam'\]"):
        control_list("fp16 adam")
    labels = ["GRPO seed 0", "GRPO seed 1", "GRPO seed 2", "SFT seed 0", "SFT seed 2"]
    assert seed_overlap_axes(labels) == {
        "GRPO seed 0 vs GRPO seed 1": ("GRPO seed 0", "GRPO seed 1"),
        "GRPO seed 0 vs GRPO seed 2": ("GRPO seed 0", "GRPO seed 2"),
        "GRPO seed 1 vs GRPO seed 2": ("GRPO seed 1", "GRPO seed 2"),
        "SFT seed 0 vs SFT seed 2": ("SFT seed 0", "SFT seed 2"),
        "GRPO seed 0 vs SFT seed 0": ("GRPO seed 0", "SFT seed 0"),
        "GRPO seed 2 vs SFT seed 2": ("GRPO seed 2", "SFT seed 2"),
    }


def test_controls_on_each_seeds_own_mask_are_seed_siblings(tmp_path: Path, seed_runs) -> None:
    """A mask taken from a run folder counts as that run's config: controls drawn at each seed's
    own full-run mask share one config_id and one summary group; another run's mask does not."""
    runs = tmp_path / "runs"

    def masked(name: str, seed: int, source: str, parent: str = "data/runs") -> Path:
        mask = {"path": f"{parent}/{source}/mask.safetensors", "random": True, "random_seed": seed}
        return _write_run(runs, _manifest(name, seed, 0.2, 0.98, mask=mask))

    controls = [masked(f"m-seed{s}", s, f"g-seed{s}") for s in range(3)]
    ids = {runs_table_row(r)["config_id"] for r in controls}
    assert len(ids) == 1
    _write_run(runs, _manifest("lr-seed0", 0, 0.2, 0.8, **{"train.lr": 3e-5}))
    assert runs_table_row(masked("other", 0, "lr-seed0"))["config_id"] not in ids
    elsewhere = [masked(f"x-seed{s}", s, f"g-seed{s}", parent="masks") for s in range(2)]
    assert len({runs_table_row(r)["config_id"] for r in elsewhere}) == 2  # not a run: the path
    (group,) = runs_summary([runs_table_row(r) for r in controls])
    assert group["n_runs"] == 3 and group["group"] == "m"
    assert group["mask"] == "path=(per run) random=True random_seed=(per run)"


def test_summary_of_just_added_and_stored_rows_is_the_stored_tables(
    tmp_path: Path, seed_runs
) -> None:
    """A seed added to a table that already holds its siblings gives the same summary (the
    binomial error included) as the stored table read back: the rows come back as stored."""
    table = tmp_path / "runs.csv"
    update_runs_table(table, [runs_table_row(r) for r in seed_runs[:2]])
    rows = update_runs_table(table, [runs_table_row(seed_runs[2])])
    (g,) = runs_summary(rows)
    assert g["n_runs"] == 3 and g["acc_after_binomial_se"] not in (None, "")
    assert runs_summary(rows) == runs_summary(read_runs_table(table))
