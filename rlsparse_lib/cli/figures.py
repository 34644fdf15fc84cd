"""Regenerate every figure from the stored results (data/results/<notebook>/), without training
or reading any checkpoint. Figures are written to figures/ (under --out-root when given).

Each figure id (the file stem under figures/) maps to its drawing code in
rlsparse_lib/experiments/figures.py (FIGURES).

examples:
  rlsparse figures                 # all notebooks with stored results
  rlsparse figures --only 03 07
  rlsparse figures --only fig3_layer_module
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--only",
        nargs="+",
        default=[],
        metavar="NN",
        help="notebook numbers or stems, or figure ids (e.g. fig3_layer_module)",
    )
    p.add_argument(
        "--out-root", default=None, help="read data/results and write figures/ under this folder"
    )


def run(args: argparse.Namespace) -> int:
    import json

    from rlsparse_lib.errors import ConfigError
    from rlsparse_lib.experiments import Experiment
    from rlsparse_lib.experiments.figures import FIGURES, draw_notebook, figure_ids, notebooks
    from rlsparse_lib.paths import Paths

    paths = Paths.at(args.out_root)
    wanted = {w.zfill(2) if w.isdigit() else w for w in args.only}
    wanted_figs = {w for w in wanted if w in FIGURES}
    done = 0
    for notebook in notebooks():
        only = None
        if wanted and notebook not in wanted and notebook.split("_", 1)[0] not in wanted:
            only = wanted_figs & set(figure_ids(notebook))
            if not only:
                continue
        record_path = paths.results / notebook / "record.json"
        if not record_path.is_file():
            print(f"{notebook}: no stored results (run the notebook first)")
            continue
        rec = json.loads(record_path.read_text(encoding="utf-8"))
        exp = Experiment(
            notebook,
            rec.get("source", "local"),
            rec.get("smoke", False),
            args.out_root or "",
            seed=rec.get("seed", 0),
            family=rec.get("family", "cpu"),
        )
        exp.record_data.update({k: v for k, v in rec.items() if k != "figures"})
        for fig_id, fig in draw_notebook(exp, only).items():
            exp.figure(fig_id, fig)
            print(f"{notebook}: figures/{fig_id}.png, .pdf")
            done += 1
    if wanted and not done:
        raise ConfigError(f"no figures drawn for {' '.join(sorted(wanted))}")
    return 0
