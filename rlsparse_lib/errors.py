"""Exceptions raised for bad input. The CLI turns them into one-line messages and exit code 2."""

from __future__ import annotations


class RlsparseError(Exception):
    """Base class for errors caused by the user's input rather than by a bug."""


class CheckpointError(RlsparseError):
    """A checkpoint cannot be found, read or trusted (missing, truncated, corrupt, unsafe)."""


class PairingError(RlsparseError):
    """Two checkpoints cannot be compared (e.g. no tensor in common)."""


class QuantizedWeightsError(PairingError):
    """Tensors hold weights rlsparse cannot decode (FP8/FP4/FP6 codes, MXFP4, a
    quantization_config's packed weights) and were not excluded: no silent partial headline."""


class ConfigError(RlsparseError):
    """An option or configuration value is invalid."""


class OutputError(RlsparseError):
    """An output path cannot be written (unwritable folder, a directory given as a file, ...)."""
