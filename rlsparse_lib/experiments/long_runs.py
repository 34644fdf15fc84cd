"""Long training runs, finished or still training (notebook 13): a run folder as a run, its logs
as tables, and the long-horizon views.

A run that is still training lives in ``data/runs/.<name>.partial/``: its ``config.yaml``, its
``step_NNNNNN/`` checkpoints (each written atomically, so every one present is complete),
``history.jsonl`` and ``monitor.jsonl`` (appended as steps finish; a line being written is
skipped) and ``prelude.json`` (the evaluation before training). :func:`open_run` reads such a
folder, or a finished one (``run.json``), as a :class:`~rlsparse_lib.training.runner.RunResult`
whose manifest holds what exists so far (``status: partial``), so the notebooks' run functions
(diffs, dynamics) work on both. Everything is read once, when the folder is opened: a run that
goes on training meanwhile does not change the numbers of one analysis.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pandas as pd

from rlsparse_lib.analysis.intervals import binomial_se, mean_interval
from rlsparse_lib.errors import ConfigError
from rlsparse_lib.paths import repo_root
from rlsparse_lib.rules import PAPER_SPARSITY, sparsity_from_changed

#: the run configs of the long horizon (``data/configs/<family>/<config>.yaml``), by label
LONG_CONFIGS = {"SFT": "sft-long", "GRPO": "grpo-long"}
#: z of a two-sided 95 % normal interval
Z95 = 1.959963984540054
#: what a checkpoint folder holds when it holds weights
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


# ---- opening runs ---------------------------------------------------------------------------
def open_run(folder: str | Path):
    """A run folder (relative paths: to the repository root, where ``rlsparse run`` names them),
    finished (``run.json``) or partial, as a ``RunResult``.

    A partial run's manifest has ``status: "partial"``, ``name``, ``kind``, ``config``,
    ``checkpoints`` (the ``step_NNNNNN`` folders with weights, by step), ``history`` and
    ``monitor`` (the complete lines of the JSON-lines logs) and ``eval`` (``before`` from
    ``prelude.json`` when it was written, ``after`` None).

    Raises:
        ConfigError: no such folder, no readable ``config.yaml`` / ``run.json``, or no
            checkpoint at step 0.
    """
    from rlsparse_lib.training.checkpoints import step_entry
    from rlsparse_lib.training.runner import RunResult

    path = Path(folder)
    if not path.is_absolute():
        path = repo_root() / path
    if not path.is_dir():
        raise ConfigError(f"{folder}: no such run folder")
    manifest_path = path / "run.json"
    if manifest_path.is_file():
        try:
            return RunResult(path, json.loads(manifest_path.read_text(encoding="utf-8")))
        except ValueError as err:
            raise ConfigError(f"{manifest_path}: not a run manifest ({err})") from None
    config = _read_config(path / "config.yaml")
    steps = sorted(
        int(p.name.removeprefix("step_"))
        for p in path.glob("step_*")
        if p.is_dir() and p.name.removeprefix("step_").isdigit() and _has_weights(p)
    )
    if not steps or steps[0] != 0:
        raise ConfigError(f"{path}: no checkpoint step_000000 (the run's θ0)")
    prelude = path / "prelude.json"
    before = (
        json.loads(prelude.read_text(encoding="utf-8")).get("eval_before")
        if prelude.is_file()
        else None
    )
    fp32 = bool(config.get("checkpoints", {}).get("fp32"))
    manifest = {
        "name": config.get("name", path.name.strip(".").removesuffix(".partial")),
        "kind": config["kind"],
        "status": "partial",
        "config": config,
        "checkpoints": [
            step_entry(s, fp32 and (path / f"step_{s:06d}" / "fp32").is_dir()) for s in steps
        ],
        "history": read_jsonl(path / "history.jsonl"),
        "monitor": read_jsonl(path / "monitor.jsonl"),
        "eval": {"before": before, "after": None},
    }
    return RunResult(path, manifest)


def _has_weights(folder: Path) -> bool:
    return any((folder / name).is_file() for name in _WEIGHTS)


def _read_config(path: Path) -> dict:
    import yaml

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read the run's config ({err})") from None
    if not isinstance(config, dict) or "kind" not in config:
        raise ConfigError(f"{path}: not a run config (no 'kind')")
    return config


def read_jsonl(path: Path) -> list[dict]:
    """The complete records of a JSON-lines log that may still be growing (a missing file is
    empty; the text after the last newline is a record being written and is left out).

    Raises:
        ConfigError: a complete line that is not a JSON record (naming the file and line).
    """
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")[:-1]
    out = []
    for i, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: line {i} is not JSON ({err.msg})") from None
        if not isinstance(rec, dict):
            raise ConfigError(f"{path}: line {i} is not a JSON record")
        out.append(rec)
    return out


def open_runs(folders: list[str | Path]) -> dict:
    """``{label: run}`` of run folders; the label is the kind in capitals (``SFT``, ``GRPO``), or
    the run's name when two runs have the same kind."""
    runs = [open_run(f) for f in folders]
    kinds = [r.manifest["kind"].upper() for r in runs]
    return {
        (k if kinds.count(k) == 1 else r.manifest["name"]): r
        for k, r in zip(kinds, runs, strict=True)
    }


