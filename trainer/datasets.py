"""Read and validate the training data formats (JSONL), with line numbers in every error.

The data stage (``slmforge data prepare|qa|pairs``) writes these files; the training stages
read them here. Each method accepts a set of formats, and giving it another one is a clear
one-line error instead of a KeyError deep inside a trainer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slmforge.datafiles import iter_jsonl
from slmforge.errors import UserError
from slmforge.formats import FORMAT_FIELDS, FORMAT_NAMES, alpaca_prompt, detect_format

# --------------------------------------------------------------------------- formats

# what each method reads; KTO also takes pairs (split into a desirable and an undesirable example)
ACCEPTS: dict[str, tuple[str, ...]] = {
    "pretrain": ("text",),
    "sft": ("messages", "alpaca"),
    "dpo": ("preference",),
    "ipo": ("preference",),
    "orpo": ("preference",),
    "kto": ("kto", "preference"),
}
MAKE_HINT = {
    "text": "'slmforge data prepare DOCS --out DIR'",
    "messages": "'slmforge data qa DOCS --out qa.jsonl'",
    "alpaca": "'slmforge data qa DOCS --out qa.jsonl'",
    "preference": "'slmforge data pairs --out prefs.jsonl'",
    "kto": "'slmforge data pairs --kto-out kto.jsonl'",
}
ROLES = {"system", "user", "assistant"}


def _check_str(path: Path, lineno: int, obj: dict[str, Any], key: str, allow_empty: bool = False) -> None:
    value = obj.get(key)
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise UserError(f"{path}:{lineno}: field \"{key}\" must be a non-empty string")


def _check_messages(path: Path, lineno: int, messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{path}:{lineno}: \"messages\" must be a non-empty list of {{role, content}}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise UserError(f"{path}:{lineno}: messages[{i}] must be {{\"role\": system|user|assistant, "
                            "\"content\": string}}")
    if messages[-1]["role"] != "assistant":
        raise UserError(f"{path}:{lineno}: the last message must be the assistant's answer to learn from")


def _validate(path: Path, lineno: int, fmt: str, obj: dict[str, Any]) -> None:
    if fmt == "messages":
        _check_messages(path, lineno, obj["messages"])
    elif fmt == "kto":
        _check_str(path, lineno, obj, "prompt")
        _check_str(path, lineno, obj, "completion")
        if not isinstance(obj["label"], bool):
            raise UserError(f"{path}:{lineno}: field \"label\" must be true (desirable) or false (undesirable)")
    elif fmt == "alpaca":
        _check_str(path, lineno, obj, "instruction")
        _check_str(path, lineno, obj, "output")
        if not isinstance(obj.get("input", ""), str):
            raise UserError(f"{path}:{lineno}: field \"input\" must be a string")
    else:
        for key in FORMAT_FIELDS[fmt]:
            _check_str(path, lineno, obj, key)


def load_records(path: str | Path, method: str) -> tuple[str, list[dict[str, Any]]]:
    """Read a JSONL file for ``method``; return (format, records). Every line must share one format."""
    p = Path(path)
    accepted = ACCEPTS[method]
    fmt: str | None = None
    records: list[dict[str, Any]] = []
    for lineno, obj in iter_jsonl(p):
        this = detect_format(obj)
        if this is None:
            wanted = " or ".join(FORMAT_NAMES[a] for a in accepted)
            raise UserError(f"{p}:{lineno}: unrecognized record with fields {sorted(obj)}; "
                            f"'{method}' reads {wanted}")
        if this not in accepted:
            wanted = " or ".join(FORMAT_NAMES[a] for a in accepted)
            users = [m for m, acc in ACCEPTS.items() if this in acc]
            raise UserError(f"{p}:{lineno}: this is {FORMAT_NAMES[this]}, but '{method}' needs {wanted}; "
                            f"use it with {' / '.join(users)} or build the right data with {MAKE_HINT[accepted[0]]}")
        if fmt is not None and this != fmt:
            raise UserError(f"{p}:{lineno}: {FORMAT_NAMES[this]} mixed with {FORMAT_NAMES[fmt]} from earlier "
                            "lines; use one format per file")
        fmt = this
        _validate(p, lineno, this, obj)
        records.append(obj)
    if not records:
        raise UserError(f"{p}: no records (the file is empty); nothing to train on")
    assert fmt is not None
    return fmt, records


def to_messages(fmt: str, record: dict[str, Any]) -> list[dict[str, str]]:
    """An SFT record as chat messages (alpaca: instruction + optional input → user turn)."""
    if fmt == "messages":
        return [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
    return [{"role": "user", "content": alpaca_prompt(record)}, {"role": "assistant", "content": record["output"]}]


def to_kto(fmt: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """KTO examples; pairs become one desirable and one undesirable example each."""
    if fmt == "kto":
        return [{"prompt": r["prompt"], "completion": r["completion"], "label": r["label"]} for r in records]
    out = []
    for r in records:
        out.append({"prompt": r["prompt"], "completion": r["chosen"], "label": True})
        out.append({"prompt": r["prompt"], "completion": r["rejected"], "label": False})
    return out

