"""Uncertainty over seeds: the mean and a Student-t interval of a metric per group of runs that
differ only in their seed, and the binomial standard error of one run's accuracy.

The interval is ``mean ± t_{(1+c)/2, n-1} · s / √n`` (``s``: the sample standard deviation,
``ddof=1``), the textbook interval for the mean of ``n`` roughly normal values; with 3 seeds
``t = 4.30``, so it is wide, honestly. The t quantile comes from ``mpmath`` (the regularized
incomplete beta function and a root finder), a declared dependency (also torch's, via sympy);
scipy is not installed. A seeded bootstrap was the alternative and was not chosen: with 3 values
it has only 10 distinct resamples and its percentile interval is far narrower than the
t interval's coverage requires.

The binomial standard error ``√(p(1−p)/n)`` of an accuracy ``p`` measured on ``n`` held-out
questions says how far the measured accuracy can sit from the model's accuracy on the whole task
by the draw of the evaluation set alone (a difference of ±0.05 is noise when it is within about
two of them).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rlsparse_lib.errors import ConfigError

#: the default confidence of every interval
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """Mean and ``confidence`` interval of ``n`` values (``low``/``high``/``std`` None when n < 2)."""

    n: int
    mean: float
    low: float | None
    high: float | None
    std: float | None


@functools.lru_cache(maxsize=256)
def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (0.5 <= p < 1) of Student's t distribution with ``df`` degrees of freedom.

    Solves ``F(t) = p`` with ``F(t) = 1 − I_{df/(df+t²)}(df/2, 1/2) / 2`` for ``t >= 0``
    (``I``: mpmath's regularized incomplete beta).
    """
    import mpmath

    if df < 1:
        raise ConfigError(f"t quantile: degrees of freedom must be >= 1, got {df}")
    if not 0.5 <= p < 1.0:
        raise ConfigError(f"t quantile: p must be in [0.5, 1), got {p}")
    if p == 0.5:
        return 0.0
    with mpmath.workdps(30):

        def upper_tail(t):
            return mpmath.betainc(df / 2, 0.5, 0, df / (df + t * t), regularized=True) / 2

        # the upper tail falls from 1/2 at t = 0; bracket the root, then refine
        hi = mpmath.mpf(1)
        while upper_tail(hi) > 1 - p:
            hi *= 2
        root = mpmath.findroot(lambda t: upper_tail(t) - (1 - p), (hi / 2, hi), solver="anderson")
        return float(root)


def mean_interval(values: Iterable[float], confidence: float = CONFIDENCE) -> Interval:
    """The mean of ``values`` and its Student-t ``confidence`` interval (n − 1 degrees of freedom).

    Raises:
        ConfigError: no values, a NaN, or a confidence outside (0, 1).
    """
    xs = [float(v) for v in values]
    if not xs:
        raise ConfigError("mean interval of no values")
    if any(math.isnan(x) for x in xs):
        raise ConfigError(f"mean interval: NaN among {xs}")
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence}")
    n = len(xs)
    mean = math.fsum(xs) / n
    if n < 2:
        return Interval(n, mean, None, None, None)
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile((1 + confidence) / 2, n - 1) * std / math.sqrt(n)
    return Interval(n, mean, mean - half, mean + half, std)


def binomial_se(p: float, n: int) -> float:
    """Standard error ``√(p(1−p)/n)`` of an accuracy ``p`` measured on ``n`` questions."""
    if n < 1:
        raise ConfigError(f"binomial standard error: n must be >= 1, got {n}")
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"binomial standard error: p must be in [0, 1], got {p}")
    return math.sqrt(p * (1 - p) / n)


def is_missing(v: Any) -> bool:
    """An empty table cell: None, ``""`` or a float NaN."""
    return v is None or v == "" or (isinstance(v, float) and math.isnan(v))


def seed_groups(rows: Sequence[dict], key: str) -> list[list[dict]]:
    """``rows`` grouped by ``row[key]`` in order of first appearance; a row whose key is
    missing (None, "", NaN) is a group of its own."""
    groups: dict[object, list[dict]] = {}
    for i, row in enumerate(rows):
        k = ("row", i) if is_missing(row.get(key)) else ("key", row[key])
        groups.setdefault(k, []).append(row)
    return list(groups.values())


def seed_summary(
    rows: Sequence[dict],
    key: str,
    metrics: Sequence[str],
    *,
    accuracies: Sequence[str] = ("acc_before", "acc_after"),
    n_column: str = "eval_n",
    label: str = "run",
    confidence: float = CONFIDENCE,
    bounds: tuple[float, float] | None = None,
) -> list[dict]:
    """One row per group of ``rows`` sharing ``row[key]`` (runs that differ only in seed).

    Columns: ``group`` (the first row's ``label``), ``n_runs``, ``runs`` and ``seeds`` (space
    separated), then for each metric ``<m>_mean``, ``<m>_low``, ``<m>_high`` (the interval; empty
    for one value) and ``<m>_n`` (runs that have the metric; missing values are skipped). For each
    metric in ``accuracies`` also ``<m>_binomial_se``: :func:`binomial_se` of the group's mean
    accuracy on ``n_column`` questions (empty unless every run of the group has the same count).
    ``bounds``: the range every metric lies in (e.g. ``(0, 1)`` for fractions); an interval
    reaching past it is cut there (the cut interval covers the true mean just as often).
    """
    out = []
    for group in seed_groups(rows, key):
        row: dict[str, Any] = {
            "group": group[0][label],
            "n_runs": len(group),
            "runs": " ".join(str(r[label]) for r in group),
            "seeds": " ".join("" if is_missing(r.get("seed")) else str(r["seed"]) for r in group),
        }
        counts = {r.get(n_column) for r in group}
        count = counts.pop() if len(counts) == 1 else None
        n_eval = None if count is None or is_missing(count) else int(count)
        for m in metrics:
            values = [float(r[m]) for r in group if not is_missing(r.get(m))]
            iv = mean_interval(values, confidence) if values else None
            row[f"{m}_mean"] = iv.mean if iv else None
            low, high = (iv.low, iv.high) if iv else (None, None)
            if bounds is not None and low is not None and high is not None:
                low, high = max(low, bounds[0]), min(high, bounds[1])
            row[f"{m}_low"], row[f"{m}_high"] = low, high
            row[f"{m}_n"] = len(values)
            if m in accuracies:
                row[f"{m}_binomial_se"] = (
                    binomial_se(iv.mean, n_eval) if iv and n_eval is not None else None
                )
        out.append(row)
    return out
