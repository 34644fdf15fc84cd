"""Every experiment notebook: committed without outputs, a scalar parameters cell, and a papermill
smoke run (tiny random model, a few steps) whose recorded numbers are checked.

The smoke runs go through `rlsparse run NB --smoke` (what CI runs) and share one output root, so a
tiny training run used by several notebooks is trained once (runs are reused when their
configuration is identical)."""

from __future__ import annotations

import ast
import json
import math
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest

from rlsparse_lib.experiments.papermill_runner import list_notebooks, run_notebooks

NOTEBOOKS = list_notebooks()
COMMON_PARAMS = {"SOURCE", "SMOKE", "OUT_ROOT", "DEVICE", "SEED"}


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


@pytest.fixture(scope="module")
def smoke_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("notebooks")


def test_the_collection_is_complete() -> None:
    assert [p.stem.split("_", 1)[0] for p in NOTEBOOKS] == [
        f"{i:02d}" for i in range(len(NOTEBOOKS))
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_committed_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_parameters_cell_holds_scalars(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{path.name}: expected one cell tagged 'parameters'"
    names = {}
    for node in ast.parse(cells[0].source).body:
        assert isinstance(node, ast.AnnAssign), f"{path.name}: only typed assignments in parameters"
        names[node.target.id] = ast.literal_eval(node.value)
    assert set(names) >= COMMON_PARAMS, f"{path.name}: missing {COMMON_PARAMS - set(names)}"
    assert all(isinstance(v, str | int | float | bool) for v in names.values())
    assert names["SMOKE"] is False, "the committed configuration is the real one"


def _record(root: Path, stem: str) -> dict:
    return json.loads((root / "data" / "results" / stem / "record.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_smoke_run(path: Path, smoke_root: Path) -> None:
    from rlsparse_lib.cli import main

    assert main(["run", path.stem, "--smoke", "--out-root", str(smoke_root), "-q"]) == 0
    record = _record(smoke_root, path.stem)
    assert record["notebook"] == path.stem and record["smoke"] is True
    assert record["figures"], "every notebook draws figures"
    for fig in record["figures"]:
        for ext in ("png", "pdf"):
            assert (smoke_root / "figures" / f"{fig}.{ext}").stat().st_size > 1000
    CHECKS[path.stem](record)


def _git_status(*paths: str) -> str | None:
    """``git status --porcelain`` of ``paths`` in the repository (None outside a checkout)."""
    from rlsparse_lib.paths import repo_root

    try:
        done = subprocess.run(
            ["git", "status", "--porcelain", "--", *paths],
            cwd=repo_root(),
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout


@pytest.mark.slow
def test_smoke_run_without_an_output_root_leaves_committed_results_alone() -> None:
    """Regression: `rlsparse run 01 --smoke` rewrote tracked files under data/results/ and
    figures/. Without --out-root a smoke run writes under data/cache/smoke/ (git-ignored)."""
    from rlsparse_lib.cli import main
    from rlsparse_lib.paths import repo_root

    before = _git_status("data/results", "figures")
    if before is None:
        pytest.skip("needs a git checkout")
    assert main(["run", "00", "--smoke", "-q"]) == 0
    assert _git_status("data/results", "figures") == before
    smoke = repo_root() / "data" / "cache" / "smoke"
    assert _record(smoke, "00_quickstart")["smoke"] is True
    assert _git_status("data/cache") == ""  # ignored


@pytest.mark.slow
def test_figures_are_redrawn_from_stored_results_alone(smoke_root: Path) -> None:
    """`rlsparse figures` (make figures) redraws every recorded figure with runs and checkpoints
    out of reach: only data/results/ is read."""
    from rlsparse_lib.cli import main

    stems = [p.stem for p in NOTEBOOKS if (smoke_root / "data/results" / p.stem).is_dir()]
    if not stems:
        pytest.skip("needs the smoke runs of this module")
    expected = {f for s in stems for f in _record(smoke_root, s)["figures"]}
    runs, hidden = smoke_root / "data" / "runs", smoke_root / "runs-hidden"
    shutil.rmtree(smoke_root / "figures")
    runs.rename(hidden)
    try:
        assert main(["figures", "--out-root", str(smoke_root), "--only", *stems]) == 0
    finally:
        hidden.rename(runs)
    drawn = {p.stem for p in (smoke_root / "figures").glob("*.png")}
    assert drawn == expected
    assert all((smoke_root / "figures" / f"{f}.pdf").stat().st_size > 1000 for f in expected)


@pytest.mark.slow
def test_demo_runs_the_quickstart_and_says_where_results_are(smoke_root: Path, capsys) -> None:
    """`rlsparse demo` (here in smoke mode) executes 00_quickstart and prints its numbers and paths."""
    from rlsparse_lib.cli import main

    assert main(["demo", "--smoke", "--out-root", str(smoke_root)]) == 0
    out = capsys.readouterr().out
    record = _record(smoke_root, "00_quickstart")
    for run, r in record["runs"].items():
        assert f"{run:<5} update sparsity {r['sparsity_bitwise']:.2%} bitwise" in out
    for fig in record["figures"]:
        assert f"{smoke_root / 'figures' / fig}.png" in out
    executed = smoke_root / "data" / "runs" / "notebooks" / "00_quickstart__smoke.ipynb"
    assert executed.is_file() and f"executed notebook: {executed}" in out


def test_synthetic_demo_writes_report(tmp_path: Path, capsys) -> None:
    from rlsparse_lib.cli import main
    from rlsparse_lib.diff.report import DiffReport

    assert main(["demo", "--synthetic", "--out-root", str(tmp_path)]) == 0
    report = DiffReport.load(tmp_path / "data" / "demo" / "report.json")
    assert 0.0 < report.sparsity < 1.0 and report.sparsity <= report.sparsity_at(1e-5)
    assert report.n_params == 134_515_008  # SmolLM2-135M shapes, tied head counted once
    assert f"report: {tmp_path / 'data' / 'demo' / 'report.json'}" in capsys.readouterr().out


@pytest.mark.slow
def test_hub_mode_offline_lists_every_pair(tmp_path: Path, monkeypatch) -> None:
    """SOURCE=hub without hub access: every registry pair is listed with why it was not measured."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run_notebooks(
        "01",
        {"SOURCE": "hub", "PAIRS": "path_not_taken"},
        smoke=True,
        out_root=str(tmp_path),
        log=False,
    )
    measured = _record(tmp_path, "01_update_sparsity")["measured"]
    assert len(measured) == 15
    for row in measured:
        assert row["status"] == "no public hub id" or (
            (
                row["status"].startswith("unavailable")
                and row["tuned"].split("@")[0] in row["status"]
            )
            or row["base"] in row["status"]
        )


def _frac(x) -> bool:
    return x is not None and 0.0 <= x <= 1.0


def _check_quickstart(r: dict) -> None:
    for run in ("sft", "grpo"):
        s = r["runs"][run]
        assert _frac(s["sparsity_bitwise"]) and s["sparsity_bitwise"] <= s["sparsity_tol_1e-05"]
        assert s["n_changed"] == round((1 - s["sparsity_bitwise"]) * s["n_params"])
    assert r["runs"]["sft"]["n_changed"] > 0 and r["runs"]["grpo"]["n_changed"] > 0


def _check_update_sparsity(r: dict) -> None:
    grid = [
        "sparsity_bitwise",
        "sparsity_tol_1e-08",
        "sparsity_tol_1e-07",
        "sparsity_tol_1e-06",
        "sparsity_tol_1e-05",
        "sparsity_tol_0.0001",
    ]
    assert [m["run"] for m in r["measured"]] == [
        "grpo",
        "rloo",
        "ppo",
        "prime",
        "dpo-own",
        "dpo-external",
        "orpo",
        "simpo",
        "kto",
        "rft",
        "sft",
    ]
    for m in r["measured"]:
        values = [m[k] for k in grid]
        assert all(_frac(v) for v in values) and values == sorted(values), m["run"]


def _check_sft_vs_rl(r: dict) -> None:
    stages = {b["stage"] for b in r["bars"]}
    assert stages == {"SFT", "GRPO", "RLOO", "DPO", "KTO"} and all(
        _frac(b["sparsity"]) for b in r["bars"]
    )


def _check_layerwise(r: dict) -> None:
    assert r["panels"] == ["GRPO", "DPO"]
    for groups in r["by_group"].values():
        assert {"attention", "mlp", "norm"} <= set(groups) and all(
            _frac(v) for v in groups.values()
        )


def _check_rank(r: dict) -> None:
    assert [s["run"] for s in r["summary"]] == ["grpo", "rloo", "dpo-own", "kto", "sft"]
    sft = r["summary"][-1]
    assert sft["n_matrices"] > 0 and 0 < sft["mean_rank_pct"] <= 100


def _check_subnetwork(r: dict) -> None:
    acc = {a["run"]: a for a in r["accuracy"]}
    full = acc["full"]["n_changed"]
    assert full > 0
    sub = r["closeness"]["subnetwork"]["updates"]
    assert (
        sub["a_subset_of_b"] and sub["n_a_outside_b"] == 0
    )  # masked run changes only masked weights
    assert sub["n_updated_a"] == acc["subnetwork"]["n_changed"] <= full


def _check_overlap(r: dict) -> None:
    assert [row["axis"] for row in r["table4"]] == ["seed", "data", "seed + data + algorithm"]
    for row in r["table4"]:
        if row["o1"] is not None and row["o2"] is not None:  # Table 4 identity: |I1∩I2|/n both ways
            assert math.isclose(
                row["o1"] * (1 - row["s1"]), row["o2"] * (1 - row["s2"]), rel_tol=1e-9
            )
            assert math.isclose(row["o1_random"], 1 - row["s2"], rel_tol=1e-9)


def _check_dynamics(r: dict) -> None:
    fate = r["fate"]
    assert fate["n_never"] + fate["n_cancelled"] + fate["n_final"] == fate["n_params"]
    assert math.isclose(fate["final"], 1 - r["final_sparsity"], abs_tol=1e-12)
    assert fate["n_final"] > 0


def _check_causes(r: dict) -> None:
    assert len(r["causes"]) == 8 and all(_frac(c["sparsity_bitwise"]) for c in r["causes"])
    assert [row["step"] for row in r["length"]] == [1, 2]


def _check_precision(r: dict) -> None:
    modes = {(m["kind"], m["mode"]): m for m in r["modes"]}
    assert len(modes) == 6 and len(r["lr"]) == 3
    for (kind, mode), m in modes.items():
        if mode != "bf16":  # bf16 can only hide changes of the fp32 master weights
            assert m["fp32_master_sparsity_bitwise"] <= m["sparsity_bitwise"], (kind, mode)


def _check_pair_report(r: dict) -> None:
    """The smoke pair's headline equals a naive whole-tensor count of equal bf16 words."""
    import torch
    from safetensors.torch import load_file

    base = load_file(str(Path(r["base"]) / "model.safetensors"))
    tuned = load_file(str(Path(r["tuned"]) / "model.safetensors"))
    same = sum(int((base[k].view(torch.int16) == tuned[k].view(torch.int16)).sum()) for k in base)
    total = sum(v.numel() for v in base.values())
    assert r["headline"]["sparsity_bitwise"] == same / total < 1.0
    assert set(r["inputs"]) == {"base", "tuned"} and r["rank"]["n_matrices"] > 0
    assert {"pair_tolerance_curve", "pair_layer_module", "pair_binade"} <= set(r["figures"])


def _check_delta_sync(r: dict) -> None:
    """S_k within [0, 1]; payload per codec: the patch codec beats raw int32 index + value."""
    for label, run in r["runs"].items():
        s_k = [v for _, v in sorted((int(k), v) for k, v in run["S_k"].items())]
        assert all(_frac(v) for v in s_k) and s_k[0] == run["S_1"], label
        assert run["n_changed_per_step"] > 0
        assert run["B_per_changed"]["rlsparse"] < run["B_per_changed"]["raw"], label
        assert set(run["unchanged_fraction"]) >= {"element", "row", "block_128x128", "tensor"}
    assert r["published_qwen_1_5b"] and set(r["figures"]) == {
        "11_k_step",
        "11_payload",
        "11_cadence",
    }


def _check_long_horizon(r: dict) -> None:
    """Both smoke runs analysed to their last step; the monitor's bf16 counts equal the
    checkpoint diffs; S_4 from step 0 is the diff θ0 → θ4; the fate split adds up."""
    assert set(r["runs"]) == {"SFT", "GRPO"} and r["dynamics_run"] == "GRPO"
    for label, run in r["runs"].items():
        assert run["status"] == "complete" and run["last_checkpoint"] == 4, label
        assert run["monitor_agrees"] is True and run["monitor_checked"] == 2, label
        fate = run["fate"]
        assert fate["n_never"] + fate["n_cancelled"] + fate["n_final"] == fate["n_params"]
        assert math.isclose(fate["final"], 1 - run["last"]["sparsity_bitwise"], abs_tol=1e-12)
        assert _frac(run["S_1"]) and set(run["S_k"]) == {"2", "4"}, label
        assert run["S_k"]["4"] == run["last"]["sparsity_bitwise"], label
        checked = [(e["step"], e["source"]) for e in run["held_out"]]
        assert checked == [(0, "run"), (4, "run"), (0, "checkpoint"), (2, "checkpoint")], label
        assert all(_frac(e["accuracy"]) for e in run["held_out"]), label
    assert set(r["figures"]) == {
        "13_training_curves",
        "13_sparsity_vs_step",
        "13_dynamics",
        "13_parameter_fate",
        "13_per_step_monitor",
        "13_k_step",
    }


def _check_seeds_controls(r: dict) -> None:
    """Seed groups against naive means of their runs; each interval holds its mean; overlap's
    Table 4 identity; masked controls change only what their masks allow."""
    from rlsparse_lib.experiments.studies import CONTROLS, RANDOM_DENSITY

    assert r["seeds"] == [0, 1] and r["controls"] == list(CONTROLS)
    assert r["seeded_controls"] == ["random1pct", "random-matched", "fp16", "lr"]
    runs = {row["run"]: row for row in r["runs"]}
    assert r["engine_runs"] >= len(runs) and all(row["eval_n"] > 0 for row in runs.values())
    for row in runs.values():
        fp16 = row["precision"] == "fp16"
        assert row["compare_dtype"] == ("float16" if fp16 else "bfloat16"), row["run"]
    labels = {row["label"]: row for row in r["runs"]}
    assert labels["GRPO SGD seed 0"]["optimizer"] == "sgd"
    assert labels["GRPO fp16 seed 0"]["precision"] == "fp16"
    assert len({labels[k]["lr"] for k in labels if k.startswith("GRPO lr")}) == 2  # x0.3, x3
    for seed in (0, 1):  # the seeded controls run at each seed, with that seed
        for control in ("GRPO random 1% subnetwork", "GRPO random subnetwork, full run's density"):
            assert labels[f"{control} seed {seed}"]["seed"] == seed
    one_pct = [labels[f"GRPO random 1% subnetwork seed {s}"] for s in (0, 1)]
    assert "random_seed=1" in one_pct[1]["mask"] and one_pct[0]["mask"] != one_pct[1]["mask"]
    assert one_pct[0]["config_id"] == one_pct[1]["config_id"]  # a new draw per seed: siblings
    # each seed's density-matched control (its own full run's mask) is one seed group as well
    for control in ("random1pct", "randmatched", "fp16", "lr3x"):
        assert sum(g["n_runs"] == 2 and control in g["runs"] for g in r["summary"]) >= 1, control
    assert labels["SFT fp16 seed 1"]["seed"] == 1 and labels["GRPO fp16 seed 1"]["seed"] == 1
    assert labels["GRPO lr x3 seed 1"]["seed"] == 1
    assert not any(k.endswith("seed 1") for k in labels if "SGD" in k)
    for group in r["summary"][:2]:  # GRPO and SFT over the two seeds
        members = [runs[name] for name in group["runs"].split()]
        assert group["n_runs"] == 2 and {m["seed"] for m in members} == {0, 1}
        for metric in ("acc_after", "sparsity_bitwise"):
            mean = sum(m[metric] for m in members) / 2
            assert math.isclose(group[f"{metric}_mean"], mean, rel_tol=1e-12, abs_tol=1e-15)
            assert group[f"{metric}_low"] <= mean <= group[f"{metric}_high"]
    assert [o["axis"] for o in r["overlap"]] == [
        "GRPO seed 0 vs GRPO seed 1",
        "SFT seed 0 vs SFT seed 1",
        "GRPO seed 0 vs SFT seed 0",
        "GRPO seed 1 vs SFT seed 1",
    ]
    for row in r["overlap"]:
        if row["o1"] is not None and row["o2"] is not None:
            assert math.isclose(
                row["o1"] * (1 - row["s1"]), row["o2"] * (1 - row["s2"]), rel_tol=1e-9
            )
    close = {c["run"]: c for c in r["closeness"]}
    assert len(close) == 4  # two masked controls at two seeds, each against its seed's full run
    for seed in (0, 1):
        one_pct = close[f"GRPO random 1% subnetwork seed {seed}"]
        matched = close[f"GRPO random subnetwork, full run's density seed {seed}"]
        assert one_pct["seed"] == matched["seed"] == seed
        assert 0 < one_pct["n_updated_a"] <= math.ceil(RANDOM_DENSITY * one_pct["n_params"])
        assert 0 < matched["n_updated_a"] <= matched["n_updated_b"]  # mask: full's changed count
        full = labels[f"GRPO seed {seed}"]  # n_updated_b: the same seed's full run's changes
        n_changed = round((1 - full["sparsity_bitwise"]) * matched["n_params"])
        assert matched["n_updated_b"] == n_changed
    assert r["figures"] == ["12_seed_intervals"]


def _check_quantized_storage(r: dict) -> None:
    """Every pair in each storage over the same weights (the fp32 masters' copy for the runs that
    keep them); bf16 sees itself whole; the overlap adds up; where no scale moved, a stored change
    is a bf16 change, so the stored pair is at least as sparse."""
    rows = r["storage"]
    pairs = {"SFT", "GRPO", "RLOO", "DPO", "KTO", "SFT ×4", "GRPO ×4"}
    assert {x["pair"] for x in rows} == pairs
    for pair in pairs:
        mine = {x["storage"]: x for x in rows if x["pair"] == pair}
        ref = mine["bf16"]
        masters = ["FP8 of fp32 masters"] if pair in ("SFT", "GRPO") else []
        assert list(mine) == ["bf16", "FP8 (DeepSeek)", "MXFP4", "GGUF Q8_0", *masters], pair
        assert ref["visible"] == ref["inside"] == 1.0 and ref["raw_changed"] is None
        for x in mine.values():
            assert (x["n_params"], x["proj_numel"]) == (ref["n_params"], ref["proj_numel"])
            assert x["proj_changed_bf16"] == ref["proj_changed"]
            assert x["proj_n_both"] <= min(x["proj_changed"], x["proj_changed_bf16"])
            assert x["proj_sparsity"] == 1 - x["proj_changed"] / x["proj_numel"]
            if x is ref:
                continue
            assert _frac(x["raw_changed"]), pair
            # GGUF keeps its scales inside the blocks: no scale view
            assert (x["scales_changed"] is None) == (x["storage"] == "GGUF Q8_0"), pair
            if x["scales_changed"] == 0:
                assert x["scale_only_changed"] == 0 and x["inside"] in (1.0, None), pair
                assert x["proj_sparsity"] >= ref["proj_sparsity"], pair
    assert r["figures"] == ["14_storage"]


CHECKS = {
    "00_quickstart": _check_quickstart,
    "01_update_sparsity": _check_update_sparsity,
    "02_sft_vs_rl": _check_sft_vs_rl,
    "03_layerwise": _check_layerwise,
    "04_update_rank": _check_rank,
    "05_subnetwork_finetuning": _check_subnetwork,
    "06_overlap": _check_overlap,
    "07_dynamics": _check_dynamics,
    "08_causes": _check_causes,
    "09_precision": _check_precision,
    "10_pair_report": _check_pair_report,
    "11_delta_sync": _check_delta_sync,
    "12_seeds_controls": _check_seeds_controls,
    "13_long_horizon": _check_long_horizon,
    "14_quantized_storage": _check_quantized_storage,
}
