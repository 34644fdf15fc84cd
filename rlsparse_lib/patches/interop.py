"""Other frameworks' sparse patch forms: TRL's ``sparse_weight_patch`` safetensors and vLLM's
``(name, flat indices, values)`` weight patches.

TRL (``trl/experimental/async_grpo``, AsyncGRPO delta sync) writes one safetensors file per sync:
for every changed parameter ``{name}.idx`` (flat positions, ascending: ``raw`` int32, or
``gap_delta`` ``idx[k] - idx[k-1] - 1`` as uint16, uint32 when a gap does not fit) and
``{name}.val`` (the new values), a full tensor under ``name`` for anchors, and string metadata
``format=sparse_weight_patch``, ``version``, ``sparse``, ``model_version``,
``num_changed_params``, ``total_changed_elements``, ``total_elements``, ``sparsity``,
``encoding``. vLLM's sparse weight loading takes ``(name, int32 flat indices, values)`` per
parameter in checkpoint coordinates; its file form here is ``{name}.indices`` / ``{name}.values``
(raw int32) with ``format=vllm_sparse_weight_patch`` and the full shapes as JSON (``shapes``).

Values keep the tensor's own dtype (TRL casts them to bf16, which is lossless only for bf16
weights). rlsparse adds ``rlsparse_base`` (the base tensors' SHA-256), ``rlsparse_sha256`` (every
result tensor's SHA-256), ``rlsparse_removed``, ``rlsparse_xform`` and ``rlsparse_chunk`` to the
metadata, so that an exported patch imports back to the same blocks and still refuses a wrong base
or corrupt data by tensor name; a file TRL wrote has none of these, and only its own structure is
checked.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlsparse_lib.errors import CheckpointError
from rlsparse_lib.io.checkpoint import Checkpoint, TensorReader, open_checkpoint
from rlsparse_lib.io.dtypes import ITEMSIZE, nbytes_of, word_dtype
from rlsparse_lib.io.safetensors_io import SafetensorsWriter, read_header
from rlsparse_lib.io.tensor_info import TensorInfo
from rlsparse_lib.patches.create import CHUNK, LEVEL, encode_patch
from rlsparse_lib.patches.format import PatchError, read_patch
from rlsparse_lib.patches.walk import walk

TRL_FORMAT = "sparse_weight_patch"
VLLM_FORMAT = "vllm_sparse_weight_patch"
#: file form -> (metadata format, index key suffix, value key suffix)
FORMS = {"trl": (TRL_FORMAT, ".idx", ".val"), "vllm": (VLLM_FORMAT, ".indices", ".values")}
#: TRL's index encodings this module reads and writes (``nvcomp_cascaded`` needs a GPU codec)
ENCODINGS = ("raw", "gap_delta")


@dataclass
class _Tensor:
    """One exported tensor: sparse (positions and new words) or whole (all words)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    pos: list[np.ndarray]
    words: list[np.ndarray]


def _tensors(ckpt: Checkpoint, patch_path: str | Path) -> Iterator[tuple[dict[str, Any], _Tensor]]:
    """Each result tensor of a patch (checked by :func:`walk`) with its changes gathered."""
    cur: _Tensor | None = None
    for piece in walk(ckpt, read_patch(patch_path)):
        t = piece.entry
        if cur is None:
            cur = _Tensor(t["name"], t["dtype"], tuple(t["shape"]), [], [])
        if piece.pos is None:
            cur.words.append(piece.words.copy())
        else:
            cur.pos.append(piece.pos + piece.start)
            cur.words.append(piece.words[piece.pos])
        if piece.last:
            yield t, cur
            cur = None


def _cat(parts: list[np.ndarray], dtype: np.dtype) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


def gap_delta_encode(pos: np.ndarray) -> np.ndarray:
    """Ascending positions -> gaps ``pos[k] - pos[k-1] - 1`` (``pos[-1] = -1``) as uint16, or
    uint32 when a gap exceeds 65535 (the dtype is the width, as in TRL)."""
    gaps = np.diff(pos.astype(np.int64), prepend=-1) - 1
    return gaps.astype(np.uint16 if gaps.size == 0 or gaps.max() <= 0xFFFF else np.uint32)


def gap_delta_decode(gaps: np.ndarray) -> np.ndarray:
    """Inverse of :func:`gap_delta_encode` (int64 positions)."""
    return np.cumsum(gaps.astype(np.int64) + 1) - 1


