"""Resolve Hugging Face hub ids to a local snapshot (safetensors and JSON files only)."""

from __future__ import annotations

import re
from pathlib import Path

from rlsparse_lib.errors import CheckpointError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
#: one GGUF file of a repository: ``org/name/path/file.gguf[@rev]`` (a repo id has two segments,
#: so three or more ending in ``.gguf`` cannot be read as one)
_HUB_FILE = re.compile(
    r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)/(?P<file>(?:[\w.-]+/)*[\w.-]+\.gguf)(@[\w./-]+)?$"
)
#: files fetched from the hub: never pickles
ALLOW_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "*.json"]


def looks_like_hub_id(spec: str) -> bool:
    """``org/name``, ``org/name@revision`` or a GGUF file of a repository
    (``org/name/path/file.gguf[@revision]``), not an absolute or dotted relative path."""
    return bool(_HUB_ID.match(spec) or _HUB_FILE.match(spec)) and not spec.startswith(
        (".", "/", "~")
    )


def split_hub_spec(spec: str) -> tuple[str, str | None, str | None]:
    """``org/name[/path/file.gguf][@rev]`` -> (``org/name``, ``path/file.gguf`` or None, ``rev``
    or None)."""
    head, rev = split_revision(spec)
    m = _HUB_FILE.match(head)
    return (m["repo"], m["file"], rev) if m else (head, None, rev)


def split_revision(spec: str) -> tuple[str, str | None]:
    """``org/name@rev`` -> (``org/name``, ``rev``)."""
    repo, _, rev = spec.partition("@")
    return repo, rev or None


def download_snapshot(spec: str, cache_dir: str | Path | None = None) -> tuple[Path, str | None]:
    """Download (or find in the local HF cache) a hub checkpoint's safetensors and JSON files.

    Args:
        spec: ``org/name`` or ``org/name@revision``.
        cache_dir: huggingface_hub cache folder (default: its own default).

    Returns:
        (snapshot folder, commit hash when known).

    Raises:
        CheckpointError: naming the id when the hub cannot be reached (offline) or the repo has
            no safetensors weights.
    """
    from huggingface_hub import snapshot_download

    repo_id, revision = split_revision(spec)
    try:
        folder = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=cache_dir,
                allow_patterns=ALLOW_PATTERNS,
            )
        )
    except Exception as exc:  # huggingface_hub raises many types; all mean "not available"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"'{spec}' is not a local path and could not be fetched from the Hugging Face hub "
            f"({type(exc).__name__}: {reason}). Check the id, your network or HF_HUB_OFFLINE, "
            "or pass a local folder."
        ) from exc
    if not any(folder.glob("*.safetensors")):
        raise CheckpointError(
            f"hub checkpoint '{spec}' has no .safetensors weights; rlsparse never downloads "
            "pickled .bin files from the hub. Convert it locally and pass the folder."
        )
    commit = folder.name if re.fullmatch(r"[0-9a-f]{40}", folder.name) else None
    return folder, commit
