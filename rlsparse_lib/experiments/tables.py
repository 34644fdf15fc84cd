"""Rows that several notebooks report: one line per training run and its diff against init."""

from __future__ import annotations

from rlsparse_lib.diff.report import DiffReport
from rlsparse_lib.rules import sparsity, tol_key


def slug(label: str) -> str:
    """A file-name key for a panel label: its first word, lower case (``"DPO (Tulu)"`` -> ``dpo``)."""
    return label.split()[0].lower()


def final_step(run) -> int:
    """The last checkpointed step of a run."""
    return int(run.manifest["checkpoints"][-1]["step"])


def run_row(label: str, run, report: DiffReport) -> dict:
    """Run identity, accuracy before/after, rewards, and update sparsity at every rule."""
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
        "n_params": report.n_params,
        "n_changed": report.n_changed,
        "sparsity_bitwise": report.sparsity,
    }
    total = report.totals()
    for k, t in enumerate(report.tolerances):
        row[f"sparsity_{tol_key(t)}"] = sparsity(total.n_unchanged_at(k), report.n_params)
    row["sparsity_rel"] = sparsity(total.n_rel_unchanged_total, report.n_params)
    return row
