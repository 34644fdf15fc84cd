"""Scale-out evidence for work units (issue 13 item 7): a benchmark, not a test.

1. ``plan``: a synthetic DeepSeek-V3-shaped pair (the real tensor inventory: 91,991 tensors incl.
   the MTP layer, each projection with its F32 128x128 ``weight_scale_inv`` blocks; 163 shards per
   side) written as header-only safetensors files (each file is its header followed by a hole:
   sparse, no data on disk), then opened, paired and cut into work units, in a fresh process
   (imports included). The projections are written as BF16, not FP8 E4M3, and without a
   ``quantization_config``, so that every tensor is paired as a plain float tensor (what the
   plan's cost depends on: the count of tensors and shards), which doubles the bytes described.
2. ``merge``: the driver's memory for merging that plan's unit results: one real per-tensor
   result (from a diff of a small pair) replicated to every planned tensor, merged into the
   report by ``merge_units`` and saved as ``rlsparse diff --json`` does (streamed, tensor by
   tensor); peak traced Python memory (tracemalloc) and the per-tensor size.
3. ``local``: ``rlsparse diff`` on the ~1B bench pair (bench/diff_bench.py's, generated under
   --out if missing) in process vs ``--cluster local:2`` (median of --repeat, niced subprocesses).
4. ``ray``: Ray's start-up alone (``ray.init`` of a local 2-CPU instance plus one task), and
   ``--cluster ray`` on the same pair (start-up included).

usage: nice python bench/scale_bench.py [--out bench/out] [--repeat 3] [--only plan,merge,...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import struct
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
SECTIONS = ("plan", "merge", "local", "ray")

# ---- the DeepSeek-V3 inventory -----------------------------------------------------------------
HIDDEN, VOCAB, HEADS = 7168, 129280, 128
Q_LORA, KV_LORA, ROPE, NOPE, V_DIM = 1536, 512, 64, 128, 128
DENSE_INTER, MOE_INTER, EXPERTS = 18432, 2048, 256
DENSE_LAYERS, LAYERS = 3, 61  # layers 0-2 dense, 3-60 MoE; layer 61 is the MTP module
SHARDS = 163
BLOCK = 128


def _fp8(name: str, rows: int, cols: int) -> list[tuple[str, str, tuple[int, ...]]]:
    """A projection (FP8 in the real checkpoint, BF16 here: see the module docstring) and its
    block scales."""
    scales = (math.ceil(rows / BLOCK), math.ceil(cols / BLOCK))
    return [(name, "BF16", (rows, cols)), (name + "_scale_inv", "F32", scales)]


def _mlp(prefix: str, inter: int) -> list[tuple[str, str, tuple[int, ...]]]:
    out = _fp8(f"{prefix}.gate_proj.weight", inter, HIDDEN)
    out += _fp8(f"{prefix}.up_proj.weight", inter, HIDDEN)
    return out + _fp8(f"{prefix}.down_proj.weight", HIDDEN, inter)


def deepseek_v3_tensors() -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, safetensors dtype, shape) of every tensor of DeepSeek-V3's HF checkpoint."""
    out = [("model.embed_tokens.weight", "BF16", (VOCAB, HIDDEN))]
    for i in range(LAYERS + 1):
        p = f"model.layers.{i}"
        out += [
            (f"{p}.input_layernorm.weight", "BF16", (HIDDEN,)),
            (f"{p}.post_attention_layernorm.weight", "BF16", (HIDDEN,)),
            (f"{p}.self_attn.q_a_layernorm.weight", "BF16", (Q_LORA,)),
            (f"{p}.self_attn.kv_a_layernorm.weight", "BF16", (KV_LORA,)),
        ]
        out += _fp8(f"{p}.self_attn.q_a_proj.weight", Q_LORA, HIDDEN)
        out += _fp8(f"{p}.self_attn.q_b_proj.weight", HEADS * (NOPE + ROPE), Q_LORA)
        out += _fp8(f"{p}.self_attn.kv_a_proj_with_mqa.weight", KV_LORA + ROPE, HIDDEN)
        out += _fp8(f"{p}.self_attn.kv_b_proj.weight", HEADS * (NOPE + V_DIM), KV_LORA)
        out += _fp8(f"{p}.self_attn.o_proj.weight", HIDDEN, HEADS * V_DIM)
        if i < DENSE_LAYERS:
            out += _mlp(f"{p}.mlp", DENSE_INTER)
            continue
        out += [
            (f"{p}.mlp.gate.weight", "BF16", (EXPERTS, HIDDEN)),
            (f"{p}.mlp.gate.e_score_correction_bias", "F32", (EXPERTS,)),
        ]
        for e in range(EXPERTS):
            out += _mlp(f"{p}.mlp.experts.{e}", MOE_INTER)
        out += _mlp(f"{p}.mlp.shared_experts", MOE_INTER)
        if i == LAYERS:  # the multi-token-prediction module
            out += [
                (f"{p}.embed_tokens.weight", "BF16", (VOCAB, HIDDEN)),
                (f"{p}.enorm.weight", "BF16", (HIDDEN,)),
                (f"{p}.hnorm.weight", "BF16", (HIDDEN,)),
                (f"{p}.eh_proj.weight", "BF16", (HIDDEN, 2 * HIDDEN)),
                (f"{p}.shared_head.norm.weight", "BF16", (HIDDEN,)),
                (f"{p}.shared_head.head.weight", "BF16", (VOCAB, HIDDEN)),
            ]
    out += [("model.norm.weight", "BF16", (HIDDEN,)), ("lm_head.weight", "BF16", (VOCAB, HIDDEN))]
    return out


