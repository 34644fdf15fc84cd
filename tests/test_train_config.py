"""Run configs: the shipped YAML files, strict loading (unknown keys, types, sections), overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rlsparse_lib.errors import ConfigError
from rlsparse_lib.paths import repo_root
from rlsparse_lib.training.config import (
    SECTIONS_FOR_KIND,
    RunConfig,
    TrainSection,
    config_from_dict,
    load_config,
)

CONFIGS = sorted((repo_root() / "data" / "configs").rglob("*.yaml"))


def test_every_shipped_config_is_valid_and_named_uniquely() -> None:
    assert len(CONFIGS) >= 11
    cfgs = [load_config(p) for p in CONFIGS]
    names = [c.name for c in cfgs]
    assert len(set(names)) == len(names), names
    kinds = {c.kind for c in cfgs}
    assert kinds == set(SECTIONS_FOR_KIND)  # a config of every run type
    cpu = [c for p, c in zip(CONFIGS, cfgs, strict=True) if p.parent.name == "cpu"]
    assert {c.kind for c in cpu} == set(SECTIONS_FOR_KIND)
    assert {c.precision for c in cpu} == {"mixed", "fp16"}  # fp16: the fp16 controls
    assert any(c.mask and c.mask.random for c in cpu) and any(
        c.mask and not c.mask.random for c in cpu
    )
    dpo_data = {c.preference.data for c in cpu if c.kind == "dpo" and c.preference}
    assert dpo_data == {"own", "external"}


def _write(tmp_path: Path, data: object, name: str = "run.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return p


def test_defaults_name_from_file_and_round_trip(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, {"kind": "grpo"}, "my-run.yaml"))
    assert cfg.name == "my-run" and cfg.rl is not None and cfg.sampling is None
    assert cfg.train == TrainSection()
    assert config_from_dict(cfg.to_dict()) == cfg
    assert isinstance(cfg, RunConfig)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"kind": "grpo", "lr": 1}, "unknown key 'lr'"),
        ({"kind": "grpo", "train": {"stpes": 3}}, "unknown key 'train.stpes'"),
        ({"kind": "grpo", "task": {"params": [1]}}, "'task.params' must be a mapping"),
        ({"kind": "grpo", "train": {"steps": 2.5}}, "'train.steps' must be an integer"),
        ({"kind": "grpo", "train": {"steps": True}}, "'train.steps' must be an integer"),
        ({"kind": "grpo", "train": {"steps": 0}}, "'train.steps' must be >= 1"),
        ({"kind": "grpo", "train": {"lr": "fast"}}, "'train.lr' must be a number"),
        ({"kind": "grpo", "train": {"lr": float("nan")}}, "'train.lr' must be finite"),
        ({"kind": "grpo", "precision": "fp8"}, "'precision' must be bf16, fp16, mixed or fp32"),
        ({"kind": "reinforce"}, "'kind' must be one of"),
        ({}, "'kind' must be one of"),
        ({"kind": "sft", "rl": {"beta": 0.1}}, "section 'rl' does not apply to kind 'sft'"),
        ({"kind": "grpo", "preference": {}}, "section 'preference' does not apply"),
        ({"kind": "grpo", "rl": {"num_generations": 1}}, "'rl.num_generations' must be >= 2"),
        ({"kind": "rloo", "rl": {"loss_type": "dapo"}}, "null for rloo"),
        (
            {"kind": "dpo", "preference": {"data": "web"}},
            "'preference.data' must be own or external",
        ),
        ({"kind": "grpo", "mask": {"stratify": "global"}}, "'mask.path' must be a mask file"),
        ({"kind": "grpo", "mask": {"path": "m", "stratify": "row"}}, "'mask.stratify'"),
        ({"kind": "grpo", "name": "../escape"}, "'name' must be a folder name"),
        ({"kind": "grpo", "task": {"extract": "regex"}}, "'task.extract'"),
        ({"kind": "grpo", "train": "fast"}, "'train' must be a mapping"),
        ({"kind": "kto", "train": {"batch_size": 1}}, "'train.batch_size' must be >= 2 for kto"),
    ],
)
def test_bad_configs_name_file_and_key(tmp_path: Path, data: dict, message: str) -> None:
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "kind: [grpo\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(_write(tmp_path, "- kind: grpo\n"))


def test_overrides_are_checked_like_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, {"kind": "grpo", "precision": "mixed", "train": {"lr": 1e-6}})
    cfg = load_config(
        path, ["train.lr=1e-5", "precision=fp32", "rl.epsilon=null", "task.params.max_digits=3"]
    )
    assert cfg.train.lr == 1e-5 and cfg.precision == "fp32" and cfg.rl.epsilon is None
    assert cfg.task.params == {"max_digits": 3}
    assert cfg.train.steps == TrainSection().steps
    with pytest.raises(ConfigError, match=r"unknown key 'train\.lrate'"):
        load_config(path, ["train.lrate=1"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(path, ["train.lr"])
    with pytest.raises(ConfigError, match="'precision' is not a section"):
        load_config(path, ["precision.x=1"])


def test_float_written_without_dot_is_accepted(tmp_path: Path) -> None:
    # PyYAML reads "1e-5" (no dot) as a string; the loader accepts it as a number
    cfg = load_config(_write(tmp_path, "kind: sft\ntrain:\n  lr: 1e-5\n"))
    assert cfg.train.lr == 1e-5


def test_external_preference_data_needs_no_sampling(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, {"kind": "dpo", "preference": {"data": "external"}}))
    assert not cfg.uses_own_samples
    cfg = load_config(_write(tmp_path, {"kind": "kto"}))
    assert cfg.uses_own_samples and cfg.sampling is not None
    with pytest.raises(
        ConfigError, match="'sampling' does not apply to preference\\.data: external"
    ):
        load_config(
            _write(tmp_path, {"kind": "dpo", "preference": {"data": "external"}, "sampling": {}})
        )
