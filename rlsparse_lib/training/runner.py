"""Run one training config end to end: data, TRL trainer, checkpoints, monitor, manifest.

Outputs (``data/runs/<name>/``, see ``docs/training.md``)::

    run.json            manifest: config, seeds, versions, model/task provenance, precision (with
                        the compute dtype used; platform.cpu: the CPU bf16 verdict and why),
                        checkpoints, per-step history (loss, reward, …), evaluation before/after,
                        monitor records, final update sparsity (rlsparse diff θ0 → θ_last), timing
    config.yaml         the validated config
    step_XXXXXX/        checkpoints (bf16, fp16 for precision fp16; fp32/ inside when kept)
    monitor.jsonl       monitor records, as they were taken
    history.jsonl       the trainer's per-step logs (loss, reward, …), as they were logged
    eval_before.jsonl   greedy completions and scores on the held-out split (and eval_after.jsonl)
    random_mask.safetensors   the random control mask, when ``mask.random`` is set

The run is written to ``data/runs/.<name>.partial/`` and renamed when complete. Every file in it
is written atomically. A killed or crashed run is **resumed** by the next run of that name from its
last saved state (every ``checkpoints.every`` steps; :mod:`~rlsparse_lib.training.resume`) and
reaches bit-identical checkpoints, history and monitor records; ``restart`` starts it over. Bad
input (:class:`~rlsparse_lib.errors.RlsparseError`) in a fresh run removes the partial folder.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from transformers import PrinterCallback, TrainerCallback

from rlsparse_lib.atomic import write_text_atomic
from rlsparse_lib.errors import ConfigError, RlsparseError
from rlsparse_lib.paths import Paths
from rlsparse_lib.progress import progress_bar
from rlsparse_lib.training.config import RunConfig
from rlsparse_lib.training.cpu_compute import CpuBf16, detect_cpu_bf16
from rlsparse_lib.training.precision_modes import Precision
from rlsparse_lib.training.resume import ResumePoint

SCHEMA = "rlsparse.run/1"


@dataclass
class RunResult:
    """A finished run: its folder and manifest."""

    path: Path
    manifest: dict[str, Any]

    def checkpoint(self, step: int, dtype: str | None = None) -> Path:
        """θ_step's folder: ``dtype`` ``bf16`` / ``fp16`` / ``fp32``; None: the main files."""
        for c in self.manifest["checkpoints"]:
            if c["step"] == step:
                return self.path / c[dtype or ("fp16" if "fp16" in c else "bf16")]
        raise KeyError(f"no checkpoint at step {step}")


def resolve_path(p: str, paths: Paths) -> Path:
    """A config path: absolute, or relative to the project root."""
    q = Path(p).expanduser()
    return q if q.is_absolute() else paths.root / q


def train(
    cfg: RunConfig,
    *,
    out_root: str | Path | None = None,
    overwrite: bool = False,
    restart: bool = False,
    progress: bool = True,
    say: Callable[[str], None] | None = None,
) -> RunResult:
    """Run ``cfg``; return the finished run.

    A partial run of the same name (``.<name>.partial``, killed or crashed) is resumed from its
    last saved state unless ``restart``; ``say`` is told which (one line).

    Raises:
        ConfigError: the run folder exists (and not ``overwrite``); a partial run of that name has
            another config, precision or library versions (and not ``restart``); a bad mask,
            model or task.
        DataError: no usable training data (e.g. no correct own sample for RFT).
    """
    import torch

    from rlsparse_lib.training.models import library_versions
    from rlsparse_lib.training.resume import resume_point

    paths = Paths.at(out_root)
    final = paths.runs / cfg.name
    if final.exists() and not overwrite:
        raise ConfigError(f"run folder {final} exists (choose another name or overwrite it)")
    mask_path = resolve_path(cfg.mask.path, paths) if cfg.mask and cfg.mask.path else None
    if mask_path is not None and not mask_path.is_file():
        raise ConfigError(f"mask.path: no such mask file {mask_path}")
    device = _device(cfg.device)
    cpu = detect_cpu_bf16()  # before anything is written: a bad RLSPARSE_CPU_BF16 is an error
    precision = Precision.for_device(cfg.precision, device.type, cpu)
    partial = paths.runs / f".{cfg.name}.partial"
    start = None
    if partial.exists() and not restart:
        start = resume_point(partial, cfg.to_dict(), precision.describe(), library_versions())
        if start is None and say is not None:
            say(f"{partial} has no saved training state yet: starting {cfg.name} over")
    if start is None:
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
    elif say is not None:
        say(
            f"resuming {cfg.name} from its state at step {start.step} of {cfg.train.steps} "
            f"({partial}; --restart starts over)"
        )
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    try:
        manifest = _run(cfg, partial, paths, mask_path, progress, device, cpu, precision, start)
    except RlsparseError:
        if start is None:
            shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        torch.use_deterministic_algorithms(deterministic_before)
    shutil.rmtree(partial / ".trainer", ignore_errors=True)
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    return RunResult(final, manifest)


