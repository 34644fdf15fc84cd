"""Greedy accuracy of saved checkpoints on their run's held-out split."""

from __future__ import annotations

from pathlib import Path


def checkpoint_accuracy(checkpoint: str | Path, run, max_new_tokens: int | None = None) -> float:
    """Accuracy of ``checkpoint`` on ``run``'s evaluation split (same task, seed and sizes)."""
    from rlsparse_lib.training import config_from_dict
    from rlsparse_lib.training.evaluation import evaluate
    from rlsparse_lib.training.models import load_model
    from rlsparse_lib.training.tasks import Task

    cfg = config_from_dict(run.manifest["config"], where=str(run.path / "run.json"))
    model, tokenizer = load_model(str(checkpoint), "float32")
    result = evaluate(
        model,
        tokenizer,
        Task(cfg.task),
        batch_size=cfg.eval.batch_size,
        max_new_tokens=max_new_tokens or cfg.eval.max_new_tokens,
        progress=False,
    )
    return float(result.summary()["accuracy"])
