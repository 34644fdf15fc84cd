"""Type stub of the compiled CPU diff kernel (``_diffcore.pyx``; see ``diffcore.h``)."""

import numpy as np

NI: int
NF: int
ULP_BINS: int
BINADE_BINS: int
ULP_LOG2_MIN: int
I_CHANGED: int
I_REL: int
I_ZERO: int
I_NONFIN: int
I_NAN_A: int
I_INF_A: int
I_NAN_B: int
I_INF_B: int
I_NAN_BASE: int
I_INF_BASE: int
F_MAX: int
F_ABS: int
F_SQD: int
F_SQB: int

def max_threads() -> int: ...
def diff16(
    a: np.ndarray,
    b: np.ndarray,
    values: np.ndarray,
    efield: np.ndarray,
    ulplog2: np.ndarray,
    bf16: int,
    tols: np.ndarray,
    tol_table: np.ndarray,
    eta: float,
    rule: int,
    rule_tol: float,
    mask: np.ndarray | None,
    nparts: int,
    per: int,
    threads: int,
    ints: np.ndarray,
    tcount: np.ndarray,
    ulp_hist: np.ndarray,
    bchg: np.ndarray,
    btot: np.ndarray,
    flt: np.ndarray,
) -> None: ...
def diff32(
    a: np.ndarray,
    b: np.ndarray,
    st_mant: int,
    st_emin: int,
    tols: np.ndarray,
    tol_table: np.ndarray,
    eta: float,
    rule: int,
    rule_tol: float,
    mask: np.ndarray | None,
    nparts: int,
    per: int,
    threads: int,
    ints: np.ndarray,
    tcount: np.ndarray,
    ulp_hist: np.ndarray,
    bchg: np.ndarray,
    btot: np.ndarray,
    flt: np.ndarray,
) -> None: ...
def dequant_fp8(
    codes: np.ndarray,
    ncols: int,
    scales: np.ndarray,
    srow: np.ndarray,
    scols: int,
    col_block: int,
    table: np.ndarray,
    out: np.ndarray,
    threads: int,
    use_lut: int = 0,
) -> None: ...
def dequant_mxfp4(
    blocks: np.ndarray,
    scales: np.ndarray,
    e2m1: np.ndarray,
    e8m0: np.ndarray,
    out: np.ndarray,
    threads: int,
) -> None: ...
def quant_counts(
    ca: np.ndarray,
    cb: np.ndarray,
    da: np.ndarray,
    db: np.ndarray,
    nibbles: int,
    counts: np.ndarray,
    threads: int,
) -> None: ...
def qdiff_fp8(
    ca: np.ndarray,
    cb: np.ndarray,
    ncols: int,
    sa: np.ndarray,
    sb: np.ndarray,
    srow: np.ndarray,
    scols: int,
    col_block: int,
    table: np.ndarray,
    qcounts: np.ndarray,
    values: np.ndarray,
    efield: np.ndarray,
    ulplog2: np.ndarray,
    tols: np.ndarray,
    tol_table: np.ndarray,
    eta: float,
    rule: int,
    rule_tol: float,
    mask: np.ndarray | None,
    nparts: int,
    per: int,
    threads: int,
    ints: np.ndarray,
    tcount: np.ndarray,
    ulp_hist: np.ndarray,
    bchg: np.ndarray,
    btot: np.ndarray,
    flt: np.ndarray,
) -> None: ...
def qdiff_mxfp4(
    ca: np.ndarray,
    cb: np.ndarray,
    ea: np.ndarray,
    eb: np.ndarray,
    e2m1: np.ndarray,
    e8m0: np.ndarray,
    qcounts: np.ndarray,
    values: np.ndarray,
    efield: np.ndarray,
    ulplog2: np.ndarray,
    tols: np.ndarray,
    tol_table: np.ndarray,
    eta: float,
    rule: int,
    rule_tol: float,
    mask: np.ndarray | None,
    nparts: int,
    per: int,
    threads: int,
    ints: np.ndarray,
    tcount: np.ndarray,
    ulp_hist: np.ndarray,
    bchg: np.ndarray,
    btot: np.ndarray,
    flt: np.ndarray,
) -> None: ...
