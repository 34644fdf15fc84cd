"""Update-sparsity figures: layer × module (Fig. 3), tolerance curves (Table 6), SFT vs RL
(Fig. 1), the causes' controlled pairs (Table 5) and sparsity vs training length.

Inputs are tables (DataFrames): :meth:`DiffReport.layer_module_table`, run summary rows with the
canonical ``sparsity_<rule>`` columns (:meth:`DiffReport.headline`), and the notebooks' CSVs.
"""

from __future__ import annotations

from rlsparse_lib.errors import ConfigError
from rlsparse_lib.plotting.style import (
    as_panels,
    attach_provenance,
    module_colors,
    new_figure,
    palette,
    paper_style,
    pct_axis,
)
from rlsparse_lib.rules import PAPER_SPARSITY, sparsity_column, tol_of_column

MEAN_LABEL = "mean over tensors"


def plot_layer_module_sparsity(tables, rule: str = "bitwise", ncols: int | None = None):
    """Fig. 3: sparsity per layer, one line per module kind plus the per-layer mean over tensors.

    Args:
        tables: a layer × module table (:meth:`DiffReport.layer_module_table`: ``layer, module,
            sparsity`` in %), or ``{title: table}`` for panels side by side (e.g. DPO and PRIME).
        rule: the rule the tables were made with (axis label only).
    """
    import seaborn as sns

    tables = as_panels(tables)
    for title, t in tables.items():
        missing = {"layer", "module", "sparsity"} - set(t.columns)
        if missing:
            raise ConfigError(f"layer × module table {title!r} lacks columns {sorted(missing)}")
    modules = sorted({m for t in tables.values() for m in t["module"] if m != MEAN_LABEL})
    colors = module_colors(modules)
    n = len(tables)
    with paper_style():
        fig, axes = new_figure("double", 2.8, ncols=n, sharey=True, squeeze=False)
        for ax, (title, t) in zip(axes[0], tables.items(), strict=True):
            mods = t[t["module"] != MEAN_LABEL]
            sns.lineplot(
                data=mods,
                x="layer",
                y="sparsity",
                hue="module",
                hue_order=list(colors),
                palette=colors,
                marker="o",
                markersize=3,
                linewidth=1,
                ax=ax,
                legend=ax is axes[0][-1],
            )
            mean = t[t["module"] == MEAN_LABEL]
            ax.plot(mean["layer"], mean["sparsity"], "k--", lw=1.6, label=MEAN_LABEL)
            ax.set_title(title or None)
            ax.set_xlabel("layer")
            ax.set_ylabel(f"update sparsity ({rule})")
            pct_axis(ax)
        last = axes[0][-1]
        handles, labels = last.get_legend_handles_labels()
        if last.get_legend():
            last.get_legend().remove()
        fig.legend(handles, labels, loc="outside right center", fontsize="small")
    attach_provenance(
        fig, figure="fig3_layer_module_sparsity", params={"rule": rule, "panels": list(tables)}
    )
    return fig


def plot_tolerance_curves(runs, label: str = "run"):
    """Sparsity of each run under bitwise equality and every tolerance > 0 of its columns.

    Args:
        runs: DataFrame, one row per run, with ``label`` and the canonical ``sparsity_bitwise``
            and ``sparsity_tol_<t>`` columns (:meth:`DiffReport.headline`, a run summary table).
        label: the column naming the runs.
    """
    import pandas as pd

    df = pd.DataFrame(runs)
    tol_cols = sorted(
        (c for c in df.columns if c.startswith("sparsity_tol_") and tol_of_column(c)),
        key=lambda c: tol_of_column(c) or 0.0,  # never None: filtered above
    )
    bitwise = sparsity_column("bitwise")
    if bitwise not in df.columns:
        raise ConfigError(f"tolerance curves need a {bitwise} column")
    xs = ["bitwise", *[f"{tol_of_column(c):.0e}" for c in tol_cols]]
    with paper_style():
        fig, ax = new_figure("single", 2.6)
        rows = df.to_dict("records")
        for r, color in zip(rows, palette(len(rows)), strict=True):
            ys = [100 * r[bitwise], *[100 * r[c] for c in tol_cols]]
            ax.plot(xs, ys, marker="o", ms=4, color=color, label=r.get(label) or None)
        ax.set_xlabel("unchanged if bits equal or |Δ| ≤ tol")
        ax.set_ylabel("update sparsity")
        pct_axis(ax)
        ax.tick_params(axis="x", labelrotation=45)
        if len(rows) > 1 or (rows and rows[0].get(label)):
            ax.legend(fontsize="small")
    attach_provenance(fig, figure="tolerance_curves", runs=[r.get(label) for r in rows])
    return fig


