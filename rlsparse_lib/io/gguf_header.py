"""The header of a GGUF file, parsed from byte ranges (a local file or HTTP Range requests).

Hand-written on purpose: ``gguf.GGUFReader`` takes a local path and memory-maps the whole file,
so it cannot read a file streamed from the hub, and it raises on a tensor type id it does not
know before saying which tensor holds it. This parser needs only a ``read(start, stop)`` callback,
fetches the header sequentially in growing pieces (the key/value metadata can be megabytes of
tokenizer arrays: they are skipped, not decoded), and returns every tensor's raw type id so the
caller can name the tensor. Tests check it against ``gguf.GGUFReader`` on the same files.

Layout (little-endian; versions 2 and 3): ``b"GGUF"``, ``u32`` version, ``u64`` tensor count,
``u64`` key/value count; the key/value pairs (key: ``u64`` length + UTF-8 bytes; ``u32`` value
type; value); per tensor: name, ``u32`` n_dims, ``u64`` dims (fastest first), ``u32`` type id,
``u64`` offset relative to the data section; the data section starts at the next multiple of
``general.alignment`` (``u32``, default 32).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from rlsparse_lib.errors import CheckpointError

__all__ = ["GGUFHeader", "GGUFTensorEntry", "parse_gguf_header"]

#: ``read(start, stop) -> bytes`` of the file
ReadFn = Callable[[int, int], bytes]

_MAGIC = b"GGUF"
_VERSIONS = (2, 3)
_DEFAULT_ALIGNMENT = 32
#: value types with a fixed size: id -> (struct format, bytes)
_SCALARS: dict[int, tuple[str, int]] = {
    0: ("<B", 1),
    1: ("<b", 1),
    2: ("<H", 2),
    3: ("<h", 2),
    4: ("<I", 4),
    5: ("<i", 4),
    6: ("<f", 4),
    7: ("<?", 1),
    10: ("<Q", 8),
    11: ("<q", 8),
    12: ("<d", 8),
}
_STRING, _ARRAY = 8, 9
#: no real tensor has more dims (ggml has 4); a larger count means a corrupt header
_MAX_DIMS = 16


@dataclass(frozen=True)
class GGUFTensorEntry:
    """One tensor info record.

    Attributes:
        name: tensor name.
        dims: element counts, fastest-varying first (GGUF's ``ne``; PyTorch order is reversed).
        type_id: the raw ggml type id (may be unknown to the ``gguf`` package).
        offset: absolute byte offset of the tensor's data in the file.
    """

    name: str
    dims: tuple[int, ...]
    type_id: int
    offset: int


@dataclass(frozen=True)
class GGUFHeader:
    """A parsed GGUF header: ``version``, ``alignment``, ``data_offset`` (absolute start of the
    data section), ``tensors`` (in file order) and ``header_bytes`` (bytes read to parse it)."""

    version: int
    alignment: int
    data_offset: int
    tensors: tuple[GGUFTensorEntry, ...]
    header_bytes: int


class _Cursor:
    """Sequential reads over ``read``: fetches ahead in pieces growing from ``first`` bytes,
    doubling up to ``most``, and keeps only the bytes not consumed yet."""

    def __init__(self, read: ReadFn, size: int, where: str, first: int, most: int) -> None:
        self._read, self.size, self.where = read, size, where
        self._step, self._most = first, most
        self._buf = b""
        self._base = 0  # file offset of _buf[0]
        self.pos = 0  # file offset of the next byte to parse
        self.fetched = 0

    def need(self, n: int) -> None:
        """Make bytes ``[pos, pos + n)`` available (raises past the end of the file)."""
        end = self.pos + n
        have = self._base + len(self._buf)
        if end <= have:
            return
        if end > self.size:
            raise CheckpointError(
                f"{self.where}: truncated GGUF header (needs byte {end}, file has {self.size})"
            )
        hi = min(self.size, max(end, have + self._step))
        self._step = min(self._most, self._step * 2)
        piece = bytes(self._read(have, hi))
        if len(piece) != hi - have:
            raise CheckpointError(f"{self.where}: short read of bytes {have}-{hi}")
        self.fetched += len(piece)
        self._buf = self._buf[self.pos - self._base :] + piece
        self._base = self.pos

    def take(self, n: int) -> bytes:
        self.need(n)
        lo = self.pos - self._base
        self.pos += n
        return self._buf[lo : lo + n]

    def unpack(self, fmt: str, n: int) -> int | float | bool:
        self.need(n)
        value = struct.unpack_from(fmt, self._buf, self.pos - self._base)[0]
        self.pos += n
        return value

    def string(self, what: str) -> str:
        n = int(self.unpack("<Q", 8))
        if n > self.size:
            raise CheckpointError(f"{self.where}: corrupt GGUF header ({what} of {n} bytes)")
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CheckpointError(f"{self.where}: corrupt GGUF header ({what}: {exc})") from None

    def skip_strings(self, count: int) -> None:
        """Skip ``count`` strings (a tokenizer array) without decoding them."""
        for _ in range(count):
            n = int(self.unpack("<Q", 8))
            if n > self.size:
                raise CheckpointError(f"{self.where}: corrupt GGUF header (string of {n} bytes)")
            self.need(n)
            self.pos += n


def _skip_value(cur: _Cursor, vtype: int, key: str, depth: int = 0) -> int | float | bool | None:
    """Consume one value of type ``vtype``; scalars are returned, strings and arrays skipped."""
    if vtype in _SCALARS:
        fmt, n = _SCALARS[vtype]
        return cur.unpack(fmt, n)
    if vtype == _STRING:
        cur.skip_strings(1)
        return None
    if vtype == _ARRAY and depth < 4:
        itype = int(cur.unpack("<I", 4))
        count = int(cur.unpack("<Q", 8))
        if itype in _SCALARS:
            nbytes = count * _SCALARS[itype][1]
            cur.need(nbytes)
            cur.pos += nbytes
        elif itype == _STRING:
            cur.skip_strings(count)
        else:
            for _ in range(count):
                _skip_value(cur, itype, key, depth + 1)
        return None
    raise CheckpointError(f"{cur.where}: corrupt GGUF header (key '{key}' has value type {vtype})")


def parse_gguf_header(
    read: ReadFn, size: int, where: str, first: int = 1 << 16, most: int = 16 << 20
) -> GGUFHeader:
    """Parse the header of a GGUF file of ``size`` bytes read through ``read(start, stop)``.

    Args:
        where: the file's name for messages.
        first, most: the first piece fetched and the largest (pieces double in between).

    Raises:
        CheckpointError: naming ``where`` for a file that is not GGUF, big-endian, of an
            unsupported version, truncated or corrupt.
    """
    cur = _Cursor(read, size, where, first, most)
    if size < 24 or cur.take(4) != _MAGIC:
        raise CheckpointError(f"{where}: not a GGUF file (no GGUF magic)")
    version = int(cur.unpack("<I", 4))
    if version & 0xFFFF == 0 and version:
        raise CheckpointError(f"{where}: big-endian GGUF file (not supported)")
    if version not in _VERSIONS:
        raise CheckpointError(f"{where}: GGUF version {version} (supported: 2, 3)")
    n_tensors = int(cur.unpack("<Q", 8))
    n_kv = int(cur.unpack("<Q", 8))
    if n_tensors > size // 24 or n_kv > size // 12:  # each record takes at least that many bytes
        raise CheckpointError(f"{where}: corrupt GGUF header ({n_tensors} tensors, {n_kv} keys)")
    alignment = _DEFAULT_ALIGNMENT
    for _ in range(n_kv):
        key = cur.string("a key")
        vtype = int(cur.unpack("<I", 4))
        value = _skip_value(cur, vtype, key)
        if key == "general.alignment":
            if vtype != 4 or not isinstance(value, int) or value <= 0 or value & (value - 1):
                raise CheckpointError(f"{where}: general.alignment {value!r} is not a power of 2")
            alignment = value
    entries: list[tuple[str, tuple[int, ...], int, int]] = []
    for _ in range(n_tensors):
        name = cur.string("a tensor name")
        n_dims = int(cur.unpack("<I", 4))
        if n_dims > _MAX_DIMS:
            raise CheckpointError(f"{where}: tensor '{name}': corrupt header ({n_dims} dims)")
        dims = struct.unpack(f"<{n_dims}Q", cur.take(8 * n_dims))
        type_id = int(cur.unpack("<I", 4))
        offset = int(cur.unpack("<Q", 8))
        entries.append((name, tuple(int(d) for d in dims), type_id, offset))
    data_offset = -(-cur.pos // alignment) * alignment
    names: set[str] = set()
    tensors = []
    for name, dims, type_id, offset in entries:
        if name in names:
            raise CheckpointError(f"{where}: tensor '{name}' is listed twice")
        names.add(name)
        tensors.append(GGUFTensorEntry(name, dims, type_id, data_offset + offset))
    return GGUFHeader(version, alignment, data_offset, tuple(tensors), cur.fetched)
