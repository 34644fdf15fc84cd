"""Dtype names, raw word types and float formats.

Dtypes are named as in torch (``"bfloat16"``, ``"float32"``, ``"int64"``). Every tensor is read
as raw machine words of its item size (``uint16`` for bf16/fp16, ``uint32`` for fp32, ...), so the
bitwise comparison never depends on float semantics.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cache

import numpy as np

#: safetensors header dtype code -> torch-style name
SAFETENSORS_DTYPES: dict[str, str] = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "I16": "int16",
    "U16": "uint16",
    "I32": "int32",
    "U32": "uint32",
    "I64": "int64",
    "U64": "uint64",
    "F16": "float16",
    "BF16": "bfloat16",
    "F32": "float32",
    "F64": "float64",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E8M0": "float8_e8m0fnu",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F4": "float4_e2m1fn",
    "F6_E2M3": "float6_e2m3fn",
    "F6_E3M2": "float6_e3m2fn",
}

#: element width in bits of every dtype; sub-byte types are packed, so a tensor of ``numel``
#: elements takes ``ceil(numel * bits / 8)`` bytes (:func:`nbytes_of`)
DTYPE_BITS: dict[str, int] = {
    "bool": 8,
    "uint8": 8,
    "int8": 8,
    "int16": 16,
    "uint16": 16,
    "int32": 32,
    "uint32": 32,
    "int64": 64,
    "uint64": 64,
    "float16": 16,
    "bfloat16": 16,
    "float32": 32,
    "float64": 64,
    "float8_e4m3fn": 8,
    "float8_e5m2": 8,
    "float8_e8m0fnu": 8,
    "float8_e4m3fnuz": 8,
    "float8_e5m2fnuz": 8,
    "float4_e2m1fn": 4,
    "float6_e2m3fn": 6,
    "float6_e3m2fn": 6,
}

#: low-precision float dtypes stored as codes rlsparse has no decoding for (they need scales or a
#: quantization scheme to mean weights): tensors in them are refused by name when paired
UNDECODED_DTYPES: frozenset[str] = frozenset(
    d for d in DTYPE_BITS if d.startswith(("float8_", "float4_", "float6_"))
)

#: integer and bool dtypes: buffers (position ids, step counters, masks) compared bitwise
INTEGER_DTYPES: frozenset[str] = frozenset(
    d for d in DTYPE_BITS if d == "bool" or d.startswith(("int", "uint"))
)

#: bytes per element of the whole-byte dtypes (sub-byte float4/float6 have none: see DTYPE_BITS)
ITEMSIZE: dict[str, int] = {d: b // 8 for d, b in DTYPE_BITS.items() if b % 8 == 0}

WORD_DTYPES: dict[int, np.dtype] = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.uint16),
    4: np.dtype(np.uint32),
    8: np.dtype(np.uint64),
}

#: dtypes accepted by ``--compare-dtype``
COMPARE_DTYPES = ("bfloat16", "float16", "float32")


@dataclass(frozen=True)
class FloatFormat:
    """An IEEE-style binary float format.

    Attributes:
        name: torch-style dtype name.
        bits: total width in bits.
        exp_bits: exponent field width.
        mant_bits: explicit mantissa (fraction) bits; the ULP of x in [2^e, 2^(e+1)) is 2^(e-mant_bits).
    """

    name: str
    bits: int
    exp_bits: int
    mant_bits: int

    @property
    def bias(self) -> int:
        return (1 << (self.exp_bits - 1)) - 1

    @property
    def emin(self) -> int:
        """Unbiased exponent of the smallest normal number."""
        return 1 - self.bias

    @property
    def exp_max_field(self) -> int:
        return (1 << self.exp_bits) - 1

    @property
    def word(self) -> np.dtype:
        return WORD_DTYPES[self.bits // 8]


FLOAT_FORMATS: dict[str, FloatFormat] = {
    "bfloat16": FloatFormat("bfloat16", 16, 8, 7),
    "float16": FloatFormat("float16", 16, 5, 10),
    "float32": FloatFormat("float32", 32, 8, 23),
}


#: (mantissa bits, smallest normal exponent) of every float dtype a tensor may be *stored* in:
#: the unit of the |Δ| / ULP(θ0) histogram
ULP_FORMATS: dict[str, tuple[int, int]] = {
    **{name: (f.mant_bits, f.emin) for name, f in FLOAT_FORMATS.items()},
    "float64": (52, -1022),
}


def nbytes_of(dtype: str, numel: int) -> int:
    """Bytes of ``numel`` packed elements of ``dtype``: ``ceil(numel * bits / 8)``."""
    return -(-numel * DTYPE_BITS[dtype] // 8)


def safetensors_code(dtype: str) -> str:
    """The safetensors header code of a torch-style dtype name (the name itself if none)."""
    for code, name in SAFETENSORS_DTYPES.items():
        if name == dtype:
            return code
    return dtype


def is_float(dtype: str) -> bool:
    """True for dtypes whose values get float statistics (bf16, fp16, fp32, fp64)."""
    return dtype in FLOAT_FORMATS or dtype == "float64"


def word_dtype(dtype: str) -> np.dtype:
    """Unsigned integer numpy dtype with the same item size as ``dtype``."""
    return WORD_DTYPES[ITEMSIZE[dtype]]


def cast_words(words: np.ndarray, stored: str, compare: str) -> np.ndarray:
    """Raw words of ``stored`` dtype -> raw words of ``compare`` dtype (torch's cast: round to
    nearest even, NaN kept NaN). Returns ``words`` itself when the dtypes are equal."""
    if stored == compare:
        return words
    import torch

    signed = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}
    with warnings.catch_warnings():  # mmap views are read-only; torch only reads them here
        warnings.simplefilter("ignore", UserWarning)
        src = torch.from_numpy(words.view(signed[words.itemsize])).view(torch_dtype(stored))
    dst = src.to(torch_dtype(compare))
    out_word = word_dtype(compare)
    return dst.view({2: torch.int16, 4: torch.int32}[out_word.itemsize]).numpy().view(out_word)


def torch_dtype(name: str):
    """The torch dtype object for a torch-style name."""
    import torch

    return getattr(torch, name)


@cache
def decode_tables(compare: str, stored: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lookup tables over all 65536 words of a 16-bit compare format.

    Args:
        compare: the 16-bit format the words are in (``bfloat16`` or ``float16``).
        stored: the format whose ULP is the unit of the |Δ| histogram (a diff passes
            ``ChunkSpec.ulp_dtype``).

    Returns:
        ``values`` float32[65536] (the decoded value of each word), ``exp_field`` uint8[65536]
        (the compare-format exponent field, i.e. the binade of |value|) and ``ulp_log2`` int32[65536]
        (log2 of the ULP of |value| in the stored format).
    """
    fmt = FLOAT_FORMATS[compare]
    words = np.arange(1 << 16, dtype=np.uint16)
    if compare == "bfloat16":
        values = (words.astype(np.uint32) << 16).view(np.float32)
    else:
        values = words.view(np.float16).astype(np.float32)
    exp_field = ((words.astype(np.uint32) >> fmt.mant_bits) & fmt.exp_max_field).astype(np.uint8)
    return values, exp_field, ulp_log2_of(values, stored)


