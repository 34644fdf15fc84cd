"""The streaming report writer (:func:`rlsparse_lib.provenance.save_report_json`) writes the same
bytes as ``json.dumps(data, indent=1)`` (and ``gzip.compress`` of them), without holding the text
or the rows of a :class:`Rows` list in memory."""

from __future__ import annotations

import gzip
import json
import tracemalloc

import numpy as np
import torch

from rlsparse_lib.diff.config import DiffConfig
from rlsparse_lib.diff.engine import diff_checkpoints
from rlsparse_lib.diff.report import DiffReport
from rlsparse_lib.provenance import Rows, save_report_json

from .ckpt_factory import save_hf
from .test_diff_exact import planted


def _reference(data) -> str:
    """What the writer wrote before it streamed: the whole text in one ``json.dumps``."""
    plain = {k: list(v) if isinstance(v, Rows) else v for k, v in data.items()}
    return json.dumps(plain, indent=1, default=lambda o: o.tolist()) + "\n"


def test_a_diff_report_is_written_as_one_json_dumps_would(tmp_path) -> None:
    base, tuned, _ = planted()
    base["model.extra_buffer"] = torch.arange(10, dtype=torch.int64)
    tuned["model.extra_buffer"] = torch.arange(10, dtype=torch.int64) * 2
    tuned["model.only_tuned.weight"] = torch.zeros(3, 3)
    b, t = save_hf(tmp_path / "b", base, shards=2), save_hf(tmp_path / "t", tuned)
    rep = diff_checkpoints(b, t, DiffConfig(), progress=False)
    assert rep.tensors and rep.buffers and rep.skipped
    rep.save_json(tmp_path / "r.json")
    rep.save_json(tmp_path / "r.json.gz")
    text = json.dumps(rep.to_dict(), indent=1) + "\n"
    assert (tmp_path / "r.json").read_text(encoding="utf-8") == text
    assert (tmp_path / "r.json.gz").read_bytes() == gzip.compress(text.encode(), mtime=0)
    loaded = DiffReport.load(tmp_path / "r.json.gz")
    assert json.dumps(loaded.to_dict()) == json.dumps(rep.to_dict())


def test_nested_empty_unicode_and_numpy_values(tmp_path) -> None:
    data = {
        "schema": "x/1",
        "empty": {},
        "none": [],
        "nested": {"a": [1, [2, {"b": []}], {}], "é": 'θ0 → θ1\n\t"q"'},
        "numbers": [np.int64(3), np.float32(0.5), np.arange(3), 1e-310, -0.0],
        "rows": Rows([1, 2, 3], lambda i: {"i": i, "sq": [i * i, {"x": None}]}),
        "no_rows": Rows([], lambda i: i),
        "scalar_rows": Rows(["a", "b"], str.upper),
    }
    save_report_json(tmp_path / "d.json", data)
    assert (tmp_path / "d.json").read_text(encoding="utf-8") == _reference(data)
    save_report_json(tmp_path / "e.json", {})
    assert (tmp_path / "e.json").read_text(encoding="utf-8") == "{}\n"


def test_rows_are_made_and_written_one_at_a_time(tmp_path) -> None:
    """5 000 rows of ~2 KB (~10 MB of text): the writer's peak Python memory stays < 1 MB."""
    payload = "x" * 2000
    data = {"schema": "x/1", "tensors": Rows(range(5_000), lambda i: {"i": i, "v": payload})}
    tracemalloc.start()
    try:
        save_report_json(tmp_path / "big.json", data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    size = (tmp_path / "big.json").stat().st_size
    assert size > 9_000_000
    assert peak < size / 10, (peak, size)
    assert (tmp_path / "big.json").read_text(encoding="utf-8") == _reference(data)
