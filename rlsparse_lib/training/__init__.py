"""Training runs through TRL: config, precision modes, checkpoint series, subnetwork training and
the in-training sparsity monitor.

    from rlsparse_lib.training import load_config, train
    result = train(load_config("data/configs/cpu/grpo.yaml"))
    result.path, result.manifest["final_diff"]
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "RunConfig": "rlsparse_lib.training.config",
    "load_config": "rlsparse_lib.training.config",
    "config_from_dict": "rlsparse_lib.training.config",
    "Precision": "rlsparse_lib.training.precision_modes",
    "train": "rlsparse_lib.training.runner",
    "RunResult": "rlsparse_lib.training.runner",
    "SparsityMonitor": "rlsparse_lib.training.monitor",
    "GradientMask": "rlsparse_lib.training.subnetwork",
    "CheckpointSaver": "rlsparse_lib.training.checkpoints",
    "save_checkpoint": "rlsparse_lib.training.checkpoints",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rlsparse_lib.training' has no attribute {name!r}")
