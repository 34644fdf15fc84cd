"""The reproduction table of claims: ``data/claims.yaml`` read and checked, its claims evaluated on
the runs table (:mod:`rlsparse_lib.analysis.claims`), and the result as CSV and as the README's
``<!-- claims:begin -->`` block.

The file has two sections. ``groups`` names selections of runs.csv rows: a mapping of runs.csv
columns to a value or a list of accepted values (numbers match numerically; ``null`` an empty
cell), and optionally ``run``, a regex the run name must match in full. ``claims`` is a list, each
with ``id``, ``claim`` (one sentence), ``source`` (paper, section, the published number),
``metric`` (:data:`METRICS`), ``test`` and what the test reads:

- ``compare``: ``a``, ``b`` (group names), ``expect: greater | less`` (A vs B);
- ``bound``: ``group``, ``low`` and/or ``high``;
- ``noninferior``: ``a``, ``b``, ``better: higher | lower``, ``margin`` (δ > 0), ``margin_why``;
- ``trend``: ``groups`` (≥ 2 names, in increasing ``by``), ``by`` (a numeric column every group
  selects exactly one value of), ``expect: increasing | decreasing``.

Any other key, an unknown metric, test, column or group, or a malformed value is a
:class:`~rlsparse_lib.errors.ConfigError` naming the file and the claim or group.
"""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path
from typing import Any

from rlsparse_lib.analysis.claims import ACC_GAIN, TESTS, Claim, Group
from rlsparse_lib.atomic import write_text_atomic
from rlsparse_lib.errors import ConfigError
from rlsparse_lib.experiments.tables import RUNS_COLUMNS, to_csv_text
from rlsparse_lib.rules import PAPER_SPARSITY

#: the README block markers the claims table is written between
CLAIMS_MARKERS = ("<!-- claims:begin -->", "<!-- claims:end -->")
#: the metrics a claim can read: measured runs.csv columns and ``acc_gain``
METRICS = (
    "acc_before",
    "acc_after",
    ACC_GAIN,
    "reward_mean_first_k",
    "reward_mean_last_k",
    "sparsity_bitwise",
    PAPER_SPARSITY,
    "fp32_sparsity_bitwise",
    f"fp32_{PAPER_SPARSITY}",
    "train_seconds",
)
#: numeric runs.csv columns a trend can run along
TREND_COLUMNS = ("steps", "seed", "lr", "eval_n")
#: the columns of claims.csv (:func:`~rlsparse_lib.analysis.claims.evaluate_claim`'s row)
CLAIMS_COLUMNS = (
    "id",
    "claim",
    "source",
    "test",
    "metric",
    "groups",
    "n",
    "runs",
    "estimate",
    "low",
    "high",
    "claimed_low",
    "claimed_high",
    "expected",
    "method",
    "verdict",
    "step_values",
    "step_verdicts",
)
#: keys each test reads besides id, claim, source, metric, test (required, optional)
_TEST_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "compare": (("a", "b", "expect"), ()),
    "bound": (("group",), ("low", "high")),
    "noninferior": (("a", "b", "better", "margin", "margin_why"), ()),
    "trend": (("groups", "by", "expect"), ()),
}
_EXPECT = {
    "compare": ("greater", "less"),
    "noninferior": ("higher", "lower"),
    "trend": ("increasing", "decreasing"),
}


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _group(path: Path, name: Any, spec: Any) -> Group:
    where: dict[str, tuple[Any, ...]] = {}
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{path}: group names must be non-empty strings, got {name!r}")
    if not isinstance(spec, dict) or not spec:
        raise ConfigError(f"{path}: group {name}: expected a mapping of runs.csv columns to values")
    run = spec.get("run")
    if run is not None:
        if not isinstance(run, str):
            raise ConfigError(f"{path}: group {name}: run must be a regex string, got {run!r}")
        try:
            re.compile(run)
        except re.error as err:
            raise ConfigError(f"{path}: group {name}: run regex {run!r}: {err}") from None
    for column, value in spec.items():
        if column == "run":
            continue
        if column not in RUNS_COLUMNS:
            raise ConfigError(f"{path}: group {name}: unknown runs.csv column {column!r}")
        values = value if isinstance(value, list) else [value]
        ok = values and all(v is None or isinstance(v, str) or _number(v) for v in values)
        if not ok:
            raise ConfigError(
                f"{path}: group {name}: {column} must be a value or a list of values, got {value!r}"
            )
        where[column] = tuple(values)
    return Group(name, where, run)


