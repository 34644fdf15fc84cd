"""Write small Hugging Face-format checkpoints with planted changes of known count (tests only)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from rlsparse_lib.diff.report import TensorResult
from rlsparse_lib.io.synthetic import LlamaShape

TINY = LlamaShape(vocab=64, hidden=32, intermediate=48, layers=2, heads=4, kv_heads=2)


def random_state(
    shape: LlamaShape = TINY, dtype: torch.dtype = torch.bfloat16, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A Llama-shaped state dict: matrices ~ N(0, 0.02), norms ~ 1 (jittered)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, s in shape.tensors():
        if "norm" in name:
            t = 1 + 0.05 * torch.randn(s, generator=g)
        else:
            t = 0.02 * torch.randn(s, generator=g)
        out[name] = t.to(dtype)
    return out


def save_hf(
    folder: Path,
    state: dict[str, torch.Tensor],
    shards: int = 1,
    fmt: str = "safetensors",
    config: dict | None = None,
    contiguous: bool = False,
) -> Path:
    """Save ``state`` in HF layout: single file or ``shards`` files plus an index. Shards take
    every ``shards``-th name, or runs of consecutive names with ``contiguous`` (as
    ``save_pretrained`` cuts them); each file stores its tensors sorted by name (safetensors)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(state)
    if shards > 1 and contiguous:
        cut = [round(i * len(names) / shards) for i in range(shards + 1)]
        groups = [names[a:b] for a, b in itertools.pairwise(cut)]
    else:
        groups = [names[i::shards] for i in range(shards)] if shards > 1 else [names]
    stem, ext = ("model", "safetensors") if fmt == "safetensors" else ("pytorch_model", "bin")
    weight_map = {}
    for i, group in enumerate(groups):
        fname = f"{stem}.{ext}" if shards == 1 else f"{stem}-{i + 1:05d}-of-{shards:05d}.{ext}"
        part = {n: state[n].contiguous() for n in group}
        if fmt == "safetensors":
            save_file(part, str(folder / fname), metadata={"format": "pt"})
        else:
            torch.save(part, folder / fname)
        weight_map.update(dict.fromkeys(group, fname))
    if shards > 1:
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / f"{stem}.{ext}.index.json").write_text(json.dumps(index))
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def bump_bits(t: torch.Tensor, flat_idx: torch.Tensor, k: int = 1) -> torch.Tensor:
    """A copy of ``t`` whose raw bit patterns at ``flat_idx`` are increased by ``k`` (k ULPs away from 0)."""
    word = {2: torch.int16, 4: torch.int32}[t.element_size()]
    out = t.clone().contiguous()
    w = out.view(word).reshape(-1)
    w[flat_idx] += k
    return out


