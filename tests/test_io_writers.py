"""Streaming writers and readers: atomicity, ordering, unaligned data, mask metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from rlsparse_lib.diff.engine import diff_checkpoints
from rlsparse_lib.io.checkpoint import SafetensorsWriter, open_checkpoint
from rlsparse_lib.io.maskfile import MaskFile, MaskWriter, pack_mask, unpack_mask


def test_writer_output_loads_with_safetensors(tmp_path: Path) -> None:
    a = np.arange(10, dtype=np.uint16)
    b = np.arange(6, dtype=np.float32).reshape(2, 3)
    with SafetensorsWriter(
        tmp_path / "x.safetensors", [("a", "uint16", (10,)), ("b", "float32", (2, 3))], {"k": "v"}
    ) as w:
        w.write("a", a[:4])
        w.write("a", a[4:])
        w.write("b", b)
    loaded = load_file(tmp_path / "x.safetensors")
    np.testing.assert_array_equal(loaded["a"], a)
    np.testing.assert_array_equal(loaded["b"], b)


def test_writer_is_atomic(tmp_path: Path) -> None:
    target = tmp_path / "x.safetensors"
    specs = [("a", "uint8", (4,)), ("b", "uint8", (4,))]
    with (
        pytest.raises(ValueError, match="expected data for tensor 'a'"),
        SafetensorsWriter(target, specs) as w,
    ):
        w.write("b", np.zeros(4, np.uint8))
    assert list(tmp_path.iterdir()) == []
    with (
        pytest.raises(ValueError, match="was not written completely"),
        SafetensorsWriter(target, specs[:1]) as w,
    ):
        w.write("a", np.zeros(2, np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_unaligned_tensor_data_is_read_correctly(tmp_path: Path) -> None:
    """A 3-byte bool tensor before bf16 data leaves the bf16 words at an odd offset."""
    rng = np.random.default_rng(0)
    words_a = rng.integers(0, 2**15, 1001, dtype=np.uint16)
    words_b = words_a.copy()
    words_b[::10] += 1
    for name, w in (("base", words_a), ("tuned", words_b)):
        folder = tmp_path / name
        folder.mkdir()
        specs = [("flags", "bool", (3,)), ("w", "bfloat16", (1001,))]
        with SafetensorsWriter(folder / "model.safetensors", specs) as wr:
            wr.write("flags", np.ones(3, np.uint8))
            wr.write("w", w)
    ck = open_checkpoint(tmp_path / "base")
    assert ck.tensors["w"].offset % 2 == 1
    rep = diff_checkpoints(tmp_path / "base", tmp_path / "tuned", progress=False)
    assert rep.tensors[0].n_changed == int((words_a != words_b).sum())
    assert rep.buffers[0].name == "flags" and rep.buffers[0].n_changed == 0


def test_pack_roundtrip() -> None:
    m = np.random.default_rng(1).random((7, 13)) < 0.3
    np.testing.assert_array_equal(unpack_mask(pack_mask(m), m.shape), m)


def test_mask_metadata_fits_for_many_long_names(tmp_path: Path) -> None:
    shapes = {
        f"model.layers.{i}.a_rather_long_module_name.with_more_parts.weight": (3, 5)
        for i in range(400)
    }
    rng = np.random.default_rng(2)
    masks = {n: rng.random(s) < 0.5 for n, s in shapes.items()}
    with MaskWriter(
        tmp_path / "m.safetensors", shapes, {"kind": "bitwise", "tol": 0.0}, {"base": {}}
    ) as w:
        for n, m in masks.items():
            w.write(n, pack_mask(m))
    with MaskFile.open(tmp_path / "m.safetensors") as mf:
        assert mf.meta["n_set"] == {n: int(m.sum()) for n, m in masks.items()}
        assert mf.density == pytest.approx(sum(int(m.sum()) for m in masks.values()) / (400 * 15))
        name = next(iter(shapes))
        np.testing.assert_array_equal(mf.mask(name), masks[name])


def test_mask_file_errors(tmp_path: Path) -> None:
    from rlsparse_lib.errors import CheckpointError

    with pytest.raises(CheckpointError, match="no such mask file"):
        MaskFile.open(tmp_path / "none.safetensors")
    with SafetensorsWriter(tmp_path / "plain.safetensors", [("a", "uint8", (1,))]) as w:
        w.write("a", np.zeros(1, np.uint8))
    with pytest.raises(CheckpointError, match="not an rlsparse mask file"):
        MaskFile.open(tmp_path / "plain.safetensors")
