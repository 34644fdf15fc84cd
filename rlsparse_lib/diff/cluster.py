"""Executors that run work units outside the calling process: ``--cluster local[:N]`` and
``--cluster ray[://HOST:PORT]``.

``local[:N]`` runs units on a :class:`~concurrent.futures.ProcessPoolExecutor` of ``N`` worker
processes (default: the CPU count; ``forkserver`` start method where available, else ``spawn``).
``ray`` runs each unit as a Ray core task (:mod:`rlsparse_lib.diff.ray_executor`, the one module
that imports Ray).

Either way each unit runs :func:`rlsparse_lib.diff.worker.run_unit` in a worker process, which
reads its tensors from the checkpoint paths and returns the unit's partial result. The caller
merges the partials in unit order, so the report is the same bit for bit as an in-process run's
(the CPU kernel's float sums are per fixed partition of a chunk, independent of thread count).

Failures: bad input (:class:`~rlsparse_lib.errors.RlsparseError`) fails fast, raised as is with the
file and tensor named, and the queued units are cancelled; an ``OSError`` or ``TimeoutError`` is
retried (:data:`ATTEMPTS` attempts per unit); a crashed worker process (killed, out of memory) loses
only its unit, which is run again on a fresh worker (the process pool is rebuilt; Ray retries the
task).
"""

from __future__ import annotations

import multiprocessing
import os
import socket
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlsparse_lib.diff.config import DiffConfig
from rlsparse_lib.diff.report import TensorResult
from rlsparse_lib.diff.units import Unit, WorkUnit
from rlsparse_lib.diff.worker import (
    ATTEMPTS,
    RETRIED,
    Task,
    TaskDone,
    UnitOutcome,
    run_unit,
    unit_args,
)
from rlsparse_lib.errors import ConfigError
from rlsparse_lib.io.checkpoint import Checkpoint
from rlsparse_lib.progress import byte_progress

__all__ = [
    "Cluster",
    "ExecutionLog",
    "UnitProgress",
    "parse_cluster",
    "run_tasks",
    "run_units",
    "worker_threads",
]


@dataclass(frozen=True)
class Cluster:
    """A parsed ``--cluster`` spec.

    Attributes:
        kind: ``local`` (process pool) or ``ray``.
        workers: processes of a local pool (None for ray).
        address: a Ray address (``ray://HOST:PORT``), or None: ``RAY_ADDRESS`` when set, else a
            local Ray instance on this machine's cores.
    """

    kind: str
    workers: int | None = None
    address: str | None = None


OnDone = Callable[[WorkUnit, UnitOutcome], object]


class ExecutionLog:
    """How a run's units were executed, for the provenance (:meth:`summary`): per-unit timing,
    host and attempts, the retries, and which units came from a resume folder."""

    def __init__(self, units: Sequence[Unit], executor: str, resumed: set[int]) -> None:
        self.executor = executor
        self.n_units = len(units)
        self.resumed = sorted(resumed)
        self.host = socket.gethostname()
        self.records: dict[int, dict[str, Any]] = {}
        self.kernels: set[str] = set()

    def record(self, unit: WorkUnit, outcome: UnitOutcome) -> None:
        """Note a finished diff unit."""
        self.kernels.add(outcome.kernel)
        self.add(unit.index, unit.nbytes, outcome.seconds, outcome.host, outcome.attempts)

    def add(self, index: int, nbytes: int, seconds: float, host: str, attempts: int) -> None:
        """Note a finished unit of any command."""
        self.records[index] = {
            "index": index,
            "nbytes": nbytes,
            "seconds": seconds,
            "host": host,
            "attempts": attempts,
        }

    def kernel(self, device: str) -> str:
        """The kernel(s) the units ran on (``device`` when none ran here)."""
        return ",".join(sorted(self.kernels)) or device

    def summary(self) -> dict[str, Any]:
        """``{"executor", "n_units", "n_run", "n_resumed", "retries", "retried_units", "hosts",
        "units": [{"index", "nbytes", "seconds", "host", "attempts"}...]}`` (units in index
        order; ``attempts`` counts every run of a unit: the driver's reruns and, on Ray, the task
        retries Ray made itself, counted by the runs (:mod:`rlsparse_lib.diff.ray_executor`))."""
        units = [self.records[i] for i in sorted(self.records)]
        hosts: dict[str, int] = {}
        for r in units:
            hosts[r["host"]] = hosts.get(r["host"], 0) + 1
        return {
            "executor": self.executor,
            "n_units": self.n_units,
            "n_run": len(units),
            "n_resumed": len(self.resumed),
            "retries": sum(r["attempts"] - 1 for r in units),
            "retried_units": [r["index"] for r in units if r["attempts"] > 1],
            "hosts": hosts,
            "units": units,
        }


