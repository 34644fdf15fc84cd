"""Work units: the plan of a diff cut into independently runnable, byte-bounded pieces, and the
merge of their results into a report (:func:`merge_units`, :func:`build_report`).

A unit is a run of consecutive tensor pairs of one base shard (:meth:`PairPlan.shard_groups`;
plan order is base file, then base offset, so a base shard is read front to back once whatever
the tuned side's sharding), cut at tensor boundaries so that the bytes read from both sides stay
within ``max_bytes``; a tensor is never split, so a tensor larger than the bound is a unit of its
own. Units are numbered in a fixed order (base-shard order, then tensor order within the shard),
which is plan order.

Any executor (the in-process CPU and GPU executors today, a process pool or Ray tomorrow) runs a
unit into a partial result ``{tensor name: TensorResult}`` (a few MB at most); :func:`merge_units`
merges the partials **in unit order**, whatever order they completed in. Since no tensor spans two
units, every tensor's result is computed within one unit, and the report is assembled in plan
order, so the report is the same bit for bit (counts, float sums, histograms) however the plan is
cut into units and in whatever order they finish.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from rlsparse_lib.atomic import atomic_path
from rlsparse_lib.diff.config import DEFAULT_UNIT_BYTES, DiffConfig
from rlsparse_lib.diff.report import DiffReport, TensorResult
from rlsparse_lib.errors import ConfigError
from rlsparse_lib.io.maskfile import MaskWriter
from rlsparse_lib.io.pairing import PairPlan, TensorPair
from rlsparse_lib.provenance import build_provenance, versions

__all__ = [
    "DEFAULT_UNIT_BYTES",
    "MaskSlice",
    "MaskUnit",
    "Unit",
    "WorkUnit",
    "assemble_mask",
    "mask_slice_path",
    "merge_units",
    "pair_nbytes",
    "plan_mask_units",
    "plan_units",
]


def pair_nbytes(pair: TensorPair) -> int:
    """Bytes a pair reads from both sides (:attr:`TensorPair.nbytes`; the same measure as
    :attr:`PairPlan.nbytes` and the progress bar)."""
    return pair.nbytes


@dataclass(frozen=True)
class WorkUnit:
    """A unit of work: consecutive tensor pairs of one base shard.

    Attributes:
        index: position in :func:`plan_units`' order (the merge order).
        base_file: the base shard all of the unit's tensors are read from.
        tuned_files: the tuned shards they are read from, in first-read order (one when both
            sides are sharded alike).
        pairs: the tensor pairs, in plan order.
        nbytes: bytes read from both sides (sum of :func:`pair_nbytes`).
    """

    index: int
    base_file: Path
    tuned_files: tuple[Path, ...]
    pairs: tuple[TensorPair, ...]
    nbytes: int

    @property
    def names(self) -> tuple[str, ...]:
        """The unit's tensor names, in plan order."""
        return tuple(p.name for p in self.pairs)


def plan_units(plan: PairPlan, max_bytes: int = DEFAULT_UNIT_BYTES) -> list[WorkUnit]:
    """Cut ``plan`` into work units of at most ``max_bytes`` read from both sides.

    Units never mix base shards and never split a tensor (a single tensor above ``max_bytes`` is a
    unit of its own). Every planned pair is in exactly one unit, and concatenating the units' pairs
    gives the plan's pairs in plan order.

    Raises:
        ValueError: when ``max_bytes`` is not positive.
    """
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be > 0, got {max_bytes}")
    units: list[WorkUnit] = []

    def flush(run: list[TensorPair], nbytes: int) -> None:
        if run:
            tuned = tuple(dict.fromkeys(p.tuned.file for p in run))
            units.append(WorkUnit(len(units), run[0].base.file, tuned, tuple(run), nbytes))

    for group in plan.shard_groups():
        run: list[TensorPair] = []
        size = 0
        for pair in group:
            n = pair_nbytes(pair)
            if run and size + n > max_bytes:
                flush(run, size)
                run, size = [], 0
            run.append(pair)
            size += n
        flush(run, size)
    return units


