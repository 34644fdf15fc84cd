"""The reproduction table of claims: every interval method against a naive computation written
out here, every verdict branch, runs not made yet, bad claims files, the README block, and the
real data/claims.yaml on the committed runs.csv."""

from __future__ import annotations

import csv
import functools
import math
from pathlib import Path

import mpmath
import numpy as np
import pytest

from rlsparse_lib.analysis.claims import Claim, Group, evaluate_claim, evaluate_claims
from rlsparse_lib.cli import main
from rlsparse_lib.errors import ConfigError
from rlsparse_lib.experiments.claims_table import (
    CLAIMS_COLUMNS,
    CLAIMS_MARKERS,
    claims_markdown,
    load_claims,
)
from rlsparse_lib.experiments.tables import (
    MARKERS,
    RUNS_COLUMNS,
    read_runs_table,
    replace_marked_block,
    to_csv_text,
)
from rlsparse_lib.paths import repo_root

TOL = "sparsity_tol_1e-05"
ROOT = repo_root()


@functools.lru_cache
def _t_quantile(p: float, df: int) -> float:
    """Naive: integrate Student's t density with mpmath.quad and solve F(t) = p by bisection."""
    c = mpmath.gamma((df + 1) / 2) / (mpmath.sqrt(df * mpmath.pi) * mpmath.gamma(df / 2))

    def cdf(t: float) -> float:
        return 0.5 + float(mpmath.quad(lambda x: c * (1 + x * x / df) ** (-(df + 1) / 2), [0, t]))

    lo, hi = 0.0, 100.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


Z975 = float(mpmath.sqrt(2) * mpmath.erfinv(0.95))  # the normal 97.5 % quantile


def _row(run: str, **cells) -> dict:
    """A runs.csv row as the CSV reader gives it: every column, values as text."""
    row = dict.fromkeys(RUNS_COLUMNS, "")
    row.update(run=run, kind="grpo", precision="mixed", steps="20", lr="1e-05", eval_n="512")
    row.update({k: repr(v) if isinstance(v, float) else str(v) for k, v in cells.items()})
    return row


def _rows(prefix: str, metric: str, values: list[float], **cells) -> list[dict]:
    return [_row(f"{prefix}-seed{i}", seed=i, **{metric: v}, **cells) for i, v in enumerate(values)]


A = Group("a", run=r"a-seed\d+")
B = Group("b", run=r"b-seed\d+")


def _claim(test: str, groups=(A, B), metric: str = TOL, **kw) -> Claim:
    return Claim(f"c-{test}", "a claim", "a paper", metric, test, tuple(groups), **kw)


def test_welch_interval_against_naive() -> None:
    a, b = [0.86, 0.87, 0.91], [0.828, 0.829, 0.8305, 0.8291]
    rows = _rows("a", TOL, a) + _rows("b", TOL, b)
    out = evaluate_claim(_claim("compare", expect="greater"), rows)
    xa, xb = np.array(a), np.array(b)
    va, vb = xa.var(ddof=1) / len(a), xb.var(ddof=1) / len(b)
    nu = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = _t_quantile(0.975, math.floor(nu)) * math.sqrt(va + vb)
    d = xa.mean() - xb.mean()
    assert out["estimate"] == pytest.approx(d, abs=1e-14)
    assert (out["low"], out["high"]) == pytest.approx((d - half, d + half), rel=1e-7)
    assert f"df {math.floor(nu)} (floored)" in out["method"] and out["n"] == "3 4"
    # flooring makes the interval wider than the one with the fractional df
    assert math.floor(nu) < nu
    assert out["verdict"] == ("holds" if d - half > 0 else "inconclusive")


