"""Content digests of weight files: the sha256 of their bytes.

A file in a Hugging Face cache resolves to ``blobs/<sha256>`` (the hub names blobs by their
content), and a streamed hub file's sha256 is its etag (:func:`register_digest`), so hub
checkpoints are digested without reading them; any other file is hashed once per
process (memoized by path, size, mtime and inode). A header fingerprint is not enough: every
checkpoint of one model saved the same way has the same header.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import Path

__all__ = ["file_digest", "files_digest", "register_digest"]

_SHA256 = re.compile(r"[0-9a-f]{64}")
_memo: dict[tuple, str] = {}
#: sha256 of files that are not on disk, by key (streamed hub files: their LFS oid)
_remote: dict[str, str] = {}


def register_digest(key: Path, sha256: str) -> None:
    """Record the sha256 of a file that is not on disk (a streamed hub file, whose etag is the
    sha256 of its content), so :func:`file_digest` names it without reading it."""
    _remote[str(key)] = sha256


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (a hub blob's own name, or a registered remote file's;
    memoized by path, size, mtime, inode)."""
    if str(path) in _remote:
        return _remote[str(path)]
    real = Path(path).resolve()
    if real.parent.name == "blobs" and _SHA256.fullmatch(real.name):
        return real.name
    st = real.stat()
    memo_key = (str(real), st.st_size, st.st_mtime_ns, st.st_ino)
    if memo_key not in _memo:
        with real.open("rb") as fh:
            _memo[memo_key] = hashlib.file_digest(fh, "sha256").hexdigest()
    return _memo[memo_key]


def files_digest(files: Iterable[Path]) -> list[list[str]]:
    """``[[file name, sha256], ...]`` of a checkpoint's weight files, in shard order: the content
    fingerprint of a checkpoint (the diff cache's key and a resume folder's inputs)."""
    return [[Path(f).name, file_digest(f)] for f in files]
