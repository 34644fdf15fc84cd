"""A Ray node removed during a run (``ray.cluster_utils.Cluster``: a head without CPUs and two
one-CPU worker nodes on this machine): its units are retried on the other node and the results
equal the in-process run's."""

from __future__ import annotations

import functools
import threading
import time
from pathlib import Path

import pytest

from rlsparse_lib.diff.cluster import Cluster, run_units
from rlsparse_lib.diff.config import DiffConfig
from rlsparse_lib.diff.engine import diff_pairs
from rlsparse_lib.diff.kernels.selection import get_kernel
from rlsparse_lib.diff.units import plan_units
from rlsparse_lib.io.checkpoint import open_checkpoint
from rlsparse_lib.io.pairing import pair_checkpoints

from .ckpt_factory import save_hf
from .test_diff_exact import planted
from .test_resume_cluster import UNIT_BYTES

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")

pytestmark = pytest.mark.slow  # three Ray nodes on 2 cores: ~40 s


def slow_executor(pairs, *args, delay: float, **kw):
    """The CPU executor, slowed down so that units are running when a node goes."""
    time.sleep(delay)
    return diff_pairs(pairs, *args, **kw)


def test_units_survive_a_removed_node(tmp_path: Path) -> None:
    base, tuned, _ = planted()
    b = open_checkpoint(save_hf(tmp_path / "base", base, shards=3))
    t = open_checkpoint(save_hf(tmp_path / "tuned", tuned, shards=2))
    cfg = DiffConfig(max_unit_bytes=UNIT_BYTES)
    units = plan_units(pair_checkpoints(b, t), UNIT_BYTES)
    assert len(units) >= 8
    nodes = cluster_utils.Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False}
    )
    doomed = nodes.add_node(num_cpus=1)
    nodes.add_node(num_cpus=1)
    done: dict = {}
    errors: list[BaseException] = []
    try:
        ray.init(address=nodes.address, logging_level="WARNING")
        slow = functools.partial(slow_executor, delay=0.5)

        def drive() -> None:
            try:
                run_units(
                    Cluster("ray"),
                    units,
                    b,
                    t,
                    cfg,
                    lambda u, o: done.__setitem__(u.index, o),
                    slow,
                )
            except BaseException as err:  # reported by the test thread
                errors.append(err)

        driver = threading.Thread(target=drive)
        driver.start()
        deadline = time.monotonic() + 120
        while len(done) < 2:
            assert driver.is_alive() and time.monotonic() < deadline
            time.sleep(0.05)
        left = len(units) - len(done)
        nodes.remove_node(doomed)  # its running unit dies with it
        driver.join(timeout=180)
        assert not driver.is_alive()
    finally:
        ray.shutdown()
        nodes.shutdown()
    assert not errors, errors
    assert left >= 2  # the node went while units were running or queued
    assert sorted(done) == [u.index for u in units]
    expected = diff_pairs(
        [p for u in units for p in u.pairs], b.reader(), t.reader(), get_kernel("cpu"), cfg
    )
    got = {name: r.to_dict() for o in done.values() for name, r in o.partial.items()}
    assert got == {name: r.to_dict() for name, r in expected.items()}
