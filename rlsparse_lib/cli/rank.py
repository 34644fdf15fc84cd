"""Rank of each 2-D update ΔW = W_tuned − W_base (paper §3, Table 2).

Δ is taken in float32 from the compare-dtype values; one SVD per matrix gives the numerical rank
(default rule: torch.linalg.matrix_rank's, σ > σ_max·max(m,n)·ε, as the paper), rank as % of
min(m, n), the effective rank at 99% spectral energy and the stable rank ‖Δ‖_F²/σ_max².
Default selection = the paper's: every ≥2-D tensor whose name lacks "layernorm" (embeddings and
lm_head kept). Runs on CUDA when available, else on CPU (--workers matrices in parallel).

examples:
  rlsparse rank base/ dpo/ --json rank.json
  rlsparse rank base/ dpo/ --no-embeddings --no-lm-head --rtol-grid 1e-6 1e-4 --workers 2
  rlsparse rank base/ dpo/ --json rank.json --resume rank.resume/ --cluster ray --threads 4
"""

from __future__ import annotations

import argparse
import sys

from rlsparse_lib.cli.diff import add_selection_arguments, add_unit_arguments
from rlsparse_lib.io.dtypes import COMPARE_DTYPES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("base", metavar="BASE", help="base checkpoint θ0")
    p.add_argument("tuned", metavar="TUNED", help="finetuned checkpoint θ1")
    p.add_argument("--json", metavar="PATH", help="write the full result as JSON")
    p.add_argument("--csv", metavar="PATH", help="write the per-matrix table (CSV)")
    p.add_argument("--atol", type=float, default=None, help="absolute singular-value threshold")
    p.add_argument("--rtol", type=float, default=None, help="relative threshold (× σ_max)")
    p.add_argument(
        "--rtol-grid",
        type=float,
        nargs="+",
        default=[],
        metavar="R",
        help="extra ranks at these rtols",
    )
    p.add_argument(
        "--energy", type=float, default=0.99, help="effective-rank energy (default: %(default)s)"
    )
    p.add_argument("--no-embeddings", action="store_true", help="skip input embeddings")
    p.add_argument("--no-lm-head", action="store_true", help="skip the output head")
    p.add_argument(
        "--keep-layernorm", action="store_true", help="do not skip names containing 'layernorm'"
    )
    add_selection_arguments(p)
    p.add_argument("--compare-dtype", choices=COMPARE_DTYPES, default=None)
    p.add_argument(
        "--svd-dtype",
        choices=("float32", "float64"),
        default="float32",
        help="default: %(default)s",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="matrices ranked in parallel on CPU, one thread each by default (default: min(4, cores))",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads in total")
    p.add_argument("--plot", metavar="PATH", help="save rank bars per module (PNG + PDF)")
    add_unit_arguments(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")


def run(args: argparse.Namespace) -> int:
    from rlsparse_lib.analysis.rank import RankRule, RankSelection, update_ranks
    from rlsparse_lib.atomic import atomic_path

    selection = RankSelection(
        skip_substrings=() if args.keep_layernorm else ("layernorm",),
        embeddings=not args.no_embeddings,
        lm_head=not args.no_lm_head,
        include=tuple(args.include),
        exclude=tuple(args.exclude),
    )
    report = update_ranks(
        args.base,
        args.tuned,
        selection=selection,
        rule=RankRule(args.atol, args.rtol),
        energy=args.energy,
        rtol_grid=args.rtol_grid,
        compare_dtype=args.compare_dtype,
        svd_dtype=args.svd_dtype,
        device=args.device,
        workers=args.workers,
        threads=args.threads,
        progress=not args.quiet,
        max_unit_bytes=args.unit_bytes,
        resume=args.resume,
        cluster=args.cluster,
    )
    if args.json:
        report.save_json(args.json)
    if args.csv:
        with atomic_path(args.csv) as tmp:
            report.table().to_csv(tmp, index=False)
    if args.plot:
        from rlsparse_lib.plotting import plot_rank_bars, save_figure

        save_figure(plot_rank_bars(report.by_module()), args.plot, provenance={"command": "rank"})
    if not args.quiet:
        s = report.summary()
        prov = report.provenance
        print(f"rule: {prov['rule']}; SVD in {prov['svd_dtype']} on {prov['device']}")
        apart = [
            f"{s[k]} {what}, not in the means"
            for k, what in (("n_zero_delta", "with ΔW = 0"), ("n_nonfinite", "with non-finite ΔW"))
            if s.get(k)
        ]
        if s["n_matrices"]:
            print(
                f"{s['n_matrices']} matrices: mean rank {s['mean_rank_pct']:.2f}% of max "
                f"(min {s['min_rank_pct']:.2f}%, {s['n_full_rank']} full rank); mean effective "
                f"rank ({args.energy:.0%} energy) {s['mean_effective_rank_pct']:.2f}%"
                + "".join(f"; {a}" for a in apart)
            )
            print(report.by_module().to_string(index=False, float_format=lambda x: f"{x:.2f}"))
        else:
            print("no matrix with a nonzero ΔW" + "".join(f"; {a}" for a in apart))
        print(f"skipped {len(report.skipped)} tensors; took {prov['seconds']:.1f} s")
        for label, path in (("json", args.json), ("csv", args.csv), ("plot", args.plot)):
            if path:
                print(f"{label}: {path}")
    sys.stdout.flush()
    return 0
