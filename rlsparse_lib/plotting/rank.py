"""Update rank per module kind (Table 2) as bars, from rank-by-module tables."""

from __future__ import annotations

from rlsparse_lib.plotting.style import (
    as_panels,
    attach_provenance,
    module_colors,
    new_figure,
    palette,
    paper_style,
    pct_axis,
)


def plot_rank_bars(tables):
    """Table 2 as bars: mean numerical rank and effective rank (99% energy) per module kind,
    as % of the maximum rank.

    Args:
        tables: a rank-by-module table (:meth:`RankReport.by_module`: ``module, mean_rank_pct,
            mean_effective_rank_pct``) or ``{label: table}``.
    """
    import pandas as pd
    import seaborn as sns

    panels = as_panels(tables, "update")
    frames = []
    for label, t in panels.items():
        df = t.copy()
        df["model"] = label
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    long = df.melt(
        id_vars=["model", "module"],
        value_vars=["mean_rank_pct", "mean_effective_rank_pct"],
        var_name="measure",
        value_name="pct",
    )
    long["measure"] = long["measure"].map(
        {"mean_rank_pct": "numerical rank", "mean_effective_rank_pct": "effective rank (99%)"}
    )
    order = list(module_colors(list(df["module"])))
    with paper_style():
        fig, axes = new_figure("double", 2.8, ncols=2, sharey=True)
        for ax, measure in zip(axes, ["numerical rank", "effective rank (99%)"], strict=True):
            sub = long[long["measure"] == measure]
            sns.barplot(
                data=sub,
                x="module",
                y="pct",
                hue="model",
                order=order,
                palette=palette(len(panels)),
                ax=ax,
                legend=len(panels) > 1 and ax is axes[0],
            )
            ax.axhline(100, color="k", lw=0.8, ls=":")
            ax.set_title(measure)
            ax.set_xlabel("")
            ax.set_ylabel("% of max rank")
            ax.set_ylim(0, 105)
            pct_axis(ax)
            ax.tick_params(axis="x", labelrotation=60)
            for lab in ax.get_xticklabels():
                lab.set_horizontalalignment("right")
        if len(panels) > 1:
            handles, labels = axes[0].get_legend_handles_labels()
            axes[0].get_legend().remove()
            fig.legend(handles, labels, loc="outside upper center", ncols=len(panels))
    attach_provenance(fig, figure="tab2_update_rank", models=list(panels))
    return fig
