"""What the model sees: the one place a record's prompt (text or chat ``messages``) becomes model text and token ids.

Every stage that feeds a model a prompt (sft, collect, reward, ppo, evaluate, serving) goes through ``render_prompt``
/ ``encode_prompt`` here (rlhf/data.py re-exports the encoders). Two modes, decided by the tokenizer:

* chat: the tokenizer has a chat template (its own, or one that params named and SFT saved with it). A prompt is
  rendered by ``apply_chat_template(messages, add_generation_prompt=True)`` (a plain-text prompt becomes one user
  turn); a response is the assistant's text followed by the template's end-of-turn token, exactly what the model
  emits when it generates (DESIGN: "a response is what the model generated up to and including its end-of-turn
  id"). Sampling stops on every end id of the model's generation config (real chat models stop on several).
* plain: a base model without a template: the prompt text as it is, the response after a space, then EOS (the
  demo). Messages given to a plain model are flattened to "Role: content" lines (documented, lossy).

The end ids come from the model folder's generation_config.json (``eos_token_id``: an int or a list) and the
tokenizer's EOS; ``load_tokenizer`` (rlhf/modeling.py) records them on the tokenizer as ``rlhf_end_ids``.
Detail from TRL (``trl/data_utils.py`` maybe_apply_chat_template) and transformers' chat-template docs: render
with ``tokenize=False`` and encode with ``add_special_tokens=False``, since the template writes BOS itself.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence, Union

Message = dict
Prompt = Union[str, Sequence[Message]]
ROLES = ("system", "user", "assistant", "tool")


class ChatError(ValueError):
    """A conversation the renderer cannot use (one line: what is wrong)."""


def has_template(tok) -> bool:
    return bool(getattr(tok, "chat_template", None))


def is_messages(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(m, dict) for m in value)


def as_messages(prompt: Prompt) -> list[Message]:
    """A prompt as a list of {role, content}: text becomes one user turn; messages are checked."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if not is_messages(prompt) or not prompt:
        raise ChatError(f"a prompt must be text or a non-empty list of {{role, content}} messages, not "
                        f"{type(prompt).__name__}")
    out = []
    for i, m in enumerate(prompt):
        role, content = m.get("role"), m.get("content")
        if role not in ROLES or not isinstance(content, str):
            raise ChatError(f"message {i}: needs a role in {', '.join(ROLES)} and text content, got {m!r:.80}")
        out.append({"role": role, "content": content})
    return out


def prompt_key(prompt: Prompt) -> str:
    """A hashable, exact key of a prompt (text as is; messages as canonical JSON), e.g. for Elo score look-ups."""
    import json
    return prompt if isinstance(prompt, str) else json.dumps(as_messages(prompt), sort_keys=True, ensure_ascii=False)


def prompt_text(prompt: Prompt) -> str:
    """A short human-readable form of a prompt (for logs, Label Studio tasks and judges): the last user turn."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in as_messages(prompt) if m["role"] == "user"]
    return users[-1] if users else as_messages(prompt)[-1]["content"]


def _flatten(messages: list[Message]) -> str:
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages) + "\nAssistant:"


def apply_template(tok, messages: list[Message], add_generation_prompt: bool = False) -> str:
    """The tokenizer's chat template on ``messages`` as text; a template's refusal (its ``raise_exception``, e.g.
    Gemma's "System role not supported", Mistral's alternating roles) or a template error becomes a ChatError."""
    from jinja2 import TemplateError
    try:
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except TemplateError as e:
        raise ChatError(f"the model's chat template refused the conversation: {e}") from None


def render_prompt(tok, prompt: Prompt) -> str:
    """The text the model continues: the chat template with the generation prompt, or the plain text."""
    if has_template(tok):
        return apply_template(tok, as_messages(prompt), add_generation_prompt=True)
    return prompt if isinstance(prompt, str) else _flatten(as_messages(prompt))


def per_line(where: str, rows: Sequence, fn: Callable[[Any], Any]) -> list:
    """``fn`` over the rows of a file, in order; the first ChatError (a conversation the renderer cannot use, e.g. a
    system message for a template without a system role) fails with one line naming the file and the row's line."""
    out = []
    for line, row in enumerate(rows, 1):
        try:
            out.append(fn(row))
        except ChatError as e:
            raise ChatError(f"{where} line {line}: {e}") from None
    return out


def check_prompts(tok, prompts: Sequence[Prompt], where: str) -> None:
    """Render every prompt of a file before any weights load (the first one the template refuses: ``per_line``)."""
    per_line(where, prompts, lambda prompt: render_prompt(tok, prompt))


def end_ids(tok) -> list[int]:
    """Every id that ends a response: the generation config's eos ids (recorded by load_tokenizer) and EOS."""
    ids = list(getattr(tok, "rlhf_end_ids", None) or [])
    if tok.eos_token_id is not None and tok.eos_token_id not in ids:
        ids.append(tok.eos_token_id)
    return ids


