"""Provenance of every rlsparse report: one builder for the part all reports share.

:func:`build_provenance` records the tool (name and version), the platform, the versions of
python, numpy and (when the run imported them) torch and triton, the checkpoint sources with
their fingerprints and hub revisions, and a hash of the settings (sha256 of their canonical JSON),
so two reports made with the same settings carry the same ``config_hash``. Each report adds its
own fields (inputs, rules, timing) on top.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import sys
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

from rlsparse_lib import __version__

TOOL = "rlsparse"
#: modules whose versions are recorded only when the run imported them
_OPTIONAL_MODULES = ("torch", "triton")


class _CheckpointLike(Protocol):
    """What :func:`source_record` reads from a checkpoint object (e.g. ``io.Checkpoint``)."""

    @property
    def source(self) -> str: ...

    @property
    def revision(self) -> str | None: ...

    def fingerprint(self) -> str: ...


def versions() -> dict[str, str]:
    """python and numpy versions, plus torch/triton when already imported (never imports them)."""
    import numpy as np

    out = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in _OPTIONAL_MODULES:
        if mod in sys.modules:
            out[mod] = str(getattr(sys.modules[mod], "__version__", "unknown"))
    return out


def canonical_json(settings: object) -> str:
    """Settings as canonical JSON: sorted keys, no whitespace, tuples as lists, others as str."""
    return json.dumps(settings, sort_keys=True, separators=(",", ":"), default=_plain)


def config_hash(settings: object) -> str:
    """sha256 (hex) of :func:`canonical_json` of the settings."""
    return hashlib.sha256(canonical_json(settings).encode()).hexdigest()


def source_record(checkpoint: object) -> dict[str, Any]:
    """``{source, fingerprint, revision}`` of a checkpoint, or of its ``describe()`` dict."""
    if isinstance(checkpoint, Mapping):
        d = checkpoint
        return {k: d.get(k) for k in ("source", "fingerprint", "revision")}
    checkpoint = cast(_CheckpointLike, checkpoint)
    return {
        "source": checkpoint.source,
        "fingerprint": checkpoint.fingerprint(),
        "revision": checkpoint.revision,
    }


def build_provenance(
    kind: str,
    *,
    settings: object = None,
    sources: Mapping[str, object] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """The shared provenance of a report of ``kind`` (``diff``, ``overlap``, ``rank`` ...).

    Args:
        kind: what produced the report.
        settings: the settings that determine the numbers (hashed into ``config_hash``).
        sources: checkpoints (or their ``describe()`` dicts) by role, e.g. ``{"base": ck}``;
            a list value records several (e.g. a checkpoint series).
        fields: report-specific fields, added last (they win over the shared ones).

    Returns:
        ``tool`` (``"rlsparse <version>"``), ``tool_name``, ``tool_version``, ``report``,
        ``platform``, ``versions``, ``sources``, ``config_hash`` and ``fields``.
    """
    out: dict[str, Any] = {
        "tool": f"{TOOL} {__version__}",
        "tool_name": TOOL,
        "tool_version": __version__,
        "report": kind,
        "platform": platform.platform(),
        "versions": versions(),
        "sources": {
            role: [source_record(c) for c in ck]
            if isinstance(ck, list | tuple)
            else source_record(ck)
            for role, ck in (sources or {}).items()
            if ck is not None
        },
        "config_hash": config_hash(settings),
    }
    out.update(fields)
    return out


def _plain(o: object) -> object:
    if isinstance(o, tuple | set | frozenset):
        return sorted(o) if isinstance(o, set | frozenset) else list(o)
    if dataclasses.is_dataclass(o) and not isinstance(o, type):  # instances, not classes
        return dataclasses.asdict(o)
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    return str(o)


# ---- report files -------------------------------------------------------------------------------
class Rows:
    """A report's long list (e.g. one entry per tensor) made row by row as it is written
    (:func:`save_report_json`), so that its rows are never all held as dicts or text at once.

    Args:
        items: the objects behind the rows; to_row: one item's JSON-able row.
    """

    def __init__(self, items: Sequence[Any], to_row: Callable[[Any], Any]) -> None:
        self.items = items
        self.to_row = to_row

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Any]:
        return (self.to_row(item) for item in self.items)


def save_report_json(path: str | Path, data: Mapping[str, Any]) -> None:
    """Write a report's JSON form atomically (gzip-compressed when the name ends in ``.gz``).

    The text is ``json.dumps(data, indent=1) + "\\n"`` (``.gz``: ``gzip.compress`` of it with
    ``mtime=0``), written key by key, and a :class:`Rows` value row by row: the whole text, or
    every row of a long list, is never held in memory.
    """
    from rlsparse_lib.atomic import atomic_path

    pack = zlib.compressobj(9, zlib.DEFLATED, 31) if str(path).endswith(".gz") else None
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        for text in _json_pieces(data):
            raw = text.encode()
            fh.write(raw if pack is None else pack.compress(raw))
        if pack is not None:
            fh.write(pack.flush())


def _json_pieces(data: Mapping[str, Any]) -> Iterator[str]:
    """``json.dumps(data, indent=1) + "\\n"`` in pieces: one per key, one per row of a
    :class:`Rows` value (a nested value's lines are indented once more per level; JSON text
    holds no raw newline but those between its lines)."""

    def dump(value: Any, level: int) -> str:
        text = json.dumps(value, indent=1, default=_json_scalar)
        return text.replace("\n", "\n" + " " * level)

    if not data:
        yield "{}\n"
        return
    for i, (key, value) in enumerate(data.items()):
        yield ("," if i else "{") + "\n " + json.dumps(key) + ": "
        if not isinstance(value, Rows):
            yield dump(value, 1)
        elif not len(value):
            yield "[]"
        else:
            for j, row in enumerate(value):
                yield ("," if j else "[") + "\n  " + dump(row, 2)
            yield "\n ]"
    yield "\n}\n"


def load_report_json(path: str | Path, schema: str) -> dict[str, Any]:
    """Read a report file written by :func:`save_report_json` and check its ``schema``.

    Raises:
        ConfigError: the file is missing, not JSON, or holds another schema (the file is named).
    """
    from rlsparse_lib.errors import ConfigError

    path = Path(path)
    try:
        raw = path.read_bytes()
        if path.name.endswith(".gz"):
            import gzip

            raw = gzip.decompress(raw)
        data = json.loads(raw)
    except (OSError, ValueError, EOFError) as err:
        raise ConfigError(f"{path}: cannot read a {schema} report ({err})") from err
    found = data.get("schema") if isinstance(data, dict) else None
    if found != schema:
        raise ConfigError(f"{path}: not a {schema} report (schema {found!r})")
    return data


def _json_scalar(o: object) -> object:
    """numpy scalars and arrays -> Python (for report JSON)."""
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
