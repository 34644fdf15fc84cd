"""Rows that several notebooks report: one line per training run and its diff against init."""

from __future__ import annotations

from rlsparse_lib.diff.report import DiffReport


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
