"""Rows that several notebooks report: one line per training run and its diff against init, and
the table of every run (``runs.csv``), its seed summary and the README block made from it."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from rlsparse_lib.atomic import write_text_atomic
from rlsparse_lib.diff.report import DiffReport
from rlsparse_lib.errors import ConfigError
from rlsparse_lib.rules import PAPER_SPARSITY


def slug(label: str) -> str:
    """A file-name key for a panel label: its first word, lower case (``"DPO (Tulu)"`` -> ``dpo``)."""
    return label.split()[0].lower()


def final_step(run) -> int:
    """The last checkpointed step of a run."""
    return int(run.manifest["checkpoints"][-1]["step"])


def run_row(label: str, run, report: DiffReport) -> dict:
    """One run summary row: identity, accuracy before/after, rewards, and the report's headline.

    ``reward_first`` / ``reward_last`` are the mean reward of the first / last logged training
    step (the batch mean the run logged at that step; None for runs without rewards, e.g. SFT).
    The sparsity columns are :meth:`DiffReport.headline` (``sparsity_bitwise``,
    ``sparsity_tol_<t>``, ``sparsity_rel`` and their ``n_unchanged_*`` counts).
    """
    cfg = run.manifest["config"]
    ev = run.manifest.get("eval") or {}
    rewards = [h["reward"] for h in run.manifest.get("history", []) if "reward" in h]
    row = {
        "run": label,
        "name": run.manifest["name"],
        "kind": cfg["kind"],
        "precision": cfg["precision"],
        "steps": cfg["train"]["steps"],
        "lr": cfg["train"]["lr"],
        "acc_before": (ev.get("before") or {}).get("accuracy"),
        "acc_after": (ev.get("after") or {}).get("accuracy"),
        "reward_first": rewards[0] if rewards else None,
        "reward_last": rewards[-1] if rewards else None,
    }
    row.update(report.headline())
    return row


# ---- the table of every run (data/results/engine/runs.csv) ----------------------------------
#: runs.csv: one row per committed run. ``sparsity_*`` are the stored checkpoints θ0 → θ_last
#: compared in ``compare_dtype`` (bfloat16, or float16 for fp16 runs); ``fp32_*`` the fp32
#: master weights where the run kept them. ``config_id`` identifies the configuration without
#: name, seed and what only changes the outputs (checkpoints, monitor): runs sharing it differ
#: only in seed. ``source`` is where the row came from (a run folder or a committed table).
RUNS_COLUMNS = (
    "run",
    "kind",
    "precision",
    "optimizer",
    "steps",
    "seed",
    "lr",
    "mask",
    "task",
    "eval_n",
    "acc_before",
    "acc_after",
    "reward_mean_first_k",
    "reward_mean_last_k",
    "compare_dtype",
    "sparsity_bitwise",
    PAPER_SPARSITY,
    "fp32_sparsity_bitwise",
    f"fp32_{PAPER_SPARSITY}",
    "train_seconds",
    "config_id",
    "source",
)
#: the metrics summarized over seeds (runs_summary.csv)
SUMMARY_METRICS = ("acc_before", "acc_after", "sparsity_bitwise", PAPER_SPARSITY)
#: identity columns copied from a group's first run into its summary row
SUMMARY_IDENTITY = (
    "kind",
    "precision",
    "optimizer",
    "steps",
    "lr",
    "mask",
    "task",
    "eval_n",
    "compare_dtype",
)
#: views of a run's ``final_diff`` holding its stored low-precision checkpoints, and their dtype
_STORED_VIEWS = {"bf16": "bfloat16", "fp16": "float16"}
#: config keys that do not change the trained weights (or are the seed): left out of config_id
_NOT_CONFIG = ("name", "seed", "checkpoints", "monitor")
#: keys inside a section that are seeds (a random mask's draw) or change no number (the
#: evaluation cache returns byte-identical evaluations): left out of config_id too
_NOT_CONFIG_IN = {"eval": ("cache",), "mask": ("random_seed",)}
#: the README block markers :func:`replace_marked_block` writes between
MARKERS = ("<!-- runs-table:begin -->", "<!-- runs-table:end -->")


def mask_label(mask: dict | None) -> str:
    """A run's mask section as one string: ``none``, or its set fields as ``key=value``."""
    if not mask:
        return "none"
    return " ".join(f"{k}={v}" for k, v in mask.items() if v not in ("", None))


