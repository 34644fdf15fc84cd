"""Subnetwork masks: build from a diff, streaming set algebra, density, random masks of matched density.

Masks are the bit-packed files of :mod:`rlsparse_lib.io.maskfile` (one uint8 tensor per parameter,
1 bit per weight, JSON metadata). Every operation here streams tensor by tensor in byte ranges of
the memory-mapped inputs and releases the pages after each range, so memory stays bounded whatever
the model size; outputs appear only when complete (temporary file, then rename).

Derived masks record how they were made in their metadata ``rule``: ``{"kind": "and"|"or"|"andnot"
|"xor"|"not", "operands": [rule, ...]}`` for algebra and ``{"kind": "random", "stratify", "seed",
"sampler"}`` for random masks; ``sources`` describes the input masks (and the base checkpoint).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from rlsparse_lib.diff.config import DEFAULT_TOLERANCES, DEFAULT_UNIT_BYTES, DiffConfig
from rlsparse_lib.diff.engine import diff_checkpoints
from rlsparse_lib.diff.report import DiffReport
from rlsparse_lib.errors import CheckpointError, ConfigError, RlsparseError
from rlsparse_lib.io.checkpoint import Checkpoint, TensorInfo, open_checkpoint
from rlsparse_lib.io.chunks import stream_chunks
from rlsparse_lib.io.maskfile import MaskFile, MaskWriter, packed_size
from rlsparse_lib.io.naming import parse_param_name
from rlsparse_lib.masks import bitops
from rlsparse_lib.progress import byte_progress, progress_bar
from rlsparse_lib.rules import MaskRule

MaskLike = str | Path | MaskFile
CheckpointLike = str | Path | Checkpoint

#: bytes of packed mask per read (per input); 16 MiB = 128 Mi weights
DEFAULT_CHUNK_BYTES = 1 << 24
#: weights per step when θ0 words are read alongside (binade strata, random sampling)
DEFAULT_CHUNK_ELEMS = 1 << 22
OPS = ("and", "or", "andnot", "xor", "not")
STRATIFY = ("global", "tensor", "binade")
GROUP_BY = ("tensor", "layer", "module", "group")
STRATA_DTYPES = ("bfloat16", "float16", "float32")


class MaskError(RlsparseError):
    """Masks that cannot be combined or compared (different tensors or shapes)."""


# ---- opening, layout, ranges ----------------------------------------------------------------
@contextlib.contextmanager
def opened(mask: MaskLike) -> Iterator[MaskFile]:
    """Yield an open :class:`MaskFile`; close it afterwards only if it was opened here."""
    if isinstance(mask, MaskFile):
        yield mask
        return
    with MaskFile.open(mask) as m:
        yield m


@contextlib.contextmanager
def opened_all(masks: Sequence[MaskLike]) -> Iterator[list[MaskFile]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(opened(m)) for m in masks]


def check_same_layout(masks: Sequence[MaskFile]) -> None:
    """Raise :class:`MaskError` unless all masks hold the same tensor names with the same shapes."""
    first = masks[0]
    for other in masks[1:]:
        missing = [n for n in first.names if n not in other.shapes]
        extra = [n for n in other.names if n not in first.shapes]
        if missing or extra:
            name, side = (missing[0], other.path) if missing else (extra[0], first.path)
            raise MaskError(
                f"{first.path} and {other.path} hold different tensors "
                f"({len(missing)} missing, {len(extra)} extra): '{name}' is not in {side}"
            )
        for name in first.names:
            if tuple(first.shapes[name]) != tuple(other.shapes[name]):
                raise MaskError(
                    f"tensor '{name}': shape {list(first.shapes[name])} in {first.path} but "
                    f"{list(other.shapes[name])} in {other.path}"
                )


def numel_of(mask: MaskFile, name: str) -> int:
    return math.prod(mask.shapes[name])


def describe_mask(mask: MaskFile) -> dict:
    """JSON-able provenance of a mask file: path, rule, sources, counts."""
    meta = mask.meta
    return {
        "path": str(mask.path),
        "rule": meta.get("rule"),
        "sources": meta.get("sources"),
        "n_tensors": len(mask.names),
        "n_total": meta.get("n_total"),
        "n_set_total": meta.get("n_set_total"),
        "density": meta.get("density"),
    }


def n_set_of(mask: MaskFile, name: str) -> int:
    """Set bits of tensor ``name`` (from the metadata; counted when absent)."""
    counts = mask.meta.get("n_set")
    if counts is not None and name in counts:
        return int(counts[name])
    return bitops.popcount(mask.packed(name))


# ---- building -------------------------------------------------------------------------------
def build_mask(
    base: CheckpointLike,
    tuned: CheckpointLike,
    out: str | Path,
    *,
    rule: MaskRule | None = None,
    compare_dtype: str | None = None,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    tolerances: tuple[float, ...] = DEFAULT_TOLERANCES,
    progress: bool = True,
    max_unit_bytes: int = DEFAULT_UNIT_BYTES,
    resume: str | Path | None = None,
    cluster: str | None = None,
) -> DiffReport:
    """Write the changed mask of ``base`` → ``tuned`` to ``out`` (one streaming diff pass).

    Args:
        rule: which weights get a 1 bit: ``bitwise`` (default; bits differ in the compare dtype),
            ``abs`` (|Δ| > tol; the paper's rule is tol = 1e-5) or ``rel``.
        compare_dtype, include, exclude, tolerances: as :class:`~rlsparse_lib.diff.engine.DiffConfig`.
        max_unit_bytes, resume, cluster: work units, their resume folder and executor, as for
            :func:`~rlsparse_lib.diff.engine.diff_checkpoints` (the mask file is the same bytes).

    Returns:
        The diff report of the same pass (sparsity at every rule, provenance).
    """
    config = DiffConfig(
        tolerances=tolerances,
        compare_dtype=compare_dtype,
        include=include,
        exclude=exclude,
        mask_rule=rule or MaskRule(),
        max_unit_bytes=max_unit_bytes,
    )
    return diff_checkpoints(
        base, tuned, config, mask_out=out, progress=progress, resume=resume, cluster=cluster
    )


# ---- set algebra ----------------------------------------------------------------------------
def combine_masks(
    op: str,
    masks: Sequence[MaskLike],
    out: str | Path,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: bool = True,
) -> Path:
    """Streaming set algebra over masks of the same layout.

    Args:
        op: ``and`` (∩ of all), ``or`` (∪ of all), ``andnot`` (first ∖ ∪ of the others),
            ``xor`` (odd number of members), ``not`` (complement of a single mask).
        masks: input masks (paths or open :class:`MaskFile`).
        out: output mask file.

    Raises:
        MaskError: different tensors or shapes; ConfigError: bad ``op`` or operand count.
    """
    if op not in OPS:
        raise ConfigError(f"unknown mask operation {op!r} (use one of {', '.join(OPS)})")
    want = "exactly one" if op == "not" else "at least two"
    if (op == "not") != (len(masks) == 1) or not masks:
        raise ConfigError(f"mask operation '{op}' needs {want} masks, got {len(masks)}")
    with opened_all(masks) as files:
        check_same_layout(files)
        first = files[0]
        rule = {"kind": op, "operands": [m.meta.get("rule") for m in files]}
        sources = {"operands": [describe_mask(m) for m in files]}
        total = sum(packed_size(numel_of(first, n)) * len(files) for n in first.names)
        bar = byte_progress(total, f"mask {op}", progress)
        bits = [m.bits() for m in files]
        try:
            with MaskWriter(out, first.shapes, rule, sources) as writer:
                for name in first.names:
                    numel = numel_of(first, name)
                    # chunk_bytes packed bytes of every input per step
                    chunks = stream_chunks(name, numel, bits, chunk_bytes * 8, on_bytes=bar.update)
                    for chunk in chunks:
                        res = _apply(op, list(chunk.words))
                        if op == "not" and chunk.stop == numel and numel % 8:  # clear the padding
                            res[-1] &= np.uint8((1 << (numel % 8)) - 1)
                        writer.write(name, res)
        finally:
            bar.close()
    return Path(out)


def _apply(op: str, parts: list[np.ndarray]) -> np.ndarray:
    if op == "not":
        return np.bitwise_not(parts[0])
    if op == "andnot":
        rest = parts[1].copy()
        for p in parts[2:]:
            np.bitwise_or(rest, p, out=rest)
        return np.bitwise_and(parts[0], np.bitwise_not(rest, out=rest), out=rest)
    fn = {"and": np.bitwise_and, "or": np.bitwise_or, "xor": np.bitwise_xor}[op]
    res = parts[0].copy()
    for p in parts[1:]:
        fn(res, p, out=res)
    return res


# ---- density --------------------------------------------------------------------------------
def mask_density(mask: MaskLike, by: str = "tensor"):
    """Density of a mask per tensor, layer, module or group.

    Returns:
        DataFrame with the grouping columns (``name, layer, module, group`` for ``tensor``),
        ``n_tensors``, ``numel``, ``n_set`` and ``density = n_set / numel`` (count-weighted).
    """
    import pandas as pd

    if by not in GROUP_BY:
        raise ConfigError(f"cannot group by {by!r} (use one of {', '.join(GROUP_BY)})")
    with opened(mask) as m:
        rows = []
        for name in m.names:
            p = parse_param_name(name)
            rows.append(
                {
                    "name": name,
                    "layer": p.layer,
                    "module": p.module,
                    "group": p.group,
                    "n_tensors": 1,
                    "numel": numel_of(m, name),
                    "n_set": n_set_of(m, name),
                }
            )
    df = pd.DataFrame(
        rows, columns=["name", "layer", "module", "group", "n_tensors", "numel", "n_set"]
    )
    if by != "tensor":
        df = (
            df.groupby(by, dropna=False, sort=True)[["n_tensors", "numel", "n_set"]]
            .sum()
            .reset_index()
        )
        if by == "layer":
            df["layer"] = df["layer"].astype("Int64")
    df["density"] = df["n_set"] / df["numel"].where(df["numel"] > 0)
    return df


def mask_info(mask: MaskLike) -> dict:
    """Summary of a mask file: path, version, rule, sources, tensors, totals, density."""
    with opened(mask) as m:
        info = describe_mask(m)
        info["version"] = m.meta.get("version")
        return info


# ---- random masks of matched density --------------------------------------------------------
def random_mask_like(
    mask: MaskLike,
    out: str | Path,
    *,
    seed: int,
    stratify: str = "global",
    base: CheckpointLike | None = None,
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
    progress: bool = True,
) -> Path:
    """Write a random mask with the tensors, shapes and density of ``mask``.

    Positions are drawn by selection sampling (each weight taken with probability
    k_left / n_left) from ``numpy.random.default_rng(seed)``, so counts match exactly and every
    subset with those counts is equally likely; the result depends only on ``seed`` and the inputs.

    Args:
        mask: the mask to match (path or :class:`MaskFile`).
        out: output mask file.
        seed: generator seed.
        stratify: ``global`` — the same total count, uniform over all weights (the paper's
            baseline); ``tensor`` — the same count in every tensor; ``binade`` — the same count in
            every tensor × |θ0| binade (exponent of θ0 in ``base``'s stored dtype).
        base: the checkpoint θ0 (path or :class:`Checkpoint`), required for ``binade``.
        chunk_elems: weights per step (a multiple of 8).

    Returns:
        ``Path(out)``.

    Raises:
        ConfigError: unknown ``stratify``, or ``binade`` without ``base``; CheckpointError: a
        tensor of the mask is missing from ``base`` or has an incompatible shape or dtype.
    """
    if stratify not in STRATIFY:
        raise ConfigError(f"unknown stratification {stratify!r} (use one of {', '.join(STRATIFY)})")
    if stratify == "binade" and base is None:
        raise ConfigError("stratify='binade' needs the base checkpoint θ0 (base=...)")
    if chunk_elems < 8 or chunk_elems % 8:
        raise ConfigError(f"chunk_elems must be a positive multiple of 8, got {chunk_elems}")
    rng = np.random.default_rng(seed)
    with contextlib.ExitStack() as stack:
        m = stack.enter_context(opened(mask))
        ck = None
        if stratify == "binade":
            assert base is not None  # checked above
            ck = open_checkpoint(base)
            reader = stack.enter_context(ck.reader())
            for name in m.names:
                base_tensor(ck, name, m.shapes[name])
        rule = {
            "kind": "random",
            "stratify": stratify,
            "seed": int(seed),
            "sampler": "selection sampling, numpy default_rng (PCG64) float64 uniforms",
        }
        sources = {"like": describe_mask(m)}
        if ck is not None:
            sources["base"] = {"source": ck.source, "fingerprint": ck.fingerprint()}
        total_n = sum(numel_of(m, n) for n in m.names)
        rem = np.array([sum(n_set_of(m, n) for n in m.names), total_n], np.int64)
        bar = progress_bar(
            total=total_n,
            unit="w",
            unit_scale=True,
            desc=f"random mask ({stratify})",
            disable=None if progress else True,
        )
        try:
            with MaskWriter(out, m.shapes, rule, sources) as writer:
                for name in m.names:
                    numel = numel_of(m, name)
                    if stratify == "tensor":
                        rem = np.array([n_set_of(m, name), numel], np.int64)
                    if stratify == "binade":
                        assert ck is not None
                        _random_binade(m, name, ck, reader, rng, writer, chunk_elems, bar)
                        continue
                    for start in range(0, numel, chunk_elems):
                        stop = min(numel, start + chunk_elems)
                        packed = np.zeros(packed_size(stop - start), np.uint8)
                        bitops.select_uniform(rng.random(stop - start), rem, packed)
                        writer.write(name, packed)
                        bar.update(stop - start)
        finally:
            bar.close()
    return Path(out)


def base_tensor(ck: Checkpoint, name: str, shape: tuple[int, ...]) -> TensorInfo:
    """θ0's tensor for mask tensor ``name``; its leading elements must cover the mask's shape.

    Raises:
        CheckpointError: missing, incompatible shape (fewer rows or other trailing dims), or not
            a bf16/fp16/fp32 tensor.
    """
    info = ck.tensors.get(name)
    where = f"{ck.source}: tensor '{name}'"
    if info is None:
        raise CheckpointError(f"{where} is in the mask but not in the base checkpoint")
    shape = tuple(shape)
    if info.shape != shape and not (
        len(info.shape) == len(shape) >= 1
        and info.shape[1:] == shape[1:]
        and info.shape[0] >= shape[0]
    ):
        raise CheckpointError(f"{where} has shape {list(info.shape)}, the mask {list(shape)}")
    if info.dtype not in STRATA_DTYPES:
        raise CheckpointError(
            f"{where}: |θ0| binades need bf16/fp16/fp32 weights, not {info.dtype}"
        )
    return info


def _random_binade(m, name, ck, reader, rng, writer, chunk_elems, bar) -> None:
    """Two passes over one tensor: count the mask per binade, then sample within each binade."""
    dtype = ck.tensors[name].dtype
    numel = numel_of(m, name)
    hist = np.zeros((bitops.N_STRATA, 2), np.int64)
    for chunk in stream_chunks(name, numel, [reader, m.bits()], chunk_elems):
        words, packed = chunk.words
        bitops.strata_histogram(words, dtype, packed[None, :], hist)
        del words, packed
    rem_n = bitops.strata_marginals(hist)
    rem_k = bitops.strata_marginals(hist, 0)
    for chunk in stream_chunks(name, numel, [reader], chunk_elems):
        packed = np.zeros(packed_size(chunk.numel), np.uint8)
        u = rng.random(chunk.numel)
        bitops.select_uniform_strata(chunk.words[0], dtype, u, rem_k, rem_n, packed)
        writer.write(name, packed)
        bar.update(chunk.numel)
