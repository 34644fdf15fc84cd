"""The paper's figures and the precision views, drawn from rlsparse results.

Every function returns a matplotlib Figure in the rlsparse style with its inputs recorded
(:func:`~rlsparse_lib.plotting.style.attach_provenance`); save it with
:func:`~rlsparse_lib.plotting.style.save_figure`. Inputs are result objects (or their tables), so
figures can be redrawn from stored JSON without any weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from rlsparse_lib.errors import ConfigError
from rlsparse_lib.plotting.style import (
    FATE_COLORS,
    attach_provenance,
    module_colors,
    new_figure,
    palette,
    paper_style,
)


def _as_mapping(obj, default_label: str = "") -> dict:
    return dict(obj) if isinstance(obj, Mapping) else {default_label: obj}


def _inputs(obj) -> object:
    prov = getattr(obj, "provenance", None) or {}
    return prov.get("inputs") or prov.get("init") or prov.get("base") or None


def _pct_axis(ax, axis: str = "y") -> None:
    from matplotlib.ticker import PercentFormatter

    (ax.yaxis if axis == "y" else ax.xaxis).set_major_formatter(PercentFormatter(100))


# ---- Figure 3: layer × module sparsity -------------------------------------------------------
def layer_module_table(report, rule: str = "bitwise"):
    """Long table ``layer, module, numel, n_unchanged, sparsity`` (count-weighted, %) plus the
    paper's unweighted per-layer mean over tensors as module ``mean over tensors``."""
    import pandas as pd

    df = report.table() if hasattr(report, "table") else report
    col = f"n_unchanged_{rule}"
    if col not in df.columns:
        raise ConfigError(f"no rule {rule!r} in the report (columns n_unchanged_<rule>)")
    df = df[df["layer"].notna()].copy()
    df["layer"] = df["layer"].astype(int)
    g = df.groupby(["layer", "module"], sort=True)[["numel", col]].sum().reset_index()
    g["sparsity"] = 100 * g[col] / g["numel"]
    mean = (
        (100 * df[col] / df["numel"]).groupby(df["layer"]).mean().rename("sparsity").reset_index()
    )
    mean["module"] = "mean over tensors"
    return pd.concat([g.rename(columns={col: "n_unchanged"}), mean], ignore_index=True)


def plot_layer_module_sparsity(reports, rule: str = "bitwise", ncols: int | None = None):
    """Fig. 3: sparsity per layer, one line per module kind plus the per-layer mean over tensors.

    Args:
        reports: a :class:`DiffReport` (or its ``table()``), or ``{title: report}`` for panels
            side by side (e.g. DPO and PRIME).
        rule: ``bitwise``, ``tol_<t>`` (e.g. ``tol_1e-05``) or ``rel``.
    """
    import seaborn as sns

    panels = _as_mapping(reports)
    tables = {k: layer_module_table(r, rule) for k, r in panels.items()}
    modules = sorted({m for t in tables.values() for m in t["module"] if m != "mean over tensors"})
    colors = module_colors(modules)
    n = len(tables)
    with paper_style():
        fig, axes = new_figure("double", 2.8, ncols=n, sharey=True, squeeze=False)
        for ax, (title, t) in zip(axes[0], tables.items(), strict=True):
            mods = t[t["module"] != "mean over tensors"]
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
            mean = t[t["module"] == "mean over tensors"]
            ax.plot(mean["layer"], mean["sparsity"], "k--", lw=1.6, label="mean over tensors")
            ax.set_title(title or None)
            ax.set_xlabel("layer")
            ax.set_ylabel(f"update sparsity ({rule})")
            _pct_axis(ax)
        last = axes[0][-1]
        handles, labels = last.get_legend_handles_labels()
        if last.get_legend():
            last.get_legend().remove()
        fig.legend(handles, labels, loc="outside right center", fontsize="small")
    attach_provenance(
        fig,
        figure="fig3_layer_module_sparsity",
        params={"rule": rule, "panels": list(panels)},
        inputs={k: _inputs(r) for k, r in panels.items()},
    )
    return fig


