"""Compare two checkpoints (base -> tuned): update sparsity at the bitwise rule, a tolerance grid
and the bf16-aware relative probe, per tensor / layer / module, with provenance.

BASE and TUNED are folders or files in Hugging Face layout (model.safetensors, sharded
*.safetensors + index, pytorch_model*.bin) or hub ids org/name[@revision], streamed with HTTP
Range requests (no local copy; HF_ENDPOINT, HF_TOKEN; RLSPARSE_HUB_CONNECTIONS/_PART_MB/_WINDOW_MB
tune it) unless --download asks for the cached full download.

examples:
  rlsparse diff base/ tuned/
  rlsparse diff base/ tuned/ --json report.json --csv tensors.csv --mask-out changed.mask.safetensors
  rlsparse diff Org/model-SFT Org/model-DPO --compare-dtype bfloat16 --tol 1e-5
  rlsparse diff base/ tuned/ --json report.json --resume diff.resume/ --cluster local:8
  rlsparse diff base/ tuned/ --json report.json --mask-out m.safetensors --cluster ray
"""

from __future__ import annotations

import argparse
import sys

from rlsparse_lib.io.dtypes import COMPARE_DTYPES


def add_selection_arguments(p: argparse.ArgumentParser) -> None:
    """``--include`` / ``--exclude`` tensor-name regexes, shared by the commands that read pairs."""
    p.add_argument(
        "--include", nargs="+", default=[], metavar="REGEX", help="compare only matching tensors"
    )
    p.add_argument(
        "--exclude", nargs="+", default=[], metavar="REGEX", help="do not compare matching tensors"
    )


def add_unit_arguments(p: argparse.ArgumentParser) -> None:
    """``--resume DIR`` and ``--cluster``, shared by the commands that run on work units."""
    from rlsparse_lib.diff.config import DEFAULT_UNIT_BYTES

    p.add_argument(
        "--resume",
        metavar="DIR",
        default=None,
        help="keep each finished work unit in DIR; rerunning the same command skips them "
        "(refused when DIR was made for other inputs or settings)",
    )
    p.add_argument(
        "--cluster",
        metavar="local[:N]|ray[://HOST:PORT]",
        default=None,
        help="run work units on a pool of N processes (default N: CPU count) or as Ray tasks "
        "(RAY_ADDRESS, the address given, else a local Ray instance; pip install "
        "'rlsparse[ray]'); default: in this process",
    )
    p.add_argument("--unit-bytes", type=int, default=DEFAULT_UNIT_BYTES, help=argparse.SUPPRESS)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from rlsparse_lib.diff.config import DEFAULT_CHUNK, DEFAULT_TOLERANCES

    p.add_argument("base", metavar="BASE", help="base checkpoint θ0 (folder, file or hub id)")
    p.add_argument(
        "tuned", metavar="TUNED", help="finetuned checkpoint θ1 (folder, file or hub id)"
    )
    p.add_argument(
        "--tol",
        type=float,
        nargs="+",
        default=list(DEFAULT_TOLERANCES),
        metavar="T",
        help="absolute tolerances: |Δ| <= T counts as unchanged (default: %(default)s)",
    )
    p.add_argument(
        "--rel-eta",
        type=float,
        default=1e-3,
        metavar="η",
        help="relative probe |Δ| <= η·max(|θ0|,|θ1|) (default: %(default)s)",
    )
    p.add_argument(
        "--compare-dtype",
        choices=COMPARE_DTYPES,
        default=None,
        help="cast both sides to this dtype before comparing (default: base's stored dtype)",
    )
    add_selection_arguments(p)
    p.add_argument(
        "--mask-out", metavar="PATH", help="write bit-packed changed masks (safetensors)"
    )
    p.add_argument(
        "--mask-rule",
        choices=("bitwise", "abs", "rel"),
        default="bitwise",
        help="rule for --mask-out bits (default: %(default)s)",
    )
    p.add_argument(
        "--mask-tol",
        type=float,
        default=None,
        help="tolerance for --mask-rule abs (default 1e-5) or rel (default --rel-eta)",
    )
    p.add_argument("--json", metavar="PATH", help="write the full report as JSON")
    p.add_argument(
        "--csv", metavar="PATH", help="write the per-tensor table (CSV, or parquet if *.parquet)"
    )
    p.add_argument(
        "--by",
        choices=("module", "layer", "group", "none"),
        default="module",
        help="grouping of the summary table (default: %(default)s)",
    )
    p.add_argument(
        "--device",
        choices=("cpu", "cuda", "auto"),
        default="cpu",
        help="kernel device: cpu, cuda (Triton GPU kernel, streamed) or auto (cuda when "
        "available) (default: %(default)s)",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--chunk-elems", type=int, default=DEFAULT_CHUNK, help=argparse.SUPPRESS)
    add_unit_arguments(p)
    p.add_argument("--cache-dir", default=None, help="Hugging Face cache folder for hub ids")
    p.add_argument(
        "--download",
        action="store_true",
        help="download hub ids into the HF cache first (default: stream them with HTTP Range "
        "requests, no local copy)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")


def run(args: argparse.Namespace) -> int:
    from rlsparse_lib.diff.config import DiffConfig
    from rlsparse_lib.diff.engine import diff_checkpoints
    from rlsparse_lib.diff.report import format_summary
    from rlsparse_lib.io.checkpoint import open_checkpoint
    from rlsparse_lib.rules import MaskRule

    tol = args.mask_tol
    if tol is None:
        tol = {"bitwise": 0.0, "abs": 1e-5, "rel": args.rel_eta}[args.mask_rule]
    config = DiffConfig(
        tolerances=tuple(args.tol),
        rel_eta=args.rel_eta,
        compare_dtype=args.compare_dtype,
        include=tuple(args.include),
        exclude=tuple(args.exclude),
        chunk_elems=args.chunk_elems,
        max_unit_bytes=args.unit_bytes,
        mask_rule=MaskRule(args.mask_rule, tol),
        device=args.device,
        threads=args.threads,
    )
    base = open_checkpoint(args.base, args.cache_dir, download=args.download)
    tuned = open_checkpoint(args.tuned, args.cache_dir, download=args.download)
    report = diff_checkpoints(
        base,
        tuned,
        config,
        mask_out=args.mask_out,
        progress=not args.quiet,
        resume=args.resume,
        cluster=args.cluster,
    )
    if args.json:
        report.save_json(args.json)
    if args.csv:
        report.save_table(args.csv)
    if not args.quiet:
        print(format_summary(report, by=args.by))
        for label, path in (("json", args.json), ("table", args.csv), ("masks", args.mask_out)):
            if path:
                print(f"{label}: {path}")
    sys.stdout.flush()
    return 0
