"""Fraction of equal weights between two finetunes of one init (θ_sub vs θ_full; paper §4).

Equal bitwise and at each tolerance (default 1e-5 and 1e-4, the paper's 94%/100%), per tensor and
overall. With --init I: how many weights each run updated, whether A's updates lie inside B's
(subnetwork training must not move weights outside the mask), and the closeness restricted to
weights that either run updated.

examples:
  rlsparse closeness theta_sub/ theta_full/ --init sft/
  rlsparse closeness A/ B/ --tol 1e-6 1e-5 1e-4 --json closeness.json --csv closeness.csv
"""

from __future__ import annotations

import argparse
import sys

from rlsparse_lib.cli.diff import add_selection_arguments
from rlsparse_lib.io.dtypes import COMPARE_DTYPES


def add_arguments(p: argparse.ArgumentParser) -> None:
    from rlsparse_lib.analysis.closeness import DEFAULT_TOLERANCES

    p.add_argument("a", metavar="A", help="first finetune (e.g. θ_sub)")
    p.add_argument("b", metavar="B", help="second finetune (e.g. θ_full)")
    p.add_argument("--init", metavar="I", help="their common init θ0")
    p.add_argument(
        "--tol",
        type=float,
        nargs="+",
        default=list(DEFAULT_TOLERANCES),
        metavar="T",
        help="tolerances besides bitwise (default: %(default)s)",
    )
    p.add_argument("--compare-dtype", choices=COMPARE_DTYPES, default=None)
    add_selection_arguments(p)
    p.add_argument("--workdir", metavar="DIR", help="folder for temporary masks (with --init)")
    p.add_argument("--json", metavar="PATH", help="write the full result as JSON")
    p.add_argument("--csv", metavar="PATH", help="write the per-tensor table (CSV)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from rlsparse_lib.analysis.closeness import closeness
    from rlsparse_lib.atomic import atomic_path

    rep = closeness(
        args.a,
        args.b,
        init=args.init,
        tolerances=tuple(args.tol),
        compare_dtype=args.compare_dtype,
        include=tuple(args.include),
        exclude=tuple(args.exclude),
        workdir=args.workdir,
        progress=not args.quiet,
    )
    if args.json:
        rep.save_json(args.json)
    if args.csv:
        table = rep.table
        assert isinstance(table, pd.DataFrame)
        with atomic_path(args.csv) as tmp:
            table.to_csv(tmp, index=False)
    if not args.quiet:
        s = rep.summary()
        print(f"A: {rep.labels[0]}\nB: {rep.labels[1]}\n{s['n_params']:,} weights compared")
        print(f"{'rule':<16}{'equal':>12}{'among updated':>16}")
        among = s.get("equal_among_updated", {})
        for key, frac in s["equal"].items():
            label = "bitwise" if key == "bitwise" else f"|Δ| ≤ {key.removeprefix('tol_')}"
            other = among.get(key)
            print(
                f"{label:<16}{100 * frac:>11.3f}%"
                + (f"{100 * other:>15.3f}%" if other is not None else f"{'—':>16}")
            )
        u = s.get("updates")
        if u:
            print(
                f"updated vs init: A {u['n_updated_a']:,}, B {u['n_updated_b']:,}, both "
                f"{u['n_updated_both']:,}; A outside B: {u['n_a_outside_b']:,}"
                + (" (A ⊆ B)" if u["a_subset_of_b"] else "")
            )
        for label, path in (("json", args.json), ("csv", args.csv)):
            if path:
                print(f"{label}: {path}")
    sys.stdout.flush()
    return 0
