"""Write files and folders atomically: to a temporary name in the same folder, then rename."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from rlsparse_lib.errors import OutputError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` only if the block succeeds.

    On any exception the temporary file is removed, so no partial output is ever left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; use the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a new temporary folder next to ``path``; rename it to ``path`` only if the block
    succeeds, else remove it, so no partial output is ever left behind.

    Raises:
        OutputError: ``path`` exists and is not an empty folder (checked before anything is made).
    """
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise OutputError(f"{path}: exists and is not an empty folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            path.rmdir()
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_if_changed(path: str | Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` atomically unless the file already holds exactly these bytes.

    Returns:
        True when the file was written.
    """
    path = Path(path)
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return False
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return True


def check_writable(path: str | Path, directory: bool = False) -> None:
    """Refuse, before any long work, an output path that cannot be written.

    ``path`` is a file to be written atomically (or, with ``directory``, a folder to write into).
    The nearest existing folder on its way must accept a new file; nothing is created except a
    probe file that is removed at once.

    Raises:
        OutputError: naming ``path`` as the user gave it and what is wrong.
    """
    given = str(path)
    target = Path(path)
    if not directory and target.is_dir():
        raise OutputError(f"{given}: is a directory, expected a file name")
    if directory and target.exists() and not target.is_dir():
        raise OutputError(f"{given}: exists and is not a directory")
    folder = target if directory else target.parent
    folder = folder if str(folder) else Path(".")
    while not folder.exists():
        if folder.parent == folder:
            break
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"{given}: {folder} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".rlsparse-probe.", dir=folder)
    except OSError as err:
        raise OutputError(f"{given}: cannot write in {folder} ({err.strerror or err})") from None
    os.close(fd)
    os.unlink(probe)
