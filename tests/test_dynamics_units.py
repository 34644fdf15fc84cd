"""``rlsparse dynamics`` on work units: (tensor, element range) slabs read from all checkpoints.
A local pool and a resumed run give the in-process report and masks bit for bit; the counts and
masks of many small slabs match the numpy reference; a resume folder of another run is refused."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from rlsparse_lib.analysis import dynamics
from rlsparse_lib.analysis.dynamics import plan_series_units, sparsity_dynamics
from rlsparse_lib.cli import main
from rlsparse_lib.diff.resume import ResumeMismatchError
from rlsparse_lib.io.checkpoint import open_checkpoint
from rlsparse_lib.io.maskfile import MaskFile
from rlsparse_lib.rules import MaskRule

from .ckpt_factory import save_hf
from .test_analytics_dynamics import reference, series

UNIT_BYTES = 12_000  # tensors cut into several slabs
CHUNK = 512
RULE = MaskRule("abs", 1e-5)


def key(d) -> str:
    """The report's JSON without run-dependent fields (timing, execution log, mask paths)."""
    d = json.loads(json.dumps(d if isinstance(d, dict) else d.to_dict()))
    for field in ("seconds", "execution", "masks_out"):
        d["provenance"].pop(field)
    return json.dumps(d, sort_keys=True)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[list, list[Path]]:
    root = tmp_path_factory.mktemp("series_units")
    states = series(seed=3)
    return states, [save_hf(root / f"c{k}", s, shards=1 + k % 2) for k, s in enumerate(states)]


def run(paths, out: Path, **kw):
    return sparsity_dynamics(
        paths[0],
        paths[1:],
        rule=RULE,
        chunk_elems=CHUNK,
        max_unit_bytes=UNIT_BYTES,
        final_mask_out=out / "final.mask",
        union_mask_out=out / "union.mask",
        progress=False,
        **kw,
    )


@pytest.fixture(scope="module")
def plain(saved, tmp_path_factory) -> tuple[str, bytes, bytes]:
    out = tmp_path_factory.mktemp("plain")
    rep = run(saved[1], out)
    return key(rep), (out / "final.mask").read_bytes(), (out / "union.mask").read_bytes()


def test_slabs_cover_every_tensor_once_in_order(saved) -> None:
    cks = [open_checkpoint(p) for p in saved[1]]
    pairs, _ = dynamics._plan_series(cks[0], cks[1:], None, (), ())
    units = plan_series_units(pairs, cks[1:], CHUNK, UNIT_BYTES)
    slabs = [s for u in units for s in u.slabs]
    assert len(slabs) > len(pairs)  # tensors are split
    for t, pair in enumerate(pairs):
        mine = [(s.start, s.stop) for s in slabs if s.t == t]
        assert mine[0][0] == 0 and mine[-1][1] == pair.numel
        assert all(a[1] == b[0] for a, b in itertools.pairwise(mine))
        assert all(s % CHUNK == 0 for s, _ in mine)
    assert [s.t for s in slabs] == sorted(s.t for s in slabs)
    for u in units:
        assert u.nbytes <= UNIT_BYTES or len(u.slabs) == 1


def test_units_match_the_numpy_reference(saved, tmp_path) -> None:
    states, paths = saved
    rep = run(paths, tmp_path)
    ref = reference(states, RULE)
    tot = {k: v.sum(axis=0).tolist() for k, v in rep.counts.items()}
    for field in ("n_changed", "n_step", "n_union", "n_outside_final"):
        assert tot[field] == ref[field]
    assert rep.provenance["execution"]["n_units"] >= len(rep.names)
    for kind in ("final", "union"):
        with MaskFile.open(tmp_path / f"{kind}.mask") as m:
            bits = np.concatenate([m.mask(n).ravel() for n in states[0]])
        np.testing.assert_array_equal(bits, ref[kind])


def test_local_pool_matches_in_process(saved, plain, tmp_path) -> None:
    rep = run(saved[1], tmp_path, cluster="local:2")
    assert key(rep) == plain[0]
    assert (tmp_path / "final.mask").read_bytes() == plain[1]
    assert (tmp_path / "union.mask").read_bytes() == plain[2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final.mask", "union.mask"]


def test_resume_after_interrupt(saved, plain, tmp_path, monkeypatch) -> None:
    original = dynamics.run_series_unit
    calls = []

    def interrupted(*a, **k):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(1)
        return original(*a, **k)

    monkeypatch.setattr(dynamics, "run_series_unit", interrupted)
    r = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        run(saved[1], tmp_path, resume=r)
    assert not (tmp_path / "final.mask").exists()
    assert len(list(r.glob("unit-*.json"))) == 3
    monkeypatch.setattr(dynamics, "run_series_unit", original)
    rep = run(saved[1], tmp_path, resume=r, cluster="local:2")
    assert key(rep) == plain[0]
    assert rep.provenance["execution"]["n_resumed"] == 3
    assert (tmp_path / "final.mask").read_bytes() == plain[1]
    assert (tmp_path / "union.mask").read_bytes() == plain[2]
    # another rule: refused, nothing written
    with pytest.raises(ResumeMismatchError, match=r"settings \(rule\)"):
        sparsity_dynamics(
            saved[1][0],
            saved[1][1:],
            max_unit_bytes=UNIT_BYTES,
            chunk_elems=CHUNK,
            resume=r,
            progress=False,
        )


def test_cli(saved, plain, tmp_path) -> None:
    paths = [str(p) for p in saved[1]]
    out = tmp_path / "d.json"
    argv = ["dynamics", *paths, "--rule", "abs", "--tol", "1e-5", "--unit-bytes", str(UNIT_BYTES)]
    argv += ["--final-mask", str(tmp_path / "final.mask"), "--union-mask", str(tmp_path / "u.mask")]
    argv += ["--json", str(out), "--cluster", "local:2", "--resume", str(tmp_path / "r"), "-q"]
    assert main(argv) == 0
    assert (tmp_path / "final.mask").read_bytes() == plain[1]
    d = json.loads(out.read_text())
    assert d["provenance"]["execution"]["executor"] == "local:2"
