"""The loopback hub stand-in (``tests/hub_standin.py``) in its own process, for the benchmarks
that stream over it (server and client then do not share a GIL).

    with served({"org/base": folder_a, "org/tuned": folder_b}) as env:
        subprocess.run([...], env=env)   # HF_ENDPOINT points at the stand-in

Run as a script (``python bench/standin_process.py '<json repos>'``) it serves until its stdin
closes, after printing the endpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def served(
    repos: dict[str, Path], link_bytes_per_s: float | None = None
) -> Iterator[dict[str, str]]:
    """Serves ``repos`` (repo id -> folder), over a link of ``link_bytes_per_s`` if given (else as
    fast as loopback); yields the environment that points rlsparse at it."""
    server = subprocess.Popen(
        [
            sys.executable,
            __file__,
            json.dumps({k: str(v) for k, v in repos.items()}),
            str(link_bytes_per_s or 0),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        endpoint = server.stdout.readline().strip()
        yield {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0"}
    finally:
        server.terminate()
        server.wait()


def _serve(repos: str, link_bytes_per_s: float) -> None:
    sys.path.insert(0, str(ROOT))
    from tests.hub_standin import HubStandin

    with HubStandin({k: Path(v) for k, v in json.loads(repos).items()}) as hub:
        hub.link_bytes_per_s = link_bytes_per_s or None
        print(hub.endpoint, flush=True)
        sys.stdin.read()  # until the parent closes the pipe


if __name__ == "__main__":
    _serve(sys.argv[1], float(sys.argv[2]))
