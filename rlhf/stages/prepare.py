"""prepare: validate the raw inputs (corpus, SFT demonstrations, prompts) and split them into the datasets the other
stages read.

Each input is a ``DataSource`` (``prepare.corpus``, ``prepare.sft``, ``prepare.prompts``): a JSONL, JSON, CSV or
Parquet file, a ``save_to_disk`` folder or a hub dataset, read by rlhf/sources.py; an empty one is
``<data_dir>/<input>.jsonl`` (the demo). Accepted records, TRL's shapes (other fields are kept as they are)::

    corpus   {"text": str}
    sft      {"prompt": str, "completion": str}
             {"prompt": [messages], "completion": str | [messages]}      completion messages: an assistant turn
             {"messages": [messages]}                                   at least one assistant turn
    prompts  {"prompt": str | [messages], "split"?: "annotate" | "ppo" | "eval"}
             {"messages": [messages], "split"?}     a final assistant turn is dropped; written as "prompt"

    messages: a non-empty list of {"role": "system" | "user" | "assistant", "content": non-empty str}

Every text and every message content is at most ``max_chars`` characters. When no prompt record has a ``split``,
each prompt goes to ``eval`` with probability ``eval_fraction`` by a stable hash of the prompt, else to ``ppo`` (no
``annotate`` prompts: real preference data replaces the collect/annotate round). ``use_corpus: false`` reads no
corpus and writes empty ``corpus_*`` files (chat data on a pretrained model).

Outputs in ``out_dir``: ``corpus_{train,val}.jsonl``, ``sft_{train,val}.jsonl``, ``prompts_{annotate,ppo,eval}.jsonl``
(records as accepted, keys sorted) and ``rejects.jsonl``: every input record ends in an output file or there, with
``{"source", "line", "reason", "record"}`` (``line`` is the row number, from 1, for CSV, Parquet, Arrow and hub
sources) (DESIGN invariant 7).
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable

from rlhf.chat import ROLES as CHAT_ROLES
from rlhf.config import DataSource, PrepareConfig
from rlhf.data import write_jsonl
from rlhf.sources import Keys, Record, check_source, describe, iter_records
from rlhf.stages.common import StageResult

INPUTS = ("corpus", "sft", "prompts")
PROMPT_SPLITS = ("annotate", "ppo", "eval")
ROLES = tuple(r for r in CHAT_ROLES if r != "tool")        # demonstrations: no tool turns
MAX_RECORD_TEXT = 2000

Check = Callable[[Any], "tuple[dict | None, str | None]"]   # record -> (row to write, None) or (None, reason)


# ---- record checks: each returns None when usable, else the reject reason -------------------------------------

def text_field(obj: dict, f: str, max_chars: int) -> str | None:
    """A present, non-empty string field of at most ``max_chars`` characters."""
    if f not in obj:
        return f"missing field '{f}'"
    if not isinstance(obj[f], str):
        return f"field '{f}' must be a string"
    if not obj[f].strip():
        return f"empty field '{f}'"
    if len(obj[f]) > max_chars:
        return f"field '{f}' longer than {max_chars} characters"
    return None


def messages_field(value: Any, f: str, max_chars: int, assistant: bool = False) -> str | None:
    """A non-empty list of {role, content} with known roles and valid contents; ``assistant``: one turn at least."""
    if not isinstance(value, list):
        return f"field '{f}' must be a list of {{role, content}} messages"
    if not value:
        return f"empty field '{f}'"
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            return f"field '{f}[{i}]' must be a {{role, content}} object"
        if m.get("role") not in ROLES:
            return f"field '{f}[{i}].role' must be one of {', '.join(ROLES)}"
        reason = text_field(m, "content", max_chars)
        if reason:
            return reason.replace("'content'", f"'{f}[{i}].content'")
    if assistant and not any(m["role"] == "assistant" for m in value):
        return f"field '{f}' has no assistant turn"
    return None


def _not_object(obj: Any) -> str | None:
    return None if isinstance(obj, dict) else f"expected a JSON object, got {type(obj).__name__}"


def check_corpus(obj: Any, max_chars: int) -> tuple[dict | None, str | None]:
    reason = _not_object(obj) or text_field(obj, "text", max_chars)
    return (None, reason) if reason else (obj, None)


def repeats_a_user_turn(obj: dict) -> bool:
    """A text ``prompt`` that is one of the user turns of the record's ``messages`` (HuggingFaceH4's ultrachat_200k
    and no_robots: ``prompt``, ``prompt_id``, ``messages``): a copy, not a second shape."""
    msgs, prompt = obj.get("messages"), obj.get("prompt")
    return (isinstance(prompt, str) and "completion" not in obj and isinstance(msgs, list)
            and any(isinstance(m, dict) and m.get("role") == "user" and m.get("content") == prompt for m in msgs))


def check_sft(obj: Any, max_chars: int) -> tuple[dict | None, str | None]:
    """prompt/completion as text, prompt as messages with a text or messages completion, or messages alone (a text
    prompt copying one of its user turns beside it is dropped: SFT learns the conversation, as TRL's SFT does)."""
    reason = _not_object(obj)
    if reason is None and repeats_a_user_turn(obj):
        obj = {k: v for k, v in obj.items() if k != "prompt"}
    if reason is None and "messages" in obj:
        reason = ("ambiguous record: both 'messages' and 'prompt'/'completion' (keep one shape)"
                  if "prompt" in obj or "completion" in obj
                  else messages_field(obj["messages"], "messages", max_chars, assistant=True))
    elif reason is None and isinstance(obj.get("prompt"), list):
        reason = messages_field(obj["prompt"], "prompt", max_chars)
        if reason is None:
            completion = obj.get("completion")
            reason = (messages_field(completion, "completion", max_chars, assistant=True)
                      if isinstance(completion, list) else text_field(obj, "completion", max_chars))
    elif reason is None:
        reason = text_field(obj, "prompt", max_chars) or text_field(obj, "completion", max_chars)
    return (None, reason) if reason else (obj, None)


def check_prompt(obj: Any, max_chars: int, has_split: bool, eval_fraction: float) -> tuple[dict | None, str | None]:
    """A prompt (text or messages, or a messages column minus its final assistant turn) and its split. A text prompt
    beside the messages it opens (HuggingFaceH4's layout) is the prompt, as TRL's online trainers read ``prompt``."""
    reason = _not_object(obj)
    if reason:
        return None, reason
    if repeats_a_user_turn(obj):
        obj = {k: v for k, v in obj.items() if k != "messages"}
    row = obj
    if "messages" in obj:
        if "prompt" in obj:
            return None, "ambiguous record: both 'messages' and 'prompt' (keep one)"
        msgs = obj["messages"]
        reason = messages_field(msgs, "messages", max_chars)
        if reason:
            return None, reason
        msgs = msgs[:-1] if msgs[-1]["role"] == "assistant" else msgs
        if not msgs:
            return None, "field 'messages' has nothing before its final assistant turn"
        row = {**{k: v for k, v in obj.items() if k != "messages"}, "prompt": msgs}
    elif isinstance(obj.get("prompt"), list):
        reason = messages_field(obj["prompt"], "prompt", max_chars)
    else:
        reason = text_field(obj, "prompt", max_chars)
    if reason is None and has_split:
        reason = text_field(obj, "split", max_chars)
        if reason is None and obj["split"] not in PROMPT_SPLITS:
            reason = f"unknown split {obj['split']!r} (expected one of {', '.join(PROMPT_SPLITS)})"
    if reason:
        return None, reason
    return (row if has_split else {**row, "split": hashed_split(row["prompt"], eval_fraction)}), None


def hashed_split(prompt: str | list, eval_fraction: float) -> str:
    """``eval`` or ``ppo`` by a hash of the prompt: the same prompt lands in the same split on every machine, and a
    repeated prompt never sits on both sides."""
    key = prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)
    h = int(hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:8], 16)
    return "eval" if h / 0xFFFFFFFF < eval_fraction else "ppo"


