"""The figure registry: every figure of ``figures/`` by its id (the file stem), drawn from the
stored results (tables and saved diff reports under ``data/results/<notebook>/``) only.

``FIGURES["fig3_layer_module"]`` names the notebook whose results it reads and the function that
turns those tables into the figure, so figure → code is one hop. The notebooks call
:func:`draw_notebook` (through :meth:`Experiment.draw_figures`) after saving their results;
``rlsparse figures`` calls it for every notebook whose results exist, so figures can be
regenerated without retraining or re-reading checkpoints. Figures of ``SOURCE="hub"`` runs get a
``__hub`` suffix (where the figure has a hub variant) so they never overwrite the local ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rlsparse_lib import plotting
from rlsparse_lib.diff.report import layer_module_table
from rlsparse_lib.experiments.tables import slug
from rlsparse_lib.rules import PAPER_TOL, MaskRule


@dataclass(frozen=True)
class FigureSpec:
    """How one figure is drawn.

    Attributes:
        notebook: the notebook whose stored results the figure reads (``data/results/<it>/``).
        draw: ``draw(exp) -> Figure | None`` (None: the results hold nothing to draw).
        hub_variant: for ``SOURCE="hub"`` results the figure is saved as ``<id>__hub``; figures
            without a hub variant are drawn from local results only.
        local_only: drawn only for ``SOURCE="local"`` results.
    """

    notebook: str
    draw: Callable[[object], object]
    hub_variant: bool = False
    local_only: bool = False


def _cached(exp, key: str, load: Callable[[], object]) -> object:
    """Load a stored result once per drawing session (several figures read the same diff)."""
    cache = exp.__dict__.setdefault("_figure_cache", {})
    if key not in cache:
        cache[key] = load()
    return cache[key]


def _diff(exp, label: str):
    return _cached(exp, f"diff:{label}", lambda: exp.load_diff(label))


# ---- 00_quickstart ---------------------------------------------------------------------------
_QUICKSTART = {"SFT": "sft", "GRPO": "grpo"}


def _quickstart_layer_module(exp):
    tables = {k: _diff(exp, v).layer_module_table() for k, v in _QUICKSTART.items()}
    return plotting.plot_layer_module_sparsity(tables)


def _quickstart_binade(exp):
    lr = float(exp.load_table("sparsity")["lr"].iloc[0])
    tables = {k: _diff(exp, v).binade_table() for k, v in _QUICKSTART.items()}
    return plotting.plot_binade_curve(tables, update_sizes=(lr,))


def _quickstart_ulp_histogram(exp):
    tables = {k: _diff(exp, v).ulp_histogram() for k, v in _QUICKSTART.items()}
    return plotting.plot_ulp_histogram(tables)


# ---- 01–05 -----------------------------------------------------------------------------------
def _tolerance_curves(exp):
    return plotting.plot_tolerance_curves(exp.load_table("measured_local"), label="run")


def _sft_vs_rl(exp):
    bars = exp.load_table("sft_vs_rl").dropna(subset=["sparsity"])
    return plotting.plot_sft_vs_rl(bars) if len(bars) else None


def _layer_module(exp):
    rule = exp.recorded("rule", "bitwise")
    tables = {}
    for label in exp.recorded("panels", []):
        stored = exp.results / f"layer_module_{slug(label)}.csv"
        tables[label] = (
            exp.load_table(stored.stem)
            if stored.is_file()
            else layer_module_table(exp.load_table(f"tensors_{slug(label)}"), rule)
        )
    return plotting.plot_layer_module_sparsity(tables, rule=rule) if tables else None


def _update_rank(exp):
    runs = exp.load_table("rank_summary")["run"]
    return plotting.plot_rank_bars({r: exp.load_table(f"rank_by_module_{r}") for r in runs})


def _subnetwork_training(exp):
    return plotting.plot_training_curves(exp.load_table("history"))


# ---- 06_overlap ------------------------------------------------------------------------------
def _overlap(exp):
    return plotting.plot_overlap_heatmap(exp.load_table("matrix_o").set_index("mask"))


def _overlap_enrichment_binade(exp):
    enrich = exp.load_table("matrix_enrichment_binade").set_index("mask")
    return plotting.plot_overlap_heatmap(enrich, metric="enrichment_binade")


# ---- 07_dynamics -----------------------------------------------------------------------------
def _dynamics(exp):
    rule = (
        MaskRule("bitwise")
        if exp.recorded("rule", "bitwise") == "bitwise"
        else MaskRule("abs", PAPER_TOL)
    )
    acc = exp.load_table("accuracy")
    acc = acc[acc["step"] > 0]
    return plotting.plot_dynamics(
        exp.load_table("series"),
        rule=rule.describe(),
        accuracy={"held-out accuracy": list(acc["accuracy"])},
    )


def _parameter_fate(exp):
    return plotting.plot_parameter_fate({"GRPO": exp.load_table("fate").iloc[0].to_dict()})


def _per_step_monitor(exp):
    return plotting.plot_monitor(exp.load_table("monitor"))


# ---- 08_causes, 09_precision -----------------------------------------------------------------
def _causes(exp):
    return plotting.plot_causes(exp.load_table("causes"))


def _training_length(exp):
    return plotting.plot_length(exp.load_table("length"))


def _precision_modes(exp):
    return plotting.plot_precision_modes(exp.load_table("modes"))


def _precision_lr(exp):
    return plotting.plot_lr_scaling(exp.load_table("lr"))


def _precision_binade(exp):
    base_lr = float(exp.load_table("lr")["lr"].min())
    table = _diff(exp, "grpo_mixed").binade_table()
    return plotting.plot_binade_curve({"GRPO (mixed)": table}, update_sizes=(base_lr, 10 * base_lr))


def _precision_per_step(exp):
    return plotting.plot_monitor(exp.load_table("per_step"))


# ---- 10_pair_report (one pair; its stored diff is diffs/pair.json.gz) --------------------------
def _pair_tolerance_curve(exp):
    import pandas as pd

    return plotting.plot_tolerance_curves(pd.DataFrame([_diff(exp, "pair").headline()]))


def _pair_layer_module(exp):
    return plotting.plot_layer_module_sparsity({"pair": _diff(exp, "pair").layer_module_table()})


def _pair_binade(exp):
    return plotting.plot_binade_curve({"pair": _diff(exp, "pair").binade_table()})


def _pair_ulp_histogram(exp):
    return plotting.plot_ulp_histogram({"pair": _diff(exp, "pair").ulp_histogram()})


def _pair_rank(exp):
    if not (exp.results / "rank_by_module.csv").is_file():
        return None  # RANK=False
    return plotting.plot_rank_bars({"pair": exp.load_table("rank_by_module")})


#: every figure under figures/, by id (= file stem), in drawing order
# ---- 11_delta_sync ---------------------------------------------------------------------------
def _delta_sync_k_step(exp):
    from rlsparse_lib.plotting.delta_sync import plot_k_step

    return plot_k_step(exp.load_table("k_step"), exp.load_table("published_k_step"))


def _delta_sync_payload(exp):
    from rlsparse_lib.plotting.delta_sync import plot_payload

    return plot_payload(exp.load_table("budget_steps"))


def _delta_sync_cadence(exp):
    from rlsparse_lib.plotting.delta_sync import plot_cadence

    return plot_cadence(exp.load_table("budget_cadence"))


# ---- 13_long_horizon -------------------------------------------------------------------------
def _long_training(exp):
    from rlsparse_lib.plotting.long_horizon import plot_long_training

    window = int(exp.recorded("window"))
    return plot_long_training(exp.load_table("curves"), exp.load_table("evaluations"), window)


def _long_sparsity_vs_step(exp):
    from rlsparse_lib.experiments.long_runs import stored_view
    from rlsparse_lib.plotting.long_horizon import plot_sparsity_vs_step

    return plot_sparsity_vs_step(
        exp.load_table("sparsity_vs_step"), stored_view(exp.load_table("monitor"))
    )


def _long_dynamics(exp):
    series = exp.load_table("dynamics_series")
    return plotting.plot_dynamics(series[series["run"] == exp.recorded("dynamics_run")])


def _long_parameter_fate(exp):
    fate = exp.load_table("fate")
    fate.index = [f"{r} (0–{t})" for r, t in zip(fate["run"], fate["to_step"], strict=True)]
    return plotting.plot_parameter_fate(fate)


def _long_per_step_monitor(exp):
    monitor = exp.load_table("monitor")
    return plotting.plot_monitor(monitor[monitor["run"] == exp.recorded("dynamics_run")])


def _long_k_step(exp):
    from rlsparse_lib.experiments.long_runs import k_step_means
    from rlsparse_lib.plotting.long_horizon import plot_long_k_step

    k_step = exp.load_table("k_step")
    return plot_long_k_step(k_step, k_step_means(k_step), exp.load_table("published_k_step"))


# ---- 12_seeds_controls ------------------------------------------------------------------------
def _seed_intervals(exp):
    from rlsparse_lib.plotting.seeds import plot_seed_intervals

    return plot_seed_intervals(exp.load_table("summary"))


# ---- 14_quantized_storage ---------------------------------------------------------------------
def _storage(exp):
    from rlsparse_lib.plotting.quantized import plot_storage_sparsity

    return plot_storage_sparsity(exp.load_table("storage"))


FIGURES: dict[str, FigureSpec] = {
    "quickstart_layer_module": FigureSpec("00_quickstart", _quickstart_layer_module),
    "quickstart_binade": FigureSpec("00_quickstart", _quickstart_binade),
    "quickstart_ulp_histogram": FigureSpec("00_quickstart", _quickstart_ulp_histogram),
    "table6_tolerance_curves": FigureSpec("01_update_sparsity", _tolerance_curves, local_only=True),
    "fig1_sft_vs_rl": FigureSpec("02_sft_vs_rl", _sft_vs_rl, hub_variant=True),
    "fig3_layer_module": FigureSpec("03_layerwise", _layer_module, hub_variant=True),
    "table2_update_rank": FigureSpec("04_update_rank", _update_rank, hub_variant=True),
    "fig4_subnetwork_training": FigureSpec("05_subnetwork_finetuning", _subnetwork_training),
    "table4_overlap": FigureSpec("06_overlap", _overlap),
    "table4_overlap_enrichment_binade": FigureSpec("06_overlap", _overlap_enrichment_binade),
    "fig5-7_dynamics": FigureSpec("07_dynamics", _dynamics),
    "fig2_parameter_fate": FigureSpec("07_dynamics", _parameter_fate),
    "fig7_per_step_monitor": FigureSpec("07_dynamics", _per_step_monitor),
    "table5_causes": FigureSpec("08_causes", _causes),
    "causes_training_length": FigureSpec("08_causes", _training_length),
    "precision_modes": FigureSpec("09_precision", _precision_modes),
    "precision_lr": FigureSpec("09_precision", _precision_lr),
    "precision_binade": FigureSpec("09_precision", _precision_binade),
    "precision_per_step": FigureSpec("09_precision", _precision_per_step),
    "pair_tolerance_curve": FigureSpec("10_pair_report", _pair_tolerance_curve),
    "pair_layer_module": FigureSpec("10_pair_report", _pair_layer_module),
    "pair_binade": FigureSpec("10_pair_report", _pair_binade),
    "pair_ulp_histogram": FigureSpec("10_pair_report", _pair_ulp_histogram),
    "pair_update_rank": FigureSpec("10_pair_report", _pair_rank),
    "11_k_step": FigureSpec("11_delta_sync", _delta_sync_k_step, local_only=True),
    "11_payload": FigureSpec("11_delta_sync", _delta_sync_payload, local_only=True),
    "11_cadence": FigureSpec("11_delta_sync", _delta_sync_cadence, local_only=True),
    "12_seed_intervals": FigureSpec("12_seeds_controls", _seed_intervals, local_only=True),
    "13_training_curves": FigureSpec("13_long_horizon", _long_training, local_only=True),
    "13_sparsity_vs_step": FigureSpec("13_long_horizon", _long_sparsity_vs_step, local_only=True),
    "13_dynamics": FigureSpec("13_long_horizon", _long_dynamics, local_only=True),
    "13_parameter_fate": FigureSpec("13_long_horizon", _long_parameter_fate, local_only=True),
    "13_per_step_monitor": FigureSpec("13_long_horizon", _long_per_step_monitor, local_only=True),
    "13_k_step": FigureSpec("13_long_horizon", _long_k_step, local_only=True),
    "14_storage": FigureSpec("14_quantized_storage", _storage, local_only=True),
}


def notebooks() -> list[str]:
    """The notebooks that draw figures, in order."""
    return list(dict.fromkeys(spec.notebook for spec in FIGURES.values()))


def figure_ids(notebook: str) -> list[str]:
    """Ids of the figures drawn from ``notebook``'s results."""
    return [fig_id for fig_id, spec in FIGURES.items() if spec.notebook == notebook]


def saved_id(fig_id: str, source: str) -> str | None:
    """The file stem a figure is saved under for ``source`` results (None: not drawn)."""
    spec = FIGURES[fig_id]
    if source == "local":
        return fig_id
    if spec.local_only:
        return None
    return f"{fig_id}__{source}" if spec.hub_variant else fig_id


def draw_notebook(exp, only: set[str] | None = None) -> dict:
    """Draw the figures of ``exp.notebook`` from its stored results (not saved).

    Args:
        exp: the notebook's :class:`~rlsparse_lib.experiments.context.Experiment`.
        only: figure ids to draw (default: all of the notebook's).

    Returns:
        ``{saved id: matplotlib Figure}`` (hub runs: ``<id>__hub`` where the figure has one).
    """
    out = {}
    for fig_id in figure_ids(exp.notebook):
        target = saved_id(fig_id, exp.source)
        if target is None or (only is not None and fig_id not in only):
            continue
        fig = FIGURES[fig_id].draw(exp)
        if fig is not None:
            out[target] = fig
    return out
