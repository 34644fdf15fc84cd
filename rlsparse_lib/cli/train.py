"""Run a training config (SFT, RFT, GRPO, RLOO, DPO, KTO; full or subnetwork) through TRL.

Outputs go to data/runs/<name>/: the checkpoint series step_XXXXXX/ (bf16, plus fp32/ when the run
keeps fp32 weights), run.json (config, seeds, versions, losses, rewards, evaluation before and
after, in-training sparsity monitor, final update sparsity), monitor.jsonl, eval_*.jsonl.
The config is checked completely before anything is written (unknown keys are errors).
A run that was killed or crashed (data/runs/.<name>.partial/) is resumed from its last saved state
(saved with every checkpoint) and ends bit-identical to an uninterrupted run; --restart starts over.
On a CPU without native bf16 (RLSPARSE_CPU_BF16=native|emulated overrides the detection),
precision mixed computes in fp32 (fp32 master weights, bf16 checkpoints as always); the compute
dtype used and the CPU verdict are printed and recorded in run.json.

examples:
  rlsparse train data/configs/cpu/grpo.yaml
  rlsparse train data/configs/cpu/sft.yaml --set precision=bf16 --name cpu-sft-bf16
  rlsparse train data/configs/cpu/grpo.yaml --set train.steps=5 rl.beta=0.04 --overwrite
  rlsparse train data/configs/cpu/grpo.yaml --restart   # a killed cpu-grpo: start over
  rlsparse diff data/runs/cpu-grpo/step_000000 data/runs/cpu-grpo/step_000020
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, metavar="CONFIG", help="run config (YAML)")
    p.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override config keys (dotted, YAML values), e.g. train.lr=1e-5 precision=fp32",
    )
    p.add_argument("--name", help="run name (folder under data/runs/; default: the config's)")
    p.add_argument("--out-root", type=Path, help="write under OUT_ROOT/data/runs/ instead")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument(
        "--restart",
        action="store_true",
        help="discard a partial (killed) run of this name and start over "
        "(default: resume it from its last saved state, bit-identically)",
    )
    p.add_argument("--dry-run", action="store_true", help="validate and print the config only")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import yaml

    from rlsparse_lib.training.config import load_config

    overrides = list(args.set) + ([f"name={args.name}"] if args.name else [])
    cfg = load_config(args.config, overrides)
    if args.dry_run:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # transformers' own weight-loading bars
    from rlsparse_lib.rules import PAPER_SPARSITY
    from rlsparse_lib.training.precision_modes import compute_line
    from rlsparse_lib.training.runner import train

    result = train(
        cfg,
        out_root=args.out_root,
        overwrite=args.overwrite,
        restart=args.restart,
        progress=not args.quiet,
        say=print,
    )
    m = result.manifest
    print(f"run: {result.path}")
    print(compute_line(m))
    for when in ("before", "after"):
        ev = m["eval"][when]
        if ev:
            print(
                f"eval {when}: accuracy {ev['accuracy']:.3f}  mean reward {ev['mean_reward']:.3f}  (n={ev['n']})"
            )
    for key, d in m["final_diff"].items():
        print(
            f"update sparsity {key} step {d['from_step']} -> {d['to_step']}: "
            f"bitwise {d['sparsity_bitwise']:.4f}  |Δ|<=1e-5 {d[PAPER_SPARSITY]:.4f}"
        )
    return 0
