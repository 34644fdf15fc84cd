"""safetensors files: validated header parsing, zero-copy mmap reads and a streaming writer.

The format is an 8-byte little-endian header length N, an N-byte JSON header mapping each tensor
name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the data block
that follows the header) and an optional ``"__metadata__"`` string map, then the data block.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from rlsparse_lib.atomic import atomic_path
from rlsparse_lib.errors import CheckpointError
from rlsparse_lib.io.dtypes import DTYPE_BITS, SAFETENSORS_DTYPES, nbytes_of, word_dtype
from rlsparse_lib.io.tensor_info import TensorInfo

_MAX_HEADER = 100 * 1024 * 1024
_PAGE = mmap.PAGESIZE
# Released ranges near each other are gathered into one MADV_DONTNEED of at most this many bytes:
# a call costs a TLB flush on every core the process runs on, and a quantized model has two
# small tensors (codes, scales) per weight. Two spans are gathered at a time, as a DeepSeek shard
# stores its scales apart from the codes (safetensors groups tensors by dtype). Bounds the pages
# kept past their release: 2 x 8 MiB.
RELEASE_BATCH = 8 << 20
_RELEASE_SPANS = 2
_DTYPE_CODES = {v: k for k, v in SAFETENSORS_DTYPES.items()}


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate a safetensors header without reading tensor data.

    Returns:
        (tensors by name, ``__metadata__`` map).

    Raises:
        CheckpointError: naming the file (and tensor) when the header is corrupt or the file is
            shorter than the header says (truncated download).
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            hlen = header_length(path, fh.read(8), size)
            header_bytes = fh.read(hlen)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return parse_header(path, header_bytes, size)


def header_length(path: Path, raw_len: bytes, size: int) -> int:
    """The header length N from a safetensors file's first 8 bytes (``size``: the file's bytes).

    Raises:
        CheckpointError: naming ``path`` for a too-short file or an impossible length.
    """
    if len(raw_len) < 8:
        raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes)")
    (hlen,) = struct.unpack("<Q", raw_len[:8])
    if hlen == 0 or hlen > _MAX_HEADER or hlen > size - 8:
        raise CheckpointError(
            f"{path}: corrupt safetensors header (header length {hlen}, file size {size})"
        )
    return int(hlen)


def parse_header(
    path: Path, header_bytes: bytes, size: int
) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Validate the JSON header (``header_bytes``, the N bytes after the 8-byte length) of a
    safetensors file of ``size`` bytes named ``path`` (a local file or a remote one's key).

    Raises:
        CheckpointError: as for :func:`read_header`.
    """
    hlen = len(header_bytes)
    try:
        header = json.loads(header_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt safetensors header (invalid JSON: {exc})") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + hlen
    data_size = size - data_start
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        tensors[name] = _parse_entry(path, name, entry, data_start, data_size)
    return tensors, {str(k): str(v) for k, v in metadata.items()}


def _parse_entry(
    path: Path, name: str, entry: object, data_start: int, data_size: int
) -> TensorInfo:
    where = f"{path}: tensor '{name}'"
    if not isinstance(entry, dict):
        raise CheckpointError(f"{where}: corrupt header entry")
    code = entry.get("dtype")
    if code not in SAFETENSORS_DTYPES:
        raise CheckpointError(f"{where}: unsupported dtype {code!r}")
    shape = entry.get("shape")
    offsets = entry.get("data_offsets")
    if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)):
        raise CheckpointError(f"{where}: corrupt shape {shape!r}")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) for o in offsets)
        and 0 <= offsets[0] <= offsets[1]
    ):
        raise CheckpointError(f"{where}: corrupt data_offsets {offsets!r}")
    dtype = SAFETENSORS_DTYPES[code]
    expected = nbytes_of(dtype, math.prod(shape))  # ceil(numel * bits / 8): F4/F6 are packed
    if offsets[1] - offsets[0] != expected:
        raise CheckpointError(
            f"{where}: data_offsets span {offsets[1] - offsets[0]} bytes but shape {shape} "
            f"of {dtype} ({DTYPE_BITS[dtype]} bits) needs {expected}"
        )
    if offsets[1] > data_size:
        raise CheckpointError(
            f"{where}: file is truncated (tensor ends at byte {data_start + offsets[1]}, "
            f"file has {data_start + data_size})"
        )
    return TensorInfo(name, dtype, tuple(shape), path, data_start + offsets[0])