def test_welch_with_zero_spreads() -> None:
    """One side without spread: ν = n_b − 1 exactly; both without: a zero-width interval."""
    rows = _rows("a", "acc_before", [0.125] * 3) + _rows("b", "acc_before", [0.1, 0.12, 0.13])
    out = evaluate_claim(_claim("compare", metric="acc_before", expect="greater"), rows)
    xb = np.array([0.1, 0.12, 0.13])
    half = _t_quantile(0.975, 2) * xb.std(ddof=1) / math.sqrt(3)
    d = 0.125 - xb.mean()
    assert (out["low"], out["high"]) == pytest.approx((d - half, d + half), rel=1e-7)
    assert "df 2" in out["method"]
    same = _rows("a", "acc_before", [0.125] * 3) + _rows("b", "acc_before", [0.125] * 2)
    out = evaluate_claim(_claim("compare", metric="acc_before", expect="greater"), same)
    assert (out["estimate"], out["low"], out["high"]) == (0.0, 0.0, 0.0)
    assert out["verdict"] == "does not hold" and "df 3" in out["method"]


def test_prediction_interval_against_naive_on_either_side() -> None:
    seeded, single = [0.177, 0.172, 0.184], 0.15
    rows = _rows("b", "acc_after", seeded) + _rows("a", "acc_after", [single])
    xs = np.array(seeded)
    half = _t_quantile(0.975, 2) * xs.std(ddof=1) * math.sqrt(1 + 1 / 3)
    claim = _claim("noninferior", metric="acc_after", expect="higher", margin=0.025)
    out = evaluate_claim(claim, rows)
    d = single - xs.mean()
    assert out["estimate"] == pytest.approx(d, abs=1e-14)
    assert (out["low"], out["high"]) == pytest.approx((d - half, d + half), rel=1e-7)
    assert out["method"].startswith("prediction interval, 1 run vs 3 runs")
    assert "spread over seeds" in out["method"]  # an accuracy: the eval set's draw is not in it
    flipped = evaluate_claim(
        _claim("compare", groups=(B, A), metric="acc_after", expect="greater"), rows
    )
    assert flipped["estimate"] == pytest.approx(-d, abs=1e-14)
    assert (flipped["low"], flipped["high"]) == pytest.approx((-d - half, -d + half), rel=1e-7)


def test_two_proportion_interval_of_single_runs_against_naive() -> None:
    rows = [
        _row("a-seed0", acc_after=0.25, acc_before=0.125, eval_n=512),
        _row("b-seed0", acc_after=0.2, acc_before=0.125, eval_n=256),
    ]
    out = evaluate_claim(_claim("compare", metric="acc_after", expect="greater"), rows)
    se = math.sqrt(0.25 * 0.75 / 512 + 0.2 * 0.8 / 256)
    assert out["estimate"] == pytest.approx(0.05, abs=1e-15)
    assert (out["low"], out["high"]) == pytest.approx((0.05 - Z975 * se, 0.05 + Z975 * se))
    assert out["method"] == "two-proportion normal interval (eval-set noise only)"
    assert out["verdict"] == "inconclusive"  # 0.05 with se 0.035
    gain = evaluate_claim(_claim("bound", groups=(A,), metric="acc_gain", low=0.0), rows)
    se_gain = math.sqrt(0.25 * 0.75 / 512 + 0.125 * 0.875 / 512)
    assert gain["estimate"] == pytest.approx(0.125, abs=1e-15)
    assert (gain["low"], gain["high"]) == pytest.approx(
        (0.125 - Z975 * se_gain, 0.125 + Z975 * se_gain)
    )
    assert gain["verdict"] == "holds"  # 0.125 − 1.96 · 0.025 > 0
    unknown_n = [{**r, "eval_n": ""} for r in rows]
    out = evaluate_claim(_claim("compare", metric="acc_after", expect="greater"), unknown_n)
    assert (out["low"], out["method"]) == (None, "single runs, no interval")