def plot_sft_vs_rl(data):
    """Fig. 1: update sparsity of the SFT stage and the RL stage per model family.

    Args:
        data: DataFrame (or records) with ``family``, ``stage`` (e.g. ``SFT``/``RL``) and
            ``sparsity`` (a fraction).
    """
    import pandas as pd
    import seaborn as sns

    df = pd.DataFrame(data)
    missing = {"family", "stage", "sparsity"} - set(df.columns)
    if missing:
        raise ConfigError(f"SFT-vs-RL data lacks columns {sorted(missing)}")
    df = df.assign(pct=100 * df["sparsity"].astype(float))
    stages = list(dict.fromkeys(df["stage"]))
    families = list(dict.fromkeys(df["family"]))
    n_bars = len(stages) * len(families)
    width = max(3.3, 1.0 + 0.32 * n_bars + 0.9)  # room for every bar's label and the legend
    with paper_style():
        fig, ax = new_figure(width, 2.8)
        sns.barplot(
            data=df,
            x="family",
            y="pct",
            hue="stage",
            hue_order=stages,
            order=families,
            palette=dict(zip(stages, palette(len(stages) + 1)[1:], strict=True)),
            ax=ax,
        )
        for cont in ax.containers:
            ax.bar_label(cont, fmt="%.1f", fontsize="xx-small", padding=1, rotation=90)
        ax.set_xlabel("")
        ax.set_ylabel("update sparsity")
        ax.set_ylim(0, 112)
        ax.set_xticks(range(len(families)), [f.replace(" (", "\n(") for f in families])
        pct_axis(ax)
        ax.legend(title=None, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    attach_provenance(fig, figure="fig1_sft_vs_rl", data=df.drop(columns="pct").to_dict("records"))
    return fig


def plot_causes(causes):
    """Table 5 / §6: update sparsity of each controlled pair of runs, one bar per run, grouped
    (and coloured) by factor, bitwise and at 1e-5 (``factor, setting, run`` and the canonical
    sparsity columns)."""
    import numpy as np

    factors = list(dict.fromkeys(causes["factor"]))
    colors = dict(zip(factors, palette(len(factors)), strict=True))
    y, labels, rows = [], [], causes.to_dict("records")
    pos = 0.0
    for f in factors:
        for r in rows:
            if r["factor"] == f:
                y.append(pos)
                labels.append(f"{f}: {r['setting']}")
                pos += 1
        pos += 0.6
    bitwise = sparsity_column("bitwise")
    with paper_style():
        fig, ax = new_figure("double", 0.32 * len(rows) + 0.9)
        bit = np.array([100 * r[bitwise] for r in rows])
        ax.barh(y, bit, color=[colors[r["factor"]] for r in rows], height=0.8)
        xlabel = "update sparsity (bar: bitwise)"
        if PAPER_SPARSITY in causes:
            tol = np.array([100 * r[PAPER_SPARSITY] for r in rows])
            ax.plot(tol, y, "k|", ms=10, mew=1.5)
            xlabel = "update sparsity (bar: bitwise; tick: |Δ| ≤ 1e-5)"
        for yy, v in zip(y, bit, strict=True):
            ax.text(v + 1, yy, f"{v:.1f}%", va="center", fontsize="x-small")
        ax.set_yticks(y, labels, fontsize="small")
        ax.invert_yaxis()
        ax.set(xlabel=xlabel, xlim=(0, 112))
        pct_axis(ax, "x")
    attach_provenance(
        fig, figure="table5_causes", rows=causes[["factor", "setting", "run"]].to_dict("records")
    )
    return fig


def plot_length(length):
    """Update sparsity vs training step (bitwise and at 1e-5; ``step`` and sparsity columns)."""
    c = palette(2)
    bitwise = sparsity_column("bitwise")
    with paper_style():
        fig, ax = new_figure("single", 2.4)
        ax.plot(length["step"], 100 * length[bitwise], "o-", color=c[0], label="bitwise")
        if PAPER_SPARSITY in length:
            ax.plot(
                length["step"],
                100 * length[PAPER_SPARSITY],
                "s--",
                color=c[1],
                label="|Δ| ≤ 1e-5",
            )
        ax.set(xlabel="training step", ylabel="update sparsity vs init")
        pct_axis(ax)
        ax.legend(fontsize="x-small")
    attach_provenance(fig, figure="causes_training_length")
    return fig
