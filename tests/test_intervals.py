"""Intervals over seeds: the t quantile, the mean interval, the binomial standard error and the
per-group summary, each against an independent naive computation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlsparse_lib.analysis.intervals import (
    binomial_se,
    mean_interval,
    seed_groups,
    seed_summary,
    t_quantile,
)
from rlsparse_lib.errors import ConfigError


def _t_quantile_by_integration(p: float, df: int) -> float:
    """Naive: integrate the t density on a fine grid (trapezoids) and interpolate the quantile."""
    t = np.linspace(0.0, 60.0, 2_000_001)
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    pdf = np.exp(log_c - (df + 1) / 2 * np.log1p(t * t / df))
    cdf = 0.5 + np.concatenate([[0.0], np.cumsum((pdf[1:] + pdf[:-1]) / 2 * np.diff(t))])
    return float(np.interp(p, cdf, t))


@pytest.mark.parametrize("df", [3, 4, 9, 29])
@pytest.mark.parametrize("p", [0.9, 0.975])
def test_t_quantile_matches_numerical_integration(p: float, df: int) -> None:
    assert t_quantile(p, df) == pytest.approx(_t_quantile_by_integration(p, df), rel=1e-6)


@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.995])
def test_t_quantile_closed_forms(p: float) -> None:
    """df = 1 is the Cauchy distribution; df = 2 has F(t) = 1/2 + t / (2 √(2 + t²))."""
    assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-12)
    a = 2 * p - 1
    assert t_quantile(p, 2) == pytest.approx(math.sqrt(2 * a * a / (1 - a * a)), rel=1e-12)
    assert t_quantile(0.5, 7) == 0.0


def test_mean_interval_is_the_t_interval() -> None:
    xs = [0.21875, 0.25, 0.1875, 0.234375]
    iv = mean_interval(xs)
    a = np.array(xs)
    half = _t_quantile_by_integration(0.975, 3) * a.std(ddof=1) / math.sqrt(len(a))
    assert iv.n == 4 and iv.mean == pytest.approx(a.mean(), abs=1e-15)
    assert iv.std == pytest.approx(a.std(ddof=1), rel=1e-12)
    assert iv.low == pytest.approx(a.mean() - half, rel=1e-6)
    assert iv.high == pytest.approx(a.mean() + half, rel=1e-6)
    one = mean_interval([0.3])
    assert (one.n, one.mean, one.low, one.high, one.std) == (1, 0.3, None, None, None)


def test_mean_interval_covers_the_true_mean_95_percent_of_the_time() -> None:
    """Three normal draws per trial (as three seeds): the interval holds the true mean in 95 % of
    trials; z = 1.96 instead of t would cover only ~ 88 %."""
    rng = np.random.default_rng(0)
    samples = rng.normal(0.8, 0.01, size=(20_000, 3))
    hits = 0
    for row in samples:
        iv = mean_interval(row)
        assert iv.low is not None and iv.high is not None
        hits += iv.low <= 0.8 <= iv.high
    assert hits / len(samples) == pytest.approx(0.95, abs=0.006)


def test_binomial_se_matches_simulated_accuracies() -> None:
    rng = np.random.default_rng(1)
    p, n = 0.23, 512
    simulated = rng.binomial(n, p, size=200_000) / n
    assert binomial_se(p, n) == pytest.approx(simulated.std(), rel=0.01)
    assert binomial_se(0.0, 64) == 0.0
    assert binomial_se(0.5, 64) == 0.0625


@pytest.mark.parametrize(
    "call",
    [
        lambda: mean_interval([]),
        lambda: mean_interval([0.1, float("nan")]),
        lambda: mean_interval([0.1, 0.2], confidence=1.0),
        lambda: binomial_se(0.5, 0),
        lambda: binomial_se(1.5, 10),
        lambda: t_quantile(0.975, 0),
        lambda: t_quantile(0.2, 3),
    ],
)
def test_bad_input_is_a_config_error(call) -> None:
    with pytest.raises(ConfigError):
        call()


def _rows() -> list[dict]:
    return [
        {"run": "g-s0", "seed": 0, "cfg": "a", "eval_n": 512, "acc": 0.20, "sp": 0.86},
        {"run": "s-s0", "seed": 0, "cfg": "b", "eval_n": 512, "acc": 0.30, "sp": 0.83},
        {"run": "g-s1", "seed": 1, "cfg": "a", "eval_n": 512, "acc": 0.25, "sp": 0.87},
        {"run": "old1", "seed": None, "cfg": "", "eval_n": None, "acc": 0.17, "sp": 0.9},
        {"run": "g-s2", "seed": 2, "cfg": "a", "eval_n": 512, "acc": 0.21, "sp": None},
        {"run": "old2", "seed": None, "cfg": float("nan"), "eval_n": None, "acc": 0.1, "sp": 0.8},
    ]


def test_seed_groups_keep_order_and_isolate_rows_without_a_key() -> None:
    groups = seed_groups(_rows(), "cfg")
    assert [[r["run"] for r in g] for g in groups] == [
        ["g-s0", "g-s1", "g-s2"],
        ["s-s0"],
        ["old1"],
        ["old2"],
    ]


def test_seed_summary_against_naive_per_group_statistics() -> None:
    summary = seed_summary(_rows(), "cfg", ["acc", "sp"], accuracies=("acc",))
    g = summary[0]
    assert (g["group"], g["n_runs"], g["runs"], g["seeds"]) == (
        "g-s0",
        3,
        "g-s0 g-s1 g-s2",
        "0 1 2",
    )
    acc = np.array([0.20, 0.25, 0.21])
    half = _t_quantile_by_integration(0.975, 2) * acc.std(ddof=1) / math.sqrt(3)
    assert g["acc_mean"] == pytest.approx(acc.mean(), abs=1e-15)
    assert (g["acc_low"], g["acc_high"]) == pytest.approx((acc.mean() - half, acc.mean() + half))
    assert g["acc_binomial_se"] == pytest.approx(math.sqrt(acc.mean() * (1 - acc.mean()) / 512))
    sp = np.array([0.86, 0.87])  # the missing value is skipped
    half = _t_quantile_by_integration(0.975, 1) * sp.std(ddof=1) / math.sqrt(2)
    assert g["sp_n"] == 2 and g["sp_mean"] == pytest.approx(sp.mean())
    assert g["sp_high"] == pytest.approx(sp.mean() + half, rel=1e-6)
    assert "sp_binomial_se" not in g
    single = summary[2]
    assert single["group"] == "old1" and single["acc_mean"] == 0.17
    assert single["acc_low"] is None and single["acc_binomial_se"] is None
    assert single["seeds"] == ""


def test_seed_summary_cuts_intervals_at_the_bounds() -> None:
    rows = [{"run": f"r{s}", "seed": s, "cfg": "a", "sp": v} for s, v in enumerate([0.3, 0.99])]
    (free,) = seed_summary(rows, "cfg", ["sp"])
    (cut,) = seed_summary(rows, "cfg", ["sp"], bounds=(0.0, 1.0))
    assert free["sp_low"] < 0.0 and free["sp_high"] > 1.0  # t with 1 degree of freedom: wide
    assert (cut["sp_low"], cut["sp_high"]) == (0.0, 1.0) and cut["sp_mean"] == free["sp_mean"]
    rows[1]["sp"] = 0.31
    (narrow,) = seed_summary(rows, "cfg", ["sp"], bounds=(0.0, 1.0))
    (same,) = seed_summary(rows, "cfg", ["sp"])
    assert (narrow["sp_low"], narrow["sp_high"]) == (same["sp_low"], same["sp_high"])
