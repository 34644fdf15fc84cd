"""``rlsparse quantize``: FP8 block and MXFP4 copies of float checkpoints, checked against
independent whole-tensor references (the tests' DeepSeek quantizer, a brute-force numpy MXFP4
quantizer), read back by the diff engine, and refusing bad input with exit 2 and no output."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rlsparse_lib.cli import main
from rlsparse_lib.diff.config import DiffConfig
from rlsparse_lib.diff.engine import diff_checkpoints
from rlsparse_lib.errors import ConfigError
from rlsparse_lib.io.quantize import quantize_checkpoint

from .ckpt_factory import bf16_counts_ref, fp8_block_quantize, headline_counts, save_hf
from .test_quant_mxfp4 import FP4, dequant_ref

Q = "model.layers.0.self_attn.q_proj.weight"
UP = "model.layers.1.mlp.up_proj.weight"
EMBED = "model.embed_tokens.weight"
NORM = "model.layers.0.input_layernorm.weight"
CONFIG = {"model_type": "llama", "tie_word_embeddings": False}
TOLS = (0.0, 1e-5)
ETA = 1e-3


def _state() -> dict[str, torch.Tensor]:
    """Projections with partial 128-blocks (200 x 288), a zero block, exact MXFP4 ties and
    saturating groups; an embedding and a norm that stay bf16."""
    g = torch.Generator().manual_seed(0)
    q = 0.02 * torch.randn(200, 288, generator=g)
    q[128:, 256:] = 0  # an all-zero (partial) FP8 block and all-zero MXFP4 groups
    q[0, 32:64] = torch.tensor([7.0, 5.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5] * 4)  # X = 0: ties
    q[1, :32] = 4.0 * torch.tensor([-0.0, 0.3, 6.9, -7.5] * 8)  # saturates at ±6·4, a -0.0
    up = torch.randn(256, 64, generator=g) * torch.logspace(-6, 2, 64)  # wide dynamic range
    return {
        EMBED: (0.02 * torch.randn(64, 288, generator=g)).bfloat16(),
        NORM: (1 + 0.05 * torch.randn(288, generator=g)).bfloat16(),
        Q: q.bfloat16(),
        UP: up.bfloat16(),
    }


def mxfp4_ref(w: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """OCP MXFP4 by brute force: per group of 32, X = floor(log2(amax)) - 2 (clamped, -127 for a
    zero group); each element the nearest of the 8 E2M1 magnitudes times 2^X (ties to the even
    index), at most 6; low nibble first."""
    x = w.float().numpy().astype(np.float64)
    r, c = x.shape
    groups = x.reshape(r, c // 32, 32)
    mags = np.asarray(FP4)
    blocks = np.zeros((r, c // 32, 16), np.uint8)
    scales = np.zeros((r, c // 32), np.uint8)
    for i in range(r):
        for j in range(c // 32):
            g = groups[i, j]
            amax = np.abs(g).max()
            e = min(127, max(-127, math.floor(math.log2(amax)) - 2)) if amax > 0 else -127
            scales[i, j] = e + 127
            codes = []
            for v in g:
                d = np.abs(np.abs(v) - mags * 2.0**e)
                best = np.flatnonzero(d == d.min())
                k = int(best[best % 2 == 0][0]) if len(best) > 1 else int(best[0])
                codes.append(k | (8 if np.signbit(v) else 0))
            blocks[i, j] = [codes[2 * b] | (codes[2 * b + 1] << 4) for b in range(16)]
    return blocks, scales


def test_fp8_copy_equals_the_deepseek_reference(tmp_path: Path) -> None:
    state = _state()
    src = save_hf(tmp_path / "src", state, config=CONFIG)
    (src / "tokenizer.json").write_text("{}")
    s = quantize_checkpoint(src, tmp_path / "q", "fp8_block", progress=False)
    assert (s["quantized"], s["tensors"]) == (2, 4)
    assert s["quantized_elements"] == state[Q].numel() + state[UP].numel()
    out = load_file(tmp_path / "q" / "model.safetensors")
    assert set(out) == {EMBED, NORM, Q, Q + "_scale_inv", UP, UP + "_scale_inv"}
    for name in (EMBED, NORM):
        assert torch.equal(out[name].view(torch.int16), state[name].view(torch.int16))
    for name, grid in ((Q, (2, 3)), (UP, (2, 1))):
        codes, scale = fp8_block_quantize(state[name])  # a zero block: 1e-12 / 448, codes 0
        nonzero = scale > 1e-12 / 448
        assert out[name + "_scale_inv"].shape == scale.shape == grid
        assert torch.equal(out[name + "_scale_inv"][nonzero], scale[nonzero])
        assert torch.equal(out[name].view(torch.uint8), codes.view(torch.uint8))
    assert out[Q + "_scale_inv"][1, 2] == 1.0  # the zero block
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())
    assert cfg["quantization_config"]["weight_block_size"] == [128, 128]
    assert cfg["model_type"] == "llama" and (tmp_path / "q" / "tokenizer.json").is_file()


def test_mxfp4_copy_equals_a_brute_force_reference(tmp_path: Path) -> None:
    state = _state()
    src = save_hf(tmp_path / "src", state, config=CONFIG)
    quantize_checkpoint(src, tmp_path / "q", "mxfp4", progress=False)
    out = load_file(tmp_path / "q" / "model.safetensors")
    assert set(out) == {EMBED, NORM, Q + "_blocks", Q + "_scales", UP + "_blocks", UP + "_scales"}
    for name in (Q, UP):
        blocks, scales = mxfp4_ref(state[name])
        assert np.array_equal(out[name + "_scales"].numpy(), scales), name
        assert np.array_equal(out[name + "_blocks"].numpy(), blocks), name
    assert out[Q + "_scales"][0, 1] == 127  # the group of ties: X = 0
    ties = dequant_ref(out[Q + "_blocks"][:1, 1:2], out[Q + "_scales"][:1, 1:2]).float()
    assert ties[0, :8].tolist() == [6.0, 4.0, 0.0, 1.0, 1.0, 2.0, 2.0, 4.0]
    assert json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"] == {
        "quant_method": "mxfp4"
    }


@pytest.mark.parametrize("scheme", ["fp8_block", "mxfp4"])
def test_the_diff_reads_a_copy_as_its_reference_values(tmp_path: Path, scheme: str) -> None:
    """The float source against its copy: every count equals the whole-tensor reference of the
    source against the reference's dequantized values, and the copies of two checkpoints differ
    where their codes or scales do."""
    state = _state()
    tuned = {k: v.clone() for k, v in state.items()}
    tuned[Q] = (tuned[Q].float() * (1 + 2.0**-5)).bfloat16()  # moves codes, FP8 scales and X
    src = save_hf(tmp_path / "src", state, config=CONFIG)
    quantize_checkpoint(src, tmp_path / "qa", scheme, progress=False)
    quantize_checkpoint(save_hf(tmp_path / "t", tuned), tmp_path / "qb", scheme, progress=False)

    def deq(s: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        if scheme == "mxfp4":
            blocks, scales = mxfp4_ref(s[name])
            return dequant_ref(torch.from_numpy(blocks), torch.from_numpy(scales))
        codes, scale = fp8_block_quantize(s[name])
        scale = torch.where(scale > 1e-12 / 448, scale, torch.ones_like(scale))
        full = scale.repeat_interleave(128, 0).repeat_interleave(128, 1)
        full = full[: codes.shape[0], : codes.shape[1]]
        return (codes.float() * full).bfloat16()

    config = DiffConfig(tolerances=TOLS, rel_eta=ETA, compare_dtype="bfloat16")
    own = diff_checkpoints(src, tmp_path / "qa", config, progress=False)
    pair = diff_checkpoints(tmp_path / "qa", tmp_path / "qb", config, progress=False)
    assert (
        own.headline()["n_params"]
        == pair.headline()["n_params"]
        == sum(t.numel() for t in state.values())
    )
    mine, theirs = ({t.name: t for t in r.tensors} for r in (own, pair))
    for name in (Q, UP):
        ref = bf16_counts_ref(state[name], deq(state, name), TOLS, ETA)
        assert headline_counts(mine[name]) == ref, name
        ref = bf16_counts_ref(deq(state, name), deq(tuned, name), TOLS, ETA)
        assert headline_counts(theirs[name]) == ref, name
    assert theirs[Q].n_changed > 0 and theirs[UP].n_changed == 0


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_bad_input_exits_2_and_leaves_nothing(tmp_path: Path, capsys) -> None:
    state = _state()
    src = save_hf(tmp_path / "src", state, config=CONFIG)
    bad = dict(state)
    bad[UP] = bad[UP].clone()
    bad[UP][3, 5] = float("nan")
    save_hf(tmp_path / "nan", bad)
    odd = dict(state)
    odd[UP] = odd[UP][:, :48].contiguous()
    save_hf(tmp_path / "odd", odd)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert (
        main(["quantize", str(src), "-o", str(tmp_path / "done"), "--scheme", "mxfp4", "-q"]) == 0
    )
    before = _listing(tmp_path)
    cases = [
        (tmp_path / "nan", "fp8_block", f"{UP} holds NaN or Inf"),
        (tmp_path / "odd", "mxfp4", f"{UP} has 48 inputs per row, not a multiple of 32"),
        (tmp_path / "odd", "gguf_q8_0", f"{UP} has 48 inputs per row, not a multiple of 32"),
        (tmp_path / "done", "fp8_block", "already quantized"),
        (src, "fp8_block", "exists and is not an empty folder"),
    ]
    for source, scheme, message in cases:
        out = tmp_path / ("full" if "exists" in message else "out")
        assert main(["quantize", str(source), "-o", str(out), "--scheme", scheme]) == 2
        assert message in capsys.readouterr().err
        assert _listing(tmp_path) == before  # no output, no temporary folder
    assert _listing(tmp_path / "full") == ["x"]


def test_a_sharded_source_gives_a_sharded_copy(tmp_path: Path, capsys) -> None:
    state = _state()
    src = save_hf(tmp_path / "src", state, shards=2, config=CONFIG)
    assert main(["quantize", str(src), "-o", str(tmp_path / "q"), "--scheme", "fp8_block"]) == 0
    assert "2 of 4 tensors as fp8_block" in capsys.readouterr().out
    index = json.loads((tmp_path / "q" / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert files == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    stored = {n: f for f in files for n in load_file(tmp_path / "q" / f)}
    assert stored == index["weight_map"] and stored[Q + "_scale_inv"] == stored[Q]


def test_include_and_exclude_narrow_what_is_quantized(tmp_path: Path, capsys) -> None:
    """A weight MXFP4 cannot hold is left out by --exclude; --include keeps only the matches;
    an invalid regex exits 2."""
    odd = _state()
    odd[UP] = odd[UP][:, :48].contiguous()
    src = save_hf(tmp_path / "src", odd, config=CONFIG)
    args = ["quantize", str(src), "--scheme", "mxfp4"]
    assert main([*args, "-o", str(tmp_path / "a"), "--exclude", r"\.up_proj\."]) == 0
    assert "1 of 4 tensors as mxfp4" in capsys.readouterr().out
    out = load_file(tmp_path / "a" / "model.safetensors")
    assert torch.equal(out[UP].view(torch.int16), odd[UP].view(torch.int16))
    assert Q + "_blocks" in out and Q not in out
    assert main([*args, "-o", str(tmp_path / "b"), "--include", "self_attn", "-q"]) == 0
    assert set(load_file(tmp_path / "b" / "model.safetensors")) == set(out)
    assert main([*args, "-o", str(tmp_path / "c"), "--include", "("]) == 2
    assert "--include: invalid regular expression" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_fp32_masters_with_the_rest_cast_to_bf16(tmp_path: Path) -> None:
    """Quantized from float32 values; the tensors that are not quantized cast to bf16 by round
    to nearest even (torch's cast); an unknown rest dtype is refused."""
    g = torch.Generator().manual_seed(1)
    state = {k: v.float() + 1e-4 * torch.randn(v.shape, generator=g) for k, v in _state().items()}
    src = save_hf(tmp_path / "src", state, config=CONFIG)
    args = ["quantize", str(src), "--scheme", "fp8_block", "-q"]
    assert main([*args, "-o", str(tmp_path / "q"), "--rest-dtype", "bfloat16"]) == 0
    out = load_file(tmp_path / "q" / "model.safetensors")
    for name in (EMBED, NORM):
        assert out[name].dtype == torch.bfloat16
        assert torch.equal(out[name].view(torch.int16), state[name].bfloat16().view(torch.int16))
    codes, scale = fp8_block_quantize(state[UP])
    assert torch.equal(out[UP].view(torch.uint8), codes.view(torch.uint8))
    assert torch.equal(out[UP + "_scale_inv"], scale)
    with pytest.raises(ConfigError, match="unknown rest dtype 'int8'"):
        quantize_checkpoint(src, tmp_path / "r", "fp8_block", rest_dtype="int8")
    assert not (tmp_path / "r").exists()


def test_gpt_oss_experts_are_stored_as_gpt_oss_stores_them(tmp_path: Path, capsys) -> None:
    """`--include experts`: transformers' expert stacks [E, in, out] become gpt-oss's
    `_blocks` [E, out, in/32, 16] (each expert transposed, then the brute-force reference's codes),
    read back in transformers' layout: the diff against the source equals the whole-tensor
    reference; attention and biases stay bf16."""
    g = torch.Generator().manual_seed(2)
    gate, down = "model.layers.0.mlp.experts.gate_up_proj", "model.layers.0.mlp.experts.down_proj"
    state = {
        Q: (0.02 * torch.randn(64, 64, generator=g)).bfloat16(),
        gate: (0.02 * torch.randn(2, 64, 96, generator=g)).bfloat16(),
        gate + "_bias": torch.randn(2, 96, generator=g).bfloat16(),
        down: (0.02 * torch.randn(2, 64, 64, generator=g)).bfloat16(),
    }
    src = save_hf(tmp_path / "src", state, config={"model_type": "gpt_oss"})
    args = ["quantize", str(src), "-o", str(tmp_path / "q"), "--scheme", "mxfp4"]
    assert main([*args, "--include", "experts"]) == 0
    assert "2 of 4 tensors as mxfp4" in capsys.readouterr().out
    out = load_file(tmp_path / "q" / "model.safetensors")
    assert set(out) == {Q, gate + "_bias", gate + "_blocks", gate + "_scales"} | {
        down + "_blocks",
        down + "_scales",
    }
    report = diff_checkpoints(src, tmp_path / "q", DiffConfig(tolerances=TOLS), progress=False)
    rows = {t.name: t for t in report.tensors}
    for name, (e, c, r) in ((gate, (2, 64, 96)), (down, (2, 64, 64))):
        assert out[name + "_blocks"].shape == (e, r, c // 32, 16)
        for k in range(e):
            blocks, scales = mxfp4_ref(state[name][k].t().contiguous())
            assert np.array_equal(out[name + "_blocks"][k].numpy(), blocks), (name, k)
            assert np.array_equal(out[name + "_scales"][k].numpy(), scales), (name, k)
        deq = dequant_ref(out[name + "_blocks"], out[name + "_scales"]).transpose(-1, -2)
        assert rows[name].shape_compared == (e, c, r)
        assert headline_counts(rows[name]) == bf16_counts_ref(state[name], deq, TOLS, ETA), name
    assert rows[Q].n_changed == 0 and rows[gate + "_bias"].n_changed == 0


def _q8_0_ref(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(float16 scale d per block, float32 values d * code) of every Q8_0 tensor of a GGUF file,
    decoded by hand from the raw blocks the `gguf` package's own reader returns (34 bytes: d,
    then 32 int8 codes)."""
    from gguf import GGMLQuantizationType, GGUFReader

    out = {}
    for t in GGUFReader(path).tensors:
        if t.tensor_type == GGMLQuantizationType.Q8_0:
            raw = np.asarray(t.data, np.uint8).reshape(-1, 34)
            d = raw[:, :2].copy().view(np.float16)[:, 0]
            q = raw[:, 2:].copy().view(np.int8).astype(np.float32)
            out[t.name] = (d, (d.astype(np.float32)[:, None] * q).reshape(-1))
    return out


def test_gguf_q8_0_copy_decodes_and_diffs_as_the_reference(tmp_path: Path) -> None:
    """llama.cpp Q8_0 (the `gguf` package's quantizer) of the projections, the rest as BF16:
    each block's scale is float16(amax / 127), every value within about half a step of the
    source, the kept tensors bit for bit; the diff of two copies counts what a hand decode counts."""
    from gguf import GGUFReader

    state = _state()
    tuned = {k: v.clone() for k, v in state.items()}
    tuned[Q] = (tuned[Q].float() * (1 + 2.0**-6)).bfloat16()
    for name, s in (("a", state), ("b", tuned)):
        quantize_checkpoint(save_hf(tmp_path / f"src_{name}", s), tmp_path / name, "gguf_q8_0")
    path = tmp_path / "a" / "model-Q8_0.gguf"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["config.json", path.name]
    ref_a, ref_b = _q8_0_ref(path), _q8_0_ref(tmp_path / "b" / "model-Q8_0.gguf")
    assert set(ref_a) == {Q, UP}
    for name in (Q, UP):
        w = state[name].float().numpy().reshape(-1, 32)
        d, values = ref_a[name]
        assert np.array_equal(d, (np.abs(w).max(axis=1) / 127).astype(np.float16)), name
        step = d.astype(np.float32)[:, None]
        assert (np.abs(values.reshape(-1, 32) - w) <= 0.6 * step).all(), name
    plain = {t.name: np.asarray(t.data) for t in GGUFReader(path).tensors}
    for name in (EMBED, NORM):
        words = state[name].view(torch.int16).numpy().view(np.uint16).reshape(-1)
        assert np.array_equal(plain[name].view(np.uint16).reshape(-1), words), name
    report = diff_checkpoints(tmp_path / "a", tmp_path / "b", DiffConfig(), progress=False)
    rows = {t.name: t for t in report.tensors}
    for name in (Q, UP):
        va, vb = ref_a[name][1], ref_b[name][1]
        assert rows[name].n_changed == int(
            np.count_nonzero(va.view(np.uint32) != vb.view(np.uint32))
        )
        assert rows[name].dtype_base == "float32", name
    assert rows[Q].n_changed > 0 and rows[UP].n_changed == 0
