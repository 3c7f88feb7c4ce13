"""The reward-model folder: a plain Hugging Face sequence-classification model that anyone can load, and any such
model as our reward model (DESIGN.md invariants 5, 10, 11).

What the ``reward`` stage writes (``save_reward_model``):

* ``config.json``: ``architectures = [<Arch>ForSequenceClassification]``, ``num_labels = 1``, ``problem_type =
  "regression"``, ``pad_token_id`` = the tokenizer's pad id (so transformers pools the last token that is not
  padding, left or right padded), and ``rlhf_reward = {"bias", "normalized", "raw_mean", "raw_std", "score"}``;
* ``model.safetensors`` with the trunk and ``score.weight`` (the normalising gain folded in), the tokenizer beside
  it, and a ``README.md`` model card saying how to read the score.

The normalised score (mean 0, std 1 on reference-policy samples, as lm-human-preferences' train_reward.py and
OpenRLHF's reward-model normalisation) is ``logits[:, 0] + config.rlhf_reward["bias"]``. The gain folds exactly
into ``score.weight``; the additive bias cannot: the ``score`` head of GPT-2/Llama/Qwen2/Mistral has no bias term
(a ``score.bias`` tensor would be dropped as an unexpected key), and moving it into the final norm works only
for norms with a bias (not RMSNorm). So it is recorded in the config, and our loader adds it. ``raw_mean`` and
``raw_std`` give the unnormalised score back: ``raw = (logits + bias) * raw_std + raw_mean``.

Loading (``load_reward_model``) accepts any local ``*ForSequenceClassification`` folder with one label and a
linear ``score`` head (ours, TRL's RewardTrainer output, an off-the-shelf reward model): safetensors only, no code
from the folder unless the caller opts in, its own tokenizer from the same folder. A missing config bias means 0.
Folders of the previous format (trunk + ``reward_head.safetensors``) still load.
"""
from __future__ import annotations

import copy
import json
import weakref
from pathlib import Path

import torch
from torch import nn

from rlhf.limits import text_config

META_KEY = "rlhf_reward"
SCORE_DOC = "normalised score = logits[:, 0] + bias (mean 0, std 1 on reference-policy samples)"
PROBE = "Hello, world! The film's 2nd half was great:\n\tdon't  miss it."


class RewardFormatError(ValueError):
    """A folder that is not a usable reward model (one line naming the path)."""


def _arch_list(path: Path) -> list[str]:
    f = path / "config.json"
    if not f.is_file():
        return []
    try:
        return list(json.loads(f.read_text()).get("architectures") or [])
    except (ValueError, OSError):
        return []


def is_reward_folder(path: str | Path) -> bool:
    """A sequence-classification model folder, or one of the previous format (REWARD_HEAD_FILE)."""
    from rlhf.modeling import REWARD_HEAD_FILE
    path = Path(path)
    return (path / REWARD_HEAD_FILE).exists() or any(a.endswith("ForSequenceClassification") for a in _arch_list(path))


# ---------------------------------------------------------------------------------------------- save
def reward_meta(model) -> dict:
    """What ``config.rlhf_reward`` records: the additive bias of the normalised score and how it was set."""
    gain, bias = float(model.gain), float(model.bias)
    head_bias = float(model.score_head.bias.detach()) if model.score_head.bias is not None else 0.0
    stats = getattr(model, "normalization", None) or {}
    return {"bias": gain * head_bias + bias, "normalized": bool(stats),
            "raw_mean": float(stats.get("raw_mean", 0.0)), "raw_std": float(stats.get("raw_std", 1.0)),
            "score": SCORE_DOC}


def seqcls_config(trunk_config, pad_token_id, meta: dict):
    """The trunk's config as a one-label regression ``*ForSequenceClassification`` config with our metadata."""
    config = copy.deepcopy(trunk_config)
    config.num_labels = 1
    config.problem_type = "regression"
    config.pad_token_id = pad_token_id
    if text_config(config) is not config:
        text_config(config).pad_token_id = pad_token_id
    setattr(config, META_KEY, meta)
    return config


