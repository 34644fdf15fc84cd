"""Checkpoints in Hugging Face layout: local folders or files, or hub ids.

Supported: a single ``model.safetensors``, sharded ``*.safetensors`` with
``model.safetensors.index.json``, ``pytorch_model*.bin`` (with or without an index, read with
``torch.load(weights_only=True)``), a single weight file given directly, a ``.gguf`` file or a
folder holding one GGUF model (:mod:`rlsparse_lib.io.gguf_io`: quantized tensors read as their
dequantized values), and ``org/name[@rev]`` / ``org/name/path/file.gguf[@rev]`` hub ids
(safetensors, GGUF and JSON only): streamed with HTTP Range requests by default
(:mod:`rlsparse_lib.io.hub_stream`, no local copy), or (safetensors) downloaded into the HF cache
with ``download=True``. Inventories come from headers; no tensor data is read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rlsparse_lib.errors import CheckpointError
from rlsparse_lib.io.gguf_io import (
    BlockEncoding,
    GGUFFiles,
    gguf_shards,
    pick_gguf_model,
    read_gguf,
)
from rlsparse_lib.io.hub import download_snapshot, looks_like_hub_id, split_hub_spec
from rlsparse_lib.io.pickle_io import PickleFiles
from rlsparse_lib.io.pickle_io import inventory as pickle_inventory
from rlsparse_lib.io.safetensors_io import MappedFiles, SafetensorsWriter, read_header
from rlsparse_lib.io.tensor_info import TensorInfo

if TYPE_CHECKING:  # imported when a hub id is opened: httpx costs a local diff 50 ms of start-up
    from rlsparse_lib.io.hub_stream import HubRepo, RangeFiles, StreamSettings

__all__ = [
    "Checkpoint",
    "SafetensorsWriter",
    "TensorInfo",
    "TensorReader",
    "open_checkpoint",
]

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth")


@dataclass
class Checkpoint:
    """A resolved checkpoint and its tensor inventory.

    Attributes:
        source: what the user passed (path or hub id).
        path: local folder or file the weights were found in.
        format: ``"safetensors"``, ``"pytorch"`` or ``"gguf"``.
        files: weight files, in shard order.
        tensors: inventory by tensor name (from headers only).
        aliases: names whose data is shared with another name (tied weights stored once).
        config: ``config.json`` next to the weights, if any.
        revision: hub commit hash when resolved from the hub.
        warnings: non-fatal findings (ignored entries, unreadable config).
        remote: the streamed hub repository (files are ``org/name@commit/file`` keys), or None
            for local files.
        encodings: block-quantized tensors (GGUF) by name; their ``tensors`` dtype is the
            dequantized one (float32).
    """

    source: str
    path: Path
    format: str
    files: tuple[Path, ...]
    tensors: dict[str, TensorInfo]
    aliases: dict[str, str] = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    revision: str | None = None
    warnings: list[str] = field(default_factory=list)
    remote: HubRepo | None = None
    encodings: dict[str, BlockEncoding] = field(default_factory=dict)

    @property
    def n_params(self) -> int:
        return sum(t.numel for t in self.tensors.values())

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def fingerprint(self) -> str:
        """sha256 over names, dtypes, shapes, offsets and file sizes (a header hash, not a content hash)."""
        h = hashlib.sha256()
        for name in sorted(self.tensors):
            t = self.tensors[name]
            h.update(f"{name}|{t.dtype}|{t.shape}|{t.file.name}|{t.offset}\n".encode())
        for f in self.files:
            size = self.remote.remote[f].size if self.remote else f.stat().st_size
            h.update(f"{f.name}:{size}\n".encode())
        return h.hexdigest()

    def tied_embeddings(self) -> bool:
        """Whether ``config.json`` declares the output head tied to the input embedding."""
        cfg = self.config
        if "tie_word_embeddings" in cfg:
            return bool(cfg["tie_word_embeddings"])
        text = cfg.get("text_config")
        return bool(isinstance(text, dict) and text.get("tie_word_embeddings"))

    def describe(self) -> dict:
        """JSON-able provenance record (with ``transport``: how a hub checkpoint was streamed, its
        pinned commit and the bytes fetched so far; None for local files)."""
        dtypes: dict[str, int] = {}
        for name, t in self.tensors.items():
            enc = self.encodings.get(name)
            key = t.dtype if enc is None else enc.scheme
            dtypes[key] = dtypes.get(key, 0) + 1
        return {
            "source": self.source,
            "path": str(self.path),
            "format": self.format,
            "files": [f.name for f in self.files],
            "n_tensors": len(self.tensors),
            "n_elements": self.n_params,
            "stored_dtypes": dtypes,
            "revision": self.revision,
            "fingerprint": self.fingerprint(),
            "tied_embeddings": self.tied_embeddings(),
            "transport": None if self.remote is None else self.remote.describe(),
        }

    def reader(self) -> TensorReader:
        return TensorReader(self)

    def undecodable(self) -> dict[str, str]:
        """Tensors stored in a quantized type no decoder is known for, with their scheme."""
        return {
            n: f"{e.refusal} in {self.tensors[n].file.name}"
            for n, e in self.encodings.items()
            if not e.decodable
        }


class TensorReader:
    """Chunked raw-word access to one checkpoint's tensors; use as a context manager."""

    def __init__(self, ckpt: Checkpoint) -> None:
        self.ckpt = ckpt
        self._files: MappedFiles | PickleFiles | GGUFFiles | RangeFiles
        if ckpt.format == "gguf" and ckpt.remote is not None:
            self._files = GGUFFiles(ckpt.encodings, ckpt.remote.reader())
        elif ckpt.remote is not None:
            self._files = ckpt.remote.reader()
        elif ckpt.format == "gguf":
            self._files = GGUFFiles(ckpt.encodings)
        elif ckpt.format == "safetensors":
            self._files = MappedFiles()
        else:
            self._files = PickleFiles()

    @property
    def gguf(self) -> GGUFFiles | None:
        """The GGUF reader (raw blocks beside the values), or None for another format."""
        return self._files if isinstance(self._files, GGUFFiles) else None

    def words(self, name: str, start: int, stop: int) -> np.ndarray:
        """Flat elements ``[start, stop)`` of tensor ``name`` as unsigned words (zero-copy when possible)."""
        return self._files.words(self.ckpt.tensors[name], start, stop)

    def prefetch(self, name: str, start: int, stop: int) -> None:
        self._files.prefetch(self.ckpt.tensors[name], start, stop)

    def release(self, name: str, start: int, stop: int) -> None:
        self._files.release(self.ckpt.tensors[name], start, stop)

    def close(self) -> None:
        self._files.close()

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_checkpoint(
    spec: str | Path | Checkpoint,
    cache_dir: str | Path | None = None,
    download: bool = False,
    stream: StreamSettings | None = None,
) -> Checkpoint:
    """Resolve a local path or hub id and read its tensor inventory.

    Args:
        spec: folder, weight file, ``*.index.json`` file, ``org/name[@revision]``,
            ``org/name/path/file.gguf[@revision]``, or an already-open :class:`Checkpoint`
            (returned as is).
        cache_dir: Hugging Face cache folder for hub ids with ``download``.
        download: download a hub id's safetensors into the HF cache (as before streaming)
            instead of streaming it with Range requests.
        stream: streaming settings (default: :meth:`StreamSettings.from_env`).

    Raises:
        CheckpointError: with the file (and tensor) named, for anything missing or corrupt.
    """
    if isinstance(spec, Checkpoint):
        return spec
    text = str(spec)
    path = Path(text).expanduser()
    revision = None
    if not path.exists():
        if looks_like_hub_id(text) and not download:
            from rlsparse_lib.io.hub_stream import open_repo

            return _open_remote(text, open_repo(text, stream))
        if looks_like_hub_id(text) and split_hub_spec(text)[1] is not None:
            raise CheckpointError(
                f"'{text}': GGUF files are streamed, not downloaded (drop --download)"
            )
        if looks_like_hub_id(text):
            path, revision = download_snapshot(text, cache_dir)
        else:
            raise CheckpointError(f"{text}: no such file or folder")
    ckpt = _open_local(text, path)
    ckpt.revision = revision
    return ckpt


