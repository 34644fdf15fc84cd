"""Type stub of the compiled mask kernels (``_bitcore.pyx``; see ``bitcore.h``)."""

import numpy as np

N_STRATA: int
MAX_MASKS: int
ULP_LOG2_MIN: int
ULP_BINS: int
BINADE_BINS: int

def max_threads() -> int: ...
def popcount(a: np.ndarray, threads: int = 0) -> int: ...
def and_popcount(a: np.ndarray, b: np.ndarray, threads: int = 0) -> int: ...
def pair_popcounts(a: np.ndarray, b: np.ndarray, threads: int = 0) -> tuple[int, int, int]: ...
def strata_histogram(
    words: np.ndarray,
    shift: int,
    fmask: int,
    masks: np.ndarray,
    hist: np.ndarray,
    threads: int = 0,
) -> None: ...
def select_flat(u: np.ndarray, rem: np.ndarray, out: np.ndarray) -> None: ...
def select_strata(
    words: np.ndarray,
    shift: int,
    fmask: int,
    u: np.ndarray,
    rem_k: np.ndarray,
    rem_n: np.ndarray,
    out: np.ndarray,
) -> None: ...
def absorb_counts(
    a32: np.ndarray,
    b32: np.ndarray,
    a16: np.ndarray,
    b16: np.ndarray,
    efield: np.ndarray,
    ulplog2: np.ndarray,
    binades: np.ndarray,
    hist: np.ndarray,
    threads: int = 0,
) -> None: ...
