"""Reader for TRL-style preference JSONL: prompt / chosen / rejected.

Accepted schemas (one JSON object per line; optional ``id``, ``annotator``; other fields go to meta)::

    standard:        {"prompt": "Why is the sky blue?", "chosen": "Rayleigh...", "rejected": "Paint."}
    conversational:  {"prompt": [{"role": "user", "content": "..."}],
                      "chosen": [{"role": "assistant", "content": "..."}],
                      "rejected": [{"role": "assistant", "content": "..."}]}
    implicit prompt: {"chosen": [<full conversation>], "rejected": [<full conversation>]}
                     the longest common prefix of messages is the prompt, the rest are the responses.

A conversational record keeps its prompt as messages (normalised to ``{"role", "content"}``, roles system, user,
assistant or tool; see ``conversation``) and each response is the content of its one final assistant turn (a
response of several messages, or of another role, is rejected "response is not one assistant turn"); a
conversational prompt may also take plain-text responses. A text prompt beside two whole conversations that
open with the same message (HuggingFaceH4/ultrafeedback_binarized) is read as the implicit-prompt schema, as TRL
does. Otherwise a standard record is text throughout: a text prompt with message responses takes one message's
content, several messages rendered as an HH-style transcript (``render_messages``). The result is a Ranking of 2
(chosen rank 0).
"""
from __future__ import annotations

from typing import Any

from .conversation import assistant_text, check_messages, conversation, conversational_response
from .schema import (
    Ranking,
    RecordContext,
    RecordError,
    annotator_of,
    build_ranking,
    check_text,
    expect,
    extra_fields,
    get_field,
    item_id_of,
)

_ROLE_LABELS = {"user": "Human", "assistant": "Assistant", "human": "Human"}
_USED = ("prompt", "chosen", "rejected", "id", "annotator")


def parse(obj: Any, ctx: RecordContext) -> Ranking:
    """One prompt/chosen/rejected record -> Ranking of 2 (raises RecordError)."""
    expect(obj, "object", "record")
    chosen, rejected = get_field(obj, "chosen"), get_field(obj, "rejected")
    if "prompt" not in obj or _full_conversations(obj["prompt"], chosen, rejected):
        if not (isinstance(chosen, list) and isinstance(rejected, list)):
            raise RecordError("missing field 'prompt'")
        prompt, chosen, rejected = split_common_prefix(chosen, rejected, ctx)
        responses = [assistant_text(chosen, "chosen"), assistant_text(rejected, "rejected")]
    elif isinstance(obj["prompt"], list):
        prompt = conversation(obj["prompt"], "prompt", ctx)
        responses = [conversational_response(chosen, "chosen", ctx), conversational_response(rejected, "rejected", ctx)]
    else:
        prompt = check_text(expect(obj["prompt"], "string or array", "prompt"), "prompt", ctx.cfg)
        responses = [response_text(chosen, "chosen", ctx), response_text(rejected, "rejected", ctx)]
    return build_ranking(
        prompt, responses, (0, 1), ctx,
        annotator=annotator_of(obj.get("annotator"), "annotator"), item_id=item_id_of(obj, ctx),
        meta=extra_fields(obj, _USED),
    )


def _full_conversations(prompt: Any, chosen: Any, rejected: Any) -> bool:
    """A text prompt beside two whole conversations that open with the same message (HuggingFaceH4's
    ultrafeedback_binarized: ``prompt`` text, ``chosen``/``rejected`` = [user, assistant]): the conversations carry
    the prompt, so their shared prefix is taken as it (TRL's ``maybe_extract_prompt`` does the same when the prompt is
    text and the responses are conversational)."""
    return (isinstance(prompt, str) and isinstance(chosen, list) and isinstance(rejected, list)
            and len(chosen) > 1 and len(rejected) > 1 and isinstance(chosen[0], dict)
            and isinstance(rejected[0], dict) and chosen[0].get("role") != "assistant" and _same(chosen[0], rejected[0]))


def response_text(value: Any, where: str, ctx: RecordContext) -> str:
    """A response given as text or as assistant message(s)."""
    if isinstance(value, list):
        msgs = check_messages(value, where, ctx)
        text = msgs[0]["content"] if len(msgs) == 1 else render_messages(msgs)
        return check_text(text, where, ctx.cfg)
    return check_text(expect(value, "string or array", where), where, ctx.cfg)


def split_common_prefix(chosen: list, rejected: list, ctx: RecordContext) -> tuple[list, list, list]:
    """(shared prefix, chosen rest, rejected rest) of two full conversations, as normalised messages."""
    chosen = conversation(chosen, "chosen", ctx)
    rejected = conversation(rejected, "rejected", ctx)
    n = 0
    while n < min(len(chosen), len(rejected)) and _same(chosen[n], rejected[n]):
        n += 1
    if n == 0:
        raise RecordError("no shared prompt: 'chosen' and 'rejected' start with different messages")
    if n == len(chosen) and n == len(rejected):
        raise RecordError("duplicate response text: 'chosen' and 'rejected' are identical")
    for name, rest in (("chosen", chosen[n:]), ("rejected", rejected[n:])):
        if not rest:
            raise RecordError(f"empty text in '{name}': nothing after the shared prompt")
    return chosen[:n], chosen[n:], rejected[n:]


def _same(a: dict, b: dict) -> bool:
    return a.get("role") == b.get("role") and a.get("content") == b.get("content")


def render_messages(messages: list[dict]) -> str:
    """Messages as an HH-style transcript; ends with "\\n\\nAssistant:" unless the last turn is the assistant's."""
    parts = [f"\n\n{_ROLE_LABELS.get(m['role'], m['role'].capitalize())}: {m['content']}" for m in messages]
    if messages and messages[-1]["role"] != "assistant":
        parts.append("\n\nAssistant:")
    return "".join(parts)