def set_values(t: torch.Tensor, flat_idx: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    out = t.clone().contiguous()
    out.reshape(-1)[flat_idx] = values.to(t.dtype)
    return out


def pick(numel: int, k: int, seed: int) -> torch.Tensor:
    """``k`` distinct flat indices out of ``numel``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(numel, generator=g)[:k]


def numel(state: dict[str, torch.Tensor]) -> int:
    return sum(math.prod(t.shape) for t in state.values())


def save_placed(
    folder: Path,
    state: dict[str, torch.Tensor],
    shard_of: dict[str, int],
    config: dict | None = None,
) -> Path:
    """Save ``state`` as HF shards plus an index, tensor ``n`` in shard ``shard_of.get(n, 0)``
    (e.g. a scale in another shard than its weight)."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = max(shard_of.values(), default=0) + 1
    weight_map = {}
    for i in range(shards):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: t.contiguous() for n, t in state.items() if shard_of.get(n, 0) == i}
        save_file(part, str(folder / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, fname))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def fp8_block_quantize(
    w: torch.Tensor, block: tuple[int, int] = (128, 128)
) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-style FP8 of a float matrix ``[..., R, C]``: codes ``float8_e4m3fn`` and
    ``scale_inv`` float32 ``[..., ceil(R/b0), ceil(C/b1)]`` (block amax / 448; edge blocks
    truncated)."""
    *lead, r, c = w.shape
    b0, b1 = block
    sr, sc = -(-r // b0), -(-c // b1)
    pad = torch.zeros(*lead, sr * b0, sc * b1)
    pad[..., :r, :c] = w.float()
    blocks = pad.reshape(*lead, sr, b0, sc, b1)
    amax = blocks.abs().amax(dim=(-3, -1)).clamp_min(1e-12)
    scale = (amax / 448).float()
    expanded = scale.repeat_interleave(b0, -2).repeat_interleave(b1, -1)[..., :r, :c]
    codes = (w.float() / expanded).to(torch.float8_e4m3fn)
    return codes, scale


def bf16_counts_ref(a: torch.Tensor, b: torch.Tensor, tols, eta: float) -> dict:
    """Every headline count of two whole bf16 tensors (the independent reference of a diff)."""
    wa, wb = a.view(torch.int16).reshape(-1), b.view(torch.int16).reshape(-1)
    fa, fb = a.float().reshape(-1), b.float().reshape(-1)
    changed = wa != wb
    d = (fb - fa).abs()
    fin = changed & torch.isfinite(d)
    dd = d.double()
    ref = torch.maximum(fa.abs(), fb.abs()).double()
    return {
        "numel": a.numel(),
        "n_changed": int(changed.sum()),
        "n_le_tol": [int((fin & (dd <= t)).sum()) for t in tols],
        "n_rel_unchanged": int((fin & (dd <= eta * ref)).sum()),
        "n_zero_delta": int((fin & (d == 0)).sum()),
        "n_nonfinite_delta": int((changed & ~torch.isfinite(d)).sum()),
        "n_nan_base": int(fa.isnan().sum()),
        "n_nan_tuned": int(fb.isnan().sum()),
    }


def headline_counts(res: TensorResult) -> dict:
    """The counts of one tensor's diff result that :func:`bf16_counts_ref` computes."""
    s = res.float_stats()
    return {
        "numel": res.numel,
        "n_changed": res.n_changed,
        "n_le_tol": [int(v) for v in s.n_le_tol],
        "n_rel_unchanged": s.n_rel_unchanged,
        "n_zero_delta": s.n_zero_delta,
        "n_nonfinite_delta": s.n_nonfinite_delta,
        "n_nan_base": s.n_nan_base,
        "n_nan_tuned": s.n_nan_tuned,
    }


def quant_views_ref(
    codes_b: torch.Tensor,
    codes_t: torch.Tensor,
    scales_b: torch.Tensor,
    scales_t: torch.Tensor,
    deq_b: torch.Tensor,
    deq_t: torch.Tensor,
) -> dict:
    """Raw-code views of a quantized pair from whole tensors: ``codes_*`` one integer code per
    logical element, ``deq_*`` the dequantized bf16 tensors."""
    same_code = codes_b.reshape(-1) == codes_t.reshape(-1)
    deq_changed = deq_b.view(torch.int16).reshape(-1) != deq_t.view(torch.int16).reshape(-1)
    word = {1: torch.uint8, 2: torch.int16, 4: torch.int32}[scales_b.element_size()]
    return {
        "raw_n": codes_b.numel(),
        "raw_changed": int((~same_code).sum()),
        "scales_n": scales_b.numel(),
        "scales_changed": int((scales_b.view(word) != scales_t.view(word)).sum()),
        "scale_only_changed": int((same_code & deq_changed).sum()),
    }


def fp8_views_ref(
    base: dict[str, torch.Tensor],
    tuned: dict[str, torch.Tensor],
    name: str,
    scale_suffix: str,
    deq_b: torch.Tensor,
    deq_t: torch.Tensor,
) -> dict:
    """:func:`quant_views_ref` of the FP8 weight ``name`` of two states, its scales
    ``name + scale_suffix``."""
    return quant_views_ref(
        base[name].view(torch.uint8),
        tuned[name].view(torch.uint8),
        base[name + scale_suffix],
        tuned[name + scale_suffix],
        deq_b,
        deq_t,
    )