def train_long_runs(exp, steps: int) -> dict:
    """``{label: run}`` of :data:`LONG_CONFIGS` through ``exp.run`` (reused when finished).

    ``steps`` other than the configs' own names a variant run (``...-<steps>steps``), so it never
    resumes or replaces the configs' runs; smoke mode trains 4 steps, a checkpoint every 2.
    Do not call it while those runs are training elsewhere (it would resume the same folder).
    """
    runs = {}
    for label, config in LONG_CONFIGS.items():
        if exp.smoke:
            runs[label] = exp.run(config, {"train.steps": 4, "checkpoints.every": 2})
            continue
        own = _config_steps(exp, config)
        variant = None if steps == own else f"{steps}steps"
        runs[label] = exp.run(config, {"train.steps": steps} if variant else {}, variant=variant)
    return runs


def _config_steps(exp, config: str) -> int:
    import yaml

    path = exp.paths.configs / exp.family / f"{config}.yaml"
    return int(yaml.safe_load(path.read_text(encoding="utf-8"))["train"]["steps"])


def analysed_steps(runs: dict) -> list[dict]:
    """Per run: folder, status, steps configured, last checkpoint and last logged step (what an
    analysis of a partial run covers)."""
    rows = []
    for label, run in runs.items():
        m = run.manifest
        history = m.get("history") or []
        monitor = m.get("monitor") or []
        rows.append(
            {
                "run": label,
                "name": m["name"],
                "folder": run.path.name,
                "status": m.get("status", "complete"),
                "steps_configured": int(m["config"]["train"]["steps"]),
                "last_checkpoint": int(m["checkpoints"][-1]["step"]),
                "last_history_step": max((int(h["step"]) for h in history), default=0),
                "last_monitor_step": max((int(r["step"]) for r in monitor), default=0),
            }
        )
    return rows


# ---- training curves ------------------------------------------------------------------------
#: the per-step history columns kept (those a run logged)
HISTORY_COLUMNS = ("loss", "reward", "reward_std", "mean_token_accuracy", "entropy")


def history_table(runs: dict) -> pd.DataFrame:
    """One row per logged step per run: ``run, step`` and :data:`HISTORY_COLUMNS` (NaN where the
    run did not log it)."""
    rows = [
        {"run": label, "step": int(h["step"]), **{c: h.get(c) for c in HISTORY_COLUMNS}}
        for label, run in runs.items()
        for h in run.manifest.get("history") or []
    ]
    return pd.DataFrame(rows, columns=["run", "step", *HISTORY_COLUMNS])


