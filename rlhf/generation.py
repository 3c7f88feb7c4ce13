"""Sampling with a KV cache over left-padded prompts, and batched log-probs of sampled responses.

The temperature divides the logits both when sampling and when computing log-probs (N implementation details of
RLHF, #"temperature"): otherwise the PPO ratio compares two different distributions. Sampling is plain
multinomial over the full vocabulary (no top-k/top-p: HF's generate defaults to top_k=50, which would make the
behaviour policy differ from pi_theta).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf.data import encode_prompt, pad_left
from rlhf.modeling import position_ids_from_mask


def _cache_kwarg(model) -> str:
    """transformers >= 5.2x names the KV cache argument ``cache``; older releases ``past_key_values``."""
    import inspect
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _cache_of(out):
    return getattr(out, "cache", None) if getattr(out, "cache", None) is not None else out.past_key_values


@dataclass
class Rollout:
    """A batch of sampled responses. context_length = prompt width (left-padded)."""
    query_ids: torch.Tensor        # (B, P)
    query_mask: torch.Tensor       # (B, P)
    response_ids: torch.Tensor     # (B, R) pad after EOS
    response_mask: torch.Tensor    # (B, R) 1 on response tokens up to and including EOS
    ended: torch.Tensor            # (B,) bool: the response ended with EOS within R tokens

    @property
    def context_length(self) -> int:
        return self.query_ids.size(1)

    def full(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids (B, P+R), attention_mask (B, P+R)) of prompt + response."""
        return (torch.cat([self.query_ids, self.response_ids], 1),
                torch.cat([self.query_mask, self.response_mask.long()], 1))


def encode_prompts(tokenizer, prompts: list[str], max_prompt_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt batch (B, P)."""
    return pad_left([encode_prompt(tokenizer, p, max_prompt_tokens) for p in prompts], tokenizer.pad_token_id)


@torch.no_grad()
def sample(model, query_ids: torch.Tensor, query_mask: torch.Tensor, max_new_tokens: int, temperature: float,
           eos_id: int, pad_id: int, generator: torch.Generator | None = None) -> Rollout:
    """Sample up to ``max_new_tokens`` per prompt with a KV cache; stops early once every row has emitted EOS.
    ``model`` is a causal LM (anything returning ``.logits`` and ``.past_key_values``)."""
    was_training = model.training
    model.eval()
    B = query_ids.size(0)
    attn = query_mask.clone()
    out = model(input_ids=query_ids, attention_mask=attn, position_ids=position_ids_from_mask(attn), use_cache=True)
    cache_kw = _cache_kwarg(model)
    past, logits = _cache_of(out), out.logits[:, -1]                              # (B, V)
    next_pos = attn.sum(1, keepdim=True)                                          # (B, 1) next absolute position
    finished = torch.zeros(B, dtype=torch.bool)
    tokens, masks = [], []
    for _ in range(max_new_tokens):
        probs = torch.softmax(logits.float() / temperature, dim=-1)               # (B, V)
        tok = torch.multinomial(probs, 1, generator=generator).squeeze(1)         # (B,)
        tok = torch.where(finished, torch.full_like(tok, pad_id), tok)
        tokens.append(tok)
        masks.append((~finished).long())
        finished = finished | (tok == eos_id)
        if bool(finished.all()):
            break
        attn = torch.cat([attn, torch.ones(B, 1, dtype=attn.dtype)], 1)
        out = model(input_ids=tok[:, None], attention_mask=attn, position_ids=next_pos,
                    use_cache=True, **{cache_kw: past})
        past, logits = _cache_of(out), out.logits[:, -1]
        next_pos = next_pos + 1
    model.train(was_training)
    response_ids = torch.stack(tokens, 1)                                         # (B, R')
    response_mask = torch.stack(masks, 1)                                         # (B, R')
    return Rollout(query_ids, query_mask, response_ids, response_mask, finished)


def response_logits(logits: torch.Tensor, context_length: int, temperature: float) -> torch.Tensor:
    """Logits (B, P+R, V) of the full sequence -> the (B, R, V) logits that predict the response tokens."""
    return logits[:, context_length - 1:-1] / temperature


def gather_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, R, V), (B, R) -> (B, R) log-softmax at the label (logsumexp form: no (B, R, V) log-prob tensor kept)."""
    picked = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def logprobs_of(model, rollout: Rollout, temperature: float) -> torch.Tensor:
    """Log-probs (B, R) of the rollout's response tokens under a causal LM, in one batched forward."""
    ids, attn = rollout.full()
    logits = model(input_ids=ids, attention_mask=attn, position_ids=position_ids_from_mask(attn)).logits
    return gather_logprobs(response_logits(logits, rollout.context_length, temperature), rollout.response_ids)


def decode_responses(tokenizer, rollout: Rollout) -> list[str]:
    """Response texts without EOS/pad, stripped of the leading space."""
    texts = []
    for ids, m in zip(rollout.response_ids.tolist(), rollout.response_mask.tolist()):
        keep = [t for t, k in zip(ids, m) if k and t not in (tokenizer.eos_token_id, tokenizer.pad_token_id)]
        texts.append(tokenizer.decode(keep).strip())
    return texts


def sample_responses(model, tokenizer, prompts: list[str], max_new_tokens: int, temperature: float, batch_size: int,
                     seed: int, max_prompt_tokens: int = 32, on_progress=None) -> tuple[list[str], list[bool]]:
    """Sample one response per prompt (repeat prompts for several); returns texts and ended flags."""
    gen = torch.Generator().manual_seed(seed)
    texts: list[str] = []
    ended: list[bool] = []
    for i in range(0, len(prompts), batch_size):
        q, qm = encode_prompts(tokenizer, prompts[i:i + batch_size], max_prompt_tokens)
        r = sample(model, q, qm, max_new_tokens, temperature, tokenizer.eos_token_id, tokenizer.pad_token_id, gen)
        texts.extend(decode_responses(tokenizer, r))
        ended.extend(r.ended.tolist())
        if on_progress:
            on_progress(min(i + batch_size, len(prompts)), len(prompts))
    return texts, ended
