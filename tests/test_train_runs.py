"""Training runs end to end on the tiny model: every kind, precision modes, checkpoint series,
manifest, determinism, and no partial outputs on bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from rlsparse_lib.errors import ConfigError
from rlsparse_lib.io.checkpoint import open_checkpoint
from rlsparse_lib.training.builders import NO_CLIP, common_args
from rlsparse_lib.training.config import config_from_dict
from rlsparse_lib.training.data import DataError
from rlsparse_lib.training.models import load_model
from rlsparse_lib.training.runner import train
from rlsparse_lib.training.tasks import Task

from .test_train_factory import digit_score, make_tiny, tiny_config


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny(tmp_path_factory)


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)


@pytest.mark.parametrize(
    ("kind", "extra"),
    [
        ("sft", {}),
        ("rft", {"sampling": {"prompts": 8, "samples_per_prompt": 4}}),
        ("grpo", {"rl": {"num_generations": 2, "beta": 0.05}}),
        ("grpo", {"train": {"max_grad_norm": None}, "rl": {"num_generations": 2, "epsilon": None}}),
        ("rloo", {}),
        ("dpo", {"preference": {"data": "own"}, "sampling": {"prompts": 8}}),
        ("dpo", {}),
        ("kto", {"preference": {"data": "own"}, "sampling": {"prompts": 8}}),
        ("kto", {}),
    ],
    ids=[
        "sft",
        "rft",
        "grpo-kl",
        "grpo-noclip",
        "rloo",
        "dpo-own",
        "dpo-external",
        "kto-own",
        "kto-external",
    ],
)
def test_every_kind_trains_and_writes_a_complete_run(
    tmp_path: Path, tiny_dir: Path, monkeypatch, kind: str, extra: dict
) -> None:
    monkeypatch.setattr(Task, "score", digit_score)
    cfg = config_from_dict(tiny_config(tiny_dir, kind, **extra))
    result = train(cfg, out_root=tmp_path, progress=False)
    m = result.manifest
    assert result.path == tmp_path / "data" / "runs" / cfg.name
    assert not (result.path.parent / f".{cfg.name}.partial").exists()
    assert json.loads((result.path / "run.json").read_text()) == json.loads(
        json.dumps(m, default=str)
    )
    assert m["status"] == "complete" and m["kind"] == kind
    assert [c["step"] for c in m["checkpoints"]] == [0, 1, 2]
    losses = [h["loss"] for h in m["history"] if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)  # one per step
    if kind in ("grpo", "rloo"):
        assert all("reward" in h for h in m["history"])
    if cfg.rl is not None and cfg.rl.beta > 0:
        assert any(h.get("kl", 0) > 0 for h in m["history"])  # KL on: a reference model is used
    assert m["data"]["n_rows"] > 0
    if cfg.uses_own_samples:
        assert m["data"]["own_samples"]["n_samples"] == 8 * 4
    assert m["eval"]["before"]["n"] == m["eval"]["after"]["n"] == 4
    assert len((result.path / "eval_after.jsonl").read_text().splitlines()) == 4
    assert m["final_diff"]["fp32"]["n_changed"] > 0  # it trained
    assert m["versions"]["trl"] and m["model"]["provenance"]["source"] == "tiny-random"


@pytest.mark.parametrize("precision", ["bf16", "mixed", "fp32"])
def test_precision_modes_and_bit_identical_init(
    tmp_path: Path, tiny_dir: Path, precision: str
) -> None:
    cfg = config_from_dict(tiny_config(tiny_dir, "sft", precision=precision))
    result = train(cfg, out_root=tmp_path, progress=False)
    m = result.manifest
    dtypes = {"bf16": "bfloat16", "mixed": "float32", "fp32": "float32"}
    assert m["precision"]["weights"] == dtypes[precision]
    native = m["platform"]["cpu"]["bf16_native"]  # this CPU's verdict (RLSPARSE_CPU_BF16)
    assert m["precision"]["trainer_bf16_autocast"] == (precision == "mixed" and native)
    bf16_compute = precision == "bf16" or (precision == "mixed" and native)
    assert m["precision"]["compute"] == ("bfloat16" if bf16_compute else "float32")
    has_fp32 = precision != "bf16"
    assert all(("fp32" in c) == has_fp32 for c in m["checkpoints"])
    # θ0 on disk is exactly the loaded model in the run's weight dtype (bf16: the RNE cast)
    model, _ = load_model(str(tiny_dir), dtypes[precision])
    init = tensors(result.checkpoint(0))
    for name, p in model.named_parameters():
        assert init[name].dtype == torch.bfloat16
        assert torch.equal(
            init[name].view(torch.int16), p.detach().to(torch.bfloat16).view(torch.int16)
        )
    if has_fp32:
        init32 = tensors(result.checkpoint(0, "fp32"))
        for name, p in model.named_parameters():
            assert torch.equal(init32[name].view(torch.int32), p.detach().view(torch.int32))
    # checkpoints are loadable models and readable by the diff engine
    ck = open_checkpoint(result.checkpoint(2))
    assert ck.n_params == sum(p.numel() for p in model.parameters())
    reloaded, _ = load_model(str(result.checkpoint(2)), "bfloat16")
    assert torch.equal(
        reloaded.model.norm.weight, tensors(result.checkpoint(2))["model.norm.weight"]
    )


def test_clipping_off_reaches_the_trainer(tiny_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("RLSPARSE_CPU_BF16", "native")  # mixed autocasts to bf16 on this "CPU"
    cfg = config_from_dict(
        tiny_config(tiny_dir, "grpo", train={"max_grad_norm": None}, rl={"epsilon": None})
    )
    args = common_args(cfg, Path("unused"), use_cpu=True)
    assert args["max_grad_norm"] == 0.0  # the Trainer clips only when > 0
    assert args["bf16"] is True and args["optim"] == "adamw_torch" and args["seed"] == 0
    on = config_from_dict(tiny_config(tiny_dir, "grpo", precision="bf16"))
    assert common_args(on, Path("unused"), use_cpu=True)["max_grad_norm"] == 1.0
    assert common_args(on, Path("unused"), use_cpu=True)["bf16"] is False
    assert NO_CLIP >= 1e6  # ratio clip range [1 - ε, 1 + ε] that never binds


def test_runs_are_deterministic(tmp_path: Path, tiny_dir: Path, monkeypatch) -> None:
    monkeypatch.setattr(Task, "score", digit_score)
    finals = []
    for i in range(2):
        cfg = config_from_dict(tiny_config(tiny_dir, "grpo", name=f"det-{i}"))
        result = train(cfg, out_root=tmp_path, progress=False)
        finals.append(tensors(result.checkpoint(2, "fp32")))
        rewards = [h["reward"] for h in result.manifest["history"]]
    assert finals[0].keys() == finals[1].keys()
    assert all(torch.equal(finals[0][k], finals[1][k]) for k in finals[0])
    assert rewards  # the same rollouts were scored


def test_bad_input_leaves_no_output(tmp_path: Path, tiny_dir: Path, monkeypatch) -> None:
    runs = tmp_path / "data" / "runs"
    monkeypatch.setattr(Task, "score", lambda self, c, e: 0.0)  # nothing is ever correct
    cfg = config_from_dict(
        tiny_config(tiny_dir, "rft", sampling={"prompts": 2, "samples_per_prompt": 2})
    )
    with pytest.raises(DataError, match="no correct sample among 4 own samples"):
        train(cfg, out_root=tmp_path, progress=False)
    assert not runs.exists() or not any(runs.iterdir())
    cfg = config_from_dict(tiny_config(tiny_dir, "sft", train={"max_prompt_length": 10}))
    with pytest.raises(
        ConfigError, match=r"train\.max_prompt_length: a basic_arithmetic prompt has"
    ):
        train(cfg, out_root=tmp_path, progress=False)
    cfg = config_from_dict(tiny_config(tiny_dir, "sft", mask={"path": str(tmp_path / "nope.mask")}))
    with pytest.raises(ConfigError, match="no such mask file"):
        train(cfg, out_root=tmp_path, progress=False)
    assert not runs.exists() or not any(runs.iterdir())


def test_existing_run_folder_is_kept_unless_overwritten(tmp_path: Path, tiny_dir: Path) -> None:
    cfg = config_from_dict(
        tiny_config(tiny_dir, "sft", train={"steps": 1}, eval={"before": False, "after": False})
    )
    first = train(cfg, out_root=tmp_path, progress=False)
    stamp = (first.path / "run.json").stat().st_mtime_ns
    with pytest.raises(ConfigError, match="exists"):
        train(cfg, out_root=tmp_path, progress=False)
    assert (first.path / "run.json").stat().st_mtime_ns == stamp
    again = train(cfg, out_root=tmp_path, overwrite=True, progress=False)
    assert again.manifest["eval"] == {"before": None, "after": None}
    assert [c["step"] for c in again.manifest["checkpoints"]] == [0, 1]
