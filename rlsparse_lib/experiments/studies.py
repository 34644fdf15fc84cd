"""The computations of the notebooks, one function per step, so a notebook cell is a few calls.

Each function takes the notebook's :class:`~rlsparse_lib.experiments.Experiment` (for its cached
runs and diffs) and returns rows or reports; the notebook saves them with ``exp.table`` (whose
names the figure functions in ``figures.py`` read back) and displays them.
"""

from __future__ import annotations

from rlsparse_lib.errors import ConfigError
from rlsparse_lib.experiments.runs import learning_rate
from rlsparse_lib.experiments.tables import final_step, run_row

#: headline columns of a run row (:meth:`DiffReport.headline`, ``rules.sparsity_column``)
BITWISE = "sparsity_bitwise"
TOL_1E5 = "sparsity_tol_1e-05"
#: the algorithms of 01 (Table 1 / 6), in table order: online RL, preference, supervised
ALGORITHMS = (
    "grpo",
    "rloo",
    "ppo",
    "prime",
    "dpo-own",
    "dpo-external",
    "orpo",
    "simpo",
    "kto",
    "rft",
    "sft",
)
#: the columns 01 shows for its local runs
MEASURED_COLUMNS = (
    "run",
    "kind",
    "steps",
    "lr",
    "acc_before",
    "acc_after",
    "sparsity_bitwise",
    "sparsity_tol_1e-08",
    "sparsity_tol_1e-07",
    "sparsity_tol_1e-06",
    "sparsity_tol_1e-05",
    "sparsity_tol_0.0001",
    "sparsity_rel",
)
#: what 00 records per run
QUICKSTART_RECORD = ("n_params", "n_changed", BITWISE, TOL_1E5, "acc_before", "acc_after")
#: 02's stages: label -> config
STAGES = {"SFT": "sft", "GRPO": "grpo", "RLOO": "rloo", "DPO": "dpo-own", "KTO": "kto"}
#: 08's controlled pairs: (factor, setting, config)
CAUSES = (
    ("SFT data", "in-distribution (RFT)", "rft"),
    ("SFT data", "out-of-distribution (SFT)", "sft"),
    ("DPO data", "in-distribution (own samples)", "dpo-own"),
    ("DPO data", "out-of-distribution (external)", "dpo-external"),
    ("KL penalty", "on (β=0.04)", "grpo-kl"),
    ("KL penalty", "off (β=0)", "grpo"),
    ("gradient clipping", "on (max-norm 1.0)", "grpo"),
    ("gradient clipping", "off", "grpo-noclip"),
)
#: 06's axes of the paper's Table 4: axis -> (run 1, run 2)
OVERLAP_AXES = {
    "seed": ("GRPO seed 0", "GRPO seed 1"),
    "data": ("GRPO seed 0", "GRPO chain_sum"),
    "seed + data + algorithm": ("GRPO seed 0", "DPO own samples"),
}
#: the overlap matrices 06 saves (``matrix_<metric>.csv``)
OVERLAP_METRICS = (
    "o",
    "o_random",
    "jaccard",
    "jaccard_random",
    "enrichment_global",
    "enrichment_tensor",
    "enrichment_binade",
)


# ---- rows ------------------------------------------------------------------------------------


def run_rows(runs: dict, reports: dict) -> list[dict]:
    """:func:`run_row` of every ``{label: run}`` with its ``{label: report}``."""
    return [run_row(label, run, reports[label]) for label, run in runs.items()]


def pick(row: dict, keys) -> dict:
    """The entries of ``row`` named in ``keys`` (in ``row``'s order)."""
    keys = set(keys)
    return {k: v for k, v in row.items() if k in keys}


def rows_by(table, key: str, columns) -> dict:
    """``{row[key]: {column: value}}`` of a DataFrame (e.g. a record keyed by run)."""
    return {label: {c: row[c] for c in columns} for label, row in table.set_index(key).iterrows()}


def labelled_rows(values: dict, key: str = "run") -> list[dict]:
    """``{label: {...}}`` -> ``[{key: label, ...}]``."""
    return [{key: label, **v} for label, v in values.items()]


def history_rows(runs: dict) -> list[dict]:
    """Loss and reward of every logged step of every ``{label: run}``."""
    return [
        {"run": label, "step": h["step"], "loss": h.get("loss"), "reward": h.get("reward")}
        for label, run in runs.items()
        for h in run.manifest["history"]
    ]


