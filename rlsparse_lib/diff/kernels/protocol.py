"""The contract every per-chunk diff kernel meets: :class:`ChunkSpec` (what to compute for a chunk)
and the :class:`DiffKernel` protocol. Every implementation (CPU: :mod:`.cpu`; Triton:
:mod:`.cuda`) must give identical counts and histograms; float sums may differ in the last bits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from rlsparse_lib.diff.stats import DiffStats
from rlsparse_lib.io.dtypes import FLOAT_FORMATS
from rlsparse_lib.rules import MaskRule


@dataclass(frozen=True)
class ChunkSpec:
    """What a kernel computes for a chunk.

    Attributes:
        compare: dtype the words are in (``bfloat16``, ``float16`` or ``float32``).
        stored: base tensor's stored dtype (see :attr:`ulp_dtype`).
        tolerances: float64[n_tol], the absolute tolerance grid.
        eta: relative probe threshold η.
        mask_rule: rule for the optional packed mask.
    """

    compare: str
    stored: str
    tolerances: np.ndarray
    eta: float
    mask_rule: MaskRule = field(default_factory=MaskRule)

    @property
    def ulp_dtype(self) -> str:
        """The format whose ULP of θ0 is the unit of the |Δ| histogram: a 16-bit compare dtype
        (the cast values live on its grid, so |Δ| < ½ULP is what storing in it absorbs: a bf16
        pair compared as float16 is measured in fp16 ULPs), else the stored dtype (a float32
        compare widens and keeps the stored grid)."""
        return self.compare if FLOAT_FORMATS[self.compare].bits == 16 else self.stored


class DiffKernel(Protocol):
    """The per-chunk diff computation; implementations are interchangeable."""

    name: str
    #: True for kernels on a torch device, whose units run through the GPU executor
    streams_to_device: bool

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
