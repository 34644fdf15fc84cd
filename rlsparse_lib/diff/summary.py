"""Plain-text rendering of a DiffReport for the terminal."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rlsparse_lib.rules import (
    PAPER_SPARSITY,
    PAPER_TOL,
    rule_suffix,
    sparsity,
    sparsity_column,
    unchanged_column,
)

if TYPE_CHECKING:  # the report renders itself through this module
    from rlsparse_lib.diff.report import DiffReport


def format_summary(report: DiffReport, by: str = "module", max_list: int = 10) -> str:
    """A readable summary: inputs, sparsity per rule, a per-``by`` table, skipped/partial/tied."""
    prov = report.provenance
    lines = coverage_lines(report.coverage())
    for side in ("base", "tuned"):
        d = prov.get("inputs", {}).get(side)
        if d:
            dtypes = ", ".join(f"{k}: {v}" for k, v in d["stored_dtypes"].items())
            lines.append(
                f"{side:<6} {d['source']}  ({d['format']}, {len(d['files'])} file(s), "
                f"{d['n_tensors']} tensors; {dtypes})"
            )
    compare = ", ".join(f"{k} ({v})" for k, v in prov.get("compare_dtypes", {}).items())
    lines.append(
        f"compared {len(report.tensors)} float tensors, {report.n_params:,} elements; "
        f"compare dtype: {compare} [{prov.get('compare_dtype_policy', '?')}]"
    )
    lines.append("")
    lines.append(f"{'rule':<42}{'unchanged':>16}{'sparsity':>12}")
    total = report.totals()
    head = report.headline()
    for suffix, label in report.rules():
        if suffix == rule_suffix("tol", PAPER_TOL):
            label += "  (paper default)"
        n = head[unchanged_column(suffix)]
        frac = sparsity(n, report.n_params)
        pct = float("nan") if frac is None else 100 * frac
        lines.append(f"{label:<42}{n:>16,}{pct:>11.4f}%")
    norms = report.norms(total)
    rel = norms["relative_delta_fro"]
    lines.append("")
    lines.append(
        f"max|Δ| = {norms['max_abs_delta']:.3g}   ‖Δ‖_F = {norms['delta_fro']:.4g}   "
        f"‖Δ‖_F/‖θ0‖_F = {rel:.3g}"
        if rel is not None
        else f"max|Δ| = {norms['max_abs_delta']:.3g}"
    )
    nonfinite = {k: v for k, v in report.nonfinite(total).items() if v}
    lines.append(
        "non-finite values: "
        + (", ".join(f"{k}={v:,}" for k, v in nonfinite.items()) if nonfinite else "none")
    )
    if by != "none" and report.tensors:
        lines.append("")
        lines.extend(_group_table(report, by))
    lines.extend(
        _listing("skipped", [f"{s['name']}: {s['reason']}" for s in report.skipped], max_list)
    )
    lines.extend(
        _listing(
            "partial", [f"{p['name']}: {p['note']}" for p in prov.get("partial", [])], max_list
        )
    )
    lines.extend(
        _listing("casts", [f"{p['name']}: {p['note']}" for p in prov.get("casts", [])], max_list)
    )
    lines.extend(_listing("tied", report.tied, max_list))
    lines.extend(
        _listing(
            "buffers (bitwise only, not in the numbers above)",
            [f"{b.name}: {b.n_changed:,} of {b.numel:,} changed" for b in report.buffers],
            max_list,
        )
    )
    lines.extend(_listing("warnings", prov.get("warnings", []), max_list))
    if prov.get("seconds") is not None:
        lines.append("")
        lines.append(
            f"took {prov['seconds']:.2f} s ({prov.get('kernel')}, {prov.get('threads')} threads)"
        )
    return "\n".join(lines)


def coverage_lines(cov: dict) -> list[str]:
    """The summary's first line(s): which share of the model's elements the headline covers, and
    where the rest went (excluded by --include/--exclude, bitwise buffers, not compared)."""
    total = cov["n_elements_total"]
    line = f"headline covers {_pct(cov['share'])} of {_human(total)} elements"
    rest = []
    for key, label in (
        ("excluded", "excluded by --include/--exclude"),
        ("buffers", "integer/bool buffers, bitwise only"),
        ("not_compared", "not compared: missing, mismatched or resized rows"),
    ):
        n = cov[key]["n_elements"]
        if n:
            rest.append(f"{_pct(n / total)} {label}")
    if rest:
        line += f" ({'; '.join(rest)})"
    lines = [line]
    if cov["share"] is not None and cov["share"] < 1:
        lines.append(
            f"  the numbers below describe {_human(cov['n_elements_headline'])} of "
            f"{_human(total)} elements, not the whole model"
        )
    return lines


def _pct(share: float | None) -> str:
    """A share as a percentage that never rounds a partial share to 100 % or a non-empty one to 0 %."""
    if share is None:
        return "n/a"
    for digits in range(1, 10):  # more digits until a partial share stops looking whole or empty
        text = f"{100 * share:.{digits}f}"
        if not ((float(text) == 100 and share < 1) or (float(text) == 0 and share > 0)):
            break
    return f"{text} %"


def _human(n: int) -> str:
    """1234 -> '1,234'; 1.2e9 -> '1.2 B' (K, M, B, T above 10,000)."""
    for scale, unit in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if n >= max(scale, 10**4):
            return f"{n / scale:.1f} {unit}"
    return f"{n:,}"


def _group_table(report: DiffReport, by: str) -> list[str]:
    rows = report.group_rows(by)
    has_tol = PAPER_TOL in report.tolerances
    head = f"{by:<34}{'tensors':>8}{'elements':>15}{'bitwise':>10}"
    head += f"{'1e-05':>10}" if has_tol else ""
    head += f"{'mean/tensor':>13}"
    out = [f"sparsity by {by} (count-weighted; 'mean/tensor' = unweighted mean, bitwise)", head]
    for r in rows:
        key = "—" if r[by] is None else str(r[by])
        bitwise = sparsity_column("bitwise")
        row = f"{key:<34}{r['n_tensors']:>8}{r['numel']:>15,}{100 * r[bitwise]:>9.2f}%"
        if has_tol:
            row += f"{100 * r[PAPER_SPARSITY]:>9.2f}%"
        row += f"{100 * r[f'mean_{bitwise}']:>12.2f}%"
        out.append(row)
    return out


def _listing(title: str, items: list[str], max_list: int) -> list[str]:
    if not items:
        return []
    out = ["", f"{title} ({len(items)}):"]
    out += [f"  {s}" for s in items[:max_list]]
    if len(items) > max_list:
        out.append(f"  … {len(items) - max_list} more (see --json)")
    return out