def _run(
    cfg: RunConfig,
    run_dir: Path,
    paths: Paths,
    mask_path: Path | None,
    progress: bool,
    device,
    cpu: CpuBf16,
    precision: Precision,
    start: ResumePoint | None,
) -> dict[str, Any]:
    import torch
    from transformers import set_seed

    from rlsparse_lib.training.builders import build_trainer
    from rlsparse_lib.training.checkpoints import CheckpointSaver, save_step, step_entry
    from rlsparse_lib.training.data import OwnSamples, build_rows, sample_own
    from rlsparse_lib.training.models import (
        library_versions,
        load_model,
        model_provenance,
        resolve_model,
    )
    from rlsparse_lib.training.monitor import SparsityMonitor
    from rlsparse_lib.training.resume import StateKeeper, restore_trl_counters, write_prelude
    from rlsparse_lib.training.subnetwork import gradient_mask
    from rlsparse_lib.training.tasks import Task

    t_start = time.perf_counter()
    load_start = _loadavg()
    task = Task(cfg.task)
    set_seed(cfg.seed)
    model_dir = resolve_model(cfg.model, paths, progress)
    model, tokenizer = load_model(model_dir, precision.tensors, paths)
    precision.prepare(model)  # fp16: θ0 is the model rounded to fp16
    model.to(device)
    _check_prompt_lengths(cfg, task, tokenizer)

    fp32 = precision.keeps_fp32 and cfg.checkpoints.fp32
    trainer_dir = run_dir / ".trainer"
    if start is None:
        write_text_atomic(run_dir / "config.yaml", _yaml(cfg.to_dict()))
        init_entry = save_step(model, tokenizer, run_dir, 0, fp32, precision.checkpoint)
        if cfg.monitor.every and precision.keeps_fp32 and not fp32:  # θ0 for a resumed monitor
            _save_weights(model, trainer_dir / "theta0.safetensors")
    else:
        init_entry = step_entry(0, fp32, precision.checkpoint)

    mask_cb = None
    mask_info: dict[str, Any] | None = None
    if cfg.mask is not None:  # validates names and shapes before any training work
        base = run_dir / init_entry[precision.checkpoint]
        mask_cb, mask_info = gradient_mask(cfg.mask, mask_path, model, run_dir, base, progress)

    if start is None:
        eval_before = None
        if cfg.eval.before:
            eval_before = _evaluate(
                model,
                tokenizer,
                task,
                cfg,
                run_dir / "eval_before.jsonl",
                progress,
                paths,
                precision,
            )
        own = None
        if cfg.uses_own_samples:
            assert cfg.sampling is not None
            set_seed(cfg.seed)
            own = sample_own(
                model, tokenizer, task, cfg.sampling, cfg.train.max_completion_length, progress
            )
        write_prelude(
            run_dir,
            {
                "precision": precision.describe(),
                "versions": library_versions(),
                "eval_before": eval_before,
                "own_samples": own.rows if own else None,
            },
        )
    else:
        eval_before = start.prelude["eval_before"]
        rows_own = start.prelude["own_samples"]
        own = OwnSamples(rows_own) if rows_own is not None else None
    rows = build_rows(cfg, task, own)

    begin = 0 if start is None else start.step
    saved = [] if start is None else _checkpoints_upto(run_dir, begin, fp32, precision.checkpoint)
    saver = CheckpointSaver(
        run_dir, tokenizer, cfg.checkpoints.every, fp32, begin, saved, precision.checkpoint
    )
    keeper = StateKeeper(
        trainer_dir,
        start.train_seconds if start else 0.0,
        [*start.resumes, {"from_step": start.step, "at": _now()}] if start else [],
        begin if start else None,
    )
    callbacks: list = [saver, keeper]
    monitor = None
    if cfg.monitor.every:
        monitor = SparsityMonitor(
            cfg.monitor.every,
            run_dir / "monitor.jsonl",
            codecs=bool(cfg.monitor.codecs),
            stored=precision.rounded_to,
        )
        if start is not None:
            _resume_monitor(monitor, run_dir, begin, precision, fp32)
        callbacks.append(monitor)
    if mask_cb is not None:
        callbacks.append(mask_cb)
    bar = _ProgressCallback(cfg.name, cfg.train.steps, progress, begin)
    callbacks += [bar, _HistoryLog(run_dir / "history.jsonl", begin if start else None)]

    set_seed(cfg.seed)
    with warnings.catch_warnings():
        # TRL 1.16 calls transformers' deprecated gradient-checkpointing names internally
        warnings.filterwarnings(
            "ignore", message=".*gradient_checkpointing.*", category=FutureWarning
        )
        trainer = build_trainer(
            cfg,
            model,
            tokenizer,
            task,
            rows,
            callbacks,
            trainer_dir,
            use_cpu=device.type == "cpu",
            precision=precision,
        )
        trainer.remove_callback(PrinterCallback)  # our progress bar shows the latest loss / reward
        if start is not None:
            restore_trl_counters(trainer, start, cfg.train.grad_accum)
        try:
            trainer.train(resume_from_checkpoint=str(start.path) if start else None)
        finally:
            bar.close()
    train_seconds = keeper.train_seconds
    model = trainer.model

    eval_after = None
    if cfg.eval.after:
        eval_after = _evaluate(
            model, tokenizer, task, cfg, run_dir / "eval_after.jsonl", progress, paths, precision
        )

    checkpoints = [init_entry, *saver.saved]
    manifest: dict[str, Any] = {
        "schema": SCHEMA,
        "name": cfg.name,
        "kind": cfg.kind,
        "status": "complete",
        "config": cfg.to_dict(),
        "seeds": {
            "run": cfg.seed,
            "task_train": cfg.task.seed,
            "task_eval": task.describe()["eval_seed"],
            "mask_random": cfg.mask.random_seed if cfg.mask and cfg.mask.random else None,
        },
        "versions": library_versions(),
        "platform": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "device": str(device),
            "torch_threads": torch.get_num_threads(),
            "cpu": cpu.describe(),
        },
        "model": {
            "spec": cfg.model,
            "path": model_dir,
            "provenance": model_provenance(model_dir),
            "architecture": type(model).__name__,
            "n_params": sum(p.numel() for p in model.parameters()),
        },
        "task": task.describe(),
        "precision": precision.describe(),
        "data": {"n_rows": len(rows), "own_samples": own.summary() if own else None},
        "checkpoints": checkpoints,
        "history": _history(trainer.state.log_history),
        "eval": {"before": eval_before, "after": eval_after},
        "monitor": monitor.records if monitor else None,
        "mask": {**mask_info, **mask_cb.describe()} if mask_cb and mask_info else None,
        "final_diff": _final_diff(run_dir, checkpoints),
        "resumes": keeper.resumes,
        "timing": {
            "total_seconds": time.perf_counter() - t_start,
            "train_seconds": train_seconds,
            "loadavg_start": load_start,
            "loadavg_end": _loadavg(),
        },
    }
    write_text_atomic(run_dir / "run.json", json.dumps(manifest, indent=2, default=str) + "\n")
    return manifest


