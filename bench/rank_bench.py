"""Benchmark `rlsparse rank` on CPU: one 4096×4096 bf16 update, and many matrices with workers.

Case `4096`: a checkpoint pair holding one 4096×4096 bf16 matrix whose update mimics RL with fp32
master weights (Adam-like steps, sub-ULP updates absorbed), ranked with the paper's rule (float32
SVD) at 1 thread and at all threads. Case `workers`: 8 matrices of 2048×2048, one worker (all
threads in each SVD) vs one worker per core (one thread each). Each run is a subprocess: wall time
and peak RSS from GNU time (as in overlap_bench.py), the ranking time from the JSON provenance; /proc/loadavg is recorded
(the machine may be shared; multi-threaded LAPACK suffers badly when another process holds a core).

usage: python bench/rank_bench.py [--out bench/out] [--repeat 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from overlap_bench import run as run_measured

from rlsparse_lib.io.synthetic import fp32_master_update, write_pair

HERE = Path(__file__).resolve().parent
RLSPARSE = [sys.executable, "-m", "rlsparse_lib.cli"]


def ensure(folder: Path, tensors: list[tuple[str, tuple[int, ...]]]) -> tuple[Path, Path]:
    spec = folder / "spec.json"
    text = json.dumps({"tensors": tensors, "v": 1})
    base, tuned = folder / "base", folder / "tuned"
    if not (spec.exists() and spec.read_text() == text):
        write_pair(base, tuned, tensors, fp32_master_update(1e-6, 200, seed=0))
        spec.write_text(text)
    return base, tuned


def run(cmd: list[str], js: Path) -> dict:
    r = run_measured(cmd)
    d = json.loads(js.read_text())
    return dict(r, rank_s=d["provenance"]["seconds"], ranks=[m["rank"] for m in d["matrices"]])


def loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


def measure(base: Path, tuned: Path, out: Path, repeat: int, extra: list[str]) -> dict:
    js = out / "rank.json"
    runs = [
        run([*RLSPARSE, "rank", str(base), str(tuned), "--json", str(js), "-q", *extra], js)
        for _ in range(repeat)
    ]
    return {
        "args": extra,
        "wall_s_median": statistics.median(r["wall_s"] for r in runs),
        "rank_s_median": statistics.median(r["rank_s"] for r in runs),
        "rank_s_all": [r["rank_s"] for r in runs],
        "peak_rss_bytes_max": max(r["peak_rss_bytes"] for r in runs),
        "ranks": runs[-1]["ranks"],
        "loadavg_end": loadavg(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, default=HERE / "out")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--quick", action="store_true", help="small matrices (a smoke run of this script)"
    )
    args = ap.parse_args()
    n, m = (256, 128) if args.quick else (4096, 2048)
    cpus = os.cpu_count() or 1
    root = args.out / ("rank_quick" if args.quick else "rank")
    one = ensure(root / "one", [("model.layers.0.self_attn.q_proj.weight", (n, n))])
    many = ensure(
        root / "many", [(f"model.layers.{i}.mlp.up_proj.weight", (m, m)) for i in range(8)]
    )
    results: dict = {"cpus": cpus, "loadavg_start": loadavg()}
    print(f"rank of one {n}x{n} update ...", flush=True)
    results[f"{n}_threads_1"] = measure(*one, root, args.repeat, ["--threads", "1"])
    results[f"{n}_threads_all"] = measure(
        *one, root, args.repeat, ["--threads", str(cpus), "--workers", "1"]
    )
    print(f"rank of 8 matrices {m}x{m}: 1 worker vs {cpus} workers ...", flush=True)
    results["many_workers_1"] = measure(
        *many, root, args.repeat, ["--workers", "1", "--threads", str(cpus)]
    )
    results["many_workers_all"] = measure(
        *many, root, args.repeat, ["--workers", str(cpus), "--threads", str(cpus)]
    )
    results["loadavg_end"] = loadavg()
    (args.out / "rank_bench.json").write_text(json.dumps(results, indent=1))
    for key, r in results.items():
        if isinstance(r, dict):
            print(
                f"{key:<22} rank {r['rank_s_median']:.2f} s (runs {', '.join(f'{x:.2f}' for x in r['rank_s_all'])}); "
                f"CLI wall {r['wall_s_median']:.2f} s; peak RSS {r['peak_rss_bytes_max'] / 2**20:.0f} MiB; "
                f"ranks {sorted(set(r['ranks']))}; loadavg after {r['loadavg_end']}"
            )
    print(
        f"loadavg start {results['loadavg_start']} end {results['loadavg_end']}; results: {args.out / 'rank_bench.json'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
