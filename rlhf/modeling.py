"""Models: a byte-level BPE tokenizer and a small GPT-2 built from a config, any local Hugging Face causal LM,
the policy with a value head on its trunk, and the reward model (a trunk with a scalar head, saved and loaded as a
``*ForSequenceClassification`` model: rlhf/reward_format.py).

Everything is saved with ``save_pretrained`` / safetensors and loaded with the Auto classes (DESIGN.md invariant 5);
``trust_remote_code`` stays off unless the caller turns it on.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from rlhf.config import ModelConfig, TokenizerConfig
from rlhf.limits import text_config
from rlhf.reward_shaping import last_token_index as last_valid_index

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"           # distinct from EOS, so EOS is learned and never masked as padding
VALUE_HEAD_FILE = "value_head.safetensors"
REWARD_HEAD_FILE = "reward_head.safetensors"     # the previous reward-model format (still read)
FUSED_GELU = "gelu_pytorch_tanh"


def quiet_transformers() -> None:
    """Silence load-time warnings (unused lm_head weights when loading a trunk, etc.)."""
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def train_tokenizer(texts: Iterable[str], cfg: TokenizerConfig):
    """Train a byte-level BPE tokenizer (GPT-2's scheme) and wrap it as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency, show_progress=False,
        special_tokens=[EOS_TOKEN, PAD_TOKEN], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, pad_token=PAD_TOKEN)
    fast.padding_side = "left"
    return fast


def build_gpt2(cfg: ModelConfig, tokenizer, seed: int = 0):
    """A GPT-2 with random weights sized by ``cfg``; dropout off (PPO needs deterministic log-probs)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=cfg.n_positions, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, activation_function=FUSED_GELU,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config)


def load_config(path: str | Path, trust_remote_code: bool = False):
    """A checkpoint's config, with GPT-2's ``gelu_new`` swapped for ``gelu_pytorch_tanh``: the same function (tanh
    approximation; max difference 5e-7) as one fused kernel instead of five (~15% of PPO's optimisation time was
    ``gelu_new``; 1.09-1.22x per phase, BENCHMARKS.md)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if getattr(config, "activation_function", None) == "gelu_new":
        config.activation_function = FUSED_GELU
    return config


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    """Load a tokenizer; give it a pad token distinct from EOS if it has none, and pad on the left."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        tok.add_special_tokens({"pad_token": PAD_TOKEN})
    tok.padding_side = "left"
    tok.rlhf_end_ids = generation_end_ids(path)        # rlhf/chat.py: every id that ends a response
    return tok


def generation_end_ids(path: str | Path) -> list[int]:
    """The ``eos_token_id`` of a model folder's generation_config.json (an int or a list: chat models stop on
    several ids, e.g. EOS and end-of-turn), else []."""
    f = Path(path) / "generation_config.json"
    if not f.is_file():
        return []
    value = json.loads(f.read_text()).get("eos_token_id")
    ids = value if isinstance(value, list) else [value] if value is not None else []
    return [int(i) for i in ids]


def disable_dropout(model: nn.Module) -> nn.Module:
    """Set every dropout probability to 0 (N implementation details of RLHF: dropout off for PPO)."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model


DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "auto": "auto"}


def load_causal_lm(path: str | Path, tokenizer=None, trust_remote_code: bool = False, dtype: str = "fp32"):
    """Load any local Hugging Face causal LM from safetensors, its weights in ``dtype`` (fp32 | bf16 | fp16 | auto:
    the checkpoint's own); resize embeddings if the tokenizer grew."""
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    model = AutoModelForCausalLM.from_pretrained(str(path), config=load_config(path, trust_remote_code),
                                                 trust_remote_code=trust_remote_code, use_safetensors=True,
                                                 dtype=DTYPES[dtype])
    if tokenizer is not None and model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    if tokenizer is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return disable_dropout(model)


def hidden_size(config) -> int:
    text = text_config(config)
    for name in ("hidden_size", "n_embd", "d_model"):
        if getattr(text, name, None):
            return int(getattr(text, name))
    raise ValueError("cannot find the hidden size in the model config")


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B, T). GPT-2 does not derive positions from the mask, so left padding needs them explicitly
    (STACK-NOTES trap 4); padded positions get 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(str(path))