def save_reward_model(model, out_dir: str | Path) -> None:
    """Write ``model`` (a RewardModel: trunk, score_head, gain, bias) as a ``*ForSequenceClassification`` folder.
    The wrapper is built on the meta device and takes the trained trunk itself, so no weights are copied."""
    from transformers import AutoModelForSequenceClassification

    from rlhf.modeling import quiet_transformers
    quiet_transformers()
    out_dir = Path(out_dir)
    meta = reward_meta(model)
    config = seqcls_config(model.trunk.config, model.pad_token_id, meta)
    with torch.device("meta"):
        seqcls = AutoModelForSequenceClassification.from_config(config)
    setattr(seqcls, seqcls.base_model_prefix, model.trunk)
    w = model.score_head.weight.detach()                                          # (1, H)
    seqcls.score = nn.Linear(w.size(1), 1, bias=False, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        seqcls.score.weight.copy_(w * model.gain.to(w))                           # gain folded in
    left = [n for n, p in seqcls.named_parameters() if p.is_meta]
    if left:
        raise RewardFormatError(f"{out_dir}: {type(seqcls).__name__} has weights besides the trunk and `score`: "
                                f"{', '.join(left[:3])}")
    seqcls.save_pretrained(out_dir)
    (out_dir / "README.md").write_text(model_card(type(seqcls).__name__, meta))


def model_card(arch: str, meta: dict) -> str:
    """The folder's README.md: what the number means and how to get it with transformers alone."""
    return f"""# Reward model ({arch}, one label)

Trained by the rlhf-pipeline `reward` stage. Input: the prompt rendered with the tokenizer's chat template and the
generation prompt (plain text without a template), then the response and its end-of-turn token. The score is read
at the last token that is not `pad_token_id` (transformers' default pooling), so left or right padding both work.

**Normalised score = `logits[:, 0] + config.rlhf_reward["bias"]`** (bias = {meta["bias"]:.6g}; normalised:
{str(meta["normalized"]).lower()}): mean 0, std 1 on samples of the reference (SFT) policy. The normalising gain is
folded into `score.weight`; the head has no bias term, so the additive bias is recorded in the config. The raw
(unnormalised) score is `(logits[:, 0] + bias) * raw_std + raw_mean`.

```python
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model = AutoModelForSequenceClassification.from_pretrained(path)
tok = AutoTokenizer.from_pretrained(path)
ids = tok(text, return_tensors="pt", add_special_tokens=False)
score = model(**ids).logits[:, 0] + model.config.rlhf_reward["bias"]
```
"""


# ---------------------------------------------------------------------------------------------- load
def _meta_bias(config) -> float:
    meta = getattr(config, META_KEY, None) or {}
    return float(meta.get("bias", 0.0)) if isinstance(meta, dict) else 0.0


def load_seqcls(path: Path, trust_remote_code: bool = False):
    """(trunk, score head, additive bias of the normalised score) of a one-label ``*ForSequenceClassification``
    folder; one-line errors naming the path."""
    from transformers import AutoModelForSequenceClassification

    from rlhf.modeling import load_config
    if not any(a.endswith("ForSequenceClassification") for a in _arch_list(path)):
        raise RewardFormatError(f"{path}: not a reward model (config.json architectures "
                                f"{_arch_list(path) or 'missing'}: no *ForSequenceClassification)")
    config = load_config(path, trust_remote_code)
    if config.num_labels != 1:
        raise RewardFormatError(f"{path}: a reward model has one label, this one has {config.num_labels}")
    try:
        seqcls, info = AutoModelForSequenceClassification.from_pretrained(
            str(path), config=config, trust_remote_code=trust_remote_code, use_safetensors=True,
            output_loading_info=True)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RewardFormatError(f"{path}: cannot load the reward model (safetensors only): {first}") from None
    head = getattr(seqcls, "score", None)
    if not isinstance(head, nn.Linear) or head.out_features != 1:
        raise RewardFormatError(f"{path}: {type(seqcls).__name__} has no linear `score` head with one output "
                                f"(decoder-only sequence-classification models have one)")
    missing = sorted(k for k in info.get("missing_keys", ()) if "score" in k)
    if missing:
        raise RewardFormatError(f"{path}: the reward head is not in the weights (missing {', '.join(missing)})")
    return getattr(seqcls, seqcls.base_model_prefix), head, _meta_bias(config)


def load_reward_tokenizer(path: str | Path, trust_remote_code: bool = False):
    """The reward model's own tokenizer, left padding. No token is added (the embeddings stay as trained): without
    a pad token, EOS (else id 0) fills padding, which the attention mask hides."""
    from transformers import AutoTokenizer

    from rlhf.modeling import generation_end_ids
    try:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise RewardFormatError(f"{path}: no usable tokenizer beside the reward model: "
                                f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.convert_ids_to_tokens(0)
    tok.padding_side = "left"
    tok.rlhf_end_ids = generation_end_ids(path)        # rlhf/chat.py end_ids / turn_end_id
    return tok


# ---------------------------------------------------------------------------------------------- tokenizers
def _special(tok) -> list:
    named = [(n, getattr(tok, f"{n}_token", None), getattr(tok, f"{n}_token_id", None))
             for n in ("bos", "eos", "unk", "pad")]
    return named + sorted(zip(tok.all_special_tokens, tok.all_special_ids))


def same_tokenizer(a, b) -> bool:
    """Whether two tokenizers turn text into the same ids: same vocabulary (added tokens included), same special
    tokens, same chat template, and the same ids for a probe text (catches normaliser / pre-tokenizer and BOS
    differences). Cached on ``a`` per ``b``."""
    if a is b:
        return True
    cache = a.__dict__.setdefault("_rlhf_same_tokenizer", {})
    hit = cache.get(id(b))
    if hit is None or hit[0]() is not b:
        same = (len(a) == len(b) and a.get_vocab() == b.get_vocab() and _special(a) == _special(b)
                and (getattr(a, "chat_template", None) or None) == (getattr(b, "chat_template", None) or None)
                and a(PROBE)["input_ids"] == b(PROBE)["input_ids"])
        hit = cache[id(b)] = (weakref.ref(b), same)
    return hit[1]
