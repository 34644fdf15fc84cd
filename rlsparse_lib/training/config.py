"""Run configuration: dataclasses and a strict YAML loader.

One YAML file describes one run. Unknown keys, wrong types, out-of-range values and sections that
do not apply to the run's kind are errors that name the file and the key; nothing is written
before the whole file is valid. ``KEY=VALUE`` overrides (dotted keys, YAML values) are applied
before validation, so ``--set train.lr=1e-5 precision=fp32`` is checked like the file.

Example (every key is optional except ``kind``)::

    kind: grpo                 # sft | rft | grpo | rloo | dpo | kto | orpo | simpo | prime | ppo
    name: grpo-cpu             # run folder data/runs/<name>/ (default: the file's stem)
    model: smollm2-135m-instruct
    precision: mixed           # bf16 | fp16 | mixed | fp32
    seed: 0
    task: {name: basic_arithmetic, params: {min_digits: 1, max_digits: 2}, eval_size: 64}
    train: {steps: 20, lr: 1.0e-5, batch_size: 2, max_completion_length: 32}
    rl: {num_generations: 4, beta: 0.0}
    checkpoints: {every: 5}
    monitor: {every: 1}          # codecs: true adds each step's patch bytes per codec
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlsparse_lib.errors import ConfigError
from rlsparse_lib.training.models import DEFAULT_MODEL
from rlsparse_lib.training.tasks import EXTRACTORS, TaskSpec

KINDS = ("sft", "rft", "grpo", "rloo", "dpo", "kto", "orpo", "simpo", "prime", "ppo")
#: kinds trained on preference data (the ``preference`` section)
PREFERENCE_KINDS = ("dpo", "kto", "orpo", "simpo")
#: precision modes (:mod:`~rlsparse_lib.training.precision_modes`)
PRECISIONS = ("bf16", "fp16", "mixed", "fp32")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULERS = ("constant", "linear", "cosine", "constant_with_warmup")
DEVICES = ("auto", "cpu", "cuda")
PREFERENCE_DATA = ("own", "external")
STRATIFY = ("global", "tensor", "binade")
#: stratifications of a random mask drawn at ``mask.density`` (no source mask)
RANDOM_STRATIFY = ("global", "tensor")
#: which optional sections each kind accepts
SECTIONS_FOR_KIND: dict[str, tuple[str, ...]] = {
    "sft": (),
    "rft": ("sampling",),
    "grpo": ("rl",),
    "rloo": ("rl",),
    "dpo": ("preference", "sampling"),
    "kto": ("preference", "sampling"),
    "orpo": ("preference", "sampling"),
    "simpo": ("preference", "sampling"),
    "prime": ("rl", "prime"),
    "ppo": ("rl", "ppo"),
}


@dataclass(frozen=True)
class TrainSection:
    """Optimization. ``batch_size`` counts examples per micro-batch; for GRPO/RLOO it counts
    prompts (each with ``rl.num_generations`` completions). One step = one optimizer update of
    ``batch_size × grad_accum`` examples (prompts).

    ``max_grad_norm: null`` turns gradient-norm clipping off. ``max_prompt_length`` is checked
    against every training prompt (an error, never a silent truncation);
    ``max_completion_length`` bounds generated completions and written solutions.
    """

    steps: int = 20
    lr: float = 1e-5
    batch_size: int = 4
    grad_accum: int = 1
    max_prompt_length: int = 256
    max_completion_length: int = 48
    lr_scheduler: str = "constant"
    warmup_ratio: float = 0.0
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float | None = 1.0
    gradient_checkpointing: bool = False


@dataclass(frozen=True)
class RLSection:
    """GRPO / RLOO / PRIME / PPO. ``beta`` is the KL coefficient (0: off, no reference model). ``epsilon`` is
    the ratio-clipping range (null: off); with ``num_iterations: 1`` every update is on-policy,
    the ratio is 1 and clipping never binds. ``loss_type`` and ``scale_rewards`` are GRPO's
    (null: TRL's default)."""

    num_generations: int = 4
    beta: float = 0.0
    epsilon: float | None = 0.2
    temperature: float = 1.0
    num_iterations: int = 1
    loss_type: str | None = None
    scale_rewards: str | None = None


@dataclass(frozen=True)
class SamplingSection:
    """Own samples for RFT, and for DPO/KTO with ``preference.data: own``: ``samples_per_prompt``
    completions of the initial model for each of the first ``prompts`` training questions."""

    prompts: int | None = None
    samples_per_prompt: int = 4
    temperature: float = 1.0
    batch_size: int = 16


@dataclass(frozen=True)
class PreferenceSection:
    """DPO / KTO / ORPO / SimPO. ``data: own`` — pairs (DPO, ORPO, SimPO) or labelled samples
    (KTO) from the model's own samples, correct vs incorrect (in-distribution); ``external`` — the
    written reference solution vs the same solution with a wrong final answer (off-policy).
    ``beta``: DPO/KTO/SimPO's β; ORPO's odds-ratio weight λ. ``loss_type``: DPO/KTO only (ORPO
    has one loss; SimPO is TRL's CPO with ``loss_type: simpo``, ``cpo_alpha: 0``)."""

    data: str = "own"
    beta: float = 0.1
    loss_type: str | None = None


@dataclass(frozen=True)
class PrimeSection:
    """PRIME (:mod:`~rlsparse_lib.training.prime`): the implicit PRM's β (token reward
    β·log π_prm/π_ref), its AdamW learning rate (null: ``train.lr``), and the weight of the process
    rewards' returns beside the outcome's (PRIME's 5 and 5 equal 1 after whitening)."""

    beta: float = 0.05
    lr: float | None = None
    process_weight: float = 1.0


@dataclass(frozen=True)
class PpoSection:
    """PPO (:mod:`~rlsparse_lib.training.ppo`): GAE's ``gamma`` and ``lam``, the value model's
    AdamW learning rate (null: ``train.lr``) and value clipping range. ``rl.beta`` is the KL
    penalty in the reward."""

    gamma: float = 1.0
    lam: float = 0.95
    value_lr: float | None = None
    value_clip: float = 0.2


@dataclass(frozen=True)
class CheckpointSection:
    """θ at step 0 and every ``every`` steps (and the last step) as bf16 safetensors; ``fp32``:
    also the fp32 weights when the run keeps them (precision mixed / fp32)."""

    every: int = 5
    fp32: bool = True


@dataclass(frozen=True)
class MonitorSection:
    """In-training sparsity monitor: every ``every`` steps (0: off); ``codecs: true`` also logs the
    patch bytes of each step's bf16 sync per codec (off when unset: None keeps the configs of runs
    started before the key existed equal, so they still resume and are still reused)."""

    every: int = 1
    codecs: bool | None = None


@dataclass(frozen=True)
class EvalSection:
    """Greedy accuracy on the held-out split before and after training; ``cache: false`` always
    evaluates anew instead of reusing ``data/cache/evals/`` (:mod:`~rlsparse_lib.training.eval_cache`;
    unset means on and keeps the configs of runs started before the key existed equal)."""

    before: bool = True
    after: bool = True
    batch_size: int = 32
    max_new_tokens: int = 48
    cache: bool | None = None


@dataclass(frozen=True)
class MaskSection:
    """Subnetwork training: gradients masked to ``path`` (a mask file, e.g. from ``rlsparse diff
    --mask-out``) and masked-out weights held exactly. ``random: true`` trains instead on a random
    mask of the same density (``stratify`` global / tensor / binade, seeded by ``random_seed``).
    Without ``path``, ``random: true`` with ``density`` in (0, 1] draws a random mask of exactly that
    density (``global``: round(density × all weights) over the model; ``tensor``: per tensor)."""

    path: str = ""
    density: float | None = None
    random: bool = False
    random_seed: int = 0
    stratify: str = "global"


@dataclass(frozen=True)
class RunConfig:
    """One training run (see the module docstring for the YAML form)."""

    kind: str
    name: str
    model: str = DEFAULT_MODEL
    precision: str = "mixed"
    seed: int = 0
    device: str = "auto"
    deterministic: bool = True
    task: TaskSpec = field(default_factory=TaskSpec)
    train: TrainSection = field(default_factory=TrainSection)
    rl: RLSection | None = None
    sampling: SamplingSection | None = None
    preference: PreferenceSection | None = None
    prime: PrimeSection | None = None
    ppo: PpoSection | None = None
    checkpoints: CheckpointSection = field(default_factory=CheckpointSection)
    monitor: MonitorSection = field(default_factory=MonitorSection)
    eval: EvalSection = field(default_factory=EvalSection)
    mask: MaskSection | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-able dict (the same structure the loader reads; absent sections left out)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @property
    def uses_own_samples(self) -> bool:
        """Whether the training data is sampled from the initial model before training."""
        if self.kind == "rft":
            return True
        return (
            self.kind in PREFERENCE_KINDS
            and self.preference is not None
            and self.preference.data == "own"
        )


_SECTIONS: dict[str, type] = {
    "task": TaskSpec,
    "train": TrainSection,
    "rl": RLSection,
    "sampling": SamplingSection,
    "preference": PreferenceSection,
    "prime": PrimeSection,
    "ppo": PpoSection,
    "checkpoints": CheckpointSection,
    "monitor": MonitorSection,
    "eval": EvalSection,
    "mask": MaskSection,
}


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read and validate a run config.

    Args:
        path: YAML file.
        overrides: ``dotted.key=value`` strings (values parsed as YAML), applied before checks.

    Raises:
        ConfigError: naming the file and key for anything unreadable, unknown or invalid.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})".replace("\n", " ")) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    data.setdefault("name", path.stem)
    return config_from_dict(apply_overrides(data, overrides, str(path)), str(path))


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...], where: str) -> dict:
    """Return a copy of ``data`` with ``a.b=value`` overrides set (values parsed as YAML)."""
    import copy

    from rlsparse_lib.overrides import parse_assignment

    out = copy.deepcopy(data)
    for item in overrides:
        key, value = parse_assignment(item, example="train.lr=1e-5")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: override {item!r}: '{part}' is not a section")
        node[parts[-1]] = value
    return out


