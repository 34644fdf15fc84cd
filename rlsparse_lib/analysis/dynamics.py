"""Training dynamics over an ordered checkpoint series θ0 (init), θ1 … θK (paper App. D, Figs. 2, 5–7).

With M_k = changed(θ0 → θk) and S_k = changed(θ_{k−1} → θk) under one mask rule:

* sparsity vs θ0: ``1 − |M_k| / n`` (Fig. 5, 7a), plus every tolerance of the grid;
* consecutive sparsity: ``1 − |S_k| / n`` (Fig. 7b; PULSE's k-step sparsity for checkpoint steps);
* step overlap ``|S_k ∧ S_{k+1}| / |S_k|`` (the authors' notebook);
* ever updated up to k: ``|M_1 ∨ … ∨ M_k| / n``;
* updated then reverted, "outside the final subnetwork": ``|M_k ∧ ¬M_K| / n`` (Fig. 6);
* parameter fate (Fig. 2): never = ``1 − |∪M_k| / n``, cancelled = ``|∪M_k ∧ ¬M_K| / n``,
  final subnetwork = ``|M_K| / n``. "Ever" is seen at checkpoint granularity: a lower bound.

Everything comes from ONE streaming pass per tensor: each chunk of θ0 … θK is read once, the
engine's diff kernel produces M_k and S_k for it (and their full statistics), and the bit algebra
runs on the packed chunk masks. Memory: one chunk of each checkpoint plus 2K packed chunk masks.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rlsparse_lib.diff.config import DEFAULT_TOLERANCES
from rlsparse_lib.diff.kernels import get_kernel
from rlsparse_lib.diff.kernels.protocol import ChunkSpec
from rlsparse_lib.diff.stats import DiffStats
from rlsparse_lib.errors import ConfigError
from rlsparse_lib.io.checkpoint import Checkpoint, open_checkpoint
from rlsparse_lib.io.chunks import stream_chunks
from rlsparse_lib.io.dtypes import is_float
from rlsparse_lib.io.maskfile import MaskWriter, packed_size
from rlsparse_lib.io.naming import parse_param_name
from rlsparse_lib.io.pairing import TensorPair, pair_checkpoints
from rlsparse_lib.masks import bitops
from rlsparse_lib.progress import byte_progress
from rlsparse_lib.provenance import build_provenance, load_report_json, save_report_json
from rlsparse_lib.rules import MaskRule, sparsity, sparsity_from_changed, tol_key

SCHEMA = "rlsparse.dynamics/1"
_COUNTS = ("n_changed", "n_step", "n_union", "n_outside_final", "n_step_both")


@dataclass
class DynamicsReport:
    """Sparsity dynamics of a checkpoint series.

    Attributes:
        labels: one label per checkpoint θ1 … θK.
        steps: training step of each checkpoint (for plots), or None.
        rule: the mask rule defining "changed".
        tolerances: the tolerance grid of the per-checkpoint statistics.
        names, numel: compared tensors (T) and their sizes.
        counts: int64[T, K] arrays: ``n_changed`` |M_k|, ``n_step`` |S_k|, ``n_union`` |M_1∨…∨M_k|,
            ``n_outside_final`` |M_k ∧ ¬M_K|, ``n_step_both`` |S_k ∧ S_{k+1}| (0 for k = K).
        vs_init, vs_prev: merged :class:`DiffStats` of θ0→θk and θ_{k−1}→θk for each k.
        skipped: ``{name, reason}`` for tensors not compared.
        provenance: inputs, rule, dtypes, timing.
    """

    labels: list[str]
    steps: list[float] | None
    rule: MaskRule
    tolerances: tuple[float, ...]
    names: list[str]
    numel: np.ndarray
    counts: dict[str, np.ndarray]
    vs_init: list[DiffStats]
    vs_prev: list[DiffStats]
    skipped: list[dict] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)

    @property
    def n_params(self) -> int:
        return int(self.numel.sum())

    def series(self):
        """One row per checkpoint k = 1 … K.

        Columns: ``k, label, step``, ``n_changed, sparsity`` (vs θ0, mask rule),
        ``sparsity_bitwise`` and ``sparsity_tol_<t>`` for the grid (vs θ0), ``n_step,
        step_sparsity`` (vs θ_{k−1}), ``step_overlap``, ``n_union, union_fraction``,
        ``n_outside_final, outside_final_fraction``.
        """
        import pandas as pd

        n = self.n_params
        tot = {key: arr.sum(axis=0) for key, arr in self.counts.items()}
        rows = []
        for k, label in enumerate(self.labels):
            s = self.vs_init[k]
            row = {
                "k": k + 1,
                "label": label,
                "step": self.steps[k] if self.steps else None,
                "n_changed": int(tot["n_changed"][k]),
                "sparsity": sparsity_from_changed(tot["n_changed"][k], n),
                "sparsity_bitwise": sparsity_from_changed(s.n_changed, n),
            }
            for j, t in enumerate(self.tolerances):
                row[f"sparsity_tol_{tol_key(t)}"] = sparsity(s.n_unchanged_at(j), n)
            n_step = int(tot["n_step"][k])
            row.update(
                {
                    "n_step": n_step,
                    "step_sparsity": sparsity_from_changed(n_step, n),
                    "step_overlap": _frac(tot["n_step_both"][k], n_step)
                    if k + 1 < len(self.labels)
                    else None,
                    "n_union": int(tot["n_union"][k]),
                    "union_fraction": _frac(tot["n_union"][k], n),
                    "n_outside_final": int(tot["n_outside_final"][k]),
                    "outside_final_fraction": _frac(tot["n_outside_final"][k], n),
                }
            )
            rows.append(row)
        return pd.DataFrame(rows)

    def fate(self) -> dict:
        """Fig. 2 split: counts and fractions of never / cancelled / final-subnetwork weights."""
        n = self.n_params
        final = int(self.counts["n_changed"][:, -1].sum())
        union = int(self.counts["n_union"][:, -1].sum())
        counts = {"never": n - union, "cancelled": union - final, "final": final}
        return {
            "n_params": n,
            **{f"n_{k}": v for k, v in counts.items()},
            **{k: _frac(v, n) for k, v in counts.items()},
        }

    def fate_by(self, by: str = "tensor"):
        """Fate fractions per ``tensor``, ``layer``, ``module`` or ``group``."""
        import pandas as pd

        df = pd.DataFrame(
            {
                "name": self.names,
                "numel": self.numel,
                "n_final": self.counts["n_changed"][:, -1],
                "n_union": self.counts["n_union"][:, -1],
            }
        )
        for key in ("group", "module", "layer"):
            df.insert(1, key, [getattr(parse_param_name(n), key) for n in self.names])
        if by != "tensor":
            if by not in ("layer", "module", "group"):
                raise ConfigError(f"cannot group by {by!r} (use tensor, layer, module or group)")
            df = df.groupby(by, dropna=False, sort=True)[["numel", "n_final", "n_union"]].sum()
            df = df.reset_index()
            if by == "layer":
                df["layer"] = df["layer"].astype("Int64")
        num = df["numel"].where(df["numel"] > 0)
        df["never"] = 1 - df["n_union"] / num
        df["cancelled"] = (df["n_union"] - df["n_final"]) / num
        df["final"] = df["n_final"] / num
        return df

    def to_dict(self) -> dict:
        """JSON form (schema ``rlsparse.dynamics/1``; see docs/analytics.md)."""
        series = json.loads(self.series().to_json(orient="records"))
        per_tensor = []
        for t, name in enumerate(self.names):
            d = {"name": name, "numel": int(self.numel[t])}
            d.update({key: [int(v) for v in arr[t]] for key, arr in self.counts.items()})
            per_tensor.append(d)
        return {
            "schema": SCHEMA,
            "n_params": self.n_params,
            "n_checkpoints": len(self.labels),
            "labels": list(self.labels),
            "steps": None if self.steps is None else [float(x) for x in self.steps],
            "rule": {"kind": self.rule.kind, "tol": self.rule.tol},
            "tolerances": [float(t) for t in self.tolerances],
            "checkpoints": series,
            "fate": self.fate(),
            "per_module": json.loads(self.fate_by("module").to_json(orient="records")),
            "per_layer": json.loads(self.fate_by("layer").to_json(orient="records")),
            "tensors": per_tensor,
            "stats": {
                "vs_init": [s.to_dict() for s in self.vs_init],
                "vs_prev": [s.to_dict() for s in self.vs_prev],
            },
            "skipped": self.skipped,
            "provenance": self.provenance,
        }

    def save_json(self, path: str | Path) -> None:
        """Write :meth:`to_dict` atomically (gzip when the name ends in ``.gz``)."""
        save_report_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> DynamicsReport:
        """Rebuild a report from its JSON form (needs ``labels``, ``tensors`` and ``stats``)."""
        if d.get("schema") != SCHEMA or "stats" not in d:
            raise ConfigError(f"not a loadable {SCHEMA} report (schema {d.get('schema')!r})")
        tensors = d["tensors"]
        k = len(d["labels"])
        keys = [key for key in tensors[0] if key not in ("name", "numel")] if tensors else []
        counts = {
            key: np.asarray([t[key] for t in tensors], np.int64).reshape(len(tensors), k)
            for key in keys
        }
        return cls(
            labels=list(d["labels"]),
            steps=None if d.get("steps") is None else [float(x) for x in d["steps"]],
            rule=MaskRule(d["rule"]["kind"], float(d["rule"]["tol"])),
            tolerances=tuple(float(t) for t in d["tolerances"]),
            names=[t["name"] for t in tensors],
            numel=np.asarray([t["numel"] for t in tensors], np.int64),
            counts=counts,
            vs_init=[DiffStats.from_dict(s) for s in d["stats"]["vs_init"]],
            vs_prev=[DiffStats.from_dict(s) for s in d["stats"]["vs_prev"]],
            skipped=list(d.get("skipped", [])),
            provenance=dict(d.get("provenance", {})),
        )

    @classmethod
    def load(cls, path: str | Path) -> DynamicsReport:
        """Read a report saved by :meth:`save_json` (schema checked, the file named)."""
        d = load_report_json(path, SCHEMA)
        if "stats" not in d:
            raise ConfigError(f"{path}: a {SCHEMA} report without its statistics (an old file)")
        return cls.from_dict(d)


def _frac(a, b) -> float | None:
    return float(a) / float(b) if b else None


def sparsity_dynamics(
    init: str | Path | Checkpoint,
    checkpoints: Sequence[str | Path | Checkpoint],
    *,
    labels: Sequence[str] | None = None,
    steps: Sequence[float] | None = None,
    rule: MaskRule | None = None,
    tolerances: tuple[float, ...] = DEFAULT_TOLERANCES,
    rel_eta: float = 1e-3,
    compare_dtype: str | None = None,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    final_mask_out: str | Path | None = None,
    union_mask_out: str | Path | None = None,
    chunk_elems: int = 1 << 22,
    threads: int | None = None,
    progress: bool = True,
) -> DynamicsReport:
    """Dynamics of θ1 … θK relative to θ0 and to each predecessor, in one streaming pass.

    Args:
        init: θ0; checkpoints: θ1 … θK in training order (K >= 1).
        labels: one per checkpoint (default: their sources); steps: their training steps.
        rule: what counts as changed for masks, union and fate (default bitwise).
        tolerances, rel_eta, compare_dtype, include, exclude: as :class:`DiffConfig`.
        final_mask_out: write M_K (the final subnetwork) as a mask file.
        union_mask_out: write ∪_k M_k (ever updated) as a mask file.
        chunk_elems: elements per chunk (multiple of 8).

    Raises:
        ConfigError: no checkpoints, bad labels/steps; PairingError: nothing comparable.
    """
    rule = rule or MaskRule()
    if not checkpoints:
        raise ConfigError("dynamics needs at least one checkpoint after θ0")
    if chunk_elems < 8 or chunk_elems % 8:
        raise ConfigError(f"chunk_elems must be a positive multiple of 8, got {chunk_elems}")
    t0 = time.perf_counter()
    init_ck = open_checkpoint(init)
    cks = [open_checkpoint(c) for c in checkpoints]
    k_n = len(cks)
    labels = [str(x) for x in (labels or [c.source for c in cks])]
    if len(labels) != k_n:
        raise ConfigError(f"{k_n} checkpoints but {len(labels)} labels")
    if steps is not None and len(steps) != k_n:
        raise ConfigError(f"{k_n} checkpoints but {len(steps)} steps")
    pairs, skipped = _plan_series(init_ck, cks, compare_dtype, include, exclude)
    tols = np.asarray(sorted({float(t) for t in tolerances}), np.float64)
    kernel = get_kernel("cpu", threads)
    n_t = len(pairs)
    counts = {key: np.zeros((n_t, k_n), np.int64) for key in _COUNTS}
    vs_init = [DiffStats.empty(tols.size) for _ in cks]
    vs_prev = [DiffStats.empty(tols.size) for _ in cks]
    shapes = {p.name: p.compared_shape for p in pairs}
    total = sum(
        p.numel * (p.base.itemsize + sum(c.tensors[p.name].itemsize for c in cks)) for p in pairs
    )
    bar = byte_progress(total, "dynamics", progress)
    sources = {"init": _src(init_ck), "series": [_src(c) for c in cks]}
    with contextlib.ExitStack() as stack:
        writers = {}
        for key, path in (("final", final_mask_out), ("union", union_mask_out)):
            if path is not None:
                doc = {"kind": rule.kind, "tol": rule.tol, "series": key}
                writers[key] = stack.enter_context(MaskWriter(path, shapes, doc, sources))
        r0 = stack.enter_context(init_ck.reader())
        readers = [stack.enter_context(c.reader()) for c in cks]
        stack.callback(bar.close)
        for t, pair in enumerate(pairs):
            assert pair.compare_dtype is not None  # the series holds float pairs only
            # θ0, θ1 … θK: words[0] is θ0, words[k + 1] is θ(k+1), all cast to the compare dtype
            stored = [pair.base.dtype] + [c.tensors[pair.name].dtype for c in cks]
            chunks = stream_chunks(
                pair.name,
                pair.numel,
                [r0, *readers],
                chunk_elems,
                stored=stored,
                compare=pair.compare_dtype,
                on_bytes=bar.update,
            )
            for chunk in chunks:
                masks_init, masks_step = [], []
                w0 = chunk.words[0]
                for k in range(k_n):
                    prev, wk = chunk.words[k], chunk.words[k + 1]
                    m_init = np.zeros(packed_size(chunk.numel), np.uint8)
                    m_step = np.zeros_like(m_init)
                    spec0 = ChunkSpec(pair.compare_dtype, pair.base.dtype, tols, rel_eta, rule)
                    spec1 = ChunkSpec(pair.compare_dtype, stored[k], tols, rel_eta, rule)
                    vs_init[k] = vs_init[k].merge(kernel.diff_chunk(w0, wk, spec0, m_init))
                    vs_prev[k] = vs_prev[k].merge(kernel.diff_chunk(prev, wk, spec1, m_step))
                    masks_init.append(m_init)
                    masks_step.append(m_step)
                del w0, prev, wk
                union = _chunk_counts(masks_init, masks_step, counts, t)
                if "final" in writers:
                    writers["final"].write(pair.name, masks_init[-1])
                if "union" in writers:
                    writers["union"].write(pair.name, union)
    init_desc, ck_desc = init_ck.describe(), [c.describe() for c in cks]
    settings = {
        "rule": {"kind": rule.kind, "tol": rule.tol},
        "tolerances": [float(t) for t in tols],
        "rel_eta": rel_eta,
        "compare_dtype": compare_dtype,
        "include": list(include),
        "exclude": list(exclude),
    }
    sources = {"init": init_desc, "checkpoints": ck_desc}
    provenance = build_provenance("dynamics", settings=settings, sources=sources) | {
        "init": init_desc,
        "checkpoints": ck_desc,
        "rule": rule.describe(),
        "compare_dtype_policy": compare_dtype or "init stored dtype",
        "kernel": kernel.name,
        "chunk_elems": chunk_elems,
        "masks_out": {"final": _str(final_mask_out), "union": _str(union_mask_out)},
        "ever_updated": "observed at checkpoint granularity (a lower bound)",
        "seconds": time.perf_counter() - t0,
    }
    return DynamicsReport(
        labels=labels,
        steps=[float(s) for s in steps] if steps is not None else None,
        rule=rule,
        tolerances=tuple(float(t) for t in tols),
        names=[p.name for p in pairs],
        numel=np.array([p.numel for p in pairs], np.int64),
        counts=counts,
        vs_init=vs_init,
        vs_prev=vs_prev,
        skipped=skipped,
        provenance=provenance,
    )


def _chunk_counts(masks_init, masks_step, counts, t) -> np.ndarray:
    """Bit algebra of one chunk's packed masks; returns the chunk's union mask."""
    final = masks_init[-1]
    not_final = np.bitwise_not(final)
    union = np.zeros_like(final)
    k_n = len(masks_init)
    for k in range(k_n):
        m = masks_init[k]
        np.bitwise_or(union, m, out=union)
        counts["n_changed"][t, k] += bitops.popcount(m)
        counts["n_step"][t, k] += bitops.popcount(masks_step[k])
        counts["n_union"][t, k] += bitops.popcount(union)
        counts["n_outside_final"][t, k] += bitops.and_popcount(m, not_final)
        if k + 1 < k_n:
            counts["n_step_both"][t, k] += bitops.and_popcount(masks_step[k], masks_step[k + 1])
    return union


def _plan_series(
    init: Checkpoint,
    cks: list[Checkpoint],
    compare_dtype: str | None,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
) -> tuple[list[TensorPair], list[dict]]:
    """Float tensors of θ0 ↔ θK that every checkpoint holds with θK's shape."""
    plan = pair_checkpoints(init, cks[-1], compare_dtype, include, exclude)
    skipped = [{"name": s.name, "reason": s.reason} for s in plan.skipped]
    pairs = []
    for p in plan.pairs:
        why = None if p.kind == "float" else "not a float tensor"
        for k, c in enumerate(cks[:-1]):
            info = c.tensors.get(p.name)
            if why is None and (info is None or info.shape != p.tuned.shape):
                found = "missing" if info is None else f"shape {list(info.shape)}"
                why = f"{found} in checkpoint {k + 1} ({c.source})"
        if why is None and not all(is_float(c.tensors[p.name].dtype) for c in cks):
            why = "not a float tensor in every checkpoint"
        if why:
            skipped.append({"name": p.name, "reason": why})
        else:
            pairs.append(p)
    if not pairs:
        raise ConfigError(
            f"no float tensor is comparable across the whole series from {init.source}"
        )
    return pairs, skipped


def _src(ck: Checkpoint) -> dict:
    return {"source": ck.source, "fingerprint": ck.fingerprint(), "revision": ck.revision}


def _str(p: str | Path | None) -> str | None:
    return None if p is None else str(p)
