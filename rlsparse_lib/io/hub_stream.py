"""Stream hub checkpoints with HTTP Range requests: no local copy, bounded memory.

Safetensors files and GGUF files (:mod:`rlsparse_lib.io.gguf_io`: a repository's one GGUF model,
or one named as ``org/name/path/file.gguf``) are streamed alike. Only the hub's documented routes
are used, so the same code runs against huggingface.co, a mirror named by ``HF_ENDPOINT`` and the
loopback stand-in of the tests:

* ``GET /api/models/{id}[/revision/{rev}]``: the commit (``sha``) and the file list. The commit of
  this first answer is pinned for the whole run: every file is resolved at that commit.
* ``HEAD /{id}/resolve/{commit}/{file}``: a ``302`` to a signed location (the CDN) with the file's
  size (``X-Linked-Size``), etag (``X-Linked-ETag``) and commit (``X-Repo-Commit``); relative
  redirects (renamed repos) are followed. Small JSON files (config, index) are fetched whole.
* ``GET <signed location>`` with ``Range: bytes=a-b``: the answer must be ``206`` with
  ``Content-Range: bytes a-b/size``. A server that ignores Range (``200``) is refused with a
  message naming the file: never a silent full download, never a wrong answer.

Failures: ``5xx``, connection resets, timeouts and short bodies are retried with exponential
backoff (a short body resumes where it stopped); ``403`` on a signed location re-resolves the file
(expired signature) and checks that its size and etag did not change; ``429`` waits for
``Retry-After``; an etag that changes between answers (the file was replaced on the server) stops
the run with a message. The token is ``huggingface_hub.get_token()`` (``HF_TOKEN``), sent to the
hub's own host only, never to the CDN.

Memory, per checkpoint side: two read-ahead windows of ``window_bytes`` for each of the last two
files read (tensors up to that size are read from them; small reads elsewhere in a file from at
most four side windows of at most 1 MiB) and, for larger tensors, the chunk in use and one
prefetched chunk (the engine's ``chunk_elems`` words; what the windows already hold of a chunk is
copied from them, not fetched again); every fetch is split into ``part_bytes`` Range requests run
on ``connections`` threads that write straight into the buffer. Defaults: 8 connections, 8 MiB
parts, 64 MiB windows: about 2 × (2 × 2 × 64 MiB + 2 chunks) ≤ 1 GiB for a pair, whatever the
number of shards. Nothing is written to disk.

Settings come from :class:`StreamSettings` (``RLSPARSE_HUB_CONNECTIONS``,
``RLSPARSE_HUB_PART_MB``, ``RLSPARSE_HUB_WINDOW_MB``, ``RLSPARSE_HUB_TIMEOUT``,
``RLSPARSE_HUB_RETRIES`` in the environment).
"""

from __future__ import annotations

import bisect
import json
import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import httpx
import numpy as np

from rlsparse_lib.errors import CheckpointError, ConfigError
from rlsparse_lib.io.digest import register_digest
from rlsparse_lib.io.dtypes import word_dtype
from rlsparse_lib.io.gguf_io import BlockEncoding, pick_gguf_model, read_gguf_at, shard_names
from rlsparse_lib.io.hub import split_hub_spec
from rlsparse_lib.io.safetensors_io import header_length, parse_header
from rlsparse_lib.io.tensor_info import TensorInfo

__all__ = ["HubRepo", "RangeFiles", "StreamSettings", "StreamStats", "open_repo"]

_REDIRECTS = (301, 302, 303, 307, 308)
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: bytes read first from each file: the 8-byte length and, usually, the whole header
_HEAD_BYTES = 1 << 16
#: small JSON files (config, index) are fetched whole up to this size
_MAX_JSON = 64 << 20
#: a host that cannot be reached at all (no DNS, refused) is retried this often, not ``retries``
_CONNECT_RETRIES = 1


@dataclass(frozen=True)
class StreamSettings:
    """How hub files are streamed.

    Attributes:
        connections: parallel Range requests (threads and pooled connections) per process.
        part_bytes: bytes per Range request (a chunk is split into parts of this size).
        window_bytes: read-ahead window per file for reads up to this size (two at most).
        timeout: seconds for connecting and for each read on a connection.
        retries: attempts per request beyond the first (5xx, resets, short reads, 403, 429).
        backoff: first retry delay in seconds, doubled at each attempt up to ``max_backoff``.
        max_wait: longest ``Retry-After`` honoured (longer hints fail the run with a message).
    """

    connections: int = 8
    part_bytes: int = 8 << 20
    window_bytes: int = 64 << 20
    timeout: float = 30.0
    retries: int = 6
    backoff: float = 0.5
    max_backoff: float = 30.0
    max_wait: float = 300.0

    def __post_init__(self) -> None:
        if self.connections < 1 or self.part_bytes < 1 or self.window_bytes < 1:
            raise ConfigError("hub streaming: connections, part and window sizes must be > 0")
        if self.retries < 0 or self.timeout <= 0:
            raise ConfigError("hub streaming: retries must be >= 0 and timeout > 0")

    @classmethod
    def from_env(cls) -> StreamSettings:
        """Defaults, overridden by ``RLSPARSE_HUB_CONNECTIONS``, ``RLSPARSE_HUB_PART_MB``,
        ``RLSPARSE_HUB_WINDOW_MB``, ``RLSPARSE_HUB_TIMEOUT`` and ``RLSPARSE_HUB_RETRIES``."""
        kw: dict[str, Any] = {}
        for var, key, conv in (
            ("RLSPARSE_HUB_CONNECTIONS", "connections", int),
            ("RLSPARSE_HUB_PART_MB", "part_bytes", lambda v: int(float(v) * (1 << 20))),
            ("RLSPARSE_HUB_WINDOW_MB", "window_bytes", lambda v: int(float(v) * (1 << 20))),
            ("RLSPARSE_HUB_TIMEOUT", "timeout", float),
            ("RLSPARSE_HUB_RETRIES", "retries", int),
        ):
            value = os.environ.get(var)
            if value:
                try:
                    kw[key] = conv(value)
                except ValueError:
                    raise ConfigError(f"{var}={value!r}: not a number") from None
        return cls(**kw)


