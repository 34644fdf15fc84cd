"""Precision fp16: weights held as IEEE half values (rounded after every optimizer step, fp32
optimizer), fp16 checkpoints, the monitor and ``final_diff`` on fp16 words, θ0 = the model rounded
to fp16, bit-identical resumption; each checked against numpy's fp16 rounding or the diff engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from rlsparse_lib.diff.config import DiffConfig
from rlsparse_lib.diff.engine import diff_checkpoints
from rlsparse_lib.errors import ConfigError
from rlsparse_lib.training import precision_modes
from rlsparse_lib.training.builders import common_args
from rlsparse_lib.training.config import config_from_dict
from rlsparse_lib.training.cpu_compute import CpuBf16
from rlsparse_lib.training.models import load_model
from rlsparse_lib.training.precision_modes import Fp16Weights, Precision, round_to_fp16
from rlsparse_lib.training.results import monitor_rows, run_summary
from rlsparse_lib.training.runner import train
from rlsparse_lib.training.tasks import Task

from .test_train_factory import digit_score, make_tiny, tiny_config
from .test_train_resume import _child, _same_bits, _states


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny(tmp_path_factory)


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)


def half_ulp(values: np.ndarray) -> np.ndarray:
    """Half the distance from each fp16 value to its nearer neighbour (float64): an update
    smaller than this in magnitude rounds back to the value."""
    v = values.astype(np.float16)
    up = np.nextafter(v, np.float16(np.inf)).astype(np.float64) - v
    down = v - np.nextafter(v, np.float16(-np.inf)).astype(np.float64)
    return 0.5 * np.minimum(up, down)


# ---- the mode ------------------------------------------------------------------------------------
def test_fp16_mode_on_cpu_and_gpu(tiny_dir: Path) -> None:
    slow = CpuBf16(False, "test", "AVX2", "x86_64")
    cpu = Precision.for_device("fp16", "cpu", slow)
    assert (cpu.weights, cpu.tensors, cpu.compute) == ("float16", "float32", "float32")
    assert (cpu.checkpoint, cpu.checkpoint_dtype, cpu.rounded_to) == ("fp16", "float16", "float16")
    assert not cpu.keeps_fp32 and not cpu.autocast_fp16
    d = cpu.describe()
    assert d["loss_scaling"] is False and d["optimizer_state"] == "float32"
    assert [type(c) for c in cpu.callbacks()] == [Fp16Weights]
    gpu = Precision.for_device("fp16", "cuda")
    assert gpu.compute == "float16" and gpu.describe()["loss_scaling"] is True
    cfg = config_from_dict(tiny_config(tiny_dir, "sft", precision="fp16"))
    on_gpu = common_args(cfg, Path("unused"), use_cpu=False, precision=gpu)
    assert on_gpu["fp16"] is True and on_gpu["bf16"] is False  # Trainer: autocast + GradScaler
    on_cpu = common_args(cfg, Path("unused"), use_cpu=True, precision=cpu)
    assert on_cpu["fp16"] is False and on_cpu["bf16"] is False
    # the other modes keep their records (a partial run compares them to resume)
    for mode in ("bf16", "mixed", "fp32"):
        rec = Precision.for_device(mode, "cpu", slow).describe()
        assert "loss_scaling" not in rec and Precision(mode).callbacks() == []


def test_fp16_autocast_without_a_loss_scaler_is_refused(tmp_path: Path, tiny_dir: Path) -> None:
    """The GPU branch (``fp16=True``) reaches accelerate, which makes a GradScaler only on an
    accelerator: on this CPU there is none, so the manifest's ``loss_scaling`` would be false."""
    from rlsparse_lib.training.builders import build_trainer
    from rlsparse_lib.training.data import build_rows

    cfg = config_from_dict(tiny_config(tiny_dir, "sft", precision="fp16"))
    gpu = Precision("fp16", gpu=True)
    model, tok = load_model(str(tiny_dir), gpu.tensors)
    task = Task(cfg.task)
    rows = build_rows(cfg, task, None)
    with pytest.raises(RuntimeError, match="fp16 autocast without a loss scaler"):
        build_trainer(cfg, model, tok, task, rows, [], tmp_path, use_cpu=True, precision=gpu)
    cpu = Precision("fp16")
    trainer = build_trainer(cfg, model, tok, task, rows, [], tmp_path, True, cpu)
    assert trainer.args.fp16 is False and trainer.accelerator.scaler is None
    assert any(isinstance(c, Fp16Weights) for c in trainer.callback_handler.callbacks)


