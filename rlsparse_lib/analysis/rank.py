"""Rank of the update matrices ΔW = W_tuned − W_base (paper §3, Table 2).

For each selected 2-D ΔW, computed in float32 from the compare-dtype values (as the paper's
``Δ.float()``), one ``svdvals`` call gives:

* ``rank``: singular values above ``max(atol, rtol·σ_max)``; by default torch's
  ``linalg.matrix_rank`` rule (rtol = max(m, n)·ε of the SVD dtype), which is what the paper used;
* ``rank_pct``: rank as % of ``max_rank = min(m, n)``;
* ``effective_rank``: the smallest k whose top-k singular values hold ``energy`` (0.99) of Σσ²;
* ``stable_rank``: ‖ΔW‖_F² / σ_max².

Quantized checkpoints (FP8 block scales, compressed-tensors FP8, MXFP4) are ranked on their
dequantized bfloat16 values, decoded by the diff's rule and kernel (a quantized side may meet a
bf16 one); GGUF block types on their float32 dequantized values. Each such matrix names its
schemes (``quant``).

The paper's selection is the default: every ≥ 2-D float tensor whose name does not contain
``layernorm`` (embeddings and lm_head included). Tensors are processed one at a time (memory: the
largest ΔW plus the SVD workspace), on CUDA when present, or by several CPU workers in parallel.
"""

from __future__ import annotations

import math
import os
import re
import socket
import time
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlsparse_lib.diff.cluster import ExecutionLog, parse_cluster, run_tasks, worker_threads
from rlsparse_lib.diff.config import DEFAULT_UNIT_BYTES
from rlsparse_lib.diff.kernels.dequant import value_chunks
from rlsparse_lib.diff.resume import ResumeDir, manifest
from rlsparse_lib.diff.worker import Task
from rlsparse_lib.errors import ConfigError
from rlsparse_lib.io.checkpoint import Checkpoint, TensorReader, open_checkpoint
from rlsparse_lib.io.naming import parse_param_name
from rlsparse_lib.io.pairing import (
    TensorPair,
    check_include_matches,
    pair_checkpoints,
    tensor_values,
)
from rlsparse_lib.progress import progress_bar
from rlsparse_lib.provenance import build_provenance, load_report_json, save_report_json

SCHEMA = "rlsparse.rank/1"
RESUME_SCHEMA = "rlsparse-rank-resume"
SVD_DTYPES = ("float32", "float64")
#: CPU workers when not given (each holds one ΔW and its SVD workspace)
DEFAULT_WORKERS = 4


@dataclass(frozen=True)
class RankSelection:
    """Which tensors get a rank (default: the paper's ``update_rank.py`` selection).

    Attributes:
        skip_substrings: skip names containing any of these (paper: ``layernorm``).
        embeddings: keep input embeddings (paper: yes).
        lm_head: keep the output head (paper: yes).
        include: if given, only names matching one of these regexes.
        exclude: skip names matching any of these regexes.
    """

    skip_substrings: tuple[str, ...] = ("layernorm",)
    embeddings: bool = True
    lm_head: bool = True
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def reason(self, name: str, shape: tuple[int, ...]) -> str | None:
        """Why ``name`` is not selected, or None when it is."""
        if len(shape) <= 1:
            return f"{len(shape)}-D tensor"
        for sub in self.skip_substrings:
            if sub in name:
                return f"name contains '{sub}'"
        module = parse_param_name(name).module
        if not self.embeddings and module in ("embed_tokens", "embed_positions"):
            return "embedding (excluded)"
        if not self.lm_head and module == "lm_head":
            return "lm_head (excluded)"
        if self.include and not any(re.search(p, name) for p in self.include):
            return "not matched by include"
        for p in self.exclude:
            if re.search(p, name):
                return f"excluded by {p}"
        return None

    def __post_init__(self) -> None:
        for p in self.include + self.exclude:
            try:
                re.compile(p)
            except re.error as err:
                raise ConfigError(f"invalid regular expression {p!r}: {err}") from err


