"""PRIME (Cui et al., arXiv 2502.01456): RL with an implicit process reward model.

The recipe, as in the authors' verl implementation (``recipe/prime``):

1. The implicit PRM is a copy of θ0 trained online. Its per-token reward is
   ``r_t = β · (log π_prm(y_t | y_<t) − log π_ref(y_t | y_<t))`` (π_ref: frozen θ0); its loss is the
   cross-entropy of ``σ(Σ_t r_t)`` against the outcome label (the task's 0/1 score). It takes one
   AdamW step on each generation batch before it scores that batch ("update before").
2. Advantages: the leave-one-out (RLOO) baseline within each prompt's group, applied to the
   outcome reward (at the last completion token) and to the process rewards (every token), summed
   with ``process_weight``, turned into returns (reverse cumulative sum, γ = 1) and whitened over the
   batch's completion tokens.
3. Policy loss: PPO-clip on per-token advantages — TRL's GRPO loss, which accepts (B, T) advantages.

Generation, the clipped policy loss, KL, logging and checkpoints are TRL's ``GRPOTrainer``;
:class:`PrimeTrainer` only replaces its advantages. Hand-written here, because neither TRL nor
transformers has them: the PRM's cross-entropy and its optimizer step (TRL's PRM trainer trains an
explicit token-classification head, not an implicit reward), temperature-free log-probabilities
(GRPO's helper divides logits by the sampling temperature, which the implicit reward must not),
and the token-level RLOO / returns / whitening of step 2.

The PRM and its optimizer are saved with every resumable state and restored on resume
(:class:`AuxModelTrainer`, shared with PPO's value model), so a resumed run matches an uninterrupted one.

Not implemented: PRIME's online prompt filtering by accuracy (a data choice, not the algorithm).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from trl import GRPOTrainer


def token_logps(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_completion: int
) -> torch.Tensor:
    """log π(y_t | y_<t) of the last ``n_completion`` tokens, (B, n_completion) float32.

    ``input_ids``/``attention_mask``: (B, P + n_completion), prompt then completion.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    logits = logits[:, -n_completion - 1 : -1].float()
    targets = input_ids[:, -n_completion:]
    return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def implicit_rewards(
    prm_logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor, beta: float
) -> torch.Tensor:
    """Per-token implicit process rewards β·(log π_prm − log π_ref), 0 outside ``mask``; (B, T)."""
    return beta * (prm_logps - ref_logps) * mask


def prm_loss(
    prm_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    outcome: torch.Tensor,
) -> torch.Tensor:
    """Cross-entropy of σ(sequence implicit reward) against the outcome labels ``outcome`` (B,)."""
    score = implicit_rewards(prm_logps, ref_logps, mask, beta).sum(dim=1)
    return F.binary_cross_entropy_with_logits(score, outcome.to(score.dtype))


