"""Block codec of a sparse patch: changed indices and their replacement words, per chunk.

A block covers elements ``[start, start + n)`` of one tensor. Its changed positions are coded as
either a bit-packed mask (``bitmap``, 1 bit per element; wins at high densities) or LEB128 varints
of the gaps between successive changed positions (``gaps``); the smaller is kept. Replacement
words are coded losslessly against the base word (``xform``):

* ``sub``: (tuned - base) modulo 2^bits, zigzag-mapped (small signed word distances -> small
  unsigned numbers). This is *not* a float delta: it is an exact integer transform of the raw
  words, so application is bit exact for every dtype.
* ``xor``: tuned XOR base.

The transformed words are split into byte planes (most significant byte first), concatenated,
and compressed with zstandard together; the index stream is a second zstandard frame.
"""

from __future__ import annotations

import numpy as np
import zstandard as zstd

XFORMS = ("sub", "xor")
INDEX_CODES = ("bitmap", "gaps")


def varint_encode(values: np.ndarray) -> bytes:
    """LEB128 of non-negative integers (< 2^63), vectorised."""
    v = values.astype(np.uint64)
    if v.size == 0:
        return b""
    nbytes = np.ones(v.size, np.int64)
    t = v >> np.uint64(7)
    while True:
        more = t > 0
        if not more.any():
            break
        nbytes += more
        t >>= np.uint64(7)
    ends = np.cumsum(nbytes)
    starts = ends - nbytes
    out = np.zeros(int(ends[-1]), np.uint8)
    t = v.copy()
    for k in range(int(nbytes.max())):
        sel = nbytes > k
        byte = (t[sel] & np.uint64(0x7F)).astype(np.uint8)
        cont = (nbytes[sel] > k + 1).astype(np.uint8) << 7
        out[starts[sel] + k] = byte | cont
        t[sel] >>= np.uint64(7)
    return out.tobytes()


def varint_decode(data: bytes | np.ndarray, count: int) -> np.ndarray:
    """Inverse of :func:`varint_encode`; raises ValueError when ``data`` is not ``count`` varints."""
    b = np.frombuffer(data, np.uint8) if isinstance(data, bytes) else data
    ends = np.flatnonzero(b < 0x80)
    if ends.size != count or (count and ends[-1] != b.size - 1) or (not count and b.size):
        raise ValueError(f"index stream holds {ends.size} varints, expected {count}")
    starts = np.concatenate(([0], ends[:-1] + 1)) if count else ends
    lengths = ends - starts + 1
    if count and lengths.max() > 9:
        raise ValueError("varint too long")
    out = np.zeros(count, np.uint64)
    for k in range(int(lengths.max()) if count else 0):
        sel = lengths > k
        out[sel] |= (b[starts[sel] + k] & 0x7F).astype(np.uint64) << np.uint64(7 * k)
    return out


def _signed(word: np.dtype) -> np.dtype:
    return np.dtype(f"int{word.itemsize * 8}")


def forward(base: np.ndarray, tuned: np.ndarray, xform: str) -> np.ndarray:
    """Replacement words -> coded words (same unsigned dtype)."""
    if xform == "xor":
        return base ^ tuned
    d = tuned - base  # unsigned wrap-around: exact modulo 2^bits
    s = d.view(_signed(d.dtype))
    bits = d.dtype.itemsize * 8
    return (d << d.dtype.type(1)) ^ (s >> (bits - 1)).view(d.dtype)


def inverse(base: np.ndarray, coded: np.ndarray, xform: str) -> np.ndarray:
    """Coded words -> replacement words."""
    if xform == "xor":
        return base ^ coded
    one = coded.dtype.type(1)
    d = (coded >> one) ^ (-(coded & one).view(_signed(coded.dtype))).view(coded.dtype)
    return base + d


def to_planes(words: np.ndarray) -> bytes:
    """Byte planes, most significant first (little-endian words)."""
    size = words.dtype.itemsize
    if size == 1:
        return words.tobytes()
    return np.ascontiguousarray(words.view(np.uint8).reshape(-1, size)[:, ::-1].T).tobytes()


def from_planes(data: bytes, word: np.dtype, count: int) -> np.ndarray:
    size = word.itemsize
    raw = np.frombuffer(data, np.uint8)
    if raw.size != count * size:
        raise ValueError(f"value stream holds {raw.size} bytes, expected {count * size}")
    if size == 1:
        return raw.view(word).copy()
    return np.ascontiguousarray(raw.reshape(size, count)[::-1].T).view(word).reshape(count)


def encode_block(
    base: np.ndarray, tuned: np.ndarray, xform: str, cctx: zstd.ZstdCompressor
) -> tuple[int, str, bytes, bytes]:
    """Code one chunk pair of raw words.

    Returns:
        (number changed, index code, compressed index stream, compressed value stream); the
        streams are empty when nothing changed.
    """
    changed = base != tuned
    pos = np.flatnonzero(changed)
    k = int(pos.size)
    if k == 0:
        return 0, "gaps", b"", b""
    gaps = np.diff(pos, prepend=-1) - 1
    as_gaps = cctx.compress(varint_encode(gaps))
    as_bitmap = cctx.compress(np.packbits(changed, bitorder="little").tobytes())
    code, idx = ("bitmap", as_bitmap) if len(as_bitmap) < len(as_gaps) else ("gaps", as_gaps)
    values = cctx.compress(to_planes(forward(base[pos], tuned[pos], xform)))
    return k, code, idx, values


def decode_changes(
    base: np.ndarray,
    n_changed: int,
    code: str,
    idx: bytes,
    values: bytes,
    xform: str,
    dctx: zstd.ZstdDecompressor,
) -> tuple[np.ndarray, np.ndarray]:
    """One block's changes against a chunk of base words.

    Returns:
        (positions in the chunk, int64 ascending; their replacement words, ``base.dtype``).

    Raises:
        ValueError: the streams do not decode to ``n_changed`` positions inside the chunk.
    """
    n = base.size
    if n_changed == 0:
        return np.zeros(0, np.int64), base[:0].copy()
    raw_idx = dctx.decompress(idx)
    if code == "bitmap":
        if len(raw_idx) != (n + 7) // 8:
            raise ValueError("bitmap has the wrong length")
        mask = np.unpackbits(np.frombuffer(raw_idx, np.uint8), count=n, bitorder="little")
        pos = np.flatnonzero(mask)
        if pos.size != n_changed:
            raise ValueError(f"bitmap marks {pos.size} positions, expected {n_changed}")
    elif code == "gaps":
        gaps = varint_decode(raw_idx, n_changed)
        pos_u = np.cumsum(gaps + np.uint64(1)) - np.uint64(1)
        if bool((pos_u >= np.uint64(n)).any()):
            raise ValueError("changed position beyond the chunk")
        pos = pos_u.astype(np.int64)
    else:
        raise ValueError(f"unknown index code {code!r}")
    coded = from_planes(dctx.decompress(values), base.dtype, n_changed)
    return pos, inverse(base[pos], coded, xform)