@dataclass
class StreamStats:
    """What one checkpoint's streaming cost (thread-safe counters, recorded in provenance)."""

    bytes_fetched: int = 0
    requests: int = 0
    retries: int = 0
    reresolves: int = 0
    rate_limited: int = 0
    waited_s: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: float) -> None:
        with self._lock:
            for key, value in counts.items():
                setattr(self, key, getattr(self, key) + value)

    def as_dict(self) -> dict[str, float]:
        with self._lock:
            return {
                "bytes_fetched": self.bytes_fetched,
                "requests": self.requests,
                "retries": self.retries,
                "reresolves": self.reresolves,
                "rate_limited": self.rate_limited,
                "waited_s": round(self.waited_s, 3),
            }


@dataclass
class RemoteFile:
    """One file of a pinned commit: its resolve URL and current signed location.

    ``key`` is the path-like name used for it in :class:`TensorInfo` (``org/name@commit/file``).
    """

    key: Path
    url: str
    location: str
    size: int
    etag: str | None
    range_etag: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def endpoint() -> str:
    """``HF_ENDPOINT`` when set (read at call time), else huggingface_hub's default endpoint."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


class HubSession:
    """HTTP client of one endpoint: pooled connections, the token, retries and the thread pool."""

    def __init__(self, settings: StreamSettings, base_url: str, token: str | None) -> None:
        self.settings = settings
        self.base_url = base_url
        self._host = urlsplit(base_url).netloc
        self._auth = {"authorization": f"Bearer {token}"} if token else {}
        limits = httpx.Limits(
            max_connections=settings.connections + 4,
            max_keepalive_connections=settings.connections + 4,
        )
        self.client = httpx.Client(
            timeout=httpx.Timeout(settings.timeout),
            limits=limits,
            headers={"accept-encoding": "identity", "user-agent": "rlsparse"},
        )
        self.pool = ThreadPoolExecutor(settings.connections, thread_name_prefix="rlsparse-hub")

    def _headers(self, url: str) -> dict[str, str]:
        """The token only for the hub's own host (never for a CDN's signed location)."""
        return dict(self._auth) if urlsplit(url).netloc == self._host else {}

    # ---- retry policy ---------------------------------------------------------------------
    def wait_before_retry(
        self, what: str, attempt: int, reason: str, stats: StreamStats, retry_after: float = 0.0
    ) -> None:
        """Sleep before retry ``attempt`` (1-based): ``Retry-After`` when given, else backoff.

        Raises:
            CheckpointError: when the retries are used up or the server asks to wait too long.
        """
        s = self.settings
        if attempt > s.retries:
            raise CheckpointError(f"{what}: gave up after {s.retries} retries ({reason})")
        if retry_after > s.max_wait:
            raise CheckpointError(
                f"{what}: rate limited, the server asks to wait {retry_after:.0f} s "
                f"(more than {s.max_wait:.0f} s); try later"
            )
        delay = retry_after or min(s.max_backoff, s.backoff * 2 ** (attempt - 1))
        stats.add(retries=1, waited_s=delay)
        time.sleep(delay)

    def request(
        self, method: str, url: str, what: str, stats: StreamStats, **kw: Any
    ) -> httpx.Response:
        """A small request (metadata, JSON) with the retry policy; the body is read."""
        attempt = 0
        while True:
            try:
                r = self.client.request(method, url, headers=self._headers(url), **kw)
                stats.add(requests=1)
            except httpx.TransportError as exc:
                attempt += 1
                reason = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, httpx.ConnectError) and attempt > _CONNECT_RETRIES:
                    raise CheckpointError(f"{what}: cannot connect ({reason})") from None
                self.wait_before_retry(what, attempt, reason, stats)
                continue
            if r.status_code == 429:
                attempt += 1
                stats.add(rate_limited=1)
                self.wait_before_retry(what, attempt, "HTTP 429", stats, retry_after_s(r))
                continue
            if r.status_code >= 500:
                attempt += 1
                self.wait_before_retry(what, attempt, f"HTTP {r.status_code}", stats)
                continue
            return r

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.client.close()


def retry_after_s(r: httpx.Response) -> float:
    """Seconds from a ``Retry-After`` header (seconds or an HTTP date); 1 s when absent."""
    value = r.headers.get("retry-after", "").strip()
    if not value:
        return 1.0
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return 1.0


_sessions: dict[tuple, HubSession] = {}
_sessions_lock = threading.Lock()


def session(settings: StreamSettings) -> HubSession:
    """The process's session for the current endpoint, token and settings (shared by both sides
    of a pair, so ``connections`` bounds the whole process)."""
    from huggingface_hub import get_token

    base, token = endpoint(), get_token()
    key = (base, token, settings)
    with _sessions_lock:
        if key not in _sessions:
            _sessions[key] = HubSession(settings, base, token)
        return _sessions[key]


# ---- one repository at a pinned commit ------------------------------------------------------------
class HubRepo:
    """A hub checkpoint at a pinned commit: its weight files' headers, config and index.

    Made by :func:`open_repo`. Attributes: ``spec`` (as given), ``repo_id``, ``commit`` (pinned),
    ``files`` (weight files in shard order, as ``org/name@commit/file`` keys), ``remote`` (by key),
    ``headers`` (tensors by file key), ``weight_map`` (the index's, or None), ``config``,
    ``warnings``, ``stats``, ``format`` (``safetensors`` or ``gguf``), ``filename`` (the GGUF
    file named in the spec, or None) and ``encodings`` (GGUF block encodings by tensor name).
    """

    def __init__(
        self, spec: str, repo_id: str, commit: str, sess: HubSession, filename: str | None = None
    ) -> None:
        self.spec = spec
        self.repo_id = repo_id
        self.commit = commit
        self.session = sess
        self.filename = filename
        self.format = "safetensors"
        self.encodings: dict[str, BlockEncoding] = {}
        self.stats = StreamStats()
        self.files: tuple[Path, ...] = ()
        self.remote: dict[Path, RemoteFile] = {}
        self.headers: dict[Path, dict[str, TensorInfo]] = {}
        self.weight_map: dict[str, str] | None = None
        self.index_name: str | None = None
        self.config: dict = {}
        self.warnings: list[str] = []

    @property
    def key(self) -> str:
        """``org/name[/file.gguf]@commit``: reopens the same files (e.g. in a ``--cluster``
        worker)."""
        file = f"/{self.filename}" if self.filename else ""
        return f"{self.repo_id}{file}@{self.commit}"

    @property
    def root(self) -> Path:
        """``org/name@commit``: the folder-like key the files are named under."""
        return Path(f"{self.repo_id}@{self.commit}")

    def url(self, filename: str) -> str:
        """The resolve URL of ``filename`` at the pinned commit."""
        from huggingface_hub import hf_hub_url

        return hf_hub_url(
            self.repo_id, filename, revision=self.commit, endpoint=self.session.base_url
        )

    def describe(self) -> dict[str, Any]:
        """Provenance: endpoint, pinned commit, files with size and etag, and the bytes fetched."""
        return {
            "kind": "http-range",
            "endpoint": self.session.base_url,
            "repo_id": self.repo_id,
            "commit": self.commit,
            "files": {k.name: {"size": rf.size, "etag": rf.etag} for k, rf in self.remote.items()},
            **self.stats.as_dict(),
        }

    def reader(self) -> RangeFiles:
        return RangeFiles(self)

    # ---- resolve ---------------------------------------------------------------------------
    def resolve(self, filename: str) -> RemoteFile:
        """``HEAD`` the resolve URL (relative redirects followed) -> signed location, size, etag.

        Raises:
            CheckpointError: missing/gated file, no size, or a commit other than the pinned one.
        """
        url = self.url(filename)
        key = self.root / filename
        where = f"{self.repo_id}@{self.commit[:12]}/{filename}"
        target = url
        for _ in range(10):
            r = self.session.request("HEAD", target, where, self.stats, follow_redirects=False)
            _check_status(r, where)
            commit = r.headers.get("x-repo-commit")
            if commit and commit != self.commit:
                raise CheckpointError(
                    f"{where}: the hub answered for commit {commit}, not the pinned {self.commit}"
                )
            linked = r.headers.get("x-linked-size")
            if r.status_code in _REDIRECTS:
                location = urljoin(target, r.headers.get("location", ""))
                if linked is None and urlsplit(location).netloc == urlsplit(target).netloc:
                    target = location  # a renamed repo or a relative redirect: follow it
                    continue
                size = linked
                etag = r.headers.get("x-linked-etag") or r.headers.get("etag")
            elif r.status_code == 200:
                location = target
                size = linked or r.headers.get("content-length")
                etag = r.headers.get("x-linked-etag") or r.headers.get("etag")
            else:
                raise CheckpointError(f"{where}: unexpected HTTP {r.status_code} on resolve")
            if size is None or not size.isdigit():
                raise CheckpointError(f"{where}: the hub did not say the file's size")
            return RemoteFile(key, url, location, int(size), etag)
        raise CheckpointError(f"{where}: too many redirects on resolve")

    def reresolve(self, rf: RemoteFile, failed: str) -> None:
        """Refresh an expired signed location (after a 403); the file must be unchanged."""
        with rf.lock:
            if rf.location != failed:  # another thread refreshed it already
                return
            fresh = self.resolve(rf.key.relative_to(self.root).as_posix())
            if (fresh.size, fresh.etag) != (rf.size, rf.etag):
                raise CheckpointError(
                    f"{rf.key}: changed on the server during the run (size/etag "
                    f"{rf.size}/{rf.etag} -> {fresh.size}/{fresh.etag}); rerun"
                )
            rf.location = fresh.location
            self.stats.add(reresolves=1)

    def get_json(self, filename: str) -> Any:
        """A small JSON file of the pinned commit, fetched whole (redirects followed)."""
        where = f"{self.repo_id}@{self.commit[:12]}/{filename}"
        r = self.session.request(
            "GET", self.url(filename), where, self.stats, follow_redirects=True
        )
        _check_status(r, where)
        if len(r.content) > _MAX_JSON:
            raise CheckpointError(f"{where}: JSON file larger than {_MAX_JSON} bytes")
        self.stats.add(bytes_fetched=len(r.content))
        try:
            return json.loads(r.content)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{where}: invalid JSON ({exc})") from exc

    # ---- Range reads -----------------------------------------------------------------------
    def read_into(self, rf: RemoteFile, start: int, out: memoryview) -> None:
        """Fill ``out`` with bytes ``[start, start + len(out))`` of ``rf`` (one Range request,
        retried; a short body resumes where it stopped)."""
        sess, attempt = self.session, 0
        while len(out):
            end = start + len(out) - 1
            location = rf.location
            headers = {"range": f"bytes={start}-{end}", **sess._headers(location)}
            try:
                with sess.client.stream("GET", location, headers=headers) as r:
                    self.stats.add(requests=1)
                    status = r.status_code
                    if status == 206:
                        self._check_range(rf, r, start, end)
                        got = 0
                        for piece in r.iter_raw():
                            n = len(piece)
                            if got + n > len(out):
                                raise CheckpointError(
                                    f"{rf.key}: the server sent more bytes than the range asked"
                                )
                            out[got : got + n] = piece
                            got += n
                        self.stats.add(bytes_fetched=got)
                        if got == len(out):
                            return
                        start, out = start + got, out[got:]
                        attempt = 0 if got else attempt  # progress: a fresh set of retries
                        raise httpx.RemoteProtocolError(f"short body ({got} bytes)")
                    if status == 200:
                        raise CheckpointError(
                            f"{rf.key}: the server ignored the Range request (HTTP 200, not 206); "
                            "refusing to download the whole file silently: use --download"
                        )
                    if status == 403:
                        attempt += 1
                        sess.wait_before_retry(str(rf.key), attempt, "HTTP 403", self.stats, 1e-3)
                        self.reresolve(rf, location)
                        continue
                    if status == 429:
                        attempt += 1
                        self.stats.add(rate_limited=1)
                        sess.wait_before_retry(
                            str(rf.key), attempt, "HTTP 429", self.stats, retry_after_s(r)
                        )
                        continue
                    if status >= 500:
                        attempt += 1
                        sess.wait_before_retry(str(rf.key), attempt, f"HTTP {status}", self.stats)
                        continue
                    raise CheckpointError(
                        f"{rf.key}: HTTP {status} for bytes {start}-{end} of {rf.size}"
                    )
            except httpx.TransportError as exc:
                attempt += 1
                sess.wait_before_retry(
                    str(rf.key), attempt, f"{type(exc).__name__}: {exc}", self.stats
                )

    def _check_range(self, rf: RemoteFile, r: httpx.Response, start: int, end: int) -> None:
        found = r.headers.get("content-range", "")
        m = _CONTENT_RANGE.fullmatch(found.strip())
        if m is None or (int(m[1]), int(m[2]), int(m[3])) != (start, end, rf.size):
            raise CheckpointError(
                f"{rf.key}: wrong Content-Range {found!r} for bytes {start}-{end}/{rf.size}"
            )
        etag = r.headers.get("etag")
        if etag is None:
            return
        with rf.lock:
            if rf.range_etag is None:
                rf.range_etag = etag
            elif rf.range_etag != etag:
                raise CheckpointError(
                    f"{rf.key}: changed on the server during the run (ETag {rf.range_etag} -> "
                    f"{etag}); rerun"
                )

    def fetch(self, key: Path, start: int, stop: int, out: np.ndarray | None = None) -> Fetch:
        """Start fetching bytes ``[start, stop)`` of file ``key`` in ``part_bytes`` parts on the
        session's threads, into ``out`` (``uint8[stop - start]``, a new buffer by default);
        :meth:`Fetch.result` waits for them."""
        rf = self.remote[key]
        buf = np.empty(stop - start, np.uint8) if out is None else out
        view = buf.data
        part = self.session.settings.part_bytes
        futures = [
            self.session.pool.submit(
                self.read_into, rf, start + lo, view[lo : min(stop - start, lo + part)]
            )
            for lo in range(0, stop - start, part)
        ]
        return Fetch(buf, futures, start, part)

    # ---- open ------------------------------------------------------------------------------
    def _load(self, siblings: list[str]) -> None:
        ggufs = [s for s in siblings if s.endswith(".gguf")]
        if self.filename is not None:
            if self.filename not in siblings:
                listed = ", ".join(ggufs[:8]) or "none"
                raise CheckpointError(
                    f"'{self.spec}': no file '{self.filename}' in {self.repo_id}@"
                    f"{self.commit[:12]} (GGUF files there: {listed})"
                )
            missing = [f for f in shard_names(self.filename) if f not in siblings]
            if missing:
                raise CheckpointError(
                    f"'{self.spec}': split GGUF model is missing {', '.join(missing)}"
                )
            self._load_gguf(shard_names(self.filename))
            return
        top = [s for s in siblings if "/" not in s]
        names = set(top)
        index: str | None = None
        weights: list[str] = []
        if "model.safetensors.index.json" in names:
            index = "model.safetensors.index.json"
        elif "model.safetensors" in names:
            weights = ["model.safetensors"]
        else:
            indexes = sorted(s for s in top if s.endswith(".safetensors.index.json"))
            if len(indexes) == 1:
                index = indexes[0]
            else:
                weights = sorted(s for s in top if s.endswith(".safetensors"))
        if index is not None:
            self.index_name = index
            self.weight_map = _weight_map(self.get_json(index), f"{self.key}/{index}")
            weights = list(dict.fromkeys(self.weight_map.values()))
            missing = [w for w in weights if w not in names]
            if missing:
                raise CheckpointError(f"{self.key}/{index}: names missing shard '{missing[0]}'")
        if weights and ggufs:  # the Hugging Face layout is the repo's model; said, not silent
            self.warnings.append(
                f"hub checkpoint '{self.spec}' also holds GGUF files ({', '.join(ggufs[:4])}): "
                f"its safetensors weights are read; pass {self.repo_id}/<file>.gguf for a GGUF model"
            )
        elif gguf_files := pick_gguf_model(
            ggufs, f"hub checkpoint '{self.spec}'", f"pass {self.repo_id}/<file>.gguf[@rev]"
        ):
            self._load_gguf(gguf_files)
            return
        if not weights:
            raise CheckpointError(
                f"hub checkpoint '{self.spec}' has no .safetensors weights; rlsparse never "
                "downloads pickled .bin files from the hub. Convert it locally and pass the folder."
            )
        remote = list(self.session.pool.map(self.resolve, weights))
        self.remote = {rf.key: rf for rf in remote}
        for rf in remote:  # an LFS etag is the sha256 of the content: the resume/cache digest
            oid = (rf.etag or "").removeprefix("W/").strip('"')
            if _SHA256.fullmatch(oid):
                register_digest(rf.key, oid)
        self.files = tuple(rf.key for rf in remote)
        for rf, header in zip(remote, self.session.pool.map(self._header, remote), strict=True):
            self.headers[rf.key] = header
        if "config.json" in names:
            try:
                cfg = self.get_json("config.json")
                self.config = cfg if isinstance(cfg, dict) else {}
            except CheckpointError as exc:
                self.warnings.append(f"{exc}; tied weights detected from data only")

    def _load_gguf(self, files: list[str]) -> None:
        """Resolve a GGUF model's files (shard order) and parse their headers from Range reads."""
        self.format = "gguf"
        remote = list(self.session.pool.map(self.resolve, files))
        self.remote = {rf.key: rf for rf in remote}
        for rf in remote:
            oid = (rf.etag or "").removeprefix("W/").strip('"')
            if _SHA256.fullmatch(oid):
                register_digest(rf.key, oid)
        self.files = tuple(rf.key for rf in remote)
        for rf, (tensors, encodings) in zip(
            remote, self.session.pool.map(self._gguf_header, remote), strict=True
        ):
            self.headers[rf.key] = tensors
            self.encodings.update(encodings)

    def _gguf_header(
        self, rf: RemoteFile
    ) -> tuple[dict[str, TensorInfo], dict[str, BlockEncoding]]:
        """A GGUF file's inventory from sequential Range reads on the calling thread (this runs
        on the pool)."""

        def read(start: int, stop: int) -> bytes:
            buf = bytearray(stop - start)
            self.read_into(rf, start, memoryview(buf))
            return bytes(buf)

        s = self.session.settings
        return read_gguf_at(read, rf.size, rf.key, min(_HEAD_BYTES, s.part_bytes), s.window_bytes)

    def _header(self, rf: RemoteFile) -> dict[str, TensorInfo]:
        """Parse a file's header (read on the calling thread: this runs on the pool)."""
        first = bytearray(min(rf.size, _HEAD_BYTES))
        self.read_into(rf, 0, memoryview(first))
        hlen = header_length(rf.key, bytes(first[:8]), rf.size)
        raw = bytes(first[8 : 8 + hlen])
        if len(raw) < hlen:
            rest = bytearray(hlen - len(raw))
            self.read_into(rf, len(first), memoryview(rest))
            raw += bytes(rest)
        tensors, _ = parse_header(rf.key, raw, rf.size)
        return tensors


@dataclass
class Fetch:
    """Bytes ``[start, start + len(buf))`` of a file being fetched: the buffer and the part
    requests filling it (part ``k`` covers ``[k·part, (k+1)·part)`` of the buffer)."""

    buf: np.ndarray
    futures: list[Future]
    start: int = 0
    part: int = 1

    @property
    def end(self) -> int:
        return self.start + len(self.buf)

    def wait(self, lo: int, hi: int) -> np.ndarray:
        """The buffer once the parts covering file bytes ``[lo, hi)`` are in; raises the first
        failed part's error (all parts are then cancelled)."""
        first, last = (lo - self.start) // self.part, (hi - 1 - self.start) // self.part
        try:
            for f in self.futures[first : last + 1]:
                f.result()
        except BaseException:
            self.cancel()
            raise
        return self.buf

    def result(self) -> np.ndarray:
        """The whole filled buffer."""
        return self.wait(self.start, max(self.end, self.start + 1))

    def cancel(self) -> None:
        for f in self.futures:
            f.cancel()
        for f in self.futures:  # parts already running write into buf: let them end first
            if not f.cancelled():
                f.exception()

    def copy_into(
        self, out: np.ndarray, lo: int, refetch: Callable[[int, memoryview], None]
    ) -> None:
        """Copy file bytes ``[lo, lo + len(out))`` (inside this fetch) into ``out`` once their
        parts are in; a part cancelled before it ran (the window was dropped by a jump) is read
        again with ``refetch(start, view)``. Raises a failed part's error (all parts cancelled)."""
        hi = lo + len(out)
        first, last = (lo - self.start) // self.part, (hi - 1 - self.start) // self.part
        try:
            for k in range(first, last + 1):
                a = max(lo, self.start + k * self.part)
                b = min(hi, self.start + (k + 1) * self.part)
                if self.futures[k].cancelled():
                    refetch(a, out[a - lo : b - lo].data)
                    continue
                self.futures[k].result()
                out[a - lo : b - lo] = self.buf[a - self.start : b - self.start]
        except BaseException:
            self.cancel()
            raise


@dataclass
class Assembled:
    """Bytes ``[start, start + len(buf))`` of a read larger than a window: the pieces that live
    read-ahead windows already hold or are fetching (``held``: window, first file byte, length),
    copied from them when read, and fresh fetches of the rest written in place into ``buf``."""

    buf: np.ndarray
    start: int
    held: list[tuple[Fetch, int, int]]
    fresh: list[Fetch]
    refetch: Callable[[int, memoryview], None]

    def result(self) -> np.ndarray:
        """The whole filled buffer; the windows it reused are let go."""
        for fetch in self.fresh:
            fetch.result()
        for window, lo, n in self.held:
            window.copy_into(self.buf[lo - self.start : lo - self.start + n], lo, self.refetch)
        self.held = []
        return self.buf

    def cancel(self) -> None:
        """Cancel the fresh fetches (never the windows: they are the reader's)."""
        for fetch in self.fresh:
            fetch.cancel()
        self.held = []


def _check_status(r: httpx.Response, where: str) -> None:
    if r.status_code in (401, 403):
        raise CheckpointError(
            f"{where}: HTTP {r.status_code}: gated or private; set HF_TOKEN to a token with access"
        )
    if r.status_code == 404:
        raise CheckpointError(f"{where}: not found on {endpoint()} (HTTP 404)")


def _weight_map(data: object, where: str) -> dict[str, str]:
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{where}: corrupt index file (no 'weight_map')")
    return {str(k): str(v) for k, v in weight_map.items()}


def open_repo(spec: str, settings: StreamSettings | None = None) -> HubRepo:
    """Pin ``org/name[@rev]``'s commit (model info), resolve its weight files and read their
    headers with Range requests: the safetensors files, else the repository's one GGUF model
    (one file or a split set), or the GGUF file named as ``org/name/path/file.gguf[@rev]``.

    Raises:
        CheckpointError: offline (``HF_HUB_OFFLINE``), unreachable endpoint, unknown or gated
            repo, no weights, several GGUF models and none named, safetensors and GGUF weights
            both, corrupt headers, a server that ignores Range.
    """
    if _offline():
        raise CheckpointError(
            f"'{spec}' is not a local path and could not be fetched: HF_HUB_OFFLINE is set; "
            "pass a local folder"
        )
    sess = session(settings or StreamSettings.from_env())
    repo_id, filename, revision = split_hub_spec(spec)
    stats = StreamStats()
    url = f"{sess.base_url}/api/models/{repo_id}"
    if revision:
        url += f"/revision/{quote(revision, safe='')}"
    try:
        r = sess.request("GET", url, spec, stats, follow_redirects=True)
    except CheckpointError as exc:
        raise CheckpointError(f"'{spec}': cannot reach {sess.base_url} ({exc})") from None
    if r.status_code in (401, 403, 404):
        raise CheckpointError(
            f"'{spec}': no such model on {sess.base_url}, or it is gated/private "
            f"(HTTP {r.status_code}); check the id and revision, or set HF_TOKEN"
        )
    if r.status_code != 200:
        raise CheckpointError(f"'{spec}': model info answered HTTP {r.status_code}")
    try:
        info = r.json()
        commit = str(info["sha"])
        siblings = [str(s["rfilename"]) for s in info.get("siblings") or []]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"'{spec}': unexpected model info from {url} ({exc})") from None
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise CheckpointError(f"'{spec}': model info has no commit hash (sha={commit!r})")
    repo = HubRepo(spec, repo_id, commit, sess, filename)
    repo.stats.add(**{k: v for k, v in stats.as_dict().items()})
    repo._load(siblings)
    return repo