_ITEMSIZE = {"BF16": 2, "F32": 4}


def write_header_only(folder: Path, tensors: list, shards: int = SHARDS) -> int:
    """Shards of ``tensors`` in safetensors layout, each a header then a hole of the data's size
    (sparse files), plus ``model.safetensors.index.json``; returns the data bytes described."""
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [_ITEMSIZE[d] * math.prod(s) for _, d, s in tensors]
    target = sum(sizes) / shards
    groups: list[list[int]] = [[]]
    acc = 0.0
    for i, n in enumerate(sizes):
        if groups[-1] and acc + n > target and len(groups) < shards:
            groups.append([])
            acc = 0.0
        groups[-1].append(i)
        acc += n
    weight_map = {}
    for k, idx in enumerate(groups):
        fname = f"model-{k + 1:05d}-of-{len(groups):06d}.safetensors"
        header: dict = {"__metadata__": {"format": "pt"}}
        off = 0
        for i in idx:
            name, dtype, shape = tensors[i]
            header[name] = {
                "dtype": dtype,
                "shape": list(shape),
                "data_offsets": [off, off + sizes[i]],
            }
            off += sizes[i]
            weight_map[name] = fname
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        path = folder / fname
        with path.open("wb") as fh:
            fh.write(struct.pack("<Q", len(raw)) + raw)
            fh.truncate(8 + len(raw) + off)  # a hole: no data blocks on disk
    total = sum(sizes)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "config.json").write_text(json.dumps({"model_type": "deepseek_v3"}))
    return total


def ensure_671b(root: Path) -> tuple[Path, Path, int, int]:
    folder = root / "scale" / "ds671"
    tensors = deepseek_v3_tensors()
    spec = json.dumps({"n": len(tensors), "shards": SHARDS, "v": 2})
    marker = folder / "spec.json"
    total = sum(_ITEMSIZE[d] * math.prod(s) for _, d, s in tensors)
    if not (marker.exists() and marker.read_text() == spec):
        print(f"writing header-only DeepSeek-V3 pair ({len(tensors):,} tensors) ...", flush=True)
        for side in ("base", "tuned"):
            write_header_only(folder / side, tensors)
        marker.write_text(spec)
    return folder / "base", folder / "tuned", len(tensors), total


_PLAN = """
import sys, time, json
t0 = time.perf_counter()
from rlsparse_lib.diff.units import plan_units
from rlsparse_lib.io.checkpoint import open_checkpoint
from rlsparse_lib.io.pairing import pair_checkpoints
t1 = time.perf_counter()
b, t = open_checkpoint(sys.argv[1]), open_checkpoint(sys.argv[2])
t2 = time.perf_counter()
plan = pair_checkpoints(b, t)
t3 = time.perf_counter()
units = plan_units(plan)
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "open_s": t2 - t1, "pair_s": t3 - t2, "units_s": t4 - t3,
                  "total_s": t4 - t0, "n_pairs": len(plan.pairs), "n_skipped": len(plan.skipped),
                  "n_units": len(units), "plan_bytes": plan.nbytes,
                  "max_unit_bytes": max(u.nbytes for u in units)}))
"""


