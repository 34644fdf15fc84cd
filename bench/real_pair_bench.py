"""Benchmark the quantized diff on a real training pair: a bf16 run pair next to its FP8 and
MXFP4 copies (``rlsparse quantize``), in the same run (issue 12 item 8, on real weights).

The synthetic pairs of ``quant_bench.py`` change a set share of codes; a real RL pair stored
quantized changes few (notebook 14: 1.5 % of FP8 codes, 0.1 % of MXFP4 codes after 20 GRPO steps),
and has many tensors of every size, so per-call costs count. Makes the copies of ``--base`` and
``--tuned`` under ``--work`` (and, where the run kept them, FP8 copies of the fp32 master weights
with the rest cast to bf16), warms the page cache, then times ``diff_checkpoints`` in a process
of its own per pair, as one ``rlsparse diff`` per pair is (what it reports as "took": no
interpreter start-up), ``--repeat`` times, and reports the median's bytes read per second (both
sides' weight files), elements per second, their ratio to the bf16 pair's, and the process's peak
RSS.

``--tile N`` first stacks N copies of every decoder-layer tensor along its rows, in both
checkpoints: a pair N times the size with the run's own values and changes, in as many tensors,
N times taller (``--tile 9``: 0.99 B elements in 210 matrices of 1.0-8.0 M elements, about the
tensors of a 1 B model; repeating layers instead would give a 1 B model ten times as many small
tensors, whose per-tensor costs are no 1 B model's). Its copies skip the fp32 masters.

usage: nice -n 10 python bench/real_pair_bench.py [--base DIR] [--tuned DIR] [--repeat 9]
       [--threads N] [--tile N] [--work DIR] [--out bench/out/quant]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rlsparse_lib.diff.config import DiffConfig
from rlsparse_lib.diff.engine import diff_checkpoints

HERE = Path(__file__).resolve().parent
RUN = HERE.parent / "data" / "runs" / "cpu-grpo"


def _bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def pairs(base: Path, tuned: Path, work: Path) -> dict[str, tuple[Path, Path]]:
    """``{label: (base, tuned)}``: the pair as stored, its FP8 and MXFP4 copies, and the FP8
    copies of its fp32 master weights when both checkpoints hold them (``<ckpt>/fp32``)."""
    from rlsparse_lib.io.quantize import quantize_checkpoint  # torch: kept out of the timed runs

    out = {"bf16": (base, tuned)}
    jobs = [("FP8", "fp8_block", ""), ("MXFP4", "mxfp4", "")]
    if (base / "fp32").is_dir() and (tuned / "fp32").is_dir():
        jobs.append(("FP8 of fp32 masters", "fp8_block", "fp32"))
    for label, scheme, sub in jobs:
        sides = []
        for side, src in (("base", base), ("tuned", tuned)):
            dst = work / f"{scheme}{'-' + sub if sub else ''}-{side}"
            if not dst.is_dir():
                rest = "bfloat16" if sub else None
                quantize_checkpoint(src / sub, dst, scheme, rest_dtype=rest, progress=False)
            sides.append(dst)
        out[label] = (sides[0], sides[1])
    return out


def tiled(src: Path, dst: Path, times: int) -> Path:
    """``dst``: checkpoint ``src`` (one ``model.safetensors``) with ``times`` copies of each
    decoder-layer tensor stacked along its rows, made once."""
    import torch  # kept out of the timed runs
    from safetensors.torch import load_file, save_file

    if dst.is_dir():
        return dst
    state = load_file(src / "model.safetensors")
    out = {
        name: torch.cat([t] * times) if name.startswith("model.layers.") else t
        for name, t in state.items()
    }
    tmp = dst.with_name(dst.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(out, tmp / "model.safetensors")
    shutil.copy(src / "config.json", tmp / "config.json")
    tmp.rename(dst)
    return dst


def time_one(base: Path, tuned: Path, repeat: int, threads: int | None) -> None:
    """Prints the seconds of ``repeat`` diffs of one pair in this process, its headline and the
    process's peak RSS (the process imports what ``rlsparse diff`` does: not torch, whose OpenMP
    runtime differs)."""
    config = DiffConfig(threads=threads)
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        report = diff_checkpoints(base, tuned, config, progress=False)
        seconds.append(time.perf_counter() - start)
    h = report.headline()
    keys = ("n_params", "sparsity_bitwise")
    # VmHWM: ru_maxrss would carry the parent's peak across fork and exec
    status = Path("/proc/self/status").read_text()
    rss = int(re.search(r"VmHWM:\s+(\d+) kB", status)[1]) * 1024  # type: ignore[index]
    print(json.dumps({"seconds": seconds, "peak_rss": rss, **{k: h[k] for k in keys}}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--one", nargs=2, type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--base", type=Path, default=RUN / "step_000000")
    ap.add_argument("--tuned", type=Path, default=RUN / "step_000020")
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--threads", type=int, default=None, help="kernel threads (default: all)")
    ap.add_argument("--tile", type=int, default=1, help="repeat the decoder layers N times")
    ap.add_argument("--work", type=Path, default=None, help="where the copies go (default: temp)")
    ap.add_argument("--out", type=Path, default=HERE / "out" / "quant")
    args = ap.parse_args()
    if args.one:
        time_one(*args.one, args.repeat, args.threads)
        return
    for p in (args.base, args.tuned):
        if not p.is_dir():
            sys.exit(f"{p}: no such checkpoint (train it with `rlsparse run 02`, or pass --base)")
    with tempfile.TemporaryDirectory(prefix="real-pair-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        base, tuned = args.base, args.tuned
        if args.tile > 1:
            work = work / f"tile{args.tile}"
            base = tiled(base, work / "bf16-base", args.tile)
            tuned = tiled(tuned, work / "bf16-tuned", args.tile)
        found = pairs(base, tuned, work)
        from quant_bench import warm  # torch: kept out of the timed processes

        warm([f for side in found.values() for d in side for f in sorted(d.glob("*.safetensors"))])
        rows = []
        for label, (b, t) in found.items():
            cmd = [sys.executable, __file__, "--one", str(b), str(t), "--repeat", str(args.repeat)]
            cmd += ["--threads", str(args.threads)] if args.threads else []
            one = json.loads(subprocess.run(cmd, check=True, capture_output=True).stdout)
            sec = statistics.median(one["seconds"])
            nbytes = _bytes(b) + _bytes(t)
            rows.append(
                {
                    "pair": label,
                    "bytes": nbytes,
                    "elements": one["n_params"],
                    "sparsity_bitwise": one["sparsity_bitwise"],
                    "seconds": sec,
                    "seconds_all": one["seconds"],
                    "gb_per_s": nbytes / sec / 1e9,
                    "elements_per_s": one["n_params"] / sec,
                    "peak_rss": one["peak_rss"],
                }
            )
    ref = rows[0]
    head = f"{'pair':<22}{'GB':>7}{'sparsity':>10}{'s (median)':>12}{'GB/s':>8}{'vs bf16':>9}"
    print(head + f"{'peak RSS':>10}")
    for r in rows:
        r["bytes_ratio"] = r["gb_per_s"] / ref["gb_per_s"]
        r["elements_ratio"] = r["elements_per_s"] / ref["elements_per_s"]
        print(
            f"{r['pair']:<22}{r['bytes'] / 1e9:>7.3f}{100 * r['sparsity_bitwise']:>9.2f}%"
            f"{r['seconds']:>12.3f}{r['gb_per_s']:>8.2f}{r['bytes_ratio']:>8.2f}×"
            f"{r['peak_rss'] / 2**20:>7.0f} MiB"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"base": str(args.base), "tuned": str(args.tuned), "threads": args.threads}
    meta["tile"] = args.tile
    name = "real_pair.json" if args.tile == 1 else f"real_pair_tile{args.tile}.json"
    (args.out / name).write_text(json.dumps({**meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