class MappedFiles:
    """Read-only memory maps of safetensors files, opened on first use.

    Reads are zero-copy views into the page cache; :meth:`release` drops a range from this
    process's resident set (``MADV_DONTNEED``) so a streaming pass over a model keeps RSS bounded.
    Releases are gathered: at most two pending spans of at most :data:`RELEASE_BATCH` bytes.
    """

    def __init__(self) -> None:
        self._maps: dict[Path, mmap.mmap] = {}
        self._pending: list[tuple[mmap.mmap, int, int]] = []  # (map, lo, hi), oldest first

    def _map(self, path: Path) -> mmap.mmap:
        mm = self._maps.get(path)
        if mm is None:
            try:
                with path.open("rb") as fh:
                    mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError) as exc:
                raise CheckpointError(f"{path}: cannot map file: {exc}") from exc
            self._maps[path] = mm
        return mm

    def words(self, info: TensorInfo, start: int, stop: int) -> np.ndarray:
        """Elements ``[start, stop)`` of ``info`` (flat, C order) as raw unsigned words."""
        word = word_dtype(info.dtype)
        byte0 = info.offset + start * info.itemsize
        mm = self._map(info.file)
        if byte0 % word.itemsize:  # unaligned data: copy so numeric kernels get aligned memory
            raw = np.frombuffer(
                mm, dtype=np.uint8, count=(stop - start) * word.itemsize, offset=byte0
            )
            return raw.copy().view(word)
        return np.frombuffer(mm, dtype=word, count=stop - start, offset=byte0)

    def prefetch(self, info: TensorInfo, start: int, stop: int) -> None:
        """Ask the kernel to start reading a range ahead of use (helps cold caches)."""
        self._advise(info, start, stop, mmap.MADV_WILLNEED)

    def release(self, info: TensorInfo, start: int, stop: int) -> None:
        """Drop a range's pages from this process's RSS (they stay in the page cache): at once
        when it spans :data:`RELEASE_BATCH`, otherwise with a pending span it lies near (pages
        between them are dropped too; a read maps them again) or as a new one, which drops the
        oldest of two."""
        mm, lo, hi = self._span(info, start, stop)
        if hi <= lo:
            return
        if hi - lo >= RELEASE_BATCH:
            self._madvise(mm, mmap.MADV_DONTNEED, lo, hi)
            return
        for k, (pm, plo, phi) in enumerate(self._pending):
            if pm is mm and max(hi, phi) - min(lo, plo) <= RELEASE_BATCH:
                self._pending[k] = (mm, min(lo, plo), max(hi, phi))
                return
        if len(self._pending) == _RELEASE_SPANS:
            self._drop(*self._pending.pop(0))
        self._pending.append((mm, lo, hi))

    def flush(self) -> None:
        """Drop the pending released spans now."""
        while self._pending:
            self._drop(*self._pending.pop(0))

    def _drop(self, mm: mmap.mmap, lo: int, hi: int) -> None:
        if not mm.closed:
            self._madvise(mm, mmap.MADV_DONTNEED, lo, hi)

    def _advise(self, info: TensorInfo, start: int, stop: int, advice: int) -> None:
        mm, lo, hi = self._span(info, start, stop)
        if hi > lo:
            self._madvise(mm, advice, lo, hi)

    def _span(self, info: TensorInfo, start: int, stop: int) -> tuple[mmap.mmap, int, int]:
        """The map of a range of ``info`` and its bytes ``[lo, hi)``, ``lo`` page-aligned."""
        mm = self._map(info.file)
        lo = (info.offset + start * info.itemsize) // _PAGE * _PAGE
        return mm, lo, min(len(mm), info.offset + stop * info.itemsize)

    @staticmethod
    def _madvise(mm: mmap.mmap, advice: int, lo: int, hi: int) -> None:
        mm.madvise(advice, lo, hi - lo)

    def close(self) -> None:
        self.flush()
        for mm in self._maps.values():
            # a numpy view may still be alive: then the map closes when the view dies
            with contextlib.suppress(BufferError):
                mm.close()
        self._maps.clear()


