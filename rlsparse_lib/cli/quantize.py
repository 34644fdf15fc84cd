"""A quantized copy of a float checkpoint, stored as frontier checkpoints store their weights.

Asks what quantized storage would report for a pair: quantize both sides alike, then
`rlsparse diff` the copies (compared on their dequantized values, with the raw-code views).
The attention and MLP projections are quantized (--include / --exclude narrow that set);
embeddings, the output head, norms and biases stay as stored. Schemes:

  fp8_block  DeepSeek-V3: F8_E4M3 codes + float32 *_scale_inv per 128x128 block (amax / 448)
  mxfp4      gpt-oss layout: E2M1 codes in uint8 *_blocks + E8M0 *_scales per 32 elements
             of a row (OCP MX v1.0 rounding); also stacks of experts [E, in, out] as
             transformers holds gpt-oss's, stored as gpt-oss stores them
  gguf_q8_0  llama.cpp Q8_0 in one .gguf file (the gguf package's quantizer): int8 codes + a
             float16 scale (amax / 127) per 32 elements of a row; the rest BF16/F16/F32

examples:
  rlsparse quantize run/step_000000 -o q/base --scheme fp8_block
  rlsparse quantize run/step_000020 -o q/tuned --scheme fp8_block
  rlsparse diff q/base q/tuned
  rlsparse quantize run/step_000020/fp32 -o q/masters --scheme fp8_block --rest-dtype bfloat16
  rlsparse quantize gpt-oss-20b-bf16/ -o q/gpt-oss --scheme mxfp4 --include experts
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from rlsparse_lib.io.dtypes import COMPARE_DTYPES
    from rlsparse_lib.io.quantize import QUANTIZE_SCHEMES

    p.add_argument("src", metavar="SRC", help="float checkpoint: folder, file or hub id")
    p.add_argument(
        "-o", "--out", dest="out_root", metavar="OUT", required=True, help="new folder to write"
    )
    p.add_argument("--scheme", choices=QUANTIZE_SCHEMES, required=True)
    p.add_argument(
        "--include",
        nargs="+",
        default=[],
        metavar="REGEX",
        help="quantize only the projections whose names match (e.g. 'experts' as gpt-oss does)",
    )
    p.add_argument(
        "--exclude", nargs="+", default=[], metavar="REGEX", help="keep matching weights as stored"
    )
    p.add_argument(
        "--rest-dtype",
        choices=COMPARE_DTYPES,
        default=None,
        help="cast the float tensors that are not quantized to this dtype (default: as stored; "
        "bfloat16 for a copy of fp32 master weights, as published FP8 checkpoints keep them)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")


def run(args: argparse.Namespace) -> int:
    from rlsparse_lib.io.quantize import quantize_checkpoint

    s = quantize_checkpoint(
        args.src,
        args.out_root,
        args.scheme,
        include=tuple(args.include),
        exclude=tuple(args.exclude),
        rest_dtype=args.rest_dtype,
        progress=not args.quiet,
    )
    if not args.quiet:
        share = s["quantized_elements"] / s["elements"] if s["elements"] else 0.0
        print(
            f"{s['out']}: {s['quantized']} of {s['tensors']} tensors as {s['scheme']} "
            f"({s['quantized_elements']:,} of {s['elements']:,} elements, {100 * share:.1f} %); "
            "the rest as stored"
        )
    return 0
