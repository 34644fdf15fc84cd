"""Resumable diffs (``--resume DIR``) and the local process-pool executor (``--cluster local:N``):
both give the uninterrupted in-process report bit for bit (except timing / kernel threads)."""

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

import pytest
import torch

from rlsparse_lib.cli import main
from rlsparse_lib.diff import engine
from rlsparse_lib.diff.cluster import Cluster, parse_cluster, run_units
from rlsparse_lib.diff.config import DiffConfig
from rlsparse_lib.diff.engine import diff_checkpoints, diff_pairs
from rlsparse_lib.diff.report import DiffReport
from rlsparse_lib.diff.resume import ResumeMismatchError
from rlsparse_lib.diff.units import plan_units
from rlsparse_lib.errors import ConfigError
from rlsparse_lib.io.checkpoint import open_checkpoint
from rlsparse_lib.io.pairing import pair_checkpoints

from .ckpt_factory import save_hf
from .test_diff_exact import planted

UNIT_BYTES = 3_000  # many small units


def _json(rep: DiffReport | dict, kernel_fields: bool = False) -> str:
    d = rep.to_dict() if isinstance(rep, DiffReport) else dict(rep)
    d["provenance"] = dict(d["provenance"])
    d["provenance"].pop("seconds", None)
    d["provenance"].pop("execution", None)
    if kernel_fields:
        d["provenance"].pop("threads", None)
        d["provenance"].pop("kernel", None)
    return json.dumps(d, sort_keys=True)


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("resume")
    base, tuned, _ = planted()
    return save_hf(root / "base", base, shards=3), save_hf(root / "tuned", tuned, shards=2)


@pytest.fixture(scope="module")
def reference(pair) -> DiffReport:
    return diff_checkpoints(*pair, DiffConfig(max_unit_bytes=UNIT_BYTES), progress=False)


def _n_units(pair) -> int:
    plan = pair_checkpoints(open_checkpoint(pair[0]), open_checkpoint(pair[1]))
    return len(plan_units(plan, UNIT_BYTES))


class _Counting:
    """An executor wrapper that counts units and raises after ``fail_after`` of them."""

    def __init__(self, original, fail_after: int | None = None) -> None:
        self.original = original
        self.calls = 0
        self.fail_after = fail_after

    def __call__(self, kernel):
        inner = self.original(kernel)

        def run(*args, **kw):
            if self.fail_after is not None and self.calls >= self.fail_after:
                raise KeyboardInterrupt("interrupted")
            self.calls += 1
            return inner(*args, **kw)

        return run


@pytest.fixture
def counting(monkeypatch):
    original = engine.unit_executor

    def install(fail_after: int | None = None) -> _Counting:
        c = _Counting(original, fail_after)
        monkeypatch.setattr(engine, "unit_executor", c)
        return c

    return install


def test_resume_after_interrupt_skips_finished_units(tmp_path, pair, reference, counting) -> None:
    n = _n_units(pair)
    assert n > 6
    cfg = DiffConfig(max_unit_bytes=UNIT_BYTES)
    k = 4
    c = counting(fail_after=k)
    with pytest.raises(KeyboardInterrupt):
        diff_checkpoints(*pair, cfg, progress=False, resume=tmp_path / "r")
    assert c.calls == k
    assert len(list((tmp_path / "r").glob("unit-*.json"))) == k
    assert (tmp_path / "r" / "manifest.json").is_file()
    c = counting()
    rep = diff_checkpoints(*pair, cfg, progress=False, resume=tmp_path / "r")
    assert c.calls == n - k  # finished units are not recomputed
    assert _json(rep) == _json(reference)
    # a third run computes nothing and still gives the same report
    c = counting()
    rep = diff_checkpoints(*pair, cfg, progress=False, resume=tmp_path / "r")
    assert c.calls == 0
    assert _json(rep) == _json(reference)


