"""Overlap of update masks (Table 4) as an annotated heatmap, from N×N tables."""

from __future__ import annotations

import math

import numpy as np

from rlsparse_lib.plotting.style import attach_provenance, new_figure, paper_style

_PCT_METRICS = ("o", "o_random", "jaccard", "jaccard_random")


def plot_overlap_heatmap(
    matrix, metric: str = "o", baseline=None, baseline_metric: str = "o_random"
):
    """Pairwise overlap of N masks; cells show the metric and, in brackets, its random baseline.

    Args:
        matrix: N×N DataFrame of ``metric`` (index and columns = mask labels), e.g.
            :meth:`OverlapMatrix.frame`.
        metric: what the cells hold (``o`` row covered by column and ``jaccard`` are shown in %).
        baseline: optional N×N DataFrame shown in brackets (e.g. ``frame("o_random")``).
        baseline_metric: what ``baseline`` holds (``o*``/``jaccard*`` are shown in %).
    """
    import seaborn as sns

    values = matrix
    pct = metric in _PCT_METRICS
    scale = 100 if pct else 1
    v = values.to_numpy(dtype=float) * scale
    annot = np.empty(v.shape, dtype=object)
    for i in range(v.shape[0]):
        for j in range(v.shape[1]):
            s = "" if math.isnan(v[i, j]) else (f"{v[i, j]:.1f}" if pct else f"{v[i, j]:.2f}")
            if baseline is not None and i != j and not math.isnan(baseline.iat[i, j]):
                b = baseline.iat[i, j] * (100 if baseline_metric.startswith(("o", "jac")) else 1)
                s += f"\n({b:.1f})"
            annot[i, j] = s
    n = v.shape[0]
    label = {"o": "row covered by column (%)", "jaccard": "Jaccard (%)"}.get(metric, metric)
    with paper_style():
        fig, ax = new_figure(max(3.2, 1.0 + 0.9 * n), max(2.6, 0.5 + 0.75 * n))
        sns.heatmap(
            v,
            annot=annot,
            fmt="",
            cmap="viridis",
            vmin=0 if pct else None,
            vmax=100 if pct else None,
            square=True,
            cbar_kws={"label": label, "shrink": 0.8},
            xticklabels=list(values.columns),
            yticklabels=list(values.index),
            annot_kws={"fontsize": "x-small"},
            linewidths=0.5,
            linecolor="white",
            ax=ax,
        )
        ax.grid(False)
        ax.tick_params(axis="x", labelrotation=30)
        ax.tick_params(axis="y", labelrotation=0)
        if baseline is not None:
            ax.set_title(f"observed ({baseline_metric} in brackets)", fontsize="small")
    attach_provenance(
        fig,
        figure="overlap_heatmap",
        params={"metric": metric, "baseline": baseline_metric if baseline is not None else None},
        labels=list(values.index),
    )
    return fig