def percent_style(table, columns, digits: int = 2):
    """``table`` for display with ``columns`` as percentages (missing values as ``–``)."""
    return table.style.format({c: f"{{:.{digits}%}}" for c in columns}, na_rep="–")


# ---- 01, 02, 08: runs diffed against their init ---------------------------------------------
def measure_configs(exp, configs) -> list[dict]:
    """Train (or reuse) each config, diff its final checkpoint against its init (cached under the
    config's name) and return one :func:`run_row` per config."""
    runs = {c: exp.run(c) for c in configs}
    return run_rows(runs, exp.run_diffs(runs))


def sft_vs_rl_local(exp) -> list[dict]:
    """02, local: one bar per stage and rule (bitwise, 1e-5) with accuracy before and after."""
    rows = []
    for stage, config in STAGES.items():
        run = exp.run(config)
        row = run_row(stage, run, exp.run_diff(run, config))
        for rule, column in (("bitwise", BITWISE), ("1e-05", TOL_1E5)):
            rows.append(
                {
                    "family": f"SmolLM2-135M ({rule})",
                    "stage": stage,
                    "sparsity": row[column],
                    "acc_before": row["acc_before"],
                    "acc_after": row["acc_after"],
                }
            )
    return rows


def sft_vs_rl_hub(exp) -> list[dict]:
    """02, hub: the SFT and the RL stage of each of the paper's families, at 1e-5."""
    from rlsparse_lib.experiments.registry import diff_pairs_from_hub, load_pairs

    rl = {p["id"]: p for p in load_pairs("paper", "rl")}
    rows = []
    for sft in load_pairs("paper", "sft"):
        for stage, pair in (("SFT", sft), ("RL", rl[sft["rl_pair"]])):
            (r,) = diff_pairs_from_hub(exp, [pair])
            rows.append(
                {
                    "family": sft["id"].rsplit("-", 1)[0],
                    "stage": stage,
                    "status": r["status"],
                    "sparsity": r.get(TOL_1E5),
                }
            )
    return rows


def causes_rows(exp, factors=CAUSES) -> list[dict]:
    """08: one :func:`run_row` per (factor, setting, config), tagged with factor and setting."""
    rows = []
    for factor, setting, config in factors:
        run = exp.run(config)
        row = run_row(config, run, exp.run_diff(run, config))
        rows.append({"factor": factor, "setting": setting, **row})
    return rows


def training_length_rows(exp, run, label: str = "grpo") -> list[dict]:
    """08: the sparsity columns of ``run`` at every checkpoint after the init."""
    rows = []
    for c in run.manifest["checkpoints"]:
        if c["step"] > 0:
            report = exp.run_diff(run, f"{label}_step{c['step']}", step=c["step"])
            row = run_row(label, run, report)
            rows.append(
                {"step": c["step"], **{k: v for k, v in row.items() if k.startswith("sparsity")}}
            )
    return rows


# ---- 03: layer x module -----------------------------------------------------------------------
def layerwise_reports(exp) -> dict:
    """03: the two panels' diff reports (our GRPO and DPO runs, or the paper's hub pairs)."""
    if exp.source == "hub":
        from rlsparse_lib.experiments.registry import load_pairs

        pairs = {p["id"]: p for p in load_pairs("paper", "rl")}
        panels = {
            "DPO (Tulu-3-8B)": pairs["tulu3-8b-dpo"],
            "PRIME (Eurus-2-7B)": pairs["eurus2-7b-prime"],
        }
        return {
            k: exp.diff(p["base"], p["tuned"], p["id"], compare_dtype="bfloat16")
            for k, p in panels.items()
        }
    runs = {"GRPO": exp.run("grpo"), "DPO": exp.run("dpo-own")}
    return {k: exp.run_diff(r, k.lower()) for k, r in runs.items()}


def save_layerwise_tables(exp, reports: dict, rule: str) -> None:
    """03: ``tensors_<panel>.csv`` and ``layer_module_<panel>.csv`` (at ``rule``) per panel."""
    from rlsparse_lib.diff.report import layer_module_table
    from rlsparse_lib.experiments.tables import slug

    for label, report in reports.items():
        exp.table(f"tensors_{slug(label)}", report.table())
        exp.table(f"layer_module_{slug(label)}", layer_module_table(report, rule))


def module_sparsity(report):
    """03: sparsity per module kind, count-weighted over all layers."""
    columns = ["module", "n_tensors", "numel", "sparsity_bitwise", "sparsity_tol_1e-05"]
    return report.aggregate("module")[columns]