def test_resume_refuses_other_inputs_or_settings(tmp_path, pair) -> None:
    cfg = DiffConfig(max_unit_bytes=UNIT_BYTES)
    r = tmp_path / "r"
    diff_checkpoints(*pair, cfg, progress=False, resume=r)
    with pytest.raises(ResumeMismatchError, match=r"settings \(tolerances\)"):
        diff_checkpoints(
            *pair,
            DiffConfig(max_unit_bytes=UNIT_BYTES, tolerances=(0.0, 1e-3)),
            progress=False,
            resume=r,
        )
    with pytest.raises(ResumeMismatchError, match=r"unit plan .*--unit-bytes"):
        diff_checkpoints(*pair, DiffConfig(max_unit_bytes=UNIT_BYTES * 2), progress=False, resume=r)
    # same names, shapes, dtypes and file sizes; one value changed: the content digest notices
    other = tmp_path / "tuned2"
    shutil.copytree(pair[1], other)
    from safetensors.torch import load_file, save_file

    shard = sorted(other.glob("*.safetensors"))[0]
    state = load_file(shard)
    name = next(iter(state))
    t = state[name].clone()
    t.view(-1)[0] = t.view(-1)[0] + 1
    state[name] = t
    save_file(state, str(shard), metadata={"format": "pt"})
    st = shard.stat()
    os.utime(shard, ns=(st.st_atime_ns, (pair[1] / shard.name).stat().st_mtime_ns))
    with pytest.raises(ResumeMismatchError, match=rf"tuned weights' content \({shard.name}"):
        diff_checkpoints(pair[0], other, cfg, progress=False, resume=r)
    # the CLI: one line, exit 2
    code = main(["diff", str(pair[0]), str(other), "--unit-bytes", str(UNIT_BYTES), "-q"])
    assert code == 0
    argv = ["diff", str(pair[0]), str(other), "--unit-bytes", str(UNIT_BYTES), "--resume", str(r)]
    assert main([*argv, "-q", "--json", str(tmp_path / "x.json")]) == 2
    assert not (tmp_path / "x.json").exists()


def _mask_bytes(path: Path) -> bytes:
    return path.read_bytes()


@pytest.fixture(scope="module")
def reference_mask(pair, tmp_path_factory) -> bytes:
    out = tmp_path_factory.mktemp("mask") / "m.safetensors"
    diff_checkpoints(*pair, DiffConfig(max_unit_bytes=UNIT_BYTES), mask_out=out, progress=False)
    return _mask_bytes(out)


