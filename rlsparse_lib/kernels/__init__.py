"""Per-chunk diff kernels.

A kernel turns one chunk of a tensor pair, given as raw words of the compare dtype, into a
:class:`~rlsparse_lib.stats.DiffStats` and optionally a bit-packed changed mask. Every
implementation (CPU here, CUDA/Triton elsewhere) must give identical counts and histograms;
float sums may differ in the last bits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..errors import ConfigError
from ..stats import DiffStats

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


@dataclass(frozen=True)
class ChunkSpec:
    """What a kernel computes for a chunk.

    Attributes:
        compare: dtype the words are in (``bfloat16``, ``float16`` or ``float32``).
        stored: base tensor's stored dtype; its ULP is the unit of the |Δ| histogram.
        tolerances: float64[n_tol], the absolute tolerance grid.
        eta: relative probe threshold η.
        mask_rule: rule for the optional packed mask.
    """

    compare: str
    stored: str
    tolerances: np.ndarray
    eta: float
    mask_rule: MaskRule = MaskRule()


class DiffKernel(Protocol):
    """The per-chunk diff computation; implementations are interchangeable."""

    name: str

    def diff_chunk(self, a, b, spec: ChunkSpec, mask_out=None) -> DiffStats:
        """Compare one chunk.

        Args:
            a, b: raw words (uint16 for 16-bit, uint32 for 32-bit compare dtypes), same length n.
            spec: dtypes, tolerance grid, η and mask rule.
            mask_out: zero-filled uint8[ceil(n/8)] receiving the packed mask (element i -> bit
                i % 8 of byte i // 8), or None.
        """
        ...

    def count_changed(self, a, b) -> int:
        """Bitwise changed count of two raw-word arrays of any width (integer/bool buffers)."""
        ...


def get_kernel(device: str = "cpu", threads: int | None = None) -> DiffKernel:
    """The kernel for ``device``: ``cpu``, ``cuda`` (Triton; needs a CUDA GPU) or ``auto`` (cuda
    when usable, else cpu). ``threads``: CPU kernel threads, or host reader threads for cuda."""
    if device in ("cuda", "auto"):
        from .cuda import cuda_kernel

        kernel = cuda_kernel(required=device == "cuda", threads=threads)
        if kernel is not None:
            return kernel
        device = "cpu"
    if device == "cpu":
        from .cpu import CpuKernel

        return CpuKernel(threads=threads)
    raise ConfigError(f"no diff kernel for device {device!r} (use 'cpu', 'cuda' or 'auto')")
