"""The chat example's inputs (examples/chat/): a tiny chat model and a conversational data set, built locally.

* ``model/``: a Qwen2-architecture causal LM with a byte-level BPE tokenizer trained here, ChatML turn markers as
  special tokens, a ChatML chat template, and a generation config that stops on EOS and on ``<|im_end|>`` (as real
  chat models do). It is briefly pretrained on the demo's review corpus rendered as chat turns, so that it writes
  words before SFT (a stand-in for "your instruct model").
* ``data/``: Parquet files in TRL's conversational formats: ``sft.parquet`` (``messages``), ``prompts.parquet``
  (``messages``: one user turn) and ``preferences.parquet`` (``prompt`` / ``chosen`` / ``rejected`` as messages),
  the preference decided by the demo's noise-free gold judge between two demonstrations (no annotate stage).

What exists is left untouched: drop your own model into model/ and your own Parquet files (same columns) into
data/, and `make example-chat` runs the pipeline on them. ``python -m rlhf.demo.chat_example DIR``.
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
ASK = "Continue this movie review: "


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": ASK + text}]


def build_tokenizer(texts: list[str], vocab_size: int = 1024):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>", pad_token="<|pad|>",
                                  additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    tok.chat_template = CHATML
    return tok


def build_model(tok, seed: int = 0):
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                      pad_token_id=tok.pad_token_id, bos_token_id=None)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg)
    model.generation_config = GenerationConfig(
        eos_token_id=[tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id], pad_token_id=tok.pad_token_id)
    return model


def warm_up(model, tok, texts: list[str], steps: int, seed: int = 0) -> float:
    """A short language-model warm-up on chat-rendered texts (so the example's 'instruct model' writes words)."""
    import torch
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(steps):
        batch = [tok(t, add_special_tokens=False)["input_ids"][:96] for t in rng.sample(texts, 16)]
        width = max(map(len, batch))
        ids = torch.full((len(batch), width), tok.pad_token_id)
        for i, b in enumerate(batch):
            ids[i, :len(b)] = torch.tensor(b)
        attn = (ids != tok.pad_token_id).long()
        labels = ids.masked_fill(attn == 0, -100)
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    return float(loss.detach())


def write_model(out: Path, reviews: list, warmup_steps: int) -> str:
    """The tokenizer and model, warmed up on the reviews as chat turns (opening asked, the review answered)."""
    tok = build_tokenizer([r.text for r in reviews] + [CHATML])
    model = build_model(tok)
    texts = [tok.apply_chat_template(user(r.opening) + [{"role": "assistant", "content": r.completion}],
                                     tokenize=False) for r in reviews]
    loss = warm_up(model, tok, texts, warmup_steps)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return f"model/ (Qwen2, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, warm-up loss {loss:.2f})"


def preference_rows(sft: list, judge, seed: int) -> list[dict]:
    """Two demonstrations per prompt (its own and another's), the gold judge's preferred one chosen."""
    rng = random.Random(seed)
    rows = []
    for r in sft:
        a, b = r.completion, rng.choice(sft).completion
        sa, sb = judge.score(r.opening, a), judge.score(r.opening, b)
        if sa == sb:
            continue
        chosen, rejected = (a, b) if sa > sb else (b, a)
        rows.append({"prompt": user(r.opening), "chosen": [{"role": "assistant", "content": chosen}],
                     "rejected": [{"role": "assistant", "content": rejected}]})
    return rows


def write_data(out: Path, data, seed: int) -> list[str]:
    """The Parquet files; returns the names written (a file already there is kept)."""
    import pandas as pd

    from rlhf.demo.judge import GoldJudge
    judge = GoldJudge.from_texts(r.text for r in data.corpus)
    tables = {
        "sft.parquet": lambda: [{"messages": user(r.opening) + [{"role": "assistant", "content": r.completion}]}
                                for r in data.sft],
        "prompts.parquet": lambda: [{"messages": user(opening)} for opening, _ in data.prompts],
        "preferences.parquet": lambda: preference_rows(data.sft, judge, seed),
    }
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, rows in tables.items():
        if not (out / name).exists():
            table = rows()
            pd.DataFrame(table).to_parquet(out / name, index=False)
            written.append(f"data/{name} ({len(table)} rows)")
    return written


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Write the chat example's tiny model and Parquet data (kept if present).")
    ap.add_argument("root", help="the example folder (examples/chat)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-sft", type=int, default=1200)
    ap.add_argument("--n-prompts", type=int, default=600)
    ap.add_argument("--warmup-steps", type=int, default=150)
    a = ap.parse_args(argv)
    from rlhf.demo.generator import build_demo_data
    root = Path(a.root)
    data = build_demo_data(a.seed, n_corpus=2000, n_sft=a.n_sft, n_prompts=a.n_prompts)
    done = write_data(root / "data", data, a.seed)
    if not (root / "model" / "config.json").exists():
        done.append(write_model(root / "model", data.corpus, a.warmup_steps))
    print("chat example: " + (", ".join(done) if done else "model/ and data/ already there (kept)"))


if __name__ == "__main__":
    main()