def rolling_band(history: pd.DataFrame, column: str, window: int) -> pd.DataFrame:
    """Trailing rolling mean of ``column`` per run with a 95 % band.

    The band is the normal interval of the window's mean, ``mean ± 1.96·sd/√n`` (sd over the
    window's ``n`` logged values, n ≤ ``window``; none for n < 2): each logged value is one step's
    batch mean, so the band says how well the window pins the mean down.

    Returns:
        ``run, step, value, mean, lo, hi, n`` (rows where the run logged ``column``).
    """
    if window < 1:
        raise ConfigError(f"rolling window must be >= 1, got {window}")
    parts = []
    for label, h in history.dropna(subset=[column]).groupby("run", sort=False):
        h = h.sort_values("step")
        roll = h[column].rolling(window, min_periods=1)
        mean, sd, n = roll.mean(), roll.std(ddof=1), roll.count()
        half = Z95 * sd / n.pow(0.5)
        parts.append(
            pd.DataFrame(
                {
                    "run": label,
                    "step": h["step"].to_numpy(),
                    "value": h[column].to_numpy(),
                    "mean": mean.to_numpy(),
                    "lo": (mean - half).to_numpy(),
                    "hi": (mean + half).to_numpy(),
                    "n": n.astype(int).to_numpy(),
                }
            )
        )
    columns = ["run", "step", "value", "mean", "lo", "hi", "n"]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


def window_means(history: pd.DataFrame, column: str, window: int) -> list[dict]:
    """Mean of ``column`` over each run's first and last ``window`` logged steps, with its 95 %
    Student-t interval (:func:`~rlsparse_lib.analysis.intervals.mean_interval`): did it rise?"""
    rows = []
    for label, h in history.dropna(subset=[column]).groupby("run", sort=False):
        values = h.sort_values("step")
        for which, part in (("first", values.head(window)), ("last", values.tail(window))):
            interval = mean_interval(part[column].to_numpy(float))
            rows.append(
                {
                    "run": label,
                    "column": column,
                    "window": which,
                    "from_step": int(part["step"].min()),
                    "to_step": int(part["step"].max()),
                    "n": interval.n,
                    "mean": interval.mean,
                    "lo": interval.low,
                    "hi": interval.high,
                }
            )
    return rows


def curves_table(history: pd.DataFrame, window: int) -> pd.DataFrame:
    """:func:`rolling_band` of every curve a run logged, tagged by ``metric``: the reward of RL
    runs, the loss and token accuracy of SFT runs (RL runs' loss is not a training signal to
    read: GRPO's is ~0 by construction)."""
    parts = []
    for metric in ("reward", "loss", "mean_token_accuracy"):
        h = history
        if metric == "loss":
            h = history[history["run"].isin(_sft_like(history))]
        band = rolling_band(h, metric, window)
        if len(band):
            parts.append(band.assign(metric=metric))
    columns = ["metric", "run", "step", "value", "mean", "lo", "hi", "n"]
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)


def _sft_like(history: pd.DataFrame) -> list:
    """Runs that logged no reward (their loss is the training signal)."""
    rewarded = set(history.dropna(subset=["reward"])["run"])
    return [r for r in dict.fromkeys(history["run"]) if r not in rewarded]


def window_table(history: pd.DataFrame, window: int) -> pd.DataFrame:
    """:func:`window_means` of the reward of RL runs and the loss and token accuracy of SFT runs."""
    sft = history[history["run"].isin(_sft_like(history))]
    rows = window_means(history, "reward", window)
    rows += window_means(sft, "loss", window) + window_means(sft, "mean_token_accuracy", window)
    columns = ["run", "column", "window", "from_step", "to_step", "n", "mean", "lo", "hi"]
    return pd.DataFrame(rows, columns=columns)


#: columns of :func:`checkpoint_evaluations`
CHECKPOINT_EVAL_COLUMNS = ["run", "step", "accuracy", "n", "max_new_tokens", "task", "weights"]