def test_rounding_absorbs_updates_below_half_an_fp16_ulp() -> None:
    """SGD steps on planted gradients, then the mode's rounding, equal numpy's fp16 rounding of
    the fp32 sum w + Δ; updates below half an ULP leave the weight bit-identical."""
    rng = np.random.default_rng(0)
    w16 = (rng.standard_normal((64, 64)) * np.exp2(rng.integers(-8, 4, (64, 64)))).astype(
        np.float16
    )
    w = w16.astype(np.float32)
    h = half_ulp(w16)
    # |Δ| from 0.01 to 3 half-ULPs of each weight, both signs, plus exact ties (RNE)
    ratio = rng.uniform(0.01, 3.0, w.shape)
    ratio[:4] = 1.0
    delta = (np.where(rng.random(w.shape) < 0.5, -1, 1) * ratio * h).astype(np.float32)
    layer = torch.nn.Linear(64, 64, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(w))
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    layer.weight.grad = torch.from_numpy(-delta)
    opt.step()
    Fp16Weights().on_optimizer_step(None, None, None, model=layer)
    got = layer.weight.detach().numpy()
    want = (w + delta).astype(np.float16)  # numpy: fp32 sum, then round to nearest even
    assert np.array_equal(got.view(np.uint32), want.astype(np.float32).view(np.uint32))
    below = np.abs(delta.astype(np.float64)) < h
    assert below.sum() > 500 and (~below).sum() > 500
    assert np.array_equal(got[below].view(np.uint32), w[below].view(np.uint32))  # absorbed
    assert (got[ratio > 1.01] != w[ratio > 1.01]).all()  # beyond half an ULP: it moves


def test_weights_outside_the_fp16_range_are_an_error() -> None:
    layer = torch.nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight[0, 0] = 1e5
    with pytest.raises(ConfigError, match=r"parameter 'weight' has \|w\| = 100000 > 65504"):
        Precision("fp16").prepare(layer)
    Precision("mixed").prepare(layer)  # other modes: untouched
    assert layer.weight[0, 0] == 1e5


