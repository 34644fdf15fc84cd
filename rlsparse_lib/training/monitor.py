"""In-training update-sparsity monitor: a bitwise compare against reference copies, on the device.

Every ``every`` optimizer steps it records, over all parameters (tied ones once):

* ``changed_vs_init`` — weights whose stored value differs from θ0 (update sparsity vs init,
  the paper's §2.2 at the bitwise rule), and
* ``changed_step`` — weights whose stored value changed in that optimizer step, θ_s vs θ_{s−1}
  (PULSE's per-step sparsity).

"Stored value" is the parameter in its own dtype (bf16 for pure-bf16 runs, the fp32 master for
mixed / fp32 runs), or in ``stored`` where the tensors only hold values of a narrower format
(precision fp16: float32 tensors of fp16 values, compared as fp16 words, as its fp16 checkpoints
show them). For fp32 weights it also records the same counts on the bf16 cast
(``*_bf16``), which is what the run's bf16 checkpoints show. The compare runs on integer views
(int16 for bf16, int32 for fp32) of tensors on the parameters' own device (CPU or CUDA, no host
copies); each record costs one device→host sync for the counts.

With ``codecs=True`` each record also carries the payload of that step's sync (θ_{s−1} → θ_s of
the bf16 weights an inference engine receives): ``patch_bytes_<codec>`` for ``raw`` (int32 index +
value), ``rlsparse`` (the ``rlsparse patch`` codec), ``xor_zstd`` and ``dense``, computed on host
copies with :func:`rlsparse_lib.patches.budget.codec_bytes` (the numbers ``rlsparse budget`` gives
for the saved checkpoints). ``seconds`` accumulates the time spent measuring (the overhead).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from rlsparse_lib.rules import sparsity_from_changed

_INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def words(t: torch.Tensor) -> torch.Tensor:
    """The raw words of a float tensor: a same-shape integer view (no copy)."""
    return t.detach().view(_INT[t.element_size()])


def bf16_words(t: torch.Tensor) -> torch.Tensor:
    """The raw words of the bf16 cast (round to nearest even) of ``t``."""
    return t.detach().to(torch.bfloat16).view(torch.int16)


def fp16_words(t: torch.Tensor) -> torch.Tensor:
    """The raw words of the fp16 cast (round to nearest even) of ``t``."""
    return t.detach().to(torch.float16).view(torch.int16)


class SparsityMonitor(TrainerCallback):
    """Records update sparsity vs θ0 and per-step sparsity every ``every`` steps.

    Memory on the device: one copy of the weights for θ0, one for θ_{s−1}, and (for fp32
    weights) two bf16 copies for the bf16 view.

    Attributes:
        records: one dict per recorded step (see the module docstring; ``sparsity_* = 1 −
            changed_* / n_params``).
    """

    def __init__(
        self,
        every: int = 1,
        log_path: str | Path | None = None,
        codecs: bool = False,
        stored: str | None = None,
    ) -> None:
        if every < 1:
            raise ValueError("every must be >= 1")
        if stored not in (None, "float16"):
            raise ValueError(f"stored must be None or 'float16', got {stored!r}")
        self.every = every
        self.codecs = codecs
        #: ``float16``: the parameters hold fp16 values (precision fp16), compared as fp16 words
        self.stored = stored
        self._words = fp16_words if stored == "float16" else words
        #: seconds spent in :meth:`measure` (the monitor's overhead; not in the records, which
        #: stay deterministic)
        self.seconds = 0.0
        self.log_path = Path(log_path) if log_path is not None else None
        self.records: list[dict[str, Any]] = []
        self._params: list[torch.Tensor] = []
        #: θ0 by parameter name, in the parameters' dtype, for a resumed run (set with ``records``
        #: up to the resume step); None: θ0 is the model at ``attach``
        self.init: dict[str, torch.Tensor] | None = None

    # ---- reference copies ------------------------------------------------------------------
    def attach(self, model: torch.nn.Module) -> None:
        """Take θ0 from ``model`` or ``self.init`` and θ_{s−1} from ``model`` (called by
        ``on_train_begin``; call directly outside a Trainer)."""
        named = list(model.named_parameters())
        self._params = [p for _, p in named]
        self.n_params = sum(p.numel() for p in self._params)
        dtypes = {p.dtype for p in self._params}
        self.dtype = str(next(iter(dtypes))).removeprefix("torch.") if len(dtypes) == 1 else "mixed"
        if self.stored is not None:
            self.dtype = self.stored
        self.bf16_view = self.stored is None and any(
            p.dtype != torch.bfloat16 for p in self._params
        )
        init = [
            p if self.init is None else self.init[n].to(device=p.device, dtype=p.dtype)
            for n, p in named
        ]
        self._init = [self._words(p).clone() for p in init]
        self._prev = [self._words(p).clone() for p in self._params]
        if self.bf16_view:
            self._init16 = [bf16_words(p) for p in init]
            self._prev16 = [bf16_words(p) for p in self._params]

    def _snapshot_prev(self) -> None:
        for dst, p in zip(self._prev, self._params, strict=True):
            dst.copy_(self._words(p))
        if self.bf16_view:
            for dst, p in zip(self._prev16, self._params, strict=True):
                dst.copy_(bf16_words(p))

    # ---- measurement -----------------------------------------------------------------------
    def measure(self, step: int) -> dict[str, Any]:
        """Count changed weights now (vs θ0 and vs the last snapshot) and append a record."""
        t0 = time.perf_counter()
        counts = [
            _count((self._words(p) for p in self._params), self._init),
            _count((self._words(p) for p in self._params), self._prev),
        ]
        if self.bf16_view:
            counts += [
                _count((bf16_words(p) for p in self._params), self._init16),
                _count((bf16_words(p) for p in self._params), self._prev16),
            ]
        values = torch.stack(counts).tolist()  # the one device -> host sync
        n = self.n_params
        rec: dict[str, Any] = {"step": step, "n_params": n, "dtype": self.dtype}
        keys = ["vs_init", "step"] + (["vs_init_bf16", "step_bf16"] if self.bf16_view else [])
        for key, c in zip(keys, values, strict=True):
            rec[f"changed_{key}"] = int(c)
            rec[f"sparsity_{key}"] = sparsity_from_changed(int(c), n)
        if self.codecs:
            rec.update(self._patch_bytes())
        self.records.append(rec)
        self.seconds += time.perf_counter() - t0
        if self.log_path is not None:
            with open(self.log_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(rec) + "\n")
        return rec

    def _patch_bytes(self) -> dict[str, int]:
        """Payload per codec of the step's sync (bf16 view of fp32 weights; else the stored words)."""
        import zstandard as zstd

        from rlsparse_lib.patches.budget import CODECS, codec_bytes

        cctx = zstd.ZstdCompressor(level=3)
        prev = self._prev16 if self.bf16_view else self._prev
        total = dict.fromkeys(CODECS, 0)
        for p, ref in zip(self._params, prev, strict=True):
            cur = (bf16_words(p) if self.bf16_view else self._words(p)).reshape(-1).cpu().numpy()
            old = ref.reshape(-1).cpu().numpy()
            unsigned = f"uint{8 * cur.itemsize}"
            _, sizes = codec_bytes(old.view(unsigned), cur.view(unsigned), cctx)
            for c, b in sizes.items():
                total[c] += b
        return {f"patch_bytes_{c}": b for c, b in total.items()}

    # ---- Trainer hooks ---------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.attach(model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.after_step(state.global_step)

    def after_step(self, step: int) -> None:
        """Record at multiples of ``every``; keep θ_{s−1} for the next recorded step ``s``."""
        if step % self.every == 0:
            self.measure(step)
        if (step + 1) % self.every == 0:
            self._snapshot_prev()


def _count(current, refs: list[torch.Tensor]) -> torch.Tensor:
    """Σ over tensors of #(current != ref), as a 0-d int64 tensor on the device."""
    total = None
    for cur, ref in zip(current, refs, strict=True):
        c = torch.count_nonzero(cur != ref)
        total = c if total is None else total + c
    assert total is not None
    return total
