"""Precision views: |Δ| in ULPs, sparsity per |θ0| binade, precision modes and learning rate,
from :meth:`DiffReport.ulp_histogram` / :meth:`DiffReport.binade_table` and the notebooks' CSVs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from rlsparse_lib.plotting.style import (
    as_panels,
    attach_provenance,
    new_figure,
    palette,
    paper_style,
    pct_axis,
)
from rlsparse_lib.rules import PAPER_SPARSITY, sparsity_column


def plot_ulp_histogram(histograms):
    """|Δ| of the changed weights in ULPs of θ0 (log2 bins), as % of changed weights.

    Args:
        histograms: a :meth:`DiffReport.ulp_histogram` table (``log2_ratio, fraction``) or
            ``{label: table}``.
    """
    panels = as_panels(histograms, "")
    with paper_style():
        fig, ax = new_figure("single", 2.4)
        width = 0.8 / len(panels)
        for i, ((label, h), color) in enumerate(
            zip(panels.items(), palette(len(panels)), strict=True)
        ):
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
        pct_axis(ax)
        ax.legend(fontsize="x-small")
    attach_provenance(fig, figure="precision_ulp_histogram", panels=list(panels))
    return fig


def plot_binade_curve(tables, update_sizes: Sequence[float] = ()):
    """Sparsity per |θ0| binade (line) over the share of weights in each binade (bars).

    If absorption by the compare dtype's rounding explains the sparsity (bf16; or fp16 for a
    ``compare_dtype="float16"`` view), the curve rises with |θ0|. Dotted lines mark, for each
    assumed per-step update size u, the |θ0| above which one step of size u is absorbed in the
    first table's compare dtype.

    Args:
        tables: a :meth:`DiffReport.binade_table` (``compare_dtype, exponent, sparsity,
            share_of_weights``) or ``{label: table}``.
        update_sizes: per-step update sizes to mark.
    """
    from rlsparse_lib.analysis.absorption import absorption_threshold

    panels = as_panels(tables, "")
    with paper_style():
        fig, ax = new_figure(4.2, 2.8)
        share_ax = ax.twinx()
        share_ax.grid(False)
        colors = palette(len(panels) + 3)
        first = None
        for (label, b), color in zip(panels.items(), colors, strict=False):
            b = b[b["exponent"].map(_is_int)]
            e = b["exponent"].astype(int)
            if first is None:
                first = panels[label]
                share_ax.bar(e, 100 * b["share_of_weights"], width=0.8, color="#dddddd", zorder=0)
            ax.plot(
                e,
                100 * b["sparsity"],
                "o-",
                ms=3,
                color=color,
                label=label or "sparsity",
                zorder=3,
                clip_on=False,
            )
        if first is not None and update_sizes:
            dtype = first["compare_dtype"].mode().iat[0]
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
        ax.set_xlabel(r"$|\theta_0|$ binade $e$:  $2^{e} \leq |\theta_0| < 2^{e+1}$")
        ax.set_ylabel("update sparsity")
        share_ax.set_ylabel("% of weights (bars)", color="#888888")
        pct_axis(ax)
        pct_axis(share_ax)
        ax.set_ylim(0, 100)
        # under the axes: the curve and the threshold lines cross every corner of the panel
        ax.legend(fontsize="xx-small", loc="upper center", bbox_to_anchor=(0.5, -0.25))
    attach_provenance(
        fig,
        figure="precision_binade_curve",
        params={"update_sizes": [float(u) for u in update_sizes]},
        panels=list(panels),
    )
    return fig


def _is_int(e: object) -> bool:
    """A binade exponent (not ``zero/subnormal`` / ``inf/nan``), also when read back from CSV."""
    if isinstance(e, int | np.integer):
        return True
    if isinstance(e, float | np.floating):
        return math.isfinite(e) and float(e).is_integer()
    return isinstance(e, str) and e.lstrip("-").isdigit()


def plot_precision_modes(modes):
    """Sparsity of the saved bf16 weights per precision mode, and of the fp32 master weights
    (``kind, mode, sparsity_bitwise`` and optionally ``fp32_master_sparsity_bitwise``)."""
    import pandas as pd
    import seaborn as sns

    bitwise = sparsity_column("bitwise")
    rows = []
    for r in modes.to_dict("records"):
        run = f"{r['kind'].upper()} · {r['mode']}"
        rows.append({"run": run, "view": "saved bf16 checkpoint", "pct": 100 * r[bitwise]})
        master = r.get(f"fp32_master_{bitwise}")
        if master is not None and master == master:
            rows.append({"run": run, "view": "fp32 master weights", "pct": 100 * master})
    df = pd.DataFrame(rows)
    with paper_style():
        fig, ax = new_figure("double", 2.8)
        sns.barplot(data=df, x="run", y="pct", hue="view", palette=palette(2), ax=ax)
        for cont in ax.containers:
            ax.bar_label(cont, fmt="%.1f%%", fontsize="x-small", padding=1)
        ax.set(xlabel="", ylabel="update sparsity (bitwise)", ylim=(0, 105))
        pct_axis(ax)
        ax.legend(fontsize="x-small", loc="upper right")
    attach_provenance(fig, figure="precision_modes", rows=df.to_dict("records"))
    return fig


def plot_lr_scaling(lr):
    """Update sparsity of the saved bf16 weights vs learning rate (``lr`` and sparsity columns)."""
    c = palette(2)
    with paper_style():
        fig, ax = new_figure("single", 2.4)
        ax.plot(lr["lr"], 100 * lr[sparsity_column("bitwise")], "o-", color=c[0], label="bitwise")
        ax.plot(lr["lr"], 100 * lr[PAPER_SPARSITY], "s--", color=c[1], label="|Δ| ≤ 1e-5")
        ax.set(xscale="log", xlabel="learning rate", ylabel="update sparsity")
        pct_axis(ax)
        ax.legend(fontsize="x-small")
    attach_provenance(fig, figure="precision_lr", rows=lr.to_dict("records"))
    return fig
