"""``rlsparse mask and|or|xor|andnot|not`` and ``mask random`` on work units of whole tensors: a
local pool (1 and 2 processes), a resumed run and any unit size write the in-process mask file
byte for byte; the in-process file equals numpy's set algebra; a folder made for another run is
refused. (Ray: ``tests/test_ray.py``.)"""

from __future__ import annotations

import numpy as np
import pytest

from rlsparse_lib.cli import main
from rlsparse_lib.diff.resume import ResumeMismatchError
from rlsparse_lib.errors import ConfigError
from rlsparse_lib.masks import ops
from rlsparse_lib.masks.ops import combine_masks, random_mask_like

from .ckpt_factory import save_hf
from .test_analytics_masks import random_state, read_all, write_mask

UNIT_BYTES = 300  # one or two tensors of three masks per unit
NUMPY = {
    "and": lambda ms: np.logical_and.reduce(ms),
    "or": lambda ms: np.logical_or.reduce(ms),
    "xor": lambda ms: np.logical_xor.reduce(ms),
    "andnot": lambda ms: ms[0] & ~np.logical_or.reduce(ms[1:]),
    "not": lambda ms: ~ms[0],
}


@pytest.fixture(scope="module")
def masks(tmp_path_factory):
    """Three masks of ten tensors (odd sizes: padding bits in the last byte)."""
    root = tmp_path_factory.mktemp("algebra")
    rng = np.random.default_rng(5)
    shapes = {f"model.layers.{i}.mlp.up_proj.weight": (7 + i, 13 + 3 * i) for i in range(10)}
    arrays = [{k: rng.random(s) < p for k, s in shapes.items()} for p in (0.3, 0.5, 0.1)]
    paths = [write_mask(root / f"m{j}.mask", a) for j, a in enumerate(arrays)]
    return paths, arrays


def _operands(op, masks):
    paths, arrays = masks
    return (paths[:1], arrays[:1]) if op == "not" else (paths, arrays)


