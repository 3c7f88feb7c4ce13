"""The second benchmark size (issue 18): a Llama-architecture model of 20-40M parameters built from a config (no hub),
SFT'd for a few hundred steps on the demo's data so that sampling is realistic, a reward model from it, and 64-token
prompts; written as an artifacts/ folder of the layout bench.py reads (models/{base,sft,reward}, data/,
preferences/), so both sides of the comparison run unchanged on it:

    .venv/bin/python benchmarks/size_artifacts.py --from artifacts --out /tmp/rlhf-bench-llama/artifacts
    .venv/bin/python benchmarks/bench.py --artifacts /tmp/rlhf-bench-llama/artifacts --work /tmp/rlhf-bench-llama \\
        --only ppo,rloo --repeats 3 --episodes 192 $(cat /tmp/rlhf-bench-llama/artifacts/bench_args.txt)

``--from``: an artifacts/ folder of a demo pipeline run (its tokenizer, SFT demonstrations, rankings and corpus).
The model: LlamaForCausalLM, 8 layers, width 512, SwiGLU 1408, 8 heads, the demo's byte-level BPE vocabulary
(26.7M parameters), seeded. Prompts: windows of ``--prompt-tokens`` tokens of the corpus (the demo's prompts are
about 9 tokens). bench_args.txt holds the ``--ppo-set`` arguments that make both sides sample up to
``--response-tokens`` tokens after prompts of ``--prompt-tokens``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

SIZES = {"llama27m": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
                          num_key_value_heads=8)}


def build_llama(tok, size: str, positions: int, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(vocab_size=len(tok), max_position_embeddings=positions, tie_word_embeddings=False,
                         bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         attention_dropout=0.0, **SIZES[size])
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def corpus_prompts(tok, corpus: Path, n_tokens: int, n: int) -> list[dict]:
    """``n`` prompts of ``n_tokens`` tokens each: consecutive windows of the corpus's token stream, decoded."""
    from rlhf.data import load_jsonl
    stream: list[int] = []
    for r in load_jsonl(corpus):
        stream += tok(" " + r["text"], add_special_tokens=False)["input_ids"]
        if len(stream) >= n * n_tokens:
            break
    return [{"prompt": tok.decode(stream[i * n_tokens:(i + 1) * n_tokens])} for i in range(len(stream) // n_tokens)][:n]


def log(msg: str) -> None:
    print(f"[size] {msg}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--from", dest="src", required=True, help="artifacts/ of a demo pipeline run")
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", choices=sorted(SIZES), default="llama27m")
    ap.add_argument("--sft-steps", type=int, default=300)
    ap.add_argument("--reward-steps", type=int, default=40)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--response-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    import torch
    from rlhf.config import TrainConfig
    from rlhf.data import load_jsonl
    from common import write_jsonl
    from rlhf.modeling import RewardModel, load_tokenizer
    from rlhf.stages.common import save_tokenizer_and_model
    from rlhf.train_lm import sft_examples, train_causal_lm
    from rlhf.train_reward import encode_groups, train_reward_model

    torch.set_num_threads(a.threads)
    src, out = Path(a.src), Path(a.out)
    if out.exists():
        shutil.rmtree(out)
    (out / "models").mkdir(parents=True)
    shutil.copytree(src / "data", out / "data")
    shutil.copytree(src / "preferences", out / "preferences")
    tok = load_tokenizer(src / "models" / "sft")
    positions = 2 * (a.prompt_tokens + a.response_tokens)
    model = build_llama(tok, a.size, positions, a.seed)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{a.size}: {n_params / 1e6:.1f}M parameters")
    save_tokenizer_and_model(model, tok, out / "models" / "base")

    examples = sft_examples(tok, load_jsonl(src / "data" / "sft_train.jsonl"), 128)
    cfg = TrainConfig(batch_size=16, lr=3e-4, warmup_ratio=0.05, max_length=128, log_every=25, checkpoint_every=0,
                      epochs=a.sft_steps / math.ceil(len(examples) / 16))
    t0 = time.perf_counter()
    m = train_causal_lm(model, examples, cfg, tok.pad_token_id, seed=a.seed,
                        on_log=lambda s, r: log(f"sft step {s}/{a.sft_steps}: loss {r['loss/train']:.3f}"))
    log(f"sft: {m['steps']} steps in {time.perf_counter() - t0:.0f} s, final loss {m['train_loss']:.3f}")
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    save_tokenizer_and_model(model, tok, out / "models" / "sft")

    rm = RewardModel.from_causal_lm_path(out / "models" / "sft", tok)
    groups = encode_groups(tok, load_jsonl(src / "preferences" / "rankings_train.jsonl"), 128)
    per_epoch = math.ceil(len(groups) / 16)
    rcfg = dataclasses.replace(TrainConfig(batch_size=16, lr=1e-4, max_length=128, log_every=10, checkpoint_every=0),
                               epochs=a.reward_steps / per_epoch)
    t0 = time.perf_counter()
    train_reward_model(rm, groups, rcfg, tok.pad_token_id, seed=a.seed,
                       on_log=lambda s, r: log(f"reward step {s}/{a.reward_steps}: accuracy {r['reward/accuracy']:.2f}"))
    log(f"reward: {a.reward_steps} steps in {time.perf_counter() - t0:.0f} s")
    save_tokenizer_and_model(rm, tok, out / "models" / "reward")

    prompts = corpus_prompts(tok, src / "data" / "corpus_train.jsonl", a.prompt_tokens, 512)
    write_jsonl(out / "data" / "prompts_ppo.jsonl", prompts)
    sampling = {"max_new_tokens": a.response_tokens, "max_prompt_tokens": a.prompt_tokens, "temperature": 1.0,
                "batch_size": 64}
    (out / "bench_args.txt").write_text(f"--ppo-set sampling={json.dumps(sampling).replace(' ', '')}\n")
    (out / "size.json").write_text(json.dumps({"size": a.size, "n_params": n_params, "sft_steps": a.sft_steps,
                                               "sft_loss": m["train_loss"], "prompts": len(prompts),
                                               "sampling": sampling}, indent=1) + "\n")
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
