"""One figure style for every rlsparse plot, and saving with provenance.

:func:`paper_style` is the shared look (seaborn "ticks", paper context, colour-blind palette,
fixed colours per module kind); :func:`save_figure` writes PNG and PDF atomically with the
provenance (rlsparse version, inputs and parameters) in the file metadata. Re-rendering the same
data gives byte-identical files, and an unchanged file is not rewritten.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from rlsparse_lib import __version__
from rlsparse_lib.atomic import write_bytes_if_changed

#: single- and double-column widths in inches
WIDTH = {"single": 3.5, "double": 7.2}
#: module kinds in the paper's Figure 3 order
MODULE_ORDER = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
    "input_layernorm",
    "post_attention_layernorm",
)
#: parameter-fate colours (never / cancelled / final)
FATE_COLORS = {"never": "#bbbbbb", "cancelled": "#e69f00", "final": "#0072b2"}
_PROVENANCE_ATTR = "_rlsparse_provenance"


def palette(n: int | None = None) -> list:
    """The colour-blind-safe palette used everywhere."""
    import seaborn as sns

    return sns.color_palette("colorblind", n)


def module_colors(modules: Sequence[str]) -> dict[str, tuple]:
    """A fixed colour per module kind (the paper's kinds first, then the rest in given order)."""
    ordered = [m for m in MODULE_ORDER if m in modules] + sorted(
        m for m in set(modules) if m not in MODULE_ORDER
    )
    known = {m: i for i, m in enumerate(MODULE_ORDER)}
    colors = palette(10) + palette(10)[::-1]
    out, extra = {}, len(MODULE_ORDER)
    for m in ordered:
        if m in known:
            out[m] = colors[known[m] % len(colors)]
        else:
            out[m] = colors[extra % len(colors)]
            extra += 1
    return out


def style_rc() -> dict:
    """matplotlib rc parameters of the rlsparse style."""
    import seaborn as sns
    from cycler import cycler

    rc = {}
    rc.update(sns.axes_style("ticks"))
    rc.update(sns.plotting_context("paper", font_scale=1.15))
    rc.update(
        {
            "axes.prop_cycle": cycler(color=palette()),
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.color": "#e6e6e6",
            "grid.linewidth": 0.6,
            "legend.frameon": False,
            "figure.dpi": 100,
            "savefig.dpi": 200,
            "savefig.bbox": "tight",
            "pdf.fonttype": 42,
            "svg.hashsalt": "rlsparse",
        }
    )
    return rc


@contextlib.contextmanager
def paper_style() -> Iterator[None]:
    """Context in which figures get the rlsparse style."""
    import matplotlib.pyplot as plt

    with plt.rc_context(style_rc()):
        yield


def new_figure(width: str | float = "single", height: float = 2.6, ncols: int = 1, **kw):
    """(fig, axes) of the given column ``width`` (``single``/``double`` or inches)."""
    import matplotlib.pyplot as plt

    w = WIDTH.get(width, width) if isinstance(width, str) else float(width)
    return plt.subplots(1, ncols, figsize=(w, height), layout="constrained", **kw)


def attach_provenance(fig, **info) -> None:
    """Record what a figure shows (merged into its file metadata by :func:`save_figure`)."""
    prov = dict(getattr(fig, _PROVENANCE_ATTR, {}))
    prov.update(info)
    setattr(fig, _PROVENANCE_ATTR, prov)


def figure_provenance(fig, extra: dict | None = None) -> dict:
    """Provenance stored in a saved figure: tool and matplotlib versions, figure id, inputs and
    parameters. Nothing that changes when the figure does not (no commit id, no date), so
    redrawing identical data gives identical files."""
    import matplotlib

    prov = {"tool": f"rlsparse {__version__}", "matplotlib": matplotlib.__version__}
    prov.update(getattr(fig, _PROVENANCE_ATTR, {}))
    prov.update(extra or {})
    return prov


def save_figure(
    fig,
    path: str | Path,
    *,
    provenance: dict | None = None,
    formats: Sequence[str] = ("png", "pdf"),
    close: bool = True,
) -> list[Path]:
    """Save ``fig`` as ``<path stem>.<fmt>`` for each format, with provenance metadata.

    PNG: text chunks ``Title``, ``Software`` and ``Description`` (the provenance JSON). PDF:
    ``Title``, ``Creator`` and ``Subject`` (the provenance JSON), no creation date. The bytes
    depend only on the figure, and a file whose bytes would not change is left untouched, so
    redrawing unchanged results leaves a checkout clean.

    Returns:
        The written paths.
    """
    import matplotlib.pyplot as plt

    stem = Path(path)
    if stem.suffix.lstrip(".") in ("png", "pdf", "svg"):
        stem = stem.with_suffix("")
    prov = figure_provenance(fig, provenance)
    text = json.dumps(prov, sort_keys=True, default=str)
    title = str(prov.get("figure", stem.name))
    meta = {
        "png": {
            "Title": title,
            "Software": prov["tool"],
            "Description": text,
        },
        "pdf": {
            "Title": title,
            "Creator": prov["tool"],
            "Subject": text,
            "CreationDate": None,
        },
        "svg": {"Title": title, "Creator": prov["tool"], "Description": text},
    }
    out = []
    for fmt in formats:
        target = stem.with_name(f"{stem.name}.{fmt}")
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, metadata=meta[fmt])
        write_bytes_if_changed(target, buf.getvalue())
        out.append(target)
    if close:
        plt.close(fig)
    return out


def pct_axis(ax, axis: str = "y") -> None:
    """Format an axis holding percentages (0–100) with a % sign."""
    from matplotlib.ticker import PercentFormatter

    (ax.yaxis if axis == "y" else ax.xaxis).set_major_formatter(PercentFormatter(100))


def as_panels(obj, default_label: str = "") -> dict:
    """``{label: data}`` from a mapping, or one unlabelled panel."""
    from collections.abc import Mapping

    return dict(obj) if isinstance(obj, Mapping) else {default_label: obj}
