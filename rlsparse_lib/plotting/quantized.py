"""Quantized storage: a pair's update sparsity as trained (bf16) and as FP8 / MXFP4 copies store
it, from the storage table of notebook 14 (``storage``)."""

from __future__ import annotations

import numpy as np
from matplotlib.ticker import FuncFormatter

from rlsparse_lib.plotting.style import (
    attach_provenance,
    new_figure,
    palette,
    paper_style,
    pct_axis,
)


def plot_storage_sparsity(table):
    """Two panels, one group of bars per pair (``pair``), one bar per ``storage``: (a) update
    sparsity of the quantized projections (``proj_sparsity``), (b) the share of the weights that
    changed in bf16 which the stored copy still shows changed (``visible``)."""
    pairs = list(dict.fromkeys(table["pair"]))
    storages = list(dict.fromkeys(table["storage"]))
    colors = palette(len(storages))
    x = np.arange(len(pairs))
    width = 0.8 / len(storages)
    with paper_style():
        fig, (a, b) = new_figure("double", 2.8, ncols=2)
        for i, storage in enumerate(storages):
            rows = table[table["storage"] == storage].set_index("pair").reindex(pairs)
            offset = (i - (len(storages) - 1) / 2) * width
            for ax, column in ((a, "proj_sparsity"), (b, "visible")):
                ax.bar(
                    x + offset,
                    100 * rows[column].astype(float),
                    width,
                    color=colors[i],
                    label=storage if ax is a else None,
                )
        a.set(title="(a) update sparsity of the projections", ylim=(0, 100))
        pct_axis(a)
        b.set(title="(b) bf16 changes still visible", yscale="log", ylim=(0.01, 150))
        b.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
        for ax in (a, b):
            ax.set_xticks(x, pairs, fontsize="x-small", rotation=30, ha="right")
            ax.grid(axis="y", alpha=0.3)
        fig.legend(ncols=min(len(storages), 3), fontsize="x-small", loc="outside upper center")
    attach_provenance(fig, figure="14_storage", pairs=pairs, storages=storages)
    return fig
