"""The optional Ray extra: declared, pinned in requirements/lock-ray.txt without clashing with the
main lock, and installed by ``make test``."""

from __future__ import annotations

from pathlib import Path

import tomllib

from .test_lock import LOCK, _pins

ROOT = Path(__file__).resolve().parents[1]
LOCK_RAY = ROOT / "requirements" / "lock-ray.txt"


def test_ray_extra_is_pinned_apart_from_the_main_lock() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert any(r.startswith("ray") for r in meta["optional-dependencies"]["ray"])
    ray_pins, main_pins = _pins(LOCK_RAY), _pins(LOCK)
    assert "ray" in ray_pins
    assert not ray_pins.keys() & main_pins.keys()  # only what the main lock lacks
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "LOCK_RAY := requirements/lock-ray.txt" in makefile
    assert "$(PIP) --no-deps -r $(LOCK_RAY)" in makefile
    assert "test: setup $(VENV)/.triton-stamp $(VENV)/.ray-stamp" in makefile
