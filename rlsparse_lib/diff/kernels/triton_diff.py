"""Triton diff kernel: the per-chunk statistics of :mod:`.cpu` in one pass over the two inputs.

The kernel reads the raw words of both sides once and produces, per chunk, everything the CPU
kernel does: the bit-packed mask, the bitwise changed count, counts at the tolerance grid, the
relative probe, ±0 and non-finite counts, the ULP and binade histograms and the float64 norms.
Integer outputs are bit-for-bit those of :class:`~rlsparse_lib.diff.kernels.cpu.CpuKernel`; float sums
agree to rounding (float64 accumulation in a different order).

Layout: a persistent grid of ``P`` programs walks tiles of ``rows × 8`` elements (one mask byte per
tile row). Counters and float sums live in registers for the whole launch; each program writes one
row of a ``[P, ...]`` partial buffer that :func:`launch_diff` reduces on the device. Histograms
are built per tile with ``tl.histogram`` over a 32-bin window when the tile's keys span fewer
bins (the usual case for weights: a few binades, a few ULP scales), else over all bins, and added
to the program's row with relaxed integer atomics (exact and order-independent).

Exactness notes (the CPU kernel compares in float64):

* ``|Δ| <= t`` for float32 ``|Δ|`` and float64 ``t`` equals ``|Δ| <= t32`` with ``t32`` the
  largest float32 not above ``t``: tolerances are rounded down on the host, compared in float32.
* the relative probe ``|Δ| <= η·max(|θ0|, |θ1|)`` and the ``rel`` mask rule run in float64.
* ``floor(log2 |Δ|)`` comes from the float64 exponent of ``|Δ|`` (float32 subnormals are float64
  normals, so this is exact); the ULP exponent of θ0 from its float32 exponent field.
* only integer bit tests decide NaN/Inf, so no compiler float mode can change a count.

Runs natively on CUDA tensors and, with ``TRITON_INTERPRET=1`` set before triton is imported, on
CPU tensors through Triton's interpreter (how CI tests it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import triton
import triton.language as tl

from rlsparse_lib.diff.kernels.protocol import ChunkSpec
from rlsparse_lib.diff.stats import BINADE_BINS, ULP_BINS, ULP_LOG2_MIN, DiffStats
from rlsparse_lib.io.dtypes import FLOAT_FORMATS, ULP_FORMATS

# per-program integer counters (first NI columns of a partial row); the other counts follow
# from the histograms (changed = Σ binade_changed, finite changed = Σ tolerance-index bins,
# zero Δ = finite changed - Σ ulp, Inf in θ0 = binade_total[max field] - NaN in θ0)
I_REL, I_NAN_A, I_NAN_B, I_INF_B = range(4)
NI = 4
# histogram columns after the counters: binade total, binade changed, ULP, tolerance index
H_TOTAL = NI
H_CHANGED = H_TOTAL + BINADE_BINS
H_ULP = H_CHANGED + BINADE_BINS
H_TOL = H_ULP + ULP_BINS
# float64 partials: max |Δ|, Σ|Δ|, ΣΔ², Σθ0²
F_MAX, F_ABS, F_SQD, F_SQB = range(4)
NF = 4
# the same offsets as compile-time constants for the kernel
_ULP_BINS = tl.constexpr(ULP_BINS)
_ULP_BINS2 = tl.constexpr(1 << (ULP_BINS - 1).bit_length())
_H_TOTAL = tl.constexpr(H_TOTAL)
_H_CHANGED = tl.constexpr(H_CHANGED)
_H_ULP = tl.constexpr(H_ULP)
_H_TOL = tl.constexpr(H_TOL)
_FMT_CODE = {"bfloat16": 0, "float16": 1, "float32": 2}
_WORD_TORCH = {2: torch.int16, 4: torch.int32}


@dataclass(frozen=True)
class Tuning:
    """Launch shape of the diff kernel.

    Attributes:
        rows: tile rows of 8 elements (power of 2); a tile holds ``rows * 8`` elements.
        num_warps: warps per program.
        ctas_per_sm: persistent programs per multiprocessor on CUDA.
        window: histogram window in bins (power of 2; 0: always histogram over all bins).
        stages: software-pipelining depth of the tile loop (``tl.range(num_stages=...)``).
        programs: fixed program count (None: ``ctas_per_sm`` × multiprocessors on CUDA, 4 on CPU).
    """

    rows: int = 128
    num_warps: int = 4
    ctas_per_sm: int = 4
    window: int = 32
    stages: int = 1
    programs: int | None = None


@triton.jit
def _add_hist(dst_ptr, key, NB2: tl.constexpr):
    """``dst[k] += #{key == k}`` over NB2 bins for keys >= 0 (flat int32 keys; -1 = skip)."""
    h = tl.histogram(tl.where(key >= 0, key, 0), NB2, mask=key >= 0)
    tl.atomic_add(dst_ptr + tl.arange(0, NB2), h, mask=h > 0, sem="relaxed")