@pytest.mark.parametrize("op", ["and", "or", "xor", "andnot", "not"])
def test_algebra_on_units_matches_the_plain_run_and_numpy(tmp_path, masks, op) -> None:
    paths, arrays = _operands(op, masks)
    plain = combine_masks(op, paths, tmp_path / "plain.mask", progress=False).read_bytes()
    got = read_all(tmp_path / "plain.mask")
    for name in arrays[0]:
        assert np.array_equal(got[name], NUMPY[op]([a[name] for a in arrays])), name
    kw = {"max_unit_bytes": UNIT_BYTES * len(paths) // 3, "progress": False}
    for run, extra in {
        "units": {},
        "pool2": {"cluster": "local:2"},
        "resumed": {"resume": tmp_path / "r"},
    }.items():
        out = combine_masks(op, paths, tmp_path / f"{run}.mask", **kw, **extra)
        assert out.read_bytes() == plain, run
    assert len(list((tmp_path / "r").glob("unit-*.mask.safetensors"))) > 3
    assert not list(tmp_path.glob(".*units"))  # temporary slice folders removed


def test_algebra_pool_of_one_and_cli(tmp_path, masks) -> None:
    paths, _ = masks
    plain = combine_masks("andnot", paths, tmp_path / "plain.mask", progress=False).read_bytes()
    out = combine_masks(
        "andnot",
        paths,
        tmp_path / "one.mask",
        max_unit_bytes=UNIT_BYTES,
        cluster="local:1",
        progress=False,
    )
    assert out.read_bytes() == plain
    argv = ["mask", "andnot", *map(str, paths), "-o", str(tmp_path / "cli.mask"), "-q"]
    argv += [
        "--unit-bytes",
        str(UNIT_BYTES),
        "--cluster",
        "local:2",
        "--resume",
        str(tmp_path / "r"),
    ]
    assert main(argv) == 0
    assert (tmp_path / "cli.mask").read_bytes() == plain
    assert main(["mask", "info", str(paths[0]), "--cluster", "local:2"]) == 2


def test_algebra_resumes_an_interrupted_run(tmp_path, masks, monkeypatch) -> None:
    """Interrupted after 3 units: no output file; the rerun computes only the other units."""
    paths, _ = masks
    plain = combine_masks("xor", paths, tmp_path / "plain.mask", progress=False).read_bytes()
    original = ops._combine_tensors
    calls: list[tuple[str, ...]] = []

    def counting(op, files, names, *args, fail_after=None):
        if fail_after is not None and len(calls) >= fail_after:
            raise KeyboardInterrupt("interrupted")
        calls.append(tuple(names))
        return original(op, files, names, *args)

    monkeypatch.setattr(ops, "_combine_tensors", lambda *a: counting(*a, fail_after=3))
    out, r = tmp_path / "out.mask", tmp_path / "r"
    kw = {"max_unit_bytes": UNIT_BYTES, "progress": False, "resume": r}
    with pytest.raises(KeyboardInterrupt):
        combine_masks("xor", paths, out, **kw)
    assert not out.exists() and not list(tmp_path.glob(".out.mask*"))
    assert len(list(r.glob("unit-*.json"))) == 3
    n_units = len(ops.plan_mask_units(*_sizes(paths), UNIT_BYTES))
    calls.clear()
    monkeypatch.setattr(ops, "_combine_tensors", counting)
    assert combine_masks("xor", paths, out, **kw).read_bytes() == plain
    assert len(calls) == n_units - 3
    # a unit whose slice file is gone is run again
    (r / "unit-000001.mask.safetensors").unlink()
    calls.clear()
    assert combine_masks("xor", paths, out, **kw).read_bytes() == plain
    assert len(calls) == 1


def _sizes(paths):
    from rlsparse_lib.io.maskfile import MaskFile, packed_size

    with MaskFile.open(paths[0]) as m:
        names = list(m.names)
        return names, [packed_size(ops.numel_of(m, n)) * len(paths) for n in names]


def test_algebra_refuses_a_resume_folder_of_another_run(tmp_path, masks) -> None:
    paths, arrays = masks
    r = tmp_path / "r"
    kw = {"max_unit_bytes": UNIT_BYTES, "progress": False, "resume": r}
    combine_masks("and", paths, tmp_path / "a.mask", **kw)
    with pytest.raises(ResumeMismatchError, match="settings"):
        combine_masks("or", paths, tmp_path / "b.mask", **kw)
    other = write_mask(tmp_path / "m2.mask", {k: ~v for k, v in arrays[2].items()})
    with pytest.raises(ResumeMismatchError, match="content"):
        combine_masks("and", [paths[0], paths[1], other], tmp_path / "b.mask", **kw)
    with pytest.raises(ResumeMismatchError, match="unit plan"):
        combine_masks("and", paths, tmp_path / "b.mask", **dict(kw, max_unit_bytes=10_000))
    assert not (tmp_path / "b.mask").exists()


@pytest.fixture(scope="module")
def like(tmp_path_factory):
    """A mask concentrated on small |θ0| and its θ0 checkpoint."""
    root = tmp_path_factory.mktemp("random")
    base = random_state(seed=1)
    bpath = save_hf(root / "base", base, shards=2)
    masks = {}
    for n, t in base.items():
        v = t.float().abs().numpy()
        masks[n] = v < np.quantile(v, 0.3) if t.numel() > 64 else np.zeros(t.shape, bool)
    return write_mask(root / "src.mask", masks), bpath


@pytest.mark.parametrize("stratify", ["global", "tensor", "binade"])
def test_random_on_units_is_one_stream(tmp_path, like, stratify) -> None:
    """Any unit size, a pool and a resumed run draw the one-pass stream of the seed (a unit
    starts the generator at its first tensor's offset)."""
    src, bpath = like
    kw = {"seed": 3, "stratify": stratify, "progress": False}
    kw["base"] = bpath if stratify == "binade" else None
    plain = random_mask_like(src, tmp_path / "plain.mask", **kw).read_bytes()
    for run, extra in {
        "small": {"max_unit_bytes": 500},
        "tiny": {"max_unit_bytes": 1},
        "pool1": {"max_unit_bytes": 500, "cluster": "local:1"},
        "pool2": {"max_unit_bytes": 500, "cluster": "local:2"},
        "resumed": {"max_unit_bytes": 500, "resume": tmp_path / "r"},
    }.items():
        out = random_mask_like(src, tmp_path / f"{run}.mask", **kw, **extra)
        assert out.read_bytes() == plain, run
    n_units = len(list((tmp_path / "r").glob("unit-*.json")))
    assert n_units == 1 if stratify == "global" else n_units > 3
    again = random_mask_like(
        src, tmp_path / "again.mask", **kw, max_unit_bytes=500, resume=tmp_path / "r"
    )
    assert again.read_bytes() == plain
    with pytest.raises(ResumeMismatchError, match="settings"):
        random_mask_like(
            src, tmp_path / "x.mask", **dict(kw, seed=4), max_unit_bytes=500, resume=tmp_path / "r"
        )


def test_random_stream_equals_the_seeds_generator(like) -> None:
    """The generator a unit starts from is ``default_rng(seed)`` after ``offset`` draws."""
    whole = np.random.default_rng(11).random(1000)
    assert np.array_equal(ops._stream_at(11, 600).random(400), whole[600:])


def test_random_cli_on_a_pool(tmp_path, like) -> None:
    src, _ = like
    plain = random_mask_like(
        src, tmp_path / "plain.mask", seed=0, stratify="tensor", progress=False
    )
    argv = ["mask", "random", str(src), "-o", str(tmp_path / "cli.mask"), "--seed", "0", "-q"]
    argv += ["--stratify", "tensor", "--unit-bytes", "500", "--cluster", "local:2"]
    assert main(argv) == 0
    assert (tmp_path / "cli.mask").read_bytes() == plain.read_bytes()
    with pytest.raises(ConfigError, match="--cluster"):
        random_mask_like(src, tmp_path / "bad.mask", seed=0, progress=False, cluster="locale")
