"""The PPO and reward-model options beyond the defaults run and learn on a tiny model."""
import pytest
import torch

from rlhf.config import ConfigError, ModelConfig, PPOConfig, SamplingConfig, TrainConfig
from rlhf.modeling import CriticModel, PolicyWithValueHead, RewardModel, build_gpt2
from rlhf.ppo import PPOModels, PPOTrainer
from rlhf.train_reward import encode_groups, pairwise_accuracy, train_reward_model

SMALL = ModelConfig(n_layer=1, n_head=2, n_embd=32, n_positions=64)


def trainer(tok, tiny_lm, value_model=None, **overrides):
    settings = dict(total_episodes=16, rollout_batch_size=8, num_mini_batches=2, ppo_epochs=2, lr=1e-3,
                    sampling=SamplingConfig(max_new_tokens=6, batch_size=8))
    cfg = PPOConfig(**{**settings, **overrides})
    rm = RewardModel(build_gpt2(SMALL, tok, seed=1).transformer).eval()
    return PPOTrainer(cfg, PPOModels(PolicyWithValueHead(tiny_lm), build_gpt2(SMALL, tok, seed=0).eval(), rm, value_model),
                      tok, ["the film was", "the plot was"])


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_every_kl_estimator_trains(tok, tiny_lm, estimator):
    t = trainer(tok, tiny_lm, kl_estimator=estimator, adaptive_kl=False)
    stats = t.train()
    assert t.iteration == 2 and torch.isfinite(torch.tensor(stats["objective/kl"]))
    if estimator in ("k2", "k3"):
        assert stats["objective/kl"] >= 0          # k2 and k3 are non-negative per token


def test_separate_critic_is_trained(tok, tiny_lm):
    rm = RewardModel(build_gpt2(SMALL, tok, seed=2).transformer)
    critic = CriticModel(rm.trunk, rm.score_head)
    before = [p.detach().clone() for p in critic.parameters()]
    t = trainer(tok, tiny_lm, value_model=critic)
    t.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, critic.parameters()))


def test_adaptive_kl_coefficient_moves(tok, tiny_lm):
    t = trainer(tok, tiny_lm, adaptive_kl=True, kl_coef=0.1, target_kl=0.001, kl_horizon=10)
    t.train()
    assert t.kl_ctl.value != 0.1


def test_elo_regression_objective_learns(tok, tiny_lm):
    rows = [{"prompt": "the film was", "responses": [f"{g} and the music felt {x}.", f"{b} and the music felt {x}."],
             "ranks": [0, 1]} for g, b in (("great", "bad"), ("superb", "dull")) for x in ("long", "short", "warm")]
    elo = {(r["prompt"], r["responses"][0]): 1.0 for r in rows} | {(r["prompt"], r["responses"][1]): -1.0 for r in rows}
    groups = encode_groups(tok, rows * 8, 64, elo)
    assert groups[0].targets == [1.0, -1.0]
    rm = RewardModel(tiny_lm.transformer)
    train_reward_model(rm, groups, TrainConfig(epochs=3, batch_size=8, lr=3e-3), tok.pad_token_id, loss_type="elo")
    assert pairwise_accuracy(rm, groups, tok.pad_token_id) == 1.0


def test_margin_option_trains(tok, tiny_lm):
    rows = [{"prompt": "the film was", "responses": ["great.", "fine.", "bad."], "ranks": [0, 1, 2]}] * 16
    groups = encode_groups(tok, rows, 64)
    rm = RewardModel(tiny_lm.transformer)
    train_reward_model(rm, groups, TrainConfig(epochs=3, batch_size=8, lr=3e-3), tok.pad_token_id, use_margin=True)
    assert pairwise_accuracy(rm, groups, tok.pad_token_id) == 1.0


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_critic_trains_only_its_top_layers(tok, arch):
    """ppo.critic_train_layers: the embeddings and lower blocks stay frozen and get no gradient (backward stops at
    the lowest trained block); the top block, final norm and value head train. GPT-2 (`h`) and Llama (`layers`)."""
    if arch == "gpt2":
        trunk = build_gpt2(ModelConfig(n_layer=2, n_head=2, n_embd=32, n_positions=64), tok, seed=3).transformer
    else:
        from transformers import LlamaConfig, LlamaModel
        trunk = LlamaModel(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                                       pad_token_id=tok.pad_token_id))
    critic = CriticModel(trunk, torch.nn.Linear(32, 1))
    assert critic.train_top_layers(1) == 2
    from rlhf.modeling import transformer_blocks
    low, top = transformer_blocks(trunk)
    ids = torch.tensor([tok("the film was great")["input_ids"]])
    critic(ids, torch.ones_like(ids)).sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in low.parameters())
    assert all(p.grad is None for p in trunk.get_input_embeddings().parameters())
    assert all(p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0 for p in top.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in critic.value_head.parameters())
    with pytest.raises(ValueError, match="critic_train_layers: 3 > the critic's 2 blocks"):
        critic.train_top_layers(3)


def test_value_epochs_run_the_critic_only_in_the_first_epochs(tok, tiny_lm):
    """ppo.value_epochs = 1 of 3: the separate critic runs forward/backward in epoch 1's mini-batches only; the
    policy loss is in every epoch; the logged value loss averages the mini-batches that had one."""
    rm = RewardModel(build_gpt2(SMALL, tok, seed=2).transformer)
    critic = CriticModel(rm.trunk, rm.score_head)
    calls = []
    inner = critic.forward
    critic.forward = lambda *a, **k: calls.append(torch.is_grad_enabled()) or inner(*a, **k)
    t = trainer(tok, tiny_lm, value_model=critic, ppo_epochs=3, value_epochs=1)
    stats = t.step()
    assert calls.count(True) == t.cfg.num_mini_batches            # epoch 1 only (scoring runs under no_grad)
    assert torch.isfinite(torch.tensor(stats["loss/value_avg"])) and stats["loss/policy_avg"] == stats["loss/policy_avg"]
    with pytest.raises(ConfigError, match="value_epochs must be in"):
        PPOConfig(ppo_epochs=2, value_epochs=3)