@dataclass(frozen=True)
class RankRule:
    """Numerical-rank threshold ``max(atol, rtol·σ_max)`` with torch's ``matrix_rank`` defaults.

    Both None: rtol = max(m, n)·ε (ε of the SVD dtype), atol = 0. Only ``atol`` > 0 given:
    rtol = 0. Only ``rtol`` given: atol = 0.
    """

    atol: float | None = None
    rtol: float | None = None

    def __post_init__(self) -> None:
        for key in ("atol", "rtol"):
            v = getattr(self, key)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"{key} must be finite and >= 0, got {v}")

    def resolve(self, m: int, n: int, eps: float) -> tuple[float, float]:
        """(atol, rtol) actually used for an m×n matrix."""
        atol = 0.0 if self.atol is None else float(self.atol)
        if self.rtol is not None:
            rtol = float(self.rtol)
        elif self.atol is not None and self.atol > 0:
            rtol = 0.0
        else:
            rtol = max(m, n) * eps
        return atol, rtol

    def describe(self) -> str:
        if self.atol is None and self.rtol is None:
            return "torch.linalg.matrix_rank default: σ > σ_max·max(m,n)·ε"
        return f"σ > max(atol={self.atol}, rtol={self.rtol}·σ_max)"


def spectrum_stats(
    delta,
    rule: RankRule = RankRule(),
    energy: float = 0.99,
    rtol_grid: Iterable[float] = (),
    svd_dtype: str = "float32",
    device: str | None = None,
) -> dict:
    """Rank statistics of one matrix.

    Args:
        delta: 2-D torch tensor (any float dtype, any device) or numpy array, shape (m, n).
        rule: the numerical-rank threshold.
        energy: spectral-energy fraction for the effective rank.
        rtol_grid: extra relative tolerances; ``rank_at_rtol`` gives the rank at each.
        svd_dtype: ``float32`` (the paper) or ``float64``; ε of this dtype enters the default rule.
        device: where to run the SVD (default: where ``delta`` lives).

    Returns:
        ``shape, rank, max_rank, rank_pct, effective_rank, stable_rank, sigma_max, fro_norm,
        threshold, atol, rtol, rank_at_rtol`` (a zero matrix has rank 0 and stable rank None).
    """
    import torch

    if svd_dtype not in SVD_DTYPES:
        raise ConfigError(f"svd_dtype must be one of {', '.join(SVD_DTYPES)}, got {svd_dtype!r}")
    if not 0 < energy <= 1:
        raise ConfigError(f"energy must be in (0, 1], got {energy}")
    t = delta if isinstance(delta, torch.Tensor) else torch.from_numpy(np.asarray(delta))
    if t.ndim != 2:
        raise ConfigError(f"rank needs a 2-D matrix, got shape {tuple(t.shape)}")
    t = t.to(device=device or t.device, dtype=getattr(torch, svd_dtype))
    m, n = t.shape
    eps = torch.finfo(t.dtype).eps
    atol, rtol = rule.resolve(m, n, eps)
    sv = torch.linalg.svdvals(t).double().cpu().numpy() if t.numel() else np.zeros(0)
    return _stats_from_singular_values(sv, m, n, atol, rtol, energy, rtol_grid)