def group_sparsity(reports: dict) -> dict:
    """03: ``{panel: {group: bitwise sparsity}}`` (attention, mlp, norm, ...)."""
    return {
        label: {r["group"]: r["sparsity_bitwise"] for r in report.group_rows("group")}
        for label, report in reports.items()
    }


# ---- 04: rank ---------------------------------------------------------------------------------
def rank_inputs(exp) -> dict:
    """04: ``{label: (base, tuned, reported rank %)}``: our runs, or the paper's Table 2 pairs."""
    if exp.source == "hub":
        from rlsparse_lib.experiments.registry import load_pairs

        pairs = [p for p in load_pairs("paper", "rl") if "rank_pct" in p.get("reported", {})]
        return {p["id"]: (p["base"], p["tuned"], p["reported"]["rank_pct"]) for p in pairs}
    runs = {k: exp.run(k) for k in ("grpo", "rloo", "dpo-own", "kto", "sft")}
    return {k: (r.checkpoint(0), r.checkpoint(final_step(r)), None) for k, r in runs.items()}


def rank_rows(exp, inputs: dict) -> list[dict]:
    """04: the rank of every ΔW of each pair (saves ``rank_by_module_<label>.csv`` and
    ``rank_matrices_<label>.csv``); one summary row per pair."""
    from rlsparse_lib.analysis.rank import update_ranks

    rows = []
    for label, (base, tuned, reported) in inputs.items():
        report = update_ranks(base, tuned, device=exp.analysis_device, progress=False)
        exp.table(f"rank_by_module_{label}", report.by_module())
        exp.table(f"rank_matrices_{label}", report.table())
        rows.append({"run": label, "reported_rank_pct": reported, **report.summary()})
    return rows


# ---- 05: subnetwork finetuning ----------------------------------------------------------------
def subnetwork_runs(exp) -> dict:
    """05: the full GRPO run, the run masked to what it changed, and a random mask of the same
    density (the masks are built once, in the full run's folder)."""
    full = exp.run("grpo")
    mask = str(exp.run_mask(full).relative_to(exp.paths.root))
    return {
        "full": full,
        "subnetwork": exp.run("grpo-subnet", {"mask.path": mask}),
        "random mask": exp.run("grpo-subnet-random", {"mask.path": mask}),
    }


def subnetwork_rows(exp, runs: dict) -> list[dict]:
    """05: :func:`run_row` of each run, every final checkpoint diffed against the full run's init."""
    init = runs["full"].checkpoint(0)
    rows = []
    for label, run in runs.items():
        report = exp.diff(init, run.checkpoint(final_step(run)), label.replace(" ", "_"))
        rows.append(run_row(label, run, report))
    return rows


def subnetwork_closeness(runs: dict) -> dict:
    """05: closeness of each masked run's final weights to the full run's (``{label: summary}``)."""
    return closeness_to_full(runs["full"], {k: runs[k] for k in ("subnetwork", "random mask")})


# ---- 06: overlap ------------------------------------------------------------------------------
def overlap_runs(exp) -> dict:
    """06: GRPO seed 0 and its seed, data and algorithm counterparts (bf16 checkpoints only)."""
    bf16_only = {"checkpoints.fp32": False}
    chain_sum = {
        "task.name": "chain_sum",
        "task.params": {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2},
    }
    return {
        "GRPO seed 0": exp.run("grpo"),
        "GRPO seed 1": exp.run("grpo", {"seed": 1, **bf16_only}, variant="seed1"),
        "GRPO chain_sum": exp.run("grpo", {**chain_sum, **bf16_only}, variant="chainsum"),
        "DPO own samples": exp.run("dpo-own"),
    }


def overlap_of_runs(exp, runs: dict):
    """06: the overlap matrix of the runs' masks (built once per run), stratified by the first
    run's init; saves ``matrix_<metric>.csv`` for every metric of :data:`OVERLAP_METRICS`."""
    from rlsparse_lib.analysis.overlap import overlap_matrix

    masks = {label: exp.run_mask(run) for label, run in runs.items()}
    init = next(iter(runs.values())).checkpoint(0)
    matrix = overlap_matrix(list(masks.values()), labels=list(masks), base=init, progress=False)
    for metric in OVERLAP_METRICS:
        exp.table(f"matrix_{metric}", matrix.frame(metric).reset_index(names="mask"))
    return matrix


