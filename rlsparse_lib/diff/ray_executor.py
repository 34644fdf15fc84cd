"""``--cluster ray``: work units as Ray core tasks. The only module that imports Ray (lazily: Ray is
the optional extra ``rlsparse[ray]``).

Connection: an already initialised Ray (e.g. a job submitted with ``ray job submit``, or a caller's
``ray.init``) is used as is; else ``ray.init(address)`` for a ``ray://HOST:PORT`` address, else
``RAY_ADDRESS`` when set, else a local Ray instance on this machine's cores (shut down at the end).

Each unit is one task running :func:`rlsparse_lib.diff.worker.run_unit`: it reads its tensors from
the checkpoint paths, which must be the same on every node (a shared file system, or the same hub
cache path). A task asks Ray for the kernel threads' CPUs (``--threads``, default 1) and, with
``--device cuda``, one GPU. Tasks are placed by Ray's default scheduler, never pinned to a node.
Ray retries a task whose worker or node died (``max_retries``) and one that raised ``OSError`` or
``TimeoutError`` (``retry_exceptions``), up to :data:`~rlsparse_lib.diff.worker.ATTEMPTS` runs in
all; bad input (:class:`~rlsparse_lib.errors.RlsparseError`) is not retried: the first one cancels
the other tasks and is raised as is, naming the file and tensor.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from rlsparse_lib.diff.config import DiffConfig
from rlsparse_lib.diff.report import TensorResult
from rlsparse_lib.diff.units import WorkUnit
from rlsparse_lib.diff.worker import ATTEMPTS, RETRIED, UnitOutcome, run_unit, unit_args
from rlsparse_lib.errors import ConfigError, RlsparseError
from rlsparse_lib.io.checkpoint import Checkpoint

__all__ = ["connect", "run_units_ray", "task_options"]


def _ray() -> ModuleType:
    try:
        import ray
    except ImportError as err:
        raise ConfigError(
            "--cluster ray needs Ray: pip install 'rlsparse[ray]' (or ray itself)"
        ) from err
    return ray


def connect(address: str | None) -> bool:
    """Make sure this process is connected to Ray; True when this call connected (and the caller
    should ``ray.shutdown()`` when done), False when Ray was already initialised."""
    ray = _ray()
    if ray.is_initialized():
        return False
    if address is not None:
        ray.init(address=address, logging_level=logging.WARNING)
    elif os.environ.get("RAY_ADDRESS"):
        ray.init(logging_level=logging.WARNING)
    else:
        ray.init(
            num_cpus=os.cpu_count() or 1, include_dashboard=False, logging_level=logging.WARNING
        )
    return True


def task_options(config: DiffConfig, threads: int) -> dict[str, Any]:
    """The Ray task options of a unit: its CPUs and GPU, and its retries."""
    return {
        "num_cpus": threads,
        "num_gpus": 1 if config.device == "cuda" else 0,
        "max_retries": ATTEMPTS - 1,
        "retry_exceptions": list(RETRIED),
        "scheduling_strategy": "DEFAULT",
    }


def run_units_ray(
    units: list[WorkUnit],
    base: Checkpoint,
    tuned: Checkpoint,
    config: DiffConfig,
    address: str | None,
    on_done: Callable[[WorkUnit, UnitOutcome], object],
    executor: Callable[..., dict[str, TensorResult]],
    mask_dir: Path | None = None,
) -> None:
    """Run ``units`` as Ray tasks (see :func:`rlsparse_lib.diff.cluster.run_units`)."""
    if not units:
        return
    ray = _ray()
    started = connect(address)
    try:
        threads = config.threads or 1  # Ray runs one task per CPU it has
        task = ray.remote(run_unit).options(**task_options(config, threads))
        refs = {
            task.remote(*unit_args(executor, base, tuned, config, threads, u, mask_dir)): u
            for u in units
        }
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            for ref in ready:
                unit = refs.pop(ref)
                try:
                    out = ray.get(ref)
                except Exception as err:
                    for other in refs:
                        ray.cancel(other)
                    cause = getattr(err, "cause", None)  # a RayTaskError's original exception
                    if isinstance(cause, RlsparseError | OSError | TimeoutError):
                        raise cause from None
                    raise
                on_done(unit, UnitOutcome.from_worker(out))
    finally:
        if started:
            ray.shutdown()
