"""Hardware switches (rlhf/accel.py): device resolution, the inverse-CDF draw, bf16 autocast, gradient
checkpointing and LoRA with the adapter-disabled reference, on a tiny GPT-2 on the CPU."""
import copy

import pytest
import torch

from rlhf import accel
from rlhf.config import ComputeConfig, ConfigError, LoRAConfig, ModelConfig, PPOConfig, SamplingConfig
from rlhf.generation import draw, encode_prompts, logprobs_of, sample
from rlhf.modeling import PolicyWithValueHead, RewardModel, build_gpt2, position_ids_from_mask
from rlhf.ppo import PPOModels, PPOTrainer

SMALL = ModelConfig(n_layer=1, n_head=2, n_embd=32, n_positions=64)


def batch(tok, texts=("the film was great", "the plot")):
    return encode_prompts(tok, list(texts), 16)


def logits(model, ids, attn):
    return model(input_ids=ids, attention_mask=attn, position_ids=position_ids_from_mask(attn)).logits


# -- device -----------------------------------------------------------------------------------------------------------
def test_auto_device_is_cpu_without_cuda_and_cuda_is_refused_by_name():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert accel.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(accel.HardwareError, match="ppo.compute.device: 'cuda' asked for"):
        accel.resolve_device("cuda", key="ppo.compute.device")


def test_compute_config_rejects_unknown_precision_and_device():
    with pytest.raises(ConfigError, match="precision must be fp32 or bf16"):
        ComputeConfig(precision="fp16")
    with pytest.raises(ConfigError, match="device must be"):
        ComputeConfig(device="tpu")
    with pytest.raises(ConfigError, match="r must be >= 0"):
        LoRAConfig(r=-1)


# -- sampling ---------------------------------------------------------------------------------------------------------
def test_inverse_cdf_draw_has_the_distribution_and_never_draws_zero_probability_tokens():
    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2, 0.0]]).repeat(40_000, 1)
    gen = torch.Generator().manual_seed(0)
    tokens = draw(probs, gen)
    freq = torch.bincount(tokens, minlength=5).float() / len(tokens)
    assert freq[1] == 0 and freq[4] == 0
    assert torch.allclose(freq, probs[0], atol=0.01), freq
    # a row whose cumsum rounds below 1 never indexes past the vocabulary
    assert int(draw(torch.full((3, 7), 1 / 7 - 1e-7), gen).max()) <= 6


# -- bf16 -------------------------------------------------------------------------------------------------------------
def test_bf16_autocast_keeps_fp32_weights_and_outputs_close_to_fp32(tok):
    ref = build_gpt2(SMALL, tok, seed=0).eval()
    model = accel.autocast_forward(copy.deepcopy(ref), torch.device("cpu"), "bf16")
    ids, attn = batch(tok)
    a, b = logits(ref, ids, attn), logits(model, ids, attn)
    assert b.dtype == torch.float32 and all(p.dtype == torch.float32 for p in model.parameters())
    assert not torch.equal(a, b)                                  # it really ran in bf16
    assert (a - b).abs().max() < 0.05 * a.abs().max()
    # training under bf16 still lowers the loss
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        out = logits(model, ids, attn)[:, :-1]
        loss = torch.nn.functional.cross_entropy(out.reshape(-1, out.size(-1)), ids[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


# -- gradient checkpointing -------------------------------------------------------------------------------------------
def test_gradient_checkpointing_gives_the_same_gradients(tok):
    plain = build_gpt2(ModelConfig(n_layer=2, n_head=2, n_embd=32, n_positions=64), tok, seed=0)
    ckpt = copy.deepcopy(plain)
    accel.enable_gradient_checkpointing(ckpt)
    ids, attn = batch(tok)
    for m in (plain, ckpt):
        m.train()
        logits(m, ids, attn).logsumexp(-1).mean().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name
    assert accel.hf_model(ckpt).is_gradient_checkpointing and not accel.hf_model(plain).is_gradient_checkpointing


# -- LoRA -------------------------------------------------------------------------------------------------------------
def lora_lm(tok, r=4):
    return accel.apply_lora(build_gpt2(SMALL, tok, seed=0), LoRAConfig(r=r, alpha=8.0), causal_lm=True)


def test_lora_trains_only_adapters_and_the_reference_is_the_base_with_adapter_disabled(tok):
    base = build_gpt2(SMALL, tok, seed=0).eval()
    lm = lora_lm(tok)
    trainable = [n for n, p in lm.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    ref = accel.AdapterDisabled(lm)
    assert list(ref.parameters()) == []            # freezing the reference cannot freeze the policy
    ids, attn = batch(tok)
    policy = PolicyWithValueHead(lm)
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):                             # move the adapter away from its zero init
        out, values = policy(ids, attn)
        (out.logsumexp(-1).mean() + values.mean()).backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        assert torch.allclose(logits(ref, ids, attn), logits(base, ids, attn), atol=1e-5)
        assert not torch.allclose(logits(lm, ids, attn), logits(base, ids, attn), atol=1e-3)
        assert policy.value_head.weight.requires_grad


def test_merged_lora_model_equals_the_adapted_model_and_saves_the_adapter(tok, tmp_path):
    lm = lora_lm(tok)
    with torch.no_grad():
        for n, p in lm.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.1)                 # a non-trivial adapter
    ids, attn = batch(tok)
    with torch.no_grad():
        before = logits(lm, ids, attn)
    merged = accel.merge_lora(lm, tmp_path / accel.ADAPTER_DIR)
    assert not accel.is_lora(merged) and (tmp_path / accel.ADAPTER_DIR / "adapter_config.json").exists()
    with torch.no_grad():
        assert torch.allclose(logits(merged, ids, attn), before, atol=1e-5)
    assert all(p.requires_grad for p in merged.parameters())


def test_lora_policy_samples_with_its_kv_cache(tok):
    lm = lora_lm(tok)
    q, m = batch(tok)
    r = sample(lm, q, m, 6, 1.0, tok.eos_token_id, tok.pad_token_id, torch.Generator().manual_seed(0))
    assert r.response_ids.shape[0] == 2
    lp = logprobs_of(lm, r, 1.0)
    assert torch.isfinite(lp[r.response_mask.bool()]).all()


def test_lora_bf16_checkpointed_ppo_starts_at_zero_kl_and_trains(tok):
    lm = lora_lm(tok)
    compute = ComputeConfig(precision="bf16", gradient_checkpointing=True)
    accel.prepare(lm, torch.device("cpu"), compute)
    rm = RewardModel(build_gpt2(SMALL, tok, seed=1).transformer).eval()
    cfg = PPOConfig(total_episodes=16, rollout_batch_size=8, num_mini_batches=2, ppo_epochs=2, lr=1e-3,
                    adaptive_kl=False, sampling=SamplingConfig(max_new_tokens=6, batch_size=8), compute=compute,
                    lora=LoRAConfig(r=4))
    policy = PolicyWithValueHead(lm)
    t = PPOTrainer(cfg, PPOModels(policy, accel.AdapterDisabled(lm), rm), tok, ["the film was", "the plot was"])
    first = t.step()
    assert abs(first["objective/kl"]) < 1e-6       # adapter B starts at zero: policy == reference
    before = {n: p.detach().clone() for n, p in lm.named_parameters()}
    t.step()
    changed = {n for n, p in lm.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all("lora_" in n for n in changed)
    assert all(p.dtype == torch.float32 for p in policy.parameters())