def export_patch(
    base: str | Path | Checkpoint,
    patch_path: str | Path,
    out: str | Path,
    form: str = "trl",
    encoding: str = "raw",
    model_version: int = 0,
) -> dict[str, Any]:
    """Write a patch in TRL's ``sparse_weight_patch`` or vLLM's file form (atomically).

    Memory: one tensor's changes at a time (the payload is staged in a temporary file).

    Raises:
        PatchError: wrong base or damaged patch (by tensor name); for ``form="vllm"``, a patch
            that adds, reshapes or removes tensors (not expressible as weight patches).
    """
    if form not in FORMS:
        raise PatchError(f"unknown patch form {form!r} (one of {', '.join(FORMS)})")
    if encoding not in ENCODINGS or (form == "vllm" and encoding != "raw"):
        raise PatchError(f"index encoding {encoding!r} is not available for the {form} form")
    fmt, idx_key, val_key = FORMS[form]
    ckpt = open_checkpoint(base)
    patch = read_patch(patch_path)
    m = patch.manifest
    if form == "vllm":
        odd = [t["name"] for t in m["tensors"] if t["kind"] != "patch"] + m["removed"]
        if odd:
            raise PatchError(
                f"{patch_path}: tensor '{odd[0]}' is added, reshaped or removed: not expressible "
                "as a vLLM (name, flat indices, values) patch"
            )
    out = Path(out)
    specs: list[tuple[str, str, tuple[int, ...]]] = []
    shapes: dict[str, list[int]] = {}
    sha: dict[str, str] = {}
    n_changed = n_total = n_params = 0
    with tempfile.TemporaryFile(dir=out.parent if out.parent.exists() else None) as tmp:
        for t, ten in _tensors(ckpt, patch_path):
            sha[ten.name] = t["sha256"]
            numel = int(np.prod(ten.shape, dtype=np.int64))
            n_total += numel
            word = word_dtype(ten.dtype)
            if t["kind"] == "whole":
                specs.append((ten.name, ten.dtype, ten.shape))
                tmp.write(_cat(ten.words, word).tobytes())
                n_changed += numel
                n_params += 1
                continue
            pos = _cat(ten.pos, np.dtype(np.int64))
            if pos.size == 0:
                continue
            if numel > np.iinfo(np.int32).max:
                raise PatchError(
                    f"{patch_path}: tensor '{ten.name}' has too many elements for int32"
                )
            idx = gap_delta_encode(pos) if encoding == "gap_delta" else pos.astype(np.int32)
            specs.append((ten.name + idx_key, str(idx.dtype), (idx.size,)))
            specs.append((ten.name + val_key, ten.dtype, (pos.size,)))
            tmp.write(idx.tobytes())
            tmp.write(_cat(ten.words, word).tobytes())
            shapes[ten.name] = list(ten.shape)
            n_changed += pos.size
            n_params += 1
        meta = {
            "format": fmt,
            "version": "1",
            "sparse": str(bool(shapes)),
            "model_version": str(model_version),
            "num_changed_params": str(n_params),
            "total_changed_elements": str(n_changed),
            "total_elements": str(n_total),
            "sparsity": str(1.0 - n_changed / max(n_total, 1)),
            "encoding": encoding,
            "shapes": json.dumps(shapes, separators=(",", ":")),
            "rlsparse_base": json.dumps(m["base"], separators=(",", ":")),
            "rlsparse_sha256": json.dumps(sha, separators=(",", ":")),
            "rlsparse_removed": json.dumps(m["removed"]),
            "rlsparse_xform": m["xform"],
            "rlsparse_chunk": str(m["chunk"]),
        }
        tmp.seek(0)
        with SafetensorsWriter(out, specs, meta) as writer:
            for name, dtype, shape in specs:
                nbytes = nbytes_of(dtype, int(np.prod(shape, dtype=np.int64)))
                done = 0
                while done < nbytes:
                    part = tmp.read(min(nbytes - done, 1 << 24))
                    writer.write(name, np.frombuffer(part, np.uint8))
                    done += len(part)
    return {
        "out": str(out),
        "format": fmt,
        "bytes": out.stat().st_size,
        "tensors": n_params,
        "elements_changed": n_changed,
    }


