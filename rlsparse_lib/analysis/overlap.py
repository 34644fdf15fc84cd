"""Overlap of subnetwork masks, with uniform and stratified random baselines.

For masks I1, I2 over the same n weights (paper §5, App. E; Path Not Taken §4):

* one-sided overlaps ``o1 = |I1∩I2| / |I1|`` (how much of I1 that I2 covers) and
  ``o2 = |I1∩I2| / |I2|``; their uniform random baselines are ``o1_random = |I2|/n`` (the density
  of mask 2) and ``o2_random = |I1|/n``;
* Jaccard ``|I1∩I2| / |I1∪I2|`` with the independent-Bernoulli baseline ``pq / (p + q − pq)``;
* stratified baselines: the expected intersection when each mask keeps its count in every stratum
  s but is placed uniformly inside it, ``E = Σ_s n1_s·n2_s / N_s``, for strata = the whole model
  (``global``), each tensor (``tensor``) and each tensor × |θ0| binade (``binade``, needs θ0).
  ``enrichment = |I1∩I2| / E`` (1 = no more overlap than chance) and ``z = (|I1∩I2| − E) / sd``
  with the hypergeometric variance ``Σ_s n1_s n2_s (N_s−n1_s)(N_s−n2_s) / (N_s²(N_s−1))``.

Two runs that both mostly touch small weights overlap above the uniform baseline even if their
choices are otherwise independent; the binade baseline removes exactly that effect.

All counts come from one streaming pass over the packed masks (fused popcount over uint64 words,
pages released after each range), plus θ0's words when binade strata are asked for (a quantized
θ0 — FP8 block scales, compressed-tensors FP8, MXFP4 — is read as its dequantized bfloat16 values,
as the diff compares them; a GGUF block type as its float32 dequantized values).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from rlsparse_lib.diff.cluster import ExecutionLog, UnitProgress, parse_cluster, run_tasks
from rlsparse_lib.diff.config import DEFAULT_UNIT_BYTES
from rlsparse_lib.diff.resume import ResumeDir, manifest
from rlsparse_lib.diff.units import MaskUnit, plan_mask_units
from rlsparse_lib.diff.worker import Task
from rlsparse_lib.errors import ConfigError
from rlsparse_lib.io.checkpoint import open_checkpoint
from rlsparse_lib.io.chunks import stream_chunks
from rlsparse_lib.io.maskfile import packed_size
from rlsparse_lib.io.naming import parse_param_name
from rlsparse_lib.io.pairing import TensorValues
from rlsparse_lib.masks import bitops
from rlsparse_lib.masks.ops import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_CHUNK_ELEMS,
    CheckpointLike,
    MaskLike,
    base_chunks,
    base_values,
    check_same_layout,
    describe_mask,
    numel_of,
    opened_all,
)
from rlsparse_lib.provenance import build_provenance, load_report_json, save_report_json

if TYPE_CHECKING:
    import pandas as pd

SCHEMA = "rlsparse.overlap/1"
RESUME_SCHEMA = "rlsparse-overlap-resume"
#: metrics of :meth:`OverlapMatrix.frame`
MATRIX_METRICS = (
    "o",
    "o_random",
    "jaccard",
    "jaccard_random",
    "n_both",
    "enrichment_global",
    "enrichment_tensor",
    "enrichment_binade",
)


@dataclass
class OverlapCounts:
    """Per-tensor counts of N masks from one streaming pass.

    Attributes:
        labels: one label per mask.
        names: tensor names (T).
        numel: int64[T] weights per tensor.
        n_set: int64[T, N] set bits per tensor and mask.
        pairs: the P = N(N−1)/2 mask index pairs (i < j).
        n_both: int64[T, P] |I_i ∩ I_j| per tensor.
        binade_expected, binade_variance: float64[T, P] expected intersection and its variance
            under per-(tensor × |θ0| binade) placement, or None without θ0.
        masks: provenance of each mask file.
        provenance: how the counts were made (base, timing, bytes read).
    """

    labels: list[str]
    names: list[str]
    numel: np.ndarray
    n_set: np.ndarray
    pairs: list[tuple[int, int]]
    n_both: np.ndarray
    binade_expected: np.ndarray | None = None
    binade_variance: np.ndarray | None = None
    masks: list[dict] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)

    def pair(self, i: int, j: int) -> PairOverlap:
        """The overlap of masks ``i`` and ``j`` (i ≠ j)."""
        import pandas as pd

        swap = i > j
        p = self.pairs.index((j, i) if swap else (i, j))
        a, b = (j, i) if swap else (i, j)
        cols = {
            "name": self.names,
            "numel": self.numel,
            "n1": self.n_set[:, a],
            "n2": self.n_set[:, b],
            "n_both": self.n_both[:, p],
        }
        if self.binade_expected is not None:
            assert self.binade_variance is not None  # set together with binade_expected
            cols["expected_binade"] = self.binade_expected[:, p]
            cols["variance_binade"] = self.binade_variance[:, p]
        table = pd.DataFrame(cols)
        if swap:
            table = table.rename(columns={"n1": "n2", "n2": "n1"})
        for key in ("layer", "module", "group"):
            table.insert(1, key, [getattr(parse_param_name(n), key) for n in self.names])
        table = table[[c for c in _TABLE_COLUMNS if c in table.columns]]
        return PairOverlap(
            labels=(self.labels[i], self.labels[j]),
            table=table,
            masks=[self.masks[i], self.masks[j]] if self.masks else [],
            provenance=self.provenance,
        )


_TABLE_COLUMNS = (
    "name",
    "layer",
    "module",
    "group",
    "numel",
    "n1",
    "n2",
    "n_both",
    "expected_binade",
    "variance_binade",
)


def overlap_stats(n: int, n1: int, n2: int, n_both: int) -> dict:
    """The paper's overlap numbers for one pair of masks over ``n`` weights.

    >>> s = overlap_stats(1000, 367, 367, 222)
    >>> round(s["o1"], 3), s["o1_random"], round(s["intersection_fraction"], 3)
    (0.605, 0.367, 0.222)
    """
    union = n1 + n2 - n_both
    p, q = (n1 / n, n2 / n) if n else (math.nan, math.nan)
    return {
        "n_params": int(n),
        "n1": int(n1),
        "n2": int(n2),
        "n_both": int(n_both),
        "density1": _none(p),
        "density2": _none(q),
        "o1": n_both / n1 if n1 else None,
        "o2": n_both / n2 if n2 else None,
        "jaccard": n_both / union if union else None,
        "o1_random": _none(q),
        "o2_random": _none(p),
        "jaccard_random": p * q / (p + q - p * q) if n and (p + q) > 0 else None,
        "intersection_fraction": n_both / n if n else None,
        "intersection_random": _none(p * q),
    }


def baseline(n1: int, n2: int, n_both: int, expected: float, variance: float) -> dict:
    """Overlap expected by chance for one stratification.

    Args:
        expected: expected |I1∩I2| (Σ_s n1_s·n2_s / N_s); variance: its hypergeometric variance.

    Returns:
        ``expected_both``, the implied ``o1``, ``o2``, ``jaccard``, ``enrichment``
        (observed / expected) and ``z`` ((observed − expected) / sd).
    """
    union = n1 + n2 - expected
    return {
        "expected_both": float(expected),
        "o1": expected / n1 if n1 else None,
        "o2": expected / n2 if n2 else None,
        "jaccard": expected / union if union > 0 else None,
        "enrichment": n_both / expected if expected > 0 else None,
        "z": (n_both - expected) / math.sqrt(variance) if variance > 0 else None,
    }


def hypergeom_var(n: npt.ArrayLike, n1: npt.ArrayLike, n2: npt.ArrayLike) -> np.ndarray:
    """Variance of |I1∩I2| for uniform placement of n1 and n2 of n (elementwise, float64)."""
    n, n1, n2 = (np.asarray(x, np.float64) for x in (n, n1, n2))
    with np.errstate(divide="ignore", invalid="ignore"):
        v = n1 * n2 * (n - n1) * (n - n2) / (n * n * (n - 1))
    return np.where(n > 1, v, 0.0)


def expected_uniform(n: npt.ArrayLike, n1: npt.ArrayLike, n2: npt.ArrayLike) -> np.ndarray:
    """n1·n2 / n elementwise (0 where n = 0)."""
    n, n1, n2 = (np.asarray(x, np.float64) for x in (n, n1, n2))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > 0, n1 * n2 / n, 0.0)


@dataclass
class PairOverlap:
    """Overlap of two masks, per tensor and in total.

    Attributes:
        labels: (label of mask 1, label of mask 2).
        table: per-tensor DataFrame: ``name, layer, module, group, numel, n1, n2, n_both`` and, with
            θ0, ``expected_binade, variance_binade``.
        masks: provenance of the two mask files.
        provenance: base checkpoint, timing, bytes read.
    """

    labels: tuple[str, str]
    table: pd.DataFrame
    masks: list[dict] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)

    @property
    def has_binade(self) -> bool:
        return "expected_binade" in self.table.columns

    def summary(self) -> dict:
        """Totals, the paper's numbers and the three baselines (``binade`` None without θ0)."""
        t = self.table
        n, n1, n2, nb = (int(t[c].sum()) for c in ("numel", "n1", "n2", "n_both"))
        out = overlap_stats(n, n1, n2, nb)
        base = {
            "global": baseline(
                n1, n2, nb, float(expected_uniform(n, n1, n2)), float(hypergeom_var(n, n1, n2))
            ),
            "tensor": baseline(
                n1,
                n2,
                nb,
                float(expected_uniform(t["numel"], t["n1"], t["n2"]).sum()),
                float(hypergeom_var(t["numel"], t["n1"], t["n2"]).sum()),
            ),
            "binade": None,
        }
        if self.has_binade:
            base["binade"] = baseline(
                n1, n2, nb, float(t["expected_binade"].sum()), float(t["variance_binade"].sum())
            )
        out["baselines"] = base
        return out

    def breakdown(self, by: str = "tensor"):
        """Overlap per ``tensor``, ``layer``, ``module`` or ``group``.

        Columns: the grouping key(s), ``numel, n1, n2, n_both``, ``o1, o2, jaccard`` and their
        uniform baselines within the row (``o1_random`` = row density of mask 2, ...),
        ``enrichment_tensor`` (observed / per-tensor expectation) and, with θ0,
        ``enrichment_binade``.
        """
        t = self.table.copy()
        t["expected_tensor"] = expected_uniform(t["numel"], t["n1"], t["n2"])
        sums = ["numel", "n1", "n2", "n_both", "expected_tensor"]
        if self.has_binade:
            sums.append("expected_binade")
        if by == "tensor":
            df = t[["name", "layer", "module", "group", *sums]].copy()
        elif by in ("layer", "module", "group"):
            df = t.groupby(by, dropna=False, sort=True)[sums].sum().reset_index()
            if by == "layer":
                df["layer"] = df["layer"].astype("Int64")
        else:
            raise ConfigError(f"cannot break down by {by!r} (use tensor, layer, module or group)")
        num = df["numel"].where(df["numel"] > 0)
        p, q = df["n1"] / num, df["n2"] / num
        df["o1"] = df["n_both"] / df["n1"].where(df["n1"] > 0)
        df["o2"] = df["n_both"] / df["n2"].where(df["n2"] > 0)
        union = df["n1"] + df["n2"] - df["n_both"]
        df["jaccard"] = df["n_both"] / union.where(union > 0)
        df["o1_random"], df["o2_random"] = q, p
        df["jaccard_random"] = p * q / (p + q - p * q).where(p + q > 0)
        df["enrichment_tensor"] = df["n_both"] / df["expected_tensor"].where(
            df["expected_tensor"] > 0
        )
        if self.has_binade:
            df["enrichment_binade"] = df["n_both"] / df["expected_binade"].where(
                df["expected_binade"] > 0
            )
        return df

    def to_dict(self) -> dict:
        """JSON form (schema ``rlsparse.overlap/1``; see docs/analytics.md); ``table`` holds the
        per-tensor counts :meth:`load` rebuilds the report from."""
        out: dict[str, Any] = {"schema": SCHEMA, "labels": list(self.labels), "masks": self.masks}
        out.update(self.summary())
        out.update(self._breakdowns())
        out["table"] = self.table.to_dict("records")  # full precision (``_records``: 10 digits)
        out["provenance"] = self.provenance
        return out

    def _breakdowns(self) -> dict:
        return {f"per_{by}": _records(self.breakdown(by)) for by in ("tensor", "layer", "module")}

    def save_json(self, path: str | Path) -> None:
        """Write :meth:`to_dict` atomically (gzip when the name ends in ``.gz``)."""
        save_report_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> PairOverlap:
        """Rebuild a pair overlap from its JSON form (needs the ``table`` key)."""
        import pandas as pd

        if d.get("schema") != SCHEMA or "table" not in d or "matrices" in d:
            raise ConfigError(f"not a {SCHEMA} pair report (schema {d.get('schema')!r})")
        table = pd.DataFrame(d["table"])
        table = table[[c for c in _TABLE_COLUMNS if c in table.columns]]
        return cls(tuple(d["labels"]), table, d.get("masks", []), d.get("provenance", {}))

    @classmethod
    def load(cls, path: str | Path) -> PairOverlap:
        """Read a pair overlap saved by :meth:`save_json` (schema checked, the file named)."""
        d = load_report_json(path, SCHEMA)
        if "table" not in d or "matrices" in d:
            raise ConfigError(f"{path}: not a pair overlap (an overlap matrix or an old file)")
        return cls.from_dict(d)


