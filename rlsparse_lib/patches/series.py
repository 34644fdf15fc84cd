"""A checkpoint series in training order: a run folder's step folders, or a list given."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

from rlsparse_lib.errors import ConfigError

#: step folders of a run: ours (``step_000020``) and the Trainer's (``checkpoint-20``)
_STEP_DIR = re.compile(r"^(?:step_|checkpoint-)(\d+)$")
_WEIGHTS = ("*.safetensors", "*.bin", "*.index.json")


def _has_weights(folder: Path) -> bool:
    return any(next(folder.glob(g), None) is not None for g in _WEIGHTS)


def checkpoint_series(
    paths: list[str | Path], steps: list[int] | None = None
) -> list[tuple[int, Path]]:
    """``(step, folder)`` in training order.

    One folder without weights of its own is a run folder: its ``step_NNNNNN`` /
    ``checkpoint-N`` subfolders holding weights, sorted by step. Otherwise ``paths`` are the
    checkpoints in order, with ``steps`` (default 0, 1, 2, ...).

    Raises:
        ConfigError: fewer than two checkpoints, steps of the wrong count or not increasing.
    """
    if len(paths) == 1 and Path(paths[0]).is_dir() and not _has_weights(Path(paths[0])):
        run = Path(paths[0])
        found = []
        for p in run.iterdir():
            match = _STEP_DIR.match(p.name)
            if match and p.is_dir() and _has_weights(p):
                found.append((int(match.group(1)), p))
        if steps is not None:
            raise ConfigError(f"{run}: a run folder's steps come from its folder names")
        series = sorted(found)
        if len(series) < 2:
            raise ConfigError(f"{run}: fewer than two step_N / checkpoint-N folders with weights")
        return series
    if len(paths) == 1 and not Path(paths[0]).exists():
        raise ConfigError(f"{paths[0]}: no such file or folder")
    if len(paths) < 2:
        raise ConfigError("a checkpoint series needs at least two checkpoints (or a run folder)")
    if steps is None:
        steps = list(range(len(paths)))
    if len(steps) != len(paths):
        raise ConfigError(f"{len(steps)} steps given for {len(paths)} checkpoints")
    if any(b <= a for a, b in itertools.pairwise(steps)):
        raise ConfigError(f"steps must increase: {steps}")
    return [(int(s), Path(p)) for s, p in zip(steps, paths, strict=True)]
