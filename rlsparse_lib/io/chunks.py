"""The one chunk stream: aligned word chunks of a tensor, read from two (or more) sources at once.

Every streaming command (diff, dynamics, absorption, rank, overlap, mask algebra, random masks)
walks tensors the same way: elements ``[start, stop)`` in steps of ``chunk_elems``, the next range
prefetched on every source, raw words read, optionally cast to a compare dtype, handed to the
per-chunk work, then the pages released and the bytes reported. :func:`stream_chunks` (and
:func:`pair_chunks` for a :class:`~rlsparse_lib.io.pairing.TensorPair`) does that once.

A quantized logical tensor (:class:`~rlsparse_lib.io.quant.QuantTensor`) is read as its
dequantized values by :func:`rlsparse_lib.diff.kernels.dequant.value_chunks`, which decodes with
the diff's compiled kernel and streams through :func:`stream_chunks`.

Memory stays bounded by one chunk per source: a :class:`Chunk` is valid until the next one is
requested; the stream then releases its pages and drops its arrays (copy what must outlive it).
The current chunk is also released when the stream is closed: at exhaustion, when the consumer
breaks out of the loop or raises (the ``for`` loop drops the stream), or by :meth:`ChunkStream.close`
/ a ``with`` block.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from rlsparse_lib.io.dtypes import cast_words
from rlsparse_lib.io.pairing import TensorPair

__all__ = ["CastFn", "Chunk", "ChunkStream", "WordSource", "pair_chunks", "stream_chunks"]

#: ``cast(words, stored, compare) -> words``: raw words of one dtype to raw words of another
CastFn = Callable[[np.ndarray, str, str], np.ndarray]


class WordSource(Protocol):
    """Element-ranged raw-word access (a :class:`~rlsparse_lib.io.checkpoint.TensorReader`,
    :class:`~rlsparse_lib.io.maskfile.MaskBits`)."""

    def words(self, name: str, start: int, stop: int) -> np.ndarray:
        """Elements ``[start, stop)`` of ``name`` as a 1-D array of unsigned words."""
        ...

    def prefetch(self, name: str, start: int, stop: int) -> None:
        """Hint that ``[start, stop)`` is read next."""
        ...

    def release(self, name: str, start: int, stop: int) -> None:
        """Drop the pages of ``[start, stop)`` (the caller holds no view it still needs)."""
        ...


@dataclass(slots=True)
class Chunk:
    """Elements ``[start, stop)`` of one tensor on every source, in source order.

    Attributes:
        start, stop: the flat (C-order) element range.
        words: per source, a 1-D array of the chunk's words: cast to the compare dtype where a
            cast was asked (``uint16`` for bf16/fp16, ``uint32`` for fp32), else as read.
        raw: per source, the words as read (unsigned words of the stored dtype's item size;
            packed mask bytes, ``uint8[ceil((stop - start) / 8)]``, for a mask source).

    Valid until the next chunk is requested: ``words`` and ``raw`` are then emptied.
    """

    start: int
    stop: int
    words: tuple[np.ndarray, ...]
    raw: tuple[np.ndarray, ...]

    @property
    def numel(self) -> int:
        return self.stop - self.start

    @property
    def base(self) -> np.ndarray:
        """The first source's words (the base of a pair)."""
        return self.words[0]

    @property
    def tuned(self) -> np.ndarray:
        """The second source's words (the tuned side of a pair)."""
        return self.words[1]

    @property
    def nbytes(self) -> int:
        """Bytes read from all sources (before any cast)."""
        return sum(r.nbytes for r in self.raw)


