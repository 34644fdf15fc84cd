"""Lossless sparse patches: store only the weights an update changed, rebuild it bit for bit.

  rlsparse patch create BASE TUNED -o PATCH [--xform sub|xor] [--level L]
      replacement words at every flat index whose raw word differs (bitwise), tensors added or
      reshaped whole, removed ones listed; SHA-256 of every base tensor and every result
  rlsparse patch apply BASE PATCH -o OUT
      OUT: a new folder (model.safetensors + TUNED's config/tokenizer files) equal to TUNED bit
      for bit; a wrong base or a damaged patch exits 2 naming the tensor and leaves no OUT

examples:
  rlsparse patch create base/ rl-step100/ -o step100.rlpatch
  rlsparse patch apply base/ step100.rlpatch -o rebuilt/
"""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    c = sub.add_parser("create", help="write a patch BASE -> TUNED")
    c.add_argument("base", metavar="BASE")
    c.add_argument("tuned", metavar="TUNED")
    c.add_argument("-o", "--out", metavar="PATCH", required=True, help="patch file to write")
    c.add_argument(
        "--xform",
        choices=("sub", "xor"),
        default="sub",
        help="coding of replacement words against the base word (default: sub, exact integer "
        "word distance, zigzag)",
    )
    c.add_argument("--level", type=int, default=3, help="zstandard level (default 3)")
    a = sub.add_parser("apply", help="rebuild TUNED from BASE and a patch")
    a.add_argument("base", metavar="BASE")
    a.add_argument("patch", metavar="PATCH")
    a.add_argument(
        "-o", "--out", dest="out_root", metavar="OUT", required=True, help="new output folder"
    )


def run(args: argparse.Namespace) -> int:
    from rlsparse_lib.patches import apply_patch, create_patch

    if args.action == "create":
        summary = create_patch(args.base, args.tuned, args.out, xform=args.xform, level=args.level)
        changed = summary["elements_changed"]
        per = summary["bytes"] / changed if changed else float("nan")
        print(
            f"patch {summary['patch']}: {summary['bytes']:,} bytes; {changed:,} of "
            f"{summary['elements_compared']:,} elements changed ({per:.3f} B per changed element); "
            f"{summary['tensors_patched']} tensors patched, {summary['tensors_whole']} whole, "
            f"{summary['tensors_removed']} removed"
        )
    else:
        summary = apply_patch(args.base, args.patch, args.out_root)
        print(json.dumps(summary))
    return 0
