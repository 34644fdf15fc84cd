"""Synthetic checkpoints in Hugging Face layout, for tests, benchmarks and the demo.

Tensors are generated one at a time and streamed to disk, so pairs of any size can be made in
bounded memory. Values are bf16/fp16/fp32 words produced with numpy (no model code needed).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rlsparse_lib.atomic import write_text_atomic
from rlsparse_lib.io.checkpoint import SafetensorsWriter
from rlsparse_lib.io.dtypes import ITEMSIZE


@dataclass(frozen=True)
class LlamaShape:
    """Dimensions of a Llama-style decoder (names follow transformers' LlamaForCausalLM)."""

    vocab: int = 32000
    hidden: int = 1024
    intermediate: int = 3072
    layers: int = 24
    heads: int = 16
    kv_heads: int = 16
    tie_embeddings: bool = False

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) of every stored tensor, in the order transformers saves them."""
        head_dim = self.hidden // self.heads
        kv = self.kv_heads * head_dim
        out: list[tuple[str, tuple[int, ...]]] = [
            ("model.embed_tokens.weight", (self.vocab, self.hidden))
        ]
        for i in range(self.layers):
            p = f"model.layers.{i}."
            out += [
                (p + "self_attn.q_proj.weight", (self.hidden, self.hidden)),
                (p + "self_attn.k_proj.weight", (kv, self.hidden)),
                (p + "self_attn.v_proj.weight", (kv, self.hidden)),
                (p + "self_attn.o_proj.weight", (self.hidden, self.hidden)),
                (p + "mlp.gate_proj.weight", (self.intermediate, self.hidden)),
                (p + "mlp.up_proj.weight", (self.intermediate, self.hidden)),
                (p + "mlp.down_proj.weight", (self.hidden, self.intermediate)),
                (p + "input_layernorm.weight", (self.hidden,)),
                (p + "post_attention_layernorm.weight", (self.hidden,)),
            ]
        out.append(("model.norm.weight", (self.hidden,)))
        if not self.tie_embeddings:
            out.append(("lm_head.weight", (self.vocab, self.hidden)))
        return out

    @property
    def n_params(self) -> int:
        return sum(math.prod(s) for _, s in self.tensors())

    def config(self) -> dict:
        """A ``config.json`` for transformers' LlamaForCausalLM."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab,
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "tie_word_embeddings": self.tie_embeddings,
            "torch_dtype": "bfloat16",
        }


