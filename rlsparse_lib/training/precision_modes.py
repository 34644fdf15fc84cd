"""Precision modes: the follow-up papers' controls for "sparsity is bf16 absorbing small updates".

=========  ================  ==================  =========  =============================
mode       stored weights    compute             optimizer  checkpoints
=========  ================  ==================  =========  =============================
``bf16``   bfloat16          bfloat16            bfloat16   bf16
``fp16``   float16           fp32 (CPU) /        float32    fp16
                             fp16 autocast +
                             loss scaling (GPU)
``mixed``  float32 (master)  bf16 (autocast)     float32    bf16 (+ fp32), as verl/Open-Instruct
``fp32``   float32           float32             float32    bf16 (+ fp32)
=========  ================  ==================  =========  =============================

In ``bf16`` every optimizer step rounds the new weight to bf16, so an update smaller than half a
bf16 ULP is lost for good. In ``mixed`` such updates accumulate in the fp32 master copy and show in
the bf16 checkpoint once the sum crosses a rounding boundary.

``fp16`` is ``bf16``'s analogue with IEEE half weights (10 mantissa bits: an 8x finer rounding step,
5 exponent bits: range ±65504, subnormals below 2^-14). The weight *is* its fp16 value: θ0 is the
model rounded to fp16 (round to nearest even) and after every optimizer step each parameter is
rounded to fp16 again (:class:`Fp16Weights`), so an update smaller than half an fp16 ULP is absorbed
exactly as bf16 absorbs it, and checkpoints are fp16 files. The values live in float32 tensors,
which is what lets the library do the rest:

* the optimizer's state and arithmetic are fp32 (a pure fp16 AdamW would underflow: ε = 1e-8 and
  g² below 6e-8 are 0 in fp16), so the step is θ ← fp16(θ + Δ) with Δ computed in fp32;
* on a CPU the forward/backward computes in fp32 (fp16 matmuls have no fast CPU kernels: a 512³
  matmul took 0.22 s in fp16 vs 0.003 s in fp32 here); gradients are fp32, so no loss scaling;
* on a GPU the trainer's ``fp16=True`` autocasts the forward/backward to fp16 (the weights cast to
  fp16 exactly) with dynamic loss scaling (accelerate's ``torch.amp.GradScaler``: steps with
  inf/NaN gradients are skipped, the scale adapts).

The manifest records the compute dtype and whether loss scaling was used.

**CPUs without native bf16** (e.g. AVX2-only x86-64; the verdict and its rule:
:mod:`rlsparse_lib.training.cpu_compute`, override ``RLSPARSE_CPU_BF16=native|emulated``) emulate
bf16 matmuls ~40x slower than fp32. There a CPU run's ``mixed`` computes in **fp32** (no bf16
autocast): it keeps what the mode is about, fp32 master weights and optimizer state and bf16 (+
fp32) checkpoints, so the absorption effect is measured the same way; only the forward/backward
rounding differs (slightly different numbers than on a native CPU, recorded in the manifest).
``bf16`` is **unchanged** there (bf16 weights, compute and optimizer, slow): its point is weights
*stored and updated* in bf16, and torch cannot compute in fp32 on bf16 parameters without
replacing them by fp32 copies and the optimizer's bf16 arithmetic by fp32 arithmetic, i.e. running
another experiment. Neither the demo nor the default configs use it (notebook 09's bf16 runs do,
and are slow there); the manifest marks its compute emulated. ``fp32`` is fp32 everywhere anyway.
GPU runs are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import TrainerCallback

from rlsparse_lib.errors import ConfigError
from rlsparse_lib.training.cpu_compute import CpuBf16, detect_cpu_bf16

#: the checkpoint format (manifest key) and torch dtype of each mode's main checkpoint files
_MAIN = {"fp16": ("fp16", "float16")}


@dataclass(frozen=True)
class Precision:
    """How one mode maps onto model dtype and trainer flags on one device.

    Attributes:
        mode: ``bf16``, ``fp16``, ``mixed`` or ``fp32``.
        fast_bf16: the device computes bf16 natively (GPUs; CPUs with a ``native`` verdict).
            False makes ``mixed`` compute in fp32 (module docstring).
        gpu: the run computes on a GPU (``fp16``: fp16 autocast with loss scaling there).
        weights: dtype of the weights' values (what checkpoints and the monitor compare).
        tensors: dtype of the parameter tensors (and AdamW's state): ``fp16`` holds its fp16
            values in float32 tensors.
        autocast_bf16 / autocast_fp16: the trainer's ``bf16=True`` / ``fp16=True`` (autocast of
            the forward/backward; ``fp16`` with dynamic loss scaling).
        keeps_fp32: the run holds fp32 weights, so fp32 checkpoints can be saved.
        compute: the dtype of the forward/backward matmuls.
        checkpoint: the main checkpoint files' format, ``bf16`` or ``fp16`` (manifest key).
    """

    mode: str
    fast_bf16: bool = True
    gpu: bool = False

    @classmethod
    def for_device(cls, mode: str, device_type: str, cpu: CpuBf16 | None = None) -> Precision:
        """The mode on ``device_type`` (``cpu`` / ``cuda``); ``cpu``: the verdict (detected when
        not given) decides ``fast_bf16``."""
        if device_type != "cpu":
            return cls(mode, gpu=True)
        cpu = cpu if cpu is not None else detect_cpu_bf16()
        return cls(mode, fast_bf16=cpu.native)

    @property
    def weights(self) -> str:
        return {"bf16": "bfloat16", "fp16": "float16"}.get(self.mode, "float32")

    @property
    def tensors(self) -> str:
        return "bfloat16" if self.mode == "bf16" else "float32"

    @property
    def autocast_bf16(self) -> bool:
        return self.mode == "mixed" and self.fast_bf16

    @property
    def autocast_fp16(self) -> bool:
        return self.mode == "fp16" and self.gpu

    @property
    def keeps_fp32(self) -> bool:
        return self.mode in ("mixed", "fp32")

    @property
    def compute(self) -> str:
        if self.autocast_fp16:
            return "float16"
        return "bfloat16" if self.mode == "bf16" or self.autocast_bf16 else "float32"

    @property
    def rounded_to(self) -> str | None:
        """The dtype the parameter tensors' values are rounded to (``fp16``: ``float16``)."""
        return "float16" if self.mode == "fp16" else None

    @property
    def checkpoint(self) -> str:
        return _MAIN.get(self.mode, ("bf16", "bfloat16"))[0]

    @property
    def checkpoint_dtype(self) -> str:
        return _MAIN.get(self.mode, ("bf16", "bfloat16"))[1]

    def prepare(self, model) -> None:
        """Round the loaded model's parameters to the mode's weights in place (``fp16``: θ0 is
        the model rounded to fp16; the others: nothing to do).

        Raises:
            ConfigError: a finite weight outside the fp16 range (it would become ±inf).
        """
        if self.mode != "fp16":
            return
        import torch

        with torch.no_grad():
            for name, p in model.named_parameters():
                half = p.to(torch.float16)
                overflow = torch.isinf(half) & torch.isfinite(p)
                if overflow.any():
                    worst = float(p[overflow].abs().max())
                    raise ConfigError(
                        f"precision fp16: parameter '{name}' has |w| = {worst:g} > 65504, "
                        "outside the float16 range"
                    )
                p.copy_(half)

    def callbacks(self) -> list:
        """Trainer callbacks the mode needs (``fp16``: :class:`Fp16Weights`)."""
        return [Fp16Weights()] if self.mode == "fp16" else []

    @property
    def note(self) -> str:
        """One line on how the mode runs here."""
        if self.mode == "mixed" and not self.fast_bf16:
            return "fp32 compute: bf16 is not native here (fp32 master weights, bf16 checkpoints)"
        if self.mode == "bf16" and not self.fast_bf16:
            return "bf16 compute is emulated here (slow): bf16 weights are this mode's point"
        if self.mode == "fp16" and self.gpu:
            return (
                "fp16 weights (float32 tensors rounded to fp16 after every step), fp16 autocast "
                "with dynamic loss scaling, fp32 optimizer"
            )
        if self.mode == "fp16":
            return (
                "fp16 weights (float32 tensors rounded to fp16 after every step), fp32 compute "
                "(no fast fp16 CPU kernels), fp32 gradients: no loss scaling; fp32 optimizer"
            )
        return "as specified"

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {
            "mode": self.mode,
            "weights": self.weights,
            "compute": self.compute,
            "optimizer_state": self.tensors,
            "trainer_bf16_autocast": self.autocast_bf16,
            "bf16_compute_native": self.fast_bf16,
            "note": self.note,
        }
        if self.mode == "fp16":  # only here: the other modes' records stay as runs resume them
            out["trainer_fp16_autocast"] = self.autocast_fp16
            out["loss_scaling"] = self.autocast_fp16  # dynamic (GradScaler) where fp16 computes
        return out


