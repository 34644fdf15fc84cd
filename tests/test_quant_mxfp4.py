"""MXFP4 checkpoints (gpt-oss layout, issue 12 items 3, 6, 7): ``*_blocks`` / ``*_scales`` read
as one logical tensor and diffed on dequantized bf16 values, every count checked against an
independent whole-tensor torch reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlsparse_lib.cli import main
from rlsparse_lib.diff.config import DiffConfig
from rlsparse_lib.diff.engine import diff_checkpoints

from .ckpt_factory import bf16_counts_ref, headline_counts, quant_views_ref, save_placed

P = "model.layers.0.mlp.experts.gate_up_proj"
D = "model.layers.0.mlp.experts.down_proj"
CONFIG = {"model_type": "gpt_oss", "quantization_config": {"quant_method": "mxfp4"}}
TOLS = (0.0, 1e-8, 1e-6, 1e-5, 1e-4)
ETA = 1e-3
FP4 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def _states() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    base: dict[str, torch.Tensor] = {}
    for name, shape in ((P, (3, 10, 4)), (D, (3, 6, 5))):
        base[name + "_blocks"] = torch.randint(0, 256, (*shape, 16), dtype=torch.uint8, generator=g)
        base[name + "_scales"] = torch.randint(110, 135, shape, dtype=torch.uint8, generator=g)
        base[name + "_bias"] = torch.randn(shape[:-1], generator=g).to(torch.bfloat16)
    s = base[P + "_scales"]
    s[0, 0, 0], s[0, 0, 1], s[0, 0, 2] = 255, 0, 254  # NaN, 2^-127 (subnormal), 2^127
    tuned = {k: v.clone() for k, v in base.items()}
    blocks = tuned[P + "_blocks"].reshape(-1)
    idx = torch.randperm(blocks.numel(), generator=g)[:30]
    blocks[idx[:15]] ^= 0x01  # low nibble
    blocks[idx[15:]] ^= 0x30  # high nibble
    ts = tuned[P + "_scales"]
    ts[1, 2, 3] += 1  # the group doubles: every non-zero element changes through its scale
    ts[0, 0, 3] = 255  # a group becomes NaN
    tuned[D + "_scales"][2, 5, 4] -= 1
    tuned[D + "_bias"][0, :2] += 1
    return base, tuned


def dequant_ref(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """bf16(e2m1(code) * 2^(scale - 127)) of whole tensors, low nibble first; scale 255 is NaN."""
    lut = torch.tensor(FP4 + [-v for v in FP4], dtype=torch.float64)
    codes = torch.stack([blocks & 0x0F, blocks >> 4], dim=-1).reshape(*blocks.shape[:-1], 32)
    exp = scales.to(torch.float64)
    mult = torch.where(exp == 255, torch.nan, torch.pow(2.0, exp - 127))
    values = (lut[codes.long()] * mult[..., None]).to(torch.float32)
    return values.reshape(*blocks.shape[:-2], -1).to(torch.bfloat16)


def _codes(blocks: torch.Tensor) -> torch.Tensor:
    return torch.stack([blocks & 0x0F, blocks >> 4], dim=-1).reshape(-1)


@pytest.fixture(scope="module")
def mx_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("mx")
    base, tuned = _states()
    place = {P + "_scales": 1, D + "_blocks": 1}  # a scale in another shard than its blocks
    b = save_placed(root / "base", base, place, CONFIG)
    t = save_placed(root / "tuned", tuned, place, CONFIG)
    return b, t, base, tuned


def test_mxfp4_pair_matches_whole_tensor_reference(mx_pair) -> None:
    b, t, base, tuned = mx_pair
    report = diff_checkpoints(
        b, t, DiffConfig(tolerances=TOLS, rel_eta=ETA, chunk_elems=64), progress=False
    )
    rows = {r.name: r for r in report.tensors}
    for name in (P, D):
        db = dequant_ref(base[name + "_blocks"], base[name + "_scales"])
        dt = dequant_ref(tuned[name + "_blocks"], tuned[name + "_scales"])
        res = rows[name]
        assert res.shape_compared == tuple(db.shape) and res.dtype_base == "float4_e2m1fn"
        got = headline_counts(res)
        assert got == bf16_counts_ref(db, dt, TOLS, ETA), name
        views = quant_views_ref(
            _codes(base[name + "_blocks"]),
            _codes(tuned[name + "_blocks"]),
            base[name + "_scales"],
            tuned[name + "_scales"],
            db,
            dt,
        )
        assert res.quant == {"scheme": "mxfp4", "block": [1, 32], **views}, name
    q = rows[P].quant
    assert q is not None and q["raw_changed"] == 30 and q["scales_changed"] == 2
    assert rows[P].float_stats().n_nan_base == 32  # the NaN-scale group
    assert rows[D].quant is not None and rows[D].quant["scale_only_changed"] > 0
    # bias is a plain bf16 tensor; every logical element once, scales consumed
    assert rows[D + "_bias"].n_changed == 2
    n_logical = sum(
        v.numel() * (2 if k.endswith("_blocks") else 1)
        for k, v in base.items()
        if not k.endswith("_scales")
    )
    assert report.coverage()["n_elements_total"] == n_logical == report.n_params
    assert report.quant_summary()["mxfp4"]["tensors"] == 2


def test_mxfp4_cli_and_bad_inputs(mx_pair, tmp_path: Path, capsys) -> None:
    b, t, base, _ = mx_pair
    out = tmp_path / "r.json"
    assert main(["diff", str(b), str(t), "--json", str(out), "--by", "none"]) == 0
    assert "mxfp4: 2 tensor(s)" in capsys.readouterr().out
    assert json.loads(out.read_text())["quant_summary"]["mxfp4"]["raw_changed"] >= 30
    bad_cases = {
        "no scales": (
            {k: v for k, v in base.items() if k != P + "_scales"},
            "without their scales",
        ),
        "scales shape": (
            {**base, P + "_scales": torch.zeros(3, 10, 5, dtype=torch.uint8)},
            "[3, 10, 4]",
        ),
        "blocks shape": (
            {**base, P + "_blocks": torch.zeros(3, 10, 4, 8, dtype=torch.uint8)},
            "expected [..., G, 16]",
        ),
    }
    for what, (state, message) in bad_cases.items():
        bad = save_placed(tmp_path / what.replace(" ", "_"), state, {}, CONFIG)
        folder = tmp_path / f"out_{what.replace(' ', '_')}"
        folder.mkdir()
        rc = main(["diff", str(bad), str(t), "--json", str(folder / "r.json"), "-q"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.count("\n") == 0 and P in err and message in err, (what, err)
        assert list(folder.iterdir()) == []
