"""Traps a newcomer falls into (issue 11): a report's notebook view, progress bars in Jupyter
without ipywidgets, tied heads that are not tied, zero updates in the rank means, an --include
that matches nothing, multi-value options written before the positionals, non-mask files."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest
import torch

from rlsparse_lib import cli
from rlsparse_lib.analysis.rank import RankReport, update_ranks
from rlsparse_lib.cli import main
from rlsparse_lib.diff.config import DiffConfig
from rlsparse_lib.diff.engine import diff_checkpoints
from rlsparse_lib.errors import ConfigError
from rlsparse_lib.io.checkpoint import open_checkpoint
from rlsparse_lib.io.pairing import pair_checkpoints

from .ckpt_factory import pick, random_state, save_hf
from .test_diff_exact import planted


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    base, tuned, _ = planted()
    return save_hf(tmp_path / "base", base), save_hf(tmp_path / "tuned", tuned)


# ---- 1. a report in a notebook -----------------------------------------------------------------
def test_report_repr_is_the_short_summary(pair) -> None:
    rep = diff_checkpoints(*pair, DiffConfig(), progress=False)
    text, html = repr(rep), rep._repr_html_()
    assert len(text) < 8_000 and len(html) < 10_000
    assert f"bitwise sparsity {100 * rep.sparsity:.4f}%" in text.splitlines()[0]
    assert "bitwise (bits differ)" in text and "ulp_hist" not in text
    assert html.startswith("<pre>") and html.endswith("</pre>") and "&lt;=" in html


# ---- 2. progress bars in Jupyter ---------------------------------------------------------------
def test_notebook_bar_falls_back_to_text_without_ipywidgets(monkeypatch) -> None:
    from tqdm.std import tqdm as text_tqdm

    from rlsparse_lib import progress

    monkeypatch.setattr(progress, "_in_notebook", lambda: True)
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # `import ipywidgets` raises ImportError
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # tqdm.auto would warn "IProgress not found"
        bar = progress.progress_bar(total=3, disable=False, file=sys.stderr)
    try:
        assert type(bar) is text_tqdm
    finally:
        bar.close()
    monkeypatch.setattr(progress, "_in_notebook", lambda: False)
    assert progress._bar_class() is text_tqdm


# ---- 3a. a stored head that differs from the embedding is compared -----------------------------
def test_untied_stored_head_is_compared(tmp_path: Path) -> None:
    base = random_state(seed=3)
    base["lm_head.weight"] = base["model.embed_tokens.weight"].clone()
    tuned = {k: v.clone() for k, v in base.items()}
    head = tuned["lm_head.weight"].reshape(-1)
    head[pick(head.numel(), 50, 1)] += 1.0  # the head moves, the embedding does not
    cfg = {"tie_word_embeddings": True}
    b = save_hf(tmp_path / "b", base, config=cfg)
    t = save_hf(tmp_path / "t", tuned, config=cfg)
    rep = diff_checkpoints(b, t, DiffConfig(), progress=False)
    got = {r.name: r for r in rep.tensors}
    assert got["lm_head.weight"].n_changed == 50 and rep.n_changed == 50
    assert "lm_head.weight" not in {s["name"] for s in rep.skipped}
    assert any("differs from the embedding" in n and "compared" in n for n in rep.tied)
    # bit-for-bit equal heads stay counted once
    same = save_hf(tmp_path / "same", base, config=cfg)
    plan = pair_checkpoints(open_checkpoint(b), open_checkpoint(same))
    assert "lm_head.weight" in {s.name for s in plan.skipped}


# ---- 3b. ΔW = 0 in the rank summary ------------------------------------------------------------
def test_rank_summary_counts_zero_updates_apart(tmp_path: Path) -> None:
    base = random_state(dtype=torch.float32, seed=0)
    tuned = {k: v.clone() for k, v in base.items()}
    tuned["lm_head.weight"] += 1e-2 * torch.randn_like(tuned["lm_head.weight"])
    rep = update_ranks(
        save_hf(tmp_path / "b", base), save_hf(tmp_path / "t", tuned), progress=False, device="cpu"
    )
    s = rep.summary()
    n2d = sum(t.ndim == 2 for t in base.values())
    assert s["n_matrices"] == 1 and s["n_zero_delta"] == n2d - 1
    assert s["mean_rank_pct"] == pytest.approx(100.0) and s["n_full_rank"] == 1
    matrices = json.loads(json.dumps(rep.to_dict()))["matrices"]
    zero = next(m for m in matrices if m["name"] != "lm_head.weight")
    assert zero["rank"] == 0 and zero["stable_rank"] is None  # the README's contract
    assert RankReport([zero]).summary()["mean_rank_pct"] is None


# ---- 3c. --include matching nothing ------------------------------------------------------------
@pytest.mark.parametrize("command", ["diff", "rank", "dynamics", "closeness", "mask"])
def test_include_matching_nothing_is_an_error(pair, command, capsys) -> None:
    b, t = (str(p) for p in pair)
    extra = ["-o", str(Path(b).parent / "m.safetensors")] if command == "mask" else []
    assert main([command, b, t, "--include", "q_porj", "-q", *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--include q_porj matches no tensor" in err, err


def test_include_check_in_pairing(pair) -> None:
    b, t = (open_checkpoint(p) for p in pair)
    with pytest.raises(ConfigError, match="--include nope typo matches no tensor"):
        pair_checkpoints(b, t, include=("nope", "typo"))
    assert pair_checkpoints(b, t, include=("nope", "q_proj")).pairs


# ---- 3d. multi-value options before the positionals --------------------------------------------
def test_multi_value_options_before_positionals_end_to_end(tmp_path: Path, pair) -> None:
    b, t = (str(p) for p in pair)
    j1, j2 = tmp_path / "1.json", tmp_path / "2.json"
    assert main(["diff", "--tol", "1e-5", "1e-4", b, t, "-q", "--json", str(j1)]) == 0
    assert [float(k) for k in json.loads(j1.read_text())["tolerances"]] == [1e-5, 1e-4]
    assert main(["diff", "--include", "q_proj", b, t, "-q", "--json", str(j2)]) == 0
    names = [x["name"] for x in json.loads(j2.read_text())["tensors"]]
    assert names and all("q_proj" in n for n in names)


def _parse(argv: list[str]):
    return cli._parse(cli._build_parser(argv[0]), argv, argv[0])


def test_multi_value_options_before_positionals_parse(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("b", "t", "c1", "c2", "m1", "m2"):
        Path(name).mkdir()
    a = _parse(["diff", "--include", "q_proj", "k_proj", "b", "t", "--tol", "0", "1e-3"])
    assert (a.base, a.tuned, a.include, a.tol) == ("b", "t", ["q_proj", "k_proj"], [0.0, 1e-3])
    a = _parse(["diff", "--exclude", "norm", "hub/base", "hub/tuned"])  # no paths: by count
    assert (a.base, a.tuned, a.exclude) == ("hub/base", "hub/tuned", ["norm"])
    a = _parse(["dynamics", "--steps", "10", "20", "--labels", "x", "y", "b", "c1", "c2"])
    assert (a.init, a.checkpoints, a.steps, a.labels) == ("b", ["c1", "c2"], [10, 20], ["x", "y"])
    a = _parse(["overlap", "--labels", "sft", "rl", "m1", "m2"])
    assert (a.masks, a.labels) == (["m1", "m2"], ["sft", "rl"])
    a = _parse(["rank", "--rtol-grid", "1e-3", "1e-2", "b", "t"])
    assert (a.base, a.tuned, a.rtol_grid) == ("b", "t", [1e-3, 1e-2])
    a = _parse(["closeness", "--tol", "1e-6", "b", "t", "--include", "mlp", "c1"])
    assert (a.a, a.b, a.tol, a.include) == ("b", "t", [1e-6], ["mlp", "c1"])  # options last: as is
    a = _parse(["mask", "--include", "q_proj", "b", "t", "-o", "m.safetensors"])
    assert (a.args, a.include, a.out) == (["b", "t"], ["q_proj"], "m.safetensors")
    a = _parse(["train", "--set", "train.lr=1e-5", "seed=1", "b"])
    assert (str(a.config), a.set) == ("b", ["train.lr=1e-5", "seed=1"])
    a = _parse(["eval", "--param", "min_digits=1", "b", "--n", "4"])
    assert (a.checkpoint, a.param, a.n) == ("b", ["min_digits=1"], 4)
    a = _parse(["figures", "--only", "07", "09"])
    assert a.only == ["07", "09"]


def test_parse_errors_still_one_usage_and_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        _parse(["diff", "--tol", "1e-5", "base"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "usage: rlsparse diff" in err
    assert err.count("error:") == 1 and "required: TUNED" in err, err
    with pytest.raises(SystemExit):
        _parse(["diff", "b", "t", "--tol", "fast"])
    assert "invalid float value: 'fast'" in capsys.readouterr().err


# ---- 3e. mask info on a file that is no mask ---------------------------------------------------
def test_mask_info_on_non_masks_is_one_line(tmp_path: Path, pair, capsys) -> None:
    text = tmp_path / "notes.txt"
    text.write_text('{"not": "a mask"}\n' * 20)
    folder = tmp_path / "folder"
    folder.mkdir()
    checkpoint = pair[0] / "model.safetensors"
    for path, message in (
        (text, "not a safetensors mask file"),
        (folder, "a folder, not a mask file"),
        (checkpoint, "not an rlsparse mask file"),
    ):
        assert main(["mask", "info", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
