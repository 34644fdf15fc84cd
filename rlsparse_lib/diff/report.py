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

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlsparse_lib.atomic import atomic_path
from rlsparse_lib.diff.stats import BINADE_BINS, NONFINITE_FIELDS, ULP_LOG2_MIN, DiffStats
from rlsparse_lib.errors import ConfigError
from rlsparse_lib.io.dtypes import FLOAT_FORMATS
from rlsparse_lib.io.naming import parse_param_name
from rlsparse_lib.io.pairing import TensorPair, skip_category
from rlsparse_lib.provenance import Rows, load_report_json, save_report_json
from rlsparse_lib.rules import (
    PAPER_SPARSITY,
    PAPER_TOL,
    rule_suffix,
    sparsity,
    sparsity_column,
    sparsity_from_changed,
    tol_key,
    unchanged_column,
)

SCHEMA = "rlsparse.diff/1"
#: integer counts of a tensor's ``quant`` view (beside ``scheme`` and ``block``): raw blocks/codes
#: and those whose bytes differ, scale entries and those that differ, elements whose dequantized
#: value changed only through their scale
QUANT_COUNTS = (
    "raw_n",
    "raw_changed",
    "scales_n",
    "scales_changed",
    "scale_only_changed",
)
#: columns of :meth:`DiffReport.binade_table`
BINADE_COLUMNS = [
    "compare_dtype",
    "exponent",
    "abs_lo",
    "ulp",
    "half_ulp",
    "n_total",
    "n_changed",
    "sparsity",
    "share_of_weights",
]


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
        quant: raw-code view of a quantized pair compared on its dequantized values (see
            :data:`QUANT_COUNTS`), or None.
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
    quant: dict | None = None

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
            quant=_merge_quant(self.quant, other.quant),
        )

    def to_dict(self) -> dict:
        p = parse_param_name(self.name)
        out: dict[str, Any] = {
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
        if self.quant is not None:
            out["quant"] = self.quant
        return out

    def float_stats(self) -> DiffStats:
        """:attr:`stats` of a float tensor (every float result carries them)."""
        assert self.stats is not None, f"{self.name}: a {self.kind} tensor has no float statistics"
        return self.stats

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
            quant=d.get("quant"),
        )