class UnitProgress:
    """The driver's one progress bar over a run's units: bytes (rate, ETA) and units done.

    In-process executors advance it chunk by chunk (:meth:`update`); executors elsewhere by a
    whole unit when it is reported (:meth:`unit_done` with ``streamed=False``). Units taken from a
    resume folder count as done from the start."""

    def __init__(self, units: Sequence[Unit], done: set[int], desc: str, enabled: bool) -> None:
        self.n_total = len(units)
        self.n_done = len(done)
        self.bar = byte_progress(sum(u.nbytes for u in units), desc, enabled)
        self.bar.update(sum(u.nbytes for u in units if u.index in done))
        self._postfix()

    def _postfix(self) -> None:
        self.bar.set_postfix(units=f"{self.n_done}/{self.n_total}", refresh=False)

    def update(self, nbytes: int) -> None:
        """Bytes read within a unit."""
        self.bar.update(nbytes)

    def unit_done(self, unit: Unit, streamed: bool) -> None:
        """A unit finished; its bytes are added unless they were streamed through :meth:`update`."""
        if not streamed:
            self.bar.update(unit.nbytes)
        self.n_done += 1
        self._postfix()

    def close(self) -> None:
        self.bar.close()


def parse_cluster(spec: str) -> Cluster:
    """A ``--cluster`` spec: ``local`` (CPU count workers), ``local:N``, ``ray`` or
    ``ray://HOST:PORT``.

    Raises:
        ConfigError: for anything else.
    """
    if spec == "ray":
        return Cluster("ray")
    if spec.startswith("ray://"):
        if not spec.removeprefix("ray://"):
            raise ConfigError(f"--cluster {spec!r}: expected ray://HOST:PORT")
        return Cluster("ray", address=spec)
    kind, _, count = spec.partition(":")
    if kind != "local":
        raise ConfigError(f"--cluster {spec!r}: expected local, local:N, ray or ray://HOST:PORT")
    if not count:
        return Cluster("local", os.cpu_count() or 1)
    try:
        n = int(count)
    except ValueError:
        n = 0
    if n <= 0:
        raise ConfigError(f"--cluster {spec!r}: N must be a positive integer")
    return Cluster("local", n)


