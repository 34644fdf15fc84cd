"""GGUF checkpoints (llama.cpp files), read through the ``gguf`` package's memory-mapped reader.

A GGUF file lists its tensors with dims fastest-first (``ne[0]`` is the row length); shapes here
are in PyTorch order (reversed) and the flat element order is the same. Tensor data are
contiguous at absolute offsets, so:

* ``F32``/``F16``/``BF16``/``F64`` and ``I8``..``I64`` tensors are plain :class:`TensorInfo`
  records read as raw words like safetensors (float tensors compared exactly as stored);
* quantized types (``Q4_0``, ``Q4_1``, ``Q8_0``, K-quants, ``IQ*``, ...) are rows of blocks of
  ``block`` elements in ``type_size`` bytes. Their :class:`TensorInfo` has dtype ``float32``:
  :class:`GGUFFiles` decodes whole blocks with :func:`gguf.quants.dequantize` (the package's
  reference decoder) for any element range, so every command compares the dequantized values;
  :func:`block_views` compares the raw blocks of a pair beside them (``quant`` in diff reports);
* a quantized type the ``gguf`` package cannot decode keeps its logical shape and is marked not
  decodable: pairing refuses it by name unless it is excluded.

A llama.cpp split model (``<stem>-00001-of-00003.gguf``) opens from any of its shards as one
checkpoint of all of them (:func:`gguf_shards`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlsparse_lib.errors import CheckpointError
from rlsparse_lib.io.safetensors_io import MappedFiles
from rlsparse_lib.io.tensor_info import TensorInfo

#: GGUF types stored as plain little-endian words -> torch-style dtype name
PLAIN_TYPES: dict[str, str] = {
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F64": "float64",
    "I8": "int8",
    "I16": "int16",
    "I32": "int32",
    "I64": "int64",
}
#: raw blocks compared per step by :func:`block_views` (bounded memory)
_BLOCKS_PER_STEP = 1 << 18
#: a llama.cpp split model's shard name: ``<stem>-00001-of-00003.gguf``
_SHARD = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


@dataclass(frozen=True)
class BlockEncoding:
    """How a quantized GGUF tensor is stored.

    Attributes:
        scheme: ``gguf:<type name>``, e.g. ``gguf:Q4_1``.
        qtype: the ``gguf.GGMLQuantizationType`` value.
        block: elements per block.
        type_size: bytes per block.
        decodable: whether :func:`gguf.quants.dequantize` implements the type.
    """

    scheme: str
    qtype: int
    block: int
    type_size: int
    decodable: bool

    def raw(self, info: TensorInfo) -> TensorInfo:
        """The tensor's raw bytes as a ``uint8[numel / block * type_size]`` record."""
        return TensorInfo(
            info.name, "uint8", (info.numel // self.block * self.type_size,), info.file, info.offset
        )


def _gguf() -> Any:
    try:
        import gguf
    except ImportError as exc:  # gguf ships with the train extra
        raise CheckpointError(
            "reading .gguf files needs the gguf package (pip install gguf, or rlsparse[train])"
        ) from exc
    return gguf


def gguf_shards(path: Path) -> list[Path]:
    """The files of the GGUF model ``path``: the file itself, or, for one shard of a llama.cpp
    split (``<stem>-00001-of-00003.gguf``, as ``gguf-split`` and ``GGUFWriter`` name them), every
    shard in order.

    Raises:
        CheckpointError: naming the missing shards of a split.
    """
    m = _SHARD.match(path.name)
    if m is None:
        return [path]
    count = int(m["count"])
    files = [
        path.with_name(f"{m['stem']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)
    ]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"{path}: split GGUF model is missing {', '.join(missing)}")
    return files


def read_gguf(path: Path) -> tuple[dict[str, TensorInfo], dict[str, BlockEncoding]]:
    """Inventory of a GGUF file from its header (no tensor data is read).

    Returns:
        (tensors by name, in PyTorch shape order; the block encoding of every quantized tensor).

    Raises:
        CheckpointError: naming the file (and tensor) for a file that is not GGUF, corrupt,
            truncated, or holds a type id the ``gguf`` package does not know.
    """
    gguf = _gguf()
    try:
        reader = gguf.GGUFReader(path, "r")
    except (ValueError, OSError, IndexError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: not a readable GGUF file ({exc})") from exc
    size = path.stat().st_size
    decoders = set(gguf.quants._type_traits)  # the types gguf.quants.dequantize implements
    tensors: dict[str, TensorInfo] = {}
    encodings: dict[str, BlockEncoding] = {}
    for t in reader.tensors:
        qtype = gguf.GGMLQuantizationType(t.tensor_type)
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        where = f"{path}: tensor '{t.name}'"
        if int(t.n_elements) % block:
            raise CheckpointError(
                f"{where}: {t.n_elements} elements are not whole {qtype.name} blocks of {block}"
            )
        if int(t.data_offset) + int(t.n_bytes) > size:
            raise CheckpointError(
                f"{where}: file is truncated (tensor ends at byte "
                f"{int(t.data_offset) + int(t.n_bytes)}, file has {size})"
            )
        dtype = PLAIN_TYPES.get(qtype.name, "float32")
        tensors[t.name] = TensorInfo(t.name, dtype, shape, path, int(t.data_offset))
        if qtype.name not in PLAIN_TYPES:
            encodings[t.name] = BlockEncoding(
                f"gguf:{qtype.name}", int(qtype), block, type_size, qtype in decoders
            )
    del reader  # drop the package's whole-file memory map
    return tensors, encodings


class GGUFFiles:
    """Element-ranged words of GGUF tensors: plain types as stored (zero-copy views), quantized
    types as the float32 words of their dequantized values (only the blocks covering the range are
    read and decoded)."""

    def __init__(self, encodings: dict[str, BlockEncoding]) -> None:
        self._enc = encodings
        self._maps = MappedFiles()

    def words(self, info: TensorInfo, start: int, stop: int) -> np.ndarray:
        """Elements ``[start, stop)`` as raw words (``uint32`` of float32 for quantized tensors)."""
        enc = self._enc.get(info.name)
        if enc is None:
            return self._maps.words(info, start, stop)
        b0, b1 = start // enc.block, -(-stop // enc.block)
        raw = self._maps.words(enc.raw(info), b0 * enc.type_size, b1 * enc.type_size)
        values = _gguf().quants.dequantize(raw, enc.qtype).reshape(-1)
        lo = start - b0 * enc.block
        return np.ascontiguousarray(values[lo : lo + stop - start], np.float32).view(np.uint32)

    def prefetch(self, info: TensorInfo, start: int, stop: int) -> None:
        self._maps.prefetch(*self._raw_range(info, start, stop))

    def release(self, info: TensorInfo, start: int, stop: int) -> None:
        self._maps.release(*self._raw_range(info, start, stop))

    def _raw_range(self, info: TensorInfo, start: int, stop: int) -> tuple[TensorInfo, int, int]:
        enc = self._enc.get(info.name)
        if enc is None:
            return info, start, stop
        b0, b1 = start // enc.block, -(-stop // enc.block)
        return enc.raw(info), b0 * enc.type_size, b1 * enc.type_size

    def close(self) -> None:
        self._maps.close()


def block_views(
    base: BlockEncoding | None,
    tuned: BlockEncoding | None,
    ib: TensorInfo,
    it: TensorInfo,
    numel: int,
) -> dict | None:
    """Raw-block view of a pair of quantized GGUF tensors (``base``/``tuned``: each side's
    encoding, None for a plain tensor; ``ib``/``it``: their infos; ``numel``: elements compared):
    the blocks of the compared elements compared byte for byte, streamed ``_BLOCKS_PER_STEP``
    blocks at a time.

    Returns:
        ``{"scheme", "decoded": "float32", "block": [1, block], "raw_n", "raw_changed", "scales_n": 0,
        "scales_changed": 0, "scale_only_changed": 0}`` (GGUF scales live inside the blocks, so
        a changed scale is a changed block), or None unless both sides store the tensor in the
        same quantized type.
    """
    if base is None or tuned is None or base.scheme != tuned.scheme:
        return None
    eb = base
    n_blocks = numel // eb.block
    changed = 0
    maps = MappedFiles()
    try:
        raw_b, raw_t = eb.raw(ib), tuned.raw(it)
        for b0 in range(0, n_blocks, _BLOCKS_PER_STEP):
            b1 = min(n_blocks, b0 + _BLOCKS_PER_STEP)
            lo, hi = b0 * eb.type_size, b1 * eb.type_size
            a = maps.words(raw_b, lo, hi).reshape(-1, eb.type_size)
            b = maps.words(raw_t, lo, hi).reshape(-1, eb.type_size)
            changed += int(np.count_nonzero((a != b).any(axis=1)))
            del a, b
            maps.release(raw_b, lo, hi)
            maps.release(raw_t, lo, hi)
    finally:
        maps.close()
    return {
        "scheme": eb.scheme,
        "decoded": "float32",
        "block": [1, eb.block],
        "raw_n": n_blocks,
        "raw_changed": changed,
        "scales_n": 0,
        "scales_changed": 0,
        "scale_only_changed": 0,
    }
