"""The streaming diff engine: plan, run per base shard in bounded chunks, merge into a report.

Memory is bounded by one chunk per side (plus mapped pages, released after each chunk); no model,
state dict or concatenated delta is ever materialised. Work is organised in byte-bounded work
units of consecutive tensors of one base shard (:func:`rlsparse_lib.diff.units.plan_units`);
:func:`diff_pairs` turns a unit into per-tensor partial results and
:func:`rlsparse_lib.diff.units.merge_units` merges them in unit order (whatever order they
completed in), so distributed or resumable executors reuse the math unchanged and give the same
report bit for bit.
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
from rlsparse_lib.diff.kernels.cpu import CpuKernel
from rlsparse_lib.diff.kernels.dequant import (
    CodeSource,
    CpuDecoder,
    Decoder,
    DequantSource,
    ScaleCounter,
    count_codes,
    quant_step,
    transpose_mask_bits,
)
from rlsparse_lib.diff.kernels.protocol import ChunkSpec, DiffKernel
from rlsparse_lib.diff.kernels.selection import get_kernel
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
from rlsparse_lib.io.chunks import ChunkStream, WordSource, pair_chunks, stream_chunks
from rlsparse_lib.io.dtypes import cast_words
from rlsparse_lib.io.gguf_io import BlockViews
from rlsparse_lib.io.maskfile import MaskWriter, packed_size
from rlsparse_lib.io.pairing import PairPlan, TensorPair, pair_checkpoints, same_layout


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
    for a kernel whose ``streams_to_device`` is set; quantized pairs are decoded on the host and
    run through :func:`diff_pairs` on the same kernel. Both take the same arguments."""
    if getattr(kernel, "streams_to_device", False):
        from rlsparse_lib.diff.gpu_executor import stream_pairs

        def run(pairs, base, tuned, kernel, config, mask=None, on_bytes=None):
            pairs = list(pairs)
            plain = [p for p in pairs if not _quantized(p)]
            out = stream_pairs(plain, base, tuned, kernel, config, mask, on_bytes) if plain else {}
            quant = [p for p in pairs if _quantized(p)]
            out.update(diff_pairs(quant, base, tuned, kernel, config, mask, on_bytes))
            return {p.name: out[p.name] for p in pairs}

        return run
    return diff_pairs


def _quantized(pair: TensorPair) -> bool:
    return pair.quant_base is not None or pair.quant_tuned is not None


