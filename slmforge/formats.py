"""The JSONL record formats, told apart by their fields: one table for the trainer, ``data`` and ``eval``.

A training method accepts some of them (``trainer/datasets.ACCEPTS``); QA files (``slmforge/qa_records.py``)
are chat messages, alpaca, or plain question/answer records. A new format is a row here (fields and
name) and, for QA, its question/answer in ``qa_records.record_from_json``.
"""

from __future__ import annotations

from typing import Any

FORMAT_FIELDS: dict[str, tuple[str, ...]] = {
    "preference": ("prompt", "chosen", "rejected"),
    "kto": ("prompt", "completion", "label"),
    "messages": ("messages",),
    "alpaca": ("instruction", "output"),
    "text": ("text",),
}
FORMAT_NAMES = {
    "preference": "preference pairs (prompt/chosen/rejected)",
    "kto": "KTO data (prompt/completion/label)",
    "messages": "chat SFT data (messages)",
    "alpaca": "alpaca SFT data (instruction/input/output)",
    "text": "raw text (text)",
}
QA_FIELDS = ("question", "answer")  # plain QA records: read as QA (eval, data rag), not trained on directly


def detect_format(obj: dict[str, Any]) -> str | None:
    """Which known format one JSONL object is in (by its fields), or None."""
    for name, fields in FORMAT_FIELDS.items():
        if all(f in obj for f in fields):
            return name
    return None


def alpaca_prompt(record: dict[str, Any]) -> str:
    """An alpaca record's user turn: the instruction, then its optional input after a blank line."""
    user = record["instruction"].strip()
    if record.get("input", "").strip():
        user += "\n\n" + record["input"].strip()
    return user
