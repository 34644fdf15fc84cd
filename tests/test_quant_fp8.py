"""FP8 block-scaled checkpoints (DeepSeek-V3 layout, issue 12 items 2, 6, 7): diffed on the
dequantized bf16 values, every count checked against an independent whole-tensor torch reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlsparse_lib.cli import main
from rlsparse_lib.diff.config import DiffConfig
from rlsparse_lib.diff.engine import diff_checkpoints
from rlsparse_lib.diff.report import DiffReport, format_summary

from .ckpt_factory import (
    bf16_counts_ref,
    fp8_block_quantize,
    fp8_views_ref,
    headline_counts,
    save_hf,
    save_placed,
)

Q = "model.layers.0.self_attn.q_proj.weight"  # [200, 300]: partial block row and column
EXPERTS = [f"model.layers.0.mlp.experts.{e}.{p}" for e in range(3) for p in ("gate", "down")]
BLOCK = (128, 128)
FP8_CONFIG = {
    "model_type": "deepseek_v3",
    "quantization_config": {
        "quant_method": "fp8",
        "fmt": "e4m3",
        "weight_block_size": [128, 128],
        "activation_scheme": "dynamic",
    },
}
TOLS = (0.0, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4)
ETA = 1e-3
#: special codes planted at the first flat positions of q_proj: base -> tuned
SPECIALS = [
    (0x00, 0x80),  # +0 -> -0: bits differ, delta 0
    (0x80, 0x80),  # -0 unchanged
    (0x01, 0x02),  # subnormal -> subnormal
    (0x07, 0x07),
    (0x7E, 0xFE),  # 448 -> -448
    (0xFE, 0xFE),
    (0x7F, 0x7F),  # NaN unchanged
    (0xFF, 0x7F),  # NaN -> NaN: code differs, dequantized bits equal
    (0x7E, 0x7F),  # 448 -> NaN
]


def _weights(seed: int) -> dict[str, torch.Tensor]:
    """float32 weights of a small DeepSeek-shaped layer (attention + 3 experts)."""
    g = torch.Generator().manual_seed(seed)
    out = {Q: 0.02 * torch.randn(200, 300, generator=g)}
    for e in range(3):
        out[f"model.layers.0.mlp.experts.{e}.gate"] = 0.02 * torch.randn(130, 48, generator=g)
        out[f"model.layers.0.mlp.experts.{e}.down"] = 0.02 * torch.randn(48, 130, generator=g)
    return out


def _pair_states() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(base, tuned) FP8 state dicts with planted code, scale and special-value changes."""
    g = torch.Generator().manual_seed(1)
    base: dict[str, torch.Tensor] = {}
    tuned: dict[str, torch.Tensor] = {}
    for stem, w in _weights(0).items():
        name = stem if stem == Q else stem + "_proj.weight"
        codes, scale = fp8_block_quantize(w, BLOCK)
        base[name], base[name + "_scale_inv"] = codes, scale
        tc, ts = codes.clone(), scale.clone()
        idx = torch.randperm(codes.numel(), generator=g)[:40]
        flat = tc.view(torch.uint8).reshape(-1)
        flat[idx] ^= 1  # one code step: some values move, a few codes become NaN-adjacent
        tuned[name], tuned[name + "_scale_inv"] = tc, ts
    qc, tq = base[Q].view(torch.uint8).reshape(-1), tuned[Q].view(torch.uint8).reshape(-1)
    for i, (a, b) in enumerate(SPECIALS):
        qc[i], tq[i] = a, b
    tuned[Q + "_scale_inv"][1, 2] *= 1.5  # the partial corner block: changes through the scale
    # a scale moved by a hair: many of its elements round to the same bf16 value
    e1 = "model.layers.0.mlp.experts.1.gate_proj.weight_scale_inv"
    tuned[e1][1, 0] *= 1 + 2**-20
    for state, seed in ((base, 2), (tuned, 2)):
        g2 = torch.Generator().manual_seed(seed)
        state["model.embed_tokens.weight"] = (0.02 * torch.randn(64, 48, generator=g2)).to(
            torch.bfloat16
        )
        state["model.layers.0.input_layernorm.weight"] = torch.ones(48, dtype=torch.bfloat16)
        state["model.layers.0.mlp.gate.e_score_correction_bias"] = torch.zeros(3)
    tuned["model.layers.0.input_layernorm.weight"][:5] = 2.0
    return base, tuned


