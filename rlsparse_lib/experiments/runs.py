"""Training runs for the notebooks: named configs, smoke variants, and reuse of finished runs.

A notebook asks for a run by config (``data/configs/<family>/<config>.yaml``) plus overrides. If
``data/runs/<name>/run.json`` already holds a finished run with the identical configuration it is
reused; otherwise the run is trained. Smoke mode swaps in the tiny random model and a couple of
steps so every notebook executes in seconds (CI), with the same code path.
"""

from __future__ import annotations

import json
from pathlib import Path

from rlsparse_lib.overrides import format_assignment
from rlsparse_lib.paths import Paths

#: overrides that turn any CPU config into a seconds-long smoke run, by section
_SMOKE_COMMON = {
    "model": "tiny-random",
    "train.steps": 2,
    "task.train_size": 16,
    "task.eval_size": 8,
    "task.params": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1},
    "checkpoints.every": 1,
    "eval.max_new_tokens": 8,
}
_SMOKE_BY_SECTION = {
    # enough completions that the random tiny model sometimes scores, so GRPO/RLOO really update
    "rl": {"rl.num_generations": 8, "train.batch_size": 4},
    "sampling": {"sampling.prompts": 16, "sampling.samples_per_prompt": 4},
}


def smoke_overrides(config_path: Path) -> dict[str, object]:
    """The smoke overrides that apply to a config file (only sections it has)."""
    import yaml

    data = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    out = dict(_SMOKE_COMMON)
    for section, extra in _SMOKE_BY_SECTION.items():
        if section in data:
            out.update(extra)
    return out


def run_config(
    config: str,
    overrides: dict[str, object] | None = None,
    *,
    smoke: bool = False,
    family: str = "cpu",
    name: str | None = None,
    suffix: str = "",
):
    """Load ``data/configs/<family>/<config>.yaml`` with overrides (and smoke overrides).

    Args:
        config: config stem, e.g. ``grpo``, or a path to a YAML file.
        overrides: dotted keys, e.g. ``{"train.lr": 1e-4, "seed": 1}``.
        name: run name (default: the config's own); ``suffix`` is appended, then ``-smoke`` in
            smoke mode, so smoke and variant runs never reuse the real runs' folders.
    """
    from rlsparse_lib.training import load_config

    path = (
        Path(config)
        if config.endswith((".yaml", ".yml"))
        else Paths.at().configs / family / f"{config}.yaml"
    )
    merged: dict[str, object] = smoke_overrides(path) if smoke else {}
    merged.update(overrides or {})
    base_name = name or load_config(path).name
    merged["name"] = base_name + suffix + ("-smoke" if smoke else "")
    return load_config(path, [format_assignment(k, v) for k, v in merged.items()])


def ensure_run(cfg, paths: Paths, progress: bool = True):
    """The finished run of ``cfg``: reused when ``run.json`` records the same config, else trained
    (a killed run of the same config is resumed; one of another config is started over)."""
    from rlsparse_lib.training import train
    from rlsparse_lib.training.resume import config_mismatch
    from rlsparse_lib.training.runner import RunResult

    folder = paths.runs / cfg.name
    manifest = folder / "run.json"
    if manifest.is_file():
        recorded = json.loads(manifest.read_text(encoding="utf-8"))
        same = _canonical(recorded.get("config")) == _canonical(cfg.to_dict())
        if recorded.get("status") == "complete" and same:
            return RunResult(folder, recorded)
    partial = paths.runs / f".{cfg.name}.partial"
    restart = partial.exists() and config_mismatch(partial, cfg.to_dict()) is not None
    return train(
        cfg, out_root=paths.root, overwrite=True, restart=restart, progress=progress, say=print
    )


def _canonical(obj: object) -> object:
    """JSON round trip with None-valued keys dropped (manifests omit unused sections)."""
    if isinstance(obj, dict):
        return {k: _canonical(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list | tuple):
        return [_canonical(v) for v in obj]
    return json.loads(json.dumps(obj))


def monitor_log(run):
    """The in-training monitor's per-step log of a run (``monitor.jsonl``) as a DataFrame."""
    import pandas as pd

    return pd.read_json(run.path / "monitor.jsonl", lines=True)


def learning_rate(run) -> float:
    """The learning rate a run was trained with."""
    return float(run.manifest["config"]["train"]["lr"])
