"""Precision attribution: how much of the update sparsity is bf16 absorbing small updates.

A stored bf16 weight w changes only if its update exceeds about half a ULP of w (ULP = 2^(e−7)
for |w| ∈ [2^e, 2^(e+1))), so sub-ULP updates vanish and large weights stay "unchanged"
(Path Not Taken Cor. 3.6; PULSE; RL's Razor). From a :class:`~rlsparse_lib.diff.report.DiffReport`:

* :meth:`DiffReport.binade_table` — sparsity per |θ0| binade with the binade's ULP; if absorption
  explains the sparsity it rises with |θ0|;
* :meth:`DiffReport.ulp_histogram` — |Δ| of the changed weights in ULPs of θ0;

both in the compare dtype's format: a diff with ``compare_dtype="float16"`` measures fp16 binades
(exponent field 0..31) and fp16 ULPs (2^(e−10), 2^−24 below 2^−14), so a bf16 pair compared as
float16 shows what fp16 storage would have kept (a change below ½ an fp16 ULP of θ0 is absorbed)
and a float16 pair is measured in its own ULPs;
* :func:`absorption_table` — for assumed per-step update sizes u, the weights whose ½ULP exceeds u
  (a single step of size u cannot change them) and the share of all unchanged weights they hold.

When fp32 weights of the same run exist, :func:`visible_vs_absorbed` splits the true (fp32)
updates into visible (the bf16 casts differ) and absorbed (they do not), in one streaming pass.
A quantized checkpoint (FP8 block scales, compressed-tensors FP8, MXFP4) holds no fp32 master: its
weights are refused by name and scheme (GGUF block types, dequantized floats too, are skipped).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rlsparse_lib.diff.kernels.dequant import value_chunks
from rlsparse_lib.diff.report import DiffReport, binade_label
from rlsparse_lib.diff.stats import BINADE_BINS, ULP_BINS, ULP_LOG2_MIN
from rlsparse_lib.errors import ConfigError, QuantizedWeightsError
from rlsparse_lib.io.checkpoint import Checkpoint, open_checkpoint
from rlsparse_lib.io.dtypes import FLOAT_FORMATS, decode_tables
from rlsparse_lib.io.pairing import TensorPair, pair_checkpoints
from rlsparse_lib.masks.bitops import absorb_counts
from rlsparse_lib.progress import byte_progress
from rlsparse_lib.provenance import build_provenance, load_report_json, save_report_json
from rlsparse_lib.rules import sparsity_from_changed

SCHEMA = "rlsparse.absorption/1"
CAST_DTYPES = ("bfloat16", "float16")


def absorption_table(report: DiffReport, update_sizes) -> object:
    """For each assumed per-step update size u: who can absorb it and what that explains.

    A weight "absorbs" u when u < ½ULP(θ0): one step of size u rounds back to θ0 (u ≥ ½ULP can
    change it; ties are counted as visible).

    Returns:
        DataFrame, one row per u: ``update_size``, ``abs_threshold_<dtype>`` for each compare
        dtype (|θ0| from which on u is absorbed: 2^(⌊log2 u⌋ + mant + 2)), ``n_absorbing`` and
        ``share_absorbing`` (of all weights),
        ``n_unchanged_absorbing``, ``share_of_unchanged`` (unchanged weights that sit above the
        threshold: the part of the sparsity that per-step absorption can explain),
        ``sparsity_absorbing`` and ``sparsity_visible`` (sparsity above / below the threshold).
    """
    import pandas as pd

    b = report.binade_table()
    b = b[np.isfinite(b["ulp"])]
    n_all = int(b["n_total"].sum())
    unchanged = b["n_total"] - b["n_changed"]
    n_unchanged = int(unchanged.sum())
    rows = []
    for u in update_sizes:
        u = float(u)
        if not (math.isfinite(u) and u > 0):
            raise ConfigError(f"update sizes must be finite and > 0, got {u}")
        absorbing = b["half_ulp"] > u
        n_abs = int(b.loc[absorbing, "n_total"].sum())
        n_un_abs = int(unchanged[absorbing].sum())
        n_vis = n_all - n_abs
        row = {"update_size": u}
        for dtype in sorted(set(b["compare_dtype"])):
            row[f"abs_threshold_{dtype}"] = absorption_threshold(u, dtype)
        rows.append(
            {
                **row,
                "n_absorbing": n_abs,
                "share_absorbing": n_abs / n_all if n_all else None,
                "n_unchanged_absorbing": n_un_abs,
                "share_of_unchanged": n_un_abs / n_unchanged if n_unchanged else None,
                "sparsity_absorbing": n_un_abs / n_abs if n_abs else None,
                "sparsity_visible": (n_unchanged - n_un_abs) / n_vis if n_vis else None,
            }
        )
    return pd.DataFrame(rows)


def absorption_threshold(u: float, dtype: str) -> float:
    """Smallest |w| whose ½ULP in ``dtype`` exceeds ``u``: 2^(⌊log2 u⌋ + mant_bits + 2).

    >>> absorption_threshold(1e-6, "bfloat16")  # 2^-11: ½ULP there is 2^-19 ≈ 1.9e-6 > 1e-6
    0.00048828125
    """
    fmt = FLOAT_FORMATS[dtype]
    return math.ldexp(1.0, math.floor(math.log2(u)) + fmt.mant_bits + 2)


def precision_attribution(report: DiffReport, update_sizes=()) -> dict:
    """JSON-able bundle: ``binades``, ``ulp_log2_hist`` and ``absorption`` (per update size)."""
    return {
        "schema": "rlsparse.precision/1",
        "n_params": report.n_params,
        "sparsity": report.sparsity,
        "binades": _records(report.binade_table()),
        "ulp_log2_hist": _records(report.ulp_histogram()),
        "absorption": _records(absorption_table(report, update_sizes)),
    }


# ---- fp32 weights: visible vs absorbed updates ----------------------------------------------
@dataclass
class AbsorptionReport:
    """fp32 updates split into visible and absorbed after a cast to ``dtype``.

    Attributes:
        dtype: the cast dtype (bf16 or fp16).
        tensors: per-tensor rows ``name, numel, n_updated, n_visible, n_absorbed``.
        binades: int64[256, 3] (total, updated, visible) per exponent field of the cast θ0.
        hist: int64[2, ULP_BINS] log2(|Δ_fp32| / ULP_dtype(θ0)) of absorbed (row 0) and visible
            (row 1) updates; bin j is 2^(j + ULP_LOG2_MIN).
        skipped: ``{name, reason}``; provenance: inputs, timing.
    """

    dtype: str
    tensors: list[dict]
    binades: np.ndarray
    hist: np.ndarray
    skipped: list[dict] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """Totals: updated (fp32 bits differ), visible (cast bits differ), absorbed, sparsities."""
        n = sum(t["numel"] for t in self.tensors)
        upd = sum(t["n_updated"] for t in self.tensors)
        vis = sum(t["n_visible"] for t in self.tensors)
        return {
            "n_params": n,
            "n_updated": upd,
            "n_visible": vis,
            "n_absorbed": upd - vis,
            "absorbed_fraction_of_updates": (upd - vis) / upd if upd else None,
            "sparsity_fp32": sparsity_from_changed(upd, n),
            f"sparsity_{self.dtype}": sparsity_from_changed(vis, n),
        }

    def binade_table(self):
        """Rows per |θ0| binade: ``exponent, n_total, n_updated, n_visible, absorbed_fraction``."""
        import pandas as pd

        rows = []
        for f in np.flatnonzero(self.binades[:, 0]):
            tot, upd, vis = (int(v) for v in self.binades[f])
            rows.append(
                {
                    "exponent": binade_label(int(f), self.dtype),
                    "n_total": tot,
                    "n_updated": upd,
                    "n_visible": vis,
                    "absorbed_fraction": (upd - vis) / upd if upd else None,
                }
            )
        return pd.DataFrame(rows)

    def ratio_histogram(self):
        """Rows ``log2_ratio, n_absorbed, n_visible`` for non-empty bins."""
        import pandas as pd

        nz = np.flatnonzero(self.hist.sum(axis=0))
        return pd.DataFrame(
            {
                "log2_ratio": nz + ULP_LOG2_MIN,
                "n_absorbed": self.hist[0, nz],
                "n_visible": self.hist[1, nz],
            }
        )

    def to_dict(self) -> dict:
        """JSON form (schema ``rlsparse.absorption/1``; see docs/analytics.md)."""
        return {
            "schema": SCHEMA,
            "dtype": self.dtype,
            **self.summary(),
            "binades": _records(self.binade_table()),
            "ratio_log2_hist": _records(self.ratio_histogram()),
            "tensors": self.tensors,
            "skipped": self.skipped,
            "provenance": self.provenance,
        }

    def save_json(self, path: str | Path) -> None:
        """Write :meth:`to_dict` atomically (gzip when the name ends in ``.gz``)."""
        save_report_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> AbsorptionReport:
        """Rebuild a report from its JSON form (counts from ``binades`` and ``ratio_log2_hist``)."""
        if d.get("schema") != SCHEMA:
            raise ConfigError(f"not a {SCHEMA} report (schema {d.get('schema')!r})")
        dtype = d["dtype"]
        fmt = FLOAT_FORMATS[dtype]
        fields = {"zero/subnormal": 0, "inf/nan": fmt.exp_max_field}
        binades = np.zeros((BINADE_BINS, 3), np.int64)
        for r in d["binades"]:
            f = fields.get(r["exponent"])
            f = int(r["exponent"]) + fmt.bias if f is None else f
            binades[f] = (r["n_total"], r["n_updated"], r["n_visible"])
        hist = np.zeros((2, ULP_BINS), np.int64)
        for r in d["ratio_log2_hist"]:
            j = int(r["log2_ratio"]) - ULP_LOG2_MIN
            hist[:, j] = (r["n_absorbed"], r["n_visible"])
        return cls(
            dtype,
            list(d["tensors"]),
            binades,
            hist,
            list(d.get("skipped", [])),
            dict(d.get("provenance", {})),
        )

    @classmethod
    def load(cls, path: str | Path) -> AbsorptionReport:
        """Read a report saved by :meth:`save_json` (schema checked, the file named)."""
        return cls.from_dict(load_report_json(path, SCHEMA))


def visible_vs_absorbed(
    base: str | Path | Checkpoint,
    tuned: str | Path | Checkpoint,
    *,
    dtype: str = "bfloat16",
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    chunk_elems: int = 1 << 22,
    progress: bool = True,
) -> AbsorptionReport:
    """Split the fp32 updates of a pair into visible and absorbed by a cast to ``dtype``.

    Args:
        base, tuned: fp32 checkpoints of the same run (e.g. fp32 master weights); tensors not
            stored in float32 on both sides are skipped with a reason.
        dtype: the cast (``bfloat16``, round to nearest even, or ``float16``).

    Raises:
        ConfigError: unknown ``dtype`` or no fp32 tensor in common.
        QuantizedWeightsError: a tensor not left out by ``include``/``exclude`` is stored
            quantized (FP8, MXFP4): it has no fp32 master to compare (named, with its scheme).
        CheckpointError: a malformed quantized layout (missing scale, ...), named.
    """
    if dtype not in CAST_DTYPES:
        raise ConfigError(f"cast dtype must be one of {', '.join(CAST_DTYPES)}, got {dtype!r}")
    t0 = time.perf_counter()
    base_ck, tuned_ck = open_checkpoint(base), open_checkpoint(tuned)
    plan = pair_checkpoints(base_ck, tuned_ck, "float32", include, exclude, dequantize=True)
    _refuse_quantized(plan.pairs, base_ck, tuned_ck, dtype)
    skipped = [{"name": s.name, "reason": s.reason} for s in plan.skipped]
    pairs = []
    for p in plan.pairs:
        # quantized GGUF tensors read as float32 are dequantized values, not fp32 weights
        stored = [
            enc.scheme if enc is not None else info.dtype
            for enc, info in (
                (base_ck.encodings.get(p.name), p.base),
                (tuned_ck.encodings.get(p.name), p.tuned),
            )
        ]
        if stored == ["float32", "float32"]:
            pairs.append(p)
        else:
            skipped.append({"name": p.name, "reason": f"stored {'/'.join(stored)}, not fp32"})
    if not pairs:
        raise ConfigError(
            f"{base_ck.source} and {tuned_ck.source} share no tensor stored in float32 on both "
            "sides: visible-vs-absorbed needs the fp32 weights of the run"
        )
    _, efield, ulplog2 = decode_tables(dtype, dtype)
    binades = np.zeros((BINADE_BINS, 3), np.int64)
    hist = np.zeros((2, ULP_BINS), np.int64)
    rows = []
    bar = byte_progress(sum(p.numel * 8 for p in pairs), "absorption", progress)
    try:
        with base_ck.reader() as rb, tuned_ck.reader() as rt:
            for p in pairs:
                before = binades[:, 1:].sum(axis=0)
                # raw: the fp32 words; base/tuned: their casts to ``dtype``
                for c in value_chunks(p, rb, rt, chunk_elems, compare=dtype, on_bytes=bar.update):
                    a32, b32 = c.raw
                    absorb_counts(a32, b32, c.base, c.tuned, efield, ulplog2, binades, hist)
                upd, vis = (int(v) for v in binades[:, 1:].sum(axis=0) - before)
                rows.append(
                    {
                        "name": p.name,
                        "numel": p.numel,
                        "n_updated": upd,
                        "n_visible": vis,
                        "n_absorbed": upd - vis,
                    }
                )
    finally:
        bar.close()
    inputs = {"base": base_ck.describe(), "tuned": tuned_ck.describe()}
    settings = {"dtype": dtype, "include": list(include), "exclude": list(exclude)}
    provenance = build_provenance("absorption", settings=settings, sources=inputs) | {
        "inputs": inputs,
        "updated": "fp32 bit patterns differ",
        "visible": f"{dtype} casts (round to nearest even) differ",
        "ulp_unit": f"ULP of θ0 cast to {dtype}",
        "seconds": time.perf_counter() - t0,
    }
    return AbsorptionReport(dtype, rows, binades, hist, skipped, provenance)


def _refuse_quantized(
    pairs: list[TensorPair], base: Checkpoint, tuned: Checkpoint, dtype: str
) -> None:
    """Raise :class:`QuantizedWeightsError` naming the first quantized tensor (and the count):
    visible-vs-absorbed compares fp32 master weights with their ``dtype`` cast, and a quantized
    checkpoint has no fp32 master (its dequantized values are no training state)."""
    found = [
        (p.name, ck.source, q.scheme)
        for p in pairs
        for ck, q in ((base, p.quant_base), (tuned, p.quant_tuned))
        if q is not None
    ]
    if not found:
        return
    name, source, scheme = found[0]
    others = len({n for n, _, _ in found}) - 1
    more = f" (and {others} more quantized tensor(s))" if others else ""
    raise QuantizedWeightsError(
        f"{source}: {name} is stored quantized ({scheme}){more}: visible-vs-absorbed compares "
        f"fp32 master weights with their {dtype} cast, and a quantized checkpoint has no fp32 "
        "master; pass the run's fp32 weights, or leave the tensor out with exclude"
    )


def _records(df) -> list[dict]:
    return json.loads(df.to_json(orient="records")) if len(df) else []
