"""DiffReport: the result of comparing two checkpoints, with its provenance.

A report holds one :class:`TensorResult` per compared tensor (float pairs with full
:class:`~rlsparse_lib.diff.stats.DiffStats`; integer/bool buffers with a bitwise count only), the
tensors that were not compared and why, and how everything was measured. Global numbers are
count-weighted (every element counts once); per-layer/per-module tables give both the
count-weighted sparsity and the unweighted mean over tensors that the paper's code prints (there
mislabelled; here correctly called sparsity). Saved as JSON (schema ``rlsparse.diff/1``, loadable)
plus a per-tensor CSV or parquet table.
"""

from __future__ import annotations

import gzip
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rlsparse_lib.atomic import atomic_path, write_text_atomic
from rlsparse_lib.diff.stats import ULP_LOG2_MIN, DiffStats
from rlsparse_lib.io.dtypes import FLOAT_FORMATS
from rlsparse_lib.io.naming import parse_param_name
from rlsparse_lib.io.pairing import TensorPair
from rlsparse_lib.rules import sparsity, sparsity_from_changed, tol_key

SCHEMA = "rlsparse.diff/1"
_NONFINITE_FIELDS = (
    "n_zero_delta",
    "n_nonfinite_delta",
    "n_nan_base",
    "n_inf_base",
    "n_nan_tuned",
    "n_inf_tuned",
)


@dataclass
class TensorResult:
    """One compared tensor.

    Attributes:
        name: tensor name.
        kind: ``float`` (``stats`` holds full statistics) or ``bitwise`` (``n_changed`` only).
        dtype_base, dtype_tuned: stored dtypes; compare_dtype: dtype compared in (float only).
        shape_base, shape_tuned, shape_compared: shapes (they differ when rows were resized).
        numel: compared elements; n_changed: elements whose bits differ.
        note: partial comparison or casts.
        stats: float statistics (None for bitwise tensors).
    """

    name: str
    kind: str
    dtype_base: str
    dtype_tuned: str
    compare_dtype: str | None
    shape_base: tuple[int, ...]
    shape_tuned: tuple[int, ...]
    shape_compared: tuple[int, ...]
    numel: int = 0
    n_changed: int = 0
    note: str = ""
    stats: DiffStats | None = None

    @classmethod
    def empty(cls, pair: TensorPair, n_tol: int) -> TensorResult:
        """The result of a planned pair before any chunk was compared (``n_tol`` tolerances)."""
        return cls(
            name=pair.name,
            kind=pair.kind,
            dtype_base=pair.base.dtype,
            dtype_tuned=pair.tuned.dtype,
            compare_dtype=pair.compare_dtype,
            shape_base=pair.base.shape,
            shape_tuned=pair.tuned.shape,
            shape_compared=pair.compared_shape,
            note=pair.note,
            stats=DiffStats.empty(n_tol) if pair.kind == "float" else None,
        )

    def merge(self, other: TensorResult) -> TensorResult:
        """Combine results of two disjoint element ranges of the same tensor."""
        if other.name != self.name:
            raise ValueError(f"cannot merge {self.name} with {other.name}")
        stats = (
            self.stats.merge(other.stats)
            if self.stats and other.stats
            else self.stats or other.stats
        )
        return TensorResult(
            **{
                k: getattr(self, k)
                for k in (
                    "name",
                    "kind",
                    "dtype_base",
                    "dtype_tuned",
                    "compare_dtype",
                    "shape_base",
                    "shape_tuned",
                    "shape_compared",
                    "note",
                )
            },
            numel=self.numel + other.numel,
            n_changed=self.n_changed + other.n_changed,
            stats=stats,
        )

    def to_dict(self) -> dict:
        p = parse_param_name(self.name)
        out = {
            "name": self.name,
            "layer": p.layer,
            "module": p.module,
            "param": p.param,
            "group": p.group,
            "kind": self.kind,
            "dtype_base": self.dtype_base,
            "dtype_tuned": self.dtype_tuned,
            "compare_dtype": self.compare_dtype,
            "shape_base": list(self.shape_base),
            "shape_tuned": list(self.shape_tuned),
            "shape_compared": list(self.shape_compared),
            "numel": self.numel,
            "n_changed": self.n_changed,
            "sparsity": sparsity_from_changed(self.n_changed, self.numel),
            "note": self.note,
        }
        if self.stats is not None:
            out["stats"] = self.stats.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: dict) -> TensorResult:
        return cls(
            name=d["name"],
            kind=d["kind"],
            dtype_base=d["dtype_base"],
            dtype_tuned=d["dtype_tuned"],
            compare_dtype=d["compare_dtype"],
            shape_base=tuple(d["shape_base"]),
            shape_tuned=tuple(d["shape_tuned"]),
            shape_compared=tuple(d["shape_compared"]),
            numel=d["numel"],
            n_changed=d["n_changed"],
            note=d.get("note", ""),
            stats=DiffStats.from_dict(d["stats"]) if "stats" in d else None,
        )


