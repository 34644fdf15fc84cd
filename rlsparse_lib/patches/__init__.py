"""Lossless sparse patches between two checkpoints: ``rlsparse patch create`` / ``apply``.

A patch stores, for every tensor present in both checkpoints with the same dtype and shape, the
replacement words at the flat indices whose raw words differ (bitwise), and every tensor added or
reshaped whole; removed tensors are listed. SHA-256 fingerprints of every base tensor and of every
patched result make application to a wrong base, or of a damaged patch, fail by tensor name.
"""

from __future__ import annotations

from rlsparse_lib.patches.apply import apply_patch
from rlsparse_lib.patches.create import create_patch
from rlsparse_lib.patches.format import PatchError, read_patch

__all__ = ["PatchError", "apply_patch", "create_patch", "read_patch"]