@dataclass
class OverlapMatrix:
    """Pairwise overlaps of N masks (seeds, data, algorithms).

    Attributes:
        counts: the streaming counts all pairs are derived from.
    """

    counts: OverlapCounts

    @property
    def labels(self) -> list[str]:
        return self.counts.labels

    def pair(self, i: int, j: int) -> PairOverlap:
        return self.counts.pair(i, j)

    def frame(self, metric: str = "o"):
        """N×N DataFrame (index and columns = labels) of one metric.

        ``o``: row i, column j = |I_i∩I_j| / |I_i| (how much of row's subnetwork the column's
        covers; the paper's o1 with model 1 = row); ``o_random``: density of the column's mask;
        ``jaccard``, ``jaccard_random``, ``n_both``; ``enrichment_<global|tensor|binade>``:
        observed / expected intersection. The diagonal compares a mask with itself.
        """
        import pandas as pd

        if metric not in MATRIX_METRICS:
            raise ConfigError(f"unknown metric {metric!r} (use one of {', '.join(MATRIX_METRICS)})")
        if metric == "enrichment_binade" and self.counts.binade_expected is None:
            raise ConfigError("enrichment_binade needs the base checkpoint θ0 (base=...)")
        c = self.counts
        k = len(c.labels)
        n = int(c.numel.sum())
        sizes = c.n_set.sum(axis=0)
        mat = np.full((k, k), np.nan)
        for i in range(k):
            for j in range(k):
                mat[i, j] = self._cell(metric, i, j, n, sizes)
        return pd.DataFrame(mat, index=c.labels, columns=c.labels)

    def _cell(self, metric: str, i: int, j: int, n: int, sizes: np.ndarray) -> float:
        c = self.counts
        if i == j:  # a mask against itself: only the observed numbers are meaningful
            size = int(sizes[i])
            if metric == "n_both":
                return size
            return 1.0 if metric in ("o", "jaccard") and size else math.nan
        s = c.pair(i, j).summary()
        value = {
            "o": s["o1"],
            "o_random": s["o1_random"],
            "jaccard": s["jaccard"],
            "jaccard_random": s["jaccard_random"],
            "n_both": s["n_both"],
        }.get(metric)
        if metric.startswith("enrichment_"):
            b = s["baselines"][metric.removeprefix("enrichment_")]
            value = b["enrichment"] if b else None
        return math.nan if value is None else float(value)

    def to_dict(self) -> dict:
        """JSON form: ``pairs`` (one pair object each) and ``matrices`` (see docs/analytics.md)."""
        c = self.counts
        pairs = []
        for i, j in c.pairs:
            po = c.pair(i, j)
            d = {"i": i, "j": j, "labels": list(po.labels)}
            d.update(po.summary())
            d.update(po._breakdowns())
            pairs.append(d)
        metrics = [m for m in MATRIX_METRICS if m != "enrichment_binade"]
        if c.binade_expected is not None:
            metrics.append("enrichment_binade")
        matrices: dict[str, list[list[Any]]] = {
            m: [[_none(v) for v in row] for row in self.frame(m).to_numpy().tolist()]
            for m in metrics
        }
        matrices["n_both"] = [[int(v) for v in row] for row in matrices["n_both"]]
        return {
            "schema": SCHEMA,
            "labels": c.labels,
            "masks": c.masks,
            "n_params": int(c.numel.sum()),
            "n_set": [int(v) for v in c.n_set.sum(axis=0)],
            "pairs": pairs,
            "matrices": matrices,
            "counts": _counts_dict(c),
            "provenance": c.provenance,
        }

    def save_json(self, path: str | Path) -> None:
        """Write :meth:`to_dict` atomically (gzip when the name ends in ``.gz``)."""
        save_report_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> OverlapMatrix:
        """Rebuild a matrix from its JSON form (from the raw ``counts``)."""
        if d.get("schema") != SCHEMA or "counts" not in d:
            raise ConfigError(f"not a {SCHEMA} matrix report (schema {d.get('schema')!r})")
        c = d["counts"]

        def arr(key: str, dtype) -> np.ndarray | None:
            return None if c.get(key) is None else np.asarray(c[key], dtype)

        def req(key: str, dtype) -> np.ndarray:
            a = arr(key, dtype)
            if a is None:
                raise ConfigError(f"{SCHEMA} matrix report: counts lack {key!r}")
            return a

        counts = OverlapCounts(
            labels=list(d["labels"]),
            names=list(c["names"]),
            numel=req("numel", np.int64),
            n_set=req("n_set", np.int64).reshape(len(c["names"]), len(d["labels"])),
            pairs=[(int(i), int(j)) for i, j in c["pairs"]],
            n_both=req("n_both", np.int64).reshape(len(c["names"]), len(c["pairs"])),
            binade_expected=arr("binade_expected", np.float64),
            binade_variance=arr("binade_variance", np.float64),
            masks=list(d.get("masks", [])),
            provenance=dict(d.get("provenance", {})),
        )
        return cls(counts)

    @classmethod
    def load(cls, path: str | Path) -> OverlapMatrix:
        """Read a matrix saved by :meth:`save_json` (schema checked, the file named)."""
        d = load_report_json(path, SCHEMA)
        if "counts" not in d:
            raise ConfigError(f"{path}: not an overlap matrix (a pair overlap or an old file)")
        return cls.from_dict(d)

    @property
    def provenance(self) -> dict:
        """How the counts were made (the shared :func:`~rlsparse_lib.provenance.build_provenance`)."""
        return self.counts.provenance


