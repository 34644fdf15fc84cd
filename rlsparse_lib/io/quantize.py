"""Quantized copies of float checkpoints, in the layouts frontier checkpoints ship.

:func:`quantize_checkpoint` writes a Hugging Face folder holding a float checkpoint's linear
weights quantized and every other tensor as stored, so any float pair can be asked what
quantized storage would report for it (``rlsparse quantize``, notebook 14). The copies are read
back by :mod:`rlsparse_lib.io.quant` like the real thing:

* ``fp8_block`` (DeepSeek-V3/R1): ``<w>`` ``F8_E4M3`` codes ``[R, C]`` and ``<w>_scale_inv``
  float32 ``[ceil(R/128), ceil(C/128)]``; a block's ``scale_inv`` is its float32 ``amax / 448``
  (1 for an all-zero block), a code is ``float8_e4m3fn(float32(w) / scale_inv)`` (torch's cast:
  round to nearest even). ``config.json`` declares ``quant_method: fp8`` with
  ``weight_block_size: [128, 128]``.
* ``mxfp4`` (gpt-oss's byte layout, OCP MX v1.0 rounding): ``<w>_blocks`` uint8 ``[R, C/32, 16]``
  (two E2M1 codes per byte, low nibble first) and ``<w>_scales`` uint8 E8M0 ``[R, C/32]``; a
  group of 32 has the shared exponent ``X = floor(log2(amax)) - 2`` (``-127`` for an all-zero
  group, clamped to ``[-127, 127]``), an element the E2M1 value nearest ``w / 2^X`` (ties to the
  even code, saturating at ±6). ``config.json`` declares ``quant_method: mxfp4``.
* ``gguf_q8_0`` (llama.cpp): one GGUF file, ``Q8_0`` blocks of 32 elements of a row
  (:mod:`rlsparse_lib.io.quantize_gguf`).

Quantized are 2-D weights of attention and MLP projections and, in ``mxfp4``, stacks of experts
``[E, in, out]`` as transformers holds gpt-oss's, stored as gpt-oss stores them
(:func:`quantizable`); embeddings, the output head, norms and biases stay as stored.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from rlsparse_lib.atomic import atomic_folder
from rlsparse_lib.errors import CheckpointError, ConfigError
from rlsparse_lib.io.checkpoint import (
    Checkpoint,
    SafetensorsWriter,
    TensorReader,
    open_checkpoint,
)
from rlsparse_lib.io.dtypes import COMPARE_DTYPES, cast_words, torch_dtype
from rlsparse_lib.io.naming import parse_param_name
from rlsparse_lib.io.pairing import compile_patterns, quantized_tensors
from rlsparse_lib.io.quant import DEEPSEEK_BLOCK, E2M1_VALUES, MX_GROUP, MX_GROUP_BYTES
from rlsparse_lib.io.quantize_gguf import GGUF_TYPES, write_gguf
from rlsparse_lib.io.tensor_info import TensorInfo
from rlsparse_lib.progress import byte_progress

QUANTIZE_SCHEMES = ("fp8_block", "mxfp4", "gguf_q8_0")
#: the file of a ``gguf_q8_0`` copy, and the elements of a row one ``Q8_0`` block holds
GGUF_FILE = "model-Q8_0.gguf"
Q8_0_BLOCK = 32
#: schemes that group 32 consecutive elements of a row
_GROUPED = {"mxfp4": MX_GROUP, "gguf_q8_0": Q8_0_BLOCK}
FP8_BLOCK = DEEPSEEK_BLOCK[0]
FP8_MAX = 448.0
#: ``config.json`` ``quantization_config`` written with each scheme
QUANTIZATION_CONFIGS: dict[str, dict] = {
    "fp8_block": {
        "quant_method": "fp8",
        "fmt": "e4m3",
        "activation_scheme": "dynamic",
        "weight_block_size": list(DEEPSEEK_BLOCK),
    },
    "mxfp4": {"quant_method": "mxfp4"},
}
#: elements per slab (whole 128-row block rows when quantized): bounds the memory per tensor
_SLAB_ELEMS = 1 << 24
#: E2M1 magnitudes' midpoints, and whether a tie there rounds up (to the even code)
_E2M1_MIDS = [(a + b) / 2 for a, b in itertools.pairwise(E2M1_VALUES[:8])]
_E2M1_TIE_UP = [i % 2 == 1 for i in range(7)]
_WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def quantizable(name: str, info: TensorInfo, scheme: str = "fp8_block") -> bool:
    """Whether ``scheme`` quantizes ``name``: a 2-D float weight of an attention or MLP
    projection, or (``mxfp4``) a stack of experts ``[E, in, out]`` as transformers holds
    gpt-oss's (``...mlp.experts.gate_up_proj``)."""
    p = parse_param_name(name)
    if info.dtype not in COMPARE_DTYPES or p.group not in ("attention", "mlp"):
        return False
    if len(info.shape) == 2:
        return p.param == "weight"
    return scheme == "mxfp4" and len(info.shape) == 3 and "experts" in p.module and not p.param


