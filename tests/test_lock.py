"""The committed lock pins every dependency exactly, and the other install paths agree with it."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        assert m, f"{path.name}: not an exact pin: {line!r}"
        pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def test_lock_pins_every_declared_dependency() -> None:
    import tomllib

    pins = _pins(LOCK)
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = list(meta["dependencies"])
    for extra in ("train", "notebooks", "dev"):
        declared += meta["optional-dependencies"][extra]
    for req in declared:
        name = re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower().replace("_", "-")
        assert name in pins, f"{name} is declared in pyproject.toml but not pinned in the lock"
    # the lock is resolved against the CPU torch, but pins no build tag and no CUDA packages
    assert pins["torch"] == "2.13.0"
    assert not [p for p in pins if p.startswith("nvidia-") or p == "triton"]


def test_install_paths_use_the_lock() -> None:
    env = yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))
    pip_lines = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-r requirements/lock.txt" in pip_lines
    assert any(line.startswith("torch==2.13.0") for line in pip_lines)
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "-r $(LOCK)" in makefile and "LOCK   := requirements/lock.txt" in makefile
    assert "TORCH_VERSION := 2.13.0" in makefile
    assert re.fullmatch(r"triton==\S+\n", (ROOT / "requirements/lock-triton.txt").read_text())
