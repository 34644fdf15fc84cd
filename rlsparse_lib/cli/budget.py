"""The weight-sync budget of a checkpoint series: payload per codec, anchor cadence, bandwidth,
and multi-granularity sparsity of each step's delta.

Per sync θ_t → θ_{t+1}: bytes of ``raw`` (int32 index + value), ``rlsparse`` (the patch codec),
``xor_zstd`` (XOR of whole tensors + zstd) and ``dense``; bytes per changed element; the unchanged
fraction per element, row, column, 128×128 block, 64 KiB chunk and tensor. Per anchor cadence N
(a dense anchor every N syncs): mean bytes per sync and the bandwidth to sync every T seconds.

examples:
  rlsparse budget runs/grpo/                       # a run folder of step_N / checkpoint-N
  rlsparse budget runs/grpo/monitor.jsonl          # a run's monitor log (monitor codecs on)
  rlsparse budget c0/ c1/ c2/ --steps 0 10 20 --every 1 10 --period 10 60 --json budget.json
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("series", nargs="+", metavar="SERIES", help="a run folder, or checkpoints")
    p.add_argument("--steps", nargs="+", type=int, metavar="STEP", help="step per checkpoint")
    p.add_argument(
        "--every",
        nargs="+",
        type=int,
        default=[1, 5, 10, 20],
        metavar="N",
        help="anchor cadences (default 1 5 10 20)",
    )
    p.add_argument(
        "--period",
        nargs="+",
        type=float,
        default=[10.0, 60.0, 300.0],
        metavar="T",
        help="sync periods in seconds (default 10 60 300)",
    )
    p.add_argument("--level", type=int, default=3, help="zstandard level (default 3)")
    p.add_argument("--json", metavar="PATH", help="write the report (schema rlsparse.budget/1)")
    p.add_argument("--csv", metavar="PATH", help="write the per-sync table (CSV)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from rlsparse_lib.atomic import atomic_path
    from rlsparse_lib.errors import ConfigError
    from rlsparse_lib.patches.budget import CODECS, budget_from_monitor, sync_budget

    if any(n < 1 for n in args.every) or any(t <= 0 for t in args.period):
        raise ConfigError("--every must be >= 1 and --period > 0")
    if len(args.series) == 1 and args.series[0].endswith(".jsonl"):
        bud = budget_from_monitor(args.series[0], tuple(args.every), tuple(args.period))
    else:
        bud = sync_budget(
            args.series,
            steps=args.steps,
            every=tuple(args.every),
            periods=tuple(args.period),
            level=args.level,
            progress=not args.quiet,
        )
    if args.json:
        bud.save_json(args.json)
    if args.csv:
        with atomic_path(args.csv) as tmp:
            bud.steps.to_csv(tmp, index=False)
    s = bud.steps
    show = s[["step_from", "step_to", "n_changed", "sparsity_bitwise"]].copy()
    show["sparsity_bitwise"] = 100 * show["sparsity_bitwise"]
    for c in CODECS[:-1]:
        show[c] = s[f"B_per_changed_{c}"]
    print("per sync: sparsity (%) and B per changed element")
    print(show.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    if len(bud.granularity):
        g = bud.granularity.pivot_table(
            index=["step_from", "step_to"], columns="granularity", values="unchanged_fraction"
        )
        print("unchanged fraction (%) per granularity")
        print((100 * g).to_string(float_format=lambda x: f"{x:.2f}"))
    cad = bud.cadence.pivot_table(index="every", columns="codec", values="bytes_per_sync")
    print("mean MB per sync with a dense anchor every N syncs")
    print((cad / 1e6).to_string(float_format=lambda x: f"{x:.3f}"))
    for path in (args.json, args.csv):
        if path:
            print(f"wrote {path}")
    return 0
