"""Build, combine and inspect bit-packed subnetwork masks (1 bit per weight, safetensors).

  rlsparse mask BASE TUNED -o MASK [--tol T | --rule bitwise|abs|rel [--tol T]]
      the changed mask of BASE -> TUNED; default rule bitwise (bits differ in the compare
      dtype); --tol T alone means |Δ| > T (the paper's rule is --tol 1e-5)
  rlsparse mask info MASK [MASK ...] [--by tensor|layer|module|group]
      rule, sources and density per group
  rlsparse mask and|or|xor MASK1 MASK2 [MASK ...] -o OUT     intersection / union / parity
  rlsparse mask andnot MASK1 MASK2 [MASK ...] -o OUT        MASK1 minus all others
  rlsparse mask not MASK -o OUT                             complement
  rlsparse mask random MASK -o OUT --seed S [--stratify global|tensor|binade] [--base BASE]
      random mask with MASK's density: same total count (global; the paper's baseline), same
      count per tensor, or per tensor x |θ0| binade (needs --base)
  building, algebra and random masks take --cluster local[:N]|ray and --resume DIR (work units of
  whole tensors; the same file bytes on every executor; random global strata are one unit)

examples:
  rlsparse mask base/ rl/ -o rl.mask.safetensors --tol 1e-5
  rlsparse mask base/ rl/ -o rl.mask.safetensors --resume mask.resume/ --cluster local:8
  rlsparse mask and seed42.mask.safetensors seed123.mask.safetensors -o common.mask.safetensors
  rlsparse mask or a.mask.safetensors b.mask.safetensors -o any.mask.safetensors --cluster ray
  rlsparse mask random rl.mask.safetensors -o rand.mask.safetensors --seed 0 --stratify binade --base base/
"""

from __future__ import annotations

import argparse
import json
import sys

from rlsparse_lib.cli.diff import add_selection_arguments, add_unit_arguments
from rlsparse_lib.io.dtypes import COMPARE_DTYPES

ACTIONS = ("info", "and", "or", "xor", "andnot", "not", "random")


def add_rule_arguments(p: argparse.ArgumentParser) -> None:
    """--rule / --tol (shared with `rlsparse dynamics`)."""
    p.add_argument(
        "--rule",
        choices=("bitwise", "abs", "rel"),
        default=None,
        help="what counts as changed (default: bitwise; abs if only --tol is given)",
    )
    p.add_argument(
        "--tol",
        type=float,
        default=None,
        metavar="T",
        help="tolerance of the abs rule (|Δ| > T; default 1e-5) or η of the rel rule (default 1e-3)",
    )


def rule_from_args(args: argparse.Namespace):
    from rlsparse_lib.errors import ConfigError
    from rlsparse_lib.rules import MaskRule

    kind = args.rule or ("abs" if args.tol is not None else "bitwise")
    if kind == "bitwise" and args.tol is not None:
        raise ConfigError("--tol has no meaning with --rule bitwise")
    tol = args.tol if args.tol is not None else {"bitwise": 0.0, "abs": 1e-5, "rel": 1e-3}[kind]
    return MaskRule(kind, tol)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "args",
        nargs="+",
        metavar="ARG",
        help="BASE TUNED, or an action (info, and, or, xor, andnot, not, random) and masks",
    )
    p.add_argument("-o", "--out", metavar="PATH", help="output mask file")
    add_rule_arguments(p)
    p.add_argument("--compare-dtype", choices=COMPARE_DTYPES, default=None)
    add_selection_arguments(p)
    p.add_argument("--seed", type=int, default=None, help="seed of `random` (required)")
    p.add_argument(
        "--stratify", choices=("global", "tensor", "binade"), default="global", help="for `random`"
    )
    p.add_argument("--base", metavar="BASE", help="θ0 checkpoint for --stratify binade")
    p.add_argument(
        "--by",
        choices=("tensor", "layer", "module", "group", "none"),
        default="module",
        help="density table grouping (default: %(default)s)",
    )
    p.add_argument("--json", metavar="PATH", help="`info`: write the summaries as JSON")
    add_unit_arguments(p)  # building, algebra and random masks run on work units
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")


