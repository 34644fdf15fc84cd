"""Dequantization on the chunk stream: a quantized logical tensor read as bfloat16 words.

:class:`DequantSource` is a :class:`~rlsparse_lib.io.chunks.WordSource` whose ``words`` are the
dequantized values of a :class:`~rlsparse_lib.io.quant.QuantTensor`, decoded by the compiled
kernel (``diffcore.c``: a float32 decode table per code, the float32 product with the scale,
rounded to bfloat16 to nearest even; :class:`CpuDecoder`) or by the same rule in Triton on the
GPU kernel's device (:class:`~rlsparse_lib.diff.kernels.cuda.CudaKernel`: only codes and scales
travel to the device), from the codes and only the scale rows the range needs. The chunk stream
then treats it like any stored bfloat16 tensor (casts, release, prefetch), so the diff kernel,
the tolerance grid, the relative probe and the ULP/binade views apply unchanged. Ranges are cut
in whole scale slabs (:func:`quant_step`).

Two quantized sides laid out alike and compared as bfloat16 on the CPU skip the decoded buffer:
:class:`CodeSource` hands the raw codes and their scales to
:meth:`~rlsparse_lib.diff.kernels.cpu.CpuKernel.diff_codes` (the fused kernel, bit-identical to
decoding both sides and diffing the words). Decoding stays for a quantized side against a plain
one, for other compare dtypes and on the GPU (where decoding is cheap next to the transfer).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from rlsparse_lib.diff.kernels import _diffcore
from rlsparse_lib.io.checkpoint import TensorReader
from rlsparse_lib.io.chunks import CastFn, ChunkStream, WordSource, pair_chunks, stream_chunks
from rlsparse_lib.io.dtypes import cast_words
from rlsparse_lib.io.pairing import TensorPair
from rlsparse_lib.io.quant import (
    MX_GROUP,
    QuantTensor,
    e2m1_table,
    e8m0_table,
    fp8_table,
)

__all__ = [
    "CodeSource",
    "CpuDecoder",
    "Decoder",
    "DequantSource",
    "ScaleCounter",
    "count_codes",
    "quant_step",
    "transpose_mask_bits",
    "value_chunks",
    "value_source",
]


class Decoder(Protocol):
    """Where dequantization runs: host arrays in, bfloat16 words out (numpy or device tensors)."""

    def dequant_fp8(
        self,
        codes: np.ndarray,
        ncols: int,
        scales: np.ndarray,
        srow: np.ndarray,
        scols: int,
        col_block: int,
    ) -> Any:
        """FP8 codes uint8[nrows * ncols], float32 scales (flat ``[-1, scols]``), int64
        ``srow[nrows]`` -> bfloat16 words; see ``rls_dequant_fp8``."""
        ...

    def dequant_mxfp4(self, blocks: np.ndarray, scales: np.ndarray) -> Any:
        """MXFP4 blocks uint8[16 * G], scales uint8[G] -> bfloat16 words [32 * G]."""
        ...

    def quant_counts(self, ca: Any, cb: Any, wa: Any, wb: Any, nibbles: bool) -> tuple[int, int]:
        """(codes that differ, elements changed through their scale only) of one range."""
        ...


#: elements sharing one scale from which the FP8 decode looks up per-scale tables
_LUT_MIN = 1024


class CpuDecoder:
    """:class:`Decoder` on the compiled CPU kernel (``threads``: None for all).

    The words it returns live in one buffer reused by the next call (no page faults on a fresh
    array per chunk): use one decoder per source, whose chunk is valid until the next one.
    """

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or 0
        self._buf = np.empty(0, np.uint16)

    def _out(self, n: int) -> np.ndarray:
        if self._buf.size < n:
            self._buf = np.empty(n, np.uint16)
        return self._buf[:n]

    def dequant_fp8(
        self,
        codes: np.ndarray,
        ncols: int,
        scales: np.ndarray,
        srow: np.ndarray,
        scols: int,
        col_block: int,
    ) -> np.ndarray:
        out = self._out(codes.size)
        # elements per scale in this range: when they are many, decode each scale's 256 codes
        # once and look them up (srow is non-decreasing)
        scale_rows = int(srow[-1] - srow[0]) + 1 if srow.size else 1
        use_lut = srow.size // scale_rows * min(col_block, ncols) >= _LUT_MIN
        _diffcore.dequant_fp8(
            codes, ncols, scales, srow, scols, col_block, fp8_table(), out, self.threads, use_lut
        )
        return out

    def dequant_mxfp4(self, blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
        out = self._out(scales.size * MX_GROUP)
        _diffcore.dequant_mxfp4(blocks, scales, e2m1_table(), e8m0_table(), out, self.threads)
        return out

    def quant_counts(
        self, ca: np.ndarray, cb: np.ndarray, wa: np.ndarray, wb: np.ndarray, nibbles: bool
    ) -> tuple[int, int]:
        counts = np.zeros(2, np.int64)
        _diffcore.quant_counts(ca, cb, wa, wb, int(nibbles), counts, self.threads)
        return int(counts[0]), int(counts[1])


def quant_step(chunk_elems: int, *layouts: QuantTensor | None) -> int:
    """Elements per chunk for a pair with these quantized sides: a multiple of every side's
    alignment (FP8: whole scale slabs of rows; MXFP4: whole rows) and of 8 (packed masks), about
    ``chunk_elems`` and at least one aligned unit."""
    unit = 8
    for qt in layouts:
        if qt is not None:
            # a transposed layout is read in whole matrices
            rows = qt.matrix_rows() if qt.transposed else qt.slab_rows()
            unit = math.lcm(unit, rows * qt.cols)
    return max(unit, chunk_elems // unit * unit)


class CodeSource:
    """Element-ranged raw codes of a quantized logical tensor, with the scales they use (a
    ``WordSource``).

    ``words(name, start, stop)`` needs ``start`` on a row boundary (FP8) or a 32-element group
    boundary (MXFP4) and ``stop`` likewise or at the end; it returns the range's codes (uint8;
    packed nibbles for MXFP4) and sets :attr:`scales` (FP8: float32, flat ``[-1, scols]``;
    MXFP4: the E8M0 bytes of the range's groups), :attr:`scale_words` (the same entries as
    stored, raw words), :attr:`scale_range` (their flat ``[start, stop)`` in the scale tensor) and
    :attr:`srow` (FP8: int64, each row's scale row in :attr:`scales`), valid until
    :meth:`release`.
    """

    def __init__(self, reader: TensorReader, qt: QuantTensor) -> None:
        self.reader = reader
        self.qt = qt
        self.scales: np.ndarray = np.empty(0, np.float32)
        self.srow: np.ndarray = np.empty(0, np.int64)
        self.scale_words: np.ndarray = np.empty(0, np.uint8)
        self.scale_range = (0, 0)

    def _code_range(self, start: int, stop: int) -> tuple[int, int]:
        if self.qt.scheme == "mxfp4":
            return start // 2, stop // 2
        return start, stop

    def words(self, name: str, start: int, stop: int) -> np.ndarray:
        """The codes of elements ``[start, stop)``."""
        qt = self.qt
        if qt.scheme == "mxfp4":
            if start % MX_GROUP or (stop % MX_GROUP and stop != qt.numel):
                raise ValueError(f"{name}: MXFP4 range [{start}, {stop}) is not group-aligned")
        elif start % qt.cols or stop % qt.cols:
            raise ValueError(f"{name}: FP8 range [{start}, {stop}) is not row-aligned")
        # the codes first: where the scales follow them (gpt-oss stores each *_scales right after
        # its *_blocks) a streamed file is then read in order
        codes = self.reader.words(qt.codes.name, *self._code_range(start, stop))
        if qt.scheme == "mxfp4":
            s0, s1 = start // MX_GROUP, stop // MX_GROUP
            self.scales = self.scale_words = self.reader.words(qt.scales.name, s0, s1)
        else:
            srow = qt.scale_rows(start // qt.cols, stop // qt.cols)
            _, scols = qt.scale_grid()
            r0, r1 = (int(srow[0]), int(srow[-1]) + 1) if srow.size else (0, 0)
            s0, s1 = r0 * scols, r1 * scols
            self.scale_words = self.reader.words(qt.scales.name, s0, s1)
            raw = self.scale_words
            self.scales = cast_words(raw, qt.scales.dtype, "float32").view(np.float32)
            self.srow = srow - r0
        self.scale_range = (s0, s1)
        return codes

    def prefetch(self, name: str, start: int, stop: int) -> None:
        self.reader.prefetch(self.qt.codes.name, *self._code_range(start, stop))

    def release(self, name: str, start: int, stop: int) -> None:
        self.scales = np.empty(0, self.scales.dtype)
        self.scale_words = np.empty(0, self.scale_words.dtype)
        self.reader.release(self.qt.scales.name, *self.scale_range)
        self.reader.release(self.qt.codes.name, *self._code_range(start, stop))

    def col_block(self) -> int:
        """FP8: columns sharing one scale entry."""
        qt = self.qt
        return qt.cols if qt.block is None else qt.block[1]


class DequantSource:
    """Element-ranged bfloat16 words of a quantized logical tensor (a ``WordSource``).

    ``words(name, start, stop)`` takes the ranges :class:`CodeSource` takes (whole matrices for a
    ``transposed`` layout, whose words come in its read order); the words are a numpy array, or a
    device tensor for a device decoder. After each call :attr:`codes` holds the range's raw codes
    (uint8; packed nibbles for MXFP4), :attr:`stored` their words in the same (stored) order and
    :attr:`code_bytes` their byte count.
    """

    def __init__(self, reader: TensorReader, qt: QuantTensor, decoder: Decoder) -> None:
        self.qt = qt
        self.decoder = decoder
        self.source = CodeSource(reader, qt)
        self.codes: Any = np.empty(0, np.uint8)
        self.stored: Any = np.empty(0, np.uint16)
        self.code_bytes = 0

    def words(self, name: str, start: int, stop: int) -> Any:
        """Dequantized elements ``[start, stop)`` as bfloat16 words (uint16)."""
        src = self.source
        codes = src.words(name, start, stop)
        if self.qt.scheme == "mxfp4":
            out = self.decoder.dequant_mxfp4(codes, src.scales)
        else:
            _, scols = self.qt.scale_grid()
            out = self.decoder.dequant_fp8(
                codes, self.qt.cols, src.scales, src.srow, scols, src.col_block()
            )
        self.codes, self.stored = codes, out
        self.code_bytes = codes.nbytes
        if self.qt.transposed:
            return transpose_matrices(out, self.qt.matrix_rows(), self.qt.cols)
        return out

    def prefetch(self, name: str, start: int, stop: int) -> None:
        self.source.prefetch(name, start, stop)

    def release(self, name: str, start: int, stop: int) -> None:
        self.codes = np.empty(0, np.uint8)
        self.source.release(name, start, stop)


def count_codes(a: DequantSource, b: DequantSource, counts: np.ndarray) -> None:
    """Add (codes that differ, elements changed through their scale only) of the current chunk
    to ``counts`` int64[2], from both sources' codes and dequantized words in stored order."""
    raw, scale_only = a.decoder.quant_counts(
        a.codes, b.codes, a.stored, b.stored, a.qt.scheme == "mxfp4"
    )
    counts += (raw, scale_only)


def transpose_matrices(words: Any, rows: int, cols: int) -> Any:
    """``words`` (numpy array or torch tensor) of whole ``rows`` x ``cols`` matrices, each
    transposed: the flat words of ``[k, cols, rows]``."""
    if isinstance(words, np.ndarray):
        return np.ascontiguousarray(words.reshape(-1, rows, cols).transpose(0, 2, 1)).reshape(-1)
    return words.view(-1, rows, cols).transpose(1, 2).contiguous().view(-1)


def transpose_mask_bits(packed: np.ndarray, n: int, rows: int, cols: int) -> np.ndarray:
    """A packed mask (little bit order) of ``n`` elements in whole ``rows`` x ``cols`` matrices,
    each transposed."""
    bits = np.unpackbits(packed, count=n, bitorder="little")
    return np.packbits(transpose_matrices(bits, rows, cols), bitorder="little")


class ScaleCounter:
    """Scale entries whose stored bits differ between two quantized tensors laid out alike,
    counted from the scales of each chunk while it is held (no pass of its own), each entry once:
    consecutive chunks may share scales, as all chunks of a per-tensor scale do."""

    def __init__(self) -> None:
        self.changed = 0
        self._counted = 0  # scale entries [0, _counted) are counted

    def add(self, a: CodeSource, b: CodeSource) -> None:
        """Counts the current chunk's scales of ``a`` (base) and ``b`` (tuned) not yet counted."""
        s0, s1 = a.scale_range
        skip = max(0, self._counted - s0)
        if s1 > s0 + skip:
            self.changed += int(np.count_nonzero(a.scale_words[skip:] != b.scale_words[skip:]))
            self._counted = s1


def value_source(
    reader: WordSource, quant: QuantTensor | None, threads: int | None = None
) -> WordSource:
    """``reader`` for a stored tensor; for a quantized layout ``quant`` a source of its
    dequantized bfloat16 words (uint16), decoded by :class:`DequantSource` on a
    :class:`CpuDecoder` of ``threads`` threads (None: all) from ``reader`` (a checkpoint reader).
    Its ranges must be cut in whole scale slabs (:func:`quant_step`); each chunk is valid until
    the next one."""
    if quant is None:
        return reader
    assert isinstance(reader, TensorReader), "a quantized layout is decoded from a checkpoint"
    return DequantSource(reader, quant, CpuDecoder(threads))


def value_chunks(
    pair: TensorPair,
    base: WordSource,
    tuned: WordSource,
    chunk_elems: int,
    *,
    compare: str | None = None,
    on_bytes: Callable[[int], object] | None = None,
    cast: CastFn = cast_words,
) -> ChunkStream:
    """:func:`~rlsparse_lib.io.chunks.pair_chunks` of the values every command compares: a
    quantized side (``pair.quant_base`` / ``pair.quant_tuned``; ``base``/``tuned`` must then be
    checkpoint readers) is read as its dequantized bfloat16 words (:func:`value_source`; its
    ``raw`` words are those), in chunks of whole scale slabs near ``chunk_elems``."""
    qb, qt = pair.quant_base, pair.quant_tuned
    if qb is None and qt is None:
        return pair_chunks(
            pair, base, tuned, chunk_elems, compare=compare, on_bytes=on_bytes, cast=cast
        )
    return stream_chunks(
        pair.name,
        pair.numel,
        (value_source(base, qb), value_source(tuned, qt)),
        quant_step(chunk_elems, qb, qt),
        stored=tuple("bfloat16" if q else i.dtype for q, i in ((qb, pair.base), (qt, pair.tuned))),
        compare=compare,
        on_bytes=on_bytes,
        cast=cast,
    )
