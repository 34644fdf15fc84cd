"""Sizes of sparse-patch codings on a synthetic bf16 update (README, "Sparse patches").

A seeded 16M-element bf16 tensor (normal, std 0.02) and a copy with 1 % / 15 % of its elements,
at random positions, moved 1-3 ULP up or down. Prints bytes per changed element of each index and
value coding and of the chosen default (varint gaps or bitmap, whichever is smaller; ``sub``
zigzag word distance in byte planes; zstandard level 3).

    .venv/bin/python bench/patch_bench.py [--n 16777216]
"""

from __future__ import annotations

import argparse
import time

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1 << 24)
    n = ap.parse_args().n
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


if __name__ == "__main__":
    main()
