"""GGUF checkpoints (llama.cpp files): inventories from the header, tensors read from a local file
or streamed from the hub, quantized blocks decoded by the ``gguf`` package.

A GGUF file lists its tensors with dims fastest-first (``ne[0]`` is the row length); shapes here
are in PyTorch order (reversed) and the flat element order is the same. The header is parsed by
:mod:`rlsparse_lib.io.gguf_header` (from byte ranges: the same code for a local file and for HTTP
Range requests). Tensor data are contiguous at absolute offsets, so:

* ``F32``/``F16``/``BF16``/``F64`` and ``I8``..``I64`` tensors are plain :class:`TensorInfo`
  records read as raw words like safetensors (float tensors compared exactly as stored);
* quantized types (``Q4_0``, ``Q4_1``, ``Q8_0``, K-quants, ``IQ*``, ...) are rows of blocks of
  ``block`` elements in ``type_size`` bytes. Their :class:`TensorInfo` has dtype ``float32``:
  :class:`GGUFFiles` decodes whole blocks with :func:`gguf.quants.dequantize` (the package's
  reference decoder) for any element range, so every command compares the dequantized values;
  :class:`BlockViews` compares the raw blocks of a pair beside them, chunk by chunk in the same
  pass (``quant`` in diff reports);
* a quantized type the ``gguf`` package cannot decode, or a type id it does not know at all, keeps
  its logical shape and is marked not decodable: pairing refuses it by tensor and file unless it
  is excluded.

A llama.cpp split model (``<stem>-00001-of-00003.gguf``) opens from any of its shards as one
checkpoint of all of them (:func:`gguf_shards`); a folder or hub repository holding exactly one
GGUF model (one file or one complete split set) opens as that model (:func:`pick_gguf_model`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import numpy as np

from rlsparse_lib.errors import CheckpointError
from rlsparse_lib.io.gguf_header import GGUFHeader, ReadFn, parse_gguf_header
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
#: a llama.cpp split model's shard name: ``<stem>-00001-of-00003.gguf``
_SHARD = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
#: models named in a refusal (a ``*-GGUF`` repository can hold dozens of quantizations)
_MAX_LISTED = 12


@dataclass(frozen=True)
class BlockEncoding:
    """How a quantized GGUF tensor is stored.

    Attributes:
        scheme: ``gguf:<type name>``, e.g. ``gguf:Q4_1`` (``gguf:type<id>`` for an unknown id).
        qtype: the ``gguf.GGMLQuantizationType`` value (the raw type id).
        block: elements per block.
        type_size: bytes per block (0 for a type id the ``gguf`` package does not know).
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

    @property
    def refusal(self) -> str:
        """Why the tensor cannot be compared (for an undecodable encoding)."""
        if self.type_size == 0:
            return f"{self.scheme} (type id {self.qtype} unknown to the gguf package)"
        return f"{self.scheme} blocks (not decodable by the gguf package)"


def _gguf() -> Any:
    """The ``gguf`` package, imported on first use (it is slow to import; most runs read none)."""
    import gguf

    return gguf


# ---- which files make a model ---------------------------------------------------------------------
def shard_names(name: str) -> list[str]:
    """The files of the GGUF model named ``name`` (a path inside a folder or repository, ``/``
    separated): ``[name]``, or for one shard of a llama.cpp split every shard's name, in order."""
    p = PurePosixPath(name)
    m = _SHARD.match(p.name)
    if m is None:
        return [name]
    count = int(m["count"])
    return [
        str(p.with_name(f"{m['stem']}-{i:05d}-of-{count:05d}.gguf")) for i in range(1, count + 1)
    ]


def gguf_shards(path: Path) -> list[Path]:
    """The files of the local GGUF model ``path``: the file itself, or, for one shard of a
    llama.cpp split (``<stem>-00001-of-00003.gguf``, as ``gguf-split`` and ``GGUFWriter`` name
    them), every shard in order.

    Raises:
        CheckpointError: naming the missing shards of a split.
    """
    files = [path.with_name(PurePosixPath(n).name) for n in shard_names(path.name)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"{path}: split GGUF model is missing {', '.join(missing)}")
    return files


def pick_gguf_model(names: Iterable[str], where: str, how: str) -> list[str] | None:
    """The one GGUF model among ``names`` (files of a folder or repository): its files in shard
    order, or None when there is no ``.gguf`` file.

    Args:
        where: the folder or repository, for messages.
        how: how to pass one file (e.g. ``"pass the file: org/name/<file>"``).

    Raises:
        CheckpointError: listing the models when there are several (e.g. ``Q4_K_M`` and ``Q8_0``
            files of one repository), or naming the missing shards of an incomplete split.
    """
    available = {n for n in names if n.endswith(".gguf")}
    models: dict[str, list[str]] = {}
    for n in sorted(available):
        files = shard_names(n)
        models.setdefault(files[0], files)
    if not models:
        return None
    if len(models) > 1:
        shown = [
            first if len(files) == 1 else f"{first} ({len(files)} shards)"
            for first, files in models.items()
        ]
        more = f", … ({len(shown) - _MAX_LISTED} more)" if len(shown) > _MAX_LISTED else ""
        listed = ", ".join(shown[:_MAX_LISTED]) + more
        raise CheckpointError(
            f"{where} holds {len(models)} GGUF models ({listed}); {how} to pick one"
        )
    (files,) = models.values()
    missing = [f for f in files if f not in available]
    if missing:
        raise CheckpointError(f"{where}: split GGUF model is missing {', '.join(missing)}")
    return files


