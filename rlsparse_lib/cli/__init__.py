"""The ``rlsparse`` command line. Each subcommand lives in its own module (``add_arguments`` and
``run``), imported only when invoked so start-up stays fast."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from typing import NoReturn

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
    "runs-table": (
        "rlsparse_lib.cli.runs_table",
        "the table of every run (runs.csv), its seed summary with intervals, the README block",
    ),
    "eval": ("rlsparse_lib.cli.eval", "greedy accuracy of a checkpoint on a verifiable task"),
    "run": ("rlsparse_lib.cli.run", "execute experiment notebooks through papermill"),
    "figures": ("rlsparse_lib.cli.figures", "regenerate every figure from stored results"),
    "report": ("rlsparse_lib.cli.report", "one pair's report notebook rendered as one HTML file"),
    "demo": ("rlsparse_lib.cli.demo", "the main job on the embedded default"),
    "patch": (
        "rlsparse_lib.cli.patch",
        "lossless sparse patches: create/apply, TRL/vLLM export/import, delta chains",
    ),
    "quantize": (
        "rlsparse_lib.cli.quantize",
        "a quantized copy of a float checkpoint (FP8 block scales, MXFP4), to diff as stored",
    ),
    "budget": (
        "rlsparse_lib.cli.budget",
        "weight-sync budget of a checkpoint series: payload per codec, cadence, granularity",
    ),
}


#: option destinations that name an output file / an output folder, checked before any work
OUTPUT_FILES = ("json", "csv", "md", "dynamics_csv", "plot", "heatmap", "out", "mask_out")
OUTPUT_DIRS = ("out_root",)

#: commands that do no linear algebra: numpy's BLAS thread pool, started when numpy is imported,
#: would only spin on the cores their kernels use
NO_BLAS = ("diff",)


class _ParseError(Exception):
    """A parse error, held back so that :func:`main` can retry with multi-value options fixed."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser, self.message = parser, message


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are raised (and printed by :func:`main`), not exited on;
    the subcommand parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        raise _ParseError(self, message)


def _build_parser(chosen: str | None) -> _Parser:
    parser = _Parser(
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
    args = _parse(parser, argv, chosen)
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


def _parse(parser: _Parser, argv: list[str], chosen: str | None) -> argparse.Namespace:
    """``parser.parse_args``, where options taking several values (``--tol 1e-5 1e-4``,
    ``--include a b``) may also come before the positionals: argparse lets such an option swallow
    the positionals that follow it; on that error the command line is parsed again with the
    positionals taken back (see :func:`_positionals_first`)."""
    try:
        return parser.parse_args(argv)
    except _ParseError as err:
        first = err
    sub = _subparser(parser, chosen)
    if sub is not None:
        assert chosen is not None
        at = argv.index(chosen) + 1
        fixed = _positionals_first(sub, argv[at:])
        if fixed is not None and fixed != argv[at:]:
            try:
                return parser.parse_args(argv[:at] + fixed)
            except _ParseError as err:
                first = err  # the error of the line as meant (e.g. a positional really missing)
    argparse.ArgumentParser.error(first.parser, first.message)  # usage + message, exit 2
    raise AssertionError("unreachable")


def _subparser(
    parser: argparse.ArgumentParser, chosen: str | None
) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(chosen) if chosen else None
    return None


_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")
_VARIABLE = ("+", "*", argparse.REMAINDER)


def _positionals_first(sub: argparse.ArgumentParser, args: list[str]) -> list[str] | None:
    """``args`` rewritten as positionals first, then every option with its values; or None when
    the command line holds something this does not model (``--``, unknown options).

    A multi-value option (``nargs`` ``+`` or ``*``) keeps, of the tokens that follow it, only
    those that can be its values: of the right type (``--tol 1e-5 base/``: ``base/`` is no float),
    among its choices, of the ``KEY=VALUE`` form its metavar shows; then trailing tokens naming
    existing files or folders go back to the positionals, and, while the subcommand's positionals
    are still short of their minimum, its last tokens too (each option keeps at least one value).
    """
    if "--" in args:
        return None
    by_flag = {flag: a for a in sub._actions for flag in a.option_strings}
    positional_actions = [a for a in sub._actions if not a.option_strings]
    need = sum(
        a.nargs if isinstance(a.nargs, int) else 1 if a.nargs in (None, "+") else 0
        for a in positional_actions
    )
    variable = any(a.nargs in _VARIABLE for a in positional_actions)

    def option_like(tok: str) -> bool:
        return tok.startswith("-") and tok != "-" and not _NEGATIVE_NUMBER.match(tok)

    # (index, token) of free positionals; [flag tokens, values, action] of options, in order
    free: list[tuple[int, str]] = []
    options: list[tuple[list[str], list[tuple[int, str]], argparse.Action]] = []
    i = 0
    while i < len(args):
        tok = args[i]
        if not option_like(tok):
            free.append((i, tok))
            i += 1
            continue
        flag, eq, _ = tok.partition("=")
        action = by_flag.get(flag) or _unique_prefix(by_flag, flag)
        if action is None:
            return None
        i += 1
        values: list[tuple[int, str]] = []
        if not eq:
            if action.nargs in ("+", "*"):
                while i < len(args) and not option_like(args[i]) and _fits(action, args[i]):
                    values.append((i, args[i]))
                    i += 1
                if not values and i < len(args) and not option_like(args[i]):
                    return None  # `--tol fast`: argparse's own message says it best
            else:
                n = 1 if action.nargs in (None, "?") else action.nargs
                n = n if isinstance(n, int) else 0
                for _ in range(n):
                    if i < len(args) and not option_like(args[i]):
                        values.append((i, args[i]))
                        i += 1
        options.append(([tok], values, action))

    def steal(option: list[tuple[int, str]], when) -> bool:
        if len(option) > 1 and when(option[-1][1]):
            free.append(option.pop())
            return True
        return False

    multi = [values for _, values, action in options if action.nargs in ("+", "*")]
    for values in reversed(multi):  # existing paths are checkpoints / masks, not values
        while (variable or len(free) < need) and steal(values, os.path.exists):
            pass
    for values in reversed(multi):  # then the positional minimum
        while len(free) < need and steal(values, lambda tok: True):
            pass
    out = [tok for _, tok in sorted(free)]
    for flags, values, _ in options:
        out += flags + [tok for _, tok in values]
    return out


def _unique_prefix(by_flag: dict[str, argparse.Action], flag: str) -> argparse.Action | None:
    """The action of an abbreviated long option (argparse's ``allow_abbrev``), if unique."""
    if not flag.startswith("--"):
        return None
    hits = {id(a): a for f, a in by_flag.items() if f.startswith(flag)}
    return next(iter(hits.values())) if len(hits) == 1 else None


def _fits(action: argparse.Action, tok: str) -> bool:
    """Whether ``tok`` can be a value of ``action`` (type, choices, ``KEY=VALUE`` metavar)."""
    if action.choices is not None and tok not in action.choices:
        return False
    if isinstance(action.metavar, str) and "=" in action.metavar and "=" not in tok:
        return False
    if callable(action.type) and action.type in (int, float):
        try:
            action.type(tok)
        except ValueError:
            return False
    return True
