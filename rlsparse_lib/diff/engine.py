"""The streaming diff engine: plan, run per shard pair in bounded chunks, merge into a report.

Memory is bounded by one chunk per side (plus mapped pages, released after each chunk); no model,
state dict or concatenated delta is ever materialised. Work is organised in byte-bounded work
units of consecutive tensors of one (base shard, tuned shard) group
(:func:`rlsparse_lib.diff.units.plan_units`); :func:`diff_pairs` turns a unit into per-tensor
partial results and :func:`rlsparse_lib.diff.units.merge_units` merges them in unit order (whatever
order they completed in), so distributed or resumable executors reuse the math unchanged and give
the same report bit for bit.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from rlsparse_lib.diff.cluster import (
    ExecutionLog,
    UnitProgress,
    parse_cluster,
    run_units,
    worker_threads,
)
from rlsparse_lib.diff.config import DiffConfig
from rlsparse_lib.diff.kernels import get_kernel
from rlsparse_lib.diff.kernels.protocol import ChunkSpec, DiffKernel
from rlsparse_lib.diff.report import DiffReport, TensorResult
from rlsparse_lib.diff.resume import ResumeDir
from rlsparse_lib.diff.units import (
    MaskSlice,
    WorkUnit,
    assemble_mask,
    mask_slice_path,
    merge_units,
    plan_units,
)
from rlsparse_lib.diff.worker import UnitOutcome
from rlsparse_lib.io.checkpoint import Checkpoint, TensorReader, open_checkpoint
from rlsparse_lib.io.chunks import pair_chunks
from rlsparse_lib.io.dtypes import cast_words
from rlsparse_lib.io.gguf_io import block_views
from rlsparse_lib.io.maskfile import MaskWriter, packed_size
from rlsparse_lib.io.pairing import PairPlan, TensorPair, pair_checkpoints


def diff_checkpoints(
    base: str | Path | Checkpoint,
    tuned: str | Path | Checkpoint,
    config: DiffConfig | None = None,
    mask_out: str | Path | None = None,
    progress: bool = True,
    resume: str | Path | None = None,
    cluster: str | None = None,
) -> DiffReport:
    """Compare two checkpoints tensor by tensor.

    Args:
        base, tuned: checkpoints (paths, hub ids or opened :class:`Checkpoint`).
        config: comparison settings.
        mask_out: write the packed changed mask (by ``config.mask_rule``) of every float tensor here.
        progress: show a progress bar (bytes read, with ETA).
        resume: a folder keeping the unit plan and each finished unit's result
            (:mod:`rlsparse_lib.diff.resume`): units already there are not run again.
        cluster: ``local[:N]`` (a pool of N processes) or ``ray[://HOST:PORT]`` (Ray tasks): where
            the units run (:mod:`rlsparse_lib.diff.cluster`); None runs them in this process.

    Returns:
        The merged :class:`DiffReport`.

    Raises:
        ConfigError: a malformed ``cluster``, a device the cluster cannot run, or a ``resume``
            folder made for other inputs, settings or unit plan.
    """
    config = config or DiffConfig()
    t0 = time.perf_counter()
    spec = parse_cluster(cluster) if cluster is not None else None
    base_ck, tuned_ck = open_checkpoint(base), open_checkpoint(tuned)
    plan = pair_checkpoints(
        base_ck, tuned_ck, config.compare_dtype, config.include, config.exclude, dequantize=True
    )
    kernel = get_kernel(config.device, config.threads) if spec is None else None
    units = plan_units(plan, config.max_unit_bytes)
    store = ResumeDir.open(resume, base_ck, tuned_ck, config, units) if resume is not None else None
    # units run elsewhere or earlier keep their part of the mask in a slice file
    sliced = mask_out is not None and (store is not None or spec is not None)
    partials: dict[int, dict[str, TensorResult]] = store.load_done(sliced) if store else {}
    todo = [u for u in units if u.index not in partials]
    log = ExecutionLog(units, "in-process" if cluster is None else cluster, set(partials))
    mask = _open_mask(mask_out, plan, config) if mask_out is not None else None
    slice_dir = None
    if sliced:
        assert mask_out is not None
        slice_dir = (
            store.path
            if store
            else Path(tempfile.mkdtemp(".units", ".mask-", Path(mask_out).parent))
        )
    bar = UnitProgress(units, set(partials), "diff", progress)

    def finished(unit: WorkUnit, outcome: UnitOutcome) -> None:
        if store is not None:
            store.save(unit.index, outcome.partial)
        partials[unit.index] = outcome.partial
        log.record(unit, outcome)
        bar.unit_done(unit, streamed=spec is None)

    threads = getattr(kernel, "num_threads", None)
    try:
        if spec is not None:
            threads = worker_threads(config, spec)
            run_units(spec, todo, base_ck, tuned_ck, config, finished, diff_pairs, slice_dir)
        else:
            assert kernel is not None
            diff_unit = unit_executor(kernel)
            with base_ck.reader() as rb, tuned_ck.reader() as rt:
                for unit in todo:
                    t = time.perf_counter()
                    unit_mask = MaskSlice() if slice_dir is not None else mask
                    partial = diff_unit(unit.pairs, rb, rt, kernel, config, unit_mask, bar.update)
                    if slice_dir is not None:
                        assert isinstance(unit_mask, MaskSlice)
                        unit_mask.save(mask_slice_path(slice_dir, unit.index))
                    seconds = time.perf_counter() - t
                    finished(unit, UnitOutcome(partial, kernel.name, seconds, log.host))
        if mask is not None and slice_dir is not None:
            assemble_mask(
                mask, units, {u.index: mask_slice_path(slice_dir, u.index) for u in units}
            )
    except BaseException:
        if mask is not None:
            mask.close(ok=False)
        raise
    finally:
        bar.close()
        if slice_dir is not None and store is None:
            shutil.rmtree(slice_dir, ignore_errors=True)
    if mask is not None:
        mask.close()
    seconds = time.perf_counter() - t0
    name = kernel.name if kernel is not None else log.kernel(config.device)
    report = merge_units(plan, config, partials, name, seconds, mask_out, threads, units)
    report.provenance["execution"] = log.summary()
    return report


def unit_executor(kernel: DiffKernel) -> Callable[..., dict[str, TensorResult]]:
    """How a unit runs on ``kernel``: :func:`diff_pairs` (the CPU executor), or the GPU executor
    (:func:`rlsparse_lib.diff.gpu_executor.stream_pairs`: pinned buffers, copy/compute overlap)
    for a kernel whose ``streams_to_device`` is set. Both take the same arguments."""
    if getattr(kernel, "streams_to_device", False):
        from rlsparse_lib.diff.gpu_executor import stream_pairs

        return stream_pairs
    return diff_pairs


def diff_pairs(
    pairs: Iterable[TensorPair],
    base: TensorReader,
    tuned: TensorReader,
    kernel: DiffKernel,
    config: DiffConfig,
    mask: MaskWriter | None = None,
    on_bytes: Callable[[int], object] | None = None,
) -> dict[str, TensorResult]:
    """Compare a unit of work (typically one shard pair) chunk by chunk.

    Returns:
        Partial results by tensor name, to be merged by :func:`build_report`.
    """
    tols = np.asarray(config.tolerances, np.float64)
    out: dict[str, TensorResult] = {}
    for pair in pairs:
        result = TensorResult.empty(pair, len(tols))
        spec = None
        if pair.kind == "float":
            assert pair.compare_dtype is not None  # float pairs always have a compare dtype
            spec = ChunkSpec(
                pair.compare_dtype, pair.base.dtype, tols, config.rel_eta, config.mask_rule
            )
        compare = None if spec is None else spec.compare
        # the engine's own cast_words binding (a test makes it fail to check clean-up)
        chunks = pair_chunks(
            pair,
            base,
            tuned,
            config.chunk_elems,
            compare=compare,
            on_bytes=on_bytes,
            cast=cast_words,
        )
        for chunk in chunks:
            if spec is None:
                result.n_changed += kernel.count_changed(chunk.base, chunk.tuned)
                continue
            packed = np.zeros(packed_size(chunk.numel), np.uint8) if mask is not None else None
            stats = kernel.diff_chunk(chunk.base, chunk.tuned, spec, packed)
            result.stats = result.float_stats().merge(stats)
            result.n_changed += stats.n_changed
            if mask is not None:
                assert packed is not None  # allocated whenever there is a mask
                mask.write(pair.name, packed)
        result.numel = pair.numel
        blocks = block_views(
            pair, base.ckpt.encodings.get(pair.name), tuned.ckpt.encodings.get(pair.name)
        )
        if blocks is not None:  # GGUF quantized pair: raw blocks beside the dequantized values
            result.quant = blocks
        out[pair.name] = result
    return out


def _open_mask(path: str | Path, plan: PairPlan, config: DiffConfig) -> MaskWriter:
    shapes = {p.name: p.compared_shape for p in plan.float_pairs}
    rule = {"kind": config.mask_rule.kind, "tol": config.mask_rule.tol}
    sources = {
        side: {"source": ck.source, "fingerprint": ck.fingerprint(), "revision": ck.revision}
        for side, ck in (("base", plan.base), ("tuned", plan.tuned))
    }
    return MaskWriter(path, shapes, rule, sources)
