"""Benchmark `rlsparse diff` against the numpy floor, `cat`, and the paper's approach.

Generates bf16 Llama-shaped pairs in 4 shards with 20% of every tensor changed by one ULP (cached
under --out), warms the page cache, then times each tool as a subprocess (wall time and peak RSS
from GNU time; median of --repeat runs, the paper's approach included). The paper's approach
loads both models whole (~10x a checkpoint in RAM), so it runs on the smaller pair, next to
`rlsparse diff` on that pair.

usage: python bench/diff_bench.py [--out bench/out] [--repeat 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rlsparse_lib.io.synthetic import LlamaShape, one_ulp_pair, write_pair

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
PAIRS = {
    # the peers' test pair (392.7M parameters), used for the paper's approach
    "small": LlamaShape(
        vocab=32000, hidden=1024, intermediate=3072, layers=24, heads=16, kv_heads=16
    ),
    # ~1.0B, TinyLlama-like widths
    "1b": LlamaShape(vocab=32000, hidden=2048, intermediate=5632, layers=20, heads=32, kv_heads=4),
    # ~2.0B: same widths, 2x the layers, to show RSS does not grow with model size
    "2b": LlamaShape(vocab=32000, hidden=2048, intermediate=5632, layers=42, heads=32, kv_heads=4),
}
QUICK = {
    "small": LlamaShape(vocab=1000, hidden=128, intermediate=384, layers=4, heads=4, kv_heads=4),
    "1b": LlamaShape(vocab=2000, hidden=256, intermediate=768, layers=4, heads=4, kv_heads=4),
    "2b": LlamaShape(vocab=2000, hidden=256, intermediate=768, layers=8, heads=4, kv_heads=4),
}


def ensure_pair(root: Path, name: str, shape: LlamaShape) -> tuple[Path, Path]:
    folder = root / "pairs" / name
    marker = folder / "spec.json"
    spec = json.dumps({"shape": shape.__dict__, "frac": 0.2, "seed": 0, "shards": 4})
    base, tuned = folder / "base", folder / "tuned"
    if not (marker.exists() and marker.read_text() == spec):
        print(f"generating {name} pair ({shape.n_params / 1e9:.2f}B parameters) ...", flush=True)
        write_pair(
            base, tuned, shape.tensors(), one_ulp_pair(0.2, seed=0), shards=4, config=shape.config()
        )
        marker.write_text(spec)
    return base, tuned


def measure(cmd: list[str], repeat: int, capture: bool = True) -> dict:
    """Median wall time and peak RSS over ``repeat`` runs (RSS from GNU time).

    A child forked straight from this (large) Python process would inherit its resident-set
    high-water mark; going through /usr/bin/time gives the command's own peak.
    """
    walls, rss, out = [], [], ""
    for _ in range(repeat):
        with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
            stdout_to = subprocess.PIPE if capture else subprocess.DEVNULL
            t0 = time.perf_counter()
            proc = subprocess.run(
                ["/usr/bin/time", "-f", "%M", "-o", tf.name, *cmd],
                stdout=stdout_to,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"{cmd} failed with exit code {proc.returncode}")
            walls.append(time.perf_counter() - t0)
            kib = tf.read().split()[-1]
        rss.append(int(kib) * 1024)
        out = proc.stdout or ""
    return {
        "wall_s": statistics.median(walls),
        "walls": walls,
        "peak_rss_bytes": max(rss),
        "stdout": out,
    }


def loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


def files(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.iterdir() if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, default=HERE / "out")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--quick", action="store_true", help="tiny pairs: check the script, not the numbers"
    )
    args = ap.parse_args()
    shapes = QUICK if args.quick else PAIRS
    args.out.mkdir(parents=True, exist_ok=True)
    rlsparse = str(BIN / "rlsparse")
    # byte-compile the package as an ordinary install would, so no run pays for compiling sources
    # (this sandbox sets PYTHONDONTWRITEBYTECODE; an editable install is not compiled by pip)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(HERE.parent / "rlsparse_lib")])
    results: dict = {"loadavg_before": loadavg(), "runs": {}}

    for name in ("1b", "2b", "small"):
        base, tuned = ensure_pair(args.out, name, shapes[name])
        pair_bytes = sum(os.path.getsize(f) for f in files(base) + files(tuned))
        measure(["cat", *files(base), *files(tuned)], 1, capture=False)  # warm the page cache
        runs = {
            "cat": measure(["cat", *files(base), *files(tuned)], args.repeat, capture=False),
            "numpy floor": measure(
                [sys.executable, str(HERE / "numpy_floor.py"), str(base), str(tuned)], args.repeat
            ),
            "rlsparse diff": measure([rlsparse, "diff", str(base), str(tuned)], args.repeat),
        }
        json_out = args.out / f"{name}.report.json"
        measure([rlsparse, "diff", str(base), str(tuned), "-q", "--json", str(json_out)], 1)
        rep = json.loads(json_out.read_text())
        floor = json.loads(runs["numpy floor"]["stdout"])
        if name == "small":
            runs["paper approach"] = measure(
                [sys.executable, str(HERE / "paper_approach.py"), str(base), str(tuned)],
                args.repeat,
            )
            paper = json.loads(runs["paper approach"]["stdout"].strip().splitlines()[-1])
            results.setdefault("checks", {})["paper_sparsity_bitwise_equal"] = (
                paper["sparsity"] == rep["sparsity"]
            )
        results.setdefault("checks", {})[f"{name}: floor counts equal"] = (
            floor["n_changed"] == rep["n_changed"]
            and floor["n_unchanged_1e-05"] == rep["tolerances"]["1e-05"]["n_unchanged"]
        )
        for r in runs.values():
            r.pop("stdout")
        results["runs"][name] = {
            "n_params": rep["n_params"],
            "pair_bytes": pair_bytes,
            "sparsity": rep["sparsity"],
            "tools": runs,
        }
    tiny = ensure_pair(args.out, "startup", QUICK["small"])
    results["startup"] = {
        "rlsparse --version": measure([rlsparse, "--version"], args.repeat)["wall_s"],
        "rlsparse diff (tiny pair)": measure(
            [rlsparse, "diff", str(tiny[0]), str(tiny[1]), "-q"], args.repeat
        )["wall_s"],
    }
    results["loadavg_after"] = loadavg()
    (args.out / "diff_bench.json").write_text(json.dumps(results, indent=1))
    print(render(results))


def render(res: dict) -> str:
    gib = 1024**3
    lines = [
        "| pair | tool | wall (s) | peak RSS (GiB) | GB/s of pair | vs floor |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, run in res["runs"].items():
        floor = run["tools"]["numpy floor"]["wall_s"]
        for tool, r in run["tools"].items():
            gbs = run["pair_bytes"] / r["wall_s"] / 1e9
            lines.append(
                f"| {name} ({run['n_params'] / 1e9:.2f}B, {run['pair_bytes'] / 1e9:.1f} GB) | {tool} | "
                f"{r['wall_s']:.2f} | {r['peak_rss_bytes'] / gib:.2f} | {gbs:.2f} | {r['wall_s'] / floor:.2f}x |"
            )
    small = res["runs"]["small"]["tools"]
    if "paper approach" in small:
        p, r = small["paper approach"], small["rlsparse diff"]
        lines.append("")
        lines.append(
            f"paper approach / rlsparse on the small pair: {p['wall_s'] / r['wall_s']:.1f}x time, "
            f"{p['peak_rss_bytes'] / r['peak_rss_bytes']:.1f}x peak RSS"
        )
    lines.append(f"start-up: {res['startup']}")
    lines.append(
        f"checks: {res['checks']}; loadavg before {res['loadavg_before']}, after {res['loadavg_after']}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
