"""Sparsity dynamics over an ordered checkpoint series θ0 (INIT) … θK (paper App. D, Figs. 2, 5–7).

One streaming pass per tensor over all checkpoints gives, per checkpoint k: sparsity vs θ0,
sparsity vs θ_{k−1}, the step overlap |S_k ∧ S_{k+1}|/|S_k|, the ever-updated union and the weights
updated at k but unchanged in the final model (Fig. 6); and the parameter fate (Fig. 2): never
updated / updated then cancelled / final subnetwork.

examples:
  rlsparse dynamics sft/ ckpt-100/ ckpt-200/ ckpt-300/ --steps 100 200 300 --json dyn.json
  rlsparse dynamics base/ c1/ c2/ c3/ --tol 1e-5 --final-mask final.mask.safetensors --plot figs/dyn
  rlsparse dynamics init/ ckpt-*/ --json dyn.json --resume dyn.resume/ --cluster ray
"""

from __future__ import annotations

import argparse
import sys

from rlsparse_lib.cli.diff import add_selection_arguments, add_unit_arguments
from rlsparse_lib.cli.mask import add_rule_arguments, rule_from_args
from rlsparse_lib.io.dtypes import COMPARE_DTYPES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("init", metavar="INIT", help="θ0, the checkpoint training started from")
    p.add_argument("checkpoints", nargs="+", metavar="CKPT", help="θ1 … θK in training order")
    p.add_argument("--labels", nargs="+", metavar="LABEL", help="one label per CKPT")
    p.add_argument("--steps", nargs="+", type=float, metavar="STEP", help="training step per CKPT")
    add_rule_arguments(p)
    p.add_argument("--compare-dtype", choices=COMPARE_DTYPES, default=None)
    add_selection_arguments(p)
    p.add_argument("--final-mask", metavar="PATH", help="write the final subnetwork mask")
    p.add_argument("--union-mask", metavar="PATH", help="write the ever-updated mask")
    p.add_argument("--json", metavar="PATH", help="write the full result as JSON")
    p.add_argument("--csv", metavar="PATH", help="write the per-checkpoint series (CSV)")
    p.add_argument("--plot", metavar="PATH", help="save Figs. 5–7 (and PATH_fate for Fig. 2)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    add_unit_arguments(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")


def run(args: argparse.Namespace) -> int:
    from rlsparse_lib.analysis.dynamics import sparsity_dynamics
    from rlsparse_lib.atomic import atomic_path

    dyn = sparsity_dynamics(
        args.init,
        args.checkpoints,
        labels=args.labels,
        steps=args.steps,
        rule=rule_from_args(args),
        compare_dtype=args.compare_dtype,
        include=tuple(args.include),
        exclude=tuple(args.exclude),
        final_mask_out=args.final_mask,
        union_mask_out=args.union_mask,
        threads=args.threads,
        progress=not args.quiet,
        max_unit_bytes=args.unit_bytes,
        resume=args.resume,
        cluster=args.cluster,
    )
    if args.json:
        dyn.save_json(args.json)
    if args.csv:
        with atomic_path(args.csv) as tmp:
            dyn.series().to_csv(tmp, index=False)
    if args.plot:
        from rlsparse_lib.plotting import plot_dynamics, plot_parameter_fate, save_figure

        fig = plot_dynamics(dyn.series(), rule=dyn.rule.describe())
        save_figure(fig, args.plot, provenance={"command": "dynamics"})
        save_figure(
            plot_parameter_fate(dyn.fate()), f"{args.plot}_fate", provenance={"command": "dynamics"}
        )
    if not args.quiet:
        s = dyn.series()
        cols = ["k", "label", "sparsity", "step_sparsity", "step_overlap", "union_fraction"]
        cols.append("outside_final_fraction")
        show = s[cols].copy()
        for c in cols[2:]:
            show[c] = 100 * show[c]
        print(f"rule: {dyn.rule.describe()}; {dyn.n_params:,} weights in {len(dyn.names)} tensors")
        print("per checkpoint (%):")
        print(show.to_string(index=False, float_format=lambda x: f"{x:.3f}", na_rep="—"))
        f = dyn.fate()
        print(
            f"fate: never updated {100 * f['never']:.2f}%, updated then cancelled "
            f"{100 * f['cancelled']:.2f}%, final subnetwork {100 * f['final']:.2f}%"
        )
        if dyn.skipped:
            print(f"skipped {len(dyn.skipped)} tensors (see --json)")
        for label, path in (
            ("json", args.json),
            ("csv", args.csv),
            ("plot", args.plot),
            ("final mask", args.final_mask),
            ("union mask", args.union_mask),
        ):
            if path:
                print(f"{label}: {path}")
    sys.stdout.flush()
    return 0