def test_single_sparsities_get_no_interval_and_the_direction_decides() -> None:
    rows = _rows("a", TOL, [0.80]) + _rows("b", TOL, [0.83])
    less = evaluate_claim(_claim("compare", expect="less"), rows)
    greater = evaluate_claim(_claim("compare", expect="greater"), rows)
    for out in (less, greater):
        assert out["estimate"] == pytest.approx(-0.03)
        assert (out["low"], out["high"], out["method"]) == (None, None, "single runs, no interval")
    assert (less["verdict"], greater["verdict"]) == ("holds", "does not hold")
    one = evaluate_claim(_claim("bound", groups=(A,), low=0.9998), rows)
    assert (one["low"], one["method"], one["verdict"]) == (
        None,
        "single run, no interval",
        "does not hold",
    )


def test_bound_t_interval_against_naive_and_its_three_verdicts() -> None:
    values = [0.8696, 0.8742, 0.9123]
    rows = _rows("a", TOL, values)
    xs = np.array(values)
    half = _t_quantile(0.975, 2) * xs.std(ddof=1) / math.sqrt(3)
    for low, high, verdict in (
        (0.685, 0.96, "holds"),
        (0.06, 0.15, "does not hold"),
        (0.85, 0.90, "inconclusive"),
        (None, 0.80, "does not hold"),
        (0.80, None, "holds"),
    ):
        out = evaluate_claim(_claim("bound", groups=(A,), low=low, high=high), rows)
        assert out["estimate"] == pytest.approx(xs.mean(), abs=1e-14)
        assert (out["low"], out["high"]) == pytest.approx((xs.mean() - half, xs.mean() + half))
        assert out["method"] == "Student t over 3 runs, df 2"
        assert out["verdict"] == verdict, (low, high)
        assert (out["claimed_low"], out["claimed_high"]) == (low, high)


@pytest.mark.parametrize(
    ("b_values", "verdict"),
    [
        ([0.20, 0.201, 0.199], "holds"),
        ([0.25, 0.26, 0.27], "does not hold"),
        ([0.22, 0.25, 0.21], "inconclusive"),
    ],
)
def test_noninferior_verdicts(b_values: list[float], verdict: str) -> None:
    rows = _rows("a", "acc_after", [0.20, 0.205, 0.195]) + _rows("b", "acc_after", b_values)
    out = evaluate_claim(
        _claim("noninferior", metric="acc_after", expect="higher", margin=0.025), rows
    )
    assert out["verdict"] == verdict
    assert out["claimed_low"] == -0.025 and out["expected"] == "A − B > −0.025"
    lower = evaluate_claim(
        _claim("noninferior", metric="acc_after", expect="lower", margin=0.025), rows
    )
    assert lower["claimed_high"] == 0.025  # lower is better: A may exceed B by at most δ


def test_trend_steps_weakest_and_verdicts() -> None:
    lo = Group("lo", {"lr": (3e-6,)})
    mid = Group("mid", {"lr": (1e-5,)})
    hi = Group("hi", {"lr": (3e-5,)})
    rows = (
        _rows("l", TOL, [0.95], lr=3.0000000000000004e-06)
        + _rows("m", TOL, [0.86, 0.87, 0.91], lr=1e-05)
        + _rows("h", TOL, [0.71], lr=3e-05)
    )
    claim = _claim("trend", groups=(lo, mid, hi), expect="decreasing", by="lr")
    out = evaluate_claim(claim, rows)
    xs = np.array([0.86, 0.87, 0.91])
    pred = _t_quantile(0.975, 2) * xs.std(ddof=1) * math.sqrt(1 + 1 / 3)
    steps = [xs.mean() - 0.95, 0.71 - xs.mean()]
    assert [float(v) for v in out["step_values"].split()] == pytest.approx(steps, abs=1e-14)
    # the weakest step is the one whose interval reaches highest (the claim wants < 0)
    assert out["estimate"] == pytest.approx(steps[0], abs=1e-14)
    assert out["high"] == pytest.approx(steps[0] + pred, rel=1e-7)
    expected_steps = ["holds" if s + pred < 0 else "inconclusive" for s in steps]
    assert out["step_verdicts"].split("; ") == expected_steps
    assert out["verdict"] == ("holds" if expected_steps == ["holds"] * 2 else "inconclusive")
    single = [r for r in rows if r["run"] in ("l-seed0", "m-seed0", "h-seed0")]
    assert evaluate_claim(claim, single)["verdict"] == "holds"
    up = [{**r, TOL: "0.99"} if r["run"] == "h-seed0" else r for r in single]
    assert evaluate_claim(claim, up)["verdict"] == "does not hold"


