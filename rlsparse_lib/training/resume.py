"""Resumable runs: continue a killed run from its last saved state, bit-identically.

The transformers Trainer's own ``resume_from_checkpoint`` restores, exactly, the weights, the
optimizer (AdamW / SGD state), the LR scheduler, the python / numpy / torch RNG states and the
trainer state (global step, log history, token count), and skips the batches already trained in
the current epoch (accelerate's seedable sampler makes SFT's order a function of seed and epoch).
It is used as is. What it lacks, written here:

* **atomic states.** The Trainer writes ``checkpoint-k/`` in place and rotates old ones before
  anything marks the new one complete, so a SIGKILL can leave a half-written folder that its
  ``get_last_checkpoint`` would trust. Here the Trainer keeps every checkpoint (no rotation) and
  :class:`StateKeeper` renames a finished ``checkpoint-k`` to ``state_XXXXXX`` (one atomic rename)
  and only then removes the older states; only ``state_*`` folders are ever resumed from.
* **TRL's GRPO / RLOO sampler.** ``RepeatSampler`` draws each epoch's permutation from its own
  ``torch.Generator``, seeded once; a new trainer starts it over, so a run resumed after epoch e
  would replay epoch 0's order. On resume the generator is advanced by one permutation per
  finished epoch (:func:`advance_epoch_samplers`).
* **TRL's counters outside the Trainer state** restart at 0: ``_step`` (micro-steps; when
  GRPO/RLOO generate new completions) and ``_total_train_tokens`` (SFT/DPO/KTO's logged
  ``num_tokens``); :func:`restore_trl_counters` sets them from the step and the state's log.
* **run-level state** outside the Trainer (the runner restores it): the evaluation before training
  and own samples (``prelude.json``), the monitor's θ0 and records up to the state's step, the
  checkpoint list, the training time of earlier segments (``rlsparse.json`` in each state).

No state is saved at the last step (the run's final checkpoint is its ``step_XXXXXX`` folder; a kill
after training repeats the steps since the last state). A state is resumed only by the same config,
precision (compute dtype on this machine) and library versions, recorded in ``prelude.json``.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from rlsparse_lib.atomic import write_text_atomic
from rlsparse_lib.errors import ConfigError

STATE_FORMAT = "state_{:06d}"
_STATE_RE = re.compile(r"state_(\d{6})")
#: the run's record of what it was started with and computed before training
PRELUDE = "prelude.json"
#: the per-state sidecar: training seconds so far, earlier resumes
SIDECAR = "rlsparse.json"


@dataclass
class ResumePoint:
    """A partial run's latest complete state.

    Attributes:
        step: the optimizer step the state was saved after.
        path: its ``state_XXXXXX`` folder (for ``Trainer.train(resume_from_checkpoint=...)``).
        prelude: ``prelude.json`` (precision, versions, evaluation before, own samples).
        train_seconds: training time of the earlier segments.
        resumes: earlier resumes, ``{"from_step", "at"}`` each.
    """

    step: int
    path: Path
    prelude: dict[str, Any]
    train_seconds: float = 0.0
    resumes: list[dict[str, Any]] = field(default_factory=list)


def latest_state(trainer_dir: str | Path) -> tuple[int, Path] | None:
    """The highest-step ``state_XXXXXX`` folder under ``trainer_dir`` (None: none)."""
    folder = Path(trainer_dir)
    found = [
        (int(m.group(1)), p)
        for p in (folder.iterdir() if folder.is_dir() else ())
        if (m := _STATE_RE.fullmatch(p.name)) and p.is_dir()
    ]
    return max(found) if found else None


def first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    """The first dotted key where two JSON-like values differ (None-valued keys ignored)."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = {k for d in (a, b) for k, v in d.items() if v is not None}
        for key in sorted(keys):
            d = first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
            if d is not None:
                return d
        return None
    if isinstance(a, list | tuple) and isinstance(b, list | tuple) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            d = first_difference(x, y, f"{prefix}{i}.")
            if d is not None:
                return d
        return None
    return None if a == b else (prefix.rstrip(".") or "config")


def config_mismatch(partial: Path, config: dict[str, Any]) -> str | None:
    """The first key where ``partial``'s ``config.yaml`` differs from ``config`` (None: same or
    no config recorded)."""
    import yaml

    path = partial / "config.yaml"
    if not path.is_file():
        return None
    recorded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return first_difference(recorded, json.loads(json.dumps(config)))


