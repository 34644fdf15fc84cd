"""GPU benchmark of the diff path (run on a CUDA machine; exits with a message elsewhere).

Measures, with warm-up, CUDA events and the median of repeated runs:

1. ceilings: device-to-device copy (bytes read + written per second) and pinned host-to-device
   copy; also page cache -> pinned reads with the executor's reader threads;
2. kernel: :func:`launch_diff` on device-resident bf16/fp32 chunks (realistic weights with 20 %
   one-ULP moves; dense random changes; random words), a few launch shapes; bandwidth counts bytes
   read plus mask bytes written, so "of copy" compares like with like (target >= 70 %);
3. end to end: ``diff_checkpoints(device="cuda")`` on a generated multi-GB bf16 pair read from the
   page cache, as checkpoint bytes per second against the pinned H2D rate (target >= 80 %), and the
   CPU path on the same pair for reference;
4. in-training monitor: share of a training step taken by ``SparsityMonitor(every=1)``
   (``rlsparse_lib.training.monitor``; a record and a snapshot after every optimizer step, its worst
   case), target < 1 %. The model is a random-init LlamaForCausalLM built from its config with
   TinyLlama-1.1B's shape, AdamW on one micro-batch of 8 x 512 random tokens per step, in pure bf16
   and in mixed precision (fp32 master weights, bf16 autocast; the monitor then also counts the
   bf16 view, its most expensive mode). Timed: a step, a step + ``after_step``, ``after_step`` alone.

usage: python bench/gpu_bench.py [--json bench/out/gpu_bench.json] [--quick]
       [--sweep] [--e2e-layers 24] [--workdir /tmp/rlsparse_gpu_bench]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
GB = 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--json", default=str(HERE / "out" / "gpu_bench.json"), help="results path")
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke test, not numbers)")
    ap.add_argument("--sweep", action="store_true", help="try more kernel launch shapes")
    ap.add_argument("--repeat", type=int, default=10, help="timed repetitions (median)")
    ap.add_argument("--e2e-layers", type=int, default=24, help="layers of the generated pair")
    ap.add_argument("--workdir", default="/tmp/rlsparse_gpu_bench", help="generated checkpoints")
    ap.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        print(
            "gpu_bench: no CUDA device (torch.cuda.is_available() is False); run it on a GPU "
            "machine, see docs/gpu.md",
            file=sys.stderr,
        )
        return 2
    try:
        import triton
    except ImportError:
        print("gpu_bench: triton is not installed (pip install 'rlsparse[gpu]')", file=sys.stderr)
        return 2

    dev = torch.device("cuda", torch.cuda.current_device())
    props = torch.cuda.get_device_properties(dev)
    results: dict = {
        "device": {
            "name": props.name,
            "multiprocessors": props.multi_processor_count,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "cpu_count": os.cpu_count(),
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "triton": triton.__version__,
            "numpy": np.__version__,
        },
        "args": vars(args),
    }
    scale = 1 / 16 if args.quick else 1.0
    rep = max(3, args.repeat // (3 if args.quick else 1))
    results["ceilings"] = ceilings(dev, scale, rep)
    results["kernel"] = kernel_bench(dev, scale, rep, args.sweep)
    results["e2e"] = e2e_bench(args, results["ceilings"])
    results["monitor"] = monitor_bench(dev, args.quick)
    results["targets"] = targets(results)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print_table(results)
    print(f"json: {out}")
    return 0


# --------------------------------------------------------------------------- timing


def time_gpu(fn: Callable[[], object], repeat: int, warmup: int = 2) -> dict:
    """Median/min/max milliseconds of ``fn`` on the current stream, timed with CUDA events."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times)}