@dataclass
class DiffReport:
    """Update sparsity of a checkpoint pair, per tensor and aggregated, with provenance.

    Attributes:
        tolerances: the absolute tolerance grid (ascending).
        rel_eta: η of the relative probe.
        tensors: float tensors compared (full statistics).
        buffers: integer/bool tensors compared bitwise only (not in the float numbers).
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

    # ---- display ----------------------------------------------------------------------------
    def __repr__(self) -> str:
        """The terminal summary (a few KB), not the dataclass dump of every tensor's histograms."""
        head = (
            f"DiffReport: {len(self.tensors)} tensors, {self.n_params:,} elements, "
            f"bitwise sparsity {100 * self.sparsity:.4f}%"
        )
        return f"{head}\n\n{format_summary(self, by='module', max_list=5)}"

    def _repr_html_(self) -> str:
        """Jupyter's view of a report: the same summary, in a ``<pre>``."""
        import html

        return f"<pre>{html.escape(repr(self))}</pre>"

    # ---- global numbers -------------------------------------------------------------------
    def totals(self) -> DiffStats:
        """Statistics merged over all float tensors."""
        total = DiffStats.empty(len(self.tolerances))
        for t in self.tensors:
            total = total.merge(t.float_stats())
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
        return {f: getattr(total, f) for f in NONFINITE_FIELDS if f != "n_zero_delta"}

    def _tol_index(self, tol: float) -> int:
        for k, t in enumerate(self.tolerances):
            if t == tol:
                return k
        raise KeyError(f"tolerance {tol!r} not on the grid {list(self.tolerances)}")

    def coverage(self) -> dict:
        """Which share of the model's elements the headline covers (every element counted once).

        ``n_elements_total`` = headline (float tensors compared) + ``buffers`` (integer/bool,
        bitwise only) + ``excluded`` (left out by --include/--exclude) + ``not_compared``
        (missing on one side, shape/dtype mismatch, rows only on one side of a resized tensor);
        a skipped tensor counts with the larger of its two sizes, tied duplicates not at all
        (``tied`` counts them). ``share`` = ``n_elements_headline / n_elements_total`` (None for
        an empty model). Computed from the tensor lists, so reports saved before the key existed
        get it too.
        """
        headline = sum(t.numel for t in self.tensors)
        groups = {k: [0, 0] for k in ("buffers", "excluded", "not_compared", "tied")}
        groups["buffers"] = [len(self.buffers), sum(b.numel for b in self.buffers)]
        for s in self.skipped:
            g = groups[skip_category(str(s.get("reason", "")))]
            g[0] += 1
            g[1] += max(int(s.get("numel_base", 0) or 0), int(s.get("numel_tuned", 0) or 0))
        partial_rows = 0
        for t in [*self.tensors, *self.buffers]:
            if t.shape_base != t.shape_tuned:
                partial_rows += max(math.prod(t.shape_base), math.prod(t.shape_tuned)) - t.numel
        groups["not_compared"][1] += partial_rows
        total = headline + sum(groups[k][1] for k in ("buffers", "excluded", "not_compared"))
        out: dict[str, Any] = {
            "n_elements_total": total,
            "n_elements_headline": headline,
            "share": headline / total if total else None,
        }
        for k, (n_t, n_e) in groups.items():
            out[k] = {"n_tensors": n_t, "n_elements": n_e}
        out["not_compared"]["n_elements_partial_rows"] = partial_rows
        return out

    def quant_summary(self) -> dict:
        """Raw-code views summed per quantization scheme: ``{scheme: {QUANT_COUNTS..., "tensors"}}``
        over the tensors compared on dequantized values (empty when there are none)."""
        out: dict[str, dict] = {}
        for t in self.tensors:
            if t.quant is not None:
                s = out.setdefault(t.quant["scheme"], {k: 0 for k in (*QUANT_COUNTS, "tensors")})
                for k in QUANT_COUNTS:
                    s[k] += int(t.quant[k])
                s["tensors"] += 1
        return out

    # ---- tables ---------------------------------------------------------------------------
    def rules(self) -> list[tuple[str, str]]:
        """(column suffix, human label) of every rule: bitwise, each tolerance, relative."""
        out = [(rule_suffix("bitwise"), "bitwise (bits differ)")]
        out += [(rule_suffix("tol", t), f"|Δ| <= {tol_key(t)}") for t in self.tolerances]
        out.append((rule_suffix("rel"), f"|Δ| <= {self.rel_eta!r}·max(|θ0|,|θ1|)"))
        return out

    def headline(self) -> dict:
        """The report's headline numbers under the canonical keys every table uses.

        ``n_params``, ``n_changed``, then ``sparsity_<suffix>`` and ``n_unchanged_<suffix>`` for
        every rule of :meth:`rules` (``bitwise``, ``tol_<tol_key(t)>`` per tolerance, ``rel``),
        each sparsity from the integer counts through :func:`rlsparse_lib.rules.sparsity`
        (None when no element was compared).
        """
        n = self.n_params
        counts = self._unchanged_counts(self.totals())
        suffixes = [suffix for suffix, _ in self.rules()]
        out: dict = {"n_params": n, "n_changed": self.n_changed}
        out.update(
            {sparsity_column(k): sparsity(c, n) for k, c in zip(suffixes, counts, strict=True)}
        )
        out.update({unchanged_column(k): c for k, c in zip(suffixes, counts, strict=True)})
        return out

    def _unchanged_counts(self, s: DiffStats) -> list[int]:
        counts = [s.numel - s.n_changed]
        counts += [s.n_unchanged_at(k) for k in range(len(self.tolerances))]
        counts.append(s.n_rel_unchanged_total)
        return counts

    def tensor_rows(self) -> list[dict]:
        """Per-tensor rows: identity, shapes, dtypes, unchanged counts and sparsity per rule, norms."""
        return list(self._tensor_rows())

    def _tensor_rows(self) -> Iterator[dict]:
        """:meth:`tensor_rows` one at a time (the per-group sums never hold them all)."""
        for t in self.tensors:
            s = t.float_stats()
            row = {k: v for k, v in t.to_dict().items() if k not in ("stats", "sparsity")}
            for key in ("shape_base", "shape_tuned", "shape_compared"):
                row[key] = "x".join(map(str, row[key]))
            for (suffix, _), n in zip(self.rules(), self._unchanged_counts(s), strict=True):
                row[unchanged_column(suffix)] = n
                frac = sparsity(n, t.numel)
                row[sparsity_column(suffix)] = float("nan") if frac is None else frac
            row.update(_norms(s))
            row.update({f: getattr(s, f) for f in NONFINITE_FIELDS})
            yield row

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
        for row in self._tensor_rows():
            g = groups.setdefault(row[by], {by: row[by], "n_tensors": 0, "numel": 0, "_sums": {}})
            g["n_tensors"] += 1
            g["numel"] += row["numel"]
            for k in keys:
                n, frac = g["_sums"].get(k, (0, 0.0))
                g["_sums"][k] = (n + row[unchanged_column(k)], frac + row[sparsity_column(k)])
        out = []
        for key in sorted(groups, key=lambda k: (k is None, k)):
            g = groups[key]
            sums = g.pop("_sums")
            for k in keys:
                n, frac = sums[k]
                g[unchanged_column(k)] = n
                frac_k = sparsity(n, g["numel"])
                g[sparsity_column(k)] = float("nan") if frac_k is None else frac_k
                g[f"mean_{sparsity_column(k)}"] = frac / g["n_tensors"]
            out.append(g)
        return out

    def aggregate(self, by: str):
        """DataFrame of :meth:`group_rows`."""
        import pandas as pd

        df = pd.DataFrame(self.group_rows(by))
        if by == "layer" and len(df):
            df["layer"] = df["layer"].astype("Int64")
        return df

    def layer_module_table(self, rule: str = "bitwise"):
        """Fig. 3 table: sparsity per (layer, module) under ``rule``; see :func:`layer_module_table`."""
        return layer_module_table(self.table(), rule)

    def ulp_rows(self) -> list[dict]:
        """Global histogram of |Δ| / ULP(θ0): ``{log2_ratio, n}`` for non-empty bins.

        ``log2_ratio = k`` means |Δ|/ULP in [2^k, 2^(k+1)); the first and last bins are open.
        """
        h = self.totals().ulp_hist
        return [{"log2_ratio": int(i) + ULP_LOG2_MIN, "n": int(h[i])} for i in np.flatnonzero(h)]

    def ulp_histogram(self):
        """|Δ| / ULP(θ0) of the changed weights: ``log2_ratio, n, fraction`` (of changed weights).

        ``log2_ratio = k`` means |Δ|/ULP ∈ [2^k, 2^(k+1)) (end bins open); a stored bf16 change is
        at least one ULP, so k < 0 appears only through casts or a θ0 binade change.
        """
        import pandas as pd

        df = pd.DataFrame(self.ulp_rows(), columns=["log2_ratio", "n"])
        total = int(df["n"].sum())
        df["fraction"] = df["n"] / total if total else np.nan
        return df

    def binade_table(self):
        """Sparsity per |θ0| binade, per compare dtype (the one binade table of rlsparse).

        Returns:
            DataFrame rows (binade order): ``compare_dtype, exponent`` (|θ0| ∈ [2^e, 2^(e+1)), or
            ``zero/subnormal`` / ``inf/nan``), ``abs_lo`` (2^e), ``ulp``, ``half_ulp``,
            ``n_total``, ``n_changed``, ``sparsity``, ``share_of_weights``.
        """
        import pandas as pd

        return pd.DataFrame(self._binade_records(), columns=BINADE_COLUMNS)

    def _binade_records(self) -> list[dict[str, Any]]:
        """The rows of :meth:`binade_table` as dicts (without pandas, whose import costs a
        ``rlsparse diff --json`` about 0.2 s)."""
        acc: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for t in self.tensors:
            assert t.compare_dtype is not None  # float tensors always have a compare dtype
            tot, chg = acc.setdefault(
                t.compare_dtype,
                (np.zeros(BINADE_BINS, np.int64), np.zeros(BINADE_BINS, np.int64)),
            )
            stats = t.float_stats()
            tot += stats.binade_total
            chg += stats.binade_changed
        n_all = sum(int(tot.sum()) for tot, _ in acc.values())
        rows: list[dict[str, Any]] = []
        for dtype, (tot, chg) in sorted(acc.items()):
            fmt = FLOAT_FORMATS[dtype]
            for f in (int(f) for f in np.flatnonzero(tot)):
                ulp = binade_ulp(f, dtype)
                lo = (
                    0.0
                    if f == 0
                    else (math.inf if f == fmt.exp_max_field else 2.0 ** (f - fmt.bias))
                )
                rows.append(
                    {
                        "compare_dtype": dtype,
                        "exponent": binade_label(f, dtype),
                        "abs_lo": lo,
                        "ulp": ulp,
                        "half_ulp": ulp / 2,
                        "n_total": int(tot[f]),
                        "n_changed": int(chg[f]),
                        "sparsity": sparsity_from_changed(int(chg[f]), int(tot[f])),
                        "share_of_weights": int(tot[f]) / n_all,
                    }
                )
        return rows

    def binade_rows(self) -> list[dict]:
        """Changed fraction per |θ0| binade: ``{exponent, n_total, n_changed, changed_fraction}``.

        :meth:`binade_table` pooled over compare dtypes by unbiased exponent (the JSON form);
        ``zero/subnormal`` and ``inf/nan`` rows hold the exponent-field extremes.
        """
        acc: dict[object, list[int]] = {}
        for r in self._binade_records():
            n = acc.setdefault(r["exponent"], [0, 0])
            n[0] += int(r["n_total"])
            n[1] += int(r["n_changed"])
        rows: list[dict[str, Any]] = [
            {"exponent": k, "n_total": v[0], "n_changed": v[1], "changed_fraction": v[1] / v[0]}
            for k, v in acc.items()
        ]
        order = {"zero/subnormal": -(10**6), "inf/nan": 10**6}
        rows.sort(key=lambda r: order.get(r["exponent"], r["exponent"]))
        return rows

    # ---- serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The JSON form (schema ``rlsparse.diff/1``)."""
        return self._fields(lambda results: [r.to_dict() for r in results])

    def _fields(self, rows: Callable[[list[TensorResult]], Any]) -> dict:
        """The JSON form with ``rows(results)`` as its ``tensors`` and ``buffers`` lists."""
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
            "coverage": self.coverage(),
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
            "tensors": rows(self.tensors),
            "buffers": rows(self.buffers),
            "skipped": self.skipped,
            "tied": self.tied,
            "quant_summary": self.quant_summary(),
            "provenance": self.provenance,
        }

    def save_json(self, path: str | Path) -> None:
        """Write the JSON report atomically (gzip-compressed when the name ends in ``.gz``): the
        text of :meth:`to_dict`, made and written tensor by tensor (:class:`Rows`), so a report
        of ~100 k tensors is never held as dicts or text at once."""
        save_report_json(path, self._fields(lambda results: Rows(results, TensorResult.to_dict)))

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
            raise ConfigError(f"not an rlsparse diff report (schema {d.get('schema')!r})")
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
        """Read a report written by :meth:`save_json` (``.json`` or ``.json.gz``).

        Raises:
            ConfigError: unreadable file or another schema (the file is named).
        """
        return cls.from_dict(load_report_json(path, SCHEMA))


