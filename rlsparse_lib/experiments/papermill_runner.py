"""Execute the experiment notebooks through papermill.

Every notebook in ``notebooks/`` has a ``parameters`` cell of scalars (``SOURCE``, ``SMOKE``,
``OUT_ROOT``, ``DEVICE``, ``SEED``, ...). The runner checks the names you pass against that cell
(papermill itself only warns on unknown names), executes each notebook into
``<root>/data/runs/notebooks/<name>.ipynb`` with a quiet, reproducible environment
(``TQDM_DISABLE=1``, fixed ``SOURCE_DATE_EPOCH``), and stops at the first failure, leaving the
partly executed notebook for inspection.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rlsparse_lib.errors import ConfigError, RlsparseError
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
    """``["SEED=1", "SOURCE=hub"]`` -> ``{"SEED": 1, "SOURCE": "hub"}`` (Python literals, else strings)."""
    out: dict[str, object] = {}
    for item in pairs:
        key, sep, raw = item.partition("=")
        if not sep or not key.isidentifier():
            raise ConfigError(f"-p expects KEY=VALUE, got {item!r}")
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key] = raw
    return out


def notebook_parameters(path: Path) -> dict[str, dict]:
    """The parameters cell of a notebook: name -> {inferred_type_name, default, help}."""
    import papermill as pm

    return {name: dict(info) for name, info in pm.inspect_notebook(str(path)).items()}


def execute(path: Path, params: dict[str, object], output: Path, log: bool = True) -> Path:
    """Run one notebook with ``params`` into ``output`` (parameter names are checked first)."""
    import papermill as pm

    known = notebook_parameters(path)
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ConfigError(
            f"{path.name}: unknown parameter(s) {', '.join(unknown)} (known: {', '.join(known)})"
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    with _environment():
        try:
            pm.execute_notebook(
                str(path),
                str(output),
                parameters=params,
                kernel_name="python3",
                language="python",
                cwd=str(path.parent),
                progress_bar=not log,  # cell progress when the output is not streamed
                log_output=log,
            )
        except pm.PapermillExecutionError as err:
            raise RlsparseError(
                f"{path.name} failed in cell {err.exec_count} ({err.ename}: {err.evalue}); "
                f"partial output: {output}"
            ) from err
    return output


def run_notebooks(
    name: str,
    params: dict[str, object],
    smoke: bool = False,
    out_root: str | None = None,
    log: bool = True,
) -> list[Path]:
    """Execute ``name`` (or ``all``) with ``params``; returns the executed notebooks' paths."""
    paths = Paths.at(out_root)
    params = dict(params)
    if smoke:
        params["SMOKE"] = True
    if out_root:
        params["OUT_ROOT"] = str(paths.root)
    suffix = "__smoke" if params.get("SMOKE") else ""
    done = []
    for nb in resolve(name):
        out = paths.runs / "notebooks" / f"{nb.stem}{suffix}.ipynb"
        done.append(execute(nb, params, out, log=log))
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
