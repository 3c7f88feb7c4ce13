"""Sampling with a KV cache over left-padded prompts, and batched log-probs of sampled responses.

The temperature divides the logits both when sampling and when computing log-probs (N implementation details of
RLHF, #"temperature"): otherwise the PPO ratio compares two different distributions. Sampling is plain
draw over the full vocabulary (no top-k/top-p: HF's generate defaults to top_k=50, which would make the
behaviour policy differ from pi_theta).

The draw is by inverse CDF: one uniform per row from a CPU generator, located in the row's cumulative probabilities
(``searchsorted``). Same distribution as ``torch.multinomial``, but one random number per row instead of one
exponential per vocabulary entry (18% of generation time in the profile, BENCHMARKS.md), and the random stream does
not depend on the device the model runs on.

Finished rows leave the batch: once a quarter of the rows still being run have ended, they are dropped from the decode
batch and from the KV cache (rlhf/kv_cache.py, which also writes the cache in place instead of growing it by
concatenation), so late decode steps run only the prompts still sampling. RLHF responses end at very different lengths
(the 26.7M-parameter Llama's 64-prompt rollouts in BENCHMARKS.md: 64 rows at the first decode step, under 20 ten steps
later, of about 30), so most rows of the full-batch steps that TRL's ``generate`` runs are padding. The uniforms are
still drawn one per prompt per step: the tokens do not depend on which rows were dropped.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from rlhf import kv_cache
from rlhf.accel import hf_model, model_device, to_device
from rlhf.chat import end_ids
from rlhf.finite import NonFiniteError
from rlhf.data import encode_prompt, pad_left
from rlhf.logprobs import entropy_from_logits
from rlhf.modeling import position_ids_from_mask


def _cache_kwarg(model) -> str:
    """transformers >= 5.2x names the KV cache argument ``cache``; older releases ``past_key_values``. A peft
    wrapper forwards **kwargs, so the base model's signature decides."""
    return "cache" if "cache" in _forward_params(type(hf_model(model))) else "past_key_values"


@functools.lru_cache(maxsize=None)
def _forward_params(cls: type) -> frozenset:
    import inspect
    return frozenset(inspect.signature(cls.forward).parameters)


def supports_logits_to_keep(model) -> bool:
    """Whether the (base) model's forward can project only the last N positions onto the vocabulary."""
    return "logits_to_keep" in _forward_params(type(hf_model(model)))


def lm_response_logits(model, ids: torch.Tensor, attn: torch.Tensor, context_length: int,
                       temperature: float) -> torch.Tensor:
    """(B, R, V) logits that predict the response tokens of ``ids`` (B, P+R), tempered. Only the R positions are
    projected onto the vocabulary when the model supports ``logits_to_keep`` (the vocabulary projection of the
    prompt positions would be thrown away: 4-8% of a PPO iteration, BENCHMARKS.md)."""
    n = ids.size(1) - context_length + 1
    kw = {"logits_to_keep": n} if supports_logits_to_keep(model) else {}
    logits = model(input_ids=ids, attention_mask=attn, position_ids=position_ids_from_mask(attn), **kw).logits
    return response_logits(logits, n - 1, temperature)


# Finished rows are dropped from the decode batch once they are at least this fraction of it. A drop copies the
# filled cache once: dropping at every ended row (a fraction of 0) copied it at almost every step and was no faster
# (4 rollouts of the 26.7M Llama of BENCHMARKS.md: 9.1-9.5 s against 9.0-9.2 s at 0.25; never dropping 12.5 s).
# Above 1: never drop (what benchmarks/ablations.py's keep-ended-rows variant measures against).
DROP_FINISHED_AT = 0.25


