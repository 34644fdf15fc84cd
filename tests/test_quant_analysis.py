"""rank, dynamics, overlap / mask random and absorption on quantized checkpoints (issue 12).

FP8 block-scaled (DeepSeek layout, partial edge blocks, a 3-D expert stack), MXFP4 (gpt-oss
layout) and FP8-vs-bf16 cross pairs are made here; every command's numbers must equal the same
command on bf16 checkpoints holding the dequantized values, decoded by the plain-numpy reference
below (not the library's tables or kernel), bit for bit.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rlsparse_lib.analysis.absorption import visible_vs_absorbed
from rlsparse_lib.analysis.dynamics import DynamicsReport, sparsity_dynamics
from rlsparse_lib.analysis.overlap import count_overlaps
from rlsparse_lib.analysis.rank import RankReport, update_ranks
from rlsparse_lib.cli import main
from rlsparse_lib.errors import ConfigError, QuantizedWeightsError
from rlsparse_lib.io.maskfile import MaskFile
from rlsparse_lib.masks.ops import build_mask, random_mask_like

from .ckpt_factory import fp8_block_quantize, save_hf, save_placed
from .test_quant_fp8 import FP8_CONFIG
from .test_quant_mxfp4 import CONFIG as MX_CONFIG

Q = "model.layers.0.self_attn.q_proj.weight"  # [200, 300]: a partial block row and column
EXP = "model.layers.0.mlp.experts.down_proj.weight"  # [2, 48, 130]: an expert stack
EMB = "model.embed_tokens.weight"  # stored bf16 in every checkpoint
NORM = "model.layers.0.input_layernorm.weight"
MX = "model.layers.0.mlp.experts.gate_up_proj"  # MXFP4 [2, 10, 2, 16] -> logical [2, 64, 10]
MX2 = "model.layers.0.mlp.router_proj"  # MXFP4 [40, 4, 16] -> logical [40, 128]
BIAS = "model.layers.0.mlp.experts.gate_up_proj_bias"
E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]
CHUNK = 1024  # far below one 128-row slab: chunks must grow to whole slabs


# ---- the independent reference: whole tensors, plain numpy ----------------------------------
def bf16_rne(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 words (uint16), round to nearest even (finite values only)."""
    assert np.isfinite(x).all()
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def e4m3(codes: np.ndarray) -> np.ndarray:
    """float32 value of F8_E4M3 (fn) codes: sign, 4 exponent bits (bias 7), 3 mantissa bits."""
    c = codes.astype(np.int64)
    e, m = (c >> 3) & 15, c & 7
    mag = np.where(e == 0, m * 2.0**-9, (8 + m) * 2.0 ** (e - 10))
    out = np.where(c >> 7, -mag, mag).astype(np.float32)
    out[(c & 0x7F) == 0x7F] = np.nan
    return out


def fp8_ref(codes: torch.Tensor, scale_inv: torch.Tensor) -> np.ndarray:
    """bf16_rne(float32(code) × float32 scale_inv[r // 128, c // 128]) as bf16 words."""
    c = codes.view(torch.uint8).numpy()
    s = scale_inv.numpy().astype(np.float32)
    r, k = c.shape[-2:]
    full = np.repeat(np.repeat(s, 128, axis=-2), 128, axis=-1)[..., :r, :k]
    return bf16_rne(e4m3(c) * full)


def mx_ref(blocks: torch.Tensor, scales: torch.Tensor) -> np.ndarray:
    """bf16(e2m1(code) × 2^(scale − 127)) as bf16 words, low nibble first; logical [..., G·32]."""
    b = blocks.numpy()
    codes = np.stack([b & 0x0F, b >> 4], axis=-1).reshape(*b.shape[:-1], 32)
    values = np.asarray(E2M1, np.float32)[codes] * np.exp2(scales.numpy().astype(np.float32) - 127)[
        ..., None
    ].astype(np.float32)
    return bf16_rne(values.reshape(*b.shape[:-2], -1))


def as_bf16(words: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(words).view(np.int16)).view(torch.bfloat16)