@dataclass(frozen=True)
class MaskUnit:
    """A work unit of a pass over mask files (``overlap``, mask algebra, random masks):
    consecutive whole tensors (never split, so every per-tensor count, binade expectation and
    output tensor is computed within one unit).

    Attributes:
        index: the merge order; first: the first tensor's index; names: the tensors, in order;
        nbytes: bytes read (packed masks, and θ0 for binade strata or random masks).
    """

    index: int
    first: int
    names: tuple[str, ...]
    nbytes: int


def plan_mask_units(names: Sequence[str], nbytes: Sequence[int], max_bytes: int) -> list[MaskUnit]:
    """Cut the tensors ``names`` (``nbytes`` read for each) into units of at most ``max_bytes``
    (a tensor above the bound is a unit of its own)."""
    if max_bytes <= 0:
        raise ConfigError(f"max_unit_bytes must be > 0, got {max_bytes}")
    units: list[MaskUnit] = []
    first, size = 0, 0
    for t in range(len(names) + 1):
        if t == len(names) or (t > first and size + nbytes[t] > max_bytes):
            if t > first:
                units.append(MaskUnit(len(units), first, tuple(names[first:t]), size))
            first, size = t, 0
        if t < len(names):
            size += nbytes[t]
    return units


def mask_slice_path(folder: str | Path, index: int, kind: str = "mask") -> Path:
    """Where unit ``index`` keeps its mask slice in ``folder`` (``kind``: which mask, for
    commands that write several)."""
    return Path(folder) / f"unit-{index:06d}.{kind}.safetensors"


class Unit(Protocol):
    """What executors, progress and mask assembly need of any command's work unit."""

    @property
    def index(self) -> int: ...

    @property
    def names(self) -> tuple[str, ...]: ...

    @property
    def nbytes(self) -> int: ...


class MaskSlice:
    """The packed changed masks of one unit's float tensors, collected in memory (the
    ``MaskWriter.write`` interface the executors write chunks to) and saved as one file, so that a
    unit run elsewhere, or in an earlier run, adds its part to the mask file
    (:func:`assemble_mask`). A unit's slice is at most 1/16 of the bytes it reads."""

    def __init__(self) -> None:
        self.parts: dict[str, list[np.ndarray]] = {}

    def write(self, name: str, packed: np.ndarray) -> None:
        """Append packed bytes (uint8) of tensor ``name`` (the next byte-aligned chunk)."""
        self.parts.setdefault(name, []).append(np.ascontiguousarray(packed, np.uint8))

    def save(self, path: str | Path) -> None:
        """Write the slice as a safetensors file of uint8 tensors, atomically."""
        from safetensors.numpy import save

        data = save({name: np.concatenate(chunks) for name, chunks in self.parts.items()})
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)


def assemble_mask(writer: MaskWriter, units: Iterable[Unit], slices: Mapping[int, Path]) -> None:
    """Write the units' mask slices (files saved by :meth:`MaskSlice.save`, by unit index) into
    ``writer`` in unit order: the same bytes as a run that streamed its chunks into ``writer``."""
    from safetensors.numpy import load_file

    for unit in units:
        packed = load_file(str(slices[unit.index]))
        for name in unit.names:
            if name in packed and packed[name].size:
                writer.write(name, packed[name])


def merge_units(
    plan: PairPlan,
    config: DiffConfig,
    partials: Mapping[int, Mapping[str, TensorResult]],
    kernel_name: str,
    seconds: float | None = None,
    mask_out: str | Path | None = None,
    threads: int | None = None,
    units: list[WorkUnit] | None = None,
) -> DiffReport:
    """Merge unit results ``{unit index: {tensor name: TensorResult}}`` into a report.

    The partials are merged in unit-index order, independent of the mapping's (completion) order.
    When ``units`` is given, every unit must have a result, and each result must hold exactly that
    unit's tensors. Other arguments as for :func:`build_report`.

    Raises:
        ValueError: for a missing or unknown unit, or a result that does not match its unit.
    """
    if units is not None:
        expected = {u.index for u in units}
        missing = sorted(expected - partials.keys())
        extra = sorted(partials.keys() - expected)
        if missing or extra:
            raise ValueError(
                f"unit results: missing units {missing[:5]}, unknown units {extra[:5]}"
            )
        for u in units:
            if set(partials[u.index]) != set(u.names):
                raise ValueError(f"unit {u.index}: result tensors do not match the unit's tensors")
    ordered = [dict(partials[i]) for i in sorted(partials)]
    return build_report(plan, config, ordered, kernel_name, seconds, mask_out, threads)


