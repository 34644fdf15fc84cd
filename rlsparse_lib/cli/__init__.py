"""The ``rlsparse`` command line. Each subcommand lives in its own module (``add_arguments`` and
``run``), imported only when invoked so start-up stays fast."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from rlsparse_lib import __version__

#: name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "diff": (
        "rlsparse_lib.cli.diff",
        "update sparsity of a checkpoint pair (per tensor/layer/module, with provenance)",
    ),
    "mask": ("rlsparse_lib.cli.mask", "build, combine and inspect bit-packed subnetwork masks"),
    "overlap": (
        "rlsparse_lib.cli.overlap",
        "overlap of two or more masks, with random and stratified baselines",
    ),
    "rank": ("rlsparse_lib.cli.rank", "numerical / effective / stable rank of each 2-D update ΔW"),
    "dynamics": ("rlsparse_lib.cli.dynamics", "sparsity dynamics over a checkpoint series θ0…θK"),
    "closeness": (
        "rlsparse_lib.cli.closeness",
        "fraction of equal weights between two finetunes of one init",
    ),
    "train": (
        "rlsparse_lib.cli.train",
        "run a training config (SFT, RFT, GRPO, RLOO, DPO, KTO; masked or full)",
    ),
    "compare-runs": (
        "rlsparse_lib.cli.compare_runs",
        "one summary row per finished training run (accuracy, rewards, sparsity, cost)",
    ),
    "eval": ("rlsparse_lib.cli.eval", "greedy accuracy of a checkpoint on a verifiable task"),
    "run": ("rlsparse_lib.cli.run", "execute experiment notebooks through papermill"),
    "figures": ("rlsparse_lib.cli.figures", "regenerate every figure from stored results"),
    "demo": ("rlsparse_lib.cli.demo", "the main job on the embedded default"),
}


#: option destinations that name an output file / an output folder, checked before any work
OUTPUT_FILES = ("json", "csv", "md", "dynamics_csv", "plot", "heatmap", "out", "mask_out")
OUTPUT_DIRS = ("out_root",)

#: commands that do no linear algebra: numpy's BLAS thread pool, started when numpy is imported,
#: would only spin on the cores their kernels use
NO_BLAS = ("diff",)


def _build_parser(chosen: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlsparse",
        description="Measure, explain and exploit parameter-update sparsity in RL-finetuned LLMs.",
    )
    parser.add_argument("--version", action="version", version=f"rlsparse {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        if name == chosen:
            module = importlib.import_module(module_name)
            p = sub.add_parser(
                name,
                help=help_text,
                description=(module.__doc__ or help_text).strip(),
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rlsparse`` console script."""
    from rlsparse_lib.errors import RlsparseError

    from_console = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    # before numpy is imported; in-process callers keep their settings
    if from_console and chosen in NO_BLAS:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    parser = _build_parser(chosen if chosen in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        _check_outputs(args)
        return int(args._run(args) or 0)
    except RlsparseError as err:
        print(f"rlsparse {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rlsparse {args.command}: interrupted", file=sys.stderr)
        return 130


def _check_outputs(args: argparse.Namespace) -> None:
    """Fail in one line, before minutes of work, on output paths that cannot be written."""
    from rlsparse_lib.atomic import check_writable

    for names, directory in ((OUTPUT_FILES, False), (OUTPUT_DIRS, True)):
        for name in names:
            path = getattr(args, name, None)
            if path:
                check_writable(path, directory=directory)