def words(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().view(torch.int16).numpy().view(np.uint16)


def dequantized_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The bf16 checkpoint holding ``state``'s values (FP8 / MXFP4 decoded by the reference)."""
    out = {}
    for name, t in state.items():
        if name.endswith(("_scale_inv", "_scales")):
            continue
        if t.dtype == torch.float8_e4m3fn:
            out[name] = as_bf16(fp8_ref(t, state[name + "_scale_inv"]))
        elif name.endswith("_blocks"):
            stem = name.removesuffix("_blocks")
            w = mx_ref(t, state[stem + "_scales"])
            # a stack of experts as transformers holds it: each matrix transposed
            out[stem] = as_bf16(np.swapaxes(w, -1, -2) if w.ndim >= 3 else w)
        else:
            out[name] = t
    return out


# ---- synthetic series -------------------------------------------------------------------------
def _fp8_series() -> list[dict[str, torch.Tensor]]:
    """θ0 … θ3 FP8 states: codes rewritten (never to NaN), one block's scale moved in θ1 and a
    partial corner block's in θ3, the bf16 embedding and norm touched."""
    g = torch.Generator().manual_seed(0)
    base: dict[str, torch.Tensor] = {}
    for name, shape in ((Q, (200, 300)), (EXP, (2, 48, 130))):
        codes, scale = fp8_block_quantize(0.02 * torch.randn(*shape, generator=g))
        base[name], base[name + "_scale_inv"] = codes, scale
    base[EMB] = (0.02 * torch.randn(64, 48, generator=g)).to(torch.bfloat16)
    base[NORM] = torch.ones(48, dtype=torch.bfloat16)
    series = [base]
    for k in range(1, 4):
        state = {n: t.clone() for n, t in series[-1].items()}
        for name in (Q, EXP):
            flat = state[name].view(torch.uint8).reshape(-1)
            idx = torch.randperm(flat.numel(), generator=g)[: 40 * k]
            new = torch.randint(0, 0x7F, (idx.numel(),), generator=g, dtype=torch.uint8)
            flat[idx] = new | (torch.randint(0, 2, idx.shape, generator=g, dtype=torch.uint8) << 7)
        if k == 1:
            state[Q + "_scale_inv"][0, 1] *= 1.5
        if k == 3:
            state[Q + "_scale_inv"][1, 2] *= 1 + 2**-12  # the partial corner block, by a hair
            state[EXP + "_scale_inv"][1, 0, 1] *= 0.75
        state[EMB].view(-1)[k * 7 : k * 7 + 5] += 0.01
        state[NORM][:k] = 2.0
        series.append(state)
    return series


def _mx_series() -> list[dict[str, torch.Tensor]]:
    """θ0 … θ2 MXFP4 states: nibbles flipped, a group's scale moved, the bf16 bias touched."""
    g = torch.Generator().manual_seed(1)
    base = {}
    for name, shape in ((MX, (2, 10, 2)), (MX2, (40, 4))):
        base[name + "_blocks"] = torch.randint(0, 256, (*shape, 16), dtype=torch.uint8, generator=g)
        base[name + "_scales"] = torch.randint(110, 135, shape, dtype=torch.uint8, generator=g)
    base[BIAS] = torch.randn(2, 64, generator=g).to(torch.bfloat16)
    series = [base]
    for k in range(1, 3):
        state = {n: t.clone() for n, t in series[-1].items()}
        for name in (MX, MX2):
            flat = state[name + "_blocks"].reshape(-1)
            idx = torch.randperm(flat.numel(), generator=g)[: 20 * k]
            flat[idx] ^= torch.tensor([0x01, 0x30], dtype=torch.uint8).repeat(10 * k)
        state[MX + "_scales"][1, 3, k - 1] += 1
        state[BIAS][0, k] += 1
        series.append(state)
    return series


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, list[Path]]:
    """``fp8``: θ0 … θ3 FP8 (θ0's q_proj scale in another shard than its codes); ``fp8_mixed``:
    the same series with θ2 a bf16 dequantized copy; ``mx``: θ0 … θ2 MXFP4; ``*_bf16``: the bf16
    copies of each (reference-decoded)."""
    root = tmp_path_factory.mktemp("qa")
    out: dict[str, list[Path]] = {}
    for kind, series, config in (
        ("fp8", _fp8_series(), FP8_CONFIG),
        ("mx", _mx_series(), MX_CONFIG),
    ):
        out[kind], out[kind + "_bf16"] = [], []
        for k, state in enumerate(series):
            place = {Q + "_scale_inv": 1} if kind == "fp8" else {MX + "_scales": 1}
            out[kind].append(save_placed(root / f"{kind}{k}", state, place, config))
            out[kind + "_bf16"].append(save_hf(root / f"{kind}{k}_bf16", dequantized_copy(state)))
    out["fp8_mixed"] = [*out["fp8"][:2], out["fp8_bf16"][2], out["fp8"][3]]
    return out


