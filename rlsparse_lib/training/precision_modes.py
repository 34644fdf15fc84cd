"""Precision modes: the follow-up papers' controls for "sparsity is bf16 absorbing small updates".

=========  ================  ===============  =========  =============================
mode       stored weights    compute          optimizer  checkpoints
=========  ================  ===============  =========  =============================
``bf16``   bfloat16          bfloat16         bfloat16   bf16
``mixed``  float32 (master)  bf16 (autocast)  float32    bf16 (+ fp32), as verl/Open-Instruct
``fp32``   float32           float32          float32    bf16 (+ fp32)
=========  ================  ===============  =========  =============================

In ``bf16`` every optimizer step rounds the new weight to bf16, so an update smaller than half a
bf16 ULP is lost for good. In ``mixed`` such updates accumulate in the fp32 master copy and show in
the bf16 checkpoint once the sum crosses a rounding boundary.

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

from rlsparse_lib.training.cpu_compute import CpuBf16, detect_cpu_bf16

MODES = ("bf16", "mixed", "fp32")


@dataclass(frozen=True)
class Precision:
    """How one mode maps onto model dtype and trainer flags on one device.

    Attributes:
        mode: ``bf16``, ``mixed`` or ``fp32``.
        fast_bf16: the device computes bf16 natively (GPUs; CPUs with a ``native`` verdict).
            False makes ``mixed`` compute in fp32 (module docstring).
        weights: dtype the model's parameters (and AdamW's state) are kept in.
        autocast_bf16: the trainer's ``bf16=True`` (autocast of the forward/backward to bf16).
        keeps_fp32: the run holds fp32 weights, so fp32 checkpoints can be saved.
        compute: the dtype of the forward/backward matmuls.
    """

    mode: str
    fast_bf16: bool = True

    @classmethod
    def for_device(cls, mode: str, device_type: str, cpu: CpuBf16 | None = None) -> Precision:
        """The mode on ``device_type`` (``cpu`` / ``cuda``); ``cpu``: the verdict (detected when
        not given) decides ``fast_bf16``."""
        if device_type != "cpu":
            return cls(mode)
        cpu = cpu if cpu is not None else detect_cpu_bf16()
        return cls(mode, fast_bf16=cpu.native)

    @property
    def weights(self) -> str:
        return "bfloat16" if self.mode == "bf16" else "float32"

    @property
    def autocast_bf16(self) -> bool:
        return self.mode == "mixed" and self.fast_bf16

    @property
    def keeps_fp32(self) -> bool:
        return self.mode != "bf16"

    @property
    def compute(self) -> str:
        return "bfloat16" if self.mode == "bf16" or self.autocast_bf16 else "float32"

    @property
    def note(self) -> str:
        """One line on how the mode runs here."""
        if self.mode == "mixed" and not self.fast_bf16:
            return "fp32 compute: bf16 is not native here (fp32 master weights, bf16 checkpoints)"
        if self.mode == "bf16" and not self.fast_bf16:
            return "bf16 compute is emulated here (slow): bf16 weights are this mode's point"
        return "as specified"

    def describe(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "weights": self.weights,
            "compute": self.compute,
            "optimizer_state": self.weights,
            "trainer_bf16_autocast": self.autocast_bf16,
            "bf16_compute_native": self.fast_bf16,
            "note": self.note,
        }


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
