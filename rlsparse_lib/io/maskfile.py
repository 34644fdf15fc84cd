"""Bit-packed mask files: one uint8 tensor per parameter in a safetensors file.

Bit order: element i of the flattened (C-order) tensor is bit ``i % 8`` (least significant first)
of byte ``i // 8``, i.e. ``numpy.packbits(m.ravel(), bitorder="little")``. The safetensors
``__metadata__`` key ``rlsparse_mask`` holds a JSON document::

    {"version": 1, "rule": {"kind": "bitwise"|"abs"|"rel", "tol": float},
     "sources": {"base": {...}, "tuned": {...}},      # source, fingerprint (any JSON)
     "shapes": {name: [d0, d1, ...]},                  # shape of each mask (compared region)
     "n_set": {name: int}, "n_total": int, "n_set_total": int, "density": float}
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rlsparse_lib.errors import CheckpointError
from rlsparse_lib.io.safetensors_io import MappedFiles, SafetensorsWriter, read_header

META_KEY = "rlsparse_mask"
_RESERVE_PER_TENSOR = 24
_RESERVE_BASE = 16384


def packed_size(numel: int) -> int:
    return (numel + 7) // 8


def pack_mask(mask: np.ndarray) -> np.ndarray:
    """bool array (any shape) -> uint8[ceil(n/8)] in the file's bit order."""
    return np.packbits(np.asarray(mask, bool).ravel(), bitorder="little")


def unpack_mask(packed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """uint8[ceil(n/8)] -> bool array of ``shape``."""
    n = math.prod(shape)
    return np.unpackbits(packed, count=n, bitorder="little").view(bool).reshape(shape)


class MaskWriter:
    """Stream packed masks into a mask file; counts and density are added on close.

    The file appears under its name only when complete (temporary file, then rename).
    """

    def __init__(
        self, path: str | Path, shapes: dict[str, tuple[int, ...]], rule: dict, sources: dict
    ) -> None:
        self.path = Path(path)
        self.shapes = {k: tuple(v) for k, v in shapes.items()}
        self.n_set = dict.fromkeys(self.shapes, 0)
        self._doc = {"version": 1, "rule": rule, "sources": sources, "shapes": self.shapes}
        specs = [(name, "uint8", (packed_size(math.prod(s)),)) for name, s in self.shapes.items()]
        reserve = _RESERVE_BASE + sum(len(n) + _RESERVE_PER_TENSOR for n in self.shapes)
        self._writer = SafetensorsWriter(path, specs, {META_KEY: json.dumps(self._doc)}, reserve)

    def write(self, name: str, packed: np.ndarray) -> None:
        """Append packed bytes of tensor ``name`` (whole, or the next byte-aligned chunk)."""
        self.n_set[name] += int(np.bitwise_count(packed).sum(dtype=np.int64))
        self._writer.write(name, packed)

    def close(self, ok: bool = True) -> None:
        if ok:
            total = sum(math.prod(s) for s in self.shapes.values())
            n_set = sum(self.n_set.values())
            doc = dict(
                self._doc,
                n_set=self.n_set,
                n_total=total,
                n_set_total=n_set,
                density=n_set / total if total else 0.0,
            )
            self._writer.set_metadata({META_KEY: json.dumps(doc)})
        self._writer.close(ok)

    def __enter__(self) -> MaskWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)


@dataclass
class MaskFile:
    """A mask file opened for reading (memory-mapped)."""

    path: Path
    meta: dict
    _files: MappedFiles
    _infos: dict

    @classmethod
    def open(cls, path: str | Path) -> MaskFile:
        path = Path(path)
        if path.is_dir():
            raise CheckpointError(f"{path}: a folder, not a mask file (a .mask.safetensors file)")
        if not path.is_file():
            raise CheckpointError(f"{path}: no such mask file")
        try:
            infos, metadata = read_header(path)
        except CheckpointError as exc:
            why = str(exc).removeprefix(f"{path}: ")
            raise CheckpointError(f"{path}: not a safetensors mask file ({why})") from exc
        if META_KEY not in metadata:
            raise CheckpointError(
                f"{path}: not an rlsparse mask file (a safetensors file without "
                f"'{META_KEY}' metadata: a checkpoint?)"
            )
        try:
            meta = json.loads(metadata[META_KEY])
            meta["shapes"] = {k: tuple(v) for k, v in meta["shapes"].items()}
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{path}: corrupt mask metadata ({exc!r})") from exc
        for name, shape in meta["shapes"].items():
            info = infos.get(name)
            if info is None or info.dtype != "uint8" or info.numel != packed_size(math.prod(shape)):
                raise CheckpointError(
                    f"{path}: tensor '{name}' does not match its mask shape {list(shape)}"
                )
        return cls(path, meta, MappedFiles(), infos)

    @property
    def names(self) -> list[str]:
        return list(self.meta["shapes"])

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return self.meta["shapes"]

    @property
    def density(self) -> float:
        return float(self.meta.get("density", 0.0))

    def packed(self, name: str, start_byte: int = 0, stop_byte: int | None = None) -> np.ndarray:
        """Packed bytes of ``name`` (a zero-copy view), optionally a byte range."""
        info = self._infos[name]
        stop = info.numel if stop_byte is None else stop_byte
        return self._files.words(info, start_byte, stop)

    def prefetch(self, name: str, start_byte: int = 0, stop_byte: int | None = None) -> None:
        """Ask the kernel to start reading a byte range of ``name`` ahead of use."""
        info = self._infos[name]
        self._files.prefetch(info, start_byte, info.numel if stop_byte is None else stop_byte)

    def release(self, name: str, start_byte: int = 0, stop_byte: int | None = None) -> None:
        """Drop a byte range of ``name`` from this process's RSS (pages stay in the page cache)."""
        info = self._infos[name]
        self._files.release(info, start_byte, info.numel if stop_byte is None else stop_byte)

    def bits(self) -> MaskBits:
        """This mask as a chunk-stream source addressed by weight (bit) index."""
        return MaskBits(self)

    def mask(self, name: str) -> np.ndarray:
        """The unpacked bool mask of ``name``."""
        return unpack_mask(self.packed(name), self.shapes[name])

    def close(self) -> None:
        self._files.close()

    def __enter__(self) -> MaskFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MaskBits:
    """A :class:`MaskFile` addressed by weight index, as a source of
    :func:`rlsparse_lib.io.chunks.stream_chunks`: weights ``[start, stop)`` are the packed bytes
    ``[start // 8, ceil(stop / 8))``, so ``start`` must be a multiple of 8."""

    def __init__(self, mask: MaskFile) -> None:
        self.mask = mask

    def words(self, name: str, start: int, stop: int) -> np.ndarray:
        """uint8[ceil((stop - start) / 8)]: the packed bits of weights ``[start, stop)`` (a view)."""
        return self.mask.packed(name, *_byte_range(start, stop))

    def prefetch(self, name: str, start: int, stop: int) -> None:
        self.mask.prefetch(name, *_byte_range(start, stop))

    def release(self, name: str, start: int, stop: int) -> None:
        self.mask.release(name, *_byte_range(start, stop))


def _byte_range(start: int, stop: int) -> tuple[int, int]:
    if start % 8:
        raise ValueError(f"mask chunks must start on a byte boundary, got weight {start}")
    return start // 8, packed_size(stop)
