"""Experiment glue of the notebooks: config families, run naming, and reuse of finished runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlsparse_lib.errors import ConfigError
from rlsparse_lib.experiments import Experiment
from rlsparse_lib.experiments.runs import run_config
from rlsparse_lib.paths import Paths

CPU = sorted(p.stem for p in (Paths.at().configs / "cpu").glob("*.yaml"))


@pytest.mark.parametrize("stem", CPU)
def test_every_cpu_recipe_has_a_gpu_counterpart_of_the_same_kind(stem: str) -> None:
    """Notebooks name configs by stem, so `-p FAMILY=gpu` needs the same stems in gpu/."""
    cpu, gpu = run_config(stem), run_config(stem, family="gpu")
    assert (cpu.kind, gpu.kind) == (cpu.kind, cpu.kind)
    assert cpu.name == f"cpu-{stem}" and gpu.name == f"gpu-{stem}"
    assert gpu.device == "cuda" and gpu.train.steps > cpu.train.steps
    assert (cpu.mask is None) == (gpu.mask is None)


def test_variants_and_seeds_get_their_own_run_names(tmp_path, monkeypatch) -> None:
    """A variant or a SEED never reuses (or replaces) the config's own run folder."""
    import rlsparse_lib.experiments.runs as runs

    monkeypatch.setattr(runs, "ensure_run", lambda cfg, paths: cfg)  # no training
    exp = Experiment("06_overlap", out_root=str(tmp_path), family="gpu")
    assert exp.run("grpo").name == "gpu-grpo"
    cfg = exp.run("grpo", {"seed": 1}, variant="seed1")
    assert (cfg.name, cfg.seed) == ("gpu-grpo-seed1", 1)
    seeded = Experiment("09_precision", out_root=str(tmp_path), seed=2, device="cpu")
    cfg = seeded.run("sft", {"precision": "bf16"}, variant="bf16")
    assert (cfg.name, cfg.seed, cfg.device, cfg.precision) == (
        "cpu-sft-bf16-seed2",
        2,
        "cpu",
        "bf16",
    )
    smoke = Experiment("09_precision", smoke=True, out_root=str(tmp_path))
    assert smoke.run("grpo", variant="lr3x").name == "cpu-grpo-lr3x-smoke"


def test_unknown_family_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="FAMILY='tpu'"):
        Experiment("00_quickstart", out_root=str(tmp_path), family="tpu")


# ---- the diff cache -------------------------------------------------------------------------
@pytest.fixture
def counted_diffs(monkeypatch) -> list:
    """Calls of the diff engine made through `Experiment.diff`."""
    import rlsparse_lib.diff.engine as engine

    calls: list = []
    real = engine.diff_checkpoints

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "diff_checkpoints", counting)
    return calls


def _pair(tmp_path, k: int, seed: int = 0):
    from tests.ckpt_factory import bump_bits, pick, random_state, save_hf

    base = random_state(seed=0)
    tuned = {n: t.clone() for n, t in base.items()}
    name = "model.layers.0.mlp.up_proj.weight"
    tuned[name] = bump_bits(tuned[name], pick(tuned[name].numel(), k, seed))
    return save_hf(tmp_path / "base", base), save_hf(tmp_path / "tuned", tuned)


def test_diff_cache_is_reused_only_for_the_same_bytes_and_settings(tmp_path, counted_diffs) -> None:
    """Regression: the cache was keyed by a header hash, so a SEED=1 run reused seed 0's counts."""
    from rlsparse_lib.io.checkpoint import open_checkpoint

    exp = Experiment("00_quickstart", out_root=str(tmp_path / "out"))
    base, tuned = _pair(tmp_path, k=5)
    first = exp.diff(base, tuned, "grpo")
    assert first.n_changed == 5 and len(counted_diffs) == 1
    assert exp.diff(base, tuned, "grpo").n_changed == 5 and len(counted_diffs) == 1  # reused

    header = open_checkpoint(tuned).fingerprint()
    _pair(tmp_path, k=9, seed=1)  # other weights, same names, dtypes, shapes and file sizes
    assert open_checkpoint(tuned).fingerprint() == header
    assert exp.diff(base, tuned, "grpo").n_changed == 9 and len(counted_diffs) == 2

    exp.diff(base, tuned, "grpo", compare_dtype="float32")  # another setting: recomputed
    assert len(counted_diffs) == 3
    exp.diff(base, tuned, "grpo", compare_dtype="float32", threads=1, chunk_elems=64)
    assert len(counted_diffs) == 3  # speed settings do not change the numbers
    exp.diff(base, tuned, "grpo", tolerances=(1e-3,))
    assert len(counted_diffs) == 4
    reloaded = Experiment("00_quickstart", out_root=str(tmp_path / "out"))
    reloaded.diff(base, tuned, "grpo", tolerances=(1e-3,))  # a new session reads the file
    assert len(counted_diffs) == 4


def test_cache_key_names_files_by_content_and_hub_blobs_by_name(tmp_path) -> None:
    from rlsparse_lib.diff.config import DiffConfig
    from rlsparse_lib.experiments.diffcache import cache_key
    from rlsparse_lib.io.checkpoint import open_checkpoint
    from rlsparse_lib.io.digest import file_digest

    base, tuned = _pair(tmp_path, k=3)
    key = cache_key(open_checkpoint(base), open_checkpoint(tuned), DiffConfig())
    assert key["base"][0][0] == "model.safetensors" and key["base"] != key["tuned"]
    assert DiffConfig(compare_dtype="bfloat16").result_settings()["compare_dtype"] == "bfloat16"
    blob = tmp_path / "blobs" / ("ab" * 32)
    blob.parent.mkdir()
    blob.write_bytes(b"not hashed")
    (tmp_path / "link.safetensors").symlink_to(blob)
    assert file_digest(tmp_path / "link.safetensors") == "ab" * 32


