"""JSONL reading shared by every stage: one reader, line numbers in every error.

Training data, QA files and held-out questions are all JSONL; the trainer, the runtime's
example builder and ``eval`` read them through here so a bad line reads the same everywhere.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from slmforge.errors import UserError


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line; a bad line is a UserError naming it."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: data file not found; pass a JSONL file (or a dataset dir from 'slmforge data prepare')")
    try:
        handle = p.open(encoding="utf-8")
        with handle:
            for lineno, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except (json.JSONDecodeError, RecursionError) as exc:
                    detail = (f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError)
                              else "nested too deeply")
                    raise UserError(f"{p}:{lineno}: not valid JSON ({detail}); fix or remove that line") from None
                if not isinstance(obj, dict):
                    raise UserError(f"{p}:{lineno}: expected a JSON object per line, got {type(obj).__name__}")
                yield lineno, obj
    except UnicodeDecodeError as exc:
        raise UserError(f"{p}: not UTF-8 text (byte {exc.start}); re-encode the file as UTF-8") from None


def jsonl_text(records: list[dict[str, Any]]) -> str:
    """Records as JSONL text (UTF-8 kept readable), for an atomic write."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