@cache
def ulp_by_exponent_field(compare: str, stored: str) -> bool:
    """Whether ``compare`` is bfloat16 and :func:`decode_tables`' ULP table depends on a word's
    exponent field alone (``ulp_log2[x] == ulp_log2[x & 0x7F80]`` for every word; true for every
    stored format, since subnormals are raised to float32's smallest normal exponent): the CPU
    kernel then decodes changed bfloat16 words from their bits."""
    if compare != "bfloat16":
        return False
    ulp = decode_tables(compare, stored)[2]
    return bool(np.array_equal(ulp, ulp[np.arange(1 << 16) & 0x7F80]))


def ulp_log2_of(values: np.ndarray, stored: str) -> np.ndarray:
    """log2 of the ULP of each |value| (float32 values) in the ``stored`` format, as int32.

    The exponent is floor(log2|value|), with float32 subnormals and zero (and non-finite
    values) at float32's smallest normal exponent -126, then raised to the stored format's
    smallest normal exponent: ULP = 2^(max(e, emin_stored) - mant_stored). Every kernel uses
    this rule.
    """
    mant_bits, emin = ULP_FORMATS[stored]
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.abs(values.astype(np.float64))
        e = np.floor(np.log2(np.where(mag > 0, mag, 1.0)))
    e = np.where((mag > 0) & np.isfinite(mag), np.maximum(e, FLOAT_FORMATS["float32"].emin), emin)
    return (np.maximum(e, emin) - mant_bits).astype(np.int32)