# ---- rank -------------------------------------------------------------------------------------
_NUMBERS = ("shape", "rank", "max_rank", "rank_pct", "effective_rank", "stable_rank")
_FLOATS = ("sigma_max", "fro_norm", "threshold", "atol", "rtol", "rank_at_rtol")


def _rank(base: Path, tuned: Path) -> RankReport:
    return update_ranks(
        base,
        tuned,
        device="cpu",
        workers=1,
        threads=1,
        chunk_elems=CHUNK,
        rtol_grid=(1e-6, 1e-3),
        progress=False,
    )


@pytest.mark.parametrize(
    ("kind", "pair", "schemes"),
    [
        ("fp8", (0, 3), {Q: ("fp8_block", "fp8_block"), EXP: ("fp8_block", "fp8_block")}),
        ("fp8_mixed", (0, 2), {Q: ("fp8_block", None), EXP: ("fp8_block", None)}),
        ("fp8_mixed", (2, 3), {Q: (None, "fp8_block"), EXP: (None, "fp8_block")}),
        ("mx", (0, 2), {MX: ("mxfp4", "mxfp4"), MX2: ("mxfp4", "mxfp4")}),
    ],
)
def test_rank_equals_rank_of_the_bf16_copies(ckpts, kind, pair, schemes) -> None:
    ref_kind = kind.removesuffix("_mixed") + "_bf16"
    got = _rank(ckpts[kind][pair[0]], ckpts[kind][pair[1]])
    want = _rank(ckpts[ref_kind][pair[0]], ckpts[ref_kind][pair[1]])
    # checkpoint order: a quantized tensor sits where its codes are stored
    by_name = {m["name"]: m for m in want.matrices}
    assert sorted(by_name) == sorted(m["name"] for m in got.matrices)
    assert set(by_name) >= set(schemes)
    for g in got.matrices:
        w = by_name[g["name"]]
        for key in _NUMBERS + _FLOATS:
            assert g[key] == w[key], (g["name"], key)  # bit for bit
        if g["name"] in schemes:
            b, t = schemes[g["name"]]
            assert g["quant"] == {"base": b, "tuned": t}
            assert "dequantized to bfloat16" in g["note"]
        else:
            assert g["quant"] is None and w["quant"] is None
    assert got.summary() == want.summary()
    assert got.skipped == want.skipped
    counts = got.provenance["dequantized"]
    assert counts == {s: len(schemes) for s in {x for v in schemes.values() for x in v} - {None}}
    # σ_max of the 2-D matrix against numpy's SVD of the reference ΔW
    name = Q if kind.startswith("fp8") else MX2
    delta = _ref_delta(ckpts[ref_kind][pair[0]], ckpts[ref_kind][pair[1]], name)
    row = next(m for m in got.matrices if m["name"] == name)
    assert math.isclose(row["sigma_max"], float(np.linalg.norm(delta, 2)), rel_tol=1e-4)
    assert row["rank"] == np.linalg.matrix_rank(delta.astype(np.float32)) > 0


def _ref_delta(base: Path, tuned: Path, name: str) -> np.ndarray:
    a, b = (_words_of(p, name) for p in (base, tuned))
    f = [(w.astype(np.uint32) << 16).view(np.float32) for w in (a, b)]
    shape = load_file(str(base / "model.safetensors"))[name].shape
    return (f[1] - f[0]).astype(np.float64).reshape(shape[0], -1)


def test_rank_json_names_the_schemes(ckpts, tmp_path: Path, capsys) -> None:
    out = tmp_path / "rank.json"
    b, t = ckpts["fp8_mixed"][0], ckpts["fp8_mixed"][2]
    assert main(["rank", str(b), str(t), "--json", str(out), "--device", "cpu", "-q"]) == 0
    data = json.loads(out.read_text())
    rows = {m["name"]: m for m in data["matrices"]}
    assert rows[Q]["quant"] == {"base": "fp8_block", "tuned": None}
    assert rows[EMB]["quant"] is None
    assert data["provenance"]["dequantized"] == {"fp8_block": 2}
    loaded = RankReport.load(out)
    assert loaded.table().set_index("name").loc[Q, "quant_base"] == "fp8_block"