def _open_remote(source: str, repo: HubRepo) -> Checkpoint:
    """A streamed hub checkpoint: the inventory from the files' headers read by Range requests."""
    ckpt = Checkpoint(
        source=source,
        path=Path(repo.key),
        format=repo.format,
        files=repo.files,
        tensors={},
        config=repo.config,
        revision=repo.commit,
        warnings=list(repo.warnings),
        remote=repo,
        encodings=dict(repo.encodings),
    )
    for f in repo.files:
        _add_tensors(ckpt, f, repo.headers[f])
    if repo.weight_map is not None:
        _check_weight_map(f"{repo.key}/{repo.index_name}", repo.weight_map, ckpt)
    return ckpt


def _add_tensors(ckpt: Checkpoint, f: Path, tensors: dict[str, TensorInfo]) -> None:
    for name, info in tensors.items():
        if name in ckpt.tensors:
            raise CheckpointError(f"{f}: tensor '{name}' also stored in {ckpt.tensors[name].file}")
        ckpt.tensors[name] = info


def _open_local(source: str, path: Path) -> Checkpoint:
    gguf_note = None
    if path.is_dir():
        gguf, gguf_note = _gguf_in_folder(path)
        path = gguf or path
    if path.is_file() and path.name.endswith(".gguf"):
        files = gguf_shards(path)
        ckpt = Checkpoint(source, path, "gguf", tuple(files), {})
        for f in files:
            tensors, encodings = read_gguf(f)
            _add_tensors(ckpt, f, tensors)
            ckpt.encodings.update(encodings)
        return ckpt
    if path.is_dir():
        folder = path
        kind, files, index = _find_weights(path)
    else:
        folder = path.parent
        name = path.name
        if name.endswith(".index.json"):
            kind = "safetensors" if name.endswith(".safetensors.index.json") else "pytorch"
            files, index = _files_from_index(path), path
        elif name.endswith(".safetensors"):
            kind, files, index = "safetensors", [path], None
        elif name.endswith(_PICKLE_SUFFIXES):
            kind, files, index = "pytorch", [path], None
        else:
            raise CheckpointError(
                f"{path}: not a weight file (.safetensors, .bin, .pt, .index.json, .gguf)"
            )
    ckpt = Checkpoint(source=source, path=path, format=kind, files=tuple(files), tensors={})
    for f in files:
        if kind == "safetensors":
            tensors, _ = read_header(f)
            aliases: dict[str, str] = {}
        else:
            tensors, aliases, warns = pickle_inventory(f)
            ckpt.warnings.extend(warns)
        _add_tensors(ckpt, f, tensors)
        ckpt.aliases.update(aliases)
    if index is not None:
        _check_index(index, ckpt)
    ckpt.config = _read_config(folder / "config.json", ckpt.warnings)
    if gguf_note:
        ckpt.warnings.append(gguf_note)
    return ckpt


