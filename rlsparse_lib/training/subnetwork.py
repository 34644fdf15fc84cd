"""Subnetwork training: m ⊙ ∇ right before the optimizer step; masked-out weights held exactly.

The mask is an rlsparse mask file (``rlsparse diff --mask-out``, ``rlsparse mask``): bit 1 = the
weight may train. Two hooks around ``optimizer.step()``:

* ``on_pre_optimizer_step`` (after gradient-norm clipping, which therefore sees the full gradient
  as in the full run): gradients of masked-out weights are set to 0. From step 1 on, AdamW's
  moments of those weights stay exactly 0, so Adam itself never moves them.
* ``on_optimizer_step``: decoupled weight decay (AdamW's θ ← θ − lr·λ·θ, or SGD's) still moves
  them; every masked-out weight is written back to its θ0 value. The number of such restores is
  recorded (0 when weight decay is 0: a check that gradient masking alone holds them).

A random mask of matched density (the control) comes from :func:`rlsparse_lib.masks.ops.random_mask_like`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from rlsparse_lib.errors import ConfigError
from rlsparse_lib.io.maskfile import MaskFile
from rlsparse_lib.training.monitor import words


def mask_tensors(model: torch.nn.Module, mask_path: str | Path) -> dict[str, torch.Tensor]:
    """Bool masks (True = trainable) keyed by parameter name, on each parameter's device.

    Tied parameters may be named by any of their aliases in the file.

    Raises:
        ConfigError: a parameter without a mask, a mask without a parameter, or a shape mismatch.
    """
    path = Path(mask_path)
    with MaskFile.open(path) as mf:
        names = set(mf.names)
        aliases: dict[int, list[str]] = {}
        params: dict[int, tuple[str, torch.Tensor]] = {}
        for name, param in model.named_parameters(remove_duplicate=False):
            aliases.setdefault(id(param), []).append(name)
            params.setdefault(id(param), (name, param))
        out: dict[str, torch.Tensor] = {}
        used: set[str] = set()
        for key, (name, p) in params.items():
            hit = next((a for a in aliases[key] if a in names), None)
            if hit is None:
                raise ConfigError(
                    f"{path}: no mask for parameter '{name}' (is it this model's mask?)"
                )
            if tuple(mf.shapes[hit]) != tuple(p.shape):
                raise ConfigError(
                    f"{path}: mask '{hit}' has shape {list(mf.shapes[hit])}, the parameter {list(p.shape)}"
                )
            out[name] = torch.from_numpy(mf.mask(hit).copy()).to(p.device)
            used.update(a for a in aliases[key] if a in names)
        extra = sorted(names - used)
        if extra:
            raise ConfigError(f"{path}: mask '{extra[0]}' matches no parameter of the model")
    return out


def mask_density(masks: dict[str, torch.Tensor]) -> float:
    n = sum(m.numel() for m in masks.values())
    return sum(int(m.sum()) for m in masks.values()) / n


class GradientMask(TrainerCallback):
    """Masks gradients before each optimizer step and holds masked-out weights at θ0.

    Attributes:
        restored: masked-out weights the optimizer had moved and that were written back, summed
            over steps (only weight decay can cause this).
    """

    def __init__(self, mask_path: str | Path) -> None:
        self.mask_path = Path(mask_path)
        self.restored = 0
        self._items: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def attach(self, model: torch.nn.Module) -> None:
        """Load the masks and take θ0 of the masked-out weights."""
        masks = mask_tensors(model, self.mask_path)
        self.density = mask_density(masks)
        self._items = []
        for name, p in model.named_parameters():
            frozen = ~masks[name]
            self._items.append((p, frozen, p.detach().clone()))

    def mask_gradients(self) -> None:
        """∇ ← m ⊙ ∇ (masked-out entries set to 0, also if they were NaN/inf)."""
        for p, frozen, _ in self._items:
            if p.grad is not None:
                p.grad.masked_fill_(frozen, 0)

    def hold_frozen(self) -> None:
        """Write θ0 back into masked-out weights the optimizer moved; count them."""
        moved = []
        for p, frozen, theta0 in self._items:
            moved.append(torch.count_nonzero((words(p) != words(theta0)) & frozen))
            torch.where(frozen, theta0, p.detach(), out=p.data)
        self.restored += int(torch.stack(moved).sum())

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.mask_path), "density": self.density, "restored": self.restored}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not self._items:  # attach() may have been called early, to validate the mask
            self.attach(model)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.mask_gradients()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.hold_frozen()