class SafetensorsWriter:
    """Write a safetensors file tensor by tensor without holding them all in memory.

    All tensor specs are known up front, so the header is written first and each tensor's bytes
    are appended in order. The file appears under its final name only after :meth:`close`
    succeeds (atomic rename); on error nothing is left behind.

    Metadata known only at the end (counts, densities) is passed to :meth:`set_metadata`
    before closing; ``metadata_reserve`` bytes of header space are kept free for it.

    Example:
        >>> with SafetensorsWriter(path, [("a", "uint8", (4,))], {"k": "v"}) as w:
        ...     w.write("a", np.zeros(4, np.uint8))
    """

    def __init__(
        self,
        path: str | Path,
        specs: Iterable[tuple[str, str, tuple[int, ...]]],
        metadata: dict[str, str] | None = None,
        metadata_reserve: int = 0,
    ) -> None:
        self.path = Path(path)
        self._specs = list(specs)
        self._entries: dict[str, object] = {}
        offset = 0
        self._sizes: dict[str, int] = {}
        for name, dtype, shape in self._specs:
            nbytes = nbytes_of(dtype, math.prod(shape))
            self._entries[name] = {
                "dtype": _DTYPE_CODES[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + nbytes],
            }
            self._sizes[name] = nbytes
            offset += nbytes
        raw = self._header(metadata)
        raw += b" " * (metadata_reserve + (-(len(raw) + metadata_reserve) % 8))
        self._header_len = len(raw)
        self._final_metadata: dict[str, str] | None = None
        self._order = [s[0] for s in self._specs]
        self._next = 0
        self._written = 0
        self._ctx = atomic_path(self.path)
        tmp = self._ctx.__enter__()
        self._fh: BinaryIO = tmp.open("wb")
        self._fh.write(struct.pack("<Q", len(raw)) + raw)
        self._skip_empty()

    def _header(self, metadata: dict[str, str] | None) -> bytes:
        header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
        header.update(self._entries)
        return json.dumps(header, separators=(",", ":")).encode()

    def set_metadata(self, metadata: dict[str, str]) -> None:
        """Replace the metadata when the file is closed (must fit the reserved space)."""
        self._final_metadata = metadata

    def write(self, name: str, data: np.ndarray) -> None:
        """Append (part of) tensor ``name``'s bytes; tensors must come in spec order."""
        if self._next >= len(self._order) or self._order[self._next] != name:
            expected = self._order[self._next] if self._next < len(self._order) else None
            raise ValueError(f"expected data for tensor {expected!r}, got {name!r}")
        buf = np.ascontiguousarray(data).view(np.uint8)
        self._fh.write(buf.data.cast("B"))
        self._written += buf.size
        if self._written > self._sizes[name]:
            raise ValueError(f"too many bytes for tensor {name!r}")
        if self._written == self._sizes[name]:
            self._next += 1
            self._written = 0
            self._skip_empty()

    def _skip_empty(self) -> None:
        while self._next < len(self._order) and self._sizes[self._order[self._next]] == 0:
            self._next += 1

    def close(self, ok: bool = True) -> None:
        """Finish the file (rename into place) or, with ``ok=False``, discard it."""
        self._fh.close()
        self._skip_empty()
        if ok and self._next != len(self._order):
            ok = False
            error: BaseException | None = ValueError(
                f"{self.path}: tensor {self._order[self._next]!r} was not written completely"
            )
        else:
            error = None
        if ok and self._final_metadata is not None:
            raw = self._header(self._final_metadata)
            if len(raw) > self._header_len:
                ok, error = (
                    False,
                    ValueError(f"{self.path}: metadata outgrew the reserved header space"),
                )
            else:
                with open(self._fh.name, "r+b") as fh:
                    fh.seek(8)
                    fh.write(raw + b" " * (self._header_len - len(raw)))
        if ok:
            self._ctx.__exit__(None, None, None)
        else:
            exc = error or RuntimeError("aborted")
            with contextlib.suppress(BaseException):
                self._ctx.__exit__(type(exc), exc, None)
            if error is not None:
                raise error

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)
