"""Figures: the numbers they draw, every figure renders, provenance metadata, reproducible bytes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from rlsparse_lib import plotting
from rlsparse_lib.analysis.dynamics import sparsity_dynamics
from rlsparse_lib.analysis.overlap import overlap_matrix
from rlsparse_lib.analysis.rank import update_ranks
from rlsparse_lib.diff.engine import diff_checkpoints
from rlsparse_lib.diff.report import layer_module_table
from rlsparse_lib.io.synthetic import LlamaShape, fp32_master_update, write_pair
from rlsparse_lib.masks.ops import build_mask, random_mask_like

SHAPE = LlamaShape(vocab=96, hidden=32, intermediate=64, layers=3, heads=4, kv_heads=2)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("plots")
    for name, lr in (("a", 1e-6), ("b", 3e-6)):
        write_pair(
            root / f"{name}0", root / f"{name}1", SHAPE.tensors(), fp32_master_update(lr, 200)
        )
    rep_a = diff_checkpoints(root / "a0", root / "a1", progress=False)
    rep_b = diff_checkpoints(root / "b0", root / "b1", progress=False)
    build_mask(root / "a0", root / "a1", root / "a.mask", progress=False)
    build_mask(root / "b0", root / "b1", root / "b.mask", progress=False)
    random_mask_like(root / "a.mask", root / "r.mask", seed=0, progress=False)
    mat = overlap_matrix([root / "a.mask", root / "b.mask", root / "r.mask"], progress=False)
    dyn = sparsity_dynamics(root / "a0", [root / "a1", root / "b1"], progress=False)
    rank = update_ranks(root / "a0", root / "a1", progress=False)
    return {"a": rep_a, "b": rep_b, "matrix": mat, "dyn": dyn, "rank": rank}


def test_layer_module_table_numbers(results) -> None:
    rep = results["a"]
    t = rep.layer_module_table()
    df = rep.table()
    row = t[(t["layer"] == 1) & (t["module"] == "mlp.up_proj")].iloc[0]
    src = df[df["name"] == "model.layers.1.mlp.up_proj.weight"].iloc[0]
    assert row["sparsity"] == pytest.approx(100 * src["n_unchanged_bitwise"] / src["numel"])
    mean = t[(t["layer"] == 2) & (t["module"] == "mean over tensors")].iloc[0]["sparsity"]
    layer2 = df[df["layer"] == 2]
    assert mean == pytest.approx(100 * (layer2["n_unchanged_bitwise"] / layer2["numel"]).mean())
    assert set(t["layer"]) == {0, 1, 2}  # embeddings / lm_head / final norm are not layers
    # the same table from the stored per-tensor CSV (what figures are redrawn from)
    stored = layer_module_table(rep.table(), "bitwise")
    assert stored.equals(t)


def test_every_figure_renders(results, tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    a, b, dyn, mat = results["a"], results["b"], results["dyn"], results["matrix"]
    runs = [{"run": "a", **a.headline()}, {"run": "b", **b.headline()}]
    figs = {
        "fig3": plotting.plot_layer_module_sparsity(
            {"lr 1e-6": a.layer_module_table(), "lr 3e-6": b.layer_module_table()}
        ),
        "tol": plotting.plot_tolerance_curves(runs),
        "fig1": plotting.plot_sft_vs_rl(
            [
                {"family": "Tulu 8B", "stage": "SFT", "sparsity": 0.068},
                {"family": "Tulu 8B", "stage": "RL", "sparsity": 0.814},
            ]
        ),
        "heat": plotting.plot_overlap_heatmap(mat.frame("o"), baseline=mat.frame("o_random")),
        "rank": plotting.plot_rank_bars({"a": results["rank"].by_module()}),
        "dyn": plotting.plot_dynamics(
            dyn.series(), rule=dyn.rule.describe(), accuracy={"MATH500": [0.5, 0.6]}
        ),
        "fate": plotting.plot_parameter_fate(dyn.fate()),
        "ulp": plotting.plot_ulp_histogram(a.ulp_histogram()),
        "binade": plotting.plot_binade_curve({"a": a.binade_table()}, update_sizes=[1e-6]),
        "monitor": plotting.plot_monitor(
            pd.DataFrame({"step": [1, 2], "sparsity_step": [0.9, 0.95]})
        ),
    }
    tol_line = figs["tol"].axes[0].lines[0].get_ydata()
    assert tol_line[0] == pytest.approx(100 * a.sparsity)
    assert tol_line[-1] == pytest.approx(100 * a.sparsity_at(max(a.tolerances)))
    assert len(figs["fig3"].axes) == 2 and len(figs["dyn"].axes) == 4  # 3 panels + accuracy axis
    heat_text = [t.get_text() for t in figs["heat"].axes[0].texts]
    o = results["matrix"].frame("o")
    assert (
        f"{100 * o.iat[0, 1]:.1f}\n({100 * results['matrix'].frame('o_random').iat[0, 1]:.1f})"
        in heat_text
    )
    bars = [p.get_width() for p in figs["fate"].axes[0].patches]
    fate = dyn.fate()
    assert bars == pytest.approx([100 * fate[k] for k in ("never", "cancelled", "final")])
    for name, fig in figs.items():
        paths = plotting.save_figure(fig, tmp_path / name)
        assert [p.suffix for p in paths] == [".png", ".pdf"] and all(
            p.stat().st_size > 1000 for p in paths
        )
    assert plt.get_fignums() == []  # closed after saving


def test_provenance_metadata_and_reproducible_bytes(results, tmp_path: Path) -> None:
    out = []
    for i in range(2):
        fig = plotting.plot_binade_curve(results["a"].binade_table(), update_sizes=[1e-6])
        out.append(
            plotting.save_figure(
                fig, tmp_path / f"run{i}" / "binade.png", provenance={"family": "tiny"}
            )
        )
    (png0, pdf0), (png1, pdf1) = out
    assert png0.read_bytes() == png1.read_bytes() and pdf0.read_bytes() == pdf1.read_bytes()
    text = Image.open(png0).text
    prov = json.loads(text["Description"])
    assert prov["figure"] == "precision_binade_curve" and prov["family"] == "tiny"
    assert prov["params"] == {"update_sizes": [1e-6]}
    assert prov["panels"] == [""]
    # nothing that changes without the figure changing: no commit id, no date
    assert "git" not in prov and "Source" not in text
    pdf = pdf0.read_bytes()
    assert b"CreationDate" not in pdf and b"precision_binade_curve" in pdf


def test_redrawing_an_unchanged_figure_leaves_the_file_untouched(results, tmp_path: Path) -> None:
    def draw(sizes: list[float]) -> list[Path]:
        fig = plotting.plot_binade_curve(results["a"].binade_table(), update_sizes=sizes)
        return plotting.save_figure(fig, tmp_path / "binade")

    paths = draw([1e-6])
    for p in paths:
        os.utime(p, ns=(1, 1))
    assert draw([1e-6]) == paths
    assert [p.stat().st_mtime_ns for p in paths] == [1, 1]  # not rewritten
    draw([1e-5])  # a different figure is written
    assert all(p.stat().st_mtime_ns != 1 for p in paths)


def test_bad_plot_input(results) -> None:
    from rlsparse_lib.errors import ConfigError

    with pytest.raises(ConfigError, match="columns"):
        plotting.plot_sft_vs_rl([{"family": "x", "sparsity": 0.5}])
    with pytest.raises(ConfigError, match="no rule"):
        results["a"].layer_module_table(rule="tol_0.5")
    with pytest.raises(ConfigError, match="unknown rule"):
        results["a"].layer_module_table(rule="sparsity_1e-05")
    assert np.isfinite(results["a"].layer_module_table(rule="tol_1e-05")["sparsity"]).all()
    with pytest.raises(ConfigError, match="lacks columns"):
        plotting.plot_layer_module_sparsity({"x": results["a"].table()})
    with pytest.raises(ConfigError, match="sparsity_bitwise"):
        plotting.plot_tolerance_curves([{"run": "x", "sparsity_1e-05": 0.5}])


def test_figure_modules_take_tables_only() -> None:
    """Plot functions live by what they plot and read tables, never report objects."""
    import inspect

    from rlsparse_lib.plotting import dynamics, overlap, precision, rank, sparsity, training

    for mod in (dynamics, overlap, precision, rank, sparsity, training):
        src = inspect.getsource(mod)
        assert "hasattr(" not in src
        assert ".provenance" not in src


def test_percent_axes_stop_at_100_and_legends_sit_off_the_curves(results) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    dyn = results["dyn"]
    figs = [
        plotting.plot_dynamics(
            dyn.series(), rule=dyn.rule.describe(), accuracy={"acc": [0.5, 0.6]}
        ),
        plotting.plot_binade_curve({"a": results["a"].binade_table()}, update_sizes=[1e-6]),
        plotting.plot_monitor(pd.DataFrame({"step": [1, 2], "sparsity_step": [0.99, 1.0]})),
    ]
    checked = 0
    for fig in figs:
        fig.canvas.draw()
        for ax in fig.axes:
            if isinstance(ax.yaxis.get_major_formatter(), PercentFormatter):
                checked += 1
                assert ax.get_ylim()[1] <= 100, ax.get_ylabel()
            legend = ax.get_legend()
            if legend is not None:  # wholly below the axes: it cannot cover a curve
                box = legend.get_window_extent()
                assert box.y1 <= ax.get_window_extent().y0, ax.get_ylabel()
        plt.close(fig)
    assert checked >= 4
    binade_label = figs[1].axes[0].get_xlabel()
    assert binade_label.startswith("$") and r"\theta_0" in binade_label  # mathtext
