"""Reuse a greedy evaluation of the same weights on the same questions: ``data/cache/evals/``.

Greedy decoding is deterministic, so an evaluation is a function of its inputs. Runs that share
θ0 and the evaluation split (notebooks 01 and 12: many runs from one θ0) evaluate the same thing
before training; the first run computes it, the others read it back. The key
(:func:`evaluation_key`) is everything that can change a greedy completion or its score:

* ``weights``: sha256 of the parameters and buffers *as the model holds them* (sorted by name;
  each tensor's name, dtype, shape and bytes), plus the model config and generation config;
* ``tokenizer``: sha256 of its full definition (vocabulary, merges, normalizer, chat template,
  special tokens);
* ``task``: the task section (name, params, seed, sizes, instruction, extract rule: the train
  split's questions are excluded from the eval split, so its size counts) and sha256 of the eval
  split as prompted (messages and answers);
* ``generation``: ``max_new_tokens`` and ``batch_size`` (left padding changes the shapes of the
  matmuls, so it can change a near tie);
* ``compute``: the run's precision record (mode, compute dtype), the device, torch's thread count,
  CPU kernel level and deterministic-algorithms flag;
* ``versions``: the library versions of a run (torch, transformers, reasoning-gym, …) and
  :data:`CACHE_VERSION`.

Each entry is ``<sha256 of the key>.jsonl`` (the records, exactly as the run writes them) and
``<sha256>.json`` (key, the records' sha256 and size, the summary), both written atomically, the
JSON last. An entry whose JSON is unreadable, whose key differs or whose records do not match the
stored checksum is ignored with a warning, recomputed and overwritten.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import warnings
from pathlib import Path
from typing import Any

from rlsparse_lib.atomic import write_text_atomic
from rlsparse_lib.training.evaluation import EvalResult, evaluate
from rlsparse_lib.training.tasks import Task

#: bump when the evaluation code changes what it writes for the same inputs
CACHE_VERSION = 1
SCHEMA = "rlsparse.eval_cache/1"


def weights_digest(model) -> str:
    """sha256 of ``model``'s parameters and buffers as held now: per tensor (sorted by name, tied
    ones once) its name, dtype and shape as a JSON line, then its bytes (copied to the CPU)."""
    import torch

    tensors = dict(model.named_parameters())
    for name, b in model.named_buffers():
        tensors.setdefault(name, b)
    h = hashlib.sha256()
    with torch.no_grad():
        for name in sorted(tensors):
            t = tensors[name].detach()
            head = {"name": name, "dtype": str(t.dtype), "shape": list(t.shape)}
            h.update((json.dumps(head) + "\n").encode())
            flat = t.reshape(-1).contiguous().cpu()
            h.update(flat.view(torch.uint8).numpy().data)
    return h.hexdigest()


def tokenizer_digest(tokenizer) -> str:
    """sha256 of a tokenizer's full definition: the fast tokenizer's JSON (else the vocabulary),
    the chat template and the special tokens. The JSON's ``padding`` and ``truncation`` are left
    out: they are the last call's settings (generation pads on the left, never truncates)."""
    if getattr(tokenizer, "is_fast", False):
        spec = json.loads(tokenizer.backend_tokenizer.to_str())
        spec.pop("padding", None)
        spec.pop("truncation", None)
        body = json.dumps(spec, sort_keys=True)
    else:
        body = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    extra = {
        "chat_template": tokenizer.chat_template,
        "special": tokenizer.special_tokens_map,
        "pad": tokenizer.pad_token_id,
        "eos": tokenizer.eos_token_id,
    }
    return _sha(body + "\n" + json.dumps(extra, sort_keys=True, default=str))


