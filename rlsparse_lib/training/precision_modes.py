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
"""

from __future__ import annotations

from dataclasses import dataclass

MODES = ("bf16", "mixed", "fp32")


@dataclass(frozen=True)
class Precision:
    """How one mode maps onto model dtype and trainer flags.

    Attributes:
        mode: ``bf16``, ``mixed`` or ``fp32``.
        weights: dtype the model's parameters (and AdamW's state) are kept in.
        autocast_bf16: the trainer's ``bf16=True`` (autocast of the forward/backward to bf16).
        keeps_fp32: the run holds fp32 weights, so fp32 checkpoints can be saved.
    """

    mode: str

    @property
    def weights(self) -> str:
        return "bfloat16" if self.mode == "bf16" else "float32"

    @property
    def autocast_bf16(self) -> bool:
        return self.mode == "mixed"

    @property
    def keeps_fp32(self) -> bool:
        return self.mode != "bf16"

    @property
    def compute(self) -> str:
        return "float32" if self.mode == "fp32" else "bfloat16"

    def describe(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "weights": self.weights,
            "compute": self.compute,
            "optimizer_state": self.weights,
            "trainer_bf16_autocast": self.autocast_bf16,
        }
