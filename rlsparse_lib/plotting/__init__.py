"""Figures in one consistent style (seaborn), saved as PNG + PDF with provenance metadata.

::

    from rlsparse_lib.plotting import plot_layer_module_sparsity, save_figure
    fig = plot_layer_module_sparsity({"DPO": dpo_report, "PRIME": prime_report})
    save_figure(fig, "figures/fig3_layer_module_sparsity", provenance={"family": "tulu"})
"""

from __future__ import annotations

from rlsparse_lib.plotting.experiments import (
    plot_causes,
    plot_length,
    plot_lr_scaling,
    plot_monitor,
    plot_precision_modes,
    plot_training_curves,
)
from rlsparse_lib.plotting.figures import (
    layer_module_table,
    plot_binade_curve,
    plot_dynamics,
    plot_layer_module_sparsity,
    plot_overlap_heatmap,
    plot_parameter_fate,
    plot_rank_bars,
    plot_sft_vs_rl,
    plot_tolerance_curves,
    plot_ulp_histogram,
)
from rlsparse_lib.plotting.style import attach_provenance, git_revision, paper_style, save_figure

__all__ = [
    "attach_provenance",
    "git_revision",
    "layer_module_table",
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