# ---- inventories ----------------------------------------------------------------------------------
def gguf_inventory(
    header: GGUFHeader, file: Path, size: int
) -> tuple[dict[str, TensorInfo], dict[str, BlockEncoding]]:
    """Tensors (PyTorch shape order) and block encodings of a parsed header of file ``file``
    (``size`` bytes: a tensor that would end past it means a truncated file).

    Raises:
        CheckpointError: naming the file and tensor for a truncated file or a tensor that is not
            whole blocks.
    """
    gguf = _gguf()
    decoders = set(gguf.quants._type_traits)  # the types gguf.quants.dequantize implements
    known = {int(t) for t in gguf.GGMLQuantizationType}
    tensors: dict[str, TensorInfo] = {}
    encodings: dict[str, BlockEncoding] = {}
    for t in header.tensors:
        shape = tuple(reversed(t.dims))
        numel = int(np.prod(t.dims, dtype=np.int64)) if t.dims else 1
        where = f"{file}: tensor '{t.name}'"
        if t.type_id not in known:  # kept: refused by name (tensor and file) unless excluded
            tensors[t.name] = TensorInfo(t.name, "float32", shape, file, t.offset)
            encodings[t.name] = BlockEncoding(f"gguf:type{t.type_id}", t.type_id, 1, 0, False)
            continue
        qtype = gguf.GGMLQuantizationType(t.type_id)
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        if numel % block:
            raise CheckpointError(
                f"{where}: {numel} elements are not whole {qtype.name} blocks of {block}"
            )
        end = t.offset + numel // block * type_size
        if end > size:
            raise CheckpointError(
                f"{where}: file is truncated (tensor ends at byte {end}, file has {size})"
            )
        tensors[t.name] = TensorInfo(
            t.name, PLAIN_TYPES.get(qtype.name, "float32"), shape, file, t.offset
        )
        if qtype.name not in PLAIN_TYPES:
            encodings[t.name] = BlockEncoding(
                f"gguf:{qtype.name}", int(qtype), block, type_size, qtype in decoders
            )
    return tensors, encodings


def read_gguf_at(
    read: ReadFn, size: int, file: Path, first: int = 1 << 16, most: int = 16 << 20
) -> tuple[dict[str, TensorInfo], dict[str, BlockEncoding]]:
    """Inventory of GGUF file ``file`` (``size`` bytes) whose bytes come from ``read(start,
    stop)``: a local file or Range requests, in pieces of ``first`` bytes doubling up to
    ``most``. Only the header is read."""
    return gguf_inventory(parse_gguf_header(read, size, str(file), first, most), file, size)


