"""Where everything lives: one root (the repository, or OUT_ROOT for tests and batch runs).

data/models/    converted models (git-ignored)      data/runs/      training runs, executed notebooks (ignored)
data/results/   small result tables (committed)     data/configs/   run configs
data/pairs/     checkpoint-pair registries          figures/        generated figures
data/published/ others' published measurements
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: the repository checkout this package was installed from (editable installs), if any
_REPO = Path(__file__).resolve().parent.parent


def repo_root() -> Path:
    """The project root: ``$RLSPARSE_ROOT``, else the checkout holding this package, else the cwd."""
    env = os.environ.get("RLSPARSE_ROOT")
    if env:
        return Path(env).resolve()
    if (_REPO / "pyproject.toml").is_file() and (_REPO / "notebooks").is_dir():
        return _REPO
    return Path.cwd()


@dataclass(frozen=True)
class Paths:
    """Output and input locations under one root.

    Inputs that ship with the repository (configs, pair registries, notebooks) and the model cache
    always live in the repository; outputs go under ``root`` (the repository unless OUT_ROOT is given).
    """

    root: Path

    @classmethod
    def at(cls, out_root: str | os.PathLike | None = None) -> Paths:
        return cls(Path(out_root).resolve() if out_root else repo_root())

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def models(self) -> Path:
        """Converted models are a cache shared by every output root (the repository's data/models)."""
        return repo_root() / "data" / "models"

    @property
    def runs(self) -> Path:
        return self.data / "runs"

    @property
    def results(self) -> Path:
        return self.data / "results"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def configs(self) -> Path:
        return repo_root() / "data" / "configs"

    @property
    def pairs(self) -> Path:
        return repo_root() / "data" / "pairs"

    @property
    def published(self) -> Path:
        """Others' published measurements we compare with (source and licence in its README)."""
        return repo_root() / "data" / "published"

    @property
    def notebooks(self) -> Path:
        return repo_root() / "notebooks"
