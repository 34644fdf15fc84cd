"""Verifiable tasks from reasoning-gym: prompts, answer extraction, reward, reference solutions.

A task is a reasoning-gym generator at a chosen difficulty (offline, procedural, with a scorer).
The training split and the held-out evaluation split are generated from different seeds; every
evaluation question is distinct and absent from the training split. The reward of a completion is
the generator's own scorer (``score_answer``) applied to the extracted answer, so partial credit
is whatever reasoning-gym gives; *accuracy* counts a score of exactly 1.

Reference solutions (for SFT and for externally written preference pairs) are written from the
generator's metadata: ``expression = answer`` for arithmetic, the worked solution of GSM-Symbolic,
the per-animal sum for leg counting, else ``The answer is N.``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from rlsparse_lib.errors import ConfigError

EXTRACTORS = ("last_number", "text")
DEFAULT_INSTRUCTION = "Give the final answer as a number."
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
#: seed offset of the evaluation split (any fixed, large odd number)
EVAL_SEED_OFFSET = 1_000_003


@dataclass(frozen=True)
class TaskSpec:
    """Which task and how much of it.

    Attributes:
        name: reasoning-gym dataset name (e.g. ``basic_arithmetic``).
        params: generator parameters (difficulty), passed to ``reasoning_gym.create_dataset``.
        train_size: training questions; eval_size: held-out evaluation questions.
        seed: generator seed of the training split (the evaluation split uses seed + 1000003).
        extract: ``last_number`` (the last number in the completion, commas removed) or ``text``.
        instruction: appended to every question on a new line ("" for none).
        max_solution_steps: GSM-Symbolic only: keep questions whose worked solution has at most
            this many steps (the "easy" subset); None keeps all.
    """

    name: str = "basic_arithmetic"
    params: dict[str, Any] = field(default_factory=dict)
    train_size: int = 256
    eval_size: int = 64
    seed: int = 0
    extract: str = "last_number"
    instruction: str = DEFAULT_INSTRUCTION
    max_solution_steps: int | None = None


class Task:
    """A task with its two splits. Entries are reasoning-gym dicts (question, answer, metadata)."""

    def __init__(self, spec: TaskSpec) -> None:
        import reasoning_gym

        if spec.extract not in EXTRACTORS:
            raise ConfigError(
                f"task.extract: unknown extractor {spec.extract!r} (use one of {', '.join(EXTRACTORS)})"
            )
        if spec.train_size < 1 or spec.eval_size < 1:
            raise ConfigError("task.train_size and task.eval_size must be >= 1")
        if spec.max_solution_steps is not None and spec.name != "gsm_symbolic":
            raise ConfigError("task.max_solution_steps applies to gsm_symbolic only")
        if spec.name not in reasoning_gym.factory.DATASETS:
            raise ConfigError(f"task.name: reasoning-gym has no task {spec.name!r}")
        self.spec = spec
        self._scorer = self._make(1, spec.seed)  # scoring needs an instance, not its data
        self.train = self._draw(spec.seed, spec.train_size, exclude=set())
        seen = {e["question"] for e in self.train}
        self.eval = self._draw(spec.seed + EVAL_SEED_OFFSET, spec.eval_size, exclude=seen)

    def _make(self, size: int, seed: int):
        import reasoning_gym

        try:
            return reasoning_gym.create_dataset(
                self.spec.name, size=size, seed=seed, **self.spec.params
            )
        except (TypeError, ValueError, AssertionError) as exc:
            raise ConfigError(
                f"task.params for {self.spec.name}: {exc or 'rejected by reasoning-gym'} "
                f"(params {self.spec.params})"
            ) from exc

    def _draw(self, seed: int, n: int, exclude: set[str]) -> list[dict]:
        """``n`` entries from a pool 8× larger; distinct questions not in ``exclude``."""
        pool = self._make(8 * n + 16, seed)
        out: list[dict] = []
        questions = set(exclude)
        for i in range(len(pool)):
            e = pool[i]
            if e["question"] in questions or not self._keep(e):
                continue
            questions.add(e["question"])
            out.append(e)
            if len(out) == n:
                return out
        raise ConfigError(
            f"task {self.spec.name}: only {len(out)} distinct questions for {n} requested "
            "(widen task.params or lower the split sizes)"
        )

    def _keep(self, e: dict) -> bool:
        if self.spec.max_solution_steps is None:
            return True
        return _solution_steps(e) <= self.spec.max_solution_steps

    # ---- prompts and answers ---------------------------------------------------------------
    def messages(self, entry: dict) -> list[dict[str, str]]:
        """The chat prompt: one user message, question plus the instruction."""
        text = entry["question"].rstrip()
        if self.spec.instruction:
            text += "\n" + self.spec.instruction
        return [{"role": "user", "content": text}]

    def extract(self, completion: str) -> str | None:
        """The answer in a completion (None when there is none)."""
        if self.spec.extract == "text":
            return completion.strip() or None
        found = _NUMBER.findall(completion)
        if not found:
            return None
        num = found[-1].replace(",", "")
        return re.sub(r"\.0+$", "", num)

    def score(self, completion: str, entry: dict) -> float:
        """The generator's scorer on the extracted answer (0 when nothing was extracted)."""
        answer = self.extract(completion)
        if answer is None:
            return 0.0
        return float(self._scorer.score_answer(answer=answer, entry=entry))

    def reward_function(self, split: str = "train") -> Callable[..., list[float]]:
        """A TRL reward function: ``f(prompts, completions, item, **kw) -> list[float]``.

        The dataset rows carry the entry index in column ``item``.
        """
        entries = self.split(split)

        def task_reward(prompts, completions, item, **kwargs) -> list[float]:
            return [
                self.score(completion_text(c), entries[i])
                for c, i in zip(completions, item, strict=True)
            ]

        task_reward.__name__ = f"{self.spec.name}_reward"
        return task_reward

    def split(self, split: str) -> list[dict]:
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', not {split!r}")
        return self.train if split == "train" else self.eval

    # ---- written solutions -----------------------------------------------------------------
    def reference(self, entry: dict) -> str:
        """A reference solution written from the generator's metadata (ends with the answer)."""
        meta, answer = entry.get("metadata", {}), entry["answer"]
        if "answer_cot" in meta:
            steps = [s for s in meta["answer_cot"].splitlines() if not s.startswith("####")]
            return "\n".join([*steps, f"The answer is {answer}."])
        if "expression" in meta:
            return f"{meta['expression']} = {answer}"
        if self.spec.name == "leg_counting" and "animals" in meta:
            from reasoning_gym.arithmetic.leg_counting import ANIMALS

            parts = [
                f"{n} {a} × {ANIMALS[a]} legs = {n * ANIMALS[a]}"
                for a, n in meta["animals"].items()
            ]
            return "\n".join([*parts, f"The answer is {answer}."])
        return f"The answer is {answer}."

    def wrong_reference(self, entry: dict, rng: random.Random) -> str:
        """The reference solution with its final answer replaced by a wrong number.

        Raises:
            ConfigError: the task's answers are not numbers.
        """
        right = entry["answer"]
        try:
            value = Decimal(right.replace(",", ""))
        except InvalidOperation as exc:
            raise ConfigError(
                f"task {self.spec.name}: written wrong answers need numeric answers, got {right!r}"
            ) from exc
        wrong = str(value + rng.choice([-1, 1]) * rng.randint(1, max(2, int(abs(value)) // 2 + 1)))
        text = self.reference(entry)
        head, sep, tail = text.rpartition(right)
        return head + wrong + tail if sep else f"{text}\nThe answer is {wrong}."

    def describe(self) -> dict[str, Any]:
        """JSON-able record of the task (spec and split sizes)."""
        return {
            "name": self.spec.name,
            "params": self.spec.params,
            "seed": self.spec.seed,
            "eval_seed": self.spec.seed + EVAL_SEED_OFFSET,
            "train_size": len(self.train),
            "eval_size": len(self.eval),
            "extract": self.spec.extract,
            "instruction": self.spec.instruction,
            "max_solution_steps": self.spec.max_solution_steps,
        }


def completion_text(completion: str | list[dict[str, str]]) -> str:
    """Text of a TRL completion: a string, or a list of messages (their contents joined)."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content", "") for m in completion)


def _solution_steps(entry: dict) -> int:
    cot = entry.get("metadata", {}).get("answer_cot", "")
    return sum(1 for line in cot.splitlines() if line.strip() and not line.startswith("####"))
