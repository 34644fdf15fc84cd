"""Hub Range streaming against the loopback stand-in (tests/hub_standin.py), with fault injection.

Every streamed report is compared with the local report of the same files (JSON minus provenance),
so a wrong byte anywhere fails the test.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlsparse_lib.diff.config import DiffConfig
from rlsparse_lib.diff.engine import diff_checkpoints
from rlsparse_lib.errors import CheckpointError
from rlsparse_lib.io.checkpoint import open_checkpoint
from rlsparse_lib.io.hub_stream import StreamSettings
from tests.ckpt_factory import bump_bits, pick, random_state, save_hf
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


@pytest.fixture()
def hub(pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with HubStandin({"org/base": pair[0], "org/tuned": pair[1]}) as standin:
        monkeypatch.setenv("HF_ENDPOINT", standin.endpoint)
        yield standin


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