def build_report(
    plan: PairPlan,
    config: DiffConfig,
    partials: Iterable[dict[str, TensorResult]],
    kernel_name: str,
    seconds: float | None = None,
    mask_out: str | Path | None = None,
    threads: int | None = None,
) -> DiffReport:
    """Merge partial results (any split of the plan's work) into a report, in plan order.

    ``kernel_name``, ``seconds``, ``mask_out`` and ``threads`` (the kernel's) go to provenance.
    """
    merged: dict[str, TensorResult] = {}
    for part in partials:
        for name, res in part.items():
            merged[name] = merged[name].merge(res) if name in merged else res
    missing = [p.name for p in plan.pairs if p.name not in merged]
    if missing:
        raise ValueError(f"partial results lack {len(missing)} planned tensors, e.g. {missing[0]}")
    results = [merged[p.name] for p in plan.pairs]
    return DiffReport(
        tolerances=config.tolerances,
        rel_eta=config.rel_eta,
        tensors=[r for r in results if r.kind == "float"],
        buffers=[r for r in results if r.kind == "bitwise"],
        skipped=[
            {
                "name": s.name,
                "reason": s.reason,
                "numel_base": s.numel_base,
                "numel_tuned": s.numel_tuned,
            }
            for s in plan.skipped
        ],
        tied=list(plan.tied),
        provenance=_provenance(plan, config, kernel_name, seconds, mask_out, threads),
    )


def _versions() -> dict:
    """Library versions (the shared :func:`rlsparse_lib.provenance.versions`)."""
    return versions()


def _provenance(
    plan: PairPlan,
    config: DiffConfig,
    kernel: str,
    seconds: float | None,
    mask_out: str | Path | None,
    threads: int | None,
) -> dict:
    stored: dict[str, int] = {}
    compare: dict[str, int] = {}
    for p in plan.pairs:
        key = f"{p.base.dtype}->{p.tuned.dtype}"
        stored[key] = stored.get(key, 0) + 1
        ck = p.compare_dtype or f"bitwise {p.base.dtype}"
        compare[ck] = compare.get(ck, 0) + 1
    inputs = {"base": plan.base.describe(), "tuned": plan.tuned.describe()}
    settings = {
        "tolerances": [float(t) for t in config.tolerances],
        "rel_eta": config.rel_eta,
        "compare_dtype": config.compare_dtype,
        "include": list(config.include),
        "exclude": list(config.exclude),
        "mask_rule": {"kind": config.mask_rule.kind, "tol": config.mask_rule.tol},
    }
    fields = {
        "inputs": inputs,
        "stored_dtypes": stored,
        "compare_dtypes": compare,
        "compare_dtype_policy": config.compare_dtype or "base stored dtype",
        "rules": {
            "bitwise": "bit patterns differ in the compare dtype (NaN==NaN if same bits; +0 != -0)",
            "tolerance": "|Δ| <= tol, Δ = θ1 - θ0 in float32 from compare-dtype values, compared "
            "in float64; identical bits are unchanged under every rule",
            "tolerances": [float(t) for t in config.tolerances],
            "relative": f"|Δ| <= η·max(|θ0|,|θ1|), η = {config.rel_eta!r}",
            "ulp_unit": "ULP of θ0 in the base's stored dtype",
        },
        "include": list(config.include),
        "exclude": list(config.exclude),
        "n_skipped": len(plan.skipped),
        "partial": [{"name": p.name, "note": p.note} for p in plan.pairs if p.partial],
        "casts": [{"name": p.name, "note": p.note} for p in plan.pairs if "cast" in p.note],
        "mask_out": None
        if mask_out is None
        else {"path": str(mask_out), "rule": config.mask_rule.describe()},
        "kernel": kernel,
        "chunk_elems": config.chunk_elems,
        "threads": threads or config.threads,
        "seconds": seconds,
        "warnings": plan.base.warnings + plan.tuned.warnings,
    }
    return build_provenance("diff", settings=settings, sources=inputs, **fields)
