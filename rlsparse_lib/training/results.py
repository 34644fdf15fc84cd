"""One row per finished run: accuracy before/after, rewards, update sparsity, cost.

    rlsparse compare-runs data/runs/cpu-grpo data/runs/cpu-sft \\
        --csv data/results/engine/grpo_vs_sft.csv --md data/results/engine/grpo_vs_sft.md \\
        --dynamics-csv data/results/engine/grpo_vs_sft_dynamics.csv

(the command line: :mod:`rlsparse_lib.cli.compare_runs`).

Sparsity columns come from the run's ``final_diff`` (``rlsparse diff`` of θ0 and the last
checkpoint, bf16 and fp32 files, or fp16 files of precision fp16 runs); rewards are the mean training reward over the first and last
``k`` steps (GRPO/RLOO).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from rlsparse_lib.errors import ConfigError
from rlsparse_lib.rules import PAPER_SPARSITY

COLUMNS = (
    "run",
    "kind",
    "precision",
    "steps",
    "lr",
    "acc_before",
    "acc_after",
    "reward_mean_first_k",
    "reward_mean_last_k",
    "bf16_sparsity_bitwise",
    f"bf16_{PAPER_SPARSITY}",
    "fp32_sparsity_bitwise",
    f"fp32_{PAPER_SPARSITY}",
    "fp16_sparsity_bitwise",
    f"fp16_{PAPER_SPARSITY}",
    "train_seconds",
    "loadavg_start",
)


def run_summary(run_dir: str | Path, k: int = 5) -> dict[str, Any]:
    """The summary row of one run folder (its ``run.json``)."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: not a finished run (no run.json)")
    m = json.loads(path.read_text(encoding="utf-8"))
    rewards = [h["reward"] for h in m["history"] if "reward" in h]
    ev, fd = m["eval"], m["final_diff"]

    def acc(when: str) -> float | None:
        return ev[when]["accuracy"] if ev.get(when) else None

    def sp(view: str, key: str) -> float | None:
        return fd[view][key] if view in fd else None

    return {
        "run": m["name"],
        "kind": m["kind"],
        "precision": m["precision"]["mode"],
        "steps": m["config"]["train"]["steps"],
        "lr": m["config"]["train"]["lr"],
        "acc_before": acc("before"),
        "acc_after": acc("after"),
        "reward_mean_first_k": sum(rewards[:k]) / len(rewards[:k]) if rewards else None,
        "reward_mean_last_k": sum(rewards[-k:]) / len(rewards[-k:]) if rewards else None,
        "bf16_sparsity_bitwise": sp("bf16", "sparsity_bitwise"),
        f"bf16_{PAPER_SPARSITY}": sp("bf16", PAPER_SPARSITY),
        "fp32_sparsity_bitwise": sp("fp32", "sparsity_bitwise"),
        f"fp32_{PAPER_SPARSITY}": sp("fp32", PAPER_SPARSITY),
        "fp16_sparsity_bitwise": sp("fp16", "sparsity_bitwise"),
        f"fp16_{PAPER_SPARSITY}": sp("fp16", PAPER_SPARSITY),
        "train_seconds": round(m["timing"]["train_seconds"], 1),
        "loadavg_start": " ".join(str(x) for x in m["timing"]["loadavg_start"] or []),
    }


def monitor_rows(run_dir: str | Path) -> list[dict[str, Any]]:
    """The run's monitor records, one row per recorded step, tagged with run, kind and precision.

    ``bf16_*`` columns are the bf16 view (the stored weights in pure-bf16 runs); ``fp16_*`` the
    stored fp16 weights of precision fp16 runs (whose ``bf16_*`` are None).
    """
    m = json.loads((Path(run_dir) / "run.json").read_text(encoding="utf-8"))
    rows = []
    for r in m["monitor"] or []:
        bf16 = "_bf16" if "changed_vs_init_bf16" in r else ""
        fp32 = bf16 != ""
        fp16 = r.get("dtype") == "float16"
        rows.append(
            {
                "run": m["name"],
                "kind": m["kind"],
                "precision": m["precision"]["mode"],
                "step": r["step"],
                "bf16_sparsity_vs_init": None if fp16 else r[f"sparsity_vs_init{bf16}"],
                "bf16_sparsity_step": None if fp16 else r[f"sparsity_step{bf16}"],
                "fp32_sparsity_vs_init": r["sparsity_vs_init"] if fp32 else None,
                "fp32_sparsity_step": r["sparsity_step"] if fp32 else None,
                "fp16_sparsity_vs_init": r["sparsity_vs_init"] if fp16 else None,
                "fp16_sparsity_step": r["sparsity_step"] if fp16 else None,
            }
        )
    return rows


def to_csv(rows: list[dict[str, Any]], columns: tuple[str, ...] = COLUMNS) -> str:
    """``rows`` as CSV text with ``columns`` as the header."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """Summary rows as a Markdown table (``–`` for missing values)."""

    def fmt(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            if v and abs(v) < 1e-4:
                return f"{v:.0e}"
            return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
        return str(v)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"