def test_mask_out_with_resume_and_cluster(tmp_path, pair, reference_mask, counting) -> None:
    """Unit mask slices assembled in unit order give the plain run's mask file byte for byte."""
    cfg = DiffConfig(max_unit_bytes=UNIT_BYTES)
    m, r = tmp_path / "m.safetensors", tmp_path / "r"
    diff_checkpoints(*pair, cfg, progress=False, mask_out=m, cluster="local:2")
    assert _mask_bytes(m) == reference_mask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # slices removed
    # interrupted: no mask file; the slices of finished units stay in the resume folder
    c = counting(fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        diff_checkpoints(*pair, cfg, progress=False, resume=r, mask_out=tmp_path / "m2")
    assert c.calls == 3 and not (tmp_path / "m2").exists()
    assert len(list(r.glob("unit-*.mask.safetensors"))) == 3
    c = counting()
    diff_checkpoints(*pair, cfg, progress=False, resume=r, mask_out=tmp_path / "m2")
    assert c.calls == _n_units(pair) - 3
    assert _mask_bytes(tmp_path / "m2") == reference_mask
    # a resume folder made without a mask reruns its units to get their slices
    r2 = tmp_path / "r2"
    diff_checkpoints(*pair, cfg, progress=False, resume=r2)
    rep = diff_checkpoints(
        *pair, cfg, progress=False, resume=r2, mask_out=tmp_path / "m3", cluster="local:2"
    )
    assert _mask_bytes(tmp_path / "m3") == reference_mask
    assert rep.provenance["execution"]["n_run"] == _n_units(pair)


def test_cluster_specs() -> None:
    assert parse_cluster("local:3") == Cluster("local", 3)
    assert parse_cluster("local") == Cluster("local", os.cpu_count() or 1)
    assert parse_cluster("ray") == Cluster("ray")
    assert parse_cluster("ray://head:10001") == Cluster("ray", address="ray://head:10001")
    for bad in ("local:0", "local:x", "dask", "ray://", "ray:2"):
        with pytest.raises(ConfigError):
            parse_cluster(bad)


def test_cluster_local_matches_in_process(tmp_path, pair, reference, counting) -> None:
    cfg = DiffConfig(max_unit_bytes=UNIT_BYTES)
    rep = diff_checkpoints(*pair, cfg, progress=False, cluster="local:2")
    assert _json(rep, kernel_fields=True) == _json(reference, kernel_fields=True)
    # interrupted in process, finished on the pool, then nothing left to do
    c = counting(fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        diff_checkpoints(*pair, cfg, progress=False, resume=tmp_path / "r")
    assert c.calls == 3
    rep = diff_checkpoints(*pair, cfg, progress=False, resume=tmp_path / "r", cluster="local:2")
    assert _json(rep, kernel_fields=True) == _json(reference, kernel_fields=True)
    assert len(list((tmp_path / "r").glob("unit-*.json"))) == _n_units(pair)
    # the CLI
    out = tmp_path / "c.json"
    argv = ["diff", *map(str, pair), "--unit-bytes", str(UNIT_BYTES), "--cluster", "local:2"]
    assert main([*argv, "--json", str(out), "-q"]) == 0
    loaded = json.loads(out.read_text())
    ref = json.loads(json.dumps(reference.to_dict()))
    assert _json(loaded, kernel_fields=True) == _json(ref, kernel_fields=True)


def flaky_executor(pairs, *args, mark: Path, **kw):
    """Raises OSError the first time it runs (per marker file, created exclusively so that two
    workers starting at once cannot both fail), then runs the CPU executor."""
    try:
        with open(mark, "x") as fh:
            fh.write("failed once")
    except FileExistsError:
        return diff_pairs(pairs, *args, **kw)
    raise OSError("transient read error")


def crashing_executor(pairs, *args, mark: Path, **kw):
    """Kills its worker process the first time it runs (per marker file), then runs the CPU
    executor: a worker that dies mid-unit."""
    try:
        with open(mark, "x") as fh:
            fh.write("crashed once")
    except FileExistsError:
        return diff_pairs(pairs, *args, **kw)
    os._exit(1)


def test_local_pool_reruns_the_units_of_a_crashed_worker(tmp_path, pair, reference) -> None:
    b, t = open_checkpoint(pair[0]), open_checkpoint(pair[1])
    cfg = DiffConfig(max_unit_bytes=UNIT_BYTES)
    units = plan_units(pair_checkpoints(b, t), UNIT_BYTES)
    crashing = functools.partial(crashing_executor, mark=tmp_path / "mark")
    done: dict = {}
    run_units(
        Cluster("local", 2), units, b, t, cfg, lambda u, o: done.__setitem__(u.index, o), crashing
    )
    assert (tmp_path / "mark").exists() and sorted(done) == [u.index for u in units]
    assert max(o.attempts for o in done.values()) == 2
    got = {n: r.to_dict() for o in done.values() for n, r in o.partial.items()}
    assert got == {r.name: r.to_dict() for r in [*reference.tensors, *reference.buffers]}


def broken_executor(pairs, *args, **kw):
    raise OSError("always fails")


def test_cluster_retries_an_oserror(tmp_path, pair) -> None:
    flaky = functools.partial(flaky_executor, mark=tmp_path / "mark")
    b, t = open_checkpoint(pair[0]), open_checkpoint(pair[1])
    cfg = DiffConfig(max_unit_bytes=UNIT_BYTES)
    units = plan_units(pair_checkpoints(b, t), UNIT_BYTES)[:3]
    done: dict[int, dict] = {}
    local = Cluster("local", 2)
    run_units(local, units, b, t, cfg, lambda u, o: done.__setitem__(u.index, o), flaky)
    assert sorted(done) == [u.index for u in units]
    assert (tmp_path / "mark").exists()
    assert sorted(o.attempts for o in done.values()) == [1, 1, 2]
    with pytest.raises(OSError, match="always fails"):
        run_units(local, units, b, t, cfg, lambda u, o: None, broken_executor)


def test_cluster_bad_input_names_the_file(tmp_path, pair) -> None:
    tuned = tmp_path / "tuned"
    shutil.copytree(pair[1], tuned)
    ckb, ckt = open_checkpoint(pair[0]), open_checkpoint(tuned)
    # truncate a shard after the parent planned: the worker's own open names the file
    shard = sorted(tuned.glob("*.safetensors"))[0]
    with shard.open("r+b") as fh:
        fh.truncate(shard.stat().st_size // 2)
    with pytest.raises(Exception, match=shard.name):
        diff_checkpoints(
            ckb, ckt, DiffConfig(max_unit_bytes=UNIT_BYTES), progress=False, cluster="local:2"
        )


_SLOW_RUN = """
import sys, time
from rlsparse_lib.diff import engine
original = engine.unit_executor
def slow(kernel):
    inner = original(kernel)
    def run(*a, **k):
        time.sleep(0.2)
        return inner(*a, **k)
    return run
engine.unit_executor = slow
from rlsparse_lib.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_leaves_no_output_and_rerun_resumes(tmp_path, pair, reference) -> None:
    r, out, csv = tmp_path / "r", tmp_path / "out.json", tmp_path / "out.csv"
    argv = [*map(str, pair), "--unit-bytes", str(UNIT_BYTES), "--resume", str(r), "-q"]
    argv += ["--json", str(out), "--csv", str(csv)]
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
    assert proc.returncode == -signal.SIGKILL
    done = len(list(r.glob("unit-*.json")))
    assert 2 <= done < _n_units(pair)
    assert not out.exists() and not csv.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    assert main(["diff", *argv]) == 0
    assert _json(json.loads(out.read_text())) == _json(json.loads(json.dumps(reference.to_dict())))


def test_resume_torch_free_state_dict_roundtrip(tmp_path) -> None:
    """Float sums survive the unit files exactly (fp32 tensors with wide |Δ| values)."""
    g = torch.Generator().manual_seed(1)
    base = {
        f"model.layers.{i}.mlp.up_proj.weight": torch.randn(16, 8, generator=g) for i in range(6)
    }
    tuned = {k: v + 1e-3 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    b, t = save_hf(tmp_path / "b", base), save_hf(tmp_path / "t", tuned)
    cfg = DiffConfig(max_unit_bytes=1)
    ref = diff_checkpoints(b, t, cfg, progress=False)
    diff_checkpoints(b, t, cfg, progress=False, resume=tmp_path / "r")
    again = diff_checkpoints(b, t, cfg, progress=False, resume=tmp_path / "r")
    assert _json(again) == _json(ref)


class _Bar:
    """Records what a progress bar is told."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self.total, self.n, self.postfix, self.closed = total, 0, None, False

    def update(self, n: int) -> None:
        self.n += n

    def set_postfix(self, refresh: bool = True, **kw) -> None:
        self.postfix = kw

    def close(self) -> None:
        self.closed = True


def test_unit_progress_and_execution_log(monkeypatch, pair) -> None:
    from rlsparse_lib.diff import cluster
    from rlsparse_lib.diff.worker import UnitOutcome

    monkeypatch.setattr(cluster, "byte_progress", _Bar)
    units = plan_units(pair_checkpoints(*map(open_checkpoint, pair)), UNIT_BYTES)
    bar = cluster.UnitProgress(units, {0, 1}, "diff", True)
    assert bar.bar.total == sum(u.nbytes for u in units)
    assert bar.bar.n == units[0].nbytes + units[1].nbytes  # resumed units count as read
    bar.unit_done(units[2], streamed=False)  # a unit run elsewhere: its bytes at once
    bar.update(5)
    bar.unit_done(units[3], streamed=True)  # streamed in process: bytes came through update
    assert bar.bar.n == sum(u.nbytes for u in units[:3]) + 5
    assert bar.bar.postfix == {"units": f"4/{len(units)}"}
    log = cluster.ExecutionLog(units, "local:2", {0, 1})
    log.record(units[3], UnitOutcome({}, "cpu-c", 0.5, "b", attempts=2))
    log.record(units[2], UnitOutcome({}, "cpu-c", 0.25, "a"))
    s = log.summary()
    assert (s["n_units"], s["n_run"], s["n_resumed"], s["retries"]) == (len(units), 2, 2, 1)
    assert s["retried_units"] == [3] and s["hosts"] == {"a": 1, "b": 1}
    assert [u["index"] for u in s["units"]] == [2, 3] and s["units"][0]["seconds"] == 0.25
    assert log.kernel("cpu") == "cpu-c"


def test_cluster_ray_without_ray_is_a_clear_error(monkeypatch, tmp_path, pair) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'rlsparse\[ray\]'"):
        diff_checkpoints(*pair, progress=False, cluster="ray")
    argv = ["diff", *map(str, pair), "--cluster", "ray", "-q", "--json", str(tmp_path / "x.json")]
    assert main(argv) == 2
    assert not (tmp_path / "x.json").exists()


def test_local_workers_see_the_callers_hub_environment_now(monkeypatch) -> None:
    """A forkserver started before HF_ENDPOINT was set (or changed) must not hand its stale
    environment to later workers: each pool's workers adopt the caller's HF_*/RLSPARSE_* variables,
    and a variable the caller unset is unset in the worker too."""
    from rlsparse_lib.diff.cluster import run_tasks_local
    from rlsparse_lib.diff.worker import Task

    names = ("HF_ENDPOINT", "RLSPARSE_PROBE")

    def seen() -> dict:
        """Each variable as a worker process reads it (``os.getenv`` run in the pool)."""
        got: dict = {}
        tasks = [Task(i, os.getenv, (name,)) for i, name in enumerate(names)]
        run_tasks_local(tasks, 2, lambda task, value, attempt: got.update({task.args[0]: value}))
        return got

    monkeypatch.setenv("RLSPARSE_PROBE", "first")
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert seen() == {"HF_ENDPOINT": None, "RLSPARSE_PROBE": "first"}
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # after the fork server started
    monkeypatch.delenv("RLSPARSE_PROBE")
    assert seen() == {"HF_ENDPOINT": "http://127.0.0.1:9", "RLSPARSE_PROBE": None}


def test_resume_names_a_folder_of_another_version(tmp_path, pair) -> None:
    """A folder whose unit records have other fields (before a unit became a run of one base
    shard, a record named one ``tuned_file``) is refused, and the message says why."""
    cfg = DiffConfig(max_unit_bytes=UNIT_BYTES)
    r = tmp_path / "r"
    diff_checkpoints(*pair, cfg, progress=False, resume=r)
    manifest = json.loads((r / "manifest.json").read_text())
    for unit in manifest["units"]:
        unit["tuned_file"] = unit.pop("tuned_files")[0]
    (r / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ResumeMismatchError, match=r"unit plan \(unit records of another rlsparse"):
        diff_checkpoints(*pair, cfg, progress=False, resume=r)