def time_host(fn: Callable[[], object], repeat: int, warmup: int = 1) -> dict:
    """Median/min/max wall seconds of a host-side ``fn`` that synchronizes itself."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


# --------------------------------------------------------------------------- ceilings


def ceilings(dev, scale: float, repeat: int) -> dict:
    """Device-to-device copy (read + write), pinned H2D, and page cache -> pinned reads."""
    import torch

    from rlsparse_lib.diff.gpu_executor import _fill

    nbytes = int(2 * 2**30 * scale)
    src = torch.randint(-(2**31), 2**31 - 1, (nbytes // 4,), dtype=torch.int32, device=dev)
    dst = torch.empty_like(src)
    d2d = time_gpu(partial(dst.copy_, src), repeat)
    del src, dst
    host = torch.empty(nbytes // 2, dtype=torch.uint8, pin_memory=True)
    host.numpy()[:] = np.random.default_rng(0).integers(0, 255, host.numel(), dtype=np.uint8)
    on_dev = torch.empty(host.numel(), dtype=torch.uint8, device=dev)
    h2d = time_gpu(lambda: on_dev.copy_(host, non_blocking=True), repeat)
    # page cache -> pinned: the executor's reader threads filling from a mapped file
    from concurrent.futures import ThreadPoolExecutor

    path = Path("/tmp/rlsparse_gpu_bench_fill.bin")
    host.numpy().tofile(path)
    mapped = np.memmap(path, dtype=np.uint8, mode="r")
    threads = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(threads) as pool:
        fill = time_host(partial(_fill, host, mapped, pool), repeat)
    del mapped
    path.unlink()
    return {
        "d2d_copy": {**d2d, "bytes": 2 * nbytes, "gbps": 2 * nbytes / d2d["median_ms"] / 1e6},
        "h2d_pinned": {
            **h2d,
            "bytes": host.numel(),
            "gbps": host.numel() / h2d["median_ms"] / 1e6,
        },
        "pagecache_to_pinned": {
            **fill,
            "threads": threads,
            "bytes": host.numel(),
            "gbps": host.numel() / fill["median_s"] / GB,
        },
    }


# --------------------------------------------------------------------------- kernel


def _inputs(kind: str, fmt: str, n: int, dev):
    """Device words (a, b) of ``fmt``: realistic weights with 20 % one-ULP moves (``ulp20``),
    every element moved by a random small update (``dense``), or random finite words (``random``)."""
    import torch

    word = torch.int16 if fmt == "bfloat16" else torch.int32
    dtype = torch.bfloat16 if fmt == "bfloat16" else torch.float32
    g = torch.Generator(device=dev).manual_seed(0)
    a = (0.02 * torch.randn(n, device=dev, generator=g)).to(dtype).view(word)
    if kind == "ulp20":
        b = a + (torch.rand(n, device=dev, generator=g) < 0.2).to(word)
    elif kind == "dense":
        b = a.view(dtype).float() * (1 + 0.01 * torch.randn(n, device=dev, generator=g))
        b = b.to(dtype).view(word)
    else:
        hi = 0x7F00 if fmt == "bfloat16" else 0x7F000000
        a = torch.randint(0, hi, (n,), device=dev, generator=g, dtype=torch.int64).to(word)
        b = torch.randint(0, hi, (n,), device=dev, generator=g, dtype=torch.int64).to(word)
    return a.contiguous(), b.contiguous()


def kernel_bench(dev, scale: float, repeat: int, sweep: bool) -> list[dict]:
    """launch_diff throughput per data kind, format, mask and launch shape."""
    import torch

    from rlsparse_lib.diff.config import DEFAULT_TOLERANCES
    from rlsparse_lib.diff.kernels.protocol import ChunkSpec
    from rlsparse_lib.diff.kernels.triton_diff import Tuning, launch_diff
    from rlsparse_lib.rules import MaskRule

    shapes = [
        Tuning(),
        Tuning(window=0),
        Tuning(stages=2),
        Tuning(window=0, stages=2),
        Tuning(rows=256, num_warps=8, ctas_per_sm=2),
        Tuning(rows=64, ctas_per_sm=8),
    ]
    if sweep:
        shapes = [
            Tuning(rows=r, num_warps=w, ctas_per_sm=c, window=win, stages=st)
            for r in (64, 128, 256)
            for w in (4, 8)
            for c in (2, 4, 8)
            for win in (0, 32)
            for st in (1, 2)
        ]
    tols = np.asarray(DEFAULT_TOLERANCES, np.float64)
    rows = []
    cases = [
        ("ulp20", "bfloat16"),
        ("dense", "bfloat16"),
        ("random", "bfloat16"),
        ("ulp20", "float32"),
    ]
    for kind, fmt in cases:
        item = 2 if fmt == "bfloat16" else 4
        n = int((2**30 // item) * scale)  # 1 GiB per side
        a, b = _inputs(kind, fmt, n, dev)
        copy_src = torch.cat([a.view(torch.uint8), b.view(torch.uint8)])
        copy_dst = torch.empty_like(copy_src)
        copy = time_gpu(partial(copy_dst.copy_, copy_src), repeat)
        del copy_src, copy_dst
        mask = torch.empty((n + 7) // 8, dtype=torch.uint8, device=dev)
        for with_mask in (False, True):
            spec = ChunkSpec(fmt, fmt, tols, 1e-3, MaskRule("bitwise"))
            for shape in shapes if not with_mask else shapes[:1]:
                m = mask if with_mask else None
                t = time_gpu(partial(launch_diff, a, b, spec, m, shape), repeat)
                moved = 2 * n * item + (mask.numel() if with_mask else 0)
                copy_bw = 2 * (2 * n * item) / copy["median_ms"] / 1e6
                bw = moved / t["median_ms"] / 1e6
                rows.append(
                    {
                        "data": kind,
                        "dtype": fmt,
                        "mask": with_mask,
                        "tuning": shape.__dict__,
                        "elements": n,
                        **t,
                        "gbps": bw,
                        "copy_gbps": copy_bw,
                        "of_copy_bandwidth": bw / copy_bw,
                        "time_vs_copying_inputs": copy["median_ms"] / t["median_ms"],
                    }
                )
        del a, b, mask
        torch.cuda.empty_cache()
    return rows


# --------------------------------------------------------------------------- end to end


def _pair(workdir: Path, layers: int, quick: bool) -> tuple[Path, Path]:
    """A bf16 Llama-shaped pair (4 shards) with 20 % one-ULP moves, generated quickly by tiling
    a pool of realistic words (the diff's speed does not depend on where values repeat)."""
    from rlsparse_lib.io.synthetic import LlamaShape, to_bf16_words, write_pair

    shape = (
        LlamaShape(vocab=4000, hidden=256, intermediate=704, layers=layers, heads=8, kv_heads=4)
        if quick
        else LlamaShape(
            vocab=32000, hidden=2048, intermediate=5632, layers=layers, heads=32, kv_heads=4
        )
    )
    base_dir, tuned_dir = (
        workdir / f"base{layers}{'q' if quick else ''}",
        workdir / f"tuned{layers}{'q' if quick else ''}",
    )
    if (base_dir / "model.safetensors.index.json").exists():
        return base_dir, tuned_dir
    rng = np.random.default_rng(0)
    pool = 1 << 24
    words = to_bf16_words(0.02 * rng.standard_normal(pool, dtype=np.float32))
    moved = words + (rng.random(pool) < 0.2).astype(np.uint16)
    state = {"offset": 0}

    def make(name: str, shp: tuple[int, ...]):
        n = int(np.prod(shp))
        idx = (state["offset"] + np.arange(n, dtype=np.int64)) % pool
        state["offset"] += 7919
        return words[idx], moved[idx]

    write_pair(
        base_dir, tuned_dir, shape.tensors(), make, "bfloat16", shards=4, config=shape.config()
    )
    return base_dir, tuned_dir


def e2e_bench(args, ceil: dict) -> dict:
    """diff_checkpoints on the GPU and the CPU, warm page cache, against the pinned H2D rate."""
    from rlsparse_lib.diff.config import DiffConfig
    from rlsparse_lib.diff.engine import diff_checkpoints
    from rlsparse_lib.io.checkpoint import open_checkpoint
    from rlsparse_lib.io.pairing import pair_checkpoints

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    base, tuned = _pair(workdir, args.e2e_layers, args.quick)
    gen_s = time.perf_counter() - t0
    nbytes = pair_checkpoints(open_checkpoint(base), open_checkpoint(tuned)).nbytes
    for p in list(base.iterdir()) + list(tuned.iterdir()):  # warm the page cache
        with p.open("rb") as fh:
            while fh.read(64 << 20):
                pass
    repeat = 2 if args.quick else 3
    out: dict = {"pair_bytes": nbytes, "generate_s": gen_s, "layers": args.e2e_layers}
    reports = {}
    for device in ("cuda", "cpu"):
        cfg = DiffConfig(device=device)

        def run(cfg=cfg, device=device):
            reports[device] = diff_checkpoints(base, tuned, cfg, progress=False)

        t = time_host(run, repeat if device == "cuda" else 1)
        out[device] = {
            **t,
            "gbps": nbytes / t["median_s"] / GB,
            "kernel": reports[device].provenance["kernel"],
        }
    out["counts_equal"] = [r.n_changed for r in reports["cuda"].tensors] == [
        r.n_changed for r in reports["cpu"].tensors
    ]
    out["of_h2d"] = out["cuda"]["gbps"] / ceil["h2d_pinned"]["gbps"]
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return out


# --------------------------------------------------------------------------- monitor


def _monitor_shape(quick: bool):
    """The benchmark model: TinyLlama-1.1B's shape (22 layers, hidden 2048, GQA 32/4 heads,
    vocab 32000, untied), or a small one for --quick."""
    from rlsparse_lib.io.synthetic import LlamaShape

    if quick:
        return LlamaShape(vocab=4000, hidden=256, intermediate=704, layers=2, heads=8, kv_heads=4)
    return LlamaShape(vocab=32000, hidden=2048, intermediate=5632, layers=22, heads=32, kv_heads=4)


def _monitor_case(dev, shape, precision: str, batch: int, seq: int):
    """A random-init LlamaForCausalLM (built from its config on ``dev``, no download), AdamW
    (torch's default implementation, as the training runner's ``adamw_torch``), a causal-LM loss
    on random tokens, and :class:`SparsityMonitor` ``(every=1)`` attached to it.

    ``precision``: ``bf16`` (bf16 parameters and optimizer state) or ``mixed`` (fp32 master
    parameters, forward/backward under bf16 autocast; the monitor then also counts the bf16 view).
    Returns ``(step, monitor)``; ``step()`` is one optimizer step on one micro-batch."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlsparse_lib.training.monitor import SparsityMonitor

    cfg = {
        k: v
        for k, v in shape.config().items()
        if k not in ("architectures", "model_type", "torch_dtype")
    }
    config = LlamaConfig(**cfg)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(dev):
        model = LlamaForCausalLM(config)
    model = model.to(torch.bfloat16 if precision == "bf16" else torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    gen = torch.Generator(device=dev).manual_seed(0)
    ids = torch.randint(0, shape.vocab, (batch, seq), device=dev, generator=gen)
    mixed = precision == "mixed"

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=mixed):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()

    monitor = SparsityMonitor(every=1)
    monitor.attach(model)
    return step, monitor


def _monitor_run(dev, shape, precision: str, batch: int, seq: int, steps: int) -> dict:
    """Times one training step, a step followed by ``monitor.after_step`` (measure + snapshot,
    as with ``every=1`` at every step), and ``after_step`` alone."""
    import itertools

    step, monitor = _monitor_case(dev, shape, precision, batch, seq)
    counter = itertools.count(1)

    def after_step():
        monitor.after_step(next(counter))
        monitor.records.clear()  # the records are small; keep the list from growing anyway

    def monitored():
        step()
        after_step()

    plain = time_gpu(step, steps, warmup=3)
    with_monitor = time_gpu(monitored, steps, warmup=3)
    alone = time_gpu(after_step, steps, warmup=2)
    refs = monitor._init + monitor._prev
    if monitor.bf16_view:
        refs += monitor._init16 + monitor._prev16
    return {
        "precision": precision,
        "param_dtype": monitor.dtype,
        "bf16_view": monitor.bf16_view,
        "monitor_reference_bytes": sum(t.numel() * t.element_size() for t in refs),
        "step": plain,
        "step_with_monitor": with_monitor,
        "monitor_alone": alone,
        "share_of_step": alone["median_ms"] / plain["median_ms"],
        "share_of_step_by_difference": with_monitor["median_ms"] / plain["median_ms"] - 1,
    }


def monitor_bench(dev, quick: bool) -> dict:
    """Share of a training step taken by the in-training monitor, ``SparsityMonitor(every=1)``
    (the worst case: a record and a snapshot after every optimizer step), on a random-init Llama
    in pure bf16 and in mixed precision (fp32 master weights + the bf16 view)."""
    import gc

    import torch

    shape = _monitor_shape(quick)
    batch, seq = (2, 128) if quick else (8, 512)
    steps = 5 if quick else 20
    out: dict = {
        "monitor": "SparsityMonitor(every=1)",
        "model": (
            f"random-init LlamaForCausalLM from config: {shape.layers} layers, hidden "
            f"{shape.hidden}, intermediate {shape.intermediate}, {shape.heads}/{shape.kv_heads} "
            f"heads, vocab {shape.vocab}" + ("" if quick else " (TinyLlama-1.1B's shape)")
        ),
        "params": shape.n_params,
        "optimizer": "torch.optim.AdamW (default implementation), one micro-batch per step",
        "batch": batch,
        "seq_len": seq,
        "tokens_per_step": batch * seq,
        "runs": [],
    }
    for precision in ("bf16", "mixed"):
        try:
            out["runs"].append(_monitor_run(dev, shape, precision, batch, seq, steps))
        except torch.cuda.OutOfMemoryError as exc:
            out["runs"].append({"precision": precision, "error": f"out of memory: {exc}"[:300]})
        gc.collect()
        torch.cuda.empty_cache()
    return out


# --------------------------------------------------------------------------- report


def targets(r: dict) -> dict:
    best = max(
        (
            k
            for k in r["kernel"]
            if k["data"] == "ulp20" and k["dtype"] == "bfloat16" and not k["mask"]
        ),
        key=lambda k: k["gbps"],
    )
    out = {
        "kernel_of_copy_bandwidth": {
            "value": best["of_copy_bandwidth"],
            "target": 0.70,
            "met": best["of_copy_bandwidth"] >= 0.70,
        },
        "e2e_of_h2d": {
            "value": r["e2e"]["of_h2d"],
            "target": 0.80,
            "met": r["e2e"]["of_h2d"] >= 0.80,
        },
    }
    for run in r["monitor"]["runs"]:
        if "share_of_step" in run:
            share = run["share_of_step"]
            key = "monitor_share_of_step" + ("" if run["precision"] == "bf16" else "_mixed")
            out[key] = {"value": share, "target": 0.01, "met": share < 0.01}
    return out


def print_table(r: dict) -> None:
    d = r["device"]
    print(
        f"\n{d['name']}  ({d['multiprocessors']} SMs, {d['memory_gib']} GiB)  torch {r['versions']['torch']}  triton {r['versions']['triton']}"
    )
    c = r["ceilings"]
    print(
        f"device copy {c['d2d_copy']['gbps']:.0f} GB/s (read+write) | pinned H2D {c['h2d_pinned']['gbps']:.1f} GB/s | page cache -> pinned {c['pagecache_to_pinned']['gbps']:.1f} GB/s ({c['pagecache_to_pinned']['threads']} threads)"
    )
    print(
        f"\n{'data':7} {'dtype':9} {'mask':5} {'rows':>4} {'warps':>5} {'cta/sm':>6} {'win':>3} {'st':>2} {'ms':>8} {'GB/s':>7} {'of copy':>8}"
    )
    for k in r["kernel"]:
        t = k["tuning"]
        print(
            f"{k['data']:7} {k['dtype']:9} {k['mask']!s:5} {t['rows']:>4} {t['num_warps']:>5} {t['ctas_per_sm']:>6} {t['window']:>3} {t['stages']:>2} {k['median_ms']:>8.3f} {k['gbps']:>7.0f} {k['of_copy_bandwidth']:>8.0%}"
        )
    e = r["e2e"]
    print(
        f"\nend to end ({e['pair_bytes'] / GB:.2f} GB pair, warm page cache): cuda {e['cuda']['gbps']:.1f} GB/s ({e['cuda']['median_s']:.2f} s) = {e['of_h2d']:.0%} of H2D | cpu {e['cpu']['gbps']:.1f} GB/s | counts equal: {e['counts_equal']}"
    )
    m = r["monitor"]
    print(
        f"monitor ({m['monitor']}) on {m['model']}, {m['params'] / 1e9:.2f}B params, {m['tokens_per_step']} tokens per step:"
    )
    for run in m["runs"]:
        if "error" in run:
            print(f"  {run['precision']:5}: {run['error']}")
            continue
        print(
            f"  {run['precision']:5} ({run['param_dtype']} weights{', + bf16 view' if run['bf16_view'] else ''}): {run['monitor_alone']['median_ms']:.3f} ms per step of {run['step']['median_ms']:.2f} ms = {run['share_of_step']:.2%} (by difference {run['share_of_step_by_difference']:.2%}), references {run['monitor_reference_bytes'] / GB:.2f} GB"
        )
    print("\ntargets:")
    for name, t in r["targets"].items():
        print(
            f"  {name:28} {t['value']:.3f} (target {'<' if 'monitor' in name else '>='} {t['target']}) {'MET' if t['met'] else 'MISSED'}"
        )


if __name__ == "__main__":
    sys.exit(main())
