"""``--cluster ray``: the same report and mask bit for bit as the in-process run, a crashed worker's
unit retried, bad input failing fast by name, and resume after a kill. One local Ray instance
(2 CPUs, no dashboard) is shared by the module's tests."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rlsparse_lib.cli import main
from rlsparse_lib.diff import cluster as cluster_module
from rlsparse_lib.diff.cluster import Cluster, run_units
from rlsparse_lib.diff.config import DiffConfig
from rlsparse_lib.diff.engine import diff_checkpoints, diff_pairs
from rlsparse_lib.diff.ray_executor import task_options
from rlsparse_lib.diff.units import plan_units
from rlsparse_lib.diff.worker import Task
from rlsparse_lib.errors import CheckpointError
from rlsparse_lib.io.checkpoint import open_checkpoint
from rlsparse_lib.io.pairing import pair_checkpoints

from .ckpt_factory import save_hf
from .test_diff_exact import planted
from .test_resume_cluster import _SLOW_RUN, UNIT_BYTES, _json, crashing_executor

ray = pytest.importorskip("ray")


def _key(rep) -> str:
    """The report's JSON without timing, kernel threads or the mask's path."""
    d = json.loads(json.dumps(rep.to_dict() if hasattr(rep, "to_dict") else rep))
    d["provenance"].pop("mask_out")
    return _json(d, kernel_fields=True)


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    """A sharded, mixed-layout pair: base in 3 shards, tuned in 2."""
    root = tmp_path_factory.mktemp("ray")
    base, tuned, _ = planted()
    return save_hf(root / "base", base, shards=3), save_hf(root / "tuned", tuned, shards=2)


@pytest.fixture(scope="module")
def reference(pair, tmp_path_factory) -> tuple[str, bytes]:
    """The in-process report's JSON (kernel fields aside) and mask bytes."""
    mask = tmp_path_factory.mktemp("ref") / "m.safetensors"
    rep = diff_checkpoints(*pair, DiffConfig(max_unit_bytes=UNIT_BYTES), mask, progress=False)
    return _key(rep), mask.read_bytes()


@pytest.mark.parametrize("cluster", ["local:1", "local:2", "ray"])
def test_executors_match_the_in_process_run(tmp_path, pair, reference, cluster) -> None:
    mask = tmp_path / "m.safetensors"
    cfg = DiffConfig(max_unit_bytes=UNIT_BYTES)
    rep = diff_checkpoints(*pair, cfg, mask, progress=False, cluster=cluster)
    assert _key(rep) == reference[0]
    assert mask.read_bytes() == reference[1]
    execution = rep.provenance["execution"]
    n = len(plan_units(pair_checkpoints(*map(open_checkpoint, pair)), UNIT_BYTES))
    assert execution["executor"] == cluster and execution["n_run"] == n
    assert [u["index"] for u in execution["units"]] == list(range(n))
    assert rep.provenance["kernel"] == "cpu-c"


def test_a_crashed_worker_is_retried(tmp_path, pair) -> None:
    """Ray reruns the unit of a worker that died; the crashed run counts among its attempts."""
    spec = Cluster("ray")
    b, t = open_checkpoint(pair[0]), open_checkpoint(pair[1])
    cfg = DiffConfig(max_unit_bytes=UNIT_BYTES)
    units = plan_units(pair_checkpoints(b, t), UNIT_BYTES)[:4]
    crashing = functools.partial(crashing_executor, mark=tmp_path / "mark")
    done: dict = {}
    run_units(spec, units, b, t, cfg, lambda u, o: done.__setitem__(u.index, o), crashing)
    assert (tmp_path / "mark").exists()
    assert sorted(done) == [u.index for u in units]
    expected = diff_pairs(
        [p for u in units for p in u.pairs], b.reader(), t.reader(), _cpu_kernel(), cfg
    )
    got = {name: r for o in done.values() for name, r in o.partial.items()}
    assert {k: r.to_dict() for k, r in got.items()} == {k: r.to_dict() for k, r in expected.items()}
    assert sorted(o.attempts for o in done.values()) == [1, 1, 1, 2]  # Ray's own retry counted


def test_execution_log_counts_ray_retries(tmp_path, pair, monkeypatch) -> None:
    """A unit whose run raised an ``OSError`` once, retried by Ray (``retry_exceptions``): the
    report's execution log shows its two attempts and the report equals the plain run's."""
    from .test_resume_cluster import flaky_executor

    flaky = functools.partial(flaky_executor, mark=tmp_path / "mark")
    original = cluster_module.run_units
    monkeypatch.setattr(
        "rlsparse_lib.diff.engine.run_units",
        lambda spec, todo, b, t, cfg, done, executor, mask_dir: original(
            spec, todo, b, t, cfg, done, flaky, mask_dir
        ),
    )
    cfg = DiffConfig(max_unit_bytes=UNIT_BYTES)
    rep = diff_checkpoints(*pair, cfg, progress=False, cluster="ray")
    plain = diff_checkpoints(*pair, cfg, progress=False)
    assert _key(rep) == _key(plain)
    execution = rep.provenance["execution"]
    assert execution["retries"] == 1 and len(execution["retried_units"]) == 1
    attempts = {u["index"]: u["attempts"] for u in execution["units"]}
    assert attempts[execution["retried_units"][0]] == 2
    assert sum(attempts.values()) == len(attempts) + 1


def _cpu_kernel():
    from rlsparse_lib.diff.kernels.selection import get_kernel

    return get_kernel("cpu")