def diff_pairs(
    pairs: Iterable[TensorPair],
    base: TensorReader,
    tuned: TensorReader,
    kernel: DiffKernel,
    config: DiffConfig,
    mask: MaskWriter | None = None,
    on_bytes: Callable[[int], object] | None = None,
) -> dict[str, TensorResult]:
    """Compare a unit of work (consecutive tensors of one base shard) chunk by chunk.

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
            # a dequantized base is stored as bfloat16 for the ULP unit
            stored = "bfloat16" if pair.quant_base is not None else pair.base.dtype
            spec = ChunkSpec(pair.compare_dtype, stored, tols, config.rel_eta, config.mask_rule)
        compare = None if spec is None else spec.compare
        if _quantized(pair):
            assert spec is not None  # quantized pairs are float pairs
            out[pair.name] = _diff_quant(pair, base, tuned, kernel, config, spec, mask, on_bytes)
            continue
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
        # a GGUF quantized pair: raw blocks compared beside the values, while each chunk is held
        blocks = BlockViews.of(base.gguf, tuned.gguf, pair.base, pair.tuned)
        for chunk in chunks:
            if blocks is not None:
                blocks.add(chunk.start, chunk.stop)
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
        if blocks is not None:
            result.quant = blocks.view()
        out[pair.name] = result
    return out


def _diff_quant(
    pair: TensorPair,
    base: TensorReader,
    tuned: TensorReader,
    kernel: DiffKernel,
    config: DiffConfig,
    spec: ChunkSpec,
    mask: MaskWriter | None,
    on_bytes: Callable[[int], object] | None,
) -> TensorResult:
    """A pair with a quantized side, compared on its dequantized bfloat16 values (cast to the
    compare dtype) chunk by chunk in whole scale slabs; with the same layout on both sides also
    the raw-code views (``TensorResult.quant``: :data:`rlsparse_lib.diff.report.QUANT_COUNTS`)."""
    qb, qt = pair.quant_base, pair.quant_tuned
    # a device kernel decodes on its device (only codes and scales travel) when the values are
    # compared as the bfloat16 they decode to; otherwise the compiled CPU kernel decodes (one
    # decoder per side: each reuses its output buffer)
    on_device = kernel.streams_to_device and spec.compare == "bfloat16"

    def decoder() -> Decoder:
        if on_device:
            return kernel  # type: ignore[return-value]
        return CpuDecoder(getattr(kernel, "threads", None))

    views = same_layout(qb, qt)
    # the CPU kernel diffs two quantized sides laid out alike straight from their codes (equal to
    # decoding both, bit for bit); other pairs are decoded to bfloat16 first
    fused = views and isinstance(kernel, CpuKernel) and spec.compare == "bfloat16"
    sb: WordSource = base if qb is None else DequantSource(base, qb, decoder())
    st: WordSource = tuned if qt is None else DequantSource(tuned, qt, decoder())
    if fused:
        assert qb is not None and qt is not None
        sb, st = CodeSource(base, qb), CodeSource(tuned, qt)
    stored = tuple(
        "bfloat16" if q is not None else i.dtype for q, i in ((qb, pair.base), (qt, pair.tuned))
    )
    result = TensorResult.empty(pair, len(spec.tolerances))
    counts = np.zeros(2, np.int64)
    scales = ScaleCounter()
    chunks: ChunkStream = stream_chunks(
        pair.name,
        pair.numel,
        (sb, st),
        quant_step(config.chunk_elems, qb, qt),
        stored=stored,
        compare=spec.compare,
        cast=cast_words,
    )
    for chunk in chunks:
        packed = np.zeros(packed_size(chunk.numel), np.uint8) if mask is not None else None
        if fused:
            assert isinstance(kernel, CpuKernel) and qb is not None
            assert isinstance(sb, CodeSource) and isinstance(st, CodeSource)
            stats = kernel.diff_codes(sb, st, chunk.base, chunk.tuned, spec, packed, counts)
            scales.add(sb, st)
            if packed is not None and qb.transposed:  # the codes are compared in stored order
                packed = transpose_mask_bits(packed, chunk.numel, qb.matrix_rows(), qb.cols)
        else:
            stats = kernel.diff_chunk(chunk.base, chunk.tuned, spec, packed)
        result.stats = result.float_stats().merge(stats)
        result.n_changed += stats.n_changed
        if views and not fused:
            assert isinstance(sb, DequantSource) and isinstance(st, DequantSource)
            count_codes(sb, st, counts)
            scales.add(sb.source, st.source)
        if mask is not None:
            assert packed is not None
            mask.write(pair.name, packed)
        if on_bytes is not None:
            on_bytes(
                sum(
                    s.code_bytes if isinstance(s, DequantSource) else r.nbytes
                    for s, r in zip((sb, st), chunk.raw, strict=True)
                )
            )
    if on_bytes is not None:
        on_bytes(sum(q.scales.nbytes for q in (qb, qt) if q is not None))
    result.numel = pair.numel
    if views:
        assert qb is not None and qt is not None
        result.quant = {
            "scheme": qb.scheme,
            "block": None if qb.block is None else list(qb.block),
            "raw_n": pair.numel,
            "raw_changed": int(counts[0]),
            "scales_n": qb.scales.numel,
            "scales_changed": scales.changed,
            "scale_only_changed": int(counts[1]),
        }
    return result


def _open_mask(path: str | Path, plan: PairPlan, config: DiffConfig) -> MaskWriter:
    shapes = {p.name: p.compared_shape for p in plan.float_pairs}
    rule = {"kind": config.mask_rule.kind, "tol": config.mask_rule.tol}
    sources = {
        side: {"source": ck.source, "fingerprint": ck.fingerprint(), "revision": ck.revision}
        for side, ck in (("base", plan.base), ("tuned", plan.tuned))
    }
    return MaskWriter(path, shapes, rule, sources)
