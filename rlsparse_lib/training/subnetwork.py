"""Subnetwork training: m ⊙ ∇ right before the optimizer step; masked-out weights held exactly.

The mask is an rlsparse mask file (``rlsparse diff --mask-out``, ``rlsparse mask``): bit 1 = the
weight may train. Two hooks around ``optimizer.step()``:

* ``on_pre_optimizer_step`` (after gradient-norm clipping, which therefore sees the full gradient
  as in the full run): gradients of masked-out weights are set to 0. From step 1 on, AdamW's
  moments of those weights stay exactly 0, so Adam itself never moves them.
* ``on_optimizer_step``: decoupled weight decay (AdamW's θ ← θ − lr·λ·θ, or SGD's) still moves
  them; every masked-out weight is written back to its θ0 value. The number of such restores is
  recorded (0 when weight decay is 0: a check that gradient masking alone holds them).

A random mask of matched density (the control) comes from :func:`rlsparse_lib.masks.ops.random_mask_like`;
a random mask of a *given* density (``mask.density``, no source mask) from :func:`random_density_mask`,
with the same sampler. :func:`gradient_mask` builds the run's callback from its ``mask`` section.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from rlsparse_lib.errors import ConfigError
from rlsparse_lib.io.maskfile import MaskFile, MaskWriter, packed_size
from rlsparse_lib.masks import bitops
from rlsparse_lib.progress import progress_bar
from rlsparse_lib.training.config import MaskSection
from rlsparse_lib.training.monitor import words

#: weights per sampling step of :func:`random_density_mask`
CHUNK_ELEMS = 1 << 22


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


def parameter_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Shape of every parameter (tied ones once, under their first name, as checkpoints store
    them), in model order."""
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def selected_count(density: float, numel: int) -> int:
    """How many of ``numel`` weights a mask of ``density`` selects: round(density × numel),
    halves rounded up."""
    return min(numel, math.floor(density * numel + 0.5))


def random_density_mask(
    shapes: dict[str, tuple[int, ...]],
    out: str | Path,
    *,
    density: float,
    seed: int,
    stratify: str = "global",
    progress: bool = True,
) -> Path:
    """Write a random mask selecting exactly :func:`selected_count` weights.

    ``global``: round(density × all weights) over the whole model, every such subset equally
    likely; ``tensor``: round(density × numel) in each tensor. Positions are drawn by selection
    sampling from ``numpy.random.default_rng(seed)`` (the sampler of
    :func:`rlsparse_lib.masks.ops.random_mask_like`), so the mask depends only on the shapes, the
    density, the stratification and the seed.

    Raises:
        ConfigError: density outside (0, 1], an unknown stratification, or a mask that would
            select no weight at all.
    """
    if not 0 < density <= 1:
        raise ConfigError(f"mask.density must be in (0, 1], got {density}")
    if stratify not in ("global", "tensor"):
        raise ConfigError(f"mask.stratify must be global or tensor here, got {stratify!r}")
    numels = {name: math.prod(shape) for name, shape in shapes.items()}
    total = sum(numels.values())
    wanted = (
        selected_count(density, total)
        if stratify == "global"
        else sum(selected_count(density, n) for n in numels.values())
    )
    if wanted == 0:
        raise ConfigError(
            f"mask.density {density} selects no weight of {total} ({stratify} stratification)"
        )
    rng = np.random.default_rng(seed)
    rule = {
        "kind": "random",
        "stratify": stratify,
        "seed": int(seed),
        "density": density,
        "sampler": "selection sampling, numpy default_rng (PCG64) float64 uniforms",
    }
    rem = np.array([wanted, total], np.int64)
    bar = progress_bar(
        total=total,
        unit="w",
        unit_scale=True,
        desc=f"random mask ({stratify})",
        disable=None if progress else True,
    )
    try:
        with MaskWriter(out, shapes, rule, {"density": density}) as writer:
            for name, numel in numels.items():
                if stratify == "tensor":
                    rem = np.array([selected_count(density, numel), numel], np.int64)
                for start in range(0, numel, CHUNK_ELEMS):
                    n = min(numel, start + CHUNK_ELEMS) - start
                    packed = np.zeros(packed_size(n), np.uint8)
                    bitops.select_uniform(rng.random(n), rem, packed)
                    writer.write(name, packed)
                    bar.update(n)
    finally:
        bar.close()
    return Path(out)


def gradient_mask(
    section: MaskSection,
    mask_path: Path | None,
    model: torch.nn.Module,
    run_dir: Path,
    base: Path,
    progress: bool = True,
) -> tuple[GradientMask, dict[str, Any]]:
    """The run's :class:`GradientMask` (attached to ``model``) and its manifest record.

    ``mask_path``: the resolved ``mask.path`` (None: ``mask.density`` without a file). Random
    masks are written to ``run_dir/random_mask.safetensors``: of the file's density and counts
    (``random_mask_like``; ``base`` is θ0's checkpoint, for binade strata) or of ``density``.
    """
    from rlsparse_lib.masks.ops import random_mask_like

    train_mask = mask_path
    out = run_dir / "random_mask.safetensors"
    if section.random and mask_path is not None:
        train_mask = random_mask_like(
            mask_path,
            out,
            seed=section.random_seed,
            stratify=section.stratify,
            base=base,
            progress=progress,
        )
    elif section.random:
        assert section.density is not None  # the config requires a path or a density
        train_mask = random_density_mask(
            parameter_shapes(model),
            out,
            density=section.density,
            seed=section.random_seed,
            stratify=section.stratify,
            progress=progress,
        )
    assert train_mask is not None
    callback = GradientMask(train_mask)
    callback.attach(model)  # validates names and shapes before any training work
    info = {
        "source": str(mask_path) if mask_path is not None else None,
        "random": section.random,
        "stratify": section.stratify,
        "random_seed": section.random_seed if section.random else None,
        "requested_density": section.density,
    }
    return callback, info


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