def _merge_quant(a: dict | None, b: dict | None) -> dict | None:
    """Raw-code views of two disjoint ranges of one tensor: the counts summed."""
    if a is None or b is None:
        return a or b
    return {**a, **{k: int(a[k]) + int(b[k]) for k in QUANT_COUNTS}}


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


def binade_label(field_value: int, dtype: str) -> int | str:
    """Unbiased exponent of an exponent field, or ``zero/subnormal`` / ``inf/nan``."""
    fmt = FLOAT_FORMATS[dtype]
    if field_value == 0:
        return "zero/subnormal"
    if field_value == fmt.exp_max_field:
        return "inf/nan"
    return field_value - fmt.bias


def binade_ulp(field_value: int, dtype: str) -> float:
    """ULP of the values with this exponent field (subnormals: the smallest ULP; inf/nan: nan)."""
    fmt = FLOAT_FORMATS[dtype]
    if field_value == fmt.exp_max_field:
        return math.nan
    e = max(field_value, 1) - fmt.bias
    return math.ldexp(1.0, e - fmt.mant_bits)


def layer_module_table(tensors, rule: str = "bitwise"):
    """Fig. 3 long table from a per-tensor table (:meth:`DiffReport.table` or its stored CSV).

    Rows ``layer, module, numel, n_unchanged, sparsity`` (count-weighted, %) per (layer, module),
    plus the paper's unweighted per-layer mean over tensors as module ``mean over tensors``.

    Args:
        tensors: per-tensor DataFrame with ``layer, module, numel, n_unchanged_<rule>`` (or a
            :class:`DiffReport`, whose :meth:`~DiffReport.table` is used).
        rule: ``bitwise``, ``tol_<t>`` (e.g. ``tol_1e-05``) or ``rel``.
    """
    import pandas as pd

    if hasattr(tensors, "table"):  # a DiffReport
        tensors = tensors.table()
    col = unchanged_column(rule)
    if col not in tensors.columns:
        raise ConfigError(f"no rule {rule!r} in the report (columns n_unchanged_<rule>)")
    df = tensors[tensors["layer"].notna()].copy()
    df["layer"] = df["layer"].astype(int)
    g = df.groupby(["layer", "module"], sort=True)[["numel", col]].sum().reset_index()
    g["sparsity"] = 100 * g[col] / g["numel"]
    mean = (
        (100 * df[col] / df["numel"]).groupby(df["layer"]).mean().rename("sparsity").reset_index()
    )
    mean["module"] = "mean over tensors"
    return pd.concat([g.rename(columns={col: "n_unchanged"}), mean], ignore_index=True)