# ---- dynamics ---------------------------------------------------------------------------------
def _dynamics(paths: list[Path], out: Path, unit_bytes: int) -> DynamicsReport:
    out.mkdir(parents=True, exist_ok=True)
    return sparsity_dynamics(
        paths[0],
        paths[1:],
        labels=[f"c{k}" for k in range(1, len(paths))],
        chunk_elems=CHUNK,
        max_unit_bytes=unit_bytes,  # units of a few chunks: tensors are cut across units
        final_mask_out=out / "final.mask",
        union_mask_out=out / "union.mask",
        progress=False,
    )


@pytest.mark.parametrize("kind", ["fp8", "fp8_mixed", "mx"])
def test_dynamics_equals_dynamics_of_the_bf16_copies(ckpts, kind, tmp_path: Path) -> None:
    ref_kind = kind.removesuffix("_mixed") + "_bf16"
    unit_bytes = 8_000 if kind == "mx" else 60_000
    got = _dynamics(ckpts[kind], tmp_path / "q", unit_bytes)
    want = _dynamics(ckpts[ref_kind], tmp_path / "bf16", unit_bytes)
    g, w = got.to_dict(), want.to_dict()
    assert g.pop("provenance")["execution"]["n_units"] > len(got.names)
    w.pop("provenance")
    _same_stats(g.pop("stats"), w.pop("stats"))
    # checkpoint order: a quantized tensor sits where its codes are stored
    assert sorted(g.pop("tensors"), key=_name) == sorted(w.pop("tensors"), key=_name)
    assert g == w  # every other count, sparsity and fate: exact
    for mask in ("final.mask", "union.mask"):
        with (
            MaskFile.open(tmp_path / "q" / mask) as a,
            MaskFile.open(tmp_path / "bf16" / mask) as b,
        ):
            assert sorted(a.names) == sorted(b.names)
            for name in a.names:
                assert a.shapes[name] == b.shapes[name]
                assert np.array_equal(a.mask(name), b.mask(name)), (mask, name)
    # per-checkpoint counts of one quantized tensor against the reference words
    name = Q if kind.startswith("fp8") else MX
    ref = [_words_of(p, name) for p in ckpts[ref_kind]]
    t = got.names.index(name)
    assert got.counts["n_changed"][t].tolist() == [int((r != ref[0]).sum()) for r in ref[1:]]
    assert got.counts["n_step"][t].tolist() == [
        int((b != a).sum()) for a, b in itertools.pairwise(ref)
    ]
    schemes = got.provenance["dequantized"]
    assert EMB not in schemes and NORM not in schemes
    if kind == "fp8_mixed":
        assert schemes[Q] == ["fp8_block", "fp8_block", None, "fp8_block"]
    elif kind == "mx":
        assert schemes[MX] == ["mxfp4"] * 3
    assert want.provenance["dequantized"] == {}


def _name(row: dict) -> str:
    return row["name"]


def _same_stats(got: dict, want: dict) -> None:
    """Merged DiffStats of a series: counts and histograms exact; the float sums (Σθ0², ΣΔ², …)
    to 1e-12 — the chunks of a quantized tensor are whole scale slabs, other chunk boundaries
    than the bf16 copy's, and float sums depend on the order they are merged in."""
    for key in ("vs_init", "vs_prev"):
        for a, b in zip(got[key], want[key], strict=True):
            sums = {f for f in a if f.startswith("sum_")}
            assert sums and {f: a[f] for f in a if f not in sums} == {
                f: b[f] for f in b if f not in sums
            }
            for f in sums:
                assert math.isclose(a[f], b[f], rel_tol=1e-12, abs_tol=1e-300), (key, f)


def _words_of(path: Path, name: str) -> np.ndarray:
    """The bf16 words of tensor ``name`` of a saved bf16 copy, flat."""
    return words(load_file(str(path / "model.safetensors"))[name]).reshape(-1)


