"""Experiment glue of the notebooks: config families, run naming, and reuse of finished runs."""

from __future__ import annotations

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
