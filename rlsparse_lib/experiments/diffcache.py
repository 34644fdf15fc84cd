"""The key under which :meth:`Experiment.diff` reuses a saved diff report.

A cached report is reused only when both checkpoints hold the same bytes and the diff is asked
with the same result-changing settings. The key, stored in the report's provenance as
``cache_key``, is

* ``version``: :data:`CACHE_VERSION` (bump it when the engine's numbers change);
* ``base`` / ``tuned``: one ``[file name, sha256]`` per weight file. A file in a Hugging Face
  cache resolves to ``blobs/<sha256>`` (the hub names blobs by their content), so hub checkpoints
  are keyed without reading them; any other file is hashed (memoized per process by path, size,
  mtime and inode). A header fingerprint is not enough: every checkpoint of one model saved the
  same way has the same header;
* ``settings``: the :class:`~rlsparse_lib.diff.config.DiffConfig` fields that change the numbers
  (tolerances, ``rel_eta``, ``compare_dtype``, ``include``, ``exclude``, ``mask_rule``), not those
  that only change how fast it runs (``chunk_elems``, ``device``, ``threads``).
"""

from __future__ import annotations

from rlsparse_lib.diff.config import DiffConfig
from rlsparse_lib.io.checkpoint import Checkpoint
from rlsparse_lib.io.digest import files_digest

#: bump when a diff report of the same inputs and settings would hold different numbers
CACHE_VERSION = 2  # 2: ULPs in a 16-bit compare dtype are that dtype's (ChunkSpec.ulp_dtype)


def cache_key(base: Checkpoint, tuned: Checkpoint, config: DiffConfig) -> dict[str, object]:
    """The cache key of diffing ``base`` against ``tuned`` with ``config`` (see the module doc)."""
    return {
        "version": CACHE_VERSION,
        "base": files_digest(base.files),
        "tuned": files_digest(tuned.files),
        "settings": config.result_settings(),
    }