# ---- import -------------------------------------------------------------------------------------
class _Overlay:
    """The tuned checkpoint a sparse file describes: its base with the file's changes."""

    def __init__(self, base: Checkpoint, path: Path) -> None:
        self.path = path
        try:
            infos, self.meta = read_header(path)
        except CheckpointError as exc:
            raise PatchError(str(exc)) from exc
        fmt = self.meta.get("format")
        form = next((f for f, (name, _, _) in FORMS.items() if name == fmt), None)
        if form is None:
            raise PatchError(
                f"{path}: metadata format is {fmt!r}, expected {TRL_FORMAT} or {VLLM_FORMAT}"
            )
        _, self.idx_key, self.val_key = FORMS[form]
        self.encoding = self.meta.get("encoding", "raw") if form == "trl" else "raw"
        if self.encoding not in ENCODINGS:
            raise PatchError(f"{path}: index encoding {self.encoding!r} is not supported")
        self.source = str(path)
        self.base = base
        self.file = Checkpoint(str(path), path, "safetensors", (path,), infos)
        removed = set(json.loads(self.meta.get("rlsparse_removed", "[]")))
        self.sparse: dict[str, tuple[str, str]] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self.whole: set[str] = set()
        for key in infos:
            for suffix in (self.idx_key, self.val_key):
                name = key.removesuffix(suffix)
                if key.endswith(suffix) and name not in base.tensors:
                    raise PatchError(f"{path}: tensor '{name}' is patched but not in the base")
        for name, info in base.tensors.items():
            if name in removed:
                continue
            if name + self.idx_key in infos or name + self.val_key in infos:
                if name + self.idx_key not in infos or name + self.val_key not in infos:
                    raise PatchError(f"{path}: tensor '{name}': indices or values missing")
                self.sparse[name] = (name + self.idx_key, name + self.val_key)
            self.tensors[name] = info
        for key, info in infos.items():
            if key.endswith((self.idx_key, self.val_key)):
                continue
            self.tensors[key] = info
            self.whole.add(key)

    def changes(self, reader: TensorReader, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(ascending int64 positions, new words) of a sparse tensor, checked."""
        ik, vk = self.sparse[name]
        info, finfo = self.base.tensors[name], self.file.tensors
        if finfo[vk].dtype != info.dtype:
            raise PatchError(
                f"{self.path}: tensor '{name}': values are {finfo[vk].dtype}, the base tensor is "
                f"{info.dtype}: the patch cannot restore it exactly"
            )
        idx_info = finfo[ik]
        if len(idx_info.shape) != 1 or len(finfo[vk].shape) != 1:
            raise PatchError(f"{self.path}: tensor '{name}': indices and values must be 1-D")
        ok = {"raw": ("int32", "int64"), "gap_delta": ("uint16", "uint32")}[self.encoding]
        if idx_info.dtype not in ok:
            raise PatchError(
                f"{self.path}: tensor '{name}': {self.encoding} indices cannot be {idx_info.dtype}"
            )
        raw = reader.words(ik, 0, idx_info.numel).view(np.dtype(idx_info.dtype))
        pos = gap_delta_decode(raw) if self.encoding == "gap_delta" else raw.astype(np.int64)
        vals = np.array(reader.words(vk, 0, finfo[vk].numel))
        if pos.size != vals.size:
            raise PatchError(
                f"{self.path}: tensor '{name}': {pos.size} indices but {vals.size} values"
            )
        if pos.size and (pos[0] < 0 or pos[-1] >= info.numel or np.any(np.diff(pos) <= 0)):
            raise PatchError(
                f"{self.path}: tensor '{name}': indices not strictly ascending in [0, {info.numel})"
            )
        return pos, vals

    def reader(self) -> _OverlayReader:
        return _OverlayReader(self)

    def verify(self, manifest: dict[str, Any]) -> None:
        """Compare the imported patch with the fingerprints the file carries, if any."""
        carried = json.loads(self.meta.get("rlsparse_base", "{}"))
        for name, want in carried.items():
            got = manifest["base"].get(name)
            if got is None or got["sha256"] != want["sha256"]:
                raise PatchError(
                    f"{self.base.source}: tensor '{name}' differs from the patch's base "
                    "(SHA-256 mismatch): wrong base checkpoint"
                )
        sha = json.loads(self.meta.get("rlsparse_sha256", "{}"))
        for t in manifest["tensors"]:
            want_sha = sha.get(t["name"])
            if want_sha is not None and want_sha != t["sha256"]:
                raise PatchError(
                    f"{self.path}: tensor '{t['name']}': result does not match the patch's "
                    "SHA-256 (corrupt patch data)"
                )


class _OverlayReader:
    def __init__(self, overlay: _Overlay) -> None:
        self.o = overlay
        self.base = overlay.base.reader()
        self.file = overlay.file.reader()
        self._cur: tuple[str, np.ndarray, np.ndarray] | None = None

    def words(self, name: str, start: int, stop: int) -> np.ndarray:
        if name in self.o.whole:
            return self.file.words(name, start, stop)
        words = self.base.words(name, start, stop)
        if name not in self.o.sparse:
            return words
        if self._cur is None or self._cur[0] != name:
            self._cur = (name, *self.o.changes(self.file, name))
        _, pos, vals = self._cur
        lo, hi = np.searchsorted(pos, [start, stop])
        if lo == hi:
            return words
        out = words.copy()
        out[pos[lo:hi] - start] = vals[lo:hi]
        return out

    def release(self, name: str, start: int, stop: int) -> None:
        (self.file if name in self.o.whole else self.base).release(name, start, stop)

    def __enter__(self) -> _OverlayReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.base.close()
        self.file.close()


def import_patch(
    base: str | Path | Checkpoint,
    src: str | Path,
    out: str | Path,
    xform: str | None = None,
    level: int = LEVEL,
    chunk: int | None = None,
) -> dict[str, Any]:
    """Turn a TRL ``sparse_weight_patch`` or vLLM-form file over ``base`` into an rlsparse patch.

    Tensors the file does not name are unchanged; ``{name}.idx``/``.val`` pairs replace values;
    a plain ``name`` replaces the tensor whole. ``xform``/``chunk`` default to those an rlsparse
    export recorded (so the blocks come out identical), else ``sub`` and the default chunk.

    Raises:
        PatchError: not such a file, indices/values that do not fit the base tensor, values in
            another dtype than the base tensor, or (when the file carries rlsparse fingerprints) a
            wrong base or corrupt data, naming the tensor.
    """
    ckpt = open_checkpoint(base)
    src = Path(src)
    if not src.is_file():
        raise PatchError(f"{src}: no such file")
    overlay = _Overlay(ckpt, src)
    for name in overlay.whole:
        if overlay.tensors[name].dtype not in ITEMSIZE:
            raise PatchError(f"{src}: tensor '{name}': sub-byte dtype is not supported")
    xform = xform or overlay.meta.get("rlsparse_xform", "sub")
    chunk = chunk or int(overlay.meta.get("rlsparse_chunk", CHUNK))
    summary = encode_patch(ckpt, overlay, out, xform, level, chunk, verify=overlay.verify)
    summary["format"] = overlay.meta["format"]
    return summary


# ---- the vLLM form in Python --------------------------------------------------------------------
def vllm_weight_patches(
    base: str | Path | Checkpoint, patch_path: str | Path
) -> Iterator[tuple[str, Any, Any]]:
    """``(name, int32 flat indices, values)`` torch tensors of every changed tensor, in checkpoint
    coordinates: what vLLM's ``SparseWeightPatch(name, indices, values)`` / sparse
    ``load_weights`` take. One tensor's changes in memory at a time; fingerprints checked.

    Raises:
        PatchError: wrong base or damaged patch, or a patch that adds, reshapes or removes tensors.
    """
    import torch

    from rlsparse_lib.io.dtypes import torch_dtype

    patch = read_patch(patch_path)
    m = patch.manifest
    odd = [t["name"] for t in m["tensors"] if t["kind"] != "patch"] + m["removed"]
    if odd:
        raise PatchError(
            f"{patch_path}: tensor '{odd[0]}' is added, reshaped or removed: not expressible as "
            "a vLLM (name, flat indices, values) patch"
        )
    for _, ten in _tensors(open_checkpoint(base), patch_path):
        pos = _cat(ten.pos, np.dtype(np.int64))
        if pos.size:
            word = word_dtype(ten.dtype)
            vals = _cat(ten.words, word).view(f"int{8 * word.itemsize}")
            yield (
                ten.name,
                torch.from_numpy(pos.astype(np.int32)),
                torch.from_numpy(vals).view(torch_dtype(ten.dtype)),
            )