@triton.jit
def _window_add(dst_ptr, flat, NB: tl.constexpr, NB2: tl.constexpr, WIN: tl.constexpr):
    """``dst[k] += #{flat == k}`` for keys ``0 <= k < NB`` (negative keys are skipped).

    With WIN > 0, histograms the keys over a WIN-bin window starting at the smallest key when
    they span fewer than WIN bins, else (and with WIN == 0) over NB2 >= NB bins; adds the
    non-zero bins with relaxed int32 atomics.
    """
    if WIN > 0:
        keep = flat >= 0
        hi = tl.max(flat, axis=0)
        lo = tl.min(tl.where(keep, flat, NB), axis=0)
        if hi - lo < WIN:
            _add_hist(dst_ptr + lo, tl.where(keep, flat - lo, -1), WIN)
        elif hi >= 0:
            _add_hist(dst_ptr, flat, NB2)
    else:
        _add_hist(dst_ptr, flat, NB2)


@triton.jit
def _binade_add(row_ptr, field, valid, changed, N: tl.constexpr, WIN: tl.constexpr):
    """Binade histograms of θ0, all elements and changed ones: one histogram of the key
    ``field + B·changed`` (B = WIN over a window from the tile's smallest field, else 256)."""
    chg = changed.to(tl.int32)
    if WIN > 0:
        f_lo = tl.min(tl.where(valid, field, 1 << 16))
        if tl.max(tl.where(valid, field, -1)) - f_lo < WIN:
            _binade_hist(row_ptr + f_lo, field - f_lo + WIN * chg, valid, N, WIN)
        else:
            _binade_hist(row_ptr, field + 256 * chg, valid, N, 256)
    else:
        _binade_hist(row_ptr, field + 256 * chg, valid, N, 256)


@triton.jit
def _binade_hist(dst_ptr, key, valid, N: tl.constexpr, B: tl.constexpr):
    """Histogram ``key`` (bin k < B: binade k, unchanged; B + k: binade k, changed) into the
    total and changed binade columns at ``dst_ptr``."""
    flat = tl.reshape(tl.where(valid, key, -1), [N])
    h = tl.histogram(tl.where(flat >= 0, flat, 0), 2 * B, mask=flat >= 0)
    i = tl.arange(0, 2 * B)
    dst = dst_ptr + (i % B)
    tl.atomic_add(dst + _H_TOTAL, h, mask=h > 0, sem="relaxed")
    tl.atomic_add(dst + _H_CHANGED, h, mask=(h > 0) & (i >= B), sem="relaxed")


