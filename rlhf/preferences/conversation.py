"""Chat messages in preference records: checked, normalised, and kept as messages.

A conversational record (its prompt given as messages) keeps its prompt as a list of ``{"role", "content"}`` in
rankings.jsonl, pairs.jsonl and elo.jsonl, so the reward model sees it through the chat template exactly as the
policy does (rlhf/chat.py renders it); each response is the text of the final assistant turn. Flattening it to
"Human:/Assistant:" text would train the reward model on a format the chat policy never produces.

Messages are normalised to exactly ``{"role": ..., "content": ...}`` (other keys, such as a null ``name`` that
Arrow adds to every message, are dropped), so one conversation read from JSONL, Parquet or a hub dataset is the same
item (``convert.item_key``) and the same duplicate fingerprint.
"""
from __future__ import annotations

from typing import Any

from rlhf.chat import ROLES  # the roles rlhf/chat.py renders

from .schema import RecordContext, RecordError, check_text, expect, get_field



def check_messages(value: Any, where: str, ctx: RecordContext) -> list[dict]:
    """A non-empty list of ``{"role": str, "content": str}`` with non-empty contents (returned as given)."""
    expect(value, "array", where)
    if not value:
        raise RecordError(f"empty text in '{where}'")
    for i, msg in enumerate(value):
        expect(msg, "object", f"{where}[{i}]")
        expect(get_field(msg, "role", f"{where}[{i}]."), "string", f"{where}[{i}].role")
        check_text(get_field(msg, "content", f"{where}[{i}]."), f"{where}[{i}].content", ctx.cfg)
    return value


def conversation(value: Any, where: str, ctx: RecordContext) -> list[dict]:
    """Checked messages with known roles, normalised to ``{"role", "content"}`` (module docstring)."""
    for i, msg in enumerate(check_messages(value, where, ctx)):
        if msg["role"] not in ROLES:
            raise RecordError(f"unknown role: {msg['role'][:40]!r} in '{where}[{i}].role' "
                              f"(expected {', '.join(ROLES)})")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def prompt_value(value: Any, where: str, ctx: RecordContext) -> str | list[dict]:
    """A prompt as text (checked as before) or as a conversation (kept as messages)."""
    if isinstance(value, list):
        return conversation(value, where, ctx)
    return check_text(value, where, ctx.cfg)


def assistant_text(messages: list[dict], where: str) -> str:
    """The content of a response that must be exactly one assistant turn."""
    if len(messages) != 1:
        raise RecordError(f"response is not one assistant turn: '{where}' has {len(messages)} messages after the "
                          f"prompt")
    if messages[0]["role"] != "assistant":
        raise RecordError(f"response is not one assistant turn: '{where}' is a {messages[0]['role']!r} message")
    return messages[0]["content"]


def conversational_response(value: Any, where: str, ctx: RecordContext) -> str:
    """A response to a conversational prompt: one assistant message (its content), or plain text."""
    if isinstance(value, list):
        return check_text(assistant_text(conversation(value, where, ctx), where), where, ctx.cfg)
    return check_text(expect(value, "string or array", where), where, ctx.cfg)
