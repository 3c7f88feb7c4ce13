"""Any local Hugging Face causal LM works by changing one path: a tiny Llama (RoPE, no absolute positions) goes
through the pretrain stage's checkpoint branch, the value head, the reward model and batched log-probs."""
import torch

from rlhf.config import PretrainConfig
from rlhf.generation import encode_prompts, logprobs_of, sample
from rlhf.modeling import PolicyWithValueHead, RewardModel, load_causal_lm, load_tokenizer
from rlhf.stages import pretrain


def save_tiny_llama(tok, path):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                      bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)


def test_local_checkpoint_replaces_pretraining(tok, tmp_path):
    save_tiny_llama(tok, tmp_path / "llama")
    result = pretrain.run(PretrainConfig(model_path=str(tmp_path / "llama"), out_dir=str(tmp_path / "base")))
    assert result.metrics["from_checkpoint"] == 1.0
    loaded = load_causal_lm(tmp_path / "base")
    assert type(loaded).__name__ == "LlamaForCausalLM"
    source = load_causal_lm(tmp_path / "llama").state_dict()          # the checkpoint itself, weight for weight
    weights = loaded.state_dict()
    assert weights.keys() == source.keys() and all(torch.equal(weights[k], source[k]) for k in source)
    assert result.metrics["n_params"] == sum(p.numel() for p in loaded.parameters())
    ids = torch.tensor([tok("the film was great")["input_ids"]])
    with torch.no_grad():
        logits = loaded(input_ids=ids).logits
    assert logits.shape == (1, ids.size(1), len(tok)) and bool(torch.isfinite(logits).all())


def test_llama_policy_value_reward_and_logprobs(tok, tmp_path):
    save_tiny_llama(tok, tmp_path / "llama")
    t = load_tokenizer(tmp_path / "llama")
    lm = load_causal_lm(tmp_path / "llama", t)
    q, qm = encode_prompts(t, ["the film", "the plot was great and the"], 16)
    r = sample(lm, q, qm, 6, 1.0, t.eos_token_id, t.pad_token_id, torch.Generator().manual_seed(0))
    batched = logprobs_of(lm, r, 1.0)
    ids, attn = r.full()
    real = ids[0][attn[0].bool()]
    p_len = int(qm[0].sum())
    for step in range(int(r.response_mask[0].sum())):
        logits = lm(input_ids=real[None, :p_len + step]).logits[0, -1]
        assert torch.allclose(batched[0, step], torch.log_softmax(logits, -1)[real[p_len + step]], atol=1e-4)
    logits, values = PolicyWithValueHead(lm)(ids, attn)
    assert values.shape == ids.shape
    rm = RewardModel.from_causal_lm_path(tmp_path / "llama", t)
    assert rm(ids, attn).shape == (2,)
