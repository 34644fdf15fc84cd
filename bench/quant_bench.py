"""Benchmark `rlsparse diff` on quantized pairs (FP8 block scales, MXFP4) next to a bf16 pair of
the same element count, in the same run (issue 12 item 8).

For every change fraction in ``--fractions`` generates three pairs of ``--tensors`` matrices of
``--rows`` x ``--cols`` elements (default 64 x 4096 x 4096 = 1.07 B elements per side) under
``--out``/f<percent> (cached): DeepSeek-style FP8 codes with 128x128 ``*_scale_inv`` blocks,
gpt-oss-style MXFP4 ``*_blocks``/``*_scales``, and bf16; the same elements' codes (words) differ
by one step in all three (that fraction of them), and a few scales change. ``--moved-scales S``
also moves the tuned scale of that share of the FP8 blocks by a relative 2^-12 (an RL step that
moved the block's amax a little: bf16 keeps most codes' words, a few round differently; what a
dense update does to every block). Warms the page cache,
then times ``rlsparse diff`` as a subprocess (median of ``--repeat`` runs; peak RSS from GNU time)
and reports the measured fraction of changed codes (words), bytes read per second (both sides,
codes plus scales), elements per second and bytes per CPU second (user + system: robust on a
shared machine), each with its ratio to the bf16 diff of the same fraction (target for bytes per
second: >= 0.8).

``--source`` says where the bytes come from: ``warm`` (the page cache, read once before; the
diff is then bound by its CPU work), ``cold`` (every file of the pair evicted from the page cache
with ``posix_fadvise(DONTNEED)`` before each run, so it is read from the disk) or ``hub`` (served by
the loopback hub stand-in, ``tests/hub_standin.py``, in its own process, and streamed with HTTP
Range requests as a hub pair is). ``--link-mbit N`` serves the hub rows over one N Mbit/s link
shared by all connections (the stand-in paces its bodies), as a real link to the hub would.

``--device`` runs the diffs on ``cpu`` (default) or ``cuda`` (the Triton path: codes and scales
are copied to the GPU and decoded there), or both (``cuda,cpu``: each device's rows, with ratios to
that device's bf16 row; ``bench/device_issue12.sh`` runs it on a CUDA machine).

``--kernels`` instead times the kernels alone in memory (CPU seconds, best of ``--repeat``) on one
4096 x 4096 matrix per format: the bf16 diff, the fused FP8 / MXFP4 diff and decode-then-diff, in
ns per element at 0 % (the scan: compare and base histogram) and at each fraction, and the cost
per changed element ((t(f) - t(0)) / f); ``fp8_moved`` is the fused FP8 diff with every block's
scale moved as above.

usage: nice -n 10 python bench/quant_bench.py [--out bench/out/quant] [--repeat 3] [--threads N]
       [--fractions 0.05,0.2,0.3] [--source warm,cold,hub] [--link-mbit N] [--device cpu,cuda]
       [--moved-scales S] [--drop-pairs] [--quick] [--kernels]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from standin_process import served

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
SHARDS = 4
MOVE = np.float32(1 + 2**-12)  # a moved scale: times 1 + 2^-12, below bf16's resolution


def _tensors(
    kind: str, rows: int, cols: int, index: int, side: str, fraction: float, moved: float = 0.0
) -> dict[str, torch.Tensor]:
    """One weight of a pair (``side`` ``base`` or ``tuned``), deterministic in ``index``;
    ``moved``: the share of FP8 scale blocks whose tuned scale moves by ``MOVE``."""
    g = torch.Generator().manual_seed(index)
    name = f"model.layers.{index}.mlp.down_proj"
    changed = torch.rand(rows * cols, generator=g) < fraction
    if kind == "bf16":
        w = (0.02 * torch.randn(rows, cols, generator=g)).to(torch.bfloat16)
        if side == "tuned":
            w.view(torch.int16).reshape(-1)[changed] += 1
        return {name + ".weight": w}
    if kind == "fp8":
        codes = torch.randint(0, 0x7E, (rows, cols), dtype=torch.uint8, generator=g)
        scale = torch.rand(-(-rows // 128), -(-cols // 128), generator=g) * 1e-3
        if side == "tuned":
            codes.reshape(-1)[changed] ^= 1
            move = torch.rand(scale.shape, generator=g) < moved
            scale[move] *= torch.tensor(MOVE)
            scale[0, :4] *= 1.5
        return {
            name + ".weight": codes.view(torch.float8_e4m3fn),
            name + ".weight_scale_inv": scale,
        }
    groups = cols // 32
    blocks = torch.randint(0, 256, (rows, groups, 16), dtype=torch.uint8, generator=g)
    scales = torch.randint(115, 125, (rows, groups), dtype=torch.uint8, generator=g)
    if side == "tuned":  # the low nibble of element 2k, the high one of element 2k + 1
        pairs = changed.view(rows, groups, 16, 2).to(torch.uint8)
        blocks ^= pairs[..., 0] | pairs[..., 1] << 4
        scales[0, :4] += 1
    return {name + "_blocks": blocks, name + "_scales": scales}


def ensure_pair(
    root: Path, kind: str, n: int, rows: int, cols: int, fraction: float, moved: float = 0.0
) -> tuple[Path, Path]:
    folder = root / kind
    fields = {"kind": kind, "tensors": n, "rows": rows, "cols": cols, "fraction": fraction, "v": 1}
    if kind == "fp8" and moved:
        fields["moved"] = moved
    spec = json.dumps(fields)
    marker = folder / "spec.json"
    if marker.exists() and marker.read_text() == spec:
        return folder / "base", folder / "tuned"
    print(f"generating the {kind} pair ({n * rows * cols / 1e9:.2f} B elements) ...", flush=True)
    for side in ("base", "tuned"):
        out = folder / side
        out.mkdir(parents=True, exist_ok=True)
        weight_map = {}
        for s in range(SHARDS):
            part: dict[str, torch.Tensor] = {}
            for i in range(s, n, SHARDS):
                part.update(_tensors(kind, rows, cols, i, side, fraction, moved))
            fname = f"model-{s + 1:05d}-of-{SHARDS:05d}.safetensors"
            save_file(part, str(out / fname), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(part, fname))
        index = {"metadata": {}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index))
    marker.write_text(spec)
    return folder / "base", folder / "tuned"


def measure(
    cmd: list[str], repeat: int, before: Callable[[], None], env: dict[str, str] | None = None
) -> dict:
    """Median wall time, median CPU time (user + system) and the peak RSS (GNU time) over
    ``repeat`` runs; ``before`` runs ahead of each."""
    walls, cpus, rss = [], [], []
    for _ in range(repeat):
        before()
        with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
            t0 = time.perf_counter()
            proc = subprocess.run(
                ["/usr/bin/time", "-f", "%M %U %S", "-o", tf.name, *cmd],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"{cmd} failed ({proc.returncode}): {proc.stderr[-500:]}")
            walls.append(time.perf_counter() - t0)
            kb, user, system = tf.read().split()[-3:]
            rss.append(int(kb) * 1024)
            cpus.append(float(user) + float(system))
    return {
        "wall_s": statistics.median(walls),
        "cpu_s": statistics.median(cpus),
        "peak_rss": max(rss),
    }


def _files(*folders: Path) -> list[Path]:
    return [f for d in folders for f in sorted(d.glob("*.safetensors"))]


def warm(files: list[Path]) -> None:
    """Reads every file once, so the page cache holds it."""
    for f in files:
        with f.open("rb") as fh:
            while fh.read(1 << 24):
                pass


def evict(files: list[Path]) -> None:
    """Drops every file's pages from the page cache (written back first), so the next run reads
    them from the disk."""
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


class _Memory:
    """In-memory tensors read like a checkpoint (flat unsigned words; nothing to release)."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        words = {1: np.uint8, 2: np.uint16, 4: np.uint32}
        self.arrays = {k: v.reshape(-1).view(words[v.itemsize]) for k, v in arrays.items()}

    def words(self, name: str, start: int, stop: int) -> np.ndarray:
        return self.arrays[name][start:stop]

    def prefetch(self, name: str, start: int, stop: int) -> None:
        pass

    def release(self, name: str, start: int, stop: int) -> None:
        pass


