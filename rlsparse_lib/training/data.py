"""Training data for each run kind, in TRL's conversational formats.

=============  ==========================================  ====================================
kind           rows                                        data source
=============  ==========================================  ====================================
grpo / rloo /  ``prompt``, ``item``                        the task's questions (reward online)
prime / ppo
sft            ``prompt``, ``completion``                  written reference solutions (OOD)
rft            ``prompt``, ``completion``                  own samples scored correct (in-dist.)
dpo / orpo /   ``prompt``, ``chosen``, ``rejected``        own correct vs own incorrect, or the
simpo                                                      written solution vs a wrong variant
kto            ``prompt``, ``completion``, ``label``       own samples labelled by the scorer, or
                                                           written solutions right / wrong
=============  ==========================================  ====================================

Own samples come from the initial model before training (``sampling`` section), seeded.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from rlsparse_lib.errors import RlsparseError
from rlsparse_lib.training.config import RunConfig, SamplingSection
from rlsparse_lib.training.evaluation import generate
from rlsparse_lib.training.tasks import Task


class DataError(RlsparseError):
    """The training data cannot be built (e.g. no correct sample to fine-tune on)."""


@dataclass
class OwnSamples:
    """Completions of the initial model: ``rows[i] = {"item", "completion", "score"}``."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        n = len(self.rows)
        return {
            "n_samples": n,
            "n_prompts": len({r["item"] for r in self.rows}),
            "accuracy": sum(r["score"] == 1.0 for r in self.rows) / n if n else 0.0,
        }


def sample_own(
    model, tokenizer, task: Task, sampling: SamplingSection, max_new_tokens: int, progress: bool
) -> OwnSamples:
    """``samples_per_prompt`` sampled completions for each of the first ``prompts`` train items."""
    n = len(task.train) if sampling.prompts is None else min(sampling.prompts, len(task.train))
    entries = task.train[:n]
    texts = generate(
        model,
        tokenizer,
        [task.messages(e) for e in entries],
        max_new_tokens=max_new_tokens,
        batch_size=sampling.batch_size,
        num_samples=sampling.samples_per_prompt,
        temperature=sampling.temperature,
        progress=progress,
        desc="sample own completions",
    )
    rows = []
    for i, (e, outs) in enumerate(zip(entries, texts, strict=True)):
        rows += [{"item": i, "completion": c, "score": task.score(c, e)} for c in outs]
    return OwnSamples(rows)


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def build_rows(cfg: RunConfig, task: Task, own: OwnSamples | None) -> list[dict[str, Any]]:
    """The training rows of ``cfg.kind`` (see the module table).

    Raises:
        DataError: the rows would be empty (no correct sample, no correct/incorrect pair).
    """
    rng = random.Random(cfg.seed)
    train = task.train
    kind = cfg.kind
    if kind in ("grpo", "rloo", "prime", "ppo"):
        return [{"prompt": task.messages(e), "item": i} for i, e in enumerate(train)]
    if kind == "sft":
        return [
            {"prompt": task.messages(e), "completion": _assistant(task.reference(e))} for e in train
        ]
    external = cfg.preference is not None and cfg.preference.data == "external"
    pairs = kind in ("dpo", "orpo", "simpo")
    if pairs and external:
        return [
            {
                "prompt": task.messages(e),
                "chosen": _assistant(task.reference(e)),
                "rejected": _assistant(task.wrong_reference(e, rng)),
            }
            for e in train
        ]
    if kind == "kto" and external:
        rows = []
        for e in train:
            rows.append(
                {
                    "prompt": task.messages(e),
                    "completion": _assistant(task.reference(e)),
                    "label": True,
                }
            )
            rows.append(
                {
                    "prompt": task.messages(e),
                    "completion": _assistant(task.wrong_reference(e, rng)),
                    "label": False,
                }
            )
        return rows
    assert own is not None
    by_item: dict[int, list[dict]] = {}
    for r in own.rows:
        by_item.setdefault(r["item"], []).append(r)
    rows = []
    for i, samples in by_item.items():
        prompt = task.messages(train[i])
        good = [s["completion"] for s in samples if s["score"] == 1.0]
        bad = [s["completion"] for s in samples if s["score"] < 1.0]
        if kind == "rft":
            rows += [{"prompt": prompt, "completion": _assistant(c)} for c in dict.fromkeys(good)]
        elif pairs:
            rows += [
                {"prompt": prompt, "chosen": _assistant(g), "rejected": _assistant(b)}
                for g, b in zip(good, bad, strict=False)
            ]
        else:  # kto
            rows += [{"prompt": prompt, "completion": _assistant(c), "label": True} for c in good]
            rows += [{"prompt": prompt, "completion": _assistant(c), "label": False} for c in bad]
    if kind == "kto" and not (any(r["label"] for r in rows) and not all(r["label"] for r in rows)):
        rows = []
    if not rows:
        what = {
            "rft": "correct sample",
            "dpo": "prompt with a correct and an incorrect sample",
            "orpo": "prompt with a correct and an incorrect sample",
            "simpo": "prompt with a correct and an incorrect sample",
            "kto": "correct and incorrect sample",
        }[kind]
        raise DataError(
            f"{kind}: no {what} among {len(own.rows)} own samples (accuracy "
            f"{own.summary()['accuracy']:.3f}); raise sampling.prompts or samples_per_prompt, or "
            "pick an easier task"
        )
    return rows
