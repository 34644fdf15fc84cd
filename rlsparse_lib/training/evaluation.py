"""Batched generation and greedy accuracy on a task's held-out split.

Prompts are rendered with the tokenizer's chat template, sorted by length into left-padded
batches (less padding), and the completions are returned in the original order. Greedy decoding
(``do_sample=False``) makes the evaluation deterministic for given weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlsparse_lib.progress import progress_bar
from rlsparse_lib.training.tasks import Task


@dataclass
class EvalResult:
    """Greedy evaluation of one model on one split.

    Attributes:
        n: questions; accuracy: fraction scored exactly 1; mean_reward: mean scorer value;
        answered: fraction with an extracted answer; records: per question (question, answer,
        completion, extracted, score).
    """

    n: int
    accuracy: float
    mean_reward: float
    answered: float
    max_new_tokens: int
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "accuracy": self.accuracy,
            "mean_reward": self.mean_reward,
            "answered": self.answered,
            "max_new_tokens": self.max_new_tokens,
        }


def generate(
    model,
    tokenizer,
    prompts: list[list[dict[str, str]]],
    *,
    max_new_tokens: int,
    batch_size: int = 32,
    num_samples: int = 1,
    temperature: float | None = None,
    progress: bool = True,
    desc: str = "generate",
) -> list[list[str]]:
    """Complete chat prompts: greedy when ``temperature`` is None, else sampled.

    Args:
        prompts: chat messages per prompt.
        num_samples: completions per prompt (sampling only).
        batch_size: prompts per ``generate`` call.

    Returns:
        ``num_samples`` completion texts (special tokens removed) per prompt, in input order.
    """
    import torch
    from transformers import GenerationConfig

    if temperature is None and num_samples != 1:
        raise ValueError("greedy decoding gives one completion per prompt")
    texts = [
        tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False)
        for p in prompts
    ]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
    sampling = {} if temperature is None else {"temperature": temperature, "top_p": 1.0, "top_k": 0}
    gen = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=temperature is not None,
        num_return_sequences=num_samples,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **sampling,
    )
    out: list[list[str]] = [[] for _ in texts]
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    bar = progress_bar(
        total=len(texts), desc=desc, unit="prompt", disable=None if progress else True
    )
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                enc = tokenizer(
                    [texts[i] for i in idx],
                    return_tensors="pt",
                    padding=True,
                    add_special_tokens=False,
                ).to(model.device)
                ids = model.generate(**enc, generation_config=gen)
                new = ids[:, enc["input_ids"].shape[1] :]
                decoded = tokenizer.batch_decode(new, skip_special_tokens=True)
                for j, i in enumerate(idx):
                    out[i] = decoded[j * num_samples : (j + 1) * num_samples]
                bar.update(len(idx))
    finally:
        bar.close()
        tokenizer.padding_side = side
        model.train(was_training)
    return out


def evaluate(
    model,
    tokenizer,
    task: Task,
    split: str = "eval",
    *,
    batch_size: int = 32,
    max_new_tokens: int = 48,
    progress: bool = True,
) -> EvalResult:
    """Greedy accuracy and mean reward of ``model`` on a task split (default: held-out eval)."""
    entries = task.split(split)
    completions = generate(
        model,
        tokenizer,
        [task.messages(e) for e in entries],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
        desc=f"eval {task.spec.name}",
    )
    records = []
    for e, (c,) in zip(entries, completions, strict=True):
        records.append(
            {
                "question": e["question"],
                "answer": e["answer"],
                "completion": c,
                "extracted": task.extract(c),
                "score": task.score(c, e),
            }
        )
    n = len(records)
    return EvalResult(
        n=n,
        accuracy=sum(r["score"] == 1.0 for r in records) / n,
        mean_reward=sum(r["score"] for r in records) / n,
        answered=sum(r["extracted"] is not None for r in records) / n,
        max_new_tokens=max_new_tokens,
        records=records,
    )
