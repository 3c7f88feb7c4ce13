"""The over-optimisation probe (rlhf/probe.py) on a tiny model, and the ppo stage with it on: the probe measures
(KL 0 against itself, > 0 against another model, finite scores), leaves the global RNG and every module's mode as
they were, and PPO with the probe on trains exactly as with it off (same weights, same rows) while its rows cover
iterations 0..n and survive a resume."""
import random

import pytest
import torch

from rlhf.config import ModelConfig, PPOConfig, ProbeConfig, SamplingConfig
from rlhf.data import write_jsonl
from rlhf.judges import GoldJudgeOnText, JudgeError
from rlhf.modeling import RewardModel, build_gpt2
from rlhf.probe import KEYS, due, probe
from rlhf.reward_scoring import RewardScorer
from rlhf.stages import ppo
from tests.component.conftest import TEXTS

TINY = ModelConfig(n_layer=1, n_head=2, n_embd=32, n_positions=64)
SAMPLING = SamplingConfig(max_new_tokens=6, batch_size=4)
PROMPTS = ["the film was", "the plot was", "the cast was", "the score was", "the music felt", "the ending felt"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("probe") / "corpus.jsonl"
    write_jsonl(path, [{"text": t} for t in TEXTS])
    return path


@pytest.fixture
def parts(tok, corpus):
    policy = build_gpt2(TINY, tok, seed=0)
    reference = build_gpt2(TINY, tok, seed=0).eval()              # the same weights: KL 0
    scorer = RewardScorer(RewardModel(build_gpt2(TINY, tok, seed=1).transformer).eval(), tok, tok)
    return policy, reference, scorer, GoldJudgeOnText(corpus)


def run_probe(parts, tok, reference=None, judge=None, seed=7):
    policy, ref, scorer, gold = parts
    return probe(policy, reference if reference is not None else ref, tok, scorer, judge or gold, PROMPTS, SAMPLING,
                 seed, score_max_length=32)


def test_a_row_of_finite_numbers_with_kl_zero_against_itself(parts, tok):
    row = run_probe(parts, tok)
    assert set(row) == set(KEYS) and all(torch.isfinite(torch.tensor(v)) for v in row.values())
    assert abs(row["probe/kl"]) < 1e-5                            # policy == reference
    assert 0 <= row["probe/distinct2"] <= 1 and 0 <= row["probe/eos_rate"] <= 1 and row["probe/n_prompts"] == 6
    assert row == run_probe(parts, tok)                           # its own seed: the same draws every time


def test_kl_is_measured_against_another_reference(parts, tok):
    other = build_gpt2(TINY, tok, seed=0).eval()
    with torch.no_grad():
        other.transformer.ln_f.weight.mul_(10)                    # the same model, much sharper: far from pi
    assert run_probe(parts, tok, reference=other)["probe/kl"] > 1.0   # KL(pi || ref) of pi's own samples


def test_proxy_and_judge_are_the_means_of_their_scores(parts, tok):
    scored = []

    def judge_of_length(prompts, texts, ended):
        scored.append(list(texts))
        return [float(len(t)) for t in texts]

    class Judge:
        score_many = staticmethod(judge_of_length)
    row = run_probe(parts, tok, judge=Judge())
    assert row["probe/judge"] == pytest.approx(sum(len(t) for t in scored[0]) / len(PROMPTS))
    assert row["probe/proxy"] != row["probe/judge"]


def test_global_rng_modes_and_grad_are_left_as_they_were(parts, tok):
    """Even a judge that draws from the global generators and a policy in train mode: the probe runs them in eval
    mode without grad, and torch's and Python's global states and every module's mode are as before."""
    policy, reference, scorer, _ = parts
    policy.train()
    policy.transformer.h[0].eval()                                # a submodule with a mode of its own
    seen = []

    class NoisyJudge:
        def score_many(self, prompts, texts, ended):
            seen.append((policy.training, torch.is_grad_enabled()))
            return [float(torch.rand(())) + random.random() for _ in texts]
    torch.manual_seed(123)
    random.seed(123)
    torch_before, py_before = torch.get_rng_state(), random.getstate()
    run_probe(parts, tok, judge=NoisyJudge())
    assert torch.equal(torch.get_rng_state(), torch_before) and random.getstate() == py_before
    assert seen == [(False, False)]
    assert policy.training and not policy.transformer.h[0].training and not reference.training
    assert torch.is_grad_enabled()


def test_due_at_both_ends_and_every_n():
    assert [i for i in range(26) if due(i, 10, 25)] == [0, 10, 20, 25]
    assert [i for i in range(5) if due(i, 1, 4)] == [0, 1, 2, 3, 4]
    assert not any(due(i, 0, 25) for i in range(26))


# -- the ppo stage with the probe ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def project(tmp_path_factory, tok, corpus):
    root = tmp_path_factory.mktemp("probe_stage")
    base = build_gpt2(TINY, tok, seed=0)
    base.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    rm = RewardModel.from_causal_lm_path(root / "base", tok)
    rm.save_pretrained(root / "reward")
    tok.save_pretrained(root / "reward")
    write_jsonl(root / "prompts_ppo.jsonl", [{"prompt": p} for p in PROMPTS])
    write_jsonl(root / "prompts_eval.jsonl", [{"prompt": f"the {w} was"} for w in ("story", "film", "acting")])
    return root


def stage_cfg(root, out: str, every: int, corpus, judge: str = "gold", **kw) -> PPOConfig:
    """4 iterations of 8 episodes on the tiny model; the probe on 3 held-out prompts."""
    return PPOConfig(policy_path=str(root / "base"), reward_path=str(root / "reward"),
                     prompts=str(root / "prompts_ppo.jsonl"), out_dir=str(root / out), total_episodes=32,
                     rollout_batch_size=8, num_mini_batches=2, ppo_epochs=2, lr=1e-3, sampling=SAMPLING,
                     probe=ProbeConfig(every=every, prompts=str(root / "prompts_eval.jsonl"), judge=judge,
                                       corpus=str(corpus), score_max_length=32), **kw)


def weights(path) -> dict:
    from safetensors.torch import load_file
    return {f.name + k: v for f in sorted(path.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


def untimed(rows) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in rows]


def test_ppo_with_the_probe_trains_exactly_as_without(project, corpus):
    logged = []
    off = ppo.run(stage_cfg(project, "off", every=0, corpus=corpus))
    rng_off = torch.get_rng_state()
    on = ppo.run(stage_cfg(project, "on", every=1, corpus=corpus), on_log=lambda s, m: logged.append((s, m)))
    rng_on = torch.get_rng_state()
    w_off, w_on = weights(project / "off"), weights(project / "on")
    assert w_off.keys() == w_on.keys() and w_off and all(torch.equal(w_off[k], w_on[k]) for k in w_off)
    assert untimed(off.plots["ppo"]) == untimed(on.plots["ppo"]) and torch.equal(rng_off, rng_on)
    assert off.plots["probe"] == [] and not any(k.startswith("probe_") for k in off.metrics)
    probe_rows = on.plots["probe"]
    assert [r["step"] for r in probe_rows] == [0, 1, 2, 3, 4]
    assert [s for s, m in logged if "probe/kl" in m] == [0, 1, 2, 3, 4]      # MLflow gets them at the iteration
    assert all("probe/kl" not in r for r in on.plots["ppo"])                  # the PPO rows stay the PPO rows
    assert abs(probe_rows[0]["probe/kl"]) < 1e-5 and probe_rows[-1]["probe/kl"] != probe_rows[0]["probe/kl"]
    assert on.metrics["probe_judge"] == probe_rows[-1]["probe/judge"]
    assert {k: v for k, v in on.metrics.items() if not k.startswith("probe_") and "per_s" not in k} == \
        {k: v for k, v in off.metrics.items() if "per_s" not in k}


def test_probe_rows_survive_a_resume(project, corpus):
    """Stopped after iteration 3 (checkpoint at 2), started again: the same probe rows as an uninterrupted run."""
    full = ppo.run(stage_cfg(project, "full", every=1, corpus=corpus))

    def stop_at_3(step, metrics):
        if step == 3 and "objective/kl" in metrics:
            raise KeyboardInterrupt
    cfg = stage_cfg(project, "resumed", every=1, corpus=corpus, checkpoint_every=2)
    with pytest.raises(KeyboardInterrupt):
        ppo.run(cfg, on_log=stop_at_3)
    assert (project / "resumed.ckpt").is_dir() and not (project / "resumed").exists()
    resumed = ppo.run(cfg)
    assert resumed.plots["probe"] == full.plots["probe"]
    assert [r["step"] for r in resumed.plots["probe"]] == [0, 1, 2, 3, 4]


def test_a_judge_that_cannot_be_built_stops_the_stage_before_training(project, tmp_path, monkeypatch):
    """One line naming the key, before any weights load."""
    def no_weights(*a, **k):
        raise AssertionError("weights were loaded before the probe's settings were checked")
    monkeypatch.setattr(ppo, "build_models", no_weights)
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(JudgeError, match=r"^ppo\.probe\.corpus: .*missing\.jsonl not found"):
        ppo.run(stage_cfg(project, "never", every=5, corpus=missing))
    with pytest.raises(JudgeError, match=r"^ppo\.probe\.judge: 'nonsense': expected gold"):
        ppo.run(stage_cfg(project, "never", every=5, corpus=missing, judge="nonsense"))
    ppo.check_probe(stage_cfg(project, "never", every=0, corpus=missing))   # off: nothing of it is read
    assert not (project / "never").exists() and not (project / "never.ckpt").exists()
