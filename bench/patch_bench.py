"""Sparse patches: codec sizes, create/apply throughput next to ``cp``, payload per codec
(README, "Sparse patches").

``codings`` (default): a seeded 16M-element bf16 tensor (normal, std 0.02) and a copy with 1 % /
15 % of its elements, at random positions, moved 1-3 ULP up or down; bytes per changed element of
each index and value coding and of the chosen default (varint gaps or bitmap, whichever is
smaller; ``sub`` zigzag word distance in byte planes; zstandard level 3).

``throughput``: a ~1 B-element bf16 pair (16 tensors of 64M elements, written under
``bench/out/patch_bench/``; generated once, tensor by tensor) at 1 % and 15 % changed: wall time
and peak RSS of ``cp -r``, ``rlsparse patch create`` and ``rlsparse patch apply`` (each a child
process, timed by ``/usr/bin/time``; the page cache is warm), and bytes per changed element of each
codec (``rlsparse budget``'s codecs).

``run``: bytes per changed element of each codec over the consecutive checkpoints of a run folder
(e.g. ``data/runs/cpu-grpo-sync33-lr1e-05``).

``monitor``: the in-training monitor's cost per recorded step on SmolLM2-135M shapes (bf16
parameters, 1 % of the elements changed per step): counts only, and with ``codecs=True``.

    .venv/bin/python bench/patch_bench.py [codings] [--n 16777216]
    nice -n 10 .venv/bin/python bench/patch_bench.py throughput [--tensors 16]
    .venv/bin/python bench/patch_bench.py run data/runs/NAME
    .venv/bin/python bench/patch_bench.py monitor
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import zstandard as zstd

from rlsparse_lib.patches.codec import encode_block, forward, to_planes, varint_encode


def synth(n: int, p: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    f = (rng.standard_normal(n, dtype=np.float32) * 0.02).view(np.uint32)
    base = ((f + 0x8000) >> 16).astype(np.uint16)
    pos = rng.choice(n, round(n * p), replace=False)
    step = rng.integers(1, 4, pos.size) * rng.choice([-1, 1], pos.size)
    tuned = base.copy()
    tuned[pos] = (base[pos].astype(np.int64) + step).astype(np.uint16)
    return base, tuned


def codings(n: int) -> None:
    print("| changed | level | coding | B / changed element |")
    print("|---|---|---|---|")
    for p in (0.01, 0.15):
        base, tuned = synth(n, p)
        changed = base != tuned
        pos = np.flatnonzero(changed)
        k = pos.size
        gaps = np.diff(pos, prepend=-1) - 1
        streams = {
            "index: u32 positions": pos.astype(np.uint32).tobytes(),
            "index: varint gaps": varint_encode(gaps),
            "index: bitmap": np.packbits(changed, bitorder="little").tobytes(),
            "values: tuned words": tuned[pos].tobytes(),
            "values: xor": forward(base[pos], tuned[pos], "xor").tobytes(),
            "values: xor, byte planes": to_planes(forward(base[pos], tuned[pos], "xor")),
            "values: sub (zigzag), byte planes": to_planes(forward(base[pos], tuned[pos], "sub")),
        }
        for level in (3, 9, 19):
            cctx = zstd.ZstdCompressor(level=level)
            for name, raw in streams.items():
                print(f"| {p:.0%} | {level} | {name} | {len(cctx.compress(raw)) / k:.3f} |")
            for xform in ("xor", "sub"):
                t0 = time.perf_counter()
                _, code, idx, vals = encode_block(base, tuned, xform, cctx)
                dt = time.perf_counter() - t0
                print(
                    f"| {p:.0%} | {level} | **block: {code} + {xform} planes** ({dt:.2f} s) "
                    f"| **{(len(idx) + len(vals)) / k:.3f}** |"
                )


OUT = Path(__file__).resolve().parent / "out" / "patch_bench"
PER_TENSOR = 1 << 26


def write_pairs(tensors: int) -> dict[str, Path]:
    """base/ and tuned_01/, tuned_15/ (1 % / 15 % changed), one tensor in memory at a time."""
    from rlsparse_lib.io.checkpoint import SafetensorsWriter

    folders = {name: OUT / f"{name}_{tensors}" for name in ("base", "tuned_01", "tuned_15")}
    if all((f / "model.safetensors").is_file() for f in folders.values()):
        return folders
    specs = [(f"layers.{i}.weight", "bfloat16", (PER_TENSOR >> 12, 4096)) for i in range(tensors)]
    for f in folders.values():
        f.mkdir(parents=True, exist_ok=True)
    with (
        SafetensorsWriter(folders["base"] / "model.safetensors", specs) as wb,
        SafetensorsWriter(folders["tuned_01"] / "model.safetensors", specs) as w1,
        SafetensorsWriter(folders["tuned_15"] / "model.safetensors", specs) as w15,
    ):
        for i, (name, _, _) in enumerate(specs):
            base, t01 = synth(PER_TENSOR, 0.01, seed=i)
            wb.write(name, base)
            w1.write(name, t01)
            del t01
            _, t15 = synth(PER_TENSOR, 0.15, seed=i)
            w15.write(name, t15)
    return folders


def timed(cmd: list[str]) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds (user + system), peak RSS GiB) of a child process."""
    res = subprocess.run(
        ["/usr/bin/time", "-f", "%e %U %S %M", *cmd], capture_output=True, text=True, check=True
    )
    wall, user, system, kib = res.stderr.strip().splitlines()[-1].split()
    return float(wall), float(user) + float(system), int(kib) / 2**20


