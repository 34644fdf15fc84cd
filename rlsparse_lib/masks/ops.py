"""Subnetwork masks: build from a diff, streaming set algebra, density, random masks of matched density.

Masks are the bit-packed files of :mod:`rlsparse_lib.io.maskfile` (one uint8 tensor per parameter,
1 bit per weight, JSON metadata). Every operation here streams tensor by tensor in byte ranges of
the memory-mapped inputs and releases the pages after each range, so memory stays bounded whatever
the model size; outputs appear only when complete (temporary file, then rename).

Derived masks record how they were made in their metadata ``rule``: ``{"kind": "and"|"or"|"andnot"
|"xor"|"not", "operands": [rule, ...]}`` for algebra and ``{"kind": "random", "stratify", "seed",
"sampler"}`` for random masks; ``sources`` describes the input masks (and the base checkpoint).

Algebra and random masks run on work units of whole tensors
(:func:`~rlsparse_lib.diff.units.plan_mask_units`) with the executors and resume folders of every
other command (``cluster``, ``resume``: :mod:`rlsparse_lib.diff.cluster`,
:mod:`rlsparse_lib.diff.resume`): a unit run elsewhere, or in an earlier run, leaves its output
tensors in a slice file (:class:`~rlsparse_lib.diff.units.MaskSlice`) and the mask file is assembled
from the slices in unit order, so it is the same bytes on every executor.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rlsparse_lib.diff.cluster import UnitProgress, parse_cluster, run_tasks
from rlsparse_lib.diff.config import DEFAULT_TOLERANCES, DEFAULT_UNIT_BYTES, DiffConfig
from rlsparse_lib.diff.engine import diff_checkpoints
from rlsparse_lib.diff.kernels.dequant import quant_step, value_source
from rlsparse_lib.diff.report import DiffReport
from rlsparse_lib.diff.resume import ResumeDir, manifest
from rlsparse_lib.diff.units import (
    MaskSlice,
    MaskUnit,
    assemble_mask,
    mask_slice_path,
    plan_mask_units,
)
from rlsparse_lib.diff.worker import Task
from rlsparse_lib.errors import CheckpointError, ConfigError, RlsparseError
from rlsparse_lib.io.checkpoint import Checkpoint, TensorReader, open_checkpoint
from rlsparse_lib.io.chunks import ChunkStream, stream_chunks
from rlsparse_lib.io.maskfile import MaskFile, MaskWriter, packed_size
from rlsparse_lib.io.naming import parse_param_name
from rlsparse_lib.io.pairing import TensorValues, logical_tensors
from rlsparse_lib.masks import bitops
from rlsparse_lib.rules import MaskRule

MaskLike = str | Path | MaskFile
CheckpointLike = str | Path | Checkpoint

#: bytes of packed mask per read (per input); 16 MiB = 128 Mi weights
DEFAULT_CHUNK_BYTES = 1 << 24
#: weights per step when θ0 words are read alongside (binade strata, random sampling)
DEFAULT_CHUNK_ELEMS = 1 << 22
OPS = ("and", "or", "andnot", "xor", "not")
STRATIFY = ("global", "tensor", "binade")
GROUP_BY = ("tensor", "layer", "module", "group")
STRATA_DTYPES = ("bfloat16", "float16", "float32")
ALGEBRA_SCHEMA = "rlsparse-mask-algebra-resume"
RANDOM_SCHEMA = "rlsparse-mask-random-resume"


class MaskError(RlsparseError):
    """Masks that cannot be combined or compared (different tensors or shapes)."""


# ---- opening, layout, ranges ----------------------------------------------------------------
@contextlib.contextmanager
def opened(mask: MaskLike) -> Iterator[MaskFile]:
    """Yield an open :class:`MaskFile`; close it afterwards only if it was opened here."""
    if isinstance(mask, MaskFile):
        yield mask
        return
    with MaskFile.open(mask) as m:
        yield m


@contextlib.contextmanager
def opened_all(masks: Sequence[MaskLike]) -> Iterator[list[MaskFile]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(opened(m)) for m in masks]


def check_same_layout(masks: Sequence[MaskFile]) -> None:
    """Raise :class:`MaskError` unless all masks hold the same tensor names with the same shapes."""
    first = masks[0]
    for other in masks[1:]:
        missing = [n for n in first.names if n not in other.shapes]
        extra = [n for n in other.names if n not in first.shapes]
        if missing or extra:
            name, side = (missing[0], other.path) if missing else (extra[0], first.path)
            raise MaskError(
                f"{first.path} and {other.path} hold different tensors "
                f"({len(missing)} missing, {len(extra)} extra): '{name}' is not in {side}"
            )
        for name in first.names:
            if tuple(first.shapes[name]) != tuple(other.shapes[name]):
                raise MaskError(
                    f"tensor '{name}': shape {list(first.shapes[name])} in {first.path} but "
                    f"{list(other.shapes[name])} in {other.path}"
                )


def numel_of(mask: MaskFile, name: str) -> int:
    return math.prod(mask.shapes[name])


def describe_mask(mask: MaskFile) -> dict:
    """JSON-able provenance of a mask file: path, rule, sources, counts."""
    meta = mask.meta
    return {
        "path": str(mask.path),
        "rule": meta.get("rule"),
        "sources": meta.get("sources"),
        "n_tensors": len(mask.names),
        "n_total": meta.get("n_total"),
        "n_set_total": meta.get("n_set_total"),
        "density": meta.get("density"),
    }


def n_set_of(mask: MaskFile, name: str) -> int:
    """Set bits of tensor ``name`` (from the metadata; counted when absent)."""
    counts = mask.meta.get("n_set")
    if counts is not None and name in counts:
        return int(counts[name])
    return bitops.popcount(mask.packed(name))


# ---- building -------------------------------------------------------------------------------
def build_mask(
    base: CheckpointLike,
    tuned: CheckpointLike,
    out: str | Path,
    *,
    rule: MaskRule | None = None,
    compare_dtype: str | None = None,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    tolerances: tuple[float, ...] = DEFAULT_TOLERANCES,
    progress: bool = True,
    max_unit_bytes: int = DEFAULT_UNIT_BYTES,
    resume: str | Path | None = None,
    cluster: str | None = None,
) -> DiffReport:
    """Write the changed mask of ``base`` → ``tuned`` to ``out`` (one streaming diff pass).

    Args:
        rule: which weights get a 1 bit: ``bitwise`` (default; bits differ in the compare dtype),
            ``abs`` (|Δ| > tol; the paper's rule is tol = 1e-5) or ``rel``.
        compare_dtype, include, exclude, tolerances: as :class:`~rlsparse_lib.diff.engine.DiffConfig`.
        max_unit_bytes, resume, cluster: work units, their resume folder and executor, as for
            :func:`~rlsparse_lib.diff.engine.diff_checkpoints` (the mask file is the same bytes).

    Returns:
        The diff report of the same pass (sparsity at every rule, provenance).
    """
    config = DiffConfig(
        tolerances=tolerances,
        compare_dtype=compare_dtype,
        include=include,
        exclude=exclude,
        mask_rule=rule or MaskRule(),
        max_unit_bytes=max_unit_bytes,
    )
    return diff_checkpoints(
        base, tuned, config, mask_out=out, progress=progress, resume=resume, cluster=cluster
    )


# ---- set algebra ----------------------------------------------------------------------------
def combine_masks(
    op: str,
    masks: Sequence[MaskLike],
    out: str | Path,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: bool = True,
    max_unit_bytes: int = DEFAULT_UNIT_BYTES,
    resume: str | Path | None = None,
    cluster: str | None = None,
) -> Path:
    """Streaming set algebra over masks of the same layout.

    Args:
        op: ``and`` (∩ of all), ``or`` (∪ of all), ``andnot`` (first ∖ ∪ of the others),
            ``xor`` (odd number of members), ``not`` (complement of a single mask).
        masks: input masks (paths or open :class:`MaskFile`).
        out: output mask file.
        max_unit_bytes: bound on the packed bytes a work unit reads (all inputs).
        resume: a folder keeping each finished unit's output tensors
            (:mod:`rlsparse_lib.diff.resume`); cluster: ``local[:N]`` or ``ray[://HOST:PORT]``,
            where the units run (None: in this process). The file is the same bytes either way.

    Raises:
        MaskError: different tensors or shapes; ConfigError: bad ``op`` or operand count, a
        malformed cluster, or a resume folder made for another run.
    """
    if op not in OPS:
        raise ConfigError(f"unknown mask operation {op!r} (use one of {', '.join(OPS)})")
    want = "exactly one" if op == "not" else "at least two"
    if (op == "not") != (len(masks) == 1) or not masks:
        raise ConfigError(f"mask operation '{op}' needs {want} masks, got {len(masks)}")
    with opened_all(masks) as files:
        check_same_layout(files)
        first = files[0]
        rule = {"kind": op, "operands": [m.meta.get("rule") for m in files]}
        sources = {"operands": [describe_mask(m) for m in files]}
        names = list(first.names)
        per_tensor = [packed_size(numel_of(first, n)) * len(files) for n in names]
        units = plan_mask_units(names, per_tensor, max_unit_bytes)
        paths = [str(m.path) for m in files]

        def here(unit: MaskUnit, sink: MaskWriter | MaskSlice, on_bytes: OnBytes) -> None:
            _combine_tensors(op, files, unit.names, chunk_bytes, sink, on_bytes)

        def task(unit: MaskUnit, slice_path: str) -> Task:
            return Task(unit.index, combine_unit, (op, paths, unit.names, chunk_bytes, slice_path))

        inputs = {f"mask {i + 1}": [Path(p)] for i, p in enumerate(paths)}
        with MaskWriter(out, first.shapes, rule, sources) as writer:
            _run_mask_units(
                f"mask {op}",
                units,
                writer,
                here,
                task,
                manifest(ALGEBRA_SCHEMA, inputs, {"op": op}, max_unit_bytes, _records(units)),
                resume,
                cluster,
                progress,
            )
    return Path(out)


OnBytes = Callable[[int], object] | None


def _combine_tensors(
    op: str,
    files: Sequence[MaskFile],
    names: Sequence[str],
    chunk_bytes: int,
    sink: MaskWriter | MaskSlice,
    on_bytes: OnBytes,
) -> None:
    """``op`` over tensors ``names`` of the open masks ``files``, written to ``sink`` chunk by
    chunk (``chunk_bytes`` packed bytes of every input per step)."""
    bits = [m.bits() for m in files]
    for name in names:
        numel = numel_of(files[0], name)
        for chunk in stream_chunks(name, numel, bits, chunk_bytes * 8, on_bytes=on_bytes):
            res = _apply(op, list(chunk.words))
            if op == "not" and chunk.stop == numel and numel % 8:  # clear the padding
                res[-1] &= np.uint8((1 << (numel % 8)) - 1)
            sink.write(name, res)


def combine_unit(
    op: str, mask_paths: list[str], names: tuple[str, ...], chunk_bytes: int, slice_path: str
) -> dict[str, Any]:
    """A mask-algebra unit in a worker process (``--cluster``): opens the masks from their paths
    and saves the unit's output tensors as a slice file at ``slice_path``.

    Returns:
        ``{"seconds", "host"}``.
    """
    t0 = time.perf_counter()
    sink = MaskSlice()
    with opened_all(mask_paths) as files:
        _combine_tensors(op, files, names, chunk_bytes, sink, None)
    sink.save(slice_path)
    return {"seconds": time.perf_counter() - t0, "host": socket.gethostname()}


def _records(units: Sequence[MaskUnit]) -> list[dict[str, Any]]:
    return [{"index": u.index, "names": list(u.names), "nbytes": u.nbytes} for u in units]


def _run_mask_units(
    desc: str,
    units: Sequence[MaskUnit],
    writer: MaskWriter,
    here: Callable[[MaskUnit, MaskWriter | MaskSlice, OnBytes], None],
    task: Callable[[MaskUnit, str], Task],
    run_manifest: dict[str, Any],
    resume: str | Path | None,
    cluster: str | None,
    progress: bool,
) -> None:
    """Run a mask-writing command's ``units`` and write their output into ``writer`` in unit order.

    In this process without a resume folder, ``here(unit, writer, on_bytes)`` writes straight into
    ``writer``. Otherwise every unit's output is a slice file: in the resume folder (which keeps
    ``run_manifest`` and one record per finished unit; finished units are skipped) or a temporary
    folder next to the output, written by ``here`` into a :class:`MaskSlice`, or on ``cluster`` by
    the worker of ``task(unit, slice_path)``; the slices are then assembled in unit order.
    """
    spec = parse_cluster(cluster) if cluster is not None else None
    store = ResumeDir.open_manifest(resume, run_manifest) if resume is not None else None
    done = set(store.load_raw(masks=True)) if store is not None else set()
    slice_dir: Path | None = None
    if store is not None:
        slice_dir = store.path
    elif spec is not None:
        slice_dir = Path(tempfile.mkdtemp(".units", ".mask-", writer.path.parent))
    todo = [u for u in units if u.index not in done]
    bar = UnitProgress(units, done, desc, progress)

    def finished(unit: MaskUnit) -> None:
        if store is not None:
            store.save_raw(unit.index, list(unit.names), {})
        bar.unit_done(unit, streamed=spec is None)

    try:
        if spec is not None:
            assert slice_dir is not None
            by_index = {u.index: u for u in todo}
            tasks = [task(u, str(mask_slice_path(slice_dir, u.index))) for u in todo]
            run_tasks(spec, tasks, lambda t, out, attempts: finished(by_index[t.index]))
        else:
            for unit in todo:
                if slice_dir is None:
                    here(unit, writer, bar.update)
                else:
                    sink = MaskSlice()
                    here(unit, sink, bar.update)
                    sink.save(mask_slice_path(slice_dir, unit.index))
                finished(unit)
        if slice_dir is not None:
            assemble_mask(
                writer, units, {u.index: mask_slice_path(slice_dir, u.index) for u in units}
            )
    finally:
        bar.close()
        if slice_dir is not None and store is None:
            shutil.rmtree(slice_dir, ignore_errors=True)


def _apply(op: str, parts: list[np.ndarray]) -> np.ndarray:
    if op == "not":
        return np.bitwise_not(parts[0])
    if op == "andnot":
        rest = parts[1].copy()
        for p in parts[2:]:
            np.bitwise_or(rest, p, out=rest)
        return np.bitwise_and(parts[0], np.bitwise_not(rest, out=rest), out=rest)
    fn = {"and": np.bitwise_and, "or": np.bitwise_or, "xor": np.bitwise_xor}[op]
    res = parts[0].copy()
    for p in parts[1:]:
        fn(res, p, out=res)
    return res


# ---- density --------------------------------------------------------------------------------
def mask_density(mask: MaskLike, by: str = "tensor"):
    """Density of a mask per tensor, layer, module or group.

    Returns:
        DataFrame with the grouping columns (``name, layer, module, group`` for ``tensor``),
        ``n_tensors``, ``numel``, ``n_set`` and ``density = n_set / numel`` (count-weighted).
    """
    import pandas as pd

    if by not in GROUP_BY:
        raise ConfigError(f"cannot group by {by!r} (use one of {', '.join(GROUP_BY)})")
    with opened(mask) as m:
        rows = []
        for name in m.names:
            p = parse_param_name(name)
            rows.append(
                {
                    "name": name,
                    "layer": p.layer,
                    "module": p.module,
                    "group": p.group,
                    "n_tensors": 1,
                    "numel": numel_of(m, name),
                    "n_set": n_set_of(m, name),
                }
            )
    df = pd.DataFrame(
        rows, columns=["name", "layer", "module", "group", "n_tensors", "numel", "n_set"]
    )
    if by != "tensor":
        df = (
            df.groupby(by, dropna=False, sort=True)[["n_tensors", "numel", "n_set"]]
            .sum()
            .reset_index()
        )
        if by == "layer":
            df["layer"] = df["layer"].astype("Int64")
    df["density"] = df["n_set"] / df["numel"].where(df["numel"] > 0)
    return df


def mask_info(mask: MaskLike) -> dict:
    """Summary of a mask file: path, version, rule, sources, tensors, totals, density."""
    with opened(mask) as m:
        info = describe_mask(m)
        info["version"] = m.meta.get("version")
        return info


# ---- random masks of matched density --------------------------------------------------------
def random_mask_like(
    mask: MaskLike,
    out: str | Path,
    *,
    seed: int,
    stratify: str = "global",
    base: CheckpointLike | None = None,
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
    progress: bool = True,
    max_unit_bytes: int = DEFAULT_UNIT_BYTES,
    resume: str | Path | None = None,
    cluster: str | None = None,
) -> Path:
    """Write a random mask with the tensors, shapes and density of ``mask``.

    Positions are drawn by selection sampling (each weight taken with probability
    k_left / n_left) from ``numpy.random.default_rng(seed)``, one uniform per weight in tensor
    order, so counts match exactly and every subset with those counts is equally likely; the
    result depends only on ``seed`` and the inputs.

    Work units: with ``tensor`` and ``binade`` strata a unit of whole tensors starts the seed's
    stream at its first tensor's offset (the weights before it: ``PCG64.advance``), so every unit
    split and executor writes the same bytes as one pass. With ``global`` strata each tensor's
    count depends on the draws of every earlier tensor, so the whole mask is one unit.

    Args:
        mask: the mask to match (path or :class:`MaskFile`).
        out: output mask file.
        seed: generator seed.
        stratify: ``global`` — the same total count, uniform over all weights (the paper's
            baseline); ``tensor`` — the same count in every tensor; ``binade`` — the same count in
            every tensor × |θ0| binade (exponent of θ0 in ``base``'s stored dtype; a quantized
            θ0 (FP8, MXFP4): of its dequantized bfloat16 values, :func:`base_values`).
        base: the checkpoint θ0 (path or :class:`Checkpoint`), required for ``binade``.
        chunk_elems: weights per step (a multiple of 8).
        max_unit_bytes, resume, cluster: work units (bytes written, and θ0 and mask bytes read for
            ``binade``), their resume folder and executor, as for :func:`combine_masks`.

    Returns:
        ``Path(out)``.

    Raises:
        ConfigError: unknown ``stratify``, or ``binade`` without ``base``; CheckpointError: a
        tensor of the mask is missing from ``base`` or has an incompatible shape or dtype.
    """
    if stratify not in STRATIFY:
        raise ConfigError(f"unknown stratification {stratify!r} (use one of {', '.join(STRATIFY)})")
    if stratify == "binade" and base is None:
        raise ConfigError("stratify='binade' needs the base checkpoint θ0 (base=...)")
    if chunk_elems < 8 or chunk_elems % 8:
        raise ConfigError(f"chunk_elems must be a positive multiple of 8, got {chunk_elems}")
    with contextlib.ExitStack() as stack:
        m = stack.enter_context(opened(mask))
        ck = reader = values = None
        if stratify == "binade":
            assert base is not None  # checked above
            ck = open_checkpoint(base)
            reader = stack.enter_context(ck.reader())
            values = base_values(ck, m.shapes)
        rule = {
            "kind": "random",
            "stratify": stratify,
            "seed": int(seed),
            "sampler": "selection sampling, numpy default_rng (PCG64) float64 uniforms",
        }
        sources = {"like": describe_mask(m)}
        if ck is not None:
            sources["base"] = {"source": ck.source, "fingerprint": ck.fingerprint()}
        names = list(m.names)
        numel = [numel_of(m, n) for n in names]
        offsets = np.concatenate([[0], np.cumsum(numel, dtype=np.int64)]).tolist()
        per_tensor = [packed_size(n) for n in numel]
        if values is not None:  # θ0 read twice (strata, then sampling) and the mask once
            per_tensor = [
                2 * packed_size(n) + 2 * n * values[name].itemsize
                for name, n in zip(names, numel, strict=True)
            ]
        if stratify == "global":
            units = [MaskUnit(0, 0, tuple(names), sum(per_tensor))]
        else:
            units = plan_mask_units(names, per_tensor, max_unit_bytes)
        total_k = sum(n_set_of(m, n) for n in names)
        mask_path = str(m.path)
        base_path = None if ck is None else str(ck.path)

        def here(unit: MaskUnit, sink: MaskWriter | MaskSlice, on_bytes: OnBytes) -> None:
            rng = _stream_at(seed, offsets[unit.first])
            rem = np.array([total_k, offsets[-1]], np.int64)
            _random_tensors(
                m, values, reader, unit.names, stratify, rng, rem, chunk_elems, sink, on_bytes
            )

        def task(unit: MaskUnit, slice_path: str) -> Task:
            args = (mask_path, base_path, unit.names, stratify, seed, offsets[unit.first])
            return Task(unit.index, random_unit, (*args, total_k, chunk_elems, slice_path))

        inputs = {"like": [Path(mask_path)], **({"base": list(ck.files)} if ck else {})}
        settings = {"stratify": stratify, "seed": int(seed)}
        run_manifest = manifest(RANDOM_SCHEMA, inputs, settings, max_unit_bytes, _records(units))
        with MaskWriter(out, m.shapes, rule, sources) as writer:
            _run_mask_units(
                f"random mask ({stratify})",
                units,
                writer,
                here,
                task,
                run_manifest,
                resume,
                cluster,
                progress,
            )
    return Path(out)


def _stream_at(seed: int, offset: int) -> np.random.Generator:
    """``numpy.random.default_rng(seed)`` after ``offset`` float64 draws (one 64-bit output
    each), without drawing them."""
    bits = np.random.PCG64(seed)
    bits.advance(offset)
    return np.random.Generator(bits)


def _random_tensors(
    m: MaskFile,
    values: dict[str, TensorValues] | None,
    reader: TensorReader | None,
    names: Sequence[str],
    stratify: str,
    rng: np.random.Generator,
    rem: np.ndarray,
    chunk_elems: int,
    sink: MaskWriter | MaskSlice,
    on_bytes: OnBytes,
) -> None:
    """Random tensors ``names`` like those of ``m`` into ``sink``, from ``rng`` (one uniform per
    weight); ``rem`` int64[2] = (still to select, weights left), carried across tensors for
    ``global`` strata; ``values``/``reader``: θ0 (:func:`base_values`) for ``binade`` strata."""
    for name in names:
        numel = numel_of(m, name)
        if stratify == "tensor":
            rem = np.array([n_set_of(m, name), numel], np.int64)
        if stratify == "binade":
            assert values is not None and reader is not None
            _random_binade(m, name, values[name], reader, rng, sink, chunk_elems, on_bytes)
            continue
        for start in range(0, numel, chunk_elems):
            stop = min(numel, start + chunk_elems)
            packed = np.zeros(packed_size(stop - start), np.uint8)
            bitops.select_uniform(rng.random(stop - start), rem, packed)
            sink.write(name, packed)
            if on_bytes is not None:
                on_bytes(packed.nbytes)


def random_unit(
    mask_path: str,
    base_path: str | None,
    names: tuple[str, ...],
    stratify: str,
    seed: int,
    offset: int,
    total_k: int,
    chunk_elems: int,
    slice_path: str,
) -> dict[str, Any]:
    """A random-mask unit in a worker process (``--cluster``): opens the mask (and θ0) from their
    paths, draws tensors ``names`` from the seed's stream at ``offset`` and saves them as a slice
    file at ``slice_path``.

    Returns:
        ``{"seconds", "host"}``.
    """
    t0 = time.perf_counter()
    sink = MaskSlice()
    with contextlib.ExitStack() as stack:
        m = stack.enter_context(opened(mask_path))
        reader = values = None
        if base_path is not None:
            ck = open_checkpoint(Path(base_path))
            reader = stack.enter_context(ck.reader())
            values = base_values(ck, {n: m.shapes[n] for n in names})
        rem = np.array([total_k, sum(numel_of(m, n) for n in m.names)], np.int64)
        rng = _stream_at(seed, offset)
        _random_tensors(m, values, reader, names, stratify, rng, rem, chunk_elems, sink, None)
    sink.save(slice_path)
    return {"seconds": time.perf_counter() - t0, "host": socket.gethostname()}


def base_values(ck: Checkpoint, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, TensorValues]:
    """θ0's values of every mask tensor (name -> mask shape): a stored bf16/fp16/fp32 tensor, a
    GGUF block type (float32 dequantized values) or a quantized layout (FP8 block scales,
    compressed-tensors FP8, MXFP4: its dequantized bfloat16 values, as the diff compares them);
    its leading elements must cover the mask's shape.

    Raises:
        CheckpointError: missing, incompatible shape (fewer rows or other trailing dims), values
            that are no bf16/fp16/fp32 (e.g. FP8 codes without a scale), or a malformed quantized
            layout (a missing scale, a scale shape that does not fit, an unknown block size).
    """
    logical = logical_tensors(ck)
    out = {}
    for name, mask_shape in shapes.items():
        vals = logical.get(name)
        where = f"{ck.source}: tensor '{name}'"
        if vals is None:
            raise CheckpointError(f"{where} is in the mask but not in the base checkpoint")
        info, shape = vals.info, tuple(mask_shape)
        if info.shape != shape and not (
            len(info.shape) == len(shape) >= 1
            and info.shape[1:] == shape[1:]
            and info.shape[0] >= shape[0]
        ):
            raise CheckpointError(f"{where} has shape {list(info.shape)}, the mask {list(shape)}")
        if vals.dtype not in STRATA_DTYPES:
            raise CheckpointError(
                f"{where}: |θ0| binades need bf16/fp16/fp32 weights, not {info.dtype}"
            )
        out[name] = vals
    return out


def base_chunks(
    name: str,
    numel: int,
    values: TensorValues,
    reader: TensorReader,
    others: Sequence[Any],
    chunk_elems: int,
    on_bytes: OnBytes,
) -> ChunkStream:
    """Chunks of θ0's words of tensor ``name`` (``values``: its dequantized bfloat16 words for a
    quantized layout, in whole scale slabs near ``chunk_elems``) followed by ``others``' words
    (e.g. mask bits), ``numel`` elements."""
    step = quant_step(chunk_elems, values.quant)
    sources = [value_source(reader, values.quant), *others]
    return stream_chunks(name, numel, sources, step, on_bytes=on_bytes)


def _random_binade(m, name, values, reader, rng, sink, chunk_elems, on_bytes) -> None:
    """Two passes over one tensor: count the mask per binade, then sample within each binade."""
    dtype = values.dtype
    numel = numel_of(m, name)
    hist = np.zeros((bitops.N_STRATA, 2), np.int64)
    for chunk in base_chunks(name, numel, values, reader, [m.bits()], chunk_elems, on_bytes):
        words, packed = chunk.words
        bitops.strata_histogram(words, dtype, packed[None, :], hist)
        del words, packed
    rem_n = bitops.strata_marginals(hist)
    rem_k = bitops.strata_marginals(hist, 0)
    for chunk in base_chunks(name, numel, values, reader, [], chunk_elems, on_bytes):
        packed = np.zeros(packed_size(chunk.numel), np.uint8)
        u = rng.random(chunk.numel)
        bitops.select_uniform_strata(chunk.words[0], dtype, u, rem_k, rem_n, packed)
        sink.write(name, packed)
        if on_bytes is not None:
            on_bytes(packed.nbytes)
