"""The weight-sync budget of a checkpoint series: what each sync would cost, per codec.

For each pair of consecutive checkpoints (θ_t → θ_{t+1}) one streaming pass gives

* the payload of each codec: ``raw`` (int32 flat index + the new value, per changed element:
  what NCCL / vLLM sparse loading moves), ``rlsparse`` (the blocks of ``rlsparse patch``: varint
  gaps or bitmap, zigzag word distance in byte planes, zstd), ``xor_zstd`` (XOR of the whole
  tensor's words, zstd, one frame per 16M-element chunk) and ``dense`` (the tensors' bytes);
  tensors added or reshaped cost their dense bytes in every codec;
* **multi-granularity sparsity**: the fraction of units with no changed element, per element,
  row, column, 128×128 block (matrices: a tensor of rank ≥ 2 seen as ``shape[0] × rest``),
  64 KiB chunk (of each tensor's bytes, from its start: what chunk-deduplicating storage could
  skip) and tensor.

:func:`sync_budget` returns these as DataFrames, with the anchor-cadence trade-off (a full dense
anchor every N syncs) and the bandwidth to sync every T seconds; :func:`budget_from_monitor` the
same per-sync and cadence tables from a run's monitor log.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zstandard as zstd

from rlsparse_lib.errors import ConfigError
from rlsparse_lib.io.checkpoint import open_checkpoint
from rlsparse_lib.patches.codec import encode_block
from rlsparse_lib.patches.create import CHUNK, LEVEL
from rlsparse_lib.patches.series import checkpoint_series
from rlsparse_lib.progress import byte_progress
from rlsparse_lib.provenance import build_provenance, load_report_json, save_report_json
from rlsparse_lib.rules import sparsity, sparsity_from_changed

SCHEMA = "rlsparse.budget/1"
CODECS = ("raw", "rlsparse", "xor_zstd", "dense")
GRANULARITIES = ("element", "row", "column", "block_128x128", "chunk_64KiB", "tensor")
BLOCK = 128
DEDUP_CHUNK_BYTES = 64 << 10
#: bytes of a raw index (int32)
INDEX_BYTES = 4


@dataclass
class _Units:
    """Changed marks of one tensor's units (rows, columns, blocks, 64 KiB chunks)."""

    shape2: tuple[int, int] | None
    rows: np.ndarray | None
    cols: np.ndarray | None
    blocks: np.ndarray | None
    chunks: np.ndarray
    per_chunk: int

    @classmethod
    def of(cls, shape: tuple[int, ...], numel: int, itemsize: int) -> _Units:
        per_chunk = DEDUP_CHUNK_BYTES // itemsize
        chunks = np.zeros(-(-numel // per_chunk), bool)
        if len(shape) < 2:
            return cls(None, None, None, None, chunks, per_chunk)
        n0, n1 = shape[0], numel // shape[0] if shape[0] else 0
        nb = (-(-n0 // BLOCK), -(-n1 // BLOCK))
        return cls(
            (n0, n1),
            np.zeros(n0, bool),
            np.zeros(n1, bool),
            np.zeros(nb[0] * nb[1], bool),
            chunks,
            per_chunk,
        )

    def mark(self, pos: np.ndarray) -> None:
        """Mark the units holding the changed flat positions ``pos`` (int64)."""
        self.chunks[pos // self.per_chunk] = True
        if self.shape2 is not None:
            assert self.rows is not None and self.cols is not None and self.blocks is not None
            n1 = self.shape2[1]
            r, c = pos // n1, pos % n1
            self.rows[r] = True
            self.cols[c] = True
            self.blocks[(r // BLOCK) * (-(-n1 // BLOCK)) + c // BLOCK] = True

    def counts(self) -> dict[str, tuple[int, int]]:
        """(units, unchanged units) per granularity (matrices only for row/column/block)."""
        out = {"chunk_64KiB": (self.chunks.size, int((~self.chunks).sum()))}
        for g, a in (("row", self.rows), ("column", self.cols), ("block_128x128", self.blocks)):
            out[g] = (0, 0) if a is None else (a.size, int((~a).sum()))
        return out


def codec_bytes(
    base: np.ndarray, tuned: np.ndarray, cctx: zstd.ZstdCompressor
) -> tuple[int, dict[str, int]]:
    """Payload of one chunk pair of raw words (same unsigned dtype) under each codec.

    Returns:
        (changed elements, ``{codec: bytes}`` for ``raw``, ``rlsparse``, ``xor_zstd``, ``dense``).
    """
    k, _, idx, vals = encode_block(base, tuned, "sub", cctx)
    return k, {
        "raw": k * (INDEX_BYTES + base.itemsize),
        "rlsparse": len(idx) + len(vals),
        "xor_zstd": len(cctx.compress((base ^ tuned).tobytes())),
        "dense": base.nbytes,
    }


def step_budget(
    base: Any, tuned: Any, level: int = LEVEL, chunk: int = CHUNK, progress: bool = False
) -> tuple[dict[str, Any], dict[str, tuple[int, int]]]:
    """One sync θ_base → θ_tuned.

    Returns:
        (payload row: ``n_elements``, ``n_changed``, ``n_tensors_whole``, ``bytes_<codec>``;
        granularity: ``{granularity: (units, unchanged units)}``).
    """
    b_ck, t_ck = open_checkpoint(base), open_checkpoint(tuned)
    cctx = zstd.ZstdCompressor(level=level)
    row = {"n_elements": 0, "n_changed": 0, "n_tensors_whole": 0}
    row.update({f"bytes_{c}": 0 for c in CODECS})
    gran = {g: [0, 0] for g in GRANULARITIES}
    total = sum(i.nbytes for i in t_ck.tensors.values())
    bar = byte_progress(total, f"budget {Path(str(t_ck.source)).name}", enabled=progress)
    with b_ck.reader() as b_r, t_ck.reader() as t_r:
        for name, info in t_ck.tensors.items():
            b_info = b_ck.tensors.get(name)
            if b_info is None or (b_info.dtype, b_info.shape) != (info.dtype, info.shape):
                for c in CODECS:
                    row[f"bytes_{c}"] += info.nbytes
                row["n_tensors_whole"] += 1
                bar.update(info.nbytes)
                continue
            units = _Units.of(info.shape, info.numel, info.itemsize)
            n_changed = 0
            for start in range(0, info.numel, chunk):
                stop = min(info.numel, start + chunk)
                b, t = b_r.words(name, start, stop), t_r.words(name, start, stop)
                k, sizes = codec_bytes(b, t, cctx)
                for c in ("rlsparse", "xor_zstd"):
                    row[f"bytes_{c}"] += sizes[c]
                if k:
                    units.mark(np.flatnonzero(b != t) + start)
                n_changed += k
                b_r.release(name, start, stop)
                t_r.release(name, start, stop)
                bar.update((stop - start) * info.itemsize)
            row["n_elements"] += info.numel
            row["n_changed"] += n_changed
            row["bytes_raw"] += n_changed * (INDEX_BYTES + info.itemsize)
            row["bytes_dense"] += info.nbytes
            gran["element"][0] += info.numel
            gran["element"][1] += info.numel - n_changed
            gran["tensor"][0] += 1
            gran["tensor"][1] += int(n_changed == 0)
            for g, (n, u) in units.counts().items():
                gran[g][0] += n
                gran[g][1] += u
    bar.close()
    return row, {g: (n, u) for g, (n, u) in gran.items()}


@dataclass
class Budget:
    """The sync budget of a series.

    Attributes:
        steps: one row per sync (``step_from``, ``step_to``, ``n_elements``, ``n_changed``,
            ``sparsity_bitwise``, ``bytes_<codec>``, ``B_per_changed_<codec>``).
        granularity: one row per sync and granularity (``n_units``, ``n_unchanged``,
            ``unchanged_fraction``).
        cadence: one row per anchor cadence N and codec: steady-state mean bytes per sync with a
            dense anchor every N syncs (:func:`cadence_table`), and the bandwidth (bytes/s) to
            sync every T seconds for each T.
    """

    steps: pd.DataFrame
    granularity: pd.DataFrame
    cadence: pd.DataFrame
    provenance: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON form: ``schema``, ``steps``, ``granularity``, ``cadence`` (lists of rows),
        ``provenance``."""
        return {
            "schema": SCHEMA,
            **{k: _records(getattr(self, k)) for k in ("steps", "granularity", "cadence")},
            "provenance": self.provenance,
        }

    def save_json(self, path: str | Path) -> None:
        """Write :meth:`to_dict` atomically (gzip when the name ends in ``.gz``)."""
        save_report_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Budget:
        d = load_report_json(path, SCHEMA)
        frames = {k: pd.DataFrame(d[k]) for k in ("steps", "granularity", "cadence")}
        return cls(**frames, provenance=d.get("provenance", {}))


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {str(k): (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
        for r in df.to_dict("records")
    ]


def cadence_table(
    steps: pd.DataFrame, every: list[int], periods: list[float], anchor_bytes: int
) -> pd.DataFrame:
    """Steady-state mean payload per sync when a dense anchor (``anchor_bytes``) replaces every
    N-th sync and the others cost the series' mean sync, per codec:
    ``bytes_per_sync = (anchor + (N − 1) · mean) / N``; ``bytes_per_s_T<T>`` = that / T."""
    rows = []
    for e in every:
        for c in CODECS:
            mean_sync = float(steps[f"bytes_{c}"].mean())
            per = (anchor_bytes + (e - 1) * mean_sync) / e
            row: dict[str, Any] = {"every": e, "codec": c, "bytes_per_sync": per}
            for t in periods:
                row[f"bytes_per_s_T{t:g}"] = per / t
            rows.append(row)
    return pd.DataFrame(rows)


def sync_budget(
    checkpoints: list[str | Path],
    steps: list[int] | None = None,
    every: tuple[int, ...] = (1, 5, 10, 20),
    periods: tuple[float, ...] = (10.0, 60.0, 300.0),
    level: int = LEVEL,
    progress: bool = True,
) -> Budget:
    """The sync budget of a checkpoint series (a run folder, or checkpoints in order)."""
    series = checkpoint_series(checkpoints, steps)
    rows, grows = [], []
    for (s0, p0), (s1, p1) in itertools.pairwise(series):
        row, gran = step_budget(p0, p1, level=level, progress=progress)
        row = {"step_from": s0, "step_to": s1, **row}
        row["sparsity_bitwise"] = sparsity_from_changed(row["n_changed"], row["n_elements"])
        for c in CODECS:
            k = row["n_changed"]
            row[f"B_per_changed_{c}"] = row[f"bytes_{c}"] / k if k else float("nan")
        rows.append(row)
        for g, (n, u) in gran.items():
            grows.append(
                {
                    "step_from": s0,
                    "step_to": s1,
                    "granularity": g,
                    "n_units": n,
                    "n_unchanged": u,
                    "unchanged_fraction": sparsity(u, n),
                }
            )
    table = pd.DataFrame(rows)
    ckpts = [open_checkpoint(p) for _, p in series]
    anchor = int(ckpts[-1].nbytes)
    settings = {"every": list(every), "periods": list(periods), "level": level, "chunk": CHUNK}
    prov = build_provenance(
        "budget",
        settings=settings,
        sources={"series": ckpts},
        steps=[s for s, _ in series],
        budget_settings=settings,
    )
    cadence = cadence_table(table, list(every), list(periods), anchor)
    return Budget(table, pd.DataFrame(grows), cadence, prov)


def budget_from_monitor(
    log: str | Path,
    every: tuple[int, ...] = (1, 5, 10, 20),
    periods: tuple[float, ...] = (10.0, 60.0, 300.0),
) -> Budget:
    """The budget from a run's ``monitor.jsonl`` written with ``SparsityMonitor(codecs=True)``
    (one sync per record; no granularity table: the log holds counts only).

    Raises:
        ConfigError: unreadable log, or records without ``patch_bytes_*``.
    """
    log = Path(log)
    try:
        recs = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{log}: cannot read a monitor log ({exc})") from exc
    if not recs or any("patch_bytes_raw" not in r for r in recs):
        raise ConfigError(f"{log}: monitor records without patch bytes (monitor codecs off)")
    rows = []
    prev = 0
    for r in recs:
        bf16 = "changed_step_bf16" in r
        k = r["changed_step_bf16" if bf16 else "changed_step"]
        row: dict[str, Any] = {"step_from": prev, "step_to": r["step"], "n_elements": r["n_params"]}
        row["n_changed"] = k
        row["sparsity_bitwise"] = sparsity_from_changed(k, r["n_params"])
        for c in CODECS:
            row[f"bytes_{c}"] = r[f"patch_bytes_{c}"]
            row[f"B_per_changed_{c}"] = r[f"patch_bytes_{c}"] / k if k else float("nan")
        rows.append(row)
        prev = r["step"]
    table = pd.DataFrame(rows)
    anchor = int(recs[-1]["patch_bytes_dense"])
    settings = {"every": list(every), "periods": list(periods), "monitor_log": str(log)}
    prov = build_provenance("budget", settings=settings, budget_settings=settings)
    cadence = cadence_table(table, list(every), list(periods), anchor)
    empty = pd.DataFrame(columns=["step_from", "step_to", "granularity", "n_units", "n_unchanged"])
    return Budget(table, empty, cadence, prov)
