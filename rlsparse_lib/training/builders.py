"""TRL trainers for each run kind, configured from a :class:`RunConfig`.

All kinds share the optimizer, schedule, precision and logging settings (:func:`common_args`; on a
CPU without native bf16, ``mixed`` computes in fp32: :mod:`~rlsparse_lib.training.precision_modes`);
checkpoints are written by :class:`~rlsparse_lib.training.checkpoints.CheckpointSaver`; the
trainers' own saving keeps the resumable state (:mod:`~rlsparse_lib.training.resume`). GRPO/RLOO
take the task's scorer as their reward function, PRIME and PPO as their outcome reward
(:mod:`~rlsparse_lib.training.prime`, :mod:`~rlsparse_lib.training.ppo`); DPO/KTO get an explicit frozen copy of the initial model as
reference; ORPO and SimPO (TRL's ``trl.experimental`` ORPO and CPO trainers) are reference-free.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from rlsparse_lib.training.config import RunConfig
from rlsparse_lib.training.precision_modes import Precision
from rlsparse_lib.training.tasks import Task

#: ``rl.epsilon: null`` (ratio clipping off) becomes this clip range, which never binds
NO_CLIP = 1e9
_OPTIM = {"adamw": "adamw_torch", "sgd": "sgd"}


def common_args(
    cfg: RunConfig, output_dir: Path, use_cpu: bool, precision: Precision | None = None
) -> dict[str, Any]:
    """TrainingArguments shared by every TRL config class.

    ``precision``: the mode as it runs on the device (default: ``Precision.for_device``, which
    on a CPU detects whether bf16 is native; without, ``mixed`` gets no bf16 autocast).
    """
    t = cfg.train
    if precision is None:
        precision = Precision.for_device(cfg.precision, "cpu" if use_cpu else "cuda")
    return {
        "output_dir": str(output_dir),
        "max_steps": t.steps,
        "learning_rate": t.lr,
        "gradient_accumulation_steps": t.grad_accum,
        "lr_scheduler_type": t.lr_scheduler,
        "warmup_steps": t.warmup_ratio,  # a float < 1 is a ratio of max_steps
        "weight_decay": t.weight_decay,
        "adam_beta1": t.adam_beta1,
        "adam_beta2": t.adam_beta2,
        "adam_epsilon": t.adam_epsilon,
        "max_grad_norm": t.max_grad_norm if t.max_grad_norm is not None else 0.0,
        "optim": _OPTIM[t.optimizer],
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "full_determinism": cfg.deterministic,
        "bf16": precision.autocast_bf16,
        "fp16": precision.autocast_fp16,  # fp16 autocast + dynamic loss scaling (GradScaler)
        "use_cpu": use_cpu,
        "activation_checkpointing": t.gradient_checkpointing,
        "logging_steps": 1,
        # resumable states with every checkpoint (training/resume.py renames and rotates them)
        "save_strategy": "steps" if cfg.checkpoints.every else "no",
        "save_steps": cfg.checkpoints.every or 500,
        "save_total_limit": None,
        "eval_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }


def build_trainer(
    cfg: RunConfig,
    model,
    tokenizer,
    task: Task,
    rows: list[dict[str, Any]],
    callbacks: list,
    output_dir: Path,
    use_cpu: bool,
    precision: Precision | None = None,
):
    """The TRL trainer for ``cfg.kind`` on ``rows`` (from :func:`~.data.build_rows`); the
    precision mode's own callbacks (``fp16``: rounding to fp16 after each step) come first.

    Raises:
        RuntimeError: ``fp16`` autocast without accelerate's loss scaler (the manifest would
            claim loss scaling that does not happen; accelerate makes none on a CPU).
    """
    if precision is None:
        precision = Precision.for_device(cfg.precision, "cpu" if use_cpu else "cuda")
    callbacks = [*precision.callbacks(), *callbacks]
    trainer = _trainer_for_kind(
        cfg, model, tokenizer, task, rows, callbacks, output_dir, use_cpu, precision
    )
    if precision.autocast_fp16 and trainer.accelerator.scaler is None:
        raise RuntimeError("precision fp16: fp16 autocast without a loss scaler on this device")
    return trainer


def _trainer_for_kind(
    cfg: RunConfig,
    model,
    tokenizer,
    task: Task,
    rows: list[dict[str, Any]],
    callbacks: list,
    output_dir: Path,
    use_cpu: bool,
    precision: Precision,
):
    import trl
    from datasets import Dataset

    dataset = Dataset.from_list(rows)
    args = common_args(cfg, output_dir, use_cpu, precision)
    t = cfg.train
    max_length = t.max_prompt_length + t.max_completion_length
    if cfg.kind in ("grpo", "rloo", "prime", "ppo"):
        r = cfg.rl
        assert r is not None
        rl_args = {
            **args,
            "per_device_train_batch_size": t.batch_size * r.num_generations,
            "num_generations": r.num_generations,
            "max_completion_length": t.max_completion_length,
            "temperature": r.temperature,
            "beta": r.beta,
            "epsilon": r.epsilon if r.epsilon is not None else NO_CLIP,
            "num_iterations": r.num_iterations,
            "remove_unused_columns": False,
            "disable_dropout": True,
        }
        # TRL only reads the rewards; its RewardFunc allows None entries (list is invariant)
        reward = cast("Callable[..., list[float | None]]", task.reward_function("train"))
        trainer: dict[str, Any] = {
            "model": model,
            "reward_funcs": [reward],
            "train_dataset": dataset,
            "processing_class": tokenizer,
            "callbacks": callbacks,
        }
        if cfg.kind == "ppo":
            from rlsparse_lib.training.ppo import PpoTrainer

            o = cfg.ppo
            assert o is not None
            if r.loss_type is not None:
                rl_args["loss_type"] = r.loss_type
            rl_args["beta"] = 0.0  # PPO's KL is a reward penalty (PpoTrainer), not GRPO's loss term
            del trainer["reward_funcs"]  # PpoTrainer records the rule reward itself
            return PpoTrainer(
                args=trl.GRPOConfig(**rl_args),
                reward_func=reward,
                kl_coef=r.beta,
                gamma=o.gamma,
                lam=o.lam,
                value_lr=o.value_lr if o.value_lr is not None else t.lr,
                value_clip=o.value_clip,
                seed=cfg.seed,
                **trainer,
            )
        if cfg.kind == "prime":
            from rlsparse_lib.training.prime import PrimeTrainer

            q = cfg.prime
            assert q is not None
            if r.loss_type is not None:
                rl_args["loss_type"] = r.loss_type
            del trainer["reward_funcs"]  # PrimeTrainer records the outcome scores itself
            return PrimeTrainer(
                args=trl.GRPOConfig(**rl_args),
                reward_func=reward,
                prm_beta=q.beta,
                prm_lr=q.lr if q.lr is not None else t.lr,
                process_weight=q.process_weight,
                **trainer,
            )
        if cfg.kind == "grpo":
            if r.loss_type is not None:
                rl_args["loss_type"] = r.loss_type
            if r.scale_rewards is not None:
                rl_args["scale_rewards"] = r.scale_rewards
            return trl.GRPOTrainer(args=trl.GRPOConfig(**rl_args), **trainer)
        return trl.RLOOTrainer(args=trl.RLOOConfig(**rl_args), **trainer)
    if cfg.kind in ("sft", "rft"):
        sft_args = trl.SFTConfig(
            **args,
            per_device_train_batch_size=t.batch_size,
            max_length=max_length,
            packing=False,
            completion_only_loss=True,
        )
        return trl.SFTTrainer(
            model=model,
            args=sft_args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=callbacks,
        )
    p = cfg.preference
    assert p is not None
    if cfg.kind in ("orpo", "simpo"):  # reference-free: no frozen copy of the model
        from trl.experimental.cpo import CPOConfig, CPOTrainer
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        free_args: dict[str, Any] = {
            **args,
            "per_device_train_batch_size": t.batch_size,
            "max_length": max_length,
            "max_completion_length": t.max_completion_length,
            "beta": p.beta,
            "disable_dropout": True,
        }
        common = {
            "model": model,
            "train_dataset": dataset,
            "processing_class": tokenizer,
            "callbacks": callbacks,
        }
        if cfg.kind == "orpo":
            return ORPOTrainer(args=ORPOConfig(**free_args), **common)
        # SimPO = CPO's simpo loss without CPO's behaviour-cloning term (cpo_alpha 0)
        simpo = CPOConfig(**free_args, loss_type="simpo", cpo_alpha=0.0)
        return CPOTrainer(args=simpo, **common)
    ref = copy.deepcopy(model).eval()
    for q in ref.parameters():
        q.requires_grad_(False)
    pref_args: dict[str, Any] = {
        **args,
        "per_device_train_batch_size": t.batch_size,
        "max_length": max_length,
        "beta": p.beta,
        "disable_dropout": True,
    }
    trainer = {
        "model": model,
        "ref_model": ref,
        "train_dataset": dataset,
        "processing_class": tokenizer,
        "callbacks": callbacks,
    }
    if cfg.kind == "dpo":
        if p.loss_type is not None:  # DPOConfig takes a list of losses
            pref_args["loss_type"] = [p.loss_type]
        return trl.DPOTrainer(args=trl.DPOConfig(**pref_args), **trainer)
    if p.loss_type is not None:  # KTOConfig takes one name
        pref_args["loss_type"] = p.loss_type
    return trl.KTOTrainer(args=trl.KTOConfig(**pref_args), **trainer)
