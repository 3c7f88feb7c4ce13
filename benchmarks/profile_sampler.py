"""Where the sampler's time goes on one rollout: the prefill alone, whole rollouts, and torch.profiler's table of one
rollout (the figures BENCHMARKS.md quotes for the second size's generation).

    python benchmarks/profile_sampler.py --model /tmp/rb-llama/artifacts/models/sft --prompts /tmp/rb-llama/ppo_prompts.jsonl

``--prompts``: the token ids ``ours.py prepare`` wrote (``input_ids`` per line), cut to their last
``--max-prompt-tokens``; batches of ``--batch-size`` in file order, one warm-up batch first.
"""
from __future__ import annotations

import argparse
import json
import time


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-prompt-tokens", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batches", type=int, default=2, help="timed rollouts after the warm-up")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)

    import torch
    from torch.profiler import ProfilerActivity, profile

    from rlhf.chat import end_ids
    from rlhf.data import pad_left
    from rlhf.generation import sample
    from rlhf.modeling import load_causal_lm, load_tokenizer

    torch.set_num_threads(a.threads)
    tok = load_tokenizer(a.model)
    lm = load_causal_lm(a.model, tok).eval()
    rows = [json.loads(line)["input_ids"] for line in open(a.prompts)]

    def batch(i: int):
        return pad_left([r[-a.max_prompt_tokens:] for r in rows[i * a.batch_size:(i + 1) * a.batch_size]],
                        tok.pad_token_id)

    g = torch.Generator().manual_seed(0)

    def rollout(i: int):
        q, qm = batch(i)
        return sample(lm, q, qm, a.max_new_tokens, 1.0, end_ids(tok), tok.pad_token_id, g, record=True)

    with torch.no_grad():
        rollout(0)                                                          # warm-up
        for i in range(1, a.batches + 1):
            t = time.perf_counter()
            r = rollout(i)
            print(f"rollout {i}: {time.perf_counter() - t:.3f} s, {r.response_ids.shape[1]} decode steps, "
                  f"{int(r.response_mask.sum())} response tokens")
        q, qm = batch(1)
        t = time.perf_counter()
        lm(input_ids=q, attention_mask=qm, use_cache=True, logits_to_keep=1)
        print(f"prefill alone ({q.shape[0]} x {q.shape[1]} tokens): {time.perf_counter() - t:.3f} s")
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            rollout(a.batches + 1)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