def _checkpoints_upto(run_dir: Path, step: int, fp32: bool, main: str) -> list[dict]:
    """Entries of the checkpoints 0 < s <= ``step`` in ``run_dir``; later ones (from after the
    resumed state) and unfinished temporary folders are removed."""
    from rlsparse_lib.training.checkpoints import STEP_FORMAT, step_entry

    out = []
    for p in sorted(run_dir.iterdir()):
        if p.name.startswith(".step_"):  # a write_folder_atomic temporary of a killed save
            shutil.rmtree(p, ignore_errors=True)
            continue
        if not (p.is_dir() and p.name.startswith("step_")):
            continue
        s = int(p.name.removeprefix("step_"))
        if s > step:
            shutil.rmtree(p)
        elif s > 0 and p.name == STEP_FORMAT.format(s):
            out.append(step_entry(s, fp32, main))
    return out


def _resume_monitor(monitor, run_dir: Path, step: int, precision: Precision, fp32: bool) -> None:
    """Give a resumed run's monitor θ0 and its records up to ``step`` (the log is cut there)."""
    from safetensors.torch import load_file

    from rlsparse_lib.training.resume import read_records

    if precision.keeps_fp32:
        theta0 = (
            run_dir
            / ("step_000000/fp32" if fp32 else ".trainer")
            / ("model.safetensors" if fp32 else "theta0.safetensors")
        )
    else:
        theta0 = run_dir / "step_000000" / "model.safetensors"
    monitor.init = load_file(str(theta0))
    monitor.records = read_records(run_dir / "monitor.jsonl", step)
    write_text_atomic(
        run_dir / "monitor.jsonl", "".join(json.dumps(r) + "\n" for r in monitor.records)
    )


