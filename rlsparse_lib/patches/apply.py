"""``apply_patch``: rebuild TUNED from BASE and a patch, into a fresh Hugging Face folder."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

import zstandard as zstd

from rlsparse_lib.errors import OutputError
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
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputError(f"{out}: exists and is not an empty folder")
    patch = read_patch(patch_path)
    ckpt = open_checkpoint(base)
    check_base(ckpt, patch)
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
    m = patch.manifest
    return {"out": str(out), "tensors": len(m["tensors"]), "files": len(m["files"])}


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
