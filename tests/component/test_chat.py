"""Chat models through the pipeline (rlhf/chat.py), on the chat example's tiny Qwen2 with a ChatML template: what
the model sees, what SFT learns from, where sampling stops, and what the reward model reads."""
from __future__ import annotations

import pytest
import torch

from rlhf.chat import (ChatError, as_messages, assistant_mask, check_prompts, encode_prompt, encode_response, end_ids,
                       render_prompt, turn_end_id)
from rlhf.demo.chat_example import build_model, build_tokenizer
from rlhf.generation import decode_responses, encode_prompts, sample
from rlhf.modeling import load_tokenizer
from rlhf.train_lm import sft_examples
from rlhf.train_reward import encode_groups
from tests.component.chat_helpers import assistant_runs

TEXTS = ["the acting in this film was superb and the plot held up well.", "a dull story with flat characters.",
         "i watched this thriller and found it gripping from start to end."] * 20


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("chat_model")
    tok = build_tokenizer(TEXTS, vocab_size=400)
    model = build_model(tok)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tok(chat_dir):
    return load_tokenizer(chat_dir)


def test_end_ids_come_from_the_generation_config(tok):
    im_end, eos = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    assert end_ids(tok) == [im_end, eos] and turn_end_id(tok) == im_end
    assert tok.pad_token_id not in end_ids(tok)


def test_prompts_are_rendered_with_the_template_and_generation_prompt(tok):
    msgs = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi there"}]
    text = render_prompt(tok, msgs)
    assert text == "<|im_start|>system\nbe kind<|im_end|>\n<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n"
    assert render_prompt(tok, "hi there") == "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n"
    ids = encode_prompt(tok, msgs, 512)
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>") and tok.decode(ids) == text
    assert encode_prompt(tok, msgs, 5) == ids[-5:]                      # a long prompt keeps its end


def test_sft_mask_covers_exactly_the_assistant_turns(tok):
    conv = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "the acting was superb."},
            {"role": "user", "content": "and?"}, {"role": "assistant", "content": "a dull story."}]
    ids, mask = assistant_mask(tok, conv, 512)
    assert len(ids) == len(mask)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    # hand check: the masked tokens decode to each assistant content followed by its <|im_end|>, nothing else
    runs = assistant_runs(ids, mask)
    assert [tok.decode(r) for r in runs] == ["the acting was superb.<|im_end|>", "a dull story.<|im_end|>"]
    assert all(r[-1] == im_end for r in runs)
    assert sum(mask) == sum(len(r) for r in runs)
    example = sft_examples(tok, [{"messages": conv}], 512)[0]
    assert example.ids == ids and example.mask == mask


def test_sft_mask_with_a_template_that_closes_the_last_turn_differently(tok):
    """Phi-3's template writes EOS after the last message only (not with the generation prompt), so a turn rendered
    alone is not a prefix of the whole conversation; the mask still ends at each turn's end-of-turn id, not at the
    EOS after it."""
    from transformers import AutoTokenizer
    phi = AutoTokenizer.from_pretrained(tok.name_or_path)
    phi.chat_template = tok.chat_template + "{% if not add_generation_prompt %}{{ eos_token }}{% endif %}"
    phi.rlhf_end_ids = end_ids(tok)
    conv = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "the acting was superb."},
            {"role": "user", "content": "and?"}, {"role": "assistant", "content": "a dull story."}]
    ids, mask = assistant_mask(phi, conv, 512)
    assert phi.decode(ids).endswith("<|im_end|>\n<|endoftext|>")
    assert [phi.decode(r) for r in assistant_runs(ids, mask)] == ["the acting was superb.<|im_end|>",
                                                                  "a dull story.<|im_end|>"]
    ids, mask = assistant_mask(phi, conv[:2], 512)
    assert [phi.decode(r) for r in assistant_runs(ids, mask)] == ["the acting was superb.<|im_end|>"]
    # A template that shortens earlier assistant turns (as reasoning templates drop their thinking) parts from the
    # turn rendered alone inside its content: refused, not a mask over half a turn.
    short = AutoTokenizer.from_pretrained(tok.name_or_path)
    short.chat_template = tok.chat_template.replace(
        "{{ m['content'] }}", "{{ m['content'] if loop.last or m['role'] != 'assistant' else m['content'][:5] }}")
    short.rlhf_end_ids = end_ids(tok)
    assert "the a<|im_end|>" in short.apply_chat_template(conv, tokenize=False)
    with pytest.raises(ChatError, match="differently inside the conversation"):
        assistant_mask(short, conv, 512)


