"""Claims tested on the table of every run: which of a paper's claims hold at our scale.

A :class:`Claim` reads a metric of groups of runs (rows of ``runs.csv``, selected by column
values and a run-name regex, :class:`Group`) and states what the paper expects of it:

- ``compare``: group A's metric is greater (or less) than group B's;
- ``bound``: a group's metric lies in a published range ``[low, high]`` (either end may be open);
- ``noninferior``: A is not worse than B by more than a margin δ;
- ``trend``: the metric is monotone in a column across groups (checked on adjacent groups).

:func:`evaluate_claim` gives one row per claim with the estimate (a difference A − B, or a
group's value), its 95 % interval, the method that made it and a verdict in :data:`VERDICTS`.
The method follows from what the data allow (:func:`difference`, :func:`level`):

- both groups ≥ 2 runs: Welch's t interval of the difference of means;
- one group a single run, the other ≥ 2: the prediction interval for a new run of the seeded
  group, ``(x − mean) ± t_{n−1} · s · √(1 + 1/n)``;
- single runs on both sides, an accuracy (:data:`ACCURACY_METRICS`) with a known eval set size:
  the normal interval from the runs' binomial standard errors (the noise of drawing the eval
  questions only, not of training);
- other single runs: no interval; the verdict is the direction of the estimate alone.

Verdict: an interval entirely on the claimed side → ``holds``, entirely on the other side →
``does not hold``, straddling → ``inconclusive``; without an interval, the side of the estimate
decides (and the method says so). A group without runs makes the claim ``not run yet``.
"""

from __future__ import annotations

import itertools
import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rlsparse_lib.analysis.intervals import CONFIDENCE, is_missing, mean_interval, t_quantile
from rlsparse_lib.errors import ConfigError

#: the tests a claim can make
TESTS = ("compare", "bound", "noninferior", "trend")
#: the verdicts, strongest first
VERDICTS = ("holds", "does not hold", "inconclusive", "not run yet")
#: ``acc_after − acc_before`` of a run, the one metric not stored in runs.csv
ACC_GAIN = "acc_gain"
#: accuracies on ``eval_n`` questions: single runs get binomial standard errors
ACCURACY_METRICS = ("acc_before", "acc_after", ACC_GAIN)
#: the column holding a run's eval set size
EVAL_N = "eval_n"