# ---- overlap and random masks: θ0 binades of a quantized base --------------------------------
@pytest.mark.parametrize("kind", ["fp8", "mx"])
def test_binade_strata_of_a_quantized_base_equal_those_of_its_bf16_copy(
    ckpts, kind, tmp_path: Path
) -> None:
    ref_kind = kind + "_bf16"
    paths = ckpts[kind]
    masks = []
    for j in (1, len(paths) - 1):
        masks.append(tmp_path / f"{j}.mask")
        build_mask(paths[0], paths[j], masks[-1], progress=False)
        build_mask(ckpts[ref_kind][0], ckpts[ref_kind][j], tmp_path / "ref.mask", progress=False)
        with MaskFile.open(masks[-1]) as a, MaskFile.open(tmp_path / "ref.mask") as b:
            assert sorted(a.names) == sorted(b.names)
            assert all(np.array_equal(a.mask(n), b.mask(n)) for n in a.names)
    # the same masks against θ0 quantized and θ0's bf16 copy
    got = count_overlaps(masks, base=paths[0], chunk_elems=CHUNK, progress=False)
    want = count_overlaps(masks, base=ckpts[ref_kind][0], chunk_elems=CHUNK, progress=False)
    for attr in ("numel", "n_set", "n_both", "binade_expected", "binade_variance"):
        assert np.array_equal(getattr(got, attr), getattr(want, attr)), attr
    assert got.binade_expected is not None and got.binade_expected.any()
    quantized = sorted([Q, EXP] if kind == "fp8" else [MX, MX2])
    scheme = "fp8_block" if kind == "fp8" else "mxfp4"
    assert {s: sorted(v) for s, v in got.provenance["base_dequantized"].items()} == {
        scheme: quantized
    }
    assert want.provenance["base_dequantized"] == {}
    # random masks matched per tensor × |θ0| binade: the same bits from either base
    for k in (kind, ref_kind):
        random_mask_like(
            masks[1],
            tmp_path / f"{k}-random.mask",
            seed=3,
            stratify="binade",
            base=ckpts[k][0],
            chunk_elems=CHUNK,
            progress=False,
        )
    with (
        MaskFile.open(tmp_path / f"{kind}-random.mask") as a,
        MaskFile.open(tmp_path / f"{ref_kind}-random.mask") as b,
    ):
        for name in a.names:
            assert np.array_equal(a.mask(name), b.mask(name)), name


def test_overlap_cli_with_a_quantized_base(ckpts, tmp_path: Path) -> None:
    paths = ckpts["fp8"]
    m1, m2 = tmp_path / "a.mask", tmp_path / "b.mask"
    assert main(["mask", str(paths[0]), str(paths[1]), "-o", str(m1), "-q"]) == 0
    assert main(["mask", str(paths[0]), str(paths[3]), "-o", str(m2), "-q"]) == 0
    out = tmp_path / "o.json"
    assert (
        main(["overlap", str(m1), str(m2), "--base", str(paths[0]), "--json", str(out), "-q"]) == 0
    )
    data = json.loads(out.read_text())
    assert data["baselines"]["binade"] is not None
    assert sorted(data["provenance"]["base_dequantized"]["fp8_block"]) == sorted([Q, EXP])


# ---- absorption: a quantized side has no fp32 master ------------------------------------------
@pytest.mark.parametrize(
    ("kind", "pair", "names", "scheme"),
    [
        ("fp8", (0, 1), (Q, EXP), "fp8_block"),
        ("fp8_mixed", (2, 3), (Q, EXP), "fp8_block"),
        ("mx", (0, 1), (MX, MX2), "mxfp4"),
    ],
)
def test_absorption_refuses_quantized_tensors_saying_why(ckpts, kind, pair, names, scheme) -> None:
    b, t = ckpts[kind][pair[0]], ckpts[kind][pair[1]]
    with pytest.raises(QuantizedWeightsError) as err:
        visible_vs_absorbed(b, t, progress=False)
    msg = str(err.value)
    named = [n for n in names if f": {n} is stored quantized ({scheme})" in msg]
    assert len(named) == 1 and "(and 1 more quantized tensor(s))" in msg, msg
    assert "no fp32 master" in msg and "\n" not in msg, msg
    where = ckpts[kind][pair[1] if kind == "fp8_mixed" else pair[0]]
    assert msg.startswith(f"{where}: "), msg  # the side that is quantized
    # left out by exclude, nothing quantized is read: the bf16 rest has no fp32 tensor either
    with pytest.raises(ConfigError, match="share no tensor stored in float32"):
        visible_vs_absorbed(b, t, exclude=(r"proj(\.weight)?$",), progress=False)