def _gguf_in_folder(folder: Path) -> tuple[Path | None, str | None]:
    """The first file of the folder's one GGUF model (None without ``.gguf`` files), and a
    warning when the folder also holds Hugging Face weights: those are then read instead (the
    folder's model in the layout every other tool reads), and the warning says so.

    Raises:
        CheckpointError: listing the models when there are several GGUF models and no other
            weights.
    """
    names = [p.name for p in folder.glob("*.gguf") if p.is_file()]
    if not names:
        return None, None
    others = sorted(
        p.name for p in (*folder.glob("*.safetensors"), *folder.glob("pytorch_model*.bin"))
    )
    if others:
        return None, (
            f"{folder} also holds GGUF files ({', '.join(sorted(names)[:4])}): its "
            f"{', '.join(others[:2])}{', ...' if len(others) > 2 else ''} weights are read; "
            "pass a .gguf file to read a GGUF model"
        )
    files = pick_gguf_model(names, str(folder), f"pass the file, e.g. {folder / sorted(names)[0]},")
    assert files is not None  # names holds .gguf files
    return folder / files[0], None


def _find_weights(folder: Path) -> tuple[str, list[Path], Path | None]:
    for kind, index_name, single in (
        ("safetensors", "model.safetensors.index.json", "model.safetensors"),
        ("pytorch", "pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        if (folder / index_name).is_file():
            return kind, _files_from_index(folder / index_name), folder / index_name
        if (folder / single).is_file():
            return kind, [folder / single], None
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if len(indexes) == 1:
        return "safetensors", _files_from_index(indexes[0]), indexes[0]
    shards = sorted(folder.glob("*.safetensors"))
    if shards:
        return "safetensors", shards, None
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if bins:
        return "pytorch", bins, None
    raise CheckpointError(
        f"{folder}: no weights found (expected model.safetensors, *.safetensors with "
        "model.safetensors.index.json, pytorch_model*.bin, or one GGUF model: *.gguf)"
    )


def _load_index(index: Path) -> dict[str, str]:
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{index}: corrupt index file ({exc})") from exc
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: corrupt index file (no 'weight_map')")
    return {str(k): str(v) for k, v in weight_map.items()}


def _files_from_index(index: Path) -> list[Path]:
    weight_map = _load_index(index)
    # shard -> its first tensor, in order (a dict, not list lookups: 92k names x 163 shards)
    first: dict[str, str] = {}
    for name, fname in weight_map.items():
        first.setdefault(fname, name)
    files: list[Path] = []
    for fname, name in first.items():
        f = index.parent / fname
        if not f.is_file():
            raise CheckpointError(f"{index}: names missing shard '{fname}' (for tensor '{name}')")
        files.append(f)
    return files


def _check_index(index: Path, ckpt: Checkpoint) -> None:
    _check_weight_map(str(index), _load_index(index), ckpt)


def _check_weight_map(index: str, weight_map: dict[str, str], ckpt: Checkpoint) -> None:
    for name, fname in weight_map.items():
        info = ckpt.tensors.get(name)
        if info is None or info.file.name != Path(fname).name:
            raise CheckpointError(f"{index}: tensor '{name}' is not in shard '{fname}'")


def _read_config(path: Path, warnings: list[str]) -> dict:
    if not path.is_file():
        return {}
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        warnings.append(f"{path}: unreadable config ({exc}); tied weights detected from data only")
        return {}
    return cfg if isinstance(cfg, dict) else {}