class Fp16Weights(TrainerCallback):
    """``fp16`` mode: after every optimizer step, each parameter (float32 tensor) ← its fp16
    rounding (round to nearest even), so the weights are fp16 values and an update below half an
    fp16 ULP is absorbed. Runs before the step's checkpoint and monitor (``on_step_end``)."""

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        round_to_fp16(model)


def round_to_fp16(model) -> None:
    """θ ← float32(float16(θ)) for every parameter of ``model``, in place."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.float16))


def cpu_line(cpu: CpuBf16) -> str:
    """One line on this CPU's bf16 verdict (printed before a CPU run starts)."""
    verdict = "native" if cpu.native else "emulated (CPU runs compute mixed precision in fp32)"
    return f"CPU bf16: {verdict}; {cpu.reason} [torch capability {cpu.capability}]"


def compute_line(manifest: dict[str, Any]) -> str:
    """One line from a run manifest: the compute dtype it used, on what, and why."""
    p = manifest.get("precision") or {}
    plat = manifest.get("platform") or {}
    line = (
        f"compute: {p.get('compute', '?')} on {plat.get('device', '?')} "
        f"(precision {p.get('mode', '?')}, weights {p.get('weights', '?')})"
    )
    cpu = plat.get("cpu")
    if not cpu:
        return line + "; CPU bf16 verdict not recorded (a run made before it was)"
    verdict = "native" if cpu["bf16_native"] else "emulated"
    return f"{line}; CPU bf16 {verdict}: {cpu['reason']} [torch {cpu['torch_capability']}]"
