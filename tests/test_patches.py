"""Sparse patches: bit-exact round trips, refusals by tensor name, codec size per changed element."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rlsparse_lib.cli import main
from rlsparse_lib.io.checkpoint import SafetensorsWriter
from rlsparse_lib.io.dtypes import word_dtype
from rlsparse_lib.patches import PatchError, apply_patch, create_patch
from rlsparse_lib.patches.codec import encode_block, varint_decode, varint_encode

Spec = dict[str, tuple[str, tuple[int, ...], np.ndarray]]


def _write(folder: Path, tensors: Spec, config: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    specs = [(n, d, s) for n, (d, s, _) in tensors.items()]
    with SafetensorsWriter(folder / "model.safetensors", specs) as w:
        for n, (_, _, words) in tensors.items():
            if words.size:
                w.write(n, words)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def _words(rng: np.random.Generator, dtype: str, n: int) -> np.ndarray:
    word = word_dtype(dtype)
    return rng.integers(0, np.iinfo(word).max, n, dtype=word, endpoint=True)


def _nudge(rng: np.random.Generator, words: np.ndarray, p: float) -> np.ndarray:
    """A few ULP up or down at a random fraction ``p`` of the positions (as a GRPO step does)."""
    out = words.copy()
    pos = rng.choice(words.size, round(words.size * p), replace=False)
    step = rng.integers(1, 4, pos.size) * rng.choice([-1, 1], pos.size)
    out[pos] = (out[pos].astype(np.int64) + step).astype(words.dtype)
    return out


def _bf16(rng: np.random.Generator, n: int) -> np.ndarray:
    f = (rng.standard_normal(n, dtype=np.float32) * 0.02).view(np.uint32)
    return ((f + 0x8000) >> 16).astype(np.uint16)


@pytest.fixture()
def pair(tmp_path: Path) -> tuple[Path, Path, dict]:
    rng = np.random.default_rng(7)
    w = _bf16(rng, 64 * 96)
    f32 = _words(rng, "float32", 1000)
    ints = _words(rng, "int64", 33)
    flags = _words(rng, "bool", 40) & np.uint8(1)
    same = _bf16(rng, 500)
    reshaped = _bf16(rng, 24)
    base = {
        "w": ("bfloat16", (64, 96), w),
        "f32": ("float32", (10, 100), f32),
        "ints": ("int64", (33,), ints),
        "flags": ("bool", (40,), flags),
        "same": ("bfloat16", (500,), same),
        "empty": ("float32", (0, 4), np.zeros(0, np.uint32)),
        "gone": ("float16", (7,), _words(rng, "float16", 7)),
        "reshaped": ("bfloat16", (4, 6), reshaped),
        "scalar": ("float32", (), _words(rng, "float32", 1)),
    }
    tuned = dict(base)
    del tuned["gone"]
    tuned["w"] = ("bfloat16", (64, 96), _nudge(rng, w, 0.05))
    tuned["f32"] = ("float32", (10, 100), _nudge(rng, f32, 0.3))
    tuned["ints"] = ("int64", (33,), _nudge(rng, ints, 0.1))
    tuned["flags"] = ("bool", (40,), flags ^ (rng.random(40) < 0.2).astype(np.uint8))
    tuned["reshaped"] = ("bfloat16", (6, 4), reshaped)
    tuned["added"] = ("int32", (5, 3), _words(rng, "int32", 15))
    tuned["scalar"] = ("float32", (), _nudge(rng, base["scalar"][2], 1.0))
    b = _write(tmp_path / "base", base, {"model_type": "llama", "torch_dtype": "bfloat16"})
    t = _write(tmp_path / "tuned", tuned, {"model_type": "llama", "torch_dtype": "float32"})
    (t / "tokenizer_config.json").write_text("{}")
    return b, t, tuned


def _assert_same(out: Path, tuned: Path) -> None:
    got, want = load_file(out / "model.safetensors"), load_file(tuned / "model.safetensors")
    assert list(got) == list(want) or sorted(got) == sorted(want)
    assert set(got) == set(want)
    for name, w in want.items():
        g = got[name]
        assert (g.dtype, g.shape) == (w.dtype, w.shape), name
        assert bytes(g.reshape(-1).view(torch.uint8).numpy()) == bytes(
            w.reshape(-1).view(torch.uint8).numpy()
        ), name


@pytest.mark.parametrize("xform", ["sub", "xor"])
def test_round_trip_bit_exact(pair, tmp_path: Path, xform: str) -> None:
    base, tuned, _ = pair
    summary = create_patch(base, tuned, tmp_path / "p.rlpatch", xform=xform, chunk=1000)
    assert summary["tensors_removed"] == 1 and summary["tensors_whole"] == 2
    apply_patch(base, tmp_path / "p.rlpatch", tmp_path / "out")
    _assert_same(tmp_path / "out", tuned)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == "float32"
    assert (tmp_path / "out" / "tokenizer_config.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "out", "p.rlpatch", "tuned"]


def test_cli_round_trip(pair, tmp_path: Path, capsys) -> None:
    base, tuned, _ = pair
    patch, out = tmp_path / "p.rlpatch", tmp_path / "out"
    assert main(["patch", "create", str(base), str(tuned), "-o", str(patch)]) == 0
    assert "per changed element" in capsys.readouterr().out
    assert main(["patch", "apply", str(base), str(patch), "-o", str(out)]) == 0
    _assert_same(out, tuned)


def _refused(base: Path, patch: Path, out: Path, *words: str) -> None:
    with pytest.raises(PatchError) as err:
        apply_patch(base, patch, out)
    for w in words:
        assert w in str(err.value)
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    assert main(["patch", "apply", str(base), str(patch), "-o", str(out)]) == 2
    assert not out.exists()


def test_wrong_base_refused_by_name(pair, tmp_path: Path) -> None:
    base, tuned, _ = pair
    create_patch(base, tuned, tmp_path / "p.rlpatch")
    other = load_file(base / "model.safetensors")
    other["f32"] = other["f32"].clone()
    other["f32"].view(torch.int32)[3, 7] ^= 1
    from safetensors.torch import save_file

    (tmp_path / "other").mkdir()
    save_file(other, tmp_path / "other" / "model.safetensors")
    _refused(tmp_path / "other", tmp_path / "p.rlpatch", tmp_path / "out", "'f32'", "wrong base")
    # a base missing a tensor, or with another shape, is refused before any work
    del other["gone"]
    save_file(other, tmp_path / "other" / "model.safetensors")
    _refused(tmp_path / "other", tmp_path / "p.rlpatch", tmp_path / "out", "'gone'")


def test_truncated_and_flipped_patch_refused(pair, tmp_path: Path) -> None:
    base, tuned, _ = pair
    good = tmp_path / "p.rlpatch"
    create_patch(base, tuned, good)
    raw = good.read_bytes()
    cut = tmp_path / "cut.rlpatch"
    cut.write_bytes(raw[: len(raw) - 50])
    _refused(base, cut, tmp_path / "out", "truncated")
    head = tmp_path / "head.rlpatch"
    head.write_bytes(raw[:30])
    _refused(base, head, tmp_path / "out", "truncated")
    for at in (60, len(raw) // 2, len(raw) - 3):  # manifest, a tensor block, the last file
        bad = tmp_path / "bad.rlpatch"
        flipped = bytearray(raw)
        flipped[at] ^= 0x10
        bad.write_bytes(bytes(flipped))
        _refused(base, bad, tmp_path / "out", "corrupt")


def test_flipped_block_names_tensor(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    a = _bf16(rng, 4096)
    base = _write(tmp_path / "b", {"only.weight": ("bfloat16", (4096,), a)})
    tuned = _write(tmp_path / "t", {"only.weight": ("bfloat16", (4096,), _nudge(rng, a, 0.1))})
    create_patch(base, tuned, tmp_path / "p.rlpatch")
    raw = bytearray((tmp_path / "p.rlpatch").read_bytes())
    (tmp_path / "cut.rlpatch").write_bytes(bytes(raw[:-5]))
    _refused(base, tmp_path / "cut.rlpatch", tmp_path / "out", "'only.weight'", "truncated")
    raw[-5] ^= 1
    (tmp_path / "p.rlpatch").write_bytes(bytes(raw))
    _refused(base, tmp_path / "p.rlpatch", tmp_path / "out", "'only.weight'", "corrupt")


def test_existing_output_refused(pair, tmp_path: Path) -> None:
    base, tuned, _ = pair
    create_patch(base, tuned, tmp_path / "p.rlpatch")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("x")
    assert (
        main(
            ["patch", "apply", str(base), str(tmp_path / "p.rlpatch"), "-o", str(tmp_path / "out")]
        )
        == 2
    )
    assert (tmp_path / "out" / "keep").read_text() == "x"


def test_varint_round_trip() -> None:
    v = np.array([0, 1, 127, 128, 16383, 16384, 2**40, 2**63 - 1], np.uint64)
    assert np.array_equal(varint_decode(varint_encode(v), v.size), v)
    with pytest.raises(ValueError):
        varint_decode(varint_encode(v)[:-1], v.size)


@pytest.mark.parametrize("density", [0.01, 0.15])
def test_codec_size_per_changed_element(density: float) -> None:
    """The codec's design target: at most 2.0 bytes per changed bf16 element (seeded, 4M)."""
    import zstandard as zstd

    rng = np.random.default_rng(0)
    base = _bf16(rng, 1 << 22)
    tuned = _nudge(rng, base, density)
    k, _, idx, vals = encode_block(base, tuned, "sub", zstd.ZstdCompressor(level=3))
    assert k == int((base != tuned).sum())
    assert (len(idx) + len(vals)) / k <= 2.0