def table4_rows(matrix, axes: dict = OVERLAP_AXES) -> list[dict]:
    """06: the paper's Table 4 row of each axis, with the random and binade baselines."""
    labels = list(matrix.labels)
    rows = []
    for axis, (a, b) in axes.items():
        d = matrix.pair(labels.index(a), labels.index(b)).to_dict()
        binade = d["baselines"]["binade"]
        rows.append(
            {
                "axis": axis,
                "I1": a,
                "I2": b,
                "s1": 1 - d["density1"],
                "s2": 1 - d["density2"],
                "o1": d["o1"],
                "o2": d["o2"],
                "o1_random": d["o1_random"],
                "o2_random": d["o2_random"],
                "o1_binade": binade["o1"],
                "o2_binade": binade["o2"],
                "enrichment_binade": binade["enrichment"],
                "jaccard": d["jaccard"],
                "jaccard_random": d["jaccard_random"],
            }
        )
    return rows


# ---- 07: dynamics -----------------------------------------------------------------------------
def series_run(exp, steps: int, every: int):
    """07: the GRPO run checkpointed every ``every`` of ``steps`` steps (4 and 1 in smoke mode)."""
    steps, every = (4, 1) if exp.smoke else (steps, every)
    overrides = {"train.steps": steps, "checkpoints.every": every, "checkpoints.fp32": False}
    return exp.run("grpo", overrides, variant=f"series{steps}")


def run_dynamics(run):
    """07: sparsity dynamics over every checkpoint of ``run`` after its init."""
    from rlsparse_lib.analysis.dynamics import sparsity_dynamics

    later = [c["step"] for c in run.manifest["checkpoints"] if c["step"] > 0]
    return sparsity_dynamics(
        run.checkpoint(0),
        [run.checkpoint(s) for s in later],
        labels=[f"step {s}" for s in later],
        steps=later,
        progress=False,
    )


def accuracy_rows(run) -> list[dict]:
    """07: greedy accuracy of every checkpoint of ``run`` on its held-out split."""
    from rlsparse_lib.experiments.evaluate import checkpoint_accuracy

    return [
        {"step": c["step"], "accuracy": checkpoint_accuracy(run.checkpoint(c["step"]), run)}
        for c in run.manifest["checkpoints"]
    ]


def dynamics_record(dyn, series) -> dict:
    """07: what the notebook records: the fate split, final and mean per-step sparsity, rule."""
    return {
        "fate": dyn.fate(),
        "final_sparsity": float(series["sparsity"].iloc[-1]),
        "mean_step_sparsity": float(series["step_sparsity"].mean()),
        "rule": dyn.rule.describe(),
    }


# ---- 09: precision ----------------------------------------------------------------------------
def precision_modes(exp) -> tuple[list[dict], dict]:
    """09: GRPO and SFT in each precision mode (bf16, mixed, fp32): accuracy and sparsity of the
    stored checkpoints, and for runs with fp32 master weights their own sparsity and the
    visible-vs-absorbed split. Returns the rows and the runs by ``(kind, mode)``."""
    from rlsparse_lib.analysis.absorption import visible_vs_absorbed

    keep = ("acc_before", "acc_after", BITWISE, TOL_1E5)
    rows, runs = [], {}
    for kind in ("grpo", "sft"):
        for mode in ("bf16", "mixed", "fp32"):
            variant = None if mode == "mixed" else mode
            run = runs[(kind, mode)] = exp.run(kind, {"precision": mode}, variant=variant)
            stored = exp.run_diff(run, f"{kind}_{mode}")
            row = {"kind": kind, "mode": mode, **pick(run_row(f"{kind}-{mode}", run, stored), keep)}
            if mode != "bf16":
                init, last = run.checkpoint(0, "fp32"), run.checkpoint(final_step(run), "fp32")
                master = exp.diff(init, last, f"{kind}_{mode}_fp32")
                row["fp32_master_sparsity_bitwise"] = master.sparsity
                absorbed = visible_vs_absorbed(init, last, progress=False).summary()
                row.update(
                    {
                        f"absorption_{k}": v
                        for k, v in absorbed.items()
                        if isinstance(v, int | float)
                    }
                )
            rows.append(row)
    return rows, runs


