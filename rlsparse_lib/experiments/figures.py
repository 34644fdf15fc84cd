"""Every notebook's figures, drawn from its stored results only (tables and saved diff reports).

The notebooks call :meth:`Experiment.draw_figures` after saving their results; ``rlsparse
figures`` calls the same functions for every notebook whose results exist, so figures can be
regenerated without retraining or re-reading checkpoints. Figure ids of ``SOURCE="hub"`` runs get a
``__hub`` suffix so they never overwrite the committed local ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rlsparse_lib import plotting
from rlsparse_lib.experiments.tables import slug
from rlsparse_lib.rules import MaskRule


def _ids(exp, figs: dict) -> dict:
    suffix = "" if exp.source == "local" else f"__{exp.source}"
    return {f"{k}{suffix}": v for k, v in figs.items()}


def _quickstart(exp) -> dict:
    reports = {"SFT": exp.load_diff("sft"), "GRPO": exp.load_diff("grpo")}
    lr = float(exp.load_table("sparsity")["lr"].iloc[0])
    return {
        "quickstart_layer_module": plotting.plot_layer_module_sparsity(reports),
        "quickstart_binade": plotting.plot_binade_curve(reports, update_sizes=(lr,)),
        "quickstart_ulp_histogram": plotting.plot_ulp_histogram(reports),
    }


def _update_sparsity(exp) -> dict:
    if exp.source != "local":
        return {}
    runs = exp.load_table("measured_local")["run"]
    return {
        "table6_tolerance_curves": plotting.plot_tolerance_curves(
            {r: exp.load_diff(r) for r in runs}
        )
    }


def _sft_vs_rl(exp) -> dict:
    bars = exp.load_table("sft_vs_rl").dropna(subset=["sparsity"])
    return _ids(exp, {"fig1_sft_vs_rl": plotting.plot_sft_vs_rl(bars)}) if len(bars) else {}


def _layerwise(exp) -> dict:
    panels = {
        label: exp.load_table(f"tensors_{slug(label)}") for label in exp.recorded("panels", [])
    }
    rule = exp.recorded("rule", "bitwise")
    return (
        _ids(exp, {"fig3_layer_module": plotting.plot_layer_module_sparsity(panels, rule=rule)})
        if panels
        else {}
    )


@dataclass
class _StoredRank:
    """A rank report's module table, as stored (what the rank bars need)."""

    module_table: object
    summary_row: dict

    def by_module(self):
        return self.module_table.copy()

    def summary(self) -> dict:
        return self.summary_row


def _update_rank(exp) -> dict:
    summary = exp.load_table("rank_summary")
    reports = {
        r["run"]: _StoredRank(exp.load_table(f"rank_by_module_{r['run']}"), r)
        for r in summary.to_dict("records")
    }
    return _ids(exp, {"table2_update_rank": plotting.plot_rank_bars(reports)})


def _subnetwork(exp) -> dict:
    return {"fig4_subnetwork_training": plotting.plot_training_curves(exp.load_table("history"))}


def _overlap(exp) -> dict:
    frame = exp.load_table("matrix_o").set_index("mask")
    enrich = exp.load_table("matrix_enrichment_binade").set_index("mask")
    return {
        "table4_overlap": plotting.plot_overlap_heatmap(frame),
        "table4_overlap_enrichment_binade": plotting.plot_overlap_heatmap(
            enrich, metric="enrichment_binade"
        ),
    }


@dataclass
class _StoredDynamics:
    """A dynamics report's series, as stored (what the dynamics plot needs)."""

    table: object
    rule: MaskRule
    labels: list
    provenance: dict

    def series(self):
        return self.table.copy()


def _dynamics(exp) -> dict:
    series = exp.load_table("series")
    rule = (
        MaskRule("bitwise")
        if exp.recorded("rule", "bitwise") == "bitwise"
        else MaskRule("abs", 1e-5)
    )
    dyn = _StoredDynamics(series, rule, list(series["label"]), {})
    acc = exp.load_table("accuracy")
    acc = acc[acc["step"] > 0]
    fate = exp.load_table("fate").iloc[0].to_dict()
    return {
        "fig5-7_dynamics": plotting.plot_dynamics(
            dyn, accuracy={"held-out accuracy": list(acc["accuracy"])}
        ),
        "fig2_parameter_fate": plotting.plot_parameter_fate({"GRPO": fate}),
        "fig7_per_step_monitor": plotting.plot_monitor(exp.load_table("monitor")),
    }


def _causes(exp) -> dict:
    return {
        "table5_causes": plotting.plot_causes(exp.load_table("causes")),
        "causes_training_length": plotting.plot_length(exp.load_table("length")),
    }


def _precision(exp) -> dict:
    modes = exp.load_table("modes")
    lr = exp.load_table("lr")
    grpo = exp.load_diff("grpo_mixed")
    base_lr = float(lr["lr"].min())
    return {
        "precision_modes": plotting.plot_precision_modes(modes),
        "precision_lr": plotting.plot_lr_scaling(lr),
        "precision_binade": plotting.plot_binade_curve(
            {"GRPO (mixed)": grpo}, update_sizes=(base_lr, 10 * base_lr)
        ),
        "precision_per_step": plotting.plot_monitor(exp.load_table("per_step")),
    }


FIGURES: dict[str, Callable] = {
    "00_quickstart": _quickstart,
    "01_update_sparsity": _update_sparsity,
    "02_sft_vs_rl": _sft_vs_rl,
    "03_layerwise": _layerwise,
    "04_update_rank": _update_rank,
    "05_subnetwork_finetuning": _subnetwork,
    "06_overlap": _overlap,
    "07_dynamics": _dynamics,
    "08_causes": _causes,
    "09_precision": _precision,
}
