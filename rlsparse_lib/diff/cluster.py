"""Executors that run work units outside the calling process: ``--cluster local[:N]``.

``local[:N]`` runs units on a :class:`~concurrent.futures.ProcessPoolExecutor` of ``N`` worker
processes (default: the CPU count; ``forkserver`` start method where available, else ``spawn``).
Each worker opens the two checkpoints itself from their local paths (a hub id's snapshot folder),
pairs them with the run's settings (once per worker) and runs the CPU executor
(:func:`rlsparse_lib.diff.engine.diff_pairs`) on its unit, returning the partial result as
``TensorResult.to_dict`` dicts. The caller merges the partials in unit order, so the report is the
same bit for bit as an in-process run's (the CPU kernel's float sums are per fixed partition of a
chunk, independent of thread count). Bad input fails fast (the first error cancels the queued
units and is raised as is, naming the file and tensor); an ``OSError`` in a worker is retried once.

``ray`` is reserved for an optional extra and not implemented yet.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path

from rlsparse_lib.diff.config import DiffConfig
from rlsparse_lib.diff.report import TensorResult
from rlsparse_lib.diff.units import WorkUnit
from rlsparse_lib.errors import ConfigError
from rlsparse_lib.io.checkpoint import Checkpoint
from rlsparse_lib.io.pairing import TensorPair

__all__ = ["parse_cluster", "run_units_local", "worker_threads"]

#: attempts per unit when a worker raises OSError (a transient read error is retried once)
ATTEMPTS = 2


def parse_cluster(spec: str) -> int:
    """Workers of a ``--cluster`` spec: ``local`` (CPU count) or ``local:N``.

    Raises:
        ConfigError: for ``ray`` (not implemented) or anything else malformed.
    """
    kind, _, count = spec.partition(":")
    if kind == "ray":
        raise ConfigError("--cluster ray needs the optional extra: not implemented yet")
    if kind != "local":
        raise ConfigError(f"--cluster {spec!r}: expected local or local:N")
    if not count:
        return os.cpu_count() or 1
    try:
        n = int(count)
    except ValueError:
        n = 0
    if n <= 0:
        raise ConfigError(f"--cluster {spec!r}: N must be a positive integer")
    return n


def worker_threads(config: DiffConfig, workers: int) -> int:
    """CPU kernel threads per worker: ``config.threads``, else the cores shared among workers."""
    return config.threads or max(1, (os.cpu_count() or 1) // workers)


def run_units_local(
    units: list[WorkUnit],
    base: Checkpoint,
    tuned: Checkpoint,
    config: DiffConfig,
    workers: int,
    on_done: Callable[[WorkUnit, dict[str, TensorResult]], object],
    executor: Callable[..., dict[str, TensorResult]],
) -> None:
    """Run ``units`` on a pool of ``workers`` processes; ``on_done(unit, partial)`` is called in the
    calling process as each unit finishes (in completion order). ``executor`` is the CPU executor
    (:func:`rlsparse_lib.diff.engine.diff_pairs`, passed by reference to the workers)."""
    if not units:
        return
    threads = worker_threads(config, workers)
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    args = (executor, str(base.path), str(tuned.path), config, threads)
    pool = ProcessPoolExecutor(max_workers=min(workers, len(units)), mp_context=ctx)
    try:
        pending: dict[Future, tuple[WorkUnit, int]] = {}
        for u in units:
            pending[pool.submit(_run_unit, *args, u.names)] = (u, 1)
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                unit, attempt = pending.pop(fut)
                err = fut.exception()
                if err is None:
                    on_done(unit, {d["name"]: TensorResult.from_dict(d) for d in fut.result()})
                elif isinstance(err, OSError) and attempt < ATTEMPTS:
                    pending[pool.submit(_run_unit, *args, unit.names)] = (unit, attempt + 1)
                else:
                    raise err
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ---- in the worker process ----------------------------------------------------------------------
_opened: dict[tuple, tuple[Checkpoint, Checkpoint, dict[str, TensorPair]]] = {}


def _run_unit(
    executor: Callable[..., dict[str, TensorResult]],
    base_path: str,
    tuned_path: str,
    config: DiffConfig,
    threads: int,
    names: tuple[str, ...],
) -> list[dict]:
    """Open (once per worker), pair, and diff one unit's tensors; partial results as dicts."""
    from rlsparse_lib.diff.kernels import get_kernel
    from rlsparse_lib.io.checkpoint import open_checkpoint
    from rlsparse_lib.io.pairing import pair_checkpoints

    key = (base_path, tuned_path, config.compare_dtype, config.include, config.exclude)
    if key not in _opened:
        b, t = open_checkpoint(Path(base_path)), open_checkpoint(Path(tuned_path))
        plan = pair_checkpoints(b, t, config.compare_dtype, config.include, config.exclude)
        _opened[key] = (b, t, {p.name: p for p in plan.pairs})
    b, t, pairs = _opened[key]
    kernel = get_kernel("cpu", threads)
    with b.reader() as rb, t.reader() as rt:
        out = executor([pairs[n] for n in names], rb, rt, kernel, config)
    return [r.to_dict() for r in out.values()]