class _ReadSpans:
    """The byte ranges of one file read in a pass: sorted, disjoint, merged where they touch."""

    def __init__(self) -> None:
        self.spans: list[tuple[int, int]] = []

    def _after(self, at: int) -> int:
        """Index of the first span starting after byte ``at``."""
        return bisect.bisect_right(self.spans, (at, 1 << 62))

    def overlaps(self, b0: int, b1: int) -> bool:
        """Whether any of bytes ``[b0, b1)`` was read."""
        i = self._after(b0)
        return (i > 0 and self.spans[i - 1][1] > b0) or (
            i < len(self.spans) and self.spans[i][0] < b1
        )

    def next_start(self, at: int) -> int | None:
        """Where the first span after byte ``at`` starts, or None."""
        i = self._after(at)
        return self.spans[i][0] if i < len(self.spans) else None

    def add(self, b0: int, b1: int) -> None:
        """Record bytes ``[b0, b1)`` (merged with the spans they touch)."""
        i = bisect.bisect_left(self.spans, (b0, b0))
        if i and self.spans[i - 1][1] >= b0:
            i -= 1
        j = i
        while j < len(self.spans) and self.spans[j][0] <= b1:
            j += 1
        if i < j:
            b0, b1 = min(b0, self.spans[i][0]), max(b1, self.spans[j - 1][1])
        self.spans[i:j] = [(b0, b1)]