def lr_scaling_rows(exp, base_run, factors=(1, 3, 10)) -> list[dict]:
    """09: GRPO at ``factor`` x the learning rate of ``base_run`` (factor 1 is that run)."""
    base_lr = learning_rate(base_run)
    rows = []
    for factor in factors:
        variant = None if factor == 1 else f"lr{factor}x"
        overrides = {"train.lr": base_lr * factor}
        if factor != 1:
            overrides["checkpoints.fp32"] = False
        run = exp.run("grpo", overrides, variant=variant)
        report = exp.run_diff(run, f"grpo_lr{factor}x")
        row = run_row(f"lr{factor}x", run, report)
        rows.append(
            {
                "lr": base_lr * factor,
                **pick(row, ("acc_after", BITWISE, TOL_1E5)),
            }
        )
    return rows


def absorbed_summary(steps) -> str:
    """09: one line on the monitor log: fp32 weight moves vs those visible in bf16."""
    if not {"changed_step", "changed_step_bf16"} <= set(steps.columns):
        return "the monitor log has no fp32 vs bf16 per-step counts (a pure bf16 or fp32 run)"
    moved = steps["changed_step"].sum()
    visible = steps["changed_step_bf16"].sum()
    if not moved:
        return f"over {len(steps)} steps: no fp32 weight moved"
    return (
        f"over {len(steps)} steps: {moved:,} fp32 weight moves, {visible:,} visible in bf16 "
        f"({1 - visible / moved:.2%} absorbed)"
    )


# ---- 12: seeds and controls -------------------------------------------------------------------
#: 12's controls (the CONTROLS parameter names a subset, space separated)
CONTROLS = ("random1pct", "random-matched", "fp16", "sgd", "lr")
#: 12's learning-rate sweep for GRPO: factors of the config's lr (1 is the first seed's run)
LR_FACTORS = (0.3, 1, 3)
#: the density of 12's random subnetwork control
RANDOM_DENSITY = 0.01


def seed_list(seeds: str, smoke: bool = False) -> list[int]:
    """``"0 1 2"`` -> ``[0, 1, 2]`` (smoke runs: the first two)."""
    try:
        out = [int(s) for s in seeds.split()]
    except ValueError:
        raise ConfigError(f"SEEDS={seeds!r}: expected integers separated by spaces") from None
    if len(out) < 2 or len(set(out)) != len(out):
        raise ConfigError(f"SEEDS={seeds!r}: expected at least two distinct seeds")
    return out[:2] if smoke else out


def control_list(controls: str) -> list[str]:
    """``"fp16 sgd"`` -> ``["fp16", "sgd"]``, each one of :data:`CONTROLS`."""
    out = controls.split()
    unknown = sorted(set(out) - set(CONTROLS))
    if unknown:
        raise ConfigError(f"CONTROLS: unknown {unknown} (use any of {' '.join(CONTROLS)})")
    return out


def _eval_overrides(exp, eval_size: int) -> tuple[dict, str]:
    """12's common overrides (bf16 checkpoints only; the eval set size, except in smoke mode) and
    the variant prefix naming them."""
    if exp.smoke:
        return {"checkpoints.fp32": False}, ""
    return {"checkpoints.fp32": False, "task.eval_size": eval_size}, f"eval{eval_size}-"


def seed_runs(exp, seeds: list[int], eval_size: int) -> dict:
    """12: GRPO and SFT (their 20-step configs) at each seed, on ``eval_size`` held-out questions:
    ``{"GRPO seed 0": run, ...}``."""
    base, prefix = _eval_overrides(exp, eval_size)
    return {
        f"{kind.upper()} seed {s}": exp.run(kind, {**base, "seed": s}, variant=f"{prefix}seed{s}")
        for kind in ("grpo", "sft")
        for s in seeds
    }


def control_runs(exp, fulls: dict, controls: list[str], seeded: list[str], eval_size: int) -> dict:
    """12: the controls beside the full GRPO runs ``fulls`` (``{seed: run}``, first seed first): a
    random subnetwork of :data:`RANDOM_DENSITY` and one of the same seed's full-run mask density,
    fp16 GRPO and SFT, GRPO with SGD (``grpo-sgd`` config: its lr), GRPO at :data:`LR_FACTORS` ×
    lr. The controls in ``seeded`` run at every seed, the others at the first.
    ``{"<label> seed <s>": run}``."""
    base, prefix = _eval_overrides(exp, eval_size)
    seeds = list(fulls)
    runs = {}
    for control in controls:
        for seed in seeds if control in seeded else seeds[:1]:
            at = {**base, "seed": seed}
            for label, (kind, overrides, name) in _control(exp, control, fulls[seed], seed).items():
                runs[f"{label} seed {seed}"] = exp.run(
                    kind, {**at, **overrides}, variant=f"{prefix}{name}seed{seed}"
                )
    return runs


