"""The steps of ``notebooks/10_pair_report.ipynb``: every view of one checkpoint pair.

The notebook diffs ``BASE`` and ``TUNED`` (paths or hub ids, streamed) once, stores the report
under ``data/results/10_pair_report/diffs/pair.json.gz`` and draws its figures from it (the figure
registry, :mod:`rlsparse_lib.experiments.figures`); :func:`registry_rows` finds what the paper and
Path Not Taken report for the same pair in ``data/pairs/*.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rlsparse_lib.errors import ConfigError
from rlsparse_lib.paths import Paths

#: the label of the pair's stored diff report (``diffs/pair.json.gz``)
LABEL = "pair"
#: registries and their section holding pairs
REGISTRIES = {"paper": ("rl", "sft"), "path_not_taken": ("pairs",)}


def parse_tolerances(text: str) -> tuple[float, ...]:
    """``"0,1e-8,1e-5"`` -> ``(0.0, 1e-08, 1e-05)`` (the notebook parameter is a scalar string).

    Raises:
        ConfigError: for an empty list or a value that is not a number >= 0.
    """
    try:
        tols = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ConfigError(f"TOLERANCES={text!r}: expected comma-separated numbers") from None
    if not tols or any(not t >= 0 for t in tols):
        raise ConfigError(f"TOLERANCES={text!r}: expected numbers >= 0")
    return tols


def smoke_pair(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """A tiny bf16 Llama-shaped pair under ``root`` (SMOKE runs): about 3 % of each matrix's
    weights moved by one bf16 ULP, a few by many, norms untouched."""
    from rlsparse_lib.io.synthetic import LlamaShape, base_values, to_bf16_words, write_pair

    shape = LlamaShape(vocab=128, hidden=64, intermediate=96, layers=2, heads=4, kv_heads=2)
    rng = np.random.default_rng(seed)

    def make(name: str, dims: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        base = to_bf16_words(base_values(name, dims, rng)).ravel()
        tuned = base.copy()
        if "norm" not in name:
            hit = rng.random(base.size) < 0.03
            step = np.where(rng.random(base.size) < 0.1, 40, 1).astype(np.uint16)
            tuned[hit] = base[hit] + step[hit]
        return base.reshape(dims), tuned.reshape(dims)

    base_dir, tuned_dir = root / "smoke_pair" / "base", root / "smoke_pair" / "tuned"
    if not (base_dir / "model.safetensors").is_file():
        write_pair(base_dir, tuned_dir, shape.tensors(), make, config=shape.config())
    return base_dir, tuned_dir


def registry_rows(base: str, tuned: str) -> list[dict[str, Any]]:
    """What the registries in ``data/pairs/`` report for this pair (revisions ignored), one row
    per registry entry: ``registry``, ``id``, ``algorithm`` and ``reported_*`` (percent)."""
    from rlsparse_lib.experiments.registry import load_pairs, reported_rows

    def bare(spec: str | None) -> str:
        return (spec or "").split("@")[0]

    rows = []
    for registry, sections in REGISTRIES.items():
        if not (Paths.at().pairs / f"{registry}.yaml").is_file():
            continue
        for section in sections:
            try:
                pairs = load_pairs(registry, section)
            except KeyError:
                continue
            hits = [
                p
                for p in pairs
                if bare(p.get("base")) == bare(base) and bare(p.get("tuned")) == bare(tuned)
            ]
            rows += [{"registry": registry, **r} for r in reported_rows(hits)]
    return rows


def headline_rows(report) -> list[dict[str, Any]]:
    """The headline (canonical keys) and, per side, where the checkpoint came from: source,
    revision, fingerprint and, for a streamed hub id, the pinned commit and bytes fetched."""
    inputs = report.provenance.get("inputs", {})
    rows = [{"field": k, "value": v} for k, v in report.headline().items()]
    for side in ("base", "tuned"):
        d = inputs.get(side, {})
        transport = d.get("transport") or {}
        for key in ("source", "revision", "fingerprint"):
            rows.append({"field": f"{side}.{key}", "value": d.get(key)})
        if transport:
            rows.append({"field": f"{side}.bytes_fetched", "value": transport["bytes_fetched"]})
    prov = report.provenance
    rows += [{"field": k, "value": prov.get(k)} for k in ("tool", "config_hash", "seconds")]
    return rows


def rank_tables(base, tuned, compare_dtype: str | None, device: str | None) -> dict[str, Any]:
    """The update rank of every matrix: ``{"summary": dict, "by_module": DataFrame}``."""
    from rlsparse_lib.analysis.rank import update_ranks

    report = update_ranks(base, tuned, compare_dtype=compare_dtype, device=device, progress=False)
    return {"summary": report.summary(), "by_module": report.by_module()}


def measure(exp, base: str | Path, tuned: str | Path, **config):
    """Diff the pair (hub ids are streamed) with :class:`DiffConfig` fields ``config`` and store
    the report as ``diffs/pair.json.gz`` in the notebook's results (the figures read it)."""
    from rlsparse_lib.diff.config import DiffConfig
    from rlsparse_lib.diff.engine import diff_checkpoints

    report = diff_checkpoints(base, tuned, DiffConfig(**config), progress=False)
    report.save_json(exp.results / "diffs" / f"{LABEL}.json.gz")
    return report