def test_a_conversation_the_template_refuses_fails_naming_its_file_and_line(tok):
    """Gemma's template raises on a system message, Mistral's on roles that do not alternate: the first such record
    fails with one line naming the file and line (checked before any weights load), not a Jinja traceback."""
    from transformers import AutoTokenizer
    strict = AutoTokenizer.from_pretrained(tok.name_or_path)
    strict.chat_template = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
                            "{% endif %}" + tok.chat_template)
    ok = [{"role": "user", "content": "hi"}]
    bad = [{"role": "system", "content": "be kind"}, *ok]
    check_prompts(strict, [ok, ok], "prompts.jsonl")
    with pytest.raises(ChatError, match=r"^prompts.jsonl line 2: the model's chat template refused the conversation: "
                                        r"System role not supported$"):
        check_prompts(strict, [ok, bad, ok], "prompts.jsonl")
    answer = [{"role": "assistant", "content": "yes"}]
    with pytest.raises(ChatError, match=r"^sft_train.jsonl line 3: .*System role not supported$"):
        sft_examples(strict, [{"messages": ok + answer}] * 2 + [{"messages": bad + answer}], 64, "sft_train.jsonl")


def test_prompt_completion_rows_end_with_the_turn_end(tok):
    ex = sft_examples(tok, [{"prompt": [{"role": "user", "content": "hello"}], "completion": "fine."}], 512)[0]
    target = [t for t, m in zip(ex.ids, ex.mask) if m]
    assert tok.decode(target) == "fine.<|im_end|>"
    assert tok.decode([t for t, m in zip(ex.ids, ex.mask) if not m]).endswith("<|im_start|>assistant\n")


def test_sft_on_messages_needs_a_template(tok):
    from transformers import AutoTokenizer
    plain = AutoTokenizer.from_pretrained(tok.name_or_path)
    plain.chat_template = None
    with pytest.raises(ChatError, match="chat template"):
        assistant_mask(plain, [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], 64)
    with pytest.raises(ChatError):
        as_messages([{"role": "wizard", "content": "x"}])


def test_sampling_stops_at_the_end_of_turn_id(tok, chat_dir):
    from rlhf.modeling import load_causal_lm
    model = load_causal_lm(chat_dir, tok)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    lm_head_bias = torch.zeros(len(tok))                     # make <|im_end|> by far the likeliest next token
    lm_head_bias[im_end] = 50.0

    class Biased(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **kw):
            out = self.inner(**kw)
            out.logits = out.logits + lm_head_bias
            return out
    q, qm = encode_prompts(tok, ["hi", [{"role": "user", "content": "hello there"}]], 32)
    r = sample(Biased(model), q, qm, 10, 1.0, end_ids(tok), tok.pad_token_id, torch.Generator().manual_seed(0))
    assert r.response_ids.shape[1] == 1 and r.response_ids[:, 0].tolist() == [im_end, im_end]
    assert r.ended.tolist() == [True, True] and decode_responses(tok, r) == ["", ""]


def test_a_conversational_preference_record_gives_the_policy_ids(tok):
    prompt = [{"role": "user", "content": "Continue this movie review: the film"}]
    row = {"prompt": prompt, "responses": ["was superb.", "was dull."], "ranks": [0, 1]}
    group = encode_groups(tok, [row], 512)[0]
    for seq, resp in zip(group.seqs, row["responses"]):
        assert seq == encode_prompt(tok, prompt, 512) + encode_response(tok, resp)
        assert tok.decode(seq) == render_prompt(tok, prompt) + resp + "<|im_end|>"
