"""How a diff compares: the tolerance grid, relative probe, compare dtype, tensor selection, chunking,
mask rule and device."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rlsparse_lib.errors import ConfigError
from rlsparse_lib.rules import MaskRule

#: the paper's grid (1e-5 is its default rule) plus exact equality and 1e-4
DEFAULT_TOLERANCES = (0.0, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4)
DEFAULT_CHUNK = 1 << 24
#: bytes (both sides) per work unit: see :mod:`rlsparse_lib.diff.units`
DEFAULT_UNIT_BYTES = 4 << 30
#: DiffConfig fields that change a report's numbers (the others only change how fast it runs)
RESULT_FIELDS = ("tolerances", "rel_eta", "compare_dtype", "include", "exclude", "mask_rule")


@dataclass(frozen=True)
class DiffConfig:
    """How to compare.

    Attributes:
        tolerances: absolute tolerance grid; sorted ascending, duplicates removed.
        rel_eta: η of the relative probe |Δ| <= η·max(|θ0|,|θ1|) (Path Not Taken: 1e-3).
        compare_dtype: cast both sides to this dtype (None: each base tensor's stored dtype).
        include, exclude: regexes selecting tensors by name.
        chunk_elems: elements per chunk and side (multiple of 8).
        mask_rule: rule for ``mask_out`` bits.
        device: kernel device: ``cpu``, ``cuda`` (Triton, streamed) or ``auto``.
        threads: CPU threads for the kernel (None: all).
        max_unit_bytes: bound on the bytes read from both sides per work unit (a tensor is never
            split, so one larger tensor is a unit of its own); results do not depend on it.
    """

    tolerances: tuple[float, ...] = DEFAULT_TOLERANCES
    rel_eta: float = 1e-3
    compare_dtype: str | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    chunk_elems: int = DEFAULT_CHUNK
    mask_rule: MaskRule = field(default_factory=MaskRule)
    device: str = "cpu"
    threads: int | None = None
    max_unit_bytes: int = DEFAULT_UNIT_BYTES

    def __post_init__(self) -> None:
        tols = tuple(sorted({float(t) for t in self.tolerances}))
        if any(not np.isfinite(t) or t < 0 for t in tols):
            raise ConfigError(f"tolerances must be finite and >= 0, got {list(self.tolerances)}")
        object.__setattr__(self, "tolerances", tols)
        if not (np.isfinite(self.rel_eta) and self.rel_eta >= 0):
            raise ConfigError(f"rel_eta must be finite and >= 0, got {self.rel_eta}")
        if self.chunk_elems < 8 or self.chunk_elems % 8 or self.chunk_elems >= 2**31:
            raise ConfigError(
                f"chunk_elems must be a multiple of 8 below 2**31, got {self.chunk_elems}"
            )
        if self.max_unit_bytes <= 0:
            raise ConfigError(f"max_unit_bytes must be > 0, got {self.max_unit_bytes}")

    def result_settings(self) -> dict[str, object]:
        """The result-changing settings (:data:`RESULT_FIELDS`) as plain JSON values."""
        out: dict[str, object] = {}
        for name in RESULT_FIELDS:
            value = getattr(self, name)
            if name == "mask_rule":
                value = {"kind": value.kind, "tol": float(value.tol)}
            elif isinstance(value, tuple):
                value = list(value)
            out[name] = value
        return out
