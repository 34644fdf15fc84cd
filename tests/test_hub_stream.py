"""Hub Range streaming against the loopback stand-in (tests/hub_standin.py), with fault injection.

Every streamed report is compared with the local report of the same files (JSON minus provenance),
so a wrong byte anywhere fails the test.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from concurrent.futures import Future
from pathlib import Path

import pytest
import torch

from rlsparse_lib.diff.config import DiffConfig
from rlsparse_lib.diff.engine import diff_checkpoints
from rlsparse_lib.errors import CheckpointError
from rlsparse_lib.io.checkpoint import open_checkpoint
from rlsparse_lib.io.hub_stream import _HEAD_BYTES, StreamSettings
from rlsparse_lib.io.synthetic import LlamaShape
from tests.ckpt_factory import bump_bits, fp8_block_quantize, pick, random_state, save_hf
from tests.hub_standin import HubStandin

#: small parts and blocks so that a tiny checkpoint still takes many parallel Range requests
FAST = StreamSettings(part_bytes=2000, window_bytes=6000, backoff=0.01, timeout=10)
CONFIG = DiffConfig(chunk_elems=1024)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("hubpair")
    state = random_state(seed=3)
    tuned = {}
    for i, (k, v) in enumerate(state.items()):
        tuned[k] = bump_bits(v, pick(v.numel(), max(1, v.numel() // 50), i)) if v.dim() == 2 else v
    tuned["model.norm.weight"] = state["model.norm.weight"].to(torch.float32).to(torch.bfloat16)
    save_hf(root / "base", state, shards=2, config={"tie_word_embeddings": False})
    save_hf(root / "tuned", tuned, shards=1)
    return root / "base", root / "tuned"


def _serve(repos: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A loopback stand-in serving ``repos``, with the hub environment pointed at it."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with HubStandin(repos) as standin:
        monkeypatch.setenv("HF_ENDPOINT", standin.endpoint)
        yield standin


@pytest.fixture()
def hub(pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    yield from _serve({"org/base": pair[0], "org/tuned": pair[1]}, monkeypatch, tmp_path)


def _plain(report) -> dict:
    d = report.to_dict()
    d.pop("provenance")
    return d


@pytest.fixture(scope="module")
def local_report(pair: tuple[Path, Path]) -> dict:
    return _plain(diff_checkpoints(pair[0], pair[1], CONFIG, progress=False))


def _streamed(settings: StreamSettings = FAST, base: str = "org/base", tuned: str = "org/tuned"):
    b = open_checkpoint(base, stream=settings)
    t = open_checkpoint(tuned, stream=settings)
    return b, t, diff_checkpoints(b, t, CONFIG, progress=False)


def test_streamed_equals_local(hub: HubStandin, local_report: dict, tmp_path: Path) -> None:
    b, t, report = _streamed()
    assert _plain(report) == local_report
    prov = report.provenance["inputs"]
    assert prov["base"]["revision"] == hub.commits["org/base"]
    for side, ck in (("base", b), ("tuned", t)):
        tr = prov[side]["transport"]
        assert tr["commit"] == hub.commits[f"org/{side}"] == ck.revision
        assert tr["kind"] == "http-range" and tr["endpoint"] == hub.endpoint
        data = sum(info.nbytes for info in ck.tensors.values())
        assert tr["bytes_fetched"] >= data  # every tensor's bytes came over the network
        assert tr["retries"] == 0
    cdn = hub.requests("cdn")
    assert cdn and all(e[3] == 206 and e[4].startswith("bytes=") for e in cdn)
    assert len(cdn) > 10  # split into many parts
    assert not (tmp_path / "hf").exists()  # nothing written to the HF cache


def test_revision_is_pinned(hub: HubStandin, local_report: dict) -> None:
    sha = hub.commits["org/base"]
    ck = open_checkpoint("org/base@main", stream=FAST)
    assert ck.revision == sha and ck.path == Path(f"org/base@{sha}")
    # every resolve named the pinned commit, not the branch
    resolves = [e for e in hub.requests("hub") if "/resolve/" in e[2]]
    assert resolves and all(f"/resolve/{sha}/" in e[2] for e in resolves)
    # the pinned key reopens the same checkpoint (what a --cluster worker does)
    again = open_checkpoint(Path(f"org/base@{sha}"), stream=FAST)
    assert again.fingerprint() == ck.fingerprint()


def test_expiring_locations_are_reresolved(hub: HubStandin, local_report: dict) -> None:
    hub.expire_every = 4
    b, _, report = _streamed()
    assert _plain(report) == local_report
    assert hub.requests("cdn", 403)
    assert b.remote is not None and b.remote.stats.reresolves > 0


def test_cut_body_is_retried(hub: HubStandin, local_report: dict) -> None:
    b, t, _ = _streamed()
    hub.cut_bodies = 3
    report = diff_checkpoints(b, t, CONFIG, progress=False)
    assert _plain(report) == local_report
    assert hub.cut_bodies == 0
    assert b.remote is not None and t.remote is not None
    assert b.remote.stats.retries + t.remote.stats.retries >= 3


def test_server_errors_retried_then_given_up(hub: HubStandin, local_report: dict) -> None:
    hub.server_errors = 2
    _, _, report = _streamed()
    assert _plain(report) == local_report
    hub.server_errors = 100
    with pytest.raises(CheckpointError, match=r"gave up after 2 retries \(HTTP 503\)"):
        _streamed(StreamSettings(retries=2, backoff=0.01))


def test_server_ignoring_range_is_refused(hub: HubStandin) -> None:
    hub.ignore_range = True
    with pytest.raises(CheckpointError, match=r"ignored the Range request.*use --download"):
        _streamed()
    assert len(hub.requests("cdn", 200)) <= FAST.connections  # refused at once, no retry loop


def test_rate_limit_honours_retry_after(hub: HubStandin, local_report: dict) -> None:
    hub.rate_limit, hub.retry_after = 1, "0.3"
    slow_backoff = StreamSettings(part_bytes=2000, window_bytes=6000, backoff=5.0)
    b, t, report = _streamed(slow_backoff)
    assert _plain(report) == local_report
    assert b.remote is not None and t.remote is not None
    stats = [b.remote.stats, t.remote.stats]
    assert sum(s.rate_limited for s in stats) == 1
    waited = sum(s.waited_s for s in stats)
    assert 0.3 <= waited < 1.0  # the server's hint, not the 5 s backoff


def test_file_changed_mid_run_stops(hub: HubStandin, pair: tuple[Path, Path], tmp_path: Path):
    b = open_checkpoint("org/base", stream=FAST)
    t = open_checkpoint("org/tuned", stream=FAST)
    state = random_state(seed=4)
    save_hf(tmp_path / "other", state, shards=1)
    hub.replace("org/tuned", "model.safetensors", tmp_path / "other" / "model.safetensors")
    with pytest.raises(CheckpointError, match="changed on the server during the run"):
        diff_checkpoints(b, t, CONFIG, progress=False)


def test_unknown_repo_and_offline(hub: HubStandin, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CheckpointError, match=r"no such model.*HF_TOKEN"):
        open_checkpoint("org/missing", stream=FAST)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE"):
        open_checkpoint("org/base", stream=FAST)


def test_cli_diff_streams_with_exit_codes(hub: HubStandin, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    cmd = [sys.executable, "-m", "rlsparse_lib.cli", "diff", "org/base", "org/tuned", "-q"]
    ok = subprocess.run([*cmd, "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert '"http-range"' in out.read_text()
    hub.ignore_range = True
    bad = subprocess.run(
        [*cmd, "--json", str(tmp_path / "no.json")], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and "ignored the Range request" in bad.stderr
    assert not (tmp_path / "no.json").exists()


def test_token_goes_to_the_hub_only(hub: HubStandin, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    _streamed()
    assert all(e[5] for e in hub.requests("hub"))
    assert hub.requests("cdn") and not any(e[5] for e in hub.requests("cdn"))


def test_cluster_and_resume_stream_their_own_ranges(
    hub: HubStandin, pair: tuple[Path, Path], local_report: dict, tmp_path: Path
) -> None:
    """--cluster workers reopen the pinned commit and stream their units; --resume keys the
    streamed files by content (their etag), the same digests as the local files'."""
    from rlsparse_lib.diff.report import DiffReport
    from rlsparse_lib.io.digest import files_digest

    local = [open_checkpoint(p) for p in pair]
    streamed = [open_checkpoint(s, stream=FAST) for s in ("org/base", "org/tuned")]
    for a, b in zip(local, streamed, strict=True):
        assert files_digest(b.files) == files_digest(a.files)
    out, resume = tmp_path / "r.json", tmp_path / "resume"
    cmd = [sys.executable, "-m", "rlsparse_lib.cli", "diff", "org/base", "org/tuned", "-q"]
    cmd += ["--chunk-elems", "1024", "--unit-bytes", "8000", "--cluster", "local:2"]
    done = subprocess.run(
        [*cmd, "--resume", str(resume), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert _plain(DiffReport.load(out)) == local_report
    assert len(list(resume.glob("unit-*.json"))) > 1
    cdn = hub.requests("cdn")
    assert len({e[2] for e in cdn}) >= 2 and all(e[3] == 206 for e in cdn)


def test_rank_reads_hub_ids_too(hub: HubStandin, pair: tuple[Path, Path]) -> None:
    """Every command opens checkpoints through open_checkpoint: the rank analysis of the streamed
    pair equals the local one."""
    from rlsparse_lib.analysis.rank import update_ranks

    local = update_ranks(*pair, device="cpu", progress=False)
    streamed = update_ranks(
        *(open_checkpoint(s, stream=FAST) for s in ("org/base", "org/tuned")),
        device="cpu",
        progress=False,
    )
    assert streamed.matrices == local.matrices and len(local.matrices) > 0


def test_quantize_reads_hub_ids_too(hub: HubStandin, pair: tuple[Path, Path], tmp_path: Path):
    """A quantized copy of a streamed checkpoint is byte for byte the copy of the local files."""
    from rlsparse_lib.io.quantize import quantize_checkpoint

    quantize_checkpoint(pair[0], tmp_path / "local", "fp8_block", progress=False)
    streamed = open_checkpoint("org/base", stream=FAST)
    quantize_checkpoint(streamed, tmp_path / "hub", "fp8_block", progress=False)
    names = sorted(p.name for p in (tmp_path / "local").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "hub").iterdir())
    assert "model-00002-of-00002.safetensors" in names
    for name in names:
        assert (tmp_path / "hub" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()


def test_wrong_content_range_is_refused(hub: HubStandin) -> None:
    hub.wrong_range = True
    with pytest.raises(CheckpointError, match="wrong Content-Range"):
        _streamed()


def test_gated_repo_needs_hf_token(hub: HubStandin, monkeypatch: pytest.MonkeyPatch) -> None:
    hub.gated["org/base"] = "hf_secret"
    with pytest.raises(CheckpointError, match=r"gated/private.*HF_TOKEN"):
        open_checkpoint("org/base", stream=FAST)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    assert open_checkpoint("org/base", stream=FAST).revision == hub.commits["org/base"]


#: a window smaller than the MLP matrices below (256 KiB of bf16 each), parts of a window
SMALL_WINDOW = StreamSettings(part_bytes=4000, window_bytes=16000, backoff=0.01, timeout=10)


@pytest.fixture(scope="module")
def big_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Tensors larger than SMALL_WINDOW's window, each after small ones (norms, attention), and
    a run of tensors of 3/4 of a window (12000 bytes: reads across window ends)."""
    root = tmp_path_factory.mktemp("bigpair")
    shape = LlamaShape(vocab=64, hidden=64, intermediate=2048, layers=2, heads=4, kv_heads=2)
    state = random_state(shape, seed=5)
    g = torch.Generator().manual_seed(6)
    for i in range(12):  # stored between the embedding and the layers (names are sorted)
        state[f"model.extra.{i:02d}.weight"] = torch.randn(60, 100, generator=g).bfloat16()
    tuned = {
        k: bump_bits(v, pick(v.numel(), max(1, v.numel() // 100), i)) if v.dim() == 2 else v
        for i, (k, v) in enumerate(state.items())
    }
    save_hf(root / "base", state, shards=2)  # the same layout: both sides read in file order
    save_hf(root / "tuned", tuned, shards=2)
    return root / "base", root / "tuned"


@pytest.fixture()
def big_hub(big_pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    repos = {"org/big-base": big_pair[0], "org/big-tuned": big_pair[1]}
    yield from _serve(repos, monkeypatch, tmp_path)


def _served(hub: HubStandin, repo: str, name: str) -> int:
    """Bytes the stand-in's CDN sent for file ``name`` of ``repo`` (its ``206`` ranges)."""
    total = 0
    for _, _, path, _, asked, _ in hub.requests("cdn", 206):
        if path.split("?")[0].lstrip("/") == f"{repo}/{name}":
            a, b = asked.removeprefix("bytes=").split("-")
            total += int(b) - int(a) + 1
    return total


@pytest.mark.parametrize("chunk_elems", [4_096, 8_200, 16_384])
def test_read_ahead_is_fetched_once(
    big_hub: HubStandin, big_pair: tuple[Path, Path], chunk_elems: int
) -> None:
    """Chunks within the window (8 KiB) and larger than it (16400 bytes: just over it, so the
    prefetched second chunk of a tensor takes read-ahead too; 32 KiB) of tensors larger than the
    window, and reads across window ends: what the windows read ahead is reused, by reads up to a
    window and beyond it, so the server sends every file once plus the header read (its first
    64 KiB, read before the tensors), and the report equals the local one."""
    config = DiffConfig(chunk_elems=chunk_elems)
    b = open_checkpoint("org/big-base", stream=SMALL_WINDOW)
    t = open_checkpoint("org/big-tuned", stream=SMALL_WINDOW)
    assert max(info.nbytes for info in b.tensors.values()) > 2 * chunk_elems * 2
    report = diff_checkpoints(b, t, config, progress=False)
    local = diff_checkpoints(*big_pair, config, progress=False)
    assert _plain(report) == _plain(local)
    for side, ck, folder in (("base", b, big_pair[0]), ("tuned", t, big_pair[1])):
        sizes = {f.name: (folder / f.name).stat().st_size for f in ck.files}
        served = {name: _served(big_hub, f"org/big-{side}", name) for name in sizes}
        for name, size in sizes.items():
            assert size <= served[name] <= size + min(size, _HEAD_BYTES), (side, name, size)


def test_reused_window_part_cancelled_is_read_again(
    big_hub: HubStandin, big_pair: tuple[Path, Path]
) -> None:
    """A large read reuses the window ahead of it; a part of that window cancelled before it ran
    (as a jump elsewhere in the file does) is fetched again: the bytes are still the file's."""
    ck = open_checkpoint("org/big-tuned", stream=SMALL_WINDOW)
    assert ck.remote is not None
    reader = ck.remote.reader()
    order = sorted(ck.tensors.values(), key=lambda info: (str(info.file), info.offset))
    k = next(i for i, info in enumerate(order) if info.nbytes > SMALL_WINDOW.window_bytes)
    small, big = order[k - 1], order[k]
    assert small.nbytes <= SMALL_WINDOW.window_bytes and small.file == big.file
    for info in order[:k]:  # the file's tensors up to `big`, as the engine reads them
        if info.file == big.file:
            reader.words(info, 0, info.numel)
    # a window now runs into `big`
    window = next(w for w in reader._windows[big.file] if w.start < big.offset < w.end)
    part = (big.offset - window.start) // window.part
    lost: Future = Future()
    lost.cancel()
    for w in reader._windows[big.file]:  # every live window in, so only the read counts below
        w.result()
    window.futures[part] = lost
    window.buf[part * window.part : (part + 1) * window.part] = 0
    before = ck.remote.stats.bytes_fetched
    n = 2 * SMALL_WINDOW.window_bytes // big.itemsize
    lo, hi = big.offset, big.offset + n * big.itemsize
    held = sum(max(0, min(hi, w.end) - max(lo, w.start)) for w in reader._windows[big.file])
    got = reader.words(big, 0, n)
    want = (big_pair[1] / big.file.name).read_bytes()[big.offset :][: n * big.itemsize]
    assert got.tobytes() == want
    part_end = min(window.end, window.start + (part + 1) * window.part)
    refetched = part_end - max(big.offset, window.start + part * window.part)
    assert ck.remote.stats.bytes_fetched - before == refetched + (hi - lo - held)  # + fresh
    reader.close()


def test_sequential_reads_hold_two_windows_and_fetch_each_byte_once(
    big_hub: HubStandin, big_pair: tuple[Path, Path]
) -> None:
    """Every tensor of a file read in file order as the engine does (chunks of 8200 elements,
    the next one prefetched): the bytes are the file's, at most two windows are held at any time,
    and the tensors' bytes are fetched once."""
    ck = open_checkpoint("org/big-base", stream=SMALL_WINDOW)
    assert ck.remote is not None
    reader = ck.remote.reader()
    key = ck.files[0]
    data = (big_pair[0] / key.name).read_bytes()
    infos = sorted((i for i in ck.tensors.values() if i.file == key), key=lambda i: i.offset)
    before, step = ck.remote.stats.bytes_fetched, 8200
    for info in infos:
        for start in range(0, info.numel, step):
            stop = min(info.numel, start + step)
            if stop < info.numel:
                reader.prefetch(info, stop, min(info.numel, stop + step))
            got = reader.words(info, start, stop).tobytes()
            at = info.offset + start * info.itemsize
            assert got == data[at : info.offset + stop * info.itemsize], (info.name, start)
            assert len(reader._windows.get(key, [])) <= 2
    span = infos[-1].offset + infos[-1].nbytes - infos[0].offset
    assert ck.remote.stats.bytes_fetched - before == span
    reader.close()


#: FP8 codes within a window (32 KiB tensors), and beyond SMALL_WINDOW's
WIDE_WINDOW = StreamSettings(part_bytes=4000, window_bytes=64000, backoff=0.01, timeout=10)


@pytest.fixture(scope="module")
def quant_pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """FP8 (DeepSeek layout: safetensors stores every float32 ``*_scale_inv`` before the FP8
    codes) and MXFP4 (gpt-oss layout: ``*_scales`` right after their ``*_blocks``) pairs of 12
    weights, 1 % of the codes changed, with bf16 norms between them."""
    root = tmp_path_factory.mktemp("quanthub")
    g = torch.Generator().manual_seed(8)
    states: dict[str, tuple[dict, dict]] = {"fp8": ({}, {}), "mxfp4": ({}, {})}
    for i in range(12):
        stem = f"model.layers.{i:02d}"
        codes, scale = fp8_block_quantize(0.02 * torch.randn(128, 256, generator=g))
        blocks = torch.randint(0, 256, (64, 8, 16), dtype=torch.uint8, generator=g)
        scales = torch.randint(115, 125, (64, 8), dtype=torch.uint8, generator=g)
        norm = torch.randn(256, generator=g).bfloat16()
        for side, (base, tuned) in states.items():
            weights = (
                {
                    f"{stem}.mlp.down_proj.weight": codes,
                    f"{stem}.mlp.down_proj.weight_scale_inv": scale,
                }
                if side == "fp8"
                else {
                    f"{stem}.mlp.experts.down_proj_blocks": blocks,
                    f"{stem}.mlp.experts.down_proj_scales": scales,
                }
            )
            weights[f"{stem}.input_layernorm.weight"] = norm
            base.update(weights)
            for k, v in weights.items():  # the low bit of 1 % of the codes flipped
                if v.dim() >= 2 and v.element_size() == 1:
                    codes_t = v.view(torch.uint8).clone()
                    codes_t.reshape(-1)[pick(v.numel(), v.numel() // 100, i)] ^= 1
                    v = codes_t.view(v.dtype)
                tuned[k] = v
    configs = {
        "fp8": {"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}},
        "mxfp4": {"quantization_config": {"quant_method": "mxfp4"}},
    }
    out = {}
    for kind, (base, tuned) in states.items():
        out[kind] = (
            save_hf(root / kind / "base", base, config=configs[kind]),
            save_hf(root / kind / "tuned", tuned, config=configs[kind]),
        )
    return out


@pytest.mark.parametrize(
    "settings", [WIDE_WINDOW, SMALL_WINDOW], ids=["codes-in-window", "codes-beyond"]
)
@pytest.mark.parametrize("kind", ["fp8", "mxfp4"])
def test_quantized_scales_read_apart_do_not_restart_the_stream(
    quant_pairs: dict[str, tuple[Path, Path]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    kind: str,
    settings: StreamSettings,
) -> None:
    """Every chunk reads its scales, stored elsewhere in the file, next to its codes: those small
    reads are served by side windows, so the stream of codes is not restarted and fetched again
    (the old reader fetched the FP8 pair's file several times over); the report equals the local
    one and the server sends each file once, plus the header read and at most two side windows."""
    pair = quant_pairs[kind]
    config = DiffConfig(chunk_elems=1 << 15)
    repos = {f"org/{kind}-base": pair[0], f"org/{kind}-tuned": pair[1]}
    for hub in _serve(repos, monkeypatch, tmp_path):
        b = open_checkpoint(f"org/{kind}-base", stream=settings)
        t = open_checkpoint(f"org/{kind}-tuned", stream=settings)
        assert b.remote is not None
        side = b.remote.reader().side_bytes
        report = diff_checkpoints(b, t, config, progress=False)
        assert sum(v["tensors"] for v in report.quant_summary().values()) == 12
        assert _plain(report) == _plain(diff_checkpoints(*pair, config, progress=False))
        for s, folder in (("base", pair[0]), ("tuned", pair[1])):
            size = (folder / "model.safetensors").stat().st_size
            served = _served(hub, f"org/{kind}-{s}", "model.safetensors")
            assert size <= served <= size + min(size, _HEAD_BYTES) + 2 * side, (s, size, served)


def test_windows_are_kept_for_the_last_two_files_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A checkpoint of four shards read shard after shard: the read-ahead (and side) windows of a
    shard are let go once two other shards have been read, so memory does not grow with the
    number of shards (a 671B checkpoint has 163); the bytes are the files'."""
    folder = save_hf(tmp_path / "many", random_state(seed=9), shards=4)
    for _ in _serve({"org/many": folder}, monkeypatch, tmp_path):
        ck = open_checkpoint("org/many", stream=FAST)
        assert ck.remote is not None and len(ck.files) == 4
        reader = ck.remote.reader()
        order = sorted(ck.tensors.values(), key=lambda info: (str(info.file), info.offset))
        data = {f: (folder / f.name).read_bytes() for f in ck.files}
        seen: list[Path] = []
        for info in order:
            got = reader.words(info, 0, info.numel).tobytes()
            assert got == data[info.file][info.offset : info.offset + info.nbytes]
            if info.file not in seen:
                seen.append(info.file)
            assert set(reader._windows) | set(reader._side) <= set(seen[-2:]), info.name
        assert len(seen) == 4
        reader.close()


def test_reads_in_any_order_return_the_files_bytes(
    big_hub: HubStandin, big_pair: tuple[Path, Path]
) -> None:
    """Random reads (tiny, within a window, beyond it; forward, backward, across the two shards,
    some prefetched first) take the reader's paths: side windows and their promotion, restarts,
    reads beyond a window reusing live windows. Each returns exactly the file's bytes."""
    ck = open_checkpoint("org/big-base", stream=SMALL_WINDOW)
    assert ck.remote is not None
    reader = ck.remote.reader()
    data = {f: (big_pair[0] / f.name).read_bytes() for f in ck.files}
    infos = sorted(ck.tensors.values(), key=lambda info: info.name)
    rng = random.Random(0)
    for _ in range(400):
        info = rng.choice(infos)
        size = rng.choice([1, 100, 3000, 12000, 40000]) // info.itemsize or 1
        start = rng.randrange(info.numel)
        stop = min(info.numel, start + size)
        if rng.random() < 0.2:
            reader.prefetch(info, start, stop)
        got = reader.words(info, start, stop).tobytes()
        at = info.offset + start * info.itemsize
        assert got == data[info.file][at : at + (stop - start) * info.itemsize], info.name
        if rng.random() < 0.1:
            reader.release(info, start, stop)
    reader.close()


def test_tuned_side_sharded_otherwise_is_fetched_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A base in 4 shards against a tuned side in 3 (cut by name order, as ``save_pretrained``
    does; safetensors stores each shard's tensors sorted by name, so layer 10 comes before layer 2
    and a layer split between two tuned shards sits at the end of the second): the base is read
    front to back once, and the tuned side's reads resume the stream they left and read ahead no
    further than bytes already read: each base file is fetched once plus its header read, each
    tuned file at most a window more (tiny tensors next to the jumps). The old plan read a base
    shard once per tuned shard it shares tensors with (1.1–1.2× its bytes fetched), and the old
    reader fetched again what a stream left at a jump had read ahead. The report equals the local
    one and, tensor for tensor in the same order, the same-sharded one's."""
    shape = LlamaShape(vocab=64, hidden=64, intermediate=512, layers=12, heads=4, kv_heads=2)
    state = random_state(shape, seed=11)
    tuned = {
        k: bump_bits(v, pick(v.numel(), max(1, v.numel() // 20), i)) if v.dim() == 2 else v
        for i, (k, v) in enumerate(state.items())
    }
    base_dir = save_hf(tmp_path / "b4", state, shards=4, contiguous=True)
    tuned_dir = save_hf(tmp_path / "t3", tuned, shards=3, contiguous=True)
    alike = save_hf(tmp_path / "t4", tuned, shards=4, contiguous=True)
    config = DiffConfig(chunk_elems=4096)
    local = _plain(diff_checkpoints(base_dir, tuned_dir, config, progress=False))
    assert (
        local["tensors"]
        == _plain(diff_checkpoints(base_dir, alike, config, progress=False))["tensors"]
    )
    for hub in _serve({"org/b4": base_dir, "org/t3": tuned_dir}, monkeypatch, tmp_path):
        b = open_checkpoint("org/b4", stream=SMALL_WINDOW)
        t = open_checkpoint("org/t3", stream=SMALL_WINDOW)
        assert _plain(diff_checkpoints(b, t, config, progress=False)) == local
        for repo, folder, slack in (("org/b4", base_dir, 0), ("org/t3", tuned_dir, 1)):
            for f in sorted(folder.glob("*.safetensors")):
                size, served = f.stat().st_size, _served(hub, repo, f.name)
                head = min(size, _HEAD_BYTES)
                assert size <= served <= size + head + slack * SMALL_WINDOW.window_bytes, (
                    f.name,
                    size,
                    served,
                )


def test_standin_link_paces_all_connections_together(hub: HubStandin, local_report: dict) -> None:
    """The benches' link (``link_bytes_per_s``): the bodies of all parallel Range requests share
    it, so a streamed diff takes at least its fetched bytes over the rate; the report is
    unchanged."""
    rate = 250_000.0  # the pair fetches ~0.17 MB: >= 0.7 s paced, ~0.25 s unpaced
    hub.link_bytes_per_s = rate
    t0 = time.perf_counter()
    _, _, report = _streamed()
    elapsed = time.perf_counter() - t0
    fetched = sum(
        (report.provenance["inputs"][s]["transport"] or {})["bytes_fetched"]
        for s in ("base", "tuned")
    )
    assert _plain(report) == local_report
    assert fetched > 100_000
    assert elapsed >= fetched / rate


def test_a_second_pass_over_a_file_streams_like_the_first(
    big_hub: HubStandin, big_pair: tuple[Path, Path]
) -> None:
    """Reading a checkpoint's tensors again (another command on the same opened checkpoint) is a
    new pass: read-ahead does not stop at the bytes the first pass read, so the second pass takes
    about the first one's requests, not one per read."""
    ck = open_checkpoint("org/big-base", stream=SMALL_WINDOW)
    assert ck.remote is not None
    reader = ck.remote.reader()
    order = sorted(ck.tensors.values(), key=lambda info: (str(info.file), info.offset))
    data = {f: (big_pair[0] / f.name).read_bytes() for f in ck.files}
    requests = []
    for _ in range(2):
        before = len(big_hub.requests("cdn"))
        for info in order:
            for start in range(0, info.numel, 4096):
                stop = min(info.numel, start + 4096)
                got = reader.words(info, start, stop).tobytes()
                at = info.offset + start * info.itemsize
                assert got == data[info.file][at : info.offset + stop * info.itemsize]
        requests.append(len(big_hub.requests("cdn")) - before)
    reader.close()
    assert requests[1] <= requests[0] * 1.2, requests