# ---- runs, masks, record --------------------------------------------------------------------
def test_run_diff_and_run_mask_use_the_runs_init_and_final_checkpoint(tmp_path) -> None:
    from types import SimpleNamespace

    base, tuned = _pair(tmp_path, k=4)
    run = SimpleNamespace(
        path=tmp_path,
        manifest={"checkpoints": [{"step": 0}, {"step": 2}]},
        checkpoint=lambda step: {0: base, 2: tuned}[step],
    )
    exp = Experiment("05_subnetwork_finetuning", out_root=str(tmp_path / "out"))
    assert exp.run_diffs({"full": run})["full"].n_changed == 4
    mask = exp.run_mask(run)
    assert mask == tmp_path / "mask.safetensors" and mask.is_file()
    stamp = mask.stat().st_mtime_ns
    assert exp.run_mask(run).stat().st_mtime_ns == stamp  # built once


def test_finish_writes_the_record_and_prints_one_line(tmp_path, capsys) -> None:
    exp = Experiment("00_quickstart", out_root=str(tmp_path))
    exp.record(runs={"sft": {"n": 1}})
    assert exp.finish() is None  # nothing for the notebook's last cell to display
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "record.json" in out
    assert (tmp_path / "data/results/00_quickstart/record.json").is_file()


def test_analysis_device_follows_device() -> None:
    assert Experiment("04_update_rank").analysis_device is None
    assert Experiment("04_update_rank", device="cpu").analysis_device == "cpu"


# ---- smoke output root ----------------------------------------------------------------------
def test_smoke_runs_default_to_their_own_root(monkeypatch) -> None:
    """A smoke run never writes into the committed data/results/ and figures/."""
    import rlsparse_lib.experiments.papermill_runner as runner

    repo = Paths.at().root
    smoke = Experiment("00_quickstart", smoke=True)
    assert smoke.paths.root == repo / "data" / "cache" / "smoke"
    assert Experiment("00_quickstart").paths.root == repo
    assert Experiment("00_quickstart", smoke=True, out_root="/tmp/x").paths.root == Path("/tmp/x")

    seen = []
    monkeypatch.setattr(runner, "execute", lambda nb, params, out, **kw: seen.append((params, out)))
    runner.run_notebooks("00", {}, smoke=True)
    runner.run_notebooks("00", {"SMOKE": True})
    for params, out in seen:
        assert params["OUT_ROOT"] == str(repo / "data" / "cache" / "smoke")
        assert out.is_relative_to(repo / "data" / "cache" / "smoke")
    seen.clear()
    runner.run_notebooks("00", {})
    assert "OUT_ROOT" not in seen[0][0] and seen[0][1].is_relative_to(repo / "data" / "runs")


# ---- rlsparse run: progress and Ctrl-C ------------------------------------------------------
def _tiny_notebook(folder: Path) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('X: int = 1\nOUT_ROOT: str = ""')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        nbformat.v4.new_markdown_cell("# tiny"),
        params,
        nbformat.v4.new_code_cell("print('hello', X)"),
        nbformat.v4.new_code_cell("Y = X + 1"),
    ]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    path = folder / "90_tiny.ipynb"
    nbformat.write(nb, path)
    return path


def test_cell_progress_lines() -> None:
    import io

    import nbformat

    from rlsparse_lib.experiments.papermill_runner import CellProgress

    ticks = iter([0.0, 0.0, 5.0, 5.0, 65.0, 65.0, 65.0])
    out = io.StringIO()
    p = CellProgress("nb", stream=out, clock=lambda: next(ticks))
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("m"), nbformat.v4.new_code_cell("\n\nrun()  # x")]
    p.begin(nb)
    p.cell_start(nb.cells[0], 0)  # markdown: silent
    p.cell_start(nb.cells[1], 1)
    p.cell_complete(nb.cells[1], 1)
    assert out.getvalue().splitlines() == [
        "[nb 0:05] cell 1/1 running  run()  # x",
        "[nb 1:05] cell 1/1 done in 1:00",
    ]
    assert p.done == 1


@pytest.mark.slow
def test_rlsparse_run_prints_cell_progress_and_streams_output(tmp_path, capfd) -> None:
    from rlsparse_lib.cli import main

    nb = _tiny_notebook(tmp_path)
    assert main(["run", str(nb), "--out-root", str(tmp_path / "out"), "-p", "X=41"]) == 0
    out, err = capfd.readouterr()
    assert "hello 41" in out
    lines = [line for line in err.splitlines() if line.startswith("[90_tiny ")]
    assert len(lines) == 8  # injected parameters + 3 code cells, each started and done
    assert "cell 4/4 done in " in lines[-1]


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys) -> None:
    import papermill

    from rlsparse_lib.cli import main

    nb = _tiny_notebook(tmp_path)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(papermill, "execute_notebook", interrupted)
    assert main(["run", str(nb), "--out-root", str(tmp_path / "out")]) == 130
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert captured.err.startswith("rlsparse run: 90_tiny.ipynb interrupted")
    assert "partial output: " in captured.err