def to_bf16_words(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), rounding to nearest even (NaN kept NaN)."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32)
    rounded = (u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
    out = rounded.astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        out[nan] = np.uint16(0x7FC0)
    return out


def bf16_words_to_float(w: np.ndarray) -> np.ndarray:
    """bf16 bit patterns (uint16) -> float32 values."""
    return (w.astype(np.uint32) << np.uint32(16)).view(np.float32)


def base_values(
    name: str, shape: tuple[int, ...], rng: np.random.Generator, std: float = 0.02
) -> np.ndarray:
    """Plausible float32 initial weights: norms ~ 1 (jittered), matrices ~ N(0, std)."""
    n = math.prod(shape)
    if "norm" in name:
        return (1.0 + 0.05 * rng.standard_normal(n, dtype=np.float32)).reshape(shape)
    return (std * rng.standard_normal(n, dtype=np.float32)).reshape(shape)


TensorGen = Callable[[str, tuple[int, ...]], tuple[np.ndarray, np.ndarray]]


def write_pair(
    base_dir: str | Path,
    tuned_dir: str | Path,
    tensors: list[tuple[str, tuple[int, ...]]],
    make: TensorGen,
    dtype: str = "bfloat16",
    shards: int = 1,
    config: dict | None = None,
) -> None:
    """Write a base/tuned pair tensor by tensor.

    Args:
        tensors: (name, shape) in storage order.
        make: returns (base words, tuned words) for one tensor, raw words of ``dtype``.
        shards: number of safetensors shards (balanced by bytes; an index is written if > 1).
        config: ``config.json`` written to both folders.
    """
    plan = shard_plan(tensors, dtype, shards)
    base_w, tuned_w = (
        _ShardedWriter(base_dir, plan, dtype, config),
        _ShardedWriter(tuned_dir, plan, dtype, config),
    )
    for name, shape in tensors:
        a, b = make(name, shape)
        base_w.write(name, a)
        tuned_w.write(name, b)
    base_w.close()
    tuned_w.close()


def shard_plan(
    tensors: list[tuple[str, tuple[int, ...]]], dtype: str, shards: int
) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Split tensors into ``shards`` contiguous groups of about equal bytes."""
    total = sum(math.prod(s) for _, s in tensors) * ITEMSIZE[dtype]
    groups: list[list] = [[]]
    acc = 0
    for name, shape in tensors:
        nbytes = math.prod(shape) * ITEMSIZE[dtype]
        if groups[-1] and acc + nbytes / 2 > total * len(groups) / shards and len(groups) < shards:
            groups.append([])
        groups[-1].append((name, shape))
        acc += nbytes
    return groups


class _ShardedWriter:
    """Streams tensors into HF-named shards plus ``model.safetensors.index.json``."""

    def __init__(
        self, folder: str | Path, plan: list[list], dtype: str, config: dict | None
    ) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        n = len(plan)
        self.files = (
            ["model.safetensors"]
            if n == 1
            else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        )
        self.plan = plan
        self.dtype = dtype
        self.weight_map = {
            name: f for f, group in zip(self.files, plan, strict=True) for name, _ in group
        }
        self._iter: Iterator[int] = iter(range(n))
        self._writer: SafetensorsWriter | None = None
        self._remaining: set[str] = set()
        if config is not None:
            write_text_atomic(self.folder / "config.json", json.dumps(config, indent=2))

    def write(self, name: str, words: np.ndarray) -> None:
        if not self._remaining:
            self._next_shard()
        assert self._writer is not None
        self._writer.write(name, words)
        self._remaining.discard(name)
        if not self._remaining:
            self._writer.close()

    def _next_shard(self) -> None:
        i = next(self._iter)
        specs = [(name, self.dtype, shape) for name, shape in self.plan[i]]
        self._writer = SafetensorsWriter(self.folder / self.files[i], specs, {"format": "pt"})
        self._remaining = {name for name, _ in self.plan[i]}

    def close(self) -> None:
        if len(self.files) > 1:
            total = sum(math.prod(s) for g in self.plan for _, s in g) * ITEMSIZE[self.dtype]
            index = {"metadata": {"total_size": total}, "weight_map": self.weight_map}
            write_text_atomic(
                self.folder / "model.safetensors.index.json", json.dumps(index, indent=2)
            )


def one_ulp_pair(frac: float = 0.2, seed: int = 0) -> TensorGen:
    """Tensor generator: bf16 base; tuned = base with ``frac`` of entries moved by one ULP (bits + 1).

    The exact changed count of each tensor is ``round(frac * numel)``.
    """
    rng = np.random.default_rng(seed)

    def make(name: str, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        a = to_bf16_words(base_values(name, shape, rng).ravel())
        n = a.size
        k = round(frac * n)
        idx = _sample_without_replacement(rng, n, k)
        b = a.copy()
        b[idx] += np.uint16(1)
        return a, b

    return make


def _sample_without_replacement(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    if k == 0:
        return np.zeros(0, np.int64)
    if k * 4 < n:  # sparse: oversample then deduplicate
        idx = np.unique(rng.integers(0, n, int(k * 1.2) + 16))
        while idx.size < k:
            idx = np.unique(np.concatenate([idx, rng.integers(0, n, k)]))
        return rng.permutation(idx)[:k]
    return rng.permutation(n)[:k]


def fp32_master_update(
    lr: float = 1e-6, steps: int = 200, drift: float = 0.3, seed: int = 0
) -> TensorGen:
    """Tensor generator mimicking RL finetuning with fp32 master weights saved in bf16.

    Each weight moves by ``lr·(steps·μ + √steps·ε)`` with a persistent per-weight direction
    μ ~ N(0, drift²) and step noise ε ~ N(0, 1) (Adam-like steps of size ≈ lr); the tuned bf16
    value is the rounded fp32 result. Updates below half a bf16 ULP are absorbed, so small
    weights change and large ones (e.g. norms ≈ 1) do not: sparsity from precision alone.
    """
    rng = np.random.default_rng(seed)

    def make(name: str, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        a = to_bf16_words(base_values(name, shape, rng).ravel())
        n = a.size
        move = lr * (
            steps * drift * rng.standard_normal(n, dtype=np.float32)
            + math.sqrt(steps) * rng.standard_normal(n, dtype=np.float32)
        )
        b = to_bf16_words(bf16_words_to_float(a) + move)
        return a, b

    return make