def rloo_tokens(rewards: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """Leave-one-out token rewards in groups of ``k`` consecutive rows (PRIME's ``masked_rloo``).

    Each sample's mean reward over its ``mask`` tokens is its score; a token reward r becomes
    ``r·k/(k−1) − Σ_group scores/(k−1)``, which for a one-token (outcome) reward is
    ``r_i − mean_{j≠i} r_j``. ``rewards`` (B, T) float, ``mask`` (B, T) bool, B a multiple of k.
    """
    m = mask.to(rewards.dtype)
    scores = (rewards * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
    baseline = scores.view(-1, k).sum(dim=1, keepdim=True).expand(-1, k).reshape(-1, 1) / (k - 1)
    return (rewards * k / (k - 1) - baseline) * m


def prime_advantages(
    process: torch.Tensor,
    outcome: torch.Tensor,
    mask: torch.Tensor,
    k: int,
    process_weight: float,
) -> torch.Tensor:
    """PRIME's per-token advantages (B, T) float32.

    ``process``: implicit token rewards (B, T); ``outcome``: 0/1 scores (B,); ``mask``: completion
    tokens (B, T) bool, at least one per row; rows grouped by prompt in runs of ``k``.
    """
    mask = mask.bool()
    last = mask.long().cumsum(dim=1).argmax(dim=1)  # index of each row's last completion token
    rows = torch.arange(mask.size(0), device=mask.device)
    out_tokens = torch.zeros_like(process)
    out_tokens[rows, last] = outcome.to(process.dtype)
    out_mask = torch.zeros_like(mask)
    out_mask[rows, last] = True
    reward = process_weight * rloo_tokens(process, mask, k) + rloo_tokens(out_tokens, out_mask, k)
    m = mask.to(reward.dtype)
    returns = (reward * m).flip(-1).cumsum(-1).flip(-1)
    n = m.sum()
    mean = (returns * m).sum() / n
    var = (((returns - mean) ** 2) * m).sum() / (n - 1).clamp(min=1.0)  # unbiased, as verl
    return (returns - mean) * torch.rsqrt(var + 1e-8) * m


class OutcomeRecorder:
    """The task's reward function, remembering its last batch of scores (the outcome labels)."""

    def __init__(self, func: Callable[..., list[float | None]]) -> None:
        self.func = func
        self.__name__ = getattr(func, "__name__", "outcome")
        self.last: list[float | None] = []

    def __call__(self, *args: Any, **kwargs: Any) -> list[float | None]:
        self.last = list(self.func(*args, **kwargs))
        return self.last


class AuxModelTrainer(GRPOTrainer):
    """A GRPO trainer with a second trained model (PRIME's PRM, PPO's value model) whose weights
    and optimizer state travel with the Trainer's resumable checkpoints."""

    AUX_MODEL = "aux_model.safetensors"
    AUX_OPTIMIZER = "aux_optimizer.pt"
    aux_model: torch.nn.Module
    aux_optimizer: torch.optim.Optimizer

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)  # writes checkpoint-<step>; on_save renames it later
        from safetensors.torch import save_model

        folder = Path(str(self.args.output_dir)) / f"checkpoint-{self.state.global_step}"
        save_model(self.aux_model, str(folder / self.AUX_MODEL))
        torch.save(self.aux_optimizer.state_dict(), folder / self.AUX_OPTIMIZER)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        from safetensors.torch import load_model

        folder = Path(checkpoint)
        load_model(self.aux_model, str(folder / self.AUX_MODEL))
        # our own file, tensors and numbers only: the restricted (weights_only) unpickler
        state = torch.load(folder / self.AUX_OPTIMIZER, weights_only=True)
        self.aux_optimizer.load_state_dict(state)


class PrimeTrainer(AuxModelTrainer):
    """GRPO's generation and PPO-clip loss with PRIME's advantages (see the module docstring)."""

    def __init__(
        self,
        *,
        reward_func: Callable[..., list[float | None]],
        prm_beta: float,
        prm_lr: float,
        process_weight: float,
        **kwargs: Any,
    ) -> None:
        self._outcome = OutcomeRecorder(reward_func)
        # copies of θ0 made before the Trainer prepares the policy: accelerate may replace its
        # ``forward`` by a wrapper bound to the original, which a later deepcopy would share
        policy = kwargs["model"]
        self.prime_ref = copy.deepcopy(policy).eval().requires_grad_(False)
        self.prm = copy.deepcopy(policy).train().requires_grad_(True)
        super().__init__(reward_funcs=[self._outcome], **kwargs)
        a = self.args
        self.prm_optimizer = torch.optim.AdamW(
            self.prm.parameters(),
            lr=prm_lr,
            betas=(a.adam_beta1, a.adam_beta2),
            eps=a.adam_epsilon,
            weight_decay=0.0,
        )
        self.aux_model, self.aux_optimizer = self.prm, self.prm_optimizer
        self.prm_beta = prm_beta
        self.process_weight = process_weight

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        out = super()._generate_and_score_completions(inputs)
        assert self.model is not None and self.num_generations is not None
        if not self.model.training:  # evaluation inside the trainer: GRPO's advantages are unused
            return out
        cids, cmask = out["completion_ids"], out["completion_mask"]
        ids = torch.cat([out["prompt_ids"], cids], dim=1)
        attn = torch.cat([out["prompt_mask"], cmask], dim=1)
        n = cids.size(1)
        mask = cmask.bool()
        outcome = torch.tensor(
            [0.0 if r is None else float(r) for r in self._outcome.last], device=ids.device
        )
        with torch.no_grad():
            ref = token_logps(self.prime_ref, ids, attn, n)
        self.prm_optimizer.zero_grad(set_to_none=True)
        loss = prm_loss(token_logps(self.prm, ids, attn, n), ref, mask, self.prm_beta, outcome)
        loss.backward()
        self.prm_optimizer.step()
        with torch.no_grad():
            process = implicit_rewards(
                token_logps(self.prm, ids, attn, n), ref, mask, self.prm_beta
            )
        out["advantages"] = prime_advantages(
            process, outcome, mask, self.num_generations, self.process_weight
        )
        metrics = self._metrics["train"]
        metrics["prm_loss"].append(loss.item())
        metrics["process_reward"].append((process.sum(dim=1)).mean().item())
        return out
