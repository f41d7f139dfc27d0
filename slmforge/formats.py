"""The JSONL record formats, told apart by their fields: one table for the trainer, ``data`` and ``eval``.

Each format says which fields mark it, what is wrong with a malformed record, and, for the chat
formats, the conversation it stands for. Training methods accept some of them
(``trainer/data/datasets.ACCEPTS``: SFT takes every chat format); QA files (``slmforge/qa_records.py``)
read any chat format as its last question and answer. A new format is one row of ``FORMATS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ROLES = ("system", "user", "assistant")

Chat = list[dict[str, str]]


@dataclass(frozen=True)
class RecordFormat:
    """One record format: the fields that mark it, how to check a record, its chat turns (chat formats)."""

    name: str
    fields: tuple[str, ...]
    description: str
    problem: Callable[[dict[str, Any]], str | None]  # what is wrong with a record of this format, or None
    chat: Callable[[dict[str, Any]], Chat] | None = None  # the conversation (chat formats only)


def _non_empty(*keys: str) -> Callable[[dict[str, Any]], str | None]:
    def problem(obj: dict[str, Any]) -> str | None:
        for key in keys:
            value = obj.get(key)
            if not isinstance(value, str) or not value.strip():
                return f"field \"{key}\" must be a non-empty string"
        return None
    return problem


def _messages_problem(obj: dict[str, Any]) -> str | None:
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        return "\"messages\" must be a non-empty list of {role, content}"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            return f"messages[{i}] must be {{\"role\": system|user|assistant, \"content\": string}}"
    if messages[-1]["role"] != "assistant":
        return "messages must end with the answer to learn from: the last message must be the assistant's"
    if not any(m["role"] == "user" for m in messages):
        return "messages must contain a user turn before the assistant's answer"
    return None


def _messages_chat(obj: dict[str, Any]) -> Chat:
    return [{"role": m["role"], "content": m["content"]} for m in obj["messages"]]


def _kto_problem(obj: dict[str, Any]) -> str | None:
    if not isinstance(obj["label"], bool):
        return "field \"label\" must be true (desirable) or false (undesirable)"
    return _non_empty("prompt", "completion")(obj)


def _alpaca_problem(obj: dict[str, Any]) -> str | None:
    values = (obj["instruction"], obj.get("input", ""), obj["output"])
    if not all(isinstance(v, str) for v in values) or not obj["instruction"].strip() or not obj["output"].strip():
        return "alpaca fields instruction/input/output must be strings, instruction and output non-empty"
    return None


def alpaca_prompt(record: dict[str, Any]) -> str:
    """An alpaca record's user turn: the instruction, then its optional input after a blank line."""
    user = record["instruction"].strip()
    if record.get("input", "").strip():
        user += "\n\n" + record["input"].strip()
    return user


def _alpaca_chat(obj: dict[str, Any]) -> Chat:
    return [{"role": "user", "content": alpaca_prompt(obj)}, {"role": "assistant", "content": obj["output"]}]


def _qa_chat(obj: dict[str, Any]) -> Chat:
    return [{"role": "user", "content": obj["question"]}, {"role": "assistant", "content": obj["answer"]}]


FORMATS: dict[str, RecordFormat] = {f.name: f for f in (
    RecordFormat("preference", ("prompt", "chosen", "rejected"), "preference pairs (prompt/chosen/rejected)",
                 _non_empty("prompt", "chosen", "rejected")),
    RecordFormat("kto", ("prompt", "completion", "label"), "KTO data (prompt/completion/label)", _kto_problem),
    RecordFormat("messages", ("messages",), "chat SFT data (messages)", _messages_problem, _messages_chat),
    RecordFormat("alpaca", ("instruction", "output"), "alpaca SFT data (instruction/input/output)",
                 _alpaca_problem, _alpaca_chat),
    RecordFormat("qa", ("question", "answer"), "question/answer records (question/answer)",
                 _non_empty("question", "answer"), _qa_chat),
    RecordFormat("text", ("text",), "raw text (text)", _non_empty("text")),
)}
CHAT_FORMATS = tuple(name for name, f in FORMATS.items() if f.chat is not None)


def detect_format(obj: dict[str, Any]) -> str | None:
    """Which known format one JSONL object is in (by its fields; the first row that matches), or None."""
    for name, fmt in FORMATS.items():
        if all(f in obj for f in fmt.fields):
            return name
    return None


def described(names: tuple[str, ...]) -> str:
    """'a or b or c' in the formats' own words, for error messages."""
    return " or ".join(FORMATS[n].description for n in names)