def test_bad_input_fails_fast_naming_the_file(tmp_path, pair) -> None:
    tuned = tmp_path / "tuned"
    shutil.copytree(pair[1], tuned)
    ckb, ckt = open_checkpoint(pair[0]), open_checkpoint(tuned)
    shard = sorted(tuned.glob("*.safetensors"))[0]
    with shard.open("r+b") as fh:  # truncated after the driver planned
        fh.truncate(shard.stat().st_size // 2)
    t0 = time.monotonic()
    with pytest.raises(CheckpointError, match=shard.name):
        diff_checkpoints(
            ckb, ckt, DiffConfig(max_unit_bytes=UNIT_BYTES), progress=False, cluster="ray"
        )
    assert time.monotonic() - t0 < 60  # not retried until some timeout


def test_task_options_request_a_gpu_for_cuda_and_retry_only_transient_errors(
    monkeypatch, pair
) -> None:
    seen: list[Task] = []
    monkeypatch.setattr(cluster_module, "run_tasks", lambda c, tasks, done: seen.extend(tasks))
    b, t = open_checkpoint(pair[0]), open_checkpoint(pair[1])
    units = plan_units(pair_checkpoints(b, t), UNIT_BYTES)
    for device, threads in (("cpu", None), ("cuda", 4)):
        cfg = DiffConfig(device=device, threads=threads)
        run_units(Cluster("ray"), units, b, t, cfg, lambda u, o: None, diff_pairs)
    cpu, cuda = task_options(seen[0]), task_options(seen[-1])
    assert cpu["num_gpus"] == 0 and cpu["num_cpus"] == 1
    assert cpu["retry_exceptions"] == [OSError, TimeoutError] and cpu["max_retries"] >= 1
    assert cpu["scheduling_strategy"] == "DEFAULT"  # never pinned to a node
    assert cuda["num_gpus"] == 1 and cuda["num_cpus"] == 4


def test_ray_resumes_a_killed_run(tmp_path, pair, reference) -> None:
    """A run killed with SIGKILL leaves no output; ``--cluster ray`` then finishes the rest."""
    r, out, mask = tmp_path / "r", tmp_path / "out.json", tmp_path / "m.safetensors"
    argv = [*map(str, pair), "--unit-bytes", str(UNIT_BYTES), "--resume", str(r), "-q"]
    argv += ["--json", str(out), "--mask-out", str(mask)]
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_RUN, "diff", *argv])
    try:
        deadline = time.monotonic() + 60
        while len(list(r.glob("unit-*.json"))) < 2:
            assert proc.poll() is None, "the run ended before it was killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not out.exists() and not mask.exists()
    done = len(list(r.glob("unit-*.json")))
    assert main(["diff", *argv, "--cluster", "ray"]) == 0
    loaded = json.loads(out.read_text())
    assert loaded["provenance"]["execution"]["n_resumed"] == done
    assert _key(loaded) == reference[0]
    assert mask.read_bytes() == reference[1]


def test_dynamics_on_ray_matches_in_process(tmp_path) -> None:
    """``rlsparse dynamics`` units (slabs of every checkpoint) on Ray: the same report and masks."""
    from .test_dynamics_units import key, run, series

    paths = [save_hf(tmp_path / f"c{k}", s, shards=1 + k % 2) for k, s in enumerate(series(5))]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain = run(paths, tmp_path / "a")
    on_ray = run(paths, tmp_path / "b", cluster="ray")
    assert key(on_ray) == key(plain)
    for kind in ("final", "union"):
        a = (tmp_path / "a" / f"{kind}.mask").read_bytes()
        assert (tmp_path / "b" / f"{kind}.mask").read_bytes() == a


def test_overlap_on_ray_matches_in_process(tmp_path) -> None:
    """``rlsparse overlap`` units (whole tensors of N masks and θ0) on Ray: the same counts."""
    from rlsparse_lib.analysis.overlap import count_overlaps

    from .test_analytics_overlap import _two_population_pair
    from .test_overlap_units import UNIT_BYTES as MASK_UNIT_BYTES
    from .test_overlap_units import key

    base, a, b, *_ = _two_population_pair(tmp_path, 11)
    kw = {"base": base, "max_unit_bytes": MASK_UNIT_BYTES, "progress": False}
    assert key(count_overlaps([a, b], cluster="ray", **kw)) == key(count_overlaps([a, b], **kw))


def test_mask_algebra_and_random_on_ray_match_in_process(tmp_path) -> None:
    """``rlsparse mask and|not|random`` units (whole tensors of the masks) on Ray: the same bytes."""
    from rlsparse_lib.masks.ops import combine_masks, random_mask_like

    from .test_analytics_masks import write_mask

    rng = np.random.default_rng(2)
    shapes = {f"model.layers.{i}.mlp.up_proj.weight": (9 + i, 11 + 2 * i) for i in range(6)}
    paths = [
        write_mask(tmp_path / f"m{j}.mask", {k: rng.random(s) < p for k, s in shapes.items()})
        for j, p in enumerate((0.3, 0.6))
    ]
    kw = {"max_unit_bytes": 60, "progress": False}
    for op, operands in (("and", paths), ("not", paths[:1])):
        plain = combine_masks(op, operands, tmp_path / f"{op}.mask", progress=False).read_bytes()
        on_ray = combine_masks(op, operands, tmp_path / f"{op}-ray.mask", cluster="ray", **kw)
        assert on_ray.read_bytes() == plain, op
    rand = {"seed": 5, "stratify": "tensor"}
    plain = random_mask_like(paths[0], tmp_path / "r.mask", progress=False, **rand).read_bytes()
    on_ray = random_mask_like(paths[0], tmp_path / "r-ray.mask", cluster="ray", **rand, **kw)
    assert on_ray.read_bytes() == plain
