"""Resumable training: a run SIGKILLed after a saved state, and again while saving one, continues
from its last complete state to checkpoints, history and monitor records bit-identical to an
uninterrupted run (SFT and GRPO on the tiny model, across epoch boundaries); ``rlsparse train``
says it resumes, ``--restart`` starts over, and a partial run of another config is refused.

The killed segments run in child processes (``python -m tests.test_train_resume``) that SIGKILL
themselves at an exact point: right after a state was renamed into place (``after-state``), or
inside the Trainer's save of a checkpoint, after the weights and optimizer were written but before
the RNG and trainer state (``mid-save``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from rlsparse_lib.cli import main
from rlsparse_lib.training.config import config_from_dict
from rlsparse_lib.training.runner import train
from rlsparse_lib.training.tasks import Task

from .test_train_factory import digit_score, make_tiny, tiny_config

ROOT = Path(__file__).resolve().parents[1]
#: wall-clock log keys (GRPO's step_time): the only history values allowed to differ
TIMING = {"step_time"}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny(tmp_path_factory)


def _config(tiny_dir: Path, kind: str) -> dict[str, Any]:
    # 4 training items, 2 per step: an epoch every 2 steps; states at 3, 6, 9 (3: mid-epoch,
    # 6: on an epoch boundary, 3 epochs done); the last step 10 is not a state
    cfg = tiny_config(
        tiny_dir,
        kind,
        name=f"resume-{kind}",
        task={"train_size": 4},
        train={"steps": 10},
        # SFT keeps no fp32 files: its resumed monitor takes θ0 from .trainer/theta0.safetensors
        checkpoints={"every": 3, "fp32": kind == "grpo"},
        monitor={"every": 1 if kind == "grpo" else 2},
    )
    if kind == "grpo":
        cfg["rl"] = {"num_generations": 4, "temperature": 1.0}
    return cfg


def _child(config: dict[str, Any], root: Path, hook: str, step: int) -> None:
    """Train ``config`` under ``root`` in a child process that SIGKILLs itself at ``hook``."""
    spec = json.dumps({"config": config, "root": str(root), "hook": hook, "step": step})
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.test_train_resume", spec],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


def _kill_at(hook: str, step: int) -> None:
    """Install the child's self-kill (see the module docstring)."""
    import transformers

    from rlsparse_lib.training.resume import StateKeeper

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    if hook == "after-state":
        on_save = StateKeeper.on_save

        def on_save_then_die(self, args, state, control, **kwargs):
            on_save(self, args, state, control, **kwargs)
            if state.global_step == step:
                die()

        StateKeeper.on_save = on_save_then_die  # type: ignore[method-assign]
    else:
        save_rng = transformers.Trainer._save_rng_state

        def die_in_save(self, output_dir):
            if self.state.global_step == step:
                die()
            save_rng(self, output_dir)

        transformers.Trainer._save_rng_state = die_in_save  # type: ignore[method-assign]


def _states(partial: Path) -> list[str]:
    """The Trainer checkpoints and resumable states in a partial run."""
    names = (p.name for p in (partial / ".trainer").iterdir())
    return sorted(n for n in names if n.startswith(("state_", "checkpoint-")))


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)


def _same_bits(a: Path, b: Path) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    for name, x in ta.items():
        ints = {2: torch.int16, 4: torch.int32}[x.element_size()]
        assert x.dtype == tb[name].dtype and torch.equal(x.view(ints), tb[name].view(ints)), (
            a,
            name,
        )


def _history(manifest: dict) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMING} for h in manifest["history"]]