def checkpoint_evaluations(exp, runs: dict, steps: tuple[int, ...]) -> pd.DataFrame:
    """Greedy held-out accuracy of each run's bf16 checkpoint at ``steps`` (those it has), on
    its own evaluation split (``experiments.evaluate.checkpoint_accuracy``).

    Evaluating 256 questions takes minutes per checkpoint on a CPU, so an accuracy is reused
    (from the stored ``checkpoint_evaluations.csv`` or an earlier row of this call, e.g. the
    runs' shared θ0) when the ``weights`` (sha256 of the checkpoint's weight files), the
    ``task`` section (which fixes the evaluation split) and ``max_new_tokens`` are the same.
    The runs' own evaluations before and after training use the fp32 weights, these the bf16
    files (evaluate step 0 too for a like-for-like start).

    Returns:
        :data:`CHECKPOINT_EVAL_COLUMNS`, one row per evaluated checkpoint.
    """
    from rlsparse_lib.experiments.evaluate import checkpoint_accuracy
    from rlsparse_lib.io.checkpoint import open_checkpoint
    from rlsparse_lib.io.digest import files_digest

    stored = exp.results / "checkpoint_evaluations.csv"
    cache = (
        pd.read_csv(stored) if stored.is_file() else pd.DataFrame(columns=CHECKPOINT_EVAL_COLUMNS)
    )
    known = {
        (w, t, int(m)): float(a)
        for w, t, m, a in zip(
            cache["weights"], cache["task"], cache["max_new_tokens"], cache["accuracy"], strict=True
        )
    }
    rows = []
    for label, run in runs.items():
        config = run.manifest["config"]
        have = {int(c["step"]) for c in run.manifest["checkpoints"]}
        tokens = int(config["eval"]["max_new_tokens"])
        task = json.dumps(config["task"], sort_keys=True)
        for step in sorted(set(steps) & have):
            path = run.checkpoint(step)
            weights = json.dumps(files_digest(open_checkpoint(path).files))
            key = (weights, task, tokens)
            if key not in known:
                known[key] = checkpoint_accuracy(path, run)
            n = int(config["task"]["eval_size"])
            rows.append([label, step, known[key], n, tokens, task, weights])
    return pd.DataFrame(rows, columns=CHECKPOINT_EVAL_COLUMNS)


def evaluation_rows(runs: dict, checkpoints: pd.DataFrame | None = None) -> pd.DataFrame:
    """Held-out greedy accuracy where the runs evaluated: before training (step 0) and, for a
    finished run, after its last step (``source: run``, fp32 weights), then the rows of
    :func:`checkpoint_evaluations` (``source: checkpoint``): ``run, step, accuracy, n, source``."""
    rows = []
    for label, run in runs.items():
        m = run.manifest
        ev = m.get("eval") or {}
        last = int(m["checkpoints"][-1]["step"])
        for when, step in (("before", 0), ("after", last)):
            e = ev.get(when)
            if e:
                rows.append(
                    {
                        "run": label,
                        "step": step,
                        "accuracy": e["accuracy"],
                        "n": e["n"],
                        "source": "run",
                    }
                )
    if checkpoints is not None:
        for r in checkpoints.to_dict("records"):
            rows.append(
                {k: r[k] for k in ("run", "step", "accuracy", "n")} | {"source": "checkpoint"}
            )
    return pd.DataFrame(rows, columns=["run", "step", "accuracy", "n", "source"])


# ---- the in-training monitor ----------------------------------------------------------------
def monitor_table(runs: dict) -> pd.DataFrame:
    """The monitor's records of every run (``run`` first, then its own columns; see
    :mod:`rlsparse_lib.training.monitor`)."""
    parts = [
        pd.DataFrame(run.manifest.get("monitor") or []).assign(run=label)
        for label, run in runs.items()
    ]
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    return df[["run", *[c for c in df.columns if c != "run"]]] if len(df) else df