def config_from_dict(data: dict[str, Any], where: str = "config") -> RunConfig:
    """Validate a raw dict (as read from YAML) into a :class:`RunConfig`."""
    kind = data.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{where}: 'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    allowed = SECTIONS_FOR_KIND[kind]
    for section in ("rl", "sampling", "preference", "prime", "ppo"):
        if section in data and section not in allowed:
            raise ConfigError(f"{where}: section '{section}' does not apply to kind '{kind}'")
    raw = dict(data)
    pref = raw.get("preference")
    if kind in PREFERENCE_KINDS and isinstance(pref, dict) and pref.get("data") == "external":
        if "sampling" in raw:
            raise ConfigError(
                f"{where}: section 'sampling' does not apply to preference.data: external"
            )
        allowed = ("preference",)
    for section in allowed:
        raw.setdefault(section, {})
    cfg = _build(RunConfig, raw, where, "")
    _check(cfg, where)
    return cfg


# ---- typed construction ------------------------------------------------------------------------
def _build(cls: type, data: Any, where: str, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: '{prefix.rstrip('.') or 'config'}' must be a mapping")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(
            f"{where}: unknown key '{prefix}{unknown[0]}' (known keys: {', '.join(names)})"
        )
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        target = _section_type(hint)
        if target is not None and value is not None:
            kwargs[key] = _build(target, value, where, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, hint, where, f"{prefix}{key}")
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required key is missing
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'config'}: {exc}") from exc