def _claim(path: Path, spec: Any, groups: dict[str, Group], index: int) -> Claim:
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: claim #{index + 1}: expected a mapping, got {spec!r}")
    cid = spec.get("id")
    if not isinstance(cid, str) or not cid:
        raise ConfigError(f"{path}: claim #{index + 1}: needs an id (a non-empty string)")

    def bad(what: str) -> ConfigError:
        return ConfigError(f"{path}: claim {cid}: {what}")

    for key in ("claim", "source", "metric", "test"):
        if not isinstance(spec.get(key), str) or not spec[key].strip():
            raise bad(f"needs {key} (a non-empty string)")
    test, metric = spec["test"], spec["metric"]
    if test not in TESTS:
        raise bad(f"unknown test {test!r} (use {', '.join(TESTS)})")
    if metric not in METRICS:
        raise bad(f"unknown metric {metric!r} (use {', '.join(METRICS)})")
    required, optional = _TEST_KEYS[test]
    allowed = {"id", "claim", "source", "metric", "test", *required, *optional}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise bad(f"unknown keys {unknown} for test {test}")
    missing = [k for k in required if spec.get(k) in (None, "")]
    if missing:
        raise bad(f"test {test} needs {', '.join(missing)}")

    def group(key: str, name: Any) -> Group:
        if not isinstance(name, str) or name not in groups:
            raise bad(f"{key}: unknown group {name!r}")
        return groups[name]

    if test in _EXPECT:
        key = "better" if test == "noninferior" else "expect"
        if spec[key] not in _EXPECT[test]:
            raise bad(f"{key} must be {' or '.join(_EXPECT[test])}, got {spec[key]!r}")
    common = {"id": cid, "claim": spec["claim"].strip(), "source": spec["source"].strip()}
    common.update(metric=metric, test=test)
    if test == "bound":
        low, high = spec.get("low"), spec.get("high")
        if low is None and high is None:
            raise bad("test bound needs low and/or high")
        for k, v in (("low", low), ("high", high)):
            if v is not None and not _number(v):
                raise bad(f"{k} must be a number, got {v!r}")
        if low is not None and high is not None and not low < high:
            raise bad(f"low {low} must be below high {high}")
        return Claim(**common, groups=(group("group", spec["group"]),), low=low, high=high)
    if test == "compare":
        pair = (group("a", spec["a"]), group("b", spec["b"]))
        return Claim(**common, groups=pair, expect=spec["expect"])
    if test == "noninferior":
        margin = spec["margin"]
        if not _number(margin) or margin <= 0:
            raise bad(f"margin must be a number > 0, got {margin!r}")
        if not isinstance(spec["margin_why"], str):
            raise bad("margin_why must say why that margin, as text")
        pair = (group("a", spec["a"]), group("b", spec["b"]))
        return Claim(**common, groups=pair, expect=spec["better"], margin=float(margin))
    names, by = spec["groups"], spec["by"]
    if not isinstance(names, list) or len(names) < 2:
        raise bad(f"groups must be a list of at least two group names, got {names!r}")
    if by not in TREND_COLUMNS:
        raise bad(f"by must be one of {', '.join(TREND_COLUMNS)}, got {by!r}")
    chosen = tuple(group("groups", n) for n in names)
    keys = []
    for g in chosen:
        values = g.where.get(by, ())
        if len(values) != 1 or not _number(values[0]):
            raise bad(f"group {g.name} must select one numeric {by} value for a trend")
        keys.append(float(values[0]))
    if any(b <= a for a, b in itertools.pairwise(keys)):
        raise bad(f"groups must be listed in increasing {by}, got {keys}")
    return Claim(**common, groups=chosen, expect=spec["expect"], by=by)


