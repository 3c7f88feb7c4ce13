"""The sft, reward and ppo stages with every hardware switch on (LoRA, bf16 autocast, gradient checkpointing):
they train, and each writes a plain Hugging Face model (adapter merged) plus the adapter alone."""
import json
from pathlib import Path

import pytest
import torch

from rlhf import accel
from rlhf.config import (ComputeConfig, LoRAConfig, ModelConfig, PPOConfig, ProbeConfig, RewardConfig, SamplingConfig,
                         SFTConfig, TrainConfig)
from rlhf.data import write_jsonl
from rlhf.modeling import RewardModel, build_gpt2, load_causal_lm, load_tokenizer
from rlhf.stages import ppo, reward, sft

SWITCHES = dict(compute=ComputeConfig(precision="bf16", gradient_checkpointing=True), lora=LoRAConfig(r=4, alpha=8.0))
TRAIN = TrainConfig(epochs=2, batch_size=8, lr=3e-3, max_length=48, log_every=1)
SAMPLING = SamplingConfig(max_new_tokens=6, batch_size=8)


@pytest.fixture(scope="module")
def project(tmp_path_factory, tok):
    root = tmp_path_factory.mktemp("switches")
    model = build_gpt2(ModelConfig(n_layer=1, n_head=2, n_embd=32, n_positions=64), tok, seed=0)
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    rows = [{"prompt": f"the {a} was", "completion": f"{b} and the music felt {c}."}
            for a in ("film", "plot") for b in ("great", "superb") for c in ("warm", "long")]
    write_jsonl(root / "data" / "sft_train.jsonl", rows * 2)
    write_jsonl(root / "data" / "sft_val.jsonl", rows[:4])
    write_jsonl(root / "data" / "prompts.jsonl", [{"prompt": r["prompt"]} for r in rows])
    ranks = [{"prompt": f"the {a} was", "responses": [f"great and {c}.", f"bad and {c}."], "ranks": [0, 1]}
             for a in ("film", "plot", "cast") for c in ("warm", "long")]
    write_jsonl(root / "prefs" / "rankings_train.jsonl", ranks * 3)
    write_jsonl(root / "prefs" / "rankings_val.jsonl", ranks[:2])
    return root


def plain_weights(path: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(path / "model.safetensors"))


def assert_plain_model_with_adapter(out: Path) -> None:
    keys = plain_weights(out).keys()
    assert keys and not any("lora" in k for k in keys)          # merged: a plain Hugging Face model
    assert (out / accel.ADAPTER_DIR / "adapter_config.json").exists()
    assert json.loads((out / accel.ADAPTER_DIR / "adapter_config.json").read_text())["r"] == 4


def test_sft_stage_with_lora_bf16_and_checkpointing(project):
    cfg = SFTConfig(model_path=str(project / "base"), data_dir=str(project / "data"), out_dir=str(project / "sft"),
                    train=TRAIN, **SWITCHES)
    res = sft.run(cfg)
    assert torch.isfinite(torch.tensor(res.metrics["val_loss"]))
    losses = [r["loss/train"] for r in res.plots["loss"]]
    assert losses[-1] < losses[0]
    assert_plain_model_with_adapter(project / "sft")
    tok = load_tokenizer(project / "sft")
    merged, base = load_causal_lm(project / "sft", tok), load_causal_lm(project / "base", tok)
    changed = [k for k, v in merged.state_dict().items() if not torch.equal(v, base.state_dict()[k])]
    assert changed and all("attn" in k for k in changed)        # only the adapted projections moved


def test_reward_stage_with_lora_bf16_and_checkpointing(project):
    cfg = RewardConfig(model_path=str(project / "base"), data_dir=str(project / "prefs"),
                       prompts=str(project / "data" / "prompts.jsonl"), out_dir=str(project / "reward"),
                       normalize_samples=8, sampling=SAMPLING, train=TrainConfig(epochs=15, batch_size=6, lr=1e-2,
                                                                                  max_length=48, log_every=1),
                       **SWITCHES)
    res = reward.run(cfg)
    assert res.metrics["train_accuracy"] >= 0.9                  # adapters + head learn the preference
    assert_plain_model_with_adapter(project / "reward")
    # a plain transformers reward model: logits + the recorded bias = our loader's normalised score
    from transformers import AutoModelForSequenceClassification
    meta = json.loads((project / "reward" / "config.json").read_text())["rlhf_reward"]
    assert meta["normalized"] and abs(1 / meta["raw_std"] - res.metrics["norm/gain"]) < 1e-6
    rm, hf = RewardModel.from_pretrained(project / "reward"), AutoModelForSequenceClassification.from_pretrained(
        project / "reward").eval()
    ids = torch.tensor([rm.tokenizer("the film was great and warm.")["input_ids"] + [rm.tokenizer.eos_token_id]])
    with torch.no_grad():
        assert torch.allclose(hf(input_ids=ids).logits[:, 0] + meta["bias"], rm(ids, torch.ones_like(ids)), atol=1e-5)


@pytest.mark.parametrize("value_model", ["shared", "separate"])
def test_ppo_stage_with_lora_bf16_and_checkpointing(project, value_model):
    if not (project / "reward").exists():
        pytest.skip("needs the reward model of the previous test")
    cfg = PPOConfig(policy_path=str(project / "base"), reward_path=str(project / "reward"),
                    prompts=str(project / "data" / "prompts.jsonl"), out_dir=str(project / f"policy-{value_model}"),
                    value_model=value_model, total_episodes=32, rollout_batch_size=8, num_mini_batches=2, ppo_epochs=2, lr=1e-3,
                    sampling=SAMPLING, probe=ProbeConfig(every=2, prompts=str(project / "data" / "prompts.jsonl"),
                                                         judge="reward_model"), **SWITCHES)
    res = ppo.run(cfg)
    rows = res.plots["ppo"]
    assert len(rows) == 4 and abs(rows[0]["objective/kl"]) < 1e-6   # reference = adapter disabled = start policy
    probe = res.plots["probe"]                                      # the over-optimisation probe, switches on too
    assert [r["step"] for r in probe] == [0, 2, 4] and abs(probe[0]["probe/kl"]) < 1e-4
    assert all(torch.isfinite(torch.tensor(list(r.values()))).all() for r in probe)
    assert all(torch.isfinite(torch.tensor(r["loss/policy_avg"])) for r in rows)
    assert_plain_model_with_adapter(project / f"policy-{value_model}")
    # The policy's value head beside the merged model: one linear map of the 32-wide trunk, finite, and it loads
    # back onto the saved policy and gives finite values. Shared: trained with the policy (its bias starts at 0).
    from safetensors.torch import load_file

    from rlhf.modeling import VALUE_HEAD_FILE, PolicyWithValueHead
    out = project / f"policy-{value_model}"
    head = load_file(str(out / VALUE_HEAD_FILE))
    assert {k: tuple(v.shape) for k, v in head.items()} == {"weight": (1, 32), "bias": (1,)}
    assert all(bool(torch.isfinite(v).all()) for v in head.values())
    if value_model == "shared":
        assert head["bias"].abs().item() > 0
    tok = load_tokenizer(out)
    policy = PolicyWithValueHead(load_causal_lm(out, tok)).eval()
    assert policy.load_value_head(out) and torch.equal(policy.value_head.weight, head["weight"])
    ids = torch.tensor([tok("the film was great")["input_ids"]])
    with torch.no_grad():
        logits, values = policy(ids, torch.ones_like(ids))
    assert values.shape == ids.shape and bool(torch.isfinite(values).all()) and bool(torch.isfinite(logits).all())
