"""Training curves (Fig. 4) from the runs' history table."""

from __future__ import annotations

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