def _placement(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """q_proj's scale in another shard than its weight; experts spread over both shards."""
    out = {n: i % 2 for i, n in enumerate(sorted(state))}
    out[Q], out[Q + "_scale_inv"] = 0, 1
    return out


@pytest.fixture(scope="module")
def fp8_pair(tmp_path_factory) -> tuple[Path, Path, dict, dict]:
    root = tmp_path_factory.mktemp("fp8")
    base, tuned = _pair_states()
    b = save_placed(root / "base", base, _placement(base), FP8_CONFIG)
    t = save_placed(root / "tuned", tuned, _placement(tuned), FP8_CONFIG)
    return b, t, base, tuned


# ---- the independent reference: whole tensors, plain torch -----------------------------------


def dequant_ref(codes: torch.Tensor, scale: torch.Tensor, block=BLOCK) -> torch.Tensor:
    """bf16(float32(code) * float32(scale[r // b0, c // b1])) over the whole tensor."""
    r, c = codes.shape[-2:]
    s = scale.float().repeat_interleave(block[0], -2).repeat_interleave(block[1], -1)
    return (codes.float() * s[..., :r, :c]).to(torch.bfloat16)


def _check(report: DiffReport, base: dict, tuned: dict, tuned_dequantized: bool = False) -> None:
    rows = {t.name: t for t in report.tensors}
    fp8 = [n for n in base if base[n].dtype == torch.float8_e4m3fn]
    assert len(fp8) == 7 and set(fp8) <= set(rows)
    total = 0
    for name in fp8:
        db = dequant_ref(base[name], base[name + "_scale_inv"])
        dt = (
            tuned[name]
            if tuned_dequantized
            else dequant_ref(tuned[name], tuned[name + "_scale_inv"])
        )
        want = bf16_counts_ref(db, dt, TOLS, ETA)
        res = rows[name]
        s = res.float_stats()
        got = headline_counts(res)
        assert got == want, name
        # binade views of the dequantized base: elements (all / changed) per bf16 exponent field
        field = (db.view(torch.int16).reshape(-1).int() >> 7) & 0xFF
        changed = (db.view(torch.int16) != dt.view(torch.int16)).reshape(-1)
        assert s.binade_total.tolist() == torch.bincount(field, minlength=256).tolist(), name
        assert s.binade_changed.tolist() == (
            torch.bincount(field[changed], minlength=256).tolist()
        ), name
        assert res.compare_dtype == "bfloat16" and res.dtype_base == "float8_e4m3fn"
        if tuned_dequantized:
            assert res.quant is None
        else:
            q = fp8_views_ref(base, tuned, name, "_scale_inv", db, dt)
            assert res.quant == {"scheme": "fp8_block", "block": [128, 128], **q}, name
        total += want["n_changed"]
    assert sum(rows[n].n_changed for n in fp8) == total


def test_fp8_pair_matches_whole_tensor_reference(fp8_pair) -> None:
    b, t, base, tuned = fp8_pair
    report = diff_checkpoints(b, t, DiffConfig(chunk_elems=1024, rel_eta=ETA), progress=False)
    _check(report, base, tuned)
    q = report.tensors[[r.name for r in report.tensors].index(Q)].quant
    assert q is not None
    assert q["raw_changed"] >= 6 and q["scales_changed"] == 1 and q["scale_only_changed"] > 0
    e1 = next(r for r in report.tensors if r.name.endswith("experts.1.gate_proj.weight")).quant
    assert e1 is not None and e1["scales_changed"] == 1
    # the hair-moved scale: fewer elements changed than the block holds (rounding absorbs some)
    assert e1["scale_only_changed"] < 2 * 48
    # every logical element once; the scales are consumed, not weights
    n_logical = sum(v.numel() for k, v in base.items() if not k.endswith("_scale_inv"))
    cov = report.coverage()
    assert cov["n_elements_total"] == n_logical == report.n_params and cov["share"] == 1.0
    summary = report.quant_summary()["fp8_block"]
    assert summary["tensors"] == 7
    assert summary["raw_n"] == sum(base[n].numel() for n in [*EXPERTS_NAMES, Q])
    assert not any(r.name.endswith("_scale_inv") for r in report.tensors)


EXPERTS_NAMES = [e + "_proj.weight" for e in EXPERTS]


def test_units_resume_and_cluster_give_the_same_report(fp8_pair, tmp_path: Path) -> None:
    b, t, base, tuned = fp8_pair
    cfg = DiffConfig(chunk_elems=1024, rel_eta=ETA)
    one = diff_checkpoints(b, t, cfg, progress=False)
    small = DiffConfig(chunk_elems=2048, rel_eta=ETA, max_unit_bytes=5000)
    resumed = diff_checkpoints(b, t, small, progress=False, resume=tmp_path / "r")
    again = diff_checkpoints(b, t, small, progress=False, resume=tmp_path / "r")
    pooled = diff_checkpoints(b, t, small, progress=False, cluster="local:2")
    want = [x.to_dict() for x in one.tensors]
    for rep in (resumed, again, pooled):
        got = [x.to_dict() for x in rep.tensors]
        assert [x["name"] for x in got] == [x["name"] for x in want]
        for g, w in zip(got, want, strict=True):
            assert g["quant"] == w.get("quant") if "quant" in w else "quant" not in g
            assert g["n_changed"] == w["n_changed"]
            assert g["stats"]["n_le_tol"] == w["stats"]["n_le_tol"]
        assert rep.quant_summary() == one.quant_summary()
    _check(pooled, base, tuned)


def test_fp8_base_against_a_dequantized_bf16_copy(fp8_pair, tmp_path: Path) -> None:
    b, _, base, tuned = fp8_pair
    copy = {}
    for name, v in tuned.items():
        if name.endswith("_scale_inv"):
            continue
        copy[name] = (
            dequant_ref(v, tuned[name + "_scale_inv"]) if v.dtype == torch.float8_e4m3fn else v
        )
    t = save_hf(tmp_path / "bf16", copy, shards=2)
    report = diff_checkpoints(b, t, DiffConfig(chunk_elems=1024, rel_eta=ETA), progress=False)
    _check(report, base, copy, tuned_dequantized=True)
    note = next(r.note for r in report.tensors if r.name == Q)
    assert "base fp8_block dequantized to bfloat16" in note and "no raw-code views" in note
    assert report.quant_summary() == {}
    assert report.coverage()["share"] == 1.0


def test_cli_json_and_summary(fp8_pair, tmp_path: Path, capsys) -> None:
    b, t, _, _ = fp8_pair
    out = tmp_path / "r.json"
    assert main(["diff", str(b), str(t), "--json", str(out), "--by", "none"]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].startswith("headline covers 100.0 %")
    assert "fp8_block: 7 tensor(s)" in printed
    data = json.loads(out.read_text())
    keys = {"tensors", "raw_n", "raw_changed", "scales_n", "scales_changed", "scale_only_changed"}
    assert set(data["quant_summary"]["fp8_block"]) == keys
    q = next(x for x in data["tensors"] if x["name"] == Q)["quant"]
    assert q["scheme"] == "fp8_block" and q["block"] == [128, 128]
    loaded = DiffReport.load(out)
    assert loaded.quant_summary() == data["quant_summary"]


def _bad(base: dict, what: str) -> tuple[dict, dict]:
    state, cfg = dict(base), json.loads(json.dumps(FP8_CONFIG))
    if what == "missing scale":
        del state[Q + "_scale_inv"]
    elif what == "scale shape":
        state[Q + "_scale_inv"] = torch.ones(2, 2)
    elif what == "block size":
        cfg["quantization_config"]["weight_block_size"] = [128]
    elif what == "integer scale":
        state[Q + "_scale_inv"] = torch.ones(2, 3, dtype=torch.int32)
    elif what == "no config, not 128":
        state[Q + "_scale_inv"] = torch.ones(4, 5)
        cfg = {}
    return state, cfg


@pytest.mark.parametrize(
    ("what", "message"),
    [
        ("missing scale", "without its scale"),
        ("scale shape", "has shape [2, 2], expected [2, 3]"),
        ("block size", "unknown block size"),
        ("integer scale", "is int32, expected a float or F8_E8M0"),
        ("no config, not 128", "has shape [4, 5], expected [2, 3]"),
    ],
)
def test_bad_fp8_inputs_exit_2_naming_the_tensor(
    fp8_pair, tmp_path: Path, capsys, what: str, message: str
) -> None:
    _, t, base, _ = fp8_pair
    state, cfg = _bad(base, what)
    b = save_placed(tmp_path / "bad", state, _placement(state), cfg or None)
    out = tmp_path / "out"
    out.mkdir()
    rc = main(["diff", str(b), str(t), "--json", str(out / "r.json"), "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0, err
    named = Q if what != "block size" else "_proj.weight"  # the first FP8 weight met
    assert named in err and message in err, err
    assert list(out.iterdir()) == []


def test_mask_out_marks_exactly_the_dequantized_changes(fp8_pair, tmp_path: Path) -> None:
    from rlsparse_lib.io.maskfile import MaskFile

    b, t, base, tuned = fp8_pair
    path = tmp_path / "mask.rlsmask"
    report = diff_checkpoints(b, t, DiffConfig(chunk_elems=1024), mask_out=path, progress=False)
    with MaskFile.open(path) as mask:
        for name in (Q, *EXPERTS_NAMES):
            db = dequant_ref(base[name], base[name + "_scale_inv"])
            dt = dequant_ref(tuned[name], tuned[name + "_scale_inv"])
            want = (db.view(torch.int16) != dt.view(torch.int16)).numpy()
            assert mask.shapes[name] == tuple(base[name].shape)
            got = mask.mask(name)
            assert got.shape == want.shape and (got == want).all(), name
    assert "scales changed" in format_summary(report)


def test_e8m0_scales_decode_as_their_powers_of_two(tmp_path: Path) -> None:
    """``*_scale_inv`` stored as F8_E8M0 (power-of-two scales, DeepGEMM ``ue8m0`` style) diffs as
    its float32 values: the whole-tensor reference, and the report of the same scales stored as
    float32; E8M0 255 is a NaN scale."""
    base, tuned = _pair_states()
    for state in (base, tuned):
        for n in [k for k in state if k.endswith("_scale_inv")]:
            state[n] = torch.exp2(torch.round(torch.log2(state[n])))
    tuned[Q + "_scale_inv"][1, 2] *= 2  # the partial corner block: changes through the scale
    tuned[Q + "_scale_inv"][0, 1] = float("nan")
    reports = []
    for dtype in (torch.float8_e8m0fnu, torch.float32):
        sides = [
            {k: v.to(dtype) if k.endswith("_scale_inv") else v for k, v in s.items()}
            for s in (base, tuned)
        ]
        b, t = (
            save_placed(tmp_path / f"{dtype}-{side}", s, _placement(s), FP8_CONFIG)
            for side, s in zip(("base", "tuned"), sides, strict=True)
        )
        report = diff_checkpoints(b, t, DiffConfig(chunk_elems=1024, rel_eta=ETA), progress=False)
        _check(report, base, tuned)
        reports.append(report)
    e8m0, f32 = (r.to_dict() for r in reports)
    assert e8m0["tensors"] == f32["tensors"]
    q = next(r for r in reports[0].tensors if r.name == Q)
    assert q.quant is not None and q.quant["scales_changed"] == 2
    assert q.float_stats().n_nan_tuned >= 128 * 128  # the NaN scale's block


def test_transformers_fp8_expert_stacks(tmp_path: Path, capsys) -> None:
    """transformers' fine-grained FP8 experts: a stacked ``experts.gate_up_proj`` [E, 2I, H]
    with ``experts.gate_up_proj_scales_inv`` [E, ceil(2I/128), ceil(H/128)] is one logical
    tensor, diffed on its dequantized values (whole-tensor reference); both scale names for one
    weight are refused by name."""
    g = torch.Generator().manual_seed(3)
    stem = "model.layers.0.mlp.experts."
    sides: list[dict[str, torch.Tensor]] = [{}, {}]
    for part, shape in (("gate_up_proj", (3, 260, 130)), ("down_proj", (3, 130, 130))):
        codes, scale = fp8_block_quantize(0.02 * torch.randn(*shape, generator=g), BLOCK)
        tc, ts = codes.clone(), scale.clone()
        tc.view(torch.uint8).reshape(-1)[torch.randperm(codes.numel(), generator=g)[:99]] ^= 1
        ts[1, 0, 1] *= 1.25
        sides[0] |= {stem + part: codes, stem + part + "_scales_inv": scale}
        sides[1] |= {stem + part: tc, stem + part + "_scales_inv": ts}
    b, t = (save_hf(tmp_path / s, st, config=FP8_CONFIG) for s, st in zip("bt", sides, strict=True))
    report = diff_checkpoints(b, t, DiffConfig(chunk_elems=1024, rel_eta=ETA), progress=False)
    rows = {r.name: r for r in report.tensors}
    assert set(rows) == {stem + "gate_up_proj", stem + "down_proj"}
    for name, res in rows.items():
        db = dequant_ref(sides[0][name], sides[0][name + "_scales_inv"])
        dt = dequant_ref(sides[1][name], sides[1][name + "_scales_inv"])
        assert res.n_changed == bf16_counts_ref(db, dt, TOLS, ETA)["n_changed"] > 99, name
        assert res.quant is not None and res.quant["scales_changed"] == 1
    assert report.coverage()["share"] == 1.0
    both = dict(sides[0]) | {
        stem + "down_proj_scale_inv": sides[0][stem + "down_proj_scales_inv"].clone()
    }
    bad = save_hf(tmp_path / "both", both, config=FP8_CONFIG)
    out = tmp_path / "out"
    out.mkdir()
    assert main(["diff", str(bad), str(t), "--json", str(out / "r.json"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "down_proj: two block scales, " in err and "down_proj_scales_inv" in err, err
    assert list(out.iterdir()) == []
