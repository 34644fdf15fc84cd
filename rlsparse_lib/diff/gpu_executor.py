"""The GPU executor: streams a unit of tensor pairs from checkpoints through a :class:`CudaKernel`.

Used by :func:`~rlsparse_lib.diff.engine.diff_checkpoints` for ``--device cuda``: each chunk is
read from the memory-mapped checkpoint into a pinned host buffer by a pool of reader threads,
copied to the GPU on a copy stream, diffed on a compute stream, and its reduced statistics (and
packed mask) copied back into pinned buffers. ``slots`` buffer sets (two by default) rotate, so
reading chunk k on the host overlaps the copy and the kernel of chunk k - 1; a slot is reused only
after its previous chunk's results are consumed, which keeps mask chunks in file order. Casts
between stored and compare dtypes run on the host with the CPU path's own function, so both paths
compare identical words.

On a CPU device (Triton's interpreter) the same code runs with no-op streams and events: every
copy and launch then completes before it returns.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from rlsparse_lib.diff.kernels.cuda import SIGNED, CudaKernel, device_context
from rlsparse_lib.diff.kernels.dequant import value_chunks
from rlsparse_lib.diff.kernels.protocol import ChunkSpec
from rlsparse_lib.diff.report import TensorResult
from rlsparse_lib.io.chunks import Chunk
from rlsparse_lib.io.gguf_io import BlockViews

_SPLIT = 4 << 20  # bytes per reader-thread piece when filling a pinned buffer


class _Done:
    """Stand-in for a CUDA event on a CPU device, where all work is synchronous."""

    def record(self, stream=None) -> None:
        pass

    def synchronize(self) -> None:
        pass


class _Streams:
    """A copy stream and a compute stream on a CUDA device; no-ops on a CPU device."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.copy = torch.cuda.Stream(device) if self.cuda else None
        self.compute = torch.cuda.Stream(device) if self.cuda else None

    def on(self, stream):
        return torch.cuda.stream(stream) if self.cuda else contextlib.nullcontext()

    def event(self):
        return torch.cuda.Event() if self.cuda else _Done()

    def wait(self, stream, event) -> None:
        if self.cuda:
            stream.wait_event(event)

    def synchronize(self) -> None:
        # both streams exist exactly when self.cuda
        if self.copy is not None:
            self.copy.synchronize()
        if self.compute is not None:
            self.compute.synchronize()


@dataclass
class _Job:
    """A chunk in flight: where its results go once its slot's ``done`` event has fired."""

    result: TensorResult
    numel: int
    nbytes: int  # checkpoint bytes (both sides), for progress
    spec: ChunkSpec | None
    ntol: int = 0
    width: int = 0
    mask_bytes: int = 0
    keep: list = field(default_factory=list)  # device tensors that must outlive the job


class _Slot:
    """One buffer set: pinned host and device buffers for both sides, result buffers, events."""

    def __init__(
        self, streams: _Streams, device: torch.device, cap: int, width: int, mask_cap: int
    ) -> None:
        pin = streams.cuda
        self.host = [torch.empty(cap, dtype=torch.uint8, pin_memory=pin) for _ in range(2)]
        self.dev = [torch.empty(cap, dtype=torch.uint8, device=device) for _ in range(2)]
        self.ints = torch.empty(width, dtype=torch.int64, pin_memory=pin)
        self.flts = torch.empty(4, dtype=torch.float64, pin_memory=pin)
        self.mask = torch.empty(mask_cap, dtype=torch.uint8, pin_memory=pin)
        self.copied = streams.event()
        self.done = streams.event()
        self.job: _Job | None = None


def _word_bytes(pair) -> int:
    """Bytes per compared element on one side, after the cast to the compare dtype."""
    from rlsparse_lib.io.dtypes import ITEMSIZE

    return ITEMSIZE[pair.compare_dtype] if pair.kind == "float" else pair.base.itemsize


def stream_pairs(
    pairs: Iterable,
    base,
    tuned,
    kernel: CudaKernel,
    config,
    mask=None,
    on_bytes: Callable[[int], object] | None = None,
) -> dict:
    """Compare a unit of work (consecutive tensors of one base shard) on ``kernel``'s device,
    streaming.

    Same contract as :func:`rlsparse_lib.diff.engine.diff_pairs` (``base``/``tuned`` are
    :class:`~rlsparse_lib.io.checkpoint.TensorReader`, ``config`` a ``DiffConfig``, ``mask`` a
    ``MaskWriter``): returns partial results by tensor name, with identical counts.
    """
    pairs = list(pairs)
    ntol = len(config.tolerances)
    out = {p.name: TensorResult.empty(p, ntol) for p in pairs}
    with device_context(kernel.device), ThreadPoolExecutor(kernel.readers) as pool:
        pipe = _Pipeline(kernel, config, pairs, mask, on_bytes, pool)
        try:
            # the shared chunk stream reads, prefetches, casts and releases; it fits the pipeline
            # because the host side is synchronous anyway: submit() copies a chunk's words into a
            # pinned slot before the next chunk is requested (and released), while the copy and
            # the kernel of earlier chunks run on their streams. Progress is reported by finish(),
            # when a chunk's results are back, not by the stream.
            # the raw blocks of a GGUF quantized pair are compared on the host, chunk by chunk,
            # while the readers still hold the chunk's bytes
            for pair in pairs:
                compare = pair.compare_dtype if pair.kind == "float" else None
                blocks = BlockViews.of(base.gguf, tuned.gguf, pair.base, pair.tuned)
                for chunk in value_chunks(pair, base, tuned, config.chunk_elems, compare=compare):
                    pipe.submit(out[pair.name], pair, chunk)
                    if blocks is not None:
                        blocks.add(chunk.start, chunk.stop)
                out[pair.name].numel = pair.numel
                if blocks is not None:
                    out[pair.name].quant = blocks.view()
            pipe.drain()
        finally:
            pipe.streams.synchronize()
    return out


