"""Work units: byte-bounded pieces of a diff plan, merged in unit order to the same report."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from rlsparse_lib.cli import main
from rlsparse_lib.diff.config import DEFAULT_TOLERANCES, DEFAULT_UNIT_BYTES, DiffConfig
from rlsparse_lib.diff.engine import diff_checkpoints, diff_pairs
from rlsparse_lib.diff.kernels.selection import get_kernel
from rlsparse_lib.diff.report import DiffReport
from rlsparse_lib.diff.units import merge_units, pair_nbytes, plan_units
from rlsparse_lib.errors import ConfigError
from rlsparse_lib.io.checkpoint import Checkpoint, open_checkpoint
from rlsparse_lib.io.pairing import pair_checkpoints

from .ckpt_factory import random_state, save_hf
from .test_diff_exact import planted

#: bounds from "one tensor per unit" to "one unit per base shard"
BOUNDS = (1, 3_000, 20_000, DEFAULT_UNIT_BYTES)


def _saved(tmp_path: Path, base, tuned, shards=(3, 2)) -> tuple[Checkpoint, Checkpoint]:
    b = save_hf(tmp_path / "base", base, shards=shards[0])
    t = save_hf(tmp_path / "tuned", tuned, shards=shards[1])
    return open_checkpoint(b), open_checkpoint(t)


def _json(rep: DiffReport) -> str:
    """The report's JSON without timing fields (the only run-dependent provenance: the total and
    the execution log's per-unit seconds)."""
    d = rep.to_dict()
    d["provenance"].pop("seconds", None)
    d["provenance"].pop("execution", None)
    return json.dumps(d, sort_keys=True)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> tuple[Checkpoint, Checkpoint]:
    base, tuned, _counts = planted()
    return _saved(tmp_path_factory.mktemp("units"), base, tuned)


@pytest.mark.parametrize("max_bytes", BOUNDS)
def test_units_partition_the_plan(ckpts, max_bytes: int) -> None:
    plan = pair_checkpoints(*ckpts)
    groups = plan.shard_groups()
    assert len(groups) > 1
    units = plan_units(plan, max_bytes)
    assert [u.index for u in units] == list(range(len(units)))
    # every planned pair exactly once, in shard-group order then tensor order
    flat = [p for u in units for p in u.pairs]
    assert flat == [p for g in groups for p in g] == plan.pairs
    # each base shard is read front to back, once, whatever the tuned side's sharding (3 vs 2)
    base_files = list(ckpts[0].files)
    at = [(base_files.index(p.base.file), p.base.offset) for p in flat]
    assert at == sorted(at) and len(set(at)) == len(at)
    assert len(groups) == len(base_files)
    assert sorted(p.name for p in flat) == sorted(p.name for p in plan.pairs)
    assert len({p.name for p in flat}) == len(plan.pairs)
    group_of = {p.name: i for i, g in enumerate(groups) for p in g}
    for u in units:
        # one base shard per unit, whole tensors, byte bound unless a single oversized tensor
        assert {p.base.file for p in u.pairs} == {u.base_file}
        assert u.tuned_files == tuple(dict.fromkeys(p.tuned.file for p in u.pairs))
        assert len({group_of[n] for n in u.names}) == 1
        assert u.nbytes == sum(pair_nbytes(p) for p in u.pairs)
        assert u.nbytes <= max_bytes or len(u.pairs) == 1
        assert u.names == tuple(p.name for p in u.pairs)
    # greedy cuts: a unit is closed only when the next tensor of its group would not fit
    for u, nxt in itertools.pairwise(units):
        if group_of[u.names[0]] == group_of[nxt.names[0]]:
            assert u.nbytes + pair_nbytes(nxt.pairs[0]) > max_bytes
    assert sum(u.nbytes for u in units) == plan.nbytes
    if max_bytes == 1:
        assert len(units) == len(plan.pairs)
    if max_bytes == DEFAULT_UNIT_BYTES:
        assert [list(u.pairs) for u in units] == groups


def test_oversized_tensor_is_a_unit_of_its_own(ckpts) -> None:
    plan = pair_checkpoints(*ckpts)
    biggest = max(plan.pairs, key=pair_nbytes)
    bound = pair_nbytes(biggest) - 1
    units = plan_units(plan, bound)
    (own,) = [u for u in units if biggest.name in u.names]
    assert own.pairs == (biggest,)
    assert own.nbytes > bound
    for u in units:
        assert u.nbytes <= bound or (len(u.pairs) == 1 and pair_nbytes(u.pairs[0]) == u.nbytes)
    oversized = [p.name for p in plan.pairs if pair_nbytes(p) > bound]
    assert [u.names for u in units if u.nbytes > bound] == [(n,) for n in oversized]


def test_bound_must_be_positive(ckpts) -> None:
    plan = pair_checkpoints(*ckpts)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="max_bytes"):
            plan_units(plan, bad)
        with pytest.raises(ConfigError, match="max_unit_bytes"):
            DiffConfig(max_unit_bytes=bad)
    assert DiffConfig().max_unit_bytes == DEFAULT_UNIT_BYTES == 4 << 30


@pytest.mark.parametrize("chunk", [1 << 24, 64])
def test_unit_bound_does_not_change_the_report(tmp_path: Path, ckpts, chunk: int) -> None:
    """Many tiny units or one per shard group: the same JSON, bit for bit (float sums included),
    and the same mask file."""
    b, t = ckpts
    reps, masks = [], []
    mask = tmp_path / "m.safetensors"  # same path: it is recorded in provenance
    for bound in BOUNDS:
        cfg = DiffConfig(max_unit_bytes=bound, chunk_elems=chunk)
        reps.append(diff_checkpoints(b, t, cfg, mask_out=mask, progress=False))
        masks.append(mask.read_bytes())
    ref = _json(reps[-1])
    for rep in reps[:-1]:
        assert _json(rep) == ref
        assert [x.stats.sum_sq_delta for x in rep.tensors] == [
            x.stats.sum_sq_delta for x in reps[-1].tensors
        ]
    assert all(m == masks[-1] for m in masks)


