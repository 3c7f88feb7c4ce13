"""Chat models of other families than the example's Qwen2/ChatML, as a user brings them: Gemma (BOS written by the
template, a `model` role, content trimmed, no system role), a Llama-3-style template on Llama (no pad token), Mistral
(`[INST]`, EOS closes a turn, no pad token) and Phi-3 (pad = EOS, EOS after the last turn only). Each is a tiny model
of that architecture with a byte-level BPE tokenizer trained here, the family's special tokens and template, and a
generation config listing its end ids. What must hold for every one: the prompt renders with the generation prompt
and encodes back to the same text (BOS once), SFT learns exactly each assistant turn and its end-of-turn id, the
sampler runs on the family's cache, and the reward model saved by the reward stage loads with transformers and scores
the same."""
from __future__ import annotations

import pytest
import torch

from rlhf.chat import assistant_mask, encode_prompt, encode_response, end_ids, render_prompt, turn_end_id
from rlhf.generation import encode_prompts, sample
from rlhf.modeling import RewardModel, load_causal_lm, load_tokenizer, position_ids_from_mask
from rlhf.data import pad_left
from rlhf.stages.common import save_tokenizer_and_model
from tests.component.chat_helpers import assistant_runs

GEMMA = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
         "{% endif %}{% for message in messages %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
         "{% else %}{% set role = message['role'] %}{% endif %}"
         "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
         "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
          "{{ m['content'] | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
          "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
MISTRAL = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
           "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
           "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
           "{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}")
PHI3 = ("{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")

