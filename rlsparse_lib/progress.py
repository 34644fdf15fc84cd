"""The one place progress bars are made (tqdm.auto; TQDM_* environment variables apply)."""

from __future__ import annotations

from typing import Any


def progress_bar(**kwargs: Any):
    """A tqdm bar (``tqdm.auto``: widgets in Jupyter, text on a terminal).

    Defaults can be changed from the environment, e.g. ``TQDM_DISABLE=1`` in CI.
    """
    from tqdm.auto import tqdm

    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(**kwargs)