def same_tensors(a: Path, b: Path) -> bool:
    """Whether two checkpoints hold the same tensors (names, dtypes, shapes, raw words)."""
    from rlsparse_lib.io.checkpoint import open_checkpoint

    ca, cb = open_checkpoint(a), open_checkpoint(b)
    if {n: (i.dtype, i.shape) for n, i in ca.tensors.items()} != {
        n: (i.dtype, i.shape) for n, i in cb.tensors.items()
    }:
        return False
    with ca.reader() as ra, cb.reader() as rb:
        for name, info in ca.tensors.items():
            for start in range(0, info.numel, 1 << 24):
                stop = min(info.numel, start + (1 << 24))
                if not np.array_equal(ra.words(name, start, stop), rb.words(name, start, stop)):
                    return False
                ra.release(name, start, stop)
                rb.release(name, start, stop)
    return True


def throughput(tensors: int) -> None:
    from rlsparse_lib.patches.budget import CODECS, step_budget

    folders = write_pairs(tensors)
    size = (folders["base"] / "model.safetensors").stat().st_size
    cli = [sys.executable, "-m", "rlsparse_lib.cli"]
    print(f"pair: {tensors} x {PER_TENSOR:,} bf16 elements, {size / 2**30:.2f} GiB per checkpoint")
    print(
        "| changed | step | wall s | CPU s | GiB/s of checkpoint (wall) | GiB per CPU s "
        "| peak RSS GiB | patch bytes |"
    )
    print("|---|---|---|---|---|---|---|---|")
    per_codec = []
    for label in ("01", "15"):
        tuned = folders[f"tuned_{label}"]
        work = OUT / f"work_{label}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        patch = work / "p.rlpatch"
        steps = {
            "cp -r": ["cp", "-r", str(tuned), str(work / "copy")],
            "patch create": [
                *cli,
                "patch",
                "create",
                str(folders["base"]),
                str(tuned),
                "-o",
                str(patch),
            ],
            "patch apply": [
                *cli,
                "patch",
                "apply",
                str(folders["base"]),
                str(patch),
                "-o",
                str(work / "out"),
            ],
        }
        for name, cmd in steps.items():
            wall, cpu, rss = timed(cmd)
            extra = f"{patch.stat().st_size:,}" if name == "patch create" else ""
            print(
                f"| {label} % | {name} | {wall:.1f} | {cpu:.1f} | {size / 2**30 / wall:.3f} "
                f"| {size / 2**30 / max(cpu, 1e-9):.3f} | {rss:.2f} | {extra} |",
                flush=True,
            )
        if not same_tensors(tuned, work / "out"):
            sys.exit("apply did not rebuild TUNED bit for bit")
        row, _ = step_budget(folders["base"], tuned)
        per_codec.append((label, row))
        shutil.rmtree(work)
    print()
    print("| changed | " + " | ".join(f"{c} B/changed" for c in CODECS) + " |")
    print("|---|" + "---|" * len(CODECS))
    for label, row in per_codec:
        k = row["n_changed"]
        print(f"| {label} % | " + " | ".join(f"{row[f'bytes_{c}'] / k:.3f}" for c in CODECS) + " |")


