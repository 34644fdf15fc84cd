"""Sparsity over training: the dynamics panels (Figs. 5–7), parameter fate (Fig. 2) and the
per-step monitor, from the series / fate / monitor tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from rlsparse_lib.plotting.style import (
    FATE_COLORS,
    as_panels,
    attach_provenance,
    new_figure,
    palette,
    paper_style,
    pct_axis,
)
from rlsparse_lib.rules import PAPER_SPARSITY, PAPER_TOL, MaskRule

#: legends under their panel (``loc`` is the legend's anchor point below the x-axis label)
_BELOW = {"fontsize": "xx-small", "loc": "upper center", "bbox_to_anchor": (0.5, -0.22), "ncols": 1}


def _at_most_100(ax) -> None:
    """Stop a percentage axis at 100 % (autoscaling's margin would show 101–105 %)."""
    low, high = ax.get_ylim()
    if high > 100:
        ax.set_ylim(low, 100)


def plot_dynamics(
    series,
    rule: str = "bitwise",
    accuracy: Mapping[str, Sequence[float]] | None = None,
):
    """Figs. 5–7 from a dynamics series (:meth:`DynamicsReport.series` or its stored CSV).

    Panels: (a) sparsity vs θ0 (Figs. 5, 7a; optional accuracy curves on a second axis),
    (b) sparsity between consecutive checkpoints (Fig. 7b), (c) % of weights updated then reverted,
    i.e. changed at k but not in the final model (Fig. 6), next to the ever-updated union.

    Args:
        series: DataFrame with ``k, step, sparsity, step_sparsity, outside_final_fraction,
            union_fraction`` (and optionally ``sparsity_tol_1e-05``).
        rule: the mask rule of ``sparsity`` as :meth:`MaskRule.describe` writes it (legend).
        accuracy: ``{benchmark: [value per checkpoint]}`` (fractions) for panel (a).
    """
    s = series
    has_steps = bool(s["step"].notna().all())
    x = s["step"] if has_steps else s["k"]
    c = palette(6)
    with paper_style():
        fig, axes = new_figure("double", 3.0, ncols=3)
        a, b, d = axes
        a.plot(x, 100 * s["sparsity"], "o-", ms=3, color=c[0], label=rule, clip_on=False)
        if PAPER_SPARSITY in s.columns and rule != MaskRule("abs", PAPER_TOL).describe():
            a.plot(
                x,
                100 * s[PAPER_SPARSITY],
                "s--",
                ms=3,
                color=c[1],
                label="|Δ| ≤ 1e-5",
                clip_on=False,
            )
        a.set_title("(a) vs θ0")
        a.set_ylabel("update sparsity")
        pct_axis(a)
        _at_most_100(a)
        handles, labels = a.get_legend_handles_labels()
        if accuracy:
            ax2 = a.twinx()
            for (name, vals), color in zip(accuracy.items(), c[3:], strict=False):
                ax2.plot(
                    x,
                    100 * np.asarray(vals, float),
                    "^:",
                    ms=3,
                    color=color,
                    label=name,
                    clip_on=False,
                )
            ax2.set_ylabel("accuracy (dotted)")
            ax2.grid(False)
            ax2.spines["right"].set_visible(True)
            pct_axis(ax2)
            _at_most_100(ax2)
            more = ax2.get_legend_handles_labels()
            handles, labels = handles + more[0], labels + more[1]
        a.legend(handles, labels, **_BELOW)  # below the axes: never on the curves
        step = 100 * s["step_sparsity"]
        mean = float(step.mean())
        b.plot(x, step, "o-", ms=3, color=c[2], clip_on=False)
        b.axhline(mean, color="k", lw=0.8, ls=":", label=f"mean {mean:.1f}%")
        b.set_ylim(min(step.min(), mean - 1) - 0.5, max(step.max(), mean + 1) + 0.5)
        b.set_title("(b) consecutive")
        b.set_ylabel("sparsity θ(k−1) → θ(k)")
        pct_axis(b)
        _at_most_100(b)
        b.legend(**_BELOW)
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
        pct_axis(d)
        _at_most_100(d)
        d.legend(**_BELOW)
        for ax in axes:
            ax.set_xlabel("training step" if has_steps else "checkpoint k")
    labels = list(s["label"]) if "label" in s.columns else None
    attach_provenance(fig, figure="fig5_7_dynamics", labels=labels, rule=rule)
    return fig


def plot_parameter_fate(fates):
    """Fig. 2: share of weights never updated, updated but cancelled, and in the final subnetwork.

    Args:
        fates: a fate row (:meth:`DynamicsReport.fate`: ``never, cancelled, final`` fractions),
            ``{label: row}``, or a DataFrame with one row per label (index = labels).
    """
    import pandas as pd

    if isinstance(fates, pd.DataFrame):
        fates = fates.to_dict("index")
    elif isinstance(fates, Mapping) and "never" in fates:
        fates = {"": fates}
    rows = as_panels(fates, "")
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
        pct_axis(ax, "x")
        ax.grid(False)
        ax.invert_yaxis()
        if len(rows) == 1 and not labels[0]:
            ax.set_yticks([])
        fig.legend(ncols=3, fontsize="x-small", loc="outside upper center")
    attach_provenance(fig, figure="fig2_parameter_fate", fate=rows)
    return fig


def plot_monitor(monitor):
    """Per optimizer step: share of weights unchanged in that step and vs init, for the fp32
    master weights and for their bf16 view (the in-training monitor's records, a DataFrame)."""
    with paper_style():
        fig, (a, b) = new_figure("double", 2.6, ncols=2)
        c = palette(4)
        for ax, suffix, title in ((a, "step", "within each step"), (b, "vs_init", "vs init")):
            if f"sparsity_{suffix}_bf16" in monitor:
                ax.plot(
                    monitor["step"],
                    100 * monitor[f"sparsity_{suffix}_bf16"],
                    "o-",
                    ms=2,
                    color=c[0],
                    label="stored bf16 value",
                    clip_on=False,
                )
            if f"sparsity_{suffix}" in monitor:
                label = "fp32 master weight" if "sparsity_vs_init_bf16" in monitor else "weight"
                ax.plot(
                    monitor["step"],
                    100 * monitor[f"sparsity_{suffix}"],
                    "s--",
                    ms=2,
                    color=c[1],
                    label=label,
                    clip_on=False,
                )
            ax.set(xlabel="step", ylabel="unchanged weights", title=title, ylim=(0, 100))
            pct_axis(ax)
        a.legend(fontsize="x-small", loc="upper center", bbox_to_anchor=(0.5, -0.25), ncols=2)
    attach_provenance(fig, figure="monitor_per_step", n_steps=len(monitor))
    return fig