class PolicyWithValueHead(nn.Module):
    """The source's design: a linear value head in parallel at the end of the policy's decoder, sharing the trunk.
    One forward gives the token logits (B, T, V) and the values (B, T)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        self.value_head = nn.Linear(hidden_size(lm.config), 1)
        # Small init (as lm-human-preferences' zero-initialised value head): early value errors do not swamp the
        # shared trunk's gradients.
        nn.init.normal_(self.value_head.weight, std=1e-3)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids, attention_mask, logits_to_keep: int = 0):
        """``logits_to_keep`` > 0: project only the last N positions onto the vocabulary (values cover every one)."""
        kw = {"logits_to_keep": logits_to_keep} if logits_to_keep else {}
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask,
                      position_ids=position_ids_from_mask(attention_mask), output_hidden_states=True, **kw)
        values = self.value_head(out.hidden_states[-1]).squeeze(-1)  # (B, T, 1) -> (B, T)
        return out.logits, values

    def save_pretrained(self, out_dir: str | Path) -> None:
        out_dir = Path(out_dir)
        self.lm.save_pretrained(out_dir, safe_serialization=True)
        _save_tensors({"weight": self.value_head.weight, "bias": self.value_head.bias}, out_dir / VALUE_HEAD_FILE)

    def load_value_head(self, path: str | Path) -> bool:
        f = Path(path) / VALUE_HEAD_FILE
        if not f.exists():
            return False
        t = _load_tensors(f)
        self.value_head.load_state_dict({"weight": t["weight"], "bias": t["bias"]})
        return True


def last_token_index(input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_token_id=None) -> torch.Tensor:
    """(B, T), (B, T) -> (B,): where a sequence-classification model reads its score. transformers'
    ``*ForSequenceClassification`` takes the rightmost token that is not ``pad_token_id`` (left or right padding);
    so do we, among attended positions (our padding may use another id). Left-padded with a pad distinct from EOS:
    the last position. 0 for a row with no such token (as transformers)."""
    keep = attention_mask.bool()                                                   # (B, T)
    if pad_token_id is not None:
        keep = keep & (input_ids != pad_token_id)
    return last_valid_index(keep)[0]                                               # (B,)


class RewardModel(nn.Module):
    """A causal LM's trunk with a scalar head (seed, step 2), read where transformers'
    ``*ForSequenceClassification`` reads it (``last_token_index``): saved as exactly such a model
    (rlhf/reward_format.py), so ours loads with ``AutoModelForSequenceClassification`` and any one-label
    sequence-classification reward model loads as ours.

    ``gain`` and ``bias`` normalise the raw score to mean 0, std 1 on reference-policy samples (lm-human-preferences'
    reward normalisation); saving folds ``gain`` into the head and records the additive bias in the config, so a
    loaded model has gain 1 and its raw score is transformers' logit. ``tokenizer``: the model's own tokenizer when
    loaded from a folder (``from_pretrained``), else None."""

    def __init__(self, trunk: nn.Module, head: nn.Linear | None = None, bias: float = 0.0):
        super().__init__()
        self.trunk = trunk
        if head is None:
            head = nn.Linear(hidden_size(trunk.config), 1)
            nn.init.normal_(head.weight, std=1.0 / (hidden_size(trunk.config) + 1) ** 0.5)
            nn.init.zeros_(head.bias)
        self.score_head = head
        self.register_buffer("gain", torch.ones(()))
        self.register_buffer("bias", torch.full((), float(bias)))
        self.pad_token_id = getattr(text_config(trunk.config), "pad_token_id", None)
        self.tokenizer = None

    def raw_scores(self, input_ids, attention_mask) -> torch.Tensor:
        """(B, T) -> (B,) unnormalised scores at the last non-pad token."""
        out = self.trunk(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids_from_mask(attention_mask))
        idx = last_token_index(input_ids, attention_mask, self.pad_token_id)      # (B,)
        last = out.last_hidden_state[torch.arange(idx.size(0), device=idx.device), idx]   # (B, H)
        return self.score_head(last).squeeze(-1)                                 # (B, 1) -> (B,)

    def forward(self, input_ids, attention_mask, raw: bool = False) -> torch.Tensor:
        """Normalised scores (B,); ``raw``: the unnormalised ones (training, through a data-parallel wrapper)."""
        raw_scores = self.raw_scores(input_ids, attention_mask)
        return raw_scores if raw else raw_scores * self.gain + self.bias

    @classmethod
    def from_causal_lm_path(cls, path: str | Path, tokenizer=None, trust_remote_code: bool = False) -> "RewardModel":
        """Initialise from an (SFT) causal LM checkpoint: its trunk, a fresh scalar head. The tokenizer's pad id goes
        into the config: transformers reads a sequence-classification score at the last token that is not it."""
        trunk = load_trunk(path, tokenizer, trust_remote_code)
        if tokenizer is not None:
            trunk.config.pad_token_id = text_config(trunk.config).pad_token_id = tokenizer.pad_token_id
        return cls(trunk)

    def save_pretrained(self, out_dir: str | Path) -> None:
        """A ``*ForSequenceClassification`` folder (rlhf/reward_format.py); the tokenizer is saved by the caller."""
        from rlhf.reward_format import save_reward_model
        save_reward_model(self, out_dir)

    @classmethod
    def from_pretrained(cls, path: str | Path, trust_remote_code: bool = False) -> "RewardModel":
        """Any local one-label sequence-classification reward model (safetensors), with its own tokenizer; or a
        folder of the previous format (trunk + REWARD_HEAD_FILE)."""
        from rlhf.reward_format import RewardFormatError, load_reward_tokenizer, load_seqcls

        quiet_transformers()
        path = Path(path)
        if not path.is_dir():
            raise RewardFormatError(f"{path}: no such reward-model folder")
        if (path / REWARD_HEAD_FILE).exists():
            model = cls._from_head_file(path, trust_remote_code)
        else:
            trunk, head, bias = load_seqcls(path, trust_remote_code)
            model = cls(disable_dropout(trunk), head, bias=bias)
        model.tokenizer = load_reward_tokenizer(path, trust_remote_code)
        return model

    @classmethod
    def _from_head_file(cls, path: Path, trust_remote_code: bool) -> "RewardModel":
        """The previous format: an AutoModel trunk and REWARD_HEAD_FILE (head weight, bias, gain, norm_bias)."""
        t = _load_tensors(path / REWARD_HEAD_FILE)
        model = cls(load_trunk(path, None, trust_remote_code))
        model.score_head.load_state_dict({"weight": t["weight"], "bias": t["bias"]})
        model.gain.copy_(t["gain"])
        model.bias.copy_(t["norm_bias"])
        return model


def load_trunk(path: str | Path, tokenizer=None, trust_remote_code: bool = False) -> nn.Module:
    """The AutoModel trunk (no LM head) of a checkpoint, dropout off; embeddings grown to the tokenizer."""
    from transformers import AutoModel

    quiet_transformers()
    trunk = AutoModel.from_pretrained(str(path), config=load_config(path, trust_remote_code),
                                      trust_remote_code=trust_remote_code, use_safetensors=True)
    if tokenizer is not None and trunk.get_input_embeddings().num_embeddings < len(tokenizer):
        trunk.resize_token_embeddings(len(tokenizer))
    return disable_dropout(trunk)


FINAL_NORMS = ("ln_f", "norm", "final_layer_norm", "final_layernorm")


def transformer_blocks(trunk: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks of a Hugging Face base model (GPT-2 ``h``, Llama/Mistral/Qwen ``layers``, ...):
    the longest ModuleList among its direct children or their direct children."""
    base = trunk.get_base_model() if hasattr(trunk, "get_base_model") else trunk
    candidates = [m for m in list(base.children()) + [g for c in base.children() for g in c.children()]
                  if isinstance(m, nn.ModuleList)]
    if not candidates:
        raise ValueError(f"{type(base).__name__}: no transformer block list found")
    return max(candidates, key=len)