def run_codecs(run: str) -> None:
    from rlsparse_lib.patches.budget import CODECS, sync_budget

    steps = sync_budget([run], progress=False).steps
    print("| sync | sparsity % | changed | " + " | ".join(f"{c} B/changed" for c in CODECS) + " |")
    print("|---|---|---|" + "---|" * len(CODECS))
    for _, r in steps.iterrows():
        print(
            f"| {r['step_from']}→{r['step_to']} | {100 * r['sparsity_bitwise']:.3f} | "
            f"{r['n_changed']:,} | "
            + " | ".join(f"{r[f'B_per_changed_{c}']:.3f}" for c in CODECS)
            + " |"
        )
    tot = steps[[f"bytes_{c}" for c in CODECS]].sum()
    k = steps["n_changed"].sum()
    print(
        f"| all | | {k:,} | "
        + " | ".join(f"**{tot[f'bytes_{c}'] / k:.3f}**" for c in CODECS)
        + " |"
    )


def monitor_cost(repeat: int = 3) -> None:
    import torch

    from rlsparse_lib.io.synthetic import LlamaShape
    from rlsparse_lib.training.monitor import SparsityMonitor

    shape = LlamaShape(49152, 576, 1536, 30, 9, 3, tie_embeddings=True)  # SmolLM2-135M
    gen = torch.Generator().manual_seed(0)
    params = torch.nn.ParameterList(
        torch.nn.Parameter((torch.randn(s, generator=gen) * 0.02).to(torch.bfloat16))
        for _, s in shape.tensors()
    )
    n = sum(p.numel() for p in params)
    print(f"SmolLM2-135M shapes: {n:,} bf16 parameters, torch threads {torch.get_num_threads()}")
    print(
        "| monitor | wall s per recorded step | CPU s per recorded step | B per changed element: "
        "raw / rlsparse / xor_zstd |"
    )
    print("|---|---|---|---|")
    for codecs in (False, True):
        mon = SparsityMonitor(every=1, codecs=codecs)
        mon.attach(params)
        times, cpu = [], []
        for step in range(1, repeat + 1):
            with torch.no_grad():
                for p in params:
                    hit = torch.rand(p.shape, generator=gen) < 0.01
                    p[hit] = (p[hit].float() * 1.01).to(torch.bfloat16)
            before, cpu0 = mon.seconds, time.process_time()
            mon.after_step(step)
            times.append(mon.seconds - before)
            cpu.append(time.process_time() - cpu0)
        rec = mon.records[-1]
        k = rec["changed_step"]
        sizes = (
            " / ".join(
                f"{rec[f'patch_bytes_{c}'] / k:.3f}" for c in ("raw", "rlsparse", "xor_zstd")
            )
            if codecs
            else ""
        )
        what = "counts + codecs" if codecs else "counts"
        print(f"| {what} | {sorted(times)[1]:.3f} | {sorted(cpu)[1]:.3f} | {sizes} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "what", nargs="?", default="codings", choices=("codings", "throughput", "run", "monitor")
    )
    ap.add_argument("run", nargs="?", help="run folder (for 'run')")
    ap.add_argument("--n", type=int, default=1 << 24)
    ap.add_argument("--tensors", type=int, default=16)
    a = ap.parse_args()
    if a.what == "codings":
        codings(a.n)
    elif a.what == "throughput":
        throughput(a.tensors)
    elif a.what == "monitor":
        monitor_cost()
    else:
        run_codecs(a.run)


if __name__ == "__main__":
    main()