def _counts_dict(c: OverlapCounts) -> dict:
    """The raw counts of an :class:`OverlapCounts` as JSON lists."""

    def lst(a: np.ndarray | None) -> list | None:
        return None if a is None else a.tolist()

    return {
        "names": list(c.names),
        "numel": lst(c.numel),
        "n_set": lst(c.n_set),
        "pairs": [list(p) for p in c.pairs],
        "n_both": lst(c.n_both),
        "binade_expected": lst(c.binade_expected),
        "binade_variance": lst(c.binade_variance),
    }


def _count_tensors(files, base, reader, names, numel, pairs, step, on_bytes) -> dict[str, Any]:
    """Counts of the tensors ``names`` (sizes ``numel``) of the open mask ``files`` (and θ0's
    values ``base`` (:func:`~rlsparse_lib.masks.ops.base_values`) read by ``reader`` for binade
    strata, or None): ``n_set`` int64[t, N], ``n_both`` int64[t, P],
    ``binade_expected``/``binade_variance`` float64[t, P] or None."""
    n_t, n_m, n_p = len(names), len(files), len(pairs)
    n_set = np.zeros((n_t, n_m), np.int64)
    n_both = np.zeros((n_t, n_p), np.int64)
    exp_b = var_b = None
    if base is not None:
        exp_b, var_b = np.zeros((n_t, n_p)), np.zeros((n_t, n_p))
    # θ0's words when binade strata are asked, then the masks' packed bits (weights
    # [start, stop) = bytes [start // 8, ceil(stop / 8)))
    bits = [m.bits() for m in files]
    first = 0 if base is None else 1
    for t, name in enumerate(names):
        strata = np.zeros((bitops.N_STRATA, 1 << n_m), np.int64) if base else None
        if base is None:
            chunks = stream_chunks(name, int(numel[t]), bits, step, on_bytes=on_bytes)
        else:
            chunks = base_chunks(name, int(numel[t]), base[name], reader, bits, step, on_bytes)
        for chunk in chunks:
            parts = chunk.words[first:]
            _count_chunk(parts, pairs, n_set[t], n_both[t])
            if base is not None:
                assert strata is not None  # allocated for every tensor when base is set
                rows = np.stack(parts)
                bitops.strata_histogram(chunk.words[0], base[name].dtype, rows, strata)
            del parts
        if strata is not None:
            assert exp_b is not None and var_b is not None  # allocated when base is set
            _binade_expectation(strata, pairs, exp_b[t], var_b[t])
    return {"n_set": n_set, "n_both": n_both, "binade_expected": exp_b, "binade_variance": var_b}