# ---- bad input: a missing scale exits 2 naming the tensor, nothing written -------------------
@pytest.mark.parametrize("command", ["rank", "dynamics", "overlap", "mask random"])
def test_missing_scale_exits_2_naming_the_tensor(ckpts, command, tmp_path: Path, capsys) -> None:
    state = _fp8_series()[0]
    del state[Q + "_scale_inv"]
    bad = save_placed(tmp_path / "bad", state, {}, FP8_CONFIG)
    good = ckpts["fp8"]
    out = tmp_path / "out"
    out.mkdir()
    mask = tmp_path / "m.mask"
    if command in ("overlap", "mask random"):
        assert main(["mask", str(good[0]), str(good[1]), "-o", str(mask), "-q"]) == 0
    argv = {
        "rank": ["rank", str(bad), str(good[1]), "--json", str(out / "r.json"), "--device", "cpu"],
        "dynamics": ["dynamics", str(bad), str(good[1]), str(good[2]), "--json", str(out / "d.json")],
        "overlap": ["overlap", str(mask), str(mask), "--base", str(bad), "--json", str(out / "o.json")],
        "mask random": [
            "mask", "random", str(mask), "-o", str(out / "r.mask"), "--seed", "0",
            "--stratify", "binade", "--base", str(bad),
        ],
    }[command]  # fmt: skip
    capsys.readouterr()
    rc = main([*argv, "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0, err
    assert Q in err and "without its scale" in err, err
    assert list(out.iterdir()) == []


# ---- GGUF: block types read as float32 dequantized values, labelled --------------------------
def test_gguf_rank_dynamics_overlap_accept_and_label(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    from gguf import GGMLQuantizationType as GQ
    from gguf import quants

    from .test_gguf import reference, write_gguf

    rng = np.random.default_rng(5)
    w = {"blk.0.attn_q.weight": rng.standard_normal((8, 64)).astype(np.float32)}
    w["blk.0.ffn_up.weight"] = rng.standard_normal((6, 96)).astype(np.float32)
    series, floats = [], []
    for k in range(3):
        tensors: dict[str, tuple[np.ndarray, GQ]] = {}
        plain = {}
        for name, a in w.items():
            a = a.copy()
            a[k, : 10 * k] += 0.5  # a few blocks requantized per step
            qtype = GQ.Q8_0 if "attn" in name else GQ.Q4_0
            raw = quants.quantize(a, qtype)
            tensors[name] = (raw, qtype)
            ts = gguf.GGML_QUANT_SIZES[qtype][1]
            plain[name] = torch.from_numpy(reference(raw.reshape(-1, ts), qtype).reshape(a.shape))
        norm = np.ones(64, np.float32)
        norm[:k] = 2
        tensors["blk.0.attn_norm.weight"] = (norm, GQ.F32)
        plain["blk.0.attn_norm.weight"] = torch.from_numpy(norm)
        series.append(tmp_path / f"m{k}.gguf")
        write_gguf(series[-1], tensors)
        floats.append(save_hf(tmp_path / f"f{k}", plain))
    schemes = {"blk.0.attn_q.weight": "gguf:Q8_0", "blk.0.ffn_up.weight": "gguf:Q4_0"}
    got, want = _rank(series[0], series[2]), _rank(floats[0], floats[2])
    by_name = {m["name"]: m for m in want.matrices}
    assert sorted(by_name) == sorted(m["name"] for m in got.matrices)
    for g in got.matrices:
        r = by_name[g["name"]]
        assert all(g[key] == r[key] for key in _NUMBERS + _FLOATS), g["name"]
        s = schemes.get(g["name"])
        assert g["quant"] == ({"base": s, "tuned": s} if s else None)
    dyn, ref = (
        sparsity_dynamics(p[0], p[1:], labels=["a", "b"], chunk_elems=CHUNK, progress=False)
        for p in (series, floats)
    )
    d, r = dyn.to_dict(), ref.to_dict()
    assert d.pop("provenance")["dequantized"] == {n: [s] * 3 for n, s in schemes.items()}
    r.pop("provenance")
    _same_stats(d.pop("stats"), r.pop("stats"))
    assert sorted(d.pop("tensors"), key=_name) == sorted(r.pop("tensors"), key=_name)
    assert d == r
    masks = [tmp_path / "a.mask", tmp_path / "b.mask"]
    for j, m in enumerate(masks, start=1):
        build_mask(series[0], series[j], m, progress=False)
    ov = count_overlaps(masks, base=series[0], chunk_elems=CHUNK, progress=False)
    ov_ref = count_overlaps(masks, base=floats[0], chunk_elems=CHUNK, progress=False)
    assert np.array_equal(ov.binade_expected, ov_ref.binade_expected)
    by_scheme = ov.provenance["base_dequantized"]
    assert {s: sorted(v) for s, v in by_scheme.items()} == {s: [n] for n, s in schemes.items()}
