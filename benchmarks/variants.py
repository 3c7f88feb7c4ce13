"""Benchmark-only variants of the core's sampler (``rlhf.generation.sample``), each switching exactly ONE of its
optimisations off, to measure what that optimisation buys. Same signature as the core's ``sample``; used by
``ours.py ppo --variant ...`` and ``ablations.py``.

- ``sample_core``: nothing switched off: the core's sampler re-expressed (``self_test`` checks that it reproduces
  ``rlhf.generation.sample`` token for token for the same seed, since the core is the baseline of every variant).
- ``sample_no_cache``: no KV cache: every decode step re-runs the whole prefix (the same forward as the core's
  prefill, logits over every position).
- ``sample_fixed_length``: always max_new_tokens decode steps (no stop once every row has ended); finished rows get
  pad tokens, so the rollout is max_new_tokens wide and scoring/optimisation see that width.
- ``sample_extra_step``: one more decode step after the last token is drawn (its logits unused), as the core did
  before it stopped right after the last token.
- ``sample_multinomial``: the draw is ``torch.multinomial`` (one exponential per vocabulary entry on CPU) instead of
  the core's inverse-CDF ``rlhf.generation.draw`` (one uniform per row), with the same generator.
- ``sample_keep_ended``: every row stays in the decode batch to the last step (no drop of ended rows).
- ``sample_concat_cache``: the KV cache grows by concatenation (transformers' DynamicLayer) instead of being
  written in place (``rlhf.kv_cache.reserve``).

Everything else (softmax of the tempered logits in fp32, the inverse-CDF draw, pads after EOS, device handling) is
the core's.

    python benchmarks/variants.py --self-test [--artifacts A]     # core-equivalence check (a random tiny GPT-2
                                                                  # when no artifacts are given)
"""
from __future__ import annotations

import torch

import rlhf.generation as G
from rlhf import kv_cache
from rlhf.generation import Rollout, _cache_kwarg, _cache_of
from rlhf.logprobs import entropy_from_logits
from rlhf.modeling import position_ids_from_mask


def draw_multinomial(probs: torch.Tensor, generator: torch.Generator | None = None,
                     u: torch.Tensor | None = None) -> torch.Tensor:
    """``torch.multinomial`` on ``probs`` (B, V) -> (B,): the draw the core used before its inverse-CDF ``draw``
    (``u``, the core's uniforms, unused)."""
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def core_draw(probs: torch.Tensor, generator: torch.Generator | None = None,
              u: torch.Tensor | None = None) -> torch.Tensor:
    """The core's draw, looked up at call time (so that a patch of ``rlhf.generation.draw`` applies here too)."""
    return G.draw(probs, generator, u)