def _stats_from_singular_values(
    sv: np.ndarray, m: int, n: int, atol: float, rtol: float, energy: float, rtol_grid
) -> dict:
    smax = float(sv[0]) if sv.size else 0.0
    threshold = max(atol, rtol * smax)
    rank = int((sv > threshold).sum())
    sq = sv * sv
    total = float(sq.sum())
    if total > 0:
        cum = np.cumsum(sq)
        eff = int(np.searchsorted(cum, energy * cum[-1], side="left")) + 1
        eff = min(eff, sv.size)
    else:
        eff = 0
    max_rank = min(m, n)
    return {
        "shape": [int(m), int(n)],
        "rank": rank,
        "max_rank": int(max_rank),
        "rank_pct": 100.0 * rank / max_rank if max_rank else None,
        "effective_rank": eff,
        "stable_rank": total / (smax * smax) if smax > 0 else None,
        "sigma_max": smax,
        "fro_norm": math.sqrt(total),
        "threshold": threshold,
        "atol": atol,
        "rtol": rtol,
        "rank_at_rtol": {repr(float(r)): int((sv > max(atol, r * smax)).sum()) for r in rtol_grid},
    }


@dataclass
class RankReport:
    """Per-matrix update ranks of a checkpoint pair.

    Attributes:
        matrices: one dict per ranked matrix (see :func:`spectrum_stats`, plus ``name, layer,
            module, group, note``), in checkpoint order.
        skipped: ``{name, reason}`` for every tensor not ranked.
        provenance: inputs, rule, selection, device, timing.
    """

    matrices: list[dict]
    skipped: list[dict] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)

    def table(self):
        """Per-matrix DataFrame (shape as ``m x n``; ``rank_at_rtol`` expanded to columns;
        ``quant`` as ``quant_base``/``quant_tuned`` when a matrix was dequantized)."""
        import pandas as pd

        rows = []
        for r in self.matrices:
            row = {k: v for k, v in r.items() if k not in ("shape", "rank_at_rtol", "quant")}
            row["shape"] = "x".join(map(str, r["shape"]))
            row.update({f"quant_{k}": v for k, v in (r.get("quant") or {}).items()})
            row.update({f"rank_rtol_{k}": v for k, v in r.get("rank_at_rtol", {}).items()})
            rows.append(row)
        return pd.DataFrame(rows)

    def summary(self) -> dict:
        """Means over the matrices with a nonzero, finite ΔW: unweighted ``mean_rank_pct`` (the
        paper's Table 2 number), ``min_rank_pct``, the count of full-rank matrices, mean effective
        and stable rank as % of max rank. ``n_zero_delta`` matrices with ΔW = 0 (rank 0 by
        definition) and ``n_nonfinite`` ones with a non-finite ΔW are counted apart, not averaged;
        the means are None when no matrix is left."""
        ranked = [r for r in self.matrices if r.get("rank") is not None and r["max_rank"] > 0]
        ok = [r for r in ranked if r.get("sigma_max")]
        out: dict = {
            "n_matrices": len(ok),
            "n_zero_delta": len(ranked) - len(ok),
            "n_nonfinite": sum(r.get("rank") is None for r in self.matrices),
        }
        if not ok:
            means = ("mean_rank_pct", "min_rank_pct", "mean_effective_rank_pct")
            return out | dict.fromkeys(means) | {"n_full_rank": 0, "mean_stable_rank_pct": None}
        pct = np.array([r["rank_pct"] for r in ok])
        eff = np.array([100 * r["effective_rank"] / r["max_rank"] for r in ok])
        stable = [100 * r["stable_rank"] / r["max_rank"] for r in ok if r["stable_rank"]]
        return out | {
            "mean_rank_pct": float(pct.mean()),
            "min_rank_pct": float(pct.min()),
            "n_full_rank": int(sum(r["rank"] == r["max_rank"] for r in ok)),
            "mean_effective_rank_pct": float(eff.mean()),
            "mean_stable_rank_pct": float(np.mean(stable)) if stable else None,
        }

    def by_module(self):
        """Mean rank / effective-rank % per module kind (unweighted over layers; matrices with
        ΔW = 0 or a non-finite ΔW left out, as in :meth:`summary`)."""
        df = self.table()
        if df.empty:
            return df
        # the matrices of summary()'s means: finite and nonzero ΔW
        df = df[df["rank"].notna() & (df["sigma_max"] > 0 if "sigma_max" in df else False)].copy()
        df["effective_rank_pct"] = 100 * df["effective_rank"] / df["max_rank"]
        return (
            df.groupby("module", sort=True)
            .agg(
                n_matrices=("name", "size"),
                mean_rank_pct=("rank_pct", "mean"),
                min_rank_pct=("rank_pct", "min"),
                mean_effective_rank_pct=("effective_rank_pct", "mean"),
            )
            .reset_index()
        )

    def to_dict(self) -> dict:
        """JSON form (schema ``rlsparse.rank/1``; see docs/analytics.md)."""
        return {
            "schema": SCHEMA,
            "summary": self.summary(),
            "matrices": self.matrices,
            "skipped": self.skipped,
            "provenance": self.provenance,
        }

    def save_json(self, path: str | Path) -> None:
        """Write :meth:`to_dict` atomically (gzip when the name ends in ``.gz``)."""
        save_report_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> RankReport:
        """Rebuild a report from its JSON form."""
        if d.get("schema") != SCHEMA:
            raise ConfigError(f"not a {SCHEMA} report (schema {d.get('schema')!r})")
        return cls(list(d["matrices"]), list(d.get("skipped", [])), dict(d.get("provenance", {})))

    @classmethod
    def load(cls, path: str | Path) -> RankReport:
        """Read a report saved by :meth:`save_json` (schema checked, the file named)."""
        return cls.from_dict(load_report_json(path, SCHEMA))


