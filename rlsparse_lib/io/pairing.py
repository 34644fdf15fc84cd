"""Align the tensors of two checkpoints by name and decide how each pair is compared.

Nothing is dropped silently: every name in either checkpoint ends up either in
:attr:`PairPlan.pairs` (compared, possibly partially) or in :attr:`PairPlan.skipped` with a reason.

Never a silent partial headline: a tensor holding weights rlsparse cannot decode is refused by name
(:class:`~rlsparse_lib.errors.QuantizedWeightsError`) unless ``--exclude``/``--include`` leave it
out. The rule (:func:`quantized_tensors`):

* float8 / float4 / float6 dtypes (``F8_E4M3``, ``F8_E5M2``, ``F8_E8M0``, ``F8_E4M3FNUZ``,
  ``F8_E5M2FNUZ``, ``F4``, ``F6_E2M3``, ``F6_E3M2``) are weight codes, never buffers; their
  ``<name>_scale_inv`` / ``<name>_scale`` siblings belong to the same scheme;
* ``uint8`` tensors named ``*_blocks`` / ``*_scales`` are MXFP4 weights;
* under a ``config.json`` ``quantization_config`` (any ``quant_method``) also integer tensors named
  like packed weights (``*weight``, ``qweight``, ``qzeros``, ``g_idx``, ``*_packed``, ...) and float
  tensors named like quantization parameters (``scales``, ``*_scale``, ``absmax``, ``SCB``, ...);
* every other integer / bool tensor (position ids, step counters, attention masks) is a buffer,
  compared bitwise and kept out of the float headline, whose coverage the report states.

With ``dequantize=True`` (``rlsparse diff``) the layouts :mod:`rlsparse_lib.io.quant` decodes
(FP8 block scales, compressed-tensors FP8, MXFP4) are paired instead as one logical tensor each
(codes + scales; the scales are consumed, not counted), compared on their dequantized values;
a quantized side may meet a float side (a user's dequantized copy). Everything else stays refused.
``rank``, ``dynamics`` and the θ0 reads of ``overlap`` / ``mask random --stratify binade`` read
those layouts the same way (:func:`logical_tensors`, :class:`TensorValues`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from rlsparse_lib.errors import ConfigError, PairingError, QuantizedWeightsError
from rlsparse_lib.io.checkpoint import Checkpoint, TensorInfo
from rlsparse_lib.io.dtypes import (
    COMPARE_DTYPES,
    DTYPE_BITS,
    FLOAT_FORMATS,
    INTEGER_DTYPES,
    UNDECODED_DTYPES,
    is_float,
    safetensors_code,
)
from rlsparse_lib.io.quant import QuantTensor, activation_scales, consumed, quant_layout

_HEADS = ("lm_head.weight", "embed_out.weight")
_EMBEDDINGS = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight")

#: how :attr:`Skipped.reason` starts for tensors left out by the user's --include / --exclude
EXCLUDED_PREFIXES = ("excluded by --exclude", "not matched by --include")
#: how :attr:`Skipped.reason` starts for tied duplicates (counted once, as the tensor they tie to)
TIED_PREFIX = "tied to "
#: scale siblings of low-precision weights (``<weight>_scale_inv``: DeepSeek-V3 block scales;
#: ``<experts>_scales_inv``: transformers' FP8 expert stacks)
_SCALE_SUFFIXES = ("_scale_inv", "_scales_inv", "_scale")
_MXFP4_SUFFIXES = ("_blocks", "_scales")
#: under a quantization_config: integer tensors with these names are packed weights ...
_PACKED_INT = re.compile(
    r"(weight|qweight|qzeros|g_idx|_packed|_shape|_blocks|_scales|zero_point|quant_map|absmax"
    r"|SCB|weight_format)$|quant_state"
)
#: ... and float tensors with these names are quantization parameters
_QUANT_PARAM = re.compile(
    r"(scales|_scale|_scale_inv|_scales_inv|absmax|quant_map|SCB|zero_point|qzeros)$"
)
_MAX_NAMED = 3


def skip_category(reason: str) -> str:
    """``excluded`` (by --include/--exclude), ``tied`` (counted once elsewhere) or
    ``not_compared`` (missing on one side, shape or dtype mismatch) for a skip reason."""
    if reason.startswith(EXCLUDED_PREFIXES):
        return "excluded"
    if reason.startswith(TIED_PREFIX):
        return "tied"
    return "not_compared"


def quantization_method(ckpt: Checkpoint) -> str | None:
    """``quant_method`` of the checkpoint's ``config.json`` ``quantization_config`` (``"?"``
    when the config has one without a method), or None when it declares none."""
    for cfg in (ckpt.config, ckpt.config.get("text_config")):
        if isinstance(cfg, dict) and cfg.get("quantization_config") is not None:
            qc = cfg["quantization_config"]
            method = qc.get("quant_method") if isinstance(qc, dict) else None
            return str(method) if method else "?"
    return None


def quantized_tensors(ckpt: Checkpoint, decoded: frozenset[str] = frozenset()) -> dict[str, str]:
    """Tensors of ``ckpt`` that hold weights rlsparse cannot decode, with their scheme.

    See the module docstring for the rule; integer/bool tensors outside a quantization scheme are
    buffers and not listed; ``decoded``: stored names decoded as part of a logical tensor.
    """
    method = quantization_method(ckpt)
    config = f" (quantization_config quant_method={method})" if method else ""
    out: dict[str, str] = ckpt.undecodable()  # GGUF quantized types without a decoder
    tensors = {n: i for n, i in ckpt.tensors.items() if n not in decoded}
    for name, info in tensors.items():
        if info.dtype in UNDECODED_DTYPES:
            code = safetensors_code(info.dtype)
            scales = [name + s for s in _SCALE_SUFFIXES if name + s in tensors]
            if scales:
                suffix = scales[0][len(name) :]
                out[name] = f"{code} weights with block scales *{suffix}{config}"
                for sib in scales:
                    out.setdefault(sib, out[name])
            else:
                out.setdefault(name, f"{code} weight codes (no decoding){config}")
        elif info.dtype == "uint8" and name.endswith(_MXFP4_SUFFIXES):
            out[name] = f"MXFP4 weights (U8 *_blocks/*_scales){config}"
    if method is not None:
        for name, info in tensors.items():
            if name in out:
                continue
            if (info.dtype in INTEGER_DTYPES and _PACKED_INT.search(name)) or (
                is_float(info.dtype) and _QUANT_PARAM.search(name)
            ):
                out[name] = f"quantized weights{config}"
    return out


def check_quantized(
    base: Checkpoint,
    tuned: Checkpoint,
    names: list[str],
    selected: set[str],
    decoded: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset()),
) -> None:
    """Raise :class:`QuantizedWeightsError` naming every selected tensor (first few + count per
    scheme) that holds weights rlsparse cannot decode; ``selected``: names not left out by
    --include/--exclude; ``decoded``: per side, stored names decoded as logical tensors. A
    quantization_config with no such tensor only adds a warning."""
    per_side = [quantized_tensors(ck, d) for ck, d in zip((base, tuned), decoded, strict=True)]
    found = {**per_side[1], **per_side[0]}
    refused = [n for n in names if n in found and n in selected]
    for ckpt, side, dec in zip((base, tuned), per_side, decoded, strict=True):
        method = quantization_method(ckpt)
        note = (
            f"{ckpt.source}: config.json declares quantization_config quant_method={method} "
            "but no tensor is stored quantized; compared as stored"
        )
        if method is not None and not side and not dec and note not in ckpt.warnings:
            ckpt.warnings.append(note)
    if not refused:
        return
    schemes: dict[str, list[str]] = {}
    for n in refused:
        schemes.setdefault(found[n], []).append(n)
    parts = []
    for scheme, members in schemes.items():
        shown = ", ".join(members[:_MAX_NAMED])
        more = f", … ({len(members) - _MAX_NAMED} more)" if len(members) > _MAX_NAMED else ""
        parts.append(f"{scheme}: {len(members)} tensor(s): {shown}{more}")
    raise QuantizedWeightsError(
        f"{base.source} vs {tuned.source}: {len(refused)} tensor(s) hold weights rlsparse cannot "
        f"decode — {'; '.join(parts)}. Not supported yet; exclude them with --exclude REGEX to "
        "diff the rest (the summary then states the share of elements the headline covers)"
    )


@dataclass(frozen=True)
class TensorPair:
    """One tensor compared between base and tuned.

    Attributes:
        name: tensor name (same in both checkpoints).
        base, tuned: the stored tensors.
        compare_dtype: dtype both sides are cast to before comparing (None for bitwise-only pairs).
        numel: elements compared (the leading rows when the row counts differ).
        kind: ``float`` (full statistics) or ``bitwise`` (integer/bool buffers: changed count only;
            low-precision weight codes are refused, never compared bitwise).
        note: why the comparison is partial or cast, or empty.
        quant_base, quant_tuned: the quantized layout of a side decoded before comparing
            (``base``/``tuned`` are then its logical tensor), or None for a plain tensor.
    """

    name: str
    base: TensorInfo
    tuned: TensorInfo
    compare_dtype: str | None
    numel: int
    kind: str
    note: str = ""
    quant_base: QuantTensor | None = None
    quant_tuned: QuantTensor | None = None

    @property
    def nbytes(self) -> int:
        """Bytes read from both sides: the compared elements' share of the stored bytes (a
        quantized side: codes plus scales)."""
        total = 0
        for info, qt in ((self.base, self.quant_base), (self.tuned, self.quant_tuned)):
            if qt is not None:
                total += qt.nbytes
            else:
                total += -(-self.numel * DTYPE_BITS[info.dtype] // 8)
        return total

    @property
    def compared_shape(self) -> tuple[int, ...]:
        if self.base.shape == self.tuned.shape:
            return self.base.shape
        rows = min(self.base.shape[0], self.tuned.shape[0])
        return (rows, *self.base.shape[1:])

    @property
    def partial(self) -> bool:
        return self.base.shape != self.tuned.shape


@dataclass(frozen=True)
class Skipped:
    """A tensor that is not compared, and why."""

    name: str
    reason: str
    numel_base: int = 0
    numel_tuned: int = 0


@dataclass
class PairPlan:
    """The pairing of two checkpoints: what is compared, how, and what is not."""

    base: Checkpoint
    tuned: Checkpoint
    pairs: list[TensorPair] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    #: human-readable notes on tied weights (each counted once)
    tied: list[str] = field(default_factory=list)

    @property
    def float_pairs(self) -> list[TensorPair]:
        return [p for p in self.pairs if p.kind == "float"]

    @property
    def nbytes(self) -> int:
        """Bytes read from both sides."""
        return sum(p.nbytes for p in self.pairs)

    def shard_groups(self) -> list[list[TensorPair]]:
        """The plan's pairs grouped by base file, in file order: the units of work. Their tuned
        tensors come from one tuned file when both sides are sharded alike, else from the tuned
        files that hold them."""
        groups: dict[Path, list[TensorPair]] = {}
        for p in self.pairs:
            groups.setdefault(p.base.file, []).append(p)
        return list(groups.values())


def pair_checkpoints(
    base: Checkpoint,
    tuned: Checkpoint,
    compare_dtype: str | None = None,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    dequantize: bool = False,
) -> PairPlan:
    """Pair two checkpoints' tensors.

    Args:
        compare_dtype: cast both sides to this float dtype (default: each base tensor's stored
            dtype; float64 is compared as float32; dequantized tensors: bfloat16).
        include: if given, only names matching one of these regexes are compared.
        exclude: names matching any of these regexes are not compared.
        dequantize: pair the quantized layouts :mod:`rlsparse_lib.io.quant` decodes as logical
            tensors (the diff engine does); otherwise they are refused like any quantized weight.

    Raises:
        PairingError: when the two checkpoints have no tensor in common.
        QuantizedWeightsError: when a tensor not left out by ``include``/``exclude`` holds
            weights rlsparse cannot decode (float8/float4/float6 codes, their scales, MXFP4,
            a quantization_config's packed weights); the message names them and the scheme.
        ConfigError: for an unknown compare dtype, an invalid regex, or ``include`` patterns that
            match no tensor name.
        CheckpointError: (``dequantize``) a missing scale, a scale shape that does not fit its
            weight, or an unknown block size.
    """
    if compare_dtype is not None and compare_dtype not in COMPARE_DTYPES:
        raise ConfigError(
            f"--compare-dtype must be one of {', '.join(COMPARE_DTYPES)}, got {compare_dtype!r}"
        )
    inc = compile_patterns(include, "--include")
    exc = compile_patterns(exclude, "--exclude")
    plan = PairPlan(base, tuned)
    layouts = (quant_layout(base), quant_layout(tuned)) if dequantize else ({}, {})
    b_tensors, b_used = _logical(base, layouts[0])
    t_tensors, t_used = _logical(tuned, layouts[1])
    names = list(b_tensors) + [n for n in t_tensors if n not in b_tensors]
    check_include_matches(include, names, base, tuned)
    check_quantized(
        base,
        tuned,
        names,
        {n for n in names if _filter_reason(n, inc, exc, include, exclude) is None},
        (b_used | activation_scales(base), t_used | activation_scales(tuned))
        if dequantize
        else (frozenset(), frozenset()),
    )
    for name in names:
        b, t = b_tensors.get(name), t_tensors.get(name)
        numel_b, numel_t = (b.numel if b else 0), (t.numel if t else 0)
        reason = _filter_reason(name, inc, exc, include, exclude)
        head_note = ""
        if reason is None:
            reason, head_note = _tie_reason(name, base, tuned)
            if reason is not None:
                plan.tied.append(f"{name}: {reason}")
            elif head_note:
                plan.tied.append(f"{name}: {head_note}")
        if reason is None and (b is None or t is None):
            reason = "missing in tuned" if t is None else "missing in base"
            reason += f" ({head_note})" if head_note else ""
        if reason is not None:
            plan.skipped.append(Skipped(name, reason, numel_b, numel_t))
            continue
        assert b is not None and t is not None
        pair = _pair(name, b, t, compare_dtype, layouts[0].get(name), layouts[1].get(name))
        if isinstance(pair, Skipped):
            plan.skipped.append(pair)
        elif head_note:
            note = "; ".join(filter(None, [head_note, pair.note]))
            plan.pairs.append(replace(pair, note=note))
        else:
            plan.pairs.append(pair)
    plan.tied.extend(_unstored_ties(base, tuned, names))
    if not plan.pairs:
        raise PairingError(
            f"{base.source} and {tuned.source} have no comparable tensor in common "
            f"({len(base.tensors)} vs {len(tuned.tensors)} tensors)"
        )
    # base file order, then base offset: the base side is read front to back, once, however
    # the tuned side is sharded (grouping by tuned file first read a base file once per tuned
    # file it shares tensors with, and streamed read-ahead fetched its bytes again)
    files_b = {f: i for i, f in enumerate(base.files)}
    plan.pairs.sort(key=lambda p: (files_b[p.base.file], p.base.offset, p.name))
    return plan


@dataclass(frozen=True)
class TensorValues:
    """How the values of one checkpoint tensor are read.

    Attributes:
        info: the (logical) tensor: a quantized layout's logical name, shape and code dtype.
        quant: its quantized layout, decoded to bfloat16 words
            (:func:`rlsparse_lib.diff.kernels.dequant.value_source`), or None for a stored float tensor.
        scheme: where the values come from when they are no stored floats: the layout's
            scheme (``fp8_block``, ``fp8_tensor``, ``fp8_channel``, ``mxfp4``, ``ct_fp8_*``) or
            a GGUF block type (``gguf:Q4_1``, read as float32 dequantized values); None for a
            plain tensor.
    """

    info: TensorInfo
    quant: QuantTensor | None = None
    scheme: str | None = None

    @property
    def dtype(self) -> str:
        """The dtype of the words read: ``bfloat16`` for a decoded layout, else the stored one."""
        return "bfloat16" if self.quant is not None else self.info.dtype

    @property
    def itemsize(self) -> int:
        """Bytes per element of the words read."""
        return 2 if self.quant is not None else self.info.itemsize


def tensor_values(ckpt: Checkpoint, info: TensorInfo, quant: QuantTensor | None) -> TensorValues:
    """The :class:`TensorValues` of ``ckpt``'s (logical) tensor ``info`` with layout ``quant``
    (e.g. one side of a :class:`TensorPair`)."""
    enc = ckpt.encodings.get(info.name)
    scheme = quant.scheme if quant is not None else (enc.scheme if enc is not None else None)
    return TensorValues(info, quant, scheme)


def logical_tensors(ckpt: Checkpoint) -> dict[str, TensorValues]:
    """Every tensor of ``ckpt`` by logical name, each decodable quantized layout
    (:func:`~rlsparse_lib.io.quant.quant_layout`) as one tensor whose scales are consumed.

    Raises:
        CheckpointError: a missing scale, a scale shape that does not fit its weight, or an
            unknown block size (named).
    """
    layout = quant_layout(ckpt)
    tensors, _ = _logical(ckpt, layout)
    return {n: tensor_values(ckpt, i, layout.get(n)) for n, i in tensors.items()}


def _logical(
    ckpt: Checkpoint, layout: dict[str, QuantTensor]
) -> tuple[dict[str, TensorInfo], frozenset[str]]:
    """The checkpoint's tensors with every decoded layout as one logical tensor (at its codes'
    place), and the stored names those logical tensors consume."""
    used = consumed(layout)
    out: dict[str, TensorInfo] = {}
    for name, info in ckpt.tensors.items():
        if name not in used:
            out[name] = info
        elif name == layout[used[name]].codes.name:
            out[used[name]] = layout[used[name]].info
    return out, frozenset(used)


def compile_patterns(patterns: tuple[str, ...], flag: str) -> list[re.Pattern]:
    """``patterns`` compiled; an invalid one is a ConfigError naming ``flag``."""
    try:
        return [re.compile(p) for p in patterns]
    except re.error as err:
        raise ConfigError(f"{flag}: invalid regular expression: {err}") from err


def _filter_reason(name, inc, exc, include, exclude) -> str | None:
    if inc and not any(r.search(name) for r in inc):
        return f"not matched by --include {' '.join(include)}"
    for r, pat in zip(exc, exclude, strict=True):
        if r.search(name):
            return f"excluded by --exclude {pat}"
    return None


def _tie_reason(name: str, base: Checkpoint, tuned: Checkpoint) -> tuple[str | None, str]:
    """(Reason to count ``name`` once as a tied duplicate or None, note when it is not).

    An output head is skipped as tied to the embedding only when ``tie_word_embeddings`` says so
    and every stored copy of it equals its checkpoint's embedding bit for bit; a stored head that
    differs is compared like any tensor, with a note saying so.
    """
    for ckpt in (base, tuned):
        target = ckpt.aliases.get(name)
        if target is not None:
            return f"tied to {target} (shares storage in {ckpt.source}); counted once", ""
    if not name.endswith(_HEADS):
        return None, ""
    declared = [c for c in (base, tuned) if c.tied_embeddings() and _embedding_name(c)]
    if not declared:
        return None, ""
    differs = [c for c in (base, tuned) if name in c.tensors and not _equals_embedding(c, name)]
    if differs:
        where = " and ".join(c.source for c in differs)
        return None, (
            f"stored {name} differs from the embedding in {where} despite tie_word_embeddings: "
            "compared"
        )
    ckpt = declared[0]
    emb = _embedding_name(ckpt)
    if name in ckpt.tensors:
        return f"tied to {emb} (tie_word_embeddings in {ckpt.source}); counted once", ""
    return f"tied to {emb} in {ckpt.source} (not stored there); counted once", ""


def _equals_embedding(ckpt: Checkpoint, name: str, chunk: int = 1 << 24) -> bool:
    """Whether tensor ``name`` of ``ckpt`` equals its input embedding bit for bit (chunked read)."""
    emb = _embedding_name(ckpt)
    if emb is None:
        return False
    a, b = ckpt.tensors[name], ckpt.tensors[emb]
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if ckpt.aliases.get(name) == emb or ckpt.aliases.get(emb) == name:
        return True
    with ckpt.reader() as reader:
        for start in range(0, a.numel, chunk):
            stop = min(start + chunk, a.numel)
            if not np.array_equal(reader.words(name, start, stop), reader.words(emb, start, stop)):
                return False
    return True


def _unstored_ties(base: Checkpoint, tuned: Checkpoint, names: list[str]) -> list[str]:
    """Notes for heads tied to the embedding and stored in neither checkpoint."""
    if any(n.endswith(_HEADS) for n in names):
        return []
    emb = _embedding_name(base)
    if (
        emb is None
        or emb not in tuned.tensors
        or not (base.tied_embeddings() or tuned.tied_embeddings())
    ):
        return []
    return [f"output head tied to {emb} (tie_word_embeddings; not stored): counted once as {emb}"]


def check_include_matches(
    include: tuple[str, ...] | list[str], names: list[str], base: Checkpoint, tuned: Checkpoint
) -> None:
    """Raise :class:`ConfigError` (naming the patterns) when ``include`` patterns are given and
    none of them matches any of ``names``: a typo must not pass for "nothing changed"."""
    if not include:
        return
    compiled = compile_patterns(tuple(include), "--include")
    if any(r.search(n) for n in names for r in compiled):
        return
    shown = ", ".join(names[:3]) + (", …" if len(names) > 3 else "") if names else "none"
    raise ConfigError(
        f"--include {' '.join(include)} matches no tensor name of {base.source} or "
        f"{tuned.source} (names look like: {shown})"
    )


def _embedding_name(ckpt: Checkpoint) -> str | None:
    for n in ckpt.tensors:
        if n.endswith(_EMBEDDINGS):
            return n
    return None


def _pair(
    name: str,
    b: TensorInfo,
    t: TensorInfo,
    compare_dtype: str | None,
    qb: QuantTensor | None = None,
    qt: QuantTensor | None = None,
) -> TensorPair | Skipped:
    if qb is not None or qt is not None:
        return _quant_pair(name, b, t, compare_dtype, qb, qt)
    notes = []
    if b.shape != t.shape:
        if len(b.shape) != len(t.shape) or not b.shape or b.shape[1:] != t.shape[1:]:
            return Skipped(
                name, f"shape mismatch {list(b.shape)} vs {list(t.shape)}", b.numel, t.numel
            )
        rows = min(b.shape[0], t.shape[0])
        extra_side = "base" if b.shape[0] > t.shape[0] else "tuned"
        extra = abs(b.shape[0] - t.shape[0])
        notes.append(
            f"row count differs ({b.shape[0]} vs {t.shape[0]}): compared the first {rows} rows; "
            f"{extra} rows only in {extra_side} not compared"
        )
    numel = b.numel if b.shape == t.shape else b.numel // b.shape[0] * min(b.shape[0], t.shape[0])
    if is_float(b.dtype) and is_float(t.dtype):
        cmp = compare_dtype or (b.dtype if b.dtype in FLOAT_FORMATS else "float32")
        for side, info in (("base", b), ("tuned", t)):
            if info.dtype != cmp:
                notes.append(f"{side} {info.dtype} cast to {cmp}")
        return TensorPair(name, b, t, cmp, numel, "float", "; ".join(notes))
    if b.dtype != t.dtype:
        return Skipped(name, f"dtype mismatch {b.dtype} vs {t.dtype}", b.numel, t.numel)
    return TensorPair(name, b, t, None, numel, "bitwise", "; ".join(notes))


def _quant_pair(
    name: str,
    b: TensorInfo,
    t: TensorInfo,
    compare_dtype: str | None,
    qb: QuantTensor | None,
    qt: QuantTensor | None,
) -> TensorPair | Skipped:
    """A pair with a quantized side: compared on dequantized values (bfloat16 unless
    ``compare_dtype`` says otherwise); the other side is quantized too or a float tensor."""
    if b.shape != t.shape:
        return Skipped(name, f"shape mismatch {list(b.shape)} vs {list(t.shape)}", b.numel, t.numel)
    for q, info in ((qb, b), (qt, t)):
        if q is None and not is_float(info.dtype):
            return Skipped(name, f"dtype mismatch {b.dtype} vs {t.dtype}", b.numel, t.numel)
    cmp = compare_dtype or "bfloat16"
    notes = []
    for side, q, info in (("base", qb, b), ("tuned", qt, t)):
        if q is not None:
            cast = f", cast to {cmp}" if cmp != "bfloat16" else ""
            notes.append(f"{side} {q.scheme} dequantized to bfloat16{cast}")
        elif info.dtype != cmp:
            notes.append(f"{side} {info.dtype} cast to {cmp}")
    if not same_layout(qb, qt):
        notes.append("no raw-code views: they need the same scheme on both sides")
    return TensorPair(name, b, t, cmp, b.numel, "float", "; ".join(notes), qb, qt)


def same_layout(qb: QuantTensor | None, qt: QuantTensor | None) -> bool:
    """Whether both sides are quantized alike (scheme, block, scale dtype and shape), so their
    raw codes and scales compare one to one."""
    return (
        qb is not None
        and qt is not None
        and (qb.scheme, qb.block, qb.scales.dtype, qb.scales.shape)
        == (qt.scheme, qt.block, qt.scales.dtype, qt.scales.shape)
    )