class RangeFiles:
    """The reader of a :class:`HubRepo`, with the interface of
    :class:`~rlsparse_lib.io.safetensors_io.MappedFiles`: ``words``/``prefetch``/``release``.

    Reads up to ``window_bytes`` come from read-ahead windows: per file, a window of
    ``window_bytes`` from the first read on, fetched as parallel parts; once a read passes the
    middle of the newest window the next one is fetched in the background (at most two windows per
    file, for the last :attr:`_FILES` files read), so consecutive tensors stream without a round
    trip each; a read running past the newest window's end gets the next window (where that one
    ends), never a restart at the read that would fetch the newest window's tail again.

    A small read (up to :attr:`side_bytes`) outside the windows is served by a side window of
    :attr:`_SIDE_READS` times the read, at most ``side_bytes`` (the last :attr:`_SIDE` are kept per
    file), and leaves the windows alone. Such reads are the scales of quantized weights:
    safetensors stores every float32 FP8 ``*_scale_inv`` apart from the FP8 codes, so without side
    windows every scale read would restart the codes' stream and have it fetched again. While a
    file has no windows, a read that continues a side window starts them from it.

    A jump (a read before or beyond the file's windows) parks the windows it leaves, their parts
    not yet started cancelled, in place of those parked before; a later read inside their fetched
    parts resumes that stream instead of fetching it again. A tuned side sharded unlike the base is
    read in the base's order, and such a side leaves a stream and comes back to it: a layer split
    across two tuned shards is stored at the end of the second (safetensors sorts names), read
    between the tensors stored at its start and those after them.

    Larger reads (chunks of big tensors) take what live windows of their file already hold or are
    fetching (the newest window runs up to 1.5 windows past the last small read, i.e. into the big
    tensor that follows) and fetch only the rest on its own, so read-ahead is not fetched a second
    time; :meth:`prefetch` starts the next one while the current one is compared (at most
    ``_DEPTH`` pending, each holding the windows it reuses until it is read).
    """

    _DEPTH = 2
    _SIDE = 4
    _SIDE_READS = 16
    _FILES = 2

    def __init__(self, repo: HubRepo) -> None:
        self.repo = repo
        self._window = repo.session.settings.window_bytes
        #: reads up to this size outside the windows go to side windows of this size
        self.side_bytes = min(self._window // 4, 1 << 20)
        self._pending: dict[tuple[Path, int, int], Assembled] = {}
        self._windows: dict[Path, list[Fetch]] = {}
        self._side: dict[Path, list[Fetch]] = {}
        self._recent: list[Path] = []  # files with windows, read last at the end
        #: the windows a jump left (their fetched parts), resumed by a read inside them
        self._parked: tuple[Path, list[Fetch]] | None = None
        #: per file, the byte ranges read in this pass by reads above side_bytes (merged,
        #: sorted): read-ahead stops at them; a read of bytes read before starts a new pass
        self._read: dict[Path, _ReadSpans] = {}

    def _span(self, info: TensorInfo, start: int, stop: int) -> tuple[Path, int, int]:
        return info.file, info.offset + start * info.itemsize, info.offset + stop * info.itemsize

    def words(self, info: TensorInfo, start: int, stop: int) -> np.ndarray:
        """Elements ``[start, stop)`` of ``info`` as raw unsigned words (aligned)."""
        key, b0, b1 = self._span(info, start, stop)
        word = word_dtype(info.dtype)
        if key in self._read and self._read[key].overlaps(b0, b1):  # read before: a new pass
            del self._read[key]
        pending = self._pending.pop((key, b0, b1), None)
        if pending is not None:
            raw = pending.result()
        elif b1 - b0 > self._window:
            raw = self._large(key, b0, b1).result()
        else:
            raw = self._from_window(key, b0, b1)
            if raw.ctypes.data % word.itemsize:
                raw = raw.copy()
        if b1 - b0 > self.side_bytes:  # a small read costs no more fetched again than a stall
            self._read.setdefault(key, _ReadSpans()).add(b0, b1)
        return raw.view(word)

    def _touch(self, key: Path) -> None:
        """Mark ``key`` the file read last; the windows of files read before the last
        :attr:`_FILES` are let go (a run reads its shards one after the other: without this a
        checkpoint of hundreds of shards would keep every shard's last windows)."""
        if key in self._recent:
            self._recent.remove(key)
        self._recent.append(key)
        while len(self._recent) > self._FILES:
            old = self._recent.pop(0)
            for w in (*self._windows.pop(old, []), *self._side.pop(old, [])):
                w.cancel()
            if self._parked is not None and self._parked[0] == old:
                self._parked = None
            self._read.pop(old, None)

    def _ahead(self, key: Path, start: int, stop: int) -> int:
        """The end of a speculative fetch from ``start`` of ``key`` that would end at ``stop``: cut
        where bytes already read begin (each tensor is read once) or a parked stream starts
        (reaching it resumes it); ``start`` when ``start`` itself was read."""
        spans = self._read.get(key)
        if spans is not None:
            if spans.overlaps(start, start + 1):
                return start
            nxt = spans.next_start(start)
            stop = stop if nxt is None else min(stop, nxt)
        if self._parked is not None and self._parked[0] == key:
            first = self._parked[1][0].start
            if first > start:
                stop = min(stop, first)
        return stop

    def _from_window(self, key: Path, b0: int, b1: int) -> np.ndarray:
        """Bytes ``[b0, b1)`` (at most a window) from the file's consecutive windows, or from a
        side window (see the class)."""
        self._touch(key)
        size = self.repo.remote[key].size
        held = self._windows.get(key, [])
        inside = bool(held) and held[0].start <= b0 <= held[-1].end
        if not inside:
            side = self._side.setdefault(key, [])
            hit = next((w for w in side if w.start <= b0 and b1 <= w.end), None)
            if hit is not None and held:
                return hit.wait(b0, b1)[b0 - hit.start : b1 - hit.start]
            # without windows, a read that continues a side window starts them from it
            onward = not held and any(w.start <= b0 <= w.end for w in side)
            if hit is None and b1 - b0 <= self.side_bytes and not onward:
                # the read and the next reads like it (a run of scale tensors), no more
                n = min(self.side_bytes, self._SIDE_READS * max(1, b1 - b0))
                side.append(self.repo.fetch(key, b0, min(size, b0 + n)))
                if len(side) > self._SIDE:
                    side.pop(0).cancel()
                return side[-1].wait(b0, b1)[: b1 - b0]
        wins = [w for w in held if w.end > b0]  # drop windows passed
        if not wins or wins[0].start > b0:  # a jump (first read, skipped tensors, another order)
            resumed = self._resume(key, b0)
            if held:
                self._park(key, held)
            if resumed:
                wins = resumed
            else:  # restart here, from the side window that holds the read's start if any
                side = self._side.get(key, [])
                start = next((w for w in side if w.start <= b0 < w.end), None)
                if start is not None:
                    side[:] = [w for w in side if w is not start]
                if start is None:
                    stop = max(b1, self._ahead(key, b0, min(size, b0 + self._window)))
                    start = self.repo.fetch(key, b0, stop)
                wins = [start]
        while wins[-1].end < b1:  # past the newest window: the next one, not a restart at b0,
            # which would fetch again what the newest window holds of the read
            wins.append(self.repo.fetch(key, wins[-1].end, min(size, wins[-1].end + self._window)))
        covering = [w for w in wins if w.start < b1]  # one, or two across a boundary
        newest = wins[-1]
        ahead = self._ahead(key, newest.end, min(size, newest.end + self._window))
        if newest.end < ahead and b1 > (newest.start + newest.end) // 2:  # read ahead
            wins = [w for w in wins if w.end > b1]  # those this read passed go: two at most
            wins.append(self.repo.fetch(key, newest.end, ahead))
        self._windows[key] = wins
        pieces = []
        for w in covering:
            lo, hi = max(b0, w.start), min(b1, w.end)
            pieces.append(w.wait(lo, hi)[lo - w.start : hi - w.start])
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def _park(self, key: Path, windows: list[Fetch]) -> None:
        """Keep the windows a jump leaves, their parts not yet started cancelled, in place of the
        windows parked before."""
        for w in windows:
            w.cancel()
        self._parked = (key, windows)

    def _resume(self, key: Path, b0: int) -> list[Fetch]:
        """The parked windows from the one holding byte ``b0`` of ``key`` on, cut where their
        fetched parts end, or [] when they do not hold it. A file whose tensors are not read in
        file order (the tuned side, sharded unlike the base, in the base's order) leaves a stream
        at a jump and comes back to it; without this the bytes it read ahead are fetched again."""
        if self._parked is None or self._parked[0] != key:
            return []
        fetched: list[Fetch] = []
        for w in self._parked[1]:
            k = 0
            while k < len(w.futures) and not w.futures[k].cancelled():
                if w.futures[k].exception() is not None:
                    break
                k += 1
            if k:
                fetched.append(Fetch(w.buf[: k * w.part], w.futures[:k], w.start, w.part))
            if k < len(w.futures):
                break
        if not fetched or not fetched[0].start <= b0 < fetched[-1].end:
            return []
        self._parked = None
        return [w for w in fetched if w.end > b0]

    def _large(self, key: Path, b0: int, b1: int) -> Assembled:
        """Start a read larger than a window: the pieces the file's live windows cover (they are
        consecutive, in file order) are copied from them when read, the gaps fetched in place.
        The windows are left as they are: reads up to a window still drop them as they pass."""
        self._touch(key)
        buf = np.empty(b1 - b0, np.uint8)
        held: list[tuple[Fetch, int, int]] = []
        fresh: list[Fetch] = []
        at = b0
        for window in self._windows.get(key, []):
            lo, hi = max(at, window.start), min(b1, window.end)
            if lo >= hi:
                continue
            if at < lo:
                fresh.append(self.repo.fetch(key, at, lo, buf[at - b0 : lo - b0]))
            held.append((window, lo, hi - lo))
            at = hi
        if at < b1:
            fresh.append(self.repo.fetch(key, at, b1, buf[at - b0 :]))
        rf = self.repo.remote[key]
        return Assembled(buf, b0, held, fresh, lambda a, out: self.repo.read_into(rf, a, out))

    def prefetch(self, info: TensorInfo, start: int, stop: int) -> None:
        """Start fetching ``[start, stop)`` in the background (ranges beyond a window only)."""
        span = self._span(info, start, stop)
        if span[2] - span[1] <= self._window:
            return
        if span not in self._pending and len(self._pending) < self._DEPTH:
            self._pending[span] = self._large(*span)

    def release(self, info: TensorInfo, start: int, stop: int) -> None:
        """Drop a prefetched range that was never read (the chunk's own buffer dies with it)."""
        pending = self._pending.pop(self._span(info, start, stop), None)
        if pending is not None:
            pending.cancel()

    def close(self) -> None:
        for pending in self._pending.values():
            pending.cancel()
        for window in (w for d in (self._windows, self._side) for ws in d.values() for w in ws):
            window.cancel()
        self._pending.clear()
        self._windows.clear()
        self._side.clear()
        self._recent.clear()
        self._parked = None
        self._read.clear()