# ---- runs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sft", "grpo"])
def test_fp16_run_holds_fp16_weights_and_measures_fp16_sparsity(
    tmp_path: Path, tiny_dir: Path, monkeypatch, kind: str
) -> None:
    monkeypatch.setattr(Task, "score", digit_score)
    steps: list[tuple[np.ndarray, np.ndarray]] = []  # (w + Δ before rounding, after), per step

    def recording(model) -> None:
        before = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy().copy()
        round_to_fp16(model)
        after = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy().copy()
        steps.append((before, after))

    monkeypatch.setattr(precision_modes, "round_to_fp16", recording)
    cfg = tiny_config(tiny_dir, kind, precision="fp16", train={"steps": 3, "lr": 1e-4})
    result = train(config_from_dict(cfg), out_root=tmp_path, progress=False)
    m = result.manifest
    assert m["precision"]["weights"] == "float16" and m["precision"]["compute"] == "float32"
    assert m["precision"]["loss_scaling"] is False
    assert [sorted(c) for c in m["checkpoints"]] == [["fp16", "step"]] * 4  # no bf16 / fp32 files

    # θ0 is the model rounded to fp16; every checkpoint is float16
    model, _ = load_model(str(tiny_dir))
    theta0 = tensors(result.checkpoint(0))
    for name, p in model.named_parameters():
        assert theta0[name].dtype == torch.float16
        assert torch.equal(theta0[name].view(torch.int16), p.detach().half().view(torch.int16))
    for c in m["checkpoints"]:
        assert {t.dtype for t in tensors(result.path / c["fp16"]).values()} == {torch.float16}

    # every optimizer step: after = numpy's fp16 rounding of w + Δ; sub-half-ULP updates absorbed
    assert len(steps) == 3
    prev = np.concatenate(
        [p.detach().half().float().reshape(-1).numpy() for p in model.parameters()]
    )
    absorbed = moved = 0
    for before, after in steps:
        want = before.astype(np.float16).astype(np.float32)
        assert np.array_equal(after.view(np.uint32), want.view(np.uint32))
        below = np.abs(before.astype(np.float64) - prev) < half_ulp(prev)
        assert np.array_equal(after[below].view(np.uint32), prev[below].view(np.uint32))
        absorbed += int((below & (before != prev)).sum())  # updated in fp32, lost in fp16
        moved += int((after != prev).sum())
        prev = after
    assert absorbed > 0 and moved > 0
    final = np.concatenate(
        [t.float().reshape(-1).numpy() for t in tensors(result.checkpoint(3)).values()]
    )
    assert np.array_equal(np.sort(final), np.sort(prev))  # the last checkpoint is the held weights

    # the monitor counts fp16 words: equal to the diff engine on the fp16 checkpoints
    bitwise = DiffConfig(tolerances=(0.0,))
    records = {r["step"]: r for r in m["monitor"]}
    assert sorted(records) == [1, 2, 3]
    for step, rec in records.items():
        assert rec["dtype"] == "float16" and "changed_vs_init_bf16" not in rec
        init = diff_checkpoints(
            result.checkpoint(0), result.checkpoint(step), bitwise, progress=False
        )
        prev_ck = result.checkpoint(step - 1)
        one = diff_checkpoints(prev_ck, result.checkpoint(step), bitwise, progress=False)
        assert (rec["changed_vs_init"], rec["changed_step"]) == (init.n_changed, one.n_changed)
    fd = m["final_diff"]
    assert set(fd) == {"fp16"} and fd["fp16"]["sparsity_bitwise"] == records[3]["sparsity_vs_init"]
    row = run_summary(result.path)
    assert row["fp16_sparsity_bitwise"] == fd["fp16"]["sparsity_bitwise"]
    assert row["bf16_sparsity_bitwise"] is None and row["precision"] == "fp16"
    dyn = monitor_rows(result.path)
    assert [r["fp16_sparsity_vs_init"] for r in dyn] == [
        records[s]["sparsity_vs_init"] for s in (1, 2, 3)
    ]
    assert all(r["bf16_sparsity_vs_init"] is None for r in dyn)


def test_killed_fp16_run_resumes_bit_identically(tmp_path: Path, tiny_dir: Path) -> None:
    config = tiny_config(
        tiny_dir,
        "sft",
        name="resume-sft",  # the child's hooks key on nothing else; any name works
        precision="fp16",
        task={"train_size": 4},
        train={"steps": 5},
        checkpoints={"every": 2},
    )
    ref = train(config_from_dict(config), out_root=tmp_path / "ref", progress=False)
    root = tmp_path / "killed"
    _child(config, root, "after-state", 2)
    assert _states(root / "data" / "runs" / ".resume-sft.partial") == ["state_000002"]
    got = train(config_from_dict(config), out_root=root, progress=False).manifest
    m = ref.manifest
    assert got["checkpoints"] == m["checkpoints"] and len(m["checkpoints"]) == 4  # 0 2 4 5
    for entry in m["checkpoints"]:
        _same_bits(ref.path / entry["fp16"], root / "data" / "runs" / "resume-sft" / entry["fp16"])
    assert got["monitor"] == m["monitor"] and got["final_diff"] == m["final_diff"]
    assert [r["from_step"] for r in got["resumes"]] == [2]
    assert m["monitor"][-1]["sparsity_vs_init"] < 0.9  # it trained
    assert json.dumps(got["precision"]) == json.dumps(m["precision"])
