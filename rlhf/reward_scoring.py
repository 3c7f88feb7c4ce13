"""How the policy's samples reach the reward model: one decision, two paths (DESIGN.md, "Conversations through the
pipeline": a model with another tokenizer gets text).

* ids (fast): the reward model's tokenizer is the policy's (same vocabulary, special tokens, chat template and
  probe ids; rlhf/reward_format.py ``same_tokenizer``). It scores the policy's own token ids, prompt + response
  exactly as sampled (end id included), left-padded again.
* text: otherwise. Each response is decoded with the policy's tokenizer (special tokens skipped), the prompt (text
  or messages) and the response are rendered with the reward model's own chat template through rlhf/chat.py
  (``encode_prompt`` + ``encode_response``: the generation prompt, the response, its end-of-turn id when it
  ended), encoded with its tokenizer and scored (``score_texts``). As TRL's PPO/RLOO with a reward model of another
  tokenizer (decode, ``apply_chat_template``, re-tokenize).

``RewardScorer`` is used by PPO's ``make_experience`` (``score_rollout``), ``evaluate`` and the registry's reward
model (``score_texts``: prompt/response texts always take the text path, through the reward model's tokenizer).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
from torch import nn

from rlhf.data import pad_left
from rlhf.generation import decode_responses
from rlhf.limits import positions
from rlhf.reward_format import same_tokenizer
from rlhf.train_reward import score_texts


def repack_for_reward(rollout, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt + response real tokens, left-padded again so the last real token (EOS when it ended) is last."""
    ids, attn = rollout.full()
    seqs = [row[m.bool()].tolist() for row, m in zip(ids, attn)]
    r_ids, r_attn = pad_left(seqs, pad_id)
    return r_ids.to(ids.device), r_attn.to(ids.device)


class RewardScorer(nn.Module):
    """A reward model, its own tokenizer (``tok``) and the policy's tokenizer; ``fast`` says whether the policy's
    ids are scored directly. ``calls`` counts the batches each path scored ("ids", "text")."""

    def __init__(self, model: nn.Module, tok, policy_tok=None, max_length: int | None = None):
        super().__init__()
        self.model, self.tok, self.policy_tok = model, tok, policy_tok
        self.fast = policy_tok is not None and same_tokenizer(tok, policy_tok)
        self.max_length = max_length or positions(getattr(getattr(model, "trunk", model), "config", None)) or 1024
        self.calls: Counter = Counter()

    @property
    def path(self) -> str:
        return "ids" if self.fast else "text"

    @classmethod
    def load(cls, path: str | Path, policy_tok=None, trust_remote_code: bool = False) -> "RewardScorer":
        """Any one-label sequence-classification reward model folder (``RewardModel.from_pretrained``), eval mode."""
        from rlhf.modeling import RewardModel
        model = RewardModel.from_pretrained(path, trust_remote_code=trust_remote_code).eval()
        return cls(model, model.tokenizer, policy_tok)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Normalised scores (B,) of token ids in the reward model's own vocabulary."""
        return self.model(input_ids, attention_mask)

    @torch.no_grad()
    def score_texts(self, prompts: list, responses: list[str], ended: list[bool],
                    max_length: int | None = None) -> torch.Tensor:
        """Normalised scores (N,) of prompt (text or messages) / response texts, through the reward model's own
        tokenizer and template, at most ``max_length`` tokens (default: the model's positions)."""
        self.calls["text"] += 1
        return score_texts(self.model, self.tok, prompts, responses, ended, max_length or self.max_length)

    @torch.no_grad()
    def score_rollout(self, rollout, prompts: list | None) -> torch.Tensor:
        """Normalised scores (B,) of a rollout's samples, on the rollout's device; ``prompts``: the rollout's prompts
        as given to the policy (needed by the text path)."""
        if self.fast:
            self.calls["ids"] += 1
            return self(*repack_for_reward(rollout, self.policy_tok.pad_token_id)).float()
        if prompts is None or len(prompts) != rollout.response_ids.size(0):
            raise ValueError("the reward model has another tokenizer than the policy: scoring needs the rollout's "
                             "prompts")
        texts = decode_responses(self.policy_tok, rollout, skip_special_tokens=True)
        scores = self.score_texts(list(prompts), texts, rollout.ended.tolist())
        return scores.to(rollout.response_ids.device)


def load_scorer(path: str | Path, policy_tok=None, device=None, compute=None,
                trust_remote_code: bool = False) -> RewardScorer:
    """A reward-model folder as a frozen RewardScorer, placed on ``device`` with the ``compute`` switches
    (rlhf/accel.py). ``policy_tok``: the policy's tokenizer, for scoring rollouts (PPO); not needed for texts."""
    scorer = RewardScorer.load(path, policy_tok, trust_remote_code)
    if device is not None:
        from rlhf import accel
        accel.prepare(scorer, device, compute, trainable=False, hf=scorer.model.trunk)
    return scorer


def score_rollout(reward_model: nn.Module, rollout, prompts: list | None, pad_id: int) -> torch.Tensor:
    """(B,) scores of a rollout: a RewardScorer decides its path; a bare reward model is taken to share the policy's
    tokenizer (the ids path)."""
    if isinstance(reward_model, RewardScorer):
        return reward_model.score_rollout(rollout, prompts)
    return reward_model(*repack_for_reward(rollout, pad_id)).float()
