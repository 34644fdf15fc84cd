"""Checkpoint series θ0, θk, θ2k, … as safetensors folders a run (and ``rlsparse diff``) can read.

Layout inside a run folder::

    step_000000/            bf16 weights (model.safetensors), config.json, tokenizer; fp16
                            weights in precision fp16 runs
    step_000000/fp32/       fp32 weights, when the run keeps fp32 weights (mixed / fp32)
    step_000005/ ...

The manifest entry of a checkpoint names its main folder under its format (``bf16`` or ``fp16``)
and the fp32 subfolder under ``fp32``.

Names are the model's parameter names (tied weights stored once, as ``save_pretrained`` does), so
``rlsparse diff run/step_000000 run/step_000020`` compares exactly the weights the run trained, and
its masks (``--mask-out``) feed subnetwork training unchanged. bf16 files of an fp32 model are its
round-to-nearest-even cast (``Tensor.to``), the same cast the diff engine applies.
"""

from __future__ import annotations

from pathlib import Path

from transformers import TrainerCallback

from rlsparse_lib.training.models import write_folder_atomic

STEP_FORMAT = "step_{:06d}"
#: main checkpoint formats (manifest keys) and their torch dtypes
MAIN_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def step_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / STEP_FORMAT.format(step)


def state_to_save(model, dtype) -> dict:
    """Parameters (tied ones once, under their first name) and persistent buffers, in ``dtype``
    (float tensors only; other buffers as stored), detached, contiguous, on the CPU."""
    import torch

    out = {}
    for name, p in model.named_parameters():
        out[name] = p.detach().to(device="cpu", dtype=dtype).contiguous()
    aliases = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    for name, b in model.state_dict().items():
        if name in aliases or name in out:
            continue
        b = b.detach().to("cpu")
        out[name] = (b.to(dtype) if torch.is_floating_point(b) else b).contiguous()
    return out


def save_checkpoint(model, tokenizer, folder: str | Path, dtype: str) -> Path:
    """Write the model's weights in ``dtype`` (``bfloat16`` / ``float16`` / ``float32``) with config and
    tokenizer to ``folder`` (temporary folder, then rename; an existing folder is replaced)."""
    import torch
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        save_file(
            state_to_save(model, getattr(torch, dtype)),
            str(tmp / "model.safetensors"),
            metadata={"format": "pt", "rlsparse_dtype": dtype},
        )
        config = model.config.to_dict()
        config["dtype"] = dtype
        type(model.config).from_dict(config).save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return write_folder_atomic(folder, write, replace=True)


def step_entry(step: int, fp32: bool, main: str = "bf16") -> dict:
    """The manifest entry of θ_step: its main folder (key ``main``: ``bf16`` / ``fp16``) and fp32
    subfolder inside the run."""
    name = STEP_FORMAT.format(step)
    return {"step": step, main: name, **({"fp32": f"{name}/fp32"} if fp32 else {})}


def save_step(
    model, tokenizer, run_dir: str | Path, step: int, fp32: bool, main: str = "bf16"
) -> dict:
    """Save θ_step as ``main`` (``bf16`` / ``fp16``; and fp32 when ``fp32``); return the manifest
    entry."""
    folder = step_dir(run_dir, step)
    save_checkpoint(model, tokenizer, folder, MAIN_DTYPES[main])
    if fp32:
        save_checkpoint(model, tokenizer, folder / "fp32", "float32")
    return step_entry(step, fp32, main)


def matches_checkpoint(model, folder: str | Path) -> str | None:
    """The first parameter whose saved value differs bitwise from ``model``'s (None: all equal).

    The comparison is in the checkpoint's dtype (the model is cast the way it was saved).
    """
    import torch
    from safetensors import safe_open

    with safe_open(str(Path(folder) / "model.safetensors"), framework="pt") as f:
        for name, p in model.named_parameters():
            saved = f.get_tensor(name)
            mine = p.detach().to(device="cpu", dtype=saved.dtype)
            if not torch.equal(
                mine.view(_int_dtype(saved.dtype)), saved.view(_int_dtype(saved.dtype))
            ):
                return name
    return None


def _int_dtype(dtype):
    import torch

    return {2: torch.int16, 4: torch.int32, 8: torch.int64}[dtype.itemsize]


class CheckpointSaver(TrainerCallback):
    """Saves θ_k every ``every`` steps and at the last step; checks θ_start at the start of training.

    θ0 is written before the trainer is built (``save_step(..., 0, ...)``); ``on_train_begin``
    verifies that the weights training starts from are bit-identical to it, so ``rlsparse diff
    step_000000 step_k`` measures exactly the training's change. A resumed run (``start`` > 0,
    ``saved``: the entries of the checkpoints already written) checks θ_start the same way.
    ``main``: the main files' format (``bf16``, or ``fp16`` for precision fp16).
    """

    def __init__(
        self,
        run_dir: str | Path,
        tokenizer,
        every: int,
        fp32: bool,
        start: int = 0,
        saved: list[dict] | None = None,
        main: str = "bf16",
    ) -> None:
        self.run_dir = Path(run_dir)
        self.tokenizer = tokenizer
        self.every = every
        self.fp32 = fp32
        self.main = main
        self.start = start
        self.saved: list[dict] = list(saved or [])

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        first = step_dir(self.run_dir, self.start)
        for folder in [first, *([first / "fp32"] if self.fp32 else [])]:
            bad = matches_checkpoint(model, folder)
            if bad is not None:
                raise RuntimeError(
                    f"the trainer changed '{bad}' before step {self.start}: {folder} is not "
                    f"θ{self.start} of this run"
                )

    def on_step_end(self, args, state, control, model=None, **kwargs):
        s = state.global_step
        if (self.every and s % self.every == 0) or s == state.max_steps:
            self.saved.append(
                save_step(model, self.tokenizer, self.run_dir, s, self.fp32, self.main)
            )
