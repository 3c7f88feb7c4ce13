"""The sampler alone, side by side: ours (``rlhf.generation.sample``, as PPO calls it) against transformers'
``generate`` called exactly as TRL 1.12's PPO trainer calls it (``trl/experimental/ppo/ppo_trainer.py``
``generate``: do_sample, temperature + 1e-7, top_k 0, top_p 1, ``return_dict_in_generate`` and ``output_scores``),
on the same model, the same prompt batches and the same threads, in one process, alternating A B / B A per batch.

    python benchmarks/generation.py --model M --prompts P.jsonl [--batch 64] [--max-new-tokens 64] [--batches 6]
                                    [--threads 2] [--out R.json]

``P.jsonl``: rows with ``input_ids`` (bench.py's ``ppo_prompts.jsonl``), left-padded into batches of ``--batch``.
Both sides draw from their own random streams, so their responses differ; the figures are per response token:
tokens/s = response tokens (up to and including the end id) / seconds of the call. The prefill (one forward over the
prompts) is the same arithmetic on both sides; what differs is the decode steps: ours drops ended rows and writes the
KV cache in place (rlhf/kv_cache.py), ``generate`` runs every row to the longest response and concatenates. Run it
on a model whose responses end early (an SFT policy) and on one whose responses run long (its base model) to see both.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def batches(path: Path, size: int, n: int, pad_id: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from rlhf.data import pad_left
    rows = [json.loads(line)["input_ids"] for line in path.read_text().splitlines() if line.strip()]
    if len(rows) < size * n:
        raise SystemExit(f"{path}: {len(rows)} prompts, fewer than --batch x --batches = {size * n}")
    return [pad_left(rows[i * size:(i + 1) * size], pad_id) for i in range(n)]


def ours(model, q, qm, max_new, eos, pad, seed):
    from rlhf.generation import sample
    r = sample(model, q, qm, max_new, 1.0, eos, pad, torch.Generator().manual_seed(seed), record=True)
    return int(r.response_mask.sum()), r.response_ids.size(1)


def trl_generate(model, q, qm, max_new, eos, pad, seed):
    """TRL 1.12 PPO's ``generate``: the pads of the query set to 0 under the attention mask, then ``generate``."""
    from transformers import GenerationConfig
    torch.manual_seed(seed)
    cfg = GenerationConfig(max_new_tokens=max_new, temperature=1.0 + 1e-7, top_k=0.0, top_p=1.0, do_sample=True,
                           eos_token_id=eos, pad_token_id=pad)
    out = model.generate(input_ids=torch.masked_fill(q, ~qm.bool(), 0), attention_mask=qm, generation_config=cfg,
                         return_dict_in_generate=True, output_scores=True)
    torch.stack(out.scores, 1)                                    # as TRL: the logits of every step, stacked
    resp = out.sequences[:, q.size(1):]                           # (B, R) pads after the end id
    ended = (resp == eos).long().cumsum(1)
    counted = (ended == 0) | ((ended == 1) & (resp == eos))       # up to and including the first end id
    return int(counted.sum()), resp.size(1)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, action="append", help="a causal LM folder (repeatable)")
    ap.add_argument("--prompts", required=True, type=Path)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from rlhf.modeling import load_causal_lm, load_tokenizer
    report = {"threads": a.threads, "batch": a.batch, "max_new_tokens": a.max_new_tokens, "models": {}}
    for path in a.model:
        tok = load_tokenizer(path)
        model = load_causal_lm(path, tok).eval()
        eos, pad = tok.eos_token_id, tok.pad_token_id
        sides = {"ours": ours, "trl_generate": trl_generate}
        runs = {name: [] for name in sides}
        data = batches(a.prompts, a.batch, a.batches + 1, pad)
        for i, (q, qm) in enumerate(data):
            order = list(sides) if i % 2 else list(sides)[::-1]
            for name in order:
                t0 = time.perf_counter()
                tokens, steps = sides[name](model, q, qm, a.max_new_tokens, eos, pad, seed=i)
                if i:                                            # batch 0: untimed warm-up of both
                    runs[name].append({"s": time.perf_counter() - t0, "tokens": tokens, "steps": steps})
        summary = {}
        for name, rs in runs.items():
            summary[name] = {"s_per_batch": statistics.median(r["s"] for r in rs),
                             "tokens_per_s": sum(r["tokens"] for r in rs) / sum(r["s"] for r in rs),
                             "mean_response_tokens": sum(r["tokens"] for r in rs) / (len(rs) * a.batch),
                             "decode_steps": statistics.mean(r["steps"] for r in rs), "runs": rs}
        summary["tokens_per_s_ratio"] = summary["ours"]["tokens_per_s"] / summary["trl_generate"]["tokens_per_s"]
        report["models"][str(path)] = summary
        print(f"{path}: ours {summary['ours']['tokens_per_s']:.0f} tokens/s "
              f"({summary['ours']['mean_response_tokens']:.1f} per response, {summary['ours']['decode_steps']:.1f} "
              f"steps), TRL's generate {summary['trl_generate']['tokens_per_s']:.0f} tokens/s "
              f"({summary['trl_generate']['mean_response_tokens']:.1f}, {summary['trl_generate']['decode_steps']:.1f}"
              f" steps): {summary['tokens_per_s_ratio']:.2f}x", flush=True)
    if a.out:
        a.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