def run(args: argparse.Namespace) -> int:
    from rlsparse_lib.errors import ConfigError

    action = args.args[0] if args.args[0] in ACTIONS else "build"
    operands = args.args[1:] if action != "build" else args.args
    if action == "info":
        return _info(operands, args)
    if not args.out:
        raise ConfigError(f"mask {action}: the output file is required (-o PATH)")
    if action == "build":
        return _build(operands, args)
    if action == "random":
        return _random(operands, args)
    from rlsparse_lib.masks.ops import combine_masks, mask_info

    combine_masks(
        action,
        operands,
        args.out,
        progress=not args.quiet,
        max_unit_bytes=args.unit_bytes,
        resume=args.resume,
        cluster=args.cluster,
    )
    if not args.quiet:
        _print_info(mask_info(args.out), args.out, args.by)
    return 0


def _build(operands: list[str], args: argparse.Namespace) -> int:
    from rlsparse_lib.errors import ConfigError
    from rlsparse_lib.masks.ops import build_mask, mask_info

    if len(operands) != 2:
        raise ConfigError(
            f"expected BASE TUNED (or an action: {', '.join(ACTIONS)}), got {operands}"
        )
    rule = rule_from_args(args)
    build_mask(
        operands[0],
        operands[1],
        args.out,
        rule=rule,
        compare_dtype=args.compare_dtype,
        include=tuple(args.include),
        exclude=tuple(args.exclude),
        progress=not args.quiet,
        max_unit_bytes=args.unit_bytes,
        resume=args.resume,
        cluster=args.cluster,
    )
    if not args.quiet:
        _print_info(mask_info(args.out), args.out, args.by)
    return 0


def _random(operands: list[str], args: argparse.Namespace) -> int:
    from rlsparse_lib.errors import ConfigError
    from rlsparse_lib.masks.ops import mask_info, random_mask_like

    if len(operands) != 1:
        raise ConfigError(f"mask random: expected one mask to match, got {len(operands)}")
    if args.seed is None:
        raise ConfigError("mask random: --seed is required (results must be reproducible)")
    random_mask_like(
        operands[0],
        args.out,
        seed=args.seed,
        stratify=args.stratify,
        base=args.base,
        progress=not args.quiet,
        max_unit_bytes=args.unit_bytes,
        resume=args.resume,
        cluster=args.cluster,
    )
    if not args.quiet:
        _print_info(mask_info(args.out), args.out, args.by)
    return 0


def _info(operands: list[str], args: argparse.Namespace) -> int:
    from rlsparse_lib.atomic import write_text_atomic
    from rlsparse_lib.errors import ConfigError
    from rlsparse_lib.masks.ops import mask_density, mask_info

    if not operands:
        raise ConfigError("mask info: give at least one mask file")
    if args.cluster is not None or args.resume is not None:
        raise ConfigError(
            "mask info reads the files' metadata: --cluster and --resume do not apply"
        )
    docs = []
    for path in operands:
        info = mask_info(path)
        if args.by != "none":
            info[f"by_{args.by}"] = json.loads(
                mask_density(path, args.by).to_json(orient="records")
            )
        docs.append(info)
        if not args.quiet:
            _print_info(info, path, args.by)
    if args.json:
        write_text_atomic(args.json, json.dumps(docs[0] if len(docs) == 1 else docs, indent=1))
    return 0


def _print_info(info: dict, path: str, by: str) -> None:
    from rlsparse_lib.masks.ops import mask_density

    rule = info.get("rule") or {}
    print(f"{path}: {info['n_tensors']} tensors, {info['n_total']:,} weights")
    print(f"  rule: {json.dumps(rule)}")
    print(f"  set: {info['n_set_total']:,}   density: {100 * info['density']:.4f}%")
    if by != "none":
        df = mask_density(path, by)
        df["density"] = 100 * df["density"]
        cols = [c for c in df.columns if c not in ("layer", "group") or c == by]
        if by == "tensor":
            cols = ["name", "numel", "n_set", "density"]
        print(df[cols].to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    sys.stdout.flush()
