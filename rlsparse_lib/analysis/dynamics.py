"""Training dynamics over an ordered checkpoint series θ0 (init), θ1 … θK (paper App. D, Figs. 2, 5–7).

With M_k = changed(θ0 → θk) and S_k = changed(θ_{k−1} → θk) under one mask rule:

* sparsity vs θ0: ``1 − |M_k| / n`` (Fig. 5, 7a), plus every tolerance of the grid;
* consecutive sparsity: ``1 − |S_k| / n`` (Fig. 7b; PULSE's k-step sparsity for checkpoint steps);
* step overlap ``|S_k ∧ S_{k+1}| / |S_k|`` (the authors' notebook);
* ever updated up to k: ``|M_1 ∨ … ∨ M_k| / n``;
* updated then reverted, "outside the final subnetwork": ``|M_k ∧ ¬M_K| / n`` (Fig. 6);
* parameter fate (Fig. 2): never = ``1 − |∪M_k| / n``, cancelled = ``|∪M_k ∧ ¬M_K| / n``,
  final subnetwork = ``|M_K| / n``. "Ever" is seen at checkpoint granularity: a lower bound.

Everything comes from ONE streaming pass per tensor: each chunk of θ0 … θK is read once, the
engine's diff kernel produces M_k and S_k for it (and their full statistics), and the bit algebra
runs on the packed chunk masks. Memory: one chunk of each checkpoint plus 2K packed chunk masks.

Quantized checkpoints of the series (FP8 block scales, compressed-tensors FP8, MXFP4) are read as
their dequantized bfloat16 values, decoded chunk by chunk (whole scale slabs) by the diff's rule
and kernel, so the numbers equal those of bf16 copies decoded whole; GGUF block types as their
float32 dequantized values. ``provenance.dequantized`` names the scheme of every such tensor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rlsparse_lib.diff.cluster import (
    ExecutionLog,
    UnitProgress,
    parse_cluster,
    run_tasks,
    worker_threads,
)
from rlsparse_lib.diff.config import DEFAULT_TOLERANCES, DEFAULT_UNIT_BYTES
from rlsparse_lib.diff.kernels.dequant import quant_step, value_source
from rlsparse_lib.diff.kernels.protocol import ChunkSpec, DiffKernel
from rlsparse_lib.diff.kernels.selection import get_kernel
from rlsparse_lib.diff.resume import ResumeDir, manifest
from rlsparse_lib.diff.stats import DiffStats
from rlsparse_lib.diff.units import MaskSlice, assemble_mask, mask_slice_path
from rlsparse_lib.diff.worker import Task
from rlsparse_lib.errors import ConfigError
from rlsparse_lib.io.checkpoint import Checkpoint, TensorReader, open_checkpoint
from rlsparse_lib.io.chunks import WordSource, stream_chunks
from rlsparse_lib.io.maskfile import MaskWriter, packed_size
from rlsparse_lib.io.naming import parse_param_name
from rlsparse_lib.io.pairing import (
    TensorPair,
    TensorValues,
    logical_tensors,
    pair_checkpoints,
    tensor_values,
)
from rlsparse_lib.masks import bitops
from rlsparse_lib.provenance import build_provenance, load_report_json, save_report_json
from rlsparse_lib.rules import MaskRule, sparsity, sparsity_from_changed, tol_key

SCHEMA = "rlsparse.dynamics/1"
RESUME_SCHEMA = "rlsparse-dynamics-resume"
_COUNTS = ("n_changed", "n_step", "n_union", "n_outside_final", "n_step_both")


@dataclass
class DynamicsReport:
    """Sparsity dynamics of a checkpoint series.

    Attributes:
        labels: one label per checkpoint θ1 … θK.
        steps: training step of each checkpoint (for plots), or None.
        rule: the mask rule defining "changed".
        tolerances: the tolerance grid of the per-checkpoint statistics.
        names, numel: compared tensors (T) and their sizes.
        counts: int64[T, K] arrays: ``n_changed`` |M_k|, ``n_step`` |S_k|, ``n_union`` |M_1∨…∨M_k|,
            ``n_outside_final`` |M_k ∧ ¬M_K|, ``n_step_both`` |S_k ∧ S_{k+1}| (0 for k = K).
        vs_init, vs_prev: merged :class:`DiffStats` of θ0→θk and θ_{k−1}→θk for each k.
        skipped: ``{name, reason}`` for tensors not compared.
        provenance: inputs, rule, dtypes, timing.
    """

    labels: list[str]
    steps: list[float] | None
    rule: MaskRule
    tolerances: tuple[float, ...]
    names: list[str]
    numel: np.ndarray
    counts: dict[str, np.ndarray]
    vs_init: list[DiffStats]
    vs_prev: list[DiffStats]
    skipped: list[dict] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)

    @property
    def n_params(self) -> int:
        return int(self.numel.sum())

    def series(self):
        """One row per checkpoint k = 1 … K.

        Columns: ``k, label, step``, ``n_changed, sparsity`` (vs θ0, mask rule),
        ``sparsity_bitwise`` and ``sparsity_tol_<t>`` for the grid (vs θ0), ``n_step,
        step_sparsity`` (vs θ_{k−1}), ``step_overlap``, ``n_union, union_fraction``,
        ``n_outside_final, outside_final_fraction``.
        """
        import pandas as pd

        n = self.n_params
        tot = {key: arr.sum(axis=0) for key, arr in self.counts.items()}
        rows = []
        for k, label in enumerate(self.labels):
            s = self.vs_init[k]
            row = {
                "k": k + 1,
                "label": label,
                "step": self.steps[k] if self.steps else None,
                "n_changed": int(tot["n_changed"][k]),
                "sparsity": sparsity_from_changed(tot["n_changed"][k], n),
                "sparsity_bitwise": sparsity_from_changed(s.n_changed, n),
            }
            for j, t in enumerate(self.tolerances):
                row[f"sparsity_tol_{tol_key(t)}"] = sparsity(s.n_unchanged_at(j), n)
            n_step = int(tot["n_step"][k])
            row.update(
                {
                    "n_step": n_step,
                    "step_sparsity": sparsity_from_changed(n_step, n),
                    "step_overlap": _frac(tot["n_step_both"][k], n_step)
                    if k + 1 < len(self.labels)
                    else None,
                    "n_union": int(tot["n_union"][k]),
                    "union_fraction": _frac(tot["n_union"][k], n),
                    "n_outside_final": int(tot["n_outside_final"][k]),
                    "outside_final_fraction": _frac(tot["n_outside_final"][k], n),
                }
            )
            rows.append(row)
        return pd.DataFrame(rows)

    def fate(self) -> dict:
        """Fig. 2 split: counts and fractions of never / cancelled / final-subnetwork weights."""
        n = self.n_params
        final = int(self.counts["n_changed"][:, -1].sum())
        union = int(self.counts["n_union"][:, -1].sum())
        counts = {"never": n - union, "cancelled": union - final, "final": final}
        return {
            "n_params": n,
            **{f"n_{k}": v for k, v in counts.items()},
            **{k: _frac(v, n) for k, v in counts.items()},
        }

    def fate_by(self, by: str = "tensor"):
        """Fate fractions per ``tensor``, ``layer``, ``module`` or ``group``."""
        import pandas as pd

        df = pd.DataFrame(
            {
                "name": self.names,
                "numel": self.numel,
                "n_final": self.counts["n_changed"][:, -1],
                "n_union": self.counts["n_union"][:, -1],
            }
        )
        for key in ("group", "module", "layer"):
            df.insert(1, key, [getattr(parse_param_name(n), key) for n in self.names])
        if by != "tensor":
            if by not in ("layer", "module", "group"):
                raise ConfigError(f"cannot group by {by!r} (use tensor, layer, module or group)")
            df = df.groupby(by, dropna=False, sort=True)[["numel", "n_final", "n_union"]].sum()
            df = df.reset_index()
            if by == "layer":
                df["layer"] = df["layer"].astype("Int64")
        num = df["numel"].where(df["numel"] > 0)
        df["never"] = 1 - df["n_union"] / num
        df["cancelled"] = (df["n_union"] - df["n_final"]) / num
        df["final"] = df["n_final"] / num
        return df

    def to_dict(self) -> dict:
        """JSON form (schema ``rlsparse.dynamics/1``; see docs/analytics.md)."""
        series = json.loads(self.series().to_json(orient="records"))
        per_tensor = []
        for t, name in enumerate(self.names):
            d = {"name": name, "numel": int(self.numel[t])}
            d.update({key: [int(v) for v in arr[t]] for key, arr in self.counts.items()})
            per_tensor.append(d)
        return {
            "schema": SCHEMA,
            "n_params": self.n_params,
            "n_checkpoints": len(self.labels),
            "labels": list(self.labels),
            "steps": None if self.steps is None else [float(x) for x in self.steps],
            "rule": {"kind": self.rule.kind, "tol": self.rule.tol},
            "tolerances": [float(t) for t in self.tolerances],
            "checkpoints": series,
            "fate": self.fate(),
            "per_module": json.loads(self.fate_by("module").to_json(orient="records")),
            "per_layer": json.loads(self.fate_by("layer").to_json(orient="records")),
            "tensors": per_tensor,
            "stats": {
                "vs_init": [s.to_dict() for s in self.vs_init],
                "vs_prev": [s.to_dict() for s in self.vs_prev],
            },
            "skipped": self.skipped,
            "provenance": self.provenance,
        }

    def save_json(self, path: str | Path) -> None:
        """Write :meth:`to_dict` atomically (gzip when the name ends in ``.gz``)."""
        save_report_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> DynamicsReport:
        """Rebuild a report from its JSON form (needs ``labels``, ``tensors`` and ``stats``)."""
        if d.get("schema") != SCHEMA or "stats" not in d:
            raise ConfigError(f"not a loadable {SCHEMA} report (schema {d.get('schema')!r})")
        tensors = d["tensors"]
        k = len(d["labels"])
        keys = [key for key in tensors[0] if key not in ("name", "numel")] if tensors else []
        counts = {
            key: np.asarray([t[key] for t in tensors], np.int64).reshape(len(tensors), k)
            for key in keys
        }
        return cls(
            labels=list(d["labels"]),
            steps=None if d.get("steps") is None else [float(x) for x in d["steps"]],
            rule=MaskRule(d["rule"]["kind"], float(d["rule"]["tol"])),
            tolerances=tuple(float(t) for t in d["tolerances"]),
            names=[t["name"] for t in tensors],
            numel=np.asarray([t["numel"] for t in tensors], np.int64),
            counts=counts,
            vs_init=[DiffStats.from_dict(s) for s in d["stats"]["vs_init"]],
            vs_prev=[DiffStats.from_dict(s) for s in d["stats"]["vs_prev"]],
            skipped=list(d.get("skipped", [])),
            provenance=dict(d.get("provenance", {})),
        )

    @classmethod
    def load(cls, path: str | Path) -> DynamicsReport:
        """Read a report saved by :meth:`save_json` (schema checked, the file named)."""
        d = load_report_json(path, SCHEMA)
        if "stats" not in d:
            raise ConfigError(f"{path}: a {SCHEMA} report without its statistics (an old file)")
        return cls.from_dict(d)


def _frac(a, b) -> float | None:
    return float(a) / float(b) if b else None


@dataclass(frozen=True)
class Slab:
    """Elements ``[start, stop)`` of the series' tensor ``t`` (its index in the plan)."""

    t: int
    start: int
    stop: int


