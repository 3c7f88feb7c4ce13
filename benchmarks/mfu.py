"""Model FLOPs utilisation of each PPO phase (issue 18): analytic FLOPs / measured time / this machine's measured
fp32 matmul rate at the model's shapes.

    .venv/bin/python benchmarks/mfu.py --model artifacts/models/sft --tokens 896 --threads 2 [--json out.json]

prints the matmul rate (GFLOP/s) the machine reaches on the matmuls of one forward of the model (every linear layer
of a block and the vocabulary projection, at ``--tokens`` rows: a PPO mini-batch's tokens), timed in this process
with ``--threads`` threads, best of ``--repeats``. bench.py runs it once per benchmark run, beside the comparisons,
and the report divides each phase's analytic FLOPs (``phase_flops``) by its measured seconds and by that rate.

The analytic FLOPs follow the usual convention (Kaplan et al. 2020; the PaLM paper's MFU): a forward costs
2 x parameters x tokens, a forward and backward 3x that (6 x parameters x tokens); attention's own score and value
products are left out (small next to the linear layers at these lengths), the embedding lookup is counted as the
tied vocabulary projection it is in GPT-2. Tokens are the useful ones, the same on every side: rows x (mean prompt
tokens + mean response tokens), not the padded shapes a side happens to compute, so that padding counts against
the side that pays it.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def model_shapes(model_dir: str | Path) -> dict:
    """Parameter count and the linear-layer sizes of a local causal LM folder (config.json, weights)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = AutoConfig.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    d = getattr(cfg, "hidden_size", None) or cfg.n_embd
    ff = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * d
    heads = getattr(cfg, "num_attention_heads", None) or cfg.n_head
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    gated = getattr(cfg, "model_type", "") in ("llama", "qwen2", "mistral", "qwen3")
    return {"n_params": sum(p.numel() for p in model.parameters()), "d_model": d, "d_ff": ff, "n_head": heads,
            "n_kv_head": kv, "n_layer": getattr(cfg, "num_hidden_layers", None) or cfg.n_layer,
            "vocab": cfg.vocab_size, "gated_mlp": gated, "model_type": getattr(cfg, "model_type", "")}


def forward_matmuls(s: dict) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """(in, out) of every linear layer one token goes through in one block, then the vocabulary projection."""
    d, ff = s["d_model"], s["d_ff"]
    kv = d * s["n_kv_head"] // s["n_head"]
    attn = [(d, d + 2 * kv), (d, d)]                                  # fused or separate q/k/v, then the output
    mlp = [(d, ff), (d, ff), (ff, d)] if s["gated_mlp"] else [(d, ff), (ff, d)]
    return [*attn, *mlp], (d, s["vocab"])


def matmul_rate(s: dict, tokens: int, threads: int, repeats: int = 20) -> dict:
    """GFLOP/s of the model's matmuls at ``tokens`` rows (x @ W for each linear layer of a block, the vocabulary
    projection once per n_layer blocks, weighted as one forward weighs them), best of ``repeats`` after a warm-up."""
    import torch
    torch.set_num_threads(threads)
    block, head = forward_matmuls(s)
    gen = torch.Generator().manual_seed(0)
    mats = [(torch.randn(tokens, i, generator=gen), torch.randn(i, o, generator=gen)) for i, o in block]
    hx, hw = torch.randn(tokens, head[0], generator=gen), torch.randn(*head, generator=gen)
    flops = s["n_layer"] * sum(2 * tokens * i * o for i, o in block) + 2 * tokens * head[0] * head[1]

    def one_forward() -> float:
        t0 = time.perf_counter()
        for _ in range(s["n_layer"]):
            for x, w in mats:
                torch.mm(x, w)
        torch.mm(hx, hw)
        return time.perf_counter() - t0

    for _ in range(3):
        one_forward()
    best = min(one_forward() for _ in range(repeats))
    return {"gflops": flops / best / 1e9, "tokens": tokens, "threads": threads, "flops_per_forward": flops,
            "dtype": "float32", "torch": torch.__version__}


def phase_flops(n_params: int, rows: int, prompt_tokens: float, response_tokens: float, policy_epochs: int,
                critic_epochs: int, scoring_forwards: int = 3) -> dict:
    """Analytic FLOPs of one PPO iteration's phases, ``rows`` episodes of prompt + response tokens:
    generation = one forward per token (prefill and decode), scoring = ``scoring_forwards`` forwards over the whole
    sequences (reference, critic or policy, reward: 3 on every side benchmarked), optimisation = forward + backward of
    the policy in ``policy_epochs`` epochs and of a separate critic in ``critic_epochs`` (0: no separate critic)."""
    tokens = rows * (prompt_tokens + response_tokens)
    fwd = 2 * n_params * tokens
    return {"generation": fwd, "scoring": scoring_forwards * fwd,
            "optimization": 3 * fwd * (policy_epochs + critic_epochs)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a local causal LM folder")
    ap.add_argument("--tokens", type=int, required=True, help="rows of each matmul (a mini-batch's tokens)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json", default="")
    a = ap.parse_args(argv)
    s = model_shapes(a.model)
    out = {"model": s, **matmul_rate(s, a.tokens, a.threads, a.repeats)}
    print(json.dumps(out))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
