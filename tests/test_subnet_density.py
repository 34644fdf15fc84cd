"""Random subnetworks of a given density (``mask: {random: true, density: d}`` without a path):
exact counts (global and per tensor), determinism, config checks, and training that holds every
masked-out weight bit-identical (checked with the diff engine on the saved checkpoints)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from rlsparse_lib.errors import ConfigError
from rlsparse_lib.io.maskfile import MaskFile
from rlsparse_lib.training.config import config_from_dict, load_config
from rlsparse_lib.training.models import load_model
from rlsparse_lib.training.runner import train
from rlsparse_lib.training.subnetwork import parameter_shapes, random_density_mask
from rlsparse_lib.training.tasks import Task

from .test_train_factory import digit_score, make_tiny, tiny_config
from .test_train_subnetwork import assert_changes_inside

SHAPES = {"a": (300, 70), "b": (1001,), "c": (7, 3, 5), "d": (3,)}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny(tmp_path_factory)


def bits(path: Path) -> dict[str, np.ndarray]:
    with MaskFile.open(path) as mf:
        return {n: mf.mask(n).copy() for n in mf.names}


def rounded(x: float) -> int:
    """Round half up, from the decimal digits (independent of the code's float formula)."""
    from decimal import ROUND_HALF_UP, Decimal

    return int(Decimal(repr(x)).quantize(Decimal(1), rounding=ROUND_HALF_UP))


@pytest.mark.parametrize("density", [0.01, 0.25, 0.5, 1.0, 1 / 3])
def test_global_mask_selects_exactly_round_density_times_all_weights(
    tmp_path: Path, density: float
) -> None:
    out = random_density_mask(SHAPES, tmp_path / "m.mask", density=density, seed=3, progress=False)
    got = bits(out)
    total = sum(math.prod(s) for s in SHAPES.values())
    assert {n: m.shape for n, m in got.items()} == SHAPES
    n_set = sum(int(m.sum()) for m in got.values())
    assert n_set == rounded(density * total)
    with MaskFile.open(out) as mf:
        assert mf.meta["n_set_total"] == n_set and mf.density == n_set / total
        assert mf.meta["rule"] == {
            "kind": "random",
            "stratify": "global",
            "seed": 3,
            "density": density,
            "sampler": mf.meta["rule"]["sampler"],
        }


@pytest.mark.parametrize("density", [0.01, 0.3, 1.0])
def test_tensor_mask_selects_round_density_times_numel_in_every_tensor(
    tmp_path: Path, density: float
) -> None:
    out = random_density_mask(
        SHAPES, tmp_path / "t.mask", density=density, seed=0, stratify="tensor", progress=False
    )
    for name, m in bits(out).items():
        assert int(m.sum()) == rounded(density * math.prod(SHAPES[name])), name


def test_masks_are_seeded_and_uniform(tmp_path: Path) -> None:
    def draw(seed: int, stratify: str = "global") -> dict[str, np.ndarray]:
        path = tmp_path / f"{seed}-{stratify}.mask"
        random_density_mask(SHAPES, path, density=0.2, seed=seed, stratify=stratify, progress=False)
        return bits(path)

    first, again, other = draw(7), draw(7), draw(8)
    assert all(np.array_equal(first[n], again[n]) for n in SHAPES)  # deterministic
    assert any(not np.array_equal(first[n], other[n]) for n in SHAPES)
    # global: uniform over all weights, so each tensor gets ~20 % (not exactly: no strata)
    for name in ("a", "b"):
        share = first[name].mean()
        assert abs(share - 0.2) < 0.05, (name, share)
    # positions spread over the whole tensor (first vs second half of 'a' within 3 sigma)
    a = first["a"].reshape(-1)
    half = a.size // 2
    sigma = math.sqrt(half * 0.2 * 0.8)
    assert abs(int(a[:half].sum()) - int(a[half:].sum())) < 3 * sigma * math.sqrt(2)


def test_bad_densities(tmp_path: Path) -> None:
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match=r"mask\.density must be in \(0, 1\]"):
            random_density_mask(SHAPES, tmp_path / "x.mask", density=bad, seed=0)
    with pytest.raises(ConfigError, match="selects no weight of 3"):
        random_density_mask({"d": (3,)}, tmp_path / "y.mask", density=0.1, seed=0, progress=False)
    assert not (tmp_path / "y.mask").exists()


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        ({"random": True, "density": 0.0}, "'mask.density' must be in (0, 1]"),
        ({"random": True, "density": 1.01}, "'mask.density' must be in (0, 1]"),
        ({"density": 0.1}, "'mask.random' must be true with mask.density"),
        (
            {"path": "m.mask", "random": True, "density": 0.1},
            "'mask.density' must be unset when mask.path is given",
        ),
        (
            {"random": True, "density": 0.1, "stratify": "binade"},
            "'mask.stratify' must be global or tensor with mask.density",
        ),
        (
            {"random": True},
            "'mask.path' must be a mask file (or mask.random: true with mask.density)",
        ),
        ({"random": True, "density": "dense"}, "'mask.density' must be a number"),
    ],
)
def test_density_config_errors_name_file_and_key(tmp_path: Path, mask: dict, message: str) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"kind": "grpo", "mask": mask}))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize(
    ("kind", "precision", "stratify", "density"),
    [("sft", "mixed", "global", 0.05), ("grpo", "fp16", "tensor", 0.2)],
)
def test_training_on_a_density_mask_holds_masked_out_weights(
    tmp_path: Path,
    tiny_dir: Path,
    monkeypatch,
    kind: str,
    precision: str,
    stratify: str,
    density: float,
) -> None:
    monkeypatch.setattr(Task, "score", digit_score)
    mask = {"random": True, "density": density, "random_seed": 4, "stratify": stratify}
    cfg = tiny_config(
        tiny_dir,
        kind,
        precision=precision,
        train={"steps": 2, "lr": 3e-3, "weight_decay": 0.1},
        mask=mask,
    )
    result = train(config_from_dict(cfg), out_root=tmp_path, progress=False)
    rnd = result.path / "random_mask.safetensors"
    model, _ = load_model(str(tiny_dir))
    shapes = parameter_shapes(model)
    total = sum(math.prod(s) for s in shapes.values())
    got = bits(rnd)
    if stratify == "global":
        assert sum(int(m.sum()) for m in got.values()) == rounded(density * total)
    else:
        assert all(int(got[n].sum()) == rounded(density * math.prod(s)) for n, s in shapes.items())
    info = result.manifest["mask"]
    assert info["source"] is None and info["random"] and info["requested_density"] == density
    assert info["density"] == sum(int(m.sum()) for m in got.values()) / total
    assert info["restored"] > 0  # weight decay moved masked-out weights; they were written back
    assert result.manifest["seeds"]["mask_random"] == 4
    views = ("fp16",) if precision == "fp16" else ("bf16", "fp32")
    for view in views:
        n = assert_changes_inside(
            rnd, result.checkpoint(0, view), result.checkpoint(2, view), tmp_path
        )
        assert n > 0  # the subnetwork trained
    # the same config draws the same mask
    again = train(config_from_dict({**cfg, "name": "again"}), out_root=tmp_path, progress=False)
    assert all(
        np.array_equal(m, bits(again.path / "random_mask.safetensors")[n]) for n, m in got.items()
    )