def make_sampler(cache: bool = True, early_stop: bool = True, draw=core_draw, extra_step: bool = False,
                 drop: bool = True, reserve: bool = True):
    """The core's sampler with the given switches; the defaults are the core's (``sample_core``).

    ``cache``: KV cache (else every step re-runs the prefix); ``early_stop``: stop once every row has ended;
    ``draw(probs, generator, u)``: the token draw; ``extra_step``: one more decode step after the last token;
    ``drop``: ended rows leave the decode batch (``rlhf.generation.DROP_FINISHED_AT``); ``reserve``: the KV cache
    written in place (``rlhf.kv_cache.reserve``) instead of growing by concatenation.
    ``record`` / ``hidden`` as the core's (behaviour log-probs, entropies, hidden states kept while sampling)."""
    @torch.no_grad()
    def sample(model, query_ids, query_mask, max_new_tokens, temperature, eos_id, pad_id, generator=None,
               record=False, hidden=False):
        was_training = model.training
        model.eval()
        B, dev = query_ids.size(0), query_ids.device
        ids, attn = query_ids, query_mask.clone()
        hs = {"output_hidden_states": True} if hidden else {}
        last = {"logits_to_keep": 1} if G.supports_logits_to_keep(model) else {}
        out = model(input_ids=ids, attention_mask=attn, position_ids=position_ids_from_mask(attn), use_cache=cache,
                    **hs, **last)
        cache_kw = _cache_kwarg(model)
        past, logits = (_cache_of(out) if cache else None), out.logits[:, -1]         # (b, V)
        if cache and reserve:
            kv_cache.reserve(past, max_new_tokens - 1)
        droppable = drop and (kv_cache.droppable(past) if cache else True)
        next_pos = attn.sum(1, keepdim=True)                                          # (b, 1)
        finished = torch.zeros(B, dtype=torch.bool, device=dev)
        stop = torch.tensor([eos_id] if isinstance(eos_id, int) else list(eos_id), dtype=torch.long, device=dev)
        seg = G._Segment(torch.arange(B, device=dev), [], [], [])
        segments, tokens, masks = [seg], [], []
        for step in range(max_new_tokens):
            scaled = logits.float() / temperature                                     # (b, V)
            probs = torch.softmax(scaled, dim=-1)
            u = torch.rand(B, 1, generator=generator)
            drawn = draw(probs, generator, u[seg.rows.cpu()] if len(seg.rows) < B else u)
            tok = torch.full((B,), pad_id, dtype=drawn.dtype, device=dev)
            tok[seg.rows] = torch.where(finished[seg.rows], torch.full_like(drawn, pad_id), drawn)
            tokens.append(tok)
            masks.append((~finished).long())
            seg.steps.append(step)
            if record:
                seg.logits.append(scaled)
            if hidden:
                seg.states.append(out.hidden_states[-1][:, -1])
            finished = finished | torch.isin(tok, stop)
            last_step = step == max_new_tokens - 1
            if (early_stop and bool(finished.all())) or (last_step and not extra_step):
                break
            live = ~finished[seg.rows]
            n_live = int(live.sum())
            if droppable and 0 < n_live < len(seg.rows) and n_live <= (1 - G.DROP_FINISHED_AT) * len(seg.rows):
                kept = live.nonzero().squeeze(1)
                if cache:
                    kv_cache.drop_rows(past, kept)
                else:
                    ids = ids[kept]
                attn, next_pos = attn[kept], next_pos[kept]
                seg = G._Segment(seg.rows[kept], [], [], [])
                segments.append(seg)
            attn = torch.cat([attn, torch.ones(len(seg.rows), 1, dtype=attn.dtype, device=dev)], 1)
            if cache:
                out = model(input_ids=tok[seg.rows, None], attention_mask=attn, position_ids=next_pos,
                            use_cache=True, **{cache_kw: past}, **hs)
                past = _cache_of(out)
            else:
                ids = torch.cat([ids, tok[seg.rows, None]], 1)
                out = model(input_ids=ids, attention_mask=attn, position_ids=position_ids_from_mask(attn),
                            use_cache=False, **hs)
            logits = out.logits[:, -1]
            next_pos = next_pos + 1
        model.train(was_training)
        response_ids, response_mask = torch.stack(tokens, 1), torch.stack(masks, 1)
        logprobs, entropy, states = G._recorded(segments, response_ids, response_mask, record, hidden)
        return Rollout(query_ids, query_mask, response_ids, response_mask, finished, logprobs=logprobs,
                       entropy=entropy, hidden=states)
    return sample


sample_core = make_sampler()                                   # nothing off: must equal rlhf.generation.sample
sample_no_cache = make_sampler(cache=False)
sample_fixed_length = make_sampler(early_stop=False)
sample_extra_step = make_sampler(extra_step=True)
sample_multinomial = make_sampler(draw=draw_multinomial)
sample_keep_ended = make_sampler(drop=False)
sample_concat_cache = make_sampler(reserve=False)

SAMPLERS = {"no-kv-cache": sample_no_cache, "fixed-length": sample_fixed_length,
            "extra-decode-step": sample_extra_step, "multinomial-draw": sample_multinomial,
            "keep-ended-rows": sample_keep_ended, "concat-kv-cache": sample_concat_cache}


def full_width_micro_batch(exp, idx):
    """``rlhf.rollout.micro_batch`` without the trim: rows ``idx`` at the rollout's full width."""
    from rlhf.rollout import MicroBatch
    ids, attn = exp.rollout.full()
    return MicroBatch(ids[idx], attn[idx], exp.rollout.context_length, exp.rollout.response_ids[idx], exp.mask[idx],
                      exp.logprobs[idx], exp.advantages[idx], exp.values[idx], exp.returns[idx])