def fp8_block_quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V3 FP8 of ``w`` float ``[R, C]`` with R a multiple of 128 or the tensor's last
    rows: codes ``float8_e4m3fn [R, C]``, ``scale_inv`` float32 ``[ceil(R/128), ceil(C/128)]``."""
    r, c = w.shape
    sr, sc = -(-r // FP8_BLOCK), -(-c // FP8_BLOCK)
    x = w.float()
    padded = torch.zeros(sr * FP8_BLOCK, sc * FP8_BLOCK)
    padded[:r, :c] = x.abs()
    amax = padded.reshape(sr, FP8_BLOCK, sc, FP8_BLOCK).amax(dim=(1, 3))
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    full = scale.repeat_interleave(FP8_BLOCK, 0).repeat_interleave(FP8_BLOCK, 1)[:r, :c]
    return (x / full).to(torch.float8_e4m3fn), scale


def mxfp4_quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """OCP MXFP4 of ``w`` float ``[R, C]`` (C a multiple of 32): blocks uint8 ``[R, C/32, 16]``
    (low nibble first) and E8M0 scales uint8 ``[R, C/32]``."""
    r, c = w.shape
    x = w.float().reshape(r, c // MX_GROUP, MX_GROUP)
    amax = x.abs().amax(dim=-1)
    _, e = torch.frexp(amax)  # amax = m * 2^e, m in [0.5, 1): floor(log2(amax)) = e - 1
    shared = torch.where(amax > 0, e - 3, torch.full_like(e, -127)).clamp(-127, 127)
    v = torch.ldexp(x, -shared.unsqueeze(-1).float()).abs()
    code = torch.zeros(v.shape, dtype=torch.uint8)
    for mid, up in zip(_E2M1_MIDS, _E2M1_TIE_UP, strict=True):
        code += ((v >= mid) if up else (v > mid)).to(torch.uint8)
    code |= torch.signbit(x).to(torch.uint8) << 3
    pairs = code.reshape(r, c // MX_GROUP, MX_GROUP_BYTES, 2)
    blocks = pairs[..., 0] | (pairs[..., 1] << 4)
    return blocks, (shared + 127).to(torch.uint8)


def quantize_checkpoint(
    src: str | Path | Checkpoint,
    out: str | Path,
    scheme: str,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    rest_dtype: str | None = None,
    progress: bool = True,
) -> dict:
    """Write ``out`` (a new folder): ``src`` with its :func:`quantizable` weights in ``scheme``
    (those matching an ``include`` regex when any is given, and no ``exclude`` regex), and its
    other float tensors as stored or, with ``rest_dtype``, cast to it (round to nearest even: a
    copy of fp32 master weights keeps the rest in bf16 as published FP8 checkpoints do).

    One safetensors file per source file (an index when there are several; ``gguf_q8_0``: one
    GGUF file), ``config.json`` (with the scheme's ``quantization_config`` for safetensors), and
    the source folder's other files (tokenizer, ...).
    Written into a temporary folder renamed at the end: on any error nothing is left.

    Returns:
        ``{"out", "scheme", "tensors", "quantized", "elements", "quantized_elements"}``.

    Raises:
        ConfigError: an unknown scheme or rest dtype, or an invalid regex.
        CheckpointError: ``src`` holds quantized weights already, a weight holds NaN/Inf, or
            (``mxfp4``, ``gguf_q8_0``) a weight's rows are not a multiple of 32 long; the message
            names it.
        OutputError: ``out`` exists and is not an empty folder.
    """
    if scheme not in QUANTIZE_SCHEMES:
        raise ConfigError(
            f"unknown quantization scheme {scheme!r} (have {', '.join(QUANTIZE_SCHEMES)})"
        )
    if rest_dtype is not None and rest_dtype not in COMPARE_DTYPES:
        raise ConfigError(f"unknown rest dtype {rest_dtype!r} (have {', '.join(COMPARE_DTYPES)})")
    inc = compile_patterns(include, "--include")
    exc = compile_patterns(exclude, "--exclude")
    with atomic_folder(out) as tmp:
        ckpt = src if isinstance(src, Checkpoint) else open_checkpoint(src)
        chosen = _choose(ckpt, scheme, inc, exc)
        _write(ckpt, chosen, scheme, rest_dtype, tmp, progress)
    return {
        "out": str(out),
        "scheme": scheme,
        "tensors": len(ckpt.tensors),
        "quantized": len(chosen),
        "elements": ckpt.n_params,
        "quantized_elements": sum(ckpt.tensors[n].numel for n in chosen),
    }


def _choose(
    ckpt: Checkpoint, scheme: str, inc: list[re.Pattern], exc: list[re.Pattern]
) -> set[str]:
    """The names to quantize; refuses a checkpoint that holds quantized weights already."""
    found = quantized_tensors(ckpt) | {n: e.scheme for n, e in ckpt.encodings.items()}
    if found:
        name, what = next(iter(found.items()))
        more = f" and {len(found) - 1} more" if len(found) > 1 else ""
        raise CheckpointError(
            f"{ckpt.source}: already quantized ({name}: {what}{more}); quantize a float checkpoint"
        )
    chosen = set()
    for name, info in ckpt.tensors.items():
        selected = (not inc or any(r.search(name) for r in inc)) and not any(
            r.search(name) for r in exc
        )
        if selected and quantizable(name, info, scheme) and name not in ckpt.aliases:
            inputs = info.shape[-1] if len(info.shape) == 2 else info.shape[1]
            group = _GROUPED.get(scheme)
            if group and inputs % group:
                raise CheckpointError(
                    f"{ckpt.source}: {name} has {inputs} inputs per row, not a multiple of "
                    f"{group}: {scheme} groups {group} elements of a row (leave it out with "
                    "--exclude)"
                )
            chosen.add(name)
    return chosen


def _kept_dtype(info: TensorInfo, rest_dtype: str | None) -> str:
    """The dtype a tensor that is not quantized is written in."""
    return rest_dtype if rest_dtype and info.dtype in COMPARE_DTYPES else info.dtype


def _specs(
    infos: list[TensorInfo], chosen: set[str], scheme: str, rest_dtype: str | None
) -> Iterator[tuple[str, str, tuple[int, ...]]]:
    """(name, dtype, shape) of what ``infos`` become in the copy."""
    for info in infos:
        name = info.name
        if name not in chosen:
            yield name, _kept_dtype(info, rest_dtype), info.shape
            continue
        if len(info.shape) == 3:  # a stack of experts [E, in, out], stored as gpt-oss does
            e, c, r = info.shape
            yield name + "_blocks", "uint8", (e, r, c // MX_GROUP, MX_GROUP_BYTES)
            yield name + "_scales", "uint8", (e, r, c // MX_GROUP)
            continue
        r, c = info.shape
        if scheme == "fp8_block":
            yield name, "float8_e4m3fn", (r, c)
            yield name + "_scale_inv", "float32", (-(-r // FP8_BLOCK), -(-c // FP8_BLOCK))
        else:
            yield name + "_blocks", "uint8", (r, c // MX_GROUP, MX_GROUP_BYTES)
            yield name + "_scales", "uint8", (r, c // MX_GROUP)


def _write(
    ckpt: Checkpoint,
    chosen: set[str],
    scheme: str,
    rest_dtype: str | None,
    folder: Path,
    progress: bool,
) -> None:
    total = sum(i.nbytes for n, i in ckpt.tensors.items() if n not in ckpt.aliases)
    bar = byte_progress(total, f"quantize ({scheme})", progress)
    with contextlib.closing(bar):
        if scheme == "gguf_q8_0":
            _write_gguf(ckpt, chosen, rest_dtype, folder / GGUF_FILE, bar.update)
        else:
            _write_safetensors(ckpt, chosen, scheme, rest_dtype, folder, bar.update)
    if ckpt.path.is_dir() and ckpt.remote is None:
        for f in sorted(ckpt.path.iterdir()):
            if f.is_file() and not f.name.endswith((*_WEIGHT_FILES, ".index.json")):
                shutil.copyfile(f, folder / f.name)
    config = dict(ckpt.config)
    if scheme in QUANTIZATION_CONFIGS:
        config["quantization_config"] = QUANTIZATION_CONFIGS[scheme]
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def _write_safetensors(
    ckpt: Checkpoint,
    chosen: set[str],
    scheme: str,
    rest_dtype: str | None,
    folder: Path,
    on_bytes: Callable[[int], object],
) -> None:
    """One safetensors file per source file (an index when there are several)."""
    by_file: dict[Path, list[str]] = {}
    for name, info in ckpt.tensors.items():
        if name not in ckpt.aliases:
            by_file.setdefault(info.file, []).append(name)
    n = len(by_file)
    files = [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    files = ["model.safetensors"] if n == 1 else files
    weight_map: dict[str, str] = {}
    with ckpt.reader() as reader:
        for fname, names in zip(files, by_file.values(), strict=True):
            specs = list(_specs([ckpt.tensors[k] for k in names], chosen, scheme, rest_dtype))
            weight_map.update(dict.fromkeys((s[0] for s in specs), fname))
            with SafetensorsWriter(folder / fname, specs, {"format": "pt"}) as writer:
                for name in names:
                    info = ckpt.tensors[name]
                    if name in chosen:
                        _write_quantized(reader, info, scheme, writer)
                    else:
                        _write_kept(reader, info, _kept_dtype(info, rest_dtype), writer)
                    on_bytes(info.nbytes)
    if n > 1:
        size = sum(f.stat().st_size for f in folder.iterdir())
        index = {"metadata": {"total_size": size}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=1) + "\n")


def _write_kept(
    reader: TensorReader, info: TensorInfo, dtype: str, writer: SafetensorsWriter
) -> None:
    """Append a tensor that is not quantized, as stored or cast to ``dtype``, in slabs."""
    for start in range(0, info.numel, _SLAB_ELEMS):
        words = reader.words(info.name, start, min(start + _SLAB_ELEMS, info.numel))
        writer.write(info.name, cast_words(words, info.dtype, dtype))


def _write_quantized(
    reader: TensorReader, info: TensorInfo, scheme: str, writer: SafetensorsWriter
) -> None:
    """Append a quantized weight's codes, then its scales, in slabs of whole block rows (a
    stack of experts: one expert at a time, transposed to its rows of the linear map)."""
    name = info.name
    if len(info.shape) == 3:
        _write_expert_stack(reader, info, writer)
        return
    r, c = info.shape
    rows = max(FP8_BLOCK, _SLAB_ELEMS // c // FP8_BLOCK * FP8_BLOCK)
    scales = []
    codes_name = name if scheme == "fp8_block" else name + "_blocks"
    for r0 in range(0, r, rows):
        r1 = min(r, r0 + rows)
        w = _values(reader, info, r0 * c, r1 * c, scheme).reshape(r1 - r0, c)
        if scheme == "fp8_block":
            codes, scale = fp8_block_quantize(w)
            writer.write(codes_name, codes.view(torch.uint8).numpy())
        else:
            codes, scale = mxfp4_quantize(w)
            writer.write(codes_name, codes.numpy())
        scales.append(scale.numpy())
    scales_name = name + ("_scale_inv" if scheme == "fp8_block" else "_scales")
    writer.write(scales_name, np.concatenate(scales))


def _write_expert_stack(reader: TensorReader, info: TensorInfo, writer: SafetensorsWriter) -> None:
    """MXFP4 of a stack ``[E, in, out]``: gpt-oss's ``_blocks`` ``[E, out, in/32, 16]`` and
    ``_scales`` ``[E, out, in/32]``, one expert in memory at a time."""
    name = info.name
    e, c, r = info.shape
    scales = []
    for k in range(e):
        w = _values(reader, info, k * c * r, (k + 1) * c * r, "mxfp4").reshape(c, r)
        blocks, scale = mxfp4_quantize(w.t().contiguous())
        writer.write(name + "_blocks", blocks.numpy())
        scales.append(scale.numpy())
    writer.write(name + "_scales", np.concatenate(scales))


def _write_gguf(
    ckpt: Checkpoint,
    chosen: set[str],
    rest_dtype: str | None,
    path: Path,
    on_bytes: Callable[[int], object],
) -> None:
    """One GGUF file: the chosen weights in ``Q8_0`` (the ``gguf`` package's quantizer, llama.cpp's
    reference in numpy), the others as stored or in ``rest_dtype``.

    Raises:
        CheckpointError: a tensor of a dtype GGUF does not store.
    """
    import gguf

    infos = [i for n, i in ckpt.tensors.items() if n not in ckpt.aliases]
    specs = []
    for info in infos:
        dtype = _kept_dtype(info, rest_dtype)
        if info.name not in chosen and dtype not in GGUF_TYPES:
            raise CheckpointError(
                f"{ckpt.source}: {info.name} is {dtype}, which GGUF does not store"
            )
        specs.append((info.name, info.shape, "Q8_0" if info.name in chosen else GGUF_TYPES[dtype]))

    def data() -> Iterator[np.ndarray]:
        with ckpt.reader() as reader:
            for info in infos:
                if info.name in chosen:
                    w = _values(reader, info, 0, info.numel, "gguf_q8_0").reshape(info.shape)
                    yield gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType.Q8_0)
                else:
                    words = reader.words(info.name, 0, info.numel)
                    yield cast_words(words, info.dtype, _kept_dtype(info, rest_dtype))
                on_bytes(info.nbytes)

    write_gguf(path, str(ckpt.config.get("model_type") or "rlsparse"), specs, data())


def _values(
    reader: TensorReader, info: TensorInfo, start: int, stop: int, scheme: str
) -> torch.Tensor:
    """float32 elements ``[start, stop)`` of a float tensor (flat).

    Raises:
        CheckpointError: a value is NaN or Inf (no ``scheme`` scale represents it).
    """
    words = reader.words(info.name, start, stop)
    w = torch.from_numpy(words.copy()).view(torch_dtype(info.dtype)).float()
    if not bool(torch.isfinite(w).all()):
        raise CheckpointError(
            f"{reader.ckpt.source}: {info.name} holds NaN or Inf: no {scheme} scale represents it"
        )
    return w