def evaluation_key(
    model,
    tokenizer,
    task: Task,
    *,
    batch_size: int,
    max_new_tokens: int,
    precision: dict[str, Any] | None,
) -> dict[str, Any]:
    """The JSON-able key of a greedy evaluation of ``model`` on ``task``'s eval split (module doc)."""
    import torch

    from rlsparse_lib.training.models import library_versions

    model_config = model.config.to_dict()
    model_config.pop("_name_or_path", None)  # where it was loaded from, not what it computes
    split = [[task.messages(e), e["answer"]] for e in task.eval]
    return {
        "version": CACHE_VERSION,
        "weights": weights_digest(model),
        "model_config": _sha(json.dumps(model_config, sort_keys=True, default=str)),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "generation_config": _sha(model.generation_config.to_json_string(use_diff=False)),
        "tokenizer": tokenizer_digest(tokenizer),
        "task": dataclasses.asdict(task.spec),
        "split": _sha(json.dumps(split, sort_keys=True, default=str)),
        "generation": {"max_new_tokens": max_new_tokens, "batch_size": batch_size},
        "compute": {
            "precision": precision,
            "device": str(model.device),
            "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "machine": platform.machine(),
            "deterministic": torch.are_deterministic_algorithms_enabled(),
        },
        "versions": library_versions(),
    }


def records_text(result: EvalResult) -> str:
    """The records as JSON lines: what ``eval_before.jsonl`` / ``eval_after.jsonl`` hold."""
    return "".join(json.dumps(r) + "\n" for r in result.records)


def cached_evaluate(
    model,
    tokenizer,
    task: Task,
    cache_dir: Path | None,
    *,
    batch_size: int,
    max_new_tokens: int,
    precision: dict[str, Any] | None,
    progress: bool = True,
) -> tuple[EvalResult, bool]:
    """:func:`~rlsparse_lib.training.evaluation.evaluate` through the cache in ``cache_dir``
    (None: no cache, always evaluate).

    Returns:
        The result (identical to a fresh evaluation's) and whether it came from the cache.
    """

    def fresh() -> EvalResult:
        return evaluate(
            model,
            tokenizer,
            task,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            progress=progress,
        )

    if cache_dir is None:
        return fresh(), False
    key = evaluation_key(
        model,
        tokenizer,
        task,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        precision=precision,
    )
    digest = _sha(json.dumps(key, sort_keys=True, default=str))
    records_path, meta_path = cache_dir / f"{digest}.jsonl", cache_dir / f"{digest}.json"
    if meta_path.is_file() or records_path.is_file():
        hit = _read(records_path, meta_path, key)
        if hit is not None:
            return hit, True
    result = fresh()
    text = records_text(result)
    write_text_atomic(records_path, text)
    meta = {
        "schema": SCHEMA,
        "key": key,
        "records_sha256": _sha(text),
        "records_bytes": len(text.encode()),
        "summary": result.summary(),
    }
    write_text_atomic(meta_path, json.dumps(meta, indent=1, default=str) + "\n")
    return result, False


def _read(records_path: Path, meta_path: Path, key: dict[str, Any]) -> EvalResult | None:
    """The cached result, or None (with a warning naming the file) when it cannot be trusted."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        raw = records_path.read_bytes()
        problem = None
        if not isinstance(meta, dict) or meta.get("schema") != SCHEMA:
            problem = f"not a {SCHEMA} entry"
        elif meta.get("key") != json.loads(json.dumps(key, default=str)):
            problem = "its key differs from this evaluation's"
        elif len(raw) != meta.get("records_bytes") or _sha_bytes(raw) != meta.get("records_sha256"):
            problem = f"{records_path.name} does not match its stored sha256 (truncated or changed)"
        else:
            records = [json.loads(line) for line in raw.decode("utf-8").splitlines()]
            summary = meta["summary"]
            result = EvalResult(**summary, records=records)
            if result.n != len(records):
                problem = f"{len(records)} records for n = {result.n}"
            else:
                return result
    except (OSError, ValueError, TypeError, KeyError) as exc:
        problem = f"unreadable ({type(exc).__name__}: {exc})".replace("\n", " ")
    warnings.warn(
        f"evaluation cache {meta_path}: {problem}; ignored, evaluating again",
        RuntimeWarning,
        stacklevel=3,
    )
    return None


def _sha(text: str) -> str:
    return _sha_bytes(text.encode("utf-8"))


def _sha_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
