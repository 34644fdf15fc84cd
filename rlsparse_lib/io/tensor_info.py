"""What a checkpoint holds, from headers only: one record per tensor."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from rlsparse_lib.io.dtypes import ITEMSIZE, nbytes_of


@dataclass(frozen=True)
class TensorInfo:
    """One stored tensor.

    Attributes:
        name: parameter name as stored.
        dtype: torch-style dtype name.
        shape: tensor shape.
        file: file holding the data.
        offset: absolute byte offset of the data in ``file`` (safetensors); -1 for pickled files.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    offset: int = -1

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def itemsize(self) -> int:
        """Bytes per element (whole-byte dtypes only; sub-byte float4/float6 raise KeyError)."""
        return ITEMSIZE[self.dtype]

    @property
    def nbytes(self) -> int:
        """Stored bytes: ``ceil(numel * bits / 8)`` (sub-byte dtypes are packed)."""
        return nbytes_of(self.dtype, self.numel)
