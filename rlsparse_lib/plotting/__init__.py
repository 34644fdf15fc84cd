"""Figures in one consistent style (seaborn), saved as PNG + PDF with provenance metadata.

Every plot function takes tables (DataFrames), never report objects, so every figure can be
redrawn from stored CSV/JSON alone. One module per thing plotted:

* :mod:`~rlsparse_lib.plotting.sparsity` — layer × module (Fig. 3), tolerance curves, SFT vs RL
  (Fig. 1), causes (Table 5), training length;
* :mod:`~rlsparse_lib.plotting.overlap` — overlap heatmaps (Table 4);
* :mod:`~rlsparse_lib.plotting.rank` — update rank bars (Table 2);
* :mod:`~rlsparse_lib.plotting.dynamics` — dynamics (Figs. 5–7), parameter fate (Fig. 2), monitor;
* :mod:`~rlsparse_lib.plotting.precision` — ULP histogram, binade curve, precision modes, lr;
* :mod:`~rlsparse_lib.plotting.training` — training curves (Fig. 4);
* :mod:`~rlsparse_lib.plotting.quantized` — sparsity as FP8 / MXFP4 copies store a pair;
* :mod:`~rlsparse_lib.plotting.style` — the shared look and :func:`save_figure`.

::

    from rlsparse_lib.plotting import plot_layer_module_sparsity, save_figure
    fig = plot_layer_module_sparsity({"DPO": dpo.layer_module_table(), "PRIME": prime.layer_module_table()})
    save_figure(fig, "figures/fig3_layer_module", provenance={"family": "tulu"})
"""

from __future__ import annotations

from rlsparse_lib.plotting.dynamics import plot_dynamics, plot_monitor, plot_parameter_fate
from rlsparse_lib.plotting.overlap import plot_overlap_heatmap
from rlsparse_lib.plotting.precision import (
    plot_binade_curve,
    plot_lr_scaling,
    plot_precision_modes,
    plot_ulp_histogram,
)
from rlsparse_lib.plotting.rank import plot_rank_bars
from rlsparse_lib.plotting.sparsity import (
    plot_causes,
    plot_layer_module_sparsity,
    plot_length,
    plot_sft_vs_rl,
    plot_tolerance_curves,
)
from rlsparse_lib.plotting.style import attach_provenance, paper_style, save_figure
from rlsparse_lib.plotting.training import plot_training_curves

__all__ = [
    "attach_provenance",
    "paper_style",
    "plot_binade_curve",
    "plot_causes",
    "plot_dynamics",
    "plot_layer_module_sparsity",
    "plot_length",
    "plot_lr_scaling",
    "plot_monitor",
    "plot_overlap_heatmap",
    "plot_parameter_fate",
    "plot_precision_modes",
    "plot_rank_bars",
    "plot_sft_vs_rl",
    "plot_tolerance_curves",
    "plot_training_curves",
    "plot_ulp_histogram",
    "save_figure",
]
