"""Every sparsity comes from integer counts through one function (rules.sparsity)."""

from __future__ import annotations

import random

import numpy as np

from rlsparse_lib.diff.report import DiffReport, TensorResult
from rlsparse_lib.diff.stats import DiffStats
from rlsparse_lib.rules import sparsity, sparsity_from_changed

TOLS = (0.0, 1e-8, 1e-5)


def _report(n: int, n_changed: int) -> DiffReport:
    """A one-tensor report whose changed elements are all above every tolerance."""
    stats = DiffStats.empty(len(TOLS))
    stats.numel, stats.n_changed = n, n_changed
    t = TensorResult(
        "w", "float", "bfloat16", "bfloat16", "bfloat16", (n,), (n,), (n,), n, n_changed
    )
    t.stats = stats
    return DiffReport(tolerances=TOLS, rel_eta=1e-3, tensors=[t])


def _counts_where_formulas_disagree(k: int) -> list[tuple[int, int]]:
    """(n, n_changed) pairs for which ``1 - c/n`` and ``(n - c)/n`` differ in the last bit."""
    rng = random.Random(0)
    out = []
    while len(out) < k:
        n = rng.randint(1, 10**9)
        c = rng.randint(0, n)
        if 1 - c / n != (n - c) / n:
            out.append((n, c))
    return out


def test_same_counts_give_the_same_float_under_every_rule() -> None:
    # the fresh-clone failure: bitwise sparsity > sparsity at 1e-8 for the same count
    for n, c in _counts_where_formulas_disagree(50):
        r = _report(n, c)
        d = r.to_dict()
        values = [r.sparsity, *(r.sparsity_at(t) for t in TOLS), d["sparsity"]]
        values += [v["sparsity"] for v in d["tolerances"].values()]
        values += [d["tensors"][0]["sparsity"]]
        row = r.tensor_rows()[0]
        values += [row[f"sparsity_{s}"] for s, _ in r.rules()]
        assert len(set(values)) == 1, (n, c, values)
        assert values[0] == (n - c) / n


def test_sparsity_is_integer_ratio_and_monotone() -> None:
    rng = np.random.default_rng(0)
    n = 10**9 + 7
    unchanged = np.sort(rng.integers(0, n, 200))
    got = [sparsity(int(u), n) for u in unchanged]
    assert got == sorted(got)
    assert sparsity(3, 0) is None and sparsity_from_changed(0, 0) is None
    assert sparsity_from_changed(1, 3) == 2 / 3
