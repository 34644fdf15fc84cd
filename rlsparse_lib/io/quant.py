"""Quantized weights read as one logical tensor: codes plus the scales that give them values.

These layouts are decoded (everything else stays refused by :mod:`rlsparse_lib.io.pairing`):

* ``fp8_block`` (DeepSeek-V3/R1, Hugging Face ``quant_method: fp8``): ``<w>`` ``F8_E4M3`` codes
  ``[..., R, C]`` and ``<w>_scale_inv`` ``[..., ceil(R/b0), ceil(C/b1)]`` (a float, or E8M0
  power-of-two scales ``F8_E8M0`` as DeepGEMM-style ``ue8m0`` checkpoints store them), or
  ``<w>_scales_inv`` (transformers' fine-grained FP8 stacks of experts, ``<w>`` without
  ``.weight``); the block
  ``[b0, b1]`` is ``quantization_config.weight_block_size``, or 128×128 when the checkpoint has no
  config and the scale's shape fits it. Value of element ``(r, c)``:
  ``bf16_rne(float32(code) * float32(scale_inv[r // b0, c // b1]))`` (edge blocks truncated).
* ``ct_fp8_tensor`` / ``ct_fp8_channel`` / ``ct_fp8_block`` (compressed-tensors
  ``float-quantized``, declared by a ``config_groups`` entry with 8-bit float weights):
  ``<w>`` ``F8_E4M3`` codes and ``<w>_scale`` of shape ``[1]`` (tensor), ``[..., R, 1]``
  (channel) or the block grid (block, ``block_structure``); same value rule.
* ``fp8_tensor`` / ``fp8_channel`` (vLLM / AutoFP8 ``quant_method: fp8`` without
  ``weight_block_size``: one ``<w>_scale`` per tensor; FBGEMM ``quant_method: fbgemm_fp8``, as
  Meta's Llama-3.1 FP8 checkpoints: one per output row, ``[..., R, 1]`` or ``[..., R]``): ``<w>``
  ``F8_E4M3`` codes; same value rule.
* ``mxfp4`` (gpt-oss): ``<p>_blocks`` uint8 ``[..., G, 16]`` (two E2M1 codes per byte, low
  nibble first) and ``<p>_scales`` uint8 E8M0 ``[..., G]``: the logical tensor ``<p>`` is
  ``[..., G * 32]`` with value ``bf16(e2m1(code) * 2^(scale - 127))`` (E8M0 255 is NaN). A
  stack of experts ``[E, R, G, 16]`` (gpt-oss's layout) holds each expert's rows of the linear
  map (``R`` outputs, ``G * 32`` inputs), while transformers' parameter, and so every bf16 copy
  of the model, is ``[E, G * 32, R]`` (its MXFP4 loader transposes): a stack is read in that
  layout (``transposed``), so a bf16 copy pairs element for element, also where inputs and
  outputs are equally many (gpt-oss's ``down_proj``, 2880 × 2880, where a shape check could not
  tell). A 2-D MXFP4 weight (``rlsparse quantize``) is read as stored.

The scales are consumed: they are no weights of their own, and every logical element counts once.
A missing scale, a scale whose shape does not fit its weight, or an undeclared/unknown block size
is a :class:`~rlsparse_lib.errors.CheckpointError` naming the tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np

from rlsparse_lib.errors import CheckpointError
from rlsparse_lib.io.checkpoint import Checkpoint
from rlsparse_lib.io.dtypes import is_float
from rlsparse_lib.io.tensor_info import TensorInfo

#: the block DeepSeek-V3 uses, assumed for ``*_scale_inv`` siblings when no config declares one
DEEPSEEK_BLOCK = (128, 128)
#: E2M1 values of the 16 four-bit codes (sign bit 3)
E2M1_VALUES = (
    0.0,
    0.5,
    1.0,
    1.5,
    2.0,
    3.0,
    4.0,
    6.0,
    -0.0,
    -0.5,
    -1.0,
    -1.5,
    -2.0,
    -3.0,
    -4.0,
    -6.0,
)
#: elements per MXFP4 scale group, and bytes of codes per group
MX_GROUP = 32
MX_GROUP_BYTES = 16
#: compressed-tensors activation / KV-cache scale names (compared as plain float tensors)
_ACTIVATION_SCALES = (".input_scale", ".output_scale", ".k_scale", ".v_scale")
#: the report's ``quant.scheme`` values
SCHEMES = (
    "fp8_block",
    "fp8_tensor",
    "fp8_channel",
    "mxfp4",
    "ct_fp8_tensor",
    "ct_fp8_channel",
    "ct_fp8_block",
)
#: quantization methods whose float ``*.input_scale`` & co. are activation scales
_ACTIVATION_METHODS = ("compressed-tensors", "fp8", "fbgemm_fp8")


@dataclass(frozen=True)
class QuantTensor:
    """One logical quantized weight of a checkpoint.

    Attributes:
        name: the logical tensor's name (the FP8 weight's name; the MXFP4 prefix without
            ``_blocks``).
        scheme: one of :data:`SCHEMES`.
        codes: the stored codes (FP8 ``[..., R, C]``, or MXFP4 blocks uint8 ``[..., G, 16]``).
        scales: the stored scales (float for FP8, uint8 E8M0 for MXFP4).
        shape: the stored rows' shape (``[..., R, G * 32]`` for MXFP4).
        block: ``(rows, cols)`` of elements sharing one scale, or None (one scale per tensor).
        transposed: read as every matrix transposed (the last two dims swapped: an MXFP4 stack
            of experts in transformers' layout); :attr:`info` has the shape read.
    """

    name: str
    scheme: str
    codes: TensorInfo
    scales: TensorInfo
    shape: tuple[int, ...]
    block: tuple[int, int] | None
    transposed: bool = False

    @property
    def cols(self) -> int:
        """Elements per stored row (the last dimension of :attr:`shape`)."""
        return self.shape[-1]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def dtype(self) -> str:
        """The code dtype (``float8_e4m3fn`` or ``float4_e2m1fn``)."""
        return "float4_e2m1fn" if self.scheme == "mxfp4" else self.codes.dtype

    @property
    def info(self) -> TensorInfo:
        """The logical tensor as read, as a :class:`TensorInfo` (codes' file and offset)."""
        shape = (
            (*self.shape[:-2], self.shape[-1], self.shape[-2]) if self.transposed else self.shape
        )
        return TensorInfo(self.name, self.dtype, shape, self.codes.file, self.codes.offset)

    @property
    def nbytes(self) -> int:
        """Bytes stored: codes plus scales."""
        return self.codes.nbytes + self.scales.nbytes

    def matrix_rows(self) -> int:
        """Rows of one matrix (``R``; the rows a scale grid covers)."""
        return self.shape[-2] if len(self.shape) >= 2 else 1

    def scale_grid(self) -> tuple[int, int]:
        """(scale rows per matrix, scale columns) of an FP8 scheme."""
        r, c = self.matrix_rows(), self.cols
        if self.block is None:
            return 1, 1
        return -(-r // self.block[0]), -(-c // self.block[1])

    def scale_rows(self, row0: int, row1: int) -> np.ndarray:
        """int64[row1 - row0]: the flat scale row (of the scales viewed as ``[-1, SC]``) of each
        logical row in ``[row0, row1)`` (FP8 schemes)."""
        rows = np.arange(row0, row1, dtype=np.int64)
        if self.block is None:
            return np.zeros_like(rows)
        r = self.matrix_rows()
        sr, _ = self.scale_grid()
        return rows // r * sr + rows % r // self.block[0]

    def slab_rows(self) -> int:
        """Rows of one scale slab: chunks are cut in whole slabs (MXFP4: one row)."""
        if self.block is None or self.scheme == "mxfp4":
            return 1
        return min(self.block[0], self.matrix_rows())


def quantization_config(ckpt: Checkpoint) -> dict | None:
    """The ``quantization_config`` of the checkpoint's ``config.json`` (or its ``text_config``)."""
    for cfg in (ckpt.config, ckpt.config.get("text_config")):
        if isinstance(cfg, dict) and cfg.get("quantization_config") is not None:
            qc = cfg["quantization_config"]
            return qc if isinstance(qc, dict) else {}
    return None


def quant_layout(ckpt: Checkpoint) -> dict[str, QuantTensor]:
    """The checkpoint's decodable quantized weights by logical name (see the module docstring).

    Raises:
        CheckpointError: a missing scale, a scale shape that does not fit its weight, an
            unknown block size, or a scale in a non-float dtype; the message names the tensor.
    """
    qc = quantization_config(ckpt)
    method = str(qc.get("quant_method", "")) if qc is not None else None
    out: dict[str, QuantTensor] = {}
    for name, info in ckpt.tensors.items():
        if info.dtype == "float8_e4m3fn":
            qt = _fp8(ckpt, name, info, qc, method)
            if qt is not None:
                out[name] = qt
        elif info.dtype == "uint8" and name.endswith("_blocks"):
            qt = _mxfp4(ckpt, name, info)
            out[qt.name] = qt
        elif (
            info.dtype == "uint8"
            and name.endswith("_scales")
            and name.removesuffix("_scales") + "_blocks" not in ckpt.tensors
        ):
            raise CheckpointError(
                f"{ckpt.source}: MXFP4 scales {name} without {name.removesuffix('_scales')}_blocks"
            )
    return out


def activation_scales(ckpt: Checkpoint) -> frozenset[str]:
    """Float activation / KV-cache scales of a compressed-tensors, ``fp8`` or ``fbgemm_fp8``
    checkpoint (``*.input_scale``, ``*.output_scale``, ``*.k_scale``, ``*.v_scale``): no weight
    codes' scales, so they are compared as the plain float tensors they are."""
    qc = quantization_config(ckpt)
    if qc is None or qc.get("quant_method") not in _ACTIVATION_METHODS:
        return frozenset()
    return frozenset(
        n for n, i in ckpt.tensors.items() if n.endswith(_ACTIVATION_SCALES) and is_float(i.dtype)
    )


def consumed(layout: dict[str, QuantTensor]) -> dict[str, str]:
    """Stored tensor name -> logical name, for every codes and scales tensor of ``layout``."""
    out: dict[str, str] = {}
    for qt in layout.values():
        out[qt.codes.name] = qt.name
        out[qt.scales.name] = qt.name
    return out


def _fp8(
    ckpt: Checkpoint, name: str, info: TensorInfo, qc: dict | None, method: str | None
) -> QuantTensor | None:
    """The FP8 logical tensor of codes ``name``, or None when no decodable scheme covers it."""
    where = f"{ckpt.source}: {name}"
    invs = [
        ckpt.tensors[n] for n in (name + "_scale_inv", name + "_scales_inv") if n in ckpt.tensors
    ]
    if len(invs) > 1:
        raise CheckpointError(f"{where}: two block scales, {name}_scale_inv and {name}_scales_inv")
    inv, ct = (invs[0] if invs else None), ckpt.tensors.get(name + "_scale")
    if inv is None and ct is None:
        if method in ("fp8", "fbgemm_fp8", "compressed-tensors"):
            raise CheckpointError(
                f"{where}: F8_E4M3 weight without its scale ({name}_scale_inv, _scales_inv or "
                f"_scale) although quantization_config declares quant_method={method}"
            )
        return None
    if len(info.shape) < 2:
        raise CheckpointError(f"{where}: FP8 weight of shape {list(info.shape)} needs >= 2 dims")
    r, c = info.shape[-2:]
    lead = info.shape[:-2]
    if inv is not None:
        block = _fp8_block(where, qc, method)
        grid = (-(-r // block[0]), -(-c // block[1]))
        _check_scale(where, inv, (*lead, *grid), f"block {list(block)}", e8m0=True)
        return QuantTensor(name, "fp8_block", info, inv, info.shape, block)
    assert ct is not None
    if method == "fbgemm_fp8" or (method == "fp8" and "weight_block_size" not in (qc or {})):
        return _fp8_weight_scale(where, name, info, ct, method)
    if method != "compressed-tensors":
        return None  # a *_scale sibling without a declared scheme stays refused by name
    strategies = _ct_strategies(qc or {})
    if not strategies:
        return None
    candidates: list[tuple[str, tuple[int, ...], tuple[int, int] | None]] = []
    if "tensor" in strategies:
        candidates.append(("ct_fp8_tensor", (1,), None))
    if "channel" in strategies:
        candidates.append(("ct_fp8_channel", (*lead, r, 1), (1, c)))
    for b in strategies.get("block", []):
        candidates.append(("ct_fp8_block", (*lead, -(-r // b[0]), -(-c // b[1])), b))
    for scheme, shape, blk in candidates:
        if ct.shape == shape or (scheme == "ct_fp8_tensor" and ct.numel == 1):
            _check_scale(where, ct, ct.shape, scheme)
            return QuantTensor(name, scheme, info, ct, info.shape, blk)
    wanted = " or ".join(f"{list(s)} ({k})" for k, s, _ in candidates)
    raise CheckpointError(
        f"{where}_scale: shape {list(ct.shape)} does not fit weight {list(info.shape)}; "
        f"the compressed-tensors config declares {wanted}"
    )


def _fp8_weight_scale(
    where: str, name: str, info: TensorInfo, scale: TensorInfo, method: str
) -> QuantTensor:
    """``<w>_scale`` of ``quant_method`` ``fp8`` without a block size (vLLM / AutoFP8: one per
    tensor) or ``fbgemm_fp8`` (one per output row)."""
    *lead, r, c = info.shape
    block: tuple[int, int] | None
    if scale.numel == 1:
        scheme, block = "fp8_tensor", None
    elif tuple(scale.shape) in ((*lead, r, 1), (*lead, r)):
        scheme, block = "fp8_channel", (1, c)
    else:
        raise CheckpointError(
            f"{where}_scale: shape {list(scale.shape)} does not fit weight {list(info.shape)}; "
            f"quant_method={method} takes one scale per tensor ([1]) or per row "
            f"({[*lead, r, 1]})"
        )
    _check_scale(where, scale, tuple(scale.shape), scheme)
    return QuantTensor(name, scheme, info, scale, info.shape, block)


def _fp8_block(where: str, qc: dict | None, method: str | None) -> tuple[int, int]:
    if method != "fp8":
        return DEEPSEEK_BLOCK
    block = (qc or {}).get("weight_block_size")
    if (
        not isinstance(block, list | tuple)
        or len(block) != 2
        or not all(isinstance(b, int) and b > 0 for b in block)
    ):
        raise CheckpointError(
            f"{where}: unknown block size: quantization_config weight_block_size is {block!r} "
            "(expected two positive integers, e.g. [128, 128])"
        )
    return int(block[0]), int(block[1])


def _ct_strategies(qc: dict) -> dict[str, list[tuple[int, int]]]:
    """FP8 weight strategies a compressed-tensors config declares: ``{"tensor": [], "channel":
    [], "block": [(b0, b1), ...]}`` (only keys present)."""
    out: dict[str, list[tuple[int, int]]] = {}
    groups = qc.get("config_groups") or {}
    for group in groups.values() if isinstance(groups, dict) else []:
        w = group.get("weights") if isinstance(group, dict) else None
        if not isinstance(w, dict) or w.get("type") != "float" or w.get("num_bits") != 8:
            continue
        strategy = w.get("strategy")
        if strategy == "block":
            b = w.get("block_structure")
            if isinstance(b, list) and len(b) == 2 and all(isinstance(x, int) and x > 0 for x in b):
                out.setdefault("block", []).append((b[0], b[1]))
            else:
                raise CheckpointError(
                    f"compressed-tensors config: unknown block size block_structure={b!r}"
                )
        elif strategy in ("tensor", "channel"):
            out.setdefault(str(strategy), [])
    return out


def _check_scale(
    where: str, scale: TensorInfo, shape: tuple[int, ...], what: str, e8m0: bool = False
) -> None:
    """A scale must be a float (or, with ``e8m0``, E8M0: exact in float32, 255 NaN) of ``shape``."""
    if not (is_float(scale.dtype) or (e8m0 and scale.dtype == "float8_e8m0fnu")):
        expected = "a float or F8_E8M0" if e8m0 else "a float"
        raise CheckpointError(f"{where}: scale {scale.name} is {scale.dtype}, expected {expected}")
    if scale.shape != tuple(shape):
        raise CheckpointError(
            f"{where}: scale {scale.name} has shape {list(scale.shape)}, expected {list(shape)} "
            f"for {what}"
        )


def _mxfp4(ckpt: Checkpoint, name: str, blocks: TensorInfo) -> QuantTensor:
    prefix = name[: -len("_blocks")]
    where = f"{ckpt.source}: {name}"
    scales = ckpt.tensors.get(prefix + "_scales")
    if scales is None:
        raise CheckpointError(f"{where}: MXFP4 blocks without their scales {prefix}_scales")
    if len(blocks.shape) < 2 or blocks.shape[-1] != MX_GROUP_BYTES:
        raise CheckpointError(
            f"{where}: MXFP4 blocks of shape {list(blocks.shape)}, expected [..., G, 16]"
        )
    if scales.dtype != "uint8" or scales.shape != blocks.shape[:-1]:
        raise CheckpointError(
            f"{where}: scales {scales.name} are {scales.dtype} {list(scales.shape)}, expected "
            f"uint8 {list(blocks.shape[:-1])}"
        )
    shape = (*blocks.shape[:-2], blocks.shape[-2] * MX_GROUP)
    # a stack of experts is read as transformers' parameter: each matrix transposed
    return QuantTensor(prefix, "mxfp4", blocks, scales, shape, (1, MX_GROUP), len(shape) >= 3)


@cache
def fp8_table() -> np.ndarray:
    """float32[256]: the value of every F8_E4M3 (fn) code: sign, 4 exponent bits (bias 7), 3
    mantissa bits, subnormals at exponent 0, no infinities, 0x7F and 0xFF NaN."""
    code = np.arange(256)
    exp, mant = (code >> 3) & 15, code & 7
    mag = np.where(exp == 0, mant / 8 * 2.0**-6, (1 + mant / 8) * 2.0 ** (exp - 7))
    table = np.where(code & 0x80, -mag, mag).astype(np.float32)
    table[(code & 0x7F) == 0x7F] = np.nan
    table.flags.writeable = False
    return table


@cache
def e2m1_table() -> np.ndarray:
    """float32[16]: the value of every E2M1 code."""
    table = np.asarray(E2M1_VALUES, np.float32)
    table.flags.writeable = False
    return table


@cache
def e8m0_table() -> np.ndarray:
    """float32[256]: ``2^(s - 127)`` for every E8M0 scale byte ``s`` (255 is NaN)."""
    table = np.append(np.ldexp(np.float32(1), np.arange(255) - 127), np.nan).astype(np.float32)
    table.flags.writeable = False
    return table
