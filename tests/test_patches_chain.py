"""Delta chains: every step of a series rebuilds bit for bit; broken links are named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rlsparse_lib.cli import main
from rlsparse_lib.errors import ConfigError
from rlsparse_lib.patches import PatchError
from rlsparse_lib.patches.chain import build_chain, rebuild, verify_chain
from rlsparse_lib.patches.series import checkpoint_series
from tests.test_patches import _assert_same, _bf16, _nudge, _write


@pytest.fixture()
def run(tmp_path: Path) -> Path:
    """A run folder: step_000000 ... step_000025 (every 5), each a few-ULP step of the last."""
    rng = np.random.default_rng(5)
    w, e = _bf16(rng, 40 * 50), _bf16(rng, 3000)
    root = tmp_path / "run"
    for step in range(0, 30, 5):
        _write(
            root / f"step_{step:06d}",
            {"l.w": ("bfloat16", (40, 50), w), "e": ("bfloat16", (3000,), e)},
            {"model_type": "llama", "step": step},
        )
        w, e = _nudge(rng, w, 0.02), _nudge(rng, e, 0.05)
    (root / "train_log.jsonl").write_text("{}\n")
    return root


def test_series_discovery(run: Path, tmp_path: Path) -> None:
    series = checkpoint_series([run])
    assert [s for s, _ in series] == [0, 5, 10, 15, 20, 25]
    assert checkpoint_series([str(p) for _, p in series[:2]], [3, 9])[1][0] == 9
    with pytest.raises(ConfigError, match="increase"):
        checkpoint_series([str(p) for _, p in series[:2]], [9, 3])
    with pytest.raises(ConfigError, match="fewer than two"):
        checkpoint_series([tmp_path])


def test_every_step_rebuilds_bit_exact(run: Path, tmp_path: Path) -> None:
    chain = tmp_path / "chain"
    m = build_chain([run], chain, every=4, progress=False)
    assert [link["kind"] for link in m["links"]] == ["anchor"] + ["patch"] * 3 + ["anchor", "patch"]
    assert m["bytes"] < m["checkpoint_bytes"] / 2
    assert verify_chain(chain)["links"] == 6
    for step in range(0, 30, 5):
        out = tmp_path / f"out{step}"
        r = rebuild(chain, step, out, progress=False)
        assert r["links_applied"] == (step // 5) % 4 + 1
        _assert_same(out, run / f"step_{step:06d}")
        assert json.loads((out / "config.json").read_text())["step"] == step


def _corrupt(path: Path, at: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0x01
    path.write_bytes(bytes(raw))


def test_corrupt_link_named(run: Path, tmp_path: Path) -> None:
    chain = tmp_path / "chain"
    build_chain([run], chain, every=4, progress=False)
    _corrupt(chain / "step_000010.rlpatch", -10)
    for call in (lambda: verify_chain(chain), lambda: rebuild(chain, 15, tmp_path / "o", False)):
        with pytest.raises(PatchError, match=r"link step 10 \(step_000010\.rlpatch\): corrupt"):
            call()
    assert not (tmp_path / "o").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o.")]
    # steps before the damaged link still rebuild; later anchors too
    rebuild(chain, 5, tmp_path / "o5", progress=False)
    rebuild(chain, 25, tmp_path / "o25", progress=False)
    _assert_same(tmp_path / "o25", run / "step_000025")
    assert main(["patch", "rebuild", str(chain), "10", "-o", str(tmp_path / "o10")]) == 2
    assert main(["patch", "verify", str(chain)]) == 2


def test_swapped_link_detected(run: Path, tmp_path: Path) -> None:
    """A link replaced by a valid patch of another step: its base fingerprints do not match."""
    chain = tmp_path / "chain"
    build_chain([run], chain, every=10, progress=False)
    m = json.loads((chain / "chain.json").read_text())
    (chain / "step_000015.rlpatch").write_bytes((chain / "step_000020.rlpatch").read_bytes())
    m["links"][3]["sha256"] = m["links"][4]["sha256"]
    (chain / "chain.json").write_text(json.dumps(m))
    with pytest.raises(PatchError, match=r"link step 15 .*previous link"):
        verify_chain(chain)
    with pytest.raises(PatchError, match=r"link step 15 .*wrong base"):
        rebuild(chain, 15, tmp_path / "o", progress=False)


def test_cli_chain(run: Path, tmp_path: Path, capsys) -> None:
    chain = tmp_path / "chain"
    assert main(["patch", "chain", str(run), "--every", "3", "-o", str(chain), "-q"]) == 0
    assert "anchor" in capsys.readouterr().out
    assert main(["patch", "verify", str(chain)]) == 0
    assert main(["patch", "rebuild", str(chain), "20", "-o", str(tmp_path / "o")]) == 0
    _assert_same(tmp_path / "o", run / "step_000020")
    assert main(["patch", "rebuild", str(chain), "7", "-o", str(tmp_path / "x")]) == 2
