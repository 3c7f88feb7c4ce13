"""Reward models others can use, and others' reward models (issue 13, item 4).

(a) a reward model saved by our training code is a transformers ``*ForSequenceClassification`` folder whose logits
    plus the recorded bias equal our loader's scores (1e-5) on left-padded batches of different lengths;
(b) a sequence-classification reward model with ANOTHER tokenizer and a chat template (a tiny Qwen2) runs in PPO,
    and its scores equal transformers' own scores of the decoded texts rendered with its template: the text path;
(c) a reward model sharing the policy's tokenizer takes the ids path; a different template is a different tokenizer.
"""
import json

import pytest
import torch

from rlhf.chat import as_messages
from rlhf.config import ModelConfig, PPOConfig, SamplingConfig, TrainConfig
from rlhf.data import pad_left, write_jsonl
from rlhf.modeling import (REWARD_HEAD_FILE, CriticModel, RewardModel, _save_tensors, build_gpt2, load_tokenizer,
                           position_ids_from_mask)
from rlhf.ppo import PPOTrainer
from rlhf.reward_format import RewardFormatError, is_reward_folder
from rlhf.reward_scoring import RewardScorer
from rlhf.stages import ppo
from rlhf.stages.common import save_tokenizer_and_model
from rlhf.train_reward import encode_groups, score_texts, set_normalization, train_reward_model
from tests.component.conftest import TEXTS

SMALL = ModelConfig(n_layer=1, n_head=2, n_embd=32, n_positions=128)
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
PROMPTS = ["the film was", [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the plot was"}],
           "the cast felt", [{"role": "user", "content": "the music was"}]]
ROWS = [{"prompt": "the film was", "responses": [f"{g} and the music felt {x}.", f"{b} and the music felt {x}."],
         "ranks": [0, 1]} for g, b in (("great", "bad"), ("superb", "dull")) for x in ("long", "short", "warm")]


def llama_trunk(tok):
    from transformers import LlamaConfig, LlamaModel
    torch.manual_seed(4)
    return LlamaModel(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))


def trained_reward_model(tok, arch: str) -> RewardModel:
    """Our training code end to end on a tiny trunk: Bradley-Terry steps, then the normalisation (gain != 1)."""
    trunk = build_gpt2(SMALL, tok, seed=1).transformer if arch == "gpt2" else llama_trunk(tok)
    rm = RewardModel(trunk)
    groups = encode_groups(tok, ROWS * 2, 64)
    train_reward_model(rm, groups, TrainConfig(epochs=1, batch_size=6, lr=3e-3), tok.pad_token_id)
    raw = score_texts(rm, tok, ["the film was"] * 6, [r["responses"][0] for r in ROWS], [True] * 6, 64,
                      normalized=False)
    set_normalization(rm, raw * 3.0 + 1.0)
    assert abs(float(rm.gain) - 1.0) > 1e-3 and abs(float(rm.bias)) > 1e-3
    return rm.eval()