# ---- terminal summary -------------------------------------------------------------------------
def format_summary(report: DiffReport, by: str = "module", max_list: int = 10) -> str:
    """A readable summary: inputs, sparsity per rule, a per-``by`` table, skipped/partial/tied."""
    prov = report.provenance
    lines = coverage_lines(report.coverage())
    for side in ("base", "tuned"):
        d = prov.get("inputs", {}).get(side)
        if d:
            dtypes = ", ".join(f"{k}: {v}" for k, v in d["stored_dtypes"].items())
            lines.append(
                f"{side:<6} {d['source']}  ({d['format']}, {len(d['files'])} file(s), "
                f"{d['n_tensors']} tensors; {dtypes})"
            )
    compare = ", ".join(f"{k} ({v})" for k, v in prov.get("compare_dtypes", {}).items())
    lines.append(
        f"compared {len(report.tensors)} float tensors, {report.n_params:,} elements; "
        f"compare dtype: {compare} [{prov.get('compare_dtype_policy', '?')}]"
    )
    lines.append("")
    lines.append(f"{'rule':<42}{'unchanged':>16}{'sparsity':>12}")
    total = report.totals()
    head = report.headline()
    for suffix, label in report.rules():
        if suffix == rule_suffix("tol", PAPER_TOL):
            label += "  (paper default)"
        n = head[unchanged_column(suffix)]
        frac = sparsity(n, report.n_params)
        pct = float("nan") if frac is None else 100 * frac
        lines.append(f"{label:<42}{n:>16,}{pct:>11.4f}%")
    norms = report.norms(total)
    rel = norms["relative_delta_fro"]
    lines.append("")
    lines.append(
        f"max|Δ| = {norms['max_abs_delta']:.3g}   ‖Δ‖_F = {norms['delta_fro']:.4g}   "
        f"‖Δ‖_F/‖θ0‖_F = {rel:.3g}"
        if rel is not None
        else f"max|Δ| = {norms['max_abs_delta']:.3g}"
    )
    nonfinite = {k: v for k, v in report.nonfinite(total).items() if v}
    lines.append(
        "non-finite values: "
        + (", ".join(f"{k}={v:,}" for k, v in nonfinite.items()) if nonfinite else "none")
    )
    if by != "none" and report.tensors:
        lines.append("")
        lines.extend(_group_table(report, by))
    lines.extend(
        _listing("skipped", [f"{s['name']}: {s['reason']}" for s in report.skipped], max_list)
    )
    lines.extend(
        _listing(
            "partial", [f"{p['name']}: {p['note']}" for p in prov.get("partial", [])], max_list
        )
    )
    lines.extend(
        _listing("casts", [f"{p['name']}: {p['note']}" for p in prov.get("casts", [])], max_list)
    )
    lines.extend(_listing("tied", report.tied, max_list))
    lines.extend(
        _listing(
            "quantized (headline on dequantized values; raw blocks/codes beside)",
            [
                f"{k}: {v['tensors']} tensor(s), {v['raw_changed']:,} of {v['raw_n']:,} raw "
                f"blocks/codes changed"
                + (
                    f"; {v['scales_changed']:,} of {v['scales_n']:,} scales changed; "
                    f"{v['scale_only_changed']:,} elements changed through their scale only"
                    if v["scales_n"]
                    else ""
                )
                for k, v in report.quant_summary().items()
            ],
            max_list,
        )
    )
    lines.extend(
        _listing(
            "buffers (bitwise only, not in the numbers above)",
            [f"{b.name}: {b.n_changed:,} of {b.numel:,} changed" for b in report.buffers],
            max_list,
        )
    )
    lines.extend(_listing("warnings", prov.get("warnings", []), max_list))
    if prov.get("seconds") is not None:
        lines.append("")
        lines.append(
            f"took {prov['seconds']:.2f} s ({prov.get('kernel')}, {prov.get('threads')} threads)"
        )
    return "\n".join(lines)


