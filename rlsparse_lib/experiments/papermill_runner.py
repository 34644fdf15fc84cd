"""Execute the experiment notebooks through papermill.

Every notebook in ``notebooks/`` has a ``parameters`` cell of scalars (``SOURCE``, ``SMOKE``,
``OUT_ROOT``, ``DEVICE``, ``SEED``, ...). The runner checks the names you pass against that cell
(papermill itself only warns on unknown names), executes each notebook into
``<root>/data/runs/notebooks/<name>.ipynb`` with a quiet, reproducible environment
(``TQDM_DISABLE=1``, fixed ``SOURCE_DATE_EPOCH``), prints a line per code cell (which one runs,
how long it took, time elapsed), streams what cells print, and stops at the first failure,
leaving the partly executed notebook for inspection. Smoke runs write under
``data/cache/smoke/`` unless an output root is named, never over the committed results.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from rlsparse_lib.errors import ConfigError, RlsparseError
from rlsparse_lib.experiments.context import output_paths
from rlsparse_lib.overrides import parse_assignments
from rlsparse_lib.paths import Paths

#: fixed timestamp for reproducible PDFs (matplotlib honours SOURCE_DATE_EPOCH)
SOURCE_DATE_EPOCH = "1767225600"
_ENV = {
    "MPLBACKEND": "Agg",
    "TQDM_DISABLE": "1",
    "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH,
    "PYDEVD_DISABLE_FILE_VALIDATION": "1",
}


def list_notebooks(folder: Path | None = None) -> list[Path]:
    """The experiment notebooks (``NN_name.ipynb``), in order."""
    folder = folder or Paths.at().notebooks
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))


def resolve(name: str, folder: Path | None = None) -> list[Path]:
    """``all``, a number (``3``/``03``), a stem (``03_layerwise``) or a path -> notebook paths."""
    books = list_notebooks(folder)
    if name == "all":
        return books
    path = Path(name)
    if path.suffix == ".ipynb" and path.is_file():
        return [path]
    for nb in books:
        if (
            nb.stem == name
            or nb.stem.split("_", 1)[0] == name.zfill(2)
            or nb.stem.split("_", 1)[1] == name
        ):
            return [nb]
    known = ", ".join(nb.stem for nb in books)
    raise ConfigError(f"no notebook {name!r} (known: {known or 'none'})")


def parse_params(pairs: list[str]) -> dict[str, object]:
    """``["SEED=1", "SOURCE=hub"]`` -> ``{"SEED": 1, "SOURCE": "hub"}`` (YAML values; see
    :mod:`rlsparse_lib.overrides`)."""
    return parse_assignments(pairs, flag="-p", example="SEED=1", identifier=True)


class NotebookInterrupted(KeyboardInterrupt):
    """Ctrl-C while a notebook ran; ``str()`` is a one-line message naming the partial output."""


class CellProgress:
    """Prints one line when a code cell starts and one when it ends: its number among the code
    cells, its first line, its duration and the time elapsed since the notebook started."""

    def __init__(
        self, name: str, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = name
        self.stream = stream
        self.clock = clock
        self.start = self.cell_started = clock()
        self.positions: dict[int, int] = {}
        self.done = 0

    def begin(self, nb) -> None:
        """Number the code cells of the (parameterized) notebook about to run."""
        code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
        self.positions = {i: k for k, i in enumerate(code, start=1)}
        self.start = self.clock()

    def cell_start(self, cell, index: int) -> None:
        if index not in self.positions:
            return
        self.cell_started = self.clock()
        first = next((line for line in cell.source.splitlines() if line.strip()), "")
        first = first if len(first) <= 60 else first[:57] + "..."
        self._print(f"cell {self._of(index)} running  {first}")

    def cell_complete(self, cell, index: int) -> None:
        """Called when the cell ends: done, failed (papermill marked it) or interrupted (Ctrl-C
        is propagating through papermill's ``finally``)."""
        if index not in self.positions:
            return
        took = _clock_text(self.clock() - self.cell_started)
        if isinstance(sys.exc_info()[1], KeyboardInterrupt):
            status = "interrupted after"
        elif cell.get("metadata", {}).get("papermill", {}).get("exception"):
            status = "failed after"
        else:
            self.done += 1
            status = "done in"
        self._print(f"cell {self._of(index)} {status} {took}")

    def _of(self, index: int) -> str:
        return f"{self.positions[index]}/{len(self.positions)}"

    def _print(self, text: str) -> None:
        elapsed = _clock_text(self.clock() - self.start)
        print(f"[{self.name} {elapsed}] {text}", file=self.stream or sys.stderr, flush=True)


def _clock_text(seconds: float) -> str:
    """``75.2`` -> ``1:15``; ``3725`` -> ``1:02:05``."""
    s = int(seconds)
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def _quiet_kernel_manager(log: TextIO) -> type:
    """nbclient's kernel manager with the kernel's own stderr (its start-up warnings and, on
    Ctrl-C, the tracebacks of its closing sockets) written to ``log`` instead of the terminal;
    what the cells print still arrives through the notebook's outputs."""
    from jupyter_client.manager import AsyncKernelManager

    class QuietKernelManager(AsyncKernelManager):
        async def _async_launch_kernel(self, kernel_cmd: list[str], **kw) -> None:
            kw.setdefault("stderr", log)
            await super()._async_launch_kernel(kernel_cmd, **kw)

    return QuietKernelManager


@functools.cache
def _progress_engine() -> None:
    """papermill's nbclient engine, reporting cell starts and ends to a :class:`CellProgress`
    passed as ``cell_progress`` (registered once as the ``rlsparse`` engine)."""
    from papermill.engines import NBClientEngine, papermill_engines

    class ProgressEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, cell_progress=None, **kwargs):
            if cell_progress is not None:
                cell_progress.begin(nb_man.nb)
                start, complete = nb_man.cell_start, nb_man.cell_complete

                def cell_start(cell, cell_index=None, **kw):
                    cell_progress.cell_start(cell, cell_index)
                    return start(cell, cell_index, **kw)

                def cell_complete(cell, cell_index=None, **kw):
                    cell_progress.cell_complete(cell, cell_index)
                    return complete(cell, cell_index, **kw)

                nb_man.cell_start, nb_man.cell_complete = cell_start, cell_complete
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    papermill_engines.register(_ENGINE, ProgressEngine)


