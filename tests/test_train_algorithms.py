"""The paper's further algorithms as run kinds on the tiny model: ORPO and SimPO (TRL's
experimental ORPO / CPO trainers) train, write their checkpoint series, and their monitor equals a
diff of the checkpoints; config validation of their sections."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlsparse_lib.diff.config import DiffConfig
from rlsparse_lib.diff.engine import diff_checkpoints
from rlsparse_lib.errors import ConfigError
from rlsparse_lib.training.config import config_from_dict, load_config
from rlsparse_lib.training.runner import train
from rlsparse_lib.training.tasks import Task

from .test_train_factory import digit_score, make_tiny, tiny_config

CONFIGS = Path(__file__).resolve().parent.parent / "data" / "configs" / "cpu"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny(tmp_path_factory)


def pref_config(model_dir: Path, kind: str, **sections: dict) -> dict:
    """``tiny_config`` with external pairs unless ``preference`` says otherwise."""
    sections["preference"] = {"data": "external", **sections.get("preference", {})}
    return tiny_config(model_dir, kind, **sections)


def _monitor_equals_checkpoint_diffs(result, steps: int) -> None:
    records = {r["step"]: r for r in result.manifest["monitor"]}
    assert sorted(records) == list(range(1, steps + 1))
    bitwise = DiffConfig(tolerances=(0.0,))
    for dtype, suffix in (("bf16", "_bf16"), ("fp32", "")):
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
            assert rec[f"changed_vs_init{suffix}"] == init.n_changed, (dtype, step)
            assert rec[f"changed_step{suffix}"] == prev.n_changed, (dtype, step)
    assert records[steps]["changed_vs_init"] > 0  # it trained: the equalities are not 0 == 0


@pytest.mark.parametrize(
    ("kind", "preference"),
    [
        ("orpo", {"data": "external"}),
        ("simpo", {"data": "external", "beta": 2.0}),
        ("orpo", {"data": "own"}),
    ],
    ids=["orpo-external", "simpo-external", "orpo-own"],
)
def test_reference_free_preference_kinds_train(
    tmp_path: Path, tiny_dir: Path, monkeypatch, kind: str, preference: dict
) -> None:
    monkeypatch.setattr(Task, "score", digit_score)
    extra: dict = {"preference": preference}
    if preference["data"] == "own":
        extra["sampling"] = {"prompts": 8}
    cfg = config_from_dict(pref_config(tiny_dir, kind, **extra))
    result = train(cfg, out_root=tmp_path, progress=False)
    m = result.manifest
    assert m["status"] == "complete" and m["kind"] == kind
    assert [c["step"] for c in m["checkpoints"]] == [0, 1, 2]
    losses = [h["loss"] for h in m["history"] if "loss" in h]
    assert len(losses) == 2
    assert m["final_diff"]["fp32"]["n_changed"] > 0
    if cfg.uses_own_samples:
        assert m["data"]["own_samples"]["n_samples"] == 8 * 4
    _monitor_equals_checkpoint_diffs(result, 2)


def test_simpo_is_cpo_simpo_without_bc_term(tiny_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from rlsparse_lib.training.builders import build_trainer
    from rlsparse_lib.training.models import load_model

    cfg = config_from_dict(pref_config(tiny_dir, "simpo", preference={"beta": 2.0}))
    model, tok = load_model(str(tiny_dir), "float32")
    task = Task(cfg.task)
    rows = [
        {
            "prompt": task.messages(e),
            "chosen": [{"role": "assistant", "content": "1"}],
            "rejected": [{"role": "assistant", "content": "2"}],
        }
        for e in task.train[:4]
    ]
    trainer = build_trainer(cfg, model, tok, task, rows, [], tmp_path, use_cpu=True)
    assert trainer.args.loss_type == "simpo" and trainer.args.cpo_alpha == 0.0
    assert trainer.args.beta == 2.0


@pytest.mark.parametrize("kind", ["orpo", "simpo"])
def test_config_sections(tiny_dir: Path, kind: str) -> None:
    ok = config_from_dict(pref_config(tiny_dir, kind, preference={"data": "own"}, sampling={}))
    assert ok.uses_own_samples and ok.sampling is not None
    assert config_from_dict(pref_config(tiny_dir, kind)).sampling is None  # external: no sampling
    with pytest.raises(ConfigError, match="section 'rl' does not apply"):
        config_from_dict(pref_config(tiny_dir, kind, rl={"num_generations": 2}))
    with pytest.raises(
        ConfigError, match=r"'sampling' does not apply to preference\.data: external"
    ):
        config_from_dict(pref_config(tiny_dir, kind, sampling={"prompts": 4}))
    with pytest.raises(ConfigError, match=r"preference\.loss_type"):
        config_from_dict(pref_config(tiny_dir, kind, preference={"loss_type": "hinge"}))
    with pytest.raises(ConfigError, match=r"preference\.beta"):
        config_from_dict(pref_config(tiny_dir, kind, preference={"beta": 0}))
    # the CPU config loads and is the kind it says
    assert load_config(CONFIGS / f"{kind}.yaml").kind == kind


def test_dpo_keeps_its_loss_type(tiny_dir: Path) -> None:
    cfg = config_from_dict(tiny_config(tiny_dir, "dpo", preference={"loss_type": "hinge"}))
    assert cfg.preference is not None and cfg.preference.loss_type == "hinge"