def turn_end_id(tok) -> int:
    """The id that closes an assistant turn: in chat mode the first end id the template writes after the
    assistant's content (e.g. <|im_end|>, <|eot_id|>), else EOS."""
    cached = getattr(tok, "rlhf_turn_end_id", None)
    if cached is not None:
        return cached
    found = tok.eos_token_id
    if has_template(tok):
        marker = "\u2063rlhf\u2063"
        text = apply_template(tok, [{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}])
        after = tok(text[text.index(marker) + len(marker):], add_special_tokens=False)["input_ids"]
        ends = set(end_ids(tok))
        found = next((t for t in after if t in ends), after[0] if after else tok.eos_token_id)
    tok.rlhf_turn_end_id = found
    return found


def encode_prompt(tok, prompt: Prompt, max_tokens: int) -> list[int]:
    """Token ids of a rendered prompt, keeping its END (the part the response continues) when too long, and its BOS
    when the template wrote one (Llama-3, Gemma and Mistral models read a prompt without BOS badly)."""
    ids = tok(render_prompt(tok, prompt), add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return ids
    bos = tok.bos_token_id
    if bos is not None and ids[0] == bos and max_tokens > 1 and has_template(tok):
        return [bos] + ids[len(ids) - max_tokens + 1:]
    return ids[-max_tokens:]


def encode_response(tok, response: str, add_eos: bool = True) -> list[int]:
    """Token ids of a response as the model would have generated it: in chat mode the text then the end-of-turn
    id; in plain mode the text after a space (byte-level BPE attaches the space to the next word), then EOS."""
    if has_template(tok):
        ids = tok(response, add_special_tokens=False)["input_ids"]
        return ids + [turn_end_id(tok)] if add_eos else ids
    text = response if response.startswith((" ", "\n")) else " " + response
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return ids + [tok.eos_token_id] if add_eos else ids


def assistant_mask(tok, messages: Sequence[Message], max_length: int) -> tuple[list[int], list[int]]:
    """(ids, loss mask) of a whole conversation for SFT: the mask is 1 exactly on the assistant turns' tokens, each
    up to and including its end-of-turn id (not the template's formatting after it), 0 on everything else.

    Each assistant turn starts where the conversation rendered up to it with the generation prompt ends (TRL's
    approach when a template has no {% generation %} markers; the template must render that prefix the same way in
    the whole conversation, which is checked) and ends at the first end id after it (rlhf/chat.py ``end_ids``,
    ``turn_end_id``). The turn rendered alone bounds the search: its text agrees with the whole conversation's up to
    the template's closing text, which may differ for a last message (Phi-3 writes EOS after the last turn only).
    Sequences longer than ``max_length`` keep their beginning."""
    msgs = as_messages(messages)
    if not has_template(tok):
        raise ChatError("SFT on `messages` needs a chat template (the tokenizer has none; set sft.chat_template)")
    full = apply_template(tok, msgs)
    spans = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        before = apply_template(tok, msgs[:i], add_generation_prompt=True) if i else ""
        upto = apply_template(tok, msgs[:i + 1])
        stop = _common_prefix_length(full, upto)
        if not (full.startswith(before) and upto.startswith(before)) or stop <= len(before):
            raise ChatError("the chat template does not render conversations prefix by prefix; cannot find the "
                            "assistant turns")
        spans.append((len(before), stop, stop == len(upto)))
    if not spans:
        raise ChatError("a conversation for SFT needs at least one assistant turn")
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    ends = {*end_ids(tok), turn_end_id(tok)}
    mask = [0] * len(ids)
    for start, stop, whole in spans:
        inside = [j for j, (a, b) in enumerate(offsets) if a >= start and b <= stop and b > a]
        first_end = next((j for j in inside if ids[j] in ends), None)
        if first_end is None and not whole:        # the renderings part inside the turn: no safe end for it
            raise ChatError("the chat template renders an assistant turn differently inside the conversation than "
                            "as its last message; cannot find where the turn ends")
        for j in inside:
            if first_end is None or j <= first_end:
                mask[j] = 1
    return ids[:max_length], mask[:max_length]


def _common_prefix_length(a: str, b: str) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def read_template(spec: str) -> str:
    """A chat template given in params: a path to a Jinja file, else the template text itself."""
    from pathlib import Path
    p = Path(spec)
    if len(spec) < 4096 and "{" not in spec:
        if not p.is_file():
            raise ChatError(f"chat template file {spec} not found")
        return p.read_text(encoding="utf-8")
    return spec


def stop_ids(tok) -> list[int]:
    """The end ids to record in a saved model's generation config: the turn end first, then the others."""
    first = turn_end_id(tok)
    return [first] + [i for i in end_ids(tok) if i != first]
