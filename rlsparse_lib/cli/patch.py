"""Lossless sparse patches: store only the weights an update changed, rebuild it bit for bit.

  rlsparse patch create BASE TUNED -o PATCH [--xform sub|xor] [--level L]
      replacement words at every flat index whose raw word differs (bitwise), tensors added or
      reshaped whole, removed ones listed; SHA-256 of every base tensor and every result
  rlsparse patch apply BASE PATCH -o OUT
      OUT: a new folder (model.safetensors + TUNED's config/tokenizer files) equal to TUNED bit
      for bit; a wrong base or a damaged patch exits 2 naming the tensor and leaves no OUT

  rlsparse patch export BASE PATCH --format trl|vllm [--encoding raw|gap_delta] -o FILE
      TRL's sparse_weight_patch safetensors ({name}.idx / {name}.val, metadata
      format=sparse_weight_patch) or vLLM's form ({name}.indices int32 / {name}.values); the
      patch's fingerprints travel in the metadata
  rlsparse patch import BASE FILE -o PATCH
      such a file (from TRL, vLLM tooling or an export) over BASE -> an rlsparse patch
  rlsparse patch chain SERIES... -o CHAIN --every N [--steps S...]
      a checkpoint series (a run folder of step_N / checkpoint-N folders, or checkpoints in
      order) as a full anchor every N checkpoints plus a patch from each to the next
  rlsparse patch rebuild CHAIN STEP -o OUT
      checkpoint STEP bit for bit (nearest anchor, then the patches after it); a broken link
      exits 2 naming its step and file
  rlsparse patch verify CHAIN
      check every link (file SHA-256, patch checksums, base = previous link) without rebuilding

examples:
  rlsparse patch create base/ rl-step100/ -o step100.rlpatch
  rlsparse patch apply base/ step100.rlpatch -o rebuilt/
  rlsparse patch export base/ step100.rlpatch --format trl -o step100.safetensors
  rlsparse patch import base/ step100.safetensors -o step100-again.rlpatch
  rlsparse patch chain data/runs/cpu-grpo/ --every 10 -o grpo.chain/
  rlsparse patch rebuild grpo.chain/ 15 -o step15/
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
    e = sub.add_parser("export", help="write a patch in TRL's or vLLM's sparse form")
    e.add_argument("base", metavar="BASE")
    e.add_argument("patch", metavar="PATCH")
    e.add_argument("--format", dest="form", choices=("trl", "vllm"), default="trl")
    e.add_argument(
        "--encoding",
        choices=("raw", "gap_delta"),
        default="raw",
        help="TRL index encoding: raw int32, or gap_delta uint16/uint32 gaps (default raw)",
    )
    e.add_argument("--model-version", type=int, default=0, help="TRL metadata model_version")
    e.add_argument("-o", "--out", metavar="FILE", required=True, help="safetensors file to write")
    i = sub.add_parser("import", help="turn a TRL / vLLM sparse file over BASE into a patch")
    i.add_argument("base", metavar="BASE")
    i.add_argument("src", metavar="FILE")
    i.add_argument("-o", "--out", metavar="PATCH", required=True, help="patch file to write")
    i.add_argument("--xform", choices=("sub", "xor"), default=None)
    i.add_argument("--level", type=int, default=3, help="zstandard level (default 3)")
    ch = sub.add_parser("chain", help="a checkpoint series as anchors plus patches")
    ch.add_argument("series", nargs="+", metavar="SERIES", help="a run folder, or checkpoints")
    ch.add_argument("-o", "--out", dest="out_root", metavar="CHAIN", required=True)
    ch.add_argument("--every", type=int, default=10, help="a full anchor every N (default 10)")
    ch.add_argument("--steps", nargs="+", type=int, metavar="STEP", help="step per checkpoint")
    ch.add_argument("--xform", choices=("sub", "xor"), default="sub")
    ch.add_argument("--level", type=int, default=3, help="zstandard level (default 3)")
    ch.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    rb = sub.add_parser("rebuild", help="rebuild one step of a chain")
    rb.add_argument("chain", metavar="CHAIN")
    rb.add_argument("step", type=int, metavar="STEP")
    rb.add_argument("-o", "--out", dest="out_root", metavar="OUT", required=True)
    rb.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    vf = sub.add_parser("verify", help="check every link of a chain")
    vf.add_argument("chain", metavar="CHAIN")


def run(args: argparse.Namespace) -> int:
    from rlsparse_lib.patches import apply_patch, create_patch
    from rlsparse_lib.patches.interop import export_patch, import_patch

    if args.action in ("chain", "rebuild", "verify"):
        return _chain(args)
    if args.action == "export":
        summary = export_patch(
            args.base, args.patch, args.out, args.form, args.encoding, args.model_version
        )
        print(json.dumps(summary))
        return 0
    if args.action == "import":
        summary = import_patch(args.base, args.src, args.out, xform=args.xform, level=args.level)
    if args.action == "create":
        summary = create_patch(args.base, args.tuned, args.out, xform=args.xform, level=args.level)
    if args.action in ("create", "import"):
        changed = summary["elements_changed"]
        per = summary["bytes"] / changed if changed else float("nan")
        print(
            f"patch {summary['patch']}: {summary['bytes']:,} bytes; {changed:,} of "
            f"{summary['elements_compared']:,} elements changed ({per:.3f} B per changed element); "
            f"{summary['tensors_patched']} tensors patched, {summary['tensors_whole']} whole, "
            f"{summary['tensors_removed']} removed"
        )
    if args.action == "apply":
        summary = apply_patch(args.base, args.patch, args.out_root)
        print(json.dumps(summary))
    return 0


def _chain(args: argparse.Namespace) -> int:
    from rlsparse_lib.patches.chain import build_chain, rebuild, verify_chain

    if args.action == "verify":
        print(json.dumps(verify_chain(args.chain)))
    elif args.action == "rebuild":
        print(json.dumps(rebuild(args.chain, args.step, args.out_root, progress=not args.quiet)))
    else:
        m = build_chain(
            args.series,
            args.out_root,
            every=args.every,
            steps=args.steps,
            xform=args.xform,
            level=args.level,
            progress=not args.quiet,
        )
        for link in m["links"]:
            print(
                f"step {link['step']:>8}  {link['kind']:<6}  {link['bytes']:>14,} B  "
                f"{link['elements_changed']:>12,} changed  {link['file']}"
            )
        print(
            f"chain {args.out_root}: {m['bytes']:,} bytes for {len(m['links'])} checkpoints "
            f"({m['checkpoint_bytes']:,} bytes as full copies)"
        )
    return 0
