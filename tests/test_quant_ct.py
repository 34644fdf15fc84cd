"""compressed-tensors FP8 checkpoints (issue 12 item 3): per-tensor, per-channel and block
``weight_scale`` as declared by the config's groups, diffed on dequantized bf16 values against an
independent whole-tensor torch reference; activation scales are plain float tensors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlsparse_lib.cli import main
from rlsparse_lib.diff.config import DiffConfig
from rlsparse_lib.diff.engine import diff_checkpoints

from .ckpt_factory import (
    bf16_counts_ref,
    fp8_block_quantize,
    fp8_views_ref,
    headline_counts,
    save_hf,
)

TOLS = (0.0, 1e-6, 1e-5)
ETA = 1e-3
T = "model.layers.0.self_attn.o_proj.weight"  # per tensor
C = "model.layers.0.mlp.up_proj.weight"  # per channel
B = "model.layers.0.mlp.down_proj.weight"  # blocks of 64 x 32
SCHEMES = {T: "ct_fp8_tensor", C: "ct_fp8_channel", B: "ct_fp8_block"}


def _group(strategy: str, targets: list[str], **extra) -> dict:
    weights = {"num_bits": 8, "type": "float", "strategy": strategy, "symmetric": True, **extra}
    return {"targets": targets, "weights": weights, "input_activations": None}


CONFIG = {
    "quantization_config": {
        "quant_method": "compressed-tensors",
        "format": "float-quantized",
        "config_groups": {
            "group_0": _group("tensor", ["re:.*o_proj"]),
            "group_1": _group("channel", ["re:.*up_proj"]),
            "group_2": _group("block", ["re:.*down_proj"], block_structure=[64, 32]),
        },
        "ignore": ["lm_head"],
    }
}


def _quantize(w: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if name == T:
        scale = (w.abs().max() / 448).reshape(1)
        return (w / scale).to(torch.float8_e4m3fn), scale
    if name == C:
        scale = w.abs().amax(dim=1, keepdim=True) / 448
        return (w / scale).to(torch.float8_e4m3fn), scale.to(torch.bfloat16)
    return fp8_block_quantize(w, (64, 32))


def _states():
    g = torch.Generator().manual_seed(3)
    base, tuned = {}, {}
    for name, shape in ((T, (40, 50)), (C, (70, 40)), (B, (100, 70))):
        codes, scale = _quantize(0.02 * torch.randn(shape, generator=g), name)
        base[name], base[name + "_scale"] = codes, scale
        tc, ts = codes.clone(), scale.clone()
        flat = tc.view(torch.uint8).reshape(-1)
        flat[torch.randperm(flat.numel(), generator=g)[:25]] ^= 2
        ts.reshape(-1)[-1] *= 1.25
        tuned[name], tuned[name + "_scale"] = tc, ts
    for state in (base, tuned):
        state["model.layers.0.self_attn.o_proj.input_scale"] = torch.ones(1)
        state["lm_head.weight"] = torch.ones(8, 40, dtype=torch.bfloat16)
    tuned["model.layers.0.self_attn.o_proj.input_scale"] = torch.full((1,), 2.0)
    return base, tuned


def dequant_ref(codes: torch.Tensor, scale: torch.Tensor, name: str) -> torch.Tensor:
    s = scale.float()
    if name == B:
        s = s.repeat_interleave(64, 0).repeat_interleave(32, 1)[: codes.shape[0], : codes.shape[1]]
    return (codes.float() * s).to(torch.bfloat16)


@pytest.fixture(scope="module")
def ct_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct")
    base, tuned = _states()
    return (
        save_hf(root / "b", base, shards=2, config=CONFIG),
        save_hf(root / "t", tuned, shards=2, config=CONFIG),
        base,
        tuned,
    )


def test_ct_fp8_schemes_match_whole_tensor_reference(ct_pair) -> None:
    b, t, base, tuned = ct_pair
    report = diff_checkpoints(
        b, t, DiffConfig(tolerances=TOLS, rel_eta=ETA, chunk_elems=512), progress=False
    )
    rows = {r.name: r for r in report.tensors}
    blocks = {T: None, C: [1, 40], B: [64, 32]}
    for name, scheme in SCHEMES.items():
        db = dequant_ref(base[name], base[name + "_scale"], name)
        dt = dequant_ref(tuned[name], tuned[name + "_scale"], name)
        res = rows[name]
        got = headline_counts(res)
        assert got == bf16_counts_ref(db, dt, TOLS, ETA), name
        views = fp8_views_ref(base, tuned, name, "_scale", db, dt)
        assert res.quant == {"scheme": scheme, "block": blocks[name], **views}, name
        assert views["scales_changed"] == 1 and views["scale_only_changed"] > 0
    # the activation scale is a plain float tensor; the scales are consumed
    assert rows["model.layers.0.self_attn.o_proj.input_scale"].n_changed == 1
    assert not any(n.endswith("weight_scale") for n in rows)
    assert report.coverage()["share"] == 1.0
    assert set(report.quant_summary()) == set(SCHEMES.values())


def test_ct_scale_that_fits_no_declared_strategy_exits_2(ct_pair, tmp_path: Path, capsys) -> None:
    _, t, base, _ = ct_pair
    state = {**base, B + "_scale": torch.ones(3, 3)}
    bad = save_hf(tmp_path / "bad", state, config=CONFIG)
    rc = main(["diff", str(bad), str(t), "--json", str(tmp_path / "r.json"), "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and B in err and "does not fit" in err and "[2, 3] (ct_fp8_block)" in err, err
    assert not (tmp_path / "r.json").exists()