def bench_plan(root: Path, repeat: int) -> dict:
    base, tuned, n_tensors, total = ensure_671b(root)
    runs = []
    for _ in range(repeat):
        out = subprocess.run(
            [sys.executable, "-c", _PLAN, str(base), str(tuned)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    best = min(runs, key=lambda r: r["total_s"])
    disk = sum(p.stat().st_blocks * 512 for p in base.parent.rglob("*") if p.is_file())
    return {
        "n_tensors_per_side": n_tensors,
        "shards_per_side": SHARDS,
        "data_bytes_per_side": total,
        "on_disk_bytes_both_sides": disk,
        "median_total_s": statistics.median(r["total_s"] for r in runs),
        **best,
    }


def bench_merge(root: Path) -> dict:
    """Driver memory for merging the 671B plan's unit results, from a real per-tensor result."""
    from rlsparse_lib.diff.config import DiffConfig
    from rlsparse_lib.diff.engine import diff_checkpoints
    from rlsparse_lib.diff.report import TensorResult
    from rlsparse_lib.diff.units import merge_units, plan_units
    from rlsparse_lib.io.checkpoint import open_checkpoint
    from rlsparse_lib.io.pairing import pair_checkpoints
    from rlsparse_lib.io.synthetic import one_ulp_pair, write_pair

    small = root / "scale" / "merge_pair"
    if not (small / "tuned").exists():
        specs = [(f"model.layers.{i}.mlp.up_proj.weight", (256, 512)) for i in range(8)]
        write_pair(small / "base", small / "tuned", specs, one_ulp_pair(0.2, seed=0))
    real = diff_checkpoints(small / "base", small / "tuned", progress=False)
    sample = next(iter(real.tensors))
    one = sample.to_dict()
    base, tuned, _, _ = ensure_671b(root)
    plan = pair_checkpoints(open_checkpoint(base), open_checkpoint(tuned))
    units = plan_units(plan)
    config = DiffConfig()
    tracemalloc.start()
    t0 = time.perf_counter()
    partials: dict[int, dict[str, TensorResult]] = {}
    for u in units:  # what arrives from the workers: one result per tensor
        part = {}
        for p in u.pairs:
            d = dict(one, name=p.name, numel=p.numel, kind=p.kind)
            part[p.name] = TensorResult.from_dict(d)
        partials[u.index] = part
    held, _ = tracemalloc.get_traced_memory()
    report = merge_units(plan, config, partials, "cpu-c", 0.0, None, 1, units)
    _, merged_peak = tracemalloc.get_traced_memory()
    out = root / "scale" / "671b.report.json"
    report.save_json(out)  # what `rlsparse diff --json` writes (streamed, tensor by tensor)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "n_tensors": len(plan.pairs),
        "n_units": len(units),
        "partials_bytes": held,
        "per_tensor_result_bytes": held / len(plan.pairs),
        "peak_bytes_merge": merged_peak,
        "peak_bytes_merge_and_save": peak,
        "report_json_bytes": out.stat().st_size,
        "seconds": time.perf_counter() - t0,
        "sample_result_keys": sorted(one),
    }


def _time(cmd: list[str], repeat: int) -> list[float]:
    walls = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        walls.append(time.perf_counter() - t0)
    return walls


def bench_local(root: Path, repeat: int) -> dict:
    sys.path.insert(0, str(HERE))
    from diff_bench import PAIRS, ensure_pair

    base, tuned = ensure_pair(root, "1b", PAIRS["1b"])
    rl = [str(BIN / "rlsparse"), "diff", str(base), str(tuned), "-q"]
    _time(rl, 1)  # warm the page cache
    plain = _time(rl, repeat)
    pool = _time([*rl, "--cluster", "local:2"], repeat)
    return {
        "pair": "1b",
        "bytes": sum(
            p.stat().st_size for p in [*base.glob("*.safetensors"), *tuned.glob("*.safetensors")]
        ),
        "plain_s": statistics.median(plain),
        "local2_s": statistics.median(pool),
        "ratio": statistics.median(pool) / statistics.median(plain),
        "runs": {"plain": plain, "local:2": pool},
        "cpus": os.cpu_count(),
        "loadavg_after": list(os.getloadavg()),
    }


_RAY_START = """
import time, json
t0 = time.perf_counter()
import ray
t1 = time.perf_counter()
ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
t2 = time.perf_counter()
@ray.remote
def f():
    return 1
ray.get(f.remote())
t3 = time.perf_counter()
ray.shutdown()
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "init_s": t2 - t1, "first_task_s": t3 - t2,
                  "shutdown_s": t4 - t3}))
"""


def bench_ray(root: Path, repeat: int) -> dict:
    sys.path.insert(0, str(HERE))
    from diff_bench import PAIRS, ensure_pair

    starts = []
    for _ in range(repeat):
        out = subprocess.run(
            [sys.executable, "-c", _RAY_START], check=True, capture_output=True, text=True
        ).stdout
        starts.append(json.loads(out.strip().splitlines()[-1]))
    base, tuned = ensure_pair(root, "1b", PAIRS["1b"])
    rl = [str(BIN / "rlsparse"), "diff", str(base), str(tuned), "-q", "--cluster", "ray"]
    env_walls = _time(rl, repeat)
    med = {k: statistics.median(s[k] for s in starts) for k in starts[0]}
    return {
        "startup": med,
        "startup_total_s": sum(med.values()),
        "ray_diff_1b_s": statistics.median(env_walls),
        "runs": env_walls,
    }


def render(res: dict) -> str:
    lines = []
    if "plan" in res:
        p = res["plan"]
        lines += [
            f"671B-shaped plan: {p['n_tensors_per_side']:,} tensors x 2 in {p['shards_per_side']} "
            f"shards/side, {p['data_bytes_per_side'] / 1e9:.0f} GB/side described, "
            f"{p['on_disk_bytes_both_sides'] / 1e6:.1f} MB on disk",
            f"  fresh process: {p['median_total_s']:.2f} s median (imports {p['import_s']:.2f}, "
            f"open {p['open_s']:.2f}, pair {p['pair_s']:.2f}, units {p['units_s']:.3f}); "
            f"{p['n_pairs']:,} pairs, {p['n_units']} units (max {p['max_unit_bytes'] / 2**30:.2f} GiB)",
        ]
    if "merge" in res:
        m = res["merge"]
        lines.append(
            f"merge: {m['per_tensor_result_bytes'] / 1e3:.1f} kB per tensor result, "
            f"{m['partials_bytes'] / 1e6:.0f} MB held for {m['n_tensors']:,} tensors, "
            f"peak {m['peak_bytes_merge'] / 1e6:.0f} MB merged, {m['peak_bytes_merge_and_save'] / 1e6:.0f} MB "
            f"once its JSON ({m['report_json_bytes'] / 1e6:.0f} MB) is saved, {m['seconds']:.1f} s"
        )
    if "local" in res:
        lo = res["local"]
        lines.append(
            f"1B pair ({lo['bytes'] / 1e9:.2f} GB): in-process {lo['plain_s']:.2f} s, "
            f"--cluster local:2 {lo['local2_s']:.2f} s (x{lo['ratio']:.2f}); {lo['cpus']} CPUs"
        )
    if "ray" in res:
        r = res["ray"]
        s = r["startup"]
        lines.append(
            f"Ray start-up {r['startup_total_s']:.1f} s (import {s['import_s']:.1f}, init "
            f"{s['init_s']:.1f}, first task {s['first_task_s']:.1f}, shutdown "
            f"{s['shutdown_s']:.1f}); --cluster ray on the 1B pair {r['ray_diff_1b_s']:.1f} s"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "out")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"subset of {','.join(SECTIONS)}")
    args = ap.parse_args()
    chosen = args.only.split(",")
    res: dict = {"loadavg_before": list(os.getloadavg())}
    if "plan" in chosen:
        res["plan"] = bench_plan(args.out, args.repeat)
    if "merge" in chosen:
        res["merge"] = bench_merge(args.out)
    if "local" in chosen:
        res["local"] = bench_local(args.out, args.repeat)
    if "ray" in chosen:
        res["ray"] = bench_ray(args.out, args.repeat)
    path = args.out / "scale_bench.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps(old | res, indent=1))
    print(render(res))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
