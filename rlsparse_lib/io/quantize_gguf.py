"""Writing a GGUF file tensor by tensor, for ``rlsparse quantize --scheme gguf_q8_0`` (read back
by :mod:`rlsparse_lib.io.gguf_io`).

The file is written by the ``gguf`` package's ``GGUFWriter``: tensor infos first, then each
tensor's data in the same order. Tensors keep their Hugging Face names (GGUF pairs by name) and
their PyTorch shapes; a quantized tensor's data are its raw blocks (``Q8_0``: per 32 elements of a
row a float16 scale and 32 int8 codes, made by ``gguf.quants.quantize``). The writer takes whole
tensors: one tensor is in memory at a time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from rlsparse_lib.io.dtypes import ITEMSIZE
from rlsparse_lib.io.gguf_io import PLAIN_TYPES

#: GGUF type of each dtype GGUF stores as plain words (the inverse of ``gguf_io.PLAIN_TYPES``)
GGUF_TYPES = {dtype: ggml for ggml, dtype in PLAIN_TYPES.items()}


def write_gguf(
    path: Path, arch: str, tensors: list[tuple[str, tuple[int, ...], str]], data: Iterable
) -> None:
    """Write ``path``: ``tensors`` ``(name, shape, GGUF type name)`` (``Q8_0``, ``BF16``, ...),
    then ``data``, one numpy array per tensor in the same order (raw blocks as uint8 for a
    quantized type, plain words otherwise)."""
    import gguf

    writer = gguf.GGUFWriter(path, arch)
    for name, shape, type_name in tensors:
        ggml = gguf.GGMLQuantizationType[type_name]
        if type_name in PLAIN_TYPES:  # the shape is taken as given unless the dtype is uint8
            nbytes = math.prod(shape) * ITEMSIZE[PLAIN_TYPES[type_name]]
            writer.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, ggml)
        else:  # blocks: given as their byte shape
            raw = gguf.quants.quant_shape_to_byte_shape(shape, ggml)
            writer.add_tensor_info(name, raw, np.dtype(np.uint8), math.prod(raw), ggml)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for array in data:
        writer.write_tensor_data(array)
    writer.close()