def test_shuffled_completion_order_gives_the_same_report(ckpts) -> None:
    """Units run in any order (as a pool would) and merged by index: the single-process report."""
    b, t = ckpts
    cfg = DiffConfig(max_unit_bytes=3_000)
    whole = diff_checkpoints(b, t, cfg, progress=False)
    plan = pair_checkpoints(b, t)
    units = plan_units(plan, cfg.max_unit_bytes)
    assert len(units) > len(plan.shard_groups())
    kernel = get_kernel("cpu")
    rng = random.Random(0)
    for _ in range(3):
        order = list(units)
        rng.shuffle(order)
        done = {}
        with b.reader() as rb, t.reader() as rt:
            for u in order:
                done[u.index] = diff_pairs(u.pairs, rb, rt, kernel, cfg)
        assert list(done) != sorted(done)
        threads = getattr(kernel, "num_threads", None)
        rep = merge_units(plan, cfg, done, kernel.name, 0.0, None, threads, units)
        assert _json(rep) == _json(whole)
        # without the unit list, too (order still by index)
        assert _json(merge_units(plan, cfg, done, kernel.name, 0.0, None, threads)) == _json(whole)


def test_merge_rejects_missing_or_mismatched_units(ckpts) -> None:
    b, t = ckpts
    cfg = DiffConfig()
    plan = pair_checkpoints(b, t)
    units = plan_units(plan, 1)
    kernel = get_kernel("cpu")
    with b.reader() as rb, t.reader() as rt:
        done = {u.index: diff_pairs(u.pairs, rb, rt, kernel, cfg) for u in units}
    missing = dict(done)
    missing.pop(units[1].index)
    with pytest.raises(ValueError, match="missing units"):
        merge_units(plan, cfg, missing, kernel.name, units=units)
    with pytest.raises(ValueError, match="lack"):
        merge_units(plan, cfg, missing, kernel.name)
    with pytest.raises(ValueError, match="unknown units"):
        merge_units(plan, cfg, {**done, len(units): {}}, kernel.name, units=units)
    swapped = {**done, 0: done[1], 1: done[0]}
    with pytest.raises(ValueError, match="do not match"):
        merge_units(plan, cfg, swapped, kernel.name, units=units)


def _numpy_reference(a: torch.Tensor, b: torch.Tensor, tols, eta: float) -> dict:
    """Whole-tensor counts in numpy: bitwise on integer words, Δ in float32, compared in float64."""
    word = {2: torch.int16, 4: torch.int32}[a.element_size()]
    wa, wb = a.contiguous().view(word).numpy(), b.contiguous().view(word).numpy()
    changed = wa != wb
    fa, fb = a.float().numpy(), b.float().numpy()
    d = np.abs((fb - fa).astype(np.float32)).astype(np.float64)
    ref = np.maximum(np.abs(fa), np.abs(fb)).astype(np.float64)
    return {
        "n_changed": int(changed.sum()),
        "unchanged_tol": [int((~changed | (d <= tol)).sum()) for tol in tols],
        "unchanged_rel": int((~changed | (d <= eta * ref)).sum()),
    }


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_counts_match_a_whole_tensor_numpy_reference(tmp_path: Path, dtype) -> None:
    base = random_state(dtype=dtype, seed=3)
    g = torch.Generator().manual_seed(4)
    tuned = {}
    for n, x in base.items():
        noise = torch.randn(x.shape, generator=g) * torch.rand(x.shape, generator=g) ** 6 * 1e-3
        keep = torch.rand(x.shape, generator=g) < 0.5
        tuned[n] = torch.where(keep, x, (x.float() + noise).to(dtype))
    b, t = _saved(tmp_path, base, tuned, shards=(2, 3))
    rep = diff_checkpoints(b, t, DiffConfig(max_unit_bytes=1, chunk_elems=64), progress=False)
    assert {x.name for x in rep.tensors} == set(base)
    for x in rep.tensors:
        ref = _numpy_reference(base[x.name], tuned[x.name], DEFAULT_TOLERANCES, rep.rel_eta)
        assert x.n_changed == ref["n_changed"]
        assert [x.stats.n_unchanged_at(k) for k in range(len(DEFAULT_TOLERANCES))] == ref[
            "unchanged_tol"
        ]
        assert x.stats.n_rel_unchanged_total == ref["unchanged_rel"]
    assert rep.n_changed == sum(
        _numpy_reference(base[n], tuned[n], (), rep.rel_eta)["n_changed"] for n in base
    )


def test_cli_unit_bytes_is_hidden_and_changes_nothing(tmp_path: Path, capsys) -> None:
    base, tuned, _counts = planted()
    b = save_hf(tmp_path / "base", base, shards=2)
    t = save_hf(tmp_path / "tuned", tuned)
    outs = []
    for i, extra in enumerate(([], ["--unit-bytes", "1"])):
        out = tmp_path / f"r{i}.json"
        assert main(["diff", str(b), str(t), "--json", str(out), "-q", *extra]) == 0
        d = json.loads(out.read_text())
        d["provenance"].pop("seconds")
        d["provenance"].pop("execution")
        outs.append(d)
    assert outs[0] == outs[1]
    with pytest.raises(SystemExit):
        main(["diff", "--help"])
    assert "--unit-bytes" not in capsys.readouterr().out
    assert main(["diff", str(b), str(t), "-q", "--unit-bytes", "0"]) == 2
