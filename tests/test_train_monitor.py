"""The in-training sparsity monitor: exact counts on planted changes, and equality with
``rlsparse diff`` of the checkpoints a real (tiny) training run saved."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlsparse_lib.diff.config import DiffConfig
from rlsparse_lib.diff.engine import diff_checkpoints
from rlsparse_lib.training.config import config_from_dict
from rlsparse_lib.training.monitor import SparsityMonitor
from rlsparse_lib.training.runner import train
from rlsparse_lib.training.tasks import Task

from .test_train_factory import digit_score, make_tiny, tiny_config


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny(tmp_path_factory)


class Two(torch.nn.Module):
    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.ones(64, dtype=dtype))
        self.b = torch.nn.Parameter(torch.full((8, 8), 0.5, dtype=dtype))


def test_planted_changes_are_counted_exactly_with_their_bf16_view() -> None:
    m = Two(torch.float32)
    mon = SparsityMonitor(every=1)
    mon.attach(m)
    assert mon.n_params == 128 and mon.bf16_view
    with torch.no_grad():
        m.a[:10] += 1e-4  # below half a bf16 ULP at 1.0 (2**-8): invisible in bf16
        m.b[0, :3] += 0.01  # above half a bf16 ULP at 0.5 (2**-9): visible in bf16
    r1 = mon.measure(1)
    assert (r1["changed_vs_init"], r1["changed_step"]) == (13, 13)
    assert (r1["changed_vs_init_bf16"], r1["changed_step_bf16"]) == (3, 3)
    assert r1["sparsity_vs_init"] == pytest.approx(1 - 13 / 128)
    mon.after_step(1)  # keeps θ1 as the reference for step 2 (every=1)
    mon.records.pop()
    with torch.no_grad():
        m.a[:4] -= 1e-4  # back to exactly 1.0: unchanged vs θ0 again, changed in this step
        m.b[7, 7] = 0.75
    mon.after_step(2)
    r2 = mon.records[-1]
    assert r2["step"] == 2 and r2["changed_vs_init"] == 13 - 4 + 1 and r2["changed_step"] == 5
    assert r2["changed_vs_init_bf16"] == 4 and r2["changed_step_bf16"] == 1


def test_every_n_compares_each_recorded_step_with_the_step_before() -> None:
    m = Two(torch.bfloat16)
    mon = SparsityMonitor(every=3)
    mon.attach(m)
    assert not mon.bf16_view
    for step in range(1, 7):
        with torch.no_grad():
            m.a[step] = 2.0  # one new weight per step
        mon.after_step(step)
    assert [r["step"] for r in mon.records] == [3, 6]
    assert [r["changed_vs_init"] for r in mon.records] == [3, 6]
    assert [r["changed_step"] for r in mon.records] == [1, 1]
    assert "changed_vs_init_bf16" not in mon.records[0]


def test_tied_weights_count_once() -> None:
    lin = torch.nn.Linear(4, 4, bias=False)
    model = torch.nn.Sequential(lin, torch.nn.Linear(4, 4, bias=False))
    model[1].weight = lin.weight
    mon = SparsityMonitor()
    mon.attach(model)
    assert mon.n_params == 16


@pytest.mark.parametrize("precision", ["mixed", "bf16"])
def test_monitor_equals_diff_of_saved_checkpoints(
    tmp_path: Path, tiny_dir: Path, monkeypatch, precision: str
) -> None:
    monkeypatch.setattr(Task, "score", digit_score)
    cfg = tiny_config(tiny_dir, "grpo", precision=precision, train={"steps": 3, "lr": 3e-4})
    result = train(config_from_dict(cfg), out_root=tmp_path, progress=False)
    records = {r["step"]: r for r in result.manifest["monitor"]}
    assert sorted(records) == [1, 2, 3]
    views = [("bf16", "_bf16" if precision == "mixed" else "")]
    if precision == "mixed":
        views.append(("fp32", ""))
    bitwise = DiffConfig(tolerances=(0.0,))
    for dtype, suffix in views:
        for step, rec in records.items():
            init = diff_checkpoints(
                result.checkpoint(0, dtype), result.checkpoint(step, dtype), bitwise, progress=False
            )
            prev = diff_checkpoints(
                result.checkpoint(step - 1, dtype),
                result.checkpoint(step, dtype),
                bitwise,
                progress=False,
            )
            assert rec["n_params"] == init.n_params
            assert rec[f"changed_vs_init{suffix}"] == init.n_changed, (dtype, step)
            assert rec[f"changed_step{suffix}"] == prev.n_changed, (dtype, step)
    last = records[3]
    assert (
        last["changed_vs_init"] > 0
    )  # training moved weights: the equalities above are not 0 == 0
    assert (
        result.manifest["final_diff"]["bf16"]["n_changed"] == last[f"changed_vs_init{views[0][1]}"]
    )
