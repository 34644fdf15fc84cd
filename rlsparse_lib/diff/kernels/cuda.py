"""The GPU kernel: :class:`CudaKernel`, the Triton diff kernel behind the ``DiffKernel`` protocol on
one torch device, and the device selection. Whole units stream through the GPU executor
(:mod:`rlsparse_lib.diff.gpu_executor`).

On a CPU device (Triton's interpreter, ``TRITON_INTERPRET=1``: how CI runs this module) the kernel
runs synchronously.

This module imports torch but not triton; :mod:`.triton_diff` is imported on first use.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings

import numpy as np
import torch

from rlsparse_lib.diff.kernels.protocol import ChunkSpec
from rlsparse_lib.diff.stats import DiffStats
from rlsparse_lib.errors import ConfigError

#: signed integer view of a word width in bytes (how raw words travel to the kernel)
SIGNED = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def cuda_problem() -> str | None:
    """Why the CUDA path cannot run in this process, or None when it can."""
    if not torch.cuda.is_available():
        return "no CUDA device is available (torch.cuda.is_available() is False)"
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install 'rlsparse[gpu]')"
    try:
        importlib.import_module("triton")
    except Exception as exc:  # a broken install: report it as a configuration problem
        return f"triton cannot be imported ({type(exc).__name__}: {exc})"
    return None


def default_device() -> torch.device:
    """The device ``--device cuda`` runs on: the current CUDA device."""
    return torch.device("cuda", torch.cuda.current_device())


def cuda_kernel(required: bool, threads: int | None = None) -> CudaKernel | None:
    """A :class:`CudaKernel` on :func:`default_device`, or None when CUDA is unusable.

    Args:
        required: raise :class:`ConfigError` instead of returning None (``--device cuda``).
        threads: host reader threads for streaming (None: up to 8).
    """
    problem = cuda_problem()
    if problem is not None:
        if required:
            raise ConfigError(f"device 'cuda': {problem}; use --device cpu (or auto)")
        return None
    return CudaKernel(default_device(), readers=threads)


class CudaKernel:
    """Triton implementation of :class:`~rlsparse_lib.diff.kernels.DiffKernel` on one torch device.

    ``diff_chunk``/``count_changed`` take numpy arrays (copied to the device) or torch tensors;
    whole units stream through :func:`rlsparse_lib.diff.gpu_executor.stream_pairs`.

    Args:
        device: a CUDA device, or ``cpu`` to run through Triton's interpreter (tests).
        tuning: kernel launch shape (:class:`~rlsparse_lib.diff.kernels.triton_diff.Tuning`).
        slots: buffer sets in the streaming pipeline (2: double buffering).
        readers: host threads copying checkpoint bytes into pinned buffers (None: up to 8).
    """

    def __init__(
        self,
        device: str | torch.device | None = None,
        tuning=None,
        slots: int = 2,
        readers: int | None = None,
    ) -> None:
        from rlsparse_lib.diff.kernels.triton_diff import Tuning

        self.device = torch.device(device) if device is not None else default_device()
        self.tuning = tuning or Tuning()
        if slots < 1:
            raise ConfigError(f"slots must be >= 1, got {slots}")
        self.slots = slots
        self.readers = max(1, readers or min(8, os.cpu_count() or 1))
        self.name = "cuda-triton" if self.device.type == "cuda" else "triton-interpreter"
        #: whole units go through the GPU executor (pinned buffers, copy/compute overlap)
        self.streams_to_device = True

    def words(self, x) -> torch.Tensor:
        """Raw words (numpy array or tensor) as a signed-integer tensor on this device."""
        if isinstance(x, np.ndarray):
            with warnings.catch_warnings():  # read-only mmap views: torch only reads them
                warnings.simplefilter("ignore", UserWarning)
                x = torch.from_numpy(np.ascontiguousarray(x).view(f"i{x.itemsize}"))
        elif x.dtype.is_floating_point or x.dtype == torch.bool or x.dtype.is_complex:
            raise ValueError(f"expected raw integer words, got a {x.dtype} tensor")
        return x.reshape(-1).view(SIGNED[x.element_size()]).to(self.device)

    def diff_chunk(self, a, b, spec: ChunkSpec, mask_out=None) -> DiffStats:
        """Compare raw words ``a`` (base) and ``b`` (tuned); see the protocol.

        ``mask_out`` may be a numpy array or a uint8 tensor (on any device); it is overwritten.
        """
        from rlsparse_lib.diff.kernels.triton_diff import launch_diff

        ta, tb = self.words(a), self.words(b)
        mask = None
        if mask_out is not None:
            on_device = isinstance(mask_out, torch.Tensor) and mask_out.device == self.device
            mask = (
                mask_out
                if on_device
                else torch.empty(len(mask_out), dtype=torch.uint8, device=self.device)
            )
        with device_context(self.device):
            stats = launch_diff(ta, tb, spec, mask, self.tuning).to_stats()
        if mask is not None and mask is not mask_out:
            if isinstance(mask_out, torch.Tensor):
                mask_out.copy_(mask)
            else:
                np.copyto(mask_out, mask.cpu().numpy())
        return stats

    def count_changed(self, a, b) -> int:
        """Bitwise changed count of two raw-word arrays (any width)."""
        from rlsparse_lib.diff.kernels.triton_diff import count_changed

        return int(count_changed(self.words(a), self.words(b)))

    # ---- dequantization on the device (a Decoder of rlsparse_lib.diff.kernels.dequant) ------
    def _table(self, name: str) -> torch.Tensor:
        """A decode table of :mod:`rlsparse_lib.io.quant` on this device (uploaded once)."""
        from rlsparse_lib.io import quant

        tables = self.__dict__.setdefault("_tables", {})
        if name not in tables:
            tables[name] = torch.from_numpy(getattr(quant, name)().copy()).to(self.device)
        return tables[name]

    def _upload(self, x: np.ndarray) -> torch.Tensor:
        with warnings.catch_warnings():  # read-only mmap views: torch only reads them
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(np.ascontiguousarray(x)).to(self.device)

    def dequant_fp8(
        self,
        codes: np.ndarray,
        ncols: int,
        scales: np.ndarray,
        srow: np.ndarray,
        scols: int,
        col_block: int,
    ) -> torch.Tensor:
        """FP8 codes and their scale rows -> int16 bfloat16 words on this device (Triton)."""
        from rlsparse_lib.diff.kernels.triton_diff import dequant_fp8

        with device_context(self.device):
            return dequant_fp8(
                self._upload(codes),
                ncols,
                self._upload(scales),
                self._upload(srow),
                scols,
                col_block,
                self._table("fp8_table"),
            )

    def dequant_mxfp4(self, blocks: np.ndarray, scales: np.ndarray) -> torch.Tensor:
        """MXFP4 blocks and scales -> int16 bfloat16 words on this device (Triton)."""
        from rlsparse_lib.diff.kernels.triton_diff import dequant_mxfp4

        with device_context(self.device):
            return dequant_mxfp4(
                self._upload(blocks),
                self._upload(scales),
                self._table("e2m1_table"),
                self._table("e8m0_table"),
            )

    def quant_counts(self, ca, cb, wa, wb, nibbles: bool) -> tuple[int, int]:
        """(codes that differ, elements changed through their scale only) on this device."""
        a, b = self.words(ca).view(torch.uint8), self.words(cb).view(torch.uint8)
        if nibbles:
            a = torch.stack([a & 15, a >> 4], dim=-1).reshape(-1)
            b = torch.stack([b & 15, b >> 4], dim=-1).reshape(-1)
        same = a == b
        moved = same & (self.words(wa) != self.words(wb))
        return int((~same).sum()), int(moved.sum())


def device_context(device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.cuda.device(device)`` on a CUDA device, else a no-op context."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
