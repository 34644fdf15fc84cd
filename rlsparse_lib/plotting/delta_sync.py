"""Delta weight sync: k-step sparsity beside the published curves, payload per codec, and the
anchor-cadence trade-off, from the k-step / budget tables."""

from __future__ import annotations

import numpy as np

from rlsparse_lib.plotting.style import new_figure, palette, paper_style, pct_axis

_BELOW = {"fontsize": "xx-small", "loc": "upper center", "bbox_to_anchor": (0.5, -0.3), "ncols": 2}
#: codecs drawn, with their legend names (the ``dense`` baseline is the anchor, drawn apart)
CODEC_LABELS = {
    "raw": "raw int32 index + value",
    "rlsparse": "rlsparse patch",
    "xor_zstd": "XOR + zstd (whole tensor)",
}


def plot_k_step(ours, published):
    """S_k vs k: ours (``label, k, sparsity``, averaged over t) beside the published runs
    (``model, learning_rate, k, sparsity``), in %; log2 k axis."""
    with paper_style():
        fig, (a, b) = new_figure("double", 3.0, ncols=2)
        c = palette(max(3, ours["label"].nunique()))
        for color, (label, g) in zip(c, ours.groupby("label", sort=False), strict=False):
            m = g.groupby("k", as_index=False)["sparsity"].mean()
            a.plot(m["k"], 100 * m["sparsity"], "o-", ms=3, color=color, label=f"ours: {label}")
        a.set_title("(a) our GRPO runs")
        pub = published.copy()
        pub["label"] = pub["model"] + " lr " + pub["learning_rate"].map(lambda v: f"{v:.0e}")
        grey = palette(pub["label"].nunique())
        for color, (label, g) in zip(grey, pub.groupby("label", sort=True), strict=False):
            b.plot(g["k"], 100 * g["sparsity"], "s--", ms=2, lw=1, color=color, label=label)
        for color, (label, g) in zip(c, ours.groupby("label", sort=False), strict=False):
            m = g.groupby("k", as_index=False)["sparsity"].mean()
            b.plot(
                m["k"], 100 * m["sparsity"], "o-", ms=3, lw=2, color=color, label=f"ours: {label}"
            )
        b.set_title("(b) beside the published (PULSE) runs")
        for ax in (a, b):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("k (steps apart)")
            ax.set_ylabel("S_k (bit-identical)")
            pct_axis(ax)
            low, high = ax.get_ylim()
            ax.set_ylim(low, min(high, 100))
        a.legend(**_BELOW)
        b.legend(**{**_BELOW, "ncols": 3})
    return fig


def plot_payload(steps):
    """Bytes per changed element per codec at every sync (``label, step_to,
    B_per_changed_<codec>``), and the per-step sparsity."""
    with paper_style():
        fig, (a, b) = new_figure("double", 3.0, ncols=2)
        c = palette(len(CODEC_LABELS))
        styles = ["o-", "s--", "^:", "d-."]
        for (label, g), style in zip(steps.groupby("label", sort=False), styles, strict=False):
            for color, (codec, name) in zip(c, CODEC_LABELS.items(), strict=True):
                a.plot(
                    g["step_to"],
                    g[f"B_per_changed_{codec}"],
                    style,
                    ms=3,
                    color=color,
                    label=f"{name} ({label})",
                )
            b.plot(g["step_to"], 100 * g["sparsity_bitwise"], style, ms=3, color="k", label=label)
        a.set_ylim(bottom=0)
        a.set_ylabel("B per changed element")
        a.set_title("(a) payload per codec")
        b.set_ylabel("S_1 (bit-identical)")
        b.set_title("(b) per-step sparsity")
        pct_axis(b)
        for ax in (a, b):
            ax.set_xlabel("step")
        a.legend(**_BELOW)
        b.legend(**_BELOW)
    return fig


def plot_cadence(cadence):
    """Mean MB per sync vs anchor cadence N per codec (``label, every, codec, bytes_per_sync``)."""
    with paper_style():
        fig, ax = new_figure("single", 3.0)
        c = palette(len(CODEC_LABELS))
        styles = ["o-", "s--", "^:", "d-."]
        for (label, g), style in zip(cadence.groupby("label", sort=False), styles, strict=False):
            for color, (codec, name) in zip(c, CODEC_LABELS.items(), strict=True):
                h = g[g["codec"] == codec].sort_values("every")
                ax.plot(
                    h["every"],
                    h["bytes_per_sync"] / 1e6,
                    style,
                    ms=3,
                    color=color,
                    label=f"{name} ({label})",
                )
            dense = g[g["codec"] == "dense"]["bytes_per_sync"]
            if len(dense):
                ax.axhline(float(np.max(dense)) / 1e6, color="0.5", lw=0.8, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("a dense anchor every N syncs")
        ax.set_ylabel("mean MB per sync")
        ax.legend(**{**_BELOW, "ncols": 1})
    return fig