def _control(exp, control: str, full, seed: int) -> dict[str, tuple[str, dict, str]]:
    """One control's runs beside ``full`` at ``seed`` (which also draws the random masks):
    ``{label: (config kind, overrides, variant prefix)}`` (the variant is ``<prefix>seed<s>``)."""
    mask: dict[str, object]
    if control == "random1pct":
        mask = {"mask.random": True, "mask.density": RANDOM_DENSITY, "mask.random_seed": seed}
        return {f"GRPO random {RANDOM_DENSITY:.0%} subnetwork": ("grpo", mask, "random1pct-")}
    if control == "random-matched":
        path = str(exp.run_mask(full).relative_to(exp.paths.root))
        mask = {"mask.path": path, "mask.random": True, "mask.random_seed": seed}
        return {"GRPO random subnetwork, full run's density": ("grpo", mask, "randmatched-")}
    if control == "fp16":
        return {f"{k.upper()} fp16": (k, {"precision": "fp16"}, "fp16-") for k in ("grpo", "sft")}
    if control == "sgd":  # its own config: no variant prefix
        return {"GRPO SGD": ("grpo-sgd", {}, "")}
    lr = learning_rate(full)
    return {
        f"GRPO lr x{f:g}": ("grpo", {"train.lr": lr * f}, f"lr{f:g}x-")
        for f in LR_FACTORS
        if f != 1
    }


def runs_table_rows(exp, runs: dict) -> list[dict]:
    """:func:`~rlsparse_lib.experiments.tables.runs_table_row` of every ``{label: run}``, with
    ``label`` first and ``source`` relative to the output root."""
    from rlsparse_lib.experiments.tables import runs_table_row

    return [
        {
            "label": label,
            **runs_table_row(run.path, source=str(run.path.relative_to(exp.paths.root))),
        }
        for label, run in runs.items()
    ]


def closeness_to_full(full, runs: dict) -> dict:
    """Closeness of each run's final weights to ``full``'s, with ``full``'s init (``{label:
    summary}``; every run must start from that init)."""
    from rlsparse_lib.analysis.closeness import closeness

    init, theta_full = full.checkpoint(0), full.checkpoint(final_step(full))
    return {
        label: closeness(
            run.checkpoint(final_step(run)), theta_full, init=init, progress=False
        ).summary()
        for label, run in runs.items()
    }


def masked_closeness_rows(fulls: dict, runs: dict) -> list[dict]:
    """12: for each run of ``{label: run}`` trained on a mask, its closeness to the full run of its
    seed (``fulls``: ``{seed: run}``; :func:`closeness_to_full`): bitwise equality overall and among
    the weights either run updated, and the update sets (a: the masked run, b: the full run)."""
    rows = []
    for label, run in runs.items():
        config = run.manifest["config"]
        if not config.get("mask"):
            continue
        s = closeness_to_full(fulls[config["seed"]], {label: run})[label]
        rows.append(
            {
                "run": label,
                "seed": config["seed"],
                "n_params": s["n_params"],
                "equal_bitwise": s["equal"]["bitwise"],
                "equal_among_updated_bitwise": s["equal_among_updated"]["bitwise"],
                **{k: s["updates"][k] for k in ("n_updated_a", "n_updated_b", "n_updated_both")},
            }
        )
    return rows


def publish_runs(exp, rows: list[dict]) -> list[dict]:
    """12: add ``rows`` to ``<root>/data/results/engine/runs.csv`` and rewrite its seed summary
    (``runs_summary.csv`` / ``.md``) beside it; the table's rows."""
    from rlsparse_lib.experiments.tables import runs_summary, save_summary, update_runs_table

    engine = exp.paths.results / "engine"
    table = update_runs_table(engine / "runs.csv", rows)
    save_summary(runs_summary(table), engine / "runs_summary.csv", engine / "runs_summary.md")
    return table


def seed_overlap_axes(labels: list[str]) -> dict:
    """12's overlap pairs: every two seeds of one algorithm, and GRPO vs SFT at one seed."""
    from itertools import combinations

    by_kind: dict[str, list[str]] = {}
    for label in labels:
        by_kind.setdefault(label.split(" seed ")[0], []).append(label)
    axes = {f"{a} vs {b}": (a, b) for group in by_kind.values() for a, b in combinations(group, 2)}
    for label in by_kind.get("GRPO", []):
        other = label.replace("GRPO", "SFT", 1)
        if other in labels:
            axes[f"{label} vs {other}"] = (label, other)
    return axes
