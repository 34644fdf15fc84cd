"""Long-horizon runs (notebook 13): training curves with their bands, update sparsity vs step
(the paper's Fig. 1 along time), and S_1 / S_k beside the published curves, from its tables."""

from __future__ import annotations

from rlsparse_lib.plotting.style import (
    attach_provenance,
    new_figure,
    palette,
    paper_style,
    pct_axis,
)
from rlsparse_lib.rules import PAPER_SPARSITY

_BELOW = {"fontsize": "xx-small", "loc": "upper center", "bbox_to_anchor": (0.5, -0.22), "ncols": 2}
#: what each curve of the ``curves`` table is, for the axes
_METRICS = {
    "reward": "training reward (batch mean)",
    "loss": "training loss",
    "mean_token_accuracy": "token accuracy",
}


def _band(ax, g, color, label: str) -> None:
    ax.plot(g["step"], g["value"], ".", ms=1.5, color=color, alpha=0.35)
    ax.plot(g["step"], g["mean"], "-", lw=1.2, color=color, label=label)
    ax.fill_between(g["step"], g["lo"], g["hi"], color=color, alpha=0.2, lw=0)


def plot_long_training(curves, evals, window: int):
    """(a) reward of the RL runs, (b) loss and token accuracy of the SFT runs: per-step values
    (dots), trailing ``window``-step mean (line) and its 95 % band; held-out accuracy where the
    runs were evaluated (large markers).

    Args:
        curves: ``metric, run, step, value, mean, lo, hi`` (:func:`rolling_band` per metric).
        evals: ``run, step, accuracy`` (held-out greedy accuracy).
    """
    runs = sorted(set(curves["run"]) | set(evals["run"]))
    colors = dict(zip(runs, palette(max(3, len(runs))), strict=False))
    with paper_style():
        fig, (a, b) = new_figure("double", 3.0, ncols=2)
        for run, g in curves[curves["metric"] == "reward"].groupby("run", sort=False):
            _band(a, g, colors[run], f"{run} reward ({window}-step mean, 95 % band)")
        sft = curves[curves["metric"].isin(["loss", "mean_token_accuracy"])]
        b2 = b.twinx() if (sft["metric"] == "mean_token_accuracy").any() else None
        for (run, metric), g in sft.groupby(["run", "metric"], sort=False):
            ax = b if metric == "loss" else b2
            color = colors[run] if metric == "loss" else palette(6)[4]
            _band(ax, g, color, f"{run} {_METRICS[metric]}")
        for run, e in evals.groupby("run", sort=False):
            ax = b2 if (b2 is not None and run in set(sft["run"])) else a
            ax.plot(
                e["step"],
                e["accuracy"],
                "D",
                ms=5,
                mfc="none",
                color=colors[run],
                label=f"{run} held-out accuracy",
                clip_on=False,
            )
        a.set(xlabel="step", ylabel="reward / accuracy", title="(a) RL: reward")
        a.set_ylim(0, 1)
        b.set(xlabel="step", ylabel="training loss", title="(b) SFT: loss, accuracy")
        handles, labels = a.get_legend_handles_labels()
        a.legend(handles, labels, **{**_BELOW, "ncols": 1})
        handles, labels = b.get_legend_handles_labels()
        if b2 is not None:
            b2.set_ylabel("accuracy")
            b2.set_ylim(0, 1)
            b2.grid(False)
            b2.spines["right"].set_visible(True)
            more = b2.get_legend_handles_labels()
            handles, labels = handles + more[0], labels + more[1]
        b.legend(handles, labels, **{**_BELOW, "ncols": 1})
    attach_provenance(fig, figure="13_training_curves", runs=runs, window=window)
    return fig