def read_gguf(path: Path) -> tuple[dict[str, TensorInfo], dict[str, BlockEncoding]]:
    """Inventory of a local GGUF file from its header (no tensor data is read).

    Returns:
        (tensors by name, in PyTorch shape order; the block encoding of every quantized tensor).

    Raises:
        CheckpointError: naming the file (and tensor) for a file that is not GGUF, corrupt or
            truncated.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot open ({exc})") from exc
    try:
        return read_gguf_at(lambda a, b: os.pread(fd, b - a, a), os.fstat(fd).st_size, path)
    finally:
        os.close(fd)


# ---- tensor data ----------------------------------------------------------------------------------
class RawWords(Protocol):
    """Raw words of byte-addressed tensors: :class:`MappedFiles` (local) or
    :class:`~rlsparse_lib.io.hub_stream.RangeFiles` (streamed)."""

    def words(self, info: TensorInfo, start: int, stop: int) -> np.ndarray: ...

    def prefetch(self, info: TensorInfo, start: int, stop: int) -> None: ...

    def release(self, info: TensorInfo, start: int, stop: int) -> None: ...

    def close(self) -> None: ...


class GGUFFiles:
    """Element-ranged words of GGUF tensors: plain types as stored, quantized types as the
    float32 words of their dequantized values (only the blocks covering the range are read and
    decoded).

    The raw blocks behind the last quantized range read are held until that range is released
    (one range per reader: a chunk's own bytes), so that :class:`BlockViews` compares a pair's raw
    blocks chunk by chunk beside its values, with no second read.

    Args:
        encodings: block encodings by tensor name.
        raw: where the bytes come from (default: local memory maps).
    """

    def __init__(self, encodings: dict[str, BlockEncoding], raw: RawWords | None = None) -> None:
        self._enc = encodings
        self._raw: RawWords = MappedFiles() if raw is None else raw
        #: (tensor, start, stop, raw bytes of blocks [start // block, ceil(stop / block)))
        self._held: tuple[TensorInfo, int, int, np.ndarray] | None = None

    def encoding(self, name: str) -> BlockEncoding | None:
        return self._enc.get(name)

    def words(self, info: TensorInfo, start: int, stop: int) -> np.ndarray:
        """Elements ``[start, stop)`` as raw words (``uint32`` of float32 for quantized tensors)."""
        enc = self._enc.get(info.name)
        if enc is None:
            return self._raw.words(info, start, stop)
        blocks = self._raw.words(*_block_range(enc, info, start, stop))
        self._held = None  # drop the previous range before decoding this one
        self._held = (info, start, stop, blocks)
        values = _gguf().quants.dequantize(blocks, enc.qtype).reshape(-1)
        lo = start - start // enc.block * enc.block
        return np.ascontiguousarray(values[lo : lo + stop - start], np.float32).view(np.uint32)

    def held_blocks(self, info: TensorInfo, start: int, stop: int) -> np.ndarray:
        """Raw bytes ``uint8[n, type_size]`` of the blocks of quantized tensor ``info`` whose first
        element lies in ``[start, stop)``, from the range :meth:`words` read last (not released).

        Raises:
            RuntimeError: when ``[start, stop)`` of ``info`` is not the range held (a caller bug).
        """
        held = self._held
        if held is None or held[0] != info or held[1:3] != (start, stop):
            raise RuntimeError(f"{info.name}: raw blocks of [{start}, {stop}) are not held")
        enc = self._enc[info.name]
        skip = -(-start // enc.block) - start // enc.block  # a block begun in the previous chunk
        return held[3].reshape(-1, enc.type_size)[skip:]

    def prefetch(self, info: TensorInfo, start: int, stop: int) -> None:
        enc = self._enc.get(info.name)
        if enc is None:
            self._raw.prefetch(info, start, stop)
        else:
            self._raw.prefetch(*_block_range(enc, info, start, stop))

    def release(self, info: TensorInfo, start: int, stop: int) -> None:
        enc = self._enc.get(info.name)
        if enc is None:
            self._raw.release(info, start, stop)
            return
        held = self._held
        if held is not None and held[0] == info and held[1:3] == (start, stop):
            self._held = None
        self._raw.release(*_block_range(enc, info, start, stop))

    def close(self) -> None:
        self._held = None
        self._raw.close()


def _block_range(
    enc: BlockEncoding, info: TensorInfo, start: int, stop: int
) -> tuple[TensorInfo, int, int]:
    """The raw byte range of the whole blocks covering elements ``[start, stop)`` of ``info``."""
    b0, b1 = start // enc.block, -(-stop // enc.block)
    return enc.raw(info), b0 * enc.type_size, b1 * enc.type_size


class BlockViews:
    """Raw-block view of a pair of quantized GGUF tensors, counted chunk by chunk beside the
    values: :meth:`add` compares the blocks whose first element lies in a chunk while the readers
    still hold that chunk's raw bytes (each block counted exactly once, whatever the chunk
    boundaries), :meth:`view` gives the counts.

    Make one with :meth:`of`.
    """

    def __init__(
        self, base: GGUFFiles, tuned: GGUFFiles, ib: TensorInfo, it: TensorInfo, enc: BlockEncoding
    ) -> None:
        self._sides = ((base, ib), (tuned, it))
        self._enc = enc
        self.raw_n = 0
        self.raw_changed = 0

    @classmethod
    def of(
        cls, base: GGUFFiles | None, tuned: GGUFFiles | None, ib: TensorInfo, it: TensorInfo
    ) -> BlockViews | None:
        """The view of a pair (``base``/``tuned``: each side's GGUF reader, None for another
        format; ``ib``/``it``: their infos), or None unless both sides store the tensor in the
        same quantized type."""
        eb = None if base is None else base.encoding(ib.name)
        et = None if tuned is None else tuned.encoding(it.name)
        if base is None or tuned is None or eb is None or et is None or eb.scheme != et.scheme:
            return None
        return cls(base, tuned, ib, it, eb)

    def add(self, start: int, stop: int) -> None:
        """Compare, byte for byte, the blocks whose first element lies in ``[start, stop)`` (the
        chunk both readers just read and have not released)."""
        a, b = (files.held_blocks(info, start, stop) for files, info in self._sides)
        self.raw_n += a.shape[0]
        self.raw_changed += int(np.count_nonzero((a != b).any(axis=1)))

    def view(self) -> dict:
        """``{"scheme", "decoded": "float32", "block": [1, block], "raw_n", "raw_changed",
        "scales_n": 0, "scales_changed": 0, "scale_only_changed": 0}`` (GGUF scales live inside
        the blocks, so a changed scale is a changed block)."""
        return {
            "scheme": self._enc.scheme,
            "decoded": "float32",
            "block": [1, self._enc.block],
            "raw_n": self.raw_n,
            "raw_changed": self.raw_changed,
            "scales_n": 0,
            "scales_changed": 0,
            "scale_only_changed": 0,
        }