def chatml_tokenizer():
    """A byte-level BPE of its own (other vocabulary and ids than the policy's) with a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(TEXTS * 2, trainers.BpeTrainer(
        vocab_size=280, min_frequency=1, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = CHATML
    return tok


def save_foreign_reward_model(path):
    """An off-the-shelf-style reward model: Qwen2ForSequenceClassification, one label, its own tokenizer."""
    from transformers import Qwen2Config, Qwen2ForSequenceClassification
    tok = chatml_tokenizer()
    torch.manual_seed(5)
    model = Qwen2ForSequenceClassification(Qwen2Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=256, num_labels=1, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id)).eval()
    with torch.no_grad():
        model.score.weight.mul_(50.0)                   # scores that differ visibly between responses
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, tok


def save_policy(tok, path):
    build_gpt2(SMALL, tok, seed=0).save_pretrained(path)
    tok.save_pretrained(path)


# ---------------------------------------------------------------------------------------------- (a)
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_our_reward_model_loads_with_transformers_and_scores_the_same(tok, tmp_path, arch):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    rm = trained_reward_model(tok, arch)
    save_tokenizer_and_model(rm, tok, tmp_path / "rm")
    config = json.loads((tmp_path / "rm" / "config.json").read_text())
    assert config["architectures"][0].endswith("ForSequenceClassification") and len(config["id2label"]) == 1
    assert config["problem_type"] == "regression" and config["pad_token_id"] == tok.pad_token_id
    assert config["rlhf_reward"]["normalized"] and "logits[:, 0] + bias" in config["rlhf_reward"]["score"]
    assert (tmp_path / "rm" / "model.safetensors").exists() and not (tmp_path / "rm" / REWARD_HEAD_FILE).exists()
    assert "logits[:, 0] + model.config.rlhf_reward" in (tmp_path / "rm" / "README.md").read_text()
    assert is_reward_folder(tmp_path / "rm")

    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    assert AutoTokenizer.from_pretrained(tmp_path / "rm").get_vocab() == tok.get_vocab()
    ours = RewardModel.from_pretrained(tmp_path / "rm")
    bias = hf.config.rlhf_reward["bias"]
    seqs = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in
            ("the film was great.", "the plot was dull and the music felt long.", "the cast")]
    ids, attn = pad_left(seqs, tok.pad_token_id)                                   # left-padded, 3 lengths
    with torch.no_grad():
        trained = rm(ids, attn)
        loaded = ours(ids, attn)
        batched = hf(input_ids=ids, attention_mask=attn, position_ids=position_ids_from_mask(attn)).logits[:, 0]
        alone = torch.stack([hf(input_ids=torch.tensor([s])).logits[0, 0] for s in seqs])
    assert torch.allclose(loaded, trained, atol=1e-5)
    assert torch.allclose(batched + bias, trained, atol=1e-5)
    assert torch.allclose(alone + bias, trained, atol=1e-5)
    meta = hf.config.rlhf_reward                  # the raw score comes back: (logits + bias) * raw_std + raw_mean
    assert torch.allclose((alone + bias) * meta["raw_std"] + meta["raw_mean"], rm.raw_scores(ids, attn).detach(),
                          atol=1e-4)


def test_previous_format_still_loads(tok, tmp_path):
    rm = trained_reward_model(tok, "gpt2")
    rm.trunk.save_pretrained(tmp_path / "old")
    tok.save_pretrained(tmp_path / "old")
    _save_tensors({"weight": rm.score_head.weight, "bias": rm.score_head.bias, "gain": rm.gain, "norm_bias": rm.bias},
                  tmp_path / "old" / REWARD_HEAD_FILE)
    ids, attn = pad_left([[5, 6, 7], [8, 9]], tok.pad_token_id)
    with torch.no_grad():
        assert torch.allclose(RewardModel.from_pretrained(tmp_path / "old")(ids, attn), rm(ids, attn), atol=1e-6)
    assert is_reward_folder(tmp_path / "old")


def test_what_is_not_a_reward_model_fails_with_one_line_naming_the_path(tok, tmp_path):
    from transformers import GPT2Config, GPT2ForSequenceClassification
    save_policy(tok, tmp_path / "lm")
    with pytest.raises(RewardFormatError, match=r"lm: not a reward model \(config.json architectures .*LMHeadModel"):
        RewardModel.from_pretrained(tmp_path / "lm")
    GPT2ForSequenceClassification(GPT2Config(vocab_size=len(tok), n_positions=32, n_embd=16, n_layer=1, n_head=2,
                                             num_labels=2)).save_pretrained(tmp_path / "two")
    with pytest.raises(RewardFormatError, match="two: a reward model has one label, this one has 2"):
        RewardModel.from_pretrained(tmp_path / "two")
    assert not is_reward_folder(tmp_path / "lm")
    seqcls = GPT2ForSequenceClassification(GPT2Config(vocab_size=len(tok), n_positions=32, n_embd=16, n_layer=1,
                                                      n_head=2, num_labels=1))
    seqcls.config.architectures = ["GPT2ForSequenceClassification"]
    seqcls.config.save_pretrained(tmp_path / "pickled")
    torch.save(seqcls.state_dict(), tmp_path / "pickled" / "pytorch_model.bin")      # never unpickled
    with pytest.raises(RewardFormatError, match="pickled: cannot load the reward model .safetensors only."):
        RewardModel.from_pretrained(tmp_path / "pickled")


# ---------------------------------------------------------------------------------------------- (b)
def ppo_config(tmp_path, **kw) -> PPOConfig:
    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])
    return PPOConfig(policy_path=str(tmp_path / "policy"), reward_path=str(tmp_path / "rm"),
                     prompts=str(tmp_path / "prompts.jsonl"), out_dir=str(tmp_path / "out"), total_episodes=8,
                     rollout_batch_size=4, num_mini_batches=2, ppo_epochs=1, lr=1e-3,
                     sampling=SamplingConfig(max_new_tokens=6, batch_size=4), **kw)


def hf_scores_of_decoded_text(model, rm_tok, policy_tok, prompts, rollout) -> torch.Tensor:
    """Independently of our scorer: decode with the policy's tokenizer, render with the reward model's template
    (apply_chat_template + response + <|im_end|> when it ended), tokenize, transformers' forward."""
    out = []
    drop = {policy_tok.eos_token_id, policy_tok.pad_token_id}
    for p, ids, m, ended in zip(prompts, rollout.response_ids.tolist(), rollout.response_mask.tolist(),
                                rollout.ended.tolist()):
        text = policy_tok.decode([t for t, k in zip(ids, m) if k and t not in drop], skip_special_tokens=True).strip()
        rendered = rm_tok.apply_chat_template(as_messages(p), tokenize=False, add_generation_prompt=True)
        enc = rm_tok(rendered + text + ("<|im_end|>" if ended else ""), add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            out.append(model(**enc).logits[0, 0])
    return torch.stack(out)


def test_reward_model_with_another_tokenizer_runs_in_ppo_on_decoded_text(tok, tmp_path):
    save_policy(tok, tmp_path / "policy")
    hf, rm_tok = save_foreign_reward_model(tmp_path / "rm")
    cfg = ppo_config(tmp_path, value_model="separate")
    policy_tok = load_tokenizer(cfg.policy_path)
    models = ppo.build_models(cfg, policy_tok)
    scorer = models.reward_model
    assert isinstance(scorer, RewardScorer) and not scorer.fast and scorer.path == "text"
    # the critic could not read the policy's ids through the reward model's trunk: it starts from the policy's
    assert type(models.value_model.trunk).__name__ == "GPT2Model"
    assert torch.equal(models.value_model.trunk.wte.weight, models.policy.lm.transformer.wte.weight)

    trainer = PPOTrainer(cfg, models, policy_tok, PROMPTS)
    rollout = trainer.rollout(0)
    exp = trainer.experience(rollout)
    expected = hf_scores_of_decoded_text(hf, rm_tok, policy_tok, trainer.batch_prompts(0), rollout)
    assert torch.allclose(exp.raw_scores, expected, atol=1e-5)
    assert expected.std() > 1e-3                                 # the responses are told apart
    assert scorer.calls == {"text": 1}
    stats = trainer.step()                                       # a whole PPO iteration on it
    assert torch.isfinite(torch.tensor([stats["objective/scores"], stats["loss/value_avg"]])).all()


def test_scoring_text_with_the_wrong_tokenizer_is_refused(tok, tmp_path):
    save_foreign_reward_model(tmp_path / "rm")
    rm = RewardModel.from_pretrained(tmp_path / "rm")
    with pytest.raises(ValueError, match="not the reward model's own"):
        score_texts(rm, tok, ["the film was"], ["great."], [True], 64)


def test_rlhf_score_gives_the_stage_scorers_numbers(tok, tmp_path):
    """The registry's reward pyfunc (what `rlhf score` runs) on a local folder = RewardScorer.score_texts."""
    import pandas as pd

    from tasks.model_loading import load_model
    save_foreign_reward_model(tmp_path / "rm")
    scorer = RewardScorer.load(tmp_path / "rm", tok)
    prompts, responses = ["the film was", "the film was"], ["great and warm.", "bad"]
    expected = scorer.score_texts(prompts, responses, [True, False], 64).tolist()
    model = load_model(str(tmp_path / "rm"), kind="reward")
    got = model.predict(pd.DataFrame({"prompt": prompts, "response": responses, "ended": [True, False]}))
    assert got == pytest.approx(expected, abs=1e-6) and got[0] != pytest.approx(got[1])


# ---------------------------------------------------------------------------------------------- (c)
def test_reward_model_sharing_the_policy_tokenizer_scores_its_ids(tok, tmp_path):
    save_policy(tok, tmp_path / "policy")
    save_tokenizer_and_model(trained_reward_model(tok, "gpt2"), tok, tmp_path / "rm")
    cfg = ppo_config(tmp_path, value_model="separate")
    policy_tok = load_tokenizer(cfg.policy_path)
    models = ppo.build_models(cfg, policy_tok)
    scorer = models.reward_model
    assert scorer.fast and scorer.path == "ids"
    critic = CriticModel.from_reward_model(cfg.reward_path)      # from the reward model, as TRL
    assert torch.equal(models.value_model.trunk.wte.weight, critic.trunk.wte.weight)

    trainer = PPOTrainer(cfg, models, policy_tok, PROMPTS)
    rollout = trainer.rollout(0)
    exp = trainer.experience(rollout)
    assert scorer.calls == {"ids": 1}
    ids, attn = rollout.full()
    with torch.no_grad():
        direct = torch.stack([scorer.model(row[m.bool()][None], torch.ones(1, int(m.sum()), dtype=torch.long))[0]
                              for row, m in zip(ids, attn)])
    assert torch.allclose(exp.raw_scores, direct, atol=1e-5)


def test_same_vocabulary_with_another_chat_template_is_another_tokenizer(tok, tmp_path):
    save_tokenizer_and_model(trained_reward_model(tok, "gpt2"), tok, tmp_path / "rm")
    assert RewardScorer.load(tmp_path / "rm", tok).fast
    with_template = load_tokenizer(tmp_path / "rm")
    with_template.chat_template = CHATML
    assert not RewardScorer.load(tmp_path / "rm", with_template).fast
