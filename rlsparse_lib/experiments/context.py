"""One notebook's context: parameters, paths, cached runs and diffs, tables, figures, record."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from rlsparse_lib.atomic import write_text_atomic
from rlsparse_lib.errors import ConfigError
from rlsparse_lib.paths import Paths, repo_root

#: where smoke runs write when no output root is named (git-ignored, never the committed results)
SMOKE_ROOT = Path("data") / "cache" / "smoke"


def output_paths(out_root: str | Path | None, smoke: bool = False) -> Paths:
    """The output root of a notebook run: ``out_root`` when given, else the repository for real
    runs and ``<repo>/data/cache/smoke/`` for smoke runs (so a smoke run never overwrites the
    committed ``data/results/`` and ``figures/``)."""
    if out_root:
        return Paths.at(out_root)
    return Paths.at(repo_root() / SMOKE_ROOT) if smoke else Paths.at()


@dataclass
class Experiment:
    """The state a notebook works in; create it from the notebook's parameters.

    Outputs: tables and diff reports under ``<root>/data/results/<notebook>/``, figures under
    ``<root>/figures/``, training runs under ``<root>/data/runs/``, and ``record.json`` (the
    numbers tests and the README read) written by :meth:`finish`.

    Attributes:
        notebook: the notebook's stem, e.g. ``03_layerwise``.
        source: ``local`` (runs of the embedded default model) or ``hub`` (public pairs).
        smoke: tiny model and a few steps (CI).
        out_root: output root ("" = the repository, or ``data/cache/smoke/`` when ``smoke``).
        device: ``auto``, ``cpu`` or ``cuda`` (training device; diffs stream on the CPU).
        seed: added to every run's name and config (0 = the configs' own seeds).
        family: config family under ``data/configs/``: ``cpu`` (the embedded default, minutes on
            2 cores) or ``gpu`` (Qwen2.5-Coder-0.5B, 200 steps, CUDA).
    """

    notebook: str
    source: str = "local"
    smoke: bool = False
    out_root: str = ""
    device: str = "auto"
    seed: int = 0
    family: str = "cpu"
    record_data: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.paths = output_paths(self.out_root, self.smoke)
        families = sorted(p.name for p in self.paths.configs.iterdir() if p.is_dir())
        if self.family not in families:
            raise ConfigError(
                f"FAMILY={self.family!r}: no data/configs/{self.family}/ (have {families})"
            )
        self.results = self.paths.results / self.notebook
        self.record_data.update(
            notebook=self.notebook,
            smoke=self.smoke,
            source=self.source,
            seed=self.seed,
            family=self.family,
            figures=[],
        )

    # ---- runs and diffs ---------------------------------------------------------------------
    def run(self, config: str, overrides: dict | None = None, variant: str | None = None):
        """The finished training run of ``config`` (reused if already done, else trained).

        Args:
            config: a config stem of this family, e.g. ``grpo`` (``data/configs/<family>/grpo.yaml``).
            overrides: dotted keys, e.g. ``{"seed": 1}``.
            variant: names a run that differs from the config (``"seed1"`` gives
                ``cpu-grpo-seed1``), so variants never reuse or replace the config's own run.
        """
        from rlsparse_lib.experiments.runs import ensure_run, run_config

        overrides = dict(overrides or {})
        if self.device != "auto":
            overrides.setdefault("device", self.device)
        suffix = f"-{variant}" if variant else ""
        if self.seed:
            overrides["seed"] = self.seed + int(overrides.get("seed", 0))
            suffix += f"-seed{self.seed}"
        cfg = run_config(config, overrides, smoke=self.smoke, family=self.family, suffix=suffix)
        return ensure_run(cfg, self.paths)

    @property
    def analysis_device(self) -> str | None:
        """Device for analyses with a GPU path (SVDs): ``None`` (the library picks, CUDA when
        available) for ``DEVICE="auto"``, else ``DEVICE``."""
        return None if self.device == "auto" else self.device

    def diff(self, base: str | Path, tuned: str | Path, label: str, **config):
        """``rlsparse diff`` of two checkpoints, cached as ``diffs/<label>.json.gz``.

        ``config``: :class:`~rlsparse_lib.diff.config.DiffConfig` fields. The cache is reused only
        when both checkpoints hold the same bytes and the result-changing settings are the same
        (:mod:`rlsparse_lib.experiments.diffcache`); otherwise the diff is recomputed and saved.
        """
        from rlsparse_lib.diff.config import DiffConfig
        from rlsparse_lib.diff.engine import diff_checkpoints
        from rlsparse_lib.diff.report import DiffReport
        from rlsparse_lib.experiments.diffcache import cache_key
        from rlsparse_lib.io.checkpoint import open_checkpoint

        cache = self.results / "diffs" / f"{label}.json.gz"
        b, t = open_checkpoint(base), open_checkpoint(tuned)
        diff_config = DiffConfig(**config)
        key = cache_key(b, t, diff_config)
        if cache.is_file():
            report = DiffReport.load(cache)
            if report.provenance.get("cache_key") == key:
                return report
        report = diff_checkpoints(b, t, diff_config, progress=False)
        report.provenance["cache_key"] = key
        report.save_json(cache)
        return report

    def run_diff(self, run, label: str, step: int | None = None, **config):
        """:meth:`diff` of a training run's init against its checkpoint at ``step`` (default: the
        final one), cached as ``diffs/<label>.json.gz``."""
        from rlsparse_lib.experiments.tables import final_step

        step = final_step(run) if step is None else step
        return self.diff(run.checkpoint(0), run.checkpoint(step), label, **config)

    def run_diffs(self, runs: dict, **config) -> dict:
        """:meth:`run_diff` of every run of ``{label: run}`` (the label names the cache)."""
        return {label: self.run_diff(run, label, **config) for label, run in runs.items()}

    def run_mask(self, run) -> Path:
        """The bitwise mask of the weights ``run`` changed (init -> final checkpoint), built once
        as ``<run>/mask.safetensors`` (a retrained run replaces its folder, mask included)."""
        from rlsparse_lib.experiments.tables import final_step
        from rlsparse_lib.masks.ops import build_mask

        path = run.path / "mask.safetensors"
        if not path.is_file():
            build_mask(run.checkpoint(0), run.checkpoint(final_step(run)), path, progress=False)
        return path

    def load_diff(self, label: str):
        """A diff report saved by :meth:`diff` (for redrawing figures without checkpoints)."""
        from rlsparse_lib.diff.report import DiffReport

        return DiffReport.load(self.results / "diffs" / f"{label}.json.gz")

    # ---- tables, figures, record ------------------------------------------------------------
    def table(self, name: str, data):
        """Save rows or a DataFrame as ``<name>.csv`` in the results folder; return the DataFrame."""
        import pandas as pd

        df = data if isinstance(data, pd.DataFrame) else pd.DataFrame(data)
        path = self.results / f"{name}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, df.to_csv(index=False))
        return df

    def load_table(self, name: str):
        import pandas as pd

        return pd.read_csv(self.results / f"{name}.csv")

    def figure(self, fig_id: str, fig) -> Path:
        """Save a figure as ``figures/<fig_id>.png`` and ``.pdf`` with provenance (closes it)."""
        from rlsparse_lib.plotting import save_figure

        target = self.paths.figures / fig_id
        save_figure(
            fig,
            target,
            provenance={
                "notebook": self.notebook,
                "smoke": self.smoke,
                "source": self.source,
                "seed": self.seed,
            },
        )
        if fig_id not in self.record_data["figures"]:
            self.record_data["figures"].append(fig_id)
        return target

    def draw_figures(self) -> dict:
        """Draw (and save) this notebook's figures from its stored results; see ``figures.py``."""
        from rlsparse_lib.experiments.figures import draw_notebook

        figs = draw_notebook(self)
        saved = {fig_id: self.figure(fig_id, fig) for fig_id, fig in figs.items()}
        _display_pngs(saved.values())
        return saved

    def record(self, **values) -> None:
        """Numbers the notebook reports (checked by tests, quoted in the README)."""
        plain = _plain(values)
        assert isinstance(plain, dict)  # _plain maps a dict to a dict
        self.record_data.update(plain)

    def recorded(self, key: str, default=None):
        """A recorded value: from this session, else from the stored ``record.json``."""
        if key in self.record_data:
            return self.record_data[key]
        path = self.results / "record.json"
        return (
            json.loads(path.read_text(encoding="utf-8")).get(key, default)
            if path.is_file()
            else default
        )

    def finish(self) -> None:
        """Write ``record.json`` and print one line saying where (the record is not displayed)."""
        self.results.mkdir(parents=True, exist_ok=True)
        text = json.dumps(_plain(self.record_data), indent=1, allow_nan=False)
        path = self.results / "record.json"
        write_text_atomic(path, text + "\n")
        n_figures = len(self.record_data.get("figures", []))
        print(f"record: {path} ({len(self.record_data)} keys, {n_figures} figures)")


def _display_pngs(paths) -> None:
    """Show saved figures inline when running under IPython/Jupyter."""
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
    except ImportError:
        return
    if get_ipython() is None:
        return
    for p in paths:
        display(Image(filename=str(p.with_suffix(".png"))))


def _plain(obj: object) -> object:
    """numpy/pandas scalars and containers -> strict-JSON Python objects (NaN -> None)."""
    import math

    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return None if math.isnan(obj) else float(obj)
    return obj
