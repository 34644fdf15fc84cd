"""Resumable runs: a folder that holds the unit plan and one result file per finished unit.

Every command that runs on work units (``diff``, ``dynamics``, ``overlap``) resumes the same way;
the diff's folder is described here, the others differ only in their inputs and unit records.

``rlsparse diff BASE TUNED --resume DIR`` (``diff_checkpoints(..., resume=DIR)``) keeps in ``DIR``

* ``manifest.json``: the schema and :data:`VERSION`, the input fingerprints, the result-changing
  settings (:meth:`DiffConfig.result_settings`) and their ``config_hash``, and the unit plan
  (each unit's base shard and tuned shards, tensor names and bytes);
* ``unit-<index>.json``: the partial result of each finished unit (``TensorResult.to_dict``),
  written atomically (temporary name, then rename) as soon as the unit is done;
* ``unit-<index>.mask.safetensors``: with ``--mask-out``, the unit's packed mask slice, written
  (atomically) before its result; the mask file is assembled from the slices in unit order.

The input fingerprints are content digests: per weight file its name and the sha256 of its
bytes (:func:`rlsparse_lib.io.digest.file_digest`: a hub-cache blob is named by its sha256 and is
not read; a local file is read once more to hash it). Size and mtime, or a header hash, would not
notice re-saved weights of the same shapes.

A rerun of the same command skips the finished units and merges their stored partials with the new
ones in unit order; JSON round-trips Python floats exactly, so the report is the same bit for bit as
an uninterrupted run's (except timing). A folder made from other inputs, settings or unit plan is
refused (:class:`ResumeMismatchError`, naming what differs); it is never silently mixed in.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rlsparse_lib.atomic import write_text_atomic
from rlsparse_lib.diff.config import DiffConfig
from rlsparse_lib.diff.report import TensorResult
from rlsparse_lib.diff.units import WorkUnit, mask_slice_path
from rlsparse_lib.errors import ConfigError
from rlsparse_lib.io.checkpoint import Checkpoint
from rlsparse_lib.io.digest import files_digest
from rlsparse_lib.provenance import config_hash

__all__ = ["SCHEMA", "VERSION", "ResumeDir", "ResumeMismatchError", "build_manifest", "manifest"]

SCHEMA = "rlsparse-diff-resume"
#: bump when a unit file of the same inputs and settings would hold different numbers
VERSION = 1
MANIFEST = "manifest.json"


class ResumeMismatchError(ConfigError):
    """A resume folder was made from other inputs, settings or unit plan (exit 2)."""


def _unit_record(unit: WorkUnit) -> dict[str, Any]:
    return {
        "index": unit.index,
        "base_file": unit.base_file.name,
        "tuned_files": [f.name for f in unit.tuned_files],
        "names": list(unit.names),
        "nbytes": unit.nbytes,
    }


def manifest(
    schema: str,
    inputs: Mapping[str, Sequence[Path]],
    settings: dict[str, Any],
    unit_bytes: int,
    units: list[dict[str, Any]],
) -> dict[str, Any]:
    """A resume manifest: ``schema`` (the command's), the content digests of every input's files
    (a checkpoint's weight files, a mask file) by role, the result-changing ``settings`` and their hash, and the unit records
    (each with its ``index`` and ``names``, the tensors its result file must hold)."""
    return {
        "schema": schema,
        "version": VERSION,
        "inputs": {role: files_digest(files) for role, files in inputs.items()},
        "settings": settings,
        "config_hash": config_hash(settings),
        "unit_bytes": unit_bytes,
        "units": units,
    }


def build_manifest(
    base: Checkpoint, tuned: Checkpoint, config: DiffConfig, units: list[WorkUnit]
) -> dict[str, Any]:
    """The manifest of diffing ``base`` against ``tuned`` with ``config`` cut into ``units``."""
    return manifest(
        SCHEMA,
        {"base": base.files, "tuned": tuned.files},
        config.result_settings(),
        config.max_unit_bytes,
        [_unit_record(u) for u in units],
    )


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two manifests, in words."""
    out: list[str] = []
    if old.get("schema") != new["schema"] or old.get("version") != VERSION:
        return [
            f"format (found {old.get('schema')} v{old.get('version')}, "
            f"need {new['schema']} v{VERSION})"
        ]
    old_inputs = old.get("inputs", {})
    if list(old_inputs) != list(new["inputs"]):
        out.append(f"inputs ({list(old_inputs)} vs {list(new['inputs'])})")
    for side in new["inputs"]:
        was = dict(map(tuple, old_inputs.get(side, [])))  # file name -> sha256
        now = dict(map(tuple, new["inputs"][side]))
        if was.keys() != now.keys():
            out.append(f"{side} weight files ({sorted(was)} vs {sorted(now)})")
            continue
        changed = [n for n in now if was[n] != now[n]]
        if changed:
            out.append(f"{side} weights' content ({', '.join(changed[:3])})")
    if old.get("config_hash") != new["config_hash"]:
        keys = sorted(
            k for k in new["settings"] if old.get("settings", {}).get(k) != new["settings"][k]
        )
        out.append(f"settings ({', '.join(keys) or 'config hash'})")
    if old.get("units") != new["units"]:
        old_fields = {k for u in old.get("units", []) for k in u}
        if old.get("unit_bytes") != new["unit_bytes"]:
            why = f"--unit-bytes {old.get('unit_bytes')} vs {new['unit_bytes']}"
        elif old_fields and old_fields != {k for u in new["units"] for k in u}:
            why = "unit records of another rlsparse version; finish the run with that version"
        else:
            why = "tensor selection or layout"
        out.append(f"unit plan ({why})")
    return out


class ResumeDir:
    """A resume folder: checks or writes the manifest, loads and stores unit results."""

    def __init__(self, path: str | Path, manifest: dict[str, Any]) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self._names = {u["index"]: set(u["names"]) for u in manifest["units"]}

    @classmethod
    def open(
        cls,
        path: str | Path,
        base: Checkpoint,
        tuned: Checkpoint,
        config: DiffConfig,
        units: list[WorkUnit],
    ) -> ResumeDir:
        """Open ``path`` for this diff (see :meth:`open_manifest`)."""
        return cls.open_manifest(path, build_manifest(base, tuned, config, units))

    @classmethod
    def open_manifest(cls, path: str | Path, manifest: dict[str, Any]) -> ResumeDir:
        """Open ``path`` for the run ``manifest`` describes: write the manifest when new, else
        check that it matches.

        Raises:
            ResumeMismatchError: the folder was made for other inputs, settings or unit plan.
            ConfigError: ``path`` is not a folder, or its manifest cannot be read.
        """
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise ConfigError(f"--resume {path}: exists and is not a directory")
        mpath = path / MANIFEST
        if mpath.is_file():
            try:
                old = json.loads(mpath.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise ConfigError(f"--resume {path}: cannot read {MANIFEST} ({err})") from err
            diffs = _differences(old if isinstance(old, dict) else {}, manifest)
            if diffs:
                raise ResumeMismatchError(
                    f"--resume {path}: made for another run; differs in: {'; '.join(diffs)}"
                    " (use a new folder, or delete this one)"
                )
        else:
            path.mkdir(parents=True, exist_ok=True)
            write_text_atomic(mpath, json.dumps(manifest, indent=1) + "\n")
        return cls(path, manifest)

    def unit_path(self, index: int) -> Path:
        return self.path / f"unit-{index:06d}.json"

    def load_raw(self, masks: bool = False) -> dict[int, dict[str, Any]]:
        """The stored results of finished units, as saved by :meth:`save_raw`: a file that cannot
        be read, or whose ``names`` do not match its unit, is ignored (the unit is run again).
        With ``masks``, a unit counts as finished only when its mask slice
        (:func:`~rlsparse_lib.diff.units.mask_slice_path`) is there too."""
        done: dict[int, dict[str, Any]] = {}
        for index, names in self._names.items():
            p = self.unit_path(index)
            if not p.is_file() or (masks and not mask_slice_path(self.path, index).is_file()):
                continue
            try:
                data = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            ok = isinstance(data, dict) and data.get("index") == index
            if ok and set(data.get("names", ())) == names:
                done[index] = data
        return done

    def save_raw(self, index: int, names: list[str], data: dict[str, Any]) -> None:
        """Store a finished unit's result (a JSON-able dict) atomically, with its tensor names."""
        record = {"index": index, "names": names, **data}
        write_text_atomic(self.unit_path(index), json.dumps(record) + "\n")

    def load_done(self, masks: bool = False) -> dict[int, dict[str, TensorResult]]:
        """The stored diff partials of finished units (see :meth:`load_raw`)."""
        done: dict[int, dict[str, TensorResult]] = {}
        for index, data in self.load_raw(masks).items():
            try:
                results = [TensorResult.from_dict(d) for d in data["results"]]
            except (ValueError, KeyError, TypeError):
                continue
            done[index] = {r.name: r for r in results}
        return done

    def save(self, index: int, partial: Mapping[str, TensorResult]) -> None:
        """Store a finished diff unit's partial result atomically."""
        results = [r.to_dict() for r in partial.values()]
        self.save_raw(index, list(partial), {"results": results})
