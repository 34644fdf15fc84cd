"""Parse transformer parameter names into layer index, module kind and parameter kind."""

from __future__ import annotations

import re
from dataclasses import dataclass

_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block|blk)\.(\d+)\.(.+)$")
_TOP_LEVEL = (
    ("embed_tokens", "embed_tokens"),
    ("wte", "embed_tokens"),
    ("token_embd", "embed_tokens"),  # GGUF
    ("word_embeddings", "embed_tokens"),
    ("lm_head", "lm_head"),
    ("embed_out", "lm_head"),
    ("wpe", "embed_positions"),
    ("embed_positions", "embed_positions"),
)
_PARAM_SUFFIXES = ("weight", "bias")


@dataclass(frozen=True)
class ParamName:
    """A parameter name split into its parts.

    Attributes:
        layer: transformer block index, or None outside the blocks.
        module: module kind such as ``self_attn.q_proj``, ``mlp.down_proj``, ``input_layernorm``,
            ``embed_tokens``, ``lm_head`` or ``norm`` (final norm).
        param: ``weight``, ``bias`` or another trailing name.
        group: coarse group: ``attention``, ``mlp``, ``norm``, ``embedding``, ``lm_head``, ``other``.
    """

    layer: int | None
    module: str
    param: str
    group: str


def parse_param_name(name: str) -> ParamName:
    """Split ``model.layers.3.self_attn.q_proj.weight`` into layer 3, ``self_attn.q_proj``, ``weight``."""
    head, _, last = name.rpartition(".")
    if last in _PARAM_SUFFIXES and head:
        stem, param = head, last
    else:
        stem, param = name, ""
    match = _LAYER_RE.search(stem + ".") if stem else None
    if match:
        layer: int | None = int(match.group(1))
        module = match.group(2).rstrip(".")
    else:
        layer = None
        module = _top_level_module(stem)
    return ParamName(layer=layer, module=module, param=param, group=_group(module))


def _top_level_module(stem: str) -> str:
    for key, module in _TOP_LEVEL:
        if stem.endswith(key):
            return module
    last = stem.rsplit(".", 1)[-1]
    if "norm" in last or last.startswith("ln"):
        return "norm"
    return last


def _group(module: str) -> str:
    low = module.lower()
    if "norm" in low or re.search(r"(^|\.)ln_?\w*$", low):
        return "norm"
    if module in ("embed_tokens", "embed_positions"):
        return "embedding"
    if module == "lm_head":
        return "lm_head"
    if "attn" in low or "attention" in low:
        return "attention"
    if "mlp" in low or "ffn" in low or "feed_forward" in low or "experts" in low:
        return "mlp"
    return "other"
