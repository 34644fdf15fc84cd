"""Tasks: held-out splits, prompts, answer extraction, reward = reasoning-gym's scorer, references."""

from __future__ import annotations

import random

import pytest
import reasoning_gym

from rlsparse_lib.errors import ConfigError
from rlsparse_lib.training.tasks import EVAL_SEED_OFFSET, Task, TaskSpec, completion_text

EASY = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}
SPECS = [
    TaskSpec("basic_arithmetic", EASY, train_size=40, eval_size=20),
    TaskSpec("chain_sum", EASY, train_size=40, eval_size=20),
    TaskSpec(
        "products", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}, 40, 20
    ),
    TaskSpec("leg_counting", {"min_animals": 1, "max_animals": 2}, train_size=40, eval_size=20),
    TaskSpec("gsm_symbolic", {}, train_size=10, eval_size=5, max_solution_steps=3),
]


@pytest.fixture(scope="module", params=SPECS, ids=lambda s: s.name)
def task(request) -> Task:
    return Task(request.param)


def test_splits_are_held_out_distinct_and_reproducible(task: Task) -> None:
    train_q = [e["question"] for e in task.train]
    eval_q = [e["question"] for e in task.eval]
    assert len(eval_q) == task.spec.eval_size and len(set(eval_q)) == len(eval_q)
    assert not set(eval_q) & set(train_q)
    again = Task(task.spec)
    assert [e["question"] for e in again.eval] == eval_q
    assert [e["answer"] for e in again.train] == [e["answer"] for e in task.train]
    # the evaluation split comes from its own seed: its first question is the generator's
    ref = reasoning_gym.create_dataset(
        task.spec.name, size=200, seed=task.spec.seed + EVAL_SEED_OFFSET, **task.spec.params
    )
    if task.spec.max_solution_steps is None:
        assert any(ref[i]["question"] == eval_q[0] for i in range(len(ref)))


def test_reference_solutions_score_one_and_wrong_ones_do_not(task: Task) -> None:
    rng = random.Random(0)
    for e in task.train[:10]:
        ref = task.reference(e)
        assert task.score(ref, e) == 1.0, (ref, e["answer"])
        wrong = task.wrong_reference(e, rng)
        assert task.extract(wrong) != e["answer"] and task.score(wrong, e) < 1.0


def test_reward_is_the_generators_scorer_on_the_extracted_answer() -> None:
    task = Task(TaskSpec("basic_arithmetic", EASY, train_size=8, eval_size=2))
    scorer = reasoning_gym.create_dataset("basic_arithmetic", size=1, seed=0, **EASY)
    for e in task.train:
        right = f"Let me think. {e['question']} The result is {e['answer']}."
        off = f"The answer is {int(e['answer']) + 10}"
        assert task.score(right, e) == scorer.score_answer(e["answer"], e) == 1.0
        assert task.score(off, e) == scorer.score_answer(str(int(e["answer"]) + 10), e)
        assert task.score("no idea", e) == 0.0
    f = task.reward_function("train")
    rewards = f(
        prompts=[None, None],
        completions=[
            [{"role": "assistant", "content": f"= {task.train[3]['answer']}"}],
            "x 1234567",
        ],
        item=[3, 5],
        trainer_state=None,
    )
    assert rewards[0] == 1.0 and rewards[1] == task.score("x 1234567", task.train[5])


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("5 * -7 = -35", "-35"),
        ("It is 1,234.", "1234"),
        ("x = 3.0", "3"),
        ("2.50 apples", "2.50"),
        ("no number here", None),
        ("first 12 then 7", "7"),
    ],
)
def test_last_number_extraction(text: str, answer: str | None) -> None:
    task = Task(TaskSpec("basic_arithmetic", EASY, train_size=2, eval_size=1))
    assert task.extract(text) == answer


def test_prompt_is_one_user_message_with_the_instruction() -> None:
    task = Task(
        TaskSpec("basic_arithmetic", EASY, train_size=2, eval_size=1, instruction="Be brief.")
    )
    (msg,) = task.messages(task.train[0])
    assert msg["role"] == "user" and msg["content"] == task.train[0]["question"] + "\nBe brief."
    assert completion_text([{"role": "assistant", "content": "a"}, {"content": "b"}]) == "ab"


def test_easy_gsm_symbolic_filter() -> None:
    task = Task(TaskSpec("gsm_symbolic", {}, train_size=6, eval_size=3, max_solution_steps=2))
    for e in task.train + task.eval:
        steps = [
            s
            for s in e["metadata"]["answer_cot"].splitlines()
            if s.strip() and not s.startswith("####")
        ]
        assert len(steps) <= 2


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (TaskSpec("no_such_task"), "no task 'no_such_task'"),
        (TaskSpec("basic_arithmetic", {"min_digitz": 1}), "task.params for basic_arithmetic"),
        (TaskSpec("basic_arithmetic", {"min_digits": 5, "max_digits": 1}), "task.params"),
        (TaskSpec("chain_sum", max_solution_steps=2), "gsm_symbolic only"),
        (
            TaskSpec("products", {"min_digits": 1, "max_digits": 1}, train_size=500, eval_size=10),
            "distinct questions",
        ),
    ],
)
def test_bad_task_specs(spec: TaskSpec, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Task(spec)
