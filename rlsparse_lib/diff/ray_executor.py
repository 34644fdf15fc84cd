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

Attempts: Ray tells a task neither that it is a retry nor how many runs it took (only its state
API does, which needs the dashboard). So every run counts itself: it first bumps its unit's counter
in :class:`AttemptCounter`, a small actor made for the run (no CPU, on the head node), and
returns the count with its result; the run that succeeds thus reports the unit's attempts, those
that crashed or raised included.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

from rlsparse_lib.diff.worker import ATTEMPTS, RETRIED, Task, TaskDone
from rlsparse_lib.errors import ConfigError, RlsparseError

__all__ = ["AttemptCounter", "call", "connect", "run_tasks_ray", "task_options"]


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


def task_options(task: Task) -> dict[str, Any]:
    """The Ray task options of a unit: its CPUs and GPU, and its retries."""
    return {
        "num_cpus": task.cpus,
        "num_gpus": task.gpus,
        "max_retries": ATTEMPTS - 1,
        "retry_exceptions": list(RETRIED),
        "scheduling_strategy": "DEFAULT",
    }


class AttemptCounter:
    """Runs started per unit index, over one run (a Ray actor: :func:`run_tasks_ray`)."""

    def __init__(self) -> None:
        self.runs: dict[int, int] = {}

    def start(self, index: int) -> int:
        """Count a run of unit ``index``; returns the runs it has had so far, this one included."""
        self.runs[index] = self.runs.get(index, 0) + 1
        return self.runs[index]


def call(counter: Any, index: int, fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """What a Ray task runs: count this run of unit ``index`` in ``counter`` (an
    :class:`AttemptCounter` actor handle), then ``fn(*args)``.

    Returns:
        ``{"attempt": int, "out": fn(*args)}``: this run's number among the unit's runs.
    """
    ray = _ray()
    attempt = ray.get(counter.start.remote(index))
    return {"attempt": attempt, "out": fn(*args)}


def _counter(ray: ModuleType) -> Any:
    """A new :class:`AttemptCounter` actor on the head node, without a CPU (the way Ray Train
    places its state actor): a worker node that goes takes its units' runs with it, not the
    counts; the head going ends the run anyway."""
    head = {"node:__internal_head__": 0.001}
    return ray.remote(AttemptCounter).options(num_cpus=0, resources=head).remote()


def run_tasks_ray(tasks: list[Task], address: str | None, on_done: TaskDone) -> None:
    """Run ``tasks`` as Ray tasks (see :func:`rlsparse_lib.diff.cluster.run_tasks`)."""
    if not tasks:
        return
    ray = _ray()
    started = connect(address)
    counter = None
    try:
        counter = _counter(ray)
        remote = ray.remote(call)
        refs = {
            remote.options(**task_options(t)).remote(counter, t.index, t.fn, *t.args): t
            for t in tasks
        }
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            for ref in ready:
                task = refs.pop(ref)
                try:
                    out = ray.get(ref)
                except Exception as err:
                    for other in refs:
                        ray.cancel(other)
                    cause = getattr(err, "cause", None)  # a RayTaskError's original exception
                    if isinstance(cause, RlsparseError | OSError | TimeoutError):
                        raise cause from None
                    raise
                on_done(task, out["out"], out["attempt"])
    finally:
        if counter is not None:
            ray.kill(counter)
        if started:
            ray.shutdown()
