"""Long runs (notebook 13): reading a run that is still training, and its views (sparsity vs step
with the monitor cross-check, S_1 / S_k, rolling bands), each against a naive whole-tensor or
plain-numpy reference on a synthetic run folder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from rlsparse_lib.errors import ConfigError
from rlsparse_lib.experiments import Experiment
from rlsparse_lib.experiments import long_runs as lr
from tests.ckpt_factory import bump_bits, pick, random_state, save_hf

STEPS = 6  # optimizer steps of the synthetic run
EVERY = 2  # checkpoint cadence


def _states(seed: int) -> list[dict[str, torch.Tensor]]:
    """θ0 … θ6 (bf16): each step moves 1 ULP of a random subset; step 5 moves some of step 4's
    changes back (updated, then cancelled)."""
    states = [random_state(seed=seed)]
    for s in range(1, STEPS + 1):
        prev = states[-1]
        cur = {}
        for i, (name, t) in enumerate(prev.items()):
            idx = pick(t.numel(), max(1, t.numel() // 7), seed=1000 * seed + 10 * s + i)
            cur[name] = bump_bits(t, idx, k=-1 if s == 5 else 1)
        states.append(cur)
    return states


def _changed(a: dict, b: dict) -> int:
    return sum(int((a[n].view(torch.int16) != b[n].view(torch.int16)).sum()) for n in a)


def _monitor_records(states: list[dict], mixed: bool) -> list[dict]:
    """What the monitor logs for this series: the stored bf16 view (``*_bf16`` keys and fp32
    counts that never agree with it for a mixed run; plain keys for a pure-bf16 run)."""
    n = sum(t.numel() for t in states[0].values())
    recs = []
    for s in range(1, len(states)):
        vs_init, step = _changed(states[0], states[s]), _changed(states[s - 1], states[s])
        rec = {"step": s, "n_params": n, "dtype": "float32" if mixed else "bfloat16"}
        if mixed:  # the fp32 master moves everywhere; the bf16 view is what the files hold
            rec.update(changed_vs_init=n, sparsity_vs_init=0.0, changed_step=n, sparsity_step=0.0)
            rec.update(
                changed_vs_init_bf16=vs_init,
                sparsity_vs_init_bf16=(n - vs_init) / n,
                changed_step_bf16=step,
                sparsity_step_bf16=(n - step) / n,
            )
        else:
            rec.update(
                changed_vs_init=vs_init,
                sparsity_vs_init=(n - vs_init) / n,
                changed_step=step,
                sparsity_step=(n - step) / n,
            )
        recs.append(rec)
    return recs


def _write_run(folder: Path, kind: str, seed: int, mixed: bool, upto: int = STEPS) -> list[dict]:
    """A partial run folder as the runner leaves it mid-training; returns θ0 … θ_upto."""
    states = _states(seed)[: upto + 1]
    folder.mkdir(parents=True)
    config = {
        "kind": kind,
        "name": f"toy-{kind}",
        "precision": "mixed" if mixed else "bf16",
        "train": {"steps": 10, "lr": 1e-5},
        "checkpoints": {"every": EVERY, "fp32": False},
        "task": {"eval_size": 8},
        "eval": {"max_new_tokens": 16},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    for s in range(0, upto + 1, EVERY):
        save_hf(folder / f"step_{s:06d}", states[s])
    (folder / ".step_000099").mkdir()  # a checkpoint being written: ignored
    rng = np.random.default_rng(seed)
    hist = []
    for s in range(1, upto + 1):
        if kind == "sft":
            hist.append({"step": s, "loss": 2.0 / s, "mean_token_accuracy": 0.5 + s / 100})
        else:
            hist.append({"step": s, "loss": 0.0, "reward": float(rng.random()), "reward_std": 0.1})
    lines = "".join(json.dumps(h) + "\n" for h in hist)
    (folder / "history.jsonl").write_text(lines + '{"step": 99, "lo')  # a torn last line
    mon = _monitor_records(states, mixed)
    (folder / "monitor.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mon))
    prelude = {"eval_before": {"n": 256, "accuracy": 0.109375, "mean_reward": 0.11}}
    (folder / "prelude.json").write_text(json.dumps(prelude))
    return states


@pytest.fixture
def toy(tmp_path: Path) -> dict:
    sft = tmp_path / "runs" / ".toy-sft.partial"
    grpo = tmp_path / "runs" / ".toy-grpo.partial"
    return {
        "states": {
            "SFT": _write_run(sft, "sft", 1, True),
            "GRPO": _write_run(grpo, "grpo", 2, False),
        },
        "folders": [sft, grpo],
        "exp": Experiment("13_long_horizon", out_root=str(tmp_path / "out")),
    }


def test_open_run_reads_a_partial_run_as_far_as_it_got(toy) -> None:
    runs = lr.open_runs(toy["folders"])
    assert list(runs) == ["SFT", "GRPO"]
    m = runs["SFT"].manifest
    assert m["status"] == "partial" and m["kind"] == "sft" and m["name"] == "toy-sft"
    assert [c["step"] for c in m["checkpoints"]] == [0, 2, 4, 6]
    assert runs["SFT"].checkpoint(4) == toy["folders"][0] / "step_000004"
    assert [h["step"] for h in m["history"]] == list(range(1, STEPS + 1))  # torn line skipped
    assert [r["step"] for r in m["monitor"]] == list(range(1, STEPS + 1))
    assert m["eval"] == {
        "before": {"n": 256, "accuracy": 0.109375, "mean_reward": 0.11},
        "after": None,
    }
    rows = pd.DataFrame(lr.analysed_steps(runs)).set_index("run")
    assert rows.loc["GRPO", "last_checkpoint"] == 6 and rows.loc["GRPO", "steps_configured"] == 10
    assert rows.loc["GRPO", "status"] == "partial" and rows.loc["SFT", "last_history_step"] == 6


def test_open_run_of_a_finished_run_is_its_manifest(tmp_path: Path) -> None:
    folder = tmp_path / "done"
    folder.mkdir()
    manifest = {"name": "done", "kind": "grpo", "status": "complete", "checkpoints": []}
    (folder / "run.json").write_text(json.dumps(manifest))
    assert lr.open_run(folder).manifest == manifest


def test_two_runs_of_one_kind_are_labelled_by_name(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _write_run(a, "grpo", 1, False, upto=2)
    _write_run(b, "grpo", 2, False, upto=2)
    (b / "config.yaml").write_text((b / "config.yaml").read_text().replace("toy-grpo", "toy-b"))
    assert list(lr.open_runs([a, b])) == ["toy-grpo", "toy-b"]


@pytest.mark.parametrize("broken", ["missing", "no config", "no theta0", "bad config"])
def test_open_run_refuses_what_is_not_a_run(tmp_path: Path, broken: str) -> None:
    folder = tmp_path / "run"
    if broken != "missing":
        _write_run(folder, "grpo", 1, False, upto=2)
    if broken == "no config":
        (folder / "config.yaml").unlink()
    elif broken == "no theta0":
        for p in (folder / "step_000000").iterdir():
            p.unlink()
    elif broken == "bad config":
        (folder / "config.yaml").write_text("just: a mapping\n")
    with pytest.raises(ConfigError, match=str(folder)):
        lr.open_run(folder)


def test_read_jsonl_skips_the_line_being_written(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    assert lr.read_jsonl(path) == []
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3')
    assert lr.read_jsonl(path) == [{"step": 1}, {"step": 2}]
    for broken, line in (('{"step": 1}\n{"step"\n{"step": 3}\n', 2), ("[1]\n", 1)):
        path.write_text(broken)
        with pytest.raises(ConfigError, match=f"{path}: line {line} is not"):
            lr.read_jsonl(path)


def _naive_vs_init(s0: dict, st: dict) -> tuple[int, int, int]:
    """(n, unchanged bitwise, unchanged at |Δ| <= 1e-5) over whole tensors."""
    n = same = close = 0
    for name, a in s0.items():
        b = st[name]
        n += a.numel()
        same += int((a.view(torch.int16) == b.view(torch.int16)).sum())
        close += int(((b.double() - a.double()).abs() <= 1e-5).sum())
    return n, same, close


def test_sparsity_vs_step_equals_naive_counts_and_the_monitor(toy) -> None:
    runs = lr.open_runs(toy["folders"])
    monitor = lr.monitor_table(runs)
    along = lr.sparsity_vs_step(toy["exp"], runs, monitor)
    assert list(zip(along["run"], along["step"], strict=True)) == [
        (r, s) for r in ("SFT", "GRPO") for s in (2, 4, 6)
    ]
    for row in along.to_dict("records"):
        states = toy["states"][row["run"]]
        n, same, close = _naive_vs_init(states[0], states[row["step"]])
        assert (row["n_params"], row["n_changed"]) == (n, n - same)
        assert row["sparsity_bitwise"] == same / n and row["sparsity_tol_1e-05"] == close / n
        assert row["monitor_changed"] == n - same and row["monitor_agrees"] is True
    assert 0 < along["sparsity_bitwise"].min() < along["sparsity_tol_1e-05"].max() <= 1


def test_a_monitor_that_disagrees_is_flagged(toy) -> None:
    runs = lr.open_runs(toy["folders"])
    monitor = lr.monitor_table(runs)
    wrong = (monitor["run"] == "GRPO") & (monitor["step"] == 4)
    monitor.loc[wrong, "changed_vs_init"] += 1
    along = lr.sparsity_vs_step(toy["exp"], runs, monitor).set_index(["run", "step"])
    assert not along.loc[("GRPO", 4), "monitor_agrees"]
    assert along["monitor_agrees"].sum() == 5


def test_stored_view_takes_the_bf16_counts_of_fp32_runs(toy) -> None:
    view = lr.stored_view(lr.monitor_table(lr.open_runs(toy["folders"])))
    for label, states in toy["states"].items():
        v = view[view["run"] == label].set_index("step")
        for s in range(1, STEPS + 1):
            assert v.loc[s, "changed_vs_init"] == _changed(states[0], states[s])
            assert v.loc[s, "changed_step"] == _changed(states[s - 1], states[s])
            n = v.loc[s, "n_params"]
            assert v.loc[s, "sparsity_step"] == (n - v.loc[s, "changed_step"]) / n


def test_k_step_table_equals_naive_counts(toy) -> None:
    runs = lr.open_runs(toy["folders"])
    table = lr.k_step_table(runs, lr.monitor_table(runs))
    for label, states in toy["states"].items():
        n = sum(t.numel() for t in states[0].values())
        mine = table[table["run"] == label]
        ck = mine[mine["source"] == "checkpoints"]
        expected = [(k, t) for k in (2, 4, 6) for t in (0, 2, 4) if t + k <= STEPS]
        assert list(zip(ck["k"], ck["step"], strict=True)) == expected
        for row in ck.to_dict("records"):
            same = n - _changed(states[row["step"]], states[row["step"] + row["k"]])
            assert (row["n_elements"], row["n_unchanged"]) == (n, same)
            assert row["sparsity"] == same / n
        mon = mine[mine["source"] == "monitor"]
        assert set(mon["k"]) == {1} and list(mon["step"]) == list(range(STEPS))
        for row in mon.to_dict("records"):
            assert (
                row["sparsity"] == (n - _changed(states[row["step"]], states[row["step"] + 1])) / n
            )
    means = lr.k_step_means(table).set_index(["run", "source", "k"])
    ck = table[(table["run"] == "SFT") & (table["k"] == 2)]
    assert means.loc[("SFT", "checkpoints", 2), "sparsity"] == pytest.approx(ck["sparsity"].mean())
    assert means.loc[("SFT", "checkpoints", 2), "n_pairs"] == 3


def test_rolling_band_equals_a_naive_window_loop() -> None:
    rng = np.random.default_rng(0)
    values = rng.random(40)
    history = pd.DataFrame({"run": "GRPO", "step": np.arange(1, 41), "reward": values})
    band = lr.rolling_band(history, "reward", 7)
    for i, row in enumerate(band.to_dict("records")):
        w = values[max(0, i - 6) : i + 1]
        assert row["n"] == len(w) and row["mean"] == pytest.approx(w.mean(), rel=1e-12)
        if len(w) > 1:
            half = 1.959963984540054 * w.std(ddof=1) / math.sqrt(len(w))
            assert row["lo"] == pytest.approx(w.mean() - half, rel=1e-9)
            assert row["hi"] == pytest.approx(w.mean() + half, rel=1e-9)
        else:
            assert math.isnan(row["lo"])
    with pytest.raises(ConfigError, match="window"):
        lr.rolling_band(history, "reward", 0)


def test_window_means_and_the_verdict() -> None:
    steps = np.arange(1, 61)
    rising = np.r_[np.full(20, 0.1), np.full(20, 0.3), np.full(20, 0.5)] + 0.01 * (steps % 3)
    history = pd.DataFrame({"run": "GRPO", "step": steps, "reward": rising})
    rows = lr.window_means(history, "reward", 20)
    first, last = rows
    assert (first["from_step"], first["to_step"], last["from_step"], last["to_step"]) == (
        1,
        20,
        41,
        60,
    )
    assert first["mean"] == pytest.approx(rising[:20].mean())
    assert last["mean"] == pytest.approx(rising[-20:].mean())
    assert last["lo"] > first["hi"]
    assert lr._verdict(first, last).startswith("rose")
    assert lr._verdict(last, first).startswith("fell")
    assert lr._verdict(first, first).startswith("no change")


def test_curves_and_windows_keep_reward_for_rl_and_loss_for_sft(toy) -> None:
    runs = lr.open_runs(toy["folders"])
    history = lr.history_table(runs)
    curves = lr.curves_table(history, 3)
    assert set(zip(curves["metric"], curves["run"], strict=True)) == {
        ("reward", "GRPO"),
        ("loss", "SFT"),
        ("mean_token_accuracy", "SFT"),
    }
    windows = lr.window_table(history, 3)
    assert set(zip(windows["column"], windows["run"], strict=True)) == {
        ("reward", "GRPO"),
        ("loss", "SFT"),
        ("mean_token_accuracy", "SFT"),
    }
    evals = lr.evaluation_rows(runs)
    assert evals.to_dict("records") == [
        {"run": r, "step": 0, "accuracy": 0.109375, "n": 256, "source": "run"}
        for r in ("SFT", "GRPO")
    ]


def test_checkpoint_evaluations_are_reused_by_weight_content(toy, monkeypatch) -> None:
    """A checkpoint is evaluated once; a stored row is reused only for the same weight bytes."""
    import rlsparse_lib.experiments.evaluate as evaluate

    calls = []

    def fake_accuracy(path, run, max_new_tokens=None):
        calls.append((run.manifest["name"], Path(path).name))
        return 0.25 * len(calls)

    monkeypatch.setattr(evaluate, "checkpoint_accuracy", fake_accuracy)
    exp, runs = toy["exp"], lr.open_runs(toy["folders"])
    first = exp.table("checkpoint_evaluations", lr.checkpoint_evaluations(exp, runs, (0, 4, 5)))
    assert calls == [(n, f"step_00000{s}") for n in ("toy-sft", "toy-grpo") for s in (0, 4)]
    assert list(first["accuracy"]) == [0.25, 0.5, 0.75, 1.0] and set(first["n"]) == {8}
    again = lr.checkpoint_evaluations(exp, runs, (0, 4))
    assert len(calls) == 4 and again.equals(first)  # all reused
    save_hf(toy["folders"][1] / "step_000004", toy["states"]["GRPO"][3])  # other bytes
    changed = lr.checkpoint_evaluations(exp, lr.open_runs(toy["folders"]), (0, 4))
    assert calls[4:] == [("toy-grpo", "step_000004")] and changed["accuracy"].iloc[3] == 1.25
    save_hf(toy["folders"][1] / "step_000000", toy["states"]["SFT"][0])  # a shared θ0
    (exp.results / "checkpoint_evaluations.csv").unlink()
    del calls[:]
    shared = lr.checkpoint_evaluations(exp, lr.open_runs(toy["folders"]), (0,))
    assert calls == [("toy-sft", "step_000000")] and list(shared["accuracy"]) == [0.25, 0.25]
    rows = lr.evaluation_rows(runs, first)
    assert list(rows["source"]) == ["run", "run"] + ["checkpoint"] * 4
    assert list(rows["step"]) == [0, 0, 0, 4, 0, 4]


def test_record_and_summary_of_the_toy_runs(toy) -> None:
    runs = lr.open_runs(toy["folders"])
    history, monitor = lr.history_table(runs), lr.monitor_table(runs)
    along = lr.sparsity_vs_step(toy["exp"], runs, monitor)
    series, fate = lr.dynamics_tables(runs)
    assert (
        series.groupby("run")["sparsity_bitwise"].apply(list)
        == along.groupby("run")["sparsity_bitwise"].apply(list)
    ).all()
    k_step = lr.k_step_table(runs, monitor)
    record = lr.long_record(
        pd.DataFrame(lr.analysed_steps(runs)),
        lr.window_table(history, 3),
        along,
        fate,
        k_step,
        lr.evaluation_rows(runs),
    )
    grpo = record["GRPO"]
    assert (
        grpo["last"]["step"] == 6
        and grpo["monitor_agrees"] is True
        and grpo["monitor_checked"] == 3
    )
    assert (
        grpo["fate"]["n_never"] + grpo["fate"]["n_cancelled"] + grpo["fate"]["n_final"]
        == grpo["fate"]["n_params"]
    )
    assert grpo["fate"]["n_cancelled"] > 0  # step 5 moved some of step 4's changes back
    assert list(fate["to_step"]) == [6, 6] and "to_step" not in grpo["fate"]
    assert set(grpo["S_k"]) == {2, 4, 6} and lr.rl_label(runs) == "GRPO"
    text = "\n".join(lr.summary_lines(json.loads(json.dumps(record))))  # as record.json holds it
    assert "GRPO (toy-grpo, partial): checkpoints up to step 6 of 10" in text
    se = math.sqrt(0.109375 * (1 - 0.109375) / 256)
    assert f"held-out accuracy (± one standard error): step 0 0.109 ± {se:.3f} (fp32" in text
    assert (
        f"at step 6, the last checkpoint all runs have: SFT {record['SFT']['last']['sparsity_bitwise']:.2%}"
        in text
    )


def test_relative_run_folders_are_under_the_repository_root(toy, monkeypatch) -> None:
    """`rlsparse run 13 -p RUNS="data/runs/..."` executes in notebooks/: relative paths name
    folders under the repository root, not the kernel's working directory."""
    sft = toy["folders"][0]
    monkeypatch.setenv("RLSPARSE_ROOT", str(sft.parent.parent))
    monkeypatch.chdir(sft.parent)
    assert lr.open_run(Path("runs") / sft.name).path == sft
