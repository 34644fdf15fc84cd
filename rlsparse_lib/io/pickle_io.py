"""PyTorch ``.bin`` checkpoints, read only with ``torch.load(weights_only=True)``.

``weights_only=True`` refuses any pickle that would run code; such a file is reported as unsafe
and never loaded. Files in the zip format are memory-mapped (``mmap=True``), so a shard costs
address space, not RAM; legacy (non-zip) files are loaded whole.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from rlsparse_lib.errors import CheckpointError
from rlsparse_lib.io.dtypes import word_dtype
from rlsparse_lib.io.tensor_info import TensorInfo

_TORCH_TO_NAME = {
    "torch.bool": "bool",
    "torch.uint8": "uint8",
    "torch.int8": "int8",
    "torch.int16": "int16",
    "torch.int32": "int32",
    "torch.int64": "int64",
    "torch.float16": "float16",
    "torch.bfloat16": "bfloat16",
    "torch.float32": "float32",
    "torch.float64": "float64",
    "torch.float8_e4m3fn": "float8_e4m3fn",
    "torch.float8_e5m2": "float8_e5m2",
    "torch.float8_e8m0fnu": "float8_e8m0fnu",
    "torch.float8_e4m3fnuz": "float8_e4m3fnuz",
    "torch.float8_e5m2fnuz": "float8_e5m2fnuz",
}


def load_state(path: Path) -> dict:
    """``torch.load`` a pickled state dict safely (weights only, memory-mapped when possible)."""
    import torch

    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc) and "zip" not in str(exc):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unpickling refused"
        raise CheckpointError(
            f"{path}: unsafe pickle: refusing to load objects other than tensors ({first})"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read PyTorch checkpoint: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path}: not a state dict (top-level object is {type(state).__name__})"
        )
    return state


def inventory(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str], list[str]]:
    """Tensor records of one ``.bin`` file, tensors sharing storage, and warnings.

    Returns:
        (tensors by name, aliases mapping a duplicate name to the first name with the same
        storage, warnings about skipped non-tensor entries).
    """
    import torch

    state = load_state(path)
    tensors: dict[str, TensorInfo] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    warnings: list[str] = []
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            warnings.append(
                f"{path}: entry '{name}' is not a tensor ({type(value).__name__}); ignored"
            )
            continue
        dtype = _TORCH_TO_NAME.get(str(value.dtype))
        if dtype is None:
            raise CheckpointError(f"{path}: tensor '{name}': unsupported dtype {value.dtype}")
        tensors[name] = TensorInfo(name, dtype, tuple(value.shape), path, -1)
        if value.numel():
            key = (
                value.untyped_storage().data_ptr(),
                value.storage_offset(),
                tuple(value.shape),
                tuple(value.stride()),
                value.dtype,
            )
            if key in seen:
                aliases[name] = seen[key]
            else:
                seen[key] = name
    return tensors, aliases, warnings


class PickleFiles:
    """Raw-word reads from ``.bin`` shards; keeps the most recently used shard loaded."""

    def __init__(self) -> None:
        self._path: Path | None = None
        self._state: dict = {}

    def _tensor(self, info: TensorInfo):
        if self._path != info.file:
            self._state = {}
            self._state = load_state(info.file)
            self._path = info.file
        return self._state[info.name]

    def words(self, info: TensorInfo, start: int, stop: int) -> np.ndarray:
        """Elements ``[start, stop)`` of ``info`` (flat, C order) as raw unsigned words."""
        import torch

        flat = self._tensor(info).reshape(-1)[start:stop]
        signed = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[info.itemsize]
        return flat.contiguous().view(signed).numpy().view(word_dtype(info.dtype))

    def prefetch(self, info: TensorInfo, start: int, stop: int) -> None:
        """No-op: pickled shards are read as a whole."""

    def release(self, info: TensorInfo, start: int, stop: int) -> None:
        """No-op: the shard stays mapped until another shard is needed."""

    def close(self) -> None:
        self._state = {}
        self._path = None