def worker_threads(config: DiffConfig | int | None, cluster: Cluster) -> int:
    """Kernel threads per unit: ``config.threads`` (or the given count), else the cores shared
    among a local pool's workers, else (ray) 1: Ray schedules one task per CPU it has."""
    threads = config.threads if isinstance(config, DiffConfig) else config
    if threads:
        return threads
    if cluster.kind == "local" and cluster.workers:
        return max(1, (os.cpu_count() or 1) // cluster.workers)
    return 1


def run_tasks(cluster: Cluster, tasks: list[Task], on_done: TaskDone) -> None:
    """Run ``tasks`` on ``cluster``; ``on_done(task, result, attempts)`` is called in the calling
    process as each finishes (in completion order)."""
    if cluster.kind == "local":
        assert cluster.workers is not None  # parse_cluster sets it for local
        run_tasks_local(tasks, cluster.workers, on_done)
        return
    from rlsparse_lib.diff.ray_executor import run_tasks_ray

    run_tasks_ray(tasks, cluster.address, on_done)


def run_units(
    cluster: Cluster,
    units: list[WorkUnit],
    base: Checkpoint,
    tuned: Checkpoint,
    config: DiffConfig,
    on_done: OnDone,
    executor: Callable[..., dict[str, TensorResult]],
    mask_dir: Path | None = None,
) -> None:
    """Run a diff's ``units`` on ``cluster``; ``on_done(unit, outcome)`` is called in the calling
    process as each unit finishes (in completion order). ``executor`` is the CPU executor
    (:func:`rlsparse_lib.diff.engine.diff_pairs`, passed by reference to the workers; a unit on a
    ``cuda`` device runs the GPU executor instead). With ``mask_dir``, each unit saves its mask
    slice there (:func:`~rlsparse_lib.diff.units.mask_slice_path`).

    Raises:
        ConfigError: a device other than ``cpu`` on a local pool, or ``auto`` on Ray.
    """
    if cluster.kind == "local" and config.device != "cpu":
        raise ConfigError("--cluster local runs the CPU executor: use --device cpu")
    if config.device not in ("cpu", "cuda"):
        raise ConfigError("--cluster ray: choose --device cpu or --device cuda (not auto)")
    threads = worker_threads(config, cluster)
    gpus = 1 if config.device == "cuda" else 0
    by_index = {u.index: u for u in units}
    tasks = [
        Task(
            u.index,
            run_unit,
            unit_args(executor, base, tuned, config, threads, u, mask_dir),
            threads,
            gpus,
        )
        for u in units
    ]

    def done(task: Task, out: dict[str, Any], attempts: int) -> None:
        on_done(by_index[task.index], UnitOutcome.from_worker(out, attempts))

    run_tasks(cluster, tasks, done)


#: environment variables a worker reads checkpoints by (hub endpoint, token, offline mode, stream
#: settings): handed to every worker as the caller has them now
_WORKER_ENV_PREFIXES = ("HF_", "HUGGING_FACE_", "RLSPARSE_")


def _worker_env() -> dict[str, str]:
    """The caller's :data:`_WORKER_ENV_PREFIXES` variables."""
    return {k: v for k, v in os.environ.items() if k.startswith(_WORKER_ENV_PREFIXES)}


def _adopt_env(env: dict[str, str]) -> None:
    """Pool initializer: a forkserver's workers inherit the environment of when the fork server
    started (possibly long before this run, e.g. before ``HF_ENDPOINT`` was set), so each worker
    takes the caller's current :func:`_worker_env` instead."""
    for k in [k for k in os.environ if k.startswith(_WORKER_ENV_PREFIXES) and k not in env]:
        del os.environ[k]
    os.environ.update(env)


def run_tasks_local(tasks: list[Task], workers: int, on_done: TaskDone) -> None:
    """Run ``tasks`` on a pool of ``workers`` processes (see :func:`run_tasks`). An ``OSError`` or
    ``TimeoutError`` is retried; a worker that dies breaks the pool: the pool is rebuilt and the
    tasks it had not returned are run again; each task runs up to :data:`ATTEMPTS` times in all."""
    if not tasks:
        return
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if ctx.get_start_method() == "forkserver":
        # import the tasks' modules (and those of functions passed to them) once in the fork
        # server, not in every worker
        funcs = [f for t in tasks for f in (t.fn, *t.args) if callable(f)]
        modules = {getattr(getattr(f, "func", f), "__module__", None) for f in funcs}
        ctx.set_forkserver_preload(sorted(m for m in modules if m and m != "__main__"))
    queue = [(task, 1) for task in tasks]
    while queue:
        pool = ProcessPoolExecutor(
            max_workers=min(workers, len(queue)),
            mp_context=ctx,
            initializer=_adopt_env,
            initargs=(_worker_env(),),
        )
        try:
            pending: dict[Future, tuple[Task, int]] = {
                pool.submit(task.fn, *task.args): (task, attempt) for task, attempt in queue
            }
            queue = []
            broken = False
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    task, attempt = pending.pop(fut)
                    err = fut.exception()
                    if err is None:
                        on_done(task, fut.result(), attempt)
                        continue
                    if not isinstance(err, (*RETRIED, BrokenProcessPool)) or attempt >= ATTEMPTS:
                        raise err
                    broken = broken or isinstance(err, BrokenProcessPool)
                    if broken:  # run again once the pool is rebuilt
                        queue.append((task, attempt + 1))
                    else:
                        pending[pool.submit(task.fn, *task.args)] = (task, attempt + 1)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
