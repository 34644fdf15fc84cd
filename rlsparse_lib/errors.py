"""Exceptions raised for bad input. The CLI turns them into one-line messages and exit code 2."""

from __future__ import annotations


class RlsparseError(Exception):
    """Base class for errors caused by the user's input rather than by a bug."""


class CheckpointError(RlsparseError):
    """A checkpoint cannot be found, read or trusted (missing, truncated, corrupt, unsafe)."""


class PairingError(RlsparseError):
    """Two checkpoints cannot be compared (e.g. no tensor in common)."""


class ConfigError(RlsparseError):
    """An option or configuration value is invalid."""


class OutputError(RlsparseError):
    """An output path cannot be written (unwritable folder, a directory given as a file, ...)."""