@dataclass
class DiffReport:
    """Update sparsity of a checkpoint pair, per tensor and aggregated, with provenance.

    Attributes:
        tolerances: the absolute tolerance grid (ascending).
        rel_eta: η of the relative probe.
        tensors: float tensors compared (full statistics).
        buffers: integer/bool/fp8 tensors compared bitwise only (not in the float numbers).
        skipped: ``{"name", "reason", ...}`` for every tensor not compared.
        tied: notes on tied weights (counted once).
        provenance: inputs, dtypes, rules, kernel, versions, timing.
    """

    tolerances: tuple[float, ...]
    rel_eta: float
    tensors: list[TensorResult]
    buffers: list[TensorResult] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    tied: list[str] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)

    # ---- global numbers -------------------------------------------------------------------
    def totals(self) -> DiffStats:
        """Statistics merged over all float tensors."""
        total = DiffStats.empty(len(self.tolerances))
        for t in self.tensors:
            total = total.merge(t.stats)
        return total

    @property
    def n_params(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def n_changed(self) -> int:
        return sum(t.n_changed for t in self.tensors)

    @property
    def sparsity(self) -> float:
        """Bitwise update sparsity 1 - n_changed / n_params (count-weighted)."""
        s = sparsity_from_changed(self.n_changed, self.n_params)
        return float("nan") if s is None else s

    def sparsity_at(self, tol: float) -> float:
        """Sparsity with |Δ| <= tol counted as unchanged; ``tol`` must be on the grid."""
        k = self._tol_index(tol)
        s = sparsity(self.totals().n_unchanged_at(k), self.n_params)
        return float("nan") if s is None else s

    def norms(self, total: DiffStats | None = None) -> dict:
        """max|Δ|, ‖Δ‖_1, ‖Δ‖_F, ‖θ0‖_F and ‖Δ‖_F/‖θ0‖_F over all float tensors."""
        return _norms(self.totals() if total is None else total)

    def nonfinite(self, total: DiffStats | None = None) -> dict:
        """Counts of NaN/Inf values (base, tuned) and of non-finite Δ over all float tensors."""
        total = self.totals() if total is None else total
        return {f: getattr(total, f) for f in _NONFINITE_FIELDS if f != "n_zero_delta"}

    def _tol_index(self, tol: float) -> int:
        for k, t in enumerate(self.tolerances):
            if t == tol:
                return k
        raise KeyError(f"tolerance {tol!r} not on the grid {list(self.tolerances)}")

    # ---- tables ---------------------------------------------------------------------------
    def rules(self) -> list[tuple[str, str]]:
        """(column suffix, human label) of every rule: bitwise, each tolerance, relative."""
        out = [("bitwise", "bitwise (bits differ)")]
        out += [(f"tol_{tol_key(t)}", f"|Δ| <= {tol_key(t)}") for t in self.tolerances]
        out.append(("rel", f"|Δ| <= {self.rel_eta!r}·max(|θ0|,|θ1|)"))
        return out

    def _unchanged_counts(self, s: DiffStats) -> list[int]:
        counts = [s.numel - s.n_changed]
        counts += [s.n_unchanged_at(k) for k in range(len(self.tolerances))]
        counts.append(s.n_rel_unchanged_total)
        return counts

    def tensor_rows(self) -> list[dict]:
        """Per-tensor rows: identity, shapes, dtypes, unchanged counts and sparsity per rule, norms."""
        rows = []
        for t in self.tensors:
            s = t.stats
            row = {k: v for k, v in t.to_dict().items() if k not in ("stats", "sparsity")}
            for key in ("shape_base", "shape_tuned", "shape_compared"):
                row[key] = "x".join(map(str, row[key]))
            for (suffix, _), n in zip(self.rules(), self._unchanged_counts(s), strict=True):
                row[f"n_unchanged_{suffix}"] = n
                frac = sparsity(n, t.numel)
                row[f"sparsity_{suffix}"] = float("nan") if frac is None else frac
            row.update(_norms(s))
            row.update({f: getattr(s, f) for f in _NONFINITE_FIELDS})
            rows.append(row)
        return rows

    def table(self):
        """Per-tensor DataFrame of :meth:`tensor_rows`."""
        import pandas as pd

        return pd.DataFrame(self.tensor_rows())

    def group_rows(self, by: str) -> list[dict]:
        """Sparsity per group (``layer``, ``module``, ``group`` or ``param``), sorted by key.

        For each rule two values: ``sparsity_<rule>`` is count-weighted (every element counts
        once); ``mean_sparsity_<rule>`` is the unweighted mean over the group's tensors, as the
        paper's code averages per-layer values. Tensors outside the blocks have layer None.
        """
        keys = [s for s, _ in self.rules()]
        groups: dict[object, dict] = {}
        for row in self.tensor_rows():
            g = groups.setdefault(row[by], {by: row[by], "n_tensors": 0, "numel": 0, "_sums": {}})
            g["n_tensors"] += 1
            g["numel"] += row["numel"]
            for k in keys:
                n, frac = g["_sums"].get(k, (0, 0.0))
                g["_sums"][k] = (n + row[f"n_unchanged_{k}"], frac + row[f"sparsity_{k}"])
        out = []
        for key in sorted(groups, key=lambda k: (k is None, k)):
            g = groups[key]
            sums = g.pop("_sums")
            for k in keys:
                n, frac = sums[k]
                g[f"n_unchanged_{k}"] = n
                g[f"sparsity_{k}"] = n / g["numel"] if g["numel"] else float("nan")
                g[f"mean_sparsity_{k}"] = frac / g["n_tensors"]
            out.append(g)
        return out

    def aggregate(self, by: str):
        """DataFrame of :meth:`group_rows`."""
        import pandas as pd

        df = pd.DataFrame(self.group_rows(by))
        if by == "layer" and len(df):
            df["layer"] = df["layer"].astype("Int64")
        return df

    def ulp_rows(self) -> list[dict]:
        """Global histogram of |Δ| / ULP(θ0): ``{log2_ratio, n}`` for non-empty bins.

        ``log2_ratio = k`` means |Δ|/ULP in [2^k, 2^(k+1)); the first and last bins are open.
        """
        h = self.totals().ulp_hist
        return [{"log2_ratio": int(i) + ULP_LOG2_MIN, "n": int(h[i])} for i in np.flatnonzero(h)]

    def ulp_histogram(self):
        """DataFrame of :meth:`ulp_rows`."""
        import pandas as pd

        return pd.DataFrame(self.ulp_rows(), columns=["log2_ratio", "n"])

    def binade_rows(self) -> list[dict]:
        """Changed fraction per |θ0| binade: ``{exponent, n_total, n_changed, changed_fraction}``.

        ``exponent = e`` means |θ0| in [2^e, 2^(e+1)) in the compare dtype; ``zero/subnormal`` and
        ``inf/nan`` rows hold the exponent-field extremes. Tensors compared in different dtypes
        are pooled by unbiased exponent.
        """
        acc: dict[object, list[int]] = {}
        for t in self.tensors:
            fmt = FLOAT_FORMATS[t.compare_dtype]
            for f in np.flatnonzero(t.stats.binade_total):
                key = _binade_label(int(f), fmt.bias, fmt.exp_max_field)
                n = acc.setdefault(key, [0, 0])
                n[0] += int(t.stats.binade_total[f])
                n[1] += int(t.stats.binade_changed[f])
        rows = [
            {"exponent": k, "n_total": v[0], "n_changed": v[1], "changed_fraction": v[1] / v[0]}
            for k, v in acc.items()
        ]
        order = {"zero/subnormal": -(10**6), "inf/nan": 10**6}
        rows.sort(key=lambda r: order.get(r["exponent"], r["exponent"]))
        return rows

    def binade_table(self):
        """DataFrame of :meth:`binade_rows`."""
        import pandas as pd

        return pd.DataFrame(
            self.binade_rows(), columns=["exponent", "n_total", "n_changed", "changed_fraction"]
        )

    # ---- serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict:
        total = self.totals()
        n = self.n_params
        unchanged = self._unchanged_counts(total)
        tolerances = {
            tol_key(t): {
                "n_unchanged": unchanged[1 + k],
                "sparsity": sparsity(unchanged[1 + k], n),
            }
            for k, t in enumerate(self.tolerances)
        }
        return {
            "schema": SCHEMA,
            "n_params": n,
            "n_changed": self.n_changed,
            "sparsity": self.sparsity if n else None,
            "density": sparsity(self.n_changed, n),
            "tolerances": tolerances,
            "relative": {
                "eta": self.rel_eta,
                "n_unchanged": unchanged[-1],
                "sparsity": sparsity(unchanged[-1], n),
            },
            "norms": self.norms(total),
            "nonfinite": self.nonfinite(total),
            "n_zero_delta": total.n_zero_delta,
            "precision": {
                "ulp_log2_hist": {str(r["log2_ratio"]): r["n"] for r in self.ulp_rows()},
                "binades": self.binade_rows(),
            },
            "per_layer": self.group_rows("layer"),
            "per_module": self.group_rows("module"),
            "tensors": [t.to_dict() for t in self.tensors],
            "buffers": [b.to_dict() for b in self.buffers],
            "skipped": self.skipped,
            "tied": self.tied,
            "provenance": self.provenance,
        }

    def save_json(self, path: str | Path) -> None:
        """Write the JSON report (gzip-compressed when the name ends in ``.gz``)."""
        text = json.dumps(self.to_dict(), indent=1, default=_json_default) + "\n"
        if str(path).endswith(".gz"):
            with atomic_path(path) as tmp:
                tmp.write_bytes(gzip.compress(text.encode(), mtime=0))
        else:
            write_text_atomic(path, text)

    def save_table(self, path: str | Path) -> None:
        """Per-tensor table as CSV, or parquet when the name ends in ``.parquet``."""
        path = Path(path)
        df = self.table()
        with atomic_path(path) as tmp:
            if path.suffix == ".parquet":
                df.to_parquet(tmp, index=False)
            else:
                df.to_csv(tmp, index=False)

    @classmethod
    def from_dict(cls, d: dict) -> DiffReport:
        if d.get("schema") != SCHEMA:
            raise ValueError(f"not an rlsparse diff report (schema {d.get('schema')!r})")
        return cls(
            tolerances=tuple(float(k) for k in d["tolerances"]),
            rel_eta=d["relative"]["eta"],
            tensors=[TensorResult.from_dict(t) for t in d["tensors"]],
            buffers=[TensorResult.from_dict(t) for t in d["buffers"]],
            skipped=d["skipped"],
            tied=d["tied"],
            provenance=d["provenance"],
        )

    @classmethod
    def load(cls, path: str | Path) -> DiffReport:
        """Read a report written by :meth:`save_json` (``.json`` or ``.json.gz``)."""
        raw = Path(path).read_bytes()
        if str(path).endswith(".gz"):
            raw = gzip.decompress(raw)
        return cls.from_dict(json.loads(raw))


def _norms(s: DiffStats) -> dict:
    base = math.sqrt(s.sum_sq_base)
    delta = math.sqrt(s.sum_sq_delta)
    return {
        "max_abs_delta": s.max_abs_delta,
        "delta_l1": s.sum_abs_delta,
        "delta_fro": delta,
        "base_fro": base,
        "relative_delta_fro": delta / base if base else None,
    }


def _binade_label(field: int, bias: int, max_field: int) -> object:
    if field == 0:
        return "zero/subnormal"
    if field == max_field:
        return "inf/nan"
    return field - bias


def _json_default(o: object) -> object:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