class CriticModel(nn.Module):
    """A separate value model (option ``ppo.value_model: separate``), initialised from the reward model: its trunk
    and its scalar head applied at every position (TRL's PPO initialises the critic from the reward model)."""

    def __init__(self, trunk: nn.Module, head: nn.Linear):
        super().__init__()
        self.trunk, self.value_head = trunk, head

    def forward(self, input_ids, attention_mask) -> torch.Tensor:
        out = self.trunk(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids_from_mask(attention_mask))
        return self.value_head(out.last_hidden_state).squeeze(-1)               # (B, T, 1) -> (B, T)

    def train_top_layers(self, n: int) -> int:
        """Train only the top ``n`` transformer blocks, the final norm and the value head; freeze the embeddings and
        the blocks below (n < 0: everything trains). Backward then stops at the lowest trained block, which cuts the
        critic's share of an update; the frozen layers keep the reward model's features. Returns the block count."""
        blocks = transformer_blocks(self.trunk)
        if n < 0:
            return len(blocks)
        if n > len(blocks):
            raise ValueError(f"ppo.critic_train_layers: {n} > the critic's {len(blocks)} blocks")
        for p in self.trunk.parameters():
            p.requires_grad_(False)
        for block in list(blocks)[len(blocks) - n:]:
            for p in block.parameters():
                p.requires_grad_(True)
        for name, module in self.trunk.named_children():
            if name in FINAL_NORMS:
                for p in module.parameters():
                    p.requires_grad_(True)
        return len(blocks)

    @classmethod
    def from_reward_model(cls, path: str | Path) -> "CriticModel":
        """The reward model's trunk, and its head (with the normalising gain and bias) applied at every position, so
        the critic starts out predicting the normalised score (TRL's PPO initialises the critic from the reward
        model)."""
        rm = RewardModel.from_pretrained(path)
        w = rm.score_head.weight.detach() * rm.gain                               # (1, H)
        b0 = rm.score_head.bias.detach() if rm.score_head.bias is not None else torch.zeros(1)
        head = nn.Linear(w.size(1), 1)
        with torch.no_grad():
            head.weight.copy_(w)
            head.bias.copy_(b0 * rm.gain + rm.bias)
        return cls(rm.trunk, head)

    @classmethod
    def from_causal_lm_path(cls, path: str | Path, tokenizer=None) -> "CriticModel":
        """The policy's own trunk and a fresh value head (small init, as PolicyWithValueHead's): for a reward model
        whose tokenizer differs from the policy's, whose trunk cannot read the policy's token ids."""
        trunk = load_trunk(path, tokenizer)
        head = nn.Linear(hidden_size(trunk.config), 1)
        nn.init.normal_(head.weight, std=1e-3)
        nn.init.zeros_(head.bias)
        return cls(trunk, head)
