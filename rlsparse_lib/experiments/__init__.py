"""Glue between the notebooks and the library: one :class:`Experiment` per notebook holds its
parameters, its cached training runs and diffs, its result tables and its figures.

Everything a notebook computes goes through here, so notebooks hold no analysis code of their
own, and ``rlsparse figures`` can redraw every figure from the stored tables.
"""

from rlsparse_lib.experiments.context import Experiment
from rlsparse_lib.experiments.runs import ensure_run, run_config

__all__ = ["Experiment", "ensure_run", "run_config"]
