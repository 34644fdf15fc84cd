"""Read a patch against its base: the stream of result chunks, every fingerprint checked.

:func:`walk` is the one reader of patch blocks: ``apply`` writes its chunks to a checkpoint,
``interop`` turns them into TRL / vLLM ``(name, flat indices, values)`` forms and ``chain``
into the next link. A wrong base or damaged data raises :class:`PatchError` naming the tensor
before the tensor's last chunk is consumed, so callers writing atomically leave nothing behind.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import zstandard as zstd

from rlsparse_lib.io.checkpoint import Checkpoint
from rlsparse_lib.io.dtypes import word_dtype
from rlsparse_lib.patches.codec import decode_changes
from rlsparse_lib.patches.create import as_bytes, tensor_sha256
from rlsparse_lib.patches.format import Patch, PatchError


@dataclass
class Piece:
    """Elements ``[start, start + words.size)`` of one result tensor.

    Attributes:
        entry: the manifest's tensor entry (``name``, ``dtype``, ``shape``, ``kind``, ...).
        start: first flat index of the chunk.
        words: the result's raw words (unsigned, the dtype's width); may be a view of the base's
            mapped file, valid only until the next piece is asked for.
        pos: for ``kind == "patch"``, the changed positions in the chunk (int64 ascending; their
            new words are ``words[pos]``); None for whole tensors.
        last: whether this is the tensor's last chunk (its fingerprint is checked before it is
            yielded).
    """

    entry: dict[str, Any]
    start: int
    words: np.ndarray
    pos: np.ndarray | None
    last: bool


def check_base(ckpt: Checkpoint, patch: Patch) -> None:
    """Refuse, from headers only, a base whose tensor names, dtypes or shapes differ."""
    expected: dict[str, Any] = patch.manifest["base"]
    for name, info in ckpt.tensors.items():
        want = expected.get(name)
        if want is None:
            raise PatchError(
                f"{ckpt.source}: tensor '{name}' is not in the patch's base: wrong base checkpoint"
            )
        if (info.dtype, list(info.shape)) != (want["dtype"], want["shape"]):
            raise PatchError(
                f"{ckpt.source}: tensor '{name}' is {info.dtype} {list(info.shape)}, the patch's "
                f"base has {want['dtype']} {want['shape']}: wrong base checkpoint"
            )
    for name in expected:
        if name not in ckpt.tensors:
            raise PatchError(f"{ckpt.source}: tensor '{name}' of the patch's base is missing")


def _wrong_base(ckpt: Checkpoint, name: str) -> PatchError:
    return PatchError(
        f"{ckpt.source}: tensor '{name}' differs from the patch's base (SHA-256 mismatch): "
        "wrong base checkpoint"
    )


def walk(ckpt: Checkpoint, patch: Patch) -> Iterator[Piece]:
    """Yield every result tensor's chunks, in the patch's tensor order.

    Raises:
        PatchError: wrong base (names, dtypes, shapes, or a base tensor's SHA-256), or corrupt
            block data / result SHA-256, naming the tensor.
    """
    check_base(ckpt, patch)
    m = patch.manifest
    xform, chunk = m["xform"], int(m["chunk"])
    dctx = zstd.ZstdDecompressor()
    patched = {t["name"] for t in m["tensors"] if t["kind"] == "patch"}
    with ckpt.reader() as reader, patch.path.open("rb") as fh:
        # base tensors the output does not patch (removed, reshaped): fingerprint them too
        for name, want in m["base"].items():
            if name not in patched and tensor_sha256(reader, ckpt.tensors[name]) != want["sha256"]:
                raise _wrong_base(ckpt, name)
        for t in m["tensors"]:
            name, kind = t["name"], t["kind"]
            numel = int(np.prod(t["shape"], dtype=np.int64))
            out_hash, base_hash = hashlib.sha256(), hashlib.sha256()
            blocks = {b["start"]: b for b in t["blocks"]}
            starts = list(range(0, numel, chunk)) or [0]
            for start in starts:
                stop = min(numel, start + chunk)
                block = blocks.get(start)
                pos: np.ndarray | None = None
                try:
                    if stop == start:
                        words = np.zeros(0, word_dtype(t["dtype"]))
                        pos = np.zeros(0, np.int64) if kind == "patch" else None
                    elif kind == "patch":
                        words = reader.words(name, start, stop)
                        base_hash.update(as_bytes(words))
                        pos = np.zeros(0, np.int64)
                        if block is not None:
                            data = patch.read(fh, f"tensor '{name}'", block)
                            cut = block["index_size"]
                            pos, new = decode_changes(
                                words,
                                block["n_changed"],
                                block["index"],
                                data[:cut],
                                data[cut:],
                                xform,
                                dctx,
                            )
                            words = words.copy()
                            words[pos] = new
                    else:
                        if block is None:
                            raise PatchError(f"{patch.path}: tensor '{name}': block missing")
                        raw = dctx.decompress(patch.read(fh, f"tensor '{name}'", block))
                        words = np.frombuffer(raw, word_dtype(t["dtype"]))
                        if words.size != stop - start:
                            raise PatchError(f"{patch.path}: tensor '{name}': block has wrong size")
                except (ValueError, zstd.ZstdError) as exc:
                    raise PatchError(
                        f"{patch.path}: tensor '{name}': corrupt patch data ({exc})"
                    ) from exc
                out_hash.update(as_bytes(words))
                last = start == starts[-1]
                if last:
                    if kind == "patch" and base_hash.hexdigest() != m["base"][name]["sha256"]:
                        raise _wrong_base(ckpt, name)
                    if out_hash.hexdigest() != t["sha256"]:
                        raise PatchError(
                            f"{patch.path}: tensor '{name}': result does not match the patch's "
                            "SHA-256"
                        )
                yield Piece(t, start, words, pos, last)
                if kind == "patch" and stop > start:
                    reader.release(name, start, stop)
