"""The monitor's per-step patch bytes equal ``rlsparse budget`` on the same two states."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from rlsparse_lib.patches.budget import CODECS, sync_budget
from rlsparse_lib.training.monitor import SparsityMonitor


class Net(torch.nn.Module):
    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter((torch.randn(96, 80, generator=g) * 0.02).to(dtype))
        self.b = torch.nn.Parameter((torch.randn(3000, generator=g) * 0.02).to(dtype))


def _save(model: Net, folder: Path) -> Path:
    folder.mkdir(parents=True)
    state = {n: p.detach().to(torch.bfloat16).contiguous() for n, p in model.named_parameters()}
    save_file(state, folder / "model.safetensors")
    return folder


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_monitor_patch_bytes_equal_budget(dtype: torch.dtype, tmp_path: Path) -> None:
    model = Net(dtype)
    mon = SparsityMonitor(every=1, codecs=True)
    mon.attach(model)
    paths = [_save(model, tmp_path / "s0")]
    g = torch.Generator().manual_seed(1)
    for step in (1, 2):
        with torch.no_grad():
            for p in model.parameters():
                hit = torch.rand(p.shape, generator=g) < 0.05 * step
                p[hit] *= 1.02
        mon.after_step(step)
        paths.append(_save(model, tmp_path / f"s{step}"))
    bud = sync_budget([str(p) for p in paths], progress=False).steps
    for rec, (_, row) in zip(mon.records, bud.iterrows(), strict=True):
        changed = rec["changed_step_bf16" if dtype == torch.float32 else "changed_step"]
        assert changed == row["n_changed"] > 0
        assert rec["patch_bytes_raw"] == 6 * changed
        for c in CODECS:
            assert rec[f"patch_bytes_{c}"] == row[f"bytes_{c}"], c
    assert mon.seconds > 0


def test_monitor_without_codecs_logs_counts_only() -> None:
    model = Net(torch.bfloat16)
    mon = SparsityMonitor(every=1)
    mon.attach(model)
    mon.after_step(1)
    assert not any(k.startswith("patch_bytes") for k in mon.records[0])


def test_budget_from_monitor_log(tmp_path: Path, capsys) -> None:
    from rlsparse_lib.cli import main
    from rlsparse_lib.patches.budget import budget_from_monitor

    model = Net(torch.bfloat16)
    log = tmp_path / "monitor.jsonl"
    mon = SparsityMonitor(every=1, log_path=log, codecs=True)
    mon.attach(model)
    for step in (1, 2, 3):
        with torch.no_grad():
            model.w[step, :5] += 0.01
        mon.after_step(step)
    bud = budget_from_monitor(log, every=(2,), periods=(10.0,))
    assert list(bud.steps["n_changed"]) == [r["changed_step"] for r in mon.records]
    assert list(bud.steps["bytes_rlsparse"]) == [r["patch_bytes_rlsparse"] for r in mon.records]
    dense = mon.records[-1]["patch_bytes_dense"]
    raw = bud.steps["bytes_raw"].to_numpy()
    assert bud.cadence.set_index("codec").loc["raw", "bytes_per_sync"] == (dense + raw.mean()) / 2
    assert main(["budget", str(log), "-q"]) == 0
    assert "B per changed element" in capsys.readouterr().out
    SparsityMonitor(every=1, log_path=tmp_path / "plain.jsonl").attach(model)
    (tmp_path / "plain.jsonl").write_text('{"step": 1, "changed_step": 3, "n_params": 9}\n')
    assert main(["budget", str(tmp_path / "plain.jsonl")]) == 2


def test_config_switch_logs_codecs_during_a_run(tmp_path: Path, monkeypatch) -> None:
    """``monitor: {codecs: true}`` in a run config logs each step's patch bytes, equal to
    ``rlsparse budget`` of the run's saved bf16 checkpoints; unset, the config dict keeps no key
    (so runs started before the switch existed still resume and are still reused)."""
    from rlsparse_lib.training.config import config_from_dict
    from rlsparse_lib.training.models import build_tiny_model
    from rlsparse_lib.training.runner import train
    from rlsparse_lib.training.tasks import Task

    from .test_train_factory import digit_score, tiny_config

    monkeypatch.setattr(Task, "score", digit_score)
    tiny = build_tiny_model(tmp_path / "tiny")
    plain = tiny_config(tiny, "sft", train={"steps": 2, "lr": 3e-4})
    assert config_from_dict(plain).to_dict()["monitor"].get("codecs") is None
    cfg = tiny_config(
        tiny,
        "sft",
        train={"steps": 2, "lr": 3e-4},
        monitor={"every": 1, "codecs": True},
        checkpoints={"every": 1, "fp32": False},
    )
    result = train(config_from_dict(cfg), out_root=tmp_path / "out", progress=False)
    records = result.manifest["monitor"]
    paths = [str(result.checkpoint(s, "bf16")) for s in (0, 1, 2)]
    bud = sync_budget(paths, progress=False).steps
    assert [r["step"] for r in records] == [1, 2]
    for rec, (_, row) in zip(records, bud.iterrows(), strict=True):
        assert rec["changed_step_bf16"] == row["n_changed"] > 0
        for c in CODECS:
            assert rec[f"patch_bytes_{c}"] == row[f"bytes_{c}"], c
