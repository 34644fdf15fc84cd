"""Overlap of two or more subnetwork masks, with uniform and stratified random baselines.

For two masks: |I1|, |I2|, |I1∩I2|, the paper's one-sided overlaps o1 = |I1∩I2|/|I1| and
o2 = |I1∩I2|/|I2| with their random baselines (o1_random = density of mask 2), Jaccard with the
Bernoulli baseline pq/(p+q−pq), and the expected overlap when each mask keeps its count per tensor
(and, with --base, per tensor × |θ0| binade: do the runs overlap only because both touch small
weights?). For N masks: the pairwise matrix (row covered by column) and every pair's numbers.

examples:
  rlsparse overlap seed42.mask.safetensors seed123.mask.safetensors --json overlap.json
  rlsparse overlap a.mask.safetensors b.mask.safetensors c.mask.safetensors --labels DPO PRIME GRPO \
      --base base/ --heatmap figures/overlap
  rlsparse overlap runs/*/final.mask.safetensors --json overlap.json --resume ov.resume/ --cluster ray
"""

from __future__ import annotations

import argparse
import sys

from rlsparse_lib.cli.diff import add_unit_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("masks", nargs="+", metavar="MASK", help="two or more mask files")
    p.add_argument("--labels", nargs="+", metavar="LABEL", help="one label per mask")
    p.add_argument(
        "--base", metavar="BASE", help="θ0 checkpoint: adds the per-tensor × |θ0|-binade baseline"
    )
    p.add_argument("--json", metavar="PATH", help="write the full result as JSON")
    p.add_argument(
        "--csv",
        metavar="PATH",
        help="two masks: the per-tensor breakdown; N masks: the o matrix (CSV)",
    )
    p.add_argument(
        "--by",
        choices=("tensor", "layer", "module", "group", "none"),
        default="module",
        help="breakdown printed for two masks (default: %(default)s)",
    )
    p.add_argument("--heatmap", metavar="PATH", help="save the overlap heatmap (PNG + PDF)")
    add_unit_arguments(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")


def run(args: argparse.Namespace) -> int:
    from rlsparse_lib.analysis.overlap import overlap_matrix
    from rlsparse_lib.atomic import atomic_path
    from rlsparse_lib.errors import ConfigError

    if len(args.masks) < 2:
        raise ConfigError(f"overlap needs at least two masks, got {len(args.masks)}")
    mat = overlap_matrix(
        args.masks,
        args.labels,
        base=args.base,
        progress=not args.quiet,
        max_unit_bytes=args.unit_bytes,
        resume=args.resume,
        cluster=args.cluster,
    )
    two = len(args.masks) == 2
    pair = mat.pair(0, 1) if two else None
    result = mat if pair is None else pair
    if args.json:
        result.save_json(args.json)
    if args.csv:
        table = pair.breakdown("tensor") if pair is not None else mat.frame("o")
        with atomic_path(args.csv) as tmp:
            table.to_csv(tmp, index=not two)
    if args.heatmap:
        from rlsparse_lib.plotting import plot_overlap_heatmap, save_figure

        fig = plot_overlap_heatmap(mat.frame("o"), baseline=mat.frame("o_random"))
        save_figure(fig, args.heatmap, provenance={"command": "overlap"})
    if not args.quiet:
        print(_format_pair(result, args.by) if two else _format_matrix(mat))
        for label, path in (("json", args.json), ("csv", args.csv), ("heatmap", args.heatmap)):
            if path:
                print(f"{label}: {path}")
    sys.stdout.flush()
    return 0


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.2f}%"


def _format_pair(po, by: str) -> str:
    s = po.summary()
    a, b = po.labels
    lines = [
        f"mask 1: {a}   |I1| = {s['n1']:,} ({_pct(s['density1'])})",
        f"mask 2: {b}   |I2| = {s['n2']:,} ({_pct(s['density2'])})",
        f"n = {s['n_params']:,} weights; |I1∩I2| = {s['n_both']:,} ({_pct(s['intersection_fraction'])} of n)",
        "",
        f"{'':<24}{'observed':>10}{'random':>10}",
        f"{'o1 = |I1∩I2|/|I1|':<24}{_pct(s['o1']):>10}{_pct(s['o1_random']):>10}",
        f"{'o2 = |I1∩I2|/|I2|':<24}{_pct(s['o2']):>10}{_pct(s['o2_random']):>10}",
        f"{'Jaccard':<24}{_pct(s['jaccard']):>10}{_pct(s['jaccard_random']):>10}",
        "",
        f"{'baseline (placement)':<24}{'E|I1∩I2|':>14}{'o1':>10}{'o2':>10}{'enrichment':>12}{'z':>10}",
    ]
    for key, label in (
        ("global", "uniform over all"),
        ("tensor", "per tensor"),
        ("binade", "per tensor × |θ0| binade"),
    ):
        bl = s["baselines"][key]
        if bl is None:
            lines.append(f"{label:<24}{'(needs --base)':>14}")
            continue
        enr = "—" if bl["enrichment"] is None else f"{bl['enrichment']:.3f}"
        z = "—" if bl["z"] is None else f"{bl['z']:.1f}"
        lines.append(
            f"{label:<24}{bl['expected_both']:>14,.0f}{_pct(bl['o1']):>10}{_pct(bl['o2']):>10}"
            f"{enr:>12}{z:>10}"
        )
    if by != "none":
        df = po.breakdown(by)
        cols = [by if by != "tensor" else "name", "numel", "n1", "n2", "n_both", "o1", "o2"]
        cols += ["o1_random", "o2_random", "jaccard", "enrichment_tensor"]
        if "enrichment_binade" in df.columns:
            cols.append("enrichment_binade")
        lines += [
            "",
            f"by {by}:",
            df[cols].to_string(index=False, float_format=lambda x: f"{x:.4f}"),
        ]
    return "\n".join(lines)


def _format_matrix(mat) -> str:
    fmt = lambda x: f"{100 * x:.1f}"  # noqa: E731
    lines = ["o: % of the row's mask covered by the column's (random baseline: column density)"]
    lines.append(mat.frame("o").to_string(float_format=fmt))
    lines += ["", "Jaccard (%)", mat.frame("jaccard").to_string(float_format=fmt)]
    key = "enrichment_binade" if mat.counts.binade_expected is not None else "enrichment_tensor"
    lines += ["", f"{key} (observed / expected intersection)"]
    lines.append(mat.frame(key).to_string(float_format=lambda x: f"{x:.3f}"))
    return "\n".join(lines)
