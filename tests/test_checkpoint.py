"""Checkpoint resolution, header-only inventories, .bin safety and bad-input errors."""

from __future__ import annotations

import json
import mmap
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from rlsparse_lib.errors import CheckpointError
from rlsparse_lib.io import safetensors_io
from rlsparse_lib.io.checkpoint import open_checkpoint
from rlsparse_lib.io.safetensors_io import MappedFiles, read_header

from .ckpt_factory import TINY, random_state, save_hf


@pytest.fixture
def state() -> dict[str, torch.Tensor]:
    return random_state(seed=0)


def test_inventory_single_and_sharded_agree(tmp_path: Path, state) -> None:
    single = open_checkpoint(save_hf(tmp_path / "single", state))
    sharded = open_checkpoint(save_hf(tmp_path / "sharded", state, shards=3))
    assert len(sharded.files) == 3 and single.format == sharded.format == "safetensors"
    assert {n: (t.dtype, t.shape) for n, t in single.tensors.items()} == {
        n: (t.dtype, t.shape) for n, t in sharded.tensors.items()
    }
    assert single.n_params == TINY.n_params


def test_inventory_reads_headers_only(tmp_path: Path, state) -> None:
    """Garbage in the data block does not matter: no tensor data is read for the inventory."""
    folder = save_hf(tmp_path / "m", state)
    f = folder / "model.safetensors"
    raw = bytearray(f.read_bytes())
    hlen = int.from_bytes(raw[:8], "little")
    raw[8 + hlen :] = os.urandom(len(raw) - 8 - hlen)
    f.write_bytes(bytes(raw))
    ck = open_checkpoint(folder)
    assert ck.tensors["model.norm.weight"].shape == (TINY.hidden,)


def test_file_and_index_paths(tmp_path: Path, state) -> None:
    folder = save_hf(tmp_path / "s", state, shards=2)
    via_index = open_checkpoint(folder / "model.safetensors.index.json")
    assert set(via_index.tensors) == set(state)
    one = open_checkpoint(save_hf(tmp_path / "one", state) / "model.safetensors")
    assert set(one.tensors) == set(state)


@pytest.mark.parametrize("shards", [1, 2])
def test_pytorch_bin(tmp_path: Path, state, shards: int) -> None:
    ck = open_checkpoint(save_hf(tmp_path / "bin", state, shards=shards, fmt="bin"))
    assert ck.format == "pytorch" and len(ck.files) == shards
    assert ck.tensors["model.embed_tokens.weight"].dtype == "bfloat16"
    with ck.reader() as r:
        w = r.words("model.norm.weight", 0, TINY.hidden)
    assert (w == state["model.norm.weight"].view(torch.int16).numpy().view("uint16")).all()


def test_bin_shared_storage_is_an_alias(tmp_path: Path, state) -> None:
    state = dict(state)
    state["lm_head.weight"] = state["model.embed_tokens.weight"]  # one storage, two names
    folder = tmp_path / "tied"
    folder.mkdir()
    torch.save(state, folder / "pytorch_model.bin")
    ck = open_checkpoint(folder)
    assert ck.aliases == {"lm_head.weight": "model.embed_tokens.weight"}


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_Evil.marker}",))


def test_unsafe_pickle_is_refused_and_not_executed(tmp_path: Path) -> None:
    _Evil.marker = str(tmp_path / "pwned")
    folder = tmp_path / "evil"
    folder.mkdir()
    with open(folder / "pytorch_model.bin", "wb") as fh:
        pickle.dump({"w": _Evil()}, fh)
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: unsafe pickle"):
        open_checkpoint(folder)
    assert not Path(_Evil.marker).exists()


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such file or folder"):
        open_checkpoint(tmp_path / "nope")


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no weights found"):
        open_checkpoint(tmp_path)


def test_truncated_safetensors_names_file_and_tensor(tmp_path: Path, state) -> None:
    folder = save_hf(tmp_path / "t", state)
    f = folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(
        CheckpointError, match=r"model\.safetensors: tensor '[^']+': file is truncated"
    ):
        open_checkpoint(folder)


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"\x01", "not a safetensors file"),
        ((10**12).to_bytes(8, "little") + b"{}", "corrupt safetensors header"),
        ((5).to_bytes(8, "little") + b"{notj", "invalid JSON"),
        ((2).to_bytes(8, "little") + b"[]", "not a JSON object"),
    ],
)
def test_corrupt_headers(tmp_path: Path, raw: bytes, message: str) -> None:
    (tmp_path / "model.safetensors").write_bytes(raw)
    with pytest.raises(CheckpointError, match=message):
        open_checkpoint(tmp_path)


def test_header_with_wrong_byte_count(tmp_path: Path) -> None:
    header = json.dumps({"w": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 6]}}).encode()
    (tmp_path / "model.safetensors").write_bytes(
        len(header).to_bytes(8, "little") + header + bytes(8)
    )
    with pytest.raises(CheckpointError, match=r"tensor 'w': data_offsets span 6 bytes"):
        open_checkpoint(tmp_path)


