"""rlsparse: measure, explain and exploit parameter-update sparsity in RL-finetuned LLMs.

Importing this package is cheap; the public API is loaded on first use::

    from rlsparse_lib import diff_checkpoints, DiffConfig
    report = diff_checkpoints("base/", "tuned/")
    print(report.sparsity, report.sparsity_at(1e-5))
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "DiffConfig": "rlsparse_lib.diff.config",
    "diff_checkpoints": "rlsparse_lib.diff.engine",
    "DEFAULT_TOLERANCES": "rlsparse_lib.diff.config",
    "DiffReport": "rlsparse_lib.diff.report",
    "open_checkpoint": "rlsparse_lib.io.checkpoint",
    "Checkpoint": "rlsparse_lib.io.checkpoint",
    "MaskRule": "rlsparse_lib.rules",
    "MaskFile": "rlsparse_lib.io.maskfile",
    "RlsparseError": "rlsparse_lib.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rlsparse_lib' has no attribute {name!r}")
