"""What runs in a worker process of ``--cluster local`` or ``ray``: one work unit, from the checkpoint
paths to a plain-dict result (:func:`run_unit`), and the driver's view of it (:class:`UnitOutcome`).

A worker opens the two checkpoints itself from their paths (a hub id's snapshot folder), pairs them
with the run's settings (once per worker process), runs the unit on the configured device's
executor and returns the partial result as ``TensorResult.to_dict`` dicts plus its timing and host;
with a mask it first saves the unit's mask slice (:class:`rlsparse_lib.diff.units.MaskSlice`).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlsparse_lib.diff.config import DiffConfig
from rlsparse_lib.diff.report import TensorResult
from rlsparse_lib.diff.units import MaskSlice, WorkUnit, mask_slice_path
from rlsparse_lib.io.checkpoint import Checkpoint
from rlsparse_lib.io.pairing import TensorPair

__all__ = ["ATTEMPTS", "RETRIED", "Task", "TaskDone", "UnitOutcome", "run_unit", "unit_args"]

#: attempts per unit for a transient failure (OSError, TimeoutError, a crashed worker)
ATTEMPTS = 3
#: exceptions worth retrying: a transient read error or a timeout; bad input is never retried
RETRIED = (OSError, TimeoutError)


@dataclass(frozen=True)
class Task:
    """One unit's work for an executor: ``fn(*args)`` in a worker, returning a plain dict.

    Attributes:
        index: the unit's index (the merge order).
        fn: a module-level function (pickled by reference).
        args: its arguments (plain, picklable values).
        cpus, gpus: what the task asks of Ray (a local pool runs one task per process).
    """

    index: int
    fn: Callable[..., dict[str, Any]]
    args: tuple
    cpus: int = 1
    gpus: int = 0


TaskDone = Callable[[Task, dict[str, Any], int], object]


@dataclass(frozen=True)
class UnitOutcome:
    """What a worker reports for a finished unit.

    Attributes:
        partial: the unit's results by tensor name.
        kernel: the kernel's name (``cpu-c``, ``cuda-triton``).
        seconds: wall time of the unit in the worker.
        host: the worker's host name.
        attempts: runs the unit took (1 unless retried; on Ray its own task retries included).
        mask: the unit's mask slice file, when a mask was asked for.
    """

    partial: dict[str, TensorResult]
    kernel: str
    seconds: float
    host: str
    attempts: int = 1
    mask: Path | None = None

    @classmethod
    def from_worker(cls, out: dict[str, Any], attempts: int = 1) -> UnitOutcome:
        """From :func:`run_unit`'s plain-dict result."""
        return cls(
            {d["name"]: TensorResult.from_dict(d) for d in out["results"]},
            out["kernel"],
            out["seconds"],
            out["host"],
            attempts,
            None if out["mask"] is None else Path(out["mask"]),
        )


def unit_args(
    executor: Callable[..., dict[str, TensorResult]],
    base: Checkpoint,
    tuned: Checkpoint,
    config: DiffConfig,
    threads: int,
    unit: WorkUnit,
    mask_dir: Path | None,
) -> tuple:
    """The arguments of :func:`run_unit` for ``unit`` (all plain, picklable values)."""
    mask = None if mask_dir is None else str(mask_slice_path(mask_dir, unit.index))
    return (executor, str(base.path), str(tuned.path), config, threads, unit.names, mask)


_opened: dict[tuple, tuple[Checkpoint, Checkpoint, dict[str, TensorPair]]] = {}


def run_unit(
    executor: Callable[..., dict[str, TensorResult]],
    base_path: str,
    tuned_path: str,
    config: DiffConfig,
    threads: int,
    names: tuple[str, ...],
    mask_path: str | None = None,
) -> dict[str, Any]:
    """Open (once per worker), pair, and diff one unit's tensors on ``config.device``.

    Returns:
        ``{"results": [TensorResult.to_dict()...], "kernel": str, "seconds": float, "host": str,
        "mask": mask_path}``; with ``mask_path`` the unit's mask slice is saved there first.
    """
    from rlsparse_lib.diff.kernels.selection import get_kernel
    from rlsparse_lib.io.checkpoint import open_checkpoint
    from rlsparse_lib.io.pairing import pair_checkpoints

    t0 = time.perf_counter()
    key = (base_path, tuned_path, config.compare_dtype, config.include, config.exclude)
    if key not in _opened:
        b, t = open_checkpoint(Path(base_path)), open_checkpoint(Path(tuned_path))
        plan = pair_checkpoints(
            b, t, config.compare_dtype, config.include, config.exclude, dequantize=True
        )
        _opened[key] = (b, t, {p.name: p for p in plan.pairs})
    b, t, pairs = _opened[key]
    kernel = get_kernel(config.device, threads)
    quantized = any(pairs[n].quant_base or pairs[n].quant_tuned for n in names)
    if getattr(kernel, "streams_to_device", False) and not quantized:
        from rlsparse_lib.diff.gpu_executor import stream_pairs

        executor = stream_pairs  # (a unit with quantized pairs: the given executor decodes them)
    mask = MaskSlice() if mask_path is not None else None
    with b.reader() as rb, t.reader() as rt:
        out = executor([pairs[n] for n in names], rb, rt, kernel, config, mask)
    if mask is not None:
        assert mask_path is not None
        mask.save(mask_path)
    return {
        "results": [r.to_dict() for r in out.values()],
        "kernel": kernel.name,
        "seconds": time.perf_counter() - t0,
        "host": socket.gethostname(),
        "mask": mask_path,
    }
