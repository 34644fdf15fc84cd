"""CPU diff kernel: one fused, multi-threaded C pass per chunk (``diffcore.c``, OpenMP).

Hot path: a branch-free loop over all elements compares the raw words, compacts the offsets of
changed elements, and (for 16-bit formats) histograms the base words. All float math — |Δ|, the
tolerance grid, the relative probe, the ULP histogram — runs on changed elements only. θ0's norm,
binades and NaN/Inf counts come from the 65536-bin word histogram, so they cost one increment per
element and are exact regardless of threading. The kernel is compiled when the package is
installed, so ``rlsparse diff`` starts without a JIT.

:meth:`CpuKernel.diff_codes` is the same pass over two quantized chunks laid out alike (FP8 or
MXFP4 codes and scales, no decoded buffer): an element whose code and scale are equal on both
sides costs a byte compare and an increment of a per-(scale, code) histogram, from which θ0's word
histogram is built; only the others are decoded.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

import numpy as np

from rlsparse_lib.diff.kernels.dequant import CodeSource
from rlsparse_lib.diff.kernels.protocol import ChunkSpec
from rlsparse_lib.diff.stats import BINADE_BINS, ULP_BINS, DiffStats
from rlsparse_lib.io.dtypes import (
    FLOAT_FORMATS,
    ULP_FORMATS,
    decode_tables,
    ulp_by_exponent_field,
)
from rlsparse_lib.io.quant import e2m1_table, e8m0_table, fp8_table

try:
    from rlsparse_lib.diff.kernels import _diffcore
except ImportError as exc:  # a source checkout that was never installed
    raise ImportError(
        "the compiled CPU diff kernel (rlsparse_lib/diff/kernels/_diffcore) is missing: install the "
        "package with `pip install -e .` (needs a C compiler)"
    ) from exc

_SUB = 4096  # elements per compaction block; partitions are multiples of it
_PART = 1 << 18  # elements per partition; partitions depend on n only (deterministic sums)
_MAX_PARTS = 1024


def partitions(n: int) -> tuple[int, int]:
    """(number of partitions, elements per partition) for a chunk of ``n`` elements."""
    nparts = max(1, min(_MAX_PARTS, -(-n // _PART)))
    per = -(-max(n, 1) // nparts)
    per = -(-per // _SUB) * _SUB
    return max(1, -(-n // per)), per


@cache
def tolerance_table(tolerances: tuple[float, ...]) -> np.ndarray:
    """int8[65536]: how many of the (ascending) tolerances lie below every float32 |Δ| whose top
    16 bits are the index; -1 where that range of |Δ| holds a tolerance (the kernel then counts
    exactly), and everywhere for grids of 127 or more."""
    words = np.arange(1 << 16, dtype=np.uint32) << 16
    tols = np.asarray(tolerances, np.float64)
    with np.errstate(invalid="ignore"):
        lo = words.view(np.float32).astype(np.float64)
        hi = (words | 0xFFFF).view(np.float32).astype(np.float64)
    j_lo = np.searchsorted(tols, lo, side="left")  # count of tolerances < |Δ|, i.e. |Δ| > tol
    j_hi = np.searchsorted(tols, hi, side="left")
    table = np.where((j_lo == j_hi) & (tols.size < 127), j_lo, -1).astype(np.int8)
    table.flags.writeable = False
    return table


class CpuKernel:
    """Compiled implementation of :class:`~rlsparse_lib.diff.kernels.DiffKernel`."""

    name = "cpu-c"
    streams_to_device = False

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads

    @property
    def num_threads(self) -> int:
        """Threads a chunk is split over."""
        return self.threads or _diffcore.max_threads()

    def diff_chunk(self, a: np.ndarray, b: np.ndarray, spec: ChunkSpec, mask_out=None) -> DiffStats:
        """Compare raw words ``a`` (base) and ``b`` (tuned); see the protocol."""
        n = a.size
        if b.size != n:
            raise ValueError(f"chunk sizes differ: {n} vs {b.size}")
        # the counts depend on how many tolerances |Δ| exceeds, not on their order
        tols = np.sort(np.asarray(spec.tolerances, np.float64))
        if n == 0:
            return DiffStats.empty(tols.size)
        fmt = FLOAT_FORMATS[spec.compare]
        run = _Run(n, tols, spec, mask_out, self.threads)
        if fmt.bits == 16:
            tables = decode_tables(spec.compare, spec.ulp_dtype)
            bf16 = ulp_by_exponent_field(spec.compare, spec.ulp_dtype)
            _diffcore.diff16(a, b, *tables, int(bf16), *run.args)
        else:
            st_mant, st_emin = ULP_FORMATS[spec.ulp_dtype]
            _diffcore.diff32(a, b, st_mant, st_emin, *run.args)
        return run.stats()

    def diff_codes(
        self,
        a: CodeSource,
        b: CodeSource,
        ca: np.ndarray,
        cb: np.ndarray,
        spec: ChunkSpec,
        mask_out=None,
        counts: np.ndarray | None = None,
    ) -> DiffStats:
        """Compare a chunk of two quantized tensors laid out alike straight from their codes
        ``ca``, ``cb`` (uint8, as :meth:`CodeSource.words` returned them; the sources hold the
        scales): the same result as decoding both to bfloat16 and :meth:`diff_chunk`, bit for
        bit (``spec.compare`` must be ``bfloat16``). Adds (codes that differ, elements changed
        through their scale only) to ``counts`` int64[2]."""
        if spec.compare != "bfloat16":
            raise ValueError(f"the fused quantized diff compares bfloat16, not {spec.compare}")
        if not ulp_by_exponent_field("bfloat16", spec.ulp_dtype):  # what the kernel assumes
            raise ValueError(f"the fused quantized diff cannot take {spec.ulp_dtype} ULPs")
        qt = a.qt
        n = ca.size * 2 if qt.scheme == "mxfp4" else ca.size
        tols = np.sort(np.asarray(spec.tolerances, np.float64))
        if n == 0:
            return DiffStats.empty(tols.size)
        run = _Run(n, tols, spec, mask_out, self.threads)
        qc = np.zeros(2, np.int64)
        tables = decode_tables("bfloat16", spec.ulp_dtype)
        if qt.scheme == "mxfp4":
            _diffcore.qdiff_mxfp4(
                ca,
                cb,
                a.scales,
                b.scales,
                e2m1_table(),
                e8m0_table(),
                qc,
                *tables,
                *run.args,
            )
        else:
            _, scols = qt.scale_grid()
            _diffcore.qdiff_fp8(
                ca,
                cb,
                qt.cols,
                a.scales,
                b.scales,
                a.srow,
                scols,
                a.col_block(),
                fp8_table(),
                qc,
                *tables,
                *run.args,
            )
        if counts is not None:
            counts += qc
        return run.stats()

    def count_changed(self, a: np.ndarray, b: np.ndarray) -> int:
        """Bitwise changed count of two raw-word arrays (any width)."""
        return int(np.count_nonzero(a != b))


class _Run:
    """One kernel call's spec arguments and zero-filled outputs, and the :class:`DiffStats` they
    make."""

    def __init__(
        self, n: int, tols: np.ndarray, spec: ChunkSpec, mask_out, threads: int | None
    ) -> None:
        self.n, self.tols = n, tols
        nparts, per = partitions(n)
        self.ints = np.zeros(_diffcore.NI, np.int64)
        self.tcount = np.zeros(tols.size + 1, np.int64)
        self.ulp_hist = np.zeros(ULP_BINS, np.int64)
        self.bchg = np.zeros(BINADE_BINS, np.int64)
        self.btot = np.zeros(BINADE_BINS, np.int64)
        self.flt = np.zeros((nparts, _diffcore.NF), np.float64)
        self.args: tuple[Any, ...] = (
            tols,
            tolerance_table(tuple(tols.tolist())),
            float(spec.eta),
            spec.mask_rule.code,
            float(spec.mask_rule.tol),
            mask_out,
            nparts,
            per,
            threads or 0,
            self.ints,
            self.tcount,
            self.ulp_hist,
            self.bchg,
            self.btot,
            self.flt,
        )

    def stats(self) -> DiffStats:
        k, ints, flt = _diffcore, self.ints, self.flt
        # tcount[j]: finite-Δ changed elements above exactly j tolerances -> |Δ| <= tol[t]
        # holds for those with j <= t
        n_le_tol = np.cumsum(self.tcount)[: self.tols.size]
        return DiffStats(
            numel=self.n,
            n_changed=int(ints[k.I_CHANGED]),
            n_le_tol=n_le_tol,
            n_rel_unchanged=int(ints[k.I_REL]),
            n_zero_delta=int(ints[k.I_ZERO]),
            n_nonfinite_delta=int(ints[k.I_NONFIN]),
            n_nan_base=int(ints[k.I_NAN_BASE]),
            n_inf_base=int(ints[k.I_INF_BASE]),
            n_nan_tuned=int(ints[k.I_NAN_BASE] - ints[k.I_NAN_A] + ints[k.I_NAN_B]),
            n_inf_tuned=int(ints[k.I_INF_BASE] - ints[k.I_INF_A] + ints[k.I_INF_B]),
            max_abs_delta=float(flt[:, k.F_MAX].max()),
            sum_abs_delta=math.fsum(flt[:, k.F_ABS]),
            sum_sq_delta=math.fsum(flt[:, k.F_SQD]),
            sum_sq_base=math.fsum(flt[:, k.F_SQB]),
            ulp_hist=self.ulp_hist,
            binade_total=self.btot,
            binade_changed=self.bchg,
        )