def stored_view(monitor: pd.DataFrame) -> pd.DataFrame:
    """What the run's bf16 checkpoints hold, per monitor record: the ``*_bf16`` counts of runs
    with fp32 weights, the plain ones of pure-bf16 runs.

    Returns:
        ``run, step, n_params, changed_vs_init, changed_step, sparsity_vs_init, sparsity_step``.
    """
    out = monitor[["run", "step", "n_params"]].copy()
    for key in ("vs_init", "step"):
        plain = monitor[f"changed_{key}"]
        bf16 = monitor.get(f"changed_{key}_bf16")
        changed = plain if bf16 is None else bf16.where(bf16.notna(), plain)
        out[f"changed_{key}"] = changed.astype("int64")
        out[f"sparsity_{key}"] = [
            sparsity_from_changed(int(c), int(n))
            for c, n in zip(out[f"changed_{key}"], out["n_params"], strict=True)
        ]
    return out


# ---- sparsity along time (Fig. 1 vs step) ---------------------------------------------------
def sparsity_vs_step(exp, runs: dict, monitor: pd.DataFrame) -> pd.DataFrame:
    """θ0 → θt at every checkpoint t > 0 of every run, from the checkpoints (``exp.run_diff``,
    cached as ``diffs/<run>_step<t>``), beside the monitor's bf16 count at the same step.

    Returns:
        ``run, step, n_params, n_changed, sparsity_bitwise, sparsity_tol_1e-05`` (diff engine),
        ``monitor_changed, monitor_sparsity`` (the monitor's stored view; NaN where it has no
        record) and ``monitor_agrees`` (the two bitwise counts are equal).
    """
    view = stored_view(monitor).set_index(["run", "step"]) if len(monitor) else None
    rows = []
    for label, run in runs.items():
        for c in run.manifest["checkpoints"]:
            step = int(c["step"])
            if step == 0:
                continue
            h = exp.run_diff(run, f"{label.lower()}_step{step}", step=step).headline()
            row = {
                "run": label,
                "step": step,
                "n_params": h["n_params"],
                "n_changed": h["n_changed"],
                "sparsity_bitwise": h["sparsity_bitwise"],
                PAPER_SPARSITY: h[PAPER_SPARSITY],
                "monitor_changed": None,
                "monitor_sparsity": None,
                "monitor_agrees": None,
            }
            if view is not None and (label, step) in view.index:
                m = view.loc[(label, step)]
                row["monitor_changed"] = int(m["changed_vs_init"])
                row["monitor_sparsity"] = float(m["sparsity_vs_init"])
                row["monitor_agrees"] = bool(
                    int(m["changed_vs_init"]) == h["n_changed"]
                    and int(m["n_params"]) == h["n_params"]
                )
            rows.append(row)
    return pd.DataFrame(rows)


# ---- S_1 and S_k ----------------------------------------------------------------------------
def k_step_table(runs: dict, monitor: pd.DataFrame) -> pd.DataFrame:
    """S_k(t) of every run: k = 1 at every step from the monitor (θ_{t−1} → θ_t of the stored
    bf16 values) and k = c, 2c, … from the checkpoints (every c steps; θ_t → θ_{t+k},
    :func:`~rlsparse_lib.patches.ksteps.k_step_sparsity`).

    Returns:
        ``run, source (monitor | checkpoints), k, step (t: the pair's first step), n_elements,
        n_unchanged, sparsity``.
    """
    from rlsparse_lib.patches.ksteps import k_step_sparsity

    parts = []
    if len(monitor):
        v = stored_view(monitor)
        parts.append(
            pd.DataFrame(
                {
                    "run": v["run"],
                    "source": "monitor",
                    "k": 1,
                    "step": v["step"] - 1,
                    "n_elements": v["n_params"],
                    "n_unchanged": v["n_params"] - v["changed_step"],
                    "sparsity": v["sparsity_step"],
                }
            )
        )
    for label, run in runs.items():
        steps = [int(c["step"]) for c in run.manifest["checkpoints"]]
        if len(steps) < 2:
            continue
        cadence = math.gcd(*(b - a for a, b in itertools.pairwise(steps)))
        ks = tuple(range(cadence, steps[-1] - steps[0] + 1, cadence))
        paths = [run.checkpoint(s) for s in steps]
        ks_df = k_step_sparsity(paths, ks=ks, steps=steps, progress=False)
        parts.append(ks_df.assign(run=label, source="checkpoints"))
    columns = ["run", "source", "k", "step", "n_elements", "n_unchanged", "sparsity"]
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)


