"""The main job on the embedded default: a generated demo pair, diffed with its summary table.

The pair has SmolLM2-135M's shapes; the "finetuned" side mimics RL with fp32 master weights saved
in bf16 (Adam-like steps of size ~lr): updates smaller than half a bf16 ULP are absorbed, so the
diff shows update sparsity that comes from precision alone, rising with |θ0|.
Outputs go to data/demo/ (report.json, tensors.csv).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out", type=Path, default=Path("data/demo"), help="output folder (default: %(default)s)"
    )
    p.add_argument(
        "--lr",
        type=float,
        default=1e-6,
        help="simulated per-step update size (default: %(default)s)",
    )
    p.add_argument(
        "--steps", type=int, default=200, help="simulated optimizer steps (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from ..engine import diff_checkpoints
    from ..summary import format_summary
    from ..synthetic import LlamaShape, fp32_master_update, write_pair

    shape = LlamaShape(
        vocab=49152,
        hidden=576,
        intermediate=1536,
        layers=30,
        heads=9,
        kv_heads=3,
        tie_embeddings=True,
    )
    base, tuned = args.out / "pair" / "base", args.out / "pair" / "tuned"
    print(
        f"writing a {shape.n_params / 1e6:.0f}M-parameter demo pair to {args.out / 'pair'} ...",
        flush=True,
    )
    write_pair(
        base,
        tuned,
        shape.tensors(),
        fp32_master_update(args.lr, args.steps, seed=args.seed),
        shards=2,
        config=shape.config(),
    )
    report = diff_checkpoints(base, tuned)
    report.save_json(args.out / "report.json")
    report.save_table(args.out / "tensors.csv")
    print(format_summary(report))
    print("\nchanged fraction by |θ0| binade (precision view: large weights absorb small updates)")
    print(report.binade_table().to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    print(f"\nreport: {args.out / 'report.json'}   per-tensor table: {args.out / 'tensors.csv'}")
    return 0
