"""Delta chains: a checkpoint series stored as a full anchor every N checkpoints plus a patch
from each checkpoint to the next.

A chain is a folder::

    chain.json         the links in order: step, kind (anchor / patch), file, its SHA-256, size,
                       changed elements
    step_000000.rlpatch   an anchor: a patch from the empty checkpoint (every tensor whole)
    step_000010.rlpatch   a patch from the previous link's checkpoint
    ...

Any step is rebuilt bit for bit from its nearest anchor at or before it, applying the patches
after it in order; every link is checked on the way (the file's SHA-256 in ``chain.json``, then the
patch's own base and result fingerprints), and a damaged link is named by step and file.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from rlsparse_lib.atomic import atomic_folder
from rlsparse_lib.errors import ConfigError
from rlsparse_lib.io.checkpoint import Checkpoint, open_checkpoint
from rlsparse_lib.patches.apply import apply_patch
from rlsparse_lib.patches.create import LEVEL, create_patch
from rlsparse_lib.patches.format import PatchError, read_patch
from rlsparse_lib.patches.series import checkpoint_series
from rlsparse_lib.progress import progress_bar

MANIFEST = "chain.json"
LINK = "step_{:06d}.rlpatch"


def empty_checkpoint() -> Checkpoint:
    """The checkpoint with no tensors: the base of an anchor (a patch of only whole tensors)."""
    return Checkpoint(source="(empty)", path=Path("."), format="safetensors", files=(), tensors={})


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def build_chain(
    checkpoints: list[str | Path],
    out: str | Path,
    every: int = 10,
    steps: list[int] | None = None,
    xform: str = "sub",
    level: int = LEVEL,
    progress: bool = True,
) -> dict[str, Any]:
    """Write a chain folder for a series (a run folder, or checkpoints in order).

    Args:
        every: a full anchor at the series' checkpoints 0, every, 2·every, ... (by position).

    Returns:
        the ``chain.json`` content: ``links`` (step, kind, file, sha256, bytes,
        elements_changed, source) and totals (``bytes``, ``checkpoint_bytes``: the series'
        weight bytes stored as full copies).
    """
    if every < 1:
        raise ConfigError(f"--every must be >= 1, got {every}")
    series = checkpoint_series(checkpoints, steps)
    out = Path(out)
    links: list[dict[str, Any]] = []
    full = 0
    with atomic_folder(out) as tmp:
        bar = progress_bar(
            total=len(series), desc="chain", unit="ckpt", disable=not progress or None
        )
        try:
            prev: Checkpoint | None = None
            for i, (step, path) in enumerate(series):
                ckpt = open_checkpoint(path)
                full += ckpt.nbytes
                kind = "anchor" if i % every == 0 else "patch"
                name = LINK.format(step)
                base = empty_checkpoint() if kind == "anchor" else prev
                assert base is not None
                s = create_patch(base, ckpt, tmp / name, xform=xform, level=level)
                links.append(
                    {
                        "step": step,
                        "kind": kind,
                        "file": name,
                        "sha256": file_sha256(tmp / name),
                        "bytes": s["bytes"],
                        "elements_changed": s["elements_changed"],
                        "source": str(path),
                    }
                )
                prev = ckpt
                bar.update(1)
            manifest = {
                "format": "rlsparse-chain",
                "every": every,
                "links": links,
                "bytes": sum(link["bytes"] for link in links),
                "checkpoint_bytes": full,
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        finally:
            bar.close()
    return manifest


def read_chain(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise PatchError(f"{folder}: not a readable chain ({MANIFEST}: {exc})") from exc
    if manifest.get("format") != "rlsparse-chain":
        raise PatchError(f"{folder / MANIFEST}: not an rlsparse chain")
    return manifest


def _link_error(folder: Path, link: dict[str, Any], what: str) -> PatchError:
    return PatchError(f"{folder}: link step {link['step']} ({link['file']}): {what}")


def _checked_link(folder: Path, link: dict[str, Any]) -> Path:
    path = folder / link["file"]
    if not path.is_file():
        raise _link_error(folder, link, "file missing")
    if file_sha256(path) != link["sha256"]:
        raise _link_error(folder, link, "corrupt (SHA-256 of the file differs from chain.json)")
    return path


def verify_chain(folder: str | Path) -> dict[str, Any]:
    """Check every link without rebuilding: file SHA-256, the patch's own checksums, and that each
    patch's base fingerprints equal the previous link's result fingerprints.

    Raises:
        PatchError: naming the first broken link (step and file).
    """
    folder = Path(folder)
    manifest = read_chain(folder)
    prev: dict[str, str] | None = None
    for link in manifest["links"]:
        path = _checked_link(folder, link)
        try:
            m = read_patch(path).manifest
        except PatchError as exc:
            raise _link_error(folder, link, str(exc)) from exc
        if link["kind"] == "patch":
            base = {n: b["sha256"] for n, b in m["base"].items()}
            if prev is None or base != prev:
                raise _link_error(folder, link, "its base is not the previous link's checkpoint")
        prev = {t["name"]: t["sha256"] for t in m["tensors"]}
    return {"links": len(manifest["links"]), "ok": True}


def rebuild(
    folder: str | Path, step: int, out: str | Path, progress: bool = True
) -> dict[str, Any]:
    """Write checkpoint ``step`` of a chain to the new folder ``out``, bit for bit.

    Raises:
        PatchError: no such step, or a broken link (named by step and file); nothing is left.
    """
    folder, out = Path(folder), Path(out)
    manifest = read_chain(folder)
    links = manifest["links"]
    at = next((i for i, link in enumerate(links) if link["step"] == step), None)
    if at is None:
        have = ", ".join(str(link["step"]) for link in links)
        raise PatchError(f"{folder}: no step {step} in the chain (steps: {have})")
    first = max(i for i in range(at + 1) if links[i]["kind"] == "anchor")
    with atomic_folder(out) as tmp:
        bar = progress_bar(
            total=at + 1 - first, desc="rebuild", unit="link", disable=not progress or None
        )
        try:
            cur: Checkpoint | Path = empty_checkpoint()
            for i in range(first, at + 1):
                link = links[i]
                dst = tmp / f"link{i}"
                try:
                    apply_patch(cur, _checked_link(folder, link), dst)
                except PatchError as exc:
                    raise _link_error(folder, link, str(exc)) from exc
                if isinstance(cur, Path):
                    shutil.rmtree(cur)
                cur = dst
                bar.update(1)
            assert isinstance(cur, Path)
            for f in cur.iterdir():
                f.rename(tmp / f.name)
            cur.rmdir()
        finally:
            bar.close()
    return {"out": str(out), "step": step, "links_applied": at + 1 - first}
