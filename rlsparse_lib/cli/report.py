"""Every view of one checkpoint pair as one HTML file: the pair-report notebook
(notebooks/10_pair_report.ipynb) executed on BASE and TUNED and rendered with nbconvert.

BASE and TUNED are folders, files or hub ids org/name[@revision] (streamed with HTTP Range
requests). The report shows the headline with provenance, the tolerance curve, the layer x module
heatmap, the binade and ULP views, the update rank with --rank, and the paper's and Path Not
Taken's numbers when the pair is in data/pairs/*.yaml.

examples:
  rlsparse report base/ tuned/ -o report.html
  rlsparse report allenai/Llama-3.1-Tulu-3-8B-SFT allenai/Llama-3.1-Tulu-3-8B-DPO -o tulu.html
  rlsparse report base/ tuned/ -o r.html --compare-dtype float32 --tol 0 1e-6 --rank
"""

from __future__ import annotations

import argparse

from rlsparse_lib.io.dtypes import COMPARE_DTYPES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("base", metavar="BASE", help="base checkpoint (folder, file or hub id)")
    p.add_argument("tuned", metavar="TUNED", help="finetuned checkpoint (folder, file or hub id)")
    p.add_argument("-o", "--out", required=True, metavar="HTML", help="the report file to write")
    p.add_argument(
        "--compare-dtype",
        choices=(*COMPARE_DTYPES, "stored"),
        default="bfloat16",
        help="cast both sides to this dtype before comparing; stored: the base's stored dtype "
        "(default: %(default)s, as the paper)",
    )
    p.add_argument(
        "--tol",
        type=float,
        nargs="+",
        default=None,
        metavar="T",
        help="absolute tolerances (default: the notebook's 0 1e-8 1e-7 1e-6 1e-5 1e-4)",
    )
    p.add_argument("--rel-eta", type=float, default=1e-3, metavar="η", help="relative probe η")
    p.add_argument("--rank", action="store_true", help="also the update rank of every matrix")
    p.add_argument(
        "--out-root", default=None, help="keep the executed notebook, results and figures here"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="do not stream what the cells print")


def run(args: argparse.Namespace) -> int:
    from rlsparse_lib.experiments.papermill_runner import report_pair

    params: dict[str, object] = {
        "COMPARE_DTYPE": "" if args.compare_dtype == "stored" else args.compare_dtype,
        "REL_ETA": args.rel_eta,
        "RANK": args.rank,
    }
    if args.tol:
        params["TOLERANCES"] = ",".join(repr(float(t)) for t in args.tol)
    out = report_pair(
        args.base, args.tuned, args.out, params, out_root=args.out_root, log=not args.quiet
    )
    print(f"report: {out}")
    return 0