# ---- tolerance curves ------------------------------------------------------------------------
def plot_tolerance_curves(reports):
    """Sparsity of each report under bitwise equality and every tolerance of its grid.

    Args:
        reports: ``{label: DiffReport}`` (or one report).
    """
    panels = _as_mapping(reports, "sparsity")
    with paper_style():
        fig, ax = new_figure("single", 2.6)
        for (label, rep), color in zip(panels.items(), palette(len(panels)), strict=True):
            tols = [t for t in rep.tolerances if t > 0]
            xs = ["bitwise", *[f"{t:.0e}" for t in tols]]
            ys = [100 * rep.sparsity, *[100 * rep.sparsity_at(t) for t in tols]]
            ax.plot(xs, ys, marker="o", ms=4, color=color, label=label)
        ax.set_xlabel("unchanged if bits equal or |Δ| ≤ tol")
        ax.set_ylabel("update sparsity")
        _pct_axis(ax)
        ax.tick_params(axis="x", labelrotation=45)
        if len(panels) > 1 or next(iter(panels)):
            ax.legend(fontsize="small")
    attach_provenance(
        fig, figure="tolerance_curves", inputs={k: _inputs(r) for k, r in panels.items()}
    )
    return fig


# ---- Figure 1: SFT vs RL ---------------------------------------------------------------------
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
        _pct_axis(ax)
        ax.legend(title=None, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    attach_provenance(fig, figure="fig1_sft_vs_rl", data=df.drop(columns="pct").to_dict("records"))
    return fig


# ---- overlap heatmap -------------------------------------------------------------------------
def plot_overlap_heatmap(matrix, metric: str = "o", baseline: str | None = "o_random"):
    """Pairwise overlap of N masks; cells show the metric and, in brackets, its random baseline.

    Args:
        matrix: an :class:`~rlsparse_lib.analysis.overlap.OverlapMatrix` or an N×N DataFrame.
        metric: for an OverlapMatrix, a :data:`~rlsparse_lib.analysis.overlap.MATRIX_METRICS` name. ``o``
            (row covered by column) and ``jaccard`` are shown in %.
        baseline: the bracketed metric (None: none).
    """
    import seaborn as sns

    if hasattr(matrix, "frame"):
        values = matrix.frame(metric)
        base = matrix.frame(baseline) if baseline else None
    else:
        values, base = matrix, None
    pct = metric in ("o", "o_random", "jaccard", "jaccard_random")
    scale = 100 if pct else 1
    v = values.to_numpy(dtype=float) * scale
    annot = np.empty(v.shape, dtype=object)
    for i in range(v.shape[0]):
        for j in range(v.shape[1]):
            s = "" if math.isnan(v[i, j]) else (f"{v[i, j]:.1f}" if pct else f"{v[i, j]:.2f}")
            if base is not None and i != j and not math.isnan(base.iat[i, j]):
                b = base.iat[i, j] * (100 if baseline.startswith(("o", "jac")) else 1)
                s += f"\n({b:.1f})"
            annot[i, j] = s
    n = v.shape[0]
    label = {
        "o": "row covered by column (%)",
        "jaccard": "Jaccard (%)",
    }.get(metric, metric)
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
        if base is not None:
            ax.set_title(f"observed ({baseline} in brackets)", fontsize="small")
    attach_provenance(
        fig,
        figure="overlap_heatmap",
        params={"metric": metric, "baseline": baseline},
        labels=list(values.index),
        inputs=getattr(getattr(matrix, "counts", None), "masks", None),
    )
    return fig


# ---- rank bars -------------------------------------------------------------------------------
def plot_rank_bars(reports):
    """Table 2 as bars: mean numerical rank and effective rank (99% energy) per module kind,
    as % of the maximum rank.

    Args:
        reports: a :class:`~rlsparse_lib.analysis.rank.RankReport` or ``{label: RankReport}``.
    """
    import pandas as pd
    import seaborn as sns

    panels = _as_mapping(reports, "update")
    frames = []
    for label, rep in panels.items():
        df = rep.by_module()
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
    order = [m for m in module_colors(list(df["module"]))]
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
            _pct_axis(ax)
            ax.tick_params(axis="x", labelrotation=60)
            for lab in ax.get_xticklabels():
                lab.set_horizontalalignment("right")
        if len(panels) > 1:
            handles, labels = axes[0].get_legend_handles_labels()
            axes[0].get_legend().remove()
            fig.legend(handles, labels, loc="outside upper center", ncols=len(panels))
    attach_provenance(
        fig,
        figure="tab2_update_rank",
        summary={k: r.summary() for k, r in panels.items()},
        inputs={k: _inputs(r) for k, r in panels.items()},
    )
    return fig


# ---- Figures 5–7: dynamics -------------------------------------------------------------------
def plot_dynamics(dyn, accuracy: Mapping[str, Sequence[float]] | None = None):
    """Figs. 5–7 from a :class:`~rlsparse_lib.analysis.dynamics.DynamicsReport`.

    Panels: (a) sparsity vs θ0 (Figs. 5, 7a; optional accuracy curves on a second axis),
    (b) sparsity between consecutive checkpoints (Fig. 7b), (c) % of weights updated then reverted,
    i.e. changed at k but not in the final model (Fig. 6), next to the ever-updated union.

    Args:
        accuracy: ``{benchmark: [value per checkpoint]}`` (fractions) for panel (a).
    """
    s = dyn.series()
    has_steps = bool(s["step"].notna().all())
    x = s["step"] if has_steps else s["k"]
    c = palette(6)
    with paper_style():
        fig, axes = new_figure("double", 3.0, ncols=3)
        a, b, d = axes
        a.plot(x, 100 * s["sparsity"], "o-", ms=3, color=c[0], label=f"{dyn.rule.describe()}")
        tol = "sparsity_tol_1e-05"
        if tol in s.columns and dyn.rule.describe() != "abs tol=1e-05":
            a.plot(x, 100 * s[tol], "s--", ms=3, color=c[1], label="|Δ| ≤ 1e-5")
        a.set_title("(a) vs θ0")
        a.set_ylabel("update sparsity")
        _pct_axis(a)
        a.legend(fontsize="xx-small", loc="lower left")
        if accuracy:
            ax2 = a.twinx()
            for (name, vals), color in zip(accuracy.items(), c[3:], strict=False):
                ax2.plot(x, 100 * np.asarray(vals, float), "^:", ms=3, color=color, label=name)
            ax2.set_ylabel("accuracy (dotted)")
            ax2.grid(False)
            ax2.spines["right"].set_visible(True)
            _pct_axis(ax2)
            ax2.legend(fontsize="xx-small", loc="upper right")
        step = 100 * s["step_sparsity"]
        mean = float(step.mean())
        b.plot(x, step, "o-", ms=3, color=c[2])
        b.axhline(mean, color="k", lw=0.8, ls=":", label=f"mean {mean:.1f}%")
        b.set_ylim(min(step.min(), mean - 1) - 0.5, max(step.max(), mean + 1) + 0.5)
        b.set_title("(b) consecutive")
        b.set_ylabel("sparsity θ(k−1) → θ(k)")
        _pct_axis(b)
        b.legend(fontsize="xx-small")
        d.plot(
            x,
            100 * s["outside_final_fraction"],
            "o-",
            ms=3,
            color=c[3],
            label="changed at k, not in final",
        )
        d.plot(x, 100 * s["union_fraction"], "s--", ms=3, color=c[4], label="ever changed up to k")
        d.set_title("(c) reverted updates")
        d.set_ylabel("% of all weights")
        _pct_axis(d)
        d.legend(fontsize="xx-small", loc="upper center", bbox_to_anchor=(0.5, -0.22), ncols=1)
        for ax in axes:
            ax.set_xlabel("training step" if has_steps else "checkpoint k")
    attach_provenance(
        fig,
        figure="fig5_7_dynamics",
        labels=dyn.labels,
        rule=dyn.rule.describe(),
        inputs=dyn.provenance.get("checkpoints"),
    )
    return fig


# ---- Figure 2: parameter fate ----------------------------------------------------------------
def plot_parameter_fate(fates):
    """Fig. 2: share of weights never updated, updated but cancelled, and in the final subnetwork.

    Args:
        fates: a :class:`DynamicsReport`, its ``fate()`` dict, or ``{label: either}``.
    """
    panels = _as_mapping(fates, "")
    rows = {k: (v.fate() if hasattr(v, "fate") else v) for k, v in panels.items()}
    keys = ("never", "cancelled", "final")
    names = {
        "never": "never updated",
        "cancelled": "updated, then cancelled",
        "final": "final subnetwork",
    }
    with paper_style():
        fig, ax = new_figure(4.8, 1.1 + 0.42 * len(rows))
        labels = list(rows)
        left = np.zeros(len(rows))
        for key in keys:
            vals = np.array([100 * rows[k][key] for k in labels])
            bars = ax.barh(
                labels, vals, left=left, color=FATE_COLORS[key], label=names[key], height=0.6
            )
            ax.bar_label(
                bars,
                labels=[f"{v:.1f}%" if v >= 6 else "" for v in vals],
                label_type="center",
                fontsize="x-small",
            )
            left += vals
        ax.set_xlim(0, 100)
        ax.set_xlabel("% of weights")
        _pct_axis(ax, "x")
        ax.grid(False)
        ax.invert_yaxis()
        if len(rows) == 1 and not labels[0]:
            ax.set_yticks([])
        fig.legend(ncols=3, fontsize="x-small", loc="outside upper center")
    attach_provenance(fig, figure="fig2_parameter_fate", fate=rows)
    return fig


# ---- precision views -------------------------------------------------------------------------
def plot_ulp_histogram(reports):
    """|Δ| of the changed weights in ULPs of θ0 (log2 bins), as % of changed weights.

    Args:
        reports: a :class:`DiffReport` or ``{label: DiffReport}``.
    """
    from rlsparse_lib.analysis.absorption import ulp_histogram

    panels = _as_mapping(reports, "")
    with paper_style():
        fig, ax = new_figure("single", 2.4)
        width = 0.8 / len(panels)
        for i, ((label, rep), color) in enumerate(
            zip(panels.items(), palette(len(panels)), strict=True)
        ):
            h = ulp_histogram(rep)
            ax.bar(
                h["log2_ratio"] + (i - (len(panels) - 1) / 2) * width,
                100 * h["fraction"],
                width=width,
                color=color,
                label=label or None,
            )
        ax.axvline(-1, color="k", lw=0.8, ls=":", label="½ ULP")
        ax.set_xlabel("log2(|Δ| / ULP(θ0))")
        ax.set_ylabel("% of changed weights")
        _pct_axis(ax)
        ax.legend(fontsize="x-small")
    attach_provenance(
        fig, figure="precision_ulp_histogram", inputs={k: _inputs(r) for k, r in panels.items()}
    )
    return fig


def plot_binade_curve(reports, update_sizes: Sequence[float] = ()):
    """Sparsity per |θ0| binade (line) over the share of weights in each binade (bars).

    If bf16 absorption explains the sparsity, the curve rises with |θ0|. Dotted lines mark, for
    each assumed per-step update size u, the |θ0| above which one step of size u is absorbed.

    Args:
        reports: a :class:`DiffReport` or ``{label: DiffReport}``.
        update_sizes: per-step update sizes to mark.
    """
    from rlsparse_lib.analysis.absorption import absorption_threshold, binade_sparsity

    panels = _as_mapping(reports, "")
    with paper_style():
        fig, ax = new_figure(4.2, 2.8)
        share_ax = ax.twinx()
        share_ax.grid(False)
        colors = palette(len(panels) + 3)
        first = None
        for (label, rep), color in zip(panels.items(), colors, strict=False):
            b = binade_sparsity(rep)
            b = b[b["exponent"].map(lambda e: isinstance(e, (int, np.integer)))]
            e = b["exponent"].astype(int)
            if first is None:
                first = rep
                share_ax.bar(e, 100 * b["share_of_weights"], width=0.8, color="#dddddd", zorder=0)
            ax.plot(
                e, 100 * b["sparsity"], "o-", ms=3, color=color, label=label or "sparsity", zorder=3
            )
        if first is not None and update_sizes:
            dtype = binade_sparsity(first)["compare_dtype"].mode().iat[0]
            for u, color in zip(update_sizes, colors[len(panels) :], strict=False):
                thr = absorption_threshold(u, dtype)
                ax.axvline(
                    math.log2(thr),
                    color=color,
                    ls=":",
                    lw=1,
                    label=f"one step of {u:.0e} absorbed above",
                )
        ax.set_zorder(share_ax.get_zorder() + 1)
        ax.patch.set_visible(False)
        ax.set_xlabel("|θ0| binade  e  (|θ0| ∈ [2^e, 2^(e+1)))")
        ax.set_ylabel("update sparsity")
        share_ax.set_ylabel("% of weights (bars)", color="#888888")
        _pct_axis(ax)
        _pct_axis(share_ax)
        ax.set_ylim(0, 105)
        ax.legend(fontsize="xx-small", loc="upper left")
    attach_provenance(
        fig,
        figure="precision_binade_curve",
        params={"update_sizes": [float(u) for u in update_sizes]},
        inputs={k: _inputs(r) for k, r in panels.items()},
    )
    return fig