def test_group_without_runs_is_not_run_yet_and_never_dropped() -> None:
    rows = _rows("a", TOL, [0.8, 0.81])
    claims = [
        _claim("compare", expect="greater"),
        _claim("bound", groups=(A,), low=0.5),
        _claim("bound", groups=(B,), low=0.5),
    ]
    out = evaluate_claims(claims, rows)
    assert [o["verdict"] for o in out] == ["not run yet", "holds", "not run yet"]
    assert out[0]["n"] == "2 0" and out[0]["method"] == "no runs of b"
    assert out[0]["estimate"] is None and out[0]["runs"] == "a-seed0 a-seed1; "
    missing_metric = [{**r, TOL: ""} for r in rows]  # rows without the metric are not runs of it
    assert evaluate_claim(claims[1], missing_metric)["verdict"] == "not run yet"


def test_group_selection_matches_numbers_text_empty_cells_and_full_run_names() -> None:
    rows = [
        _row("cpu-grpo", lr="1e-05", optimizer=""),
        _row("cpu-grpo-lr3x", lr="3.0000000000000004e-05"),
        _row("cpu-grpo-eval512-seed0", optimizer="adamw", lr="1e-05"),
    ]
    names = lambda g: [r["run"] for r in g.select(rows)]  # noqa: E731
    assert names(Group("g", {"lr": (1.0e-5,)})) == ["cpu-grpo", "cpu-grpo-eval512-seed0"]
    assert names(Group("g", {"lr": ("1e-5",)})) == ["cpu-grpo", "cpu-grpo-eval512-seed0"]
    assert names(Group("g", {"lr": (3e-5,)})) == ["cpu-grpo-lr3x"]
    assert names(Group("g", {"optimizer": (None,)})) == ["cpu-grpo", "cpu-grpo-lr3x"]
    assert names(Group("g", {"optimizer": ("adamw", None)})) == [r["run"] for r in rows]
    assert names(Group("g", run="cpu-grpo")) == ["cpu-grpo"]  # a full match, not a prefix
    assert names(Group("g", {"kind": ("sft",)}, run="cpu-grpo")) == []


def test_non_numeric_metric_cell_is_a_config_error() -> None:
    rows = [*_rows("a", TOL, [0.8]), _row("a-seed9", **{TOL: "n/a"})]
    with pytest.raises(ConfigError, match=r"run a-seed9: sparsity_tol_1e-05 'n/a' is not a number"):
        evaluate_claim(_claim("bound", groups=(A,), low=0.5), rows)


