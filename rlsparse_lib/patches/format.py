"""The patch file: a checksummed JSON manifest up front, then the compressed blocks.

Layout::

    b"RLSPATCH"  u32 version  u64 manifest length  32-byte SHA-256 of the manifest
    manifest (UTF-8 JSON)
    blob area: every block's bytes, at the offsets the manifest gives (relative to its start)

The manifest lists the base's tensors with their SHA-256, the removed names, the output tensors
in order (``kind`` ``patch``: changed words against the base tensor of the same name, dtype and
shape; ``whole``: the tensor's bytes), each with the SHA-256 of its final bytes and its blocks
(offset, sizes, SHA-256 of the block's bytes), and the small auxiliary files (config.json, ...).
Because the manifest comes first, a truncated patch still names the first tensor it cuts off.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from rlsparse_lib.errors import RlsparseError

MAGIC = b"RLSPATCH"
VERSION = 1
_PREFIX = struct.Struct("<8sIQ32s")


class PatchError(RlsparseError):
    """A patch cannot be made or applied: damaged or truncated patch, base that does not match."""


@dataclass
class Patch:
    """An opened patch: its manifest and where its blob area starts."""

    path: Path
    manifest: dict[str, Any]
    blob_start: int
    size: int

    def blocks(self) -> list[tuple[str, dict[str, Any]]]:
        """(owner name, block) of every block, in file order."""
        out = [(f"tensor '{t['name']}'", b) for t in self.manifest["tensors"] for b in t["blocks"]]
        out += [(f"file {f['name']}", f) for f in self.manifest["files"]]
        return sorted(out, key=lambda ob: ob[1]["offset"])

    def read(self, fh: BinaryIO, owner: str, block: dict[str, Any]) -> bytes:
        """A block's bytes, checked against its SHA-256."""
        fh.seek(self.blob_start + block["offset"])
        data = fh.read(block["size"])
        if len(data) != block["size"]:
            raise PatchError(f"{self.path}: {owner}: patch is truncated")
        if hashlib.sha256(data).hexdigest() != block["sha256"]:
            raise PatchError(f"{self.path}: {owner}: patch data is corrupt (checksum mismatch)")
        return data


def write_patch(path: Path, manifest: dict[str, Any], blobs: BinaryIO) -> None:
    """Write prefix + manifest, then copy the blob area from ``blobs`` (read from its start)."""
    raw = json.dumps(manifest, separators=(",", ":")).encode()
    with path.open("wb") as fh:
        fh.write(_PREFIX.pack(MAGIC, VERSION, len(raw), hashlib.sha256(raw).digest()))
        fh.write(raw)
        blobs.seek(0)
        while chunk := blobs.read(1 << 24):
            fh.write(chunk)


def read_patch(path: str | Path) -> Patch:
    """Open a patch and check its manifest; every block's bytes are checked before any output.

    Raises:
        PatchError: not a patch, damaged manifest, or (naming the tensor) truncated or corrupt
            block data.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            prefix = fh.read(_PREFIX.size)
            if len(prefix) < _PREFIX.size:
                raise PatchError(f"{path}: not a patch or truncated (only {size} bytes)")
            magic, version, mlen, digest = _PREFIX.unpack(prefix)
            if magic != MAGIC:
                raise PatchError(f"{path}: not an rlsparse patch")
            if version != VERSION:
                raise PatchError(f"{path}: patch format version {version}, expected {VERSION}")
            raw = fh.read(mlen) if mlen <= size else b""
            if len(raw) != mlen:
                raise PatchError(f"{path}: patch is truncated (manifest incomplete)")
            if hashlib.sha256(raw).digest() != digest:
                raise PatchError(f"{path}: patch manifest is corrupt (checksum mismatch)")
            manifest = json.loads(raw)
            patch = Patch(path, manifest, _PREFIX.size + mlen, size)
            end = patch.blob_start + manifest["blob_size"]
            if size != end:
                owner = next(
                    (
                        o
                        for o, b in patch.blocks()
                        if patch.blob_start + b["offset"] + b["size"] > size
                    ),
                    None,
                )
                what = f"{owner}: " if owner else ""
                state = "truncated" if size < end else "longer than its manifest says"
                raise PatchError(f"{path}: {what}patch is {state} ({size} bytes, expected {end})")
            for owner, block in patch.blocks():
                patch.read(fh, owner, block)
    except OSError as exc:
        raise PatchError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return patch
