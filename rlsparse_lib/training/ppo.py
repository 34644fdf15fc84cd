"""PPO with a value model and a rule reward (Schulman et al. 2017; the RLHF form of Ouyang et al.).

Per generation batch: the task's scorer gives each completion a reward at its last token; a
per-token KL penalty ``−kl_coef·(log π − log π_ref)`` is added (``rl.beta``; 0: no reference
model); a value model V (θ0's backbone and a scalar head) estimates each state; GAE(γ, λ) turns
rewards and values into advantages (whitened over the batch's completion tokens) and returns;
the policy takes TRL's GRPO PPO-clip step on the per-token advantages, and V one AdamW step on
the clipped value loss ``½·max((V − R)², (clip(V, V_old ± ε_v) − R)²)``.

TRL 1.16 has no PPO trainer (1.12 was the last). Generation, the clipped policy loss, logging and
checkpoints are TRL's ``GRPOTrainer``; :class:`PpoTrainer` only replaces its advantages.
Hand-written, because TRL no longer has them: the value model (a backbone plus a linear head, as
TRL's old PPO built from ``AutoModelForSequenceClassification``), GAE, and the value update.

SmolLM2 pads with its end-of-turn token (pad = eos = ``<|im_end|>``), so masks built as
``input_ids != pad_token_id`` (TRL ≤ 1.12's PPO) hide the end-of-turn tokens inside the prompt
and the first one ending the completion. Here no mask is derived from token ids: the prompt mask
is the tokenizer's attention mask and the completion mask ends at the first EOS (GRPO's), and the
tests check both on a tokenizer whose pad equals its eos.

The value model and its optimizer are saved with every resumable state and restored on resume
(:class:`~rlsparse_lib.training.prime.AuxModelTrainer`).

Not implemented: several PPO epochs over one batch (``rl.num_iterations`` > 1 reuses GRPO's
ratio, but V takes one step per batch).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch

from rlsparse_lib.training.prime import AuxModelTrainer, OutcomeRecorder, token_logps


class ValueModel(torch.nn.Module):
    """V(s_t): a causal LM backbone and a linear head; ``forward`` returns (B, L) float32."""

    def __init__(self, policy: Any, seed: int) -> None:
        """``policy``: a transformers causal LM (its ``base_model`` and ``config.hidden_size``)."""
        super().__init__()
        self.backbone = copy.deepcopy(policy.base_model)
        hidden = int(policy.config.hidden_size)
        self.head = torch.nn.Linear(hidden, 1, dtype=next(policy.parameters()).dtype)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # TRL's old PPO: std 1/sqrt(hidden + 1), bias 0
            self.head.weight.copy_(torch.randn(self.head.weight.shape, generator=g))
            self.head.weight.mul_((hidden + 1) ** -0.5)
            self.head.bias.zero_()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(h).squeeze(-1).float()


def completion_values(
    value: ValueModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_completion: int
) -> torch.Tensor:
    """V of the state before each of the last ``n_completion`` tokens, (B, n_completion)."""
    return value(input_ids, attention_mask)[:, -n_completion - 1 : -1]


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over completion tokens; (advantages, returns), (B, T).

    ``mask`` (B, T) bool marks each row's completion (a prefix); V after the last token is 0.
    """
    m = mask.to(rewards.dtype)
    v = values * m
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.size(1))):
        next_v = v[:, t + 1] if t + 1 < rewards.size(1) else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v - v[:, t]
        last = (delta + gamma * lam * last) * m[:, t]
        adv[:, t] = last
    return adv, (adv + v) * m


def whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(x − mean) / std over ``mask`` (unbiased variance, as TRL's old ``masked_whiten``), 0 outside."""
    m = mask.to(x.dtype)
    n = m.sum()
    mean = (x * m).sum() / n
    var = (((x - mean) ** 2) * m).sum() / (n - 1).clamp(min=1.0)
    return (x - mean) * torch.rsqrt(var + 1e-8) * m


def value_loss(
    new: torch.Tensor, old: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float
) -> torch.Tensor:
    """½·max((V − R)², (clip(V, V_old ± clip) − R)²), mean over ``mask`` tokens."""
    clipped = old + (new - old).clamp(-clip, clip)
    loss = torch.max((new - returns) ** 2, (clipped - returns) ** 2)
    m = mask.to(loss.dtype)
    return 0.5 * (loss * m).sum() / m.sum()


class PpoTrainer(AuxModelTrainer):
    """GRPO's generation and PPO-clip loss with GAE advantages from a value model."""

    def __init__(
        self,
        *,
        reward_func: Callable[..., list[float | None]],
        kl_coef: float,
        gamma: float,
        lam: float,
        value_lr: float,
        value_clip: float,
        seed: int,
        **kwargs: Any,
    ) -> None:
        self._outcome = OutcomeRecorder(reward_func)
        # copies of θ0 made before the Trainer prepares the policy (see PrimeTrainer)
        policy = kwargs["model"]
        self.ppo_ref = copy.deepcopy(policy).eval().requires_grad_(False) if kl_coef else None
        self.value = ValueModel(policy, seed).train()
        super().__init__(reward_funcs=[self._outcome], **kwargs)
        a = self.args
        self.value_optimizer = torch.optim.AdamW(
            self.value.parameters(),
            lr=value_lr,
            betas=(a.adam_beta1, a.adam_beta2),
            eps=a.adam_epsilon,
            weight_decay=0.0,
        )
        self.aux_model, self.aux_optimizer = self.value, self.value_optimizer
        self.kl_coef, self.gamma, self.lam, self.value_clip = kl_coef, gamma, lam, value_clip

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        out = super()._generate_and_score_completions(inputs)
        assert self.model is not None
        if not self.model.training:  # evaluation inside the trainer: GRPO's advantages are unused
            return out
        cids, cmask = out["completion_ids"], out["completion_mask"]
        ids = torch.cat([out["prompt_ids"], cids], dim=1)
        attn = torch.cat([out["prompt_mask"], cmask], dim=1)  # attention masks, never ids != pad
        n = cids.size(1)
        mask = cmask.bool()
        score = torch.tensor(
            [0.0 if r is None else float(r) for r in self._outcome.last], device=ids.device
        )
        rows = torch.arange(ids.size(0), device=ids.device)
        rewards = torch.zeros(mask.shape, device=ids.device)
        rewards[rows, mask.long().cumsum(dim=1).argmax(dim=1)] = score
        # the reference computes as the policy does (bf16 autocast in ``mixed`` on a bf16 CPU/GPU)
        with torch.no_grad(), self.accelerator.autocast():
            if self.ppo_ref is not None:
                kl = token_logps(self.model, ids, attn, n) - token_logps(self.ppo_ref, ids, attn, n)
                rewards = rewards - self.kl_coef * kl * mask
                self._metrics["train"]["ppo_kl"].append(((kl * mask).sum(1)).mean().item())
            old_values = completion_values(self.value, ids, attn, n)
        adv, returns = gae(rewards, old_values, mask, self.gamma, self.lam)
        out["advantages"] = whiten(adv, mask)
        self.value_optimizer.zero_grad(set_to_none=True)
        loss = value_loss(
            completion_values(self.value, ids, attn, n), old_values, returns, mask, self.value_clip
        )
        loss.backward()
        self.value_optimizer.step()
        self._metrics["train"]["value_loss"].append(loss.item())
        return out
