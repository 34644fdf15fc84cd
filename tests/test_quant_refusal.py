"""Never a silent partial headline (issue 12, item 1): quantized / low-precision weights are refused
by name unless excluded, the newer safetensors dtype codes parse with their bit widths, and every
report states which share of the model's elements its headline covers."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
import torch

from rlsparse_lib.cli import main
from rlsparse_lib.diff.config import DiffConfig
from rlsparse_lib.diff.engine import diff_checkpoints
from rlsparse_lib.diff.report import DiffReport, format_summary
from rlsparse_lib.errors import QuantizedWeightsError
from rlsparse_lib.io.checkpoint import open_checkpoint
from rlsparse_lib.io.pairing import pair_checkpoints

from .ckpt_factory import TINY, random_state, save_hf

W = "model.layers.0.mlp.down_proj.weight"
S = W + "_scale_inv"
NORM = "model.layers.0.input_layernorm.weight"
STEP = "model.step_counter"
FP8_CONFIG = {
    "model_type": "deepseek_v3",
    "quantization_config": {
        "quant_method": "fp8",
        "fmt": "e4m3",
        "weight_block_size": [128, 128],
        "activation_scheme": "dynamic",
    },
}


def _fp8_state(seed: int, changed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    norm = (1 + 0.05 * torch.randn(64, generator=g)).to(torch.bfloat16)
    if changed:
        norm[:changed] = (norm[:changed].float() + 0.5).to(torch.bfloat16)
    return {
        # E5M2 codes: a scheme rlsparse does not decode (E4M3 block scales are decoded)
        W: (0.02 * torch.randn(256, 128, generator=g)).to(torch.float8_e5m2),
        S: torch.rand(2, 1, generator=g) + 0.5,
        NORM: norm,
        STEP: torch.tensor([7, 11], dtype=torch.int64),
    }


@pytest.fixture
def fp8_pair(tmp_path: Path) -> tuple[Path, Path]:
    b = save_hf(tmp_path / "base", _fp8_state(0), config=FP8_CONFIG)
    t = save_hf(tmp_path / "tuned", _fp8_state(0, changed=5), config=FP8_CONFIG)
    return b, t


def test_deepseek_shaped_fp8_pair_is_refused_by_name(tmp_path: Path, fp8_pair, capsys) -> None:
    b, t = fp8_pair
    report = tmp_path / "out" / "r.json"
    report.parent.mkdir()
    rc = main(["diff", str(b), str(t), "--json", str(report), "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.count("\n") == 0 and err.startswith("rlsparse diff: error: "), err
    assert W in err and S in err
    assert "F8_E5M2 weights with block scales" in err
    assert "quant_method=fp8" in err and "--exclude" in err
    assert NORM not in err and STEP not in err  # the bf16 norm and the int64 buffer are fine
    assert list(report.parent.iterdir()) == []
    with pytest.raises(QuantizedWeightsError, match="2 tensor"):
        pair_checkpoints(open_checkpoint(b), open_checkpoint(t))


def test_excluding_the_fp8_tensors_runs_and_states_coverage(
    tmp_path: Path, fp8_pair, capsys
) -> None:
    b, t = fp8_pair
    out = tmp_path / "r.json"
    rc = main(
        ["diff", str(b), str(t), "--exclude", "down_proj", "--json", str(out), "--by", "none"]
    )
    printed = capsys.readouterr().out
    assert rc == 0
    data = json.loads(out.read_text())
    state = _fp8_state(0)
    n_all = sum(v.numel() for v in state.values())  # independent count: every element once
    n_bf16 = state[NORM].numel()
    cov = data["coverage"]
    assert cov["n_elements_total"] == n_all
    assert cov["n_elements_headline"] == n_bf16 == data["n_params"]
    assert cov["share"] == pytest.approx(n_bf16 / n_all)
    assert cov["excluded"] == {"n_tensors": 2, "n_elements": state[W].numel() + state[S].numel()}
    assert cov["buffers"] == {"n_tensors": 1, "n_elements": 2}
    assert data["n_changed"] == 5
    first = printed.splitlines()[0]
    assert n_all >= 10**4
    share = f"{100 * n_bf16 / n_all:.1f} %"
    assert first.startswith(f"headline covers {share} of {n_all / 1e3:.1f} K elements ("), first
    assert "excluded by --include/--exclude" in first and "buffers" in first


def test_each_new_dtype_code_parses_with_its_byte_size(tmp_path: Path) -> None:
    bits = {"F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}
    shapes = {"a": [3, 5], "b": [7], "c": [1]}
    for code, width in bits.items():
        header, offset = {}, 0
        for name, shape in shapes.items():
            nbytes = math.ceil(math.prod(shape) * width / 8)
            header[name] = {
                "dtype": code,
                "shape": shape,
                "data_offsets": [offset, offset + nbytes],
            }
            offset += nbytes
        raw = json.dumps(header).encode()
        path = tmp_path / f"{code}.safetensors"
        path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))
        ckpt = open_checkpoint(path)
        for name, shape in shapes.items():
            info = ckpt.tensors[name]
            assert info.shape == tuple(shape)
            assert info.nbytes == math.ceil(math.prod(shape) * width / 8), (code, name)
        assert ckpt.nbytes == offset
        with pytest.raises(QuantizedWeightsError, match=code):
            pair_checkpoints(ckpt, ckpt)
        # a span of numel * 1 byte is wrong for packed sub-byte codes
        if width < 8:
            header["a"]["data_offsets"] = [0, 15]
            raw = json.dumps(header).encode()
            path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset + 15))
            with pytest.raises(Exception, match="needs"):
                open_checkpoint(path)


def test_torch_float8_e8m0_file_opens_and_is_refused(tmp_path: Path) -> None:
    state = {"x.weight": torch.ones(4, 4).to(torch.float8_e8m0fnu), "n.weight": torch.ones(4)}
    p = save_hf(tmp_path / "m", state)
    ckpt = open_checkpoint(p)
    assert ckpt.tensors["x.weight"].dtype == "float8_e8m0fnu"
    with pytest.raises(QuantizedWeightsError, match="F8_E8M0 weight codes"):
        pair_checkpoints(ckpt, ckpt)
    plan = pair_checkpoints(ckpt, ckpt, exclude=(r"^x\.",))
    assert [p.name for p in plan.pairs] == ["n.weight"]


def test_mxfp4_and_quantization_config_refused_integer_buffers_kept(tmp_path: Path) -> None:
    mx = {
        "e.gate_up_proj_blocks": torch.zeros(4, 16, dtype=torch.uint8),
        "e.gate_up_proj_scales": torch.zeros(4, 1, dtype=torch.uint8),
        "n.weight": torch.ones(4),
    }
    ck = open_checkpoint(save_hf(tmp_path / "mx", mx))
    with pytest.raises(QuantizedWeightsError, match="MXFP4"):
        pair_checkpoints(ck, ck)
    gptq = {
        "l.qweight": torch.zeros(4, 4, dtype=torch.int32),
        "l.scales": torch.ones(1, 4, dtype=torch.float16),
        "n.weight": torch.ones(4),
        "position_ids": torch.arange(8),
    }
    cfg = {"quantization_config": {"quant_method": "gptq", "bits": 4}}
    ck = open_checkpoint(save_hf(tmp_path / "gptq", gptq, config=cfg))
    with pytest.raises(QuantizedWeightsError, match="quant_method=gptq") as err:
        pair_checkpoints(ck, ck)
    assert "l.qweight" in str(err.value) and "position_ids" not in str(err.value)
    plan = pair_checkpoints(ck, ck, exclude=(r"^l\.",))
    kinds = {p.name: p.kind for p in plan.pairs}
    assert kinds == {"n.weight": "float", "position_ids": "bitwise"}
    # integer buffers without any quantization are compared bitwise, as before
    plain = {"n.weight": torch.ones(4), "mask": torch.ones(3, dtype=torch.bool)}
    ck = open_checkpoint(save_hf(tmp_path / "plain", plain))
    assert {p.name: p.kind for p in pair_checkpoints(ck, ck).pairs} == {
        "n.weight": "float",
        "mask": "bitwise",
    }


def test_many_refused_tensors_named_first_few_plus_count(tmp_path: Path) -> None:
    state = {f"l{i}.weight": torch.zeros(2, 2).to(torch.float8_e5m2) for i in range(6)}
    state["n.weight"] = torch.ones(2)
    ck = open_checkpoint(save_hf(tmp_path / "m", state))
    with pytest.raises(QuantizedWeightsError) as err:
        pair_checkpoints(ck, ck)
    msg = str(err.value)
    assert (
        "6 tensor(s)" in msg and "l0.weight" in msg and "3 more" in msg and "l5.weight" not in msg
    )


def test_plain_bf16_pair_covers_100_percent_and_old_json_loads(tmp_path: Path) -> None:
    state = random_state(TINY)
    b = save_hf(tmp_path / "b", state)
    t = save_hf(tmp_path / "t", {k: v.clone() for k, v in state.items()})
    report = diff_checkpoints(b, t, DiffConfig(), progress=False)
    cov = report.to_dict()["coverage"]
    n_all = sum(v.numel() for v in state.values())
    assert cov["share"] == 1.0 and cov["n_elements_total"] == n_all
    assert format_summary(report).splitlines()[0] == (
        f"headline covers 100.0 % of {n_all / 1e3:.1f} K elements"
        if n_all >= 10**4
        else f"headline covers 100.0 % of {n_all:,} elements"
    )
    old = report.to_dict()
    del old["coverage"]  # a report saved before the key existed
    loaded = DiffReport.from_dict(json.loads(json.dumps(old)))
    assert loaded.coverage() == cov