# family: (architecture, template, special tokens, tokenizer roles, BOS the template writes, generation end tokens,
#          the turn end, the generation prompt's end)
FAMILIES = {
    "gemma": ("gemma", GEMMA, ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"],
              {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}, "<bos>", ["<eos>", "<end_of_turn>"],
              "<end_of_turn>", "<start_of_turn>model\n"),
    "llama3": ("llama", LLAMA3, ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                                 "<|eot_id|>"],
               {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, "<|begin_of_text|>",
               ["<|end_of_text|>", "<|eot_id|>"], "<|eot_id|>", "<|end_header_id|>\n\n"),
    "mistral": ("mistral", MISTRAL, ["<unk>", "<s>", "</s>"],
                {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, "<s>", ["</s>"], "</s>", " [/INST]"),
    "phi3": ("phi3", PHI3, ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>", "<|system|>"],
             {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}, None, ["<|endoftext|>", "<|end|>"], "<|end|>",
             "<|assistant|>\n"),
}
TEXTS = [f"the {a} was {b} and the {c} felt {d}." for a in ("film", "plot", "cast") for b in ("great", "dull", "superb")
         for c in ("ending", "music") for d in ("long", "short")] * 3


def build_family(name: str, out):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GenerationConfig, PreTrainedTokenizerFast

    arch, template, specials, roles, bos, gen_end, _, _ = FAMILIES[name]
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if bos:             # the tokenizer adds BOS itself, as these families' tokenizers do: the template's must win
        raw.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, raw.token_to_id(bos))])
    extra = [t for t in specials if t not in roles.values()]
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, additional_special_tokens=extra, **roles)
    tok.chat_template = template
    common = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, max_position_embeddings=128, pad_token_id=tok.pad_token_id,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.convert_tokens_to_ids(gen_end[-1]))
    import transformers
    prefix = {"gemma": "Gemma", "llama": "Llama", "mistral": "Mistral", "phi3": "Phi3"}[arch]
    if arch == "gemma":
        common["head_dim"] = 16
    torch.manual_seed(0)
    model = getattr(transformers, prefix + "ForCausalLM")(getattr(transformers, prefix + "Config")(**common))
    model.generation_config = GenerationConfig(eos_token_id=[tok.convert_tokens_to_ids(t) for t in gen_end],
                                               bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    return request.param, build_family(request.param, tmp_path_factory.mktemp(request.param))


def test_prompts_render_with_the_generation_prompt_and_bos_once(family):
    name, path = family
    tok = load_tokenizer(path)
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id        # added where missing or EOS
    turn_end = FAMILIES[name][6]
    assert tok.convert_ids_to_tokens(turn_end_id(tok)) == turn_end and turn_end_id(tok) in end_ids(tok)
    text = render_prompt(tok, [{"role": "user", "content": "the film was"}])
    assert text.endswith(FAMILIES[name][7])
    ids = encode_prompt(tok, [{"role": "user", "content": "the film was"}], 512)
    assert tok.decode(ids) == text
    bos = FAMILIES[name][4]
    if bos:
        assert ids[0] == tok.convert_tokens_to_ids(bos) and ids.count(ids[0]) == 1
    assert encode_response(tok, "superb.")[-1] == turn_end_id(tok)
    long = encode_prompt(tok, [{"role": "user", "content": "the film was " * 30}], 12)    # cut from the left
    assert len(long) == 12 and tok.decode(long).endswith(FAMILIES[name][7])
    if bos:                                                                          # ... keeping the template's BOS
        assert long[0] == tok.convert_tokens_to_ids(bos) and long.count(long[0]) == 1


def test_sft_learns_each_assistant_turn_and_its_end(family):
    name, path = family
    tok = load_tokenizer(path)
    conv = [{"role": "user", "content": "the film"}, {"role": "assistant", "content": "was great."},
            {"role": "user", "content": "and the plot?"}, {"role": "assistant", "content": "felt long."}]
    ids, mask = assistant_mask(tok, conv, 512)
    turn_end = FAMILIES[name][6]
    assert [tok.decode(r) for r in assistant_runs(ids, mask)] == ["was great." + turn_end, "felt long." + turn_end]
    ids, mask = assistant_mask(tok, [{"role": "user", "content": "the film " * 20}, conv[1]], 16)
    assert len(ids) == 16 and not any(mask)      # cut at its end, the turn is gone: the sft stage leaves it out


def test_sampling_and_the_reward_model_run_on_the_family(family, tmp_path):
    from transformers import AutoModelForSequenceClassification
    name, path = family
    tok = load_tokenizer(path)
    lm = load_causal_lm(path, tok).eval()
    prompts = [[{"role": "user", "content": "the film"}], [{"role": "user", "content": "and the plot was dull?"}]]
    q, qm = encode_prompts(tok, prompts, 64)
    r = sample(lm, q, qm, 8, 1.0, end_ids(tok), tok.pad_token_id, torch.Generator().manual_seed(0), record=True)
    assert r.response_ids.shape[0] == 2 and bool(torch.isfinite(r.logprobs).all())

    rm = RewardModel.from_causal_lm_path(path, tok)
    save_tokenizer_and_model(rm, tok, tmp_path / "rm")
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    seqs = [encode_prompt(tok, p, 64) + encode_response(tok, "was great.") for p in prompts]
    ids, attn = pad_left(seqs, tok.pad_token_id)
    with torch.no_grad():
        ours = rm(ids, attn)
        theirs = hf(input_ids=ids, attention_mask=attn, position_ids=position_ids_from_mask(attn)).logits[:, 0]
    assert torch.allclose(theirs + hf.config.rlhf_reward["bias"], ours, atol=1e-5)


def test_the_sft_and_ppo_stages_name_the_record_a_template_refuses_before_loading_weights(tmp_path, monkeypatch):
    """Gemma's template raises on a system message: the stage fails with one line naming the prepared file and line,
    and no model weights are loaded first."""
    import json

    from rlhf.chat import ChatError
    from rlhf.config import PPOConfig, ProbeConfig, SFTConfig
    from rlhf.stages import ppo as ppo_stage
    from rlhf.stages import sft as sft_stage
    path = build_family("gemma", tmp_path / "gemma")

    def no_weights(*a, **k):
        raise AssertionError("weights loaded before the data was checked")
    monkeypatch.setattr(sft_stage, "load_causal_lm", no_weights)
    monkeypatch.setattr(ppo_stage, "build_models", no_weights)
    ok = [{"role": "user", "content": "the film"}, {"role": "assistant", "content": "was great."}]
    system = [{"role": "system", "content": "be brief"}] + ok
    data = tmp_path / "data"
    data.mkdir()
    for name, rows in (("sft_train.jsonl", [ok, ok, system]), ("sft_val.jsonl", [ok])):
        (data / name).write_text("".join(json.dumps({"messages": m}) + "\n" for m in rows))
    with pytest.raises(ChatError, match=r"sft_train.jsonl line 3: the model's chat template refused the "
                                        r"conversation: System role not supported"):
        sft_stage.run(SFTConfig(model_path=str(path), data_dir=str(data), out_dir=str(tmp_path / "sft")))
    prompts = data / "prompts_ppo.jsonl"
    prompts.write_text(json.dumps({"prompt": ok[:1]}) + "\n" + json.dumps({"prompt": system[:2]}) + "\n")
    with pytest.raises(ChatError, match=r"prompts_ppo.jsonl line 2: .*System role not supported"):
        ppo_stage.run(PPOConfig(policy_path=str(path), reward_path=str(path), prompts=str(prompts),
                                out_dir=str(tmp_path / "policy"), probe=ProbeConfig(every=0)))


def test_lora_adapters_on_every_family(family):
    """lora.r > 0 with no target_modules: peft's default where it has one, else every linear layer but the output
    head (Phi-3 has no peft default); only the adapters train, and merging gives the plain architecture back."""
    from rlhf.accel import apply_lora, is_lora, merge_lora
    from rlhf.config_base import LoRAConfig
    name, path = family
    tok = load_tokenizer(path)
    lm = apply_lora(load_causal_lm(path, tok), LoRAConfig(r=4), causal_lm=True)
    ids = torch.tensor([encode_prompt(tok, "the film was", 32)])
    lm(input_ids=ids).logits.sum().backward()
    trained = {n for n, p in lm.named_parameters() if p.grad is not None}
    assert trained and all("lora_" in n for n in trained)
    merged = merge_lora(lm)
    assert type(merged).__name__.endswith("ForCausalLM") and not is_lora(merged)
    trunk = apply_lora(RewardModel.from_causal_lm_path(path, tok).trunk, LoRAConfig(r=4), causal_lm=False)
    assert any("lora_" in n for n, _ in trunk.named_parameters())


def test_sft_leaves_out_conversations_whose_assistant_turns_lie_beyond_max_length(capsys):
    """A conversation is cut at its end, so a long user turn can push every assistant token past
    sft.train.max_length: such a demonstration is left out with one line naming the file, the count and the first
    line (not trained on as an all-zero mask); if none is left, the stage fails naming the key."""
    from rlhf.stages.sft import with_targets
    from rlhf.train_lm import Example
    kept = with_targets([Example([1, 2, 3], [0, 1, 1]), Example([1, 2], [0, 0]), Example([4, 5], [1, 1])],
                        "sft_train.jsonl", 64, required=True)
    assert [e.ids for e in kept] == [[1, 2, 3], [4, 5]]
    assert ("sft: 1 of 3 demonstrations in sft_train.jsonl have no assistant token within sft.train.max_length (64) "
            "and are left out (the first: line 2)") in capsys.readouterr().err
    assert with_targets([Example([1], [0])], "sft_val.jsonl", 64, required=False) == []
    with pytest.raises(ValueError, match=r"sft_train.jsonl: no demonstration has an assistant token within "
                                         r"sft.train.max_length \(64\)"):
        with_targets([Example([1], [0])], "sft_train.jsonl", 64, required=True)
