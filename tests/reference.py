"""Independent naive reference: whole tensors, torch arithmetic (the paper script's approach)."""

from __future__ import annotations

import math

import numpy as np
import torch


def naive_pair_counts(a: torch.Tensor, b: torch.Tensor, tolerances, eta: float = 1e-3) -> dict:
    """Counts for one tensor pair of the same float dtype, from whole tensors.

    Bitwise: integer views differ. Tolerance k: not bitwise-equal and not |Δ| <= tol (Δ in float32,
    compared in float64). Relative: not bitwise-equal and not |Δ| <= η·max(|a|,|b|).
    """
    word = {2: torch.int16, 4: torch.int32}[a.element_size()]
    changed = a.contiguous().view(word) != b.contiguous().view(word)
    fa, fb = a.float(), b.float()
    d = (fb - fa).abs().double()
    out = {"numel": a.numel(), "n_changed": int(changed.sum())}
    out["unchanged_tol"] = [int((~changed | (d <= tol)).sum()) for tol in tolerances]
    ref = torch.maximum(fa.abs(), fb.abs()).double()
    out["unchanged_rel"] = int((~changed | (d <= eta * ref)).sum())
    fin = torch.isfinite(d) & changed
    out["max_abs_delta"] = float(d[fin].max()) if fin.any() else 0.0
    out["sum_sq_delta"] = float((d[fin] ** 2).sum())
    base = fa.double()
    out["sum_sq_base"] = float((base[torch.isfinite(base)] ** 2).sum())
    return out


def paper_script_sparsity(
    base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], tol: float
) -> float:
    """The official script's global number: concatenate all deltas, ``isclose(Δ, 0, atol=tol)``.

    Δ is computed in float32 here (the paper's script uses the load dtype, bf16); tensors of
    different shapes are dropped, as there.
    """
    deltas = [
        (tuned[n].float() - base[n].float()).reshape(-1)
        for n in base
        if n in tuned and tuned[n].shape == base[n].shape
    ]
    delta = torch.cat(deltas)
    return float(torch.isclose(delta, torch.zeros_like(delta), atol=tol).sum()) / delta.numel()


def ulp_log2_ratio(a: np.ndarray, b: np.ndarray, mant_bits: int, emin: int) -> np.ndarray:
    """floor(log2(|b - a| / ULP(a))) for float arrays (ULP in a format with ``mant_bits``)."""
    d = np.abs(b.astype(np.float32) - a.astype(np.float32)).astype(np.float64)
    mag = np.abs(a.astype(np.float64))
    e = np.floor(np.log2(np.where(mag > 0, mag, 1.0)))
    e = np.where(mag > 0, np.maximum(e, emin), emin)
    return np.floor(np.log2(d)) - (e - mant_bits)


def isclose(x: float, y: float, rel: float = 1e-9) -> bool:
    return math.isclose(x, y, rel_tol=rel, abs_tol=1e-300)
