"""Subnetwork training: masked-out weights stay bit-identical (checked with the library's diff and
mask files), AdamW weight decay is held off, the random control matches the density."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rlsparse_lib.diff.config import DiffConfig
from rlsparse_lib.diff.engine import diff_checkpoints
from rlsparse_lib.errors import ConfigError
from rlsparse_lib.io.maskfile import MaskFile, MaskWriter, pack_mask
from rlsparse_lib.training.config import config_from_dict
from rlsparse_lib.training.models import load_model
from rlsparse_lib.training.runner import train
from rlsparse_lib.training.subnetwork import GradientMask, mask_tensors
from rlsparse_lib.training.tasks import Task

from .test_train_factory import digit_score, make_tiny, tiny_config


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny(tmp_path_factory)


def write_mask(
    path: Path, shapes: dict[str, tuple[int, ...]], density: float, seed: int = 0
) -> Path:
    """A random bool mask file of the given density (numpy; independent of the code under test)."""
    rng = np.random.default_rng(seed)
    with MaskWriter(path, shapes, {"kind": "test"}, {}) as w:
        for name, shape in shapes.items():
            w.write(name, pack_mask(rng.random(shape) < density))
    return path


def shapes_of(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def assert_changes_inside(mask_path: Path, base: Path, tuned: Path, tmp: Path) -> int:
    """Every changed weight (bitwise) of base -> tuned lies inside the mask; returns #changed."""
    changed = tmp / f"changed-{tuned.parent.name}-{tuned.name}.mask"
    rep = diff_checkpoints(
        base, tuned, DiffConfig(tolerances=(0.0,)), mask_out=changed, progress=False
    )
    with MaskFile.open(mask_path) as allowed, MaskFile.open(changed) as got:
        assert set(got.names) == set(allowed.names)
        for name in got.names:
            outside = got.mask(name) & ~allowed.mask(name)
            assert not outside.any(), f"{name}: {int(outside.sum())} masked-out weights changed"
    return rep.n_changed


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_gradient_mask_holds_frozen_weights_exactly(tmp_path: Path, optimizer: str) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 4))
    mask = write_mask(tmp_path / "m.mask", shapes_of(model), density=0.3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    results = {}
    for wd in (0.0, 0.1):
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(before[n])
        cb = GradientMask(mask)
        cb.attach(model)
        opt = (
            torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=wd)
            if optimizer == "adamw"
            else torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, weight_decay=wd)
        )
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(8, 16)).pow(2).mean().backward()
            cb.mask_gradients()
            opt.step()
            cb.hold_frozen()
        masks = mask_tensors(model, mask)
        for n, p in model.named_parameters():
            frozen = ~masks[n]
            assert torch.equal(p[frozen].view(torch.int32), before[n][frozen].view(torch.int32)), n
            assert (p[~frozen] != before[n][~frozen]).any(), n  # the subnetwork did train
        results[wd] = cb.restored
    assert results[0.0] == 0  # gradient masking alone keeps Adam / SGD state of frozen weights at 0
    assert results[0.1] > 0  # decoupled weight decay moved them; they were written back


def test_mask_must_match_the_model(tmp_path: Path, tiny_dir: Path) -> None:
    model, _ = load_model(str(tiny_dir))
    shapes = shapes_of(model)
    missing = dict(list(shapes.items())[1:])
    with pytest.raises(ConfigError, match=r"no mask for parameter 'model\.embed_tokens\.weight'"):
        mask_tensors(model, write_mask(tmp_path / "a.mask", missing, 0.5))
    extra = {**shapes, "model.layers.9.mlp.up_proj.weight": (4, 4)}
    with pytest.raises(ConfigError, match="matches no parameter"):
        mask_tensors(model, write_mask(tmp_path / "b.mask", extra, 0.5))
    bad = {**shapes, "model.norm.weight": (3,)}
    with pytest.raises(ConfigError, match=r"mask 'model.norm.weight' has shape \[3\]"):
        mask_tensors(model, write_mask(tmp_path / "c.mask", bad, 0.5))
    # the tied output head may be named by its alias
    aliased = {
        ("lm_head.weight" if n == "model.embed_tokens.weight" else n): s for n, s in shapes.items()
    }
    assert set(mask_tensors(model, write_mask(tmp_path / "d.mask", aliased, 0.5))) == set(shapes)


def test_masked_sft_with_weight_decay_keeps_masked_out_weights_bit_identical(
    tmp_path: Path, tiny_dir: Path
) -> None:
    model, _ = load_model(str(tiny_dir))
    mask = write_mask(tmp_path / "sub.mask", shapes_of(model), density=0.25)
    cfg = tiny_config(
        tiny_dir, "sft", train={"steps": 3, "weight_decay": 0.1}, mask={"path": str(mask)}
    )
    result = train(config_from_dict(cfg), out_root=tmp_path, progress=False)
    info = result.manifest["mask"]
    assert info["restored"] > 0 and not info["random"]
    assert info["density"] == pytest.approx(MaskFile.open(mask).density)
    for dtype in ("fp32", "bf16"):
        n = assert_changes_inside(
            mask, result.checkpoint(0, dtype), result.checkpoint(3, dtype), tmp_path
        )
        assert n > 0


def test_random_control_has_matched_density_and_is_respected(
    tmp_path: Path, tiny_dir: Path, monkeypatch
) -> None:
    monkeypatch.setattr(Task, "score", digit_score)
    model, _ = load_model(str(tiny_dir))
    source = write_mask(tmp_path / "found.mask", shapes_of(model), density=0.4, seed=3)
    cfg = tiny_config(
        tiny_dir,
        "grpo",
        precision="bf16",
        train={"steps": 2, "lr": 3e-3},
        mask={"path": str(source), "random": True, "random_seed": 5, "stratify": "tensor"},
    )
    result = train(config_from_dict(cfg), out_root=tmp_path, progress=False)
    rnd = result.path / "random_mask.safetensors"
    with MaskFile.open(source) as a, MaskFile.open(rnd) as b:
        assert b.meta["rule"]["kind"] == "random" and b.meta["rule"]["seed"] == 5
        assert b.meta["n_set"] == a.meta["n_set"]  # tensor-stratified: equal count per tensor
        assert any((a.mask(n) != b.mask(n)).any() for n in a.names)
    assert result.manifest["mask"]["restored"] == 0  # weight decay 0: nothing to write back
    assert assert_changes_inside(rnd, result.checkpoint(0), result.checkpoint(2), tmp_path) > 0
