import math

import torch

from rlhf.config import PPOConfig, SamplingConfig
from rlhf.modeling import PolicyWithValueHead, RewardModel, build_gpt2
from rlhf.config import ModelConfig
from rlhf.ppo import PPOModels, PPOTrainer

PROMPTS = ["the film was", "the plot was", "the cast was", "the score was"]


def make_trainer(tok, tiny_lm, **overrides):
    cfg = PPOConfig(total_episodes=16, rollout_batch_size=8, num_mini_batches=2, ppo_epochs=2, lr=1e-3,
                    sampling=SamplingConfig(max_new_tokens=6, batch_size=8), **overrides)
    ref = build_gpt2(ModelConfig(n_layer=1, n_head=2, n_embd=32, n_positions=64), tok, seed=0).eval()
    rm = RewardModel(build_gpt2(ModelConfig(n_layer=1, n_head=2, n_embd=32, n_positions=64), tok, seed=1).transformer)
    return PPOTrainer(cfg, PPOModels(PolicyWithValueHead(tiny_lm), ref, rm.eval()), tok, PROMPTS)


def batch_loss(trainer, exp):
    with torch.no_grad():
        loss, _ = trainer._minibatch_loss(exp, torch.arange(exp.mask.size(0)))
    return float(loss)


def test_first_ratio_is_one_and_kl_zero_when_policy_equals_reference(tok, tiny_lm):
    trainer = make_trainer(tok, tiny_lm)
    exp = trainer.experience(trainer.rollout(0))
    assert torch.allclose(exp.logprobs, exp.ref_logprobs, atol=1e-5)   # same weights, same temperature
    _, stats = trainer._minibatch_loss(exp, torch.arange(exp.mask.size(0)))
    assert abs(stats["val/ratio"] - 1.0) < 1e-5 and stats["policy/approxkl"] < 1e-8


def test_ppo_step_changes_parameters_and_lowers_loss_on_its_batch(tok, tiny_lm):
    trainer = make_trainer(tok, tiny_lm)
    exp = trainer.experience(trainer.rollout(0))
    before_params = [p.detach().clone() for p in trainer.models.policy.parameters()]
    before = batch_loss(trainer, exp)
    stats = trainer.optimize(exp, 0)
    after = batch_loss(trainer, exp)
    changed = any(not torch.equal(a, p) for a, p in zip(before_params, trainer.models.policy.parameters()))
    assert changed
    assert after < before
    for key in ("loss/policy_avg", "loss/value_avg", "policy/clipfrac_avg", "policy/approxkl_avg", "val/clipfrac_avg"):
        assert key in stats


def test_full_iteration_logs_the_contract_metrics(tok, tiny_lm):
    trainer = make_trainer(tok, tiny_lm)
    logged = []
    trainer.on_log = lambda step, m: logged.append((step, m))
    trainer.train()
    assert [s for s, _ in logged] == [1, 2]
    for key in ("objective/kl", "objective/scores", "objective/kl_coef", "objective/entropy", "policy/approxkl_avg",
                "policy/clipfrac_avg", "val/eos_rate", "time/generation", "time/optimization"):
        assert all(math.isfinite(m[key]) for _, m in logged), key
    first, last = logged[0][1], logged[-1][1]
    assert [m["episodes"] for _, m in logged] == [8, 16]
    assert abs(first["objective/kl"]) < 1e-4                     # iteration 1: the policy is still the reference
    assert first["objective/kl_coef"] == trainer.cfg.kl_coef and last["objective/kl_coef"] != trainer.cfg.kl_coef
    assert all(0.0 <= m[k] <= 1.0 for _, m in logged for k in ("policy/clipfrac_avg", "val/eos_rate"))
    assert all(m["objective/entropy"] > 0 and m["time/generation"] > 0 and m["time/optimization"] > 0
               for _, m in logged)


def test_iteration_is_reproducible_from_state(tok, tiny_lm):
    """Iteration i draws its prompts, samples and shuffles from (seed, i): a second trainer restored from the
    first one's state after iteration 1 repeats iteration 2 exactly."""
    import copy
    a = make_trainer(tok, copy.deepcopy(tiny_lm))
    a.step()
    state = copy.deepcopy(a.state_dict())
    weights = copy.deepcopy(a.models.policy.state_dict())
    m_a = a.step()
    b = make_trainer(tok, copy.deepcopy(tiny_lm))
    b.models.policy.load_state_dict(weights)
    b.load_state_dict(state)
    m_b = b.step()
    assert m_a["objective/scores"] == m_b["objective/scores"]
    assert m_a["loss/policy_avg"] == m_b["loss/policy_avg"]


