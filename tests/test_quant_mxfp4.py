"""MXFP4 checkpoints (gpt-oss layout, issue 12 items 3, 6, 7): ``*_blocks`` / ``*_scales`` read
as one logical tensor and diffed on dequantized bf16 values, every count checked against an
independent whole-tensor torch reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rlsparse_lib.cli import main
from rlsparse_lib.diff.config import DiffConfig
from rlsparse_lib.diff.engine import diff_checkpoints
from rlsparse_lib.io.maskfile import MaskFile

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
        # gpt-oss experts are read in transformers' layout: each matrix transposed (the counts
        # do not depend on the order)
        assert res.shape_compared == tuple(db.transpose(-1, -2).shape)
        assert res.dtype_base == "float4_e2m1fn"
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


GATE = "model.layers.0.mlp.experts.gate_up_proj"
DOWN = "model.layers.0.mlp.experts.down_proj"


def _experts(seed: int) -> dict[str, torch.Tensor]:
    """gpt-oss-shaped MXFP4 experts: gate_up [E, 2I, H/32, 16] and a square down_proj
    [E, H, I/32, 16] with H == I (as gpt-oss's 2880 x 2880)."""
    g = torch.Generator().manual_seed(seed)
    e, h = 2, 64
    out = {}
    for name, rows, cols in ((GATE, 2 * h, h), (DOWN, h, h)):
        out[name + "_blocks"] = torch.randint(
            0, 256, (e, rows, cols // 32, 16), dtype=torch.uint8, generator=g
        )
        out[name + "_scales"] = torch.randint(
            118, 128, (e, rows, cols // 32), dtype=torch.uint8, generator=g
        )
    return out


def _transformers_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The bf16 parameters transformers loads (and a fine-tune saves): each expert transposed."""
    return {
        n: dequant_ref(state[n + "_blocks"], state[n + "_scales"]).transpose(-1, -2).contiguous()
        for n in (GATE, DOWN)
    }


def test_gpt_oss_experts_pair_with_their_transformers_bf16_copies(tmp_path: Path) -> None:
    """An MXFP4 gpt-oss checkpoint against its bf16 copy compares element for element (also the
    square down_proj, which was compared untransposed: nearly every element "changed"), and
    every pair of the four checkpoints gives the whole-tensor reference counts and the same mask
    bits, in transformers' layout, whichever path (fused codes, decoded, cross) measures it."""
    base = _experts(0)
    tuned = {k: v.clone() for k, v in base.items()}
    flat = tuned[DOWN + "_blocks"].view(-1)
    flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(1))[:40]] ^= 0x11
    tuned[GATE + "_scales"][1, 3, 0] += 1  # one group doubles
    cfg = {"model_type": "gpt_oss", "quantization_config": {"quant_method": "mxfp4"}}
    paths = {
        "mx_base": save_placed(tmp_path / "mx_base", base, {}, cfg),
        "mx_tuned": save_placed(tmp_path / "mx_tuned", tuned, {}, None),
        "bf_base": save_placed(tmp_path / "bf_base", _transformers_copy(base), {}, None),
        "bf_tuned": save_placed(
            tmp_path / "bf_tuned", _transformers_copy(tuned), {}, {"model_type": "gpt_oss"}
        ),
    }
    ref_b, ref_t = _transformers_copy(base), _transformers_copy(tuned)
    same = diff_checkpoints(paths["mx_base"], paths["bf_base"], DiffConfig(), progress=False)
    assert {t.name: t.n_changed for t in same.tensors} == {GATE: 0, DOWN: 0} and not same.skipped
    cases = [
        ("mx_base", "mx_tuned", "bfloat16"),  # fused: codes compared in stored order
        ("mx_base", "mx_tuned", "float32"),  # decoded both sides, raw views beside
        ("mx_base", "bf_tuned", "bfloat16"),  # cross
        ("bf_base", "mx_tuned", "bfloat16"),  # cross, neither side with a config.json
        ("bf_base", "bf_tuned", "bfloat16"),
    ]
    for b, t, cmp in cases:
        mask = tmp_path / f"{b}-{t}-{cmp}.mask"
        config = DiffConfig(tolerances=TOLS, rel_eta=ETA, compare_dtype=cmp, chunk_elems=64)
        report = diff_checkpoints(paths[b], paths[t], config, mask_out=mask, progress=False)
        rows = {r.name: r for r in report.tensors}
        with MaskFile.open(mask) as m:
            for name in (GATE, DOWN):
                assert rows[name].shape_compared == tuple(ref_b[name].shape), (b, t, name)
                if cmp == "bfloat16":
                    want = bf16_counts_ref(ref_b[name], ref_t[name], TOLS, ETA)
                    assert headline_counts(rows[name]) == want, (b, t, name)
                changed = ref_b[name].view(torch.int16) != ref_t[name].view(torch.int16)
                assert np.array_equal(m.mask(name), changed.numpy()), (b, t, cmp, name)
        if b.startswith("mx") and t.startswith("mx"):
            views = quant_views_ref(
                _codes(base[DOWN + "_blocks"]),
                _codes(tuned[DOWN + "_blocks"]),
                base[DOWN + "_scales"],
                tuned[DOWN + "_scales"],
                dequant_ref(base[DOWN + "_blocks"], base[DOWN + "_scales"]),
                dequant_ref(tuned[DOWN + "_blocks"], tuned[DOWN + "_scales"]),
            )
            assert rows[DOWN].quant == {"scheme": "mxfp4", "block": [1, 32], **views}, cmp
            assert rows[GATE].quant is not None and rows[GATE].quant["scale_only_changed"] > 0