def coverage_lines(cov: dict) -> list[str]:
    """The summary's first line(s): which share of the model's elements the headline covers, and
    where the rest went (excluded by --include/--exclude, bitwise buffers, not compared)."""
    total = cov["n_elements_total"]
    line = f"headline covers {_pct(cov['share'])} of {_human(total)} elements"
    rest = []
    for key, label in (
        ("excluded", "excluded by --include/--exclude"),
        ("buffers", "integer/bool buffers, bitwise only"),
        ("not_compared", "not compared: missing, mismatched or resized rows"),
    ):
        n = cov[key]["n_elements"]
        if n:
            rest.append(f"{_pct(n / total)} {label}")
    if rest:
        line += f" ({'; '.join(rest)})"
    lines = [line]
    if cov["share"] is not None and cov["share"] < 1:
        lines.append(
            f"  the numbers below describe {_human(cov['n_elements_headline'])} of "
            f"{_human(total)} elements, not the whole model"
        )
    return lines


def _pct(share: float | None) -> str:
    """A share as a percentage that never rounds a partial share to 100 % or a non-empty one to 0 %."""
    if share is None:
        return "n/a"
    for digits in range(1, 10):  # more digits until a partial share stops looking whole or empty
        text = f"{100 * share:.{digits}f}"
        if not ((float(text) == 100 and share < 1) or (float(text) == 0 and share > 0)):
            break
    return f"{text} %"


