"""The checkpoint-pair registries in ``data/pairs/`` (the paper's and Path Not Taken's public
pairs with their reported numbers), and diffing them from the hub."""

from __future__ import annotations

from rlsparse_lib.errors import RlsparseError
from rlsparse_lib.paths import Paths


def load_pairs(registry: str = "paper", section: str = "rl") -> list[dict]:
    """Pairs of ``data/pairs/<registry>.yaml`` (``section``: ``rl``/``sft`` for the paper's,
    ``pairs`` for path_not_taken)."""
    import yaml

    data = yaml.safe_load((Paths.at().pairs / f"{registry}.yaml").read_text(encoding="utf-8"))
    return list(data[section])


def reported_rows(pairs: list[dict]) -> list[dict]:
    """One row per pair with the reported numbers flattened (percent, as published)."""
    rows = []
    for p in pairs:
        row = {k: p.get(k) for k in ("id", "algorithm", "base", "tuned", "ids_confirmed")}
        rep = p.get("reported", {})
        for key, value in rep.items():
            if isinstance(value, dict):
                row.update({f"reported_{key}_{tol}": v for tol, v in value.items()})
            elif isinstance(value, list):
                row[f"reported_{key}"] = "–".join(map(str, value))
            else:
                row[f"reported_{key}"] = value
        rows.append(row)
    return rows


def diff_pairs_from_hub(exp, pairs: list[dict], compare_dtype: str = "bfloat16") -> list[dict]:
    """Diff every registry pair (streamed from the hub) and return one status row per pair.

    A pair that cannot be fetched (offline, gated, missing) is reported with its error, never
    silently dropped. The paper compared in bf16, hence the default ``compare_dtype``.
    """
    rows = []
    for p in pairs:
        row = {"id": p["id"], "base": p.get("base"), "tuned": p.get("tuned")}
        if not p.get("base") or not p.get("tuned"):
            rows.append({**row, "status": "no public hub id"})
            continue
        try:
            report = exp.diff(p["base"], p["tuned"], p["id"], compare_dtype=compare_dtype)
        except RlsparseError as err:
            rows.append({**row, "status": f"unavailable: {err}"})
            continue
        head = report.headline()
        rows.append(
            {
                **row,
                "status": "measured",
                **{k: v for k, v in head.items() if not k.startswith("n_unchanged_")},
            }
        )
    return rows