def config_id(config: dict, runs_dir: str | Path | None = None) -> str:
    """12 hex digits of the config's hash without :data:`_NOT_CONFIG` and :data:`_NOT_CONFIG_IN`
    (equal for seed siblings). A mask taken from a run in ``runs_dir`` (``mask.path``:
    ``<run>/<file>``, the folder holding a ``run.json``) counts as that run's config_id and file
    name, so masks of seed siblings (a control at each seed's own full-run mask) keep the
    controls seed siblings too."""
    from rlsparse_lib.provenance import config_hash

    kept = {k: v for k, v in config.items() if k not in _NOT_CONFIG}
    mask = kept.get("mask")
    if runs_dir is not None and isinstance(mask, dict) and mask.get("path"):
        path = Path(mask["path"])
        source = Path(runs_dir) / path.parent.name
        if path.parent.parent.name == Path(runs_dir).name and (source / "run.json").is_file():
            cfg = json.loads((source / "run.json").read_text(encoding="utf-8"))["config"]
            kept["mask"] = {**mask, "path": f"run:{config_id(cfg)}/{path.name}"}
    for section, keys in _NOT_CONFIG_IN.items():
        if isinstance(kept.get(section), dict):
            kept[section] = {k: v for k, v in kept[section].items() if k not in keys}
    return config_hash(kept)[:12]


def runs_table_row(run_dir: str | Path, k: int = 5, source: str | None = None) -> dict:
    """The :data:`RUNS_COLUMNS` row of one finished run folder: :func:`run_summary` (accuracy,
    rewards, the fp32 view, time) plus what run.json records of optimizer, seed, mask, task,
    eval set size and the stored checkpoints' headline (read, never recomputed). ``source``:
    the folder as the table names it (default: ``run_dir`` as given)."""
    from rlsparse_lib.training.results import run_summary

    summary = run_summary(run_dir, k)
    m = json.loads((Path(run_dir) / "run.json").read_text(encoding="utf-8"))
    cfg, fd = m["config"], m["final_diff"]
    view = next((v for v in _STORED_VIEWS if v in fd), None)
    stored = fd[view] if view else {}
    n_eval = {int(e["n"]) for e in (m["eval"].get(w) for w in ("before", "after")) if e}
    if len(n_eval) > 1:
        raise ConfigError(f"{run_dir}: run.json evaluates on {sorted(n_eval)} questions")
    row = {c: summary.get(c) for c in RUNS_COLUMNS}
    row.update(
        optimizer=cfg["train"].get("optimizer"),
        seed=cfg["seed"],
        mask=mask_label(cfg.get("mask")),
        task=cfg["task"]["name"],
        eval_n=n_eval.pop() if n_eval else None,
        compare_dtype=_STORED_VIEWS.get(view or ""),
        sparsity_bitwise=stored.get("sparsity_bitwise"),
        **{PAPER_SPARSITY: stored.get(PAPER_SPARSITY)},
        config_id=config_id(cfg, Path(run_dir).parent),
        source=source or str(Path(run_dir)),
    )
    return row


def imported_rows(path: str | Path) -> list[dict]:
    """:data:`RUNS_COLUMNS` rows of a committed ``rlsparse compare-runs`` CSV (runs whose folders
    are gone): its ``bf16_*`` columns become ``sparsity_*`` with compare_dtype bfloat16; what the
    CSV lacks (optimizer, seed, mask, task, eval_n, config_id) stays empty, never guessed."""
    with Path(path).open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        need = {"run", "kind", "precision", "steps", "lr", "acc_before", "acc_after"}
        missing = need - set(reader.fieldnames or ())
        if missing:
            raise ConfigError(f"{path}: not a compare-runs table (no {', '.join(sorted(missing))})")
        rows = []
        for r in reader:
            row = {c: r.get(c, "") for c in RUNS_COLUMNS}
            row["sparsity_bitwise"] = r.get("bf16_sparsity_bitwise", "")
            row[PAPER_SPARSITY] = r.get(f"bf16_{PAPER_SPARSITY}", "")
            row["compare_dtype"] = "bfloat16" if row["sparsity_bitwise"] else ""
            row["source"] = str(path)
            rows.append(row)
    return rows


def read_runs_table(path: str | Path) -> list[dict]:
    """The rows of a runs.csv (values as the CSV's strings; empty list if the file is absent)."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != RUNS_COLUMNS:
            raise ConfigError(
                f"{path}: columns differ from the runs table's ({', '.join(RUNS_COLUMNS)})"
            )
        return list(reader)


def merge_runs(old: list[dict], new: list[dict]) -> list[dict]:
    """``old`` with each row of ``new`` replacing the row of the same run (in place) or appended."""
    merged = {r["run"]: r for r in old}
    for r in new:
        merged[r["run"]] = r
    return list(merged.values())


def to_csv_text(rows: list[dict], columns: tuple[str, ...]) -> str:
    """Rows as CSV text (None as empty, floats as ``repr``, so values round-trip exactly)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def update_runs_table(path: str | Path, rows: list[dict]) -> list[dict]:
    """Add or replace ``rows`` in the runs table at ``path`` (written atomically); all its rows as
    the file now holds them (:func:`read_runs_table`), so that a summary of new and old rows
    does not depend on which were just added."""
    merged = merge_runs(read_runs_table(path), rows)
    write_text_atomic(path, to_csv_text(merged, RUNS_COLUMNS))
    return read_runs_table(path)