def _save_weights(model, path: Path) -> None:
    """The parameters (tied ones once) in their own dtype, atomically."""
    from safetensors.torch import save_file

    from rlsparse_lib.atomic import atomic_path
    from rlsparse_lib.training.checkpoints import state_to_save

    dtype = next(model.parameters()).dtype
    with atomic_path(path) as tmp:
        save_file(state_to_save(model, dtype), str(tmp))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class _ProgressCallback(TrainerCallback):
    """A progress bar over optimizer steps with the latest loss / reward."""

    def __init__(self, name: str, steps: int, enabled: bool, initial: int = 0) -> None:
        self.bar = progress_bar(
            total=steps,
            initial=initial,
            desc=f"train {name}",
            unit="step",
            disable=None if enabled else True,
        )

    def on_step_end(self, args, state, control, **kwargs):
        self.bar.update(1)

    def on_log(self, args, state, control, logs=None, **kwargs):
        shown = {k: f"{logs[k]:.4g}" for k in ("loss", "reward") if logs and k in logs}
        if shown:
            self.bar.set_postfix(shown, refresh=False)

    def close(self) -> None:
        self.bar.close()


class _HistoryLog(TrainerCallback):
    """Appends each trainer log to a JSON-lines file as it is logged (a long run's progress);
    resuming from ``resumed_step`` first cuts the file there."""

    def __init__(self, path: Path, resumed_step: int | None) -> None:
        from rlsparse_lib.training.resume import read_records

        self.path = path
        if resumed_step is not None:
            kept = read_records(path, resumed_step)
            write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "train_runtime" not in logs:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"step": state.global_step, **logs}) + "\n")


def _device(choice: str):
    import torch

    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("device: cuda was requested but no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cpu")


def _check_prompt_lengths(cfg: RunConfig, task, tokenizer) -> None:
    """Every training prompt and written solution must fit; never truncate silently."""
    limit_p, limit_c = cfg.train.max_prompt_length, cfg.train.max_completion_length
    for e in task.train:
        text = tokenizer.apply_chat_template(
            task.messages(e), add_generation_prompt=True, tokenize=False
        )
        n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if n > limit_p:
            raise ConfigError(
                f"train.max_prompt_length: a {task.spec.name} prompt has {n} tokens > {limit_p}"
            )
        if cfg.kind in ("sft", "dpo", "kto", "orpo", "simpo"):
            m = len(tokenizer(task.reference(e), add_special_tokens=False)["input_ids"])
            if m + 2 > limit_c:
                raise ConfigError(
                    f"train.max_completion_length: a written {task.spec.name} solution has "
                    f"{m} tokens (+2 for the end of turn) > {limit_c}"
                )


def _evaluate(
    model,
    tokenizer,
    task,
    cfg: RunConfig,
    path: Path,
    progress: bool,
    paths: Paths,
    precision: Precision,
) -> dict:
    """Greedy evaluation on the eval split, written to ``path``; through the evaluation cache
    (``data/cache/evals/``) unless ``eval.cache: false``."""
    from rlsparse_lib.training.eval_cache import cached_evaluate, records_text

    result, _ = cached_evaluate(
        model,
        tokenizer,
        task,
        None if cfg.eval.cache is False else paths.data / "cache" / "evals",
        batch_size=cfg.eval.batch_size,
        max_new_tokens=cfg.eval.max_new_tokens,
        precision=precision.describe(),
        progress=progress,
    )
    write_text_atomic(path, records_text(result))
    return {
        **result.summary(),
        "weights": str(next(model.parameters()).dtype).removeprefix("torch."),
    }


def _history(log_history: list[dict]) -> list[dict]:
    """Per-step trainer logs (loss, reward, kl, grad_norm, learning_rate, …), final summary dropped."""
    return [dict(h) for h in log_history if "train_runtime" not in h]


def _final_diff(run_dir: Path, checkpoints: list[dict]) -> dict[str, Any]:
    """Update sparsity θ0 → θ_last of the saved checkpoints (bitwise and |Δ| <= 1e-5)."""
    from rlsparse_lib.diff.config import DiffConfig
    from rlsparse_lib.diff.engine import diff_checkpoints

    first, last = checkpoints[0], checkpoints[-1]
    out = {}
    for key in ("bf16", "fp16", "fp32"):
        if key in first and key in last:
            rep = diff_checkpoints(
                run_dir / first[key],
                run_dir / last[key],
                DiffConfig(tolerances=(0.0, 1e-5)),
                progress=False,
            )
            out[key] = {"from_step": first["step"], "to_step": last["step"], **rep.headline()}
    return out


def _loadavg() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def _yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)