def _section_type(hint: Any) -> type | None:
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return args[0] if args and args[0] in _SECTIONS.values() else None


def _coerce(value: Any, hint: Any, where: str, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, where, key)
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(f"{where}: '{key}' must be finite, got {value}")
        return float(value)
    if hint is float and isinstance(value, str):  # PyYAML reads 1e-5 (no dot) as a string
        try:
            return _coerce(float(value), float, where, key)
        except ValueError:
            pass
    simple = {int: "an integer", bool: "true or false", str: "a string"}
    if hint in simple:
        if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
            return value
        raise ConfigError(f"{where}: '{key}' must be {simple[hint]}, got {value!r}")
    if hint is float:
        raise ConfigError(f"{where}: '{key}' must be a number, got {value!r}")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' must be a mapping, got {value!r}")
        return dict(value)
    raise ConfigError(f"{where}: '{key}' has an unsupported value {value!r}")


# ---- value checks ------------------------------------------------------------------------------
def _check(cfg: RunConfig, where: str) -> None:
    def need(ok: bool, key: str, what: str, value: Any) -> None:
        if not ok:
            raise ConfigError(f"{where}: '{key}' must be {what}, got {value!r}")

    need(
        bool(cfg.name) and "/" not in cfg.name and not cfg.name.startswith("."),
        "name",
        "a folder name (no '/', not starting with '.')",
        cfg.name,
    )
    need(
        cfg.precision in PRECISIONS,
        "precision",
        f"{', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]}",
        cfg.precision,
    )
    need(cfg.device in DEVICES, "device", " / ".join(DEVICES), cfg.device)
    need(cfg.seed >= 0, "seed", ">= 0", cfg.seed)
    t = cfg.train
    for key in ("steps", "batch_size", "grad_accum", "max_prompt_length", "max_completion_length"):
        need(getattr(t, key) >= 1, f"train.{key}", ">= 1", getattr(t, key))
    need(t.lr > 0, "train.lr", "> 0", t.lr)
    need(t.optimizer in OPTIMIZERS, "train.optimizer", " or ".join(OPTIMIZERS), t.optimizer)
    need(t.lr_scheduler in SCHEDULERS, "train.lr_scheduler", ", ".join(SCHEDULERS), t.lr_scheduler)
    need(0 <= t.warmup_ratio < 1, "train.warmup_ratio", "in [0, 1)", t.warmup_ratio)
    need(t.weight_decay >= 0, "train.weight_decay", ">= 0", t.weight_decay)
    need(
        0 <= t.adam_beta1 < 1 and 0 <= t.adam_beta2 < 1,
        "train.adam_beta1/2",
        "in [0, 1)",
        (t.adam_beta1, t.adam_beta2),
    )
    need(t.adam_epsilon > 0, "train.adam_epsilon", "> 0", t.adam_epsilon)
    need(
        t.max_grad_norm is None or t.max_grad_norm > 0,
        "train.max_grad_norm",
        "> 0 or null",
        t.max_grad_norm,
    )
    s = cfg.task
    need(s.extract in EXTRACTORS, "task.extract", " or ".join(EXTRACTORS), s.extract)
    need(
        s.train_size >= 1 and s.eval_size >= 1,
        "task.train_size/eval_size",
        ">= 1",
        (s.train_size, s.eval_size),
    )
    need(s.seed >= 0, "task.seed", ">= 0", s.seed)
    if cfg.rl is not None:
        r = cfg.rl
        need(
            r.num_generations >= 2,
            "rl.num_generations",
            ">= 2 (advantages compare samples)",
            r.num_generations,
        )
        need(r.beta >= 0, "rl.beta", ">= 0", r.beta)
        need(r.epsilon is None or r.epsilon > 0, "rl.epsilon", "> 0 or null", r.epsilon)
        need(r.temperature > 0, "rl.temperature", "> 0", r.temperature)
        need(r.num_iterations >= 1, "rl.num_iterations", ">= 1", r.num_iterations)
        need(
            cfg.checkpoints.every % r.num_iterations == 0,
            "checkpoints.every",
            f"a multiple of rl.num_iterations ({r.num_iterations}): a run resumes from a "
            "checkpoint only where new completions are generated",
            cfg.checkpoints.every,
        )
        if cfg.kind == "rloo":
            need(
                r.loss_type is None and r.scale_rewards is None,
                "rl.loss_type/scale_rewards",
                "null for rloo (GRPO options)",
                (r.loss_type, r.scale_rewards),
            )
        if cfg.kind in ("prime", "ppo"):
            need(
                r.scale_rewards is None,
                "rl.scale_rewards",
                f"null for {cfg.kind} (its advantages are its own, whitened)",
                r.scale_rewards,
            )
    if cfg.prime is not None:
        q = cfg.prime
        need(q.beta > 0, "prime.beta", "> 0", q.beta)
        need(q.lr is None or q.lr > 0, "prime.lr", "> 0 or null", q.lr)
        need(q.process_weight >= 0, "prime.process_weight", ">= 0", q.process_weight)
    if cfg.ppo is not None:
        o = cfg.ppo
        need(
            0 < o.gamma <= 1 and 0 <= o.lam <= 1,
            "ppo.gamma/lam",
            "in (0, 1] / [0, 1]",
            (o.gamma, o.lam),
        )
        need(o.value_lr is None or o.value_lr > 0, "ppo.value_lr", "> 0 or null", o.value_lr)
        need(o.value_clip > 0, "ppo.value_clip", "> 0", o.value_clip)
    if cfg.sampling is not None:
        p = cfg.sampling
        need(p.prompts is None or p.prompts >= 1, "sampling.prompts", ">= 1 or null", p.prompts)
        need(p.samples_per_prompt >= 1, "sampling.samples_per_prompt", ">= 1", p.samples_per_prompt)
        need(p.temperature > 0, "sampling.temperature", "> 0", p.temperature)
        need(p.batch_size >= 1, "sampling.batch_size", ">= 1", p.batch_size)
    if cfg.kind == "kto":
        need(
            t.batch_size >= 2,
            "train.batch_size",
            ">= 2 for kto (its KL estimate pairs completions within a batch)",
            t.batch_size,
        )
    if cfg.preference is not None:
        need(
            cfg.preference.data in PREFERENCE_DATA,
            "preference.data",
            "own or external",
            cfg.preference.data,
        )
        need(cfg.preference.beta > 0, "preference.beta", "> 0", cfg.preference.beta)
        need(
            cfg.kind in ("dpo", "kto") or cfg.preference.loss_type is None,
            "preference.loss_type",
            f"null for {cfg.kind} (a DPO/KTO option)",
            cfg.preference.loss_type,
        )
    need(
        cfg.checkpoints.every >= 0,
        "checkpoints.every",
        ">= 0 (0: init and last only)",
        cfg.checkpoints.every,
    )
    need(cfg.monitor.every >= 0, "monitor.every", ">= 0 (0: off)", cfg.monitor.every)
    need(
        cfg.eval.batch_size >= 1 and cfg.eval.max_new_tokens >= 1,
        "eval.batch_size/max_new_tokens",
        ">= 1",
        (cfg.eval.batch_size, cfg.eval.max_new_tokens),
    )
    if cfg.mask is not None:
        m = cfg.mask
        need(
            bool(m.path) or m.density is not None,
            "mask.path",
            "a mask file (or mask.random: true with mask.density)",
            m.path,
        )
        need(m.stratify in STRATIFY, "mask.stratify", ", ".join(STRATIFY), m.stratify)
        if m.density is not None:
            need(
                not m.path,
                "mask.density",
                "unset when mask.path is given (the density is the mask file's)",
                m.density,
            )
            need(m.random, "mask.random", "true with mask.density (a random mask)", m.random)
            need(0 < m.density <= 1, "mask.density", "in (0, 1]", m.density)
            need(
                m.stratify in RANDOM_STRATIFY,
                "mask.stratify",
                f"{' or '.join(RANDOM_STRATIFY)} with mask.density (binade strata need a mask file)",
                m.stratify,
            )
