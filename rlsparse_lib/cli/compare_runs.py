"""One row per finished training run: accuracy before/after, rewards, update sparsity, cost.

Reads each run folder's run.json (from `rlsparse train`), prints a Markdown table and writes it
as CSV / Markdown; --dynamics-csv writes every run's in-training monitor records (one row per
recorded step, bf16 and fp32 views).

examples:
  rlsparse compare-runs data/runs/cpu-grpo data/runs/cpu-sft
  rlsparse compare-runs data/runs/cpu-grpo data/runs/cpu-sft \\
      --csv data/results/engine/grpo_vs_sft.csv --md data/results/engine/grpo_vs_sft.md \\
      --dynamics-csv data/results/engine/grpo_vs_sft_dynamics.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run folders (data/runs/NAME)")
    p.add_argument("--csv", type=Path, help="write the summary as CSV here")
    p.add_argument("--md", type=Path, help="write the summary as a Markdown table here")
    p.add_argument("--dynamics-csv", type=Path, help="write every run's monitor records here")
    p.add_argument(
        "-k", type=int, default=5, help="steps averaged for reward_mean_first_k/last (5)"
    )


def run(args: argparse.Namespace) -> int:
    from rlsparse_lib.atomic import write_text_atomic
    from rlsparse_lib.errors import ConfigError
    from rlsparse_lib.training.results import monitor_rows, run_summary, to_csv, to_markdown

    if args.k < 1:
        raise ConfigError(f"-k must be >= 1, got {args.k}")
    rows = [run_summary(r, args.k) for r in args.runs]
    if args.csv:
        write_text_atomic(args.csv, to_csv(rows))
    if args.dynamics_csv:
        dyn = [row for r in args.runs for row in monitor_rows(r)]
        write_text_atomic(args.dynamics_csv, to_csv(dyn, tuple(dyn[0]) if dyn else ()))
    if args.md:
        write_text_atomic(args.md, to_markdown(rows))
    print(to_markdown(rows), end="")
    return 0