# GRPO (sampling: RNG state matters) takes ~80 s on 2 busy cores, SFT ~60 s
@pytest.mark.parametrize("kind", ["sft", pytest.param("grpo", marks=pytest.mark.slow)])
def test_killed_run_resumes_bit_identically(
    tiny_dir: Path, tmp_path: Path, monkeypatch, capsys, kind: str
) -> None:
    monkeypatch.setattr(Task, "score", digit_score)
    config = _config(tiny_dir, kind)
    ref = train(config_from_dict(config), out_root=tmp_path / "ref", progress=False)

    root = tmp_path / "killed"
    partial = root / "data" / "runs" / f".resume-{kind}.partial"
    _child(config, root, "after-state", 3)
    assert _states(partial) == ["state_000003"]
    # resumed from 3, killed inside the save of step 9: state 9 is never trusted
    _child(config, root, "mid-save", 9)
    assert _states(partial) == ["checkpoint-9", "state_000006"]
    assert (partial / "step_000009").is_dir()  # written before the kill, must be rewritten

    cfg_file = tmp_path / f"{kind}.yaml"
    cfg_file.write_text(json.dumps(config))
    assert main(["train", str(cfg_file), "--out-root", str(root), "-q"]) == 0
    assert "resuming resume-" + kind + " from its state at step 6 of 10" in capsys.readouterr().out
    run = root / "data" / "runs" / f"resume-{kind}"
    got = json.loads((run / "run.json").read_text())
    m = ref.manifest

    assert got["checkpoints"] == m["checkpoints"] and len(m["checkpoints"]) == 5  # 0 3 6 9 10
    for entry in m["checkpoints"]:
        for view in ("bf16", "fp32") if kind == "grpo" else ("bf16",):
            _same_bits(ref.path / entry[view], run / entry[view])
    assert _history(got) == _history(m) and len(m["history"]) == 10
    assert got["monitor"] == m["monitor"] and len(m["monitor"]) == (10 if kind == "grpo" else 5)
    assert (run / "monitor.jsonl").read_text() == (ref.path / "monitor.jsonl").read_text()
    logged = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in h.items() if k not in TIMING} for h in logged] == _history(m)
    assert got["eval"] == m["eval"] and got["final_diff"] == m["final_diff"]
    assert (run / "eval_after.jsonl").read_bytes() == (ref.path / "eval_after.jsonl").read_bytes()
    assert [r["from_step"] for r in got["resumes"]] == [3, 6] and m["resumes"] == []
    assert not (run / ".trainer").exists() and not partial.exists()
    # the run learned something: a test of "identical" on untouched weights would prove nothing
    assert m["monitor"][-1]["sparsity_vs_init"] < 0.5
    if kind == "grpo":
        assert len({h["reward"] for h in m["history"]}) > 1


def test_restart_and_config_mismatch(tiny_dir: Path, tmp_path: Path, capsys) -> None:
    config = _config(tiny_dir, "sft")
    root = tmp_path / "r"
    _child(config, root, "after-state", 3)
    cfg_file = tmp_path / "sft.yaml"
    other = {**config, "train": {**config["train"], "lr": 2e-3}}
    cfg_file.write_text(json.dumps(other))
    assert main(["train", str(cfg_file), "--out-root", str(root), "-q"]) == 2
    err = capsys.readouterr().err
    assert "another config ('train.lr' differs)" in err and "--restart" in err
    assert (root / "data" / "runs" / ".resume-sft.partial" / ".trainer" / "state_000003").is_dir()
    args = ["train", str(cfg_file), "--out-root", str(root), "-q", "--restart"]
    args += ["--set", "train.steps=2", "checkpoints.every=1"]
    assert main(args) == 0
    assert "resuming" not in capsys.readouterr().out
    got = json.loads((root / "data" / "runs" / "resume-sft" / "run.json").read_text())
    assert got["resumes"] == [] and [c["step"] for c in got["checkpoints"]] == [0, 1, 2]


if __name__ == "__main__":  # the killed child of _child
    spec = json.loads(sys.argv[1])
    Task.score = digit_score  # type: ignore[method-assign]
    _kill_at(spec["hook"], spec["step"])
    train(config_from_dict(spec["config"]), out_root=spec["root"], progress=False)
    sys.exit("the child was not killed")
