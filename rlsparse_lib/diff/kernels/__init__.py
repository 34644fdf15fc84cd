"""Per-chunk diff kernels.

A kernel turns one chunk of a tensor pair, given as raw words of the compare dtype, into a
:class:`~rlsparse_lib.diff.stats.DiffStats` and optionally a bit-packed changed mask; the contract
is :mod:`.protocol`, the implementations :mod:`.cpu` (C + OpenMP) and :mod:`.cuda` (Triton).
:func:`.selection.get_kernel` picks one for a device.
"""
