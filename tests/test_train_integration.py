"""A few real GRPO steps of the embedded default model (SmolLM2-135M-Instruct) on CPU: the
in-training monitor's counts equal `rlsparse diff` (bitwise) of the checkpoints the run saved, in
the fp32 master view and in the bf16 view, vs θ0 and per step. The first two steps of the
``cpu-grpo`` recipe (its first batch has reward variance, so the update is not empty). ~40 s on 2
cores. On a CPU without native bf16 (or under ``RLSPARSE_CPU_BF16=emulated``) ``mixed``
computes in fp32 at full speed; the assertions hold either way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlsparse_lib.cli import main
from rlsparse_lib.training.config import config_from_dict
from rlsparse_lib.training.models import DEFAULT_MODEL
from rlsparse_lib.training.runner import train


def _diff(a: Path, b: Path, out: Path) -> dict:
    assert main(["diff", str(a), str(b), "--tol", "0", "1e-5", "--json", str(out), "-q"]) == 0
    return json.loads(out.read_text())


@pytest.mark.slow
def test_real_grpo_monitor_equals_rlsparse_diff(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = config_from_dict(
        {
            "kind": "grpo",
            "name": "it-grpo",
            "model": DEFAULT_MODEL,
            "precision": "mixed",
            "task": {
                "name": "basic_arithmetic",
                "params": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2},
                "train_size": 256,
                "eval_size": 4,
            },
            "train": {"steps": 2, "lr": 1e-5, "batch_size": 2, "max_completion_length": 32},
            "rl": {"num_generations": 4},
            "checkpoints": {"every": 1},
            "eval": {"before": False, "after": False},
        }
    )
    result = train(cfg, out_root=tmp_path, progress=False)
    m = result.manifest
    rewards = [h["reward_std"] for h in m["history"]]
    assert len(rewards) == 2 and rewards[0] > 0  # the first group had a learning signal
    records = {r["step"]: r for r in m["monitor"]}
    assert sorted(records) == [1, 2]
    for view, suffix in (("fp32", ""), ("bf16", "_bf16")):
        for step, rec in records.items():
            vs_init = _diff(
                result.checkpoint(0, view), result.checkpoint(step, view), tmp_path / "a.json"
            )
            per_step = _diff(
                result.checkpoint(step - 1, view),
                result.checkpoint(step, view),
                tmp_path / "b.json",
            )
            assert vs_init["n_params"] == rec["n_params"] == 134515008
            assert rec[f"changed_vs_init{suffix}"] == vs_init["n_changed"], (view, step)
            assert rec[f"changed_step{suffix}"] == per_step["n_changed"], (view, step)
    # a real update happened, and bf16 absorbs most of it (the precision effect)
    last = records[2]
    assert last["changed_vs_init"] > 0.5 * last["n_params"]
    assert 0 < last["changed_vs_init_bf16"] < 0.5 * last["n_params"]
    final = m["final_diff"]["bf16"]
    assert final["sparsity_bitwise"] == pytest.approx(last["sparsity_vs_init_bf16"], abs=0)
