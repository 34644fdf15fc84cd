"""The table of every run: add or update rows of runs.csv, summarize runs over seeds, and render
the summary into a marked block of the README.

Rows come from finished run folders (their run.json) and from committed `rlsparse compare-runs`
CSVs (--import: runs whose folders are gone; columns those tables lack stay empty). A row replaces
the table's row of the same run; other rows are kept, so the table grows without the old run
folders. The summary groups runs that differ only in seed (same config_id) and gives the mean and
a 95 % Student-t interval of accuracy and sparsity, and the binomial standard error of one run's
accuracy on its eval set.

--claims evaluates the claims of a claims file (data/claims.yaml) on the table: for each, the
groups of runs it compares, the estimate with its 95 % interval (Welch t, prediction interval,
binomial or none, by what the run counts allow), and a verdict (holds, does not hold,
inconclusive, not run yet); with --readme it also rewrites the block between
<!-- claims:begin --> and <!-- claims:end -->. A bad claims file is refused before anything
is written.

examples:
  rlsparse runs-table --import data/results/engine/grpo_vs_sft.csv \\
      --import data/results/engine/cpu_configs.csv
  rlsparse runs-table data/runs/cpu-grpo-eval512-seed* \\
      --summary-csv data/results/engine/runs_summary.csv \\
      --summary-md data/results/engine/runs_summary.md --readme README.md
  rlsparse runs-table --claims data/claims.yaml --claims-csv data/results/engine/claims.csv \\
      --claims-md data/results/engine/claims.md --readme README.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rlsparse_lib.paths import Paths


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "runs", nargs="*", type=Path, metavar="RUN", help="finished run folders (data/runs/NAME)"
    )
    p.add_argument(
        "--import",
        dest="imports",
        action="append",
        type=Path,
        default=[],
        metavar="CSV",
        help="rows of a committed compare-runs CSV (repeatable)",
    )
    p.add_argument(
        "--table",
        type=Path,
        default=Paths.at().results / "engine" / "runs.csv",
        help="the runs table to update (default: data/results/engine/runs.csv)",
    )
    p.add_argument("--summary-csv", type=Path, help="write the seed summary as CSV here")
    p.add_argument("--summary-md", type=Path, help="write the seed summary as Markdown here")
    p.add_argument(
        "--readme",
        type=Path,
        help="replace the text between <!-- runs-table:begin --> and <!-- runs-table:end --> here"
        " (with --claims also between <!-- claims:begin --> and <!-- claims:end -->)",
    )
    p.add_argument(
        "--claims", type=Path, metavar="YAML", help="evaluate the claims of this file on the table"
    )
    p.add_argument("--claims-csv", type=Path, help="write the evaluated claims as CSV here")
    p.add_argument("--claims-md", type=Path, help="write the evaluated claims as Markdown here")
    p.add_argument(
        "-k", type=int, default=5, help="steps averaged for reward_mean_first_k/last (5)"
    )


def run(args: argparse.Namespace) -> int:
    from rlsparse_lib.analysis.claims import evaluate_claims
    from rlsparse_lib.analysis.intervals import CONFIDENCE
    from rlsparse_lib.atomic import check_writable
    from rlsparse_lib.errors import ConfigError
    from rlsparse_lib.experiments.claims_table import CLAIMS_MARKERS, load_claims, save_claims
    from rlsparse_lib.experiments.tables import (
        RUNS_COLUMNS,
        imported_rows,
        marked_span,
        read_runs_table,
        replace_marked_block,
        runs_summary,
        runs_table_row,
        save_summary,
        update_runs_table,
    )

    if args.k < 1:
        raise ConfigError(f"-k must be >= 1, got {args.k}")
    if (args.claims_csv or args.claims_md) and not args.claims:
        raise ConfigError("--claims-csv and --claims-md need --claims FILE")
    for out in (args.table, args.summary_csv, args.summary_md, args.claims_csv, args.claims_md):
        if out:
            check_writable(out)
    read_runs_table(args.table)  # refuse a foreign table, claims file or README before any work
    claims = load_claims(args.claims) if args.claims else None
    if args.readme:
        marked_span(args.readme)
        if claims is not None:
            marked_span(args.readme, CLAIMS_MARKERS)
    new = [row for csv_path in args.imports for row in imported_rows(csv_path)]
    new += [runs_table_row(r, args.k) for r in args.runs]
    rows = update_runs_table(args.table, new) if new else read_runs_table(args.table)
    summary = runs_summary(rows)
    md = save_summary(summary, args.summary_csv, args.summary_md)
    claims_md = None
    if claims is not None:
        results = evaluate_claims(claims, rows)
        claims_md = save_claims(results, args.claims_csv, args.claims_md)
    if args.readme:
        changed = replace_marked_block(args.readme, md)
        print(f"{args.readme}: runs table {'updated' if changed else 'unchanged'}")
        if claims_md is not None:
            changed = replace_marked_block(args.readme, claims_md, CLAIMS_MARKERS)
            print(f"{args.readme}: claims table {'updated' if changed else 'unchanged'}")
    print(md, end="")
    if claims_md is not None:
        print(claims_md, end="")
    print(
        f"{args.table}: {len(rows)} runs ({len(new)} added or updated; {len(RUNS_COLUMNS)} columns); "
        f"{len(summary)} groups, {CONFIDENCE:.0%} Student-t intervals over seeds"
    )
    return 0