class ChunkStream:
    """Iterator of :class:`Chunk` over one tensor, made by :func:`stream_chunks`.

    Use it in a ``for`` loop (or ``with`` block for an explicit close); closing releases the
    chunk in hand.
    """

    def __init__(self, chunks: Generator[Chunk, None, None]) -> None:
        self._gen = chunks

    def __iter__(self) -> ChunkStream:
        return self

    def __next__(self) -> Chunk:
        return next(self._gen)

    def close(self) -> None:
        """Release the chunk in hand (if any) and end the stream."""
        self._gen.close()

    def __enter__(self) -> ChunkStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stream_chunks(
    name: str,
    numel: int,
    sources: Sequence[WordSource],
    chunk_elems: int,
    *,
    stored: Sequence[str | None] | None = None,
    compare: str | None = None,
    on_bytes: Callable[[int], object] | None = None,
    cast: CastFn = cast_words,
) -> ChunkStream:
    """Chunks of elements ``[0, numel)`` of tensor ``name``, read from every source in lockstep.

    Args:
        name: the tensor (same name on every source).
        numel: elements to cover (chunks ``[k·chunk_elems, min(numel, (k+1)·chunk_elems))``).
        sources: where the words come from (checkpoint readers, mask bit sources).
        chunk_elems: elements per chunk (a multiple of 8 when a source is a packed mask).
        stored: per source, the stored dtype (``None`` for a source never cast).
        compare: cast every source with a stored dtype to this dtype (:func:`cast_words`:
            round to nearest even; a no-op when equal); ``None`` keeps the raw words.
        on_bytes: called with each chunk's bytes read (all sources, before casts) once the
            consumer is done with it; the calls sum to the bytes of the whole range.
        cast: ``cast(words, stored, compare)``, the cast applied (default :func:`cast_words`).
    """
    if chunk_elems < 1:
        raise ValueError(f"chunk_elems must be positive, got {chunk_elems}")
    if numel < 0:
        raise ValueError(f"numel must be >= 0, got {numel}")
    if stored is not None and len(stored) != len(sources):
        raise ValueError(f"{len(sources)} sources but {len(stored)} stored dtypes")
    if compare is not None and stored is None:
        raise ValueError("a cast to a compare dtype needs the sources' stored dtypes")
    casts: tuple[str | None, ...] = (
        tuple(stored) if compare is not None and stored is not None else (None,) * len(sources)
    )
    return ChunkStream(
        _stream(name, numel, tuple(sources), chunk_elems, casts, compare, on_bytes, cast)
    )


def pair_chunks(
    pair: TensorPair,
    base: WordSource,
    tuned: WordSource,
    chunk_elems: int,
    *,
    compare: str | None = None,
    on_bytes: Callable[[int], object] | None = None,
    cast: CastFn = cast_words,
) -> ChunkStream:
    """Chunks of a pair's compared elements as stored: ``chunk.base`` and ``chunk.tuned``, cast to
    ``compare`` (e.g. ``pair.compare_dtype``) or raw when ``compare`` is None (a quantized side:
    :func:`rlsparse_lib.diff.kernels.dequant.value_chunks`)."""
    return stream_chunks(
        pair.name,
        pair.numel,
        (base, tuned),
        chunk_elems,
        stored=(pair.base.dtype, pair.tuned.dtype),
        compare=compare,
        on_bytes=on_bytes,
        cast=cast,
    )


def _stream(
    name: str,
    numel: int,
    sources: tuple[WordSource, ...],
    step: int,
    casts: tuple[str | None, ...],
    compare: str | None,
    on_bytes: Callable[[int], object] | None,
    cast: CastFn,
) -> Generator[Chunk, None, None]:
    live: Chunk | None = None  # the chunk in the consumer's hands
    try:
        for start in range(0, numel, step):
            stop = min(numel, start + step)
            if stop < numel:
                nxt = min(numel, stop + step)
                for src in sources:
                    src.prefetch(name, stop, nxt)
            raw = tuple(src.words(name, start, stop) for src in sources)
            words = tuple(
                r if dtype is None or compare is None else cast(r, dtype, compare)
                for r, dtype in zip(raw, casts, strict=True)
            )
            live = Chunk(start, stop, words, raw)
            del raw, words
            yield live
            done, live = live, None
            nbytes = done.nbytes
            _release(done, name, sources)
            if on_bytes is not None:
                on_bytes(nbytes)
    finally:
        if live is not None:  # closed early: the consumer broke out or raised
            _release(live, name, sources)


def _release(chunk: Chunk, name: str, sources: tuple[WordSource, ...]) -> None:
    """Drop the chunk's arrays, then its pages on every source."""
    chunk.words = ()
    chunk.raw = ()
    for src in sources:
        src.release(name, chunk.start, chunk.stop)
