"""Benchmark mask overlap on two 7B-sized masks (Llama-2-7B shapes, ≈0.84 GB packed each).

Mask 1 is random bytes thinned to ~25% density (written tensor by tensor); mask 2 is made by
`rlsparse mask random MASK1 --seed 1` (global matched-density random mask), which is timed too.
Both are cached under --out. The page cache is warmed, then `rlsparse overlap MASK1 MASK2 --json`
runs as a subprocess --repeat times: wall time, peak RSS from GNU time (see `run`); the overlap pass's own
time (without interpreter start-up and imports) is read from the JSON provenance, so the
throughput is mask bytes read / pass time. /proc/loadavg is recorded before and after (the
machine may be shared). Target: >= 2 GB/s of mask data, peak RSS <= 1 GB.

With --binade, a 1B-parameter bf16 base checkpoint is generated (≈2 GB) and the per tensor ×
|θ0| binade baseline is timed as well (θ0's words are read alongside the masks).

usage: python bench/overlap_bench.py [--out bench/out] [--repeat 3] [--binade] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from rlsparse_lib.io.maskfile import MaskWriter, packed_size
from rlsparse_lib.io.synthetic import LlamaShape, one_ulp_pair, write_pair

HERE = Path(__file__).resolve().parent
RLSPARSE = [sys.executable, "-m", "rlsparse_lib.cli"]
SHAPES = {
    "7b": LlamaShape(
        vocab=32000, hidden=4096, intermediate=11008, layers=32, heads=32, kv_heads=32
    ),
    "1b": LlamaShape(vocab=32000, hidden=2048, intermediate=5632, layers=20, heads=32, kv_heads=4),
}
QUICK = {
    "7b": LlamaShape(vocab=2000, hidden=256, intermediate=768, layers=4, heads=4, kv_heads=4),
    "1b": LlamaShape(vocab=1000, hidden=128, intermediate=384, layers=4, heads=4, kv_heads=4),
}
CHUNK = 1 << 24


def write_random_mask(path: Path, shape: LlamaShape, seed: int) -> None:
    """~25% density: the AND of two uniform random byte streams, tensor by tensor."""
    rng = np.random.default_rng(seed)
    shapes = {n: s for n, s in shape.tensors()}
    with MaskWriter(path, shapes, {"kind": "bench", "density": 0.25, "seed": seed}, {}) as w:
        for name, s in shapes.items():
            numel = math.prod(s)
            nbytes = packed_size(numel)
            for start in range(0, nbytes, CHUNK):
                stop = min(nbytes, start + CHUNK)
                a = np.frombuffer(rng.bytes(stop - start), np.uint8)
                b = np.frombuffer(rng.bytes(stop - start), np.uint8)
                chunk = a & b
                if stop == nbytes and numel % 8:
                    chunk[-1] &= np.uint8((1 << (numel % 8)) - 1)
                w.write(name, chunk)


def run(cmd: list[str]) -> dict:
    """Wall time and peak RSS of one subprocess.

    Peak RSS comes from GNU time (``/usr/bin/time -f %M``) when present: the command is then a
    grandchild forked from that small process. A child forked straight from this script would
    report at least this script's own peak (Linux carries the pre-exec high-water mark into the
    child's ru_maxrss), which is large after generating inputs. Without GNU time: wait4.
    """
    gnu_time = Path("/usr/bin/time")
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        full = [str(gnu_time), "-f", "%M", "-o", tf.name, *cmd] if gnu_time.exists() else cmd
        t0 = time.perf_counter()
        proc = subprocess.Popen(full, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        err = proc.stderr.read() if proc.stderr else ""
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {err}")
        if gnu_time.exists():
            rss, how = int(tf.read().split()[-1]) * 1024, "GNU time %M"
        else:
            rss, how = usage.ru_maxrss * 1024, "wait4 ru_maxrss"
    return {"wall_s": wall, "peak_rss_bytes": rss, "rss_from": how}


def warm(*paths: Path) -> None:
    for p in paths:
        with p.open("rb") as fh:
            while fh.read(1 << 26):
                pass


def loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


def measure_overlap(masks: list[Path], out: Path, repeat: int, extra: list[str]) -> dict:
    walls, rss, passes, bytes_read = [], [], [], 0
    for i in range(repeat):
        js = out / f"overlap_{i}.json"
        r = run([*RLSPARSE, "overlap", *map(str, masks), "--json", str(js), "-q", *extra])
        prov = json.loads(js.read_text())["provenance"]
        walls.append(r["wall_s"])
        rss.append(r["peak_rss_bytes"])
        passes.append(prov["seconds"])
        bytes_read = prov["mask_bytes_read"] + prov["base_bytes_read"]
    best = min(passes)
    return {
        "wall_s_median": statistics.median(walls),
        "pass_s_median": statistics.median(passes),
        "pass_s_best": best,
        "bytes_read": bytes_read,
        "gb_per_s_median": bytes_read / statistics.median(passes) / 1e9,
        "gb_per_s_best": bytes_read / best / 1e9,
        "peak_rss_bytes_max": max(rss),
        "peak_rss_bytes_all": rss,
        "walls": walls,
        "passes": passes,
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, default=HERE / "out")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--binade", action="store_true", help="also time the binade baseline (1B base)")
    ap.add_argument("--quick", action="store_true", help="tiny shapes (a smoke run of this script)")
    args = ap.parse_args()
    shapes = QUICK if args.quick else SHAPES
    folder = args.out / ("masks_quick" if args.quick else "masks")
    folder.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
        "loadavg_start": loadavg(),
    }
    m1, m2 = folder / "7b_a.mask.safetensors", folder / "7b_b.mask.safetensors"
    spec = folder / "7b_spec.json"
    spec_text = json.dumps({"shape": shapes["7b"].__dict__, "v": 1})
    if not (spec.exists() and spec.read_text() == spec_text and m1.exists() and m2.exists()):
        print(f"generating mask 1 ({shapes['7b'].n_params / 1e9:.2f}B weights) ...", flush=True)
        write_random_mask(m1, shapes["7b"], seed=0)
        print("generating mask 2 with `rlsparse mask random` (timed) ...", flush=True)
        r = run([*RLSPARSE, "mask", "random", str(m1), "-o", str(m2), "--seed", "1", "-q"])
        results["random_mask_global"] = dict(r, loadavg=loadavg())
        spec.write_text(spec_text)
    size = m1.stat().st_size + m2.stat().st_size
    results["mask_files_bytes"] = size
    warm(m1, m2)
    print(
        f"overlap of two {m1.stat().st_size / 1e9:.2f} GB masks, {args.repeat} runs ...", flush=True
    )
    results["overlap_7b"] = measure_overlap([m1, m2], folder, args.repeat, [])
    results["overlap_7b"]["loadavg_end"] = loadavg()
    if args.binade:
        pair = args.out / ("pairs_quick" if args.quick else "pairs") / "1b_overlap"
        base = pair / "base"
        if (
            not (base / "model.safetensors.index.json").exists()
            and not (base / "model.safetensors").exists()
        ):
            print("generating a 1B bf16 base checkpoint ...", flush=True)
            write_pair(base, pair / "tuned", shapes["1b"].tensors(), one_ulp_pair(0.2), shards=4)
        b1, b2 = folder / "1b_a.mask.safetensors", folder / "1b_b.mask.safetensors"
        if not (b1.exists() and b2.exists()):
            write_random_mask(b1, shapes["1b"], seed=2)
            write_random_mask(b2, shapes["1b"], seed=3)
        warm(b1, b2, *sorted(base.glob("*.safetensors")))
        res = measure_overlap([b1, b2], folder, args.repeat, ["--base", str(base)])
        res["loadavg_end"] = loadavg()
        results["overlap_1b_binade"] = res
    results["loadavg_end"] = loadavg()
    (args.out / "overlap_bench.json").write_text(json.dumps(results, indent=1))
    o = results["overlap_7b"]
    print(
        f"overlap 7B: {o['bytes_read'] / 1e9:.2f} GB of masks; pass {o['pass_s_median']:.2f} s "
        f"({o['gb_per_s_median']:.2f} GB/s median, {o['gb_per_s_best']:.2f} best); "
        f"CLI wall {o['wall_s_median']:.2f} s; peak RSS {o['peak_rss_bytes_max'] / 2**20:.0f} MiB; "
        f"loadavg {results['loadavg_start']} -> {o['loadavg_end']}"
    )
    if "random_mask_global" in results:
        r = results["random_mask_global"]
        print(
            f"mask random (global, 7B): {r['wall_s']:.1f} s, peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB"
        )
    if args.binade:
        o = results["overlap_1b_binade"]
        print(
            f"overlap 1B with binade baseline: {o['bytes_read'] / 1e9:.2f} GB read (masks + θ0); "
            f"pass {o['pass_s_median']:.2f} s ({o['gb_per_s_median']:.2f} GB/s); "
            f"peak RSS {o['peak_rss_bytes_max'] / 2**20:.0f} MiB"
        )
    print(f"results: {args.out / 'overlap_bench.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
