"""``create_patch``: stream a base/tuned pair into a patch file, chunk by chunk."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np
import zstandard as zstd

from rlsparse_lib.atomic import atomic_path
from rlsparse_lib.io.checkpoint import Checkpoint, TensorReader, open_checkpoint
from rlsparse_lib.io.dtypes import ITEMSIZE
from rlsparse_lib.io.tensor_info import TensorInfo
from rlsparse_lib.patches.codec import XFORMS, encode_block
from rlsparse_lib.patches.format import PatchError, write_patch

#: elements per block (each block is coded and checked on its own: bounded memory)
CHUNK = 1 << 24
#: zstandard level of the blocks (see the README's "Sparse patches" measurements)
LEVEL = 3
#: files copied into the patch from TUNED's folder (config, tokenizer, chat template, ...)
AUX_SUFFIXES = (".json", ".txt", ".model", ".jinja", ".tiktoken")
AUX_MAX_BYTES = 64 << 20


def _check_dtype(source: str, info: TensorInfo) -> None:
    if info.dtype not in ITEMSIZE:
        raise PatchError(
            f"{source}: tensor '{info.name}': sub-byte dtype {info.dtype} is not supported "
            "by patches"
        )


def as_bytes(words: np.ndarray) -> memoryview:
    """The bytes of an array, without a copy when it is contiguous."""
    return np.ascontiguousarray(words).data.cast("B")


def tensor_sha256(reader: TensorReader, info: TensorInfo, chunk: int = CHUNK) -> str:
    h = hashlib.sha256()
    for start in range(0, info.numel, chunk):
        stop = min(info.numel, start + chunk)
        h.update(as_bytes(reader.words(info.name, start, stop)))
        reader.release(info.name, start, stop)
    return h.hexdigest()


class _Blobs:
    def __init__(self, fh: BinaryIO) -> None:
        self.fh, self.size = fh, 0

    def add(self, *parts: bytes) -> dict[str, Any]:
        h = hashlib.sha256()
        for p in parts:
            self.fh.write(p)
            h.update(p)
        n = sum(len(p) for p in parts)
        block = {"offset": self.size, "size": n, "sha256": h.hexdigest()}
        self.size += n
        return block


class TunedSource(Protocol):
    """What a patch is made towards: a checkpoint, or a virtual one (an imported sparse patch
    over its base). ``reader()`` gives ``words(name, start, stop)`` / ``release`` as
    :class:`TensorReader` does."""

    @property
    def source(self) -> str: ...

    @property
    def tensors(self) -> dict[str, TensorInfo]: ...

    def reader(self) -> Any: ...


def create_patch(
    base: str | Path | Checkpoint,
    tuned: str | Path | Checkpoint,
    out: str | Path,
    xform: str = "sub",
    level: int = LEVEL,
    chunk: int = CHUNK,
) -> dict[str, Any]:
    """Write a lossless patch turning ``base`` into ``tuned`` to ``out`` (atomically); TUNED's
    config/tokenizer files travel with it.

    Returns:
        a summary: tensors patched / whole / removed, elements changed, patch bytes.
    """
    t_ckpt = open_checkpoint(tuned)
    return encode_patch(base, t_ckpt, out, xform, level, chunk, aux_files=_aux_files(t_ckpt))


def _aux_files(ckpt: Checkpoint) -> list[Path]:
    if not ckpt.path.is_dir():
        return []
    weight_names = {f.name for f in ckpt.files}
    return [
        f
        for f in sorted(ckpt.path.iterdir())
        if f.is_file()
        and f.suffix in AUX_SUFFIXES
        and f.name not in weight_names
        and not f.name.endswith(".index.json")
        and f.stat().st_size <= AUX_MAX_BYTES
    ]


def encode_patch(
    base: str | Path | Checkpoint,
    tuned: TunedSource,
    out: str | Path,
    xform: str = "sub",
    level: int = LEVEL,
    chunk: int = CHUNK,
    aux_files: list[Path] | None = None,
    verify: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Stream ``base`` and ``tuned`` chunk by chunk into a patch file at ``out`` (atomically).

    ``verify``, when given, sees the finished manifest before anything is written (and may raise
    to refuse it: e.g. fingerprints an imported patch carried).

    Returns:
        a summary: tensors patched / whole / removed, elements changed, patch bytes.
    """
    if xform not in XFORMS:
        raise PatchError(f"unknown value transform {xform!r} (one of {', '.join(XFORMS)})")
    b_ckpt = open_checkpoint(base)
    for ck in (b_ckpt, tuned):
        if isinstance(ck, Checkpoint) and ck.encodings:  # GGUF blocks are read dequantized
            name, enc = next(iter(ck.encodings.items()))
            raise PatchError(
                f"{ck.source}: tensor '{name}' is stored as {enc.scheme} blocks, read as "
                "dequantized values: a patch could not rebuild the file bit for bit"
            )
        for info in ck.tensors.values():
            _check_dtype(ck.source, info)
    cctx = zstd.ZstdCompressor(level=level)
    entries: list[dict[str, Any]] = []
    base_entries: dict[str, dict[str, Any]] = {}
    changed_total = 0
    out = Path(out)
    with (
        b_ckpt.reader() as b_r,
        tuned.reader() as t_r,
        tempfile.TemporaryFile(dir=out.parent if out.parent.exists() else None) as tmp,
    ):
        blobs = _Blobs(tmp)
        for name, info in b_ckpt.tensors.items():
            other = tuned.tensors.get(name)
            if other is not None and (other.dtype, other.shape) == (info.dtype, info.shape):
                continue  # hashed while patched below
            base_entries[name] = {
                "dtype": info.dtype,
                "shape": list(info.shape),
                "sha256": tensor_sha256(b_r, info, chunk),
            }
        for name, info in tuned.tensors.items():
            b_info = b_ckpt.tensors.get(name)
            same = b_info is not None and (b_info.dtype, b_info.shape) == (info.dtype, info.shape)
            entry: dict[str, Any] = {
                "name": name,
                "dtype": info.dtype,
                "shape": list(info.shape),
                "kind": "patch" if same else "whole",
                "blocks": [],
            }
            t_hash, b_hash = hashlib.sha256(), hashlib.sha256()
            n_changed = 0
            for start in range(0, info.numel, chunk):
                stop = min(info.numel, start + chunk)
                t_words = t_r.words(name, start, stop)
                t_hash.update(as_bytes(t_words))
                if same:
                    b_words = b_r.words(name, start, stop)
                    b_hash.update(as_bytes(b_words))
                    k, code, idx, vals = encode_block(b_words, t_words, xform, cctx)
                    b_r.release(name, start, stop)
                    if k:
                        block = blobs.add(idx, vals)
                        block.update(start=start, stop=stop, n_changed=k, index=code)
                        block["index_size"] = len(idx)
                        entry["blocks"].append(block)
                        n_changed += k
                else:
                    block = blobs.add(cctx.compress(t_words.tobytes()))
                    block.update(start=start, stop=stop)
                    entry["blocks"].append(block)
                t_r.release(name, start, stop)
            entry["sha256"] = t_hash.hexdigest()
            if same:
                assert b_info is not None
                base_entries[name] = {
                    "dtype": b_info.dtype,
                    "shape": list(b_info.shape),
                    "sha256": b_hash.hexdigest(),
                }
                entry["n_changed"] = n_changed
                changed_total += n_changed
            entries.append(entry)
        files = []
        for f in aux_files or []:
            raw = f.read_bytes()
            block = blobs.add(cctx.compress(raw))
            block.update(name=f.name, raw_sha256=hashlib.sha256(raw).hexdigest())
            files.append(block)
        removed = [n for n in b_ckpt.tensors if n not in tuned.tensors]
        manifest = {
            "format": "rlsparse-patch",
            "xform": xform,
            "chunk": chunk,
            "base": base_entries,
            "removed": removed,
            "tensors": entries,
            "files": files,
            "blob_size": blobs.size,
            "base_source": str(b_ckpt.source),
            "tuned_source": str(tuned.source),
        }
        if verify is not None:
            verify(manifest)
        with atomic_path(out) as tmp_out:
            write_patch(tmp_out, manifest, tmp)
    patched = [e for e in entries if e["kind"] == "patch"]
    return {
        "patch": str(out),
        "bytes": out.stat().st_size,
        "tensors_patched": len(patched),
        "tensors_whole": len(entries) - len(patched),
        "tensors_removed": len(removed),
        "elements_compared": sum(int(_numel(e["shape"])) for e in patched),
        "elements_changed": changed_total,
    }


def _numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
