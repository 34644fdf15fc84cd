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

import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from rlsparse_lib.diff.cluster import parse_cluster, run_units_local, worker_threads
from rlsparse_lib.diff.config import DiffConfig
from rlsparse_lib.diff.kernels import get_kernel
from rlsparse_lib.diff.kernels.protocol import ChunkSpec, DiffKernel
from rlsparse_lib.diff.report import DiffReport, TensorResult
from rlsparse_lib.diff.resume import ResumeDir
from rlsparse_lib.diff.units import WorkUnit, merge_units, plan_units
from rlsparse_lib.errors import ConfigError
from rlsparse_lib.io.checkpoint import Checkpoint, TensorReader, open_checkpoint
from rlsparse_lib.io.chunks import pair_chunks
from rlsparse_lib.io.dtypes import cast_words
from rlsparse_lib.io.maskfile import MaskWriter, packed_size
from rlsparse_lib.io.pairing import PairPlan, TensorPair, pair_checkpoints
from rlsparse_lib.progress import byte_progress


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
        cluster: ``local`` or ``local:N``: run units on a pool of N processes
            (:mod:`rlsparse_lib.diff.cluster`); None runs them in this process.

    Returns:
        The merged :class:`DiffReport`.

    Raises:
        ConfigError: ``resume`` or ``cluster`` with ``mask_out``, ``cluster`` with a GPU device,
            or a ``resume`` folder made for other inputs, settings or unit plan.
    """
    config = config or DiffConfig()
    t0 = time.perf_counter()
    workers = None
    if cluster is not None:
        workers = parse_cluster(cluster)
        if mask_out is not None:
            raise ConfigError("--cluster with --mask-out is not supported yet")
        if config.device != "cpu":
            raise ConfigError("--cluster runs the CPU executor: use --device cpu")
    if resume is not None and mask_out is not None:
        raise ConfigError("--resume with --mask-out is not supported yet")
    base_ck, tuned_ck = open_checkpoint(base), open_checkpoint(tuned)
    plan = pair_checkpoints(base_ck, tuned_ck, config.compare_dtype, config.include, config.exclude)
    kernel = get_kernel(config.device, config.threads)
    units = plan_units(plan, config.max_unit_bytes)
    store = ResumeDir.open(resume, base_ck, tuned_ck, config, units) if resume is not None else None
    partials: dict[int, dict[str, TensorResult]] = store.load_done() if store else {}
    todo = [u for u in units if u.index not in partials]
    mask = _open_mask(mask_out, plan, config) if mask_out is not None else None
    bar = byte_progress(plan.nbytes, "diff", progress)
    bar.update(sum(u.nbytes for u in units if u.index in partials))

    def finished(unit: WorkUnit, partial: dict[str, TensorResult]) -> None:
        if store is not None:
            store.save(unit.index, partial)
        partials[unit.index] = partial

    threads = getattr(kernel, "num_threads", None)
    try:
        if workers is not None:
            threads = worker_threads(config, workers)

            def done_in_pool(unit: WorkUnit, partial: dict[str, TensorResult]) -> None:
                finished(unit, partial)
                bar.update(unit.nbytes)

            run_units_local(todo, base_ck, tuned_ck, config, workers, done_in_pool, diff_pairs)
        else:
            diff_unit = unit_executor(kernel)
            with base_ck.reader() as rb, tuned_ck.reader() as rt:
                for unit in todo:
                    finished(unit, diff_unit(unit.pairs, rb, rt, kernel, config, mask, bar.update))
    except BaseException:
        if mask is not None:
            mask.close(ok=False)
        raise
    finally:
        bar.close()
    if mask is not None:
        mask.close()
    seconds = time.perf_counter() - t0
    return merge_units(plan, config, partials, kernel.name, seconds, mask_out, threads, units)


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
