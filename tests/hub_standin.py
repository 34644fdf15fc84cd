"""A loopback stand-in for the Hugging Face hub, with fault injection (for tests and benches).

Two HTTP/1.1 servers on 127.0.0.1 (never another address):

* the **hub** origin (point ``HF_ENDPOINT`` at :attr:`HubStandin.endpoint`):
  ``GET /api/models/{id}[/revision/{rev}]`` -> ``{"id", "sha", "siblings"}``;
  ``HEAD|GET /{id}/resolve/{rev}/{file}`` -> a JSON file's bytes (``200``), or for a safetensors
  or GGUF file a ``302`` to a signed location on the CDN origin with ``X-Linked-Size``,
  ``X-Linked-ETag`` and ``X-Repo-Commit``, as the hub does for LFS files;
* the **CDN** origin: ``GET /{id}/{file}?sig=N`` answers ``Range: bytes=a-b`` with ``206`` and
  ``Content-Range``; ``ETag`` is the sha256 of the file's current bytes.

Faults (attributes, changeable while serving): ``expire_every`` (after every N CDN requests
served, all signed locations issued so far expire: ``403``), ``cut_bodies`` (the next N range
answers stop after half the body and close the connection), ``rate_limit`` (the next N CDN
requests get ``429`` with ``Retry-After: retry_after``), ``ignore_range`` (answer ``200`` with the
whole file), ``server_errors`` (the next N CDN requests get ``503``), ``wrong_range`` (a
``Content-Range`` one byte off) and :meth:`replace` (new bytes under the same commit, as a
misbehaving mirror would). ``log`` records every request (and whether it carried a token).

``link_bytes_per_s`` (benches) paces the bodies as one link of that many bytes per second
shared by all connections, as a real link to the hub would be.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

_LFS_SUFFIX = (".safetensors", ".gguf")
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


class _Blob:
    """One served file: its bytes (a read-only map of the file) and sha256."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with path.open("rb") as fh:
            self.data: Any = (
                mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if path.stat().st_size else b""
            )
        h = hashlib.sha256()
        h.update(self.data)
        self.sha256 = h.hexdigest()

    def __len__(self) -> int:
        return len(self.data)


