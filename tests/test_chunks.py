"""The one chunk stream (io/chunks.py), the byte-progress helper and open_checkpoint's pass-through."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlsparse_lib import progress
from rlsparse_lib.io.checkpoint import open_checkpoint
from rlsparse_lib.io.chunks import Chunk, pair_chunks, stream_chunks
from rlsparse_lib.io.dtypes import cast_words
from rlsparse_lib.io.maskfile import MaskFile, MaskWriter, pack_mask
from rlsparse_lib.io.pairing import pair_checkpoints
from rlsparse_lib.progress import NullBar, byte_progress
from tests.ckpt_factory import random_state, save_hf


class FakeReader:
    """A word source over in-memory flat arrays that records every call, in order."""

    def __init__(self, arrays: dict[str, np.ndarray], log: list | None = None, tag: str = "r"):
        self.arrays = arrays
        self.log = [] if log is None else log
        self.tag = tag

    def words(self, name: str, start: int, stop: int) -> np.ndarray:
        self.log.append((self.tag, "words", name, start, stop))
        return self.arrays[name][start:stop]

    def prefetch(self, name: str, start: int, stop: int) -> None:
        self.log.append((self.tag, "prefetch", name, start, stop))

    def release(self, name: str, start: int, stop: int) -> None:
        self.log.append((self.tag, "release", name, start, stop))

    def calls(self, kind: str) -> list[tuple[int, int]]:
        return [(c[3], c[4]) for c in self.log if c[0] == self.tag and c[1] == kind]


def _ranges(numel: int, step: int) -> list[tuple[int, int]]:
    return [(s, min(numel, s + step)) for s in range(0, numel, step)]


@pytest.mark.parametrize("numel", [1, 7, 8, 9, 64, 100, 1001])
@pytest.mark.parametrize("step", [1, 8, 13, 64, 4096])
def test_chunks_cover_every_element_once(numel: int, step: int) -> None:
    rng = np.random.default_rng(numel * 31 + step)
    a = rng.integers(0, 1 << 16, numel, dtype=np.uint16)
    b = rng.integers(0, 1 << 16, numel, dtype=np.uint16)
    ra, rb = FakeReader({"t": a}, tag="a"), FakeReader({"t": b}, tag="b")
    seen = np.zeros(numel, np.int64)
    got_a, got_b, ranges = [], [], []
    for chunk in stream_chunks("t", numel, [ra, rb], step):
        assert chunk.numel == chunk.stop - chunk.start == chunk.base.size == chunk.tuned.size
        seen[chunk.start : chunk.stop] += 1
        got_a.append(chunk.base.copy())
        got_b.append(chunk.tuned.copy())
        ranges.append((chunk.start, chunk.stop))
    assert (seen == 1).all()
    assert ranges == _ranges(numel, step)
    np.testing.assert_array_equal(np.concatenate(got_a), a)
    np.testing.assert_array_equal(np.concatenate(got_b), b)
    for r in (ra, rb):
        assert r.calls("words") == ranges
        assert r.calls("release") == ranges
        assert r.calls("prefetch") == ranges[1:]  # every chunk but the first, ahead of use


def test_prefetch_of_the_next_chunk_precedes_the_read() -> None:
    log: list = []
    r = FakeReader({"t": np.arange(20, dtype=np.uint32)}, log)
    list(stream_chunks("t", 20, [r], 8))
    kinds = [(c[1], c[3]) for c in log]
    assert kinds == [
        ("prefetch", 8),
        ("words", 0),
        ("release", 0),
        ("prefetch", 16),
        ("words", 8),
        ("release", 8),
        ("words", 16),
        ("release", 16),
    ]


def test_empty_tensor_yields_nothing_and_reads_nothing() -> None:
    log: list = []
    r = FakeReader({"t": np.zeros(0, np.uint16)}, log)
    calls: list[int] = []
    assert list(stream_chunks("t", 0, [r, r], 8, on_bytes=calls.append)) == []
    assert log == [] and calls == []


@pytest.mark.parametrize(
    ("stored", "compare", "word"),
    [
        ("float32", "bfloat16", np.uint32),
        ("float32", "float16", np.uint32),
        ("bfloat16", "float32", np.uint16),
        ("float16", "bfloat16", np.uint16),
        ("bfloat16", "bfloat16", np.uint16),
    ],
)
def test_casts_equal_cast_words_on_the_whole_tensor(stored, compare, word) -> None:
    rng = np.random.default_rng(0)
    n = 1037
    vals = torch.from_numpy(rng.standard_normal(n).astype(np.float32) * 3)
    vals[:6] = torch.tensor([0.0, -0.0, float("inf"), float("nan"), 1e-40, 65504.0 * 2])
    signed = {np.uint16: torch.int16, np.uint32: torch.int32}[word]
    words = vals.to(getattr(torch, stored)).view(signed).numpy().view(word)
    r = FakeReader({"t": words})
    parts, raws = [], []
    for chunk in stream_chunks("t", n, [r], 100, stored=[stored], compare=compare):
        parts.append(chunk.words[0].copy())
        raws.append(chunk.raw[0].copy())
    want = cast_words(words, stored, compare)
    got = np.concatenate(parts)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.concatenate(raws), words)


def test_no_cast_without_compare_and_mixed_sources() -> None:
    f32 = np.arange(16, dtype=np.float32).view(np.uint32)
    bits = np.arange(2, dtype=np.uint8)
    chunks = stream_chunks(
        "t", 16, [FakeReader({"t": f32}), FakeReader({"t": bits})], 16, stored=["float32", None]
    )
    chunk = next(chunks)
    assert chunk.words[0] is chunk.raw[0]  # raw words, no copy
    assert chunk.words[1].size == 2  # the second source is never cast
    chunks.close()
    with pytest.raises(ValueError, match="stored dtypes"):
        stream_chunks("t", 16, [FakeReader({"t": f32})], 8, compare="bfloat16")
    with pytest.raises(ValueError, match="positive"):
        stream_chunks("t", 16, [FakeReader({"t": f32})], 0)


def test_release_on_early_break() -> None:
    r = FakeReader({"t": np.arange(50, dtype=np.uint16)})
    for chunk in stream_chunks("t", 50, [r], 10):
        if chunk.start == 20:
            break
    assert r.calls("words") == [(0, 10), (10, 20), (20, 30)]
    assert r.calls("release") == [(0, 10), (10, 20), (20, 30)]


def test_release_on_exception_in_the_consumer() -> None:
    r = FakeReader({"t": np.arange(50, dtype=np.uint16)})
    bytes_done: list[int] = []

    def consume() -> None:
        for chunk in stream_chunks("t", 50, [r], 10, on_bytes=bytes_done.append):
            if chunk.start == 10:
                raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        consume()
    assert r.calls("release") == [(0, 10), (10, 20)]
    assert bytes_done == [20]  # only the chunk the consumer finished


def test_release_on_close_and_with_block() -> None:
    r = FakeReader({"t": np.arange(50, dtype=np.uint16)})
    with stream_chunks("t", 50, [r], 10) as chunks:
        first = next(chunks)
        assert first.start == 0
    assert r.calls("release") == [(0, 10)]
    stream = stream_chunks("t", 50, [r], 10)
    next(stream)
    next(stream)
    stream.close()
    stream.close()  # idempotent
    assert r.calls("release") == [(0, 10), (0, 10), (10, 20)]
    with pytest.raises(StopIteration):
        next(stream)


def test_a_chunk_is_dropped_once_the_next_is_requested() -> None:
    r = FakeReader({"t": np.arange(30, dtype=np.uint16)})
    stream = stream_chunks("t", 30, [r, r], 10)
    first: Chunk = next(stream)
    assert len(first.words) == 2
    second = next(stream)
    assert first.words == () and first.raw == ()  # no chunk outlives its release
    assert second.base[0] == 10
    stream.close()


@pytest.mark.parametrize(("numel", "step"), [(0, 8), (1, 8), (100, 7), (4096, 1000)])
def test_progress_bytes_sum_to_the_total(numel: int, step: int) -> None:
    a = np.zeros(numel, np.uint32)  # 4 bytes a word
    b = np.zeros(numel, np.uint16)  # 2 bytes a word
    log: list = []
    ra, rb = FakeReader({"t": a}, log, "a"), FakeReader({"t": b}, log, "b")
    calls: list[int] = []
    for _ in stream_chunks(
        "t",
        numel,
        [ra, rb],
        step,
        stored=["float32", "bfloat16"],
        compare="bfloat16",
        on_bytes=lambda n: (calls.append(n), log.append(("bar", n))),
    ):
        pass
    assert sum(calls) == numel * 6  # raw bytes, before the cast
    assert calls == [(stop - start) * 6 for start, stop in _ranges(numel, step)]
    # each chunk's bytes are reported after both sides released it
    for i, entry in enumerate(log):
        if entry[0] == "bar":
            assert [e[1] for e in log[i - 2 : i]] == ["release", "release"]


def _checkpoint_pair(tmp_path):
    base = random_state(dtype=torch.float32, seed=1)
    tuned = {k: (v + 1e-3).to(torch.bfloat16) for k, v in base.items()}
    return save_hf(tmp_path / "b", base), save_hf(tmp_path / "t", tuned)


def test_pair_chunks_on_real_checkpoints(tmp_path) -> None:
    b, t = _checkpoint_pair(tmp_path)
    plan = pair_checkpoints(open_checkpoint(b), open_checkpoint(t), "bfloat16")
    with plan.base.reader() as rb, plan.tuned.reader() as rt:
        for pair in plan.pairs:
            whole_b = cast_words(rb.words(pair.name, 0, pair.numel), "float32", "bfloat16")
            whole_t = rt.words(pair.name, 0, pair.numel)
            got_b, got_t, nbytes = [], [], []
            for c in pair_chunks(
                pair, rb, rt, 24, compare=pair.compare_dtype, on_bytes=nbytes.append
            ):
                got_b.append(c.base.copy())
                got_t.append(c.tuned.copy())
            np.testing.assert_array_equal(np.concatenate(got_b), whole_b)
            np.testing.assert_array_equal(np.concatenate(got_t), whole_t)
            assert sum(nbytes) == pair.numel * (4 + 2)


def test_mask_bits_source(tmp_path) -> None:
    rng = np.random.default_rng(3)
    m = rng.random((5, 13)) < 0.3
    path = tmp_path / "m.safetensors"
    with MaskWriter(path, {"w": m.shape}, {"kind": "bitwise", "tol": 0.0}, {}) as w:
        w.write("w", pack_mask(m))
    with MaskFile.open(path) as mf:
        parts = [c.words[0].copy() for c in stream_chunks("w", m.size, [mf.bits()], 16)]
        assert [p.size for p in parts] == [2, 2, 2, 2, 1]
        np.testing.assert_array_equal(np.concatenate(parts), pack_mask(m))
        with pytest.raises(ValueError, match="byte boundary"):
            list(stream_chunks("w", m.size, [mf.bits()], 12))


def test_open_checkpoint_passes_an_open_checkpoint_through(tmp_path) -> None:
    b, _ = _checkpoint_pair(tmp_path)
    ck = open_checkpoint(b)
    assert open_checkpoint(ck) is ck


def test_byte_progress(monkeypatch) -> None:
    assert isinstance(byte_progress(100, "x", enabled=False), NullBar)
    seen: dict = {}
    monkeypatch.setattr(progress, "progress_bar", lambda **kw: seen.update(kw) or NullBar())
    progress.byte_progress(100, "diff", enabled=True)
    assert seen == {
        "total": 100,
        "unit": "B",
        "unit_scale": True,
        "unit_divisor": 1024,
        "desc": "diff",
        "disable": None,
    }