def test_index_naming_missing_shard(tmp_path: Path, state) -> None:
    folder = save_hf(tmp_path / "s", state, shards=2)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(
        CheckpointError, match=r"names missing shard 'model-00002-of-00002\.safetensors'"
    ):
        open_checkpoint(folder)


def test_index_naming_tensor_not_in_shard(tmp_path: Path, state) -> None:
    folder = save_hf(tmp_path / "s", state, shards=2)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["ghost.weight"] = "model-00001-of-00002.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"tensor 'ghost\.weight' is not in shard"):
        open_checkpoint(folder)


def test_corrupt_index(tmp_path: Path, state) -> None:
    folder = save_hf(tmp_path / "s", state, shards=2)
    (folder / "model.safetensors.index.json").write_text("{")
    with pytest.raises(CheckpointError, match="corrupt index file"):
        open_checkpoint(folder)


def test_hub_id_offline_names_the_id(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        CheckpointError,
        match=r"'allenai/Llama-3\.1-Tulu-3-8B-DPO' is not a local path and could not be fetched",
    ):
        open_checkpoint("allenai/Llama-3.1-Tulu-3-8B-DPO", cache_dir=tmp_path)


def test_hub_id_resolves_through_snapshot_download(monkeypatch, tmp_path: Path, state) -> None:
    """The hub path: only safetensors/JSON are requested, the revision is recorded."""
    commit = "a" * 40
    snap = save_hf(tmp_path / "snapshots" / commit, state)
    calls = {}

    def fake_snapshot_download(repo_id, revision=None, cache_dir=None, allow_patterns=None):
        calls.update(repo_id=repo_id, revision=revision, allow_patterns=allow_patterns)
        return str(snap)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    ck = open_checkpoint("org/model@v1", download=True)
    assert calls["repo_id"] == "org/model" and calls["revision"] == "v1"
    assert all(p.endswith((".safetensors", ".json")) for p in calls["allow_patterns"])
    assert ck.revision == commit and ck.source == "org/model@v1"
    assert set(ck.tensors) == set(state)


def test_hub_repo_without_safetensors(monkeypatch, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setattr("huggingface_hub.snapshot_download", lambda *a, **k: str(tmp_path))
    with pytest.raises(CheckpointError, match=r"has no \.safetensors weights"):
        open_checkpoint("org/pickles-only", download=True)


class _RecordingFiles(MappedFiles):
    """MappedFiles that records its madvise calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, int, int]] = []

    def _madvise(self, mm, advice: int, lo: int, hi: int) -> None:  # type: ignore[override]
        self.calls.append((advice, lo, hi))
        super()._madvise(mm, advice, lo, hi)


def _rss_kib(path: Path) -> int:
    """Resident KiB of this process's maps of ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5:  # a mapping's first line
            inside = line.endswith(str(path))
        elif inside and head[0] == "Rss:":
            total += int(head[1])
    return total


def test_released_ranges_are_gathered_and_their_pages_dropped(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(safetensors_io, "RELEASE_BATCH", 64 << 10)
    state = {  # in file order: small, small, small, larger than the batch
        "a": torch.zeros(100, dtype=torch.uint8),
        "b": torch.ones(20_000, dtype=torch.uint8),
        "c": torch.full((300,), 2, dtype=torch.uint8),
        "d": torch.full((200_000,), 3, dtype=torch.uint8),
    }
    save_file(state, tmp_path / "m.safetensors")
    save_file({"e": torch.ones(5000, dtype=torch.uint8)}, tmp_path / "n.safetensors")
    infos, _ = read_header(tmp_path / "m.safetensors")
    e = read_header(tmp_path / "n.safetensors")[0]["e"]
    files = _RecordingFiles()
    for name, t in state.items():  # every page mapped
        assert np.array_equal(files.words(infos[name], 0, t.numel()), t.numpy())
    assert _rss_kib(tmp_path / "m.safetensors") >= 200
    for name in "abc":
        files.release(infos[name], 0, state[name].numel())
    assert files.calls == []  # near each other: one pending span
    files.release(infos["d"], 0, state["d"].numel())  # as large as the batch: at once

    def span(info, start: int, stop: int) -> tuple[int, int, int]:
        page = mmap.PAGESIZE
        return (mmap.MADV_DONTNEED, (info.offset + start) // page * page, info.offset + stop)

    a_to_c = (mmap.MADV_DONTNEED, span(infos["a"], 0, 1)[1], span(infos["c"], 0, 300)[2])
    assert files.calls == [span(infos["d"], 0, 200_000)]
    assert _rss_kib(tmp_path / "m.safetensors") > 0  # a to c: pending
    files.flush()
    assert files.calls[1:] == [a_to_c]
    assert _rss_kib(tmp_path / "m.safetensors") == 0
    # two spans pend (another file's, or a far range of this one); a third drops the oldest
    files.release(infos["c"], 0, 300)
    files.release(e, 0, 5000)
    assert len(files.calls) == 2
    files.release(infos["d"], 190_000, 200_000)
    assert files.calls[2:] == [span(infos["c"], 0, 300)]
    files.close()
    assert files.calls[3:] == [span(e, 0, 5000), span(infos["d"], 190_000, 200_000)]
