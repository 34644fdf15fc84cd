"""FP8 with one ``weight_scale`` per tensor (vLLM / AutoFP8 ``quant_method: fp8`` without a block
size) or per output row (FBGEMM ``fbgemm_fp8``, Meta's Llama-3.1 FP8 layout, ``[R, 1]`` or
``[R]``): diffed on dequantized bf16 values against an independent whole-tensor torch reference;
activation scales are plain float tensors; a missing scale or one of another shape exits 2 naming
the tensor."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlsparse_lib.cli import main
from rlsparse_lib.diff.config import DiffConfig
from rlsparse_lib.diff.engine import diff_checkpoints

from .ckpt_factory import bf16_counts_ref, fp8_views_ref, headline_counts, save_hf

TOLS = (0.0, 1e-6, 1e-5)
ETA = 1e-3
OPROJ = "model.layers.0.self_attn.o_proj.weight"  # [40, 50]
UP = "model.layers.0.mlp.up_proj.weight"  # [70, 40]
#: (config, per-row scale shape: [R, 1], [R] or None for one scale per tensor)
LAYOUTS = {
    "autofp8": ({"quant_method": "fp8", "activation_scheme": "static"}, None),
    "fbgemm": ({"quant_method": "fbgemm_fp8", "activation_scale_ub": 1200.0}, "column"),
    "fbgemm_1d": ({"quant_method": "fbgemm_fp8"}, "vector"),
}


def _quantize(w: torch.Tensor, per_row: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    if per_row is None:
        scale = (w.abs().max() / 448).reshape(1)
        return (w / scale).to(torch.float8_e4m3fn), scale
    scale = w.abs().amax(dim=1, keepdim=True) / 448
    return (w / scale).to(torch.float8_e4m3fn), scale if per_row == "column" else scale[:, 0]


def _states(per_row: str | None) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(5)
    base: dict[str, torch.Tensor] = {}
    tuned: dict[str, torch.Tensor] = {}
    for name, shape in ((OPROJ, (40, 50)), (UP, (70, 40))):
        codes, scale = _quantize(0.02 * torch.randn(shape, generator=g), per_row)
        tc, ts = codes.clone(), scale.clone()
        tc.view(torch.uint8).reshape(-1)[torch.randperm(codes.numel(), generator=g)[:30]] ^= 2
        ts.reshape(-1)[-1] *= 1.25
        base |= {name: codes, name + "_scale": scale}
        tuned |= {name: tc, name + "_scale": ts}
    for state, v in ((base, 1.0), (tuned, 2.0)):
        state["model.layers.0.self_attn.o_proj.input_scale"] = torch.full((1,), v)
        state["lm_head.weight"] = torch.ones(8, 40, dtype=torch.bfloat16)
    return base, tuned


def _dequant(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    s = scale.float()
    return (codes.float() * (s[:, None] if s.dim() == 1 and s.numel() > 1 else s)).to(
        torch.bfloat16
    )


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_weight_scale_fp8_matches_whole_tensor_reference(tmp_path: Path, layout: str) -> None:
    qc, per_row = LAYOUTS[layout]
    base, tuned = _states(per_row)
    cfg = {"quantization_config": qc}
    b = save_hf(tmp_path / "b", base, shards=2, config=cfg)
    t = save_hf(tmp_path / "t", tuned, shards=2, config=cfg)
    report = diff_checkpoints(
        b, t, DiffConfig(tolerances=TOLS, rel_eta=ETA, chunk_elems=512), progress=False
    )
    rows = {r.name: r for r in report.tensors}
    scheme = "fp8_tensor" if per_row is None else "fp8_channel"
    for name in (OPROJ, UP):
        db, dt = (
            _dequant(base[name], base[name + "_scale"]),
            _dequant(tuned[name], tuned[name + "_scale"]),
        )
        res = rows[name]
        got = headline_counts(res)
        assert got == bf16_counts_ref(db, dt, TOLS, ETA), name
        views = fp8_views_ref(base, tuned, name, "_scale", db, dt)
        block = None if per_row is None else [1, base[name].shape[1]]
        assert res.quant == {"scheme": scheme, "block": block, **views}, name
        assert views["scales_changed"] == 1 and views["scale_only_changed"] > 0
    assert rows["model.layers.0.self_attn.o_proj.input_scale"].n_changed == 1
    assert not any(n.endswith("weight_scale") for n in rows)
    assert report.coverage()["share"] == 1.0 and set(report.quant_summary()) == {scheme}


@pytest.mark.parametrize(
    ("what", "message"),
    [
        ("shape", "_scale: shape [70, 2] does not fit weight [70, 40]"),
        ("missing", ": F8_E4M3 weight without its scale"),
    ],
)
def test_a_bad_scale_exits_2_naming_the_tensor(
    tmp_path: Path, capsys, what: str, message: str
) -> None:
    qc, _ = LAYOUTS["fbgemm"]
    base, tuned = _states("column")
    if what == "shape":
        base[UP + "_scale"] = torch.ones(70, 2)
    else:
        del base[UP + "_scale"]
    b = save_hf(tmp_path / "b", base, config={"quantization_config": qc})
    t = save_hf(tmp_path / "t", tuned, config={"quantization_config": qc})
    out = tmp_path / "out"
    out.mkdir()
    assert main(["diff", str(b), str(t), "--json", str(out / "r.json"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert UP + message in err and "quant_method=fbgemm_fp8" in err, err
    assert list(out.iterdir()) == []


def test_rank_reads_per_row_fp8_as_its_dequantized_values(tmp_path: Path) -> None:
    """``rlsparse rank`` on an ``fbgemm_fp8`` pair equals rank on bf16 copies holding the
    reference's dequantized values, bit for bit."""
    from rlsparse_lib.analysis.rank import update_ranks

    qc, per_row = LAYOUTS["fbgemm"]
    base, tuned = _states(per_row)
    paths = []
    for side, state in (("b", base), ("t", tuned)):
        paths.append(save_hf(tmp_path / side, state, config={"quantization_config": qc}))
        copy = {k: v for k, v in state.items() if not k.endswith("weight_scale")}
        for name in (OPROJ, UP):
            copy[name] = _dequant(state[name], state[name + "_scale"])
        paths.append(save_hf(tmp_path / (side + "_bf16"), copy))

    def rank(a: Path, b: Path):
        return update_ranks(a, b, device="cpu", workers=1, threads=1, progress=False)

    got, want = rank(paths[0], paths[2]), rank(paths[1], paths[3])
    rows = {m["name"]: m for m in want.matrices}
    for g in got.matrices:
        w = rows[g["name"]]
        assert {k: v for k, v in g.items() if k not in ("quant", "note")} == {
            k: v for k, v in w.items() if k not in ("quant", "note")
        }, g["name"]
        if g["name"] in (OPROJ, UP):
            assert g["quant"] == {"base": "fp8_channel", "tuned": "fp8_channel"}
    assert sorted(rows) == sorted(g["name"] for g in got.matrices) and {OPROJ, UP} <= set(rows)
    assert got.summary() == want.summary() and all(rows[n]["rank"] > 0 for n in (OPROJ, UP))
