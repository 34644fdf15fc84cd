"""The paper's further algorithms as run kinds on the tiny model: ORPO and SimPO (TRL's
experimental ORPO / CPO trainers) train, write their checkpoint series, and their monitor equals a
diff of the checkpoints; config validation of their sections."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from rlsparse_lib.diff.config import DiffConfig
from rlsparse_lib.diff.engine import diff_checkpoints
from rlsparse_lib.errors import ConfigError
from rlsparse_lib.training.config import config_from_dict, load_config
from rlsparse_lib.training.runner import train
from rlsparse_lib.training.tasks import Task

from .test_train_factory import digit_score, make_tiny, tiny_config

CONFIGS = Path(__file__).resolve().parent.parent / "data" / "configs" / "cpu"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny(tmp_path_factory)


def pref_config(model_dir: Path, kind: str, **sections: dict) -> dict:
    """``tiny_config`` with external pairs unless ``preference`` says otherwise."""
    sections["preference"] = {"data": "external", **sections.get("preference", {})}
    return tiny_config(model_dir, kind, **sections)


def _monitor_equals_checkpoint_diffs(result, steps: int) -> None:
    records = {r["step"]: r for r in result.manifest["monitor"]}
    assert sorted(records) == list(range(1, steps + 1))
    bitwise = DiffConfig(tolerances=(0.0,))
    for dtype, suffix in (("bf16", "_bf16"), ("fp32", "")):
        for step, rec in records.items():
            init = diff_checkpoints(
                result.checkpoint(0, dtype), result.checkpoint(step, dtype), bitwise, progress=False
            )
            prev = diff_checkpoints(
                result.checkpoint(step - 1, dtype),
                result.checkpoint(step, dtype),
                bitwise,
                progress=False,
            )
            assert rec[f"changed_vs_init{suffix}"] == init.n_changed, (dtype, step)
            assert rec[f"changed_step{suffix}"] == prev.n_changed, (dtype, step)
    assert records[steps]["changed_vs_init"] > 0  # it trained: the equalities are not 0 == 0


@pytest.mark.parametrize(
    ("kind", "preference"),
    [
        ("orpo", {"data": "external"}),
        ("simpo", {"data": "external", "beta": 2.0}),
        ("orpo", {"data": "own"}),
    ],
    ids=["orpo-external", "simpo-external", "orpo-own"],
)
def test_reference_free_preference_kinds_train(
    tmp_path: Path, tiny_dir: Path, monkeypatch, kind: str, preference: dict
) -> None:
    monkeypatch.setattr(Task, "score", digit_score)
    extra: dict = {"preference": preference}
    if preference["data"] == "own":
        extra["sampling"] = {"prompts": 8}
    cfg = config_from_dict(pref_config(tiny_dir, kind, **extra))
    result = train(cfg, out_root=tmp_path, progress=False)
    m = result.manifest
    assert m["status"] == "complete" and m["kind"] == kind
    assert [c["step"] for c in m["checkpoints"]] == [0, 1, 2]
    losses = [h["loss"] for h in m["history"] if "loss" in h]
    assert len(losses) == 2
    assert m["final_diff"]["fp32"]["n_changed"] > 0
    if cfg.uses_own_samples:
        assert m["data"]["own_samples"]["n_samples"] == 8 * 4
    _monitor_equals_checkpoint_diffs(result, 2)


def test_simpo_is_cpo_simpo_without_bc_term(tiny_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from rlsparse_lib.training.builders import build_trainer
    from rlsparse_lib.training.models import load_model

    cfg = config_from_dict(pref_config(tiny_dir, "simpo", preference={"beta": 2.0}))
    model, tok = load_model(str(tiny_dir), "float32")
    task = Task(cfg.task)
    rows = [
        {
            "prompt": task.messages(e),
            "chosen": [{"role": "assistant", "content": "1"}],
            "rejected": [{"role": "assistant", "content": "2"}],
        }
        for e in task.train[:4]
    ]
    trainer = build_trainer(cfg, model, tok, task, rows, [], tmp_path, use_cpu=True)
    assert trainer.args.loss_type == "simpo" and trainer.args.cpo_alpha == 0.0
    assert trainer.args.beta == 2.0


@pytest.mark.parametrize("kind", ["orpo", "simpo"])
def test_config_sections(tiny_dir: Path, kind: str) -> None:
    ok = config_from_dict(pref_config(tiny_dir, kind, preference={"data": "own"}, sampling={}))
    assert ok.uses_own_samples and ok.sampling is not None
    assert config_from_dict(pref_config(tiny_dir, kind)).sampling is None  # external: no sampling
    with pytest.raises(ConfigError, match="section 'rl' does not apply"):
        config_from_dict(pref_config(tiny_dir, kind, rl={"num_generations": 2}))
    with pytest.raises(
        ConfigError, match=r"'sampling' does not apply to preference\.data: external"
    ):
        config_from_dict(pref_config(tiny_dir, kind, sampling={"prompts": 4}))
    with pytest.raises(ConfigError, match=r"preference\.loss_type"):
        config_from_dict(pref_config(tiny_dir, kind, preference={"loss_type": "hinge"}))
    with pytest.raises(ConfigError, match=r"preference\.beta"):
        config_from_dict(pref_config(tiny_dir, kind, preference={"beta": 0}))
    # the CPU config loads and is the kind it says
    assert load_config(CONFIGS / f"{kind}.yaml").kind == kind


def test_dpo_keeps_its_loss_type(tiny_dir: Path) -> None:
    cfg = config_from_dict(tiny_config(tiny_dir, "dpo", preference={"loss_type": "hinge"}))
    assert cfg.preference is not None and cfg.preference.loss_type == "hinge"


# ---- PRIME -------------------------------------------------------------------------------------
def test_implicit_reward_and_prm_loss_equal_a_naive_computation() -> None:
    from rlsparse_lib.training.prime import implicit_rewards, prm_loss, token_logps

    torch.manual_seed(0)
    vocab, p_len, c_len = 11, 3, 4
    prm = torch.nn.Sequential(torch.nn.Embedding(vocab, 8), torch.nn.Linear(8, vocab))
    ref = torch.nn.Sequential(torch.nn.Embedding(vocab, 8), torch.nn.Linear(8, vocab))

    class Causal(torch.nn.Module):  # logits of position t depend on token t (a bigram model)
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, input_ids, attention_mask):
            return type("Out", (), {"logits": self.net(input_ids)})()

    ids = torch.randint(0, vocab, (2, p_len + c_len))
    attn = torch.ones_like(ids)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    beta, outcome = 0.05, torch.tensor([1.0, 0.0])
    lp_prm = token_logps(Causal(prm), ids, attn, c_len)
    lp_ref = token_logps(Causal(ref), ids, attn, c_len)
    got = implicit_rewards(lp_prm, lp_ref, mask, beta)
    loss = prm_loss(lp_prm, lp_ref, mask, beta, outcome)
    naive_loss = 0.0
    for b in range(2):
        seq = 0.0
        for t in range(c_len):
            pos = p_len + t  # the token at pos is predicted from the logits at pos - 1
            tok = int(ids[b, pos])
            p1 = torch.softmax(prm(ids[b, pos - 1 : pos]).detach(), -1)[0, tok]
            p0 = torch.softmax(ref(ids[b, pos - 1 : pos]).detach(), -1)[0, tok]
            want = beta * math.log(float(p1) / float(p0)) if mask[b, t] else 0.0
            assert float(got[b, t].detach()) == pytest.approx(want, abs=1e-6)
            seq += want
        prob = 1 / (1 + math.exp(-seq))
        y = float(outcome[b])
        naive_loss -= (y * math.log(prob) + (1 - y) * math.log(1 - prob)) / 2
    assert float(loss.detach()) == pytest.approx(naive_loss, rel=1e-5)


def test_advantages_equal_a_naive_rloo_computation() -> None:
    from rlsparse_lib.training.prime import prime_advantages, rloo_tokens

    g = torch.Generator().manual_seed(1)
    k, groups, t_len, weight = 4, 2, 5, 0.7
    b = k * groups
    process = torch.randn(b, t_len, generator=g, dtype=torch.float64)
    outcome = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    lengths = [5, 3, 1, 4, 2, 5, 5, 3]
    mask = torch.tensor([[t < n for t in range(t_len)] for n in lengths])
    process = process * mask
    got = prime_advantages(process, outcome, mask, k, weight)
    # naive: per sample, per token, with Python loops
    rewards = [[0.0] * t_len for _ in range(b)]
    for i in range(b):
        start = (i // k) * k
        group = range(start, start + k)
        means = {
            j: sum(float(process[j, t]) for t in range(lengths[j])) / lengths[j] for j in group
        }
        base_p = sum(means.values()) / (k - 1)
        others_o = sum(float(outcome[j]) for j in group if j != i) / (k - 1)
        for t in range(lengths[i]):
            rewards[i][t] = weight * (float(process[i, t]) * k / (k - 1) - base_p)
        rewards[i][lengths[i] - 1] += float(outcome[i]) - others_o
    returns = [
        [sum(rewards[i][t:]) if t < lengths[i] else 0.0 for t in range(t_len)] for i in range(b)
    ]
    flat = [returns[i][t] for i in range(b) for t in range(lengths[i])]
    mean = sum(flat) / len(flat)
    std = math.sqrt(sum((x - mean) ** 2 for x in flat) / (len(flat) - 1) + 1e-8)
    for i in range(b):
        for t in range(t_len):
            want = (returns[i][t] - mean) / std if t < lengths[i] else 0.0
            assert float(got[i, t]) == pytest.approx(want, abs=1e-9), (i, t)
    # a one-token (outcome) reward through rloo_tokens is plain RLOO: r_i - mean of the others
    one = torch.zeros(b, 1, dtype=torch.bool) | True
    rloo = rloo_tokens(outcome.unsqueeze(1), one, k).squeeze(1)
    for i in range(b):
        others = [float(outcome[j]) for j in range((i // k) * k, (i // k + 1) * k) if j != i]
        assert float(rloo[i]) == pytest.approx(float(outcome[i]) - sum(others) / (k - 1))


def test_prime_trains(tmp_path: Path, tiny_dir: Path, monkeypatch) -> None:
    monkeypatch.setattr(Task, "score", digit_score)
    cfg = config_from_dict(
        tiny_config(
            tiny_dir,
            "prime",
            train={"max_completion_length": 8},
            rl={"num_generations": 2},
            prime={"beta": 0.05},
        )
    )
    result = train(cfg, out_root=tmp_path, progress=False)
    m = result.manifest
    assert m["status"] == "complete" and m["kind"] == "prime"
    assert [c["step"] for c in m["checkpoints"]] == [0, 1, 2]
    steps = [h for h in m["history"] if "loss" in h]
    assert len(steps) == 2 and all("prm_loss" in h and "reward" in h for h in steps)
    # step 1 scores with the PRM after one step from θ0: its implicit rewards are not 0 (a PRM
    # that shared the policy's forward, or never learned, would give exactly 0 or ln 2)
    assert all(h["process_reward"] != 0 for h in steps)
    assert len({h["prm_loss"] for h in steps}) == 2
    assert m["final_diff"]["fp32"]["n_changed"] > 0
    _monitor_equals_checkpoint_diffs(result, 2)


def test_prime_config_sections(tiny_dir: Path) -> None:
    cfg = config_from_dict(tiny_config(tiny_dir, "prime"))
    assert cfg.prime is not None and cfg.rl is not None and cfg.prime.lr is None
    with pytest.raises(ConfigError, match="section 'preference' does not apply"):
        config_from_dict(tiny_config(tiny_dir, "prime", preference={}))
    with pytest.raises(ConfigError, match="section 'prime' does not apply"):
        config_from_dict(tiny_config(tiny_dir, "grpo", prime={}))
    with pytest.raises(ConfigError, match=r"prime\.beta"):
        config_from_dict(tiny_config(tiny_dir, "prime", prime={"beta": 0}))
    with pytest.raises(ConfigError, match=r"rl\.scale_rewards"):
        config_from_dict(tiny_config(tiny_dir, "prime", rl={"scale_rewards": "group"}))
    assert load_config(CONFIGS / "prime.yaml").kind == "prime"


# ---- PPO ---------------------------------------------------------------------------------------
def test_gae_whiten_and_value_loss_equal_naive_computations() -> None:
    from rlsparse_lib.training.ppo import gae, value_loss, whiten

    g = torch.Generator().manual_seed(2)
    b, t_len, gamma, lam = 3, 5, 0.9, 0.8
    rewards = torch.randn(b, t_len, generator=g, dtype=torch.float64)
    values = torch.randn(b, t_len, generator=g, dtype=torch.float64)
    lengths = [5, 2, 4]
    mask = torch.tensor([[t < n for t in range(t_len)] for n in lengths])
    adv, ret = gae(rewards, values, mask, gamma, lam)
    for i, n in enumerate(lengths):
        for t in range(t_len):
            if t >= n:
                assert float(adv[i, t]) == 0.0 and float(ret[i, t]) == 0.0
                continue
            want = 0.0  # A_t = sum_l (gamma*lam)^l delta_{t+l}, V after the last token = 0
            for s in range(t, n):
                nxt = float(values[i, s + 1]) if s + 1 < n else 0.0
                delta = float(rewards[i, s]) + gamma * nxt - float(values[i, s])
                want += (gamma * lam) ** (s - t) * delta
            assert float(adv[i, t]) == pytest.approx(want, abs=1e-12)
            assert float(ret[i, t]) == pytest.approx(want + float(values[i, t]), abs=1e-12)
    flat = [float(adv[i, t]) for i, n in enumerate(lengths) for t in range(n)]
    mean = sum(flat) / len(flat)
    std = math.sqrt(sum((x - mean) ** 2 for x in flat) / (len(flat) - 1) + 1e-8)
    w = whiten(adv, mask)
    for i, n in enumerate(lengths):
        for t in range(t_len):
            want = (float(adv[i, t]) - mean) / std if t < n else 0.0
            assert float(w[i, t]) == pytest.approx(want, abs=1e-12)
    new = values + torch.randn(b, t_len, generator=g, dtype=torch.float64)
    got = value_loss(new, values, ret, mask, 0.2)
    terms = []
    for i, n in enumerate(lengths):
        for t in range(n):
            v, v0, r = float(new[i, t]), float(values[i, t]), float(ret[i, t])
            vc = min(max(v, v0 - 0.2), v0 + 0.2)
            terms.append(0.5 * max((v - r) ** 2, (vc - r) ** 2))
    assert float(got) == pytest.approx(sum(terms) / len(terms), rel=1e-12)


def _pad_is_eos(tiny_dir: Path, dest: Path) -> Path:
    """A copy of the tiny model whose tokenizer pads with its end-of-turn token (as SmolLM2)."""
    import shutil

    from transformers import AutoTokenizer

    shutil.copytree(tiny_dir, dest)
    tok = AutoTokenizer.from_pretrained(dest)
    tok.pad_token = tok.eos_token
    tok.save_pretrained(dest)
    return dest


def test_ppo_trains_and_keeps_end_of_turn_tokens_when_pad_is_eos(
    tmp_path: Path, tiny_dir: Path, monkeypatch
) -> None:
    from transformers import AutoTokenizer

    from rlsparse_lib.training import ppo

    model_dir = _pad_is_eos(tiny_dir, tmp_path / "tiny-pad-eos")
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert tok.pad_token_id == tok.eos_token_id
    seen: list[tuple[torch.Tensor, torch.Tensor, int]] = []
    original = ppo.completion_values

    def spy(value, input_ids, attention_mask, n):
        seen.append((input_ids.clone(), attention_mask.clone(), n))
        return original(value, input_ids, attention_mask, n)

    monkeypatch.setattr(ppo, "completion_values", spy)
    monkeypatch.setattr(Task, "score", digit_score)
    cfg = config_from_dict(
        tiny_config(
            model_dir,
            "ppo",
            train={"max_completion_length": 8},
            rl={"num_generations": 2, "beta": 0.05},
        )
    )
    result = train(cfg, out_root=tmp_path, progress=False)
    m = result.manifest
    assert m["status"] == "complete" and m["kind"] == "ppo"
    assert [c["step"] for c in m["checkpoints"]] == [0, 1, 2]
    steps = [h for h in m["history"] if "loss" in h]
    assert len(steps) == 2 and all("value_loss" in h and "ppo_kl" in h for h in steps)
    assert steps[1]["ppo_kl"] != 0  # a reference sharing the policy's forward would give 0
    assert m["final_diff"]["fp32"]["n_changed"] > 0
    _monitor_equals_checkpoint_diffs(result, 2)
    # the trap: every end-of-turn token of the prompt (id == pad id) is attended, and each
    # completion's mask runs through its first EOS
    task = Task(cfg.task)
    prompts = {
        tuple(
            tok(
                tok.apply_chat_template(
                    task.messages(e), add_generation_prompt=True, tokenize=False
                ),
                add_special_tokens=False,
            )["input_ids"]
        )
        for e in task.train
    }
    eos = tok.eos_token_id
    assert seen
    for ids, attn, n in seen:
        for row_ids, row_attn in zip(ids.tolist(), attn.tolist(), strict=True):
            kept = [x for x, a in zip(row_ids[:-n], row_attn[:-n], strict=True) if a]
            assert tuple(kept) in prompts and kept.count(eos) >= 1
            comp = row_ids[-n:]
            cmask = row_attn[-n:]
            first = comp.index(eos) if eos in comp else n - 1
            assert cmask == [1] * (first + 1) + [0] * (n - first - 1)


def test_ppo_config_sections(tiny_dir: Path) -> None:
    cfg = config_from_dict(tiny_config(tiny_dir, "ppo"))
    assert cfg.ppo is not None and cfg.ppo.value_lr is None
    with pytest.raises(ConfigError, match="section 'ppo' does not apply"):
        config_from_dict(tiny_config(tiny_dir, "prime", ppo={}))
    with pytest.raises(ConfigError, match=r"ppo\.gamma/lam"):
        config_from_dict(tiny_config(tiny_dir, "ppo", ppo={"lam": 1.5}))
    with pytest.raises(ConfigError, match=r"ppo\.value_clip"):
        config_from_dict(tiny_config(tiny_dir, "ppo", ppo={"value_clip": 0}))
    assert load_config(CONFIGS / "ppo.yaml").kind == "ppo"


# ---- resumable: the PRM / value model travel with the states -----------------------------------
@pytest.mark.slow  # ~1 min each on 2 busy cores (a reference run, a killed child, the resumed run)
@pytest.mark.parametrize("kind", ["prime", "ppo"])
def test_killed_run_resumes_bit_identically(
    tmp_path: Path, tiny_dir: Path, monkeypatch, kind: str
) -> None:
    from .test_train_resume import _child, _history, _same_bits, _states

    monkeypatch.setattr(Task, "score", digit_score)
    config = tiny_config(
        tiny_dir,
        kind,
        name=f"resume-{kind}",
        task={"train_size": 4},
        train={"steps": 4, "max_completion_length": 8},
        rl={"num_generations": 2, "beta": 0.05 if kind == "ppo" else 0.0},
        checkpoints={"every": 2},
    )
    ref = train(config_from_dict(config), out_root=tmp_path / "ref", progress=False)
    root = tmp_path / "killed"
    _child(config, root, "after-state", 2)
    partial = root / "data" / "runs" / f".resume-{kind}.partial"
    assert _states(partial) == ["state_000002"]
    state = partial / ".trainer" / "state_000002"
    assert (state / "aux_model.safetensors").is_file() and (state / "aux_optimizer.pt").is_file()
    said: list[str] = []
    got = train(config_from_dict(config), out_root=root, progress=False, say=said.append)
    assert any("from its state at step 2" in s for s in said), said
    m = ref.manifest
    assert [c["step"] for c in m["checkpoints"]] == [0, 2, 4]
    for entry in m["checkpoints"]:
        for view in ("bf16", "fp32"):
            _same_bits(ref.path / entry[view], got.path / entry[view])
    assert _history(got.manifest) == _history(m)  # includes prm_loss / value_loss of steps 3-4
    assert got.manifest["monitor"] == m["monitor"]
    assert m["monitor"][-1]["changed_vs_init"] > 0
