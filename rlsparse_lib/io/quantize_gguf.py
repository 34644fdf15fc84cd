"""A GGUF copy of a float checkpoint with its chosen weights in llama.cpp's ``Q8_0``
(``rlsparse quantize --scheme gguf_q8_0``), read back by :mod:`rlsparse_lib.io.gguf_io`.

``Q8_0`` blocks hold 32 consecutive elements of a row: a float16 scale ``d = amax / 127`` and 32
int8 codes ``round(x / d)``; the value is ``d * code``. The blocks are made by the ``gguf``
package (``gguf.quants.quantize``, llama.cpp's reference in numpy) and the file is written by its
``GGUFWriter``; tensors keep their Hugging Face names (GGUF pairs by name) and their PyTorch
shapes. The other tensors are stored as ``BF16`` / ``F16`` / ``F32`` (or their integer types).
The writer takes whole tensors: one tensor is in memory at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlsparse_lib.errors import CheckpointError
from rlsparse_lib.io.checkpoint import Checkpoint, TensorReader
from rlsparse_lib.io.dtypes import cast_words, torch_dtype
from rlsparse_lib.io.tensor_info import TensorInfo

GGUF_FILE = "model-Q8_0.gguf"
#: elements per Q8_0 block (the rows of a quantized tensor are multiples of it)
Q8_0_BLOCK = 32
#: GGUF types of the tensors copied as they are, by torch-style dtype
_PLAIN = {
    "bfloat16": "BF16",
    "float16": "F16",
    "float32": "F32",
    "int8": "I8",
    "int16": "I16",
    "int32": "I32",
    "int64": "I64",
}


def write_gguf_q8_0(
    ckpt: Checkpoint,
    chosen: set[str],
    kept_dtype: Callable[[TensorInfo], str],
    path: Path,
    on_bytes: Callable[[int], object],
) -> None:
    """Write ``path``: every stored tensor of ``ckpt``, those in ``chosen`` as ``Q8_0``, the
    others in ``kept_dtype(info)``.

    Raises:
        CheckpointError: a tensor of a dtype GGUF does not store, or a weight holding NaN/Inf.
    """
    import gguf

    q8 = gguf.GGMLQuantizationType.Q8_0
    infos = [i for n, i in ckpt.tensors.items() if n not in ckpt.aliases]
    arch = str(ckpt.config.get("model_type") or "rlsparse")
    writer = gguf.GGUFWriter(path, arch)
    for info in infos:
        if info.name in chosen:
            shape = gguf.quants.quant_shape_to_byte_shape(info.shape, q8)
            writer.add_tensor_info(info.name, shape, np.dtype(np.uint8), math.prod(shape), q8)
            continue
        dtype = kept_dtype(info)
        if dtype not in _PLAIN:
            raise CheckpointError(
                f"{ckpt.source}: {info.name} is {dtype}, which GGUF does not store"
            )
        raw = gguf.GGMLQuantizationType[_PLAIN[dtype]]
        word = _word(dtype)
        writer.add_tensor_info(info.name, info.shape, word, info.numel * word.itemsize, raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    with ckpt.reader() as reader:
        for info in infos:
            if info.name in chosen:
                writer.write_tensor_data(_q8_0(reader, info, gguf, q8))
            else:
                words = reader.words(info.name, 0, info.numel)
                writer.write_tensor_data(cast_words(words, info.dtype, kept_dtype(info)))
            on_bytes(info.nbytes)
    writer.close()


def _word(dtype: str) -> np.dtype:
    """The numpy dtype of a plain tensor's data (bfloat16: its uint16 words)."""
    return np.dtype(np.uint16) if dtype == "bfloat16" else np.dtype(dtype)


def _q8_0(reader: TensorReader, info: TensorInfo, gguf: Any, q8: Any) -> np.ndarray:
    words = reader.words(info.name, 0, info.numel)
    w = torch.from_numpy(words.copy()).view(torch_dtype(info.dtype)).float()
    if not bool(torch.isfinite(w).all()):
        raise CheckpointError(
            f"{reader.ckpt.source}: {info.name} holds NaN or Inf: no Q8_0 scale represents it"
        )
    return gguf.quants.quantize(w.reshape(info.shape).numpy(), q8)