def _tiny_lm():
    """A random 2-layer GPT-2 with a vocabulary of 8 (so that rows end early and the early stop is exercised), for a
    self-test without artifacts."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from rlhf.modeling import FUSED_GELU
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=8, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                      activation_function=FUSED_GELU, bos_token_id=0, eos_token_id=0,
                                      pad_token_id=1)).eval()


def self_test(model=None, query_ids=None, query_mask=None, max_new_tokens: int = 32, temperature: float = 1.0,
              eos_id: int = 0, pad_id: int = 1, seeds=(0, 1, 2)) -> dict:
    """Assert, for the same seeds, that ``sample_core`` reproduces the core's ``sample``: the tokens one for one, the
    mask, ``ended``, the number of forwards and of tokens fed to them; that extra-decode-step runs exactly one more
    forward when the loop reaches max_new_tokens with a row still open; and that the variants that must not change
    the tokens (no-kv-cache, extra-decode-step) do not (fixed-length only appends pads after every row has ended).
    Returns a summary."""
    if model is None:
        model = _tiny_lm()
        g = torch.Generator().manual_seed(123)
        query_ids = torch.randint(2, 8, (8, 6), generator=g)
        query_mask = torch.ones_like(query_ids)
        query_mask[:3, :2] = 0                                                        # some left padding
        query_ids = query_ids.masked_fill(query_mask == 0, pad_id)
    widths, calls = [], [0, 0]                     # forwards, input tokens fed to them

    def count(module, args, kwargs):
        calls[0] += 1
        calls[1] += kwargs["input_ids"].numel()
    hook = model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        for seed in seeds:
            widths.append(_check_seed(model, query_ids, query_mask, max_new_tokens, temperature, eos_id, pad_id,
                                      seed, calls))
    finally:
        hook.remove()
    return {"self_test": "ok", "seeds": list(seeds), "decode_steps": widths}


def _check_seed(model, query_ids, query_mask, max_new_tokens, temperature, eos_id, pad_id, seed, calls) -> int:
    def run(fn, **kw):
        calls[:] = [0, 0]
        r = fn(model, query_ids, query_mask, max_new_tokens, temperature, eos_id, pad_id,
               torch.Generator().manual_seed(seed), **kw)
        return r, tuple(calls)
    (ref, n_ref), (got, n_got) = run(G.sample), run(sample_core)
    assert torch.equal(ref.response_ids, got.response_ids), f"seed {seed}: sample_core differs from the core"
    assert torch.equal(ref.response_mask, got.response_mask) and torch.equal(ref.ended, got.ended)
    (ref_rec, _), (got_rec, _) = run(G.sample, record=True, hidden=True), run(sample_core, record=True, hidden=True)
    for field in ("response_ids", "logprobs", "entropy", "hidden"):      # what PPO reads from a recording rollout
        assert torch.equal(getattr(ref_rec, field), getattr(got_rec, field)), f"seed {seed}: recorded {field} differ"
    assert n_got == n_ref, f"seed {seed}: sample_core ran (forwards, tokens) {n_got}, the core {n_ref}"
    w = ref.response_ids.size(1)
    # The extra step happens when the loop reaches max_new_tokens with a row still open.
    _, n_extra = run(sample_extra_step)
    assert n_extra[0] == n_ref[0] + int(w == max_new_tokens and not bool(ref.ended.all())), \
        f"seed {seed}: extra-decode-step ran {n_extra} forwards, the core {n_ref}"
    for name in ("no-kv-cache", "extra-decode-step", "fixed-length", "keep-ended-rows", "concat-kv-cache"):
        v, _ = run(SAMPLERS[name])
        assert torch.equal(v.response_ids[:, :w], ref.response_ids), f"seed {seed}: {name} changed the tokens"
        assert name == "fixed-length" or v.response_ids.size(1) == w, f"seed {seed}: {name} changed the width"
        assert bool((v.response_ids[:, w:] == pad_id).all()), f"seed {seed}: {name} drew after every row ended"
    return w


def main(argv=None) -> None:
    import argparse
    import json
    from pathlib import Path

    ap = argparse.ArgumentParser(description="variants.py self-test: sample_core == rlhf.generation.sample")
    ap.add_argument("--self-test", action="store_true", required=True)
    ap.add_argument("--artifacts", help="test on artifacts/models/sft and the PPO prompts (default: a tiny random GPT-2)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if not a.artifacts:
        print(json.dumps(self_test()))
        return
    from rlhf.data import load_jsonl
    from rlhf.generation import encode_prompts
    from rlhf.modeling import load_causal_lm, load_tokenizer
    from rlhf.config import SamplingConfig
    MAX_PROMPT_TOKENS = SamplingConfig().max_prompt_tokens
    art = Path(a.artifacts)
    tok = load_tokenizer(art / "models" / "sft")
    lm = load_causal_lm(art / "models" / "sft", tok).eval()
    prompts = [r["prompt"] for r in load_jsonl(art / "data" / "prompts_ppo.jsonl")][:16]
    q, qm = encode_prompts(tok, prompts, MAX_PROMPT_TOKENS)
    print(json.dumps(self_test(lm, q, qm, 24, 1.0, tok.eos_token_id, tok.pad_token_id)))


if __name__ == "__main__":
    main()
