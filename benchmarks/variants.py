"""Benchmark-only variants of the core's sampler, each switching ONE thing, to measure what it buys or would buy.
Same signature as ``rlhf.generation.sample``; used by ``ours.py ppo --variant ...`` and ``proposals.py``.

- ``sample_no_cache``: no KV cache: every new token re-runs the whole prefix.
- ``sample_fixed_length``: KV cache, but always max_new_tokens steps (no stop once every row has ended); finished
  rows get pad tokens, so the rollout is max_new_tokens wide and scoring/optimisation see that width.
- ``sample_no_extra_step``: the core's sampler without its last decode step, whose logits are never used (a proposal).
- ``sample_inverse_cdf``: the core's sampler with the draw ``torch.multinomial`` replaced by one uniform per row and
  a search in the cumulative distribution (a proposal: multinomial on CPU draws an exponential per vocabulary entry).
"""
from __future__ import annotations

import torch

from rlhf.generation import Rollout, _cache_kwarg, _cache_of
from rlhf.modeling import position_ids_from_mask


def draw_multinomial(logits, temperature, generator):
    probs = torch.softmax(logits.float() / temperature, dim=-1)                     # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)              # (B,)


def draw_inverse_cdf(logits, temperature, generator):
    probs = torch.softmax(logits.float() / temperature, dim=-1)                     # (B, V)
    u = torch.rand(probs.size(0), 1, generator=generator)                           # (B, 1)
    return torch.searchsorted(probs.cumsum(-1), u).clamp(max=probs.size(-1) - 1).squeeze(1)


def make_sampler(cache: bool = True, early_stop: bool = True, draw=draw_multinomial, extra_step: bool = True):
    """``extra_step``: like the core, run one more decode step after the last token is drawn (its logits unused)."""
    @torch.no_grad()
    def sample(model, query_ids, query_mask, max_new_tokens, temperature, eos_id, pad_id, generator=None):
        was_training = model.training
        model.eval()
        B = query_ids.size(0)
        ids, attn = query_ids, query_mask.clone()
        out = model(input_ids=ids, attention_mask=attn, position_ids=position_ids_from_mask(attn), use_cache=cache)
        cache_kw = _cache_kwarg(model)
        past, logits = (_cache_of(out) if cache else None), out.logits[:, -1]
        next_pos = attn.sum(1, keepdim=True)
        finished = torch.zeros(B, dtype=torch.bool)
        tokens, masks = [], []
        for step in range(max_new_tokens):
            tok = draw(logits, temperature, generator)
            tok = torch.where(finished, torch.full_like(tok, pad_id), tok)
            tokens.append(tok)
            masks.append((~finished).long())
            finished = finished | (tok == eos_id)
            if (early_stop and bool(finished.all())) or (step == max_new_tokens - 1 and not extra_step):
                break
            attn = torch.cat([attn, torch.ones(B, 1, dtype=attn.dtype)], 1)
            if cache:
                out = model(input_ids=tok[:, None], attention_mask=attn, position_ids=next_pos, use_cache=True,
                            **{cache_kw: past})
                past = _cache_of(out)
            else:
                ids = torch.cat([ids, tok[:, None]], 1)
                out = model(input_ids=ids, attention_mask=attn, position_ids=position_ids_from_mask(attn),
                            use_cache=False)
            logits = out.logits[:, -1]
            next_pos = next_pos + 1
        model.train(was_training)
        return Rollout(query_ids, query_mask, torch.stack(tokens, 1), torch.stack(masks, 1), finished)
    return sample


sample_core_loop = make_sampler()                      # the core's sampler, re-expressed (the A/B baseline check)
sample_no_cache = make_sampler(cache=False)
sample_fixed_length = make_sampler(early_stop=False)
sample_no_extra_step = make_sampler(extra_step=False)
sample_inverse_cdf = make_sampler(draw=draw_inverse_cdf)
