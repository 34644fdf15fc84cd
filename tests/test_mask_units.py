"""``rlsparse mask BASE TUNED`` on work units: a local pool and a resumed build write the
in-process mask file byte for byte (the diff's unit mask slices, assembled in unit order)."""

from __future__ import annotations

from rlsparse_lib.cli import main
from rlsparse_lib.masks.ops import build_mask
from rlsparse_lib.rules import MaskRule

from .ckpt_factory import save_hf
from .test_diff_exact import planted


def test_build_on_units_gives_the_same_bytes(tmp_path) -> None:
    base, tuned, _ = planted()
    b, t = save_hf(tmp_path / "b", base, shards=3), save_hf(tmp_path / "t", tuned, shards=2)
    rule = MaskRule("abs", 1e-5)
    build_mask(b, t, tmp_path / "plain.mask", rule=rule, progress=False)
    ref = (tmp_path / "plain.mask").read_bytes()
    rep = build_mask(
        b,
        t,
        tmp_path / "pool.mask",
        rule=rule,
        progress=False,
        max_unit_bytes=3_000,
        cluster="local:2",
        resume=tmp_path / "r",
    )
    assert (tmp_path / "pool.mask").read_bytes() == ref
    assert rep.provenance["execution"]["n_units"] > 3
    argv = ["mask", str(b), str(t), "-o", str(tmp_path / "cli.mask"), "--tol", "1e-5", "-q"]
    argv += ["--unit-bytes", "3000", "--resume", str(tmp_path / "r")]  # all units stored
    assert main(argv) == 0
    assert (tmp_path / "cli.mask").read_bytes() == ref
