"""``apply_patch``: rebuild TUNED from BASE and a patch, into a fresh Hugging Face folder."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import zstandard as zstd

from rlsparse_lib.atomic import atomic_folder
from rlsparse_lib.io.checkpoint import Checkpoint, SafetensorsWriter, open_checkpoint
from rlsparse_lib.patches.format import Patch, PatchError, read_patch
from rlsparse_lib.patches.walk import check_base, walk

WEIGHTS = "model.safetensors"


def apply_patch(base: str | Path | Checkpoint, patch_path: str | Path, out: str | Path) -> dict:
    """Write ``out`` (a folder: model.safetensors + the patch's config/tokenizer files, else
    BASE's JSON files) holding TUNED's tensors bit for bit.

    Everything is written to a temporary folder next to ``out`` and renamed at the end: on any
    error (wrong base, damaged patch) nothing is left.

    Raises:
        PatchError: naming the tensor whose base fingerprint, block data or result mismatches.
        OutputError: ``out`` exists and is not an empty folder.
    """
    with atomic_folder(out) as tmp_dir:
        patch = read_patch(patch_path)
        ckpt = open_checkpoint(base)
        check_base(ckpt, patch)
        _write(ckpt, patch, tmp_dir)
    m = patch.manifest
    return {"out": str(Path(out)), "tensors": len(m["tensors"]), "files": len(m["files"])}


def _write(ckpt: Checkpoint, patch: Patch, folder: Path) -> None:
    m = patch.manifest
    specs = [(t["name"], t["dtype"], tuple(t["shape"])) for t in m["tensors"]]
    with SafetensorsWriter(folder / WEIGHTS, specs, {"format": "pt"}) as writer:
        for piece in walk(ckpt, patch):
            if piece.words.size:
                writer.write(piece.entry["name"], piece.words)
        dctx = zstd.ZstdDecompressor()
        with patch.path.open("rb") as fh:
            for f in m["files"]:
                try:
                    raw = dctx.decompress(patch.read(fh, f"file {f['name']}", f))
                except zstd.ZstdError as exc:
                    raise PatchError(f"{patch.path}: file {f['name']}: corrupt patch data") from exc
                if hashlib.sha256(raw).hexdigest() != f["raw_sha256"]:
                    raise PatchError(f"{patch.path}: file {f['name']}: corrupt patch data")
                (folder / Path(f["name"]).name).write_bytes(raw)
    if not m["files"] and ckpt.files and ckpt.path.is_dir():
        for src in sorted(ckpt.path.glob("*.json")):
            if not src.name.endswith(".index.json"):
                shutil.copyfile(src, folder / src.name)
