"""``apply_patch``: rebuild TUNED from BASE and a patch, into a fresh Hugging Face folder."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import zstandard as zstd

from rlsparse_lib.errors import OutputError
from rlsparse_lib.io.checkpoint import Checkpoint, SafetensorsWriter, open_checkpoint
from rlsparse_lib.io.dtypes import word_dtype
from rlsparse_lib.patches.codec import decode_block
from rlsparse_lib.patches.create import as_bytes, tensor_sha256
from rlsparse_lib.patches.format import Patch, PatchError, read_patch

WEIGHTS = "model.safetensors"


def _check_base(ckpt: Checkpoint, patch: Patch) -> None:
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


def apply_patch(base: str | Path | Checkpoint, patch_path: str | Path, out: str | Path) -> dict:
    """Write ``out`` (a folder: model.safetensors + the patch's config/tokenizer files, else
    BASE's JSON files) holding TUNED's tensors bit for bit.

    Everything is written to a temporary folder next to ``out`` and renamed at the end: on any
    error (wrong base, damaged patch) nothing is left.

    Raises:
        PatchError: naming the tensor whose base fingerprint, block data or result mismatches.
        OutputError: ``out`` exists and is not an empty folder.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputError(f"{out}: exists and is not an empty folder")
    patch = read_patch(patch_path)
    ckpt = open_checkpoint(base)
    _check_base(ckpt, patch)
    m = patch.manifest
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        _write(ckpt, patch, tmp_dir)
        if out.exists():
            out.rmdir()
        tmp_dir.rename(out)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return {"out": str(out), "tensors": len(m["tensors"]), "files": len(m["files"])}


def _write(ckpt: Checkpoint, patch: Patch, folder: Path) -> None:
    m = patch.manifest
    xform = m["xform"]
    chunk = int(m["chunk"])
    dctx = zstd.ZstdDecompressor()
    specs = [(t["name"], t["dtype"], tuple(t["shape"])) for t in m["tensors"]]
    patched = {t["name"] for t in m["tensors"] if t["kind"] == "patch"}
    with (
        ckpt.reader() as reader,
        patch.path.open("rb") as fh,
        SafetensorsWriter(folder / WEIGHTS, specs, {"format": "pt"}) as writer,
    ):
        # base tensors the output does not patch (removed, reshaped): fingerprint them too
        for name, want in m["base"].items():
            if name not in patched and tensor_sha256(reader, ckpt.tensors[name]) != want["sha256"]:
                raise PatchError(
                    f"{ckpt.source}: tensor '{name}' differs from the patch's base "
                    "(SHA-256 mismatch): wrong base checkpoint"
                )
        for t in m["tensors"]:
            name = t["name"]
            word = word_dtype(t["dtype"])
            numel = 1
            for s in t["shape"]:
                numel *= s
            out_hash, base_hash = hashlib.sha256(), hashlib.sha256()
            blocks = {b["start"]: b for b in t["blocks"]}
            try:
                for start in range(0, numel, chunk):
                    stop = min(numel, start + chunk)
                    block = blocks.get(start)
                    if t["kind"] == "patch":
                        b_words = reader.words(name, start, stop)
                        base_hash.update(as_bytes(b_words))
                        if block is None:
                            words = b_words
                        else:
                            data = patch.read(fh, f"tensor '{name}'", block)
                            cut = block["index_size"]
                            words = decode_block(
                                b_words,
                                block["n_changed"],
                                block["index"],
                                data[:cut],
                                data[cut:],
                                xform,
                                dctx,
                            )
                    else:
                        if block is None:
                            raise PatchError(f"{patch.path}: tensor '{name}': block missing")
                        raw = dctx.decompress(patch.read(fh, f"tensor '{name}'", block))
                        words = np.frombuffer(raw, word)
                        if words.size != stop - start:
                            raise PatchError(f"{patch.path}: tensor '{name}': block has wrong size")
                    out_hash.update(as_bytes(words))
                    writer.write(name, words)
                    if t["kind"] == "patch":
                        reader.release(name, start, stop)
            except (ValueError, zstd.ZstdError) as exc:
                raise PatchError(
                    f"{patch.path}: tensor '{name}': corrupt patch data ({exc})"
                ) from exc
            if t["kind"] == "patch" and base_hash.hexdigest() != m["base"][name]["sha256"]:
                raise PatchError(
                    f"{ckpt.source}: tensor '{name}' differs from the patch's base "
                    "(SHA-256 mismatch): wrong base checkpoint"
                )
            if out_hash.hexdigest() != t["sha256"]:
                raise PatchError(
                    f"{patch.path}: tensor '{name}': result does not match the patch's SHA-256"
                )
        for f in m["files"]:
            raw = dctx.decompress(patch.read(fh, f"file {f['name']}", f))
            if hashlib.sha256(raw).hexdigest() != f["raw_sha256"]:
                raise PatchError(f"{patch.path}: file {f['name']}: corrupt patch data")
            (folder / Path(f["name"]).name).write_bytes(raw)
    if not m["files"] and ckpt.path.is_dir():
        for src in sorted(ckpt.path.glob("*.json")):
            if not src.name.endswith(".index.json"):
                shutil.copyfile(src, folder / src.name)
