"""Hub Range streaming over loopback vs the local diff of the same files (issue 14 item 4).

Writes a synthetic bf16 pair (``--mb`` MB per side), serves it with the loopback hub stand-in
(``tests/hub_standin.py``, in its own process so server and client do not share a GIL), and runs,
each in a fresh niced process so peak RSS is its own: the local diff of the folders and the
streamed diff of the hub ids. Prints wall time, throughput of checkpoint data (both sides, the diff
included), peak RSS, the ratios, and the wall time expected for 8B/70B/671B pairs at 1 and
10 Gbit/s from the measured per-byte cost: ``max(bytes / link, bytes × cost per byte)``.

    python bench/hub_bench.py --mb 512
    python bench/hub_bench.py --mb 512 --shards 4 3   # the tuned side sharded otherwise

Each shard stores its tensors sorted by name, as ``save_pretrained`` (safetensors) writes them, so
with other shard counts a base shard's tensors come from two tuned shards in turn.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from standin_process import ROOT, served

#: bytes of one side of a public pair: bf16 8B and 70B, FP8 671B (DeepSeek-V3 as stored)
MODELS = {"8B (bf16)": 16.1e9, "70B (bf16)": 141e9, "671B (fp8)": 689e9}
LINKS = {"1 Gbit/s": 1e9 / 8, "10 Gbit/s": 10e9 / 8}


def _write_pair(folder: Path, mb: int, shards: tuple[int, int]) -> None:
    """The pair, written in a child process, so that the measuring children (forked from this
    one) do not start with torch's and the pair's pages."""
    cmd = [sys.executable, __file__, "--write", str(folder), str(mb), *map(str, shards)]
    subprocess.run(cmd, check=True)


def _write(folder: Path, mb: int, shards: tuple[int, int]) -> None:
    """Both sides in HF layout: ``mb`` MB of bf16 each, 20 % of the words one ULP apart, each side
    cut into its shards by tensor order and stored sorted by name (as ``save_pretrained`` does)."""
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT))
    from rlsparse_lib.io.synthetic import base_values, to_bf16_words
    from tests.ckpt_factory import save_hf

    n_tensors = 16
    rows = max(1, mb * (1 << 20) // 2 // n_tensors // 4096)
    sides: dict[str, dict[str, torch.Tensor]] = {"base": {}, "tuned": {}}
    for i in range(n_tensors):
        name = f"model.layers.{i}.mlp.up_proj.weight"
        rng = np.random.default_rng(i)
        base = to_bf16_words(base_values(name, (rows, 4096), rng))
        tuned = base.copy()
        tuned[rng.random(base.shape) < 0.2] += np.uint16(1)
        for side, words in (("base", base), ("tuned", tuned)):
            sides[side][name] = torch.from_numpy(words.view(np.int16)).view(torch.bfloat16)
    for (side, state), n in zip(sides.items(), shards, strict=True):
        save_hf(folder / side, state, shards=n, contiguous=True)


def _measure(base: str, tuned: str) -> None:
    os.nice(10)
    from rlsparse_lib.diff.engine import diff_checkpoints

    t0 = time.perf_counter()
    report = diff_checkpoints(base, tuned, progress=False)
    seconds = time.perf_counter() - t0
    inputs = report.provenance["inputs"]
    fetched = sum((inputs[s].get("transport") or {}).get("bytes_fetched", 0) for s in inputs)
    data = sum(t.numel * 2 * 2 for t in report.tensors)  # bf16, both sides
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "bytes": data, "fetched": fetched, "peak_rss": peak}))


def _child(*args: str, env: dict | None = None) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, env=env, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=512, help="MB per side (default: %(default)s)")
    p.add_argument(
        "--shards",
        type=int,
        nargs=2,
        default=(2, 2),
        metavar=("BASE", "TUNED"),
        help="shards per side (default: 2 2)",
    )
    p.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--write", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        return _measure(*args.measure)
    if args.write:
        folder, mb, *shards = args.write
        return _write(Path(folder), int(mb), (int(shards[0]), int(shards[1])))
    with tempfile.TemporaryDirectory(prefix="hub-bench-") as tmp:
        folder = Path(tmp)
        _write_pair(folder, args.mb, tuple(args.shards))
        files = sum(f.stat().st_size for f in folder.glob("*/*.safetensors"))
        local = _child("--measure", str(folder / "base"), str(folder / "tuned"))
        with served({"bench/base": folder / "base", "bench/tuned": folder / "tuned"}) as env:
            stream = _child("--measure", "bench/base", "bench/tuned", env=env)
    mb = 1 << 20
    print(
        f"pair: {local['bytes'] / mb:.0f} MiB of bf16 checkpoint data (both sides), {os.cpu_count()} CPUs"
    )
    for name, r in (("local", local), ("stream", stream)):
        rate = r["bytes"] / r["seconds"] / 1e6
        fetched = (
            f", fetched {r['fetched'] / mb:.0f} MiB ({r['fetched'] / files:.3f}x the files)"
            if r["fetched"]
            else ""
        )
        print(
            f"{name:>6}: {r['seconds']:.2f} s, {rate:.0f} MB/s, peak RSS {r['peak_rss'] / mb:.0f} MiB"
            + fetched
        )
    print(
        f"stream/local: time x{stream['seconds'] / local['seconds']:.2f}, "
        f"peak RSS x{stream['peak_rss'] / local['peak_rss']:.2f}"
    )
    cost = stream["seconds"] / stream["bytes"]  # seconds per byte of checkpoint data, diff included
    print("expected wall time of a streamed pair (both sides): max(bytes / link, bytes x cost)")
    for model, side in MODELS.items():
        cells = [
            f"{link}: {max(2 * side / bw, 2 * side * cost) / 60:.0f} min"
            for link, bw in LINKS.items()
        ]
        print(f"  {model:>11}: " + ", ".join(cells))


if __name__ == "__main__":
    main()