def runs_summary(rows: list[dict]) -> list[dict]:
    """Seed summary of runs-table rows: one row per ``config_id`` (a row without one is its own
    group) with :data:`SUMMARY_IDENTITY`, and the mean, 95 % Student-t interval (cut to [0, 1])
    and run count of each of :data:`SUMMARY_METRICS`
    (:func:`~rlsparse_lib.analysis.intervals.seed_summary`).
    ``group`` is the first run's name, less its ``-seed<N>`` parts when the group has several."""
    from rlsparse_lib.analysis.intervals import seed_summary

    first = {r["run"]: r for r in rows}
    out = []
    for s in seed_summary(rows, "config_id", SUMMARY_METRICS, bounds=(0.0, 1.0)):
        head = first[s["group"]]
        name = s.pop("group")
        members = [first[r] for r in s["runs"].split()]
        out.append(
            {
                "group": re.sub(r"-seed\d+(?=-|$)", "", name) if s["n_runs"] > 1 else name,
                **{
                    c: _group_mask(members) if c == "mask" else head.get(c)
                    for c in SUMMARY_IDENTITY
                },
                **s,
            }
        )
    return out


def _group_mask(members: list[dict]) -> str | None:
    """The mask label of seed siblings: each field's value, ``(per run)`` where they differ (a
    random draw seeded per run, each seed's own reference mask)."""
    labels = [m.get("mask") for m in members]
    if len(set(labels)) == 1 or any(not isinstance(x, str) for x in labels):
        return labels[0]
    fields = [dict(f.split("=", 1) for f in str(x).split()) for x in labels]
    return " ".join(
        f"{k}={v}" if all(f.get(k) == v for f in fields) else f"{k}=(per run)"
        for k, v in fields[0].items()
    )


def save_summary(
    summary: list[dict], csv_path: str | Path | None, md_path: str | Path | None
) -> str:
    """Write the seed summary as CSV and/or Markdown (atomically); return the Markdown."""
    md = summary_markdown(summary)
    if csv_path:
        write_text_atomic(csv_path, to_csv_text(summary, tuple(summary[0]) if summary else ()))
    if md_path:
        write_text_atomic(md_path, md)
    return md


def summary_markdown(summary: list[dict]) -> str:
    """The seed summary as a Markdown table: accuracy as mean [95 % interval] ± one run's
    binomial standard error, sparsities in percent."""

    def num(v) -> float | None:
        return None if v in (None, "") or v != v else float(v)

    def cell(row: dict, m: str, pct: bool) -> str:
        mean, low, high = (num(row.get(f"{m}_{s}")) for s in ("mean", "low", "high"))
        if mean is None:
            return "–"
        f = (lambda x: f"{100 * x:.2f}") if pct else (lambda x: f"{x:.3f}")
        text = f(mean) + (f" [{f(low)}, {f(high)}]" if low is not None and high is not None else "")
        se = num(row.get(f"{m}_binomial_se"))
        return text + (f" ± {f(se)}" if se is not None else "")

    head = (
        "| runs | kind | precision | optimizer | lr | steps | mask | seeds | eval n "
        "| acc before | acc after | sparsity bitwise % | sparsity 1e-5 % |"
    )
    lines = [head, "|" + "---|" * 13]
    for r in summary:
        lr = r.get("lr")
        lr = f"{float(lr):g}" if lr not in (None, "") else lr
        ident = [r.get("kind"), r.get("precision"), r.get("optimizer"), lr, r.get("steps")]
        ident.append(r.get("mask"))
        lines.append(
            "| "
            + " | ".join(
                [
                    str(r["group"]),
                    *("–" if v in (None, "") else str(v) for v in ident),
                    r["seeds"] if r["seeds"].strip() else "–",
                    "–" if r.get("eval_n") in (None, "") else str(r["eval_n"]),
                    cell(r, "acc_before", False),
                    cell(r, "acc_after", False),
                    cell(r, "sparsity_bitwise", True),
                    cell(r, PAPER_SPARSITY, True),
                ]
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def marked_span(path: str | Path, markers: tuple[str, str] = MARKERS) -> tuple[str, int, int]:
    """The text of the file ``path`` and the span between its ``markers`` (begin, end; default
    :data:`MARKERS`).

    Raises:
        ConfigError: the file is missing, or a marker is missing, repeated or out of order.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8")
    begin, end = markers
    for marker in markers:
        if text.count(marker) != 1:
            raise ConfigError(f"{path}: expected one {marker!r} marker, found {text.count(marker)}")
    i, j = text.index(begin) + len(begin), text.index(end)
    if j < i:
        raise ConfigError(f"{path}: {end!r} comes before {begin!r}")
    return text, i, j


def replace_marked_block(path: str | Path, block: str, markers: tuple[str, str] = MARKERS) -> bool:
    """Replace the text between ``markers`` (default :data:`MARKERS`) in the file ``path`` by
    ``block`` (atomically; errors as :func:`marked_span`).

    Returns:
        True when the file changed.
    """
    text, i, j = marked_span(path, markers)
    new = text[:i] + "\n" + block.rstrip("\n") + "\n" + text[j:]
    if new == text:
        return False
    write_text_atomic(path, new)
    return True