def _human(n: int) -> str:
    """1234 -> '1,234'; 1.2e9 -> '1.2 B' (K, M, B, T above 10,000)."""
    for scale, unit in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if n >= max(scale, 10**4):
            return f"{n / scale:.1f} {unit}"
    return f"{n:,}"


def _group_table(report: DiffReport, by: str) -> list[str]:
    rows = report.group_rows(by)
    has_tol = PAPER_TOL in report.tolerances
    head = f"{by:<34}{'tensors':>8}{'elements':>15}{'bitwise':>10}"
    head += f"{'1e-05':>10}" if has_tol else ""
    head += f"{'mean/tensor':>13}"
    out = [f"sparsity by {by} (count-weighted; 'mean/tensor' = unweighted mean, bitwise)", head]
    for r in rows:
        key = "—" if r[by] is None else str(r[by])
        bitwise = sparsity_column("bitwise")
        row = f"{key:<34}{r['n_tensors']:>8}{r['numel']:>15,}{100 * r[bitwise]:>9.2f}%"
        if has_tol:
            row += f"{100 * r[PAPER_SPARSITY]:>9.2f}%"
        row += f"{100 * r[f'mean_{bitwise}']:>12.2f}%"
        out.append(row)
    return out


def _listing(title: str, items: list[str], max_list: int) -> list[str]:
    if not items:
        return []
    out = ["", f"{title} ({len(items)}):"]
    out += [f"  {s}" for s in items[:max_list]]
    if len(items) > max_list:
        out.append(f"  … {len(items) - max_list} more (see --json)")
    return out
