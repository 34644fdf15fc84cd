"""TRL ``sparse_weight_patch`` and vLLM ``(name, flat indices, values)`` forms: round trips bit
for bit, cross-checked against indices and values computed naively from whole tensors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from rlsparse_lib.cli import main
from rlsparse_lib.patches import PatchError, apply_patch, create_patch, read_patch
from rlsparse_lib.patches.interop import (
    export_patch,
    gap_delta_decode,
    gap_delta_encode,
    import_patch,
    vllm_weight_patches,
)
from tests import test_patches
from tests.test_patches import _assert_same, _bf16, _nudge, _write

pair = test_patches.pair


def _flat_words(t: torch.Tensor) -> np.ndarray:
    w = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.reshape(-1).view(w).numpy()


@pytest.fixture()
def bf16_pair(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(11)
    a, b = _bf16(rng, 300 * 70), _bf16(rng, 5000)
    base = _write(
        tmp_path / "b", {"l.w": ("bfloat16", (300, 70), a), "e": ("bfloat16", (5000,), b)}
    )
    tuned = _write(
        tmp_path / "t",
        {
            "l.w": ("bfloat16", (300, 70), _nudge(rng, a, 0.02)),
            "e": ("bfloat16", (5000,), _nudge(rng, b, 0.3)),
        },
    )
    return base, tuned


@pytest.mark.parametrize("encoding", ["raw", "gap_delta"])
def test_ours_trl_ours_bit_exact(pair, tmp_path: Path, encoding: str) -> None:
    base, tuned, _ = pair
    p1 = tmp_path / "p.rlpatch"
    create_patch(base, tuned, p1, chunk=1000)
    trl = tmp_path / "p.safetensors"
    export_patch(base, p1, trl, "trl", encoding)
    with safe_open(trl, "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "sparse_weight_patch" and meta["encoding"] == encoding
    # naive reference: every changed flat index and its new value, from whole tensors
    got = load_file(trl)
    b_all, t_all = load_file(base / "model.safetensors"), load_file(tuned / "model.safetensors")
    n_changed = 0
    for name, t in t_all.items():
        b = b_all.get(name)
        if b is None or b.shape != t.shape:
            assert torch.equal(got[name].view(torch.uint8), t.view(torch.uint8)), name
            n_changed += t.numel()
            continue
        want = np.flatnonzero(_flat_words(b) != _flat_words(t))
        if not want.size:
            assert f"{name}.idx" not in got
            continue
        idx = got[f"{name}.idx"].numpy()
        pos = gap_delta_decode(idx) if encoding == "gap_delta" else idx
        assert idx.dtype == (np.int32 if encoding == "raw" else np.uint16)
        assert np.array_equal(pos, want), name
        assert got[f"{name}.val"].dtype == t.dtype
        assert np.array_equal(_flat_words(got[f"{name}.val"]), _flat_words(t)[want]), name
        n_changed += want.size
    assert int(meta["total_changed_elements"]) == n_changed
    p2 = tmp_path / "back.rlpatch"
    import_patch(base, trl, p2)
    m1, m2 = read_patch(p1).manifest, read_patch(p2).manifest
    for key in ("tensors", "base", "removed", "xform", "chunk"):
        assert m1[key] == m2[key], key
    apply_patch(base, p2, tmp_path / "out")
    _assert_same(tmp_path / "out", tuned)


def test_gap_delta_width() -> None:
    pos = np.array([0, 5, 70000, 70001], np.int64)
    assert gap_delta_encode(pos).dtype == np.uint32
    assert gap_delta_encode(pos[:2]).dtype == np.uint16
    assert np.array_equal(gap_delta_decode(gap_delta_encode(pos)), pos)


def test_import_file_written_like_trl(bf16_pair, tmp_path: Path) -> None:
    """A patch written the way TRL's AsyncGRPO does (no rlsparse metadata) imports and applies."""
    base, tuned = bf16_pair
    b_all, t_all = load_file(base / "model.safetensors"), load_file(tuned / "model.safetensors")
    tensors = {}
    for name, t in t_all.items():
        pos = np.flatnonzero(_flat_words(b_all[name]) != _flat_words(t))
        gaps = np.diff(pos, prepend=-1) - 1
        tensors[f"{name}.idx"] = torch.from_numpy(gaps.astype(np.uint16))
        tensors[f"{name}.val"] = t.reshape(-1)[torch.from_numpy(pos)].clone()
    meta = {"format": "sparse_weight_patch", "version": "1", "sparse": "True"}
    meta["encoding"] = "gap_delta"
    save_file(tensors, tmp_path / "trl.safetensors", metadata=meta)
    assert (
        main(
            [
                "patch",
                "import",
                str(base),
                str(tmp_path / "trl.safetensors"),
                "-o",
                str(tmp_path / "p"),
            ]
        )
        == 0
    )
    apply_patch(base, tmp_path / "p", tmp_path / "out")
    _assert_same(tmp_path / "out", tuned)