def resume_point(
    partial: Path, config: dict[str, Any], precision: dict[str, Any], versions: dict[str, Any]
) -> ResumePoint | None:
    """The state to resume ``partial`` from; None when it has none (start over).

    Raises:
        ConfigError: the partial run was started with another config, precision or library
            versions (resuming would not reproduce an uninterrupted run).
    """
    name = partial.name.removeprefix(".").removesuffix(".partial")
    hint = f"rlsparse train --restart discards it (or choose another --name than '{name}')"
    diff = config_mismatch(partial, config)
    if diff is not None:
        raise ConfigError(
            f"{partial}: a partial run with another config ('{diff}' differs); {hint}"
        )
    prelude_path = partial / PRELUDE
    found = latest_state(partial / ".trainer")
    if found is None or not prelude_path.is_file():
        return None
    prelude = json.loads(prelude_path.read_text(encoding="utf-8"))
    for key, now in (("precision", precision), ("versions", versions)):
        diff = first_difference(prelude.get(key), json.loads(json.dumps(now)))
        if diff is not None:
            raise ConfigError(
                f"{partial}: started with another {key} ('{diff}': {_at(prelude.get(key), diff)!r}"
                f" then, {_at(now, diff)!r} now), so it would not resume bit-identically; {hint}"
            )
    step, path = found
    side = json.loads((path / SIDECAR).read_text(encoding="utf-8"))
    return ResumePoint(step, path, prelude, side["train_seconds"], side["resumes"])


def _at(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if isinstance(obj, dict):
            obj = obj.get(part)
        elif isinstance(obj, list) and part.isdigit() and int(part) < len(obj):
            obj = obj[int(part)]
        else:
            return None
    return obj


def write_prelude(run_dir: Path, prelude: dict[str, Any]) -> None:
    """Record what the run was started with and computed before training (atomically)."""
    write_text_atomic(run_dir / PRELUDE, json.dumps(prelude, indent=1, default=str) + "\n")


def read_records(path: Path, upto: int) -> list[dict[str, Any]]:
    """The JSON-lines records of ``path`` with ``step <= upto`` (later or torn lines dropped:
    records up to a state's step were complete before the state was renamed)."""
    out = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec["step"] <= upto:
                out.append(rec)
    return out


class StateKeeper(TrainerCallback):
    """Turns the Trainer's finished ``checkpoint-k`` into the resumable ``state_XXXXXX``.

    Args:
        trainer_dir: the Trainer's ``output_dir``.
        seconds_before: training seconds of earlier segments (0 for a fresh run).
        resumes: earlier resumes (recorded in every later state).
        resumed_step: the step this segment resumed from (None: a fresh run).
    """

    def __init__(
        self,
        trainer_dir: Path,
        seconds_before: float = 0.0,
        resumes: list[dict[str, Any]] | None = None,
        resumed_step: int | None = None,
    ) -> None:
        self.trainer_dir = Path(trainer_dir)
        self.seconds_before = seconds_before
        self.resumes = list(resumes or [])
        self.resumed_step = resumed_step
        self.t0 = time.perf_counter()

    @property
    def train_seconds(self) -> float:
        """Training seconds of this and the earlier segments."""
        return self.seconds_before + time.perf_counter() - self.t0

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self.t0 = time.perf_counter()
        if self.resumed_step is not None and train_dataloader is not None:
            n = len(train_dataloader)
            ga = args.gradient_accumulation_steps
            per_epoch = max(n // ga + int(n % ga > 0), 1)  # as Trainer.set_initial_training_values
            advance_epoch_samplers(train_dataloader, state.global_step // per_epoch)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = False  # the final step_XXXXXX is the run's end state

    def on_save(self, args, state, control, **kwargs):
        step = state.global_step
        src = self.trainer_dir / f"checkpoint-{step}"
        side = {"step": step, "train_seconds": self.train_seconds, "resumes": self.resumes}
        (src / SIDECAR).write_text(json.dumps(side) + "\n", encoding="utf-8")
        dst = self.trainer_dir / STATE_FORMAT.format(step)
        if dst.exists():
            shutil.rmtree(dst)
        src.rename(dst)  # the one atomic step: a state_ folder is complete by construction
        for p in self.trainer_dir.iterdir():
            if p != dst and p.is_dir() and p.name.startswith(("state_", "checkpoint-")):
                shutil.rmtree(p, ignore_errors=True)


def advance_epoch_samplers(dataloader, epochs: int) -> None:
    """Advance every TRL ``RepeatSampler`` inside ``dataloader`` by ``epochs`` permutations.

    Each iteration of a shuffling ``RepeatSampler`` draws one ``torch.randperm`` from its own
    generator on its first item, so starting ``epochs`` iterations replays the finished epochs'
    draws (samplers without a ``generator``, e.g. accelerate's seedable one, need nothing).
    """
    from trl.trainer.utils import RepeatSampler

    seen: set[int] = set()
    stack = [dataloader]
    while stack:
        obj = stack.pop()
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, RepeatSampler):
            if obj.shuffle:
                for _ in range(epochs):
                    next(iter(obj), None)
            continue
        stack += [getattr(obj, a, None) for a in ("sampler", "batch_sampler", "base_dataloader")]


def restore_trl_counters(trainer, point: ResumePoint, grad_accum: int) -> None:
    """Set TRL's counters that the Trainer state lacks (module docstring) for ``point``."""
    if hasattr(trainer, "_step"):
        trainer._step = point.step * grad_accum
    if hasattr(trainer, "_total_train_tokens"):
        state = json.loads((point.path / "trainer_state.json").read_text(encoding="utf-8"))
        logged = [h["num_tokens"] for h in state["log_history"] if "num_tokens" in h]
        trainer._total_train_tokens = int(logged[-1]) if logged else 0
