"""Seeds and controls: accuracy and update sparsity per group of runs, mean and 95 % interval
over seeds, from the seed summary table (``runs_summary``)."""

from __future__ import annotations

import numpy as np

from rlsparse_lib.plotting.style import attach_provenance, new_figure, palette, paper_style


def plot_seed_intervals(summary):
    """Two panels, one row per group (``group``, ``n_runs``, ``<m>_mean``/``_low``/``_high`` of
    ``acc_after`` and ``sparsity_bitwise``): the mean as a dot, the interval as a bar (groups of
    one run: the binomial standard error of its accuracy, or no bar); the axes stop at 0 and 1
    (100 %) where an interval reaches past them."""
    rows = summary.reset_index(drop=True)
    y = np.arange(len(rows))[::-1]
    labels = [f"{g} (n={n})" for g, n in zip(rows["group"], rows["n_runs"], strict=True)]
    colors = palette(2)
    with paper_style():
        fig, (a, b) = new_figure("double", 0.8 + 0.28 * len(rows), ncols=2, sharey=True)
        for ax, metric, scale, color, title in (
            (a, "acc_after", 1.0, colors[0], "held-out accuracy (after)"),
            (b, "sparsity_bitwise", 100.0, colors[1], "sparsity, bitwise (%)"),
        ):
            mean = scale * rows[f"{metric}_mean"].astype(float)
            low = scale * rows[f"{metric}_low"].astype(float)
            high = scale * rows[f"{metric}_high"].astype(float)
            if metric == "acc_after":  # one run: ± its binomial standard error
                se = rows["acc_after_binomial_se"].astype(float)
                low, high = low.fillna(mean - se), high.fillna(mean + se)
            err = np.vstack([(mean - low).fillna(0), (high - mean).fillna(0)])
            ax.errorbar(mean, y, xerr=err, fmt="o", ms=3, capsize=2, color=color)
            # an interval may leave [0, 1] (t intervals of few seeds); the axis shows that range
            span = [np.nanmin([low.min(), mean.min()]), np.nanmax([high.max(), mean.max()])]
            pad = 0.05 * (span[1] - span[0] or scale)
            ax.set_xlim(max(0.0, span[0] - pad), min(scale, span[1] + pad))
            ax.set(title=title)
            ax.grid(axis="x", alpha=0.3)
        a.set_yticks(y, labels, fontsize="x-small")
    attach_provenance(fig, figure="12_seed_intervals", groups=list(rows["group"]))
    return fig
