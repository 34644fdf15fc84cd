"""The evaluation cache (``data/cache/evals/``): a second run from the same θ0 on the same eval split
reuses the evaluations before and after training, byte-identically to a fresh evaluation; anything
that can change a greedy completion misses; a damaged entry is ignored with a warning and rewritten.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import rlsparse_lib.training.eval_cache as eval_cache
import rlsparse_lib.training.evaluation as evaluation
from rlsparse_lib.training.config import config_from_dict
from rlsparse_lib.training.models import load_model
from rlsparse_lib.training.runner import train
from rlsparse_lib.training.tasks import Task, TaskSpec

from .test_train_factory import TASK, make_tiny, tiny_config


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny(tmp_path_factory)


@pytest.fixture
def calls(monkeypatch) -> list[int]:
    """Count the fresh evaluations (the cache's and the runner's ``evaluate``), one entry each."""
    seen: list[int] = []
    original = evaluation.evaluate

    def counting(*args, **kwargs):
        seen.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(eval_cache, "evaluate", counting)
    monkeypatch.setattr(evaluation, "evaluate", counting)
    return seen


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)


def _eval_outputs(run: Path) -> tuple[bytes, bytes, dict]:
    manifest = json.loads((run / "run.json").read_text(encoding="utf-8"))
    before, after = (run / f"eval_{w}.jsonl" for w in ("before", "after"))
    return before.read_bytes(), after.read_bytes(), manifest["eval"]


def test_second_run_reuses_both_evaluations_byte_identically(
    tmp_path: Path, tiny_dir: Path, calls: list[int]
) -> None:
    def run(name: str, **sections) -> Path:
        cfg = config_from_dict(tiny_config(tiny_dir, "sft", name=name, **sections))
        return train(cfg, out_root=tmp_path, progress=False).path

    first = run("first")
    assert len(calls) == 2  # before and after: both computed
    entries = sorted(p.name for p in (tmp_path / "data" / "cache" / "evals").iterdir())
    assert len(entries) == 4 and {Path(e).suffix for e in entries} == {".json", ".jsonl"}
    second = run("second")
    assert len(calls) == 2  # both read from the cache
    fresh = run("fresh", eval={"cache": False})
    assert len(calls) == 4  # cache off: evaluated anew
    assert _eval_outputs(first) == _eval_outputs(second) == _eval_outputs(fresh)
    assert json.loads((fresh / "run.json").read_text())["config"]["eval"]["cache"] is False
    # a hit changes nothing else: training continues from the same state
    a, b = _weights(first / "step_000002"), _weights(second / "step_000002")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    run("fp32", precision="fp32", train={"steps": 1}, eval={"after": False})
    assert len(calls) == 5  # same weights, another precision record: a miss


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path):
    return load_model(str(tiny_dir))


def _evaluate(model, tok, task: Task, cache: Path, **changes):
    settings = {"batch_size": 4, "max_new_tokens": 4, "precision": {"mode": "mixed"}}
    settings.update(changes)
    return eval_cache.cached_evaluate(model, tok, task, cache, progress=False, **settings)


def test_anything_that_can_change_a_completion_misses(tmp_path: Path, tiny, calls) -> None:
    model, tok = tiny
    spec = TaskSpec(**TASK)
    task = Task(spec)
    base, hit = _evaluate(model, tok, task, tmp_path)
    assert not hit and len(calls) == 1
    again, hit = _evaluate(model, tok, task, tmp_path)
    assert hit and again == base and len(calls) == 1
    misses = [
        (Task(dataclasses.replace(spec, eval_size=5)), {}),
        (Task(dataclasses.replace(spec, seed=1)), {}),
        (Task(dataclasses.replace(spec, train_size=17)), {}),  # its questions leave the eval split
        (Task(dataclasses.replace(spec, instruction="Answer.")), {}),
        (task, {"batch_size": 2}),
        (task, {"max_new_tokens": 5}),
        (task, {"precision": {"mode": "fp32"}}),
    ]
    for i, (other, changes) in enumerate(misses):
        _, hit = _evaluate(model, tok, other, tmp_path, **changes)
        assert not hit and len(calls) == 2 + i, (other.spec, changes)
    weight = model.model.layers[0].mlp.up_proj.weight
    with torch.no_grad():
        saved = weight[0, 0].clone()
        weight[0, 0] = torch.nextafter(saved, saved + 1)  # one ULP in one weight
        try:
            _, hit = _evaluate(model, tok, task, tmp_path)
        finally:
            weight[0, 0] = saved
    assert not hit
    assert _evaluate(model, tok, task, tmp_path)[1]  # restored weights: a hit again


def test_weights_digest_equals_a_naive_sha256(tiny, tiny_dir: Path) -> None:
    model, _ = tiny
    named = dict(model.named_parameters())  # tied embeddings once
    buffers = dict(model.named_buffers())  # rotary inv_freq: what it computes with, too
    assert buffers and not buffers.keys() & named.keys()
    named.update(buffers)
    h = hashlib.sha256()
    for name in sorted(named):
        t = named[name].detach()
        h.update(json.dumps({"name": name, "dtype": str(t.dtype), "shape": list(t.shape)}).encode())
        h.update(b"\n" + t.numpy().tobytes())
    assert eval_cache.weights_digest(model) == h.hexdigest()
    half, _ = load_model(str(tiny_dir), "bfloat16")
    assert eval_cache.weights_digest(half) != h.hexdigest()  # another dtype, another digest


@pytest.mark.parametrize(
    "damage",
    ["truncate", "flip", "meta-garbage", "meta-missing", "records-missing", "key"],
)
def test_a_damaged_entry_is_ignored_with_a_warning_and_rewritten(
    tmp_path: Path, tiny, calls, damage: str
) -> None:
    model, tok = tiny
    task = Task(TaskSpec(**TASK))
    base, _ = _evaluate(model, tok, task, tmp_path)
    (meta,) = tmp_path.glob("*.json")
    records = meta.with_suffix(".jsonl")
    good_meta, good_records = meta.read_bytes(), records.read_bytes()
    if damage == "truncate":
        records.write_bytes(good_records[:-7])
    elif damage == "flip":  # same size, one character changed
        text = good_records.decode()
        i = text.index('"completion": "') + len('"completion": "')
        records.write_bytes((text[:i] + chr(ord(text[i]) ^ 1) + text[i + 1 :]).encode())
    elif damage == "meta-garbage":
        meta.write_text("{not json")
    elif damage == "meta-missing":
        meta.unlink()
    elif damage == "records-missing":
        records.unlink()
    else:  # an entry stored under this name for another evaluation
        data = json.loads(good_meta)
        data["key"]["generation"]["max_new_tokens"] = 99
        meta.write_text(json.dumps(data))
    with pytest.warns(RuntimeWarning, match=r"evaluation cache .*\.json: .*evaluating again"):
        again, hit = _evaluate(model, tok, task, tmp_path)
    assert not hit and again == base and len(calls) == 2
    assert meta.read_bytes() == good_meta and records.read_bytes() == good_records
    assert _evaluate(model, tok, task, tmp_path)[1]
