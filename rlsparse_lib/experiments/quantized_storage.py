"""14: what a pair's update sparsity becomes when both checkpoints are stored quantized.

Each training run's θ0 and final checkpoint are quantized as DeepSeek-V3 (FP8, 128×128 block
scales), gpt-oss (MXFP4) and llama.cpp (GGUF ``Q8_0``) store weights
(:mod:`rlsparse_lib.io.quantize`), diffed like any quantized pair (on the dequantized values),
and the changed mask of each copy is overlapped with the bf16 pair's: which of the weights that
changed in bf16 the quantized copy still shows.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from rlsparse_lib.analysis.overlap import mask_overlap
from rlsparse_lib.experiments.long_runs import train_long_runs
from rlsparse_lib.experiments.studies import STAGES
from rlsparse_lib.experiments.tables import final_step
from rlsparse_lib.io.checkpoint import open_checkpoint
from rlsparse_lib.io.quantize import quantizable, quantize_checkpoint
from rlsparse_lib.masks.ops import build_mask

#: storage label -> (quantization scheme or None for the bf16 checkpoints as trained, which
#: checkpoint is quantized: the bf16 one or the fp32 master weights, where the run kept them)
STORAGES: dict[str, tuple[str | None, str]] = {
    "bf16": (None, "bf16"),
    "FP8 (DeepSeek)": ("fp8_block", "bf16"),
    "MXFP4": ("mxfp4", "bf16"),
    "GGUF Q8_0": ("gguf_q8_0", "bf16"),
    "FP8 of fp32 masters": ("fp8_block", "fp32"),
}
#: the report's ``quant_summary`` key of each scheme
_SUMMARY_KEYS = {"gguf_q8_0": "gguf:Q8_0"}


def storage_runs(exp, long_steps: int) -> dict:
    """``{label: run}``: 02's stages (one init, equal steps) and, when ``long_steps`` > 0, 13's
    SFT and GRPO runs of ``long_steps`` steps (labelled ``<kind> ×<steps>``)."""
    runs = {stage: exp.run(config) for stage, config in STAGES.items()}
    if long_steps > 0:
        for label, run in train_long_runs(exp, long_steps).items():
            runs[f"{label} ×{final_step(run)}"] = run
    return runs


def storage_rows(exp, runs: dict) -> list[dict]:
    """One row per run and storage (the fp32 masters' copy for runs that kept them): headline
    sparsity of all weights, then over the quantized projections (``proj_*``) the bf16 and the
    stored view's changed counts, how many weights changed in both (``proj_n_both``), the share
    of bf16's changes the stored view shows (``visible``) and of its changes that bf16 also shows
    (``inside``), and the raw view (:func:`_raw_view`)."""
    rows = []
    for label, run in runs.items():
        step = final_step(run)
        kept = {k for c in run.manifest["checkpoints"] if c["step"] in (0, step) for k in c}
        ref_mask = exp.run_mask(run)
        infos = open_checkpoint(run.checkpoint(0)).tensors
        projections = {n for n, i in infos.items() if quantizable(n, i)}
        with tempfile.TemporaryDirectory(prefix="quantized-", dir=exp.paths.data / "cache") as t:
            tmp = Path(t)
            for i, (storage, (scheme, source)) in enumerate(STORAGES.items()):
                if source not in kept:
                    continue
                if scheme is None:
                    report, mask = exp.run_diff(run, run.manifest["name"]), ref_mask
                else:
                    sides = [
                        quantize_checkpoint(
                            run.checkpoint(s, source),
                            tmp / f"{i}-{s}",
                            scheme,
                            rest_dtype="bfloat16",
                            progress=False,
                        )["out"]
                        for s in (0, step)
                    ]
                    mask = tmp / f"{i}-mask.safetensors"
                    report = build_mask(sides[0], sides[1], mask, progress=False)
                table = mask_overlap(ref_mask, mask, progress=False).table
                proj = table[table["name"].isin(projections)]
                rows.append(
                    {"pair": label, "steps": step, "storage": storage}
                    | _headline(report)
                    | _projection_counts(proj)
                    | _raw_view(report, scheme)
                )
    return rows


def _headline(report) -> dict:
    h = report.headline()
    return {
        "n_params": h["n_params"],
        "sparsity_bitwise": h["sparsity_bitwise"],
        "sparsity_tol_1e-05": h["sparsity_tol_1e-05"],
    }


def _projection_counts(proj) -> dict:
    n, n_ref, n_stored, n_both = (int(proj[c].sum()) for c in ("numel", "n1", "n2", "n_both"))
    return {
        "proj_numel": n,
        "proj_changed_bf16": n_ref,
        "proj_changed": n_stored,
        "proj_n_both": n_both,
        "proj_sparsity": 1 - n_stored / n if n else None,
        "visible": n_both / n_ref if n_ref else None,
        "inside": n_both / n_stored if n_stored else None,
    }


def _raw_view(report, scheme: str | None) -> dict:
    """Shares of raw units (codes; GGUF: blocks of 32) and of stored scales (None where the
    scales live inside the blocks) whose bytes differ, and elements changed through their scale
    alone."""
    key = _SUMMARY_KEYS.get(scheme or "", scheme or "")
    q = report.quant_summary().get(key, {})
    return {
        "raw_changed": q["raw_changed"] / q["raw_n"] if q else None,
        "scales_changed": q["scales_changed"] / q["scales_n"] if q.get("scales_n") else None,
        "scale_only_changed": q.get("scale_only_changed"),
    }
