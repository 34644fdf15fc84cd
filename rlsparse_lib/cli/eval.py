"""Greedy accuracy of a checkpoint on a verifiable task's held-out split.

CHECKPOINT is a model folder (e.g. a run's data/runs/<run>/step_000020), a built-in model name
(smollm2-135m-instruct, tiny-random), a .gguf file or a hub id. The task is a reasoning-gym
generator. The held-out split excludes the training questions, so it depends on the task's
seed, parameters and train size: --config takes all three from a run config or a run folder, which
reproduces that run's evaluation split exactly.

examples:
  rlsparse eval data/runs/cpu-grpo/step_000020 --task basic_arithmetic \\
      --param min_terms=2 max_terms=2 min_digits=1 max_digits=2
  rlsparse eval data/runs/cpu-grpo/step_000020 --config data/runs/cpu-grpo
  rlsparse eval smollm2-135m-instruct --task chain_sum --n 128 --json eval.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="model folder, built-in name or hub id")
    p.add_argument(
        "--task", default="basic_arithmetic", help="reasoning-gym task (default: %(default)s)"
    )
    p.add_argument(
        "--param",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="task generator parameters (YAML values), e.g. min_digits=1 max_digits=2",
    )
    p.add_argument(
        "--config",
        type=Path,
        metavar="RUN",
        help="take the task (and --n) from a run config YAML or a run folder (its config.yaml)",
    )
    p.add_argument("--n", type=int, default=64, help="held-out questions (default: %(default)s)")
    p.add_argument(
        "--seed", type=int, default=0, help="task seed of the training split (default: %(default)s)"
    )
    p.add_argument(
        "--train-size", type=int, default=256, help="training split size (default: %(default)s)"
    )
    p.add_argument("--max-new-tokens", type=int, default=48, help="(default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="(default: %(default)s)")
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="weights dtype for evaluation (default: %(default)s)",
    )
    p.add_argument(
        "--json", type=Path, metavar="PATH", help="write summary and per-question records"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from rlsparse_lib.atomic import write_text_atomic
    from rlsparse_lib.errors import ConfigError
    from rlsparse_lib.overrides import parse_assignments
    from rlsparse_lib.training.tasks import Task, TaskSpec

    params = parse_assignments(args.param, flag="--param", example="max_terms=3")
    if args.n < 1 or args.max_new_tokens < 1 or args.batch_size < 1:
        raise ConfigError("--n, --max-new-tokens and --batch-size must be >= 1")
    if args.config is not None:
        from rlsparse_lib.training.config import load_config

        path = args.config / "config.yaml" if args.config.is_dir() else args.config
        spec = load_config(path).task
    else:
        spec = TaskSpec(
            name=args.task,
            params=params,
            train_size=args.train_size,
            eval_size=args.n,
            seed=args.seed,
        )
    task = Task(spec)

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    from rlsparse_lib.training.evaluation import evaluate
    from rlsparse_lib.training.models import load_model

    hf_logging.disable_progress_bar()
    model, tokenizer = load_model(args.checkpoint, args.dtype)
    result = evaluate(
        model,
        tokenizer,
        task,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        progress=not args.quiet,
    )
    s = result.summary()
    print(
        f"{args.checkpoint}  {spec.name}: accuracy {s['accuracy']:.3f}  mean reward "
        f"{s['mean_reward']:.3f}  answered {s['answered']:.3f}  (n={s['n']})"
    )
    if args.json:
        doc = {
            "checkpoint": args.checkpoint,
            "task": task.describe(),
            "dtype": args.dtype,
            **s,
            "records": result.records,
        }
        write_text_atomic(args.json, json.dumps(doc, indent=2) + "\n")
    return 0
