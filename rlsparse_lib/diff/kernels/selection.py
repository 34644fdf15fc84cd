"""Which kernel runs a diff: :func:`get_kernel` picks one for a device (kept out of the
package's ``__init__`` so that the kernels can import the package without a cycle)."""

from __future__ import annotations

from rlsparse_lib.diff.kernels.protocol import DiffKernel
from rlsparse_lib.errors import ConfigError


def get_kernel(device: str = "cpu", threads: int | None = None) -> DiffKernel:
    """The kernel for ``device``: ``cpu``, ``cuda`` (Triton; needs a CUDA GPU) or ``auto`` (cuda
    when usable, else cpu). ``threads``: CPU kernel threads, or host reader threads for cuda."""
    if device in ("cuda", "auto"):
        from rlsparse_lib.diff.kernels.cuda import cuda_kernel

        kernel = cuda_kernel(required=device == "cuda", threads=threads)
        if kernel is not None:
            return kernel
        device = "cpu"
    if device == "cpu":
        from rlsparse_lib.diff.kernels.cpu import CpuKernel

        return CpuKernel(threads=threads)
    raise ConfigError(f"no diff kernel for device {device!r} (use 'cpu', 'cuda' or 'auto')")