def load_claims(path: str | Path) -> list[Claim]:
    """The claims of a claims file (module docstring), checked.

    Raises:
        ConfigError: a missing or malformed file, naming it and the claim or group at fault.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such claims file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict) or set(data) != {"groups", "claims"}:
        raise ConfigError(f"{path}: expected exactly the sections groups and claims")
    if not isinstance(data["groups"], dict) or not isinstance(data["claims"], list):
        raise ConfigError(f"{path}: groups must be a mapping and claims a list")
    groups = {name: _group(path, name, spec) for name, spec in data["groups"].items()}
    claims = [_claim(path, spec, groups, i) for i, spec in enumerate(data["claims"])]
    seen: set[str] = set()
    for c in claims:
        if c.id in seen:
            raise ConfigError(f"{path}: claim {c.id}: id used twice")
        seen.add(c.id)
    return claims


def _fmt(metric: str, v: Any, diff: bool, digits: int = 3) -> str:
    """A value of ``metric``: sparsities in percent (pp for differences), accuracies as
    fractions, to ``digits`` decimals; other metrics to 4 significant digits. Differences carry
    their sign (``−`` for minus)."""
    if v is None or v == "":
        return "–"
    x = float(v)
    if "sparsity" in metric:
        text = f"{100 * x:{'+' if diff else ''}.{digits}f}" + (" pp" if diff else " %")
    elif metric in ("acc_before", "acc_after", ACC_GAIN):
        text = f"{x:{'+' if diff else ''}.{digits}f}"
    else:
        text = f"{x:{'+' if diff else ''}.4g}"
    return text.replace("-", "−")


def _claimed(r: dict) -> str:
    """The claimed region of a result row, in the metric's units."""
    metric, lo, hi = r["metric"], r["claimed_low"], r["claimed_high"]

    def bound(v: Any, diff: bool = False) -> str:  # a set number: as few digits as it has
        x = float(v) * (100 if "sparsity" in metric else 1)
        unit = (" pp" if diff else " %") if "sparsity" in metric else ""
        return f"{x:g}".replace("-", "−") + unit

    if r["test"] == "bound":
        lo_t = "−∞" if lo in (None, "") else bound(lo)
        return f"in [{lo_t}, {'∞' if hi in (None, '') else bound(hi)}]"
    if r["test"] == "trend":
        return str(r["expected"])
    return f"A − B > {bound(lo, True)}" if lo not in (None, "") else f"A − B < {bound(hi, True)}"


def claims_markdown(results: list[dict]) -> str:
    """The evaluated claims as a Markdown table: the claim, its source, the groups compared with
    their run counts, the estimate with its 95 % interval (a trend: its weakest adjacent step,
    then every step), the claimed region, the method and the verdict (sparsities in percent)."""
    lines = [
        "| claim | source (published) | groups (runs) | metric | ours: estimate [95 % interval] "
        "| claimed | method | verdict |",
        "|" + "---|" * 8,
    ]
    for r in results:
        names, counts = r["groups"].split(), str(r["n"]).split()
        sep = " → " if r["test"] == "trend" else " vs "
        groups = sep.join(f"{g} ({n})" for g, n in zip(names, counts, strict=True))
        metric, diff = r["metric"], r["test"] != "bound"
        est = _fmt(metric, r["estimate"], diff)
        if r["low"] not in (None, ""):
            est += f" [{_fmt(metric, r['low'], diff)}, {_fmt(metric, r['high'], diff)}]"
        if r.get("step_values"):
            steps = zip(r["step_values"].split(), r["step_verdicts"].split("; "), strict=True)
            est += " (steps: " + "; ".join(f"{_fmt(metric, v, True)} {w}" for v, w in steps) + ")"
        cells = [f"**{r['id']}**: {r['claim']}", r["source"], groups, f"`{metric}`", est]
        cells += [_claimed(r), r["method"], f"**{r['verdict']}**"]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def save_claims(
    results: list[dict], csv_path: str | Path | None, md_path: str | Path | None
) -> str:
    """Write the evaluated claims as CSV (:data:`CLAIMS_COLUMNS`) and/or Markdown (atomically);
    return the Markdown."""
    md = claims_markdown(results)
    if csv_path:
        write_text_atomic(csv_path, to_csv_text(results, CLAIMS_COLUMNS))
    if md_path:
        write_text_atomic(md_path, md)
    return md
