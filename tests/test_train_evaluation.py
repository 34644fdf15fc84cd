"""Batched greedy generation and accuracy accounting."""

from __future__ import annotations

import pytest
import torch

import rlsparse_lib.training.evaluation as evaluation
from rlsparse_lib.training.evaluation import evaluate, generate
from rlsparse_lib.training.models import build_tiny_model, load_model
from rlsparse_lib.training.tasks import Task, TaskSpec

EASY = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    return load_model(str(build_tiny_model(tmp_path_factory.mktemp("m") / "tiny")))


def test_batched_left_padded_greedy_equals_one_by_one(tiny) -> None:
    model, tok = tiny
    prompts = [
        [{"role": "user", "content": "hi"}],
        [{"role": "user", "content": "Calculate 12 + 7 and explain the steps in detail."}],
        [{"role": "user", "content": "2*3?"}],
        [{"role": "user", "content": "A much longer question " * 4}],
    ]
    batched = generate(model, tok, prompts, max_new_tokens=6, batch_size=4, progress=False)
    single = [generate(model, tok, [p], max_new_tokens=6, progress=False)[0] for p in prompts]
    assert batched == single
    # and greedy equals the argmax continuation computed by hand for one prompt
    text = tok.apply_chat_template(prompts[1], add_generation_prompt=True, tokenize=False)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        for _ in range(6):
            nxt = model(ids).logits[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
            if int(nxt) == tok.eos_token_id:
                break
    n_prompt = len(tok(text, add_special_tokens=False)["input_ids"])
    assert tok.decode(ids[0, n_prompt:], skip_special_tokens=True) == single[1][0]
    assert model.training is False and tok.padding_side == "left"


def test_sampling_returns_k_completions_in_prompt_order(tiny) -> None:
    model, tok = tiny
    prompts = [[{"role": "user", "content": "a" * n}] for n in (9, 1, 5)]
    torch.manual_seed(0)
    out = generate(
        model, tok, prompts, max_new_tokens=5, num_samples=3, temperature=1.0, progress=False
    )
    assert [len(x) for x in out] == [3, 3, 3]
    torch.manual_seed(0)
    assert (
        generate(
            model, tok, prompts, max_new_tokens=5, num_samples=3, temperature=1.0, progress=False
        )
        == out
    )
    with pytest.raises(ValueError, match="greedy"):
        generate(model, tok, prompts, max_new_tokens=2, num_samples=2)


def test_accuracy_counts_scorer_value_one(monkeypatch, tiny) -> None:
    model, tok = tiny
    task = Task(TaskSpec("basic_arithmetic", EASY, train_size=4, eval_size=6))
    answers = [e["answer"] for e in task.eval]
    fake = [[f"= {a}"] for a in answers[:3]] + [["no answer"], ["= 100000"], [f"so {answers[5]}"]]
    monkeypatch.setattr(evaluation, "generate", lambda *a, **k: fake)
    r = evaluate(model, tok, task, progress=False)
    assert r.n == 6 and r.accuracy == pytest.approx(4 / 6)
    assert r.answered == pytest.approx(5 / 6)
    assert r.mean_reward == pytest.approx(sum(x["score"] for x in r.records) / 6)
    assert [x["extracted"] for x in r.records][3:5] == [None, "100000"]
    assert r.summary()["n"] == 6 and set(r.records[0]) == {
        "question",
        "answer",
        "completion",
        "extracted",
        "score",
    }