@dataclass(frozen=True)
class Group:
    """Rows of the runs table selected by ``where`` (column -> accepted values; numbers match
    numerically to 1e-9 relative, ``None`` matches an empty cell) and ``run`` (a regex the run
    name must match in full; None: any)."""

    name: str
    where: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    run: str | None = None

    def select(self, rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """The rows of this group, in table order."""
        pattern = re.compile(self.run) if self.run is not None else None
        return [
            r
            for r in rows
            if (pattern is None or pattern.fullmatch(str(r.get("run", ""))))
            and all(any(_matches(r.get(c), v) for v in vs) for c, vs in self.where.items())
        ]


@dataclass(frozen=True)
class Claim:
    """One claim: ``groups`` are (A, B) for compare / noninferior, (G,) for bound, the ordered
    groups for trend. ``expect``: ``greater``/``less`` (compare: A vs B), ``higher``/``lower``
    (noninferior: which is better), ``increasing``/``decreasing`` (trend, in column ``by``);
    ``low``/``high``: the bound; ``margin``: the noninferiority δ (> 0)."""

    id: str
    claim: str
    source: str
    metric: str
    test: str
    groups: tuple[Group, ...]
    expect: str = ""
    low: float | None = None
    high: float | None = None
    margin: float = 0.0
    by: str = ""


@dataclass(frozen=True)
class Estimate:
    """A value or difference with its interval (``low``/``high`` None: no interval), the method
    that made it, and whether the interval comes from the spread over runs (``over_runs``)."""

    value: float
    low: float | None
    high: float | None
    method: str
    over_runs: bool = False


def _float(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _matches(cell: Any, want: Any) -> bool:
    """A cell against a selector value: both numbers (``1e-05`` and ``1.0e-5`` alike) → equal to
    1e-9 relative; else equal as text; ``None`` matches an empty cell only."""
    if want is None or is_missing(cell):
        return want is None and is_missing(cell)
    x, y = _float(cell), _float(want)
    if x is not None and y is not None:
        return math.isclose(x, y, rel_tol=1e-9, abs_tol=0.0)
    return str(cell) == str(want)


def metric_value(row: Mapping[str, Any], metric: str) -> float | None:
    """A run's ``metric`` as a float (``acc_gain``: acc_after − acc_before; None if missing).

    Raises:
        ConfigError: the cell is not a number.
    """
    if metric == ACC_GAIN:
        after, before = metric_value(row, "acc_after"), metric_value(row, "acc_before")
        return None if after is None or before is None else after - before
    v = row.get(metric)
    if is_missing(v):
        return None
    x = _float(v)
    if x is None:
        raise ConfigError(f"run {row.get('run')}: {metric} {v!r} is not a number")
    return x


def binomial_var(row: Mapping[str, Any], metric: str) -> float | None:
    """Variance of one run's accuracy ``metric`` from drawing its ``eval_n`` questions:
    ``p(1−p)/n``; for ``acc_gain`` the sum over acc_after and acc_before (independent draws:
    conservative when both are measured on the same questions, as they are). None when the
    metric is not an accuracy or eval_n is unknown."""
    n = metric_value(row, EVAL_N)
    if metric not in ACCURACY_METRICS or n is None or n < 1:
        return None
    parts = ("acc_after", "acc_before") if metric == ACC_GAIN else (metric,)
    ps = [metric_value(row, p) for p in parts]
    if any(p is None for p in ps):
        return None
    return math.fsum(p * (1 - p) / n for p in ps if p is not None)


def z_quantile(p: float) -> float:
    """The ``p`` quantile of the standard normal distribution (``statistics.NormalDist``)."""
    return statistics.NormalDist().inv_cdf(p)


def welch(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Estimate:
    """Welch's interval of ``mean(a) − mean(b)`` (both ≥ 2 values): ``d ± t_ν · se`` with
    ``se² = s_a²/n_a + s_b²/n_b`` and the Welch–Satterthwaite
    ``ν = se⁴ / ((s_a²/n_a)²/(n_a−1) + (s_b²/n_b)²/(n_b−1))``. ``ν`` is floored to an integer
    (at least 1) for :func:`~rlsparse_lib.analysis.intervals.t_quantile`: a larger quantile,
    so the interval is slightly wider, i.e. conservative. Both spreads zero: a zero-width
    interval with ν = n_a + n_b − 2."""
    ia, ib = mean_interval(a, confidence), mean_interval(b, confidence)
    assert ia.std is not None and ib.std is not None, "welch needs >= 2 values per side"
    va, vb = ia.std**2 / ia.n, ib.std**2 / ib.n
    se2 = va + vb
    if se2 == 0.0:
        df = ia.n + ib.n - 2
    else:
        df = max(1, math.floor(se2**2 / (va**2 / (ia.n - 1) + vb**2 / (ib.n - 1))))
    half = t_quantile((1 + confidence) / 2, df) * math.sqrt(se2)
    d = ia.mean - ib.mean
    method = f"Welch t, {ia.n} vs {ib.n} runs, df {df} (floored)"
    return Estimate(d, d - half, d + half, method, over_runs=True)


def prediction(
    single: float, seeded: Sequence[float], single_is_a: bool, confidence: float = CONFIDENCE
) -> Estimate:
    """A single run against a group of ≥ 2: the difference (A − B) of the single run and the
    group's mean with the prediction interval for a new run of the group,
    ``± t_{n−1} · s · √(1 + 1/n)`` (the single run treated as one more draw of the group)."""
    iv = mean_interval(seeded, confidence)
    assert iv.std is not None, "a prediction interval needs >= 2 values"
    half = t_quantile((1 + confidence) / 2, iv.n - 1) * iv.std * math.sqrt(1 + 1 / iv.n)
    d = single - iv.mean if single_is_a else iv.mean - single
    method = f"prediction interval, 1 run vs {iv.n} runs"
    return Estimate(d, d - half, d + half, method, over_runs=True)


def _single_pair(ra: Mapping, rb: Mapping, metric: str, confidence: float) -> Estimate:
    """Two single runs: the binomial normal interval for accuracies, else no interval."""
    d = _value(ra, metric) - _value(rb, metric)
    va, vb = binomial_var(ra, metric), binomial_var(rb, metric)
    if va is None or vb is None:
        return Estimate(d, None, None, "single runs, no interval")
    half = z_quantile((1 + confidence) / 2) * math.sqrt(va + vb)
    return Estimate(d, d - half, d + half, "two-proportion normal interval (eval-set noise only)")


def _value(row: Mapping, metric: str) -> float:
    v = metric_value(row, metric)
    assert v is not None
    return v


def difference(
    a: Sequence[Mapping[str, Any]],
    b: Sequence[Mapping[str, Any]],
    metric: str,
    confidence: float = CONFIDENCE,
) -> Estimate:
    """``metric`` of runs ``a`` minus runs ``b`` (each non-empty, every row has the metric) with
    the interval the run counts allow (module docstring)."""
    xa, xb = [_value(r, metric) for r in a], [_value(r, metric) for r in b]
    if len(xa) >= 2 and len(xb) >= 2:
        return welch(xa, xb, confidence)
    if len(xa) == 1 and len(xb) >= 2:
        return prediction(xa[0], xb, True, confidence)
    if len(xb) == 1 and len(xa) >= 2:
        return prediction(xb[0], xa, False, confidence)
    return _single_pair(a[0], b[0], metric, confidence)


def level(
    rows: Sequence[Mapping[str, Any]], metric: str, confidence: float = CONFIDENCE
) -> Estimate:
    """``metric`` of a group (non-empty, every row has it): the mean and Student-t interval over
    ≥ 2 runs; one run's binomial normal interval for an accuracy; else no interval."""
    xs = [_value(r, metric) for r in rows]
    if len(xs) >= 2:
        iv = mean_interval(xs, confidence)
        assert iv.low is not None and iv.high is not None
        method = f"Student t over {iv.n} runs, df {iv.n - 1}"
        return Estimate(iv.mean, iv.low, iv.high, method, over_runs=True)
    var = binomial_var(rows[0], metric)
    if var is None:
        return Estimate(xs[0], None, None, "single run, no interval")
    half = z_quantile((1 + confidence) / 2) * math.sqrt(var)
    return Estimate(
        xs[0], xs[0] - half, xs[0] + half, "binomial normal interval (eval-set noise only)"
    )


def side(est: Estimate, lo: float | None, hi: float | None) -> str:
    """Verdict of an estimate against the claimed region ``(lo, hi)`` (None: an open end): the
    interval inside → holds, disjoint → does not hold, else inconclusive; without an interval
    the estimate's own position decides (a value on an end is outside)."""
    low, high = (est.low, est.high) if est.low is not None else (est.value, est.value)
    assert high is not None
    inside = (lo is None or low > lo) and (hi is None or high < hi)
    outside = (lo is not None and high <= lo) or (hi is not None and low >= hi)
    return "holds" if inside else "does not hold" if outside else "inconclusive"


def _region(claim: Claim) -> tuple[float | None, float | None, str]:
    """The region the claim expects its estimate in (a trend: each adjacent step, later minus
    earlier), and how the table states it."""
    if claim.test == "bound":
        lo = "−∞" if claim.low is None else f"{claim.low:g}"
        hi = "∞" if claim.high is None else f"{claim.high:g}"
        return claim.low, claim.high, f"in [{lo}, {hi}]"
    if claim.test == "trend":
        region = (0.0, None) if claim.expect == "increasing" else (None, 0.0)
        return *region, f"{claim.expect} in {claim.by}"
    if claim.test == "compare":
        return (0.0, None, "A − B > 0") if claim.expect == "greater" else (None, 0.0, "A − B < 0")
    if claim.expect == "higher":  # noninferior
        return -claim.margin, None, f"A − B > −{claim.margin:g}"
    return None, claim.margin, f"A − B < {claim.margin:g}"


def evaluate_claim(
    claim: Claim, rows: Sequence[Mapping[str, Any]], confidence: float = CONFIDENCE
) -> dict:
    """One result row: ``id, claim, source, test, metric, groups`` (names, space separated),
    ``n`` (runs with the metric per group), ``runs`` (their names, ``;`` between groups),
    ``estimate, low, high`` (None where not run or no interval), ``claimed_low``,
    ``claimed_high`` (the region the claim expects the estimate in; None: open) and
    ``expected`` (it as text), ``method``, ``verdict``; for a trend also ``step_values`` (each
    adjacent difference, space separated) and ``step_verdicts`` (``;`` separated)."""
    selected = [
        [r for r in g.select(rows) if metric_value(r, claim.metric) is not None]
        for g in claim.groups
    ]
    lo, hi, expected = _region(claim)
    out: dict[str, Any] = {
        "id": claim.id,
        "claim": claim.claim,
        "source": claim.source,
        "test": claim.test,
        "metric": claim.metric,
        "groups": " ".join(g.name for g in claim.groups),
        "n": " ".join(str(len(s)) for s in selected),
        "runs": "; ".join(" ".join(str(r["run"]) for r in s) for s in selected),
        "estimate": None,
        "low": None,
        "high": None,
        "claimed_low": lo,
        "claimed_high": hi,
        "expected": expected,
        "method": "",
        "verdict": "not run yet",
        "step_values": "",
        "step_verdicts": "",
    }
    empty = [g.name for g, s in zip(claim.groups, selected, strict=True) if not s]
    if empty:
        out["method"] = f"no runs of {', '.join(empty)}"
        return out
    if claim.test == "trend":
        steps = [
            difference(b, a, claim.metric, confidence) for a, b in itertools.pairwise(selected)
        ]
        verdicts = [side(e, lo, hi) for e in steps]
        est, verdict = _weakest(steps, verdicts, claim.expect == "increasing")
        out["step_values"] = " ".join(repr(e.value) for e in steps)
        out["step_verdicts"] = "; ".join(verdicts)
    elif claim.test == "bound":
        est = level(selected[0], claim.metric, confidence)
        verdict = side(est, lo, hi)
    else:
        est = difference(selected[0], selected[1], claim.metric, confidence)
        verdict = side(est, lo, hi)
    method = est.method
    if claim.metric in ACCURACY_METRICS and est.over_runs:
        method += "; spread over seeds on one eval set (its draw not included)"
    out.update(estimate=est.value, low=est.low, high=est.high, method=method, verdict=verdict)
    return out


def _weakest(steps: list[Estimate], verdicts: list[str], increasing: bool) -> tuple[Estimate, str]:
    """A trend's verdict from its adjacent steps (every step holds → holds; any step does not →
    does not hold; else inconclusive) and the step it shows: the weakest, whose interval (or
    value) reaches furthest to the wrong side."""

    def wrong_reach(e: Estimate) -> float:
        low = e.value if e.low is None else e.low
        high = e.value if e.high is None else e.high
        return -low if increasing else high

    weakest = max(steps, key=wrong_reach)
    if all(v == "holds" for v in verdicts):
        verdict = "holds"
    elif "does not hold" in verdicts:
        verdict = "does not hold"
    else:
        verdict = "inconclusive"
    method = f"adjacent steps, weakest shown: {weakest.method}"
    return Estimate(weakest.value, weakest.low, weakest.high, method, weakest.over_runs), verdict


def evaluate_claims(
    claims: Sequence[Claim], rows: Sequence[Mapping[str, Any]], confidence: float = CONFIDENCE
) -> list[dict]:
    """:func:`evaluate_claim` of every claim, in order."""
    return [evaluate_claim(c, rows, confidence) for c in claims]
