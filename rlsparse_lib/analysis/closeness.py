"""Closeness of two finetunes of one init (θ_sub vs θ_full; paper §4: 94.0% / 90.5% equal at 1e-5,
100% at 1e-4).

The fraction of weights equal between A and B — bitwise and at each tolerance (|Δ| ≤ tol, Δ in
float32 from the compare dtype) — per tensor and overall, is one pass of the diff engine. With the
init θ0 the engine also builds the changed masks of θ0→A and θ0→B (temporary files) and their
overlap gives: how many weights each run updated, whether A's updates lie inside B's (for
subnetwork training, θ_sub's changes must be a subset of the mask), and the closeness restricted
to the weights that either run updated (weights neither run touched are trivially equal).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rlsparse_lib.analysis.overlap import mask_overlap
from rlsparse_lib.diff.config import DiffConfig
from rlsparse_lib.diff.engine import diff_checkpoints
from rlsparse_lib.diff.report import DiffReport
from rlsparse_lib.errors import ConfigError
from rlsparse_lib.io.checkpoint import Checkpoint, open_checkpoint
from rlsparse_lib.io.naming import parse_param_name
from rlsparse_lib.provenance import build_provenance, load_report_json, save_report_json
from rlsparse_lib.rules import sparsity_from_changed, tol_key

if TYPE_CHECKING:
    import pandas as pd

SCHEMA = "rlsparse.closeness/1"
#: the paper's tolerances (§4)
DEFAULT_TOLERANCES = (1e-5, 1e-4)


@dataclass
class ClosenessReport:
    """Equality of two checkpoints A and B, optionally relative to their init.

    Attributes:
        labels: (A, B).
        tolerances: the tolerances (besides bitwise).
        table: per-tensor DataFrame: ``name, layer, module, numel, n_equal_bitwise,
            n_equal_tol_<t>`` and fractions ``equal_bitwise, equal_tol_<t>``; with the init also
            ``n_updated_a, n_updated_b, n_updated_both``.
        diff: the A→B diff report.
        provenance: inputs, rules, timing.
    """

    labels: tuple[str, str]
    tolerances: tuple[float, ...]
    table: pd.DataFrame
    diff: DiffReport
    provenance: dict = field(default_factory=dict)

    @property
    def has_init(self) -> bool:
        return "n_updated_a" in self.table.columns

    def summary(self) -> dict:
        """Overall fractions equal (bitwise and per tolerance) and, with the init, update sets."""
        t = self.table
        n = int(t["numel"].sum())
        out: dict = {"n_params": n}
        keys = ["bitwise"] + [f"tol_{tol_key(x)}" for x in self.tolerances]
        out["equal"] = {k: int(t[f"n_equal_{k}"].sum()) / n if n else None for k in keys}
        out["n_equal"] = {k: int(t[f"n_equal_{k}"].sum()) for k in keys}
        if self.has_init:
            na, nb, both = (
                int(t[c].sum()) for c in ("n_updated_a", "n_updated_b", "n_updated_both")
            )
            union = na + nb - both
            untouched = n - union
            out["updates"] = {
                "n_updated_a": na,
                "n_updated_b": nb,
                "n_updated_both": both,
                "n_updated_either": union,
                "n_a_outside_b": na - both,
                "a_subset_of_b": na == both,
                "sparsity_a": sparsity_from_changed(na, n),
                "sparsity_b": sparsity_from_changed(nb, n),
            }
            out["equal_among_updated"] = {
                k: (out["n_equal"][k] - untouched) / union if union else None for k in keys
            }
        return out

    def to_dict(self) -> dict:
        """JSON form (schema ``rlsparse.closeness/1``; see docs/analytics.md)."""
        return {
            "schema": SCHEMA,
            "labels": list(self.labels),
            "tolerances": [float(t) for t in self.tolerances],
            **self.summary(),
            "per_tensor": json.loads(self.table.to_json(orient="records")),
            "skipped": self.diff.skipped,
            "diff": self.diff.to_dict(),
            "provenance": self.provenance,
        }

    def save_json(self, path: str | Path) -> None:
        """Write :meth:`to_dict` atomically (gzip when the name ends in ``.gz``)."""
        save_report_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> ClosenessReport:
        """Rebuild a report from its JSON form (needs the embedded A→B ``diff``)."""
        import pandas as pd

        if d.get("schema") != SCHEMA or "diff" not in d:
            raise ConfigError(f"not a loadable {SCHEMA} report (schema {d.get('schema')!r})")
        table = pd.DataFrame(d["per_tensor"])
        for col in [c for c in table.columns if c.startswith("n_equal_")]:
            table[col.removeprefix("n_")] = table[col] / table["numel"].where(table["numel"] > 0)
        return cls(
            labels=tuple(d["labels"]),
            tolerances=tuple(float(t) for t in d["tolerances"]),
            table=table,
            diff=DiffReport.from_dict(d["diff"]),
            provenance=dict(d.get("provenance", {})),
        )

    @classmethod
    def load(cls, path: str | Path) -> ClosenessReport:
        """Read a report saved by :meth:`save_json` (schema checked, the file named)."""
        d = load_report_json(path, SCHEMA)
        if "diff" not in d:
            raise ConfigError(f"{path}: a {SCHEMA} report without its diff (an old file)")
        return cls.from_dict(d)


def closeness(
    a: str | Path | Checkpoint,
    b: str | Path | Checkpoint,
    *,
    init: str | Path | Checkpoint | None = None,
    tolerances: tuple[float, ...] = DEFAULT_TOLERANCES,
    compare_dtype: str | None = None,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    workdir: str | Path | None = None,
    progress: bool = True,
) -> ClosenessReport:
    """Fraction of equal weights between A (e.g. θ_sub) and B (e.g. θ_full).

    Args:
        a, b: the two finetuned checkpoints.
        init: their common init θ0 (adds the update-set numbers).
        tolerances: absolute tolerances besides bitwise equality (default: 1e-5 and 1e-4).
        compare_dtype, include, exclude: as :class:`~rlsparse_lib.diff.engine.DiffConfig`.
        workdir: folder for the temporary mask files of θ0→A and θ0→B (default: system temp;
            they are 1 bit per weight and removed afterwards).

    Raises:
        ConfigError: bad tolerances; MaskError: θ0→A and θ0→B compare different tensors.
    """
    tols = tuple(sorted({float(t) for t in tolerances}))
    if any(t <= 0 for t in tols):
        raise ConfigError(f"tolerances must be > 0 (bitwise is always reported), got {tols}")
    t0 = time.perf_counter()
    a_ck, b_ck = open_checkpoint(a), open_checkpoint(b)
    config = DiffConfig(
        tolerances=tols, compare_dtype=compare_dtype, include=include, exclude=exclude
    )
    diff = diff_checkpoints(a_ck, b_ck, config, progress=progress)
    table = _equal_table(diff)
    inputs = {"a": a_ck.describe(), "b": b_ck.describe()}
    if init is not None:
        init_ck = open_checkpoint(init)
        inputs["init"] = init_ck.describe()
        bitwise = DiffConfig(
            tolerances=(), compare_dtype=compare_dtype, include=include, exclude=exclude
        )
        with tempfile.TemporaryDirectory(prefix="rlsparse-closeness-", dir=workdir) as tmp:
            ma, mb = Path(tmp) / "a.mask.safetensors", Path(tmp) / "b.mask.safetensors"
            diff_checkpoints(init_ck, a_ck, bitwise, mask_out=ma, progress=progress)
            diff_checkpoints(init_ck, b_ck, bitwise, mask_out=mb, progress=progress)
            ov = mask_overlap(ma, mb, progress=progress).table.set_index("name")
        missing = [n for n in table["name"] if n not in ov.index]
        if missing:
            raise ConfigError(
                f"tensor '{missing[0]}' is compared between A and B but not against the init "
                f"{init_ck.source}"
            )
        table["n_updated_a"] = ov.loc[table["name"], "n1"].to_numpy()
        table["n_updated_b"] = ov.loc[table["name"], "n2"].to_numpy()
        table["n_updated_both"] = ov.loc[table["name"], "n_both"].to_numpy()
    settings = {
        "tolerances": list(tols),
        "compare_dtype": compare_dtype,
        "include": list(include),
        "exclude": list(exclude),
        "with_init": init is not None,
    }
    provenance = build_provenance("closeness", settings=settings, sources=inputs) | {
        "inputs": inputs,
        "rules": diff.provenance.get("rules"),
        "compare_dtype_policy": compare_dtype or "A's stored dtype",
        "updated": "bitwise vs the init" if init is not None else None,
        "seconds": time.perf_counter() - t0,
    }
    return ClosenessReport((a_ck.source, b_ck.source), tols, table, diff, provenance)


def _equal_table(diff: DiffReport):
    import pandas as pd

    rows = []
    for t in diff.tensors:
        p = parse_param_name(t.name)
        row = {"name": t.name, "layer": p.layer, "module": p.module, "numel": t.numel}
        row["n_equal_bitwise"] = t.numel - t.n_changed
        for k, tol in enumerate(diff.tolerances):
            row[f"n_equal_tol_{tol_key(tol)}"] = t.float_stats().n_unchanged_at(k)
        rows.append(row)
    df = pd.DataFrame(rows)
    for col in [c for c in df.columns if c.startswith("n_equal_")]:
        df[col.removeprefix("n_")] = df[col] / df["numel"].where(df["numel"] > 0)
    return df