class _Pipeline:
    """Rotates chunks through the slots: read -> pinned -> (copy stream) -> device -> (compute
    stream) kernel -> pinned results; a slot's previous chunk is finished before its reuse."""

    def __init__(self, kernel: CudaKernel, config, pairs: list, mask, on_bytes, pool) -> None:
        from rlsparse_lib.diff.kernels.triton_diff import H_TOL

        self.kernel = kernel
        self.config = config
        self.tols = np.asarray(config.tolerances, np.float64)
        self.mask = mask
        self.on_bytes = on_bytes
        self.pool = pool
        self.streams = _Streams(kernel.device)
        step = config.chunk_elems
        cap_elems = max((min(p.numel, step) for p in pairs), default=0)
        cap = max([cap_elems * _word_bytes(p) for p in pairs] + [8])
        width = H_TOL + (1 << max(1, self.tols.size.bit_length()))
        self.slots = [
            _Slot(self.streams, kernel.device, cap, width, (cap_elems + 7) // 8)
            for _ in range(kernel.slots)
        ]
        self.submitted = 0

    def submit(self, result, pair, chunk: Chunk) -> None:
        """Copy ``chunk`` (``pair``'s words, already cast to the compare dtype for float pairs)
        into the next slot's pinned buffers and enqueue its copy and kernel."""
        slot = self.slots[self.submitted % len(self.slots)]
        self.finish(slot)
        spec = None
        if pair.kind == "float":
            c = self.config
            spec = ChunkSpec(pair.compare_dtype, pair.base.dtype, self.tols, c.rel_eta, c.mask_rule)
        sizes = []
        for side, w in enumerate(chunk.words):
            _fill(slot.host[side], w, self.pool)
            sizes.append((w.nbytes, w.itemsize))
        if sizes[0] != sizes[1]:
            raise ValueError(f"{pair.name}: sides differ in word size ({sizes[0]} vs {sizes[1]})")
        nbytes, item = sizes[0]
        numel = chunk.numel
        job = _Job(result, numel, chunk.nbytes, spec)
        st = self.streams
        with st.on(st.copy):
            for side in range(2):
                slot.dev[side][:nbytes].copy_(slot.host[side][:nbytes], non_blocking=True)
            slot.copied.record(st.copy)
        with st.on(st.compute):
            st.wait(st.compute, slot.copied)
            a, b = (slot.dev[side][:nbytes].view(SIGNED[item]) for side in range(2))
            self._compute(slot, job, a, b)
            slot.done.record(st.compute)
        slot.job = job
        self.submitted += 1

    def _compute(self, slot: _Slot, job: _Job, a: torch.Tensor, b: torch.Tensor) -> None:
        """Enqueue the kernel and the copies of its results into the slot's pinned buffers."""
        from rlsparse_lib.diff.kernels.triton_diff import count_changed, launch_diff

        if job.spec is None:
            slot.ints[:1].copy_(count_changed(a, b).reshape(1), non_blocking=True)
            return
        dmask = None
        if self.mask is not None:
            job.mask_bytes = (job.numel + 7) // 8
            dmask = torch.empty(job.mask_bytes, dtype=torch.uint8, device=a.device)
            job.keep.append(dmask)
        res = launch_diff(a, b, job.spec, dmask, self.kernel.tuning)
        job.ntol, job.width = res.ntol, res.ints.numel()
        job.keep += [res.ints, res.flts]
        slot.ints[: job.width].copy_(res.ints, non_blocking=True)
        slot.flts.copy_(res.flts, non_blocking=True)
        if dmask is not None:
            slot.mask[: job.mask_bytes].copy_(dmask, non_blocking=True)

    def finish(self, slot: _Slot) -> None:
        """Wait for the slot's chunk, then merge its statistics and write its mask bytes."""
        from rlsparse_lib.diff.kernels.triton_diff import stats_from_arrays

        job = slot.job
        if job is None:
            return
        slot.done.synchronize()
        if job.spec is None:
            job.result.n_changed += int(slot.ints[0])
        else:
            flts = slot.flts.numpy()
            ints = slot.ints[: job.width].numpy()
            stats = stats_from_arrays(ints, flts, job.numel, job.ntol, job.spec.compare)
            job.result.stats = job.result.float_stats().merge(stats)
            job.result.n_changed += stats.n_changed
            if self.mask is not None:
                self.mask.write(job.result.name, slot.mask[: job.mask_bytes].numpy())
        slot.job = None
        if self.on_bytes is not None:
            self.on_bytes(job.nbytes)

    def drain(self) -> None:
        """Finish all chunks in flight, oldest first."""
        n = len(self.slots)
        for k in range(n):
            self.finish(self.slots[(self.submitted + k) % n])


def _fill(dst: torch.Tensor, src: np.ndarray, pool: ThreadPoolExecutor) -> None:
    """Copy ``src``'s bytes into the front of the uint8 host buffer ``dst``, in parallel pieces."""
    raw = np.ascontiguousarray(src).reshape(-1).view(np.uint8)
    out = dst.numpy()
    n = raw.size
    if n <= _SPLIT:
        np.copyto(out[:n], raw)
        return
    pieces = [(lo, min(n, lo + _SPLIT)) for lo in range(0, n, _SPLIT)]
    futures = [pool.submit(np.copyto, out[lo:hi], raw[lo:hi]) for lo, hi in pieces]
    for f in futures:
        f.result()
