"""The floor: the least a bf16 diff must do. mmap both checkpoints via their index, compare uint16
words in 1M-element chunks, and count only bitwise changes and |Δ| <= 1e-5 among them.

usage: python bench/numpy_floor.py BASE_DIR TUNED_DIR
"""

import json
import struct
import sys
from pathlib import Path

import numpy as np

CHUNK = 1 << 20


def tensors(folder: Path) -> dict:
    index = folder / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values()))
        if index.exists()
        else ["model.safetensors"]
    )
    out = {}
    for f in files:
        raw = (folder / f).open("rb").read(8)
        (n,) = struct.unpack("<Q", raw)
        header = json.loads((folder / f).open("rb").read(8 + n)[8:])
        header.pop("__metadata__", None)
        mm = np.memmap(folder / f, dtype=np.uint8, mode="r")
        for name, e in header.items():
            b, end = e["data_offsets"]
            out[name] = mm[8 + n + b : 8 + n + end].view(np.uint16)
    return out


def main() -> None:
    a, b = tensors(Path(sys.argv[1])), tensors(Path(sys.argv[2]))
    n = changed = le = 0
    for name, x in a.items():
        y = b[name]
        for s in range(0, x.size, CHUNK):
            xs, ys = x[s : s + CHUNK], y[s : s + CHUNK]
            ne = xs != ys
            idx = np.flatnonzero(ne)
            fx = (xs[idx].astype(np.uint32) << 16).view(np.float32)
            fy = (ys[idx].astype(np.uint32) << 16).view(np.float32)
            changed += idx.size
            le += int(np.count_nonzero(np.abs(fy - fx) <= 1e-5))
        n += x.size
    print(json.dumps({"n_params": n, "n_changed": changed, "n_unchanged_1e-05": n - changed + le}))


if __name__ == "__main__":
    main()