def _save_like(src: Path, dst: Path, edit) -> None:
    with safe_open(src, "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    edit(tensors, meta)
    save_file(tensors, dst, metadata=meta)


def _refused(base: Path, src: Path, out: Path, *words: str) -> None:
    with pytest.raises(PatchError) as err:
        import_patch(base, src, out)
    for w in words:
        assert w in str(err.value)
    assert not out.exists()
    assert main(["patch", "import", str(base), str(src), "-o", str(out)]) == 2
    assert not out.exists()


def test_import_refuses_by_tensor_name(bf16_pair, tmp_path: Path) -> None:
    base, tuned = bf16_pair
    create_patch(base, tuned, tmp_path / "p.rlpatch")
    good = tmp_path / "good.safetensors"
    export_patch(base, tmp_path / "p.rlpatch", good, "trl")
    out = tmp_path / "x.rlpatch"

    def flip_value(t, m):
        t["e.val"] = t["e.val"].clone()
        t["e.val"].view(torch.int16)[3] ^= 1

    _save_like(good, tmp_path / "v.safetensors", flip_value)
    _refused(base, tmp_path / "v.safetensors", out, "'e'", "corrupt")

    def unsorted(t, m):
        t["l.w.idx"] = t["l.w.idx"].flip(0).clone()

    _save_like(good, tmp_path / "u.safetensors", unsorted)
    _refused(base, tmp_path / "u.safetensors", out, "'l.w'", "ascending")

    def beyond(t, m):
        t["e.idx"] = t["e.idx"].clone()
        t["e.idx"][-1] = 5000

    _save_like(good, tmp_path / "r.safetensors", beyond)
    _refused(base, tmp_path / "r.safetensors", out, "'e'", "[0, 5000)")

    def as_fp32(t, m):
        t["e.val"] = t["e.val"].float()

    _save_like(good, tmp_path / "d.safetensors", as_fp32)
    _refused(base, tmp_path / "d.safetensors", out, "'e'", "float32")

    def other_format(t, m):
        m["format"] = "pt"

    _save_like(good, tmp_path / "f.safetensors", other_format)
    _refused(base, tmp_path / "f.safetensors", out, "sparse_weight_patch")
    # the fingerprints carried in the metadata refuse a wrong base
    other = load_file(base / "model.safetensors")
    other["l.w"] = other["l.w"].clone()
    other["l.w"].view(torch.int16)[0, 0] ^= 4
    (tmp_path / "other").mkdir()
    save_file(other, tmp_path / "other" / "model.safetensors")
    _refused(tmp_path / "other", good, out, "'l.w'", "wrong base")


def test_vllm_iterable_matches_naive(bf16_pair, tmp_path: Path) -> None:
    base, tuned = bf16_pair
    create_patch(base, tuned, tmp_path / "p.rlpatch", chunk=4096)
    weights = {k: v.clone() for k, v in load_file(base / "model.safetensors").items()}
    t_all = load_file(tuned / "model.safetensors")
    seen = []
    for name, idx, vals in vllm_weight_patches(base, tmp_path / "p.rlpatch"):
        assert idx.dtype == torch.int32 and vals.dtype == torch.bfloat16
        want = np.flatnonzero(_flat_words(weights[name]) != _flat_words(t_all[name]))
        assert np.array_equal(idx.numpy(), want), name
        weights[name].view(-1).index_copy_(0, idx.long(), vals)  # what vLLM's loader does
        seen.append(name)
    assert sorted(seen) == ["e", "l.w"]
    for name, t in t_all.items():
        assert torch.equal(weights[name].view(torch.int16), t.view(torch.int16)), name


def test_vllm_file_round_trip_and_refusal(pair, bf16_pair, tmp_path: Path) -> None:
    base, tuned = bf16_pair
    p = tmp_path / "p.rlpatch"
    create_patch(base, tuned, p)
    f = tmp_path / "v.safetensors"
    assert main(["patch", "export", str(base), str(p), "--format", "vllm", "-o", str(f)]) == 0
    with safe_open(f, "pt") as fh:
        assert json.loads(fh.metadata()["shapes"]) == {"l.w": [300, 70], "e": [5000]}
        assert sorted(fh.keys()) == ["e.indices", "e.values", "l.w.indices", "l.w.values"]
    assert main(["patch", "import", str(base), str(f), "-o", str(tmp_path / "q")]) == 0
    apply_patch(base, tmp_path / "q", tmp_path / "out")
    _assert_same(tmp_path / "out", tuned)
    # a patch adding / reshaping / removing tensors has no vLLM form
    b2, t2, _ = pair
    create_patch(b2, t2, tmp_path / "odd.rlpatch")
    with pytest.raises(PatchError, match="not expressible"):
        export_patch(b2, tmp_path / "odd.rlpatch", tmp_path / "o.safetensors", "vllm")
    with pytest.raises(PatchError, match="not expressible"):
        list(vllm_weight_patches(b2, tmp_path / "odd.rlpatch"))
    assert not (tmp_path / "o.safetensors").exists()