def draw(probs: torch.Tensor, generator: torch.Generator | None = None,
         u: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row of ``probs`` (B, V) by inverse CDF; the uniforms ``u`` (B, 1) are drawn from
    ``generator`` on the CPU unless given."""
    if u is None:
        u = torch.rand(probs.size(0), 1, generator=generator)                                # (B, 1)
    u = u.to(probs.device, probs.dtype)
    cdf = probs.cumsum(-1)                                                                 # (B, V)
    # Scale by the row's total so rounding in the cumsum can never push u past the last entry; right=True skips
    # zero-probability tokens (their cdf equals their left neighbour's).
    # A NaN or inf anywhere in a row makes its total (the cdf's last entry) non-finite: checking the (B,) totals
    # catches it without another pass over (B, V); searchsorted would silently pick the last token.
    if not bool(torch.isfinite(cdf[:, -1]).all()):
        raise NonFiniteError("the next-token probabilities are not finite (NaN or inf logits)")
    idx = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)                             # (B, 1)
    return idx.clamp(max=probs.size(-1) - 1).squeeze(1)


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
    # Recorded while sampling (``sample(record=True)``), from the same logits the tokens were drawn from:
    logprobs: Optional[torch.Tensor] = None     # (B, R) log-prob of each drawn token (tempered)
    entropy: Optional[torch.Tensor] = None      # (B, R) entropy of each step's tempered distribution
    hidden: Optional[torch.Tensor] = None       # (B, R, H) last hidden state that predicted each token (hidden=True)

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


@dataclass
class _Segment:
    """Decode steps run on the same batch rows: ``rows`` (b,) the prompts, ``steps`` their step indices, and what
    was recorded at each step for those rows (tempered logits (b, V), hidden states (b, H))."""
    rows: torch.Tensor
    steps: list
    logits: list
    states: list


@torch.no_grad()
def sample(model, query_ids: torch.Tensor, query_mask: torch.Tensor, max_new_tokens: int, temperature: float,
           eos_id: int | Sequence[int], pad_id: int, generator: torch.Generator | None = None, record: bool = False,
           hidden: bool = False) -> Rollout:
    """Sample up to ``max_new_tokens`` per prompt with a KV cache; a row ends at the first of ``eos_id`` (one id or
    several: a chat model's EOS and end-of-turn, rlhf/chat.py ``end_ids``); stops early once every row has ended.
    ``model`` is a causal LM (anything returning ``.logits`` and ``.past_key_values``). Ended rows leave the decode
    batch (module docstring).

    ``record``: also keep each drawn token's log-prob and each step's entropy (from the logits the draw used: PPO's
    behaviour log-probs without a second forward, as TRL's PPO takes them from ``generate``'s scores); ``hidden``:
    also keep the last hidden state that predicted each token (a value head on the policy's trunk reads it). Both
    are 0 after a row's end (every consumer masks those positions)."""
    was_training = model.training
    model.eval()
    B, dev = query_ids.size(0), query_ids.device
    attn = query_mask.clone()
    hs = {"output_hidden_states": True} if hidden else {}
    last = {"logits_to_keep": 1} if supports_logits_to_keep(model) else {}    # only the last position is drawn from
    out = model(input_ids=query_ids, attention_mask=attn, position_ids=position_ids_from_mask(attn), use_cache=True,
                **hs, **last)
    cache_kw = _cache_kwarg(model)
    past, logits = _cache_of(out), out.logits[:, -1]                              # (b, V): b rows still run
    kv_cache.reserve(past, max_new_tokens - 1)
    droppable = kv_cache.droppable(past)
    next_pos = attn.sum(1, keepdim=True)                                          # (b, 1) next absolute position
    finished = torch.zeros(B, dtype=torch.bool, device=dev)                       # (B,) over every prompt
    stop = torch.tensor([eos_id] if isinstance(eos_id, int) else list(eos_id), dtype=torch.long, device=dev)  # (E,)
    seg = _Segment(torch.arange(B, device=dev), [], [], [])
    segments, tokens, masks = [seg], [], []
    for step in range(max_new_tokens):
        scaled = logits.float() / temperature                                     # (b, V)
        probs = torch.softmax(scaled, dim=-1)                                     # (b, V)
        u = torch.rand(B, 1, generator=generator)                                 # (B, 1) one per prompt, always
        drawn = draw(probs, generator, u[seg.rows.cpu()] if len(seg.rows) < B else u)  # (b,)
        tok = torch.full((B,), pad_id, dtype=drawn.dtype, device=dev)
        tok[seg.rows] = torch.where(finished[seg.rows], torch.full_like(drawn, pad_id), drawn)
        tokens.append(tok)
        masks.append((~finished).long())
        seg.steps.append(step)
        if record:
            seg.logits.append(scaled)                                             # log-probs after the loop
        if hidden:
            seg.states.append(out.hidden_states[-1][:, -1])                       # (b, H)
        finished = finished | torch.isin(tok, stop)
        if step == max_new_tokens - 1 or bool(finished.all()):   # no forward whose logits would be dropped
            break
        live = ~finished[seg.rows]                                                # (b,)
        n_live = int(live.sum())
        if droppable and n_live < len(seg.rows) and n_live <= (1 - DROP_FINISHED_AT) * len(seg.rows):
            kept = live.nonzero().squeeze(1)                                      # (b',) positions in the batch
            kv_cache.drop_rows(past, kept)
            attn, next_pos = attn[kept], next_pos[kept]
            seg = _Segment(seg.rows[kept], [], [], [])
            segments.append(seg)
        attn = torch.cat([attn, torch.ones(len(seg.rows), 1, dtype=attn.dtype, device=dev)], 1)
        out = model(input_ids=tok[seg.rows, None], attention_mask=attn, position_ids=next_pos,
                    use_cache=True, **{cache_kw: past}, **hs)
        past, logits = _cache_of(out), out.logits[:, -1]
        next_pos = next_pos + 1
    model.train(was_training)
    response_ids = torch.stack(tokens, 1)                                         # (B, R')
    response_mask = torch.stack(masks, 1)                                         # (B, R')
    logprobs, entropy, states = _recorded(segments, response_ids, response_mask, record, hidden)
    return Rollout(query_ids, query_mask, response_ids, response_mask, finished, logprobs=logprobs, entropy=entropy,
                   hidden=states)


def _recorded(segments: list[_Segment], response_ids: torch.Tensor, response_mask: torch.Tensor, record: bool,
              hidden: bool):
    """(log-probs (B, R'), entropies (B, R'), hidden states (B, R', H)) over every prompt from the segments'
    records (None where not recorded), 0 after each row's end. Once per segment over (b, s, V): a few ops instead
    of a few per decode step."""
    logprobs = entropy = states = None
    ended = ~response_mask.bool()                                                 # (B, R')
    index = [(g.rows[:, None], torch.tensor(g.steps, device=g.rows.device)[None, :]) for g in segments]
    if record:
        logprobs = response_ids.new_zeros(response_ids.shape, dtype=torch.float32)  # (B, R')
        entropy = torch.zeros_like(logprobs)
        for g, (rows, steps) in zip(segments, index):
            scaled = torch.stack(g.logits, 1)                                     # (b, s, V)
            logprobs[rows, steps] = gather_logprobs(scaled, response_ids[rows, steps])
            entropy[rows, steps] = entropy_from_logits(scaled)
        logprobs, entropy = logprobs.masked_fill(ended, 0), entropy.masked_fill(ended, 0)
    if hidden:
        first = segments[0].states[0]
        states = first.new_zeros(*response_ids.shape, first.size(-1))               # (B, R', H)
        for g, (rows, steps) in zip(segments, index):
            states[rows, steps] = torch.stack(g.states, 1)
        states = states.masked_fill(ended[..., None], 0)
    return logprobs, entropy, states


def response_logits(logits: torch.Tensor, response_length: int, temperature: float) -> torch.Tensor:
    """Logits of a prompt + response sequence -> the (B, R, V) logits that predict the R response tokens, tempered.
    Counted from the end, so it holds for the full (B, P+R, V) logits and for the last R+1 positions alone
    (``logits_to_keep``)."""
    return logits[:, -(response_length + 1):-1] / temperature


def gather_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, R, V), (B, R) -> (B, R) log-softmax at the label (logsumexp form: no (B, R, V) log-prob tensor kept)."""
    picked = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def logprobs_of(model, rollout: Rollout, temperature: float) -> torch.Tensor:
    """Log-probs (B, R) of the rollout's response tokens under a causal LM, in one batched forward."""
    ids, attn = rollout.full()
    return gather_logprobs(lm_response_logits(model, ids, attn, rollout.context_length, temperature),
                           rollout.response_ids)


def decode_responses(tokenizer, rollout: Rollout, skip_special_tokens: bool = False) -> list[str]:
    """Response texts without their end id and padding, stripped of the leading space (``skip_special_tokens``:
    also without any other special token, for a reward model with a tokenizer of its own)."""
    texts = []
    drop = {*end_ids(tokenizer), tokenizer.pad_token_id}
    for ids, m in zip(rollout.response_ids.tolist(), rollout.response_mask.tolist()):
        keep = [t for t, k in zip(ids, m) if k and t not in drop]
        texts.append(tokenizer.decode(keep, skip_special_tokens=skip_special_tokens).strip())
    return texts


def sample_responses(model, tokenizer, prompts: list[str], max_new_tokens: int, temperature: float, batch_size: int,
                     seed: int, max_prompt_tokens: int, on_progress=None) -> tuple[list[str], list[bool]]:
    """Sample one response per prompt (repeat prompts for several); returns texts and ended flags."""
    gen = torch.Generator().manual_seed(seed)
    texts: list[str] = []
    ended: list[bool] = []
    for i in range(0, len(prompts), batch_size):
        q, qm = to_device(model_device(model), *encode_prompts(tokenizer, prompts[i:i + batch_size], max_prompt_tokens))
        r = sample(model, q, qm, max_new_tokens, temperature, end_ids(tokenizer), tokenizer.pad_token_id, gen)
        texts.extend(decode_responses(tokenizer, r))
        ended.extend(r.ended.tolist())
        if on_progress:
            on_progress(min(i + batch_size, len(prompts)), len(prompts))
    return texts, ended