GOOD = """
groups:
  a: {run: 'a-seed\\d+', kind: grpo, lr: 1.0e-5}
  b: {run: 'b-seed\\d+'}
claims:
  - {id: c1, claim: A beats B., source: a paper, metric: sparsity_tol_1e-05, test: compare,
     a: a, b: b, expect: greater}
"""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            GOOD.replace("metric: sparsity_tol_1e-05", "metric: sparsity_foo"),
            "claim c1: unknown metric 'sparsity_foo'",
        ),
        (GOOD.replace("test: compare", "test: equal"), "claim c1: unknown test 'equal'"),
        (GOOD.replace("kind: grpo", "kindd: grpo"), "group a: unknown runs.csv column 'kindd'"),
        (GOOD.replace("b: {run: 'b-seed\\d+'}", "b: grpo"), "group b: expected a mapping"),
        (GOOD.replace("b: {run: 'b-seed\\d+'}", "b: {run: '('}"), "group b: run regex"),
        (GOOD.replace("kind: grpo", "kind: {x: 1}"), "group a: kind must be a value"),
        (GOOD.replace("b: b,", "b: c,"), "claim c1: b: unknown group 'c'"),
        (
            GOOD.replace("expect: greater", "expect: more"),
            "claim c1: expect must be greater or less",
        ),
        (GOOD.replace(" expect: greater", " expect: greater, margin: 1"), "claim c1: unknown keys"),
        (GOOD.replace("test: compare", "test: noninferior"), "claim c1: unknown keys"),
        (
            GOOD.replace("     a: a, b: b, expect: greater", "     group: a"),
            "claim c1: unknown keys",
        ),
        (GOOD + GOOD.split("claims:")[1], "claim c1: id used twice"),
        ("groups: {}\n", "expected exactly the sections"),
        ("groups: [\n", "not valid YAML"),
    ],
)
def test_bad_claims_file_names_file_and_claim(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "claims.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_claims(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


@pytest.mark.parametrize(
    ("claim", "message"),
    [
        (
            "{id: b1, claim: x., source: p, metric: acc_gain, test: bound, group: a}",
            "needs low and/or high",
        ),
        (
            "{id: b2, claim: x., source: p, metric: acc_gain, test: bound, group: a, low: 1, high: 0}",
            "below high",
        ),
        (
            "{id: n1, claim: x., source: p, metric: acc_after, test: noninferior, a: a, b: b, better: higher, margin: 0, margin_why: w}",
            "margin must be a number > 0",
        ),
        (
            "{id: n2, claim: x., source: p, metric: acc_after, test: noninferior, a: a, b: b, better: higher, margin: 0.1}",
            "needs margin_why",
        ),
        (
            "{id: t1, claim: x., source: p, metric: acc_after, test: trend, groups: [a, b], by: lr, expect: decreasing}",
            "group b must select one numeric lr",
        ),
        (
            "{id: t2, claim: x., source: p, metric: acc_after, test: trend, groups: [a, c], by: lr, expect: decreasing}",
            "listed in increasing lr",
        ),
        (
            "{id: t3, claim: x., source: p, metric: acc_after, test: trend, groups: [a, c], by: kind, expect: decreasing}",
            "by must be one of",
        ),
        (
            "{claim: x., source: p, metric: acc_after, test: bound, group: a, low: 0}",
            "claim #1: needs an id",
        ),
    ],
)
def test_bad_claim_of_each_test(tmp_path: Path, claim: str, message: str) -> None:
    path = tmp_path / "claims.yaml"
    groups = "groups:\n  a: {lr: 1.0e-5}\n  b: {kind: grpo}\n  c: {lr: 3.0e-6}\n"
    path.write_text(f"{groups}claims:\n  - {claim}\n")
    with pytest.raises(ConfigError, match=message):
        load_claims(path)


def _table(tmp_path: Path) -> Path:
    rows = _rows("a", TOL, [0.86, 0.87, 0.91], acc_after=0.18, acc_before=0.125) + _rows(
        "b", TOL, [0.828, 0.829], acc_after=0.26, acc_before=0.125
    )
    table = tmp_path / "runs.csv"
    table.write_text(to_csv_text(rows, RUNS_COLUMNS))
    return table


def test_cli_writes_claims_csv_md_and_both_readme_blocks(tmp_path: Path, capsys) -> None:
    table = _table(tmp_path)
    claims = tmp_path / "claims.yaml"
    claims.write_text(GOOD)
    readme = tmp_path / "README.md"
    begin, end = MARKERS
    cbegin, cend = CLAIMS_MARKERS
    readme.write_text(
        f"intro\n{begin}\nold runs\n{end}\nmiddle\n{cbegin}\nold claims\n{cend}\nend\n"
    )
    out_csv, out_md = tmp_path / "out" / "claims.csv", tmp_path / "out" / "claims.md"
    args = ["runs-table", "--table", str(table), "--claims", str(claims)]
    args += ["--claims-csv", str(out_csv), "--claims-md", str(out_md), "--readme", str(readme)]
    assert main(args) == 0
    with out_csv.open() as f:
        (row,) = list(csv.DictReader(f))
    assert tuple(row) == CLAIMS_COLUMNS and row["id"] == "c1" and row["n"] == "3 2"
    expected = evaluate_claims(load_claims(claims), read_runs_table(table))
    assert (
        float(row["estimate"]) == expected[0]["estimate"]
        and row["verdict"] == expected[0]["verdict"]
    )
    md = out_md.read_text()
    assert md == claims_markdown(expected)
    text = readme.read_text()
    assert f"{cbegin}\n{md}{cend}\nend\n" in text
    runs_block = text[text.index(begin) : text.index(end)]
    assert "old runs" not in runs_block and "| runs | kind |" in runs_block  # the summary
    # replacing the claims block again leaves the runs-table block byte for byte
    assert replace_marked_block(readme, "| new |\n", CLAIMS_MARKERS)
    after = readme.read_text()
    assert after[: after.index(cbegin)] == text[: text.index(cbegin)]
    assert f"{cbegin}\n| new |\n{cend}\nend\n" in after
    assert md in capsys.readouterr().out


def test_cli_refuses_bad_claims_with_exit_2_and_writes_nothing(tmp_path: Path, capsys) -> None:
    table = _table(tmp_path)
    before = table.read_bytes()
    claims = tmp_path / "claims.yaml"
    claims.write_text(GOOD.replace("metric: sparsity_tol_1e-05", "metric: nope"))
    readme = tmp_path / "README.md"
    text = f"{MARKERS[0]}\n{MARKERS[1]}\n{CLAIMS_MARKERS[0]}\n{CLAIMS_MARKERS[1]}\n"
    readme.write_text(text)
    out_csv, out_md, summary = tmp_path / "c.csv", tmp_path / "c.md", tmp_path / "s.md"
    args = [
        "runs-table",
        "--table",
        str(table),
        "--claims",
        str(claims),
        "--summary-md",
        str(summary),
    ]
    args += ["--claims-csv", str(out_csv), "--claims-md", str(out_md), "--readme", str(readme)]
    assert main(args) == 2
    assert f"{claims}: claim c1: unknown metric 'nope'" in capsys.readouterr().err
    claims.write_text(GOOD)
    readme.write_text(f"{MARKERS[0]}\n{MARKERS[1]}\n")  # no claims markers
    assert main(args) == 2
    assert "expected one '<!-- claims:begin -->' marker" in capsys.readouterr().err
    assert main(["runs-table", "--table", str(table), "--claims-md", str(out_md)]) == 2
    assert "need --claims" in capsys.readouterr().err
    assert not out_csv.exists() and not out_md.exists() and not summary.exists()
    assert readme.read_text() == f"{MARKERS[0]}\n{MARKERS[1]}\n" and table.read_bytes() == before


def test_real_claims_on_the_committed_runs_table() -> None:
    claims = load_claims(ROOT / "data" / "claims.yaml")
    rows = read_runs_table(ROOT / "data" / "results" / "engine" / "runs.csv")
    results = evaluate_claims(claims, rows)
    assert [r["id"] for r in results] == [c.id for c in claims]
    required = {
        "rl-sparse", "sft-dense", "rl-sparser-than-sft-20", "rl-sparser-than-sft-300",
        "rl-improves-accuracy", "random-1pct-subnetwork", "random-matched-subnetwork",
        "fp16-denser-grpo", "sgd-sparse", "lr-trend",
    }  # fmt: skip
    assert required <= {c.id for c in claims}
    for claim, r in zip(claims, results, strict=True):
        present = all(g.select(rows) for g in claim.groups)
        assert (r["verdict"] != "not run yet") == present, claim.id
        assert r["verdict"] in ("holds", "does not hold", "inconclusive", "not run yet")
        if present:
            assert r["estimate"] is not None and r["method"], claim.id
    assert sum(r["verdict"] != "not run yet" for r in results) >= 1
    md = claims_markdown(results)
    assert md.count("\n") == len(results) + 2
