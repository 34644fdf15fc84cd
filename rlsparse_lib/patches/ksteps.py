"""k-step sparsity S_k(t) of a checkpoint series, and the published curves to compare with.

S_k(t) is the fraction of elements bit-identical between the weights at step t and step t + k
(PULSE's metric: how much of a replica that is k syncs behind is still right). Our runs' bf16
checkpoints give it directly. The published values of real GRPO runs (PULSE / grail,
``sparsity_k_step_combined.csv``, in %) are committed as their per-model, per-learning-rate means in
``data/published/grail_k_step.csv`` (:func:`aggregate_k_step` made it; see that folder's README).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rlsparse_lib.io.checkpoint import open_checkpoint
from rlsparse_lib.patches.series import checkpoint_series
from rlsparse_lib.paths import Paths
from rlsparse_lib.progress import progress_bar
from rlsparse_lib.rules import sparsity

#: the k of the published data
KS = (1, 2, 4, 8, 16, 32)
_CHUNK = 1 << 24


def unchanged_count(a, b) -> tuple[int, int]:
    """(elements compared, elements bit-identical) over the tensors two checkpoints share with
    the same dtype and shape (raw words, chunk by chunk)."""
    n = same = 0
    with a.reader() as ra, b.reader() as rb:
        for name, info in a.tensors.items():
            other = b.tensors.get(name)
            if other is None or (other.dtype, other.shape) != (info.dtype, info.shape):
                continue
            for start in range(0, info.numel, _CHUNK):
                stop = min(info.numel, start + _CHUNK)
                x, y = ra.words(name, start, stop), rb.words(name, start, stop)
                same += int(np.count_nonzero(x == y))
                ra.release(name, start, stop)
                rb.release(name, start, stop)
            n += info.numel
    return n, same


def k_step_sparsity(
    checkpoints: list[str | Path],
    ks: tuple[int, ...] = KS,
    steps: list[int] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """S_k(t) for every step t of the series whose step t + k is in the series too.

    Returns:
        one row per (t, k): ``step``, ``k``, ``n_elements``, ``n_unchanged``, ``sparsity``
        (fraction).
    """
    series = checkpoint_series(checkpoints, steps)
    ckpts = {s: open_checkpoint(p) for s, p in series}
    pairs = [(t, k) for k in ks for t in ckpts if t + k in ckpts]
    bar = progress_bar(total=len(pairs), desc="S_k", unit="pair", disable=not progress or None)
    rows = []
    for t, k in pairs:
        n, same = unchanged_count(ckpts[t], ckpts[t + k])
        rows.append(
            {"step": t, "k": k, "n_elements": n, "n_unchanged": same, "sparsity": sparsity(same, n)}
        )
        bar.update(1)
    bar.close()
    return pd.DataFrame(rows, columns=["step", "k", "n_elements", "n_unchanged", "sparsity"])


def published_k_step() -> pd.DataFrame:
    """The published S_k of real GRPO runs (``data/published/grail_k_step.csv``): the columns of
    :func:`aggregate_k_step`."""
    return pd.read_csv(Paths.at().published / "grail_k_step.csv")


def aggregate_k_step(path: str | Path) -> pd.DataFrame:
    """Average grail's ``sparsity_k_step_combined.csv`` over steps and seeds per model and
    learning rate.

    Returns:
        ``model`` (e.g. ``Qwen 1.5B``), ``learning_rate``, ``k``, ``sparsity`` (fraction, mean),
        ``n`` (rows averaged).
    """
    d = pd.read_csv(path)
    d["model"] = d["model_family"] + " " + d["model_size"]
    g = d.groupby(["model", "learning_rate", "k"], as_index=False)["sparsity"].agg(["mean", "size"])
    g = g.rename(columns={"mean": "sparsity", "size": "n"})
    g["sparsity"] = g["sparsity"] / 100
    return g