def overlap_worker(
    mask_paths: list[str],
    base_path: str | None,
    names: list[str],
    step: int,
) -> dict[str, Any]:
    """An overlap unit in a worker process (``--cluster``): opens the masks (and θ0) from their
    paths and counts the tensors ``names``; arrays as lists, plus ``kernel``, ``seconds``,
    ``host``."""
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        files = stack.enter_context(opened_all(mask_paths))
        base = reader = None
        if base_path is not None:
            ck = open_checkpoint(Path(base_path))
            reader = stack.enter_context(ck.reader())
            base = base_values(ck, {n: files[0].shapes[n] for n in names})
        numel = [numel_of(files[0], n) for n in names]
        pairs = list(itertools.combinations(range(len(files)), 2))
        part = _count_tensors(files, base, reader, names, numel, pairs, step, None)
    return _part_to_json(part) | {
        "kernel": "bitcore",
        "seconds": time.perf_counter() - t0,
        "host": socket.gethostname(),
    }


def _part_to_json(part: dict[str, Any]) -> dict[str, Any]:
    return {k: None if v is None else v.tolist() for k, v in part.items()}


def _part_from_json(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in ("n_set", "n_both", "binade_expected", "binade_variance"):
        dtype = np.int64 if k.startswith("n_") else np.float64
        out[k] = None if d[k] is None else np.asarray(d[k], dtype)
    return out


def count_overlaps(
    masks: Sequence[MaskLike],
    labels: Sequence[str] | None = None,
    *,
    base: CheckpointLike | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
    progress: bool = True,
    max_unit_bytes: int = DEFAULT_UNIT_BYTES,
    resume: str | Path | None = None,
    cluster: str | None = None,
) -> OverlapCounts:
    """One streaming pass over N ≥ 2 masks of the same layout (and θ0 for binade strata).

    The pass runs on work units of whole tensors (:func:`plan_mask_units`), each tensor's counts
    computed within one unit, so every executor and a resumed run give the same counts.

    Args:
        masks: mask files (paths or open :class:`MaskFile`).
        labels: one per mask (default: file names without ``.safetensors``).
        base: checkpoint θ0 for the per-tensor × |θ0|-binade baseline.
        chunk_bytes: packed bytes per read without θ0; chunk_elems: weights per read with θ0.
        max_unit_bytes: bound on the bytes a work unit reads.
        resume: a folder keeping each finished unit's counts (:mod:`rlsparse_lib.diff.resume`).
        cluster: ``local[:N]`` or ``ray[://HOST:PORT]``: where the units run
            (:mod:`rlsparse_lib.diff.cluster`); None runs them in this process.

    Raises:
        MaskError: the masks hold different tensors or shapes; CheckpointError: θ0 lacks a
        tensor or has an incompatible one; ConfigError: fewer than two masks, bad labels, a
        malformed cluster or a resume folder made for another run.
    """
    if len(masks) < 2:
        raise ConfigError(f"overlap needs at least two masks, got {len(masks)}")
    if chunk_bytes < 8 or chunk_elems < 8 or chunk_elems % 8:
        raise ConfigError("chunk_bytes must be >= 8 and chunk_elems a positive multiple of 8")
    if base is not None and len(masks) > bitops.MAX_STRATA_MASKS:
        raise ConfigError(
            f"the binade baseline combines at most {bitops.MAX_STRATA_MASKS} masks in one pass "
            f"(got {len(masks)}); compare fewer masks at a time"
        )
    t0 = time.perf_counter()
    spec = parse_cluster(cluster) if cluster is not None else None
    with contextlib.ExitStack() as stack:
        files = stack.enter_context(opened_all(masks))
        check_same_layout(files)
        labels = _labels(files, labels)
        ck = reader = values = None
        if base is not None:
            ck = open_checkpoint(base)
            reader = stack.enter_context(ck.reader())
            values = base_values(ck, files[0].shapes)
        names = list(files[0].names)
        pairs = list(itertools.combinations(range(len(files)), 2))
        n_t, n_m, n_p = len(names), len(files), len(pairs)
        numel = np.array([numel_of(files[0], n) for n in names], np.int64)
        step = chunk_elems if ck is not None else chunk_bytes * 8
        per_tensor = [
            packed_size(int(numel[t])) * n_m
            + (0 if values is None else int(numel[t]) * values[name].itemsize)
            for t, name in enumerate(names)
        ]
        nbytes_masks = int(sum(packed_size(int(v)) for v in numel)) * n_m
        base_bytes = sum(per_tensor) - nbytes_masks
        units = plan_mask_units(names, per_tensor, max_unit_bytes)
        store = None
        if resume is not None:
            inputs = {f"mask {i + 1}": [Path(m.path)] for i, m in enumerate(files)}
            if ck is not None:
                inputs["base"] = list(ck.files)
            records = [
                {"index": u.index, "names": list(u.names), "nbytes": u.nbytes} for u in units
            ]
            counted = {"binade_baseline": ck is not None, "step": step}
            store = ResumeDir.open_manifest(
                resume, manifest(RESUME_SCHEMA, inputs, counted, max_unit_bytes, records)
            )
        parts = {i: _part_from_json(d) for i, d in (store.load_raw() if store else {}).items()}
        todo = [u for u in units if u.index not in parts]
        log = ExecutionLog(units, "in-process" if cluster is None else cluster, set(parts))
        bar = UnitProgress(units, set(parts), "overlap", progress)

        def finished(unit: MaskUnit, part: dict, seconds: float, host: str, tries: int) -> None:
            if store is not None:
                store.save_raw(unit.index, list(unit.names), _part_to_json(part))
            parts[unit.index] = part
            log.add(unit.index, unit.nbytes, seconds, host, tries)
            bar.unit_done(unit, streamed=spec is None)

        try:
            if spec is not None:
                paths = [str(m.path) for m in files]
                base_path = None if ck is None else str(ck.path)
                by_index = {u.index: u for u in units}
                tasks = [
                    Task(u.index, overlap_worker, (paths, base_path, list(u.names), step))
                    for u in todo
                ]

                def task_done(task: Task, out: dict, attempts: int) -> None:
                    unit = by_index[task.index]
                    finished(unit, _part_from_json(out), out["seconds"], out["host"], attempts)

                run_tasks(spec, tasks, task_done)
            else:
                for unit in todo:
                    t = time.perf_counter()
                    sizes = numel[unit.first : unit.first + len(unit.names)]
                    part = _count_tensors(
                        files, values, reader, unit.names, sizes, pairs, step, bar.update
                    )
                    finished(unit, part, time.perf_counter() - t, log.host, 1)
        finally:
            bar.close()
        n_set = np.zeros((n_t, n_m), np.int64)
        n_both = np.zeros((n_t, n_p), np.int64)
        exp_b = var_b = None
        if ck is not None:
            exp_b, var_b = np.zeros((n_t, n_p)), np.zeros((n_t, n_p))
        for unit in units:  # each tensor's counts come from exactly one unit
            rows = slice(unit.first, unit.first + len(unit.names))
            part = parts[unit.index]
            n_set[rows], n_both[rows] = part["n_set"], part["n_both"]
            if exp_b is not None and var_b is not None:
                exp_b[rows], var_b[rows] = part["binade_expected"], part["binade_variance"]
        seconds = time.perf_counter() - t0
        base_desc = None if ck is None else ck.describe()
        settings = {
            "labels": labels,
            "masks": [str(m.path) for m in files],
            "binade_baseline": ck is not None,
        }
        provenance = build_provenance("overlap", settings=settings, sources={"base": base_desc}) | {
            "base": base_desc,
            "binade_dtype": "θ0 stored dtype (exponent field)" if ck is not None else None,
            # θ0 tensors whose binades are those of dequantized values, by scheme
            "base_dequantized": None if values is None else _schemes(values),
            "seconds": seconds,
            "mask_bytes_read": nbytes_masks,
            "base_bytes_read": base_bytes,
            "chunk": {"bytes": chunk_bytes} if ck is None else {"elems": chunk_elems},
            "execution": log.summary(),
        }
        return OverlapCounts(
            labels=labels,
            names=names,
            numel=numel,
            n_set=n_set,
            pairs=pairs,
            n_both=n_both,
            binade_expected=exp_b,
            binade_variance=var_b,
            masks=[dict(describe_mask(m), label=lab) for m, lab in zip(files, labels, strict=True)],
            provenance=provenance,
        )


def _schemes(values: dict[str, TensorValues]) -> dict[str, list[str]]:
    """Tensor names by the scheme their values are dequantized from (stored floats left out)."""
    out: dict[str, list[str]] = {}
    for name, v in values.items():
        if v.scheme is not None:
            out.setdefault(v.scheme, []).append(name)
    return out


def _count_chunk(parts, pairs, n_set_row, n_both_row) -> None:
    if len(parts) == 2:
        c1, c2, cb = bitops.pair_popcounts(parts[0], parts[1])
        n_set_row += (c1, c2)
        n_both_row[0] += cb
        return
    for k, part in enumerate(parts):
        n_set_row[k] += bitops.popcount(part)
    for p, (i, j) in enumerate(pairs):
        n_both_row[p] += bitops.and_popcount(parts[i], parts[j])


def _binade_expectation(hist, pairs, exp_row, var_row) -> None:
    total = bitops.strata_marginals(hist)
    for p, (i, j) in enumerate(pairs):
        a, b = bitops.strata_marginals(hist, i), bitops.strata_marginals(hist, j)
        exp_row[p] = expected_uniform(total, a, b).sum()
        var_row[p] = hypergeom_var(total, a, b).sum()


def mask_overlap(
    mask1: MaskLike,
    mask2: MaskLike,
    labels: Sequence[str] | None = None,
    *,
    base: CheckpointLike | None = None,
    progress: bool = True,
    **options: Any,
) -> PairOverlap:
    """Overlap of two masks (see :func:`count_overlaps` for the arguments: chunking, units,
    resume, cluster)."""
    return count_overlaps([mask1, mask2], labels, base=base, progress=progress, **options).pair(
        0, 1
    )


def overlap_matrix(
    masks: Sequence[MaskLike],
    labels: Sequence[str] | None = None,
    *,
    base: CheckpointLike | None = None,
    progress: bool = True,
    **options: Any,
) -> OverlapMatrix:
    """Pairwise overlaps of N masks from one streaming pass (see :func:`count_overlaps`)."""
    return OverlapMatrix(count_overlaps(masks, labels, base=base, progress=progress, **options))


def _labels(files, labels: Sequence[str] | None) -> list[str]:
    if labels is None:
        labels = [Path(m.path).name.removesuffix(".safetensors") for m in files]
        if len(set(labels)) < len(labels):
            labels = [str(m.path) for m in files]
        if len(set(labels)) < len(labels):
            labels = [f"{i}:{lab}" for i, lab in enumerate(labels)]
    labels = [str(x) for x in labels]
    if len(labels) != len(files) or len(set(labels)) != len(labels):
        raise ConfigError(f"need {len(files)} distinct labels, got {labels}")
    return labels


def _none(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _records(df) -> list[dict]:
    return json.loads(df.to_json(orient="records")) if len(df) else []