# ---- reading and splitting -------------------------------------------------------------------------------------

def source_of(cfg: PrepareConfig, name: str) -> DataSource:
    """The DataSource of input ``name``; an empty one is ``<data_dir>/<name>.jsonl``."""
    src: DataSource = getattr(cfg, name)
    return src if src.is_set else replace(src, path=str(Path(cfg.data_dir) / f"{name}.jsonl"))


def read_valid(records: Iterable[Record], where: str, check: Check, rejects: list[dict]) -> list[dict]:
    """The accepted rows of one input, in input order; every other record goes to ``rejects`` with its reason."""
    rows = []
    for r in records:
        row, reason = (None, r.error) if r.error is not None else check(r.value)
        if reason:
            rejects.append({"source": where, "line": r.line, "reason": reason, "record": r.text[:MAX_RECORD_TEXT]})
        else:
            rows.append(row)
    return rows


def read_input(cfg: PrepareConfig, name: str, rejects: list[dict]) -> list[dict]:
    """Read and check one input (the prompts' split rule needs to know first whether any record has a split)."""
    source = source_of(cfg, name)
    records = list(iter_records(source, Keys.of(f"prepare.{name}")))
    if name == "corpus":
        def check(o): return check_corpus(o, cfg.max_chars)
    elif name == "sft":
        def check(o): return check_sft(o, cfg.max_chars)
    else:
        has_split = any(isinstance(r.value, dict) and "split" in r.value for r in records)
        def check(o): return check_prompt(o, cfg.max_chars, has_split, cfg.eval_fraction)
    return read_valid(records, describe(source), check, rejects)


def split(rows: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(len(rows) * val_fraction))
    val = set(order[:n_val])
    return [r for i, r in enumerate(rows) if i not in val], [r for i, r in enumerate(rows) if i in val]


def run(cfg: PrepareConfig, on_log=None) -> StageResult:
    out = Path(cfg.out_dir)
    names = [n for n in INPUTS if n != "corpus" or cfg.use_corpus]
    for name in names:                     # every input's path or hub checked before any is read: fail fast
        check_source(source_of(cfg, name), Keys.of(f"prepare.{name}"))
    rejects: list[dict] = []
    read, tables = {}, {}
    for name in INPUTS:
        before = len(rejects)
        tables[name] = read_input(cfg, name, rejects) if name in names else []
        read[name] = len(tables[name]) + len(rejects) - before
    outputs = {}
    for key in ("corpus", "sft"):
        train, val = split(tables[key], cfg.val_fraction, cfg.seed)
        for part, rows in (("train", train), ("val", val)):
            path = out / f"{key}_{part}.jsonl"
            write_jsonl(path, rows)
            outputs[f"{key}_{part}"] = str(path)
    for s in PROMPT_SPLITS:
        path = out / f"prompts_{s}.jsonl"
        write_jsonl(path, [r for r in tables["prompts"] if r["split"] == s])
        outputs[f"prompts_{s}"] = str(path)
    write_jsonl(out / "rejects.jsonl", rejects)
    accepted = sum(len(t) for t in tables.values())
    assert sum(read.values()) == accepted + len(rejects), "prepare lost records"
    metrics = {"records_read": sum(read.values()), "records_accepted": accepted, "records_rejected": len(rejects),
               **{f"n_{k}": len(v) for k, v in tables.items()}}
    if on_log:
        on_log(0, metrics)
    return StageResult(metrics, outputs={**outputs, "rejects": str(out / "rejects.jsonl")})