def default_device() -> str:
    """``cuda`` when torch sees a GPU, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def update_ranks(
    base: str | Path | Checkpoint,
    tuned: str | Path | Checkpoint,
    *,
    selection: RankSelection = RankSelection(),
    rule: RankRule = RankRule(),
    energy: float = 0.99,
    rtol_grid: Iterable[float] = (),
    compare_dtype: str | None = None,
    svd_dtype: str = "float32",
    device: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
    chunk_elems: int = 1 << 22,
    progress: bool = True,
    max_unit_bytes: int = DEFAULT_UNIT_BYTES,
    resume: str | Path | None = None,
    cluster: str | None = None,
) -> RankReport:
    """Rank of every selected ΔW of a checkpoint pair.

    The matrices are grouped into work units of whole matrices (bounded by the bytes read from
    both sides); a resumed run, a process pool or Ray tasks merge the units' rows in unit order.
    Ranks are integers and the same everywhere; the float columns (σ_max, stable rank) are the
    same bit for bit when the SVDs run with the same number of torch threads.

    Args:
        base, tuned: checkpoints (paths, hub ids or :class:`Checkpoint`).
        selection: which tensors (default: the paper's).
        rule, energy, rtol_grid, svd_dtype: see :func:`spectrum_stats`.
        compare_dtype: dtype both sides are cast to before Δ = tuned − base is taken in float32
            (default: the base's stored dtype, as the engine).
        device: ``cpu``, ``cuda``, ``cuda:1``, ... (default: cuda if available, else cpu).
        workers: matrices ranked concurrently on CPU, each with threads // workers torch threads
            and its own ΔW plus SVD workspace in memory (default: min(4, CPU cores)). One thread
            per SVD is robust on shared machines, where multi-threaded LAPACK can slow down
            several-fold when another process holds a core (bench/rank_bench.py).
        threads: torch CPU threads in total (default: torch's setting).
        chunk_elems: elements read per step while assembling ΔW.
        max_unit_bytes: bound on the bytes a work unit reads from both sides.
        resume: a folder keeping each finished unit's rows (:mod:`rlsparse_lib.diff.resume`).
        cluster: ``local[:N]`` or ``ray[://HOST:PORT]``: where the units run, each with
            ``threads`` torch threads (default: the cores shared among a pool's workers; one on
            Ray), and on one GPU of its own with a ``cuda`` device; None runs them here.

    Returns:
        A :class:`RankReport`; matrices with non-finite Δ get ``rank`` None and a note.
    """
    import torch

    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    device = device or default_device()
    t0 = time.perf_counter()
    base_ck, tuned_ck = open_checkpoint(base), open_checkpoint(tuned)
    plan = pair_checkpoints(base_ck, tuned_ck, compare_dtype, dequantize=True)
    names = [p.name for p in plan.pairs] + [s.name for s in plan.skipped]
    check_include_matches(selection.include, names, base_ck, tuned_ck)
    skipped = [{"name": s.name, "reason": s.reason} for s in plan.skipped]
    chosen: list[TensorPair] = []
    for pair in plan.pairs:
        why = "not a float tensor" if pair.kind != "float" else None
        why = why or selection.reason(pair.name, pair.compared_shape)
        if why:
            skipped.append({"name": pair.name, "reason": why})
        else:
            chosen.append(pair)
    on_cpu = torch.device(device).type == "cpu"
    old_threads = torch.get_num_threads()
    total_threads = threads or old_threads
    if not on_cpu:
        n_workers = 1
    elif workers is None:
        n_workers = max(1, min(DEFAULT_WORKERS, os.cpu_count() or 1, total_threads, len(chosen)))
    else:
        n_workers = workers
    torch.set_num_threads(max(1, total_threads // n_workers))
    bar = progress_bar(
        total=len(chosen), unit="matrix", desc="rank", disable=None if progress else True
    )
    rtol_grid = tuple(rtol_grid)

    def one(pair: TensorPair) -> dict:
        with base_ck.reader() as rb, tuned_ck.reader() as rt:
            delta = _delta(pair, rb, rt, device, chunk_elems)
        res = _rank_one(pair, delta, rule, energy, rtol_grid, svd_dtype, base_ck, tuned_ck)
        del delta
        bar.update(1)
        return res

    units = plan_matrix_units(chosen, max_unit_bytes)
    args = RankArgs(rule, energy, rtol_grid, compare_dtype, svd_dtype, str(device), chunk_elems)
    spec = parse_cluster(cluster) if cluster is not None else None
    store = None
    if resume is not None:
        settings_key = args.result_settings() | {"selection": [p.name for p in chosen]}
        records = [{"index": u.index, "names": list(u.names), "nbytes": u.nbytes} for u in units]
        store = ResumeDir.open_manifest(
            resume,
            manifest(
                RESUME_SCHEMA,
                {"base": base_ck.files, "tuned": tuned_ck.files},
                settings_key,
                max_unit_bytes,
                records,
            ),
        )
    rows: dict[int, list[dict]] = {
        i: d["matrices"] for i, d in (store.load_raw() if store else {}).items()
    }
    log = ExecutionLog(units, "in-process" if cluster is None else cluster, set(rows))
    for u in units:
        if u.index in rows:
            bar.update(len(u.names))

    def finished(unit: MatrixUnit, matrices: list[dict], seconds: float, host: str, tries: int):
        if store is not None:
            store.save_raw(unit.index, list(unit.names), {"matrices": matrices})
        rows[unit.index] = matrices
        log.add(unit.index, unit.nbytes, seconds, host, tries)

    todo = [u for u in units if u.index not in rows]
    try:
        if spec is not None:
            unit_threads = worker_threads(threads, spec)
            by_index = {u.index: u for u in units}
            paths = (str(base_ck.path), str(tuned_ck.path))
            gpus = 0 if on_cpu else 1
            tasks = [
                Task(
                    u.index,
                    rank_worker,
                    (*paths, args, list(u.names), unit_threads),
                    unit_threads,
                    gpus,
                )
                for u in todo
            ]

            def task_done(task: Task, out: dict, attempts: int) -> None:
                unit = by_index[task.index]
                finished(unit, out["matrices"], out["seconds"], out["host"], attempts)
                bar.update(len(unit.names))

            run_tasks(spec, tasks, task_done)
        else:
            pool = ThreadPoolExecutor(n_workers) if n_workers > 1 else None
            try:
                for unit in todo:
                    t = time.perf_counter()
                    ranked = list(pool.map(one, unit.pairs) if pool else map(one, unit.pairs))
                    finished(unit, ranked, time.perf_counter() - t, log.host, 1)
            finally:
                if pool is not None:
                    pool.shutdown()
    finally:
        bar.close()
        torch.set_num_threads(old_threads)
    matrices = [m for i in sorted(rows) for m in rows[i]]
    dequantized: dict[str, int] = {}
    for m in matrices:
        for scheme in {s for s in (m.get("quant") or {}).values() if s is not None}:
            dequantized[scheme] = dequantized.get(scheme, 0) + 1
    inputs = {"base": base_ck.describe(), "tuned": tuned_ck.describe()}
    settings = {
        "rule": rule.describe(),
        "energy": energy,
        "rtol_grid": [float(r) for r in rtol_grid],
        "compare_dtype": compare_dtype,
        "svd_dtype": svd_dtype,
        "selection": selection,
    }
    provenance = build_provenance("rank", settings=settings, sources=inputs) | {
        "inputs": inputs,
        "delta": "Δ = tuned − base in float32 from the compare-dtype values",
        "dequantized": dequantized,
        "compare_dtype_policy": compare_dtype or "base stored dtype",
        "rule": rule.describe(),
        "svd_dtype": svd_dtype,
        "energy": energy,
        "rtol_grid": [float(r) for r in rtol_grid],
        "selection": {
            "skip_substrings": list(selection.skip_substrings),
            "min_ndim": 2,
            "embeddings": selection.embeddings,
            "lm_head": selection.lm_head,
            "include": list(selection.include),
            "exclude": list(selection.exclude),
        },
        "device": str(device),
        "workers": n_workers,
        "threads": total_threads,
        "seconds": time.perf_counter() - t0,
        "execution": log.summary(),
    }
    return RankReport(matrices=matrices, skipped=skipped, provenance=provenance)


@dataclass(frozen=True)
class MatrixUnit:
    """A work unit of ``rank``: consecutive whole matrices (index: the merge order; nbytes: read
    from both sides)."""

    index: int
    pairs: tuple[TensorPair, ...]
    nbytes: int

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.pairs)


def plan_matrix_units(pairs: Sequence[TensorPair], max_bytes: int) -> list[MatrixUnit]:
    """Cut ``pairs`` into units of at most ``max_bytes`` read from both sides (a matrix above the
    bound is a unit of its own)."""
    if max_bytes <= 0:
        raise ConfigError(f"max_unit_bytes must be > 0, got {max_bytes}")
    units: list[MatrixUnit] = []
    run: list[TensorPair] = []
    size = 0
    for pair in [*pairs, None]:
        n = 0 if pair is None else pair.nbytes
        if run and (pair is None or size + n > max_bytes):
            units.append(MatrixUnit(len(units), tuple(run), size))
            run, size = [], 0
        if pair is not None:
            run.append(pair)
            size += n
    return units


@dataclass(frozen=True)
class RankArgs:
    """How each matrix is ranked (plain values: sent to workers)."""

    rule: RankRule
    energy: float
    rtol_grid: tuple[float, ...]
    compare_dtype: str | None
    svd_dtype: str
    device: str
    chunk_elems: int

    def result_settings(self) -> dict:
        """The settings that change the rows (the resume manifest's)."""
        return {
            "rule": self.rule.describe(),
            "energy": self.energy,
            "rtol_grid": [float(r) for r in self.rtol_grid],
            "compare_dtype": self.compare_dtype,
            "svd_dtype": self.svd_dtype,
        }


def rank_worker(
    base_path: str, tuned_path: str, args: RankArgs, names: list[str], threads: int
) -> dict:
    """A rank unit in a worker process (``--cluster``): ranks the matrices ``names`` with
    ``threads`` torch threads; ``{"matrices": [...], "seconds", "host", "kernel"}``."""
    import torch

    t0 = time.perf_counter()
    base_ck, tuned_ck = open_checkpoint(Path(base_path)), open_checkpoint(Path(tuned_path))
    plan = pair_checkpoints(base_ck, tuned_ck, args.compare_dtype, dequantize=True)
    pairs = {p.name: p for p in plan.pairs}
    torch.set_num_threads(threads)
    matrices = []
    with base_ck.reader() as rb, tuned_ck.reader() as rt:
        for name in names:
            delta = _delta(pairs[name], rb, rt, args.device, args.chunk_elems)
            matrices.append(
                _rank_one(
                    pairs[name],
                    delta,
                    args.rule,
                    args.energy,
                    args.rtol_grid,
                    args.svd_dtype,
                    base_ck,
                    tuned_ck,
                )
            )
            del delta
    return {
        "matrices": matrices,
        "seconds": time.perf_counter() - t0,
        "host": socket.gethostname(),
        "kernel": "torch.linalg.svdvals",
    }


def _delta(pair: TensorPair, rb: TensorReader, rt: TensorReader, device: str, chunk_elems: int):
    """ΔW (float32, on ``device``) of a pair, assembled chunk by chunk from raw words (a
    quantized side: its dequantized bfloat16 words)."""
    import torch

    shape = pair.compared_shape
    rows = shape[0]
    cols = math.prod(shape[1:])
    delta = torch.empty((rows, cols), dtype=torch.float32, device=device)
    flat = delta.view(-1)
    dtype = pair.compare_dtype
    assert dtype is not None  # only float pairs (which have a compare dtype) are ranked
    for c in value_chunks(pair, rb, rt, chunk_elems, compare=dtype):
        d = words_to_float32(c.tuned, dtype) - words_to_float32(c.base, dtype)
        flat[c.start : c.stop].copy_(torch.from_numpy(d))
    return delta


def words_to_float32(words: np.ndarray, dtype: str) -> np.ndarray:
    """Raw words of a bf16/fp16/fp32 ``dtype`` -> float32 values (a view for float32)."""
    if dtype == "bfloat16":
        return (words.astype(np.uint32) << np.uint32(16)).view(np.float32)
    if dtype == "float16":
        return words.view(np.float16).astype(np.float32)
    if dtype == "float32":
        return words.view(np.float32)
    raise ConfigError(f"cannot decode {dtype} words")


def _rank_one(
    pair: TensorPair,
    delta,
    rule,
    energy,
    rtol_grid,
    svd_dtype,
    base: Checkpoint,
    tuned: Checkpoint,
) -> dict:
    import torch

    p = parse_param_name(pair.name)
    schemes = {
        "base": tensor_values(base, pair.base, pair.quant_base).scheme,
        "tuned": tensor_values(tuned, pair.tuned, pair.quant_tuned).scheme,
    }
    info: dict[str, Any] = {
        "name": pair.name,
        "layer": p.layer,
        "module": p.module,
        "group": p.group,
        # where the values were dequantized from (the diff's ``quant.scheme``), or None
        "quant": schemes if any(schemes.values()) else None,
    }
    note = pair.note
    if len(pair.compared_shape) > 2:
        note = "; ".join(filter(None, [note, f"{len(pair.compared_shape)}-D: rows × rest"]))
    if not bool(torch.isfinite(delta).all()):
        m, n = delta.shape
        info.update({"shape": [m, n], "rank": None, "max_rank": min(m, n), "rank_pct": None})
        info["note"] = "; ".join(filter(None, [note, "non-finite Δ: no rank"]))
        return info
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        info.update(spectrum_stats(delta, rule, energy, rtol_grid, svd_dtype))
    info["note"] = note
    return info
