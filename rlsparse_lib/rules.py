"""How a number is measured: the one place that turns integer counts into sparsities.

Every sparsity in rlsparse (reports, tables, run summaries, monitor logs, figures) is
``n_unchanged / n`` computed here from exact integer counts, so the same counts always give the
same float whichever rule or module produced them (``1 - changed/n`` and ``unchanged/n`` can differ
in the last bit, which once made a bitwise sparsity exceed the one at 1e-8).
"""

from __future__ import annotations

from dataclasses import dataclass

from rlsparse_lib.errors import ConfigError

#: the paper's tolerance: bf16 values count as equal when |Δ| <= 1e-5
PAPER_TOL = 1e-5


def sparsity(n_unchanged: int, n: int) -> float | None:
    """Update sparsity ``n_unchanged / n`` from integer counts (None when ``n == 0``)."""
    return int(n_unchanged) / int(n) if n else None


def sparsity_from_changed(n_changed: int, n: int) -> float | None:
    """Update sparsity ``1 − n_changed / n``, computed as ``(n − n_changed) / n`` in integers."""
    return sparsity(int(n) - int(n_changed), n)


def tol_key(tol: float) -> str:
    """Key of a tolerance in JSON and column names: Python's ``repr(float)``, e.g. ``"1e-05"``."""
    return repr(float(tol))


def rule_suffix(rule: str, tol: float | None = None) -> str:
    """Column suffix of a measuring rule: ``bitwise``, ``tol_<tol_key(tol)>`` or ``rel``.

    ``rule`` is a kind (``bitwise``, ``tol``/``abs`` with ``tol``, ``rel``) or already a suffix
    (``tol_1e-05``), so callers holding either get the one spelling.
    """
    if rule in ("tol", "abs"):
        if tol is None:
            raise ConfigError(f"rule {rule!r} needs a tolerance")
        return f"tol_{tol_key(tol)}"
    if rule in ("bitwise", "rel") and tol is None:
        return rule
    if rule.startswith("tol_") and tol is None:
        try:
            return f"tol_{tol_key(float(rule.removeprefix('tol_')))}"
        except ValueError:
            pass
    raise ConfigError(f"unknown rule {rule!r} (use bitwise, tol_<t> or rel)")


def sparsity_column(rule: str, tol: float | None = None) -> str:
    """Canonical sparsity column of a rule, e.g. ``sparsity_column("tol", 1e-5)`` ->
    ``"sparsity_tol_1e-05"`` (every table, run summary, CLI and figure uses these names)."""
    return f"sparsity_{rule_suffix(rule, tol)}"


def unchanged_column(rule: str, tol: float | None = None) -> str:
    """Canonical unchanged-count column of a rule, e.g. ``"n_unchanged_tol_1e-05"``."""
    return f"n_unchanged_{rule_suffix(rule, tol)}"


def tol_of_column(column: str) -> float | None:
    """The tolerance of a ``sparsity_tol_<t>`` / ``n_unchanged_tol_<t>`` column (None otherwise)."""
    _, sep, t = column.partition("_tol_")
    if not sep:
        return None
    try:
        return float(t)
    except ValueError:
        return None


#: the paper's column: sparsity with |Δ| <= 1e-5 counted as unchanged
PAPER_SPARSITY = sparsity_column("tol", PAPER_TOL)

#: mask rules: which elements get a 1 bit
MASK_RULES = ("bitwise", "abs", "rel")


@dataclass(frozen=True)
class MaskRule:
    """Rule deciding a mask bit: ``bitwise`` (bits differ), ``abs`` (|Δ| > tol) or ``rel`` (|Δ| > tol·max(|a|,|b|))."""

    kind: str = "bitwise"
    tol: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in MASK_RULES:
            raise ConfigError(
                f"unknown mask rule {self.kind!r} (use one of {', '.join(MASK_RULES)})"
            )
        if self.tol < 0:
            raise ConfigError(f"mask tolerance must be >= 0, got {self.tol}")

    @property
    def code(self) -> int:
        return MASK_RULES.index(self.kind)

    def describe(self) -> str:
        return "bitwise" if self.kind == "bitwise" else f"{self.kind} tol={self.tol!r}"