def test_recorded_behaviour_logprobs_entropy_values_match_a_full_forward(tok, tiny_lm):
    """fp32: the sampler records each drawn token's log-prob, each step's entropy and the hidden state the shared
    value head reads; they equal what one forward over prompt + response gives (so PPO skips that forward), and
    recording does not change the draws."""
    from rlhf.generation import encode_prompts, sample
    from rlhf.rollout import behaviour_forward

    policy = PolicyWithValueHead(tiny_lm).eval()
    torch.nn.init.normal_(policy.value_head.weight, std=0.5)          # values that are not ~0, to compare
    q, qm = encode_prompts(tok, PROMPTS * 2, 32)
    args = (policy.lm, q, qm, 8, 0.7, tok.eos_token_id, tok.pad_token_id)
    plain = sample(*args, torch.Generator().manual_seed(3))
    rec = sample(*args, torch.Generator().manual_seed(3), record=True, hidden=True)
    assert torch.equal(plain.response_ids, rec.response_ids) and plain.logprobs is None
    with torch.no_grad():
        lp, ent, val = behaviour_forward(policy, rec, 0.7, need_values=True)          # from the recording
        full = behaviour_forward(policy, plain, 0.7, need_values=True)               # one forward
    m = rec.response_mask.bool()
    for a, b in zip((lp, ent, val), full):
        assert a.shape == b.shape
        assert torch.allclose(a[m], b[m], atol=1e-5), (a[m] - b[m]).abs().max()
    assert val[m].std() > 0.01                                          # the comparison is not between zeros


def test_bf16_ppo_recomputes_behaviour_logprobs(tok, tiny_lm):
    """Under bf16 the KV-cache steps and a full forward round differently: nothing is recorded, one forward gives
    the behaviour log-probs, so the first update's ratio is exactly 1."""
    from rlhf.config import ComputeConfig
    from rlhf.generation import logprobs_of
    trainer = make_trainer(tok, tiny_lm)
    rollout = trainer.rollout(0)                                  # fp32: the sampler records its own log-probs
    m = rollout.response_mask.bool()
    assert rollout.logprobs.shape == rollout.response_ids.shape and m.any()
    with torch.no_grad():
        forward = logprobs_of(trainer.models.policy.lm, rollout, trainer.cfg.sampling.temperature)
    assert bool((rollout.logprobs[m] < 0).all())
    assert torch.allclose(rollout.logprobs[m], forward[m], atol=1e-5), (rollout.logprobs[m] - forward[m]).abs().max()
    trainer = make_trainer(tok, tiny_lm, compute=ComputeConfig(precision="bf16"))
    rollout = trainer.rollout(0)
    assert rollout.logprobs is None
    exp = trainer.experience(rollout)
    _, stats = trainer._minibatch_loss(exp, torch.arange(exp.mask.size(0)))
    assert stats["val/ratio"] == 1.0 and stats["policy/approxkl"] == 0.0


def test_entropy_bonus_subtracts_coef_times_entropy_and_raises_the_entropy(tok, tiny_lm):
    import copy
    plain = make_trainer(tok, copy.deepcopy(tiny_lm))
    exp = plain.experience(plain.rollout(0))
    idx = torch.arange(exp.mask.size(0))
    loss0, stats0 = plain._minibatch_loss(exp, idx)
    bonus = make_trainer(tok, copy.deepcopy(tiny_lm), entropy_coef=0.5)
    loss1, stats1 = bonus._minibatch_loss(exp, idx)
    assert stats1["policy/entropy"] == stats0["policy/entropy"] > 0
    assert abs((float(loss0) - float(loss1)) - 0.5 * stats0["policy/entropy"]) < 1e-5
    # The bonus's gradient alone (advantages zeroed): a step along it raises the policy's entropy on the batch.
    exp.advantages.zero_()
    bonus.optimizer.zero_grad()
    loss, _ = bonus._minibatch_loss(exp, idx, train_value=False)
    loss.backward()
    with torch.no_grad():
        for p in bonus.models.policy.parameters():
            if p.grad is not None:
                p -= 0.05 * p.grad
    _, after = bonus._minibatch_loss(exp, idx)
    assert after["policy/entropy"] > stats0["policy/entropy"]


