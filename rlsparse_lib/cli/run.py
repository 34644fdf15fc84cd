"""Execute experiment notebooks through papermill.

NOTEBOOK is `all`, a number (`3`), a stem (`03_layerwise`) or a path. Executed notebooks go to
data/runs/notebooks/, figures to figures/, small result tables to data/results/<notebook>/, all
under --out-root when given, else under the repository; smoke runs default to data/cache/smoke/
(git-ignored), so they never overwrite the committed results. A line per code cell says which
one runs and the time elapsed; Ctrl-C stops the run (exit status 130).

examples:
  rlsparse run 00                       # the quickstart (main job)
  rlsparse run all --smoke              # every notebook, tiny configuration, into data/cache/smoke/
  rlsparse run 01 -p SOURCE=hub         # the paper's public pairs (needs hub access)
  rlsparse run 06 -p SEED=1 --out-root /tmp/rls
  rlsparse run 10 --pairs data/pairs/paper.yaml   # the pair report of every registry pair
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("notebook", metavar="NOTEBOOK", help="'all', a number, a stem or a path")
    p.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a parameter of the notebooks' parameters cell (repeatable)",
    )
    p.add_argument("--smoke", action="store_true", help="tiny configuration (sets SMOKE=True)")
    p.add_argument(
        "--pairs",
        metavar="REGISTRY",
        default=None,
        help="with notebook 10: run it once per pair of this registry YAML (data/pairs/*.yaml), "
        "each rendered to report.html; pairs not reported are listed with the reason (exit 1)",
    )
    p.add_argument("--out-root", default=None, help="write data/ and figures/ under this folder")
    p.add_argument(
        "--list", action="store_true", help="list the notebooks and their parameters, run nothing"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="do not stream what the cells print")


def run(args: argparse.Namespace) -> int:
    import sys

    from rlsparse_lib.experiments.papermill_runner import (
        NotebookInterrupted,
        notebook_parameters,
        parse_params,
        resolve,
        run_notebooks,
    )

    if args.pairs is not None:
        return _run_pairs(args)
    if args.list:
        for nb in resolve(args.notebook):
            params = notebook_parameters(nb)
            print(nb.stem)
            for name, info in params.items():
                print(
                    f"  {name} = {info['default']}  ({info['inferred_type_name']}) {info['help']}"
                )
        return 0
    try:
        done = run_notebooks(
            args.notebook,
            parse_params(args.param),
            smoke=args.smoke,
            out_root=args.out_root,
            log=not args.quiet,
        )
    except NotebookInterrupted as stop:
        print(f"rlsparse run: {stop}", file=sys.stderr)
        return 130
    for path in done:
        print(f"executed: {path}")
    return 0


def _run_pairs(args: argparse.Namespace) -> int:
    from rlsparse_lib.errors import ConfigError
    from rlsparse_lib.experiments.papermill_runner import (
        PAIR_NOTEBOOK,
        parse_params,
        resolve,
        run_pairs,
    )

    if [nb.stem for nb in resolve(args.notebook)] != [PAIR_NOTEBOOK]:
        raise ConfigError(f"--pairs runs notebook 10 ({PAIR_NOTEBOOK}), not {args.notebook!r}")
    params = parse_params(args.param)
    if args.smoke:
        params["SMOKE"] = True
    rows = run_pairs(args.pairs, params, out_root=args.out_root, log=not args.quiet)
    for r in rows:
        where = r.get("html") or ""
        print(f"{r['id']}: {r['status']} {where}".rstrip())
    done = sum(r["status"] == "done" for r in rows)
    print(f"{done} of {len(rows)} pairs reported")
    return 0 if done == len(rows) else 1