def _cpu_best(repeat: int, fn, *args) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        fn(*args)
        best = min(best, time.process_time() - t0)
    return best


def _decode_then_diff(kernel, da, db, n: int, spec) -> None:
    wa, wb = da.words("-", 0, n), db.words("-", 0, n)
    kernel.diff_chunk(wa, wb, spec)
    da.decoder.quant_counts(da.codes, db.codes, wa, wb, da.qt.scheme == "mxfp4")


def kernels(fractions: list[float], threads: int, repeat: int) -> list[dict]:
    """CPU ns per element of each kernel on in-memory 4096 x 4096 pairs (see the docstring)."""
    from rlsparse_lib.diff.kernels.cpu import CpuKernel
    from rlsparse_lib.diff.kernels.dequant import CodeSource, CpuDecoder, DequantSource
    from rlsparse_lib.diff.kernels.protocol import ChunkSpec
    from rlsparse_lib.io.quant import QuantTensor
    from rlsparse_lib.io.tensor_info import TensorInfo

    rows = cols = 4096
    n = rows * cols
    spec = ChunkSpec("bfloat16", "bfloat16", np.array([0.0, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4]), 1e-3)
    kernel = CpuKernel(threads)
    t = {k: _tensors(k, rows, cols, 0, "base", 0.0) for k in ("bf16", "fp8", "mxfp4")}
    w = t["bf16"]["model.layers.0.mlp.down_proj.weight"].view(torch.int16).numpy().view(np.uint16)
    w = w.reshape(-1)
    fp8 = {k: v.view(torch.uint8).numpy() for k, v in t["fp8"].items() if k.endswith("weight")}
    codes = next(iter(fp8.values()))
    scales = t["fp8"]["model.layers.0.mlp.down_proj.weight_scale_inv"].numpy()
    blocks = t["mxfp4"]["model.layers.0.mlp.down_proj_blocks"].numpy()
    esc = t["mxfp4"]["model.layers.0.mlp.down_proj_scales"].numpy()
    x = Path("-")
    qf = QuantTensor(
        "w",
        "fp8_block",
        TensorInfo("w", "float8_e4m3fn", (rows, cols), x),
        TensorInfo("s", "float32", scales.shape, x),
        (rows, cols),
        (128, 128),
    )
    qm = QuantTensor(
        "e",
        "mxfp4",
        TensorInfo("b", "uint8", blocks.shape, x),
        TensorInfo("s", "uint8", esc.shape, x),
        (rows, cols),
        (1, 32),
    )
    out = []
    rng = np.random.default_rng(0)
    for f in [0.0, *fractions]:
        ch = rng.random(n) < f
        wb = w.copy()
        wb[ch] += 1
        cb = codes.reshape(-1).copy()
        cb[ch] ^= 1
        pairs = ch.reshape(rows, cols // 32, 16, 2).astype(np.uint8)
        bb = blocks ^ (pairs[..., 0] | pairs[..., 1] << 4)
        row = {"fraction": f, "bf16": _cpu_best(repeat, kernel.diff_chunk, w, wb, spec)}
        for kind, qt, a, b in (
            ("fp8", qf, {"w": codes, "s": scales}, {"w": cb, "s": scales}),
            ("fp8_moved", qf, {"w": codes, "s": scales}, {"w": cb, "s": scales * MOVE}),
            ("mxfp4", qm, {"b": blocks, "s": esc}, {"b": bb, "s": esc}),
        ):
            fa, fb = CodeSource(_Memory(a), qt), CodeSource(_Memory(b), qt)  # type: ignore[arg-type]
            ca, cbb = fa.words("-", 0, n), fb.words("-", 0, n)
            row[kind] = _cpu_best(repeat, kernel.diff_codes, fa, fb, ca, cbb, spec)
            da = DequantSource(_Memory(a), qt, CpuDecoder(threads))  # type: ignore[arg-type]
            db = DequantSource(_Memory(b), qt, CpuDecoder(threads))  # type: ignore[arg-type]
            row[kind + "_decode"] = _cpu_best(repeat, _decode_then_diff, kernel, da, db, n, spec)
        out.append({k: v if k == "fraction" else v / n * 1e9 for k, v in row.items()})
    keys = ("bf16", "fp8", "fp8_decode", "fp8_moved", "fp8_moved_decode", "mxfp4", "mxfp4_decode")
    print("CPU ns per element (per changed element in brackets), threads", threads)
    print(f"{'changed':>8}" + "".join(f"{k:>20}" for k in keys))
    for r in out:
        cells = []
        for k in keys:
            per = (r[k] - out[0][k]) / r["fraction"] if r["fraction"] else None
            cells.append(f"{r[k]:.2f}" + ("" if per is None else f" [{per:.2f}]"))
        print(f"{r['fraction']:>8.0%}" + "".join(f"{c:>20}" for c in cells))
    return out


def _row(
    kind: str, base: Path, tuned: Path, report: Path, m: dict, fraction: float, source: str
) -> dict:
    data = json.loads(report.read_text())
    nbytes = sum(f.stat().st_size for d in (base, tuned) for f in d.glob("*.safetensors"))
    quant = next(iter(data.get("quant_summary", {}).values()), None)
    codes_changed = data["n_changed"] if quant is None else quant["raw_changed"]
    inputs = data["provenance"]["inputs"]
    fetched = sum((inputs[s].get("transport") or {}).get("bytes_fetched", 0) for s in inputs)
    return {
        "pair": kind,
        "source": source,
        "fraction": fraction,
        "codes_changed_share": codes_changed / data["n_params"],
        "values_changed_share": data["density"],
        "elements": data["n_params"],
        "bytes_read": nbytes,
        "bytes_fetched_vs_files": fetched / nbytes if fetched else None,  # hub: HTTP bodies
        "wall_s": m["wall_s"],
        "cpu_s": m["cpu_s"],
        "bytes_per_s": nbytes / m["wall_s"],
        "elements_per_s": data["n_params"] / m["wall_s"],
        "bytes_per_cpu_s": nbytes / m["cpu_s"],
        "peak_rss": m["peak_rss"],
        "threads": data["provenance"].get("threads"),
        "quant_summary": data.get("quant_summary", {}),
    }


def measure_pairs(
    pairs: dict[str, tuple[Path, Path]],
    root: Path,
    fraction: float,
    source: str,
    device: str,
    args: argparse.Namespace,
) -> list[dict]:
    """One row per pair (bf16 first) read from ``source`` and diffed on ``device``, with ratios
    to the bf16 row."""
    script = BIN / "rlsparse"  # the console script, else the module (a checkout built in place)
    rlsparse = [str(script)] if script.exists() else [sys.executable, "-m", "rlsparse_lib.cli"]
    rows = []
    repos = {
        f"bench/{k}-{s}": p[i] for k, p in pairs.items() for i, s in enumerate(("base", "tuned"))
    }
    link = args.link_mbit * 1e6 / 8 if args.link_mbit else None
    with served(repos, link) if source == "hub" else contextlib.nullcontext() as env:
        for kind, (base, tuned) in pairs.items():
            files = _files(base, tuned)
            warm(files)
            report = root / f"{kind}.report.json"
            a, b = (f"bench/{kind}-base", f"bench/{kind}-tuned") if env else (base, tuned)
            cmd = [*rlsparse, "diff", str(a), str(b), "-q", "--by", "none", "--json", str(report)]
            cmd += ["--device", device]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            before = (lambda fs=files: evict(fs)) if source == "cold" else (lambda: None)
            m = measure(cmd, args.repeat, before, env)
            row = _row(kind, base, tuned, report, m, fraction, source)
            rows.append(row | {"device": device, "link_mbit": args.link_mbit if env else None})
    for r in rows:
        for key in ("bytes_per_s", "elements_per_s", "bytes_per_cpu_s"):
            r[key + "_vs_bf16"] = r[key] / rows[0][key]
    return rows


def print_rows(source: str, rows: list[dict]) -> None:
    print(f"source: {source}")
    print(
        f"{'pair':<7}{'changed':>8}{'elements':>15}{'GB read':>8}{'wall s':>8}{'GB/s':>6}"
        f"{'vs bf16':>8}{'Gelem/s':>8}{'vs bf16':>8}{'CPU s':>7}{'GB/CPU-s':>9}{'vs bf16':>8}"
        f"{'peak RSS':>9}{'fetched':>9}"
    )
    for r in rows:
        print(
            f"{r['pair']:<7}{r['codes_changed_share']:>8.1%}{r['elements']:>15,}"
            f"{r['bytes_read'] / 1e9:>8.2f}{r['wall_s']:>8.2f}{r['bytes_per_s'] / 1e9:>6.2f}"
            f"{r['bytes_per_s_vs_bf16']:>7.2f}x{r['elements_per_s'] / 1e9:>8.3f}"
            f"{r['elements_per_s_vs_bf16']:>7.2f}x{r['cpu_s']:>7.2f}"
            f"{r['bytes_per_cpu_s'] / 1e9:>9.2f}{r['bytes_per_cpu_s_vs_bf16']:>7.2f}x"
            f"{r['peak_rss'] / 2**20:>6.0f} MB"
            + (f"{r['bytes_fetched_vs_files']:>8.3f}x" if r["bytes_fetched_vs_files"] else "")
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "out" / "quant")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tensors", type=int, default=64)
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--fractions", default="0.05,0.2,0.3", help="shares of codes changed")
    ap.add_argument("--threads", type=int, default=None, help="kernel threads (default: all)")
    ap.add_argument("--quick", action="store_true", help="tiny pairs (a smoke test)")
    ap.add_argument("--kernels", action="store_true", help="time the kernels alone in memory")
    ap.add_argument(
        "--source",
        default="warm",
        help="comma-separated: warm (page cache), cold (disk: evicted before each run), hub "
        "(the loopback hub stand-in)",
    )
    ap.add_argument(
        "--link-mbit",
        type=float,
        default=None,
        help="serve the hub rows over a link of this many Mbit/s (default: loopback speed)",
    )
    ap.add_argument(
        "--device", default="cpu", help="comma-separated: cpu, cuda (default: %(default)s)"
    )
    ap.add_argument(
        "--moved-scales",
        type=float,
        default=0.0,
        help="share of FP8 scale blocks whose tuned scale moves by a relative 2^-12 (default 0)",
    )
    ap.add_argument(
        "--drop-pairs",
        action="store_true",
        help="delete each fraction's pairs once measured (7.6 GB each at the default size)",
    )
    args = ap.parse_args()
    fractions = [float(f) for f in args.fractions.split(",")]
    if args.kernels:
        res = kernels(fractions, args.threads or 1, args.repeat)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "quant_kernels.json").write_text(json.dumps(res, indent=2))
        return
    sources = args.source.split(",")
    if not set(sources) <= {"warm", "cold", "hub"}:
        ap.error(f"--source: warm, cold or hub, not {args.source!r}")
    devices = args.device.split(",")
    if not set(devices) <= {"cpu", "cuda"}:
        ap.error(f"--device: cpu or cuda, not {args.device!r}")
    if args.quick:
        args.tensors, args.rows, args.cols = 8, 256, 512
    rows: dict[tuple[str, str], list[dict]] = {(s, d): [] for s in sources for d in devices}
    for fraction in fractions:
        root = args.out / f"f{round(fraction * 100):02d}"
        pairs = {
            k: ensure_pair(root, k, args.tensors, args.rows, args.cols, fraction, args.moved_scales)
            for k in ("bf16", "fp8", "mxfp4")
        }
        for source, device in rows:
            rows[source, device] += measure_pairs(pairs, root, fraction, source, device, args)
        if args.drop_pairs:
            shutil.rmtree(root)
    for (source, device), found in rows.items():
        name = f"quant_bench{'' if source == 'warm' else '_' + source}"
        name += f"_{args.link_mbit:g}mbit" if source == "hub" and args.link_mbit else ""
        name += f"{'' if device == 'cpu' else '_' + device}"
        name += f"{'' if not args.threads else f'_t{args.threads}'}"
        name += f"{'' if not args.moved_scales else f'_moved{args.moved_scales:g}'}.json"
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / name).write_text(json.dumps(found, indent=2))
        link = f" over {args.link_mbit:g} Mbit/s" if source == "hub" and args.link_mbit else ""
        print_rows(f"{source}{link}, {device}", found)


if __name__ == "__main__":
    main()