def test_a_micro_batch_without_unused_columns_gives_the_same_loss_and_gradients(tok, tiny_lm, monkeypatch):
    """rlhf/rollout.py ``micro_batch`` drops the left padding all rows of a micro-batch share and the positions after
    their longest response: the loss, its statistics and the gradients equal those at the rollout's full width."""
    import rlhf.ppo as ppo_module
    from rlhf.rollout import MicroBatch, micro_batch

    trainer = make_trainer(tok, tiny_lm)
    trainer.prompts = ["the film was", "the plot was great and the cast was dull and the", "the",
                       "the score was dull and the ending felt long and the music"]
    exp = trainer.experience(trainer.rollout(0))
    lengths = torch.tensor([1, 3, 6, 2, 4, 2, 5, 1])[:exp.mask.size(0)]           # ragged responses
    keep = torch.arange(exp.mask.size(1))[None, :] < lengths[:, None]
    exp.mask = exp.mask * keep
    exp.rollout.response_mask = exp.rollout.response_mask * keep
    short_prompts = exp.rollout.query_mask.sum(1) <= 4
    idx = torch.nonzero(short_prompts & (lengths <= 4)).squeeze(1)
    assert len(idx) >= 2

    def full_width(e, rows):
        ids, attn = e.rollout.full()
        return MicroBatch(ids[rows], attn[rows], e.rollout.context_length, e.rollout.response_ids[rows],
                          e.mask[rows], e.logprobs[rows], e.advantages[rows], e.values[rows], e.returns[rows])

    def loss_and_grads():
        trainer.optimizer.zero_grad(set_to_none=True)
        loss, stats = trainer._minibatch_loss(exp, idx)
        loss.backward()
        return loss.detach(), stats, [p.grad.clone() for p in trainer.models.policy.parameters()]

    narrow = micro_batch(exp, idx)
    assert narrow.ids.size(1) < exp.rollout.full()[0].size(1) - 2                # both sides trimmed
    assert narrow.context_length < exp.rollout.context_length and narrow.mask.size(1) < exp.mask.size(1)
    trimmed = loss_and_grads()
    monkeypatch.setattr(ppo_module, "micro_batch", full_width)
    whole = loss_and_grads()
    assert torch.allclose(trimmed[0], whole[0], atol=1e-6)
    assert all(abs(trimmed[1][k] - whole[1][k]) < 1e-5 for k in whole[1])
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(trimmed[2], whole[2]))
    assert any(g.abs().sum() > 0 for g in whole[2])


def test_a_separate_critic_is_run_after_the_policys_backward_with_the_same_gradients(tok, tiny_lm):
    """With a separate critic the mini-batch loss comes in two pieces: the policy's backward runs before the critic's
    forward (one trunk's activations alive at a time), and the gradients equal one backward of the summed loss."""
    from rlhf.modeling import CriticModel
    cfg = PPOConfig(total_episodes=16, rollout_batch_size=8, num_mini_batches=2, ppo_epochs=2, lr=1e-3,
                    sampling=SamplingConfig(max_new_tokens=6, batch_size=8), value_model="separate")
    ref = build_gpt2(ModelConfig(n_layer=1, n_head=2, n_embd=32, n_positions=64), tok, seed=0).eval()
    critic = CriticModel(build_gpt2(ModelConfig(n_layer=1, n_head=2, n_embd=32, n_positions=64), tok, seed=2).transformer,
                         torch.nn.Linear(32, 1))
    rm = RewardModel(build_gpt2(ModelConfig(n_layer=1, n_head=2, n_embd=32, n_positions=64), tok, seed=1).transformer)
    trainer = PPOTrainer(cfg, PPOModels(PolicyWithValueHead(tiny_lm), ref, rm.eval(), critic), tok, PROMPTS)
    exp = trainer.experience(trainer.rollout(0))
    idx = torch.arange(exp.mask.size(0))
    params = [p for p in trainer.models.policy.lm.parameters()] + list(critic.parameters())

    trainer.optimizer.zero_grad(set_to_none=True)
    loss, stats = trainer._minibatch_loss(exp, idx)
    loss.backward()
    summed = [p.grad.clone() for p in params]

    trainer.optimizer.zero_grad(set_to_none=True)
    seen = []
    hook = critic.register_forward_pre_hook(
        lambda *_: seen.append(all(p.grad is not None for p in trainer.models.policy.lm.parameters())))
    pieces_stats: dict = {}
    pieces = 0
    for piece in trainer._minibatch_losses(exp, idx, pieces_stats):
        piece.backward()
        pieces += 1
    hook.remove()
    assert pieces == 2 and seen == [True]              # the critic ran once, after the policy's gradients existed
    assert pieces_stats == stats
    assert all(torch.equal(a, p.grad) for a, p in zip(summed, params))
    assert any(g.abs().sum() > 0 for g in summed[-2:])
