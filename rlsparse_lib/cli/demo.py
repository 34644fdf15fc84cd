"""The main job on the embedded default: the quickstart notebook (notebooks/00_quickstart.ipynb).

From one init (SmolLM2-135M-Instruct, embedded), an SFT run and a GRPO run of equal steps on easy
arithmetic (CPU budget: about 15 minutes on 2 cores; finished runs are reused), each diffed
against the init: the sparsity table, the layer x module figure and the precision view. The
executed notebook, figures and tables land under the output root (the repository by default).
The CPU's bf16 verdict is printed first and each run's compute dtype last: on a CPU without
native bf16 (RLSPARSE_CPU_BF16=native|emulated overrides the detection) the runs compute in fp32
at full speed, with fp32 master weights and bf16 checkpoints as always.

--synthetic instead diffs a generated SmolLM2-shaped pair whose "finetuned" side mimics RL with
fp32 master weights saved in bf16 (seconds, no training): sparsity from bf16 absorption alone.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--synthetic", action="store_true", help="diff a generated pair instead (no training)"
    )
    p.add_argument(
        "--out-root",
        default=None,
        help="output root (default: the repository; smoke runs: data/cache/smoke/)",
    )
    p.add_argument("--smoke", action="store_true", help="tiny random model, 2 steps (seconds)")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from rlsparse_lib.paths import Paths

    if args.synthetic:
        return _synthetic(Paths.at(args.out_root).root / "data" / "demo", args.seed)
    import json

    from rlsparse_lib.experiments.context import output_paths
    from rlsparse_lib.experiments.papermill_runner import run_notebooks
    from rlsparse_lib.rules import PAPER_SPARSITY
    from rlsparse_lib.training.cpu_compute import detect_cpu_bf16
    from rlsparse_lib.training.precision_modes import cpu_line

    params = {"SEED": args.seed} if args.seed else {}
    print(cpu_line(detect_cpu_bf16()), flush=True)
    print(
        "running notebooks/00_quickstart.ipynb: an SFT and a GRPO run from one init, each diffed "
        "against it (about 10 min on 2 CPU cores; finished runs are reused) ...",
        flush=True,
    )
    paths = output_paths(args.out_root, args.smoke)
    (executed,) = run_notebooks("00", params, smoke=args.smoke, out_root=args.out_root, log=False)
    record = json.loads((paths.results / "00_quickstart" / "record.json").read_text())
    print(f"\nexecuted notebook: {executed}")
    for run_name, r in record["runs"].items():
        print(
            f"  {run_name:<5} update sparsity {r['sparsity_bitwise']:.2%} bitwise, "
            f"{r[PAPER_SPARSITY]:.2%} at 1e-5; "
            f"accuracy {r['acc_before']:.3f} -> {r['acc_after']:.3f}"
        )
    for line in _compute_lines(paths):
        print(f"  {line}")
    print(f"tables:  {paths.results / '00_quickstart'}")
    for fig in record["figures"]:
        print(f"figure:  {paths.figures / fig}.png (.pdf)")
    print("open it: jupyter lab notebooks/00_quickstart.ipynb")
    return 0


def _compute_lines(paths) -> list[str]:
    """``run: compute …`` for each run the notebook used (from its table and run manifests)."""
    import csv
    import json

    from rlsparse_lib.training.precision_modes import compute_line

    table = paths.results / "00_quickstart" / "sparsity.csv"
    if not table.is_file():
        return []
    lines = []
    with table.open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            manifest = paths.runs / row["name"] / "run.json"
            if manifest.is_file():
                m = json.loads(manifest.read_text(encoding="utf-8"))
                lines.append(f"{row['run']:<5} {compute_line(m)}")
    return lines


def _synthetic(out: Path, seed: int) -> int:
    from rlsparse_lib.diff.engine import diff_checkpoints
    from rlsparse_lib.diff.report import format_summary
    from rlsparse_lib.io.synthetic import LlamaShape, fp32_master_update, write_pair

    shape = LlamaShape(
        vocab=49152,
        hidden=576,
        intermediate=1536,
        layers=30,
        heads=9,
        kv_heads=3,
        tie_embeddings=True,
    )
    base, tuned = out / "pair" / "base", out / "pair" / "tuned"
    print(
        f"writing a {shape.n_params / 1e6:.0f}M-parameter demo pair to {out / 'pair'} ...",
        flush=True,
    )
    write_pair(
        base,
        tuned,
        shape.tensors(),
        fp32_master_update(1e-6, 200, seed=seed),
        shards=2,
        config=shape.config(),
    )
    report = diff_checkpoints(base, tuned)
    report.save_json(out / "report.json")
    report.save_table(out / "tensors.csv")
    print(format_summary(report))
    print("\nchanged fraction by |θ0| binade (precision view: large weights absorb small updates)")
    print(report.binade_table().to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    print(f"\nreport: {out / 'report.json'}   per-tensor table: {out / 'tensors.csv'}")
    return 0