@dataclass(frozen=True)
class SeriesUnit:
    """A work unit of a series: consecutive slabs, read from θ0 and every θk.

    Attributes:
        index: the merge order.
        slabs: (tensor, element range) slabs in plan order; ranges start on chunk boundaries.
        names: the slabs' tensor names, each once, in order.
        nbytes: bytes read from all K + 1 checkpoints.
    """

    index: int
    slabs: tuple[Slab, ...]
    names: tuple[str, ...]
    nbytes: int


def plan_series_units(
    pairs: Sequence[TensorPair], cks: Sequence[Checkpoint], chunk_elems: int, max_bytes: int
) -> list[SeriesUnit]:
    """Cut the series' tensors into units of at most ``max_bytes`` read from all checkpoints.

    A tensor above the bound is cut into slabs of whole chunks (at least one chunk each, so a
    single chunk above the bound is a unit of its own; a tensor quantized in some checkpoint: of
    whole scale slabs, :func:`series_chunk`); slabs follow plan order, so concatenating the units'
    slabs walks every tensor's elements once, in order. ``cks``: θ1 … θK.
    """
    if max_bytes <= 0:
        raise ConfigError(f"max_unit_bytes must be > 0, got {max_bytes}")
    units: list[SeriesUnit] = []
    run: list[Slab] = []
    size = 0

    def flush() -> None:
        nonlocal run, size
        if run:
            names = tuple(dict.fromkeys(pairs[s.t].name for s in run))
            units.append(SeriesUnit(len(units), tuple(run), names, size))
        run, size = [], 0

    logical = [logical_tensors(c) for c in cks]
    for t, pair in enumerate(pairs):
        vals = [TensorValues(pair.base, pair.quant_base), *(lg[pair.name] for lg in logical)]
        per_elem = sum(v.itemsize for v in vals)
        chunk = series_chunk(chunk_elems, vals)
        step = max(1, max_bytes // (per_elem * chunk)) * chunk
        for start in range(0, max(pair.numel, 1), step):
            stop = min(pair.numel, start + step)
            n = (stop - start) * per_elem
            if run and size + n > max_bytes:
                flush()
            run.append(Slab(t, start, stop))
            size += n
    flush()
    return units


def series_chunk(chunk_elems: int, values: Sequence[TensorValues]) -> int:
    """Elements per chunk of one series tensor: ``chunk_elems``, or whole scale slabs near it when
    a checkpoint holds the tensor quantized."""
    return quant_step(chunk_elems, *(v.quant for v in values))


class _Offset:
    """A word source shifted by ``offset`` elements (a slab seen as a tensor of its own)."""

    def __init__(self, source: WordSource, offset: int) -> None:
        self.source, self.offset = source, offset

    def words(self, name: str, start: int, stop: int) -> np.ndarray:
        return self.source.words(name, start + self.offset, stop + self.offset)

    def prefetch(self, name: str, start: int, stop: int) -> None:
        self.source.prefetch(name, start + self.offset, stop + self.offset)

    def release(self, name: str, start: int, stop: int) -> None:
        self.source.release(name, start + self.offset, stop + self.offset)


@dataclass(frozen=True)
class SeriesSettings:
    """What a series unit needs besides its slabs (plain values: sent to workers)."""

    rule: MaskRule
    tolerances: tuple[float, ...]
    rel_eta: float
    compare_dtype: str | None
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    chunk_elems: int
    threads: int | None

    def result_settings(self) -> dict:
        """The settings that change the numbers (the resume manifest's)."""
        return {
            "rule": {"kind": self.rule.kind, "tol": float(self.rule.tol)},
            "tolerances": list(self.tolerances),
            "rel_eta": self.rel_eta,
            "compare_dtype": self.compare_dtype,
            "include": list(self.include),
            "exclude": list(self.exclude),
            "chunk_elems": self.chunk_elems,
        }


def run_series_unit(
    pairs: Sequence[TensorPair],
    slabs: Sequence[Slab],
    readers: Sequence[TensorReader],
    values: Sequence[Sequence[TensorValues]],
    settings: SeriesSettings,
    kernel: DiffKernel,
    masks: Mapping[str, MaskWriter | MaskSlice],
    on_bytes: Callable[[int], object] | None = None,
) -> dict:
    """One unit's share of the dynamics: per-tensor counts and the unit's merged statistics.

    ``readers`` are θ0's then θ1 … θK's; ``values[t]`` how tensor ``t`` is read in each of them
    (:func:`series_values`); ``masks`` (``final``/``union``) receive the slabs' packed masks in
    order. Returns ``{"counts": {tensor index: {count key: int64[K]}}, "vs_init": [K
    DiffStats], "vs_prev": [K DiffStats]}`` (statistics merged chunk by chunk from empty).
    """
    k_n = len(readers) - 1
    tols = np.asarray(settings.tolerances, np.float64)
    rule, rel_eta = settings.rule, settings.rel_eta
    counts: dict[int, dict[str, np.ndarray]] = {}
    vs_init = [DiffStats.empty(tols.size) for _ in range(k_n)]
    vs_prev = [DiffStats.empty(tols.size) for _ in range(k_n)]
    for slab in slabs:
        pair = pairs[slab.t]
        assert pair.compare_dtype is not None  # the series holds float pairs only
        row = counts.setdefault(slab.t, {key: np.zeros((1, k_n), np.int64) for key in _COUNTS})
        # θ0, θ1 … θK: words[0] is θ0, words[k + 1] is θ(k+1), all cast to the compare dtype (a
        # quantized checkpoint: its dequantized bfloat16 words, in whole scale slabs)
        vals = values[slab.t]
        stored = [v.dtype for v in vals]
        sources: list[WordSource] = [
            _Offset(value_source(r, v.quant, settings.threads), slab.start)
            for r, v in zip(readers, vals, strict=True)
        ]
        chunks = stream_chunks(
            pair.name,
            slab.stop - slab.start,
            sources,
            series_chunk(settings.chunk_elems, vals),
            stored=stored,
            compare=pair.compare_dtype,
            on_bytes=on_bytes,
        )
        for chunk in chunks:
            masks_init, masks_step = [], []
            w0 = chunk.words[0]
            for k in range(k_n):
                prev, wk = chunk.words[k], chunk.words[k + 1]
                m_init = np.zeros(packed_size(chunk.numel), np.uint8)
                m_step = np.zeros_like(m_init)
                spec0 = ChunkSpec(pair.compare_dtype, stored[0], tols, rel_eta, rule)
                spec1 = ChunkSpec(pair.compare_dtype, stored[k], tols, rel_eta, rule)
                vs_init[k] = vs_init[k].merge(kernel.diff_chunk(w0, wk, spec0, m_init))
                vs_prev[k] = vs_prev[k].merge(kernel.diff_chunk(prev, wk, spec1, m_step))
                masks_init.append(m_init)
                masks_step.append(m_step)
            del w0, prev, wk
            union = _chunk_counts(masks_init, masks_step, row, 0)
            if "final" in masks:
                masks["final"].write(pair.name, masks_init[-1])
            if "union" in masks:
                masks["union"].write(pair.name, union)
    return {
        "counts": {t: {key: arr[0] for key, arr in row.items()} for t, row in counts.items()},
        "vs_init": vs_init,
        "vs_prev": vs_prev,
    }


def _unit_to_json(part: dict) -> dict:
    return {
        "counts": {
            str(t): {key: [int(v) for v in arr] for key, arr in row.items()}
            for t, row in part["counts"].items()
        },
        "vs_init": [s.to_dict() for s in part["vs_init"]],
        "vs_prev": [s.to_dict() for s in part["vs_prev"]],
    }


def _unit_from_json(d: dict) -> dict:
    return {
        "counts": {
            int(t): {key: np.asarray(v, np.int64) for key, v in row.items()}
            for t, row in d["counts"].items()
        },
        "vs_init": [DiffStats.from_dict(s) for s in d["vs_init"]],
        "vs_prev": [DiffStats.from_dict(s) for s in d["vs_prev"]],
    }


_opened: dict[tuple, tuple[list[Checkpoint], list[TensorPair], list[list[TensorValues]]]] = {}


def series_worker(
    paths: list[str],
    settings: SeriesSettings,
    slabs: list[Slab],
    mask_paths: dict[str, str],
) -> dict:
    """A series unit in a worker process (``--cluster``): opens θ0 … θK from their paths (once
    per worker), runs :func:`run_series_unit` and saves its mask slices to ``mask_paths``.

    Returns the unit's result in JSON form, plus ``kernel``, ``seconds`` and ``host``.
    """
    t0 = time.perf_counter()
    key = (tuple(paths), settings.compare_dtype, settings.include, settings.exclude)
    if key not in _opened:
        cks = [open_checkpoint(Path(p)) for p in paths]
        pairs, _ = _plan_series(
            cks[0], cks[1:], settings.compare_dtype, settings.include, settings.exclude
        )
        _opened[key] = (cks, pairs, series_values(cks[0], cks[1:], pairs))
    cks, pairs, values = _opened[key]
    kernel = get_kernel("cpu", settings.threads)
    masks = {kind: MaskSlice() for kind in mask_paths}
    with contextlib.ExitStack() as stack:
        readers = [stack.enter_context(c.reader()) for c in cks]
        part = run_series_unit(pairs, slabs, readers, values, settings, kernel, masks)
    for kind, path in mask_paths.items():
        masks[kind].save(path)
    return _unit_to_json(part) | {
        "kernel": kernel.name,
        "seconds": time.perf_counter() - t0,
        "host": socket.gethostname(),
    }


def sparsity_dynamics(
    init: str | Path | Checkpoint,
    checkpoints: Sequence[str | Path | Checkpoint],
    *,
    labels: Sequence[str] | None = None,
    steps: Sequence[float] | None = None,
    rule: MaskRule | None = None,
    tolerances: tuple[float, ...] = DEFAULT_TOLERANCES,
    rel_eta: float = 1e-3,
    compare_dtype: str | None = None,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    final_mask_out: str | Path | None = None,
    union_mask_out: str | Path | None = None,
    chunk_elems: int = 1 << 22,
    threads: int | None = None,
    progress: bool = True,
    max_unit_bytes: int = DEFAULT_UNIT_BYTES,
    resume: str | Path | None = None,
    cluster: str | None = None,
) -> DynamicsReport:
    """Dynamics of θ1 … θK relative to θ0 and to each predecessor, in one streaming pass.

    The pass is cut into work units of (tensor, element range) slabs read from all K + 1
    checkpoints (:func:`plan_series_units`); unit results are merged in unit order, so every
    executor and a resumed run give the same report bit for bit.

    Args:
        init: θ0; checkpoints: θ1 … θK in training order (K >= 1).
        labels: one per checkpoint (default: their sources); steps: their training steps.
        rule: what counts as changed for masks, union and fate (default bitwise).
        tolerances, rel_eta, compare_dtype, include, exclude: as :class:`DiffConfig`.
        final_mask_out: write M_K (the final subnetwork) as a mask file.
        union_mask_out: write ∪_k M_k (ever updated) as a mask file.
        chunk_elems: elements per chunk (multiple of 8).
        max_unit_bytes: bound on the bytes a work unit reads from all checkpoints.
        resume: a folder keeping each finished unit's result (:mod:`rlsparse_lib.diff.resume`).
        cluster: ``local[:N]`` or ``ray[://HOST:PORT]``: where the units run
            (:mod:`rlsparse_lib.diff.cluster`); None runs them in this process.

    Raises:
        ConfigError: no checkpoints, bad labels/steps, a malformed cluster or a resume folder made
            for another run; PairingError: nothing comparable.
    """
    rule = rule or MaskRule()
    if not checkpoints:
        raise ConfigError("dynamics needs at least one checkpoint after θ0")
    if chunk_elems < 8 or chunk_elems % 8:
        raise ConfigError(f"chunk_elems must be a positive multiple of 8, got {chunk_elems}")
    t0 = time.perf_counter()
    spec = parse_cluster(cluster) if cluster is not None else None
    init_ck = open_checkpoint(init)
    cks = [open_checkpoint(c) for c in checkpoints]
    k_n = len(cks)
    labels = [str(x) for x in (labels or [c.source for c in cks])]
    if len(labels) != k_n:
        raise ConfigError(f"{k_n} checkpoints but {len(labels)} labels")
    if steps is not None and len(steps) != k_n:
        raise ConfigError(f"{k_n} checkpoints but {len(steps)} steps")
    pairs, skipped = _plan_series(init_ck, cks, compare_dtype, include, exclude)
    values = series_values(init_ck, cks, pairs)
    tols = tuple(sorted({float(t) for t in tolerances}))
    settings = SeriesSettings(
        rule, tols, rel_eta, compare_dtype, include, exclude, chunk_elems, threads
    )
    units = plan_series_units(pairs, cks, chunk_elems, max_unit_bytes)
    store = None
    if resume is not None:
        records = [
            {
                "index": u.index,
                "names": list(u.names),
                "slabs": [[s.t, s.start, s.stop] for s in u.slabs],
                "nbytes": u.nbytes,
            }
            for u in units
        ]
        inputs = {"init": init_ck.files} | {
            f"checkpoint {k + 1}": c.files for k, c in enumerate(cks)
        }
        store = ResumeDir.open_manifest(
            resume,
            manifest(RESUME_SCHEMA, inputs, settings.result_settings(), max_unit_bytes, records),
        )
    mask_out = {
        kind: path
        for kind, path in (("final", final_mask_out), ("union", union_mask_out))
        if path is not None
    }
    sliced = bool(mask_out) and (store is not None or spec is not None)
    parts: dict[int, dict] = {}
    if store is not None:
        for index, d in store.load_raw().items():
            if not sliced or all(
                mask_slice_path(store.path, index, kind).is_file() for kind in mask_out
            ):
                parts[index] = _unit_from_json(d)
    todo = [u for u in units if u.index not in parts]
    log = ExecutionLog(units, "in-process" if cluster is None else cluster, set(parts))
    bar = UnitProgress(units, set(parts), "dynamics", progress)
    shapes = {p.name: p.compared_shape for p in pairs}
    sources = {"init": _src(init_ck), "series": [_src(c) for c in cks]}
    slice_dir: Path | None = None
    kernel_name = None
    with contextlib.ExitStack() as stack:
        writers = {}
        for kind, path in mask_out.items():
            doc = {"kind": rule.kind, "tol": rule.tol, "series": kind}
            writers[kind] = stack.enter_context(MaskWriter(path, shapes, doc, sources))
        if sliced:
            if store is not None:
                slice_dir = store.path
            else:
                parent = Path(next(iter(mask_out.values()))).parent
                slice_dir = Path(tempfile.mkdtemp(".units", ".masks-", parent))
                stack.callback(shutil.rmtree, slice_dir, True)
        stack.callback(bar.close)

        def finished(unit: SeriesUnit, part: dict, seconds: float, host: str, tries: int) -> None:
            if store is not None:
                store.save_raw(unit.index, list(unit.names), _unit_to_json(part))
            parts[unit.index] = part
            log.add(unit.index, unit.nbytes, seconds, host, tries)
            bar.unit_done(unit, streamed=spec is None)

        if spec is not None:
            paths = [str(init_ck.path)] + [str(c.path) for c in cks]
            unit_threads = worker_threads(threads, spec)
            settings = dataclasses.replace(settings, threads=unit_threads)
            by_index = {u.index: u for u in units}
            tasks = [
                Task(
                    u.index,
                    series_worker,
                    (
                        paths,
                        settings,
                        list(u.slabs),
                        {
                            kind: str(mask_slice_path(slice_dir, u.index, kind))
                            for kind in mask_out
                            if slice_dir is not None
                        },
                    ),
                    unit_threads,
                )
                for u in todo
            ]

            def task_done(task: Task, out: dict, attempts: int) -> None:
                log.kernels.add(out["kernel"])
                unit = by_index[task.index]
                finished(unit, _unit_from_json(out), out["seconds"], out["host"], attempts)

            run_tasks(spec, tasks, task_done)
        else:
            kernel = get_kernel("cpu", threads)
            kernel_name = kernel.name
            r0 = stack.enter_context(init_ck.reader())
            readers = [r0, *(stack.enter_context(c.reader()) for c in cks)]
            for unit in todo:
                t = time.perf_counter()
                masks: dict[str, MaskWriter | MaskSlice] = (
                    {kind: MaskSlice() for kind in mask_out} if sliced else dict(writers)
                )
                part = run_series_unit(
                    pairs, unit.slabs, readers, values, settings, kernel, masks, bar.update
                )
                if slice_dir is not None:
                    for kind, m in masks.items():
                        assert isinstance(m, MaskSlice)
                        m.save(mask_slice_path(slice_dir, unit.index, kind))
                finished(unit, part, time.perf_counter() - t, log.host, 1)
        if slice_dir is not None:
            for kind, writer in writers.items():
                paths_by_unit = {u.index: mask_slice_path(slice_dir, u.index, kind) for u in units}
                assemble_mask(writer, units, paths_by_unit)
    counts = {key: np.zeros((len(pairs), k_n), np.int64) for key in _COUNTS}
    vs_init = [DiffStats.empty(len(tols)) for _ in cks]
    vs_prev = [DiffStats.empty(len(tols)) for _ in cks]
    for index in sorted(parts):  # unit order, whatever order they finished in
        part = parts[index]
        for t, row in part["counts"].items():
            for key, arr in row.items():
                counts[key][t] += arr
        vs_init = [a.merge(b) for a, b in zip(vs_init, part["vs_init"], strict=True)]
        vs_prev = [a.merge(b) for a, b in zip(vs_prev, part["vs_prev"], strict=True)]
    init_desc, ck_desc = init_ck.describe(), [c.describe() for c in cks]
    prov_settings = {
        "rule": {"kind": rule.kind, "tol": rule.tol},
        "tolerances": [float(t) for t in tols],
        "rel_eta": rel_eta,
        "compare_dtype": compare_dtype,
        "include": list(include),
        "exclude": list(exclude),
    }
    sources = {"init": init_desc, "checkpoints": ck_desc}
    provenance = build_provenance("dynamics", settings=prov_settings, sources=sources) | {
        "init": init_desc,
        "checkpoints": ck_desc,
        "rule": rule.describe(),
        "compare_dtype_policy": compare_dtype or "init stored dtype",
        "kernel": kernel_name or log.kernel("cpu"),
        "chunk_elems": chunk_elems,
        "masks_out": {"final": _str(final_mask_out), "union": _str(union_mask_out)},
        "ever_updated": "observed at checkpoint granularity (a lower bound)",
        # θ0 … θK's scheme of every tensor read as dequantized values (None: stored floats)
        "dequantized": {
            p.name: [v.scheme for v in vals]
            for p, vals in zip(pairs, values, strict=True)
            if any(v.scheme for v in vals)
        },
        "seconds": time.perf_counter() - t0,
        "execution": log.summary(),
    }
    return DynamicsReport(
        labels=labels,
        steps=[float(s) for s in steps] if steps is not None else None,
        rule=rule,
        tolerances=tuple(float(t) for t in tols),
        names=[p.name for p in pairs],
        numel=np.array([p.numel for p in pairs], np.int64),
        counts=counts,
        vs_init=vs_init,
        vs_prev=vs_prev,
        skipped=skipped,
        provenance=provenance,
    )


def _chunk_counts(masks_init, masks_step, counts, t) -> np.ndarray:
    """Bit algebra of one chunk's packed masks; returns the chunk's union mask."""
    final = masks_init[-1]
    not_final = np.bitwise_not(final)
    union = np.zeros_like(final)
    k_n = len(masks_init)
    for k in range(k_n):
        m = masks_init[k]
        np.bitwise_or(union, m, out=union)
        counts["n_changed"][t, k] += bitops.popcount(m)
        counts["n_step"][t, k] += bitops.popcount(masks_step[k])
        counts["n_union"][t, k] += bitops.popcount(union)
        counts["n_outside_final"][t, k] += bitops.and_popcount(m, not_final)
        if k + 1 < k_n:
            counts["n_step_both"][t, k] += bitops.and_popcount(masks_step[k], masks_step[k + 1])
    return union


def _plan_series(
    init: Checkpoint,
    cks: list[Checkpoint],
    compare_dtype: str | None,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
) -> tuple[list[TensorPair], list[dict]]:
    """Float tensors of θ0 ↔ θK that every checkpoint holds with θK's shape (quantized layouts
    as logical tensors; every checkpoint is paired with θ0, so undecodable weights anywhere in
    the series are refused by name)."""
    plan = pair_checkpoints(init, cks[-1], compare_dtype, include, exclude, dequantize=True)
    middle = []  # per θ1 … θ(K-1): (its pairs with θ0, why others are not paired) by name
    for c in cks[:-1]:
        plan_k = pair_checkpoints(init, c, compare_dtype, include, exclude, dequantize=True)
        middle.append(
            ({x.name: x for x in plan_k.pairs}, {x.name: x.reason for x in plan_k.skipped})
        )
    skipped = [{"name": s.name, "reason": s.reason} for s in plan.skipped]
    pairs = []
    for p in plan.pairs:
        why = None if p.kind == "float" else "not a float tensor"
        for k, (c, (paired, reasons)) in enumerate(zip(cks[:-1], middle, strict=True)):
            if why is not None:
                break
            q = paired.get(p.name)
            if q is None:
                reason = reasons.get(p.name, "missing")
                reason = "missing" if reason.startswith("missing") else reason
                why = f"{reason} in checkpoint {k + 1} ({c.source})"
            elif q.tuned.shape != p.tuned.shape:
                why = f"shape {list(q.tuned.shape)} in checkpoint {k + 1} ({c.source})"
            elif q.kind != "float":
                why = "not a float tensor in every checkpoint"
        if why:
            skipped.append({"name": p.name, "reason": why})
        else:
            pairs.append(p)
    if not pairs:
        raise ConfigError(
            f"no float tensor is comparable across the whole series from {init.source}"
        )
    return pairs, skipped


def series_values(
    init: Checkpoint, cks: Sequence[Checkpoint], pairs: Sequence[TensorPair]
) -> list[list[TensorValues]]:
    """Per series tensor, how θ0, θ1 … θK hold it (:class:`TensorValues`: stored floats, or a
    quantized layout read as its dequantized bfloat16 values)."""
    logical = [logical_tensors(c) for c in cks]
    return [
        [tensor_values(init, p.base, p.quant_base), *(lg[p.name] for lg in logical)] for p in pairs
    ]


def _src(ck: Checkpoint) -> dict:
    return {"source": ck.source, "fingerprint": ck.fingerprint(), "revision": ck.revision}


def _str(p: str | Path | None) -> str | None:
    return None if p is None else str(p)
