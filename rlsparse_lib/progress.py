"""The one place progress bars are made (tqdm; TQDM_* environment variables apply).

In a Jupyter kernel the bar is tqdm's widget when ``ipywidgets`` is installed, else tqdm's plain
text bar: never tqdm's "IProgress not found" error box.
"""

from __future__ import annotations

import os
import sys
from typing import Any


class NullBar:
    """Stands in for a bar nobody would see (tqdm is not even imported: it costs ~50 ms)."""

    def update(self, n: float = 1) -> None:
        """Ignore progress."""

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        """Ignore the postfix."""

    def close(self) -> None:
        """Nothing to close."""


def progress_bar(**kwargs: Any):
    """A tqdm bar (a widget in Jupyter when ipywidgets is installed, else text), or a :class:`NullBar`
    where tqdm would stay silent (``disable=True``, or ``disable=None`` off a terminal).

    Defaults can be changed from the environment, e.g. ``TQDM_DISABLE=1`` in CI.
    """
    if _silent(kwargs.get("disable", False)):
        return NullBar()
    kwargs.setdefault("dynamic_ncols", True)
    return _bar_class()(**kwargs)


def _bar_class() -> type:
    """tqdm's notebook widget in a Jupyter kernel with ``ipywidgets``, else the text bar."""
    if _in_notebook():
        try:
            import ipywidgets  # noqa: F401  (tqdm.notebook needs it for its widget)
            from tqdm.notebook import tqdm as notebook_tqdm
        except ImportError:
            pass
        else:
            return notebook_tqdm
    from tqdm.std import tqdm

    return tqdm


def _in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (what ``tqdm.auto`` checks)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
        return shell is not None and "IPKernelApp" in shell.config
    except Exception:  # an IPython too old or too odd to ask: no widgets
        return False


def byte_progress(total: int, desc: str, enabled: bool = True):
    """A bar over ``total`` bytes (KiB/MiB/GiB, rate and ETA), the one every streaming command
    uses; ``enabled=False`` silences it (it is also silent off a terminal, as tqdm decides)."""
    return progress_bar(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=desc,
        disable=None if enabled else True,
    )


def _silent(disable: bool | None) -> bool:
    if disable is True:
        return True
    if disable is None and "TQDM_DISABLE" not in os.environ and "ipykernel" not in sys.modules:
        return not sys.stderr.isatty()  # what tqdm itself decides for disable=None
    return False
