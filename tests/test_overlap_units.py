"""``rlsparse overlap`` on work units of whole tensors: a local pool and a resumed run give the
in-process counts (binade expectations included) bit for bit, and the counts match numpy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rlsparse_lib.analysis import overlap
from rlsparse_lib.analysis.overlap import count_overlaps, plan_mask_units
from rlsparse_lib.cli import main
from rlsparse_lib.diff.resume import ResumeMismatchError

from .test_analytics_masks import write_mask
from .test_analytics_overlap import _two_population_pair

UNIT_BYTES = 3_000  # one or two tensors per unit


def key(counts) -> str:
    """Counts and baselines as JSON text (without timing or the execution log)."""
    d = overlap.OverlapMatrix(counts).to_dict()
    for field in ("seconds", "execution"):
        d["provenance"].pop(field)
    return json.dumps(d, sort_keys=True)


@pytest.fixture(scope="module")
def masks(tmp_path_factory):
    root = tmp_path_factory.mktemp("ov")
    base, a, b, _, ma, mb = _two_population_pair(root, 7)
    rng = np.random.default_rng(3)
    mc = {k: rng.random(v.shape) < 0.2 for k, v in ma.items()}
    return base, [a, b, write_mask(root / "c.mask", mc)], [ma, mb, mc]


def counted(masks, **kw):
    base, paths, _ = masks
    return count_overlaps(paths, base=base, max_unit_bytes=UNIT_BYTES, progress=False, **kw)


def test_units_split_at_tensors_and_match_numpy(masks) -> None:
    assert plan_mask_units(["a", "b", "c"], [5, 5, 20], 10) == [
        overlap.MaskUnit(0, 0, ("a", "b"), 10),
        overlap.MaskUnit(1, 2, ("c",), 20),
    ]
    c = counted(masks)
    _, _, bools = masks
    assert c.provenance["execution"]["n_units"] == 3  # one per tensor at this bound
    for t, name in enumerate(c.names):
        assert c.n_set[t].tolist() == [int(m[name].sum()) for m in bools]
        for p, (i, j) in enumerate(c.pairs):
            assert c.n_both[t, p] == int((bools[i][name] & bools[j][name]).sum())
    whole = count_overlaps(masks[1], base=masks[0], progress=False)  # one unit
    assert key(whole) == key(c)


def test_local_pool_and_resume_match_in_process(masks, tmp_path, monkeypatch) -> None:
    ref = key(counted(masks))
    assert key(counted(masks, cluster="local:2")) == ref
    original = overlap._count_tensors
    calls = []

    def interrupted(*a, **k):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return original(*a, **k)

    monkeypatch.setattr(overlap, "_count_tensors", interrupted)
    with pytest.raises(KeyboardInterrupt):
        counted(masks, resume=tmp_path / "r")
    monkeypatch.setattr(overlap, "_count_tensors", original)
    assert len(list((tmp_path / "r").glob("unit-*.json"))) == 1
    again = counted(masks, resume=tmp_path / "r", cluster="local:2")
    assert again.provenance["execution"]["n_resumed"] == 1
    assert key(again) == ref
    # without θ0: other settings, refused
    with pytest.raises(ResumeMismatchError, match="settings"):
        count_overlaps(masks[1], max_unit_bytes=UNIT_BYTES, resume=tmp_path / "r", progress=False)


def test_cli(masks, tmp_path: Path) -> None:
    base, paths, _ = masks
    out = tmp_path / "o.json"
    argv = ["overlap", *map(str, paths), "--base", str(base), "--json", str(out), "-q"]
    assert main([*argv, "--cluster", "local:2", "--resume", str(tmp_path / "r")]) == 0
    d = json.loads(out.read_text())
    assert d["provenance"]["execution"]["executor"] == "local:2"