def plot_sparsity_vs_step(along, monitor):
    """Fig. 1 along time: update sparsity θ0 → θt vs step t per run; lines: the monitor's
    bitwise count of the stored bf16 values at every step; markers: the checkpoints through the
    diff engine, bitwise (circles) and |Δ| ≤ 1e-5 (squares).

    Args:
        along: ``run, step, sparsity_bitwise, sparsity_tol_1e-05`` (:func:`sparsity_vs_step`).
        monitor: ``run, step, sparsity_vs_init`` (:func:`stored_view` of the monitor).
    """
    runs = list(dict.fromkeys([*along["run"], *monitor["run"]]))
    colors = dict(zip(runs, palette(max(3, len(runs))), strict=False))
    with paper_style():
        fig, ax = new_figure(4.2, 3.0)
        for run in runs:
            m = monitor[monitor["run"] == run]
            if len(m):
                ax.plot(
                    [0, *m["step"]],
                    [100, *(100 * m["sparsity_vs_init"])],
                    "-",
                    lw=1,
                    color=colors[run],
                    label=f"{run} monitor (every step)",
                )
            d = along[along["run"] == run]
            ax.plot(
                d["step"],
                100 * d["sparsity_bitwise"],
                "o",
                ms=4,
                mfc="none",
                color=colors[run],
                label=f"{run} checkpoints, bitwise",
            )
            ax.plot(
                d["step"],
                100 * d[PAPER_SPARSITY],
                "s",
                ms=2.5,
                color=colors[run],
                label=f"{run} checkpoints, ≤ 1e-5",
            )
        ax.set(xlabel="training step t", ylabel="unchanged vs θ0 (bf16)")
        pct_axis(ax)
        low, high = ax.get_ylim()
        ax.set_ylim(low, min(high, 100.5))
        ax.legend(**_BELOW)
    attach_provenance(fig, figure="13_sparsity_vs_step", runs=runs)
    return fig


def plot_long_k_step(k_step, k_means, published):
    """(a) S_1 vs step from the monitor; (b) S_k vs k averaged over start steps: ours at k = 1
    (monitor) and k = c, 2c, … (checkpoints every c steps) beside the published GRPO runs.

    Args:
        k_step: ``run, source, k, step, sparsity`` (:func:`k_step_table`).
        k_means: ``run, source, k, sparsity`` (:func:`k_step_means`).
        published: ``model, learning_rate, k, sparsity`` (``published_k_step``).
    """
    runs = list(dict.fromkeys(k_means["run"]))
    colors = dict(zip(runs, palette(max(3, len(runs))), strict=False))
    with paper_style():
        fig, (a, b) = new_figure("double", 3.2, ncols=2)
        s1 = k_step[(k_step["source"] == "monitor") & (k_step["k"] == 1)]
        for run, g in s1.groupby("run", sort=False):
            a.plot(g["step"] + 1, 100 * g["sparsity"], "-", lw=0.8, color=colors[run], label=run)
        a.set(xlabel="step t", ylabel="S_1: θ(t−1) → θ(t) bit-identical", title="(a) per step")
        pct_axis(a)
        pub = published.copy()
        pub["label"] = pub["model"] + " lr " + pub["learning_rate"].map(lambda v: f"{v:.0e}")
        for i, (_, g) in enumerate(pub.groupby("label", sort=True)):
            b.plot(
                g["k"],
                100 * g["sparsity"],
                "--",
                lw=0.8,
                color="0.6",
                label="published GRPO runs (PULSE; one per model × lr)" if i == 0 else None,
            )
        ks = sorted(int(k) for k in k_means.loc[k_means["source"] == "checkpoints", "k"].unique())
        ours_k = f"k = 1 monitor, {ks[0]}, {2 * ks[0]}, … checkpoints" if ks else "k = 1 monitor"
        for run in runs:
            g = k_means[k_means["run"] == run].sort_values("k")
            b.plot(
                g["k"],
                100 * g["sparsity"],
                "o-",
                ms=3,
                color=colors[run],
                label=f"ours: {run} ({ours_k})",
            )
        b.set(xlabel="k (steps apart)", ylabel="S_k (bit-identical)", title="(b) S_k vs k")
        b.set_xscale("log", base=2)
        pct_axis(b)
        for ax in (a, b):
            low, high = ax.get_ylim()
            ax.set_ylim(low, min(high, 100))
        a.legend(**_BELOW)
        b.legend(**{**_BELOW, "ncols": 1})
    attach_provenance(fig, figure="13_k_step", runs=runs)
    return fig
