"""Helpers for the training tests (tiny random model, tiny run configs), and tests of the tiny model.

The tiny model is a 2-layer random Llama with a byte-level tokenizer: it writes gibberish, so tests
that need a reward signal replace the task's scorer by :func:`digit_score` (reward varies between
completions, which GRPO/RLOO need for non-zero advantages).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import torch

from rlsparse_lib.training.models import build_tiny_model, load_model
from rlsparse_lib.training.tasks import Task

TASK = {
    "name": "basic_arithmetic",
    "params": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1},
    "train_size": 16,
    "eval_size": 4,
}


def digit_score(self: Task, completion: str, entry: dict) -> float:
    """A stand-in scorer with variance on gibberish: (# digits and spaces) mod 3, in {0, 1, 2}."""
    return float(sum(c.isdigit() or c == " " for c in completion) % 3)


def tiny_config(model_dir: Path, kind: str, **sections: Any) -> dict[str, Any]:
    """A run config dict that trains the tiny model for 2 steps (a few seconds)."""
    cfg: dict[str, Any] = {
        "kind": kind,
        "name": f"tiny-{kind}",
        "model": str(model_dir),
        "precision": "mixed",
        "seed": 0,
        "task": dict(TASK),
        "train": {
            "steps": 2,
            "lr": 1e-3,
            "batch_size": 2,
            "max_prompt_length": 200,
            "max_completion_length": 32,
        },
        "checkpoints": {"every": 1},
        "eval": {"max_new_tokens": 4, "batch_size": 4},
    }
    if kind in ("dpo", "kto"):
        cfg["preference"] = {"data": "external"}
    if kind in ("grpo", "rloo"):
        cfg["rl"] = {"num_generations": 2}
        cfg["train"]["max_completion_length"] = 8
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def make_tiny(factory: pytest.TempPathFactory) -> Path:
    """Build the tiny model in a fresh temporary folder (for module-scoped fixtures)."""
    return build_tiny_model(factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny(tmp_path_factory)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tiny_model_is_deterministic(tmp_path: Path, tiny_dir: Path) -> None:
    again = build_tiny_model(tmp_path / "again")
    assert _sha(again / "model.safetensors") == _sha(tiny_dir / "model.safetensors")
    other = build_tiny_model(tmp_path / "other", seed=1)
    assert _sha(other / "model.safetensors") != _sha(tiny_dir / "model.safetensors")


def test_tiny_tokenizer_round_trips_and_renders_chatml(tiny_dir: Path) -> None:
    model, tok = load_model(str(tiny_dir))
    text = "Calculate 7 * -3.\nGive the final answer as a number. äß€"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode()) and tok.decode(ids) == text
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.padding_side == "left" and tok.pad_token == "<|endoftext|>"
    assert model.config.tie_word_embeddings and model.dtype == torch.float32
    bf16, _ = load_model(str(tiny_dir), "bfloat16")
    w32 = model.model.layers[0].mlp.up_proj.weight
    assert torch.equal(bf16.model.layers[0].mlp.up_proj.weight, w32.to(torch.bfloat16))