_ENGINE = "rlsparse"


def notebook_parameters(path: Path) -> dict[str, dict]:
    """The parameters cell of a notebook: name -> {inferred_type_name, default, help}."""
    import papermill as pm

    return {name: dict(info) for name, info in pm.inspect_notebook(str(path)).items()}


def execute(
    path: Path,
    params: dict[str, object],
    output: Path,
    log: bool = True,
    progress: bool = True,
    label: str | None = None,
) -> Path:
    """Run one notebook with ``params`` into ``output`` (parameter names are checked first).

    The kernel's own stderr goes to ``<output>.kernel.log`` (next to the executed notebook).

    Args:
        log: stream what the cells print (stdout, stderr) while they run.
        progress: print a line when each code cell starts and ends (to stderr).
        label: names the run in those lines (default: the notebook's stem).

    Raises:
        RlsparseError: a cell failed (the partial output is named).
        NotebookInterrupted: Ctrl-C (the kernel is shut down; the partial output is named).
    """
    import papermill as pm

    known = notebook_parameters(path)
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ConfigError(
            f"{path.name}: unknown parameter(s) {', '.join(unknown)} (known: {', '.join(known)})"
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    _progress_engine()
    cells = CellProgress(label or path.stem) if progress else None
    kernel_log = output.with_suffix(".kernel.log")
    with _environment(), kernel_log.open("w", encoding="utf-8") as klog:
        try:
            pm.execute_notebook(
                str(path),
                str(output),
                parameters=params,
                engine_name=_ENGINE,
                kernel_name="python3",
                language="python",
                cwd=str(path.parent),
                progress_bar=False,
                log_output=False,
                stdout_file=sys.stdout if log else None,
                stderr_file=sys.stderr if log else None,
                cell_progress=cells,
                kernel_manager_class=_quiet_kernel_manager(klog),
            )
        except pm.PapermillExecutionError as err:
            raise RlsparseError(
                f"{path.name} failed in cell {err.exec_count} ({err.ename}: {err.evalue}); "
                f"partial output: {output}"
            ) from err
        except KeyboardInterrupt:
            done = f" after {cells.done} of {len(cells.positions)} code cells" if cells else ""
            raise NotebookInterrupted(
                f"{path.name} interrupted{done}; partial output: {output}"
            ) from None
    return output


def run_notebooks(
    name: str,
    params: dict[str, object],
    smoke: bool = False,
    out_root: str | None = None,
    log: bool = True,
    progress: bool = True,
) -> list[Path]:
    """Execute ``name`` (or ``all``) with ``params``; returns the executed notebooks' paths.

    The output root is ``out_root`` (or ``OUT_ROOT`` in ``params``) when given; otherwise the
    repository for real runs and ``data/cache/smoke/`` for smoke runs (``smoke`` or
    ``SMOKE=True``), which is passed to the notebooks as ``OUT_ROOT``.
    """
    params = dict(params)
    if smoke:
        params["SMOKE"] = True
    is_smoke = bool(params.get("SMOKE"))
    paths = output_paths(out_root or str(params.get("OUT_ROOT") or ""), is_smoke)
    if out_root or is_smoke or params.get("OUT_ROOT"):
        params["OUT_ROOT"] = str(paths.root)
    suffix = "__smoke" if is_smoke else ""
    done = []
    for nb in resolve(name):
        out = paths.runs / "notebooks" / f"{nb.stem}{suffix}.ipynb"
        done.append(execute(nb, params, out, log=log, progress=progress))
    return done


@contextmanager
def _environment() -> Iterator[None]:
    old = {k: os.environ.get(k) for k in _ENV}
    os.environ.update(_ENV)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---- the pair report: one pair, or every pair of a registry --------------------------------------
PAIR_NOTEBOOK = "10_pair_report"


def render_html(notebook: Path, output: Path) -> Path:
    """Render an executed notebook as one standalone HTML file (figures embedded), atomically."""
    from nbconvert import HTMLExporter

    from rlsparse_lib.atomic import write_text_atomic

    body, _ = HTMLExporter(embed_images=True).from_filename(str(notebook))
    write_text_atomic(output, body)
    return output


def report_pair(
    base: str,
    tuned: str,
    output: str | Path,
    params: dict[str, object] | None = None,
    out_root: str | None = None,
    log: bool = True,
) -> Path:
    """Run the pair-report notebook on ``base`` and ``tuned`` and render it to ``output`` (HTML).

    The notebook's results and figures go under ``out_root`` when given, else into a temporary
    folder removed afterwards; only the HTML file stays.

    Raises:
        RlsparseError: the output cannot be written, or the notebook failed (e.g. a checkpoint
            cannot be reached), with the reason.
    """
    import tempfile

    from rlsparse_lib.atomic import check_writable

    check_writable(output)
    nb = resolve(PAIR_NOTEBOOK)[0]
    with tempfile.TemporaryDirectory(prefix="rlsparse-report-") as tmp:
        root = Path(out_root or tmp)
        values = {**(params or {}), "BASE": base, "TUNED": tuned, "OUT_ROOT": str(root)}
        executed = execute(nb, values, root / "data" / "runs" / "notebooks" / nb.name, log=log)
        return render_html(executed, Path(output))


def registry_entries(registry: Path) -> list[dict]:
    """Every pair of a registry YAML (each top-level list of ``{id, base, tuned, ...}``), with
    local paths made absolute (relative to the YAML's folder when they exist there).

    Raises:
        ConfigError: the file is missing, not YAML, or holds no pairs.
    """
    import yaml

    try:
        data = yaml.safe_load(registry.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{registry}: cannot read a pair registry ({err})") from None
    entries = [
        dict(e)
        for v in (data.values() if isinstance(data, dict) else [])
        if isinstance(v, list)
        for e in v
        if isinstance(e, dict) and "id" in e
    ]
    if not entries:
        raise ConfigError(f"{registry}: no pairs (expected lists of {{id, base, tuned}})")
    for e in entries:
        for side in ("base", "tuned"):
            spec = e.get(side)
            if spec and (registry.parent / str(spec)).exists():
                e[side] = str((registry.parent / str(spec)).resolve())
    return entries


def run_pairs(
    registry: str | Path,
    params: dict[str, object],
    out_root: str | None = None,
    log: bool = True,
) -> list[dict]:
    """Run the pair-report notebook once per pair of ``registry`` (a model family's batch).

    Each pair's notebook, results and figures go under
    ``<root>/data/runs/pairs/<registry>/<id>/``, the executed notebook rendered as ``report.html``
    there. A pair that cannot be run (no hub id, unreachable, gated, a failing cell) is listed
    with the reason, never skipped silently; ``summary.json`` lists every pair's status.

    Returns:
        One row per pair: ``id``, ``base``, ``tuned``, ``status`` (``done``, ``no public hub id``,
        ``unreachable: <reason>`` for a checkpoint out of reach, ``failed: <reason>`` for another
        failing cell), ``html`` and ``sparsity_bitwise`` when done.
    """
    import json

    from rlsparse_lib.atomic import write_text_atomic

    registry = Path(registry)
    entries = registry_entries(registry)
    nb = resolve(PAIR_NOTEBOOK)[0]
    batch = output_paths(out_root or str(params.get("OUT_ROOT") or "")).runs / "pairs"
    batch = batch / registry.stem
    rows = []
    for e in entries:
        row = {"id": str(e["id"]), "base": e.get("base"), "tuned": e.get("tuned")}
        if not row["base"] or not row["tuned"]:
            rows.append({**row, "status": "no public hub id"})
            continue
        root = batch / str(e["id"])
        values = {**params, "BASE": row["base"], "TUNED": row["tuned"], "OUT_ROOT": str(root)}
        try:
            executed = execute(nb, values, root / f"{nb.stem}.ipynb", log=log, label=row["id"])
        except RlsparseError as err:  # a checkpoint out of reach, or another failing cell
            cause = getattr(err.__cause__, "ename", "")
            kind = "unreachable" if cause == "CheckpointError" else "failed"
            rows.append({**row, "status": f"{kind}: {err}"})
            continue
        html = render_html(executed, root / "report.html")
        record = json.loads((root / "data/results" / nb.stem / "record.json").read_text("utf-8"))
        rows.append(
            {
                **row,
                "status": "done",
                "html": str(html),
                "sparsity_bitwise": record["headline"].get("sparsity_bitwise"),
            }
        )
    batch.mkdir(parents=True, exist_ok=True)
    write_text_atomic(batch / "summary.json", json.dumps(rows, indent=1) + "\n")
    return rows
