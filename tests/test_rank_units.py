"""``rlsparse rank`` on work units of whole matrices: a local pool and a resumed run give the
in-process rows bit for bit (one torch thread per SVD everywhere), in checkpoint order."""

from __future__ import annotations

import json

import pytest
import torch

from rlsparse_lib.analysis import rank
from rlsparse_lib.analysis.rank import update_ranks
from rlsparse_lib.cli import main
from rlsparse_lib.diff.resume import ResumeMismatchError

from .ckpt_factory import random_state, save_hf

UNIT_BYTES = 10_000  # a few matrices per unit


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("rank")
    base = random_state(seed=1)
    g = torch.Generator().manual_seed(2)
    tuned = {}
    for name, t in base.items():  # low-rank updates of rank 1-3
        if t.ndim == 2:
            r = 1 + len(name) % 3
            u, v = torch.randn(t.shape[0], r, generator=g), torch.randn(r, t.shape[1], generator=g)
            t = (t.float() + 1e-2 * u @ v).to(t.dtype)
        tuned[name] = t
    return save_hf(root / "b", base, shards=2), save_hf(root / "t", tuned, shards=3)


def rows(rep) -> str:
    return json.dumps(rep.matrices, sort_keys=True)


def ranks(pair, **kw):
    return update_ranks(*pair, device="cpu", workers=1, threads=1, progress=False, **kw)


def test_units_pool_and_resume_give_the_same_rows(pair, tmp_path, monkeypatch) -> None:
    whole = ranks(pair)
    units = ranks(pair, max_unit_bytes=UNIT_BYTES)
    assert units.provenance["execution"]["n_units"] > 2
    assert rows(units) == rows(whole)
    assert [m["rank"] for m in whole.matrices if "mlp" in m["name"]]  # ranked something
    assert rows(ranks(pair, max_unit_bytes=UNIT_BYTES, cluster="local:2")) == rows(whole)
    original = rank._rank_one
    calls = []

    def interrupted(*a, **k):
        if len(calls) == 4:
            raise KeyboardInterrupt
        calls.append(1)
        return original(*a, **k)

    monkeypatch.setattr(rank, "_rank_one", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ranks(pair, max_unit_bytes=UNIT_BYTES, resume=tmp_path / "r")
    monkeypatch.setattr(rank, "_rank_one", original)
    assert list((tmp_path / "r").glob("unit-*.json"))
    again = ranks(pair, max_unit_bytes=UNIT_BYTES, resume=tmp_path / "r", cluster="local:2")
    assert again.provenance["execution"]["n_resumed"] >= 1
    assert rows(again) == rows(whole)
    with pytest.raises(ResumeMismatchError, match=r"settings \(energy\)"):
        ranks(pair, max_unit_bytes=UNIT_BYTES, resume=tmp_path / "r", energy=0.9)


def test_cli(pair, tmp_path) -> None:
    out = tmp_path / "r.json"
    argv = ["rank", *map(str, pair), "--device", "cpu", "--threads", "1", "--json", str(out)]
    assert main([*argv, "--cluster", "local:2", "--unit-bytes", str(UNIT_BYTES), "-q"]) == 0
    d = json.loads(out.read_text())
    assert d["provenance"]["execution"]["executor"] == "local:2"
    assert json.dumps(d["matrices"], sort_keys=True) == rows(ranks(pair))
