"""Figures of the experiment notebooks that are not in the paper's set: training curves (Fig. 4),
the in-training monitor, the causes and precision controls. Inputs are the notebooks' stored
tables (DataFrames), so every figure can be redrawn without weights."""

from __future__ import annotations

from rlsparse_lib.plotting.figures import _pct_axis
from rlsparse_lib.plotting.style import attach_provenance, new_figure, palette, paper_style


def plot_training_curves(history):
    """Fig. 4: training loss and reward per step, one line per run (``run, step, loss, reward``)."""
    runs = list(dict.fromkeys(history["run"]))
    colors = dict(zip(runs, palette(len(runs)), strict=True))
    with paper_style():
        fig, (a, b) = new_figure("double", 2.6, ncols=2)
        for run in runs:
            h = history[history["run"] == run]
            a.plot(h["step"], h["loss"], "-", color=colors[run], label=run)
            if h["reward"].notna().any():
                b.plot(
                    h["step"],
                    h["reward"].rolling(3, min_periods=1).mean(),
                    "-",
                    color=colors[run],
                    label=run,
                )
        a.set(xlabel="step", ylabel="training loss", title="loss")
        b.set(xlabel="step", ylabel="mean reward (3-step average)", title="reward")
        a.legend(fontsize="x-small")
    attach_provenance(fig, figure="fig4_subnetwork_training", runs=runs)
    return fig


def plot_monitor(monitor):
    """Per optimizer step: share of weights unchanged in that step and vs init, for the fp32
    master weights and for their bf16 view (the in-training monitor's records)."""
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
                )
            ax.set(xlabel="step", ylabel="unchanged weights", title=title, ylim=(-2, 102))
            _pct_axis(ax)
        a.legend(fontsize="x-small")
    attach_provenance(fig, figure="monitor_per_step", n_steps=len(monitor))
    return fig


def plot_causes(causes):
    """Table 5 / §6: update sparsity of each controlled pair of runs, one bar per run, grouped
    (and coloured) by factor, bitwise and at 1e-5."""
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
    with paper_style():
        fig, ax = new_figure("double", 0.32 * len(rows) + 0.9)
        bit = np.array([100 * r["sparsity_bitwise"] for r in rows])
        ax.barh(y, bit, color=[colors[r["factor"]] for r in rows], height=0.8)
        xlabel = "update sparsity (bar: bitwise)"
        if "sparsity_1e-05" in causes:
            tol = np.array([100 * r["sparsity_1e-05"] for r in rows])
            ax.plot(tol, y, "k|", ms=10, mew=1.5)
            xlabel = "update sparsity (bar: bitwise; tick: |Δ| ≤ 1e-5)"
        for yy, v in zip(y, bit, strict=True):
            ax.text(v + 1, yy, f"{v:.1f}%", va="center", fontsize="x-small")
        ax.set_yticks(y, labels, fontsize="small")
        ax.invert_yaxis()
        ax.set(xlabel=xlabel, xlim=(0, 112))
        _pct_axis(ax, "x")
    attach_provenance(
        fig, figure="table5_causes", rows=causes[["factor", "setting", "run"]].to_dict("records")
    )
    return fig


def plot_length(length):
    """Update sparsity vs training step (bitwise and at 1e-5)."""
    c = palette(2)
    with paper_style():
        fig, ax = new_figure("single", 2.4)
        ax.plot(length["step"], 100 * length["sparsity_bitwise"], "o-", color=c[0], label="bitwise")
        if "sparsity_1e-05" in length:
            ax.plot(
                length["step"],
                100 * length["sparsity_1e-05"],
                "s--",
                color=c[1],
                label="|Δ| ≤ 1e-5",
            )
        ax.set(xlabel="training step", ylabel="update sparsity vs init")
        _pct_axis(ax)
        ax.legend(fontsize="x-small")
    attach_provenance(fig, figure="causes_training_length")
    return fig


def plot_precision_modes(modes):
    """Sparsity of the saved bf16 weights per precision mode, and of the fp32 master weights."""
    import pandas as pd
    import seaborn as sns

    rows = []
    for r in modes.to_dict("records"):
        rows.append(
            {
                "run": f"{r['kind'].upper()} · {r['mode']}",
                "view": "saved bf16 checkpoint",
                "pct": 100 * r["sparsity_bitwise"],
            }
        )
        master = r.get("fp32_master_sparsity_bitwise")
        if master is not None and master == master:
            rows.append(
                {
                    "run": f"{r['kind'].upper()} · {r['mode']}",
                    "view": "fp32 master weights",
                    "pct": 100 * master,
                }
            )
    df = pd.DataFrame(rows)
    with paper_style():
        fig, ax = new_figure("double", 2.8)
        sns.barplot(data=df, x="run", y="pct", hue="view", palette=palette(2), ax=ax)
        for cont in ax.containers:
            ax.bar_label(cont, fmt="%.1f%%", fontsize="x-small", padding=1)
        ax.set(xlabel="", ylabel="update sparsity (bitwise)", ylim=(0, 105))
        _pct_axis(ax)
        ax.legend(fontsize="x-small", loc="upper right")
    attach_provenance(fig, figure="precision_modes", rows=df.to_dict("records"))
    return fig


def plot_lr_scaling(lr):
    """Update sparsity of the saved bf16 weights vs learning rate."""
    c = palette(2)
    with paper_style():
        fig, ax = new_figure("single", 2.4)
        ax.plot(lr["lr"], 100 * lr["sparsity_bitwise"], "o-", color=c[0], label="bitwise")
        ax.plot(lr["lr"], 100 * lr["sparsity_1e-05"], "s--", color=c[1], label="|Δ| ≤ 1e-5")
        ax.set(xscale="log", xlabel="learning rate", ylabel="update sparsity")
        _pct_axis(ax)
        ax.legend(fontsize="x-small")
    attach_provenance(fig, figure="precision_lr", rows=lr.to_dict("records"))
    return fig