def k_step_means(k_step: pd.DataFrame) -> pd.DataFrame:
    """S_k averaged over the start steps t: ``run, source, k, sparsity, n_pairs``."""
    g = k_step.groupby(["run", "source", "k"], as_index=False, sort=False)
    return g.agg(sparsity=("sparsity", "mean"), n_pairs=("sparsity", "size"))


# ---- dynamics, record -----------------------------------------------------------------------
def rl_label(runs: dict) -> str:
    """The label of the first RL run (not SFT) of ``runs``: the one the dynamics figures show."""
    for label, run in runs.items():
        if run.manifest["kind"] != "sft":
            return label
    raise ConfigError(f"no RL run among {', '.join(runs)} (the dynamics figures show one)")


def dynamics_tables(runs: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Sparsity dynamics over every run's checkpoints (``studies.run_dynamics``, 07's Figs. 2,
    5–7): the series (``run`` + :meth:`DynamicsReport.series`) and one fate row per run
    (``run, to_step`` (its last checkpoint) + :meth:`DynamicsReport.fate`)."""
    from rlsparse_lib.experiments.studies import run_dynamics

    reports = {label: run_dynamics(run) for label, run in runs.items()}
    series = pd.concat(
        [r.series().assign(run=label) for label, r in reports.items()], ignore_index=True
    )
    fate = pd.DataFrame(
        [
            {
                "run": label,
                "to_step": int(runs[label].manifest["checkpoints"][-1]["step"]),
                **r.fate(),
            }
            for label, r in reports.items()
        ]
    )
    return series, fate


def long_record(
    analysed: pd.DataFrame,
    windows: pd.DataFrame,
    along: pd.DataFrame,
    fate: pd.DataFrame,
    k_step: pd.DataFrame,
    evals: pd.DataFrame,
) -> dict:
    """What notebook 13 records, per run: the steps analysed, the first/last window means, the
    held-out accuracies (:func:`evaluation_rows`), the sparsity at its last checkpoint (both
    rules), whether the monitor agreed with every checkpoint diff, the fate split, mean S_1
    (monitor) and S_k (checkpoints) by k."""
    means = k_step_means(k_step)
    out = {}
    for row in analysed.to_dict("records"):
        label = row["run"]
        a = along[along["run"] == label].sort_values("step")
        agrees = a["monitor_agrees"].dropna()
        m = means[means["run"] == label]
        out[label] = {
            **{k: v for k, v in row.items() if k != "run"},
            "windows": {
                f"{w['column']}_{w['window']}": {
                    k: w[k] for k in ("from_step", "to_step", "n", "mean", "lo", "hi")
                }
                for w in windows[windows["run"] == label].to_dict("records")
            },
            "last": {
                "step": int(a["step"].iloc[-1]),
                "sparsity_bitwise": float(a["sparsity_bitwise"].iloc[-1]),
                PAPER_SPARSITY: float(a[PAPER_SPARSITY].iloc[-1]),
            }
            if len(a)
            else None,
            "by_step": {
                int(t): {"sparsity_bitwise": float(b), PAPER_SPARSITY: float(x)}
                for t, b, x in zip(a["step"], a["sparsity_bitwise"], a[PAPER_SPARSITY], strict=True)
            },
            "monitor_checked": len(agrees),
            "monitor_agrees": bool(agrees.all()) if len(agrees) else None,
            "fate": {
                k: v
                for k, v in fate[fate["run"] == label].iloc[0].to_dict().items()
                if k not in ("run", "to_step")
            },
            "held_out": [
                {k: e[k] for k in ("step", "accuracy", "n", "source")}
                for e in evals[evals["run"] == label].to_dict("records")
            ],
            "S_1": _mean_at(m, "monitor", 1),
            "S_k": {
                int(k): float(v)
                for k, v in m[m["source"] == "checkpoints"].set_index("k")["sparsity"].items()
            },
        }
    return out


def _mean_at(means: pd.DataFrame, source: str, k: int) -> float | None:
    sel = means[(means["source"] == source) & (means["k"] == k)]["sparsity"]
    return float(sel.iloc[0]) if len(sel) else None


def summary_lines(record: dict) -> list[str]:
    """Plain sentences from :func:`long_record`'s ``{run: ...}``: steps analysed, whether the
    reward (loss) moved beyond the 95 % intervals, sparsity at the last checkpoint and the
    monitor check, the fate split, S_1 and S_k, and the runs side by side at their last common
    checkpoint."""
    lines = []
    for label, r in record.items():
        lines.append(
            f"{label} ({r['name']}, {r['status']}): checkpoints up to step {r['last_checkpoint']} "
            f"of {r['steps_configured']}, logs up to step {r['last_history_step']}"
        )
        for key in ("reward", "loss", "mean_token_accuracy"):
            first, last = r["windows"].get(f"{key}_first"), r["windows"].get(f"{key}_last")
            if first and last:
                lines.append(
                    f"  {key}: steps {first['from_step']}-{first['to_step']} "
                    f"{_interval(first)} -> steps {last['from_step']}-{last['to_step']} "
                    f"{_interval(last)}: {_verdict(first, last)}"
                )
        if r["last"]:
            lines.append(
                f"  update sparsity vs θ0 at step {r['last']['step']}: "
                f"{r['last']['sparsity_bitwise']:.2%} bitwise, "
                f"{r['last'][PAPER_SPARSITY]:.2%} at |Δ| <= 1e-5; the monitor's count equals the "
                f"checkpoint diff's at {'all' if r['monitor_agrees'] else 'NOT all'} "
                f"{r['monitor_checked']} checkpoints it recorded"
            )
        if r["held_out"]:
            lines.append(
                "  held-out accuracy (± one standard error): " + _accuracies(r["held_out"])
            )
        f = r["fate"]
        lines.append(
            f"  fate over the checkpoints: {f['never']:.2%} never changed, "
            f"{f['cancelled']:.2%} changed then back, {f['final']:.2%} changed at the end"
        )
        if r["S_1"] is not None:
            s_k = ", ".join(
                f"S_{k} {v:.2%}" for k, v in sorted((int(k), v) for k, v in r["S_k"].items())
            )
            lines.append(f"  mean S_1 {r['S_1']:.2%} (monitor); {s_k or 'no S_k'} (checkpoints)")
    steps = [{int(t): v for t, v in r["by_step"].items()} for r in record.values()]
    common = set.intersection(*(set(s) for s in steps)) if steps else set()
    if len(record) > 1 and common:
        t = max(common)
        side = ", ".join(
            f"{label} {s[t]['sparsity_bitwise']:.2%}"
            for label, s in zip(record, steps, strict=True)
        )
        lines.append(f"at step {t}, the last checkpoint all runs have: {side} bitwise")
    return lines


def _accuracies(rows: list[dict]) -> str:
    """``step 0 0.109 ± 0.020 (run, fp32), ...``: binomial standard error sqrt(p(1 − p)/n)."""
    weights = {"run": "fp32 weights", "checkpoint": "bf16 checkpoint"}
    return ", ".join(
        f"step {e['step']} {e['accuracy']:.3f} ± "
        f"{binomial_se(e['accuracy'], e['n']):.3f} ({weights[e['source']]})"
        for e in rows
    )


def _interval(w: dict) -> str:
    if w["lo"] is None:
        return f"{w['mean']:.3f} (n={w['n']})"
    return f"{w['mean']:.3f} [{w['lo']:.3f}, {w['hi']:.3f}]"


def _verdict(first: dict, last: dict) -> str:
    if first["lo"] is None or last["lo"] is None:
        return "too few steps for an interval"
    if last["lo"] > first["hi"]:
        return "rose (95 % intervals apart)"
    if last["hi"] < first["lo"]:
        return "fell (95 % intervals apart)"
    return "no change beyond the 95 % intervals"