@triton.jit
def _diff_kernel(
    a_ptr,
    b_ptr,
    n,
    thr_ptr,
    p64_ptr,
    mask_ptr,
    part_ptr,
    flt_ptr,
    FMT: tl.constexpr,
    ULP_C: tl.constexpr,
    ULP_OFF: tl.constexpr,
    NT: tl.constexpr,
    TB: tl.constexpr,
    RULE: tl.constexpr,
    WANT_MASK: tl.constexpr,
    ROWS: tl.constexpr,
    WIN: tl.constexpr,
    STAGES: tl.constexpr,
    RW: tl.constexpr,
):
    """One persistent program: walks tiles ``pid, pid + P, ...`` of ``ROWS × 8`` elements.

    a_ptr, b_ptr: raw words, int16 (bf16/fp16) or int32 (fp32), ``n`` each.
    thr_ptr: float32[NT + 1], the tolerances rounded down to float32, then the ``abs`` mask tol.
    p64_ptr: float64[2], η and the ``rel`` mask tol.
    mask_ptr: uint8[ceil(n / 8)] receiving the packed mask (when WANT_MASK).
    part_ptr: int32[P, RW], zeroed: NI counters, then the histogram columns (H_* offsets).
    flt_ptr: float64[P, NF] float partials.
    FMT: 0 bf16, 1 fp16, 2 fp32.
    ULP_C, ULP_OFF: ULP bin = e64(|Δ|) - max(field32(θ0), ULP_C) + ULP_OFF, clipped to the bins.
    NT: tolerances; TB: power of 2 > NT (tolerance-index bins). RULE: 0 bitwise, 1 abs, 2 rel.
    ROWS, WIN, STAGES: see :class:`Tuning`. RW: partial row width.
    """
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    ntiles = tl.cdiv(n, ROWS * 8)
    rows = tl.arange(0, ROWS)
    cols = tl.arange(0, 8)
    inner = rows[:, None] * 8 + cols[None, :]
    row_ptr = part_ptr + pid * RW
    eta = tl.load(p64_ptr)
    rel_tol = tl.load(p64_ptr + 1)
    abs_tol = tl.load(thr_ptr + NT)

    c_rel = tl.zeros([ROWS], tl.int32)
    c_nan_a = tl.zeros([ROWS], tl.int32)
    c_nan_b = tl.zeros([ROWS], tl.int32)
    c_inf_b = tl.zeros([ROWS], tl.int32)
    s_abs = tl.zeros([ROWS], tl.float64)
    s_sqd = tl.zeros([ROWS], tl.float64)
    s_sqb = tl.zeros([ROWS], tl.float64)
    d_max = tl.zeros([ROWS], tl.float32)
    t_hist = tl.zeros([TB], tl.int32)

    for t in tl.range(pid, ntiles, nprog, num_stages=STAGES):
        start = tl.cast(t, tl.int64) * (ROWS * 8)
        offs = start + inner
        valid = offs < n
        wa = tl.load(a_ptr + offs, mask=valid, other=0)
        wb = tl.load(b_ptr + offs, mask=valid, other=0)
        # decode: float32 values, exponent field in the compare format (binade), float32
        # exponent field of θ0 (ULP unit), |word| and the Inf word for NaN/Inf tests
        if FMT == 2:
            ua = wa
            ub = wb
            x = wa.to(tl.float32, bitcast=True)
            y = wb.to(tl.float32, bitcast=True)
            field = (ua >> 23) & 0xFF
            field32 = field
            mag_a = ua & 0x7FFFFFFF
            mag_b = ub & 0x7FFFFFFF
            inf_word = 0x7F800000
        else:
            ua = wa.to(tl.int32) & 0xFFFF
            ub = wb.to(tl.int32) & 0xFFFF
            mag_a = ua & 0x7FFF
            mag_b = ub & 0x7FFF
            if FMT == 0:
                x = (ua << 16).to(tl.float32, bitcast=True)
                y = (ub << 16).to(tl.float32, bitcast=True)
                field = (ua >> 7) & 0xFF
                field32 = field
                inf_word = 0x7F80
            else:
                x = wa.to(tl.float16, bitcast=True).to(tl.float32)
                y = wb.to(tl.float16, bitcast=True).to(tl.float32)
                field = (ua >> 10) & 0x1F
                field32 = (x.to(tl.int32, bitcast=True) >> 23) & 0xFF
                inf_word = 0x7C00

        # masked-off lanes load 0 on both sides: unchanged, finite, contribute nothing
        changed = ua != ub
        d = tl.abs(y - x)
        d_bits = d.to(tl.int32, bitcast=True)
        finite = changed & (d_bits < 0x7F800000)
        nonzero = finite & (d_bits != 0)
        ref64 = tl.maximum(tl.abs(x), tl.abs(y)).to(tl.float64)
        d64 = d.to(tl.float64)

        c_rel += tl.sum((finite & (d64 <= eta * ref64)).to(tl.int32), axis=1)
        c_nan_a += tl.sum((mag_a > inf_word).to(tl.int32), axis=1)
        c_nan_b += tl.sum((mag_b > inf_word).to(tl.int32), axis=1)
        c_inf_b += tl.sum((mag_b == inf_word).to(tl.int32), axis=1)

        dz = tl.where(nonzero, d64, 0.0)
        s_abs += tl.sum(dz, axis=1)
        s_sqd += tl.sum(dz * dz, axis=1)
        xf = tl.where(mag_a < inf_word, x, 0.0).to(tl.float64)
        s_sqb += tl.sum(xf * xf, axis=1)
        d_max = tl.maximum(d_max, tl.max(tl.where(nonzero, d, 0.0), axis=1))

        if WANT_MASK:
            if RULE == 0:
                bit = changed
            elif RULE == 1:
                bit = changed & ~(finite & (d <= abs_tol))
            else:
                bit = changed & ~(finite & (d64 <= rel_tol * ref64))
            byte = tl.sum(bit.to(tl.int32) << cols[None, :], axis=1)
            tl.store(mask_ptr + start // 8 + rows, byte.to(tl.uint8), mask=start + rows * 8 < n)

        # tolerance index j = #{tolerances below |Δ|}; n_le_tol[k] = #{j <= k}
        j = tl.zeros([ROWS, 8], tl.int32)
        for s in tl.static_range(NT):
            j += (d > tl.load(thr_ptr + s)).to(tl.int32)
        t_key = tl.reshape(tl.where(finite, j, -1), [ROWS * 8])
        t_hist += tl.histogram(tl.where(t_key >= 0, t_key, 0), TB, mask=t_key >= 0)

        # binades of θ0 (all / changed)
        _binade_add(row_ptr, field, valid, changed, ROWS * 8, WIN)

        # ULP bin of |Δ| / ULP(θ0) for changed elements with finite non-zero Δ
        e64 = ((d64.to(tl.int64, bitcast=True) >> 52) & 0x7FF).to(tl.int32)
        k = e64 - tl.maximum(field32, ULP_C) + ULP_OFF
        k = tl.minimum(tl.maximum(k, 0), _ULP_BINS - 1)
        u_key = tl.reshape(tl.where(nonzero, k, -1), [ROWS * 8])
        _window_add(row_ptr + _H_ULP, u_key, _ULP_BINS, _ULP_BINS2, WIN)

    # counters in I_* column order
    tl.store(row_ptr + 0, tl.sum(c_rel, axis=0))
    tl.store(row_ptr + 1, tl.sum(c_nan_a, axis=0))
    tl.store(row_ptr + 2, tl.sum(c_nan_b, axis=0))
    tl.store(row_ptr + 3, tl.sum(c_inf_b, axis=0))
    tl.store(row_ptr + _H_TOL + tl.arange(0, TB), t_hist)
    f_row = flt_ptr + pid * 4
    tl.store(f_row + 0, tl.max(d_max, axis=0).to(tl.float64))
    tl.store(f_row + 1, tl.sum(s_abs, axis=0))
    tl.store(f_row + 2, tl.sum(s_sqd, axis=0))
    tl.store(f_row + 3, tl.sum(s_sqb, axis=0))


@dataclass
class DeviceStats:
    """Reduced results of one launch, still on the kernel's device (the launch is asynchronous).

    Attributes:
        numel: compared elements.
        ntol: tolerances in the grid.
        compare: the compare dtype.
        ints: int64[H_TOL + TB], counters (I_*) then histograms (H_* offsets).
        flts: float64[NF], max |Δ| then the sums (F_* order).
    """

    numel: int
    ntol: int
    compare: str
    ints: torch.Tensor
    flts: torch.Tensor

    def to_stats(self) -> DiffStats:
        """Copy to the host (synchronizes) and build the :class:`DiffStats`."""
        ints, flts = self.ints.cpu().numpy(), self.flts.cpu().numpy()
        return stats_from_arrays(ints, flts, self.numel, self.ntol, self.compare)


def stats_from_arrays(
    ints: np.ndarray, flts: np.ndarray, numel: int, ntol: int, compare: str
) -> DiffStats:
    """:class:`DiffStats` of a chunk from the reduced kernel outputs (see :class:`DeviceStats`)."""
    ints = np.asarray(ints, np.int64)
    total = ints[H_TOTAL:H_CHANGED].copy()
    changed = ints[H_CHANGED:H_ULP].copy()
    ulp = ints[H_ULP:H_TOL].copy()
    tol_index = ints[H_TOL:]  # finite changed elements by number of tolerances below |Δ|
    n_changed = int(changed.sum())
    n_finite = int(tol_index.sum())
    nan_a = int(ints[I_NAN_A])
    return DiffStats(
        numel=numel,
        n_changed=n_changed,
        n_le_tol=np.cumsum(tol_index)[:ntol],
        n_rel_unchanged=int(ints[I_REL]),
        n_zero_delta=n_finite - int(ulp.sum()),
        n_nonfinite_delta=n_changed - n_finite,
        n_nan_base=nan_a,
        n_inf_base=int(total[FLOAT_FORMATS[compare].exp_max_field]) - nan_a,
        n_nan_tuned=int(ints[I_NAN_B]),
        n_inf_tuned=int(ints[I_INF_B]),
        max_abs_delta=float(flts[F_MAX]),
        sum_abs_delta=float(flts[F_ABS]),
        sum_sq_delta=float(flts[F_SQD]),
        sum_sq_base=float(flts[F_SQB]),
        ulp_hist=ulp,
        binade_total=total,
        binade_changed=changed,
    )


def floor_f32(values: np.ndarray) -> np.ndarray:
    """Largest float32 not above each float64 value (NaN stays NaN).

    For float32 ``d`` and float64 ``t``: ``d <= t`` exactly when ``d <= floor_f32(t)``.
    """
    t = np.asarray(values, np.float64)
    with np.errstate(over="ignore"):
        f = t.astype(np.float32)
    above = f.astype(np.float64) > t
    f[above] = np.nextafter(f[above], np.float32(-np.inf))
    return f


@dataclass(frozen=True)
class _Params:
    """Per-spec launch constants: compile-time switches and the small parameter tensors."""

    constexprs: dict
    thr: torch.Tensor  # float32[NT + 1]
    p64: torch.Tensor  # float64[2]


_PARAMS: dict[tuple, _Params] = {}


def _spec_constexprs(spec: ChunkSpec) -> dict:
    """The kernel's compile-time switches for a spec (formats, grid size, mask rule)."""
    st_mant, st_emin = ULP_FORMATS[spec.ulp_dtype]
    nt = len(spec.tolerances)
    return {
        "FMT": _FMT_CODE[spec.compare],
        # ULP(θ0) = 2^(max(e, emin_stored) - mant_stored), e the unbiased float32 exponent with
        # float32 subnormals and zero at -126 <= emin_stored: max(field32, ULP_C) - 127 - mant
        "ULP_C": max(1, st_emin + 127),
        "ULP_OFF": 127 + st_mant - ULP_LOG2_MIN - 1023,
        "NT": nt,
        "TB": 1 << max(1, nt.bit_length()),
        "RULE": spec.mask_rule.code,
    }


def _params(spec: ChunkSpec, device: torch.device) -> _Params:
    tols = np.asarray(spec.tolerances, np.float64)
    rule = spec.mask_rule
    key = (
        spec.compare,
        spec.stored,
        tols.tobytes(),
        float(spec.eta),
        rule.kind,
        rule.tol,
        str(device),
    )
    hit = _PARAMS.get(key)
    if hit is not None:
        return hit
    constexprs = _spec_constexprs(spec)
    thr = np.append(floor_f32(tols), floor_f32(np.array([rule.tol]))).astype(np.float32)
    p64 = np.array([spec.eta, rule.tol], np.float64)
    out = _Params(
        constexprs,
        torch.from_numpy(thr).to(device),
        torch.from_numpy(p64).to(device),
    )
    if len(_PARAMS) > 64:
        _PARAMS.clear()
    _PARAMS[key] = out
    return out


_SM_COUNT: dict[int, int] = {}


def program_count(device: torch.device, tuning: Tuning) -> int:
    """Persistent programs per launch on ``device`` (fixed per device: deterministic sums)."""
    if tuning.programs is not None:
        return tuning.programs
    if device.type != "cuda":
        return 4
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNT[index] * tuning.ctas_per_sm


def launch_diff(
    a: torch.Tensor,
    b: torch.Tensor,
    spec: ChunkSpec,
    mask: torch.Tensor | None = None,
    tuning: Tuning | None = None,
) -> DeviceStats:
    """Enqueue the diff of one chunk on the current stream of ``a``'s device.

    Args:
        a, b: raw words of ``spec.compare`` (int16 for bf16/fp16, int32 for fp32; uint views are
            accepted), contiguous, same length n < 2**31, on one device.
        spec: dtypes, tolerance grid, η and mask rule.
        mask: uint8[ceil(n / 8)] on the same device receiving the packed mask, or None.
        tuning: launch shape (default :class:`Tuning`).

    Returns:
        The reduced results, still on the device.
    """
    tuning = tuning or Tuning()
    n = a.numel()
    if b.numel() != n:
        raise ValueError(f"chunk sizes differ: {n} vs {b.numel()}")
    if n >= 2**31:
        raise ValueError("chunks must hold fewer than 2**31 elements")
    word = _WORD_TORCH[FLOAT_FORMATS[spec.compare].bits // 8]
    if a.element_size() != word.itemsize or b.element_size() != word.itemsize:
        raise ValueError(f"{spec.compare} chunks must be {word.itemsize}-byte words")
    a, b = a.view(word), b.view(word)
    if not (a.is_contiguous() and b.is_contiguous()):
        raise ValueError("chunks must be contiguous")
    if mask is not None and (mask.dtype != torch.uint8 or mask.numel() != (n + 7) // 8):
        raise ValueError(f"mask must be uint8[{(n + 7) // 8}]")
    dev = a.device
    params = _params(spec, dev)
    tb = params.constexprs["TB"]
    width = H_TOL + tb
    tiles = -(-n // (tuning.rows * 8))
    progs = max(1, min(tiles, program_count(dev, tuning)))
    part = torch.zeros((progs, width), dtype=torch.int32, device=dev)
    flt = torch.zeros((progs, NF), dtype=torch.float64, device=dev)
    if n:
        _diff_kernel[(progs,)](
            a,
            b,
            n,
            params.thr,
            params.p64,
            mask if mask is not None else part,
            part,
            flt,
            **params.constexprs,
            WANT_MASK=mask is not None,
            ROWS=tuning.rows,
            WIN=tuning.window,
            STAGES=tuning.stages,
            RW=width,
            num_warps=tuning.num_warps,
        )
    flts = torch.cat([flt[:, F_MAX].amax().reshape(1), flt[:, F_ABS:].sum(dim=0)])
    ints = part.sum(dim=0, dtype=torch.int64)
    return DeviceStats(n, params.constexprs["NT"], spec.compare, ints, flts)


def compile_for(
    spec: ChunkSpec, want_mask: bool, tuning: Tuning | None = None, capability: int = 90
):
    """Compile the kernel ahead of time for a CUDA compute capability; needs no GPU.

    For checks without a device (it must compile for Hopper, loads must be 16-byte wide) and for
    reading its PTX/SASS. Returns triton's compiled kernel (``.asm["ptx"]``, ``.asm["cubin"]``).
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    tuning = tuning or Tuning()
    word = "*i16" if FLOAT_FORMATS[spec.compare].bits == 16 else "*i32"
    constexprs = _spec_constexprs(spec)
    constexprs.update(
        WANT_MASK=want_mask,
        ROWS=tuning.rows,
        WIN=tuning.window,
        STAGES=tuning.stages,
        RW=H_TOL + constexprs["TB"],
    )
    signature = {
        "a_ptr": word,
        "b_ptr": word,
        "n": "i32",
        "thr_ptr": "*fp32",
        "p64_ptr": "*fp64",
        "mask_ptr": "*u8",
        "part_ptr": "*i32",
        "flt_ptr": "*fp64",
    }
    signature.update(dict.fromkeys(constexprs, "constexpr"))
    # what the launcher specializes for 16-byte aligned tensors and sizes divisible by 16
    aligned = [["tt.divisibility", 16]]
    attrs = {(i,): aligned for i in range(8)}
    src = ASTSource(_diff_kernel, signature, constexprs, attrs)
    target = GPUTarget("cuda", capability, 32)
    return triton.compile(src, target=target, options={"num_warps": tuning.num_warps})


def count_changed(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Bitwise changed count of two raw-word tensors of any width, as an int64 device scalar."""
    if a.numel() != b.numel() or a.element_size() != b.element_size():
        raise ValueError("word arrays differ in length or width")
    signed = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.count_nonzero(a.view(signed) != b.view(signed))


# ---- dequantization (codes + scales -> bfloat16 words; the rule of diffcore.c) ---------------


@triton.jit
def _bf16_rne(p):
    """float32 values -> bfloat16 words (int32 holding 16 bits): round to nearest even; NaN ->
    0xFFFF (torch's CPU cast, and the CPU kernel's)."""
    bits = p.to(tl.int32, bitcast=True)
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) & 0xFFFF
    return tl.where(nan, 0xFFFF, rounded)


@triton.jit
def _dequant_fp8_kernel(
    codes_ptr, scales_ptr, srow_ptr, table_ptr, out_ptr, n, ncols, scols, col_block,
    BLOCK: tl.constexpr,
):  # fmt: skip
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    code = tl.load(codes_ptr + offs, mask=m, other=0).to(tl.int32) & 0xFF
    row = offs // ncols
    col = offs - row * ncols
    srow = tl.load(srow_ptr + row, mask=m, other=0)
    scale = tl.load(scales_ptr + srow * scols + col // col_block, mask=m, other=0.0)
    value = tl.load(table_ptr + code, mask=m, other=0.0)
    tl.store(out_ptr + offs, _bf16_rne(value * scale).to(tl.int16), mask=m)


@triton.jit
def _dequant_mxfp4_kernel(
    blocks_ptr, scales_ptr, e2m1_ptr, e8m0_ptr, out_ptr, n, BLOCK: tl.constexpr
):  # fmt: skip
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    byte = tl.load(blocks_ptr + offs // 2, mask=m, other=0).to(tl.int32) & 0xFF
    code = (byte >> ((offs & 1) * 4).to(tl.int32)) & 15
    s = tl.load(scales_ptr + offs // 32, mask=m, other=0).to(tl.int32) & 0xFF
    value = tl.load(e2m1_ptr + code, mask=m, other=0.0) * tl.load(e8m0_ptr + s, mask=m, other=0.0)
    tl.store(out_ptr + offs, _bf16_rne(value).to(tl.int16), mask=m)


_DEQUANT_BLOCK = 1024


def dequant_fp8(
    codes: torch.Tensor,
    ncols: int,
    scales: torch.Tensor,
    srow: torch.Tensor,
    scols: int,
    col_block: int,
    table: torch.Tensor,
) -> torch.Tensor:
    """FP8 codes (uint8/int8 ``[nrows * ncols]``), float32 scales ``[-1, scols]`` flat, int64
    ``srow[nrows]`` (each row's scale row) and the float32[256] code table, all on one device ->
    int16 bfloat16 words ``[nrows * ncols]`` (the rule of ``rls_dequant_fp8``)."""
    n = codes.numel()
    if n != srow.numel() * ncols or table.numel() != 256 or scols != -(-ncols // col_block):
        raise ValueError("dequant_fp8: codes, rows, scale columns or table do not match")
    out = torch.empty(n, dtype=torch.int16, device=codes.device)
    if n:
        grid = (triton.cdiv(n, _DEQUANT_BLOCK),)
        _dequant_fp8_kernel[grid](
            codes, scales, srow, table, out, n, ncols, scols, col_block, BLOCK=_DEQUANT_BLOCK
        )
    return out


def dequant_mxfp4(
    blocks: torch.Tensor, scales: torch.Tensor, e2m1: torch.Tensor, e8m0: torch.Tensor
) -> torch.Tensor:
    """MXFP4 blocks (``[16 * G]`` bytes) and E8M0 scales (``[G]`` bytes), with the float32
    decode tables, on one device -> int16 bfloat16 words ``[32 * G]``."""
    n = 32 * scales.numel()
    if blocks.numel() * 2 != n or e2m1.numel() != 16 or e8m0.numel() != 256:
        raise ValueError("dequant_mxfp4: blocks, scales or tables do not match")
    out = torch.empty(n, dtype=torch.int16, device=blocks.device)
    if n:
        grid = (triton.cdiv(n, _DEQUANT_BLOCK),)
        _dequant_mxfp4_kernel[grid](blocks, scales, e2m1, e8m0, out, n, BLOCK=_DEQUANT_BLOCK)
    return out