class _Link:
    """One link shared by every connection: a piece of ``n`` bytes takes the next ``n / rate``
    seconds of it (reserved in arrival order) and is sent once its slot has passed."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._free = time.monotonic()  # when the link is next free
        self._lock = threading.Lock()

    def send(self, wfile: Any, payload: bytes | memoryview, piece: int = 1 << 18) -> None:
        view = memoryview(payload)
        for at in range(0, len(view), piece):
            chunk = view[at : at + piece]
            with self._lock:
                self._free = max(self._free, time.monotonic()) + len(chunk) / self.rate
                done = self._free
            time.sleep(max(0.0, done - time.monotonic()))
            wfile.write(chunk)


class HubStandin:
    """Serve folders as hub repositories: ``HubStandin({"org/name": folder})``; use as a context
    manager (servers on free loopback ports, stopped at exit)."""

    def __init__(self, repos: dict[str, Path]) -> None:
        self._lock = threading.Lock()
        self.repos: dict[str, dict[str, _Blob]] = {}
        self.commits: dict[str, str] = {}
        for repo_id, folder in repos.items():
            self.repos[repo_id] = {  # files in subfolders as "sub/file", like the hub's siblings
                p.relative_to(folder).as_posix(): _Blob(p)
                for p in sorted(Path(folder).rglob("*"))
                if p.is_file()
            }
            self.commits[repo_id] = hashlib.sha1(repo_id.encode()).hexdigest()
        self.expire_every = 0
        self.cut_bodies = 0
        self.rate_limit = 0
        self.retry_after = "1"
        self.ignore_range = False
        self.server_errors = 0
        self.wrong_range = False
        #: bytes per second of the CDN's link (None: as fast as loopback)
        self.link_bytes_per_s: float | None = None
        self._pacer: _Link | None = None
        #: gated repositories: the hub origin answers 401 without ``Authorization: Bearer <token>``
        self.gated: dict[str, str] = {}
        #: (server, method, path, status, Range header, whether an Authorization header came)
        self.log: list[tuple[str, str, str, int, str, bool]] = []
        self._generation = 0
        self._cdn_requests = 0
        self._hub = ThreadingHTTPServer(("127.0.0.1", 0), self._handler("hub"))
        self._cdn = ThreadingHTTPServer(("127.0.0.1", 0), self._handler("cdn"))
        for srv in (self._hub, self._cdn):
            srv.daemon_threads = True
            srv.handle_error = lambda request, address: None  # type: ignore[method-assign]  # resets are the faults
        self._threads = [
            threading.Thread(target=s.serve_forever, daemon=True) for s in (self._hub, self._cdn)
        ]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._hub.server_address[1]}"

    @property
    def cdn(self) -> str:
        return f"http://127.0.0.1:{self._cdn.server_address[1]}"

    def replace(self, repo_id: str, name: str, path: Path) -> None:
        """Serve ``path``'s bytes as ``name`` from now on (same commit: a changed file)."""
        with self._lock:
            self.repos[repo_id][name] = _Blob(path)

    def requests(self, server: str, status: int | None = None) -> list[tuple]:
        """Logged requests of ``server`` (``hub``/``cdn``), optionally with a given status."""
        with self._lock:
            return [e for e in self.log if e[0] == server and (status is None or e[3] == status)]

    def __enter__(self) -> HubStandin:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for srv in (self._hub, self._cdn):
            srv.shutdown()
            srv.server_close()

    # ---- request handling ------------------------------------------------------------------
    def _handler(self, server: str) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and a small body: no 40 ms ACK stall

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                if server == "hub":
                    status = standin._hub_answer(self, body)
                else:
                    status = standin._cdn_answer(self)
                entry = (server, self.command, self.path, status, self.headers.get("range", ""))
                with standin._lock:
                    standin.log.append((*entry, "authorization" in self.headers))

        return Handler

    def _send(
        self,
        h: BaseHTTPRequestHandler,
        status: int,
        headers: dict[str, str],
        payload: bytes | memoryview = b"",
        body: bool = True,
        length: int | None = None,
    ) -> int:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(payload) if length is None else length))
        h.end_headers()
        rate = self.link_bytes_per_s
        if body and payload and rate:
            with self._lock:
                if self._pacer is None or self._pacer.rate != rate:
                    self._pacer = _Link(rate)
                pacer = self._pacer
            pacer.send(h.wfile, payload)
        elif body and payload:
            h.wfile.write(payload)
        return status

    def _hub_answer(self, h: BaseHTTPRequestHandler, body: bool) -> int:
        path = unquote(urlsplit(h.path).path)
        for repo_id, token in self.gated.items():
            if f"/{repo_id}/" in f"{path}/" and h.headers.get("authorization") != f"Bearer {token}":
                return self._send(h, 401, {}, b"gated", body)
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/(.+))?", path)
        if m:
            repo_id = m[1]
            if repo_id not in self.repos or (m[2] and m[2] not in ("main", self.commits[repo_id])):
                return self._send(h, 404, {}, b'{"error":"not found"}', body)
            info = {
                "id": repo_id,
                "sha": self.commits[repo_id],
                "siblings": [{"rfilename": n} for n in self.repos[repo_id]],
            }
            return self._send(
                h, 200, {"Content-Type": "application/json"}, json.dumps(info).encode(), body
            )
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if not m or m[1] not in self.repos or m[3] not in self.repos[m[1]]:
            return self._send(h, 404, {}, b"not found", body)
        repo_id, rev, name = m[1], m[2], m[3]
        if rev not in ("main", self.commits[repo_id]):
            return self._send(h, 404, {}, b"no such revision", body)
        with self._lock:
            blob = self.repos[repo_id][name]
            gen = self._generation
        common = {"X-Repo-Commit": self.commits[repo_id], "ETag": f'"{blob.sha256}"'}
        if not name.endswith(_LFS_SUFFIX):
            return self._send(h, 200, common, blob.data[:], body)
        location = f"{self.cdn}/{repo_id}/{name}?sig={gen}"
        headers = {
            **common,
            "Location": location,
            "X-Linked-Size": str(len(blob)),
            "X-Linked-ETag": f'"{blob.sha256}"',
        }
        return self._send(h, 302, headers, b"", body)

    def _cdn_answer(self, h: BaseHTTPRequestHandler) -> int:
        url = urlsplit(h.path)
        parts = unquote(url.path).lstrip("/").split("/", 2)
        repo_id, name = "/".join(parts[:2]), parts[2] if len(parts) == 3 else ""
        sig = parse_qs(url.query).get("sig", ["-1"])[0]
        with self._lock:
            expired = not sig.isdigit() or int(sig) < self._generation
            if not expired:  # locations expire after every expire_every requests served
                self._cdn_requests += 1
                if self.expire_every and self._cdn_requests % self.expire_every == 0:
                    self._generation += 1
            fault = None
            if self.rate_limit:
                self.rate_limit, fault = self.rate_limit - 1, "429"
            elif self.server_errors:
                self.server_errors, fault = self.server_errors - 1, "503"
            blob = self.repos.get(repo_id, {}).get(name)
        if blob is None:
            return self._send(h, 404, {}, b"no such object")
        if expired:
            return self._send(h, 403, {}, b"signature expired")
        if fault == "429":
            return self._send(h, 429, {"Retry-After": self.retry_after}, b"slow down")
        if fault == "503":
            return self._send(h, 503, {}, b"unavailable")
        etag = {"ETag": f'"{blob.sha256}"', "Accept-Ranges": "bytes"}
        m = _RANGE.fullmatch(h.headers.get("range", ""))
        if self.ignore_range or m is None:
            return self._send(h, 200, etag, memoryview(blob.data))
        a = int(m[1])
        b = min(len(blob) - 1, int(m[2]) if m[2] else len(blob) - 1)
        if a > b:
            return self._send(h, 416, {"Content-Range": f"bytes */{len(blob)}"}, b"")
        payload = memoryview(blob.data)[a : b + 1]
        shift = (
            1 if self.wrong_range else 0
        )  # a broken proxy: the range it names is not the one asked
        headers = {**etag, "Content-Range": f"bytes {a + shift}-{b + shift}/{len(blob)}"}
        with self._lock:
            cut = self.cut_bodies > 0
            if cut:
                self.cut_bodies -= 1
        if cut:  # promise the whole range, send half, drop the connection
            self._send(h, 206, headers, payload[: len(payload) // 2], length=len(payload))
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)
            return 206
        return self._send(h, 206, headers, payload)
