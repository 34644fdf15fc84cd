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
